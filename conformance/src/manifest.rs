//! What the checks read from the builder's `build-manifest.json`: the versions of the
//! Kubernetes tools and the pre-pulled images. The reader is tolerant: every field is optional
//! and several spellings are accepted (`versions.kubernetes` as the playbook's `versions.json`
//! has it, `kubernetes_version`, `kubernetesVersion`, `kubernetes.version`).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The file name the builder writes next to the image.
pub const MANIFEST_NAME: &str = "build-manifest.json";

/// The expected versions and images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// The manifest file.
    pub path: PathBuf,
    /// Kubernetes (kubeadm, kubelet, kubectl), e.g. `1.37.1`.
    pub kubernetes: Option<String>,
    /// containerd.
    pub containerd: Option<String>,
    /// crictl.
    pub crictl: Option<String>,
    /// Images that must be in containerd (`crictl images`).
    pub images: Vec<String>,
}

/// The manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("Failed to read the build manifest `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("The build manifest `{path}` is not valid JSON")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

fn lookup<'a>(v: &'a Value, paths: &[&[&str]]) -> Option<&'a Value> {
    paths.iter().find_map(|p| {
        let mut cur = v;
        for k in *p {
            cur = cur.get(k)?;
        }
        (!cur.is_null()).then_some(cur)
    })
}

fn string(v: &Value, paths: &[&[&str]]) -> Option<String> {
    lookup(v, paths)
        .and_then(Value::as_str)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl Expected {
    /// Parses a manifest's JSON.
    pub fn from_value(path: &Path, v: &Value) -> Self {
        let images = lookup(
            v,
            &[
                &["images"],
                &["prepulled_images"],
                &["pre_pulled_images"],
                &["prePulledImages"],
                &["versions", "images"],
            ],
        )
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i.as_str().or_else(|| i.get("name").and_then(Value::as_str)))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
        Self {
            path: path.into(),
            kubernetes: string(
                v,
                &[
                    &["versions", "kubernetes"],
                    &["kubernetes_version"],
                    &["kubernetesVersion"],
                    &["kubernetes", "version"],
                ],
            ),
            containerd: string(
                v,
                &[
                    &["versions", "containerd"],
                    &["containerd_version"],
                    &["containerd", "version"],
                ],
            ),
            crictl: string(
                v,
                &[
                    &["versions", "crictl"],
                    &["crictl_version"],
                    &["crictl", "version"],
                ],
            ),
            images,
        }
    }

    /// Reads `path`.
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let bytes = fs_err::read(path).map_err(|source| ManifestError::Read {
            path: path.into(),
            source,
        })?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse {
            path: path.into(),
            source,
        })?;
        Ok(Self::from_value(path, &v))
    }

    /// `--manifest` if given, else `build-manifest.json` next to `image` if it exists.
    pub fn find(explicit: Option<&Path>, image: &Path) -> Result<Option<Self>, ManifestError> {
        if let Some(p) = explicit {
            return Self::read(p).map(Some);
        }
        let next_to = image.parent().unwrap_or(Path::new(".")).join(MANIFEST_NAME);
        if next_to.is_file() {
            Self::read(&next_to).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The first version-looking token of a tool's `--version` output, without a leading `v`:
/// `Kubernetes v1.37.1` → `1.37.1`; `containerd github.com/containerd/containerd/v2 v2.1.4 abc`
/// → `2.1.4`.
pub fn version_in(output: &str) -> Option<String> {
    output
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .map(|t| t.trim_start_matches('v'))
        .find(|t| {
            let parts: Vec<&str> = t.split('.').collect();
            parts.len() >= 2
                && parts[0].chars().all(|c| c.is_ascii_digit())
                && !parts[0].is_empty()
                && parts[1].chars().next().is_some_and(|c| c.is_ascii_digit())
        })
        .map(|t| {
            t.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned()
        })
}

/// Whether `got` is the version `want` (both normalised with [`version_in`]).
pub fn same_version(want: &str, got: &str) -> bool {
    match (version_in(want), version_in(got)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_playbooks_versions_shape_and_flat_aliases() {
        let v = serde_json::json!({
            "versions": {"kubernetes": "1.37.1", "containerd": "2.1.4", "crictl": "v1.37.0", "runc": null},
            "images": ["registry.k8s.io/pause:3.10", {"name": "quay.io/calico/node:v3.31.4"}]
        });
        let e = Expected::from_value(Path::new("m.json"), &v);
        assert_eq!(e.kubernetes.as_deref(), Some("1.37.1"));
        assert_eq!(e.crictl.as_deref(), Some("v1.37.0"));
        assert_eq!(
            e.images,
            ["registry.k8s.io/pause:3.10", "quay.io/calico/node:v3.31.4"]
        );
        let flat = Expected::from_value(
            Path::new("m"),
            &serde_json::json!({"kubernetesVersion": "v1.36.0"}),
        );
        assert_eq!(flat.kubernetes.as_deref(), Some("v1.36.0"));
        assert_eq!(flat.containerd, None);
        assert!(flat.images.is_empty());
    }

    #[test]
    fn finds_the_manifest_next_to_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("node.qcow2");
        assert_eq!(Expected::find(None, &img).unwrap(), None);
        fs_err::write(
            dir.path().join(MANIFEST_NAME),
            r#"{"kubernetes_version": "1.37.1"}"#,
        )
        .unwrap();
        let e = Expected::find(None, &img).unwrap().unwrap();
        assert_eq!(e.kubernetes.as_deref(), Some("1.37.1"));
        fs_err::write(dir.path().join("bad.json"), "{").unwrap();
        assert!(matches!(
            Expected::find(Some(&dir.path().join("bad.json")), &img),
            Err(ManifestError::Parse { .. })
        ));
    }

    #[test]
    fn versions_from_tool_output() {
        assert_eq!(version_in("Kubernetes v1.37.1").as_deref(), Some("1.37.1"));
        assert_eq!(version_in("v1.37.1\n").as_deref(), Some("1.37.1"));
        assert_eq!(
            version_in("containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7193e4e490e9fbdc236c0e811ccaba3376").as_deref(),
            Some("2.1.4")
        );
        assert_eq!(
            version_in("crictl version v1.37.0").as_deref(),
            Some("1.37.0")
        );
        assert_eq!(
            version_in("Client Version: v1.37.1\nKustomize Version: v5.7.1").as_deref(),
            Some("1.37.1")
        );
        assert!(same_version("v1.37.1", "Kubernetes v1.37.1"));
        assert!(!same_version("1.37.1", "Kubernetes v1.37.0"));
        assert!(!same_version("1.37.1", "command not found"));
    }
}
