//! The OCI image config and manifest of a containerDisk.
//!
//! Both are serialised with sorted keys and no whitespace, from inputs that do not depend on
//! the clock (the `created` time is the same fixed time as the layer's mtimes), so the same
//! qcow2 and metadata always give the same manifest digest.

use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::layer::{Compression, LayerDigests};

/// Media type of the image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Label with the Kubernetes version of the node image.
pub const LABEL_KUBERNETES_VERSION: &str = "io.kib.kubernetes.version";
/// Label with the Rocky Linux version of the node image.
pub const LABEL_ROCKY_VERSION: &str = "io.kib.rocky.version";
/// Label with the sha256 of the base cloud image the node image was built from.
pub const LABEL_BASE_IMAGE_SHA256: &str = "io.kib.base-image.sha256";
/// KubeVirt's env var naming the default instancetype of VMs made from this disk.
pub const ENV_DEFAULT_INSTANCETYPE: &str = "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE";
/// KubeVirt's env var naming the default preference of VMs made from this disk.
pub const ENV_DEFAULT_PREFERENCE: &str = "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE";

/// What the image says about itself. Every field is optional: absent ones are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMetadata {
    /// `created` and `org.opencontainers.image.created`, seconds since the epoch (the same
    /// value as the layer mtime).
    pub created: u64,
    /// `org.opencontainers.image.source`: the source repository URL.
    pub source: Option<String>,
    /// `org.opencontainers.image.revision`: the git commit.
    pub revision: Option<String>,
    /// `org.opencontainers.image.version`: the immutable tag.
    pub version: Option<String>,
    /// `org.opencontainers.image.title`.
    pub title: Option<String>,
    /// `org.opencontainers.image.description`.
    pub description: Option<String>,
    /// Kubernetes version of the node image, e.g. `v1.37.1`.
    pub kubernetes_version: Option<String>,
    /// Rocky Linux version, e.g. `10.1`.
    pub rocky_version: Option<String>,
    /// sha256 (hex) of the base cloud image.
    pub base_image_sha256: Option<String>,
    /// KubeVirt default instancetype, e.g. `u1.medium`.
    pub instancetype: Option<String>,
    /// KubeVirt default preference, e.g. `rhel.10`.
    pub preference: Option<String>,
}

impl ImageMetadata {
    /// `created` as RFC 3339 (`1970-01-01T00:00:00Z` for an out-of-range value).
    pub fn created_rfc3339(&self) -> String {
        i64::try_from(self.created)
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
    }

    /// The OCI annotations (`org.opencontainers.image.*`) plus kib's labels, sorted.
    pub fn annotations(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "org.opencontainers.image.created".into(),
            self.created_rfc3339().into(),
        );
        let optional = [
            ("org.opencontainers.image.source", &self.source),
            ("org.opencontainers.image.revision", &self.revision),
            ("org.opencontainers.image.version", &self.version),
            ("org.opencontainers.image.title", &self.title),
            ("org.opencontainers.image.description", &self.description),
            (LABEL_KUBERNETES_VERSION, &self.kubernetes_version),
            (LABEL_ROCKY_VERSION, &self.rocky_version),
            (LABEL_BASE_IMAGE_SHA256, &self.base_image_sha256),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                m.insert(k.into(), v.clone().into());
            }
        }
        m
    }
}

/// A content-addressed blob: its media type, digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl Descriptor {
    fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// A containerDisk image whose layer digests are known: the config and manifest bytes, ready
/// to be written or pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedImage {
    /// The layer's digests.
    pub layer: LayerDigests,
    /// The layer's descriptor.
    pub layer_descriptor: Descriptor,
    /// The config JSON.
    pub config: Vec<u8>,
    /// The config's descriptor.
    pub config_descriptor: Descriptor,
    /// The manifest JSON.
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of the manifest: the image digest.
    pub manifest_digest: String,
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Builds the config and manifest for a layer.
pub fn prepare(
    layer: LayerDigests,
    compression: Compression,
    meta: &ImageMetadata,
) -> PreparedImage {
    let annotations = meta.annotations();
    let mut env = Vec::new();
    if let Some(it) = &meta.instancetype {
        env.push(Value::from(format!("{ENV_DEFAULT_INSTANCETYPE}={it}")));
    }
    if let Some(p) = &meta.preference {
        env.push(Value::from(format!("{ENV_DEFAULT_PREFERENCE}={p}")));
    }
    let mut config_section = Map::new();
    if !env.is_empty() {
        config_section.insert("Env".into(), env.into());
    }
    config_section.insert("Labels".into(), Value::Object(annotations.clone()));
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": meta.created_rfc3339(),
        "config": Value::Object(config_section),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": meta.created_rfc3339(), "created_by": "kib publish", "comment": "containerDisk: disk/disk.qcow2"}],
    });
    // serde_json's Map is a BTreeMap here (no `preserve_order`): keys come out sorted.
    let config = serde_json::to_vec(&config).unwrap_or_default();
    let config_descriptor = Descriptor {
        media_type: CONFIG_MEDIA_TYPE.into(),
        digest: sha256_digest(&config),
        size: config.len() as u64,
    };
    let layer_descriptor = Descriptor {
        media_type: compression.media_type().into(),
        digest: layer.digest.clone(),
        size: layer.size,
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config_descriptor.to_json(),
        "layers": [layer_descriptor.to_json()],
        "annotations": Value::Object(annotations),
    });
    let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
    let manifest_digest = sha256_digest(&manifest);
    PreparedImage {
        layer,
        layer_descriptor,
        config,
        config_descriptor,
        manifest,
        manifest_digest,
    }
}
