//! Sign, attest and verify against a real registry (Debian's `docker-registry` on
//! 127.0.0.1), with independent checks by skopeo, curl and openssl that use none of kib's
//! code, and every tamper case failing closed.
//!
//! Run: `cargo test -p kib-signer --features test-registry`. Fails with a hint if
//! docker-registry, skopeo, curl or openssl are missing.
#![cfg(feature = "test-registry")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kib_packager::registry::{RegistryOptions, Transport, connect};
use kib_signer::keys::{KeyError, Password, PublicKey, SigningKey, generate_key_pair};
use kib_signer::oci_client::Reference;
use kib_signer::oci_client::client::{Config, ImageLayer};
use kib_signer::oci_client::secrets::RegistryAuth;
use kib_signer::payload::{self, SimpleSigning};
use kib_signer::verify::Rejection;
use kib_signer::{attest_image, sign_image, verify_attestations, verify_image};
use kib_test_infra::registry::{Registry, require};

const AUTH: RegistryAuth = RegistryAuth::Anonymous;

fn tools() {
    for (program, package) in [
        ("skopeo", "skopeo"),
        ("openssl", "openssl"),
        ("curl", "curl"),
    ] {
        if let Err(e) = require(program, package) {
            panic!("{e}\nhint: {}", e.hint().unwrap_or_default());
        }
    }
}

fn start() -> Registry {
    tools();
    Registry::start().unwrap_or_else(|e| panic!("{e}\nhint: {}", e.hint().unwrap_or_default()))
}

fn reference(s: &str) -> Reference {
    s.parse().unwrap()
}

async fn transport_for(r: &Reference) -> Transport {
    connect(r, &RegistryOptions::default(), &AUTH)
        .await
        .unwrap()
}

/// Pushes a tiny image (one small layer, a config) and returns its manifest digest.
async fn push_image(image: &Reference, content: &str) -> String {
    let layer = ImageLayer::oci_v1(content.as_bytes().to_vec(), None);
    let config = Config::oci_v1(
        format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#, layer.sha256_digest())
            .into_bytes(),
        None,
    );
    transport_for(image)
        .await
        .client
        .push(image, &[layer], config, &AUTH, None)
        .await
        .unwrap();
    skopeo_digest(&format!("docker://{}", image.whole()))
}

/// The manifest digest as skopeo sees it (independent of kib).
fn skopeo_digest(image: &str) -> String {
    run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            image,
        ],
    )
    .trim()
    .to_owned()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run_in(dir: &Path, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn new_key(dir: &Path, name: &str) -> (SigningKey, PublicKey) {
    let files = generate_key_pair(&dir.join(name), &Password::new("test-password"), false).unwrap();
    (
        SigningKey::load(&files.private_key, &Password::new("test-password")).unwrap(),
        PublicKey::load(&files.public_key).unwrap(),
    )
}

/// The raw manifest at `tag` and the blob `digest`, fetched with skopeo and curl.
fn fetch_manifest(host: &str, repo: &str, tag: &str) -> serde_json::Value {
    serde_json::from_str(&run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{host}/{repo}:{tag}"),
        ],
    ))
    .unwrap()
}

fn fetch_blob(host: &str, repo: &str, digest: &str, to: &Path) {
    run(
        "curl",
        &[
            "-fsS",
            "-o",
            to.to_str().unwrap(),
            &format!("http://{host}/v2/{repo}/blobs/{digest}"),
        ],
    );
}

#[tokio::test]
async fn sign_verify_and_check_with_openssl_and_skopeo() {
    let registry = start();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let image = reference(&format!("{host}/kib/node:v1.37.1"));
    let digest = push_image(&image, "node image A").await;
    let transport = transport_for(&image).await;
    let client = transport.client.clone();
    let (key, public) = new_key(dir.path(), "cosign");

    let signed = sign_image(&transport, &AUTH, &image, &key).await.unwrap();
    assert_eq!(signed.digest, digest, "signs the digest the tag points to");
    assert_eq!(
        signed.signature,
        format!("{host}/kib/node:{}", payload::signature_tag(&digest))
    );

    let report = verify_image(&client, &AUTH, &image, &public).await.unwrap();
    assert!(report.verified, "{report:#?}");
    assert_eq!(report.digest, digest);
    assert_eq!(
        report.layers[0].identity.as_deref(),
        Some(format!("{host}/kib/node").as_str())
    );

    // Independently: skopeo for the manifest, curl for the payload, openssl for the signature.
    let manifest = fetch_manifest(&host, "kib/node", &payload::signature_tag(&digest));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], payload::SIMPLE_SIGNING_MEDIA_TYPE);
    let sig_b64 = layers[0]["annotations"][payload::SIGNATURE_ANNOTATION]
        .as_str()
        .unwrap();
    fs_err::write(dir.path().join("sig.der"), BASE64.decode(sig_b64).unwrap()).unwrap();
    fetch_blob(
        &host,
        "kib/node",
        layers[0]["digest"].as_str().unwrap(),
        &dir.path().join("payload.json"),
    );
    let payload_json: serde_json::Value =
        serde_json::from_slice(&fs_err::read(dir.path().join("payload.json")).unwrap()).unwrap();
    assert_eq!(
        payload_json["critical"]["image"]["docker-manifest-digest"],
        digest.as_str()
    );
    assert_eq!(
        payload_json["critical"]["identity"]["docker-reference"],
        format!("{host}/kib/node")
    );
    assert_eq!(
        payload_json["critical"]["type"],
        "cosign container image signature"
    );
    let (ok, out) = run_in(
        dir.path(),
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            "cosign.pub",
            "-signature",
            "sig.der",
            "payload.json",
        ],
    );
    assert!(ok && out.contains("Verified OK"), "openssl: {out}");

    // A second signature (another key) is appended; both verify.
    let (key2, public2) = new_key(dir.path(), "second");
    sign_image(&transport, &AUTH, &image, &key2).await.unwrap();
    let manifest = fetch_manifest(&host, "kib/node", &payload::signature_tag(&digest));
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        2,
        "existing signatures are kept"
    );
    assert!(
        verify_image(&client, &AUTH, &image, &public)
            .await
            .unwrap()
            .verified
    );
    assert!(
        verify_image(&client, &AUTH, &image, &public2)
            .await
            .unwrap()
            .verified
    );

    // Sign by digest: the same payload, the tag is not needed.
    let by_digest = reference(&format!("{host}/kib/node@{digest}"));
    assert!(
        verify_image(&client, &AUTH, &by_digest, &public)
            .await
            .unwrap()
            .verified
    );
}

#[tokio::test]
async fn sbom_attestation_is_cosign_format_and_verifies() {
    let registry = start();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let image = reference(&format!("{host}/kib/node:v1"));
    let digest = push_image(&image, "node image").await;
    let transport = transport_for(&image).await;
    let client = transport.client.clone();
    let (key, public) = new_key(dir.path(), "cosign");
    let sbom = br#"{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","name":"kib-node","packages":[{"name":"kubelet","versionInfo":"1.37.1"}]}"#;
    let spdx = payload::predicate_type_uri("spdxjson").unwrap();
    attest_image(&transport, &AUTH, &image, &key, &spdx, sbom)
        .await
        .unwrap();

    let report = verify_attestations(&client, &AUTH, &image, &public, Some(&spdx))
        .await
        .unwrap();
    assert!(report.verified, "{report:#?}");
    assert_eq!(
        report.layers[0].predicate.as_ref().unwrap()["packages"][0]["name"],
        "kubelet"
    );
    let wrong_type = verify_attestations(
        &client,
        &AUTH,
        &image,
        &public,
        Some("https://cyclonedx.org/bom"),
    )
    .await
    .unwrap();
    assert!(!wrong_type.verified);
    let (_, other) = new_key(dir.path(), "other");
    assert!(
        !verify_attestations(&client, &AUTH, &image, &other, None)
            .await
            .unwrap()
            .verified
    );

    // Independently: the envelope, the statement subject, the DSSE signature with openssl.
    let manifest = fetch_manifest(&host, "kib/node", &payload::attestation_tag(&digest));
    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], payload::DSSE_MEDIA_TYPE);
    assert_eq!(layer["annotations"]["predicateType"], spdx.as_str());
    fetch_blob(
        &host,
        "kib/node",
        layer["digest"].as_str().unwrap(),
        &dir.path().join("envelope.json"),
    );
    let envelope: serde_json::Value =
        serde_json::from_slice(&fs_err::read(dir.path().join("envelope.json")).unwrap()).unwrap();
    assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
    let statement = BASE64
        .decode(envelope["payload"].as_str().unwrap())
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&statement).unwrap();
    assert_eq!(parsed["_type"], "https://in-toto.io/Statement/v0.1");
    assert_eq!(
        parsed["subject"][0]["digest"]["sha256"],
        digest.trim_start_matches("sha256:")
    );
    let mut pae = format!(
        "DSSEv1 28 application/vnd.in-toto+json {} ",
        statement.len()
    )
    .into_bytes();
    pae.extend_from_slice(&statement);
    fs_err::write(dir.path().join("pae"), pae).unwrap();
    fs_err::write(
        dir.path().join("att.der"),
        BASE64
            .decode(envelope["signatures"][0]["sig"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let (ok, out) = run_in(
        dir.path(),
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            "cosign.pub",
            "-signature",
            "att.der",
            "pae",
        ],
    );
    assert!(ok && out.contains("Verified OK"), "openssl: {out}");
}

#[allow(clippy::print_stderr)] // shows each reason with `--nocapture`
fn assert_rejected(
    report: &kib_signer::Verification,
    matches: impl Fn(&Rejection) -> bool,
    what: &str,
) {
    assert!(
        !report.verified,
        "{what}: verified but should not be: {report:#?}"
    );
    let reason = report.failure_reason().unwrap();
    assert!(
        report
            .layers
            .iter()
            .any(|l| l.reason.as_ref().is_some_and(&matches)),
        "{what}: {reason}"
    );
    eprintln!("{what}: {reason}");
}

#[tokio::test]
async fn every_tamper_case_fails_closed() {
    let registry = start();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let image = reference(&format!("{host}/kib/node:v1"));
    let digest_a = push_image(&image, "image A").await;
    let transport = transport_for(&image).await;
    let client = transport.client.clone();
    let (key, public) = new_key(dir.path(), "cosign");
    sign_image(&transport, &AUTH, &image, &key).await.unwrap();
    assert!(
        verify_image(&client, &AUTH, &image, &public)
            .await
            .unwrap()
            .verified
    );

    // Wrong public key.
    let (_, other) = new_key(dir.path(), "other");
    let report = verify_image(&client, &AUTH, &image, &other).await.unwrap();
    assert_rejected(
        &report,
        |r| *r == Rejection::BadSignature,
        "wrong public key",
    );

    // Wrong password.
    let err =
        SigningKey::load(&dir.path().join("cosign.key"), &Password::new("not-it")).unwrap_err();
    assert!(
        matches!(err, KeyError::Decrypt { .. }),
        "wrong password: {err:?}"
    );

    // Payload changed: the original signature over a payload that names another digest.
    let sig_tag = reference(&format!(
        "{host}/kib/node:{}",
        payload::signature_tag(&digest_a)
    ));
    let manifest = fetch_manifest(&host, "kib/node", &payload::signature_tag(&digest_a));
    let original_sig = manifest["layers"][0]["annotations"][payload::SIGNATURE_ANNOTATION]
        .as_str()
        .unwrap()
        .to_owned();
    let forged = SimpleSigning::new(&format!("{host}/kib/evil"), &digest_a).to_bytes();
    let layer = ImageLayer::new(
        forged,
        payload::SIMPLE_SIGNING_MEDIA_TYPE.into(),
        Some(BTreeMap::from([(
            payload::SIGNATURE_ANNOTATION.to_owned(),
            original_sig,
        )])),
    );
    client
        .push(
            &sig_tag,
            &[layer],
            Config::oci_v1(b"{}".to_vec(), None),
            &AUTH,
            None,
        )
        .await
        .unwrap();
    let report = verify_image(&client, &AUTH, &image, &public).await.unwrap();
    assert_rejected(
        &report,
        |r| *r == Rejection::BadSignature,
        "payload changed",
    );

    // Image re-tagged to a different digest: the tag now names B, which has no signature.
    let digest_b = push_image(&image, "image B").await;
    assert_ne!(digest_a, digest_b);
    let report = verify_image(&client, &AUTH, &image, &public).await.unwrap();
    assert!(
        !report.verified && report.layers.is_empty(),
        "re-tagged: {report:#?}"
    );
    assert_eq!(report.digest, digest_b);
    assert!(report.failure_reason().unwrap().contains("No signatures"));

    // Signature for another digest: sign A (by digest) properly, then copy A's signatures to
    // B's `.sig` tag with skopeo.
    let by_digest_a = reference(&format!("{host}/kib/node@{digest_a}"));
    sign_image(&transport, &AUTH, &by_digest_a, &key)
        .await
        .unwrap();
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!(
                "docker://{host}/kib/node:{}",
                payload::signature_tag(&digest_a)
            ),
            &format!(
                "docker://{host}/kib/node:{}",
                payload::signature_tag(&digest_b)
            ),
        ],
    );
    let report = verify_image(&client, &AUTH, &image, &public).await.unwrap();
    assert_rejected(
        &report,
        |r| matches!(r, Rejection::WrongDigest { .. }),
        "signature for another digest",
    );
}
