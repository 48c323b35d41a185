//! The scenario-file step vocabulary: an enum per vocabulary ([`StepKind`], [`FaultKind`],
//! [`WaitKind`], [`ExpectKind`]) for its words, and one table of every kind key, the values it
//! takes and the other keys each accepts. The parser reads its kinds, values and keys from here,
//! the README's table of steps is rendered from it ([`markdown_table`], a test keeps them
//! equal), and the tests write one step per row. A new word is a variant of its enum, which the
//! compiler then asks the parser and the runner to handle, and a row here (a test asks for it).

use harness::fault::FaultKind;

/// One row: a kind key with the values that share the same keys.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The kind key (`wait`, `fault`, `exec`...).
    pub kind: &'static str,
    /// The values of the kind key this row covers; empty when the value is free (a path, a
    /// generation, a duration), and then `example` shows the step's kind key with one.
    pub values: &'static [&'static str],
    /// A step of this row, as a scenario file writes it.
    pub example: &'static str,
    /// Keys the step accepts besides the kind key and `note`.
    pub keys: &'static [&'static str],
    /// The README's words on the keys.
    pub doc: &'static str,
}

harness::words! {
    /// The key that says what a step does.
    pub enum StepKind {
        Apply = "apply",
        Manifest = "manifest",
        Fault = "fault",
        Wait = "wait",
        Rebuild = "rebuild",
        Rollback = "rollback",
        Expect = "expect",
        Sleep = "sleep",
    }
}

harness::words! {
    /// What a `wait` step waits for.
    pub enum WaitKind {
        NodeReady = "node-ready",
        NodeNotReady = "node-not-ready",
        NodeHasLabel = "node-has-label",
        NodeLacksLabel = "node-lacks-label",
        NodeTainted = "node-tainted",
        NodeUntainted = "node-untainted",
        DeploymentAvailable = "deployment-available",
        DeploymentRolledOut = "deployment-rolled-out",
        DaemonSetReady = "daemonset-ready",
        PodRunning = "pod-running",
        PodPending = "pod-pending",
        UnitActive = "unit-active",
        UnitFailed = "unit-failed",
        CommandSucceeds = "command-succeeds",
    }
}

harness::words! {
    /// What an `expect` step checks.
    pub enum ExpectKind {
        PodsOnSurvivingNodes = "pods-on-surviving-nodes",
        ReplicasAvailable = "replicas-available",
        NodeHasLabel = "node-has-label",
        NodeLacksLabel = "node-lacks-label",
        CommandOutput = "command-output",
    }
}

const WAIT_KEYS: [&str; 2] = ["timeout", "interval"];

/// Every step a scenario file may write, row by row: what the parser accepts and the README's
/// table is rendered from.
pub const VOCABULARY: &[Row] = &[
    Row {
        kind: StepKind::Apply.name(),
        values: &[],
        example: "apply = \"manifests/x.yaml\"",
        keys: &["namespace"],
        doc: "path relative to this file, must exist; optional `namespace`",
    },
    Row {
        kind: StepKind::Manifest.name(),
        values: &[],
        example: "manifest = \"\"\"...\"\"\"",
        keys: &["namespace"],
        doc: "inline YAML; optional `namespace`",
    },
    Row {
        kind: StepKind::Fault.name(),
        values: &[
            FaultKind::Crash.name(),
            FaultKind::Freeze.name(),
            FaultKind::Thaw.name(),
            FaultKind::LinkDown.name(),
            FaultKind::LinkUp.name(),
            FaultKind::Isolate.name(),
            FaultKind::Rejoin.name(),
        ],
        example: "",
        keys: &["machine"],
        doc: "`machine`",
    },
    Row {
        kind: StepKind::Fault.name(),
        values: &[FaultKind::Shutdown.name(), FaultKind::Start.name(), FaultKind::Reboot.name()],
        example: "",
        keys: &["machine", "timeout"],
        doc: "`machine`, optional `timeout` (60s / 5m / 5m)",
    },
    Row {
        kind: StepKind::Fault.name(),
        values: &[FaultKind::Partition.name(), FaultKind::Heal.name()],
        example: "",
        keys: &["machines"],
        doc: "`machines = [\"a\", \"b\"]` (two different machines)",
    },
    Row {
        kind: StepKind::Fault.name(),
        values: &[FaultKind::StopUnit.name(), FaultKind::StartUnit.name()],
        example: "",
        keys: &["machine", "unit"],
        doc: "`machine`, `unit` (one unit name, e.g. `kubelet.service`)",
    },
    Row {
        kind: StepKind::Wait.name(),
        values: &[WaitKind::NodeReady.name(), WaitKind::NodeNotReady.name()],
        example: "",
        keys: &["node", WAIT_KEYS[0], WAIT_KEYS[1]],
        doc: "`node`",
    },
    Row {
        kind: StepKind::Wait.name(),
        values: &[WaitKind::NodeHasLabel.name(), WaitKind::NodeLacksLabel.name()],
        example: "",
        keys: &["node", "label", WAIT_KEYS[0], WAIT_KEYS[1]],
        doc: "`node`, `label = \"key=value\"` or `\"key\"` (after a `rebuild`: the switch returns before the new labels reach the Node, on NixOS as in the fixture, so wait for them rather than `expect` them)",
    },
    Row {
        kind: StepKind::Wait.name(),
        values: &[WaitKind::NodeTainted.name(), WaitKind::NodeUntainted.name()],
        example: "",
        keys: &["node", "key", "effect", WAIT_KEYS[0], WAIT_KEYS[1]],
        doc: "`node`, `key`, optional `effect` (NoSchedule, PreferNoSchedule, NoExecute; any if absent)",
    },
    Row {
        kind: StepKind::Wait.name(),
        values: &[WaitKind::DeploymentAvailable.name()],
        example: "",
        keys: &["deployment", "namespace", "replicas", WAIT_KEYS[0], WAIT_KEYS[1]],
        doc: "`deployment`, `namespace`, optional `replicas` (default: its spec.replicas)",
    },
    Row {
        kind: StepKind::Wait.name(),
        values: &[WaitKind::DeploymentRolledOut.name()],
        example: "",
        keys: &["deployment", "namespace", WAIT_KEYS[0], WAIT_KEYS[1]],
        doc: "`deployment`, `namespace` (every replica on the latest spec and available, no old pod left: `kubectl rollout status`)",
    },
    Row {
        kind: StepKind::Wait.name(),
        values: &[WaitKind::DaemonSetReady.name()],
        example: "",
        keys: &["daemonset", "namespace", WAIT_KEYS[0], WAIT_KEYS[1]],
        doc: "`daemonset`, `namespace`",
    },
    Row {
        kind: StepKind::Wait.name(),
        values: &[WaitKind::PodRunning.name()],
        example: "",
        keys: &[
            "pod",
            "selector",
            "namespace",
            "node",
            "count",
            WAIT_KEYS[0],
            WAIT_KEYS[1],
        ],
        doc: "`pod` or `selector`, `namespace`, optional `node`, optional `count` (default 1)",
    },
    Row {
        kind: StepKind::Wait.name(),
        values: &[WaitKind::PodPending.name()],
        example: "",
        keys: &["pod", "selector", "namespace", "count", WAIT_KEYS[0], WAIT_KEYS[1]],
        doc: "`pod` or `selector`, `namespace`, optional `count` (default 1)",
    },
    Row {
        kind: StepKind::Wait.name(),
        values: &[WaitKind::UnitActive.name(), WaitKind::UnitFailed.name()],
        example: "",
        keys: &["machine", "unit", WAIT_KEYS[0], WAIT_KEYS[1]],
        doc: "`machine`, `unit`",
    },
    Row {
        kind: StepKind::Wait.name(),
        values: &[WaitKind::CommandSucceeds.name()],
        example: "",
        keys: &["machine", "command", WAIT_KEYS[0], WAIT_KEYS[1]],
        doc: "`machine`, `command` (shell, in the guest)",
    },
    Row {
        kind: StepKind::Rebuild.name(),
        values: &[],
        example: "rebuild = \"generation\"",
        keys: &["timeout"],
        doc: "a `[[generation]]` name of the lab spec; optional `timeout` (10m)",
    },
    Row {
        kind: StepKind::Rollback.name(),
        values: &[],
        example: "rollback = \"machine\"",
        keys: &["timeout"],
        doc: "back to the generation the machine ran before this file's last `rebuild` of it (by number: `nix-env --rollback`'s next-lower generation is another one once a run has switched back and forth); optional `timeout` (5m). When the file ends, passed or not, every machine it rebuilt goes back to the generation it started on",
    },
    Row {
        kind: StepKind::Expect.name(),
        values: &[ExpectKind::PodsOnSurvivingNodes.name()],
        example: "",
        keys: &["deployment", "namespace", "failed_nodes"],
        doc: "`deployment`, `namespace`, `failed_nodes = [\"...\"]`",
    },
    Row {
        kind: StepKind::Expect.name(),
        values: &[ExpectKind::ReplicasAvailable.name()],
        example: "",
        keys: &["deployment", "namespace", "count"],
        doc: "`deployment`, `namespace`, `count` (exactly that many available)",
    },
    Row {
        kind: StepKind::Expect.name(),
        values: &[ExpectKind::NodeHasLabel.name(), ExpectKind::NodeLacksLabel.name()],
        example: "",
        keys: &["node", "label"],
        doc: "`node`, `label = \"key=value\"` or `\"key\"`",
    },
    Row {
        kind: StepKind::Expect.name(),
        values: &[ExpectKind::CommandOutput.name()],
        example: "",
        keys: &["machine", "command", "contains"],
        doc: "`machine`, `command`, `contains` (exit 0 and stdout contains it)",
    },
    Row {
        kind: StepKind::Sleep.name(),
        values: &[],
        example: "sleep = \"10s\"",
        keys: &[],
        doc: "nothing else",
    },
];

/// The kind keys, in the table's order.
pub fn kinds() -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = Vec::new();
    for row in VOCABULARY {
        if !kinds.contains(&row.kind) {
            kinds.push(row.kind);
        }
    }
    kinds
}

/// The values `kind` takes; empty when its value is free.
pub fn values(kind: &str) -> Vec<&'static str> {
    VOCABULARY
        .iter()
        .filter(|row| row.kind == kind)
        .flat_map(|row| row.values.iter().copied())
        .collect()
}

/// The keys a step of `kind = "value"` takes besides the kind key and `note`.
pub fn keys(kind: &str, value: &str) -> &'static [&'static str] {
    VOCABULARY
        .iter()
        .find(|row| row.kind == kind && (row.values.is_empty() || row.values.contains(&value)))
        .map_or(&[], |row| row.keys)
}

/// The README's table of steps.
pub fn markdown_table() -> String {
    let mut out = String::from("| kind | keys |\n|---|---|\n");
    for row in VOCABULARY {
        let kind = match row.values.split_first() {
            None => format!("`{}`", row.example),
            Some((first, rest)) => {
                let mut shown = vec![format!("`{} = \"{first}\"`", row.kind)];
                shown.extend(rest.iter().map(|v| format!("`\"{v}\"`")));
                shown.join(", ")
            }
        };
        out.push_str(&format!("| {kind} | {} |\n", row.doc));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_fault_vocabulary_and_has_no_duplicates() {
        let mut table = values("fault");
        let mut harness = FaultKind::names();
        table.sort_unstable();
        harness.sort_unstable();
        assert_eq!(table, harness);
        for kind in kinds() {
            let values = values(kind);
            for (i, v) in values.iter().enumerate() {
                assert!(!values[i + 1..].contains(v), "{kind} = {v} twice");
            }
        }
    }

    /// The parser turns a value into its enum's variant and lists the table's values when it
    /// cannot: a word of an enum missing from the table would be refused, one only the table
    /// has could not be parsed.
    #[test]
    fn the_table_holds_every_word_of_each_enum_and_no_other() {
        let sorted = |mut words: Vec<&'static str>| {
            words.sort_unstable();
            words
        };
        assert_eq!(sorted(kinds()), sorted(StepKind::names()));
        for &kind in StepKind::ALL {
            let words = match kind {
                StepKind::Fault => FaultKind::names(),
                StepKind::Wait => WaitKind::names(),
                StepKind::Expect => ExpectKind::names(),
                StepKind::Apply
                | StepKind::Manifest
                | StepKind::Rebuild
                | StepKind::Rollback
                | StepKind::Sleep => Vec::new(),
            };
            assert_eq!(sorted(values(kind.name())), sorted(words), "{kind:?}");
        }
    }

    #[test]
    fn the_readme_table_is_rendered_from_the_vocabulary() {
        let readme = include_str!("../files/README.md");
        let table = markdown_table();
        assert!(
            readme.contains(&table),
            "scenarios/files/README.md's table of steps differs from the vocabulary; put this in it:\n{table}"
        );
    }
}
