//! `kib.toml`: what to build and how, and the command-line [`Overrides`] that win over it.
//!
//! A missing `kib.toml` means the built-in defaults, which are exactly the repository's
//! `kib.toml` (a unit test keeps the two equal):
//! ```toml
//! [base]
//! image = "https://dl.rockylinux.org/pub/rocky/10/images/x86_64/Rocky-10-GenericCloud-Base.latest.x86_64.qcow2"
//! checksum = "file:https://dl.rockylinux.org/pub/rocky/10/images/x86_64/CHECKSUM"
//!
//! [kubernetes]
//! version = "1.37"          # a minor ("1.37", newest patch) or an exact patch ("1.37.1")
//!
//! [vm]
//! cpus = 2
//! memory_mib = 4096
//! disk_size = "20G"         # K, M, G, T (powers of 1024), as qemu-img reads them
//! accel = "auto"            # auto | kvm | tcg
//! network = "outbound"      # outbound (passt) | outbound-host | isolated
//! boot_timeout = "15m"
//! shutdown_timeout = "5m"
//! ssh_user = "kib-build"
//! firmware = "bios"         # bios | uefi
//!
//! [output]
//! dir = "output"
//! name = "rocky10-kubernetes"
//! format = "qcow2"          # qcow2 | raw
//! compression = "zstd"      # zstd | zlib | none (qcow2 only)
//!
//! [[provisioner]]
//! type = "ansible"
//! playbook = "playbook/upgrade.yml"
//!
//! [[provisioner]]
//! type = "reboot"
//!
//! [[provisioner]]
//! type = "ansible"
//! playbook = "playbook/site.yml"
//!
//! [vars]                    # extra vars for every ansible provisioner
//! ```
//! Every table rejects unknown keys; errors name the file, the line and the key.
//!
//! Relative paths: `base.image` and a `file:PATH` checksum are resolved against the folder of
//! `kib.toml` by [`Config::load`]; `output.dir` and provisioner paths are kept as written
//! and resolve against that folder too (the build does it). Paths given as [`Overrides`] are
//! relative to the current directory and are made absolute by [`Config::apply`].
//!
//! Here: the model, its defaults, loading, overrides and validation; `error.rs` holds
//! [`ConfigError`] and [`ValueError`], `units.rs` the value syntaxes ([`parse_size`],
//! [`parse_duration`], …).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use kib_manifest::{Compression, ImageFormat};
pub use kib_vm::{AccelRequest, Firmware};

use crate::checksum::{ChecksumFile, ChecksumSource};
use crate::provision::{AnsibleProvisioner, Provisioner, RebootProvisioner};

mod error;
mod units;

pub use error::{ConfigError, ValueError};
use units::{de_kubernetes_version, duration_serde, size_serde};
pub use units::{
    format_duration, format_size, parse_duration, parse_duration_or_seconds,
    parse_kubernetes_version, parse_size, parse_var,
};

/// The default base image: the newest Rocky Linux 10 GenericCloud Base image.
pub const DEFAULT_BASE_IMAGE: &str = "https://dl.rockylinux.org/pub/rocky/10/images/x86_64/Rocky-10-GenericCloud-Base.latest.x86_64.qcow2";
/// Where the default base image's checksum is published.
pub const DEFAULT_BASE_CHECKSUM: &str =
    "file:https://dl.rockylinux.org/pub/rocky/10/images/x86_64/CHECKSUM";
/// The default Kubernetes minor.
pub const DEFAULT_KUBERNETES_VERSION: &str = "1.37";

use kib_manifest::choice_enum;

choice_enum!(
    /// The build VM's network.
    NetworkMode, "`outbound`, `outbound-host`, `isolated`", {
    /// Outbound access (package downloads) through passt, with no path to the host's loopback
    /// (issue #16.11): what real builds need.
    #[default]
    Outbound => "outbound",
    /// Outbound access through QEMU user networking, which also lets the guest reach the
    /// host's 127.0.0.1 through 10.0.2.2: for a proxy or mirror on the host's loopback.
    #[serde(rename = "outbound-host")]
    OutboundHost => "outbound-host",
    /// QEMU user networking with `restrict=on`: nothing leaves the host (port forwards work).
    Isolated => "isolated",
});

impl From<NetworkMode> for kib_vm::Network {
    fn from(mode: NetworkMode) -> Self {
        match mode {
            NetworkMode::Outbound => kib_vm::Network::Outbound,
            NetworkMode::OutboundHost => kib_vm::Network::OutboundHost,
            NetworkMode::Isolated => kib_vm::Network::Isolated,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[base]`: the image the build starts from.
    #[serde(default)]
    pub base: BaseConfig,
    /// `[kubernetes]`.
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// `[vm]`: the build VM.
    #[serde(default)]
    pub vm: VmConfig,
    /// `[output]`: the exported image.
    #[serde(default)]
    pub output: OutputConfig,
    /// `[[provisioner]]`: the steps, in order.
    #[serde(default = "default_provisioners", rename = "provisioner")]
    pub provisioners: Vec<Provisioner>,
    /// `[vars]`: extra vars for every ansible provisioner. Precedence, lowest first: a
    /// provisioner's own `extra_vars`, `kubernetes_version`, `[vars]`, `--var`.
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
}

/// `[base]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseConfig {
    /// An `http(s)://` URL or a local path.
    #[serde(default = "default_base_image")]
    pub image: String,
    /// `sha256:HEX`, `file:URL` or `file:PATH`; `None` needs `--insecure-skip-checksum`.
    /// The default (Rocky's published `CHECKSUM`) belongs to the default image only: a
    /// configured image without its own checksum gets none ([`Config::parse`]).
    #[serde(default)]
    pub checksum: Option<ChecksumSource>,
}

/// `[kubernetes]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// `1.37` (the newest patch of that minor) or `1.37.1`; validated, without a `v`.
    #[serde(
        default = "default_kubernetes_version",
        deserialize_with = "de_kubernetes_version"
    )]
    pub version: String,
}

/// `[vm]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Virtual CPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Memory in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// The build disk's virtual size in bytes (written `"20G"`).
    #[serde(default = "default_disk_size", with = "size_serde")]
    pub disk_size: u64,
    /// The accelerator.
    #[serde(default)]
    pub accel: AccelRequest,
    /// The QEMU CPU model; `None` means `host` under KVM and `max` under TCG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// The network.
    #[serde(default)]
    pub network: NetworkMode,
    /// How long to wait for SSH after starting the VM (written `"15m"`).
    #[serde(default = "default_boot_timeout", with = "duration_serde")]
    pub boot_timeout: Duration,
    /// How long to wait for the VM to power off (written `"5m"`).
    #[serde(default = "default_shutdown_timeout", with = "duration_serde")]
    pub shutdown_timeout: Duration,
    /// The temporary user the build logs in as; it is deleted at the end.
    #[serde(default = "default_ssh_user")]
    pub ssh_user: String,
    /// The firmware.
    #[serde(default)]
    pub firmware: Firmware,
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// The folder for the image and `build-manifest.json`.
    #[serde(default = "default_output_dir")]
    pub dir: PathBuf,
    /// The image's file name without extension.
    #[serde(default = "default_output_name")]
    pub name: String,
    /// The image format.
    #[serde(default)]
    pub format: ImageFormat,
    /// The qcow2 compression (ignored for raw).
    #[serde(default)]
    pub compression: Compression,
}

fn default_base_image() -> String {
    DEFAULT_BASE_IMAGE.to_owned()
}
fn default_base_checksum() -> Option<ChecksumSource> {
    Some(
        DEFAULT_BASE_CHECKSUM
            .parse()
            .expect("the default checksum source parses"),
    )
}
/// The checksum an image gets when none is given: Rocky's `CHECKSUM` for the default image,
/// nothing for any other.
fn default_checksum_for(image: &str) -> Option<ChecksumSource> {
    if image == DEFAULT_BASE_IMAGE {
        default_base_checksum()
    } else {
        None
    }
}
fn default_kubernetes_version() -> String {
    DEFAULT_KUBERNETES_VERSION.to_owned()
}
fn default_cpus() -> u32 {
    2
}
fn default_memory_mib() -> u32 {
    4096
}
fn default_disk_size() -> u64 {
    20 << 30
}
fn default_boot_timeout() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_ssh_user() -> String {
    "kib-build".to_owned()
}
fn default_output_dir() -> PathBuf {
    PathBuf::from("output")
}
fn default_output_name() -> String {
    "rocky10-kubernetes".to_owned()
}
/// Upgrade, reboot into the new kernel, then the node (playbook/upgrade.yml's header).
fn default_provisioners() -> Vec<Provisioner> {
    let ansible = |playbook: &str| {
        Provisioner::Ansible(AnsibleProvisioner {
            playbook: PathBuf::from(playbook),
            extra_vars: BTreeMap::new(),
            extra_args: Vec::new(),
        })
    };
    vec![
        ansible("playbook/upgrade.yml"),
        Provisioner::Reboot(RebootProvisioner::default()),
        ansible("playbook/site.yml"),
    ]
}

impl Default for BaseConfig {
    fn default() -> Self {
        BaseConfig {
            image: default_base_image(),
            checksum: default_base_checksum(),
        }
    }
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            version: default_kubernetes_version(),
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            cpus: default_cpus(),
            memory_mib: default_memory_mib(),
            disk_size: default_disk_size(),
            accel: AccelRequest::default(),
            cpu_model: None,
            network: NetworkMode::default(),
            boot_timeout: default_boot_timeout(),
            shutdown_timeout: default_shutdown_timeout(),
            ssh_user: default_ssh_user(),
            firmware: Firmware::default(),
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            dir: default_output_dir(),
            name: default_output_name(),
            format: ImageFormat::default(),
            compression: Compression::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base: BaseConfig::default(),
            kubernetes: KubernetesConfig::default(),
            vm: VmConfig::default(),
            output: OutputConfig::default(),
            provisioners: default_provisioners(),
            vars: BTreeMap::new(),
        }
    }
}

/// Values from command-line flags; each `Some` replaces the configured value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--base-image URL|PATH`.
    pub base_image: Option<String>,
    /// `--base-checksum sha256:HEX|file:URL|file:PATH`.
    pub base_checksum: Option<ChecksumSource>,
    /// `--kubernetes-version 1.37[.1]` (checked by [`parse_kubernetes_version`]).
    pub kubernetes_version: Option<String>,
    /// `--cpus N`.
    pub cpus: Option<u32>,
    /// `--memory-mib N`.
    pub memory_mib: Option<u32>,
    /// `--disk-size 20G` (parsed by [`parse_size`]).
    pub disk_size: Option<u64>,
    /// `--accel auto|kvm|tcg`.
    pub accel: Option<AccelRequest>,
    /// `--cpu-model MODEL`.
    pub cpu_model: Option<String>,
    /// `--network outbound|outbound-host|isolated`.
    pub network: Option<NetworkMode>,
    /// `--boot-timeout 15m` (parsed by [`parse_duration`]).
    pub boot_timeout: Option<Duration>,
    /// `--ssh-user NAME`.
    pub ssh_user: Option<String>,
    /// `--firmware bios|uefi`.
    pub firmware: Option<Firmware>,
    /// `--output-dir DIR` (relative to the current directory).
    pub output_dir: Option<PathBuf>,
    /// `--output-name NAME`.
    pub output_name: Option<String>,
    /// `--format qcow2|raw`.
    pub format: Option<ImageFormat>,
    /// `--compression zstd|zlib|none`.
    pub compression: Option<Compression>,
}

impl Config {
    /// Loads `path`; a missing file gives [`Config::default`]. Relative `base.image` and
    /// `file:PATH` checksums are resolved against the file's folder. The result is validated.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no configuration file, using the defaults");
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut config = Config::parse(&text, path)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        config.resolve_paths(dir);
        Ok(config)
    }

    /// Parses and validates configuration text; `path` is only used in error messages.
    /// Paths are kept as written.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| {
            let (line, key) = locate(text, source.span());
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                key,
                source: Box::new(source),
            }
        })?;
        config.base.checksum = config
            .base
            .checksum
            .take()
            .or_else(|| default_checksum_for(&config.base.image));
        config.validate(&format!("`{}`", path.display()))?;
        Ok(config)
    }

    /// Applies command-line overrides (they win) and validates the result. Relative override
    /// paths are made absolute against the current directory.
    pub fn apply(&mut self, overrides: Overrides) -> Result<(), ConfigError> {
        let Overrides {
            base_image,
            base_checksum,
            kubernetes_version,
            cpus,
            memory_mib,
            disk_size,
            accel,
            cpu_model,
            network,
            boot_timeout,
            ssh_user,
            firmware,
            output_dir,
            output_name,
            format,
            compression,
        } = overrides;
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        if let Some(v) = base_image {
            self.base.image = v;
            if let Some(p) = relative_local_image(&self.base.image) {
                self.base.image = cwd.join(p).display().to_string();
            }
            // The configured checksum belongs to the configured image: another image needs
            // `--base-checksum` or `--insecure-skip-checksum` (issue #15.7: a local image with
            // --insecure-skip-checksum must not fetch Rocky's CHECKSUM).
            self.base.checksum = default_checksum_for(&self.base.image);
        }
        if let Some(mut v) = base_checksum {
            if let ChecksumSource::File(ChecksumFile::Path(p)) = &mut v
                && p.is_relative()
            {
                *p = cwd.join(&*p);
            }
            self.base.checksum = Some(v);
        }
        if let Some(v) = kubernetes_version {
            self.kubernetes.version =
                parse_kubernetes_version(&v).map_err(|source| ConfigError::Invalid {
                    origin: "the command line".to_owned(),
                    key: "kubernetes.version".to_owned(),
                    source,
                })?;
        }
        macro_rules! set {
            ($($opt:ident => $($field:ident).+),+ $(,)?) => {
                $(if let Some(v) = $opt { self.$($field).+ = v; })+
            };
        }
        set!(
            cpus => vm.cpus,
            memory_mib => vm.memory_mib,
            disk_size => vm.disk_size,
            accel => vm.accel,
            network => vm.network,
            boot_timeout => vm.boot_timeout,
            ssh_user => vm.ssh_user,
            firmware => vm.firmware,
            output_name => output.name,
            format => output.format,
            compression => output.compression,
        );
        if let Some(v) = cpu_model {
            self.vm.cpu_model = Some(v);
        }
        if let Some(v) = output_dir {
            self.output.dir = if v.is_relative() { cwd.join(v) } else { v };
        }
        self.validate("the command line")
    }

    /// Checks the values that the types alone do not; `origin` names where they came from.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, source| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            source,
        };
        if self.base.image.trim().is_empty() {
            return Err(invalid("base.image", ValueError::Empty));
        }
        parse_kubernetes_version(&self.kubernetes.version)
            .map_err(|e| invalid("kubernetes.version", e))?;
        if self.vm.cpus < 1 {
            return Err(invalid("vm.cpus", too_small(self.vm.cpus, "1")));
        }
        if self.vm.memory_mib < 1024 {
            return Err(invalid(
                "vm.memory_mib",
                too_small(self.vm.memory_mib, "1024"),
            ));
        }
        if self.vm.disk_size < 1 << 30 {
            return Err(invalid(
                "vm.disk_size",
                too_small(format_size(self.vm.disk_size), "1G"),
            ));
        }
        if self
            .vm
            .cpu_model
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return Err(invalid("vm.cpu_model", ValueError::Empty));
        }
        if self.vm.boot_timeout < Duration::from_secs(10) {
            return Err(invalid(
                "vm.boot_timeout",
                too_small(format_duration(self.vm.boot_timeout), "10s"),
            ));
        }
        if self.vm.shutdown_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "vm.shutdown_timeout",
                too_small(format_duration(self.vm.shutdown_timeout), "1s"),
            ));
        }
        if !valid_user_name(&self.vm.ssh_user) {
            return Err(invalid(
                "vm.ssh_user",
                ValueError::UserName {
                    value: self.vm.ssh_user.clone(),
                },
            ));
        }
        let name = &self.output.name;
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(invalid(
                "output.name",
                ValueError::OutputName {
                    value: name.clone(),
                },
            ));
        }
        Ok(())
    }

    fn resolve_paths(&mut self, dir: &Path) {
        if let Some(p) = relative_local_image(&self.base.image) {
            self.base.image = dir.join(p).display().to_string();
        }
        if let Some(ChecksumSource::File(ChecksumFile::Path(p))) = &mut self.base.checksum
            && p.is_relative()
        {
            *p = dir.join(&*p);
        }
    }
}

/// `Some(path)` when `image` is a relative local path (not a URL).
fn relative_local_image(image: &str) -> Option<PathBuf> {
    if image.contains("://") {
        return None;
    }
    let p = Path::new(image);
    p.is_relative().then(|| p.to_owned())
}

fn too_small(value: impl fmt::Display, min: &str) -> ValueError {
    ValueError::TooSmall {
        value: value.to_string(),
        min: min.to_owned(),
    }
}

/// Accounts of Rocky and Debian cloud images (and their usual services) that the build must
/// never take over: the build user is deleted with its home at the end (issue #16.4). The
/// guest side also refuses uids below 1000 and homes outside /home (`finish_script`).
const RESERVED_USERS: &[&str] = &[
    "root",
    "bin",
    "daemon",
    "adm",
    "lp",
    "sync",
    "shutdown",
    "halt",
    "mail",
    "operator",
    "games",
    "ftp",
    "nobody",
    "sys",
    "man",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "sshd",
    "dbus",
    "polkitd",
    "chrony",
    "tss",
    "rpc",
    "rpcuser",
    "systemd-network",
    "systemd-resolve",
    "systemd-timesync",
    "systemd-coredump",
    "systemd-oom",
    "messagebus",
    "_apt",
    "rocky",
    "cloud-user",
    "admin",
    "debian",
];

fn valid_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    !RESERVED_USERS.contains(&name)
        && name.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Finds the line and dotted key of a TOML error from its byte span.
fn locate(text: &str, span: Option<std::ops::Range<usize>>) -> (Option<usize>, Option<String>) {
    let Some(span) = span else {
        return (None, None);
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    let Some(line) = lines.get(line_no - 1) else {
        return (Some(line_no), None);
    };
    let trimmed = line.trim();
    let table = lines[..line_no - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['));
    let table = table.map(|t| t.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    if trimmed.starts_with('[') {
        let t = trimmed.trim_matches(|c| c == '[' || c == ']').trim();
        return (Some(line_no), Some(t.to_owned()));
    }
    let key = trimmed
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned());
    let key = match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (t, None) => t,
    };
    (Some(line_no), key)
}

#[cfg(test)]
mod tests {
    use kib_manifest::Hint as _;

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/x/kib.toml"))
    }

    #[test]
    fn repo_kib_toml_equals_defaults() {
        let text = include_str!("../../../kib.toml");
        assert_eq!(parse(text).unwrap(), Config::default());
    }

    /// Issue #16.11: `outbound` (the default) is passt without the host's loopback;
    /// `outbound-host` is the documented switch back to QEMU user networking.
    #[test]
    fn network_modes_and_the_outbound_host_switch() {
        assert_eq!(Config::default().vm.network, NetworkMode::Outbound);
        assert_eq!(
            kib_vm::Network::from(NetworkMode::Outbound),
            kib_vm::Network::Outbound
        );
        let c = parse("[vm]\nnetwork = \"outbound-host\"\n").unwrap();
        assert_eq!(c.vm.network, NetworkMode::OutboundHost);
        assert_eq!(
            kib_vm::Network::from(c.vm.network),
            kib_vm::Network::OutboundHost
        );
        assert_eq!(
            "Outbound-Host".parse::<NetworkMode>().unwrap(),
            NetworkMode::OutboundHost
        );
        assert_eq!(NetworkMode::OutboundHost.to_string(), "outbound-host");
        let err = "host".parse::<NetworkMode>().unwrap_err().to_string();
        assert!(err.contains("`outbound-host`"), "{err}");
    }

    #[test]
    fn empty_file_and_missing_file_are_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Config::load(&dir.path().join("kib.toml")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.base.image, DEFAULT_BASE_IMAGE);
        assert_eq!(
            c.base.checksum.as_ref().unwrap().to_string(),
            DEFAULT_BASE_CHECKSUM
        );
        assert_eq!(c.kubernetes.version, "1.37");
        assert_eq!(
            (c.vm.cpus, c.vm.memory_mib, c.vm.disk_size),
            (2, 4096, 20 << 30)
        );
        assert_eq!(c.vm.ssh_user, "kib-build");
        assert_eq!(c.vm.boot_timeout, Duration::from_secs(900));
        assert_eq!(
            (c.output.format, c.output.compression),
            (ImageFormat::Qcow2, Compression::Zstd)
        );
        assert!(matches!(
            &c.provisioners[..],
            [Provisioner::Ansible(u), Provisioner::Reboot(_), Provisioner::Ansible(s)]
                if u.playbook == Path::new("playbook/upgrade.yml")
                    && s.playbook == Path::new("playbook/site.yml")
        ));
    }

    #[test]
    fn parses_everything() {
        let c = parse(
            r#"
[base]
image = "images/base.qcow2"
checksum = "sha256:9fc9e9ff16888bb68ac39b0392e25c9c92684d50c85f1cce6ab549363bbc4b48"

[kubernetes]
version = "v1.37.1"

[vm]
cpus = 4
memory_mib = 8192
disk_size = "40GiB"
accel = "tcg"
cpu_model = "Haswell-v1"
network = "isolated"
boot_timeout = "1h30m"
ssh_user = "builder"
firmware = "uefi"

[output]
dir = "out"
name = "node"
format = "raw"
compression = "none"

[[provisioner]]
type = "shell"
inline = ["echo hi"]

[[provisioner]]
type = "ansible"
playbook = "p.yml"
extra_vars = { a = 1 }

[vars]
containerd_version = "2.3.2"
debug = true
"#,
        )
        .unwrap();
        assert_eq!(c.kubernetes.version, "1.37.1");
        assert_eq!(c.vm.disk_size, 40 << 30);
        assert_eq!(c.vm.accel, AccelRequest::Tcg);
        assert_eq!(c.vm.network, NetworkMode::Isolated);
        assert_eq!(c.vm.firmware, Firmware::Uefi);
        assert_eq!(c.vm.boot_timeout, Duration::from_secs(5400));
        assert_eq!(c.vm.cpu_model.as_deref(), Some("Haswell-v1"));
        assert_eq!(c.output.format, ImageFormat::Raw);
        assert_eq!(c.provisioners.len(), 2);
        assert_eq!(c.vars["debug"], serde_json::json!(true));
        // Serialising and parsing again gives the same config.
        let again = parse(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn load_resolves_relative_image_and_checksum_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kib.toml");
        std::fs::write(
            &path,
            "[base]\nimage = \"img/base.qcow2\"\nchecksum = \"file:img/SHA256SUMS\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(
            c.base.image,
            dir.path().join("img/base.qcow2").display().to_string()
        );
        assert_eq!(
            c.base.checksum,
            Some(ChecksumSource::File(ChecksumFile::Path(
                dir.path().join("img/SHA256SUMS")
            )))
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[vm]\ncpus = 2\nmemory = 4096\n").unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            "Invalid configuration in `/x/kib.toml` at line 3 (`vm.memory`)"
        );
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("unknown field `memory`"), "{source}");
        assert!(err.hint().is_some());
        let err = parse("[vms]\ncpus = 2\n").unwrap_err();
        assert!(err.to_string().contains("line 1 (`vms`)"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[vm]\ndisk_size = \"20X\"\n", "vm.disk_size", "not a size"),
            ("[vm]\naccel = \"hvf\"\n", "vm.accel", "unknown variant"),
            (
                "[vm]\nboot_timeout = \"soon\"\n",
                "vm.boot_timeout",
                "not a duration",
            ),
            (
                "[kubernetes]\nversion = \"latest\"\n",
                "kubernetes.version",
                "not a Kubernetes version",
            ),
            (
                "[output]\ncompression = \"xz\"\n",
                "output.compression",
                "unknown variant",
            ),
            (
                "[[provisioner]]\ntype = \"puppet\"\n",
                "provisioner.type",
                "unknown variant",
            ),
        ];
        for (text, key, why) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                err.to_string().contains(&format!("(`{key}`)")),
                "{text}: {err}"
            );
            let source = std::error::Error::source(&err).unwrap().to_string();
            assert!(source.contains(why), "{text}: {source}");
        }
    }

    #[test]
    fn range_checks_name_the_key() {
        let cases = [
            ("[vm]\ncpus = 0\n", "vm.cpus"),
            ("[vm]\nmemory_mib = 100\n", "vm.memory_mib"),
            ("[vm]\ndisk_size = \"100M\"\n", "vm.disk_size"),
            ("[vm]\nssh_user = \"root\"\n", "vm.ssh_user"),
            ("[vm]\nssh_user = \"Bad User\"\n", "vm.ssh_user"),
            ("[output]\nname = \"../x\"\n", "output.name"),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("Invalid value for `{key}` in `/x/kib.toml`"),
                "{text}"
            );
        }
        let root = parse("[vm]\nssh_user = \"root\"\n").unwrap_err();
        assert!(root.hint().unwrap().contains("deleted"));
        // Accounts of the image are refused too: their home would be deleted (#16.4).
        for name in ["daemon", "nobody", "rocky", "sshd", "systemd-network"] {
            let err = parse(&format!("[vm]\nssh_user = \"{name}\"\n")).unwrap_err();
            assert!(err.hint().unwrap().contains("deleted"), "{name}");
        }
        assert!(parse("[vm]\nssh_user = \"kib-build-2\"\n").is_ok());
    }

    #[test]
    fn provisioner_unknown_field_is_rejected() {
        let err =
            parse("[[provisioner]]\ntype = \"shell\"\ninline = []\nsudoo = true\n").unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("sudoo"), "{source}");
    }

    #[test]
    fn overrides_win() {
        let mut c = parse("[vm]\ncpus = 4\n[output]\nformat = \"raw\"\n").unwrap();
        c.apply(Overrides {
            cpus: Some(8),
            kubernetes_version: Some("1.36.4".into()),
            accel: Some(AccelRequest::Kvm),
            disk_size: Some(parse_size("30G").unwrap()),
            output_dir: Some("/tmp/out".into()),
            format: Some(ImageFormat::Qcow2),
            compression: Some(Compression::Zlib),
            base_checksum: Some("file:sums/CHECKSUM".parse().unwrap()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(c.vm.cpus, 8);
        assert_eq!(c.kubernetes.version, "1.36.4");
        assert_eq!(c.vm.accel, AccelRequest::Kvm);
        assert_eq!(c.vm.disk_size, 30 << 30);
        assert_eq!(c.output.dir, Path::new("/tmp/out"));
        assert_eq!(
            (c.output.format, c.output.compression),
            (ImageFormat::Qcow2, Compression::Zlib)
        );
        assert!(
            matches!(&c.base.checksum, Some(ChecksumSource::File(ChecksumFile::Path(p))) if p.is_absolute())
        );
        // Untouched values stay.
        assert_eq!(c.vm.memory_mib, 4096);
    }

    #[test]
    fn custom_image_gets_no_default_checksum() {
        // kib.toml: an image without a checksum has none (the build then needs
        // --insecure-skip-checksum); the default image keeps Rocky's CHECKSUM.
        let c = parse("[base]\nimage = \"/srv/my.qcow2\"\n").unwrap();
        assert_eq!(c.base.checksum, None);
        let c = parse(&format!("[base]\nimage = \"{DEFAULT_BASE_IMAGE}\"\n")).unwrap();
        assert_eq!(
            c.base.checksum.as_ref().map(ToString::to_string).as_deref(),
            Some(DEFAULT_BASE_CHECKSUM)
        );
        let c = parse("[base]\nimage = \"/srv/my.qcow2\"\nchecksum = \"sha256:9fc9e9ff16888bb68ac39b0392e25c9c92684d50c85f1cce6ab549363bbc4b48\"\n").unwrap();
        assert!(matches!(c.base.checksum, Some(ChecksumSource::Value(_))));
    }

    #[test]
    fn base_image_override_drops_the_configured_checksum() {
        // The repository's kib.toml names Rocky's CHECKSUM explicitly; `--base-image
        // ./my.qcow2 --insecure-skip-checksum` must not use it (no network at all).
        let mut c = parse(include_str!("../../../kib.toml")).unwrap();
        assert!(c.base.checksum.is_some());
        c.apply(Overrides {
            base_image: Some("my.qcow2".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(c.base.checksum, None);
        assert!(Path::new(&c.base.image).is_absolute());
        // With --base-checksum, that one is used.
        let mut c = Config::default();
        c.apply(Overrides {
            base_image: Some("/srv/my.qcow2".into()),
            base_checksum: Some("file:/srv/SHA256SUMS".parse().unwrap()),
            ..Overrides::default()
        })
        .unwrap();
        assert!(matches!(
            &c.base.checksum,
            Some(ChecksumSource::File(ChecksumFile::Path(p))) if p == Path::new("/srv/SHA256SUMS")
        ));
        // Naming the default image again keeps its checksum.
        let mut c = Config::default();
        c.apply(Overrides {
            base_image: Some(DEFAULT_BASE_IMAGE.into()),
            ..Overrides::default()
        })
        .unwrap();
        assert!(c.base.checksum.is_some());
    }

    #[test]
    fn bad_overrides_say_command_line() {
        let mut c = Config::default();
        let err = c
            .apply(Overrides {
                kubernetes_version: Some("1.x".into()),
                ..Overrides::default()
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid value for `kubernetes.version` in the command line"
        );
        let err = c
            .apply(Overrides {
                cpus: Some(0),
                ..Overrides::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("`vm.cpus`"), "{err}");
    }

    #[test]
    fn kubernetes_versions() {
        for ok in ["1.37", "1.37.1", "v1.36.10"] {
            assert!(parse_kubernetes_version(ok).is_ok(), "{ok}");
        }
        for bad in [
            "1",
            "1.37.1.2",
            "2.0",
            "1.x",
            "",
            "1.037",
            "latest",
            "1.37-rc.1",
        ] {
            assert!(parse_kubernetes_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(
            parse_size("G").is_err()
                && parse_size("1.5G").is_err()
                && parse_size("99999999999T").is_err()
        );
        assert_eq!(format_size(20 << 30), "20G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "15", "m", "15x", "1h-3m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration_or_seconds(" 90 ").unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_duration_or_seconds("1h").unwrap(),
            Duration::from_secs(3600)
        );
        for bad in ["", "soon", "99999999999999999999"] {
            assert!(parse_duration_or_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    }

    #[test]
    fn vars() {
        assert_eq!(
            parse_var("a=1").unwrap(),
            ("a".into(), serde_json::json!(1))
        );
        assert_eq!(parse_var("a=true").unwrap().1, serde_json::json!(true));
        assert_eq!(parse_var("a=[\"x\"]").unwrap().1, serde_json::json!(["x"]));
        assert_eq!(
            parse_var("a=hello world").unwrap().1,
            serde_json::json!("hello world")
        );
        assert_eq!(parse_var("a=1.37").unwrap().1, serde_json::json!(1.37));
        assert_eq!(
            parse_var("a=\"1.37\"").unwrap().1,
            serde_json::json!("1.37")
        );
        assert_eq!(parse_var("a=").unwrap().1, serde_json::json!(""));
        assert_eq!(parse_var("a=b=c").unwrap().1, serde_json::json!("b=c"));
        assert!(matches!(parse_var("novalue"), Err(ValueError::Var { .. })));
        assert!(matches!(parse_var("=x"), Err(ValueError::Var { .. })));
    }
}
