//! Every check against a scripted guest ([`crate::testing`]): for each, a guest that meets the
//! requirement where one can be scripted, and guests that do not, which must FAIL, including
//! the vacuous cases a gate must not pass (a tool missing from the manifest, an empty image
//! list, softdog, one kib rule only, a Kubernetes image without kubeadm).

use super::*;
use crate::check::Status;
use crate::direct::{NullReporter, run_one};
use crate::manifest::Expect;
use crate::report::CheckReport;
use crate::testing::{ScriptedGuest, context, k8s_manifest};

async fn outcome(check: &dyn Check, ctx: &Context) -> CheckReport {
    run_one(check, ctx, &NullReporter).await
}

fn reason(r: &CheckReport) -> &str {
    r.reason.as_deref().unwrap_or("")
}

#[track_caller]
fn assert_fail(r: &CheckReport, want: &str) {
    assert_eq!(r.status, Status::Fail, "{r:?}");
    assert!(reason(r).contains(want), "{want:?} not in {r:?}");
}

// --- cloud-init --------------------------------------------------------------------------

const CI_DONE: &str = "status: done\nextended_status: done\nboot_status_code: enabled-by-generator\ndetail: DataSourceConfigDrive [net,ver=2][source=/dev/vdb]\nerrors: []\nrecoverable_errors: {}\n";

#[tokio::test]
async fn cloud_init_passes_on_the_configdrive() {
    let g = ScriptedGuest::new()
        .ok("cloud-init status", CI_DONE)
        .ok("cloud-init query", "openstack\n");
    let r = outcome(&CloudInit, &context(g, Expect::Generic)).await;
    assert_eq!(r.status, Status::Pass, "{r:?}");
}

#[tokio::test]
async fn cloud_init_failure_shows_the_detail_when_errors_are_empty() {
    let g = ScriptedGuest::new().answer(
        "cloud-init status",
        1,
        "status: error\nextended_status: error - running\ndetail: Cloud-init enabled by systemd generator; failed modules: scripts_user\nerrors: []\nrecoverable_errors: {}\n",
        "",
    );
    let r = outcome(&CloudInit, &context(g, Expect::Generic)).await;
    assert_fail(
        &r,
        "detail: Cloud-init enabled by systemd generator; failed modules: scripts_user",
    );
}

#[tokio::test]
async fn cloud_init_fails_on_another_datasource() {
    let g = ScriptedGuest::new()
        .ok("cloud-init status", CI_DONE)
        .ok("cloud-init query", "nocloud\n");
    assert_fail(
        &outcome(&CloudInit, &context(g, Expect::Generic)).await,
        "did not use the ConfigDrive",
    );
}

// --- disk-resize -------------------------------------------------------------------------

fn partition(disk_sectors: u64, part_sectors: u64, fs_bytes: u64) -> String {
    format!(
        "source=/dev/vda1\npart=vda1\ndisk=vda\ndisk_sectors={disk_sectors}\npart_start=2048\npart_sectors={part_sectors}\nfs_bytes={fs_bytes}\n"
    )
}

#[tokio::test]
async fn disk_resize_passes_when_grown_and_fails_when_not() {
    let sectors = (4u64 << 30) / 512;
    let grown = ScriptedGuest::new().ok(
        "findmnt",
        &partition(sectors, sectors - 2048 - 33, 4_200_000_000),
    );
    let r = outcome(&DiskResize, &context(grown, Expect::Generic)).await;
    assert_eq!(r.status, Status::Pass, "{r:?}");
    // growpart did not run: the partition still ends where the 2 GiB image ended.
    let small = (2u64 << 30) / 512;
    let not = ScriptedGuest::new().ok("findmnt", &partition(sectors, small - 2048, 2_000_000_000));
    assert_fail(
        &outcome(&DiskResize, &context(not, Expect::Generic)).await,
        "growpart did not run",
    );
    // The partition grew but the filesystem did not.
    let fs = ScriptedGuest::new().ok(
        "findmnt",
        &partition(sectors, sectors - 2048 - 33, 2_000_000_000),
    );
    assert_fail(
        &outcome(&DiskResize, &context(fs, Expect::Generic)).await,
        "resize_rootfs did not run",
    );
}

// --- guest-agent -------------------------------------------------------------------------

#[tokio::test]
async fn guest_agent_fails_without_an_agent() {
    let r = outcome(&GuestAgent, &context(ScriptedGuest::new(), Expect::Generic)).await;
    assert_fail(&r, "no guest agent");
}

// --- watchdog ----------------------------------------------------------------------------

#[tokio::test]
async fn watchdog_fails_on_softdog() {
    let g = ScriptedGuest::new()
        .ok(
            "/sys/class/watchdog",
            "watchdog0|Software Watchdog|active\n",
        )
        .ok("/proc/[0-9]*", "612 watchdog /dev/watchdog\n")
        .ok("lsmod", "softdog 16384 1\n");
    let r = outcome(&Watchdog, &context(g, Expect::Generic)).await;
    assert_fail(&r, "no i6300ESB watchdog");
    assert!(reason(&r).contains("Software Watchdog"), "{r:?}");
}

#[tokio::test]
async fn watchdog_fails_when_nobody_holds_the_i6300esb() {
    // softdog is held, the i6300ESB is not: petting the wrong device does not count.
    let g = ScriptedGuest::new()
        .ok(
            "/sys/class/watchdog",
            "watchdog0|Software Watchdog|active\nwatchdog1|i6300ESB timer|inactive\n",
        )
        .ok("/proc/[0-9]*", "612 watchdog /dev/watchdog0\n")
        .ok("systemctl is-active watchdog", "active\nenabled\n");
    let r = outcome(&Watchdog, &context(g, Expect::Generic)).await;
    assert_fail(
        &r,
        "watchdog1 (i6300ESB timer) is present but no process holds it",
    );
}

#[tokio::test]
async fn watchdog_fails_when_the_i6300esb_is_held_but_not_started() {
    let g = ScriptedGuest::new()
        .ok("/sys/class/watchdog", "watchdog0|i6300ESB timer|inactive\n")
        .ok("/proc/[0-9]*", "612 watchdog /dev/watchdog\n");
    assert_fail(
        &outcome(&Watchdog, &context(g, Expect::Generic)).await,
        "state is `inactive`",
    );
}

#[tokio::test]
async fn watchdog_passes_when_a_daemon_pets_the_i6300esb() {
    let g = ScriptedGuest::new()
        .ok("/sys/class/watchdog", "watchdog0|i6300ESB timer|active\n")
        .ok("/proc/[0-9]*", "612 watchdog /dev/watchdog\n");
    let r = outcome(&Watchdog, &context(g, Expect::Generic)).await;
    assert_eq!(r.status, Status::Pass, "{r:?}");
}

#[tokio::test]
async fn watchdog_fires_is_opt_in_and_fails_without_qmp() {
    let ctx = context(ScriptedGuest::new(), Expect::Kubernetes);
    let r = outcome(&WatchdogFires, &ctx).await;
    assert_eq!(r.status, Status::Skip, "{r:?}");
    assert!(reason(&r).starts_with(OPT_IN), "{r:?}");
    let mut ctx = context(ScriptedGuest::new(), Expect::Kubernetes);
    ctx.watchdog_fire = true;
    assert_fail(&outcome(&WatchdogFires, &ctx).await, "no QMP");
}

// --- audit -------------------------------------------------------------------------------

const KIB_RULES: &str = "## kib\n-w /etc/kubernetes -p wa -k kib-kubernetes\n-w /usr/bin/kubelet -p xwa -k kib-kubelet\n-w /etc/containerd -p wa -k kib-containerd\n";

#[tokio::test]
async fn audit_fails_with_one_kib_rule_of_three() {
    let g = ScriptedGuest::new()
        .ok("systemctl is-active auditd", "active\n")
        .ok("60-kib-kubernetes.rules", KIB_RULES)
        .ok(
            "auditctl -l",
            "-w /etc/kubernetes -p wa -k kib-kubernetes\n",
        );
    let r = outcome(&Audit, &context(g, Expect::Generic)).await;
    assert_fail(&r, "2 of the 3 rules");
    assert!(
        reason(&r).contains("-w /usr/bin/kubelet -p wxa -k kib-kubelet"),
        "{r:?}"
    );
}

#[tokio::test]
async fn audit_fails_without_the_rules_file_and_when_auditd_is_down() {
    let g = ScriptedGuest::new()
        .ok("systemctl is-active auditd", "active\n")
        .answer(
            "60-kib-kubernetes.rules",
            1,
            "",
            "cat: No such file or directory",
        )
        .ok(
            "auditctl -l",
            "-w /etc/kubernetes -p wa -k kib-kubernetes\n",
        );
    assert_fail(
        &outcome(&Audit, &context(g, Expect::Generic)).await,
        "missing or holds no rule",
    );
    let g = ScriptedGuest::new().answer("systemctl is-active auditd", 3, "inactive\n", "");
    assert_fail(
        &outcome(&Audit, &context(g, Expect::Generic)).await,
        "auditd is `inactive`",
    );
}

#[tokio::test]
async fn audit_passes_when_every_rule_is_loaded() {
    let g = ScriptedGuest::new()
        .ok("systemctl is-active auditd", "active\n")
        .ok("60-kib-kubernetes.rules", KIB_RULES)
        .ok(
            "auditctl -l",
            "-a never,task\n-w /etc/kubernetes  -p wa -k kib-kubernetes\n-w /usr/bin/kubelet -p wxa -k kib-kubelet\n-w /etc/containerd -p wa -k kib-containerd\n",
        );
    let r = outcome(&Audit, &context(g, Expect::Generic)).await;
    assert_eq!(r.status, Status::Pass, "{r:?}");
}

// --- generalized -------------------------------------------------------------------------

fn generalized_guest(host_key_mtime: u64) -> ScriptedGuest {
    ScriptedGuest::new()
        .ok(
            "ssh_host_",
            &format!("/etc/ssh/ssh_host_ed25519_key {host_key_mtime} 1000\n"),
        )
        .ok(
            "/etc/machine-id",
            "0123456789abcdef0123456789abcdef\n1001 1000\n1\n",
        )
        .ok(
            "authorized_keys",
            "/home/capk/.ssh/authorized_keys\tssh-ed25519 AAAAtest kib-conformance\n",
        )
        .ok("/var/lib/cloud/instances", "iid-test\n---\n")
}

#[tokio::test]
async fn generalized_fails_on_a_build_host_key_and_passes_on_a_fresh_one() {
    let r = outcome(
        &Generalized,
        &context(generalized_guest(10), Expect::Generic),
    )
    .await;
    assert_fail(&r, "predates this boot");
    let r = outcome(
        &Generalized,
        &context(generalized_guest(1002), Expect::Generic),
    )
    .await;
    assert_eq!(r.status, Status::Pass, "{r:?}");
}

// --- versions ----------------------------------------------------------------------------

fn tools_guest() -> ScriptedGuest {
    ScriptedGuest::new()
        .ok("kubeadm version -o short", "v1.37.1\n")
        .ok("kubelet --version", "Kubernetes v1.37.1\n")
        .ok("kubectl version --client", "Client Version: v1.37.1\n")
        .ok(
            "containerd --version",
            "containerd github.com/containerd/containerd/v2 v2.1.4 abc\n",
        )
        .ok("crictl --version", "crictl version v1.37.0\n")
}

#[tokio::test]
async fn versions_pass_when_every_tool_matches() {
    let mut ctx = context(tools_guest(), Expect::Kubernetes);
    ctx.expected = Some(k8s_manifest());
    let r = outcome(&Versions, &ctx).await;
    assert_eq!(r.status, Status::Pass, "{r:?}");
}

#[tokio::test]
async fn versions_fail_when_a_tool_is_missing_from_the_manifest() {
    let mut ctx = context(tools_guest(), Expect::Kubernetes);
    let mut m = k8s_manifest();
    m.crictl = None;
    ctx.expected = Some(m);
    assert_fail(&outcome(&Versions, &ctx).await, "crictl: no version in");
}

#[tokio::test]
async fn versions_fail_on_a_kubernetes_image_without_kubeadm_or_manifest() {
    // kubeadm is gone from the image (the guest has no such command).
    let g = ScriptedGuest::new()
        .ok("kubelet --version", "Kubernetes v1.37.1\n")
        .ok("kubectl version --client", "Client Version: v1.37.1\n")
        .ok("containerd --version", "containerd v2.1.4\n")
        .ok("crictl --version", "crictl version v1.37.0\n");
    let mut ctx = context(g, Expect::Kubernetes);
    ctx.expected = Some(k8s_manifest());
    assert_fail(&outcome(&Versions, &ctx).await, "kubeadm is `exit 127");
    // No manifest: a required check that cannot run FAILs, it does not SKIP.
    let ctx = context(tools_guest(), Expect::Kubernetes);
    assert_fail(
        &outcome(&Versions, &ctx).await,
        "required, but could not run",
    );
}

// --- images ------------------------------------------------------------------------------

fn crictl_images(tags: &[&str]) -> String {
    serde_json::json!({"images": [{"repoTags": tags}]}).to_string()
}

#[tokio::test]
async fn images_fail_on_an_empty_expected_list() {
    let g = ScriptedGuest::new()
        .ok(
            "kubeadm config images list",
            "registry.k8s.io/kube-apiserver:v1.37.1\n",
        )
        .ok(
            "crictl images",
            &crictl_images(&["registry.k8s.io/kube-apiserver:v1.37.1"]),
        );
    let mut ctx = context(g, Expect::Kubernetes);
    let mut m = k8s_manifest();
    m.images.clear();
    ctx.expected = Some(m);
    assert_fail(&outcome(&Images, &ctx).await, "lists no pre-pulled image");
}

#[tokio::test]
async fn images_fail_when_one_is_missing_and_pass_when_all_are_there() {
    let guest = |tags: &[&str]| {
        ScriptedGuest::new()
            .ok(
                "kubeadm config images list",
                "registry.k8s.io/kube-apiserver:v1.37.1\n",
            )
            .ok("crictl images", &crictl_images(tags))
    };
    let mut ctx = context(
        guest(&["registry.k8s.io/kube-apiserver:v1.37.1"]),
        Expect::Kubernetes,
    );
    ctx.expected = Some(k8s_manifest());
    assert_fail(&outcome(&Images, &ctx).await, "registry.k8s.io/pause:3.10");
    let mut ctx = context(
        guest(&[
            "registry.k8s.io/kube-apiserver:v1.37.1",
            "registry.k8s.io/pause:3.10",
        ]),
        Expect::Kubernetes,
    );
    ctx.expected = Some(k8s_manifest());
    let r = outcome(&Images, &ctx).await;
    assert_eq!(r.status, Status::Pass, "{r:?}");
}

// --- kubeadm-bootstrap, node-ready ----------------------------------------------------------

#[tokio::test]
async fn bootstrap_fails_on_a_kubernetes_image_without_kubeadm() {
    let g = ScriptedGuest::new()
        .answer(
            "cat /run/cluster-api/bootstrap-success.complete",
            1,
            "",
            "cat: /run/cluster-api/bootstrap-success.complete: No such file or directory",
        )
        .ok(
            "cloud-init-output.log",
            "/var/lib/cloud/instance/scripts/runcmd: 3: kubeadm: not found\n",
        );
    let mut ctx = context(g, Expect::Kubernetes);
    ctx.expected = Some(k8s_manifest());
    let r = outcome(&Bootstrap, &ctx).await;
    assert_fail(&r, "kubeadm: not found");
}

#[tokio::test]
async fn node_ready_is_opt_in() {
    let r = outcome(
        &NodeReady,
        &context(ScriptedGuest::new(), Expect::Kubernetes),
    )
    .await;
    assert_eq!(r.status, Status::Skip, "{r:?}");
    assert!(reason(&r).starts_with(OPT_IN), "{r:?}");
}

#[tokio::test]
async fn node_ready_fails_when_the_cni_manifest_does_not_apply() {
    let manifest = tempfile::NamedTempFile::new().unwrap();
    fs_err::write(manifest.path(), "kind: NotAKind\n").unwrap();
    let g = ScriptedGuest::new().answer(
        "kubectl --kubeconfig /etc/kubernetes/admin.conf apply",
        1,
        "",
        "error: resource mapping not found for kind \"NotAKind\"",
    );
    let mut ctx = context(g, Expect::Kubernetes);
    ctx.expected = Some(k8s_manifest());
    ctx.cni_manifest = Some(manifest.path().to_owned());
    let r = outcome(&NodeReady, &ctx).await;
    assert_fail(&r, "resource mapping not found");
}

#[tokio::test]
async fn a_generic_image_lists_the_kubernetes_checks_as_not_applicable() {
    for check in [&Versions as &dyn Check, &Images, &Bootstrap, &NodeReady] {
        let r = outcome(check, &context(ScriptedGuest::new(), Expect::Generic)).await;
        assert_eq!(r.status, Status::Skip, "{r:?}");
        assert_eq!(reason(&r), NOT_KUBERNETES);
    }
}

// --- firewall ----------------------------------------------------------------------------

/// A host listener standing in for a forwarded guest port: it sends `banner` (or nothing, as
/// slirp does when the guest refuses) to every client.
async fn listener(banner: Option<&'static str>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            if let Some(b) = banner {
                use tokio::io::AsyncWriteExt;
                let _ = c.write_all(b.as_bytes()).await;
            }
        }
    });
    addr
}

/// A guest whose firewall drops the unlisted probe port, with the overlay ports of calico
/// open when `overlay_open`.
fn firewalled_guest(overlay_open: bool) -> ScriptedGuest {
    let g = ScriptedGuest::new()
        .answer("ss -Hltn", 1, "", "")
        .ok("kib-probe-", "kib-conformance-probe\n");
    if overlay_open {
        g.ok("nft get element", "")
    } else {
        g.answer(
            "nft get element",
            1,
            "",
            "Error: Could not process rule: No such file or directory",
        )
    }
}

async fn firewall_context(
    guest: ScriptedGuest,
    expect: Expect,
    api: std::net::SocketAddr,
) -> Context {
    let mut ctx = context(guest, expect);
    ctx.ssh_addr = listener(Some("SSH-2.0-OpenSSH_9.9\r\n")).await;
    ctx.forwards = vec![
        (ctx.probe_port, listener(None).await),
        (API_SERVER_PORT, api),
    ];
    ctx
}

#[tokio::test]
async fn firewall_passes_a_generic_image_with_the_ports_right() {
    let api = listener(Some("kib-conformance-probe\n")).await;
    let ctx = firewall_context(firewalled_guest(true), Expect::Generic, api).await;
    let r = outcome(&Firewall, &ctx).await;
    assert_eq!(r.status, Status::Pass, "{r:?}");
}

#[tokio::test]
async fn firewall_fails_when_the_unlisted_port_is_reachable() {
    let api = listener(Some("kib-conformance-probe\n")).await;
    let mut ctx = firewall_context(firewalled_guest(true), Expect::Generic, api).await;
    ctx.forwards[0].1 = listener(Some("kib-conformance-probe\n")).await;
    assert_fail(
        &outcome(&Firewall, &ctx).await,
        "19999/tcp, listening and not on the list, is reachable",
    );
}

#[tokio::test]
async fn firewall_fails_when_6443_was_not_probed_on_a_kubernetes_image() {
    // kubeadm did not bootstrap: the API server port cannot be proven open.
    let g = firewalled_guest(true).answer("bootstrap-success.complete", 1, "", "No such file");
    let ctx = firewall_context(g, Expect::Kubernetes, listener(None).await).await;
    assert_fail(&outcome(&Firewall, &ctx).await, "6443/tcp not probed");
}

#[tokio::test]
async fn firewall_fails_when_the_api_server_does_not_speak_tls_from_outside() {
    let g = firewalled_guest(true).ok("bootstrap-success.complete", "success\n");
    let ctx = firewall_context(g, Expect::Kubernetes, listener(None).await).await;
    assert_fail(
        &outcome(&Firewall, &ctx).await,
        "the API server on 6443/tcp does not answer",
    );
}

#[tokio::test]
async fn firewall_fails_when_the_cnis_overlay_ports_are_closed() {
    let api = listener(Some("kib-conformance-probe\n")).await;
    let ctx = firewall_context(firewalled_guest(false), Expect::Generic, api).await;
    assert_fail(
        &outcome(&Firewall, &ctx).await,
        "overlay ports of calico are not open",
    );
    assert!(reason(&outcome(&Firewall, &ctx).await).contains("4789/udp"));
    let api = listener(Some("kib-conformance-probe\n")).await;
    let mut ctx = firewall_context(firewalled_guest(false), Expect::Generic, api).await;
    let mut m = k8s_manifest();
    m.cni = Some("cilium".to_owned());
    ctx.expected = Some(m);
    let r = outcome(&Firewall, &ctx).await;
    assert_fail(&r, "8472/udp, 4240/tcp, 6081/udp");
}

#[tokio::test]
async fn firewall_fails_when_the_probe_port_is_not_forwarded() {
    let g = ScriptedGuest::new().answer("ss -Hltn", 1, "", "");
    assert_fail(
        &outcome(&Firewall, &context(g, Expect::Generic)).await,
        "is not forwarded",
    );
}

// --- the user's scripts ------------------------------------------------------------------

#[tokio::test]
async fn a_failing_script_fails_with_its_status_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.sh");
    fs_err::write(&path, "exit 3\n").unwrap();
    let check = ScriptCheck::read(&path).unwrap();
    let g =
        ScriptedGuest::new().answer("base64 -d | sudo -n bash -s", 3, "", "the agent is missing");
    let r = outcome(&check, &context(g, Expect::Generic)).await;
    assert_fail(&r, "exit 3: the agent is missing");
}
