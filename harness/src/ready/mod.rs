//! A Ready lab: built, booted (or restored from its Ready snapshot), nodes joined, through the
//! readiness gate, with a kube client. The one bring-up that `labtest run`, `labtest up`, the
//! built-in scenarios and users' own lab tests share, so a test cannot get a lab the CLI would
//! not give it.
//!
//! [`ReadyLab`] is the RAII front for tests; [`ready_lab`] and the functions around it are the
//! steps, for callers (the CLI) that report through their own events and artifacts.
// Public items here still lack docs (issue 20): until they have them, the workspace
// missing_docs lint is allowed for this file.
#![allow(missing_docs)]

mod bring_up;
mod evidence;
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
pub use settings::{cache_dir, history_file, snapshot_store, Snapshots};
pub use test_lab::{ReadyLab, ReadyLabBuilder};

/// The snapshot every run, `up` and [`ReadyLab`] restores: the lab right after the gate passed.
pub const READY_SNAPSHOT: SnapshotName = SnapshotName::from_static("ready");
/// The check scope of the waits a user's test runs through [`ReadyLab`].
pub const TEST_SCOPE: &str = "test";

#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error(transparent)]
    Lab(Box<LabError>),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Gate(#[from] Box<GateError>),
    #[error(transparent)]
    Vm(#[from] Box<VmError>),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Accel(#[from] AccelError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("building lab {lab_dir}")]
    Build {
        lab_dir: PathBuf,
        source: Box<LabError>,
    },
    #[error(
        "LABTEST_SNAPSHOT={0:?} is not one of fresh, off (unset or empty: restore the Ready snapshot)"
    )]
    BadSnapshotMode(String),
    #[error("lab {lab} has no [kubernetes] in its lab.toml, so it has no {what}")]
    NoKubernetes { lab: String, what: &'static str },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "expected the Ready snapshot of lab {lab} within {waited:?}; another process still makes it (lock {lock} held)"
    )]
    SnapshotLock {
        lab: String,
        lock: PathBuf,
        waited: Duration,
    },
    #[error("expected {what} within {timeout:?}; it was still going")]
    StepTimeout { what: String, timeout: Duration },
    #[error(
        "expected lab {lab} to get Ready, but booting it with these same inputs failed {}s ago, so it is not booted again for {} min after that (set LABTEST_SNAPSHOT=fresh, or run `labtest up --fresh`, to try now). That boot's error: {error}",
        ago.as_secs(),
        crate::snapshot::FAILED_BRING_UP_HOLD / 60
    )]
    EarlierBringUpFailed {
        lab: String,
        ago: Duration,
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
