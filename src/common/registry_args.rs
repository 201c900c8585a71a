//! Registry access flags shared by `publish`, `sign` and `verify`.

use std::io::Read as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use kib_packager::registry::{RegistryOptions, Secret};

/// How to reach and log in to the registry. Credentials are taken from these flags, else
/// `KIB_REGISTRY_USERNAME`/`KIB_REGISTRY_PASSWORD`, else docker's `config.json` (with its
/// credential helpers), else anonymous.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RegistryArgs {
    /// Talk plain HTTP to this registry. Loopback registries (127.0.0.0/8, ::1, localhost)
    /// use HTTP without it unless `--ca-file` or `--skip-tls-verify` is given. To any other
    /// host plain HTTP is anonymous only: kib refuses to send credentials over it.
    #[arg(long, env = "KIB_REGISTRY_PLAIN_HTTP", value_parser = clap::builder::FalseyValueParser::new(), conflicts_with_all = ["skip_tls_verify", "ca_file"])]
    pub(crate) plain_http: bool,
    /// Do not verify the TLS certificate of this registry's host. A token service on another
    /// host is refused, since it would get the credentials unverified. Prefer `--ca-file`.
    #[arg(long, env = "KIB_REGISTRY_SKIP_TLS_VERIFY", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) skip_tls_verify: bool,
    /// PEM file with CA certificates to trust for this registry and its token service, in
    /// addition to the system's (a private or self-signed registry CA).
    #[arg(long, env = "KIB_REGISTRY_CA_FILE", value_name = "PATH")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Removed: use `--plain-http`, `--skip-tls-verify` or `--ca-file`.
    #[arg(long, hide = true, env = "KIB_REGISTRY_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) insecure: bool,
    /// Registry user name (with `--password-stdin`).
    #[arg(long, requires = "password_stdin")]
    pub(crate) username: Option<String>,
    /// Read the registry password or token from stdin.
    #[arg(long, requires = "username")]
    pub(crate) password_stdin: bool,
}

/// Warnings are printed once per run, however often the options are read.
static WARNED: std::sync::Once = std::sync::Once::new();

impl RegistryArgs {
    /// The library options; reads the password from stdin if asked to.
    pub(crate) fn options(&self) -> anyhow::Result<RegistryOptions> {
        anyhow::ensure!(
            !self.insecure,
            "`--insecure` / `KIB_REGISTRY_INSECURE` was removed: it sent credentials over plain HTTP and turned TLS checks off for every host. Use `--plain-http` for an HTTP registry, `--ca-file PATH` for a registry with a private CA, or `--skip-tls-verify` to skip the certificate check of the registry's host only"
        );
        WARNED.call_once(|| {
            if self.plain_http {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "warning: --plain-http: talking unencrypted HTTP to the registry; anyone on the path can read and change what is sent"
                );
            }
            if self.skip_tls_verify {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "warning: --skip-tls-verify: the registry's certificate is not checked, so its identity is not proven; prefer --ca-file"
                );
            }
        });
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
            plain_http: self.plain_http,
            skip_tls_verify: self.skip_tls_verify,
            ca_file: self.ca_file.clone(),
            username: self.username.clone(),
            password,
        })
    }
}
