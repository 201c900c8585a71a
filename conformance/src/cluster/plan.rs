//! The steps of a cluster run and of its teardown, in order.

use std::path::PathBuf;

use super::ClusterSpec;
use super::render::{
    cdi_patch, cluster_template, datavolume, kind_config, kubevirt_patch, smoke_pod,
};

/// One step of a cluster run: a program, its arguments, and an optional manifest on stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the step does (for progress and errors).
    pub what: String,
    /// The program (`kind`, `kubectl`, `clusterctl`).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Written to its stdin.
    pub stdin: Option<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// A check of the report: a `kubectl wait`, i.e. an outcome. The other steps are commands
    /// (`apply`, `patch`, `clusterctl init` …); when one fails, the next check FAILs with its
    /// error (the outcome was not reached) and the report never counts a command as a check.
    pub check: bool,
}

impl Step {
    fn new(what: &str, program: &str, args: &[&str]) -> Self {
        Self {
            what: what.to_owned(),
            program: program.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            stdin: None,
            env: Vec::new(),
            check: program == "kubectl" && args.contains(&"wait"),
        }
    }
    fn stdin(mut self, s: String) -> Self {
        self.stdin = Some(s);
        self
    }
}

/// The steps of a run against `kubeconfig` (created with kind when `None`).
pub fn plan(spec: &ClusterSpec, kubeconfig: Option<&str>) -> Vec<Step> {
    let v = &spec.versions;
    let mut steps = Vec::new();
    if kubeconfig.is_none() {
        steps.push(
            Step::new(
                "create the kind cluster",
                "kind",
                &["create", "cluster", "--wait", "5m", "--config", "-"],
            )
            .stdin(kind_config(spec)),
        );
    }
    let kv = format!(
        "https://github.com/kubevirt/kubevirt/releases/download/{}",
        v.kubevirt
    );
    let cdi = format!(
        "https://github.com/kubevirt/containerized-data-importer/releases/download/{}",
        v.cdi
    );
    steps.push(Step::new(
        "install the KubeVirt operator",
        "kubectl",
        &["apply", "-f", &format!("{kv}/kubevirt-operator.yaml")],
    ));
    steps.push(Step::new(
        "create the KubeVirt CR",
        "kubectl",
        &["apply", "-f", &format!("{kv}/kubevirt-cr.yaml")],
    ));
    steps.push(Step::new(
        "configure KubeVirt emulation",
        "kubectl",
        &[
            "-n",
            "kubevirt",
            "patch",
            "kubevirt",
            "kubevirt",
            "--type=merge",
            "-p",
            &kubevirt_patch(spec),
        ],
    ));
    steps.push(Step::new(
        "install the CDI operator",
        "kubectl",
        &["apply", "-f", &format!("{cdi}/cdi-operator.yaml")],
    ));
    steps.push(Step::new(
        "create the CDI CR",
        "kubectl",
        &["apply", "-f", &format!("{cdi}/cdi-cr.yaml")],
    ));
    steps.push(Step::new(
        "configure CDI registries",
        "kubectl",
        &[
            "patch",
            "cdi",
            "cdi",
            "--type=merge",
            "-p",
            &cdi_patch(spec),
        ],
    ));
    steps.push(Step::new(
        "wait for KubeVirt",
        "kubectl",
        &[
            "-n",
            "kubevirt",
            "wait",
            "kv",
            "kubevirt",
            "--for",
            "condition=Available",
            "--timeout=15m",
        ],
    ));
    steps.push(Step::new(
        "wait for CDI",
        "kubectl",
        &[
            "wait",
            "cdi",
            "cdi",
            "--for",
            "condition=Available",
            "--timeout=15m",
        ],
    ));
    let mut init = Step::new(
        "install Cluster API and CAPK",
        "clusterctl",
        &[
            "init",
            "--core",
            &format!("cluster-api:{}", v.cluster_api),
            "--bootstrap",
            &format!("kubeadm:{}", v.cluster_api),
            "--control-plane",
            &format!("kubeadm:{}", v.cluster_api),
            "--infrastructure",
            &format!("kubevirt:{}", v.capk),
            "--wait-providers",
        ],
    );
    init.env
        .push(("CERT_MANAGER_VERSION".to_owned(), v.cert_manager.clone()));
    steps.push(init);
    steps.push(Step::new(
        "create the namespace",
        "kubectl",
        &["create", "namespace", &spec.cluster_name],
    ));
    steps.push(
        Step::new(
            "import the image with CDI",
            "kubectl",
            &["apply", "-f", "-"],
        )
        .stdin(datavolume(spec)),
    );
    steps.push(Step::new(
        "wait for the import",
        "kubectl",
        &[
            "-n",
            &spec.cluster_name,
            "wait",
            "dv/kib-node-image",
            "--for",
            "condition=Ready",
            "--timeout=30m",
        ],
    ));
    steps.push(
        Step::new(
            "create the workload cluster",
            "kubectl",
            &["apply", "-f", "-"],
        )
        .stdin(cluster_template(spec)),
    );
    steps.push(Step::new(
        "wait for the control plane",
        "kubectl",
        &[
            "-n",
            &spec.cluster_name,
            "wait",
            &format!("cluster/{}", spec.cluster_name),
            "--for",
            "condition=ControlPlaneInitialized",
            "--timeout=45m",
        ],
    ));
    let work = spec.work_dir.display().to_string();
    let kcfg = workload_kubeconfig(spec).display().to_string();
    steps.push(Step::new(
        "get the workload kubeconfig",
        "bash",
        &[
            "-c",
            GET_KUBECONFIG,
            "kib",
            &work,
            &spec.cluster_name,
            &kcfg,
        ],
    ));
    let port = API_FORWARD_PORT.to_string();
    let pid = port_forward_pid(spec).display().to_string();
    let log = spec.work_dir.join("port-forward.log").display().to_string();
    steps.push(Step::new(
        "forward the workload API server",
        "bash",
        &[
            "-c",
            PORT_FORWARD,
            "kib",
            &spec.cluster_name,
            &port,
            &pid,
            &log,
            &kcfg,
        ],
    ));
    let wl = workload_kubectl(spec);
    steps.push(Step::new(
        "install the CNI (Calico)",
        "bash",
        &[
            "-c",
            INSTALL_CNI,
            "kib",
            &calico_manifest_url(spec),
            CALICO_SED,
            &kcfg,
            &port,
        ],
    ));
    steps.push(Step::new(
        "wait for both machines",
        "kubectl",
        &[
            "-n",
            &spec.cluster_name,
            "wait",
            "machines",
            "--all",
            "--for",
            "condition=Ready",
            "--timeout=45m",
        ],
    ));
    let wl_step = |what: &str, args: &[&str]| {
        let mut all: Vec<&str> = wl.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        Step::new(what, "kubectl", &all)
    };
    steps.push(wl_step(
        "wait for the workload nodes",
        &[
            "wait",
            "nodes",
            "--all",
            "--for",
            "condition=Ready",
            "--timeout=20m",
        ],
    ));
    steps.push(
        wl_step("run a pod in the workload cluster", &["apply", "-f", "-"]).stdin(smoke_pod()),
    );
    steps.push(wl_step(
        "wait for the pod",
        &[
            "-n",
            "default",
            "wait",
            &format!("pod/{SMOKE_POD}"),
            "--for",
            "condition=Ready",
            "--timeout=10m",
        ],
    ));
    steps
}

/// The local port `virtctl port-forward` maps to the workload control plane's 6443 (CAPK's
/// e2e uses the same).
pub const API_FORWARD_PORT: u16 = 64443;

/// The smoke pod's name (in `default`).
pub const SMOKE_POD: &str = "kib-smoke";

/// Where the run writes the workload cluster's kubeconfig.
pub fn workload_kubeconfig(spec: &ClusterSpec) -> PathBuf {
    spec.work_dir
        .join(format!("{}.kubeconfig", spec.cluster_name))
}

/// The pid file of the background `virtctl port-forward`.
pub fn port_forward_pid(spec: &ClusterSpec) -> PathBuf {
    spec.work_dir.join("port-forward.pid")
}

/// `kubectl` and the flags that reach the workload cluster through the port-forward (CAPK's
/// way: the kubeconfig's server is the infra-side ClusterIP service, unreachable from the host,
/// and the forwarded endpoint is not in the certificate).
pub fn workload_kubectl(spec: &ClusterSpec) -> Vec<String> {
    vec![
        "--kubeconfig".to_owned(),
        workload_kubeconfig(spec).display().to_string(),
        "--server".to_owned(),
        format!("https://127.0.0.1:{API_FORWARD_PORT}"),
        "--insecure-skip-tls-verify".to_owned(),
    ]
}

/// Calico's manifest for [`Versions::calico`](super::Versions::calico).
pub fn calico_manifest_url(spec: &ClusterSpec) -> String {
    format!(
        "https://raw.githubusercontent.com/projectcalico/calico/{}/manifests/calico.yaml",
        spec.versions.calico
    )
}

/// `$1` work dir, `$2` cluster name and namespace, `$3` kubeconfig path.
const GET_KUBECONFIG: &str = include_str!("../scripts/get-kubeconfig.sh");

/// `$1` namespace, `$2` local port, `$3` pid file, `$4` log, `$5` workload kubeconfig. The
/// forward runs in the background with its output in a file (run_step waits for its pipes to
/// close) and is ready when the API server answers `/readyz` through it.
const PORT_FORWARD: &str = include_str!("../scripts/port-forward.sh");

/// `$1` manifest URL, `$2` sed program, `$3` workload kubeconfig, `$4` forwarded port.
const INSTALL_CNI: &str = include_str!("../scripts/install-cni.sh");

/// The Cluster API book's Calico edits for a KubeVirt tenant: the pod CIDR of
/// [`cluster_template`], VXLAN instead of IP-in-IP, Felix's VXLAN on port 6789 (the infra
/// cluster's CNI may own 4789).
pub(super) const CALICO_SED: &str = r#"s|^( +)# (- name: CALICO_IPV4POOL_CIDR)$|\1\2|
s|^( +)# (  value: )"192.168.0.0/16"|\1\2"10.243.0.0/16"|
/- name: CALICO_IPV4POOL_IPIP/{n;s/value: "Always"/value: "Never"/}
/- name: CALICO_IPV4POOL_VXLAN/{n;s/value: "Never"/value: "Always"/}
/# Set Felix endpoint to host default action to ACCEPT./a\            - name: FELIX_VXLANPORT\n              value: "6789""#;

/// What runs after [`plan`], whether it passed or not: unless `keep`, stop the API
/// port-forward and delete the kind cluster (when [`plan`] created one, i.e. `kubeconfig` is
/// `None`). Run every step, ignoring failures.
pub fn teardown(spec: &ClusterSpec, kubeconfig: Option<&str>, keep: bool) -> Vec<Step> {
    if keep {
        return Vec::new();
    }
    let pid = port_forward_pid(spec).display().to_string();
    let mut steps = vec![Step::new(
        "stop the API port-forward",
        "bash",
        &["-c", STOP_PORT_FORWARD, "kib", &pid],
    )];
    if kubeconfig.is_none() {
        steps.push(Step::new(
            "delete the kind cluster",
            "kind",
            &["delete", "cluster", "--name", &spec.kind_name],
        ));
    }
    steps
}

/// `$1` pid file.
const STOP_PORT_FORWARD: &str = include_str!("../scripts/stop-port-forward.sh");
