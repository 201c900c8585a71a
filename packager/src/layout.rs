//! `kib package`: the containerDisk as an OCI image layout directory (`oci-layout`,
//! `index.json`, `blobs/sha256/…`), readable by `skopeo copy oci:DIR …`.
//!
//! The layer is written once: streamed into a temporary file under `blobs/sha256/` while both
//! digests are computed, then renamed to its digest.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::image::{ImageMetadata, MANIFEST_MEDIA_TYPE, PreparedImage, prepare};
use crate::layer::{LayerError, LayerSpec, write_layer};
use crate::reporter::{BlobKind, BlobOutcome, Phase, Reporter};

/// Writing the OCI layout failed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A file or directory of the layout could not be written.
    #[error("Failed to write `{}` of the OCI layout", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The layer could not be written.
    #[error("Failed to write the layer into the OCI layout `{}`", dir.display())]
    Layer {
        /// The layout directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: LayerError,
    },
}

/// Writes the containerDisk for `spec` as an OCI image layout in `dir` (created if needed;
/// an existing `index.json` is replaced). Each of `tags` becomes an
/// `org.opencontainers.image.ref.name` entry in `index.json`.
pub fn write_layout(
    dir: &Path,
    spec: &LayerSpec,
    meta: &ImageMetadata,
    tags: &[String],
    reporter: &dyn Reporter,
) -> Result<PreparedImage, LayoutError> {
    let blobs = dir.join("blobs").join("sha256");
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LayoutError::Write { path, source }
    };
    fs_err::create_dir_all(&blobs).map_err(werr(&blobs))?;

    let tmp = tempfile::Builder::new()
        .prefix(".layer-")
        .tempfile_in(&blobs)
        .map_err(werr(&blobs))?;
    let size = fs_err::metadata(&spec.disk).map(|m| m.len()).unwrap_or(0);
    reporter.on_blob_start(BlobKind::Layer, Phase::Write, None, size);
    let layer = {
        let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
        let layer =
            write_layer(spec, &mut out, &mut |n| reporter.on_bytes(n)).map_err(|source| {
                LayoutError::Layer {
                    dir: dir.to_path_buf(),
                    source,
                }
            })?;
        out.flush().map_err(werr(tmp.path()))?;
        layer
    };
    tmp.as_file().sync_all().map_err(werr(tmp.path()))?;
    let layer_path = blob_path(&blobs, &layer.digest);
    tmp.persist(&layer_path).map_err(|e| LayoutError::Write {
        path: layer_path.clone(),
        source: e.error,
    })?;
    reporter.on_blob_done(BlobKind::Layer, &layer.digest, BlobOutcome::Done);

    let image = prepare(layer, spec.compression, meta);
    let config_path = blob_path(&blobs, &image.config_descriptor.digest);
    fs_err::write(&config_path, &image.config).map_err(werr(&config_path))?;
    reporter.on_blob_done(
        BlobKind::Config,
        &image.config_descriptor.digest,
        BlobOutcome::Done,
    );
    let manifest_path = blob_path(&blobs, &image.manifest_digest);
    fs_err::write(&manifest_path, &image.manifest).map_err(werr(&manifest_path))?;

    let entry = |tag: Option<&String>| {
        let mut e = json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        });
        if let Some(tag) = tag {
            e["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        }
        e
    };
    let manifests: Vec<_> = if tags.is_empty() {
        vec![entry(None)]
    } else {
        tags.iter().map(|t| entry(Some(t))).collect()
    };
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    let index_path = dir.join("index.json");
    fs_err::write(
        &index_path,
        serde_json::to_vec_pretty(&index).unwrap_or_default(),
    )
    .map_err(werr(&index_path))?;
    let layout_path = dir.join("oci-layout");
    fs_err::write(&layout_path, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(werr(&layout_path))?;
    reporter.on_manifest(&image.manifest_digest);
    Ok(image)
}

fn blob_path(blobs: &Path, digest: &str) -> PathBuf {
    blobs.join(digest.trim_start_matches("sha256:"))
}
