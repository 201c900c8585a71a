//! What the packager reads from the builder's `build-manifest.json`: versions, the base image
//! checksum and the build time. Unknown fields are ignored and every field is optional, so the
//! packager keeps working as the manifest grows (see kib-builder's `manifest` module).

use std::path::{Path, PathBuf};

/// The fields of `build-manifest.json` (kib-builder's `BuildManifest`) the image records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildInfo {
    /// Kubernetes version with a `v`, e.g. `v1.37.1`: `kubernetes.resolved`, else
    /// `kubernetes.requested`.
    pub kubernetes_version: Option<String>,
    /// Rocky Linux version, e.g. `10.1`: `collected.versions.rocky` (or `os`).
    pub rocky_version: Option<String>,
    /// sha256 (hex) of the base cloud image: `base_image.checksum` without `sha256:`.
    pub base_image_sha256: Option<String>,
    /// Build time, RFC 3339: `created`.
    pub build_time: Option<String>,
}

impl BuildInfo {
    /// Picks the fields out of a parsed manifest; missing ones stay `None`.
    pub fn from_json(v: &serde_json::Value) -> Self {
        let s = |p: &str| {
            v.pointer(p)
                .and_then(|x| x.as_str())
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
        };
        let k8s = s("/kubernetes/resolved").or_else(|| s("/kubernetes/requested"));
        Self {
            kubernetes_version: k8s.map(|k| {
                if k.starts_with('v') {
                    k
                } else {
                    format!("v{k}")
                }
            }),
            rocky_version: s("/collected/versions/rocky").or_else(|| s("/collected/versions/os")),
            base_image_sha256: s("/base_image/checksum")
                .map(|c| c.trim_start_matches("sha256:").to_owned()),
            build_time: s("/created"),
        }
    }
}

impl BuildInfo {
    /// The build time as seconds since the epoch, if present and valid.
    pub fn build_epoch(&self) -> Option<u64> {
        let t = time::OffsetDateTime::parse(
            self.build_time.as_deref()?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        u64::try_from(t.unix_timestamp()).ok()
    }
}

/// The build manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BuildInfoError {
    /// The file could not be read.
    #[error("Failed to read the build manifest `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the JSON expected.
    #[error("The build manifest `{}` is not valid", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Reads `path`.
pub fn read(path: &Path) -> Result<BuildInfo, BuildInfoError> {
    let text = fs_err::read(path).map_err(|source| BuildInfoError::Read {
        path: path.into(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| BuildInfoError::Parse {
            path: path.into(),
            source,
        })?;
    Ok(BuildInfo::from_json(&value))
}

/// The fixed time for mtimes and `created`: `SOURCE_DATE_EPOCH` if set and valid, else the
/// build time, else 0 (the epoch), so that nothing depends on the clock.
pub fn source_date_epoch(info: Option<&BuildInfo>) -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| info.and_then(BuildInfo::build_epoch))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_builder_manifest_fields() {
        let v = serde_json::json!({
            "created": "2026-11-27T10:00:00Z",
            "base_image": {"checksum": "sha256:abcd"},
            "kubernetes": {"requested": "1.37", "resolved": "1.37.1"},
            "collected": {"versions": {"rocky": "10.1"}}
        });
        let i = BuildInfo::from_json(&v);
        assert_eq!(i.kubernetes_version.as_deref(), Some("v1.37.1"));
        assert_eq!(i.rocky_version.as_deref(), Some("10.1"));
        assert_eq!(i.base_image_sha256.as_deref(), Some("abcd"));
        assert_eq!(i.build_epoch(), Some(1_795_773_600));
    }
}
