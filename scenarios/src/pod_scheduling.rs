//! `pod-scheduling`: a Deployment spread over every node and a DaemonSet on each reach Running;
//! pods on different nodes reach each other over the pod network; a pod that cannot fit stays
//! Pending and the scheduler's reason is reported.
use std::collections::BTreeMap;
use std::time::Duration;

use harness::error::Chain;
use harness::kube::conditions::{
    daemonset_ready, deployment_available, pod_pending_with_reason, pod_phase, scheduler_message,
};
use harness::wait::Poll;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::ctx::{with_namespace, Ctx, ScenarioError};

const NAMESPACE: &str = "labtest-pod-scheduling";
/// Pods on a node carrying a control-plane taint must still land there: the lab's master is a node.
fn tolerations() -> serde_json::Value {
    json!([
        { "key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule" },
        { "key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule" }
    ])
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
    let image = ctx.k8s()?.workload_image.clone();
    let nodes = ctx.node_names();
    let n = nodes.len() as i32;

    // A web server per node, forced apart by a topology spread constraint.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    ctx.apply(
        &deployments,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "spread" },
            "spec": {
                "replicas": n,
                "selector": { "matchLabels": { "app": "spread" } },
                "template": {
                    "metadata": { "labels": { "app": "spread" } },
                    "spec": {
                        "topologySpreadConstraints": [{
                            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": { "matchLabels": { "app": "spread" } }
                        }],
                        "tolerations": tolerations(),
                        "containers": [{
                            "name": "web", "image": image, "imagePullPolicy": "Never",
                            "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"],
                            "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } }
                        }]
                    }
                }
            }
        }),
    )
    .await?;
    let took = ctx
        .wait(
            &deployments,
            "spread",
            deployment_available(n),
            &format!("Deployment spread: {n} replicas available"),
            Duration::from_secs(600),
        )
        .await?;
    ctx.note(
        "spread",
        format!("{n} replicas available after {:.1}s", took.as_secs_f64()),
    );

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let spread = pods
        .list(&ListParams::default().labels("app=spread"))
        .await
        .map_err(|e| ScenarioError::error("listing the spread pods", e))?;
    let mut by_node: BTreeMap<String, (String, String)> = BTreeMap::new();
    for pod in &spread.items {
        let spec_node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let name = pod.metadata.name.clone().unwrap_or_default();
        if let (Some(node), Some(ip)) = (spec_node, ip) {
            by_node.insert(node, (name, ip));
        }
    }
    let placed: Vec<&String> = by_node.keys().collect();
    ctx.note("spread", format!("pods on nodes: {placed:?}"));
    if by_node.len() != nodes.len() {
        return Err(ScenarioError::Failed {
            check: "spread over every node".into(),
            reason: format!("expected one pod on each of {nodes:?}, saw pods on {placed:?}"),
        });
    }

    // One pod on every node.
    let daemonsets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
    ctx.apply(
        &daemonsets,
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": { "name": "everywhere" },
            "spec": {
                "selector": { "matchLabels": { "app": "everywhere" } },
                "template": {
                    "metadata": { "labels": { "app": "everywhere" } },
                    "spec": {
                        "tolerations": tolerations(),
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
    let took = ctx
        .wait(
            &daemonsets,
            "everywhere",
            daemonset_ready,
            "DaemonSet everywhere: a ready pod on every node",
            Duration::from_secs(600),
        )
        .await?;
    let ds = daemonsets
        .get("everywhere")
        .await
        .map_err(|e| ScenarioError::error("reading the DaemonSet", e))?;
    let ready = ds.status.map(|s| s.number_ready).unwrap_or_default();
    if ready != n {
        return Err(ScenarioError::Failed {
            check: "DaemonSet on every node".into(),
            reason: format!("expected {n} ready pods, saw {ready}"),
        });
    }
    ctx.note(
        "everywhere",
        format!("{ready} ready after {:.1}s", took.as_secs_f64()),
    );

    // Pod-to-pod across nodes: from a pod on each node, fetch the web page of the pod on the next.
    let entries: Vec<(String, (String, String))> = by_node.into_iter().collect();
    for (i, (node, _)) in entries.iter().enumerate() {
        let (target_node, (target_pod, target_ip)) = &entries[(i + 1) % entries.len()];
        let name = format!("probe-{i}");
        ctx.apply(
            &pods,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name },
                "spec": {
                    "nodeName": node,
                    "restartPolicy": "Never",
                    "tolerations": tolerations(),
                    "containers": [{
                        "name": "probe", "image": image, "imagePullPolicy": "Never",
                        // busybox-static's `wget -T` segfaults (exit 139): bound it with `timeout`.
                        "command": ["sh", "-c", format!(
                            "for i in 1 2 3 4 5 6 7 8 9 10; do timeout 5 wget -q -O /tmp/page http://{target_ip}:8080/ && grep -qx {target_pod} /tmp/page && exit 0; sleep 3; done; exit 1"
                        )]
                    }]
                }
            }),
        )
        .await?;
        let took = ctx
            .wait(
                &pods,
                &name,
                pod_phase("Succeeded"),
                &format!("pod on {node} reaches the pod on {target_node} ({target_ip}:8080)"),
                Duration::from_secs(300),
            )
            .await?;
        ctx.note(
            "pod network",
            format!(
                "{node} -> {target_node}: ok after {:.1}s",
                took.as_secs_f64()
            ),
        );
    }

    // A pod no node can hold: the scheduler must say why.
    ctx.apply(
        &pods,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "too-big" },
            "spec": {
                "tolerations": tolerations(),
                "containers": [{
                    "name": "big", "image": image, "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                    "resources": { "requests": { "cpu": "64" } }
                }]
            }
        }),
    )
    .await?;
    ctx.wait(
        &pods,
        "too-big",
        pod_pending_with_reason("Unschedulable"),
        "a pod asking for 64 CPUs stays Pending as Unschedulable",
        Duration::from_secs(120),
    )
    .await?;
    let reason = ctx
        .check(
            "the scheduler explains the Pending pod",
            Duration::from_secs(30),
            Duration::from_secs(1),
            || async {
                match pods.get("too-big").await {
                    Ok(pod) => match scheduler_message(&pod) {
                        Some(message) => Poll::Ready(message),
                        None => Poll::Pending("no scheduler message yet".into()),
                    },
                    Err(e) => Poll::Pending(Chain(&e).to_string()),
                }
            },
        )
        .await?;
    ctx.note("too-big", format!("scheduler: {reason}"));
    Ok(())
}
