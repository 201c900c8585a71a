//! What a build attests, end to end on a local registry: the SBOM and provenance
//! `kib_manifest::attest::write_beside` makes (what `kib build` writes beside
//! `build-manifest.json`) are attached by `kib publish --sign-key` on its own, and both verify
//! with the real cosign 2.5 CLI (`cosign verify-attestation --type spdxjson` /
//! `--type slsaprovenance1`) and with `kib verify --attestation-type`; a wrong key is rejected.
//!
//! The package list is the host's real dpkg database through the fixture's own
//! `generalize_package_list_cmd` (dpkg stands in for rpm, as on the fixture image, and the SBOM
//! says so); a Rocky build's comes from `rpm -qa --qf …` in the guest.
//!
//! Run with: `cargo test --features test-registry --test cli attest -- --test-threads=1`
#![cfg(feature = "test-registry")]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::common::{
    PASSWORD, generate_key_pair, kib_with_password as kib, need, path, qcow2, start_registry,
    stderr,
};
use super::cosign::{cosign, cosign_verify_attestation, need_cosign};

/// A build's output folder: the qcow2, its manifest, and the collected package list.
fn build_output(dir: &Path) -> Value {
    let disk = qcow2(dir);
    let (sha, size) = kib_manifest::sha256_file(&disk).unwrap();
    let manifest: kib_manifest::BuildManifest = serde_json::from_value(serde_json::json!({
        "kib_version": env!("CARGO_PKG_VERSION"),
        "git_revision": "v0.1.0-test",
        "created": "2026-11-30T02:00:00Z",
        "base_image": {"source": "/var/cache/kib/fixture/debian-12-genericcloud-amd64.qcow2",
                       "name": "debian-12-genericcloud-amd64.qcow2", "checksum": format!("sha256:{}", "a".repeat(64))},
        "kubernetes": {"requested": "1.37", "resolved": "1.37.1"},
        "accel": "tcg",
        "provisioners": ["ansible `site.yml`"],
        "stage_seconds": {"boot": 60.0, "provision": 120.0},
        "output": {"file": "node.qcow2", "format": "qcow2", "compression": "zstd",
                   "sha256": sha.to_string(), "virtual_size": 67108864, "file_size": size},
        "collected": {"files": {}, "versions": {"kubernetes": "1.37.1", "rocky": null, "images": null}},
    }))
    .unwrap();
    manifest.write(&dir.join("build-manifest.json")).unwrap();
    let collected = dir.join("collected");
    fs_err::create_dir_all(&collected).unwrap();
    // The fixture's command, as playbook/tests/fixture-vars.yml gives it.
    let vars: String =
        fs_err::read_to_string(kib_test_infra::repo_root().join("playbook/tests/fixture-vars.yml"))
            .unwrap();
    let line = vars
        .lines()
        .find(|l| l.starts_with("generalize_package_list_cmd:"))
        .unwrap();
    let cmd = line
        .split_once(": ")
        .unwrap()
        .1
        .trim_matches('"')
        .replace("\\\\", "\\");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {cmd} | LC_ALL=C sort > {}/packages.txt",
            collected.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    kib_manifest::attest::write_beside(dir, &collected, &manifest).unwrap();
    serde_json::from_slice(&fs_err::read(dir.join("sbom.spdx.json")).unwrap()).unwrap()
}

#[test]
fn publish_attests_the_builds_sbom_and_provenance_and_cosign_verifies_both() {
    need_cosign();
    need("qemu-img", "qemu-utils");
    need("dpkg-query", "dpkg");
    let registry = start_registry();
    let repo = format!("{}/kib/node", registry.host());
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("cosign-home");
    fs_err::create_dir_all(&home).unwrap();
    let out_dir = dir.path().join("output");
    fs_err::create_dir_all(&out_dir).unwrap();
    let sbom = build_output(&out_dir);
    let pkgs = sbom["packages"].as_array().unwrap();
    assert!(pkgs.len() > 50, "the host's dpkg database: {}", pkgs.len());
    assert!(pkgs.iter().any(|p| p["name"] == "dpkg"));
    assert!(
        sbom["comment"]
            .as_str()
            .unwrap()
            .contains("stands in for the rpm")
    );
    for d in ["keys", "other"] {
        fs_err::create_dir_all(dir.path().join(d)).unwrap();
    }
    let keys = generate_key_pair(&dir.path().join("keys"));
    let other = generate_key_pair(&dir.path().join("other"));

    let out = kib(
        &[
            "publish",
            "--image",
            &repo,
            "--qcow2",
            path(&out_dir.join("node.qcow2")),
            "--git-dir",
            path(dir.path()),
            "--tag-untagged",
            "{k8s_version}-test",
            "--sign-key",
            path(&keys.key),
            "--output-format",
            "json",
        ],
        Some(PASSWORD),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = doc["digest"].as_str().unwrap().to_owned();
    let by_digest = format!("{repo}@{digest}");
    assert!(
        stderr(&out).matches("Attested").count() >= 2,
        "{}",
        stderr(&out)
    );

    for (type_name, uri, file) in [
        ("spdxjson", "https://spdx.dev/Document", "sbom.spdx.json"),
        (
            "slsaprovenance1",
            "https://slsa.dev/provenance/v1",
            "provenance.slsa.json",
        ),
    ] {
        let st = cosign_verify_attestation(&home, &keys.public, &by_digest, type_name);
        let found = st
            .iter()
            .find(|s| s["predicateType"] == uri)
            .unwrap_or_else(|| panic!("no {uri} statement: {st:#?}"));
        assert_eq!(
            found["subject"][0]["digest"]["sha256"],
            digest.trim_start_matches("sha256:")
        );
        let want: Value =
            serde_json::from_slice(&fs_err::read(out_dir.join(file)).unwrap()).unwrap();
        assert_eq!(found["predicate"], want, "{file} as attested");

        let out = cosign(
            &home,
            &[
                "verify-attestation",
                "--key",
                path(&other.public),
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                "--type",
                type_name,
                &by_digest,
            ],
            None,
        );
        assert!(
            !out.status.success(),
            "cosign accepted a wrong key for {type_name}"
        );

        let out = kib(
            &[
                "verify",
                "--key",
                path(&keys.public),
                &by_digest,
                "--attestation-type",
                type_name,
                "--output",
                "json",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "kib verify {type_name}: {}",
            stderr(&out)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["verified"], true);
        assert_eq!(report["attestations"]["verified"], true, "{report}");
        let out = kib(
            &[
                "verify",
                "--key",
                path(&other.public),
                &by_digest,
                "--attestation-type",
                type_name,
            ],
            None,
        );
        assert!(!out.status.success(), "kib verify accepted a wrong key");
    }
}
