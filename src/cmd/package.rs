//! `kib package`: the containerDisk as an OCI image layout directory, no registry needed.
//! Also home of a plain stderr progress reporter (`publish` shares it).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context as _;
use kib_packager::{BlobKind, BlobOutcome, Phase, Reporter};

use crate::cli::GlobalArgs;
use crate::common::image_args::ImageArgs;

/// Progress as plain lines on stderr (the indicatif reporter replaces it later).
pub(crate) struct StderrReporter {
    quiet: bool,
    state: Mutex<(Instant, u64)>,
}

impl StderrReporter {
    pub(crate) fn new(global: &GlobalArgs) -> Self {
        Self {
            quiet: global.quiet,
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    fn line(&self, text: std::fmt::Arguments<'_>) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
    }
}

fn mib(n: u64) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

impl Reporter for StderrReporter {
    fn on_blob_start(&self, kind: BlobKind, phase: Phase, digest: Option<&str>, size: u64) {
        if let Ok(mut s) = self.state.lock() {
            *s = (Instant::now(), 0);
        }
        let what = match (kind, phase) {
            (BlobKind::Layer, Phase::Hash) => "Hashing the layer",
            (BlobKind::Layer, Phase::Write) => "Writing the layer",
            (BlobKind::Layer, Phase::Upload) => "Uploading the layer",
            (BlobKind::Config, _) => "Uploading the config",
        };
        let digest = digest.map(|d| format!(" `{d}`")).unwrap_or_default();
        self.line(format_args!("{what}{digest} ({:.1} MiB)", mib(size)));
    }
    fn on_bytes(&self, n: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.1 += n;
        }
    }
    fn on_blob_done(&self, kind: BlobKind, digest: &str, outcome: BlobOutcome) {
        let (start, bytes) = self.state.lock().map(|s| *s).unwrap_or((Instant::now(), 0));
        match outcome {
            BlobOutcome::AlreadyPresent => self.line(format_args!(
                "{kind:?} `{digest}` is already in the registry"
            )),
            BlobOutcome::Done if bytes > 0 => {
                let secs = start.elapsed().as_secs_f64();
                self.line(format_args!(
                    "  done: {:.1} MiB in {secs:.2} s ({:.0} MiB/s)",
                    mib(bytes),
                    mib(bytes) / secs.max(1e-9)
                ));
            }
            BlobOutcome::Done => {}
        }
    }
    fn on_retry(
        &self,
        operation: &str,
        attempt: u32,
        wait: std::time::Duration,
        error: &(dyn std::error::Error + 'static),
    ) {
        self.line(format_args!(
            "warning: {operation} failed (attempt {attempt}): {error}; retrying in {wait:?}"
        ));
    }
    fn on_manifest(&self, digest: &str) {
        self.line(format_args!("Manifest `{digest}`"));
    }
    fn on_tag(&self, tag: &str) {
        self.line(format_args!("Tagged `{tag}`"));
    }
}

/// Write the containerDisk OCI image layout for a qcow2 (`skopeo copy oci:DIR …` reads it).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    image: ImageArgs,
    /// The OCI layout directory to write.
    #[arg(long, short, value_name = "DIR")]
    output: PathBuf,
}

impl Args {
    pub(crate) async fn run(self, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let resolved = self.image.resolve()?;
        let tags = match resolved.tags {
            Ok(t) => t.all(),
            Err(e) => {
                tracing::warn!("no tag in index.json: {e:#}");
                Vec::new()
            }
        };
        let reporter = StderrReporter::new(global);
        let output = self.output.clone();
        let image = tokio::task::spawn_blocking(move || {
            kib_packager::layout::write_layout(
                &output,
                &resolved.layer,
                &resolved.metadata,
                &tags,
                &reporter,
            )
        })
        .await
        .context("The packaging task failed")??;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", image.manifest_digest)?;
        Ok(ExitCode::SUCCESS)
    }
}
