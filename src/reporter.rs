//! Progress for people: the library crates' `Reporter`s drawn on stderr.
//!
//! Stage lines are always printed (they are the build's log for people); the transfer bar is
//! drawn only when stderr is a terminal and neither `--no-progress`, `-v` nor `-q` is set, so
//! that bars never interleave with logs. Provisioner output is passed through line by line,
//! prefixed with its source. The packager's progress (`kib package`, `kib publish`) is drawn
//! the same way: one line when a blob starts, a bar with bytes, rate and ETA while it flows
//! (terminal only), one line when it is done.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kib_builder::{Reporter, Stage};
use kib_packager::{BlobKind, BlobOutcome, Phase};

use crate::cli::GlobalArgs;

/// Draws the builder's progress on stderr.
pub(crate) struct TermReporter {
    quiet: bool,
    bars: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl TermReporter {
    pub(crate) fn new(global: &GlobalArgs) -> Self {
        let bars = !global.no_progress
            && !global.quiet
            && global.verbose == 0
            && std::io::stderr().is_terminal();
        Self {
            quiet: global.quiet,
            bars,
            bar: Mutex::new(None),
        }
    }

    /// Starts drawing a transfer bar (if bars are drawn at all), replacing any other.
    fn start_bar(&self, total: Option<u64>) {
        if !self.bars {
            return;
        }
        let bar = transfer_bar(total);
        if let Some(old) = self
            .bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(bar)
        {
            old.finish_and_clear();
        }
    }

    /// Prints one line on stderr, above the progress bar if one is drawn.
    pub(crate) fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        let guard = self
            .bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match guard.as_ref() {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }
}

/// The bar of a transfer: bytes, rate and ETA.
fn transfer_bar(total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "    {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Reporter for TermReporter {
    fn on_stage_start(&self, stage: Stage, detail: &str) {
        self.line(&format!("==> {stage}: {detail}"));
    }

    fn on_stage_done(&self, stage: Stage, elapsed: Duration) {
        self.line(&format!("==> {stage}: done in {}", secs(elapsed)));
    }

    fn on_transfer_start(&self, what: &str, total: Option<u64>) {
        self.line(&format!("    {what}"));
        self.start_bar(total);
    }

    fn on_transfer_progress(&self, n: u64) {
        if let Some(bar) = self
            .bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            bar.inc(n);
        }
    }

    fn on_transfer_done(&self) {
        if let Some(bar) = self
            .bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            bar.finish_and_clear();
        }
    }

    fn on_output_line(&self, source: &str, line: &str) {
        self.line(&format!("    {source}: {line}"));
    }

    fn on_warning(&self, message: &str) {
        self.line(&format!("warning: {message}"));
    }
}

fn mib(n: u64) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

/// Draws the packager's progress on stderr: `kib package` and `kib publish`.
pub(crate) struct PackageReporter {
    term: TermReporter,
    /// When the current blob started and how many bytes it counted.
    blob: Mutex<(std::time::Instant, u64)>,
}

impl PackageReporter {
    pub(crate) fn new(global: &GlobalArgs) -> Self {
        Self {
            term: TermReporter::new(global),
            blob: Mutex::new((std::time::Instant::now(), 0)),
        }
    }

    /// Prints one line on stderr, above the bar if one is drawn.
    pub(crate) fn line(&self, text: &str) {
        self.term.line(text);
    }

    fn blob(&self) -> std::sync::MutexGuard<'_, (std::time::Instant, u64)> {
        self.blob
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl kib_packager::Reporter for PackageReporter {
    fn on_blob_start(&self, kind: BlobKind, phase: Phase, digest: Option<&str>, size: u64) {
        *self.blob() = (std::time::Instant::now(), 0);
        let what = match (kind, phase) {
            (BlobKind::Layer, Phase::Hash) => "Hashing the layer",
            (BlobKind::Layer, Phase::Write) => "Writing the layer",
            (BlobKind::Layer, Phase::Upload) => "Uploading the layer",
            (BlobKind::Config, _) => "Uploading the config",
        };
        let digest = digest.map(|d| format!(" `{d}`")).unwrap_or_default();
        self.line(&format!("{what}{digest} ({})", HumanBytes(size)));
        // The config is a few hundred bytes: a line, no bar.
        if kind == BlobKind::Layer {
            self.term.start_bar(Some(size));
        }
    }

    fn on_bytes(&self, n: u64) {
        self.blob().1 += n;
        Reporter::on_transfer_progress(&self.term, n);
    }

    fn on_blob_done(&self, kind: BlobKind, digest: &str, outcome: BlobOutcome) {
        Reporter::on_transfer_done(&self.term);
        let (start, bytes) = *self.blob();
        *self.blob() = (std::time::Instant::now(), 0);
        let what = match kind {
            BlobKind::Layer => "Layer",
            BlobKind::Config => "Config",
        };
        match outcome {
            BlobOutcome::AlreadyPresent => {
                self.line(&format!("{what} `{digest}` is already in the registry"));
            }
            BlobOutcome::Done if bytes > 0 && kind == BlobKind::Layer => {
                let secs = start.elapsed().as_secs_f64();
                self.line(&format!(
                    "    done: `{digest}`, {} in {secs:.2} s ({:.0} MiB/s)",
                    HumanBytes(bytes),
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
        wait: Duration,
        error: &(dyn std::error::Error + 'static),
    ) {
        Reporter::on_transfer_done(&self.term);
        self.line(&format!(
            "warning: {operation} failed (attempt {attempt}): {error}; retrying in {wait:?}"
        ));
    }

    fn on_manifest(&self, digest: &str) {
        self.line(&format!("Manifest `{digest}`"));
    }

    fn on_tag(&self, tag: &str) {
        self.line(&format!("Tagged `{tag}`"));
    }
}
