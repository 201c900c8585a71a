//! The registry transport against a real HTTPS registry (Debian's docker-registry on
//! 127.0.0.1 with a CA made by `openssl` here): `--skip-tls-verify` reaches the named host only,
//! `--ca-file` trusts the CA with verification on, an untrusted certificate is a permanent,
//! recognisable error. Run with: `cargo test -p kib-packager --features test-registry --test tls`
#![cfg(feature = "test-registry")]

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
