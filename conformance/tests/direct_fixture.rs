//! The `direct` profile against the raw Debian fixture (`--features test-vm`, one VM at a
//! time: `--test-threads=1`).
//!
//! The fixture has cloud-init (ConfigDrive), sshd, qemu-guest-agent, auditd, watchdog and
//! nftables installed but was never through kib's playbook. What the checks say about it
//! with BIOS (watchdog, firewall and audit FAIL for their reasons, generalized PASSes) is
//! asserted by the CLI run in `tests/cli/conformance.rs`, which CI runs: one fixture boot for
//! both. This file keeps what only the library shows: the UEFI boot failure.
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
