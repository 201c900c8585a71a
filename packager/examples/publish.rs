//! Publishes a qcow2 with the packager library alone, and times the passes: a release-build
//! stand-in for `kib publish` used for the measurements in `packager/README.md`.
//!
//! ```text
//! cargo run --release -p kib-packager --example publish -- DISK REPOSITORY TAG [gzip|zstd|none]
//! cargo run --release -p kib-packager --example publish -- DISK --hash-only [gzip|zstd|none]
//! cargo run --release -p kib-packager --example publish -- DISK --layout DIR [gzip|zstd|none]
//! ```

use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use kib_packager::NullReporter;
use kib_packager::image::ImageMetadata;
use kib_packager::layer::LayerSpec;
use kib_packager::push::{PublishRequest, RetryPolicy, hash_layer, publish};
use kib_packager::registry::RegistryOptions;
use kib_packager::tags::Tags;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let disk = args
        .first()
        .ok_or("usage: DISK (REPOSITORY TAG | --hash-only | --layout DIR) [compression]")?;
    let mut out = std::io::stdout().lock();
    let size = std::fs::metadata(disk)?.len() as f64 / 1048576.0;
    let compression_at = |i: usize| args.get(i).map_or(Ok(Default::default()), |c| c.parse());
    let start = Instant::now();
    match args.get(1).map(String::as_str) {
        Some("--hash-only") => {
            let spec = LayerSpec::new(disk, 0, compression_at(2)?);
            let d = hash_layer(&spec, Arc::new(NullReporter)).await?;
            writeln!(out, "hash pass: {} ({} bytes)", d.digest, d.size)?;
        }
        Some("--layout") => {
            let dir = args.get(2).ok_or("--layout DIR")?;
            let spec = LayerSpec::new(disk, 0, compression_at(3)?);
            let image = kib_packager::layout::write_layout(
                dir.as_ref(),
                &spec,
                &ImageMetadata::default(),
                &[],
                &NullReporter,
            )?;
            writeln!(
                out,
                "layout: {} layer {}",
                image.manifest_digest, image.layer.digest
            )?;
        }
        Some(repo) => {
            let tag = args.get(2).ok_or("TAG")?;
            let req = PublishRequest {
                repository: repo.parse()?,
                layer: LayerSpec::new(disk, 0, compression_at(3)?),
                metadata: ImageMetadata::default(),
                tags: Tags {
                    immutable: tag.clone(),
                    moving: Vec::new(),
                },
                options: RegistryOptions::default(),
                retry: RetryPolicy::default(),
                cache: None,
                disk_sha256: None,
            };
            let o = publish(&req, Arc::new(NullReporter)).await?;
            writeln!(
                out,
                "digest {}\ntags {:?}\nuploaded {:?}\nskipped {:?}\nsent {} bytes",
                o.digest, o.tags, o.uploaded, o.skipped, o.bytes_sent
            )?;
        }
        None => return Err("usage".into()),
    }
    let secs = start.elapsed().as_secs_f64();
    writeln!(
        out,
        "{size:.0} MiB in {secs:.2} s = {:.0} MiB/s",
        size / secs
    )?;
    Ok(())
}
