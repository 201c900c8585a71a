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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cache::ResolvedImage;
use crate::checksum::{Checksum, sha256_file};
use crate::config::{Compression, OutputFormat};
use crate::export::ExportedImage;
use crate::provision::Provisioner;
use crate::reporter::Stage;

/// The manifest's file name in the output folder.
pub const MANIFEST_FILE: &str = "build-manifest.json";

/// Errors from writing or reading the manifest.
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
    /// The manifest could not be read.
    #[error("Failed to read `{path}`")]
    Read {
        /// The manifest file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not valid.
    #[error("`{path}` is not a valid build manifest")]
    Parse {
        /// The manifest file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl ManifestError {
    /// A suggestion for fixing the error, when there is an obvious one.
    pub fn hint(&self) -> Option<String> {
        match self {
            ManifestError::Versions { .. } => Some(
                "the playbook's collect step writes versions.json; check its template".to_owned(),
            ),
            _ => None,
        }
    }
}

/// The record of one build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildManifest {
    /// kib's version.
    pub kib_version: String,
    /// The git revision kib was built from, when known.
    pub git_revision: Option<String>,
    /// When the manifest was made (RFC 3339, UTC).
    pub created: String,
    /// The base image.
    pub base_image: BaseImageRecord,
    /// The Kubernetes version.
    pub kubernetes: KubernetesRecord,
    /// The accelerator the build VM ran with (`kvm`, `tcg`).
    pub accel: String,
    /// The provisioners, described, in order.
    pub provisioners: Vec<String>,
    /// How long each stage took, in seconds, in pipeline order.
    pub stage_seconds: StageDurations,
    /// The exported image.
    pub output: OutputRecord,
    /// What the playbook collected from the guest.
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
    pub resolved: Option<String>,
}

/// The exported image in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// File name, relative to the manifest's folder.
    pub file: String,
    /// Format.
    pub format: OutputFormat,
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

    /// The installed Kubernetes version from `versions.json` (`kubernetes` or `kubelet`).
    pub fn kubernetes_version(&self) -> Option<String> {
        let v = self.versions.as_ref()?;
        ["kubernetes", "kubelet"]
            .iter()
            .find_map(|k| v.get(*k).and_then(|x| x.as_str()))
            .map(|s| s.strip_prefix('v').unwrap_or(s).to_owned())
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
                while let Some((stage, seconds)) = map.next_entry::<Stage, f64>()? {
                    out.insert(stage, seconds);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// Pipeline order, for sorting durations recorded in a hash map.
fn stage_rank(stage: Stage) -> u8 {
    match stage {
        Stage::Fetch => 0,
        Stage::Prepare => 1,
        Stage::Boot => 2,
        Stage::Provision => 3,
        Stage::Shutdown => 4,
        Stage::Export => 5,
    }
}

impl BuildManifest {
    /// Assembles the manifest of a finished build; `collect_dir` is scanned for the files the
    /// playbook fetched. `durations` may come from any map of stage -> seconds; they are
    /// written in pipeline order.
    #[allow(clippy::too_many_arguments)]
    pub fn new<'a>(
        kib_version: &str,
        git_revision: Option<String>,
        base: &ResolvedImage,
        kubernetes_version: &str,
        accel: impl std::fmt::Display,
        provisioners: &[Provisioner],
        durations: impl IntoIterator<Item = (&'a Stage, &'a f64)>,
        image: &ExportedImage,
        collect_dir: &Path,
    ) -> Result<BuildManifest, ManifestError> {
        let collected = Collected::scan(collect_dir)?;
        let mut stages: Vec<(Stage, f64)> = durations.into_iter().map(|(s, d)| (*s, *d)).collect();
        stages.sort_by_key(|(s, _)| stage_rank(*s));
        Ok(BuildManifest {
            kib_version: kib_version.to_owned(),
            git_revision,
            created: now_rfc3339(),
            base_image: BaseImageRecord {
                source: base.source.clone(),
                name: base.name.clone(),
                checksum: base.checksum.clone(),
            },
            kubernetes: KubernetesRecord {
                requested: kubernetes_version.to_owned(),
                resolved: collected.kubernetes_version(),
            },
            accel: accel.to_string(),
            provisioners: provisioners.iter().map(Provisioner::describe).collect(),
            stage_seconds: StageDurations(stages),
            output: OutputRecord {
                file: image.path.file_name().map_or_else(
                    || image.path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
                format: image.format,
                compression: image.compression,
                sha256: image.sha256.clone(),
                virtual_size: image.virtual_size,
                file_size: image.file_size,
            },
            collected,
        })
    }

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

    /// Reads a manifest written by [`BuildManifest::write`].
    pub fn read(path: &Path) -> Result<BuildManifest, ManifestError> {
        let bytes = std::fs::read(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

/// The current UTC time in RFC 3339, to the second.
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::provision::{AnsibleProvisioner, ShellProvisioner};

    fn checksum(n: u8) -> Checksum {
        Checksum::from_digest(&[n; 32])
    }

    fn sample(collect_dir: &Path) -> BuildManifest {
        let base = ResolvedImage {
            path: "/cache/images/sha256-x.img".into(),
            checksum: checksum(1),
            name: "Rocky-10-GenericCloud-Base.latest.x86_64.qcow2".into(),
            source: "https://<redacted>@example.com/Rocky-10-GenericCloud-Base.latest.x86_64.qcow2"
                .into(),
            size: 10,
            format: "qcow2".into(),
            from_cache: true,
        };
        let image = ExportedImage {
            path: "/out/node.qcow2".into(),
            checksum_path: "/out/node.qcow2.sha256".into(),
            sha256: checksum(2),
            virtual_size: 20 << 30,
            file_size: 900 << 20,
            format: OutputFormat::Qcow2,
            compression: Compression::Zstd,
        };
        let provisioners = vec![
            Provisioner::Ansible(AnsibleProvisioner {
                playbook: "playbook/site.yml".into(),
                extra_vars: BTreeMap::new(),
                extra_args: vec![],
            }),
            Provisioner::Shell(ShellProvisioner {
                inline: vec!["true".into()],
                sudo: true,
            }),
        ];
        let durations: HashMap<Stage, f64> = [
            (Stage::Export, 3.5),
            (Stage::Fetch, 0.25),
            (Stage::Boot, 71.0),
        ]
        .into_iter()
        .collect();
        BuildManifest::new(
            "0.1.0",
            Some("c23516f".into()),
            &base,
            "1.37",
            "tcg",
            &provisioners,
            &durations,
            &image,
            collect_dir,
        )
        .unwrap()
    }

    #[test]
    fn round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let collect = dir.path().join("collect");
        std::fs::create_dir_all(collect.join("etc")).unwrap();
        std::fs::write(
            collect.join("versions.json"),
            r#"{"kubelet": "v1.37.1", "containerd": "2.3.2"}"#,
        )
        .unwrap();
        std::fs::write(collect.join("etc/os-release"), "NAME=Rocky\n").unwrap();
        let m = sample(&collect);
        assert_eq!(m.kubernetes.resolved.as_deref(), Some("1.37.1"));
        assert_eq!(m.collected.files.len(), 2);
        assert_eq!(m.collected.files["etc/os-release"].size, 11);
        assert_eq!(
            m.collected.versions.as_ref().unwrap()["containerd"],
            "2.3.2"
        );
        assert_eq!(
            m.provisioners,
            vec![
                "ansible `site.yml`".to_owned(),
                "shell (1 command)".to_owned()
            ]
        );
        assert!(
            time::OffsetDateTime::parse(&m.created, &time::format_description::well_known::Rfc3339)
                .is_ok()
        );

        let path = dir.path().join(MANIFEST_FILE);
        m.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // Stages in pipeline order, keyed by name; checksums as sha256:HEX.
        let fetch = text.find("\"fetch\"").unwrap();
        let boot = text.find("\"boot\"").unwrap();
        let export = text.find("\"export\"").unwrap();
        assert!(fetch < boot && boot < export, "{text}");
        assert!(
            text.contains(&format!("\"sha256\": \"{}\"", checksum(2))),
            "{text}"
        );
        assert!(text.contains("\"compression\": \"zstd\""), "{text}");
        assert!(!text.contains("password"), "{text}");
        assert_eq!(BuildManifest::read(&path).unwrap(), m);
        // Nothing but the manifest and the collect folder is left in the folder.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn missing_collect_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample(&dir.path().join("nope"));
        assert!(m.collected.files.is_empty() && m.collected.versions.is_none());
        assert_eq!(m.kubernetes.resolved, None);
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
