//! A Ready lab: built, booted (or restored from its Ready snapshot), nodes joined, through the
//! readiness gate, with a kube client. The one bring-up that `labtest run`, `labtest up`, the
//! built-in scenarios and users' own lab tests share, so a test cannot get a lab the CLI would
//! not give it.
//!
//! [`ReadyLab`] is the RAII front for tests; [`ready_lab`] and the functions around it are the
//! steps, for callers (the CLI) that report through their own events and artifacts.

mod bring_up;
mod evidence;
mod keep;
mod lock;
mod settings;
mod test_lab;

use std::path::PathBuf;
use std::time::Duration;

use crate::kube::{GateError, KubeError};
use crate::lab::LabError;
use crate::report::ReportError;
use crate::snapshot::{SnapshotError, SnapshotName};
use crate::vm::accel::AccelError;
use crate::vm::VmError;

pub use bring_up::{
    boot, build, ready_lab, restore_named, snapshot_target, Built, Ready, SnapshotTarget,
};
pub use evidence::capture_failure;
pub use keep::{failure_snapshot_name, FailureKeeper, DEFAULT_FAILURE_BUDGET};
pub use settings::{cache_dir, history_file, snapshot_store, Snapshots};
pub use test_lab::{ReadyLab, ReadyLabBuilder};

/// The snapshot every run, `up` and [`ReadyLab`] restores: the lab right after the gate passed.
pub const READY_SNAPSHOT: SnapshotName = SnapshotName::from_static("ready");
/// The check scope of the waits a user's test runs through [`ReadyLab`].
pub const TEST_SCOPE: &str = "test";

/// Why a lab did not get Ready. Each variant's message leaves its cause to `source()`, so
/// [`crate::error::Chain`] shows the whole story once.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// Booting, restoring or driving the lab failed.
    #[error(transparent)]
    Lab(Box<LabError>),
    /// The Kubernetes client could not be made or used.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// The readiness gate did not pass; its error holds the evidence.
    #[error(transparent)]
    Gate(#[from] Box<GateError>),
    /// A machine failed outside a lab operation.
    #[error(transparent)]
    Vm(#[from] Box<VmError>),
    /// The snapshot store failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The accelerator asked for cannot be had.
    #[error(transparent)]
    Accel(#[from] AccelError),
    /// The artifacts folder or a report could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The lab's prepare step or `nix build` failed.
    #[error("building lab {lab_dir}")]
    Build {
        /// The lab that was being built.
        lab_dir: PathBuf,
        /// The build's own error, with Nix's diagnosis under it.
        source: Box<LabError>,
    },
    /// A wait of a [`ReadyLab`] failed and the lab was saved as it was then
    /// ([`ReadyLabBuilder::keep_failures`], `LABTEST_KEEP=failure`).
    #[error("the lab was saved as it failed; step back into it with `{restore}`")]
    Kept {
        /// The command that brings the saved lab back.
        restore: String,
        /// The failure.
        source: Box<ReadyError>,
    },
    /// `LABTEST_SNAPSHOT` holds a word that is not a [`Snapshots`] mode: refused rather
    /// than guessed, as a typo in `LABTEST_ACCEL` is.
    #[error(
        "LABTEST_SNAPSHOT={0:?} is not one of fresh, off (unset or empty: restore the Ready snapshot)"
    )]
    BadSnapshotMode(String),
    /// Something Kubernetes was asked of a lab that does not run it.
    #[error("lab {lab} has no [kubernetes] in its lab.toml, so it has no {what}")]
    NoKubernetes {
        /// The lab's name.
        lab: String,
        /// What was asked for (a client, a node wait).
        what: &'static str,
    },
    /// A file of the bring-up (a kubeconfig, a lock, a log) could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What the file is for.
        what: &'static str,
        /// Where it is.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process held the lab's snapshot lock for longer than a cold bring-up takes.
    #[error(
        "expected the Ready snapshot of lab {lab} within {waited:?}; another process still makes it (lock {lock} held)"
    )]
    SnapshotLock {
        /// The lab's name.
        lab: String,
        /// The lock file, to see who holds it.
        lock: PathBuf,
        /// How long this process waited.
        waited: Duration,
    },
    /// A bring-up step ran past its own deadline without saying so itself.
    #[error("expected {what} within {timeout:?}; it was still going")]
    StepTimeout {
        /// The step.
        what: String,
        /// Its deadline.
        timeout: Duration,
    },
    /// A bring-up with the same inputs failed minutes ago and is held off for
    /// [`crate::snapshot::FAILED_BRING_UP_HOLD`], so a suite fails at once instead of once per test.
    #[error(
        "expected lab {lab} to get Ready, but booting it with these same inputs failed {}s ago, so it is not booted again for {} min after that (set LABTEST_SNAPSHOT=fresh, or run `labtest up --fresh`, to try now). That boot's error: {error}",
        ago.as_secs(),
        crate::snapshot::FAILED_BRING_UP_HOLD / 60
    )]
    EarlierBringUpFailed {
        /// The lab's name.
        lab: String,
        /// How long ago the earlier bring-up failed.
        ago: Duration,
        /// That bring-up's error, as it was shown then.
        error: String,
    },
}

impl From<LabError> for ReadyError {
    fn from(e: LabError) -> Self {
        ReadyError::Lab(Box::new(e))
    }
}

impl From<VmError> for ReadyError {
    fn from(e: VmError) -> Self {
        ReadyError::Vm(Box::new(e))
    }
}
