//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on a random
//! `127.0.0.1` port, with filesystem storage in a temporary directory and deletes enabled,
//! optionally behind htpasswd basic auth or serving HTTPS with a given certificate. The process is killed by [`Registry::stop`] or on
//! drop; [`Registry::restart`] starts it again on the same port and storage.
//!
//! ```no_run
//! let registry = kib_test_infra::registry::Registry::start().expect("registry");
//! let image = format!("{}/kib/node", registry.host());
//! ```

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry binary the tests run.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// The registry could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A required program is not installed.
    #[error("`{program}` is not installed (Debian package `{package}`)")]
    Missing {
        /// The program.
        program: String,
        /// The Debian package providing it.
        package: &'static str,
    },
    /// Preparing the config, storage or htpasswd file failed.
    #[error("Failed to prepare the registry's files")]
    Prepare {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `htpasswd` failed.
    #[error("`htpasswd` failed: {stderr}")]
    Htpasswd {
        /// What it printed.
        stderr: String,
    },
    /// The registry process could not be spawned.
    #[error("Failed to start `{DOCKER_REGISTRY}`")]
    Spawn {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `/v2/` did not answer in time.
    #[error("The registry on {addr} did not answer `/v2/` within {waited:?}; its log:\n{log}")]
    NotReady {
        /// The address.
        addr: SocketAddr,
        /// How long it was waited for.
        waited: Duration,
        /// The registry's log.
        log: String,
    },
}

impl RegistryError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            RegistryError::Missing { package, .. } => Some(format!(
                "run `sudo scripts/setup-host.sh` (or `apt-get install {package}`)"
            )),
            _ => None,
        }
    }
}

/// Fails with a hint when `program` (an absolute path or a name on PATH) is missing.
pub fn require(program: &str, package: &'static str) -> Result<PathBuf, RegistryError> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
            .unwrap_or_default()
    };
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| RegistryError::Missing {
            program: program.to_owned(),
            package,
        })
}

/// A running registry. Killed on drop.
#[derive(Debug)]
pub struct Registry {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    child: Option<Child>,
    auth: Option<(String, String)>,
    tls: bool,
}

impl Registry {
    /// Starts an anonymous registry.
    pub fn start() -> Result<Self, RegistryError> {
        Self::launch(None, None, None)
    }

    /// Starts an anonymous registry that serves HTTPS with this PEM certificate and key
    /// (`http.tls` in distribution's config); the certificate must name `127.0.0.1`.
    pub fn start_tls(certificate: &Path, key: &Path) -> Result<Self, RegistryError> {
        Self::launch(None, Some((certificate, key)), None)
    }

    /// Like [`Registry::start_tls`], but every request needs a bearer token from `realm`
    /// (`auth.token` in distribution's config; `{addr}` in `realm` becomes the registry's own
    /// `127.0.0.1:PORT`). No token service runs: `/v2/` answers 401 with the challenge.
    pub fn start_tls_with_token_realm(
        certificate: &Path,
        key: &Path,
        realm: &str,
    ) -> Result<Self, RegistryError> {
        Self::launch(None, Some((certificate, key)), Some(realm))
    }

    /// Starts a registry that requires basic auth (`user`, `password`).
    pub fn start_with_auth(user: &str, password: &str) -> Result<Self, RegistryError> {
        Self::launch(Some((user.to_owned(), password.to_owned())), None, None)
    }

    fn launch(
        auth: Option<(String, String)>,
        tls: Option<(&Path, &Path)>,
        token_realm: Option<&str>,
    ) -> Result<Self, RegistryError> {
        require(DOCKER_REGISTRY, "docker-registry")?;
        let prep = |source| RegistryError::Prepare { source };
        let dir = tempfile::Builder::new()
            .prefix("kib-registry-")
            .tempdir()
            .map_err(prep)?;
        let addr = free_port().map_err(prep)?;
        let data = dir.path().join("data");
        fs_err::create_dir_all(&data).map_err(prep)?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {addr}\n",
            data.display()
        );
        if let Some((certificate, key)) = tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                certificate.display(),
                key.display()
            ));
        }
        if let (Some(realm), Some((certificate, _))) = (token_realm, tls) {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: kib-test\n    issuer: kib-test\n    rootcertbundle: {}\n",
                realm.replace("{addr}", &addr.to_string()),
                certificate.display()
            ));
        }
        if let Some((user, password)) = &auth {
            let htpasswd = require("htpasswd", "apache2-utils")?;
            let out = Command::new(htpasswd)
                .args(["-Bbn", user, password])
                .output()
                .map_err(prep)?;
            if !out.status.success() {
                return Err(RegistryError::Htpasswd {
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            let path = dir.path().join("htpasswd");
            fs_err::write(&path, &out.stdout).map_err(prep)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kib-test\n    path: {}\n",
                path.display()
            ));
        }
        fs_err::write(dir.path().join("config.yml"), config).map_err(prep)?;
        let mut registry = Self {
            dir,
            addr,
            child: None,
            auth,
            tls: tls.is_some(),
        };
        registry.restart()?;
        Ok(registry)
    }

    /// Starts the registry again (same port, same storage) after [`Registry::stop`].
    pub fn restart(&mut self) -> Result<(), RegistryError> {
        self.stop();
        let log = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|source| RegistryError::Prepare { source })?;
        let log2 = log
            .try_clone()
            .map_err(|source| RegistryError::Prepare { source })?;
        let child = Command::new(DOCKER_REGISTRY)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.into_parts().0))
            .stderr(Stdio::from(log2.into_parts().0))
            .spawn()
            .map_err(|source| RegistryError::Spawn { source })?;
        self.child = Some(child);
        let waited = Duration::from_secs(20);
        let deadline = Instant::now() + waited;
        while Instant::now() < deadline {
            if v2_answers(self.addr, self.tls) {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(_)) = child.try_wait()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = self.log();
        self.stop();
        Err(RegistryError::NotReady {
            addr: self.addr,
            waited,
            log,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The basic-auth credentials, if the registry requires them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The storage root (`docker/registry/v2/…` below it).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        fs_err::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the registry (idempotent). Storage is kept until drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `GET /v2/` answers 200 or 401; over TLS, whether plain HTTP gets Go's `400` for
/// "an HTTP request to an HTTPS server" (the listener is up).
fn v2_answers(addr: SocketAddr, tls: bool) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok()
        && (head.ends_with(b"200") || head.ends_with(b"401") || (tls && head.ends_with(b"400")))
}

fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Kept so the path type is used in docs: where a registry's data lives.
pub fn blob_data_path(storage: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2.min(hex.len())])
        .join(hex)
        .join("data")
}

/// A throw-away CA and a server certificate for `127.0.0.1` it signed, made by `openssl`.
#[derive(Debug, Clone)]
pub struct TestTls {
    /// The CA certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// The server certificate (PEM), `subjectAltName = IP:127.0.0.1`.
    pub certificate: PathBuf,
    /// The server key (PEM).
    pub key: PathBuf,
}

impl TestTls {
    /// Writes `ca.pem`, `server.pem` and `server.key` into `dir` (P-256 keys, valid 2 days).
    /// Panics if `openssl` fails (tests only).
    pub fn create(dir: &Path) -> Self {
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl (Debian package `openssl`)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=kib test CA"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&ca);
        let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
        csr.extend(ec);
        csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(&csr);
        fs_err::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        Self {
            ca: dir.join("ca.pem"),
            certificate: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}
