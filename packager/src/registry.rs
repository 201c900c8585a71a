//! Registry access shared by the packager and the signer: the [`oci_client::Client`] for a
//! reference and the credentials to use with it.
//!
//! Credentials come from, in order: the flags ([`RegistryOptions`]), the environment
//! (`KIB_REGISTRY_USERNAME` / `KIB_REGISTRY_PASSWORD`, for CI), docker's `config.json`
//! (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, with `credHelpers` and
//! `credsStore`), and else anonymous. Passwords live in [`Secret`], which never formats.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use kib_manifest::Hint;
/// Image references, re-exported for crates that do not depend on oci-client.
pub use oci_client::Reference;
use oci_client::secrets::RegistryAuth;

/// The clients for a registry: HTTP or HTTPS, trusted roots, skipped verification.
pub use crate::transport::{Transport, TransportError, certificate_hint, connect};
/// Credentials as oci-client takes them, re-exported.
pub use oci_client::secrets::RegistryAuth as Auth;

/// Env var with the registry user name (CI).
pub const ENV_USERNAME: &str = "KIB_REGISTRY_USERNAME";
/// Env var with the registry password or token (CI).
pub const ENV_PASSWORD: &str = "KIB_REGISTRY_PASSWORD";

/// A password or token. `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to reach a registry (see [`crate::transport`] for what each choice covers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryOptions {
    /// Plain HTTP for this registry. Loopback registries (`127.0.0.0/8`, `localhost`,
    /// `[::1]`) use HTTP without it, as docker does, unless a TLS option is given; to any
    /// other host, plain HTTP is refused with credentials.
    pub plain_http: bool,
    /// Skip certificate verification for this registry's host only.
    pub skip_tls_verify: bool,
    /// PEM certificates trusted in addition to the system's (registry and token service).
    pub ca_file: Option<PathBuf>,
    /// User name from the command line.
    pub username: Option<String>,
    /// Password from the command line (`--password-stdin`).
    pub password: Option<Secret>,
}

/// Whether `registry` (`host[:port]`) is a loopback address.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether requests to `reference`'s registry go over plain HTTP with these options:
/// `--plain-http`, or a loopback registry without a TLS option.
pub fn uses_http(reference: &Reference, opts: &RegistryOptions) -> bool {
    opts.plain_http
        || (is_loopback(reference.resolve_registry())
            && !opts.skip_tls_verify
            && opts.ca_file.is_none())
}

/// Finding credentials failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A user name was given without a password, or the reverse.
    #[error("A registry {given} was given without a {missing}")]
    Incomplete {
        /// What was given (`user name` or `password`).
        given: &'static str,
        /// What is missing.
        missing: &'static str,
    },
    /// docker's config.json could not be read or parsed.
    #[error("Failed to read docker's config `{}`", path.display())]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An `auth` entry of config.json is not base64 `user:password`.
    #[error("The `auth` entry for `{registry}` in `{}` is not base64 of `user:password`", path.display())]
    DockerConfigEntry {
        /// The file.
        path: PathBuf,
        /// The registry key.
        registry: String,
    },
    /// A credential helper could not be run.
    #[error("Failed to run the docker credential helper `docker-credential-{helper}`")]
    HelperRun {
        /// The helper's name.
        helper: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A credential helper failed or printed something that is not credentials.
    #[error(
        "The docker credential helper `docker-credential-{helper}` failed for `{registry}`: {message}"
    )]
    HelperFailed {
        /// The helper's name.
        helper: String,
        /// The registry asked for.
        registry: String,
        /// What it said (never the secret: only its stderr or a parse error).
        message: String,
    },
}

impl Hint for AuthError {
    /// What to do about it.
    fn hint(&self) -> Option<String> {
        match self {
            AuthError::Incomplete { .. } => Some(format!(
                "pass both `--username` and `--password-stdin`, or set both `{ENV_USERNAME}` and `{ENV_PASSWORD}`"
            )),
            AuthError::HelperRun { helper, .. } => Some(format!(
                "install `docker-credential-{helper}` on PATH, or remove it from docker's config.json"
            )),
            AuthError::DockerConfig { .. } | AuthError::DockerConfigEntry { .. } => {
                Some("fix or move the file, or point `DOCKER_CONFIG` at another directory".into())
            }
            AuthError::HelperFailed { .. } => None,
        }
    }
}

/// The credentials for `reference`: flags, then `KIB_REGISTRY_USERNAME` /
/// `KIB_REGISTRY_PASSWORD`, then docker's config.json (`credHelpers`, `credsStore`, `auths`),
/// else anonymous.
pub fn auth(reference: &Reference, opts: &RegistryOptions) -> Result<RegistryAuth, AuthError> {
    match (&opts.username, &opts.password) {
        (Some(u), Some(p)) => return Ok(RegistryAuth::Basic(u.clone(), p.expose().to_owned())),
        (Some(_), None) => {
            return Err(AuthError::Incomplete {
                given: "user name",
                missing: "password",
            });
        }
        (None, Some(_)) => {
            return Err(AuthError::Incomplete {
                given: "password",
                missing: "user name",
            });
        }
        (None, None) => {}
    }
    let env_user = std::env::var(ENV_USERNAME).ok().filter(|s| !s.is_empty());
    let env_pass = std::env::var(ENV_PASSWORD).ok().filter(|s| !s.is_empty());
    match (env_user, env_pass) {
        (Some(u), Some(p)) => return Ok(RegistryAuth::Basic(u, p)),
        (Some(_), None) => {
            return Err(AuthError::Incomplete {
                given: "user name",
                missing: "password",
            });
        }
        (None, Some(_)) => {
            return Err(AuthError::Incomplete {
                given: "password",
                missing: "user name",
            });
        }
        (None, None) => {}
    }
    let Some(path) = docker_config_path() else {
        return Ok(RegistryAuth::Anonymous);
    };
    let text = match fs_err::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
        Err(source) => return Err(AuthError::DockerConfig { path, source }),
    };
    let config: DockerConfig =
        serde_json::from_str(&text).map_err(|e| AuthError::DockerConfig {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
    from_docker_config(&config, &path, reference.resolve_registry())
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// The parts of docker's config.json that hold credentials.
#[derive(Debug, Default, serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Default, serde::Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
    #[serde(default, rename = "registrytoken")]
    registry_token: Option<String>,
}

impl std::fmt::Debug for DockerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DockerAuth(<redacted>)")
    }
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `host:5000/path` → `host:5000`; docker
/// hub's aliases become one name.
fn normalize_registry(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "docker.io" | "registry-1.docker.io" | "index.docker.io" => "index.docker.io".to_owned(),
        h => h.to_owned(),
    }
}

fn from_docker_config(
    config: &DockerConfig,
    path: &std::path::Path,
    registry: &str,
) -> Result<RegistryAuth, AuthError> {
    let wanted = normalize_registry(registry);
    // The name docker passes to helpers: the config key if one matches, else the host.
    let server = if wanted == "index.docker.io" {
        "https://index.docker.io/v1/".to_owned()
    } else {
        wanted.clone()
    };
    if let Some((_, helper)) = config
        .cred_helpers
        .iter()
        .find(|(k, _)| normalize_registry(k) == wanted)
    {
        return run_helper(helper, &server);
    }
    if let Some(helper) = config.creds_store.as_deref().filter(|h| !h.is_empty()) {
        return run_helper(helper, &server);
    }
    let Some((key, entry)) = config
        .auths
        .iter()
        .find(|(k, _)| normalize_registry(k) == wanted)
    else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(token) = &entry.registry_token {
        return Ok(RegistryAuth::Bearer(token.clone()));
    }
    if let Some(encoded) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let bad = || AuthError::DockerConfigEntry {
            path: path.to_path_buf(),
            registry: key.clone(),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(RegistryAuth::Basic(user.to_owned(), pass.to_owned()));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    if let Some(token) = &entry.identity_token {
        // An identity token is sent as the password with docker's `<token>` user name.
        return Ok(RegistryAuth::Basic("<token>".to_owned(), token.clone()));
    }
    Ok(RegistryAuth::Anonymous)
}

#[derive(serde::Deserialize)]
struct HelperReply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Runs `docker-credential-<helper> get` with the server name on stdin.
fn run_helper(helper: &str, server: &str) -> Result<RegistryAuth, AuthError> {
    run_program(
        std::ffi::OsStr::new(&format!("docker-credential-{helper}")),
        helper,
        server,
    )
}

fn run_program(
    program: &std::ffi::OsStr,
    helper: &str,
    server: &str,
) -> Result<RegistryAuth, AuthError> {
    let run_err = |source| AuthError::HelperRun {
        helper: helper.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .arg("get")
        // A credential helper is another program: kib's own secrets are not its business.
        .env_remove("COSIGN_PASSWORD")
        .env_remove("KIB_REGISTRY_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(run_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server.as_bytes()).map_err(run_err)?;
    }
    let out = child.wait_with_output().map_err(run_err)?;
    let failed = |message: String| AuthError::HelperFailed {
        helper: helper.to_owned(),
        registry: server.to_owned(),
        message,
    };
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned()
            + String::from_utf8_lossy(&out.stderr).trim();
        // docker treats "not found" as no credentials, not as an error.
        if said.to_ascii_lowercase().contains("credentials not found") {
            return Ok(RegistryAuth::Anonymous);
        }
        return Err(failed(format!("{} ({said})", out.status)));
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout)
        .map_err(|e| failed(format!("its output is not credentials JSON: {e}")))?;
    if reply.username.is_empty() && reply.secret.is_empty() {
        return Ok(RegistryAuth::Anonymous);
    }
    Ok(RegistryAuth::Basic(reply.username, reply.secret))
}

/// The HTTP status a registry answered with, if the error carries one.
pub fn http_status(err: &oci_client::errors::OciDistributionError) -> Option<u16> {
    use oci_client::errors::OciDistributionError as E;
    match err {
        E::RequestError(e) => e.status().map(|s| s.as_u16()),
        E::ServerError { code, .. } => Some(*code),
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => Some(401),
        E::ImageManifestNotFoundError(_) => Some(404),
        E::RegistryError { envelope, .. } => envelope.errors.iter().find_map(|e| {
            use oci_client::errors::OciErrorCode as C;
            match e.code {
                C::Unauthorized => Some(401),
                C::Denied => Some(403),
                C::NameUnknown | C::ManifestUnknown | C::BlobUnknown => Some(404),
                C::Toomanyrequests => Some(429),
                _ => None,
            }
        }),
        _ => None,
    }
}

/// Whether a registry error may go away if the request is made again: connection failures,
/// timeouts, 408, 429 and 5xx. 401/403/404, malformed requests and untrusted certificates are
/// permanent.
pub fn is_transient(err: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    if let Some(code) = http_status(err) {
        return code == 408 || code == 429 || code >= 500;
    }
    // An untrusted certificate stays untrusted.
    if crate::transport::is_certificate_error(err) {
        return false;
    }
    match err {
        E::RequestError(e) => e.is_connect() || e.is_timeout() || e.is_request() || e.is_body(),
        E::IoError(_) | E::RegistryNoLocationError => true,
        _ => false,
    }
}

/// Whether the error means the registry could not be reached at all.
pub fn is_unreachable(err: &oci_client::errors::OciDistributionError) -> bool {
    matches!(err, oci_client::errors::OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        let opts = RegistryOptions {
            username: Some("u".into()),
            password: Some(s),
            ..RegistryOptions::default()
        };
        assert!(!format!("{opts:?}").contains("hunter2"));
    }

    #[test]
    fn loopback_detection() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "registry.example",
            "10.0.0.1:5000",
            "ghcr.io",
            "localhost.example:5000",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn docker_config_auths_and_aliases() {
        let json = r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"reg.example:5000":{"username":"a","password":"b"}}}"#;
        let config: DockerConfig = serde_json::from_str(json).unwrap();
        let p = std::path::Path::new("config.json");
        match from_docker_config(&config, p, "docker.io").unwrap() {
            RegistryAuth::Basic(u, pw) => assert_eq!((u.as_str(), pw.as_str()), ("user", "pass")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            from_docker_config(&config, p, "reg.example:5000").unwrap(),
            RegistryAuth::Basic(..)
        ));
        assert!(matches!(
            from_docker_config(&config, p, "other.example").unwrap(),
            RegistryAuth::Anonymous
        ));
        let bad: DockerConfig = serde_json::from_str(r#"{"auths":{"x":{"auth":"!!"}}}"#).unwrap();
        assert!(matches!(
            from_docker_config(&bad, p, "x"),
            Err(AuthError::DockerConfigEntry { .. })
        ));
    }

    #[test]
    fn credential_helper_is_called() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-kibtest");
        fs_err::write(
            &helper,
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread server\necho \"{\\\"Username\\\":\\\"u-$server\\\",\\\"Secret\\\":\\\"s\\\"}\"\n",
        )
        .unwrap();
        fs_err::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        match run_program(helper.as_os_str(), "kibtest", "reg.example").unwrap() {
            RegistryAuth::Basic(u, p) => {
                assert_eq!((u.as_str(), p.as_str()), ("u-reg.example", "s"))
            }
            other => panic!("{other:?}"),
        }
        let config: DockerConfig =
            serde_json::from_str(r#"{"credHelpers":{"reg.example":"kib-no-such"}}"#).unwrap();
        let missing = from_docker_config(&config, std::path::Path::new("c"), "reg.example");
        assert!(
            matches!(missing, Err(AuthError::HelperRun { .. })),
            "{missing:?}"
        );
    }
}
