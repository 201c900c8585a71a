//! The build's ephemeral key pair and the host key a session pins.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{Rng as _, TryRng as _};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};

use super::SshError;

/// The comment on kib's ephemeral public keys.
pub const KEY_COMMENT: &str = "kib-build";

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

    /// The public half as a [`HostKey`] to pin ([`SshOptions::pinned_host_key`](super::SshOptions::pinned_host_key)), for a key
    /// generated as a guest's host key.
    pub fn as_host_key(&self) -> HostKey {
        HostKey(self.private.public_key().clone())
    }

    pub(super) fn auth_key(&self) -> PrivateKeyWithHashAlg {
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

/// A server's host key, as pinned by a [`Session`](super::Session).
#[derive(Clone, PartialEq, Eq)]
pub struct HostKey(pub(super) PublicKey);

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

    pub(super) fn matches(&self, other: &PublicKey) -> bool {
        self.0.key_data() == other.key_data()
    }
}

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostKey({})", self.fingerprint())
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
}
