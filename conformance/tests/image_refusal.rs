//! `kib conformance` never lets QEMU guess an image's format: a VMDK descriptor whose extent is
//! a host file, or a qcow2 whose backing file is one, is refused before any VM starts (issue
//! #16). Images made here by `qemu-img` (qemu-utils).

use std::path::Path;
use std::process::Command;

use kib_conformance::direct::{DirectError, create_overlay, image_info};
use kib_manifest::Hint as _;
use kib_test_infra::images::{qcow2_backed_by, qemu_img, vmdk_with_extent};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn host_file_images_are_refused_and_raw_gets_an_explicit_format() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("host-secret");
    std::fs::write(&secret, "kib-conformance-secret\n".repeat(100_000)).unwrap();

    let vmdk = dir.path().join("d.vmdk");
    vmdk_with_extent(&secret, &vmdk);
    let e = image_info(&vmdk).await.unwrap_err();
    assert!(matches!(e, DirectError::Refused { .. }), "{e:?}");
    assert!(e.hint().is_some());

    let backed = dir.path().join("b.qcow2");
    qcow2_backed_by(&secret, &backed);
    let e = image_info(&backed).await.unwrap_err();
    assert!(matches!(e, DirectError::Refused { .. }), "{e:?}");
    let shown = format!("{e:?}");
    assert!(!shown.contains("kib-conformance-secret"), "{shown}");

    // A raw image is accepted; its overlay records `raw` as the backing format.
    let raw = dir.path().join("r.img");
    qemu_img(&["create", "-q", "-f", "raw", s(&raw), "2M"]);
    let (size, format) = image_info(&raw).await.unwrap();
    assert_eq!((size, format.as_str()), (2 << 20, "raw"));
    let overlay = dir.path().join("o.qcow2");
    create_overlay(&raw, &format, &overlay, 4 << 20)
        .await
        .unwrap();
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2", s(&overlay)])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        info.contains("\"backing-filename-format\": \"raw\""),
        "{info}"
    );
}
