//! Hostile and plain disk images made by the real `qemu-img`, for the tests that prove kib
//! refuses images naming a host file (a qcow2 backing file, a VMDK extent) wherever it opens
//! one (base image, conformance, publish).

use std::path::Path;
use std::process::Command;

/// Runs `qemu-img ARGS`, panicking with its stderr when it fails.
pub fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img must be installed (apt-get install qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

/// A qcow2 at `img` whose (raw) backing file is `backing`, e.g. a host file.
pub fn qcow2_backed_by(backing: &Path, img: &Path) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        s(backing),
        s(img),
    ]);
}

/// A monolithicFlat VMDK descriptor at `img` (1 MiB) whose flat extent is `extent`, e.g. a
/// host file: what `qemu-img` would follow if asked to guess the format.
pub fn vmdk_with_extent(extent: &Path, img: &Path) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        s(img),
        "1M",
    ]);
    let stem = img
        .file_stem()
        .and_then(|n| n.to_str())
        .expect("a UTF-8 image name");
    let flat = format!("{stem}-flat.vmdk");
    let text = std::fs::read_to_string(img).expect("read the descriptor");
    assert!(text.contains(&flat), "{text}");
    std::fs::write(img, text.replace(&flat, s(extent))).expect("write the descriptor");
    let _ = std::fs::remove_file(img.with_file_name(flat));
}
