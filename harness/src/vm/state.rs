//! A machine's state saved to files, and a machine started from them: what whole-lab snapshots
//! are made of.
//!
//! The mechanism is QEMU migration to a file (`migrate exec:cat > FILE`, restored with
//! `-incoming exec:cat FILE`) with the disk frozen at that moment under a new qcow2 overlay
//! (`blockdev-snapshot-sync`). Measured on QEMU 7.2 under TCG (1 GiB guest, 137 MiB of state):
//! save 0.36 s, a fresh QEMU running from the file 0.55 s and answering 0.66 s; internal qcow2
//! snapshots (`savevm`/`-loadvm`) restore slower (0.84 s) and live inside the one qcow2 the guest
//! writes to, so two labs could not run from the same snapshot at once. Here each restore gets
//! its own overlay above the frozen disk, so any number can run side by side.
//!
//! # Caveats
//! * A machine with a mounted 9p export cannot be saved (QEMU: "Migration is disabled when
//!   VirtFS export path ... is mounted"): labs that are to be snapshotted see their store on a
//!   block device.
//! * The restoring QEMU must get the same devices: the same run script and accelerator options.
//!   Backends may differ (sockets, host ports, the hub): each restored lab has its own.
//! * A machine saved twice in one life runs after the first save on an overlay that names the
//!   first frozen disk by its state-dir path: the second save keeps a copy of that overlay
//!   whose header names the first snapshot's disk instead ([`Machine::kept_at`]), so it
//!   restores once the lab is gone (found 2026-12-07 by tests/scenarios_e2e.rs).
//! * The guest's clocks do not see the gap: its wall clock resumes from the moment of the save
//!   and lags the host by the snapshot's age, CLOCK_MONOTONIC continues without a jump (measured).
//!   Machines saved and resumed together keep their mutual offsets, which is what Kubernetes'
//!   leases need; stepping the clocks forward instead would make every lease look expired at
//!   once.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::boot::HalfStarted;
use super::channel::sh_quote;
use super::{Machine, VmError};
use crate::error::Chain;
use crate::events::EventKind;
use crate::wait::{poll_until, Poll, Wait};

/// QEMU 7.2 throttles migration to 128 MiB/s by default: 3x slower saves for nothing, since the
/// "network" is a local file.
const MIGRATION_BANDWIDTH: u64 = 10 << 30;

/// One machine's saved state: the migration stream and the disk as it was at that moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// The migration stream (`-incoming exec:cat FILE`).
    pub state: PathBuf,
    /// The frozen disk: a qcow2 image, never written again; restores run on overlays above it.
    pub disk: PathBuf,
}

impl SavedState {
    /// The files named `<dir>/<machine>.state` and `<dir>/<machine>.qcow2`.
    pub fn in_dir(dir: &Path, machine: &str) -> Self {
        SavedState {
            state: dir.join(format!("{machine}.state")),
            disk: dir.join(format!("{machine}.qcow2")),
        }
    }
}

impl Machine {
    /// Pauses the guest's CPUs for a save (QMP `stop`); unlike [`Machine::freeze`], not a fault.
    pub async fn pause(&self) -> Result<(), VmError> {
        self.qmp("stop", None).await.map(|_| ())
    }

    /// Lets a paused or saved machine go on (QMP `cont`).
    pub async fn unpause(&self) -> Result<(), VmError> {
        self.qmp("cont", None).await.map(|_| ())
    }

    /// Saves a paused machine into `into` (a [`SavedState::in_dir`] pair of paths): its RAM and
    /// device state, and its disk as it is now, which the machine leaves behind for a new overlay.
    /// The machine stays paused and can go on ([`Machine::thaw`]) or be killed.
    ///
    /// # Errors
    /// [`VmError::State`] when the machine is not paused, QEMU refuses (a mounted 9p export),
    /// or the migration fails or does not finish within `timeout`; [`VmError::Io`] for the files.
    pub async fn save_state(&self, into: &SavedState, timeout: Duration) -> Result<(), VmError> {
        let started = Instant::now();
        let status = self.qmp_status().await?;
        if status != "paused" {
            return Err(self.state_error(&format!(
                "saving its state: expected a paused machine, it is {status}"
            )));
        }
        let n = self.starts.load(std::sync::atomic::Ordering::Relaxed);
        let frozen = self.disk();
        let next = self.config.state_dir.join(format!(
            "{}-after-save-{n}-{}.qcow2",
            self.config.name,
            super::unique_suffix()
        ));
        let node = self.disk_node(&frozen).await?;
        self.qmp(
            "blockdev-snapshot-sync",
            Some(json!({
                "node-name": node,
                "snapshot-node-name": format!("labtest-saved-{n}-{}", super::unique_suffix()),
                "snapshot-file": next.to_string_lossy(),
                "format": "qcow2",
            })),
        )
        .await?;
        if let Ok(mut disk) = self.disk.lock() {
            *disk = next;
        }
        self.qmp(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": MIGRATION_BANDWIDTH })),
        )
        .await?;
        let part = into.state.with_extension("state.part");
        let _ = std::fs::remove_file(&part);
        self.qmp(
            "migrate",
            Some(json!({ "uri": format!("exec:cat > {}", sh_quote(&part.to_string_lossy())) })),
        )
        .await?;
        let wait = Wait::new(
            format!(
                "QEMU of {} to write its state to {}",
                self.config.name,
                part.display()
            ),
            timeout,
            Duration::from_millis(20),
        );
        poll_until(&wait, || async {
            match self.qmp("query-migrate", None).await {
                Ok(info) => match info["status"].as_str().unwrap_or("none") {
                    "completed" => Poll::Ready(()),
                    "failed" | "cancelled" => Poll::Failed(format!(
                        "migration {}: {}",
                        info["status"],
                        info["error-desc"].as_str().unwrap_or("no reason given")
                    )),
                    other => Poll::Pending(format!(
                        "migration {other}, {} bytes written",
                        info["ram"]["transferred"].as_u64().unwrap_or(0)
                    )),
                },
                Err(e) => Poll::Failed(Chain(&e).to_string()),
            }
        })
        .await
        .map_err(|e| self.state_error(&format!("saving its state: {e}")))?;
        // The stream is complete once QEMU says so, but `cat` may still be flushing it.
        sync_file(&part).map_err(|e| self.io("syncing the saved state", e))?;
        std::fs::rename(&part, &into.state).map_err(|e| self.io("naming the saved state", e))?;
        // The first save of a booted or restored machine freezes an overlay whose backing file
        // outlives the lab (the guest image, a snapshot's disk): a hard link keeps it. A later
        // save freezes the overlay the machine went on with after the earlier one, and that
        // names the earlier frozen disk by its state-dir path: the kept copy must name the
        // snapshot that kept it instead, or it cannot be restored once the lab is down.
        let earlier = self.kept_disk.lock().ok().and_then(|k| k.clone());
        match earlier {
            Some(earlier) => copy_onto(&frozen, &into.disk, &earlier),
            None => link_or_copy(&frozen, &into.disk),
        }
        .map_err(|e| self.io("keeping the frozen disk", e))?;
        // Until its snapshot is committed the disk just frozen is kept nowhere else.
        if let Ok(mut kept) = self.kept_disk.lock() {
            *kept = None;
        }
        tracing::info!(
            "{} saved in {:.2}s: {} bytes of state",
            self.config.name,
            started.elapsed().as_secs_f64(),
            file_size(&into.state)
        );
        Ok(())
    }

    /// Starts QEMU from the saved state the machine was built with, and waits until the state
    /// is loaded: the machine is then paused, its clock stopped at the moment of the save, until
    /// [`Machine::resume`]. Its disk is a fresh overlay above the frozen one.
    ///
    /// # Errors
    /// [`VmError::BadSavedState`] with QEMU's own words when the files are missing or QEMU
    /// rejects the state (a corrupt or foreign file); [`VmError::Exited`] when QEMU exits for
    /// another reason (a host port taken meanwhile); a wait error when `deadline` passes. QEMU
    /// is then killed, so the machine is off.
    ///
    /// # Cancel safety
    /// This method is cancel safe: dropped before it returns, it kills QEMU, as an error does.
    pub async fn start_paused_from_state(&self, deadline: Instant) -> Result<(), VmError> {
        let saved = self
            .config
            .restore
            .as_ref()
            .ok_or_else(|| self.state_error("has no saved state to start from"))?;
        let bad = |reason: String| VmError::BadSavedState {
            machine: self.config.name.clone(),
            state: saved.state.clone(),
            reason,
            console: self.console_log(),
        };
        for file in [&saved.state, &saved.disk] {
            if !file.is_file() {
                return Err(bad(format!(
                    "expected {}, it does not exist",
                    file.display()
                )));
            }
        }
        let disk = self.disk();
        let _ = std::fs::remove_file(&disk);
        let qemu_img = which::which("qemu-img")
            .map_err(|e| self.state_error(&format!("qemu-img is needed for a restore: {e}")))?;
        let out = Command::new(qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&saved.disk)
            .arg(&disk)
            .output()
            .map_err(|e| self.io("running qemu-img create", e))?;
        if !out.status.success() {
            return Err(bad(format!(
                "qemu-img create of an overlay above {} failed: {}",
                saved.disk.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let incoming = format!("exec:cat {}", sh_quote(&saved.state.to_string_lossy()));
        self.spawn(&["-S".into(), "-incoming".into(), incoming])?;
        let half_started = HalfStarted::new(self);
        // QEMU's words when the stream is not one it can load (corrupt, or another QEMU's).
        let rejected = |error: VmError| {
            let console = self.console_of_this_start();
            match console
                .lines()
                .find(|l| l.contains("load of migration failed"))
            {
                Some(line) => bad(line.trim().to_string()),
                None => error,
            }
        };
        let conn = self
            .connect(deadline, "while loading its saved state")
            .await
            .map_err(rejected)?;
        self.links.install(conn).await;
        let wait = Wait::new(
            format!(
                "QEMU of {} to load {}",
                self.config.name,
                saved.state.display()
            ),
            deadline.saturating_duration_since(Instant::now()),
            Duration::from_millis(20),
        );
        poll_until(&wait, || async {
            if let Some(exit) = self.exit_status() {
                return Poll::Failed(format!("QEMU exited: {exit}"));
            }
            match self.qmp_status().await {
                Ok(status) if status == "paused" => Poll::Ready(()),
                Ok(status) => Poll::Pending(format!("QEMU is {status}")),
                Err(e) => Poll::Pending(Chain(&e).to_string()),
            }
        })
        .await
        .map_err(|e| match self.exit_status() {
            Some(status) => rejected(self.exited(status, "while loading its saved state")),
            None => self.wait_error(e),
        })?;
        half_started.up();
        Ok(())
    }

    /// Lets a machine loaded by [`Machine::start_paused_from_state`] run, and waits for its
    /// guest channel; returns the boot id (the saved boot's).
    ///
    /// # Errors
    /// As [`Machine::start`]: QEMU is killed then.
    ///
    /// # Cancel safety
    /// This method is cancel safe: dropped before it returns, it kills QEMU, as an error does.
    pub async fn resume(&self, deadline: Instant) -> Result<String, VmError> {
        let started = Instant::now();
        let half_started = HalfStarted::new(self);
        self.qmp("cont", None).await?;
        let boot_id = self.handshake(started, deadline).await?;
        half_started.up();
        self.events.emit(EventKind::MachineUp {
            machine: self.config.name.clone(),
            boot_time: started.elapsed(),
        });
        Ok(boot_id)
    }

    /// The block node QEMU writes `file` through (`query-block`): the run scripts name their
    /// drives differently (fixture `virtio0`, NixOS `drive1`), the file is what they share.
    async fn disk_node(&self, file: &Path) -> Result<String, VmError> {
        let blocks = self.qmp("query-block", None).await?;
        let want = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
        let found = blocks.as_array().into_iter().flatten().find_map(|b| {
            let inserted = &b["inserted"];
            let path = PathBuf::from(inserted["file"].as_str()?);
            let path = path.canonicalize().unwrap_or(path);
            (path == want).then(|| inserted["node-name"].as_str().map(str::to_string))?
        });
        found.ok_or_else(|| {
            self.state_error(&format!(
                "saving its state: no block device of QEMU writes {} (query-block: {})",
                file.display(),
                crate::wait::tail_chars(&blocks.to_string(), 600)
            ))
        })
    }
}

fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// The size of `path` in bytes; 0 when it cannot be read.
pub fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

impl Machine {
    /// The snapshot that holds this machine's last save is committed, its disk at `kept`: a
    /// later save's disk will lie above that file, not above the lab's state dir.
    pub fn kept_at(&self, kept: &Path) {
        if let Ok(mut disk) = self.kept_disk.lock() {
            *disk = Some(std::path::absolute(kept).unwrap_or_else(|_| kept.to_path_buf()));
        }
    }
}

/// A copy of the qcow2 overlay `from` at `to` whose backing file is `backing` (the same bytes
/// as the one `from` names, kept elsewhere). A copy, not a link: `from` stays in use, and
/// `qemu-img rebase -u` only rewrites the header's file name.
fn copy_onto(from: &Path, to: &Path, backing: &Path) -> std::io::Result<()> {
    let part = to.with_extension("part");
    std::fs::copy(from, &part)?;
    let qemu_img = which::which("qemu-img").map_err(std::io::Error::other)?;
    let out = Command::new(qemu_img)
        .args(["rebase", "-u", "-F", "qcow2", "-b"])
        .arg(backing)
        .arg(&part)
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "qemu-img rebase -u of {} onto {} failed: {}",
            part.display(),
            backing.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    sync_file(&part)?;
    std::fs::rename(&part, to)
}

/// A hard link where the file system allows (the frozen disk is never written again), a copy
/// elsewhere.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    let part = to.with_extension("part");
    std::fs::copy(from, &part)?;
    sync_file(&part)?;
    std::fs::rename(&part, to)
}
