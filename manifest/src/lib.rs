//! `build-manifest.json`: what went into an image and what came out.
//!
//! ```json
//! {
//!   "kib_version": "0.1.0",
//!   "git_revision": "c23516f",
//!   "created": "2026-11-27T10:00:00Z",
//!   "base_image": { "source": "https://…/Rocky-10-GenericCloud-Base.latest.x86_64.qcow2",
//!                   "name": "Rocky-10-GenericCloud-Base.latest.x86_64.qcow2",
//!                   "checksum": "sha256:…" },
//!   "kubernetes": { "requested": "1.37", "resolved": "1.37.1" },
//!   "accel": "tcg",
//!   "provisioners": ["ansible `site.yml`"],
//!   "stage_seconds": { "fetch": 1.2, "prepare": 0.3, "boot": 71.0, … },
//!   "output": { "file": "rocky10-kubernetes.qcow2", "format": "qcow2", "compression": "zstd",
//!               "sha256": "sha256:…", "virtual_size": 21474836480, "file_size": 912261120 },
//!   "collected": { "files": { "versions.json": { "sha256": "sha256:…", "size": 120 } },
//!                  "versions": { "kubernetes": "1.37.1", … } }
//! }
//! ```
//! `collected` lists the files the playbook fetched into the collect folder (paths relative to
//! it, `/`-separated). When one of them is `versions.json`, its content is parsed into
//! `versions`, and its `kubernetes` (or `kubelet`) string becomes `kubernetes.resolved`.
//!
//! [`read`] is the one reader of the file: `kib publish`/`kib package` (for the image's labels
//! and build time) and `kib conformance` (for the versions and images to expect) go through it.
//! It deserializes the same types [`BuildManifest::write`] writes, ignores fields it does not
//! know (a newer kib may add some), and accepts manifests without the fields that only
//! describe the build (`accel`, `provisioners`, `stage_seconds`, `collected`, …). The helpers
//! on [`BuildManifest`] ([`BuildManifest::kubernetes_version`], [`BuildManifest::version`],
//! [`BuildManifest::images`], [`BuildManifest::build_epoch`], …) answer what those readers ask.
//!
//! ```no_run
//! # fn main() -> Result<(), kib_manifest::ManifestReadError> {
//! let manifest = kib_manifest::read("out/build-manifest.json".as_ref())?;
//! println!("Kubernetes {}", manifest.kubernetes_version().unwrap_or("?"));
//! println!("containerd {}", manifest.version("containerd").unwrap_or("?"));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::value::StrDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod attest;
mod checksum;
mod error;
mod types;

pub use checksum::{Checksum, ChecksumParseError, sha256_file};
pub use error::{Hint, error_chain};
pub use types::{Compression, ImageFormat, Stage, UnknownChoice};

/// The manifest's file name in the output folder.
pub const MANIFEST_FILE: &str = "build-manifest.json";

/// Errors from assembling or writing the manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A collected file could not be read or hashed.
    #[error("Failed to read collected file `{path}`")]
    Collect {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The collected `versions.json` is not JSON.
    #[error("The collected `{path}` is not valid JSON")]
    Versions {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest could not be written.
    #[error("Failed to write `{path}`")]
    Write {
        /// The manifest file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Hint for ManifestError {
    /// A suggestion for fixing the error, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            ManifestError::Versions { .. } => Some(
                "the playbook's collect step writes versions.json; check its template".to_owned(),
            ),
            _ => None,
        }
    }
}

/// Errors from [`read`].
#[derive(Debug, thiserror::Error)]
pub enum ManifestReadError {
    /// The file could not be read.
    #[error("Failed to read the build manifest `{}`", path.display())]
    Read {
        /// The manifest file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a build manifest (not JSON, or a field `kib build` writes is missing or
    /// has the wrong type).
    #[error("The build manifest `{}` is not valid", path.display())]
    Parse {
        /// The manifest file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl ManifestReadError {
    /// The manifest file.
    pub fn path(&self) -> &Path {
        match self {
            ManifestReadError::Read { path, .. } | ManifestReadError::Parse { path, .. } => path,
        }
    }
}

impl Hint for ManifestReadError {
    /// A suggestion for fixing the error, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            ManifestReadError::Read { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Some(format!(
                    "`kib build` writes `{MANIFEST_FILE}` beside the image; pass its path with `--manifest`"
                ))
            }
            ManifestReadError::Read { .. } => None,
            ManifestReadError::Parse { .. } => Some(format!(
                "pass the `{MANIFEST_FILE}` that `kib build` wrote beside the image"
            )),
        }
    }
}

/// The `build-manifest.json` that `kib build` wrote beside `image`, when there is one: the one
/// place `kib conformance` and `kib publish` look when no `--manifest` is given.
pub fn beside(image: &Path) -> Option<PathBuf> {
    let path = image.parent().unwrap_or(Path::new(".")).join(MANIFEST_FILE);
    path.is_file().then_some(path)
}

/// Reads a manifest written by [`BuildManifest::write`] (fields it does not know are ignored).
pub fn read(path: &Path) -> Result<BuildManifest, ManifestReadError> {
    let bytes = fs_err::read(path).map_err(|source| ManifestReadError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| ManifestReadError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// The record of one build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildManifest {
    /// kib's version.
    #[serde(default)]
    pub kib_version: String,
    /// The git revision kib was built from, when known.
    #[serde(default)]
    pub git_revision: Option<String>,
    /// When the manifest was made (RFC 3339, UTC).
    #[serde(default)]
    pub created: String,
    /// The base image.
    pub base_image: BaseImageRecord,
    /// The Kubernetes version.
    pub kubernetes: KubernetesRecord,
    /// The accelerator the build VM ran with (`kvm`, `tcg`).
    #[serde(default)]
    pub accel: String,
    /// The provisioners, described, in order.
    #[serde(default)]
    pub provisioners: Vec<String>,
    /// How long each stage took, in seconds, in pipeline order.
    #[serde(default)]
    pub stage_seconds: StageDurations,
    /// The exported image.
    pub output: OutputRecord,
    /// What the playbook collected from the guest.
    #[serde(default)]
    pub collected: Collected,
}

/// The base image in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImageRecord {
    /// URL (credentials removed) or path.
    pub source: String,
    /// File name.
    pub name: String,
    /// Its SHA-256.
    pub checksum: Checksum,
}

/// The Kubernetes version in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesRecord {
    /// As configured (`1.37`).
    pub requested: String,
    /// As installed (`1.37.1`), when the playbook reported it.
    #[serde(default)]
    pub resolved: Option<String>,
}

/// The exported image in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// File name, relative to the manifest's folder.
    pub file: String,
    /// Format.
    pub format: ImageFormat,
    /// Compression.
    pub compression: Compression,
    /// The file's SHA-256.
    pub sha256: Checksum,
    /// The disk size the guest sees, in bytes.
    pub virtual_size: u64,
    /// The file's length in bytes.
    pub file_size: u64,
}

/// One collected file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectedFile {
    /// Its SHA-256.
    pub sha256: Checksum,
    /// Its length in bytes.
    pub size: u64,
}

/// The files the playbook fetched into the collect folder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Collected {
    /// Path relative to the collect folder (`/`-separated) -> checksum and size.
    #[serde(default)]
    pub files: BTreeMap<String, CollectedFile>,
    /// The parsed `versions.json`, when it was collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<serde_json::Value>,
}

impl Collected {
    /// Hashes every regular file under `dir` (recursively; a missing folder is empty) and
    /// parses `versions.json` at its top.
    pub fn scan(dir: &Path) -> Result<Collected, ManifestError> {
        let mut collected = Collected::default();
        if !dir.exists() {
            return Ok(collected);
        }
        let mut stack = vec![dir.to_owned()];
        while let Some(folder) = stack.pop() {
            let err = |source| ManifestError::Collect {
                path: folder.clone(),
                source,
            };
            for entry in std::fs::read_dir(&folder).map_err(err)? {
                let entry = entry.map_err(err)?;
                let path = entry.path();
                let kind = entry.file_type().map_err(|source| ManifestError::Collect {
                    path: path.clone(),
                    source,
                })?;
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    let (sha256, size) =
                        sha256_file(&path).map_err(|source| ManifestError::Collect {
                            path: path.clone(),
                            source,
                        })?;
                    let rel = path.strip_prefix(dir).unwrap_or(&path);
                    let name = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/");
                    collected.files.insert(name, CollectedFile { sha256, size });
                }
            }
        }
        let versions = dir.join("versions.json");
        if versions.is_file() {
            let text = std::fs::read(&versions).map_err(|source| ManifestError::Collect {
                path: versions.clone(),
                source,
            })?;
            let value =
                serde_json::from_slice(&text).map_err(|source| ManifestError::Versions {
                    path: versions,
                    source,
                })?;
            collected.versions = Some(value);
        }
        Ok(collected)
    }

    /// The installed Kubernetes version from `versions.json` (`kubernetes` or `kubelet`),
    /// without a leading `v`.
    pub fn kubernetes_version(&self) -> Option<String> {
        ["kubernetes", "kubelet"]
            .iter()
            .find_map(|k| self.version(k))
            .map(|s| s.strip_prefix('v').unwrap_or(s).to_owned())
    }

    /// A string from `versions.json` (`containerd`, `crictl`, `runc`, `rocky`, …) as the
    /// playbook wrote it, trimmed; `None` when absent, `null`, empty or not a string.
    pub fn version(&self, component: &str) -> Option<&str> {
        self.versions
            .as_ref()?
            .get(component)?
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// The images the playbook pre-pulled into containerd, as recorded in `versions.json`:
    /// its `images` list (strings, or objects with a `name`) and its `pause_image`, without
    /// repeats.
    pub fn images(&self) -> Vec<String> {
        let Some(versions) = self.versions.as_ref() else {
            return Vec::new();
        };
        let listed = versions
            .get("images")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| {
                i.as_str()
                    .or_else(|| i.get("name").and_then(serde_json::Value::as_str))
            });
        let mut images: Vec<String> = Vec::new();
        for image in listed.chain(self.version("pause_image")) {
            let image = image.trim();
            if !image.is_empty() && !images.iter().any(|i| i == image) {
                images.push(image.to_owned());
            }
        }
        images
    }
}

/// Seconds per stage, kept in insertion (pipeline) order and written as a JSON object keyed by
/// the stage name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageDurations(pub Vec<(Stage, f64)>);

impl StageDurations {
    /// Records (or replaces) a stage's duration.
    pub fn insert(&mut self, stage: Stage, seconds: f64) {
        match self.0.iter_mut().find(|(s, _)| *s == stage) {
            Some(entry) => entry.1 = seconds,
            None => self.0.push((stage, seconds)),
        }
    }

    /// A stage's duration, if recorded.
    pub fn get(&self, stage: Stage) -> Option<f64> {
        self.0.iter().find(|(s, _)| *s == stage).map(|(_, d)| *d)
    }
}

impl Serialize for StageDurations {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (stage, seconds) in &self.0 {
            map.serialize_entry(stage, seconds)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StageDurations {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StageDurations;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of stage name -> seconds")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StageDurations, A::Error> {
                let mut out = StageDurations::default();
                while let Some((name, seconds)) = map.next_entry::<String, f64>()? {
                    // A stage a newer kib added is skipped, not an error.
                    let name = StrDeserializer::<serde::de::value::Error>::new(&name);
                    if let Ok(stage) = Stage::deserialize(name) {
                        out.insert(stage, seconds);
                    }
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(V)
    }
}

impl BuildManifest {
    /// Writes the manifest as pretty JSON to `path`, atomically (temporary file + rename).
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        let err = |source| ManifestError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut json =
            serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        json.push(b'\n');
        let mut temp = tempfile::Builder::new()
            .prefix(".build-manifest.")
            .suffix(".partial")
            // Outputs are for sharing (a web server, another user's publish): 0644 less
            // the umask, like any file, not tempfile's private 0600.
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(dir)
            .map_err(err)?;
        {
            use std::io::Write as _;
            temp.write_all(&json)
                .and_then(|()| temp.as_file().sync_all())
                .map_err(err)?;
        }
        temp.persist(path).map_err(|e| err(e.error))?;
        Ok(())
    }

    /// The Kubernetes version without a leading `v`: as installed when the playbook reported
    /// it (`1.37.1`), else as requested (`1.37`); `None` when the manifest names neither.
    pub fn kubernetes_version(&self) -> Option<&str> {
        [
            self.kubernetes.resolved.as_deref(),
            Some(&self.kubernetes.requested),
        ]
        .into_iter()
        .flatten()
        .map(|v| v.trim())
        .map(|v| v.strip_prefix('v').unwrap_or(v))
        .find(|v| !v.is_empty())
    }

    /// A component's version from the collected `versions.json` (`containerd`, `crictl`,
    /// `runc`, `cni_plugins`, …); see [`Collected::version`].
    pub fn version(&self, component: &str) -> Option<&str> {
        self.collected.version(component)
    }

    /// The Rocky Linux version of the image (`10.1`): `versions.json`'s `rocky` (or `os`).
    pub fn rocky_version(&self) -> Option<&str> {
        self.version("rocky").or_else(|| self.version("os"))
    }

    /// The images pre-pulled into containerd; see [`Collected::images`].
    pub fn images(&self) -> Vec<String> {
        self.collected.images()
    }

    /// The base image's SHA-256 as 64 lower-case hex digits (no `sha256:`).
    pub fn base_image_sha256(&self) -> &str {
        self.base_image.checksum.hex()
    }

    /// The build time (`created`, RFC 3339), if the manifest has one.
    pub fn build_time(&self) -> Option<&str> {
        Some(self.created.trim()).filter(|c| !c.is_empty())
    }

    /// The build time as seconds since the epoch, if present, valid and not before 1970.
    pub fn build_epoch(&self) -> Option<u64> {
        let t = time::OffsetDateTime::parse(
            self.build_time()?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        u64::try_from(t.unix_timestamp()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest as `kib build` writes it, with `versions.json` as the playbook's collect step
    /// writes it, plus a field and a stage this kib does not know.
    const WRITTEN: &str = r#"{
      "kib_version": "0.1.0",
      "git_revision": "c23516f",
      "created": "2026-11-27T10:00:00Z",
      "base_image": {
        "source": "https://dl.rockylinux.org/pub/rocky/10/images/x86_64/Rocky-10-GenericCloud-Base.latest.x86_64.qcow2",
        "name": "Rocky-10-GenericCloud-Base.latest.x86_64.qcow2",
        "checksum": "sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
      },
      "kubernetes": { "requested": "1.37", "resolved": "1.37.1" },
      "accel": "tcg",
      "provisioners": ["ansible `site.yml`"],
      "stage_seconds": { "fetch": 1.2, "boot": 71.0, "sbom": 4.0, "export": 30.5 },
      "output": {
        "file": "rocky10-kubernetes.qcow2", "format": "qcow2", "compression": "zstd",
        "sha256": "sha256:0000000000000000000000000000000000000000000000000000000000000002",
        "virtual_size": 21474836480, "file_size": 912261120
      },
      "collected": {
        "files": {
          "versions.json": {
            "sha256": "sha256:0000000000000000000000000000000000000000000000000000000000000003",
            "size": 120
          }
        },
        "versions": {
          "kubernetes": "1.37.1", "containerd": "2.1.4", "runc": "1.3.0", "cni_plugins": null,
          "crictl": "v1.37.0", "pause_image": "registry.k8s.io/pause:3.10", "rocky": "10.1",
          "images": ["quay.io/calico/node:v3.31.4", {"name": "registry.k8s.io/pause:3.10"}]
        }
      },
      "attestations": { "sbom": "sha256:…" }
    }"#;

    #[test]
    fn reads_what_the_builder_writes_and_ignores_what_it_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        std::fs::write(&path, WRITTEN).unwrap();
        let m = read(&path).unwrap();
        assert_eq!(m.kubernetes_version(), Some("1.37.1"));
        assert_eq!(m.version("containerd"), Some("2.1.4"));
        assert_eq!(m.version("crictl"), Some("v1.37.0"));
        assert_eq!(m.version("cni_plugins"), None);
        assert_eq!(m.version("nope"), None);
        assert_eq!(m.rocky_version(), Some("10.1"));
        assert_eq!(
            m.images(),
            ["quay.io/calico/node:v3.31.4", "registry.k8s.io/pause:3.10"]
        );
        assert_eq!(
            m.base_image_sha256(),
            "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
        );
        assert_eq!(m.build_time(), Some("2026-11-27T10:00:00Z"));
        assert_eq!(m.build_epoch(), Some(1_795_773_600));
        // The unknown `sbom` stage is skipped; the others keep their order.
        let stages: Vec<Stage> = m.stage_seconds.0.iter().map(|(s, _)| *s).collect();
        assert_eq!(stages, [Stage::Fetch, Stage::Boot, Stage::Export]);
        assert_eq!(m.output.compression, Compression::Zstd);
    }

    #[test]
    fn the_build_description_fields_may_be_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let mut v: serde_json::Value = serde_json::from_str(WRITTEN).unwrap();
        let o = v.as_object_mut().unwrap();
        for key in [
            "kib_version",
            "git_revision",
            "created",
            "accel",
            "provisioners",
            "stage_seconds",
            "collected",
        ] {
            o.remove(key);
        }
        o.insert(
            "kubernetes".into(),
            serde_json::json!({"requested": "v1.36"}),
        );
        std::fs::write(&path, v.to_string()).unwrap();
        let m = read(&path).unwrap();
        assert_eq!(m.kubernetes_version(), Some("1.36"));
        assert_eq!(m.version("containerd"), None);
        assert!(m.images().is_empty());
        assert_eq!((m.build_time(), m.build_epoch()), (None, None));
    }

    #[test]
    fn read_errors_name_the_file_and_hint() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join(MANIFEST_FILE);
        let err = read(&missing).unwrap_err();
        assert!(matches!(err, ManifestReadError::Read { .. }), "{err:?}");
        assert_eq!(err.path(), missing);
        assert!(err.to_string().contains(&missing.display().to_string()));
        assert!(err.hint().unwrap().contains("--manifest"));

        let bad = dir.path().join("bad.json");
        for text in ["{", r#"{"kubernetes_version": "1.37.1"}"#] {
            std::fs::write(&bad, text).unwrap();
            let err = read(&bad).unwrap_err();
            assert!(matches!(err, ManifestReadError::Parse { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!("The build manifest `{}` is not valid", bad.display())
            );
            assert!(err.hint().is_some());
        }
    }

    #[test]
    fn bad_versions_json_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("versions.json"), "{not json").unwrap();
        let err = Collected::scan(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::Versions { .. }), "{err:?}");
        assert!(err.hint().is_some());
    }
}
