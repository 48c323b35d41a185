//! Where the CPU goes, all through a lab's life: every few seconds each machine's QEMU as the host
//! sees it ([`crate::vm::sample`]), at a lower rate the guest's own view over its channel, and the
//! host as a whole - as [`EventKind::MachineSample`] and [`EventKind::HostSample`] events, so the
//! reports can tell a slow host from a broken cluster.
//!
//! A [`Sampler`] belongs to a [`crate::lab::Lab`]: started when the lab is up, stopped when it is
//! dropped. It never holds anything up: a guest that is frozen, off, busy with a command or too
//! slow to answer is skipped and its sample noted as missing, and the host half never waits for
//! a guest. It keeps the last minutes of its samples for failure evidence ([`Sampler::recent`])
//! and `labtest top`.
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::events::{Event, EventKind, Events, GuestUse, HostUse};
use crate::vm::cpus::allowed_cpus;
use crate::vm::sample::{guest_use, round1, GuestReading, HostProbe, QemuProbe, GUEST_COMMAND};
use crate::vm::{Machine, VmError};
use crate::wait::tail_chars;

/// How often and how long.
#[derive(Debug, Clone, Copy)]
pub struct SamplerConfig {
    /// Host side: cheap (a few /proc files per QEMU, two per thread of it).
    pub host_every: Duration,
    /// Guest side: a command in every guest, so rarer. At 15 s, on a lab confined to one host
    /// CPU (every guest starved), the command cost 5.7 % of a vCPU per interval (it reads every
    /// process's stat): 30 s keeps it near the 2 % a sampler may cost, and the evidence's
    /// five minutes still hold ten samples.
    pub guest_every: Duration,
    /// A guest that has not answered by then is skipped this round.
    pub guest_timeout: Duration,
    /// How much of the past [`Sampler::recent`] keeps.
    pub keep: Duration,
    /// `LABTEST_HOST_CPUS`, when the lab was confined on purpose: the reports say so.
    pub confined_to: Option<u32>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            host_every: Duration::from_secs(3),
            guest_every: Duration::from_secs(30),
            guest_timeout: Duration::from_secs(5),
            keep: Duration::from_secs(5 * 60),
            confined_to: None,
        }
    }
}

/// The sampling task of a lab; dropping it stops the task.
pub struct Sampler {
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

struct Shared {
    events: Events,
    config: SamplerConfig,
    /// Time spent in the sampling code (wall clock: an upper bound on its CPU time) since the
    /// last host sample, in nanoseconds.
    busy: AtomicU64,
    /// The guest half's latest result per machine, for the next machine sample to carry.
    guest: Mutex<HashMap<String, Result<GuestUse, String>>>,
    recent: Mutex<VecDeque<(Instant, Event)>>,
    /// Held by a round of guest samples, and by whoever needs the guest channels quiet
    /// ([`Sampler::hold_guests`]).
    guest_round: Arc<tokio::sync::Mutex<()>>,
}

impl Sampler {
    /// Starts sampling `machines` into `events`; `None` outside a tokio runtime (nothing to run
    /// the task on).
    pub fn start(
        machines: Vec<Arc<Machine>>,
        events: &Events,
        config: SamplerConfig,
    ) -> Option<Sampler> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let shared = Arc::new(Shared {
            events: events.clone(),
            config,
            busy: AtomicU64::new(0),
            guest: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
            guest_round: Arc::new(tokio::sync::Mutex::new(())),
        });
        let task = runtime.spawn({
            let shared = shared.clone();
            async move {
                tokio::join!(
                    host_loop(&shared, &machines),
                    guest_loop(&shared, &machines)
                );
            }
        });
        Some(Sampler { task, shared })
    }

    /// No guest is sampled while the returned guard lives; waits for a round under way to end
    /// (within [`SamplerConfig::guest_timeout`] and the channel's rescue). A snapshot takes it,
    /// so that no sampling command is caught half-way in a saved guest.
    pub async fn hold_guests(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.shared.guest_round.clone().lock_owned().await
    }

    /// The samples of the last [`SamplerConfig::keep`], oldest first.
    pub fn recent(&self) -> Vec<Event> {
        lock(&self.shared.recent)
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn emit(&self, kind: EventKind) {
        let event = Event {
            elapsed: self.events.elapsed(),
            kind: kind.clone(),
        };
        self.events.emit(kind);
        let now = Instant::now();
        let mut recent = lock(&self.recent);
        recent.push_back((now, event));
        while recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.config.keep)
        {
            recent.pop_front();
        }
    }

    fn add_busy(&self, since: Instant) {
        self.busy
            .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

async fn host_loop(shared: &Shared, machines: &[Arc<Machine>]) {
    let mut tick = tokio::time::interval(shared.config.host_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut probes: HashMap<String, QemuProbe> = HashMap::new();
    let mut host = HostProbe::default();
    let mut last_tick: Option<Instant> = None;
    loop {
        tick.tick().await;
        let started = Instant::now();
        let mut used = Vec::new();
        let mut allowed = BTreeSet::new();
        for machine in machines {
            // A machine that is off has no QEMU to read; it starts a new baseline when it runs.
            let Some(pid) = machine.pid() else {
                probes.remove(machine.name());
                continue;
            };
            allowed.extend(allowed_cpus(pid).unwrap_or_default());
            let probe = probes.entry(machine.name().to_string()).or_default();
            if let Some(qemu) = probe.sample(pid) {
                used.push((machine.name().to_string(), qemu));
            }
        }
        let whole_host = host.sample();
        shared.add_busy(started);
        let busy = Duration::from_nanos(shared.busy.swap(0, Ordering::Relaxed));
        let interval = last_tick
            .replace(started)
            .map(|t| started.duration_since(t));
        for (machine, qemu) in used {
            let guest = lock(&shared.guest).remove(&machine);
            let (guest, guest_missing) = match guest {
                Some(Ok(g)) => (Some(g), None),
                Some(Err(why)) => (None, Some(why)),
                None => (None, None),
            };
            shared.emit(EventKind::MachineSample {
                machine,
                host: qemu,
                guest,
                guest_missing,
            });
        }
        if let (Some((Some(steal_pct), online)), Some(interval)) = (whole_host, interval) {
            if !allowed.is_empty() {
                shared.emit(EventKind::HostSample(HostUse {
                    steal_pct,
                    cpus_allowed: allowed.len() as u32,
                    cpus_online: online,
                    confined_to: shared.config.confined_to,
                    sampler_pct: round1(
                        busy.as_secs_f64() / interval.as_secs_f64().max(1e-3) * 100.0,
                    ),
                }));
            }
        }
    }
}

async fn guest_loop(shared: &Shared, machines: &[Arc<Machine>]) {
    let mut tick = tokio::time::interval(shared.config.guest_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last: HashMap<String, GuestReading> = HashMap::new();
    loop {
        tick.tick().await;
        let _round = shared.guest_round.lock().await;
        let asks = machines.iter().filter(|m| m.is_running()).map(|m| async {
            let answer = m
                .exec_if_idle(GUEST_COMMAND, shared.config.guest_timeout)
                .await;
            (m.name().to_string(), answer)
        });
        for (machine, answer) in futures::future::join_all(asks).await {
            let started = Instant::now();
            let reading = match answer {
                Ok(Some(out)) if out.status == 0 => GuestReading::parse(&out.stdout_str()),
                Ok(Some(out)) => Err(format!(
                    "the sampling command exited {}: {}",
                    out.status,
                    tail_chars(out.stderr_str().trim(), 200)
                )),
                Ok(None) => Err("its guest channel was busy with another command".into()),
                Err(e) => Err(missing_reason(&e, shared.config.guest_timeout)),
            };
            let result = match reading {
                // The first reading (and the first after a reboot) is a baseline.
                Ok(reading) => match last.insert(machine.clone(), reading) {
                    Some(earlier) => guest_use(&earlier, &last[&machine]).map(Ok),
                    None => None,
                },
                // The baseline stays: the next delta spans the gap, which is still true.
                Err(why) => Some(Err(why)),
            };
            if let Some(result) = result {
                lock(&shared.guest).insert(machine, result);
            }
            shared.add_busy(started);
        }
    }
}

/// Why a guest could not be sampled, in a few words (the error names the whole command).
fn missing_reason(error: &VmError, timeout: Duration) -> String {
    match error {
        VmError::State { message, .. } => message
            .split(',')
            .next()
            .unwrap_or(message)
            .trim()
            .to_string(),
        VmError::Channel { .. } => format!(
            "no answer within {:.0}s: {}",
            timeout.as_secs_f64(),
            tail_chars(&error.to_string(), 160)
        ),
        other => tail_chars(&other.to_string(), 200),
    }
}

// The data under these locks stays valid whatever panicked while holding them.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
