//! The manifests of a cluster run, rendered from the [`ClusterSpec`].

use kib_vm::Firmware;
use serde_json::{Value, json};

use crate::userdata::CRI_SOCKET;

use super::ClusterSpec;
use super::plan::SMOKE_POD;

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
