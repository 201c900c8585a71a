//! Kubernetes checks: versions, pre-pulled images, the CABPK bootstrap and the node turning
//! Ready. Required of an image that claims to be a Kubernetes node (a missing kubeadm FAILs
//! them); SKIP on an image that claims to be generic.

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::future::BoxFuture;
use serde_json::Value;

use super::{OPT_IN, chain, check_body, kubernetes_required, need_kubernetes, run, run_ok};
use crate::check::{Check, CheckResult};
use crate::context::{Context, shell_quote};
use crate::manifest::{same_version, version_in};
use crate::userdata::{BOOTSTRAP_SENTINEL, CAPK_USER};

/// The API server port in the guest (forwarded to the host).
pub const API_SERVER_PORT: u16 = 6443;
/// The admin kubeconfig kubeadm writes.
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";

/// 8. Tool versions equal the build manifest's.
pub struct Versions;

impl Check for Versions {
    fn name(&self) -> &'static str {
        "versions"
    }
    fn title(&self) -> &'static str {
        "kubeadm/kubelet/kubectl/containerd/crictl versions equal the build manifest's"
    }
    fn can_run(&self, ctx: &Context) -> Result<(), String> {
        need_kubernetes(ctx)?;
        match &ctx.expected {
            None => Err(
                "no build-manifest.json next to the image (pass `--manifest`): nothing to compare the versions with"
                    .to_owned(),
            ),
            Some(_) => Ok(()),
        }
    }
    fn required(&self, ctx: &Context) -> bool {
        kubernetes_required(ctx)
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            let Some(e) = ctx.expected.as_ref() else {
                return Err(CheckResult::fail("no build manifest to compare with"));
            };
            let k8s = e.kubernetes.clone();
            let tools: Vec<(&str, &str, Option<String>)> = vec![
                ("kubeadm", "kubeadm version -o short", k8s.clone()),
                ("kubelet", "kubelet --version", k8s.clone()),
                (
                    "kubectl",
                    "kubectl version --client 2>/dev/null | head -n 1",
                    k8s,
                ),
                ("containerd", "containerd --version", e.containerd.clone()),
                ("crictl", "crictl --version", e.crictl.clone()),
            ];
            let mut problems = Vec::new();
            let mut seen = Vec::new();
            for (tool, cmd, want) in tools {
                // A tool the manifest does not name cannot be compared: that is a failure,
                // not a pass.
                let Some(want) = want else {
                    problems.push(format!(
                        "{tool}: no version in `{}` to compare with",
                        e.path.display()
                    ));
                    continue;
                };
                let out = run(
                    ctx,
                    &format!("PATH=$PATH:/usr/local/bin:/usr/local/sbin {cmd}"),
                    false,
                )
                .await?;
                let got = version_in(&out.stdout).unwrap_or_else(|| out.describe());
                if !out.success() || !same_version(&want, &out.stdout) {
                    problems.push(format!("{tool} is `{got}`, the manifest says `{want}`"));
                } else {
                    seen.push(format!("{tool} {got}"));
                }
            }
            tracing::info!(versions = ?seen, "versions");
            if problems.is_empty() {
                Ok(CheckResult::Pass)
            } else {
                Err(CheckResult::fail(problems.join("; ")))
            }
        })
    }
}

/// 9. The pre-pulled images are in containerd.
pub struct Images;

impl Check for Images {
    fn name(&self) -> &'static str {
        "images"
    }
    fn title(&self) -> &'static str {
        "pre-pulled images present in containerd (crictl images)"
    }
    fn can_run(&self, ctx: &Context) -> Result<(), String> {
        need_kubernetes(ctx)
    }
    fn required(&self, ctx: &Context) -> bool {
        kubernetes_required(ctx)
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            // The build records what it pre-pulled (the CNI's images, pause): an empty or
            // missing list proves nothing, so it fails rather than passing vacuously.
            let recorded = ctx
                .expected
                .as_ref()
                .map(|e| e.images.as_slice())
                .unwrap_or(&[]);
            if recorded.is_empty() {
                return Err(CheckResult::fail(match &ctx.expected {
                    Some(e) => format!(
                        "`{}` lists no pre-pulled image (versions.json `images`/`pause_image`)",
                        e.path.display()
                    ),
                    None => "no build manifest lists the pre-pulled images (pass `--manifest`)"
                        .to_owned(),
                }));
            }
            // The control-plane images of the image's own kubeadm, plus the manifest's list.
            let list = run_ok(
                ctx,
                "kubeadm config images list --kubernetes-version \"$(kubeadm version -o short)\" 2>/dev/null",
                false,
            )
            .await?;
            let mut want: Vec<String> = list
                .stdout
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            if let Some(e) = &ctx.expected {
                for i in &e.images {
                    if !want.contains(i) {
                        want.push(i.clone());
                    }
                }
            }
            if want.is_empty() {
                return Err(CheckResult::fail(
                    "kubeadm lists no control-plane image: nothing proves the pre-pull",
                ));
            }
            let out = run_ok(ctx, "PATH=$PATH:/usr/local/bin crictl images -o json", true).await?;
            let v: Value = serde_json::from_str(&out.stdout).map_err(|e| {
                CheckResult::fail(format!("`crictl images -o json` is not JSON: {e}"))
            })?;
            let have: Vec<String> = v["images"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|i| i["repoTags"].as_array().into_iter().flatten())
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            let missing: Vec<&String> = want
                .iter()
                .filter(|w| !have.iter().any(|h| same_image(w, h)))
                .collect();
            if missing.is_empty() {
                Ok(CheckResult::Pass)
            } else {
                Err(CheckResult::fail(format!(
                    "{} of {} images missing from containerd: {}",
                    missing.len(),
                    want.len(),
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        })
    }
}

/// Whether two references name the same image (`docker.io/library/` is implied).
fn same_image(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> String {
        let s = s.trim();
        let first = s.split('/').next().unwrap_or("");
        if s.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost") {
            s.to_owned()
        } else if s.contains('/') {
            format!("docker.io/{s}")
        } else {
            format!("docker.io/library/{s}")
        }
    }
    norm(a) == norm(b)
}

/// The parts of the admin kubeconfig the client needs. The client key is a secret: `Debug`
/// prints `<redacted>` for it.
struct AdminKubeconfig {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for AdminKubeconfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminKubeconfig")
            .field("ca", &format_args!("{} bytes", self.ca.len()))
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

fn parse_kubeconfig(text: &str) -> Result<AdminKubeconfig, String> {
    let v: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("admin.conf is not YAML: {e}"))?;
    let b64 = |node: &serde_yaml::Value, key: &str| -> Result<Vec<u8>, String> {
        let s = node[key]
            .as_str()
            .ok_or_else(|| format!("admin.conf has no `{key}`"))?;
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| format!("`{key}` is not base64: {e}"))
    };
    let cluster = &v["clusters"][0]["cluster"];
    let user = &v["users"][0]["user"];
    Ok(AdminKubeconfig {
        ca: b64(cluster, "certificate-authority-data")?,
        cert: b64(user, "client-certificate-data")?,
        key: b64(user, "client-key-data")?,
    })
}

/// A minimal Kubernetes API client (reqwest + rustls) through the forwarded API server port.
///
/// Not the `kube` crate: kube + k8s-openapi take minutes to compile on the 2-core build hosts
/// for two GET requests; this reads the same admin kubeconfig and speaks the same REST API.
struct ApiClient {
    http: reqwest::Client,
    base: String,
}

impl ApiClient {
    fn new(ctx: &Context, conf: &AdminKubeconfig) -> Result<Self, String> {
        let addr = ctx
            .forwarded(API_SERVER_PORT)
            .ok_or("the API server port is not forwarded")?;
        let ca =
            reqwest::Certificate::from_pem(&conf.ca).map_err(|e| format!("CA: {}", chain(&e)))?;
        let mut pem = conf.cert.clone();
        pem.push(b'\n');
        pem.extend_from_slice(&conf.key);
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| format!("client certificate: {}", chain(&e)))?;
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .tls_certs_only([ca])
            .identity(id)
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| format!("HTTP client: {}", chain(&e)))?;
        // 127.0.0.1 is in the API server certificate's SANs (see `userdata`).
        Ok(Self {
            http,
            base: format!("https://127.0.0.1:{}", addr.port()),
        })
    }

    async fn node(&self, name: &str) -> Result<Value, String> {
        let url = format!("{}/api/v1/nodes/{name}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", chain(&e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {}", chain(&e)))?;
        let body: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("GET {url}: not JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "GET {url}: {status} {}",
                body["message"].as_str().unwrap_or("")
            ));
        }
        Ok(body)
    }
}

fn node_ready(node: &Value) -> Option<(String, String)> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_owned(),
                c["message"].as_str().unwrap_or("").to_owned(),
            )
        })
}

async fn api_client(ctx: &Context) -> Result<ApiClient, CheckResult> {
    let conf = run_ok(ctx, &format!("cat {ADMIN_CONF}"), true).await?;
    let conf = parse_kubeconfig(&conf.stdout).map_err(CheckResult::Fail)?;
    ApiClient::new(ctx, &conf).map_err(CheckResult::Fail)
}

/// Check 10: the CABPK user data bootstrapped a control plane (checked the way CAPK does),
/// and the API server sees the node.
pub struct Bootstrap;

impl Check for Bootstrap {
    fn name(&self) -> &'static str {
        "kubeadm-bootstrap"
    }
    fn title(&self) -> &'static str {
        "CABPK `kubeadm init` wrote the sentinel (read as capk, as CAPK does) and the API server lists the node"
    }
    fn can_run(&self, ctx: &Context) -> Result<(), String> {
        need_kubernetes(ctx)
    }
    fn required(&self, ctx: &Context) -> bool {
        kubernetes_required(ctx)
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            // Exactly CAPK's check: `cat` as capk, output must be `success`.
            let out = run(ctx, &format!("cat {BOOTSTRAP_SENTINEL}"), false).await?;
            if out.out() != "success" {
                let log = run(ctx, "tail -n 5 /var/log/cloud-init-output.log", true).await?;
                return Err(CheckResult::fail(format!(
                    "`cat {BOOTSTRAP_SENTINEL}` as {CAPK_USER} gave `{}` ({}); cloud-init-output.log: {}",
                    out.out(),
                    out.describe(),
                    log.out().replace('\n', " | ")
                )));
            }
            let client = api_client(ctx).await?;
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                match client.node(&ctx.hostname).await {
                    Ok(n) => {
                        tracing::info!(node = %ctx.hostname, ready = ?node_ready(&n), "node registered");
                        return Ok(CheckResult::Pass);
                    }
                    Err(e) if Instant::now() >= deadline => {
                        return Err(CheckResult::fail(format!(
                            "the API server does not list node `{}`: {e}",
                            ctx.hostname
                        )));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(5)).await,
                }
            }
        })
    }
}

/// 11. With the CNI applied, the node turns Ready.
pub struct NodeReady;

impl Check for NodeReady {
    fn name(&self) -> &'static str {
        "node-ready"
    }
    fn title(&self) -> &'static str {
        "with the pre-pulled CNI applied, the node turns Ready"
    }
    fn can_run(&self, ctx: &Context) -> Result<(), String> {
        need_kubernetes(ctx)?;
        if ctx.cni_manifest.is_none() {
            return Err(format!("{OPT_IN} (`--cni-manifest`)"));
        }
        Ok(())
    }
    fn required(&self, _ctx: &Context) -> bool {
        false
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            let path = ctx.cni_manifest.as_ref().expect("can_run checked it");
            let manifest = fs_err::read(path).map_err(|e| {
                CheckResult::fail(format!("cannot read the CNI manifest: {}", chain(&e)))
            })?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(manifest);
            run_ok(
                ctx,
                &format!(
                    "echo {} | base64 -d > /run/kib-cni.yaml && kubectl --kubeconfig {ADMIN_CONF} apply -f /run/kib-cni.yaml",
                    shell_quote(&b64)
                ),
                true,
            )
            .await?;
            let client = api_client(ctx).await?;
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let last = match client.node(&ctx.hostname).await {
                    Ok(n) => match node_ready(&n) {
                        Some((s, _)) if s == "True" => return Ok(CheckResult::Pass),
                        Some((s, m)) => format!("Ready={s}: {m}"),
                        None => "no Ready condition".to_owned(),
                    },
                    Err(e) => e,
                };
                if Instant::now() >= deadline {
                    return Err(CheckResult::fail(format!(
                        "node `{}` not Ready after 600 s ({last})",
                        ctx.hostname
                    )));
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_normalise() {
        assert!(same_image(
            "registry.k8s.io/pause:3.10",
            "registry.k8s.io/pause:3.10"
        ));
        assert!(same_image("calico/node:v3", "docker.io/calico/node:v3"));
        assert!(same_image("busybox:1", "docker.io/library/busybox:1"));
        assert!(!same_image(
            "quay.io/calico/node:v3",
            "docker.io/calico/node:v3"
        ));
    }

    #[test]
    fn kubeconfig_parts_are_decoded() {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let text = format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://10.0.2.15:6443\n  name: k\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b("CA"),
            b("CERT"),
            b("KEY")
        );
        let c = parse_kubeconfig(&text).unwrap();
        assert_eq!(
            (c.ca.as_slice(), c.cert.as_slice(), c.key.as_slice()),
            (&b"CA"[..], &b"CERT"[..], &b"KEY"[..])
        );
        let dbg = format!("{c:?}");
        assert!(dbg.contains("<redacted>") && !dbg.contains("KEY"), "{dbg}");
        assert!(
            parse_kubeconfig("users: []")
                .unwrap_err()
                .contains("certificate-authority-data")
        );
    }

    #[test]
    fn ready_condition() {
        let n = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "False", "message": "cni plugin not initialized"}]}});
        assert_eq!(
            node_ready(&n),
            Some(("False".into(), "cni plugin not initialized".into()))
        );
    }
}
