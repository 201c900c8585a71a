//! Assembles the [`BuildManifest`] of a finished build from the pipeline's own types; the
//! manifest itself (its fields, reading and writing) is the leaf crate `kib-manifest`, which
//! `kib conformance` and `kib publish` read without depending on the builder.

use std::path::Path;

pub use kib_manifest::{
    BaseImageRecord, BuildManifest, Collected, CollectedFile, KubernetesRecord, MANIFEST_FILE,
    ManifestError, ManifestReadError, OutputRecord, StageDurations, read,
};

use crate::cache::ResolvedImage;
use crate::export::ExportedImage;
use crate::provision::Provisioner;
use crate::reporter::Stage;

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

/// Assembles the manifest of a finished build; `collect_dir` is scanned for the files the
/// playbook fetched. `durations` may come from any map of stage -> seconds; they are
/// written in pipeline order.
#[allow(clippy::too_many_arguments)]
pub fn assemble<'a>(
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
    use kib_manifest::{Checksum, Compression, ImageFormat};
    use std::collections::BTreeMap;

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
            format: ImageFormat::Qcow2,
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
        assemble(
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
        assert_eq!(read(&path).unwrap(), m);
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
}
