//! Cold boot-to-Ready against restore-to-Ready, side by side in one run, through the CLI as users
//! run it: `labtest up --fresh` (build check, boot, join, readiness gate, save the snapshot) and
//! then `labtest up` (restore every machine, re-check the gate). Prints both, their ratio, the
//! restore floor (machines loaded and answering) and the snapshot's size on disk.
//!
//! `cargo bench --bench snapshot` (fixture lab, TCG here; `LABTEST_LAB` for another lab). The
//! snapshot goes to a temporary `LABTEST_SNAPSHOTS`, so the cache's own is left alone.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn labtest(lab: &Path, snapshots: &Path, args: &[&str]) -> (Duration, String) {
    let (took, text, ok) = run(lab, snapshots, args);
    assert!(ok, "labtest {args:?} failed:\n{text}");
    (took, text)
}

fn run(lab: &Path, snapshots: &Path, args: &[&str]) -> (Duration, String, bool) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_labtest"))
        .env("LABTEST_SNAPSHOTS", snapshots)
        .env(
            "LABTEST_ACCEL",
            std::env::var("LABTEST_ACCEL").unwrap_or_else(|_| "auto".into()),
        )
        .arg("--lab")
        .arg(lab)
        .args(args)
        .output()
        .expect("labtest runs");
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (took, text, out.status.success())
}

/// The elapsed seconds of the first event line containing `needle` (`[  1m02s] ...`).
fn at(text: &str, needle: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains(needle))?;
    let stamp = line
        .trim_start()
        .strip_prefix('[')?
        .split(']')
        .next()?
        .trim();
    let (min, sec) = match stamp.split_once('m') {
        Some((m, s)) => (
            m.parse::<f64>().ok()?,
            s.trim_end_matches('s').parse::<f64>().ok()?,
        ),
        None => (0.0, stamp.trim_end_matches('s').parse::<f64>().ok()?),
    };
    Some(min * 60.0 + sec)
}

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
    let lab: PathBuf = std::env::var_os("LABTEST_LAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lab"));
    let snapshots = tempfile::tempdir().expect("temp dir");
    // A lab left up by an earlier run would hold the session: nothing up is the usual case.
    let _ = run(&lab, snapshots.path(), &["down"]);

    let (cold, cold_log) = labtest(&lab, snapshots.path(), &["up", "--fresh"]);
    let boot_at = at(&cold_log, "== boot ==").unwrap_or(0.0);
    let saved_at = at(&cold_log, "snapshot ready saved").unwrap_or(cold.as_secs_f64());
    labtest(&lab, snapshots.path(), &["down"]);

    let (warm, warm_log) = labtest(&lab, snapshots.path(), &["up"]);
    let restore_boot_at = at(&warm_log, "== boot ==").unwrap_or(0.0);
    let ready_at = at(&warm_log, "lab restored from snapshot").unwrap_or(0.0);
    let readiness_done = warm.as_secs_f64();
    labtest(&lab, snapshots.path(), &["down"]);

    let size = dir_size(snapshots.path());
    let cold_ready = saved_at - boot_at;
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
