//! Everything a user reads about a run, rendered from [`crate::events`] only.
//!
//! * [`live`] - the terminal view while the run goes (bars on a TTY, one line per event in CI),
//!   built on the pure [`render_plain_line`].
//! * [`Summary`] - the run folded into one model; [`Summary::render_text`] is the final table.
//! * [`junit`] - JUnit XML with real durations, every failed check, flaky retries.
//! * [`json`] - `events.jsonl` (the whole stream, re-renderable) and `summary.json`.
//! * [`html`] - `report/index.html`: one self-contained page with the summary, a timeline of
//!   machines, faults and checks, measured delays, evidence links and the run history.
//! * [`cpu`] - where the CPU went (the sampler's events): the summary's section, the starvation
//!   line, failure evidence and `labtest top`.
//! * [`history`] - one JSON line per run, so a report can compare a run with the last ones.
//! * [`ArtifactsDir`] - the folder a run leaves behind, with all of the above in `report/`.
//!
//! # Usage
//! ```no_run
//! use harness::events::{EventKind, Events};
//! use harness::report::{live, ArtifactsDir, Summary};
//!
//! # fn main() -> Result<(), harness::report::ReportError> {
//! let events = Events::new();
//! let recorder = events.record();
//! let view = live::spawn(&events, live::Mode::detect());
//! let artifacts = ArtifactsDir::create("target/labtest/run-1", &events)?;
//! events.emit(EventKind::RunStarted {
//!     lab: ".".into(),
//!     scenarios: vec!["pod-scheduling".into()],
//!     started_at: Some(harness::utc::rfc3339(events.started_at())),
//! });
//! // ... boot, wait, run scenarios: every layer emits ...
//! events.emit(EventKind::RunFinished { aborted: None });
//! let _ = view.join();
//! let summary = artifacts.write_reports(&recorder.events())?;
//! print!("{}", summary.render_text());
//! std::process::exit(summary.result.exit_code());
//! # }
//! ```
use std::path::PathBuf;
use std::time::Duration;

mod artifacts;
pub mod cpu;
pub mod history;
pub mod html;
pub mod json;
pub mod junit;
pub mod live;
mod plain;
mod summary;

#[cfg(test)]
mod fixture;

// The folder is a lower layer (the scenarios write evidence to it); the CLI finds it here too.
pub use crate::artifacts::{ArtifactsDir, ARTIFACTS_FOLDER};
pub use plain::render_plain_line;
pub use summary::{
    Attempt, FailedCheck, MachineSummary, PhaseTime, RunResult, ScenarioResult, ScenarioSummary,
    StepOutput, Summary,
};

/// Why a report could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A report file could not be written.
    #[error("writing {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The artifacts folder refused a file.
    #[error(transparent)]
    Artifacts(#[from] crate::artifacts::ArtifactsError),
    /// The JUnit XML could not be rendered.
    #[error("rendering JUnit XML")]
    Junit(#[from] quick_junit::SerializeError),
    /// A JSON report could not be rendered.
    #[error("rendering JSON")]
    Json(#[from] serde_json::Error),
    /// A line of `events.jsonl` is not an event.
    #[error("events.jsonl line {line}")]
    BadEventLine {
        /// Its line number, from 1.
        line: usize,
        /// Why it does not parse.
        source: serde_json::Error,
    },
}

/// Durations as people read them in a log: `0.4s`, `12.3s`, `3m05s`, `1h02m`.
/// `41.0s after power-loss (budget 3m00s)`: how every rendering shows a measured delay.
pub fn fmt_measured(m: &crate::events::Measured) -> String {
    format!(
        "{} after {} (budget {})",
        fmt_duration(m.delay),
        m.since,
        fmt_duration(m.budget)
    )
}

/// Durations as people read them in a log: `0.4s`, `12.3s`, `3m05s`, `1h02m`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        // Truncated, not rounded: 59.99 s must not read as "59.9s".
        let tenths = d.as_millis() / 100;
        format!("{}.{}s", tenths / 10, tenths % 10)
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_log() {
        let cases = [
            (Duration::from_millis(0), "0.0s"),
            (Duration::from_millis(449), "0.4s"),
            (Duration::from_millis(12_345), "12.3s"),
            (Duration::from_millis(59_999), "59.9s"),
            (Duration::from_secs(185), "3m05s"),
            (Duration::from_secs(3720), "1h02m"),
        ];
        for (d, want) in cases {
            assert_eq!(fmt_duration(d), want, "{d:?}");
        }
    }
}
