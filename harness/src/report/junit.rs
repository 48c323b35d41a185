//! JUnit XML: one testsuite per run, one testcase per scenario (named as on the command
//! line), with the durations the events measured - never 0. Then one testsuite per scenario
//! with one testcase per check of the attempt that decided it, and one per scope of the checks
//! outside scenarios (`readiness` for the gate, a machine for its waits, `test`):
//! its real duration, its deadline and measured delay as properties, and for a failure the
//! last observed state and the evidence paths.
//!
//! A failed scenario lists every check that failed, not only the first, and carries the
//! output of the steps that failed. Earlier failed attempts become reruns; a scenario that
//! passed on a retry is a success with flaky runs, as nextest reports it. When the lab
//! itself failed, a testcase named [`LAB_TESTCASE`] says why, so the suite is never green
//! with nothing run.
use std::fmt::Write as _;

use quick_junit::{
    NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestRerun, TestSuite,
};

use super::summary::{Attempt, CheckRecord, FailedCheck, ScenarioResult, Summary};
use super::{fmt_duration, ReportError};
use crate::events::{Outcome, Phase, Stream};

/// The testcase that reports a lab that could not be brought up.
pub const LAB_TESTCASE: &str = "lab";

const CLASSNAME: &str = "labtest";

/// Renders `summary` as JUnit XML.
pub fn to_string(summary: &Summary) -> Result<String, ReportError> {
    Ok(report(summary).to_string()?)
}

fn report(summary: &Summary) -> Report {
    let mut suite = TestSuite::new(format!("labtest {}", summary.lab));
    suite.set_time(summary.duration);
    suite.add_property(Property::new("lab", summary.lab.as_str()));
    for phase in &summary.phases {
        suite.add_property(Property::new(
            format!("phase.{}", phase.phase.as_str()),
            fmt_duration(phase.took),
        ));
    }
    if let Some(dir) = &summary.artifacts {
        suite.add_property(Property::new("artifacts", dir.display().to_string()));
    }
    if !summary.warnings.is_empty() {
        suite.set_system_err(summary.warnings.join("\n"));
    }

    if !summary.lab_failures.is_empty() || summary.aborted.is_some() {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        let message = match (summary.lab_failures.first(), &summary.aborted) {
            (Some(first), _) => format!("{}: {}", first.check, first.reason),
            (None, Some(reason)) => reason.clone(),
            (None, None) => String::new(),
        };
        status.set_message(message);
        let mut description = describe_checks(&summary.lab_failures);
        if let Some(reason) = &summary.aborted {
            let _ = writeln!(description, "run aborted: {reason}");
        }
        status.set_description(description);
        let mut case = TestCase::new(LAB_TESTCASE, status);
        case.set_classname(CLASSNAME);
        // Time the lab took to fail, i.e. everything before the scenarios.
        case.set_time(
            summary
                .phases
                .iter()
                .filter(|p| matches!(p.phase, Phase::Build | Phase::Boot | Phase::Readiness))
                .map(|p| p.took)
                .sum(),
        );
        suite.add_test_case(case);
    }

    for scenario in &summary.scenarios {
        let Some((last, earlier)) = scenario.attempts.split_last() else {
            let mut status = TestCaseStatus::skipped();
            status.set_message(match &summary.aborted {
                Some(reason) => format!("not run: {reason}"),
                None => "not run".to_string(),
            });
            let mut case = TestCase::new(scenario.name.as_str(), status);
            case.set_classname(CLASSNAME);
            suite.add_test_case(case);
            continue;
        };
        let numbered = !earlier.is_empty();
        let reruns = earlier.iter().map(|a| rerun(a, numbered));
        let mut status = if scenario.result == ScenarioResult::Passed
            || scenario.result == ScenarioResult::Flaky
        {
            TestCaseStatus::success()
        } else {
            let mut status = TestCaseStatus::non_success(non_success_kind(last));
            status.set_message(attempt_message(last, numbered));
            status.set_description(describe_attempt(last));
            status
        };
        status.add_reruns(reruns);
        let mut case = TestCase::new(scenario.name.as_str(), status);
        case.set_classname(CLASSNAME);
        case.set_time(last.took);
        if let Some(restored) = &last.restored {
            case.add_property(("restored-from-snapshot", restored.snapshot.as_str()));
            case.add_property(("restore-seconds", secs(restored.took).as_str()));
        }
        if last.outcome != Some(Outcome::Passed) {
            let (out, err) = failing_output(last);
            if !out.is_empty() {
                case.set_system_out(out);
            }
            if !err.is_empty() {
                case.set_system_err(err);
            }
        }
        suite.add_test_case(case);
    }

    let mut report = Report::new("labtest");
    report.set_time(summary.duration);
    report.add_test_suite(suite);
    let mut scopes: Vec<&str> = Vec::new();
    for check in &summary.lab_checks {
        if !scopes.contains(&check.scope.as_str()) {
            scopes.push(&check.scope);
        }
    }
    for scope in scopes {
        let checks: Vec<CheckRecord> = summary
            .lab_checks
            .iter()
            .filter(|c| c.scope == scope)
            .cloned()
            .collect();
        report.add_test_suite(check_suite(scope, &checks, &summary.lab_failures));
    }
    for scenario in &summary.scenarios {
        if let Some(last) = scenario.attempts.last() {
            if !last.checks.is_empty() {
                report.add_test_suite(check_suite(
                    &scenario.name,
                    &last.checks,
                    &last.failed_checks,
                ));
            }
        }
    }
    report
}

/// A testsuite named `scope` with a testcase per check; `failures` give the failed ones'
/// reasons, last observed states and evidence. Both lists grow from the same events, so the
/// n-th failed check of a scope is the n-th failure of that scope, even when a check of the
/// same name ran twice.
fn check_suite(scope: &str, checks: &[CheckRecord], failures: &[FailedCheck]) -> TestSuite {
    let mut suite = TestSuite::new(scope);
    suite.set_time(checks.iter().map(|c| c.took).sum());
    let mut failures = failures.iter().filter(|f| f.scope == scope);
    for check in checks {
        let status = if check.passed {
            TestCaseStatus::success()
        } else {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            match failures.next() {
                Some(failure) => {
                    status.set_message(failure.reason.as_str());
                    status.set_description(describe_checks(std::slice::from_ref(failure)));
                }
                None => {
                    status.set_message("failed");
                }
            }
            status
        };
        let mut case = TestCase::new(check.check.as_str(), status);
        case.set_classname(scope);
        case.set_time(check.took);
        if !check.timeout.is_zero() {
            case.add_property(("timeout-seconds", secs(check.timeout).as_str()));
        }
        if let Some(m) = &check.measured {
            case.add_property(("measured-since", m.since.as_str()));
            case.add_property(("measured-seconds", secs(m.delay).as_str()));
            case.add_property(("budget-seconds", secs(m.budget).as_str()));
        }
        suite.add_test_case(case);
    }
    suite
}

fn secs(d: std::time::Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn rerun(attempt: &Attempt, numbered: bool) -> TestRerun {
    let mut rerun = TestRerun::new(non_success_kind(attempt));
    rerun.set_time(attempt.took);
    rerun.set_message(attempt_message(attempt, numbered));
    rerun.set_description(describe_attempt(attempt));
    let (out, err) = failing_output(attempt);
    if !out.is_empty() {
        rerun.set_system_out(out);
    }
    if !err.is_empty() {
        rerun.set_system_err(err);
    }
    rerun
}

fn non_success_kind(attempt: &Attempt) -> NonSuccessKind {
    match attempt.outcome {
        Some(Outcome::Failed) => NonSuccessKind::Failure,
        _ => NonSuccessKind::Error,
    }
}

/// The one-line message; `numbered` when the scenario ran more than once, so the reader
/// can tell the attempts apart.
fn attempt_message(attempt: &Attempt, numbered: bool) -> String {
    let prefix = if numbered {
        format!("attempt {}: ", attempt.attempt)
    } else {
        String::new()
    };
    match (attempt.failed_checks.first(), &attempt.message) {
        (Some(first), _) if attempt.failed_checks.len() > 1 => format!(
            "{prefix}{}: {} (+{} more)",
            first.check,
            first.reason,
            attempt.failed_checks.len() - 1
        ),
        (Some(first), _) => format!("{prefix}{}: {}", first.check, first.reason),
        (None, Some(message)) => format!("{prefix}{message}"),
        (None, None) => format!("{prefix}failed"),
    }
}

fn describe_attempt(attempt: &Attempt) -> String {
    let mut text = describe_checks(&attempt.failed_checks);
    if let Some(message) = &attempt.message {
        let _ = writeln!(text, "{message}");
    }
    if let Some(kept) = &attempt.kept {
        let _ = writeln!(text, "{}", kept.line());
    }
    if let Some(reason) = &attempt.not_kept {
        let _ = writeln!(text, "lab not kept: {reason}");
    }
    text
}

fn describe_checks(checks: &[FailedCheck]) -> String {
    let mut text = String::new();
    for check in checks {
        let _ = writeln!(
            text,
            "{} / {}: FAILED after {}: {}",
            check.scope,
            check.check,
            fmt_duration(check.took),
            check.reason
        );
        if let Some(observed) = &check.observed {
            let _ = writeln!(text, "    last seen: {observed}");
        }
        for path in &check.evidence {
            let _ = writeln!(text, "    evidence: {}", path.display());
        }
    }
    text
}

/// Output of the steps named like a failed check; when no step is (the failure was not in
/// a step of its own), all of the attempt's output, since the cause is in there somewhere.
fn failing_output(attempt: &Attempt) -> (String, String) {
    let failing: Vec<_> = attempt
        .output
        .iter()
        .filter(|o| attempt.failed_checks.iter().any(|c| c.check == o.step))
        .collect();
    let chosen: Vec<_> = if failing.is_empty() {
        attempt.output.iter().collect()
    } else {
        failing
    };
    let mut out = String::new();
    let mut err = String::new();
    for o in chosen {
        let text = match o.stream {
            Stream::Stdout => &mut out,
            Stream::Stderr => &mut err,
        };
        let _ = writeln!(text, "--- {} ---", o.step);
        text.push_str(&o.text);
        if !o.text.ends_with('\n') {
            text.push('\n');
        }
    }
    (out, err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn junit_mixed_run() {
        let xml = to_string(&Summary::from_events(&fixture::mixed_run())).expect("junit");
        insta::assert_snapshot!(xml);
    }

    #[test]
    fn junit_error_run() {
        let xml = to_string(&Summary::from_events(&fixture::error_run())).expect("junit");
        insta::assert_snapshot!(xml);
    }

    /// A machine's waits get their own testsuite, and a check that failed twice under one name
    /// gets each failure's own reason.
    #[test]
    fn lab_checks_are_grouped_by_scope_and_failures_matched_in_order() {
        use crate::events::{Event, EventKind};
        use std::time::Duration;
        let at = |s: u64, kind| Event {
            elapsed: Duration::from_secs(s),
            kind,
        };
        let failed = |reason: &str| EventKind::CheckFailed {
            scope: "grey-area".into(),
            check: "unit etcd.service".into(),
            reason: reason.into(),
            observed: None,
            evidence: Vec::new(),
            took: Duration::from_secs(1),
            measured: None,
        };
        let events = vec![
            at(
                0,
                EventKind::RunStarted {
                    lab: "lab".into(),
                    scenarios: Vec::new(),
                    started_at: None,
                },
            ),
            at(
                1,
                EventKind::CheckPassed {
                    scope: "readiness".into(),
                    check: "apiserver /readyz".into(),
                    took: Duration::from_secs(1),
                    measured: None,
                },
            ),
            at(2, failed("first: etcd.service failed")),
            at(3, failed("second: QEMU exited")),
            at(4, EventKind::RunFinished { aborted: None }),
        ];
        let xml = to_string(&Summary::from_events(&events)).expect("junit");
        let suites: Vec<&str> = xml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("<testsuite name=\""))
            .filter_map(|l| l.split('"').next())
            .collect();
        assert_eq!(suites, ["labtest lab", "readiness", "grey-area"], "{xml}");
        let first = xml
            .find(r#"<failure message="first: etcd.service failed">"#)
            .expect(&xml);
        let second = xml
            .find(r#"<failure message="second: QEMU exited">"#)
            .expect(&xml);
        assert!(first < second, "{xml}");
    }

    #[test]
    fn junit_aborted_run() {
        let xml = to_string(&Summary::from_events(&fixture::aborted_run())).expect("junit");
        insta::assert_snapshot!(xml);
    }
}
