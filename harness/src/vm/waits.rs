//! Waiting on a guest (a command, a port, a unit, console text) and the evidence a failed
//! wait leaves.
use std::time::Duration;

use super::{channel, Machine, VmError};
use crate::check;
use crate::error::Chain;
use crate::wait::{tail_chars, Poll, Wait};

impl Machine {
    /// Waits until `command` exits 0 in the guest; returns its stdout. Like every wait of a
    /// machine it is reported as a check of the machine's scope ([`crate::check`]).
    pub async fn wait_until_succeeds(&self, command: &str, wait: &Wait) -> Result<String, VmError> {
        let per_try = wait.timeout.min(Duration::from_secs(30));
        check::run(&self.events, self.name(), wait, || async move {
            if let Some(exit) = self.exit_status() {
                return Poll::Failed(format!("QEMU exited: {exit}"));
            }
            match self.exec(command, per_try).await {
                Ok(out) if out.status == 0 => Poll::Ready(out.stdout_str()),
                Ok(out) => Poll::Pending(format!(
                    "`{command}` exited {}: {}",
                    out.status,
                    tail_chars(&format!("{}{}", out.stdout_str(), out.stderr_str()), 300)
                )),
                Err(e) => Poll::Pending(Chain(&e).to_string()),
            }
        })
        .await
        .map_err(|source| self.wait_error(source))
    }

    /// Waits until something in the guest listens on TCP `port` (checked with bash's /dev/tcp,
    /// so no tool needs to exist in the guest).
    pub async fn wait_for_port(&self, port: u16, wait: &Wait) -> Result<(), VmError> {
        self.wait_until_succeeds(&format!("exec 3<>/dev/tcp/127.0.0.1/{port}"), wait)
            .await
            .map(|_| ())
    }

    /// Waits until a systemd unit is active; gives up at once if it enters `failed`, with its
    /// status and journal tail as the reason.
    pub async fn wait_for_unit(&self, unit: &str, wait: &Wait) -> Result<(), VmError> {
        let query = format!(
            "systemctl show -p ActiveState --value {}",
            channel::ansi_c_quote(unit)
        );
        check::run(&self.events, self.name(), wait, || {
            let query = query.clone();
            async move {
                if let Some(exit) = self.exit_status() {
                    return Poll::Failed(format!("QEMU exited: {exit}"));
                }
                match self.exec(&query, Duration::from_secs(30)).await {
                    Ok(out) => match out.stdout_str().trim() {
                        "active" => Poll::Ready(()),
                        "failed" => Poll::Failed(format!(
                            "{unit} failed:\n{}",
                            self.unit_evidence(unit).await
                        )),
                        other => Poll::Pending(format!("{unit} is {other}")),
                    },
                    Err(e) => Poll::Pending(Chain(&e).to_string()),
                }
            }
        })
        .await
        .map_err(|source| self.wait_error(source))
    }

    /// `systemctl status` and the journal tail of a unit, for error messages and artifacts.
    pub async fn unit_evidence(&self, unit: &str) -> String {
        let unit = channel::ansi_c_quote(unit);
        match self
            .exec(
                &format!("systemctl status --no-pager {unit} 2>&1 | head -20; journalctl --no-pager -n 30 -u {unit} 2>&1"),
                Duration::from_secs(30),
            )
            .await
        {
            Ok(out) => out.stdout_str(),
            Err(e) => format!("(could not read the unit's status: {})", Chain(&e)),
        }
    }

    /// `systemctl --failed` with the status and journal tail of each failed unit, the load and
    /// the busiest processes, then the journal's last warnings: what broke or choked in the
    /// guest when the cause is not in the unit a caller thought of.
    pub async fn health_evidence(&self) -> String {
        let script = "systemctl --failed --no-pager 2>&1; \
            for u in $(systemctl list-units --failed --plain --no-legend 2>/dev/null | awk '{print $1}'); do \
            printf '\\n=== %s\\n' \"$u\"; systemctl status --no-pager \"$u\" 2>&1 | head -20; \
            journalctl --no-pager -n 40 -u \"$u\" 2>&1; done; \
            printf '\\n=== load\\n'; top -bn1 2>&1 | head -20; \
            printf '\\n=== the last warnings\\n'; journalctl --no-pager -p warning -n 60 2>&1";
        match self.exec(script, Duration::from_secs(60)).await {
            Ok(out) => out.stdout_str(),
            Err(e) => format!("(could not read the machine's health: {})", Chain(&e)),
        }
    }

    /// The console log from this start's marker on (all of it if the marker is missing).
    pub(super) fn console_of_this_start(&self) -> String {
        let marker = format!(
            "=== labtest: start #{} ",
            self.starts.load(std::sync::atomic::Ordering::Relaxed)
        );
        let log = std::fs::read_to_string(self.console_log()).unwrap_or_default();
        match log.rfind(&marker) {
            Some(at) => log[at..].to_string(),
            None => log,
        }
    }

    /// Waits until `text` appears in the console log (this start's part of it).
    pub async fn wait_for_console_text(&self, text: &str, wait: &Wait) -> Result<(), VmError> {
        check::run(&self.events, self.name(), wait, || async {
            let this_start = self.console_of_this_start();
            if this_start.contains(text) {
                Poll::Ready(())
            } else if let Some(exit) = self.exit_status() {
                Poll::Failed(format!("QEMU exited: {exit}"))
            } else {
                Poll::Pending(format!("last console line: {}", last_line(&this_start)))
            }
        })
        .await
        .map_err(|source| self.wait_error(source))
    }

    /// The last `lines` lines of the console log.
    pub fn console_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.console_log()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| tail_chars(l, 200))
        .unwrap_or_else(|| "(nothing yet)".into())
}
