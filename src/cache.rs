//! `labtest cache [list|prune]`: what the cache holds, how big, and which entries are current.
//!
//! Current means still used: the fixture guest and Kubernetes build the lab's prepare step last
//! resolved to (`fixtures/lab/local/paths.json`), else the newest complete build of each kind;
//! for snapshots, those made from the key the lab's inputs made last (any other key can never
//! be restored, `SnapshotStore::lookup` refuses it). Prune removes the rest, plus what killed
//! builds and saves left; the Go build cache and downloaded packages are kept, they make the
//! next build fast.
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Result;
use harness::ready;

use crate::CacheCommand;

/// One thing in the cache.
struct Entry {
    path: PathBuf,
    what: String,
    current: bool,
}

pub fn command(lab_dir: &Path, action: CacheCommand) -> Result<ExitCode> {
    let root = ready::cache_dir();
    let snapshots = ready::snapshot_store();
    let entries = entries(&root, &snapshots, &referenced_builds(lab_dir));
    let (mut freed, mut total, mut old) = (0, 0, 0);
    println!("cache {}", root.display());
    for entry in &entries {
        let bytes = disk_usage(&entry.path);
        total += bytes;
        if !entry.current {
            old += bytes;
        }
        let state = if entry.current { "current" } else { "old" };
        match action {
            CacheCommand::List => println!(
                "  {:>10}  {:<8} {:<28} {}",
                mib(bytes),
                state,
                entry.what,
                entry.path.display()
            ),
            CacheCommand::Prune if !entry.current => match std::fs::remove_dir_all(&entry.path) {
                Ok(()) => {
                    freed += bytes;
                    println!("  removed {} ({})", entry.path.display(), mib(bytes));
                }
                Err(e) => eprintln!("labtest: could not remove {}: {e}", entry.path.display()),
            },
            CacheCommand::Prune => {}
        }
    }
    match action {
        CacheCommand::List => {
            println!(
                "  {} in all; `labtest cache prune` frees {}",
                mib(total),
                mib(old)
            );
        }
        CacheCommand::Prune => println!("freed {}", mib(freed)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Every guest, Kubernetes build, snapshot and leftover, with whether it is current.
fn entries(
    root: &Path,
    snapshots: &harness::snapshot::SnapshotStore,
    keep: &[PathBuf],
) -> Vec<Entry> {
    let mut out = Vec::new();
    for (kind, complete) in [("guest", ".complete"), ("kubernetes", "VERSION")] {
        let dir = root.join(kind);
        let builds: Vec<PathBuf> = subdirs(&dir)
            .into_iter()
            .filter(|d| d.join(complete).exists())
            .collect();
        let newest = builds
            .iter()
            .max_by_key(|d| modified(&d.join(complete)))
            .cloned();
        let pinned = builds.iter().any(|d| keep.contains(d));
        for build in builds {
            let current = if pinned {
                keep.contains(&build)
            } else {
                Some(&build) == newest.as_ref()
            };
            out.push(Entry {
                what: format!("{kind} build"),
                current,
                path: build,
            });
        }
        // Temp dirs of builds that were killed: the build scripts name them `.build-*` and
        // `.tmp-*`; one of a build running now is younger than an hour.
        for leftover in subdirs(&dir).into_iter().filter(|d| {
            d.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".build-") || n.starts_with(".tmp-"))
                && age_secs(d) > 3600
        }) {
            out.push(Entry {
                what: format!("{kind} build left half-done"),
                current: false,
                path: leftover,
            });
        }
    }
    for snapshot in snapshots.list() {
        let current = snapshots
            .current_key(&snapshot.meta.lab)
            .is_none_or(|key| key == snapshot.meta.key);
        out.push(Entry {
            what: format!("snapshot {} of {}", snapshot.meta.name, snapshot.meta.lab),
            current,
            path: snapshot.dir,
        });
    }
    for leftover in snapshots.leftovers() {
        out.push(Entry {
            what: "snapshot save left half-done".into(),
            current: false,
            path: leftover,
        });
    }
    out
}

/// The guest and Kubernetes dirs the lab's prepare step resolved to last, when it has one
/// (the fixture lab's `local/paths.json`).
fn referenced_builds(lab_dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(lab_dir.join("local/paths.json")) else {
        return Vec::new();
    };
    let Ok(paths) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    ["guest", "k8s"]
        .iter()
        .filter_map(|k| paths[k].as_str().map(PathBuf::from))
        .collect()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn age_secs(path: &Path) -> u64 {
    SystemTime::now()
        .duration_since(modified(path))
        .map_or(0, |d| d.as_secs())
}

/// Bytes on disk (allocated blocks: disk images are sparse), not apparent sizes.
fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return own;
    };
    own + entries
        .flatten()
        .map(|e| disk_usage(&e.path()))
        .sum::<u64>()
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}
