//! What a run amounted to, folded from its events: the model the summary table, JUnit and
//! `summary.json` all render, so they cannot tell different stories.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::cpu::{CpuFold, CpuSummary};
use super::{fmt_duration, fmt_measured, ARTIFACTS_FOLDER};
use crate::events::{Event, EventKind, Measured, Outcome, Phase, Stream};
use crate::secs;

/// A whole run, built by [`Summary::from_events`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The lab's directory, as the run was given it.
    pub lab: String,
    /// The run's wall-clock start, RFC 3339 UTC, as [`EventKind::RunStarted`] has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// How the run ended as a whole.
    pub result: RunResult,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
    /// From the first event to the last.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Time spent per phase, in the order the phases first came; a phase entered twice
    /// (a rebuild during a scenario) adds up.
    pub phases: Vec<PhaseTime>,
    /// Each machine's starts, first boot and faults.
    pub machines: Vec<MachineSummary>,
    /// Failed checks that belong to no scenario: the readiness gate, mostly.
    pub lab_failures: Vec<FailedCheck>,
    /// Every check that belongs to no scenario (the readiness gate), passed or failed.
    pub lab_checks: Vec<CheckRecord>,
    /// Each scenario listed for the run, in order.
    pub scenarios: Vec<ScenarioSummary>,
    /// Every warning, in order.
    pub warnings: Vec<String>,
    /// The artifacts folder, when one was created.
    pub artifacts: Option<PathBuf>,
    /// Whole-lab snapshots this run saved.
    pub snapshot_saves: Vec<SnapshotSave>,
    /// Where the CPU went, when the run was sampled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuSummary>,
}

/// How a run ended; decides the CLI's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// Every scenario passed (flaky ones included).
    Passed,
    /// At least one scenario failed or errored.
    Failed,
    /// The run stopped before its scenarios could run: the lab is the problem.
    Aborted,
}

impl RunResult {
    /// The process exit status the CLI promises: 0 passed, 1 a scenario failed, 2 the lab
    /// could not be brought up.
    pub fn exit_code(self) -> i32 {
        match self {
            RunResult::Passed => 0,
            RunResult::Failed => 1,
            RunResult::Aborted => 2,
        }
    }
}

/// Time spent in one phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseTime {
    /// The phase.
    pub phase: Phase,
    /// Its time, all its stretches together.
    #[serde(with = "secs")]
    pub took: Duration,
}

/// One machine over the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineSummary {
    /// The machine.
    pub name: String,
    /// How many times QEMU was started (a crash and restart makes 2).
    pub starts: u32,
    /// The first boot's time to guest channel up: the figure to compare across runs.
    #[serde(with = "opt_secs")]
    pub first_boot: Option<Duration>,
    /// The faults put on it, as the vocabulary writes them.
    pub faults: Vec<String>,
}

/// One scenario over the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioSummary {
    /// The scenario's name.
    pub name: String,
    /// Its result over all its attempts.
    pub result: ScenarioResult,
    /// Of the last attempt, like nextest's JUnit: earlier attempts carry their own.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Its attempts, in order.
    pub attempts: Vec<Attempt>,
}

impl ScenarioSummary {
    /// The check to read first: the first failure of the last attempt, or for a flaky
    /// scenario the first failure of the attempts that failed.
    pub fn first_failure(&self) -> Option<&FailedCheck> {
        let last = self.attempts.last()?;
        last.failed_checks
            .first()
            .or_else(|| self.attempts.iter().find_map(|a| a.failed_checks.first()))
    }

    /// Failed checks of the attempt that decides the result, then of earlier attempts.
    fn failure_count(&self) -> usize {
        match self.attempts.last() {
            Some(last) if !last.failed_checks.is_empty() => last.failed_checks.len(),
            _ => self.attempts.iter().map(|a| a.failed_checks.len()).sum(),
        }
    }
}

/// A scenario's result over its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioResult {
    /// Passed, without a retry.
    Passed,
    /// Passed on a retry after failing: green, but worth a look.
    Flaky,
    /// Its last attempt failed: the lab misbehaved.
    Failed,
    /// Its last attempt erred: the harness could not do its part.
    Error,
    /// Listed for the run, never started (the run aborted first).
    NotRun,
}

impl ScenarioResult {
    /// The result as the summary writes it (failures in capitals).
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioResult::Passed => "passed",
            ScenarioResult::Flaky => "flaky",
            ScenarioResult::Failed => "FAILED",
            ScenarioResult::Error => "ERROR",
            ScenarioResult::NotRun => "not run",
        }
    }
}

/// One attempt of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// Which attempt, from 1.
    pub attempt: u32,
    /// `None` when the run ended in the middle of this attempt.
    pub outcome: Option<Outcome>,
    /// How long it took.
    #[serde(with = "secs")]
    pub took: Duration,
    /// Why it failed or erred, in one line.
    pub message: Option<String>,
    /// Every check that failed, in order: not only the first.
    pub failed_checks: Vec<FailedCheck>,
    /// Every check that ended in this attempt, passed or failed, in the order they ended.
    pub checks: Vec<CheckRecord>,
    /// What its steps printed, for JUnit.
    #[serde(skip)]
    pub output: Vec<StepOutput>,
    /// The lab this attempt ran on came from a snapshot (not a boot of its own).
    pub restored: Option<Restored>,
    /// Its lab, saved the moment it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<KeptFailure>,
    /// Why its failed lab could not be saved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_kept: Option<String>,
}

/// A failed attempt's lab, saved as a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeptFailure {
    /// The snapshot's name.
    pub snapshot: String,
    /// The command that brings it back.
    pub restore: String,
    /// How long the save took.
    #[serde(with = "secs")]
    pub took: Duration,
    /// Bytes on disk.
    pub bytes: u64,
}

impl KeptFailure {
    /// `step back into it: COMMAND (saved in 1.6s, 1.7 GiB)`: the one line every report prints.
    pub fn line(&self) -> String {
        format!(
            "step back into it: {} (saved in {}, {:.1} GiB on disk)",
            self.restore,
            fmt_duration(self.took),
            self.bytes as f64 / (1024.0 * 1024.0 * 1024.0)
        )
    }
}

/// A lab brought back from a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Restored {
    pub snapshot: String,
    #[serde(with = "secs")]
    pub took: Duration,
}

/// A whole-lab snapshot the run saved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotSave {
    pub snapshot: String,
    #[serde(with = "secs")]
    pub took: Duration,
    pub bytes: u64,
}

/// A check that failed, with what explains it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedCheck {
    /// Its group: `readiness`, or a scenario's name.
    pub scope: String,
    /// The check's name.
    pub check: String,
    /// Why it failed, in one line.
    pub reason: String,
    /// What it last saw.
    pub observed: Option<String>,
    /// Files that explain the failure.
    pub evidence: Vec<PathBuf>,
    /// How long it ran.
    #[serde(with = "secs")]
    pub took: Duration,
}

/// One check as it ended: how long it ran against its deadline and, when it measures a delay
/// from a named moment (a fault, a recovery), that delay against its budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckRecord {
    /// Who ran it: `readiness`, a scenario, a machine (its waits), `test` (a user's test).
    pub scope: String,
    pub check: String,
    pub passed: bool,
    /// When it started, since the run started.
    #[serde(with = "secs")]
    pub started: Duration,
    #[serde(with = "secs")]
    pub took: Duration,
    /// Its deadline; zero when its start was not seen.
    #[serde(with = "secs")]
    pub timeout: Duration,
    pub measured: Option<Measured>,
}

impl CheckRecord {
    /// `41.0s of 3m00s`, then the measured delay: one line per check in the summary.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{} {}: {}",
            if self.passed { "ok    " } else { "FAILED" },
            self.check,
            fmt_duration(self.took)
        );
        if !self.timeout.is_zero() {
            let _ = write!(line, " of {}", fmt_duration(self.timeout));
        }
        if let Some(m) = &self.measured {
            let _ = write!(line, "; {}", fmt_measured(m));
        }
        line
    }
}

/// What one step printed.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// The step.
    pub step: String,
    /// Which output stream.
    pub stream: Stream,
    /// The output.
    pub text: String,
}

impl Summary {
    /// Folds a run's events, in emission order. Events of a run that was cut short (no
    /// `RunFinished`, a scenario without `ScenarioFinished`) still give a truthful summary:
    /// the unfinished scenario counts as an error.
    pub fn from_events(events: &[Event]) -> Summary {
        let mut fold = Fold::default();
        for event in events {
            fold.add(event);
        }
        fold.finish(events.last().map_or(Duration::ZERO, |e| e.elapsed))
    }

    /// The table printed at the end of a run and written to `summary.txt`.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "labtest: lab {}, {} scenario{}, {}",
            self.lab,
            self.scenarios.len(),
            if self.scenarios.len() == 1 { "" } else { "s" },
            fmt_duration(self.duration)
        );
        // The wall clock of `elapsed` zero, to find a run's moments in guests' journals.
        match &self.started_at {
            Some(at) => {
                let _ = writeln!(out, ", started {at}");
            }
            None => out.push('\n'),
        }
        if !self.phases.is_empty() {
            let phases: Vec<String> = self
                .phases
                .iter()
                .map(|p| format!("{} {}", p.phase.as_str(), fmt_duration(p.took)))
                .collect();
            let _ = writeln!(out, "  {}", phases.join(", "));
        }
        if !self.machines.is_empty() {
            let machines: Vec<String> = self.machines.iter().map(machine_line).collect();
            let _ = writeln!(out, "  {}", machines.join(", "));
        }
        for save in &self.snapshot_saves {
            let _ = writeln!(
                out,
                "  snapshot {} saved in {} ({:.0} MiB)",
                save.snapshot,
                fmt_duration(save.took),
                save.bytes as f64 / (1024.0 * 1024.0)
            );
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "  WARNING: {warning}");
        }
        if let Some(starved) = self.cpu.as_ref().and_then(|c| c.starved.as_ref()) {
            let _ = writeln!(out, "  {starved}");
        }
        out.push('\n');

        let rows: Vec<[String; 4]> = self.scenarios.iter().map(scenario_row).collect();
        let header = [
            "SCENARIO".to_string(),
            "RESULT".to_string(),
            "DURATION".to_string(),
            "FIRST FAILURE".to_string(),
        ];
        let widths: Vec<usize> = (0..3)
            .map(|i| {
                rows.iter()
                    .chain(std::iter::once(&header))
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in std::iter::once(&header).chain(rows.iter()) {
            let line = format!(
                "{:<w0$}  {:<w1$}  {:>w2$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }

        // Every check of the attempt that decided each scenario, with what it measured.
        let mut checks = String::new();
        for scenario in &self.scenarios {
            let Some(last) = scenario.attempts.last() else {
                continue;
            };
            if last.checks.is_empty() {
                continue;
            }
            let _ = writeln!(checks, "  {}:", scenario.name);
            for check in &last.checks {
                let _ = writeln!(checks, "    {}", check.line());
            }
        }
        if !checks.is_empty() {
            let _ = write!(out, "\nchecks:\n{checks}");
        }
        if let Some(cpu) = &self.cpu {
            let _ = write!(out, "\n{}", cpu.render_text());
        }

        // Every failure, not only the first: the table says where to look, this says what
        // was seen, and the evidence paths say where to read more.
        let mut failures = String::new();
        if !self.lab_failures.is_empty() {
            let _ = writeln!(failures, "  the lab, before the scenarios:");
            describe_checks(&mut failures, &self.lab_failures);
        }
        for scenario in &self.scenarios {
            let numbered = scenario.attempts.len() > 1;
            for attempt in &scenario.attempts {
                let kept = attempt.kept.is_some() || attempt.not_kept.is_some();
                if attempt.failed_checks.is_empty() && !kept {
                    continue;
                }
                let _ = write!(failures, "  {}", scenario.name);
                if numbered {
                    let _ = write!(failures, ", attempt {}", attempt.attempt);
                }
                let _ = writeln!(failures, ":");
                describe_checks(&mut failures, &attempt.failed_checks);
                if attempt.failed_checks.is_empty() {
                    if let Some(message) = &attempt.message {
                        let _ = writeln!(failures, "    {message}");
                    }
                }
                if let Some(kept) = &attempt.kept {
                    let _ = writeln!(failures, "    {}", kept.line());
                }
                if let Some(reason) = &attempt.not_kept {
                    let _ = writeln!(failures, "    lab not kept: {reason}");
                }
            }
        }
        if !failures.is_empty() {
            let _ = write!(out, "\nfailed checks:\n{failures}");
        }
        if let Some(reason) = &self.aborted {
            let _ = writeln!(out, "\nrun aborted: {reason}");
        }
        let _ = writeln!(out, "\n{}", self.verdict());
        if let Some(dir) = &self.artifacts {
            let _ = writeln!(out, "artifacts: {}", dir.display());
        }
        out
    }

    /// One line that says how it went. Worded so that CI log scanners looking for a test
    /// runner's "N passed, N failed" closing line do not mistake it for one.
    fn verdict(&self) -> String {
        let count = |r: ScenarioResult| self.scenarios.iter().filter(|s| s.result == r).count();
        let total = self.scenarios.len();
        let mut parts = Vec::new();
        for r in [
            ScenarioResult::Failed,
            ScenarioResult::Error,
            ScenarioResult::Flaky,
            ScenarioResult::NotRun,
        ] {
            let n = count(r);
            if n > 0 {
                parts.push(format!("{n} {}", r.as_str().to_lowercase()));
            }
        }
        let detail = if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        };
        match self.result {
            RunResult::Passed => format!(
                "PASSED - {} of {total} scenarios green{detail}",
                count(ScenarioResult::Passed) + count(ScenarioResult::Flaky)
            ),
            RunResult::Failed => format!(
                "FAILED - {} of {total} scenarios not green{detail}",
                count(ScenarioResult::Failed) + count(ScenarioResult::Error)
            ),
            RunResult::Aborted => format!("ABORTED - the lab never got to the scenarios{detail}"),
        }
    }
}

fn machine_line(m: &MachineSummary) -> String {
    let mut line = m.name.clone();
    if let Some(boot) = m.first_boot {
        let _ = write!(line, " up in {}", fmt_duration(boot));
    } else {
        line.push_str(" never up");
    }
    if m.starts > 1 {
        let _ = write!(line, " ({} starts)", m.starts);
    }
    line
}

fn scenario_row(s: &ScenarioSummary) -> [String; 4] {
    let mut result = s.result.as_str().to_string();
    if s.attempts.len() > 1 {
        let _ = write!(result, " ({} attempts)", s.attempts.len());
    }
    let duration = if s.attempts.is_empty() {
        "-".to_string()
    } else {
        fmt_duration(s.duration)
    };
    if let Some(restored) = s.attempts.last().and_then(|a| a.restored.as_ref()) {
        let _ = write!(
            result,
            " (restored {} in {})",
            restored.snapshot,
            fmt_duration(restored.took)
        );
    }
    let failure = match s.first_failure() {
        Some(f) => {
            let mut line = failure_line(f);
            let more = s.failure_count().saturating_sub(1);
            if more > 0 {
                let _ = write!(line, " (+{more} more)");
            }
            line
        }
        None => s
            .attempts
            .iter()
            .rev()
            .find_map(|a| a.message.clone())
            .unwrap_or_default(),
    };
    [s.name.clone(), result, duration, failure]
}

fn failure_line(f: &FailedCheck) -> String {
    format!("{}: {}", f.check, f.reason)
}

fn describe_checks(out: &mut String, checks: &[FailedCheck]) {
    for check in checks {
        let _ = writeln!(
            out,
            "    {}: FAILED after {}: {}",
            check.check,
            fmt_duration(check.took),
            check.reason
        );
        if let Some(observed) = &check.observed {
            let _ = writeln!(out, "      last seen: {observed}");
        }
        for path in &check.evidence {
            let _ = writeln!(out, "      evidence: {}", path.display());
        }
    }
}

#[derive(Default)]
struct Fold {
    lab: String,
    started_at: Option<String>,
    planned: Vec<String>,
    aborted: Option<String>,
    finished: bool,
    phase: Option<(Phase, Duration)>,
    phases: Vec<PhaseTime>,
    machines: Vec<MachineSummary>,
    lab_failures: Vec<FailedCheck>,
    lab_checks: Vec<CheckRecord>,
    // (scope, check) -> (started at, timeout) of checks that have not ended yet.
    running_checks: BTreeMap<(String, String), (Duration, Duration)>,
    scenarios: Vec<(String, Vec<Attempt>)>,
    // Scenario name -> (index into `scenarios`, start time of its open attempt).
    open: BTreeMap<String, (usize, Duration)>,
    warnings: Vec<String>,
    artifacts: Option<PathBuf>,
    snapshot_saves: Vec<SnapshotSave>,
    restored: Option<Restored>,
    cpu: CpuFold,
}

impl Fold {
    fn add(&mut self, event: &Event) {
        let at = event.elapsed;
        match &event.kind {
            EventKind::RunStarted {
                lab,
                scenarios,
                started_at,
            } => {
                self.lab = lab.clone();
                self.started_at = started_at.clone();
                self.planned = scenarios.clone();
            }
            EventKind::RunFinished { aborted } => {
                self.aborted = aborted.clone();
                self.finished = true;
                self.close_phase(at);
            }
            EventKind::Phase { phase } => {
                self.close_phase(at);
                self.phase = Some((*phase, at));
            }
            EventKind::BuildProgress { .. } => {}
            EventKind::MachineStarting { machine } => self.machine(machine).starts += 1,
            EventKind::MachineUp { machine, boot_time } => {
                let m = self.machine(machine);
                m.first_boot.get_or_insert(*boot_time);
            }
            EventKind::MachineExited { .. } => {}
            EventKind::FaultInjected { fault } => {
                for name in fault.machines() {
                    if let Some(m) = self.machines.iter_mut().find(|m| m.name == name) {
                        m.faults.push(fault.name().to_string());
                    }
                }
            }
            EventKind::CheckStarted {
                scope,
                check,
                timeout,
            } => {
                self.running_checks
                    .insert((scope.clone(), check.clone()), (at, *timeout));
            }
            EventKind::CheckProgress { .. } => {}
            EventKind::CheckPassed {
                scope,
                check,
                took,
                measured,
            } => self.check_ended(scope, check, true, at, *took, measured),
            EventKind::CheckFailed {
                scope,
                check,
                reason,
                observed,
                evidence,
                took,
                measured,
            } => {
                self.check_ended(scope, check, false, at, *took, measured);
                let failure = FailedCheck {
                    scope: scope.clone(),
                    check: check.clone(),
                    reason: reason.clone(),
                    observed: observed.clone(),
                    evidence: evidence.clone(),
                    took: *took,
                };
                match self.open_attempt(scope) {
                    Some(attempt) => attempt.failed_checks.push(failure),
                    None => self.lab_failures.push(failure),
                }
            }
            EventKind::ScenarioStarted { scenario, attempt } => {
                let index = match self.scenarios.iter().position(|(n, _)| n == scenario) {
                    Some(i) => i,
                    None => {
                        self.scenarios.push((scenario.clone(), Vec::new()));
                        self.scenarios.len() - 1
                    }
                };
                self.scenarios[index].1.push(Attempt {
                    attempt: *attempt,
                    outcome: None,
                    took: Duration::ZERO,
                    message: None,
                    failed_checks: Vec::new(),
                    checks: Vec::new(),
                    output: Vec::new(),
                    restored: self.restored.take(),
                    kept: None,
                    not_kept: None,
                });
                self.open.insert(scenario.clone(), (index, at));
            }
            EventKind::ScenarioFinished {
                scenario,
                attempt: _,
                outcome,
                took,
                message,
            } => {
                if let Some(a) = self.open_attempt(scenario) {
                    a.outcome = Some(*outcome);
                    a.took = *took;
                    a.message = message.clone();
                }
                self.open.remove(scenario);
            }
            EventKind::StepOutput {
                scope,
                step,
                stream,
                text,
            } => {
                if let Some(a) = self.open_attempt(scope) {
                    a.output.push(StepOutput {
                        step: step.clone(),
                        stream: *stream,
                        text: text.clone(),
                    });
                }
            }
            EventKind::Artifact { path, what } => {
                if what == ARTIFACTS_FOLDER {
                    self.artifacts = Some(path.clone());
                }
            }
            EventKind::Warning { message } => self.warnings.push(message.clone()),
            EventKind::FailureKept {
                scenario,
                snapshot,
                restore,
                took,
                bytes,
            } => {
                if let Some(a) = self.open_attempt(scenario) {
                    a.kept = Some(KeptFailure {
                        snapshot: snapshot.clone(),
                        restore: restore.clone(),
                        took: *took,
                        bytes: *bytes,
                    });
                }
            }
            EventKind::FailureNotKept { scenario, reason } => {
                if let Some(a) = self.open_attempt(scenario) {
                    a.not_kept = Some(reason.clone());
                }
            }
            EventKind::SnapshotSaved {
                snapshot,
                took,
                bytes,
            } => self.snapshot_saves.push(SnapshotSave {
                snapshot: snapshot.clone(),
                took: *took,
                bytes: *bytes,
            }),
            // A lab is restored for the scenario that starts next.
            EventKind::SnapshotRestored { snapshot, took } => {
                self.restored = Some(Restored {
                    snapshot: snapshot.clone(),
                    took: *took,
                });
            }
            EventKind::MachineSample { .. } | EventKind::HostSample(_) => {
                self.cpu.add(at, &event.kind)
            }
        }
    }

    fn check_ended(
        &mut self,
        scope: &str,
        check: &str,
        passed: bool,
        at: Duration,
        took: Duration,
        measured: &Option<Measured>,
    ) {
        let (started, timeout) = self
            .running_checks
            .remove(&(scope.to_string(), check.to_string()))
            .unwrap_or((at.saturating_sub(took), Duration::ZERO));
        let record = CheckRecord {
            scope: scope.to_string(),
            check: check.to_string(),
            passed,
            started,
            took,
            timeout,
            measured: measured.clone(),
        };
        match self.open_attempt(scope) {
            Some(attempt) => attempt.checks.push(record),
            None => self.lab_checks.push(record),
        }
    }

    fn close_phase(&mut self, at: Duration) {
        if let Some((phase, since)) = self.phase.take() {
            let took = at.saturating_sub(since);
            match self.phases.iter_mut().find(|p| p.phase == phase) {
                Some(p) => p.took += took,
                None => self.phases.push(PhaseTime { phase, took }),
            }
        }
    }

    fn machine(&mut self, name: &str) -> &mut MachineSummary {
        let index = match self.machines.iter().position(|m| m.name == name) {
            Some(i) => i,
            None => {
                self.machines.push(MachineSummary {
                    name: name.to_string(),
                    starts: 0,
                    first_boot: None,
                    faults: Vec::new(),
                });
                self.machines.len() - 1
            }
        };
        &mut self.machines[index]
    }

    fn open_attempt(&mut self, scenario: &str) -> Option<&mut Attempt> {
        let (index, _) = *self.open.get(scenario)?;
        self.scenarios[index].1.last_mut()
    }

    fn finish(mut self, end: Duration) -> Summary {
        self.close_phase(end);
        for (name, (index, since)) in std::mem::take(&mut self.open) {
            if let Some(a) = self.scenarios[index].1.last_mut() {
                a.took = end.saturating_sub(since);
                a.message = Some(format!("{name} did not finish: the run ended first"));
            }
        }
        let mut started: Vec<ScenarioSummary> = self
            .scenarios
            .into_iter()
            .map(|(name, attempts)| scenario_summary(name, attempts))
            .collect();
        // Planned order first, so the table reads like the run's plan.
        let mut scenarios = Vec::new();
        for name in &self.planned {
            match started.iter().position(|s| &s.name == name) {
                Some(i) => scenarios.push(started.remove(i)),
                None => scenarios.push(ScenarioSummary {
                    name: name.clone(),
                    result: ScenarioResult::NotRun,
                    duration: Duration::ZERO,
                    attempts: Vec::new(),
                }),
            }
        }
        scenarios.extend(started);
        let result = if self.aborted.is_some()
            || (scenarios.iter().all(|s| s.attempts.is_empty()) && !self.lab_failures.is_empty())
        {
            RunResult::Aborted
        } else if scenarios.iter().any(|s| {
            matches!(
                s.result,
                ScenarioResult::Failed | ScenarioResult::Error | ScenarioResult::NotRun
            )
        }) {
            RunResult::Failed
        } else {
            RunResult::Passed
        };
        Summary {
            lab: self.lab,
            started_at: self.started_at,
            result,
            aborted: self.aborted,
            duration: end,
            phases: self.phases,
            machines: self.machines,
            lab_failures: self.lab_failures,
            lab_checks: self.lab_checks,
            scenarios,
            warnings: self.warnings,
            artifacts: self.artifacts,
            snapshot_saves: self.snapshot_saves,
            cpu: self.cpu.finish(),
        }
    }
}

fn scenario_summary(name: String, attempts: Vec<Attempt>) -> ScenarioSummary {
    let last = attempts.last();
    let result = match last.and_then(|a| a.outcome) {
        Some(Outcome::Passed) if attempts.len() > 1 => ScenarioResult::Flaky,
        Some(Outcome::Passed) => ScenarioResult::Passed,
        Some(Outcome::Failed) => ScenarioResult::Failed,
        Some(Outcome::Error) | None => ScenarioResult::Error,
    };
    ScenarioSummary {
        name,
        result,
        duration: last.map_or(Duration::ZERO, |a| a.took),
        attempts,
    }
}

mod opt_secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => crate::secs::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn summary_mixed_run() {
        let summary = Summary::from_events(&fixture::mixed_run());
        assert_eq!(summary.result.exit_code(), 1);
        insta::assert_snapshot!(summary.render_text());
    }

    #[test]
    fn summary_error_run() {
        let summary = Summary::from_events(&fixture::error_run());
        assert_eq!(summary.result.exit_code(), 1);
        insta::assert_snapshot!(summary.render_text());
    }

    #[test]
    fn summary_aborted_run() {
        let summary = Summary::from_events(&fixture::aborted_run());
        assert_eq!(summary.result.exit_code(), 2);
        insta::assert_snapshot!(summary.render_text());
    }

    #[test]
    fn summary_sampled_run() {
        let summary = Summary::from_events(&fixture::sampled_run());
        insta::assert_snapshot!(summary.render_text());
    }

    #[test]
    fn summary_passed_run() {
        let summary = Summary::from_events(&fixture::passed_run());
        assert_eq!(summary.result.exit_code(), 0);
        insta::assert_snapshot!(summary.render_text());
    }

    #[test]
    fn a_run_cut_short_is_not_green() {
        let mut events = fixture::mixed_run();
        // Stop in the middle of node-failure's first attempt.
        let cut = events
            .iter()
            .position(|e| matches!(&e.kind, EventKind::CheckFailed { .. }))
            .expect("a failed check");
        events.truncate(cut);
        let summary = Summary::from_events(&events);
        let results: Vec<_> = summary.scenarios.iter().map(|s| s.result).collect();
        assert_eq!(
            results,
            [
                ScenarioResult::Passed,
                ScenarioResult::Error,
                ScenarioResult::NotRun
            ]
        );
        assert_eq!(summary.result, RunResult::Failed);
        let unfinished = &summary.scenarios[1].attempts[0];
        assert_eq!(unfinished.outcome, None);
        assert_eq!(unfinished.took, Duration::from_millis(114_000 - 72_300));
    }
}
