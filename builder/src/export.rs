//! Export: the build disk (an overlay on the base image) becomes one standalone image.
//!
//! `qemu-img convert` flattens the backing chain into `<name>.qcow2` (or `<name>.raw`):
//! - `zstd` (default): `-c -o compression_type=zstd -W -m 16`, about 6x faster than zlib to
//!   write and readable by any QEMU >= 5.1 built with zstd, which includes current KubeVirt
//!   launchers and the CDI importer;
//! - `zlib`: `-c -W -m 16`, for old QEMU (Debian bookworm's 7.2, Longhorn); `-W -m 16` only
//!   changes how the file is written, not what readers need;
//! - `none`: no compression; `raw` output is never compressed.
//!
//! The image is written under a temporary name in the output folder, checked with
//! `qemu-img info` (it must have no backing file), hashed, and only then renamed, together with
//! `<file>.sha256` (GNU `sha256sum` format). A failure leaves nothing under the final names.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use kib_manifest::Hint;

use crate::checksum::{Checksum, sha256_file};
use crate::config::{Compression, ImageFormat};

/// Errors from exporting the image.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// `qemu-img` is not installed (or not on `PATH`).
    #[error("`qemu-img` was not found")]
    QemuImgMissing(#[source] std::io::Error),
    /// `qemu-img` could not be started.
    #[error("Failed to run `qemu-img {command}`")]
    Spawn {
        /// The sub-command (`convert`, `info`).
        command: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `qemu-img` failed.
    #[error("`qemu-img {command}` failed on `{path}`")]
    QemuImg {
        /// The sub-command (`convert`, `info`).
        command: &'static str,
        /// The image it worked on.
        path: PathBuf,
        /// Its exit status and error output.
        #[source]
        source: ToolFailed,
    },
    /// `qemu-img info` printed something that is not the expected JSON.
    #[error("Failed to read the output of `qemu-img info` for `{path}`")]
    Info {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The exported image still refers to a backing file.
    #[error("The exported image `{path}` still has a backing file `{backing}`")]
    HasBackingFile {
        /// The (temporary) image.
        path: PathBuf,
        /// Its backing file.
        backing: String,
    },
    /// The output name cannot be a file name.
    #[error("`{name}` is not a valid output name")]
    BadName {
        /// The name.
        name: String,
    },
    /// A file or folder in the output folder could not be written, hashed or renamed.
    #[error("Failed to write `{path}`")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A tool's exit status and the end of its error output.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {stderr}")]
pub struct ToolFailed {
    /// The exit status.
    pub status: ExitStatus,
    /// Its standard error, trimmed.
    pub stderr: String,
}

impl Hint for ExportError {
    /// A suggestion for fixing the error, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            ExportError::QemuImgMissing(_) => Some(
                "install qemu-img (Debian/Ubuntu: `apt install qemu-utils`; Fedora/RHEL: `dnf install qemu-img`), \
                 or run scripts/setup-host.sh"
                    .to_owned(),
            ),
            ExportError::QemuImg { source, .. }
                if source.stderr.contains("compression") || source.stderr.contains("zstd") =>
            {
                Some("this qemu-img may lack zstd support (QEMU >= 5.1 built with zstd); use `--compression zlib`".to_owned())
            }
            _ => None,
        }
    }
}

/// The exported image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedImage {
    /// `<out_dir>/<name>.qcow2` (or `.raw`).
    pub path: PathBuf,
    /// `<path>.sha256`, in GNU `sha256sum` format.
    pub checksum_path: PathBuf,
    /// The image file's SHA-256.
    pub sha256: Checksum,
    /// The disk size the guest sees, in bytes.
    pub virtual_size: u64,
    /// The file's length in bytes.
    pub file_size: u64,
    /// The format written.
    pub format: ImageFormat,
    /// The compression used (`none` for raw, whatever was asked).
    pub compression: Compression,
}

/// The parts of `qemu-img info --output=json` used here.
#[derive(Debug, serde::Deserialize)]
struct ImageInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "backing-filename")]
    backing_filename: Option<String>,
    #[serde(rename = "format-specific")]
    format_specific: Option<FormatSpecific>,
}

#[derive(Debug, serde::Deserialize)]
struct FormatSpecific {
    data: Option<serde_json::Value>,
}

impl ImageInfo {
    fn compression_type(&self) -> Option<&str> {
        self.format_specific
            .as_ref()?
            .data
            .as_ref()?
            .get("compression-type")?
            .as_str()
    }
}

/// Converts `disk` (the build VM's qcow2, whose backing chain kib made over a base image that
/// [`kib_vm::image::inspect`] accepted) into `<out_dir>/<name>.<format>` plus
/// `<name>.<format>.sha256`. The input is read as qcow2, never probed.
pub async fn export(
    disk: &Path,
    out_dir: &Path,
    name: &str,
    format: ImageFormat,
    compression: Compression,
) -> Result<ExportedImage, ExportError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(ExportError::BadName {
            name: name.to_owned(),
        });
    }
    let compression = if format == ImageFormat::Raw {
        Compression::None
    } else {
        compression
    };
    let file_name = format!("{name}.{}", format.extension());
    let final_path = out_dir.join(&file_name);
    let checksum_path = out_dir.join(format!("{file_name}.sha256"));
    tokio::fs::create_dir_all(out_dir)
        .await
        .map_err(|source| ExportError::Write {
            path: out_dir.to_owned(),
            source,
        })?;

    let input = info(disk, "qcow2").await?;
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".partial")
        // Outputs are for sharing (a web server, another user's publish): 0644 less
        // the umask, like any file, not tempfile's private 0600.
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(out_dir)
        .map_err(|source| ExportError::Write {
            path: out_dir.to_owned(),
            source,
        })?;

    let mut args: Vec<String> = vec![
        "convert".into(),
        "-f".into(),
        input.format.clone(),
        "-O".into(),
    ];
    args.push(format.as_str().into());
    match compression {
        Compression::Zstd => args.extend(["-c", "-o", "compression_type=zstd"].map(String::from)),
        Compression::Zlib => args.push("-c".into()),
        Compression::None => {}
    }
    // Out-of-order writes with 16 coroutines: safe for a fresh target, faster everywhere.
    args.extend(["-W", "-m", "16"].map(String::from));
    tracing::info!(disk = %disk.display(), %format, %compression, "exporting the image");
    run(&args, [disk, temp.path()], "convert", disk).await?;

    let output = info(temp.path(), format.as_str()).await?;
    if let Some(backing) = output.backing_filename {
        return Err(ExportError::HasBackingFile {
            path: temp.path().to_owned(),
            backing,
        });
    }
    if compression == Compression::Zstd && output.compression_type() != Some("zstd") {
        tracing::warn!(found = ?output.compression_type(), "qemu-img did not record zstd compression");
    }

    let temp_path = temp.path().to_owned();
    let (sha256, file_size) = tokio::task::spawn_blocking(move || sha256_file(&temp_path))
        .await
        .map_err(|e| ExportError::Write {
            path: temp.path().to_owned(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| ExportError::Write {
            path: temp.path().to_owned(),
            source,
        })?;

    let mut sidecar = tempfile::Builder::new()
        .prefix(&format!(".{file_name}.sha256."))
        .suffix(".partial")
        // Outputs are for sharing (a web server, another user's publish): 0644 less
        // the umask, like any file, not tempfile's private 0600.
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(out_dir)
        .map_err(|source| ExportError::Write {
            path: out_dir.to_owned(),
            source,
        })?;
    {
        use std::io::Write as _;
        writeln!(sidecar, "{}  {file_name}", sha256.hex())
            .and_then(|()| sidecar.as_file().sync_all())
            .map_err(|source| ExportError::Write {
                path: checksum_path.clone(),
                source,
            })?;
    }
    temp.as_file()
        .sync_all()
        .map_err(|source| ExportError::Write {
            path: final_path.clone(),
            source,
        })?;
    temp.persist(&final_path).map_err(|e| ExportError::Write {
        path: final_path.clone(),
        source: e.error,
    })?;
    if let Err(e) = sidecar.persist(&checksum_path) {
        let _ = std::fs::remove_file(&final_path);
        return Err(ExportError::Write {
            path: checksum_path,
            source: e.error,
        });
    }
    tracing::info!(path = %final_path.display(), bytes = file_size, "image exported");
    Ok(ExportedImage {
        path: final_path,
        checksum_path,
        sha256,
        virtual_size: output.virtual_size,
        file_size,
        format,
        compression,
    })
}

/// `qemu-img info` with the format given, never probed.
async fn info(path: &Path, format: &str) -> Result<ImageInfo, ExportError> {
    let args = [
        "info".to_owned(),
        "--output=json".to_owned(),
        "-f".to_owned(),
        format.to_owned(),
    ];
    let stdout = run(&args, [path], "info", path).await?;
    serde_json::from_slice(&stdout).map_err(|source| ExportError::Info {
        path: path.to_owned(),
        source,
    })
}

async fn run<const N: usize>(
    args: &[String],
    paths: [&Path; N],
    command: &'static str,
    subject: &Path,
) -> Result<Vec<u8>, ExportError> {
    let output = tokio::process::Command::new("qemu-img")
        .args(args)
        .args(paths)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ExportError::QemuImgMissing(source),
            _ => ExportError::Spawn { command, source },
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(ExportError::QemuImg {
            command,
            path: subject.to_owned(),
            source: ToolFailed {
                status: output.status,
                stderr,
            },
        });
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_img_info() {
        let json = r#"{"virtual-size": 67108864, "filename": "o.qcow2", "cluster-size": 65536,
            "format": "qcow2", "actual-size": 200704, "backing-filename": "base.qcow2",
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "compression-type": "zstd"}},
            "dirty-flag": false}"#;
        let info: ImageInfo = serde_json::from_str(json).unwrap();
        assert_eq!(info.virtual_size, 64 << 20);
        assert_eq!(info.backing_filename.as_deref(), Some("base.qcow2"));
        assert_eq!(info.compression_type(), Some("zstd"));
        let raw: ImageInfo =
            serde_json::from_str(r#"{"virtual-size": 1, "format": "raw", "actual-size": 0}"#)
                .unwrap();
        assert_eq!(raw.compression_type(), None);
    }

    #[test]
    fn missing_qemu_img_has_a_hint() {
        let e = ExportError::QemuImgMissing(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(e.hint().unwrap().contains("qemu-utils"));
    }
}
