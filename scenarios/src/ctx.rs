//! What every scenario works with: the booted lab, a Kubernetes client, the event stream and the
//! artifacts folder - and the few helpers that make each step a named, bounded, reported check.
use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::artifacts::ArtifactsDir;
use harness::check;
use harness::error::Chain;
use harness::events::{EventKind, Events, Outcome, Stream};
use harness::kube::conditions::look;
use harness::kube::Summary;
use harness::lab::{KubernetesSpec, Lab};
use harness::nix::{SwitchError, Switches};
use harness::wait::{Condition, Poll, Since, Wait};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a scenario did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The lab misbehaved: what the scenario exists to catch.
    #[error("{check}: {reason}")]
    Failed {
        /// The check that failed.
        check: String,
        /// What it saw instead of what it expected.
        reason: String,
    },
    /// The scenario could not do its job (bad input, a lost connection, a missing generation):
    /// says nothing about the lab.
    #[error("{0}")]
    Error(String),
}

impl ScenarioError {
    /// How the scenario ends in the reports: failed (the lab) or error (the harness).
    pub fn outcome(&self) -> Outcome {
        match self {
            ScenarioError::Failed { .. } => Outcome::Failed,
            ScenarioError::Error(_) => Outcome::Error,
        }
    }

    /// A harness-side problem, with context and the whole chain of its causes.
    pub fn error(context: &str, error: impl std::error::Error) -> Self {
        ScenarioError::Error(format!("{context}: {}", Chain(&error)))
    }
}

impl From<SwitchError> for ScenarioError {
    /// A start generation that does not come back is the lab's failure; the rest are ours.
    fn from(error: SwitchError) -> Self {
        match error {
            SwitchError::StartGeneration { check, reason } => {
                ScenarioError::Failed { check, reason }
            }
            other => ScenarioError::Error(Chain(&other).to_string()),
        }
    }
}

/// A scenario's view of the lab.
pub struct Ctx<'a> {
    /// The lab, booted and Ready.
    pub lab: &'a Lab,
    /// Where the lab's flake is (rebuilds build generations from it).
    pub lab_dir: &'a Path,
    /// A client with the lab's admin kubeconfig.
    pub client: kube::Client,
    /// Where the scenario reports its steps and checks.
    pub events: &'a Events,
    /// Where it saves evidence (journals, kube state) when a check fails.
    pub artifacts: &'a ArtifactsDir,
    /// Scratch space (build out-links).
    pub work_dir: PathBuf,
    /// The scenario running now: the scope of its checks.
    pub scope: String,
    /// The system generations this scenario switched machines through.
    pub switches: Switches,
}

impl<'a> Ctx<'a> {
    /// The same view with its checks and steps reported under `scope` (a scenario's name).
    pub fn for_scenario(&self, scope: &str) -> Ctx<'a> {
        Ctx {
            lab: self.lab,
            lab_dir: self.lab_dir,
            client: self.client.clone(),
            events: self.events,
            artifacts: self.artifacts,
            work_dir: self.work_dir.clone(),
            scope: scope.to_string(),
            switches: Switches::default(),
        }
    }

    /// Ends the scenario's rebuilds: every machine it switched goes back to the generation it
    /// started on, noted in the report, so the next scenario sees the lab as booted.
    ///
    /// # Errors
    /// As [`Switches::return_to_start`].
    pub async fn return_to_start_generations(&self) -> Result<(), ScenarioError> {
        let machines: Vec<&harness::vm::Machine> =
            self.lab.machines().iter().map(|m| m.as_ref()).collect();
        let done = self
            .switches
            .return_to_start(&harness::nix::SystemProfile::default(), &machines)
            .await?;
        for line in done {
            self.note("generations", line);
        }
        Ok(())
    }

    /// The lab's `[kubernetes]` spec.
    ///
    /// # Errors
    /// [`ScenarioError::Error`] for a lab without Kubernetes: the scenario cannot run on it.
    pub fn k8s(&self) -> Result<&KubernetesSpec, ScenarioError> {
        self.lab.spec().kubernetes.as_ref().ok_or_else(|| {
            ScenarioError::Error(format!(
                "scenario {} needs Kubernetes, and lab {} has no [kubernetes] in its lab.toml",
                self.scope,
                self.lab.spec().name
            ))
        })
    }

    /// The machines that run a kubelet (role `node`), in spec order.
    pub fn node_names(&self) -> Vec<String> {
        self.lab
            .spec()
            .machines
            .iter()
            .filter(|m| m.roles.iter().any(|r| r == "node"))
            .map(|m| m.name.clone())
            .collect()
    }

    /// A node that is not the master: where faults go, so the control plane survives them.
    pub fn worker(&self) -> Result<String, ScenarioError> {
        let master = self.k8s()?.master.clone();
        self.node_names()
            .into_iter()
            .rev()
            .find(|n| *n != master)
            .ok_or_else(|| {
                ScenarioError::Error(format!(
                    "scenario {} needs a node besides the master {master}",
                    self.scope
                ))
            })
    }

    /// Records a measured fact or a step's output in the report.
    pub fn note(&self, step: &str, text: impl Into<String>) {
        self.events.emit(EventKind::StepOutput {
            scope: self.scope.clone(),
            step: step.to_string(),
            stream: Stream::Stdout,
            text: text.into(),
        });
    }

    /// A named check polled until ready, reported as such; a timeout fails the scenario with the
    /// last observed state.
    pub async fn check<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        interval: Duration,
        probe: F,
    ) -> Result<T, ScenarioError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Poll<T>>,
    {
        self.run_wait(&Wait::new(what, timeout, interval), probe)
            .await
    }

    /// Runs `wait` as a named check: its events carry the delay it measured when the wait has
    /// a named start ([`Wait::since`]).
    pub async fn run_wait<T, F, Fut>(&self, wait: &Wait, probe: F) -> Result<T, ScenarioError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Poll<T>>,
    {
        check::run(self.events, &self.scope, wait, probe)
            .await
            .map_err(|e| ScenarioError::Failed {
                check: wait.what.clone(),
                reason: Chain(&e).to_string(),
            })
    }

    /// Waits for `condition` on object `name`, as a named check polled every 2 s; returns how
    /// long it took.
    pub async fn wait<K, C>(
        &self,
        api: &Api<K>,
        name: &str,
        condition: C,
        what: &str,
        timeout: Duration,
    ) -> Result<Duration, ScenarioError>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Summary,
        K::DynamicType: Default,
        C: Condition<K>,
    {
        self.wait_for(
            api,
            name,
            condition,
            &Wait::new(what, timeout, Duration::from_secs(2)),
        )
        .await
    }

    /// [`Ctx::wait`] that measures its delay from a named moment (a fault, a recovery) and
    /// reports it against the budget from that moment; returns that delay.
    pub async fn wait_since<K, C>(
        &self,
        api: &Api<K>,
        name: &str,
        condition: C,
        what: &str,
        timeout: Duration,
        since: &Since,
    ) -> Result<Duration, ScenarioError>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Summary,
        K::DynamicType: Default,
        C: Condition<K>,
    {
        let wait = Wait::new(what, timeout, Duration::from_secs(2)).since(since.clone());
        self.wait_for(api, name, condition, &wait).await?;
        Ok(since.at.elapsed())
    }

    /// Waits for `condition` on object `name` as `wait` says. Each new state of the object
    /// shows as progress; a 401 or 403 ends the wait at once, since waiting cannot fix
    /// credentials. Returns how long it took.
    pub async fn wait_for<K, C>(
        &self,
        api: &Api<K>,
        name: &str,
        condition: C,
        wait: &Wait,
    ) -> Result<Duration, ScenarioError>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Summary,
        K::DynamicType: Default,
        C: Condition<K>,
    {
        let start = Instant::now();
        self.run_wait(wait, || look(api, name, &condition)).await?;
        Ok(start.elapsed())
    }

    /// Creates or updates an object (server-side apply, which Kubernetes 1.20 has).
    pub async fn apply<K>(
        &self,
        api: &Api<K>,
        object: serde_json::Value,
    ) -> Result<K, ScenarioError>
    where
        K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        api.patch(
            &name,
            &PatchParams::apply("labtest").force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|e| ScenarioError::error(&format!("applying {name}"), e))
    }

    /// A fresh namespace for this scenario's objects.
    pub async fn namespace(&self, name: &str) -> Result<String, ScenarioError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        self.apply(
            &api,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name }
            }),
        )
        .await?;
        Ok(name.to_string())
    }

    /// Deletes a namespace without waiting: its pods may sit on a node that is gone.
    pub async fn drop_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(name, &DeleteParams::background()).await;
    }

    /// Captures `kubectl get`-like state for the artifacts folder when a scenario fails.
    pub async fn capture(&self, what: &str, text: &str) {
        let _ = self
            .artifacts
            .write_kube(&format!("{}-{what}", self.scope), text);
    }
}

/// Runs a scenario body and always cleans its namespace up, failed or not.
pub async fn with_namespace<'c, F, Fut>(
    ctx: &'c Ctx<'_>,
    ns: &str,
    body: F,
) -> Result<(), ScenarioError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<(), ScenarioError>> + 'c,
{
    let ns = ctx.namespace(ns).await?;
    let result = body(ns.clone()).await;
    ctx.drop_namespace(&ns).await;
    result
}
