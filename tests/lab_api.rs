//! Tier 4: the Rust API a user writes lab tests against (README "Write your own lab test"),
//! on the fixture lab restored from its Ready snapshot by `harness::ready::ReadyLab`.
mod support;

use std::error::Error;
use std::time::Duration;

use harness::kube::conditions::{node_not_ready, node_ready};
use harness::nix::SystemProfile;
use harness::ready::ReadyLab;
use harness::report::ArtifactsDir;
use scenarios::file::ScenarioFile;
use scenarios::Ctx;

/// The README's example, as a user copies it: power a worker off, see the cluster notice,
/// power it on, see it come back.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_test_powers_off_a_worker_and_sees_the_cluster_notice() -> Result<(), Box<dyn Error>>
{
    let lab = ReadyLab::from_dir(support::repo_root().join("fixtures/lab"))
        .start()
        .await?;
    let worker = lab.machine("limiting-factor")?;
    worker.crash().await?;
    let noticed = lab
        .wait_node("limiting-factor", node_not_ready, Duration::from_secs(180))
        .await?;
    worker.start().await?;
    let back = lab
        .wait_node("limiting-factor", node_ready, Duration::from_secs(300))
        .await?;
    assert_eq!(worker.succeed("hostname").await?.trim(), "limiting-factor");
    println!(
        "NotReady {:.1}s after the power loss, Ready {:.1}s after power-on",
        noticed.as_secs_f64(),
        back.as_secs_f64()
    );
    Ok(())
}

/// Scenarios that rebuild must start from, and return to, the generation the lab booted with,
/// or a second one on the same lab starts from the first one's: the built-in rebuild-rollback
/// and its file form, one after the other on one lab (as `labtest run --no-snapshot` runs them).
#[tokio::test(flavor = "multi_thread")]
async fn the_builtin_and_the_file_rebuild_rollback_share_one_lab() -> Result<(), Box<dyn Error>> {
    let lab_dir = support::repo_root().join("fixtures/lab");
    let lab = ReadyLab::from_dir(&lab_dir).start().await?;
    let scratch = tempfile::tempdir()?;
    let artifacts = ArtifactsDir::create(scratch.path().join("artifacts"), lab.events())?;
    let worker = lab.machine("limiting-factor")?;
    let profile = SystemProfile::default();
    let booted_with = profile.current_generation(worker.as_ref()).await?;
    assert!(
        booted_with.is_some(),
        "limiting-factor has no current generation"
    );

    let ctx = Ctx {
        lab: lab.lab(),
        lab_dir: &lab_dir,
        client: lab.client()?.clone(),
        events: lab.events(),
        artifacts: &artifacts,
        work_dir: scratch.path().join("work"),
        scope: "rebuild-rollback".into(),
        switches: Default::default(),
    };
    scenarios::run("rebuild-rollback", &ctx).await?;
    ctx.return_to_start_generations().await?;
    assert_eq!(
        profile.current_generation(worker.as_ref()).await?,
        booted_with,
        "the built-in left limiting-factor on another generation"
    );

    let file =
        ScenarioFile::load(&support::repo_root().join("scenarios/files/rebuild-rollback.toml"))?;
    let ctx = ctx.for_scenario(&file.name);
    scenarios::runner::run_file(&file, &ctx).await?;
    ctx.return_to_start_generations().await?;
    assert_eq!(
        profile.current_generation(worker.as_ref()).await?,
        booted_with,
        "the file form left limiting-factor on another generation"
    );
    lab.shutdown().await?;
    Ok(())
}
