//! What the benches share: running the CLI as users do, and reading its event lines.
#![allow(dead_code)] // each bench uses its own part of this module

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `labtest --lab LAB ARGS` with the bench's own snapshot store and `env`; fails the bench when
/// it fails. Returns how long it took and everything it printed.
pub fn labtest(
    lab: &Path,
    snapshots: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Duration, String) {
    let (took, text, ok) = run(lab, snapshots, env, args);
    assert!(ok, "labtest {args:?} failed:\n{text}");
    (took, text)
}

/// [`labtest`] that may fail: also whether it succeeded.
pub fn run(
    lab: &Path,
    snapshots: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Duration, String, bool) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_labtest"))
        .env("LABTEST_SNAPSHOTS", snapshots)
        .env(
            "LABTEST_ACCEL",
            std::env::var("LABTEST_ACCEL").unwrap_or_else(|_| "auto".into()),
        )
        .envs(env.iter().copied())
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
pub fn at(text: &str, needle: &str) -> Option<f64> {
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

/// From the first QEMU start to the Ready snapshot saved, in an `up --fresh` log: boot, join,
/// readiness gate and the save.
pub fn boot_to_ready(log: &str, wall: Duration) -> f64 {
    let boot_at = at(log, "== boot ==").unwrap_or(0.0);
    let saved_at = at(log, "snapshot ready saved").unwrap_or(wall.as_secs_f64());
    saved_at - boot_at
}

/// The lab the benches use: `LABTEST_LAB`, else the fixture lab.
pub fn lab_dir() -> std::path::PathBuf {
    std::env::var_os("LABTEST_LAB")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lab"))
}
