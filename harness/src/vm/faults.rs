//! Faults on one machine, through QMP: power loss, freeze, link down, shutdown and reboot.
use std::time::{Duration, Instant};

use serde_json::json;

use super::{BootInfo, Machine, VmError, LAB_NETDEV, QMP_TIMEOUT};
use crate::events::EventKind;
use crate::fault::Fault;
use crate::wait::{poll_until, Poll, Wait};

impl Machine {
    pub(super) async fn qmp(
        &self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VmError> {
        let mut guard = self.links.qmp.lock().await;
        let qmp = guard
            .as_mut()
            .ok_or_else(|| self.state_error("is not running"))?;
        qmp.execute(command, arguments, QMP_TIMEOUT)
            .await
            .map_err(|source| VmError::Qmp {
                machine: self.config.name.clone(),
                source,
            })
    }

    fn fault(&self, fault: impl FnOnce(String) -> Fault) {
        self.events.emit(EventKind::FaultInjected {
            fault: fault(self.config.name.clone()),
        });
    }

    /// Power loss: QEMU quits at once, nothing in the guest gets to run. [`Machine::start`]
    /// boots it again from the same disk.
    pub async fn crash(&self) -> Result<(), VmError> {
        self.fault(|machine| Fault::Crash { machine });
        // QEMU may exit before answering `quit`: a closed connection is the expected outcome.
        let _ = self.qmp("quit", None).await;
        self.reap(Duration::from_secs(10)).await
    }

    /// Pauses the guest's CPUs (QMP `stop`): it answers nothing until [`Machine::thaw`].
    pub async fn freeze(&self) -> Result<(), VmError> {
        self.fault(|machine| Fault::Freeze { machine });
        self.qmp("stop", None).await.map(|_| ())
    }

    /// Resumes a frozen guest's CPUs (QMP `cont`), after [`Machine::freeze`].
    pub async fn thaw(&self) -> Result<(), VmError> {
        self.fault(|machine| Fault::Thaw { machine });
        self.qmp("cont", None).await.map(|_| ())
    }

    /// Sets the lab NIC's carrier (QMP `set_link lab`): down cuts the machine from every peer.
    pub async fn set_link(&self, up: bool) -> Result<(), VmError> {
        self.fault(|machine| {
            if up {
                Fault::LinkUp { machine }
            } else {
                Fault::LinkDown { machine }
            }
        });
        self.qmp("set_link", Some(json!({ "name": LAB_NETDEV, "up": up })))
            .await?;
        self.link_down
            .store(!up, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Whether the lab NIC's carrier is down ([`Machine::set_link`]).
    pub fn link_is_down(&self) -> bool {
        self.link_down.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where each vCPU is (`info cpus`, `info registers -a` through QMP's human monitor): for a
    /// guest that runs but does not answer, whether it spins in the kernel or in a process.
    ///
    /// # Errors
    /// [`VmError::Qmp`] when QEMU does not answer, [`VmError::State`] when it is off.
    pub async fn cpu_state(&self) -> Result<String, VmError> {
        let mut text = String::new();
        for command in ["info cpus", "info registers -a"] {
            let out = self
                .qmp(
                    "human-monitor-command",
                    Some(json!({ "command-line": command })),
                )
                .await?;
            text.push_str(&format!(
                "(qemu) {command}\n{}\n",
                out.as_str().unwrap_or("")
            ));
        }
        Ok(text)
    }

    /// Whether the machine's CPUs are paused: frozen, or saved while frozen.
    pub async fn is_frozen(&self) -> bool {
        self.qmp_status().await.ok().as_deref() == Some("paused")
    }

    /// The state QMP reports: "running", "paused", ...
    pub async fn qmp_status(&self) -> Result<String, VmError> {
        let mut guard = self.links.qmp.lock().await;
        let qmp = guard
            .as_mut()
            .ok_or_else(|| self.state_error("is not running"))?;
        qmp.status(QMP_TIMEOUT)
            .await
            .map_err(|source| VmError::Qmp {
                machine: self.config.name.clone(),
                source,
            })
    }

    /// Graceful power-off through systemd (as the NixOS test driver's `shutdown()` does), then
    /// waits for QEMU to exit. Not the ACPI button: a guest without logind ignores it.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), VmError> {
        self.fault(|machine| Fault::Shutdown { machine, timeout });
        {
            let mut guard = self.links.ctl.lock().await;
            let ctl = guard
                .as_mut()
                .ok_or_else(|| self.state_error("is not running"))?;
            // The reply may never come: the shell dies with the guest.
            let _ = ctl
                .exec(
                    "systemctl poweroff >/dev/null 2>&1 &",
                    Duration::from_secs(5),
                )
                .await;
        }
        self.reap(timeout).await
    }

    /// Reboots the guest through systemd and waits for the channel to answer from the new boot
    /// (a changed boot id), reconnecting by itself.
    pub async fn reboot(&self, timeout: Duration) -> Result<BootInfo, VmError> {
        self.fault(|machine| Fault::Reboot { machine, timeout });
        let started = Instant::now();
        let old = self.boot_id();
        {
            let mut guard = self.links.ctl.lock().await;
            let ctl = guard
                .as_mut()
                .ok_or_else(|| self.state_error("is not running"))?;
            // The reply may never come: the shell dies with the old boot.
            let _ = ctl
                .exec("systemctl reboot >/dev/null 2>&1 &", Duration::from_secs(5))
                .await;
        }
        let deadline = started + timeout;
        // Wait for QEMU's RESET, then reconnect: a fresh socket connection drops whatever the
        // old boot left half-written.
        let reset = Wait::new(
            format!("{} to reset", self.config.name),
            timeout,
            Duration::from_millis(100),
        );
        poll_until(&reset, || async {
            if let Some(exit) = self.exit_status() {
                return Poll::Failed(format!("QEMU exited: {exit}"));
            }
            let mut guard = self.links.qmp.lock().await;
            match guard.as_mut() {
                Some(qmp) => {
                    let _ = qmp.status(QMP_TIMEOUT).await;
                    if qmp.events.iter().any(|e| e["event"] == "RESET") {
                        qmp.events.clear();
                        Poll::Ready(())
                    } else {
                        Poll::Pending("no RESET event yet".into())
                    }
                }
                None => Poll::Failed("not connected".into()),
            }
        })
        .await
        .map_err(|source| self.wait_error(source))?;
        self.links.clear().await;
        let conn = self.connect(deadline, "while rebooting").await?;
        self.links.install(conn).await;
        let boot_id = self.handshake(started, deadline).await?;
        if Some(&boot_id) == old.as_ref() {
            return Err(self.state_error("answered after reboot with the same boot id"));
        }
        Ok(BootInfo {
            boot_id,
            took: started.elapsed(),
        })
    }

    /// Waits for QEMU to exit; then the machine is stopped and can be started again.
    async fn reap(&self, timeout: Duration) -> Result<(), VmError> {
        let wait = Wait::new(
            format!("QEMU of {} to exit", self.config.name),
            timeout,
            Duration::from_millis(20),
        );
        poll_until(&wait, || async {
            match self.exit_status() {
                Some(status) => Poll::Ready(status),
                None => Poll::Pending("QEMU still running".into()),
            }
        })
        .await
        .map_err(|source| self.wait_error(source))?;
        self.links.clear().await;
        self.events.emit(EventKind::MachineExited {
            machine: self.config.name.clone(),
            status: self.exit_status().unwrap_or_default(),
        });
        Ok(())
    }
}
