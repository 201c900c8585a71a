//! The host's tools, run from tests: a command that must succeed, coreutils' `sha256sum` as
//! a check of kib's hashing that does not go through kib, and the file names in a folder.
//! These are assertions: they panic, with the tool's stderr and the install hint, when a tool
//! is missing or fails.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

/// Runs `program` with `args`, asserts that it succeeds and returns its stdout.
///
/// # Panics
/// When the program cannot be started (with the hint to run `scripts/setup-host.sh`) or
/// exits with a failure (with its stderr).
pub fn run_tool<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is needed for this test (scripts/setup-host.sh installs it): {e}")
        });
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert!(
        out.status.success(),
        "{program} {shown:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The file's SHA-256 (64 lower-case hex digits) as coreutils' `sha256sum` computes it.
///
/// # Panics
/// As [`run_tool`], or when the output has no digest.
pub fn sha256sum(path: &Path) -> String {
    run_tool("sha256sum", &[path])
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sha256sum printed nothing for `{}`", path.display()))
        .to_owned()
}

/// The names of the entries of `dir`, sorted; empty when `dir` does not exist.
///
/// # Panics
/// When an entry of the folder cannot be read.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| {
                e.unwrap_or_else(|e| panic!("listing `{}`: {e}", dir.display()))
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256sum_and_files_in() {
        let dir = tempfile::tempdir().unwrap();
        assert!(files_in(&dir.path().join("missing")).is_empty());
        std::fs::write(dir.path().join("b"), "abc").unwrap();
        std::fs::write(dir.path().join("a"), "").unwrap();
        assert_eq!(files_in(dir.path()), ["a", "b"]);
        assert_eq!(
            sha256sum(&dir.path().join("b")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(run_tool("printf", &["%s", "x y"]), "x y");
    }

    #[test]
    #[should_panic(expected = "false [\"--nope\"]")]
    fn a_failing_tool_panics_with_its_command() {
        run_tool("false", &["--nope"]);
    }
}
