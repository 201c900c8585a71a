//! What goes into the image, from the user's inputs: the qcow2, the build manifest beside it
//! (or given), the labels, and the tags from the git checkout. `kib package` and `kib publish`
//! both call [`ImageInputs::resolve`]; the binary only turns its flags into [`ImageInputs`].

use std::path::PathBuf;

use kib_manifest::{BuildManifest, Hint, ManifestReadError};

use crate::build_info::{self, BuildInfo};
use crate::image::ImageMetadata;
use crate::layer::{Compression, LayerSpec};
use crate::tags::{GitError, TagError, TagScheme, TagVars, Tags, git_info};

/// The user's choices for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInputs {
    /// The qcow2 to wrap.
    pub qcow2: PathBuf,
    /// The build manifest; `None`: `build-manifest.json` beside the qcow2, if present.
    pub manifest: Option<PathBuf>,
    /// The layer compression.
    pub compression: Compression,
    /// The Kubernetes version (overrides the build manifest), e.g. `v1.37.1`.
    pub kubernetes_version: Option<String>,
    /// `org.opencontainers.image.source`.
    pub source: Option<String>,
    /// `org.opencontainers.image.title` (empty: none).
    pub title: String,
    /// `org.opencontainers.image.description`.
    pub description: Option<String>,
    /// KubeVirt default instancetype (empty: none).
    pub instancetype: String,
    /// KubeVirt default preference (empty: none).
    pub preference: String,
    /// The tag templates.
    pub tag_scheme: TagScheme,
    /// The git checkout whose tag and commit name the image.
    pub git_dir: PathBuf,
}

/// Everything resolved from [`ImageInputs`].
#[derive(Debug)]
pub struct ResolvedImage {
    /// The layer to write.
    pub layer: LayerSpec,
    /// The image's labels and annotations.
    pub metadata: ImageMetadata,
    /// The tags, or why there are none (`kib package` goes on without them).
    pub tags: Result<Tags, TagError>,
}

/// Errors from [`ImageInputs::resolve`].
#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    /// The qcow2 is not a file.
    #[error("The qcow2 `{}` does not exist", path.display())]
    MissingQcow2 {
        /// The path given.
        path: PathBuf,
    },
    /// The qcow2 names other files (a backing or external data file) or is not a qcow2.
    #[error("The image `{}` is refused", path.display())]
    Refused {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: kib_vm::image::DiskImageError,
    },
    /// The file is a raw disk, not the qcow2 a containerDisk carries.
    #[error("The image `{}` is a raw disk, not a qcow2", path.display())]
    NotQcow2 {
        /// The path given.
        path: PathBuf,
    },
    /// The build manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestReadError),
    /// The qcow2 is not the file the build manifest describes.
    #[error(
        "The image `{}` does not match the build manifest `{}`: the manifest records {expected}, the file is {actual}",
        path.display(), manifest.display()
    )]
    ManifestMismatch {
        /// The qcow2.
        path: PathBuf,
        /// The build manifest.
        manifest: PathBuf,
        /// The SHA-256 the manifest records.
        expected: String,
        /// The file's SHA-256.
        actual: String,
    },
    /// The qcow2 could not be read while hashing it.
    #[error("Failed to read `{}`", path.display())]
    Read {
        /// The qcow2.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// git could not be run in the checkout.
    #[error(transparent)]
    Git(#[from] GitError),
}

impl Hint for InputsError {
    /// A suggestion for the user.
    fn hint(&self) -> Option<String> {
        match self {
            InputsError::Refused { source, .. } => source.hint(),
            InputsError::NotQcow2 { path } => Some(format!(
                "convert it: `qemu-img convert -f raw -O qcow2 {} disk.qcow2`",
                path.display()
            )),
            InputsError::Manifest(e) => e.hint(),
            InputsError::ManifestMismatch { .. } => Some(
                "publish the qcow2 the build wrote next to its manifest, or pass the matching one with `--manifest`".to_owned(),
            ),
            _ => None,
        }
    }
}

impl ImageInputs {
    /// Checks the qcow2 ([`kib_vm::image::inspect`]: a self-contained qcow2, decided from its
    /// bytes), reads the build manifest and the git checkout, and fills in the layer, the
    /// metadata and the tags.
    pub fn resolve(&self) -> Result<ResolvedImage, InputsError> {
        if !self.qcow2.is_file() {
            return Err(InputsError::MissingQcow2 {
                path: self.qcow2.clone(),
            });
        }
        let disk = kib_vm::image::inspect(&self.qcow2).map_err(|source| InputsError::Refused {
            path: self.qcow2.clone(),
            source,
        })?;
        if disk.format != kib_vm::image::DiskFormat::Qcow2 {
            return Err(InputsError::NotQcow2 {
                path: self.qcow2.clone(),
            });
        }
        let manifest = self
            .manifest
            .clone()
            .or_else(|| kib_manifest::beside(&self.qcow2));
        let read = manifest.as_deref().map(kib_manifest::read).transpose()?;
        if let (Some(path), Some(m)) = (&manifest, &read) {
            // The labels and tags come from the manifest: it must describe this very file.
            let (actual, _) =
                kib_manifest::sha256_file(&self.qcow2).map_err(|source| InputsError::Read {
                    path: self.qcow2.clone(),
                    source,
                })?;
            if actual != m.output.sha256 {
                return Err(InputsError::ManifestMismatch {
                    path: self.qcow2.clone(),
                    manifest: path.clone(),
                    expected: m.output.sha256.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        let info: Option<BuildInfo> = read.as_ref().map(build_info_of);
        let epoch = build_info::source_date_epoch(info.as_ref());
        let git = git_info(&self.git_dir)?;
        let k8s = self
            .kubernetes_version
            .clone()
            .or_else(|| info.as_ref().and_then(|i| i.kubernetes_version.clone()));
        let vars = TagVars {
            git_tag: git.tag.clone(),
            short_sha: git.short_sha.clone(),
            kubernetes_version: k8s.clone(),
        };
        let tags = self.tag_scheme.tags(&vars);
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
        Ok(ResolvedImage {
            layer: LayerSpec::new(&self.qcow2, epoch, self.compression),
            metadata,
            tags,
        })
    }
}

/// What the image records from the build manifest: the Kubernetes version with a `v`, the
/// Rocky Linux version, the base image's sha256 and the build time.
pub fn build_info_of(m: &BuildManifest) -> BuildInfo {
    BuildInfo {
        kubernetes_version: m.kubernetes_version().map(|v| format!("v{v}")),
        rocky_version: m.rocky_version().map(str::to_owned),
        base_image_sha256: Some(m.base_image_sha256().to_owned()),
        build_epoch: m.build_epoch(),
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

    use kib_test_infra::images::{qcow2_backed_by, qemu_img};

    fn inputs(qcow2: &std::path::Path) -> ImageInputs {
        ImageInputs {
            qcow2: qcow2.to_owned(),
            manifest: None,
            compression: Compression::Gzip,
            kubernetes_version: None,
            source: None,
            title: String::new(),
            description: None,
            instancetype: String::new(),
            preference: String::new(),
            tag_scheme: TagScheme {
                tagged: String::new(),
                untagged: String::new(),
                moving: Vec::new(),
            },
            git_dir: qcow2.parent().unwrap().to_owned(),
        }
    }

    /// Issue #16: a qcow2 whose backing file is a host file would put that file into the
    /// published image; a qcow2 that is not the one the build manifest describes would get
    /// that build's labels and tags.
    #[test]
    fn a_backing_file_or_a_manifest_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = |n: &str| dir.path().join(n);
        std::fs::write(d("secret"), "kib-packager-secret".repeat(100)).unwrap();
        let backed = d("backed.qcow2");
        let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
        qcow2_backed_by(&d("secret"), &backed);
        let e = inputs(&backed).resolve().unwrap_err();
        assert!(matches!(e, InputsError::Refused { .. }), "{e:?}");

        let raw = d("disk.raw");
        qemu_img(&["create", "-q", "-f", "raw", &s(&raw), "1M"]);
        let e = inputs(&raw).resolve().unwrap_err();
        assert!(matches!(e, InputsError::NotQcow2 { .. }), "{e:?}");

        let good = d("node.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", &s(&good), "1M"]);
        std::fs::write(d("build-manifest.json"), manifest_json().to_string()).unwrap();
        let e = inputs(&good).resolve().unwrap_err();
        assert!(matches!(e, InputsError::ManifestMismatch { .. }), "{e:?}");
        assert!(
            e.to_string().contains("does not match the build manifest"),
            "{e}"
        );
        assert!(e.hint().is_some());

        // The matching manifest passes the check (and resolution goes on to git).
        let mut m = manifest_json();
        let (sum, _) = kib_manifest::sha256_file(&good).unwrap();
        m["output"]["sha256"] = serde_json::json!(sum.to_string());
        std::fs::write(d("build-manifest.json"), m.to_string()).unwrap();
        match inputs(&good).resolve() {
            Ok(_) | Err(InputsError::Git(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
}
