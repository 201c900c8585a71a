//! The `direct` profile against the raw Debian fixture (`--features test-vm`, one VM at a
//! time: `--test-threads=1`).
//!
//! The fixture has cloud-init (ConfigDrive), sshd, qemu-guest-agent, auditd, watchdog and
//! nftables installed but was never through kib's playbook: no firewall table, no kib audit
//! rules, the watchdog daemon not pointed at `/dev/watchdog`. So this is also the suite's
//! negative test: those checks must FAIL, for the right reason, and the run must not pass.
#![cfg(feature = "test-vm")]

use std::time::{Duration, Instant};

use kib_conformance::Status;
use kib_conformance::direct::{self, DirectOptions, NullReporter};
use kib_vm::{AccelRequest, Firmware};

fn fixture() -> std::path::PathBuf {
    kib_test_infra::fixture_image()
        .unwrap_or_else(|e| panic!("the fixture image is missing: {e}; hint: {:?}", e.hint()))
}

fn work_dir() -> tempfile::TempDir {
    // A short path: the VM's sockets live there (107-byte limit).
    tempfile::Builder::new()
        .prefix("kc-")
        .tempdir_in("/tmp")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[allow(clippy::print_stderr, reason = "the table is the test's evidence")]
#[ignore = "CI runs the same boot through `kib conformance` (tests/cli/conformance.rs); run with --ignored to debug the library alone"]
async fn raw_fixture_passes_boot_checks_and_fails_unprovisioned_ones() {
    let image = fixture();
    let work = work_dir();
    let mut opts = DirectOptions::new(image.to_str().unwrap(), work.path());
    opts.accel = AccelRequest::Tcg;
    opts.timeout = Duration::from_secs(20 * 60);
    let t = Instant::now();
    let run = direct::run(opts, &NullReporter)
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", e.hint()));
    let report = run.report;
    let table = report.to_table();
    eprintln!("wall time {:?}\n{table}", t.elapsed());
    let check = |name: &str| {
        report
            .check(name)
            .unwrap_or_else(|| panic!("no check {name}\n{table}"))
    };
    for name in [
        "boot",
        "cloud-init",
        "disk-resize",
        "guest-agent",
        "generalized",
    ] {
        assert_eq!(
            check(name).status,
            Status::Pass,
            "{name} must pass on the fixture\n{table}"
        );
    }
    // Negative: what only kib's playbook sets up.
    let fw = check("firewall");
    assert_eq!(fw.status, Status::Fail, "{table}");
    assert!(
        fw.reason
            .as_deref()
            .unwrap()
            .contains("reachable from outside"),
        "{table}"
    );
    let audit = check("audit");
    assert_eq!(audit.status, Status::Fail, "{table}");
    assert!(
        audit
            .reason
            .as_deref()
            .unwrap()
            .contains("no audit rule with a `kib-*` key"),
        "{table}"
    );
    let wd = check("watchdog");
    assert_eq!(wd.status, Status::Fail, "{table}");
    assert!(
        wd.reason
            .as_deref()
            .unwrap()
            .contains("no process holds it"),
        "{table}"
    );
    for name in ["versions", "images", "kubeadm-bootstrap", "node-ready"] {
        assert_eq!(check(name).status, Status::Skip, "{table}");
        assert_eq!(
            check(name).reason.as_deref(),
            Some("no kubeadm in this image"),
            "{table}"
        );
    }
    assert_eq!(check("watchdog-fires").status, Status::Skip);
    assert!(!report.passed, "a run with failures never passes");
    assert_eq!(report.firmware, "bios");
    assert_eq!(report.accel, "tcg");
}

/// The fixture boots with GRUB on BIOS only: under UEFI the boot check FAILs with the
/// firmware's reason, quickly, and every other check is skipped.
#[tokio::test(flavor = "multi_thread")]
#[allow(clippy::print_stderr, reason = "the table is the test's evidence")]
async fn bios_only_fixture_fails_under_uefi_with_a_clear_reason() {
    let image = fixture();
    let work = work_dir();
    let mut opts = DirectOptions::new(image.to_str().unwrap(), work.path());
    opts.accel = AccelRequest::Tcg;
    opts.firmware = Firmware::Uefi;
    opts.timeout = Duration::from_secs(6 * 60);
    let t = Instant::now();
    let report = direct::run(opts, &NullReporter).await.unwrap().report;
    let table = report.to_table();
    eprintln!("wall time {:?}\n{table}", t.elapsed());
    let boot = report.check("boot").unwrap();
    assert_eq!(boot.status, Status::Fail, "{table}");
    let reason = boot.reason.as_deref().unwrap();
    assert!(reason.contains("uefi firmware"), "{table}");
    assert!(reason.contains("nothing to boot"), "{table}");
    assert_eq!(report.firmware, "uefi");
    assert!(
        report
            .checks
            .iter()
            .skip(1)
            .all(|c| c.status == Status::Skip),
        "{table}"
    );
    assert!(!report.passed);
}
