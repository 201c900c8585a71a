//! The base image cache against a real HTTP server (`python3 -m http.server` on 127.0.0.1)
//! serving a real qcow2 image and BSD and GNU CHECKSUM files.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use kib_builder::Reporter;
use kib_builder::cache::{BaseImage, CacheError};
use kib_builder::checksum::{Checksum, ChecksumSource};
use kib_manifest::{Hint as _, error_chain as chain};
use kib_test_infra::tools::{files_in, run_tool, sha256sum};

const IMAGE: &str = "Rocky-10-GenericCloud-Base.latest.x86_64.qcow2";

/// `python3 -m http.server`, killed on drop. Its request log goes to a file.
struct HttpServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl HttpServer {
    fn start(root: &Path, log: PathBuf) -> HttpServer {
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(root)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("python3 is needed for this test (scripts/setup-host.sh installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 40385 (http://127.0.0.1:40385/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected http.server banner: {line:?}"));
        HttpServer { child, port, log }
    }

    fn url(&self, file: &str) -> String {
        format!("http://127.0.0.1:{}/{file}", self.port)
    }

    /// How many GET requests for `/file` the server logged.
    fn gets(&self, file: &str) -> usize {
        let needle = format!("\"GET /{file} ");
        std::fs::read_to_string(&self.log)
            .unwrap()
            .matches(&needle)
            .count()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Remembers what the cache reported.
#[derive(Default)]
struct Recorder {
    transfers: Mutex<Vec<(String, Option<u64>)>>,
    bytes: Mutex<u64>,
    warnings: Mutex<Vec<String>>,
}

impl Reporter for Recorder {
    fn on_transfer_start(&self, what: &str, total: Option<u64>) {
        self.transfers
            .lock()
            .unwrap()
            .push((what.to_owned(), total));
        *self.bytes.lock().unwrap() = 0;
    }
    fn on_transfer_progress(&self, n: u64) {
        *self.bytes.lock().unwrap() += n;
    }
    fn on_warning(&self, message: &str) {
        self.warnings.lock().unwrap().push(message.to_owned());
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cache: PathBuf,
    server: HttpServer,
    checksum: Checksum,
    bytes: Vec<u8>,
}

/// A served folder with a real qcow2 (with data), a BSD `CHECKSUM` and a GNU `SHA256SUMS`.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let image = root.join(IMAGE);
    run_tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            image.to_str().unwrap(),
            "64M",
        ],
    );
    run_tool(
        "qemu-io",
        &["-c", "write -P 0x5a 0 3M", image.to_str().unwrap()],
    );
    let bytes = std::fs::read(&image).unwrap();
    let hex = sha256sum(&image);
    std::fs::write(
        root.join("CHECKSUM"),
        format!(
            "# Rocky-10-GenericCloud-LVM.latest.x86_64.qcow2: 1 bytes\n\
             SHA256 (Rocky-10-GenericCloud-LVM.latest.x86_64.qcow2) = {}\n\
             # {IMAGE}: {} bytes\nSHA256 ({IMAGE}) = {hex}\n",
            "0".repeat(64),
            bytes.len()
        ),
    )
    .unwrap();
    std::fs::write(root.join("SHA256SUMS"), format!("{hex} *{IMAGE}\r\n")).unwrap();
    let server = HttpServer::start(&root, dir.path().join("server.log"));
    Fixture {
        cache: dir.path().join("cache"),
        root,
        server,
        checksum: format!("sha256:{hex}").parse().unwrap(),
        bytes,
        _dir: dir,
    }
}

#[tokio::test]
async fn downloads_verifies_then_reuses_the_cached_copy() {
    let mut f = fixture();
    let url = f.server.url(IMAGE);
    let sums: ChecksumSource = format!("file:{}", f.server.url("CHECKSUM"))
        .parse()
        .unwrap();
    let reporter = Recorder::default();

    let first = BaseImage::resolve(&url, Some(sums.clone()), false, &f.cache, &reporter)
        .await
        .unwrap();
    assert!(!first.from_cache);
    assert_eq!(first.checksum, f.checksum);
    assert_eq!(first.name, IMAGE);
    assert_eq!(first.format, "qcow2");
    assert_eq!(first.size, f.bytes.len() as u64);
    assert_eq!(
        first.path,
        f.cache
            .join("images")
            .join(format!("sha256-{}.img", f.checksum.hex()))
    );
    assert_eq!(std::fs::read(&first.path).unwrap(), f.bytes);
    assert_eq!(sha256sum(&first.path), f.checksum.hex());
    assert_eq!(f.server.gets(IMAGE), 1);
    let transfers = reporter.transfers.lock().unwrap().clone();
    assert_eq!(
        transfers,
        vec![(format!("download {IMAGE}"), Some(f.bytes.len() as u64))]
    );
    assert_eq!(*reporter.bytes.lock().unwrap(), f.bytes.len() as u64);
    // Only the verified image is left in the cache.
    assert_eq!(
        files_in(&f.cache.join("images")),
        vec![format!("sha256-{}.img", f.checksum.hex())]
    );

    // Second time: the CHECKSUM file is read again (it may have moved on), the image is not.
    let second = BaseImage::resolve(&url, Some(sums), false, &f.cache, &reporter)
        .await
        .unwrap();
    assert!(second.from_cache);
    assert_eq!(second.path, first.path);
    assert_eq!(f.server.gets(IMAGE), 1, "the image was downloaded again");
    assert_eq!(f.server.gets("CHECKSUM"), 2);

    // With the checksum itself, the server is not needed at all.
    f.server.stop();
    let third = BaseImage::resolve(
        &url,
        Some(ChecksumSource::Value(f.checksum.clone())),
        false,
        &f.cache,
        &reporter,
    )
    .await
    .unwrap();
    assert!(third.from_cache);
    assert_eq!(third.checksum, f.checksum);
    assert!(reporter.warnings.lock().unwrap().is_empty());
}

#[tokio::test]
async fn gnu_checksum_file_works() {
    let f = fixture();
    let sums: ChecksumSource = format!("file:{}", f.server.url("SHA256SUMS"))
        .parse()
        .unwrap();
    let got = BaseImage::resolve(
        &f.server.url(IMAGE),
        Some(sums),
        false,
        &f.cache,
        &Recorder::default(),
    )
    .await
    .unwrap();
    assert_eq!(got.checksum, f.checksum);
    assert!(!got.from_cache);
}

#[tokio::test]
async fn mismatch_deletes_the_download() {
    let f = fixture();
    let wrong: Checksum = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
    let err = BaseImage::resolve(
        &f.server.url(IMAGE),
        Some(ChecksumSource::Value(wrong.clone())),
        false,
        &f.cache,
        &Recorder::default(),
    )
    .await
    .unwrap_err();
    match &err {
        CacheError::DownloadMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &f.checksum);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&wrong.to_string()) && msg.contains(&f.checksum.to_string()),
        "{msg}"
    );
    assert!(err.hint().is_some());
    assert_eq!(
        files_in(&f.cache.join("images")),
        Vec::<String>::new(),
        "nothing may stay in the cache"
    );
}

#[tokio::test]
async fn image_missing_from_checksum_file_lists_what_is_there() {
    let f = fixture();
    std::fs::copy(f.root.join(IMAGE), f.root.join("other.qcow2")).unwrap();
    let sums: ChecksumSource = format!("file:{}", f.server.url("CHECKSUM"))
        .parse()
        .unwrap();
    let err = BaseImage::resolve(
        &f.server.url("other.qcow2"),
        Some(sums),
        false,
        &f.cache,
        &Recorder::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CacheError::ChecksumLookup { .. }), "{err:?}");
    let text = chain(&err);
    assert!(
        text.contains("`other.qcow2` is not listed") && text.contains(IMAGE),
        "{text}"
    );
    assert_eq!(
        f.server.gets("other.qcow2"),
        0,
        "nothing is downloaded before the checksum is known"
    );
}

#[tokio::test]
async fn no_checksum_is_an_error_unless_skipped() {
    let f = fixture();
    let url = f.server.url(IMAGE);
    let reporter = Recorder::default();
    let err = BaseImage::resolve(&url, None, false, &f.cache, &reporter)
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::NoChecksum { .. }), "{err:?}");
    let hint = err.hint().unwrap();
    assert!(
        hint.contains("--base-checksum sha256:") && hint.contains("--insecure-skip-checksum"),
        "{hint}"
    );
    assert_eq!(f.server.gets(IMAGE), 0);

    let got = BaseImage::resolve(&url, None, true, &f.cache, &reporter)
        .await
        .unwrap();
    assert_eq!(
        got.checksum, f.checksum,
        "the computed checksum is still recorded"
    );
    let warnings = reporter.warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("not verified"), "{warnings:?}");
}

#[tokio::test]
async fn http_errors_are_typed_and_hide_credentials() {
    let f = fixture();
    let url = format!(
        "http://alice:hunter2@127.0.0.1:{}/missing.qcow2",
        f.server.port
    );
    let err = BaseImage::resolve(
        &url,
        Some(ChecksumSource::Value(f.checksum.clone())),
        false,
        &f.cache,
        &Recorder::default(),
    )
    .await
    .unwrap_err();
    match &err {
        CacheError::Http { status, url } => {
            assert_eq!(status.as_u16(), 404);
            assert!(url.contains("<redacted>@127.0.0.1"), "{url}");
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
    let text = format!("{} / {err:?}", chain(&err));
    assert!(
        !text.contains("hunter2") && !text.contains("alice"),
        "{text}"
    );
    assert!(err.hint().unwrap().contains("vault"));

    // A refused connection is a download error, also without credentials.
    let mut f = f;
    let port = f.server.port;
    f.server.stop();
    let url = format!("http://alice:hunter2@127.0.0.1:{port}/{IMAGE}");
    let err = BaseImage::resolve(
        &url,
        Some(ChecksumSource::Value(f.checksum.clone())),
        false,
        &f.cache,
        &Recorder::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CacheError::Download { .. }), "{err:?}");
    let text = format!("{} / {err:?}", chain(&err));
    assert!(
        !text.contains("hunter2") && !text.contains("alice"),
        "{text}"
    );
}

#[tokio::test]
async fn damaged_cache_entry_is_downloaded_again() {
    let f = fixture();
    let url = f.server.url(IMAGE);
    let value = Some(ChecksumSource::Value(f.checksum.clone()));
    let reporter = Recorder::default();
    let first = BaseImage::resolve(&url, value.clone(), false, &f.cache, &reporter)
        .await
        .unwrap();
    std::fs::write(&first.path, b"bit rot").unwrap();
    let again = BaseImage::resolve(&url, value, false, &f.cache, &reporter)
        .await
        .unwrap();
    assert!(!again.from_cache);
    assert_eq!(std::fs::read(&again.path).unwrap(), f.bytes);
    assert_eq!(f.server.gets(IMAGE), 2);
    assert!(
        reporter
            .warnings
            .lock()
            .unwrap()
            .iter()
            .any(|w| w.contains("damaged"))
    );
}

#[tokio::test]
async fn local_images_are_verified_in_place() {
    let f = fixture();
    let local = f.root.join(IMAGE);
    let sums: ChecksumSource = format!("file:{}", f.root.join("CHECKSUM").display())
        .parse()
        .unwrap();
    let got = BaseImage::resolve(
        local.to_str().unwrap(),
        Some(sums),
        false,
        &f.cache,
        &Recorder::default(),
    )
    .await
    .unwrap();
    assert_eq!(got.path, local, "local images are not copied");
    assert_eq!(got.checksum, f.checksum);
    assert!(
        !f.cache.exists(),
        "the cache is not touched for local images"
    );

    let wrong: Checksum = format!("sha256:{}", "cd".repeat(32)).parse().unwrap();
    let err = BaseImage::resolve(
        local.to_str().unwrap(),
        Some(ChecksumSource::Value(wrong)),
        false,
        &f.cache,
        &Recorder::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CacheError::LocalMismatch { .. }), "{err:?}");
    assert!(local.exists(), "a user's own file is never deleted");

    let err = BaseImage::resolve(
        "/nonexistent/x.qcow2",
        None,
        true,
        &f.cache,
        &Recorder::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CacheError::NotFound { .. }), "{err:?}");
}

/// A base image whose backing file is a host file (issue #16): `qemu-img convert` at export
/// would copy that file into the signed image. It is refused after the checksum matches,
/// downloaded or local, and neither the error nor the hint carries the host file's bytes.
#[tokio::test]
async fn a_base_image_with_a_backing_file_is_refused() {
    let f = fixture();
    let secret = f.root.join("host-secret");
    std::fs::write(&secret, "kib-host-secret-9a7e".repeat(1000)).unwrap();
    let hostile = f.root.join("hostile.qcow2");
    run_tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            secret.to_str().unwrap(),
            hostile.to_str().unwrap(),
        ],
    );
    let sum: Checksum = format!("sha256:{}", sha256sum(&hostile)).parse().unwrap();
    for source in [
        hostile.to_str().unwrap().to_owned(),
        format!("http://127.0.0.1:{}/hostile.qcow2", f.server.port),
    ] {
        let err = BaseImage::resolve(
            &source,
            Some(ChecksumSource::Value(sum.clone())),
            false,
            &f.cache,
            &Recorder::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CacheError::Refused { .. }), "{err:?}");
        let shown = format!("{}\n{}", chain(&err), err.hint().unwrap_or_default());
        assert!(shown.contains("has a backing file"), "{shown}");
        assert!(!shown.contains("kib-host-secret"), "{shown}");
    }
    // The served qcow2 without a backing file is still accepted, as qcow2.
    let ok = BaseImage::resolve(
        f.root.join(IMAGE).to_str().unwrap(),
        Some(ChecksumSource::Value(f.checksum.clone())),
        false,
        &f.cache,
        &Recorder::default(),
    )
    .await
    .unwrap();
    assert_eq!(ok.format, "qcow2");
}
