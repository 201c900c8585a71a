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
        "--expect",
        "generic",
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

/// The raw fixture, declared generic (`--expect generic`): cloud-init, disk growth, the guest
/// agent and generalization PASS; the watchdog, firewall and audit checks FAIL for the right
/// reasons (the playbook never configured them); the Kubernetes checks SKIP as not applicable
/// and the opt-in ones as not asked for. The exit code is 1 and the JSON/JUnit files agree
/// with the table. (This run also carries the assertions of the library's former fixture test,
/// so CI boots the fixture once for both.)
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
        "--expect",
        "generic",
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
    let reason = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["reason"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    for pass in [
        "boot",
        "cloud-init",
        "disk-resize",
        "guest-agent",
        "generalized",
    ] {
        assert_eq!(status(pass).as_deref(), Some("PASS"), "{pass}: {ctx}");
    }
    // What only kib's playbook sets up FAILs, each for its own reason.
    for (fail, why) in [
        (
            "watchdog",
            "(i6300ESB timer) is present but no process holds it",
        ),
        ("firewall", "reachable from outside"),
        ("audit", "60-kib-kubernetes.rules` is missing"),
    ] {
        assert_eq!(status(fail).as_deref(), Some("FAIL"), "{fail}: {ctx}");
        assert!(reason(fail).contains(why), "{fail}: {why}\n{ctx}");
    }
    for opt_in in ["node-ready", "watchdog-fires"] {
        assert_eq!(status(opt_in).as_deref(), Some("SKIP"), "{opt_in}: {ctx}");
    }
    assert!(reason("watchdog-fires").starts_with("opt-in"), "{ctx}");
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
    assert_eq!(report["accel"], "tcg", "{ctx}");
    for skip in ["versions", "images", "kubeadm-bootstrap", "node-ready"] {
        assert_eq!(status(skip).as_deref(), Some("SKIP"), "{skip}: {ctx}");
    }
    assert_eq!(report["firmware"], "bios");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("SKIP") && l.contains("not a Kubernetes image")),
        "{ctx}"
    );
    let xml = fs_err::read_to_string(&junit).unwrap();
    assert!(xml.contains("name=\"firewall\""), "{xml}");
    assert!(xml.contains("<failure"), "{xml}");
}

/// The fixture with a build manifest that requests Kubernetes: the image claims to be a node
/// but has no kubeadm. Nothing may turn that into a pass: the user data's runcmd fails as in
/// a cluster, versions and kubeadm-bootstrap FAIL, the exit code is 1.
#[cfg(feature = "test-vm")]
#[test]
fn a_kubernetes_manifest_on_an_image_without_kubeadm_fails() {
    let image =
        kib_test_infra::fixture_image().unwrap_or_else(|e| panic!("{e}; hint: {:?}", e.hint()));
    let dir = tempfile::Builder::new()
        .prefix("kc-k8s-")
        .tempdir_in("/tmp")
        .unwrap();
    let manifest = dir.path().join("build-manifest.json");
    fs_err::write(
        &manifest,
        serde_json::json!({
            "created": "2026-11-30T00:00:00Z",
            "base_image": {"source": "fixture", "name": "fixture",
                "checksum": "sha256:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"},
            "kubernetes": {"requested": "1.37", "resolved": "1.37.1"},
            "output": {"file": "node.qcow2", "format": "qcow2", "compression": "zstd",
                "sha256": "sha256:0000000000000000000000000000000000000000000000000000000000000002",
                "virtual_size": 1, "file_size": 1},
            "collected": {"files": {}, "versions": {
                "kubernetes": "1.37.1", "containerd": "2.1.4", "crictl": "v1.37.0",
                "cni": "calico", "pause_image": "registry.k8s.io/pause:3.10",
                "images": ["quay.io/calico/node:v3.31.4"]}}
        })
        .to_string(),
    )
    .unwrap();
    let json = dir.path().join("report.json");
    let t = std::time::Instant::now();
    let out = kib(&[
        image.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--accel",
        "tcg",
        "--timeout",
        "20m",
        "--work-dir",
        dir.path().join("w").to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!(
        "after {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        t.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{ctx}");
    assert!(stderr.contains("expecting a kubernetes image"), "{ctx}");
    let report: serde_json::Value = serde_json::from_slice(&fs_err::read(&json).unwrap()).unwrap();
    let status = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(status("boot").as_deref(), Some("PASS"), "{ctx}");
    for fail in ["versions", "images", "kubeadm-bootstrap", "cloud-init"] {
        assert_eq!(status(fail).as_deref(), Some("FAIL"), "{fail}: {ctx}");
    }
    assert_eq!(report["passed"], false, "{ctx}");
}

#[test]
fn the_removed_insecure_flag_names_skip_tls_verify() {
    let out = kib(&["--insecure", "registry.example/kib/node:v1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--skip-tls-verify"), "{stderr}");
    assert!(out.stdout.is_empty(), "no report without a run");
}
