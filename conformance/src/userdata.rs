//! The user data `kib conformance` boots the image with, shaped like what Cluster API's kubeadm
//! bootstrap provider (CABPK) generates and CAPK delivers:
//!
//! - the first line is `## template: jinja` (cloud-init renders it with Jinja first, so the
//!   image's cloud-init needs jinja2), then `#cloud-config`;
//! - `write_files` writes `/run/kubeadm/kubeadm.yaml` (kubeadm `InitConfiguration` +
//!   `ClusterConfiguration`, node name `{{ ds.meta_data.local_hostname }}`) and
//!   `/run/cluster-api/placeholder`;
//! - `runcmd` runs the pre-kubeadm commands, then exactly CABPK's line
//!   `kubeadm init --config /run/kubeadm/kubeadm.yaml && echo success > /run/cluster-api/bootstrap-success.complete`;
//! - `users` holds the `capk` user CAPK injects (passwordless sudo, groups `users, admin`, the
//!   test's key plus any `--authorized-key`).
//!
//! Upstream facts (kubernetes-sigs/cluster-api-provider-kubevirt at 0eadfed, 2026-08-19):
//! `pkg/kubevirt/utils.go` `buildVirtualMachineInstanceTemplate` adds one
//! `CloudInitConfigDrive` volume (`UserDataSecretRef` `<bootstrap secret>-userdata`) on a
//! virtio disk; `pkg/kubevirt/machine.go` `IsBootstrappedWithSSH` runs
//! `cat /run/cluster-api/bootstrap-success.complete` and wants exactly `success`;
//! `pkg/ssh/ssh_command_executor.go` logs in as `capk`.
//!
//! Nothing is softened: on an image that claims to be a Kubernetes node but has no `kubeadm`,
//! the runcmd fails as it would in a cluster (cloud-init reports the error, no sentinel). An
//! image that claims to be generic gets the same user data without the kubeadm commands
//! ([`UserDataSpec::kubeadm`] false): it is not asked to bootstrap.

use serde_json::json;

/// CABPK's sentinel file.
pub const BOOTSTRAP_SENTINEL: &str = "/run/cluster-api/bootstrap-success.complete";
/// Where CABPK writes the kubeadm configuration of the first control plane.
pub const KUBEADM_CONFIG: &str = "/run/kubeadm/kubeadm.yaml";
/// The user CAPK injects and logs in as.
pub const CAPK_USER: &str = "capk";
/// The containerd socket the image's kubelet uses (CAPK's `CRI_PATH`).
pub const CRI_SOCKET: &str = "unix:///var/run/containerd/containerd.sock";
/// CABPK's runcmd line for `kubeadm init`.
pub const KUBEADM_INIT_CMD: &str = "kubeadm init --config /run/kubeadm/kubeadm.yaml && echo success > /run/cluster-api/bootstrap-success.complete";

/// What goes into the user data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDataSpec {
    /// Public keys (OpenSSH format) authorised for the `capk` user: the test's own first.
    pub capk_keys: Vec<String>,
    /// The Kubernetes version for `kubernetesVersion`; `None` reads it from the image's
    /// `kubeadm version` before `kubeadm init` (kubeadm would otherwise ask the internet).
    pub kubernetes_version: Option<String>,
    /// Pod subnet (CAPK's default templates: `10.243.0.0/16`).
    pub pod_subnet: String,
    /// Service subnet (CAPK's default templates: `10.95.0.0/16`).
    pub service_subnet: String,
    /// Extra API server certificate SANs (the direct profile adds `127.0.0.1` so that the
    /// host reaches the API server through a forwarded port).
    pub cert_sans: Vec<String>,
    /// Whether runcmd bootstraps with kubeadm (a Kubernetes image); false for a generic image.
    pub kubeadm: bool,
}

impl UserDataSpec {
    /// A spec with CAPK's subnets, `127.0.0.1`/`localhost` as extra SANs and `keys` for `capk`.
    pub fn new(capk_keys: Vec<String>) -> Self {
        Self {
            capk_keys,
            kubernetes_version: None,
            pod_subnet: "10.243.0.0/16".to_owned(),
            service_subnet: "10.95.0.0/16".to_owned(),
            cert_sans: vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            kubeadm: true,
        }
    }
}

/// The kubeadm configuration CABPK would write for a first control plane.
pub fn kubeadm_config(spec: &UserDataSpec) -> String {
    let version = spec
        .kubernetes_version
        .as_deref()
        .unwrap_or("KIB_FROM_KUBEADM");
    let cluster = json!({
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "clusterName": "kib-conformance",
        "kubernetesVersion": version,
        "controlPlaneEndpoint": "",
        "apiServer": {"certSANs": spec.cert_sans},
        "networking": {
            "dnsDomain": "cluster.local",
            "podSubnet": spec.pod_subnet,
            "serviceSubnet": spec.service_subnet,
        },
    });
    let init = json!({
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "InitConfiguration",
        "nodeRegistration": {
            "criSocket": CRI_SOCKET,
            "name": "{{ ds.meta_data.local_hostname }}",
            "imagePullPolicy": "IfNotPresent",
            "kubeletExtraArgs": [{"name": "provider-id", "value": "kubevirt://{{ ds.meta_data.local_hostname }}"}],
        },
    });
    let yaml =
        |v: &serde_json::Value| serde_yaml::to_string(v).expect("JSON values serialize as YAML");
    format!("---\n{}---\n{}", yaml(&cluster), yaml(&init))
}

/// The commands CABPK's `preKubeadmCommands` would hold here.
pub fn pre_kubeadm_commands(spec: &UserDataSpec) -> Vec<String> {
    let mut cmds = Vec::new();
    if spec.kubernetes_version.is_none() {
        cmds.push(format!(
            "sed -i \"s/^kubernetesVersion: .*/kubernetesVersion: $(kubeadm version -o short)/\" {KUBEADM_CONFIG}"
        ));
    }
    cmds
}

/// The complete user data (`## template: jinja` + `#cloud-config`).
pub fn render(spec: &UserDataSpec) -> String {
    let mut runcmd: Vec<String> = Vec::new();
    if spec.kubeadm {
        runcmd.extend(pre_kubeadm_commands(spec));
        runcmd.push(KUBEADM_INIT_CMD.to_owned());
    }
    let doc = json!({
        "write_files": [
            {
                "path": KUBEADM_CONFIG,
                "owner": "root:root",
                "permissions": "0640",
                "content": kubeadm_config(spec),
            },
            {
                "path": "/run/cluster-api/placeholder",
                "owner": "root:root",
                "permissions": "0640",
                "content": "This placeholder file is used to create the /run/cluster-api sub directory in a way that is compatible with both Linux and Windows (mkdir -p /run/cluster-api does not work with Windows)",
            },
        ],
        "runcmd": runcmd,
        "users": [{
            "name": CAPK_USER,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "groups": "users, admin",
            "lock_passwd": true,
            "ssh_authorized_keys": spec.capk_keys.iter().map(|k| k.trim()).collect::<Vec<_>>(),
        }],
    });
    let body = serde_yaml::to_string(&doc).expect("JSON values serialize as YAML");
    format!("## template: jinja\n#cloud-config\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kib_vm::seed::{ConfigDrive, Seed};

    fn spec() -> UserDataSpec {
        UserDataSpec::new(vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest kib-conformance".to_owned(),
            "ssh-rsa AAAAB3Nza person@laptop: with # yaml chars\n".to_owned(),
        ])
    }

    /// What cloud-init does with the first line: Jinja renders, then YAML parses.
    fn parse(ud: &str) -> serde_yaml::Value {
        let (first, rest) = ud.split_once('\n').unwrap();
        assert_eq!(first, "## template: jinja");
        assert!(rest.starts_with("#cloud-config\n"));
        let rendered = rest.replace("{{ ds.meta_data.local_hostname }}", "node-1");
        serde_yaml::from_str(&rendered).unwrap()
    }

    #[test]
    fn user_data_is_cabpk_shaped() {
        let v = parse(&render(&spec()));
        let files = v["write_files"].as_sequence().unwrap();
        assert_eq!(files[0]["path"].as_str(), Some(KUBEADM_CONFIG));
        assert_eq!(
            files[1]["path"].as_str(),
            Some("/run/cluster-api/placeholder")
        );
        let runcmd: Vec<&str> = v["runcmd"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(runcmd.last(), Some(&KUBEADM_INIT_CMD));
        // Nothing turns a missing kubeadm into success.
        assert!(!runcmd.iter().any(|c| c.contains("exit 0")), "{runcmd:?}");
        let user = &v["users"][0];
        assert_eq!(user["name"].as_str(), Some("capk"));
        assert_eq!(user["sudo"].as_str(), Some("ALL=(ALL) NOPASSWD:ALL"));
        assert_eq!(user["groups"].as_str(), Some("users, admin"));
        let keys = user["ssh_authorized_keys"].as_sequence().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys[1].as_str(),
            Some("ssh-rsa AAAAB3Nza person@laptop: with # yaml chars")
        );
    }

    #[test]
    fn kubeadm_config_parses_back() {
        let mut s = spec();
        s.kubernetes_version = Some("v1.37.1".into());
        let v = parse(&render(&s));
        let content = v["write_files"][0]["content"].as_str().unwrap();
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(content)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["kind"].as_str(), Some("ClusterConfiguration"));
        assert_eq!(docs[0]["kubernetesVersion"].as_str(), Some("v1.37.1"));
        assert_eq!(
            docs[0]["networking"]["podSubnet"].as_str(),
            Some("10.243.0.0/16")
        );
        assert_eq!(
            docs[0]["apiServer"]["certSANs"][0].as_str(),
            Some("127.0.0.1")
        );
        assert_eq!(docs[1]["kind"].as_str(), Some("InitConfiguration"));
        assert_eq!(
            docs[1]["nodeRegistration"]["criSocket"].as_str(),
            Some(CRI_SOCKET)
        );
        assert_eq!(docs[1]["nodeRegistration"]["name"].as_str(), Some("node-1"));
        // A known version needs no rewrite from `kubeadm version`.
        assert!(
            !v["runcmd"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|c| c.as_str().unwrap().contains("sed -i"))
        );
        // Unknown: the version comes from the image before `kubeadm init`.
        let v = parse(&render(&spec()));
        let runcmd = v["runcmd"].as_sequence().unwrap();
        assert!(
            runcmd[0]
                .as_str()
                .unwrap()
                .contains("kubeadm version -o short")
        );
    }

    /// The ConfigDrive the VM gets (ISO 9660, `config-2`, as KubeVirt writes it) carries the
    /// user data and meta data under `openstack/latest/` (read back with isoinfo).
    #[test]
    fn configdrive_carries_the_user_data() {
        let ud = render(&spec());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        Seed::from(ConfigDrive::new("kib-conformance", ud.clone()))
            .write_image(&path)
            .unwrap();
        let read = |file: &str| {
            let out = std::process::Command::new("isoinfo")
                .args(["-R", "-i"])
                .arg(&path)
                .args(["-x", file])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let text = read("/openstack/latest/user_data");
        assert_eq!(text, ud);
        let meta: serde_json::Value =
            serde_json::from_str(&read("/openstack/latest/meta_data.json")).unwrap();
        assert_eq!(meta["hostname"], "kib-conformance");
        parse(&text);
    }
}
