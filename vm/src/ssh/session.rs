//! Connecting: options, one attempt ([`connect`]), retry until the guest answers
//! ([`wait_for_ssh`]), and the [`Session`] with its host key pinned.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kib_manifest::error_chain;
use russh::Disconnect;
use russh::client;
use russh::keys::{HashAlg, PublicKey};
use tracing::debug;

use super::{HostKey, KeyPair, SshError};

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
    ///
    /// Zero: do not wait for the banner; the client speaks first (russh sends its
    /// identification at once). Needed behind passt ([`crate::Network::Outbound`],
    /// [`crate::Network::client_speaks_first`]), whose forwarded connections stay silent until
    /// the host side sends something.
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

/// Pins the first host key seen and refuses any other one.
pub(super) struct PinningHandler {
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
    pub(super) handle: client::Handle<PinningHandler>,
    pub(super) addr: SocketAddr,
    pub(super) user: String,
    pub(super) host_key: HostKey,
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
    // Wait for the banner without consuming it (russh reads it next); not behind passt.
    if !opts.banner_timeout.is_zero() {
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
