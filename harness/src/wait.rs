//! Bounded waits. Every wait in labtest has a deadline and a poll interval, and when it times out
//! it says what it waited for and the last state it observed - the opposite of a 900 s silent hang.
//!
//! Conditions are plain functions behind the tiny [`Condition`] trait (modelled on kube-runtime's
//! `wait::Condition`), combined with [`Condition::not`], [`Condition::and`] and [`Condition::or`].
//!
//! # Usage
//! ```
//! use std::time::Duration;
//! use harness::wait::{poll_until, Poll, Wait};
//! # tokio_test_block_on(async {
//! let mut tries = 0;
//! let answer = poll_until(&Wait::new("the answer", Duration::from_secs(1), Duration::from_millis(1)), || {
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
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// What to wait for, for how long, and how often to look.
#[derive(Debug, Clone)]
pub struct Wait {
    /// What is awaited, as reports name it (`node limiting-factor NotReady`).
    pub what: String,
    /// How long the wait may take before it fails.
    pub timeout: Duration,
    /// How long to sleep between two looks.
    pub interval: Duration,
    /// The named moment the wait's delay is measured from, when it is not the wait's own start
    /// (see [`Wait::since`]).
    pub since: Option<Since>,
}

/// A named moment a delay is measured from: `power-loss`, `recovery`, `rebuild`.
#[derive(Debug, Clone)]
pub struct Since {
    /// The moment's name, as reports show it.
    pub label: String,
    /// When it happened.
    pub at: Instant,
}

impl Since {
    /// The moment is now.
    pub fn now(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            at: Instant::now(),
        }
    }
}

impl Wait {
    /// A wait for `what`, looking every `interval` until `timeout`.
    pub fn new(what: impl Into<String>, timeout: Duration, interval: Duration) -> Self {
        Self {
            what: what.into(),
            timeout,
            interval,
            since: None,
        }
    }

    /// Reports the delay from `since` (not from the wait's start) when the wait ends, against
    /// the budget from that moment to the wait's deadline.
    pub fn since(mut self, since: Since) -> Self {
        self.since = Some(since);
        self
    }
}

/// One look at the world during a wait.
#[derive(Debug)]
pub enum Poll<T> {
    /// Done, with the value the wait was for.
    Ready(T),
    /// Not yet; the string is the observed state, shown if the wait times out.
    Pending(String),
    /// It will never happen (e.g. a unit entered `failed`): stop waiting now.
    Failed(String),
}

/// Why a wait ended without its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed first.
    #[error("timed out after {:.1}s waiting for {what}; last observed: {last_observed}", elapsed.as_secs_f64())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the wait ran.
        elapsed: Duration,
        /// What the last look saw, for the report.
        last_observed: String,
    },
    /// The probe said it will never happen ([`Poll::Failed`]).
    #[error("gave up waiting for {what} after {:.1}s: {reason}", elapsed.as_secs_f64())]
    Failed {
        /// What was awaited.
        what: String,
        /// How long the wait ran.
        elapsed: Duration,
        /// Why it gave up.
        reason: String,
    },
}

/// Polls `probe` every `wait.interval` until it is ready, fails, or `wait.timeout` passes.
///
/// A probe that itself blocks is cut off at the deadline too, so a wait can never outlive it by
/// more than one interval.
///
/// # Errors
/// [`WaitError::Timeout`] with the last observed state, or [`WaitError::Failed`] when the probe
/// says the condition can no longer become true.
pub async fn poll_until<T, F, Fut>(wait: &Wait, mut probe: F) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Poll<T>>,
{
    let start = Instant::now();
    let deadline = start + wait.timeout;
    let mut last_observed = String::from("(nothing observed yet)");
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, probe()).await {
            Ok(Poll::Ready(value)) => return Ok(value),
            Ok(Poll::Pending(observed)) => last_observed = observed,
            Ok(Poll::Failed(reason)) => {
                return Err(WaitError::Failed {
                    what: wait.what.clone(),
                    elapsed: start.elapsed(),
                    reason,
                })
            }
            Err(_) => {
                last_observed = format!("{last_observed} (the last probe was still running)");
            }
        }
        if Instant::now() + wait.interval >= deadline {
            return Err(WaitError::Timeout {
                what: wait.what.clone(),
                elapsed: start.elapsed(),
                last_observed,
            });
        }
        tokio::time::sleep(wait.interval).await;
    }
}

/// A yes/no question about an observed state `S` (a node, a pod, a unit's status...).
///
/// `None` means "not there (yet)": conditions decide what absence means.
pub trait Condition<S: ?Sized> {
    /// Whether `state` (or its absence, `None`) satisfies the condition.
    fn matches(&self, state: Option<&S>) -> bool;

    /// Holds when `self` does not.
    fn not(self) -> Not<Self>
    where
        Self: Sized,
    {
        Not(self)
    }

    /// Holds when both hold.
    fn and<O: Condition<S>>(self, other: O) -> And<Self, O>
    where
        Self: Sized,
    {
        And(self, other)
    }

    /// Holds when either holds.
    fn or<O: Condition<S>>(self, other: O) -> Or<Self, O>
    where
        Self: Sized,
    {
        Or(self, other)
    }
}

impl<S: ?Sized, F: Fn(Option<&S>) -> bool> Condition<S> for F {
    fn matches(&self, state: Option<&S>) -> bool {
        self(state)
    }
}

/// A condition negated ([`Condition::not`]).
pub struct Not<A>(A);
/// Both conditions ([`Condition::and`]).
pub struct And<A, B>(A, B);
/// Either condition ([`Condition::or`]).
pub struct Or<A, B>(A, B);

impl<S: ?Sized, A: Condition<S>> Condition<S> for Not<A> {
    fn matches(&self, state: Option<&S>) -> bool {
        !self.0.matches(state)
    }
}

impl<S: ?Sized, A: Condition<S>, B: Condition<S>> Condition<S> for And<A, B> {
    fn matches(&self, state: Option<&S>) -> bool {
        self.0.matches(state) && self.1.matches(state)
    }
}

impl<S: ?Sized, A: Condition<S>, B: Condition<S>> Condition<S> for Or<A, B> {
    fn matches(&self, state: Option<&S>) -> bool {
        self.0.matches(state) || self.1.matches(state)
    }
}

/// Shortens an observed state for error messages and progress lines: long outputs keep their
/// end, which is where the interesting part (the last error) usually is.
pub fn tail_chars(text: &str, max: usize) -> String {
    let text = text.trim();
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let tail: String = text.chars().skip(count - max).collect();
    format!("...{tail}")
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (deadline {:.0}s, every {:.1}s)",
            self.what,
            self.timeout.as_secs_f64(),
            self.interval.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(what: &str) -> Wait {
        Wait::new(what, Duration::from_millis(200), Duration::from_millis(10))
    }

    #[tokio::test]
    async fn timeout_reports_the_last_observed_state() {
        let mut n = 0;
        let err = poll_until(&quick("the moon"), || {
            n += 1;
            let seen = n;
            async move { Poll::<()>::Pending(format!("look {seen}")) }
        })
        .await
        .unwrap_err();
        match err {
            WaitError::Timeout {
                what,
                last_observed,
                elapsed,
            } => {
                assert_eq!(what, "the moon");
                assert!(last_observed.starts_with("look "), "{last_observed}");
                assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
                assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_probe_stops_the_wait_at_once() {
        let start = Instant::now();
        let err = poll_until(&quick("unit active"), || async {
            Poll::<()>::Failed("unit entered failed".into())
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, WaitError::Failed { ref reason, .. } if reason == "unit entered failed")
        );
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_probe_that_hangs_is_cut_at_the_deadline() {
        let start = Instant::now();
        let err = poll_until(&quick("a frozen guest"), || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Poll::<()>::Ready(())
        })
        .await
        .unwrap_err();
        assert!(matches!(err, WaitError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(err.to_string().contains("still running"), "{err}");
    }

    #[test]
    fn conditions_combine() {
        let positive = |n: Option<&i32>| n.is_some_and(|n| *n > 0);
        let even = |n: Option<&i32>| n.is_some_and(|n| n % 2 == 0);
        let cond = positive.and(even);
        assert!(cond.matches(Some(&4)));
        assert!(!cond.matches(Some(&3)));
        assert!(!cond.matches(None));
        let cond = positive.not().or(even);
        assert!(cond.matches(Some(&-3)));
        assert!(cond.matches(Some(&2)));
        assert!(!cond.matches(Some(&3)));
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail_chars("short", 10), "short");
        assert_eq!(tail_chars("0123456789abc", 3), "...abc");
    }
}
