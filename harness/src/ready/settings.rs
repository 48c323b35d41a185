//! Where the cache and the snapshots live, and how a lab gets to Ready: settings read from the
//! environment once, when a bring-up is set up.
use std::path::PathBuf;

use super::ReadyError;
use crate::snapshot::SnapshotStore;

/// `<cache>/history.jsonl`: a line per run, what a run's report compares it with.
pub fn history_file() -> PathBuf {
    cache_dir().join("history.jsonl")
}

/// `$LABTEST_CACHE`, else `$XDG_CACHE_HOME/labtest`, else `~/.cache/labtest`: where builds,
/// guests and snapshots are kept between runs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LABTEST_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("labtest")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/labtest")))
        .unwrap_or_else(|| std::env::temp_dir().join("labtest-cache"))
}

/// `$LABTEST_SNAPSHOTS`, else `<cache>/snapshots`: snapshots are GBs, so they may live apart
/// from the cached builds.
pub fn snapshot_store() -> SnapshotStore {
    SnapshotStore::new(
        std::env::var_os("LABTEST_SNAPSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_dir().join("snapshots")),
    )
}

/// How a lab gets to Ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Snapshots {
    /// Restore the Ready snapshot when one matches the lab's inputs; else boot, pass the gate
    /// and save it (one process at a time per lab: the others wait for it).
    #[default]
    Restore,
    /// Boot from scratch and replace the Ready snapshot.
    Fresh,
    /// Boot, and neither read nor write snapshots.
    Off,
}

impl Snapshots {
    /// `$LABTEST_SNAPSHOT`: `fresh` or `off`; unset or empty restores.
    ///
    /// # Errors
    /// [`ReadyError::BadSnapshotMode`] for any other value: a misspelt `fresh` would otherwise
    /// restore the very snapshot the user meant to replace.
    pub fn from_env() -> Result<Snapshots, ReadyError> {
        let value = std::env::var("LABTEST_SNAPSHOT").unwrap_or_default();
        match value.trim() {
            "" => Ok(Snapshots::Restore),
            "fresh" => Ok(Snapshots::Fresh),
            "off" => Ok(Snapshots::Off),
            _ => Err(ReadyError::BadSnapshotMode(value)),
        }
    }
}
