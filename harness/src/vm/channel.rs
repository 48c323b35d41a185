//! The guest channel: a resident root bash on a virtio-serial port (vm-configs/guest/labtest-shell).
//!
//! Why not hvc0: a virtconsole stalls under TCG with Debian's 6.1 kernel (input sits undelivered for
//! seconds). Why not qemu-ga's guest-exec for every command: it costs a process start plus status
//! polling, 35-44 ms per trivial command under TCG; this shell runs a trivial command in a few ms.
//!
//! Framing, per request (one line, so bash reads it whole):
//! ```text
//! ( eval $'<command>' ) </dev/null 2>/run/labtest/err.$$; <read stderr>; printf '\n<MARKER> <status> <stderr bytes>\n<stderr>'
//! ```
//! stdout streams back raw; the reply is everything before `\n<MARKER> `. A fresh random marker per
//! request means output can never be mistaken for framing, and a late reply to an earlier request
//! (a frozen guest thawed, a caller that gave up) is recognised and discarded by its own marker.
//!
//! # Caveats
//! A command that leaves a background process writing to stdout will interleave that output with
//! later replies; redirect a daemon's output (`cmd >/dev/null 2>&1 &`).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// What a command did in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit status.
    pub status: i32,
    /// What it printed.
    pub stdout: Vec<u8>,
    /// What it printed on stderr.
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Stdout as text (invalid UTF-8 replaced).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text (invalid UTF-8 replaced).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Why a guest command could not be run or answered.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The channel's socket could not be connected.
    #[error("guest channel {path} could not be reached: {message}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Reading or writing the channel failed, or its reply did not parse.
    #[error("guest channel {path}: {message}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The command's reply did not come in time.
    #[error("command {command:?} got no reply within {:.1}s on {path}; output so far: {partial:?}", timeout.as_secs_f64())]
    Timeout {
        /// The command.
        command: String,
        /// The socket.
        path: PathBuf,
        /// How long it waited.
        timeout: Duration,
        /// What had come of the reply.
        partial: String,
    },
    /// An earlier command was abandoned before its reply and the reply has not come yet: a new
    /// one would read the old reply as its own.
    #[error("guest channel {path} is still busy with an earlier command whose caller stopped waiting for it ({command:?}): expected its reply before sending another")]
    Busy {
        /// The socket.
        path: PathBuf,
        /// The abandoned command.
        command: String,
    },
}

/// One connection to one labtest-shell port. Requests are strictly one at a time.
pub struct Channel {
    path: PathBuf,
    stream: UnixStream,
    buffer: Vec<u8>,
    /// What is left to send of the last request. bash reads a request as one line, so one cut
    /// short (its caller gave up) must be sent whole before anything else.
    outgoing: Vec<u8>,
    /// The request whose reply has not been read yet. Set before the request is sent and
    /// cleared only once its reply is read, so a caller that overran its deadline, or gave up
    /// at any await, leaves it here for the next exec to discard.
    unanswered: Option<Unanswered>,
}

#[derive(Clone)]
struct Unanswered {
    command: String,
    marker: String,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn fresh_marker() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("__LT{:x}{:x}{n:x}__", nanos, std::process::id())
}

/// Quotes `command` as a bash `$'...'` string: every byte survives, whatever the command contains.
pub fn ansi_c_quote(command: &str) -> String {
    let mut out = String::with_capacity(command.len() + 3);
    out.push_str("$'");
    for byte in command.bytes() {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            0x20..=0x7e => out.push(byte as char),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out.push('\'');
    out
}

/// Single-quotes `s` for a POSIX sh (QEMU's `exec:` migration runs `/bin/sh -c`, where bash's
/// `$'...'` does not exist).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guest's runtime directory for the channel's files (tests point it elsewhere).
const RUN_DIR: &str = "${LABTEST_RUN:-/run/labtest}";

/// One request: the command runs in a subshell that records its pid under the request's marker
/// for as long as it runs, so a rescue ([`rescue_command`]) can kill exactly this command.
fn request_line(command: &str, marker: &str) -> String {
    format!(
        "( echo $BASHPID >\"{RUN_DIR}/cmd.{marker}\"; eval {} ) </dev/null 2>\"{RUN_DIR}/err.$$\"; __lt_rc=$?; \
         rm -f \"{RUN_DIR}/cmd.{marker}\"; __lt_err=; \
         IFS= read -r -d '' __lt_err <\"{RUN_DIR}/err.$$\"; \
         printf '\\n%s %d %d\\n%s' {marker} \"$__lt_rc\" \"${{#__lt_err}}\" \"$__lt_err\"\n",
        ansi_c_quote(command)
    )
}

/// A command for the guest's other channel that kills the request `marker` belongs to, with
/// everything it started, if it still runs - and nothing else. Under TCG a starved guest may
/// run a rescue seconds after the harness gave up waiting for it; killing "whatever the shell
/// runs now" then killed the next command instead (a node's join exited 137 during bring-up).
pub fn rescue_command(marker: &str) -> String {
    format!(
        "kill_tree() {{ local c; for c in $(pgrep -P \"$1\"); do kill_tree \"$c\"; done; \
         kill -KILL \"$1\" 2>/dev/null; }}; \
         p=$(cat \"{RUN_DIR}/cmd.{marker}\" 2>/dev/null) && kill_tree \"$p\"; true"
    )
}

/// Where a complete reply to `marker` ends in `buffer`, and what it holds.
fn parse_reply(buffer: &[u8], marker: &str) -> Option<(usize, ExecOutput)> {
    let needle = format!("\n{marker} ");
    let at = find(buffer, needle.as_bytes())?;
    let header_start = at + needle.len();
    let header_len = find(&buffer[header_start..], b"\n")?;
    let header = std::str::from_utf8(&buffer[header_start..header_start + header_len]).ok()?;
    let mut parts = header.split(' ');
    let status: i32 = parts.next()?.parse().ok()?;
    let err_len: usize = parts.next()?.parse().ok()?;
    let err_start = header_start + header_len + 1;
    if buffer.len() < err_start + err_len {
        return None;
    }
    Some((
        err_start + err_len,
        ExecOutput {
            status,
            stdout: buffer[..at].to_vec(),
            stderr: buffer[err_start..err_start + err_len].to_vec(),
        },
    ))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Channel {
    /// Connects to the channel's chardev socket, retrying until QEMU has created it or the
    /// deadline passes.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, ChannelError> {
        let start = Instant::now();
        loop {
            match UnixStream::connect(path).await {
                Ok(stream) => {
                    return Ok(Self {
                        path: path.to_path_buf(),
                        stream,
                        buffer: Vec::new(),
                        outgoing: Vec::new(),
                        unanswered: None,
                    })
                }
                Err(e) if start.elapsed() < timeout => {
                    tracing::trace!("channel {} not yet there: {e}", path.display());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(ChannelError::Connect {
                        path: path.to_path_buf(),
                        message: format!("{e} (waited {:.1}s)", timeout.as_secs_f64()),
                    })
                }
            }
        }
    }

    /// The channel's socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an earlier command's reply is still outstanding (it overran its deadline, or its
    /// caller stopped waiting).
    pub fn is_busy(&self) -> bool {
        self.unanswered.is_some()
    }

    /// The marker of the request whose reply is still outstanding, for [`rescue_command`].
    pub fn unanswered_marker(&self) -> Option<&str> {
        self.unanswered.as_ref().map(|u| u.marker.as_str())
    }

    /// Runs `command` with bash in the guest, stdin from /dev/null.
    ///
    /// # Errors
    /// [`ChannelError::Timeout`] when no reply came within `timeout` (the command may still be
    /// running: the next call first waits for its reply, within its own deadline);
    /// [`ChannelError::Busy`] when an earlier command still has not answered.
    ///
    /// # Cancel safety
    /// This method is cancel safe. Dropped before it returns, the request is still owed its
    /// reply: the next call finishes sending the request if it was cut short, then reads and
    /// discards its reply before sending its own, as after a timeout.
    pub async fn exec(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, ChannelError> {
        let deadline = Instant::now() + timeout;
        if let Some(old) = self.unanswered.clone() {
            match self.complete(&old.marker, deadline).await {
                Ok(_) => {}
                Err(ChannelError::Timeout { .. }) => {
                    return Err(ChannelError::Busy {
                        path: self.path.clone(),
                        command: old.command,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        let marker = fresh_marker();
        self.outgoing = request_line(command, &marker).into_bytes();
        self.unanswered = Some(Unanswered {
            command: command.to_string(),
            marker: marker.clone(),
        });
        match self.complete(&marker, deadline).await {
            Err(ChannelError::Timeout { partial, .. }) => Err(ChannelError::Timeout {
                command: command.to_string(),
                path: self.path.clone(),
                timeout,
                partial,
            }),
            other => other,
        }
    }

    /// Sends what is left of the request `marker` belongs to, then reads its reply. Every
    /// await leaves `outgoing`, `buffer` and `unanswered` true to what was sent and read (a
    /// write or a read_buf that is dropped moves no bytes).
    async fn complete(
        &mut self,
        marker: &str,
        deadline: Instant,
    ) -> Result<ExecOutput, ChannelError> {
        while !self.outgoing.is_empty() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.stream.write(&self.outgoing)).await {
                Ok(Ok(0)) => return Err(self.io("QEMU closed the channel socket".into())),
                Ok(Ok(sent)) => {
                    self.outgoing.drain(..sent);
                }
                Ok(Err(e)) => return Err(self.io(format!("sending a request failed: {e}"))),
                Err(_) => return Err(self.deadline_passed()),
            }
        }
        let output = self.read_reply(marker, deadline).await?;
        self.unanswered = None;
        Ok(output)
    }

    async fn read_reply(
        &mut self,
        marker: &str,
        deadline: Instant,
    ) -> Result<ExecOutput, ChannelError> {
        loop {
            if let Some((end, output)) = parse_reply(&self.buffer, marker) {
                self.buffer.drain(..end);
                return Ok(output);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            self.buffer.reserve(65536);
            let read =
                tokio::time::timeout(remaining, self.stream.read_buf(&mut self.buffer)).await;
            match read {
                Ok(Ok(0)) => return Err(self.io("QEMU closed the channel socket".into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(self.io(format!("read failed: {e}"))),
                Err(_) => return Err(self.deadline_passed()),
            }
        }
    }

    /// The deadline passed with the request unsent or unanswered; [`Channel::exec`] names the
    /// command and its deadline.
    fn deadline_passed(&self) -> ChannelError {
        ChannelError::Timeout {
            command: String::new(),
            path: self.path.clone(),
            timeout: Duration::ZERO,
            partial: crate::wait::tail_chars(&String::from_utf8_lossy(&self.buffer), 400),
        }
    }

    fn io(&self, message: String) -> ChannelError {
        ChannelError::Io {
            path: self.path.clone(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_every_byte() {
        assert_eq!(ansi_c_quote("echo 'a' \\ b"), "$'echo \\'a\\' \\\\ b'");
        assert_eq!(ansi_c_quote("a\nb\té"), "$'a\\x0ab\\x09\\xc3\\xa9'");
    }

    #[test]
    fn a_reply_is_found_only_when_complete() {
        let marker = "__LTx__";
        let full = b"out\nput\n__LTx__ 3 4\nerr!rest".to_vec();
        for cut in 0..full.len() - 4 {
            assert!(parse_reply(&full[..cut], marker).is_none(), "cut at {cut}");
        }
        let (end, output) = parse_reply(&full, marker).unwrap();
        assert_eq!(&full[end..], b"rest");
        assert_eq!(output.status, 3);
        assert_eq!(output.stdout, b"out\nput");
        assert_eq!(output.stderr, b"err!");
    }

    #[test]
    fn output_without_trailing_newline_is_exact() {
        let (_, output) = parse_reply(b"no newline\n__LTy__ 0 0\n", "__LTy__").unwrap();
        assert_eq!(output.stdout, b"no newline");
        let (_, output) = parse_reply(b"\n__LTy__ 0 0\n", "__LTy__").unwrap();
        assert_eq!(output.stdout, b"");
    }

    /// A channel connected to a socket pair, and the other end, where a guest's bash would be.
    async fn channel_pair(dir: &Path) -> (Channel, std::os::fd::OwnedFd) {
        let sock = dir.join("chan.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.unwrap().0 });
        let channel = Channel::connect(&sock, Duration::from_secs(5))
            .await
            .unwrap();
        let server = accept.await.unwrap().into_std().unwrap();
        server.set_nonblocking(false).unwrap();
        (channel, std::os::fd::OwnedFd::from(server))
    }

    /// The guest's side of `fd`: bash reading requests from it, as labtest-shell runs it.
    fn guest_bash(fd: std::os::fd::OwnedFd, dir: &Path) -> std::process::Child {
        let stdin = std::process::Stdio::from(fd.try_clone().unwrap());
        let stdout = std::process::Stdio::from(fd);
        std::process::Command::new("bash")
            .args(["--noprofile", "--norc"])
            .env("LC_ALL", "C")
            .env("LABTEST_RUN", dir)
            .stdin(stdin)
            .stdout(stdout)
            .spawn()
            .unwrap()
    }

    /// The framing runs against a real bash on a socket pair: the same bytes a guest shell sees.
    #[tokio::test]
    async fn framing_round_trips_through_a_real_bash() {
        let dir = tempfile::tempdir().unwrap();
        let (mut channel, server) = channel_pair(dir.path()).await;
        let mut bash = guest_bash(server, dir.path());
        let out = channel
            .exec(
                "printf 'a\\nb'; echo oops >&2; exit 7",
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(out.status, 7);
        assert_eq!(out.stdout, b"a\nb");
        assert_eq!(out.stderr, b"oops\n");
        let out = channel
            .exec("echo \"it's\" $'\\x01' 'quoted'", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "it's \u{1} quoted\n");
        let err = channel
            .exec("sleep 1; echo late", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, ChannelError::Timeout { .. }), "{err}");
        let out = channel
            .exec("echo next", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            out.stdout_str(),
            "next\n",
            "the late reply must be discarded"
        );
        bash.kill().ok();
        bash.wait().ok();
    }

    /// A caller that gives up (a deadline around the call, a select! on a signal) drops the
    /// exec while its reply is on the way: the next exec must get its own output.
    #[tokio::test]
    async fn an_exec_dropped_mid_reply_leaves_the_next_its_own_output() {
        let dir = tempfile::tempdir().unwrap();
        let (mut channel, server) = channel_pair(dir.path()).await;
        let mut bash = guest_bash(server, dir.path());
        let dropped = tokio::time::timeout(
            Duration::from_millis(500),
            channel.exec("echo first; sleep 2; echo done", Duration::from_secs(10)),
        )
        .await;
        assert!(
            dropped.is_err(),
            "expected the exec to be cut off, it returned {dropped:?}"
        );
        assert!(
            channel.is_busy(),
            "the dropped command's reply is still owed"
        );
        let out = channel
            .exec("echo next", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "next\n");
        assert!(!channel.is_busy());
        bash.kill().ok();
        bash.wait().ok();
    }

    /// Runs a rescue the way the guest's `labtest.ctl` shell does: another bash, same run dir.
    fn run_rescue(marker: &str, dir: &Path) {
        let status = std::process::Command::new("bash")
            .args(["--noprofile", "--norc", "-c", &rescue_command(marker)])
            .env("LABTEST_RUN", dir)
            .status()
            .unwrap();
        assert!(status.success(), "the rescue itself failed: {status}");
    }

    /// A rescue kills the request it names; one that arrives after that request is over (a
    /// starved guest runs it late) must not kill the command that runs by then.
    #[tokio::test]
    async fn a_rescue_kills_its_own_request_and_nothing_that_runs_later() {
        let dir = tempfile::tempdir().unwrap();
        let (mut channel, server) = channel_pair(dir.path()).await;
        let mut bash = guest_bash(server, dir.path());
        let err = channel
            .exec("sleep 30; echo never", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, ChannelError::Timeout { .. }), "{err}");
        let overrun = channel.unanswered_marker().unwrap().to_string();
        run_rescue(&overrun, dir.path());
        let out = channel
            .exec("echo next", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            out.stdout_str(),
            "next\n",
            "the killed request's reply is discarded"
        );

        let late = tokio::spawn(async move {
            let out = channel
                .exec("sleep 1; echo survived", Duration::from_secs(20))
                .await;
            (channel, out)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        run_rescue(&overrun, dir.path());
        let (_channel, out) = late.await.unwrap();
        let out = out.unwrap();
        assert_eq!(
            (out.status, out.stdout_str().as_str()),
            (0, "survived\n"),
            "a late rescue of a finished request killed the next command"
        );
        bash.kill().ok();
        bash.wait().ok();
    }

    /// A request is one line: dropped half-sent, bash sits in the middle of it, so the next
    /// exec must finish sending it before its own.
    #[tokio::test]
    async fn an_exec_dropped_while_sending_leaves_the_next_its_own_output() {
        let dir = tempfile::tempdir().unwrap();
        let (mut channel, server) = channel_pair(dir.path()).await;
        // Nobody reads yet: a request bigger than the socket buffers stops half-sent.
        let big = format!(": {}; echo big", "x".repeat(4 << 20));
        let dropped = tokio::time::timeout(
            Duration::from_millis(300),
            channel.exec(&big, Duration::from_secs(10)),
        )
        .await;
        assert!(
            dropped.is_err(),
            "expected the send to block, it returned {dropped:?}"
        );
        let mut bash = guest_bash(server, dir.path());
        let out = channel
            .exec("echo next", Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "next\n");
        bash.kill().ok();
        bash.wait().ok();
    }
}
