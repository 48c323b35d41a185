//! labtest's scenarios. Each is a reusable async function over a booted lab.
use harness::events::{Events, Outcome};
use harness::lab::Lab;
use harness::report::ArtifactsDir;

/// The built-in scenarios, in the order `labtest run` runs them: (name, what it proves).
/// The names are stable: scripts, CI and JUnit testcase names depend on them.
pub const CATALOGUE: &[(&str, &str)] = &[
    (
        "pod-scheduling",
        "a Deployment spread over all nodes, a DaemonSet on each, pod-to-pod traffic across nodes, an unfittable pod Pending with the scheduler's reason",
    ),
    (
        "node-failure",
        "each fault (power loss, partition, freeze) on a worker: NotReady, unreachable NoExecute taint, eviction to a survivor, recovery",
    ),
    (
        "rebuild-rollback",
        "switch a machine to a generation that breaks its kubelet, see it through the cluster, roll back; a good generation applies and stays",
    ),
];

/// Whether `name` is a built-in scenario.
pub fn is_builtin(name: &str) -> bool {
    CATALOGUE.iter().any(|(n, _)| *n == name)
}

/// Why a scenario did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The lab misbehaved: what the scenario exists to catch.
    #[error("{check}: {reason}")]
    Failed { check: String, reason: String },
    /// The scenario could not do its job (bad input, a lost connection): says nothing about
    /// the lab.
    #[error("{0}")]
    Error(String),
}

impl ScenarioError {
    pub fn outcome(&self) -> Outcome {
        match self {
            ScenarioError::Failed { .. } => Outcome::Failed,
            ScenarioError::Error(_) => Outcome::Error,
        }
    }
}

/// Runs the built-in scenario `name` against a booted lab.
///
/// # Errors
/// [`ScenarioError::Failed`] naming the failed check, [`ScenarioError::Error`] for an unknown
/// name or a lab without Kubernetes.
pub async fn run(
    name: &str,
    lab: &Lab,
    _events: &Events,
    _artifacts: &ArtifactsDir,
) -> Result<(), ScenarioError> {
    if lab.spec().kubernetes.is_none() {
        return Err(ScenarioError::Error(format!(
            "scenario {name} needs Kubernetes, and lab {} has no [kubernetes] in its lab.toml",
            lab.spec().name
        )));
    }
    Err(ScenarioError::Error(format!(
        "scenario {name} is not implemented yet"
    )))
}

pub mod file;
