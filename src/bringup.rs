//! From a lab dir to a booted lab: prepare + `nix build`, the accelerator verdict, the boot
//! (or the restore from a snapshot).
//! Shared by `labtest run` and `labtest up`, so both bring a lab up the same way.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use harness::events::{EventKind, Events, Phase};
use harness::lab::{self, Lab, LabBuilder, LabSpec};
use harness::snapshot::Snapshot;
use harness::vm::accel::{self, AccelChoice};
use harness::vm::Accel;

/// How long a lab's build may take (a cold fixture lab builds a guest and Kubernetes).
const BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

pub fn cache_dir() -> PathBuf {
    std::env::var_os("LABTEST_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("labtest")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/labtest")))
        .unwrap_or_else(|| std::env::temp_dir().join("labtest-cache"))
}

/// Loads `<lab_dir>/lab.toml`.
pub fn load_spec(lab_dir: &Path) -> Result<LabSpec> {
    Ok(LabSpec::load(lab_dir)?)
}

/// A lab's machines, built, and the accelerator they run with.
pub struct Built {
    pub run_dir: PathBuf,
    pub accel: Accel,
}

/// Builds the lab (prepare + `nix build`) and settles the accelerator; `work_dir` receives the
/// build's out-links and logs.
pub async fn build(
    lab_dir: &Path,
    spec: &LabSpec,
    work_dir: &Path,
    accel_choice: AccelChoice,
    events: &Events,
) -> Result<Built> {
    events.emit(EventKind::Phase {
        phase: Phase::Build,
    });
    let run_dir = lab::build(
        lab_dir,
        spec,
        &work_dir.join("build"),
        events,
        BUILD_TIMEOUT,
    )
    .await
    .with_context(|| format!("building lab {}", lab_dir.display()))?;
    let probe = spec
        .machines
        .first()
        .map(|m| run_dir.join("bin").join(format!("run-{}-vm", m.name)))
        .context("the lab has no machines")?;
    let verdict =
        tokio::task::spawn_blocking(move || accel::resolve(accel_choice, &probe, &cache_dir()))
            .await
            .context("the accelerator probe panicked")??;
    if let Some(warning) = &verdict.warning {
        events.emit(EventKind::Warning {
            message: warning.clone(),
        });
    }
    Ok(Built {
        run_dir,
        accel: verdict.accel,
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
) -> Result<Lab> {
    events.emit(EventKind::Phase { phase: Phase::Boot });
    let mut builder = LabBuilder::new(spec.clone(), &built.run_dir)
        .accel(built.accel)
        .boot_timeout(BOOT_TIMEOUT)
        .evidence_dir(evidence_dir);
    if let Some(snapshot) = snapshot {
        builder = builder.restore_from(snapshot);
    }
    Ok(builder.start(events).await?)
}
