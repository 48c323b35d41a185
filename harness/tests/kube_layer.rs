//! Tier 3: the kube layer against a real Kubernetes v1.20.2 control plane on the host (etcd,
//! apiserver, scheduler, controller-manager from `fixtures/k8s`) with simulated nodes.
//!
//! Each test starts its own control plane (~4 s, ~500 MB) so tests stay independent under
//! nextest's process-per-test model. Measured timings are printed with `eprintln!` (visible with
//! `--nocapture` / `--no-capture`, and on failure).
mod support_cp;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::error::Chain;
use harness::events::{EventKind, Events};
use harness::kube::access::{client_from, parse, point_at, write_kubeconfig};
use harness::kube::conditions::{
    node_has_taint, node_not_ready, node_ready, node_without_taint, pod_pending_with_reason,
    scheduler_message, TAINT_UNREACHABLE,
};
use harness::kube::gate::{self, FailedCheck};
use harness::kube::{apiserver_version, wait_for, GateBudgets, KubeAccess, ReadinessGate};
use harness::wait::{poll_until, Condition, Poll, Wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::Api;
use serde_json::json;
use support_cp::simulated::SimulatedNodes;
use support_cp::ControlPlane;

const NODES: [&str; 3] = ["sim-a", "sim-b", "sim-c"];
const IMAGE: &str = "labtest/workload:1";

async fn control_plane(test: &str) -> ControlPlane {
    match ControlPlane::start().await {
        Ok(cp) => {
            cp.print_timings(test);
            cp
        }
        Err(e) => panic!("expected a control plane on the host: {e}"),
    }
}

/// The gate as the fast tier runs it: host budgets, bound is enough (no kubelet runs pods).
fn host_gate(nodes: &[&str]) -> ReadinessGate {
    let mut gate = ReadinessGate::new(nodes.iter().copied(), IMAGE);
    gate.budgets = GateBudgets::host();
    gate.wait_running = false;
    gate
}

async fn gate_ready(cp: &ControlPlane, nodes: &[&str]) {
    if let Err(e) = host_gate(nodes)
        .run(cp.access.client(), &Events::discard(), gate::no_evidence)
        .await
    {
        panic!("expected the readiness gate to pass: {e}");
    }
}

/// The failed check an evidence hook was handed, once it was.
type Handed = Arc<Mutex<Option<FailedCheck>>>;

/// A gate evidence hook that remembers the failed check it was handed and returns `evidence`.
fn recording_hook(
    evidence: &str,
) -> (
    Handed,
    impl FnOnce(FailedCheck) -> futures::future::Ready<Vec<PathBuf>>,
) {
    let hooked = Arc::new(Mutex::new(None));
    let evidence = PathBuf::from(evidence);
    let hook = {
        let hooked = hooked.clone();
        move |failed: FailedCheck| {
            *hooked.lock().expect("hook lock") = Some(failed);
            futures::future::ready(vec![evidence])
        }
    };
    (hooked, hook)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gate_passes_on_three_simulated_nodes_through_a_rewritten_kubeconfig() {
    let cp = control_plane("gate passes").await;
    // Reach the apiserver the way a lab does: the server rewritten to the host port and the
    // certificate checked against a name in it (`kubernetes`), not against 127.0.0.1.
    let text = std::fs::read_to_string(&cp.kubeconfig).expect("pki.sh wrote admin.kubeconfig");
    let mut config = parse(&text, "pki admin.kubeconfig").expect("a kubeconfig");
    let server = format!("https://127.0.0.1:{}", cp.api_port);
    point_at(&mut config, &server, Some("kubernetes"), "test").expect("one cluster");
    let written = cp.dir.join("lab.kubeconfig");
    write_kubeconfig(&config, &written).expect("kubeconfig written");
    let access = KubeAccess::from_file(&written).await.expect("a client");
    let version = apiserver_version(access.client()).await.expect("/version");
    assert_eq!(version.git_version, "v1.20.2");
    // And a name the certificate does not carry must be refused: tls-server-name is honoured.
    point_at(&mut config, &server, Some("not-in-the-cert"), "test").expect("one cluster");
    let wrong = client_from(&config, "wrong name").await.expect("a client");
    assert!(
        apiserver_version(&wrong).await.is_err(),
        "expected TLS verification against tls-server-name not-in-the-cert to fail"
    );

    let client = access.client().clone();
    let _nodes = SimulatedNodes::register(&client, &NODES)
        .await
        .expect("simulated nodes registered");
    let events = Events::new();
    let recorder = events.record();
    let gate = host_gate(&NODES);
    let report = match gate.run(&client, &events, gate::no_evidence).await {
        Ok(report) => report,
        Err(e) => panic!("expected the readiness gate to pass: {e}"),
    };
    for (check, took) in &report.checks {
        eprintln!("[gate passes] {check}: {:.2}s", secs(*took));
    }
    eprintln!("[gate passes] whole gate: {:.2}s", secs(report.took));
    assert_eq!(
        report.server_version.map(|v| v.git_version).as_deref(),
        Some("v1.20.2")
    );
    let passed: Vec<String> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::CheckPassed { scope, check, .. } if scope == gate::SCOPE => Some(check),
            EventKind::CheckFailed { check, reason, .. } => {
                panic!("unexpected CheckFailed {check}: {reason}")
            }
            _ => None,
        })
        .collect();
    assert_eq!(passed, gate.check_names());
    // The probe pod is cleaned up.
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let left = pods
        .list(&ListParams::default().labels("labtest/role=readiness-probe"))
        .await
        .expect("list pods");
    assert!(left.items.is_empty(), "expected the probe pod deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_whose_nodes_never_register_times_out_with_what_it_saw() {
    let cp = control_plane("gate times out").await;
    let client = cp.access.client().clone();
    let _nodes = SimulatedNodes::register(&client, &["sim-a"])
        .await
        .expect("simulated node registered");
    let mut gate = host_gate(&["sim-a", "ghost-1", "ghost-2"]);
    gate.budgets.nodes_registered = gate::Budget::secs(5, 250);
    let events = Events::new();
    let recorder = events.record();
    let (hooked, hook) = recording_hook("/evidence/kubelet-journal.txt");
    let start = Instant::now();
    let err = gate
        .run(&client, &events, hook)
        .await
        .expect_err("expected the gate to time out");
    let took = start.elapsed();
    eprintln!("[gate times out] failed after {:.2}s: {err}", secs(took));
    let message = Chain(&err).to_string();
    assert_eq!(err.check, gate::CHECK_NODES_REGISTERED);
    assert!(
        message.contains("registered 1/3: sim-a; missing: ghost-1, ghost-2"),
        "expected the last observed state in: {message}"
    );
    assert!(
        message.contains("/evidence/kubelet-journal.txt"),
        "{message}"
    );
    // Within its deadline: apiserver check (~instant) + 5 s budget + one probe.
    assert!(took < Duration::from_secs(9), "took {took:?}");
    let failed = hooked.lock().expect("hook lock").clone();
    assert_eq!(
        failed.map(|f| f.check).as_deref(),
        Some(gate::CHECK_NODES_REGISTERED)
    );
    let failed_event = recorder.events().into_iter().find_map(|e| match e.kind {
        EventKind::CheckFailed {
            check,
            observed,
            evidence,
            ..
        } => Some((check, observed, evidence)),
        _ => None,
    });
    let (check, observed, evidence) = failed_event.expect("a CheckFailed event");
    assert_eq!(check, gate::CHECK_NODES_REGISTERED);
    assert!(observed.is_some_and(|o| o.contains("missing: ghost-1")));
    assert_eq!(evidence, [PathBuf::from("/evidence/kubelet-journal.txt")]);
}

/// A lab whose apiserver never answers: the gate's first check ends within its budget, saying
/// what it last saw (the refused connection), and hands the failure to the evidence hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_that_never_answers_fails_the_first_check_within_its_budget() {
    let cp = control_plane("apiserver never answers").await;
    let text = std::fs::read_to_string(&cp.kubeconfig).expect("pki.sh wrote admin.kubeconfig");
    let mut config = parse(&text, "pki admin.kubeconfig").expect("a kubeconfig");
    // A loopback port nothing listens on: bound, read, released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let server = format!("https://127.0.0.1:{closed}");
    point_at(&mut config, &server, Some("kubernetes"), "test").expect("one cluster");
    let client = client_from(&config, "closed port").await.expect("a client");
    let mut gate = host_gate(&NODES);
    gate.budgets.apiserver = gate::Budget::secs(4, 500);
    let (hooked, hook) = recording_hook("/evidence/apiserver-journal.txt");
    let start = Instant::now();
    let err = gate
        .run(&client, &Events::discard(), hook)
        .await
        .expect_err("expected the gate to fail on a closed port");
    let took = start.elapsed();
    eprintln!(
        "[apiserver never answers] failed after {:.2}s: {err}",
        secs(took)
    );
    let message = Chain(&err).to_string();
    assert_eq!(err.check, gate::CHECK_APISERVER);
    assert!(
        message.contains("Connection refused"),
        "expected the refused connection as the last observed state in: {message}"
    );
    assert!(
        message.contains("/evidence/apiserver-journal.txt"),
        "{message}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let failed = hooked.lock().expect("hook lock").clone();
    assert_eq!(
        failed.map(|f| f.check).as_deref(),
        Some(gate::CHECK_APISERVER)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_goes_unknown_and_unreachable_then_recovers() {
    let cp = control_plane("node failure").await;
    let client = cp.access.client().clone();
    let nodes = SimulatedNodes::register(&client, &NODES)
        .await
        .expect("simulated nodes registered");
    gate_ready(&cp, &NODES).await;
    let api = Api::<Node>::all(client.clone());
    let every = Duration::from_millis(500);

    let stopped = Instant::now();
    nodes.stop_heartbeats("sim-b");
    // Budgets: the notes measured Unknown at ~17 s and NoExecute at ~19 s with a 16 s grace
    // period; Kubernetes e2e allows NotReady within 3 min and the taint 30 s after.
    let wait = Wait::new("sim-b not ready", Duration::from_secs(40), every);
    wait_for(&api, "sim-b", node_not_ready, &wait)
        .await
        .expect("sim-b NotReady/Unknown");
    let t_not_ready = stopped.elapsed();
    let wait = Wait::new(
        "sim-b unreachable:NoExecute",
        Duration::from_secs(45),
        every,
    );
    let node = wait_for(
        &api,
        "sim-b",
        node_has_taint(TAINT_UNREACHABLE, "NoExecute"),
        &wait,
    )
    .await
    .expect("sim-b tainted unreachable:NoExecute");
    let t_no_execute = stopped.elapsed();
    assert!(node.is_some_and(|n| node_not_ready(Some(&n))));
    for other in ["sim-a", "sim-c"] {
        let node = api.get(other).await.expect("other node");
        assert!(node_ready(Some(&node)), "{other} must stay Ready");
    }

    let resumed = Instant::now();
    nodes
        .resume_heartbeats("sim-b")
        .await
        .expect("heartbeat accepted");
    // e2e: Ready within 1 min, taint removed within 30 s; the notes measured ~6 s for both.
    let wait = Wait::new("sim-b Ready again", Duration::from_secs(60), every);
    wait_for(&api, "sim-b", node_ready, &wait)
        .await
        .expect("sim-b Ready");
    let t_ready = resumed.elapsed();
    let wait = Wait::new("sim-b untainted", Duration::from_secs(30), every);
    wait_for(
        &api,
        "sim-b",
        node_ready.and(node_without_taint(TAINT_UNREACHABLE)),
        &wait,
    )
    .await
    .expect("sim-b untainted");
    let t_untainted = resumed.elapsed();
    eprintln!(
        "[node failure] heartbeats stopped -> Ready Unknown {:.1}s, unreachable:NoExecute {:.1}s; \
         resumed -> Ready {:.1}s, untainted {:.1}s",
        secs(t_not_ready),
        secs(t_no_execute),
        secs(t_ready),
        secs(t_untainted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_six_replica_deployment_is_bound_two_per_node() {
    let cp = control_plane("spread").await;
    let client = cp.access.client().clone();
    let _nodes = SimulatedNodes::register(&client, &NODES)
        .await
        .expect("simulated nodes registered");
    gate_ready(&cp, &NODES).await;
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "spread"},
        "spec": {
            "replicas": 6,
            "selector": {"matchLabels": {"app": "spread"}},
            "template": {
                "metadata": {"labels": {"app": "spread"}},
                "spec": {"containers": [{
                    "name": "web", "image": IMAGE, "imagePullPolicy": "Never",
                    "resources": {"requests": {"cpu": "100m", "memory": "16Mi"}}
                }]}
            }
        }
    }))
    .expect("a Deployment");
    let start = Instant::now();
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await
        .expect("Deployment created");
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let wait = Wait::new(
        "6 spread pods bound",
        Duration::from_secs(30),
        Duration::from_millis(100),
    );
    let per_node = poll_until(&wait, || bound_per_node(&pods, "app=spread"))
        .await
        .expect("all six bound");
    eprintln!(
        "[spread] 6 replicas bound in {:.2}s: {per_node:?}",
        secs(start.elapsed())
    );
    let expected: BTreeMap<String, usize> = NODES.iter().map(|n| (n.to_string(), 2)).collect();
    assert_eq!(per_node, expected);
}

async fn bound_per_node(pods: &Api<Pod>, selector: &str) -> Poll<BTreeMap<String, usize>> {
    let list = match pods.list(&ListParams::default().labels(selector)).await {
        Ok(list) => list,
        Err(e) => return Poll::Pending(format!("listing pods: {e}")),
    };
    let mut per_node = BTreeMap::new();
    for pod in &list.items {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *per_node.entry(node).or_insert(0) += 1;
        }
    }
    if list.items.len() == 6 && per_node.values().sum::<usize>() == 6 {
        Poll::Ready(per_node)
    } else {
        Poll::Pending(format!("{} pods, bound: {per_node:?}", list.items.len()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfittable_pod_stays_pending_with_the_schedulers_reason() {
    let cp = control_plane("unfittable").await;
    let client = cp.access.client().clone();
    let _nodes = SimulatedNodes::register(&client, &NODES)
        .await
        .expect("simulated nodes registered");
    gate_ready(&cp, &NODES).await;
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "huge"},
        "spec": {"containers": [{
            "name": "huge", "image": IMAGE, "imagePullPolicy": "Never",
            "resources": {"requests": {"cpu": "64"}}
        }]}
    }))
    .expect("a Pod");
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let start = Instant::now();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod created");
    let wait = Wait::new(
        "huge unschedulable",
        Duration::from_secs(30),
        Duration::from_millis(200),
    );
    let seen = wait_for(
        &pods,
        "huge",
        pod_pending_with_reason("Unschedulable"),
        &wait,
    )
    .await
    .expect("the scheduler gives up on it")
    .expect("the pod exists");
    let message = scheduler_message(&seen).unwrap_or_default();
    eprintln!(
        "[unfittable] reason after {:.2}s: {message}",
        secs(start.elapsed())
    );
    assert!(message.contains("Insufficient cpu"), "{message}");
    // And it stays that way: nothing binds it a little later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = pods.get("huge").await.expect("pod still there");
    assert!(
        pod_pending_with_reason("Unschedulable")(Some(&again)),
        "expected huge still Pending/Unschedulable"
    );
    assert!(again.spec.and_then(|s| s.node_name).is_none());
}
