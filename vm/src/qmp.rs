//! A small typed async client for QMP (the QEMU monitor protocol) and QGA (the QEMU guest agent),
//! both JSON over a Unix socket.
//!
//! [`QmpClient`] and [`QgaClient`] are thin wrappers over one core that sends
//! `{"execute": …, "arguments": …, "id": n}` and reads newline-terminated JSON replies, with a
//! timeout per command. A connection whose command timed out (or failed at the I/O level) is
//! marked broken and refuses every later command with [`QmpError::Broken`]: a late reply could
//! otherwise be taken for the answer to the next command. Open a new connection instead.
//!
//! Why not the `qapi` crate: its current release panics ("duplicate command id") on the next
//! command sent after a command timed out, and kib needs timeouts on every call (a guest that
//! hangs must not hang the build).
//!
//! QMP: the client reads the greeting, negotiates `qmp_capabilities`, and queues asynchronous
//! events (`SHUTDOWN`, `POWERDOWN`, `WATCHDOG`, …) for [`QmpClient::take_events`] and
//! [`QmpClient::wait_event`].
//!
//! QGA: the agent has no greeting and may hold stale bytes from an earlier client, so
//! [`QgaClient::connect`] first sends `0xFF` (which resets the agent's parser) and
//! `guest-sync-delimited` with a random id, then drops everything up to the agent's `0xFF`
//! marker and any reply that does not carry that id.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kib_manifest::Hint;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::{Instant, timeout};

/// The default timeout of one command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the QMP and QGA clients.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting to the socket failed.
    #[error("Failed to connect to `{path}`")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed, or the peer closed it.
    #[error("I/O error on the connection while running `{command}`")]
    Io {
        /// The command (or `greeting`) being run.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No reply came within the timeout; the connection is now broken.
    #[error("`{command}` got no reply within {timeout:?}")]
    Timeout {
        /// The command.
        command: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The peer sent something that is not the protocol.
    #[error("Unexpected message while running `{command}`: {detail}")]
    Protocol {
        /// The command (or `greeting`) being run.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// The command ran and failed.
    #[error("`{command}` failed: {class}: {desc}")]
    CommandFailed {
        /// The command.
        command: String,
        /// The QAPI error class, e.g. `GenericError`, `CommandNotFound`.
        class: String,
        /// The error description.
        desc: String,
    },
    /// The connection is unusable because an earlier command timed out or failed.
    #[error("The connection is broken by an earlier failure; open a new one")]
    Broken,
}

impl Hint for QmpError {
    /// A suggestion for the user, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        match self {
            QmpError::Timeout { command, .. } if command.starts_with("guest-") => Some(
                "the guest agent did not answer: is `qemu-guest-agent` installed and running in the guest?"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

impl QmpError {
    /// The error class of a failed command, if it was one.
    pub fn class(&self) -> Option<&str> {
        match self {
            QmpError::CommandFailed { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QmpEvent {
    /// The event name, e.g. `SHUTDOWN`.
    pub event: String,
    /// The event data (may be `null`).
    #[serde(default)]
    pub data: Value,
    /// When QEMU emitted it.
    #[serde(default)]
    pub timestamp: Option<Value>,
}

/// The core: one JSON connection with ids, timeouts and the broken flag.
#[derive(Debug)]
struct Channel {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
    broken: bool,
    events: VecDeque<QmpEvent>,
    timeout: Duration,
}

enum Incoming {
    Return {
        id: Option<Value>,
        value: Value,
    },
    Error {
        id: Option<Value>,
        class: String,
        desc: String,
    },
    Event(QmpEvent),
    Greeting(Value),
}

impl Channel {
    async fn connect(path: &Path, timeout_: Duration) -> Result<Self, QmpError> {
        let connect_err = |source| QmpError::Connect {
            path: path.to_owned(),
            source,
        };
        let stream = timeout(timeout_, UnixStream::connect(path))
            .await
            .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_err)?;
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
            broken: false,
            events: VecDeque::new(),
            timeout: timeout_,
        })
    }

    /// Reads one message. Bytes up to the last `0xFF` of a line are dropped (QGA's delimiter).
    async fn read_message(&mut self, command: &str) -> Result<Incoming, QmpError> {
        loop {
            let mut line = Vec::new();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .await
                .map_err(|source| QmpError::Io {
                    command: command.to_owned(),
                    source,
                })?;
            if n == 0 {
                return Err(QmpError::Io {
                    command: command.to_owned(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            let start = line.iter().rposition(|b| *b == 0xFF).map_or(0, |p| p + 1);
            let text = &line[start..];
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(text).map_err(|e| QmpError::Protocol {
                command: command.to_owned(),
                detail: format!(
                    "invalid JSON ({e}): {}",
                    String::from_utf8_lossy(text).trim()
                ),
            })?;
            return classify(v).map_err(|detail| QmpError::Protocol {
                command: command.to_owned(),
                detail,
            });
        }
    }

    async fn write_raw(&mut self, command: &str, bytes: &[u8]) -> Result<(), QmpError> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|source| QmpError::Io {
                command: command.to_owned(),
                source,
            })
    }

    /// Runs `f` under the timeout; any failure other than a command error breaks the channel.
    async fn guarded<T>(
        &mut self,
        command: &str,
        limit: Duration,
        f: impl AsyncFnOnce(&mut Self) -> Result<T, QmpError>,
    ) -> Result<T, QmpError> {
        if self.broken {
            return Err(QmpError::Broken);
        }
        match timeout(limit, f(self)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if !matches!(e, QmpError::CommandFailed { .. }) {
                    self.broken = true;
                }
                Err(e)
            }
            Err(_) => {
                self.broken = true;
                Err(QmpError::Timeout {
                    command: command.to_owned(),
                    timeout: limit,
                })
            }
        }
    }

    async fn execute_value(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> Result<Value, QmpError> {
        self.guarded(command, limit, async |ch| {
            let id = ch.next_id;
            ch.next_id += 1;
            let mut msg = json!({"execute": command, "id": id});
            if let Some(args) = arguments {
                msg["arguments"] = args;
            }
            let mut bytes = serde_json::to_vec(&msg).expect("a JSON value serializes");
            bytes.push(b'\n');
            ch.write_raw(command, &bytes).await?;
            loop {
                match ch.read_message(command).await? {
                    Incoming::Event(e) => ch.events.push_back(e),
                    Incoming::Greeting(_) => {}
                    Incoming::Return { id: rid, value } => {
                        if rid.as_ref().is_none_or(|r| *r == json!(id)) {
                            return Ok(value);
                        }
                    }
                    Incoming::Error {
                        id: rid,
                        class,
                        desc,
                    } => {
                        if rid.as_ref().is_none_or(|r| *r == json!(id)) {
                            return Err(QmpError::CommandFailed {
                                command: command.to_owned(),
                                class,
                                desc,
                            });
                        }
                    }
                }
            }
        })
        .await
    }

    async fn execute<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> Result<T, QmpError> {
        let v = self.execute_value(command, arguments, limit).await?;
        serde_json::from_value(v).map_err(|e| QmpError::Protocol {
            command: command.to_owned(),
            detail: format!("unexpected reply shape: {e}"),
        })
    }
}

fn classify(v: Value) -> Result<Incoming, String> {
    let Value::Object(mut m) = v else {
        return Err(format!("not an object: {v}"));
    };
    let id = m.remove("id");
    if let Some(value) = m.remove("return") {
        return Ok(Incoming::Return { id, value });
    }
    if let Some(err) = m.remove("error") {
        let s = |k: &str| {
            err.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        return Ok(Incoming::Error {
            id,
            class: s("class"),
            desc: s("desc"),
        });
    }
    if m.contains_key("event") {
        return serde_json::from_value(Value::Object(m))
            .map(Incoming::Event)
            .map_err(|e| format!("malformed event: {e}"));
    }
    if let Some(g) = m.remove("QMP") {
        return Ok(Incoming::Greeting(g));
    }
    Err(format!("unknown message: {}", Value::Object(m)))
}

/// The `return` of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether the guest CPUs run.
    pub running: bool,
    /// The run state, e.g. `running`, `paused`, `shutdown`, `guest-panicked`.
    pub status: String,
}

/// A QMP connection (to a `-mon mode=control` socket).
#[derive(Debug)]
pub struct QmpClient {
    ch: Channel,
    greeting: Value,
}

impl QmpClient {
    /// Connects, reads the greeting and negotiates capabilities; `timeout` is also the default
    /// timeout of later commands.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let mut ch = Channel::connect(path, timeout).await?;
        let greeting = ch
            .guarded("greeting", timeout, async |ch| {
                match ch.read_message("greeting").await? {
                    Incoming::Greeting(g) => Ok(g),
                    _ => Err(QmpError::Protocol {
                        command: "greeting".to_owned(),
                        detail: "the first message is not a QMP greeting".to_owned(),
                    }),
                }
            })
            .await?;
        ch.execute_value("qmp_capabilities", None, timeout).await?;
        Ok(Self { ch, greeting })
    }

    /// The `QMP` object of the greeting (QEMU version, capabilities).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Whether an earlier failure made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.ch.broken
    }

    /// Runs `command` with the default timeout and decodes its `return`.
    pub async fn execute<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let t = self.ch.timeout;
        self.ch.execute(command, arguments, t).await
    }

    /// Runs `command` with an explicit timeout and decodes its `return`.
    pub async fn execute_with_timeout<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<T, QmpError> {
        self.ch.execute(command, arguments, timeout).await
    }

    /// `query-status`.
    pub async fn query_status(&mut self) -> Result<StatusInfo, QmpError> {
        self.execute("query-status", None).await
    }

    /// `system_powerdown`: presses the ACPI power button.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute::<Value>("system_powerdown", None)
            .await
            .map(drop)
    }

    /// `quit`: QEMU exits at once (the guest is not asked). The reply may be lost when QEMU
    /// closes the socket first; that counts as success.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute::<Value>("quit", None).await {
            Ok(_) | Err(QmpError::Io { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes and returns the events received so far.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.ch.events.drain(..).collect()
    }

    /// Waits for the event `name` (looking at queued events first); other events stay queued.
    pub async fn wait_event(&mut self, name: &str, limit: Duration) -> Result<QmpEvent, QmpError> {
        if let Some(pos) = self.ch.events.iter().position(|e| e.event == name) {
            return Ok(self.ch.events.remove(pos).expect("position is in range"));
        }
        let label = format!("wait for event {name}");
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match timeout(left, self.ch.read_message(&label)).await {
                Err(_) => {
                    return Err(QmpError::Timeout {
                        command: label,
                        timeout: limit,
                    });
                }
                Ok(Err(e)) => {
                    self.ch.broken = true;
                    return Err(e);
                }
                Ok(Ok(m)) => m,
            };
            if let Incoming::Event(e) = msg {
                if e.event == name {
                    return Ok(e);
                }
                self.ch.events.push_back(e);
            }
        }
    }
}

/// The `return` of `guest-info`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GuestInfo {
    /// The agent version.
    pub version: String,
    /// The commands the agent knows.
    #[serde(default)]
    pub supported_commands: Vec<GuestCommand>,
}

/// One entry of `guest-info`'s `supported_commands`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GuestCommand {
    /// The command name.
    pub name: String,
    /// Whether it is enabled (an allow-list such as EL's `FILTER_RPC_ARGS` disables others).
    pub enabled: bool,
}

/// The `return` of `guest-get-osinfo` (fields the guest did not report are `None`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestOsInfo {
    /// e.g. `debian`, `rocky`.
    pub id: Option<String>,
    /// e.g. `Rocky Linux`.
    pub name: Option<String>,
    /// e.g. `Rocky Linux 10.2 (Red Quartz)`.
    pub pretty_name: Option<String>,
    /// e.g. `10.2`.
    pub version_id: Option<String>,
    /// The kernel release.
    pub kernel_release: Option<String>,
    /// The machine, e.g. `x86_64`.
    pub machine: Option<String>,
}

/// One entry of `guest-network-get-interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestInterface {
    /// The interface name.
    pub name: String,
    /// The MAC address.
    pub hardware_address: Option<String>,
    /// The addresses.
    #[serde(default)]
    pub ip_addresses: Vec<GuestIpAddress>,
}

/// One address of a [`GuestInterface`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestIpAddress {
    /// `ipv4` or `ipv6`.
    pub ip_address_type: String,
    /// The address.
    pub ip_address: String,
    /// The prefix length.
    pub prefix: u32,
}

/// A guest agent connection (to the host side of `org.qemu.guest_agent.0`).
///
/// QEMU's chardev socket serves one client at a time: drop the client when done.
#[derive(Debug)]
pub struct QgaClient {
    ch: Channel,
}

impl QgaClient {
    /// Connects and synchronises (`0xFF` + `guest-sync-delimited`) within `timeout`, which is
    /// also the default timeout of later commands. Fails with a timeout while the agent is not
    /// running in the guest yet.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let ch = Channel::connect(path, timeout).await?;
        let mut c = Self { ch };
        c.sync().await?;
        Ok(c)
    }

    /// Resynchronises with the agent: drops stale output and checks a random token comes back.
    pub async fn sync(&mut self) -> Result<(), QmpError> {
        let token: u32 = rand::random::<u32>() >> 1;
        let limit = self.ch.timeout;
        let command = "guest-sync-delimited";
        self.ch
            .guarded(command, limit, async |ch| {
                let msg = json!({"execute": command, "arguments": {"id": token}});
                let mut bytes = vec![0xFF];
                bytes.extend(serde_json::to_vec(&msg).expect("a JSON value serializes"));
                bytes.push(b'\n');
                ch.write_raw(command, &bytes).await?;
                loop {
                    // A stale line that is not JSON (e.g. a half reply) reads as a protocol
                    // error: skip it, the delimiter realigns the stream.
                    match ch.read_message(command).await {
                        Ok(Incoming::Return { value, .. }) if value == json!(token) => {
                            return Ok(());
                        }
                        Ok(_) | Err(QmpError::Protocol { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            })
            .await
    }

    /// Whether an earlier failure made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.ch.broken
    }

    /// Runs `command` with the default timeout and decodes its `return`.
    pub async fn execute<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let t = self.ch.timeout;
        self.ch.execute(command, arguments, t).await
    }

    /// `guest-ping`.
    pub async fn ping(&mut self) -> Result<(), QmpError> {
        self.execute::<Value>("guest-ping", None).await.map(drop)
    }

    /// `guest-info`.
    pub async fn info(&mut self) -> Result<GuestInfo, QmpError> {
        self.execute("guest-info", None).await
    }

    /// `guest-get-osinfo`.
    pub async fn os_info(&mut self) -> Result<GuestOsInfo, QmpError> {
        self.execute("guest-get-osinfo", None).await
    }

    /// `guest-get-host-name`.
    pub async fn host_name(&mut self) -> Result<String, QmpError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "kebab-case")]
        struct HostName {
            host_name: String,
        }
        Ok(self
            .execute::<HostName>("guest-get-host-name", None)
            .await?
            .host_name)
    }

    /// `guest-network-get-interfaces`.
    pub async fn network_interfaces(&mut self) -> Result<Vec<GuestInterface>, QmpError> {
        self.execute("guest-network-get-interfaces", None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A scripted peer: for each incoming line, the closure returns the lines to send back.
    fn serve(
        path: &Path,
        greeting: Option<&'static str>,
        mut reply: impl FnMut(&[u8]) -> Vec<Vec<u8>> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            if let Some(g) = greeting {
                s.write_all(g.as_bytes()).await.unwrap();
            }
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while s.read(&mut byte).await.unwrap_or(0) == 1 {
                buf.push(byte[0]);
                if byte[0] == b'\n' {
                    for line in reply(&buf) {
                        s.write_all(&line).await.unwrap();
                    }
                    buf.clear();
                }
            }
        })
    }

    fn parse(line: &[u8]) -> Value {
        let start = line.iter().rposition(|b| *b == 0xFF).map_or(0, |p| p + 1);
        serde_json::from_slice(&line[start..]).unwrap()
    }

    const GREETING: &str = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n";

    #[tokio::test]
    async fn qmp_commands_events_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        serve(&path, Some(GREETING), |line| {
            let v = parse(line);
            let id = v["id"].clone();
            let lines: Vec<String> = match v["execute"].as_str().unwrap() {
                "qmp_capabilities" => vec![format!("{{\"return\": {{}}, \"id\": {id}}}\r\n")],
                "query-status" => vec![
                    "{\"event\": \"POWERDOWN\", \"data\": {}, \"timestamp\": {}}\r\n".into(),
                    format!(
                        "{{\"return\": {{\"running\": true, \"status\": \"running\"}}, \"id\": {id}}}\r\n"
                    ),
                ],
                "nope" => vec![format!(
                    "{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"no nope\"}}, \"id\": {id}}}\r\n"
                )],
                "slow" => vec![],
                _ => vec![],
            };
            lines.into_iter().map(String::into_bytes).collect()
        });
        let mut c = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let st = c.query_status().await.unwrap();
        assert!(st.running);
        assert_eq!(st.status, "running");
        let ev = c
            .wait_event("POWERDOWN", Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(ev.event, "POWERDOWN");
        let err = c.execute::<Value>("nope", None).await.unwrap_err();
        assert!(
            matches!(&err, QmpError::CommandFailed { class, .. } if class == "CommandNotFound"),
            "{err:?}"
        );
        assert!(
            !c.is_broken(),
            "a failed command leaves the connection usable"
        );
        let err = c
            .execute_with_timeout::<Value>("slow", None, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, QmpError::Timeout { command, .. } if command == "slow"),
            "{err:?}"
        );
        assert!(c.is_broken());
        // Never reused after a timeout (the `qapi` crate panics here).
        assert!(matches!(c.query_status().await, Err(QmpError::Broken)));
    }

    #[tokio::test]
    async fn qga_resyncs_past_stale_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        serve(&path, Some("{\"return\": \"stale\"}\ngarbage\n"), |line| {
            let v = parse(line);
            match v["execute"].as_str().unwrap() {
                "guest-sync-delimited" => {
                    assert_eq!(line[0], 0xFF, "the client resets the agent's parser first");
                    vec![
                        b"{\"return\": 1}\n".to_vec(),
                        [&[0xFFu8][..], format!("{{\"return\": {}}}\n", v["arguments"]["id"]).as_bytes()].concat(),
                    ]
                }
                "guest-ping" => vec![b"{\"return\": {}}\n".to_vec()],
                "guest-info" => vec![
                    b"{\"return\": {\"version\": \"7.2.0\", \"supported_commands\": [{\"name\": \"guest-ping\", \"enabled\": true, \"success-response\": true}]}}\n".to_vec(),
                ],
                "guest-get-osinfo" => vec![
                    b"{\"return\": {\"id\": \"debian\", \"version-id\": \"12\", \"kernel-release\": \"6.1\"}}\n".to_vec(),
                ],
                _ => vec![],
            }
        });
        let mut c = QgaClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        c.ping().await.unwrap();
        let info = c.info().await.unwrap();
        assert_eq!(info.version, "7.2.0");
        assert!(info.supported_commands[0].enabled);
        let os = c.os_info().await.unwrap();
        assert_eq!(os.id.as_deref(), Some("debian"));
        assert_eq!(os.version_id.as_deref(), Some("12"));
    }

    #[tokio::test]
    async fn qga_timeout_when_agent_absent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        serve(&path, None, |_| vec![]);
        let err = QgaClient::connect(&path, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, QmpError::Timeout { command, .. } if command == "guest-sync-delimited")
        );
        assert!(err.hint().unwrap().contains("qemu-guest-agent"));
    }

    #[tokio::test]
    async fn connect_error_names_the_path() {
        let err = QmpClient::connect(Path::new("/nonexistent/qmp.sock"), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/qmp.sock"));
    }

    #[test]
    fn delimiter_is_stripped() {
        let line = [&[0xFFu8][..], b"{\"return\": 5}\n"].concat();
        let start = line.iter().rposition(|b| *b == 0xFF).map_or(0, |p| p + 1);
        let v: Value = serde_json::from_slice(&line[start..]).unwrap();
        assert_eq!(v["return"], 5);
    }
}
