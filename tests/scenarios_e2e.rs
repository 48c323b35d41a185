//! Tier 4: every built-in scenario, the incident example file and the file form of
//! rebuild-rollback, end to end, on one boot of the
//! fixture lab - exactly as a user runs it (`labtest run --lab fixtures/lab`), checked through the
//! reports it writes. This is the suite's only whole-lab boot: every check that needs the lab
//! runs inside it, so the five testcases share one ~4 min bring-up.
mod support;

use std::time::Duration;

use assert_cmd::Command;

const INCIDENT: &str = "worker-partitioned-during-rollout";
/// The file form of rebuild-rollback, run after the built-in on the same lab: each must find
/// limiting-factor on the generation it booted with and leave it there, or the file's
/// "rollback to the generation the lab booted with" lands on the built-in's generation.
const REBUILD_FILE: &str = "rebuild-rollback";
const REBUILD_FILE_NAME: &str = "rebuild-rollback-file";

/// Every built-in scenario, as `labtest list` names them: a new one is tested without an edit here.
fn builtins() -> impl Iterator<Item = &'static str> {
    scenarios::CATALOGUE.iter().map(|(name, _)| *name)
}

#[test]
fn all_scenarios_pass_on_the_fixture_lab() {
    let report = tempfile::Builder::new()
        .prefix("labtest-e2e-")
        .tempdir()
        .expect("temp dir");
    let junit = report.path().join("junit.xml");
    let out = Command::cargo_bin("labtest")
        .expect("the labtest binary")
        .env("LABTEST_ACCEL", "tcg")
        .arg("run")
        .arg("--lab")
        .arg(support::repo_root().join("fixtures/lab"))
        .arg("--report-dir")
        .arg(report.path())
        .arg("--junit")
        .arg(&junit)
        // Named one by one: with a --scenario-file alone, no built-in would run.
        .args(builtins().flat_map(|name| ["--scenario", name]))
        .arg("--scenario-file")
        .arg(support::repo_root().join(format!("scenarios/files/{INCIDENT}.toml")))
        .arg("--scenario-file")
        .arg(support::repo_root().join(format!("scenarios/files/{REBUILD_FILE}.toml")))
        // Measured: 12-13 min warm on 2 cores under TCG; the rest is room for a slow runner.
        .timeout(Duration::from_secs(50 * 60))
        .output()
        .expect("labtest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary =
        std::fs::read_to_string(report.path().join("report/summary.txt")).unwrap_or_default();
    // Keep the evidence of a failed run where CI uploads it.
    if !out.status.success() {
        let keep = support::repo_root().join("target/labtest/e2e-failed");
        let _ = std::fs::create_dir_all(keep.parent().unwrap());
        let _ = std::fs::rename(report.path(), &keep);
    }
    assert!(
        out.status.success(),
        "labtest run failed ({}):\n{stdout}\nstderr:\n{}\nsummary:\n{summary}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = std::fs::read_to_string(&junit).expect("the JUnit file");
    for scenario in builtins().chain([INCIDENT, REBUILD_FILE_NAME]) {
        assert!(
            xml.contains(&format!("name=\"{scenario}\"")),
            "JUnit has no testcase {scenario}:\n{xml}"
        );
    }
    assert!(!xml.contains("<failure"), "JUnit reports a failure:\n{xml}");
    // Whether the first scenario restored depends on the cache; every later one must have.
    let restored = xml
        .matches("name=\"restored-from-snapshot\" value=\"ready\"")
        .count();
    // The built-ins and the two files, less the first scenario.
    let later_scenarios = builtins().count() + 1;
    assert!(
        restored >= later_scenarios,
        "expected every scenario after the first on a lab restored from the Ready snapshot, saw {restored}:\n{xml}"
    );
    // Each scenario ran on a lab of its own (booted, or restored from the Ready snapshot).
    for machine in ["grey-area", "congenital-optimist", "limiting-factor"] {
        let console = report
            .path()
            .join("labs/pod-scheduling/machines")
            .join(machine)
            .join("console.log");
        assert!(
            console.exists(),
            "no console log for {machine} in the artifacts"
        );
    }
}

/// After a restore the guests' clocks resume from the moment of the save (they lag the host by
/// the snapshot's age, all by the same amount): the node controller must see every lease as
/// fresh, so for two minutes every node stays Ready and untainted - no eviction storm. Runs on
/// the Ready snapshot the run above leaves (or makes one first), through `labtest up`; then the
/// same lab takes a `labtest rebuild` and a `labtest rollback`.
#[test]
fn a_restored_lab_stays_ready_untainted_and_takes_a_rebuild_and_a_rollback() {
    let lab = support::repo_root().join("fixtures/lab");
    let labtest = |args: &[&str]| {
        let mut cmd = Command::cargo_bin("labtest").expect("the labtest binary");
        cmd.env("LABTEST_ACCEL", "tcg")
            .arg("--lab")
            .arg(&lab)
            .args(args)
            .timeout(Duration::from_secs(30 * 60));
        cmd
    };
    let up = labtest(&["up"]).output().expect("labtest up");
    assert!(
        up.status.success(),
        "labtest up failed:\n{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    let verdict = loop {
        let out = labtest(&["kubectl", "--", "get", "nodes", "-o", "json"])
            .timeout(Duration::from_secs(60))
            .output()
            .expect("labtest kubectl");
        let nodes: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let items = nodes["items"].as_array().cloned().unwrap_or_default();
        let bad: Vec<String> = items
            .iter()
            .filter_map(|n| {
                let name = n["metadata"]["name"].as_str().unwrap_or("?");
                let ready = n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let taints = n["spec"]["taints"].as_array().map_or(0, |t| t.len());
                (!ready || taints > 0)
                    .then(|| format!("{name}: ready={ready} taints={}", n["spec"]["taints"]))
            })
            .collect();
        seen.push(format!(
            "{:>5.1}s: {} nodes, {bad:?}",
            started.elapsed().as_secs_f64(),
            items.len()
        ));
        if items.len() != 3 || !bad.is_empty() {
            break Err(seen.join("\n"));
        }
        if started.elapsed() > Duration::from_secs(120) {
            break Ok(());
        }
        std::thread::sleep(Duration::from_secs(10));
    };
    if let Err(history) = verdict {
        let _ = labtest(&["down"]).output();
        panic!("a node left Ready or was tainted after the restore:\n{history}");
    }

    // "Try my change before it touches the real machine": rebuild to a generation, see it in
    // the cluster, roll back, see it gone - on the restored lab, from the CLI.
    let label_of = || -> String {
        let out = labtest(&[
            "kubectl",
            "--",
            "get",
            "node",
            "limiting-factor",
            "-o",
            "jsonpath={.metadata.labels.labtest\\.io/generation}",
        ])
        .timeout(Duration::from_secs(60))
        .output()
        .expect("labtest kubectl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let wait_label = |want: &str| {
        let start = std::time::Instant::now();
        loop {
            let seen = label_of();
            if seen == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(240),
                "limiting-factor's labtest.io/generation label: expected {want:?}, saw {seen:?}"
            );
            std::thread::sleep(Duration::from_secs(5));
        }
    };
    let rebuilt = labtest(&["rebuild", "limiting-factor", "--generation", "node-label"])
        .output()
        .expect("labtest rebuild");
    let said = String::from_utf8_lossy(&rebuilt.stdout).into_owned();
    assert!(
        rebuilt.status.success() && said.contains("failed units: none"),
        "labtest rebuild: {said}{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    wait_label("node-label");
    let rolled = labtest(&["rollback", "limiting-factor"])
        .output()
        .expect("labtest rollback");
    assert!(
        rolled.status.success(),
        "labtest rollback: {}{}",
        String::from_utf8_lossy(&rolled.stdout),
        String::from_utf8_lossy(&rolled.stderr)
    );
    wait_label("");
    let _ = labtest(&["down"]).output();
}
