//! Bounded waits on Kubernetes objects and the conditions they wait for.
//!
//! Modelled on kube-runtime's `wait` module: a condition is a plain function of
//! `Option<&K>` (`None`: the object does not exist), behind [`crate::wait::Condition`], so they
//! combine with `.and()`, `.or()`, `.not()`. Unlike kube-runtime's `await_condition`, every wait
//! here has a deadline and a poll interval, and a timeout says what the object last looked like
//! (through [`Summary`]), e.g. `Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node
//! status.); taints: node.kubernetes.io/unreachable:NoSchedule`.
//!
//! Waits poll (`GET` every interval) rather than watch: a watch through a frozen guest's port
//! forward can stall silently, and a poll's cost is negligible at labtest's scale.
//!
//! # Usage
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), harness::kube::KubeError> {
//! use std::time::Duration;
//! use harness::kube::{conditions::*, wait_for};
//! use harness::wait::{Condition, Wait};
//! use k8s_openapi::api::core::v1::Node;
//!
//! let nodes = kube::Api::<Node>::all(client);
//! let wait = Wait::new("limiting-factor unreachable", Duration::from_secs(60), Duration::from_secs(1));
//! let cond = node_not_ready.and(node_has_taint(TAINT_UNREACHABLE, "NoExecute"));
//! wait_for(&nodes, "limiting-factor", cond, &wait).await?;
//! # Ok(()) }
//! ```
use std::fmt::Debug;

use ::kube::{Api, Resource};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use serde::de::DeserializeOwned;

use super::{brief, status_code, KubeError};
use crate::wait::{poll_until, tail_chars, Condition, Poll, Wait};

/// The node lifecycle controller's taint for a node that stopped heartbeating.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The node lifecycle controller's taint for a node whose kubelet reports NotReady.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

/// A one-line description of an object's state, for progress lines and timeout messages.
pub trait Summary {
    /// The object's state in one line (`Ready=False (KubeletNotReady)`).
    fn summary(&self) -> String;
}

/// Waits until `condition` holds for the object `name`, polling every `wait.interval`.
///
/// Returns the object as last seen, or `None` when the condition held for its absence (a
/// deletion). Transient API errors (the apiserver restarting, a timeout) count as "not yet" and
/// show in the last observed state; 401 and 403 end the wait at once since waiting cannot fix
/// credentials. To have the wait reported as a check, run [`look`] with [`crate::check::run`].
///
/// # Errors
/// [`KubeError::Wait`] with the object's last [`Summary`] (or the last error).
pub async fn wait_for<K, C>(
    api: &Api<K>,
    name: &str,
    condition: C,
    wait: &Wait,
) -> Result<Option<K>, KubeError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Summary,
    K::DynamicType: Default,
    C: Condition<K>,
{
    let condition = &condition;
    poll_until(wait, || look(api, name, condition))
        .await
        .map_err(KubeError::from)
}

/// One look at the object `name` for a wait on `condition`: the object (or `None` for an
/// absence the condition wanted) when it holds, else its [`Summary`] or the API error.
pub async fn look<K, C>(api: &Api<K>, name: &str, condition: &C) -> Poll<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Summary,
    K::DynamicType: Default,
    C: Condition<K>,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    match api.get_opt(name).await {
        Ok(found) if condition.matches(found.as_ref()) => Poll::Ready(found),
        Ok(Some(object)) => Poll::Pending(format!("{kind} {name}: {}", object.summary())),
        Ok(None) => Poll::Pending(format!("{kind} {name} does not exist")),
        Err(e) if matches!(status_code(&e), Some(401 | 403)) => {
            Poll::Failed(format!("reading {kind} {name}: {}", brief(&e)))
        }
        Err(e) => Poll::Pending(format!("reading {kind} {name}: {}", brief(&e))),
    }
}

fn node_condition<'a>(
    node: &'a Node,
    kind: &str,
) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

fn pod_condition<'a>(
    pod: &'a Pod,
    kind: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

fn ready_status(node: &Node) -> Option<&str> {
    node_condition(node, "Ready").map(|c| c.status.as_str())
}

/// The node's Ready condition is True.
pub fn node_ready(node: Option<&Node>) -> bool {
    node.and_then(ready_status) == Some("True")
}

/// The node exists and its Ready condition is False (kubelet says so) or Unknown (the node
/// lifecycle controller stopped hearing from it).
pub fn node_not_ready(node: Option<&Node>) -> bool {
    matches!(node.and_then(ready_status), Some("False" | "Unknown"))
}

/// The node carries a taint with `key` and `effect` (`NoSchedule`, `PreferNoSchedule`,
/// `NoExecute`).
pub fn node_has_taint(key: &str, effect: &str) -> impl Fn(Option<&Node>) -> bool {
    let (key, effect) = (key.to_string(), effect.to_string());
    move |node| {
        node.and_then(|n| n.spec.as_ref()?.taints.as_ref())
            .is_some_and(|taints| taints.iter().any(|t| t.key == key && t.effect == effect))
    }
}

/// The node exists and carries no taint with `key`, whatever its effect.
pub fn node_without_taint(key: &str) -> impl Fn(Option<&Node>) -> bool {
    let key = key.to_string();
    move |node| {
        node.is_some_and(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|taints| taints.iter().any(|t| t.key == key))
        })
    }
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// The pod's phase is Running.
pub fn pod_running(pod: Option<&Pod>) -> bool {
    pod.and_then(phase) == Some("Running")
}

/// The pod's phase is `wanted` (`Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`).
pub fn pod_phase(wanted: &str) -> impl Fn(Option<&Pod>) -> bool {
    let wanted = wanted.to_string();
    move |pod| pod.and_then(phase) == Some(wanted.as_str())
}

/// The pod is bound to some node.
pub fn pod_bound(pod: Option<&Pod>) -> bool {
    pod.and_then(|p| p.spec.as_ref()?.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

/// The pod is bound to `node`.
pub fn pod_on_node(node: &str) -> impl Fn(Option<&Pod>) -> bool {
    let node = node.to_string();
    move |pod| pod.and_then(|p| p.spec.as_ref()?.node_name.as_deref()) == Some(node.as_str())
}

/// The pod is Pending and the scheduler set PodScheduled=False with `reason` (the scheduler
/// uses `Unschedulable`). Read the scheduler's explanation with [`scheduler_message`].
pub fn pod_pending_with_reason(reason: &str) -> impl Fn(Option<&Pod>) -> bool {
    let reason = reason.to_string();
    move |pod| {
        pod.is_some_and(|p| {
            matches!(phase(p), None | Some("Pending"))
                && pod_condition(p, "PodScheduled").is_some_and(|c| {
                    c.status == "False" && c.reason.as_deref() == Some(reason.as_str())
                })
        })
    }
}

/// The scheduler's message on the PodScheduled condition, e.g. `0/3 nodes are available: 3
/// Insufficient cpu.`
pub fn scheduler_message(pod: &Pod) -> Option<String> {
    pod_condition(pod, "PodScheduled")
        .filter(|c| c.status == "False")
        .and_then(|c| c.message.clone())
}

/// The Deployment's controller has seen its latest spec and at least `replicas` pods are
/// available.
pub fn deployment_available(replicas: i32) -> impl Fn(Option<&Deployment>) -> bool {
    move |deployment| {
        deployment.is_some_and(|d| {
            let Some(status) = d.status.as_ref() else {
                return false;
            };
            status.observed_generation >= d.metadata.generation
                && status.available_replicas.unwrap_or(0) >= replicas
        })
    }
}

/// The Deployment's rollout is complete, as `kubectl rollout status` decides it: its latest spec
/// is observed, every wanted replica runs that spec and is available, and no old pod is left
/// running. Pods already being deleted do not count (a ReplicaSet ignores them), so a pod stuck
/// terminating on an unreachable node does not hold a rollout back.
///
/// ```
/// use harness::kube::conditions::deployment_rolled_out;
/// use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
/// let mut d = Deployment::default();
/// d.spec = Some(DeploymentSpec { replicas: Some(3), ..Default::default() });
/// // Mid-rollout: 3 available, but only 1 runs the new spec.
/// d.status = Some(DeploymentStatus {
///     replicas: Some(4), updated_replicas: Some(1), available_replicas: Some(3),
///     ..Default::default()
/// });
/// assert!(!deployment_rolled_out(Some(&d)));
/// d.status = Some(DeploymentStatus {
///     replicas: Some(3), updated_replicas: Some(3), available_replicas: Some(3),
///     ..Default::default()
/// });
/// assert!(deployment_rolled_out(Some(&d)));
/// ```
pub fn deployment_rolled_out(deployment: Option<&Deployment>) -> bool {
    deployment.is_some_and(|d| {
        let (Some(spec), Some(status)) = (d.spec.as_ref(), d.status.as_ref()) else {
            return false;
        };
        let wanted = spec.replicas.unwrap_or(1);
        let updated = status.updated_replicas.unwrap_or(0);
        status.observed_generation >= d.metadata.generation
            && updated >= wanted
            && status.replicas.unwrap_or(0) <= updated
            && status.available_replicas.unwrap_or(0) >= updated
    })
}

/// The DaemonSet's controller has seen its latest spec and it runs a ready pod on every node
/// it should (numberReady == desiredNumberScheduled > 0, as the nixpkgs k3s test checks).
pub fn daemonset_ready(daemonset: Option<&DaemonSet>) -> bool {
    daemonset.is_some_and(|d| {
        d.status.as_ref().is_some_and(|s| {
            s.observed_generation >= d.metadata.generation
                && s.desired_number_scheduled > 0
                && s.number_ready == s.desired_number_scheduled
        })
    })
}

impl Summary for Node {
    fn summary(&self) -> String {
        let ready = match node_condition(self, "Ready") {
            Some(c) => {
                let why = match (c.reason.as_deref(), c.message.as_deref()) {
                    (Some(r), Some(m)) => format!(" ({r}: {})", tail_chars(m, 160)),
                    (Some(r), None) => format!(" ({r})"),
                    _ => String::new(),
                };
                format!("Ready={}{why}", c.status)
            }
            None => "no Ready condition yet".into(),
        };
        let taints: Vec<String> = self
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .map(|ts| {
                ts.iter()
                    .map(|t| format!("{}:{}", t.key, t.effect))
                    .collect()
            })
            .unwrap_or_default();
        if taints.is_empty() {
            format!("{ready}; no taints")
        } else {
            format!("{ready}; taints: {}", taints.join(", "))
        }
    }
}

impl Summary for Pod {
    fn summary(&self) -> String {
        let node = self
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("-");
        let mut out = format!("phase {} on node {node}", phase(self).unwrap_or("(none)"));
        if let Some(c) = pod_condition(self, "PodScheduled").filter(|c| c.status != "True") {
            out.push_str(&format!(
                "; PodScheduled={} ({}: {})",
                c.status,
                c.reason.as_deref().unwrap_or("-"),
                tail_chars(c.message.as_deref().unwrap_or("-"), 200)
            ));
        }
        let waiting: Vec<String> = self
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| {
                        let w = c.state.as_ref()?.waiting.as_ref()?;
                        Some(format!(
                            "{} {}",
                            c.name,
                            w.reason.as_deref().unwrap_or("waiting")
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !waiting.is_empty() {
            out.push_str(&format!("; waiting: {}", waiting.join(", ")));
        }
        if self.metadata.deletion_timestamp.is_some() {
            out.push_str("; terminating");
        }
        out
    }
}

impl Summary for Deployment {
    fn summary(&self) -> String {
        let wanted = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        match &self.status {
            Some(s) => format!(
                "replicas {wanted} wanted, {} updated, {} ready, {} available (generation {} observed {})",
                s.updated_replicas.unwrap_or(0),
                s.ready_replicas.unwrap_or(0),
                s.available_replicas.unwrap_or(0),
                self.metadata.generation.unwrap_or(0),
                s.observed_generation.unwrap_or(0)
            ),
            None => format!("replicas {wanted} wanted, no status yet"),
        }
    }
}

impl Summary for DaemonSet {
    fn summary(&self) -> String {
        match &self.status {
            Some(s) => format!(
                "{} desired, {} scheduled, {} ready (generation {} observed {})",
                s.desired_number_scheduled,
                s.current_number_scheduled,
                s.number_ready,
                self.metadata.generation.unwrap_or(0),
                s.observed_generation.unwrap_or(0)
            ),
            None => "no status yet".into(),
        }
    }
}

impl Summary for ServiceAccount {
    fn summary(&self) -> String {
        "exists".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(ready: &str, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "limiting-factor"},
            "spec": {"taints": taints},
            "status": {"conditions": [{
                "type": "Ready", "status": ready, "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status."
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn node_conditions() {
        let unreachable = json!([{"key": TAINT_UNREACHABLE, "effect": "NoExecute"}]);
        let n = node("Unknown", unreachable);
        assert!(node_not_ready(Some(&n)));
        assert!(!node_ready(Some(&n)));
        assert!(node_has_taint(TAINT_UNREACHABLE, "NoExecute")(Some(&n)));
        assert!(!node_has_taint(TAINT_UNREACHABLE, "NoSchedule")(Some(&n)));
        assert!(!node_without_taint(TAINT_UNREACHABLE)(Some(&n)));
        assert_eq!(
            n.summary(),
            "Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node status.); \
             taints: node.kubernetes.io/unreachable:NoExecute"
        );
        let healthy = node("True", json!(null));
        assert!(node_ready(Some(&healthy)) && !node_not_ready(Some(&healthy)));
        assert!(node_without_taint(TAINT_UNREACHABLE)(Some(&healthy)));
        // Absent is neither ready nor not-ready nor untainted: a deleted node proves nothing.
        assert!(!node_ready(None) && !node_not_ready(None) && !node_without_taint("x")(None));
        let cond = node_not_ready.and(node_has_taint(TAINT_UNREACHABLE, "NoExecute"));
        assert!(cond.matches(Some(&n)));
    }

    #[test]
    fn pending_pod_carries_the_schedulers_message() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "huge"},
            "spec": {"containers": [{"name": "c", "image": "labtest/workload:1"}]},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu."
            }]}
        }))
        .unwrap();
        assert!(pod_pending_with_reason("Unschedulable")(Some(&pod)));
        assert!(!pod_bound(Some(&pod)) && !pod_running(Some(&pod)));
        assert!(pod_phase("Pending")(Some(&pod)));
        assert_eq!(
            scheduler_message(&pod).as_deref(),
            Some("0/3 nodes are available: 3 Insufficient cpu.")
        );
        assert!(
            pod.summary().contains("Unschedulable: 0/3 nodes"),
            "{}",
            pod.summary()
        );
    }

    #[test]
    fn workload_conditions_need_the_latest_generation() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 6, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "availableReplicas": 6}
        }))
        .unwrap();
        assert!(!deployment_available(6)(Some(&d)));
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "generation": 1},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "numberReady": 3,
                       "currentNumberScheduled": 3, "numberMisscheduled": 0}
        }))
        .unwrap();
        assert!(daemonset_ready(Some(&ds)));
        let mut empty = ds.clone();
        if let Some(s) = empty.status.as_mut() {
            s.desired_number_scheduled = 0;
            s.number_ready = 0;
        }
        assert!(!daemonset_ready(Some(&empty)), "0 == 0 is not ready");
    }
}
