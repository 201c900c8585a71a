//! Registry access flags shared by `publish`, `sign` and `verify`.

use std::io::Read as _;

use anyhow::Context as _;
use kib_packager::registry::{RegistryOptions, Secret};

/// How to reach and log in to the registry. Credentials are taken from these flags, else
/// `KIB_REGISTRY_USERNAME`/`KIB_REGISTRY_PASSWORD`, else docker's `config.json` (with its
/// credential helpers), else anonymous.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RegistryArgs {
    /// Allow plain HTTP and unverified TLS for this registry (loopback registries such as
    /// `127.0.0.1:5000` use HTTP without it).
    #[arg(long, env = "KIB_REGISTRY_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) insecure: bool,
    /// Registry user name (with `--password-stdin`).
    #[arg(long, requires = "password_stdin")]
    pub(crate) username: Option<String>,
    /// Read the registry password or token from stdin.
    #[arg(long, requires = "username")]
    pub(crate) password_stdin: bool,
}

impl RegistryArgs {
    /// The library options; reads the password from stdin if asked to.
    pub(crate) fn options(&self) -> anyhow::Result<RegistryOptions> {
        let password = if self.password_stdin {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("Failed to read the password from stdin")?;
            let text = text.trim_end_matches(['\n', '\r']).to_owned();
            anyhow::ensure!(!text.is_empty(), "The password read from stdin is empty");
            Some(Secret::new(text))
        } else {
            None
        };
        Ok(RegistryOptions {
            insecure: self.insecure,
            username: self.username.clone(),
            password,
        })
    }
}
