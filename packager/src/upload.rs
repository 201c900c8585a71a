//! kib's own blob uploads: `POST` an upload session, then `PUT ?digest=` (a small blob) or a
//! streamed `PATCH` + `PUT` (the layer, driven by push.rs). Not oci-client's `push_blob`: that
//! sends the credentials to whatever host the `Location` header names, through a client that
//! `--skip-tls-verify` leaves unverified for every host. Here credentials go to the registry
//! only (a `Location` elsewhere, or on a downgraded scheme, gets none: CVE-2020-15157), and
//! the HTTP client is [`Transport::http`], which verifies every host but the registry's own
//! when verification is skipped (`registry::connect`). `kib publish` and the signer both
//! upload through it.

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::transport::Transport;

/// Uploads blobs to one repository with kib's HTTP client and oci-client's token.
#[derive(Clone)]
pub struct Uploader {
    /// oci-client, for the bearer token it got from the registry's challenge.
    client: Client,
    http: reqwest::Client,
    scheme: &'static str,
    auth: RegistryAuth,
    reference: Reference,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("reference", &self.reference.whole())
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl Uploader {
    /// An uploader for `reference`'s repository over `transport`, with `auth`.
    pub fn new(transport: &Transport, auth: &RegistryAuth, reference: &Reference) -> Self {
        Self {
            client: transport.client.clone(),
            http: transport.http.clone(),
            scheme: transport.scheme,
            auth: auth.clone(),
            reference: reference.clone(),
        }
    }

    /// `Authorization` for the upload requests: oci-client's bearer token if the registry
    /// uses tokens, else basic credentials once the registry asked for them (`basic`).
    pub(crate) async fn authorization(
        &self,
        basic: bool,
    ) -> Result<Option<String>, OciDistributionError> {
        if let Some(token) = self
            .client
            .auth(&self.reference, &self.auth, RegistryOperation::Push)
            .await?
        {
            return Ok(Some(format!("Bearer {token}")));
        }
        match &self.auth {
            RegistryAuth::Basic(user, password) if basic => {
                use base64::Engine as _;
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Ok(Some(format!("Basic {pair}")))
            }
            _ => Ok(None),
        }
    }

    /// An absolute URL for a `Location` header; whether credentials may go there (only to the
    /// registry itself, never over a downgraded scheme: CVE-2020-15157).
    pub(crate) fn resolve_location(
        &self,
        location: &str,
    ) -> Result<(reqwest::Url, bool), OciDistributionError> {
        let registry = &self.reference.resolve_registry();
        let base = reqwest::Url::parse(&format!("{}://{registry}/", self.scheme))
            .map_err(|e| OciDistributionError::UrlParseError(e.to_string()))?;
        let url = base
            .join(location)
            .map_err(|e| OciDistributionError::UrlParseError(e.to_string()))?;
        let same = url.host_str() == base.host_str()
            && url.port_or_known_default() == base.port_or_known_default()
            && !(base.scheme() == "https" && url.scheme() != "https");
        Ok((url, same))
    }

    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        authorization: Option<&str>,
        body: Option<reqwest::Body>,
        expected: u16,
    ) -> Result<reqwest::Response, OciDistributionError> {
        let mut rb = self.http.request(method, url);
        if let Some(a) = authorization {
            rb = rb.header(http::header::AUTHORIZATION, a);
        }
        rb = match body {
            Some(b) => rb
                .header(http::header::CONTENT_TYPE, "application/octet-stream")
                .body(b),
            None => rb.header(http::header::CONTENT_LENGTH, 0),
        };
        let res = rb.send().await?;
        if res.status().as_u16() == expected {
            return Ok(res);
        }
        let url = res.url().to_string();
        let code = res.status().as_u16();
        let mut message = res.text().await.unwrap_or_default();
        message.truncate(1024);
        Err(OciDistributionError::ServerError { url, code, message })
    }

    pub(crate) fn location(
        &self,
        res: &reqwest::Response,
    ) -> Result<(reqwest::Url, bool), OciDistributionError> {
        let location = res
            .headers()
            .get(http::header::LOCATION)
            .ok_or(OciDistributionError::RegistryNoLocationError)?
            .to_str()?;
        self.resolve_location(location)
    }

    /// `POST`s a new upload session to `start`: its URL and whether credentials may go there,
    /// the `Authorization` used, and whether the registry asked for basic credentials.
    pub(crate) async fn start_upload(
        &self,
        start: reqwest::Url,
    ) -> Result<((reqwest::Url, bool), Option<String>, bool), OciDistributionError> {
        // Credentials only once asked for, as oci-client does (a bearer token is always
        // sent: oci-client obtained it from the registry's challenge).
        let mut basic = false;
        let mut authz = self.authorization(basic).await?;
        let res = match self
            .send(
                reqwest::Method::POST,
                start.clone(),
                authz.as_deref(),
                None,
                202,
            )
            .await
        {
            Err(OciDistributionError::ServerError { code: 401, .. })
                if authz.is_none() && matches!(self.auth, RegistryAuth::Basic(..)) =>
            {
                basic = true;
                authz = self.authorization(basic).await?;
                self.send(reqwest::Method::POST, start, authz.as_deref(), None, 202)
                    .await?
            }
            other => other?,
        };
        Ok((self.location(&res)?, authz, basic))
    }

    pub(crate) fn upload_start_url(&self) -> Result<reqwest::Url, OciDistributionError> {
        let repo = &self.reference;
        reqwest::Url::parse(&format!(
            "{}://{}/v2/{}/blobs/uploads/",
            self.scheme,
            repo.resolve_registry(),
            repo.repository()
        ))
        .map_err(|e| OciDistributionError::UrlParseError(e.to_string()))
    }

    /// A small blob in one `POST` + `PUT ?digest=`. Not oci-client's `push_blob`: that sends
    /// the credentials to whatever host the `Location` header names, through a client that
    /// `--skip-tls-verify` leaves unverified for every host; here credentials go to the
    /// registry only and other hosts are verified (`registry::connect`).
    pub async fn upload_blob(&self, data: &[u8], digest: &str) -> Result<(), OciDistributionError> {
        let ((mut url, ours), authz, _) = self.start_upload(self.upload_start_url()?).await?;
        url.query_pairs_mut().append_pair("digest", digest);
        self.send(
            reqwest::Method::PUT,
            url,
            authz.as_deref().filter(|_| ours),
            Some(reqwest::Body::from(data.to_vec())),
            201,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uploader(scheme: &'static str) -> Uploader {
        let transport = Transport {
            client: Client::default(),
            http: reqwest::Client::new(),
            scheme,
        };
        let reference: Reference = "registry.example:5000/kib/node:v1".parse().unwrap();
        Uploader::new(&transport, &RegistryAuth::Anonymous, &reference)
    }

    /// Credentials follow a `Location` only to the registry itself, never to another host or
    /// port, and never over a scheme downgraded from https (CVE-2020-15157).
    #[test]
    fn credentials_go_to_the_registrys_own_locations_only() {
        let up = uploader("https");
        let ours = |loc: &str| up.resolve_location(loc).unwrap();
        let (url, same) = ours("/v2/kib/node/blobs/uploads/abc?_state=x");
        assert!(same);
        assert_eq!(
            url.as_str(),
            "https://registry.example:5000/v2/kib/node/blobs/uploads/abc?_state=x"
        );
        assert!(ours("https://registry.example:5000/v2/kib/node/blobs/uploads/abc").1);
        assert!(!ours("https://storage.example/upload/abc").1);
        assert!(!ours("https://registry.example:5001/v2/kib/node/blobs/uploads/abc").1);
        assert!(!ours("http://registry.example:5000/v2/kib/node/blobs/uploads/abc").1);
        let plain = uploader("http");
        assert!(
            plain
                .resolve_location("http://registry.example:5000/v2/x")
                .unwrap()
                .1
        );
    }
}
