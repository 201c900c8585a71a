//! The SSH client the builder uses to reach the VM: an ephemeral ed25519 key pair, connection
//! with per-attempt timeouts and retry ([`wait_for_ssh`]), host key pinning for the whole
//! build, streamed command execution and streamed uploads.
//!
//! Built on russh, with the timeouts russh leaves off by default switched on (see
//! [`SshOptions`]).
//!
//! # Remote commands die with their channel
//!
//! sshd does not signal a command when its channel or connection goes away unless a pty was
//! requested, so a build interrupted with Ctrl-C would leave `dnf` running in the VM. kib does
//! not request a pty (it would merge stderr into stdout and rewrite line endings). Instead every
//! [`Session::exec`] without stdin runs the command under a small POSIX `sh` guard: the command
//! runs in its own session (`setsid`) with stdin from `/dev/null`, and a watcher reads the
//! channel's stdin, which kib keeps open and never writes. When the channel closes, sshd closes
//! that pipe, the watcher sees end-of-file and sends `SIGTERM` (then `SIGKILL` after 5 s) to the
//! command's process group. [`sudo_command`] puts the guard inside `sudo` so that it can kill
//! root processes too. Commands given stdin (uploads) are not guarded: they end at the
//! end-of-file of their input, and [`Session::upload`] writes to a temporary file that only
//! replaces the destination once its size is checked.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kib_manifest::Hint;
use rand::{Rng as _, TryRng as _};
use russh::client;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, ChannelWriteHalf, Disconnect};
use tokio::io::AsyncRead;
use tracing::debug;

/// The comment on kib's ephemeral public keys.
pub const KEY_COMMENT: &str = "kib-build";

/// How many trailing stderr lines a failed command keeps for its error.
pub const STDERR_TAIL_LINES: usize = 20;

/// Lines longer than this are passed on in pieces (a runaway progress bar must not eat memory).
const MAX_LINE: usize = 64 * 1024;

/// An ephemeral ed25519 key pair, generated in-process for one build.
///
/// `Debug` never shows the private half.
#[derive(Clone)]
pub struct KeyPair {
    private: Arc<PrivateKey>,
}

impl KeyPair {
    /// Generates a fresh ed25519 key pair from the operating system's random source.
    pub fn generate() -> KeyPair {
        let mut seed = [0u8; 32];
        rand::rngs::SysRng
            .try_fill_bytes(&mut seed)
            .unwrap_or_else(|_| rand::rng().fill_bytes(&mut seed));
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        seed.fill(0);
        key.set_comment(KEY_COMMENT);
        KeyPair {
            private: Arc::new(key),
        }
    }

    /// The public key in OpenSSH `authorized_keys` form: `ssh-ed25519 AAAA… kib-build`.
    pub fn public_openssh(&self) -> String {
        // Encoding an ed25519 public key cannot fail.
        self.private.public_key().to_openssh().unwrap_or_default()
    }

    /// The SHA-256 fingerprint of the public key (`SHA256:…`).
    pub fn fingerprint(&self) -> String {
        self.private
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }

    /// Writes the private key in OpenSSH format to `dir/id_ed25519` with mode 0600 and returns
    /// the path (for `ansible-playbook`). `dir` should be a private (0700) directory the caller
    /// owns and removes.
    pub fn write_private_key(&self, dir: &Path) -> Result<PathBuf, SshError> {
        use fs_err::os::unix::fs::OpenOptionsExt as _;
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt as _;

        let path = dir.join("id_ed25519");
        let pem = self
            .private
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .map_err(|source| SshError::EncodeKey { source })?;
        let write = || -> std::io::Result<()> {
            let mut file = fs_err::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            // The file may have existed with a wider mode.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(pem.as_bytes())?;
            file.sync_all()
        };
        write().map_err(|source| SshError::WriteKey {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// The private key in OpenSSH PEM form: for handing the key to the guest as its SSH host
    /// key through cloud-init (`ssh_keys: ed25519_private`), so that the host knows the key
    /// before the first connection and nothing is trusted on first use (issue #16.7).
    pub fn private_openssh(&self) -> Result<String, SshError> {
        self.private
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .map(|pem| pem.as_str().to_owned())
            .map_err(|source| SshError::EncodeKey { source })
    }

    /// The public half as a [`HostKey`] to pin ([`SshOptions::pinned_host_key`]), for a key
    /// generated as a guest's host key.
    pub fn as_host_key(&self) -> HostKey {
        HostKey(self.private.public_key().clone())
    }

    fn auth_key(&self) -> PrivateKeyWithHashAlg {
        PrivateKeyWithHashAlg::new(Arc::clone(&self.private), None)
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public_openssh())
            .field("private", &"<redacted>")
            .finish()
    }
}

/// A server's host key, as pinned by a [`Session`].
#[derive(Clone, PartialEq, Eq)]
pub struct HostKey(PublicKey);

impl HostKey {
    /// The SHA-256 fingerprint (`SHA256:…`), as `ssh-keygen -lf` prints it.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The key in OpenSSH form (`ssh-ed25519 AAAA…`), e.g. for a `known_hosts` line.
    pub fn to_openssh(&self) -> String {
        self.0.to_openssh().unwrap_or_default()
    }

    /// A `known_hosts` line for `addr` (`[127.0.0.1]:2222 ssh-ed25519 AAAA…`, the form OpenSSH
    /// uses for a non-default port), without the key's comment.
    pub fn known_hosts_line(&self, addr: SocketAddr) -> String {
        let key = self.to_openssh();
        let mut parts = key.split_whitespace();
        let (alg, data) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let host = if addr.port() == 22 {
            addr.ip().to_string()
        } else {
            format!("[{}]:{}", addr.ip(), addr.port())
        };
        format!("{host} {alg} {data}\n")
    }

    fn matches(&self, other: &PublicKey) -> bool {
        self.0.key_data() == other.key_data()
    }
}

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostKey({})", self.fingerprint())
    }
}

/// Timeouts and pinning for a connection.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// The limit for one attempt: TCP connect, SSH handshake and authentication. Short, so that
    /// an attempt against a VM whose sshd is not up yet does not hang (QEMU's user networking
    /// accepts the TCP connection before the guest answers).
    pub attempt_timeout: Duration,
    /// Send a keepalive after this long without hearing from the server.
    pub keepalive_interval: Duration,
    /// Give the connection up after this many unanswered keepalives.
    pub keepalive_max: usize,
    /// Close the connection after this long without any traffic (a backstop; keepalive replies
    /// count as traffic).
    pub inactivity_timeout: Duration,
    /// How long to wait for the server's first bytes (its SSH banner) after the TCP connect,
    /// in [`wait_for_ssh`]. QEMU's user networking accepts the connection at once and then
    /// retries its SYN to a guest that is not up yet with growing gaps: a fresh attempt gets
    /// through sooner than waiting on that one. Grows by half after each miss, up to
    /// `attempt_timeout`, so a slow but live sshd still gets in.
    pub banner_timeout: Duration,
    /// First delay between attempts in [`wait_for_ssh`]; it grows by half each time.
    pub retry_initial: Duration,
    /// Largest delay between attempts in [`wait_for_ssh`].
    pub retry_max: Duration,
    /// The host key the server must present; `None` pins the first key seen.
    pub pinned_host_key: Option<HostKey>,
}

impl Default for SshOptions {
    fn default() -> SshOptions {
        SshOptions {
            attempt_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(15),
            keepalive_max: 4,
            inactivity_timeout: Duration::from_secs(300),
            banner_timeout: Duration::from_secs(3),
            retry_initial: Duration::from_secs(1),
            // Short: a guest that refuses now may listen in a second, and noticing late is
            // time every build pays (an attempt costs the guest one RST).
            retry_max: Duration::from_secs(2),
            pinned_host_key: None,
        }
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(u32),
    /// It was killed by this signal (e.g. `TERM`).
    Signal(String),
    /// The channel closed without an exit status.
    Unknown,
}

impl ExitStatus {
    /// Whether the command exited with code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }

    /// The exit code, if the command exited normally.
    pub fn code(&self) -> Option<u32> {
        match self {
            ExitStatus::Code(c) => Some(*c),
            _ => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
            ExitStatus::Unknown => f.write_str("no exit status"),
        }
    }
}

/// The last lines a failed command or tool wrote; the cause in the error chain of a failure, so
/// that the error renderer shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTail {
    /// The lines, oldest first.
    pub lines: Vec<String>,
}

impl fmt::Display for OutputTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lines.is_empty() {
            return f.write_str("It printed nothing");
        }
        writeln!(f, "Its last {} line(s) of output:", self.lines.len())?;
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for OutputTail {}

/// What to upload with [`Session::upload`].
#[derive(Debug, Clone, Copy)]
pub enum UploadSource<'a> {
    /// A file on the host, streamed.
    Path(&'a Path),
    /// Bytes in memory.
    Bytes(&'a [u8]),
}

/// An SSH failure.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The TCP connection failed (e.g. refused: nothing listens yet).
    #[error("Failed to connect to {addr}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server sent nothing within [`SshOptions::banner_timeout`] of the TCP connect.
    #[error("{addr} sent no SSH banner within {after:?}")]
    NoBanner {
        /// The address.
        addr: SocketAddr,
        /// The limit.
        after: Duration,
    },
    /// The connection closed before the server sent anything (QEMU's user networking does
    /// this when the guest refuses the port: sshd is not listening yet).
    #[error("{addr} closed the connection before sending an SSH banner")]
    ClosedBeforeBanner {
        /// The address.
        addr: SocketAddr,
    },
    /// One connection attempt took longer than [`SshOptions::attempt_timeout`].
    #[error("SSH handshake with {addr} did not finish within {after:?}")]
    AttemptTimeout {
        /// The address.
        addr: SocketAddr,
        /// The per-attempt limit.
        after: Duration,
    },
    /// The SSH protocol failed during the handshake.
    #[error("SSH handshake with {addr} failed")]
    Handshake {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: Box<russh::Error>,
    },
    /// The server presented a different host key than the one pinned earlier in this build.
    #[error("The host key of {addr} changed from {expected} to {found}")]
    HostKeyChanged {
        /// The address.
        addr: SocketAddr,
        /// The pinned key's fingerprint.
        expected: String,
        /// The presented key's fingerprint.
        found: String,
    },
    /// The server refused the key pair.
    #[error("{addr} refused the public key for user `{user}`")]
    AuthRejected {
        /// The address.
        addr: SocketAddr,
        /// The user.
        user: String,
    },
    /// SSH did not answer before the overall deadline of [`wait_for_ssh`].
    #[error("SSH on {addr} (user `{user}`) did not answer within {waited:?}")]
    Timeout {
        /// The address.
        addr: SocketAddr,
        /// The user.
        user: String,
        /// How long kib waited.
        waited: Duration,
        /// The error of the last attempt, if there was one.
        last_error: Option<String>,
    },
    /// Opening a channel or talking over it failed (e.g. the connection dropped).
    #[error("SSH channel to {addr} failed while running `{command}`")]
    Channel {
        /// The address.
        addr: SocketAddr,
        /// The command.
        command: String,
        /// The cause.
        #[source]
        source: Box<russh::Error>,
    },
    /// The server refused to start the command.
    #[error("{addr} refused to run `{command}`")]
    ExecRefused {
        /// The address.
        addr: SocketAddr,
        /// The command.
        command: String,
    },
    /// A command ended with a non-zero status.
    #[error("Command `{command}` failed with {status}")]
    CommandFailed {
        /// The command as the caller gave it.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// The last stderr lines.
        #[source]
        stderr: OutputTail,
    },
    /// Reading the local file to upload failed.
    #[error("Failed to read `{path}` for upload")]
    ReadLocal {
        /// The local file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Uploading a file failed on the remote side.
    #[error("Failed to upload to `{remote}`")]
    Upload {
        /// The remote path.
        remote: String,
        /// The cause.
        #[source]
        source: Box<SshError>,
    },
    /// The private key could not be encoded.
    #[error("Failed to encode the private key")]
    EncodeKey {
        /// The cause.
        #[source]
        source: russh::keys::ssh_key::Error,
    },
    /// The private key file could not be written.
    #[error("Failed to write the private key to `{path}`")]
    WriteKey {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Hint for SshError {
    /// A suggestion for the user, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            SshError::Timeout { last_error, .. } => Some(match last_error {
                Some(e) => format!(
                    "the last attempt failed with: {e}; check the serial console output: did the guest boot and start sshd, and did cloud-init install the SSH key?"
                ),
                None => "check the serial console output: did the guest boot and start sshd?".to_owned(),
            }),
            SshError::HostKeyChanged { .. } => Some(
                "another machine answers on this port, or the guest regenerated its host keys; kib refuses to continue".to_owned(),
            ),
            SshError::AuthRejected { .. } => Some(
                "cloud-init in the guest may not have installed the build key (check the `ssh_authorized_keys` of the seed and the user name)".to_owned(),
            ),
            SshError::CommandFailed { command, .. } if command.starts_with("sudo") => Some(
                "if the output says a password is required, the build user needs passwordless sudo (NOPASSWD)".to_owned(),
            ),
            SshError::Upload { source, .. } => source.hint(),
            _ => None,
        }
    }
}

/// Pins the first host key seen and refuses any other one.
struct PinningHandler {
    pinned: Option<HostKey>,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for PinningHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            russh::keys::PublicKeyOrCertificate::Certificate(cert) => {
                PublicKey::from(cert.public_key().clone())
            }
        };
        let accept = self.pinned.as_ref().is_none_or(|p| p.matches(&key));
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(key);
        }
        Ok(accept)
    }
}

/// An authenticated SSH connection to the VM, with its host key pinned.
pub struct Session {
    handle: client::Handle<PinningHandler>,
    addr: SocketAddr,
    user: String,
    host_key: HostKey,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("host_key", &self.host_key)
            .finish()
    }
}

fn client_config(opts: &SshOptions) -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: Some(opts.inactivity_timeout),
        keepalive_interval: Some(opts.keepalive_interval),
        keepalive_max: opts.keepalive_max,
        nodelay: true,
        ..client::Config::default()
    })
}

/// Connects once, authenticates with `key` and pins the host key (or checks it against
/// [`SshOptions::pinned_host_key`]). The whole attempt is bounded by
/// [`SshOptions::attempt_timeout`].
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    key: &KeyPair,
    opts: &SshOptions,
) -> Result<Session, SshError> {
    connect_within(addr, user, key, opts, opts.attempt_timeout).await
}

async fn connect_within(
    addr: SocketAddr,
    user: &str,
    key: &KeyPair,
    opts: &SshOptions,
    limit: Duration,
) -> Result<Session, SshError> {
    match tokio::time::timeout(limit, connect_inner(addr, user, key, opts)).await {
        Ok(r) => r,
        Err(_) => Err(SshError::AttemptTimeout { addr, after: limit }),
    }
}

async fn connect_inner(
    addr: SocketAddr,
    user: &str,
    key: &KeyPair,
    opts: &SshOptions,
) -> Result<Session, SshError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| SshError::Connect { addr, source })?;
    // Wait for the banner without consuming it (russh reads it next).
    let mut first = [0u8; 1];
    match tokio::time::timeout(opts.banner_timeout, stream.peek(&mut first)).await {
        Err(_) => {
            return Err(SshError::NoBanner {
                addr,
                after: opts.banner_timeout,
            });
        }
        Ok(Ok(0)) => return Err(SshError::ClosedBeforeBanner { addr }),
        Ok(Ok(_)) => {}
        Ok(Err(source)) => return Err(SshError::Connect { addr, source }),
    }
    let seen = Arc::new(Mutex::new(None));
    let handler = PinningHandler {
        pinned: opts.pinned_host_key.clone(),
        seen: Arc::clone(&seen),
    };
    let presented = || seen.lock().ok().and_then(|s| s.clone());
    let mut handle = match client::connect_stream(client_config(opts), stream, handler).await {
        Ok(h) => h,
        Err(source) => {
            if let (Some(pinned), Some(found)) = (&opts.pinned_host_key, presented())
                && !pinned.matches(&found)
            {
                return Err(SshError::HostKeyChanged {
                    addr,
                    expected: pinned.fingerprint(),
                    found: found.fingerprint(HashAlg::Sha256).to_string(),
                });
            }
            return Err(SshError::Handshake {
                addr,
                source: Box::new(source),
            });
        }
    };
    let Some(host_key) = presented().map(HostKey) else {
        // russh always checks the server key before the handshake completes.
        return Err(SshError::Handshake {
            addr,
            source: Box::new(russh::Error::UnknownKey),
        });
    };
    let auth = handle
        .authenticate_publickey(user, key.auth_key())
        .await
        .map_err(|source| SshError::Handshake {
            addr,
            source: Box::new(source),
        })?;
    if !auth.success() {
        return Err(SshError::AuthRejected {
            addr,
            user: user.to_owned(),
        });
    }
    debug!(%addr, user, host_key = %host_key.fingerprint(), "SSH session established");
    Ok(Session {
        handle,
        addr,
        user: user.to_owned(),
        host_key,
    })
}

/// Connects, retrying until `overall_timeout` has passed: the delay between attempts starts at
/// [`SshOptions::retry_initial`] and grows to [`SshOptions::retry_max`], and each attempt is
/// bounded by [`SshOptions::attempt_timeout`]. A changed host key fails at once.
pub async fn wait_for_ssh(
    addr: SocketAddr,
    user: &str,
    key: &KeyPair,
    opts: &SshOptions,
    overall_timeout: Duration,
) -> Result<Session, SshError> {
    let start = Instant::now();
    let deadline = start + overall_timeout;
    let mut delay = opts.retry_initial;
    let mut last_error: Option<String> = None;
    let mut attempts = 0u32;
    let mut opts = opts.clone();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        attempts += 1;
        let limit = opts.attempt_timeout.min(deadline - now);
        match connect_within(addr, user, key, &opts, limit).await {
            Ok(session) => {
                debug!(%addr, attempts, waited = ?start.elapsed(), "SSH is up");
                return Ok(session);
            }
            Err(e @ SshError::HostKeyChanged { .. }) => return Err(e),
            Err(e @ SshError::NoBanner { .. }) => {
                // Either the SYN is still on its way to a guest that is not up (retry at
                // once) or sshd is slow to answer (give it longer next time).
                debug!(%addr, attempts, error = %error_chain(&e), "no banner yet");
                last_error = Some(error_chain(&e));
                opts.banner_timeout = (opts.banner_timeout * 3 / 2).min(opts.attempt_timeout);
                continue;
            }
            Err(e) => {
                debug!(%addr, attempts, error = %error_chain(&e), "SSH not ready yet");
                last_error = Some(error_chain(&e));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 3 / 2).min(opts.retry_max);
    }
    Err(SshError::Timeout {
        addr,
        user: user.to_owned(),
        waited: start.elapsed(),
        last_error,
    })
}

use kib_manifest::error_chain;

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guard described in the module docs: `$1` runs in its own session and is killed when the
/// channel's stdin (fd 0, moved to fd 3) reaches end-of-file.
const GUARD_SCRIPT: &str = include_str!("../scripts/guard.sh");

/// Wraps `command` in the guard that kills it when the channel closes (see the module docs).
pub fn guarded_command(command: &str) -> String {
    format!(
        "sh -c {} kib-guard {}",
        shell_quote(GUARD_SCRIPT),
        shell_quote(command)
    )
}

/// `command` run by `sh` as root through `sudo -n` (never prompts), with the guard inside sudo
/// so that it can kill the command's root processes.
pub fn sudo_command(command: &str) -> String {
    format!("sudo -n {}", guarded_command(command))
}

/// Splits a byte stream into lines (`\n`, `\r\n`), lossy UTF-8; a line longer than 64 KiB is
/// passed on in pieces. The one line splitter for command output (remote over SSH, local
/// ansible).
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Adds `data` and passes on each line it completes.
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(&str)) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            emit(&String::from_utf8_lossy(line));
            start = end + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            let line = std::mem::take(&mut self.buf);
            emit(&String::from_utf8_lossy(&line));
        }
    }

    /// Passes on what is left after the last newline, if anything.
    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            emit(&String::from_utf8_lossy(line));
        }
    }
}

/// Keeps the last [`STDERR_TAIL_LINES`] lines (of a failed command's output, for its error).
#[derive(Debug, Default)]
pub struct Tail(VecDeque<String>);

impl Tail {
    /// Adds a line, dropping the oldest when full.
    pub fn push(&mut self, line: &str) {
        if self.0.len() == STDERR_TAIL_LINES {
            self.0.pop_front();
        }
        self.0.push_back(line.to_owned());
    }

    /// The kept lines, oldest first.
    pub fn into_output(self) -> OutputTail {
        OutputTail {
            lines: self.0.into(),
        }
    }
}

/// Closes the channel if `exec` is cancelled (its future dropped) before the command ended, so
/// that the guard kills the remote command.
struct CloseOnCancel {
    half: Option<ChannelWriteHalf<client::Msg>>,
    finished: AtomicBool,
}

impl Drop for CloseOnCancel {
    fn drop(&mut self) {
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        if let (Some(half), Ok(rt)) = (self.half.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = half.close().await;
            });
        }
    }
}

impl Session {
    /// The address this session is connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The user this session is logged in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The pinned host key.
    pub fn host_key(&self) -> &HostKey {
        &self.host_key
    }

    /// The SHA-256 fingerprint of the pinned host key (`SHA256:…`).
    pub fn host_key_fingerprint(&self) -> String {
        self.host_key.fingerprint()
    }

    /// Options for connecting again to the same server: `opts` with this session's host key
    /// pinned.
    pub fn pinned_options(&self, opts: &SshOptions) -> SshOptions {
        SshOptions {
            pinned_host_key: Some(self.host_key.clone()),
            ..opts.clone()
        }
    }

    /// Opens a new connection to the same server and user; the server must present the pinned
    /// host key, else [`SshError::HostKeyChanged`].
    pub async fn reconnect(&self, key: &KeyPair, opts: &SshOptions) -> Result<Session, SshError> {
        connect(self.addr, &self.user, key, &self.pinned_options(opts)).await
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Runs `command` (through the remote user's shell) and passes its output to `on_line`, line
    /// by line as it arrives. Without `stdin` the command reads `/dev/null` and is killed when
    /// the channel closes (see the module docs); with `stdin` it gets that input streamed,
    /// followed by end-of-file. Returns how the command ended: a non-zero status is not an error
    /// here (see [`Session::exec_checked`]).
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<ExitStatus, SshError> {
        let wire = match stdin {
            Some(_) => command.to_owned(),
            None => guarded_command(command),
        };
        self.run(command, wire, stdin, on_line).await
    }

    /// Runs `command` with `sh` as root through `sudo -n` (see [`sudo_command`]), streaming its
    /// output like [`Session::exec`]; stdin is `/dev/null`.
    pub async fn exec_sudo(
        &self,
        command: &str,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<ExitStatus, SshError> {
        self.run(
            &format!("sudo {command}"),
            sudo_command(command),
            None,
            on_line,
        )
        .await
    }

    /// Like [`Session::exec`], but a non-zero exit is [`SshError::CommandFailed`] carrying the
    /// exit status and the last [`STDERR_TAIL_LINES`] lines of stderr.
    pub async fn exec_checked(
        &self,
        command: &str,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<(), SshError> {
        let wire = match stdin {
            Some(_) => command.to_owned(),
            None => guarded_command(command),
        };
        self.run_checked(command, wire, stdin, on_line).await
    }

    /// Like [`Session::exec_sudo`], but a non-zero exit is [`SshError::CommandFailed`].
    pub async fn exec_sudo_checked(
        &self,
        command: &str,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<(), SshError> {
        self.run_checked(
            &format!("sudo {command}"),
            sudo_command(command),
            None,
            on_line,
        )
        .await
    }

    async fn run_checked(
        &self,
        shown: &str,
        wire: String,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<(), SshError> {
        let mut tail = Tail::default();
        let status = self
            .run(shown, wire, stdin, &mut |stream, line| {
                if stream == Stream::Stderr {
                    tail.push(line);
                }
                on_line(stream, line);
            })
            .await?;
        if status.success() {
            Ok(())
        } else {
            Err(SshError::CommandFailed {
                command: shown.to_owned(),
                status,
                stderr: tail.into_output(),
            })
        }
    }

    /// Sends `wire` to the server; `shown` names the command in errors and logs.
    async fn run(
        &self,
        shown: &str,
        wire: String,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<ExitStatus, SshError> {
        let command = shown;
        let channel_err = |source| SshError::Channel {
            addr: self.addr,
            command: command.to_owned(),
            source: Box::new(source),
        };
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(channel_err)?;
        channel.exec(true, wire).await.map_err(channel_err)?;
        let (mut read, write) = channel.split();
        let guard = CloseOnCancel {
            half: Some(write),
            finished: AtomicBool::new(false),
        };
        let Some(write) = guard.half.as_ref() else {
            unreachable!("just set")
        };

        let writer = async {
            if let Some(stdin) = stdin {
                write.data(stdin).await?;
                write.eof().await?;
            }
            Ok::<(), russh::Error>(())
        };
        tokio::pin!(writer);
        let mut writer_done = false;
        let mut out = LineSplitter::default();
        let mut err = LineSplitter::default();
        let mut status = ExitStatus::Unknown;
        loop {
            tokio::select! {
                r = &mut writer, if !writer_done => {
                    writer_done = true;
                    if let Err(e) = r {
                        // The command may have ended without reading all of its input; its
                        // status tells. Keep reading.
                        debug!(command, error = %e, "sending stdin stopped");
                    }
                }
                msg = read.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => out.push(&data, |l| on_line(Stream::Stdout, l)),
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => err.push(&data, |l| on_line(Stream::Stderr, l)),
                    Some(ChannelMsg::ExitStatus { exit_status }) => status = ExitStatus::Code(exit_status),
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => status = ExitStatus::Signal(format!("{signal_name:?}")),
                    Some(ChannelMsg::Failure) => {
                        guard.finished.store(true, Ordering::Relaxed);
                        return Err(SshError::ExecRefused { addr: self.addr, command: command.to_owned() });
                    }
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                }
            }
        }
        out.finish(|l| on_line(Stream::Stdout, l));
        err.finish(|l| on_line(Stream::Stderr, l));
        guard.finished.store(true, Ordering::Relaxed);
        if status == ExitStatus::Unknown && self.handle.is_closed() {
            return Err(channel_err(russh::Error::Disconnect));
        }
        debug!(command, %status, "remote command ended");
        Ok(status)
    }

    /// Uploads `source` to `remote` with `mode` (e.g. `0o644`), as root through `sudo -n` when
    /// `sudo` is set. The data is streamed over the channel (a file is never read whole into
    /// memory) into `remote.kib-upload`, whose size is checked before it is renamed to `remote`:
    /// an interrupted upload never leaves a truncated file at `remote`.
    pub async fn upload(
        &self,
        source: UploadSource<'_>,
        remote: &str,
        mode: u32,
        sudo: bool,
    ) -> Result<(), SshError> {
        let upload_err = |source| SshError::Upload {
            remote: remote.to_owned(),
            source: Box::new(source),
        };
        let mut file;
        let mut bytes;
        let (size, reader): (u64, &mut (dyn AsyncRead + Unpin + Send)) = match source {
            UploadSource::Path(path) => {
                let read_err = |source| SshError::ReadLocal {
                    path: path.to_owned(),
                    source,
                };
                file = tokio::fs::File::open(path).await.map_err(read_err)?;
                let size = file.metadata().await.map_err(read_err)?.len();
                (size, &mut file)
            }
            UploadSource::Bytes(b) => {
                bytes = b;
                (b.len() as u64, &mut bytes)
            }
        };
        let script = r#"set -eu
dest=$1; mode=$2; size=$3; tmp="$dest.kib-upload"
rm -f "$tmp"
install -m "$mode" /dev/stdin "$tmp"
got=$(wc -c <"$tmp")
if [ "$got" -ne "$size" ]; then rm -f "$tmp"; echo "kib: received $got of $size bytes" >&2; exit 1; fi
mv -f "$tmp" "$dest""#;
        let command = format!(
            "{}sh -c {} kib-upload {} {:04o} {size}",
            if sudo { "sudo -n " } else { "" },
            shell_quote(script),
            shell_quote(remote),
            mode & 0o7777
        );
        let mut lines = Vec::new();
        let status = self
            .exec(&command, Some(reader), &mut |_, l| lines.push(l.to_owned()))
            .await
            .map_err(upload_err)?;
        if !status.success() {
            let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
            return Err(upload_err(SshError::CommandFailed {
                command: format!(
                    "{}install -m {:04o} /dev/stdin {remote}",
                    if sudo { "sudo -n " } else { "" },
                    mode & 0o7777
                ),
                status,
                stderr: OutputTail {
                    lines: lines.split_off(start),
                },
            }));
        }
        debug!(remote, size, "uploaded");
        Ok(())
    }

    /// Closes the connection politely (a connection that is already gone is fine).
    pub async fn close(self) {
        let result = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
        if let Err(e) = result {
            debug!(addr = %self.addr, error = %e, "SSH disconnect: connection already gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pair_debug_redacts_the_private_key() {
        let key = KeyPair::generate();
        let pem = key
            .private
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        // No piece of the encoded private key appears either.
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!debug.contains(&body[..40]), "{debug}");
    }

    #[test]
    fn public_key_is_openssh_ed25519_with_comment() {
        let key = KeyPair::generate();
        let public = key.public_openssh();
        assert!(public.starts_with("ssh-ed25519 AAAA"), "{public}");
        assert!(public.ends_with(" kib-build"), "{public}");
        assert_ne!(
            public,
            KeyPair::generate().public_openssh(),
            "keys must be fresh"
        );
        assert!(key.fingerprint().starts_with("SHA256:"));
    }

    #[test]
    fn private_key_file_is_0600_openssh_and_round_trips() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate();
        let path = key.write_private_key(dir.path()).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let parsed = PrivateKey::from_openssh(&text).unwrap();
        assert_eq!(
            parsed.public_key().key_data(),
            key.private.public_key().key_data()
        );
    }

    #[test]
    fn shell_quote_handles_quotes() {
        assert_eq!(shell_quote("abc/def-1.2"), "abc/def-1.2");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn line_splitter_handles_split_chunks_and_crlf() {
        let mut s = LineSplitter::default();
        let mut lines = Vec::new();
        s.push(b"hel", |l| lines.push(l.to_owned()));
        s.push(b"lo\r\nwor", |l| lines.push(l.to_owned()));
        s.push(b"ld\n\nlast", |l| lines.push(l.to_owned()));
        s.finish(|l| lines.push(l.to_owned()));
        assert_eq!(lines, ["hello", "world", "", "last"]);
    }

    #[test]
    fn exit_status_display() {
        assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Signal("TERM".into()).success());
    }

    #[test]
    fn output_tail_display_lists_lines() {
        let t = OutputTail {
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(t.to_string(), "Its last 2 line(s) of output:\n  a\n  b");
    }
}
