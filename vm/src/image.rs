//! Disk image inspection: what every image kib opens (base image, conformance image, the qcow2
//! `kib publish` wraps) must pass before QEMU or `qemu-img` sees it.
//!
//! An image can name other files: a qcow2 has a *backing file* (its header's
//! `backing_file_offset`) and an *external data file* (incompatible feature bit 2 and the
//! `0x44415441` header extension); a VMDK descriptor names its *extents*. `qemu-img convert`
//! flattens such a chain, so a base image whose backing file is `/etc/shadow` would export the
//! host's file into the signed image, and a guest booted from a VMDK descriptor reads whatever
//! host file the extent names. So [`inspect`] decides the format **from the bytes** (never by
//! letting QEMU probe), accepts only a self-contained qcow2 or a raw image, and the callers pass
//! that format explicitly (`-f`, `-F`, `format=`).
//!
//! The qcow2 header layout is QEMU's `docs/interop/qcow2.txt` (qemu/qemu): magic `QFI\xfb`,
//! version at 4, `backing_file_offset` at 8, `size` at 24, `crypt_method` at 32, and for
//! version 3 `incompatible_features` at 72 and `header_length` at 100, followed by header
//! extensions (type, length, data padded to 8 bytes) up to the end marker (type 0).
//! The other magics refused are those QEMU's format drivers probe for (`block/*.c`).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use kib_manifest::Hint;

/// The disk formats kib accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskFormat {
    /// A self-contained qcow2 (version 2 or 3, no backing file, no external data file).
    Qcow2,
    /// Raw bytes (anything without another format's magic).
    Raw,
}

impl DiskFormat {
    /// `qcow2` or `raw`, as QEMU's `format=`, `-f` and `-F` want it.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A disk image that passed [`inspect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskImage {
    /// Its format, from its bytes.
    pub format: DiskFormat,
    /// The disk size the guest sees, in bytes.
    pub virtual_size: u64,
}

/// Why an image is refused.
#[derive(Debug, thiserror::Error)]
pub enum DiskImageError {
    /// The file could not be read.
    #[error("Failed to read the disk image `{}`", path.display())]
    Read {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The path is a directory, a device or a socket.
    #[error("The disk image `{}` is not a regular file", path.display())]
    NotAFile {
        /// The image.
        path: PathBuf,
    },
    /// The image has a format kib does not accept.
    #[error("The disk image `{}` is in {format} format; kib accepts only qcow2 and raw", path.display())]
    UnsupportedFormat {
        /// The image.
        path: PathBuf,
        /// The format its bytes name, e.g. `VMDK`.
        format: &'static str,
    },
    /// A qcow2 names a backing file (its name is not shown: it is a host path the image chose).
    #[error("The qcow2 `{}` has a backing file; kib accepts only self-contained images", path.display())]
    BackingFile {
        /// The image.
        path: PathBuf,
    },
    /// A qcow2 keeps its data in an external file.
    #[error("The qcow2 `{}` has an external data file; kib accepts only self-contained images", path.display())]
    ExternalDataFile {
        /// The image.
        path: PathBuf,
    },
    /// A qcow2 is encrypted.
    #[error("The qcow2 `{}` is encrypted; kib accepts only unencrypted images", path.display())]
    Encrypted {
        /// The image.
        path: PathBuf,
    },
    /// A qcow2 header kib cannot read (bad version, truncated, unknown incompatible features).
    #[error("The qcow2 `{}` has an invalid or unsupported header: {reason}", path.display())]
    BadHeader {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Hint for DiskImageError {
    /// A suggestion for the user.
    fn hint(&self) -> Option<String> {
        match self {
            DiskImageError::UnsupportedFormat { .. } => Some(
                "convert it into a self-contained qcow2 first (`qemu-img convert -f <format> -O qcow2 in out.qcow2`), after checking which files it names".to_owned(),
            ),
            DiskImageError::BackingFile { path } | DiskImageError::ExternalDataFile { path } => {
                Some(format!(
                    "check which files it names (`qemu-img info -f qcow2 {}`); if they are meant to be in the image, flatten it with `qemu-img convert -f qcow2 -O qcow2`",
                    path.display()
                ))
            }
            _ => None,
        }
    }
}

/// How much of the file is read: the qcow2 header and its extensions live in the first cluster
/// (at least 512 bytes, at most 2 MiB); QEMU itself refuses a `header_length` or extensions
/// beyond the first cluster.
const HEAD: u64 = 2 << 20;

/// qcow2 incompatible feature bits QEMU knows (`qcow2.txt`): dirty, corrupt, external data
/// file, compression type, extended L2.
const QCOW2_KNOWN_INCOMPATIBLE: u64 = 0b1_1111;
/// Incompatible feature bit 2: the data lives in an external file.
const QCOW2_EXTERNAL_DATA: u64 = 1 << 2;
/// Header extension: the external data file's name.
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Header extension: the full disk encryption header.
const EXT_CRYPTO: u32 = 0x0537_be77;

/// Decides an image's format from its bytes and refuses anything that is not a self-contained
/// qcow2 or raw image (see the module docs). Reads at most the first 2 MiB.
pub fn inspect(path: &Path) -> Result<DiskImage, DiskImageError> {
    let read = |source| DiskImageError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(DiskImageError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mut head = Vec::new();
    file.take(HEAD).read_to_end(&mut head).map_err(read)?;
    if head.starts_with(b"QFI\xfb") {
        return qcow2(path, &head);
    }
    if let Some(format) = other_format(&head) {
        return Err(DiskImageError::UnsupportedFormat {
            path: path.to_owned(),
            format,
        });
    }
    Ok(DiskImage {
        format: DiskFormat::Raw,
        virtual_size: meta.len(),
    })
}

/// [`inspect`] off the async runtime's threads.
pub async fn inspect_async(path: &Path) -> Result<DiskImage, DiskImageError> {
    let owned = path.to_owned();
    match tokio::task::spawn_blocking(move || inspect(&owned)).await {
        Ok(r) => r,
        Err(e) => Err(DiskImageError::Read {
            path: path.to_owned(),
            source: std::io::Error::other(e),
        }),
    }
}

/// The formats (other than qcow2) QEMU would recognise in these bytes.
fn other_format(head: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, b"KDMV") || at(0, b"COWD") {
        return Some("VMDK");
    }
    // A VMDK text descriptor: its extents are host files. QEMU's vmdk probe looks for the
    // descriptor's lines; one of them in the first 4 KiB is enough to refuse.
    let text = &head[..head.len().min(4096)];
    let contains = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
    if contains(b"# Disk DescriptorFile") || contains(b"createType=") {
        return Some("VMDK (descriptor)");
    }
    if at(0, b"QED\0") {
        return Some("QED");
    }
    if at(0, b"vhdxfile") {
        return Some("VHDX");
    }
    if at(0, b"conectix") {
        return Some("VPC/VHD");
    }
    if at(64, &[0x7f, 0x10, 0xda, 0xbe]) {
        return Some("VDI");
    }
    if at(0, b"LUKS\xba\xbe") {
        return Some("LUKS");
    }
    if at(0, b"WithoutFreeSpace") || at(0, b"WithouFreSpacExt") {
        return Some("Parallels");
    }
    if at(0, b"Bochs Virtual HD Image") {
        return Some("Bochs");
    }
    if at(0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop") {
        return Some("cloop");
    }
    None
}

fn qcow2(path: &Path, head: &[u8]) -> Result<DiskImage, DiskImageError> {
    let bad = |reason: String| DiskImageError::BadHeader {
        path: path.to_owned(),
        reason,
    };
    let u32_at = |off: usize| {
        head.get(off..off + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(|| bad(format!("the file ends inside its header (at byte {off})")))
    };
    let u64_at = |off: usize| {
        head.get(off..off + 8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(|| bad(format!("the file ends inside its header (at byte {off})")))
    };
    let version = u32_at(4)?;
    if version != 2 && version != 3 {
        return Err(bad(format!("version {version} (expected 2 or 3)")));
    }
    if u64_at(8)? != 0 || u32_at(16)? != 0 {
        return Err(DiskImageError::BackingFile {
            path: path.to_owned(),
        });
    }
    let virtual_size = u64_at(24)?;
    if u32_at(32)? != 0 {
        return Err(DiskImageError::Encrypted {
            path: path.to_owned(),
        });
    }
    let cluster_bits = u32_at(20)?;
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad(format!("cluster_bits {cluster_bits}")));
    }
    let (extensions_start, incompatible) = if version == 2 {
        (72usize, 0)
    } else {
        let header_length = u32_at(100)? as usize;
        if header_length < 104 {
            return Err(bad(format!("header_length {header_length}")));
        }
        (header_length, u64_at(72)?)
    };
    if incompatible & QCOW2_EXTERNAL_DATA != 0 {
        return Err(DiskImageError::ExternalDataFile {
            path: path.to_owned(),
        });
    }
    if incompatible & !QCOW2_KNOWN_INCOMPATIBLE != 0 {
        return Err(bad(format!(
            "unknown incompatible features {incompatible:#x}"
        )));
    }
    // The header extensions: the external data file name and the encryption header must not be
    // there either (QEMU ignores a data file name without the feature bit; refuse it anyway).
    let cluster = 1usize << cluster_bits;
    let mut off = extensions_start;
    loop {
        if off + 8 > cluster.min(head.len()) {
            return Err(bad(
                "its header extensions run past the first cluster".into()
            ));
        }
        let kind = u32_at(off)?;
        let len = u32_at(off + 4)? as usize;
        match kind {
            0 => break,
            EXT_DATA_FILE => {
                return Err(DiskImageError::ExternalDataFile {
                    path: path.to_owned(),
                });
            }
            EXT_CRYPTO => {
                return Err(DiskImageError::Encrypted {
                    path: path.to_owned(),
                });
            }
            _ => {}
        }
        off = off
            .checked_add(8 + len.div_ceil(8) * 8)
            .ok_or_else(|| bad("a header extension is too long".into()))?;
    }
    Ok(DiskImage {
        format: DiskFormat::Qcow2,
        virtual_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_qcow2_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.qcow2");
        std::fs::write(&p, b"QFI\xfb\0\0\0\x03").unwrap();
        let e = inspect(&p).unwrap_err();
        assert!(matches!(e, DiskImageError::BadHeader { .. }), "{e}");
    }

    #[test]
    fn other_magics_are_named() {
        assert_eq!(other_format(b"KDMV...."), Some("VMDK"));
        assert_eq!(
            other_format(b"# Disk DescriptorFile\nversion=1\n"),
            Some("VMDK (descriptor)")
        );
        assert_eq!(other_format(b"QED\0xxxx"), Some("QED"));
        assert_eq!(other_format(&[0u8; 512]), None);
    }
}
