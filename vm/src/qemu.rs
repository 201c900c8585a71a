//! The QEMU implementation of [`Runner`]: `qemu-system-x86_64` on a q35 machine with virtio
//! devices, user networking (slirp) or passt with host port forwards, and two QMP monitors (one
//! kept by the runner for power-off and events, one for callers of [`Vm::qmp`]).
//!
//! The command lines are built by the pure functions [`qemu_args`] and [`passt_args`]. QEMU
//! runs in its own process group; dropping a [`QemuVm`] kills that group (and passt).
//!
//! ## Outbound networking without the host's loopback (issue #16.11)
//!
//! libslirp maps the gateway 10.0.2.2 to the host's 127.0.0.1, and QEMU (10.0) exposes no
//! option for libslirp's `disable_host_loopback`. [`Network::Outbound`] therefore runs passt:
//!
//! | what | source |
//! |---|---|
//! | `--no-map-gw`: "Don't remap TCP connections and untracked UDP traffic, with the gateway address as destination, to the host" | passt(1), Debian bookworm `passt 0.0~git20230309.7c7625d-1` |
//! | `-F, --fd FD`: "Pass a pre-opened, connected socket to passt"; implies `--one-off` (quit once the client closes the socket) | passt(1) |
//! | `-t 127.0.0.1/22022:22` forwards a host port bound to an address to a guest port; `-u none` forwards no UDP | passt(1), "-t, --tcp-ports spec" |
//! | `-f`: stay in the foreground (no fork, the pid stays ours) | passt(1) |
//! | with `--no-map-gw`, a loopback resolver in `/etc/resolv.conf` (systemd-resolved's 127.0.0.53) is not handed to the guest | passt `conf.c`, `get_dns()`: "We can only access local addresses via the gw redirect" |
//! | `-D, --dns addr`: "Use addr … for DHCP, DHCPv6, NDP or DNS forwarding … instead of reading addresses from /etc/resolv.conf"; kib passes systemd-resolved's upstreams (`/run/systemd/resolve/resolv.conf`) when `/etc/resolv.conf` names only loopback resolvers | passt(1) |
//! | `-netdev stream,id=…,server=off,addr.type=fd,addr.str=FD`: a stream netdev over an inherited, connected socket (QEMU ≥ 7.2) | QEMU `qemu-options.hx` (`-netdev stream`), `net/stream.c` |
//!
//! kib creates a socket pair, hands one end to passt (`-F`) and the other to QEMU
//! (`addr.type=fd`). Nothing is bound on disk, which matters because passt started as root
//! switches to `nobody` before binding a socket path (and then cannot create it in kib's
//! private work dir), and passt exits as soon as QEMU's end closes, so it dies with QEMU, which
//! dies with kib ([`parent_death_command`]; passt's own death signal is cleared when it
//! switches to `nobody`).

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::accel::{Accel, AccelChoice, HostProbe, detect_with};
use crate::qmp::{QgaClient, QmpClient, QmpError};
use crate::{Firmware, Network, Runner, Vm, VmError, VmSpec};

/// Debian's (and Fedora's) passt binary: the outbound network of [`Network::Outbound`].
pub const PASST: &str = "passt";
/// How long passt may take to open its port forwards.
const PASST_START: Duration = Duration::from_secs(10);

/// Longest Unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How often a port clash is retried with new ports.
const PORT_ATTEMPTS: usize = 3;
/// How much of QEMU's stderr an error carries.
const STDERR_TAIL: usize = 4096;

/// Starts VMs with QEMU.
#[derive(Debug, Clone)]
pub struct QemuRunner {
    /// The QEMU binary, default `qemu-system-x86_64` (looked up on `PATH`).
    pub qemu: PathBuf,
    /// The passt binary for [`Network::Outbound`], default `passt` (looked up on `PATH`).
    pub passt: PathBuf,
    /// OVMF code (read-only), default Debian's `/usr/share/OVMF/OVMF_CODE_4M.fd`.
    pub ovmf_code: PathBuf,
    /// OVMF variable template, copied per VM; default `/usr/share/OVMF/OVMF_VARS_4M.fd`.
    pub ovmf_vars: PathBuf,
    /// Where to probe for KVM.
    pub probe: HostProbe,
    /// After this long with an empty console, [`Vm::console_is_silent`] turns true.
    pub silent_console_after: Duration,
    /// How long QEMU may take to open its monitor.
    pub start_timeout: Duration,
    /// The per-command QMP timeout.
    pub qmp_timeout: Duration,
}

/// Debian's OVMF firmware code (package `ovmf`): what `--firmware uefi` boots with, and what
/// `kib doctor` looks for.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The OVMF variable store template each UEFI VM gets a private copy of.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl Default for QemuRunner {
    fn default() -> Self {
        Self {
            qemu: "qemu-system-x86_64".into(),
            passt: PASST.into(),
            ovmf_code: OVMF_CODE.into(),
            ovmf_vars: OVMF_VARS.into(),
            probe: HostProbe::default(),
            silent_console_after: Duration::from_secs(60),
            start_timeout: Duration::from_secs(30),
            qmp_timeout: Duration::from_secs(10),
        }
    }
}

impl QemuRunner {
    /// A runner with the defaults.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Everything [`qemu_args`] needs besides the spec: decisions made at start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// The accelerator.
    pub accel: Accel,
    /// The CPU model.
    pub cpu_model: String,
    /// (guest port, host port) forwards; 22 first.
    pub forwards: Vec<(u16, u16)>,
    /// The runner's own QMP socket.
    pub control_socket: PathBuf,
    /// The QMP socket for callers.
    pub qmp_socket: PathBuf,
    /// The guest agent socket (used when the spec asks for the agent).
    pub qga_socket: PathBuf,
    /// The serial log.
    pub serial_log: PathBuf,
    /// The seed image, if any.
    pub seed_image: Option<PathBuf>,
    /// OVMF code and the VM's variable store, for UEFI.
    pub ovmf: Option<(PathBuf, PathBuf)>,
    /// QEMU's end of the socket pair to passt (an inherited descriptor), for
    /// [`Network::Outbound`]. Without it the guest gets QEMU's user networking, with
    /// `restrict=on` unless the spec asks for [`Network::OutboundHost`]: an outbound spec
    /// without passt fails closed.
    pub passt_fd: Option<RawFd>,
}

/// Escapes a value for QEMU's `key=value,…` option syntax (a comma is doubled).
fn opt_value(path: &Path) -> OsString {
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn opt(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(opt_value(path));
    s.push(suffix);
    s
}

/// The QEMU command line (without the binary) for `spec` and `plan`.
pub fn qemu_args(spec: &VmSpec, plan: &LaunchPlan) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&dyn AsRef<OsStr>]| {
        for i in items {
            a.push(i.as_ref().to_owned());
        }
    };
    push(&[&"-name", &spec.name.replace(',', ",,")]);
    push(&[&"-no-user-config", &"-nodefaults", &"-display", &"none"]);
    push(&[&"-machine", &"q35"]);
    match plan.accel {
        Accel::Kvm => push(&[&"-accel", &"kvm"]),
        Accel::Tcg => push(&[&"-accel", &"tcg,thread=multi"]),
    }
    push(&[&"-cpu", &plan.cpu_model]);
    push(&[
        &"-smp",
        &spec.cpus.to_string(),
        &"-m",
        &format!("{}M", spec.memory_mib),
    ]);
    if let Some((code, vars)) = &plan.ovmf {
        push(&[
            &"-drive",
            &opt("if=pflash,format=raw,unit=0,readonly=on,file=", code, ""),
        ]);
        push(&[
            &"-drive",
            &opt("if=pflash,format=raw,unit=1,file=", vars, ""),
        ]);
    }
    push(&[
        &"-drive",
        &opt(
            "if=none,id=disk0,format=qcow2,cache=unsafe,discard=unmap,detect-zeroes=unmap,file=",
            &spec.disk,
            "",
        ),
        &"-device",
        &"virtio-blk-pci,drive=disk0,bootindex=1",
    ]);
    if let Some(seed) = &plan.seed_image {
        push(&[
            &"-drive",
            &opt("if=none,id=seed0,format=raw,readonly=on,file=", seed, ""),
            &"-device",
            &"virtio-blk-pci,drive=seed0",
        ]);
    }
    let netdev = match plan.passt_fd {
        // passt does the port forwards (passt_args).
        Some(fd) => format!("stream,id=net0,server=off,addr.type=fd,addr.str={fd}"),
        None => {
            let mut netdev = String::from("user,id=net0");
            if spec.network != Network::OutboundHost {
                netdev.push_str(",restrict=on");
            }
            for (guest, host) in &plan.forwards {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            }
            netdev
        }
    };
    push(&[
        &"-netdev",
        &netdev,
        &"-device",
        &"virtio-net-pci,netdev=net0",
    ]);
    push(&[
        &"-chardev",
        &opt(
            "socket,id=qmpctl,server=on,wait=off,path=",
            &plan.control_socket,
            "",
        ),
        &"-mon",
        &"chardev=qmpctl,mode=control",
        &"-chardev",
        &opt(
            "socket,id=qmp,server=on,wait=off,path=",
            &plan.qmp_socket,
            "",
        ),
        &"-mon",
        &"chardev=qmp,mode=control",
    ]);
    push(&[
        &"-chardev",
        &opt("file,id=serial0,path=", &plan.serial_log, ""),
        &"-serial",
        &"chardev:serial0",
    ]);
    if spec.watchdog {
        push(&[&"-device", &"i6300esb"]);
    }
    if spec.guest_agent {
        push(&[
            &"-device",
            &"virtio-serial-pci,id=vser0",
            &"-chardev",
            &opt(
                "socket,id=qga0,server=on,wait=off,path=",
                &plan.qga_socket,
                "",
            ),
            &"-device",
            &"virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
        ]);
    }
    push(&[
        &"-object",
        &"rng-random,id=rng0,filename=/dev/urandom",
        &"-device",
        &"virtio-rng-pci,rng=rng0",
    ]);
    a
}

/// The passt command line (without the binary) for a VM whose QEMU holds the other end of
/// `fd`, with `forwards` as (guest port, host port) pairs and `dns` as the resolvers to hand
/// the guest (empty: passt reads `/etc/resolv.conf`). See the module docs for the sources.
pub fn passt_args(fd: RawFd, forwards: &[(u16, u16)], dns: &[IpAddr]) -> Vec<OsString> {
    let mut a: Vec<OsString> = ["-f", "-q", "-F"].iter().map(OsString::from).collect();
    a.push(fd.to_string().into());
    for (guest, host) in forwards {
        a.push("-t".into());
        a.push(format!("127.0.0.1/{host}:{guest}").into());
    }
    for ip in dns {
        a.push("-D".into());
        a.push(ip.to_string().into());
    }
    // The gateway address is the real gateway, never the host's loopback (issue #16.11).
    for s in ["-u", "none", "--no-map-gw"] {
        a.push(s.into());
    }
    a
}

/// systemd-resolved's list of the upstream resolvers behind its 127.0.0.53 stub.
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

/// The resolvers to give passt with `-D`: none when `/etc/resolv.conf` names a resolver off
/// the loopback (passt reads it itself); otherwise (systemd-resolved's 127.0.0.53, which passt
/// drops under `--no-map-gw`) the non-loopback ones of `upstream`
/// (`/run/systemd/resolve/resolv.conf`), if any.
fn dns_servers(etc_resolv_conf: &str, upstream: Option<&str>) -> Vec<IpAddr> {
    fn nameservers(text: &str) -> Vec<IpAddr> {
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("nameserver"))
                    .then(|| w.next()?.split('%').next()?.parse().ok())
                    .flatten()
            })
            // Loopback resolvers are what passt drops; a link-local one needs its zone, which
            // `-D` cannot carry.
            .filter(|ip: &IpAddr| match ip {
                IpAddr::V4(v4) => !v4.is_loopback(),
                IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
            })
            .collect()
    }
    if !nameservers(etc_resolv_conf).is_empty() {
        return Vec::new();
    }
    upstream.map(nameservers).unwrap_or_default()
}

/// The `127.0.0.1` TCP ports something listens on, from `/proc/net/tcp`.
fn loopback_listeners() -> Vec<u16> {
    let text = fs_err::read_to_string("/proc/net/tcp").unwrap_or_default();
    listeners_in(&text)
}

/// [`loopback_listeners`] on the text of `/proc/net/tcp`: `local_address` is
/// `0100007F:PORT` (address in host byte order, port big-endian, both hex); state `0A` is
/// LISTEN.
fn listeners_in(proc_net_tcp: &str) -> Vec<u16> {
    proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (addr, port) = f.get(1)?.split_once(':')?;
            (addr == "0100007F" && *f.get(3)? == "0A")
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect()
}

/// Lets the next child inherit `fd` (std creates descriptors close-on-exec). The window until
/// the parent closes it is short, but another child spawned meanwhile by another thread
/// inherits it too.
fn inheritable(fd: &impl AsFd) -> Result<(), std::io::Error> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
        .map(drop)
        .map_err(std::io::Error::from)
}

/// passt's stderr for an error message: its end, without the lines saying that it could not
/// reach the system logger (it tries syslog first; containers and CI hosts have none).
fn passt_stderr(path: &Path) -> String {
    tail_of(path, 64 * 1024)
        .lines()
        .filter(|l| !l.contains("bytes to syslog"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Picks free `127.0.0.1` ports (all held open together so they differ, then released).
fn free_ports(n: usize) -> Result<Vec<u16>, std::io::Error> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

fn tail_of(path: &Path, max: usize) -> String {
    let bytes = fs_err::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..])
        .trim_end()
        .to_owned()
}

impl Runner for QemuRunner {
    type Vm = QemuVm;

    fn start(&self, spec: VmSpec) -> BoxFuture<'_, Result<QemuVm, VmError>> {
        Box::pin(self.boot(spec))
    }
}

impl QemuRunner {
    /// [`Runner::start`].
    async fn boot(&self, spec: VmSpec) -> Result<QemuVm, VmError> {
        let name = spec.name.clone();
        let prep = |path: &Path| {
            let name = name.clone();
            let path = path.to_owned();
            move |source| VmError::Prepare { name, path, source }
        };
        let choice = detect_with(spec.accel, &self.probe)?;
        if choice.accel == Accel::Tcg {
            tracing::warn!(vm = %name, reason = %choice.reason, "using TCG");
        }
        let work = &spec.work_dir;
        fs_err::create_dir_all(work).map_err(prep(work))?;
        let control_socket = work.join("qmp-control.sock");
        let qmp_socket = work.join("qmp.sock");
        let qga_socket = work.join("qga.sock");
        let serial_log = work.join("serial.log");
        let stderr_log = work.join("qemu.stderr.log");
        let passt_log = work.join("passt.stderr.log");
        for p in [&control_socket, &qmp_socket, &qga_socket] {
            if p.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(VmError::SocketPathTooLong { path: p.clone() });
            }
        }
        for p in [&control_socket, &qmp_socket, &qga_socket, &serial_log] {
            match fs_err::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(prep(p)(e)),
                _ => {}
            }
        }
        let seed_image = match &spec.seed {
            Some(seed) => {
                let path = work.join("seed.img");
                seed.write_image(&path).map_err(|source| VmError::Seed {
                    name: name.clone(),
                    source,
                })?;
                Some(path)
            }
            None => None,
        };
        let ovmf = match spec.firmware {
            Firmware::Bios => None,
            Firmware::Uefi => {
                let vars = work.join("OVMF_VARS.fd");
                fs_err::copy(&self.ovmf_vars, &vars).map_err(prep(&self.ovmf_vars))?;
                Some((self.ovmf_code.clone(), vars))
            }
        };
        let cpu_model = spec.cpu_model.clone().unwrap_or_else(|| {
            match choice.accel {
                Accel::Kvm => "host",
                Accel::Tcg => "max",
            }
            .to_owned()
        });
        let mut guest_ports = vec![22u16];
        for p in &spec.forward_ports {
            if !guest_ports.contains(p) {
                guest_ports.push(*p);
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let host_ports = free_ports(guest_ports.len()).map_err(VmError::Ports)?;
            let forwards: Vec<(u16, u16)> = guest_ports.iter().copied().zip(host_ports).collect();
            // For `Outbound`: passt, and QEMU's end of the socket pair to it (kept open until
            // QEMU has inherited it).
            let (passt, qemu_end) = if spec.network == Network::Outbound {
                match self.start_passt(&name, &forwards, &passt_log).await {
                    Ok((child, end)) => (Some(child), Some(end)),
                    Err(VmError::PasstExited { stderr, .. })
                        if stderr.contains("Failed to bind") && attempt < PORT_ATTEMPTS =>
                    {
                        tracing::debug!(vm = %name, %stderr, "port clash, retrying with new ports");
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                (None, None)
            };
            if let Some(end) = &qemu_end {
                inheritable(end).map_err(|source| VmError::PasstSpawn {
                    name: name.clone(),
                    binary: self.passt.clone(),
                    source,
                })?;
            }
            let plan = LaunchPlan {
                accel: choice.accel,
                cpu_model: cpu_model.clone(),
                forwards,
                control_socket: control_socket.clone(),
                qmp_socket: qmp_socket.clone(),
                qga_socket: qga_socket.clone(),
                serial_log: serial_log.clone(),
                seed_image: seed_image.clone(),
                ovmf: ovmf.clone(),
                passt_fd: qemu_end.as_ref().map(AsRawFd::as_raw_fd),
            };
            let args = qemu_args(&spec, &plan);
            tracing::debug!(vm = %name, qemu = %self.qemu.display(), ?args, "starting QEMU");
            let stderr = fs_err::File::create(&stderr_log).map_err(prep(&stderr_log))?;
            let mut cmd = parent_death_command(&self.qemu);
            let child = crate::scrub_secrets(&mut cmd)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(stderr.into_parts().0))
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| VmError::Spawn {
                    binary: self.qemu.clone(),
                    source,
                })?;
            // QEMU holds its end now; passt exits once QEMU's copy closes.
            drop(qemu_end);
            let mut vm = QemuVm {
                name: name.clone(),
                pid: child.id(),
                child,
                passt,
                passt_log: passt_log.clone(),
                exited: false,
                accel: choice.clone(),
                forwards: plan.forwards.clone(),
                serial_log: serial_log.clone(),
                stderr_log: stderr_log.clone(),
                qmp_socket: qmp_socket.clone(),
                qga_socket: spec.guest_agent.then(|| qga_socket.clone()),
                control_socket: control_socket.clone(),
                control: None,
                disk: spec.disk.clone(),
                started: std::time::Instant::now(),
                silent_after: self.silent_console_after,
                qmp_timeout: self.qmp_timeout,
            };
            match vm.wait_ready(self.start_timeout).await {
                Ok(()) if vm.passt_exited() => {
                    let status = vm
                        .passt
                        .as_mut()
                        .and_then(|p| p.try_wait().ok().flatten())
                        .map_or_else(|| "unknown status".to_owned(), |s| s.to_string());
                    vm.kill_now().await;
                    return Err(VmError::PasstExited {
                        name: name.clone(),
                        status,
                        stderr: passt_stderr(&passt_log),
                    });
                }
                Ok(()) => {
                    tracing::info!(vm = %name, accel = %choice.accel, ssh = %vm.ssh_addr(), "VM started");
                    return Ok(vm);
                }
                Err(VmError::EarlyExit { stderr, .. })
                    if stderr.contains("host forwarding rule") && attempt < PORT_ATTEMPTS =>
                {
                    tracing::debug!(vm = %name, %stderr, "port clash, retrying with new ports");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl QemuRunner {
    /// Starts passt for `forwards` and waits until it listens on every forwarded host port.
    /// Returns passt and QEMU's end of the socket pair.
    async fn start_passt(
        &self,
        name: &str,
        forwards: &[(u16, u16)],
        log: &Path,
    ) -> Result<(Child, UnixStream), VmError> {
        let spawn_err = |source| VmError::PasstSpawn {
            name: name.to_owned(),
            binary: self.passt.clone(),
            source,
        };
        let (qemu_end, passt_end) = UnixStream::pair().map_err(spawn_err)?;
        inheritable(&passt_end).map_err(spawn_err)?;
        let dns = dns_servers(
            &fs_err::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            fs_err::read_to_string(RESOLVED_UPSTREAM).ok().as_deref(),
        );
        let args = passt_args(passt_end.as_raw_fd(), forwards, &dns);
        tracing::debug!(vm = %name, passt = %self.passt.display(), ?args, "starting passt");
        let stderr = fs_err::File::create(log).map_err(|source| VmError::Prepare {
            name: name.to_owned(),
            path: log.to_owned(),
            source,
        })?;
        let mut cmd = parent_death_command(&self.passt);
        let spawned = crate::scrub_secrets(&mut cmd)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr.into_parts().0))
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        drop(passt_end);
        let mut child = spawned.map_err(spawn_err)?;
        let deadline = Instant::now() + PASST_START;
        loop {
            if let Some(status) = child.try_wait().map_err(spawn_err)? {
                return Err(VmError::PasstExited {
                    name: name.to_owned(),
                    status: status.to_string(),
                    stderr: passt_stderr(log),
                });
            }
            let listening = loopback_listeners();
            if forwards.iter().all(|(_, h)| listening.contains(h)) {
                return Ok((child, qemu_end));
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(VmError::PasstExited {
                    name: name.to_owned(),
                    status: format!("stopped: no port forwards after {PASST_START:?}"),
                    stderr: passt_stderr(log),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A VM run by QEMU.
#[derive(Debug)]
pub struct QemuVm {
    name: String,
    child: Child,
    /// passt, for [`Network::Outbound`].
    passt: Option<Child>,
    passt_log: PathBuf,
    pid: Option<u32>,
    exited: bool,
    accel: AccelChoice,
    forwards: Vec<(u16, u16)>,
    serial_log: PathBuf,
    stderr_log: PathBuf,
    qmp_socket: PathBuf,
    qga_socket: Option<PathBuf>,
    control_socket: PathBuf,
    control: Option<QmpClient>,
    disk: PathBuf,
    started: std::time::Instant,
    silent_after: Duration,
    qmp_timeout: Duration,
}

impl QemuVm {
    /// QEMU's process id (also its process group id); `None` once it has been reaped.
    pub fn pid(&self) -> Option<u32> {
        (!self.exited).then_some(self.pid).flatten()
    }

    /// The file holding QEMU's stderr.
    pub fn stderr_log(&self) -> &Path {
        &self.stderr_log
    }

    /// passt's process id, for [`Network::Outbound`]; `None` otherwise or once it has exited.
    pub fn passt_pid(&mut self) -> Option<u32> {
        let p = self.passt.as_mut()?;
        matches!(p.try_wait(), Ok(None)).then(|| p.id()).flatten()
    }

    /// The file holding passt's stderr (written only for [`Network::Outbound`]).
    pub fn passt_log(&self) -> &Path {
        &self.passt_log
    }

    /// True when this VM has a passt and it is no longer running.
    fn passt_exited(&mut self) -> bool {
        self.passt
            .as_mut()
            .is_some_and(|p| !matches!(p.try_wait(), Ok(None)))
    }

    /// Stops passt (it also exits by itself once QEMU is gone) and reaps it.
    fn stop_passt(&mut self) {
        if let Some(p) = self.passt.as_mut() {
            let _ = p.start_kill();
            for _ in 0..100 {
                if !matches!(p.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn early_exit(&self, status: ExitStatus) -> VmError {
        VmError::EarlyExit {
            name: self.name.clone(),
            status: status.to_string(),
            stderr: tail_of(&self.stderr_log, STDERR_TAIL),
        }
    }

    fn wait_err(&self) -> impl FnOnce(std::io::Error) -> VmError {
        let name = self.name.clone();
        move |source| VmError::Wait { name, source }
    }

    /// Waits until QEMU serves the control monitor and reports a status.
    async fn wait_ready(&mut self, limit: Duration) -> Result<(), VmError> {
        let deadline = Instant::now() + limit;
        let mut last = None;
        loop {
            if let Some(status) = self.child.try_wait().map_err(self.wait_err())? {
                self.exited = true;
                return Err(self.early_exit(status));
            }
            if Instant::now() >= deadline {
                self.kill().await;
                return Err(VmError::NotReady {
                    name: self.name.clone(),
                    waited: limit,
                    source: last,
                });
            }
            if self.control_socket.exists() {
                let ready = async {
                    let mut c = QmpClient::connect(&self.control_socket, self.qmp_timeout).await?;
                    c.query_status().await?;
                    Ok::<_, QmpError>(c)
                };
                match ready.await {
                    Ok(c) => {
                        self.control = Some(c);
                        return Ok(());
                    }
                    Err(e) => {
                        // QEMU may be exiting (e.g. a port clash): give it a moment to finish.
                        if let Ok(status) =
                            tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await
                        {
                            let status = status.map_err(self.wait_err())?;
                            self.exited = true;
                            return Err(self.early_exit(status));
                        }
                        last = Some(e);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn control(&mut self) -> Result<&mut QmpClient, QmpError> {
        if self.control.as_ref().is_none_or(QmpClient::is_broken) {
            self.control = None;
            self.control = Some(QmpClient::connect(&self.control_socket, self.qmp_timeout).await?);
        }
        Ok(self.control.as_mut().expect("just set"))
    }

    async fn wait_exit(&mut self, limit: Duration) -> Result<bool, VmError> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => {
                let status = status.map_err(self.wait_err())?;
                self.exited = true;
                tracing::debug!(vm = %self.name, %status, "QEMU exited");
                self.stop_passt();
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    fn kill_group(&self) {
        if let (false, Some(pid)) = (self.exited, self.pid)
            && let Ok(pid) = i32::try_from(pid)
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Vm for QemuVm {
    fn name(&self) -> &str {
        &self.name
    }

    fn ssh_addr(&self) -> SocketAddr {
        self.forwarded(22).expect("port 22 is always forwarded")
    }

    fn forwarded(&self, guest_port: u16) -> Option<SocketAddr> {
        self.forwards
            .iter()
            .find(|(g, _)| *g == guest_port)
            .map(|(_, h)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *h)))
    }

    fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    fn serial_tail(&self, lines: usize) -> Vec<String> {
        let text = crate::console_text(&tail_of(&self.serial_log, 256 * 1024));
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|l| (*l).to_owned())
            .collect()
    }

    fn console_is_silent(&self) -> bool {
        self.started.elapsed() >= self.silent_after
            && fs_err::metadata(&self.serial_log).map_or(true, |m| m.len() == 0)
    }

    fn accel(&self) -> Accel {
        self.accel.accel
    }

    fn accel_reason(&self) -> &str {
        &self.accel.reason
    }

    fn qmp(&self) -> BoxFuture<'_, Result<QmpClient, VmError>> {
        Box::pin(self.connect_qmp())
    }

    fn guest_agent(&self, timeout: Duration) -> BoxFuture<'_, Result<QgaClient, VmError>> {
        Box::pin(self.connect_guest_agent(timeout))
    }

    fn power_off(&mut self, timeout: Duration) -> BoxFuture<'_, Result<(), VmError>> {
        Box::pin(self.press_power_button(timeout))
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.kill_now())
    }

    fn disk(&self) -> &Path {
        &self.disk
    }
}

impl QemuVm {
    /// [`Vm::qmp`].
    async fn connect_qmp(&self) -> Result<QmpClient, VmError> {
        QmpClient::connect(&self.qmp_socket, self.qmp_timeout)
            .await
            .map_err(|source| VmError::Qmp {
                name: self.name.clone(),
                source,
            })
    }

    /// [`Vm::guest_agent`].
    async fn connect_guest_agent(&self, timeout: Duration) -> Result<QgaClient, VmError> {
        let Some(path) = &self.qga_socket else {
            return Err(VmError::NoGuestAgentChannel {
                name: self.name.clone(),
            });
        };
        QgaClient::connect(path, timeout)
            .await
            .map_err(|source| VmError::GuestAgent {
                name: self.name.clone(),
                source,
            })
    }

    /// [`Vm::power_off`].
    async fn press_power_button(&mut self, timeout: Duration) -> Result<(), VmError> {
        if self.exited {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        // Press the button again now and then: a guest still booting may miss the first press.
        while Instant::now() < deadline {
            match self.control().await {
                Ok(c) => {
                    if let Err(e) = c.system_powerdown().await {
                        tracing::debug!(vm = %self.name, error = %e, "system_powerdown failed");
                    }
                }
                Err(e) => tracing::debug!(vm = %self.name, error = %e, "QMP unavailable"),
            }
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(20));
            if self.wait_exit(slice).await? {
                tracing::info!(vm = %self.name, "VM powered off");
                return Ok(());
            }
        }
        tracing::warn!(vm = %self.name, "guest did not power off; quitting QEMU");
        if let Ok(c) = self.control().await {
            let _ = c.quit().await;
        }
        if !self.wait_exit(Duration::from_secs(10)).await? {
            self.kill_now().await;
        }
        Err(VmError::PowerOffForced {
            name: self.name.clone(),
            waited: timeout,
        })
    }

    /// [`Vm::kill`].
    async fn kill_now(&mut self) {
        if self.exited {
            self.stop_passt();
            return;
        }
        self.kill_group();
        let _ = self.child.start_kill();
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            self.exited = true;
        }
        self.stop_passt();
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        self.stop_passt();
        if self.exited {
            return;
        }
        // The child is not reaped yet (`exited` is false), so its pid is still ours.
        self.kill_group();
        // Reap it (SIGKILL takes milliseconds) so no zombie is left; tokio's `kill_on_drop`
        // reaps in the background otherwise.
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                self.exited = true;
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Where util-linux's `setpriv` is looked for.
const SETPRIV: &str = "/usr/bin/setpriv";

/// A command that runs `program` so that it gets SIGKILL when kib dies, however it dies
/// (SIGKILL, OOM, a closed terminal; issue #16.6): through `setpriv --pdeathsig KILL`
/// (util-linux; it sets PR_SET_PDEATHSIG and execs, so the pid stays QEMU's). `unsafe` is
/// denied in this workspace, which rules out calling prctl in a pre_exec hook. Without
/// setpriv, `program` is started directly (Ctrl-C and SIGTERM still stop it).
///
/// The death signal follows the thread that spawned the child: kib spawns QEMU from a tokio
/// worker (or the main) thread, which lives as long as the runtime.
pub fn parent_death_command(program: &Path) -> Command {
    // Only for a program that exists, so that a missing QEMU stays a spawn error (with its
    // hint) instead of setpriv's exit status.
    if Path::new(SETPRIV).is_file() && find_program(program).is_some() {
        let mut cmd = Command::new(SETPRIV);
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// `program` itself when it has a `/`, else its first match on `PATH`.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::{NoCloud, Seed};
    use kib_manifest::Hint as _;

    fn plan(accel: Accel) -> LaunchPlan {
        LaunchPlan {
            accel,
            cpu_model: "max".into(),
            forwards: vec![(22, 40022), (6443, 40443)],
            control_socket: "/w/qmp-control.sock".into(),
            qmp_socket: "/w/qmp.sock".into(),
            qga_socket: "/w/qga.sock".into(),
            serial_log: "/w/serial.log".into(),
            seed_image: None,
            ovmf: None,
            passt_fd: None,
        }
    }

    fn joined(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn value_after<'a>(args: &'a [OsString], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].to_str().unwrap())
            .collect()
    }

    #[test]
    fn argv_for_an_isolated_tcg_vm() {
        let mut spec = VmSpec::new("b1", "/d/disk.qcow2", "/w");
        spec.seed = Some(Seed::from(NoCloud::new("i", "h", "")));
        spec.watchdog = true;
        let mut p = plan(Accel::Tcg);
        p.seed_image = Some("/w/seed.img".into());
        let args = qemu_args(&spec, &p);
        let s = joined(&args);
        assert_eq!(value_after(&args, "-machine"), ["q35"]);
        assert_eq!(value_after(&args, "-accel"), ["tcg,thread=multi"]);
        assert_eq!(value_after(&args, "-cpu"), ["max"]);
        assert_eq!(value_after(&args, "-smp"), ["2"]);
        assert_eq!(value_after(&args, "-m"), ["2048M"]);
        assert!(s.contains("-nodefaults"));
        assert_eq!(
            value_after(&args, "-drive"),
            [
                "if=none,id=disk0,format=qcow2,cache=unsafe,discard=unmap,detect-zeroes=unmap,file=/d/disk.qcow2",
                "if=none,id=seed0,format=raw,readonly=on,file=/w/seed.img",
            ]
        );
        assert!(s.contains("virtio-blk-pci,drive=disk0,bootindex=1"));
        assert!(s.contains("virtio-blk-pci,drive=seed0"));
        assert_eq!(
            value_after(&args, "-netdev"),
            [
                "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40443-:6443"
            ]
        );
        assert!(s.contains("virtio-net-pci,netdev=net0"));
        assert_eq!(
            value_after(&args, "-mon"),
            ["chardev=qmpctl,mode=control", "chardev=qmp,mode=control"]
        );
        assert!(s.contains("socket,id=qmp,server=on,wait=off,path=/w/qmp.sock"));
        assert!(s.contains("file,id=serial0,path=/w/serial.log"));
        assert_eq!(value_after(&args, "-serial"), ["chardev:serial0"]);
        assert!(value_after(&args, "-device").contains(&"i6300esb"));
        assert!(s.contains("virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"));
        assert!(s.contains("socket,id=qga0,server=on,wait=off,path=/w/qga.sock"));
        assert!(s.contains("virtio-rng-pci,rng=rng0"));
        assert!(!s.contains("pflash"));
    }

    #[test]
    fn argv_for_an_outbound_kvm_uefi_vm_without_extras() {
        let mut spec = VmSpec::new("b,2", "/d/a,b.qcow2", "/w");
        spec.network = Network::Outbound;
        spec.firmware = Firmware::Uefi;
        spec.guest_agent = false;
        let mut p = plan(Accel::Kvm);
        p.cpu_model = "host".into();
        p.forwards.truncate(1);
        p.ovmf = Some(("/o/CODE.fd".into(), "/w/VARS.fd".into()));
        p.passt_fd = Some(7);
        let args = qemu_args(&spec, &p);
        let s = joined(&args);
        assert_eq!(value_after(&args, "-accel"), ["kvm"]);
        assert_eq!(value_after(&args, "-cpu"), ["host"]);
        assert_eq!(value_after(&args, "-name"), ["b,,2"]);
        // passt, not slirp: no 10.0.2.2 to the host's loopback; passt does the forwards.
        assert_eq!(
            value_after(&args, "-netdev"),
            ["stream,id=net0,server=off,addr.type=fd,addr.str=7"]
        );
        assert!(s.contains("virtio-net-pci,netdev=net0"));
        assert!(!s.contains("hostfwd"));
        assert!(s.contains("file=/d/a,,b.qcow2"), "commas are escaped: {s}");
        assert!(s.contains("if=pflash,format=raw,unit=0,readonly=on,file=/o/CODE.fd"));
        assert!(s.contains("if=pflash,format=raw,unit=1,file=/w/VARS.fd"));
        assert!(!s.contains("i6300esb"));
        assert!(!s.contains("guest_agent"));
        assert!(!s.contains("seed0"));
    }

    #[test]
    fn outbound_host_is_slirp_without_restrict_and_outbound_without_passt_fails_closed() {
        let mut spec = VmSpec::new("b", "/d/disk.qcow2", "/w");
        spec.network = Network::OutboundHost;
        let args = qemu_args(&spec, &plan(Accel::Tcg));
        assert_eq!(
            value_after(&args, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40443-:6443"]
        );
        // `Outbound` is passt's job; a plan without passt must not fall back to open slirp.
        spec.network = Network::Outbound;
        let args = qemu_args(&spec, &plan(Accel::Tcg));
        assert!(value_after(&args, "-netdev")[0].starts_with("user,id=net0,restrict=on,"));
    }

    #[test]
    fn passt_argv_forwards_loopback_ports_and_never_maps_the_gateway() {
        let args = passt_args(5, &[(22, 40022), (6443, 40443)], &[]);
        assert_eq!(
            joined(&args),
            "-f -q -F 5 -t 127.0.0.1/40022:22 -t 127.0.0.1/40443:6443 -u none --no-map-gw"
        );
        let args = passt_args(5, &[(22, 40022)], &["192.0.2.53".parse().unwrap()]);
        assert_eq!(
            joined(&args),
            "-f -q -F 5 -t 127.0.0.1/40022:22 -D 192.0.2.53 -u none --no-map-gw"
        );
    }

    #[test]
    fn a_loopback_only_resolv_conf_hands_passt_systemd_resolveds_upstreams() {
        let stub = "# systemd-resolved stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\n";
        let upstream = "nameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver 127.0.0.1\n";
        assert_eq!(
            dns_servers(stub, Some(upstream)),
            ["192.0.2.53".parse::<IpAddr>().unwrap()]
        );
        assert!(dns_servers(stub, None).is_empty());
        // A real resolver in /etc/resolv.conf: passt reads it itself.
        assert!(dns_servers("nameserver 10.255.255.53\n", Some(upstream)).is_empty());
    }

    #[test]
    fn loopback_listeners_are_read_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:AFDE 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(listeners_in(text), [45022]);
    }

    /// Real passt (Debian package `passt`): it listens on the forwarded loopback port, and it
    /// exits by itself once QEMU's end of the socket pair closes (so it dies with QEMU).
    #[tokio::test]
    async fn passt_forwards_and_exits_when_qemus_end_closes() {
        let dir = tempfile::tempdir().unwrap();
        let runner = QemuRunner::new();
        let port = free_ports(1).unwrap()[0];
        let log = dir.path().join("passt.log");
        let (mut child, qemu_end) = runner
            .start_passt("t", &[(22, port)], &log)
            .await
            .expect("passt starts (apt-get install passt)");
        assert!(loopback_listeners().contains(&port));
        assert!(child.try_wait().unwrap().is_none());
        drop(qemu_end);
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("passt exits once QEMU's end is closed")
            .unwrap();
        assert!(status.success(), "{status}: {}", passt_stderr(&log));
        assert!(!loopback_listeners().contains(&port));
    }

    #[tokio::test]
    async fn missing_passt_is_a_spawn_error_that_says_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let runner = QemuRunner {
            passt: dir.path().join("no-passt"),
            ..QemuRunner::new()
        };
        let mut spec = VmSpec::new("x", dir.path().join("d.qcow2"), dir.path().join("w"));
        spec.accel = crate::AccelRequest::Tcg;
        spec.network = Network::Outbound;
        let err = runner.start(spec).await.unwrap_err();
        assert!(matches!(err, VmError::PasstSpawn { .. }), "{err:?}");
        let hint = err.hint().unwrap();
        assert!(hint.contains("apt-get install passt"), "{hint}");
        assert!(hint.contains("--network outbound-host"), "{hint}");
    }

    #[test]
    fn free_ports_differ() {
        let p = free_ports(4).unwrap();
        let mut q = p.clone();
        q.sort();
        q.dedup();
        assert_eq!(q.len(), 4);
    }

    #[tokio::test]
    async fn missing_binary_is_a_spawn_error_with_hint() {
        let dir = tempfile::tempdir().unwrap();
        let runner = QemuRunner {
            qemu: dir.path().join("no-qemu"),
            ..QemuRunner::new()
        };
        let mut spec = VmSpec::new("x", dir.path().join("d.qcow2"), dir.path().join("w"));
        spec.accel = crate::AccelRequest::Tcg;
        let err = runner.start(spec).await.unwrap_err();
        assert!(matches!(err, VmError::Spawn { .. }), "{err:?}");
        assert!(err.hint().unwrap().contains("install QEMU"));
    }
}
