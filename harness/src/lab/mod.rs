//! A lab: a spec (`lab.toml` beside the lab's flake) plus its machines and their private network,
//! booted together and torn down together. The repo's NixOS lab and the fixture lab are both labs;
//! nothing above this layer knows which one it drives.

mod boot;
mod build;
mod inject;
mod spec;
mod ssh;
mod state_dir;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::{EventKind, Events};
use crate::fault::Fault;
use crate::net::{Hub, HubError};
use crate::sampler::Sampler;
use crate::snapshot::{
    BaseSnapshot, FailureNote, SavedFaults, Snapshot, SnapshotError, SnapshotKey, SnapshotMeta,
    SnapshotName, SnapshotStore,
};
use crate::vm::{Machine, VmError};

pub use boot::{LabBuilder, NODE_NICE};
pub use build::{build, build_attr, lab_nix};
pub use spec::{GenerationSpec, KubernetesSpec, LabSpec, MachineSpec, NetworkSpec, SshSpec};
pub use ssh::{journal_command, SshAccess, SshError};
pub use state_dir::remove_orphaned_state_dirs;

/// Why a lab could not be read, built, booted, faulted or torn down. Messages leave the cause
/// to `source()`, so [`crate::error::Chain`] shows each once.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab directory or its `lab.toml` is not there.
    #[error("no lab spec at {path} (a lab is a flake with a lab.toml beside it)")]
    NoSpec {
        /// The path that was looked for.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `lab.toml` does not parse or breaks a rule; the message names the field.
    #[error("lab spec {path} is invalid: {message}")]
    BadSpec {
        /// The spec file.
        path: PathBuf,
        /// What is wrong, what was expected and what was seen.
        message: String,
    },
    /// The build named no `bin/run-<machine>-vm` for a machine of the spec.
    #[error("lab {lab}: no run script for machine {machine}: expected {path}")]
    MissingRunScript {
        /// The lab's name.
        lab: String,
        /// The machine without a script.
        machine: String,
        /// Where the script was expected.
        path: PathBuf,
    },
    /// A machine name the lab does not have (a typo in a command or a scenario).
    #[error("lab {lab} has no machine named {machine:?} (it has: {known})")]
    UnknownMachine {
        /// The lab's name.
        lab: String,
        /// The name asked for.
        machine: String,
        /// The machines it has, for the message.
        known: String,
    },
    /// A machine failed (boxed: VM errors are large).
    #[error(transparent)]
    Vm(Box<VmError>),
    /// The lab network's hub failed.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// Saving or loading a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// No SSH session can be had (no sshd, no key).
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// The lab's state dir (disks, sockets, logs) could not be made.
    #[error("lab state dir: {0}")]
    StateDir(std::io::Error),
    /// A console log could not be kept in the evidence dir at teardown.
    #[error("lab {lab}: could not keep {machine}'s console log {from} as {to}")]
    ConsoleLog {
        /// The lab's name.
        lab: String,
        /// The machine whose log it is.
        machine: String,
        /// The log in the state dir.
        from: PathBuf,
        /// Where it was to be kept.
        to: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The state dir could not be removed at teardown.
    #[error("lab {lab}: could not remove its state dir {path}")]
    RemoveStateDir {
        /// The lab's name.
        lab: String,
        /// The state dir.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A fault that makes no sense on this lab, or not in the state it is in now.
    #[error("fault `{fault}` refused: {reason}")]
    FaultRefused {
        /// The fault, as the vocabulary writes it.
        fault: String,
        /// Why it was refused.
        reason: String,
    },
    /// The lab is not in a state a snapshot can hold.
    #[error("lab {lab} cannot be saved: {reason}")]
    CannotSave {
        /// The lab's name.
        lab: String,
        /// Why not, and what to do.
        reason: String,
    },
    /// The prepare step could not be started (no bash).
    #[error("lab {lab}: could not start its prepare step `{command}` with bash")]
    PrepareSpawn {
        /// The lab's name.
        lab: String,
        /// The step's command.
        command: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `nix build` succeeded but printed no output path.
    #[error("lab {lab}: `nix build {installable}` succeeded but named no output path; expected one (log in {out_dir})")]
    NoBuildOutput {
        /// The lab's name.
        lab: String,
        /// What was built (`<flake>#<attr>`).
        installable: String,
        /// Where the build's log is.
        out_dir: PathBuf,
    },
    /// The prepare step ran and failed.
    #[error("lab {lab}: prepare step `{command}` failed ({status}); log {log}:\n{tail}")]
    Prepare {
        /// The lab's name.
        lab: String,
        /// The step's command.
        command: String,
        /// How it exited.
        status: String,
        /// Its whole log.
        log: PathBuf,
        /// The log's last 20 lines, for the message.
        tail: String,
    },
    /// Nix's diagnosis is the source.
    #[error("lab {lab}: building its machines failed")]
    Build {
        /// The lab's name.
        lab: String,
        /// Nix's error.
        source: Box<crate::nix::NixError>,
    },
}

impl From<VmError> for LabError {
    fn from(error: VmError) -> Self {
        LabError::Vm(Box::new(error))
    }
}

/// A booted lab. Dropping it kills every machine, stops the hub and removes the state dir
/// (unless kept).
pub struct Lab {
    spec: LabSpec,
    machines: Vec<Arc<Machine>>,
    hub: Hub,
    state: Option<tempfile::TempDir>,
    keep: bool,
    evidence_dir: Option<PathBuf>,
    events: Events,
    up_in: Duration,
    /// Samples where the CPU goes from the moment the lab is up until it is dropped.
    sampler: Option<Sampler>,
    /// The snapshot its disks lie above: the one it was restored from, then the one it saved
    /// last. A snapshot of this lab lies above that one's disks.
    restored_from: std::sync::Mutex<Option<BaseSnapshot>>,
    /// Held while the lab's SSH key is made, so two first `labtest ssh` get one key.
    ssh_key: tokio::sync::Mutex<()>,
}

impl Lab {
    /// The CPU samples of the last minutes ([`crate::sampler`]), oldest first: for failure
    /// evidence and `labtest top`.
    pub fn recent_samples(&self) -> Vec<crate::events::Event> {
        self.sampler
            .as_ref()
            .map(Sampler::recent)
            .unwrap_or_default()
    }

    /// From the first QEMU start to every guest channel answering (booted or restored): how
    /// fast this machine runs these guests, which later deadlines may scale by.
    pub fn up_in(&self) -> Duration {
        self.up_in
    }

    /// The spec the lab was booted from.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// Every machine, in the spec's order.
    pub fn machines(&self) -> &[Arc<Machine>] {
        &self.machines
    }

    /// # Errors
    /// [`LabError::UnknownMachine`] listing the lab's machines.
    pub fn machine(&self, name: &str) -> Result<&Arc<Machine>, LabError> {
        self.machines
            .iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| LabError::UnknownMachine {
                lab: self.spec.name.clone(),
                machine: name.to_string(),
                known: self.spec.machine_names().join(", "),
            })
    }

    /// The state dir (disk overlays, hub sockets, console logs); `None` once torn down.
    pub fn state_dir(&self) -> Option<&Path> {
        self.state.as_ref().map(|s| s.path())
    }

    /// Cuts the lab network between two machines, both ways; other pairs keep talking.
    pub fn partition(&self, a: &str, b: &str) -> Result<(), LabError> {
        self.machine(a)?;
        self.machine(b)?;
        self.hub.partition(a, b)?;
        self.events.emit(EventKind::FaultInjected {
            fault: Fault::Partition {
                a: a.to_string(),
                b: b.to_string(),
            },
        });
        Ok(())
    }

    /// Lets two machines talk again after [`Lab::partition`].
    pub fn heal(&self, a: &str, b: &str) -> Result<(), LabError> {
        self.machine(a)?;
        self.machine(b)?;
        self.hub.heal(a, b)?;
        self.events.emit(EventKind::FaultInjected {
            fault: Fault::Heal {
                a: a.to_string(),
                b: b.to_string(),
            },
        });
        Ok(())
    }

    /// Cuts a machine from every other machine (the hub keeps its link up, as a real switch
    /// failure would look from the guest).
    pub fn isolate(&self, machine: &str) -> Result<(), LabError> {
        self.machine(machine)?;
        self.hub.isolate(machine)?;
        self.events.emit(EventKind::FaultInjected {
            fault: Fault::Isolate {
                machine: machine.to_string(),
            },
        });
        Ok(())
    }

    /// Lets a machine talk again after [`Lab::isolate`].
    pub fn rejoin(&self, machine: &str) -> Result<(), LabError> {
        self.machine(machine)?;
        self.hub.rejoin(machine)?;
        self.events.emit(EventKind::FaultInjected {
            fault: Fault::Rejoin {
                machine: machine.to_string(),
            },
        });
        Ok(())
    }

    /// The pairs cut now, each once.
    pub fn partitions(&self) -> Vec<(String, String)> {
        self.hub.partitions()
    }

    /// Saves the whole lab as snapshot `name` in `store`: every machine paused together, each
    /// one's state and disk saved, then all continued together, so the lab goes on as it was.
    /// A frozen machine stays frozen; the hub's partitions, frozen machines and links set down
    /// are kept in the snapshot and put back by a restore ([`SnapshotMeta::faults`]).
    ///
    /// # Errors
    /// [`LabError::Vm`] for the machine that could not be saved (a mounted 9p share, a failed
    /// migration), [`LabError::CannotSave`] when a machine is powered off, [`LabError::Snapshot`]
    /// for the store; nothing half-written stays usable.
    pub async fn save_snapshot(
        &self,
        store: &SnapshotStore,
        name: &SnapshotName,
        key: &SnapshotKey,
        events: &Events,
    ) -> Result<Snapshot, LabError> {
        self.save(store, name, key, None, events).await
    }

    /// [`Lab::save_snapshot`] for a run whose scenario failed: the snapshot says which one and
    /// what it saw, and counts against the failure snapshots' budget
    /// ([`SnapshotStore::prune_failures`]).
    ///
    /// # Errors
    /// As [`Lab::save_snapshot`].
    pub async fn save_failure(
        &self,
        store: &SnapshotStore,
        name: &SnapshotName,
        key: &SnapshotKey,
        note: FailureNote,
        events: &Events,
    ) -> Result<Snapshot, LabError> {
        self.save(store, name, key, Some(note), events).await
    }

    async fn save(
        &self,
        store: &SnapshotStore,
        name: &SnapshotName,
        key: &SnapshotKey,
        failure: Option<FailureNote>,
        events: &Events,
    ) -> Result<Snapshot, LabError> {
        let started = Instant::now();
        // A powered-off machine has no state to save, and its disk is not QEMU's to freeze.
        if let Some(off) = self.machines.iter().find(|m| !m.is_running()) {
            return Err(LabError::CannotSave {
                lab: self.spec.name.clone(),
                reason: format!(
                    "{} is powered off; start it first (`labtest start {}`)",
                    off.name(),
                    off.name()
                ),
            });
        }
        // A sampling command caught half-way would be saved with the guest, and its reply come
        // back into a restored lab's fresh channel.
        let _quiet = match &self.sampler {
            Some(sampler) => Some(sampler.hold_guests().await),
            None => None,
        };
        // Paused already means frozen (a fault): it is saved as it is and stays so.
        let statuses =
            futures::future::join_all(self.machines.iter().map(|m| m.qmp_status())).await;
        let mut frozen = Vec::new();
        for (machine, status) in self.machines.iter().zip(statuses) {
            if status? == "paused" {
                frozen.push(machine.name().to_string());
            }
        }
        let running = || {
            self.machines
                .iter()
                .filter(|m| !frozen.iter().any(|f| f == m.name()))
        };
        let part = store.begin(&self.spec.name, name)?;
        let paused = futures::future::join_all(running().map(|m| m.pause())).await;
        let saved = match paused.into_iter().collect::<Result<Vec<()>, VmError>>() {
            Ok(_) => {
                let saves = self.machines.iter().map(|m| {
                    let into = crate::vm::state::SavedState::in_dir(&part, m.name());
                    async move { m.save_state(&into, SAVE_TIMEOUT).await }
                });
                futures::future::join_all(saves)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<()>, VmError>>()
            }
            Err(e) => Err(e),
        };
        let unpaused = futures::future::join_all(running().map(|m| m.unpause())).await;
        if let Err(e) = saved {
            let _ = std::fs::remove_dir_all(&part);
            return Err(e.into());
        }
        unpaused.into_iter().collect::<Result<Vec<()>, VmError>>()?;
        let bytes = self
            .machines
            .iter()
            .map(|m| {
                let saved = crate::vm::state::SavedState::in_dir(&part, m.name());
                crate::vm::state::file_size(&saved.state) + crate::vm::state::file_size(&saved.disk)
            })
            .sum();
        let faults = SavedFaults {
            partitions: self.hub.partitions(),
            frozen,
            links_down: self
                .machines
                .iter()
                .filter(|m| m.link_is_down())
                .map(|m| m.name().to_string())
                .collect(),
        };
        let meta = SnapshotMeta {
            format: crate::snapshot::FORMAT.into(),
            lab: self.spec.name.clone(),
            name: name.clone(),
            key: key.hash.clone(),
            inputs: key.inputs.clone(),
            machines: self.spec.machine_names(),
            created: crate::snapshot::now_secs(),
            save_secs: started.elapsed().as_secs_f64(),
            bytes,
            faults,
            base: self
                .restored_from
                .lock()
                .map(|b| b.clone())
                .unwrap_or_default(),
            failure,
        };
        let snapshot = store.commit(&part, &meta)?;
        for machine in &self.machines {
            machine.kept_at(&snapshot.machine(machine.name()).disk);
        }
        if let Ok(mut base) = self.restored_from.lock() {
            *base = Some(meta.as_base());
        }
        events.emit(EventKind::SnapshotSaved {
            snapshot: name.to_string(),
            took: started.elapsed(),
            bytes,
        });
        Ok(snapshot)
    }
}

/// How long one machine's state may take to write (measured: 0.36 s for 137 MiB).
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);

impl Lab {
    /// Tears the lab down now, as dropping it does, but says what went wrong: every QEMU
    /// killed and reaped, each console log kept in the evidence dir, the state dir removed
    /// (unless kept).
    ///
    /// # Errors
    /// [`LabError::ConsoleLog`] for the first console log that could not be kept (the others
    /// still are), [`LabError::RemoveStateDir`].
    pub fn shut_down(mut self) -> Result<(), LabError> {
        self.tear_down()
    }

    /// What [`Lab::shut_down`] and drop do; a second call finds nothing left to do.
    fn tear_down(&mut self) -> Result<(), LabError> {
        // No sample of machines on their way down.
        self.sampler.take();
        for machine in &self.machines {
            machine.kill();
        }
        let mut logs = Ok(());
        if let Some(dir) = self.evidence_dir.take() {
            for machine in &self.machines {
                let target = dir.join("machines").join(machine.name());
                let to = target.join("console.log");
                let copied = std::fs::create_dir_all(&target)
                    .and_then(|()| std::fs::copy(machine.console_log(), &to));
                match copied {
                    Ok(_) => self.events.emit(EventKind::Artifact {
                        path: to,
                        what: format!("{} serial console", machine.name()),
                    }),
                    Err(source) if logs.is_ok() => {
                        logs = Err(LabError::ConsoleLog {
                            lab: self.spec.name.clone(),
                            machine: machine.name().to_string(),
                            from: machine.console_log(),
                            to,
                            source,
                        })
                    }
                    Err(_) => {}
                }
            }
        }
        let removed = match self.state.take() {
            Some(state) if self.keep => {
                let kept = state.keep();
                tracing::info!("lab state kept in {}", kept.display());
                Ok(())
            }
            Some(state) => {
                let path = state.path().to_path_buf();
                state.close().map_err(|source| LabError::RemoveStateDir {
                    lab: self.spec.name.clone(),
                    path,
                    source,
                })
            }
            None => Ok(()),
        };
        logs.and(removed)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Best effort: whoever wants the errors calls shut_down.
        let _ = self.tear_down();
    }
}
