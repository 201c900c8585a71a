//! Helpers the registry tests share (`publish`, `sign`, `release`): tool checks that fail
//! with a hint, a local registry, a small qcow2, a `kib` runner that proves the key password
//! is never printed, and the key pair, SBOM and `kib verify` steps of the signing tests.
#![cfg(feature = "test-registry")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kib_test_infra::registry::{Registry, require};

/// The cosign key password the tests use; [`kib_with_password`] fails if it is ever printed.
pub const PASSWORD: &str = "pw-never-printed-7f3a";

/// Where `kib publish` remembers layer digests in the tests (never the user's own cache).
pub const XDG_CACHE_HOME: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/xdg-cache");

/// Fails (never skips) with the install hint when `tool` is missing.
pub fn need(tool: &str, package: &'static str) {
    if let Err(e) = require(tool, package) {
        panic!("{e}\nhint: {}", e.hint().unwrap_or_default());
    }
}

/// A local registry (with skopeo to inspect it); fails with the hint when either is missing.
pub fn start_registry() -> Registry {
    need("skopeo", "skopeo");
    Registry::start().unwrap_or_else(|e| panic!("{e}\nhint: {}", e.hint().unwrap_or_default()))
}

/// Runs `cmd`, asserts success and returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lossy UTF-8.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The stderr of `out`.
pub fn stderr(out: &Output) -> String {
    text(&out.stderr)
}

/// A path as `&str`.
pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small zstd-compressed qcow2 written through qemu-io, like a provisioned disk.
pub fn qcow2(dir: &Path) -> PathBuf {
    let plain = dir.join("plain.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&plain)
        .arg("64M"));
    ok(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x4b 0 3M",
            "-c",
            "write -P 0x21 10M 1M",
        ])
        .arg(&plain));
    let out = dir.join("node.qcow2");
    ok(Command::new("qemu-img")
        .args([
            "convert",
            "-q",
            "-c",
            "-o",
            "compression_type=zstd",
            "-O",
            "qcow2",
        ])
        .arg(&plain)
        .arg(&out));
    out
}

/// Runs `kib` with `COSIGN_PASSWORD` set to `password` (unset for `None`), no progress bars
/// and no ambient registry credentials; asserts [`PASSWORD`] appears in neither output.
pub fn kib_with_password(args: &[&str], password: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kib"));
    cmd.args(args)
        .env("KIB_NO_PROGRESS", "1")
        .env("DOCKER_CONFIG", "/nonexistent-kib-test")
        .env("XDG_CACHE_HOME", XDG_CACHE_HOME)
        .env_remove("KIB_REGISTRY_USERNAME")
        .env_remove("KIB_REGISTRY_PASSWORD")
        .env_remove("COSIGN_PASSWORD");
    if let Some(p) = password {
        cmd.env("COSIGN_PASSWORD", p);
    }
    let out = cmd.output().expect("run kib");
    let text = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!text.contains(PASSWORD), "the password was printed: {text}");
    out
}

/// A cosign key pair made by `kib generate-key-pair`.
pub struct KeyPair {
    /// The prefix passed as `--output-key-prefix`.
    pub prefix: PathBuf,
    /// `<prefix>.key`, encrypted with [`PASSWORD`].
    pub key: PathBuf,
    /// `<prefix>.pub`.
    pub public: PathBuf,
}

/// `kib generate-key-pair --output-key-prefix DIR/cosign` with [`PASSWORD`]; asserts success.
pub fn generate_key_pair(dir: &Path) -> KeyPair {
    let prefix = dir.join("cosign");
    let out = kib_with_password(
        &["generate-key-pair", "--output-key-prefix", path(&prefix)],
        Some(PASSWORD),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    KeyPair {
        key: dir.join("cosign.key"),
        public: dir.join("cosign.pub"),
        prefix,
    }
}

/// A minimal SPDX SBOM to attest, written to `DIR/sbom.spdx.json`.
pub fn write_sbom(dir: &Path) -> PathBuf {
    let sbom = dir.join("sbom.spdx.json");
    fs_err::write(
        &sbom,
        r#"{"spdxVersion":"SPDX-2.3","name":"kib-node","packages":[]}"#,
    )
    .unwrap();
    sbom
}

/// `kib verify --attestation-type spdxjson --output json`: asserts that `image` resolves to
/// `digest` and that both its signature and its SBOM attestation verify with `public`.
pub fn assert_verifies_with_sbom(public: &Path, image: &str, digest: &str) {
    let out = kib_with_password(
        &[
            "verify",
            "--key",
            path(public),
            image,
            "--attestation-type",
            "spdxjson",
            "--output",
            "json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["digest"], digest);
    assert_eq!(report["attestations"]["verified"], true);
}
