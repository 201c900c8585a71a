//! `kib package`: the containerDisk as an OCI image layout directory, no registry needed.
//! Also home of the image flags `publish` shares.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use kib_builder::manifest::{self, BuildManifest};
use kib_packager::build_info::{self, BuildInfo};
use kib_packager::image::ImageMetadata;
use kib_packager::layer::{Compression, LayerSpec};
use kib_packager::tags::{TagScheme, TagVars, Tags, git_info};

use super::GlobalArgs;

/// What goes into the image, shared by `package` and `publish`.
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

/// Everything resolved from [`ImageArgs`].
pub(crate) struct Resolved {
    pub(crate) layer: LayerSpec,
    pub(crate) metadata: ImageMetadata,
    pub(crate) tags: anyhow::Result<Tags>,
}

impl ImageArgs {
    pub(crate) fn resolve(&self) -> anyhow::Result<Resolved> {
        anyhow::ensure!(
            self.qcow2.is_file(),
            "The qcow2 `{}` does not exist",
            self.qcow2.display()
        );
        let manifest = self.manifest.clone().or_else(|| {
            let beside = self
                .qcow2
                .parent()
                .unwrap_or(Path::new("."))
                .join(manifest::MANIFEST_FILE);
            beside.is_file().then_some(beside)
        });
        let info: Option<BuildInfo> = manifest
            .as_deref()
            .map(manifest::read)
            .transpose()?
            .as_ref()
            .map(build_info_of);
        let epoch = build_info::source_date_epoch(info.as_ref());
        let compression: Compression = self.compression.parse()?;
        let git = git_info(&self.git_dir)?;
        let k8s = self
            .kubernetes_version
            .clone()
            .or_else(|| info.as_ref().and_then(|i| i.kubernetes_version.clone()));
        let scheme = TagScheme {
            tagged: self.tag_immutable.clone(),
            untagged: self.tag_untagged.clone(),
            moving: if self.no_moving_tags {
                Vec::new()
            } else {
                self.tag_moving.clone()
            },
        };
        let vars = TagVars {
            git_tag: git.tag.clone(),
            short_sha: git.short_sha.clone(),
            kubernetes_version: k8s.clone(),
        };
        let tags = scheme.tags(&vars).map_err(anyhow::Error::from);
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let metadata = ImageMetadata {
            created: epoch,
            source: self.source.clone(),
            revision: git.commit.clone(),
            version: tags.as_ref().ok().map(|t| t.immutable.clone()),
            title: non_empty(&self.title),
            description: self.description.clone(),
            kubernetes_version: k8s,
            rocky_version: info.as_ref().and_then(|i| i.rocky_version.clone()),
            base_image_sha256: info.as_ref().and_then(|i| i.base_image_sha256.clone()),
            instancetype: non_empty(&self.instancetype),
            preference: non_empty(&self.preference),
        };
        Ok(Resolved {
            layer: LayerSpec::new(&self.qcow2, epoch, compression),
            metadata,
            tags,
        })
    }
}

/// What the image records from the build manifest: the Kubernetes version with a `v`, the
/// Rocky Linux version, the base image's sha256 and the build time.
fn build_info_of(m: &BuildManifest) -> BuildInfo {
    BuildInfo {
        kubernetes_version: m.kubernetes_version().map(|v| format!("v{v}")),
        rocky_version: m.rocky_version().map(str::to_owned),
        base_image_sha256: Some(m.base_image_sha256().to_owned()),
        build_epoch: m.build_epoch(),
    }
}

/// Write the containerDisk OCI image layout for a qcow2 (`skopeo copy oci:DIR …` reads it).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    image: ImageArgs,
    /// The OCI layout directory to write.
    #[arg(long, short, value_name = "DIR")]
    output: PathBuf,
}

impl Args {
    pub(crate) async fn run(self, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let resolved = self.image.resolve()?;
        let tags = match resolved.tags {
            Ok(t) => t.all(),
            Err(e) => {
                tracing::warn!("no tag in index.json: {e:#}");
                Vec::new()
            }
        };
        let reporter = crate::reporter::PackageReporter::new(global);
        let output = self.output.clone();
        let image = tokio::task::spawn_blocking(move || {
            kib_packager::layout::write_layout(
                &output,
                &resolved.layer,
                &resolved.metadata,
                &tags,
                &reporter,
            )
        })
        .await
        .context("The packaging task failed")??;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", image.manifest_digest)?;
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn build_info_from_the_builder_manifest() {
        let m: BuildManifest = serde_json::from_value(manifest_json()).unwrap();
        let info = build_info_of(&m);
        assert_eq!(
            info,
            BuildInfo {
                kubernetes_version: Some("v1.37.1".into()),
                rocky_version: Some("10.1".into()),
                base_image_sha256: Some(
                    "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789".into()
                ),
                build_epoch: Some(1_795_773_600),
            }
        );
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        image: ImageArgs,
    }

    fn resolve(dir: &Path, extra: &[&str]) -> anyhow::Result<Resolved> {
        let qcow2 = dir.join("node.qcow2");
        fs_err::write(&qcow2, "not read here").unwrap();
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
        fs_err::write(
            dir.path().join(manifest::MANIFEST_FILE),
            manifest_json().to_string(),
        )
        .unwrap();
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
        let bad = dir.path().join(manifest::MANIFEST_FILE);
        fs_err::write(&bad, "{").unwrap();
        let err = resolve(dir.path(), &[]).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!("The build manifest `{}` is not valid", bad.display())
        );
    }
}
