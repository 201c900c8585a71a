//! `kib publish` to a registry that serves HTTPS on 127.0.0.1 with a certificate from a CA
//! made by `openssl` in the test: `--ca-file`, `--skip-tls-verify`, `--plain-http`, and the
//! removed `--insecure`, with skopeo (verifying, `--cert-dir`) as the independent checker.
//! Run with: `cargo test --features test-registry --test cli registry_tls`
#![cfg(feature = "test-registry")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kib_test_infra::registry::{Registry, TestTls};

use super::common::{
    PASSWORD, XDG_CACHE_HOME, generate_key_pair, need, ok, path, qcow2, stderr, text,
};

fn tls_registry(dir: &Path) -> (Registry, TestTls) {
    need("skopeo", "skopeo");
    need("qemu-img", "qemu-utils");
    need("openssl", "openssl");
    let tls = TestTls::create(dir);
    let registry = Registry::start_tls(&tls.certificate, &tls.key)
        .unwrap_or_else(|e| panic!("{e}\nhint: {}", e.hint().unwrap_or_default()));
    (registry, tls)
}

/// A qcow2 and a git checkout whose HEAD is tagged `v0.9.0`, in `dir`.
fn inputs(dir: &Path) -> (PathBuf, PathBuf) {
    need("git", "git");
    let repo = dir.join("repo");
    fs_err::create_dir_all(&repo).unwrap();
    for args in [
        &["init", "-q"][..],
        &["commit", "-q", "--allow-empty", "-m", "x"],
        &["tag", "v0.9.0"],
    ] {
        ok(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(&repo));
    }
    (qcow2(dir), repo)
}

/// `kib publish` of `inputs` to `image` with `extra` flags and `env`; no ambient registry
/// settings or credentials.
fn publish(
    image: &str,
    inputs: &(PathBuf, PathBuf),
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kib"));
    cmd.args(["publish", "--image", image, "--qcow2", path(&inputs.0)])
        .args([
            "--kubernetes-version",
            "v1.37.1",
            "--git-dir",
            path(&inputs.1),
        ])
        .args(extra)
        .env("KIB_NO_PROGRESS", "1")
        .env("SOURCE_DATE_EPOCH", "1790000000")
        .env("DOCKER_CONFIG", "/nonexistent-kib-test")
        .env("XDG_CACHE_HOME", XDG_CACHE_HOME)
        .env("COSIGN_PASSWORD", PASSWORD);
    for var in [
        "KIB_REGISTRY_USERNAME",
        "KIB_REGISTRY_PASSWORD",
        "KIB_REGISTRY_INSECURE",
        "KIB_REGISTRY_PLAIN_HTTP",
        "KIB_REGISTRY_SKIP_TLS_VERIFY",
        "KIB_REGISTRY_CA_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run kib");
    assert!(
        !format!("{}{}", text(&out.stdout), text(&out.stderr)).contains(PASSWORD),
        "the password was printed"
    );
    out
}

/// The digest skopeo finds for `image:tag`, verifying TLS against the CA in `cert_dir`.
fn skopeo_digest(cert_dir: &Path, image: &str, tag: &str) -> String {
    let out = ok(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=true",
        "--cert-dir",
        path(cert_dir),
        "--format",
        "{{.Digest}}",
        &format!("docker://{image}:{tag}"),
    ]));
    out.trim().to_owned()
}

#[test]
fn publish_to_a_tls_registry_trusts_the_ca_file_and_skips_checks_only_when_asked() {
    let work = tempfile::tempdir().unwrap();
    let (registry, tls) = tls_registry(work.path());
    let disk = inputs(work.path());
    let image = format!("{}/kib/node", registry.host());
    // skopeo's `--cert-dir` takes `*.crt` CA files.
    let cert_dir = work.path().join("certs");
    fs_err::create_dir_all(&cert_dir).unwrap();
    fs_err::copy(&tls.ca, cert_dir.join("ca.crt")).unwrap();

    // No TLS option: a loopback registry is spoken to in plain HTTP, and this one speaks HTTPS.
    let out = publish(&image, &disk, &[], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("it speaks HTTPS"), "{err}");
    assert!(err.contains("--ca-file"), "{err}");
    assert!(!err.contains("drop `--plain-http`"), "{err}");

    // HTTPS, but trusting another CA: refused, and the hint names `--ca-file`.
    let other = work.path().join("other");
    fs_err::create_dir_all(&other).unwrap();
    let other = TestTls::create(&other);
    let out = publish(&image, &disk, &["--ca-file", path(&other.ca)], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("certificate is not trusted"), "{err}");
    assert!(err.contains("--ca-file"), "{err}");
    assert!(!err.contains("warning:"), "{err}");

    // `--ca-file` with the registry's CA: published and signed over verified TLS, no warning.
    let keys_dir = work.path().join("keys");
    fs_err::create_dir_all(&keys_dir).unwrap();
    let keys = generate_key_pair(&keys_dir);
    let out = publish(
        &image,
        &disk,
        &["--ca-file", path(&tls.ca), "--sign-key", path(&keys.key)],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning:"), "{}", stderr(&out));
    let digest = text(&out.stdout).lines().next().unwrap().to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(skopeo_digest(&cert_dir, &image, "v0.9.0"), digest);
    let sig_tag = format!("{}.sig", digest.replace(':', "-"));
    assert!(
        !skopeo_digest(&cert_dir, &image, &sig_tag).is_empty(),
        "no signature"
    );

    // The same through the environment variable.
    let env_image = format!("{}/kib/env", registry.host());
    let out = publish(
        &env_image,
        &disk,
        &[],
        &[("KIB_REGISTRY_CA_FILE", path(&tls.ca))],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        skopeo_digest(&cert_dir, &env_image, "v0.9.0"),
        text(&out.stdout).lines().next().unwrap()
    );

    // `--skip-tls-verify`: works without the CA, and says so once.
    let skip_image = format!("{}/kib/skip", registry.host());
    let out = publish(&skip_image, &disk, &["--skip-tls-verify"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.matches("warning: --skip-tls-verify").count(),
        1,
        "{err}"
    );
    assert_eq!(
        skopeo_digest(&cert_dir, &skip_image, "v0.9.0"),
        text(&out.stdout).lines().next().unwrap()
    );

    // `--plain-http` against it: a clear refusal, with a warning first.
    let out = publish(&image, &disk, &["--plain-http"], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("warning: --plain-http"), "{err}");
    assert!(err.contains("it speaks HTTPS"), "{err}");
    assert!(err.contains("drop `--plain-http`"), "{err}");

    // `--plain-http` with a TLS option is a usage error.
    let out = publish(
        &image,
        &disk,
        &["--plain-http", "--ca-file", path(&tls.ca)],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_removed_insecure_flag_and_variable_name_their_replacements() {
    let work = tempfile::tempdir().unwrap();
    need("qemu-img", "qemu-utils");
    let disk = inputs(work.path());
    for (args, env) in [
        (vec!["--insecure"], vec![]),
        (vec![], vec![("KIB_REGISTRY_INSECURE", "1")]),
    ] {
        let out = publish("127.0.0.1:9/kib/node", &disk, &args, &env);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        for replacement in ["--plain-http", "--ca-file", "--skip-tls-verify"] {
            assert!(err.contains(replacement), "{err}");
        }
    }
    // A false value is no request at all.
    let out = publish(
        "127.0.0.1:9/kib/node",
        &disk,
        &[],
        &[("KIB_REGISTRY_INSECURE", "0")],
    );
    assert!(!stderr(&out).contains("was removed"), "{}", stderr(&out));
}
