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
    for cause in err.chain() {
        if let Some(h) = hint_of(cause)
            && !out.contains(&h)
        {
            out.push(h);
        }
    }
    out
}

/// Asks every library error type that knows a fix for its hint.
fn hint_of(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    macro_rules! ask {
        ($($ty:ty),+ $(,)?) => {
            $(if let Some(e) = cause.downcast_ref::<$ty>() {
                return e.hint();
            })+
        };
    }
    ask!(
        kib_builder::BuildError,
        kib_builder::cache::CacheError,
        kib_builder::checksum::ChecksumError,
        kib_builder::config::ConfigError,
        kib_builder::config::ValueError,
        kib_builder::export::ExportError,
        kib_manifest::ManifestError,
        kib_manifest::ManifestReadError,
        kib_builder::provision::ProvisionError,
        kib_builder::provision::StepError,
        kib_vm::qmp::QmpError,
        kib_vm::ssh::SshError,
        kib_vm::AccelError,
        kib_vm::VmError,
        kib_vm::image::DiskImageError,
        kib_packager::push::PublishError,
        kib_packager::inputs::InputsError,
        kib_packager::registry::AuthError,
        kib_packager::registry::TransportError,
        kib_packager::tags::TagError,
        kib_signer::KeyError,
        kib_conformance::direct::DirectError,
        kib_conformance::image::ImageError,
        kib_conformance::cluster::ClusterError,
    );
    // An untrusted registry certificate, wherever a registry client met it.
    kib_packager::registry::certificate_hint(cause)
}

pub(crate) fn render(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::BrokenPipe
        {
            return ExitCode::SUCCESS;
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
