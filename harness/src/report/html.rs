//! `report/index.html`: one self-contained page about a run, for a person with a browser and
//! no network (a CI artifact, a laptop on a train). Inline CSS, inline SVG and a few lines of
//! script; no URL of any kind, so it opens from a zip or `file://` as it is.
//!
//! The timeline is derived by the pure [`timeline`] into a small serializable model, so the
//! data (which lane, which window, which mark) is pinned by snapshot tests and the drawing on
//! top of it stays dumb.
//!
//! ```
//! use harness::report::{history, html, Summary};
//!
//! let events = Vec::new();
//! let summary = Summary::from_events(&events);
//! let page = html::render(&events, &summary, &history::load("history.jsonl".as_ref(), "", 20));
//! assert!(page.starts_with("<!doctype html>"));
//! ```
use std::fmt::Write as _;
use std::path::{Component, Path};
use std::time::Duration;

use serde::Serialize;

use super::history::RunRecord;
use super::summary::{CheckRecord, FailedCheck, RunResult, ScenarioResult, Summary};
use super::{fmt_duration, fmt_measured, ARTIFACTS_FOLDER};
use crate::events::{Event, EventKind, Measured, Outcome};
use crate::fault::Fault;
use crate::secs;

/// What the timeline shows, in run time (since the run started).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    #[serde(with = "secs")]
    pub end: Duration,
    pub phases: Vec<Span>,
    pub attempts: Vec<AttemptSpan>,
    pub machines: Vec<MachineLane>,
    pub scopes: Vec<ScopeLane>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    pub label: String,
    #[serde(with = "secs")]
    pub start: Duration,
    #[serde(with = "secs")]
    pub end: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptSpan {
    pub scenario: String,
    pub attempt: u32,
    /// `None`: the run ended during the attempt.
    pub outcome: Option<Outcome>,
    #[serde(with = "secs")]
    pub start: Duration,
    #[serde(with = "secs")]
    pub end: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineLane {
    pub name: String,
    /// `booting`, `up` or `off`; before its first start a machine has no span.
    pub states: Vec<Span>,
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
    #[serde(with = "secs")]
    pub at: Duration,
    pub host_pct: f64,
    pub vcpus: u32,
}

/// A fault on one machine: a window from the fault to what ends it (`thaw` after `freeze`,
/// the machine up again after `crash`), or an instant for a fault nothing ends (`reboot`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultSpan {
    pub fault: String,
    /// The other machine of a fault between two (`partition`).
    pub with: Option<String>,
    #[serde(with = "secs")]
    pub start: Duration,
    #[serde(with = "secs")]
    pub end: Duration,
    /// What ended the window; `None` for an instant or a window still open at the end.
    pub until: Option<String>,
    /// Still in effect when the run ended.
    pub open: bool,
    #[serde(skip)]
    ended_by: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScopeLane {
    pub name: String,
    /// Checks that overlap in time go on separate rows.
    pub rows: u32,
    pub checks: Vec<CheckMark>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    Passed,
    Failed,
    /// Never ended: the run stopped first.
    Running,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckMark {
    pub check: String,
    pub state: CheckState,
    #[serde(with = "secs")]
    pub start: Duration,
    #[serde(with = "secs")]
    pub end: Duration,
    /// Zero when the start was not seen.
    #[serde(with = "secs")]
    pub timeout: Duration,
    pub row: u32,
    /// The last state the check reported, or for a failed check the one it gave up on.
    pub observed: Option<String>,
    pub reason: Option<String>,
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

const MACHINE_UP: &str = "machine up";

fn ends(window: &FaultSpan, fault: &str) -> bool {
    window.open && window.ended_by == Some(fault)
}

/// Folds events into the timeline. Like [`Summary::from_events`], a run cut short still
/// gives a truthful picture: whatever was open ends with the last event.
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

/// The page. `history` holds earlier runs of the lab, oldest first ([`super::history::load`]);
/// the current run is taken from `summary`, and if `history` already ends with it (appended
/// before rendering) it is not shown twice.
pub fn render(events: &[Event], summary: &Summary, history: &[RunRecord]) -> String {
    let timeline = timeline(events);
    let folder = events.iter().find_map(|e| match &e.kind {
        EventKind::Artifact { path, what } if what == ARTIFACTS_FOLDER => Some(path.as_path()),
        _ => None,
    });
    let result = run_result(summary.result);
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>labtest {}: {}</title><style>{CSS}</style></head>\n<body>\n",
        esc(&summary.lab),
        result
    );
    header(&mut out, summary);
    timeline_svg(&mut out, &timeline);
    measured_table(&mut out, summary);
    cpu_table(&mut out, summary);
    failures(&mut out, summary, folder);
    history_section(&mut out, summary, history);
    artifacts(&mut out, events, folder);
    let _ = write!(out, "<script>{SCRIPT}</script>\n</body></html>\n");
    out
}

fn run_result(r: RunResult) -> &'static str {
    match r {
        RunResult::Passed => "passed",
        RunResult::Failed => "failed",
        RunResult::Aborted => "aborted",
    }
}

fn scenario_class(r: ScenarioResult) -> &'static str {
    match r {
        ScenarioResult::Passed => "passed",
        ScenarioResult::Flaky => "flaky",
        ScenarioResult::Failed => "failed",
        ScenarioResult::Error => "error",
        ScenarioResult::NotRun => "not-run",
    }
}

fn header(out: &mut String, s: &Summary) {
    let result = run_result(s.result);
    let _ = write!(
        out,
        "<header class=\"run {result}\"><h1>labtest <span class=\"badge {result}\">{}</span> \
         lab <code>{}</code></h1><p>{}",
        result.to_uppercase(),
        esc(&s.lab),
        fmt_duration(s.duration)
    );
    for p in &s.phases {
        let _ = write!(
            out,
            " &middot; {} {}",
            p.phase.as_str(),
            fmt_duration(p.took)
        );
    }
    out.push_str("</p>");
    if !s.machines.is_empty() {
        let machines: Vec<String> = s
            .machines
            .iter()
            .map(|m| {
                let boot = m
                    .first_boot
                    .map_or("never up".into(), |b| format!("up in {}", fmt_duration(b)));
                let starts = if m.starts > 1 {
                    format!(" ({} starts)", m.starts)
                } else {
                    String::new()
                };
                format!("<b>{}</b> {boot}{starts}", esc(&m.name))
            })
            .collect();
        let _ = write!(out, "<p>{}</p>", machines.join(", "));
    }
    for w in &s.warnings {
        let _ = write!(out, "<p class=\"warning\">WARNING: {}</p>", esc(w));
    }
    if let Some(starved) = s.cpu.as_ref().and_then(|c| c.starved.as_ref()) {
        let _ = write!(out, "<p class=\"starved\">{}</p>", esc(starved));
    }
    if let Some(reason) = &s.aborted {
        let _ = write!(
            out,
            "<p class=\"abort-reason\">run aborted: {}</p>",
            esc(reason)
        );
    }
    out.push_str(
        "</header>\n<section id=\"scenarios\"><table><tr><th>scenario</th><th>result</th>\
         <th>duration</th><th>first failure</th></tr>",
    );
    for sc in &s.scenarios {
        let mut result = sc.result.as_str().to_string();
        if sc.attempts.len() > 1 {
            let _ = write!(result, " ({} attempts)", sc.attempts.len());
        }
        let failure = match sc.first_failure() {
            Some(f) => format!("{}: {}", f.check, f.reason),
            None => sc
                .attempts
                .iter()
                .rev()
                .find_map(|a| a.message.clone())
                .unwrap_or_default(),
        };
        let duration = if sc.attempts.is_empty() {
            "-".into()
        } else {
            fmt_duration(sc.duration)
        };
        let _ = write!(
            out,
            "<tr class=\"{}\"><td>{}</td><td class=\"result\">{}</td><td class=\"num\">{duration}\
             </td><td>{}</td></tr>",
            scenario_class(sc.result),
            esc(&sc.name),
            esc(&result),
            esc(&failure)
        );
    }
    out.push_str("</table></section>\n");
}

// Timeline geometry, in SVG user units (= CSS px at the page's width).
const WIDTH: f64 = 1240.0;
const LABEL: f64 = 190.0;
const PLOT: f64 = WIDTH - LABEL - 20.0;
const ROW: f64 = 22.0;
const CHECK_ROW: f64 = 16.0;
const CPU_ROW: f64 = 18.0;

/// A machine's host CPU under its lane: an area from 0 to the band's top, which is all its vCPUs
/// busy (or the highest sample, when the QEMU's other threads took it over that).
fn cpu_band(out: &mut String, m: &MachineLane, y: f64, x: &dyn Fn(Duration) -> f64) {
    let vcpus = m.cpu.iter().map(|p| p.vcpus).max().unwrap_or(1).max(1);
    let peak = m.cpu.iter().map(|p| p.host_pct).fold(0.0, f64::max);
    let scale = (f64::from(vcpus) * 100.0).max(peak).max(1.0);
    let mean = m.cpu.iter().map(|p| p.host_pct).sum::<f64>() / m.cpu.len() as f64;
    let base = y + CPU_ROW - 2.0;
    let height = CPU_ROW - 4.0;
    let mut points = format!("{:.1},{base:.1}", x(m.cpu[0].at));
    for p in &m.cpu {
        let _ = write!(
            points,
            " {:.1},{:.1}",
            x(p.at),
            base - p.host_pct / scale * height
        );
    }
    let _ = write!(points, " {:.1},{base:.1}", x(m.cpu[m.cpu.len() - 1].at));
    let _ = write!(
        out,
        "<g class=\"lane cpu\" data-machine=\"{name}\"><text class=\"lane-label cpu\" x=\"{lx}\" \
         y=\"{ty}\">cpu</text><rect class=\"cpu-frame\" x=\"{LABEL}\" y=\"{top}\" width=\"{PLOT}\" \
         height=\"{height}\"/><polygon class=\"cpu\" points=\"{points}\"><title>{name}: its QEMU used \
         {mean:.0}% of a host core on average, {peak:.0}% at most (band top: {scale:.0}%, {vcpus} \
         vCPU{s} busy)</title></polygon></g>",
        name = esc(&m.name),
        lx = LABEL - 8.0,
        ty = y + 12.0,
        top = base - height,
        s = if vcpus == 1 { "" } else { "s" },
    );
}

fn timeline_svg(out: &mut String, t: &Timeline) {
    let end = t.end.as_secs_f64().max(1.0);
    let x = |d: Duration| LABEL + d.as_secs_f64() / end * PLOT;
    let w = |a: Duration, b: Duration| (x(b) - x(a)).max(2.0);
    let mut body = String::new();
    let mut y = 28.0;

    row_label(&mut body, y, "phases");
    for p in &t.phases {
        let _ = write!(
            body,
            "<rect class=\"phase {0}\" x=\"{1:.1}\" y=\"{y}\" width=\"{2:.1}\" height=\"{3}\">\
             <title>{0}: {4} ({5})</title></rect>",
            esc(&p.label),
            x(p.start),
            w(p.start, p.end),
            ROW - 4.0,
            secs_span(p.start, p.end),
            fmt_duration(p.end.saturating_sub(p.start))
        );
        fitted_text(
            &mut body,
            x(p.start),
            w(p.start, p.end),
            y + 13.0,
            &p.label,
            true,
        );
    }
    y += ROW;
    row_label(&mut body, y, "scenarios");
    for a in &t.attempts {
        let outcome = a.outcome.map_or("unfinished", Outcome::as_str);
        let label = attempt_label(t, a);
        let _ = write!(
            body,
            "<rect class=\"scenario {outcome}\" data-scenario=\"{}\" x=\"{:.1}\" y=\"{y}\" \
             width=\"{:.1}\" height=\"{}\"><title>{} {outcome}: {}</title></rect>",
            esc(&a.scenario),
            x(a.start),
            w(a.start, a.end),
            ROW - 4.0,
            esc(&label),
            secs_span(a.start, a.end)
        );
        fitted_text(
            &mut body,
            x(a.start),
            w(a.start, a.end),
            y + 13.0,
            &label,
            true,
        );
    }
    y += ROW + 8.0;

    for m in &t.machines {
        let _ = write!(
            body,
            "<g class=\"lane machine\" data-machine=\"{}\">",
            esc(&m.name)
        );
        row_label(&mut body, y, &m.name);
        for s in &m.states {
            let _ = write!(
                body,
                "<rect class=\"state {0}\" x=\"{1:.1}\" y=\"{2}\" width=\"{3:.1}\" height=\"{4}\">\
                 <title>{5} {0}: {6}</title></rect>",
                s.label,
                x(s.start),
                y + 3.0,
                w(s.start, s.end),
                ROW - 8.0,
                esc(&m.name),
                secs_span(s.start, s.end)
            );
        }
        for f in &m.faults {
            let instant = f.ended_by.is_none();
            let with = f
                .with
                .as_ref()
                .map(|o| format!(" with {}", esc(o)))
                .unwrap_or_default();
            let until = match (&f.until, f.open, instant) {
                (_, _, true) => format!("at {:.1}s", f.start.as_secs_f64()),
                (Some(u), _, _) => format!("{} until {}", secs_span(f.start, f.end), esc(u)),
                (None, _, _) => {
                    format!("{} (still in effect at the end)", secs_span(f.start, f.end))
                }
            };
            let _ = write!(
                body,
                "<rect class=\"fault{}\" data-fault=\"{}\" x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" \
                 height=\"{}\"><title>{} {}{with}: {until}</title></rect>",
                if instant { " instant" } else { "" },
                esc(&f.fault),
                x(f.start) - if instant { 1.5 } else { 0.0 },
                y - 1.0,
                if instant { 3.0 } else { w(f.start, f.end) },
                ROW,
                esc(&f.fault),
                esc(&m.name)
            );
            let _ = write!(
                body,
                "<text class=\"fault-label\" x=\"{:.1}\" y=\"{}\">{}</text>",
                x(f.start) + 3.0,
                y + 14.0,
                esc(&f.fault)
            );
        }
        body.push_str("</g>");
        y += ROW + 2.0;
        if !m.cpu.is_empty() {
            cpu_band(&mut body, m, y, &x);
            y += CPU_ROW + 2.0;
        }
    }
    y += 8.0;

    for lane in &t.scopes {
        let height = f64::from(lane.rows) * CHECK_ROW + 6.0;
        let _ = write!(
            body,
            "<g class=\"lane scope\" data-scope=\"{}\">",
            esc(&lane.name)
        );
        row_label(&mut body, y + height / 2.0 - 11.0, &lane.name);
        for a in t.attempts.iter().filter(|a| a.scenario == lane.name) {
            let _ = write!(
                body,
                "<rect class=\"attempt {}\" x=\"{:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"{height}\"/>",
                a.outcome.map_or("unfinished", Outcome::as_str),
                x(a.start),
                w(a.start, a.end)
            );
        }
        for (i, c) in lane.checks.iter().enumerate() {
            let cy = y + 3.0 + f64::from(c.row) * CHECK_ROW;
            let state = match c.state {
                CheckState::Passed => "passed",
                CheckState::Failed => "failed",
                CheckState::Running => "running",
            };
            let _ = write!(
                body,
                "<g class=\"check {state}\" data-check=\"{}\"><title>{}</title>",
                esc(&c.check),
                esc(&check_tooltip(c))
            );
            let _ = write!(
                body,
                "<rect x=\"{:.1}\" y=\"{cy}\" width=\"{:.1}\" height=\"{}\" rx=\"2\"/>",
                x(c.start),
                w(c.start, c.end),
                CHECK_ROW - 4.0
            );
            // From the named moment (the fault) to the end: the delay the check measured.
            if let Some(m) = &c.measured {
                let since = c.end.saturating_sub(m.delay);
                let _ = write!(
                    body,
                    "<line class=\"measured\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{2}\" y2=\"{2}\"/>\
                     <circle class=\"since\" cx=\"{0:.1}\" cy=\"{2}\" r=\"2.5\"/>",
                    x(since),
                    x(c.end),
                    cy + CHECK_ROW - 4.0
                );
            }
            let next = lane
                .checks
                .iter()
                .enumerate()
                .filter(|(j, o)| *j != i && o.row == c.row && o.start >= c.end)
                .map(|(_, o)| x(o.start))
                .fold(LABEL + PLOT, f64::min);
            // The name inside the bar, else after it up to the next check on its row, else cut.
            let (bar, after) = (w(c.start, c.end), next - x(c.end) - 4.0);
            let _ = fitted_text(&mut body, x(c.start), bar, cy + 10.0, &c.check, false)
                || fitted_text(&mut body, x(c.end) + 2.0, after, cy + 10.0, &c.check, false)
                || fitted_text(&mut body, x(c.start), bar, cy + 10.0, &c.check, true);
            body.push_str("</g>");
        }
        body.push_str("</g>");
        y += height + 4.0;
    }

    // Ticks last so that their lines run through every lane.
    let step = tick_step(end);
    let mut ticks = String::new();
    let mut s = 0.0;
    while s <= end + 1e-9 {
        let tx = LABEL + s / end * PLOT;
        let _ = write!(
            ticks,
            "<line class=\"tick\" x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"22\" y2=\"{y}\"/>\
             <text class=\"tick\" x=\"{tx:.1}\" y=\"16\">{s}s</text>"
        );
        s += step;
    }
    let _ = writeln!(
        out,
        "<section id=\"timeline\"><h2>Timeline <small>seconds since the run started</small></h2>\
         <svg class=\"timeline\" viewBox=\"0 0 {WIDTH} {h}\" width=\"{WIDTH}\" height=\"{h}\" \
         data-x0=\"{LABEL}\" data-plot=\"{PLOT}\" data-end=\"{end}\" role=\"img\">\
         <defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" \
         patternTransform=\"rotate(45)\"><rect width=\"3\" height=\"6\" class=\"hatch\"/></pattern>\
         </defs>{ticks}{body}<line id=\"cursor-line\" y1=\"22\" y2=\"{y}\" visibility=\"hidden\"/>\
         </svg><p class=\"legend\"><span class=\"k booting\"></span>booting \
         <span class=\"k up\"></span>up <span class=\"k off\"></span>off \
         <span class=\"k fault\"></span>fault <span class=\"k passed\"></span>check passed \
         <span class=\"k failed\"></span>check failed <span class=\"k running\"></span>unfinished \
         <span class=\"k cpu\"></span>host CPU of a machine's QEMU (top: all its vCPUs busy) \
         &#9679;&#8212; measured delay, from the moment it counts from</p></section>",
        h = y + 4.0
    );
}

fn row_label(out: &mut String, y: f64, label: &str) {
    let _ = write!(
        out,
        "<text class=\"lane-label\" x=\"{}\" y=\"{}\">{}</text>",
        LABEL - 8.0,
        y + 14.0,
        esc(label)
    );
}

/// Draws `text` at `x` if it fits in `width` (at ~6.5 px a character), cut short with an
/// ellipsis when `cut` allows; says whether it drew anything.
fn fitted_text(out: &mut String, x: f64, width: f64, y: f64, text: &str, cut: bool) -> bool {
    let room = ((width - 6.0) / 6.5).floor().max(0.0) as usize;
    let shown = if text.chars().count() <= room {
        text.to_string()
    } else if cut && room >= 5 {
        let mut short: String = text.chars().take(room - 1).collect();
        short.push('\u{2026}');
        short
    } else {
        return false;
    };
    let _ = write!(
        out,
        "<text class=\"in-bar\" x=\"{:.1}\" y=\"{y}\">{}</text>",
        x + 3.0,
        esc(&shown)
    );
    true
}

fn attempt_label(t: &Timeline, a: &AttemptSpan) -> String {
    if t.attempts
        .iter()
        .any(|o| o.scenario == a.scenario && o.attempt != a.attempt)
    {
        format!("{} #{}", a.scenario, a.attempt)
    } else {
        a.scenario.clone()
    }
}

fn secs_span(a: Duration, b: Duration) -> String {
    format!("{:.1}s-{:.1}s", a.as_secs_f64(), b.as_secs_f64())
}

fn check_tooltip(c: &CheckMark) -> String {
    let took = fmt_duration(c.end.saturating_sub(c.start));
    let mut tip = match c.state {
        CheckState::Passed => format!("{}: passed in {took}", c.check),
        CheckState::Failed => format!("{}: FAILED after {took}", c.check),
        CheckState::Running => format!("{}: unfinished after {took}", c.check),
    };
    if !c.timeout.is_zero() {
        let _ = write!(tip, " of {}", fmt_duration(c.timeout));
    }
    if let Some(reason) = &c.reason {
        let _ = write!(tip, "\n{reason}");
    }
    if let Some(observed) = &c.observed {
        let _ = write!(tip, "\nlast seen: {observed}");
    }
    if let Some(m) = &c.measured {
        let _ = write!(tip, "\n{}", fmt_measured(m));
    }
    tip
}

/// About ten ticks, at steps a person counts in.
fn tick_step(end: f64) -> f64 {
    const STEPS: [f64; 14] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
    ];
    STEPS
        .into_iter()
        .find(|&s| end / s <= 12.0)
        .unwrap_or((end / 10.0).ceil())
}

/// Every check with a measured delay, where it ran: the lab's (the gate, machines' waits),
/// then each scenario's.
fn measured_checks(s: &Summary) -> Vec<(String, &CheckRecord)> {
    let mut rows: Vec<(String, &CheckRecord)> =
        s.lab_checks.iter().map(|c| (c.scope.clone(), c)).collect();
    for sc in &s.scenarios {
        for a in &sc.attempts {
            let name = if sc.attempts.len() > 1 {
                format!("{} #{}", sc.name, a.attempt)
            } else {
                sc.name.clone()
            };
            rows.extend(a.checks.iter().map(|c| (name.clone(), c)));
        }
    }
    rows.retain(|(_, c)| c.measured.is_some());
    rows
}

fn measured_table(out: &mut String, s: &Summary) {
    let rows = measured_checks(s);
    out.push_str("<section id=\"measured\"><h2>Measured delays</h2>");
    if rows.is_empty() {
        out.push_str("<p>No check measured a delay in this run.</p></section>\n");
        return;
    }
    out.push_str(
        "<table><tr><th>scenario</th><th>check</th><th>since</th><th>delay</th><th>budget</th>\
         <th>of budget</th></tr>",
    );
    for (scope, c) in rows {
        let Some(m) = &c.measured else { continue };
        let fraction = m.delay.as_secs_f64() / m.budget.as_secs_f64().max(0.001);
        let class = match fraction {
            f if f > 1.0 => "over",
            f if f > 0.8 => "near",
            _ => "ok",
        };
        let _ = write!(
            out,
            "<tr class=\"{class}{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td><span class=\"bar\"><span style=\"width:{:.0}%\">\
             </span></span> {:.0}%</td></tr>",
            if c.passed { "" } else { " failed" },
            esc(&scope),
            esc(&c.check),
            esc(&m.since),
            fmt_duration(m.delay),
            fmt_duration(m.budget),
            (fraction * 100.0).min(100.0),
            fraction * 100.0
        );
    }
    out.push_str("</table></section>\n");
}

/// Where the CPU went per machine, and the host's side of it; nothing for an unsampled run.
fn cpu_table(out: &mut String, s: &Summary) {
    let Some(cpu) = &s.cpu else { return };
    out.push_str(
        "<section id=\"cpu\"><h2>Where the CPU went <small>host: % of one host core; guest: % of \
         its CPU time; processes: % of one vCPU</small></h2><table><tr><th>machine</th>\
         <th>vCPUs</th><th>host mean</th><th>host max</th><th>RSS max</th><th>guest user</th>\
         <th>guest sys</th><th>busiest guest processes</th></tr>",
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}%"));
    for m in &cpu.machines {
        let top: Vec<String> = m
            .top
            .iter()
            .map(|p| format!("{} {:.1}%", esc(&p.comm), p.pct))
            .collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}%</td>\
             <td class=\"num\">{:.1}%</td><td class=\"num\">{:.0} MiB</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&m.name),
            m.vcpus,
            m.host_cpu_mean,
            m.host_cpu_max,
            m.rss_mib_max,
            opt(m.guest_user_mean),
            opt(m.guest_system_mean),
            top.join(", ")
        );
    }
    let h = &cpu.host;
    let _ = writeln!(
        out,
        "</table><p>host steal {:.1}% mean, {:.1}% max; the QEMUs could use {} of {} host CPUs{}; \
         sampling cost {:.1}% of a host core and {:.1}% of a vCPU in the guests</p></section>",
        h.steal_mean,
        h.steal_max,
        h.cpus_allowed,
        h.cpus_online,
        super::cpu::confined_note(h.confined_to),
        cpu.sampler.host_pct_mean,
        cpu.sampler.guest_pct_mean
    );
}

fn failures(out: &mut String, s: &Summary, folder: Option<&Path>) {
    let mut groups: Vec<(String, &[FailedCheck])> = Vec::new();
    if !s.lab_failures.is_empty() {
        groups.push(("the lab, before the scenarios".into(), &s.lab_failures));
    }
    for sc in &s.scenarios {
        for a in sc.attempts.iter().filter(|a| !a.failed_checks.is_empty()) {
            let name = if sc.attempts.len() > 1 {
                format!("{}, attempt {}", sc.name, a.attempt)
            } else {
                sc.name.clone()
            };
            groups.push((name, &a.failed_checks));
        }
    }
    if groups.is_empty() {
        return;
    }
    out.push_str("<section id=\"failures\"><h2>Failed checks</h2>");
    for (name, checks) in groups {
        let _ = write!(out, "<h3>{}</h3>", esc(&name));
        for c in checks {
            let _ = write!(
                out,
                "<div class=\"failure\"><p><b>{}</b>: FAILED after {}: {}</p>",
                esc(&c.check),
                fmt_duration(c.took),
                esc(&c.reason)
            );
            if let Some(observed) = &c.observed {
                let _ = write!(out, "<p>last seen:</p><pre>{}</pre>", esc(observed));
            }
            if !c.evidence.is_empty() {
                out.push_str("<p>evidence:</p><ul>");
                for path in &c.evidence {
                    let _ = write!(out, "<li>{}</li>", link(path, folder));
                }
                out.push_str("</ul>");
            }
            out.push_str("</div>");
        }
    }
    out.push_str("</section>\n");
}

fn artifacts(out: &mut String, events: &[Event], folder: Option<&Path>) {
    out.push_str("<section id=\"artifacts\"><h2>Artifacts</h2>");
    if let Some(folder) = folder {
        let _ = write!(
            out,
            "<p>folder <code>{}</code></p>",
            esc(&folder.display().to_string())
        );
    }
    out.push_str("<ul>");
    let mut seen = Vec::new();
    for e in events {
        let EventKind::Artifact { path, what } = &e.kind else {
            continue;
        };
        if what == ARTIFACTS_FOLDER || seen.contains(&path) {
            continue;
        }
        seen.push(path);
        let _ = write!(out, "<li>{} &mdash; {}</li>", link(path, folder), esc(what));
    }
    out.push_str("</ul></section>\n");
}

/// A link relative to `report/index.html` for a file inside the artifacts folder (a relative
/// path is taken as inside it); anything else is only named, since the page must open
/// wherever the folder is copied.
fn link(path: &Path, folder: Option<&Path>) -> String {
    let inside = match folder {
        Some(f) if path.is_absolute() => path.strip_prefix(f).ok(),
        _ if path.is_relative() => Some(path),
        _ => None,
    };
    let Some(rel) = inside.filter(|r| {
        r.components().count() > 0 && r.components().all(|c| matches!(c, Component::Normal(_)))
    }) else {
        return format!("<code>{}</code>", esc(&path.display().to_string()));
    };
    let text: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let href: Vec<String> = text.iter().map(|part| percent(part)).collect();
    format!(
        "<a href=\"../{}\">{}</a>",
        href.join("/"),
        esc(&text.join("/"))
    )
}

fn percent(part: &str) -> String {
    let mut out = String::new();
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn history_section(out: &mut String, s: &Summary, history: &[RunRecord]) {
    let current = RunRecord::from_summary(s, 0);
    let mut runs: Vec<&RunRecord> = history.iter().collect();
    if runs.last().is_some_and(|r| {
        RunRecord {
            unix: 0,
            ..(*r).clone()
        } == current
    }) {
        runs.pop();
    }
    let skip = runs.len().saturating_sub(20);
    let runs = &runs[skip..];
    out.push_str("<section id=\"history\"><h2>This run against the last runs</h2>");
    if runs.is_empty() {
        out.push_str("<p>No earlier runs of this lab in the history.</p></section>\n");
        return;
    }
    type Metric<'a> = (String, Box<dyn Fn(&RunRecord) -> Option<Duration> + 'a>);
    let mut metrics: Vec<Metric> = vec![
        ("time to Ready".into(), Box::new(|r: &RunRecord| r.ready)),
        (
            "whole run".into(),
            Box::new(|r: &RunRecord| Some(r.duration)),
        ),
    ];
    for sc in &current.scenarios {
        let name = sc.name.clone();
        metrics.push((
            sc.name.clone(),
            Box::new(move |r: &RunRecord| {
                r.scenario(&name)
                    .filter(|s| s.result != "not_run")
                    .map(|s| s.duration)
            }),
        ));
    }
    out.push_str(
        "<table class=\"history\"><tr><th></th><th>last runs &rarr; this run</th><th>this run</th>\
         <th>median before</th><th>range before</th></tr>",
    );
    for (name, get) in &metrics {
        let values: Vec<Option<f64>> = runs
            .iter()
            .map(|r| get(r))
            .chain(std::iter::once(get(&current)))
            .map(|v| v.map(|d| d.as_secs_f64()))
            .collect();
        let mut before: Vec<f64> = values[..values.len() - 1]
            .iter()
            .flatten()
            .copied()
            .collect();
        before.sort_by(f64::total_cmp);
        let this = values.last().copied().flatten();
        let median = before.get(before.len() / 2).copied();
        let slower = matches!((this, median), (Some(t), Some(m)) if t > m * 1.2 && t - m > 5.0);
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"num{}\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td></tr>",
            esc(name),
            sparkline(&values),
            if slower { " slower" } else { "" },
            fmt_opt(this),
            fmt_opt(median),
            match (before.first(), before.last()) {
                (Some(a), Some(b)) => format!("{}&ndash;{}", fmt_opt(Some(*a)), fmt_opt(Some(*b))),
                _ => "-".into(),
            }
        );
    }
    out.push_str("</table><table class=\"runs\"><tr><th>run (UTC)</th><th>result</th>");
    for (name, _) in &metrics {
        let _ = write!(out, "<th>{}</th>", esc(name));
    }
    out.push_str("</tr>");
    for (i, r) in runs
        .iter()
        .copied()
        .chain(std::iter::once(&current))
        .enumerate()
    {
        let this = i == runs.len();
        let _ = write!(
            out,
            "<tr class=\"{}{}\"><td>{}</td><td class=\"result\">{}</td>",
            esc(&r.result),
            if this { " current" } else { "" },
            if this {
                "this run".into()
            } else {
                crate::utc::minutes(r.unix)
            },
            esc(&r.result)
        );
        for (_, get) in &metrics {
            let _ = write!(
                out,
                "<td class=\"num\">{}</td>",
                fmt_opt(get(r).map(|d| d.as_secs_f64()))
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></section>\n");
}

fn fmt_opt(secs: Option<f64>) -> String {
    secs.map_or("-".into(), |s| fmt_duration(Duration::from_secs_f64(s)))
}

/// A small line of the values, the last (this run) drawn as a bigger dot.
fn sparkline(values: &[Option<f64>]) -> String {
    let (w, h) = (200.0, 28.0);
    let max = values
        .iter()
        .flatten()
        .copied()
        .fold(0.0, f64::max)
        .max(0.001);
    let step = w / (values.len().max(2) - 1) as f64;
    let mut points = String::new();
    let mut dots = String::new();
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else { continue };
        let (px, py) = (i as f64 * step + 4.0, h - 3.0 - v / max * (h - 8.0));
        let _ = write!(points, "{px:.1},{py:.1} ");
        let current = i + 1 == values.len();
        let _ = write!(
            dots,
            "<circle class=\"{}\" cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"{}\"><title>{}</title></circle>",
            if current { "current" } else { "run" },
            if current { 4 } else { 2 },
            fmt_opt(Some(*v))
        );
    }
    format!(
        "<svg class=\"spark\" width=\"{}\" height=\"{h}\"><polyline points=\"{}\"/>{dots}</svg>",
        w + 8.0,
        points.trim_end()
    )
}

/// Text and attribute values alike: names, states and reasons come from guests and
/// Kubernetes, and must never become markup.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2329;margin:0 24px 40px;max-width:1280px}
h1{font-size:22px;margin:16px 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #dde}
h2 small{font-weight:normal;color:#667;font-size:13px}h3{font-size:15px;margin:14px 0 4px}
header p{margin:3px 0}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
pre{background:#f5f5f7;padding:6px 10px;white-space:pre-wrap;max-height:20em;overflow:auto}
.badge{padding:1px 8px;border-radius:4px;color:#fff;font-size:16px}
.badge.passed{background:#2e7d32}.badge.failed{background:#c62828}.badge.aborted{background:#6a1b9a}
p.warning{color:#a15c00;font-weight:bold}p.starved{color:#b71c1c;font-weight:bold}p.abort-reason{color:#6a1b9a;font-weight:bold}
table{border-collapse:collapse;margin:6px 0}th,td{padding:3px 10px;text-align:left;border-bottom:1px solid #eee}
th{font-weight:600;color:#445}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.passed .result{color:#2e7d32}tr.flaky .result{color:#b26a00}tr.failed .result,tr.error .result{color:#c62828;font-weight:bold}
tr.not-run .result{color:#888}tr.current{background:#e8f0fe;font-weight:600}td.slower{color:#c62828;font-weight:bold}
tr.near{background:#fff4e0}tr.over{background:#fde2e2}tr.failed td:nth-child(2){color:#c62828}
.bar{display:inline-block;width:120px;height:9px;background:#e6e8eb;vertical-align:middle;border-radius:2px}
.bar span{display:block;height:100%;background:#5b8def;border-radius:2px}
tr.near .bar span{background:#ef9a00}tr.over .bar span{background:#c62828}
.failure{border-left:3px solid #c62828;padding-left:10px;margin:8px 0}.failure p{margin:2px 0}
svg.timeline{display:block;font-size:11px;background:#fff}
svg text{fill:#1d2329}text.lane-label{text-anchor:end;font-size:12px}text.tick{text-anchor:middle;fill:#667}
line.tick{stroke:#e3e5e8}text.in-bar{pointer-events:none}
rect.phase{fill:#e4e9f2;stroke:#fff}rect.phase.build{fill:#d9d2ea}rect.phase.boot{fill:#cfe0f3}
rect.phase.readiness{fill:#d4ecd9}rect.phase.scenario{fill:#f3e8c9}rect.phase.teardown{fill:#e0e0e0}
rect.scenario{stroke:#fff}rect.scenario.passed{fill:#a5d6a7}rect.scenario.failed{fill:#ef9a9a}
rect.scenario.error{fill:#ffcc80}rect.scenario.unfinished{fill:#cfd8dc}
rect.attempt{opacity:.18}rect.attempt.passed{fill:#66bb6a}rect.attempt.failed{fill:#e53935}
rect.attempt.error{fill:#fb8c00}rect.attempt.unfinished{fill:#90a4ae}
rect.state.booting{fill:#ffe082}rect.state.up{fill:#81c784}rect.state.off{fill:#cfd8dc}
rect.fault{fill:url(#hatch);stroke:#b71c1c;stroke-width:1}rect.hatch{fill:#e53935;opacity:.45}
rect.fault.instant{fill:#b71c1c}text.fault-label{fill:#7f0000;font-weight:600;pointer-events:none}
g.check rect{stroke-width:1}g.check.passed rect{fill:#c8e6c9;stroke:#2e7d32}
g.check.failed rect{fill:#ef5350;stroke:#8e0000;stroke-width:1.5}g.check.failed text{fill:#fff;font-weight:600}
g.check.running rect{fill:#eceff1;stroke:#78909c;stroke-dasharray:3 2}
polygon.cpu{fill:#5b8def;fill-opacity:.45;stroke:#1565c0;stroke-width:1}rect.cpu-frame{fill:#f5f7fb;stroke:#e3e5e8}
text.lane-label.cpu{font-size:10px;fill:#667}.k.cpu{background:#9db9f0}
line.measured{stroke:#1565c0;stroke-width:2}circle.since{fill:#1565c0}
#cursor-line{stroke:#1565c0;stroke-width:1;pointer-events:none}#cursor{color:#445;font-size:12px;min-height:1.4em}
.legend{font-size:12px;color:#445}.k{display:inline-block;width:14px;height:10px;margin:0 4px 0 12px;vertical-align:middle}
.k.booting{background:#ffe082}.k.up{background:#81c784}.k.off{background:#cfd8dc}.k.fault{background:#e57373}
.k.passed{background:#c8e6c9;border:1px solid #2e7d32}.k.failed{background:#ef5350}.k.running{background:#eceff1;border:1px dashed #78909c}
svg.spark polyline{fill:none;stroke:#5b8def;stroke-width:1.5}svg.spark circle.run{fill:#5b8def}svg.spark circle.current{fill:#c62828}
";

// Shows the run time under the pointer; the page is complete without it.
const SCRIPT: &str = "
(function(){var svg=document.querySelector('svg.timeline');if(!svg)return;
var out=document.createElement('div');out.id='cursor';out.textContent='point at the timeline to read the time';
svg.parentNode.insertBefore(out,svg.nextSibling);var line=document.getElementById('cursor-line');
var x0=+svg.dataset.x0,plot=+svg.dataset.plot,end=+svg.dataset.end;
svg.addEventListener('mousemove',function(e){var p=svg.createSVGPoint();p.x=e.clientX;p.y=e.clientY;
var q=p.matrixTransform(svg.getScreenCTM().inverse());var t=(q.x-x0)/plot*end;
if(t<0||t>end){line.setAttribute('visibility','hidden');return;}
line.setAttribute('x1',q.x);line.setAttribute('x2',q.x);line.setAttribute('visibility','visible');
out.textContent='t = '+t.toFixed(1)+' s since the run started';});})();
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn timeline_mixed_run() {
        insta::assert_json_snapshot!(timeline(&fixture::mixed_run()));
    }

    #[test]
    fn timeline_error_run() {
        insta::assert_json_snapshot!(timeline(&fixture::error_run()));
    }

    #[test]
    fn timeline_aborted_run() {
        insta::assert_json_snapshot!(timeline(&fixture::aborted_run()));
    }

    #[test]
    fn timeline_sampled_run() {
        insta::assert_json_snapshot!(timeline(&fixture::sampled_run()));
    }

    #[test]
    fn a_sampled_run_draws_a_cpu_band_per_machine_and_says_it_was_starved() {
        let events = fixture::sampled_run();
        let page = render(&events, &Summary::from_events(&events), &[]);
        assert_eq!(page.matches("<polygon class=\"cpu\"").count(), 2);
        assert!(page.contains("<g class=\"lane cpu\" data-machine=\"limiting-factor\">"));
        assert!(page.contains("<p class=\"starved\">HOST STARVED: "));
        assert!(page.contains("<section id=\"cpu\">"));
        let unsampled = fixture::passed_run();
        let page = render(&unsampled, &Summary::from_events(&unsampled), &[]);
        assert!(!page.contains("<polygon") && !page.contains("id=\"cpu\""));
    }

    #[test]
    fn timeline_every_kind() {
        insta::assert_json_snapshot!(timeline(&fixture::every_kind()));
    }

    fn at(secs: u64, kind: EventKind) -> Event {
        Event {
            elapsed: Duration::from_secs(secs),
            kind,
        }
    }

    /// `machine` is one machine, or `a<->b` for a fault between two.
    fn fault(secs: u64, machine: &str, fault: &str) -> Event {
        let value = match machine.split_once("<->") {
            Some((a, b)) => serde_json::json!({ "fault": fault, "a": a, "b": b }),
            None => serde_json::json!({
                "fault": fault, "machine": machine, "timeout": 5.0, "unit": "x.service"
            }),
        };
        let fault: Fault = serde_json::from_value(value).expect("a fault of the vocabulary");
        at(secs, EventKind::FaultInjected { fault })
    }

    #[test]
    fn faults_become_windows_on_every_machine_they_touch() {
        let up = |secs, m: &str| {
            at(
                secs,
                EventKind::MachineUp {
                    machine: m.into(),
                    boot_time: Duration::from_secs(5),
                },
            )
        };
        let events = [
            up(5, "a"),
            up(5, "b"),
            fault(10, "a<->b", "partition"),
            fault(12, "a", "freeze"),
            fault(14, "a", "thaw"),
            fault(15, "b<->a", "heal"),
            fault(16, "a<->b", "heal"),
            fault(17, "a", "link-down"),
            fault(18, "a", "link-up"),
            fault(20, "b", "crash"),
            at(
                20,
                EventKind::MachineExited {
                    machine: "b".into(),
                    status: "signal: 9 (SIGKILL)".into(),
                },
            ),
            at(
                21,
                EventKind::MachineStarting {
                    machine: "b".into(),
                },
            ),
            up(30, "b"),
            fault(31, "a", "reboot"),
            fault(32, "a", "link-down"),
            at(40, EventKind::RunFinished { aborted: None }),
        ];
        let t = timeline(&events);
        let windows = |m: usize| -> Vec<(String, u64, u64, Option<String>, bool)> {
            t.machines[m]
                .faults
                .iter()
                .map(|f| {
                    let until = f.until.clone();
                    (
                        f.fault.clone(),
                        f.start.as_secs(),
                        f.end.as_secs(),
                        until,
                        f.open,
                    )
                })
                .collect()
        };
        let w = |f: &str, a, b, until: Option<&str>, open| {
            (f.to_string(), a, b, until.map(str::to_string), open)
        };
        assert_eq!(
            windows(0),
            [
                w("partition", 10, 15, Some("heal"), false),
                w("freeze", 12, 14, Some("thaw"), false),
                // Nothing left to heal: shown as it happened, an instant.
                w("heal", 16, 16, None, false),
                w("link-down", 17, 18, Some("link-up"), false),
                w("reboot", 31, 31, None, false),
                w("link-down", 32, 40, None, true),
            ]
        );
        assert_eq!(
            windows(1),
            [
                w("partition", 10, 15, Some("heal"), false),
                w("heal", 16, 16, None, false),
                w("crash", 20, 30, Some(MACHINE_UP), false),
            ]
        );
        let states: Vec<(&str, u64, u64)> = t.machines[1]
            .states
            .iter()
            .map(|s| (s.label.as_str(), s.start.as_secs(), s.end.as_secs()))
            .collect();
        assert_eq!(
            states,
            [
                ("booting", 0, 5),
                ("up", 5, 20),
                ("off", 20, 21),
                ("booting", 21, 30),
                ("up", 30, 40)
            ]
        );
    }

    fn every_page() -> Vec<String> {
        let runs = [
            fixture::mixed_run(),
            fixture::passed_run(),
            fixture::error_run(),
            fixture::aborted_run(),
            fixture::every_kind(),
            fixture::sampled_run(),
        ];
        let history: Vec<RunRecord> = runs
            .iter()
            .enumerate()
            .map(|(i, e)| {
                RunRecord::from_summary(&Summary::from_events(e), 1_780_000_000 + i as u64)
            })
            .collect();
        runs.iter()
            .map(|e| render(e, &Summary::from_events(e), &history))
            .collect()
    }

    #[test]
    fn the_page_reaches_for_nothing_outside() {
        for page in every_page() {
            for needle in ["http://", "https://", "src=", "@import", "//"] {
                assert!(!page.contains(needle), "{needle} in the page");
            }
            for (i, _) in page.match_indices("url(") {
                assert_eq!(&page[i + 4..i + 5], "#", "url() not to a local fragment");
            }
            for (i, _) in page.match_indices("href=\"") {
                assert!(page[i + 6..].starts_with("../"), "href not into the folder");
            }
        }
    }

    #[test]
    fn links_go_into_the_folder_and_nowhere_else() {
        let page = &every_page()[4];
        assert!(page.contains("<a href=\"../machines/grey-area/console.log\">"));
        let mixed = &every_page()[0];
        assert!(mixed.contains("<a href=\"../kube/node-failure.txt\">kube/node-failure.txt</a>"));
        let folder = Path::new("/run/a b");
        assert_eq!(
            link(Path::new("/run/a b/kube/x#1.txt"), Some(folder)),
            "<a href=\"../kube/x%231.txt\">kube/x#1.txt</a>"
        );
        assert_eq!(
            link(Path::new("/etc/passwd"), Some(folder)),
            "<code>/etc/passwd</code>"
        );
        assert_eq!(
            link(Path::new("../outside.txt"), Some(folder)),
            "<code>../outside.txt</code>"
        );
    }

    #[test]
    fn hostile_text_stays_text() {
        let hostile = "<script>alert('x')</script>\"><img onerror=x>";
        let events = [
            at(
                0,
                EventKind::RunStarted {
                    lab: hostile.into(),
                    scenarios: vec![hostile.into()],
                    started_at: None,
                },
            ),
            at(
                1,
                EventKind::ScenarioStarted {
                    scenario: hostile.into(),
                    attempt: 1,
                },
            ),
            fault(2, &format!("{hostile}<->x"), "partition"),
            at(
                5,
                EventKind::CheckFailed {
                    scope: hostile.into(),
                    check: hostile.into(),
                    reason: hostile.into(),
                    observed: Some(hostile.into()),
                    evidence: vec![hostile.into()],
                    took: Duration::from_secs(3),
                    measured: Some(Measured {
                        since: hostile.into(),
                        delay: Duration::from_secs(3),
                        budget: Duration::from_secs(3),
                    }),
                },
            ),
            at(
                6,
                EventKind::Warning {
                    message: hostile.into(),
                },
            ),
        ];
        let summary = Summary::from_events(&events);
        let page = render(&events, &summary, &[RunRecord::from_summary(&summary, 1)]);
        assert_eq!(
            page.matches("<script").count(),
            1,
            "only the page's own script"
        );
        assert!(!page.contains("<img"));
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&gt;&lt;img"));
    }

    #[test]
    fn the_current_run_is_not_its_own_history() {
        let events = fixture::mixed_run();
        let summary = Summary::from_events(&events);
        let appended = RunRecord::from_summary(&summary, 1_796_276_160);
        let page = render(&events, &summary, std::slice::from_ref(&appended));
        assert!(page.contains("No earlier runs"));
        let earlier = RunRecord {
            unix: 1_796_270_000,
            ..RunRecord::from_summary(&Summary::from_events(&fixture::passed_run()), 0)
        };
        let page = render(&events, &summary, &[earlier, appended]);
        assert_eq!(page.matches("<tr class=\"failed current\">").count(), 1);
        assert!(page.contains("2026-12-03 03:53"));
    }
}
