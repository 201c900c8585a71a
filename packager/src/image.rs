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

#[cfg(test)]
mod tests {
    //! Golden digests: the bytes kib writes for fixed inputs are pinned, so a change of
    //! serialisation (key order, whitespace, a new field, serde_json's `preserve_order`
    //! feature turned on by some other crate) fails here instead of silently changing every
    //! published image digest.

    use super::*;

    fn layer() -> LayerDigests {
        LayerDigests {
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 1_234_567,
            diff_id: format!("sha256:{}", "b".repeat(64)),
            disk_size: 2_345_678,
        }
    }

    fn full_metadata() -> ImageMetadata {
        ImageMetadata {
            created: 1_795_773_600,
            source: Some("https://example.invalid/kib".into()),
            revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
            version: Some("v1.37.1-rocky10.1-0123456".into()),
            title: Some("kib node image".into()),
            description: Some("Rocky Linux 10 Kubernetes node".into()),
            kubernetes_version: Some("v1.37.1".into()),
            rocky_version: Some("10.1".into()),
            base_image_sha256: Some("c".repeat(64)),
            instancetype: Some("u1.medium".into()),
            preference: Some("rhel.10".into()),
        }
    }

    #[test]
    fn golden_full_metadata_gzip() {
        let image = prepare(layer(), Compression::Gzip, &full_metadata());
        assert_eq!(
            String::from_utf8(image.config.clone()).unwrap(),
            GOLDEN_FULL_CONFIG
        );
        assert_eq!(
            String::from_utf8(image.manifest.clone()).unwrap(),
            GOLDEN_FULL_MANIFEST
        );
        assert_eq!(image.config_descriptor.digest, GOLDEN_FULL_CONFIG_DIGEST);
        assert_eq!(image.manifest_digest, GOLDEN_FULL_MANIFEST_DIGEST);
        assert_eq!(image.manifest_digest, sha256_digest(&image.manifest));
    }

    #[test]
    fn golden_default_metadata_zstd() {
        let image = prepare(layer(), Compression::Zstd, &ImageMetadata::default());
        assert_eq!(
            String::from_utf8(image.config.clone()).unwrap(),
            GOLDEN_EMPTY_CONFIG
        );
        assert_eq!(
            String::from_utf8(image.manifest.clone()).unwrap(),
            GOLDEN_EMPTY_MANIFEST
        );
        assert_eq!(image.manifest_digest, GOLDEN_EMPTY_MANIFEST_DIGEST);
    }

    // The values kib 0.1.0 wrote before the config and manifest were built with oci-spec
    // types (computed from that code): the switch did not change a byte.
    const GOLDEN_FULL_CONFIG: &str = r#"{"architecture":"amd64","config":{"Env":["INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.medium","INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=rhel.10"],"Labels":{"io.kib.base-image.sha256":"cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","io.kib.kubernetes.version":"v1.37.1","io.kib.rocky.version":"10.1","org.opencontainers.image.created":"2026-11-27T10:00:00Z","org.opencontainers.image.description":"Rocky Linux 10 Kubernetes node","org.opencontainers.image.revision":"0123456789abcdef0123456789abcdef01234567","org.opencontainers.image.source":"https://example.invalid/kib","org.opencontainers.image.title":"kib node image","org.opencontainers.image.version":"v1.37.1-rocky10.1-0123456"}},"created":"2026-11-27T10:00:00Z","history":[{"comment":"containerDisk: disk/disk.qcow2","created":"2026-11-27T10:00:00Z","created_by":"kib publish"}],"os":"linux","rootfs":{"diff_ids":["sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"],"type":"layers"}}"#;
    const GOLDEN_FULL_MANIFEST: &str = r#"{"annotations":{"io.kib.base-image.sha256":"cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","io.kib.kubernetes.version":"v1.37.1","io.kib.rocky.version":"10.1","org.opencontainers.image.created":"2026-11-27T10:00:00Z","org.opencontainers.image.description":"Rocky Linux 10 Kubernetes node","org.opencontainers.image.revision":"0123456789abcdef0123456789abcdef01234567","org.opencontainers.image.source":"https://example.invalid/kib","org.opencontainers.image.title":"kib node image","org.opencontainers.image.version":"v1.37.1-rocky10.1-0123456"},"config":{"digest":"sha256:992d7635e34f47e26910f049265c4d67b3b965f1c9fd0faf5272be4eda797eca","mediaType":"application/vnd.oci.image.config.v1+json","size":991},"layers":[{"digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":1234567}],"mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}"#;
    const GOLDEN_FULL_CONFIG_DIGEST: &str =
        "sha256:992d7635e34f47e26910f049265c4d67b3b965f1c9fd0faf5272be4eda797eca";
    const GOLDEN_FULL_MANIFEST_DIGEST: &str =
        "sha256:ca7b6a86b9f448e721c8295aa4b97118090c6404495c422a97a7cbf5bd6f6d0e";
    const GOLDEN_EMPTY_CONFIG: &str = r#"{"architecture":"amd64","config":{"Labels":{"org.opencontainers.image.created":"1970-01-01T00:00:00Z"}},"created":"1970-01-01T00:00:00Z","history":[{"comment":"containerDisk: disk/disk.qcow2","created":"1970-01-01T00:00:00Z","created_by":"kib publish"}],"os":"linux","rootfs":{"diff_ids":["sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"],"type":"layers"}}"#;
    const GOLDEN_EMPTY_MANIFEST: &str = r#"{"annotations":{"org.opencontainers.image.created":"1970-01-01T00:00:00Z"},"config":{"digest":"sha256:7be0e75303b704846af6310e32e9f92a8ad3df5bc4a6765e422b40daa8e44b94","mediaType":"application/vnd.oci.image.config.v1+json","size":381},"layers":[{"digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","size":1234567}],"mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}"#;
    const GOLDEN_EMPTY_MANIFEST_DIGEST: &str =
        "sha256:272d7f8cc5f55e47edc6847e922542d90ddc3b8d7797ff9289cbeb082d151447";
}
