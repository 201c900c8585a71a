//! How the builder reports progress. The `kib` binary implements [`Reporter`] with progress
//! bars; tests use [`NullReporter`] or a recording one.

pub use kib_manifest::Stage;

/// Receives progress from a build. Every method has an empty default.
pub trait Reporter: Send + Sync {
    /// A stage started; `detail` says what it is doing in a few words.
    fn on_stage_start(&self, _stage: Stage, _detail: &str) {}
    /// A stage finished.
    fn on_stage_done(&self, _stage: Stage, _elapsed: std::time::Duration) {}
    /// A transfer of `total` bytes (if known) started, e.g. the base image download.
    fn on_transfer_start(&self, _what: &str, _total: Option<u64>) {}
    /// `n` more bytes of the current transfer are done.
    fn on_transfer_progress(&self, _n: u64) {}
    /// The current transfer finished.
    fn on_transfer_done(&self) {}
    /// A line of output from a provisioner (ansible, a shell command), as it arrives.
    fn on_output_line(&self, _source: &str, _line: &str) {}
    /// Something the user should know that is not an error (e.g. falling back to TCG).
    fn on_warning(&self, _message: &str) {}
}

/// A reporter that drops everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullReporter;

impl Reporter for NullReporter {}
