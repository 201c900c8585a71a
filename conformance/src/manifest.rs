//! What the checks expect of an image, from the builder's `build-manifest.json` (read with
//! [`kib_manifest::read`], the one reader of that file): the versions of the
//! Kubernetes tools and the pre-pulled images; and how a tool's `--version` output is compared
//! with them ([`version_in`], [`same_version`]).

use std::path::{Path, PathBuf};

use kib_manifest::{BuildManifest, ManifestReadError};

/// The expected versions and images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageExpectations {
    /// The manifest file.
    pub path: PathBuf,
    /// Kubernetes (kubeadm, kubelet, kubectl) as installed, e.g. `1.37.1`
    /// (`kubernetes.resolved`; the requested `1.37` is not a version a tool prints).
    pub kubernetes: Option<String>,
    /// containerd (`versions.json`'s `containerd`).
    pub containerd: Option<String>,
    /// crictl (`versions.json`'s `crictl`).
    pub crictl: Option<String>,
    /// Images that must be in containerd (`crictl images`).
    pub images: Vec<String>,
    /// The Kubernetes version the build asked for (`kubernetes.requested`); present and
    /// non-empty means the image claims to be a Kubernetes node.
    pub requested: Option<String>,
    /// The CNI the image is made for (`versions.json`'s `cni`, written by the playbook from
    /// `kib_cni` in `playbook/group_vars/all.yml`).
    pub cni: Option<String>,
}

/// What an image claims to be, and so which checks are required of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expect {
    /// A plain cloud image: the Kubernetes checks do not apply (and are listed as such).
    Generic,
    /// A Kubernetes node: versions, images and the kubeadm bootstrap are required.
    Kubernetes,
}

impl Expect {
    /// `explicit` (`--expect`) if given, else what the manifest claims (`kubernetes.requested`
    /// present → Kubernetes, else generic), else Kubernetes: an image nobody described is held
    /// to the full gate, so a node that lost its build manifest cannot pass as "generic". A
    /// plain image says `--expect generic`.
    pub fn resolve(explicit: Option<Expect>, manifest: Option<&ImageExpectations>) -> Self {
        match (explicit, manifest) {
            (Some(e), _) => e,
            (None, Some(m)) if m.requested.is_some() => Self::Kubernetes,
            (None, Some(_)) => Self::Generic,
            (None, None) => Self::Kubernetes,
        }
    }

    /// `generic` or `kubernetes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Kubernetes => "kubernetes",
        }
    }
}

/// The CNI the playbook defaults to (`kib_cni: calico`).
pub const DEFAULT_CNI: &str = "calico";

/// The overlay ports a CNI needs open between nodes (the playbook's `roles/firewall`):
/// calico VXLAN 4789/udp and 6789/udp (the `FELIX_VXLANPORT` of the Cluster API book's KubeVirt
/// quick start, which the cluster profile applies); flannel VXLAN 8472/udp; cilium VXLAN 8472/udp, health 4240/tcp,
/// Geneve 6081/udp. `None` for a CNI kib does not know.
pub fn overlay_ports(cni: &str) -> Option<&'static [(u16, &'static str)]> {
    match cni {
        "calico" => Some(&[(4789, "udp"), (6789, "udp")]),
        "flannel" => Some(&[(8472, "udp")]),
        "cilium" => Some(&[(8472, "udp"), (4240, "tcp"), (6081, "udp")]),
        _ => None,
    }
}

impl ImageExpectations {
    /// What `manifest` (read from `path`) says the image holds.
    pub fn from_manifest(path: &Path, manifest: &BuildManifest) -> Self {
        let owned = |v: Option<&str>| v.map(str::to_owned);
        Self {
            path: path.into(),
            kubernetes: manifest
                .kubernetes
                .resolved
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            containerd: owned(manifest.version("containerd")),
            crictl: owned(manifest.version("crictl")),
            images: manifest.images(),
            requested: Some(manifest.kubernetes.requested.trim())
                .filter(|r| !r.is_empty())
                .map(str::to_owned),
            cni: owned(manifest.version("cni")),
        }
    }

    /// Reads `path`.
    pub fn read(path: &Path) -> Result<Self, ManifestReadError> {
        kib_manifest::read(path).map(|m| Self::from_manifest(path, &m))
    }

    /// `--manifest` if given, else `build-manifest.json` next to `image` if it exists.
    pub fn find(explicit: Option<&Path>, image: &Path) -> Result<Option<Self>, ManifestReadError> {
        if let Some(p) = explicit {
            return Self::read(p).map(Some);
        }
        kib_manifest::beside(image)
            .map(|p| Self::read(&p))
            .transpose()
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
    use kib_manifest::MANIFEST_FILE;

    /// A manifest as `kib build` writes it (only the fields that matter here, plus the
    /// required ones), with `versions.json` as the playbook's collect step writes it.
    fn manifest_json(resolved: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "created": "2026-11-27T10:00:00Z",
            "base_image": {
                "source": "x", "name": "x",
                "checksum": "sha256:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
            },
            "kubernetes": {"requested": "1.37", "resolved": resolved},
            "output": {
                "file": "node.qcow2", "format": "qcow2", "compression": "zstd",
                "sha256": "sha256:0000000000000000000000000000000000000000000000000000000000000002",
                "virtual_size": 1, "file_size": 1
            },
            "collected": {"files": {}, "versions": {
                "kubernetes": resolved, "containerd": "2.1.4", "crictl": "v1.37.0", "runc": null,
                "pause_image": "registry.k8s.io/pause:3.10",
                "images": ["quay.io/calico/node:v3.31.4", {"name": "quay.io/calico/cni:v3.31.4"}]
            }}
        })
    }

    #[test]
    fn expects_what_the_builder_recorded() {
        let m: BuildManifest = serde_json::from_value(manifest_json(Some("1.37.1"))).unwrap();
        let e = ImageExpectations::from_manifest(Path::new("m.json"), &m);
        assert_eq!(e.path, Path::new("m.json"));
        assert_eq!(e.kubernetes.as_deref(), Some("1.37.1"));
        assert_eq!(e.containerd.as_deref(), Some("2.1.4"));
        assert_eq!(e.crictl.as_deref(), Some("v1.37.0"));
        assert_eq!(
            e.images,
            [
                "quay.io/calico/node:v3.31.4",
                "quay.io/calico/cni:v3.31.4",
                "registry.k8s.io/pause:3.10"
            ]
        );
        // Without the installed version there is nothing to compare the tools with: the
        // requested `1.37` is not it.
        let m: BuildManifest = serde_json::from_value(manifest_json(None)).unwrap();
        assert_eq!(
            ImageExpectations::from_manifest(Path::new("m"), &m).kubernetes,
            None
        );
    }

    #[test]
    fn finds_the_manifest_next_to_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("node.qcow2");
        assert_eq!(ImageExpectations::find(None, &img).unwrap(), None);
        let beside = dir.path().join(MANIFEST_FILE);
        fs_err::write(&beside, manifest_json(Some("1.37.1")).to_string()).unwrap();
        let e = ImageExpectations::find(None, &img).unwrap().unwrap();
        assert_eq!(e.kubernetes.as_deref(), Some("1.37.1"));
        assert_eq!(e.path, beside);
        fs_err::write(dir.path().join("bad.json"), "{").unwrap();
        assert!(matches!(
            ImageExpectations::find(Some(&dir.path().join("bad.json")), &img),
            Err(ManifestReadError::Parse { .. })
        ));
        assert!(matches!(
            ImageExpectations::find(Some(&dir.path().join("missing.json")), &img),
            Err(ManifestReadError::Read { .. })
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
