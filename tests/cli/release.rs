//! The release pipeline: the docs' CDI and CAPK YAML (docs/releasing/) and the release
//! workflow are parsed and checked against the code (image reference, `docker://` form, field
//! names, every `kib` flag the workflow passes), so they cannot drift; and, with
//! `--features test-registry`, `kib publish --sign-key` against a real local registry, checked
//! with `kib verify`.
//! Run with: `cargo test --features test-registry --test cli release`

use std::path::{Path, PathBuf};
use std::process::Command;

use kib_packager::registry::Reference;
use kib_packager::tags::{TagScheme, TagVars};
use serde_yaml::Value;

/// The repository the docs use for the published image.
const DOC_REPOSITORY: &str = "registry.example/kib/node";
/// The release the docs show: its git tag.
const DOC_GIT_TAG: &str = "v1.0.0";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn yaml_documents(rel: &str) -> Vec<Value> {
    let text = fs_err::read_to_string(repo_file(rel)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

use serde::Deserialize as _;

/// `v[a][b][0]…`, failing with the path when a field is missing.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        let next = match key.parse::<usize>() {
            Ok(n) => cur.get(n),
            Err(_) => cur.get(*key),
        };
        cur = next.unwrap_or_else(|| panic!("missing field `{}`", path[..=i].join(".")));
    }
    cur
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{}` is not a string", path.join(".")))
}

/// Checks a containerDisk image reference as `kib publish` prints it: the docs' repository
/// and a tag kib's default tag scheme gives the release.
fn assert_published_reference(image: &str) {
    assert!(
        !image.contains("://"),
        "a containerDisk image has no scheme: {image}"
    );
    let reference: Reference = image.parse().unwrap_or_else(|e| panic!("`{image}`: {e}"));
    assert_eq!(
        format!("{}/{}", reference.registry(), reference.repository()),
        DOC_REPOSITORY
    );
    let tags = TagScheme::default()
        .tags(&TagVars {
            git_tag: Some(DOC_GIT_TAG.to_owned()),
            short_sha: Some("0123abc".to_owned()),
            kubernetes_version: Some("v1.37.1".to_owned()),
        })
        .unwrap();
    let tag = reference.tag().expect("the docs name a tag");
    assert_eq!(
        tag, tags.immutable,
        "the docs use the immutable tag `kib publish` sets for {DOC_GIT_TAG}"
    );
}

/// CDI's `source.registry.url`: `docker://` + a reference `kib publish` printed.
fn assert_cdi_registry_source(registry: &Value) {
    let url = s(registry, &["url"]);
    let image = url
        .strip_prefix("docker://")
        .unwrap_or_else(|| panic!("CDI wants docker://REGISTRY/REPO:TAG, got `{url}`"));
    assert_published_reference(image);
    // DataVolumeSourceRegistry's fields (CDI core/v1beta1 types.go).
    let known = [
        "url",
        "imageStream",
        "pullMethod",
        "secretRef",
        "certConfigMap",
        "platform",
    ];
    for key in registry.as_mapping().unwrap().keys() {
        let key = key.as_str().unwrap();
        assert!(
            known.contains(&key),
            "unknown registry source field `{key}`"
        );
    }
    if let Some(method) = registry.get("pullMethod") {
        assert!(
            matches!(method.as_str(), Some("pod" | "node")),
            "{method:?}"
        );
    }
}

#[test]
fn docs_datavolume_imports_the_published_image() {
    let docs = yaml_documents("docs/releasing/datavolume.yaml");
    assert_eq!(docs.len(), 1);
    let dv = &docs[0];
    assert_eq!(s(dv, &["apiVersion"]), "cdi.kubevirt.io/v1beta1");
    assert_eq!(s(dv, &["kind"]), "DataVolume");
    assert_cdi_registry_source(at(dv, &["spec", "source", "registry"]));
    s(dv, &["spec", "storage", "resources", "requests", "storage"]);
}

#[test]
fn docs_capk_templates_boot_the_published_image() {
    let docs = yaml_documents("docs/releasing/kubevirtmachinetemplate.yaml");
    assert_eq!(docs.len(), 2, "a containerDisk and a DataVolume template");
    let mut saw = (false, false);
    for doc in &docs {
        assert_eq!(
            s(doc, &["apiVersion"]),
            "infrastructure.cluster.x-k8s.io/v1alpha1"
        );
        assert_eq!(s(doc, &["kind"]), "KubevirtMachineTemplate");
        let spec = at(doc, &["spec", "template", "spec"]);
        assert_eq!(
            s(spec, &["virtualMachineBootstrapCheck", "checkStrategy"]),
            "ssh"
        );
        let vm = at(spec, &["virtualMachineTemplate", "spec"]);
        let vmi = at(vm, &["template", "spec"]);
        let disks = at(vmi, &["domain", "devices", "disks"])
            .as_sequence()
            .unwrap();
        let volumes = at(vmi, &["volumes"]).as_sequence().unwrap();
        assert_eq!(volumes.len(), 1);
        let volume = &volumes[0];
        let name = s(volume, &["name"]);
        let disk = disks
            .iter()
            .find(|d| d.get("name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no disk for volume `{name}`"));
        assert_eq!(s(disk, &["disk", "bus"]), "virtio");
        if let Some(cd) = volume.get("containerDisk") {
            assert_published_reference(s(cd, &["image"]));
            saw.0 = true;
        } else {
            let dv_name = s(volume, &["dataVolume", "name"]);
            let templates = at(vm, &["dataVolumeTemplates"]).as_sequence().unwrap();
            let template = templates
                .iter()
                .find(|t| {
                    t.get("metadata")
                        .and_then(|m| m.get("name"))
                        .and_then(Value::as_str)
                        == Some(dv_name)
                })
                .unwrap_or_else(|| panic!("no dataVolumeTemplate `{dv_name}`"));
            assert_cdi_registry_source(at(template, &["spec", "source", "registry"]));
            saw.1 = true;
        }
    }
    assert_eq!(saw, (true, true));
}

/// The `kib` invocations in a shell script (`kib` where a command starts): (subcommand,
/// flags), joining `\` continuations.
fn kib_invocations(script: &str) -> Vec<(String, Vec<String>)> {
    let joined = script.replace("\\\n", " ");
    let mut found = Vec::new();
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            let command_position =
                i == 0 || matches!(words[i - 1], "|" | "&&" | "||" | ";" | "then" | "do");
            if *w != "kib" || !command_position {
                continue;
            }
            let Some(sub) = words.get(i + 1) else {
                continue;
            };
            let flags = words[i + 2..]
                .iter()
                .take_while(|w| !matches!(**w, "|" | ">" | "&&" | "||" | ";"))
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().unwrap().to_owned())
                .collect();
            found.push(((*sub).to_owned(), flags));
        }
    }
    found
}

fn help(sub: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kib"))
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "kib {sub} --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn release_workflow_runs_the_pipeline_with_flags_kib_has() {
    let rel = ".github/workflows/release.yml";
    let text = fs_err::read_to_string(repo_file(rel)).unwrap();
    let wf: Value = serde_yaml::from_str(&text).unwrap();
    let tags = at(&wf, &["on", "push", "tags"]).as_sequence().unwrap();
    assert!(tags.iter().any(|t| t.as_str() == Some("v*")), "{tags:?}");
    at(&wf, &["on", "workflow_call"]);
    let steps = at(&wf, &["jobs", "release", "steps"])
        .as_sequence()
        .unwrap();
    let scripts: Vec<&str> = steps
        .iter()
        .filter_map(|s| s.get("run").and_then(Value::as_str))
        .collect();
    assert!(
        scripts.iter().any(|s| s.contains("scripts/setup-host.sh")),
        "the workflow installs the host with the README's script"
    );
    let calls: Vec<(String, Vec<String>)> =
        scripts.iter().flat_map(|s| kib_invocations(s)).collect();
    let order: Vec<&str> = calls.iter().map(|(sub, _)| sub.as_str()).collect();
    assert_eq!(order, ["doctor", "build", "conformance", "publish"]);
    for (sub, flags) in &calls {
        let help = help(sub);
        for flag in flags {
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "the workflow passes `kib {sub} {flag}`, which `kib {sub} --help` does not list"
            );
        }
    }
    let flags_of = |sub: &str| &calls.iter().find(|(s, _)| s == sub).unwrap().1;
    assert!(flags_of("conformance").contains(&"--junit".to_owned()));
    assert!(flags_of("conformance").contains(&"--profile".to_owned()));
    assert!(scripts.iter().any(|s| s.contains("--profile direct")));
    for flag in ["--sign-key", "--manifest", "--password-stdin"] {
        assert!(flags_of("publish").contains(&flag.to_owned()), "{flag}");
    }
    let uploads: Vec<&Value> = steps
        .iter()
        .filter(|s| {
            s.get("uses")
                .and_then(Value::as_str)
                .is_some_and(|u| u.starts_with("actions/upload-artifact@"))
        })
        .collect();
    assert_eq!(uploads.len(), 1);
    let paths = s(uploads[0], &["with", "path"]);
    for artifact in ["build-manifest.json", "collected/", "conformance.xml"] {
        assert!(paths.contains(artifact), "{artifact} is uploaded");
    }
    // Every action is pinned by commit, with the release in a comment.
    for file in ["release.yml", "test.yml"] {
        let text = fs_err::read_to_string(repo_file(&format!(".github/workflows/{file}"))).unwrap();
        for line in text.lines().filter(|l| {
            l.trim_start().starts_with("- uses:") || l.trim_start().starts_with("uses:")
        }) {
            let (_, rest) = line
                .split_once('@')
                .unwrap_or_else(|| panic!("{file}: {line}"));
            let (sha, comment) = rest
                .split_once(" # v")
                .unwrap_or_else(|| panic!("{file}: {line}"));
            assert!(
                sha.len() == 40
                    && sha.bytes().all(|b| b.is_ascii_hexdigit())
                    && !comment.is_empty(),
                "{file}: `{line}` is not pinned by commit"
            );
        }
    }
    let test: Value = serde_yaml::from_str(
        &fs_err::read_to_string(repo_file(".github/workflows/test.yml")).unwrap(),
    )
    .unwrap();
    at(&test, &["on", "pull_request"]);
    let runs: Vec<&str> = at(&test, &["jobs", "test", "steps"])
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|s| s.get("run").and_then(Value::as_str))
        .collect();
    assert!(runs.iter().any(|r| r.contains("scripts/setup-host.sh")));
    assert!(runs.iter().any(|r| r.trim() == "bash scripts/test.sh"));
}

#[cfg(feature = "test-registry")]
mod registry {
    use std::process::Command;

    use crate::common::{
        PASSWORD, assert_verifies_with_sbom, generate_key_pair, kib_with_password as kib, need, ok,
        path, qcow2, start_registry, stderr, write_sbom,
    };

    #[test]
    fn publish_with_sign_key_then_verify_passes() {
        need("qemu-img", "qemu-utils");
        let registry = start_registry();
        let dir = tempfile::tempdir().unwrap();
        let disk = qcow2(dir.path());
        let keys = generate_key_pair(dir.path());
        let sbom = write_sbom(dir.path());
        let repo = format!("{}/kib/node", registry.host());
        let publish = |repo: &str, password: &str| {
            kib(
                &[
                    "publish",
                    "--image",
                    repo,
                    "--qcow2",
                    path(&disk),
                    "--kubernetes-version",
                    "v1.37.1",
                    "--git-dir",
                    path(dir.path()),
                    "--tag-untagged",
                    "{k8s_version}-release",
                    "--sign-key",
                    path(&keys.key),
                    "--attest-predicate",
                    path(&sbom),
                    "--attest-type",
                    "spdxjson",
                    "--output-format",
                    "json",
                ],
                Some(password),
            )
        };

        // A wrong password fails before anything is pushed.
        let wrong = format!("{}/kib/never-pushed", registry.host());
        let out = publish(&wrong, "wrong-password");
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("Failed to decrypt the private key"),
            "{}",
            stderr(&out)
        );
        let listed = Command::new("skopeo")
            .args([
                "list-tags",
                "--tls-verify=false",
                &format!("docker://{wrong}"),
            ])
            .output()
            .unwrap();
        assert!(!listed.status.success(), "nothing was pushed");

        let out = publish(&repo, PASSWORD);
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let digest = doc["digest"].as_str().unwrap();
        let sig_tag = format!("{}.sig", digest.replace(':', "-"));
        assert_eq!(doc["signature"]["digest"], digest);
        assert_eq!(doc["signature"]["signature"], format!("{repo}:{sig_tag}"));
        assert_eq!(doc["attestation"]["digest"], digest);
        let tags = ok(Command::new("skopeo").args([
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{repo}"),
        ]));
        assert!(tags.contains(&format!("\"{sig_tag}\"")), "{tags}");

        assert_verifies_with_sbom(&keys.public, &format!("{repo}:v1.37.1-release"), digest);
    }
}
