//! The VM layer: what `kib build` and `kib conformance` both need to boot an image and get
//! into it.
//!
//! - [`Runner`] and [`Vm`]: the one interface a VM backend implements, and its QEMU
//!   implementation ([`QemuRunner`]); [`accel`] picks KVM or TCG;
//! - [`qmp`]: the QMP (QEMU) and QGA (guest agent) clients;
//! - [`seed`]: cloud-init seeds (NoCloud for builds, ConfigDrive as CAPK delivers user data);
//! - [`ssh`]: the russh client (ephemeral keys, host key pinning, timeouts).
//!
//! `kib build` boots the base image with a cloud-init seed, provisions it over the forwarded SSH
//! port, powers it off over ACPI and collects the disk; `kib conformance` boots the result the
//! same way. The interface is kept small and object-safe (`Box<dyn Runner<Vm = …>>`,
//! `Box<dyn Vm>`) so that a KubeVirt runner (many builds in a cluster) or a scripted fake in a
//! test can implement it too.
//!
//! Dropping a running [`Vm`] kills its VM: a Ctrl-C or a panic never leaves a QEMU behind.
//! Nothing here prints; failures are typed errors.

pub mod accel;
pub mod image;
pub mod qemu;
pub mod qmp;
pub mod seed;
pub mod ssh;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use kib_manifest::Hint;

pub use accel::{Accel, AccelChoice, AccelError, AccelRequest, detect, detect_auto};
pub use qemu::{QemuRunner, QemuVm};

use crate::qmp::{QgaClient, QmpClient, QmpError};
use crate::seed::{Seed, SeedError};

/// The guest's network.
///
/// QEMU's user networking (libslirp) maps its gateway 10.0.2.2 to the host's loopback, and
/// QEMU has no option for libslirp's `disable_host_loopback`; so outbound access that must not
/// reach the host's 127.0.0.1 (issue #16.11) goes through passt with `--no-map-gw` instead
/// (see [`crate::qemu::passt_args`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// User networking with `restrict=on`: nothing leaves the host; port forwards still work.
    #[default]
    Isolated,
    /// Outbound access (NAT) through passt, with no path to the host's loopback: passt runs
    /// with `--no-map-gw`, so the gateway address is the real gateway, and 10.0.2.2 means
    /// nothing special. Needs the `passt` binary.
    Outbound,
    /// Outbound access through QEMU's user networking (slirp), which also maps 10.0.2.2 to
    /// the host's 127.0.0.1: for builds that need a proxy or mirror on the host's loopback.
    OutboundHost,
}

impl Network {
    /// Whether an SSH client must speak first on this network's forwarded port (set
    /// [`ssh::SshOptions::banner_timeout`] to zero). Debian bookworm's passt
    /// (0.0~git20230309) acknowledges the guest's SYN-ACK of a forwarded connection only once
    /// the host side sends data (`tcp_conn_from_sock_finish()` in its `tcp.c` sends
    /// `ACK_IF_NEEDED` right after recording the guest's sequence number as acknowledged), so
    /// sshd, which waits for the handshake, never sends its banner to a client that waits for
    /// it. OpenSSH (ansible) and russh send their identification first.
    pub fn client_speaks_first(self) -> bool {
        self == Network::Outbound
    }
}

/// The guest firmware (`kib.toml`'s `vm.firmware`, `--firmware`, the conformance report).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS (KubeVirt's default).
    #[default]
    Bios,
    /// OVMF (UEFI) without secure boot, with a private copy of the variable store.
    Uefi,
}

impl Firmware {
    /// `bios` or `uefi`, as reports, `kib.toml` and the command line write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

impl std::str::FromStr for Firmware {
    type Err = UnknownChoice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bios" => Ok(Firmware::Bios),
            "uefi" => Ok(Firmware::Uefi),
            _ => Err(UnknownChoice {
                value: s.to_owned(),
                expected: "`bios`, `uefi`",
            }),
        }
    }
}

/// A word that is not one of the allowed choices (`--firmware`, `--accel`): the one type for it.
pub use kib_manifest::UnknownChoice;

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// passt (the outbound network, [`Network::Outbound`]) could not be started.
    #[error("Failed to start `{binary}` (passt, the outbound network of VM `{name}`)")]
    PasstSpawn {
        /// The VM name.
        name: String,
        /// The passt binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// passt exited before the VM was up (or did not open its port forwards in time).
    #[error("passt exited early ({status}) for VM `{name}`; its stderr:\n{stderr}")]
    PasstExited {
        /// The VM name.
        name: String,
        /// The exit status (or why it was stopped).
        status: String,
        /// passt's stderr (its end if long).
        stderr: String,
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

impl Hint for VmError {
    /// A suggestion for the user, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            VmError::Accel(e) => e.hint(),
            VmError::EarlyExit { stderr, .. } if stderr.contains("kvm") || stderr.contains("KVM") => {
                Some("KVM failed to start the VM; try `--accel tcg`".to_owned())
            }
            VmError::Spawn { binary, .. } => Some(format!(
                "install QEMU (`apt-get install qemu-system-x86`, `dnf install qemu-kvm`) or point kib at `{}`",
                binary.display()
            )),
            VmError::PasstSpawn { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Some(
                    "`--network outbound` needs passt: install it (`apt-get install passt`, `dnf install passt`); or build with `--network outbound-host` (QEMU user networking, which also lets the guest reach this host's 127.0.0.1) or `--network isolated`"
                        .to_owned(),
                )
            }
            VmError::GuestAgent { source, .. } | VmError::Qmp { source, .. } => source.hint(),
            VmError::NotReady { source, .. } => source.as_ref().and_then(Hint::hint),
            VmError::PowerOffForced { .. } => Some(
                "the guest ignored the ACPI power button: check that it handles it (systemd-logind or acpid) and that it is not stuck at boot (see the serial log)"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// Starts VMs: the one interface a VM backend (QEMU here, KubeVirt later) implements.
///
/// Object-safe: `Box<dyn Runner<Vm = Box<dyn Vm>>>` works, and so does a scripted fake.
pub trait Runner {
    /// The running VM.
    type Vm: Vm;
    /// Boots `spec` and returns once the hypervisor runs (not once the guest has booted: wait
    /// for SSH or the guest agent for that).
    fn start(&self, spec: VmSpec) -> BoxFuture<'_, Result<Self::Vm, VmError>>;
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
    fn qmp(&self) -> BoxFuture<'_, Result<QmpClient, VmError>>;
    /// A new, synchronised guest agent connection; waits at most `timeout` for the agent.
    fn guest_agent(&self, timeout: Duration) -> BoxFuture<'_, Result<QgaClient, VmError>>;
    /// Presses the ACPI power button and waits up to `timeout` for the VM to stop; then stops it
    /// by force and returns [`VmError::PowerOffForced`].
    fn power_off(&mut self, timeout: Duration) -> BoxFuture<'_, Result<(), VmError>>;
    /// Stops the VM at once.
    fn kill(&mut self) -> BoxFuture<'_, ()>;
    /// The VM's disk; complete once [`Vm::power_off`] returned `Ok`.
    fn disk(&self) -> &Path;
}

/// A boxed VM is a VM, so a runner can hand out `Box<dyn Vm>` (`Runner<Vm = Box<dyn Vm>>`).
impl<V: Vm + ?Sized> Vm for Box<V> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn ssh_addr(&self) -> SocketAddr {
        (**self).ssh_addr()
    }
    fn forwarded(&self, guest_port: u16) -> Option<SocketAddr> {
        (**self).forwarded(guest_port)
    }
    fn serial_log(&self) -> &Path {
        (**self).serial_log()
    }
    fn serial_tail(&self, lines: usize) -> Vec<String> {
        (**self).serial_tail(lines)
    }
    fn console_is_silent(&self) -> bool {
        (**self).console_is_silent()
    }
    fn accel(&self) -> Accel {
        (**self).accel()
    }
    fn accel_reason(&self) -> &str {
        (**self).accel_reason()
    }
    fn qmp(&self) -> BoxFuture<'_, Result<QmpClient, VmError>> {
        (**self).qmp()
    }
    fn guest_agent(&self, timeout: Duration) -> BoxFuture<'_, Result<QgaClient, VmError>> {
        (**self).guest_agent(timeout)
    }
    fn power_off(&mut self, timeout: Duration) -> BoxFuture<'_, Result<(), VmError>> {
        (**self).power_off(timeout)
    }
    fn kill(&mut self) -> BoxFuture<'_, ()> {
        (**self).kill()
    }
    fn disk(&self) -> &Path {
        (**self).disk()
    }
}

/// Environment variables holding kib's own secrets (the signing key's password, registry
/// credentials). No child kib spawns — QEMU, ansible, ssh, qemu-img — needs them, so they are
/// removed from each child's environment ([`scrub_secrets`], issue #16.10).
pub const SECRET_ENV: &[&str] = &[
    "COSIGN_PASSWORD",
    "KIB_REGISTRY_PASSWORD",
    "KIB_REGISTRY_USERNAME",
];

/// Removes [`SECRET_ENV`] from a child's environment.
pub fn scrub_secrets(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for name in SECRET_ENV {
        cmd.env_remove(name);
    }
    cmd
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

#[cfg(test)]
mod object_safety_tests {
    //! A scripted stand-in VM (labelled as such: it boots nothing) proves the interface is
    //! object-safe, so a future KubeVirt runner or a test double can sit behind `dyn Runner`.
    use super::*;
    use std::sync::Mutex;

    /// A stand-in VM that records what was asked of it.
    struct ScriptedVm {
        name: String,
        disk: PathBuf,
        calls: Vec<&'static str>,
    }

    impl Vm for ScriptedVm {
        fn name(&self) -> &str {
            &self.name
        }
        fn ssh_addr(&self) -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 1], 2222))
        }
        fn forwarded(&self, guest_port: u16) -> Option<SocketAddr> {
            (guest_port == 22).then(|| self.ssh_addr())
        }
        fn serial_log(&self) -> &Path {
            Path::new("/dev/null")
        }
        fn serial_tail(&self, lines: usize) -> Vec<String> {
            vec!["login:".to_owned(); lines.min(1)]
        }
        fn console_is_silent(&self) -> bool {
            false
        }
        fn accel(&self) -> Accel {
            Accel::Tcg
        }
        fn accel_reason(&self) -> &str {
            "scripted"
        }
        fn qmp(&self) -> BoxFuture<'_, Result<QmpClient, VmError>> {
            Box::pin(async move {
                Err(VmError::NoGuestAgentChannel {
                    name: self.name.clone(),
                })
            })
        }
        fn guest_agent(&self, _timeout: Duration) -> BoxFuture<'_, Result<QgaClient, VmError>> {
            Box::pin(async move {
                Err(VmError::NoGuestAgentChannel {
                    name: self.name.clone(),
                })
            })
        }
        fn power_off(&mut self, _timeout: Duration) -> BoxFuture<'_, Result<(), VmError>> {
            self.calls.push("power_off");
            Box::pin(async { Ok(()) })
        }
        fn kill(&mut self) -> BoxFuture<'_, ()> {
            self.calls.push("kill");
            Box::pin(async {})
        }
        fn disk(&self) -> &Path {
            &self.disk
        }
    }

    /// A stand-in runner that hands out [`ScriptedVm`]s as `Box<dyn Vm>`.
    struct ScriptedRunner {
        started: Mutex<Vec<String>>,
    }

    impl Runner for ScriptedRunner {
        type Vm = Box<dyn Vm>;
        fn start(&self, spec: VmSpec) -> BoxFuture<'_, Result<Box<dyn Vm>, VmError>> {
            self.started
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(spec.name.clone());
            Box::pin(async move {
                Ok(Box::new(ScriptedVm {
                    name: spec.name,
                    disk: spec.disk,
                    calls: Vec::new(),
                }) as Box<dyn Vm>)
            })
        }
    }

    #[tokio::test]
    async fn a_scripted_runner_fits_behind_dyn_runner() {
        let runner: Box<dyn Runner<Vm = Box<dyn Vm>>> = Box::new(ScriptedRunner {
            started: Mutex::new(Vec::new()),
        });
        let spec = VmSpec::new("fake", "/tmp/disk.qcow2", "/tmp");
        let mut vm = runner
            .start(spec)
            .await
            .expect("the scripted runner starts");
        assert_eq!(vm.name(), "fake");
        assert_eq!(vm.disk(), Path::new("/tmp/disk.qcow2"));
        assert_eq!(vm.forwarded(22), Some(vm.ssh_addr()));
        assert!(matches!(
            vm.guest_agent(Duration::from_secs(1)).await,
            Err(VmError::NoGuestAgentChannel { .. })
        ));
        vm.power_off(Duration::from_secs(1))
            .await
            .expect("powers off");
        vm.kill().await;
    }
}

#[cfg(test)]
mod secret_env_tests {
    use super::*;

    /// A child started through [`scrub_secrets`] (as QEMU and ansible are) sees none of
    /// [`SECRET_ENV`], even when kib's own environment holds them (set here on the command,
    /// which a child inherits the same way).
    #[tokio::test]
    async fn children_get_none_of_kibs_secrets() {
        let mut cmd = tokio::process::Command::new("env");
        for name in SECRET_ENV {
            cmd.env(name, "s3cret");
        }
        cmd.env("KIB_NOT_SECRET", "kept");
        let out = scrub_secrets(&mut cmd).output().await.unwrap();
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(env.contains("KIB_NOT_SECRET=kept"), "{env}");
        for name in SECRET_ENV {
            assert!(!env.contains(&format!("{name}=")), "{name} leaked:\n{env}");
        }
    }
}
