//! `kib conformance`: argument errors (always), and the direct profile on the raw Debian
//! fixture (`--features test-vm`): the report says which checks FAIL because the fixture was
//! never provisioned by kib's playbook, and the command exits 1.

use std::process::{Command, Output};

fn kib(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kib"))
        .arg("conformance")
        .args(args)
        .env("KIB_NO_PROGRESS", "1")
        .output()
        .expect("run kib")
}

#[test]
fn a_missing_image_is_an_error_not_a_report() {
    let out = kib(&["/nonexistent/node.qcow2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(out.stdout.is_empty(), "no report without a run");
}

#[test]
fn the_cluster_profile_needs_a_kubernetes_version() {
    let out = kib(&["--profile", "cluster", "registry.example/kib/node:v1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--kubernetes-version"), "{stderr}");
}

#[test]
fn a_missing_check_script_fails_before_anything_boots() {
    let image = kib_test_infra::repo_root().join("Cargo.toml");
    let out = kib(&[
        image.to_str().unwrap(),
        "--check-script",
        "/nonexistent/site-check.sh",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Failed to read the check script `/nonexistent/site-check.sh`"),
        "{stderr}"
    );
    assert!(!stderr.contains("==> VM up"), "no VM for a typo: {stderr}");
}

#[test]
fn check_scripts_belong_to_the_direct_profile() {
    let out = kib(&[
        "--profile",
        "cluster",
        "--kubernetes-version",
        "v1.37.1",
        "--check-script",
        "x.sh",
        "registry.example/kib/node:v1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("direct profile only"), "{stderr}");
}

#[test]
fn bad_timeout_is_a_usage_error() {
    let out = kib(&["--timeout", "soon", "x.qcow2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));
}

/// The raw fixture: cloud-init, disk growth, the guest agent and generalization PASS; the
/// watchdog, firewall and audit checks FAIL (the playbook never configured them); the kubeadm
/// checks SKIP. The exit code is 1 and the JSON/JUnit files agree with the table.
#[cfg(feature = "test-vm")]
#[test]
fn direct_profile_on_the_raw_fixture_exits_1_with_a_report() {
    let image =
        kib_test_infra::fixture_image().unwrap_or_else(|e| panic!("{e}; hint: {:?}", e.hint()));
    let dir = tempfile::Builder::new()
        .prefix("kc-cli-")
        .tempdir_in("/tmp")
        .unwrap();
    let json = dir.path().join("report.json");
    let junit = dir.path().join("report.xml");
    // A site check that fails, and says why: its exit status and last lines are the reason.
    let site = dir.path().join("site-check.sh");
    fs_err::write(
        &site,
        "echo \"running as uid $(id -u)\"\necho 'kib-site-check: the agent is missing' >&2\nexit 3\n",
    )
    .unwrap();
    let t = std::time::Instant::now();
    let out = kib(&[
        image.to_str().unwrap(),
        "--check-script",
        site.to_str().unwrap(),
        "--accel",
        "tcg",
        "--timeout",
        "20m",
        "--work-dir",
        dir.path().join("w").to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!(
        "after {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        t.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{ctx}");
    assert!(stderr.contains("is not conformant"), "{ctx}");
    let report: serde_json::Value = serde_json::from_slice(&fs_err::read(&json).unwrap()).unwrap();
    let status = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].as_str().unwrap().to_owned())
    };
    for pass in ["boot", "cloud-init", "disk-resize", "guest-agent"] {
        assert_eq!(status(pass).as_deref(), Some("PASS"), "{pass}: {ctx}");
    }
    for fail in ["firewall", "audit", "script:site-check"] {
        assert_eq!(status(fail).as_deref(), Some("FAIL"), "{fail}: {ctx}");
    }
    let site_reason = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "script:site-check")
        .and_then(|c| c["reason"].as_str())
        .unwrap_or_default()
        .to_owned();
    for want in [
        "exit 3",
        "running as uid 0",
        "kib-site-check: the agent is missing",
    ] {
        assert!(site_reason.contains(want), "{want}: {site_reason}\n{ctx}");
    }
    for skip in ["versions", "images", "kubeadm-bootstrap", "node-ready"] {
        assert_eq!(status(skip).as_deref(), Some("SKIP"), "{skip}: {ctx}");
    }
    assert_eq!(report["firmware"], "bios");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("SKIP") && l.contains("no kubeadm in this image")),
        "{ctx}"
    );
    let xml = fs_err::read_to_string(&junit).unwrap();
    assert!(xml.contains("name=\"firewall\""), "{xml}");
    assert!(xml.contains("<failure"), "{xml}");
}
