//! How the builder reports progress. The `kib` binary implements [`Reporter`] with progress
//! bars; tests use [`NullReporter`] or a recording one.

use std::fmt;

/// A stage of a build, in pipeline order. Each gets one tracing span and one duration in the
/// build manifest.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Download (or find in the cache) and verify the base image.
    Fetch,
    /// Create the overlay disk and the cloud-init seed.
    Prepare,
    /// Start the VM and wait until SSH answers.
    Boot,
    /// Run the provisioners.
    Provision,
    /// Trim, power the VM off and wait for QEMU to exit.
    Shutdown,
    /// Convert the disk into the standalone output image.
    Export,
}

impl Stage {
    /// The stage's name as shown to people and written in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Prepare => "prepare",
            Stage::Boot => "boot",
            Stage::Provision => "provision",
            Stage::Shutdown => "shutdown",
            Stage::Export => "export",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
