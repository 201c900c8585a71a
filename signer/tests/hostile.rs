//! `verify_image` against a hostile stand-in registry (a small HTTP server on 127.0.0.1,
//! written here, labelled as such: it can make verification fail, never pass). Issue #16: a
//! layer that declares a few bytes and streams megabytes is cut off at its declared size.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;

use kib_signer::oci_client::client::{ClientConfig, ClientProtocol};
use kib_signer::oci_client::secrets::RegistryAuth;
use kib_signer::oci_client::{Client, Reference};
use kib_signer::{SigningKey, payload};
use sha2::Digest as _;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Serves `routes` (path → content type, body, bytes actually sent after the body).
fn serve(routes: Vec<(String, &'static str, Vec<u8>, usize)>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let routes = routes.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let found = routes.iter().find(|r| r.0 == target);
                    let (status, ctype, body, extra) = match (target.as_str(), found) {
                        ("/v2/", _) => ("200 OK", "application/json", b"{}".to_vec(), 0),
                        (_, Some((_, t, b, e))) => ("200 OK", *t, b.clone(), *e),
                        _ => (
                            "404 Not Found",
                            "application/json",
                            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}"#.to_vec(),
                            0,
                        ),
                    };
                    // The over-streamed blob has no Content-Length: it is read until it ends.
                    let head = if extra > 0 {
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nConnection: close\r\n\r\n"
                        )
                    } else {
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        )
                    };
                    let _ = out.write_all(head.as_bytes());
                    let _ = out.write_all(&body);
                    if extra > 0 {
                        let junk = vec![b'x'; 1 << 16];
                        let mut sent = 0;
                        while sent < extra && out.write_all(&junk).is_ok() {
                            sent += junk.len();
                        }
                        return;
                    }
                }
            });
        }
    });
    port
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[tokio::test]
async fn a_layer_streaming_past_its_declared_size_is_cut_off() {
    let image_manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{z}","size":2}},"layers":[]}}"#,
        z = "0".repeat(64)
    );
    let digest = sha(image_manifest.as_bytes());
    let declared = b"{}".to_vec();
    let layer_digest = sha(&declared);
    let sig_manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{z}","size":2}},"layers":[{{"mediaType":"{st}","digest":"{layer_digest}","size":2,"annotations":{{"{sa}":"AAAA"}}}}]}}"#,
        z = "0".repeat(64),
        st = payload::SIMPLE_SIGNING_MEDIA_TYPE,
        sa = payload::SIGNATURE_ANNOTATION,
    );
    let sig_tag = payload::signature_tag(&digest);
    let port = serve(vec![
        (
            "/v2/r/manifests/t".into(),
            MANIFEST,
            image_manifest.into_bytes(),
            0,
        ),
        (
            format!("/v2/r/manifests/{sig_tag}"),
            MANIFEST,
            sig_manifest.into_bytes(),
            0,
        ),
        // 2 bytes declared, 64 MiB sent.
        (
            format!("/v2/r/blobs/{layer_digest}"),
            "application/octet-stream",
            declared,
            64 << 20,
        ),
    ]);
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let image: Reference = format!("127.0.0.1:{port}/r:t").parse().unwrap();
    let signing = SigningKey::generate().unwrap();
    let key = signing.public_key();
    let v = kib_signer::verify_image(&client, &RegistryAuth::Anonymous, &image, key)
        .await
        .unwrap();
    assert!(!v.verified);
    let reason = format!("{:?}", v.layers);
    assert!(
        reason.contains("more than the declared 2 bytes"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_huge_manifest_is_refused() {
    let huge = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","annotations":{{"x":"{}"}}}}"#,
        "y".repeat(5 << 20)
    );
    let port = serve(vec![(
        "/v2/r/manifests/t".into(),
        MANIFEST,
        huge.into_bytes(),
        0,
    )]);
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let image: Reference = format!("127.0.0.1:{port}/r:t").parse().unwrap();
    let signing = SigningKey::generate().unwrap();
    let err = kib_signer::verify_image(
        &client,
        &RegistryAuth::Anonymous,
        &image,
        signing.public_key(),
    )
    .await
    .unwrap_err();
    let chain = kib_signer::verify::VerifyError::to_string(&err)
        + &format!(
            " {:?}",
            std::error::Error::source(&err).map(ToString::to_string)
        );
    assert!(chain.contains("more than 4194304"), "{chain}");
}
