//! Firewall and audit checks.

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncReadExt;

use super::{check_body, run, run_ok};
use crate::check::{Check, CheckResult};
use crate::context::Context;
use crate::manifest::{DEFAULT_CNI, Expect, overlay_ports};
use crate::userdata::BOOTSTRAP_SENTINEL;

/// What the probe listener sends to every client.
pub const PROBE_BANNER: &str = "kib-conformance-probe";

/// Reads up to 64 bytes from `addr` within `limit`: `Some(bytes)` when the peer sent something.
///
/// Under QEMU user networking the host side of a forward always accepts; whether the guest
/// accepted shows only in whether data comes back, so both probes read a banner.
async fn banner(addr: SocketAddr, limit: Duration) -> Option<String> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    tokio::time::timeout(limit, attempt).await.ok().flatten()
}

/// The guest side: a listener on `port` that sends [`PROBE_BANNER`], run as root in the
/// background (python3 is on every cloud image: cloud-init needs it).
fn listener_script(port: u16) -> String {
    format!(
        r#"cat > /run/kib-probe-{port}.py <<'PY'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {port}))
s.listen(8)
while True:
    c, _ = s.accept()
    try:
        c.sendall(b"{PROBE_BANNER}\n")
    finally:
        c.close()
PY
setsid python3 /run/kib-probe-{port}.py </dev/null >/dev/null 2>&1 &
for i in $(seq 50); do python3 -c 'import socket; s=socket.create_connection(("127.0.0.1", {port}), 1); print(s.recv(64).decode().strip())' 2>/dev/null && exit 0; sleep 0.2; done
exit 1"#
    )
}

/// Starts the probe listener on guest `port`, reads from the host whether it answers through
/// the forward, and stops it. `Ok(None)` when the port is busy in the guest (nothing to probe).
async fn probe_from_host(
    ctx: &Context,
    port: u16,
    limit: Duration,
) -> Result<Option<bool>, CheckResult> {
    let Some(addr) = ctx.forwarded(port) else {
        return Err(CheckResult::fail(format!(
            "guest port {port} is not forwarded (runner bug)"
        )));
    };
    let busy = run(
        ctx,
        &format!("ss -Hltn 'sport = :{port}' | grep -q LISTEN"),
        true,
    )
    .await?;
    if busy.success() {
        return Ok(None);
    }
    let local = run(ctx, &listener_script(port), true).await?;
    if !local.success() || !local.stdout.contains(PROBE_BANNER) {
        return Err(CheckResult::fail(format!(
            "could not start the probe listener on guest port {port} ({})",
            local.describe()
        )));
    }
    let outside = banner(addr, limit).await;
    let _ = run(
        ctx,
        &format!("pkill -f /run/kib-probe-{port}.py; rm -f /run/kib-probe-{port}.py"),
        true,
    )
    .await;
    Ok(Some(
        outside.as_deref().is_some_and(|b| b.contains(PROBE_BANNER)),
    ))
}

/// A TLS handshake (and any HTTP answer) from the host with the API server through the
/// forwarded port. The certificate is not verified: the handshake itself is the proof that
/// the API server, not a stand-in, is reachable; the kubeadm checks verify it with the CA.
async fn api_server_tls(ctx: &Context) -> Result<(), String> {
    let addr = ctx
        .forwarded(super::API_SERVER_PORT)
        .ok_or("the API server port is not forwarded (runner bug)")?;
    let http = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| format!("HTTP client: {}", super::chain(&e)))?;
    let url = format!("https://127.0.0.1:{}/version", addr.port());
    http.get(&url)
        .send()
        .await
        .map(drop)
        .map_err(|e| format!("GET {url}: {}", super::chain(&e)))
}

/// The nftables table kib's firewall role writes (`firewall_table` in
/// `playbook/roles/firewall/defaults/main.yml`).
pub const KIB_FIREWALL_TABLE: &str = "kib_filter";

/// Whether kib's ruleset opens the overlay ports of the CNI the image is made for (the
/// manifest's `cni`, else calico): `Some(problem)` when one is not open. User networking
/// cannot carry an overlay's UDP between nodes, so this reads the loaded ruleset's sets.
async fn overlay_problem(ctx: &Context) -> Result<Option<String>, CheckResult> {
    let cni = ctx
        .expected
        .as_ref()
        .and_then(|e| e.cni.clone())
        .unwrap_or_else(|| DEFAULT_CNI.to_owned());
    let Some(ports) = overlay_ports(&cni) else {
        return Ok(Some(format!(
            "the image is made for CNI `{cni}`, whose overlay ports kib does not know"
        )));
    };
    let mut closed = Vec::new();
    for (port, proto) in ports {
        let out = run(
            ctx,
            &format!("nft get element inet {KIB_FIREWALL_TABLE} {proto}_ports '{{ {port} }}'"),
            true,
        )
        .await?;
        if !out.success() {
            closed.push(format!("{port}/{proto}"));
        }
    }
    Ok((!closed.is_empty()).then(|| {
        format!(
            "the overlay ports of {cni} are not open in `inet {KIB_FIREWALL_TABLE}`: {}",
            closed.join(", ")
        )
    }))
}

/// Check 5: a listening port not on the firewall's list is unreachable from outside; 22 and
/// the API server's 6443 (CAPK's and CAPI's way in) are reachable.
pub struct Firewall;

impl Check for Firewall {
    fn name(&self) -> &'static str {
        "firewall"
    }
    fn title(&self) -> &'static str {
        "unlisted listening port unreachable from the host; 22/tcp, the API server on 6443/tcp and the CNI's overlay ports open"
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            let port = ctx.probe_port;
            let Some(outside) = probe_from_host(ctx, port, Duration::from_secs(8)).await? else {
                return Err(CheckResult::fail(format!(
                    "guest port {port} is already in use: nothing to probe the firewall with"
                )));
            };
            let mut problems = Vec::new();
            let api_port = super::API_SERVER_PORT;
            match ctx.expect {
                // A Kubernetes node: cloud-init (waited for by the cloud-init check) ran
                // `kubeadm init`, so the real API server must answer a TLS handshake from the
                // host. Without the bootstrap there is nothing to probe, and an unprobed port
                // proves nothing: that fails too.
                Expect::Kubernetes => {
                    let done = run(ctx, &format!("cat {BOOTSTRAP_SENTINEL}"), false).await?;
                    if done.out() != "success" {
                        problems.push(format!(
                            "{api_port}/tcp not probed: kubeadm did not bootstrap (no `{BOOTSTRAP_SENTINEL}`)"
                        ));
                    } else if let Err(e) = api_server_tls(ctx).await {
                        problems.push(format!(
                            "the API server on {api_port}/tcp does not answer from outside: {e}"
                        ));
                    }
                }
                // A generic image runs no API server: a stand-in listener shows whether the
                // firewall lets the port through.
                Expect::Generic => {
                    let api = probe_from_host(ctx, api_port, Duration::from_secs(15)).await?;
                    match api {
                        Some(true) => {}
                        Some(false) => problems.push(format!(
                            "{api_port}/tcp (the API server's port) is not reachable from outside"
                        )),
                        None => problems.push(format!(
                            "{api_port}/tcp is busy in a generic image: not probed"
                        )),
                    }
                }
            }
            if let Some(p) = overlay_problem(ctx).await? {
                problems.push(p);
            }
            let ssh = banner(ctx.vm_ssh_addr(), Duration::from_secs(15)).await;
            if outside {
                let rules = run(
                    ctx,
                    "nft list ruleset 2>/dev/null | grep -c 'hook input' || true",
                    true,
                )
                .await?;
                problems.push(format!(
                    "port {port}/tcp, listening and not on the list, is reachable from outside (input hooks in nftables: {})",
                    rules.out()
                ));
            }
            match ssh {
                Some(b) if b.starts_with("SSH-") => {}
                other => problems.push(format!(
                    "22/tcp did not answer with an SSH banner ({other:?})"
                )),
            }
            if problems.is_empty() {
                Ok(CheckResult::Pass)
            } else {
                Err(CheckResult::fail(problems.join("; ")))
            }
        })
    }
}

/// The rules file the playbook installs (`audit_rules_file` in
/// `playbook/roles/audit/defaults/main.yml`), shipped in the image: the expected rules.
///
/// Read from the image rather than from the build manifest because the manifest does not
/// record the rules; the file is what augenrules/audit-rules.service load at boot, so every
/// rule in it must be loaded, and a missing file is a failure of its own.
pub const KIB_AUDIT_RULES_FILE: &str = "/etc/audit/rules.d/60-kib-kubernetes.rules";

/// 6. auditd runs and every rule the playbook installed was loaded at boot.
pub struct Audit;

/// The rule lines of an audit rules file or of `auditctl -l`, whitespace-normalised, comments,
/// blank lines and control lines (`-D`, `-b`, `-f`, `-e`, `--backlog_wait_time`) dropped.
/// A watch's permissions are put in the order `auditctl -l` prints them (`r`, `w`, `x`, `a`):
/// the kernel keeps a bit mask, so `-p xwa` in a file is listed as `-p wxa`.
fn rule_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let mut words: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            for i in 1..words.len() {
                if words[i - 1] == "-p" {
                    let perms = &words[i];
                    words[i] = "rwxa".chars().filter(|c| perms.contains(*c)).collect();
                }
            }
            words.join(" ")
        })
        .filter(|l| l.starts_with("-w ") || l.starts_with("-a "))
        .collect()
}

impl Check for Audit {
    fn name(&self) -> &'static str {
        "audit"
    }
    fn title(&self) -> &'static str {
        "auditd active with every rule of kib's rules file loaded at boot (auditctl -l)"
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            let active = run(ctx, "systemctl is-active auditd", false).await?;
            if active.out() != "active" {
                return Err(CheckResult::fail(format!("auditd is `{}`", active.out())));
            }
            let file = run(ctx, &format!("cat {KIB_AUDIT_RULES_FILE}"), true).await?;
            let want = rule_lines(&file.stdout);
            if !file.success() || want.is_empty() {
                return Err(CheckResult::fail(format!(
                    "kib's audit rules file `{KIB_AUDIT_RULES_FILE}` is missing or holds no rule ({})",
                    file.describe()
                )));
            }
            // Nothing has loaded rules since boot but the boot itself (augenrules via
            // audit-rules.service or auditd's own start): what `auditctl -l` lists now is what
            // loads at boot.
            let loaded = run_ok(ctx, "auditctl -l", true).await?;
            let have = rule_lines(&loaded.stdout);
            let missing: Vec<&String> = want.iter().filter(|w| !have.contains(w)).collect();
            if !missing.is_empty() {
                return Err(CheckResult::fail(format!(
                    "{} of the {} rules in `{KIB_AUDIT_RULES_FILE}` are not loaded after boot: {}",
                    missing.len(),
                    want.len(),
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
            tracing::info!(rules = want.len(), "kib audit rules loaded");
            Ok(CheckResult::Pass)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn banner_distinguishes_silent_and_talking_peers() {
        let talking = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ta, sa) = (talking.local_addr().unwrap(), silent.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut c, _) = talking.accept().await.unwrap();
            c.write_all(b"SSH-2.0-x\r\n").await.unwrap();
        });
        tokio::spawn(async move {
            // Accepts and closes at once, as slirp does when the guest refuses.
            let (c, _) = silent.accept().await.unwrap();
            drop(c);
        });
        assert_eq!(
            banner(ta, Duration::from_secs(5)).await.as_deref(),
            Some("SSH-2.0-x\r\n")
        );
        assert_eq!(banner(sa, Duration::from_secs(5)).await, None);
    }

    #[test]
    fn audit_watch_permissions_compare_in_auditctl_order() {
        let file = "## kib\n-w /usr/bin/kubelet -p xwa -k kib-kubelet\n-D\n-w /etc/kubernetes  -p wa -k kib\n";
        let listed = "-w /usr/bin/kubelet -p wxa -k kib-kubelet\n-w /etc/kubernetes -p wa -k kib\n";
        assert_eq!(rule_lines(file), rule_lines(listed));
        assert_ne!(
            rule_lines("-w /usr/bin/kubelet -p xa -k kib-kubelet"),
            rule_lines(listed)[..1]
        );
    }

    #[test]
    fn listener_script_is_valid_sh() {
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(listener_script(19999))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
