//! The guest shell over SSH as the `capk` user: the builder's russh client
//! ([`kib_vm::ssh`]) behind the [`Shell`] trait the checks use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use kib_vm::ssh::{KeyPair, Session, SshError, SshOptions, Stream, wait_for_ssh};

use crate::context::{ExecOutput, Shell, ShellError};

/// The test's ephemeral SSH key pair, with its private half written to a file so that a person
/// can log in to a VM kept with `--keep`.
#[derive(Debug)]
pub struct GuestKey {
    pair: KeyPair,
    private: PathBuf,
}

impl GuestKey {
    /// Generates a key and writes its private half into `dir` (made private).
    pub fn generate(dir: &Path) -> Result<Self, std::io::Error> {
        use std::os::unix::fs::PermissionsExt as _;
        fs_err::create_dir_all(dir)?;
        fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let pair = KeyPair::generate();
        let private = pair.write_private_key(dir).map_err(std::io::Error::other)?;
        Ok(Self { pair, private })
    }

    /// The public key, one OpenSSH line.
    pub fn public_openssh(&self) -> String {
        self.pair.public_openssh()
    }

    /// The private key file (for `ssh -i`).
    pub fn private_key_path(&self) -> &Path {
        &self.private
    }
}

/// A logged-in shell.
#[derive(Debug)]
pub struct SshShell {
    session: Session,
}

impl SshShell {
    /// Runs `command` in the guest and collects its output.
    pub async fn exec(&self, command: &str) -> Result<ExecOutput, ShellError> {
        let out = Mutex::new((String::new(), String::new()));
        let mut on_line = |stream: Stream, line: &str| {
            let mut o = out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let buf = match stream {
                Stream::Stdout => &mut o.0,
                Stream::Stderr => &mut o.1,
            };
            buf.push_str(line);
            buf.push('\n');
        };
        let status = self
            .session
            .exec(command, None, &mut on_line)
            .await
            .map_err(|e| ShellError::Exec {
                command: command.to_owned(),
                source: Box::new(e),
            })?;
        let (stdout, stderr) = out
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(ExecOutput {
            status: status.code(),
            stdout,
            stderr,
        })
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.session.close().await;
    }
}

impl Shell for SshShell {
    fn exec<'a>(&'a self, command: &'a str) -> BoxFuture<'a, Result<ExecOutput, ShellError>> {
        Box::pin(SshShell::exec(self, command))
    }
}

/// Logs in as `user` with `key`, retrying until `timeout`.
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    key: &GuestKey,
    timeout: Duration,
) -> Result<SshShell, SshError> {
    let session = wait_for_ssh(addr, user, &key.pair, &SshOptions::default(), timeout).await?;
    Ok(SshShell { session })
}
