//! [`ReadyLab`]: the RAII front of the bring-up for users' own lab tests.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;

use super::bring_up::{build, ready_lab, snapshot_target};
use super::keep::FailureKeeper;
use super::settings::Snapshots;
use super::{ReadyError, TEST_SCOPE};
use crate::error::Chain;
use crate::events::{EventKind, Events};
use crate::kube::{conditions::look, KubeAccess, KubeError};
use crate::lab::{Lab, LabError, LabSpec};
use crate::report::live;
use crate::vm::accel::{AccelChoice, AccelError};
use crate::vm::cpus::{HostCpus, HostCpusError};
use crate::vm::{Machine, VmError};
use crate::wait::{Condition, Wait};

/// Builds a [`ReadyLab`]; see [`ReadyLab::from_dir`].
#[must_use]
pub struct ReadyLabBuilder {
    lab_dir: PathBuf,
    accel: Result<AccelChoice, AccelError>,
    host_cpus: Result<Option<HostCpus>, HostCpusError>,
    snapshots: Result<Snapshots, ReadyError>,
    keep: bool,
    keep_failures: bool,
    report_dir: Option<PathBuf>,
    events: Option<Events>,
}

impl ReadyLabBuilder {
    /// The accelerator (default `$LABTEST_ACCEL`, else auto: KVM when it works, else TCG).
    pub fn accel(mut self, accel: AccelChoice) -> Self {
        self.accel = Ok(accel);
        self
    }

    /// Confines every QEMU to the first N host CPUs (default `$LABTEST_HOST_CPUS`, else none).
    pub fn host_cpus(mut self, cpus: Option<HostCpus>) -> Self {
        self.host_cpus = Ok(cpus);
        self
    }

    /// How the lab gets to Ready (default `$LABTEST_SNAPSHOT`, else restore the Ready snapshot).
    pub fn snapshots(mut self, snapshots: Snapshots) -> Self {
        self.snapshots = Ok(snapshots);
        self
    }

    /// On drop, keep the report dir with its console logs and kubeconfig instead of removing
    /// it, and print where it is (default: `$LABTEST_KEEP` is set).
    pub fn keep(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// When a wait of the lab fails ([`ReadyLab::wait_node`]), save the whole lab as it is at
    /// that moment as a failure snapshot, and name the command that brings it back in the
    /// error (default: `$LABTEST_KEEP` is `failure`). Needs the lab's snapshot store, as
    /// `labtest run` keeps failed scenarios.
    pub fn keep_failures(mut self, keep: bool) -> Self {
        self.keep_failures = keep;
        self
    }

    /// Where console logs, the kubeconfig and failure evidence go (default `$LABTEST_REPORT_DIR`,
    /// else a temporary dir, removed on drop unless kept).
    pub fn report_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.report_dir = Some(dir.into());
        self
    }

    /// Report through `events` instead of printing one line per event to stdout.
    pub fn events(mut self, events: Events) -> Self {
        self.events = Some(events);
        self
    }

    /// Builds the lab, brings it to Ready (restored from its Ready snapshot by default) and
    /// hands it over.
    ///
    /// # Errors
    /// A value of `LABTEST_ACCEL` or `LABTEST_SNAPSHOT` that is not one of theirs, a bad lab
    /// dir or lab.toml, a failed build, boot, join or readiness gate: each says what
    /// was expected and seen and where its evidence is (the report dir, kept on failure).
    pub async fn start(self) -> Result<ReadyLab, ReadyError> {
        let accel = self.accel?;
        let host_cpus = self.host_cpus.map_err(VmError::from)?;
        let snapshots = self.snapshots?;
        let spec = LabSpec::load(&self.lab_dir)?;
        let (report_dir, temp) = match self.report_dir {
            Some(dir) => (dir, None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("labtest-lab-")
                    .tempdir()
                    .map_err(|source| ReadyError::Io {
                        what: "creating a report dir in",
                        path: std::env::temp_dir(),
                        source,
                    })?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        std::fs::create_dir_all(&report_dir).map_err(|source| ReadyError::Io {
            what: "creating",
            path: report_dir.clone(),
            source,
        })?;
        let (events, view) = match self.events {
            Some(events) => (events, None),
            None => {
                let events = Events::new();
                let view = live::spawn(&events, live::Mode::Plain);
                (events, Some(view))
            }
        };
        let brought_up = async {
            let built = build(
                &self.lab_dir,
                &spec,
                &report_dir.join("work"),
                accel,
                host_cpus,
                &events,
            )
            .await?;
            let keeper = match self.keep_failures {
                true => Some(FailureKeeper::new(
                    snapshot_target(&self.lab_dir, &spec, &built)?,
                    &self.lab_dir,
                    &report_dir,
                )),
                false => None,
            };
            let ready = ready_lab(
                &self.lab_dir,
                &spec,
                &built,
                &report_dir,
                snapshots,
                &events,
            )
            .await?;
            Ok((ready, keeper))
        }
        .await;
        let mut lab = ReadyLab {
            lab: None,
            kube: None,
            keeper: None,
            events,
            view,
            report_dir,
            temp,
            keep: self.keep,
        };
        match brought_up {
            Ok((ready, keeper)) => {
                lab.lab = Some(ready.lab);
                lab.kube = ready.kube;
                lab.keeper = keeper;
                Ok(lab)
            }
            Err(e) => {
                // The evidence the error points at must outlive it.
                lab.keep = true;
                Err(e)
            }
        }
    }
}

/// A lab that passed its readiness gate, for a test to use and then shut down
/// ([`ReadyLab::shutdown`]) or drop. Either tears every machine down; its report dir goes too
/// unless kept.
///
/// # Usage
/// ```no_run
/// # async fn t() -> Result<(), harness::ready::ReadyError> {
/// use std::time::Duration;
/// use harness::kube::conditions::node_not_ready;
/// use harness::ready::ReadyLab;
///
/// let lab = ReadyLab::from_dir("fixtures/lab").start().await?; // restored from the snapshot
/// lab.machine("limiting-factor")?.crash().await?;
/// lab.wait_node("limiting-factor", node_not_ready, Duration::from_secs(180)).await?;
/// lab.shutdown().await?; // or drop it, and learn nothing of a teardown that went wrong
/// # Ok(()) }
/// ```
///
/// # Caveats
/// The first lab of a suite boots and saves the Ready snapshot (minutes under TCG); every later
/// one restores it in seconds. Labs restored together each get their own disks, hub and ports.
pub struct ReadyLab {
    /// Owned, and only lent out: a clone that outlived the teardown would keep the machines'
    /// handles past it.
    lab: Option<Lab>,
    kube: Option<KubeAccess>,
    /// Saves the lab when a wait fails ([`ReadyLabBuilder::keep_failures`]).
    keeper: Option<FailureKeeper>,
    events: Events,
    view: Option<std::thread::JoinHandle<()>>,
    report_dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    keep: bool,
}

impl ReadyLab {
    /// A builder for the lab in `lab_dir` (a flake with a lab.toml), with the defaults the CLI
    /// reads from the environment: `LABTEST_ACCEL`, `LABTEST_SNAPSHOT`, `LABTEST_KEEP` (set:
    /// keep the report dir; `failure`: also save the lab when a wait fails),
    /// `LABTEST_REPORT_DIR`, `LABTEST_HOST_CPUS`.
    pub fn from_dir(lab_dir: impl Into<PathBuf>) -> ReadyLabBuilder {
        let keep = std::env::var("LABTEST_KEEP").ok();
        ReadyLabBuilder {
            lab_dir: lab_dir.into(),
            accel: AccelChoice::from_env(),
            host_cpus: HostCpus::from_env(),
            snapshots: Snapshots::from_env(),
            keep: keep.is_some(),
            keep_failures: keep.as_deref() == Some("failure"),
            report_dir: std::env::var_os("LABTEST_REPORT_DIR").map(PathBuf::from),
            events: None,
        }
    }

    /// The machines and network.
    pub fn lab(&self) -> &Lab {
        self.lab
            .as_ref()
            .expect("a ReadyLab always holds its lab until dropped")
    }

    /// One machine, for `succeed`, `crash`, `freeze`, `wait_for_unit` and the rest.
    ///
    /// # Errors
    /// [`LabError::UnknownMachine`] naming the machines the lab has.
    pub fn machine(&self, name: &str) -> Result<&Arc<Machine>, LabError> {
        self.lab().machine(name)
    }

    /// The admin client of the lab's cluster.
    ///
    /// # Errors
    /// [`ReadyError::NoKubernetes`] for a lab without `[kubernetes]`.
    pub fn client(&self) -> Result<&::kube::Client, ReadyError> {
        self.kube_access().map(|k| k.client())
    }

    /// The kubeconfig and client of the lab's cluster.
    ///
    /// # Errors
    /// As [`ReadyLab::client`].
    pub fn kube_access(&self) -> Result<&KubeAccess, ReadyError> {
        self.kube.as_ref().ok_or_else(|| ReadyError::NoKubernetes {
            lab: self.lab().spec().name.clone(),
            what: "cluster",
        })
    }

    /// The events this lab reports through.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Console logs, the admin kubeconfig and failure evidence.
    pub fn report_dir(&self) -> &Path {
        &self.report_dir
    }

    /// Waits until `condition` holds for node `name` (polled every second), and returns how
    /// long it took. Reported as a check of scope [`TEST_SCOPE`] (the live view, the reports).
    ///
    /// # Errors
    /// [`KubeError`] at `timeout`, with the node's last observed state; inside
    /// [`ReadyError::Kept`], naming the command that brings the lab back, when the lab keeps
    /// its failures.
    pub async fn wait_node<C>(
        &self,
        name: &str,
        condition: C,
        timeout: Duration,
    ) -> Result<Duration, ReadyError>
    where
        C: Condition<Node>,
    {
        let nodes: ::kube::Api<Node> = ::kube::Api::all(self.client()?.clone());
        let wait = Wait::new(format!("node {name}"), timeout, Duration::from_secs(1));
        let started = Instant::now();
        let waited = crate::check::run(&self.events, TEST_SCOPE, &wait, || {
            look(&nodes, name, &condition)
        })
        .await;
        match waited {
            Ok(_) => Ok(started.elapsed()),
            Err(e) => Err(self.kept(ReadyError::Kube(KubeError::from(e))).await),
        }
    }

    /// `failure`, after saving the lab as it is now when it keeps its failures.
    async fn kept(&self, failure: ReadyError) -> ReadyError {
        let Some(keeper) = &self.keeper else {
            return failure;
        };
        // The test's name, where the test harness names its thread after it.
        let test = std::thread::current()
            .name()
            .filter(|n| *n != "main")
            .unwrap_or(TEST_SCOPE)
            .rsplit("::")
            .next()
            .unwrap_or(TEST_SCOPE)
            .to_string();
        let text = Chain(&failure).to_string();
        match keeper.keep(self.lab(), &test, &text, &self.events).await {
            Ok(restore) => ReadyError::Kept {
                restore,
                source: Box::new(failure),
            },
            // The event says why it was not kept; the failure is what the test is about.
            Err(_) => failure,
        }
    }
}

impl ReadyLab {
    /// Tears the lab down now, as dropping it does, but off the async runtime's threads (killing
    /// and reaping QEMU blocks) and with what went wrong returned rather than printed: when it
    /// returns Ok, no QEMU of the lab is left, the console logs are in the report dir and that
    /// dir is removed unless kept.
    ///
    /// # Errors
    /// [`LabError::ConsoleLog`] or [`LabError::RemoveStateDir`] (inside [`ReadyError::Lab`]),
    /// [`ReadyError::Io`] when the report dir could not be removed.
    pub async fn shutdown(self) -> Result<(), ReadyError> {
        let mut lab = self;
        match tokio::task::spawn_blocking(move || lab.tear_down()).await {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// What [`ReadyLab::shutdown`] and drop do; a second call finds nothing left to do.
    fn tear_down(&mut self) -> Result<(), ReadyError> {
        // Machines first: their console logs land in the report dir as they go.
        let lab = self.lab.take().map_or(Ok(()), Lab::shut_down);
        self.kube.take();
        if let Some(view) = self.view.take() {
            self.events.emit(EventKind::RunFinished { aborted: None });
            let _ = view.join();
        }
        let report = if std::mem::take(&mut self.keep) {
            match self.temp.take() {
                Some(temp) => {
                    eprintln!("labtest: lab evidence kept in {}", temp.keep().display())
                }
                None => eprintln!("labtest: lab evidence in {}", self.report_dir.display()),
            }
            Ok(())
        } else {
            self.temp.take().map_or(Ok(()), |temp| {
                temp.close().map_err(|source| ReadyError::Io {
                    what: "removing the report dir",
                    path: self.report_dir.clone(),
                    source,
                })
            })
        };
        lab?;
        report
    }
}

impl Drop for ReadyLab {
    fn drop(&mut self) {
        // The fallback for a lab not shut down: nobody is left to return an error to.
        if let Err(e) = self.tear_down() {
            eprintln!("labtest: tearing the lab down: {}", Chain(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typo must not silently restore a snapshot the user meant to replace (or bypass), as
    /// one in LABTEST_ACCEL does not silently pick an accelerator. The only test that sets
    /// LABTEST_SNAPSHOT, and it reads it back at once.
    #[tokio::test]
    async fn a_typo_in_labtest_snapshot_is_refused_before_anything_builds() {
        std::env::set_var("LABTEST_SNAPSHOT", "frsh");
        let builder = ReadyLab::from_dir("/nonexistent-lab");
        std::env::remove_var("LABTEST_SNAPSHOT");
        let err = builder.start().await.err().expect("refused");
        assert_eq!(
            err.to_string(),
            "LABTEST_SNAPSHOT=\"frsh\" is not one of fresh, off (unset or empty: restore the Ready snapshot)"
        );
    }
}
