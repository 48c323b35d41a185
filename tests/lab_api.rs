//! Tier 4: the Rust API a user writes lab tests against (README "Write your own lab test"),
//! on the fixture lab restored from its Ready snapshot by `harness::ready::ReadyLab`.
mod support;

use std::error::Error;
use std::time::Duration;

use harness::kube::conditions::{node_not_ready, node_ready};
use harness::lab::{build_attr, lab_nix, LabSpec};
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

/// A generation `labtest rebuild` imports into a guest store must outlive a power cycle, as its
/// entry in the guest's Nix database (on the root disk) does: vm-configs/vm.nix keeps the NixOS
/// guests' writable store layer on the disk (`writableStoreUseTmpfs = false`; with qemu-vm.nix's
/// default tmpfs the path would be registered but gone). The fixture keeps it on the disk too;
/// `limiting-factor-imported` is in no store image (fixtures/lab/flake.nix), so the switch
/// imports it. Rebuild to it, power-cycle, roll back, go forth again.
///
/// Also checks, on the boot that made the Ready snapshot, that the nodes' joins were retried:
/// the fixture's join fails a fresh node's first attempt as NixOS's does without ca.pem.
#[tokio::test(flavor = "multi_thread")]
async fn an_imported_generation_survives_a_power_cycle() -> Result<(), Box<dyn Error>> {
    let lab_dir = support::repo_root().join("fixtures/lab");
    let lab = ReadyLab::from_dir(&lab_dir).start().await?;
    let worker = lab.machine("limiting-factor")?;

    let attempts = worker.succeed("cat /var/lib/kubelet/join-attempts").await?;
    let lines: Vec<&str> = attempts.lines().collect();
    assert!(
        lines.len() >= 2
            && lines[0].contains("failed: no CA yet")
            && lines.last().is_some_and(|l| l.contains("joined")),
        "expected a failed first join attempt and a later one that joined:\n{attempts}"
    );

    let spec = LabSpec::load(&lab_dir)?;
    let nix = lab_nix(&spec)?;
    let scratch = tempfile::tempdir()?;
    let toplevel = build_attr(
        &lab_dir,
        &spec,
        "packages.x86_64-linux.limiting-factor-imported",
        scratch.path(),
        lab.events(),
        Duration::from_secs(600),
    )
    .await?;
    let top = toplevel.display().to_string();
    let name = toplevel
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("a store path has a file name")?
        .to_string();
    let in_image = worker
        .exec(
            &format!("test -e /nix/.ro-store/{name}"),
            Duration::from_secs(30),
        )
        .await?;
    assert_ne!(
        in_image.status, 0,
        "{name} is in the store image: nothing to import"
    );

    let profile = SystemProfile::default();
    let booted = profile
        .current_generation(worker.as_ref())
        .await?
        .ok_or("limiting-factor has no current generation")?;
    let switched = profile.switch_to(&nix, worker.as_ref(), &toplevel).await?;
    assert!(switched.succeeded(), "switch to {top}: {switched:?}");
    let imported = profile
        .current_generation(worker.as_ref())
        .await?
        .ok_or("no current generation after the switch")?;
    worker
        .succeed(&format!("test -d /nix/.rw-store/store/{name}"))
        .await?;

    worker.crash().await?;
    lab.wait_node("limiting-factor", node_not_ready, Duration::from_secs(180))
        .await?;
    worker.start().await?;
    lab.wait_node("limiting-factor", node_ready, Duration::from_secs(300))
        .await?;
    // Still there, whole, and still registered.
    worker
        .succeed(&format!(
            "test -x {top}/bin/switch-to-configuration && nix-store --check-validity {top}"
        ))
        .await?;

    let back = profile.switch_generation(worker.as_ref(), booted).await?;
    assert!(
        back.succeeded(),
        "rollback to generation {booted}: {back:?}"
    );
    let forth = profile.switch_generation(worker.as_ref(), imported).await?;
    assert!(
        forth.succeeded(),
        "forth to generation {imported}: {forth:?}"
    );
    assert_eq!(
        worker
            .succeed("readlink -f /run/current-system")
            .await?
            .trim(),
        top
    );
    lab.wait_node("limiting-factor", node_ready, Duration::from_secs(300))
        .await?;
    let home = profile.switch_generation(worker.as_ref(), booted).await?;
    assert!(home.succeeded(), "back to generation {booted}: {home:?}");
    lab.shutdown().await?;
    Ok(())
}
