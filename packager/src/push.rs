//! `kib publish`: the one-pass push of a containerDisk to an OCI registry.
//!
//! The order makes a failure harmless. [`push`] checks the immutable tag (absent, or already
//! this image), uploads the blobs and stores the manifest *by digest*: a complete image that no
//! tag points at. [`set_tags`] then sets the immutable tag and the moving ones. Between the two
//! the caller signs and attests the digest (`kib publish --sign-key`), so a failure at any step
//! leaves no new tag; [`publish`] is both steps with nothing between.
//!
//! The layer is read once: a producer thread writes the tar, compresses and hashes it (layer
//! digest and diff_id) into a bounded channel (4 x 1 MiB) that is the body of one streamed
//! `PATCH` of an upload session (`POST`, `PATCH`, then `PUT ?digest=` once the digest is
//! known), the way docker's own client pushes (distribution `registry/client/blob_writer.go`,
//! `ReadFrom`: a `PATCH` without `Content-Range`). oci-client 0.18 cannot do this:
//! `push_blob_stream` needs the digest before the first byte, and `push_blob_stream_chunked`
//! (digest at the end) sends one `PATCH` per stream item of at most 4 MiB, 256 requests per GiB.
//! So these three requests are made here, with oci-client's token for authentication; every
//! other registry call goes through oci-client.
//!
//! A re-publish of the same qcow2 still uploads nothing: the layer's digests are remembered for
//! the file's identity ([`LayerCache`]), and trusted only once a `HEAD` finds that blob in the
//! registry. When the immutable tag already exists and nothing is remembered, the layer is
//! hashed first, so that a different image is refused before minutes of upload.
//!
//! A transient error (connection, 408/429/5xx) restarts the upload session from scratch and
//! streams again; the registry checks the digest, so a retried upload can never store a corrupt
//! blob. Permanent errors (401/403/404, bad names) stop at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kib_manifest::Hint;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::sync::mpsc;

use crate::image::{ImageMetadata, MANIFEST_MEDIA_TYPE, PreparedImage, prepare};
use crate::layer::{LayerCache, LayerDigests, LayerError, LayerKey, LayerSpec, write_layer};
use crate::registry::{
    self, AuthError, RegistryOptions, http_status, is_transient, is_unreachable,
};
use crate::reporter::{BlobKind, BlobOutcome, Phase, Reporter};
use crate::tags::{TagError, Tags, is_valid_tag};
use crate::upload::Uploader;

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
    /// Where the layer's digests are remembered between runs; `None`: never remembered.
    pub cache: Option<LayerCache>,
    /// `sha256:<hex>` of the qcow2 as the build manifest records it: part of the file's
    /// identity in the cache.
    pub disk_sha256: Option<String>,
}

/// An image stored by digest, not tagged yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// `registry/repository@sha256:<hex>`.
    pub reference: String,
    /// The manifest bytes (what the tags are set to).
    pub manifest: Vec<u8>,
    /// Blobs sent.
    pub uploaded: Vec<String>,
    /// Blobs the registry already had.
    pub skipped: Vec<String>,
    /// Bytes of blob data sent (retried bytes counted once per attempt).
    pub bytes_sent: u64,
    /// The layer's digests.
    pub layer: LayerDigests,
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
    /// The options do not allow reaching the registry this way.
    #[error("Cannot reach the registry `{registry}` this way")]
    Transport {
        /// The registry.
        registry: String,
        /// The cause.
        #[source]
        source: registry::TransportError,
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
    /// The layer upload failed.
    #[error("Failed to upload the layer to `{repository}`")]
    LayerUpload {
        /// The repository.
        repository: String,
        /// The cause.
        #[source]
        source: OciDistributionError,
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
            | PublishError::LayerUpload { source, .. }
            | PublishError::Manifest { source, .. }
            | PublishError::SetTag { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Hint for PublishError {
    /// What to do about it.
    fn hint(&self) -> Option<String> {
        match self {
            PublishError::Tag { source, .. } => return source.hint(),
            PublishError::Auth { source, .. } => return source.hint(),
            PublishError::Transport { source, .. } => return source.hint(),
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
        if let Some(h) = registry::certificate_hint(err) {
            return Some(h);
        }
        if is_unreachable(err) {
            let http = matches!(self, PublishError::Connect { http: true, .. });
            return Some(if http {
                "is the registry running and listening at that address?".into()
            } else {
                "is the registry running at that address? A plain-HTTP registry needs `--plain-http`"
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

/// The layer's digests from a streaming pass over the disk that sends nothing.
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

/// Pushes and tags the image: [`push`], then [`set_tags`].
pub async fn publish(
    req: &PublishRequest,
    reporter: Arc<dyn Reporter>,
) -> Result<PublishOutcome, PublishError> {
    let pushed = push(req, reporter.clone()).await?;
    let tags = set_tags(req, &pushed, reporter).await?;
    Ok(PublishOutcome {
        digest: pushed.digest,
        reference: pushed.reference,
        tags,
        uploaded: pushed.uploaded,
        skipped: pushed.skipped,
        bytes_sent: pushed.bytes_sent,
        layer: pushed.layer,
    })
}

/// A connection to the repository: oci-client for the registry calls, plus the plain HTTP
/// client of the streamed layer upload, both from [`registry::connect`] (the same TLS and
/// HTTP choices, made there).
struct Session<'a> {
    req: &'a PublishRequest,
    client: Client,
    auth: RegistryAuth,
    /// kib's own uploads (the layer, the config blob).
    up: Uploader,
    /// `registry/repository`, for messages.
    repository: String,
    retry: Retry<'a>,
}

impl<'a> Session<'a> {
    async fn open(
        req: &'a PublishRequest,
        reporter: &'a dyn Reporter,
    ) -> Result<Self, PublishError> {
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
        let transport = registry::connect(repo, &req.options, &auth)
            .await
            .map_err(|source| PublishError::Transport {
                registry: registry_name.clone(),
                source,
            })?;
        let client = transport.client.clone();
        let http = transport.scheme == "http";
        let retry = Retry {
            policy: req.retry,
            reporter,
        };
        let connect_err = |source| PublishError::Connect {
            registry: registry_name.clone(),
            http,
            source,
        };
        let immutable = tag_ref(repo, &req.tags.immutable);
        retry
            .run("connect", || {
                client.auth(&immutable, &auth, RegistryOperation::Push)
            })
            .await
            .map_err(connect_err)?;
        Ok(Self {
            req,
            up: Uploader::new(&transport, &auth, repo),
            client,
            auth,
            repository,
            retry,
        })
    }

    fn repo(&self) -> &Reference {
        &self.req.repository
    }

    /// The digest the immutable tag points at now, if it exists.
    async fn immutable_tag(&self) -> Result<Option<String>, PublishError> {
        let r = tag_ref(self.repo(), &self.req.tags.immutable);
        self.retry
            .run("check tag", || async {
                match self.client.fetch_manifest_digest(&r, &self.auth).await {
                    Ok(d) => Ok(Some(d)),
                    Err(e) if http_status(&e) == Some(404) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|source| PublishError::TagCheck {
                reference: r.whole(),
                source,
            })
    }

    async fn blob_present(&self, digest: &str) -> Result<bool, PublishError> {
        self.retry
            .run("check blob", || {
                self.client.blob_exists(self.repo(), digest)
            })
            .await
            .map_err(|source| PublishError::BlobCheck {
                digest: digest.into(),
                repository: self.repository.clone(),
                source,
            })
    }

    /// One upload session: `POST`, one streamed `PATCH` while a producer thread writes the
    /// layer, then `PUT ?digest=`. Returns the layer's digests.
    async fn upload_layer_once(
        &self,
        reporter: Arc<dyn Reporter>,
    ) -> Result<LayerDigests, Attempt> {
        let start = self.up.upload_start_url().map_err(Attempt::Registry)?;
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let spec = self.req.layer.clone();
        let producer = tokio::task::spawn_blocking(move || {
            let writer = ChannelWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
            };
            write_layer(&spec, writer, &mut |n| reporter.on_bytes(n))
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let sent = async {
            let ((url, ours), authz, basic) = self.up.start_upload(start).await?;
            let res = self
                .up
                .send(
                    reqwest::Method::PATCH,
                    url,
                    authz.as_deref().filter(|_| ours),
                    Some(reqwest::Body::wrap_stream(stream)),
                    202,
                )
                .await?;
            let next = self.up.location(&res)?;
            Ok::<_, OciDistributionError>((next, basic))
        }
        .await;
        let produced = producer
            .await
            .map_err(|source| Attempt::Failed(PublishError::Task { source }))?;
        let digests = match produced {
            // The channel closed because the upload stopped: the upload's error tells why.
            Err(LayerError::Write { source, .. })
                if source.kind() == std::io::ErrorKind::BrokenPipe && sent.is_err() =>
            {
                return Err(Attempt::Registry(sent.err().unwrap_or(
                    OciDistributionError::GenericError(Some("the upload stopped".into())),
                )));
            }
            Err(source) => return Err(Attempt::Failed(PublishError::Layer { source })),
            Ok(d) => d,
        };
        let ((mut url, ours), basic) = sent.map_err(Attempt::Registry)?;
        url.query_pairs_mut().append_pair("digest", &digests.digest);
        // A fresh token: a bearer token may have expired during a long upload.
        let authz = self
            .up
            .authorization(basic)
            .await
            .map_err(Attempt::Registry)?;
        self.up
            .send(
                reqwest::Method::PUT,
                url,
                authz.as_deref().filter(|_| ours),
                None,
                201,
            )
            .await
            .map_err(Attempt::Registry)?;
        Ok(digests)
    }
}

fn tag_ref(repo: &Reference, tag: &str) -> Reference {
    Reference::with_tag(
        repo.registry().to_owned(),
        repo.repository().to_owned(),
        tag.to_owned(),
    )
}

/// Uploads the blobs and stores the manifest by digest. No tag is set: see [`set_tags`].
pub async fn push(
    req: &PublishRequest,
    reporter: Arc<dyn Reporter>,
) -> Result<Pushed, PublishError> {
    let s = Session::open(req, reporter.as_ref()).await?;
    let repo = s.repo();

    // 1. The immutable tag must be new, or already this very image.
    let existing = s.immutable_tag().await?;
    let refuse = |image: &PreparedImage| match &existing {
        Some(d) if *d != image.manifest_digest => Err(PublishError::TagExists {
            reference: tag_ref(repo, &req.tags.immutable).whole(),
            existing: d.clone(),
            new: image.manifest_digest.clone(),
        }),
        _ => Ok(()),
    };

    // 2. The layer: remembered and confirmed, or streamed once.
    let mut pushed = Pushed {
        digest: String::new(),
        reference: String::new(),
        manifest: Vec::new(),
        uploaded: Vec::new(),
        skipped: Vec::new(),
        bytes_sent: 0,
        layer: LayerDigests {
            digest: String::new(),
            size: 0,
            diff_id: String::new(),
            disk_size: 0,
        },
    };
    let key = req.cache.as_ref().and_then(|_| {
        LayerKey::of(&req.layer, req.disk_sha256.as_deref())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot identify the disk; the layer cache is not used"))
            .ok()
    });
    let remembered = match (&req.cache, &key) {
        (Some(c), Some(k)) => c.get(k),
        _ => None,
    };
    let mut layer = None;
    if let Some(d) = &remembered {
        tracing::debug!(digest = %d.digest, "layer digest remembered for this disk");
        if s.blob_present(&d.digest).await? {
            refuse(&prepare(d.clone(), req.layer.compression, &req.metadata))?;
            reporter.on_blob_done(BlobKind::Layer, &d.digest, BlobOutcome::AlreadyPresent);
            pushed.skipped.push(d.digest.clone());
            layer = Some(d.clone());
        }
    }
    if layer.is_none() && existing.is_some() {
        // Not remembered but the tag exists: hash first, so that another image is refused
        // before minutes of upload, and a re-publish after a lost cache uploads nothing.
        let d = hash_layer(&req.layer, reporter.clone()).await?;
        refuse(&prepare(d.clone(), req.layer.compression, &req.metadata))?;
        if s.blob_present(&d.digest).await? {
            reporter.on_blob_done(BlobKind::Layer, &d.digest, BlobOutcome::AlreadyPresent);
            pushed.skipped.push(d.digest.clone());
        } else {
            let sent = upload_layer(&s, reporter.clone()).await?;
            if sent.digest != d.digest {
                return Err(PublishError::DiskChanged {
                    path: req.layer.disk.clone(),
                    expected: d.digest,
                    found: sent.digest,
                });
            }
            pushed.uploaded.push(sent.digest.clone());
            pushed.bytes_sent += sent.size;
        }
        layer = Some(d);
    }
    let layer = match layer {
        Some(d) => d,
        None => {
            let d = upload_layer(&s, reporter.clone()).await?;
            pushed.uploaded.push(d.digest.clone());
            pushed.bytes_sent += d.size;
            d
        }
    };
    if let (Some(cache), Some(k)) = (&req.cache, &key)
        && remembered.as_ref() != Some(&layer)
    {
        // Only if the file is still what it was when the upload began.
        match LayerKey::of(&req.layer, req.disk_sha256.as_deref()) {
            Ok(now) if now == *k => {
                if let Err(e) = cache.put(k, &layer) {
                    tracing::warn!(error = %e, dir = %cache.dir().display(), "cannot remember the layer digest");
                }
            }
            _ => tracing::warn!(
                "the disk changed while it was published; its digest is not remembered"
            ),
        }
    }
    let image = prepare(layer, req.layer.compression, &req.metadata);
    refuse(&image)?;

    // 3. The config, after a HEAD.
    push_config(&s, &image, reporter.as_ref(), &mut pushed).await?;

    // 4. The manifest by digest: a complete image, still untagged.
    let digest_ref = Reference::with_digest(
        repo.registry().to_owned(),
        repo.repository().to_owned(),
        image.manifest_digest.clone(),
    );
    let content_type = http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
    s.retry
        .run("upload manifest", || {
            s.client
                .push_manifest_raw(&digest_ref, image.manifest.clone(), content_type.clone())
        })
        .await
        .map_err(|source| PublishError::Manifest {
            digest: image.manifest_digest.clone(),
            repository: s.repository.clone(),
            source,
        })?;
    reporter.on_manifest(&image.manifest_digest);
    pushed.digest = image.manifest_digest.clone();
    pushed.reference = digest_ref.whole();
    pushed.manifest = image.manifest;
    pushed.layer = image.layer;
    Ok(pushed)
}

/// Points the tags at a pushed image: the immutable tag first (checked again: it must still be
/// absent or this image), then the moving ones. Returns the tags set.
pub async fn set_tags(
    req: &PublishRequest,
    pushed: &Pushed,
    reporter: Arc<dyn Reporter>,
) -> Result<Vec<String>, PublishError> {
    let s = Session::open(req, reporter.as_ref()).await?;
    let repo = s.repo();
    if let Some(d) = s.immutable_tag().await?
        && d != pushed.digest
    {
        return Err(PublishError::TagExists {
            reference: tag_ref(repo, &req.tags.immutable).whole(),
            existing: d,
            new: pushed.digest.clone(),
        });
    }
    let content_type = http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
    let mut done = Vec::new();
    for tag in req.tags.all() {
        let r = tag_ref(repo, &tag);
        s.retry
            .run("set tag", || {
                s.client
                    .push_manifest_raw(&r, pushed.manifest.clone(), content_type.clone())
            })
            .await
            .map_err(|source| PublishError::SetTag {
                reference: r.whole(),
                done: done.clone(),
                source,
            })?;
        reporter.on_tag(&tag);
        done.push(tag);
    }
    Ok(done)
}

/// Streams the layer, restarting the session after transient errors.
async fn upload_layer(
    s: &Session<'_>,
    reporter: Arc<dyn Reporter>,
) -> Result<LayerDigests, PublishError> {
    let disk_size = fs_err::metadata(&s.req.layer.disk)
        .map(|m| m.len())
        .unwrap_or(0);
    let mut attempt = 1;
    loop {
        reporter.on_blob_start(BlobKind::Layer, Phase::Upload, None, disk_size);
        match s.upload_layer_once(reporter.clone()).await {
            Ok(d) => {
                reporter.on_blob_done(BlobKind::Layer, &d.digest, BlobOutcome::Done);
                return Ok(d);
            }
            Err(Attempt::Registry(e)) if is_transient(&e) && attempt < s.retry.policy.attempts => {
                let wait = s.retry.delay(attempt);
                tracing::warn!(attempt, ?wait, error = %e, "layer upload failed; restarting the upload session");
                reporter.on_retry("upload layer", attempt, wait, &e);
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(Attempt::Registry(source)) => {
                return Err(PublishError::LayerUpload {
                    repository: s.repository.clone(),
                    source,
                });
            }
            Err(Attempt::Failed(e)) => return Err(e),
        }
    }
}

async fn push_config(
    s: &Session<'_>,
    image: &PreparedImage,
    reporter: &dyn Reporter,
    pushed: &mut Pushed,
) -> Result<(), PublishError> {
    let digest = &image.config_descriptor.digest;
    if s.blob_present(digest).await? {
        reporter.on_blob_done(BlobKind::Config, digest, BlobOutcome::AlreadyPresent);
        pushed.skipped.push(digest.clone());
        return Ok(());
    }
    reporter.on_blob_start(
        BlobKind::Config,
        Phase::Upload,
        Some(digest),
        image.config.len() as u64,
    );
    s.retry
        .run("upload config", || s.up.upload_blob(&image.config, digest))
        .await
        .map_err(|source| PublishError::BlobUpload {
            digest: digest.clone(),
            repository: s.repository.clone(),
            source,
        })?;
    reporter.on_bytes(image.config.len() as u64);
    reporter.on_blob_done(BlobKind::Config, digest, BlobOutcome::Done);
    pushed.uploaded.push(digest.clone());
    pushed.bytes_sent += image.config.len() as u64;
    Ok(())
}

enum Attempt {
    Registry(OciDistributionError),
    Failed(PublishError),
}

const CHUNK: usize = 1 << 20;

/// Sends 1 MiB chunks into the upload stream; fails with `BrokenPipe` once the upload stopped.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
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
