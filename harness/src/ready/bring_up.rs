//! The bring-up: build, boot or restore, join, the readiness gate, and the Ready snapshot.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::lock::lock_snapshot;
use super::settings::{cache_dir, snapshot_store, Snapshots};
use super::{ReadyError, READY_SNAPSHOT};
use crate::error::Chain;
use crate::events::{EventKind, Events, Phase, Stream};
use crate::kube::{gate, join_nodes, GateBudgets, KubeAccess, ReadinessGate};
use crate::lab::{self, Lab, LabBuilder, LabError, LabSpec};
use crate::report::cpu;
use crate::snapshot::{self, Snapshot, SnapshotError, SnapshotKey, SnapshotName, SnapshotStore};
use crate::vm::accel::{self, AccelChoice};
use crate::vm::cpus::HostCpus;
use crate::vm::{Accel, Machine, VmError};
use crate::wait::Wait;

/// How long a lab's build may take (a cold fixture lab builds a guest and Kubernetes).
const BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// How long a master may take to create its PKI, join token and admin kubeconfig after boot.
const CONTROL_PLANE_FILES: Duration = Duration::from_secs(600);
const JOIN_DEADLINE: Duration = Duration::from_secs(600);
/// A bring-up that failed after this long is not tried again with the same inputs for
/// [`crate::snapshot::FAILED_BRING_UP_HOLD`] (see [`ready_lab`]).
const HOLD_FAILED_BRING_UPS_AFTER: Duration = Duration::from_secs(5 * 60);

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

/// A lab's machines, built, the accelerator they run with and the host CPUs they may use.
pub struct Built {
    /// The `nix build` result holding `bin/run-<machine>-vm`.
    pub run_dir: PathBuf,
    /// The accelerator settled for this host (KVM when it works, else TCG).
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

/// A booted lab, with a client when it runs Kubernetes.
pub struct Ready {
    /// The lab, its machines up.
    pub lab: Lab,
    /// A client with the lab's admin kubeconfig; `None` for a lab without `[kubernetes]`.
    pub kube: Option<KubeAccess>,
}

/// Where a lab's snapshots live and the key they must match.
#[derive(Clone)]
pub struct SnapshotTarget {
    /// Where the snapshots are kept.
    pub store: SnapshotStore,
    /// What a snapshot must have been made from to be restored: lab.toml, run scripts, QEMU, accelerator.
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
/// process held the lock for 75 minutes; [`ReadyError::EarlierBringUpFailed`].
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
    // A lab saved failing, or with faults on it, is wanted as it was: the gate would fail on
    // the very state it was kept for.
    let origin = if snapshot.meta.failure.is_some() || !snapshot.meta.faults.is_empty() {
        Origin::AsSaved
    } else {
        Origin::Restored
    };
    let lab = boot(spec, built, evidence, Some(snapshot), events).await?;
    make_ready(lab, spec, evidence, origin, events).await
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

/// Where a lab handed to [`make_ready`] comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A fresh boot: nodes join, then the full readiness gate.
    Booted,
    /// A snapshot of a lab that passed the gate: nodes are joined, the gate re-checks in seconds.
    Restored,
    /// A snapshot kept to look at (a failure, faults on): no gate, and no client when the
    /// master is frozen.
    AsSaved,
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
    if origin == Origin::AsSaved && master.is_frozen().await {
        events.emit(EventKind::Warning {
            message: format!(
                "{} (the master) is frozen as it was saved: no Kubernetes client until `labtest thaw {}`",
                k8s.master, k8s.master
            ),
        });
        return Ok(Ready { lab, kube: None });
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
        Origin::AsSaved => {
            return Ok(Ready {
                lab,
                kube: Some(access),
            })
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
