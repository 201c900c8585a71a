//! `kib package` and `kib publish` against Debian's docker-registry on 127.0.0.1, checked with
//! skopeo. Run with: `cargo test --features test-registry --test cli publish`
#![cfg(feature = "test-registry")]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kib_test_infra::registry::Registry;

use super::common::{
    PASSWORD, XDG_CACHE_HOME, generate_key_pair, kib_with_password, need, ok, path, qcow2, text,
};

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
        .env("XDG_CACHE_HOME", XDG_CACHE_HOME)
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

/// The tags of `image` that skopeo lists (an unknown repository has none).
fn tags_of(image: &str) -> Vec<String> {
    let out = Command::new("skopeo")
        .args([
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut tags: Vec<String> = v["Tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    tags.sort();
    tags
}

/// `kib publish` of `disk` to `image` with the tagged checkout `repo`, plus `extra`.
fn publish_args<'a>(
    image: &'a str,
    disk: &'a Path,
    repo: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "publish",
        "--image",
        image,
        "--qcow2",
        path(disk),
        "--kubernetes-version",
        "v1.37.1",
        "--git-dir",
        path(repo),
    ];
    args.extend(extra);
    args
}

#[test]
fn publish_no_tags_pushes_by_digest_then_sign_key_signs_and_tags_that_digest() {
    let registry = registry(None);
    let work = tempfile::tempdir().unwrap();
    let disk = qcow2(work.path());
    let repo = tagged_repo(work.path());
    let keys = generate_key_pair(work.path());
    let image = format!("{}/kib/node", registry.host());

    let out = kib_with_password(&publish_args(&image, &disk, &repo, &["--no-tags"]), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let reference = stdout.trim();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let digest = reference
        .strip_prefix(&format!("{image}@"))
        .unwrap_or_else(|| panic!("not {image}@sha256:…: {stdout}"));
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{stdout}"
    );
    assert!(
        tags_of(&image).is_empty(),
        "--no-tags set tags: {:?}",
        tags_of(&image)
    );
    // The digest is pullable as printed.
    let inspected = ok(Command::new("skopeo").args([
        "inspect",
        "--no-tags",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]));
    assert!(inspected.contains(digest), "{inspected}");
    // `--no-tags` never signs.
    let out = kib_with_password(
        &publish_args(
            &image,
            &disk,
            &repo,
            &["--no-tags", "--sign-key", path(&keys.key)],
        ),
        Some(PASSWORD),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // The release's second step: same qcow2, same digest; nothing uploaded; signed, then
    // tagged.
    let out = kib_with_password(
        &publish_args(&image, &disk, &repo, &["--sign-key", path(&keys.key)]),
        Some(PASSWORD),
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().next(), Some(digest), "{stdout}");
    assert!(stderr.contains("is already in the registry"), "{stderr}");
    assert!(!stderr.contains("Uploading the layer"), "{stderr}");
    let sig_tag = format!("{}.sig", digest.replace(':', "-"));
    assert_eq!(
        tags_of(&image),
        [sig_tag.as_str(), "v0.9.0", "v1.37", "v1.37.1"]
    );
    let signed_at = stderr.find("Signed `").expect("signed");
    let tagged_at = stderr.find("Tagged `").expect("tagged");
    assert!(signed_at < tagged_at, "tagged before signing: {stderr}");
    let verified = kib_with_password(
        &[
            "verify",
            "--key",
            path(&keys.public),
            &format!("{image}:v0.9.0"),
        ],
        None,
    );
    assert!(verified.status.success(), "{}", text(&verified.stderr));
}

/// Makes the registry's storage refuse one tag: distribution's tag store links a tag into
/// `_manifests/tags/<tag>/index/` before it writes `current/link`, so a regular file named
/// `index` there makes every `PUT` of that tag fail (500) while a `GET` still answers 404 and
/// other tags are untouched. Returns the file, to remove it again.
fn refuse_tag(registry: &Registry, repository: &str, tag: &str) -> PathBuf {
    let dir = registry
        .storage()
        .join("docker/registry/v2/repositories")
        .join(repository)
        .join("_manifests/tags")
        .join(tag);
    fs_err::create_dir_all(&dir).unwrap();
    let blocker = dir.join("index");
    fs_err::write(&blocker, "not a directory: kib test").unwrap();
    blocker
}

#[test]
fn publish_sign_key_with_a_registry_that_refuses_the_signature_leaves_no_tag() {
    let registry = registry(None);
    let work = tempfile::tempdir().unwrap();
    let disk = qcow2(work.path());
    let repo = tagged_repo(work.path());
    let keys = generate_key_pair(work.path());
    let image = format!("{}/kib/node", registry.host());
    // The digest the publish will sign, from `kib package` (same inputs, same digest).
    let layout = work.path().join("layout");
    let mut pargs = vec!["package", "--output", path(&layout)];
    pargs.extend(&publish_args(&image, &disk, &repo, &[])[3..]);
    let out = kib_with_password(&pargs, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let digest = text(&out.stdout).trim().to_owned();
    let sig_tag = format!("{}.sig", digest.replace(':', "-"));
    let blocker = refuse_tag(&registry, "kib/node", &sig_tag);

    let args = publish_args(
        &image,
        &disk,
        &repo,
        &["--sign-key", path(&keys.key), "--attempts", "1"],
    );
    let out = kib_with_password(&args, Some(PASSWORD));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no tag was set"), "{stderr}");
    // Refused where it should be: the signature's tag (500 from the registry's storage).
    assert!(
        stderr.contains(&format!("manifests/{sig_tag}")) && stderr.contains("500"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{image}@{digest}")), "{stderr}");
    assert!(!stderr.contains("Tagged `"), "{stderr}");
    let tags = tags_of(&image);
    for t in ["v0.9.0", "v1.37.1", "v1.37"] {
        assert!(
            !tags.contains(&t.to_owned()),
            "`{t}` points at an unsigned image: {tags:?}"
        );
    }
    // The image itself is complete, by digest.
    ok(Command::new("skopeo").args([
        "inspect",
        "--no-tags",
        "--tls-verify=false",
        &format!("docker://{image}@{digest}"),
    ]));

    // Once the registry accepts it, the same command signs and tags (nothing re-uploaded).
    fs_err::remove_file(&blocker).unwrap();
    let out = kib_with_password(&args, Some(PASSWORD));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("Uploading the layer"), "{stderr}");
    assert_eq!(text(&out.stdout).lines().next(), Some(digest.as_str()));
    assert_eq!(
        tags_of(&image),
        [sig_tag.as_str(), "v0.9.0", "v1.37", "v1.37.1"]
    );
}
