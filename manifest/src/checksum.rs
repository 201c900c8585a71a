//! [`Checksum`]: a SHA-256 digest written `sha256:HEX`, and [`sha256_file`], the one helper
//! that hashes a file.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Hint;

/// The length of a SHA-256 digest in hex digits.
const SHA256_HEX_LEN: usize = 64;

/// Errors from parsing a `sha256:HEX` checksum.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumParseError {
    /// A checksum without the `sha256:` prefix.
    #[error("Checksum `{input}` has no algorithm; write it as `sha256:HEX`")]
    MissingAlgorithm {
        /// What was given.
        input: String,
    },
    /// A checksum with another algorithm than SHA-256.
    #[error("Checksum algorithm `{algorithm}` is not supported; only `sha256` is")]
    UnsupportedAlgorithm {
        /// The algorithm that was given.
        algorithm: String,
    },
    /// The hex digits are not a SHA-256 digest.
    #[error("`{hex}` is not a SHA-256 digest (64 hex digits expected, got {len} characters)")]
    BadHex {
        /// The offending digits.
        hex: String,
        /// How many characters were given.
        len: usize,
    },
}

impl Hint for ChecksumParseError {
    /// A suggestion for fixing the error, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            ChecksumParseError::MissingAlgorithm { .. } => Some(
                "pass `--base-checksum sha256:HEX`, `file:https://…/CHECKSUM` or `file:PATH`"
                    .to_owned(),
            ),
            ChecksumParseError::UnsupportedAlgorithm { .. } => {
                Some("compute a SHA-256 with `sha256sum IMAGE` and pass `sha256:HEX`".to_owned())
            }
            ChecksumParseError::BadHex { .. } => None,
        }
    }
}

/// A SHA-256 digest, written `sha256:HEX` (lower-case hex).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Checksum {
    hex: String,
}

impl Checksum {
    /// A checksum from 64 hex digits (any case).
    pub fn from_hex(hex: &str) -> Result<Self, ChecksumParseError> {
        let hex = hex.trim();
        if hex.len() != SHA256_HEX_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChecksumParseError::BadHex {
                hex: hex.to_owned(),
                len: hex.chars().count(),
            });
        }
        Ok(Checksum {
            hex: hex.to_ascii_lowercase(),
        })
    }

    /// A checksum from a finished SHA-256 digest.
    pub fn from_digest(digest: &[u8]) -> Self {
        Checksum {
            hex: hex::encode(digest),
        }
    }

    /// The digest as 64 lower-case hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum(sha256:{})", self.hex)
    }
}

impl FromStr for Checksum {
    type Err = ChecksumParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(ChecksumParseError::MissingAlgorithm {
                input: s.to_owned(),
            });
        };
        if !algorithm.eq_ignore_ascii_case("sha256") {
            return Err(ChecksumParseError::UnsupportedAlgorithm {
                algorithm: algorithm.to_owned(),
            });
        }
        Checksum::from_hex(hex)
    }
}

impl Serialize for Checksum {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Checksum {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The SHA-256 and length of a file, read in 1 MiB blocks (blocking; use `spawn_blocking` in
/// async code).
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<(Checksum, u64)> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((Checksum::from_digest(&hasher.finalize()), len))
}
