//! Boot checks: cloud-init, disk growth, generalization.

use futures::future::BoxFuture;

use super::{check_body, run, run_ok};
use crate::check::{Check, CheckResult};
use crate::context::Context;

/// 1. cloud-init finished without errors (`cloud-init status --long`).
pub struct CloudInit;

impl Check for CloudInit {
    fn name(&self) -> &'static str {
        "cloud-init"
    }
    fn title(&self) -> &'static str {
        "cloud-init finished without errors (ConfigDrive user data)"
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            let out = run(ctx, "cloud-init status --wait --long", false).await?;
            let text = out.stdout.clone();
            let status = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("status:"))
                .map(str::trim)
                .unwrap_or("unknown")
                .to_owned();
            if !out.success() || status != "done" {
                return Err(CheckResult::fail(format!(
                    "cloud-init status is `{status}` ({}); {}",
                    out.status.map_or("?".into(), |s| format!("exit {s}")),
                    failure_detail(&text)
                )));
            }
            // The datasource must be the ConfigDrive CAPK attaches.
            let ds = run(
                ctx,
                "cloud-init query platform 2>/dev/null || cloud-init query v1.platform",
                true,
            )
            .await?;
            if !ds.out().to_ascii_lowercase().contains("openstack")
                && !ds.out().contains("configdrive")
            {
                let detail = text
                    .lines()
                    .find(|l| l.contains("detail"))
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                return Err(CheckResult::fail(format!(
                    "cloud-init did not use the ConfigDrive (platform `{}`; {detail})",
                    ds.out()
                )));
            }
            Ok(CheckResult::Pass)
        })
    }
}

fn error_lines(status_long: &str) -> String {
    let mut in_errors = false;
    let mut out = Vec::new();
    for line in status_long.lines() {
        let t = line.trim();
        if t.starts_with("errors:") || t.starts_with("recoverable_errors:") {
            let empty = t.ends_with("[]") || t.ends_with("{}");
            in_errors = !empty;
            if !empty && !t.ends_with(':') {
                out.push(t.to_owned());
            }
            continue;
        }
        if in_errors {
            if line.starts_with(' ') || line.starts_with('-') || line.starts_with('\t') {
                out.push(t.to_owned());
            } else {
                in_errors = false;
            }
        }
    }
    if out.is_empty() {
        "none listed".to_owned()
    } else {
        out.join(" | ")
    }
}

/// What `cloud-init status --long` says went wrong: its `errors`, or, when it lists none, its
/// `detail:` line (which names the failing module or datasource).
fn failure_detail(status_long: &str) -> String {
    let errors = error_lines(status_long);
    if errors != "none listed" {
        return format!("errors: {errors}");
    }
    let mut lines = status_long.lines();
    let detail = lines
        .by_ref()
        .find_map(|l| l.trim().strip_prefix("detail:"))
        .map(str::trim)
        .unwrap_or("");
    // `detail:` may carry its text on the following indented lines.
    let detail = if detail.is_empty() {
        lines
            .take_while(|l| l.starts_with(' ') || l.starts_with('\t'))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        detail.to_owned()
    };
    if detail.is_empty() {
        "errors: none listed, no detail".to_owned()
    } else {
        format!("errors: none listed; detail: {detail}")
    }
}

/// 2. The root filesystem grew to the new disk size.
pub struct DiskResize;

impl Check for DiskResize {
    fn name(&self) -> &'static str {
        "disk-resize"
    }
    fn title(&self) -> &'static str {
        "root filesystem grew to the enlarged disk"
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            // SOURCE of /, its parent disk, the partition's end and the disk's size (sectors),
            // and the filesystem size in bytes.
            let script = include_str!("../scripts/root-partition.sh");
            let out = run_ok(ctx, script, false).await?;
            let get = |k: &str| {
                out.stdout
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")))
                    .map(str::trim)
                    .unwrap_or("")
                    .to_owned()
            };
            let num = |k: &str| get(k).parse::<u64>().ok();
            let (Some(disk), Some(start), Some(size), Some(fs)) = (
                num("disk_sectors"),
                num("part_start"),
                num("part_sectors"),
                num("fs_bytes"),
            ) else {
                return Err(CheckResult::fail(format!(
                    "root `{}` is not a partition of a disk ({})",
                    get("source"),
                    out.out().replace('\n', ", ")
                )));
            };
            let disk_bytes = disk * 512;
            if disk_bytes != ctx.disk_size {
                return Err(CheckResult::fail(format!(
                    "the guest sees {} of {} bytes, not the {} bytes the disk was grown to",
                    get("disk"),
                    disk_bytes,
                    ctx.disk_size
                )));
            }
            let slack = disk.saturating_sub(start + size) * 512;
            // GPT keeps 33 sectors for its backup header; allow a few MiB of alignment.
            if slack > 16 << 20 {
                return Err(CheckResult::fail(format!(
                    "partition {} ends {} MiB before the end of {} (growpart did not run)",
                    get("part"),
                    slack >> 20,
                    get("disk")
                )));
            }
            let part_bytes = size * 512;
            if fs < part_bytes / 100 * 95
                || fs <= ctx.image_size.saturating_sub(disk_bytes - part_bytes)
            {
                return Err(CheckResult::fail(format!(
                    "the root filesystem is {} MiB on a {} MiB partition (resize_rootfs did not run)",
                    fs >> 20,
                    part_bytes >> 20
                )));
            }
            Ok(CheckResult::Pass)
        })
    }
}

/// 7. Nothing of the build is left: host keys, machine-id, authorized_keys, cloud-init data.
pub struct Generalized;

impl Check for Generalized {
    fn name(&self) -> &'static str {
        "generalized"
    }
    fn title(&self) -> &'static str {
        "no build host keys, fresh machine-id, no foreign authorized_keys or cloud-init data"
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, CheckResult> {
        check_body!(async {
            let mut problems = Vec::new();
            // Host keys made before this boot came from the build.
            let keys = run_ok(
                ctx,
                r#"btime=$(awk '/^btime/ {print $2}' /proc/stat); for k in /etc/ssh/ssh_host_*_key; do [ -e "$k" ] && echo "$k $(stat -c %Y "$k") $btime"; done; true"#,
                true,
            )
            .await?;
            let mut nkeys = 0;
            for line in keys.stdout.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let [path, mtime, btime] = f.as_slice() {
                    nkeys += 1;
                    let (m, b) = (
                        mtime.parse::<u64>().unwrap_or(0),
                        btime.parse::<u64>().unwrap_or(u64::MAX),
                    );
                    if m + 5 < b {
                        problems.push(format!(
                            "host key `{path}` predates this boot (made by the build)"
                        ));
                    }
                }
            }
            if nkeys == 0 {
                problems.push("no SSH host keys at all".to_owned());
            }
            // machine-id: valid now, and made on this boot (the image shipped it empty): systemd
            // logs that it initialised it, or committed it to disk after this boot began.
            let mid = run(
                ctx,
                r#"cat /etc/machine-id; echo "$(stat -c %Y /etc/machine-id) $(awk '/^btime/ {print $2}' /proc/stat)"; journalctl -b 0 -o cat _PID=1 2>/dev/null | grep -c -i -e 'Initializing machine ID' -e 'first boot' || true"#,
                true,
            )
            .await?;
            let mut lines = mid.stdout.lines();
            let id = lines.next().unwrap_or("").trim().to_owned();
            let times: Vec<u64> = lines
                .next()
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
            let journal_says_first: u64 = lines.next().unwrap_or("0").trim().parse().unwrap_or(0);
            let made_this_boot = matches!(times.as_slice(), [m, b] if m + 5 >= *b);
            if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                problems.push(format!("/etc/machine-id is `{id}`, not a fresh id"));
            } else if !made_this_boot && journal_says_first == 0 {
                problems.push(
                    "/etc/machine-id predates this boot and systemd did not initialise it: the image kept the build's machine-id"
                        .to_owned(),
                );
            }
            // authorized_keys: only the test's keys.
            let ak = run_ok(
                ctx,
                r#"for f in /root/.ssh/authorized_keys* /home/*/.ssh/authorized_keys*; do [ -f "$f" ] && grep -v '^\s*\(#\|$\)' "$f" | sed "s|^|$f\t|"; done; true"#,
                true,
            )
            .await?;
            let ours: Vec<String> = ctx.authorized_keys.iter().map(|k| key_body(k)).collect();
            for line in ak.stdout.lines() {
                let (file, key) = line.split_once('\t').unwrap_or(("?", line));
                if !ours.contains(&key_body(key)) {
                    let comment = key.split_whitespace().last().unwrap_or("");
                    problems.push(format!(
                        "`{file}` holds a key the test did not add ({comment})"
                    ));
                }
            }
            // cloud-init: only this instance's data, no build seed.
            let ci = run_ok(
                ctx,
                "ls -1 /var/lib/cloud/instances 2>/dev/null; echo ---; ls -1d /var/lib/cloud/seed/nocloud* 2>/dev/null; true",
                true,
            )
            .await?;
            let (instances, seeds) = ci.stdout.split_once("---").unwrap_or((&ci.stdout, ""));
            for inst in instances.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if inst != ctx.instance_id {
                    problems.push(format!("cloud-init instance data `/var/lib/cloud/instances/{inst}` is from another boot"));
                }
            }
            for seed in seeds.lines().map(str::trim).filter(|l| !l.is_empty()) {
                problems.push(format!("a cloud-init seed `{seed}` was left in the image"));
            }
            if problems.is_empty() {
                Ok(CheckResult::Pass)
            } else {
                Err(CheckResult::fail(problems.join("; ")))
            }
        })
    }
}

/// The key type and base64 of an OpenSSH public key line (options and comment dropped).
fn key_body(line: &str) -> String {
    let parts: Vec<&str> = line.split_whitespace().collect();
    match parts
        .iter()
        .position(|p| p.starts_with("ssh-") || p.starts_with("ecdsa-") || p.starts_with("sk-"))
    {
        Some(i) if i + 1 < parts.len() => format!("{} {}", parts[i], parts[i + 1]),
        _ => line.trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_body_ignores_options_and_comments() {
        assert_eq!(key_body("ssh-ed25519 AAAA a@b"), "ssh-ed25519 AAAA");
        assert_eq!(key_body("no-pty,from=\"x\" ssh-rsa BBBB c"), "ssh-rsa BBBB");
    }

    #[test]
    fn error_lines_of_status_long() {
        let s = "status: error\nextended_status: error - done\nerrors:\n\t- (scripts_user) Failed to run module scripts_user\nrecoverable_errors:\nWARNING:\n\t- x\n";
        let e = error_lines(s);
        assert!(e.contains("Failed to run module scripts_user"), "{e}");
        assert_eq!(
            error_lines("status: done\nerrors: []\nrecoverable_errors: {}\n"),
            "none listed"
        );
    }
}
