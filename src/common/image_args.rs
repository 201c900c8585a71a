//! The image flags `kib package` and `kib publish` share, turned into the packager's
//! [`ImageInputs`] (the packager resolves them).

use std::path::PathBuf;

use kib_packager::inputs::{ImageInputs, ResolvedImage};
use kib_packager::layer::Compression;
use kib_packager::tags::TagScheme;

use crate::error_render::HintExt as _;

/// What goes into the image: the flags `package` and `publish` share.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ImageArgs {
    /// The qcow2 to wrap (e.g. `kib build`'s `out/<name>.qcow2`).
    #[arg(long, value_name = "PATH")]
    pub(crate) qcow2: PathBuf,
    /// The build manifest for versions and build time [default: `build-manifest.json` beside
    /// the qcow2, if present].
    #[arg(long, value_name = "PATH")]
    pub(crate) manifest: Option<PathBuf>,
    /// Layer compression: stored gzip (read everywhere, no CPU), zstd, or none.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd", "none"])]
    pub(crate) compression: String,
    /// Kubernetes version (overrides the build manifest), e.g. `v1.37.1`.
    #[arg(long, value_name = "VERSION")]
    pub(crate) kubernetes_version: Option<String>,
    /// `org.opencontainers.image.source`: URL of the repository the image is built from.
    #[arg(long, value_name = "URL")]
    pub(crate) source: Option<String>,
    /// `org.opencontainers.image.title`.
    #[arg(long, default_value = "kib Kubernetes node image")]
    pub(crate) title: String,
    /// `org.opencontainers.image.description`.
    #[arg(long)]
    pub(crate) description: Option<String>,
    /// KubeVirt default instancetype for VMs made from this disk (empty: none).
    #[arg(long, default_value = "u1.medium")]
    pub(crate) instancetype: String,
    /// KubeVirt default preference for VMs made from this disk (empty: none).
    #[arg(long, default_value = "rhel.10")]
    pub(crate) preference: String,
    /// Immutable tag when `HEAD` has a git tag. Placeholders: `{git_tag}`, `{k8s_version}`,
    /// `{k8s_minor}`, `{short_sha}`.
    #[arg(long, default_value = "{git_tag}", value_name = "TEMPLATE")]
    pub(crate) tag_immutable: String,
    /// Immutable tag when `HEAD` has no git tag.
    #[arg(
        long,
        default_value = "{k8s_version}-g{short_sha}",
        value_name = "TEMPLATE"
    )]
    pub(crate) tag_untagged: String,
    /// Moving tags, set for git-tagged builds only (repeatable).
    #[arg(long, value_name = "TEMPLATE", default_values = ["{k8s_version}", "{k8s_minor}"])]
    pub(crate) tag_moving: Vec<String>,
    /// Set no moving tags.
    #[arg(long)]
    pub(crate) no_moving_tags: bool,
    /// The git checkout whose tag and commit name the image.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub(crate) git_dir: PathBuf,
}

impl ImageArgs {
    /// The packager's inputs.
    pub(crate) fn inputs(&self) -> anyhow::Result<ImageInputs> {
        let compression: Compression = self.compression.parse()?;
        Ok(ImageInputs {
            qcow2: self.qcow2.clone(),
            manifest: self.manifest.clone(),
            compression,
            kubernetes_version: self.kubernetes_version.clone(),
            source: self.source.clone(),
            title: self.title.clone(),
            description: self.description.clone(),
            instancetype: self.instancetype.clone(),
            preference: self.preference.clone(),
            tag_scheme: TagScheme {
                tagged: self.tag_immutable.clone(),
                untagged: self.tag_untagged.clone(),
                moving: if self.no_moving_tags {
                    Vec::new()
                } else {
                    self.tag_moving.clone()
                },
            },
            git_dir: self.git_dir.clone(),
        })
    }

    /// The layer, metadata and tags (see [`ImageInputs::resolve`]).
    pub(crate) fn resolve(&self) -> anyhow::Result<ResolvedImage> {
        self.inputs()?.resolve().hinted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use kib_manifest::MANIFEST_FILE;

    fn manifest_json() -> serde_json::Value {
        serde_json::json!({
            "created": "2026-11-27T10:00:00Z",
            "base_image": {
                "source": "x", "name": "x",
                "checksum": "sha256:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
            },
            "kubernetes": {"requested": "1.37", "resolved": "1.37.1"},
            "output": {
                "file": "n.qcow2", "format": "qcow2", "compression": "zstd",
                "sha256": "sha256:0000000000000000000000000000000000000000000000000000000000000002",
                "virtual_size": 1, "file_size": 1
            },
            "collected": {"files": {}, "versions": {"rocky": "10.1"}}
        })
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        image: ImageArgs,
    }

    fn resolve(dir: &Path, extra: &[&str]) -> anyhow::Result<ResolvedImage> {
        let qcow2 = dir.join("node.qcow2");
        if !qcow2.exists() {
            // A real (empty) qcow2: every image kib wraps is checked from its bytes (issue #16).
            let out = std::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&qcow2)
                .arg("1M")
                .output()
                .expect("qemu-img (qemu-utils) is needed");
            assert!(out.status.success(), "{out:?}");
        }
        let mut args = vec!["kib".to_owned(), "--qcow2".to_owned()];
        args.push(qcow2.display().to_string());
        args.push("--git-dir".to_owned());
        args.push(dir.display().to_string());
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        <Cli as clap::Parser>::try_parse_from(args)
            .unwrap()
            .image
            .resolve()
    }

    #[test]
    fn the_manifest_beside_the_qcow2_labels_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let bare = resolve(dir.path(), &[]).unwrap().metadata;
        assert_eq!(
            (
                bare.kubernetes_version,
                bare.rocky_version,
                bare.base_image_sha256
            ),
            (None, None, None)
        );
        // The manifest must describe this very qcow2 (its sha256), or publish refuses it.
        let mut manifest = manifest_json();
        let (sum, _) = kib_manifest::sha256_file(&dir.path().join("node.qcow2")).unwrap();
        manifest["output"]["sha256"] = serde_json::json!(sum.to_string());
        fs_err::write(dir.path().join(MANIFEST_FILE), manifest.to_string()).unwrap();
        let m = resolve(dir.path(), &[]).unwrap().metadata;
        assert_eq!(m.kubernetes_version.as_deref(), Some("v1.37.1"));
        assert_eq!(m.rocky_version.as_deref(), Some("10.1"));
        assert_eq!(
            m.base_image_sha256.as_deref(),
            Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
        );
        // `--kubernetes-version` wins over the manifest.
        let m = resolve(dir.path(), &["--kubernetes-version", "v1.36.0"])
            .unwrap()
            .metadata;
        assert_eq!(m.kubernetes_version.as_deref(), Some("v1.36.0"));
    }

    #[test]
    fn an_unreadable_manifest_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let err = resolve(dir.path(), &["--manifest", &missing.display().to_string()])
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            format!("Failed to read the build manifest `{}`", missing.display())
        );
        // `InputsError::Manifest` forwards the `ManifestReadError`'s hint: printed once.
        let text = crate::error_render::text(&err);
        assert_eq!(
            text.matches("hint: `kib build` writes `build-manifest.json` beside the image")
                .count(),
            1,
            "{text}"
        );
        let bad = dir.path().join(MANIFEST_FILE);
        fs_err::write(&bad, "{").unwrap();
        let err = resolve(dir.path(), &[]).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!("The build manifest `{}` is not valid", bad.display())
        );
    }
}
