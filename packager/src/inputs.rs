//! What goes into the image, from the user's inputs: the qcow2, the build manifest beside it
//! (or given), the labels, and the tags from the git checkout. `kib package` and `kib publish`
//! both call [`ImageInputs::resolve`]; the binary only turns its flags into [`ImageInputs`].

use std::path::PathBuf;

use kib_manifest::{BuildManifest, ManifestReadError};

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
    /// The build manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestReadError),
    /// git could not be run in the checkout.
    #[error(transparent)]
    Git(#[from] GitError),
}

impl ImageInputs {
    /// Reads the build manifest and the git checkout, and fills in the layer, the metadata and
    /// the tags.
    pub fn resolve(&self) -> Result<ResolvedImage, InputsError> {
        if !self.qcow2.is_file() {
            return Err(InputsError::MissingQcow2 {
                path: self.qcow2.clone(),
            });
        }
        let manifest = self
            .manifest
            .clone()
            .or_else(|| kib_manifest::beside(&self.qcow2));
        let info: Option<BuildInfo> = manifest
            .as_deref()
            .map(kib_manifest::read)
            .transpose()?
            .as_ref()
            .map(build_info_of);
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
}
