//! `kib sign --key cosign.key IMAGE`: signs the image's manifest digest (a tag is resolved
//! first) in cosign's format, keeping existing signatures. With `--predicate FILE`, also
//! attaches FILE as a signed in-toto attestation (`--type`, default `spdxjson`), as
//! `cosign attest` does.
//!
//! Operators check the result with
//! `cosign verify --key cosign.pub --insecure-ignore-tlog=true IMAGE` (and
//! `cosign verify-attestation --key cosign.pub --insecure-ignore-tlog=true --type spdxjson IMAGE`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use kib_packager::registry;
use kib_signer::oci_client::Reference;

use crate::cli::{GlobalArgs, OutputFormat};
use crate::common::registry_args::RegistryArgs;
use crate::common::signing::{Attestation, load_key, sign_and_attest};
use crate::error_render::HintExt as _;

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
        let auth = registry::auth(&image, &opts).hinted()?;
        let transport = registry::connect(&image, &opts, &auth).await.hinted()?;
        let (signed, attested) =
            sign_and_attest(&transport, &auth, &image, &key, attestation.as_ref()).await?;
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
