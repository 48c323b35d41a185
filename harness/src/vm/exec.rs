//! Commands in the guest over its channel, and files copied in and out.
use std::time::{Duration, Instant};

use super::channel::{self, Channel};
use super::{
    spawn, unique_suffix, ChannelError, ExecOutput, Machine, VmError, COPY_CHUNK, QMP_TIMEOUT,
};
use crate::wait::tail_chars;

impl Machine {
    /// Runs a command in the guest with a deadline; the exit status is in the result.
    ///
    /// When the command overruns, the harness kills it through the `labtest.ctl` port so the
    /// channel is usable again, and returns the timeout error.
    ///
    /// # Cancel safety
    /// This method is cancel safe. A command whose caller stopped waiting (a deadline around
    /// the call, a select! on a signal) is killed like an overrunning one when the next command
    /// comes, and its reply is discarded: the next command gets its own output.
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput, VmError> {
        // A frozen guest would answer nothing until the deadline: say so at once.
        let paused = self.is_frozen().await;
        self.refuse_frozen(paused, command)?;
        let guard = self.links.shell.lock().await;
        self.exec_on(guard, command, timeout).await
    }

    /// [`Machine::exec`] for an observer that must never hold anyone up: `Ok(None)` at once when
    /// another command (or a QMP call) holds the guest channel, instead of waiting for it.
    ///
    /// # Errors
    /// As [`Machine::exec`]: at once for a frozen or powered-off machine.
    pub async fn exec_if_idle(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<Option<ExecOutput>, VmError> {
        let paused = {
            let Ok(mut guard) = self.links.qmp.try_lock() else {
                return Ok(None);
            };
            match guard.as_mut() {
                Some(qmp) => qmp.status(QMP_TIMEOUT).await.ok().as_deref() == Some("paused"),
                None => false,
            }
        };
        self.refuse_frozen(paused, command)?;
        let Ok(guard) = self.links.shell.try_lock() else {
            return Ok(None);
        };
        self.exec_on(guard, command, timeout).await.map(Some)
    }

    /// Gives the running QEMU its configured nice value ([`super::MachineBuilder::nice`]).
    pub(super) fn apply_nice(&self) -> Result<(), VmError> {
        if self.config.nice == 0 {
            return Ok(());
        }
        let pid = self
            .child
            .lock()
            .map_err(|_| self.state_error("child lock poisoned"))?
            .as_ref()
            .map(|c| c.id());
        let Some(pid) = pid else {
            return Err(self.state_error("has no QEMU process to renice"));
        };
        spawn::renice_threads(pid, self.config.nice).map_err(|e| self.io("renicing QEMU", e))
    }

    fn refuse_frozen(&self, paused: bool, command: &str) -> Result<(), VmError> {
        if paused {
            return Err(self.state_error(&format!(
                "is frozen (its CPUs are paused), so it cannot run `{}`: thaw it with `labtest thaw {}` (Machine::thaw)",
                tail_chars(command, 200),
                self.config.name
            )));
        }
        Ok(())
    }

    /// Runs `command` on the shell channel held by `guard`.
    async fn exec_on(
        &self,
        mut guard: tokio::sync::MutexGuard<'_, Option<Channel>>,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, VmError> {
        let shell = guard.as_mut().ok_or_else(|| {
            self.state_error(&format!(
                "is off (crashed or shut down), so it cannot run `{}`: start it with `labtest start {}` (Machine::start)",
                tail_chars(command, 200),
                self.config.name
            ))
        })?;
        if let Some(marker) = shell.unanswered_marker() {
            self.kill_shell_command(marker).await;
        }
        match shell.exec(command, timeout).await {
            Ok(out) => Ok(out),
            Err(err @ ChannelError::Timeout { .. }) => {
                if let Some(marker) = shell.unanswered_marker() {
                    self.kill_shell_command(marker).await;
                }
                Err(self.channel_error(err))
            }
            Err(e) => Err(self.channel_error(e)),
        }
    }

    /// Kills the shell channel's request `marker` with everything it started, through the
    /// `labtest.ctl` port, so the shell reads the next request. Best effort: if it fails, the
    /// next command waits for the old one's reply (within its own deadline) and says it is busy.
    /// A rescue that reaches the guest late kills nothing else: it names its request.
    async fn kill_shell_command(&self, marker: &str) {
        let rescue = channel::rescue_command(marker);
        if let Some(ctl) = self.links.ctl.lock().await.as_mut() {
            let _ = ctl.exec(&rescue, Duration::from_secs(5)).await;
        }
    }

    /// Runs a command that must exit 0 (deadline 60 s) and returns its stdout.
    pub async fn succeed(&self, command: &str) -> Result<String, VmError> {
        self.succeed_within(command, Duration::from_secs(60)).await
    }

    /// Like [`Machine::succeed`] with an explicit deadline.
    pub async fn succeed_within(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<String, VmError> {
        let out = self.exec(command, timeout).await?;
        if out.status != 0 {
            return Err(VmError::CommandFailed {
                machine: self.config.name.clone(),
                command: command.to_string(),
                status: out.status,
                stdout: tail_chars(&out.stdout_str(), 2000),
                stderr: tail_chars(&out.stderr_str(), 2000),
            });
        }
        Ok(out.stdout_str())
    }

    /// Runs a command that must exit non-zero (deadline 60 s), as the NixOS test driver's
    /// `machine.fail`, and returns its stderr: for proving something is refused.
    ///
    /// # Errors
    /// [`VmError::CommandSucceeded`] with its stdout when it exits 0.
    pub async fn fail(&self, command: &str) -> Result<String, VmError> {
        let out = self.exec(command, Duration::from_secs(60)).await?;
        if out.status == 0 {
            return Err(VmError::CommandSucceeded {
                machine: self.config.name.clone(),
                command: command.to_string(),
                stdout: tail_chars(&out.stdout_str(), 2000),
            });
        }
        Ok(out.stderr_str())
    }

    /// Writes `data` to `guest_path` over the guest channel, replacing it atomically. No shared
    /// directory: a lab that can be snapshotted mounts no 9p share, and NixOS lab VMs have none.
    /// The data travels base64-encoded in chunks of [`COPY_CHUNK`] bytes, one command each.
    ///
    /// # Errors
    /// [`VmError::CommandFailed`] naming the step; a timeout when `timeout` passes.
    pub async fn copy_in(
        &self,
        data: &[u8],
        guest_path: &str,
        timeout: Duration,
    ) -> Result<(), VmError> {
        use base64::Engine;
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let target = channel::ansi_c_quote(guest_path);
        let part = channel::ansi_c_quote(&format!("{guest_path}.labtest-in-{}", unique_suffix()));
        self.succeed_within(
            &format!("mkdir -p \"$(dirname {target})\" && : >{part}.b64"),
            left(),
        )
        .await?;
        for chunk in data.chunks(COPY_CHUNK) {
            let text = base64::engine::general_purpose::STANDARD.encode(chunk);
            self.succeed_within(&format!("printf %s {text} >>{part}.b64"), left())
                .await?;
        }
        self.succeed_within(
            &format!("base64 -d {part}.b64 >{part} && rm -f {part}.b64 && mv -f {part} {target}"),
            left(),
        )
        .await
        .map(|_| ())
    }

    /// Reads `guest_path` over the guest channel (base64, so any bytes survive).
    ///
    /// # Errors
    /// [`VmError::CommandFailed`] when the file cannot be read; [`VmError::State`] when what came
    /// back is not base64.
    pub async fn copy_out(&self, guest_path: &str, timeout: Duration) -> Result<Vec<u8>, VmError> {
        use base64::Engine;
        let text = self
            .succeed_within(
                &format!("base64 -w0 {}", channel::ansi_c_quote(guest_path)),
                timeout,
            )
            .await?;
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| self.state_error(&format!("copying {guest_path} out: bad base64: {e}")))
    }
}
