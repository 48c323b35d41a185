//! Tier 4: a lab restored from the fixture lab's Ready snapshot, kept up with `labtest up` and
//! driven from the CLI as a user does between incidents: it stays Ready for two minutes and takes
//! a rebuild and a rollback. (Each scenario is a test of its own in tests/scenarios.rs.)
mod support;

use std::time::Duration;

use assert_cmd::Command;

/// `labtest --lab fixtures/lab ARGS`, under TCG, bounded.
fn labtest(args: &[&str]) -> Command {
    let mut cmd = Command::cargo_bin("labtest").expect("the labtest binary");
    cmd.env("LABTEST_ACCEL", "tcg")
        .arg("--lab")
        .arg(support::repo_root().join("fixtures/lab"))
        .args(args)
        .timeout(Duration::from_secs(30 * 60));
    cmd
}

/// One field of a node, through `labtest kubectl` and a JSONPath; empty when it cannot be read.
fn node_field(node: &str, jsonpath: &str) -> String {
    let out = labtest(&["kubectl", "--", "get", "node", node, "-o", jsonpath])
        .timeout(Duration::from_secs(60))
        .output()
        .expect("labtest kubectl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// After a restore the guests' clocks resume from the moment of the save (they lag the host by
/// the snapshot's age, all by the same amount): the node controller must see every lease as
/// fresh, so for two minutes every node stays Ready and untainted - no eviction storm. Runs on
/// the Ready snapshot the suite's first lab test leaves (or makes one first), through `labtest up`; then the
/// same lab runs a scenario file with `labtest run --attach` and takes a `labtest rebuild` and
/// a `labtest rollback`.
#[test]
fn a_restored_lab_stays_ready_untainted_and_takes_a_rebuild_and_a_rollback() {
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

    // `run --attach`: a scenario on the lab that is up - no boot, no restore, seconds.
    let scratch = tempfile::tempdir().expect("temp dir");
    let file = scratch.path().join("attached.toml");
    std::fs::write(
        &file,
        "name = \"attached\"\n[[step]]\nwait = \"node-ready\"\nnode = \"limiting-factor\"\ntimeout = \"1m\"\n\
         [[step]]\nexpect = \"command-output\"\nmachine = \"limiting-factor\"\ncommand = \"hostname\"\ncontains = \"limiting-factor\"\n",
    )
    .expect("writing the scenario file");
    let junit = scratch.path().join("junit.xml");
    let report = scratch.path().join("report");
    let path = |p: &std::path::Path| p.to_str().expect("a UTF-8 temp path").to_string();
    let attached = labtest(&[
        "run",
        "--attach",
        "--scenario-file",
        &path(&file),
        "--report-dir",
        &path(&report),
        "--junit",
        &path(&junit),
    ])
    .timeout(Duration::from_secs(300))
    .output()
    .expect("labtest run --attach");
    let said = String::from_utf8_lossy(&attached.stdout).into_owned();
    let xml = std::fs::read_to_string(&junit).unwrap_or_default();
    let attached_ok = attached.status.success()
        && said.contains("PASSED")
        && !said.contains("== boot ==")
        && xml.contains("name=\"attached\"");
    if !attached_ok {
        let _ = labtest(&["down"]).output();
        panic!(
            "labtest run --attach: expected a passed run of `attached` with no boot:\n{said}{}\nJUnit:\n{xml}",
            String::from_utf8_lossy(&attached.stderr)
        );
    }

    // "Try my change before it touches the real machine": rebuild to a generation, see it in
    // the cluster, roll back, see it gone - on the restored lab, from the CLI.
    let label_of = || {
        node_field(
            "limiting-factor",
            "jsonpath={.metadata.labels.labtest\\.io/generation}",
        )
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

/// Step back into a failure: a scenario file fails while a worker is partitioned from the
/// master; the run saves the lab at that moment and prints the command that brings it back;
/// `labtest up --from` restores it with the worker still NotReady and the partition still
/// holding, and `heal` then brings the worker back.
#[test]
fn a_failed_scenario_is_kept_and_comes_back_as_it_failed() {
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let scratch = tempfile::tempdir().expect("temp dir");
    let file = scratch.path().join("fails-partitioned.toml");
    std::fs::write(
        &file,
        "name = \"fails-partitioned\"\n\
         [[step]]\nfault = \"partition\"\nmachines = [\"grey-area\", \"limiting-factor\"]\n\
         [[step]]\nwait = \"node-not-ready\"\nnode = \"limiting-factor\"\ntimeout = \"3m\"\n\
         [[step]]\nexpect = \"command-output\"\nmachine = \"limiting-factor\"\ncommand = \"hostname\"\ncontains = \"a-name-it-does-not-have\"\n",
    )
    .expect("writing the scenario file");
    let path = |p: &std::path::Path| p.to_str().expect("a UTF-8 temp path").to_string();
    let junit = scratch.path().join("junit.xml");
    let run = labtest(&[
        "run",
        "--scenario-file",
        &path(&file),
        "--report-dir",
        &path(&scratch.path().join("report")),
        "--junit",
        &path(&junit),
    ])
    .output()
    .expect("labtest run");
    let said = text(&run);
    assert_eq!(run.status.code(), Some(1), "the file must fail:\n{said}");
    let name = said
        .split_whitespace()
        .skip_while(|w| *w != "--from")
        .nth(1)
        .unwrap_or_else(|| panic!("no `up --from NAME` in the summary:\n{said}"))
        .to_string();
    assert!(
        name.starts_with("failed-fails-partitioned-") && said.contains("step back into it"),
        "{said}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap_or_default();
    assert!(
        xml.contains(&format!("up --from {name}")),
        "the JUnit failure names the command too:\n{xml}"
    );

    let restore_started = std::time::Instant::now();
    let up = labtest(&["up", "--from", &name])
        .output()
        .expect("labtest up");
    let restored_in = restore_started.elapsed();
    // The lab goes down and its snapshot out of the store whichever way the test ends.
    let down = || {
        let _ = labtest(&["down"]).output();
        let _ = labtest(&["snapshot", "rm", &name]).output();
    };
    if !up.status.success() {
        down();
        panic!("labtest up --from {name}:\n{}", text(&up));
    }
    println!(
        "up --from {name}: {:.1}s to a lab that answers",
        restored_in.as_secs_f64()
    );
    let ready_of = || {
        node_field(
            "limiting-factor",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        )
    };
    // Still failed, and it stays so: the partition came back with the lab.
    for _ in 0..3 {
        let status = text(&labtest(&["status"]).output().expect("labtest status"));
        let ready = ready_of();
        if ready == "True" || !status.contains("grey-area<->limiting-factor") {
            down();
            panic!("restored failure: expected limiting-factor NotReady behind its partition, saw Ready={ready:?}\n{status}");
        }
        std::thread::sleep(Duration::from_secs(10));
    }
    let healed = labtest(&["heal", "grey-area", "limiting-factor"])
        .output()
        .expect("labtest heal");
    if !healed.status.success() {
        down();
        panic!("labtest heal: {}", text(&healed));
    }
    let started = std::time::Instant::now();
    loop {
        let ready = ready_of();
        if ready == "True" {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            down();
            panic!("after heal, limiting-factor: expected Ready within 180s, last saw {ready:?}");
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    down();
}
