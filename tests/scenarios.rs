//! Tier 4: every built-in scenario and every scenario file in scenarios/files/ is a test of its
//! own (`cargo nextest list --profile lab` shows them; `cargo nextest run --profile lab -E 'test(/node.failure/)'` runs the
//! node-failure ones alone), each run exactly as a user runs it -
//! `labtest run --lab fixtures/lab --scenario NAME` - on a lab restored from the fixture lab's
//! Ready snapshot and checked through the reports it writes. The first test that finds no
//! snapshot boots the lab and saves it, under a lock in the cache; the others wait for it and
//! restore, so the suite boots the lab once. The files are found at run time: a new one is a
//! new test without an edit here.
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use libtest_mimic::{Arguments, Failed, Trial};
use scenarios::file::ScenarioFile;

enum Target {
    Builtin(&'static str),
    File { name: String, path: PathBuf },
}

impl Target {
    /// The name the run reports the scenario by (a file's `name`, not its file name).
    fn report_name(&self) -> &str {
        match self {
            Target::Builtin(name) => name,
            Target::File { name, .. } => name,
        }
    }
}

fn main() {
    let args = Arguments::from_args();
    let mut trials: Vec<Trial> = scenarios::CATALOGUE
        .iter()
        .map(|(name, _)| {
            Trial::test(format!("builtin::{name}"), move || {
                run(&Target::Builtin(name))
            })
        })
        .collect();
    trials.extend(scenario_files().into_iter().map(|(stem, loaded)| {
        Trial::test(format!("file::{stem}"), move || {
            let target = loaded.map_err(Failed::from)?;
            run(&target)
        })
    }));
    libtest_mimic::run(&args, trials).exit();
}

/// Every `*.toml` in scenarios/files/, by file stem; a file that does not load is a failing
/// test that says why, not a missing one.
fn scenario_files() -> Vec<(String, Result<Target, String>)> {
    let dir = support::repo_root().join("scenarios/files");
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(e) => {
            return vec![(
                "scenario-files".into(),
                Err(format!("reading {}: {e}", dir.display())),
            )]
        }
    };
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let loaded = ScenarioFile::load(&path)
                .map(|file| Target::File {
                    name: file.name,
                    path: path.clone(),
                })
                .map_err(|e| e.to_string());
            (stem, loaded)
        })
        .collect()
}

fn run(target: &Target) -> Result<(), Failed> {
    let report = tempfile::Builder::new()
        .prefix("labtest-scenario-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let junit = report.path().join("junit.xml");
    let mut cmd = Command::cargo_bin("labtest").map_err(|e| format!("the labtest binary: {e}"))?;
    cmd.env("LABTEST_ACCEL", "tcg")
        .arg("run")
        .arg("--lab")
        .arg(support::repo_root().join("fixtures/lab"))
        .arg("--report-dir")
        .arg(report.path())
        .arg("--junit")
        .arg(&junit)
        // A boot and the gate (when this test makes the snapshot) and the longest scenario
        // (node-failure, ~7 min) under TCG, with room for a slow runner.
        .timeout(Duration::from_secs(35 * 60));
    match target {
        Target::Builtin(name) => cmd.arg("--scenario").arg(name),
        Target::File { path, .. } => cmd.arg("--scenario-file").arg(path),
    };
    let out = cmd.output().map_err(|e| format!("labtest run: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary =
        std::fs::read_to_string(report.path().join("report/summary.txt")).unwrap_or_default();
    let xml = std::fs::read_to_string(&junit).unwrap_or_default();
    let name = target.report_name();
    let verdict = check(name, out.status.success(), &xml, &stdout);
    if let Err(what) = &verdict {
        let kept = keep_evidence(report.path(), name);
        // The summary first and only the log's tail: CI shows the head and the tail of a
        // failure, and cuts the middle of a long log.
        return Err(format!(
            "{what}\nsummary:\n{summary}\nevidence: {kept}\nstderr:\n{}\nlast 120 lines of stdout:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&stdout, 120)
        )
        .into());
    }
    Ok(())
}

/// What the reports of a passed run must say: the scenario is a testcase without failure, and
/// its lab came from the Ready snapshot - restored, or booted and saved by this very run.
fn check(name: &str, passed: bool, xml: &str, stdout: &str) -> Result<(), String> {
    if !passed {
        return Err(format!("labtest run of {name} failed"));
    }
    if !xml.contains(&format!("name=\"{name}\"")) {
        return Err(format!("JUnit has no testcase {name}:\n{xml}"));
    }
    if xml.contains("<failure") || xml.contains("<error") {
        return Err(format!("JUnit reports a failure:\n{xml}"));
    }
    let restored = xml.contains("name=\"restored-from-snapshot\" value=\"ready\"");
    let saved = stdout.contains("snapshot ready saved in");
    if !restored && !saved {
        return Err(format!(
            "{name} ran on a lab that was neither restored from the Ready snapshot nor saved as it:\n{xml}"
        ));
    }
    Ok(())
}

/// Moves a failed run's artifacts where CI uploads them.
fn keep_evidence(report: &Path, name: &str) -> String {
    let keep = support::repo_root()
        .join("target/labtest/scenarios-failed")
        .join(name);
    let _ = std::fs::remove_dir_all(&keep);
    let moved = keep
        .parent()
        .is_some_and(|parent| std::fs::create_dir_all(parent).is_ok())
        && std::fs::rename(report, &keep).is_ok();
    if moved {
        keep.display().to_string()
    } else {
        format!(
            "{} (could not be moved; it is removed with the test)",
            report.display()
        )
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
