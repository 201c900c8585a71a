//! What can be wrong with a configuration: the file ([`ConfigError`]) or one value in it
//! ([`ValueError`]), each with its hint.

use std::path::PathBuf;

use kib_manifest::Hint;

use super::RESERVED_USERS;

/// Errors from loading and overriding the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("Failed to read `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("Invalid configuration in `{}`{}", path.display(), at(*line, key.as_deref()))]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line of the error, from 1, when known.
        line: Option<usize>,
        /// The dotted key the error is about (`vm.disk_size`), when known.
        key: Option<String>,
        /// The cause (with the TOML snippet).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or malformed.
    #[error("Invalid value for `{key}` in {origin}")]
    Invalid {
        /// Where the value came from: `` `path/kib.toml` `` or `the command line`.
        origin: String,
        /// The dotted key (`vm.cpus`).
        key: String,
        /// What is wrong.
        #[source]
        source: ValueError,
    },
}

fn at(line: Option<usize>, key: Option<&str>) -> String {
    match (line, key) {
        (Some(l), Some(k)) => format!(" at line {l} (`{k}`)"),
        (Some(l), None) => format!(" at line {l}"),
        (None, Some(k)) => format!(" (`{k}`)"),
        (None, None) => String::new(),
    }
}

impl Hint for ConfigError {
    /// A suggestion for fixing the error, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            ConfigError::Invalid { source, .. } => source.hint(),
            ConfigError::Parse { source, .. } if source.message().contains("unknown field") => Some(
                "see the commented defaults at the top of builder/src/config/mod.rs (or the repository's kib.toml)"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// A malformed or out-of-range value (from `kib.toml` or a command-line flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not `MAJOR.MINOR` or `MAJOR.MINOR.PATCH`.
    #[error("`{value}` is not a Kubernetes version like `1.37` or `1.37.1`")]
    KubernetesVersion {
        /// The value given.
        value: String,
    },
    /// Not a size like `20G`.
    #[error("`{value}` is not a size like `20G`, `512M` or `1T`")]
    Size {
        /// The value given.
        value: String,
    },
    /// Not a duration like `15m`.
    #[error("`{value}` is not a duration like `90s`, `15m` or `1h30m`")]
    Duration {
        /// The value given.
        value: String,
    },
    /// Not one of the allowed words.
    #[error("`{value}` is not one of {expected}")]
    Choice {
        /// The value given.
        value: String,
        /// The allowed values, e.g. `` `auto`, `kvm`, `tcg` ``.
        expected: &'static str,
    },
    /// A `--var` without `=`.
    #[error("`{value}` is not `KEY=VALUE`")]
    Var {
        /// The value given.
        value: String,
    },
    /// A number below its minimum.
    #[error("{value} is below the minimum of {min}")]
    TooSmall {
        /// The value given.
        value: String,
        /// The minimum.
        min: String,
    },
    /// Not a usable Linux user name.
    #[error(
        "`{value}` is not a valid user name (lower-case letters, digits, `_` and `-`; not an account of the image such as `root`)"
    )]
    UserName {
        /// The value given.
        value: String,
    },
    /// Not a usable file name (empty, or with `/`, or starting with `.`).
    #[error("`{value}` is not a valid output name (no `/`, not empty, not starting with `.`)")]
    OutputName {
        /// The value given.
        value: String,
    },
    /// An empty string where text is needed.
    #[error("The value is empty")]
    Empty,
}

impl From<kib_manifest::UnknownChoice> for ValueError {
    fn from(e: kib_manifest::UnknownChoice) -> Self {
        ValueError::Choice {
            value: e.value,
            expected: e.expected,
        }
    }
}

impl Hint for ValueError {
    /// A suggestion for fixing the error, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            ValueError::UserName { value } if RESERVED_USERS.contains(&value.as_str()) => Some(
                "the build user is deleted at the end of the build; pick a dedicated name such as `kib-build`"
                    .to_owned(),
            ),
            ValueError::KubernetesVersion { .. } => {
                Some("give a minor (`1.37`, newest patch) or an exact release (`1.37.1`), without `v`".to_owned())
            }
            _ => None,
        }
    }
}
