//! The reports a run leaves in its artifacts folder ([`crate::artifacts`]), and the run history
//! the page compares with.
use std::path::{Path, PathBuf};

use super::summary::Summary;
use super::{history, html, json, junit, ReportError};
use crate::artifacts::ArtifactsDir;
use crate::events::Event;

impl ArtifactsDir {
    /// Compares the run with earlier ones in `report/index.html` and adds it to them: `path`
    /// is the history file ([`super::history`]) shared by the runs of every lab.
    pub fn with_history(mut self, path: impl Into<PathBuf>) -> Self {
        self.history = Some(path.into());
        self
    }

    /// Writes `report/{junit.xml,events.jsonl,summary.json,summary.txt,index.html}` from the
    /// run's events and returns the summary they were made from; with a history file, the
    /// run is added to it after the page compared it with the earlier runs. Call it last:
    /// events emitted afterwards are not in the files.
    pub fn write_reports(&self, events: &[Event]) -> Result<Summary, ReportError> {
        let summary = Summary::from_events(events);
        let earlier = self
            .history
            .as_deref()
            .map(|path| history::load(path, &summary.lab, 20))
            .unwrap_or_default();
        let files = [
            ("junit.xml", junit::to_string(&summary)?, "JUnit XML"),
            ("events.jsonl", json::events_jsonl(events)?, "event log"),
            (
                "summary.json",
                json::summary_json(&summary)?,
                "summary (JSON)",
            ),
            ("summary.txt", summary.render_text(), "summary"),
            (
                "index.html",
                html::render(events, &summary, &earlier),
                "run report (HTML)",
            ),
        ];
        for (name, text, what) in files {
            self.write_text(Path::new("report").join(name), &text, what)?;
        }
        if let Some(path) = &self.history {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            // The run's own reports are written; a history that cannot grow costs only the
            // comparison next time.
            if let Err(e) = history::append(path, &history::RunRecord::from_summary(&summary, now))
            {
                tracing::warn!("run history not updated: {}", crate::error::Chain(&e));
            }
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::events::{EventKind, Events};
    use crate::report::fixture;

    fn dir() -> (tempfile::TempDir, ArtifactsDir, crate::events::Recorder) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let events = Events::new();
        let recorder = events.record();
        let dir = ArtifactsDir::create(tmp.path().join("run"), &events).expect("create");
        (tmp, dir, recorder)
    }

    #[test]
    fn layout() {
        let (_tmp, dir, recorder) = dir();
        let console = dir.console_log("grey-area").expect("console");
        let journal = dir
            .write_journal("grey-area", "serial-getty@ttyS0.service", "x")
            .expect("journal");
        let kube = dir.write_kube("describe nodes", "x").expect("kube");
        dir.write_reports(&fixture::mixed_run()).expect("reports");
        let rel = |p: &Path| {
            let rel = p
                .strip_prefix(dir.root())
                .expect("inside")
                .display()
                .to_string();
            if rel.is_empty() {
                ".".to_string()
            } else {
                rel
            }
        };
        assert_eq!(rel(&console), "machines/grey-area/console.log");
        assert_eq!(
            rel(&journal),
            "machines/grey-area/journal-serial-getty@ttyS0.service.txt"
        );
        assert_eq!(rel(&kube), "kube/describe_nodes.txt");
        let announced: Vec<String> = recorder
            .events()
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Artifact { path, what } => Some(format!("{} ({what})", rel(path))),
                _ => None,
            })
            .collect();
        insta::assert_snapshot!(announced.join("\n"), @r"
        . (artifacts folder)
        machines/grey-area/console.log (console of grey-area)
        machines/grey-area/journal-serial-getty@ttyS0.service.txt (journal of serial-getty@ttyS0.service on grey-area)
        kube/describe_nodes.txt (describe nodes)
        report/junit.xml (JUnit XML)
        report/events.jsonl (event log)
        report/summary.json (summary (JSON))
        report/summary.txt (summary)
        report/index.html (run report (HTML))
        ");
        let events = fs::read_to_string(dir.root().join("report/events.jsonl")).expect("read");
        let back = json::read_events_jsonl(events.as_bytes()).expect("parse");
        assert_eq!(back, fixture::mixed_run());
    }

    #[test]
    fn each_run_joins_the_history_its_page_compares_with() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("history.jsonl");
        for run in ["run-1", "run-2"] {
            let dir = ArtifactsDir::create(tmp.path().join(run), &Events::discard())
                .expect("create")
                .with_history(&file);
            dir.write_reports(&fixture::mixed_run()).expect("reports");
        }
        let runs = history::load(&file, ".", 20);
        assert_eq!(runs.len(), 2);
        let page = fs::read_to_string(tmp.path().join("run-2/report/index.html")).expect("page");
        assert!(page.contains("<!doctype html>"));
    }
}
