//! One line per event, for CI logs and for the permanent lines above the live bars.
use std::fmt::Write as _;

use super::{fmt_duration, fmt_measured};
use crate::events::{Event, EventKind, Outcome};

/// The log line for `event`, or `None` for events that belong elsewhere (step output goes
/// to JUnit and the artifacts, CPU samples to the reports, not into the log: that is how log
/// soup starts).
///
/// Every line starts with the run's elapsed time so a CI log reads as a timeline. A failed
/// check takes more than one line: the reason, the last observed state and the evidence
/// are what the reader came for.
///
/// ```
/// use std::time::Duration;
/// use harness::events::{Event, EventKind};
/// use harness::report::render_plain_line;
///
/// let event = Event {
///     elapsed: Duration::from_millis(14_700),
///     kind: EventKind::MachineUp { machine: "grey-area".into(), boot_time: Duration::from_millis(9_900) },
/// };
/// assert_eq!(render_plain_line(&event).as_deref(), Some("[  14.7s] grey-area: up after 9.9s"));
/// ```
pub fn render_plain_line(event: &Event) -> Option<String> {
    let body = match &event.kind {
        EventKind::RunStarted { lab, scenarios, .. } => {
            format!("run: lab {lab}, scenarios: {}", list(scenarios))
        }
        EventKind::RunFinished { aborted: None } => "run finished".to_string(),
        EventKind::RunFinished {
            aborted: Some(reason),
        } => format!("run ABORTED: {reason}"),
        EventKind::Phase { phase } => format!("== {} ==", phase.as_str()),
        EventKind::BuildProgress {
            what,
            done,
            expected,
            running,
            downloads_done,
            downloads_expected,
        } => {
            let mut line = format!("build {what}: {done}/{expected} built");
            if *downloads_expected > 0 {
                let _ = write!(line, ", {downloads_done}/{downloads_expected} downloaded");
            }
            if !running.is_empty() {
                let _ = write!(line, "; building {}", list(running));
            }
            line
        }
        EventKind::MachineStarting { machine } => format!("{machine}: starting"),
        EventKind::MachineUp { machine, boot_time } => {
            format!("{machine}: up after {}", fmt_duration(*boot_time))
        }
        EventKind::MachineExited { machine, status } => format!("{machine}: exited ({status})"),
        EventKind::FaultInjected { fault } => format!("fault: {fault}"),
        EventKind::CheckStarted {
            scope,
            check,
            timeout,
        } => format!(
            "{scope}: {check}: waiting (timeout {})",
            fmt_duration(*timeout)
        ),
        EventKind::CheckProgress {
            scope,
            check,
            observed,
        } => format!("{scope}: {check}: not yet: {observed}"),
        EventKind::CheckPassed {
            scope,
            check,
            took,
            measured,
        } => {
            let mut line = format!("{scope}: {check}: ok after {}", fmt_duration(*took));
            if let Some(measured) = measured {
                let _ = write!(line, "; {}", fmt_measured(measured));
            }
            line
        }
        EventKind::CheckFailed {
            scope,
            check,
            reason,
            observed,
            evidence,
            took,
            measured,
        } => {
            let mut line = format!(
                "{scope}: {check}: FAILED after {}: {reason}",
                fmt_duration(*took)
            );
            if let Some(measured) = measured {
                let _ = write!(line, "; {}", fmt_measured(measured));
            }
            if let Some(observed) = observed {
                let _ = write!(line, "\n    last seen: {observed}");
            }
            for path in evidence {
                let _ = write!(line, "\n    evidence: {}", path.display());
            }
            line
        }
        EventKind::ScenarioStarted { scenario, attempt } => {
            if *attempt > 1 {
                format!("scenario {scenario}: retrying (attempt {attempt})")
            } else {
                format!("scenario {scenario}: started")
            }
        }
        EventKind::ScenarioFinished {
            scenario,
            attempt,
            outcome,
            took,
            message,
        } => {
            let verdict = match outcome {
                Outcome::Passed => "passed",
                Outcome::Failed => "FAILED",
                Outcome::Error => "ERROR",
            };
            let mut line = format!("scenario {scenario}: {verdict} in {}", fmt_duration(*took));
            if *attempt > 1 {
                let _ = write!(line, " (attempt {attempt})");
            }
            if let Some(message) = message {
                let _ = write!(line, ": {message}");
            }
            line
        }
        // Every few seconds per machine: the reports and `labtest top` show them, a log line
        // each would drown the lines that matter.
        EventKind::StepOutput { .. }
        | EventKind::MachineSample { .. }
        | EventKind::HostSample(_) => return None,
        EventKind::Artifact { path, what } => format!("artifact: {} ({what})", path.display()),
        EventKind::Warning { message } => format!("WARNING: {message}"),
        EventKind::SnapshotSaved {
            snapshot,
            took,
            bytes,
        } => format!(
            "snapshot {snapshot} saved in {} ({:.0} MiB)",
            fmt_duration(*took),
            *bytes as f64 / (1024.0 * 1024.0)
        ),
        EventKind::SnapshotRestored { snapshot, took } => {
            format!(
                "lab restored from snapshot {snapshot} in {}",
                fmt_duration(*took)
            )
        }
        EventKind::FailureKept {
            scenario, restore, ..
        } => format!("scenario {scenario}: lab kept as it failed; step back into it: {restore}"),
        EventKind::FailureNotKept { scenario, reason } => {
            format!("scenario {scenario}: lab not kept: {reason}")
        }
    };
    Some(format!("[{:>7}] {body}", fmt_duration(event.elapsed)))
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn every_event_kind() {
        let lines: Vec<String> = fixture::every_kind()
            .iter()
            .map(|e| {
                let kind = serde_json::to_value(e)
                    .ok()
                    .and_then(|v| v["kind"].as_str().map(str::to_string))
                    .unwrap_or_default();
                match render_plain_line(e) {
                    Some(line) => format!("{kind:>18} | {line}"),
                    None => format!("{kind:>18} | (none)"),
                }
            })
            .collect();
        insta::assert_snapshot!(lines.join("\n"));
    }
}
