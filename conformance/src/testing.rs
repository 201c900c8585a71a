//! Test support: a scripted guest (a stand-in, labelled as such: no VM and no guest behind
//! it) behind the object-safe [`Shell`], and a [`Context`] around it, so every check can be
//! driven through the outcomes a real guest would give, including the ones that must FAIL.
//! It exists only in this crate's unit tests and can never make a real run pass.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use kib_vm::Firmware;

use crate::context::{Context, ExecOutput, Shell, ShellError};
use crate::manifest::{Expect, ImageExpectations};

/// A guest that answers each command with the output of the first rule whose key the command
/// contains; a command no rule matches exits 127 ("command not found"), as in a guest
/// without the tool.
#[derive(Default)]
pub(crate) struct ScriptedGuest {
    rules: Vec<(String, ExecOutput)>,
    seen: Mutex<Vec<String>>,
}

impl ScriptedGuest {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Commands containing `key` print `stdout` and exit 0.
    pub(crate) fn ok(self, key: &str, stdout: &str) -> Self {
        self.answer(key, 0, stdout, "")
    }

    /// Commands containing `key` exit `status` with this output.
    pub(crate) fn answer(mut self, key: &str, status: u32, stdout: &str, stderr: &str) -> Self {
        self.rules.push((
            key.to_owned(),
            ExecOutput {
                status: Some(status),
                stdout: stdout.to_owned(),
                stderr: stderr.to_owned(),
            },
        ));
        self
    }
}

impl Shell for ScriptedGuest {
    fn exec<'a>(&'a self, command: &'a str) -> BoxFuture<'a, Result<ExecOutput, ShellError>> {
        Box::pin(async move {
            self.seen
                .lock()
                .expect("not poisoned")
                .push(command.to_owned());
            Ok(self
                .rules
                .iter()
                .find(|(k, _)| command.contains(k.as_str()))
                .map(|(_, o)| o.clone())
                .unwrap_or_else(|| ExecOutput {
                    status: Some(127),
                    stdout: String::new(),
                    stderr: format!("sh: not scripted: {command}"),
                }))
        })
    }
}

/// An address nothing listens on (a port bound and released at once).
pub(crate) fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A context around `guest`: no VM, SSH "forwarded" to a dead address, nothing else forwarded.
pub(crate) fn context(guest: ScriptedGuest, expect: Expect) -> Context {
    Context {
        vm: None,
        ssh_addr: dead_addr(),
        forwards: Vec::new(),
        shell: Box::new(guest),
        firmware: Firmware::Bios,
        image_size: 2 << 30,
        disk_size: 4 << 30,
        hostname: "kib-conformance".to_owned(),
        instance_id: "iid-test".to_owned(),
        authorized_keys: vec!["ssh-ed25519 AAAAtest kib-conformance".to_owned()],
        expected: None,
        expect,
        probe_port: 19999,
        cni_manifest: None,
        watchdog_fire: false,
        check_timeout: Duration::from_secs(30),
    }
}

/// A build manifest's expectations for a Kubernetes 1.37.1 image.
pub(crate) fn k8s_manifest() -> ImageExpectations {
    ImageExpectations {
        path: "build-manifest.json".into(),
        kubernetes: Some("1.37.1".to_owned()),
        containerd: Some("2.1.4".to_owned()),
        crictl: Some("v1.37.0".to_owned()),
        images: vec!["registry.k8s.io/pause:3.10".to_owned()],
        requested: Some("1.37".to_owned()),
        cni: Some("calico".to_owned()),
    }
}
