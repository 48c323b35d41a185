//! The readiness gate: is the cluster really up?
//!
//! Modelled on Talos's cluster health checks: an ordered list of named checks, each with its
//! own deadline and poll interval, each reported as it starts, progresses (when what it sees
//! changes) and passes or fails. The first failure stops the gate with the check's last
//! observed state plus evidence files from a caller-supplied hook, so "the lab never became
//! ready" always says which step, what it saw, and where to look.
//!
//! The checks, in order (a later one is meaningless while an earlier one fails):
//! 1. `apiserver /readyz` - every apiserver readiness check passes (etcd, post-start hooks).
//! 2. `nodes registered` - every expected node has a Node object.
//! 3. `nodes Ready` - every expected node is Ready.
//! 4. `kube-system pods Running` - only when some are expected: each expected name prefix has at
//!    least one pod, and all of them are Running and Ready.
//! 5. `default ServiceAccount` - the controller-manager made it; pods cannot be created before.
//! 6. `schedulable` - a tiny pod with the lab's workload image (imagePullPolicy Never) gets bound
//!    to a node; optionally it must also reach Running.
//!
//! The gate depends only on a [`::kube::Client`]: it runs the same against a lab and against a
//! control plane on the host with simulated nodes (the fast tier), where the evidence hook is
//! [`no_evidence`].
//!
//! # Caveats
//! Deadlines are per check and count from the check's start, so the whole gate may take up to
//! their sum. The defaults ([`GateBudgets::tcg_three_vms`]) come from measurements of three
//! TCG guests booting at once, x1.5; the host tier uses [`GateBudgets::host`].
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::kube::api::{DeleteParams, ListParams, PostParams};
use ::kube::{Api, Client};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use serde_json::json;

use super::access::{apiserver_version, readyz, ServerVersion};
use super::conditions::{pod_bound, pod_running, Summary};
use super::{brief, status_code};
use crate::check::{observe, Failure};
use crate::events::Events;
use crate::wait::{Poll, Wait, WaitError};

/// The event scope of the gate's checks.
pub const SCOPE: &str = "readiness";

/// The gate's checks, in the order they run, as events and reports name them: the
/// apiserver answers `/readyz`.
pub const CHECK_APISERVER: &str = "apiserver /readyz";
/// The lab's nodes have registered with the apiserver.
pub const CHECK_NODES_REGISTERED: &str = "nodes registered";
/// Every node is Ready.
pub const CHECK_NODES_READY: &str = "nodes Ready";
/// Every kube-system pod is Running.
pub const CHECK_SYSTEM_PODS: &str = "kube-system pods Running";
/// The default namespace has its ServiceAccount (pods cannot be created before).
pub const CHECK_DEFAULT_SA: &str = "default ServiceAccount";
/// A probe pod gets bound (and Running, when asked).
pub const CHECK_SCHEDULABLE: &str = "schedulable";

/// QEMU start to three fixture guests answering, where [`GateBudgets::tcg_three_vms`] was
/// measured (26-31 s).
pub const REFERENCE_BOOT: Duration = Duration::from_secs(31);

/// One check's deadline and poll interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// How long the check may take.
    pub timeout: Duration,
    /// How long between two looks.
    pub interval: Duration,
}

impl Budget {
    /// `timeout` seconds, looking every `interval_ms` milliseconds.
    pub const fn secs(timeout: u64, interval_ms: u64) -> Self {
        Self {
            timeout: Duration::from_secs(timeout),
            interval: Duration::from_millis(interval_ms),
        }
    }

    fn wait(&self, what: &str) -> Wait {
        Wait::new(what, self.timeout, self.interval)
    }
}

/// Every check's [`Budget`].
#[derive(Debug, Clone, PartialEq)]
pub struct GateBudgets {
    /// For [`CHECK_APISERVER`].
    pub apiserver: Budget,
    /// For [`CHECK_NODES_REGISTERED`].
    pub nodes_registered: Budget,
    /// For [`CHECK_NODES_READY`].
    pub nodes_ready: Budget,
    /// For [`CHECK_SYSTEM_PODS`].
    pub system_pods: Budget,
    /// For [`CHECK_DEFAULT_SA`].
    pub default_service_account: Budget,
    /// Bound (and Running, when asked) within this.
    pub schedulable: Budget,
}

impl GateBudgets {
    /// Three guests booting at once under TCG (smp1 each), the lab's worst case. Measured from
    /// QEMU start: /readyz 105-116 s, scheduler + controller-manager 150-170 s, `default`
    /// ServiceAccount 213-237 s; x1.5 and rounded up. Each deadline counts from its check's start,
    /// i.e. after the previous check passed. Kubelet registration and pod start inside TCG guests
    /// were not measured: those budgets are generous guesses.
    pub fn tcg_three_vms() -> Self {
        Self {
            apiserver: Budget::secs(180, 2000),
            nodes_registered: Budget::secs(240, 2000),
            nodes_ready: Budget::secs(180, 2000),
            system_pods: Budget::secs(240, 2000),
            default_service_account: Budget::secs(180, 2000),
            schedulable: Budget::secs(240, 2000),
        }
    }

    /// [`GateBudgets::tcg_three_vms`] for a machine that booted the lab in `booted_in`: the
    /// budgets were measured where three TCG guests answered in [`REFERENCE_BOOT`], so a host
    /// that boots them k times slower (another CPU, a loaded or nested host) gets k times the
    /// deadlines (never less than 1x, at most 8x). Returns the factor too, for the report.
    pub fn tcg_three_vms_booted_in(booted_in: Duration) -> (Self, f64) {
        let factor = (booted_in.as_secs_f64() / REFERENCE_BOOT.as_secs_f64()).clamp(1.0, 8.0);
        (Self::tcg_three_vms().scaled(factor), factor)
    }

    /// A control plane on the host: /readyz ~3 s, `default` ServiceAccount ~4.5 s later.
    pub fn host() -> Self {
        Self {
            apiserver: Budget::secs(30, 200),
            nodes_registered: Budget::secs(30, 200),
            nodes_ready: Budget::secs(30, 200),
            system_pods: Budget::secs(60, 500),
            default_service_account: Budget::secs(30, 200),
            schedulable: Budget::secs(30, 200),
        }
    }

    /// A lab restored from a snapshot of a lab that passed the gate: the re-check only confirms
    /// the cluster came back, so each check gets seconds, not minutes.
    pub fn restored() -> Self {
        Self {
            apiserver: Budget::secs(30, 250),
            nodes_registered: Budget::secs(15, 250),
            nodes_ready: Budget::secs(30, 250),
            system_pods: Budget::secs(30, 250),
            default_service_account: Budget::secs(15, 250),
            schedulable: Budget::secs(30, 250),
        }
    }

    /// Every timeout multiplied by `factor` (intervals unchanged), e.g. for a slower machine.
    pub fn scaled(mut self, factor: f64) -> Self {
        for budget in [
            &mut self.apiserver,
            &mut self.nodes_registered,
            &mut self.nodes_ready,
            &mut self.system_pods,
            &mut self.default_service_account,
            &mut self.schedulable,
        ] {
            budget.timeout = budget.timeout.mul_f64(factor);
        }
        self
    }
}

impl Default for GateBudgets {
    fn default() -> Self {
        Self::tcg_three_vms()
    }
}

/// What the gate waits for. Build with [`ReadinessGate::new`], adjust the public fields.
#[derive(Debug, Clone)]
pub struct ReadinessGate {
    /// Node names that must register and become Ready.
    pub nodes: Vec<String>,
    /// Name prefixes of kube-system pods that must be Running and Ready (e.g. `coredns`);
    /// empty skips the check.
    pub system_pods: Vec<String>,
    /// The image of the `schedulable` probe pod; it must already be on the nodes.
    pub workload_image: String,
    /// Namespace of the probe pod (and of the ServiceAccount check).
    pub namespace: String,
    /// `schedulable` also waits for the probe pod to be Running (needs kubelets and the image).
    pub wait_running: bool,
    /// Each check's deadline.
    pub budgets: GateBudgets,
}

/// What a failed check hands the evidence hook.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedCheck {
    /// The check's name.
    pub check: String,
    /// Why it stopped (timed out after..., or a permanent failure).
    pub reason: String,
    /// The last state the check observed.
    pub last_observed: Option<String>,
}

/// The evidence hook for callers with nothing to collect (the fast tier).
pub async fn no_evidence(_failed: FailedCheck) -> Vec<PathBuf> {
    Vec::new()
}

/// An evidence hook for labs: `systemctl status` and the journal tail of each of `units` on each
/// machine (units a machine lacks say so in their file), written to
/// `<dir>/readiness-<check>-<machine>-<unit>.txt`, and each machine's failed units, load and
/// last journal warnings (`...-<machine>-health.txt`: the cause is often a unit nobody named,
/// or a guest too busy to answer), each under a
/// header naming the failed check and its last observed state. Returns the files written; a
/// file that cannot be written is left out rather than hiding the gate's own failure.
///
/// # Usage
/// ```no_run
/// # async fn demo(client: kube::Client, master: &harness::vm::Machine, node: &harness::vm::Machine) {
/// use harness::kube::{gate, ReadinessGate};
/// let machines = [master, node];
/// let dir = std::path::Path::new("/tmp/report/artifacts");
/// let hook = |failed| gate::collect_unit_evidence(&machines, &["kubelet.service"], dir, failed);
/// let gate = ReadinessGate::new(["grey-area"], "labtest/workload:1");
/// let _ = gate.run(&client, &harness::events::Events::discard(), hook).await;
/// # }
/// ```
pub async fn collect_unit_evidence(
    machines: &[&crate::vm::Machine],
    units: &[&str],
    dir: &std::path::Path,
    failed: FailedCheck,
) -> Vec<PathBuf> {
    if std::fs::create_dir_all(dir).is_err() {
        return Vec::new();
    }
    let slug = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .split('-')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("-")
    };
    let header = format!(
        "readiness check `{}` failed: {}\nlast observed: {}\n\n",
        failed.check,
        failed.reason,
        failed.last_observed.as_deref().unwrap_or("(nothing)")
    );
    let mut files = Vec::new();
    for machine in machines {
        let mut texts = Vec::new();
        for unit in units {
            texts.push((slug(unit), machine.unit_evidence(unit).await));
        }
        texts.push(("health".into(), machine.health_evidence().await));
        for (what, text) in texts {
            let path = dir.join(format!(
                "readiness-{}-{}-{what}.txt",
                slug(&failed.check),
                machine.name(),
            ));
            if std::fs::write(&path, format!("{header}{text}")).is_ok() {
                files.push(path);
            }
        }
    }
    files
}

/// What a passed gate observed.
#[derive(Debug, Clone)]
pub struct GateReport {
    /// Each check and how long it took, in order.
    pub checks: Vec<(String, Duration)>,
    /// The apiserver's version, when the gate got far enough to ask.
    pub server_version: Option<ServerVersion>,
    /// The whole gate.
    pub took: Duration,
}

/// The gate stopped at `check`.
#[derive(Debug, thiserror::Error)]
#[error(
    "readiness check `{check}` failed (passed before it: {}{})",
    list_or_none(passed),
    evidence_suffix(evidence)
)]
pub struct GateError {
    /// The check that failed.
    pub check: String,
    /// Why.
    pub source: WaitError,
    /// Files the evidence hook wrote.
    pub evidence: Vec<PathBuf>,
    /// Checks that passed before this one.
    pub passed: Vec<String>,
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn evidence_suffix(evidence: &[PathBuf]) -> String {
    if evidence.is_empty() {
        String::new()
    } else {
        let files: Vec<String> = evidence.iter().map(|p| p.display().to_string()).collect();
        format!("; evidence: {}", files.join(", "))
    }
}

impl ReadinessGate {
    /// A gate for `nodes` that probes scheduling with `workload_image`, with the TCG budgets,
    /// no expected system pods, namespace `default`, and waiting for the probe to run.
    pub fn new<I, S>(nodes: I, workload_image: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            nodes: nodes.into_iter().map(Into::into).collect(),
            system_pods: Vec::new(),
            workload_image: workload_image.into(),
            namespace: "default".into(),
            wait_running: true,
            budgets: GateBudgets::default(),
        }
    }

    /// The names of the checks this gate will run, in order.
    pub fn check_names(&self) -> Vec<&'static str> {
        let mut names = vec![CHECK_APISERVER, CHECK_NODES_REGISTERED, CHECK_NODES_READY];
        if !self.system_pods.is_empty() {
            names.push(CHECK_SYSTEM_PODS);
        }
        names.extend([CHECK_DEFAULT_SA, CHECK_SCHEDULABLE]);
        names
    }

    /// Runs the checks in order, emitting `Check*` events in scope `readiness`.
    ///
    /// On the first failure `evidence` is called once with the failed check; the files it
    /// returns go into the `CheckFailed` event and the error. The hook runs before the event is
    /// emitted, so a report already shows the evidence with the failure.
    ///
    /// # Errors
    /// [`GateError`] naming the check, its last observed state and the evidence files.
    ///
    /// # Usage
    /// ```no_run
    /// # async fn demo(client: kube::Client) -> Result<(), Box<harness::kube::GateError>> {
    /// use harness::kube::{gate, GateBudgets, ReadinessGate};
    /// let mut gate = ReadinessGate::new(["a", "b", "c"], "labtest/workload:1");
    /// gate.budgets = GateBudgets::host();
    /// gate.wait_running = false;
    /// let report = gate.run(&client, &harness::events::Events::discard(), gate::no_evidence).await?;
    /// println!("ready in {:.1}s", report.took.as_secs_f64());
    /// # Ok(()) }
    /// ```
    pub async fn run<H, Fut>(
        &self,
        client: &Client,
        events: &Events,
        evidence: H,
    ) -> Result<GateReport, Box<GateError>>
    where
        H: FnOnce(FailedCheck) -> Fut,
        Fut: Future<Output = Vec<PathBuf>>,
    {
        let start = Instant::now();
        let mut checks = Vec::new();
        let mut version = None;
        for name in self.check_names() {
            let result = match name {
                CHECK_APISERVER => {
                    let wait = self.budgets.apiserver.wait(name);
                    observe(events, SCOPE, &wait, || self.apiserver(client))
                        .await
                        .map(|(v, took)| {
                            version = v;
                            took
                        })
                }
                CHECK_NODES_REGISTERED => {
                    let wait = self.budgets.nodes_registered.wait(name);
                    observe(events, SCOPE, &wait, || self.registered(client))
                        .await
                        .map(|(_, took)| took)
                }
                CHECK_NODES_READY => {
                    let wait = self.budgets.nodes_ready.wait(name);
                    observe(events, SCOPE, &wait, || self.ready(client))
                        .await
                        .map(|(_, took)| took)
                }
                CHECK_SYSTEM_PODS => {
                    let wait = self.budgets.system_pods.wait(name);
                    observe(events, SCOPE, &wait, || self.system_pods(client))
                        .await
                        .map(|(_, took)| took)
                }
                CHECK_DEFAULT_SA => {
                    let wait = self.budgets.default_service_account.wait(name);
                    observe(events, SCOPE, &wait, || self.service_account(client))
                        .await
                        .map(|(_, took)| took)
                }
                _ => self.schedulable(client, events).await,
            };
            match result {
                Ok(took) => checks.push((name.to_string(), took)),
                Err(failure) => {
                    let files = evidence(FailedCheck {
                        check: name.into(),
                        reason: failure.reason(),
                        last_observed: failure.last_observed(),
                    })
                    .await;
                    let source = failure.report(events, SCOPE, name, files.clone());
                    return Err(Box::new(GateError {
                        check: name.into(),
                        source,
                        evidence: files,
                        passed: checks.into_iter().map(|(n, _)| n).collect(),
                    }));
                }
            }
        }
        Ok(GateReport {
            checks,
            server_version: version,
            took: start.elapsed(),
        })
    }

    async fn apiserver(&self, client: &Client) -> Poll<Option<ServerVersion>> {
        match readyz(client).await {
            // The version is only for the report: failing to read it is no reason to wait.
            Ok(()) => Poll::Ready(apiserver_version(client).await.ok()),
            Err(seen) => Poll::Pending(seen),
        }
    }

    async fn nodes(&self, client: &Client) -> Result<BTreeMap<String, Node>, String> {
        let api = Api::<Node>::all(client.clone());
        match api.list(&ListParams::default()).await {
            Ok(list) => Ok(list
                .items
                .into_iter()
                .filter_map(|n| Some((n.metadata.name.clone()?, n)))
                .collect()),
            Err(e) => Err(format!("listing nodes: {}", brief(&e))),
        }
    }

    async fn registered(&self, client: &Client) -> Poll<()> {
        let nodes = match self.nodes(client).await {
            Ok(nodes) => nodes,
            Err(seen) => return Poll::Pending(seen),
        };
        let (present, missing): (Vec<&String>, Vec<&String>) =
            self.nodes.iter().partition(|n| nodes.contains_key(*n));
        if missing.is_empty() {
            return Poll::Ready(());
        }
        let join = |v: &[&String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            }
        };
        let others: Vec<&String> = nodes.keys().filter(|n| !self.nodes.contains(n)).collect();
        let mut seen = format!(
            "registered {}/{}: {}; missing: {}",
            present.len(),
            self.nodes.len(),
            join(&present),
            join(&missing)
        );
        if !others.is_empty() {
            seen.push_str(&format!("; unexpected nodes: {}", join(&others)));
        }
        Poll::Pending(seen)
    }

    async fn ready(&self, client: &Client) -> Poll<()> {
        let nodes = match self.nodes(client).await {
            Ok(nodes) => nodes,
            Err(seen) => return Poll::Pending(seen),
        };
        let not_ready: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|name| match nodes.get(name) {
                Some(node) if super::conditions::node_ready(Some(node)) => None,
                Some(node) => Some(format!("{name} {}", node.summary())),
                None => Some(format!("{name} is no longer registered")),
            })
            .collect();
        if not_ready.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!(
                "{}/{} Ready; {}",
                self.nodes.len() - not_ready.len(),
                self.nodes.len(),
                not_ready.join("; ")
            ))
        }
    }

    async fn system_pods(&self, client: &Client) -> Poll<()> {
        let api = Api::<Pod>::namespaced(client.clone(), "kube-system");
        let pods = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) => return Poll::Pending(format!("listing kube-system pods: {}", brief(&e))),
        };
        let mut problems = Vec::new();
        for prefix in &self.system_pods {
            let matching: Vec<&Pod> = pods
                .iter()
                .filter(|p| {
                    p.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(prefix.as_str()))
                })
                .collect();
            if matching.is_empty() {
                problems.push(format!("{prefix}*: no pod yet"));
            }
            for pod in matching {
                if !(pod_running(Some(pod)) && pod_ready(pod)) {
                    problems.push(format!(
                        "{} {}",
                        pod.metadata.name.as_deref().unwrap_or("?"),
                        pod.summary()
                    ));
                }
            }
        }
        if problems.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(problems.join("; "))
        }
    }

    async fn service_account(&self, client: &Client) -> Poll<()> {
        let api = Api::<ServiceAccount>::namespaced(client.clone(), &self.namespace);
        match api.get_opt("default").await {
            Ok(Some(_)) => Poll::Ready(()),
            Ok(None) => Poll::Pending(format!(
                "ServiceAccount {}/default does not exist yet (the controller-manager creates it)",
                self.namespace
            )),
            Err(e) => Poll::Pending(format!("reading ServiceAccount: {}", brief(&e))),
        }
    }

    /// Creates the probe pod, waits for it, and deletes it whatever happened.
    async fn schedulable(&self, client: &Client, events: &Events) -> Result<Duration, Failure> {
        let api = Api::<Pod>::namespaced(client.clone(), &self.namespace);
        let name = probe_name();
        let pod: Pod = match serde_json::from_value(probe_pod(&name, &self.workload_image)) {
            Ok(pod) => pod,
            Err(e) => {
                return Err(Failure {
                    error: WaitError::Failed {
                        what: CHECK_SCHEDULABLE.into(),
                        elapsed: Duration::ZERO,
                        reason: format!("the probe pod does not serialize: {e}"),
                    },
                    took: Duration::ZERO,
                    measured: None,
                })
            }
        };
        let wait = self.budgets.schedulable.wait(CHECK_SCHEDULABLE);
        let created = Mutex::new(false);
        let result = observe(events, SCOPE, &wait, || {
            let (api, pod, name, created) = (&api, &pod, &name, &created);
            async move {
                if !*created.lock().unwrap_or_else(|e| e.into_inner()) {
                    match api.create(&PostParams::default(), pod).await {
                        Ok(_) => *created.lock().unwrap_or_else(|e| e.into_inner()) = true,
                        Err(e) if matches!(status_code(&e), Some(401 | 403)) => {
                            return Poll::Failed(format!(
                                "creating probe pod {name}: {}",
                                brief(&e)
                            ))
                        }
                        Err(e) => {
                            return Poll::Pending(format!(
                                "creating probe pod {name}: {}",
                                brief(&e)
                            ))
                        }
                    }
                }
                match api.get_opt(name).await {
                    Ok(Some(p))
                        if pod_bound(Some(&p)) && (!self.wait_running || pod_running(Some(&p))) =>
                    {
                        Poll::Ready(())
                    }
                    Ok(Some(p))
                        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed") =>
                    {
                        Poll::Failed(format!("probe pod {name} failed: {}", p.summary()))
                    }
                    Ok(Some(p)) => Poll::Pending(format!("probe pod {name}: {}", p.summary())),
                    Ok(None) => Poll::Pending(format!("probe pod {name} vanished after creation")),
                    Err(e) => Poll::Pending(format!("reading probe pod {name}: {}", brief(&e))),
                }
            }
        })
        .await;
        if *created.lock().unwrap_or_else(|e| e.into_inner()) {
            // Grace 0: without a kubelet (the fast tier) a graceful delete of a bound pod never
            // completes, and a lab's kubelet stops the container anyway.
            let _ = api
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
        }
        result.map(|(_, took)| took)
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn probe_name() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("labtest-readiness-probe-{millis:x}")
}

/// The probe: the smallest pod that proves a node accepts work. `Never` pulls because labs have
/// no registry; `sleep` because the probe must not exit (a Succeeded pod is not Running).
fn probe_pod(name: &str, image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "labtest", "labtest/role": "readiness-probe"}
        },
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "probe",
                "image": image,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
                "resources": {"requests": {"cpu": "1m", "memory": "4Mi"}}
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_ordered_and_system_pods_optional() {
        let mut gate = ReadinessGate::new(["a"], "img");
        assert_eq!(
            gate.check_names(),
            [
                CHECK_APISERVER,
                CHECK_NODES_REGISTERED,
                CHECK_NODES_READY,
                CHECK_DEFAULT_SA,
                CHECK_SCHEDULABLE
            ]
        );
        gate.system_pods.push("coredns".into());
        assert_eq!(gate.check_names()[3], CHECK_SYSTEM_PODS);
    }

    #[test]
    fn budgets_scale_timeouts_only() {
        let b = GateBudgets::host().scaled(1.5);
        assert_eq!(b.apiserver.timeout, Duration::from_secs(45));
        assert_eq!(b.apiserver.interval, Duration::from_millis(200));
    }

    #[test]
    fn gate_error_names_check_state_and_evidence() {
        let err = GateError {
            check: CHECK_NODES_READY.into(),
            source: WaitError::Timeout {
                what: CHECK_NODES_READY.into(),
                elapsed: Duration::from_secs(180),
                last_observed: "2/3 Ready; limiting-factor Ready=False (KubeletNotReady: cni)"
                    .into(),
            },
            evidence: vec!["/tmp/r/limiting-factor-kubelet.txt".into()],
            passed: vec![CHECK_APISERVER.into(), CHECK_NODES_REGISTERED.into()],
        };
        assert_eq!(
            crate::error::Chain(&err).to_string(),
            "readiness check `nodes Ready` failed (passed before it: apiserver /readyz, nodes registered; \
             evidence: /tmp/r/limiting-factor-kubelet.txt): timed out after 180.0s waiting for nodes Ready; \
             last observed: 2/3 Ready; limiting-factor Ready=False (KubeletNotReady: cni)"
        );
    }
}
