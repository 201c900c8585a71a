//! The image under test: a qcow2 path, an OCI image layout, or a registry reference, turned
//! into a local disk file the way CDI imports a registry image: walk the layers in order,
//! decompress each by its magic bytes (gzip, zstd or a plain tar), and extract the first
//! regular file under `disk/` (or `./disk/`) that is not a whiteout.
//!
//! Registry references are copied into a temporary OCI layout with `skopeo copy` first.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use kib_manifest::Hint;
use oci_spec::image::{Digest, ImageIndex, ImageManifest};
use serde::Deserialize;

/// Where the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A disk file (qcow2 or raw).
    File(PathBuf),
    /// An OCI image layout directory (`oci-layout` + `index.json`), optionally `DIR:TAG`.
    Layout {
        /// The directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick, if given.
        tag: Option<String>,
    },
    /// A registry reference (`host/repo:tag`, `docker://…`).
    Registry(String),
}

impl ImageSource {
    /// Classifies `arg`: an existing file, an existing layout directory (also `oci:DIR[:TAG]`),
    /// else a registry reference.
    pub fn parse(arg: &str) -> Self {
        if let Some(rest) = arg.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if Path::new(d).is_dir() => (d, Some(t.to_owned())),
                _ => (rest, None),
            };
            return Self::Layout {
                dir: dir.into(),
                tag,
            };
        }
        let path = Path::new(arg);
        if path.is_dir() {
            return Self::Layout {
                dir: path.into(),
                tag: None,
            };
        }
        if path.is_file() || arg.starts_with('/') || arg.starts_with('.') {
            return Self::File(path.into());
        }
        Self::Registry(arg.strip_prefix("docker://").unwrap_or(arg).to_owned())
    }
}

/// Errors while getting the disk out of the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The disk file does not exist.
    #[error("The image `{path}` does not exist")]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// A file of the layout could not be read.
    #[error("Failed to read `{path}` of the OCI layout")]
    ReadLayout {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file of the layout is not what the OCI image spec says.
    #[error("`{path}` is not a valid OCI {what}")]
    ParseLayout {
        /// The file.
        path: PathBuf,
        /// `index` or `manifest`.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The layout index has no manifest for the tag (or several and no tag was given).
    #[error("The OCI layout `{dir}` has no single image manifest{}", tag.as_ref().map(|t| format!(" tagged `{t}`")).unwrap_or_default())]
    NoManifest {
        /// The layout.
        dir: PathBuf,
        /// The tag asked for.
        tag: Option<String>,
    },
    /// Reading or extracting a layer failed.
    #[error("Failed to read layer `{digest}`")]
    Layer {
        /// The layer digest.
        digest: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No layer has a file under `disk/`.
    #[error("No layer of `{image}` has a file under `disk/`, so it is not a containerDisk")]
    NoDisk {
        /// The image.
        image: String,
    },
    /// `skopeo copy` could not be started or failed.
    #[error("Failed to pull `{reference}` with skopeo: {stderr}")]
    Pull {
        /// The reference.
        reference: String,
        /// skopeo's stderr.
        stderr: String,
    },
}

impl Hint for ImageError {
    /// A suggestion, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            Self::Pull { .. } => Some(
                "install skopeo (`apt-get install skopeo`) and check the reference and your registry login"
                    .to_owned(),
            ),
            Self::NoDisk { .. } => Some("build the image with `kib package` or `kib publish`".to_owned()),
            _ => None,
        }
    }
}

/// The blob file of `digest` in the layout at `dir`. Parsing a [`Digest`] checks its grammar
/// (algorithm `[a-z0-9+._-]`, encoded part `[a-zA-Z0-9=_-]`, 64 hex for sha256), so a hostile
/// index or manifest cannot name a path outside `blobs/`.
fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm().to_string())
        .join(digest.digest())
}

fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    what: &'static str,
) -> Result<T, ImageError> {
    let bytes = fs_err::read(path).map_err(|source| ImageError::ReadLayout {
        path: path.into(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| ImageError::ParseLayout {
        path: path.into(),
        what,
        source,
    })
}

/// A reader that decompresses by magic bytes: gzip, zstd, or the bytes as they are (tar).
fn decompressed(file: fs_err::File) -> std::io::Result<Box<dyn Read>> {
    let mut r = BufReader::new(file);
    let magic = {
        use std::io::BufRead;
        r.fill_buf()?
            .get(..4)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    };
    Ok(match magic.as_slice() {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(r)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        _ => Box::new(r),
    })
}

/// Extracts the disk of the OCI layout at `dir` (image `tag`, or the only one) to `dest`.
pub fn extract_from_layout(dir: &Path, tag: Option<&str>, dest: &Path) -> Result<(), ImageError> {
    let index: ImageIndex = read_json(&dir.join("index.json"), "index")?;
    let candidates: Vec<_> = index
        .manifests()
        .iter()
        .filter(|m| {
            tag.is_none_or(|t| {
                m.annotations()
                    .as_ref()
                    .and_then(|a| a.get(oci_spec::image::ANNOTATION_REF_NAME))
                    .map(String::as_str)
                    == Some(t)
            })
        })
        .collect();
    let [manifest] = candidates.as_slice() else {
        return Err(ImageError::NoManifest {
            dir: dir.into(),
            tag: tag.map(str::to_owned),
        });
    };
    let manifest: ImageManifest = read_json(&blob_path(dir, manifest.digest()), "manifest")?;
    for layer in manifest.layers() {
        let err = |source| ImageError::Layer {
            digest: layer.digest().to_string(),
            source,
        };
        tracing::debug!(digest = %layer.digest(), media_type = %layer.media_type(), "reading layer");
        let file = fs_err::File::open(blob_path(dir, layer.digest())).map_err(err)?;
        let mut archive = tar::Archive::new(decompressed(file).map_err(err)?);
        for entry in archive.entries().map_err(err)? {
            let mut entry = entry.map_err(err)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry.path().map_err(err)?.into_owned();
            let path = path.strip_prefix("./").unwrap_or(&path).to_owned();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !path.starts_with("disk")
                || path.components().count() != 2
                || name.starts_with(".wh.")
            {
                continue;
            }
            let mut out = fs_err::File::create(dest).map_err(err)?;
            std::io::copy(&mut entry, &mut out).map_err(err)?;
            return Ok(());
        }
    }
    Err(ImageError::NoDisk {
        image: dir.display().to_string(),
    })
}

/// Copies `reference` into an OCI layout at `layout` with skopeo (`--src-tls-verify` follows
/// `tls_verify`).
pub async fn pull_to_layout(
    reference: &str,
    layout: &Path,
    tls_verify: bool,
) -> Result<(), ImageError> {
    let out = tokio::process::Command::new("skopeo")
        .arg("copy")
        .arg(format!("--src-tls-verify={tls_verify}"))
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:image", layout.display()))
        .output()
        .await
        .map_err(|e| ImageError::Pull {
            reference: reference.to_owned(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ImageError::Pull {
            reference: reference.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Resolves `source` to a local disk file, extracting into `work` when needed.
pub async fn resolve(
    source: &ImageSource,
    work: &Path,
    tls_verify: bool,
) -> Result<PathBuf, ImageError> {
    match source {
        ImageSource::File(p) => {
            if p.is_file() {
                Ok(p.clone())
            } else {
                Err(ImageError::NotFound { path: p.clone() })
            }
        }
        ImageSource::Layout { dir, tag } => {
            let dest = work.join("image.disk");
            extract_from_layout(dir, tag.as_deref(), &dest)?;
            Ok(dest)
        }
        ImageSource::Registry(r) => {
            let layout = work.join("pulled");
            pull_to_layout(r, &layout, tls_verify).await?;
            let dest = work.join("image.disk");
            extract_from_layout(&layout, Some("image"), &dest)?;
            Ok(dest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2_free_digest as digest;

    /// A non-cryptographic stand-in for digests: the test only needs unique names.
    mod sha2_free_digest {
        pub fn of(data: &[u8]) -> String {
            let mut h: u64 = 0xcbf29ce484222325;
            for b in data {
                h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
            }
            format!("sha256:{h:064x}")
        }
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o555);
                b.append_data(&mut h, path, &[][..]).unwrap();
            } else {
                h.set_size(data.len() as u64);
                h.set_mode(0o444);
                b.append_data(&mut h, path, *data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn layout(dir: &Path, layers: Vec<Vec<u8>>, tag: &str) {
        fs_err::create_dir_all(dir.join("blobs/sha256")).unwrap();
        let put = |data: &[u8]| {
            let d = digest::of(data);
            fs_err::write(blob_path(dir, &d.parse().unwrap()), data).unwrap();
            d
        };
        let layer_descs: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(l), "size": l.len()}))
            .collect();
        let manifest = serde_json::json!({"schemaVersion": 2, "layers": layer_descs, "config": {"digest": format!("sha256:{}", "0".repeat(64)), "size": 0, "mediaType": "x"}});
        let m = serde_json::to_vec(&manifest).unwrap();
        let md = put(&m);
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": m.len(), "annotations": {"org.opencontainers.image.ref.name": tag}}]});
        fs_err::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        fs_err::write(dir.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}").unwrap();
    }

    #[test]
    fn extracts_the_disk_from_gzip_zstd_and_plain_layers() {
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &tar_of(&[("etc/", b""), ("etc/x", b"nope")]))
                .unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(
            &tar_of(&[
                ("./disk/", b""),
                ("./disk/.wh.old", b""),
                ("./disk/disk.qcow2", b"QFI\xfbzstd"),
            ])[..],
            3,
        )
        .unwrap();
        let plain = tar_of(&[("disk/", b""), ("disk/other.img", b"later")]);
        let dir = tempfile::tempdir().unwrap();
        layout(&dir.path().join("l"), vec![gz, zst, plain], "v1");
        let dest = dir.path().join("out");
        extract_from_layout(&dir.path().join("l"), None, &dest).unwrap();
        assert_eq!(
            fs_err::read(&dest).unwrap(),
            b"QFI\xfbzstd",
            "the first disk/ file wins, whiteouts skipped"
        );
        extract_from_layout(&dir.path().join("l"), Some("v1"), &dest).unwrap();
        let err = extract_from_layout(&dir.path().join("l"), Some("v2"), &dest).unwrap_err();
        assert!(matches!(err, ImageError::NoManifest { .. }), "{err:?}");
    }

    #[test]
    fn an_image_without_disk_is_not_a_containerdisk() {
        let dir = tempfile::tempdir().unwrap();
        layout(
            &dir.path().join("l"),
            vec![tar_of(&[("disk/", b""), ("etc/a", b"x")])],
            "t",
        );
        let err =
            extract_from_layout(&dir.path().join("l"), None, &dir.path().join("o")).unwrap_err();
        assert!(matches!(err, ImageError::NoDisk { .. }), "{err:?}");
        assert!(err.hint().unwrap().contains("kib package"));
    }

    #[test]
    fn classifies_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.qcow2");
        fs_err::write(&f, b"x").unwrap();
        assert_eq!(
            ImageSource::parse(f.to_str().unwrap()),
            ImageSource::File(f.clone())
        );
        assert_eq!(
            ImageSource::parse(dir.path().to_str().unwrap()),
            ImageSource::Layout {
                dir: dir.path().into(),
                tag: None
            }
        );
        assert_eq!(
            ImageSource::parse(&format!("oci:{}:v1", dir.path().display())),
            ImageSource::Layout {
                dir: dir.path().into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageSource::parse("docker://registry.example:5000/capk/node:v1.37.1"),
            ImageSource::Registry("registry.example:5000/capk/node:v1.37.1".into())
        );
        assert_eq!(
            ImageSource::parse("./missing.qcow2"),
            ImageSource::File("./missing.qcow2".into())
        );
    }
}
