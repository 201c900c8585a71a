//! The SSH client and the provisioners against a real OpenSSH server that each test starts on
//! 127.0.0.1 (a random free port, a temporary host key, the test's key pair authorized, logging
//! in as the current user). Needs `/usr/sbin/sshd`, `sudo` and `ansible-playbook`
//! (`sudo scripts/setup-host.sh` installs them); a missing tool fails the test with that hint.

// The tests report their timings on stderr (seen with `--nocapture`).
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kib_builder::Reporter;
use kib_builder::provision::{
    AnsibleProvisioner, FileProvisioner, ProvisionContext, ProvisionError, Provisioner,
    ShellProvisioner, StepError, run_all,
};
use kib_manifest::Hint as _;
use kib_vm::ssh::{
    ExitStatus, KeyPair, Session, SshError, SshOptions, Stream, UploadSource, connect, wait_for_ssh,
};

const SSHD: &str = "/usr/sbin/sshd";
const HINT: &str =
    "run `sudo scripts/setup-host.sh` (it installs openssh-server, sudo and ansible-core)";

/// A real sshd on 127.0.0.1, killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Sshd {
    /// Starts sshd on `port` with a new host key, authorizing `key`; returns once it listens.
    fn start(port: u16, key: &KeyPair) -> Sshd {
        assert!(Path::new(SSHD).exists(), "{SSHD} is missing: {HINT}");
        // sshd's privilege separation directory (normally made by its init script).
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host_ed25519");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .status()
            .unwrap_or_else(|e| panic!("ssh-keygen: {e}: {HINT}"));
        assert!(status.success());
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, format!("{}\n", key.public_openssh())).unwrap();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPidFile none\n\
                 Subsystem sftp /usr/lib/openssh/sftp-server\nLogLevel VERBOSE\n",
                host_key.display(),
                authorized.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{SSHD}: {e}: {HINT}"));
        let mut sshd = Sshd { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                panic!("sshd exited with {status}: {}", sshd.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects what the provisioners report.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, String)>>);

impl Reporter for Recorder {
    fn on_output_line(&self, source: &str, line: &str) {
        self.0
            .lock()
            .unwrap()
            .push((source.to_owned(), line.to_owned()));
    }
}

impl Recorder {
    fn lines(&self, source: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == source)
            .map(|(_, l)| l.clone())
            .collect()
    }
}

async fn session(sshd: &Sshd, key: &KeyPair) -> Session {
    connect(sshd.addr(), &current_user(), key, &SshOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connect: {e:?}\nsshd log:\n{}", sshd.log()))
}

fn ignore_line() -> impl FnMut(Stream, &str) + Send {
    |_, _| {}
}

#[tokio::test]
async fn wait_for_ssh_succeeds_once_sshd_starts_late() {
    let key = KeyPair::generate();
    let port = free_port();
    let start = Instant::now();
    let key2 = key.clone();
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        Sshd::start(port, &key2)
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let result = wait_for_ssh(
        addr,
        &current_user(),
        &key,
        &SshOptions::default(),
        Duration::from_secs(30),
    )
    .await;
    let sshd = late.join().unwrap();
    let session = result.unwrap_or_else(|e| panic!("{e:?}\n{}", sshd.log()));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "connected before sshd started? {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(12),
        "backoff too slow: {waited:?}"
    );
    eprintln!("wait_for_ssh connected after {waited:?}");
    assert!(session.host_key_fingerprint().starts_with("SHA256:"));
    session.close().await;
}

#[tokio::test]
async fn wait_for_ssh_times_out_naming_addr_and_time_when_nothing_listens() {
    let key = KeyPair::generate();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let start = Instant::now();
    let err = wait_for_ssh(
        addr,
        "nobody",
        &key,
        &SshOptions::default(),
        Duration::from_secs(3),
    )
    .await
    .unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    match &err {
        SshError::Timeout {
            addr: a,
            user,
            waited,
            last_error,
        } => {
            assert_eq!(*a, addr);
            assert_eq!(user, "nobody");
            assert!(*waited >= Duration::from_secs(3));
            let last = last_error.as_deref().unwrap_or_default();
            assert!(last.contains("refused"), "{last}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&addr.to_string())
            && text.contains("nobody")
            && text.contains("did not answer within")
    );
    assert!(err.hint().unwrap().contains("serial console"));
}

#[tokio::test]
async fn per_attempt_timeout_bounds_a_silent_server() {
    // A listener that accepts and never speaks, like QEMU's hostfwd before the guest is up.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let key = KeyPair::generate();
    let opts = SshOptions {
        attempt_timeout: Duration::from_secs(1),
        ..SshOptions::default()
    };
    let start = Instant::now();
    let err = connect(addr, "nobody", &key, &opts).await.unwrap_err();
    assert!(matches!(err, SshError::AttemptTimeout { .. }), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    drop(listener);
}

#[tokio::test]
async fn wait_for_ssh_abandons_a_silent_connection_for_a_fresh_one() {
    // QEMU's hostfwd accepts at once and then retries its SYN to a guest that is not up with
    // growing gaps; a new connection gets through sooner. Count how often wait_for_ssh dials a
    // listener that accepts and never speaks.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(sock);
        }
    });
    let key = KeyPair::generate();
    let opts = SshOptions {
        banner_timeout: Duration::from_millis(400),
        attempt_timeout: Duration::from_secs(30),
        ..SshOptions::default()
    };
    let err = wait_for_ssh(addr, "nobody", &key, &opts, Duration::from_secs(3))
        .await
        .unwrap_err();
    server.abort();
    assert!(matches!(err, SshError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    // 400 ms, 600 ms, 900 ms, ...: at least three fresh connections in 3 s, where a single
    // 30 s attempt would have made one.
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n >= 3, "only {n} connection(s)");
}

#[tokio::test]
async fn exec_streams_lines_as_they_arrive_and_returns_exit_codes() {
    let key = KeyPair::generate();
    let sshd = Sshd::start(free_port(), &key);
    let s = session(&sshd, &key).await;
    let start = Instant::now();
    let mut seen: Vec<(Stream, String, Duration)> = Vec::new();
    let status = s
        .exec(
            "echo one; echo two >&2; sleep 1; printf 'three\\nfour'; exit 7",
            None,
            &mut |stream, line| seen.push((stream, line.to_owned(), start.elapsed())),
        )
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Code(7));
    let lines: Vec<_> = seen.iter().map(|(s, l, _)| (*s, l.as_str())).collect();
    assert_eq!(
        lines,
        [
            (Stream::Stdout, "one"),
            (Stream::Stderr, "two"),
            (Stream::Stdout, "three"),
            (Stream::Stdout, "four")
        ]
    );
    // "one" arrived before the command slept, not at the end.
    let total = start.elapsed();
    assert!(
        total - seen[0].2 >= Duration::from_millis(800),
        "one at {:?}, end {total:?}",
        seen[0].2
    );

    assert_eq!(
        s.exec("true", None, &mut ignore_line()).await.unwrap(),
        ExitStatus::Code(0)
    );
    // The command reads /dev/null, not the channel.
    assert_eq!(
        s.exec("cat; exit 5", None, &mut ignore_line())
            .await
            .unwrap(),
        ExitStatus::Code(5)
    );
    // Stdin, when given, reaches the command.
    let mut out = Vec::new();
    let mut input: &[u8] = b"hello\nstdin\n";
    s.exec("tr a-z A-Z", Some(&mut input), &mut |_, l| {
        out.push(l.to_owned())
    })
    .await
    .unwrap();
    assert_eq!(out, ["HELLO", "STDIN"]);
    s.close().await;
}

#[tokio::test]
async fn exec_checked_fails_with_the_exit_code_and_stderr_tail() {
    let key = KeyPair::generate();
    let sshd = Sshd::start(free_port(), &key);
    let s = session(&sshd, &key).await;
    s.exec_checked("echo fine", None, &mut ignore_line())
        .await
        .unwrap();
    let err = s
        .exec_checked("echo boom >&2; exit 3", None, &mut ignore_line())
        .await
        .unwrap_err();
    match &err {
        SshError::CommandFailed {
            command,
            status,
            stderr,
        } => {
            assert_eq!(command, "echo boom >&2; exit 3");
            assert_eq!(status.code(), Some(3));
            assert_eq!(stderr.lines, ["boom"]);
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("exit code 3"), "{err}");
    // Through sudo too.
    let err = s
        .exec_sudo_checked("id -u; exit 4", &mut ignore_line())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SshError::CommandFailed {
                status: ExitStatus::Code(4),
                ..
            }
        ),
        "{err:?}"
    );
    s.close().await;
}

/// Whether a process whose command line contains `marker` runs on this host (sshd is local).
fn process_running(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .starts_with(&format!("sleep {marker}"))
            })
            .unwrap_or(false)
    })
}

#[tokio::test]
async fn remote_command_dies_when_its_channel_goes() {
    let key = KeyPair::generate();
    let sshd = Sshd::start(free_port(), &key);
    let s = session(&sshd, &key).await;
    for sudo in [false, true] {
        let marker = format!(
            "{}.{}",
            900_000 + std::process::id() % 10_000,
            u8::from(sudo)
        );
        let cmd = format!("echo started; sleep {marker}");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut tx = Some(tx);
        let mut on_line = |_: Stream, l: &str| {
            if l == "started" {
                tx.take().map(|t| t.send(()));
            }
        };
        let mut exec = Box::pin(async {
            if sudo {
                s.exec_sudo(&cmd, &mut on_line).await
            } else {
                s.exec(&cmd, None, &mut on_line).await
            }
        });
        tokio::select! {
            r = &mut exec => panic!("command ended early: {r:?}"),
            _ = rx => {}
        }
        // "started" comes just before the sleep starts.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !process_running(&marker) {
            assert!(
                Instant::now() < deadline,
                "the remote sleep should be running"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Dropping the exec future closes the channel.
        drop(exec);
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_running(&marker) {
            assert!(
                Instant::now() < deadline,
                "remote `sleep {marker}` (sudo: {sudo}) outlived its channel"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The session still works afterwards.
    s.exec_checked("true", None, &mut ignore_line())
        .await
        .unwrap();
    s.close().await;
}

#[tokio::test]
async fn upload_of_20_mib_lands_byte_identical_with_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let key = KeyPair::generate();
    let sshd = Sshd::start(free_port(), &key);
    let s = session(&sshd, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("big.bin");
    let mut data = vec![0u8; 20 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&local, &data).unwrap();
    for (sudo, mode) in [(false, 0o640), (true, 0o600)] {
        let remote = dir.path().join(format!("remote-{sudo}.bin"));
        let start = Instant::now();
        s.upload(
            UploadSource::Path(&local),
            remote.to_str().unwrap(),
            mode,
            sudo,
        )
        .await
        .unwrap();
        eprintln!("upload of 20 MiB (sudo: {sudo}) took {:?}", start.elapsed());
        let got = std::fs::read(&remote).unwrap();
        assert!(
            got == data,
            "uploaded bytes differ (len {} vs {})",
            got.len(),
            data.len()
        );
        assert_eq!(
            std::fs::metadata(&remote).unwrap().permissions().mode() & 0o7777,
            mode
        );
        assert!(
            !dir.path()
                .join(format!("remote-{sudo}.bin.kib-upload"))
                .exists()
        );
    }
    // Bytes, and a failure that names the destination.
    let small = dir.path().join("small.txt");
    s.upload(
        UploadSource::Bytes(b"hi\n"),
        small.to_str().unwrap(),
        0o644,
        false,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&small).unwrap(), b"hi\n");
    let err = s
        .upload(
            UploadSource::Bytes(b"x"),
            "/nonexistent-dir/x",
            0o644,
            false,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SshError::Upload { remote, .. } if remote == "/nonexistent-dir/x"),
        "{err:?}"
    );
    let missing = s
        .upload(
            UploadSource::Path(Path::new("/nonexistent/local")),
            "/tmp/x",
            0o644,
            false,
        )
        .await;
    assert!(
        matches!(missing, Err(SshError::ReadLocal { .. })),
        "{missing:?}"
    );
    s.close().await;
}

#[tokio::test]
async fn reconnect_refuses_a_changed_host_key() {
    let key = KeyPair::generate();
    let port = free_port();
    let sshd = Sshd::start(port, &key);
    let first = session(&sshd, &key).await;
    let pinned = first.host_key_fingerprint();
    // Same server: fine.
    let again = first.reconnect(&key, &SshOptions::default()).await.unwrap();
    assert_eq!(again.host_key_fingerprint(), pinned);
    again.close().await;
    // Another server (new host key) on the same port.
    drop(sshd);
    let other = Sshd::start(port, &key);
    let err = first
        .reconnect(&key, &SshOptions::default())
        .await
        .unwrap_err();
    match &err {
        SshError::HostKeyChanged {
            addr,
            expected,
            found,
        } => {
            assert_eq!(*addr, other.addr());
            assert_eq!(*expected, pinned);
            assert_ne!(*found, pinned);
        }
        e => panic!("expected HostKeyChanged, got {e:?}"),
    }
    // wait_for_ssh does not retry past it.
    let start = Instant::now();
    let opts = first.pinned_options(&SshOptions::default());
    let err = wait_for_ssh(
        other.addr(),
        &current_user(),
        &key,
        &opts,
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SshError::HostKeyChanged { .. }), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // Unpinned, the new server is accepted.
    let fresh = session(&other, &key).await;
    assert_ne!(fresh.host_key_fingerprint(), pinned);
    fresh.close().await;
}

struct Fixture {
    sshd: Sshd,
    key: KeyPair,
    session: tokio::sync::Mutex<Session>,
    key_dir: tempfile::TempDir,
    key_file: PathBuf,
    known_hosts: PathBuf,
    base: tempfile::TempDir,
    work: tempfile::TempDir,
    collect: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let key = KeyPair::generate();
    let sshd = Sshd::start(free_port(), &key);
    let session = session(&sshd, &key).await;
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key.write_private_key(key_dir.path()).unwrap();
    // Ansible checks the host key strictly against this file, as in a build.
    let known_hosts = key_dir.path().join("known_hosts");
    fs_err::write(
        &known_hosts,
        session.host_key().known_hosts_line(sshd.addr()),
    )
    .unwrap();
    Fixture {
        sshd,
        key,
        session: tokio::sync::Mutex::new(session),
        key_dir,
        key_file,
        known_hosts,
        base: tempfile::tempdir().unwrap(),
        work: tempfile::tempdir().unwrap(),
        collect: tempfile::tempdir().unwrap(),
    }
}

impl Fixture {
    async fn run(
        &self,
        provisioners: &[Provisioner],
        vars: &BTreeMap<String, serde_json::Value>,
        reporter: &Recorder,
    ) -> Result<(), ProvisionError> {
        let user = current_user();
        let ctx = ProvisionContext {
            ssh_addr: self.sshd.addr(),
            user: &user,
            key_file: &self.key_file,
            known_hosts: &self.known_hosts,
            key: &self.key,
            reboot_timeout: std::time::Duration::from_secs(60),
            ssh_options: &SshOptions::default(),
            base_dir: self.base.path(),
            work_dir: self.work.path(),
            collect_dir: self.collect.path(),
            vars,
            reporter,
        };
        run_all(provisioners, &ctx, &mut *self.session.lock().await).await
    }
}

fn ansible(playbook: &str, extra_vars: BTreeMap<String, serde_json::Value>) -> Provisioner {
    Provisioner::Ansible(AnsibleProvisioner {
        playbook: playbook.into(),
        extra_vars,
        extra_args: Vec::new(),
    })
}

fn assert_ansible_installed() {
    let ok = Command::new("ansible-playbook")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    assert!(
        matches!(ok, Ok(s) if s.success()),
        "ansible-playbook is missing: {HINT}"
    );
}

/// Issue #16.7: ansible checks the host key strictly against the build's known_hosts; a key
/// that is not the pinned one is refused (no trust on first use, no `StrictHostKeyChecking=no`).
#[tokio::test]
async fn ansible_refuses_a_host_key_other_than_the_pinned_one() {
    assert_ansible_installed();
    let f = fixture().await;
    std::fs::write(
        f.base.path().join("ping.yml"),
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: ping\n      ansible.builtin.ping:\n",
    )
    .unwrap();
    let python = BTreeMap::from([(
        "ansible_python_interpreter".to_owned(),
        serde_json::json!("/usr/bin/python3"),
    )]);
    // With the right key: it runs.
    let reporter = Recorder::default();
    f.run(
        &[ansible("ping.yml", python.clone())],
        &BTreeMap::new(),
        &reporter,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", reporter.lines("ansible").join("\n")));
    // With another key in known_hosts: refused.
    let other = KeyPair::generate().as_host_key();
    std::fs::write(&f.known_hosts, other.known_hosts_line(f.sshd.addr())).unwrap();
    let reporter = Recorder::default();
    let err = f
        .run(&[ansible("ping.yml", python)], &BTreeMap::new(), &reporter)
        .await
        .unwrap_err();
    let lines = reporter.lines("ansible").join("\n");
    assert!(
        matches!(
            &err,
            ProvisionError::Step {
                source: StepError::AnsibleFailed { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        lines.contains("HOST IDENTIFICATION HAS CHANGED")
            || lines.contains("Host key verification failed"),
        "{lines}"
    );
}

#[tokio::test]
async fn ansible_playbook_runs_against_sshd_and_fetches_into_the_collect_dir() {
    assert_ansible_installed();
    let f = fixture().await;
    let target = tempfile::tempdir().unwrap();
    let marker = target.path().join("marker.txt");
    std::fs::create_dir(f.base.path().join("pb")).unwrap();
    std::fs::write(
        f.base.path().join("pb/site.yml"),
        r#"- hosts: all
  gather_facts: false
  tasks:
    - name: write a marker
      ansible.builtin.copy:
        dest: "{{ marker_path }}"
        content: "hello {{ greeting }}\n"
        mode: "0640"
    - name: fetch the marker for the manifest
      ansible.builtin.fetch:
        src: "{{ marker_path }}"
        dest: "{{ kib_collect_dir }}/collected.txt"
        flat: true
"#,
    )
    .unwrap();
    let own = BTreeMap::from([
        ("greeting".to_owned(), serde_json::json!("from-kib-toml")),
        (
            "marker_path".to_owned(),
            serde_json::json!(marker.to_str().unwrap()),
        ),
        // The "VM" is this host, whose login PATH may lead interpreter discovery to a pyenv
        // shim; extra vars beat the inventory's `auto_silent`.
        (
            "ansible_python_interpreter".to_owned(),
            serde_json::json!("/usr/bin/python3"),
        ),
    ]);
    let cli = BTreeMap::from([("greeting".to_owned(), serde_json::json!("from-cli"))]);
    let reporter = Recorder::default();
    let start = Instant::now();
    let result = f.run(&[ansible("pb/site.yml", own)], &cli, &reporter).await;
    eprintln!("ansible provisioner took {:?}", start.elapsed());
    let lines = reporter.lines("ansible");
    result.unwrap_or_else(|e| panic!("{e:?}\n{}", lines.join("\n")));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "hello from-cli\n"
    );
    assert_eq!(
        std::fs::read_to_string(f.collect.path().join("collected.txt")).unwrap(),
        "hello from-cli\n"
    );
    assert!(
        lines.iter().any(|l| l.contains("TASK [write a marker]")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("PLAY RECAP")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains("failed=0")), "{lines:#?}");
    // The inventory is private to the build.
    use std::os::unix::fs::PermissionsExt as _;
    let inv = std::fs::metadata(f.work.path().join("inventory-1.yml")).unwrap();
    assert_eq!(inv.permissions().mode() & 0o777, 0o600);
    drop(f.key_dir);
    let _ = f.key;
}

#[tokio::test]
async fn failing_playbook_names_the_step_exit_code_and_output() {
    assert_ansible_installed();
    let f = fixture().await;
    std::fs::write(
        f.base.path().join("fail.yml"),
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.fail:\n        msg: kib-test-failure\n",
    )
    .unwrap();
    let reporter = Recorder::default();
    let steps = [
        Provisioner::Shell(ShellProvisioner {
            inline: vec!["true".into()],
            sudo: false,
        }),
        ansible("fail.yml", BTreeMap::new()),
    ];
    let err = f
        .run(&steps, &BTreeMap::new(), &reporter)
        .await
        .unwrap_err();
    let ProvisionError::Step {
        index,
        what,
        source,
    } = &err;
    assert_eq!(*index, 2);
    assert_eq!(what, "ansible `fail.yml`");
    assert_eq!(err.to_string(), "Provisioner 2 (ansible `fail.yml`) failed");
    match source {
        StepError::AnsibleFailed { code, output, .. } => {
            assert_eq!(*code, Some(2));
            assert!(
                output.lines.iter().any(|l| l.contains("kib-test-failure")),
                "{output}"
            );
            assert!(output.lines.len() <= 20);
        }
        other => panic!("expected AnsibleFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn shell_and_file_provisioners_run_and_a_failing_command_is_named() {
    let f = fixture().await;
    let target = tempfile::tempdir().unwrap();
    let out = target.path().join("from-shell");
    std::fs::write(f.base.path().join("motd"), "welcome\n").unwrap();
    let dest = target.path().join("motd");
    let ok = [
        Provisioner::Shell(ShellProvisioner {
            inline: vec![
                format!("echo as-$(id -un) | tee {}", out.display()),
                "echo to-stderr >&2".into(),
            ],
            sudo: true,
        }),
        Provisioner::File(FileProvisioner {
            source: "motd".into(),
            destination: dest.to_str().unwrap().to_owned(),
            mode: "0604".into(),
        }),
    ];
    let reporter = Recorder::default();
    f.run(&ok, &BTreeMap::new(), &reporter).await.unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "as-root\n");
    assert_eq!(reporter.lines("shell"), ["as-root", "to-stderr"]);
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "welcome\n");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777,
        0o604
    );

    let failing = [Provisioner::Shell(ShellProvisioner {
        inline: vec!["true".into(), "echo bad >&2; exit 4".into()],
        sudo: true,
    })];
    let err = f
        .run(&failing, &BTreeMap::new(), &reporter)
        .await
        .unwrap_err();
    let ProvisionError::Step { index, source, .. } = &err;
    assert_eq!(*index, 1);
    match source {
        StepError::ShellCommand {
            number,
            command,
            status,
            stderr,
        } => {
            assert_eq!(*number, 2);
            assert_eq!(command, "echo bad >&2; exit 4");
            assert_eq!(*status, ExitStatus::Code(4));
            assert_eq!(stderr.lines, ["bad"]);
        }
        other => panic!("expected ShellCommand, got {other:?}"),
    }
    assert_eq!(
        source.to_string(),
        "Command 2 `echo bad >&2; exit 4` failed with exit code 4"
    );

    let bad_mode = [Provisioner::File(FileProvisioner {
        source: "motd".into(),
        destination: "/tmp/x".into(),
        mode: "rw-r--r--".into(),
    })];
    let err = f
        .run(&bad_mode, &BTreeMap::new(), &reporter)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ProvisionError::Step {
                source: StepError::InvalidMode { .. },
                ..
            }
        ),
        "{err:?}"
    );
}
