//! The one error renderer: `error: …`, one `  Caused by: …` per source, then `hint: …` lines.
//!
//! Exit codes: 0 success; 1 a user-visible failure (a check or verification failed, see
//! [`Failure`]); 2 bad usage or an unexpected error. A broken pipe on stdout counts as success.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

/// An outcome the user asked about came out negative (verification failed, a conformance
/// check failed). Exits 1 instead of 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Failure(pub(crate) String);

/// Hints for well-known causes, found anywhere in the chain.
fn hints(err: &anyhow::Error) -> Vec<String> {
    let mut out = Vec::new();
    for _cause in err.chain() {
        // Each library's errors are asked for their hint here (filled in as crates land).
    }
    out.dedup();
    out
}

pub(crate) fn render(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
        }
    }
    let mut text = String::new();
    let mut chain = err.chain();
    if let Some(top) = chain.next() {
        let _ = writeln!(text, "error: {top}");
    }
    for cause in chain {
        let _ = writeln!(text, "  Caused by: {cause}");
    }
    let hints = hints(err);
    if !hints.is_empty() {
        text.push('\n');
        for h in hints {
            let _ = writeln!(text, "hint: {h}");
        }
    }
    tracing::debug!("error details: {err:?}");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
    if err.downcast_ref::<Failure>().is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::from(2)
    }
}
