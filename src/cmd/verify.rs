//! `kib verify --key cosign.pub IMAGE`: resolves the tag to a digest, reads that digest's
//! cosign signatures and checks that one verifies with the key and names that exact digest.
//! Exits 1 with the reason for every signature otherwise. `--attestation-type` also checks
//! the signed attestations of that type. `--output json` prints the report for CI.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use kib_packager::registry;
use kib_signer::keys::PublicKey;
use kib_signer::oci_client::Reference;

use crate::cli::{GlobalArgs, OutputFormat};
use crate::common::registry_args::RegistryArgs;
use crate::error_render::{Failure, HintExt as _};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The cosign public key (`cosign.pub`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The image, `registry/repo:tag` or `registry/repo@sha256:…`.
    image: String,
    /// Also require a valid attestation of this predicate type (`spdxjson`, a URI, …).
    #[arg(long, value_name = "TYPE")]
    attestation_type: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// How to print the result on stdout (`json`: the full report, for CI).
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

impl Args {
    pub(crate) async fn run(self, _global: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let image: Reference = self
            .image
            .parse()
            .with_context(|| format!("`{}` is not an image reference", self.image))?;
        let key = PublicKey::load(&self.key).hinted()?;
        let attestation_type = match &self.attestation_type {
            Some(t) => Some(
                kib_signer::payload::predicate_type_uri(t)
                    .with_context(|| format!("Unknown predicate type `{t}`"))?,
            ),
            None => None,
        };
        let opts = self.registry.options()?;
        let auth = registry::auth(&image, &opts).hinted()?;
        let client = registry::connect(&image, &opts, &auth)
            .await
            .hinted()?
            .client;
        // One resolution: signatures and attestations are checked for the same digest.
        let digest = kib_signer::resolve_digest(&client, &auth, &image).await?;
        let signatures =
            kib_signer::verify_image_at(&client, &auth, &image, digest.clone(), &key).await?;
        let attestations = match &attestation_type {
            Some(t) => Some(
                kib_signer::verify_attestations_at(&client, &auth, &image, digest, &key, Some(t))
                    .await?,
            ),
            None => None,
        };
        let verified = signatures.verified && attestations.as_ref().is_none_or(|a| a.verified);
        let mut out = std::io::stdout().lock();
        match self.output {
            OutputFormat::Json => writeln!(
                out,
                "{}",
                serde_json::json!({
                    "image": signatures.image,
                    "digest": signatures.digest,
                    "verified": verified,
                    "signatures": signatures,
                    "attestations": attestations,
                })
            )?,
            OutputFormat::Text if verified => {
                writeln!(
                    out,
                    "{}/{}@{}",
                    image.registry(),
                    image.repository(),
                    signatures.digest
                )?;
            }
            OutputFormat::Text => {}
        }
        drop(out);
        if let Some(reason) = signatures.failure_reason() {
            return Err(Failure(format!(
                "Verification of `{}` failed: {reason}",
                signatures.image
            ))
            .into());
        }
        if let Some(reason) = attestations.as_ref().and_then(|a| a.failure_reason()) {
            return Err(Failure(format!(
                "Attestation check of `{}` failed: {reason}",
                signatures.image
            ))
            .into());
        }
        let valid = signatures.layers.iter().filter(|l| l.valid).count();
        let _ = writeln!(
            std::io::stderr(),
            "Verified `{}` (`{}`): {valid} valid signature(s)",
            signatures.image,
            signatures.digest
        );
        Ok(ExitCode::SUCCESS)
    }
}
