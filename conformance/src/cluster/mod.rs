//! The `cluster` profile: kind + KubeVirt + CDI + Cluster API + CAPK, with the image imported
//! by CDI from its registry and a workload cluster (one control plane, one worker) made from a
//! CAPK template that boots it.
//!
//! kib renders every manifest here ([`ClusterSpec`] → YAML strings, unit-tested by parsing them
//! back); [`run`] shells out to `kind`, `kubectl` and `clusterctl` in the order [`plan`] gives.
//!
//! What the host needs (see `conformance/README.md`): internet access (GitHub releases,
//! registry.k8s.io, quay.io, the image's registry), a container engine kind can drive (Docker
//! or Podman), `kind` ≥ 0.32, `kubectl`, `clusterctl` matching [`Versions::cluster_api`], about
//! 8 GiB of RAM and 4 CPUs; `/dev/kvm` is optional ([`ClusterSpec::use_emulation`] switches
//! KubeVirt to TCG when it is missing).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kib_manifest::Hint;
use kib_vm::Firmware;
use serde_json::{Value, json};

use crate::check::CheckResult;
use crate::direct::Reporter;
use crate::report::{CheckReport, Report};
use crate::userdata::CRI_SOCKET;

/// Pinned versions (checked together in `docs/reference`, §10.1 of the domain notes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// kind node image.
    pub kind_node_image: String,
    /// KubeVirt.
    pub kubevirt: String,
    /// CDI.
    pub cdi: String,
    /// Cluster API (core, kubeadm bootstrap and control plane).
    pub cluster_api: String,
    /// CAPK.
    pub capk: String,
    /// cert-manager (installed by `clusterctl init`).
    pub cert_manager: String,
    /// Calico, the workload cluster's CNI (its images are the ones `kib build` pre-pulls from
    /// `playbook/files/images.json`).
    pub calico: String,
}

impl Default for Versions {
    fn default() -> Self {
        Self {
            kind_node_image: "kindest/node:v1.36.1".to_owned(),
            kubevirt: "v1.9.0".to_owned(),
            cdi: "v1.66.0".to_owned(),
            cluster_api: "v1.14.0".to_owned(),
            capk: "v0.11.2".to_owned(),
            cert_manager: "v1.21.1".to_owned(),
            calico: "v3.31.4".to_owned(),
        }
    }
}

/// What the cluster profile creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// The image reference in its registry, e.g. `registry.example:5000/kib/node:v1.37.1`.
    pub image: String,
    /// The Kubernetes version of the image, e.g. `v1.37.1`.
    pub kubernetes_version: String,
    /// kind cluster name (management cluster).
    pub kind_name: String,
    /// Workload cluster name and namespace.
    pub cluster_name: String,
    /// Root disk size of each node VM (the DataVolume's storage request): see
    /// [`disk_size_for`].
    pub disk_size: String,
    /// Switch KubeVirt to software emulation (no `/dev/kvm` on the host).
    pub use_emulation: bool,
    /// Registries CDI may pull from over plain HTTP / without TLS verification.
    pub insecure_registries: Vec<String>,
    /// Firmware of the node VMs.
    pub firmware: Firmware,
    /// Pinned versions.
    pub versions: Versions,
    /// Where the run keeps the workload kubeconfig and the API port-forward's pid and log.
    pub work_dir: PathBuf,
}

impl ClusterSpec {
    /// A spec with the defaults: kind `kib-conformance`, cluster `kib-wl`, disks sized for
    /// kib's default 20 GiB image (22Gi, see [`disk_size_for`]), BIOS, emulation when
    /// `/dev/kvm` is missing.
    pub fn new(image: &str, kubernetes_version: &str) -> Self {
        Self {
            image: image.strip_prefix("docker://").unwrap_or(image).to_owned(),
            kubernetes_version: if kubernetes_version.starts_with('v') {
                kubernetes_version.to_owned()
            } else {
                format!("v{kubernetes_version}")
            },
            kind_name: "kib-conformance".to_owned(),
            cluster_name: "kib-wl".to_owned(),
            disk_size: disk_size_for(DEFAULT_VIRTUAL_SIZE),
            use_emulation: !std::path::Path::new("/dev/kvm").exists(),
            insecure_registries: Vec::new(),
            firmware: Firmware::Bios,
            versions: Versions::default(),
            work_dir: std::env::temp_dir().join("kib-conformance-cluster"),
        }
    }
}

/// The virtual size of kib's default image (`kib.toml`'s `disk_size = "20G"`), in bytes.
pub const DEFAULT_VIRTUAL_SIZE: u64 = 20 << 30;

/// CDI's default filesystem overhead, per mille: `DefaultGlobalOverhead = "0.055"`
/// (kubevirt/containerized-data-importer `pkg/common/common.go`).
pub const CDI_FILESYSTEM_OVERHEAD_PER_MILLE: u64 = 55;

/// The DataVolume storage request for an image of `virtual_size` bytes, in whole GiB.
///
/// CDI's importer refuses an image when `int64(float64(available) * (1 - overhead)) <
/// virtualSize` ("A larger PVC is required", `checkIfURLIsValid` in kubevirt/containerized-data-importer
/// `pkg/image/qemu.go`), so the request is `ceil(virtual / (1 - 0.055))` rounded up to GiB:
/// 22Gi for a 20 GiB image.
pub fn disk_size_for(virtual_size: u64) -> String {
    let keep = 1000 - CDI_FILESYSTEM_OVERHEAD_PER_MILLE;
    let needed = (u128::from(virtual_size) * 1000).div_ceil(u128::from(keep));
    let gib = needed.div_ceil(1 << 30).max(1);
    format!("{gib}Gi")
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("JSON values serialize as YAML")
}

fn multi(docs: &[Value]) -> String {
    docs.iter().map(|d| format!("---\n{}", yaml(d))).collect()
}

/// The kind cluster config: one node, containerd reading registry config from `certs.d` (as
/// KubeVirt's kind provider sets it), the default CNI kept.
pub fn kind_config(spec: &ClusterSpec) -> String {
    yaml(&json!({
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "name": spec.kind_name,
        "nodes": [{"role": "control-plane", "image": spec.versions.kind_node_image}],
        "containerdConfigPatches": [
            "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n"
        ],
    }))
}

/// The merge patch for the `KubeVirt` CR: emulation when there is no `/dev/kvm`.
pub fn kubevirt_patch(spec: &ClusterSpec) -> String {
    serde_json::to_string(&json!({
        "spec": {"configuration": {"developerConfiguration": {"useEmulation": spec.use_emulation}}}
    }))
    .expect("JSON serializes")
}

/// The merge patch for the `CDI` CR: insecure registries.
pub fn cdi_patch(spec: &ClusterSpec) -> String {
    serde_json::to_string(
        &json!({"spec": {"config": {"insecureRegistries": spec.insecure_registries}}}),
    )
    .expect("JSON serializes")
}

fn registry_source(spec: &ClusterSpec) -> Value {
    json!({"registry": {"url": format!("docker://{}", spec.image)}})
}

/// A standalone DataVolume importing the image (checks the CDI import before the cluster).
pub fn datavolume(spec: &ClusterSpec) -> String {
    yaml(&json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {
            "name": "kib-node-image",
            "namespace": spec.cluster_name,
            "annotations": {"cdi.kubevirt.io/storage.bind.immediate.requested": "true"},
        },
        "spec": {
            "source": registry_source(spec),
            "storage": {"resources": {"requests": {"storage": spec.disk_size}}},
        },
    }))
}

fn machine_template(spec: &ClusterSpec, name: &str) -> Value {
    let mut domain = json!({
        "cpu": {"cores": 2},
        "memory": {"guest": "4Gi"},
        "devices": {
            "disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}],
            "watchdog": {"name": "watchdog", "i6300esb": {"action": "reset"}},
        },
    });
    if spec.firmware == Firmware::Uefi {
        domain["firmware"] = json!({"bootloader": {"efi": {"secureBoot": false}}});
    }
    json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "KubevirtMachineTemplate",
        "metadata": {"name": name, "namespace": spec.cluster_name},
        "spec": {"template": {"spec": {
            "virtualMachineBootstrapCheck": {"checkStrategy": "ssh"},
            "virtualMachineTemplate": {
                "metadata": {"namespace": spec.cluster_name},
                "spec": {
                    "runStrategy": "Always",
                    "dataVolumeTemplates": [{
                        "metadata": {"name": "rootdisk"},
                        "spec": {
                            "source": registry_source(spec),
                            "storage": {"resources": {"requests": {"storage": spec.disk_size}}},
                        },
                    }],
                    "template": {"spec": {
                        "evictionStrategy": "External",
                        "domain": domain,
                        "volumes": [{"name": "rootdisk", "dataVolume": {"name": "rootdisk"}}],
                    }},
                },
            },
        }}},
    })
}

fn node_registration() -> Value {
    json!({"criSocket": CRI_SOCKET, "kubeletExtraArgs": [{"name": "provider-id", "value": "kubevirt://{{ ds.meta_data.local_hostname }}"}]})
}

/// The workload cluster (the shape of CAPK's `cluster-template-persistent-storage.yaml`, with
/// the image from the registry through CDI, the watchdog device and containerd's `criSocket`).
pub fn cluster_template(spec: &ClusterSpec) -> String {
    let ns = &spec.cluster_name;
    let name = &spec.cluster_name;
    let cp_tmpl = format!("{name}-control-plane");
    let md_tmpl = format!("{name}-md-0");
    multi(&[
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1",
            "kind": "Cluster",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "clusterNetwork": {"pods": {"cidrBlocks": ["10.243.0.0/16"]}, "services": {"cidrBlocks": ["10.95.0.0/16"]}},
                "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "KubevirtCluster", "name": name, "namespace": ns},
                "controlPlaneRef": {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane", "name": cp_tmpl, "namespace": ns},
            },
        }),
        json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
            "kind": "KubevirtCluster",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"controlPlaneServiceTemplate": {"spec": {"type": "ClusterIP"}}},
        }),
        machine_template(spec, &cp_tmpl),
        json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1beta1",
            "kind": "KubeadmControlPlane",
            "metadata": {"name": cp_tmpl, "namespace": ns},
            "spec": {
                "replicas": 1,
                "version": spec.kubernetes_version,
                "machineTemplate": {"infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "KubevirtMachineTemplate", "name": cp_tmpl, "namespace": ns}},
                "kubeadmConfigSpec": {
                    "clusterConfiguration": {"networking": {"dnsDomain": format!("{name}.{ns}.local"), "podSubnet": "10.243.0.0/16", "serviceSubnet": "10.95.0.0/16"}},
                    "initConfiguration": {"nodeRegistration": node_registration()},
                    "joinConfiguration": {"nodeRegistration": node_registration()},
                },
            },
        }),
        machine_template(spec, &md_tmpl),
        json!({
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1beta1",
            "kind": "KubeadmConfigTemplate",
            "metadata": {"name": md_tmpl, "namespace": ns},
            "spec": {"template": {"spec": {"joinConfiguration": {"nodeRegistration": node_registration()}}}},
        }),
        json!({
            "apiVersion": "cluster.x-k8s.io/v1beta1",
            "kind": "MachineDeployment",
            "metadata": {"name": md_tmpl, "namespace": ns},
            "spec": {
                "clusterName": name,
                "replicas": 1,
                "selector": {"matchLabels": null},
                "template": {"spec": {
                    "clusterName": name,
                    "version": spec.kubernetes_version,
                    "bootstrap": {"configRef": {"apiVersion": "bootstrap.cluster.x-k8s.io/v1beta1", "kind": "KubeadmConfigTemplate", "name": md_tmpl, "namespace": ns}},
                    "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "KubevirtMachineTemplate", "name": md_tmpl, "namespace": ns},
                }},
            },
        }),
    ])
}

/// A pod the workload cluster must run.
pub fn smoke_pod() -> String {
    yaml(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": SMOKE_POD, "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}],
        },
    }))
}

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

/// Calico's manifest for [`Versions::calico`].
pub fn calico_manifest_url(spec: &ClusterSpec) -> String {
    format!(
        "https://raw.githubusercontent.com/projectcalico/calico/{}/manifests/calico.yaml",
        spec.versions.calico
    )
}

/// `$1` work dir, `$2` cluster name and namespace, `$3` kubeconfig path.
const GET_KUBECONFIG: &str = include_str!("scripts/get-kubeconfig.sh");

/// `$1` namespace, `$2` local port, `$3` pid file, `$4` log, `$5` workload kubeconfig. The
/// forward runs in the background with its output in a file (run_step waits for its pipes to
/// close) and is ready when the API server answers `/readyz` through it.
const PORT_FORWARD: &str = include_str!("scripts/port-forward.sh");

/// `$1` manifest URL, `$2` sed program, `$3` workload kubeconfig, `$4` forwarded port.
const INSTALL_CNI: &str = include_str!("scripts/install-cni.sh");

/// The Cluster API book's Calico edits for a KubeVirt tenant: the pod CIDR of
/// [`cluster_template`], VXLAN instead of IP-in-IP, Felix's VXLAN on port 6789 (the infra
/// cluster's CNI may own 4789).
const CALICO_SED: &str = r#"s|^( +)# (- name: CALICO_IPV4POOL_CIDR)$|\1\2|
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
const STOP_PORT_FORWARD: &str = include_str!("scripts/stop-port-forward.sh");

/// Errors of a cluster run.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A tool could not be started.
    #[error("Failed to start `{program}` ({what})")]
    Spawn {
        /// The step.
        what: String,
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A step failed.
    #[error("Step `{what}` failed ({status}): {stderr}")]
    Step {
        /// The step.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// A tool on PATH is a test stand-in outside its test.
    #[error("`{program}` on PATH is a test stand-in ({path}), not the real tool")]
    StandIn {
        /// The tool.
        program: String,
        /// Where it was found.
        path: PathBuf,
    },
    /// A step did not finish in time.
    #[error("Step `{what}` did not finish within {waited:?}")]
    Timeout {
        /// The step.
        what: String,
        /// The bound.
        waited: Duration,
    },
}

impl Hint for ClusterError {
    /// A suggestion.
    fn hint(&self) -> Option<String> {
        match self {
            Self::Spawn { program, .. } => Some(format!(
                "the cluster profile needs `{program}` on PATH (and docker or podman, internet access): see conformance/README.md"
            )),
            Self::StandIn { path, .. } => Some(format!(
                "remove {} from PATH: recording stand-ins only run inside kib's own tests",
                path.parent().unwrap_or(path).display()
            )),
            _ => None,
        }
    }
}

/// Runs one step, with `kubeconfig` in the environment.
pub async fn run_step(
    step: &Step,
    kubeconfig: Option<&PathBuf>,
    limit: Duration,
) -> Result<String, ClusterError> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(&step.program);
    cmd.args(&step.args)
        .envs(step.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    tracing::info!(step = %step.what, program = %step.program, args = ?step.args, "cluster step");
    let mut child = cmd.spawn().map_err(|source| ClusterError::Spawn {
        what: step.what.clone(),
        program: step.program.clone(),
        source,
    })?;
    let mut stdin = child.stdin.take().expect("piped");
    if let Some(s) = &step.stdin {
        let _ = stdin.write_all(s.as_bytes()).await;
    }
    drop(stdin);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| ClusterError::Timeout {
            what: step.what.clone(),
            waited: limit,
        })?
        .map_err(|source| ClusterError::Spawn {
            what: step.what.clone(),
            program: step.program.clone(),
            source,
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(ClusterError::Step {
            what: step.what.clone(),
            status: out.status.to_string(),
            stderr: tail.join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The tools the profile runs, directly or from its scripts.
pub const TOOLS: [&str; 5] = ["kind", "kubectl", "clusterctl", "virtctl", "curl"];

/// The line every test stand-in of [`TOOLS`] carries (tests/cli/cluster.rs writes them).
pub const STAND_IN_MARKER: &str = "KIB-TEST-STAND-IN";

/// The variable a test sets to the directory of its stand-ins; only there are they run.
pub const STAND_IN_DIR_ENV: &str = "KIB_TEST_STAND_IN_DIR";

/// Refuses to run when a tool of [`TOOLS`] found on `PATH` is a test stand-in (its first 4 KiB
/// hold [`STAND_IN_MARKER`]) outside the directory named by [`STAND_IN_DIR_ENV`]: recording
/// stand-ins answer every `kubectl wait` with success, so a stray one (a test's temp dir left on
/// a PATH) must never make a real cluster check pass.
pub fn refuse_stray_stand_ins() -> Result<(), ClusterError> {
    use std::io::Read;
    let allowed = std::env::var_os(STAND_IN_DIR_ENV).map(PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in TOOLS {
        let Some(found) = std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
        else {
            continue;
        };
        let mut head = Vec::with_capacity(4096);
        if let Ok(f) = std::fs::File::open(&found) {
            let _ = f.take(4096).read_to_end(&mut head);
        }
        let marked = head
            .windows(STAND_IN_MARKER.len())
            .any(|w| w == STAND_IN_MARKER.as_bytes());
        let blessed = allowed
            .as_deref()
            .is_some_and(|d| found.parent() == Some(d));
        if marked && !blessed {
            return Err(ClusterError::StandIn {
                program: tool.to_owned(),
                path: found,
            });
        }
    }
    Ok(())
}

/// Runs the cluster profile: every step of [`plan`] in order, then the [`teardown`] steps
/// whether or not a step failed (the API port-forward is stopped and the kind cluster kib
/// created is deleted; nothing with `keep`). Only the checks ([`Step::check`], the waits) are
/// reported: a failed command FAILs the next check with its error, and after a failure the
/// remaining checks are SKIPped. Refuses stray test stand-ins ([`refuse_stray_stand_ins`]):
/// the first check FAILs and nothing runs. `image` is the reference as the user gave it (the
/// report's title); `timeout` bounds the steps together.
pub async fn run(
    image: &str,
    spec: &ClusterSpec,
    kubeconfig: Option<&PathBuf>,
    keep: bool,
    timeout: Duration,
    reporter: &dyn Reporter,
) -> Report {
    let started = Instant::now();
    let kubeconfig_arg = kubeconfig.map(|p| p.display().to_string());
    let steps = plan(spec, kubeconfig_arg.as_deref());
    let mut results = Vec::new();
    let mut failure: Option<String> = refuse_stray_stand_ins()
        .err()
        .map(|e| format!("{e} (hint: {})", e.hint().unwrap_or_default()));
    let refused = failure.is_some();
    let mut reported_failure = false;
    let mut since_check = Instant::now();
    for step in &steps {
        if let Some(why) = &failure {
            if step.check {
                let r = if reported_failure {
                    CheckResult::Skip("an earlier step failed".into())
                } else {
                    reported_failure = true;
                    CheckResult::fail(why.clone())
                };
                let rep = CheckReport::new(&step.what, &step.what, &r, since_check.elapsed());
                reporter.on_check(&rep);
                results.push(rep);
                since_check = Instant::now();
            }
            continue;
        }
        reporter.on_phase(&step.what);
        let left = timeout.saturating_sub(started.elapsed());
        if let Err(e) = run_step(step, kubeconfig, left).await {
            let hint = e
                .hint()
                .map(|h| format!(" (hint: {h})"))
                .unwrap_or_default();
            let why = format!("{}{hint}", kib_manifest::error_chain(&e));
            if step.check {
                reported_failure = true;
                let r = CheckResult::fail(why.clone());
                let rep = CheckReport::new(&step.what, &step.what, &r, since_check.elapsed());
                reporter.on_check(&rep);
                results.push(rep);
                since_check = Instant::now();
            }
            failure = Some(why);
            continue;
        }
        if step.check {
            let rep = CheckReport::new(
                &step.what,
                &step.what,
                &CheckResult::Pass,
                since_check.elapsed(),
            );
            reporter.on_check(&rep);
            results.push(rep);
            since_check = Instant::now();
        }
    }
    if !refused {
        for step in teardown(spec, kubeconfig_arg.as_deref(), keep) {
            reporter.on_phase(&step.what);
            let _ = run_step(&step, kubeconfig, Duration::from_secs(300)).await;
        }
    }
    Report::new(
        image,
        "cluster",
        spec.firmware.as_str(),
        if spec.use_emulation { "tcg" } else { "kvm" },
        results,
        started.elapsed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(s: &str) -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(s)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    }

    fn spec() -> ClusterSpec {
        let mut s = ClusterSpec::new("docker://registry.example:5000/kib/node:v1.37.1", "1.37.1");
        s.use_emulation = true;
        s.insecure_registries = vec!["registry.example:5000".into()];
        s
    }

    #[test]
    fn cluster_template_boots_the_image_with_watchdog_and_cri_socket() {
        let d = docs(&cluster_template(&spec()));
        let kinds: Vec<&str> = d.iter().map(|x| x["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "Cluster",
                "KubevirtCluster",
                "KubevirtMachineTemplate",
                "KubeadmControlPlane",
                "KubevirtMachineTemplate",
                "KubeadmConfigTemplate",
                "MachineDeployment"
            ]
        );
        for t in d.iter().filter(|x| x["kind"] == "KubevirtMachineTemplate") {
            let vm = &t["spec"]["template"]["spec"]["virtualMachineTemplate"]["spec"];
            assert_eq!(
                vm["dataVolumeTemplates"][0]["spec"]["source"]["registry"]["url"].as_str(),
                Some("docker://registry.example:5000/kib/node:v1.37.1")
            );
            let dom = &vm["template"]["spec"]["domain"];
            assert_eq!(
                dom["devices"]["watchdog"]["i6300esb"]["action"].as_str(),
                Some("reset")
            );
            assert!(dom["firmware"].is_null(), "BIOS is KubeVirt's default");
            assert_eq!(
                vm["template"]["spec"]["volumes"][0]["dataVolume"]["name"].as_str(),
                Some("rootdisk")
            );
            assert_eq!(
                t["spec"]["template"]["spec"]["virtualMachineBootstrapCheck"]["checkStrategy"]
                    .as_str(),
                Some("ssh")
            );
        }
        let kcp = d
            .iter()
            .find(|x| x["kind"] == "KubeadmControlPlane")
            .unwrap();
        assert_eq!(kcp["spec"]["version"].as_str(), Some("v1.37.1"));
        assert_eq!(kcp["spec"]["replicas"].as_u64(), Some(1));
        let cfg = &kcp["spec"]["kubeadmConfigSpec"];
        assert_eq!(
            cfg["initConfiguration"]["nodeRegistration"]["criSocket"].as_str(),
            Some(CRI_SOCKET)
        );
        assert_eq!(
            cfg["joinConfiguration"]["nodeRegistration"]["criSocket"].as_str(),
            Some(CRI_SOCKET)
        );
        let kct = d
            .iter()
            .find(|x| x["kind"] == "KubeadmConfigTemplate")
            .unwrap();
        assert_eq!(
            kct["spec"]["template"]["spec"]["joinConfiguration"]["nodeRegistration"]["criSocket"]
                .as_str(),
            Some(CRI_SOCKET)
        );
        let md = d.iter().find(|x| x["kind"] == "MachineDeployment").unwrap();
        assert_eq!(md["spec"]["replicas"].as_u64(), Some(1));
        // The user-data secret is CABPK's: the bootstrap refs point at kubeadm configs.
        assert_eq!(
            md["spec"]["template"]["spec"]["bootstrap"]["configRef"]["kind"].as_str(),
            Some("KubeadmConfigTemplate")
        );
    }

    #[test]
    fn uefi_sets_efi_without_secure_boot() {
        let mut s = spec();
        s.firmware = Firmware::Uefi;
        let d = docs(&cluster_template(&s));
        let t = d
            .iter()
            .find(|x| x["kind"] == "KubevirtMachineTemplate")
            .unwrap();
        let fw = &t["spec"]["template"]["spec"]["virtualMachineTemplate"]["spec"]["template"]["spec"]
            ["domain"]["firmware"];
        assert_eq!(fw["bootloader"]["efi"]["secureBoot"].as_bool(), Some(false));
    }

    #[test]
    fn datavolume_kind_config_and_patches() {
        let s = spec();
        let dv = &docs(&datavolume(&s))[0];
        assert_eq!(
            dv["spec"]["source"]["registry"]["url"].as_str(),
            Some("docker://registry.example:5000/kib/node:v1.37.1")
        );
        assert_eq!(
            dv["metadata"]["annotations"]["cdi.kubevirt.io/storage.bind.immediate.requested"]
                .as_str(),
            Some("true")
        );
        let kind = &docs(&kind_config(&s))[0];
        assert_eq!(kind["apiVersion"].as_str(), Some("kind.x-k8s.io/v1alpha4"));
        assert_eq!(
            kind["nodes"][0]["image"].as_str(),
            Some("kindest/node:v1.36.1")
        );
        let p: serde_json::Value = serde_json::from_str(&kubevirt_patch(&s)).unwrap();
        assert_eq!(
            p["spec"]["configuration"]["developerConfiguration"]["useEmulation"],
            true
        );
        let c: serde_json::Value = serde_json::from_str(&cdi_patch(&s)).unwrap();
        assert_eq!(
            c["spec"]["config"]["insecureRegistries"][0],
            "registry.example:5000"
        );
        assert_eq!(docs(&smoke_pod())[0]["kind"].as_str(), Some("Pod"));
    }

    #[test]
    fn plan_orders_the_steps_and_pins_versions() {
        let steps = plan(&spec(), None);
        assert_eq!(steps[0].program, "kind");
        let whats: Vec<&str> = steps.iter().map(|s| s.what.as_str()).collect();
        let pos = |w: &str| whats.iter().position(|x| *x == w).unwrap();
        assert!(pos("install the KubeVirt operator") < pos("configure KubeVirt emulation"));
        assert!(pos("install Cluster API and CAPK") < pos("create the workload cluster"));
        assert!(pos("import the image with CDI") < pos("create the workload cluster"));
        let init = &steps[pos("install Cluster API and CAPK")];
        assert!(init.args.contains(&"kubevirt:v0.11.2".to_owned()));
        assert!(init.args.contains(&"cluster-api:v1.14.0".to_owned()));
        assert!(steps.iter().any(|s| {
            s.args
                .iter()
                .any(|a| a.ends_with("v1.9.0/kubevirt-operator.yaml"))
        }));
        let forward = pos("forward the workload API server");
        assert!(pos("create the workload cluster") < pos("wait for the control plane"));
        assert!(pos("wait for the control plane") < pos("get the workload kubeconfig"));
        assert!(pos("get the workload kubeconfig") < forward);
        assert!(forward < pos("install the CNI (Calico)"));
        assert!(pos("install the CNI (Calico)") < pos("wait for both machines"));
        assert!(pos("wait for both machines") < pos("wait for the workload nodes"));
        assert!(pos("wait for the workload nodes") < pos("run a pod in the workload cluster"));
        assert_eq!(whats.last(), Some(&"wait for the pod"));
        let s = spec();
        let kcfg = workload_kubeconfig(&s).display().to_string();
        let get = &steps[pos("get the workload kubeconfig")];
        assert!(get.args[1].contains("clusterctl get kubeconfig \"$2\" -n \"$2\""));
        assert_eq!(
            &get.args[3..],
            [
                s.work_dir.display().to_string(),
                "kib-wl".to_owned(),
                kcfg.clone()
            ]
        );
        let pf = &steps[forward];
        assert!(
            pf.args[1].contains(
                "virtctl port-forward -n \"$1\" --address 127.0.0.1 \"vm/$vm\" \"$2:6443\""
            )
        );
        assert_eq!(pf.args[3], "kib-wl");
        assert_eq!(pf.args[4], "64443");
        assert_eq!(pf.args[5], port_forward_pid(&s).display().to_string());
        let cni = &steps[pos("install the CNI (Calico)")];
        assert_eq!(
            cni.args[3],
            "https://raw.githubusercontent.com/projectcalico/calico/v3.31.4/manifests/calico.yaml"
        );
        let wl = [
            "--kubeconfig",
            kcfg.as_str(),
            "--server",
            "https://127.0.0.1:64443",
            "--insecure-skip-tls-verify",
        ];
        let pod = &steps[pos("run a pod in the workload cluster")];
        assert_eq!(pod.program, "kubectl");
        assert_eq!(pod.args[..5], wl);
        assert_eq!(pod.args[5..], ["apply", "-f", "-"]);
        assert_eq!(
            docs(pod.stdin.as_deref().unwrap())[0]["metadata"]["name"].as_str(),
            Some(SMOKE_POD)
        );
        let wait = steps.last().unwrap();
        assert_eq!(wait.args[..5], wl);
        assert_eq!(
            wait.args[5..],
            [
                "-n",
                "default",
                "wait",
                "pod/kib-smoke",
                "--for",
                "condition=Ready",
                "--timeout=10m"
            ]
        );
        assert_eq!(steps[pos("wait for the workload nodes")].args[..5], wl);
        assert!(
            plan(&spec(), Some("/k"))
                .iter()
                .all(|s| s.program != "kind"),
            "an existing cluster is reused"
        );
    }

    /// CDI's importer check (`checkIfURLIsValid`, pkg/image/qemu.go) with the default
    /// overhead, in the same float arithmetic as the Go code.
    fn cdi_accepts(request_gib: u64, virtual_size: u64) -> bool {
        let available = (request_gib << 30) as f64;
        (available * (1.0 - 0.055)) as i64 >= virtual_size as i64
    }

    #[test]
    fn disk_size_leaves_cdis_filesystem_overhead() {
        assert_eq!(disk_size_for(DEFAULT_VIRTUAL_SIZE), "22Gi");
        assert_eq!(ClusterSpec::new("r/i:v", "1.37.1").disk_size, "22Gi");
        assert!(!cdi_accepts(20, DEFAULT_VIRTUAL_SIZE), "20Gi is refused");
        for v in [
            1,
            (1 << 30) - 1,
            1 << 30,
            10 << 30,
            DEFAULT_VIRTUAL_SIZE,
            (20 << 30) + 4096,
            40 << 30,
            (945 << 30) / 1000 * 21 + 1,
            21_474_836_480 + 1_073_741_823,
        ] {
            let gib: u64 = disk_size_for(v).trim_end_matches("Gi").parse().unwrap();
            assert!(cdi_accepts(gib, v), "{gib}Gi holds {v} bytes");
            assert!(
                gib == 1 || !cdi_accepts(gib - 1, v),
                "{gib}Gi is the smallest for {v} bytes"
            );
        }
        let mut s = spec();
        s.disk_size = disk_size_for(30 << 30);
        let dv = &docs(&datavolume(&s))[0];
        assert_eq!(
            dv["spec"]["storage"]["resources"]["requests"]["storage"].as_str(),
            Some("32Gi")
        );
        let t = docs(&cluster_template(&s));
        for m in t.iter().filter(|x| x["kind"] == "KubevirtMachineTemplate") {
            let dvt = &m["spec"]["template"]["spec"]["virtualMachineTemplate"]["spec"]["dataVolumeTemplates"]
                [0];
            assert_eq!(
                dvt["spec"]["storage"]["resources"]["requests"]["storage"].as_str(),
                Some("32Gi")
            );
        }
    }

    #[test]
    fn only_the_waits_are_checks() {
        let checks: Vec<String> = plan(&spec(), None)
            .into_iter()
            .filter(|s| s.check)
            .map(|s| s.what)
            .collect();
        assert_eq!(
            checks,
            [
                "wait for KubeVirt",
                "wait for CDI",
                "wait for the import",
                "wait for the control plane",
                "wait for both machines",
                "wait for the workload nodes",
                "wait for the pod"
            ]
        );
        assert_eq!(plan(&spec(), None).last().map(|s| s.check), Some(true));
    }

    #[test]
    fn teardown_stops_the_port_forward_then_deletes_kind_unless_kept() {
        let s = spec();
        let t = teardown(&s, None, false);
        let whats: Vec<&str> = t.iter().map(|x| x.what.as_str()).collect();
        assert_eq!(
            whats,
            ["stop the API port-forward", "delete the kind cluster"]
        );
        assert_eq!(t[0].args[3], port_forward_pid(&s).display().to_string());
        assert_eq!(
            t[1].args,
            ["delete", "cluster", "--name", "kib-conformance"]
        );
        let reused = teardown(&s, Some("/k"), false);
        assert_eq!(
            reused.len(),
            1,
            "an existing management cluster is not deleted"
        );
        assert_eq!(reused[0].what, "stop the API port-forward");
        assert!(
            teardown(&s, None, true).is_empty(),
            "--keep keeps the forward and kind"
        );
    }

    /// The stop step really ends a background process through its pid file (bash + a sleep,
    /// standing in for virtctl), and is harmless when nothing was started.
    #[tokio::test]
    async fn stop_step_kills_the_recorded_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec();
        s.work_dir = dir.path().to_owned();
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        std::fs::write(port_forward_pid(&s), child.id().to_string()).unwrap();
        let stop = &teardown(&s, Some("/k"), false)[0];
        run_step(stop, None, Duration::from_secs(10)).await.unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "the process was killed: {status}");
        assert!(!port_forward_pid(&s).exists());
        run_step(stop, None, Duration::from_secs(10)).await.unwrap();
    }

    /// The Calico edits, applied by GNU sed to the lines of calico.yaml they target.
    #[test]
    fn calico_sed_switches_to_vxlan_and_the_cluster_pod_cidr() {
        let excerpt = concat!(
            "            - name: CALICO_IPV4POOL_IPIP\n",
            "              value: \"Always\"\n",
            "            - name: CALICO_IPV4POOL_VXLAN\n",
            "              value: \"Never\"\n",
            "            # - name: CALICO_IPV4POOL_CIDR\n",
            "            #   value: \"192.168.0.0/16\"\n",
            "            # Set Felix endpoint to host default action to ACCEPT.\n",
            "            - name: FELIX_DEFAULTENDPOINTTOHOSTACTION\n",
        );
        let mut sed = std::process::Command::new("sed")
            .args(["-E", CALICO_SED])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        sed.stdin
            .take()
            .unwrap()
            .write_all(excerpt.as_bytes())
            .unwrap();
        let out = sed.wait_with_output().unwrap();
        assert!(out.status.success());
        let env: Vec<serde_yaml::Value> = serde_yaml::from_slice(&out.stdout).unwrap();
        let get = |n: &str| {
            env.iter()
                .find(|e| e["name"] == n)
                .and_then(|e| e["value"].as_str())
                .map(str::to_owned)
        };
        assert_eq!(get("CALICO_IPV4POOL_IPIP").as_deref(), Some("Never"));
        assert_eq!(get("CALICO_IPV4POOL_VXLAN").as_deref(), Some("Always"));
        assert_eq!(
            get("CALICO_IPV4POOL_CIDR").as_deref(),
            Some("10.243.0.0/16")
        );
        assert_eq!(get("FELIX_VXLANPORT").as_deref(), Some("6789"));
    }
}
