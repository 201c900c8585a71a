//! Progress events. The packager never draws anything: the CLI implements [`Reporter`].

use std::time::Duration;

/// Which blob an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// The layer holding the disk.
    Layer,
    /// The image config.
    Config,
}

/// What is being done to a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the disk to compute the layer's digests (nothing is sent).
    Hash,
    /// Writing the blob into an OCI layout directory.
    Write,
    /// Sending the blob to the registry.
    Upload,
}

/// How a blob ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    /// Hashed, written or sent in full.
    Done,
    /// The registry already had it (HEAD answered 200): nothing was sent.
    AlreadyPresent,
}

/// Receives progress from the packager. Every method has an empty default.
pub trait Reporter: Send + Sync {
    /// A blob starts. `digest` is `None` during [`Phase::Hash`] (it is what is being
    /// computed); `size` is the number of bytes [`Reporter::on_bytes`] will count.
    fn on_blob_start(&self, _kind: BlobKind, _phase: Phase, _digest: Option<&str>, _size: u64) {}
    /// `n` more bytes of the current blob were processed.
    fn on_bytes(&self, _n: u64) {}
    /// The current blob is finished.
    fn on_blob_done(&self, _kind: BlobKind, _digest: &str, _outcome: BlobOutcome) {}
    /// A transient registry error; the operation is tried again after `wait`.
    fn on_retry(
        &self,
        _operation: &str,
        _attempt: u32,
        _wait: Duration,
        _error: &(dyn std::error::Error + 'static),
    ) {
    }
    /// The manifest was stored under its digest.
    fn on_manifest(&self, _digest: &str) {}
    /// A tag now points at the manifest.
    fn on_tag(&self, _tag: &str) {}
}

/// A [`Reporter`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullReporter;

impl Reporter for NullReporter {}
