//! Boot overhead and command round trip of the VM layer, against raw QEMU on the same guest.
//!
//! `cargo bench -p harness --bench vm` builds (or reuses) the fixture guest, then prints, side by
//! side: raw QEMU start -> the guest's ready marker on the serial console, and harness start -> the
//! guest channel answering; then the median round trip of a trivial command. Targets under TCG:
//! overhead <= 10 %, median round trip <= 10 ms.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::events::Events;
use harness::vm::{Accel, Machine, MachineBuilder};

const BOOTS: usize = 5;
const COMMANDS: usize = 300;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn last_line(mut command: Command) -> String {
    let out = command.output().expect("script runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Raw QEMU: the same run script and devices, nobody connected; time until the marker.
fn raw_boot(script: &Path, state: &Path) -> Duration {
    let _ = std::fs::remove_dir_all(state);
    std::fs::create_dir_all(state.join("tmp")).unwrap();
    let start = Instant::now();
    let mut args = vec!["-device".to_string(), "virtio-serial-pci,id=ltser".into()];
    for port in ["shell", "ctl"] {
        args.push("-chardev".into());
        args.push(format!(
            "socket,id=lt-{port},path={}/{port}.sock,server=on,wait=off",
            state.display()
        ));
        args.push("-device".into());
        args.push(format!(
            "virtserialport,bus=ltser.0,chardev=lt-{port},name=labtest.{port}"
        ));
    }
    let mut child = Command::new(script)
        .current_dir(state)
        .env("NIX_DISK_IMAGE", state.join("disk.qcow2"))
        .env("TMPDIR", state.join("tmp"))
        .env("USE_TMPDIR", "1")
        .env("QEMU_OPTS", Accel::Tcg.qemu_opts())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run script starts");
    let reader = BufReader::new(child.stdout.take().unwrap());
    let mut took = None;
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if line.contains("labtest-shell: labtest.shell ready") {
            took = Some(start.elapsed());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    took.expect("raw boot reached the marker")
}

fn main() {
    let guest = last_line(Command::new(repo().join("fixtures/guest/build.sh")));
    let runs = tempfile::tempdir().unwrap();
    let mut mk = Command::new(repo().join("fixtures/guest/mkrunvm.sh"));
    mk.args([
        runs.path().to_str().unwrap(),
        "bench",
        "10.77.0.10/24",
        "bench=10.77.0.10",
        "512",
    ])
    .env("LABTEST_GUEST_DIR", &guest);
    let script = PathBuf::from(last_line(mk));
    let rt = tokio::runtime::Runtime::new().unwrap();

    let mut raw = Vec::new();
    let mut ours = Vec::new();
    for i in 0..BOOTS {
        let r = raw_boot(&script, &runs.path().join(format!("raw{i}")));
        let config = MachineBuilder::new("bench", &script, runs.path().join(format!("h{i}")))
            .accel(Accel::Tcg)
            .boot_timeout(Duration::from_secs(120))
            .config();
        let machine = Machine::new(config, Events::discard()).expect("machine");
        // BootInfo::took is QEMU start -> the guest channel's first answer.
        let boot = rt.block_on(machine.start()).expect("harness boot");
        ours.push(boot.took);
        raw.push(r);
        println!(
            "boot {i}: raw QEMU to marker {:>6.2}s | harness to channel {:>6.2}s",
            r.as_secs_f64(),
            ours[i].as_secs_f64()
        );
        if i + 1 == BOOTS {
            round_trips(&rt, &machine);
        }
    }
    let (r, h) = (median(raw), median(ours));
    println!(
        "median over {BOOTS} boots: raw {:.2}s, harness {:.2}s, overhead {:+.1}% (target <= 10%)",
        r.as_secs_f64(),
        h.as_secs_f64(),
        (h.as_secs_f64() / r.as_secs_f64() - 1.0) * 100.0
    );
}

fn round_trips(rt: &tokio::runtime::Runtime, machine: &Machine) {
    for (label, command) in [
        ("builtin `true`", "true"),
        ("`/bin/true` (a process start)", "/bin/true"),
    ] {
        let mut times = Vec::with_capacity(COMMANDS);
        rt.block_on(async {
            for _ in 0..COMMANDS {
                let start = Instant::now();
                machine
                    .exec(command, Duration::from_secs(10))
                    .await
                    .expect("exec");
                times.push(start.elapsed());
            }
        });
        times.sort();
        println!(
            "round trip of {label} over {COMMANDS}: median {:.2} ms, p90 {:.2} ms, max {:.2} ms (target median <= 10 ms)",
            times[COMMANDS / 2].as_secs_f64() * 1e3,
            times[COMMANDS * 9 / 10].as_secs_f64() * 1e3,
            times[COMMANDS - 1].as_secs_f64() * 1e3
        );
    }
}
