//! How the fixture lab fares with fewer host CPUs, side by side in one run: for every host CPU
//! this process may use and for one (`LABTEST_HOST_CPUS`), a cold `labtest up --fresh`
//! (boot-to-Ready), then the Ready lab left to settle for 120 s and idle for 60 s while its QEMUs'
//! CPU time is read from /proc, then `labtest down`. Prints a row per boot: host CPUs,
//! boot-to-Ready (or why it failed), idle CPU per machine and in total, in percent of one host
//! core, the lab's QEMU wake-ups a second (what that idle CPU follows under TCG), and a line per
//! CPU count with how many boots got Ready.
//!
//! `cargo bench --bench hostcpus` (fixture lab, TCG here; `LABTEST_LAB` for another lab). Each
//! Ready snapshot goes to a temporary `LABTEST_SNAPSHOTS`, so the cache's own is left alone.
//! `LABTEST_BENCH_CPUS=1` (a comma-separated list) picks the CPU counts, `LABTEST_BENCH_BOOTS=5`
//! boots each that many times: issue 21's "5 of 5 cold boots Ready on one CPU" is
//! `LABTEST_BENCH_CPUS=1 LABTEST_BENCH_BOOTS=5 cargo bench --bench hostcpus`.
mod common;

use std::path::Path;
use std::time::Duration;

use common::{boot_to_ready, lab_dir, labtest, run};
use harness::vm::cpus::allowed_cpus;
use harness::vm::sample::{qemu_use, QemuReading};

/// How long the Ready lab idles while its CPU is measured.
const IDLE: Duration = Duration::from_secs(60);
/// How long the lab settles after Ready before that: right after Ready the nodes still pull
/// their pod specs, the controllers resync and the apiserver compacts (2026-12-04: 102 % of a
/// host core over the first minute, 80 % minutes later).
const SETTLE: Duration = Duration::from_secs(120);

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

/// One machine's idle: CPU in percent of one host core, and its QEMU's wake-ups a second.
struct Idle {
    machine: String,
    cpu_pct: f64,
    wakeups_per_sec: f64,
}

/// One row of the table: boot-to-Ready and each machine's idle, or why the boot failed.
struct Row {
    cpus: usize,
    outcome: Result<(f64, Vec<Idle>), String>,
}

fn measure(lab: &Path, cpus: usize) -> Row {
    let snapshots = tempfile::tempdir().expect("temp dir");
    let n = cpus.to_string();
    let env = [("LABTEST_HOST_CPUS", n.as_str())];
    // A lab left up by an earlier run would hold the session: nothing up is the usual case.
    let _ = run(lab, snapshots.path(), &env, &["down"]);
    let (wall, log, ok) = run(lab, snapshots.path(), &env, &["up", "--fresh"]);
    if !ok {
        let _ = run(lab, snapshots.path(), &env, &["down"]);
        let why = log
            .lines()
            .find(|l| l.contains("run ABORTED") || l.contains("error:"))
            .unwrap_or("no error line")
            .trim()
            .to_string();
        eprintln!(
            "boot on {cpus} CPU(s) failed after {:.0} s:\n{log}",
            wall.as_secs_f64()
        );
        return Row {
            cpus,
            outcome: Err(why),
        };
    }
    let ready = boot_to_ready(&log, wall);
    std::thread::sleep(SETTLE);
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
            let (cpu_pct, wakeups_per_sec) = match (before, QemuReading::read(*pid)) {
                (Some(a), Some(b)) => {
                    let used = qemu_use(&a, &b);
                    (used.cpu_pct, used.wakeups_per_sec)
                }
                _ => (f64::NAN, f64::NAN),
            };
            Idle {
                machine: machine.clone(),
                cpu_pct,
                wakeups_per_sec,
            }
        })
        .collect();
    labtest(lab, snapshots.path(), &env, &["down"]);
    Row {
        cpus,
        outcome: Ok((ready, idle)),
    }
}

/// `LABTEST_BENCH_CPUS` (comma-separated), else every allowed CPU and one.
fn cpu_counts() -> Vec<usize> {
    if let Ok(list) = std::env::var("LABTEST_BENCH_CPUS") {
        return list
            .split(',')
            .map(|n| {
                n.trim().parse().unwrap_or_else(|_| {
                    panic!("LABTEST_BENCH_CPUS: expected CPU counts like 2,1; saw {list:?}")
                })
            })
            .collect();
    }
    let all = allowed_cpus(0).map_or(1, |c| c.len());
    if all > 1 {
        vec![all, 1]
    } else {
        vec![all]
    }
}

fn main() {
    let lab = lab_dir();
    let boots: usize = std::env::var("LABTEST_BENCH_BOOTS").map_or(1, |n| {
        n.parse()
            .unwrap_or_else(|_| panic!("LABTEST_BENCH_BOOTS: expected a number, saw {n:?}"))
    });
    let counts = cpu_counts();
    let mut rows = Vec::new();
    for &n in &counts {
        for boot in 1..=boots {
            eprintln!("hostcpus: {n} CPU(s), cold boot {boot} of {boots}");
            rows.push(measure(&lab, n));
        }
    }
    println!("lab {}", lab.display());
    let mut machines: Vec<String> = rows
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok())
        .flat_map(|(_, idle)| idle.iter().map(|i| i.machine.clone()))
        .collect();
    machines.sort();
    machines.dedup();
    let mut header = format!("{:>9}  {:>15}", "host CPUs", "boot-to-Ready s");
    for m in &machines {
        header.push_str(&format!("  {:>20}", format!("idle {m} %")));
    }
    println!("{header}  {:>12}  {:>10}", "idle total %", "wake-ups/s");
    for row in &rows {
        match &row.outcome {
            Ok((ready, idle)) => {
                let mut line = format!("{:>9}  {ready:>15.1}", row.cpus);
                for m in &machines {
                    let pct = idle
                        .iter()
                        .find(|i| &i.machine == m)
                        .map_or(f64::NAN, |i| i.cpu_pct);
                    line.push_str(&format!("  {pct:>20.1}"));
                }
                let total: f64 = idle.iter().map(|i| i.cpu_pct).sum();
                let woke: f64 = idle.iter().map(|i| i.wakeups_per_sec).sum();
                println!("{line}  {total:>12.1}  {woke:>10.0}");
            }
            Err(why) => println!("{:>9}  {:>15}  {why}", row.cpus, "not Ready"),
        }
    }
    for &n in &counts {
        let of_n: Vec<&Row> = rows.iter().filter(|r| r.cpus == n).collect();
        let ready = of_n.iter().filter(|r| r.outcome.is_ok()).count();
        println!(
            "{n} host CPU(s): {ready} of {} cold boots Ready",
            of_n.len()
        );
    }
    println!(
        "(idle: the Ready lab's QEMUs over {} s after {} s settling, in percent of one host core; \
         wake-ups: all their threads' context switches a second)",
        IDLE.as_secs(),
        SETTLE.as_secs()
    );
}
