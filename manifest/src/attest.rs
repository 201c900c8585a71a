//! What a build attests: an SPDX 2.3 JSON SBOM of the image and a SLSA provenance v1
//! predicate, both made from `build-manifest.json` and the playbook's `packages.txt`, written
//! beside the manifest by `kib build` ([`write_beside`]) and attached by `kib publish
//! --sign-key` ([`beside`]) as `spdxjson` and `slsaprovenance1` attestations.
//!
//! Both are reproducible: the same manifest and package list give the same bytes (times come
//! from the manifest, the namespace from the image's digest).
//!
//! References: SPDX 2.3 (spdx.github.io/spdx-spec/v2.3: document creation information §6,
//! package information §7, relationships §11), SLSA provenance v1 (slsa.dev/spec/v1.0/provenance),
//! purl types `rpm`, `deb` and `oci` (github.com/package-url/purl-spec, PURL-TYPES.rst).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::{BuildManifest, ManifestError};

/// The SBOM's file name beside `build-manifest.json`.
pub const SBOM_FILE: &str = "sbom.spdx.json";
/// The provenance predicate's file name beside `build-manifest.json`.
pub const PROVENANCE_FILE: &str = "provenance.slsa.json";
/// The package list the playbook collects (`collected/packages.txt`).
pub const PACKAGES_FILE: &str = "packages.txt";
/// The SLSA build type of a kib build.
pub const BUILD_TYPE: &str = concat!(env!("CARGO_PKG_REPOSITORY"), "/build/v1");
/// The SLSA builder id (kib's repository; the version is in `builder.version`).
pub const BUILDER_ID: &str = env!("CARGO_PKG_REPOSITORY");

/// One installed package: a line of `packages.txt`, `NAME\tVERSION\tRELEASE\tARCH` (rpm's
/// `%{NAME}\t%{VERSION}\t%{RELEASE}\t%{ARCH}`; dpkg-query leaves RELEASE empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPackage {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Release (empty for dpkg).
    pub release: String,
    /// Architecture.
    pub arch: String,
}

impl InstalledPackage {
    /// `VERSION-RELEASE`, or `VERSION` without a release.
    pub fn version_info(&self) -> String {
        if self.release.is_empty() {
            self.version.clone()
        } else {
            format!("{}-{}", self.version, self.release)
        }
    }
}

/// The packages of `packages.txt`, sorted; lines that are not four tab-separated fields with a
/// name and a version are skipped (an older list of `rpm -qa` NEVRAs carries no fields).
pub fn parse_packages(text: &str) -> Vec<InstalledPackage> {
    let mut out: Vec<InstalledPackage> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').map(str::trim).collect();
            (f.len() == 4 && !f[0].is_empty() && !f[1].is_empty()).then(|| InstalledPackage {
                name: f[0].to_owned(),
                version: f[1].to_owned(),
                release: f[2].to_owned(),
                arch: f[3].to_owned(),
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.name, &a.version, &a.release, &a.arch).cmp(&(&b.name, &b.version, &b.release, &b.arch))
    });
    out.dedup();
    out
}

/// Which package database the list came from: rpm on Rocky; the test fixture (Debian) has
/// only dpkg, which stands in for rpm there.
fn is_rpm(manifest: &BuildManifest) -> bool {
    manifest.rocky_version().is_some()
}

fn spdx_id(prefix: &str, parts: &[&str], taken: &mut std::collections::BTreeSet<String>) -> String {
    let clean: String = parts
        .join("-")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let base = format!("SPDXRef-{prefix}-{clean}");
    let mut id = base.clone();
    let mut n = 1;
    while !taken.insert(id.clone()) {
        n += 1;
        id = format!("{base}-{n}");
    }
    id
}

/// The pre-pulled images with their digests, from `versions.json`'s `images` (strings, or
/// objects with `name` and `digest`) and `pause_image`.
fn images_with_digests(manifest: &BuildManifest) -> Vec<(String, Option<String>)> {
    let listed: Vec<Value> = manifest
        .collected
        .versions
        .as_ref()
        .and_then(|v| v.get("images"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    manifest
        .images()
        .into_iter()
        .map(|name| {
            let digest = listed
                .iter()
                .find(|i| i.get("name").and_then(Value::as_str) == Some(name.as_str()))
                .and_then(|i| i.get("digest"))
                .and_then(Value::as_str)
                .filter(|d| d.starts_with("sha256:"))
                .map(str::to_owned);
            (name, digest)
        })
        .collect()
}

/// The SPDX 2.3 JSON document of the image: the image itself (described by the document, by
/// its qcow2 SHA-256), each installed package and each pre-pulled container image (CONTAINS).
/// `created` is the build time; the namespace is derived from the image's digest.
pub fn spdx_sbom(manifest: &BuildManifest, packages: &[InstalledPackage]) -> Value {
    let rpm = is_rpm(manifest);
    let image_hex = manifest.output.sha256.hex().to_owned();
    let mut taken = std::collections::BTreeSet::new();
    let image_id = "SPDXRef-Image".to_owned();
    taken.insert(image_id.clone());
    let mut pkgs = vec![json!({
        "SPDXID": image_id,
        "name": manifest.output.file,
        "versionInfo": manifest.kubernetes_version().unwrap_or("unknown"),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "checksums": [{"algorithm": "SHA256", "checksumValue": image_hex}],
        "comment": format!(
            "Kubernetes node image built by kib {} from {} (sha256 {})",
            manifest.kib_version, manifest.base_image.name, manifest.base_image_sha256()
        ),
    })];
    let mut rels = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-Image",
    })];
    for p in packages {
        let id = spdx_id(
            if rpm { "RPM" } else { "DEB" },
            &[&p.name, &p.version_info(), &p.arch],
            &mut taken,
        );
        let purl = if rpm {
            format!(
                "pkg:rpm/rocky/{}@{}?arch={}",
                p.name,
                p.version_info(),
                p.arch
            )
        } else {
            format!("pkg:deb/debian/{}@{}?arch={}", p.name, p.version, p.arch)
        };
        pkgs.push(json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version_info(),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl,
            }],
            "comment": format!("arch {}", p.arch),
        }));
        rels.push(json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    for (name, digest) in images_with_digests(manifest) {
        let id = spdx_id("Container", &[&name], &mut taken);
        let mut pkg = json!({
            "SPDXID": id,
            "name": name,
            "versionInfo": digest.clone().unwrap_or_else(|| name.rsplit(':').next().unwrap_or_default().to_owned()),
            "downloadLocation": format!("docker://{name}"),
            "filesAnalyzed": false,
            "primaryPackagePurpose": "CONTAINER",
            "comment": "pre-pulled into containerd's k8s.io namespace",
        });
        if let Some(d) = &digest {
            pkg["checksums"] =
                json!([{"algorithm": "SHA256", "checksumValue": d.trim_start_matches("sha256:")}]);
        }
        pkgs.push(pkg);
        rels.push(json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let mut creation = json!({
        "created": manifest.build_time().unwrap_or("1970-01-01T00:00:00Z"),
        "creators": [format!("Tool: kib-{}", manifest.kib_version)],
    });
    let db_note = if rpm {
        "Packages from the image's rpm database (rpm -qa)."
    } else {
        "Packages from the image's dpkg database (dpkg-query -W): this is kib's Debian test \
         fixture, whose dpkg database stands in for the rpm database of a Rocky image."
    };
    creation["comment"] = json!(db_note);
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("kib-node-image-{}", manifest.output.file),
        "documentNamespace": format!("{BUILDER_ID}/spdx/{}-{image_hex}", manifest.output.file),
        "comment": db_note,
        "creationInfo": creation,
        "packages": pkgs,
        "relationships": rels,
    })
}

/// The SLSA provenance v1 predicate of the build: builder kib + version, build type, the
/// build's inputs as recorded in the manifest (base image URL without credentials, Kubernetes
/// version, provisioners; no secrets are ever in the manifest), the base image and kib's git
/// revision (which pins the playbook it embeds) as resolved dependencies, and the start and
/// finish times (the manifest's `created` less the stage durations).
pub fn slsa_provenance(manifest: &BuildManifest) -> Value {
    let finished = manifest.build_time().map(str::to_owned);
    let started = manifest.build_epoch().and_then(|end| {
        let took: f64 = manifest.stage_seconds.0.iter().map(|(_, s)| *s).sum();
        let start = end.checked_sub(took.ceil() as u64)?;
        let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(start).ok()?).ok()?;
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    });
    let mut deps = vec![json!({
        "uri": manifest.base_image.source,
        "name": manifest.base_image.name,
        "digest": {"sha256": manifest.base_image_sha256()},
    })];
    if let Some(rev) = manifest.git_revision.as_deref().filter(|r| !r.is_empty()) {
        deps.push(json!({
            "uri": format!("git+{BUILDER_ID}@{rev}"),
            "name": "kib (its playbook/)",
            "annotations": {"git_describe": rev},
        }));
    }
    let mut metadata = json!({});
    if let Some(s) = started {
        metadata["startedOn"] = json!(s);
    }
    if let Some(f) = finished {
        metadata["finishedOn"] = json!(f);
    }
    json!({
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "base_image": {"url": manifest.base_image.source, "sha256": manifest.base_image_sha256()},
                "kubernetes": {"version": manifest.kubernetes.requested},
                "provisioners": manifest.provisioners,
            },
            "internalParameters": {"accel": manifest.accel},
            "resolvedDependencies": deps,
        },
        "runDetails": {
            "builder": {"id": BUILDER_ID, "version": {"kib": manifest.kib_version}},
            "metadata": metadata,
            "byproducts": [{
                "name": manifest.output.file,
                "digest": {"sha256": manifest.output.sha256.hex()},
            }],
        },
    })
}

fn write_json(path: &Path, value: &Value) -> Result<(), ManifestError> {
    let err = |source| ManifestError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| err(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    let mut temp = tempfile::Builder::new()
        .prefix(".attest.")
        .suffix(".partial")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(err)?;
    {
        use std::io::Write as _;
        temp.write_all(&bytes)
            .and_then(|()| temp.as_file().sync_all())
            .map_err(err)?;
    }
    temp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Writes [`SBOM_FILE`] and [`PROVENANCE_FILE`] into `out_dir` (beside `build-manifest.json`),
/// reading the package list from `collected_dir` (none: an SBOM of the image and its images).
pub fn write_beside(
    out_dir: &Path,
    collected_dir: &Path,
    manifest: &BuildManifest,
) -> Result<[PathBuf; 2], ManifestError> {
    let list = collected_dir.join(PACKAGES_FILE);
    let packages = match std::fs::read_to_string(&list) {
        Ok(t) => parse_packages(&t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(ManifestError::Collect { path: list, source }),
    };
    let sbom = out_dir.join(SBOM_FILE);
    write_json(&sbom, &spdx_sbom(manifest, &packages))?;
    let prov = out_dir.join(PROVENANCE_FILE);
    write_json(&prov, &slsa_provenance(manifest))?;
    Ok([sbom, prov])
}

/// The attestations a build wrote beside `manifest_path`, each with its cosign `--type`
/// (`spdxjson`; `slsaprovenance1`, cosign's name for `https://slsa.dev/provenance/v1`; its
/// `slsaprovenance` is v0.2), in that order; missing files are left out.
pub fn beside(manifest_path: &Path) -> Vec<(PathBuf, &'static str)> {
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    [
        (SBOM_FILE, "spdxjson"),
        (PROVENANCE_FILE, "slsaprovenance1"),
    ]
    .into_iter()
    .map(|(f, t)| (dir.join(f), t))
    .filter(|(p, _)| p.is_file())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(rocky: bool) -> BuildManifest {
        let versions = if rocky {
            r#"{"kubernetes":"1.37.1","rocky":"10.1","pause_image":"registry.k8s.io/pause:3.10",
                "images":[{"name":"registry.k8s.io/kube-apiserver:v1.37.1","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111"},
                          "registry.k8s.io/pause:3.10"]}"#
        } else {
            r#"{"kubernetes":"1.37.1","rocky":null,"images":null}"#
        };
        let text = format!(
            r#"{{"kib_version":"0.1.0","git_revision":"v0.1.0-3-gabc1234","created":"2026-11-27T10:00:00Z",
            "base_image":{{"source":"https://dl.rockylinux.org/pub/rocky/10/images/x86_64/Rocky-10-GenericCloud-Base.latest.x86_64.qcow2","name":"Rocky-10-GenericCloud-Base.latest.x86_64.qcow2","checksum":"sha256:{b}"}},
            "kubernetes":{{"requested":"1.37","resolved":"1.37.1"}},"accel":"tcg","provisioners":["ansible `site.yml`"],
            "stage_seconds":{{"fetch":1.5,"boot":70.0,"provision":500.0}},
            "output":{{"file":"rocky10-kubernetes.qcow2","format":"qcow2","compression":"zstd","sha256":"sha256:{o}","virtual_size":21474836480,"file_size":912261120}},
            "collected":{{"files":{{}},"versions":{versions}}}}}"#,
            b = "a".repeat(64),
            o = "b".repeat(64),
        );
        serde_json::from_str(&text).unwrap()
    }

    const RPMS: &str = "bash\t5.2.26\t4.el10\tx86_64\nkubelet\t1.37.1\t150500.1.1\tx86_64\n\
                        tzdata\t2025b\t1.el10\tnoarch\nnot a field line\n";

    #[test]
    fn packages_parse_four_fields() {
        let p = parse_packages(RPMS);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].name, "kubelet");
        assert_eq!(p[1].version_info(), "1.37.1-150500.1.1");
        let deb = parse_packages("bash\t5.2.15-2+b7\t\tamd64\n");
        assert_eq!(deb[0].version_info(), "5.2.15-2+b7");
        assert_eq!(deb[0].arch, "amd64");
    }

    /// The fields SPDX 2.3 requires of a document, its packages and the DESCRIBES relation.
    #[test]
    fn sbom_has_the_required_spdx_2_3_fields() {
        let m = manifest(true);
        let doc = spdx_sbom(&m, &parse_packages(RPMS));
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        assert_eq!(doc["dataLicense"], "CC0-1.0");
        assert_eq!(doc["SPDXID"], "SPDXRef-DOCUMENT");
        assert!(doc["name"].as_str().is_some_and(|n| !n.is_empty()));
        let ns = doc["documentNamespace"].as_str().unwrap();
        assert!(ns.starts_with("https://") && !ns.contains('#'), "{ns}");
        assert_eq!(doc["creationInfo"]["created"], "2026-11-27T10:00:00Z");
        let creators = doc["creationInfo"]["creators"].as_array().unwrap();
        assert!(creators[0].as_str().unwrap().starts_with("Tool: kib-0.1.0"));
        let pkgs = doc["packages"].as_array().unwrap();
        let mut ids = std::collections::BTreeSet::new();
        for p in pkgs {
            let id = p["SPDXID"].as_str().unwrap();
            assert!(
                id.strip_prefix("SPDXRef-").is_some_and(|r| r
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')),
                "{id}"
            );
            assert!(ids.insert(id.to_owned()), "unique {id}");
            for f in ["name", "versionInfo", "downloadLocation"] {
                assert!(p[f].as_str().is_some_and(|v| !v.is_empty()), "{f} of {p}");
            }
        }
        // image + 3 rpms + 2 images
        assert_eq!(pkgs.len(), 6);
        let kubelet = pkgs.iter().find(|p| p["name"] == "kubelet").unwrap();
        assert_eq!(kubelet["versionInfo"], "1.37.1-150500.1.1");
        assert_eq!(
            kubelet["externalRefs"][0]["referenceLocator"],
            "pkg:rpm/rocky/kubelet@1.37.1-150500.1.1?arch=x86_64"
        );
        let api = pkgs
            .iter()
            .find(|p| p["name"] == "registry.k8s.io/kube-apiserver:v1.37.1")
            .unwrap();
        assert_eq!(api["versionInfo"], format!("sha256:{}", "1".repeat(64)));
        assert_eq!(api["checksums"][0]["checksumValue"], "1".repeat(64));
        let rels = doc["relationships"].as_array().unwrap();
        assert!(rels.iter().any(|r| r["spdxElementId"] == "SPDXRef-DOCUMENT"
            && r["relationshipType"] == "DESCRIBES"
            && r["relatedSpdxElement"] == "SPDXRef-Image"));
        assert_eq!(
            rels.iter()
                .filter(|r| r["relationshipType"] == "CONTAINS")
                .count(),
            5
        );
        assert!(
            !doc["comment"].as_str().unwrap().contains("dpkg"),
            "a Rocky image's SBOM says rpm"
        );
    }

    #[test]
    fn the_fixture_sbom_says_dpkg_stands_in_for_rpm() {
        let doc = spdx_sbom(
            &manifest(false),
            &parse_packages("bash\t5.2.15-2+b7\t\tamd64\n"),
        );
        assert!(
            doc["comment"]
                .as_str()
                .unwrap()
                .contains("stands in for the rpm")
        );
        assert!(
            doc["creationInfo"]["comment"]
                .as_str()
                .unwrap()
                .contains("dpkg")
        );
        assert_eq!(
            doc["packages"][1]["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/bash@5.2.15-2+b7?arch=amd64"
        );
    }

    #[test]
    fn same_inputs_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let collected = dir.path().join("collected");
        std::fs::create_dir(&collected).unwrap();
        std::fs::write(collected.join(PACKAGES_FILE), RPMS).unwrap();
        let m = manifest(true);
        let [a, b] = write_beside(dir.path(), &collected, &m).unwrap();
        let first = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        // Reordered input, same SBOM.
        let reordered: String = RPMS.lines().rev().map(|l| format!("{l}\n")).collect();
        std::fs::write(collected.join(PACKAGES_FILE), reordered).unwrap();
        write_beside(dir.path(), &collected, &m).unwrap();
        assert_eq!(first.0, std::fs::read(&a).unwrap());
        assert_eq!(first.1, std::fs::read(&b).unwrap());
        assert_eq!(
            beside(&dir.path().join(crate::MANIFEST_FILE)),
            [(a, "spdxjson"), (b, "slsaprovenance1")]
        );
    }

    #[test]
    fn provenance_names_builder_inputs_and_times() {
        let p = slsa_provenance(&manifest(true));
        let def = &p["buildDefinition"];
        assert_eq!(def["buildType"], BUILD_TYPE);
        assert_eq!(
            def["externalParameters"]["base_image"]["sha256"],
            "a".repeat(64)
        );
        assert!(
            def["externalParameters"]["base_image"]["url"]
                .as_str()
                .unwrap()
                .starts_with("https://dl.rockylinux.org/")
        );
        assert_eq!(def["externalParameters"]["kubernetes"]["version"], "1.37");
        assert_eq!(
            def["resolvedDependencies"][0]["digest"]["sha256"],
            "a".repeat(64)
        );
        assert_eq!(
            def["resolvedDependencies"][1]["annotations"]["git_describe"],
            "v0.1.0-3-gabc1234"
        );
        let run = &p["runDetails"];
        assert_eq!(run["builder"]["id"], BUILDER_ID);
        assert_eq!(run["builder"]["version"]["kib"], "0.1.0");
        assert_eq!(run["metadata"]["finishedOn"], "2026-11-27T10:00:00Z");
        // 571.5 s of stages, rounded up.
        assert_eq!(run["metadata"]["startedOn"], "2026-11-27T09:50:28Z");
    }
}
