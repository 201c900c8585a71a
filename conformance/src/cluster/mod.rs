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
//!
//! The pieces: this file holds the [`ClusterSpec`] (what to build, which versions);
//! `render.rs` turns it into manifests, `plan.rs` into the [`Step`]s of a run and its
//! [`teardown`], `run.rs` runs them ([`run`], [`ClusterError`]).

use std::path::PathBuf;

use kib_vm::Firmware;

mod plan;
mod render;
mod run;

pub use plan::{
    API_FORWARD_PORT, SMOKE_POD, Step, calico_manifest_url, plan, port_forward_pid, teardown,
    workload_kubeconfig, workload_kubectl,
};
pub use render::{cdi_patch, cluster_template, datavolume, kind_config, kubevirt_patch, smoke_pod};
pub use run::{
    ClusterError, STAND_IN_DIR_ENV, STAND_IN_MARKER, TOOLS, refuse_stray_stand_ins, run, run_step,
};

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::plan::CALICO_SED;
    use super::*;
    use crate::userdata::CRI_SOCKET;

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
