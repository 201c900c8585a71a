//! A fixed input and the digests the two-pass publish computed for it (see `digests.rs`).

use std::io::Write as _;

use kib_packager::image::ImageMetadata;
use kib_packager::layer::Compression;

/// 5 MiB + 777 bytes of a fixed pseudo-random sequence (crosses read, chunk and gzip-block
/// boundaries; the tar padding is not a multiple of 512).
pub fn fixed_disk() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..(5 << 20) + 777)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect();
    f.write_all(&data).unwrap();
    f
}

pub fn fixed_metadata() -> ImageMetadata {
    ImageMetadata {
        created: 1_790_000_000,
        source: Some("https://example.invalid/kib".into()),
        revision: Some("0123456789abcdef".into()),
        version: Some("v0.1.0".into()),
        title: Some("kib node image".into()),
        description: None,
        kubernetes_version: Some("v1.37.1".into()),
        rocky_version: Some("10.1".into()),
        base_image_sha256: Some("ab".repeat(32)),
        instancetype: Some("u1.medium".into()),
        preference: Some("rhel.10".into()),
    }
}

/// (compression, layer digest, diff_id, manifest digest) as the two-pass code computed them
/// (commit 8f24d64, before the one-pass upload).
pub const PINNED: [(Compression, &str, &str, &str); 3] = [
    (
        Compression::Gzip,
        "sha256:41770506fe71e958a7bad88aa86a192a7f8dcf611fee4ef114ca1c36d72e8ef0",
        "sha256:044d3814e2bec61cd173e04a393199816be9ca88feec63060eea541bffb377de",
        "sha256:693af99f57adf1d0f205d772084e09848bbb4cb1973ec56242450f75a6da8002",
    ),
    (
        Compression::Zstd,
        "sha256:07ab9a77905a7213c44e08514dfa44c26d3e746f478d2f7fe157bd4f32a66126",
        "sha256:044d3814e2bec61cd173e04a393199816be9ca88feec63060eea541bffb377de",
        "sha256:a10a97914b54cc2b9266fab1a074ee8a957ab10a4b676ba35af16de8c6aa9a3c",
    ),
    (
        Compression::None,
        "sha256:044d3814e2bec61cd173e04a393199816be9ca88feec63060eea541bffb377de",
        "sha256:044d3814e2bec61cd173e04a393199816be9ca88feec63060eea541bffb377de",
        "sha256:64ec1d19f2ec85c4e6aa790e491b995947927ab208aa112f319f3794719f4ff6",
    ),
];
