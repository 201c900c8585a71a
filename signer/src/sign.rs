//! Signing (`.sig`) and attesting (`.att`) an image in cosign's legacy tag format.
//!
//! Both always act on the manifest digest: a tag is resolved first, and what is signed names
//! the digest. Existing signatures and attestations on the digest are kept: the new layer is
//! appended to the manifest at `sha256-<hex>.sig` / `.att`, as cosign does.
//!
//! Nothing is uploaded to Rekor (no transparency log), so cosign verifies these with
//! `--insecure-ignore-tlog=true`. Keyless signing (Fulcio + Rekor) is future work.
//!
//! Why kib writes cosign's format itself instead of calling sigstore-rs (0.15): its cosign
//! client can push a `.sig` manifest from layers the caller assembles
//! (`CosignCapabilities::push_signature`, `src/cosign/mod.rs`), but it has no writer for
//! `.att` DSSE attestations, it pushes through its own `oci_client::Client` (not the one
//! the packager configured with kib's credentials, retries and progress), and its `cosign`
//! feature compiles the keyless stack kib does not use (openidconnect, oauth2, rsa 0.9 with
//! RUSTSEC-2023-0071, ring beside aws-lc-rs: ~90 packages). The legacy format is small and
//! fixed by cosign's `specs/SIGNATURE_SPEC.md`: one OCI manifest per digest whose layers are
//! the signed payloads and whose annotations carry the signatures. The tests check what kib
//! writes with independent tools (skopeo, `openssl dgst -verify`), not with this code.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kib_packager::registry::Transport;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use serde_json::Value;

use crate::keys::SigningKey;
use crate::payload::{self, Envelope, EnvelopeSignature, SimpleSigning, Statement};
use crate::store::{self, NewLayer, StoreError};

/// Signing or attesting an image failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The registry part failed.
    #[error("Failed to sign `{image}`")]
    Registry {
        /// The image as given.
        image: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// The predicate is not a JSON document.
    #[error("The predicate for `{image}` is not JSON")]
    Predicate {
        /// The image as given.
        image: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// What was signed or attested, and where the signature went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Signed {
    /// The image as given.
    pub image: String,
    /// The manifest digest that was signed.
    pub digest: String,
    /// Where the signature or attestation now is (`registry/repo:sha256-<hex>.sig`).
    pub signature: String,
    /// The digest of the `.sig` / `.att` manifest after the push.
    pub signature_manifest_digest: String,
}

/// Signs `image` (a tag is resolved to its digest first) with `key`, appending the
/// signature to `sha256-<hex>.sig` in the same repository.
pub async fn sign_image(
    transport: &Transport,
    auth: &RegistryAuth,
    image: &Reference,
    key: &SigningKey,
) -> Result<Signed, SignError> {
    let client = &transport.client;
    let registry_err = |source| SignError::Registry {
        image: image.whole(),
        source,
    };
    let digest = store::resolve(client, auth, image)
        .await
        .map_err(registry_err)?;
    let payload = SimpleSigning::new(&store::repository_name(image), &digest).to_bytes();
    let signature = key.sign(&payload);
    let annotations = HashMap::from([(
        payload::SIGNATURE_ANNOTATION.to_owned(),
        BASE64.encode(&signature),
    )]);
    let target = store::with_tag(image, &payload::signature_tag(&digest));
    let layer = NewLayer {
        media_type: payload::SIMPLE_SIGNING_MEDIA_TYPE,
        data: payload,
        annotations,
    };
    let manifest_digest = store::append_layer(transport, auth, &target, layer)
        .await
        .map_err(registry_err)?;
    tracing::info!(image = %image.whole(), %digest, signature = %target.whole(), "signed");
    Ok(Signed {
        image: image.whole(),
        digest,
        signature: target.whole(),
        signature_manifest_digest: manifest_digest,
    })
}

/// Attests `image`: wraps `predicate` (e.g. an SPDX JSON SBOM) in an in-toto statement
/// about the image digest, signs it as a DSSE envelope and appends it to `sha256-<hex>.att`,
/// as `cosign attest --type <type>` does. `predicate_type` is the URI (see
/// [`payload::predicate_type_uri`]).
pub async fn attest_image(
    transport: &Transport,
    auth: &RegistryAuth,
    image: &Reference,
    key: &SigningKey,
    predicate_type: &str,
    predicate: &[u8],
) -> Result<Signed, SignError> {
    let client = &transport.client;
    let predicate: Value =
        serde_json::from_slice(predicate).map_err(|source| SignError::Predicate {
            image: image.whole(),
            source,
        })?;
    let registry_err = |source| SignError::Registry {
        image: image.whole(),
        source,
    };
    let digest = store::resolve(client, auth, image)
        .await
        .map_err(registry_err)?;
    let statement = Statement::new(
        &store::repository_name(image),
        &digest,
        predicate_type,
        predicate,
    );
    let statement = serde_json::to_vec(&statement).unwrap_or_default();
    let signature = key.sign(&payload::pae(payload::IN_TOTO_PAYLOAD_TYPE, &statement));
    let envelope = Envelope {
        payload_type: payload::IN_TOTO_PAYLOAD_TYPE.into(),
        payload: BASE64.encode(&statement),
        signatures: vec![EnvelopeSignature {
            keyid: String::new(),
            sig: BASE64.encode(&signature),
        }],
    };
    let annotations = HashMap::from([
        (payload::SIGNATURE_ANNOTATION.to_owned(), String::new()),
        (
            payload::PREDICATE_TYPE_ANNOTATION.to_owned(),
            predicate_type.to_owned(),
        ),
    ]);
    let target = store::with_tag(image, &payload::attestation_tag(&digest));
    let layer = NewLayer {
        media_type: payload::DSSE_MEDIA_TYPE,
        data: serde_json::to_vec(&envelope).unwrap_or_default(),
        annotations,
    };
    let manifest_digest = store::append_layer(transport, auth, &target, layer)
        .await
        .map_err(registry_err)?;
    tracing::info!(image = %image.whole(), %digest, attestation = %target.whole(), predicate_type, "attested");
    Ok(Signed {
        image: image.whole(),
        digest,
        signature: target.whole(),
        signature_manifest_digest: manifest_digest,
    })
}
