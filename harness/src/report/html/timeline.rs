//! The timeline's model: which lanes, windows and marks a run's events make, derived by the pure
//! [`timeline`] so that snapshot tests pin the data and the drawing ([`super::svg`]) stays dumb.
use std::time::Duration;

use serde::Serialize;

use crate::events::{Event, EventKind, Measured, Outcome};
use crate::fault::Fault;
use crate::secs;

/// What the timeline shows, in run time (since the run started).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    /// When the last event came: the timeline's width.
    #[serde(with = "secs")]
    pub end: Duration,
    /// The run's phases, one after another.
    pub phases: Vec<Span>,
    /// Every scenario attempt.
    pub attempts: Vec<AttemptSpan>,
    /// A lane per machine.
    pub machines: Vec<MachineLane>,
    /// A lane per check scope (`readiness`, each scenario).
    pub scopes: Vec<ScopeLane>,
}

/// A labelled stretch of run time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    /// What it is (`boot`, `up`).
    pub label: String,
    /// Where it starts.
    #[serde(with = "secs")]
    pub start: Duration,
    /// Where it ends.
    #[serde(with = "secs")]
    pub end: Duration,
}

/// One attempt of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptSpan {
    /// The scenario's name.
    pub scenario: String,
    /// Which attempt, from 1.
    pub attempt: u32,
    /// `None`: the run ended during the attempt.
    pub outcome: Option<Outcome>,
    /// Where it starts.
    #[serde(with = "secs")]
    pub start: Duration,
    /// Where it ends.
    #[serde(with = "secs")]
    pub end: Duration,
}

/// One machine's lane: its states, the faults on it and its host CPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineLane {
    /// The machine.
    pub name: String,
    /// `booting`, `up` or `off`; before its first start a machine has no span.
    pub states: Vec<Span>,
    /// The faults that touched it.
    pub faults: Vec<FaultSpan>,
    /// Its QEMU's host CPU at each sample: the band under the lane.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpu: Vec<CpuPoint>,
    #[serde(skip)]
    current: Option<(&'static str, Duration)>,
}

/// One sample of a machine's QEMU: percent of one host core, and its vCPUs (a full vCPU is
/// 100 of it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuPoint {
    /// When it was taken.
    #[serde(with = "secs")]
    pub at: Duration,
    /// The QEMU's CPU, percent of one host core.
    pub host_pct: f64,
    /// The machine's vCPUs.
    pub vcpus: u32,
}

/// A fault on one machine: a window from the fault to what ends it (`thaw` after `freeze`,
/// the machine up again after `crash`), or an instant for a fault nothing ends (`reboot`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultSpan {
    /// The fault's name (`crash`).
    pub fault: String,
    /// The other machine of a fault between two (`partition`).
    pub with: Option<String>,
    /// Where it starts.
    #[serde(with = "secs")]
    pub start: Duration,
    /// Where it ends (the instant itself for a fault nothing ends).
    #[serde(with = "secs")]
    pub end: Duration,
    /// What ended the window; `None` for an instant or a window still open at the end.
    pub until: Option<String>,
    /// Still in effect when the run ended.
    pub open: bool,
    #[serde(skip)]
    pub(super) ended_by: Option<&'static str>,
}

/// One check scope's lane: its checks, stacked where they overlap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScopeLane {
    /// The scope (`readiness`, a scenario's name).
    pub name: String,
    /// Checks that overlap in time go on separate rows.
    pub rows: u32,
    /// Its checks.
    pub checks: Vec<CheckMark>,
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    /// Its condition held.
    Passed,
    /// It gave up.
    Failed,
    /// Never ended: the run stopped first.
    Running,
}

/// One check on its scope's lane.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckMark {
    /// The check's name.
    pub check: String,
    /// How it ended.
    pub state: CheckState,
    /// Where it starts.
    #[serde(with = "secs")]
    pub start: Duration,
    /// Where it ends.
    #[serde(with = "secs")]
    pub end: Duration,
    /// Zero when the start was not seen.
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Its row on the lane, from 0.
    pub row: u32,
    /// The last state the check reported, or for a failed check the one it gave up on.
    pub observed: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
    /// The delay it measured, if any.
    pub measured: Option<Measured>,
}

/// A fault as the timeline needs it: the machines it touches, its name, and the name of what
/// ends its window (the fault's undo; the machine up again after a power loss).
fn fault_of(kind: &EventKind) -> Option<(Vec<String>, &'static str, Option<&'static str>)> {
    let EventKind::FaultInjected { fault } = kind else {
        return None;
    };
    let ended_by = match fault {
        Fault::Crash { .. } | Fault::Shutdown { .. } => Some(MACHINE_UP),
        _ => fault.undo().map(|undo| undo.name()),
    };
    let machines = fault.machines().into_iter().map(String::from).collect();
    Some((machines, fault.name(), ended_by))
}

pub(super) const MACHINE_UP: &str = "machine up";

fn ends(window: &FaultSpan, fault: &str) -> bool {
    window.open && window.ended_by == Some(fault)
}

/// Folds events into the timeline. Like
/// [`Summary::from_events`](crate::report::Summary::from_events), a run cut short still gives a
/// truthful picture: whatever was open ends with the last event.
pub fn timeline(events: &[Event]) -> Timeline {
    let end = events.last().map_or(Duration::ZERO, |e| e.elapsed);
    let mut t = Timeline {
        end,
        phases: Vec::new(),
        attempts: Vec::new(),
        machines: Vec::new(),
        scopes: Vec::new(),
    };
    let mut phase: Option<(&'static str, Duration)> = None;
    let close_phase = |t: &mut Timeline, phase: &mut Option<(&str, Duration)>, at| {
        if let Some((label, start)) = phase.take() {
            t.phases.push(Span {
                label: label.to_string(),
                start,
                end: at,
            });
        }
    };
    for event in events {
        let at = event.elapsed;
        if let Some((machines, fault, ended_by)) = fault_of(&event.kind) {
            t.fault(&machines, fault, ended_by, at);
            continue;
        }
        match &event.kind {
            EventKind::RunFinished { .. } => close_phase(&mut t, &mut phase, at),
            EventKind::Phase { phase: p } => {
                close_phase(&mut t, &mut phase, at);
                phase = Some((p.as_str(), at));
            }
            EventKind::MachineStarting { machine } => t.machine(machine).enter("booting", at),
            EventKind::MachineUp { machine, boot_time } => {
                let lane = t.machine(machine);
                if !matches!(lane.current, Some(("booting", _))) {
                    lane.enter("booting", at.saturating_sub(*boot_time));
                }
                lane.enter("up", at);
                for f in lane.faults.iter_mut().filter(|f| ends(f, MACHINE_UP)) {
                    f.end = at;
                    f.open = false;
                    f.until = Some(MACHINE_UP.to_string());
                }
            }
            EventKind::MachineExited { machine, .. } => t.machine(machine).enter("off", at),
            EventKind::MachineSample { machine, host, .. } => {
                t.machine(machine).cpu.push(CpuPoint {
                    at,
                    host_pct: host.cpu_pct,
                    vcpus: host.vcpu_pct.len() as u32,
                })
            }
            EventKind::CheckStarted {
                scope,
                check,
                timeout,
            } => t.scope(scope).checks.push(CheckMark {
                check: check.clone(),
                state: CheckState::Running,
                start: at,
                end: at,
                timeout: *timeout,
                row: 0,
                observed: None,
                reason: None,
                measured: None,
            }),
            EventKind::CheckProgress {
                scope,
                check,
                observed,
            } => {
                if let Some(mark) = t.running(scope, check) {
                    mark.observed = Some(observed.clone());
                }
            }
            EventKind::CheckPassed {
                scope,
                check,
                took,
                measured,
            } => t.check_ended(scope, check, at, *took, measured, None),
            EventKind::CheckFailed {
                scope,
                check,
                reason,
                observed,
                took,
                measured,
                ..
            } => t.check_ended(scope, check, at, *took, measured, Some((reason, observed))),
            EventKind::ScenarioStarted { scenario, attempt } => {
                t.scope(scenario);
                t.attempts.push(AttemptSpan {
                    scenario: scenario.clone(),
                    attempt: *attempt,
                    outcome: None,
                    start: at,
                    end: at,
                });
            }
            EventKind::ScenarioFinished {
                scenario, outcome, ..
            } => {
                if let Some(a) = t
                    .attempts
                    .iter_mut()
                    .rev()
                    .find(|a| &a.scenario == scenario && a.outcome.is_none())
                {
                    a.outcome = Some(*outcome);
                    a.end = at;
                }
            }
            _ => {}
        }
    }
    close_phase(&mut t, &mut phase, end);
    for lane in &mut t.machines {
        if let Some((label, start)) = lane.current.take() {
            lane.states.push(Span {
                label: label.to_string(),
                start,
                end,
            });
        }
        for f in lane.faults.iter_mut().filter(|f| f.open) {
            f.end = end;
        }
    }
    for a in t.attempts.iter_mut().filter(|a| a.outcome.is_none()) {
        a.end = end;
    }
    for lane in &mut t.scopes {
        for mark in &mut lane.checks {
            if mark.state == CheckState::Running {
                mark.end = end;
            }
        }
        lane.pack();
    }
    t
}

impl Timeline {
    fn machine(&mut self, name: &str) -> &mut MachineLane {
        let i = match self.machines.iter().position(|m| m.name == name) {
            Some(i) => i,
            None => {
                self.machines.push(MachineLane {
                    name: name.to_string(),
                    states: Vec::new(),
                    faults: Vec::new(),
                    cpu: Vec::new(),
                    current: None,
                });
                self.machines.len() - 1
            }
        };
        &mut self.machines[i]
    }

    fn scope(&mut self, name: &str) -> &mut ScopeLane {
        let i = match self.scopes.iter().position(|s| s.name == name) {
            Some(i) => i,
            None => {
                self.scopes.push(ScopeLane {
                    name: name.to_string(),
                    rows: 1,
                    checks: Vec::new(),
                });
                self.scopes.len() - 1
            }
        };
        &mut self.scopes[i]
    }

    fn running(&mut self, scope: &str, check: &str) -> Option<&mut CheckMark> {
        self.scope(scope)
            .checks
            .iter_mut()
            .rev()
            .find(|m| m.check == check && m.state == CheckState::Running)
    }

    fn check_ended(
        &mut self,
        scope: &str,
        check: &str,
        at: Duration,
        took: Duration,
        measured: &Option<Measured>,
        failed: Option<(&String, &Option<String>)>,
    ) {
        let mark = match self.running(scope, check) {
            Some(mark) => mark,
            None => {
                // Its start was not seen: place it by how long it took.
                let lane = self.scope(scope);
                lane.checks.push(CheckMark {
                    check: check.to_string(),
                    state: CheckState::Running,
                    start: at.saturating_sub(took),
                    end: at,
                    timeout: Duration::ZERO,
                    row: 0,
                    observed: None,
                    reason: None,
                    measured: None,
                });
                let last = lane.checks.len() - 1;
                &mut lane.checks[last]
            }
        };
        mark.end = at;
        mark.measured = measured.clone();
        mark.state = CheckState::Passed;
        if let Some((reason, observed)) = failed {
            mark.state = CheckState::Failed;
            mark.reason = Some(reason.clone());
            if observed.is_some() {
                mark.observed = observed.clone();
            }
        }
    }

    fn fault(
        &mut self,
        machines: &[String],
        fault: &str,
        ended_by: Option<&'static str>,
        at: Duration,
    ) {
        for (i, name) in machines.iter().enumerate() {
            let with = (machines.len() == 2).then(|| machines[1 - i].clone());
            let lane = self.machine(name);
            // A partition is symmetric: `b<->a` heals `a<->b`.
            let window = lane
                .faults
                .iter_mut()
                .rev()
                .find(|f| ends(f, fault) && f.with == with);
            if let Some(window) = window {
                window.end = at;
                window.open = false;
                window.until = Some(fault.to_string());
                continue;
            }
            lane.faults.push(FaultSpan {
                fault: fault.to_string(),
                with,
                start: at,
                end: at,
                until: None,
                open: ended_by.is_some(),
                ended_by,
            });
        }
    }
}

impl MachineLane {
    fn enter(&mut self, state: &'static str, at: Duration) {
        if let Some((label, start)) = self.current.replace((state, at)) {
            self.states.push(Span {
                label: label.to_string(),
                start,
                end: at,
            });
        }
    }
}

impl ScopeLane {
    /// First row free at a check's start, in order of start: overlapping checks stack.
    fn pack(&mut self) {
        let mut order: Vec<usize> = (0..self.checks.len()).collect();
        order.sort_by_key(|&i| self.checks[i].start);
        let mut row_ends: Vec<Duration> = Vec::new();
        for i in order {
            let mark = &mut self.checks[i];
            let row = match row_ends.iter().position(|&end| end <= mark.start) {
                Some(row) => row,
                None => {
                    row_ends.push(Duration::ZERO);
                    row_ends.len() - 1
                }
            };
            row_ends[row] = mark.end;
            mark.row = row as u32;
        }
        self.rows = row_ends.len().max(1) as u32;
    }
}
