//! Progress for people: the library crates' `Reporter`s drawn on stderr.
//!
//! Stage lines are always printed (they are the build's log for people); the transfer bar is
//! drawn only when stderr is a terminal and neither `--no-progress`, `-v` nor `-q` is set, so
//! that bars never interleave with logs. Provisioner output is passed through line by line,
//! prefixed with its source.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kib_builder::{Reporter, Stage};

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
        if !self.bars {
            return;
        }
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
        *self
            .bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bar);
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
