//! The `direct` profile: boot the image once with QEMU the way KubeVirt does and run every
//! check against that VM.
//!
//! The VM gets a copy-on-write overlay of the image grown by [`DirectOptions::grow_by`], a
//! virtio disk, the i6300esb watchdog, the `org.qemu.guest_agent.0` channel, and CABPK-shaped
//! user data (see [`crate::userdata`]) on a ConfigDrive (`config-2`), as CAPK attaches it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kib_manifest::{Hint, ManifestReadError};
use kib_vm::seed::{ConfigDrive, Seed};
use kib_vm::{AccelRequest, Firmware, QemuRunner, QemuVm, Runner, Vm, VmError, VmSpec};

use crate::check::{Check, CheckResult};
use crate::checks::{self, chain};
use crate::context::Context;
use crate::image::{ImageError, ImageSource};
use crate::manifest::{Expect, ImageExpectations};
use crate::report::{CheckReport, Report};
use crate::ssh_shell::{self, GuestKey};
use crate::userdata::{self, CAPK_USER, UserDataSpec};

/// The guest port the firewall check listens on (not on kib's firewall list).
pub const PROBE_PORT: u16 = 19999;
/// The pseudo-check that reports whether the VM booted.
pub const BOOT_CHECK: &str = "boot";

/// What to run.
#[derive(Debug, Clone)]
pub struct DirectOptions {
    /// The image as the user wrote it (for the report).
    pub image: String,
    /// Where it comes from.
    pub source: ImageSource,
    /// `build-manifest.json`, if not next to the image.
    pub manifest: Option<PathBuf>,
    /// What the image is (`--expect`); `None` takes it from the build manifest (see
    /// [`Expect::resolve`]).
    pub expect: Option<Expect>,
    /// BIOS (KubeVirt's default) or UEFI.
    pub firmware: Firmware,
    /// The accelerator.
    pub accel: AccelRequest,
    /// How much bigger than the image the disk is, in bytes.
    pub grow_by: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// The bound of the whole run.
    pub timeout: Duration,
    /// Extra public keys for the `capk` user (people who want to log in).
    pub authorized_keys: Vec<String>,
    /// A CNI manifest for the node-ready check.
    pub cni_manifest: Option<PathBuf>,
    /// Kill the watchdog daemon at the end and wait for QEMU's watchdog event.
    pub watchdog_fire: bool,
    /// Where the overlay, seed, keys, sockets and logs go (a short path: it holds sockets).
    pub work_dir: PathBuf,
    /// Leave the VM running after the checks ([`DirectRun::kept`]).
    pub keep: bool,
    /// The user's own checks: scripts run as root after the built-in checks, each passing
    /// when it exits 0 (`--check-script`).
    pub check_scripts: Vec<PathBuf>,
    /// Verify TLS when pulling a registry image.
    pub tls_verify: bool,
    /// The QEMU runner.
    pub runner: QemuRunner,
}

impl DirectOptions {
    /// Defaults: BIOS, auto accel, +2 GiB, 2 CPUs, 2 GiB, 20 minutes.
    pub fn new(image: &str, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            image: image.to_owned(),
            source: ImageSource::parse(image),
            manifest: None,
            expect: None,
            firmware: Firmware::Bios,
            accel: AccelRequest::Auto,
            grow_by: 2 << 30,
            cpus: 2,
            memory_mib: 2048,
            timeout: Duration::from_secs(20 * 60),
            authorized_keys: Vec::new(),
            cni_manifest: None,
            watchdog_fire: false,
            work_dir: work_dir.into(),
            keep: false,
            check_scripts: Vec::new(),
            tls_verify: true,
            runner: QemuRunner::new(),
        }
    }
}

/// Progress of a run (the CLI draws it; libraries do not print).
pub trait Reporter: Send + Sync {
    /// A phase started (`preparing the overlay`, `booting`, …).
    fn on_phase(&self, _what: &str) {}
    /// A check finished.
    fn on_check(&self, _result: &CheckReport) {}
}

/// A reporter that reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullReporter;
impl Reporter for NullReporter {}

/// Errors that stop a run before there is a report.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The work directory could not be made.
    #[error("Failed to prepare the work directory `{path}`")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image could not be resolved to a disk.
    #[error("Failed to get the disk of `{image}`")]
    Image {
        /// The image.
        image: String,
        /// The cause.
        #[source]
        source: ImageError,
    },
    /// The build manifest could not be read.
    #[error("Failed to read the build manifest")]
    Manifest(#[source] ManifestReadError),
    /// A `--check-script` could not be read.
    #[error("Failed to load a check script")]
    CheckScript(#[source] crate::checks::ScriptReadError),
    /// The disk image names other files or has a format kib does not accept.
    #[error("The image `{}` is refused", path.display())]
    Refused {
        /// The disk file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kib_vm::image::DiskImageError,
    },
    /// `qemu-img` failed.
    #[error("`qemu-img {command}` failed for `{path}`: {stderr}")]
    QemuImg {
        /// The subcommand.
        command: &'static str,
        /// The file.
        path: PathBuf,
        /// Its stderr (or the spawn error).
        stderr: String,
    },
    /// The SSH key could not be written.
    #[error("Failed to write the test's SSH key into `{path}`")]
    Key {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error("Failed to start the VM")]
    Start(#[source] VmError),
    /// The whole run took longer than `--timeout`.
    #[error(
        "The conformance run did not finish within {waited:?}; last console lines:\n{serial_tail}"
    )]
    Timeout {
        /// The bound.
        waited: Duration,
        /// The end of the serial console.
        serial_tail: String,
    },
}

impl Hint for DirectError {
    /// A suggestion, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            Self::Image { source, .. } => source.hint(),
            Self::Refused { source, .. } => source.hint(),
            Self::Start(e) => e.hint(),
            Self::Manifest(e) => e.hint(),
            Self::QemuImg { .. } => {
                Some("install qemu-utils (`apt-get install qemu-utils`)".to_owned())
            }
            Self::Timeout { .. } => {
                Some("raise `--timeout`; under TCG a boot takes minutes".to_owned())
            }
            _ => None,
        }
    }
}

/// How to reach a VM left running with `--keep`.
#[derive(Debug)]
pub struct KeptVm {
    /// The VM (dropping it stops it).
    pub vm: QemuVm,
    /// `ssh -i KEY -p PORT capk@127.0.0.1 …`.
    pub ssh_command: String,
    /// The work directory (serial log, keys).
    pub work_dir: PathBuf,
}

/// The result of a run.
#[derive(Debug)]
pub struct DirectRun {
    /// The report.
    pub report: Report,
    /// The VM, when asked to keep it and it booted.
    pub kept: Option<KeptVm>,
}

async fn qemu_img(
    args: &[&std::ffi::OsStr],
    command: &'static str,
    path: &Path,
) -> Result<String, DirectError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| DirectError::QemuImg {
            command,
            path: path.into(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(DirectError::QemuImg {
            command,
            path: path.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The virtual size and format of a disk image, decided from its bytes by
/// [`kib_vm::image::inspect`]: a qcow2 with a backing or external data file, a VMDK descriptor
/// (its extents are host files) or any other format is refused, never handed to QEMU.
pub async fn image_info(path: &Path) -> Result<(u64, String), DirectError> {
    let disk = kib_vm::image::inspect_async(path)
        .await
        .map_err(|source| DirectError::Refused {
            path: path.to_owned(),
            source,
        })?;
    Ok((disk.virtual_size, disk.format.as_str().to_owned()))
}

/// Creates a qcow2 overlay of `base` with virtual size `size`; `format` is the base's format as
/// [`image_info`] found it (recorded in the overlay, so QEMU never probes the base).
pub async fn create_overlay(
    base: &Path,
    format: &str,
    overlay: &Path,
    size: u64,
) -> Result<(), DirectError> {
    let base = fs_err::canonicalize(base).map_err(|e| DirectError::QemuImg {
        command: "create",
        path: base.into(),
        stderr: e.to_string(),
    })?;
    let size = size.to_string();
    qemu_img(
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            format.as_ref(),
            "-b".as_ref(),
            base.as_os_str(),
            overlay.as_os_str(),
            size.as_ref(),
        ],
        "create",
        overlay,
    )
    .await
    .map(drop)
}

/// Runs the `direct` profile. Check failures are in the report; `Err` means no report could be
/// made (bad image, no QEMU, timeout).
pub async fn run(opts: DirectOptions, reporter: &dyn Reporter) -> Result<DirectRun, DirectError> {
    let serial = opts.work_dir.join("vm").join("serial.log");
    let timeout = opts.timeout;
    match tokio::time::timeout(timeout, run_inner(opts, reporter)).await {
        Ok(r) => r,
        Err(_) => {
            let text = fs_err::read(&serial).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            Err(DirectError::Timeout {
                waited: timeout,
                serial_tail: tail,
            })
        }
    }
}

async fn run_inner(opts: DirectOptions, reporter: &dyn Reporter) -> Result<DirectRun, DirectError> {
    let started = Instant::now();
    // The scripts first: a typo in a path should not cost a boot.
    let scripts = opts
        .check_scripts
        .iter()
        .map(|p| crate::checks::ScriptCheck::read(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DirectError::CheckScript)?;
    let work = opts.work_dir.clone();
    fs_err::create_dir_all(&work)
        // It holds the test's SSH private key and the guest's console: the user's only.
        .and_then(|()| {
            fs_err::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        })
        .map_err(|source| DirectError::WorkDir {
            path: work.clone(),
            source,
        })?;

    reporter.on_phase("resolving the image");
    let disk = crate::image::resolve(&opts.source, &work, opts.tls_verify)
        .await
        .map_err(|source| DirectError::Image {
            image: opts.image.clone(),
            source,
        })?;
    let expected =
        ImageExpectations::find(opts.manifest.as_deref(), &disk).map_err(DirectError::Manifest)?;
    let expect = Expect::resolve(opts.expect, expected.as_ref());
    reporter.on_phase(&format!("expecting a {} image", expect.as_str()));
    let (image_size, format) = image_info(&disk).await?;
    let disk_size = (image_size + opts.grow_by).div_ceil(1 << 20) << 20;
    let overlay = work.join("overlay.qcow2");
    reporter.on_phase(&format!(
        "overlay `{}` grown from {} MiB to {} MiB",
        overlay.display(),
        image_size >> 20,
        disk_size >> 20
    ));
    create_overlay(&disk, &format, &overlay, disk_size).await?;

    let key_dir = work.join("ssh");
    let key = GuestKey::generate(&key_dir).map_err(|source| DirectError::Key {
        path: key_dir.clone(),
        source,
    })?;
    let mut keys = vec![key.public_openssh()];
    keys.extend(
        opts.authorized_keys
            .iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty()),
    );
    let mut ud = UserDataSpec::new(keys.clone());
    ud.kubeadm = expect == Expect::Kubernetes;
    ud.kubernetes_version = expected
        .as_ref()
        .and_then(|e| e.kubernetes.clone())
        .map(|v| {
            if v.starts_with('v') {
                v
            } else {
                format!("v{v}")
            }
        });
    let hostname = "kib-conformance".to_owned();
    let drive = ConfigDrive::new(&hostname, userdata::render(&ud));
    let instance_id = drive.uuid.clone();

    let mut spec = VmSpec::new("kib-conformance", &overlay, work.join("vm"));
    spec.seed = Some(Seed::from(drive));
    spec.cpus = opts.cpus;
    spec.memory_mib = opts.memory_mib;
    spec.accel = opts.accel;
    spec.firmware = opts.firmware;
    spec.watchdog = true;
    spec.guest_agent = true;
    spec.forward_ports = vec![checks::API_SERVER_PORT, PROBE_PORT];
    reporter.on_phase(&format!("booting with {} firmware", opts.firmware.as_str()));
    let vm = opts.runner.start(spec).await.map_err(DirectError::Start)?;
    let accel = vm.accel().to_string();
    reporter.on_phase(&format!(
        "VM up ({accel}: {}); waiting for SSH as {CAPK_USER}",
        vm.accel_reason()
    ));

    let boot_started = Instant::now();
    let left = opts
        .timeout
        .saturating_sub(started.elapsed())
        .saturating_sub(Duration::from_secs(5));
    let all = checks::direct_checks_with(scripts);
    let connected = tokio::select! {
        r = ssh_shell::connect(vm.ssh_addr(), CAPK_USER, &key, left) => r.map_err(|e| chain(&e)),
        why = firmware_gave_up(&vm) => Err(why),
    };
    let shell = match connected {
        Ok(s) => s,
        Err(e) => {
            // The image did not boot this way (or CAPK's user never came): the boot check fails
            // with the console's last words, the others are skipped.
            let tail = vm.serial_tail(8).join(" | ");
            let reason = format!(
                "no SSH login as {CAPK_USER} with {} firmware: {}; console: {}",
                opts.firmware.as_str(),
                e,
                if tail.trim().is_empty() {
                    "(empty: the firmware found nothing to boot?)".to_owned()
                } else {
                    tail
                }
            );
            let mut results = vec![CheckReport::new(
                BOOT_CHECK,
                "the image boots and CAPK's user logs in",
                &CheckResult::Fail(reason),
                boot_started.elapsed(),
            )];
            reporter.on_check(&results[0]);
            for c in &all {
                let r = CheckReport::new(
                    c.name(),
                    c.title(),
                    &CheckResult::Skip("the VM did not boot".into()),
                    Duration::ZERO,
                );
                reporter.on_check(&r);
                results.push(r);
            }
            let report = Report::new(
                &opts.image,
                "direct",
                opts.firmware.as_str(),
                accel,
                results,
                started.elapsed(),
            );
            return Ok(DirectRun { report, kept: None });
        }
    };
    let boot = CheckReport::new(
        BOOT_CHECK,
        "the image boots and CAPK's user logs in",
        &CheckResult::Pass,
        boot_started.elapsed(),
    );
    reporter.on_check(&boot);
    let mut results = vec![boot];

    let ctx = Context {
        ssh_addr: vm.ssh_addr(),
        forwards: [checks::API_SERVER_PORT, PROBE_PORT]
            .into_iter()
            .filter_map(|p| vm.forwarded(p).map(|a| (p, a)))
            .collect(),
        vm: Some(vm),
        shell: Box::new(shell),
        firmware: opts.firmware,
        image_size,
        disk_size,
        hostname,
        instance_id,
        authorized_keys: keys,
        expected,
        expect,
        probe_port: PROBE_PORT,
        cni_manifest: opts.cni_manifest.clone(),
        watchdog_fire: opts.watchdog_fire,
        check_timeout: Duration::from_secs(15 * 60),
    };
    for check in &all {
        results.push(run_one(check.as_ref(), &ctx, reporter).await);
    }
    let report = Report::new(
        &opts.image,
        "direct",
        opts.firmware.as_str(),
        accel,
        results,
        started.elapsed(),
    );
    let vm = ctx.vm.expect("the direct profile always has a VM");
    let kept = if opts.keep {
        Some(KeptVm {
            ssh_command: format!(
                "ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p {} {CAPK_USER}@127.0.0.1",
                key.private_key_path().display(),
                vm.ssh_addr().port()
            ),
            vm,
            work_dir: work,
        })
    } else {
        let mut vm = vm;
        vm.kill().await;
        None
    };
    Ok(DirectRun { report, kept })
}

/// What firmware prints on the console when it finds nothing to boot.
const NO_BOOT_MARKERS: &[&str] = &[
    // SeaBIOS
    "No bootable device",
    "Boot failed: not a bootable disk",
    "Boot failed: could not read the boot disk",
    // OVMF tries the disks first, in its default boot order, and only then the network: its
    // network boot starting means no disk had a UEFI loader (measured under TCG: about a
    // minute after power-on, against several more until it gives up and opens its shell).
    ">>Start PXE over IPv4",
    ">>Start HTTP Boot",
    "No bootable option",
    "UEFI Interactive Shell",
];

/// Resolves when the console shows that the firmware found nothing to boot (an image that
/// boots only the other way); never resolves otherwise.
async fn firmware_gave_up(vm: &QemuVm) -> String {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let text = fs_err::read(vm.serial_log()).unwrap_or_default();
        // Firmware consoles colour and position their text with escape sequences.
        let text = kib_vm::console_text(&String::from_utf8_lossy(&text));
        if let Some(m) = NO_BOOT_MARKERS.iter().find(|m| text.contains(**m)) {
            // Give the firmware a moment to print the rest of its message.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return format!(
                "the firmware found nothing to boot (`{m}` on the console): the image has no boot loader for it"
            );
        }
    }
}

/// Runs one check with its timeout, turning `can_run` refusals into skips.
pub async fn run_one(check: &dyn Check, ctx: &Context, reporter: &dyn Reporter) -> CheckReport {
    let t = Instant::now();
    let result = match check.can_run(ctx) {
        // A required check that cannot run is a failure: a SKIP must never hide a requirement.
        Err(reason) if check.required(ctx) => {
            CheckResult::fail(format!("required, but could not run: {reason}"))
        }
        Err(reason) => CheckResult::Skip(reason),
        Ok(()) => match tokio::time::timeout(ctx.check_timeout, check.run(ctx)).await {
            Ok(r) => r,
            Err(_) => CheckResult::fail(format!("did not finish within {:?}", ctx.check_timeout)),
        },
    };
    tracing::info!(check = check.name(), status = %result.status(), reason = ?result.reason(), "check done");
    let r = CheckReport::new(check.name(), check.title(), &result, t.elapsed());
    reporter.on_check(&r);
    r
}
