//! `node-failure`: for a worker, each fault the VM layer offers - power loss, a network
//! partition, a freeze. The node must go NotReady, get the `unreachable` NoExecute taint, and a
//! pod tolerating that for 10 s must be evicted and replaced on a surviving node; after recovery
//! the node is Ready and untainted again. Every delay is measured and reported.
//!
//! Budgets follow the Kubernetes e2e TaintBasedEvictions test (NotReady within 3 min, taint within
//! 30 s of it, Ready within 1 min of recovery, untainted within 30 s), scaled where the lab differs:
//! a crashed guest must boot again (minutes under TCG), and TCG slows every Go binary ~10x.
use std::time::{Duration, Instant};

use harness::kube::conditions::{
    deployment_available, node_has_taint, node_not_ready, node_ready, node_without_taint,
};
use harness::wait::Poll;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::ctx::{with_namespace, Ctx, ScenarioError};

const NAMESPACE: &str = "labtest-node-failure";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const TOLERATION_SECONDS: i64 = 10;

#[derive(Clone, Copy, Debug)]
enum Fault {
    PowerLoss,
    Partition,
    Freeze,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::PowerLoss => "power-loss",
            Fault::Partition => "partition",
            Fault::Freeze => "freeze",
        }
    }

    /// Recovery budget: a power loss needs a whole boot.
    fn recovery(self) -> Duration {
        match self {
            Fault::PowerLoss => Duration::from_secs(600),
            _ => Duration::from_secs(240),
        }
    }
}

pub async fn run(ctx: &Ctx<'_>) -> Result<(), ScenarioError> {
    with_namespace(ctx, NAMESPACE, |ns| body(ctx, ns)).await
}

async fn body(ctx: &Ctx<'_>, ns: String) -> Result<(), ScenarioError> {
    let worker = ctx.worker()?;
    for fault in [Fault::PowerLoss, Fault::Partition, Fault::Freeze] {
        one_fault(ctx, &ns, &worker, fault).await?;
    }
    Ok(())
}

async fn one_fault(
    ctx: &Ctx<'_>,
    ns: &str,
    worker: &str,
    fault: Fault,
) -> Result<(), ScenarioError> {
    let image = ctx.k8s()?.workload_image.clone();
    let app = format!("victim-{}", fault.name());
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
        &format!("{}: the victim pod runs", fault.name()),
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

    let machine = ctx
        .lab
        .machine(worker)
        .map_err(|e| ScenarioError::error("finding the worker", e))?;
    let start = Instant::now();
    match fault {
        Fault::PowerLoss => machine.crash().await,
        Fault::Partition => {
            return_on_lab_error(ctx.lab.isolate(worker))?;
            Ok(())
        }
        Fault::Freeze => machine.freeze().await,
    }
    .map_err(|e| ScenarioError::error(&format!("injecting {}", fault.name()), e))?;
    ctx.note(
        fault.name(),
        format!("{} injected on {worker}", fault.name()),
    );

    let result = observe_failure(ctx, &nodes, &pods, worker, &selector, fault, start).await;
    // Recover whatever the observation said, so the next fault and scenario get a whole lab.
    let recovered = match fault {
        Fault::PowerLoss => machine.start().await.map(|_| ()),
        Fault::Partition => {
            return_on_lab_error(ctx.lab.rejoin(worker))?;
            Ok(())
        }
        Fault::Freeze => machine.thaw().await,
    };
    let recovery_start = Instant::now();
    result?;
    recovered.map_err(|e| ScenarioError::error(&format!("recovering from {}", fault.name()), e))?;
    let took = ctx
        .wait(
            &nodes,
            worker,
            node_ready,
            &format!("{}: {worker} Ready again", fault.name()),
            fault.recovery(),
        )
        .await?;
    ctx.note(
        fault.name(),
        format!("Ready {:.1}s after recovery", took.as_secs_f64()),
    );
    ctx.wait(
        &nodes,
        worker,
        node_without_taint(UNREACHABLE),
        &format!("{}: {worker} untainted", fault.name()),
        Duration::from_secs(90),
    )
    .await?;
    ctx.note(
        fault.name(),
        format!(
            "untainted {:.1}s after recovery",
            recovery_start.elapsed().as_secs_f64()
        ),
    );
    let _ = deployments
        .delete(&app, &kube::api::DeleteParams::background())
        .await;
    Ok(())
}

fn return_on_lab_error(result: Result<(), harness::lab::LabError>) -> Result<(), ScenarioError> {
    result.map_err(|e| ScenarioError::error("changing the lab network", e))
}

async fn observe_failure(
    ctx: &Ctx<'_>,
    nodes: &Api<Node>,
    pods: &Api<Pod>,
    worker: &str,
    selector: &str,
    fault: Fault,
    start: Instant,
) -> Result<(), ScenarioError> {
    ctx.wait(
        nodes,
        worker,
        node_not_ready,
        &format!("{}: {worker} NotReady", fault.name()),
        Duration::from_secs(180),
    )
    .await?;
    ctx.note(
        fault.name(),
        format!(
            "NotReady {:.1}s after the fault",
            start.elapsed().as_secs_f64()
        ),
    );
    ctx.wait(
        nodes,
        worker,
        node_has_taint(UNREACHABLE, "NoExecute"),
        &format!("{}: {worker} tainted {UNREACHABLE}:NoExecute", fault.name()),
        Duration::from_secs(90),
    )
    .await?;
    ctx.note(
        fault.name(),
        format!(
            "unreachable:NoExecute {:.1}s after the fault",
            start.elapsed().as_secs_f64()
        ),
    );
    let survivor = ctx
        .check(
            &format!(
                "{}: the evicted pod is replaced on a surviving node",
                fault.name()
            ),
            Duration::from_secs(300),
            Duration::from_secs(2),
            || async {
                match running_pods(pods, selector).await {
                    Ok(running) => match running.iter().find(|(_, node)| node != worker) {
                        Some((pod, node)) => Poll::Ready(format!("{pod} on {node}")),
                        None => Poll::Pending(format!("running: {running:?}")),
                    },
                    Err(e) => Poll::Pending(e.to_string()),
                }
            },
        )
        .await?;
    ctx.note(
        fault.name(),
        format!(
            "replacement {survivor} running {:.1}s after the fault",
            start.elapsed().as_secs_f64()
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
