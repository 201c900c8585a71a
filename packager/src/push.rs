//! `kib publish`: the streaming push of a containerDisk to an OCI registry.
//!
//! The order makes a failure harmless: the immutable tag is checked first (it must be absent or
//! already point at the same image), then blobs (each skipped if a HEAD finds it), then the
//! manifest *by digest*, then the immutable tag, then the moving tags. Until the last step no
//! tag points anywhere new, so a failure never leaves a tag on a partial image.
//!
//! The layer is produced twice from the qcow2, never held in memory: a first pass computes its
//! digests (the manifest needs them before the upload), a second pass streams the same bytes
//! into one monolithic PUT (oci-client's `push_blob_stream` with `use_monolithic_push`). Reading
//! the file again from the page cache costs less than staging a compressed copy on disk (see
//! `packager/README.md`). A transient error (connection, 408/429/5xx) restarts the upload
//! session from scratch and streams again; the registry checks the digest, so a retried upload
//! can never store a corrupt blob. Permanent errors (401/403/404, bad names) stop at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use oci_client::errors::OciDistributionError;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::sync::mpsc;

use crate::image::{ImageMetadata, MANIFEST_MEDIA_TYPE, PreparedImage, prepare};
use crate::layer::{LayerDigests, LayerError, LayerSpec, write_layer};
use crate::registry::{
    self, AuthError, RegistryOptions, http_status, is_transient, is_unreachable,
};
use crate::reporter::{BlobKind, BlobOutcome, Phase, Reporter};
use crate::tags::{TagError, Tags, is_valid_tag};

/// How often and how patiently transient registry errors are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per operation, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each further failure.
    pub initial_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        }
    }
}

/// What to publish and where.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The repository, e.g. `registry.example/kib` (a tag or digest on it is ignored).
    pub repository: Reference,
    /// The qcow2 and how to wrap it.
    pub layer: LayerSpec,
    /// Labels and annotations.
    pub metadata: ImageMetadata,
    /// The tags to set.
    pub tags: Tags,
    /// Registry access.
    pub options: RegistryOptions,
    /// Retries of transient errors.
    pub retry: RetryPolicy,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// `registry/repository@sha256:<hex>`.
    pub reference: String,
    /// Every tag now pointing at the image, immutable first.
    pub tags: Vec<String>,
    /// Blobs sent.
    pub uploaded: Vec<String>,
    /// Blobs the registry already had.
    pub skipped: Vec<String>,
    /// Bytes of blob data sent (retried bytes counted once per attempt).
    pub bytes_sent: u64,
    /// The layer's digests.
    pub layer: LayerDigests,
}

/// Publishing failed. Nothing was tagged unless the variant says so.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A tag is not valid.
    #[error("Invalid tag for `{repository}`")]
    Tag {
        /// The repository.
        repository: String,
        /// The cause.
        #[source]
        source: TagError,
    },
    /// No credentials could be found.
    #[error("Failed to find credentials for `{registry}`")]
    Auth {
        /// The registry.
        registry: String,
        /// The cause.
        #[source]
        source: AuthError,
    },
    /// The registry could not be reached or refused the login.
    #[error("Failed to connect to the registry `{registry}`")]
    Connect {
        /// The registry.
        registry: String,
        /// Whether HTTP (not HTTPS) was used.
        http: bool,
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
    /// The layer could not be produced.
    #[error("Failed to produce the layer")]
    Layer {
        /// The cause.
        #[source]
        source: LayerError,
    },
    /// The disk changed between the hash pass and the upload.
    #[error("The layer of `{}` came out as `{found}` on upload, but `{expected}` when hashed: the file changed while publishing", path.display())]
    DiskChanged {
        /// The disk image.
        path: std::path::PathBuf,
        /// The digest of the hash pass.
        expected: String,
        /// The digest of the upload pass.
        found: String,
    },
    /// Checking the immutable tag failed.
    #[error("Failed to check whether `{reference}` exists")]
    TagCheck {
        /// The tag reference.
        reference: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
    /// The immutable tag already points at another image.
    #[error(
        "The immutable tag `{reference}` already points at `{existing}`, not at this image `{new}`"
    )]
    TagExists {
        /// The tag reference.
        reference: String,
        /// Its current digest.
        existing: String,
        /// The digest being published.
        new: String,
    },
    /// Asking whether a blob exists failed.
    #[error("Failed to check for blob `{digest}` in `{repository}`")]
    BlobCheck {
        /// The blob.
        digest: String,
        /// The repository.
        repository: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
    /// A blob upload failed.
    #[error("Failed to upload blob `{digest}` to `{repository}`")]
    BlobUpload {
        /// The blob.
        digest: String,
        /// The repository.
        repository: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
    /// The manifest upload failed (no tag was set).
    #[error("Failed to upload the manifest `{digest}` to `{repository}`")]
    Manifest {
        /// The manifest digest.
        digest: String,
        /// The repository.
        repository: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
    /// Setting a tag failed; `done` lists the tags already set (the image itself is complete).
    #[error("Failed to set the tag `{reference}` (already set: {done:?})")]
    SetTag {
        /// The tag reference.
        reference: String,
        /// Tags already pointing at the new image.
        done: Vec<String>,
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
    /// A worker thread panicked.
    #[error("A packaging task failed")]
    Task {
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl PublishError {
    /// The registry error inside, if any.
    fn registry_error(&self) -> Option<&OciDistributionError> {
        match self {
            PublishError::Connect { source, .. }
            | PublishError::TagCheck { source, .. }
            | PublishError::BlobCheck { source, .. }
            | PublishError::BlobUpload { source, .. }
            | PublishError::Manifest { source, .. }
            | PublishError::SetTag { source, .. } => Some(source),
            _ => None,
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            PublishError::Tag { source, .. } => return source.hint(),
            PublishError::Auth { source, .. } => return source.hint(),
            PublishError::TagExists { .. } => {
                return Some(
                    "immutable tags never move: tag a new release in git (`git tag`), or choose another `--tag-immutable`"
                        .into(),
                );
            }
            PublishError::DiskChanged { .. } => {
                return Some("do not modify the qcow2 while it is being published".into());
            }
            _ => {}
        }
        let err = self.registry_error()?;
        if is_unreachable(err) {
            let http = matches!(self, PublishError::Connect { http: true, .. });
            return Some(if http {
                "is the registry running and listening at that address?".into()
            } else {
                "is the registry running at that address? A plain-HTTP registry needs `--insecure`"
                    .into()
            });
        }
        match http_status(err) {
            Some(401) => Some(format!(
                "check the credentials: `--username` with `--password-stdin`, `{}`/`{}`, or `docker login`",
                registry::ENV_USERNAME,
                registry::ENV_PASSWORD
            )),
            Some(403) => Some(
                "these credentials may not push to this repository: ask for push access".into(),
            ),
            Some(404) => {
                Some("the repository does not exist or its name is wrong: check `--image`".into())
            }
            Some(400) => Some(
                "the registry rejected the request: check the repository name in `--image`".into(),
            ),
            _ => None,
        }
    }
}

/// The layer's digests from a first streaming pass over the disk (nothing is sent).
pub async fn hash_layer(
    spec: &LayerSpec,
    reporter: Arc<dyn Reporter>,
) -> Result<LayerDigests, PublishError> {
    let spec = spec.clone();
    let size = fs_err::metadata(&spec.disk).map(|m| m.len()).unwrap_or(0);
    tokio::task::spawn_blocking(move || {
        reporter.on_blob_start(BlobKind::Layer, Phase::Hash, None, size);
        let d = write_layer(&spec, std::io::sink(), &mut |n| reporter.on_bytes(n))?;
        reporter.on_blob_done(BlobKind::Layer, &d.digest, BlobOutcome::Done);
        Ok(d)
    })
    .await
    .map_err(|source| PublishError::Task { source })?
    .map_err(|source| PublishError::Layer { source })
}

/// Publishes the image. See the module docs for the order of operations.
pub async fn publish(
    req: &PublishRequest,
    reporter: Arc<dyn Reporter>,
) -> Result<PublishOutcome, PublishError> {
    let repo = &req.repository;
    let repository = format!("{}/{}", repo.registry(), repo.repository());
    for tag in req.tags.all() {
        if !is_valid_tag(&tag) {
            return Err(PublishError::Tag {
                repository,
                source: TagError::Invalid { tag },
            });
        }
    }
    let registry_name = repo.resolve_registry().to_owned();
    let auth = registry::auth(repo, &req.options).map_err(|source| PublishError::Auth {
        registry: registry_name.clone(),
        source,
    })?;
    let client = registry::client(repo, &req.options);
    let http = registry::uses_http(repo, &req.options);
    let retry = Retry {
        policy: req.retry,
        reporter: reporter.as_ref(),
    };
    let tag_ref = |tag: &str| {
        Reference::with_tag(
            repo.registry().to_owned(),
            repo.repository().to_owned(),
            tag.to_owned(),
        )
    };

    let immutable_ref = tag_ref(&req.tags.immutable);
    retry
        .run("connect", || {
            client.auth(&immutable_ref, &auth, RegistryOperation::Push)
        })
        .await
        .map_err(|source| PublishError::Connect {
            registry: registry_name.clone(),
            http,
            source,
        })?;

    let layer = hash_layer(&req.layer, reporter.clone()).await?;
    let image = prepare(layer, req.layer.compression, &req.metadata);
    let digest_ref = Reference::with_digest(
        repo.registry().to_owned(),
        repo.repository().to_owned(),
        image.manifest_digest.clone(),
    );

    // 1. The immutable tag must be new, or already this very image.
    let existing = retry.run("check tag", || async {
        match client.fetch_manifest_digest(&immutable_ref, &auth).await {
            Ok(d) => Ok(Some(d)),
            Err(e) if http_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    });
    match existing.await.map_err(|source| PublishError::TagCheck {
        reference: immutable_ref.whole(),
        source,
    })? {
        Some(d) if d != image.manifest_digest => {
            return Err(PublishError::TagExists {
                reference: immutable_ref.whole(),
                existing: d,
                new: image.manifest_digest,
            });
        }
        _ => {}
    }

    // 2. Blobs, each after a HEAD.
    let mut outcome = PublishOutcome {
        digest: image.manifest_digest.clone(),
        reference: digest_ref.whole(),
        tags: Vec::new(),
        uploaded: Vec::new(),
        skipped: Vec::new(),
        bytes_sent: 0,
        layer: image.layer.clone(),
    };
    push_layer(
        &client,
        repo,
        &repository,
        req,
        &image,
        &retry,
        &reporter,
        &mut outcome,
    )
    .await?;
    push_config(
        &client,
        repo,
        &repository,
        &image,
        &retry,
        reporter.as_ref(),
        &mut outcome,
    )
    .await?;

    // 3. The manifest by digest: complete image, still untagged.
    let content_type = http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
    retry
        .run("upload manifest", || {
            client.push_manifest_raw(&digest_ref, image.manifest.clone(), content_type.clone())
        })
        .await
        .map_err(|source| PublishError::Manifest {
            digest: image.manifest_digest.clone(),
            repository: repository.clone(),
            source,
        })?;
    reporter.on_manifest(&image.manifest_digest);

    // 4. Tags: immutable first, then the moving ones.
    for tag in req.tags.all() {
        let r = tag_ref(&tag);
        retry
            .run("set tag", || {
                client.push_manifest_raw(&r, image.manifest.clone(), content_type.clone())
            })
            .await
            .map_err(|source| PublishError::SetTag {
                reference: r.whole(),
                done: outcome.tags.clone(),
                source,
            })?;
        reporter.on_tag(&tag);
        outcome.tags.push(tag);
    }
    Ok(outcome)
}

async fn blob_present(
    client: &Client,
    repo: &Reference,
    repository: &str,
    digest: &str,
    retry: &Retry<'_>,
) -> Result<bool, PublishError> {
    retry
        .run("check blob", || client.blob_exists(repo, digest))
        .await
        .map_err(|source| PublishError::BlobCheck {
            digest: digest.into(),
            repository: repository.into(),
            source,
        })
}

#[allow(clippy::too_many_arguments)]
async fn push_layer(
    client: &Client,
    repo: &Reference,
    repository: &str,
    req: &PublishRequest,
    image: &PreparedImage,
    retry: &Retry<'_>,
    reporter: &Arc<dyn Reporter>,
    outcome: &mut PublishOutcome,
) -> Result<(), PublishError> {
    let layer = &image.layer;
    if blob_present(client, repo, repository, &layer.digest, retry).await? {
        reporter.on_blob_done(BlobKind::Layer, &layer.digest, BlobOutcome::AlreadyPresent);
        outcome.skipped.push(layer.digest.clone());
        return Ok(());
    }
    let mut attempt = 1;
    loop {
        reporter.on_blob_start(
            BlobKind::Layer,
            Phase::Upload,
            Some(&layer.digest),
            layer.disk_size,
        );
        match upload_layer_once(client, repo, &req.layer, layer, reporter.clone()).await {
            Ok(sent) => {
                outcome.bytes_sent += sent;
                break;
            }
            Err(Attempt::Registry(e)) if is_transient(&e) && attempt < retry.policy.attempts => {
                let wait = retry.delay(attempt);
                tracing::warn!(digest = %layer.digest, attempt, ?wait, error = %e, "layer upload failed; restarting the upload session");
                reporter.on_retry("upload layer", attempt, wait, &e);
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(Attempt::Registry(source)) => {
                return Err(PublishError::BlobUpload {
                    digest: layer.digest.clone(),
                    repository: repository.into(),
                    source,
                });
            }
            Err(Attempt::Failed(e)) => return Err(e),
        }
    }
    reporter.on_blob_done(BlobKind::Layer, &layer.digest, BlobOutcome::Done);
    outcome.uploaded.push(layer.digest.clone());
    Ok(())
}

async fn push_config(
    client: &Client,
    repo: &Reference,
    repository: &str,
    image: &PreparedImage,
    retry: &Retry<'_>,
    reporter: &dyn Reporter,
    outcome: &mut PublishOutcome,
) -> Result<(), PublishError> {
    let digest = &image.config_descriptor.digest;
    if blob_present(client, repo, repository, digest, retry).await? {
        reporter.on_blob_done(BlobKind::Config, digest, BlobOutcome::AlreadyPresent);
        outcome.skipped.push(digest.clone());
        return Ok(());
    }
    reporter.on_blob_start(
        BlobKind::Config,
        Phase::Upload,
        Some(digest),
        image.config.len() as u64,
    );
    retry
        .run("upload config", || {
            client.push_blob(repo, image.config.clone(), digest)
        })
        .await
        .map_err(|source| PublishError::BlobUpload {
            digest: digest.clone(),
            repository: repository.into(),
            source,
        })?;
    reporter.on_bytes(image.config.len() as u64);
    reporter.on_blob_done(BlobKind::Config, digest, BlobOutcome::Done);
    outcome.uploaded.push(digest.clone());
    outcome.bytes_sent += image.config.len() as u64;
    Ok(())
}

enum Attempt {
    Registry(OciDistributionError),
    Failed(PublishError),
}

/// One upload session: a producer thread writes the layer into a bounded channel (4 × 1 MiB),
/// which is the body of one streamed PUT. Returns the bytes sent.
async fn upload_layer_once(
    client: &Client,
    repo: &Reference,
    spec: &LayerSpec,
    expected: &LayerDigests,
    reporter: Arc<dyn Reporter>,
) -> Result<u64, Attempt> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, OciDistributionError>>(4);
    let spec_owned = spec.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        write_layer(&spec_owned, writer, &mut |n| reporter.on_bytes(n))
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let result = client
        .push_blob_stream(repo, stream, &expected.digest, Some(expected.size))
        .await;
    let produced = producer
        .await
        .map_err(|source| Attempt::Failed(PublishError::Task { source }))?;
    match produced {
        // The channel closed because the upload stopped: the upload's error tells why.
        Err(LayerError::Write { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe && result.is_err() => {}
        Err(source) => return Err(Attempt::Failed(PublishError::Layer { source })),
        Ok(d) if d.digest != expected.digest => {
            return Err(Attempt::Failed(PublishError::DiskChanged {
                path: spec.disk.clone(),
                expected: expected.digest.clone(),
                found: d.digest,
            }));
        }
        Ok(_) => {}
    }
    result.map(|_| expected.size).map_err(Attempt::Registry)
}

const CHUNK: usize = 1 << 20;

/// Sends 1 MiB chunks into the upload stream; fails with `BrokenPipe` once the upload stopped.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, OciDistributionError>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = (CHUNK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

struct Retry<'a> {
    policy: RetryPolicy,
    reporter: &'a dyn Reporter,
}

impl Retry<'_> {
    fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << (attempt - 1).min(16);
        self.policy
            .initial_delay
            .saturating_mul(factor)
            .min(self.policy.max_delay)
    }

    async fn run<T, F, Fut>(&self, operation: &str, mut f: F) -> Result<T, OciDistributionError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) && attempt < self.policy.attempts.max(1) => {
                    let wait = self.delay(attempt);
                    tracing::warn!(operation, attempt, ?wait, error = %e, "transient registry error; retrying");
                    self.reporter.on_retry(operation, attempt, wait, &e);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
