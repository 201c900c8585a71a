//! Reading and writing cosign's objects in a registry: resolving a reference to its digest,
//! reading the `.sig`/`.att` manifests and their layers, and appending layers to them.
//!
//! Appending is read-modify-write of one tag (as cosign does it): two signers racing on the
//! same digest can lose one signature; re-run the loser.

use kib_packager::registry::Transport;
use kib_packager::upload::Uploader;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::{Descriptor, ImageManifest, MediaType};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// The largest signature or attestation layer kib reads (an SBOM of a node image is well
/// under this). Bigger layers are rejected unread.
pub const MAX_LAYER_BYTES: i64 = 16 * 1024 * 1024;
/// The largest manifest kib accepts (containerd's limit). oci-client 0.18 reads a manifest
/// whole before kib sees it (`_pull_manifest_raw`: `res.bytes()`, src/client.rs), so this
/// refuses a huge manifest but does not bound the memory of that one read.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The most signature (or attestation) layers read from one `.sig`/`.att` manifest.
pub const MAX_LAYERS: usize = 1000;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The image reference could not be resolved to a manifest.
    #[error("Failed to resolve `{image}` to a manifest digest")]
    Resolve {
        /// The reference.
        image: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
    /// The registry served a manifest whose digest is not the one asked for.
    #[error("The registry served `{image}` with digest `{actual}`, not `{expected}`")]
    DigestMismatch {
        /// The reference.
        image: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what came back.
        actual: String,
    },
    /// A `.sig`/`.att` manifest could not be read.
    #[error("Failed to read the manifest `{reference}`")]
    FetchManifest {
        /// The reference.
        reference: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
    /// A `.sig`/`.att` manifest is not an OCI image manifest.
    #[error("The manifest `{reference}` is not an OCI image manifest")]
    ParseManifest {
        /// The reference.
        reference: String,
        /// The cause, if it was not JSON.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// A layer is larger than [`MAX_LAYER_BYTES`].
    #[error("The layer `{digest}` of `{reference}` is {size} bytes, more than a signature may be")]
    LayerTooLarge {
        /// The manifest.
        reference: String,
        /// The layer digest.
        digest: String,
        /// Its declared size.
        size: i64,
    },
    /// The registry sent more bytes than the layer's declared size.
    #[error(
        "The registry sent more than the declared {size} bytes of layer `{digest}` of `{reference}`"
    )]
    LayerOverrun {
        /// The manifest.
        reference: String,
        /// The layer digest.
        digest: String,
        /// Its declared size.
        size: i64,
    },
    /// A signature manifest has more layers than kib reads.
    #[error("`{reference}` has {count} layers, more than {MAX_LAYERS} signatures kib reads")]
    TooManyLayers {
        /// The manifest.
        reference: String,
        /// Its layer count.
        count: usize,
    },
    /// A manifest is larger than [`MAX_MANIFEST_BYTES`].
    #[error("The manifest of `{reference}` is {size} bytes, more than {MAX_MANIFEST_BYTES}")]
    ManifestTooLarge {
        /// The reference.
        reference: String,
        /// Its size.
        size: usize,
    },
    /// A layer could not be pulled.
    #[error("Failed to pull the layer `{digest}` of `{reference}`")]
    PullBlob {
        /// The manifest.
        reference: String,
        /// The layer digest.
        digest: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
    /// Authenticating for a push failed.
    #[error("Failed to authenticate to `{registry}` for pushing")]
    Auth {
        /// The registry.
        registry: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
    /// A blob could not be pushed.
    #[error("Failed to push the blob `{digest}` to `{repository}`")]
    PushBlob {
        /// The repository.
        repository: String,
        /// The blob digest.
        digest: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
    /// A manifest could not be pushed.
    #[error("Failed to push the manifest `{reference}`")]
    PushManifest {
        /// The reference.
        reference: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `registry/repository`, as cosign's `docker-reference` and the in-toto subject name.
pub(crate) fn repository_name(image: &Reference) -> String {
    format!("{}/{}", image.registry(), image.repository())
}

/// The reference for `tag` in `image`'s repository.
pub(crate) fn with_tag(image: &Reference, tag: &str) -> Reference {
    Reference::with_tag(
        image.registry().to_owned(),
        image.repository().to_owned(),
        tag.to_owned(),
    )
}

/// Resolves `image` (tag or digest) to the digest of the manifest the registry serves,
/// computed from its bytes. A reference with a digest must match it.
pub(crate) async fn resolve(
    client: &Client,
    auth: &RegistryAuth,
    image: &Reference,
) -> Result<String, StoreError> {
    let (body, _) = client
        .pull_manifest_raw(image, auth, MANIFEST_TYPES)
        .await
        .map_err(|source| StoreError::Resolve {
            image: image.whole(),
            source,
        })?;
    check_manifest_size(image, body.len())?;
    let actual = sha256(&body);
    if let Some(expected) = image.digest()
        && expected != actual
    {
        return Err(StoreError::DigestMismatch {
            image: image.whole(),
            expected: expected.to_owned(),
            actual,
        });
    }
    tracing::debug!(image = %image.whole(), digest = %actual, "resolved");
    Ok(actual)
}

fn check_manifest_size(reference: &Reference, size: usize) -> Result<(), StoreError> {
    if size > MAX_MANIFEST_BYTES {
        return Err(StoreError::ManifestTooLarge {
            reference: reference.whole(),
            size,
        });
    }
    Ok(())
}

fn is_not_found(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                oci_client::errors::OciErrorCode::ManifestUnknown
                    | oci_client::errors::OciErrorCode::NameUnknown
            )
        }),
        _ => false,
    }
}

/// The layer descriptors of the manifest at `reference`, or `None` if there is no such tag.
pub(crate) async fn fetch_layers(
    client: &Client,
    auth: &RegistryAuth,
    reference: &Reference,
) -> Result<Option<Vec<Descriptor>>, StoreError> {
    let body = match client
        .pull_manifest_raw(reference, auth, &[OCI_MANIFEST])
        .await
    {
        Ok((body, _)) => body,
        Err(err) if is_not_found(&err) => return Ok(None),
        Err(source) => {
            return Err(StoreError::FetchManifest {
                reference: reference.whole(),
                source,
            });
        }
    };
    check_manifest_size(reference, body.len())?;
    let manifest: ImageManifest =
        serde_json::from_slice(&body).map_err(|source| StoreError::ParseManifest {
            reference: reference.whole(),
            source: Some(source),
        })?;
    if manifest.layers().len() > MAX_LAYERS {
        return Err(StoreError::TooManyLayers {
            reference: reference.whole(),
            count: manifest.layers().len(),
        });
    }
    Ok(Some(manifest.layers().clone()))
}

/// Pulls one layer (at most [`MAX_LAYER_BYTES`]) and checks its digest.
pub(crate) async fn pull_layer(
    client: &Client,
    reference: &Reference,
    layer: &Descriptor,
) -> Result<Vec<u8>, StoreError> {
    // oci-client's own descriptor type, for `pull_blob`.
    let descriptor = oci_client::manifest::OciDescriptor {
        media_type: layer.media_type().to_string(),
        digest: layer.digest().to_string(),
        size: i64::try_from(layer.size()).unwrap_or(i64::MAX),
        urls: None,
        annotations: None,
        artifact_type: None,
    };
    if descriptor.size > MAX_LAYER_BYTES {
        return Err(StoreError::LayerTooLarge {
            reference: reference.whole(),
            digest: descriptor.digest,
            size: descriptor.size,
        });
    }
    // Read at most the declared size: a registry that declares a small layer and streams
    // more is cut off there (`pull_blob` would buffer whatever it sends).
    let limit = usize::try_from(descriptor.size).unwrap_or(0);
    let pull_err = |source| StoreError::PullBlob {
        reference: reference.whole(),
        digest: descriptor.digest.clone(),
        source,
    };
    let mut stream = client
        .pull_blob_stream(reference, &descriptor)
        .await
        .map_err(pull_err)?;
    let mut out = Vec::with_capacity(limit);
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        let chunk = chunk.map_err(|e| pull_err(OciDistributionError::IoError(e)))?;
        if out.len() + chunk.len() > limit {
            return Err(StoreError::LayerOverrun {
                reference: reference.whole(),
                digest: descriptor.digest.clone(),
                size: descriptor.size,
            });
        }
        out.extend_from_slice(&chunk);
    }
    // oci-client checks the digest too; a signature layer is small, so check it again here.
    if sha256(&out) != descriptor.digest {
        return Err(StoreError::DigestMismatch {
            image: format!("{}@{}", reference.whole(), descriptor.digest),
            expected: descriptor.digest,
            actual: sha256(&out),
        });
    }
    Ok(out)
}

/// One layer to add to a `.sig`/`.att` manifest.
pub(crate) struct NewLayer {
    pub(crate) media_type: &'static str,
    pub(crate) data: Vec<u8>,
    pub(crate) annotations: std::collections::HashMap<String, String>,
}

/// Adds `layer` to the manifest at `reference` (creating it if needed) and pushes it;
/// existing layers are kept, an identical layer is not added twice. Returns the new
/// manifest's digest.
pub(crate) async fn append_layer(
    transport: &Transport,
    auth: &RegistryAuth,
    reference: &Reference,
    layer: NewLayer,
) -> Result<String, StoreError> {
    let client = &transport.client;
    let uploader = Uploader::new(transport, auth, reference);
    let registry = reference.resolve_registry().to_owned();
    client.store_auth_if_needed(&registry, auth).await;
    client
        .auth(reference, auth, RegistryOperation::Push)
        .await
        .map_err(|source| StoreError::Auth {
            registry: registry.clone(),
            source,
        })?;

    let mut layers = fetch_layers(client, auth, reference)
        .await?
        .unwrap_or_default();
    let digest = sha256(&layer.data);
    let mut descriptor = Descriptor::new(
        MediaType::from(layer.media_type),
        layer.data.len() as u64,
        digest
            .parse::<oci_spec::image::Digest>()
            .expect("sha256() writes sha256:<64 hex>"),
    );
    descriptor.set_annotations(Some(layer.annotations));
    let existing = layers.len();
    if layers.contains(&descriptor) {
        tracing::info!(reference = %reference.whole(), "the same signature layer is already there");
    } else {
        push_blob(client, &uploader, reference, &layer.data, &digest).await?;
        layers.push(descriptor);
    }
    tracing::debug!(reference = %reference.whole(), existing, total = layers.len(), "writing layers");

    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest().to_string()).collect();
    let history: Vec<Value> = layers
        .iter()
        .map(|_| json!({"created": "0001-01-01T00:00:00Z"}))
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": history,
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    }))
    .unwrap_or_default();
    let config_digest = sha256(&config);
    let config_size = config.len();
    push_blob(client, &uploader, reference, &config, &config_digest).await?;

    let manifest: oci_client::manifest::OciImageManifest = serde_json::from_value(json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": config_size, "digest": config_digest},
        "layers": layers,
    }))
    .map_err(|source| StoreError::ParseManifest {
        reference: reference.whole(),
        source: Some(source),
    })?;
    client
        .push_manifest(reference, &manifest.into())
        .await
        .map_err(|source| StoreError::PushManifest {
            reference: reference.whole(),
            source,
        })?;
    resolve(client, auth, reference).await
}

/// Uploads a blob unless the repository has it. Through kib's [`Uploader`], not oci-client's
/// `push_blob`, which would send the credentials to any host a `Location` header names over
/// a client `--skip-tls-verify` leaves unverified for every host.
async fn push_blob(
    client: &Client,
    uploader: &Uploader,
    reference: &Reference,
    data: &[u8],
    digest: &str,
) -> Result<(), StoreError> {
    if client.blob_exists(reference, digest).await.unwrap_or(false) {
        return Ok(());
    }
    uploader
        .upload_blob(data, digest)
        .await
        .map_err(|source| StoreError::PushBlob {
            repository: repository_name(reference),
            digest: digest.to_owned(),
            source,
        })?;
    Ok(())
}
