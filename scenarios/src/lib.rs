//! labtest's scenarios. Each is a reusable async function over a booted lab ([`Ctx`]); the
//! CLI runs them by name, scenario files (see [`file`]) describe incidents as steps.
mod ctx;
pub mod file;
pub mod node_failure;
pub mod pod_scheduling;
pub mod rebuild_rollback;
pub mod runner;
pub mod vocabulary;

pub use ctx::{Ctx, ScenarioError};

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

/// Runs the built-in scenario `name` against a booted lab.
///
/// # Errors
/// [`ScenarioError::Failed`] naming the failed check, [`ScenarioError::Error`] for an unknown
/// name or a lab without what the scenario needs.
pub async fn run(name: &str, ctx: &Ctx<'_>) -> Result<(), ScenarioError> {
    match name {
        "pod-scheduling" => pod_scheduling::run(ctx).await,
        "node-failure" => node_failure::run(ctx).await,
        "rebuild-rollback" => rebuild_rollback::run(ctx).await,
        other => Err(ScenarioError::Error(format!("no scenario named {other:?}"))),
    }
}
