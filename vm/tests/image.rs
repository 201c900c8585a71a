//! Disk image inspection against real images made by `qemu-img` here: images that name a host
//! file (a qcow2 backing file, a qcow2 external data file, a VMDK extent) are refused, and the
//! host file's bytes appear in no error or hint. Needs `qemu-img` (qemu-utils).

use std::path::{Path, PathBuf};
use std::process::Command;

use kib_manifest::{Hint as _, error_chain};
use kib_test_infra::images::{qcow2_backed_by, qemu_img, vmdk_with_extent};
use kib_vm::image::{DiskFormat, DiskImageError, inspect, inspect_async};

const SECRET: &str = "kib-test-host-secret-6f1d0c";

/// A host file the hostile images point at.
fn secret(dir: &Path) -> PathBuf {
    let p = dir.join("host-secret");
    let mut bytes = SECRET.repeat(64).into_bytes();
    bytes.resize(1 << 20, b'#');
    std::fs::write(&p, bytes).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The error, its chain and its hint: none may carry the host file's bytes.
fn refused(path: &Path) -> DiskImageError {
    let e = inspect(path).expect_err("the image must be refused");
    let shown = format!("{}\n{}", error_chain(&e), e.hint().unwrap_or_default());
    assert!(!shown.contains(SECRET), "the secret leaked: {shown}");
    e
}

#[test]
fn a_qcow2_whose_backing_file_is_a_host_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret(dir.path());
    let img = dir.path().join("base.qcow2");
    qcow2_backed_by(&secret, &img);
    let e = refused(&img);
    assert!(matches!(e, DiskImageError::BackingFile { .. }), "{e}");
    assert!(e.to_string().contains("has a backing file"), "{e}");
    assert!(
        !e.to_string().contains("host-secret"),
        "the backing path is not echoed: {e}"
    );
}

#[test]
fn a_qcow2_with_an_external_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.raw");
    let img = dir.path().join("data.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={},data_file_raw=on", s(&data)),
        s(&img),
        "1M",
    ]);
    // The data file now holds the host's secret: a raw data file is the guest's disk.
    std::fs::write(&data, SECRET.repeat(1024)).unwrap();
    let e = refused(&img);
    assert!(matches!(e, DiskImageError::ExternalDataFile { .. }), "{e}");
    assert!(e.to_string().contains("external data file"), "{e}");
}

#[test]
fn a_vmdk_descriptor_whose_extent_is_a_host_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret(dir.path());
    let img = dir.path().join("disk.vmdk");
    vmdk_with_extent(&secret, &img);
    // QEMU, left to guess, would read the host file through it:
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", s(&img)])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("host-secret"));

    let e = refused(&img);
    assert!(
        matches!(e, DiskImageError::UnsupportedFormat { format, .. } if format.starts_with("VMDK")),
        "{e}"
    );
    assert!(e.to_string().contains("accepts only qcow2 and raw"), "{e}");

    // A binary (sparse) VMDK is refused as well.
    let sparse = dir.path().join("sparse.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", s(&sparse), "1M"]);
    assert!(matches!(
        refused(&sparse),
        DiskImageError::UnsupportedFormat { .. }
    ));
}

#[test]
fn self_contained_qcow2_and_raw_images_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&raw), "3M"]);
    let r = inspect(&raw).unwrap();
    assert_eq!(r.format, DiskFormat::Raw);
    assert_eq!(r.virtual_size, 3 << 20);

    for compat in ["0.10", "1.1"] {
        let q = dir.path().join(format!("disk-{compat}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("compat={compat}"),
            s(&q),
            "5M",
        ]);
        let i = inspect(&q).unwrap();
        assert_eq!(i.format, DiskFormat::Qcow2);
        assert_eq!(i.virtual_size, 5 << 20);
    }
    // A converted (flattened, compressed) image, as `kib build` exports it.
    let z = dir.path().join("z.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-c",
        "-o",
        "compression_type=zstd",
        s(&raw),
        s(&z),
    ]);
    assert_eq!(inspect(&z).unwrap().format, DiskFormat::Qcow2);
}

#[tokio::test]
async fn an_overlay_made_by_kib_is_refused_as_an_input_and_a_directory_is_not_a_disk() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("b.qcow2");
    let over = dir.path().join("o.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "1M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        s(&base),
        s(&over),
    ]);
    assert!(matches!(
        inspect_async(&over).await,
        Err(DiskImageError::BackingFile { .. })
    ));
    assert!(matches!(
        inspect_async(dir.path()).await,
        Err(DiskImageError::NotAFile { .. })
    ));
}
