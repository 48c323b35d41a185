//! Runs a [`ScenarioFile`] against a booted lab: `labtest run --scenario-file FILE`.
//!
//! Steps run in file order. Each is one named check in the scenario's scope, called
//! `step N (line L): <the step as the file says it>` (e.g.
//! `step 3 (line 14): wait node-not-ready limiting-factor (deadline 3m)`), so the live view,
//! the JUnit testcase and the JSON report all point back at the file. A step's `note` is
//! recorded under the same name before it runs. The first failing step ends the file; its error
//! carries that name, hence the step number and line.
//!
//! What the steps do:
//! * `apply` / `manifest`: YAML, one or more documents separated by `---` (empty documents are
//!   skipped), each applied in order with server-side apply (as `kubectl apply --server-side`;
//!   Kubernetes 1.20 has it), its API found by discovery from `apiVersion` and `kind`, so any
//!   kind the cluster serves works, custom resources included. A namespaced object goes to its
//!   own `metadata.namespace`, else the step's `namespace`, else `default`; the two disagreeing
//!   is an error, as with `kubectl apply -n`. The namespace must exist: a manifest creates it
//!   with a `kind: Namespace` document before the objects that use it.
//!   [`check_manifests`] parses every manifest before the lab boots.
//! * `fault`: the harness's own faults (`vm::Machine`, `lab::Lab`); `stop-unit`/`start-unit`
//!   run `systemctl` in the guest and fail on a non-zero exit.
//! * `wait`: polled at the step's `interval` until its `timeout`, with the conditions of
//!   `harness::kube::conditions`; a timeout fails with the last state seen.
//! * `rebuild`: builds the generation's flake attribute and switches its machine to it, as the
//!   built-in rebuild-rollback does. A non-zero `switch-to-configuration` is recorded, not
//!   failed: the generation may be meant to break a unit (follow with `wait`/`expect`).
//!   `rollback`: back to the generation the machine ran before this file's last `rebuild` of it
//!   (by number, not `nix-env --rollback`'s next-lower one; see harness::nix::switches). When
//!   the file ends, every machine it rebuilt goes back to the generation it started on.
//! * `expect`: looked at once; failing says what was expected and what was seen.
//! * `sleep`: lets time pass.
//!
//! Nothing a file creates is deleted afterwards: objects stay for the report's `kubectl` views
//! and for `--keep` debugging, and the lab itself is thrown away at the end of the run. Files
//! run in one `labtest run` share the cluster, so a file that must start clean uses names (or a
//! namespace) of its own.
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use harness::check;
use harness::error::Chain;
use harness::kube::conditions::{
    daemonset_ready, deployment_available, deployment_rolled_out, node_has_taint, node_not_ready,
    node_ready, node_without_taint, pod_on_node, pod_phase, pod_running,
};
use harness::kube::manifest::{self, parse_manifests};
use harness::kube::Summary;
use harness::lab::{build_attr, lab_nix};
use harness::nix::generation::sh_quote;
use harness::nix::SystemProfile;
use harness::vm::Machine;
use harness::wait::{Condition, Poll, Since, Wait};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::Resource;
use serde::de::DeserializeOwned;

use crate::ctx::{Ctx, ScenarioError};
use crate::file::{
    Action, Apply, Expectation, Fault, FileError, Label, ManifestSource, PodSelector, Rebuild,
    Rollback, ScenarioFile, Step, TaintEffect, WaitFor, WaitStep,
};

/// Deadline of a step that has none of its own (apply, most faults, expectations): each does a
/// handful of API or QMP calls, so only a hung lab takes this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// A guest command inside a wait or expectation: bounded on its own so a probe cannot use a
/// whole wait's deadline on one call.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `file`'s steps in order against `ctx`'s lab; the first failure ends it.
///
/// # Errors
/// [`ScenarioError::Failed`] when the lab did not do what a step expects, and
/// [`ScenarioError::Error`] when a step could not be carried out (an unreadable manifest, a
/// kind the cluster does not serve, a failed build); both name the step and its line.
pub async fn run_file(file: &ScenarioFile, ctx: &Ctx<'_>) -> Result<(), ScenarioError> {
    if let Some(description) = &file.description {
        ctx.note(&file.name, description.clone());
    }
    // Waits after a fault measure their delay from it, as the built-in node-failure does.
    let mut last_fault: Option<Since> = None;
    for step in &file.steps {
        let label = step_label(step);
        if let Some(note) = &step.note {
            ctx.note(&label, note.clone());
        }
        if let Action::Fault(fault) = &step.action {
            last_fault = Some(Since::now(fault.to_string()));
        }
        run_step(ctx, file, step, &label, last_fault.as_ref())
            .await
            .map_err(|e| in_step(&label, e))?;
    }
    Ok(())
}

/// Parses every manifest of `file` (inline or on disk), so a YAML mistake is refused before the
/// lab boots rather than after.
///
/// # Errors
/// [`FileError::Invalid`] naming the scenario file, the step's line and field, and where in the
/// manifest the problem is.
pub fn check_manifests(file: &ScenarioFile) -> Result<(), FileError> {
    for step in &file.steps {
        if let Action::Apply(apply) = &step.action {
            let field = match apply.source {
                ManifestSource::File { .. } => "apply",
                ManifestSource::Inline(_) => "manifest",
            };
            let invalid = |message: String| FileError::Invalid {
                path: file.path.clone(),
                line: step.line_of(field),
                field: format!("step[{}].{field}", step.number),
                message,
            };
            let (text, origin) = manifest_text(apply).map_err(invalid)?;
            let manifests = parse_manifests(&text, &origin).map_err(|e| invalid(e.to_string()))?;
            for manifest in &manifests {
                manifest
                    .namespace(apply.namespace.as_deref())
                    .map_err(|e| invalid(format!("{origin}: {e}")))?;
            }
        }
    }
    Ok(())
}

/// How a step is named in reports and errors.
pub fn step_label(step: &Step) -> String {
    format!("step {} (line {}): {}", step.number, step.line, step.action)
}

/// Puts the step's name on an error that does not carry it yet (a check named like the step's
/// action, e.g. `expect ...`, is the step itself: saying it twice only makes the line longer).
fn in_step(label: &str, error: ScenarioError) -> ScenarioError {
    match error {
        ScenarioError::Failed { check, reason }
            if check == label || label.ends_with(&format!(": {check}")) =>
        {
            ScenarioError::Failed {
                check: label.to_string(),
                reason,
            }
        }
        ScenarioError::Failed { check, reason } => ScenarioError::Failed {
            check: label.to_string(),
            reason: format!("{check}: {reason}"),
        },
        ScenarioError::Error(message) => ScenarioError::Error(format!("{label}: {message}")),
    }
}

async fn run_step(
    ctx: &Ctx<'_>,
    file: &ScenarioFile,
    step: &Step,
    label: &str,
    since: Option<&Since>,
) -> Result<(), ScenarioError> {
    match &step.action {
        Action::Apply(apply) => {
            let applied = once(ctx, label, STEP_TIMEOUT, apply_manifests(ctx, apply)).await?;
            ctx.note(label, applied.join("\n"));
            Ok(())
        }
        Action::Fault(fault) => once(ctx, label, fault.budget(), inject(ctx, fault)).await,
        Action::Wait(wait) => wait_step(ctx, wait, label, since).await,
        Action::Rebuild(rebuild) => {
            let text = once(ctx, label, rebuild.timeout, rebuild_step(ctx, rebuild)).await?;
            ctx.note(label, text);
            Ok(())
        }
        Action::Rollback(rollback) => {
            let text = once(ctx, label, rollback.timeout, rollback_step(ctx, rollback)).await?;
            ctx.note(label, text);
            Ok(())
        }
        Action::Expect(expectation) => {
            let seen = once(ctx, label, STEP_TIMEOUT, expect(ctx, expectation)).await?;
            ctx.note(label, seen);
            Ok(())
        }
        Action::Sleep(duration) => {
            // Reported as a check too, so the report's timeline shows the pause.
            once(ctx, label, *duration + STEP_TIMEOUT, async {
                tokio::time::sleep(*duration).await;
                Ok(())
            })
            .await
        }
    }
    .map_err(|e| match e {
        // A scenario-file step that cannot be done is most often a mistake in the file: say which.
        ScenarioError::Error(message) => {
            ScenarioError::Error(format!("{message} (in {})", file.path.display()))
        }
        failed => failed,
    })
}

/// Runs a step that does something once (no polling) as a named check: started, then passed
/// or failed, bounded by `timeout`. A step that overruns is a lab that hangs: a failure.
async fn once<T>(
    ctx: &Ctx<'_>,
    label: &str,
    timeout: Duration,
    body: impl Future<Output = Result<T, ScenarioError>>,
) -> Result<T, ScenarioError> {
    check::once(ctx.events, &ctx.scope, label, timeout, body)
        .await
        .map_err(|e| {
            e.unwrap_or_else(|| ScenarioError::Failed {
                check: label.to_string(),
                reason: format!("did not finish within {:.0}s", timeout.as_secs_f64()),
            })
        })
}

fn machine<'c>(ctx: &'c Ctx<'_>, name: &str) -> Result<&'c Machine, ScenarioError> {
    ctx.lab
        .machine(name)
        .map(|m| m.as_ref())
        .map_err(|e| ScenarioError::error("finding the machine", e))
}

// ---- apply ----

/// The manifest's text and how to name it in messages.
fn manifest_text(apply: &Apply) -> Result<(String, String), String> {
    match &apply.source {
        ManifestSource::File { path, written } => std::fs::read_to_string(path)
            .map(|text| (text, written.clone()))
            .map_err(|e| format!("cannot read manifest {written} ({}): {e}", path.display())),
        ManifestSource::Inline(text) => Ok((text.clone(), "inline manifest".to_string())),
    }
}

/// Applies every document in order; returns one line per object applied.
async fn apply_manifests(ctx: &Ctx<'_>, apply: &Apply) -> Result<Vec<String>, ScenarioError> {
    let (text, origin) = manifest_text(apply).map_err(ScenarioError::Error)?;
    manifest::apply(&ctx.client, &text, &origin, apply.namespace.as_deref())
        .await
        .map_err(|e| ScenarioError::Error(Chain(&e).to_string()))
}

// ---- faults, rebuild, rollback ----

/// Puts the fault on the lab through the harness's one dispatcher. A fault the lab's state
/// refuses (a start whose guest never answers, a unit that would not stop) is the lab
/// misbehaving; anything else is the harness failing to act.
async fn inject(ctx: &Ctx<'_>, fault: &Fault) -> Result<(), ScenarioError> {
    match ctx.lab.inject(fault).await {
        Ok(done) => {
            ctx.note(&format!("fault {fault}"), done);
            Ok(())
        }
        Err(harness::lab::LabError::FaultRefused { reason, .. }) => Err(ScenarioError::Failed {
            check: format!("fault {fault}"),
            reason,
        }),
        Err(e) => Err(ScenarioError::error(&format!("fault {fault}"), e)),
    }
}

/// Builds the generation and switches its machine to it; returns what happened, for the report.
async fn rebuild_step(ctx: &Ctx<'_>, rebuild: &Rebuild) -> Result<String, ScenarioError> {
    let spec = ctx.lab.spec();
    // Validated before boot; looked up again because the lab is the authority at run time.
    let generation = spec
        .generations
        .iter()
        .find(|g| g.name == rebuild.generation)
        .ok_or_else(|| {
            ScenarioError::Error(format!(
                "lab {} has no [[generation]] named {:?}",
                spec.name, rebuild.generation
            ))
        })?;
    let out = ctx.work_dir.join(format!("generation-{}", generation.name));
    // `once` bounds build and switch together by the step's timeout; the build is handed the
    // same deadline only because build_attr requires one (it can never be the shorter one).
    let toplevel = build_attr(
        ctx.lab_dir,
        spec,
        &generation.attr,
        &out,
        ctx.events,
        rebuild.timeout,
    )
    .await
    .map_err(|e| ScenarioError::error(&format!("building generation {}", generation.name), e))?;
    let nix = lab_nix(spec).map_err(|e| ScenarioError::error("finding nix", e))?;
    let activation = ctx
        .switches
        .switch_to(
            &SystemProfile::default(),
            &nix,
            machine(ctx, &generation.machine)?,
            &toplevel,
        )
        .await?;
    Ok(format!(
        "{} = {}; switch-to-configuration on {} exited {}{}",
        generation.name,
        toplevel.display(),
        generation.machine,
        activation.status,
        activation_tail(&activation.stderr)
    ))
}

async fn rollback_step(ctx: &Ctx<'_>, rollback: &Rollback) -> Result<String, ScenarioError> {
    let profile = SystemProfile::default();
    let guest = machine(ctx, &rollback.machine)?;
    let activation = ctx.switches.roll_back(&profile, guest).await?;
    let now = profile
        .current(guest)
        .await
        .map_err(|e| ScenarioError::error("reading the current generation", e))?;
    Ok(format!(
        "{} runs {} after the rollback; switch-to-configuration exited {}{}",
        rollback.machine,
        now.running.as_deref().unwrap_or("(unknown)"),
        activation.status,
        activation_tail(&activation.stderr)
    ))
}

fn activation_tail(stderr: &str) -> String {
    let tail = harness::wait::tail_chars(stderr.trim(), 400);
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

// ---- waits ----

/// Runs a wait step as a check named `label`; with `since` (the file's last fault), it also
/// reports the delay from that fault.
async fn wait_step(
    ctx: &Ctx<'_>,
    step: &WaitStep,
    label: &str,
    since: Option<&Since>,
) -> Result<(), ScenarioError> {
    let mut wait = Wait::new(label, step.timeout, step.interval);
    wait.since = since.cloned();
    let wait = &wait;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    match &step.condition {
        WaitFor::NodeReady { node } => wait_object(ctx, &nodes, node, node_ready, wait).await,
        WaitFor::NodeNotReady { node } => {
            wait_object(ctx, &nodes, node, node_not_ready, wait).await
        }
        WaitFor::NodeHasLabel {
            node,
            label: wanted,
        }
        | WaitFor::NodeLacksLabel {
            node,
            label: wanted,
        } => {
            let want = matches!(step.condition, WaitFor::NodeHasLabel { .. });
            let cond = |n: Option<&Node>| {
                n.is_some_and(|n| label_matches(wanted, node_label(n, &wanted.key)) == want)
            };
            wait_object(ctx, &nodes, node, cond, wait).await
        }
        WaitFor::NodeTainted { node, taint } => match taint.effect {
            Some(effect) => {
                let cond = node_has_taint(&taint.key, effect.name());
                wait_object(ctx, &nodes, node, cond, wait).await
            }
            None => {
                let cond = any_effect(&taint.key);
                wait_object(ctx, &nodes, node, cond, wait).await
            }
        },
        WaitFor::NodeUntainted { node, taint } => match taint.effect {
            Some(effect) => {
                // The node must exist: a deleted node is not an untainted one.
                let exists = |n: Option<&Node>| n.is_some();
                let cond = exists.and(node_has_taint(&taint.key, effect.name()).not());
                wait_object(ctx, &nodes, node, cond, wait).await
            }
            None => {
                let cond = node_without_taint(&taint.key);
                wait_object(ctx, &nodes, node, cond, wait).await
            }
        },
        WaitFor::DeploymentAvailable {
            namespace,
            deployment,
            replicas,
        } => {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
            let replicas = replicas.map(|r| i32::try_from(r).unwrap_or(i32::MAX));
            let cond = move |d: Option<&Deployment>| {
                // Unset: as many as the Deployment asks for now (Kubernetes defaults to 1).
                let wanted = replicas
                    .unwrap_or_else(|| d.and_then(|d| d.spec.as_ref()?.replicas).unwrap_or(1));
                deployment_available(wanted)(d)
            };
            wait_object(ctx, &api, deployment, cond, wait).await
        }
        WaitFor::DeploymentRolledOut {
            namespace,
            deployment,
        } => {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
            wait_object(ctx, &api, deployment, deployment_rolled_out, wait).await
        }
        WaitFor::DaemonSetReady {
            namespace,
            daemonset,
        } => {
            let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), namespace);
            wait_object(ctx, &api, daemonset, daemonset_ready, wait).await
        }
        WaitFor::PodRunning {
            namespace,
            pods,
            node,
            count,
        } => {
            let on_node = node.as_deref().map(pod_on_node);
            let cond = move |p: &Pod| {
                pod_running(Some(p)) && on_node.as_ref().is_none_or(|on| on(Some(p)))
            };
            wait_pods(ctx, namespace, pods, *count, cond, wait).await
        }
        WaitFor::PodPending {
            namespace,
            pods,
            count,
        } => {
            let pending = pod_phase("Pending");
            let cond = move |p: &Pod| pending(Some(p));
            wait_pods(ctx, namespace, pods, *count, cond, wait).await
        }
        WaitFor::UnitActive { machine: m, unit } => wait_unit(ctx, m, unit, "active", wait).await,
        WaitFor::UnitFailed { machine: m, unit } => wait_unit(ctx, m, unit, "failed", wait).await,
        WaitFor::CommandSucceeds {
            machine: m,
            command,
        } => {
            let guest = machine(ctx, m)?;
            ctx.run_wait(wait, || async {
                match guest.exec(command, EXEC_TIMEOUT).await {
                    Ok(out) if out.status == 0 => Poll::Ready(()),
                    Ok(out) => Poll::Pending(format!(
                        "exit {}: {}",
                        out.status,
                        harness::wait::tail_chars(
                            format!("{}{}", out.stdout_str(), out.stderr_str()).trim(),
                            300
                        )
                    )),
                    Err(e) => Poll::Pending(Chain(&e).to_string()),
                }
            })
            .await
        }
    }
}

/// A taint with `key`, whatever its effect.
fn any_effect(key: &str) -> impl Condition<Node> {
    let [a, b, c] = [
        TaintEffect::NoSchedule,
        TaintEffect::PreferNoSchedule,
        TaintEffect::NoExecute,
    ]
    .map(|effect| node_has_taint(key, effect.name()));
    a.or(b).or(c)
}

/// Polls one object until `condition` holds, at the step's own interval.
async fn wait_object<K, C>(
    ctx: &Ctx<'_>,
    api: &Api<K>,
    name: &str,
    condition: C,
    wait: &Wait,
) -> Result<(), ScenarioError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Summary,
    K::DynamicType: Default,
    C: Condition<K>,
{
    ctx.wait_for(api, name, condition, wait).await.map(|_| ())
}

/// Lists the selected pods until at least `count` of them (not terminating) satisfy `cond`.
async fn wait_pods(
    ctx: &Ctx<'_>,
    namespace: &str,
    pods: &PodSelector,
    count: u32,
    cond: impl Fn(&Pod) -> bool,
    wait: &Wait,
) -> Result<(), ScenarioError> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let params = list_params(pods);
    let (api, params, cond) = (&api, &params, &cond);
    ctx.run_wait(wait, || async move {
        let list = match api.list(params).await {
            Ok(list) => list.items,
            Err(e) => return Poll::Pending(format!("listing pods {pods}: {}", Chain(&e))),
        };
        let live: Vec<&Pod> = list
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let matching = live.iter().filter(|p| cond(p)).count();
        if matching >= count as usize {
            Poll::Ready(())
        } else {
            Poll::Pending(format!(
                "{matching} of at least {count} wanted; {}",
                describe_pods(&live)
            ))
        }
    })
    .await
}

fn list_params(pods: &PodSelector) -> ListParams {
    match pods {
        PodSelector::Name(name) => ListParams::default().fields(&format!("metadata.name={name}")),
        PodSelector::Labels(selector) => ListParams::default().labels(selector),
    }
}

fn describe_pods(pods: &[&Pod]) -> String {
    if pods.is_empty() {
        return "no such pod".to_string();
    }
    let mut parts: Vec<String> = pods
        .iter()
        .take(5)
        .map(|p| {
            format!(
                "{}: {}",
                p.metadata.name.as_deref().unwrap_or("?"),
                p.summary()
            )
        })
        .collect();
    if pods.len() > 5 {
        parts.push(format!("and {} more", pods.len() - 5));
    }
    parts.join("; ")
}

async fn wait_unit(
    ctx: &Ctx<'_>,
    machine_name: &str,
    unit: &str,
    wanted: &str,
    wait: &Wait,
) -> Result<(), ScenarioError> {
    let guest = machine(ctx, machine_name)?;
    let command = format!("systemctl show -p ActiveState --value {}", sh_quote(unit));
    let command = &command;
    ctx.run_wait(wait, || async move {
        match guest.exec(command, EXEC_TIMEOUT).await {
            Ok(out) if out.stdout_str().trim() == wanted => Poll::Ready(()),
            Ok(out) => Poll::Pending(format!("{unit} is {}", out.stdout_str().trim())),
            Err(e) => Poll::Pending(Chain(&e).to_string()),
        }
    })
    .await
}

// ---- expectations ----

/// Evaluates an expectation once: `Ok` with what was seen, or `Failed` with expected and seen.
async fn expect(ctx: &Ctx<'_>, expectation: &Expectation) -> Result<String, ScenarioError> {
    let failed = |reason: String| ScenarioError::Failed {
        check: format!("expect {expectation}"),
        reason,
    };
    match expectation {
        Expectation::PodsOnSurvivingNodes {
            namespace,
            deployment,
            failed_nodes,
        } => {
            let found = get(ctx, namespace, deployment).await?;
            let selector = found
                .spec
                .as_ref()
                .map(|s| label_selector(&s.selector))
                .ok_or_else(|| failed(format!("Deployment {deployment} has no spec")))?;
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
            let pods = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| ScenarioError::error(&format!("listing pods {selector}"), e))?;
            let live: Vec<(String, Option<String>, bool)> = pods
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| {
                    (
                        p.metadata.name.clone().unwrap_or_default(),
                        p.spec.as_ref().and_then(|s| s.node_name.clone()),
                        pod_running(Some(p)),
                    )
                })
                .collect();
            pods_on_surviving_nodes(&live, failed_nodes).map_err(failed)
        }
        Expectation::ReplicasAvailable {
            namespace,
            deployment,
            count,
        } => {
            let found = get(ctx, namespace, deployment).await?;
            let available = found
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            if i64::from(available) == i64::from(*count) {
                Ok(format!("{available} available"))
            } else {
                Err(failed(format!(
                    "expected exactly {count} available replicas, saw {available} ({})",
                    found.summary()
                )))
            }
        }
        Expectation::NodeHasLabel { node, label } | Expectation::NodeLacksLabel { node, label } => {
            let want = matches!(expectation, Expectation::NodeHasLabel { .. });
            let nodes: Api<Node> = Api::all(ctx.client.clone());
            let found = nodes
                .get_opt(node)
                .await
                .map_err(|e| ScenarioError::error(&format!("reading Node {node}"), e))?
                .ok_or_else(|| failed(format!("expected Node {node}, saw no such node")))?;
            let value = node_label(&found, &label.key);
            let seen = match value {
                Some(v) => format!("{}={v}", label.key),
                None => format!("no label {}", label.key),
            };
            if label_matches(label, value) == want {
                Ok(seen)
            } else {
                let expected = if want { "" } else { "no " };
                Err(failed(format!(
                    "expected {expected}label {label}, saw {seen}"
                )))
            }
        }
        Expectation::CommandOutput {
            machine: m,
            command,
            contains,
        } => {
            let out = machine(ctx, m)?
                .exec(command, EXEC_TIMEOUT)
                .await
                .map_err(|e| ScenarioError::error(&format!("running `{command}` on {m}"), e))?;
            let stdout = out.stdout_str();
            if out.status == 0 && stdout.contains(contains.as_str()) {
                Ok(harness::wait::tail_chars(stdout.trim(), 300))
            } else {
                Err(failed(format!(
                    "expected exit 0 and stdout containing {contains:?}, saw exit {} and stdout {:?}{}",
                    out.status,
                    harness::wait::tail_chars(stdout.trim(), 300),
                    match out.stderr_str().trim() {
                        "" => String::new(),
                        e => format!(", stderr {:?}", harness::wait::tail_chars(e, 300)),
                    }
                )))
            }
        }
    }
}

async fn get(ctx: &Ctx<'_>, namespace: &str, name: &str) -> Result<Deployment, ScenarioError> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    api.get_opt(name)
        .await
        .map_err(|e| ScenarioError::error(&format!("reading Deployment {namespace}/{name}"), e))?
        .ok_or_else(|| ScenarioError::Failed {
            check: format!("Deployment {namespace}/{name}"),
            reason: "expected it to exist, saw no such Deployment".to_string(),
        })
}

/// `pods` are (name, node, running) of a Deployment's pods that are not terminating.
fn pods_on_surviving_nodes(
    pods: &[(String, Option<String>, bool)],
    failed_nodes: &[String],
) -> Result<String, String> {
    let describe = || {
        pods.iter()
            .map(|(name, node, running)| {
                format!(
                    "{name} {} on {}",
                    if *running { "Running" } else { "not Running" },
                    node.as_deref().unwrap_or("no node")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if pods.is_empty() {
        return Err("expected at least one pod, saw none".to_string());
    }
    let bad = pods.iter().any(|(_, node, running)| {
        !running || node.as_ref().is_none_or(|n| failed_nodes.contains(n))
    });
    if bad {
        Err(format!(
            "expected every pod Running on a node other than {}, saw {}",
            failed_nodes.join(", "),
            describe()
        ))
    } else {
        Ok(describe())
    }
}

/// Whether a node's value for `label.key` (`None`: no such label) satisfies `label`.
/// The value of the Node's label `key`, if it has one.
fn node_label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn label_matches(label: &Label, value: Option<&str>) -> bool {
    match (&label.value, value) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(wanted), Some(value)) => wanted == value,
    }
}

/// A Deployment's selector as `kubectl get -l` takes it.
fn label_selector(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn the_example_manifests_parse() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("files");
        for entry in std::fs::read_dir(dir.join("manifests")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            parse_manifests(&text, &path.display().to_string()).unwrap();
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let file = ScenarioFile::load(&path).unwrap();
                check_manifests(&file).unwrap();
            }
        }
    }

    #[test]
    fn a_bad_inline_manifest_is_found_before_boot_with_the_scenario_line() {
        let text = "name = \"x\"\n\n[[step]]\nmanifest = \"\"\"\nkind: Pod\n\"\"\"\n";
        let file = ScenarioFile::parse(text, Path::new("s.toml")).unwrap();
        let e = check_manifests(&file).unwrap_err();
        assert_eq!(e.line(), Some(4));
        assert_eq!(e.field(), Some("step[1].manifest"));
        assert!(
            e.to_string()
                .starts_with("s.toml:4: step[1].manifest: inline manifest: document 1"),
            "{e}"
        );
    }

    #[test]
    fn steps_are_named_by_number_line_and_action() {
        let text = "name = \"x\"\n\n[[step]]\nsleep = \"10s\"\n";
        let file = ScenarioFile::parse(text, Path::new("s.toml")).unwrap();
        assert_eq!(step_label(&file.steps[0]), "step 1 (line 3): sleep 10s");
    }

    #[test]
    fn errors_carry_the_step() {
        let label = "step 2 (line 7): fault crash limiting-factor";
        let e = in_step(label, ScenarioError::Error("no machine".into()));
        assert_eq!(e.to_string(), format!("{label}: no machine"));
        let e = in_step(
            label,
            ScenarioError::Failed {
                check: "inner".into(),
                reason: "why".into(),
            },
        );
        assert_eq!(e.to_string(), format!("{label}: inner: why"));
        let e = in_step(
            label,
            ScenarioError::Failed {
                check: "fault crash limiting-factor".into(),
                reason: "why".into(),
            },
        );
        assert_eq!(e.to_string(), format!("{label}: why"));
    }

    #[test]
    fn labels_and_selectors() {
        let label = |key: &str, value: Option<&str>| Label {
            key: key.into(),
            value: value.map(Into::into),
        };
        assert!(label_matches(&label("k", None), Some("anything")));
        assert!(!label_matches(&label("k", None), None));
        assert!(label_matches(&label("k", Some("v")), Some("v")));
        assert!(!label_matches(&label("k", Some("v")), Some("w")));
        let selector: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "gone", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        assert_eq!(label_selector(&selector), "app=web,tier in (a,b),!gone");
    }

    #[test]
    fn surviving_nodes() {
        let failed = vec!["limiting-factor".to_string()];
        let pod = |n: &str, node: Option<&str>, running: bool| {
            (n.to_string(), node.map(Into::into), running)
        };
        assert!(pods_on_surviving_nodes(
            &[
                pod("a", Some("grey-area"), true),
                pod("b", Some("congenital-optimist"), true)
            ],
            &failed
        )
        .is_ok());
        let e = pods_on_surviving_nodes(&[pod("a", Some("limiting-factor"), true)], &failed)
            .unwrap_err();
        assert!(e.contains("saw a Running on limiting-factor"), "{e}");
        assert!(pods_on_surviving_nodes(&[pod("a", None, false)], &failed).is_err());
        assert!(pods_on_surviving_nodes(&[], &failed)
            .unwrap_err()
            .contains("saw none"));
    }
}
