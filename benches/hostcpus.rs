//! How the fixture lab fares with fewer host CPUs, side by side in one run: for every host CPU
//! this process may use and for one (`LABTEST_HOST_CPUS`), a cold `labtest up --fresh`
//! (boot-to-Ready), then the Ready lab left idle for 60 s while its QEMUs' CPU time is read from
//! /proc, then `labtest down`. Prints a table: host CPUs, boot-to-Ready, idle CPU per machine
//! and in total, in percent of one host core.
//!
//! `cargo bench --bench hostcpus` (fixture lab, TCG here; `LABTEST_LAB` for another lab). Each
//! Ready snapshot goes to a temporary `LABTEST_SNAPSHOTS`, so the cache's own is left alone.
mod common;

use std::path::Path;
use std::time::Duration;

use common::{boot_to_ready, lab_dir, labtest, run};
use harness::vm::cpus::allowed_cpus;
use harness::vm::sample::{qemu_use, QemuReading};

/// How long the Ready lab idles while its CPU is measured.
const IDLE: Duration = Duration::from_secs(60);

/// The QEMUs of the lab whose state dir is `state`: (machine, pid), from their command lines
/// (`<state>/machines/<machine>/qmp.sock`).
fn qemus_of(state: &str) -> Vec<(String, u32)> {
    let marker = format!("{state}/machines/");
    let mut found: Vec<(String, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !cmdline.starts_with("qemu-system") && !cmdline.contains("/qemu-system") {
                return None;
            }
            let rest = &cmdline[cmdline.find(&marker)? + marker.len()..];
            Some((rest.split('/').next()?.to_string(), pid))
        })
        .collect();
    found.sort();
    found
}

/// One row of the table: boot-to-Ready and each machine's idle CPU.
struct Row {
    cpus: usize,
    ready: f64,
    idle: Vec<(String, f64)>,
}

fn measure(lab: &Path, cpus: usize) -> Row {
    let snapshots = tempfile::tempdir().expect("temp dir");
    let n = cpus.to_string();
    let env = [("LABTEST_HOST_CPUS", n.as_str())];
    // A lab left up by an earlier run would hold the session: nothing up is the usual case.
    let _ = run(lab, snapshots.path(), &env, &["down"]);
    let (wall, log) = labtest(lab, snapshots.path(), &env, &["up", "--fresh"]);
    let ready = boot_to_ready(&log, wall);
    let (_, status) = labtest(lab, snapshots.path(), &env, &["status"]);
    let state = status
        .split("state ")
        .nth(1)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no state dir in `labtest status`:\n{status}"));
    let qemus = qemus_of(&state);
    assert!(!qemus.is_empty(), "no QEMU of the lab in {state}");
    let before: Vec<Option<QemuReading>> = qemus
        .iter()
        .map(|(_, pid)| QemuReading::read(*pid))
        .collect();
    std::thread::sleep(IDLE);
    let idle = qemus
        .iter()
        .zip(before)
        .map(|((machine, pid), before)| {
            let pct = match (before, QemuReading::read(*pid)) {
                (Some(a), Some(b)) => qemu_use(&a, &b).cpu_pct,
                _ => f64::NAN,
            };
            (machine.clone(), pct)
        })
        .collect();
    labtest(lab, snapshots.path(), &env, &["down"]);
    Row { cpus, ready, idle }
}

fn main() {
    let lab = lab_dir();
    let all = allowed_cpus(0).map_or(1, |c| c.len());
    let mut counts = vec![all];
    if all > 1 {
        counts.push(1);
    }
    let rows: Vec<Row> = counts.into_iter().map(|n| measure(&lab, n)).collect();
    println!("lab {}", lab.display());
    let machines: Vec<String> = rows[0].idle.iter().map(|(m, _)| m.clone()).collect();
    let mut header = format!("{:>9}  {:>15}", "host CPUs", "boot-to-Ready s");
    for m in &machines {
        header.push_str(&format!("  {:>20}", format!("idle {m} %")));
    }
    println!("{header}  {:>12}", "idle total %");
    for row in &rows {
        let mut line = format!("{:>9}  {:>15.1}", row.cpus, row.ready);
        for m in &machines {
            let pct = row
                .idle
                .iter()
                .find(|(name, _)| name == m)
                .map_or(f64::NAN, |(_, p)| *p);
            line.push_str(&format!("  {pct:>20.1}"));
        }
        let total: f64 = row.idle.iter().map(|(_, p)| p).sum();
        println!("{line}  {total:>12.1}");
    }
    println!(
        "(idle: the Ready lab's QEMUs over {} s, in percent of one host core)",
        IDLE.as_secs()
    );
}
