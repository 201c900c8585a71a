//! Helpers the registry tests share (`publish`, `sign`, `release`): tool checks that fail
//! with a hint, a small qcow2, and a `kib` runner that proves the key password is never
//! printed.
#![cfg(feature = "test-registry")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kib_test_infra::registry::require;

/// The cosign key password the tests use; [`kib_with_password`] fails if it is ever printed.
pub const PASSWORD: &str = "pw-never-printed-7f3a";

/// Fails (never skips) with the install hint when `tool` is missing.
pub fn need(tool: &str, package: &'static str) {
    if let Err(e) = require(tool, package) {
        panic!("{e}\nhint: {}", e.hint().unwrap_or_default());
    }
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
