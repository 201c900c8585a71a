//! Signing steps `kib sign`, `kib publish --sign-key` and `kib generate-key-pair` share: the
//! key password, loading the key, and signing plus attesting a pushed image.

use std::io::IsTerminal as _;
use std::path::Path;

use anyhow::Context as _;
use kib_packager::registry::Transport;
use kib_signer::Signed;
use kib_signer::keys::{PASSWORD_ENV, Password, SigningKey};
use kib_signer::oci_client::Reference;
use kib_signer::oci_client::secrets::RegistryAuth;

use crate::error_render::HintExt as _;

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
    tokio::task::spawn_blocking(move || SigningKey::load(&path, &password))
        .await?
        .hinted()
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

impl Attestation {
    /// The SBOM (`spdxjson`) and provenance (`slsaprovenance1`) `kib build` wrote beside
    /// `manifest` (see `kib_manifest::attest`); none when the build wrote none.
    pub(crate) fn beside_manifest(manifest: &Path) -> anyhow::Result<Vec<Self>> {
        kib_manifest::attest::beside(manifest)
            .into_iter()
            .map(|(path, type_name)| Self::read(&path, type_name))
            .collect()
    }
}

/// Attaches each of `attestations` to `image`, in order.
pub(crate) async fn attest_each(
    transport: &Transport,
    auth: &RegistryAuth,
    image: &Reference,
    key: &SigningKey,
    attestations: &[Attestation],
) -> anyhow::Result<Vec<Signed>> {
    let mut out = Vec::new();
    for a in attestations {
        out.push(
            kib_signer::attest_image(transport, auth, image, key, &a.predicate_type, &a.predicate)
                .await?,
        );
    }
    Ok(out)
}

/// Signs `image` and, if given, attaches the attestation: the signing step `kib sign` and
/// `kib publish --sign-key` share.
pub(crate) async fn sign_and_attest(
    transport: &Transport,
    auth: &RegistryAuth,
    image: &Reference,
    key: &SigningKey,
    attestation: Option<&Attestation>,
) -> anyhow::Result<(Signed, Option<Signed>)> {
    let signed = kib_signer::sign_image(transport, auth, image, key).await?;
    let attested = match attestation {
        Some(a) => Some(
            kib_signer::attest_image(transport, auth, image, key, &a.predicate_type, &a.predicate)
                .await?,
        ),
        None => None,
    };
    Ok((signed, attested))
}
