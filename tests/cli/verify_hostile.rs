//! `kib verify` against a hostile registry: a small HTTP server on 127.0.0.1, written here, that
//! answers each resolution of the tag with another manifest (a tag moved between two reads).
//! Issue #16: signatures and attestations must be checked against one digest, resolved once.
//! A stand-in registry, labelled as such: it can make `kib verify` fail, never pass.
#![cfg(feature = "test-registry")]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::common::{generate_key_pair, kib_with_password as kib, path};

/// Serves `/v2/` and the manifest of `r:t` (different bytes on every read); 404 for anything
/// else. Returns the port and the count of tag reads.
fn moving_tag_registry() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reads = Arc::new(AtomicUsize::new(0));
    let counter = reads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let counter = counter.clone();
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
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let (status, ctype, body) = if target == "/v2/" {
                        ("200 OK", "application/json", "{}".to_owned())
                    } else if target == "/v2/r/manifests/t" {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        (
                            "200 OK",
                            "application/vnd.oci.image.manifest.v1+json",
                            format!(
                                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{z}","size":2}},"layers":[],"annotations":{{"read":"{n}"}}}}"#,
                                z = "0".repeat(64)
                            ),
                        )
                    } else {
                        (
                            "404 Not Found",
                            "application/json",
                            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#
                                .to_owned(),
                        )
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let body = if line.starts_with("HEAD") { "" } else { &body };
                    if out.write_all(head.as_bytes()).is_err()
                        || out.write_all(body.as_bytes()).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, reads)
}

#[test]
fn signatures_and_attestations_are_checked_against_one_resolution_of_the_tag() {
    let dir = tempfile::tempdir().unwrap();
    let keys = generate_key_pair(dir.path());
    let (port, reads) = moving_tag_registry();
    let image = format!("127.0.0.1:{port}/r:t");
    let out = kib(
        &[
            "verify",
            "--key",
            path(&keys.public),
            "--attestation-type",
            "spdxjson",
            "--output",
            "json",
            &image,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "nothing is signed: {out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["signatures"]["digest"], report["attestations"]["digest"],
        "{report:#}"
    );
    assert_eq!(reads.load(Ordering::SeqCst), 1, "the tag is resolved once");
}
