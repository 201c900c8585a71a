//! `kib build`: boots the base cloud image in QEMU, provisions it and exports the node image.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use kib_builder::checksum::ChecksumSource;
use kib_builder::config::{
    AccelRequest, Compression, Config, Firmware, ImageFormat, NetworkMode, Overrides,
    parse_duration, parse_size, parse_var,
};
use kib_builder::pipeline::{BuildRequest, OnError};
use kib_vm::QemuRunner;

use crate::cli::{GlobalArgs, OutputFormat};
use crate::error_render::HintExt as _;
use crate::reporter::TermReporter;

const AFTER_HELP: &str = "\
What it does: downloads (once, into the cache) and verifies the base cloud image, boots a
copy-on-write overlay of it in QEMU (KVM where it can boot a guest, TCG otherwise), seeds
cloud-init with a throwaway build user and SSH key, runs the provisioners of kib.toml (by
default playbook/upgrade.yml, a reboot into the new kernel, then playbook/site.yml), removes the build user, trims the disk, powers
the VM off over ACPI and exports a standalone compressed qcow2, <name>.qcow2.sha256 and
build-manifest.json into the output folder.

Every option overrides the same key of kib.toml. On any failure, Ctrl-C or SIGTERM, QEMU is
stopped, the work folder removed, and nothing is left under the output name.

Examples:
  kib build                                   # Rocky Linux 10 + Kubernetes from kib.toml
  kib build -k 1.37.1 --output-dir out        # another Kubernetes release
  kib build --base-image ./my.qcow2 --base-checksum sha256:<hex> --network isolated
  kib build --base-image ./my.qcow2 --insecure-skip-checksum   # no checksum, no download
                                              # (Rocky's CHECKSUM is only for the default image)
  kib build --on-error abort                  # keep the VM for debugging when a step fails

Next: kib conformance out/<name>.qcow2, then kib publish --qcow2 ... --manifest ...";

#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub(crate) struct Args {
    /// The configuration file; a missing file means the built-in defaults.
    #[arg(long, short = 'c', default_value = "kib.toml", env = "KIB_CONFIG")]
    config: PathBuf,

    /// The base cloud image: an http(s) URL or a local path. [kib.toml: base.image]
    #[arg(long, value_name = "URL|PATH", help_heading = "Base image")]
    base_image: Option<String>,
    /// How to verify it: `sha256:HEX`, `file:URL` or `file:PATH` (a CHECKSUM file, BSD or GNU format).
    #[arg(long, value_name = "CHECKSUM", value_parser = parse_checksum, help_heading = "Base image")]
    base_checksum: Option<ChecksumSource>,
    /// Use the base image without verifying it. Only for images you made yourself.
    #[arg(long, help_heading = "Base image")]
    insecure_skip_checksum: bool,
    /// Where downloaded base images are kept. [default: $XDG_CACHE_HOME/kib]
    #[arg(long, env = "KIB_CACHE_DIR", help_heading = "Base image")]
    cache_dir: Option<PathBuf>,

    /// Kubernetes version: a minor (`1.37`, its newest patch) or a release (`1.37.1`).
    #[arg(
        long,
        short = 'k',
        value_name = "VERSION",
        help_heading = "Image content"
    )]
    kubernetes_version: Option<String>,
    /// An extra Ansible variable, `KEY=VALUE` (VALUE is JSON if it parses, else a string). Repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var_arg, help_heading = "Image content")]
    vars: Vec<(String, serde_json::Value)>,

    /// Virtual CPUs of the build VM.
    #[arg(long, help_heading = "Build VM")]
    cpus: Option<u32>,
    /// Memory of the build VM, in MiB.
    #[arg(long, value_name = "MIB", help_heading = "Build VM")]
    memory_mib: Option<u32>,
    /// Size of the image's disk, e.g. `20G` (the root filesystem grows to it at first boot).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg, help_heading = "Build VM")]
    disk_size: Option<u64>,
    /// Accelerator: `auto` picks KVM where it can boot a guest, else TCG (slow, with a warning).
    #[arg(long, value_name = "auto|kvm|tcg", help_heading = "Build VM")]
    accel: Option<AccelRequest>,
    /// QEMU CPU model. Default: `host` under KVM, `max` under TCG (Rocky 10 needs x86-64-v3).
    #[arg(long, value_name = "MODEL", help_heading = "Build VM")]
    cpu_model: Option<String>,
    /// Guest network: `outbound` (NAT through passt, what a real build needs; no path to this
    /// host's 127.0.0.1), `outbound-host` (QEMU user networking: NAT, and this host's 127.0.0.1
    /// as 10.0.2.2, for a proxy or mirror there) or `isolated` (nothing leaves this host).
    /// See README, "Network".
    #[arg(
        long,
        value_name = "outbound|outbound-host|isolated",
        help_heading = "Build VM"
    )]
    network: Option<NetworkMode>,
    /// How long to wait for the VM to answer on SSH, e.g. `15m`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg, help_heading = "Build VM")]
    boot_timeout: Option<Duration>,
    /// Firmware: `bios` (KubeVirt's default) or `uefi` (OVMF).
    #[arg(long, value_name = "bios|uefi", help_heading = "Build VM")]
    firmware: Option<Firmware>,
    /// On failure: `cleanup` (stop the VM, remove everything) or `abort` (keep the VM running
    /// and print how to SSH in; Ctrl-C then cleans up).
    #[arg(long, value_name = "cleanup|abort", default_value = "cleanup", value_parser = parse_on_error, help_heading = "Build VM")]
    on_error: OnError,

    /// Output folder. [kib.toml: output.dir]
    #[arg(long, short = 'o', value_name = "DIR", help_heading = "Output")]
    output_dir: Option<PathBuf>,
    /// Output file name, without extension.
    #[arg(long, value_name = "NAME", help_heading = "Output")]
    name: Option<String>,
    /// Image format: `qcow2` or `raw`.
    #[arg(long, value_name = "qcow2|raw", help_heading = "Output")]
    format: Option<ImageFormat>,
    /// qcow2 compression: `zstd` (fast; QEMU >= 5.1), `zlib` (any QEMU) or `none`.
    #[arg(long, value_name = "zstd|zlib|none", help_heading = "Output")]
    compression: Option<Compression>,
    /// What to print on stdout at the end: `text` (the image path) or `json` (the manifest).
    #[arg(long, value_enum, default_value_t, help_heading = "Output")]
    output_format: OutputFormat,
}

fn parse_checksum(s: &str) -> Result<ChecksumSource, String> {
    s.parse()
        .map_err(|e: kib_builder::checksum::ChecksumError| e.to_string())
}
fn parse_var_arg(s: &str) -> Result<(String, serde_json::Value), String> {
    parse_var(s).map_err(|e| e.to_string())
}
fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}
fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}
fn parse_on_error(s: &str) -> Result<OnError, String> {
    match s {
        "cleanup" => Ok(OnError::Cleanup),
        "abort" => Ok(OnError::Abort),
        _ => Err("expected `cleanup` or `abort`".to_owned()),
    }
}

impl Args {
    pub(crate) async fn run(self, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let config_path = std::path::absolute(&self.config)
            .context("Failed to resolve the configuration path")?;
        let mut config = Config::load(&config_path).hinted()?;
        let config_dir = config_path
            .parent()
            .map_or_else(|| PathBuf::from("/"), std::path::Path::to_path_buf);
        let cwd = std::env::current_dir().context("Failed to read the current directory")?;
        let applied = config.apply(Overrides {
            base_image: self.base_image,
            base_checksum: self.base_checksum,
            kubernetes_version: self.kubernetes_version,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            disk_size: self.disk_size,
            accel: self.accel,
            cpu_model: self.cpu_model,
            network: self.network,
            boot_timeout: self.boot_timeout,
            firmware: self.firmware,
            output_dir: self.output_dir.map(|d| cwd.join(d)),
            output_name: self.name,
            format: self.format,
            compression: self.compression,
            ..Overrides::default()
        });
        applied.hinted()?;
        let cache_dir = match self.cache_dir {
            Some(d) => d,
            None => kib_builder::cache::default_cache_dir().hinted()?,
        };
        let vars: BTreeMap<_, _> = self.vars.into_iter().collect();
        let request = BuildRequest {
            // The one git helper (the packager's, which names images by the same commit).
            git_revision: kib_packager::tags::git_info(&config_dir)
                .ok()
                .and_then(|g| g.short_sha),
            config,
            config_dir,
            vars,
            cache_dir,
            insecure_skip_checksum: self.insecure_skip_checksum,
            on_error: self.on_error,
            kib_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let reporter = TermReporter::new(global);
        let runner = QemuRunner::default();
        let cancel = crate::common::signal::interrupted();
        let output = kib_builder::build(&runner, request, &reporter, cancel)
            .await
            .hinted()?;
        reporter.line(&format!(
            "==> built `{}` ({} on disk, {} virtual), manifest `{}`",
            output.image.path.display(),
            kib_builder::config::format_size(output.image.file_size),
            kib_builder::config::format_size(output.image.virtual_size),
            output.manifest_path.display()
        ));
        let mut out = std::io::stdout().lock();
        match self.output_format {
            OutputFormat::Text => writeln!(out, "{}", output.image.path.display())?,
            OutputFormat::Json => {
                serde_json::to_writer_pretty(&mut out, &output.manifest)?;
                writeln!(out)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
