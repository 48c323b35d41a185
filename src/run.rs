//! `labtest run`: build, boot, wait until ready, run scenarios, report - one event stream feeding
//! the live view, the summary, JUnit, JSON and the artifacts folder.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use harness::events::{EventKind, Events, Outcome, Phase};
use harness::kube::{gate, join_nodes, GateBudgets, KubeAccess, ReadinessGate};
use harness::lab::{Lab, LabSpec};
use harness::report::{live, ArtifactsDir};
use harness::snapshot::{SnapshotKey, SnapshotStore};
use harness::vm::accel::AccelChoice;
use harness::vm::Machine;
use harness::wait::Wait;

use scenarios::file::ScenarioFile;
use scenarios::{Ctx, ScenarioError};

use crate::bringup;
use crate::session::{Info, Session};

#[derive(clap::Args)]
pub struct RunArgs {
    /// A built-in scenario to run (repeatable); all of them when neither this nor
    /// `--scenario-file` is given. See `labtest list`.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// A scenario file to run (repeatable): an incident written down as steps (see
    /// scenarios/files/README.md), named in reports by its `name`. Checked against the lab
    /// before anything boots. With only files given, no built-in scenario runs.
    #[arg(long = "scenario-file", value_name = "FILE")]
    scenario_files: Vec<PathBuf>,
    /// Where the run's artifacts go (console logs, journals, kubectl output, reports).
    #[arg(long, value_name = "DIR")]
    report_dir: Option<PathBuf>,
    /// Also write the JUnit XML here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Also write the JSON summary here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// After a failed run, keep the lab up for debugging until Ctrl-C or `labtest down`.
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    snapshot: SnapshotArgs,
}

/// How a run or `up` gets its Ready lab.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct SnapshotArgs {
    /// Boot from scratch and replace the lab's Ready snapshot (by default a matching snapshot
    /// is restored, and made first when there is none).
    #[arg(long, conflicts_with = "no_snapshot")]
    pub fresh: bool,
    /// Boot once and run every scenario on that one boot; neither read nor write snapshots.
    #[arg(long)]
    pub no_snapshot: bool,
}

/// The snapshot every run and `up` restores: the lab right after the readiness gate passed.
pub const READY_SNAPSHOT: &str = "ready";

/// A booted lab, with a client when it runs Kubernetes.
pub struct Ready {
    pub lab: Lab,
    pub kube: Option<KubeAccess>,
}

/// How long a master may take to create its PKI, join token and admin kubeconfig after boot.
const CONTROL_PLANE_FILES: Duration = Duration::from_secs(600);
const JOIN_DEADLINE: Duration = Duration::from_secs(600);

/// A Ready lab for `labtest run` (each scenario) and `labtest up`: restored from the lab's
/// Ready snapshot when one matches the lab's inputs, else booted, taken through the readiness
/// gate and saved as that snapshot (unless `snapshots` is off). A missing, stale or broken
/// snapshot costs one warning line and a fresh boot, never the run. `evidence` receives console
/// logs, the admin kubeconfig (`kubeconfig`) and the gate's evidence when it fails.
pub async fn ready_lab(
    lab_dir: &Path,
    spec: &LabSpec,
    built: &bringup::Built,
    evidence: &Path,
    snapshots: SnapshotArgs,
    events: &Events,
) -> Result<Ready> {
    if snapshots.no_snapshot {
        let lab = bringup::boot(spec, built, evidence, None, events).await?;
        return make_ready(lab, spec, evidence, Origin::Booted, events).await;
    }
    let SnapshotTarget { store, key } = snapshot_target(lab_dir, spec, built)?;
    if !snapshots.fresh {
        match store.lookup(&spec.name, READY_SNAPSHOT, &key) {
            Ok(snapshot) => {
                let dir = snapshot.dir.clone();
                let restored = async {
                    let lab = bringup::boot(spec, built, evidence, Some(snapshot), events).await?;
                    make_ready(lab, spec, evidence, Origin::Restored, events).await
                };
                match restored.await {
                    Ok(ready) => return Ok(ready),
                    Err(e) => {
                        events.emit(EventKind::Warning {
                            message: format!(
                                "restoring snapshot {} failed ({e:#}); removing it, booting afresh and saving it again",
                                dir.display()
                            ),
                        });
                        store.remove(&spec.name, READY_SNAPSHOT)?;
                    }
                }
            }
            Err(e) => events.emit(EventKind::Warning {
                message: format!("{e}; booting afresh and saving it"),
            }),
        }
    }
    let lab = bringup::boot(spec, built, evidence, None, events).await?;
    let ready = make_ready(lab, spec, evidence, Origin::Booted, events).await?;
    // The lab is Ready either way: a snapshot that cannot be saved costs the next run a boot,
    // not this one its lab.
    if let Err(e) = ready
        .lab
        .save_snapshot(&store, READY_SNAPSHOT, &key, events)
        .await
    {
        events.emit(EventKind::Warning {
            message: format!(
                "the Ready snapshot could not be saved: {e}; the next run boots afresh"
            ),
        });
    }
    Ok(ready)
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
    built: &bringup::Built,
) -> Result<SnapshotTarget> {
    let spec_path = lab_dir.join("lab.toml");
    let spec_text = std::fs::read_to_string(&spec_path)
        .with_context(|| format!("reading {}", spec_path.display()))?;
    let key = SnapshotKey::compute(
        &spec_text,
        &built.run_dir,
        &spec.machine_names(),
        built.accel.qemu_opts(),
    )?;
    Ok(SnapshotTarget {
        store: snapshot_store(),
        key,
    })
}

/// `$LABTEST_SNAPSHOTS`, else `<cache>/snapshots`: snapshots are GBs, so they may live apart
/// from the cached builds.
pub fn snapshot_store() -> SnapshotStore {
    SnapshotStore::new(
        std::env::var_os("LABTEST_SNAPSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| bringup::cache_dir().join("snapshots")),
    )
}

/// The lab restored from the snapshot `name` (saved with `labtest snapshot save`), for
/// `labtest up --from NAME`: no boot to fall back on, so an unusable snapshot is an error.
pub async fn restore_named(
    lab_dir: &Path,
    spec: &LabSpec,
    built: &bringup::Built,
    evidence: &Path,
    name: &str,
    events: &Events,
) -> Result<Ready> {
    let SnapshotTarget { store, key } = snapshot_target(lab_dir, spec, built)?;
    let snapshot = store.lookup(&spec.name, name, &key)?;
    let lab = bringup::boot(spec, built, evidence, Some(snapshot), events).await?;
    make_ready(lab, spec, evidence, Origin::Restored, events).await
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
) -> Result<Ready> {
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
        master.wait_until_succeeds(token, &token_ready).await?;
        let nodes: Vec<&Machine> = lab
            .machines()
            .iter()
            .filter(|m| m.name() != k8s.master)
            .map(|m| m.as_ref())
            .collect();
        join_nodes(master, &nodes, token, join, JOIN_DEADLINE).await?;
    }
    let access = KubeAccess::from_master(
        master,
        &k8s.admin_kubeconfig,
        k8s.apiserver_port,
        k8s.tls_server_name.as_deref(),
        &evidence.join("kubeconfig"),
        CONTROL_PLANE_FILES,
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
    gate.run(access.client(), events, |failed| {
        gate::collect_unit_evidence(&machines, &units, &evidence_dir, failed)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Ready {
        lab,
        kube: Some(access),
    })
}

/// Loads every `--scenario-file` and checks it against the lab spec (machine and generation
/// names, manifests) before anything boots: a typo found after a twenty-minute boot wastes the
/// boot. Names must be unique in the run, since they are JUnit testcase and artifact names.
fn load_scenario_files(paths: &[PathBuf], spec: &LabSpec) -> Result<Vec<ScenarioFile>> {
    let machines = spec.machine_names();
    let generations: Vec<String> = spec.generations.iter().map(|g| g.name.clone()).collect();
    let mut files: Vec<ScenarioFile> = Vec::new();
    for path in paths {
        let file = ScenarioFile::load(path)?;
        file.validate_against(&machines, &generations)?;
        scenarios::runner::check_manifests(&file)?;
        let taken = if scenarios::is_builtin(&file.name) {
            Some("a built-in scenario".to_string())
        } else {
            files
                .iter()
                .find(|f| f.name == file.name)
                .map(|f| format!("scenario file {}", f.path.display()))
        };
        if let Some(other) = taken {
            bail!(
                "{}:{}: name: expected a name no other scenario of this run has (it names the JUnit testcase and the artifacts), saw {:?}, the name of {other}",
                path.display(),
                name_line(path),
                file.name
            );
        }
        files.push(file);
    }
    Ok(files)
}

/// The line of a scenario file's top-level `name = ...` (1 if it cannot be found): the file
/// model keeps no line for it, and top-level keys precede every `[[step]]`.
fn name_line(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .position(|l| {
            l.trim_start()
                .strip_prefix("name")
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

fn default_report_dir() -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    PathBuf::from("target/labtest").join(format!("run-{secs}"))
}

pub async fn run(lab_dir: &Path, accel: AccelChoice, args: RunArgs) -> Result<ExitCode> {
    let spec = bringup::load_spec(lab_dir)?;
    for name in &args.scenarios {
        if !scenarios::is_builtin(name) {
            let known: Vec<&str> = scenarios::CATALOGUE.iter().map(|(n, _)| *n).collect();
            bail!("no scenario named {name:?}; known: {}", known.join(", "));
        }
    }
    let files = load_scenario_files(&args.scenario_files, &spec)?;
    let names: Vec<String> = if args.scenarios.is_empty() && files.is_empty() {
        scenarios::CATALOGUE
            .iter()
            .map(|(n, _)| n.to_string())
            .collect()
    } else {
        let from_files = files.iter().map(|f| f.name.clone());
        args.scenarios.iter().cloned().chain(from_files).collect()
    };
    let report_dir = args.report_dir.clone().unwrap_or_else(default_report_dir);
    let events = Events::new();
    let recorder = events.record();
    let view = live::spawn(&events, live::Mode::detect());
    let artifacts = ArtifactsDir::create(&report_dir, &events)
        .with_context(|| format!("creating the report dir {}", report_dir.display()))?;
    events.emit(EventKind::RunStarted {
        lab: spec.name.clone(),
        scenarios: names.clone(),
    });
    let session = Session::for_lab(lab_dir)?;
    let work = report_dir.join("work");
    let mut aborted = None;
    match bringup::build(lab_dir, &spec, &work, accel, &events).await {
        Err(e) => aborted = Some(format!("the lab could not be built: {e:#}")),
        Ok(built) => {
            // Without snapshots every scenario shares one boot; with them each gets a pristine
            // Ready lab of its own, so no scenario's faults leak into the next.
            let mut shared: Option<(Arc<Lab>, Option<KubeAccess>)> = None;
            for (i, name) in names.iter().enumerate() {
                let (lab, kube) = match &shared {
                    Some((lab, kube)) => (lab.clone(), kube.clone()),
                    None => {
                        let snapshots = SnapshotArgs {
                            fresh: args.snapshot.fresh && i == 0,
                            ..args.snapshot
                        };
                        let evidence = if snapshots.no_snapshot {
                            report_dir.clone()
                        } else {
                            report_dir.join("labs").join(name)
                        };
                        match ready_lab(lab_dir, &spec, &built, &evidence, snapshots, &events).await
                        {
                            Ok(ready) => {
                                let got = (Arc::new(ready.lab), ready.kube);
                                if snapshots.no_snapshot {
                                    shared = Some(got.clone());
                                }
                                got
                            }
                            Err(e) => {
                                aborted = Some(format!("the lab could not be brought up: {e:#}"));
                                break;
                            }
                        }
                    }
                };
                events.emit(EventKind::Phase {
                    phase: Phase::Scenario,
                });
                let passed = run_scenario(
                    name,
                    &lab,
                    kube.as_ref(),
                    lab_dir,
                    &files,
                    &events,
                    &artifacts,
                    &work,
                )
                .await;
                if !passed && args.keep {
                    let target = snapshot_target(lab_dir, &spec, &built).ok();
                    keep_serving(lab.clone(), lab_dir, &spec, &session, target).await?;
                }
            }
        }
    }
    if aborted.is_none() {
        events.emit(EventKind::Phase {
            phase: Phase::Teardown,
        });
    }
    events.emit(EventKind::RunFinished { aborted });
    let _ = view.join();
    let summary = artifacts.write_reports(&recorder.events())?;
    if let Some(path) = &args.junit {
        std::fs::write(path, harness::report::junit::to_string(&summary)?)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, harness::report::json::summary_json(&summary)?)?;
    }
    print!("{}", summary.render_text());
    Ok(ExitCode::from(summary.result.exit_code() as u8))
}

/// Runs one scenario (built-in or file) on a Ready lab, reported as one attempt; `false` when
/// it did not pass. Afterwards every machine it rebuilt is back on its start generation.
#[allow(clippy::too_many_arguments)]
async fn run_scenario(
    name: &str,
    lab: &Lab,
    kube: Option<&KubeAccess>,
    lab_dir: &Path,
    files: &[ScenarioFile],
    events: &Events,
    artifacts: &ArtifactsDir,
    work: &Path,
) -> bool {
    events.emit(EventKind::ScenarioStarted {
        scenario: name.to_string(),
        attempt: 1,
    });
    let start = Instant::now();
    let result = match kube {
        Some(access) => {
            let ctx = Ctx {
                lab,
                lab_dir,
                client: access.client().clone(),
                events,
                artifacts,
                work_dir: work.to_path_buf(),
                scope: name.to_string(),
                switches: Default::default(),
            };
            // File names never shadow built-ins (refused at load).
            let result = match files.iter().find(|f| f.name == name) {
                Some(file) => scenarios::runner::run_file(file, &ctx).await,
                None => scenarios::run(name, &ctx).await,
            };
            // Also after a failure: the next scenario must start on the booted systems.
            let returned = ctx.return_to_start_generations().await;
            result.and(returned)
        }
        None => Err(ScenarioError::Error(format!(
            "scenario {name} needs Kubernetes, and lab {} has no [kubernetes] in its lab.toml",
            lab.spec().name
        ))),
    };
    let (outcome, message) = match result {
        Ok(()) => (Outcome::Passed, None),
        Err(e) => {
            capture_failure(lab, kube, artifacts, name).await;
            (e.outcome(), Some(e.to_string()))
        }
    };
    events.emit(EventKind::ScenarioFinished {
        scenario: name.to_string(),
        attempt: 1,
        outcome,
        took: start.elapsed(),
        message,
    });
    outcome == Outcome::Passed
}

/// `--keep` after a failure: this process becomes the lab's server so `labtest exec`,
/// `kubectl` and the faults work from another terminal, until Ctrl-C or `labtest down`.
async fn keep_serving(
    lab: Arc<Lab>,
    lab_dir: &Path,
    spec: &LabSpec,
    session: &Session,
    snapshots: Option<SnapshotTarget>,
) -> Result<()> {
    let Some(_lock) = session.lock()? else {
        bail!(
            "cannot keep the lab up: another lab is already up for {}",
            lab_dir.display()
        );
    };
    let info = Info::serving(spec, lab_dir, &lab, session)?;
    session.write_info(&info)?;
    println!(
        "a scenario failed; the lab stays up for debugging (Ctrl-C or `labtest down` ends it):"
    );
    crate::print_reach(&info);
    let served = crate::serve::Served {
        lab_dir: lab_dir.to_path_buf(),
        work_dir: session.dir.join("work"),
        snapshots,
        switches: Default::default(),
    };
    crate::serve::serve(lab, session, served).await?;
    session.clear_stale();
    Ok(())
}

/// The state of the cluster and of each machine's kubelet at the moment a scenario failed, into
/// the artifacts folder: what a user would otherwise have to reproduce the failure to see.
async fn capture_failure(
    lab: &Lab,
    kube: Option<&KubeAccess>,
    artifacts: &ArtifactsDir,
    scenario: &str,
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
        for (what, args) in views {
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
            let _ = artifacts.write_kube(&format!("{scenario}-{what}"), &text);
        }
    }
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
        let _ = artifacts.write_journal(machine.name(), &format!("{unit}-after-{scenario}"), &text);
    }
}
