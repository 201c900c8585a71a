//! The checks of the `direct` profile, in the order they run (one VM, one boot).

mod agent;
mod boot;
mod kube;
mod script;
#[cfg(test)]
mod scripted_tests;
mod security;

pub use agent::{GuestAgent, KUBEVIRT_REQUIRED_RPCS, Watchdog, WatchdogFires};
pub use boot::{CloudInit, DiskResize, Generalized};
pub use kube::{API_SERVER_PORT, Bootstrap, Images, NodeReady, Versions};
pub use script::{ScriptCheck, ScriptReadError};
pub use security::{Audit, Firewall};

use crate::check::{Check, CheckResult};
use crate::context::{Context, ExecOutput, ShellError};
use crate::manifest::Expect;

/// Every check of the `direct` profile, in order. [`WatchdogFires`] comes last: it reboots the
/// guest.
pub fn direct_checks() -> Vec<Box<dyn Check>> {
    direct_checks_with(Vec::new())
}

/// [`direct_checks`] with the user's scripts run after the built-in checks and before
/// [`WatchdogFires`] (which reboots the guest).
pub fn direct_checks_with(scripts: Vec<ScriptCheck>) -> Vec<Box<dyn Check>> {
    let mut checks: Vec<Box<dyn Check>> = vec![
        Box::new(CloudInit),
        Box::new(DiskResize),
        Box::new(GuestAgent),
        Box::new(Watchdog),
        Box::new(Firewall),
        Box::new(Audit),
        Box::new(Generalized),
        Box::new(Versions),
        Box::new(Images),
        Box::new(Bootstrap),
        Box::new(NodeReady),
    ];
    checks.extend(scripts.into_iter().map(|s| Box::new(s) as Box<dyn Check>));
    checks.push(Box::new(WatchdogFires));
    checks
}

/// The skip reason of the Kubernetes checks on an image that claims to be generic.
pub const NOT_KUBERNETES: &str =
    "not a Kubernetes image (`--expect generic`, or its build manifest requests no Kubernetes)";

/// The skip reason of an opt-in check nobody asked for starts with this.
pub const OPT_IN: &str = "opt-in, not asked for";

/// The Kubernetes checks run when the image claims to be a Kubernetes node (never probed:
/// an image that lost kubeadm must FAIL, not skip).
fn need_kubernetes(ctx: &Context) -> Result<(), String> {
    match ctx.expect {
        Expect::Kubernetes => Ok(()),
        Expect::Generic => Err(NOT_KUBERNETES.to_owned()),
    }
}

/// Whether the Kubernetes checks are required.
fn kubernetes_required(ctx: &Context) -> bool {
    ctx.expect == Expect::Kubernetes
}

/// Runs `cmd` (as root when `root`) and turns a transport error into a failure.
async fn run(ctx: &Context, cmd: &str, root: bool) -> Result<ExecOutput, CheckResult> {
    let r: Result<ExecOutput, ShellError> = if root {
        ctx.sudo(cmd).await
    } else {
        ctx.sh(cmd).await
    };
    r.map_err(|e| CheckResult::fail(format!("could not run `{cmd}` over SSH: {}", chain(&e))))
}

/// Runs `cmd` and requires exit 0.
async fn run_ok(ctx: &Context, cmd: &str, root: bool) -> Result<ExecOutput, CheckResult> {
    let out = run(ctx, cmd, root).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(CheckResult::fail(format!(
            "`{cmd}` failed ({})",
            out.describe()
        )))
    }
}

/// An error and its sources on one line.
pub(crate) use kib_manifest::error_chain as chain;

/// Turns a `Result<(), CheckResult>` body into a result.
macro_rules! check_body {
    ($body:expr) => {
        Box::pin(async move {
            let r: Result<CheckResult, CheckResult> = $body.await;
            match r {
                Ok(v) | Err(v) => v,
            }
        })
    };
}
pub(crate) use check_body;
