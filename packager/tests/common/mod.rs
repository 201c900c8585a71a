//! Helpers for the packager's real-registry tests: a generated qcow2, skopeo, and a
//! CDI-style walk of an OCI layout.
#![allow(dead_code)]

pub mod pinned;
pub use pinned::{PINNED, fixed_disk, fixed_metadata};

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::Rng as _;
use sha2::{Digest as _, Sha256};

/// A qcow2 with `random_mib` MiB of random data at the start of a `virtual_mib` MiB disk,
/// written by qemu-img as a zstd-compressed qcow2 (as `kib build` exports it).
pub fn make_qcow2(
    dir: &Path,
    name: &str,
    random_mib: usize,
    virtual_mib: usize,
    seed: u8,
) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    {
        let mut f = fs_err::File::create(&raw).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut rng = rand::rng();
        for _ in 0..random_mib {
            rng.fill_bytes(&mut buf);
            buf[0] = seed;
            std::io::Write::write_all(&mut f, &buf).unwrap();
        }
        f.set_len((virtual_mib as u64) << 20).unwrap();
    }
    let out = dir.join(format!("{name}.qcow2"));
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-c",
            "-o",
            "compression_type=zstd",
        ])
        .arg(&raw)
        .arg(&out));
    fs_err::remove_file(&raw).unwrap();
    // A few guest-style writes through qemu-io, as a provisioned disk would have.
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x6b 1M 64k"])
        .arg(&out));
    out
}

/// Runs a command and returns stdout; panics with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with a hint when a checker is missing.
pub fn require_tools() {
    for (tool, pkg) in [
        ("skopeo", "skopeo"),
        ("qemu-img", "qemu-utils"),
        ("qemu-io", "qemu-utils"),
    ] {
        if let Err(e) = kib_test_infra::registry::require(tool, pkg) {
            panic!("{e}\nhint: {}", e.hint().unwrap_or_default());
        }
    }
}

pub fn start_registry(auth: Option<(&str, &str)>) -> kib_test_infra::registry::Registry {
    require_tools();
    let r = match auth {
        None => kib_test_infra::registry::Registry::start(),
        Some((u, p)) => kib_test_infra::registry::Registry::start_with_auth(u, p),
    };
    r.unwrap_or_else(|e| panic!("{e}\nhint: {}", e.hint().unwrap_or_default()))
}

/// `skopeo` with the given args; returns stdout.
pub fn skopeo(args: &[&str]) -> String {
    run(Command::new("skopeo").args(args))
}

/// `skopeo` that is expected to fail; returns stderr.
pub fn skopeo_fails(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        !out.status.success(),
        "skopeo {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = fs_err::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Decompresses by magic bytes, as CDI's format readers do.
pub fn decompress(blob: &Path) -> Box<dyn std::io::Read> {
    let mut f = fs_err::File::open(blob).unwrap();
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic).unwrap();
    let f = fs_err::File::open(blob).unwrap();
    match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(f)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::new(f).unwrap()),
        _ => Box::new(f),
    }
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

/// The manifest of a single-image OCI layout and its blobs directory.
pub fn layout_manifest(dir: &Path) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(dir.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    serde_json::from_slice(&fs_err::read(blob(dir, digest)).unwrap()).unwrap()
}

pub fn blob(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Walks the layers as CDI's importer does: the first regular file under `disk/` is the disk,
/// and exactly one file may be there. Extracts it to `out` and returns every entry seen.
pub fn cdi_extract(dir: &Path, out: &Path) -> Vec<Entry> {
    let manifest = layout_manifest(dir);
    let mut entries = Vec::new();
    let mut files = 0;
    for layer in manifest["layers"].as_array().unwrap() {
        let mut archive =
            tar::Archive::new(decompress(&blob(dir, layer["digest"].as_str().unwrap())));
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            entries.push(Entry {
                path: path.clone(),
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                mtime: h.mtime().unwrap(),
            });
            let under_disk = path.starts_with("disk/") || path.starts_with("./disk/");
            if under_disk && h.entry_type().is_file() {
                files += 1;
                if files == 1 {
                    let mut f = fs_err::File::create(out).unwrap();
                    std::io::copy(&mut e, &mut f).unwrap();
                }
            }
        }
    }
    assert_eq!(
        files, 1,
        "exactly one file must be under disk/: {entries:?}"
    );
    entries
}
