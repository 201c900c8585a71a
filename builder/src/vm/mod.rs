//! The VM runner: one small interface ([`Runner`], [`Vm`]) and its QEMU implementation
//! ([`QemuRunner`]).
//!
//! `kib build` boots the base image with a cloud-init seed, provisions it over the forwarded SSH
//! port, powers it off over ACPI and collects the disk; `kib conformance` boots the result the
//! same way. The interface is kept small so that a KubeVirt runner (many builds in a cluster)
//! can implement it too.
//!
//! Dropping a running [`Vm`] kills its VM: a Ctrl-C or a panic never leaves a QEMU behind.

pub mod accel;
pub mod qemu;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use accel::{Accel, AccelChoice, AccelError, AccelRequest, detect, detect_auto};
pub use qemu::{QemuRunner, QemuVm};

use crate::qmp::{QgaClient, QmpClient, QmpError};
use crate::seed::{Seed, SeedError};

/// The guest's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// User networking with `restrict=on`: nothing leaves the host; port forwards still work.
    #[default]
    Isolated,
    /// User networking with outbound access (NAT).
    Outbound,
}

/// The guest firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// SeaBIOS (KubeVirt's default).
    #[default]
    Bios,
    /// OVMF (UEFI) without secure boot, with a private copy of the variable store.
    Uefi,
}

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// A name for logs and messages.
    pub name: String,
    /// The qcow2 the VM boots from, written in place (the runner never copies it).
    pub disk: PathBuf,
    /// A cloud-init seed, attached as a second, read-only virtio disk.
    pub seed: Option<Seed>,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// The accelerator request.
    pub accel: AccelRequest,
    /// The CPU model; default `host` under KVM and `max` under TCG (Rocky 10 needs x86-64-v3 and
    /// aborts on `qemu64`).
    pub cpu_model: Option<String>,
    /// The network.
    pub network: Network,
    /// The firmware.
    pub firmware: Firmware,
    /// Add an i6300esb watchdog, as KubeVirt does when asked.
    pub watchdog: bool,
    /// Add the `org.qemu.guest_agent.0` virtio-serial channel.
    pub guest_agent: bool,
    /// Guest TCP ports to forward to free `127.0.0.1` ports, besides 22 (always forwarded).
    pub forward_ports: Vec<u16>,
    /// Where the sockets, the serial log and QEMU's stderr live (created if missing).
    pub work_dir: PathBuf,
}

impl VmSpec {
    /// A spec with defaults: 2 CPUs, 2 GiB, `Auto` accel, isolated network, BIOS, guest agent
    /// on, watchdog off, no seed, no extra ports.
    pub fn new(
        name: impl Into<String>,
        disk: impl Into<PathBuf>,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            disk: disk.into(),
            seed: None,
            cpus: 2,
            memory_mib: 2048,
            accel: AccelRequest::Auto,
            cpu_model: None,
            network: Network::Isolated,
            firmware: Firmware::Bios,
            watchdog: false,
            guest_agent: true,
            forward_ports: Vec::new(),
            work_dir: work_dir.into(),
        }
    }
}

/// Errors of the VM runner.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// No usable accelerator for the request.
    #[error("Failed to choose an accelerator")]
    Accel(#[from] AccelError),
    /// Preparing the work directory (or a file in it) failed.
    #[error("Failed to prepare `{path}` for VM `{name}`")]
    Prepare {
        /// The VM name.
        name: String,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket path is longer than a Unix socket allows (107 bytes).
    #[error("The socket path `{path}` is too long for a Unix socket; use a shorter work directory")]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
    },
    /// Writing the cloud-init seed failed.
    #[error("Failed to write the cloud-init seed of VM `{name}`")]
    Seed {
        /// The VM name.
        name: String,
        /// The cause.
        #[source]
        source: SeedError,
    },
    /// Finding free host ports failed.
    #[error("Failed to find a free port on 127.0.0.1")]
    Ports(#[source] std::io::Error),
    /// Starting QEMU failed.
    #[error("Failed to start `{binary}`")]
    Spawn {
        /// The QEMU binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited before the VM was up.
    #[error("QEMU exited early ({status}) for VM `{name}`; its stderr:\n{stderr}")]
    EarlyExit {
        /// The VM name.
        name: String,
        /// The exit status.
        status: String,
        /// QEMU's stderr (its end if long).
        stderr: String,
    },
    /// QEMU did not open its monitor in time.
    #[error("QEMU did not become ready within {waited:?} for VM `{name}`")]
    NotReady {
        /// The VM name.
        name: String,
        /// How long we waited.
        waited: Duration,
        /// The last monitor error, if any.
        #[source]
        source: Option<QmpError>,
    },
    /// A QMP exchange failed.
    #[error("QMP failed for VM `{name}`")]
    Qmp {
        /// The VM name.
        name: String,
        /// The cause.
        #[source]
        source: QmpError,
    },
    /// The guest agent did not answer.
    #[error("The guest agent of VM `{name}` is not reachable")]
    GuestAgent {
        /// The VM name.
        name: String,
        /// The cause.
        #[source]
        source: QmpError,
    },
    /// The VM was started without a guest agent channel.
    #[error("VM `{name}` has no guest agent channel (`guest_agent` is off in its spec)")]
    NoGuestAgentChannel {
        /// The VM name.
        name: String,
    },
    /// Waiting for QEMU to exit failed.
    #[error("Failed to wait for the QEMU of VM `{name}`")]
    Wait {
        /// The VM name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The guest did not power off over ACPI in time and QEMU had to be stopped.
    #[error(
        "VM `{name}` did not power off within {waited:?} after the ACPI power button; QEMU was stopped by force"
    )]
    PowerOffForced {
        /// The VM name.
        name: String,
        /// How long we waited for the guest.
        waited: Duration,
    },
}

impl VmError {
    /// A suggestion for the user, when there is an obvious one.
    pub fn hint(&self) -> Option<String> {
        match self {
            VmError::Accel(e) => e.hint(),
            VmError::EarlyExit { stderr, .. } if stderr.contains("kvm") || stderr.contains("KVM") => {
                Some("KVM failed to start the VM; try `--accel tcg`".to_owned())
            }
            VmError::Spawn { binary, .. } => Some(format!(
                "install QEMU (`apt-get install qemu-system-x86`, `dnf install qemu-kvm`) or point kib at `{}`",
                binary.display()
            )),
            VmError::GuestAgent { source, .. } => source.hint(),
            VmError::PowerOffForced { .. } => Some(
                "the guest ignored the ACPI power button: check that it handles it (systemd-logind or acpid) and that it is not stuck at boot (see the serial log)"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// Starts VMs.
pub trait Runner {
    /// The running VM.
    type Vm: Vm;
    /// Boots `spec` and returns once the hypervisor runs (not once the guest has booted: wait
    /// for SSH or the guest agent for that).
    fn start(&self, spec: VmSpec) -> impl Future<Output = Result<Self::Vm, VmError>> + Send;
}

/// A running VM. Dropping it kills the VM.
pub trait Vm: Send {
    /// The VM name.
    fn name(&self) -> &str;
    /// The host address forwarded to the guest's port 22.
    fn ssh_addr(&self) -> SocketAddr;
    /// The host address forwarded to `guest_port`, if it is forwarded.
    fn forwarded(&self, guest_port: u16) -> Option<SocketAddr>;
    /// The serial console log.
    fn serial_log(&self) -> &Path;
    /// The last `lines` lines of the console (for error messages), as text: terminal escape
    /// sequences and control characters removed (see [`console_text`]).
    fn serial_tail(&self, lines: usize) -> Vec<String>;
    /// True when the console has stayed empty for longer than the runner's silence limit: the
    /// guest is likely stuck before its kernel prints (the caller can suggest `--accel tcg`).
    fn console_is_silent(&self) -> bool;
    /// The accelerator actually used.
    fn accel(&self) -> Accel;
    /// Why that accelerator was chosen (show it loudly when it is TCG).
    fn accel_reason(&self) -> &str;
    /// A new QMP connection.
    fn qmp(&self) -> impl Future<Output = Result<QmpClient, VmError>> + Send;
    /// A new, synchronised guest agent connection; waits at most `timeout` for the agent.
    fn guest_agent(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<QgaClient, VmError>> + Send;
    /// Presses the ACPI power button and waits up to `timeout` for the VM to stop; then stops it
    /// by force and returns [`VmError::PowerOffForced`].
    fn power_off(&mut self, timeout: Duration) -> impl Future<Output = Result<(), VmError>> + Send;
    /// Stops the VM at once.
    fn kill(&mut self) -> impl Future<Output = ()> + Send;
    /// The VM's disk; complete once [`Vm::power_off`] returned `Ok`.
    fn disk(&self) -> &Path;
}

/// What a guest console printed, as plain text: terminal escape sequences (CSI such as colours
/// and cursor moves, OSC, two-byte escapes) and control characters other than newline and tab
/// removed. Firmware, GRUB and systemd draw with them; printed raw into an error message they
/// would move the user's cursor, clear the screen, or retitle the terminal on the guest's say.
pub fn console_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~
                Some('[') => {
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ST (ESC \)
                Some(']') => {
                    while let Some(d) = chars.next() {
                        if d == '\u{7}' || (d == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                // Charset designation and the like: ESC, an intermediate, one final byte.
                Some(i) if "()*+-./#%".contains(i) => {
                    chars.next();
                }
                // A two-byte escape: drop both.
                _ => {}
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod console_tests {
    use super::console_text;

    #[test]
    fn firmware_and_grub_drawing_is_removed() {
        assert_eq!(
            console_text("\u{1b}[2J\u{1b}[01;01HBdsDxe: x \u{1b}[1m\u{1b}[33mShell> \u{1b}[0m"),
            "BdsDxe: x Shell> "
        );
        // GRUB, as seen in a failing SSH-timeout report.
        assert_eq!(
            console_text("\u{1b}[H\u{1b}[J\u{1b}[1;1H  Booting `Debian 12'\r\n"),
            "  Booting `Debian 12'\n"
        );
    }

    #[test]
    fn titles_bells_and_other_controls_are_removed() {
        assert_eq!(
            console_text("a\u{1b}]0;pwned\u{7}b\u{1b}]2;x\u{1b}\\c\u{1b}(Bd\u{8}\u{7}e\tf"),
            "abcde\tf"
        );
        assert_eq!(
            console_text("[  OK  ] Started ssh.service\n"),
            "[  OK  ] Started ssh.service\n"
        );
    }
}
