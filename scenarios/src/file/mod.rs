//! Scenario files: an incident written down as ordered steps, run by
//! `labtest run --scenario-file FILE`.
//!
//! ```toml
//! name = "worker-partitioned-during-rollout"
//! description = "The master loses a worker while a Deployment rolls out"
//!
//! [[step]]
//! apply = "manifests/rollout-v2.yaml"     # relative to this file; or inline: manifest = """..."""
//!
//! [[step]]
//! fault = "partition"
//! machines = ["grey-area", "limiting-factor"]
//!
//! [[step]]
//! wait = "node-not-ready"
//! node = "limiting-factor"
//! timeout = "3m"                          # required on every wait
//! ```
//!
//! Every step has exactly one *kind* key (`apply`, `manifest`, `fault`, `wait`, `rebuild`,
//! `rollback`, `expect`, `sleep`); the kind decides which other keys it takes, listed in
//! `scenarios/files/README.md` and in the error for a key that does not belong. Any step may add
//! `note = "..."`, shown in reports.
//!
//! Parsing is all-or-nothing and strict: a run that finds a typo half an hour into an incident
//! wastes the half hour, so every problem is found at load time, and every error names the file,
//! the line and the field (`path:LINE: step[3].timeout: ...`). [`ScenarioFile::validate_against`]
//! then checks the machine and generation names against a lab spec.
//!
//! # Usage
//! ```no_run
//! # fn demo() -> Result<(), scenarios::file::FileError> {
//! use scenarios::file::{Action, ScenarioFile};
//! let file = ScenarioFile::load("scenarios/files/node-failure.toml".as_ref())?;
//! file.validate_against(
//!     &["grey-area".into(), "congenital-optimist".into(), "limiting-factor".into()],
//!     &["node-label".into(), "broken-kubelet".into()],
//! )?;
//! for step in &file.steps {
//!     match &step.action {
//!         Action::Wait(wait) => println!("step {}: wait up to {:?}", step.number, wait.timeout),
//!         other => println!("step {}: {}", step.number, other),
//!     }
//! }
//! # Ok(()) }
//! ```
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod parse;

pub use parse::parse_duration;

/// A parsed, fully checked scenario file.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioFile {
    /// As given to [`ScenarioFile::load`]; relative manifest paths were resolved against its
    /// directory.
    pub path: PathBuf,
    /// Lower-case letters, digits and dashes: it becomes a JUnit testcase name and a directory
    /// name in the artifacts folder.
    pub name: String,
    /// `description = "..."`: what the scenario is for, for reports.
    pub description: Option<String>,
    /// In file order; never empty.
    pub steps: Vec<Step>,
}

/// One `[[step]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// 1-based, in file order: what error messages and reports call it.
    pub number: usize,
    /// The line of its `[[step]]` header.
    pub line: usize,
    /// What the step does.
    pub action: Action,
    /// Free text from `note = "..."`, for reports.
    pub note: Option<String>,
    /// field -> line, so checks after parsing (and the executor) can point at the right line.
    lines: BTreeMap<String, usize>,
}

impl Step {
    /// The line `field` (e.g. `"machine"`) was written on; the step's own line when the field
    /// was not written (a default applies).
    pub fn line_of(&self, field: &str) -> usize {
        self.lines.get(field).copied().unwrap_or(self.line)
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `apply = "path"` or `manifest = """..."""`: `kubectl apply`.
    Apply(Apply),
    /// `fault = "..."`: something done to a machine or the lab network.
    Fault(Fault),
    /// `wait = "..."`: poll until a condition holds, failing the scenario at the deadline.
    Wait(WaitStep),
    /// `rebuild = "generation"`: build a `[[generation]]` of the lab spec and switch its
    /// machine to it.
    Rebuild(Rebuild),
    /// `rollback = "machine"`: switch the machine back to the system generation it ran before
    /// this file's last `rebuild` of it.
    Rollback(Rollback),
    /// `expect = "..."`: a check that must hold right now (no polling).
    Expect(Expectation),
    /// `sleep = "10s"`: let time pass (e.g. to show that something does NOT happen).
    Sleep(Duration),
}

/// An `apply` or `manifest` step.
#[derive(Debug, Clone, PartialEq)]
pub struct Apply {
    /// The manifest.
    pub source: ManifestSource,
    /// `namespace = "..."`: passed to kubectl; `None` leaves it to the manifest (and so to
    /// "default").
    pub namespace: Option<String>,
}

/// Where an `apply` step's manifest comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ManifestSource {
    /// `apply = "manifests/web.yaml"`: `path` is resolved against the scenario file's directory
    /// and was a readable file at load time; `written` is the value as written, for messages.
    File {
        /// The file, resolved.
        path: PathBuf,
        /// The value as written.
        written: String,
    },
    /// `manifest = """..."""`: the YAML itself.
    Inline(String),
}

use crate::vocabulary::{ExpectKind, WaitKind};
/// Faults are the harness's one vocabulary: a file names them as `Lab::inject` takes them.
pub use harness::fault::Fault;

/// A `wait` step: a condition polled until it holds or the deadline passes.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitStep {
    /// What to wait for.
    pub condition: WaitFor,
    /// Always written in the file: a wait without a deadline is how test suites hang for hours.
    pub timeout: Duration,
    /// `interval = "..."`, or [`WaitFor::default_interval`].
    pub interval: Duration,
}

/// Which pods a pod wait looks at: `pod = "name"` or `selector = "app=web"` (exactly one).
#[derive(Debug, Clone, PartialEq)]
pub enum PodSelector {
    /// `pod = "name"`: one pod by name.
    Name(String),
    /// A Kubernetes label selector, as `kubectl get pods -l` takes it.
    Labels(String),
}

harness::words! {
    /// A taint's effect, as Kubernetes writes it.
    pub enum TaintEffect {
        NoSchedule = "NoSchedule",
        PreferNoSchedule = "PreferNoSchedule",
        NoExecute = "NoExecute",
    }
}

/// A taint to look for: `key` (e.g. `node.kubernetes.io/unreachable`) and, optionally, `effect`
/// (any effect matches when absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Taint {
    /// The taint's key.
    pub key: String,
    /// Its effect; `None`: any.
    pub effect: Option<TaintEffect>,
}

/// A node label: `label = "key=value"` (that value) or `label = "key"` (any value).
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// The label's key.
    pub key: String,
    /// Its value; `None`: any.
    pub value: Option<String>,
}

/// Conditions of a `wait` step. Nodes are named like the machines they run on.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitFor {
    /// The Node's Ready condition is True.
    NodeReady {
        /// The node (a machine name).
        node: String,
    },
    /// The Node's Ready condition is not True (False or Unknown).
    NodeNotReady {
        /// The node (a machine name).
        node: String,
    },
    /// The Node carries the taint.
    NodeTainted {
        /// The node (a machine name).
        node: String,
        /// The taint.
        taint: Taint,
    },
    /// The Node no longer carries the taint.
    NodeUntainted {
        /// The node (a machine name).
        node: String,
        /// The taint.
        taint: Taint,
    },
    /// The Node carries the label (a rebuild's labels reach the Node some time after the
    /// switch: `--node-labels` acts only at registration, a reconciler patches an existing Node).
    NodeHasLabel {
        /// The node (a machine name).
        node: String,
        /// The label.
        label: Label,
    },
    /// The Node does not carry the label.
    NodeLacksLabel {
        /// The node (a machine name).
        node: String,
        /// The label.
        label: Label,
    },
    /// The Deployment's Available condition is True and at least `replicas` replicas are
    /// available (`None`: its `spec.replicas`).
    DeploymentAvailable {
        /// Its namespace.
        namespace: String,
        /// The Deployment.
        deployment: String,
        /// How many replicas must be available; `None`: its `spec.replicas`.
        replicas: Option<u32>,
    },
    /// Every replica runs the latest spec and is available, no old pod is left (`kubectl
    /// rollout status`); a Deployment can be available long before that, on old pods.
    DeploymentRolledOut {
        /// Its namespace.
        namespace: String,
        /// The Deployment.
        deployment: String,
    },
    /// `numberReady == desiredNumberScheduled`.
    DaemonSetReady {
        /// Its namespace.
        namespace: String,
        /// The DaemonSet.
        daemonset: String,
    },
    /// At least `count` selected pods are Running (and on `node`, when given).
    PodRunning {
        /// Their namespace.
        namespace: String,
        /// Which pods.
        pods: PodSelector,
        /// The node they must run on; `None`: any.
        node: Option<String>,
        /// How many at least.
        count: u32,
    },
    /// At least `count` selected pods are Pending (e.g. unschedulable).
    PodPending {
        /// Their namespace.
        namespace: String,
        /// Which pods.
        pods: PodSelector,
        /// How many at least.
        count: u32,
    },
    /// The systemd unit is `active`.
    UnitActive {
        /// The machine.
        machine: String,
        /// The unit.
        unit: String,
    },
    /// The unit entered `failed` (e.g. a broken kubelet after its restart limit).
    UnitFailed {
        /// The machine.
        machine: String,
        /// The unit.
        unit: String,
    },
    /// A shell command in the guest exits 0.
    CommandSucceeds {
        /// The machine.
        machine: String,
        /// The command, run with bash as root.
        command: String,
    },
}

impl WaitFor {
    /// The word a file writes after `wait =` for it.
    pub fn kind(&self) -> WaitKind {
        match self {
            WaitFor::NodeReady { .. } => WaitKind::NodeReady,
            WaitFor::NodeNotReady { .. } => WaitKind::NodeNotReady,
            WaitFor::NodeHasLabel { .. } => WaitKind::NodeHasLabel,
            WaitFor::NodeLacksLabel { .. } => WaitKind::NodeLacksLabel,
            WaitFor::NodeTainted { .. } => WaitKind::NodeTainted,
            WaitFor::NodeUntainted { .. } => WaitKind::NodeUntainted,
            WaitFor::DeploymentAvailable { .. } => WaitKind::DeploymentAvailable,
            WaitFor::DeploymentRolledOut { .. } => WaitKind::DeploymentRolledOut,
            WaitFor::DaemonSetReady { .. } => WaitKind::DaemonSetReady,
            WaitFor::PodRunning { .. } => WaitKind::PodRunning,
            WaitFor::PodPending { .. } => WaitKind::PodPending,
            WaitFor::UnitActive { .. } => WaitKind::UnitActive,
            WaitFor::UnitFailed { .. } => WaitKind::UnitFailed,
            WaitFor::CommandSucceeds { .. } => WaitKind::CommandSucceeds,
        }
    }

    /// How often to look when `interval` is not written: often enough that the Kubernetes e2e
    /// reference timings (taint within 30 s, Ready within 1 min) are measurable, rarely enough
    /// not to load a TCG guest.
    pub fn default_interval(&self) -> Duration {
        match self {
            WaitFor::NodeTainted { .. }
            | WaitFor::NodeUntainted { .. }
            | WaitFor::UnitActive { .. }
            | WaitFor::UnitFailed { .. } => Duration::from_secs(1),
            _ => Duration::from_secs(2),
        }
    }
}

/// A `rebuild` step.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuild {
    /// A `[[generation]]` name of the lab spec (which names the machine).
    pub generation: String,
    /// For the build and the switch together.
    pub timeout: Duration,
}

/// A `rollback` step.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    /// The machine to switch back.
    pub machine: String,
    /// For the switch back.
    pub timeout: Duration,
}

/// Checks of an `expect` step: they hold now or the scenario fails.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// Every pod of the Deployment is Running on a node not in `failed_nodes`, and there is at
    /// least one.
    PodsOnSurvivingNodes {
        /// Its namespace.
        namespace: String,
        /// The Deployment.
        deployment: String,
        /// The nodes its pods must not be on.
        failed_nodes: Vec<String>,
    },
    /// The Deployment reports exactly `count` available replicas.
    ReplicasAvailable {
        /// Its namespace.
        namespace: String,
        /// The Deployment.
        deployment: String,
        /// The exact number of available replicas.
        count: u32,
    },
    /// The Node carries the label now.
    NodeHasLabel {
        /// The node (a machine name).
        node: String,
        /// The label.
        label: Label,
    },
    /// The Node does not carry the label now.
    NodeLacksLabel {
        /// The node (a machine name).
        node: String,
        /// The label.
        label: Label,
    },
    /// A shell command in the guest exits 0 and its stdout contains `contains`.
    CommandOutput {
        /// The machine.
        machine: String,
        /// The command, run with bash as root.
        command: String,
        /// Text its stdout must contain.
        contains: String,
    },
}

impl Expectation {
    /// The word a file writes after `expect =` for it.
    pub fn kind(&self) -> ExpectKind {
        match self {
            Expectation::PodsOnSurvivingNodes { .. } => ExpectKind::PodsOnSurvivingNodes,
            Expectation::ReplicasAvailable { .. } => ExpectKind::ReplicasAvailable,
            Expectation::NodeHasLabel { .. } => ExpectKind::NodeHasLabel,
            Expectation::NodeLacksLabel { .. } => ExpectKind::NodeLacksLabel,
            Expectation::CommandOutput { .. } => ExpectKind::CommandOutput,
        }
    }
}

/// A machine or generation name a step refers to, for [`ScenarioFile::validate_against`] and
/// for executors that want to check names themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference<'a> {
    /// Whether it names a machine or a generation.
    pub kind: ReferenceKind,
    /// The name as written.
    pub name: &'a str,
    /// The field it was written in (`machine`, `node`, `machines`, ...).
    pub field: &'static str,
}

/// What a [`Reference`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceKind {
    /// A lab machine; Kubernetes node names are machine names.
    Machine,
    /// A `[[generation]]` of the lab spec.
    Generation,
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read scenario file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `field` is a path like `name`, `step[3]` or `step[3].timeout`; `message` says what was
    /// expected and what was seen.
    #[error("{}:{line}: {field}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// The field, e.g. `step[3].timeout`.
        field: String,
        /// What was expected and what was seen.
        message: String,
    },
}

impl FileError {
    /// The offending line, 1-based (`None` when the file could not be read).
    pub fn line(&self) -> Option<usize> {
        match self {
            FileError::Read { .. } => None,
            FileError::Invalid { line, .. } => Some(*line),
        }
    }

    /// The offending field (`None` when the file could not be read).
    pub fn field(&self) -> Option<&str> {
        match self {
            FileError::Read { .. } => None,
            FileError::Invalid { field, .. } => Some(field),
        }
    }
}

impl ScenarioFile {
    /// Reads and checks a scenario file. Relative manifest paths are resolved against the
    /// file's directory and must exist.
    ///
    /// # Errors
    /// [`FileError::Read`] if the file cannot be read; [`FileError::Invalid`] with line and field
    /// for the first problem found.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Like [`ScenarioFile::load`] for text already in memory; `path` names the file in errors and
    /// anchors relative manifest paths.
    ///
    /// # Errors
    /// [`FileError::Invalid`] with line and field for the first problem found.
    pub fn parse(text: &str, path: &Path) -> Result<Self, FileError> {
        parse::parse_file(text, path)
    }

    /// Checks that every machine, node and generation a step names exists in the lab.
    ///
    /// # Errors
    /// [`FileError::Invalid`] for the first unknown name, with its line and field and the names
    /// the lab does have.
    pub fn validate_against(
        &self,
        machines: &[String],
        generations: &[String],
    ) -> Result<(), FileError> {
        for step in &self.steps {
            for reference in step.references() {
                let (known, what) = match reference.kind {
                    ReferenceKind::Machine => (machines, "machine"),
                    ReferenceKind::Generation => (generations, "generation"),
                };
                if !known.iter().any(|k| k == reference.name) {
                    let has = if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    };
                    return Err(FileError::Invalid {
                        path: self.path.clone(),
                        line: step.line_of(reference.field),
                        field: format!("step[{}].{}", step.number, reference.field),
                        message: format!(
                            "the lab has no {what} named {:?} (it has: {has})",
                            reference.name
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Step {
    /// Every machine, node and generation name this step refers to.
    pub fn references(&self) -> Vec<Reference<'_>> {
        fn machine<'s>(field: &'static str, name: &'s str) -> Reference<'s> {
            Reference {
                kind: ReferenceKind::Machine,
                name,
                field,
            }
        }
        let mut out: Vec<Reference<'_>> = Vec::new();
        match &self.action {
            Action::Apply(_) | Action::Sleep(_) => {}
            Action::Fault(fault) => match fault {
                Fault::Partition { a, b } | Fault::Heal { a, b } => {
                    out.push(machine("machines", a));
                    out.push(machine("machines", b));
                }
                Fault::Crash { machine: m }
                | Fault::Freeze { machine: m }
                | Fault::Thaw { machine: m }
                | Fault::Shutdown { machine: m, .. }
                | Fault::Start { machine: m, .. }
                | Fault::Reboot { machine: m, .. }
                | Fault::LinkDown { machine: m }
                | Fault::LinkUp { machine: m }
                | Fault::Isolate { machine: m }
                | Fault::Rejoin { machine: m }
                | Fault::StopUnit { machine: m, .. }
                | Fault::StartUnit { machine: m, .. } => out.push(machine("machine", m)),
            },
            Action::Wait(wait) => match &wait.condition {
                WaitFor::NodeReady { node }
                | WaitFor::NodeNotReady { node }
                | WaitFor::NodeTainted { node, .. }
                | WaitFor::NodeUntainted { node, .. }
                | WaitFor::NodeHasLabel { node, .. }
                | WaitFor::NodeLacksLabel { node, .. } => out.push(machine("node", node)),
                WaitFor::PodRunning {
                    node: Some(node), ..
                } => out.push(machine("node", node)),
                WaitFor::UnitActive { machine: m, .. }
                | WaitFor::UnitFailed { machine: m, .. }
                | WaitFor::CommandSucceeds { machine: m, .. } => out.push(machine("machine", m)),
                WaitFor::DeploymentAvailable { .. }
                | WaitFor::DeploymentRolledOut { .. }
                | WaitFor::DaemonSetReady { .. }
                | WaitFor::PodRunning { node: None, .. }
                | WaitFor::PodPending { .. } => {}
            },
            Action::Rebuild(rebuild) => out.push(Reference {
                kind: ReferenceKind::Generation,
                name: &rebuild.generation,
                field: "rebuild",
            }),
            Action::Rollback(rollback) => out.push(machine("rollback", &rollback.machine)),
            Action::Expect(expect) => match expect {
                Expectation::PodsOnSurvivingNodes { failed_nodes, .. } => {
                    out.extend(failed_nodes.iter().map(|n| machine("failed_nodes", n)));
                }
                Expectation::NodeHasLabel { node, .. }
                | Expectation::NodeLacksLabel { node, .. } => {
                    out.push(machine("node", node));
                }
                Expectation::CommandOutput { machine: m, .. } => out.push(machine("machine", m)),
                Expectation::ReplicasAvailable { .. } => {}
            },
        }
        out
    }
}

// ---- display: one line per step, for progress lines and reports ----

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Apply(apply) => match &apply.source {
                ManifestSource::File { written, .. } => write!(f, "apply {written}"),
                ManifestSource::Inline(_) => write!(f, "apply inline manifest"),
            },
            Action::Fault(fault) => write!(f, "fault {fault}"),
            Action::Wait(wait) => write!(
                f,
                "wait {} (deadline {})",
                wait.condition,
                humane(wait.timeout)
            ),
            Action::Rebuild(r) => write!(f, "rebuild {}", r.generation),
            Action::Rollback(r) => write!(f, "rollback {}", r.machine),
            Action::Expect(e) => write!(f, "expect {e}"),
            Action::Sleep(d) => write!(f, "sleep {}", humane(*d)),
        }
    }
}

impl fmt::Display for WaitFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.kind().name())?;
        match self {
            WaitFor::NodeReady { node } | WaitFor::NodeNotReady { node } => write!(f, "{node}"),
            WaitFor::NodeTainted { node, taint } | WaitFor::NodeUntainted { node, taint } => {
                write!(f, "{node} {taint}")
            }
            WaitFor::NodeHasLabel { node, label } | WaitFor::NodeLacksLabel { node, label } => {
                write!(f, "{node} {label}")
            }
            WaitFor::DeploymentAvailable {
                namespace,
                deployment,
                ..
            }
            | WaitFor::DeploymentRolledOut {
                namespace,
                deployment,
            } => write!(f, "{namespace}/{deployment}"),
            WaitFor::DaemonSetReady {
                namespace,
                daemonset,
            } => write!(f, "{namespace}/{daemonset}"),
            WaitFor::PodRunning {
                namespace,
                pods,
                node,
                ..
            } => {
                write!(f, "{namespace}/{pods}")?;
                match node {
                    Some(node) => write!(f, " on {node}"),
                    None => Ok(()),
                }
            }
            WaitFor::PodPending {
                namespace, pods, ..
            } => write!(f, "{namespace}/{pods}"),
            WaitFor::UnitActive { machine, unit } | WaitFor::UnitFailed { machine, unit } => {
                write!(f, "{unit} on {machine}")
            }
            WaitFor::CommandSucceeds { machine, command } => {
                write!(f, "on {machine}: {command}")
            }
        }
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.kind().name())?;
        match self {
            Expectation::PodsOnSurvivingNodes {
                namespace,
                deployment,
                failed_nodes,
            } => write!(
                f,
                "{namespace}/{deployment} (not on {})",
                failed_nodes.join(", ")
            ),
            Expectation::ReplicasAvailable {
                namespace,
                deployment,
                count,
            } => write!(f, "{namespace}/{deployment} = {count}"),
            Expectation::NodeHasLabel { node, label }
            | Expectation::NodeLacksLabel { node, label } => write!(f, "{node} {label}"),
            Expectation::CommandOutput {
                machine, contains, ..
            } => write!(f, "on {machine} contains {contains:?}"),
        }
    }
}

impl fmt::Display for PodSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodSelector::Name(name) => write!(f, "{name}"),
            PodSelector::Labels(selector) => write!(f, "-l {selector}"),
        }
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.effect {
            Some(effect) => write!(f, "{}:{}", self.key, effect.name()),
            None => write!(f, "{}", self.key),
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value}", self.key),
            None => write!(f, "{}", self.key),
        }
    }
}

/// "1m30s" style, the way the file writes durations.
fn humane(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}
