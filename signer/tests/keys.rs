//! cosign key files made by cosign itself (see `tests/data/README.md`) are decrypted and
//! used; kib's own keys round-trip; the wrong password is refused.

use std::path::PathBuf;
use std::process::Command;

use kib_manifest::Hint as _;
use kib_signer::keys::{KeyError, Password, PublicKey, SigningKey};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Signs with the key and checks the signature with `openssl dgst` and the public key the
/// private key carries: an independent check of the DER signature.
fn sign_and_check_with_openssl(key: &SigningKey) {
    let dir = tempfile::tempdir().unwrap();
    let message = b"{\"critical\":{}}";
    let sig = key.sign(message);
    fs_err::write(dir.path().join("msg"), message).unwrap();
    fs_err::write(dir.path().join("sig.der"), &sig).unwrap();
    fs_err::write(dir.path().join("key.pub"), key.public_key().to_pem()).unwrap();
    assert!(key.public_key().verifies(message, &sig));
    let out = Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-verify",
            "key.pub",
            "-signature",
            "sig.der",
            "msg",
        ])
        .current_dir(dir.path())
        .output()
        .expect("openssl must be installed (scripts/setup-host.sh)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Verified OK");
}

#[test]
fn cosign_generated_key_is_decrypted_and_used() {
    let key = SigningKey::load(
        &data("cosign-generated-empty-password.key"),
        &Password::new(""),
    )
    .unwrap();
    assert!(
        key.public_key()
            .to_pem()
            .starts_with("-----BEGIN PUBLIC KEY-----\n")
    );
    sign_and_check_with_openssl(&key);
}

#[test]
fn cosign_generated_key_refuses_a_wrong_password() {
    let err = SigningKey::load(
        &data("cosign-generated-empty-password.key"),
        &Password::new("nope"),
    )
    .unwrap_err();
    assert!(matches!(err, KeyError::Decrypt { .. }), "{err:?}");
}

#[test]
fn a_private_key_is_not_a_public_key() {
    let err = PublicKey::load(&data("cosign-generated-empty-password.key")).unwrap_err();
    assert!(matches!(err, KeyError::ParsePublic { .. }), "{err:?}");
    assert!(err.hint().is_some());
}
