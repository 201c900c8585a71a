//! `kib verify`: checks an image's cosign signatures (and attestations) with a public key.
//!
//! The image reference is resolved to the digest the registry serves now; the signatures
//! are read from `sha256-<hex>.sig` of *that* digest. A signature counts only if it
//! verifies over the exact payload bytes stored, the payload is a cosign image signature,
//! and its `docker-manifest-digest` is that digest. The image is verified if at least one
//! signature counts (as with `cosign verify`); every other layer is reported with why it
//! did not count. `docker-reference` is reported but not enforced (cosign doesn't either:
//! images and their signatures may be copied to another registry).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kib_manifest::error_chain;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::Descriptor;
use serde::Serialize;
use serde_json::Value;

use crate::keys::PublicKey;
use crate::payload::{self, Envelope, SimpleSigning, Statement};
use crate::store::{self, StoreError};

/// Verification could not be carried out (the registry failed). A signature that does not
/// verify is not an error: it is a [`Verification`] with `verified == false`.
#[derive(Debug, thiserror::Error)]
#[error("Failed to verify `{image}`")]
pub struct VerifyError {
    /// The image as given.
    pub image: String,
    /// The cause.
    #[source]
    pub source: StoreError,
}

/// Why a layer did not count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Rejection {
    /// The layer has the wrong media type.
    #[error("layer media type is `{media_type}`, not `{expected}`")]
    MediaType {
        /// What it has.
        media_type: String,
        /// What it should have.
        expected: String,
    },
    /// No (or an empty) signature annotation.
    #[error("no `dev.cosignproject.cosign/signature` annotation")]
    NoSignature,
    /// The signature is not base64.
    #[error("the signature is not base64")]
    SignatureEncoding,
    /// The layer could not be read.
    #[error("the layer could not be read: {reason}")]
    Unreadable {
        /// What went wrong.
        reason: String,
    },
    /// The signature does not verify over the payload with the given key.
    #[error(
        "the signature does not verify with the given public key (wrong key, or the payload was changed)"
    )]
    BadSignature,
    /// The payload is not JSON of the expected shape.
    #[error("the payload is not a cosign payload: {reason}")]
    Payload {
        /// The parse error.
        reason: String,
    },
    /// The payload names another digest.
    #[error("the payload is for `{signed}`, not for the image's `{image}`")]
    WrongDigest {
        /// What the payload names.
        signed: String,
        /// The image digest.
        image: String,
    },
    /// The payload is not an image signature.
    #[error("the payload type is `{kind}`, not `cosign container image signature`")]
    WrongType {
        /// The type found.
        kind: String,
    },
    /// The attestation's predicate type is not the one asked for.
    #[error("the predicate type is `{found}`, not `{expected}`")]
    WrongPredicateType {
        /// What it has.
        found: String,
        /// What was asked for.
        expected: String,
    },
}

/// One layer of the `.sig` (or `.att`) manifest and what came of it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckedLayer {
    /// The layer digest.
    pub layer: String,
    /// Whether it counts.
    pub valid: bool,
    /// Why not, if it does not (machine-readable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Rejection>,
    /// Why not, as a sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The payload's `docker-reference` (signatures) or subject name (attestations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The predicate type (attestations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
    /// The verified predicate (attestations only, when valid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicate: Option<Value>,
}

/// The outcome of checking an image's signatures or attestations. This is also the
/// `--output json` document of `kib verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// The image as given.
    pub image: String,
    /// The digest the reference resolved to.
    pub digest: String,
    /// Where the signatures were looked for.
    pub signatures_at: String,
    /// At least one layer counts.
    pub verified: bool,
    /// Every layer found, in order.
    pub layers: Vec<CheckedLayer>,
}

impl Verification {
    /// A one-line reason when not verified.
    pub fn failure_reason(&self) -> Option<String> {
        if self.verified {
            return None;
        }
        if self.layers.is_empty() {
            return Some(format!(
                "No signatures found for `{}` at `{}`",
                self.digest, self.signatures_at
            ));
        }
        let reasons: Vec<String> = self
            .layers
            .iter()
            .filter_map(|l| {
                l.reason
                    .as_ref()
                    .map(|r| format!("{}: {r}", short(&l.layer)))
            })
            .collect();
        Some(format!(
            "None of the {} signature(s) of `{}` is valid: {}",
            self.layers.len(),
            self.digest,
            reasons.join("; ")
        ))
    }
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

fn reject(layer: &str, reason: Rejection) -> CheckedLayer {
    CheckedLayer {
        layer: layer.to_owned(),
        valid: false,
        message: Some(reason.to_string()),
        reason: Some(reason),
        identity: None,
        predicate_type: None,
        predicate: None,
    }
}

fn annotation<'a>(layer: &'a Descriptor, key: &str) -> Option<&'a str> {
    layer
        .annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Resolves `image` (a tag, or a digest it checks) to the digest of the manifest the registry
/// serves now. Resolve once and pass the digest to [`verify_image_at`] and
/// [`verify_attestations_at`]: a tag resolved twice may name two different images (a tag moved
/// in between, or a registry that answers differently), and the report would mix them.
pub async fn resolve_digest(
    client: &Client,
    auth: &RegistryAuth,
    image: &Reference,
) -> Result<String, VerifyError> {
    store::resolve(client, auth, image)
        .await
        .map_err(|source| VerifyError {
            image: image.whole(),
            source,
        })
}

/// Checks the cosign signatures of `image` with `key` (resolves it, then
/// [`verify_image_at`]).
pub async fn verify_image(
    client: &Client,
    auth: &RegistryAuth,
    image: &Reference,
    key: &PublicKey,
) -> Result<Verification, VerifyError> {
    let digest = resolve_digest(client, auth, image).await?;
    verify_image_at(client, auth, image, digest, key).await
}

/// Checks the cosign signatures of the manifest `digest` of `image`'s repository with `key`.
pub async fn verify_image_at(
    client: &Client,
    auth: &RegistryAuth,
    image: &Reference,
    digest: String,
    key: &PublicKey,
) -> Result<Verification, VerifyError> {
    let err = |source| VerifyError {
        image: image.whole(),
        source,
    };
    let at = store::with_tag(image, &payload::signature_tag(&digest));
    let layers = store::fetch_layers(client, auth, &at)
        .await
        .map_err(err)?
        .unwrap_or_default();
    let mut checked = Vec::with_capacity(layers.len());
    for layer in &layers {
        checked.push(check_signature_layer(client, &at, layer, key, &digest).await);
    }
    let verified = checked.iter().any(|c| c.valid);
    let out = Verification {
        image: image.whole(),
        digest,
        signatures_at: at.whole(),
        verified,
        layers: checked,
    };
    match out.failure_reason() {
        None => tracing::info!(image = %out.image, digest = %out.digest, "verified"),
        Some(reason) => tracing::warn!(image = %out.image, "{reason}"),
    }
    Ok(out)
}

async fn check_signature_layer(
    client: &Client,
    at: &Reference,
    layer: &Descriptor,
    key: &PublicKey,
    digest: &str,
) -> CheckedLayer {
    let id = layer.digest().to_string();
    let media_type = layer.media_type().to_string();
    if media_type != payload::SIMPLE_SIGNING_MEDIA_TYPE {
        return reject(
            &id,
            Rejection::MediaType {
                media_type,
                expected: payload::SIMPLE_SIGNING_MEDIA_TYPE.into(),
            },
        );
    }
    let signature = match annotation(layer, payload::SIGNATURE_ANNOTATION) {
        Some(s) if !s.is_empty() => s,
        _ => return reject(&id, Rejection::NoSignature),
    };
    let Ok(signature) = BASE64.decode(signature.trim()) else {
        return reject(&id, Rejection::SignatureEncoding);
    };
    let body = match store::pull_layer(client, at, layer).await {
        Ok(body) => body,
        Err(e) => {
            return reject(
                &id,
                Rejection::Unreadable {
                    reason: error_chain(&e),
                },
            );
        }
    };
    if !key.verifies(&body, &signature) {
        return reject(&id, Rejection::BadSignature);
    }
    let payload: SimpleSigning = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return reject(
                &id,
                Rejection::Payload {
                    reason: e.to_string(),
                },
            );
        }
    };
    if payload.critical.kind != payload::SIGNATURE_TYPE {
        return reject(
            &id,
            Rejection::WrongType {
                kind: payload.critical.kind,
            },
        );
    }
    if payload.critical.image.docker_manifest_digest != digest {
        return reject(
            &id,
            Rejection::WrongDigest {
                signed: payload.critical.image.docker_manifest_digest,
                image: digest.into(),
            },
        );
    }
    let identity = payload.critical.identity.docker_reference;
    if identity != store::repository_name(at) {
        tracing::info!(%identity, "the signature names another repository (allowed: images may be copied)");
    }
    CheckedLayer {
        layer: id,
        valid: true,
        reason: None,
        message: None,
        identity: Some(identity),
        predicate_type: None,
        predicate: None,
    }
}

/// Checks the cosign attestations of `image` with `key`; with `predicate_type`, only
/// attestations of that type count (as `cosign verify-attestation --type`).
pub async fn verify_attestations(
    client: &Client,
    auth: &RegistryAuth,
    image: &Reference,
    key: &PublicKey,
    predicate_type: Option<&str>,
) -> Result<Verification, VerifyError> {
    let digest = resolve_digest(client, auth, image).await?;
    verify_attestations_at(client, auth, image, digest, key, predicate_type).await
}

/// [`verify_attestations`] for the manifest `digest` of `image`'s repository.
pub async fn verify_attestations_at(
    client: &Client,
    auth: &RegistryAuth,
    image: &Reference,
    digest: String,
    key: &PublicKey,
    predicate_type: Option<&str>,
) -> Result<Verification, VerifyError> {
    let err = |source| VerifyError {
        image: image.whole(),
        source,
    };
    let at = store::with_tag(image, &payload::attestation_tag(&digest));
    let layers = store::fetch_layers(client, auth, &at)
        .await
        .map_err(err)?
        .unwrap_or_default();
    let mut checked = Vec::with_capacity(layers.len());
    for layer in &layers {
        checked
            .push(check_attestation_layer(client, &at, layer, key, &digest, predicate_type).await);
    }
    let verified = checked.iter().any(|c| c.valid);
    Ok(Verification {
        image: image.whole(),
        digest,
        signatures_at: at.whole(),
        verified,
        layers: checked,
    })
}

async fn check_attestation_layer(
    client: &Client,
    at: &Reference,
    layer: &Descriptor,
    key: &PublicKey,
    digest: &str,
    predicate_type: Option<&str>,
) -> CheckedLayer {
    let id = layer.digest().to_string();
    let media_type = layer.media_type().to_string();
    if media_type != payload::DSSE_MEDIA_TYPE {
        return reject(
            &id,
            Rejection::MediaType {
                media_type,
                expected: payload::DSSE_MEDIA_TYPE.into(),
            },
        );
    }
    let body = match store::pull_layer(client, at, layer).await {
        Ok(body) => body,
        Err(e) => {
            return reject(
                &id,
                Rejection::Unreadable {
                    reason: error_chain(&e),
                },
            );
        }
    };
    let envelope: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return reject(
                &id,
                Rejection::Payload {
                    reason: e.to_string(),
                },
            );
        }
    };
    let Ok(statement_bytes) = BASE64.decode(envelope.payload.trim()) else {
        return reject(
            &id,
            Rejection::Payload {
                reason: "the envelope payload is not base64".into(),
            },
        );
    };
    let pae = payload::pae(&envelope.payload_type, &statement_bytes);
    let signed = envelope
        .signatures
        .iter()
        .filter_map(|s| BASE64.decode(s.sig.trim()).ok())
        .any(|sig| key.verifies(&pae, &sig));
    if envelope.signatures.is_empty() {
        return reject(&id, Rejection::NoSignature);
    }
    if !signed {
        return reject(&id, Rejection::BadSignature);
    }
    if envelope.payload_type != payload::IN_TOTO_PAYLOAD_TYPE {
        return reject(
            &id,
            Rejection::WrongType {
                kind: envelope.payload_type,
            },
        );
    }
    let statement: Statement = match serde_json::from_slice(&statement_bytes) {
        Ok(s) => s,
        Err(e) => {
            return reject(
                &id,
                Rejection::Payload {
                    reason: e.to_string(),
                },
            );
        }
    };
    if !statement.names_digest(digest) {
        let signed = statement
            .subject
            .first()
            .and_then(|s| s.digest.get("sha256"))
            .map(|h| format!("sha256:{h}"))
            .unwrap_or_default();
        return reject(
            &id,
            Rejection::WrongDigest {
                signed,
                image: digest.into(),
            },
        );
    }
    if let Some(expected) = predicate_type
        && statement.predicate_type != expected
    {
        return reject(
            &id,
            Rejection::WrongPredicateType {
                found: statement.predicate_type,
                expected: expected.into(),
            },
        );
    }
    CheckedLayer {
        layer: id,
        valid: true,
        reason: None,
        message: None,
        identity: statement.subject.first().map(|s| s.name.clone()),
        predicate_type: Some(statement.predicate_type),
        predicate: Some(statement.predicate),
    }
}
