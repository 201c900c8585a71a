//! Keys in cosign's format.
//!
//! - The private key (`cosign.key`) is a PKCS#8 ECDSA P-256 key, encrypted with scrypt +
//!   NaCl secretbox and PEM-wrapped as `ENCRYPTED SIGSTORE PRIVATE KEY` (cosign's older
//!   label `ENCRYPTED COSIGN PRIVATE KEY` is read too). Keys made by
//!   `cosign generate-key-pair` are accepted.
//! - The public key (`cosign.pub`) is a PKIX `PUBLIC KEY` PEM.
//!
//! kib writes PEM with LF line endings (as cosign does). The scrypt cost kib writes is
//! sigstore-rs's, N=32768 (cosign writes 65536; both read either, the parameters are in the
//! file).
//!
//! The password comes from [`PASSWORD_ENV`] (`COSIGN_PASSWORD`, as for cosign) or from a
//! prompt the CLI draws; it lives in a [`Password`], which never formats.

use std::path::{Path, PathBuf};

use sigstore::crypto::signing_key::{SigStoreKeyPair, SigStoreSigner};
use sigstore::crypto::{CosignVerificationKey, Signature, SigningScheme};
use sigstore::errors::SigstoreError;
use zeroize::Zeroizing;

/// The environment variable with the private key's password (the one cosign reads).
pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

/// The only signing scheme kib uses: ECDSA P-256 with SHA-256, ASN.1 DER signatures.
const SCHEME: SigningScheme = SigningScheme::ECDSA_P256_SHA256_ASN1;

/// A private key's password. `Debug` and `Display` print `<redacted>`; the bytes are wiped
/// from memory on drop.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    /// Wraps a password.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The password from [`PASSWORD_ENV`], if that variable is set (it may be empty: cosign
    /// accepts keys with an empty password).
    pub fn from_env() -> Option<Self> {
        std::env::var(PASSWORD_ENV).ok().map(Self::new)
    }

    fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Working with a key failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read.
    #[error("Failed to read the key file `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file could not be written.
    #[error("Failed to write the key file `{}`", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `generate-key-pair` would overwrite a file.
    #[error("The key file `{}` already exists", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The private key could not be decrypted: wrong password, or not a cosign key.
    #[error("Failed to decrypt the private key `{}` (wrong password, or not a cosign key)", path.display())]
    Decrypt {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// The cause.
        #[source]
        source: SigstoreError,
    },
    /// The key is not an ECDSA P-256 key, the only kind kib signs with.
    #[error("The private key `{}` is not an ECDSA P-256 key", path.display())]
    NotP256 {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// The cause.
        #[source]
        source: SigstoreError,
    },
    /// The public key could not be parsed as an ECDSA P-256 PKIX PEM.
    #[error("Failed to parse the public key `{}` (expected a cosign ECDSA P-256 `PUBLIC KEY` PEM)", path.display())]
    ParsePublic {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// The cause.
        #[source]
        source: SigstoreError,
    },
    /// A new key could not be generated.
    #[error("Failed to generate an ECDSA P-256 key")]
    Generate(#[source] SigstoreError),
    /// The private key could not be encrypted or encoded.
    #[error("Failed to encrypt the private key")]
    Encrypt(#[source] SigstoreError),
    /// Signing failed.
    #[error("Failed to sign with the private key")]
    Sign(#[source] SigstoreError),
}

impl KeyError {
    /// A suggestion for errors with an obvious fix.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Decrypt { .. } => Some(format!(
                "check the password in `{PASSWORD_ENV}` (it may be empty, but must be set when there is no terminal)"
            )),
            Self::Exists { .. } => {
                Some("move the old key pair away, or pass `--force` to overwrite it".into())
            }
            Self::ParsePublic { .. } => {
                Some("pass the `.pub` file to `--key`, not the private key".into())
            }
            _ => None,
        }
    }
}

fn memory() -> PathBuf {
    PathBuf::from("<memory>")
}

/// The private key, decrypted. `Debug` prints `<redacted>`.
pub struct SigningKey {
    signer: SigStoreSigner,
    public: PublicKey,
    pair: SigStoreKeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("private", &"<redacted>")
            .field("public", &self.public)
            .finish()
    }
}

impl SigningKey {
    /// A new random ECDSA P-256 key.
    pub fn generate() -> Result<Self, KeyError> {
        let signer = SCHEME.create_signer().map_err(KeyError::Generate)?;
        let pair = signer.to_sigstore_keypair().map_err(KeyError::Generate)?;
        Self::from_pair(pair, &memory())
    }

    /// Decrypts a cosign encrypted private key PEM.
    pub fn from_encrypted_pem(pem: &[u8], password: &Password) -> Result<Self, KeyError> {
        Self::decrypt(pem, password, &memory())
    }

    /// Reads and decrypts a cosign private key file (`cosign.key`).
    pub fn load(path: &Path, password: &Password) -> Result<Self, KeyError> {
        let pem = Zeroizing::new(fs_err::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?);
        Self::decrypt(&pem, password, path)
    }

    fn decrypt(pem: &[u8], password: &Password, path: &Path) -> Result<Self, KeyError> {
        let pair =
            SigStoreKeyPair::from_encrypted_pem(pem, password.expose()).map_err(|source| {
                KeyError::Decrypt {
                    path: path.to_owned(),
                    source,
                }
            })?;
        Self::from_pair(pair, path)
    }

    fn from_pair(pair: SigStoreKeyPair, path: &Path) -> Result<Self, KeyError> {
        let signer = pair
            .to_sigstore_signer(&SCHEME)
            .map_err(|source| KeyError::NotP256 {
                path: path.to_owned(),
                source,
            })?;
        let pem = pair
            .public_key_to_pem()
            .map_err(|source| KeyError::NotP256 {
                path: path.to_owned(),
                source,
            })?;
        let public = PublicKey::from_pem(pem.as_bytes())?;
        Ok(Self {
            signer,
            public,
            pair,
        })
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The private key encrypted with `password`, as cosign's PEM (LF line endings).
    pub fn to_encrypted_pem(&self, password: &Password) -> Result<Zeroizing<String>, KeyError> {
        let pem = self
            .pair
            .private_key_to_encrypted_pem(password.expose())
            .map_err(KeyError::Encrypt)?;
        Ok(Zeroizing::new(pem.replace("\r\n", "\n")))
    }

    /// Signs `message`: ECDSA P-256 over its SHA-256, ASN.1 DER.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.signer.sign(message).map_err(KeyError::Sign)
    }
}

/// A public key (`cosign.pub`).
#[derive(Debug, Clone)]
pub struct PublicKey {
    pem: String,
    key: CosignVerificationKey,
}

impl PublicKey {
    /// Parses a PKIX `PUBLIC KEY` PEM with an ECDSA P-256 key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        Self::parse(pem, &memory())
    }

    /// Reads a public key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let pem = fs_err::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&pem, path)
    }

    fn parse(pem: &[u8], path: &Path) -> Result<Self, KeyError> {
        // `try_from_pem` parses the SPKI (`from_pem` would accept any PEM body unchecked).
        let key =
            CosignVerificationKey::try_from_pem(pem).map_err(|source| KeyError::ParsePublic {
                path: path.to_owned(),
                source,
            })?;
        if !matches!(key, CosignVerificationKey::ECDSA_P256_SHA256_ASN1(_)) {
            return Err(KeyError::ParsePublic {
                path: path.to_owned(),
                source: SigstoreError::PublicKeyUnsupportedAlgorithmError(
                    "not an ECDSA P-256 key".into(),
                ),
            });
        }
        let pem = String::from_utf8_lossy(pem).replace("\r\n", "\n");
        Ok(Self { pem, key })
    }

    /// The PEM text (LF line endings).
    pub fn to_pem(&self) -> &str {
        &self.pem
    }

    /// Whether `signature` (ASN.1 DER) is a valid signature of `message` by this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key
            .verify_signature(Signature::Raw(signature), message)
            .is_ok()
    }
}

/// The two files `generate-key-pair` writes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyPairFiles {
    /// The encrypted private key (mode 0600).
    pub private_key: PathBuf,
    /// The public key.
    pub public_key: PathBuf,
}

/// Writes a new key pair as `<prefix>.key` (encrypted with `password`, mode 0600) and
/// `<prefix>.pub`, like `cosign generate-key-pair --output-key-prefix <prefix>`. Refuses to
/// overwrite existing files unless `overwrite`.
pub fn generate_key_pair(
    prefix: &Path,
    password: &Password,
    overwrite: bool,
) -> Result<KeyPairFiles, KeyError> {
    let private_key = with_suffix(prefix, "key");
    let public_key = with_suffix(prefix, "pub");
    if !overwrite {
        for path in [&private_key, &public_key] {
            if path.exists() {
                return Err(KeyError::Exists { path: path.clone() });
            }
        }
    }
    let key = SigningKey::generate()?;
    let pem = key.to_encrypted_pem(password)?;
    write_file(&private_key, pem.as_bytes(), 0o600)?;
    write_file(&public_key, key.public_key().to_pem().as_bytes(), 0o644)?;
    tracing::info!(private = %private_key.display(), public = %public_key.display(), "wrote a new key pair");
    Ok(KeyPairFiles {
        private_key,
        public_key,
    })
}

fn with_suffix(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    use std::io::Write as _;

    use fs_err::os::unix::fs::OpenOptionsExt as _;
    let err = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = fs_err::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    // `mode` applies only to new files; make an overwritten key private too.
    fs_err::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_formats() {
        let p = Password::new("hunter2-secret");
        assert_eq!(format!("{p:?}"), "<redacted>");
        assert_eq!(format!("{p}"), "<redacted>");
        let key = SigningKey::generate().unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("PRIVATE"));
    }

    #[test]
    fn round_trip_encrypted_pem_with_lf() {
        let key = SigningKey::generate().unwrap();
        let password = Password::new("correct horse");
        let pem = key.to_encrypted_pem(&password).unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        assert!(!pem.contains('\r'));
        assert!(!key.public_key().to_pem().contains('\r'));
        let again = SigningKey::from_encrypted_pem(pem.as_bytes(), &password).unwrap();
        assert_eq!(again.public_key().to_pem(), key.public_key().to_pem());
        let sig = again.sign(b"hello").unwrap();
        assert!(key.public_key().verifies(b"hello", &sig));
        assert!(!key.public_key().verifies(b"hellO", &sig));
    }

    #[test]
    fn wrong_password_is_refused_with_a_hint() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_encrypted_pem(&Password::new("right")).unwrap();
        let err =
            SigningKey::from_encrypted_pem(pem.as_bytes(), &Password::new("wrong")).unwrap_err();
        assert!(matches!(err, KeyError::Decrypt { .. }), "{err:?}");
        assert!(err.hint().unwrap().contains(PASSWORD_ENV));
    }

    #[test]
    fn generate_key_pair_writes_private_file_and_refuses_overwrite() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("cosign");
        let files = generate_key_pair(&prefix, &Password::new("pw"), false).unwrap();
        let mode = fs_err::metadata(&files.private_key)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let public = PublicKey::load(&files.public_key).unwrap();
        let private = SigningKey::load(&files.private_key, &Password::new("pw")).unwrap();
        assert_eq!(public.to_pem(), private.public_key().to_pem());
        let err = generate_key_pair(&prefix, &Password::new("pw"), false).unwrap_err();
        assert!(matches!(err, KeyError::Exists { .. }));
    }
}
