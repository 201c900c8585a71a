//! How kib reaches a registry: plain HTTP or HTTPS, which certificates are trusted, and for
//! which host verification is skipped. Every registry client kib makes (oci-client for the
//! registry API, reqwest for the streamed layer upload) comes from [`connect`], so the choices
//! are made in this one place.
//!
//! - **Plain HTTP** (`--plain-http`): used for the named registry only. Loopback registries
//!   (`127.0.0.0/8`, `::1`, `localhost`) use it by default, as docker does, unless TLS is
//!   asked for with a CA file or `--skip-tls-verify`. To any other host, plain HTTP is allowed
//!   only anonymously: credentials found for it are refused before any request is made, since
//!   anyone on the path would read them.
//! - **Extra roots** (`--ca-file`): PEM certificates trusted in addition to the system's, for
//!   the registry and its token service; verification stays on.
//! - **Skip verification** (`--skip-tls-verify`): for the registry's own host name only.
//!   kib's own client (the layer upload) does this per host with [`HostScopedVerifier`]: every
//!   other host (token service, a `Location` elsewhere) is fully verified. oci-client 0.18 can
//!   only turn verification off for its whole client (`ClientConfig::accept_invalid_certificates`,
//!   it builds its own reqwest client and takes no TLS configuration or client from outside:
//!   oci-client-0.18.0/src/client.rs, `impl TryFrom<ClientConfig> for Client`), so [`connect`]
//!   asks the registry for its token service first and refuses one on another host or over
//!   HTTP: the registry credentials that go there are never sent unverified. Every blob kib
//!   uploads (the layer and config of `kib publish`, the signer's signature and attestation
//!   blobs) goes through kib's client ([`crate::upload::Uploader`]), not oci-client's
//!   `push_blob`, which sends the credentials to any `Location` host. What is left is a
//!   redirect of a blob download to another host, which oci-client's reqwest follows
//!   unverified (reqwest drops the `Authorization` header on a cross-host redirect and every
//!   blob is checked against its digest).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oci_client::Client;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::registry::{Reference, RegistryOptions, is_loopback, uses_http};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const USER_AGENT: &str = concat!("kib/", env!("CARGO_PKG_VERSION"));

/// The registry cannot be reached the way the options ask for.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// `--plain-http` together with a TLS option.
    #[error("Plain HTTP was asked for together with `{tls_option}`, which needs HTTPS")]
    Conflict {
        /// The TLS option given.
        tls_option: &'static str,
    },
    /// Credentials would go over plain HTTP to a host that is not loopback.
    #[error(
        "Refusing to send registry credentials over plain HTTP to `{registry}`, which is not a loopback address"
    )]
    PlainHttpCredentials {
        /// The registry.
        registry: String,
    },
    /// The CA file could not be read.
    #[error("Failed to read the CA file `{}`", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no PEM certificate.
    #[error("The CA file `{}` holds no PEM certificate", path.display())]
    CaFileEmpty {
        /// The file.
        path: PathBuf,
    },
    /// The HTTP clients could not be built.
    #[error("Failed to set up TLS for `{registry}`")]
    Setup {
        /// The registry.
        registry: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `GET /v2/` to learn the token service failed.
    #[error("Failed to ask `{registry}` for its token service")]
    Probe {
        /// The registry.
        registry: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// With `--skip-tls-verify`, the token service is on another host or plain HTTP.
    #[error(
        "`{registry}` sends logins to the token service `{realm}`, which `--skip-tls-verify` would leave unverified"
    )]
    ForeignTokenService {
        /// The registry.
        registry: String,
        /// The token service URL.
        realm: String,
    },
    /// Plain HTTP was sent to a registry that speaks HTTPS.
    #[error("`{registry}` answered plain HTTP with \"{answer}\": it speaks HTTPS")]
    SpeaksHttps {
        /// The registry.
        registry: String,
        /// What it answered.
        answer: String,
        /// Whether `--plain-http` asked for HTTP (else: the loopback default).
        asked: bool,
    },
}

impl kib_manifest::Hint for TransportError {
    fn hint(&self) -> Option<String> {
        match self {
            TransportError::Conflict { .. } => Some(
                "drop `--plain-http` (`KIB_REGISTRY_PLAIN_HTTP`), or drop the TLS option".into(),
            ),
            TransportError::PlainHttpCredentials { .. } => Some(
                "serve the registry over HTTPS (a private CA works with `--ca-file`); plain HTTP is for loopback registries or anonymous access".into(),
            ),
            TransportError::CaFile { .. } | TransportError::CaFileEmpty { .. } => Some(
                "point `--ca-file` (`KIB_REGISTRY_CA_FILE`) at a PEM file with the registry's CA certificate".into(),
            ),
            TransportError::Setup { .. } | TransportError::Probe { .. } => None,
            TransportError::ForeignTokenService { .. } => Some(
                "pass the registry's CA with `--ca-file` instead of `--skip-tls-verify`: then every host is verified".into(),
            ),
            TransportError::SpeaksHttps { asked: true, .. } => Some(
                "drop `--plain-http`; if its certificate is from a private CA, pass it with `--ca-file`".into(),
            ),
            TransportError::SpeaksHttps { asked: false, .. } => Some(
                "a loopback registry is spoken to in plain HTTP unless a TLS option is given: pass its CA certificate with `--ca-file` (or skip the check for it with `--skip-tls-verify`)".into(),
            ),
        }
    }
}

/// The clients for one registry, made by [`connect`].
#[derive(Clone)]
pub struct Transport {
    /// oci-client, for the registry API.
    pub client: Client,
    /// A plain HTTP client with the same choices, for requests oci-client cannot make; it
    /// follows no redirects.
    pub http: reqwest::Client,
    /// `http` or `https`.
    pub scheme: &'static str,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// Checks the options against `reference`'s registry and the credentials `auth` (no network
/// I/O): conflicting options, credentials over plain HTTP to a non-loopback host, an
/// unreadable CA file. Returns the extra roots.
pub fn check(
    reference: &Reference,
    opts: &RegistryOptions,
    auth: &RegistryAuth,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let registry = reference.resolve_registry();
    if opts.plain_http {
        if opts.skip_tls_verify {
            return Err(TransportError::Conflict {
                tls_option: "--skip-tls-verify",
            });
        }
        if opts.ca_file.is_some() {
            return Err(TransportError::Conflict {
                tls_option: "--ca-file",
            });
        }
    }
    if uses_http(reference, opts)
        && !is_loopback(registry)
        && !matches!(auth, RegistryAuth::Anonymous)
    {
        return Err(TransportError::PlainHttpCredentials {
            registry: registry.to_owned(),
        });
    }
    match &opts.ca_file {
        Some(path) => read_roots(path),
        None => Ok(Vec::new()),
    }
}

fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bytes = fs_err::read(path).map_err(|source| TransportError::CaFile {
        path: path.to_owned(),
        source,
    })?;
    let roots = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::CaFile {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
    if roots.is_empty() {
        return Err(TransportError::CaFileEmpty {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// The clients for `reference`'s registry with these options and credentials. Makes one
/// `GET /v2/` request: over plain HTTP to tell a registry that speaks HTTPS, and with
/// `--skip-tls-verify` to refuse a token service the unverified client would reach.
pub async fn connect(
    reference: &Reference,
    opts: &RegistryOptions,
    auth: &RegistryAuth,
) -> Result<Transport, TransportError> {
    let roots = check(reference, opts, auth)?;
    let registry = reference.resolve_registry().to_owned();
    let http = uses_http(reference, opts);
    let setup = |source: Box<dyn std::error::Error + Send + Sync>| TransportError::Setup {
        registry: registry.clone(),
        source,
    };
    let protocol = if http {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::try_from(ClientConfig {
        protocol,
        // Per client in oci-client: see the module docs for what keeps this to one host.
        accept_invalid_certificates: opts.skip_tls_verify && !http,
        extra_root_certificates: roots
            .iter()
            .map(|c| Certificate {
                encoding: CertificateEncoding::Der,
                data: c.to_vec(),
            })
            .collect(),
        use_monolithic_push: true,
        connect_timeout: Some(CONNECT_TIMEOUT),
        user_agent: USER_AGENT,
        ..ClientConfig::default()
    })
    .map_err(|e| setup(Box::new(e)))?;
    let skip_host = (opts.skip_tls_verify && !http).then(|| host_of(&registry).to_owned());
    let tls = tls_config(roots, skip_host).map_err(|e| setup(Box::new(e)))?;
    let http_client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| setup(Box::new(e)))?;
    let transport = Transport {
        client,
        http: http_client,
        scheme: if http { "http" } else { "https" },
    };
    if http || opts.skip_tls_verify {
        probe(&transport, &registry, opts).await?;
    }
    Ok(transport)
}

/// `GET /v2/` with kib's own client. Connection failures are left to the real requests,
/// which retry and explain them, except where the token service must be known.
async fn probe(
    t: &Transport,
    registry: &str,
    opts: &RegistryOptions,
) -> Result<(), TransportError> {
    let need_realm = t.scheme == "https" && opts.skip_tls_verify;
    let url = format!("{}://{registry}/v2/", t.scheme);
    let res = match t.http.get(&url).send().await {
        Ok(r) => r,
        Err(source) if need_realm => {
            return Err(TransportError::Probe {
                registry: registry.to_owned(),
                source,
            });
        }
        Err(_) => return Ok(()),
    };
    if t.scheme == "http" && res.status() == reqwest::StatusCode::BAD_REQUEST {
        let body = res.text().await.unwrap_or_default();
        // Go's TLS server (docker distribution, zot, harbor) answers plain HTTP this way.
        if body.contains("HTTPS server") {
            return Err(TransportError::SpeaksHttps {
                registry: registry.to_owned(),
                answer: body.trim().chars().take(120).collect(),
                asked: opts.plain_http,
            });
        }
        return Ok(());
    }
    if !need_realm {
        return Ok(());
    }
    let Some(realm) = res
        .headers()
        .get(http::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_realm)
    else {
        return Ok(());
    };
    let same_host = reqwest::Url::parse(&realm).is_ok_and(|u| {
        let base = reqwest::Url::parse(&format!("https://{registry}/")).ok();
        u.scheme() == "https"
            && base.is_some_and(|b| {
                b.host_str() == u.host_str()
                    && b.port_or_known_default() == u.port_or_known_default()
            })
    });
    if same_host {
        Ok(())
    } else {
        Err(TransportError::ForeignTokenService {
            registry: registry.to_owned(),
            realm,
        })
    }
}

/// The `realm` of a `Bearer` challenge.
fn bearer_realm(header: &str) -> Option<String> {
    let (scheme, params) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    for part in params.split(',') {
        if let Some((k, v)) = part.trim().split_once('=')
            && k.trim().eq_ignore_ascii_case("realm")
        {
            return Some(v.trim().trim_matches('"').to_owned());
        }
    }
    None
}

/// `host` of `host[:port]` / `[v6]:port`, as a TLS server name.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    registry.rsplit_once(':').map_or(registry, |(h, _)| h)
}

fn tls_config(
    roots: Vec<CertificateDer<'static>>,
    skip_host: Option<String>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    // The trust reqwest itself uses: the platform's roots (rustls-platform-verifier), plus
    // the CA file's.
    let platform = if roots.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())?
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider.clone())?
    };
    let verifier = HostScopedVerifier {
        skip_host,
        inner: Arc::new(platform),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// Full verification, except the certificate chain and name of one host (`--skip-tls-verify`).
/// The handshake signature is always checked, so the peer holds the key of the certificate it
/// presented.
#[derive(Debug)]
pub struct HostScopedVerifier {
    skip_host: Option<String>,
    inner: Arc<dyn ServerCertVerifier>,
}

impl HostScopedVerifier {
    fn skips(&self, name: &ServerName<'_>) -> bool {
        let Some(skip) = &self.skip_host else {
            return false;
        };
        match name {
            ServerName::DnsName(d) => d.as_ref().eq_ignore_ascii_case(skip),
            ServerName::IpAddress(ip) => {
                skip.parse::<std::net::IpAddr>().ok() == Some(std::net::IpAddr::from(*ip))
            }
            _ => false,
        }
    }
}

impl ServerCertVerifier for HostScopedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.skips(server_name) {
            return Ok(ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether a registry error was caused by an untrusted or invalid server certificate.
pub fn is_certificate_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        // `io::Error::source` skips the error it wraps, and reqwest nests them
        // (`Other(InvalidData(rustls::Error))`): look inside each.
        let mut inner: &(dyn std::error::Error + 'static) = e;
        loop {
            if inner
                .downcast_ref::<rustls::Error>()
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
            {
                return true;
            }
            match inner
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(i) => inner = i,
                None => break,
            }
        }
        cause = e.source();
    }
    false
}

/// The hint for an untrusted certificate anywhere in `err`'s chain.
pub fn certificate_hint(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    is_certificate_error(err).then(|| {
        "the registry's certificate is not trusted: pass its CA certificate with `--ca-file` (`KIB_REGISTRY_CA_FILE`), or skip the check for this registry only with `--skip-tls-verify`".into()
    })
}

#[cfg(test)]
mod tests {
    use kib_manifest::Hint as _;

    use super::*;

    fn opts() -> RegistryOptions {
        RegistryOptions::default()
    }

    fn basic() -> RegistryAuth {
        RegistryAuth::Basic("u".into(), "p".into())
    }

    #[test]
    fn plain_http_with_credentials_to_a_remote_host_is_refused_before_any_request() {
        // An address nothing listens on: the refusal must come from `check`, not the network.
        let r: Reference = "203.0.113.7:5000/kib/node".parse().unwrap();
        let o = RegistryOptions {
            plain_http: true,
            ..opts()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let err = rt.block_on(connect(&r, &o, &basic())).unwrap_err();
        assert!(
            matches!(err, TransportError::PlainHttpCredentials { .. }),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(err.hint().unwrap().contains("--ca-file"));
        // Anonymous access to it, and credentials to loopback, are allowed.
        assert!(check(&r, &o, &RegistryAuth::Anonymous).is_ok());
        let lo: Reference = "127.0.0.1:5000/kib/node".parse().unwrap();
        assert!(check(&lo, &o, &basic()).is_ok());
        assert!(check(&lo, &opts(), &basic()).is_ok());
        // Without `--plain-http` a remote registry is HTTPS: credentials are fine.
        assert!(check(&r, &opts(), &basic()).is_ok());
    }

    #[test]
    fn tls_options_conflict_with_plain_http_and_pick_https_on_loopback() {
        let lo: Reference = "127.0.0.1:5000/kib/node".parse().unwrap();
        let both = RegistryOptions {
            plain_http: true,
            skip_tls_verify: true,
            ..opts()
        };
        assert!(matches!(
            check(&lo, &both, &RegistryAuth::Anonymous),
            Err(TransportError::Conflict { .. })
        ));
        assert!(uses_http(&lo, &opts()));
        for o in [
            RegistryOptions {
                skip_tls_verify: true,
                ..opts()
            },
            RegistryOptions {
                ca_file: Some("ca.pem".into()),
                ..opts()
            },
        ] {
            assert!(!uses_http(&lo, &o), "{o:?}");
        }
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        fs_err::write(&empty, "not a certificate\n").unwrap();
        let r: Reference = "registry.example/kib/node".parse().unwrap();
        let o = RegistryOptions {
            ca_file: Some(empty),
            ..opts()
        };
        assert!(matches!(
            check(&r, &o, &RegistryAuth::Anonymous),
            Err(TransportError::CaFileEmpty { .. })
        ));
        let o = RegistryOptions {
            ca_file: Some(dir.path().join("missing.pem")),
            ..opts()
        };
        assert!(matches!(
            check(&r, &o, &RegistryAuth::Anonymous),
            Err(TransportError::CaFile { .. })
        ));
    }

    #[test]
    fn skip_applies_to_the_named_host_only() {
        let v = HostScopedVerifier {
            skip_host: Some("127.0.0.1".into()),
            inner: Arc::new(
                rustls_platform_verifier::Verifier::new(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .unwrap(),
            ),
        };
        assert!(v.skips(&ServerName::try_from("127.0.0.1").unwrap()));
        assert!(!v.skips(&ServerName::try_from("127.0.0.2").unwrap()));
        assert!(!v.skips(&ServerName::try_from("auth.example").unwrap()));
        let v = HostScopedVerifier {
            skip_host: Some("Registry.Example".into()),
            ..v
        };
        assert!(v.skips(&ServerName::try_from("registry.example").unwrap()));
        assert!(!v.skips(&ServerName::try_from("registry.example.evil").unwrap()));
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("reg.example:443"), "reg.example");
        assert_eq!(host_of("reg.example"), "reg.example");
    }

    #[test]
    fn bearer_realm_is_parsed() {
        assert_eq!(
            bearer_realm(r#"Bearer realm="https://auth.example/token",service="reg""#).as_deref(),
            Some("https://auth.example/token")
        );
        assert_eq!(bearer_realm(r#"Basic realm="kib-test""#), None);
    }
}
