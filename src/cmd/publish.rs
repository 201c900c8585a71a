//! `kib publish`: push a qcow2 as a KubeVirt containerDisk by digest, with `--sign-key` sign
//! and attest that digest the way `kib sign` does, and only then set the tags: a failure at any
//! step leaves no new tag. `--no-tags` stops after the push (a release tests that digest, then
//! publishes again with `--sign-key`: same qcow2, same digest, nothing uploaded twice).
//!
//! stdout carries only the result: the digest, then one `registry/repo:tag` line per tag
//! (with `--no-tags`: the one line `registry/repo@sha256:…`), or one JSON document with
//! `--output-format json`, which also names the signature and attestation; progress goes to
//! stderr.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kib_packager::layer::LayerCache;
use kib_packager::push::{PublishRequest, RetryPolicy, push, set_tags};

use crate::cli::{GlobalArgs, OutputFormat};
use crate::common::image_args::ImageArgs;
use crate::common::registry_args::RegistryArgs;
use crate::common::signing::{Attestation, attest_each, load_key, sign_and_attest};
use crate::error_render::HintExt as _;
use crate::reporter::PackageReporter;

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
anything is pushed; the image is pushed by digest, the digest is signed in cosign's format
(sha256-<hex>.sig in the same repository) and attested, and only then are the tags set.
To test an image in a cluster before it is signed and tagged:

  kib publish --no-tags --image registry.example/kib/node --qcow2 output/<name>.qcow2
      # prints registry.example/kib/node@sha256:...; test that digest, then:
  kib publish --sign-key cosign.key --image registry.example/kib/node --qcow2 output/<name>.qcow2

The second run uploads nothing: the layer's digest is remembered for the qcow2 (path, inode,
size, times and the build manifest's sha256, under $XDG_CACHE_HOME/kib/layers) and trusted
once the registry confirms it has that blob. Consumers check it with
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
    /// Push by digest only: no tags, no signatures; prints `repository@sha256:…`.
    #[arg(long, conflicts_with = "sign_key")]
    no_tags: bool,
    /// Never use or update the remembered layer digests (the layer is always streamed).
    #[arg(long)]
    no_layer_cache: bool,
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
        let tags = resolved.tags.hinted()?;
        // Everything signing needs is read before the push, so that a wrong password or a
        // missing predicate fails before minutes of upload.
        let attestation = self
            .attest_predicate
            .as_deref()
            .map(|path| Attestation::read(path, &self.attest_type))
            .transpose()?;
        // Without `--attest-predicate`, the SBOM and provenance the build wrote beside its
        // manifest are attached.
        let built = match (
            &attestation,
            &self.sign_key,
            manifest_path(&self.image_args),
        ) {
            (None, Some(_), Some(m)) => Attestation::beside_manifest(&m)?,
            _ => Vec::new(),
        };
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
            cache: if self.no_layer_cache {
                None
            } else {
                LayerCache::default_dir().map(LayerCache::new)
            },
            disk_sha256: disk_sha256(&self.image_args),
        };
        let reporter = Arc::new(PackageReporter::new(global));
        let _span = tracing::info_span!("push", repository = %self.image).entered();
        let started = std::time::Instant::now();
        let pushed = push(&req, reporter.clone()).await.hinted()?;
        report_speed(&reporter, pushed.bytes_sent, started.elapsed());
        let repo = format!(
            "{}/{}",
            req.repository.registry(),
            req.repository.repository()
        );
        let mut out = std::io::stdout().lock();
        if self.no_tags {
            match self.output_format {
                OutputFormat::Text => writeln!(out, "{}", pushed.reference)?,
                OutputFormat::Json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "digest": pushed.digest,
                        "reference": pushed.reference,
                        "tags": [],
                        "uploaded": pushed.uploaded,
                        "skipped": pushed.skipped,
                        "bytes_sent": pushed.bytes_sent,
                        "layer": {"digest": pushed.layer.digest, "size": pushed.layer.size, "diff_id": pushed.layer.diff_id},
                    })
                )?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        let (signed, attested) = match &key {
            Some(key) => {
                let _span = tracing::info_span!("sign", image = %pushed.reference).entered();
                let image: kib_packager::registry::Reference = pushed
                    .reference
                    .parse()
                    .with_context(|| format!("`{}` is not an image reference", pushed.reference))?;
                let auth = kib_packager::registry::auth(&image, &req.options).hinted()?;
                let transport = kib_packager::registry::connect(&image, &req.options, &auth)
                    .await
                    .hinted()?;
                let failed = || {
                    format!(
                        "Pushed `{}` but failed to sign or attest it, so no tag was set; run the same `kib publish` again (nothing is uploaded twice)",
                        pushed.reference
                    )
                };
                let (signed, mut attested) =
                    sign_and_attest(&transport, &auth, &image, key, attestation.as_ref())
                        .await
                        .with_context(failed)?;
                let mut built = attest_each(&transport, &auth, &image, key, &built)
                    .await
                    .with_context(failed)?
                    .into_iter();
                attested = attested.or_else(|| built.next());
                for a in built {
                    reporter.line(&format!("Attested `{}`: `{}`", a.digest, a.signature));
                }
                reporter.line(&format!(
                    "Signed `{}`: `{}`",
                    signed.digest, signed.signature
                ));
                if let Some(a) = &attested {
                    reporter.line(&format!("Attested `{}`: `{}`", a.digest, a.signature));
                }
                (Some(signed), attested)
            }
            None => (None, None),
        };
        let tags = set_tags(&req, &pushed, reporter.clone()).await.hinted()?;
        match self.output_format {
            OutputFormat::Text => {
                writeln!(out, "{}", pushed.digest)?;
                for tag in &tags {
                    writeln!(out, "{repo}:{tag}")?;
                }
            }
            OutputFormat::Json => {
                let doc = serde_json::json!({
                    "digest": pushed.digest,
                    "reference": pushed.reference,
                    "tags": tags.iter().map(|t| format!("{repo}:{t}")).collect::<Vec<_>>(),
                    "uploaded": pushed.uploaded,
                    "skipped": pushed.skipped,
                    "bytes_sent": pushed.bytes_sent,
                    "layer": {"digest": pushed.layer.digest, "size": pushed.layer.size, "diff_id": pushed.layer.diff_id},
                    "signature": signed,
                    "attestation": attested,
                });
                writeln!(out, "{doc}")?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The qcow2's sha256 as the build manifest records it (`--manifest`, else the one beside the
/// qcow2): part of the file's identity in the layer cache. A manifest that cannot be read is
/// no identity here (the image's labels report that error).
fn disk_sha256(args: &ImageArgs) -> Option<String> {
    let path = manifest_path(args)?;
    let m = kib_builder::manifest::read(&path).ok()?;
    Some(format!("sha256:{}", m.output.sha256.hex()))
}

/// `--manifest`, else `build-manifest.json` beside the qcow2 when it exists.
fn manifest_path(args: &ImageArgs) -> Option<std::path::PathBuf> {
    args.manifest.clone().or_else(|| {
        let beside = args
            .qcow2
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(kib_builder::manifest::MANIFEST_FILE);
        beside.is_file().then_some(beside)
    })
}

fn report_speed(reporter: &PackageReporter, bytes: u64, elapsed: Duration) {
    if bytes == 0 {
        reporter.line(&format!(
            "Pushed: nothing sent, the registry had every blob ({:.2} s)",
            elapsed.as_secs_f64()
        ));
        return;
    }
    let mib = bytes as f64 / (1024.0 * 1024.0);
    reporter.line(&format!(
        "Pushed: {} sent in {:.2} s ({:.0} MiB/s end to end)",
        indicatif::HumanBytes(bytes),
        elapsed.as_secs_f64(),
        mib / elapsed.as_secs_f64().max(1e-9)
    ));
}
