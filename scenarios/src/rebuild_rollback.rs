//! `rebuild-rollback`: switch a machine to a generation that breaks its kubelet, see the breakage
//! through the cluster (node NotReady) and the unit (`failed`), roll back to the generation it
//! ran before, and check that generation is current and the node healthy again. Then a good
//! generation (a new node label) applies and stays, and the machine goes back to the generation
//! the scenario found it on, label gone, so scenarios that follow see the lab as booted.
//!
//! The generations come from the lab spec's `[[generation]]` entries named `broken-kubelet` and
//! `node-label`; both are built from the lab's flake by the harness's nix layer.
use std::path::PathBuf;
use std::time::Duration;

use harness::error::Chain;
use harness::kube::conditions::{node_not_ready, node_ready};
use harness::lab::{build_attr, lab_nix, GenerationSpec};
use harness::nix::SystemProfile;
use harness::wait::Poll;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

use crate::ctx::{Ctx, ScenarioError};

const BROKEN: &str = "broken-kubelet";
const GOOD: &str = "node-label";
const LABEL: &str = "labtest.io/generation";

fn generation<'s>(ctx: &'s Ctx<'_>, name: &str) -> Result<&'s GenerationSpec, ScenarioError> {
    ctx.lab
        .spec()
        .generations
        .iter()
        .find(|g| g.name == name)
        .ok_or_else(|| {
            ScenarioError::Error(format!(
                "rebuild-rollback needs a [[generation]] named {name:?} in lab {}'s lab.toml",
                ctx.lab.spec().name
            ))
        })
}

async fn build(ctx: &Ctx<'_>, generation: &GenerationSpec) -> Result<PathBuf, ScenarioError> {
    let out = ctx.work_dir.join(format!("generation-{}", generation.name));
    let path = build_attr(
        ctx.lab_dir,
        ctx.lab.spec(),
        &generation.attr,
        &out,
        ctx.events,
        Duration::from_secs(3600),
    )
    .await
    .map_err(|e| ScenarioError::error(&format!("building generation {}", generation.name), e))?;
    ctx.note("build", format!("{} = {}", generation.name, path.display()));
    Ok(path)
}

/// Runs the scenario on a Ready lab; it leaves each machine on the generation it found.
///
/// # Errors
/// [`ScenarioError::Failed`] for the first check the lab did not pass; [`ScenarioError::Error`]
/// when the harness could not do its part.
pub async fn run(ctx: &Ctx<'_>) -> Result<(), ScenarioError> {
    let k8s = ctx.k8s()?.clone();
    let broken = generation(ctx, BROKEN)?.clone();
    let good = generation(ctx, GOOD)?.clone();
    let broken_path = build(ctx, &broken).await?;
    let good_path = build(ctx, &good).await?;
    let nix = lab_nix(ctx.lab.spec()).map_err(|e| ScenarioError::error("finding nix", e))?;
    let profile = SystemProfile::default();
    let name = broken.machine.clone();
    let machine = ctx
        .lab
        .machine(&name)
        .map_err(|e| ScenarioError::error("finding the machine", e))?;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let unit = k8s.kubelet_unit.clone();

    let before = profile
        .current(machine.as_ref())
        .await
        .map_err(|e| ScenarioError::error("reading the current generation", e))?;
    ctx.note(
        "before",
        format!(
            "{name} runs {:?} (profile {:?})",
            before.running, before.profile
        ),
    );

    // The bad change: the kubelet cannot start.
    let activation = ctx
        .switches
        .switch_to(&profile, &nix, machine.as_ref(), &broken_path)
        .await?;
    ctx.note(
        "switch broken",
        format!(
            "switch-to-configuration exited {}: {}{}",
            activation.status, activation.stdout, activation.stderr
        ),
    );
    let took = ctx
        .wait(
            &nodes,
            &name,
            node_not_ready,
            &format!("{name} NotReady after the broken switch"),
            Duration::from_secs(240),
        )
        .await?;
    ctx.note(
        "broken",
        format!("NotReady {:.1}s after the switch", took.as_secs_f64()),
    );
    let state = ctx
        .check(
            &format!("{unit} on {name} is failed"),
            Duration::from_secs(180),
            Duration::from_secs(2),
            || async {
                match machine
                    .exec(
                        &format!("systemctl show -p ActiveState --value {unit}"),
                        Duration::from_secs(30),
                    )
                    .await
                {
                    Ok(out) if out.stdout_str().trim() == "failed" => Poll::Ready(out.stdout_str()),
                    Ok(out) => Poll::Pending(format!("{unit} is {}", out.stdout_str().trim())),
                    Err(e) => Poll::Pending(Chain(&e).to_string()),
                }
            },
        )
        .await?;
    ctx.note("broken", format!("{unit}: {}", state.trim()));
    let evidence = machine.unit_evidence(&unit).await;
    let _ = ctx
        .artifacts
        .write_journal(&name, &format!("{unit}-broken-generation"), &evidence);

    // Roll back to the generation it ran before (by number: see harness::nix::switches).
    let activation = ctx.switches.roll_back(&profile, machine.as_ref()).await?;
    ctx.note(
        "rollback",
        format!("switch-to-configuration exited {}", activation.status),
    );
    let after = profile
        .current(machine.as_ref())
        .await
        .map_err(|e| ScenarioError::error("reading the current generation", e))?;
    if after.running != before.running {
        return Err(ScenarioError::Failed {
            check: "the previous generation is current after rollback".into(),
            reason: format!("expected {:?}, saw {:?}", before.running, after.running),
        });
    }
    let took = ctx
        .wait(
            &nodes,
            &name,
            node_ready,
            &format!("{name} Ready after rollback"),
            Duration::from_secs(300),
        )
        .await?;
    ctx.note(
        "rollback",
        format!("Ready {:.1}s after the rollback", took.as_secs_f64()),
    );

    // The good change applies and stays.
    let activation = ctx
        .switches
        .switch_to(&profile, &nix, machine.as_ref(), &good_path)
        .await?;
    if !activation.succeeded() {
        return Err(ScenarioError::Failed {
            check: format!("switch to {GOOD}"),
            reason: format!(
                "switch-to-configuration exited {}: {}",
                activation.status, activation.stderr
            ),
        });
    }
    let labelled = |node: Option<&Node>| {
        node.and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(LABEL))
            .is_some_and(|v| v == GOOD)
    };
    let took = ctx
        .wait(
            &nodes,
            &name,
            labelled,
            &format!("{name} labelled {LABEL}={GOOD}"),
            Duration::from_secs(240),
        )
        .await?;
    ctx.note(
        "good",
        format!("label applied {:.1}s after the switch", took.as_secs_f64()),
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    ctx.wait(
        &nodes,
        &name,
        move |node: Option<&Node>| labelled(node) && node_ready(node),
        &format!("{name} still labelled and Ready 20s later"),
        Duration::from_secs(30),
    )
    .await?;

    // Back where the scenario started: the next scenario must not find this one's generation.
    ctx.return_to_start_generations().await?;
    let unlabelled = |node: Option<&Node>| {
        node.and_then(|n| n.metadata.labels.as_ref())
            .is_some_and(|l| !l.contains_key(LABEL))
    };
    ctx.wait(
        &nodes,
        &name,
        move |node: Option<&Node>| unlabelled(node) && node_ready(node),
        &format!("{name} Ready without {LABEL} on the generation it started on"),
        Duration::from_secs(240),
    )
    .await?;
    let end = profile
        .current(machine.as_ref())
        .await
        .map_err(|e| ScenarioError::error("reading the current generation", e))?;
    if end.running != before.running {
        return Err(ScenarioError::Failed {
            check: format!("{name} runs the system it started with"),
            reason: format!("expected {:?}, saw {:?}", before.running, end.running),
        });
    }
    Ok(())
}
