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
//!
//! The pieces: `keys.rs` (the ephemeral [`KeyPair`], the pinned [`HostKey`]), `session.rs`
//! ([`SshOptions`], [`connect`], [`wait_for_ssh`], the [`Session`]), `exec.rs` (commands and
//! their guard, uploads, output lines); [`SshError`] is here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kib_manifest::Hint;

mod exec;
mod keys;
mod session;

pub use exec::{
    ExitStatus, LineSplitter, OutputTail, STDERR_TAIL_LINES, Stream, Tail, UploadSource,
    guarded_command, shell_quote, sudo_command,
};
pub use keys::{HostKey, KEY_COMMENT, KeyPair};
pub use session::{Session, SshOptions, connect, wait_for_ssh};

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
