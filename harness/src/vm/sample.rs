//! Where a machine's CPU goes, read from `/proc`: its QEMU process on the host (the process, each
//! vCPU thread, their wake-ups, its RSS), the host as a whole, and the guest's own `/proc` over
//! the guest channel ([`GUEST_COMMAND`], parsed by [`GuestReading::parse`]).
//!
//! Every figure is a delta between two readings, so each probe keeps the previous one: the first
//! reading of a probe is a baseline and yields nothing. The pure halves ([`qemu_use`],
//! [`guest_use`], the parsers) are what the unit tests pin, on `/proc` text captured from a real
//! QEMU and a real guest (`testdata/`).
use std::collections::HashMap;
use std::time::Instant;

use crate::events::{GuestUse, ProcessUse, QemuUse};

/// The unit of every tick count in `/proc` (`USER_HZ`): 100 on every architecture labs run on.
/// The guest's figures do not depend on it (they are shares of the guest's own tick totals).
pub const USER_HZ: f64 = 100.0;

/// How many of the guest's busiest processes a sample keeps.
pub const TOP_PROCESSES: usize = 5;

/// The guest half of a sample: one bash command, builtins but for a single `cat`, so it costs
/// the guest little (runs in the guest channel's subshell, see vm-configs/guest/labtest-shell).
/// It prints the `cpu` lines of /proc/stat, the 1-minute load, MemAvailable, every process's
/// stat line, and last its own stat line (`self`), whose children's times include the `cat`:
/// what the sample cost the guest.
pub const GUEST_COMMAND: &str = "while read -r l; do case $l in cpu*) echo \"$l\";; *) break;; esac; done </proc/stat; \
read -r l _ </proc/loadavg; echo \"load $l\"; \
while read -r k v _; do [ \"$k\" = MemAvailable: ] && { echo \"mem $v\"; break; }; done </proc/meminfo; \
cat /proc/[0-9]*/stat 2>/dev/null; read -r s </proc/$BASHPID/stat; echo \"self $s\"";

/// The ticks of a `cpu` line of /proc/stat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks in user mode.
    pub user: u64,
    /// Ticks in user mode, niced.
    pub nice: u64,
    /// Ticks in the kernel.
    pub system: u64,
    /// Ticks idle.
    pub idle: u64,
    /// Ticks waiting for I/O.
    pub iowait: u64,
    /// Ticks serving interrupts.
    pub irq: u64,
    /// Ticks serving soft interrupts.
    pub softirq: u64,
    /// Ticks taken by the hypervisor.
    pub steal: u64,
}

impl CpuTimes {
    /// The all-CPU line (`cpu  user nice system ...`) of /proc/stat text, and how many CPUs it
    /// sums (the `cpuN` lines).
    pub fn parse_proc_stat(text: &str) -> Option<(CpuTimes, u32)> {
        let mut total = None;
        let mut cpus = 0;
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("cpu") => {
                    let v: Vec<u64> = fields.take(8).map_while(|f| f.parse().ok()).collect();
                    // Kernels before 2.6.11 had no steal field; none older runs here.
                    if v.len() < 8 {
                        return None;
                    }
                    total = Some(CpuTimes {
                        user: v[0],
                        nice: v[1],
                        system: v[2],
                        idle: v[3],
                        iowait: v[4],
                        irq: v[5],
                        softirq: v[6],
                        steal: v[7],
                    });
                }
                Some(k) if k.starts_with("cpu") => cpus += 1,
                _ => {}
            }
        }
        total.map(|t| (t, cpus))
    }

    fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }

    /// Ticks from `earlier` to `self`, field by field (a counter that went backwards - a
    /// different boot - counts as zero).
    fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            nice: self.nice.saturating_sub(earlier.nice),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            iowait: self.iowait.saturating_sub(earlier.iowait),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// One /proc/PID/stat (or task stat) line: who, and the CPU ticks it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStat {
    /// The process (or thread) id.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// utime + stime.
    pub ticks: u64,
    /// cutime + cstime: its waited-for children's.
    pub child_ticks: u64,
}

impl TaskStat {
    /// Parses a stat line. The command name (in parentheses) may hold spaces and parentheses,
    /// so the fields are counted from its last `)`.
    pub fn parse(line: &str) -> Option<TaskStat> {
        let open = line.find('(')?;
        let close = line.rfind(')')?;
        let pid = line[..open].trim().parse().ok()?;
        let comm = line.get(open + 1..close)?.to_string();
        // After the name: state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime(14) stime cutime cstime.
        let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
        let field = |n: usize| rest.get(n - 3)?.parse::<u64>().ok();
        Some(TaskStat {
            pid,
            comm,
            ticks: field(14)? + field(15)?,
            child_ticks: field(16)? + field(17)?,
        })
    }
}

/// `VmRSS` of /proc/PID/status, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status_number(status, "VmRSS:")
}

/// A thread's context switches from its /proc/PID/task/TID/status, voluntary and not: under TCG
/// every guest timer wakes a vCPU thread from halt, so their rate is what an idle lab's CPU
/// costs follow (and what a regression in the guests' timers moves first).
pub fn parse_ctxt_switches(status: &str) -> Option<u64> {
    Some(
        status_number(status, "voluntary_ctxt_switches:")?
            + status_number(status, "nonvoluntary_ctxt_switches:")?,
    )
}

/// The number after `key` on its line of a /proc status file.
fn status_number(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The vCPU index of a QEMU thread, from the name QEMU gives it with `-name debug-threads=on`
/// (`CPU 1/TCG`, `CPU 0/KVM`); `None` for its other threads.
fn vcpu_index(comm: &str) -> Option<usize> {
    let (index, accel) = comm.strip_prefix("CPU ")?.split_once('/')?;
    (!accel.is_empty()).then_some(())?;
    index.parse().ok()
}

/// A QEMU process read once: its ticks, its threads' and its RSS.
#[derive(Debug, Clone)]
pub struct QemuReading {
    /// When it was read.
    pub at: Instant,
    /// The whole process.
    pub process: TaskStat,
    /// Each thread (vCPUs, I/O).
    pub threads: Vec<TaskStat>,
    /// Each thread's context switches ([`parse_ctxt_switches`]), by thread id. Per thread because
    /// the process's own status counts only its main thread's.
    pub switches: HashMap<u32, u64>,
    /// Its resident memory, KiB.
    pub rss_kib: u64,
}

impl QemuReading {
    /// Reads /proc/PID/{stat,status,task/*/{stat,status}}; `None` when the process is gone.
    pub fn read(pid: u32) -> Option<QemuReading> {
        let at = Instant::now();
        let process = TaskStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let mut threads = Vec::new();
        let mut switches = HashMap::new();
        // A thread that ended since the listing is simply not counted.
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let path = task.path();
            let Some(thread) = std::fs::read_to_string(path.join("stat"))
                .ok()
                .and_then(|line| TaskStat::parse(&line))
            else {
                continue;
            };
            if let Some(n) = std::fs::read_to_string(path.join("status"))
                .ok()
                .and_then(|status| parse_ctxt_switches(&status))
            {
                switches.insert(thread.pid, n);
            }
            threads.push(thread);
        }
        Some(QemuReading {
            at,
            process,
            threads,
            switches,
            rss_kib: parse_vm_rss_kib(&status).unwrap_or(0),
        })
    }
}

/// The QEMU's use of the host between two readings of the same process.
pub fn qemu_use(earlier: &QemuReading, later: &QemuReading) -> QemuUse {
    let secs = later.at.duration_since(earlier.at).as_secs_f64().max(1e-3);
    let pct = |ticks: u64| round1(ticks as f64 / USER_HZ / secs * 100.0);
    // A thread the earlier reading lacks started in between: all its switches are new. One the
    // later reading lacks ended (or its status vanished): its switches are not counted.
    let switched = |tid: u32| {
        let now = later.switches.get(&tid).copied().unwrap_or(0);
        now.saturating_sub(earlier.switches.get(&tid).copied().unwrap_or(0))
    };
    let per_sec = |switches: u64| (switches as f64 / secs).round();
    let mut vcpus: Vec<(usize, f64, f64)> = later
        .threads
        .iter()
        .filter_map(|t| {
            let index = vcpu_index(&t.comm)?;
            // A thread the earlier reading lacks started in between: all its ticks are new.
            let before = earlier
                .threads
                .iter()
                .find(|e| e.pid == t.pid)
                .map_or(0, |e| e.ticks);
            Some((
                index,
                pct(t.ticks.saturating_sub(before)),
                per_sec(switched(t.pid)),
            ))
        })
        .collect();
    vcpus.sort_by_key(|(index, _, _)| *index);
    QemuUse {
        cpu_pct: pct(later.process.ticks.saturating_sub(earlier.process.ticks)),
        vcpu_pct: vcpus.iter().map(|(_, pct, _)| *pct).collect(),
        rss_mib: round1(later.rss_kib as f64 / 1024.0),
        wakeups_per_sec: per_sec(later.switches.keys().map(|&tid| switched(tid)).sum()),
        vcpu_wakeups_per_sec: vcpus.iter().map(|(_, _, woke)| *woke).collect(),
    }
}

/// One QEMU process sampled again and again; a new pid (the machine was started again) starts
/// a new baseline.
#[derive(Debug, Default)]
pub struct QemuProbe {
    last: Option<QemuReading>,
}

impl QemuProbe {
    /// The use since the last call for the same pid; `None` for a baseline or a gone process.
    pub fn sample(&mut self, pid: u32) -> Option<QemuUse> {
        let now = QemuReading::read(pid);
        let earlier = std::mem::replace(&mut self.last, now);
        match (earlier, &self.last) {
            (Some(earlier), Some(later)) if earlier.process.pid == later.process.pid => {
                Some(qemu_use(&earlier, later))
            }
            _ => None,
        }
    }
}

/// The host's /proc/stat, sampled again and again: the steal share since the last call.
#[derive(Debug, Default)]
pub struct HostProbe {
    last: Option<CpuTimes>,
}

impl HostProbe {
    /// `(steal %, CPUs online)`; the steal is `None` on the first call (a baseline).
    pub fn sample(&mut self) -> Option<(Option<f64>, u32)> {
        let (now, online) =
            CpuTimes::parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let steal = self.last.replace(now).map(|earlier| {
            let d = now.since(&earlier);
            round1(share(d.steal, d.total()))
        });
        Some((steal, online))
    }
}

/// What [`GUEST_COMMAND`] printed, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestReading {
    /// All CPUs' ticks together.
    pub cpu: CpuTimes,
    /// How many CPUs the guest has.
    pub cpus: u32,
    /// The one-minute load average.
    pub load1: f64,
    /// `MemAvailable`, KiB.
    pub mem_avail_kib: u64,
    /// Every process's line.
    pub processes: Vec<TaskStat>,
    /// The sampling command's own ticks, its `cat` included.
    pub cost_ticks: u64,
}

impl GuestReading {
    /// # Errors
    /// What is missing from the output, for the sample's `guest_missing` note.
    pub fn parse(text: &str) -> Result<GuestReading, String> {
        let (cpu, cpus) = CpuTimes::parse_proc_stat(text)
            .ok_or("expected the cpu line of /proc/stat in the guest's sample")?;
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .map(str::trim)
        };
        let load1 = value("load")
            .and_then(|v| v.parse().ok())
            .ok_or("expected the guest's load average")?;
        let mem_avail_kib = value("mem")
            .and_then(|v| v.parse().ok())
            .ok_or("expected the guest's MemAvailable")?;
        let own = value("self")
            .and_then(TaskStat::parse)
            .ok_or("expected the sampling command's own stat line")?;
        let processes = text
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
            .filter_map(TaskStat::parse)
            .collect();
        Ok(GuestReading {
            cpu,
            cpus: cpus.max(1),
            load1,
            mem_avail_kib,
            processes,
            cost_ticks: own.ticks + own.child_ticks,
        })
    }
}

/// The guest's use between two of its readings: shares of its CPU time, and its busiest
/// processes in percent of one vCPU. `None` when `later` is not after `earlier` (the guest
/// rebooted in between: its counters started again).
pub fn guest_use(earlier: &GuestReading, later: &GuestReading) -> Option<GuestUse> {
    if later.cpu.total() <= earlier.cpu.total() {
        return None;
    }
    let d = later.cpu.since(&earlier.cpu);
    let total = d.total();
    // Ticks one vCPU had in the interval: the guest's own clock, whatever the host's did.
    let per_vcpu = total as f64 / f64::from(later.cpus);
    let of_vcpu = |ticks: u64| {
        if per_vcpu > 0.0 {
            round1(ticks as f64 / per_vcpu * 100.0)
        } else {
            0.0
        }
    };
    let before: HashMap<(u32, &str), u64> = earlier
        .processes
        .iter()
        .map(|p| ((p.pid, p.comm.as_str()), p.ticks))
        .collect();
    // Per command name, as `top` groups what a person recognises (several kubelet threads'
    // processes are one kubelet; a pid reused by another command is another process).
    let mut by_comm: Vec<(String, u64)> = Vec::new();
    for p in &later.processes {
        let used = p
            .ticks
            .saturating_sub(before.get(&(p.pid, p.comm.as_str())).copied().unwrap_or(0));
        if used == 0 {
            continue;
        }
        match by_comm.iter_mut().find(|(c, _)| *c == p.comm) {
            Some((_, ticks)) => *ticks += used,
            None => by_comm.push((p.comm.clone(), used)),
        }
    }
    by_comm.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Some(GuestUse {
        user: round1(share(d.user + d.nice, total)),
        system: round1(share(d.system + d.irq + d.softirq, total)),
        iowait: round1(share(d.iowait, total)),
        steal: round1(share(d.steal, total)),
        load1: later.load1,
        mem_avail_mib: round1(later.mem_avail_kib as f64 / 1024.0),
        top: by_comm
            .into_iter()
            .take(TOP_PROCESSES)
            .map(|(comm, ticks)| ProcessUse {
                comm,
                pct: of_vcpu(ticks),
            })
            .collect(),
        cost_pct: of_vcpu(later.cost_ticks),
    })
}

fn share(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 / total as f64 * 100.0
    }
}

/// One decimal: enough for a percentage, and the event log stays readable.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const QEMU_STAT: &str = include_str!("testdata/qemu-stat.txt");
    const QEMU_STATUS: &str = include_str!("testdata/qemu-status.txt");
    const QEMU_TASKS: &str = include_str!("testdata/qemu-tasks.txt");
    const HOST_STAT: &str = include_str!("testdata/host-stat.txt");
    const GUEST_1: &str = include_str!("testdata/guest-sample-1.txt");
    const GUEST_2: &str = include_str!("testdata/guest-sample-2.txt");

    #[test]
    fn a_qemu_process_and_its_threads_parse() {
        let process = TaskStat::parse(QEMU_STAT).expect("qemu stat");
        assert_eq!(process.comm, "qemu-system-x86");
        let threads: Vec<TaskStat> = QEMU_TASKS.lines().filter_map(TaskStat::parse).collect();
        assert_eq!(threads.len(), 4);
        let vcpus: Vec<(usize, u64)> = threads
            .iter()
            .filter_map(|t| Some((vcpu_index(&t.comm)?, t.ticks)))
            .collect();
        assert_eq!(vcpus, [(0, 214), (1, 8)]);
        assert_eq!(parse_vm_rss_kib(QEMU_STATUS), Some(97_304));
        assert_eq!(parse_ctxt_switches(QEMU_STATUS), Some(492 + 579));
    }

    #[test]
    fn context_switches_need_both_counts() {
        assert_eq!(
            parse_ctxt_switches("voluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t3\n"),
            Some(10)
        );
        assert_eq!(parse_ctxt_switches("voluntary_ctxt_switches:\t7\n"), None);
        assert_eq!(
            parse_ctxt_switches("nonvoluntary_ctxt_switches:\t3\n"),
            None,
            "the involuntary line is not the voluntary one"
        );
        assert_eq!(
            parse_ctxt_switches("voluntary_ctxt_switches:\tx\nnonvoluntary_ctxt_switches:\t3\n"),
            None
        );
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_one_name() {
        let line = "42 (a (b) c) S 1 1 1 0 -1 0 0 0 0 0 7 3 11 2 20 0 1 0 5 0 0";
        let t = TaskStat::parse(line).expect("parses");
        assert_eq!(
            (t.pid, t.comm.as_str(), t.ticks, t.child_ticks),
            (42, "a (b) c", 10, 13)
        );
        assert_eq!(TaskStat::parse("garbage"), None);
        assert_eq!(vcpu_index("CPU 12/KVM"), Some(12));
        assert_eq!(vcpu_index("CPU x/TCG"), None);
        assert_eq!(vcpu_index("qemu-system-x86"), None);
    }

    #[test]
    fn host_proc_stat_gives_the_total_and_the_cpus() {
        let (cpu, cpus) = CpuTimes::parse_proc_stat(HOST_STAT).expect("host stat");
        assert_eq!(cpus, 2);
        assert_eq!((cpu.user, cpu.steal), (26_050, 114));
        assert_eq!(CpuTimes::parse_proc_stat("intr 1 2 3"), None);
    }

    #[test]
    fn qemu_use_is_percent_of_one_core_over_the_interval() {
        let earlier = QemuReading {
            at: Instant::now(),
            process: TaskStat::parse(QEMU_STAT).expect("stat"),
            threads: QEMU_TASKS.lines().filter_map(TaskStat::parse).collect(),
            // The main thread, another QEMU thread, vCPU 0, vCPU 1.
            switches: HashMap::from([(25724, 1000), (25726, 50), (25727, 400), (25728, 30)]),
            rss_kib: 97_304,
        };
        let mut later = earlier.clone();
        later.at = earlier.at + Duration::from_secs(2);
        // 2 s later: the process used 300 ticks, vCPU 0 150 of them, vCPU 1 50.
        later.process.ticks += 300;
        for t in &mut later.threads {
            t.ticks += match vcpu_index(&t.comm) {
                Some(0) => 150,
                Some(1) => 50,
                _ => 0,
            };
        }
        // The main thread switched 200 times, vCPU 0 600, vCPU 1 100; a thread that started in
        // between counts whole (40), and one whose status vanished not at all.
        later.switches = HashMap::from([(25724, 1200), (25727, 1000), (25728, 130), (25730, 40)]);
        later.rss_kib = 512 * 1024;
        let used = qemu_use(&earlier, &later);
        assert_eq!(used.cpu_pct, 150.0);
        assert_eq!(used.vcpu_pct, [75.0, 25.0]);
        assert_eq!(used.rss_mib, 512.0);
        assert_eq!(used.wakeups_per_sec, 470.0);
        assert_eq!(used.vcpu_wakeups_per_sec, [300.0, 50.0]);
    }

    #[test]
    fn a_guest_sample_parses_and_its_deltas_make_shares_and_a_top_list() {
        let first = GuestReading::parse(GUEST_1).expect("first sample");
        let second = GuestReading::parse(GUEST_2).expect("second sample");
        assert_eq!(first.cpus, second.cpus);
        assert!(second.processes.len() > 20, "{}", second.processes.len());
        assert!(second.mem_avail_kib > 0 && second.cost_ticks < 100);
        assert_eq!(guest_use(&second, &first), None, "counters that went back");
        let used = guest_use(&first, &second).expect("a later reading");
        let shares = used.user + used.system + used.iowait + used.steal;
        assert!((0.0..=100.0).contains(&shares), "{used:?}");
        assert!(
            !used.top.is_empty() && used.top.len() <= TOP_PROCESSES,
            "{used:?}"
        );
        assert!(
            used.top.windows(2).all(|w| w[0].pct >= w[1].pct),
            "busiest first: {used:?}"
        );
        assert!(used.cost_pct < 2.0, "{used:?}");
        for missing in ["load", "mem", "self"] {
            let cut: String = GUEST_2
                .lines()
                .filter(|l| !l.starts_with(&format!("{missing} ")))
                .map(|l| format!("{l}\n"))
                .collect();
            let err = GuestReading::parse(&cut).expect_err(missing);
            assert!(err.starts_with("expected"), "{err}");
        }
    }

    #[test]
    fn guest_deltas_count_processes_by_name_and_new_ones_whole() {
        let reading = |cpu: &str, procs: &[(u32, &str, u64)]| GuestReading {
            cpu: CpuTimes::parse_proc_stat(cpu).expect("cpu").0,
            cpus: 2,
            load1: 1.5,
            mem_avail_kib: 204_800,
            processes: procs
                .iter()
                .map(|(pid, comm, ticks)| TaskStat {
                    pid: *pid,
                    comm: comm.to_string(),
                    ticks: *ticks,
                    child_ticks: 0,
                })
                .collect(),
            cost_ticks: 2,
        };
        let a = reading(
            "cpu 100 0 100 800 0 0 0 0",
            &[(1, "kubelet", 50), (2, "etcd", 10), (3, "old", 5)],
        );
        // 1000 ticks later over 2 vCPUs: 500 per vCPU. A pid reused by another command counts
        // whole, as does a new process.
        let b = reading(
            "cpu 400 0 300 1100 100 0 0 100",
            &[
                (1, "kubelet", 300),
                (2, "etcd", 60),
                (3, "sh", 20),
                (4, "etcd", 40),
            ],
        );
        let used = guest_use(&a, &b).expect("b is after a");
        assert_eq!(
            (used.user, used.system, used.iowait, used.steal),
            (30.0, 20.0, 10.0, 10.0)
        );
        let top: Vec<(&str, f64)> = used.top.iter().map(|p| (p.comm.as_str(), p.pct)).collect();
        assert_eq!(top, [("kubelet", 50.0), ("etcd", 18.0), ("sh", 4.0)]);
        assert_eq!(
            (used.cost_pct, used.mem_avail_mib, used.load1),
            (0.4, 200.0, 1.5)
        );
    }
}
