//! The signer: cosign-compatible signatures and attestations for the images kib publishes,
//! and their verification.
//!
//! - [`keys`]: cosign's key files (`cosign.key` encrypted with scrypt + secretbox,
//!   `cosign.pub`), the [`keys::Password`] secret, `generate-key-pair`;
//! - [`payload`]: the Simple Signing payload, the in-toto statement and DSSE envelope, and
//!   cosign's tag names (`sha256-<hex>.sig` / `.att`);
//! - [`sign`]: [`sign::sign_image`] and [`sign::attest_image`] (append, never replace);
//! - [`verify`]: [`verify::verify_image`] and [`verify::verify_attestations`];
//! - [`store`]: the registry reads and writes they share.
//!
//! Format choices (see the crate README): cosign's *legacy* tag format (which cosign v3
//! still verifies, falling back from referrers), ECDSA P-256 / SHA-256 / DER, no
//! transparency log. An operator checks kib's signatures with
//! `cosign verify --key cosign.pub --insecure-ignore-tlog=true REGISTRY/REPO:TAG`
//! and its SBOM attestation with
//! `cosign verify-attestation --key cosign.pub --insecure-ignore-tlog=true --type spdxjson REGISTRY/REPO:TAG`.
//!
//! Registry clients and credentials come from the caller: one
//! [`kib_packager::registry::Transport`] from `kib_packager::registry::connect` serves push,
//! sign and verify, and the signer's blob uploads go through kib's own uploader
//! ([`kib_packager::upload::Uploader`]) like the publish ones.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use kib_packager::registry::{RegistryOptions, connect};
//! use kib_signer::{keys::{Password, PublicKey, SigningKey}, sign, verify};
//! let image: oci_client::Reference = "127.0.0.1:5000/kib:v1.37.1".parse()?;
//! let auth = oci_client::secrets::RegistryAuth::Anonymous;
//! let transport = connect(&image, &RegistryOptions::default(), &auth).await?;
//! let key = SigningKey::load("cosign.key".as_ref(), &Password::new(""))?;
//! sign::sign_image(&transport, &auth, &image, &key).await?;
//! let public = PublicKey::load("cosign.pub".as_ref())?;
//! let report = verify::verify_image(&transport.client, &auth, &image, &public).await?;
//! assert!(report.verified);
//! # Ok(()) }
//! ```

pub mod keys;
pub mod payload;
pub mod sign;
pub mod store;
pub mod verify;

pub use keys::{KeyError, Password, PublicKey, SigningKey};
pub use oci_client;
pub use sign::{SignError, Signed, attest_image, sign_image};
pub use verify::{
    Verification, VerifyError, resolve_digest, verify_attestations, verify_attestations_at,
    verify_image, verify_image_at,
};
