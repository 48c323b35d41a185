//! Cold boot-to-Ready against restore-to-Ready, side by side in one run, through the CLI as users
//! run it: `labtest up --fresh` (build check, boot, join, readiness gate, save the snapshot) and
//! then `labtest up` (restore every machine, re-check the gate). Prints both, their ratio, the
//! restore floor (machines loaded and answering) and the snapshot's size on disk.
//!
//! `cargo bench --bench snapshot` (fixture lab, TCG here; `LABTEST_LAB` for another lab). The
//! snapshot goes to a temporary `LABTEST_SNAPSHOTS`, so the cache's own is left alone.
mod common;

use std::path::Path;

use common::{at, boot_to_ready, lab_dir, labtest, run};

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn main() {
    let lab = lab_dir();
    let snapshots = tempfile::tempdir().expect("temp dir");
    // A lab left up by an earlier run would hold the session: nothing up is the usual case.
    let _ = run(&lab, snapshots.path(), &[], &["down"]);

    let (cold, cold_log) = labtest(&lab, snapshots.path(), &[], &["up", "--fresh"]);
    let cold_ready = boot_to_ready(&cold_log, cold);
    labtest(&lab, snapshots.path(), &[], &["down"]);

    let (warm, warm_log) = labtest(&lab, snapshots.path(), &[], &["up"]);
    let restore_boot_at = at(&warm_log, "== boot ==").unwrap_or(0.0);
    let ready_at = at(&warm_log, "lab restored from snapshot").unwrap_or(0.0);
    let readiness_done = warm.as_secs_f64();
    labtest(&lab, snapshots.path(), &[], &["down"]);

    let size = dir_size(snapshots.path());
    let warm_ready = readiness_done - restore_boot_at;
    println!("lab {}", lab.display());
    println!("cold:    boot start -> Ready (gate passed) + snapshot saved  {cold_ready:>8.1} s   (`up --fresh` wall {:.1} s)", cold.as_secs_f64());
    println!("restore: boot start -> Ready (gate re-checked)             {warm_ready:>8.1} s   (`up` wall {:.1} s)", warm.as_secs_f64());
    println!(
        "floor:   every machine loaded and answering                 {:>8.1} s",
        ready_at - restore_boot_at
    );
    println!(
        "ratio:   cold / restore                                     {:>8.1} x",
        cold_ready / warm_ready.max(0.001)
    );
    println!(
        "snapshot on disk                                            {:>8.0} MiB",
        size as f64 / (1024.0 * 1024.0)
    );
}
