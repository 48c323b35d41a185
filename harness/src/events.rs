//! The one vocabulary every layer reports through.
//!
//! Lower layers (vm, net, nix, kube, scenarios) say what happened with [`Events::emit`]; they
//! never print. Everything a user sees - the live view, the plain CI lines, the summary, JUnit,
//! the JSON files - is rendered from these events by [`crate::report`], so the renderings cannot
//! disagree with each other and a run can be re-rendered later from its `events.jsonl`.
//!
//! This module depends on nothing else in the crate but the [`crate::fault`] vocabulary and
//! [`crate::secs`], neither of which uses it, so that every layer may use it.
//!
//! # Usage
//! ```
//! use harness::events::{EventKind, Events};
//!
//! let events = Events::new();
//! let recorder = events.record();
//! let worker = events.clone();
//! std::thread::spawn(move || {
//!     worker.emit(EventKind::Warning { message: "KVM unusable, using TCG: ~10x slower".into() });
//! })
//! .join()
//! .unwrap();
//! assert_eq!(recorder.events().len(), 1);
//! ```
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::fault::Fault;
use crate::secs;

/// Something that happened, stamped with the time since the run started.
///
/// Serialized as one JSON object per line: `{"elapsed":12.345,"kind":"machine_up",...}`.
/// Durations are seconds with millisecond precision, so the files stay readable. The run's
/// wall-clock start is written once, on [`EventKind::RunStarted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Since the run started ([`Events::new`]).
    #[serde(with = "secs")]
    pub elapsed: Duration,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Names of machines, checks and scenarios are the user-facing ones
/// (`grey-area`, `apiserver /readyz`, `node-failure`): renderers show them as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The first event of a run: which lab, and the scenarios that will run, in order.
    /// `started_at` is the wall-clock time at `elapsed` zero ([`Events::started_at`]) in
    /// RFC 3339 UTC, so an event happened at `started_at + elapsed`, which is what to look for
    /// in a guest's journal. `None` in event logs written before it existed.
    RunStarted {
        /// The lab's directory, as given.
        lab: String,
        /// The scenarios to run, in order.
        scenarios: Vec<String>,
        /// The wall-clock time at `elapsed` zero.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_at: Option<String>,
    },
    /// The last event of a run. `aborted` says why the run stopped before running its
    /// scenarios to the end (e.g. the lab never became ready); `None` for a complete run,
    /// whatever its scenarios' outcomes.
    RunFinished {
        /// Why the run stopped early; `None` for a complete run.
        aborted: Option<String>,
    },
    /// The run moved on to another phase. Phases only move forward, except that a
    /// scenario may rebuild (`Build`) and reboot (`Boot`) in the middle of `Scenario`.
    Phase {
        /// The phase now.
        phase: Phase,
    },
    /// `nix build` progress, as often as nix reports it. Counts are for the whole build
    /// of `what` (e.g. `.#vm`); `running` names the derivations being built right now.
    BuildProgress {
        /// What is being built (`<flake>#<attr>`).
        what: String,
        /// Derivations built so far.
        done: u64,
        /// Derivations to build in all.
        expected: u64,
        /// Derivations being built now.
        running: Vec<String>,
        /// Downloads done so far.
        downloads_done: u64,
        /// Downloads in all.
        downloads_expected: u64,
    },
    /// QEMU is being started for `machine` (first boot, or again after a crash or shutdown).
    MachineStarting {
        /// The machine.
        machine: String,
    },
    /// The guest channel answered: the machine is up. `boot_time` counts from
    /// `MachineStarting`.
    MachineUp {
        /// The machine.
        machine: String,
        /// From its QEMU's start to the channel answering.
        #[serde(with = "secs")]
        boot_time: Duration,
    },
    /// QEMU exited; `status` is its exit status as the OS reports it (`exit status: 0`,
    /// `signal: 9 (SIGKILL)`).
    MachineExited {
        /// The machine.
        machine: String,
        /// How QEMU exited.
        status: String,
    },
    /// The harness did something to the lab on purpose (a fault, or the end of one); the
    /// fault names the machines it touched ([`Fault::machines`]).
    FaultInjected {
        /// The fault, with its machines.
        fault: Fault,
    },
    /// A named check with a deadline started. `scope` groups checks: `readiness` for the
    /// readiness gate, the scenario's name for a scenario's steps (the report attributes
    /// a check to a scenario by this name).
    CheckStarted {
        /// The check's group: `readiness`, or a scenario's name.
        scope: String,
        /// The check's name.
        check: String,
        /// Its deadline.
        #[serde(with = "secs")]
        timeout: Duration,
    },
    /// The check looked and is not satisfied yet; `observed` is what it saw. Emitted when
    /// the observed state changes, not on every poll, so the stream stays readable.
    CheckProgress {
        /// The check's group.
        scope: String,
        /// The check's name.
        check: String,
        /// What it saw this time.
        observed: String,
    },
    /// The check's condition held. `measured` is set when the check measures a delay from a
    /// named start (e.g. NotReady after a power loss), not just from its own start.
    CheckPassed {
        /// The check's group.
        scope: String,
        /// The check's name.
        check: String,
        /// How long it ran.
        #[serde(with = "secs")]
        took: Duration,
        /// The delay it measured from a named moment, if it measures one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        measured: Option<Measured>,
    },
    /// The check gave up. `observed` is the last state it saw (what a timeout is about);
    /// `evidence` lists files written to explain it (journal excerpts, `kubectl describe`).
    CheckFailed {
        /// The check's group.
        scope: String,
        /// The check's name.
        check: String,
        /// Why it failed, in one line.
        reason: String,
        /// What it last saw.
        observed: Option<String>,
        /// Files that explain the failure.
        evidence: Vec<PathBuf>,
        /// How long it ran.
        #[serde(with = "secs")]
        took: Duration,
        /// The delay it measured until it gave up, if it measures one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        measured: Option<Measured>,
    },
    /// A scenario attempt began. `attempt` counts from 1; a retry of a failed scenario
    /// is the same name with the next attempt number.
    ScenarioStarted {
        /// The scenario's name.
        scenario: String,
        /// Which attempt, from 1.
        attempt: u32,
    },
    /// A scenario attempt ended. `message` explains a `Failed` or `Error` outcome in one line.
    ScenarioFinished {
        /// The scenario's name.
        scenario: String,
        /// Which attempt, from 1.
        attempt: u32,
        /// How it ended.
        outcome: Outcome,
        /// How long the attempt took.
        #[serde(with = "secs")]
        took: Duration,
        /// Why it failed or erred, in one line.
        message: Option<String>,
    },
    /// Output of one step (a command in a guest, a kubectl call) in `scope`, emitted when
    /// the step ends. Kept out of the live view and attached to JUnit when the step failed.
    StepOutput {
        /// The scenario (or `readiness`) the step belongs to.
        scope: String,
        /// The step, as the report names it.
        step: String,
        /// Which output stream.
        stream: Stream,
        /// The output.
        text: String,
    },
    /// A file was written into the artifacts folder (or elsewhere); `what` says what it holds.
    Artifact {
        /// Where the file is.
        path: PathBuf,
        /// What it holds (`journal of kubelet.service on grey-area`).
        what: String,
    },
    /// Something the user must not miss, e.g. "KVM unusable, using TCG: ~10x slower".
    Warning {
        /// The warning, in one line.
        message: String,
    },
    /// The whole lab was saved as snapshot `snapshot`: every machine paused, saved, continued.
    SnapshotSaved {
        /// The snapshot's name.
        snapshot: String,
        /// How long the save took, the lab paused for most of it.
        #[serde(with = "secs")]
        took: Duration,
        /// Bytes on disk.
        bytes: u64,
    },
    /// A scenario failed and its lab was saved as snapshot `snapshot` at that moment, before
    /// evidence capture or teardown changed anything; `restore` is the command that brings it
    /// back as it was.
    FailureKept {
        /// The scenario that failed.
        scenario: String,
        /// The snapshot's name.
        snapshot: String,
        /// The command that brings it back (`labtest up --lab DIR --from NAME`).
        restore: String,
        /// How long the save took, the lab paused for most of it.
        #[serde(with = "secs")]
        took: Duration,
        /// Bytes on disk.
        bytes: u64,
    },
    /// A scenario failed and its lab could not be kept; `reason` says why (a machine powered
    /// off, the store unwritable).
    FailureNotKept {
        /// The scenario that failed.
        scenario: String,
        /// Why not, in one line.
        reason: String,
    },
    /// A lab was brought back from snapshot `snapshot` instead of booting; `took` counts from
    /// the first QEMU start to every guest channel answering. The scenario that starts next
    /// runs on it.
    SnapshotRestored {
        /// The snapshot's name.
        snapshot: String,
        /// From the first QEMU start to every guest answering.
        #[serde(with = "secs")]
        took: Duration,
    },
    /// Where one machine's CPU went since its last sample: its QEMU as the host sees it, every
    /// few seconds, and at a lower rate what the guest says (`guest`). A guest sample that was
    /// due but could not be had (frozen, off, its channel busy, too slow) is `guest_missing`,
    /// never an error.
    MachineSample {
        /// The machine.
        machine: String,
        /// Its QEMU, as the host sees it.
        host: QemuUse,
        /// What the guest says, when a guest sample was due and had.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guest: Option<GuestUse>,
        /// Why a due guest sample could not be had.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guest_missing: Option<String>,
    },
    /// The host as a whole at the same moment as the machine samples before it: what a slow
    /// host looks like, so that it is not mistaken for a broken cluster.
    HostSample(HostUse),
}

/// One QEMU process over a sample interval. Percentages are of one host core (a QEMU running
/// two busy vCPUs shows ~200).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QemuUse {
    /// The whole process: vCPU threads, the I/O thread, everything.
    pub cpu_pct: f64,
    /// Each vCPU thread (`CPU 0/TCG`, `CPU 1/KVM`...), in vCPU order.
    pub vcpu_pct: Vec<f64>,
    /// Its resident memory, MiB.
    pub rss_mib: f64,
    /// Wake-ups a second (context switches, voluntary and not), all threads together. Under TCG
    /// each guest timer wakes a vCPU thread from halt and goes through the main loop, so this
    /// is what an idle lab's CPU follows and what a regression in the guests' timers moves: an
    /// idle lab's vCPU threads woke 1100-1650 times a second each before the guests' daemons
    /// got timer slack, 220-360 after. 0 in event logs from before it was sampled.
    #[serde(default)]
    pub wakeups_per_sec: f64,
    /// Each vCPU thread's, in vCPU order, as [`QemuUse::vcpu_pct`]: the guest's timers show
    /// there first. Empty in event logs from before it was sampled.
    #[serde(default)]
    pub vcpu_wakeups_per_sec: Vec<f64>,
}

/// The guest's own view over its (longer) sample interval. `user`, `system`, `iowait` and
/// `steal` are percent of all of the guest's CPU time (all vCPUs together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestUse {
    /// User time.
    pub user: f64,
    /// System time.
    pub system: f64,
    /// Time waiting for I/O.
    pub iowait: f64,
    /// Time the host took from the guest's vCPUs.
    pub steal: f64,
    /// The one-minute load average.
    pub load1: f64,
    /// `MemAvailable`, MiB.
    pub mem_avail_mib: f64,
    /// The busiest processes, busiest first, in percent of one vCPU.
    pub top: Vec<ProcessUse>,
    /// What taking this sample cost inside the guest, in percent of one vCPU over the interval.
    pub cost_pct: f64,
}

/// One process in a guest sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessUse {
    /// Its command name (`/proc/PID/comm`).
    pub comm: String,
    /// Its CPU, percent of one vCPU over the interval.
    pub pct: f64,
}

/// The host over a sample interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostUse {
    /// Time the host's hypervisor gave to others, percent of all host CPU time.
    pub steal_pct: f64,
    /// Host CPUs the lab's QEMUs may run on (their affinity, together).
    pub cpus_allowed: u32,
    /// Host CPUs online.
    pub cpus_online: u32,
    /// `LABTEST_HOST_CPUS` (or `--host-cpus`) when the lab was confined on purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confined_to: Option<u32>,
    /// The sampler's own time on the host, percent of one core over the interval.
    pub sampler_pct: f64,
}

/// A delay a check measured from a named moment (`since`, e.g. `power-loss`) to the moment
/// its condition held (or it gave up), against the budget the check allowed from that moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// The moment's name (`power-loss`).
    pub since: String,
    /// From that moment to the end of the check.
    #[serde(with = "secs")]
    pub delay: Duration,
    /// What the check allowed from that moment.
    #[serde(with = "secs")]
    pub budget: Duration,
}

/// The phases of a run, in the order they normally come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `nix build` of the machines (or, mid-scenario, of a generation).
    Build,
    /// QEMU started, waiting for every guest to answer.
    Boot,
    /// Joining nodes and the readiness gate.
    Readiness,
    /// The scenarios running.
    Scenario,
    /// Machines stopped, evidence kept.
    Teardown,
}

impl Phase {
    /// The phase as reports write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Build => "build",
            Phase::Boot => "boot",
            Phase::Readiness => "readiness",
            Phase::Scenario => "scenario",
            Phase::Teardown => "teardown",
        }
    }
}

/// How a scenario attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// The lab misbehaved: a check failed. This is what the scenario exists to catch.
    Failed,
    /// The scenario could not do its job (harness bug, bad input, lost connection):
    /// says nothing about the lab.
    Error,
}

impl Outcome {
    /// The outcome as reports write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Error => "error",
        }
    }
}

/// Which output of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The emission handle. Cheap to clone; every clone feeds the same consumers and shares
/// the run's start time.
///
/// [`Events::emit`] never blocks and never fails: a slow or gone consumer cannot stall a
/// boot or a scenario. Consumers attach with [`Events::subscribe`] (a stream, for the live
/// view) or [`Events::record`] (a `Vec`, for tests and `events.jsonl`); attach them before
/// the work starts, since nothing is replayed.
#[derive(Clone)]
pub struct Events {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    start: Instant,
    /// The wall clock at `start`.
    wall: SystemTime,
    // One lock for stamping and fan-out, so every consumer sees the same order and
    // `elapsed` never goes backwards within a stream.
    sinks: Mutex<Vec<Sink>>,
}

enum Sink {
    Channel(mpsc::UnboundedSender<Event>),
    Record(Arc<Mutex<Vec<Event>>>),
}

impl Events {
    /// A new run: `elapsed` counts from now.
    pub fn new() -> Self {
        Self {
            inner: Some(Arc::new(Inner {
                start: Instant::now(),
                wall: SystemTime::now(),
                sinks: Mutex::new(Vec::new()),
            })),
        }
    }

    /// A handle that drops everything, for callers (tests, one-off commands) that want no
    /// reporting. Subscribers of it never receive anything.
    pub fn discard() -> Self {
        Self { inner: None }
    }

    /// Stamps `kind` with the time since the run started and hands it to every consumer.
    pub fn emit(&self, kind: EventKind) {
        let Some(inner) = &self.inner else { return };
        let mut sinks = lock(&inner.sinks);
        let event = Event {
            elapsed: inner.start.elapsed(),
            kind,
        };
        // A receiver that was dropped has stopped listening; forget it.
        sinks.retain(|sink| match sink {
            Sink::Channel(tx) => tx.send(event.clone()).is_ok(),
            Sink::Record(events) => {
                lock(events).push(event.clone());
                true
            }
        });
    }

    /// A stream of every event emitted from now on. Use `recv().await` in a task or
    /// `blocking_recv()` in a thread; the stream ends when every `Events` clone is dropped.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(inner) = &self.inner {
            lock(&inner.sinks).push(Sink::Channel(tx));
        }
        rx
    }

    /// Keeps every event emitted from now on in memory.
    pub fn record(&self) -> Recorder {
        let events = Arc::new(Mutex::new(Vec::new()));
        if let Some(inner) = &self.inner {
            lock(&inner.sinks).push(Sink::Record(events.clone()));
        }
        Recorder { events }
    }

    /// Time since the run started (zero for [`Events::discard`]).
    pub fn elapsed(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |inner| inner.start.elapsed())
    }

    /// The wall-clock time the run started, where `elapsed` counts from (now for
    /// [`Events::discard`], whose `elapsed` is always zero).
    pub fn started_at(&self) -> SystemTime {
        self.inner
            .as_ref()
            .map_or_else(SystemTime::now, |inner| inner.wall)
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("discard", &self.inner.is_none())
            .finish_non_exhaustive()
    }
}

/// The events recorded by [`Events::record`].
#[derive(Clone, Debug)]
pub struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    /// A copy of everything recorded so far, in emission order.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }
}

// A panic in one emitter must not silence reporting for the rest of the run: the data
// under these locks (a Vec of events or of senders) is valid whatever panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_consumer_sees_every_event_in_order() {
        let events = Events::new();
        let recorder = events.record();
        let mut rx = events.subscribe();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let events = events.clone();
                std::thread::spawn(move || {
                    for j in 0..50 {
                        events.emit(EventKind::Warning {
                            message: format!("{i}/{j}"),
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("emitter thread");
        }
        drop(events);
        let recorded = recorder.events();
        assert_eq!(recorded.len(), 200);
        assert!(recorded.windows(2).all(|w| w[0].elapsed <= w[1].elapsed));
        let mut streamed = Vec::new();
        while let Some(event) = rx.blocking_recv() {
            streamed.push(event);
        }
        assert_eq!(streamed, recorded);
    }

    #[test]
    fn a_dropped_subscriber_does_not_stop_the_others() {
        let events = Events::new();
        drop(events.subscribe());
        let recorder = events.record();
        events.emit(EventKind::Phase { phase: Phase::Boot });
        assert_eq!(recorder.events().len(), 1);
    }

    #[test]
    fn discard_accepts_and_drops() {
        let events = Events::discard();
        let recorder = events.record();
        events.emit(EventKind::RunFinished { aborted: None });
        assert!(recorder.events().is_empty());
    }

    #[test]
    fn json_line_round_trip() {
        let event = Event {
            elapsed: Duration::from_millis(12_345),
            kind: EventKind::CheckFailed {
                scope: "readiness".into(),
                check: "apiserver /readyz".into(),
                reason: "timed out after 120s".into(),
                observed: Some("connection refused".into()),
                evidence: vec![PathBuf::from(
                    "machines/grey-area/journal-kube-apiserver.txt",
                )],
                took: Duration::from_millis(120_001),
                measured: Some(Measured {
                    since: "power-loss".into(),
                    delay: Duration::from_millis(121_500),
                    budget: Duration::from_secs(180),
                }),
            },
        };
        let line = serde_json::to_string(&event).expect("serialize");
        assert!(line.starts_with(r#"{"elapsed":12.345,"kind":"check_failed","#));
        let back: Event = serde_json::from_str(&line).expect("deserialize");
        assert_eq!(back, event);
    }

    #[test]
    fn the_run_start_is_written_once_and_optional_when_read() {
        let events = Events::new();
        let before = std::time::SystemTime::now();
        assert!(events.started_at() <= before);
        assert!(Events::discard().started_at() >= before);
        let line = r#"{"elapsed":0.0,"kind":"run_started","lab":".","scenarios":[],"started_at":"2026-12-03T05:36:00.250Z"}"#;
        let event: Event = serde_json::from_str(line).expect("deserialize");
        assert_eq!(serde_json::to_string(&event).expect("serialize"), line);
        // An events.jsonl from before the field existed still reads.
        let old: Event = serde_json::from_str(
            r#"{"elapsed":0.0,"kind":"run_started","lab":".","scenarios":[]}"#,
        )
        .expect("deserialize");
        assert!(matches!(
            old.kind,
            EventKind::RunStarted {
                started_at: None,
                ..
            }
        ));
    }

    #[test]
    fn a_machine_sample_from_before_wake_ups_still_reads() {
        let line = r#"{"elapsed":3.0,"kind":"machine_sample","machine":"grey-area","host":{"cpu_pct":50.0,"vcpu_pct":[40.0],"rss_mib":800.0}}"#;
        let event: Event = serde_json::from_str(line).expect("deserialize");
        assert!(
            matches!(&event.kind, EventKind::MachineSample { host, .. }
                if host.wakeups_per_sec == 0.0 && host.vcpu_wakeups_per_sec.is_empty()),
            "{event:?}"
        );
    }
}
