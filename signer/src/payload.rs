//! What gets signed: cosign's Simple Signing payload (for `.sig`) and the in-toto statement
//! in a DSSE envelope (for `.att`), plus the names cosign gives things in the registry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Media type of a `.sig` layer: the Simple Signing JSON.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Media type of an `.att` layer: a DSSE envelope.
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// Layer annotation with the base64 signature (empty on `.att` layers: the envelope holds it).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Layer annotation on `.att` layers naming the statement's predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";
/// The `critical.type` of a cosign image signature.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";
/// DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The in-toto statement `_type` cosign writes for attestations.
pub const IN_TOTO_STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v0.1";

/// Whether `digest` is `sha256:` and 64 lowercase hex digits.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The tag cosign stores signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// The tag cosign stores attestations of `digest` under: `sha256-<hex>.att`.
pub fn attestation_tag(digest: &str) -> String {
    format!("{}.att", digest.replacen(':', "-", 1))
}

/// cosign's Simple Signing payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimpleSigning {
    /// The signed claims.
    pub critical: Critical,
    /// Unsigned-by-meaning extras (cosign `-a key=value`); `null` when there are none.
    pub optional: Option<BTreeMap<String, serde_json::Value>>,
}

/// The `critical` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Critical {
    /// Where the image lives.
    pub identity: Identity,
    /// Which manifest is signed.
    pub image: Image,
    /// Always [`SIGNATURE_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
}

/// `critical.identity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Identity {
    /// The repository, without tag or digest, as cosign writes it (`registry/repo`).
    pub docker_reference: String,
}

/// `critical.image`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Image {
    /// The signed manifest digest, `sha256:<hex>`.
    pub docker_manifest_digest: String,
}

impl SimpleSigning {
    /// The payload for `digest` in `repository` (`registry/repo`).
    pub fn new(repository: &str, digest: &str) -> Self {
        Self {
            critical: Critical {
                identity: Identity {
                    docker_reference: repository.to_owned(),
                },
                image: Image {
                    docker_manifest_digest: digest.to_owned(),
                },
                kind: SIGNATURE_TYPE.to_owned(),
            },
            optional: None,
        }
    }

    /// The exact bytes that are signed and stored (compact JSON, cosign's field order).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An in-toto statement (the `.att` payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// Always [`IN_TOTO_STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// The predicate's type URI (e.g. `https://spdx.dev/Document`).
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The attested artifact(s).
    pub subject: Vec<Subject>,
    /// The attestation itself (the SBOM).
    pub predicate: serde_json::Value,
}

/// One subject of a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// The repository (`registry/repo`).
    pub name: String,
    /// `{"sha256": "<hex>"}`.
    pub digest: BTreeMap<String, String>,
}

impl Statement {
    /// A statement about `digest` in `repository`.
    pub fn new(
        repository: &str,
        digest: &str,
        predicate_type: &str,
        predicate: serde_json::Value,
    ) -> Self {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        Self {
            statement_type: IN_TOTO_STATEMENT_TYPE.to_owned(),
            predicate_type: predicate_type.to_owned(),
            subject: vec![Subject {
                name: repository.to_owned(),
                digest: BTreeMap::from([("sha256".to_owned(), hex.to_owned())]),
            }],
            predicate,
        }
    }

    /// Whether one subject names `digest` (`sha256:<hex>`).
    pub fn names_digest(&self, digest: &str) -> bool {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.subject
            .iter()
            .any(|s| s.digest.get("sha256").is_some_and(|d| d == hex))
    }
}

/// A DSSE envelope as cosign stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// [`IN_TOTO_PAYLOAD_TYPE`].
    pub payload_type: String,
    /// The base64 statement.
    pub payload: String,
    /// The signatures over [`pae`] of the payload.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One DSSE signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// Key id (cosign writes an empty string for key-based signatures).
    #[serde(default)]
    pub keyid: String,
    /// The base64 ASN.1 DER signature.
    pub sig: String,
}

/// DSSE's pre-authentication encoding: what is actually signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// cosign's `--type` names for predicates, and the URIs they stand for.
pub const PREDICATE_TYPES: &[(&str, &str)] = &[
    ("spdxjson", "https://spdx.dev/Document"),
    ("spdx", "https://spdx.dev/Document"),
    ("cyclonedx", "https://cyclonedx.org/bom"),
    ("slsaprovenance", "https://slsa.dev/provenance/v0.2"),
    ("slsaprovenance1", "https://slsa.dev/provenance/v1"),
    ("vuln", "https://cosign.sigstore.dev/attestation/vuln/v1"),
    ("custom", "https://cosign.sigstore.dev/attestation/v1"),
];

/// The predicate type URI for a cosign `--type` name; a URI is returned as is.
pub fn predicate_type_uri(name: &str) -> Option<String> {
    if name.contains("://") {
        return Some(name.to_owned());
    }
    PREDICATE_TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, uri)| (*uri).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:a5f6ef4e3ba7bd8a2e9ed12b8e5c4f2d1e9ba9b60f5ea8bf3fd6fcbf1a53d1e6";

    #[test]
    fn simple_signing_is_cosigns_layout() {
        let p = SimpleSigning::new("127.0.0.1:5000/kib", DIGEST);
        let text = String::from_utf8(p.to_bytes()).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5000/kib"}},"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
        );
        let back: SimpleSigning = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn tags_and_digest_check() {
        assert!(is_sha256_digest(DIGEST));
        assert!(!is_sha256_digest("sha256:ABC"));
        assert_eq!(
            signature_tag(DIGEST),
            format!("sha256-{}.sig", &DIGEST[7..])
        );
        assert_eq!(
            attestation_tag(DIGEST),
            format!("sha256-{}.att", &DIGEST[7..])
        );
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // The example from the DSSE protocol description.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn predicate_types() {
        assert_eq!(
            predicate_type_uri("spdxjson").unwrap(),
            "https://spdx.dev/Document"
        );
        assert_eq!(
            predicate_type_uri("https://example.com/x").unwrap(),
            "https://example.com/x"
        );
        assert!(predicate_type_uri("nope").is_none());
    }
}
