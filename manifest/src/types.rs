//! The small value types the build manifest records and the crates share: the pipeline
//! [`Stage`], the output [`ImageFormat`] and its qcow2 [`Compression`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// A word that is not one of the allowed choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not one of {expected}")]
pub struct UnknownChoice {
    /// The value given.
    pub value: String,
    /// The allowed values, e.g. `` `qcow2`, `raw` ``.
    pub expected: &'static str,
}

/// An enum of fixed words (`kib.toml`, the command line, the manifest): `as_str`, `Display`,
/// case-insensitive `FromStr` with [`UnknownChoice`] naming the allowed words, and lowercase
/// serde. One definition for every crate (builder's config uses it too).
#[macro_export]
macro_rules! choice_enum {
    ($(#[$meta:meta])* $name:ident, $expected:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The word used in `kib.toml`, on the command line and in the manifest.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::UnknownChoice;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::UnknownChoice { value: s.to_owned(), expected: $expected }),
                }
            }
        }
    };
}

choice_enum!(
    /// The output image format.
    ImageFormat, "`qcow2`, `raw`", {
    /// qcow2, compressed as [`Compression`] says.
    #[default]
    Qcow2 => "qcow2",
    /// A raw disk (never compressed).
    Raw => "raw",
});

choice_enum!(
    /// Compression of the output image's qcow2 clusters (not the containerDisk layer's: that is
    /// the packager's `LayerCompression`).
    Compression, "`zstd`, `zlib`, `none`", {
    /// zstd: fast; needs QEMU >= 5.1 built with zstd to read (current KubeVirt and CDI are).
    #[default]
    Zstd => "zstd",
    /// zlib: slow, readable by any QEMU.
    Zlib => "zlib",
    /// No compression.
    None => "none",
});

impl ImageFormat {
    /// The file extension (`qcow2`, `raw`).
    pub fn extension(self) -> &'static str {
        self.as_str()
    }
}

/// A stage of a build, in pipeline order. Each gets one tracing span and one duration in the
/// build manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Download (or find in the cache) and verify the base image.
    Fetch,
    /// Create the overlay disk and the cloud-init seed.
    Prepare,
    /// Start the VM and wait until SSH answers.
    Boot,
    /// Run the provisioners.
    Provision,
    /// Trim, power the VM off and wait for QEMU to exit.
    Shutdown,
    /// Convert the disk into the standalone output image.
    Export,
}

impl Stage {
    /// The stage's name as shown to people and written in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Prepare => "prepare",
            Stage::Boot => "boot",
            Stage::Provision => "provision",
            Stage::Shutdown => "shutdown",
            Stage::Export => "export",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
