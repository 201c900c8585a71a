//! Running the steps: each tool in turn, with stand-ins refused and the outcome reported.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kib_manifest::Hint;

use crate::check::CheckResult;
use crate::direct::Reporter;
use crate::report::{CheckReport, Report};

use super::ClusterSpec;
use super::plan::{Step, plan, teardown};

/// Errors of a cluster run.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A tool could not be started.
    #[error("Failed to start `{program}` ({what})")]
    Spawn {
        /// The step.
        what: String,
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A step failed.
    #[error("Step `{what}` failed ({status}): {stderr}")]
    Step {
        /// The step.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// A tool on PATH is a test stand-in outside its test.
    #[error("`{program}` on PATH is a test stand-in ({path}), not the real tool")]
    StandIn {
        /// The tool.
        program: String,
        /// Where it was found.
        path: PathBuf,
    },
    /// A step did not finish in time.
    #[error("Step `{what}` did not finish within {waited:?}")]
    Timeout {
        /// The step.
        what: String,
        /// The bound.
        waited: Duration,
    },
}

impl Hint for ClusterError {
    /// A suggestion.
    fn hint(&self) -> Option<String> {
        match self {
            Self::Spawn { program, .. } => Some(format!(
                "the cluster profile needs `{program}` on PATH (and docker or podman, internet access): see conformance/README.md"
            )),
            Self::StandIn { path, .. } => Some(format!(
                "remove {} from PATH: recording stand-ins only run inside kib's own tests",
                path.parent().unwrap_or(path).display()
            )),
            _ => None,
        }
    }
}

/// Runs one step, with `kubeconfig` in the environment.
pub async fn run_step(
    step: &Step,
    kubeconfig: Option<&PathBuf>,
    limit: Duration,
) -> Result<String, ClusterError> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(&step.program);
    cmd.args(&step.args)
        .envs(step.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    tracing::info!(step = %step.what, program = %step.program, args = ?step.args, "cluster step");
    let mut child = cmd.spawn().map_err(|source| ClusterError::Spawn {
        what: step.what.clone(),
        program: step.program.clone(),
        source,
    })?;
    let mut stdin = child.stdin.take().expect("piped");
    if let Some(s) = &step.stdin {
        let _ = stdin.write_all(s.as_bytes()).await;
    }
    drop(stdin);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| ClusterError::Timeout {
            what: step.what.clone(),
            waited: limit,
        })?
        .map_err(|source| ClusterError::Spawn {
            what: step.what.clone(),
            program: step.program.clone(),
            source,
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(ClusterError::Step {
            what: step.what.clone(),
            status: out.status.to_string(),
            stderr: tail.join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The tools the profile runs, directly or from its scripts.
pub const TOOLS: [&str; 5] = ["kind", "kubectl", "clusterctl", "virtctl", "curl"];

/// The line every test stand-in of [`TOOLS`] carries (tests/cli/cluster.rs writes them).
pub const STAND_IN_MARKER: &str = "KIB-TEST-STAND-IN";

/// The variable a test sets to the directory of its stand-ins; only there are they run.
pub const STAND_IN_DIR_ENV: &str = "KIB_TEST_STAND_IN_DIR";

/// Refuses to run when a tool of [`TOOLS`] found on `PATH` is a test stand-in (its first 4 KiB
/// hold [`STAND_IN_MARKER`]) outside the directory named by [`STAND_IN_DIR_ENV`]: recording
/// stand-ins answer every `kubectl wait` with success, so a stray one (a test's temp dir left on
/// a PATH) must never make a real cluster check pass.
pub fn refuse_stray_stand_ins() -> Result<(), ClusterError> {
    use std::io::Read;
    let allowed = std::env::var_os(STAND_IN_DIR_ENV).map(PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in TOOLS {
        let Some(found) = std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
        else {
            continue;
        };
        let mut head = Vec::with_capacity(4096);
        if let Ok(f) = std::fs::File::open(&found) {
            let _ = f.take(4096).read_to_end(&mut head);
        }
        let marked = head
            .windows(STAND_IN_MARKER.len())
            .any(|w| w == STAND_IN_MARKER.as_bytes());
        let blessed = allowed
            .as_deref()
            .is_some_and(|d| found.parent() == Some(d));
        if marked && !blessed {
            return Err(ClusterError::StandIn {
                program: tool.to_owned(),
                path: found,
            });
        }
    }
    Ok(())
}

/// Runs the cluster profile: every step of [`plan`] in order, then the [`teardown`] steps
/// whether or not a step failed (the API port-forward is stopped and the kind cluster kib
/// created is deleted; nothing with `keep`). Only the checks ([`Step::check`], the waits) are
/// reported: a failed command FAILs the next check with its error, and after a failure the
/// remaining checks are SKIPped. Refuses stray test stand-ins ([`refuse_stray_stand_ins`]):
/// the first check FAILs and nothing runs. `image` is the reference as the user gave it (the
/// report's title); `timeout` bounds the steps together.
pub async fn run(
    image: &str,
    spec: &ClusterSpec,
    kubeconfig: Option<&PathBuf>,
    keep: bool,
    timeout: Duration,
    reporter: &dyn Reporter,
) -> Report {
    let started = Instant::now();
    let kubeconfig_arg = kubeconfig.map(|p| p.display().to_string());
    let steps = plan(spec, kubeconfig_arg.as_deref());
    let mut results = Vec::new();
    let mut failure: Option<String> = refuse_stray_stand_ins()
        .err()
        .map(|e| format!("{e} (hint: {})", e.hint().unwrap_or_default()));
    let refused = failure.is_some();
    let mut reported_failure = false;
    let mut since_check = Instant::now();
    for step in &steps {
        if let Some(why) = &failure {
            if step.check {
                let r = if reported_failure {
                    CheckResult::Skip("an earlier step failed".into())
                } else {
                    reported_failure = true;
                    CheckResult::fail(why.clone())
                };
                let rep = CheckReport::new(&step.what, &step.what, &r, since_check.elapsed());
                reporter.on_check(&rep);
                results.push(rep);
                since_check = Instant::now();
            }
            continue;
        }
        reporter.on_phase(&step.what);
        let left = timeout.saturating_sub(started.elapsed());
        if let Err(e) = run_step(step, kubeconfig, left).await {
            let hint = e
                .hint()
                .map(|h| format!(" (hint: {h})"))
                .unwrap_or_default();
            let why = format!("{}{hint}", kib_manifest::error_chain(&e));
            if step.check {
                reported_failure = true;
                let r = CheckResult::fail(why.clone());
                let rep = CheckReport::new(&step.what, &step.what, &r, since_check.elapsed());
                reporter.on_check(&rep);
                results.push(rep);
                since_check = Instant::now();
            }
            failure = Some(why);
            continue;
        }
        if step.check {
            let rep = CheckReport::new(
                &step.what,
                &step.what,
                &CheckResult::Pass,
                since_check.elapsed(),
            );
            reporter.on_check(&rep);
            results.push(rep);
            since_check = Instant::now();
        }
    }
    if !refused {
        for step in teardown(spec, kubeconfig_arg.as_deref(), keep) {
            reporter.on_phase(&step.what);
            let _ = run_step(&step, kubeconfig, Duration::from_secs(300)).await;
        }
    }
    Report::new(
        image,
        "cluster",
        spec.firmware.as_str(),
        if spec.use_emulation { "tcg" } else { "kvm" },
        results,
        started.elapsed(),
    )
}
