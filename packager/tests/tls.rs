//! The registry transport against a real HTTPS registry (Debian's docker-registry on
//! 127.0.0.1 with a CA made by `openssl` here): `--skip-tls-verify` reaches the named host only,
//! `--ca-file` trusts the CA with verification on, an untrusted certificate is a permanent,
//! recognisable error. Run with: `cargo test -p kib-packager --features test-registry --test tls`
#![cfg(feature = "test-registry")]

use kib_manifest::Hint as _;
use kib_packager::registry::{
    self, Auth, Reference, RegistryOptions, certificate_hint, connect, is_transient,
};
use kib_test_infra::registry::{Registry, TestTls, require};

fn tls_registry(dir: &std::path::Path) -> (Registry, TestTls) {
    if let Err(e) = require("openssl", "openssl") {
        panic!("{e}\nhint: {}", e.hint().unwrap_or_default());
    }
    let tls = TestTls::create(dir);
    let registry = Registry::start_tls(&tls.certificate, &tls.key)
        .unwrap_or_else(|e| panic!("{e}\nhint: {}", e.hint().unwrap_or_default()));
    (registry, tls)
}

#[tokio::test]
async fn skip_tls_verify_covers_the_named_host_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, _tls) = tls_registry(dir.path());
    let port = registry.host().rsplit_once(':').unwrap().1.to_owned();
    let image: Reference = format!("{}/kib/node:v1", registry.host()).parse().unwrap();
    let skip = RegistryOptions {
        skip_tls_verify: true,
        ..RegistryOptions::default()
    };
    let t = connect(&image, &skip, &Auth::Anonymous).await.unwrap();
    assert_eq!(t.scheme, "https");
    // The named host: certificate not checked.
    let res = t
        .http
        .get(format!("https://127.0.0.1:{port}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The same server under another name (as a token service or redirect host would be):
    // fully verified, so refused.
    let err = t
        .http
        .get(format!("https://localhost:{port}/v2/"))
        .send()
        .await
        .unwrap_err();
    assert!(certificate_hint(&err).is_some(), "{err:?}");
    // oci-client, for the registry API, reaches the named host.
    t.client
        .auth(
            &image,
            &Auth::Anonymous,
            oci_client::RegistryOperation::Pull,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn skip_tls_verify_refuses_a_token_service_on_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let tls = {
        if let Err(e) = require("openssl", "openssl") {
            panic!("{e}\nhint: {}", e.hint().unwrap_or_default());
        }
        TestTls::create(dir.path())
    };
    let skip = RegistryOptions {
        skip_tls_verify: true,
        ..RegistryOptions::default()
    };
    let basic = Auth::Basic("kib".into(), "secret".into());
    // Another host: oci-client would send the credentials there unverified, so no client.
    let foreign = Registry::start_tls_with_token_realm(
        &tls.certificate,
        &tls.key,
        "https://auth.example.invalid/token",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let image: Reference = format!("{}/kib/node:v1", foreign.host()).parse().unwrap();
    let err = connect(&image, &skip, &basic).await.unwrap_err();
    assert!(
        matches!(err, registry::TransportError::ForeignTokenService { ref realm, .. } if realm == "https://auth.example.invalid/token"),
        "{err:?}"
    );
    assert!(err.hint().unwrap().contains("--ca-file"));
    // With the CA instead, every host is verified: allowed.
    let with_ca = RegistryOptions {
        ca_file: Some(tls.ca.clone()),
        ..RegistryOptions::default()
    };
    connect(&image, &with_ca, &basic).await.unwrap();
    // Plain HTTP to a realm is refused too, even on the same host.
    let http_realm =
        Registry::start_tls_with_token_realm(&tls.certificate, &tls.key, "http://{addr}/token")
            .unwrap_or_else(|e| panic!("{e}"));
    let image: Reference = format!("{}/kib/node:v1", http_realm.host())
        .parse()
        .unwrap();
    let err = connect(&image, &skip, &basic).await.unwrap_err();
    assert!(
        matches!(err, registry::TransportError::ForeignTokenService { .. }),
        "{err:?}"
    );
    // The registry's own host (where the certificate check is skipped anyway): allowed.
    let own =
        Registry::start_tls_with_token_realm(&tls.certificate, &tls.key, "https://{addr}/token")
            .unwrap_or_else(|e| panic!("{e}"));
    let image: Reference = format!("{}/kib/node:v1", own.host()).parse().unwrap();
    connect(&image, &skip, &basic).await.unwrap();
}

#[tokio::test]
async fn ca_file_trusts_the_registry_and_another_ca_is_a_permanent_certificate_error() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, tls) = tls_registry(dir.path());
    let image: Reference = format!("{}/kib/node:v1", registry.host()).parse().unwrap();
    let with_ca = RegistryOptions {
        ca_file: Some(tls.ca.clone()),
        ..RegistryOptions::default()
    };
    let t = connect(&image, &with_ca, &Auth::Anonymous).await.unwrap();
    assert_eq!(t.scheme, "https");
    let res = t
        .http
        .get(format!("https://{}/v2/", registry.host()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // 404: the request got through verified TLS to the registry.
    let missing = t
        .client
        .fetch_manifest_digest(&image, &Auth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(registry::http_status(&missing), Some(404), "{missing:?}");

    let other_dir = dir.path().join("other");
    fs_err::create_dir_all(&other_dir).unwrap();
    let other = TestTls::create(&other_dir);
    let wrong = RegistryOptions {
        ca_file: Some(other.ca),
        ..RegistryOptions::default()
    };
    let t = connect(&image, &wrong, &Auth::Anonymous).await.unwrap();
    let err = t
        .client
        .fetch_manifest_digest(&image, &Auth::Anonymous)
        .await
        .unwrap_err();
    assert!(certificate_hint(&err).is_some(), "{err:?}");
    assert!(certificate_hint(&err).unwrap().contains("--ca-file"));
    assert!(!is_transient(&err), "{err:?}");
}
