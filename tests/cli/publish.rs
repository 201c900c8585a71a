//! `kib package` and `kib publish` against Debian's docker-registry on 127.0.0.1, checked with
//! skopeo. Run with: `cargo test --features test-registry --test cli publish`
#![cfg(feature = "test-registry")]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kib_test_infra::registry::Registry;

use super::common::{need, ok, qcow2, text};

fn registry(auth: Option<(&str, &str)>) -> Registry {
    need("skopeo", "skopeo");
    need("qemu-img", "qemu-utils");
    need("git", "git");
    let r = match auth {
        None => Registry::start(),
        Some((u, p)) => Registry::start_with_auth(u, p),
    };
    r.unwrap_or_else(|e| panic!("{e}\nhint: {}", e.hint().unwrap_or_default()))
}

/// A git checkout whose HEAD is tagged `v0.9.0`.
fn tagged_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    fs_err::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        ok(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(&repo))
    };
    git(&["init", "-q"]);
    git(&["commit", "-q", "--allow-empty", "-m", "x"]);
    git(&["tag", "v0.9.0"]);
    repo
}

fn kib(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kib"))
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1790000000")
        .env("DOCKER_CONFIG", "/nonexistent-kib-test")
        .env_remove("KIB_REGISTRY_USERNAME")
        .env_remove("KIB_REGISTRY_PASSWORD")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

#[test]
fn publish_prints_digest_and_tags_and_package_gives_the_same_digest() {
    let registry = registry(None);
    let work = tempfile::tempdir().unwrap();
    let disk = qcow2(work.path());
    let repo = tagged_repo(work.path());
    let image = format!("{}/kib/node", registry.host());
    let common = [
        "--qcow2",
        disk.to_str().unwrap(),
        "--kubernetes-version",
        "v1.37.1",
        "--git-dir",
        repo.to_str().unwrap(),
    ];

    let mut args = vec!["publish", "--image", &image];
    args.extend(common);
    let out = kib(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("sha256:") && lines[0].len() == 71,
        "{stdout}"
    );
    assert_eq!(
        &lines[1..],
        [
            format!("{image}:v0.9.0"),
            format!("{image}:v1.37.1"),
            format!("{image}:v1.37")
        ]
    );
    let tags = ok(Command::new("skopeo").args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{image}"),
    ]));
    for t in ["v0.9.0", "v1.37.1", "v1.37"] {
        assert!(tags.contains(&format!("\"{t}\"")), "{tags}");
    }

    // Again: same digest, nothing uploaded.
    let again = kib(&args, None);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), stdout);
    assert!(
        text(&again.stderr).contains("already in the registry"),
        "{}",
        text(&again.stderr)
    );

    // `kib package` of the same inputs writes a layout with the same digest.
    let layout = work.path().join("layout");
    let mut pargs = vec!["package", "--output", layout.to_str().unwrap()];
    pargs.extend(common);
    let out = kib(&pargs, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), lines[0]);
    let inspected =
        ok(Command::new("skopeo").args(["inspect", &format!("oci:{}:v0.9.0", layout.display())]));
    assert!(inspected.contains(lines[0]), "{inspected}");
}

#[test]
fn wrong_password_fails_with_a_hint_and_never_shows_the_password() {
    let registry = registry(Some(("kib", "right-pw")));
    let work = tempfile::tempdir().unwrap();
    let disk = qcow2(work.path());
    let image = format!("{}/kib/node", registry.host());
    let args = [
        "publish",
        "--image",
        &image,
        "--qcow2",
        disk.to_str().unwrap(),
        "--kubernetes-version",
        "v1.37.1",
        "--tag-untagged",
        "{k8s_version}-test",
        "--git-dir",
        "/",
        "--username",
        "kib",
        "--password-stdin",
        "--attempts",
        "1",
    ];
    let out = kib(&args, Some("wrong-pw-123\n"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: ") || stderr.contains("\nerror: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("401") || stderr.to_lowercase().contains("authorized"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong-pw-123") && !text(&out.stdout).contains("wrong-pw-123"),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty());

    let out = kib(&args, Some("right-pw\n"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("{image}:v1.37.1-test")));
}

#[test]
fn registry_down_exits_2_with_a_hint() {
    let mut registry = registry(None);
    registry.stop();
    let work = tempfile::tempdir().unwrap();
    let disk = qcow2(work.path());
    let image = format!("{}/kib/node", registry.host());
    let out = kib(
        &[
            "publish",
            "--image",
            &image,
            "--qcow2",
            disk.to_str().unwrap(),
            "--kubernetes-version",
            "v1.37.1",
            "--tag-untagged",
            "x",
            "--git-dir",
            "/",
            "--attempts",
            "2",
        ],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&registry.host()), "{stderr}");
}
