//! The offline fixture base image: a small Debian 12 cloud image that the VM tests boot instead
//! of Rocky Linux, which cannot be downloaded on the test machines.
//!
//! `tests/fixtures/base-image.sh` builds it from Debian packages through the host's apt sources
//! and caches it in [`fixture_dir`]. [`fixture_image`] returns the cached image and builds it
//! first when it is missing or was built by an older version of the script, so a plain
//! `cargo test --features test-vm` works on a fresh machine (after `scripts/setup-host.sh`).
//!
//! The image boots with GRUB on BIOS (`root=/dev/vda1 console=ttyS0 net.ifnames=0`), has one
//! ext4 partition that cloud-init grows to the disk, cloud-init with the datasources `NoCloud`,
//! `ConfigDrive` and `None`, systemd-networkd, sshd (host keys made at first boot), python3,
//! sudo and qemu-guest-agent. It has no default user: the seed creates the users.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use sha2::{Digest, Sha256};

/// File name of the fixture image inside [`fixture_dir`].
pub const IMAGE_NAME: &str = "debian-12-fixture.qcow2";
/// File name of the image's GNU-format sha256 file inside [`fixture_dir`].
pub const CHECKSUM_NAME: &str = "debian-12-fixture.qcow2.sha256";
/// File name of the stamp (the sha256 of the script that built the image) in [`fixture_dir`].
const STAMP_NAME: &str = "debian-12-fixture.stamp";
/// Lock held while a test checks or builds the image (the script also locks its own file).
const LOCK_NAME: &str = ".fixture.lock";
/// Build output of the last build, kept for the error message.
const LOG_NAME: &str = "debian-12-fixture.build.log";
/// Where the cache lives when `KIB_FIXTURE_DIR` is unset.
pub const DEFAULT_FIXTURE_DIR: &str = "/var/cache/kib/fixture";

/// An error while getting or building the fixture image.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The build script could not be read (to compute its checksum).
    #[error("Failed to read the fixture build script `{path}`")]
    ReadScript {
        /// The script.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The cache directory could not be created.
    #[error("Failed to create the fixture cache directory `{path}`")]
    CreateDir {
        /// The cache directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The build log could not be created.
    #[error("Failed to create the fixture build log `{path}`")]
    CreateLog {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The lock file could not be opened or locked.
    #[error("Failed to lock the fixture cache with `{path}`")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The build script could not be started.
    #[error("Failed to start the fixture build script `{script}`")]
    SpawnBuild {
        /// The script.
        script: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The build script ran and failed.
    #[error(
        "Building the fixture image with `{script}` failed ({status}); its output is in `{log}`"
    )]
    Build {
        /// The script.
        script: PathBuf,
        /// How it exited.
        status: ExitStatus,
        /// The file holding its stdout and stderr.
        log: PathBuf,
    },
    /// The build script succeeded but the image or its stamp is not there.
    #[error("The fixture build script `{script}` succeeded but left no current image at `{image}`")]
    Missing {
        /// The script.
        script: PathBuf,
        /// Where the image should be.
        image: PathBuf,
    },
}

impl FixtureError {
    /// What to do about it, when there is an obvious fix.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::CreateDir { .. } | Self::CreateLog { .. } | Self::Lock { .. } => Some(format!(
                "run the tests as root, or set `KIB_FIXTURE_DIR` to a writable directory \
                 (default `{DEFAULT_FIXTURE_DIR}`)"
            )),
            Self::SpawnBuild { .. } | Self::Build { .. } => Some(
                "the fixture is built as root with mmdebstrap, e2fsprogs, fdisk, grub-pc-bin and \
                 qemu-utils from the host's Debian bookworm apt sources: install them with \
                 `sudo scripts/setup-host.sh`, run `apt-get update`, then rerun the tests"
                    .to_owned(),
            ),
            Self::ReadScript { .. } | Self::Missing { .. } => None,
        }
    }
}

/// The root of the kib repository (the workspace directory).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The script that builds the fixture image: `tests/fixtures/base-image.sh`.
pub fn fixture_script() -> PathBuf {
    repo_root().join("tests/fixtures/base-image.sh")
}

/// The fixture cache directory: `KIB_FIXTURE_DIR`, or [`DEFAULT_FIXTURE_DIR`].
pub fn fixture_dir() -> PathBuf {
    std::env::var_os("KIB_FIXTURE_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_FIXTURE_DIR), PathBuf::from)
}

/// Returns the path of the cached fixture image (qcow2, virtual size 2 GiB), building it first
/// with `tests/fixtures/base-image.sh` when it is missing or stale.
///
/// Safe to call from several tests and processes at once: the check and the build happen
/// under an exclusive `flock` on a lock file in [`fixture_dir`]. Use the image as the backing
/// file of a qcow2 overlay; never boot it directly.
pub fn fixture_image() -> Result<PathBuf, FixtureError> {
    let script = fixture_script();
    let dir = fixture_dir();
    let image = dir.join(IMAGE_NAME);
    let script_sum = sha256_hex(&script)?;
    if is_current(&dir, &script_sum) {
        return Ok(image);
    }

    fs_err::create_dir_all(&dir).map_err(|source| FixtureError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let lock_path = dir.join(LOCK_NAME);
    let lock = fs_err::File::create(&lock_path)
        .and_then(|file| file.lock().map(|()| file))
        .map_err(|source| FixtureError::Lock {
            path: lock_path.clone(),
            source,
        })?;
    // Another test may have built it while this one waited for the lock.
    if is_current(&dir, &script_sum) {
        return Ok(image);
    }

    let log_path = dir.join(LOG_NAME);
    let log = fs_err::File::create(&log_path).map_err(|source| FixtureError::CreateLog {
        path: log_path.clone(),
        source,
    })?;
    let log_err = log
        .file()
        .try_clone()
        .map_err(|source| FixtureError::CreateLog {
            path: log_path.clone(),
            source,
        })?;
    tracing::info!(script = %script.display(), dir = %dir.display(), "building the fixture image");
    let status = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(log.into_parts().0)
        .stderr(log_err)
        .status()
        .map_err(|source| FixtureError::SpawnBuild {
            script: script.clone(),
            source,
        })?;
    drop(lock);
    if !status.success() {
        return Err(FixtureError::Build {
            script,
            status,
            log: log_path,
        });
    }
    if !is_current(&dir, &script_sum) {
        return Err(FixtureError::Missing { script, image });
    }
    tracing::info!(image = %image.display(), "fixture image ready");
    Ok(image)
}

/// Whether the image, its checksum and a stamp naming this version of the script are there.
fn is_current(dir: &Path, script_sum: &str) -> bool {
    let stamp = fs_err::read_to_string(dir.join(STAMP_NAME)).unwrap_or_default();
    stamp.trim() == script_sum
        && dir.join(IMAGE_NAME).is_file()
        && dir.join(CHECKSUM_NAME).is_file()
}

/// The sha256 of a file, as lowercase hex (what `sha256sum` prints).
fn sha256_hex(path: &Path) -> Result<String, FixtureError> {
    let bytes = fs_err::read(path).map_err(|source| FixtureError::ReadScript {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_root_holds_the_fixture_script() {
        assert!(fixture_script().is_file(), "{}", fixture_script().display());
        assert!(repo_root().join("Cargo.toml").is_file());
    }

    #[test]
    fn stamp_must_name_the_current_script() {
        let dir = tempfile::tempdir().unwrap();
        let sum = sha256_hex(&fixture_script()).unwrap();
        assert_eq!(sum.len(), 64);
        assert!(
            !is_current(dir.path(), &sum),
            "an empty cache is not current"
        );
        fs_err::write(dir.path().join(IMAGE_NAME), b"qcow2").unwrap();
        fs_err::write(dir.path().join(CHECKSUM_NAME), b"x").unwrap();
        fs_err::write(dir.path().join(STAMP_NAME), "0".repeat(64)).unwrap();
        assert!(
            !is_current(dir.path(), &sum),
            "a stamp of another script is stale"
        );
        fs_err::write(dir.path().join(STAMP_NAME), format!("{sum}\n")).unwrap();
        assert!(is_current(dir.path(), &sum));
    }

    #[test]
    fn build_failure_hints_at_setup_host() {
        let err = FixtureError::SpawnBuild {
            script: fixture_script(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(err.hint().unwrap().contains("scripts/setup-host.sh"));
        assert!(err.to_string().starts_with("Failed to start"));
    }
}
