//! `kib generate-key-pair`, `kib sign` and `kib verify` against a real local registry:
//! the happy path (with an SBOM attestation), exit codes, reasons, and that the key
//! password is never printed. Needs `--features test-registry`.
#![cfg(feature = "test-registry")]

use super::common::{
    PASSWORD, assert_verifies_with_sbom, generate_key_pair, kib_with_password as kib, path,
    start_registry, stderr, write_sbom,
};
use kib_signer::oci_client::client::{Config, ImageLayer};
use kib_signer::oci_client::secrets::RegistryAuth;
use kib_signer::oci_client::{Client, Reference};

/// Pushes a tiny one-layer image with oci-client and returns its digest.
fn push_image(image: &str, content: &str) -> String {
    let reference: Reference = image.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let client = kib_packager::registry::connect(
            &reference,
            &Default::default(),
            &RegistryAuth::Anonymous,
        )
        .await
        .unwrap()
        .client;
        let layer = ImageLayer::oci_v1(content.as_bytes().to_vec(), None);
        let config = Config::oci_v1(
            format!(
                r#"{{"os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
                layer.sha256_digest()
            )
            .into_bytes(),
            None,
        );
        push(&client, &reference, layer, config).await
    })
}

async fn push(client: &Client, reference: &Reference, layer: ImageLayer, config: Config) -> String {
    client
        .push(reference, &[layer], config, &RegistryAuth::Anonymous, None)
        .await
        .unwrap();
    let (_, digest) = client
        .pull_manifest_raw(
            reference,
            &RegistryAuth::Anonymous,
            &["application/vnd.oci.image.manifest.v1+json"],
        )
        .await
        .unwrap();
    digest
}

#[test]
fn sign_then_verify_and_tamper_cases() {
    let registry = start_registry();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let image = format!("{host}/kib/node:v1.37.1");
    let digest = push_image(&image, "node image A");

    let keys = generate_key_pair(dir.path());
    let (key, public) = (&keys.key, &keys.public);
    assert!(
        fs_err::read_to_string(key)
            .unwrap()
            .starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    );
    let out = kib(
        &[
            "generate-key-pair",
            "--output-key-prefix",
            path(&keys.prefix),
        ],
        Some(PASSWORD),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "refuses to overwrite: {}",
        stderr(&out)
    );

    let sbom = write_sbom(dir.path());
    let out = kib(
        &[
            "sign",
            "--key",
            path(key),
            &image,
            "--predicate",
            path(&sbom),
        ],
        Some(PASSWORD),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{}.sig", digest.replace(':', "-"))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}.att", digest.replace(':', "-"))),
        "{stdout}"
    );

    assert_verifies_with_sbom(public, &image, &digest);

    let out = kib(&["verify", "--key", path(public), &image], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{host}/kib/node@{digest}")
    );

    // Wrong public key: exit 1 with the reason.
    let out = kib(
        &[
            "generate-key-pair",
            "--output-key-prefix",
            path(&dir.path().join("other")),
        ],
        Some("x"),
    );
    assert!(out.status.success());
    let out = kib(
        &[
            "verify",
            "--key",
            path(&dir.path().join("other.pub")),
            &image,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not verify with the given public key"),
        "{}",
        stderr(&out)
    );

    // Wrong password: signing fails (exit 2), the password is not echoed.
    let out = kib(
        &["sign", "--key", path(key), &image],
        Some("wrong-password"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Failed to decrypt the private key"),
        "{}",
        stderr(&out)
    );

    // No password and no terminal: a clear error, not a hang.
    let out = kib(&["sign", "--key", path(key), &image], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("COSIGN_PASSWORD"), "{}", stderr(&out));

    // Re-tagged to another digest: exit 1, no signatures for the new digest.
    let digest_b = push_image(&image, "node image B");
    let out = kib(
        &["verify", "--key", path(public), &image, "--output", "json"],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verified"], false);
    assert_eq!(report["digest"], digest_b.as_str());
    assert!(
        stderr(&out).contains("No signatures found"),
        "{}",
        stderr(&out)
    );

    // The old digest still verifies when named explicitly.
    let out = kib(
        &[
            "verify",
            "--key",
            path(public),
            &format!("{host}/kib/node@{digest}"),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
}
