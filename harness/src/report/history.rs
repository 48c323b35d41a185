//! A run history: one JSON line per run, so a report can say "this run against the last
//! runs" (did time-to-Ready or a measured delay creep up?) without keeping whole artifacts
//! folders around.
//!
//! ```
//! use harness::report::history::{self, RunRecord};
//! use harness::report::Summary;
//!
//! let tmp = tempfile::tempdir().unwrap();
//! let path = tmp.path().join("labtest/history.jsonl");
//! let summary = Summary::from_events(&[]);
//! history::append(&path, &RunRecord::from_summary(&summary, 1_700_000_000)).unwrap();
//! assert_eq!(history::load(&path, "", 20).len(), 1);
//! ```
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::summary::{RunResult, ScenarioResult, Summary};
use super::ReportError;
use crate::events::{Measured, Phase};
use crate::secs;

/// How many runs the file keeps; older ones are dropped when it grows past this.
pub const KEEP: usize = 200;

/// One run, as little as comparing runs needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// When the run ended, seconds since the Unix epoch.
    pub unix: u64,
    /// The lab's directory, as the run was given it: runs are compared within one lab.
    pub lab: String,
    /// `passed`, `failed` or `aborted`. A string, not the enum, so a file written by another
    /// version still loads.
    pub result: String,
    /// The whole run.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// How long each phase took, in order.
    pub phases: Vec<PhaseRecord>,
    /// From the run's start to the lab passing its readiness gate; `None` if it never did.
    #[serde(default, with = "opt_secs")]
    pub ready: Option<Duration>,
    /// Each scenario's result and time.
    pub scenarios: Vec<ScenarioRecord>,
}

/// One phase of a recorded run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// Which phase.
    pub phase: Phase,
    /// How long it took.
    #[serde(with = "secs")]
    pub took: Duration,
}

/// One scenario of a recorded run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioRecord {
    /// Its name.
    pub name: String,
    /// `passed`, `flaky`, `failed`, `error` or `not_run`.
    pub result: String,
    /// How long it took.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// The measured delays of the attempt that decided the result.
    #[serde(default)]
    pub measured: Vec<MeasuredRecord>,
}

/// One measured delay of a recorded scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredRecord {
    /// The check that measured it.
    pub check: String,
    /// The delay, from what, and its budget.
    #[serde(flatten)]
    pub measured: Measured,
}

impl RunRecord {
    /// The record of the run `summary` describes, ended at `now_unix`.
    pub fn from_summary(summary: &Summary, now_unix: u64) -> RunRecord {
        RunRecord {
            unix: now_unix,
            lab: summary.lab.clone(),
            result: run_result(summary.result).to_string(),
            duration: summary.duration,
            phases: summary
                .phases
                .iter()
                .map(|p| PhaseRecord {
                    phase: p.phase,
                    took: p.took,
                })
                .collect(),
            ready: time_to_ready(summary),
            scenarios: summary
                .scenarios
                .iter()
                .map(|s| ScenarioRecord {
                    name: s.name.clone(),
                    result: scenario_result(s.result).to_string(),
                    duration: s.duration,
                    measured: s
                        .attempts
                        .last()
                        .map(|a| {
                            a.checks
                                .iter()
                                .filter_map(|c| {
                                    Some(MeasuredRecord {
                                        check: c.check.clone(),
                                        measured: c.measured.clone()?,
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// The record of scenario `name`, if the run had it.
    pub fn scenario(&self, name: &str) -> Option<&ScenarioRecord> {
        self.scenarios.iter().find(|s| s.name == name)
    }
}

/// The end of the readiness gate when it passed. Without gate checks (a lab restored from a
/// snapshot skips them), build + boot + readiness, which a rebuild in a scenario would
/// inflate: hence the gate first.
fn time_to_ready(summary: &Summary) -> Option<Duration> {
    if summary.result == RunResult::Aborted || !summary.lab_failures.is_empty() {
        return None;
    }
    if let Some(end) = summary
        .lab_checks
        .iter()
        .filter(|c| c.scope == crate::kube::gate::SCOPE)
        .map(|c| c.started + c.took)
        .max()
    {
        return Some(end);
    }
    let phases: Vec<_> = summary
        .phases
        .iter()
        .filter(|p| matches!(p.phase, Phase::Build | Phase::Boot | Phase::Readiness))
        .collect();
    (!phases.is_empty()).then(|| phases.iter().map(|p| p.took).sum())
}

fn run_result(r: RunResult) -> &'static str {
    match r {
        RunResult::Passed => "passed",
        RunResult::Failed => "failed",
        RunResult::Aborted => "aborted",
    }
}

fn scenario_result(r: ScenarioResult) -> &'static str {
    match r {
        ScenarioResult::Passed => "passed",
        ScenarioResult::Flaky => "flaky",
        ScenarioResult::Failed => "failed",
        ScenarioResult::Error => "error",
        ScenarioResult::NotRun => "not_run",
    }
}

/// Appends `record` as one line, creating the file and its folders. Past [`KEEP`] lines the
/// file is rewritten with the newest [`KEEP`] through a temporary file and a rename, so a
/// crash mid-way leaves the old file or the new one, never half of one.
pub fn append(path: &Path, record: &RunRecord) -> Result<(), ReportError> {
    let io = |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let mut line = serde_json::to_string(record)?;
    line.push('\n');
    // One write of a whole line with O_APPEND: two runs ending together do not interleave.
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(io)?;

    let text = fs::read_to_string(path).map_err(io)?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() <= KEEP {
        return Ok(());
    }
    let mut kept = lines[lines.len() - KEEP..].join("\n");
    kept.push('\n');
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(kept.as_bytes()).map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// The last `limit` runs of `lab`, oldest first. A missing or unreadable file is an empty
/// history and a line that does not parse (another version, a torn write) is skipped: the
/// history decorates a report, it must never fail one.
pub fn load(path: &Path, lab: &str, limit: usize) -> Vec<RunRecord> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    let runs: Vec<RunRecord> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<RunRecord>(line).ok())
        .filter(|r| r.lab == lab)
        .collect();
    let skip = runs.len().saturating_sub(limit);
    runs.into_iter().skip(skip).collect()
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => crate::secs::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Secs(#[serde(with = "crate::secs")] Duration);
        Ok(Option::<Secs>::deserialize(d)?.map(|Secs(d)| d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    fn record(lab: &str, unix: u64) -> RunRecord {
        let mut r = RunRecord::from_summary(&Summary::from_events(&fixture::passed_run()), unix);
        r.lab = lab.to_string();
        r
    }

    #[test]
    fn from_summary_keeps_what_runs_are_compared_by() {
        let r = RunRecord::from_summary(&Summary::from_events(&fixture::mixed_run()), 42);
        assert_eq!(r.result, "failed");
        // The readiness gate ends at 60 s; the rebuild in rebuild-rollback must not count.
        assert_eq!(r.ready, Some(Duration::from_secs(60)));
        let nf = r.scenario("node-failure").expect("node-failure");
        assert_eq!(nf.result, "failed");
        assert_eq!(nf.measured.len(), 1);
        assert_eq!(nf.measured[0].check, "node NotReady");
        assert_eq!(nf.measured[0].measured.since, "link-down");
        assert_eq!(
            r.scenario("rebuild-rollback").map(|s| &*s.result),
            Some("flaky")
        );

        let aborted = RunRecord::from_summary(&Summary::from_events(&fixture::aborted_run()), 42);
        assert_eq!(aborted.result, "aborted");
        assert_eq!(aborted.ready, None);
    }

    #[test]
    fn round_trips_through_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("a/b/history.jsonl");
        let mixed = RunRecord::from_summary(&Summary::from_events(&fixture::mixed_run()), 7);
        append(&path, &mixed).expect("append");
        assert_eq!(load(&path, ".", 20), vec![mixed]);
    }

    #[test]
    fn load_filters_by_lab_skips_junk_and_keeps_the_last() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("history.jsonl");
        for i in 0..5 {
            append(&path, &record(".", i)).expect("append");
            append(&path, &record("other", 100 + i)).expect("append");
        }
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        file.write_all(b"{not json\n\n{\"unix\":1}\n")
            .expect("write junk");
        append(&path, &record(".", 5)).expect("append after junk");

        let times: Vec<u64> = load(&path, ".", 3).iter().map(|r| r.unix).collect();
        assert_eq!(times, [3, 4, 5]);
        assert_eq!(load(&path, "other", 20).len(), 5);
        assert!(load(&path, "nope", 20).is_empty());
        assert!(load(&tmp.path().join("missing"), ".", 20).is_empty());
    }

    #[test]
    fn the_file_stays_bounded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("history.jsonl");
        for i in 0..(KEEP as u64 + 7) {
            append(&path, &record(".", i)).expect("append");
        }
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), KEEP);
        let runs = load(&path, ".", usize::MAX);
        assert_eq!(runs.first().map(|r| r.unix), Some(7));
        assert_eq!(runs.last().map(|r| r.unix), Some(KEEP as u64 + 6));
        // Only the history file is left: the temporary file was renamed over it.
        assert_eq!(fs::read_dir(tmp.path()).expect("read_dir").count(), 1);
    }
}
