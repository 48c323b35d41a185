//! `node-failure`: for a worker, each fault the VM layer offers - power loss, a network
//! partition, a freeze. The node must go NotReady, get the `unreachable` NoExecute taint, and a
//! pod tolerating that for 10 s must be evicted and replaced on a surviving node; after recovery
//! the node is Ready and untainted again. Every delay is measured and reported.
//!
//! Budgets follow the Kubernetes e2e TaintBasedEvictions test (NotReady within 3 min, taint within
//! 30 s of it, Ready within 1 min of recovery, untainted within 30 s), scaled where the lab differs:
//! a crashed guest must boot again (minutes under TCG), and TCG slows every Go binary ~10x.
use std::time::Duration;

use harness::error::Chain;
use harness::fault::Fault;
use harness::kube::conditions::{
    deployment_available, node_has_taint, node_not_ready, node_ready, node_without_taint,
};
use harness::wait::{Poll, Since, Wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::ctx::{with_namespace, Ctx, ScenarioError};

const NAMESPACE: &str = "labtest-node-failure";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const TOLERATION_SECONDS: i64 = 10;

/// The three faults this scenario puts on a worker, by the names its checks carry.
#[derive(Clone, Copy, Debug)]
enum Trial {
    PowerLoss,
    Partition,
    Freeze,
}

impl Trial {
    fn name(self) -> &'static str {
        match self {
            Trial::PowerLoss => "power-loss",
            Trial::Partition => "partition",
            Trial::Freeze => "freeze",
        }
    }

    /// The harness fault: a partition of the worker from every peer is an isolation.
    fn fault(self, worker: &str) -> Fault {
        let machine = worker.to_string();
        match self {
            Trial::PowerLoss => Fault::Crash { machine },
            Trial::Partition => Fault::Isolate { machine },
            Trial::Freeze => Fault::Freeze { machine },
        }
    }

    /// Recovery budget: a power loss needs a whole boot.
    fn recovery(self) -> Duration {
        match self {
            Trial::PowerLoss => Duration::from_secs(600),
            _ => Duration::from_secs(240),
        }
    }
}

/// Runs the scenario on a Ready lab.
///
/// # Errors
/// [`ScenarioError::Failed`] for the first check the lab did not pass; [`ScenarioError::Error`]
/// when the harness could not do its part.
pub async fn run(ctx: &Ctx<'_>) -> Result<(), ScenarioError> {
    with_namespace(ctx, NAMESPACE, |ns| body(ctx, ns)).await
}

async fn body(ctx: &Ctx<'_>, ns: String) -> Result<(), ScenarioError> {
    let worker = ctx.worker()?;
    ctx.note("knobs", lifecycle_knobs(ctx).await?);
    for trial in [Trial::PowerLoss, Trial::Partition, Trial::Freeze] {
        one_fault(ctx, &ns, &worker, trial).await?;
    }
    Ok(())
}

/// The settings that govern the delays this scenario measures, as the master runs them: a
/// measured "NotReady after 45 s" means little without the grace period that decided it.
async fn lifecycle_knobs(ctx: &Ctx<'_>) -> Result<String, ScenarioError> {
    let master = &ctx.k8s()?.master;
    let cmdline = ctx
        .lab
        .machine(master)
        .map_err(|e| ScenarioError::error("reading the node lifecycle settings", e))?
        .succeed("tr '\\0' ' ' </proc/$(pgrep -o kube-controller)/cmdline")
        .await
        .map_err(|e| ScenarioError::error("reading kube-controller-manager's command line", e))?;
    Ok(describe_knobs(&cmdline))
}

/// What [`lifecycle_knobs`] says, from kube-controller-manager's command line; Kubernetes
/// v1.20's defaults where a flag is absent.
fn describe_knobs(cmdline: &str) -> String {
    let flag = |name: &str, default: &str| {
        let prefix = format!("--{name}=");
        let value = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .unwrap_or(default);
        format!("{name}={value}")
    };
    format!(
        "NotReady after {} without a status or lease, checked every {}; pods evicted {TOLERATION_SECONDS} s after the taint (the victim's tolerationSeconds)",
        flag("node-monitor-grace-period", "40s"),
        flag("node-monitor-period", "5s"),
    )
}

async fn one_fault(
    ctx: &Ctx<'_>,
    ns: &str,
    worker: &str,
    trial: Trial,
) -> Result<(), ScenarioError> {
    let image = ctx.k8s()?.workload_image.clone();
    let app = format!("victim-{}", trial.name());
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let nodes: Api<Node> = Api::all(ctx.client.clone());

    // A pod that prefers the worker but tolerates losing it for only 10 s.
    ctx.apply(
        &deployments,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": app },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": app } },
                "template": {
                    "metadata": { "labels": { "app": app } },
                    "spec": {
                        "affinity": { "nodeAffinity": { "preferredDuringSchedulingIgnoredDuringExecution": [{
                            "weight": 100,
                            "preference": { "matchExpressions": [{
                                "key": "kubernetes.io/hostname", "operator": "In", "values": [worker]
                            }] }
                        }] } },
                        "tolerations": [
                            { "key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": TOLERATION_SECONDS },
                            { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": TOLERATION_SECONDS },
                            { "key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule" }
                        ],
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{
                            "name": "idle", "image": image, "imagePullPolicy": "Never",
                            "command": ["sleep", "86400"],
                            "resources": { "requests": { "cpu": "10m", "memory": "8Mi" } }
                        }]
                    }
                }
            }
        }),
    )
    .await?;
    ctx.wait(
        &deployments,
        &app,
        deployment_available(1),
        &format!("{}: the victim pod runs", trial.name()),
        Duration::from_secs(300),
    )
    .await?;
    let selector = format!("app={app}");
    let on_worker = running_pods(&pods, &selector).await?;
    if !on_worker.iter().any(|(_, node)| node == worker) {
        return Err(ScenarioError::Error(format!(
            "could not place the victim pod on {worker} (it runs on {on_worker:?}); the fault would prove nothing"
        )));
    }

    let fault = trial.fault(worker);
    let undo = fault
        .undo()
        .ok_or_else(|| ScenarioError::Error(format!("fault {fault} has no undo")))?;
    let injected = Since::now(trial.name());
    let done = ctx
        .lab
        .inject(&fault)
        .await
        .map_err(|e| ScenarioError::error(&format!("injecting {}", trial.name()), e))?;
    ctx.note(trial.name(), done);

    let result = observe_failure(ctx, &nodes, &pods, worker, &selector, trial, &injected).await;
    // Recover whatever the observation said, so the next fault and scenario get a whole lab.
    let recovered = ctx.lab.inject(&undo).await;
    let recovery = Since::now(format!("{} recovery", trial.name()));
    result?;
    let done = recovered
        .map_err(|e| ScenarioError::error(&format!("recovering from {}", trial.name()), e))?;
    ctx.note(trial.name(), done);
    let took = ctx
        .wait_since(
            &nodes,
            worker,
            node_ready,
            &format!("{}: {worker} Ready again", trial.name()),
            trial.recovery(),
            &recovery,
        )
        .await?;
    ctx.note(
        trial.name(),
        format!("Ready {:.1}s after recovery", took.as_secs_f64()),
    );
    let took = ctx
        .wait_since(
            &nodes,
            worker,
            node_without_taint(UNREACHABLE),
            &format!("{}: {worker} untainted", trial.name()),
            Duration::from_secs(90),
            &recovery,
        )
        .await?;
    ctx.note(
        trial.name(),
        format!("untainted {:.1}s after recovery", took.as_secs_f64()),
    );
    let _ = deployments
        .delete(&app, &kube::api::DeleteParams::background())
        .await;
    Ok(())
}

async fn observe_failure(
    ctx: &Ctx<'_>,
    nodes: &Api<Node>,
    pods: &Api<Pod>,
    worker: &str,
    selector: &str,
    trial: Trial,
    injected: &Since,
) -> Result<(), ScenarioError> {
    let took = ctx
        .wait_since(
            nodes,
            worker,
            node_not_ready,
            &format!("{}: {worker} NotReady", trial.name()),
            Duration::from_secs(180),
            injected,
        )
        .await?;
    ctx.note(
        trial.name(),
        format!("NotReady {:.1}s after the fault", took.as_secs_f64()),
    );
    let took = ctx
        .wait_since(
            nodes,
            worker,
            node_has_taint(UNREACHABLE, "NoExecute"),
            &format!("{}: {worker} tainted {UNREACHABLE}:NoExecute", trial.name()),
            Duration::from_secs(90),
            injected,
        )
        .await?;
    ctx.note(
        trial.name(),
        format!(
            "unreachable:NoExecute {:.1}s after the fault",
            took.as_secs_f64()
        ),
    );
    let replaced = Wait::new(
        format!(
            "{}: the evicted pod is replaced on a surviving node",
            trial.name()
        ),
        Duration::from_secs(300),
        Duration::from_secs(2),
    )
    .since(injected.clone());
    let survivor = ctx
        .run_wait(&replaced, || async {
            match running_pods(pods, selector).await {
                Ok(running) => match running.iter().find(|(_, node)| node != worker) {
                    Some((pod, node)) => Poll::Ready(format!("{pod} on {node}")),
                    None => Poll::Pending(format!("running: {running:?}")),
                },
                Err(e) => Poll::Pending(Chain(&e).to_string()),
            }
        })
        .await?;
    ctx.note(
        trial.name(),
        format!(
            "replacement {survivor} running {:.1}s after the fault",
            injected.at.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// (pod, node) of the running, not terminating pods matching `selector`.
async fn running_pods(
    pods: &Api<Pod>,
    selector: &str,
) -> Result<Vec<(String, String)>, ScenarioError> {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| ScenarioError::error("listing pods", e))?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone())?;
            Some((p.metadata.name.unwrap_or_default(), node))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::describe_knobs;

    #[test]
    fn knobs_come_from_the_command_line_and_default_to_kubernetes_own() {
        let tuned = describe_knobs(
            "/k8s/bin/kube-controller-manager --kubeconfig=/x --node-monitor-grace-period=16s --pod-eviction-timeout=10s ",
        );
        assert_eq!(
            tuned,
            "NotReady after node-monitor-grace-period=16s without a status or lease, checked every node-monitor-period=5s; pods evicted 10 s after the taint (the victim's tolerationSeconds)"
        );
        let plain = describe_knobs("kube-controller-manager --node-monitor-period=2s");
        assert!(
            plain.contains("node-monitor-grace-period=40s")
                && plain.contains("node-monitor-period=2s"),
            "{plain}"
        );
    }
}
