//! A Ready lab: built, booted (or restored from its Ready snapshot), nodes joined, through the
//! readiness gate, with a kube client. The one bring-up that `labtest run`, `labtest up`, the
//! built-in scenarios and users' own lab tests share, so a test cannot get a lab the CLI would
//! not give it.
//!
//! [`ReadyLab`] is the RAII front for tests; [`ready_lab`] and the functions around it are the
//! steps, for callers (the CLI) that report through their own events and artifacts.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;

use crate::error::Chain;
use crate::events::{EventKind, Events, Phase, Stream};
use crate::kube::{
    conditions::look, gate, join_nodes, GateBudgets, GateError, KubeAccess, KubeError,
    ReadinessGate,
};
use crate::lab::{self, Lab, LabBuilder, LabError, LabSpec};
use crate::report::{cpu, live, ArtifactsDir, ReportError};
use crate::snapshot::{self, Snapshot, SnapshotError, SnapshotKey, SnapshotName, SnapshotStore};
use crate::vm::accel::{self, AccelChoice, AccelError};
use crate::vm::cpus::{HostCpus, HostCpusError};
use crate::vm::{Accel, Machine, VmError};
use crate::wait::{Condition, Wait};

/// The snapshot every run, `up` and [`ReadyLab`] restores: the lab right after the gate passed.
pub const READY_SNAPSHOT: SnapshotName = SnapshotName::from_static("ready");
/// The check scope of the waits a user's test runs through [`ReadyLab`].
pub const TEST_SCOPE: &str = "test";

/// How long a lab's build may take (a cold fixture lab builds a guest and Kubernetes).
const BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// How long a master may take to create its PKI, join token and admin kubeconfig after boot.
const CONTROL_PLANE_FILES: Duration = Duration::from_secs(600);
const JOIN_DEADLINE: Duration = Duration::from_secs(600);
/// How long a process waits for another one that is making the same Ready snapshot: a cold
/// build, a boot and the gate, on a slow runner.
const SNAPSHOT_LOCK_WAIT: Duration = Duration::from_secs(75 * 60);
/// A bring-up that failed after this long is not tried again with the same inputs for
/// [`crate::snapshot::FAILED_BRING_UP_HOLD`] (see [`ready_lab`]).
const HOLD_FAILED_BRING_UPS_AFTER: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error(transparent)]
    Lab(Box<LabError>),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Gate(#[from] Box<GateError>),
    #[error(transparent)]
    Vm(#[from] Box<VmError>),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Accel(#[from] AccelError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("building lab {lab_dir}")]
    Build {
        lab_dir: PathBuf,
        source: Box<LabError>,
    },
    #[error(
        "LABTEST_SNAPSHOT={0:?} is not one of fresh, off (unset or empty: restore the Ready snapshot)"
    )]
    BadSnapshotMode(String),
    #[error("lab {lab} has no [kubernetes] in its lab.toml, so it has no {what}")]
    NoKubernetes { lab: String, what: &'static str },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "expected the Ready snapshot of lab {lab} within {waited:?}; another process still makes it (lock {lock} held)"
    )]
    SnapshotLock {
        lab: String,
        lock: PathBuf,
        waited: Duration,
    },
    #[error("expected {what} within {timeout:?}; it was still going")]
    StepTimeout { what: String, timeout: Duration },
    #[error(
        "expected lab {lab} to get Ready, but booting it with these same inputs failed {}s ago, so it is not booted again for {} min after that (set LABTEST_SNAPSHOT=fresh, or run `labtest up --fresh`, to try now). That boot's error: {error}",
        ago.as_secs(),
        crate::snapshot::FAILED_BRING_UP_HOLD / 60
    )]
    EarlierBringUpFailed {
        lab: String,
        ago: Duration,
        error: String,
    },
}

impl From<LabError> for ReadyError {
    fn from(e: LabError) -> Self {
        ReadyError::Lab(Box::new(e))
    }
}

impl From<VmError> for ReadyError {
    fn from(e: VmError) -> Self {
        ReadyError::Vm(Box::new(e))
    }
}

/// `<cache>/history.jsonl`: a line per run, what a run's report compares it with.
pub fn history_file() -> PathBuf {
    cache_dir().join("history.jsonl")
}

/// A bring-up step before the readiness gate, reported as a check of the gate's scope so the
/// live view and the reports show it; `within` is the step's own deadline, which it enforces
/// itself (the slack only guards against a step that does not).
async fn bring_up_step<T, E: std::error::Error + Into<ReadyError>>(
    events: &Events,
    what: &str,
    within: Duration,
    body: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ReadyError> {
    crate::check::once(
        events,
        gate::SCOPE,
        what,
        within + Duration::from_secs(30),
        body,
    )
    .await
    .map_err(|e| match e {
        Some(e) => e.into(),
        None => ReadyError::StepTimeout {
            what: what.to_string(),
            timeout: within,
        },
    })
}

/// `$LABTEST_CACHE`, else `$XDG_CACHE_HOME/labtest`, else `~/.cache/labtest`: where builds,
/// guests and snapshots are kept between runs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LABTEST_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("labtest")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/labtest")))
        .unwrap_or_else(|| std::env::temp_dir().join("labtest-cache"))
}

/// `$LABTEST_SNAPSHOTS`, else `<cache>/snapshots`: snapshots are GBs, so they may live apart
/// from the cached builds.
pub fn snapshot_store() -> SnapshotStore {
    SnapshotStore::new(
        std::env::var_os("LABTEST_SNAPSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_dir().join("snapshots")),
    )
}

/// A lab's machines, built, the accelerator they run with and the host CPUs they may use.
pub struct Built {
    pub run_dir: PathBuf,
    pub accel: Accel,
    /// `LABTEST_HOST_CPUS`: every QEMU on the first N host CPUs; `None`: wherever they like.
    pub host_cpus: Option<HostCpus>,
}

/// Builds the lab (prepare + `nix build`) and settles the accelerator and the host CPUs the
/// machines may use (a warning says when they are confined); `work_dir` receives the build's
/// out-links and logs.
///
/// # Errors
/// [`ReadyError::Build`] with the build's log; [`ReadyError::Accel`] when `accel_choice`
/// cannot be had (KVM asked for, not usable).
pub async fn build(
    lab_dir: &Path,
    spec: &LabSpec,
    work_dir: &Path,
    accel_choice: AccelChoice,
    host_cpus: Option<HostCpus>,
    events: &Events,
) -> Result<Built, ReadyError> {
    events.emit(EventKind::Phase {
        phase: Phase::Build,
    });
    if let Some(cpus) = &host_cpus {
        events.emit(EventKind::Warning {
            message: format!(
                "the lab's QEMUs are confined to {} host CPU{} (LABTEST_HOST_CPUS): expect it slower",
                cpus.count(),
                if cpus.count() == 1 { "" } else { "s" }
            ),
        });
    }
    let run_dir = lab::build(
        lab_dir,
        spec,
        &work_dir.join("build"),
        events,
        BUILD_TIMEOUT,
    )
    .await
    .map_err(|source| ReadyError::Build {
        lab_dir: lab_dir.to_path_buf(),
        source: Box::new(source),
    })?;
    let probe = spec
        .machines
        .first()
        .map(|m| run_dir.join("bin").join(format!("run-{}-vm", m.name)))
        .ok_or_else(|| ReadyError::Build {
            lab_dir: lab_dir.to_path_buf(),
            source: Box::new(LabError::BadSpec {
                path: lab_dir.join("lab.toml"),
                message: "the lab has no machines".into(),
            }),
        })?;
    let cache = cache_dir();
    let verdict = tokio::task::spawn_blocking(move || accel::resolve(accel_choice, &probe, &cache))
        .await
        .map_err(|e| ReadyError::Io {
            what: "probing the accelerator with",
            path: run_dir.clone(),
            source: std::io::Error::other(e),
        })??;
    if let Some(warning) = &verdict.warning {
        events.emit(EventKind::Warning {
            message: warning.clone(),
        });
    }
    Ok(Built {
        run_dir,
        accel: verdict.accel,
        host_cpus,
    })
}

/// Boots the built lab, or restores it from `snapshot`; `evidence_dir` receives the machines'
/// console logs when the lab goes away.
pub async fn boot(
    spec: &LabSpec,
    built: &Built,
    evidence_dir: &Path,
    snapshot: Option<Snapshot>,
    events: &Events,
) -> Result<Lab, ReadyError> {
    events.emit(EventKind::Phase { phase: Phase::Boot });
    let mut builder = LabBuilder::new(spec.clone(), &built.run_dir)
        .accel(built.accel)
        .host_cpus(built.host_cpus)
        .evidence_dir(evidence_dir);
    if let Some(snapshot) = snapshot {
        builder = builder.restore_from(snapshot);
    }
    Ok(builder.start(events).await?)
}

/// How a lab gets to Ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Snapshots {
    /// Restore the Ready snapshot when one matches the lab's inputs; else boot, pass the gate
    /// and save it (one process at a time per lab: the others wait for it).
    #[default]
    Restore,
    /// Boot from scratch and replace the Ready snapshot.
    Fresh,
    /// Boot, and neither read nor write snapshots.
    Off,
}

impl Snapshots {
    /// `$LABTEST_SNAPSHOT`: `fresh` or `off`; unset or empty restores.
    ///
    /// # Errors
    /// [`ReadyError::BadSnapshotMode`] for any other value: a misspelt `fresh` would otherwise
    /// restore the very snapshot the user meant to replace.
    pub fn from_env() -> Result<Snapshots, ReadyError> {
        let value = std::env::var("LABTEST_SNAPSHOT").unwrap_or_default();
        match value.trim() {
            "" => Ok(Snapshots::Restore),
            "fresh" => Ok(Snapshots::Fresh),
            "off" => Ok(Snapshots::Off),
            _ => Err(ReadyError::BadSnapshotMode(value)),
        }
    }
}

/// A booted lab, with a client when it runs Kubernetes.
pub struct Ready {
    pub lab: Lab,
    pub kube: Option<KubeAccess>,
}

/// Where a lab's snapshots live and the key they must match.
#[derive(Clone)]
pub struct SnapshotTarget {
    pub store: SnapshotStore,
    pub key: SnapshotKey,
}

/// The snapshot store in the cache and the key of the built lab: lab.toml, the run scripts,
/// QEMU's version, the accelerator.
pub fn snapshot_target(
    lab_dir: &Path,
    spec: &LabSpec,
    built: &Built,
) -> Result<SnapshotTarget, ReadyError> {
    let spec_path = lab_dir.join("lab.toml");
    let spec_text = std::fs::read_to_string(&spec_path).map_err(|source| ReadyError::Io {
        what: "reading",
        path: spec_path.clone(),
        source,
    })?;
    let key = SnapshotKey::compute(
        &spec_text,
        &built.run_dir,
        &spec.machine_names(),
        built.accel.qemu_opts(),
    )?;
    let store = snapshot_store();
    store.mark_current(&spec.name, &key);
    Ok(SnapshotTarget { store, key })
}

/// A Ready lab: restored from the lab's Ready snapshot when one matches the lab's inputs, else
/// booted, taken through the readiness gate and saved as that snapshot (see [`Snapshots`]). A
/// missing, stale or broken snapshot costs one warning line and a fresh boot, never the lab.
/// A restore that fails for a reason that may pass (a host port taken meanwhile, a gate timed
/// out on a loaded host) is tried once more, then the lab boots afresh with the snapshot left
/// for other runs; only a snapshot QEMU cannot load is removed (under the lock, and only if it
/// is still the one that failed). `evidence` receives console logs, the admin kubeconfig (`kubeconfig`) and the gate's
/// evidence when it fails.
///
/// # Caveats
/// Making the snapshot is serialised per lab through a lock file in the store: a second process
/// that finds no snapshot waits (bounded, with a line every 30 s) for the first to save it, then
/// restores it, so a test suite boots the lab once.
///
/// A bring-up that fails after more than 5 minutes (the readiness gate timing out, typically)
/// is noted in the store: for the next [`crate::snapshot::FAILED_BRING_UP_HOLD`] a bring-up
/// with the same inputs fails at once with that error instead of spending as long again, so a
/// test suite whose lab cannot get Ready fails in minutes with the first failure's evidence,
/// not in one timeout per test. [`Snapshots::Fresh`] always boots.
///
/// # Errors
/// A boot, join or gate failure, with its evidence; [`ReadyError::SnapshotLock`] when another
/// process held the lock for [`SNAPSHOT_LOCK_WAIT`]; [`ReadyError::EarlierBringUpFailed`].
pub async fn ready_lab(
    lab_dir: &Path,
    spec: &LabSpec,
    built: &Built,
    evidence: &Path,
    snapshots: Snapshots,
    events: &Events,
) -> Result<Ready, ReadyError> {
    if snapshots == Snapshots::Off {
        let lab = boot(spec, built, evidence, None, events).await?;
        return make_ready(lab, spec, evidence, Origin::Booted, events).await;
    }
    let SnapshotTarget { store, key } = snapshot_target(lab_dir, spec, built)?;
    // Held from the moment this process knows it must make the snapshot until it is saved.
    let mut waited_for = None;
    let mut broken = None;
    if snapshots == Snapshots::Restore {
        let mut found = store.lookup(&spec.name, &READY_SNAPSHOT, &key);
        if found.is_err() {
            // Another process may be making it right now: wait for it, then look again.
            waited_for = Some(lock_snapshot(&store, &spec.name, events).await?);
            found = store.lookup(&spec.name, &READY_SNAPSHOT, &key);
        }
        match found {
            Ok(snapshot) => {
                for attempt in 1..=RESTORE_ATTEMPTS {
                    let restored = async {
                        let lab =
                            boot(spec, built, evidence, Some(snapshot.clone()), events).await?;
                        make_ready(lab, spec, evidence, Origin::Restored, events).await
                    };
                    let e = match restored.await {
                        Ok(ready) => return Ok(ready),
                        Err(e) => e,
                    };
                    let (retry, next) = match restore_failure(&e) {
                        RestoreFailure::BadSnapshot => {
                            broken = Some(snapshot.clone());
                            (false, "it cannot be restored: removing it, booting afresh and saving it again")
                        }
                        RestoreFailure::Transient if attempt < RESTORE_ATTEMPTS => {
                            (true, "trying it once more")
                        }
                        RestoreFailure::Transient => {
                            (false, "booting afresh; the snapshot stays for other runs")
                        }
                    };
                    events.emit(EventKind::Warning {
                        message: format!(
                            "restoring snapshot {} failed ({}); {next}",
                            snapshot.dir.display(),
                            Chain(&e)
                        ),
                    });
                    if !retry {
                        break;
                    }
                }
            }
            Err(e) => events.emit(EventKind::Warning {
                message: format!("{}; booting afresh and saving it", Chain(&e)),
            }),
        }
    }
    let _lock = match waited_for {
        Some(lock) => lock,
        None => lock_snapshot(&store, &spec.name, events).await?,
    };
    if let Some(snapshot) = &broken {
        store.remove_if_unchanged(snapshot)?;
    }
    if snapshots == Snapshots::Restore {
        if let Some(failed) = store.failed_bring_up(&spec.name, &key) {
            return Err(ReadyError::EarlierBringUpFailed {
                lab: spec.name.clone(),
                ago: Duration::from_secs(snapshot::now_secs().saturating_sub(failed.at)),
                error: failed.error,
            });
        }
    }
    let started = Instant::now();
    let booted = async {
        let lab = boot(spec, built, evidence, None, events).await?;
        make_ready(lab, spec, evidence, Origin::Booted, events).await
    };
    let ready = match booted.await {
        Ok(ready) => ready,
        Err(e) => {
            // A failure that comes fast (a join refused, a unit failed) costs little to see
            // again; one that took the whole readiness budget would cost every later test as
            // much.
            if started.elapsed() >= HOLD_FAILED_BRING_UPS_AFTER {
                store.note_failed_bring_up(&spec.name, &key, &Chain(&e).to_string());
            }
            return Err(e);
        }
    };
    store.clear_failed_bring_up(&spec.name);
    // The lab is Ready either way: a snapshot that cannot be saved costs the next run a boot,
    // not this one its lab.
    if let Err(e) = ready
        .lab
        .save_snapshot(&store, &READY_SNAPSHOT, &key, events)
        .await
    {
        events.emit(EventKind::Warning {
            message: format!(
                "the Ready snapshot could not be saved: {}; the next run boots afresh",
                Chain(&e)
            ),
        });
    }
    Ok(ready)
}

/// The lab restored from the snapshot `name` (saved with `labtest snapshot save`): no boot to
/// fall back on, so an unusable snapshot is an error.
pub async fn restore_named(
    lab_dir: &Path,
    spec: &LabSpec,
    built: &Built,
    evidence: &Path,
    name: &SnapshotName,
    events: &Events,
) -> Result<Ready, ReadyError> {
    let SnapshotTarget { store, key } = snapshot_target(lab_dir, spec, built)?;
    let snapshot = store.lookup(&spec.name, name, &key)?;
    let lab = boot(spec, built, evidence, Some(snapshot), events).await?;
    make_ready(lab, spec, evidence, Origin::Restored, events).await
}

/// How often a Ready snapshot is tried when restoring it fails for a reason that may pass.
const RESTORE_ATTEMPTS: u32 = 2;

/// What a failed restore says about the snapshot it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RestoreFailure {
    /// QEMU cannot load it, or its files are gone: no one can restore it.
    BadSnapshot,
    /// Anything else (a host port taken meanwhile, a gate that timed out on a loaded host):
    /// the snapshot may well be good, and other runs restore it.
    Transient,
}

fn restore_failure(error: &ReadyError) -> RestoreFailure {
    let vm = match error {
        ReadyError::Vm(vm) => Some(vm.as_ref()),
        ReadyError::Lab(lab) => match lab.as_ref() {
            LabError::Vm(vm) => Some(vm.as_ref()),
            LabError::Snapshot(SnapshotError::Unusable { .. }) => {
                return RestoreFailure::BadSnapshot
            }
            _ => None,
        },
        ReadyError::Snapshot(SnapshotError::Unusable { .. }) => return RestoreFailure::BadSnapshot,
        _ => None,
    };
    match vm {
        Some(VmError::BadSavedState { .. }) => RestoreFailure::BadSnapshot,
        _ => RestoreFailure::Transient,
    }
}

/// The lock that makes one process at a time boot a lab for its Ready snapshot; held until the
/// returned file is dropped.
async fn lock_snapshot(
    store: &SnapshotStore,
    lab: &str,
    events: &Events,
) -> Result<nix::fcntl::Flock<File>, ReadyError> {
    use nix::fcntl::{Flock, FlockArg};
    let dir = store.root().join(lab);
    std::fs::create_dir_all(&dir).map_err(|source| ReadyError::Io {
        what: "creating",
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(format!("{READY_SNAPSHOT}.lock"));
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        let file = File::create(&path).map_err(|source| ReadyError::Io {
            what: "opening the snapshot lock",
            path: path.clone(),
            source,
        })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
            Err((_, errno)) => {
                return Err(ReadyError::Io {
                    what: "locking",
                    path,
                    source: std::io::Error::from(errno),
                })
            }
        }
        if started.elapsed() > SNAPSHOT_LOCK_WAIT {
            return Err(ReadyError::SnapshotLock {
                lab: lab.to_string(),
                lock: path,
                waited: started.elapsed(),
            });
        }
        if started.elapsed() < Duration::from_secs(1) || said.elapsed() > Duration::from_secs(30) {
            said = Instant::now();
            events.emit(EventKind::Warning {
                message: format!(
                    "another process is making the Ready snapshot of lab {lab} (lock {}); waiting for it, {:.0}s so far",
                    path.display(),
                    started.elapsed().as_secs_f64()
                ),
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Where a lab handed to [`make_ready`] comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A fresh boot: nodes join, then the full readiness gate.
    Booted,
    /// A snapshot of a lab that passed the gate: nodes are joined, the gate re-checks in seconds.
    Restored,
}

/// Joins the nodes (after a boot) and takes the lab through the readiness gate.
async fn make_ready(
    lab: Lab,
    spec: &LabSpec,
    evidence: &Path,
    origin: Origin,
    events: &Events,
) -> Result<Ready, ReadyError> {
    let Some(k8s) = &spec.kubernetes else {
        return Ok(Ready { lab, kube: None });
    };
    events.emit(EventKind::Phase {
        phase: Phase::Readiness,
    });
    let master = lab.machine(&k8s.master)?;
    let join = (&k8s.join_token_command, &k8s.join_command);
    if let (Some(token), Some(join), Origin::Booted) = (join.0, join.1, origin) {
        let token_ready = Wait::new(
            format!("the join token on {}", k8s.master),
            CONTROL_PLANE_FILES,
            Duration::from_secs(3),
        );
        // A machine's wait reports itself as a check (scope: the machine).
        master
            .wait_until_succeeds(token, &token_ready)
            .await
            .map_err(Box::new)?;
        let nodes: Vec<&Machine> = lab
            .machines()
            .iter()
            .filter(|m| m.name() != k8s.master)
            .map(|m| m.as_ref())
            .collect();
        let joined = bring_up_step(
            events,
            "nodes join",
            JOIN_DEADLINE,
            join_nodes(master, &nodes, token, join, JOIN_DEADLINE),
        )
        .await?;
        // A retried join is normal on a fresh node (kube::join); the reports say it happened.
        for j in joined.iter().filter(|j| j.attempts > 1) {
            events.emit(EventKind::StepOutput {
                scope: gate::SCOPE.to_string(),
                step: "nodes join".into(),
                stream: Stream::Stdout,
                text: format!(
                    "{} joined on attempt {}; the first failed: {}",
                    j.node,
                    j.attempts,
                    j.first_failure.as_deref().unwrap_or("-")
                ),
            });
        }
    }
    let access = bring_up_step(
        events,
        "admin kubeconfig and the files it names",
        CONTROL_PLANE_FILES,
        KubeAccess::from_master(
            master,
            &k8s.admin_kubeconfig,
            k8s.apiserver_port,
            k8s.tls_server_name.as_deref(),
            &evidence.join("kubeconfig"),
            CONTROL_PLANE_FILES,
        ),
    )
    .await?;
    let node_names: Vec<String> = spec
        .machines
        .iter()
        .filter(|m| m.roles.iter().any(|r| r == "node"))
        .map(|m| m.name.clone())
        .collect();
    let mut gate = ReadinessGate::new(node_names, k8s.workload_image.clone());
    match origin {
        Origin::Restored => {
            gate.budgets = GateBudgets::restored();
            // Bound is enough to prove the scheduler and a kubelet's watch came back.
            gate.wait_running = false;
        }
        Origin::Booted => {
            let (budgets, factor) = GateBudgets::tcg_three_vms_booted_in(lab.up_in());
            if factor > 1.2 {
                events.emit(EventKind::Warning {
                    message: format!(
                        "the lab took {:.0}s to boot, {factor:.1}x the {:.0}s the readiness deadlines were measured with: they are scaled {factor:.1}x",
                        lab.up_in().as_secs_f64(),
                        gate::REFERENCE_BOOT.as_secs_f64()
                    ),
                });
            }
            gate.budgets = budgets;
        }
    }
    let machines: Vec<&Machine> = lab.machines().iter().map(|m| m.as_ref()).collect();
    let units = [k8s.kubelet_unit.as_str()];
    let evidence_dir = evidence.join("readiness");
    gate.run(access.client(), events, |failed| async {
        let mut files = gate::collect_unit_evidence(&machines, &units, &evidence_dir, failed).await;
        // Whether the host starved the lab while the gate waited.
        let cpu = evidence_dir.join("readiness-cpu.txt");
        if std::fs::write(&cpu, cpu::evidence_text(&lab.recent_samples())).is_ok() {
            files.push(cpu);
        }
        files
    })
    .await?;
    Ok(Ready {
        lab,
        kube: Some(access),
    })
}

/// The state of the cluster, each machine's kubelet and the last minutes of CPU samples at the
/// moment `what` failed, into the artifacts folder: what a user would otherwise have to reproduce the failure to see.
/// Best effort and bounded: a view that cannot be had says why in its file.
pub async fn capture_failure(
    lab: &Lab,
    kube: Option<&KubeAccess>,
    artifacts: &ArtifactsDir,
    what: &str,
) {
    if let (Some(access), Ok(kubectl)) = (kube, which::which("kubectl")) {
        let views: [(&str, &[&str]); 4] = [
            ("nodes", &["get", "nodes", "-o", "wide", "--show-labels"]),
            ("pods", &["get", "pods", "-A", "-o", "wide"]),
            ("describe-nodes", &["describe", "nodes"]),
            (
                "events",
                &["get", "events", "-A", "--sort-by=.lastTimestamp"],
            ),
        ];
        for (view, args) in views {
            let run = tokio::process::Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(access.kubeconfig())
                .arg("--request-timeout=20s")
                .args(args)
                .output();
            let text = match tokio::time::timeout(Duration::from_secs(60), run).await {
                Ok(Ok(out)) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Ok(Err(e)) => format!("kubectl did not run: {e}"),
                Err(_) => "kubectl did not answer within 60s".to_string(),
            };
            let _ = artifacts.write_kube(&format!("{what}-{view}"), &text);
        }
    }
    let _ = artifacts.write_cpu(what, &cpu::evidence_text(&lab.recent_samples()));
    let unit = lab
        .spec()
        .kubernetes
        .as_ref()
        .map(|k| k.kubelet_unit.clone())
        .unwrap_or_else(|| "kubelet.service".into());
    for machine in lab.machines() {
        // A frozen or powered-off machine cannot answer; asking would only burn the deadline.
        if !machine.is_running() || machine.qmp_status().await.ok().as_deref() != Some("running") {
            continue;
        }
        let text = machine.unit_evidence(&unit).await;
        let _ = artifacts.write_journal(machine.name(), &format!("{unit}-after-{what}"), &text);
    }
}

/// Builds a [`ReadyLab`]; see [`ReadyLab::from_dir`].
#[must_use]
pub struct ReadyLabBuilder {
    lab_dir: PathBuf,
    accel: Result<AccelChoice, AccelError>,
    host_cpus: Result<Option<HostCpus>, HostCpusError>,
    snapshots: Result<Snapshots, ReadyError>,
    keep: bool,
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
            ready_lab(
                &self.lab_dir,
                &spec,
                &built,
                &report_dir,
                snapshots,
                &events,
            )
            .await
        }
        .await;
        let mut lab = ReadyLab {
            lab: None,
            kube: None,
            events,
            view,
            report_dir,
            temp,
            keep: self.keep,
        };
        match brought_up {
            Ok(ready) => {
                lab.lab = Some(ready.lab);
                lab.kube = ready.kube;
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
    events: Events,
    view: Option<std::thread::JoinHandle<()>>,
    report_dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    keep: bool,
}

impl ReadyLab {
    /// A builder for the lab in `lab_dir` (a flake with a lab.toml), with the defaults the CLI
    /// reads from the environment: `LABTEST_ACCEL`, `LABTEST_SNAPSHOT`, `LABTEST_KEEP`,
    /// `LABTEST_REPORT_DIR`, `LABTEST_HOST_CPUS`.
    pub fn from_dir(lab_dir: impl Into<PathBuf>) -> ReadyLabBuilder {
        ReadyLabBuilder {
            lab_dir: lab_dir.into(),
            accel: AccelChoice::from_env(),
            host_cpus: HostCpus::from_env(),
            snapshots: Snapshots::from_env(),
            keep: std::env::var_os("LABTEST_KEEP").is_some(),
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
    /// [`KubeError`] at `timeout`, with the node's last observed state.
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
        crate::check::run(&self.events, TEST_SCOPE, &wait, || {
            look(&nodes, name, &condition)
        })
        .await
        .map_err(KubeError::from)?;
        Ok(started.elapsed())
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

    fn vm(error: VmError) -> ReadyError {
        ReadyError::Lab(Box::new(LabError::Vm(Box::new(error))))
    }

    /// Only a snapshot no one can restore is removed: a port race or a gate that timed out
    /// under load must not send every other run into a cold boot.
    #[test]
    fn only_a_snapshot_qemu_cannot_load_counts_as_bad() {
        let bad = [
            vm(VmError::BadSavedState {
                machine: "a".into(),
                state: "/s/a.state".into(),
                reason: "load of migration failed: Invalid argument".into(),
                console: "/c".into(),
            }),
            ReadyError::Snapshot(SnapshotError::Unusable {
                lab: "t".into(),
                name: READY_SNAPSHOT,
                reason: "made from other inputs".into(),
            }),
        ];
        for error in &bad {
            assert_eq!(
                restore_failure(error),
                RestoreFailure::BadSnapshot,
                "{}",
                Chain(error)
            );
        }
        let transient = [
            vm(VmError::Exited {
                machine: "a".into(),
                status: "exit status: 1".into(),
                during: "while loading its saved state".into(),
                console: "/c".into(),
                tail: "could not set up host forwarding rule 'tcp:127.0.0.1:40000-:6443'".into(),
            }),
            ReadyError::Gate(Box::new(crate::kube::GateError {
                check: gate::CHECK_NODES_READY.into(),
                source: crate::wait::WaitError::Timeout {
                    what: gate::CHECK_NODES_READY.into(),
                    elapsed: Duration::from_secs(60),
                    last_observed: "2/3 Ready".into(),
                },
                evidence: Vec::new(),
                passed: Vec::new(),
            })),
            ReadyError::StepTimeout {
                what: "admin kubeconfig".into(),
                timeout: Duration::from_secs(60),
            },
        ];
        for error in &transient {
            assert_eq!(
                restore_failure(error),
                RestoreFailure::Transient,
                "{}",
                Chain(error)
            );
        }
    }
}
