//! The one check runner. A check is a [`Wait`] (what, deadline, poll interval, the named moment
//! its delay is measured from) and a probe; [`run`] polls it and reports it through [`Events`]:
//! `CheckStarted`, a `CheckProgress` whenever what the probe sees changes, then `CheckPassed` or
//! `CheckFailed` with the last observed state. The readiness gate, scenario steps, the VM
//! layer's waits (`Machine::wait_for_unit`...) and users' tests (`ReadyLab::wait_node`) all run
//! their waits here, so the live view, the summary, JUnit and the HTML report show every one.
//!
//! A check's scope says who asked: `readiness`, a scenario's name, a machine's name.
//!
//! # Usage
//! ```
//! use std::time::Duration;
//! use harness::check;
//! use harness::events::Events;
//! use harness::wait::{Poll, Wait};
//! # tokio_test_block_on(async {
//! let events = Events::discard();
//! let wait = Wait::new("the answer", Duration::from_secs(1), Duration::from_millis(1));
//! let mut tries = 0;
//! let answer = check::run(&events, "demo", &wait, || {
//!     tries += 1;
//!     let seen = tries;
//!     async move { if seen >= 3 { Poll::Ready(42) } else { Poll::Pending(format!("try {seen}")) } }
//! })
//! .await
//! .unwrap();
//! assert_eq!(answer, 42);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
//! # }
//! ```
use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::events::{EventKind, Events, Measured};
use crate::wait::{poll_until, Poll, Wait, WaitError};

/// A check that did not pass, not yet reported: the caller may gather evidence first
/// ([`Failure::report`]).
#[derive(Debug)]
pub struct Failure {
    /// Why the wait ended without its value: a timeout with what it last saw, or a failure.
    pub error: WaitError,
    /// How long the check ran.
    pub took: Duration,
    /// The delay from the wait's named moment to the failure, against its budget.
    pub measured: Option<Measured>,
}

impl Failure {
    /// Why the check stopped: `timed out after 12.0s`, or the probe's permanent failure.
    pub fn reason(&self) -> String {
        match &self.error {
            WaitError::Timeout { elapsed, .. } => {
                format!("timed out after {:.1}s", elapsed.as_secs_f64())
            }
            WaitError::Failed { reason, .. } => reason.clone(),
        }
    }

    /// The last state the probe saw before a timeout.
    pub fn last_observed(&self) -> Option<String> {
        match &self.error {
            WaitError::Timeout { last_observed, .. } => Some(last_observed.clone()),
            WaitError::Failed { .. } => None,
        }
    }

    /// Emits `CheckFailed` for `check` of `scope` with `evidence`; returns the wait's error.
    pub fn report(
        self,
        events: &Events,
        scope: &str,
        check: &str,
        evidence: Vec<PathBuf>,
    ) -> WaitError {
        events.emit(EventKind::CheckFailed {
            scope: scope.into(),
            check: check.into(),
            reason: self.reason(),
            observed: self.last_observed(),
            evidence,
            took: self.took,
            measured: self.measured,
        });
        self.error
    }
}

/// Runs one check and reports its start, progress and success; a failure is returned
/// unreported so that the caller can attach evidence ([`Failure::report`]). [`run`] is the
/// plain form.
///
/// # Errors
/// [`Failure`] when the wait times out or the probe fails for good.
pub async fn observe<T, F, Fut>(
    events: &Events,
    scope: &str,
    wait: &Wait,
    mut probe: F,
) -> Result<(T, Duration), Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Poll<T>>,
{
    events.emit(EventKind::CheckStarted {
        scope: scope.into(),
        check: wait.what.clone(),
        timeout: wait.timeout,
    });
    let start = Instant::now();
    let last = Mutex::new(None::<String>);
    let result = poll_until(wait, || {
        let next = probe();
        let last = &last;
        async move {
            let poll = next.await;
            if let Poll::Pending(seen) = &poll {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if last.as_deref() != Some(seen.as_str()) {
                    *last = Some(seen.clone());
                    events.emit(EventKind::CheckProgress {
                        scope: scope.into(),
                        check: wait.what.clone(),
                        observed: seen.clone(),
                    });
                }
            }
            poll
        }
    })
    .await;
    let took = start.elapsed();
    let measured = measured(wait, start);
    match result {
        Ok(value) => {
            events.emit(EventKind::CheckPassed {
                scope: scope.into(),
                check: wait.what.clone(),
                took,
                measured,
            });
            Ok((value, took))
        }
        Err(error) => Err(Failure {
            error,
            took,
            measured,
        }),
    }
}

/// Runs one check and reports it, failure included (without evidence).
///
/// # Errors
/// The wait's [`WaitError`].
pub async fn run<T, F, Fut>(
    events: &Events,
    scope: &str,
    wait: &Wait,
    probe: F,
) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Poll<T>>,
{
    match observe(events, scope, wait, probe).await {
        Ok((value, _)) => Ok(value),
        Err(failure) => Err(failure.report(events, scope, &wait.what, Vec::new())),
    }
}

/// Runs `body` once (no polling) as a named check bounded by `timeout`: `CheckStarted`, then
/// `CheckPassed` or `CheckFailed` with the error's text. For steps that act rather than wait (a
/// join, a fault, a rebuild), so the reports and the live view show them like every wait.
///
/// # Errors
/// `Some(error)` when the body failed, `None` when it overran `timeout` (it is dropped).
pub async fn once<T, E: std::error::Error>(
    events: &Events,
    scope: &str,
    what: &str,
    timeout: Duration,
    body: impl Future<Output = Result<T, E>>,
) -> Result<T, Option<E>> {
    events.emit(EventKind::CheckStarted {
        scope: scope.into(),
        check: what.into(),
        timeout,
    });
    let start = Instant::now();
    let result = match tokio::time::timeout(timeout, body).await {
        Ok(result) => result.map_err(Some),
        Err(_) => Err(None),
    };
    let took = start.elapsed();
    match &result {
        Ok(_) => events.emit(EventKind::CheckPassed {
            scope: scope.into(),
            check: what.into(),
            took,
            measured: None,
        }),
        Err(e) => events.emit(EventKind::CheckFailed {
            scope: scope.into(),
            check: what.into(),
            reason: match e {
                Some(e) => crate::error::Chain(e).to_string(),
                None => format!("did not finish within {:.0}s", timeout.as_secs_f64()),
            },
            observed: None,
            evidence: Vec::new(),
            took,
            measured: None,
        }),
    }
    result
}

/// The delay `wait` measures from its named moment, if it has one; `started` is when the check
/// itself began, so the budget is the time from the named moment to the check's deadline.
fn measured(wait: &Wait, started: Instant) -> Option<Measured> {
    wait.since.as_ref().map(|since| Measured {
        since: since.label.clone(),
        delay: since.at.elapsed(),
        budget: started.saturating_duration_since(since.at) + wait.timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::Since;

    #[tokio::test]
    async fn a_check_reports_progress_only_on_change_then_passes() {
        let events = Events::new();
        let recorder = events.record();
        let mut n = 0;
        let wait = Wait::new("thing", Duration::from_secs(2), Duration::from_millis(1));
        let result = run(&events, "s", &wait, || {
            n += 1;
            let seen = n;
            async move {
                match seen {
                    1 | 2 => Poll::Pending("warming".to_string()),
                    3 => Poll::Pending("almost".to_string()),
                    _ => Poll::Ready(seen),
                }
            }
        })
        .await;
        assert_eq!(result, Ok(4));
        let kinds: Vec<String> = recorder
            .events()
            .into_iter()
            .map(|e| match e.kind {
                EventKind::CheckStarted { .. } => "started".into(),
                EventKind::CheckProgress { observed, .. } => observed,
                EventKind::CheckPassed { .. } => "passed".into(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["started", "warming", "almost", "passed"]);
    }

    #[tokio::test]
    async fn a_failed_check_reports_what_it_saw_and_its_delay_from_the_named_moment() {
        let events = Events::new();
        let recorder = events.record();
        let since = Since {
            label: "power-loss".into(),
            at: Instant::now() - Duration::from_secs(5),
        };
        let wait = Wait::new(
            "node NotReady",
            Duration::from_millis(30),
            Duration::from_millis(5),
        )
        .since(since);
        let result: Result<(), WaitError> = run(&events, "node-failure", &wait, || async {
            Poll::Pending("Ready=True".to_string())
        })
        .await;
        assert!(
            matches!(result, Err(WaitError::Timeout { .. })),
            "{result:?}"
        );
        let failed = recorder
            .events()
            .into_iter()
            .find_map(|e| match e.kind {
                EventKind::CheckFailed {
                    scope,
                    reason,
                    observed,
                    measured,
                    ..
                } => Some((scope, reason, observed, measured)),
                _ => None,
            })
            .expect("a CheckFailed event");
        assert_eq!(failed.0, "node-failure");
        assert!(failed.1.starts_with("timed out after"), "{}", failed.1);
        assert_eq!(failed.2.as_deref(), Some("Ready=True"));
        let measured = failed.3.expect("a measured delay");
        assert_eq!(measured.since, "power-loss");
        assert!(measured.delay >= Duration::from_secs(5), "{measured:?}");
        assert!(
            measured.budget >= Duration::from_secs(5) && measured.budget < Duration::from_secs(6),
            "{measured:?}"
        );
    }
}
