//! Whole-lab snapshots: every machine of a lab paused together, each saved
//! ([`crate::vm::state`]), kept in the cache under a key of everything that decides their
//! content, and restored as new labs - as many at once as wanted, each with its own disks, hub
//! and ports.
//!
//! A snapshot is a directory `<cache>/snapshots/<lab>/<name>/` holding `<machine>.state`,
//! `<machine>.qcow2` and `snapshot.json` ([`SnapshotMeta`]). It is written under a temporary
//! name and renamed into place last, so a save killed half-way leaves only a `.part-*` directory
//! that no lookup ever takes (and the next save of the lab removes).
//!
//! # Usage
//! ```no_run
//! # async fn demo(lab: &harness::lab::Lab, spec_text: &str, run_dir: &std::path::Path)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use harness::events::Events;
//! use harness::snapshot::{SnapshotKey, SnapshotName, SnapshotStore};
//! let store = SnapshotStore::new("/var/cache/labtest/snapshots");
//! let key = SnapshotKey::compute(spec_text, run_dir, &lab.spec().machine_names(), "-accel tcg")?;
//! let name: SnapshotName = "incident-42".parse()?;
//! lab.save_snapshot(&store, &name, &key, &Events::discard()).await?;
//! let snapshot = store.lookup(&lab.spec().name, &name, &key)?;
//! # Ok(()) }
//! ```
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::vm::state::{file_size, SavedState};

/// Bumped whenever what a snapshot holds or how it is restored changes: older ones are then
/// never restored.
pub const FORMAT: &str = "labtest-snapshot-1";
const META: &str = "snapshot.json";
/// Beside a lab's snapshots: the key its inputs made last.
const CURRENT_KEY: &str = ".current-key";
const FAILED_BRING_UP: &str = ".ready-failed.json";
/// The oldest snapshot that is restored, in seconds. A restored guest's clock resumes at the
/// save time and renews nothing, while the harness checks the cluster's certificates against the
/// host's clock: nixpkgs' kubernetes/pki.nix signs every certificate certmgr requests with the
/// cfssl profile `expiry = "720h"` (nixos/modules/services/cluster/kubernetes/pki.nix,
/// NixOS/nixpkgs 0490065f6ac60793bfb12e110bd6506aaca0e9f5), and the fixture's pki.sh gives its
/// leaf certificates the same 30 days. They are issued before the save (at the first boot, minutes
/// before a Ready snapshot), so a snapshot younger than 29 days leaves at least a day for what
/// runs on it. The harness refuses older ones rather than extending the expiry in the lab's
/// overlay: the NixOS lab stays as nixpkgs configures it.
pub const MAX_AGE_SECS: u64 = 29 * 24 * 3600;
/// How long a failed bring-up of a key stops the next ones: long enough to cover one test suite
/// (every tier-4 test would otherwise spend its own half hour failing the same way), short
/// enough that a later run tries again by itself.
pub const FAILED_BRING_UP_HOLD: u64 = 30 * 60;

/// Why a snapshot could not be named, saved, found or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not usable; `reason` is the one line a user sees before the lab boots afresh.
    #[error("snapshot {name:?} of lab {lab}: {reason}")]
    Unusable {
        /// The lab's name.
        lab: String,
        /// The snapshot's name.
        name: SnapshotName,
        /// Why it cannot be used, in one line.
        reason: String,
    },
    /// A name that could leave the store's directory or hide in it; refused before any file is touched.
    #[error(
        "snapshot name {name:?}: expected letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    BadName {
        /// The name as given.
        name: String,
    },
    /// The store's files could not be read or written.
    #[error("snapshot store {path}: {context}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A [`SnapshotError::Io`] about `path`.
fn io(path: &Path, context: &str, source: std::io::Error) -> SnapshotError {
    SnapshotError::Io {
        path: path.to_path_buf(),
        context: context.to_string(),
        source,
    }
}

/// A snapshot's name, checked once here for every way in (the CLI, the control socket, a
/// `snapshot.json`): it becomes a directory of the store, so `..` or a `/` would reach outside
/// it, and an `up --from` argument, so it stays plain.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotName(Cow<'static, str>);

impl SnapshotName {
    /// # Errors
    /// [`SnapshotError::BadName`] unless `name` is letters, digits, `-`, `_` and `.`, not
    /// starting with `.`.
    pub fn new(name: impl Into<String>) -> Result<Self, SnapshotError> {
        let name = name.into();
        if is_plain(&name) {
            Ok(Self(Cow::Owned(name)))
        } else {
            Err(SnapshotError::BadName { name })
        }
    }

    /// A name fixed in the code, checked when it compiles (in a `const`).
    pub const fn from_static(name: &'static str) -> Self {
        assert!(is_plain(name), "not a plain snapshot name");
        Self(Cow::Borrowed(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The one rule for snapshot names; `const` so [`SnapshotName::from_static`] can apply it.
const fn is_plain(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes[0] == b'.' {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return false;
        }
        i += 1;
    }
    true
}

impl std::str::FromStr for SnapshotName {
    type Err = SnapshotError;
    fn from_str(name: &str) -> Result<Self, SnapshotError> {
        Self::new(name)
    }
}

impl TryFrom<String> for SnapshotName {
    type Error = SnapshotError;
    fn try_from(name: String) -> Result<Self, SnapshotError> {
        Self::new(name)
    }
}

impl From<SnapshotName> for String {
    fn from(name: SnapshotName) -> String {
        name.0.into_owned()
    }
}

impl std::fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

/// Quoted like the string it is, so messages read `snapshot "ready"`.
impl std::fmt::Debug for SnapshotName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

/// What decides a snapshot's content, hashed. Any change means a fresh boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotKey {
    /// Hex SHA-256 of the inputs.
    pub hash: String,
    /// The inputs, one line each, for `labtest snapshot list` and for saying what changed.
    pub inputs: Vec<String>,
}

impl SnapshotKey {
    /// Keys a lab's snapshot by the snapshot format, `lab.toml`'s text, QEMU's version, the
    /// accelerator options, and each machine's run script (its resolved path and content: store
    /// paths of the kernel, disk images, store image and system, or the fixture's guest and
    /// Kubernetes keys).
    ///
    /// # Errors
    /// [`SnapshotError::Io`] when a run script cannot be read or QEMU not asked.
    pub fn compute(
        spec_text: &str,
        run_dir: &Path,
        machines: &[String],
        accel_opts: &str,
    ) -> Result<Self, SnapshotError> {
        let mut inputs = vec![
            format!("format {FORMAT}"),
            format!(
                "lab.toml sha256 {}",
                hex(&Sha256::digest(spec_text.as_bytes()))
            ),
            format!(
                "qemu {}",
                qemu_version().map_err(|e| io(
                    Path::new("qemu-system-x86_64"),
                    "asking its version",
                    e
                ))?
            ),
            format!("accel {accel_opts}"),
        ];
        for machine in machines {
            let script = run_dir.join("bin").join(format!("run-{machine}-vm"));
            let resolved = script
                .canonicalize()
                .map_err(|e| io(&script, "resolving the run script", e))?;
            let text =
                std::fs::read(&resolved).map_err(|e| io(&resolved, "reading the run script", e))?;
            inputs.push(format!(
                "{machine} {} sha256 {}",
                resolved.display(),
                hex(&Sha256::digest(&text))
            ));
        }
        let hash = hex(&Sha256::digest(inputs.join("\n").as_bytes()));
        Ok(SnapshotKey { hash, inputs })
    }
}

fn qemu_version() -> std::io::Result<String> {
    let out = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("unknown")
        .to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `snapshot.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The snapshot format ([`FORMAT`]); another format is not restored.
    pub format: String,
    /// The lab's name.
    pub lab: String,
    /// The snapshot's name.
    pub name: SnapshotName,
    /// The key of the inputs it was made from ([`SnapshotKey`]).
    pub key: String,
    /// Those inputs, one line each, to say what changed since.
    pub inputs: Vec<String>,
    /// The machines saved in it.
    pub machines: Vec<String>,
    /// Seconds since the epoch, host clock.
    pub created: u64,
    /// How long the save took.
    pub save_secs: f64,
    /// Bytes on disk (states and frozen disks).
    pub bytes: u64,
    /// The faults that held when it was saved and that a restore puts back: the ones the
    /// harness keeps (the hub's cut pairs, a link set down) and the ones a restore would
    /// otherwise undo (a frozen machine).
    #[serde(default, skip_serializing_if = "SavedFaults::is_empty")]
    pub faults: SavedFaults,
    /// The snapshot the saved lab was itself restored from: its disks lie above that one's, so
    /// it is usable only while that one is there, unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseSnapshot>,
    /// Set when a run saved it because a scenario failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureNote>,
}

impl SnapshotMeta {
    /// When the lab's first boot was saved, as far as this snapshot's chain knows: the
    /// cluster's certificates are that old at least.
    pub fn first_saved(&self) -> u64 {
        self.base
            .as_ref()
            .map_or(self.created, |b| b.first_saved.min(self.created))
    }

    /// This snapshot as the base of a lab restored from it, or of a later save.
    pub fn as_base(&self) -> BaseSnapshot {
        BaseSnapshot {
            name: self.name.clone(),
            created: self.created,
            first_saved: self.first_saved(),
        }
    }
}

/// The faults a snapshot holds beyond its machines' own state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFaults {
    /// Pairs of machines the hub kept apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<(String, String)>,
    /// Machines whose CPUs were paused (`labtest freeze`): restored paused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frozen: Vec<String>,
    /// Machines whose lab NIC had no carrier (`link-down`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links_down: Vec<String>,
}

impl SavedFaults {
    /// No fault held.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty() && self.frozen.is_empty() && self.links_down.is_empty()
    }

    /// The faults and the commands that undo them, in one line; empty when none held.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .partitions
            .iter()
            .map(|(a, b)| format!("{a} and {b} partitioned (`labtest heal {a} {b}`)"))
            .collect();
        parts.extend(
            self.frozen
                .iter()
                .map(|m| format!("{m} frozen (`labtest thaw {m}`)")),
        );
        parts.extend(
            self.links_down
                .iter()
                .map(|m| format!("{m}'s lab link down (a scenario's `link-up {m}`)")),
        );
        parts.join(", ")
    }
}

/// The snapshot a saved lab had been restored from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseSnapshot {
    /// Its name.
    pub name: SnapshotName,
    /// Its [`SnapshotMeta::created`]: a snapshot saved again under the same name is another one.
    pub created: u64,
    /// Its [`SnapshotMeta::first_saved`].
    pub first_saved: u64,
}

/// Why a run saved a snapshot: the scenario that failed and what it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureNote {
    /// The run's report directory.
    pub run: PathBuf,
    /// The scenario that failed.
    pub scenario: String,
    /// The failure as the run reported it: the check, what it expected and last saw.
    pub failure: String,
}

/// A snapshot found in the store, checked against its key.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Its directory in the store.
    pub dir: PathBuf,
    /// Its `snapshot.json`.
    pub meta: SnapshotMeta,
}

impl Snapshot {
    /// The saved state of `machine`.
    pub fn machine(&self, machine: &str) -> SavedState {
        SavedState::in_dir(&self.dir, machine)
    }
}

/// The snapshots in a cache directory.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    /// A store in `root`, created when the first snapshot is saved.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the snapshot `name` of `lab` lives (whether or not it exists).
    pub fn dir(&self, lab: &str, name: &SnapshotName) -> PathBuf {
        self.root.join(lab).join(name.as_str())
    }

    /// The snapshot `name` of `lab`, if it is complete and made from exactly `key`.
    ///
    /// # Errors
    /// [`SnapshotError::Unusable`] saying why not in one line: missing, another key (and which
    /// input changed), another format, older than [`MAX_AGE_SECS`], a missing or truncated file.
    pub fn lookup(
        &self,
        lab: &str,
        name: &SnapshotName,
        key: &SnapshotKey,
    ) -> Result<Snapshot, SnapshotError> {
        let unusable = |reason: String| SnapshotError::Unusable {
            lab: lab.to_string(),
            name: name.clone(),
            reason,
        };
        let dir = self.dir(lab, name);
        let meta_path = dir.join(META);
        let text = match std::fs::read_to_string(&meta_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(unusable(format!(
                    "none saved yet ({} does not exist)",
                    meta_path.display()
                )))
            }
            Err(e) => {
                return Err(unusable(format!(
                    "{} cannot be read: {e}",
                    meta_path.display()
                )))
            }
        };
        let meta: SnapshotMeta = serde_json::from_str(&text)
            .map_err(|e| unusable(format!("{} is corrupt: {e}", meta_path.display())))?;
        if meta.format != FORMAT {
            return Err(unusable(format!(
                "made in format {:?}, this labtest reads {FORMAT:?}",
                meta.format
            )));
        }
        // The certificates date from the lab's first boot, which a snapshot saved from a
        // restored lab inherits.
        let age = now_secs().saturating_sub(meta.first_saved());
        if age > MAX_AGE_SECS {
            return Err(unusable(format!(
                "its lab was first saved {} days ago ({} UTC), more than {} days: its cluster \
                 certificates live 30 days (nixpkgs kubernetes/pki.nix: expiry 720h) and its \
                 guests, resuming at the save time, renew none, so they may have expired against \
                 the host's clock",
                age / 86_400,
                crate::utc::minutes(meta.first_saved()),
                MAX_AGE_SECS / 86_400
            )));
        }
        if let Some(base) = &meta.base {
            if let Err(reason) = self.base_is_there(lab, base) {
                return Err(unusable(reason));
            }
        }
        if meta.key != key.hash {
            let changed: Vec<&String> = key
                .inputs
                .iter()
                .filter(|i| !meta.inputs.contains(i))
                .collect();
            return Err(unusable(format!(
                "made from other inputs; changed: {}",
                if changed.is_empty() {
                    "(unknown)".to_string()
                } else {
                    changed
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                }
            )));
        }
        let snapshot = Snapshot { dir, meta };
        for machine in &snapshot.meta.machines {
            let saved = snapshot.machine(machine);
            for file in [&saved.state, &saved.disk] {
                if file_size(file) == 0 {
                    return Err(unusable(format!("{} is missing or empty", file.display())));
                }
            }
            if !has_migration_magic(&saved.state) {
                return Err(unusable(format!(
                    "{} is not a QEMU migration stream (corrupt)",
                    saved.state.display()
                )));
            }
        }
        Ok(snapshot)
    }

    /// `Ok` when `base`, and every snapshot below it, is in the store as it was when a snapshot
    /// above it was saved; else why not, in one line.
    fn base_is_there(&self, lab: &str, base: &BaseSnapshot) -> Result<(), String> {
        let mut next = Some(base.clone());
        // A chain is as long as restores of restores go; the bound only stops a looping one.
        for _ in 0..64 {
            let Some(base) = next else { return Ok(()) };
            let dir = self.dir(lab, &base.name);
            match read_meta(&dir) {
                Some(meta) if meta.created == base.created => next = meta.base,
                Some(meta) => {
                    return Err(format!(
                        "its disks lie above snapshot {} as saved at {} UTC, which was saved \
                         again since ({} UTC): the lab it holds cannot be put together any more",
                        base.name,
                        crate::utc::minutes(base.created),
                        crate::utc::minutes(meta.created)
                    ))
                }
                None => {
                    return Err(format!(
                        "its disks lie above snapshot {}, which is gone ({} has no {META})",
                        base.name,
                        dir.display()
                    ))
                }
            }
        }
        Err(format!(
            "its chain of base snapshots from {} loops",
            base.name
        ))
    }

    /// Keeps the failure snapshots of `lab` within `budget` bytes together: the oldest go
    /// first; `keep` (the one just saved) and any snapshot another one lies above stay.
    /// Returns the removed ones, to say so.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] for the first one that could not be removed.
    pub fn prune_failures(
        &self,
        lab: &str,
        budget: u64,
        keep: &SnapshotName,
    ) -> Result<Vec<Snapshot>, SnapshotError> {
        let all: Vec<Snapshot> = self
            .list()
            .into_iter()
            .filter(|s| s.meta.lab == lab)
            .collect();
        let is_base = |name: &SnapshotName| {
            all.iter()
                .any(|s| s.meta.base.as_ref().is_some_and(|b| &b.name == name))
        };
        let mut failures: Vec<&Snapshot> =
            all.iter().filter(|s| s.meta.failure.is_some()).collect();
        failures.sort_by_key(|s| std::cmp::Reverse(s.meta.created));
        let mut total: u64 = failures.iter().map(|s| s.meta.bytes).sum();
        let mut removed = Vec::new();
        for old in failures.iter().rev() {
            if total <= budget {
                break;
            }
            if &old.meta.name == keep || is_base(&old.meta.name) {
                continue;
            }
            if self.remove_if_unchanged(old)? {
                total = total.saturating_sub(old.meta.bytes);
                removed.push((*old).clone());
            }
        }
        Ok(removed)
    }

    /// Every complete snapshot in the store, any lab, any key.
    pub fn list(&self) -> Vec<Snapshot> {
        let mut found = Vec::new();
        for lab in read_dirs(&self.root) {
            for dir in read_dirs(&lab) {
                if let Some(meta) = read_meta(&dir) {
                    found.push(Snapshot { dir, meta });
                }
            }
        }
        found.sort_by(|a, b| (&a.meta.lab, &a.meta.name).cmp(&(&b.meta.lab, &b.meta.name)));
        found
    }

    /// Removes the snapshot `name` of `lab`; `false` when there was none.
    ///
    /// # Errors
    /// [`SnapshotError::Io`].
    pub fn remove(&self, lab: &str, name: &SnapshotName) -> Result<bool, SnapshotError> {
        let dir = self.dir(lab, name);
        if !dir.exists() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, "removing", e))?;
        Ok(true)
    }

    /// Removes `snapshot` if it is still the one in its place: one that failed to restore must
    /// not take a newer one, saved meanwhile under the same name, with it. `false` when it was
    /// already gone or replaced.
    ///
    /// # Errors
    /// [`SnapshotError::Io`].
    pub fn remove_if_unchanged(&self, snapshot: &Snapshot) -> Result<bool, SnapshotError> {
        if read_meta(&snapshot.dir).as_ref() != Some(&snapshot.meta) {
            return Ok(false);
        }
        std::fs::remove_dir_all(&snapshot.dir).map_err(|e| io(&snapshot.dir, "removing", e))?;
        Ok(true)
    }

    /// Notes `key` as the one `lab`'s inputs make now, so `labtest cache prune` knows which
    /// snapshots of the lab can still be restored. Best effort: a failure only means prune
    /// keeps more.
    pub fn mark_current(&self, lab: &str, key: &SnapshotKey) {
        let dir = self.root.join(lab);
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join(CURRENT_KEY), &key.hash);
        }
    }

    /// The key [`SnapshotStore::mark_current`] noted last for `lab`, if any.
    pub fn current_key(&self, lab: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(lab).join(CURRENT_KEY))
            .ok()
            .map(|k| k.trim().to_string())
    }

    /// Notes that booting `lab` with inputs `key` did not get it Ready, and why: the next
    /// bring-up of the same key within [`FAILED_BRING_UP_HOLD`] is refused with this note
    /// ([`SnapshotStore::failed_bring_up`]). Best effort, like the snapshot it stands for.
    pub fn note_failed_bring_up(&self, lab: &str, key: &SnapshotKey, error: &str) {
        let dir = self.root.join(lab);
        let note = FailedBringUp {
            key: key.hash.clone(),
            at: now_secs(),
            error: error.to_string(),
        };
        if let (Ok(()), Ok(text)) = (
            std::fs::create_dir_all(&dir),
            serde_json::to_string_pretty(&note),
        ) {
            let _ = std::fs::write(dir.join(FAILED_BRING_UP), text);
        }
    }

    /// The note of a bring-up of `key` that failed less than [`FAILED_BRING_UP_HOLD`] ago.
    pub fn failed_bring_up(&self, lab: &str, key: &SnapshotKey) -> Option<FailedBringUp> {
        let text = std::fs::read_to_string(self.root.join(lab).join(FAILED_BRING_UP)).ok()?;
        let note: FailedBringUp = serde_json::from_str(&text).ok()?;
        (note.key == key.hash && now_secs().saturating_sub(note.at) < FAILED_BRING_UP_HOLD)
            .then_some(note)
    }

    /// Forgets a failed bring-up of `lab` (a later one got Ready, or a user asked afresh).
    pub fn clear_failed_bring_up(&self, lab: &str) {
        let _ = std::fs::remove_file(self.root.join(lab).join(FAILED_BRING_UP));
    }

    /// What killed saves left in the store: `.part-*` and `.old-*` dirs of processes that are
    /// gone.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        read_dirs(&self.root)
            .iter()
            .flat_map(|lab| read_dirs(lab))
            .filter(|dir| {
                dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    (n.starts_with(".part-") || n.starts_with(".old-")) && !owned_by_live_process(n)
                })
            })
            .collect()
    }

    /// A fresh temporary directory for a snapshot of `lab` being written; earlier ones left by
    /// a killed save are removed first.
    pub(crate) fn begin(&self, lab: &str, name: &SnapshotName) -> Result<PathBuf, SnapshotError> {
        let lab_dir = self.root.join(lab);
        std::fs::create_dir_all(&lab_dir).map_err(|e| io(&lab_dir, "creating", e))?;
        let prefix = format!(".part-{name}-");
        for stale in read_dirs(&lab_dir) {
            let is_stale = stale
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && !owned_by_live_process(n));
            if is_stale {
                let _ = std::fs::remove_dir_all(&stale);
            }
        }
        let part = lab_dir.join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&part);
        std::fs::create_dir(&part).map_err(|e| io(&part, "creating", e))?;
        Ok(part)
    }

    /// Writes `meta` into `part` and renames it into place, replacing an older snapshot of the
    /// same name.
    pub(crate) fn commit(
        &self,
        part: &Path,
        meta: &SnapshotMeta,
    ) -> Result<Snapshot, SnapshotError> {
        let meta_path = part.join(META);
        let text = serde_json::to_string_pretty(meta)
            .map_err(|e| io(&meta_path, "serializing", std::io::Error::other(e)))?;
        std::fs::write(&meta_path, text).map_err(|e| io(&meta_path, "writing", e))?;
        std::fs::File::open(&meta_path)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(&meta_path, "syncing", e))?;
        let dir = self.dir(&meta.lab, &meta.name);
        if dir.exists() {
            let old = dir.with_file_name(format!(".old-{}-{}", meta.name, std::process::id()));
            std::fs::rename(&dir, &old)
                .map_err(|e| io(&dir, "moving the older snapshot aside", e))?;
            let _ = std::fs::remove_dir_all(&old);
        }
        std::fs::rename(part, &dir).map_err(|e| io(&dir, "renaming into place", e))?;
        Ok(Snapshot {
            dir,
            meta: meta.clone(),
        })
    }
}

/// A bring-up that did not get the lab Ready: the inputs' key, when (seconds since the epoch)
/// and the error, which names its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedBringUp {
    /// The key of the inputs it was tried with.
    pub key: String,
    /// When it failed, in seconds since the epoch.
    pub at: u64,
    /// Its error, as it was shown.
    pub error: String,
}

/// The `snapshot.json` in `dir`, if it reads.
fn read_meta(dir: &Path) -> Option<SnapshotMeta> {
    let text = std::fs::read_to_string(dir.join(META)).ok()?;
    serde_json::from_str(&text).ok()
}

/// `.part-<name>-<pid>` of a process that still runs (a concurrent save of the same lab).
fn owned_by_live_process(dir_name: &str) -> bool {
    dir_name
        .rsplit('-')
        .next()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists())
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

/// QEMU migration streams start with "QEVM" (QEMU_VM_FILE_MAGIC).
fn has_migration_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"QEVM"
}

/// Seconds since the epoch, host clock (what [`SnapshotMeta::created`] holds).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &SnapshotKey) -> SnapshotMeta {
        SnapshotMeta {
            format: FORMAT.into(),
            lab: "t".into(),
            name: name("ready"),
            key: key.hash.clone(),
            inputs: key.inputs.clone(),
            machines: vec!["a".into()],
            created: now_secs(),
            save_secs: 0.0,
            bytes: 0,
            faults: SavedFaults::default(),
            base: None,
            failure: None,
        }
    }

    fn name(name: &str) -> SnapshotName {
        name.parse().unwrap()
    }

    fn key(lab_toml: &str) -> SnapshotKey {
        let inputs = vec![format!("lab.toml {lab_toml}")];
        SnapshotKey {
            hash: hex(&Sha256::digest(inputs.join("\n").as_bytes())),
            inputs,
        }
    }

    #[test]
    fn a_failed_bring_up_holds_its_key_only_and_only_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let (k, other) = (key("one"), key("two"));
        assert_eq!(store.failed_bring_up("t", &k), None);
        store.note_failed_bring_up("t", &k, "nodes registered: timed out; evidence: /tmp/x");
        let note = store.failed_bring_up("t", &k).expect("a note");
        assert_eq!(note.error, "nodes registered: timed out; evidence: /tmp/x");
        assert_eq!(
            store.failed_bring_up("t", &other),
            None,
            "another key boots"
        );
        // An old note no longer holds.
        let path = dir.path().join("t").join(FAILED_BRING_UP);
        let old = FailedBringUp {
            at: now_secs() - FAILED_BRING_UP_HOLD,
            ..note
        };
        std::fs::write(&path, serde_json::to_string(&old).unwrap()).unwrap();
        assert_eq!(store.failed_bring_up("t", &k), None);
        store.note_failed_bring_up("t", &k, "again");
        store.clear_failed_bring_up("t");
        assert_eq!(store.failed_bring_up("t", &k), None);
        assert!(!path.exists());
    }

    #[test]
    fn a_committed_snapshot_is_found_and_a_changed_key_or_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let k = key("one");
        let err = store.lookup("t", &name("ready"), &k).unwrap_err();
        assert!(err.to_string().contains("none saved yet"), "{err}");

        let part = store.begin("t", &name("ready")).unwrap();
        std::fs::write(part.join("a.state"), b"QEVM\0\0\0\x03rest").unwrap();
        std::fs::write(part.join("a.qcow2"), b"QFI\xfb").unwrap();
        // Not committed: a save killed here leaves nothing a lookup takes.
        assert!(store.lookup("t", &name("ready"), &k).is_err());
        store.commit(&part, &meta(&k)).unwrap();
        let found = store.lookup("t", &name("ready"), &k).unwrap();
        assert_eq!(found.machine("a").state, found.dir.join("a.state"));
        assert_eq!(store.list().len(), 1);

        let err = store.lookup("t", &name("ready"), &key("two")).unwrap_err();
        assert!(err.to_string().contains("changed: lab.toml two"), "{err}");

        std::fs::write(found.dir.join("a.state"), b"garbage").unwrap();
        let err = store.lookup("t", &name("ready"), &k).unwrap_err();
        assert!(
            err.to_string().contains("not a QEMU migration stream"),
            "{err}"
        );
        std::fs::write(found.dir.join("a.state"), b"").unwrap();
        let err = store.lookup("t", &name("ready"), &k).unwrap_err();
        assert!(err.to_string().contains("missing or empty"), "{err}");

        // A snapshot that failed to restore is removed only while it is still in its place.
        let mut replaced = found.clone();
        replaced.meta.created = 1;
        assert!(!store.remove_if_unchanged(&replaced).unwrap());
        assert!(
            found.dir.exists(),
            "a newer snapshot went with an older one"
        );
        let copy = store.begin("t", &name("copy")).unwrap();
        std::fs::write(copy.join("a.state"), b"QEVM").unwrap();
        let copy = store
            .commit(
                &copy,
                &SnapshotMeta {
                    name: name("copy"),
                    ..meta(&k)
                },
            )
            .unwrap();
        assert!(store.remove_if_unchanged(&copy).unwrap());
        assert!(!copy.dir.exists());

        std::fs::write(found.dir.join(META), "{").unwrap();
        let err = store.lookup("t", &name("ready"), &k).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert!(store.remove("t", &name("ready")).unwrap());
        assert!(!store.remove("t", &name("ready")).unwrap());
    }

    /// A restored guest renews no certificate: a snapshot older than they live is refused with
    /// a line saying so, one a little younger is restored.
    #[test]
    fn a_snapshot_older_than_its_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let k = key("one");
        let save = |created: u64| {
            let part = store.begin("t", &name("ready")).unwrap();
            std::fs::write(part.join("a.state"), b"QEVM\0\0\0\x03rest").unwrap();
            std::fs::write(part.join("a.qcow2"), b"QFI\xfb").unwrap();
            let _ = store.remove("t", &name("ready"));
            store
                .commit(
                    &part,
                    &SnapshotMeta {
                        created,
                        ..meta(&k)
                    },
                )
                .unwrap();
        };
        let day = 86_400;
        save(now_secs() - 28 * day);
        store
            .lookup("t", &name("ready"), &k)
            .expect("28 days old: restored");
        save(now_secs() - 31 * day);
        let err = store.lookup("t", &name("ready"), &k).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("first saved 31 days ago")
                && text.contains("more than 29 days")
                && text.contains("expiry 720h"),
            "{text}"
        );
    }

    /// Saves a one-machine snapshot `n` of lab `t` made from `k`, with `meta` changed by `with`.
    fn save_as(
        store: &SnapshotStore,
        k: &SnapshotKey,
        n: &str,
        with: impl FnOnce(SnapshotMeta) -> SnapshotMeta,
    ) -> Snapshot {
        let part = store.begin("t", &name(n)).unwrap();
        std::fs::write(part.join("a.state"), b"QEVM\0\0\0\x03rest").unwrap();
        std::fs::write(part.join("a.qcow2"), b"QFI\xfb").unwrap();
        let meta = with(SnapshotMeta {
            name: name(n),
            ..meta(k)
        });
        store.commit(&part, &meta).unwrap()
    }

    /// A failure snapshot's disks lie above the Ready snapshot the run restored: once that one
    /// is saved again, the failure cannot be put back together, and lookup says why.
    #[test]
    fn a_snapshot_above_a_base_that_was_saved_again_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let k = key("one");
        let ready = save_as(&store, &k, "ready", |m| SnapshotMeta {
            created: now_secs() - 100,
            ..m
        });
        save_as(&store, &k, "failed-x", |m| SnapshotMeta {
            base: Some(ready.meta.as_base()),
            ..m
        });
        store
            .lookup("t", &name("failed-x"), &k)
            .expect("its base is there");
        save_as(&store, &k, "ready", |m| m);
        let text = store
            .lookup("t", &name("failed-x"), &k)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("lie above snapshot ready") && text.contains("saved again since"),
            "{text}"
        );
        store.remove("t", &name("ready")).unwrap();
        let text = store
            .lookup("t", &name("failed-x"), &k)
            .unwrap_err()
            .to_string();
        assert!(text.contains("which is gone"), "{text}");
    }

    /// The certificates come from the first boot: a fresh failure snapshot above a Ready
    /// snapshot 31 days old is as old as that.
    #[test]
    fn a_snapshot_inherits_the_age_of_its_first_boot() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let k = key("one");
        let ready = save_as(&store, &k, "ready", |m| SnapshotMeta {
            created: now_secs() - 31 * 86_400,
            ..m
        });
        save_as(&store, &k, "failed-x", |m| SnapshotMeta {
            base: Some(ready.meta.as_base()),
            ..m
        });
        let text = store
            .lookup("t", &name("failed-x"), &k)
            .unwrap_err()
            .to_string();
        assert!(text.contains("first saved 31 days ago"), "{text}");
    }

    #[test]
    fn failure_snapshots_beyond_the_budget_go_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let k = key("one");
        let note = |scenario: &str| FailureNote {
            run: "/r".into(),
            scenario: scenario.into(),
            failure: "x: timed out".into(),
        };
        let failed = |n: &str, age: u64, base: Option<BaseSnapshot>| {
            save_as(&store, &k, n, |m| SnapshotMeta {
                created: now_secs() - age,
                bytes: 100,
                failure: Some(note(n)),
                base,
                ..m
            })
        };
        save_as(&store, &k, "ready", |m| SnapshotMeta { bytes: 1000, ..m });
        failed("failed-old", 300, None);
        let middle = failed("failed-middle", 200, None);
        // A snapshot a user saved from a restored failure lies above it: that one stays.
        save_as(&store, &k, "mine", |m| SnapshotMeta {
            base: Some(middle.meta.as_base()),
            ..m
        });
        failed("failed-new", 100, None);
        failed("failed-newest", 50, None);
        let removed = store
            .prune_failures("t", 300, &name("failed-newest"))
            .unwrap();
        let removed: Vec<&str> = removed.iter().map(|s| s.meta.name.as_str()).collect();
        assert_eq!(removed, ["failed-old"], "the oldest goes; a base stays");
        let left: Vec<String> = store
            .list()
            .iter()
            .map(|s| s.meta.name.to_string())
            .collect();
        assert_eq!(
            left,
            [
                "failed-middle",
                "failed-new",
                "failed-newest",
                "mine",
                "ready"
            ],
            "the Ready snapshot and a user's never count"
        );
        let removed = store
            .prune_failures("t", 0, &name("failed-newest"))
            .unwrap();
        assert_eq!(
            removed.len(),
            1,
            "the one just saved stays, even over budget"
        );
    }

    #[test]
    fn a_killed_save_leaves_a_part_dir_the_next_save_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let dead = dir.path().join("t/.part-ready-999999999");
        std::fs::create_dir_all(&dead).unwrap();
        let part = store.begin("t", &name("ready")).unwrap();
        assert!(!dead.exists());
        assert!(part.exists());
        assert!(store.list().is_empty());
    }

    /// The store joins a name into its paths: one that reaches outside the lab's directory
    /// must not get that far (`remove("t", "..")` once removed every lab's snapshots).
    #[test]
    fn a_name_that_is_not_plain_is_refused_before_it_reaches_a_path() {
        for bad in ["..", ".", ".hidden", "", "a/b", "../t", "a b", "ready\n"] {
            let err = SnapshotName::new(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "snapshot name {bad:?}: expected letters, digits, '-', '_' or '.', not starting with '.'"
                )
            );
        }
        for good in ["ready", "incident-42", "before_upgrade.v2"] {
            assert_eq!(SnapshotName::new(good).unwrap().as_str(), good);
        }
        // Nor through a snapshot.json or a control request.
        let meta: Result<SnapshotMeta, _> = serde_json::from_str(
            r#"{"format":"f","lab":"t","name":"..","key":"k","inputs":[],"machines":[],"created":0,"save_secs":0,"bytes":0}"#,
        );
        assert!(meta
            .unwrap_err()
            .to_string()
            .contains("snapshot name \"..\""));
    }
}
