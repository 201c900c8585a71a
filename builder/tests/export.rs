//! Export with the real qemu-img: an overlay with data on a base with data becomes one
//! standalone, compressed image whose checksum sidecar matches.

use std::path::{Path, PathBuf};
use std::process::Command;

use kib_builder::config::{Compression, ImageFormat};
use kib_builder::export::{ExportError, export};
use kib_test_infra::tools::{files_in, run_tool, sha256sum};

/// `base.qcow2` (64 MiB, 8 MiB of 0xab) and `overlay.qcow2` on top (4 MiB of 0xcd at 16 MiB).
fn disk(dir: &Path) -> PathBuf {
    let base = dir.join("base.qcow2");
    let overlay = dir.join("overlay.qcow2");
    let (b, o) = (base.to_str().unwrap(), overlay.to_str().unwrap());
    run_tool("qemu-img", &["create", "-q", "-f", "qcow2", b, "64M"]);
    run_tool("qemu-io", &["-c", "write -P 0xab 0 8M", b]);
    run_tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", b, o],
    );
    run_tool("qemu-io", &["-c", "write -P 0xcd 16M 4M", o]);
    overlay
}

fn info(path: &Path) -> serde_json::Value {
    serde_json::from_str(&run_tool(
        "qemu-img",
        &["info", "--output=json", path.to_str().unwrap()],
    ))
    .unwrap()
}

/// The exported image holds the same guest data as the overlay chain.
fn assert_same_data(overlay: &Path, exported: &Path) {
    run_tool(
        "qemu-img",
        &[
            "compare",
            overlay.to_str().unwrap(),
            exported.to_str().unwrap(),
        ],
    );
    let out = run_tool(
        "qemu-io",
        &[
            "-r",
            "-c",
            "read -P 0xab 0 8M",
            "-c",
            "read -P 0xcd 16M 4M",
            "-c",
            "read -P 0 32M 1M",
            exported.to_str().unwrap(),
        ],
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
}

#[tokio::test]
async fn zstd_qcow2_is_standalone_and_checksummed() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = disk(dir.path());
    let out = dir.path().join("out");
    let started = std::time::Instant::now();
    let image = export(
        &overlay,
        &out,
        "node",
        ImageFormat::Qcow2,
        Compression::Zstd,
    )
    .await
    .unwrap();
    eprintln!("zstd export took {:?}", started.elapsed());

    assert_eq!(image.path, out.join("node.qcow2"));
    assert_eq!(image.checksum_path, out.join("node.qcow2.sha256"));
    assert_eq!(files_in(&out), vec!["node.qcow2", "node.qcow2.sha256"]);
    let info = info(&image.path);
    assert_eq!(info["format"], "qcow2");
    assert!(
        info.get("backing-filename").is_none(),
        "still has a backing file: {info}"
    );
    assert_eq!(info["format-specific"]["data"]["compression-type"], "zstd");
    assert_eq!(info["virtual-size"], 64 << 20);
    assert_eq!(image.virtual_size, 64 << 20);
    assert_eq!(
        image.file_size,
        std::fs::metadata(&image.path).unwrap().len()
    );
    assert_eq!(image.compression, Compression::Zstd);
    // Shareable like any file the user makes (0644 under the usual umask), not 0600.
    for p in [&image.path, &image.checksum_path] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o644, 0o644 & !umask(), "{}: {mode:o}", p.display());
    }

    let hex = sha256sum(&image.path);
    assert_eq!(image.sha256.hex(), hex);
    assert_eq!(
        std::fs::read_to_string(&image.checksum_path).unwrap(),
        format!("{hex}  node.qcow2\n")
    );
    // The sidecar is what `sha256sum -c` reads.
    let check = Command::new("sha256sum")
        .args(["-c", "node.qcow2.sha256"])
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // Compressed: 12 MiB of patterned data fit in much less.
    assert!(
        image.file_size < 4 << 20,
        "file is {} bytes",
        image.file_size
    );
    // Standalone: the data survives deleting the chain.
    let moved = dir.path().join("alone.qcow2");
    std::fs::rename(&image.path, &moved).unwrap();
    assert_same_data(&overlay, &moved);
    std::fs::remove_file(dir.path().join("base.qcow2")).unwrap();
    run_tool(
        "qemu-io",
        &["-r", "-c", "read -P 0xab 0 8M", moved.to_str().unwrap()],
    );
}

#[tokio::test]
async fn zlib_and_uncompressed_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = disk(dir.path());
    let out = dir.path().join("out");
    let zlib = export(
        &overlay,
        &out,
        "zlib",
        ImageFormat::Qcow2,
        Compression::Zlib,
    )
    .await
    .unwrap();
    assert_eq!(
        info(&zlib.path)["format-specific"]["data"]["compression-type"],
        "zlib"
    );
    assert_same_data(&overlay, &zlib.path);
    let plain = export(
        &overlay,
        &out,
        "plain",
        ImageFormat::Qcow2,
        Compression::None,
    )
    .await
    .unwrap();
    assert!(
        plain.file_size > 12 << 20,
        "uncompressed is {} bytes",
        plain.file_size
    );
    assert_same_data(&overlay, &plain.path);
}

#[tokio::test]
async fn raw_output() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = disk(dir.path());
    let out = dir.path().join("out");
    let image = export(&overlay, &out, "node", ImageFormat::Raw, Compression::Zstd)
        .await
        .unwrap();
    assert_eq!(image.path, out.join("node.raw"));
    assert_eq!(
        image.compression,
        Compression::None,
        "raw is never compressed"
    );
    assert_eq!(info(&image.path)["format"], "raw");
    assert_eq!(image.file_size, 64 << 20);
    assert_eq!(image.sha256.hex(), sha256sum(&image.path));
    assert_eq!(files_in(&out), vec!["node.raw", "node.raw.sha256"]);
    assert_same_data(&overlay, &image.path);
}

#[tokio::test]
async fn failures_leave_nothing_under_the_final_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");

    // A disk that does not exist.
    let err = export(
        &dir.path().join("missing.qcow2"),
        &out,
        "node",
        ImageFormat::Qcow2,
        Compression::Zstd,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::QemuImg {
                command: "info",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(files_in(&out), Vec::<String>::new());

    // A qcow2 whose backing file is gone: info works, convert fails half-way.
    let overlay = disk(dir.path());
    std::fs::remove_file(dir.path().join("base.qcow2")).unwrap();
    let err = export(
        &overlay,
        &out,
        "node",
        ImageFormat::Qcow2,
        Compression::Zstd,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExportError::QemuImg { .. }), "{err:?}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("base.qcow2"), "{source}");
    assert_eq!(
        files_in(&out),
        Vec::<String>::new(),
        "no partial or final file may remain"
    );

    // A bad name never reaches qemu-img.
    let err = export(
        &overlay,
        &out,
        "../escape",
        ImageFormat::Qcow2,
        Compression::Zstd,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExportError::BadName { .. }), "{err:?}");
}

#[tokio::test]
async fn a_new_export_replaces_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = disk(dir.path());
    let out = dir.path().join("out");
    let first = export(
        &overlay,
        &out,
        "node",
        ImageFormat::Qcow2,
        Compression::None,
    )
    .await
    .unwrap();
    run_tool(
        "qemu-io",
        &["-c", "write -P 0xee 40M 1M", overlay.to_str().unwrap()],
    );
    let second = export(
        &overlay,
        &out,
        "node",
        ImageFormat::Qcow2,
        Compression::None,
    )
    .await
    .unwrap();
    assert_ne!(first.sha256, second.sha256);
    assert_eq!(files_in(&out), vec!["node.qcow2", "node.qcow2.sha256"]);
    assert!(
        std::fs::read_to_string(&second.checksum_path)
            .unwrap()
            .starts_with(second.sha256.hex())
    );
}

/// This process's umask, read from /proc (setting it to read it would race other tests).
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}
