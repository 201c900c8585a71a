//! The user's own checks: a script run as root in the booted image, passing when it exits 0
//! (`kib conformance --check-script FILE`). Site-specific requirements (an agent that must run,
//! a file that must exist) join the report without a rebuild of kib.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use futures::future::BoxFuture;

use super::{check_body, run};
use crate::check::{Check, CheckResult};
use crate::context::Context;

/// How many lines of a failing script's output go into the reason.
const REASON_LINES: usize = 20;

/// Reading a check script failed.
#[derive(Debug, thiserror::Error)]
#[error("Failed to read the check script `{path}`")]
pub struct ScriptReadError {
    /// The script.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// A script run with `sudo -n bash -s` in the guest (its text on stdin, so it needs no copy
/// on the guest's disk). Its name in the report is `script:<file stem>`.
#[derive(Debug, Clone)]
pub struct ScriptCheck {
    name: String,
    title: String,
    body: Vec<u8>,
}

impl ScriptCheck {
    /// Reads `path` now, so that a missing script is an error before any VM boots.
    pub fn read(path: &Path) -> Result<Self, ScriptReadError> {
        let body = fs_err::read(path).map_err(|source| ScriptReadError {
            path: path.to_owned(),
            source,
        })?;
        let stem = path
            .file_stem()
            .map_or_else(|| "script".into(), |s| s.to_string_lossy());
        Ok(Self {
            name: format!("script:{stem}"),
            title: format!("`{}` exits 0 as root", path.display()),
            body,
        })
    }

    /// The command that feeds the script to bash as root. The text travels base64-encoded
    /// inside the command, so no quoting of the script can go wrong.
    fn command(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.body);
        format!("echo {b64} | base64 -d | sudo -n bash -s")
    }
}

impl Check for ScriptCheck {
    fn name(&self) -> &str {
        &self.name
    }
    fn title(&self) -> &str {
        &self.title
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            let out = run(ctx, &self.command(), false).await?;
            if out.success() {
                return Ok(CheckResult::Pass);
            }
            let text = format!("{}\n{}", out.stdout.trim(), out.stderr.trim());
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = &lines[lines.len().saturating_sub(REASON_LINES)..];
            let status = out
                .status
                .map_or("no exit status".to_owned(), |s| format!("exit {s}"));
            Err(CheckResult::fail(format!("{status}: {}", tail.join(" | "))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_title_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site-check.sh");
        fs_err::write(&path, "#!/bin/bash\ntest -e '/etc/it'\n").unwrap();
        let c = ScriptCheck::read(&path).unwrap();
        assert_eq!(c.name(), "script:site-check");
        assert!(c.title().contains("site-check.sh"), "{}", c.title());
    }

    #[test]
    fn the_command_decodes_to_the_script_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sh");
        let body = "echo \"it's $HOME\" `id` 'x'\n";
        fs_err::write(&path, body).unwrap();
        let cmd = ScriptCheck::read(&path).unwrap().command();
        // Only base64's alphabet between `echo ` and the pipe: nothing for a shell to expand.
        let b64 = cmd
            .strip_prefix("echo ")
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        assert!(
            b64.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        );
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(decoded, body.as_bytes());
        assert!(cmd.ends_with("| base64 -d | sudo -n bash -s"));
    }

    #[test]
    fn a_missing_script_names_its_path() {
        let err = ScriptCheck::read(Path::new("/nonexistent/x.sh")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Failed to read the check script `/nonexistent/x.sh`"
        );
    }
}
