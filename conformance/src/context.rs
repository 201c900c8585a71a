//! What every check sees: the running VM, a shell in the guest as the `capk` user, and what is
//! known about the image.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use kib_vm::qmp::QgaClient;
use kib_vm::{Firmware, QemuVm, Vm, VmError};

use crate::manifest::{Expect, ImageExpectations};

/// The output of a command run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    /// The exit status (`None` when the command was killed by a signal or the channel closed).
    pub status: Option<u32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl ExecOutput {
    /// Whether the command exited with 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// stdout, trimmed.
    pub fn out(&self) -> &str {
        self.stdout.trim()
    }

    /// A one-line description for failure reasons: the status and the end of stderr/stdout.
    pub fn describe(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            self.stdout.trim()
        } else {
            self.stderr.trim()
        };
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let status = self
            .status
            .map_or("no exit status".to_owned(), |s| format!("exit {s}"));
        if tail.is_empty() {
            status
        } else {
            format!("{status}: {}", tail.join(" | "))
        }
    }
}

/// Errors of the guest shell.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The SSH command could not be run.
    #[error("Failed to run `{command}` in the guest over SSH")]
    Exec {
        /// The command.
        command: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A host-side resource of the context is missing or failed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The context has no VM (a scripted guest).
    #[error("No VM behind this context (a scripted guest)")]
    NoVm,
    /// The VM refused.
    #[error("The VM could not provide it")]
    Vm(#[source] VmError),
}

/// A shell in the guest.
pub trait Shell: Send + Sync {
    /// Runs `command` with `sh -c` semantics (as the login user) and collects its output.
    fn exec<'a>(&'a self, command: &'a str) -> BoxFuture<'a, Result<ExecOutput, ShellError>>;
}

/// Everything the checks need.
pub struct Context {
    /// The running VM (`None` only for a scripted guest in unit tests: the checks that need
    /// QMP or the guest agent then fail).
    pub vm: Option<QemuVm>,
    /// The host address forwarded to the guest's SSH port.
    pub ssh_addr: SocketAddr,
    /// Guest ports forwarded to the host: `(guest port, host address)`.
    pub forwards: Vec<(u16, SocketAddr)>,
    /// A shell in the guest as `capk`.
    pub shell: Box<dyn Shell>,
    /// The firmware the VM booted with.
    pub firmware: Firmware,
    /// The image's virtual size before it was grown, in bytes.
    pub image_size: u64,
    /// The virtual size of the disk the VM booted, in bytes.
    pub disk_size: u64,
    /// The hostname in the ConfigDrive meta data.
    pub hostname: String,
    /// The instance uuid in the ConfigDrive meta data (cloud-init's instance id).
    pub instance_id: String,
    /// Every public key the test authorised (the test's own and `--authorized-key`s).
    pub authorized_keys: Vec<String>,
    /// The build manifest, if there is one.
    pub expected: Option<ImageExpectations>,
    /// What the image claims to be (from `--expect` or its build manifest, never probed):
    /// the Kubernetes checks are required of a [`Expect::Kubernetes`] image.
    pub expect: Expect,
    /// The guest port the firewall check listens on (forwarded to the host).
    pub probe_port: u16,
    /// A CNI manifest to apply before waiting for the node to turn Ready.
    pub cni_manifest: Option<PathBuf>,
    /// Whether to stop the watchdog daemon and wait for QEMU's watchdog event (reboots the VM).
    pub watchdog_fire: bool,
    /// How long a single check may take.
    pub check_timeout: Duration,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("vm", &self.vm.as_ref().map(|v| v.name().to_owned()))
            .field("firmware", &self.firmware)
            .field("image_size", &self.image_size)
            .field("disk_size", &self.disk_size)
            .field("hostname", &self.hostname)
            .field("expect", &self.expect)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Runs `command` in the guest.
    pub async fn sh(&self, command: &str) -> Result<ExecOutput, ShellError> {
        tracing::debug!(%command, "guest exec");
        let out = self.shell.exec(command).await;
        if let Ok(o) = &out {
            tracing::trace!(status = ?o.status, stdout = %o.stdout, stderr = %o.stderr, "guest exec done");
        }
        out
    }

    /// Runs `command` as root (`sudo -n sh -c`), quoting it for the shell.
    pub async fn sudo(&self, command: &str) -> Result<ExecOutput, ShellError> {
        self.sh(&format!("sudo -n sh -c {}", shell_quote(command)))
            .await
    }

    /// A guest agent connection.
    pub async fn qga(&self) -> Result<QgaClient, ContextError> {
        let vm = self.vm.as_ref().ok_or(ContextError::NoVm)?;
        vm.guest_agent(Duration::from_secs(30))
            .await
            .map_err(ContextError::Vm)
    }

    /// The host address forwarded to the guest's SSH port.
    pub fn vm_ssh_addr(&self) -> SocketAddr {
        self.ssh_addr
    }

    /// The host address forwarded to `guest_port`.
    pub fn forwarded(&self, guest_port: u16) -> Option<SocketAddr> {
        self.forwards
            .iter()
            .find(|(g, _)| *g == guest_port)
            .map(|(_, a)| *a)
    }
}

/// Quotes `s` as one POSIX shell word (the SSH client's quoting).
pub use kib_vm::ssh::shell_quote;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_sh() {
        let tricky = r#"echo 'a' "$HOME" `x` ; b\c"#;
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(tricky)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), tricky);
    }

    /// A stand-in shell (labelled as such: no guest behind it) that answers from a script; it
    /// proves [`Shell`] is object-safe, so checks can be tested against scripted guests.
    struct ScriptedShell(Vec<(&'static str, ExecOutput)>);

    impl Shell for ScriptedShell {
        fn exec<'a>(&'a self, command: &'a str) -> BoxFuture<'a, Result<ExecOutput, ShellError>> {
            Box::pin(async move {
                self.0
                    .iter()
                    .find(|(c, _)| *c == command)
                    .map(|(_, o)| o.clone())
                    .ok_or_else(|| ShellError::Exec {
                        command: command.to_owned(),
                        source: "not in the script".into(),
                    })
            })
        }
    }

    #[tokio::test]
    async fn a_scripted_shell_fits_behind_dyn_shell() {
        let shell: Box<dyn Shell> = Box::new(ScriptedShell(vec![(
            "uname -s",
            ExecOutput {
                status: Some(0),
                stdout: "Linux\n".into(),
                stderr: String::new(),
            },
        )]));
        let out = shell.exec("uname -s").await.unwrap();
        assert!(out.success());
        assert_eq!(out.stdout.trim(), "Linux");
        let err = shell.exec("reboot").await.unwrap_err();
        assert!(err.to_string().contains("`reboot`"), "{err}");
    }

    #[test]
    fn describe_shows_status_and_tail() {
        let o = ExecOutput {
            status: Some(2),
            stdout: "x".into(),
            stderr: "a\nb\nc\nd\n".into(),
        };
        assert_eq!(o.describe(), "exit 2: b | c | d");
        assert!(!o.success());
    }
}
