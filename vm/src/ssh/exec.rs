//! Remote commands (guarded as the `ssh` module docs describe), uploads, and the lines and
//! tails of their output.

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use russh::client;
use russh::{ChannelMsg, ChannelWriteHalf};
use tokio::io::AsyncRead;
use tracing::debug;

use super::{Session, SshError};

/// How many trailing stderr lines a failed command keeps for its error.
pub const STDERR_TAIL_LINES: usize = 20;

/// Lines longer than this are passed on in pieces (a runaway progress bar must not eat memory).
const MAX_LINE: usize = 64 * 1024;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(u32),
    /// It was killed by this signal (e.g. `TERM`).
    Signal(String),
    /// The channel closed without an exit status.
    Unknown,
}

impl ExitStatus {
    /// Whether the command exited with code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }

    /// The exit code, if the command exited normally.
    pub fn code(&self) -> Option<u32> {
        match self {
            ExitStatus::Code(c) => Some(*c),
            _ => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
            ExitStatus::Unknown => f.write_str("no exit status"),
        }
    }
}

/// The last lines a failed command or tool wrote; the cause in the error chain of a failure, so
/// that the error renderer shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTail {
    /// The lines, oldest first.
    pub lines: Vec<String>,
}

impl fmt::Display for OutputTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lines.is_empty() {
            return f.write_str("It printed nothing");
        }
        writeln!(f, "Its last {} line(s) of output:", self.lines.len())?;
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for OutputTail {}

/// What to upload with [`Session::upload`].
#[derive(Debug, Clone, Copy)]
pub enum UploadSource<'a> {
    /// A file on the host, streamed.
    Path(&'a Path),
    /// Bytes in memory.
    Bytes(&'a [u8]),
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guard described in the module docs: `$1` runs in its own session and is killed when the
/// channel's stdin (fd 0, moved to fd 3) reaches end-of-file.
const GUARD_SCRIPT: &str = include_str!("../scripts/guard.sh");

/// Wraps `command` in the guard that kills it when the channel closes (see the module docs).
pub fn guarded_command(command: &str) -> String {
    format!(
        "sh -c {} kib-guard {}",
        shell_quote(GUARD_SCRIPT),
        shell_quote(command)
    )
}

/// `command` run by `sh` as root through `sudo -n` (never prompts), with the guard inside sudo
/// so that it can kill the command's root processes.
pub fn sudo_command(command: &str) -> String {
    format!("sudo -n {}", guarded_command(command))
}

/// Splits a byte stream into lines (`\n`, `\r\n`), lossy UTF-8; a line longer than 64 KiB is
/// passed on in pieces. The one line splitter for command output (remote over SSH, local
/// ansible).
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Adds `data` and passes on each line it completes.
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(&str)) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            emit(&String::from_utf8_lossy(line));
            start = end + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            let line = std::mem::take(&mut self.buf);
            emit(&String::from_utf8_lossy(&line));
        }
    }

    /// Passes on what is left after the last newline, if anything.
    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            emit(&String::from_utf8_lossy(line));
        }
    }
}

/// Keeps the last [`STDERR_TAIL_LINES`] lines (of a failed command's output, for its error).
#[derive(Debug, Default)]
pub struct Tail(VecDeque<String>);

impl Tail {
    /// Adds a line, dropping the oldest when full.
    pub fn push(&mut self, line: &str) {
        if self.0.len() == STDERR_TAIL_LINES {
            self.0.pop_front();
        }
        self.0.push_back(line.to_owned());
    }

    /// The kept lines, oldest first.
    pub fn into_output(self) -> OutputTail {
        OutputTail {
            lines: self.0.into(),
        }
    }
}

/// Closes the channel if `exec` is cancelled (its future dropped) before the command ended, so
/// that the guard kills the remote command.
struct CloseOnCancel {
    half: Option<ChannelWriteHalf<client::Msg>>,
    finished: AtomicBool,
}

impl Drop for CloseOnCancel {
    fn drop(&mut self) {
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        if let (Some(half), Ok(rt)) = (self.half.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = half.close().await;
            });
        }
    }
}

impl Session {
    /// Runs `command` (through the remote user's shell) and passes its output to `on_line`, line
    /// by line as it arrives. Without `stdin` the command reads `/dev/null` and is killed when
    /// the channel closes (see the module docs); with `stdin` it gets that input streamed,
    /// followed by end-of-file. Returns how the command ended: a non-zero status is not an error
    /// here (see [`Session::exec_checked`]).
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<ExitStatus, SshError> {
        let wire = match stdin {
            Some(_) => command.to_owned(),
            None => guarded_command(command),
        };
        self.run(command, wire, stdin, on_line).await
    }

    /// Runs `command` with `sh` as root through `sudo -n` (see [`sudo_command`]), streaming its
    /// output like [`Session::exec`]; stdin is `/dev/null`.
    pub async fn exec_sudo(
        &self,
        command: &str,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<ExitStatus, SshError> {
        self.run(
            &format!("sudo {command}"),
            sudo_command(command),
            None,
            on_line,
        )
        .await
    }

    /// Like [`Session::exec`], but a non-zero exit is [`SshError::CommandFailed`] carrying the
    /// exit status and the last [`STDERR_TAIL_LINES`] lines of stderr.
    pub async fn exec_checked(
        &self,
        command: &str,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<(), SshError> {
        let wire = match stdin {
            Some(_) => command.to_owned(),
            None => guarded_command(command),
        };
        self.run_checked(command, wire, stdin, on_line).await
    }

    /// Like [`Session::exec_sudo`], but a non-zero exit is [`SshError::CommandFailed`].
    pub async fn exec_sudo_checked(
        &self,
        command: &str,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<(), SshError> {
        self.run_checked(
            &format!("sudo {command}"),
            sudo_command(command),
            None,
            on_line,
        )
        .await
    }

    async fn run_checked(
        &self,
        shown: &str,
        wire: String,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<(), SshError> {
        let mut tail = Tail::default();
        let status = self
            .run(shown, wire, stdin, &mut |stream, line| {
                if stream == Stream::Stderr {
                    tail.push(line);
                }
                on_line(stream, line);
            })
            .await?;
        if status.success() {
            Ok(())
        } else {
            Err(SshError::CommandFailed {
                command: shown.to_owned(),
                status,
                stderr: tail.into_output(),
            })
        }
    }

    /// Sends `wire` to the server; `shown` names the command in errors and logs.
    async fn run(
        &self,
        shown: &str,
        wire: String,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) -> Result<ExitStatus, SshError> {
        let command = shown;
        let channel_err = |source| SshError::Channel {
            addr: self.addr,
            command: command.to_owned(),
            source: Box::new(source),
        };
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(channel_err)?;
        channel.exec(true, wire).await.map_err(channel_err)?;
        let (mut read, write) = channel.split();
        let guard = CloseOnCancel {
            half: Some(write),
            finished: AtomicBool::new(false),
        };
        let Some(write) = guard.half.as_ref() else {
            unreachable!("just set")
        };

        let writer = async {
            if let Some(stdin) = stdin {
                write.data(stdin).await?;
                write.eof().await?;
            }
            Ok::<(), russh::Error>(())
        };
        tokio::pin!(writer);
        let mut writer_done = false;
        let mut out = LineSplitter::default();
        let mut err = LineSplitter::default();
        let mut status = ExitStatus::Unknown;
        loop {
            tokio::select! {
                r = &mut writer, if !writer_done => {
                    writer_done = true;
                    if let Err(e) = r {
                        // The command may have ended without reading all of its input; its
                        // status tells. Keep reading.
                        debug!(command, error = %e, "sending stdin stopped");
                    }
                }
                msg = read.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => out.push(&data, |l| on_line(Stream::Stdout, l)),
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => err.push(&data, |l| on_line(Stream::Stderr, l)),
                    Some(ChannelMsg::ExitStatus { exit_status }) => status = ExitStatus::Code(exit_status),
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => status = ExitStatus::Signal(format!("{signal_name:?}")),
                    Some(ChannelMsg::Failure) => {
                        guard.finished.store(true, Ordering::Relaxed);
                        return Err(SshError::ExecRefused { addr: self.addr, command: command.to_owned() });
                    }
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                }
            }
        }
        out.finish(|l| on_line(Stream::Stdout, l));
        err.finish(|l| on_line(Stream::Stderr, l));
        guard.finished.store(true, Ordering::Relaxed);
        if status == ExitStatus::Unknown && self.handle.is_closed() {
            return Err(channel_err(russh::Error::Disconnect));
        }
        debug!(command, %status, "remote command ended");
        Ok(status)
    }

    /// Uploads `source` to `remote` with `mode` (e.g. `0o644`), as root through `sudo -n` when
    /// `sudo` is set. The data is streamed over the channel (a file is never read whole into
    /// memory) into `remote.kib-upload`, whose size is checked before it is renamed to `remote`:
    /// an interrupted upload never leaves a truncated file at `remote`.
    pub async fn upload(
        &self,
        source: UploadSource<'_>,
        remote: &str,
        mode: u32,
        sudo: bool,
    ) -> Result<(), SshError> {
        let upload_err = |source| SshError::Upload {
            remote: remote.to_owned(),
            source: Box::new(source),
        };
        let mut file;
        let mut bytes;
        let (size, reader): (u64, &mut (dyn AsyncRead + Unpin + Send)) = match source {
            UploadSource::Path(path) => {
                let read_err = |source| SshError::ReadLocal {
                    path: path.to_owned(),
                    source,
                };
                file = tokio::fs::File::open(path).await.map_err(read_err)?;
                let size = file.metadata().await.map_err(read_err)?.len();
                (size, &mut file)
            }
            UploadSource::Bytes(b) => {
                bytes = b;
                (b.len() as u64, &mut bytes)
            }
        };
        let script = r#"set -eu
dest=$1; mode=$2; size=$3; tmp="$dest.kib-upload"
rm -f "$tmp"
install -m "$mode" /dev/stdin "$tmp"
got=$(wc -c <"$tmp")
if [ "$got" -ne "$size" ]; then rm -f "$tmp"; echo "kib: received $got of $size bytes" >&2; exit 1; fi
mv -f "$tmp" "$dest""#;
        let command = format!(
            "{}sh -c {} kib-upload {} {:04o} {size}",
            if sudo { "sudo -n " } else { "" },
            shell_quote(script),
            shell_quote(remote),
            mode & 0o7777
        );
        let mut lines = Vec::new();
        let status = self
            .exec(&command, Some(reader), &mut |_, l| lines.push(l.to_owned()))
            .await
            .map_err(upload_err)?;
        if !status.success() {
            let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
            return Err(upload_err(SshError::CommandFailed {
                command: format!(
                    "{}install -m {:04o} /dev/stdin {remote}",
                    if sudo { "sudo -n " } else { "" },
                    mode & 0o7777
                ),
                status,
                stderr: OutputTail {
                    lines: lines.split_off(start),
                },
            }));
        }
        debug!(remote, size, "uploaded");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_handles_quotes() {
        assert_eq!(shell_quote("abc/def-1.2"), "abc/def-1.2");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn line_splitter_handles_split_chunks_and_crlf() {
        let mut s = LineSplitter::default();
        let mut lines = Vec::new();
        s.push(b"hel", |l| lines.push(l.to_owned()));
        s.push(b"lo\r\nwor", |l| lines.push(l.to_owned()));
        s.push(b"ld\n\nlast", |l| lines.push(l.to_owned()));
        s.finish(|l| lines.push(l.to_owned()));
        assert_eq!(lines, ["hello", "world", "", "last"]);
    }

    #[test]
    fn exit_status_display() {
        assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Signal("TERM".into()).success());
    }

    #[test]
    fn output_tail_display_lists_lines() {
        let t = OutputTail {
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(t.to_string(), "Its last 2 line(s) of output:\n  a\n  b");
    }
}
