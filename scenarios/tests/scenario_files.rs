//! Scenario files (tier 1, no lab needed): every shipped example loads and names only machines
//! and generations the labs have; every class of mistake is reported with the right line and
//! field. Tests run with the crate directory as working directory, so `files/...` paths work.
use std::path::{Path, PathBuf};
use std::time::Duration;

use scenarios::file::{
    Action, Expectation, Fault, FileError, Label, ManifestSource, PodSelector, ScenarioFile,
    TaintEffect, WaitFor, WaitStep,
};

const MACHINES: [&str; 3] = ["grey-area", "congenital-optimist", "limiting-factor"];
const GENERATIONS: [&str; 2] = ["node-label", "broken-kubelet"];
const SHIPPED: [&str; 4] = [
    "pod-scheduling.toml",
    "node-failure.toml",
    "rebuild-rollback.toml",
    "worker-partitioned-during-rollout.toml",
];

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn shipped_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("files")
        .expect("scenarios/files exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_example_loads_and_validates_against_the_fixture_lab_names() {
    let files = shipped_files();
    for name in SHIPPED {
        assert!(
            files.iter().any(|f| f.ends_with(name)),
            "files/{name} is missing; found {files:?}"
        );
    }
    for file in &files {
        let scenario = ScenarioFile::load(file).unwrap_or_else(|e| panic!("{e}"));
        scenario
            .validate_against(&names(&MACHINES), &names(&GENERATIONS))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!scenario.steps.is_empty());
        for (i, step) in scenario.steps.iter().enumerate() {
            assert_eq!(step.number, i + 1);
            // Display is what progress lines show: it must say something for every step.
            assert!(!step.action.to_string().is_empty());
        }
    }
}

#[test]
fn shipped_examples_validate_against_the_repository_lab_spec() {
    // The repository's lab.toml is the one the nightly NixOS run uses: its names must match.
    let spec = harness::lab::LabSpec::load(Path::new("..")).unwrap_or_else(|e| panic!("{e}"));
    let generations: Vec<String> = spec.generations.iter().map(|g| g.name.clone()).collect();
    for file in shipped_files() {
        let scenario = ScenarioFile::load(&file).unwrap_or_else(|e| panic!("{e}"));
        scenario
            .validate_against(&spec.machine_names(), &generations)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn shipped_manifests_use_the_local_workload_image_and_never_pull() {
    // The guests have no route to a registry: a pull would hang the scenario until its timeout.
    let mut checked = 0;
    for entry in std::fs::read_dir("files/manifests").expect("files/manifests exists") {
        let path = entry.expect("readable dir entry").path();
        let text = std::fs::read_to_string(&path).expect("readable manifest");
        // Comments may mention the rule; only YAML lines count.
        let text: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let images = text.matches("image:").count();
        assert!(images > 0, "{} runs no container", path.display());
        assert_eq!(
            text.matches("image: labtest/workload:1").count(),
            images,
            "{}: every image must be labtest/workload:1",
            path.display()
        );
        assert_eq!(
            text.matches("imagePullPolicy: Never").count(),
            images,
            "{}: every container needs imagePullPolicy: Never",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} manifests");
}

#[test]
fn node_failure_parses_to_the_model_the_executor_gets() {
    let file = ScenarioFile::load(Path::new("files/node-failure.toml")).unwrap();
    assert_eq!(file.name, "node-failure-file");
    let actions: Vec<&Action> = file.steps.iter().map(|s| &s.action).collect();
    match actions[0] {
        Action::Apply(apply) => match &apply.source {
            ManifestSource::File { path, written } => {
                assert_eq!(written, "manifests/web.yaml");
                assert_eq!(path, Path::new("files/manifests/web.yaml"));
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert_eq!(
        actions[2],
        &Action::Fault(Fault::Crash {
            machine: "limiting-factor".into()
        })
    );
    match actions[4] {
        Action::Wait(wait) => {
            match &wait.condition {
                WaitFor::NodeTainted { node, taint } => {
                    assert_eq!(node, "limiting-factor");
                    assert_eq!(taint.key, "node.kubernetes.io/unreachable");
                    assert_eq!(taint.effect, Some(TaintEffect::NoExecute));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(wait.timeout, Duration::from_secs(30));
            assert_eq!(
                wait.interval,
                Duration::from_secs(1),
                "the default for taints"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        actions[6],
        &Action::Expect(Expectation::PodsOnSurvivingNodes {
            namespace: "default".into(),
            deployment: "web".into(),
            failed_nodes: vec!["limiting-factor".into()],
        })
    );
    assert_eq!(
        actions[7],
        &Action::Fault(Fault::Start {
            machine: "limiting-factor".into(),
            timeout: Duration::from_secs(180)
        })
    );
    // Lines point into the file as written.
    assert_eq!(file.steps[2].line, 16);
    assert_eq!(file.steps[2].line_of("machine"), 18);
}

#[test]
fn inline_manifests_and_pod_selectors() {
    let file = parse(
        r#"name = "x"
[[step]]
manifest = """
kind: Pod
"""
namespace = "lab"
[[step]]
wait = "pod-running"
selector = "app=web"
count = 2
node = "grey-area"
timeout = "1m"
"#,
    )
    .unwrap();
    match &file.steps[0].action {
        Action::Apply(apply) => {
            assert_eq!(apply.source, ManifestSource::Inline("kind: Pod\n".into()));
            assert_eq!(apply.namespace.as_deref(), Some("lab"));
        }
        other => panic!("{other:?}"),
    }
    match &file.steps[1].action {
        Action::Wait(wait) => assert_eq!(
            wait.condition,
            WaitFor::PodRunning {
                namespace: "default".into(),
                pods: PodSelector::Labels("app=web".into()),
                node: Some("grey-area".into()),
                count: 2
            }
        ),
        other => panic!("{other:?}"),
    }
}

/// Parses as if the text were `files/inline.toml`, so relative manifests resolve like the
/// shipped examples' do.
fn parse(text: &str) -> Result<ScenarioFile, FileError> {
    ScenarioFile::parse(text, Path::new("files/inline.toml"))
}

/// (what, file text, line, field, a part of the message saying what was expected or seen)
const BAD: &[(&str, &str, usize, &str, &str)] = &[
    (
        "TOML syntax",
        "name = \"x\"\n[[step]]\nsleep = \"1s\nmachine = 3\n",
        3,
        "sleep",
        "invalid basic string",
    ),
    (
        "unknown top-level key",
        "name = \"x\"\ndescripton = \"y\"\n[[step]]\nsleep = \"1s\"\n",
        2,
        "descripton",
        "unknown field `descripton`",
    ),
    (
        "a single [step] table",
        "name = \"x\"\n[step]\nsleep = \"1s\"\n",
        2,
        "step",
        "expected a sequence",
    ),
    (
        "missing name",
        "[[step]]\nsleep = \"1s\"\n",
        1,
        "name",
        "missing",
    ),
    (
        "name of the wrong type",
        "name = 5\n[[step]]\nsleep = \"1s\"\n",
        1,
        "name",
        "expected a string, saw integer 5",
    ),
    (
        "name that cannot be a testcase name",
        "name = \"Node Failure\"\n[[step]]\nsleep = \"1s\"\n",
        1,
        "name",
        "saw \"Node Failure\"",
    ),
    (
        "no steps",
        "name = \"x\"\ndescription = \"y\"\n",
        2,
        "step",
        "no [[step]]",
    ),
    (
        "a step without a kind",
        "name = \"x\"\n\n[[step]]\nmachine = \"grey-area\"\n",
        3,
        "step[1]",
        "needs exactly one of apply, manifest, fault",
    ),
    (
        "a misspelt kind key",
        "name = \"x\"\n[[step]]\nfualt = \"crash\"\nmachine = \"grey-area\"\n",
        3,
        "step[1]",
        "did you mean `fault`?",
    ),
    (
        "a step with two kinds",
        "name = \"x\"\n[[step]]\nsleep = \"1s\"\n[[step]]\nfault = \"crash\"\nmachine = \"grey-area\"\nwait = \"node-ready\"\n",
        7,
        "step[2]",
        "saw `fault` (line 5) and `wait` (line 7)",
    ),
    (
        "an unknown fault",
        "name = \"x\"\n[[step]]\nfault = \"crsh\"\nmachine = \"grey-area\"\n",
        3,
        "step[1].fault",
        "saw \"crsh\" (did you mean `crash`?)",
    ),
    (
        "an unknown wait",
        "name = \"x\"\n[[step]]\nwait = \"node-up\"\nnode = \"grey-area\"\ntimeout = \"1m\"\n",
        3,
        "step[1].wait",
        "expected one of node-ready | node-not-ready",
    ),
    (
        "an unknown expectation",
        "name = \"x\"\n[[step]]\nexpect = \"pods-everywhere\"\n",
        3,
        "step[1].expect",
        "saw \"pods-everywhere\"",
    ),
    (
        "a misspelt field",
        "name = \"x\"\n[[step]]\nwait = \"node-ready\"\nnode = \"grey-area\"\ntimout = \"1m\"\n",
        5,
        "step[1].timout",
        "it takes: node, timeout, interval (and note) (did you mean `timeout`?)",
    ),
    (
        "a field of another kind",
        "name = \"x\"\n[[step]]\nfault = \"crash\"\nmachine = \"grey-area\"\nunit = \"kubelet.service\"\n",
        5,
        "step[1].unit",
        "`unit` does not apply to a `fault = \"crash\"` step; it takes: machine",
    ),
    (
        "a field a sleep does not take",
        "name = \"x\"\n[[step]]\nsleep = \"1s\"\ntimeout = \"2s\"\n",
        4,
        "step[1].timeout",
        "it takes: no other keys",
    ),
    (
        "a missing required field",
        "name = \"x\"\n[[step]]\nfault = \"stop-unit\"\nmachine = \"grey-area\"\n",
        3,
        "step[1].unit",
        "a `fault = \"stop-unit\"` step needs `unit`",
    ),
    (
        "a wait without a timeout",
        "name = \"x\"\n[[step]]\nsleep = \"1s\"\n\n[[step]]\nwait = \"node-ready\"\nnode = \"grey-area\"\n",
        6,
        "step[2].timeout",
        "every wait needs a deadline",
    ),
    (
        "a timeout that is a number",
        "name = \"x\"\n[[step]]\nwait = \"node-ready\"\nnode = \"grey-area\"\ntimeout = 90\n",
        5,
        "step[1].timeout",
        "expected a duration such as \"90s\", \"3m\" or \"1m30s\" (units ms, s, m, h), saw integer 90",
    ),
    (
        "a timeout without units",
        "name = \"x\"\n[[step]]\nwait = \"node-ready\"\nnode = \"grey-area\"\ntimeout = \"3 minutes\"\n",
        5,
        "step[1].timeout",
        "saw \"3 minutes\"",
    ),
    (
        "a zero timeout",
        "name = \"x\"\n[[step]]\nwait = \"node-ready\"\nnode = \"grey-area\"\ntimeout = \"0s\"\n",
        5,
        "step[1].timeout",
        "above zero",
    ),
    (
        "an interval not shorter than the timeout",
        "name = \"x\"\n[[step]]\nwait = \"node-ready\"\nnode = \"grey-area\"\ntimeout = \"10s\"\ninterval = \"10s\"\n",
        6,
        "step[1].interval",
        "shorter than the timeout (10s), saw 10s",
    ),
    (
        "a bad sleep",
        "name = \"x\"\n[[step]]\nsleep = \"soon\"\n",
        3,
        "step[1].sleep",
        "saw \"soon\"",
    ),
    (
        "a machine that is a list",
        "name = \"x\"\n[[step]]\nfault = \"crash\"\nmachine = [\"grey-area\"]\n",
        4,
        "step[1].machine",
        "expected a string, saw array",
    ),
    (
        "an empty machine",
        "name = \"x\"\n[[step]]\nfault = \"crash\"\nmachine = \"\"\n",
        4,
        "step[1].machine",
        "expected a non-empty string",
    ),
    (
        "a partition of one machine",
        "name = \"x\"\n[[step]]\nfault = \"partition\"\nmachines = [\"grey-area\"]\n",
        4,
        "step[1].machines",
        "expected exactly two machines",
    ),
    (
        "a partition of a machine with itself",
        "name = \"x\"\n[[step]]\nfault = \"partition\"\nmachines = [\"grey-area\", \"grey-area\"]\n",
        4,
        "step[1].machines",
        "saw \"grey-area\" twice",
    ),
    (
        "a partition given `machine`",
        "name = \"x\"\n[[step]]\nfault = \"partition\"\nmachine = \"grey-area\"\n",
        4,
        "step[1].machine",
        "it takes: machines",
    ),
    (
        "a manifest file that does not exist",
        "name = \"x\"\n[[step]]\napply = \"manifests/nope.yaml\"\n",
        3,
        "step[1].apply",
        "saw \"manifests/nope.yaml\"",
    ),
    (
        "a negative count",
        "name = \"x\"\n[[step]]\nwait = \"pod-running\"\npod = \"p\"\ncount = -1\ntimeout = \"1m\"\n",
        5,
        "step[1].count",
        "expected an integer >= 1, saw -1",
    ),
    (
        "a count that is a string",
        "name = \"x\"\n[[step]]\nexpect = \"replicas-available\"\ndeployment = \"web\"\ncount = \"3\"\n",
        5,
        "step[1].count",
        "saw string \"3\"",
    ),
    (
        "an unknown taint effect",
        "name = \"x\"\n[[step]]\nwait = \"node-tainted\"\nnode = \"grey-area\"\nkey = \"k\"\neffect = \"NoExec\"\ntimeout = \"1m\"\n",
        6,
        "step[1].effect",
        "NoSchedule | PreferNoSchedule | NoExecute, saw \"NoExec\"",
    ),
    (
        "both pod and selector",
        "name = \"x\"\n[[step]]\nwait = \"pod-pending\"\npod = \"p\"\nselector = \"app=p\"\ntimeout = \"1m\"\n",
        5,
        "step[1].selector",
        "saw both",
    ),
    (
        "a label with spaces",
        "name = \"x\"\n[[step]]\nexpect = \"node-has-label\"\nnode = \"grey-area\"\nlabel = \"my label=1\"\n",
        5,
        "step[1].label",
        "saw \"my label=1\"",
    ),
    (
        "no failed nodes",
        "name = \"x\"\n[[step]]\nexpect = \"pods-on-surviving-nodes\"\ndeployment = \"web\"\nfailed_nodes = []\n",
        5,
        "step[1].failed_nodes",
        "at least one node",
    ),
    (
        "a note that is not text",
        "name = \"x\"\n[[step]]\nsleep = \"1s\"\nnote = true\n",
        4,
        "step[1].note",
        "saw boolean true",
    ),
];

#[test]
fn every_class_of_mistake_names_the_line_and_the_field() {
    let mut failures = Vec::new();
    for (what, text, line, field, says) in BAD {
        match parse(text) {
            Ok(file) => failures.push(format!("{what}: accepted: {file:?}")),
            Err(err) => {
                let message = err.to_string();
                if err.line() != Some(*line)
                    || err.field() != Some(*field)
                    || !message.contains(says)
                {
                    failures.push(format!(
                        "{what}: want line {line}, field {field}, {says:?}; got {:?} {:?}: {message}",
                        err.line(),
                        err.field()
                    ));
                }
                assert!(
                    message.starts_with(&format!("files/inline.toml:{line}: {field}: ")),
                    "{what}: the message must start with file:line: field: - {message}"
                );
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_message_format_is_stable() {
    let err =
        parse("name = \"x\"\n[[step]]\nwait = \"node-ready\"\nnode = \"grey-area\"\n").unwrap_err();
    insta::assert_snapshot!(err.to_string(), @r#"files/inline.toml:3: step[1].timeout: missing: a `wait = "node-ready"` step needs `timeout` (e.g. timeout = "3m"; every wait needs a deadline)"#);
}

/// (what, file text, line, field, message part) for names the lab does not have.
const UNKNOWN_NAMES: &[(&str, &str, usize, &str, &str)] = &[
    (
        "a fault on a machine that does not exist",
        "name = \"x\"\n[[step]]\nsleep = \"1s\"\n[[step]]\nfault = \"crash\"\nmachine = \"limitng-factor\"\n",
        6,
        "step[2].machine",
        "the lab has no machine named \"limitng-factor\" (it has: grey-area, congenital-optimist, limiting-factor)",
    ),
    (
        "the second machine of a partition",
        "name = \"x\"\n[[step]]\nfault = \"partition\"\nmachines = [\"grey-area\", \"node-3\"]\n",
        4,
        "step[1].machines",
        "no machine named \"node-3\"",
    ),
    (
        "a wait on a node that does not exist",
        "name = \"x\"\n[[step]]\nwait = \"node-ready\"\ntimeout = \"1m\"\nnode = \"gray-area\"\n",
        5,
        "step[1].node",
        "no machine named \"gray-area\"",
    ),
    (
        "a generation that does not exist",
        "name = \"x\"\n[[step]]\nrebuild = \"node-labels\"\n",
        3,
        "step[1].rebuild",
        "the lab has no generation named \"node-labels\" (it has: node-label, broken-kubelet)",
    ),
    (
        "a rollback of a machine that does not exist",
        "name = \"x\"\n[[step]]\nrollback = \"master\"\n",
        3,
        "step[1].rollback",
        "no machine named \"master\"",
    ),
    (
        "a failed node that does not exist",
        "name = \"x\"\n[[step]]\nexpect = \"pods-on-surviving-nodes\"\ndeployment = \"web\"\nfailed_nodes = [\"worker\"]\n",
        5,
        "step[1].failed_nodes",
        "no machine named \"worker\"",
    ),
    (
        "a command on a machine that does not exist",
        "name = \"x\"\n[[step]]\nexpect = \"command-output\"\nmachine = \"m\"\ncommand = \"true\"\ncontains = \"x\"\n",
        4,
        "step[1].machine",
        "no machine named \"m\"",
    ),
];

#[test]
fn unknown_machines_and_generations_are_named_with_their_line() {
    let mut failures = Vec::new();
    for (what, text, line, field, says) in UNKNOWN_NAMES {
        let file = parse(text).unwrap_or_else(|e| panic!("{what}: {e}"));
        match file.validate_against(&names(&MACHINES), &names(&GENERATIONS)) {
            Ok(()) => failures.push(format!("{what}: accepted")),
            Err(err) => {
                let message = err.to_string();
                if err.line() != Some(*line)
                    || err.field() != Some(*field)
                    || !message.contains(says)
                {
                    failures.push(format!(
                        "{what}: want line {line}, field {field}, {says:?}; got {:?} {:?}: {message}",
                        err.line(),
                        err.field()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_lab_without_generations_says_so() {
    let file = parse("name = \"x\"\n[[step]]\nrebuild = \"node-label\"\n").unwrap();
    let err = file.validate_against(&names(&MACHINES), &[]).unwrap_err();
    assert!(err.to_string().ends_with("(it has: none)"), "{err}");
}

#[test]
fn a_missing_file_names_the_file() {
    let err = ScenarioFile::load(Path::new("files/no-such-scenario.toml")).unwrap_err();
    assert!(matches!(err, FileError::Read { .. }), "{err:?}");
    assert!(
        err.to_string().contains("files/no-such-scenario.toml"),
        "{err}"
    );
}

#[test]
fn every_kind_parses_with_every_key_it_takes() {
    // One step per kind value, each with all its optional keys: the documented vocabulary and
    // the parser agree, and no accepted key is silently ignored.
    let text = r#"name = "all-kinds"
[[step]]
apply = "manifests/web.yaml"
namespace = "default"
note = "n"
[[step]]
manifest = "kind: Pod"
namespace = "default"
[[step]]
fault = "crash"
machine = "grey-area"
[[step]]
fault = "freeze"
machine = "grey-area"
[[step]]
fault = "thaw"
machine = "grey-area"
[[step]]
fault = "shutdown"
machine = "grey-area"
timeout = "1m"
[[step]]
fault = "start"
machine = "grey-area"
timeout = "3m"
[[step]]
fault = "reboot"
machine = "grey-area"
timeout = "3m"
[[step]]
fault = "link-down"
machine = "grey-area"
[[step]]
fault = "link-up"
machine = "grey-area"
[[step]]
fault = "partition"
machines = ["grey-area", "limiting-factor"]
[[step]]
fault = "heal"
machines = ["grey-area", "limiting-factor"]
[[step]]
fault = "isolate"
machine = "grey-area"
[[step]]
fault = "rejoin"
machine = "grey-area"
[[step]]
fault = "stop-unit"
machine = "grey-area"
unit = "kubelet.service"
[[step]]
fault = "start-unit"
machine = "grey-area"
unit = "kubelet.service"
[[step]]
wait = "node-ready"
node = "grey-area"
timeout = "1m"
[[step]]
wait = "node-not-ready"
node = "grey-area"
timeout = "1m"
[[step]]
wait = "node-tainted"
node = "grey-area"
key = "k"
effect = "NoSchedule"
timeout = "1m"
interval = "500ms"
[[step]]
wait = "node-untainted"
node = "grey-area"
key = "k"
effect = "PreferNoSchedule"
timeout = "1m"
[[step]]
wait = "node-has-label"
node = "grey-area"
label = "labtest.io/generation=node-label"
timeout = "2m"
interval = "5s"
[[step]]
wait = "node-lacks-label"
node = "grey-area"
label = "labtest.io/generation"
timeout = "2m"
[[step]]
wait = "deployment-available"
deployment = "web"
namespace = "default"
replicas = 2
timeout = "1m"
interval = "3s"
[[step]]
wait = "deployment-rolled-out"
deployment = "web"
namespace = "default"
timeout = "1m"
interval = "3s"
[[step]]
wait = "daemonset-ready"
daemonset = "probe"
namespace = "kube-system"
timeout = "1m"
[[step]]
wait = "pod-running"
pod = "p"
namespace = "default"
node = "grey-area"
count = 1
timeout = "1m"
[[step]]
wait = "pod-pending"
selector = "app=p"
namespace = "default"
count = 2
timeout = "1m"
[[step]]
wait = "unit-active"
machine = "grey-area"
unit = "kubelet.service"
timeout = "1m"
[[step]]
wait = "unit-failed"
machine = "grey-area"
unit = "kubelet.service"
timeout = "1m"
[[step]]
wait = "command-succeeds"
machine = "grey-area"
command = "true"
timeout = "1m"
interval = "5s"
[[step]]
rebuild = "node-label"
timeout = "20m"
[[step]]
rollback = "limiting-factor"
timeout = "5m"
[[step]]
expect = "pods-on-surviving-nodes"
deployment = "web"
namespace = "default"
failed_nodes = ["limiting-factor", "congenital-optimist"]
[[step]]
expect = "replicas-available"
deployment = "web"
namespace = "default"
count = 0
[[step]]
expect = "node-has-label"
node = "grey-area"
label = "a=b"
[[step]]
expect = "node-lacks-label"
node = "grey-area"
label = "a"
[[step]]
expect = "command-output"
machine = "grey-area"
command = "hostname"
contains = "grey-area"
[[step]]
sleep = "1m30s"
"#;
    let file = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.steps.len(), 38);
    // Every row of the vocabulary is written above with every key it takes.
    let mut missing = Vec::new();
    for row in scenarios::vocabulary::VOCABULARY {
        let values: Vec<String> = if row.values.is_empty() {
            vec![format!("{} = ", row.kind)]
        } else {
            row.values
                .iter()
                .map(|v| format!("{} = \"{v}\"", row.kind))
                .collect()
        };
        for value in values {
            let step = text
                .split("[[step]]")
                .find(|step| step.trim_start().starts_with(&value))
                .unwrap_or_else(|| panic!("no step `{value}` in the all-kinds file"));
            for key in row.keys {
                // Every wait takes `interval`; the steps above leave it out where they pin
                // its default.
                if *key == "interval" {
                    continue;
                }
                // `pod` and `selector` are two ways to say which pods: one per step.
                let either = ["pod", "selector"];
                if either.contains(key)
                    && either
                        .iter()
                        .any(|k| step.lines().any(|l| l.starts_with(&format!("{k} ="))))
                {
                    continue;
                }
                if !step.lines().any(|l| l.starts_with(&format!("{key} ="))) {
                    missing.push(format!("step `{value}` lacks its key `{key}`"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    file.validate_against(&names(&MACHINES), &names(&GENERATIONS))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.steps[0].note.as_deref(), Some("n"));
    assert_eq!(
        file.steps[5].action,
        Action::Fault(Fault::Shutdown {
            machine: "grey-area".into(),
            timeout: Duration::from_secs(60)
        })
    );
    assert_eq!(
        file.steps[37].action,
        Action::Sleep(Duration::from_secs(90))
    );
    // Every kind value appears once, so Display covers every arm.
    let shown: Vec<String> = file.steps.iter().map(|s| s.action.to_string()).collect();
    assert!(
        shown
            .iter()
            .any(|s| s == "fault stop-unit kubelet.service on grey-area"),
        "{shown:?}"
    );
    assert!(shown.iter().any(|s| s == "sleep 1m30s"), "{shown:?}");
    // Each word of a vocabulary parses into its own variant, never into another one's: every
    // step shows the word it was written with.
    for (written, shown) in text.split("[[step]]").skip(1).zip(&shown) {
        let first = written.trim_start().lines().next().unwrap_or_default();
        let Some((kind, word)) = first.split_once(" = ") else {
            panic!("a step that does not start with its kind: {written}");
        };
        if ["fault", "wait", "expect"].contains(&kind) {
            let word = word.trim_matches('"');
            assert!(
                shown.starts_with(&format!("{kind} {word} ")),
                "`{first}` parsed as `{shown}`"
            );
        }
    }
    assert!(
        shown
            .iter()
            .any(|s| s
                == "wait node-has-label grey-area labtest.io/generation=node-label (deadline 2m)"),
        "{shown:?}"
    );
    assert_eq!(
        file.steps[21].action,
        Action::Wait(WaitStep {
            condition: WaitFor::NodeLacksLabel {
                node: "grey-area".into(),
                label: Label {
                    key: "labtest.io/generation".into(),
                    value: None
                }
            },
            timeout: Duration::from_secs(120),
            interval: Duration::from_secs(2),
        })
    );
    assert!(
        shown
            .iter()
            .any(|s| s == "wait deployment-rolled-out default/web (deadline 1m)"),
        "{shown:?}"
    );
}
