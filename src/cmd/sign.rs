//! `kib sign --key cosign.key IMAGE`: signs the image's manifest digest (a tag is resolved
//! first) in cosign's format, keeping existing signatures. With `--predicate FILE`, also
//! attaches FILE as a signed in-toto attestation (`--type`, default `spdxjson`), as
//! `cosign attest` does.
//!
//! Operators check the result with
//! `cosign verify --key cosign.pub --insecure-ignore-tlog=true IMAGE` (and
//! `cosign verify-attestation --key cosign.pub --insecure-ignore-tlog=true --type spdxjson IMAGE`).

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use kib_packager::registry;
use kib_signer::Signed;
use kib_signer::keys::{PASSWORD_ENV, Password, SigningKey};
use kib_signer::oci_client::secrets::RegistryAuth;
use kib_signer::oci_client::{Client, Reference};

use super::registry::RegistryArgs;
use super::{GlobalArgs, OutputFormat};

/// The key password: `COSIGN_PASSWORD`, else a prompt on the terminal (twice when
/// `confirm`). Never printed.
pub(crate) fn password(confirm: bool) -> anyhow::Result<Password> {
    if let Some(p) = Password::from_env() {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "No key password: set `{PASSWORD_ENV}` (it may be empty) or run on a terminal"
        );
    }
    let first = rpassword::prompt_password("Enter password for private key: ")
        .context("Failed to read the password")?;
    if confirm {
        let again = rpassword::prompt_password("Enter password for private key again: ")
            .context("Failed to read the password")?;
        if again != first {
            anyhow::bail!("The passwords do not match");
        }
    }
    Ok(Password::new(first))
}

/// Loads the cosign private key, its password from `COSIGN_PASSWORD` or a prompt. Shared by
/// `kib sign` and `kib publish --sign-key`, which loads it before pushing so that a wrong
/// password fails fast.
pub(crate) async fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    let password = password(false)?;
    let path = path.to_owned();
    Ok(tokio::task::spawn_blocking(move || SigningKey::load(&path, &password)).await??)
}

/// An attestation to attach: the predicate type URI and the predicate (JSON) bytes.
pub(crate) struct Attestation {
    predicate_type: String,
    predicate: Vec<u8>,
}

impl Attestation {
    /// Reads the predicate FILE; `type_name` is a cosign `--type` name or a URI.
    pub(crate) fn read(path: &Path, type_name: &str) -> anyhow::Result<Self> {
        let predicate_type = kib_signer::payload::predicate_type_uri(type_name)
            .with_context(|| format!("Unknown predicate type `{type_name}`"))?;
        Ok(Self {
            predicate_type,
            predicate: fs_err::read(path)?,
        })
    }
}

/// Signs `image` and, if given, attaches the attestation: the signing step `kib sign` and
/// `kib publish --sign-key` share.
pub(crate) async fn sign_and_attest(
    client: &Client,
    auth: &RegistryAuth,
    image: &Reference,
    key: &SigningKey,
    attestation: Option<&Attestation>,
) -> anyhow::Result<(Signed, Option<Signed>)> {
    let signed = kib_signer::sign_image(client, auth, image, key).await?;
    let attested = match attestation {
        Some(a) => Some(
            kib_signer::attest_image(client, auth, image, key, &a.predicate_type, &a.predicate)
                .await?,
        ),
        None => None,
    };
    Ok((signed, attested))
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The cosign private key (`cosign.key`); its password comes from `COSIGN_PASSWORD` or a prompt.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The image, `registry/repo:tag` or `registry/repo@sha256:…`; the digest is what gets signed.
    image: String,
    /// Also attach this JSON file (e.g. the SPDX SBOM) as a signed attestation.
    #[arg(long, value_name = "FILE")]
    predicate: Option<PathBuf>,
    /// The predicate type: a cosign `--type` name (`spdxjson`, `cyclonedx`, `custom`, …) or a URI.
    #[arg(long = "type", default_value = "spdxjson", requires = "predicate")]
    predicate_type: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// How to print the result on stdout.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

impl Args {
    pub(crate) async fn run(self, _global: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let image: Reference = self
            .image
            .parse()
            .with_context(|| format!("`{}` is not an image reference", self.image))?;
        let attestation = self
            .predicate
            .as_deref()
            .map(|path| Attestation::read(path, &self.predicate_type))
            .transpose()?;
        let key = load_key(&self.key).await?;
        let opts = self.registry.options()?;
        let client = registry::client(&image, &opts);
        let auth = registry::auth(&image, &opts)?;
        let (signed, attested) =
            sign_and_attest(&client, &auth, &image, &key, attestation.as_ref()).await?;
        let mut out = std::io::stdout().lock();
        match self.output {
            OutputFormat::Json => {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"signature": signed, "attestation": attested})
                )?;
            }
            OutputFormat::Text => {
                writeln!(out, "{}", signed.signature)?;
                if let Some(a) = &attested {
                    writeln!(out, "{}", a.signature)?;
                }
            }
        }
        let _ = writeln!(
            std::io::stderr(),
            "Signed `{}` (`{}`)",
            signed.image,
            signed.digest
        );
        Ok(ExitCode::SUCCESS)
    }
}
