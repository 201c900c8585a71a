//! The OCI image config and manifest of a containerDisk.
//!
//! Both are built as oci-spec types and serialised canonically: through a
//! `serde_json::Value`, whose maps are sorted (serde_json without `preserve_order`), with no
//! whitespace. The inputs do not depend on the clock (the `created` time is the same fixed
//! time as the layer's mtimes), so the same qcow2 and metadata always give the same manifest
//! digest; the golden test below pins those bytes.

use std::collections::{BTreeMap, HashMap};

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor as OciDescriptor, Digest, HistoryBuilder,
    ImageConfigurationBuilder, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use serde::Serialize;
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
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert(
            "org.opencontainers.image.created".into(),
            self.created_rfc3339(),
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
                m.insert(k.into(), v.clone());
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
    /// As oci-spec's descriptor. The digests here are kib's own `sha256:<hex>`, so parsing
    /// them cannot fail.
    fn to_oci(&self) -> OciDescriptor {
        let digest: Digest = self
            .digest
            .parse()
            .expect("kib writes digests as sha256:<64 hex>");
        OciDescriptor::new(MediaType::from(self.media_type.as_str()), self.size, digest)
    }
}

/// The canonical JSON of `value`: sorted keys (through `serde_json::Value`, whose map is a
/// `BTreeMap` because nothing enables serde_json's `preserve_order`), no whitespace.
fn canonical_json(value: &impl Serialize) -> Vec<u8> {
    let value = serde_json::to_value(value).expect("OCI types serialise to JSON");
    serde_json::to_vec(&value).expect("a JSON value serialises")
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
    let annotations: HashMap<String, String> = meta.annotations().into_iter().collect();
    let mut env = Vec::new();
    if let Some(it) = &meta.instancetype {
        env.push(format!("{ENV_DEFAULT_INSTANCETYPE}={it}"));
    }
    if let Some(p) = &meta.preference {
        env.push(format!("{ENV_DEFAULT_PREFERENCE}={p}"));
    }
    let mut config_section = ConfigBuilder::default().labels(annotations.clone());
    if !env.is_empty() {
        config_section = config_section.env(env);
    }
    let history = HistoryBuilder::default()
        .created(meta.created_rfc3339())
        .created_by("kib publish")
        .comment("containerDisk: disk/disk.qcow2")
        .build()
        .expect("every history field is set");
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .created(meta.created_rfc3339())
        .config(
            config_section
                .build()
                .expect("every config field is optional"),
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![layer.diff_id.clone()])
                .build()
                .expect("every rootfs field is set"),
        )
        .history(vec![history])
        .build()
        .expect("every required config field is set");
    let config = canonical_json(&config);
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
    let manifest = ImageManifestBuilder::default()
        .schema_version(2_u32)
        .media_type(MediaType::ImageManifest)
        .config(config_descriptor.to_oci())
        .layers(vec![layer_descriptor.to_oci()])
        .annotations(annotations)
        .build()
        .expect("every required manifest field is set");
    let manifest = canonical_json(&manifest);
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
