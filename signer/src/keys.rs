//! Keys in cosign's format.
//!
//! - The private key (`cosign.key`) is a PKCS#8 ECDSA P-256 key, encrypted with scrypt +
//!   NaCl secretbox and PEM-wrapped as `ENCRYPTED SIGSTORE PRIVATE KEY` (cosign's older
//!   label `ENCRYPTED COSIGN PRIVATE KEY` is read too). Keys made by
//!   `cosign generate-key-pair` are accepted.
//! - The public key (`cosign.pub`) is a PKIX `PUBLIC KEY` PEM.
//!
//! kib writes PEM with LF line endings (as cosign does) and scrypt N=65536 (cosign's cost;
//! the parameters are in the file, and kib reads cosign's N=32768 and N=65536).
//!
//! The format is small enough to implement with RustCrypto crates (p256, scrypt,
//! crypto_secretbox; the same ones russh already compiles) instead of sigstore-rs, whose
//! `cosign` feature would add ~90 packages for three functions: the keyless stack
//! (openidconnect, oauth2, rsa 0.9 with RUSTSEC-2023-0071, ring next to aws-lc-rs). Format:
//! cosign `pkg/cosign/keys.go` (`EncryptPrivateKey`) and go-securesystemslib
//! `encrypted/encrypted.go` (the JSON with `kdf`, `cipher`, `ciphertext`).
//!
//! The password comes from [`PASSWORD_ENV`] (`COSIGN_PASSWORD`, as for cosign) or from a
//! prompt the CLI draws; it lives in a [`Password`], which never formats.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use crypto_secretbox::aead::{Aead as _, KeyInit as _};
use kib_manifest::Hint;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::elliptic_curve::Generate as _;
use p256::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
    LineEnding,
};
use zeroize::Zeroizing;

/// The environment variable with the private key's password (the one cosign reads).
pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

/// The PEM label cosign writes for the encrypted private key.
const SIGSTORE_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// The label older cosign versions wrote; read, never written.
const COSIGN_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// scrypt cost as cosign writes it: N = 2^16, r = 8, p = 1.
const SCRYPT_LOG_N: u8 = 16;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;
/// The scrypt costs accepted when reading: cosign's (2^16) and sigstore-rs's (2^15), the two
/// sigstore-rs accepts; a key file cannot make kib spend more memory or time than that.
const SCRYPT_LOG_N_READ: [u8; 2] = [15, 16];
const KDF_SCRYPT: &str = "scrypt";
const CIPHER_SECRETBOX: &str = "nacl/secretbox";

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

/// Why a key file's contents could not be used (the source of a [`KeyError`]).
#[derive(Debug, thiserror::Error)]
pub enum KeyFormatError {
    /// Not PEM.
    #[error("The file is not PEM")]
    Pem(#[source] pem_rfc7468::Error),
    /// A PEM block with another label.
    #[error("The PEM label is `{0}`, expected `{SIGSTORE_LABEL}` or `{COSIGN_LABEL}`")]
    Label(String),
    /// The PEM body is not cosign's encrypted-key JSON.
    #[error("The PEM body is not cosign's encrypted key JSON")]
    Json(#[source] serde_json::Error),
    /// A KDF, cipher or parameter kib does not read.
    #[error("Unsupported encryption: {0}")]
    Unsupported(String),
    /// The secretbox did not open: the password is wrong, or the file is damaged.
    #[error("The ciphertext does not decrypt with this password")]
    WrongPassword,
    /// The decrypted bytes, or a public key, are not a PKCS#8 / PKIX ECDSA P-256 key.
    #[error("Not a PKCS#8 ECDSA P-256 key")]
    Pkcs8(#[source] p256::pkcs8::Error),
    /// A public key that is not a PKIX ECDSA P-256 key.
    #[error("Not a PKIX ECDSA P-256 public key")]
    Spki(#[source] p256::pkcs8::spki::Error),
    /// The system random number generator failed.
    #[error("The system random number generator failed")]
    Random,
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
        source: KeyFormatError,
    },
    /// The key is not an ECDSA P-256 key, the only kind kib signs with.
    #[error("The private key `{}` is not an ECDSA P-256 key", path.display())]
    NotP256 {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// The cause.
        #[source]
        source: KeyFormatError,
    },
    /// The public key could not be parsed as an ECDSA P-256 PKIX PEM.
    #[error("Failed to parse the public key `{}` (expected a cosign ECDSA P-256 `PUBLIC KEY` PEM)", path.display())]
    ParsePublic {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// The cause.
        #[source]
        source: KeyFormatError,
    },
    /// A new key could not be generated.
    #[error("Failed to generate an ECDSA P-256 key")]
    Generate(#[source] KeyFormatError),
    /// The private key could not be encrypted or encoded.
    #[error("Failed to encrypt the private key")]
    Encrypt(#[source] KeyFormatError),
}

impl Hint for KeyError {
    /// A suggestion for errors with an obvious fix.
    fn hint(&self) -> Option<String> {
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

/// cosign's encrypted private key: the JSON inside the PEM (go-securesystemslib
/// `encrypted.go`). Bytes are standard base64.
#[derive(serde::Serialize, serde::Deserialize)]
struct EncryptedKey {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

fn random<const N: usize>() -> Result<[u8; N], KeyFormatError> {
    <[u8; N]>::try_generate().map_err(|_| KeyFormatError::Random)
}

fn scrypt_key(
    password: &Password,
    salt: &[u8],
    log_n: u8,
) -> Result<Zeroizing<[u8; 32]>, KeyFormatError> {
    let params = scrypt::Params::new(log_n, SCRYPT_R, SCRYPT_P)
        .map_err(|e| KeyFormatError::Unsupported(format!("scrypt parameters: {e}")))?;
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password.expose(), salt, &params, key.as_mut())
        .map_err(|e| KeyFormatError::Unsupported(format!("scrypt: {e}")))?;
    Ok(key)
}

fn secretbox(key: &[u8; 32]) -> crypto_secretbox::XSalsa20Poly1305 {
    crypto_secretbox::XSalsa20Poly1305::new(&(*key).into())
}

/// Encrypts a PKCS#8 DER as cosign does: scrypt(password, 32-byte salt) -> NaCl secretbox
/// with a 24-byte nonce, the JSON PEM-wrapped as [`SIGSTORE_LABEL`].
fn encrypt(der: &[u8], password: &Password) -> Result<Zeroizing<String>, KeyFormatError> {
    let salt: [u8; 32] = random()?;
    let nonce: [u8; 24] = random()?;
    let key = scrypt_key(password, &salt, SCRYPT_LOG_N)?;
    let ciphertext = secretbox(&key)
        .encrypt(&nonce.into(), der)
        .map_err(|_| KeyFormatError::Unsupported("secretbox encryption failed".into()))?;
    let json = EncryptedKey {
        kdf: Kdf {
            name: KDF_SCRYPT.into(),
            params: ScryptParams {
                n: 1 << SCRYPT_LOG_N,
                r: SCRYPT_R,
                p: SCRYPT_P,
            },
            salt: BASE64.encode(salt),
        },
        cipher: Cipher {
            name: CIPHER_SECRETBOX.into(),
            nonce: BASE64.encode(nonce),
        },
        ciphertext: BASE64.encode(ciphertext),
    };
    let json = serde_json::to_vec(&json).map_err(KeyFormatError::Json)?;
    pem_rfc7468::encode_string(SIGSTORE_LABEL, pem_rfc7468::LineEnding::LF, &json)
        .map(Zeroizing::new)
        .map_err(KeyFormatError::Pem)
}

/// Opens cosign's encrypted private key PEM; returns the PKCS#8 DER.
fn decrypt(pem: &[u8], password: &Password) -> Result<Zeroizing<Vec<u8>>, KeyFormatError> {
    let (label, json) = pem_rfc7468::decode_vec(pem).map_err(KeyFormatError::Pem)?;
    if label != SIGSTORE_LABEL && label != COSIGN_LABEL {
        return Err(KeyFormatError::Label(label.to_owned()));
    }
    let data: EncryptedKey = serde_json::from_slice(&json).map_err(KeyFormatError::Json)?;
    if data.kdf.name != KDF_SCRYPT || data.cipher.name != CIPHER_SECRETBOX {
        return Err(KeyFormatError::Unsupported(format!(
            "kdf `{}`, cipher `{}` (cosign uses `{KDF_SCRYPT}` and `{CIPHER_SECRETBOX}`)",
            data.kdf.name, data.cipher.name
        )));
    }
    let p = &data.kdf.params;
    let log_n = SCRYPT_LOG_N_READ
        .into_iter()
        .find(|&l| p.n == 1 << l)
        .filter(|_| p.r == SCRYPT_R && p.p == SCRYPT_P)
        .ok_or_else(|| {
            KeyFormatError::Unsupported(format!("scrypt N={} r={} p={}", p.n, p.r, p.p))
        })?;
    let b64 = |what: &str, s: &str| {
        BASE64
            .decode(s)
            .map_err(|e| KeyFormatError::Unsupported(format!("{what} is not base64: {e}")))
    };
    let salt = b64("the salt", &data.kdf.salt)?;
    let nonce: [u8; 24] = b64("the nonce", &data.cipher.nonce)?
        .try_into()
        .map_err(|_| KeyFormatError::Unsupported("the nonce is not 24 bytes".into()))?;
    let ciphertext = b64("the ciphertext", &data.ciphertext)?;
    let key = scrypt_key(password, &salt, log_n)?;
    secretbox(&key)
        .decrypt(&nonce.into(), ciphertext.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| KeyFormatError::WrongPassword)
}

/// The private key, decrypted. `Debug` prints `<redacted>`.
pub struct SigningKey {
    key: p256::ecdsa::SigningKey,
    public: PublicKey,
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
        let key = p256::ecdsa::SigningKey::try_generate()
            .map_err(|_| KeyError::Generate(KeyFormatError::Random))?;
        Self::from_key(key, &memory())
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
        let der = decrypt(pem, password).map_err(|source| KeyError::Decrypt {
            path: path.to_owned(),
            source,
        })?;
        let key =
            p256::ecdsa::SigningKey::from_pkcs8_der(&der).map_err(|source| KeyError::NotP256 {
                path: path.to_owned(),
                source: KeyFormatError::Pkcs8(source),
            })?;
        Self::from_key(key, path)
    }

    fn from_key(key: p256::ecdsa::SigningKey, path: &Path) -> Result<Self, KeyError> {
        let verifying = *key.verifying_key();
        let pem = verifying
            .to_public_key_pem(LineEnding::LF)
            .map_err(|source| KeyError::NotP256 {
                path: path.to_owned(),
                source: KeyFormatError::Spki(source),
            })?;
        Ok(Self {
            key,
            public: PublicKey {
                pem,
                key: verifying,
            },
        })
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The private key encrypted with `password`, as cosign's PEM (LF line endings).
    pub fn to_encrypted_pem(&self, password: &Password) -> Result<Zeroizing<String>, KeyError> {
        let der = self
            .key
            .to_pkcs8_der()
            .map_err(|e| KeyError::Encrypt(KeyFormatError::Pkcs8(e)))?;
        encrypt(der.as_bytes(), password).map_err(KeyError::Encrypt)
    }

    /// Signs `message`: ECDSA P-256 over its SHA-256, ASN.1 DER (RFC 6979 nonces).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let signature: p256::ecdsa::DerSignature = self.key.sign(message);
        signature.as_bytes().to_vec()
    }
}

/// A public key (`cosign.pub`).
#[derive(Debug, Clone)]
pub struct PublicKey {
    pem: String,
    key: p256::ecdsa::VerifyingKey,
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
        let err = |source| KeyError::ParsePublic {
            path: path.to_owned(),
            source,
        };
        let text = std::str::from_utf8(pem)
            .map_err(|_| err(KeyFormatError::Pem(pem_rfc7468::Error::CharacterEncoding)))?;
        // The SPKI is parsed and its algorithm checked (id-ecPublicKey, prime256v1).
        let key = p256::ecdsa::VerifyingKey::from_public_key_pem(text)
            .map_err(|e| err(KeyFormatError::Spki(e)))?;
        let pem = text.replace("\r\n", "\n");
        Ok(Self { pem, key })
    }

    /// The PEM text (LF line endings).
    pub fn to_pem(&self) -> &str {
        &self.pem
    }

    /// Whether `signature` (ASN.1 DER) is a valid signature of `message` by this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        p256::ecdsa::DerSignature::from_bytes(signature)
            .is_ok_and(|sig| self.key.verify(message, &sig).is_ok())
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
            // `symlink_metadata`: a dangling symlink is an existing file too (it would
            // redirect the private key elsewhere).
            if fs_err::symlink_metadata(path).is_ok() {
                return Err(KeyError::Exists { path: path.clone() });
            }
        }
    }
    let key = SigningKey::generate()?;
    let pem = key.to_encrypted_pem(password)?;
    write_file(&private_key, pem.as_bytes(), 0o600, overwrite)?;
    write_file(
        &public_key,
        key.public_key().to_pem().as_bytes(),
        0o644,
        overwrite,
    )?;
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

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, created 0600
/// (so the private key is never readable by others, not even for a moment), given `mode`,
/// synced, then renamed over `path` (with `overwrite`) or linked to it only if `path` does not
/// exist (otherwise: no clobbering, and a symlink planted at `path` is never followed).
fn write_file(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> Result<(), KeyError> {
    use std::io::Write as _;

    let err = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".kib-key.")
        .suffix(".partial")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(err)?;
    temp.write_all(bytes).map_err(err)?;
    temp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(err)?;
    temp.as_file().sync_all().map_err(err)?;
    let persisted = if overwrite {
        temp.persist(path)
    } else {
        temp.persist_noclobber(path)
    };
    match persisted {
        Ok(_) => Ok(()),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Err(KeyError::Exists {
            path: path.to_owned(),
        }),
        Err(e) => Err(err(e.error)),
    }
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
        let sig = again.sign(b"hello");
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

    /// Issue #16: a symlink planted at `<prefix>.key` (dangling, so `exists()` is false) made
    /// kib write the private key wherever it pointed; an overwritten world-readable key file
    /// held the new key before its mode was changed. Neither happens: no clobbering without
    /// `--force`, and a forced write replaces the file by a rename, mode 0600 from the start.
    #[test]
    fn key_files_are_never_written_through_a_symlink_and_are_private_at_once() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("cosign");
        let elsewhere = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("cosign.key")).unwrap();
        let err = generate_key_pair(&prefix, &Password::new("pw"), false).unwrap_err();
        assert!(matches!(err, KeyError::Exists { .. }), "{err:?}");
        assert!(!elsewhere.exists(), "the key went through the symlink");

        // --force replaces the symlink itself, never its target.
        let files = generate_key_pair(&prefix, &Password::new("pw"), true).unwrap();
        assert!(!elsewhere.exists(), "the key went through the symlink");
        let meta = fs_err::symlink_metadata(&files.private_key).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        // An existing world-readable key is replaced, not rewritten in place.
        fs_err::set_permissions(&files.private_key, std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let before = fs_err::metadata(&files.private_key).unwrap();
        generate_key_pair(&prefix, &Password::new("pw"), true).unwrap();
        let after = fs_err::metadata(&files.private_key).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_ne!(before.ino(), after.ino(), "a new file, renamed into place");
        assert_eq!(after.permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = fs_err::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty());
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
