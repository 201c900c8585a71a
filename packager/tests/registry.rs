//! Real-registry tests: Debian's docker-registry on 127.0.0.1, checked with skopeo (an
//! independent client), qemu-img and a CDI-style layer walk.
//! Run with: `cargo test -p kib-packager --features test-registry`
#![cfg(feature = "test-registry")]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kib_manifest::{Hint as _, error_chain};
use kib_packager::image::ImageMetadata;
use kib_packager::layer::LayerCache;
use kib_packager::layer::{Compression, LayerSpec};
use kib_packager::push::{PublishError, PublishRequest, RetryPolicy, publish, push, set_tags};
use kib_packager::registry::{RegistryOptions, Secret};
use kib_packager::tags::Tags;
use kib_packager::{BlobKind, BlobOutcome, NullReporter, Phase, Reporter};

const MTIME: u64 = 1_790_000_000;

fn request(
    host: &str,
    disk: &Path,
    compression: Compression,
    immutable: &str,
    moving: &[&str],
) -> PublishRequest {
    PublishRequest {
        repository: format!("{host}/kib/node").parse().unwrap(),
        layer: LayerSpec::new(disk, MTIME, compression),
        metadata: ImageMetadata {
            created: MTIME,
            source: Some("https://example.invalid/kib".into()),
            revision: Some("0123456789abcdef".into()),
            version: Some(immutable.into()),
            title: Some("kib node image".into()),
            description: Some("Rocky Linux 10 Kubernetes node (test)".into()),
            kubernetes_version: Some("v1.37.1".into()),
            rocky_version: Some("10.1".into()),
            base_image_sha256: Some("ab".repeat(32)),
            instancetype: Some("u1.medium".into()),
            preference: Some("rhel.10".into()),
        },
        tags: Tags {
            immutable: immutable.into(),
            moving: moving.iter().map(|s| s.to_string()).collect(),
        },
        options: RegistryOptions::default(),
        retry: RetryPolicy {
            attempts: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
        },
        cache: None,
        disk_sha256: None,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn tags_of(host: &str, creds: Option<&str>) -> Vec<String> {
    let mut args = vec!["list-tags", "--tls-verify=false"];
    if let Some(c) = creds {
        args.extend(["--creds", c]);
    }
    let repo = format!("docker://{host}/kib/node");
    args.push(&repo);
    let out = std::process::Command::new("skopeo")
        .args(&args)
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("NAME_UNKNOWN") || err.contains("name unknown") || err.contains("404"),
            "{err}"
        );
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut tags: Vec<String> = v["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    tags.sort();
    tags
}

/// Copies `reference` with skopeo into an OCI layout, keeping digests, and checks the layer
/// like KubeVirt and CDI would; returns the layout dir.
fn check_with_skopeo(
    host: &str,
    tag: &str,
    original: &Path,
    work: &Path,
    creds: Option<&str>,
) -> serde_json::Value {
    let src = format!("docker://{host}/kib/node:{tag}");
    let mut inspect = vec!["inspect", "--tls-verify=false"];
    if let Some(c) = creds {
        inspect.extend(["--creds", c]);
    }
    inspect.push(&src);
    let info: serde_json::Value = serde_json::from_str(&skopeo(&inspect)).unwrap();
    let mut cfg_args = inspect.clone();
    cfg_args.insert(1, "--config");
    let config: serde_json::Value = serde_json::from_str(&skopeo(&cfg_args)).unwrap();
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["io.kib.kubernetes.version"], "v1.37.1");
    assert_eq!(labels["io.kib.rocky.version"], "10.1");
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        "0123456789abcdef"
    );
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.medium"),
        "{env:?}"
    );
    assert!(
        env.contains(&"INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=rhel.10"),
        "{env:?}"
    );

    let layout = work.join(format!("copy-{tag}"));
    let dest = format!("oci:{}", layout.display());
    let mut copy = vec![
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
    ];
    if let Some(c) = creds {
        copy.extend(["--src-creds", c]);
    }
    copy.extend([src.as_str(), dest.as_str()]);
    skopeo(&copy);
    let extracted = work.join(format!("extracted-{tag}.qcow2"));
    let entries = cdi_extract(&layout, &extracted);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(
        (entries[0].path.as_str(), entries[0].kind, entries[0].mode),
        ("disk/", tar::EntryType::Directory, 0o555)
    );
    assert_eq!(
        (entries[1].path.as_str(), entries[1].kind, entries[1].mode),
        ("disk/disk.qcow2", tar::EntryType::Regular, 0o444)
    );
    for e in &entries {
        assert_eq!((e.uid, e.gid, e.mtime), (107, 107, MTIME), "{e:?}");
    }
    assert_eq!(
        sha256_file(&extracted),
        sha256_file(original),
        "the extracted disk differs from the original"
    );
    run(std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&extracted));
    info
}

#[test]
fn publish_gzip_checked_by_skopeo_cdi_and_qemu_img_then_republish_uploads_nothing() {
    let registry = start_registry(None);
    let work = tempfile::tempdir().unwrap();
    let disk = make_qcow2(work.path(), "node", 24, 256, 1);
    let rt = rt();
    let mut req = request(
        &registry.host(),
        &disk,
        Compression::Gzip,
        "v0.1.0",
        &["v1.37.1", "v1.37"],
    );
    req.cache = Some(LayerCache::new(work.path().join("cache")));
    let first = rt.block_on(publish(&req, Arc::new(NullReporter))).unwrap();
    assert_eq!(first.tags, ["v0.1.0", "v1.37.1", "v1.37"]);
    assert_eq!(first.uploaded.len(), 2, "{first:?}");
    assert_eq!(
        tags_of(&registry.host(), None),
        ["v0.1.0", "v1.37", "v1.37.1"]
    );

    let info = check_with_skopeo(&registry.host(), "v1.37.1", &disk, work.path(), None);
    assert_eq!(info["Digest"], first.digest.as_str());
    assert_eq!(info["Labels"]["org.opencontainers.image.version"], "v0.1.0");
    assert_eq!(
        raw_manifest(&registry.host(), "v1.37.1")["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );

    // Same qcow2 again: the remembered digest, confirmed by HEAD, skips both blobs without
    // reading the disk.
    let counter = Arc::new(Counter::default());
    let again = rt.block_on(publish(&req, counter.clone())).unwrap();
    assert_eq!(again.digest, first.digest);
    assert!(again.uploaded.is_empty(), "{again:?}");
    assert_eq!(again.skipped.len(), 2);
    assert_eq!(again.bytes_sent, 0);
    assert_eq!(counter.bytes.load(Ordering::SeqCst), 0, "the disk was read");
}

/// Counts the bytes reported and the layer outcomes.
#[derive(Default)]
struct Counter {
    bytes: AtomicU64,
    starts: Mutex<Vec<Phase>>,
    layer_done: Mutex<Vec<BlobOutcome>>,
}

impl Reporter for Counter {
    fn on_blob_start(&self, kind: BlobKind, phase: Phase, _: Option<&str>, _: u64) {
        if kind == BlobKind::Layer {
            self.starts.lock().unwrap().push(phase);
        }
    }
    fn on_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::SeqCst);
    }
    fn on_blob_done(&self, kind: BlobKind, _: &str, outcome: BlobOutcome) {
        if kind == BlobKind::Layer {
            self.layer_done.lock().unwrap().push(outcome);
        }
    }
}

#[test]
fn the_pushed_digests_are_the_pinned_ones() {
    let registry = start_registry(None);
    let disk = fixed_disk();
    let rt = rt();
    for (compression, layer_digest, diff_id, manifest_digest) in PINNED {
        let mut req = request(&registry.host(), disk.path(), compression, "pin", &[]);
        req.metadata = fixed_metadata();
        req.tags.immutable = format!("pin-{}", compression.as_str());
        let out = rt.block_on(publish(&req, Arc::new(NullReporter))).unwrap();
        assert_eq!(
            (
                out.layer.digest.as_str(),
                out.layer.diff_id.as_str(),
                out.digest.as_str()
            ),
            (layer_digest, diff_id, manifest_digest),
            "{compression:?}"
        );
        // The registry stored the bytes under that digest (it checks them on the final PUT).
        let raw = raw_manifest(&registry.host(), &req.tags.immutable);
        assert_eq!(raw["layers"][0]["digest"], layer_digest);
    }
}

#[test]
fn push_sets_no_tag_and_set_tags_points_them_at_the_digest() {
    let registry = start_registry(None);
    let host = registry.host();
    let work = tempfile::tempdir().unwrap();
    let disk = make_qcow2(work.path(), "node", 4, 32, 11);
    let rt = rt();
    let req = request(&host, &disk, Compression::Gzip, "v5.0.0", &["v1.37"]);
    let pushed = rt.block_on(push(&req, Arc::new(NullReporter))).unwrap();
    assert!(tags_of(&host, None).is_empty(), "push set a tag");
    let by_digest: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--no-tags",
        "--tls-verify=false",
        &format!("docker://{}", pushed.reference),
    ]))
    .unwrap();
    assert_eq!(by_digest["Digest"], pushed.digest.as_str());
    let tags = rt
        .block_on(set_tags(&req, &pushed, Arc::new(NullReporter)))
        .unwrap();
    assert_eq!(tags, ["v5.0.0", "v1.37"]);
    assert_eq!(tags_of(&host, None), ["v1.37", "v5.0.0"]);
    check_with_skopeo(&host, "v5.0.0", &disk, work.path(), None);
}

#[test]
fn a_remembered_digest_is_trusted_only_once_the_registry_has_the_blob() {
    let registry = start_registry(None);
    let host = registry.host();
    let work = tempfile::tempdir().unwrap();
    let disk = make_qcow2(work.path(), "node", 4, 32, 12);
    let rt = rt();
    let mut req = request(&host, &disk, Compression::Gzip, "v6", &[]);
    req.cache = Some(LayerCache::new(work.path().join("cache")));
    req.disk_sha256 = Some(format!("sha256:{}", sha256_file(&disk)));
    let first = rt.block_on(publish(&req, Arc::new(NullReporter))).unwrap();

    // Another repository in the same registry does not have the blob (HEAD 404): the layer
    // is streamed there, with the same digest.
    let mut other = req.clone();
    other.repository = format!("{host}/kib/other").parse().unwrap();
    let counter = Arc::new(Counter::default());
    let out = rt.block_on(publish(&other, counter.clone())).unwrap();
    assert_eq!(out.digest, first.digest);
    assert!(out.uploaded.contains(&first.layer.digest), "{out:?}");
    assert_eq!(*counter.starts.lock().unwrap(), [Phase::Upload]);

    // A different build-manifest sha256 is another identity: not remembered; the tag
    // exists, so the layer is hashed (not sent) and found in the registry.
    let mut changed = req.clone();
    changed.disk_sha256 = Some(format!("sha256:{}", "0".repeat(64)));
    let counter = Arc::new(Counter::default());
    let out = rt.block_on(publish(&changed, counter.clone())).unwrap();
    assert_eq!(out.digest, first.digest);
    assert_eq!(out.bytes_sent, 0);
    assert_eq!(*counter.starts.lock().unwrap(), [Phase::Hash]);
    assert_eq!(
        *counter.layer_done.lock().unwrap(),
        [BlobOutcome::Done, BlobOutcome::AlreadyPresent]
    );

    // The file rewritten in place (same size) is another identity: its new layer is sent.
    let bytes = fs_err::read(&disk).unwrap();
    let mut f = fs_err::OpenOptions::new().write(true).open(&disk).unwrap();
    std::io::Write::write_all(&mut f, &bytes).unwrap();
    drop(f);
    let mut new_tag = req.clone();
    new_tag.tags.immutable = "v7".into();
    let counter = Arc::new(Counter::default());
    let out = rt.block_on(publish(&new_tag, counter.clone())).unwrap();
    assert_eq!(*counter.starts.lock().unwrap(), [Phase::Upload]);
    assert!(out.bytes_sent > 0, "{out:?}");
    assert_eq!(out.digest, first.digest, "same bytes, same digest");
}

#[test]
fn zstd_and_uncompressed_layers_are_read_by_skopeo_and_the_cdi_walk() {
    let registry = start_registry(None);
    let work = tempfile::tempdir().unwrap();
    let disk = make_qcow2(work.path(), "node", 8, 64, 2);
    let rt = rt();
    for (c, tag) in [(Compression::Zstd, "zstd"), (Compression::None, "none")] {
        let out = rt
            .block_on(publish(
                &request(&registry.host(), &disk, c, tag, &[]),
                Arc::new(NullReporter),
            ))
            .unwrap();
        let info = check_with_skopeo(&registry.host(), tag, &disk, work.path(), None);
        assert_eq!(info["Digest"], out.digest.as_str());
        assert_eq!(
            raw_manifest(&registry.host(), tag)["layers"][0]["mediaType"],
            c.media_type()
        );
    }
}

#[test]
fn basic_auth_right_and_wrong_password() {
    let registry = start_registry(Some(("kib", "s3cret-pw")));
    let work = tempfile::tempdir().unwrap();
    let disk = make_qcow2(work.path(), "node", 4, 32, 3);
    let rt = rt();
    let mut req = request(
        &registry.host(),
        &disk,
        Compression::Gzip,
        "v0.2.0",
        &["v1.37"],
    );
    req.options.username = Some("kib".into());
    req.options.password = Some(Secret::new("wrong-pw"));
    let err = rt
        .block_on(publish(&req, Arc::new(NullReporter)))
        .unwrap_err();
    let chain = error_chain(&err);
    assert!(
        err.hint().unwrap_or_default().contains("credentials"),
        "{chain} / {:?}",
        err.hint()
    );
    assert!(!chain.contains("wrong-pw"), "{chain}");
    assert!(!format!("{err:?}").contains("wrong-pw"));
    assert!(tags_of(&registry.host(), Some("kib:s3cret-pw")).is_empty());

    req.options.password = Some(Secret::new("s3cret-pw"));
    let ok = rt.block_on(publish(&req, Arc::new(NullReporter))).unwrap();
    assert_eq!(
        tags_of(&registry.host(), Some("kib:s3cret-pw")),
        ["v0.2.0", "v1.37"]
    );
    check_with_skopeo(
        &registry.host(),
        "v0.2.0",
        &disk,
        work.path(),
        Some("kib:s3cret-pw"),
    );
    assert!(ok.digest.starts_with("sha256:"));
}

fn raw_manifest(host: &str, tag: &str) -> serde_json::Value {
    serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/kib/node:{tag}"),
    ]))
    .unwrap()
}

#[test]
fn registry_down_before_push_fails_clearly() {
    let mut registry = start_registry(None);
    registry.stop();
    let work = tempfile::tempdir().unwrap();
    let disk = make_qcow2(work.path(), "node", 1, 16, 4);
    let err = rt()
        .block_on(publish(
            &request(&registry.host(), &disk, Compression::Gzip, "v1", &[]),
            Arc::new(NullReporter),
        ))
        .unwrap_err();
    assert!(matches!(err, PublishError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&registry.host()), "{err}");
    assert!(err.hint().unwrap().contains("running"), "{:?}", err.hint());
}

/// Stops the registry once the upload has sent `after` bytes, and waits until it is down.
struct StopMidUpload {
    uploading: AtomicBool,
    sent: AtomicU64,
    after: u64,
    registry: Mutex<Option<kib_test_infra::registry::Registry>>,
}

impl Reporter for StopMidUpload {
    fn on_blob_start(&self, _: kib_packager::BlobKind, phase: Phase, _: Option<&str>, _: u64) {
        self.uploading
            .store(phase == Phase::Upload, Ordering::SeqCst);
    }
    fn on_bytes(&self, n: u64) {
        if self.uploading.load(Ordering::SeqCst)
            && self.sent.fetch_add(n, Ordering::SeqCst) + n >= self.after
            && let Some(r) = self.registry.lock().unwrap().as_mut()
        {
            r.stop();
        }
    }
}

#[test]
fn registry_down_mid_push_leaves_no_tag() {
    let registry = start_registry(None);
    let host = registry.host();
    let work = tempfile::tempdir().unwrap();
    let disk = make_qcow2(work.path(), "node", 48, 128, 5);
    let reporter = Arc::new(StopMidUpload {
        uploading: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        after: 16 << 20,
        registry: Mutex::new(Some(registry)),
    });
    let err = rt()
        .block_on(publish(
            &request(&host, &disk, Compression::Gzip, "v2", &["v1.37"]),
            reporter.clone(),
        ))
        .unwrap_err();
    assert!(matches!(err, PublishError::LayerUpload { .. }), "{err:?}");
    let mut registry = reporter.registry.lock().unwrap().take().unwrap();
    assert!(!registry.is_running());
    registry.restart().unwrap();
    assert!(
        tags_of(&host, None).is_empty(),
        "a tag points at a partial image"
    );
    // The same publish now completes, and skopeo reads a complete image.
    let ok = rt()
        .block_on(publish(
            &request(&host, &disk, Compression::Gzip, "v2", &["v1.37"]),
            Arc::new(NullReporter),
        ))
        .unwrap();
    check_with_skopeo(&host, "v2", &disk, work.path(), None);
    assert_eq!(ok.tags, ["v2", "v1.37"]);
}

#[test]
fn existing_immutable_tag_is_refused_and_tags_stay() {
    let registry = start_registry(None);
    let work = tempfile::tempdir().unwrap();
    let a = make_qcow2(work.path(), "a", 2, 16, 6);
    let b = make_qcow2(work.path(), "b", 2, 16, 7);
    let rt = rt();
    let first = rt
        .block_on(publish(
            &request(
                &registry.host(),
                &a,
                Compression::Gzip,
                "v3.0.0",
                &["v1.37"],
            ),
            Arc::new(NullReporter),
        ))
        .unwrap();
    let err = rt
        .block_on(publish(
            &request(
                &registry.host(),
                &b,
                Compression::Gzip,
                "v3.0.0",
                &["v1.37"],
            ),
            Arc::new(NullReporter),
        ))
        .unwrap_err();
    assert!(
        matches!(&err, PublishError::TagExists { existing, .. } if *existing == first.digest),
        "{err:?}"
    );
    assert!(err.hint().unwrap().contains("immutable"));
    let moving = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/kib/node:v1.37", registry.host()),
    ]);
    let moving: serde_json::Value = serde_json::from_str(&moving).unwrap();
    assert_eq!(
        moving["Digest"],
        first.digest.as_str(),
        "the moving tag moved after a refused publish"
    );
}

#[test]
fn oci_layout_is_readable_by_skopeo_and_pushes_with_the_same_digest() {
    let registry = start_registry(None);
    let work = tempfile::tempdir().unwrap();
    let disk = make_qcow2(work.path(), "node", 4, 32, 8);
    let spec = LayerSpec::new(&disk, MTIME, Compression::Gzip);
    let req = request(&registry.host(), &disk, Compression::Gzip, "v4", &[]);
    let dir = work.path().join("layout");
    let image = kib_packager::layout::write_layout(
        &dir,
        &spec,
        &req.metadata,
        &["v4".into()],
        &NullReporter,
    )
    .unwrap();
    let extracted = work.path().join("x.qcow2");
    cdi_extract(&dir, &extracted);
    assert_eq!(sha256_file(&extracted), sha256_file(&disk));
    skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v4", dir.display()),
        &format!("docker://{}/kib/layout:v4", registry.host()),
    ]);
    let info: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/kib/layout:v4", registry.host()),
    ]))
    .unwrap();
    assert_eq!(info["Digest"], image.manifest_digest.as_str());
    // kib publish of the same inputs gives the same digest as kib package.
    let pushed = rt()
        .block_on(publish(&req, Arc::new(NullReporter)))
        .unwrap();
    assert_eq!(pushed.digest, image.manifest_digest);
}
