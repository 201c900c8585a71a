//! The check framework (youki's `contest` shape): a [`Check`] says whether it can run against a
//! [`Context`] and, if so, runs and returns a [`CheckResult`].

use futures::future::BoxFuture;

use crate::context::Context;

/// The outcome of one check. A [`CheckResult::Skip`] is never counted as a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// The image does what the check asks.
    Pass,
    /// It does not; the reason says what was seen.
    Fail(String),
    /// The check did not run; the reason says why (e.g. "no kubeadm in this image").
    Skip(String),
}

impl CheckResult {
    /// A failure with `reason`.
    pub fn fail(reason: impl Into<String>) -> Self {
        Self::Fail(reason.into())
    }

    /// The status word: `PASS`, `FAIL` or `SKIP`.
    pub fn status(&self) -> Status {
        match self {
            Self::Pass => Status::Pass,
            Self::Fail(_) => Status::Fail,
            Self::Skip(_) => Status::Skip,
        }
    }

    /// The reason of a failure or a skip.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Pass => None,
            Self::Fail(r) | Self::Skip(r) => Some(r),
        }
    }
}

/// The status of a check, without the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Passed.
    Pass,
    /// Failed.
    Fail,
    /// Skipped (not a pass).
    Skip,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        })
    }
}

/// One conformance check.
pub trait Check: Send + Sync {
    /// A short stable id, e.g. `guest-agent` (used in JSON and JUnit).
    fn name(&self) -> &str;
    /// What the check proves, in a few words (shown in the table).
    fn title(&self) -> &str;
    /// `Err(reason)` when the check cannot run against this image or VM; it is then reported
    /// as [`CheckResult::Skip`] with that reason.
    fn can_run(&self, _ctx: &Context) -> Result<(), String> {
        Ok(())
    }
    /// Whether the image must pass this check. A required check that cannot run is a FAIL,
    /// never a SKIP; only checks that do not apply to this image (a generic image's
    /// Kubernetes checks) or that are opt-in and were not asked for SKIP.
    fn required(&self, _ctx: &Context) -> bool {
        true
    }
    /// Runs the check.
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult>;
}
