//! Provisioners: the ordered steps that turn the booted base image into a node image.
//!
//! In `kib.toml` they are `[[provisioner]]` tables with a `type`:
//! ```toml
//! [[provisioner]]
//! type = "ansible"
//! playbook = "playbook/site.yml"        # relative to kib.toml's folder
//! extra_vars = { kubernetes_version = "1.37" }
//!
//! [[provisioner]]
//! type = "shell"
//! inline = ["echo hello | tee /etc/marker"]   # run with sudo unless `sudo = false`
//!
//! [[provisioner]]
//! type = "file"
//! source = "files/motd"
//! destination = "/etc/motd"
//! mode = "0644"
//!
//! [[provisioner]]
//! type = "reboot"          # reboot the guest and log in again (within vm.boot_timeout)
//! ```
//! A reboot is what Packer (`expect_disconnect`, `windows-restart`) and image-builder do
//! between a package upgrade and the steps that need the new kernel running.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kib_manifest::Hint;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tracing::{debug, info};

use crate::reporter::Reporter;
use kib_vm::ssh::{
    ExitStatus, KeyPair, LineSplitter, OutputTail, Session, SshError, SshOptions, Stream, Tail,
    UploadSource, wait_for_ssh,
};

/// One provisioning step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Provisioner {
    /// Run `ansible-playbook` on the host against the VM.
    Ansible(AnsibleProvisioner),
    /// Run commands in the VM over SSH.
    Shell(ShellProvisioner),
    /// Upload a file into the VM.
    File(FileProvisioner),
    /// Reboot the VM and wait until it answers on SSH again, with the same host key and a new
    /// boot id.
    Reboot(RebootProvisioner),
}

/// Reboots the VM (no settings: it waits up to `vm.boot_timeout` for the guest to come back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootProvisioner {}

/// Runs an Ansible playbook against the VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnsibleProvisioner {
    /// The playbook, relative to the folder of `kib.toml` (or absolute).
    pub playbook: PathBuf,
    /// Extra variables passed with `--extra-vars`; `--var k=v` on the command line adds to them.
    #[serde(default)]
    pub extra_vars: BTreeMap<String, serde_json::Value>,
    /// Extra arguments for `ansible-playbook` (e.g. `["--tags", "node"]`).
    #[serde(default)]
    pub extra_args: Vec<String>,
}

/// Runs shell commands in the VM, in order; a non-zero exit fails the build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellProvisioner {
    /// The commands, each run by `sh -c`.
    pub inline: Vec<String>,
    /// Run them as root through `sudo` (the default).
    #[serde(default = "default_true")]
    pub sudo: bool,
}

/// Uploads one file into the VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProvisioner {
    /// The file on the host, relative to the folder of `kib.toml` (or absolute).
    pub source: PathBuf,
    /// The absolute path in the VM.
    pub destination: String,
    /// The file mode in the VM, octal (default `0644`).
    #[serde(default = "default_mode")]
    pub mode: String,
}

fn default_true() -> bool {
    true
}

fn default_mode() -> String {
    "0644".to_owned()
}

impl Provisioner {
    /// A short name for messages: `ansible site.yml`, `shell #2`, `file /etc/motd`.
    pub fn describe(&self) -> String {
        match self {
            Provisioner::Ansible(a) => format!(
                "ansible `{}`",
                a.playbook.file_name().map_or_else(
                    || a.playbook.display().to_string(),
                    |n| n.to_string_lossy().into_owned()
                )
            ),
            Provisioner::Shell(s) => format!(
                "shell ({} command{})",
                s.inline.len(),
                if s.inline.len() == 1 { "" } else { "s" }
            ),
            Provisioner::File(f) => format!("file `{}`", f.destination),
            Provisioner::Reboot(_) => "reboot".to_owned(),
        }
    }
}

/// Everything the provisioners need about the running build.
pub struct ProvisionContext<'a> {
    /// The VM's SSH address on the host (ansible connects on its own).
    pub ssh_addr: SocketAddr,
    /// The SSH user.
    pub user: &'a str,
    /// The build's private key in OpenSSH format, mode 0600 (for ansible).
    pub key_file: &'a Path,
    /// A `known_hosts` file holding the guest's host key (for ansible's strict checking).
    pub known_hosts: &'a Path,
    /// The same key, for logging in again after a reboot.
    pub key: &'a KeyPair,
    /// How long a reboot may take until SSH answers again.
    pub reboot_timeout: Duration,
    /// The SSH options of the first login (timeouts; the banner wait, off behind passt), for
    /// logging in again after a reboot.
    pub ssh_options: &'a SshOptions,
    /// The folder of `kib.toml`: relative playbook and source paths resolve against it.
    pub base_dir: &'a Path,
    /// A private temporary folder for the generated inventory and variable files.
    pub work_dir: &'a Path,
    /// A host folder where a playbook may `fetch` files for the build manifest; passed to
    /// ansible as the extra variable `kib_collect_dir`.
    pub collect_dir: &'a Path,
    /// Variables from the command line (`--var k=v`); they override a provisioner's own
    /// `extra_vars`.
    pub vars: &'a BTreeMap<String, serde_json::Value>,
    /// Receives the output lines.
    pub reporter: &'a dyn Reporter,
}

/// A provisioner failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Step `index` (1-based, in `kib.toml` order) failed.
    #[error("Provisioner {index} ({what}) failed")]
    Step {
        /// The 1-based position of the provisioner.
        index: usize,
        /// What it is ([`Provisioner::describe`]).
        what: String,
        /// Why it failed.
        #[source]
        source: StepError,
    },
}

impl Hint for ProvisionError {
    /// A suggestion for the user, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            ProvisionError::Step { source, .. } => source.hint(),
        }
    }
}

/// Why one provisioner failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The playbook file does not exist.
    #[error("Playbook `{path}` does not exist")]
    PlaybookMissing {
        /// The resolved path.
        path: PathBuf,
    },
    /// Writing the generated inventory or variables failed.
    #[error("Failed to write `{path}`")]
    WriteInput {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `ansible-playbook` is not installed (not on `PATH`).
    #[error("`{program}` was not found")]
    AnsibleNotFound {
        /// The program kib looked for.
        program: String,
    },
    /// `ansible-playbook` could not be started.
    #[error("Failed to start `{program}`")]
    AnsibleSpawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading the output of `ansible-playbook` or waiting for it failed.
    #[error("Failed to read the output of `ansible-playbook`")]
    AnsibleOutput {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `ansible-playbook` exited with a non-zero status.
    #[error("`ansible-playbook {playbook}` failed with {status}")]
    AnsibleFailed {
        /// The playbook.
        playbook: PathBuf,
        /// How it ended (`exit code 2`, `signal 9`).
        status: String,
        /// The exit code, if it exited normally.
        code: Option<i32>,
        /// Its last lines of output.
        #[source]
        output: OutputTail,
    },
    /// A shell command could not be run (the connection failed).
    #[error("Failed to run command {number} `{command}`")]
    ShellExec {
        /// The 1-based position of the command in `inline`.
        number: usize,
        /// The command.
        command: String,
        /// The cause.
        #[source]
        source: Box<SshError>,
    },
    /// A shell command ended with a non-zero status.
    #[error("Command {number} `{command}` failed with {status}")]
    ShellCommand {
        /// The 1-based position of the command in `inline`.
        number: usize,
        /// The command.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// Its last lines of stderr.
        #[source]
        stderr: OutputTail,
    },
    /// The `mode` of a file provisioner is not octal.
    #[error("File mode `{mode}` is not an octal mode like `0644`")]
    InvalidMode {
        /// The mode as written.
        mode: String,
    },
    /// `systemctl reboot` was refused.
    #[error("The reboot command failed with {status}")]
    RebootCommand {
        /// How it ended.
        status: ExitStatus,
        /// Its last lines of stderr.
        #[source]
        stderr: OutputTail,
    },
    /// The guest's boot id could not be read (before or after the reboot).
    #[error("Failed to read the guest's boot id")]
    BootId(#[source] Box<SshError>),
    /// `cat /proc/sys/kernel/random/boot_id` printed nothing or failed.
    #[error("Reading the guest's boot id ended with {status}")]
    BootIdStatus {
        /// How it ended.
        status: ExitStatus,
    },
    /// The guest did not come back on SSH with a new boot id in time.
    #[error("The VM did not come back on SSH within {} after the reboot", crate::config::format_duration(*after))]
    RebootTimeout {
        /// The limit (`vm.boot_timeout`).
        after: Duration,
        /// The last SSH error, if any.
        #[source]
        source: Option<Box<SshError>>,
    },
    /// The guest came back with another host key (or refused the build's key).
    #[error("Failed to log in again after the reboot")]
    Reconnect(#[source] Box<SshError>),
    /// Uploading a file failed.
    #[error("Failed to copy `{path}` into the VM")]
    Upload {
        /// The local file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<SshError>,
    },
}

impl Hint for StepError {
    /// A suggestion for the user, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            StepError::AnsibleNotFound { .. } => Some(
                "install Ansible with `pip install ansible-core` (or run `sudo scripts/setup-host.sh`)".to_owned(),
            ),
            StepError::PlaybookMissing { .. } => {
                Some("relative playbook paths are resolved against the folder of `kib.toml`".to_owned())
            }
            StepError::ShellCommand { stderr, .. }
                if stderr.lines.iter().any(|l| l.contains("sudo") && l.contains("password")) =>
            {
                Some("the build user needs passwordless sudo, or set `sudo = false` on the provisioner".to_owned())
            }
            StepError::ShellExec { source, .. }
            | StepError::Upload { source, .. }
            | StepError::BootId(source)
            | StepError::Reconnect(source) => source.hint(),
            StepError::RebootTimeout { source, .. } => {
                let own = "raise `--boot-timeout`, or use `--on-error=abort` and look at the VM's console";
                // SSH's own hint carries the last attempt's error: one more line.
                Some(match source.as_ref().and_then(Hint::hint) {
                    Some(ssh) => format!("{own}\n{ssh}"),
                    None => own.to_owned(),
                })
            }
            _ => None,
        }
    }
}

/// Runs the provisioners in order; the first failure stops the build.
/// `session` is the open connection; a reboot step replaces it with the new one.
pub async fn run_all(
    provisioners: &[Provisioner],
    ctx: &ProvisionContext<'_>,
    session: &mut Session,
) -> Result<(), ProvisionError> {
    for (i, p) in provisioners.iter().enumerate() {
        let index = i + 1;
        let what = p.describe();
        let start = Instant::now();
        info!(index, what, "provisioner started");
        let result = match p {
            Provisioner::Ansible(a) => {
                run_ansible(index, a, ctx, OsStr::new(ANSIBLE_PLAYBOOK)).await
            }
            Provisioner::Shell(s) => run_shell(s, ctx, session).await,
            Provisioner::File(f) => run_file(f, ctx, session).await,
            Provisioner::Reboot(_) => run_reboot(ctx, session).await,
        };
        result.map_err(|source| ProvisionError::Step {
            index,
            what: what.clone(),
            source,
        })?;
        info!(index, what, elapsed = ?start.elapsed(), "provisioner done");
    }
    Ok(())
}

/// The program the ansible provisioner runs, found on `PATH`.
pub const ANSIBLE_PLAYBOOK: &str = "ansible-playbook";

/// SSH options for ansible's own connections: the guest's host key (generated by kib and
/// handed in through cloud-init) is the only one accepted, from the build's own `known_hosts`
/// (issue #16.7); only the build key; keepalives to notice a dead guest; no noise.
fn ansible_ssh_common_args(known_hosts: &Path) -> String {
    format!(
        "-o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \
         -o IdentitiesOnly=yes -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -o LogLevel=ERROR",
        kib_vm::ssh::shell_quote(&known_hosts.to_string_lossy())
    )
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// The generated inventory: one host, `default`, reached over the forwarded SSH port. Written as
/// JSON, which ansible's YAML inventory plugin reads, so that no path or argument needs INI
/// quoting.
pub fn render_inventory(
    ssh_addr: SocketAddr,
    user: &str,
    key_file: &Path,
    known_hosts: &Path,
) -> String {
    let host = serde_json::json!({
        "ansible_host": ssh_addr.ip().to_string(),
        "ansible_port": ssh_addr.port(),
        "ansible_user": user,
        "ansible_ssh_private_key_file": key_file.to_string_lossy(),
        "ansible_python_interpreter": "auto_silent",
        "ansible_ssh_common_args": ansible_ssh_common_args(known_hosts),
    });
    let inventory = serde_json::json!({ "all": { "hosts": { "default": host } } });
    let mut s = serde_json::to_string_pretty(&inventory).unwrap_or_default();
    s.push('\n');
    s
}

/// The extra variables for one ansible run: the provisioner's own, overridden by the command
/// line's, plus `kib_collect_dir`.
pub fn merged_vars(
    own: &BTreeMap<String, serde_json::Value>,
    cli: &BTreeMap<String, serde_json::Value>,
    collect_dir: &Path,
) -> BTreeMap<String, serde_json::Value> {
    let mut vars = own.clone();
    vars.extend(cli.iter().map(|(k, v)| (k.clone(), v.clone())));
    vars.insert(
        "kib_collect_dir".to_owned(),
        serde_json::Value::String(collect_dir.to_string_lossy().into_owned()),
    );
    vars
}

/// The environment of `ansible-playbook`.
fn ansible_env(control_dir: &Path, local_tmp: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("ANSIBLE_HOST_KEY_CHECKING", "True".to_owned()),
        ("ANSIBLE_NOCOLOR", "1".to_owned()),
        ("ANSIBLE_FORCE_COLOR", "0".to_owned()),
        ("ANSIBLE_RETRY_FILES_ENABLED", "0".to_owned()),
        ("ANSIBLE_PIPELINING", "1".to_owned()),
        // OpenSSH 9 speaks SFTP for `scp` anyway; ask for it by name (no scp fallback that
        // would hide a broken guest).
        ("ANSIBLE_SSH_TRANSFER_METHOD", "sftp".to_owned()),
        // One multiplexed connection per run, in the build's own folder; closed after the run.
        (
            "ANSIBLE_SSH_ARGS",
            "-o ControlMaster=auto -o ControlPersist=30s".to_owned(),
        ),
        (
            "ANSIBLE_SSH_CONTROL_PATH_DIR",
            control_dir.to_string_lossy().into_owned(),
        ),
        (
            "ANSIBLE_LOCAL_TEMP",
            local_tmp.to_string_lossy().into_owned(),
        ),
        ("PYTHONUNBUFFERED", "1".to_owned()),
    ]
}

fn write_private_file(path: &Path, data: &[u8]) -> Result<(), StepError> {
    use fs_err::os::unix::fs::OpenOptionsExt as _;
    use std::io::Write as _;
    let write = || -> std::io::Result<()> {
        let mut f = fs_err::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(data)
    };
    write().map_err(|source| StepError::WriteInput {
        path: path.to_owned(),
        source,
    })
}

fn create_private_dir(path: &Path) -> Result<(), StepError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StepError::WriteInput {
            path: path.to_owned(),
            source,
        })
}

/// Kills the process group of `ansible-playbook` (and its SSH connections) when dropped, so that
/// an interrupted build leaves nothing behind; then asks the SSH control masters to exit.
struct AnsibleGuard {
    pgid: Option<i32>,
    control_dir: PathBuf,
}

impl Drop for AnsibleGuard {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        if let Some(pgid) = self.pgid.take() {
            let pgid = Pid::from_raw(pgid);
            if killpg(pgid, Signal::SIGTERM).is_ok() {
                debug!(%pgid, "sent SIGTERM to the ansible process group");
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_secs(3));
                    let _ = killpg(pgid, Signal::SIGKILL);
                });
            }
        }
        // ControlPersist masters detach from the group; tell each one to exit.
        if let Ok(entries) = std::fs::read_dir(&self.control_dir) {
            for entry in entries.flatten() {
                let _ = std::process::Command::new("ssh")
                    .arg("-o")
                    .arg(format!("ControlPath={}", entry.path().display()))
                    .args(["-O", "exit", "kib-build"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

async fn run_ansible(
    index: usize,
    a: &AnsibleProvisioner,
    ctx: &ProvisionContext<'_>,
    program: &OsStr,
) -> Result<(), StepError> {
    let playbook = resolve(ctx.base_dir, &a.playbook);
    if !playbook.is_file() {
        return Err(StepError::PlaybookMissing { path: playbook });
    }
    let inventory = ctx.work_dir.join(format!("inventory-{index}.yml"));
    write_private_file(
        &inventory,
        render_inventory(ctx.ssh_addr, ctx.user, ctx.key_file, ctx.known_hosts).as_bytes(),
    )?;
    let vars_file = ctx.work_dir.join(format!("extra-vars-{index}.json"));
    let vars = merged_vars(&a.extra_vars, ctx.vars, ctx.collect_dir);
    let vars_json = serde_json::to_vec_pretty(&vars).unwrap_or_default();
    write_private_file(&vars_file, &vars_json)?;
    let control_dir = ctx.work_dir.join(format!("ansible-cp-{index}"));
    create_private_dir(&control_dir)?;
    let local_tmp = ctx.work_dir.join(format!("ansible-tmp-{index}"));
    create_private_dir(&local_tmp)?;

    let mut cmd = tokio::process::Command::new(program);
    // Ansible and the ssh it starts get none of kib's secrets (issue #16.10).
    kib_vm::scrub_secrets(&mut cmd);
    cmd.arg("-i")
        .arg(&inventory)
        .arg("--extra-vars")
        .arg(format!("@{}", vars_file.display()))
        .args(&a.extra_args)
        .arg(&playbook)
        .current_dir(ctx.base_dir)
        .envs(ansible_env(&control_dir, &local_tmp))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let program_name = program.to_string_lossy().into_owned();
    debug!(?cmd, "starting ansible-playbook");
    let mut child = cmd.spawn().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            StepError::AnsibleNotFound {
                program: program_name.clone(),
            }
        } else {
            StepError::AnsibleSpawn {
                program: program_name.clone(),
                source,
            }
        }
    })?;
    let _guard = AnsibleGuard {
        pgid: child.id().and_then(|p| i32::try_from(p).ok()),
        control_dir,
    };

    let mut tail = Tail::default();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    pump_lines(stdout, stderr, &mut |line| {
        if !line.trim().is_empty() {
            tail.push(line);
        }
        ctx.reporter.on_output_line("ansible", line);
    })
    .await
    .map_err(|source| StepError::AnsibleOutput { source })?;
    let status = child
        .wait()
        .await
        .map_err(|source| StepError::AnsibleOutput { source })?;
    if status.success() {
        return Ok(());
    }
    use std::os::unix::process::ExitStatusExt as _;
    let described = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => "an unknown status".to_owned(),
    };
    Err(StepError::AnsibleFailed {
        playbook: a.playbook.clone(),
        status: described,
        code: status.code(),
        output: tail.into_output(),
    })
}

/// Reads two pipes to their ends, passing each line (lossy UTF-8, `\r\n` trimmed; see
/// [`LineSplitter`]) on as it arrives.
async fn pump_lines(
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin>,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> std::io::Result<()> {
    let (mut out, mut err) = (stdout, stderr);
    let (mut out_lines, mut err_lines) = (LineSplitter::default(), LineSplitter::default());
    let (mut out_buf, mut err_buf) = (vec![0u8; 8192], vec![0u8; 8192]);
    while out.is_some() || err.is_some() {
        tokio::select! {
            r = async { out.as_mut().unwrap_or_else(|| unreachable!()).read(&mut out_buf).await }, if out.is_some() => {
                match r? {
                    0 => {
                        out = None;
                        out_lines.finish(|l| on_line(l));
                    }
                    n => out_lines.push(&out_buf[..n], |l| on_line(l)),
                }
            }
            r = async { err.as_mut().unwrap_or_else(|| unreachable!()).read(&mut err_buf).await }, if err.is_some() => {
                match r? {
                    0 => {
                        err = None;
                        err_lines.finish(|l| on_line(l));
                    }
                    n => err_lines.push(&err_buf[..n], |l| on_line(l)),
                }
            }
        }
    }
    Ok(())
}

async fn run_shell(
    s: &ShellProvisioner,
    ctx: &ProvisionContext<'_>,
    session: &Session,
) -> Result<(), StepError> {
    for (i, command) in s.inline.iter().enumerate() {
        let number = i + 1;
        let mut tail = Tail::default();
        let mut on_line = |stream: Stream, line: &str| {
            if stream == Stream::Stderr {
                tail.push(line);
            }
            ctx.reporter.on_output_line("shell", line);
        };
        let result = if s.sudo {
            session.exec_sudo(command, &mut on_line).await
        } else {
            session.exec(command, None, &mut on_line).await
        };
        let status = result.map_err(|source| StepError::ShellExec {
            number,
            command: command.clone(),
            source: Box::new(source),
        })?;
        if !status.success() {
            return Err(StepError::ShellCommand {
                number,
                command: command.clone(),
                status,
                stderr: tail.into_output(),
            });
        }
    }
    Ok(())
}

/// Parses an octal file mode such as `0644` or `755`.
pub fn parse_mode(mode: &str) -> Option<u32> {
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

async fn run_file(
    f: &FileProvisioner,
    ctx: &ProvisionContext<'_>,
    session: &Session,
) -> Result<(), StepError> {
    let mode = parse_mode(&f.mode).ok_or_else(|| StepError::InvalidMode {
        mode: f.mode.clone(),
    })?;
    let path = resolve(ctx.base_dir, &f.source);
    // Root needs no sudo (and a minimal guest may not have it).
    let sudo = ctx.user != "root";
    session
        .upload(UploadSource::Path(&path), &f.destination, mode, sudo)
        .await
        .map_err(|source| StepError::Upload {
            path: path.clone(),
            source: Box::new(source),
        })?;
    ctx.reporter.on_output_line(
        "file",
        &format!(
            "copied {} to {} (mode {mode:04o})",
            path.display(),
            f.destination
        ),
    );
    Ok(())
}

/// The guest's `/proc/sys/kernel/random/boot_id`: new on every boot.
async fn boot_id(session: &Session) -> Result<String, StepError> {
    let mut id = String::new();
    let status = session
        .exec(
            "cat /proc/sys/kernel/random/boot_id",
            None,
            &mut |stream, line| {
                if stream == Stream::Stdout {
                    id.push_str(line.trim());
                }
            },
        )
        .await
        .map_err(|e| StepError::BootId(Box::new(e)))?;
    if !status.success() || id.is_empty() {
        return Err(StepError::BootIdStatus { status });
    }
    Ok(id)
}

/// Reboots the guest and logs in again with the pinned host key, until the boot id differs
/// (a login that races the shutdown reaches the old boot and is retried).
async fn run_reboot(ctx: &ProvisionContext<'_>, session: &mut Session) -> Result<(), StepError> {
    let before = boot_id(session).await?;
    let mut tail = Tail::default();
    // `--no-block` queues the reboot and returns, so the command ends before sshd goes away;
    // the connection dropping under it is expected.
    let result = session
        .exec_sudo("systemctl --no-block reboot", &mut |stream, line| {
            if stream == Stream::Stderr {
                tail.push(line);
            }
        })
        .await;
    match result {
        Ok(status) if !status.success() => {
            return Err(StepError::RebootCommand {
                status,
                stderr: tail.into_output(),
            });
        }
        Ok(_) => {}
        Err(e) => {
            debug!(error = %kib_manifest::error_chain(&e), "the connection dropped under the reboot")
        }
    }
    ctx.reporter
        .on_output_line("reboot", "rebooting, waiting for SSH");
    let opts = session.pinned_options(ctx.ssh_options);
    let deadline = Instant::now() + ctx.reboot_timeout;
    let mut last: Option<Box<SshError>> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StepError::RebootTimeout {
                after: ctx.reboot_timeout,
                source: last,
            });
        }
        match wait_for_ssh(ctx.ssh_addr, ctx.user, ctx.key, &opts, left).await {
            Ok(new) => match boot_id(&new).await {
                Ok(id) if id != before => {
                    let old = std::mem::replace(session, new);
                    old.close().await;
                    ctx.reporter
                        .on_output_line("reboot", &format!("back up (boot id {id})"));
                    return Ok(());
                }
                Ok(_) => new.close().await,
                Err(e) => {
                    new.close().await;
                    if let StepError::BootId(e) = e {
                        last = Some(e);
                    }
                }
            },
            Err(e @ (SshError::HostKeyChanged { .. } | SshError::AuthRejected { .. })) => {
                return Err(StepError::Reconnect(Box::new(e)));
            }
            Err(e) => last = Some(Box::new(e)),
        }
        tokio::time::sleep(Duration::from_secs(1).min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pipeline may run provisioning on a multi-threaded runtime.
    #[allow(dead_code)]
    fn run_all_is_send(p: &[Provisioner], ctx: &ProvisionContext<'_>, s: &mut Session) {
        fn is_send<T: Send>(_: &T) {}
        is_send(&run_all(p, ctx, s));
    }

    #[test]
    fn inventory_names_host_port_user_key_and_ssh_args() {
        let addr: SocketAddr = "127.0.0.1:2222".parse().unwrap();
        let text = render_inventory(
            addr,
            "kib",
            Path::new("/tmp/k b/id_ed25519"),
            Path::new("/tmp/k b/known_hosts"),
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let host = &v["all"]["hosts"]["default"];
        assert_eq!(host["ansible_host"], "127.0.0.1");
        assert_eq!(host["ansible_port"], 2222);
        assert_eq!(host["ansible_user"], "kib");
        assert_eq!(host["ansible_ssh_private_key_file"], "/tmp/k b/id_ed25519");
        assert_eq!(host["ansible_python_interpreter"], "auto_silent");
        let args = host["ansible_ssh_common_args"].as_str().unwrap();
        for want in [
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile='/tmp/k b/known_hosts'",
            "GlobalKnownHostsFile=/dev/null",
            "IdentitiesOnly=yes",
        ] {
            assert!(args.contains(want), "{args}");
        }
    }

    #[test]
    fn command_line_vars_override_the_provisioners_own() {
        let own = BTreeMap::from([
            ("a".to_owned(), serde_json::json!("own")),
            ("b".to_owned(), serde_json::json!(1)),
            ("kib_collect_dir".to_owned(), serde_json::json!("nope")),
        ]);
        let cli = BTreeMap::from([("a".to_owned(), serde_json::json!("cli"))]);
        let v = merged_vars(&own, &cli, Path::new("/c"));
        assert_eq!(v["a"], "cli");
        assert_eq!(v["b"], 1);
        assert_eq!(v["kib_collect_dir"], "/c");
    }

    #[test]
    fn ansible_env_sets_the_non_interactive_settings() {
        let env = ansible_env(Path::new("/w/cp"), Path::new("/w/tmp"));
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ANSIBLE_HOST_KEY_CHECKING"), Some("True"));
        assert_eq!(get("ANSIBLE_NOCOLOR"), Some("1"));
        assert_eq!(get("ANSIBLE_RETRY_FILES_ENABLED"), Some("0"));
        assert_eq!(get("ANSIBLE_PIPELINING"), Some("1"));
        assert_eq!(get("ANSIBLE_SSH_TRANSFER_METHOD"), Some("sftp"));
        assert_eq!(get("ANSIBLE_SSH_CONTROL_PATH_DIR"), Some("/w/cp"));
    }

    #[test]
    fn modes_parse_as_octal() {
        assert_eq!(parse_mode("0644"), Some(0o644));
        assert_eq!(parse_mode("755"), Some(0o755));
        assert_eq!(parse_mode("0o600"), Some(0o600));
        assert_eq!(parse_mode("4755"), Some(0o4755));
        assert_eq!(parse_mode("0x1"), None);
        assert_eq!(parse_mode("888"), None);
        assert_eq!(parse_mode(""), None);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        assert_eq!(
            resolve(Path::new("/cfg"), Path::new("pb/site.yml")),
            Path::new("/cfg/pb/site.yml")
        );
        assert_eq!(
            resolve(Path::new("/cfg"), Path::new("/abs.yml")),
            Path::new("/abs.yml")
        );
    }

    #[test]
    fn provisioners_keep_their_toml_shape() {
        #[derive(Deserialize)]
        struct Doc {
            provisioner: Vec<Provisioner>,
        }
        let doc: Doc = toml::from_str(
            r#"
            [[provisioner]]
            type = "ansible"
            playbook = "playbook/site.yml"
            extra_vars = { kubernetes_version = "1.37" }
            [[provisioner]]
            type = "shell"
            inline = ["echo hi"]
            [[provisioner]]
            type = "file"
            source = "files/motd"
            destination = "/etc/motd"
            "#,
        )
        .unwrap();
        assert_eq!(doc.provisioner.len(), 3);
        assert!(matches!(&doc.provisioner[1], Provisioner::Shell(s) if s.sudo));
        assert!(matches!(&doc.provisioner[2], Provisioner::File(f) if f.mode == "0644"));
    }

    #[tokio::test]
    async fn missing_ansible_playbook_is_a_typed_error_with_a_hint() {
        // Everything up to the spawn is real; the program does not exist.
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("site.yml"), "- hosts: all\n  tasks: []\n").unwrap();
        let a = AnsibleProvisioner {
            playbook: PathBuf::from("site.yml"),
            extra_vars: BTreeMap::new(),
            extra_args: Vec::new(),
        };
        let err =
            run_ansible_unconnected(&a, work.path(), OsStr::new("kib-no-such-ansible-playbook"))
                .await
                .unwrap_err();
        assert!(
            matches!(&err, StepError::AnsibleNotFound { program } if program == "kib-no-such-ansible-playbook")
        );
        assert!(err.hint().unwrap().contains("pip install ansible-core"));
    }

    #[tokio::test]
    async fn missing_playbook_is_named() {
        let work = tempfile::tempdir().unwrap();
        let a = AnsibleProvisioner {
            playbook: PathBuf::from("nope.yml"),
            extra_vars: BTreeMap::new(),
            extra_args: Vec::new(),
        };
        let err = run_ansible_unconnected(&a, work.path(), OsStr::new(ANSIBLE_PLAYBOOK))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StepError::PlaybookMissing { path } if path.ends_with("nope.yml")),
            "{err:?}"
        );
    }

    /// `run_ansible` needs a `Session` only for the context; these tests fail before it would
    /// be used, so they drive the same code through a context-free copy of its start.
    async fn run_ansible_unconnected(
        a: &AnsibleProvisioner,
        dir: &Path,
        program: &OsStr,
    ) -> Result<(), StepError> {
        let playbook = resolve(dir, &a.playbook);
        if !playbook.is_file() {
            return Err(StepError::PlaybookMissing { path: playbook });
        }
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg(&playbook)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let name = program.to_string_lossy().into_owned();
        cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                StepError::AnsibleNotFound {
                    program: name.clone(),
                }
            } else {
                StepError::AnsibleSpawn {
                    program: name.clone(),
                    source,
                }
            }
        })?;
        Ok(())
    }
}
