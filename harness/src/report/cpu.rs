//! Where the CPU went, from the run's [`EventKind::MachineSample`] and [`EventKind::HostSample`]
//! events ([`crate::sampler`]): per machine its QEMU's share of the host, its wake-ups and the
//! guest's own view, the host's steal and how many CPUs the lab could use, what sampling cost,
//! and one line when the host was starved - so a slow host is not read as a broken cluster.
//!
//! Three renderings share the fold: the summary's `cpu` section ([`CpuSummary`]), the table a
//! failure's evidence carries ([`evidence_text`]) and `labtest top` ([`top_text`]).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::fmt_duration;
use crate::events::{Event, EventKind, GuestUse, HostUse, ProcessUse};
use crate::vm::sample::{round1, TOP_PROCESSES};

/// Mean host steal above which the host counts as starved.
pub const STEAL_STARVED_PCT: f64 = 10.0;
/// The QEMUs together using this share of what their CPUs give...
pub const DEMAND_STARVED_SHARE: f64 = 0.9;
/// ...for this long without a break counts as starved.
pub const DEMAND_STARVED_FOR: Duration = Duration::from_secs(60);

/// The run's CPU, folded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuSummary {
    /// A row per machine.
    pub machines: Vec<MachineCpu>,
    /// The host's side.
    pub host: HostCpu,
    /// What sampling itself cost.
    pub sampler: SamplerCost,
    /// Why the host was short of CPU for this lab, in one line; `None` when it was not.
    pub starved: Option<String>,
}

/// One machine's CPU over the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineCpu {
    /// The machine.
    pub name: String,
    /// Its vCPUs.
    pub vcpus: u32,
    /// Its QEMU, percent of one host core.
    pub host_cpu_mean: f64,
    /// Its QEMU at most, percent of one host core.
    pub host_cpu_max: f64,
    /// Its QEMU's resident memory at most, MiB.
    pub rss_mib_max: f64,
    /// Its QEMU's wake-ups a second ([`crate::events::QemuUse::wakeups_per_sec`]), mean: what
    /// an idle lab's CPU under TCG follows, so runs compare by it. `None` when no sample had
    /// them (an event log from before they were sampled).
    pub wakeups_per_sec_mean: Option<f64>,
    /// The same for each vCPU thread, in vCPU order.
    pub vcpu_wakeups_per_sec_mean: Vec<f64>,
    /// Guest samples taken, and those that were due but could not be had.
    pub guest_samples: u32,
    /// Guest samples that were due but could not be had.
    pub guest_missing: u32,
    /// Percent of the guest's CPU time, over its samples.
    pub guest_user_mean: Option<f64>,
    /// Percent of the guest's CPU time in the kernel, over its samples.
    pub guest_system_mean: Option<f64>,
    /// Busiest guest processes over the run, percent of one vCPU on average.
    pub top: Vec<ProcessUse>,
}

/// The host's CPU over the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostCpu {
    /// Steal (time the host's hypervisor gave to others), mean percent.
    pub steal_mean: f64,
    /// Steal at most, percent.
    pub steal_max: f64,
    /// The fewest host CPUs the lab's QEMUs could use at any sample.
    pub cpus_allowed: u32,
    /// Host CPUs online.
    pub cpus_online: u32,
    /// `LABTEST_HOST_CPUS` when the lab was confined on purpose.
    pub confined_to: Option<u32>,
    /// The longest stretch in which the QEMUs together demanded what their CPUs give
    /// ([`DEMAND_STARVED_SHARE`]), in seconds, if any.
    pub saturated_secs: f64,
}

/// What sampling cost: on the host, percent of one core; in the guests, percent of one vCPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SamplerCost {
    /// On the host, mean.
    pub host_pct_mean: f64,
    /// On the host, at most.
    pub host_pct_max: f64,
    /// In the guests, mean.
    pub guest_pct_mean: f64,
    /// In the guests, at most.
    pub guest_pct_max: f64,
}

#[derive(Default)]
struct MachineFold {
    samples: u32,
    vcpus: u32,
    host_sum: f64,
    host_max: f64,
    rss_max: f64,
    wakeup_samples: u32,
    wakeups_sum: f64,
    vcpu_wakeups_sum: Vec<f64>,
    guest_samples: u32,
    guest_missing: u32,
    user_sum: f64,
    system_sum: f64,
    cost_sum: f64,
    cost_max: f64,
    top: BTreeMap<String, f64>,
}

/// Folds samples one event at a time, as [`super::Summary`] folds the rest.
#[derive(Default)]
pub struct CpuFold {
    machines: Vec<(String, MachineFold)>,
    host_samples: u32,
    steal_sum: f64,
    steal_max: f64,
    sampler_sum: f64,
    sampler_max: f64,
    allowed: Option<u32>,
    online: u32,
    confined_to: Option<u32>,
    /// The QEMUs' demand since the last host sample (each tick's machine samples come first).
    tick_demand: f64,
    saturated_since: Option<Duration>,
    saturated_longest: Duration,
}

impl CpuFold {
    /// Folds one event in; events other than samples are ignored.
    pub fn add(&mut self, at: Duration, kind: &EventKind) {
        match kind {
            EventKind::MachineSample {
                machine,
                host,
                guest,
                guest_missing,
            } => {
                self.tick_demand += host.cpu_pct;
                let m = self.machine(machine);
                m.samples += 1;
                m.vcpus = m.vcpus.max(host.vcpu_pct.len() as u32);
                m.host_sum += host.cpu_pct;
                m.host_max = m.host_max.max(host.cpu_pct);
                m.rss_max = m.rss_max.max(host.rss_mib);
                // A running QEMU always wakes: 0 is an event log from before wake-ups were
                // sampled, left out rather than read as an idle lab.
                if host.wakeups_per_sec > 0.0 {
                    m.wakeup_samples += 1;
                    m.wakeups_sum += host.wakeups_per_sec;
                    let vcpus = host.vcpu_wakeups_per_sec.len();
                    if m.vcpu_wakeups_sum.len() < vcpus {
                        m.vcpu_wakeups_sum.resize(vcpus, 0.0);
                    }
                    for (sum, woke) in m
                        .vcpu_wakeups_sum
                        .iter_mut()
                        .zip(&host.vcpu_wakeups_per_sec)
                    {
                        *sum += woke;
                    }
                }
                if let Some(g) = guest {
                    m.guest_samples += 1;
                    m.user_sum += g.user;
                    m.system_sum += g.system;
                    m.cost_sum += g.cost_pct;
                    m.cost_max = m.cost_max.max(g.cost_pct);
                    for p in &g.top {
                        *m.top.entry(p.comm.clone()).or_default() += p.pct;
                    }
                }
                if guest_missing.is_some() {
                    m.guest_missing += 1;
                }
            }
            EventKind::HostSample(h) => self.host(at, h),
            _ => {}
        }
    }

    fn host(&mut self, at: Duration, h: &HostUse) {
        self.host_samples += 1;
        self.steal_sum += h.steal_pct;
        self.steal_max = self.steal_max.max(h.steal_pct);
        self.sampler_sum += h.sampler_pct;
        self.sampler_max = self.sampler_max.max(h.sampler_pct);
        self.allowed = Some(
            self.allowed
                .map_or(h.cpus_allowed, |a| a.min(h.cpus_allowed)),
        );
        self.online = self.online.max(h.cpus_online);
        self.confined_to = self.confined_to.or(h.confined_to);
        let saturated =
            self.tick_demand >= f64::from(h.cpus_allowed) * 100.0 * DEMAND_STARVED_SHARE;
        self.tick_demand = 0.0;
        match (saturated, self.saturated_since) {
            (true, None) => self.saturated_since = Some(at),
            (true, Some(since)) => {
                self.saturated_longest = self.saturated_longest.max(at.saturating_sub(since));
            }
            (false, _) => self.saturated_since = None,
        }
    }

    fn machine(&mut self, name: &str) -> &mut MachineFold {
        let i = match self.machines.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.machines
                    .push((name.to_string(), MachineFold::default()));
                self.machines.len() - 1
            }
        };
        &mut self.machines[i].1
    }

    /// `None` for a run without samples.
    pub fn finish(self) -> Option<CpuSummary> {
        if self.machines.is_empty() && self.host_samples == 0 {
            return None;
        }
        let mean = |sum: f64, n: u32| {
            if n == 0 {
                0.0
            } else {
                round1(sum / f64::from(n))
            }
        };
        let guest_samples: u32 = self.machines.iter().map(|(_, m)| m.guest_samples).sum();
        let guest_cost: f64 = self.machines.iter().map(|(_, m)| m.cost_sum).sum();
        let machines: Vec<MachineCpu> = self
            .machines
            .iter()
            .map(|(name, m)| {
                let mut top: Vec<ProcessUse> = m
                    .top
                    .iter()
                    .map(|(comm, sum)| ProcessUse {
                        comm: comm.clone(),
                        pct: mean(*sum, m.guest_samples),
                    })
                    .collect();
                top.sort_by(|a, b| b.pct.total_cmp(&a.pct).then_with(|| a.comm.cmp(&b.comm)));
                top.truncate(TOP_PROCESSES);
                let per_sec = |sum: f64| (sum / f64::from(m.wakeup_samples)).round();
                MachineCpu {
                    name: name.clone(),
                    vcpus: m.vcpus,
                    host_cpu_mean: mean(m.host_sum, m.samples),
                    host_cpu_max: m.host_max,
                    rss_mib_max: m.rss_max,
                    wakeups_per_sec_mean: (m.wakeup_samples > 0).then(|| per_sec(m.wakeups_sum)),
                    vcpu_wakeups_per_sec_mean: m
                        .vcpu_wakeups_sum
                        .iter()
                        .map(|&sum| per_sec(sum))
                        .collect(),
                    guest_samples: m.guest_samples,
                    guest_missing: m.guest_missing,
                    guest_user_mean: (m.guest_samples > 0)
                        .then(|| mean(m.user_sum, m.guest_samples)),
                    guest_system_mean: (m.guest_samples > 0)
                        .then(|| mean(m.system_sum, m.guest_samples)),
                    top,
                }
            })
            .collect();
        let host = HostCpu {
            steal_mean: mean(self.steal_sum, self.host_samples),
            steal_max: self.steal_max,
            cpus_allowed: self.allowed.unwrap_or(0),
            cpus_online: self.online,
            confined_to: self.confined_to,
            saturated_secs: self.saturated_longest.as_secs_f64(),
        };
        let vcpus = machines.iter().map(|m| m.vcpus).sum();
        Some(CpuSummary {
            starved: starved(&host, vcpus),
            machines,
            host,
            sampler: SamplerCost {
                host_pct_mean: mean(self.sampler_sum, self.host_samples),
                host_pct_max: self.sampler_max,
                guest_pct_mean: mean(guest_cost, guest_samples),
                guest_pct_max: self
                    .machines
                    .iter()
                    .map(|(_, m)| m.cost_max)
                    .fold(0.0, f64::max),
            },
        })
    }
}

/// The starvation decision: steal over [`STEAL_STARVED_PCT`], fewer host CPUs than the lab has
/// vCPUs, or the QEMUs demanding what their CPUs give for [`DEMAND_STARVED_FOR`] on end. One
/// line naming every reason that held, or `None`.
pub fn starved(host: &HostCpu, vcpus: u32) -> Option<String> {
    let mut reasons = Vec::new();
    if host.steal_mean > STEAL_STARVED_PCT {
        reasons.push(format!(
            "the host's hypervisor took {:.1}% of its CPU time (steal, over {STEAL_STARVED_PCT:.0}%)",
            host.steal_mean
        ));
    }
    let cpus = plural(host.cpus_allowed, "host CPU");
    let only = format!(
        "only {} of the host's {}",
        host.cpus_allowed, host.cpus_online
    );
    let confined = confined_note(host.confined_to);
    if host.cpus_allowed > 0 && vcpus > host.cpus_allowed {
        reasons.push(format!(
            "the lab's QEMUs could use {only} CPUs{confined} for {}",
            plural(vcpus, "vCPU")
        ));
    }
    if host.saturated_secs >= DEMAND_STARVED_FOR.as_secs_f64() {
        reasons.push(format!(
            "the QEMUs together demanded over {:.0}% of their {cpus}{confined} for {} on end",
            DEMAND_STARVED_SHARE * 100.0,
            fmt_duration(Duration::from_secs_f64(host.saturated_secs))
        ));
    }
    if reasons.is_empty() {
        return None;
    }
    Some(format!(
        "HOST STARVED: {}. The lab was short of CPU: slowness and timeouts in this run may be the host's, not the cluster's",
        reasons.join("; ")
    ))
}

fn plural(n: u32, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

impl CpuSummary {
    /// The summary's `cpu` section, a line per machine and one for the host and the sampler.
    pub fn render_text(&self) -> String {
        let mut out = String::from(
            "cpu (host: % of one host core, mean/max; guest: % of its CPU time; top: % of one vCPU):\n",
        );
        let width = self
            .machines
            .iter()
            .map(|m| m.name.len())
            .max()
            .unwrap_or(0);
        for m in &self.machines {
            let _ = write!(
                out,
                "  {:<width$}  host {:.1}/{:.1}%, {}, RSS {:.0} MiB",
                m.name,
                m.host_cpu_mean,
                m.host_cpu_max,
                plural(m.vcpus, "vCPU"),
                m.rss_mib_max
            );
            if let Some(woke) = m.wakeups_per_sec_mean {
                let _ = write!(out, ", wake-ups {woke:.0}/s");
            }
            if let (Some(user), Some(system)) = (m.guest_user_mean, m.guest_system_mean) {
                let _ = write!(out, "; guest user {user:.1}% sys {system:.1}%");
            }
            if m.guest_missing > 0 {
                let _ = write!(
                    out,
                    " ({} missing)",
                    plural(m.guest_missing, "guest sample")
                );
            }
            if !m.top.is_empty() {
                let _ = write!(out, "; top {}", top_list(&m.top));
            }
            out.push('\n');
        }
        let h = &self.host;
        let _ = writeln!(
            out,
            "  host: steal {:.1}% mean ({:.1}% max), the QEMUs could use {} of {} CPUs{}; sampling cost {:.1}% of a host core, {:.1}% of a vCPU in the guests",
            h.steal_mean,
            h.steal_max,
            h.cpus_allowed,
            h.cpus_online,
            confined_note(h.confined_to),
            self.sampler.host_pct_mean,
            self.sampler.guest_pct_mean
        );
        out
    }
}

fn top_list(top: &[ProcessUse]) -> String {
    top.iter()
        .map(|p| format!("{} {:.1}%", p.comm, p.pct))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per-vCPU figures as `35/34`, whole numbers.
fn per_vcpu(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join("/")
}

/// The samples of the last minutes (`samples`, oldest first, as [`crate::lab::Lab::recent_samples`]
/// gives them) as a small table per machine: what a failure's evidence carries, so that a
/// timeout on a starved host shows it. A row per guest sample (taken or missing) and the last.
pub fn evidence_text(samples: &[Event]) -> String {
    let mut out = String::new();
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return "no CPU samples yet (the sampler takes the first ones a few seconds after the lab is up)\n".into();
    };
    let _ = writeln!(
        out,
        "CPU samples from {} to {} since the run started (host: % of one host core; guest: % of its CPU time; top: % of one vCPU)",
        fmt_duration(first.elapsed),
        fmt_duration(last.elapsed)
    );
    let mut rows: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    let machine_samples: Vec<(&Event, &str)> = samples
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MachineSample { machine, .. } => Some((e, machine.as_str())),
            _ => None,
        })
        .collect();
    for (i, (event, machine)) in machine_samples.iter().enumerate() {
        let EventKind::MachineSample {
            host,
            guest,
            guest_missing,
            ..
        } = &event.kind
        else {
            continue;
        };
        let latest = !machine_samples[i + 1..].iter().any(|(_, m)| m == machine);
        if guest.is_none() && guest_missing.is_none() && !latest {
            continue;
        }
        if !order.contains(machine) {
            order.push(machine);
        }
        let guest = match (guest, guest_missing) {
            (Some(g), _) => guest_cells(g),
            (None, Some(why)) => format!("guest sample missing: {why}"),
            (None, None) => "-".into(),
        };
        rows.entry(machine).or_default().push(format!(
            "  {:>7}  {:>6.1}  {:>11}  {:>5.0} MiB  {guest}",
            fmt_duration(event.elapsed),
            host.cpu_pct,
            per_vcpu(&host.vcpu_pct),
            host.rss_mib
        ));
    }
    for machine in order {
        let _ = writeln!(
            out,
            "\n{machine}\n  {:>7}  {:>6}  {:>11}  {:>9}  guest usr/sys/io/steal, load, available, top",
            "at", "host", "vCPUs", "RSS"
        );
        for row in &rows[machine] {
            let _ = writeln!(out, "{row}");
        }
    }
    if let Some(h) = last_host(samples) {
        let _ = writeln!(out, "\n{}", host_line(h));
    }
    out
}

fn guest_cells(g: &GuestUse) -> String {
    format!(
        "{:.0}/{:.0}/{:.0}/{:.0}, {:.2}, {:.0} MiB, {}",
        g.user,
        g.system,
        g.iowait,
        g.steal,
        g.load1,
        g.mem_avail_mib,
        top_list(&g.top)
    )
}

fn last_host(samples: &[Event]) -> Option<&HostUse> {
    samples.iter().rev().find_map(|e| match &e.kind {
        EventKind::HostSample(h) => Some(h),
        _ => None,
    })
}

/// ` (LABTEST_HOST_CPUS=N)` when the lab was confined on purpose: every rendering names it.
pub fn confined_note(confined_to: Option<u32>) -> String {
    confined_to
        .map(|n| format!(" (LABTEST_HOST_CPUS={n})"))
        .unwrap_or_default()
}

fn host_line(h: &HostUse) -> String {
    format!(
        "host: steal {:.1}%, the QEMUs may use {} of {} CPUs{}; sampler {:.1}% of a core",
        h.steal_pct,
        h.cpus_allowed,
        h.cpus_online,
        confined_note(h.confined_to),
        h.sampler_pct
    )
}

/// `labtest top`: each machine's latest host sample and latest guest sample (which may be
/// older: the guest is sampled less often), then the host.
pub fn top_text(samples: &[Event]) -> String {
    let mut latest: Vec<(&str, &Event)> = Vec::new();
    let mut guests: BTreeMap<&str, (&Event, &GuestUse)> = BTreeMap::new();
    let mut missing: BTreeMap<&str, &str> = BTreeMap::new();
    for event in samples {
        if let EventKind::MachineSample {
            machine,
            guest,
            guest_missing,
            ..
        } = &event.kind
        {
            match latest.iter_mut().find(|(m, _)| m == machine) {
                Some(slot) => slot.1 = event,
                None => latest.push((machine, event)),
            }
            if let Some(g) = guest {
                guests.insert(machine, (event, g));
                missing.remove(machine.as_str());
            }
            if let Some(why) = guest_missing {
                missing.insert(machine, why);
            }
        }
    }
    if latest.is_empty() {
        return "no CPU samples yet (the first come a few seconds after the lab is up)\n".into();
    }
    let mut out = String::new();
    let width = latest.iter().map(|(m, _)| m.len()).max().unwrap_or(0);
    for (machine, event) in &latest {
        let EventKind::MachineSample { host, .. } = &event.kind else {
            continue;
        };
        let _ = write!(
            out,
            "{machine:<width$}  host {:.1}% of a core, vCPUs {}%, RSS {:.0} MiB, wake-ups {:.0}/s",
            host.cpu_pct,
            per_vcpu(&host.vcpu_pct),
            host.rss_mib,
            host.wakeups_per_sec
        );
        if !host.vcpu_wakeups_per_sec.is_empty() {
            let _ = write!(out, " (vCPUs {})", per_vcpu(&host.vcpu_wakeups_per_sec));
        }
        out.push('\n');
        let pad = "";
        match guests.get(machine) {
            Some((at, g)) => {
                let _ = writeln!(
                    out,
                    "{pad:<width$}  guest user {:.1}% sys {:.1}% iowait {:.1}% steal {:.1}%, load {:.2}, {:.0} MiB available ({} ago)",
                    g.user,
                    g.system,
                    g.iowait,
                    g.steal,
                    g.load1,
                    g.mem_avail_mib,
                    fmt_duration(event.elapsed.saturating_sub(at.elapsed))
                );
                let _ = writeln!(out, "{pad:<width$}  top {}", top_list(&g.top));
            }
            None => {
                let _ = writeln!(out, "{pad:<width$}  guest: no sample yet");
            }
        }
        if let Some(why) = missing.get(machine) {
            let _ = writeln!(out, "{pad:<width$}  last guest sample missing: {why}");
        }
    }
    if let Some(h) = last_host(samples) {
        let _ = writeln!(out, "{}", host_line(h));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::QemuUse;
    use crate::report::fixture;

    fn host(
        steal: f64,
        allowed: u32,
        online: u32,
        confined: Option<u32>,
        saturated: f64,
    ) -> HostCpu {
        HostCpu {
            steal_mean: steal,
            steal_max: steal,
            cpus_allowed: allowed,
            cpus_online: online,
            confined_to: confined,
            saturated_secs: saturated,
        }
    }

    #[test]
    fn a_host_with_room_is_not_starved() {
        assert_eq!(starved(&host(2.0, 2, 2, None, 30.0), 2), None);
        assert_eq!(starved(&host(10.0, 4, 4, None, 59.9), 4), None);
    }

    #[test]
    fn each_reason_alone_starves_and_all_are_named() {
        let steal = starved(&host(14.2, 2, 2, None, 0.0), 2).expect("steal");
        assert!(
            steal.starts_with("HOST STARVED: the host's hypervisor took 14.2%"),
            "{steal}"
        );
        let few = starved(&host(0.0, 1, 2, Some(1), 0.0), 4).expect("too few CPUs");
        assert!(
            few.contains("could use only 1 of the host's 2 CPUs (LABTEST_HOST_CPUS=1) for 4 vCPUs"),
            "{few}"
        );
        let busy = starved(&host(0.0, 2, 2, None, 250.0), 2).expect("saturated");
        assert!(
            busy.contains("over 90% of their 2 host CPUs for 4m10s on end"),
            "{busy}"
        );
        let all = starved(&host(20.0, 1, 2, None, 90.0), 4).expect("all three");
        assert_eq!(all.matches("; ").count(), 2, "{all}");
    }

    #[test]
    fn a_sustained_stretch_of_full_demand_is_measured_and_a_break_resets_it() {
        let mut fold = CpuFold::default();
        let tick = |fold: &mut CpuFold, secs: u64, pct: f64| {
            let at = Duration::from_secs(secs);
            for machine in ["a", "b"] {
                let kind = EventKind::MachineSample {
                    machine: machine.into(),
                    host: QemuUse {
                        cpu_pct: pct,
                        vcpu_pct: vec![pct],
                        rss_mib: 100.0,
                        wakeups_per_sec: 500.0,
                        vcpu_wakeups_per_sec: vec![300.0],
                    },
                    guest: None,
                    guest_missing: None,
                };
                fold.add(at, &kind);
            }
            let host = HostUse {
                steal_pct: 0.0,
                cpus_allowed: 1,
                cpus_online: 2,
                confined_to: Some(1),
                sampler_pct: 0.1,
            };
            fold.add(at, &EventKind::HostSample(host));
        };
        // 2 x 46% = 92% of one CPU from 0 s to 45 s, a break, then again from 60 s to 150 s.
        for s in (0..=45).step_by(3) {
            tick(&mut fold, s, 46.0);
        }
        tick(&mut fold, 48, 10.0);
        for s in (60..=150).step_by(3) {
            tick(&mut fold, s, 46.0);
        }
        let cpu = fold.finish().expect("samples");
        assert_eq!(cpu.host.saturated_secs, 90.0);
        let line = cpu.starved.expect("starved");
        assert!(line.contains("for 1m30s on end"), "{line}");
        assert!(
            line.contains(
                "could use only 1 of the host's 2 CPUs (LABTEST_HOST_CPUS=1) for 2 vCPUs"
            ),
            "{line}"
        );
    }

    #[test]
    fn wake_ups_are_a_mean_of_the_samples_that_have_them() {
        let mut fold = CpuFold::default();
        let sample = |machine: &str, woke: f64, vcpus: Vec<f64>| EventKind::MachineSample {
            machine: machine.into(),
            host: QemuUse {
                cpu_pct: 50.0,
                vcpu_pct: vec![20.0; 2],
                rss_mib: 100.0,
                wakeups_per_sec: woke,
                vcpu_wakeups_per_sec: vcpus,
            },
            guest: None,
            guest_missing: None,
        };
        // A sample from an event log older than wake-ups (0, none per vCPU) is left out.
        for kind in [
            sample("a", 0.0, vec![]),
            sample("a", 401.0, vec![200.0, 100.0]),
            sample("a", 600.0, vec![300.0, 200.0]),
            sample("old", 0.0, vec![]),
        ] {
            fold.add(Duration::ZERO, &kind);
        }
        let cpu = fold.finish().expect("samples");
        let woke: Vec<(Option<f64>, &[f64])> = cpu
            .machines
            .iter()
            .map(|m| {
                (
                    m.wakeups_per_sec_mean,
                    m.vcpu_wakeups_per_sec_mean.as_slice(),
                )
            })
            .collect();
        assert_eq!(woke, [(Some(501.0), &[250.0, 150.0][..]), (None, &[][..])]);
        let text = cpu.render_text();
        assert!(text.contains("RSS 100 MiB, wake-ups 501/s\n"), "{text}");
        assert_eq!(text.matches("wake-ups").count(), 1, "{text}");
    }

    #[test]
    fn cpu_summary_of_a_sampled_run() {
        let summary = crate::report::Summary::from_events(&fixture::sampled_run());
        let cpu = summary.cpu.expect("a cpu section");
        insta::assert_snapshot!(cpu.render_text());
    }

    #[test]
    fn evidence_of_a_sampled_run() {
        let samples: Vec<Event> = fixture::sampled_run()
            .into_iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::MachineSample { .. } | EventKind::HostSample(_)
                )
            })
            .collect();
        insta::assert_snapshot!(evidence_text(&samples));
        assert!(evidence_text(&[]).starts_with("no CPU samples yet"));
    }

    #[test]
    fn top_of_a_sampled_run() {
        insta::assert_snapshot!(top_text(&fixture::sampled_run()));
        assert!(top_text(&[]).starts_with("no CPU samples yet"));
    }
}
