//! Starting a machine: QEMU spawned from its run script, QMP and the guest channels connected,
//! the guest's first answer awaited, and nothing left half-started when any of it fails.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::channel::Channel;
use super::qmp::Qmp;
use super::{spawn, BootInfo, ChannelError, Connections, Machine, VmError, QMP_TIMEOUT};
use crate::error::Chain;
use crate::events::EventKind;
use crate::wait::{poll_until, Poll, Wait};

impl Machine {
    /// [`Machine::start_by`] its boot timeout from now
    /// ([`MachineBuilder::boot_timeout`](super::MachineBuilder::boot_timeout)).
    ///
    /// # Cancel safety
    /// As [`Machine::start_by`].
    pub async fn start(&self) -> Result<BootInfo, VmError> {
        self.start_by(Instant::now() + self.config.boot_timeout)
            .await
    }

    /// Starts QEMU (again, after a crash or shutdown) and waits until the guest channel answers
    /// or `deadline` passes. A machine built with
    /// [`MachineBuilder::restore_from`](super::MachineBuilder::restore_from) comes back from its
    /// saved state the first time ([`Machine::start_paused_from_state`] +
    /// [`Machine::resume`]).
    ///
    /// # Errors
    /// Why QEMU did not start or its guest did not answer, with the console log; QEMU is then
    /// killed, so the machine is off and can be started again.
    ///
    /// # Cancel safety
    /// This method is cancel safe: dropped before it returns, it kills QEMU and leaves the
    /// machine off, as an error does.
    pub async fn start_by(&self, deadline: Instant) -> Result<BootInfo, VmError> {
        let started = Instant::now();
        if self.config.restore.is_some()
            && self.starts.load(std::sync::atomic::Ordering::Relaxed) == 0
        {
            self.start_paused_from_state(deadline).await?;
            let boot_id = self.resume(deadline).await?;
            self.apply_nice()?;
            return Ok(BootInfo {
                boot_id,
                took: started.elapsed(),
            });
        }
        self.spawn(&[])?;
        let half_started = HalfStarted::new(self);
        let conn = self.connect(deadline, "while booting").await?;
        self.links.install(conn).await;
        let boot_id = self.handshake(started, deadline).await?;
        self.apply_nice()?;
        half_started.up();
        let info = BootInfo {
            boot_id,
            took: started.elapsed(),
        };
        self.events.emit(EventKind::MachineUp {
            machine: self.config.name.clone(),
            boot_time: info.took,
        });
        Ok(info)
    }

    /// Runs the run script with the harness's environment and `extra` QEMU arguments.
    pub(super) fn spawn(&self, extra: &[String]) -> Result<(), VmError> {
        if self.is_running() {
            return Err(self.state_error("is already running"));
        }
        let n = self
            .starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.events.emit(EventKind::MachineStarting {
            machine: self.config.name.clone(),
        });
        for sock in ["qmp.sock", "shell.sock", "ctl.sock"] {
            let _ = std::fs::remove_file(self.socket(sock));
        }
        // A new QEMU's NIC starts with its carrier up.
        self.link_down
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let console = self.open_console(n)?;
        let mut command = Command::new(&self.config.run_script);
        let forwards: Vec<String> = self
            .config
            .forwards
            .iter()
            .map(|(host, guest)| format!("hostfwd=tcp:127.0.0.1:{host}-:{guest}"))
            .collect();
        command
            .current_dir(&self.config.state_dir)
            .env("NIX_DISK_IMAGE", self.disk())
            .env("TMPDIR", self.config.state_dir.join("tmp"))
            .env("USE_TMPDIR", "1")
            .env("SHARED_DIR", self.config.state_dir.join("shared"))
            .env("QEMU_OPTS", self.config.accel.qemu_opts())
            .env("QEMU_NET_OPTS", forwards.join(","))
            .env(
                "QEMU_KERNEL_PARAMS",
                self.config.kernel_params.clone().unwrap_or_default(),
            )
            .args(self.qemu_args())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(console.try_clone().map_err(|e| self.io("console log", e))?)
            .stderr(console);
        match &self.config.lab_socket {
            Some(socket) => command.env("LABTEST_LAB_SOCKET", socket),
            None => command.env_remove("LABTEST_LAB_SOCKET"),
        };
        let placement = spawn::Placement {
            cpus: self.config.host_cpus.map(|c| c.cpu_set()),
        };
        let child = spawn::spawn_placed(command, placement).map_err(|source| VmError::Spawn {
            machine: self.config.name.clone(),
            path: self.config.run_script.clone(),
            source,
        })?;
        *self
            .child
            .lock()
            .map_err(|_| self.state_error("child lock poisoned"))? = Some(child);
        Ok(())
    }

    fn open_console(&self, start_number: u32) -> Result<File, VmError> {
        let mut console = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.console_log())
            .map_err(|e| self.io("opening the console log", e))?;
        writeln!(
            console,
            "=== labtest: start #{start_number} of {} ({}) ===",
            self.config.name,
            self.config.run_script.display()
        )
        .map_err(|e| self.io("writing the console log", e))?;
        Ok(console)
    }

    /// Connects QMP and both channels, failing fast if QEMU exits meanwhile.
    pub(super) async fn connect(
        &self,
        deadline: Instant,
        during: &str,
    ) -> Result<Connections, VmError> {
        let qmp_path = self.socket("qmp.sock");
        let wait = Wait::new(
            format!("QEMU of {} to open its QMP socket", self.config.name),
            deadline.saturating_duration_since(Instant::now()),
            Duration::from_millis(20),
        );
        let qmp = poll_until(&wait, || async {
            if let Some(exit) = self.exit_status() {
                return Poll::Failed(exit);
            }
            match Qmp::connect(&qmp_path, QMP_TIMEOUT).await {
                Ok(qmp) => Poll::Ready(qmp),
                Err(e) => Poll::Pending(Chain(&e).to_string()),
            }
        })
        .await
        .map_err(|e| self.boot_failure(e, during))?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let shell = Channel::connect(&self.socket("shell.sock"), remaining)
            .await
            .map_err(|e| self.channel_error(e))?;
        let ctl = Channel::connect(&self.socket("ctl.sock"), remaining)
            .await
            .map_err(|e| self.channel_error(e))?;
        Ok(Connections { qmp, shell, ctl })
    }

    /// Waits for the shell to answer and records the boot id. The request waits in QEMU's socket
    /// buffer until the guest opens the port, so one request is enough: no polling, no boot race.
    /// `since` is when QEMU started (or continued), for the error.
    pub(super) async fn handshake(
        &self,
        since: Instant,
        deadline: Instant,
    ) -> Result<String, VmError> {
        let mut guard = self.links.shell.lock().await;
        let shell = guard
            .as_mut()
            .ok_or_else(|| self.state_error("is not connected"))?;
        let reply = loop {
            let slice =
                Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now()));
            match shell
                .exec("read -r b </proc/sys/kernel/random/boot_id; echo $b", slice)
                .await
            {
                Ok(out) => break out,
                Err(ChannelError::Timeout { .. }) | Err(ChannelError::Busy { .. })
                    if Instant::now() < deadline =>
                {
                    if let Some(exit) = self.exit_status() {
                        return Err(self.exited(exit, "before its guest channel answered"));
                    }
                }
                Err(ChannelError::Timeout { .. }) | Err(ChannelError::Busy { .. }) => {
                    return Err(VmError::Boot {
                        machine: self.config.name.clone(),
                        message: format!(
                            "the guest channel (virtio port labtest.shell) did not answer within {:.0}s of QEMU start; \
                             is labtest-shell installed in the guest? last console lines:\n{}",
                            deadline.saturating_duration_since(since).as_secs_f64(),
                            self.console_tail(15)
                        ),
                        console: self.console_log(),
                    })
                }
                Err(e) => return Err(self.channel_error(e)),
            }
        };
        let boot_id = reply.stdout_str().trim().to_string();
        if let Ok(mut b) = self.boot_id.lock() {
            *b = Some(boot_id.clone());
        }
        Ok(boot_id)
    }
}

/// A QEMU spawned whose guest has not answered yet. Dropped before [`HalfStarted::up`] (an
/// error, or the start's future dropped), it kills QEMU and forgets its sockets: a machine no
/// one talks to must not keep running, or exec says "is off" and start "already running".
pub(super) struct HalfStarted<'a> {
    machine: Option<&'a Machine>,
}

impl<'a> HalfStarted<'a> {
    pub(super) fn new(machine: &'a Machine) -> Self {
        Self {
            machine: Some(machine),
        }
    }

    /// The guest answered: the machine is up and stays so.
    pub(super) fn up(mut self) {
        self.machine = None;
    }
}

impl Drop for HalfStarted<'_> {
    fn drop(&mut self) {
        let Some(machine) = self.machine else { return };
        machine.kill();
        // Uncontended unless the start was dropped while holding one; a link left then is
        // replaced by the next start.
        if let Ok(mut qmp) = machine.links.qmp.try_lock() {
            *qmp = None;
        }
        if let Ok(mut shell) = machine.links.shell.try_lock() {
            *shell = None;
        }
        if let Ok(mut ctl) = machine.links.ctl.try_lock() {
            *ctl = None;
        }
        machine.events.emit(EventKind::MachineExited {
            machine: machine.config.name.clone(),
            status: machine
                .exit_status()
                .unwrap_or_else(|| "killed: its start did not finish".into()),
        });
    }
}
