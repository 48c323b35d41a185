//! Keeping a failed lab: saved as a snapshot the moment a failure is seen, before evidence
//! capture, rollbacks or teardown change it, so `labtest up --from NAME` steps back into it.
//! `labtest run` keeps every failed scenario's lab; a [`super::ReadyLab`] test keeps the lab of
//! a failed wait when asked (`LABTEST_KEEP=failure`).
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::SnapshotTarget;
use crate::error::Chain;
use crate::events::{EventKind, Events};
use crate::lab::{Lab, LabError};
use crate::snapshot::{FailureNote, Snapshot, SnapshotError, SnapshotName};

/// What the saved failures of a lab may use on disk together unless told otherwise: two or
/// three failed labs of the fixture's size.
pub const DEFAULT_FAILURE_BUDGET: u64 = 4 << 30;

/// Saves failed labs into a lab's snapshot store, within a disk budget.
#[derive(Clone)]
pub struct FailureKeeper {
    target: SnapshotTarget,
    lab_dir: PathBuf,
    run: PathBuf,
    budget: u64,
}

impl FailureKeeper {
    /// Keeps failures of the lab in `lab_dir` in `target`'s store, noting `run` (the report
    /// directory) in each; budget [`DEFAULT_FAILURE_BUDGET`].
    pub fn new(target: SnapshotTarget, lab_dir: &Path, run: &Path) -> Self {
        Self {
            target,
            lab_dir: lab_dir.to_path_buf(),
            run: std::path::absolute(run).unwrap_or_else(|_| run.to_path_buf()),
            budget: DEFAULT_FAILURE_BUDGET,
        }
    }

    /// The bytes the lab's failure snapshots may use together; the oldest go first.
    pub fn budget(mut self, bytes: u64) -> Self {
        self.budget = bytes;
        self
    }

    /// Saves `lab` as it is now, for `scenario` that failed with `failure`, then keeps the
    /// lab's failure snapshots within the budget. Reported as one [`EventKind::FailureKept`]
    /// or [`EventKind::FailureNotKept`] (pruning as a warning); returns the command that brings
    /// the lab back.
    ///
    /// # Errors
    /// A machine powered off ([`LabError::CannotSave`]), a save or store that failed: the lab
    /// goes on either way.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped during the save, machines may stay paused and a `.part-*`
    /// directory stays in the store (the next save of the lab removes it).
    pub async fn keep(
        &self,
        lab: &Lab,
        scenario: &str,
        failure: &str,
        events: &Events,
    ) -> Result<String, LabError> {
        let saved = async {
            let name = failure_snapshot_name(scenario, SystemTime::now())?;
            let note = FailureNote {
                run: self.run.clone(),
                scenario: scenario.to_string(),
                failure: failure.to_string(),
            };
            lab.save_failure(&self.target.store, &name, &self.target.key, note, events)
                .await
        }
        .await;
        let saved = match saved {
            Ok(saved) => saved,
            Err(e) => {
                events.emit(EventKind::FailureNotKept {
                    scenario: scenario.to_string(),
                    reason: Chain(&e).to_string(),
                });
                return Err(e);
            }
        };
        let restore = self.restore_command(&saved.meta.name);
        events.emit(EventKind::FailureKept {
            scenario: scenario.to_string(),
            snapshot: saved.meta.name.to_string(),
            restore: restore.clone(),
            took: Duration::from_secs_f64(saved.meta.save_secs),
            bytes: saved.meta.bytes,
        });
        self.prune(&saved, events);
        Ok(restore)
    }

    /// `labtest --lab DIR up --from NAME`.
    pub fn restore_command(&self, name: &SnapshotName) -> String {
        format!("labtest --lab {} up --from {name}", self.lab_dir.display())
    }

    fn prune(&self, saved: &Snapshot, events: &Events) {
        let pruned =
            self.target
                .store
                .prune_failures(&saved.meta.lab, self.budget, &saved.meta.name);
        let message = match pruned {
            Ok(removed) if removed.is_empty() => return,
            Ok(removed) => format!(
                "removed the oldest failure snapshots to stay within {:.1} GiB: {}",
                self.budget as f64 / f64::from(1u32 << 30),
                removed
                    .iter()
                    .map(|s| s.meta.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => format!(
                "could not keep the failure snapshots within their budget: {}",
                Chain(&e)
            ),
        };
        events.emit(EventKind::Warning { message });
    }
}

/// `failed-<scenario>-<UTC time to the second>Z`: sorts by time within a scenario; anything in
/// the scenario's name a snapshot name cannot hold becomes `-`.
///
/// # Errors
/// [`SnapshotError::BadName`] only if the rules for names change under it.
pub fn failure_snapshot_name(
    scenario: &str,
    at: SystemTime,
) -> Result<SnapshotName, SnapshotError> {
    let plain: String = scenario
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let stamp: String = crate::utc::rfc3339(at)
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    SnapshotName::new(format!("failed-{plain}-{stamp}Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_snapshot_is_named_after_its_scenario_and_time() {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_796_578_445);
        let name = failure_snapshot_name("node-failure", at).unwrap();
        assert_eq!(name.as_str(), "failed-node-failure-20261206T173405Z");
        let name = failure_snapshot_name("my incident/ä 1", at).unwrap();
        assert_eq!(name.as_str(), "failed-my-incident---1-20261206T173405Z");
    }
}
