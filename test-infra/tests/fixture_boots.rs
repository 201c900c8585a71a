//! Boots the fixture image under QEMU (TCG) with a vfat NoCloud seed labelled `CIDATA` and
//! `restrict=on` user networking, and logs in over SSH as the user the seed creates.
//!
//! Run: `cargo test -p kib-test-infra --features test-vm -- --nocapture`
#![cfg(feature = "test-vm")]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kib_test_infra::fixture_image;

/// How long the guest may take to accept SSH; `KIB_TEST_SSH_TIMEOUT` (seconds) overrides it on a
/// host whose CPUs are busy with other work (TCG boot time grows with the host's load).
fn ssh_timeout() -> Duration {
    let secs = std::env::var("KIB_TEST_SSH_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(240);
    Duration::from_secs(secs)
}
/// The overlay's virtual size: twice the fixture's, so that growing the root fs is visible.
const OVERLAY_SIZE: &str = "4G";

/// Kills QEMU when dropped (also when the test panics) and then prints the serial log tail.
struct Qemu {
    child: Child,
    serial: PathBuf,
    stderr: PathBuf,
}

impl Drop for Qemu {
    #[expect(
        clippy::print_stderr,
        reason = "a failing VM test shows what the guest said"
    )]
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.serial).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!(
                "---- serial log tail ({}) ----\n{tail}\n----",
                self.serial.display()
            );
            let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            eprintln!("---- QEMU stderr ----\n{stderr}\n----");
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (hint: run scripts/setup-host.sh)"));
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ssh(key: &Path, port: u16, command: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-i"])
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "-p",
            &port.to_string(),
            "tester@127.0.0.1",
            command,
        ])
        .stdin(Stdio::null());
    cmd
}

/// Builds a vfat NoCloud seed labelled `CIDATA` holding `user-data` and `meta-data`.
fn vfat_seed(dir: &Path, public_key: &str) -> PathBuf {
    let user_data = dir.join("user-data");
    let meta_data = dir.join("meta-data");
    std::fs::write(
        &user_data,
        format!(
            "#cloud-config\nusers:\n  - name: tester\n    shell: /bin/bash\n    \
             sudo: ALL=(ALL) NOPASSWD:ALL\n    ssh_authorized_keys:\n      - {public_key}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        &meta_data,
        format!(
            "instance-id: kib-fixture-{}\nlocal-hostname: fixture\n",
            std::process::id()
        ),
    )
    .unwrap();
    let seed = dir.join("seed.img");
    run(Command::new("mkfs.vfat")
        .args(["-n", "CIDATA", "-C"])
        .arg(&seed)
        .arg("2048"));
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&seed)
        .arg(&user_data)
        .arg(&meta_data)
        .arg("::"));
    seed
}

// The builder's VM tests and `kib build`'s end-to-end test boot the fixture on every CI run;
// this one proves the fixture alone, with host tools only, for debugging the fixture script:
// `cargo test -p kib-test-infra --features test-vm -- --ignored`.
#[test]
#[ignore = "duplicates the builder's VM tests in CI; run it alone when changing the fixture script"]
fn fixture_boots_with_vfat_nocloud_seed_and_restricted_network() {
    let started = Instant::now();
    let image = fixture_image().unwrap_or_else(|e| {
        let mut msg = format!("fixture image: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            msg.push_str(&format!("\n  Caused by: {cause}"));
            source = cause.source();
        }
        if let Some(hint) = e.hint() {
            msg.push_str(&format!("\n\nhint: {hint}"));
        }
        panic!("{msg}")
    });
    eprintln!(
        "fixture image {} ready after {:?}",
        image.display(),
        started.elapsed()
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let overlay = dir.join("overlay.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&image)
        .arg(&overlay)
        .arg(OVERLAY_SIZE));

    let key = dir.join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kib-test", "-f"])
        .arg(&key));
    let public_key = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let seed = vfat_seed(dir, public_key.trim());

    let port = free_port();
    let serial = dir.join("serial.log");
    let stderr = dir.join("qemu.stderr");
    let qemu_started = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        .args(["-nographic", "-monitor", "none", "-no-reboot"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed.display()
        ))
        .arg("-netdev")
        .arg(format!(
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"
        ))
        // romfile= drops iPXE's option ROM (its Ctrl-B prompt costs seconds of boot).
        .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("cannot start qemu-system-x86_64 (hint: run scripts/setup-host.sh)");
    let mut qemu = Qemu {
        child,
        serial,
        stderr,
    };

    let timeout = ssh_timeout();
    loop {
        if let Some(status) = qemu.child.try_wait().unwrap() {
            panic!("QEMU exited early ({status})");
        }
        let out = ssh(&key, port, "true").output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            qemu_started.elapsed() < timeout,
            "no SSH login as tester on 127.0.0.1:{port} within {timeout:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let boot = qemu_started.elapsed();
    eprintln!("SSH login as tester after {boot:?} (TCG)");

    let out = |cmd: &str| {
        let output = run(&mut ssh(&key, port, cmd));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    // growpart + resize2fs ran: the 2 GiB fixture's root fs fills the 4 GiB overlay.
    let size: u64 = out("df -B1 --output=size / | tail -n1").parse().unwrap();
    eprintln!("root fs size: {size} bytes");
    assert!(size > 3 << 30, "root fs did not grow: {size} bytes");
    // The seed was found on the vfat CIDATA disk, the user has sudo, networkd set up eth0.
    let status = out("sudo -n cloud-init status --wait --long");
    eprintln!("cloud-init status:\n{status}");
    assert!(status.contains("status: done"), "{status}");
    assert!(status.contains("DataSourceNoCloud"), "{status}");
    let seed_fs = out("sudo -n blkid -s LABEL -s TYPE /dev/vdb");
    eprintln!("seed disk: {seed_fs}");
    assert!(
        seed_fs.contains("CIDATA") && seed_fs.contains("vfat"),
        "{seed_fs}"
    );
    let addr = out("ip -4 -o addr show dev eth0");
    eprintln!("eth0: {addr}");
    assert!(addr.contains("10.0.2.15"), "{addr}");
    eprintln!("hostname: {}", out("hostname"));
    drop(qemu);
    eprintln!("total {:?}", started.elapsed());
}
