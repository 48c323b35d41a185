//! Serving a booted lab on its control socket until `labtest down`, SIGTERM or Ctrl-C: what
//! `labtest up` runs in the background and `labtest run --keep` runs after a failure.
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use harness::lab::Lab;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use harness::events::Events;
use harness::nix::{Activation, Switches, SystemProfile};
use harness::vm::Machine;

use crate::control::{Reply, Request};
use crate::session::Session;
use harness::ready::SnapshotTarget;

/// Serves until asked to stop; the lab is torn down when this returns and `lab` is dropped.
pub async fn serve(lab: Arc<Lab>, session: &Session, served: Served) -> Result<()> {
    let served = Arc::new(served);
    let socket = session.socket();
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    let stop = Arc::new(Notify::new());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (lab, stop, served) = (lab.clone(), stop.clone(), served.clone());
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &lab, &stop, &served).await {
                        tracing::warn!("control connection: {e:#}");
                    }
                });
            }
            _ = stop.notified() => break,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn handle(stream: UnixStream, lab: &Lab, stop: &Notify, served: &Served) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Down) => {
            stop.notify_one();
            Reply::text("tearing the lab down")
        }
        Ok(request) => answer(request, lab, served).await,
        Err(e) => Reply::error(format!("bad request: {e}")),
    };
    let mut text = serde_json::to_string(&reply)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

async fn answer(request: Request, lab: &Lab, served: &Served) -> Reply {
    match run(request, lab, served).await {
        Ok(reply) => reply,
        Err(e) => Reply::error(format!("{e:#}")),
    }
}

async fn run(request: Request, lab: &Lab, served: &Served) -> Result<Reply> {
    Ok(match request {
        Request::Status => Reply::text(status_text(lab).await),
        Request::Top => {
            let samples = lab.recent_samples();
            Reply {
                status: Some(if samples.is_empty() { 1 } else { 0 }),
                text: format!(
                    "lab {}\n{}",
                    lab.spec().name,
                    harness::report::cpu::top_text(&samples)
                ),
                ..Reply::default()
            }
        }
        Request::Exec {
            machine,
            command,
            timeout_secs,
        } => {
            let out = lab
                .machine(&machine)?
                .exec(&command, Duration::from_secs(timeout_secs))
                .await?;
            Reply {
                status: Some(out.status),
                stdout: out.stdout_str(),
                stderr: out.stderr_str(),
                ..Reply::default()
            }
        }
        Request::Fault { fault } => Reply::text(lab.inject(&fault).await?),
        Request::Ssh { machine } => Reply {
            ssh: Some(lab.ssh_access(&machine).await?),
            ..Reply::default()
        },
        Request::Snapshot { name } => {
            let target = served
                .snapshots
                .as_ref()
                .context("this lab's server keeps no snapshots")?;
            let saved = lab
                .save_snapshot(&target.store, &name, &target.key, &Events::discard())
                .await?;
            Reply::text(format!(
                "saved snapshot {name} of lab {} ({:.0} MiB in {:.1}s) in {}; bring it back with `labtest up --from {name}`",
                saved.meta.lab,
                saved.meta.bytes as f64 / (1024.0 * 1024.0),
                saved.meta.save_secs,
                saved.dir.display()
            ))
        }
        Request::Rebuild {
            machine,
            generation,
        } => {
            let spec = lab.spec();
            let attr = spec.rebuild_attr(&machine, generation.as_deref())?;
            let guest = lab.machine(&machine)?;
            let toplevel = harness::lab::build_attr(
                &served.lab_dir,
                spec,
                &attr,
                &served.work_dir.join(format!("rebuild-{machine}")),
                &Events::discard(),
                REBUILD_TIMEOUT,
            )
            .await?;
            let nix = harness::lab::lab_nix(spec)?;
            let activation = served
                .switches
                .switch_to(&SystemProfile::default(), &nix, guest, &toplevel)
                .await?;
            activation_reply(guest, &activation, &format!("switched to {attr}")).await?
        }
        Request::Rollback { machine } => {
            let guest = lab.machine(&machine)?;
            let profile = SystemProfile::default();
            // Back to the generation this server switched away from; with no switch of ours
            // (e.g. after `up --from`), to the one below, as `nixos-rebuild switch --rollback`.
            let activation = if served.switches.has_switched(&machine) {
                served.switches.roll_back(&profile, guest).await?
            } else {
                profile.rollback(guest.as_ref()).await?
            };
            activation_reply(guest, &activation, "rolled back").await?
        }
        Request::Run {
            scenarios,
            scenario_files,
            report_dir,
        } => {
            let (text, status) = crate::run::run_on_served(
                lab,
                served.kube.as_ref(),
                &served.lab_dir,
                &scenarios,
                &scenario_files,
                &report_dir,
            )
            .await?;
            Reply {
                status: Some(status),
                text,
                ..Reply::default()
            }
        }
        Request::Down => Reply::text("tearing the lab down"),
    })
}

/// How long `labtest rebuild` may take to build a system (a NixOS closure, cold).
const REBUILD_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a switch did, as `nixos-rebuild switch` reports it: the exit status of
/// switch-to-configuration and the units that are failed now. Status 0 only when both are clean.
async fn activation_reply(guest: &Machine, activation: &Activation, what: &str) -> Result<Reply> {
    let failed = guest
        .exec(
            "systemctl --failed --no-legend --plain | awk '{print $1}'",
            Duration::from_secs(60),
        )
        .await?
        .stdout_str();
    let failed: Vec<&str> = failed.lines().filter(|l| !l.is_empty()).collect();
    let clean = activation.succeeded() && failed.is_empty();
    Ok(Reply {
        status: Some(if clean { 0 } else { 1 }),
        text: format!(
            "{}: {what}: {} (switch-to-configuration exited {}); failed units: {}",
            guest.name(),
            activation.toplevel,
            activation.status,
            if failed.is_empty() {
                "none".to_string()
            } else {
                failed.join(", ")
            }
        ),
        stderr: harness::wait::tail_chars(activation.stderr.trim(), 2000),
        ..Reply::default()
    })
}

/// What a lab's server knows besides the lab.
pub struct Served {
    pub lab_dir: std::path::PathBuf,
    pub work_dir: std::path::PathBuf,
    pub snapshots: Option<SnapshotTarget>,
    /// Generations `labtest rebuild` switched machines through, for `labtest rollback`.
    pub switches: Switches,
    /// The cluster's admin client, for `labtest run --attach`.
    pub kube: Option<harness::kube::KubeAccess>,
}

async fn status_text(lab: &Lab) -> String {
    let mut text = format!("lab {}\n", lab.spec().name);
    for machine in lab.machines() {
        let state = if !machine.is_running() {
            "off".to_string()
        } else {
            machine
                .qmp_status()
                .await
                .unwrap_or_else(|e| format!("unknown ({e})"))
        };
        text.push_str(&format!(
            "  {:<22} {:<9} console {}\n",
            machine.name(),
            state,
            machine.console_log().display()
        ));
    }
    let cuts = lab.partitions();
    if !cuts.is_empty() {
        let pairs: Vec<String> = cuts.iter().map(|(a, b)| format!("{a}<->{b}")).collect();
        text.push_str(&format!("  partitioned: {}\n", pairs.join(", ")));
    }
    text
}
