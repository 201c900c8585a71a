//! VM runner tests with real QEMU and the fixture image (Debian 12 with cloud-init, sshd and
//! qemu-guest-agent). Run them one at a time:
//!
//! ```text
//! cargo test -p kib-vm --features test-vm --test vm -- --test-threads=1
//! ```
//!
//! On a host without usable KVM (or a PVM host) they run under TCG: allow a few minutes each.
#![cfg(feature = "test-vm")]
// The helpers print timings and progress; cargo test shows them with `--nocapture`.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kib_vm::seed::{ConfigDrive, NoCloud, Seed, build_user_data};
use kib_vm::ssh::{KeyPair, SshOptions, wait_for_ssh};
use kib_vm::{Accel, AccelRequest, Network, QemuRunner, QemuVm, Runner, Vm, VmError, VmSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A public key for the seed's user; nothing logs in with it (the SSH client is tested elsewhere).
const TEST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMZp8sCKAq4xFJ0wWZk5Hcbx8m1yLQ6pDkVg2aTn0Ezy kib-vm-test";
/// The time the SSH banner may take; `KIB_TEST_BOOT_TIMEOUT_SECS` raises it on a loaded host
/// (under TCG, other builds on the same cores slow the guest down several times).
fn banner_timeout() -> Duration {
    let secs = std::env::var("KIB_TEST_BOOT_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    Duration::from_secs(secs.unwrap_or(240))
}
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(120);

/// A qcow2 overlay of the fixture image in `dir`.
fn overlay(dir: &Path) -> PathBuf {
    let base = kib_test_infra::fixture::fixture_image().unwrap_or_else(|e| {
        panic!(
            "the fixture image is not available: {e:?}\nhint: {}",
            e.hint().unwrap_or_default()
        )
    });
    let disk = dir.join("disk.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&disk)
        .arg("4G")
        .output()
        .expect("qemu-img must be installed (scripts/setup-host.sh)");
    assert!(
        out.status.success(),
        "qemu-img create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    disk
}

fn spec(dir: &Path, name: &str, seed: Seed) -> VmSpec {
    let mut spec = VmSpec::new(name, overlay(dir), dir.join("work"));
    spec.seed = Some(seed);
    spec.accel = AccelRequest::Auto;
    spec.watchdog = true;
    spec.guest_agent = true;
    spec.cpus = 2;
    spec.memory_mib = 1024;
    spec
}

/// What to print when a check fails: the end of the console and whether it stayed silent.
fn console(vm: &QemuVm) -> String {
    let serial = fs_err::read(vm.serial_log()).unwrap_or_default();
    let net: Vec<String> = String::from_utf8_lossy(&serial)
        .lines()
        .filter(|l| l.contains("ci-info") && (l.contains("Device") || l.contains(" | ")))
        .take(12)
        .map(str::to_owned)
        .collect();
    format!(
        "console silent: {}\n--- cloud-init network table ---\n{}\n--- last serial lines ---\n{}\n--- qemu stderr ---\n{}\n--- passt stderr (outbound only) ---\n{}",
        vm.console_is_silent(),
        net.join("\n"),
        vm.serial_tail(40).join("\n"),
        fs_err::read_to_string(vm.stderr_log()).unwrap_or_default(),
        fs_err::read_to_string(vm.passt_log()).unwrap_or_default()
    )
}

/// Sends an SSH client identification and reads the server's banner from the forwarded port;
/// returns it once it starts with `SSH-2.0`. The client speaks first, as OpenSSH and russh do:
/// Debian bookworm's passt (0.0~git20230309) acknowledges the guest's SYN-ACK only once the
/// host side sends data, so a client that only listens sees the banner seconds late.
async fn wait_for_banner(vm: &QemuVm, timeout: Duration) -> String {
    let addr = vm.ssh_addr();
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(b"SSH-2.0-kib-vm-test\r\n").await?;
            let mut buf = vec![0u8; 256];
            let n = s.read(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(banner)) if banner.starts_with("SSH-2.0") => return banner,
            Ok(Ok(other)) => last = format!("read {other:?}"),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no banner within 10 s".to_owned(),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    panic!(
        "no SSH banner on {addr} within {timeout:?} (last: {last})\nhint: on a loaded host, raise `KIB_TEST_BOOT_TIMEOUT_SECS`\n{}",
        console(vm)
    );
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs_err::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs_err::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && !cmdline.contains("cargo") && !cmdline.contains("/deps/vm-")
        {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

fn assert_gone(pid: u32, work: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU (pid {pid}) is still running"
    );
    let left = processes_mentioning(&work.to_string_lossy());
    assert!(left.is_empty(), "processes of the test remain: {left:#?}");
}

fn expect_tcg_on_pvm_host(vm: &QemuVm) {
    println!("accelerator: {} ({})", vm.accel(), vm.accel_reason());
    if Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(vm.accel(), Accel::Tcg, "a PVM host must fall back to TCG");
    }
}

/// Boots with a NoCloud seed: QMP status, SSH banner, guest agent, ACPI power-off, no leftovers.
#[tokio::test]
async fn nocloud_boot_ssh_guest_agent_and_power_off() {
    let dir = tempfile::tempdir().unwrap();
    let seed = NoCloud::new(
        "kib-vm-test-1",
        "kib-nocloud",
        build_user_data("kib", TEST_KEY),
    );
    let spec = spec(dir.path(), "kib-vm-test", Seed::from(seed));
    let work = spec.work_dir.clone();

    let started = Instant::now();
    let mut vm = QemuRunner::new().start(spec).await.expect("QEMU starts");
    let pid = vm.pid().expect("QEMU runs");
    expect_tcg_on_pvm_host(&vm);

    let mut qmp = vm.qmp().await.expect("QMP connects");
    let status = qmp.query_status().await.expect("query-status");
    assert!(status.running, "{status:?}");
    assert_eq!(status.status, "running");
    drop(qmp);

    let banner = wait_for_banner(&vm, banner_timeout()).await;
    let to_ssh = started.elapsed();
    println!("boot to SSH banner: {to_ssh:.1?} ({})", banner.trim());
    assert!(!vm.console_is_silent(), "the console printed the boot");

    // The agent starts with the rest of multi-user.target: give it a little time after sshd.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut qga = loop {
        match vm.guest_agent(Duration::from_secs(10)).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => println!("guest agent not ready yet: {e}"),
            Err(e) => panic!("guest agent: {e:?}\n{}", console(&vm)),
        }
    };
    qga.ping().await.expect("guest-ping");
    let info = qga.info().await.expect("guest-info");
    assert!(!info.version.is_empty());
    assert!(
        info.supported_commands
            .iter()
            .any(|c| c.name == "guest-ping" && c.enabled),
        "{info:?}"
    );
    let os = qga.os_info().await.expect("guest-get-osinfo");
    assert_eq!(os.id.as_deref(), Some("debian"), "{os:?}");
    let ifaces = qga
        .network_interfaces()
        .await
        .expect("guest-network-get-interfaces");
    assert!(ifaces.iter().any(|i| i.name == "lo"), "{ifaces:?}");
    assert_eq!(
        qga.host_name().await.expect("guest-get-host-name"),
        "kib-nocloud"
    );
    drop(qga);

    let t = Instant::now();
    match vm.power_off(POWER_OFF_TIMEOUT).await {
        Ok(()) => {}
        Err(e) => panic!("power_off: {e:?}\n{}", console(&vm)),
    }
    println!("power-off (ACPI): {:.1?}", t.elapsed());
    assert!(vm.disk().is_file());
    assert_eq!(vm.pid(), None);
    assert_gone(pid, &work);
}

/// Boots with a ConfigDrive seed (as CAPK attaches one): cloud-init finds it and sets the hostname.
#[tokio::test]
#[ignore = "CI covers this seed already: every `kib conformance` run boots with a ConfigDrive and logs in as its `capk` user \
            (tests/cli/conformance.rs, tests/cli/build.rs); a third boot would cost CI ~100 s under TCG. \
            Run: cargo test -p kib-vm --features test-vm --test vm configdrive -- --ignored"]
async fn configdrive_seed_is_found_by_cloud_init() {
    let dir = tempfile::tempdir().unwrap();
    let seed = ConfigDrive::new("kib-configdrive", build_user_data("capk", TEST_KEY));
    let spec = spec(dir.path(), "kib-vm-test-cd", Seed::from(seed));
    let work = spec.work_dir.clone();

    let started = Instant::now();
    let mut vm = QemuRunner::new().start(spec).await.expect("QEMU starts");
    let pid = vm.pid().expect("QEMU runs");
    expect_tcg_on_pvm_host(&vm);
    wait_for_banner(&vm, banner_timeout()).await;
    println!("boot to SSH banner: {:.1?}", started.elapsed());

    let deadline = Instant::now() + Duration::from_secs(120);
    let hostname = loop {
        let got = async {
            vm.guest_agent(Duration::from_secs(10))
                .await?
                .host_name()
                .await
                .map_err(|source| VmError::GuestAgent {
                    name: "cd".into(),
                    source,
                })
        };
        match got.await {
            Ok(h) if h == "kib-configdrive" => break h,
            Ok(h) if Instant::now() >= deadline => break h,
            Err(e) if Instant::now() >= deadline => panic!("guest agent: {e:?}\n{}", console(&vm)),
            _ => tokio::time::sleep(Duration::from_secs(3)).await,
        }
    };
    assert_eq!(
        hostname,
        "kib-configdrive",
        "cloud-init did not use the ConfigDrive\n{}",
        console(&vm)
    );

    let t = Instant::now();
    vm.power_off(POWER_OFF_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("power_off: {e:?}\n{}", console(&vm)));
    println!("power-off (ACPI): {:.1?}", t.elapsed());
    assert_gone(pid, &work);
}

/// Dropping a running VM kills QEMU (its whole process group).
#[tokio::test]
async fn dropping_a_vm_kills_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let seed = NoCloud::new(
        "kib-vm-test-drop",
        "kib-drop",
        build_user_data("kib", TEST_KEY),
    );
    let spec = spec(dir.path(), "kib-vm-test-drop", Seed::from(seed));
    let work = spec.work_dir.clone();
    let vm = QemuRunner::new().start(spec).await.expect("QEMU starts");
    let pid = vm.pid().expect("QEMU runs");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(vm);
    assert_gone(pid, &work);
}

/// QEMU failing at start is an `EarlyExit` error that carries its stderr.
#[tokio::test]
async fn early_exit_carries_qemu_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = VmSpec::new(
        "kib-vm-test-missing",
        dir.path().join("missing.qcow2"),
        dir.path().join("work"),
    );
    spec.accel = AccelRequest::Tcg;
    match QemuRunner::new().start(spec).await {
        Err(VmError::EarlyExit { stderr, .. }) => {
            assert!(stderr.contains("missing.qcow2"), "{stderr}")
        }
        Err(other) => panic!("expected EarlyExit, got {other:?}"),
        Ok(_) => panic!("QEMU started without its disk"),
    }
}

/// What the host's loopback service says to whoever connects: a guest that prints it reached
/// the host's 127.0.0.1.
const LOOPBACK_TOKEN: &str = "kib-host-loopback-service";

/// A TCP service on the host's 127.0.0.1 (as a local registry, database or metadata proxy
/// would be) that counts the connections it accepts and greets each with [`LOOPBACK_TOKEN`].
async fn loopback_service() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    // Stopped with the test's runtime.
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            println!("host loopback service: connection from {peer}");
            let _ = s.write_all(format!("{LOOPBACK_TOKEN}\n").as_bytes()).await;
        }
    });
    (port, accepted)
}

/// Boots the fixture with `network` and, from inside the guest, connects to 10.0.2.2:`port`
/// and to its default gateway:`port`, where only the host's 127.0.0.1 listens. Returns what
/// the guest printed and how many connections the host service accepted.
async fn probe_host_loopback(network: Network, name: &str) -> (String, usize) {
    let (port, accepted) = loopback_service().await;
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate();
    let seed = NoCloud::new(name, name, build_user_data("kib", &key.public_openssh()));
    let mut spec = spec(dir.path(), name, Seed::from(seed));
    spec.network = network;
    spec.watchdog = false;
    let work = spec.work_dir.clone();
    let started = Instant::now();
    let mut vm = QemuRunner::new().start(spec).await.expect("QEMU starts");
    let pid = vm.pid().expect("QEMU runs");
    let passt = vm.passt_pid();
    assert_eq!(passt.is_some(), network == Network::Outbound);
    expect_tcg_on_pvm_host(&vm);
    // The banner comes through the port forward (passt's or slirp's): the guest's network is up.
    wait_for_banner(&vm, banner_timeout()).await;
    println!("{network:?}: boot to SSH banner: {:.1?}", started.elapsed());
    let script = format!(
        r#"gw=$(ip -4 route show default | awk '{{print $3; exit}}')
echo "guest: $(ip -4 -o addr show scope global | awk '{{print $2, $4}}') gateway $gw"
for t in 10.0.2.2 "$gw"; do
  if out=$(timeout 10 bash -c "exec 3<>/dev/tcp/$t/{port} && head -c 64 <&3" 2>&1); then
    echo "connected $t:{port}: $out"
  else
    echo "no connection to $t:{port}: $out"
  fi
done
if timeout 10 bash -c 'exec 3<>/dev/tcp/deb.debian.org/80' 2>/dev/null; then
  echo "internet: deb.debian.org:80 reachable"
else
  echo "internet: deb.debian.org:80 not reachable"
fi
"#
    );
    // Over SSH as a build logs in: behind passt the client speaks first (banner wait off).
    let opts = SshOptions {
        banner_timeout: if network.client_speaks_first() {
            Duration::ZERO
        } else {
            SshOptions::default().banner_timeout
        },
        ..SshOptions::default()
    };
    let session = match wait_for_ssh(vm.ssh_addr(), "kib", &key, &opts, banner_timeout()).await {
        Ok(s) => s,
        Err(e) => panic!("SSH login: {e:?}\n{}", console(&vm)),
    };
    println!("{network:?}: SSH login: {:.1?}", started.elapsed());
    let mut lines = Vec::new();
    let status = session
        .exec(&script, None, &mut |_, line| lines.push(line.to_owned()))
        .await
        .expect("the probe runs over SSH");
    session.close().await;
    let out = lines.join("\n");
    println!("{network:?}: guest probe ({status}):\n{out}");
    let t = Instant::now();
    vm.power_off(POWER_OFF_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("power_off: {e:?}\n{}", console(&vm)));
    println!("power-off (ACPI): {:.1?}", t.elapsed());
    assert_gone(pid, &work);
    if let Some(passt) = passt {
        assert!(
            !Path::new(&format!("/proc/{passt}")).exists(),
            "passt (pid {passt}) outlived its VM"
        );
    }
    (out, accepted.load(std::sync::atomic::Ordering::SeqCst))
}

/// Issue #16.11: with `outbound` networking (the build default) the guest reaches no service
/// on the host's 127.0.0.1, neither through 10.0.2.2 (slirp's host alias) nor through its
/// gateway (passt's, with `--no-map-gw`).
#[tokio::test]
async fn outbound_guest_cannot_reach_the_hosts_loopback() {
    let (out, accepted) = probe_host_loopback(Network::Outbound, "kib-vm-outbound").await;
    assert!(out.contains("gateway "), "the probe ran: {out}");
    assert!(
        !out.contains(LOOPBACK_TOKEN),
        "the guest reached 127.0.0.1: {out}"
    );
    assert_eq!(accepted, 0, "the host's loopback service accepted: {out}");
}

/// The documented switch `outbound-host` (QEMU user networking) keeps the path to the host's
/// 127.0.0.1 for a local proxy or mirror: the same probe reaches the service through 10.0.2.2.
/// This is what `outbound` did before issue #16.11 was fixed, so it shows that the probe above
/// detects the hole.
#[tokio::test]
async fn outbound_host_guest_reaches_the_hosts_loopback() {
    let (out, accepted) = probe_host_loopback(Network::OutboundHost, "kib-vm-outbound-host").await;
    assert!(
        out.contains("connected 10.0.2.2:") && out.contains(LOOPBACK_TOKEN),
        "the guest did not reach 127.0.0.1 through 10.0.2.2: {out}"
    );
    assert!(
        accepted >= 1,
        "the host's loopback service accepted nothing: {out}"
    );
}
