//! [`Lab::inject`]: where a fault from the one vocabulary ([`crate::fault`]) meets the machines
//! and the hub.
use std::time::{Duration, Instant};

use super::{Lab, LabError};
use crate::fault::Fault;
use crate::vm::VmError;

impl Lab {
    /// Puts `fault` on the lab (or ends one): where a machine gets crashed, frozen, cut off or
    /// has a unit stopped, for the CLI, scenario files and the built-in scenarios alike. Returns
    /// what was done, in one line.
    ///
    /// A fault that makes no sense is refused before anything happens: an unknown machine, a
    /// pair that is one machine ([`Fault::check`]), and a fault the machine's state rules out -
    /// freezing or crashing a machine that is off, thawing one that is not frozen, starting one
    /// that runs, healing a pair that is not cut, rejoining a machine that is not isolated.
    ///
    /// # Errors
    /// [`LabError::FaultRefused`] saying why, or the VM or hub error of the injection itself.
    pub async fn inject(&self, fault: &Fault) -> Result<String, LabError> {
        let refuse = |reason: String| LabError::FaultRefused {
            fault: fault.to_string(),
            reason,
        };
        fault.check(&self.spec.machine_names()).map_err(&refuse)?;
        let vm = |e: VmError| LabError::Vm(Box::new(e));
        let machine = self.machine(fault.machines()[0])?;
        let running = machine.is_running();
        let frozen = running && machine.is_frozen().await;
        let name = machine.name();
        let needs_running = !matches!(
            fault,
            Fault::Start { .. }
                | Fault::Partition { .. }
                | Fault::Heal { .. }
                | Fault::Isolate { .. }
                | Fault::Rejoin { .. }
        );
        if needs_running && !running {
            return Err(refuse(format!(
                "{name} is off (crashed or shut down): power it on first (`labtest start {name}`)"
            )));
        }
        let needs_thawed = matches!(
            fault,
            Fault::Freeze { .. }
                | Fault::Shutdown { .. }
                | Fault::Reboot { .. }
                | Fault::StopUnit { .. }
                | Fault::StartUnit { .. }
        );
        if needs_thawed && frozen {
            return Err(refuse(format!(
                "{name} is frozen: thaw it first (`labtest thaw {name}`)"
            )));
        }
        let cut = |a: &str, b: &str| {
            self.partitions()
                .iter()
                .any(|(x, y)| (x == a && y == b) || (x == b && y == a))
        };
        Ok(match fault {
            Fault::Crash { .. } => {
                machine.crash().await.map_err(vm)?;
                format!("{name}: crashed (power loss)")
            }
            Fault::Freeze { .. } => {
                machine.freeze().await.map_err(vm)?;
                format!("{name}: frozen")
            }
            Fault::Thaw { .. } => {
                if !frozen {
                    return Err(refuse(format!("{name} is not frozen: nothing to thaw")));
                }
                machine.thaw().await.map_err(vm)?;
                format!("{name}: thawed")
            }
            Fault::Shutdown { timeout, .. } => {
                machine.shutdown(*timeout).await.map_err(vm)?;
                format!("{name}: shut down")
            }
            Fault::Start { timeout, .. } => {
                if running {
                    return Err(refuse(format!("{name} is already running")));
                }
                let boot = machine
                    .start_by(Instant::now() + *timeout)
                    .await
                    .map_err(vm)?;
                format!(
                    "{name}: started, its guest answered after {:.1}s (boot id {})",
                    boot.took.as_secs_f64(),
                    boot.boot_id
                )
            }
            Fault::Reboot { timeout, .. } => {
                let boot = machine.reboot(*timeout).await.map_err(vm)?;
                format!(
                    "{name}: rebooted in {:.1}s (boot id {})",
                    boot.took.as_secs_f64(),
                    boot.boot_id
                )
            }
            Fault::LinkDown { .. } => {
                machine.set_link(false).await.map_err(vm)?;
                format!("{name}: lab link down")
            }
            Fault::LinkUp { .. } => {
                machine.set_link(true).await.map_err(vm)?;
                format!("{name}: lab link up")
            }
            Fault::Partition { a, b } => {
                if cut(a, b) {
                    return Err(refuse(format!("{a} and {b} are already cut off")));
                }
                self.partition(a, b)?;
                format!("{a} and {b} are cut off from each other")
            }
            Fault::Heal { a, b } => {
                if !cut(a, b) {
                    return Err(refuse(format!(
                        "{a} and {b} are not partitioned: nothing to heal"
                    )));
                }
                self.heal(a, b)?;
                format!("{a} and {b} can talk again")
            }
            Fault::Isolate { .. } => {
                self.isolate(name)?;
                format!("{name}: isolated from every other machine")
            }
            Fault::Rejoin { .. } => {
                if !self
                    .partitions()
                    .iter()
                    .any(|(a, b)| a == name || b == name)
                {
                    return Err(refuse(format!(
                        "{name} is not cut off from any machine: nothing to rejoin"
                    )));
                }
                self.rejoin(name)?;
                format!("{name}: back on the lab network")
            }
            Fault::StopUnit { unit, .. } | Fault::StartUnit { unit, .. } => {
                let verb = if matches!(fault, Fault::StopUnit { .. }) {
                    "stop"
                } else {
                    "start"
                };
                let command = format!(
                    "systemctl {verb} {}",
                    crate::vm::channel::ansi_c_quote(unit)
                );
                let out = machine
                    .exec(&command, Duration::from_secs(60))
                    .await
                    .map_err(vm)?;
                if out.status != 0 {
                    return Err(refuse(format!(
                        "expected `{command}` on {name} to exit 0, saw {}: {}",
                        out.status,
                        out.stderr_str().trim()
                    )));
                }
                format!("{name}: {verb}ped {unit}")
            }
        })
    }
}
