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
//! network = "outbound"      # outbound | isolated (QEMU user net with restrict=on)
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

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use kib_manifest::Hint;
use serde::{Deserialize, Serialize};

pub use kib_manifest::{Compression, ImageFormat};
pub use kib_vm::{AccelRequest, Firmware};

use crate::checksum::{ChecksumFile, ChecksumSource};
use crate::provision::{AnsibleProvisioner, Provisioner, RebootProvisioner};

/// The default base image: the newest Rocky Linux 10 GenericCloud Base image.
pub const DEFAULT_BASE_IMAGE: &str = "https://dl.rockylinux.org/pub/rocky/10/images/x86_64/Rocky-10-GenericCloud-Base.latest.x86_64.qcow2";
/// Where the default base image's checksum is published.
pub const DEFAULT_BASE_CHECKSUM: &str =
    "file:https://dl.rockylinux.org/pub/rocky/10/images/x86_64/CHECKSUM";
/// The default Kubernetes minor.
pub const DEFAULT_KUBERNETES_VERSION: &str = "1.37";

/// Errors from loading and overriding the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("Failed to read `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("Invalid configuration in `{}`{}", path.display(), at(*line, key.as_deref()))]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line of the error, from 1, when known.
        line: Option<usize>,
        /// The dotted key the error is about (`vm.disk_size`), when known.
        key: Option<String>,
        /// The cause (with the TOML snippet).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or malformed.
    #[error("Invalid value for `{key}` in {origin}")]
    Invalid {
        /// Where the value came from: `` `path/kib.toml` `` or `the command line`.
        origin: String,
        /// The dotted key (`vm.cpus`).
        key: String,
        /// What is wrong.
        #[source]
        source: ValueError,
    },
}

fn at(line: Option<usize>, key: Option<&str>) -> String {
    match (line, key) {
        (Some(l), Some(k)) => format!(" at line {l} (`{k}`)"),
        (Some(l), None) => format!(" at line {l}"),
        (None, Some(k)) => format!(" (`{k}`)"),
        (None, None) => String::new(),
    }
}

impl Hint for ConfigError {
    /// A suggestion for fixing the error, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            ConfigError::Invalid { source, .. } => source.hint(),
            ConfigError::Parse { source, .. } if source.message().contains("unknown field") => Some(
                "see the commented defaults at the top of builder/src/config/mod.rs (or the repository's kib.toml)"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// A malformed or out-of-range value (from `kib.toml` or a command-line flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not `MAJOR.MINOR` or `MAJOR.MINOR.PATCH`.
    #[error("`{value}` is not a Kubernetes version like `1.37` or `1.37.1`")]
    KubernetesVersion {
        /// The value given.
        value: String,
    },
    /// Not a size like `20G`.
    #[error("`{value}` is not a size like `20G`, `512M` or `1T`")]
    Size {
        /// The value given.
        value: String,
    },
    /// Not a duration like `15m`.
    #[error("`{value}` is not a duration like `90s`, `15m` or `1h30m`")]
    Duration {
        /// The value given.
        value: String,
    },
    /// Not one of the allowed words.
    #[error("`{value}` is not one of {expected}")]
    Choice {
        /// The value given.
        value: String,
        /// The allowed values, e.g. `` `auto`, `kvm`, `tcg` ``.
        expected: &'static str,
    },
    /// A `--var` without `=`.
    #[error("`{value}` is not `KEY=VALUE`")]
    Var {
        /// The value given.
        value: String,
    },
    /// A number below its minimum.
    #[error("{value} is below the minimum of {min}")]
    TooSmall {
        /// The value given.
        value: String,
        /// The minimum.
        min: String,
    },
    /// Not a usable Linux user name.
    #[error(
        "`{value}` is not a valid user name (lower-case letters, digits, `_` and `-`; not an account of the image such as `root`)"
    )]
    UserName {
        /// The value given.
        value: String,
    },
    /// Not a usable file name (empty, or with `/`, or starting with `.`).
    #[error("`{value}` is not a valid output name (no `/`, not empty, not starting with `.`)")]
    OutputName {
        /// The value given.
        value: String,
    },
    /// An empty string where text is needed.
    #[error("The value is empty")]
    Empty,
}

impl From<kib_vm::UnknownChoice> for ValueError {
    fn from(e: kib_vm::UnknownChoice) -> Self {
        ValueError::Choice {
            value: e.value,
            expected: e.expected,
        }
    }
}

impl From<kib_manifest::UnknownChoice> for ValueError {
    fn from(e: kib_manifest::UnknownChoice) -> Self {
        ValueError::Choice {
            value: e.value,
            expected: e.expected,
        }
    }
}

impl Hint for ValueError {
    /// A suggestion for fixing the error, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            ValueError::UserName { value } if RESERVED_USERS.contains(&value.as_str()) => Some(
                "the build user is deleted at the end of the build; pick a dedicated name such as `kib-build`"
                    .to_owned(),
            ),
            ValueError::KubernetesVersion { .. } => {
                Some("give a minor (`1.37`, newest patch) or an exact release (`1.37.1`), without `v`".to_owned())
            }
            _ => None,
        }
    }
}

macro_rules! choice_enum {
    ($(#[$meta:meta])* $name:ident, $expected:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The word used in `kib.toml` and on the command line.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ValueError::Choice { value: s.to_owned(), expected: $expected }),
                }
            }
        }
    };
}

choice_enum!(
    /// The build VM's network.
    NetworkMode, "`outbound`, `isolated`", {
    /// QEMU user networking with outbound access (package downloads): what real builds need.
    #[default]
    Outbound => "outbound",
    /// QEMU user networking with `restrict=on`: nothing leaves the host (port forwards work).
    Isolated => "isolated",
});

impl From<NetworkMode> for kib_vm::Network {
    fn from(mode: NetworkMode) -> Self {
        match mode {
            NetworkMode::Outbound => kib_vm::Network::Outbound,
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
    /// `--network outbound|isolated`.
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

/// Checks a Kubernetes version (`1.37` or `1.37.1`, an optional leading `v` is dropped).
pub fn parse_kubernetes_version(s: &str) -> Result<String, ValueError> {
    let bad = || ValueError::KubernetesVersion {
        value: s.to_owned(),
    };
    let v = s.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let parts: Vec<&str> = v.split('.').collect();
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_digit()))
        || parts[0] != "1"
        || parts
            .iter()
            .skip(1)
            .any(|p| p.len() > 1 && p.starts_with('0'))
    {
        return Err(bad());
    }
    Ok(v.to_owned())
}

/// Parses a size: a number with an optional unit `K`, `M`, `G`, `T` (powers of 1024, also
/// written `KiB`, `GB`…); a bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let bad = || ValueError::Size {
        value: s.to_owned(),
    };
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Writes a size with the largest exact unit (`20G`, `1536M`, `1000`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Parses a duration: one or more `<number><unit>` with units `h`, `m`, `s`, `ms`
/// (`15m`, `90s`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let bad = || ValueError::Duration {
        value: s.to_owned(),
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            "m" | "min" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// [`parse_duration`], and a bare number of seconds (`900`) too: what command-line timeouts such
/// as `kib conformance --timeout` accept (in `kib.toml` a bare number is refused as ambiguous).
pub fn parse_duration_or_seconds(s: &str) -> Result<Duration, ValueError> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| ValueError::Duration {
                value: s.to_owned(),
            });
    }
    parse_duration(s)
}

/// Writes a duration as [`parse_duration`] reads it (`15m`, `1h30m`, `90s`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Parses `--var KEY=VALUE`: the value is JSON if it parses as JSON (`3`, `true`,
/// `["a"]`, `{"k": 1}`, `"quoted"`), else the text as a string.
pub fn parse_var(s: &str) -> Result<(String, serde_json::Value), ValueError> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(ValueError::Var {
            value: s.to_owned(),
        });
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(ValueError::Var {
            value: s.to_owned(),
        });
    }
    let value =
        serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

fn de_kubernetes_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    parse_kubernetes_version(&s).map_err(serde::de::Error::custom)
}

mod size_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_size(*v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(n),
            Raw::Text(t) => super::parse_size(&t).map_err(serde::de::Error::custom),
        }
    }
}

mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let t = String::deserialize(d)?;
        super::parse_duration(&t).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/x/kib.toml"))
    }

    #[test]
    fn repo_kib_toml_equals_defaults() {
        let text = include_str!("../../../kib.toml");
        assert_eq!(parse(text).unwrap(), Config::default());
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
