//! The packager: turns a qcow2 into a KubeVirt containerDisk OCI image and ships it.
//!
//! The image has one layer: the directory `disk/` (0555) holding exactly one file,
//! `disk/disk.qcow2` (0444), both owned by uid/gid 107 (`qemu`), with fixed mtimes, so the
//! same qcow2 always gives the same digests. The pieces:
//! - [`layer`]: the deterministic layer, written in one streaming pass (tar, compression,
//!   both SHA-256s) — stored gzip by default, zstd or none as options;
//! - [`image`]: the OCI image config and manifest (labels, annotations, KubeVirt env);
//! - [`layout`]: `kib package`, an OCI image layout on disk;
//! - [`registry`]: registry options and credentials (shared with the signer);
//! - [`transport`]: the registry clients: plain HTTP, extra CA roots, per-host skipped TLS checks;
//! - [`push`]: `kib publish`, the streaming push with HEAD checks, retries and tags;
//! - [`tags`]: the tag scheme (git tag, Kubernetes version, short sha);
//! - [`inputs`]: the user's inputs (qcow2, build manifest, labels, tag templates) resolved
//!   into the layer, metadata and tags `kib package` and `kib publish` use;
//! - [`build_info`]: what the image records about the build (from the build manifest) and
//!   the fixed build time.
//!
//! Nothing here prints: progress goes through [`Reporter`], failures are typed errors.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kib_packager::{image::ImageMetadata, layer::{Compression, LayerSpec}, layout, NullReporter};
//! let spec = LayerSpec::new("out/node.qcow2", 0, Compression::Gzip);
//! let image = layout::write_layout("oci-dir".as_ref(), &spec, &ImageMetadata::default(), &["v1.37.1".into()], &NullReporter)?;
//! assert!(image.manifest_digest.starts_with("sha256:"));
//! # Ok(()) }
//! ```

pub mod build_info;
pub mod image;
pub mod inputs;
pub mod layer;
pub mod layout;
pub mod push;
pub mod registry;
pub mod reporter;
pub mod tags;
pub mod transport;
pub mod upload;

pub use reporter::{BlobKind, BlobOutcome, NullReporter, Phase, Reporter};
