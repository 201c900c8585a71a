//! The one error renderer: `error: …`, one `  Caused by: …` per source, then `hint: …` lines.
//!
//! Exit codes: 0 success; 1 a user-visible failure (a check or verification failed, see
//! [`Failure`]); 2 bad usage or an unexpected error. A broken pipe on stdout counts as success.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use kib_manifest::Hint;

/// An outcome the user asked about came out negative (verification failed, a conformance
/// check failed). Exits 1 instead of 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Failure(pub(crate) String);

/// A library error on its way into the `anyhow` chain, with the hint its type gave
/// ([`kib_manifest::Hint`]). Display and `source()` are the error's own, so the chain prints
/// exactly as without it; the renderer finds the hint here instead of knowing every error type.
#[derive(Debug)]
struct Hinted {
    hint: String,
    error: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Hinted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// A library error as an `anyhow::Error` that keeps its hint. The one way a kib library error
/// enters the binary's chain: `.map_err(hinted)` or [`HintExt::hinted`] at the call.
pub(crate) fn hinted<E>(error: E) -> anyhow::Error
where
    E: Hint + Send + Sync + 'static,
{
    match error.hint() {
        Some(hint) => anyhow::Error::new(Hinted {
            hint,
            error: Box::new(error),
        }),
        None => anyhow::Error::new(error),
    }
}

/// `.hinted()?` on a library result: [`hinted`] for its error.
pub(crate) trait HintExt<T> {
    /// The result with its error converted by [`hinted`].
    fn hinted(self) -> anyhow::Result<T>;
}

impl<T, E> HintExt<T> for Result<T, E>
where
    E: Hint + Send + Sync + 'static,
{
    fn hinted(self) -> anyhow::Result<T> {
        self.map_err(hinted)
    }
}

/// The hints in the chain, each once: those of [`Hinted`] library errors, and the one for an
/// untrusted registry certificate wherever a registry client met it (it arrives inside
/// oci-client's and reqwest's errors, which kib does not own).
fn hints(err: &anyhow::Error) -> Vec<String> {
    fn add(out: &mut Vec<String>, hint: &str) {
        for line in hint.lines() {
            if !out.iter().any(|l| l == line) {
                out.push(line.to_owned());
            }
        }
    }
    let mut out = Vec::new();
    for cause in err.chain() {
        if let Some(h) = cause.downcast_ref::<Hinted>() {
            add(&mut out, &h.hint);
        }
    }
    if out.is_empty()
        && let Some(h) = err
            .chain()
            .find_map(kib_packager::registry::certificate_hint)
    {
        add(&mut out, &h);
    }
    out
}

/// The text `render` prints: the error, its causes, then the hints.
pub(crate) fn text(err: &anyhow::Error) -> String {
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
    text
}

pub(crate) fn render(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::BrokenPipe
        {
            return ExitCode::SUCCESS;
        }
    }
    let text = text(err);
    tracing::debug!("error details: {err:?}");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
    if err.downcast_ref::<Failure>().is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::from(2)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::Context as _;

    use super::*;

    /// How often `line` appears in `text` as a whole line.
    fn count(text: &str, line: &str) -> usize {
        text.lines().filter(|l| *l == line).count()
    }

    #[test]
    fn a_nested_config_error_prints_its_hint_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kib.toml");
        fs_err::write(&path, "[vm]\nssh_user = \"root\"\n").unwrap();
        // `ConfigError::Invalid` wraps the `ValueError` that knows the fix.
        let err = kib_builder::config::Config::load(&path)
            .hinted()
            .context("Failed to load the configuration")
            .unwrap_err();
        let text = text(&err);
        assert_eq!(
            count(
                &text,
                "hint: the build user is deleted at the end of the build; pick a dedicated name such as `kib-build`"
            ),
            1,
            "{text}"
        );
        assert_eq!(text.matches("hint:").count(), 1, "{text}");
    }

    #[test]
    fn the_chain_prints_the_same_with_or_without_the_hint() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("build-manifest.json");
        let plain = anyhow::Error::new(kib_manifest::read(&missing).unwrap_err())
            .context("Failed to read the expectations");
        let hinted = kib_manifest::read(&missing)
            .hinted()
            .context("Failed to read the expectations")
            .unwrap_err();
        let chain = |e: &anyhow::Error| e.chain().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(chain(&plain), chain(&hinted));
        let text = text(&hinted);
        assert!(text.starts_with("error: Failed to read the expectations\n  Caused by: "));
        assert_eq!(
            count(
                &text,
                "hint: `kib build` writes `build-manifest.json` beside the image; pass its path with `--manifest`"
            ),
            1,
            "{text}"
        );
        // Without `hinted`, the renderer knows no hint: the one way in is the trait.
        assert!(!super::text(&plain).contains("hint:"));
    }

    #[test]
    fn a_wrapper_with_its_own_hint_adds_the_inner_one_as_a_second_line() {
        let ssh = kib_vm::ssh::SshError::Timeout {
            addr: "127.0.0.1:2222".parse().unwrap(),
            user: "kib".into(),
            waited: Duration::from_secs(300),
            last_error: Some("connection refused".into()),
        };
        let err = hinted(kib_builder::BuildError::SshTimeout {
            serial_tail: vec!["login:".into()],
            silent_console: false,
            source: ssh,
        });
        let text = text(&err);
        let hints: Vec<&str> = text.lines().filter(|l| l.starts_with("hint:")).collect();
        assert_eq!(
            hints,
            [
                "hint: raise `--boot-timeout`, or use `--on-error=abort` to keep the VM running and look at it",
                "hint: the last attempt failed with: connection refused; check the serial console output: did the guest boot and start sshd, and did cloud-init install the SSH key?",
            ],
            "{text}"
        );
    }
}
