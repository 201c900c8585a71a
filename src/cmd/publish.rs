//! `kib publish`: push a qcow2 as a KubeVirt containerDisk, streaming, tag it, and with
//! `--sign-key` sign the pushed digest (and attach an attestation) the way `kib sign` does.
//!
//! stdout carries only the result: the digest, then one `registry/repo:tag` line per tag
//! (or one JSON document with `--output-format json`, which also names the signature and
//! attestation); progress goes to stderr.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kib_packager::push::{PublishRequest, RetryPolicy, publish};

use super::package::StderrReporter;
use crate::cli::{GlobalArgs, OutputFormat};
use crate::common::image_args::ImageArgs;
use crate::common::registry_args::RegistryArgs;
use crate::common::signing::{Attestation, load_key, sign_and_attest};

/// What `kib publish --help` shows after the options: the flow it belongs to.
const FLOW: &str = "\
kib publish does not build: build, test, then publish what the build wrote. The release flow
(what .github/workflows/release.yml runs):

  kib build --output-dir output
  kib conformance output/<name>.qcow2 --junit output/conformance.xml
  COSIGN_PASSWORD=... kib publish --image registry.example/kib/node \\
      --qcow2 output/<name>.qcow2 --manifest output/build-manifest.json \\
      --sign-key cosign.key [--attest-predicate FILE.json --attest-type spdxjson]

With --sign-key the key is loaded (password from COSIGN_PASSWORD, else a prompt) before
anything is pushed; after the push the manifest digest is signed in cosign's format
(sha256-<hex>.sig in the same repository). Consumers check it with
`kib verify --key cosign.pub IMAGE` or
`cosign verify --key cosign.pub --insecure-ignore-tlog=true IMAGE`.
Keyless (OIDC) signing is not implemented.";

/// Push a qcow2 as a KubeVirt containerDisk to an OCI registry, and sign it.
#[derive(Debug, clap::Args)]
#[command(after_help = FLOW)]
pub(crate) struct Args {
    /// The repository to push to, e.g. `registry.example/kib` (no tag: tags come from the
    /// tag scheme).
    #[arg(long, value_name = "REPOSITORY")]
    image: String,
    #[command(flatten)]
    image_args: ImageArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Attempts per registry operation for transient errors (connection, 429, 5xx).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    attempts: u32,
    /// How results are written to stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output_format: OutputFormat,
    /// Sign the pushed digest with this cosign private key (`cosign.key`); its password comes
    /// from `COSIGN_PASSWORD` or a prompt.
    #[arg(long, value_name = "FILE", help_heading = "Signing")]
    sign_key: Option<PathBuf>,
    /// Also attach this JSON file (e.g. an SPDX SBOM) as a signed attestation.
    #[arg(
        long,
        value_name = "FILE",
        requires = "sign_key",
        help_heading = "Signing"
    )]
    attest_predicate: Option<PathBuf>,
    /// The attestation's predicate type: a cosign `--type` name (`spdxjson`, `cyclonedx`,
    /// `custom`, …) or a URI.
    #[arg(
        long,
        default_value = "spdxjson",
        value_name = "TYPE",
        requires = "attest_predicate",
        help_heading = "Signing"
    )]
    attest_type: String,
}

impl Args {
    pub(crate) async fn run(self, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let repository: kib_packager::registry::Reference = self
            .image
            .parse()
            .with_context(|| format!("`{}` is not a valid image repository", self.image))?;
        anyhow::ensure!(
            repository.tag().is_none_or(|t| t == "latest")
                && repository.digest().is_none()
                && !self.image.contains('@'),
            "`--image` takes a repository without tag or digest (tags come from the tag scheme): `{}`",
            self.image
        );
        let resolved = self.image_args.resolve()?;
        let tags = resolved.tags?;
        // Everything signing needs is read before the push, so that a wrong password or a
        // missing predicate fails before minutes of upload.
        let attestation = self
            .attest_predicate
            .as_deref()
            .map(|path| Attestation::read(path, &self.attest_type))
            .transpose()?;
        let key =
            match &self.sign_key {
                Some(path) => Some(load_key(path).await.with_context(|| {
                    format!("Failed to load the signing key `{}`", path.display())
                })?),
                None => None,
            };
        let req = PublishRequest {
            repository,
            layer: resolved.layer,
            metadata: resolved.metadata,
            tags,
            options: self.registry.options()?,
            retry: RetryPolicy {
                attempts: self.attempts,
                ..RetryPolicy::default()
            },
        };
        let _span = tracing::info_span!("push", repository = %self.image).entered();
        let started = std::time::Instant::now();
        let outcome = publish(&req, Arc::new(StderrReporter::new(global))).await?;
        let elapsed = started.elapsed();
        report_speed(global, outcome.bytes_sent, elapsed);
        let repo = format!(
            "{}/{}",
            req.repository.registry(),
            req.repository.repository()
        );
        let (signed, attested) = match &key {
            Some(key) => {
                let _span = tracing::info_span!("sign", image = %outcome.reference).entered();
                let pushed: kib_packager::registry::Reference =
                    outcome.reference.parse().with_context(|| {
                        format!("`{}` is not an image reference", outcome.reference)
                    })?;
                let client = kib_packager::registry::client(&pushed, &req.options);
                let auth = kib_packager::registry::auth(&pushed, &req.options)?;
                let (signed, attested) = sign_and_attest(
                    &client,
                    &auth,
                    &pushed,
                    key,
                    attestation.as_ref(),
                )
                .await
                .with_context(|| {
                    format!(
                        "Pushed `{}` but failed to sign it; retry with `kib sign --key KEY {}`",
                        outcome.reference, outcome.reference
                    )
                })?;
                if !global.quiet {
                    let mut err = std::io::stderr().lock();
                    let _ = writeln!(err, "Signed `{}`: `{}`", signed.digest, signed.signature);
                    if let Some(a) = &attested {
                        let _ = writeln!(err, "Attested `{}`: `{}`", a.digest, a.signature);
                    }
                }
                (Some(signed), attested)
            }
            None => (None, None),
        };
        let mut out = std::io::stdout().lock();
        match self.output_format {
            OutputFormat::Text => {
                writeln!(out, "{}", outcome.digest)?;
                for tag in &outcome.tags {
                    writeln!(out, "{repo}:{tag}")?;
                }
            }
            OutputFormat::Json => {
                let doc = serde_json::json!({
                    "digest": outcome.digest,
                    "reference": outcome.reference,
                    "tags": outcome.tags.iter().map(|t| format!("{repo}:{t}")).collect::<Vec<_>>(),
                    "uploaded": outcome.uploaded,
                    "skipped": outcome.skipped,
                    "bytes_sent": outcome.bytes_sent,
                    "layer": {"digest": outcome.layer.digest, "size": outcome.layer.size, "diff_id": outcome.layer.diff_id},
                    "signature": signed,
                    "attestation": attested,
                });
                writeln!(out, "{doc}")?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn report_speed(global: &GlobalArgs, bytes: u64, elapsed: Duration) {
    if !global.quiet {
        let mib = bytes as f64 / (1024.0 * 1024.0);
        let _ = writeln!(
            std::io::stderr().lock(),
            "Published: {mib:.1} MiB sent in {:.2} s ({:.0} MiB/s end to end)",
            elapsed.as_secs_f64(),
            mib / elapsed.as_secs_f64().max(1e-9)
        );
    }
}
