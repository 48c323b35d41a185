//! The folder a run leaves behind, one place to look when something failed:
//!
//! ```text
//! <dir>/machines/<name>/console.log
//! <dir>/machines/<name>/journal-<unit>.txt
//! <dir>/kube/<what>.txt
//! <dir>/report/{junit.xml,events.jsonl,summary.json,summary.txt}
//! ```
//!
//! Every file written through [`ArtifactsDir`] is announced with an `Artifact` event, so the
//! live view, the event log and a failed check's evidence all point at the same paths.
use std::fs;
use std::path::{Component, Path, PathBuf};

use super::summary::Summary;
use super::{history, html, json, junit, ReportError, ARTIFACTS_FOLDER};
use crate::events::{Event, EventKind, Events};

/// A run's artifacts folder. Cheap to clone; share it with every layer that saves evidence.
///
/// ```
/// use harness::events::Events;
/// use harness::report::ArtifactsDir;
///
/// let tmp = tempfile::tempdir().unwrap();
/// let events = Events::new();
/// let recorder = events.record();
/// let dir = ArtifactsDir::create(tmp.path().join("run"), &events).unwrap();
/// let path = dir.write_journal("grey-area", "kubelet.service", "kubelet started").unwrap();
/// assert!(path.ends_with("machines/grey-area/journal-kubelet.service.txt"));
/// assert_eq!(recorder.events().len(), 2); // the folder, then the journal
/// ```
#[derive(Debug, Clone)]
pub struct ArtifactsDir {
    root: PathBuf,
    events: Events,
    history: Option<PathBuf>,
}

impl ArtifactsDir {
    /// Creates `root` (and parents) and announces it as the run's artifacts folder. The
    /// path is made absolute so the summary's pointer works from any directory.
    pub fn create(root: impl Into<PathBuf>, events: &Events) -> Result<Self, ReportError> {
        let root = root.into();
        let root = std::path::absolute(&root).map_err(|source| ReportError::Io {
            path: root.clone(),
            source,
        })?;
        create_dir(&root)?;
        events.emit(EventKind::Artifact {
            path: root.clone(),
            what: ARTIFACTS_FOLDER.to_string(),
        });
        Ok(Self {
            root,
            events: events.clone(),
            history: None,
        })
    }

    /// Compares the run with earlier ones in `report/index.html` and adds it to them: `path`
    /// is the history file ([`super::history`]) shared by the runs of every lab.
    pub fn with_history(mut self, path: impl Into<PathBuf>) -> Self {
        self.history = Some(path.into());
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the VM layer should write `machine`'s serial console. The folder is created
    /// and the file announced now, so it is findable even if the run dies mid-boot.
    pub fn console_log(&self, machine: &str) -> Result<PathBuf, ReportError> {
        let dir = self.root.join("machines").join(file_name(machine));
        create_dir(&dir)?;
        let path = dir.join("console.log");
        self.announce(&path, format!("console of {machine}"));
        Ok(path)
    }

    /// Saves a unit's journal from `machine`, e.g. after a check on that unit failed.
    pub fn write_journal(
        &self,
        machine: &str,
        unit: &str,
        text: &str,
    ) -> Result<PathBuf, ReportError> {
        let relative = Path::new("machines")
            .join(file_name(machine))
            .join(format!("journal-{}.txt", file_name(unit)));
        self.write_text(relative, text, &format!("journal of {unit} on {machine}"))
    }

    /// Saves Kubernetes state (`kubectl describe nodes`, events, pod lists) under `kube/`.
    pub fn write_kube(&self, what: &str, text: &str) -> Result<PathBuf, ReportError> {
        let relative = Path::new("kube").join(format!("{}.txt", file_name(what)));
        self.write_text(relative, text, what)
    }

    /// Saves the CPU samples before `what` failed under `cpu/` ([`super::cpu::evidence_text`]).
    pub fn write_cpu(&self, what: &str, text: &str) -> Result<PathBuf, ReportError> {
        let relative = Path::new("cpu").join(format!("{}.txt", file_name(what)));
        self.write_text(relative, text, &format!("CPU samples before {what} failed"))
    }

    /// Writes `text` at `relative` inside the folder (parents created) and announces it.
    /// `relative` may not leave the folder.
    pub fn write_text(
        &self,
        relative: impl AsRef<Path>,
        text: &str,
        what: &str,
    ) -> Result<PathBuf, ReportError> {
        let path = self.inside(relative.as_ref())?;
        write(&path, text)?;
        self.announce(&path, what.to_string());
        Ok(path)
    }

    /// Copies a file the harness did not write itself (a QEMU log, a nix build log) into
    /// the folder at `relative`, and announces it.
    pub fn copy_file(
        &self,
        from: &Path,
        relative: impl AsRef<Path>,
        what: &str,
    ) -> Result<PathBuf, ReportError> {
        let path = self.inside(relative.as_ref())?;
        fs::copy(from, &path).map_err(|source| ReportError::Io {
            path: path.clone(),
            source,
        })?;
        self.announce(&path, what.to_string());
        Ok(path)
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

    fn announce(&self, path: &Path, what: String) {
        self.events.emit(EventKind::Artifact {
            path: path.to_path_buf(),
            what,
        });
    }

    fn inside(&self, relative: &Path) -> Result<PathBuf, ReportError> {
        let plain = relative.components().count() > 0
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(ReportError::OutsideArtifacts {
                path: relative.to_path_buf(),
            });
        }
        let path = self.root.join(relative);
        if let Some(parent) = path.parent() {
            create_dir(parent)?;
        }
        Ok(path)
    }
}

/// A machine, unit or topic name as one safe file name: names come from lab specs and
/// systemd (`kubelet.service`, `serial-getty@ttyS0.service`), so keep what is readable
/// and replace what could make a path.
fn file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "_".to_string()
    } else {
        cleaned
    }
}

fn create_dir(path: &Path) -> Result<(), ReportError> {
    fs::create_dir_all(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    fs::write(path, text).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn paths_stay_inside() {
        let (_tmp, dir, _) = dir();
        for bad in ["../escape.txt", "/etc/passwd", "", "a/../../b"] {
            assert!(
                matches!(
                    dir.write_text(bad, "x", "bad"),
                    Err(ReportError::OutsideArtifacts { .. })
                ),
                "{bad}"
            );
        }
        let odd = dir.write_journal("..", "../../x", "x").expect("sanitized");
        assert!(odd.starts_with(dir.root()), "{}", odd.display());
    }
}
