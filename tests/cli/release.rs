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
/// The release the docs show: its git tag and the Kubernetes release of the image.
const DOC_GIT_TAG: &str = "v1.0.0";
const DOC_KUBERNETES: &str = "v1.36.1";
/// The release workflow.
const WORKFLOW: &str = ".github/workflows/release.yml";

/// The Kubernetes minors every release builds: the overlap of what Cluster API v1.14
/// (workload clusters 1.31–1.36), KubeVirt v1.9 (1.34–1.36) and CAPK v0.11.2 (k8s.io/api
/// v0.34, tested on 1.34) support, from the domain notes §10.1. Update with the pins in
/// `kib_conformance::cluster::Versions`.
const SUPPORTED_MINORS: [&str; 3] = ["1.34", "1.35", "1.36"];

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

/// The release workflow's tag scheme: its `TAG_IMMUTABLE` template for git-tagged builds,
/// kib's default moving tags (the workflow passes no `--tag-moving`).
fn workflow_tag_scheme() -> TagScheme {
    let wf: Value =
        serde_yaml::from_str(&fs_err::read_to_string(repo_file(WORKFLOW)).unwrap()).unwrap();
    TagScheme {
        tagged: s(&wf, &["jobs", "release", "env", "TAG_IMMUTABLE"]).to_owned(),
        ..TagScheme::default()
    }
}

/// The tags the release workflow gives the image of `kubernetes_version` built from the
/// git tag `git_tag`.
fn release_tags(git_tag: &str, kubernetes_version: &str) -> Vec<String> {
    workflow_tag_scheme()
        .tags(&TagVars {
            git_tag: Some(git_tag.to_owned()),
            short_sha: Some("0123abc".to_owned()),
            kubernetes_version: Some(kubernetes_version.to_owned()),
        })
        .unwrap()
        .all()
}

/// Checks a containerDisk image reference as `kib publish` prints it: the docs' repository
/// and the immutable tag the release workflow gives the docs' release.
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
    let tags = release_tags(DOC_GIT_TAG, DOC_KUBERNETES);
    let tag = reference.tag().expect("the docs name a tag");
    assert_eq!(
        tag, tags[0],
        "the docs use the immutable tag the release workflow sets for {DOC_GIT_TAG}, Kubernetes {DOC_KUBERNETES}"
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

/// One `kib` invocation in a workflow step.
#[derive(Debug)]
struct Call {
    /// The step's index in `steps`.
    step: usize,
    /// The subcommand.
    sub: String,
    /// Its words after the subcommand, up to the end of the command (`|`, `>`, …).
    words: Vec<String>,
}

impl Call {
    /// The `--flags` it passes (without `=value`).
    fn flags(&self) -> Vec<&str> {
        self.words
            .iter()
            .filter(|w| w.starts_with("--"))
            .map(|w| w.split('=').next().unwrap())
            .collect()
    }
    fn has(&self, flag: &str) -> bool {
        self.flags().contains(&flag)
    }
    /// The word after `flag`.
    fn value(&self, flag: &str) -> Option<&str> {
        let i = self.words.iter().position(|w| w == flag)?;
        self.words.get(i + 1).map(String::as_str)
    }
}

/// The `kib` invocations in a shell script (`kib` where a command starts): (subcommand,
/// words), joining `\` continuations.
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
            let rest = words[i + 2..]
                .iter()
                .take_while(|w| !matches!(**w, "|" | ">" | "&&" | "||" | ";" | "2>&1"))
                .map(|w| w.trim_matches('"').to_owned())
                .collect();
            found.push(((*sub).to_owned(), rest));
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

/// The release workflow's job and its `kib` calls, in order.
fn workflow_calls() -> (Value, Vec<Call>) {
    let wf: Value =
        serde_yaml::from_str(&fs_err::read_to_string(repo_file(WORKFLOW)).unwrap()).unwrap();
    let steps = at(&wf, &["jobs", "release", "steps"])
        .as_sequence()
        .unwrap()
        .clone();
    let calls = steps
        .iter()
        .enumerate()
        .filter_map(|(i, st)| st.get("run").and_then(Value::as_str).map(|r| (i, r)))
        .flat_map(|(step, run)| {
            kib_invocations(run)
                .into_iter()
                .map(move |(sub, words)| Call { step, sub, words })
        })
        .collect();
    (wf, calls)
}

#[test]
fn release_workflow_runs_the_pipeline_with_flags_kib_has() {
    let (wf, calls) = workflow_calls();
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
    assert!(
        scripts
            .iter()
            .any(|s| s.contains("scripts/cluster-tools.sh install")),
        "the workflow installs the cluster profile's tools"
    );
    for call in &calls {
        let help = help(&call.sub);
        for flag in call.flags() {
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "the workflow passes `kib {} {flag}`, which `kib {} --help` does not list",
                call.sub,
                call.sub
            );
        }
    }
    let order: Vec<&str> = calls.iter().map(|c| c.sub.as_str()).collect();
    assert_eq!(
        order,
        [
            "doctor",
            "build",
            "conformance",
            "conformance",
            "publish",
            "conformance",
            "conformance",
            "publish",
            "publish"
        ]
    );
    let build = &calls[1];
    assert_eq!(build.value("--kubernetes-version"), Some("$KUBERNETES"));
    assert_eq!(
        s(&steps[build.step], &["env", "KUBERNETES"]),
        "${{ matrix.kubernetes }}",
        "each job builds its matrix minor"
    );

    // Direct profile, BIOS and UEFI, on the qcow2; then a push by digest without tags.
    for (call, firmware) in [(&calls[2], "bios"), (&calls[3], "uefi")] {
        assert_eq!(call.value("--profile"), Some("direct"));
        assert_eq!(call.value("--firmware"), Some(firmware));
        assert!(call.has("--junit") && call.has("--manifest"));
    }
    let push = &calls[4];
    assert!(push.has("--no-tags") && !push.has("--sign-key"), "{push:?}");
    assert!(push.has("--output-format") && push.has("--password-stdin"));
    let push_step = &steps[push.step];
    let push_id = s(push_step, &["id"]);
    let digest_ref = format!("${{{{ steps.{push_id}.outputs.digest }}}}");

    // The cluster profile, BIOS and UEFI, on exactly the pushed digest.
    for (call, firmware) in [(&calls[5], "bios"), (&calls[6], "uefi")] {
        assert_eq!(call.value("--profile"), Some("cluster"));
        assert_eq!(call.value("--firmware"), Some(firmware));
        assert_eq!(call.words[0], "$KIB_IMAGE@$DIGEST", "{call:?}");
        assert_eq!(s(&steps[call.step], &["env", "DIGEST"]), digest_ref);
        assert!(call.has("--junit") && call.has("--manifest"));
    }

    // Signing and tags come last, in one step that runs only when every step before passed
    // (no `if:`, nothing before it may continue on error), and checks the tested digest.
    let re_push = &calls[7];
    let publish = &calls[8];
    assert_eq!(re_push.step, publish.step);
    assert!(re_push.has("--no-tags") && !re_push.has("--sign-key"));
    for flag in [
        "--sign-key",
        "--manifest",
        "--password-stdin",
        "--tag-immutable",
        "--output-format",
    ] {
        assert!(publish.has(flag), "{flag}");
    }
    assert!(!publish.has("--no-tags"));
    assert_eq!(publish.value("--tag-immutable"), Some("$TAG_IMMUTABLE"));
    let sign_step = &steps[publish.step];
    assert!(
        sign_step.get("if").is_none(),
        "the signing step runs only when all before it passed"
    );
    assert_eq!(s(sign_step, &["env", "DIGEST"]), digest_ref);
    let run = s(sign_step, &["run"]);
    assert!(
        run.matches("\"$DIGEST\"").count() >= 2,
        "the re-push and the publish are both compared with the tested digest"
    );
    for st in &steps[..publish.step] {
        assert!(
            st.get("continue-on-error").is_none(),
            "a failed check must stop the release: {st:?}"
        );
    }
    // Every `if: always()` step before signing only collects logs: none pushes or tags.
    for call in &calls {
        if steps[call.step].get("if").is_some() {
            assert_ne!(call.sub, "publish", "{call:?}");
        }
    }

    // The matrix: every supported minor in its own job; one failing does not stop the others.
    let strategy = at(&wf, &["jobs", "release", "strategy"]);
    assert_eq!(at(strategy, &["fail-fast"]).as_bool(), Some(false));
    let minors: Vec<&str> = at(strategy, &["matrix", "kubernetes"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(minors, SUPPORTED_MINORS);
    // Each image carries its own tags: no tag of one minor's image is another's.
    let mut seen = std::collections::BTreeSet::new();
    for minor in minors {
        for tag in release_tags("v1.0.0", &format!("v{minor}.3")) {
            assert!(seen.insert(tag.clone()), "`{tag}` is set by two jobs");
        }
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
    assert_eq!(s(uploads[0], &["if"]), "always()");
    assert!(s(uploads[0], &["with", "name"]).contains("${{ matrix.kubernetes }}"));
    let paths = s(uploads[0], &["with", "path"]);
    for artifact in [
        "build-manifest.json",
        "collected/",
        "conformance-*.xml",
        "publish.json",
        "logs/",
    ] {
        assert!(paths.contains(artifact), "{artifact} is uploaded");
    }
    for call in calls.iter().filter(|c| c.sub == "conformance") {
        let junit = call.value("--junit").unwrap();
        assert!(junit.starts_with("$OUT/conformance-") && junit.ends_with(".xml"));
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

/// The `sh` blocks of docs/RELEASING.md.
fn docs_shell_blocks() -> Vec<String> {
    let text = fs_err::read_to_string(repo_file("docs/RELEASING.md")).unwrap();
    text.split("```sh\n")
        .skip(1)
        .map(|b| b.split_once("```").unwrap().0.to_owned())
        .collect()
}

#[test]
fn releasing_docs_commands_use_flags_kib_has() {
    let calls: Vec<(String, Vec<String>)> = docs_shell_blocks()
        .iter()
        .flat_map(|b| kib_invocations(b))
        .collect();
    let subs: Vec<&str> = calls.iter().map(|(sub, _)| sub.as_str()).collect();
    for expected in [
        "generate-key-pair",
        "build",
        "publish",
        "conformance",
        "verify",
    ] {
        assert!(
            subs.contains(&expected),
            "the docs show `kib {expected}`: {subs:?}"
        );
    }
    for (sub, words) in &calls {
        let help = help(sub);
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            let flag = flag.split('=').next().unwrap();
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "docs/RELEASING.md passes `kib {sub} {flag}`, which `kib {sub} --help` does not list"
            );
        }
    }
    // The cluster profile by hand runs on a digest pushed without tags, as the workflow does.
    let conformance = calls
        .iter()
        .find(|(sub, w)| sub == "conformance" && w.iter().any(|x| x == "cluster"))
        .expect("the docs run the cluster profile");
    assert!(conformance.1[0].contains("@sha256:"), "{conformance:?}");
    assert!(
        calls
            .iter()
            .any(|(sub, w)| sub == "publish" && w.iter().any(|x| x == "--no-tags"))
    );
}

/// `NAME=value` in a shell script.
fn shell_var<'a>(script: &'a str, name: &str) -> &'a str {
    script
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no `{name}=` line"))
}

#[test]
fn cluster_tools_match_the_cluster_profile_pins() {
    use kib_conformance::cluster::{ClusterSpec, Versions};
    let script = fs_err::read_to_string(repo_file("scripts/cluster-tools.sh")).unwrap();
    let v = Versions::default();
    assert_eq!(shell_var(&script, "CLUSTERCTL_VERSION"), v.cluster_api);
    assert_eq!(shell_var(&script, "VIRTCTL_VERSION"), v.kubevirt);
    let node = v.kind_node_image.rsplit_once(':').unwrap().1;
    assert_eq!(
        shell_var(&script, "KUBECTL_VERSION"),
        node,
        "kubectl matches kind's node"
    );
    let spec = ClusterSpec::new("registry.example/kib/node:v1.0.0", "v1.36.1");
    assert_eq!(shell_var(&script, "KIND_CLUSTER"), spec.kind_name);
    assert_eq!(shell_var(&script, "WORKLOAD_NAMESPACE"), spec.cluster_name);
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
