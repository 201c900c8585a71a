//! The build pipeline: fetch → prepare → boot → provision → shutdown → export.
//!
//! [`build`] owns every resource it creates (work dir, key, VM, child processes) through
//! guards, so every exit path — success, error, or the `cancel` future firing on Ctrl-C —
//! stops QEMU, removes the work dir and leaves nothing under the final output name.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kib_manifest::Hint;

use crate::cache::{BaseImage, CacheError, ResolvedImage};
use crate::config::Config;
use crate::export::{ExportError, ExportedImage, export};
use crate::manifest::{BuildManifest, ManifestError};
use crate::provision::{ProvisionContext, ProvisionError, run_all};
use crate::reporter::{Reporter, Stage};
use kib_vm::seed::{NoCloud, SeedError, build_user_data_with_host_key};
use kib_vm::ssh::{KeyPair, Session, SshError, SshOptions, wait_for_ssh};
use kib_vm::{Runner, Vm, VmError, VmSpec};

/// What to do with the VM when a step fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// Stop the VM and remove everything (the default).
    #[default]
    Cleanup,
    /// Keep the VM running for debugging: the reporter is told how to SSH in, and the build
    /// waits for the `cancel` future (Ctrl-C) before it cleans up and returns the error.
    Abort,
}

/// Everything a build needs besides the runner and the reporter.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The configuration, with command-line overrides applied.
    pub config: Config,
    /// The folder relative paths in the configuration resolve against (kib.toml's folder).
    pub config_dir: PathBuf,
    /// `--var k=v` values; they win over the provisioners' own extra vars.
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Where downloaded base images are cached.
    pub cache_dir: PathBuf,
    /// Skip base image verification (needs the explicit `--insecure-skip-checksum`).
    pub insecure_skip_checksum: bool,
    /// What to do with the VM when a step fails.
    pub on_error: OnError,
    /// kib's version, for the manifest.
    pub kib_version: String,
    /// The git revision kib (or the repo holding kib.toml) is at, for the manifest.
    pub git_revision: Option<String>,
}

/// The result of a successful build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The exported image.
    pub image: ExportedImage,
    /// Where `build-manifest.json` was written.
    pub manifest_path: PathBuf,
    /// The manifest's content.
    pub manifest: BuildManifest,
}

/// A build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The base image could not be fetched or verified.
    #[error("Failed to get the base image")]
    Fetch(#[source] CacheError),
    /// The output or work folder could not be created.
    #[error("Failed to create `{}`", path.display())]
    WorkDir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `qemu-img create` of the overlay failed.
    #[error("Failed to create the working disk `{}`", path.display())]
    Overlay {
        /// The overlay path.
        path: PathBuf,
        /// What qemu-img said.
        #[source]
        source: std::io::Error,
    },
    /// The cloud-init seed could not be written.
    #[error("Failed to write the cloud-init seed")]
    Seed(#[source] SeedError),
    /// The ephemeral SSH key could not be written.
    #[error("Failed to write the build's SSH key")]
    Key(#[source] SshError),
    /// The VM did not start.
    #[error("Failed to start the VM")]
    Start(#[source] VmError),
    /// SSH never came up; the console's last lines are attached.
    #[error("The VM did not answer on SSH{}", console_tail(serial_tail))]
    SshTimeout {
        /// The last lines of the serial console.
        serial_tail: Vec<String>,
        /// Whether the console stayed silent (a hint that the accelerator cannot boot a guest).
        silent_console: bool,
        /// The SSH error.
        #[source]
        source: SshError,
    },
    /// QEMU exited while the build waited for it.
    #[error("QEMU exited during {stage}{}", console_tail(serial_tail))]
    VmExited {
        /// The stage.
        stage: Stage,
        /// The last lines of the serial console.
        serial_tail: Vec<String>,
        /// QEMU's error.
        #[source]
        source: VmError,
    },
    /// A provisioner failed.
    #[error("Provisioning failed")]
    Provision(#[source] ProvisionError),
    /// The final clean-up commands in the guest failed.
    #[error("Failed to clean up the guest before shutdown")]
    Finish(#[source] SshError),
    /// The VM did not power off by itself.
    #[error("The VM did not power off cleanly")]
    PowerOff(#[source] VmError),
    /// The export failed.
    #[error("Failed to export the image")]
    Export(#[source] ExportError),
    /// The manifest could not be written.
    #[error("Failed to write the build manifest")]
    Manifest(#[source] ManifestError),
    /// The build was interrupted (Ctrl-C).
    #[error("The build was interrupted; the VM was stopped and nothing was written")]
    Interrupted,
}

fn console_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return "; the serial console printed nothing".to_owned();
    }
    let mut s = String::from("; last lines of the serial console:");
    for l in lines {
        s.push_str("\n    | ");
        s.push_str(l);
    }
    s
}

impl Hint for BuildError {
    /// A suggestion for the user, where the cause has a usual fix.
    fn hint(&self) -> Option<String> {
        match self {
            BuildError::SshTimeout {
                silent_console,
                source,
                ..
            } => {
                let own = if *silent_console {
                    "the guest printed nothing on its console: this accelerator may not boot a stock kernel here; try `--accel tcg`"
                } else {
                    "raise `--boot-timeout`, or use `--on-error=abort` to keep the VM running and look at it"
                };
                // SSH's own hint carries the last attempt's error: one more line.
                Some(match source.hint() {
                    Some(ssh) => format!("{own}\n{ssh}"),
                    None => own.to_owned(),
                })
            }
            BuildError::Fetch(e) => e.hint(),
            BuildError::Key(e) | BuildError::Finish(e) => e.hint(),
            BuildError::Start(e)
            | BuildError::VmExited { source: e, .. }
            | BuildError::PowerOff(e) => e.hint(),
            BuildError::Provision(e) => e.hint(),
            BuildError::Export(e) => e.hint(),
            BuildError::Manifest(e) => e.hint(),
            _ => None,
        }
    }
}

/// Runs a whole build. `cancel` is polled throughout: when it completes (Ctrl-C), the build
/// stops, cleans up and returns [`BuildError::Interrupted`].
pub async fn build<R: Runner>(
    runner: &R,
    request: BuildRequest,
    reporter: &dyn Reporter,
    cancel: impl Future<Output = ()>,
) -> Result<BuildOutput, BuildError> {
    let mut cancel = std::pin::pin!(cancel);
    let out_dir = absolute(&request.config_dir, &request.config.output.dir);
    fs_err::create_dir_all(&out_dir).map_err(|source| BuildError::WorkDir {
        path: out_dir.clone(),
        source,
    })?;
    remove_stale_work_dirs(&out_dir, reporter);
    // The work dir sits next to the output so the final rename stays on one filesystem; it is
    // removed when `work` drops, on every path.
    let work = tempfile::Builder::new()
        .prefix(WORK_PREFIX)
        .tempdir_in(&out_dir)
        .map_err(|source| BuildError::WorkDir {
            path: out_dir.clone(),
            source,
        })?;
    // Whose folder this is: a later build removes it if this process died without cleaning up
    // (SIGKILL, OOM; issue #16.6).
    fs_err::write(
        work.path().join(PID_FILE),
        format!("{}\n", std::process::id()),
    )
    .map_err(|source| BuildError::WorkDir {
        path: work.path().to_path_buf(),
        source,
    })?;
    let mut pipeline = Pipeline {
        runner,
        request: &request,
        reporter,
        work: work.path(),
        out_dir: &out_dir,
        durations: BTreeMap::new(),
        vm: None,
    };
    let result = tokio::select! {
        r = pipeline.run() => r,
        () = &mut cancel => Err(BuildError::Interrupted),
    };
    if let Err(err) = &result
        && request.on_error == OnError::Abort
        && !matches!(err, BuildError::Interrupted)
        && let Some(vm) = pipeline.vm.as_ref()
    {
        let key = work.path().join("ssh").join("id_ed25519");
        reporter.on_warning(&format!(
            "--on-error=abort: the VM is still running. Log in with\n    ssh -i {} -o UserKnownHostsFile={} -p {} {}@{}\nPress Ctrl-C to stop it and clean up.",
            key.display(),
            work.path().join("ssh").join("known_hosts").display(),
            vm.ssh_addr().port(),
            request.config.vm.ssh_user,
            vm.ssh_addr().ip(),
        ));
        (&mut cancel).await;
    }
    // Stop QEMU before the work dir (its disk) goes away.
    if let Some(mut vm) = pipeline.vm.take() {
        vm.kill().await;
    }
    drop(work);
    result
}

struct Pipeline<'a, R: Runner> {
    runner: &'a R,
    request: &'a BuildRequest,
    reporter: &'a dyn Reporter,
    work: &'a Path,
    out_dir: &'a Path,
    durations: BTreeMap<Stage, f64>,
    vm: Option<R::Vm>,
}

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl<R: Runner> Pipeline<'_, R> {
    fn done(&mut self, stage: Stage, started: Instant) {
        let elapsed = started.elapsed();
        tracing::info!(
            stage = stage.name(),
            seconds = elapsed.as_secs_f64(),
            "stage done"
        );
        self.durations.insert(stage, elapsed.as_secs_f64());
        self.reporter.on_stage_done(stage, elapsed);
    }

    async fn run(&mut self) -> Result<BuildOutput, BuildError> {
        let cfg = &self.request.config;

        // 1. Fetch and verify the base image.
        let t = Instant::now();
        self.reporter
            .on_stage_start(Stage::Fetch, &format!("base image `{}`", cfg.base.image));
        let base = BaseImage::resolve(
            &cfg.base.image,
            cfg.base.checksum.clone(),
            self.request.insecure_skip_checksum,
            &self.request.cache_dir,
            self.reporter,
        )
        .await
        .map_err(BuildError::Fetch)?;
        self.done(Stage::Fetch, t);

        // 2. Working disk, key, seed.
        let t = Instant::now();
        self.reporter
            .on_stage_start(Stage::Prepare, "overlay disk, SSH key, cloud-init seed");
        let overlay = self.work.join("disk.qcow2");
        create_overlay(&base, &overlay, cfg.vm.disk_size).await?;
        let key = KeyPair::generate();
        let ssh_dir = self.work.join("ssh");
        let dir_err = |source| BuildError::WorkDir {
            path: ssh_dir.clone(),
            source,
        };
        fs_err::create_dir_all(&ssh_dir).map_err(dir_err)?;
        set_private_dir(&ssh_dir).map_err(dir_err)?;
        let key_file = key.write_private_key(&ssh_dir).map_err(BuildError::Key)?;
        // The guest's host key is made here and handed in through cloud-init, so that the
        // first connection already checks it (no trust on first use, issue #16.7); the final
        // clean-up deletes it from the image.
        let host_key = KeyPair::generate();
        let seed = NoCloud::new(
            &format!("kib-build-{}", std::process::id()),
            "kib-build",
            build_user_data_with_host_key(
                &cfg.vm.ssh_user,
                &key.public_openssh(),
                &host_key.private_openssh().map_err(BuildError::Key)?,
                &host_key.public_openssh(),
            ),
        );
        let host_key = host_key.as_host_key();
        self.done(Stage::Prepare, t);

        // 3. Boot and wait for SSH.
        let t = Instant::now();
        let spec = VmSpec {
            name: "kib-build".to_owned(),
            disk: overlay.clone(),
            seed: Some(seed.into()),
            cpus: cfg.vm.cpus,
            memory_mib: cfg.vm.memory_mib,
            accel: cfg.vm.accel,
            cpu_model: cfg.vm.cpu_model.clone(),
            network: cfg.vm.network.into(),
            firmware: cfg.vm.firmware,
            // As KubeVirt boots it: the playbook configures the watchdog daemon and the agent.
            watchdog: true,
            guest_agent: true,
            forward_ports: Vec::new(),
            work_dir: self.work.to_path_buf(),
        };
        let vm = self.runner.start(spec).await.map_err(BuildError::Start)?;
        self.reporter.on_stage_start(
            Stage::Boot,
            &format!(
                "VM started ({}), waiting for SSH on {}",
                vm.accel(),
                vm.ssh_addr()
            ),
        );
        let accel = vm.accel();
        let ssh_addr = vm.ssh_addr();
        self.vm = Some(vm);
        let known_hosts = ssh_dir.join("known_hosts");
        fs_err::write(&known_hosts, host_key.known_hosts_line(ssh_addr)).map_err(|source| {
            BuildError::WorkDir {
                path: known_hosts.clone(),
                source,
            }
        })?;
        let options = ssh_options(cfg.vm.network.into(), Some(host_key.clone()));
        let session = match wait_for_ssh(
            ssh_addr,
            &cfg.vm.ssh_user,
            &key,
            &options,
            cfg.vm.boot_timeout,
        )
        .await
        {
            Ok(s) => s,
            Err(source) => {
                let vm = self.vm.as_ref().expect("VM started above");
                return Err(BuildError::SshTimeout {
                    serial_tail: vm.serial_tail(40),
                    silent_console: vm.console_is_silent(),
                    source,
                });
            }
        };
        self.reporter.on_output_line(
            "ssh",
            &format!(
                "logged in; host key {} (pinned, generated by kib)",
                session.host_key_fingerprint()
            ),
        );
        let mut session = session;
        self.done(Stage::Boot, t);

        // 4. Provision.
        let t = Instant::now();
        self.reporter.on_stage_start(
            Stage::Provision,
            &format!("{} provisioner(s)", cfg.provisioners.len()),
        );
        let collect_dir = self.work.join("collect");
        fs_err::create_dir_all(&collect_dir).map_err(|source| BuildError::WorkDir {
            path: collect_dir.clone(),
            source,
        })?;
        let mut vars = cfg.vars.clone();
        vars.insert(
            "kubernetes_version".to_owned(),
            serde_json::Value::String(cfg.kubernetes.version.clone()),
        );
        vars.extend(self.request.vars.clone());
        let ctx = ProvisionContext {
            ssh_addr,
            user: &cfg.vm.ssh_user,
            key_file: &key_file,
            known_hosts: &known_hosts,
            key: &key,
            reboot_timeout: cfg.vm.boot_timeout,
            ssh_options: &options,
            base_dir: &self.request.config_dir,
            work_dir: self.work,
            collect_dir: &collect_dir,
            vars: &vars,
            reporter: self.reporter,
        };
        run_all(&cfg.provisioners, &ctx, &mut session)
            .await
            .map_err(BuildError::Provision)?;
        self.done(Stage::Provision, t);

        // 5. Remove the build's own access, trim, power off.
        let t = Instant::now();
        self.reporter.on_stage_start(
            Stage::Shutdown,
            "removing the build user, fstrim, ACPI power-down",
        );
        finish_guest(&session, &cfg.vm.ssh_user, self.reporter)
            .await
            .map_err(BuildError::Finish)?;
        session.close().await;
        let vm = self.vm.as_mut().expect("VM started above");
        vm.power_off(cfg.vm.shutdown_timeout)
            .await
            .map_err(BuildError::PowerOff)?;
        let disk = vm.disk().to_path_buf();
        self.done(Stage::Shutdown, t);

        // 6. Export.
        let t = Instant::now();
        self.reporter.on_stage_start(
            Stage::Export,
            &format!("{} ({})", cfg.output.format, cfg.output.compression),
        );
        // The image and its manifest are a pair: a manifest left from an earlier build must
        // never describe the new image, so it goes first; the new one is written last, and if
        // anything fails in between the new image goes too (see `remove_export`).
        let manifest_path = self.out_dir.join("build-manifest.json");
        match fs_err::remove_file(&manifest_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BuildError::WorkDir {
                    path: manifest_path,
                    source,
                });
            }
        }
        let image = export(
            &disk,
            self.out_dir,
            &cfg.output.name,
            cfg.output.format,
            cfg.output.compression,
        )
        .await
        .map_err(BuildError::Export)?;
        self.done(Stage::Export, t);

        let written: Result<BuildManifest, BuildError> = async {
            let manifest = crate::manifest::assemble(
                &self.request.kib_version,
                self.request.git_revision.clone(),
                &base,
                &cfg.kubernetes.version,
                accel,
                &cfg.provisioners,
                &self.durations,
                &image,
                &collect_dir,
            )
            .map_err(BuildError::Manifest)?;
            // The collected files (package list, resolved versions) go next to the image, for the
            // release artifacts and the SBOM attestation; the manifest lists their digests.
            let collected = self.out_dir.join("collected");
            if collected.exists() {
                fs_err::remove_dir_all(&collected).map_err(|source| BuildError::WorkDir {
                    path: collected.clone(),
                    source,
                })?;
            }
            fs_err::rename(&collect_dir, &collected).map_err(|source| BuildError::WorkDir {
                path: collected.clone(),
                source,
            })?;
            // The SBOM and provenance `kib publish --sign-key` attests, beside the manifest;
            // the manifest is written last, so a build that has one has them too.
            kib_manifest::attest::write_beside(self.out_dir, &collected, &manifest)
                .map_err(BuildError::Manifest)?;
            manifest
                .write(&manifest_path)
                .map_err(BuildError::Manifest)?;
            Ok(manifest)
        }
        .await;
        let manifest = match written {
            Ok(m) => m,
            Err(e) => {
                remove_export(&image);
                return Err(e);
            }
        };
        Ok(BuildOutput {
            image,
            manifest_path,
            manifest,
        })
    }
}

/// Removes an exported image and its `.sha256` after the build failed to write its manifest:
/// an image without its manifest is not a build output.
fn remove_export(image: &crate::export::ExportedImage) {
    for p in [&image.path, &image.checksum_path] {
        if let Err(e) = std::fs::remove_file(p) {
            tracing::warn!(path = %p.display(), error = %e, "could not remove a half-written output");
        }
    }
}

/// The build's last words in the guest, run as root in one shell so that removing the build
/// user cannot cut the command short: the user, its home (and `authorized_keys`), its sudoers
/// entry and the SSH host keys the build pinned go (sshd refuses new connections without host
/// keys, so this must come last, over the open session; the image regenerates them at first
/// boot), then the logs the build wrote after the playbook's generalize role (journal, audit,
/// login records), and the disk is synced and trimmed so the export stays small.
async fn finish_guest(
    session: &Session,
    user: &str,
    reporter: &dyn Reporter,
) -> Result<(), SshError> {
    session
        .exec_sudo_checked(&finish_script(user), &mut |_, line| {
            reporter.on_output_line("finish", line)
        })
        .await
}

/// The script [`finish_guest`] runs (issue #16.4). Every step must succeed (`set -eu`) except
/// `fstrim`, whose failure only makes the export larger. The user is only deleted when it is
/// an ordinary account (uid >= 1000) whose home is under `/home`, so that `ssh_user` naming an
/// account of the image (whose home `userdel --remove` would delete) fails the build instead.
/// The journal is switched to volatile storage for the rest of this boot (a drop-in under
/// /run, gone with it) so that nothing logged from here to the power-off lands in the image
/// (issue #16.8).
pub fn finish_script(user: &str) -> String {
    let user = kib_vm::ssh::shell_quote(user);
    format!(
        r#"set -eu
user={user}
entry=$(getent passwd "$user") || {{ echo "kib: the build user $user does not exist" >&2; exit 1; }}
IFS=:
set -- $entry
IFS=' 	
'
uid=$3
home=$6
if [ "$uid" -lt 1000 ]; then
  echo "kib: refusing to delete $user: uid $uid is a system account of the image" >&2; exit 1
fi
case "$home" in
  /home/?*) ;;
  *) echo "kib: refusing to delete $user: its home $home is not under /home" >&2; exit 1 ;;
esac
rm -f /etc/sudoers.d/90-cloud-init-users
userdel --force --remove "$user"
rm -f /etc/ssh/ssh_host_*
rm -rf /var/lib/NetworkManager/secret_key /var/lib/NetworkManager/*.lease /var/lib/NetworkManager/timestamps /var/lib/NetworkManager/seen-bssids /var/lib/dhcp/*.leases
if [ -d /var/log/journal ]; then
  mkdir -p /run/systemd/journald.conf.d
  printf '[Journal]\nStorage=volatile\n' | tee /run/systemd/journald.conf.d/90-kib-build.conf >/dev/null
  systemctl restart systemd-journald
  find /var/log/journal -mindepth 1 -delete
fi
for f in /var/log/audit/audit.log /var/log/secure /var/log/auth.log /var/log/wtmp /var/log/btmp /var/log/lastlog /var/log/messages /var/log/syslog; do
  if [ -f "$f" ]; then truncate --size 0 "$f"; fi
done
sync
fstrim -av || echo "kib: fstrim failed; the image is only larger" >&2
sync
"#
    )
}

const WORK_PREFIX: &str = ".kib-build-";
const PID_FILE: &str = "kib.pid";

/// Removes the work folders (`.kib-build-*`, holding a build key and a disk) that a killed
/// build left in `out_dir`: those whose `kib.pid` names a process that no longer runs. A folder
/// without a pid file (made by an older kib) is named in a warning, not removed.
pub fn remove_stale_work_dirs(out_dir: &Path, reporter: &dyn Reporter) {
    let Ok(entries) = fs_err::read_dir(out_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(WORK_PREFIX) || !entry.path().is_dir() {
            continue;
        }
        let path = entry.path();
        let pid = fs_err::read_to_string(path.join(PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        match pid {
            Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => {}
            Some(pid) => match fs_err::remove_dir_all(&path) {
                Ok(()) => reporter.on_warning(&format!(
                    "removed `{}`, left by a build (pid {pid}) that was killed",
                    path.display()
                )),
                Err(e) => reporter.on_warning(&format!(
                    "`{}` was left by a killed build (pid {pid}) and could not be removed: {e}; remove it by hand",
                    path.display()
                )),
            },
            None => reporter.on_warning(&format!(
                "`{}` looks like the work folder of an interrupted build (it may hold a disk and an SSH key); remove it if no build is running",
                path.display()
            )),
        }
    }
}

async fn create_overlay(base: &ResolvedImage, overlay: &Path, size: u64) -> Result<(), BuildError> {
    let err = |source| BuildError::Overlay {
        path: overlay.to_path_buf(),
        source,
    };
    let out = kib_vm::scrub_secrets(&mut tokio::process::Command::new("qemu-img"))
        .args(["create", "-q", "-f", "qcow2", "-F", &base.format, "-b"])
        .arg(&base.path)
        .arg(overlay)
        .arg(size.to_string())
        .output()
        .await
        .map_err(err)?;
    if !out.status.success() {
        return Err(err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )));
    }
    Ok(())
}

fn set_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The SSH options of a build on `network`: behind passt the client speaks first
/// ([`kib_vm::Network::client_speaks_first`]).
fn ssh_options(network: kib_vm::Network, pinned: Option<kib_vm::ssh::HostKey>) -> SshOptions {
    let default = SshOptions::default();
    SshOptions {
        pinned_host_key: pinned,
        banner_timeout: if network.client_speaks_first() {
            std::time::Duration::ZERO
        } else {
            default.banner_timeout
        },
        ..default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Behind passt (`outbound`) the SSH client speaks first, for the first login and (through
    /// `ProvisionContext::ssh_options`) after a reboot; slirp keeps the banner wait.
    #[test]
    fn ssh_options_skip_the_banner_wait_behind_passt_only() {
        use std::time::Duration;
        assert_eq!(
            ssh_options(kib_vm::Network::Outbound, None).banner_timeout,
            Duration::ZERO
        );
        for n in [kib_vm::Network::OutboundHost, kib_vm::Network::Isolated] {
            assert_eq!(
                ssh_options(n, None).banner_timeout,
                SshOptions::default().banner_timeout
            );
        }
    }
    use std::process::Command;

    /// Runs [`finish_script`] with `sh` and nothing but stand-in commands on `PATH` (each
    /// records its call and exits with the status the test gives it), so no real command of
    /// the host runs. Returns the exit status and the recorded calls.
    fn run_finish(passwd: &str, failing: &[&str]) -> (bool, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs_err::create_dir(&bin).unwrap();
        let log = dir.path().join("calls");
        for cmd in [
            "getent",
            "rm",
            "userdel",
            "mkdir",
            "tee",
            "systemctl",
            "find",
            "truncate",
            "sync",
            "fstrim",
        ] {
            let status = i32::from(failing.contains(&cmd));
            let body = if cmd == "getent" {
                format!(
                    "#!/bin/sh\necho \"${{0##*/}} $*\" >> {log}\necho '{passwd}'\n[ -n '{passwd}' ]\n",
                    log = log.display()
                )
            } else {
                format!(
                    "#!/bin/sh\necho \"${{0##*/}} $*\" >> {log}\nexit {status}\n",
                    log = log.display()
                )
            };
            let path = bin.join(cmd);
            fs_err::write(&path, body).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(finish_script("kib-build"))
            .env_clear()
            .env("PATH", &bin)
            .output()
            .unwrap();
        let calls = fs_err::read_to_string(&log).unwrap_or_default();
        (
            out.status.success(),
            calls,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[derive(Default)]
    struct Warnings(std::sync::Mutex<Vec<String>>);
    impl Reporter for Warnings {
        fn on_warning(&self, message: &str) {
            self.0.lock().unwrap().push(message.to_owned());
        }
    }

    /// Issue #16.6: a work folder whose build died is removed by the next build; one whose
    /// build still runs (this test process) is kept; one without a pid file is named.
    #[test]
    fn stale_work_dirs_are_removed_and_live_ones_kept() {
        let out = tempfile::tempdir().unwrap();
        let dead = out.path().join(".kib-build-dead");
        let live = out.path().join(".kib-build-live");
        let old = out.path().join(".kib-build-old");
        let other = out.path().join("node.qcow2");
        for d in [&dead, &live, &old] {
            fs_err::create_dir(d).unwrap();
            fs_err::write(d.join("disk.qcow2"), "x").unwrap();
        }
        fs_err::write(&other, "image").unwrap();
        // A pid that does not run: past the kernel's pid_max (at most 2^22).
        fs_err::write(dead.join(PID_FILE), "4194305\n").unwrap();
        fs_err::write(live.join(PID_FILE), format!("{}\n", std::process::id())).unwrap();
        let warnings = Warnings::default();
        remove_stale_work_dirs(out.path(), &warnings);
        assert!(!dead.exists());
        assert!(live.exists() && old.exists() && other.exists());
        let w = warnings.0.lock().unwrap().join("\n");
        assert!(w.contains(".kib-build-dead") && w.contains("killed"), "{w}");
        assert!(w.contains(".kib-build-old"), "{w}");
        assert!(!w.contains(".kib-build-live"), "{w}");
    }

    const BUILD_USER: &str = "kib-build:x:1001:1001::/home/kib-build:/bin/bash";

    #[test]
    fn finish_deletes_the_build_user_and_only_fstrim_may_fail() {
        let (ok, calls, stderr) = run_finish(BUILD_USER, &["fstrim"]);
        assert!(ok, "{stderr}\n{calls}");
        assert!(
            calls.contains("userdel --force --remove kib-build"),
            "{calls}"
        );
        assert!(calls.contains("rm -f /etc/ssh/ssh_host_"), "{calls}");
        assert!(stderr.contains("fstrim failed"), "{stderr}");
    }

    #[test]
    fn finish_fails_when_any_other_step_fails() {
        // Before #16.4 the script's status was that of the last `sync`.
        for failing in ["userdel", "rm", "sync", "truncate", "tee", "systemctl"] {
            let (ok, calls, _) = run_finish(BUILD_USER, &[failing]);
            // truncate/tee/systemctl only run when the host has the files they act on.
            if calls.lines().any(|l| l.starts_with(failing)) {
                assert!(
                    !ok,
                    "a failing `{failing}` must fail the clean-up:\n{calls}"
                );
            }
        }
        let (ok, _, _) = run_finish(BUILD_USER, &["sync"]);
        assert!(!ok);
    }

    #[test]
    fn finish_refuses_to_delete_a_system_account_or_a_home_outside_home() {
        for entry in [
            "kib-build:x:0:0:root:/root:/bin/bash",
            "kib-build:x:1001:1001::/root:/bin/bash",
            "kib-build:x:1001:1001::/:/bin/sh",
            "kib-build:x:999:999::/home/kib-build:/bin/sh",
        ] {
            let (ok, calls, stderr) = run_finish(entry, &[]);
            assert!(!ok, "{entry}: {calls}");
            assert!(stderr.contains("refusing to delete"), "{entry}: {stderr}");
            assert!(!calls.contains("userdel"), "{entry}: {calls}");
        }
        let (ok, calls, stderr) = run_finish("", &[]);
        assert!(!ok && stderr.contains("does not exist"), "{calls}{stderr}");
    }
}
