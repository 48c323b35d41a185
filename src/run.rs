//! `labtest run`: build, boot, wait until ready, run scenarios, report - one event stream feeding
//! the live view, the summary, JUnit, JSON and the artifacts folder.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use harness::error::Chain;
use harness::events::{EventKind, Events, Outcome, Phase};
use harness::kube::KubeAccess;
use harness::lab::{Lab, LabSpec};
use harness::ready::{self, FailureKeeper, SnapshotTarget, Snapshots};
use harness::report::{live, ArtifactsDir};
use harness::vm::accel::AccelChoice;
use harness::vm::cpus::HostCpus;
use tokio::signal::unix::{signal, Signal, SignalKind};

use scenarios::file::ScenarioFile;
use scenarios::{Ctx, ScenarioError};

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
    /// Do not save a failed scenario's lab as a snapshot (by default each failure is saved the
    /// moment it is seen, and the reports print `labtest up --from NAME` to step back into it).
    #[arg(long, env = "LABTEST_NO_FAILURE_SNAPSHOTS")]
    no_failure_snapshots: bool,
    /// Disk the saved failures may use together, in GiB; the oldest go first.
    #[arg(
        long,
        value_name = "GIB",
        env = "LABTEST_FAILURE_SNAPSHOTS_GIB",
        default_value_t = 4.0
    )]
    failure_snapshots_gib: f64,
    #[command(flatten)]
    snapshot: SnapshotArgs,
    #[command(flatten)]
    pub host_cpus: HostCpusArg,
    /// Run on the lab `labtest up` keeps running for this lab dir instead of a lab of the run's
    /// own: no boot, no restore, so an incident can be iterated on in seconds. The scenarios
    /// see the lab as it is (faults and rebuilds made since `up` included).
    #[arg(long, env = "LABTEST_ATTACH", conflicts_with_all = ["fresh", "no_snapshot", "keep"])]
    attach: bool,
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

/// `--host-cpus N` / `LABTEST_HOST_CPUS=N`: how much host a lab gets.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct HostCpusArg {
    /// Confine every QEMU of the lab to the first N host CPUs (N from 1 to the CPUs labtest may
    /// use), to see how the lab fares on a smaller host.
    #[arg(long, value_name = "N", env = "LABTEST_HOST_CPUS")]
    pub host_cpus: Option<String>,
}

impl HostCpusArg {
    /// The CPUs asked for, checked against this host before anything builds or boots.
    pub fn parse(&self) -> Result<Option<HostCpus>> {
        Ok(self.host_cpus.as_deref().map(HostCpus::parse).transpose()?)
    }
}

impl SnapshotArgs {
    pub fn mode(self) -> Snapshots {
        if self.no_snapshot {
            Snapshots::Off
        } else if self.fresh {
            Snapshots::Fresh
        } else {
            Snapshots::Restore
        }
    }
}

/// What a run runs: the scenario files, loaded and checked against the lab spec, and the names
/// in order (the built-ins asked for, then the files; every built-in when neither is given).
fn plan(
    builtins: &[String],
    file_paths: &[PathBuf],
    spec: &LabSpec,
) -> Result<(Vec<ScenarioFile>, Vec<String>)> {
    for name in builtins {
        if !scenarios::is_builtin(name) {
            let known: Vec<&str> = scenarios::CATALOGUE.iter().map(|(n, _)| *n).collect();
            bail!("no scenario named {name:?}; known: {}", known.join(", "));
        }
    }
    let files = load_scenario_files(file_paths, spec)?;
    let names: Vec<String> = if builtins.is_empty() && files.is_empty() {
        scenarios::CATALOGUE
            .iter()
            .map(|(n, _)| n.to_string())
            .collect()
    } else {
        let from_files = files.iter().map(|f| f.name.clone());
        builtins.iter().cloned().chain(from_files).collect()
    };
    Ok((files, names))
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

pub async fn run(
    lab_dir: &Path,
    accel: AccelChoice,
    args: RunArgs,
    timeout: Duration,
) -> Result<ExitCode> {
    let spec = LabSpec::load(lab_dir)?;
    let host_cpus = args.host_cpus.parse()?;
    let (files, names) = plan(&args.scenarios, &args.scenario_files, &spec)?;
    let report_dir = args.report_dir.clone().unwrap_or_else(default_report_dir);
    if args.attach {
        return run_attached(lab_dir, &args, names, &report_dir, timeout).await;
    }
    let events = Events::new();
    let recorder = events.record();
    let view = live::spawn(&events, live::Mode::detect());
    let artifacts = ArtifactsDir::create(&report_dir, &events)
        .with_context(|| format!("creating the report dir {}", report_dir.display()))?
        .with_history(ready::history_file());
    events.emit(EventKind::RunStarted {
        lab: spec.name.clone(),
        scenarios: names.clone(),
        started_at: Some(harness::utc::rfc3339(events.started_at())),
    });
    let session = Session::for_lab(lab_dir)?;
    let work = report_dir.join("work");
    // The scenario running now, with its lab: what an interrupt takes its evidence from.
    let running: std::sync::Mutex<Option<Running>> = std::sync::Mutex::new(None);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let body = async {
        let mut aborted = None;
        match ready::build(lab_dir, &spec, &work, accel, host_cpus, &events).await {
            Err(e) => aborted = Some(format!("the lab could not be built: {}", Chain(&e))),
            Ok(built) => {
                let keeping = if args.no_failure_snapshots {
                    None
                } else {
                    ready::snapshot_target(lab_dir, &spec, &built)
                        .ok()
                        .map(|target| {
                            FailureKeeper::new(target, lab_dir, &report_dir).budget(
                                (args.failure_snapshots_gib.max(0.0) * f64::from(1u32 << 30))
                                    as u64,
                            )
                        })
                };
                // Without snapshots every scenario shares one boot; with them each gets a pristine
                // Ready lab of its own, so no scenario's faults leak into the next.
                let mut shared: Option<(Arc<Lab>, Option<KubeAccess>)> = None;
                for (i, name) in names.iter().enumerate() {
                    let (lab, kube) = match &shared {
                        Some((lab, kube)) => (lab.clone(), kube.clone()),
                        None => {
                            // --fresh replaces the snapshot once; later scenarios restore it.
                            let snapshots = match args.snapshot.mode() {
                                Snapshots::Fresh if i > 0 => Snapshots::Restore,
                                mode => mode,
                            };
                            let evidence = if snapshots == Snapshots::Off {
                                report_dir.clone()
                            } else {
                                report_dir.join("labs").join(name)
                            };
                            match ready::ready_lab(
                                lab_dir, &spec, &built, &evidence, snapshots, &events,
                            )
                            .await
                            {
                                Ok(ready) => {
                                    let got = (Arc::new(ready.lab), ready.kube);
                                    if snapshots == Snapshots::Off {
                                        shared = Some(got.clone());
                                    }
                                    got
                                }
                                Err(e) => {
                                    aborted = Some(format!(
                                        "the lab could not be brought up: {}",
                                        Chain(&e)
                                    ));
                                    break;
                                }
                            }
                        }
                    };
                    events.emit(EventKind::Phase {
                        phase: Phase::Scenario,
                    });
                    if let Ok(mut now) = running.lock() {
                        *now = Some(Running {
                            name: name.clone(),
                            lab: lab.clone(),
                            kube: kube.clone(),
                            started: Instant::now(),
                        });
                    }
                    let passed = run_scenario(
                        name,
                        &lab,
                        kube.as_ref(),
                        lab_dir,
                        &files,
                        &events,
                        &artifacts,
                        &work,
                        keeping.as_ref(),
                    )
                    .await;
                    if let Ok(mut now) = running.lock() {
                        *now = None;
                    }
                    if !passed && args.keep {
                        let target = ready::snapshot_target(lab_dir, &spec, &built).ok();
                        keep_serving(lab.clone(), kube.clone(), lab_dir, &spec, &session, target)
                            .await?;
                    }
                }
            }
        }
        anyhow::Ok(aborted)
    };
    // A signal stops the run with its shell exit status; the deadline stops it the same way
    // and the summary's status says how it ended.
    let (aborted, interrupted) = tokio::select! {
        done = body => (done?, None),
        (signal, code) = first_signal(&mut term, &mut int) => (None, Some((signal.to_string(), Some(code)))),
        _ = tokio::time::sleep(timeout) => (None, Some((
            format!("the run's deadline ({}s; --timeout)", timeout.as_secs()),
            None,
        ))),
    };
    let aborted = match &interrupted {
        None => aborted,
        Some((signal, _)) => {
            let current = running.lock().ok().and_then(|mut now| now.take());
            let during = current
                .as_ref()
                .map(|r| format!(" during scenario {}", r.name))
                .unwrap_or_default();
            if let Some(r) = current {
                events.emit(EventKind::ScenarioFinished {
                    scenario: r.name.clone(),
                    attempt: 1,
                    outcome: Outcome::Error,
                    took: r.started.elapsed(),
                    message: Some(format!("interrupted by {signal}")),
                });
                // The evidence, bounded; a second signal skips it.
                tokio::select! {
                    _ = tokio::time::timeout(
                        INTERRUPT_EVIDENCE,
                        ready::capture_failure(&r.lab, r.kube.as_ref(), &artifacts, &r.name),
                    ) => {}
                    _ = first_signal(&mut term, &mut int) => {}
                }
                // Dropping the last handle tears the lab down and keeps its console logs.
            }
            Some(format!("interrupted by {signal}{during}"))
        }
    };
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
    Ok(match interrupted {
        Some((_, Some(code))) => ExitCode::from(code),
        _ => ExitCode::from(summary.result.exit_code() as u8),
    })
}

/// How long an interrupted run spends on the running scenario's evidence: the whole stop must
/// fit the 15 s a CI runner or nextest gives between SIGTERM and SIGKILL.
const INTERRUPT_EVIDENCE: Duration = Duration::from_secs(10);

/// The scenario a run is in, for an interrupt.
struct Running {
    name: String,
    lab: Arc<Lab>,
    kube: Option<KubeAccess>,
    started: Instant,
}

/// The first SIGTERM or SIGINT, with the exit status a shell reports for it (143 / 130).
pub(crate) async fn first_signal(term: &mut Signal, int: &mut Signal) -> (&'static str, u8) {
    tokio::select! {
        _ = term.recv() => ("SIGTERM", 143),
        _ = int.recv() => ("SIGINT", 130),
    }
}

/// `labtest run --attach`: hands the scenarios to the server of the lab that is up and prints
/// the summary it sends back; the server writes the reports into `report_dir`.
async fn run_attached(
    lab_dir: &Path,
    args: &RunArgs,
    names: Vec<String>,
    report_dir: &Path,
    timeout: Duration,
) -> Result<ExitCode> {
    let session = crate::running(lab_dir)?;
    std::fs::create_dir_all(report_dir)
        .with_context(|| format!("creating the report dir {}", report_dir.display()))?;
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    println!(
        "running {} on the lab kept up for {} (no boot); reports go to {}",
        names.join(", "),
        lab_dir.display(),
        report_dir.display()
    );
    let request = crate::control::Request::Run {
        scenarios: args.scenarios.clone(),
        scenario_files: args.scenario_files.iter().map(|p| absolute(p)).collect(),
        report_dir: absolute(report_dir),
    };
    let reply = crate::control::call(&session.socket(), &request, timeout).await?;
    if let Some(error) = reply.error {
        bail!("the lab's server could not run the scenarios: {error}");
    }
    for (wanted, written) in [(&args.junit, "junit.xml"), (&args.json, "summary.json")] {
        if let Some(path) = wanted {
            let from = report_dir.join("report").join(written);
            std::fs::copy(&from, path)
                .with_context(|| format!("copying {} to {}", from.display(), path.display()))?;
        }
    }
    print!("{}", reply.text);
    Ok(ExitCode::from(reply.status.unwrap_or(1) as u8))
}

/// The server's half of `labtest run --attach`: the scenarios on the lab it serves, one after
/// the other, reported into `report_dir` like a run of their own. Returns the summary text and
/// the exit status the CLI promises.
pub async fn run_on_served(
    lab: &Lab,
    kube: Option<&KubeAccess>,
    lab_dir: &Path,
    builtins: &[String],
    file_paths: &[PathBuf],
    report_dir: &Path,
) -> Result<(String, i32)> {
    let (files, names) = plan(builtins, file_paths, lab.spec())?;
    let events = Events::new();
    let recorder = events.record();
    let artifacts = ArtifactsDir::create(report_dir, &events)
        .map(|a| a.with_history(ready::history_file()))
        .with_context(|| format!("creating the report dir {}", report_dir.display()))?;
    events.emit(EventKind::RunStarted {
        lab: lab.spec().name.clone(),
        scenarios: names.clone(),
        started_at: Some(harness::utc::rfc3339(events.started_at())),
    });
    let work = report_dir.join("work");
    for name in &names {
        events.emit(EventKind::Phase {
            phase: Phase::Scenario,
        });
        run_scenario(
            name, lab, kube, lab_dir, &files, &events, &artifacts, &work, None,
        )
        .await;
    }
    events.emit(EventKind::RunFinished { aborted: None });
    let summary = artifacts.write_reports(&recorder.events())?;
    Ok((summary.render_text(), summary.result.exit_code()))
}

/// Runs one scenario (built-in or file) on a Ready lab, reported as one attempt; `false` when
/// it did not pass. A failure is saved first, when `keeping` says where ([`FailureKeeper`]),
/// before anything undoes it; afterwards every machine it rebuilt is back on its start
/// generation.
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
    keeping: Option<&FailureKeeper>,
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
            // Saved before the generations go back or evidence capture runs a command.
            if let (Err(e), Some(keeping)) = (&result, keeping) {
                // Reported through the events either way; a lab not kept costs the run nothing.
                let _ = keeping.keep(lab, name, &e.to_string(), events).await;
            }
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
            ready::capture_failure(lab, kube, artifacts, name).await;
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
    kube: Option<KubeAccess>,
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
        kube,
    };
    crate::serve::serve(lab, session, served).await?;
    session.clear_stale();
    Ok(())
}
