//! `kib conformance IMAGE`: proves an image works as a Cluster API + KubeVirt node.
//!
//! IMAGE is a qcow2 path, an OCI layout directory (`oci:DIR[:TAG]`) or a registry reference.
//! The `direct` profile (default) boots it once in QEMU the way KubeVirt does and runs every
//! check; the `cluster` profile runs it in kind + KubeVirt + CDI + CAPK (internet needed).
//! The report goes to stdout (`--output text|json|junit`), progress to stderr; any FAIL exits 1.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kib_conformance::cluster::{self, ClusterSpec};
use kib_conformance::direct::{self, DirectOptions};
use kib_conformance::manifest::{Expect, ImageExpectations};
use kib_conformance::{CheckReport, Report};
use kib_vm::{AccelRequest, Firmware, Vm as _};

use crate::cli::GlobalArgs;
use crate::error_render::{Failure, HintExt as _};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
enum Profile {
    /// Boot the image with QEMU on this machine.
    #[default]
    Direct,
    /// kind + KubeVirt + CDI + Cluster API + CAPK (needs internet and docker or podman).
    Cluster,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
enum FirmwareArg {
    /// SeaBIOS, KubeVirt's default.
    #[default]
    Bios,
    /// OVMF (Debian's `ovmf`), secure boot off.
    Uefi,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
enum AccelArg {
    /// KVM when usable (not on PVM hosts), else TCG.
    #[default]
    Auto,
    /// KVM or fail.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl From<FirmwareArg> for Firmware {
    fn from(f: FirmwareArg) -> Self {
        match f {
            FirmwareArg::Bios => Firmware::Bios,
            FirmwareArg::Uefi => Firmware::Uefi,
        }
    }
}

impl From<AccelArg> for AccelRequest {
    fn from(a: AccelArg) -> Self {
        match a {
            AccelArg::Auto => AccelRequest::Auto,
            AccelArg::Kvm => AccelRequest::Kvm,
            AccelArg::Tcg => AccelRequest::Tcg,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExpectArg {
    /// A plain cloud image: the Kubernetes checks are listed as not applicable.
    Generic,
    /// A Kubernetes node: versions, images and the kubeadm bootstrap must PASS.
    Kubernetes,
}

impl From<ExpectArg> for Expect {
    fn from(e: ExpectArg) -> Self {
        match e {
            ExpectArg::Generic => Expect::Generic,
            ExpectArg::Kubernetes => Expect::Kubernetes,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    /// A table for people.
    #[default]
    Text,
    /// The JSON report (schema in `kib_conformance::report`).
    Json,
    /// JUnit XML.
    Junit,
}

/// `90`, `90s`, `15m`, `1h`, `1h30m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    kib_builder::config::parse_duration_or_seconds(s).map_err(|e| e.to_string())
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The image: a qcow2 file, an OCI layout (`DIR` or `oci:DIR:TAG`) or a registry reference.
    image: String,
    /// Where to run the checks.
    #[arg(long, value_enum, default_value_t)]
    profile: Profile,
    /// The firmware to boot with (the report says which was used).
    #[arg(long, value_enum, default_value_t)]
    firmware: FirmwareArg,
    /// The accelerator (direct profile).
    #[arg(long, value_enum, default_value_t, env = "KIB_ACCEL")]
    accel: AccelArg,
    /// `build-manifest.json` of the image (default: next to the qcow2).
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// What the image is, and so which checks it must pass (direct profile). Default: from the
    /// build manifest (`kubernetes.requested` → kubernetes, else generic); without a manifest,
    /// kubernetes: an undescribed image is held to the full gate.
    #[arg(long, value_enum, value_name = "KIND")]
    expect: Option<ExpectArg>,
    /// Leave the VM (or cluster) running afterwards and print how to get in; Ctrl-C stops it.
    #[arg(long)]
    keep: bool,
    /// A public key allowed to log in as `capk` (repeatable).
    #[arg(long = "authorized-key", value_name = "KEY")]
    authorized_keys: Vec<String>,
    /// Also authorise every key `ssh-add -L` lists.
    #[arg(long)]
    authorized_keys_from_agent: bool,
    /// Bound for the whole run (`900`, `20m`, `1h`); on timeout the last console lines are shown.
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    timeout: Duration,
    /// How to print the report on stdout.
    #[arg(long, value_enum, default_value_t)]
    output: ReportFormat,
    /// Also write JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// A CNI manifest to apply for the node-ready check (SKIP without it).
    #[arg(long, value_name = "FILE")]
    cni_manifest: Option<PathBuf>,
    /// Kill the watchdog daemon at the end and wait for QEMU's watchdog event (resets the VM).
    #[arg(long)]
    watchdog_fire: bool,
    /// Your own check (direct profile, repeatable): a script run as root in the booted image,
    /// reported as `script:<file stem>`, PASS when it exits 0, else FAIL with its last lines.
    /// Runs after the built-in checks, before `--watchdog-fire`.
    #[arg(long = "check-script", value_name = "FILE")]
    check_scripts: Vec<PathBuf>,
    /// GiB added to the image's size for the disk-resize check.
    #[arg(long, default_value_t = 2, value_name = "GIB")]
    grow: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Work directory (overlay, keys, console log); default a new directory under /tmp.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Skip TLS certificate verification of the registry when pulling a registry image
    /// (skopeo `--src-tls-verify=false`).
    #[arg(long)]
    skip_tls_verify: bool,
    /// Removed: use `--skip-tls-verify`.
    #[arg(long, hide = true)]
    insecure: bool,
    /// Cluster profile: reuse this management cluster instead of creating a kind cluster.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Cluster profile: the image's Kubernetes version (default: from the build manifest).
    #[arg(long, value_name = "VERSION")]
    kubernetes_version: Option<String>,
    /// Cluster profile: a registry CDI may reach without TLS verification (repeatable).
    #[arg(long, value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
}

/// Prints progress lines on stderr.
struct Progress {
    quiet: bool,
}

impl Progress {
    fn line(&self, text: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
    }
}

impl direct::Reporter for Progress {
    fn on_phase(&self, what: &str) {
        self.line(&format!("==> {what}"));
    }
    fn on_check(&self, r: &CheckReport) {
        let reason = r
            .reason
            .as_deref()
            .map(|x| format!(": {x}"))
            .unwrap_or_default();
        self.line(&format!(
            "{} {} ({:.1}s){reason}",
            r.status, r.name, r.duration_secs
        ));
    }
}

fn agent_keys() -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new("ssh-add")
        .arg("-L")
        .output()
        .context("Failed to run `ssh-add -L`")?;
    if !out.status.success() {
        anyhow::bail!("`ssh-add -L` listed no keys (is an agent running?)");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.trim().is_empty())
        .collect())
}

impl Args {
    pub(crate) async fn run(self, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
        anyhow::ensure!(
            !self.insecure,
            "`kib conformance --insecure` was renamed: use `--skip-tls-verify` (it skips the registry's certificate check when pulling the image)"
        );
        let progress = Progress {
            quiet: global.quiet,
        };
        // Ctrl-C or SIGTERM drops the run, and with it the VM (its drop guard kills QEMU),
        // instead of the process dying with QEMU left behind.
        let run = async {
            match self.profile {
                Profile::Direct => self.run_direct(&progress).await,
                Profile::Cluster => Ok((self.run_cluster(&progress).await?, None)),
            }
        };
        let (report, kept) = tokio::select! {
            r = run => r?,
            () = crate::common::signal::interrupted() => {
                anyhow::bail!("Interrupted; the VM was stopped")
            }
        };
        let text = match self.output {
            ReportFormat::Text => report.to_table(),
            ReportFormat::Json => report.to_json() + "\n",
            ReportFormat::Junit => report.to_junit(),
        };
        std::io::stdout().lock().write_all(text.as_bytes())?;
        if let Some(p) = &self.junit {
            fs_err::write(p, report.to_junit())?;
        }
        if let Some(p) = &self.json {
            fs_err::write(p, report.to_json())?;
        }
        if let Some(kept) = kept {
            progress.line(&format!(
                "The VM is still running (console log `{}`). Log in with:\n  {}\nPress Ctrl-C to stop it.",
                kept.vm.serial_log().display(),
                kept.ssh_command
            ));
            tokio::signal::ctrl_c()
                .await
                .context("Failed to wait for Ctrl-C")?;
            let mut vm = kept.vm;
            vm.kill().await;
        }
        if !report.passed {
            let failed: Vec<&str> = report
                .checks
                .iter()
                .filter(|c| c.status == kib_conformance::Status::Fail)
                .map(|c| c.name.as_str())
                .collect();
            return Err(Failure(format!(
                "`{}` is not conformant: {} check(s) failed ({})",
                report.image,
                failed.len(),
                failed.join(", ")
            ))
            .into());
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn run_direct(
        &self,
        progress: &Progress,
    ) -> anyhow::Result<(Report, Option<direct::KeptVm>)> {
        let (work, _guard) = match &self.work_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("kib-conf-")
                    .tempdir_in("/tmp")
                    .context("Failed to create a work directory")?;
                let p = t.path().to_path_buf();
                (p, Some(t))
            }
        };
        let mut opts = DirectOptions::new(&self.image, &work);
        opts.manifest = self.manifest.clone();
        opts.expect = self.expect.map(Into::into);
        opts.firmware = self.firmware.into();
        opts.accel = self.accel.into();
        opts.grow_by = self.grow << 30;
        opts.cpus = self.cpus;
        opts.memory_mib = self.memory;
        opts.timeout = self.timeout;
        opts.authorized_keys = self.authorized_keys.clone();
        if self.authorized_keys_from_agent {
            opts.authorized_keys.extend(agent_keys()?);
        }
        opts.cni_manifest = self.cni_manifest.clone();
        opts.watchdog_fire = self.watchdog_fire;
        opts.keep = self.keep;
        opts.check_scripts = self.check_scripts.clone();
        if self.skip_tls_verify {
            let _ = writeln!(
                std::io::stderr().lock(),
                "warning: --skip-tls-verify: the registry's certificate is not checked when pulling the image"
            );
        }
        opts.tls_verify = !self.skip_tls_verify;
        let run = direct::run(opts, progress)
            .await
            .hinted()
            .with_context(|| format!("Conformance run of `{}` failed", self.image))?;
        if run.kept.is_some() {
            // The work directory holds the key and the sockets: keep it with the VM.
            if let Some(g) = _guard {
                let _ = g.keep();
            }
        }
        Ok((run.report, run.kept))
    }

    async fn run_cluster(&self, progress: &Progress) -> anyhow::Result<Report> {
        let started = Instant::now();
        anyhow::ensure!(
            self.check_scripts.is_empty(),
            "`--check-script` runs in the direct profile only: run `kib conformance IMAGE --check-script FILE` without `--profile cluster`"
        );
        let version = match &self.kubernetes_version {
            Some(v) => v.clone(),
            None => self
                .manifest
                .as_deref()
                .map(ImageExpectations::read)
                .transpose()
                .hinted()?
                .and_then(|e| e.kubernetes)
                .context("The cluster profile needs the image's Kubernetes version: pass `--kubernetes-version` or `--manifest`")?,
        };
        let mut spec = ClusterSpec::new(&self.image, &version);
        // CDI needs room beyond the image's virtual size (default: kib's 20 GiB image).
        if let Some(m) = &self.manifest {
            spec.disk_size =
                cluster::disk_size_for(kib_manifest::read(m).hinted()?.output.virtual_size);
        }
        spec.insecure_registries = self.insecure_registry.clone();
        spec.firmware = self.firmware.into();
        Ok(cluster::run(
            &self.image,
            &spec,
            self.kubeconfig.as_ref(),
            self.keep,
            self.timeout.saturating_sub(started.elapsed()),
            progress,
        )
        .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("soon").is_err());
    }
}
