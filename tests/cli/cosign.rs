//! kib against the real cosign CLI (Debian trixie's cosign 2.5, fetched by
//! `scripts/setup-host.sh`), on a real local registry: `cosign verify` and
//! `cosign verify-attestation` accept what `kib publish --sign-key` and `kib sign` sign;
//! `kib verify` accepts what `cosign sign` and `cosign attest` sign; a key pair made by either
//! tool signs for the other; `cosign verify-attestation --type slsaprovenance` accepts a
//! provenance kib attests next to the SBOM. Every case also checks that the verifier rejects
//! a wrong key, so a verifier that accepted anything would fail here.
//!
//! cosign runs with `--tlog-upload=false` / `--insecure-ignore-tlog=true` (key-based signing
//! without Rekor, as kib signs), a private `HOME` and `DOCKER_CONFIG` (no host credentials,
//! no writes to the host's `~/.sigstore`) and `--allow-http-registry` (the test registry is
//! plain HTTP on 127.0.0.1; cosign 2.5 already falls back to HTTP for loopback addresses, the
//! flag says so explicitly).
//!
//! Run with: `cargo test --features test-registry --test cli cosign -- --test-threads=1`
#![cfg(feature = "test-registry")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::common::{
    KeyPair, PASSWORD, assert_verifies_with_sbom, generate_key_pair, kib_with_password as kib,
    need, path, qcow2, start_registry, stderr, text, write_sbom,
};

/// The cosign binary `scripts/setup-host.sh` installs.
const COSIGN: &str = "cosign";

/// Fails (never skips) with the setup hint when cosign is missing.
pub(super) fn need_cosign() {
    let found = Command::new(COSIGN).arg("version").output();
    if !found.is_ok_and(|o| o.status.success()) {
        panic!(
            "`cosign` is not installed\nhint: run `sudo scripts/setup-host.sh` (it fetches \
             Debian trixie's cosign 2.5 to /usr/local/bin/cosign)"
        );
    }
}

/// Runs cosign with `COSIGN_PASSWORD` set to `password` (unset for `None`), in `home` as its
/// `HOME` and Docker config directory; asserts [`PASSWORD`] appears in neither output.
pub(super) fn cosign(home: &Path, args: &[&str], password: Option<&str>) -> Output {
    let mut cmd = Command::new(COSIGN);
    cmd.args(args)
        .env("HOME", home)
        .env("DOCKER_CONFIG", home.join(".docker"))
        .env_remove("COSIGN_PASSWORD")
        .env_remove("COSIGN_EXPERIMENTAL")
        .env_remove("SIGSTORE_ROOT_FILE");
    if let Some(p) = password {
        cmd.env("COSIGN_PASSWORD", p);
    }
    let out = cmd.output().expect("run cosign");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains(PASSWORD), "the password was printed: {all}");
    out
}

/// `cosign generate-key-pair` in `dir` with [`PASSWORD`]: `dir/cosign.key`, `dir/cosign.pub`.
fn cosign_key_pair(home: &Path, dir: &Path) -> KeyPair {
    fs_err::create_dir_all(dir).unwrap();
    let prefix = dir.join("cosign");
    let out = cosign(
        home,
        &["generate-key-pair", "--output-key-prefix", path(&prefix)],
        Some(PASSWORD),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let key = dir.join("cosign.key");
    assert!(
        fs_err::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"),
        "cosign 2.x writes a SIGSTORE key"
    );
    KeyPair {
        key,
        public: dir.join("cosign.pub"),
        prefix,
    }
}

/// Pushes a small containerDisk with `kib publish` (no signing) as `repo:v1.37.1-test`;
/// returns its digest.
fn publish_unsigned(dir: &Path, repo: &str) -> String {
    let disk = qcow2(dir);
    let out = kib(
        &[
            "publish",
            "--image",
            repo,
            "--qcow2",
            path(&disk),
            "--kubernetes-version",
            "v1.37.1",
            "--git-dir",
            path(dir),
            "--tag-untagged",
            "{k8s_version}-test",
            "--output-format",
            "json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["digest"].as_str().unwrap().to_owned()
}

/// `cosign verify --key public image`: asserts it succeeds and that the signed payload names
/// `digest`.
fn assert_cosign_verifies(home: &Path, public: &Path, image: &str, digest: &str) {
    let out = cosign(
        home,
        &[
            "verify",
            "--key",
            path(public),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--output",
            "json",
            image,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "cosign verify {image}: {}",
        stderr(&out)
    );
    let payloads: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("cosign verify's output: {e}: {}", text(&out.stdout)));
    assert!(!payloads.is_empty());
    for p in &payloads {
        assert_eq!(p["critical"]["image"]["docker-manifest-digest"], digest);
        assert_eq!(p["critical"]["type"], "cosign container image signature");
    }
}

/// `cosign verify --key public image` fails: the key did not sign it.
fn assert_cosign_rejects(home: &Path, public: &Path, image: &str) {
    let out = cosign(
        home,
        &[
            "verify",
            "--key",
            path(public),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            image,
        ],
        None,
    );
    assert!(
        !out.status.success(),
        "cosign verify accepted a signature the key did not make"
    );
    assert!(
        stderr(&out).contains("no matching signatures"),
        "{}",
        stderr(&out)
    );
}

/// `cosign verify-attestation --type type_name --key public image`: asserts it succeeds and
/// returns the in-toto statements it verified (decoded from the DSSE envelopes it prints).
pub(super) fn cosign_verify_attestation(
    home: &Path,
    public: &Path,
    image: &str,
    type_name: &str,
) -> Vec<Value> {
    let out = cosign(
        home,
        &[
            "verify-attestation",
            "--key",
            path(public),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--type",
            type_name,
            image,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "cosign verify-attestation --type {type_name} {image}: {}",
        stderr(&out)
    );
    let statements: Vec<Value> = text(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let envelope: Value = serde_json::from_str(l).unwrap();
            assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
            serde_json::from_slice(&base64_decode(envelope["payload"].as_str().unwrap())).unwrap()
        })
        .collect();
    assert!(!statements.is_empty(), "no statement printed");
    statements
}

/// Decodes standard base64 with coreutils' `base64` (the root crate has no base64 dependency).
/// The text goes through a file: an SBOM's envelope is larger than a pipe's buffer, and writing
/// it to the child's stdin while its stdout is unread deadlocks.
fn base64_decode(encoded: &str) -> Vec<u8> {
    let file = tempfile::NamedTempFile::new().unwrap();
    fs_err::write(file.path(), encoded).unwrap();
    let out = Command::new("base64")
        .arg("--decode")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "`{encoded}` is not base64");
    out.stdout
}

/// `cosign verify-attestation` of a type nothing was attested with fails.
fn assert_cosign_finds_no_attestation(home: &Path, public: &Path, image: &str, type_name: &str) {
    let out = cosign(
        home,
        &[
            "verify-attestation",
            "--key",
            path(public),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--type",
            type_name,
            image,
        ],
        None,
    );
    assert!(
        !out.status.success(),
        "cosign verify-attestation --type {type_name} accepted: {}",
        text(&out.stdout)
    );
}

/// The statement about `digest` with `predicate_type` among `statements`.
fn statement_for<'a>(statements: &'a [Value], predicate_type: &str, digest: &str) -> &'a Value {
    let hex = digest.strip_prefix("sha256:").unwrap();
    statements
        .iter()
        .find(|s| {
            s["predicateType"] == predicate_type
                && s["subject"]
                    .as_array()
                    .is_some_and(|subs| subs.iter().any(|d| d["digest"]["sha256"] == hex))
        })
        .unwrap_or_else(|| panic!("no {predicate_type} statement about {digest}: {statements:?}"))
}

/// `kib verify --key public image` fails with exit 1.
fn assert_kib_rejects(public: &Path, image: &str) {
    let out = kib(&["verify", "--key", path(public), image], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "kib verify accepted a signature the key did not make: {}",
        stderr(&out)
    );
}

struct Fixture {
    _registry: kib_test_infra::registry::Registry,
    dir: tempfile::TempDir,
    repo: String,
}

impl Fixture {
    fn new() -> Self {
        need_cosign();
        need("qemu-img", "qemu-utils");
        let registry = start_registry();
        let repo = format!("{}/kib/node", registry.host());
        Self {
            _registry: registry,
            dir: tempfile::tempdir().unwrap(),
            repo,
        }
    }
    fn home(&self) -> PathBuf {
        let home = self.dir.path().join("cosign-home");
        fs_err::create_dir_all(&home).unwrap();
        home
    }
    fn sub(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        fs_err::create_dir_all(&d).unwrap();
        d
    }
}

/// A git checkout in `dir` whose `HEAD` carries the tag `tag` (what the release workflow
/// checks out).
fn tagged_checkout(dir: &Path, tag: &str) {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=kib",
                "-c",
                "user.email=kib@example.invalid",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    };
    git(&["init", "-q"]);
    git(&["commit", "-q", "--allow-empty", "-m", "release"]);
    git(&["tag", tag]);
}

/// The release workflow's immutable tag template (`TAG_IMMUTABLE`).
fn workflow_tag_immutable() -> String {
    let text = fs_err::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/workflows/release.yml"),
    )
    .unwrap();
    let wf: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    wf["jobs"]["release"]["env"]["TAG_IMMUTABLE"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The commands of docs/RELEASING.md's "Verifying an image" block, one word list each.
fn docs_verify_commands() -> Vec<Vec<String>> {
    let text =
        fs_err::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/RELEASING.md"))
            .unwrap();
    let section = text
        .split_once("## Verifying an image")
        .expect("docs/RELEASING.md has a `Verifying an image` section")
        .1;
    let block = section
        .split_once("```sh\n")
        .unwrap()
        .1
        .split_once("```")
        .unwrap()
        .0;
    block
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.split_once('#').map_or(l, |(cmd, _)| cmd).trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The release workflow's signing step (`kib publish --sign-key … --attest-type custom
/// --tag-immutable $TAG_IMMUTABLE`, on a checkout tagged `v1.0.0`), then the verification
/// commands of docs/RELEASING.md as a user runs them (only the registry host and the key's
/// path differ; `--allow-http-registry` added for the plain-HTTP test registry).
#[test]
fn cosign_verifies_what_the_release_publishes_with_the_docs_commands() {
    let fx = Fixture::new();
    let home = fx.home();
    let keys = generate_key_pair(&fx.sub("kib-keys"));
    let other = cosign_key_pair(&home, &fx.sub("other-keys"));
    let checkout = fx.sub("checkout");
    tagged_checkout(&checkout, "v1.0.0");
    let manifest = fx.dir.path().join("build-manifest.json");
    fs_err::write(
        &manifest,
        r#"{"name":"rocky10-kubernetes","kubernetes_version":"v1.36.1","packages":[]}"#,
    )
    .unwrap();
    let disk = qcow2(&fx.sub("disk"));
    let out = kib(
        &[
            "publish",
            "--image",
            &fx.repo,
            "--qcow2",
            path(&disk),
            "--kubernetes-version",
            "v1.36.1",
            "--git-dir",
            path(&checkout),
            "--tag-immutable",
            &workflow_tag_immutable(),
            "--sign-key",
            path(&keys.key),
            "--attest-predicate",
            path(&manifest),
            "--attest-type",
            "custom",
            "--output-format",
            "json",
        ],
        Some(PASSWORD),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = doc["digest"].as_str().unwrap().to_owned();
    let by_digest = format!("{}@{digest}", fx.repo);

    let commands = docs_verify_commands();
    let mut ran = Vec::new();
    for words in &commands {
        let words: Vec<String> = words
            .iter()
            .map(|w| {
                if w == "cosign.pub" {
                    path(&keys.public).to_owned()
                } else {
                    w.replacen("registry.example/kib/node", &fx.repo, 1)
                }
            })
            .collect();
        let image = words.last().unwrap().clone();
        assert!(image.starts_with(&fx.repo), "the docs verify {image}");
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        match (words[0].as_str(), args[0]) {
            ("cosign", "verify") => {
                let mut args = args.clone();
                args.insert(1, "--allow-http-registry");
                args.insert(1, "--output=json");
                let out = cosign(&home, &args, None);
                assert!(out.status.success(), "{words:?}: {}", stderr(&out));
                let payloads: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(
                    payloads[0]["critical"]["image"]["docker-manifest-digest"],
                    digest.as_str()
                );
            }
            ("cosign", "verify-attestation") => {
                let mut args = args.clone();
                args.insert(1, "--allow-http-registry");
                let out = cosign(&home, &args, None);
                assert!(out.status.success(), "{words:?}: {}", stderr(&out));
                let envelope: Value =
                    serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
                let statement: Value =
                    serde_json::from_slice(&base64_decode(envelope["payload"].as_str().unwrap()))
                        .unwrap();
                assert_eq!(
                    statement["predicateType"],
                    "https://cosign.sigstore.dev/attestation/v1"
                );
                assert_eq!(
                    statement["predicate"]["name"], "rocky10-kubernetes",
                    "the build manifest is the predicate: {statement}"
                );
                assert_eq!(
                    statement["subject"][0]["digest"]["sha256"],
                    digest.strip_prefix("sha256:").unwrap()
                );
            }
            ("kib", "verify") => {
                let out = kib(&args, None);
                assert!(out.status.success(), "{words:?}: {}", stderr(&out));
                assert_eq!(text(&out.stdout).trim(), by_digest);
            }
            _ => panic!("an unexpected command in the docs: {words:?}"),
        }
        ran.push(format!("{} {}", words[0], args[0]));
    }
    assert_eq!(
        ran,
        ["cosign verify", "cosign verify-attestation", "kib verify"],
        "the docs show these three checks"
    );

    // The same checks with another key fail: the verifiers check the signature.
    assert_cosign_rejects(&home, &other.public, &by_digest);
    let out = cosign(
        &home,
        &[
            "verify-attestation",
            "--key",
            path(&other.public),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--type",
            "custom",
            &by_digest,
        ],
        None,
    );
    assert!(
        !out.status.success(),
        "cosign verify-attestation accepted an attestation the key did not make"
    );
    assert_cosign_finds_no_attestation(&home, &keys.public, &by_digest, "spdxjson");
}

#[test]
fn cosign_verifies_what_kib_sign_signs_with_a_cosign_made_key() {
    let fx = Fixture::new();
    let home = fx.home();
    let digest = publish_unsigned(&fx.sub("disk"), &fx.repo);
    let image = format!("{}:v1.37.1-test", fx.repo);
    let by_digest = format!("{}@{digest}", fx.repo);
    // The key pair is cosign's own: kib signs with cosign.key and both tools verify.
    let keys = cosign_key_pair(&home, &fx.sub("cosign-keys"));
    let other = generate_key_pair(&fx.sub("kib-keys"));

    let sbom = write_sbom(fx.dir.path());
    let out = kib(
        &[
            "sign",
            "--key",
            path(&keys.key),
            &image,
            "--predicate",
            path(&sbom),
            "--type",
            "spdxjson",
        ],
        Some(PASSWORD),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    assert_cosign_verifies(&home, &keys.public, &image, &digest);
    assert_cosign_verifies(&home, &keys.public, &by_digest, &digest);
    assert_cosign_rejects(&home, &other.public, &by_digest);
    let statements = cosign_verify_attestation(&home, &keys.public, &by_digest, "spdxjson");
    let statement = statement_for(&statements, "https://spdx.dev/Document", &digest);
    let attested: Value = serde_json::from_str(&fs_err::read_to_string(&sbom).unwrap()).unwrap();
    assert_eq!(statement["predicate"], attested, "the SBOM as attested");
    assert_cosign_finds_no_attestation(&home, &keys.public, &by_digest, "cyclonedx");

    // kib verifies its own signature with cosign's public key too.
    let out = kib(&["verify", "--key", path(&keys.public), &image], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(text(&out.stdout).trim(), by_digest);
    assert_kib_rejects(&other.public, &image);
}

#[test]
fn kib_verifies_what_cosign_signs_and_attests() {
    let fx = Fixture::new();
    let home = fx.home();
    let digest = publish_unsigned(&fx.sub("disk"), &fx.repo);
    let image = format!("{}:v1.37.1-test", fx.repo);
    let by_digest = format!("{}@{digest}", fx.repo);
    let keys = cosign_key_pair(&home, &fx.sub("cosign-keys"));
    let other = generate_key_pair(&fx.sub("kib-keys"));
    let sbom = write_sbom(fx.dir.path());

    let out = cosign(
        &home,
        &[
            "sign",
            "--key",
            path(&keys.key),
            "--tlog-upload=false",
            "--allow-http-registry",
            "--yes",
            &by_digest,
        ],
        Some(PASSWORD),
    );
    assert!(out.status.success(), "cosign sign: {}", stderr(&out));
    let out = cosign(
        &home,
        &[
            "attest",
            "--key",
            path(&keys.key),
            "--tlog-upload=false",
            "--allow-http-registry",
            "--yes",
            "--type",
            "spdxjson",
            "--predicate",
            path(&sbom),
            &by_digest,
        ],
        Some(PASSWORD),
    );
    assert!(out.status.success(), "cosign attest: {}", stderr(&out));

    // Signature and SBOM attestation, through the tag, verified by kib.
    assert_verifies_with_sbom(&keys.public, &image, &digest);
    assert_kib_rejects(&other.public, &image);
    let out = kib(
        &[
            "verify",
            "--key",
            path(&other.public),
            &image,
            "--attestation-type",
            "spdxjson",
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn kib_and_cosign_verify_what_cosign_signs_with_a_kib_made_key() {
    let fx = Fixture::new();
    let home = fx.home();
    let digest = publish_unsigned(&fx.sub("disk"), &fx.repo);
    let image = format!("{}:v1.37.1-test", fx.repo);
    let by_digest = format!("{}@{digest}", fx.repo);
    // The key pair is kib's: cosign signs with it, and both tools verify with kib's cosign.pub.
    let keys = generate_key_pair(&fx.sub("kib-keys"));
    let other = cosign_key_pair(&home, &fx.sub("other-keys"));

    let out = cosign(
        &home,
        &[
            "sign",
            "--key",
            path(&keys.key),
            "--tlog-upload=false",
            "--allow-http-registry",
            "--yes",
            &by_digest,
        ],
        Some(PASSWORD),
    );
    assert!(
        out.status.success(),
        "cosign sign with kib's key: {}",
        stderr(&out)
    );
    // A wrong password: cosign cannot decrypt kib's key either.
    let out = cosign(
        &home,
        &[
            "sign",
            "--key",
            path(&keys.key),
            "--tlog-upload=false",
            "--allow-http-registry",
            "--yes",
            &by_digest,
        ],
        Some("wrong-password"),
    );
    assert!(
        !out.status.success(),
        "cosign used kib's key without its password"
    );

    let out = kib(&["verify", "--key", path(&keys.public), &image], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(text(&out.stdout).trim(), by_digest);
    assert_kib_rejects(&other.public, &image);
    assert_cosign_verifies(&home, &keys.public, &image, &digest);
    assert_cosign_rejects(&home, &other.public, &image);
}

/// A SLSA v0.2 provenance predicate of a release build (the shape cosign's
/// `--type slsaprovenance` parses: `in_toto.ProvenanceStatementSLSA02`). kib does not write
/// one yet; this stands in for what the release would attest, to show the signing and
/// verification path carries it.
const PROVENANCE: &str = r#"{
  "builder": {"id": "https://example.invalid/kib/.github/workflows/release.yml@refs/tags/v1.0.0"},
  "buildType": "https://example.invalid/kib/release@v1",
  "invocation": {
    "configSource": {
      "uri": "git+https://example.invalid/kib@refs/tags/v1.0.0",
      "digest": {"sha1": "0123456789abcdef0123456789abcdef01234567"},
      "entryPoint": ".github/workflows/release.yml"
    },
    "parameters": {"kubernetes": "1.36"}
  },
  "metadata": {
    "buildStartedOn": "2026-11-30T00:00:00Z",
    "buildFinishedOn": "2026-11-30T01:00:00Z",
    "completeness": {"parameters": true, "environment": false, "materials": true},
    "reproducible": false
  },
  "materials": [
    {"uri": "https://dl.rockylinux.org/pub/rocky/10/images/x86_64/Rocky-10-GenericCloud-Base.latest.x86_64.qcow2",
     "digest": {"sha256": "5f1cbd8e7a2cd6c0e0e40a1d1d1f6a4b3d0f9d0b8c2a9f7e6d5c4b3a29180706"}}
  ]
}"#;

/// An image carries an SBOM and a provenance attestation, both signed by kib (`kib publish
/// --attest-predicate` for the SBOM, `kib sign --predicate --type slsaprovenance` adds the
/// provenance next to it), and cosign verifies each by its type.
#[test]
fn cosign_verifies_a_provenance_attestation_next_to_the_sbom() {
    let fx = Fixture::new();
    let home = fx.home();
    let keys = generate_key_pair(&fx.sub("kib-keys"));
    let other = cosign_key_pair(&home, &fx.sub("other-keys"));
    let sbom = write_sbom(fx.dir.path());
    let provenance = fx.dir.path().join("provenance.json");
    fs_err::write(&provenance, PROVENANCE).unwrap();
    let disk = qcow2(&fx.sub("disk"));
    let out = kib(
        &[
            "publish",
            "--image",
            &fx.repo,
            "--qcow2",
            path(&disk),
            "--kubernetes-version",
            "v1.36.1",
            "--git-dir",
            path(fx.dir.path()),
            "--tag-untagged",
            "{k8s_version}-test",
            "--sign-key",
            path(&keys.key),
            "--attest-predicate",
            path(&sbom),
            "--attest-type",
            "spdxjson",
            "--output-format",
            "json",
        ],
        Some(PASSWORD),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = doc["digest"].as_str().unwrap().to_owned();
    let by_digest = format!("{}@{digest}", fx.repo);
    assert_cosign_finds_no_attestation(&home, &keys.public, &by_digest, "slsaprovenance");

    let out = kib(
        &[
            "sign",
            "--key",
            path(&keys.key),
            &by_digest,
            "--predicate",
            path(&provenance),
            "--type",
            "slsaprovenance",
        ],
        Some(PASSWORD),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let statements = cosign_verify_attestation(&home, &keys.public, &by_digest, "slsaprovenance");
    let statement = statement_for(&statements, "https://slsa.dev/provenance/v0.2", &digest);
    let expected: Value = serde_json::from_str(PROVENANCE).unwrap();
    assert_eq!(
        statement["predicate"], expected,
        "the provenance as attested"
    );
    // The SBOM attested at publish time is still there and still verifies.
    let statements = cosign_verify_attestation(&home, &keys.public, &by_digest, "spdxjson");
    statement_for(&statements, "https://spdx.dev/Document", &digest);
    assert_cosign_finds_no_attestation(&home, &keys.public, &by_digest, "slsaprovenance1");
    let out = cosign(
        &home,
        &[
            "verify-attestation",
            "--key",
            path(&other.public),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--type",
            "slsaprovenance",
            &by_digest,
        ],
        None,
    );
    assert!(
        !out.status.success(),
        "cosign verify-attestation accepted a provenance the key did not make"
    );

    // kib verifies the provenance attestation too.
    let out = kib(
        &[
            "verify",
            "--key",
            path(&keys.public),
            &by_digest,
            "--attestation-type",
            "slsaprovenance",
            "--output",
            "json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["attestations"]["verified"], true);
}
