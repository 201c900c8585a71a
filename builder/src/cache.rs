//! The base image: downloaded once, verified, and cached by checksum.
//!
//! Layout of the cache directory (default `$XDG_CACHE_HOME/kib`, else `~/.cache/kib`):
//! ```text
//! images/sha256-<hex>.img          a verified image, named by its SHA-256
//! images/.download-XXXXXX.partial  a download in progress (deleted if it fails)
//! ```
//! A cached image is **re-hashed** every time it is reused (about 0.5 s for a 545 MB Rocky
//! image with SHA-NI): a stamp could not notice a file damaged or edited after it was cached.
//! A cached copy that no longer matches its name is deleted and downloaded again.
//!
//! Downloads stream into a temporary file in the cache directory while the SHA-256 is
//! computed, so nothing is read twice; only a verified file is renamed to its final name.
//! Local images (a path instead of a URL) are verified in place and never copied.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use kib_manifest::Hint;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use url::Url;

use crate::Reporter;
use crate::checksum::{self, Checksum, ChecksumError, ChecksumFile, ChecksumSource};
use crate::redact::redact_url;

/// How long to wait for a TCP/TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a download may stall without receiving a byte.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Read size when hashing files.
const HASH_BUFFER: usize = 1 << 20;

/// Errors from finding, downloading and verifying the base image.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The image names other files or has a format kib does not accept.
    #[error("The base image `{image}` is refused")]
    Refused {
        /// The source, with any credentials removed.
        image: String,
        /// Why.
        #[source]
        source: kib_vm::image::DiskImageError,
    },
    /// The image source is a URL with a scheme kib cannot download.
    #[error("Base image `{image}` is neither an http(s) URL nor a local path")]
    UnsupportedSource {
        /// The source, with any credentials removed.
        image: String,
    },
    /// The image source has no file name (e.g. a URL ending in `/`).
    #[error("Base image `{image}` does not name a file")]
    NoFileName {
        /// The source, with any credentials removed.
        image: String,
    },
    /// Neither a checksum nor `--insecure-skip-checksum` was given.
    #[error("No checksum is given for base image `{image}`")]
    NoChecksum {
        /// The source, with any credentials removed.
        image: String,
    },
    /// No cache directory could be found.
    #[error("No cache directory: neither XDG_CACHE_HOME nor HOME is set")]
    NoCacheDir,
    /// The HTTP client could not be created.
    #[error("Failed to create the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The server answered with an error status.
    #[error("Server answered {status} for {url}")]
    Http {
        /// The URL, with any credentials removed.
        url: String,
        /// The HTTP status.
        status: reqwest::StatusCode,
    },
    /// The connection failed or broke during a transfer.
    #[error("Failed to download {url}")]
    Download {
        /// The URL, with any credentials removed.
        url: String,
        /// The cause (its URL removed).
        #[source]
        source: reqwest::Error,
    },
    /// The server closed the connection before sending everything it announced.
    #[error("Download of {url} stopped after {received} of {expected} bytes")]
    Truncated {
        /// The URL, with any credentials removed.
        url: String,
        /// The announced length.
        expected: u64,
        /// The bytes received.
        received: u64,
    },
    /// A CHECKSUM file on disk could not be read.
    #[error("Failed to read checksum file `{path}`")]
    ReadChecksumFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image could not be found in (or the CHECKSUM file could not be parsed).
    #[error("Failed to find the checksum of `{name}` in {checksum_file}")]
    ChecksumLookup {
        /// The image file name that was looked up.
        name: String,
        /// Where the CHECKSUM file came from (credentials removed).
        checksum_file: String,
        /// The cause.
        #[source]
        source: ChecksumError,
    },
    /// The downloaded image does not match the expected checksum; it was deleted.
    #[error(
        "Checksum mismatch for {url}: expected {expected}, got {actual} (the download was deleted)"
    )]
    DownloadMismatch {
        /// The URL, with any credentials removed.
        url: String,
        /// The checksum that was asked for.
        expected: Checksum,
        /// The checksum of what was downloaded.
        actual: Checksum,
    },
    /// A local image does not match the expected checksum (it is left alone).
    #[error("Checksum mismatch for `{path}`: expected {expected}, got {actual}")]
    LocalMismatch {
        /// The image.
        path: PathBuf,
        /// The checksum that was asked for.
        expected: Checksum,
        /// The checksum of the file.
        actual: Checksum,
    },
    /// A local base image does not exist.
    #[error("Base image `{path}` does not exist")]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("Failed to read `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory in the cache could not be written.
    #[error("Failed to write `{path}` in the cache")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Hint for CacheError {
    /// A suggestion for fixing the error, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            CacheError::Refused { source, .. } => source.hint(),
            CacheError::NoChecksum { .. } => Some(
                "pass `--base-checksum sha256:…|file:URL` (or set `checksum` in `[base]` of kib.toml), \
                 or `--insecure-skip-checksum` to use the image unverified"
                    .to_owned(),
            ),
            CacheError::NoCacheDir => Some("set XDG_CACHE_HOME or pass `--cache-dir`".to_owned()),
            CacheError::Http { status, .. } if *status == reqwest::StatusCode::NOT_FOUND => Some(
                "check the URL; Rocky Linux moves older minor releases to https://dl.rockylinux.org/vault/rocky/"
                    .to_owned(),
            ),
            CacheError::Http { status, .. }
                if *status == reqwest::StatusCode::UNAUTHORIZED || *status == reqwest::StatusCode::FORBIDDEN =>
            {
                Some("the server refused access; put credentials in the URL (`https://user:pass@host/…`)".to_owned())
            }
            CacheError::Download { .. } | CacheError::Truncated { .. } => Some(
                "check the network (and HTTPS_PROXY); or download the image yourself and pass its path".to_owned(),
            ),
            CacheError::DownloadMismatch { .. } => Some(
                "the image may have changed since the checksum was taken (a `latest` link moves); \
                 use the `file:…/CHECKSUM` published next to it, or update the checksum"
                    .to_owned(),
            ),
            CacheError::ChecksumLookup { source, .. } => source.hint(),
            _ => None,
        }
    }
}

/// The default cache directory: `$XDG_CACHE_HOME/kib`, else `$HOME/.cache/kib`.
pub fn default_cache_dir() -> Result<PathBuf, CacheError> {
    let from_env = |name| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = from_env("XDG_CACHE_HOME") {
        return Ok(xdg.join("kib"));
    }
    from_env("HOME")
        .map(|home| home.join(".cache").join("kib"))
        .ok_or(CacheError::NoCacheDir)
}

/// Where a base image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseImage {
    /// Downloaded over HTTP(S) into the cache.
    Url(Url),
    /// A file on disk, used in place.
    Path(PathBuf),
}

/// A base image ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The verified file (in the cache, or the local path as given).
    pub path: PathBuf,
    /// Its SHA-256 (computed, and equal to the expected one when one was given).
    pub checksum: Checksum,
    /// The image's file name (last URL path segment or file name), e.g.
    /// `Rocky-10-GenericCloud-Base.latest.x86_64.qcow2`.
    pub name: String,
    /// Where it came from: the URL (credentials removed) or the local path.
    pub source: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its disk format, decided from its bytes by [`kib_vm::image::inspect`]: `qcow2` or `raw`
    /// (for `qemu-img -F`). Images that name other files (a backing file, an external data
    /// file, VMDK extents) are refused before they get here.
    pub format: String,
    /// Whether a cached copy was used instead of downloading.
    pub from_cache: bool,
}

impl BaseImage {
    /// Reads a source: an `http(s)://` URL, a `file://` URL, or a path.
    pub fn parse(source: &str) -> Result<BaseImage, CacheError> {
        match Url::parse(source) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(BaseImage::Url(url)),
            Ok(url) if url.scheme() == "file" => {
                url.to_file_path().map(BaseImage::Path).map_err(|()| {
                    CacheError::UnsupportedSource {
                        image: redact_url(&url),
                    }
                })
            }
            // A single-letter "scheme" is a Windows drive; anything else is a URL we can't fetch.
            Ok(url) if url.scheme().len() > 1 && source.contains("://") => {
                Err(CacheError::UnsupportedSource {
                    image: redact_url(&url),
                })
            }
            _ => Ok(BaseImage::Path(PathBuf::from(source))),
        }
    }

    /// The source for messages, credentials removed.
    pub fn display(&self) -> String {
        match self {
            BaseImage::Url(url) => redact_url(url),
            BaseImage::Path(path) => path.display().to_string(),
        }
    }

    /// The image's file name: the last URL path segment (percent-decoded) or the file name.
    pub fn file_name(&self) -> Result<String, CacheError> {
        let name = match self {
            BaseImage::Url(url) => url
                .path_segments()
                .and_then(|mut s| s.next_back())
                .filter(|s| !s.is_empty())
                .map(percent_decode),
            BaseImage::Path(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
        };
        name.ok_or_else(|| CacheError::NoFileName {
            image: self.display(),
        })
    }

    /// Finds, downloads (or reuses from `cache_dir`) and verifies a base image.
    ///
    /// `source` is a URL or a local path. `checksum` is the expected SHA-256 or a CHECKSUM
    /// file in which the image's file name is looked up. Without a checksum this fails unless
    /// `insecure_skip_checksum` is set, in which case a warning goes to `reporter` and the
    /// image is always downloaded again (it is still stored under its computed SHA-256).
    /// Download and hashing progress goes to `reporter` as transfers.
    ///
    /// The verified image is then inspected ([`kib_vm::image::inspect`]): only a
    /// self-contained qcow2 or a raw image is accepted, since `qemu-img convert` would copy any
    /// file a backing chain names into the exported image.
    pub async fn resolve(
        source: &str,
        checksum: Option<ChecksumSource>,
        insecure_skip_checksum: bool,
        cache_dir: &Path,
        reporter: &dyn Reporter,
    ) -> Result<ResolvedImage, CacheError> {
        let mut image = Self::find(
            source,
            checksum,
            insecure_skip_checksum,
            cache_dir,
            reporter,
        )
        .await?;
        let disk = kib_vm::image::inspect_async(&image.path)
            .await
            .map_err(|source| CacheError::Refused {
                image: image.source.clone(),
                source,
            })?;
        image.format = disk.format.as_str().to_owned();
        Ok(image)
    }

    /// [`BaseImage::resolve`] without the inspection.
    async fn find(
        source: &str,
        checksum: Option<ChecksumSource>,
        insecure_skip_checksum: bool,
        cache_dir: &Path,
        reporter: &dyn Reporter,
    ) -> Result<ResolvedImage, CacheError> {
        let image = BaseImage::parse(source)?;
        let name = image.file_name()?;
        let mut client = None;
        let expected = match checksum {
            Some(ChecksumSource::Value(c)) => Some(c),
            Some(ChecksumSource::File(file)) => {
                Some(fetch_and_lookup(&file, &name, &mut client).await?)
            }
            None if insecure_skip_checksum => {
                reporter.on_warning(&format!(
                    "The base image `{name}` is not verified: no checksum was given and --insecure-skip-checksum is set"
                ));
                None
            }
            None => {
                return Err(CacheError::NoChecksum {
                    image: image.display(),
                });
            }
        };
        match &image {
            BaseImage::Path(path) => resolve_local(path, name, expected, reporter).await,
            BaseImage::Url(url) => {
                let images = cache_dir.join("images");
                tokio::fs::create_dir_all(&images)
                    .await
                    .map_err(|e| CacheError::Write {
                        path: images.clone(),
                        source: e,
                    })?;
                if let Some(expected) = &expected {
                    let cached = cached_path(&images, expected);
                    if let Some(hit) = check_cached(&cached, url, &name, expected, reporter).await?
                    {
                        return Ok(hit);
                    }
                }
                let client = match client {
                    Some(c) => c,
                    None => http_client()?,
                };
                download(&client, url, &name, &images, expected.as_ref(), reporter).await
            }
        }
    }
}

/// The cache file for an image with this checksum.
fn cached_path(images: &Path, checksum: &Checksum) -> PathBuf {
    images.join(format!("sha256-{}.img", checksum.hex()))
}

/// Reuses a cached image after re-hashing it; deletes it if it no longer matches.
async fn check_cached(
    cached: &Path,
    url: &Url,
    name: &str,
    expected: &Checksum,
    reporter: &dyn Reporter,
) -> Result<Option<ResolvedImage>, CacheError> {
    if !tokio::fs::try_exists(cached).await.unwrap_or(false) {
        return Ok(None);
    }
    let (actual, size) = hash_file(cached, &format!("verify cached {name}"), reporter).await?;
    if &actual == expected {
        tracing::debug!(path = %cached.display(), "base image found in the cache");
        return Ok(Some(ResolvedImage {
            path: cached.to_owned(),
            checksum: actual,
            name: name.to_owned(),
            source: redact_url(url),
            size,
            format: String::new(),
            from_cache: true,
        }));
    }
    reporter.on_warning(&format!(
        "The cached copy `{}` is damaged (its checksum is {actual}); downloading it again",
        cached.display()
    ));
    tokio::fs::remove_file(cached)
        .await
        .map_err(|e| CacheError::Write {
            path: cached.to_owned(),
            source: e,
        })?;
    Ok(None)
}

/// Verifies a local image in place.
async fn resolve_local(
    path: &Path,
    name: String,
    expected: Option<Checksum>,
    reporter: &dyn Reporter,
) -> Result<ResolvedImage, CacheError> {
    if !tokio::fs::try_exists(path).await.unwrap_or(false) {
        return Err(CacheError::NotFound {
            path: path.to_owned(),
        });
    }
    let (actual, size) = hash_file(path, &format!("verify {name}"), reporter).await?;
    if let Some(expected) = expected
        && expected != actual
    {
        return Err(CacheError::LocalMismatch {
            path: path.to_owned(),
            expected,
            actual,
        });
    }
    Ok(ResolvedImage {
        path: path.to_owned(),
        checksum: actual,
        name,
        source: path.display().to_string(),
        size,
        format: String::new(),
        from_cache: false,
    })
}

/// Streams `url` into a temporary file in `images`, hashing as it goes, then verifies and
/// renames it to `sha256-<hex>.img`. On any failure the temporary file is deleted.
async fn download(
    client: &reqwest::Client,
    url: &Url,
    name: &str,
    images: &Path,
    expected: Option<&Checksum>,
    reporter: &dyn Reporter,
) -> Result<ResolvedImage, CacheError> {
    let shown = redact_url(url);
    tracing::info!(url = %shown, "downloading the base image");
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| CacheError::Download {
            url: shown.clone(),
            source: e.without_url(),
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(CacheError::Http { url: shown, status });
    }
    let total = response.content_length();

    let temp = tempfile::Builder::new()
        .prefix(".download-")
        .suffix(".partial")
        .tempfile_in(images)
        .map_err(|e| CacheError::Write {
            path: images.to_owned(),
            source: e,
        })?;
    let temp_path = temp.path().to_owned();
    let std_file = temp.as_file().try_clone().map_err(|e| CacheError::Write {
        path: temp_path.clone(),
        source: e,
    })?;
    let mut file =
        tokio::io::BufWriter::with_capacity(HASH_BUFFER, tokio::fs::File::from_std(std_file));
    let write_err = |e| CacheError::Write {
        path: temp_path.clone(),
        source: e,
    };

    reporter.on_transfer_start(&format!("download {name}"), total);
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut stream = response.bytes_stream();
    let result = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| CacheError::Download {
                url: shown.clone(),
                source: e.without_url(),
            })?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(write_err)?;
            received += chunk.len() as u64;
            reporter.on_transfer_progress(chunk.len() as u64);
        }
        file.flush().await.map_err(write_err)?;
        file.get_ref().sync_all().await.map_err(write_err)?;
        Ok(())
    }
    .await;
    reporter.on_transfer_done();
    result?;
    drop(file);
    if let Some(total) = total
        && total != received
    {
        return Err(CacheError::Truncated {
            url: shown,
            expected: total,
            received,
        });
    }
    let actual = Checksum::from_digest(&hasher.finalize());
    if let Some(expected) = expected
        && *expected != actual
    {
        drop(temp);
        return Err(CacheError::DownloadMismatch {
            url: shown,
            expected: expected.clone(),
            actual,
        });
    }
    let final_path = cached_path(images, &actual);
    temp.persist(&final_path).map_err(|e| CacheError::Write {
        path: final_path.clone(),
        source: e.error,
    })?;
    tracing::debug!(path = %final_path.display(), bytes = received, "base image cached");
    Ok(ResolvedImage {
        path: final_path,
        checksum: actual,
        name: name.to_owned(),
        source: shown,
        size: received,
        format: String::new(),
        from_cache: false,
    })
}

/// The SHA-256 and size of a file, reported as a transfer named `what`.
async fn hash_file(
    path: &Path,
    what: &str,
    reporter: &dyn Reporter,
) -> Result<(Checksum, u64), CacheError> {
    let read_err = |e: std::io::Error| CacheError::Read {
        path: path.to_owned(),
        source: e,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let total = file.metadata().await.map_err(read_err)?.len();
    reporter.on_transfer_start(what, Some(total));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut size = 0u64;
    let result = async {
        loop {
            let n = file.read(&mut buf).await.map_err(read_err)?;
            if n == 0 {
                break Ok(());
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            reporter.on_transfer_progress(n as u64);
        }
    }
    .await;
    reporter.on_transfer_done();
    result?;
    Ok((Checksum::from_digest(&hasher.finalize()), size))
}

/// Reads a CHECKSUM file (download or disk) and finds `name` in it.
async fn fetch_and_lookup(
    file: &ChecksumFile,
    name: &str,
    client: &mut Option<reqwest::Client>,
) -> Result<Checksum, CacheError> {
    let (text, shown) = match file {
        ChecksumFile::Path(path) => {
            let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                CacheError::ReadChecksumFile {
                    path: path.clone(),
                    source: e,
                }
            })?;
            (text, format!("`{}`", path.display()))
        }
        ChecksumFile::Url(url) => {
            let shown = redact_url(url);
            let c = match client {
                Some(c) => c,
                None => client.insert(http_client()?),
            };
            tracing::debug!(url = %shown, "fetching the checksum file");
            let response = c
                .get(url.clone())
                .send()
                .await
                .map_err(|e| CacheError::Download {
                    url: shown.clone(),
                    source: e.without_url(),
                })?;
            if !response.status().is_success() {
                return Err(CacheError::Http {
                    url: shown,
                    status: response.status(),
                });
            }
            let text = response.text().await.map_err(|e| CacheError::Download {
                url: shown.clone(),
                source: e.without_url(),
            })?;
            (text, shown)
        }
    };
    checksum::lookup(&text, name).map_err(|source| CacheError::ChecksumLookup {
        name: name.to_owned(),
        checksum_file: shown,
        source,
    })
}

fn http_client() -> Result<reqwest::Client, CacheError> {
    reqwest::Client::builder()
        .user_agent(concat!("kib/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(CacheError::Client)
}

/// Decodes `%XX` escapes of a URL path segment.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
            && let Ok(b) = u8::from_str_radix(&segment[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert!(matches!(
            BaseImage::parse("https://e.com/a.qcow2").unwrap(),
            BaseImage::Url(_)
        ));
        assert_eq!(
            BaseImage::parse("/srv/a.qcow2").unwrap(),
            BaseImage::Path("/srv/a.qcow2".into())
        );
        assert_eq!(
            BaseImage::parse("rel/a.qcow2").unwrap(),
            BaseImage::Path("rel/a.qcow2".into())
        );
        assert_eq!(
            BaseImage::parse("file:///srv/a.qcow2").unwrap(),
            BaseImage::Path("/srv/a.qcow2".into())
        );
        let err = BaseImage::parse("ftp://u:p@e.com/a.qcow2").unwrap_err();
        assert!(matches!(err, CacheError::UnsupportedSource { .. }));
        assert!(!err.to_string().contains("u:p"), "{err}");
    }

    #[test]
    fn file_names() {
        let name = |s: &str| BaseImage::parse(s).unwrap().file_name();
        assert_eq!(
            name("https://e.com/x/Rocky%2010.qcow2?x=1").unwrap(),
            "Rocky 10.qcow2"
        );
        assert_eq!(name("/srv/a.qcow2").unwrap(), "a.qcow2");
        assert!(matches!(
            name("https://e.com/dir/"),
            Err(CacheError::NoFileName { .. })
        ));
    }

    #[test]
    fn no_checksum_hint_names_both_flags() {
        let hint = CacheError::NoChecksum { image: "x".into() }.hint().unwrap();
        assert!(
            hint.contains("--base-checksum sha256:") && hint.contains("--insecure-skip-checksum")
        );
    }
}
