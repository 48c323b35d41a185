//! labtest's command line. Exit status: 0 all passed, 1 a scenario failed, 2 the lab could not be
//! brought up or the input was bad.
mod cache;
mod control;
mod run;
mod serve;
mod session;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use harness::events::Events;
use harness::lab::LabSpec;
use harness::ready;
use harness::report::live;
use harness::snapshot::SnapshotName;
use harness::vm::accel::AccelChoice;
use tokio::signal::unix::{signal, SignalKind};

use control::Request;
use harness::fault::Fault;
use session::{Info, Session};

#[derive(Parser)]
#[command(
    name = "labtest",
    version,
    about = "Boot a NixOS Kubernetes home lab as QEMU VMs, run scenarios, report"
)]
struct Cli {
    /// The lab: a directory with a flake and a lab.toml.
    #[arg(long, global = true, default_value = ".", env = "LABTEST_LAB")]
    lab: PathBuf,
    /// Accelerator: auto probes KVM and falls back to TCG with a warning.
    #[arg(long, global = true, default_value = "auto", env = "LABTEST_ACCEL")]
    accel: AccelChoice,
    /// How long the command may take in all, in seconds; each command has its own default
    /// (status 30, exec 600, up 3600, run 14400: see `Command::default_timeout`).
    #[arg(long, global = true, env = "LABTEST_TIMEOUT", value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build and boot the lab, wait until it is ready, run scenarios, report.
    Run(run::RunArgs),
    /// Boot the lab and leave it running in the background; print how to reach it.
    Up {
        #[command(flatten)]
        snapshot: run::SnapshotArgs,
        /// Bring back the snapshot NAME (`labtest snapshot save NAME`) instead of the Ready one.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["fresh", "no_snapshot"])]
        from: Option<SnapshotName>,
        #[command(flatten)]
        host_cpus: run::HostCpusArg,
    },
    /// Whole-lab snapshots: save the running lab, list and remove saved ones.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotCommand,
    },
    /// Show the running lab's machines.
    Status,
    /// Where the running lab's CPU goes: each machine's host CPU, per vCPU, RSS, and the guest's
    /// user/system share and busiest processes, refreshed every few seconds until Ctrl-C.
    Top {
        /// Print one sample and exit.
        #[arg(long)]
        once: bool,
    },
    /// Tear the running lab down.
    Down,
    /// Run a command in a guest and exit with its status.
    Exec {
        machine: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// A real OpenSSH session into a machine (interactive, or one command whose exit status is
    /// passed through), through a host port forward on 127.0.0.1 with a key made for the lab.
    Ssh {
        machine: String,
        /// The command to run; none: an interactive login shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// A machine's journal (one unit's, or all of it) over SSH, as an admin reads it.
    Journal {
        machine: String,
        /// A systemd unit (or journalctl pattern) to show alone, e.g. kubelet.service.
        unit: Option<String>,
        /// Keep printing new entries until Ctrl-C.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// kubectl with the running lab's admin kubeconfig.
    Kubectl {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Power loss: the machine's QEMU quits at once.
    Crash { machine: String },
    /// Pause the machine's CPUs (QMP stop).
    Freeze { machine: String },
    /// Resume a frozen machine.
    Thaw { machine: String },
    /// Power a crashed machine on again; returns once its guest answers.
    Start { machine: String },
    /// Build MACHINE's system as the lab's flake has it now (or a named generation), copy it in
    /// and switch to it, as `nixos-rebuild switch --target-host` does; reports the units that
    /// failed (exit 1 when any did, or the switch did not exit 0).
    Rebuild {
        machine: String,
        /// A [[generation]] of lab.toml instead of the machine's current system.
        #[arg(long, value_name = "NAME")]
        generation: Option<String>,
    },
    /// Switch MACHINE back to the generation it ran before the last rebuild.
    Rollback { machine: String },
    /// Cut the lab network between two machines.
    Partition { a: String, b: String },
    /// Undo a partition.
    Heal { a: String, b: String },
    /// The scenarios available.
    List,
    /// What the cache holds (guests, Kubernetes builds, snapshots) and how big; `prune`
    /// removes what no current build or lab uses.
    Cache {
        #[command(subcommand)]
        action: Option<CacheCommand>,
    },
    #[command(name = "__serve", hide = true)]
    Serve {
        #[command(flatten)]
        snapshot: run::SnapshotArgs,
        #[arg(long)]
        from: Option<SnapshotName>,
        #[command(flatten)]
        host_cpus: run::HostCpusArg,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Each entry with its size and whether it is current (the default).
    List,
    /// Remove guests, Kubernetes builds and snapshots of keys no longer current, and what
    /// killed builds and saves left.
    Prune,
}

impl Command {
    /// The deadline a command gets unless `--timeout` says otherwise, in seconds: what the
    /// slowest honest case needs on a 2-core TCG host (a cold boot, a cold NixOS rebuild).
    fn default_timeout(&self) -> u64 {
        match self {
            Command::Run(_) => 14_400,
            Command::Up { .. } | Command::Serve { .. } | Command::Top { once: false } => 3_600,
            Command::Rebuild { .. } => 3_900,
            Command::Start { .. } | Command::Rollback { .. } => 900,
            Command::Exec { .. }
            | Command::Ssh { .. }
            | Command::Journal { .. }
            | Command::Snapshot { .. }
            | Command::Cache { .. } => 600,
            Command::Kubectl { .. } => 300,
            Command::Down
            | Command::Crash { .. }
            | Command::Freeze { .. }
            | Command::Thaw { .. }
            | Command::Partition { .. }
            | Command::Heal { .. } => 60,
            Command::Status | Command::List | Command::Top { once: true } => 30,
        }
    }
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Save the running lab (every machine paused together) as snapshot NAME.
    Save { name: SnapshotName },
    /// The saved snapshots of every lab: size, age, key.
    List,
    /// Remove the lab's snapshot NAME.
    Rm { name: SnapshotName },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LABTEST_LOG")
                // kube's client logs every non-2xx answer as an error, e.g. each /readyz 500
                // while the apiserver starts; the waits already report what they last saw.
                .unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("labtest: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("labtest: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let secs = cli.timeout.unwrap_or_else(|| cli.command.default_timeout());
    let timeout = Duration::from_secs(secs);
    match cli.command {
        Command::List => {
            for (name, about) in scenarios::CATALOGUE {
                println!("{name:<18} {about}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run::run(&cli.lab, cli.accel, args, timeout).await,
        Command::Up {
            snapshot,
            from,
            host_cpus,
        } => up(&cli.lab, cli.accel, timeout, snapshot, from, host_cpus).await,
        Command::Serve {
            snapshot,
            from,
            host_cpus,
        } => serve_in_background(&cli.lab, cli.accel, snapshot, from, host_cpus).await,
        Command::Top { once } => top(&cli.lab, once, timeout).await,
        Command::Snapshot { action } => snapshot_command(&cli.lab, action, secs).await,
        Command::Cache { action } => cache::command(&cli.lab, action.unwrap_or(CacheCommand::List)),
        Command::Status => {
            let session = running(&cli.lab)?;
            let reply = call(&session, Request::Status, secs).await?;
            print!("{}", reply.text);
            if let Some(info) = session.info() {
                println!(
                    "  server pid {}, state {}",
                    info.pid,
                    info.state_dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Down => {
            let session = running(&cli.lab)?;
            let start = Instant::now();
            let reply = call(&session, Request::Down, secs).await?;
            println!("{}", reply.text);
            while session.is_up() {
                if start.elapsed() > timeout {
                    bail!(
                        "the lab's server did not exit within {secs}s; see {}",
                        session.log().display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            println!("lab is down");
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec { machine, command } => {
            let session = running(&cli.lab)?;
            let command = if command.len() == 1 {
                command[0].clone()
            } else {
                command
                    .iter()
                    .map(|a| harness::vm::channel::ansi_c_quote(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let reply = call(
                &session,
                Request::Exec {
                    machine,
                    command,
                    timeout_secs: secs,
                },
                // The server kills the command at its deadline and then answers.
                secs + 10,
            )
            .await?;
            print!("{}", reply.stdout);
            eprint!("{}", reply.stderr);
            let status = reply.status.unwrap_or(2);
            Ok(ExitCode::from(u8::try_from(status).unwrap_or(1)))
        }
        Command::Ssh { machine, command } => {
            // A terminal session lasts as long as its user wants, unless told otherwise.
            let deadline = (!command.is_empty() || cli.timeout.is_some()).then_some(timeout);
            ssh(&cli.lab, &machine, &command, deadline).await
        }
        Command::Journal {
            machine,
            unit,
            follow,
        } => {
            let command = harness::lab::journal_command(unit.as_deref(), follow);
            let deadline = (!follow || cli.timeout.is_some()).then_some(timeout);
            ssh(&cli.lab, &machine, &command, deadline).await
        }
        Command::Kubectl { args } => {
            let session = running(&cli.lab)?;
            let kubeconfig = session
                .info()
                .and_then(|i| i.kubeconfig)
                .context("the running lab has no Kubernetes (its lab.toml has no [kubernetes])")?;
            let kubectl = which::which("kubectl").context("kubectl is not on PATH")?;
            let mut child = tokio::process::Command::new(kubectl)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(args)
                .kill_on_drop(true)
                .spawn()?;
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(status) => Ok(ExitCode::from(status?.code().map_or(1, |c| c as u8))),
                Err(_) => bail!("kubectl did not finish within {secs}s (--timeout); it was killed"),
            }
        }
        Command::Crash { machine } => fault(&cli.lab, Fault::Crash { machine }, secs).await,
        Command::Freeze { machine } => fault(&cli.lab, Fault::Freeze { machine }, secs).await,
        Command::Thaw { machine } => fault(&cli.lab, Fault::Thaw { machine }, secs).await,
        Command::Start { machine } => {
            // The boot gets the command's deadline less room for the reply.
            let boot = Duration::from_secs(secs.saturating_sub(10).max(1));
            let start = Fault::Start {
                machine,
                timeout: boot,
            };
            fault(&cli.lab, start, secs).await
        }
        Command::Rebuild {
            machine,
            generation,
        } => {
            let request = Request::Rebuild {
                machine,
                generation,
            };
            switch_command(&cli.lab, request, secs).await
        }
        Command::Rollback { machine } => {
            switch_command(&cli.lab, Request::Rollback { machine }, secs).await
        }
        Command::Partition { a, b } => fault(&cli.lab, Fault::Partition { a, b }, secs).await,
        Command::Heal { a, b } => fault(&cli.lab, Fault::Heal { a, b }, secs).await,
    }
}

fn require_lab(lab_dir: &Path) -> Result<()> {
    if !lab_dir.join("lab.toml").exists() {
        bail!(
            "{} is not a lab (no lab.toml there); pass --lab PATH",
            lab_dir.display()
        );
    }
    Ok(())
}

/// The session of a lab that is up, or a clear error saying how to bring it up. A session a
/// dead server left (SIGKILL) is cleaned up on the way, with a line saying so.
fn running(lab_dir: &Path) -> Result<Session> {
    require_lab(lab_dir)?;
    let session = Session::for_lab(lab_dir)?;
    clean_leftovers(&session);
    if !session.is_up() {
        bail!(
            "no lab is up for {}; start one with `labtest up --lab {}`",
            lab_dir.display(),
            lab_dir.display()
        );
    }
    Ok(session)
}

/// Removes what dead servers and runs left: the session's socket and info, and lab state dirs
/// (disk overlays, hub sockets) whose owner is gone.
fn clean_leftovers(session: &Session) {
    if let Some(line) = session.clear_if_stale() {
        eprintln!("labtest: {line}");
    }
    for dir in harness::lab::remove_orphaned_state_dirs() {
        eprintln!(
            "labtest: removed {} (left by a labtest that was killed)",
            dir.display()
        );
    }
}

async fn call(session: &Session, request: Request, timeout_secs: u64) -> Result<control::Reply> {
    let reply = control::call(
        &session.socket(),
        &request,
        Duration::from_secs(timeout_secs),
    )
    .await?;
    if let Some(error) = reply.error {
        bail!("{error}");
    }
    Ok(reply)
}

/// `labtest ssh` / `journal`: asks the lab's server for the way in (the lab key let in, the
/// host key pinned, sshd answering), then runs the host's `ssh` with the terminal as it is and
/// exits with its status: the remote command's, or 255 when ssh itself failed.
async fn ssh(
    lab_dir: &Path,
    machine: &str,
    remote: &[String],
    deadline: Option<Duration>,
) -> Result<ExitCode> {
    let session = running(lab_dir)?;
    let ssh = which::which("ssh")
        .context("ssh is not on PATH (Debian: apt-get install openssh-client)")?;
    let request = Request::Ssh {
        machine: machine.to_string(),
    };
    // Two guest round trips and a banner, each bounded by the server (60 s + 30 s).
    let reply = call(&session, request, 120).await?;
    let access = reply
        .ssh
        .context("the lab's server answered without the way in (an older labtest serves it? `labtest down` and `up` again)")?;
    let mut child = tokio::process::Command::new(ssh)
        .args(access.ssh_args(remote))
        .kill_on_drop(true)
        .spawn()
        .context("starting ssh")?;
    let status = match deadline {
        None => child.wait().await?,
        Some(limit) => match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => status?,
            Err(_) => bail!(
                "ssh to {machine} did not finish within {}s (--timeout); it was killed",
                limit.as_secs()
            ),
        },
    };
    Ok(ExitCode::from(exit_byte(status)))
}

/// A child's exit status as a shell reports it: its code, or 128 + the signal that ended it.
fn exit_byte(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// `rebuild` / `rollback`: prints what the switch did, exits 1 when it left units failed.
async fn switch_command(lab_dir: &Path, request: Request, timeout_secs: u64) -> Result<ExitCode> {
    let reply = call(&running(lab_dir)?, request, timeout_secs).await?;
    println!("{}", reply.text);
    if !reply.stderr.is_empty() {
        eprintln!("{}", reply.stderr);
    }
    Ok(if reply.status == Some(0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A fault command: arguments that make no sense (an unknown machine, a pair of one) are
/// refused with exit 2 before the lab is asked; the server refuses what the lab's state rules
/// out (thawing a machine that is not frozen).
async fn fault(lab_dir: &Path, fault: Fault, secs: u64) -> Result<ExitCode> {
    require_lab(lab_dir)?;
    let spec = LabSpec::load(lab_dir)?;
    if let Err(reason) = fault.check(&spec.machine_names()) {
        bail!("fault `{fault}` refused: {reason}");
    }
    let reply = call(&running(lab_dir)?, Request::Fault { fault }, secs).await?;
    println!("{}", reply.text);
    Ok(ExitCode::SUCCESS)
}

/// `labtest up`: starts `labtest __serve` detached, follows its log until the lab is up (or the
/// server dies, or the deadline passes), then says how to reach the lab.
async fn up(
    lab_dir: &Path,
    accel: AccelChoice,
    timeout: Duration,
    snapshot: run::SnapshotArgs,
    from: Option<SnapshotName>,
    host_cpus: run::HostCpusArg,
) -> Result<ExitCode> {
    LabSpec::load(lab_dir)?;
    host_cpus.parse()?;
    let session = Session::for_lab(lab_dir)?;
    clean_leftovers(&session);
    if session.is_up() {
        if let Some(info) = session.info() {
            println!("lab {} is already up (server pid {})", info.lab, info.pid);
            print_reach(&info);
            return Ok(ExitCode::SUCCESS);
        }
        bail!(
            "a server for {} is still starting; see {}",
            lab_dir.display(),
            session.log().display()
        );
    }
    std::fs::create_dir_all(&session.dir)?;
    let log = std::fs::File::create(session.log())?;
    let exe = std::env::current_exe()?;
    let accel_arg = match accel {
        AccelChoice::Auto => "auto",
        AccelChoice::Kvm => "kvm",
        AccelChoice::Tcg => "tcg",
    };
    let mut child = std::process::Command::new(exe);
    child
        .args(["--lab"])
        .arg(lab_dir)
        .args(["--accel", accel_arg, "__serve"])
        .args(snapshot.fresh.then_some("--fresh"))
        .args(snapshot.no_snapshot.then_some("--no-snapshot"))
        .args(from.iter().flat_map(|name| ["--from", name.as_str()]))
        .args(
            host_cpus
                .host_cpus
                .iter()
                .flat_map(|n| ["--host-cpus", n.as_str()]),
        )
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut child, 0);
    let mut child = child.spawn().context("starting the lab's server")?;
    let start = Instant::now();
    let mut shown = 0;
    // The server runs in its own process group, so Ctrl-C on `up` reaches only this client:
    // without passing it on, the lab would go on booting and stay up unasked.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let log = std::fs::read(session.log()).unwrap_or_default();
        let (text, taken) = whole_chars(&log[shown.min(log.len())..]);
        print!("{text}");
        shown += taken;
        if let Some(info) = session.info() {
            println!("lab {} is up", info.lab);
            print_reach(&info);
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the lab could not be brought up (server {status}); its log is {}",
                session.log().display()
            );
        }
        if start.elapsed() > timeout {
            stop_server(&mut child).await;
            bail!(
                "the lab was not up within {}s; its log is {}",
                timeout.as_secs(),
                session.log().display()
            );
        }
        let (signal, code) = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
            signal = run::first_signal(&mut term, &mut int) => signal,
        };
        eprintln!(
            "labtest: {signal}: stopping the lab's server (pid {})",
            child.id()
        );
        stop_server(&mut child).await;
        eprintln!(
            "labtest: the lab is down; its log is {}",
            session.log().display()
        );
        return Ok(ExitCode::from(code));
    }
}

/// The text of `bytes` up to the last whole character, and how many bytes that is: a read of
/// a log being written may end inside a character, whose rest the next read brings.
fn whole_chars(bytes: &[u8]) -> (String, usize) {
    let end = match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => bytes.len(),
    };
    (String::from_utf8_lossy(&bytes[..end]).into_owned(), end)
}

/// How often `labtest top` asks the lab's server: about a host sample's interval.
const TOP_EVERY: Duration = Duration::from_secs(3);

/// `labtest top`: the latest CPU samples of the lab that is up, again every few seconds until
/// Ctrl-C or the deadline; `--once` waits (within the deadline) for the first samples, prints
/// them and exits 0.
async fn top(lab_dir: &Path, once: bool, timeout: Duration) -> Result<ExitCode> {
    let session = running(lab_dir)?;
    let deadline = Instant::now() + timeout;
    let redraw = !once && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ask = left.min(Duration::from_secs(30)).as_secs().max(1);
        let reply = call(&session, Request::Top, ask).await?;
        let sampled = reply.status == Some(0);
        if !once || sampled {
            if redraw {
                // Clear the screen and home the cursor: one view, like top(1).
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", reply.text);
            if once {
                return Ok(ExitCode::SUCCESS);
            }
        }
        if left < TOP_EVERY {
            if once {
                bail!(
                    "no CPU samples from the lab within {}s (--timeout)",
                    timeout.as_secs()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let pause = if once {
            Duration::from_secs(1)
        } else {
            TOP_EVERY
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            // Ctrl-C is how a watch ends: not a failure.
            _ = run::first_signal(&mut term, &mut int) => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// SIGTERM lets the server tear the lab down and keep its evidence; SIGKILL only if that takes
/// longer than the 15 s a CI runner gives between the two.
async fn stop_server(child: &mut std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn snapshot_command(lab_dir: &Path, action: SnapshotCommand, secs: u64) -> Result<ExitCode> {
    let store = ready::snapshot_store();
    match action {
        SnapshotCommand::Save { name } => {
            // `ready` is kept for the snapshot every run restores.
            if name == ready::READY_SNAPSHOT {
                bail!(
                    "snapshot name {name:?} is the one every run restores (made right after the readiness gate); pick another name"
                );
            }
            let session = running(lab_dir)?;
            let reply = call(&session, control::Request::Snapshot { name }, secs).await?;
            if let Some(error) = reply.error {
                bail!("{error}");
            }
            println!("{}", reply.text);
        }
        SnapshotCommand::List => {
            let snapshots = store.list();
            if snapshots.is_empty() {
                println!("no snapshots in {}", store.root().display());
            }
            let now = harness::snapshot::now_secs();
            for s in snapshots {
                let m = &s.meta;
                println!(
                    "{:<16} {:<44} {:>8.0} MiB  {:>10} old  key {}  {}",
                    m.lab,
                    m.name,
                    m.bytes as f64 / (1024.0 * 1024.0),
                    harness::report::fmt_duration(Duration::from_secs(
                        now.saturating_sub(m.created)
                    )),
                    &m.key[..12.min(m.key.len())],
                    s.dir.display()
                );
                if let Some(failure) = &m.failure {
                    println!(
                        "    failed {} in run {}: {}",
                        failure.scenario,
                        failure.run.display(),
                        failure.failure
                    );
                }
                if !m.faults.is_empty() {
                    println!("    restored with: {}", m.faults.describe());
                }
            }
        }
        SnapshotCommand::Rm { name } => {
            let spec = LabSpec::load(lab_dir)?;
            if store.remove(&spec.name, &name)? {
                println!("removed snapshot {name} of lab {}", spec.name);
            } else {
                bail!(
                    "lab {} has no snapshot {name:?} (see `labtest snapshot list`)",
                    spec.name
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_reach(info: &Info) {
    let lab = info.lab_dir.display();
    println!("  machines: {}", info.machines.join(", "));
    if let Some(first) = info.machines.first() {
        println!("  a shell command:  labtest --lab {lab} exec {first} -- systemctl --failed");
        if info.ssh {
            println!("  ssh:              labtest --lab {lab} ssh {first}");
            println!("  a journal:        labtest --lab {lab} journal {first} sshd.service");
        }
    }
    if let Some(kubeconfig) = &info.kubeconfig {
        println!("  kubectl:          labtest --lab {lab} kubectl -- get nodes");
        println!(
            "                    (or KUBECONFIG={})",
            kubeconfig.display()
        );
    }
    println!(
        "  console logs:     {}/machines/*/console.log",
        info.state_dir.display()
    );
    println!("  tear down:        labtest --lab {lab} down");
}

/// `labtest __serve`: the background half of `up`.
async fn serve_in_background(
    lab_dir: &Path,
    accel: AccelChoice,
    snapshot: run::SnapshotArgs,
    from: Option<SnapshotName>,
    host_cpus: run::HostCpusArg,
) -> Result<ExitCode> {
    let host_cpus = host_cpus.parse()?;
    let session = Session::for_lab(lab_dir)?;
    let Some(_lock) = session.lock()? else {
        bail!("another server already serves {}", lab_dir.display());
    };
    let spec = LabSpec::load(lab_dir)?;
    let events = Events::new();
    let view = live::spawn(&events, live::Mode::Plain);
    let work = session.dir.join("work");
    let booted = async {
        let built = ready::build(lab_dir, &spec, &work, accel, host_cpus, &events).await?;
        let ready = match &from {
            Some(name) => {
                ready::restore_named(lab_dir, &spec, &built, &session.dir, name, &events).await?
            }
            None => {
                ready::ready_lab(
                    lab_dir,
                    &spec,
                    &built,
                    &session.dir,
                    snapshot.mode(),
                    &events,
                )
                .await?
            }
        };
        let target = ready::snapshot_target(lab_dir, &spec, &built).ok();
        anyhow::Ok((ready, target))
    }
    .await;
    let (lab, kube, target) = match booted {
        Ok((ready, target)) => (Arc::new(ready.lab), ready.kube, target),
        Err(e) => {
            // The live view prints the error into the log `up` shows: returning it as well
            // would print it a second time.
            events.emit(harness::events::EventKind::RunFinished {
                aborted: Some(format!("{e:#}")),
            });
            let _ = view.join();
            return Ok(ExitCode::from(2));
        }
    };
    session.write_info(&Info::serving(&spec, lab_dir, &lab, &session)?)?;
    let served = serve::Served {
        lab_dir: lab_dir.to_path_buf(),
        work_dir: work,
        snapshots: target,
        switches: Default::default(),
        kube,
    };
    serve::serve(lab.clone(), &session, served).await?;
    session.clear_stale();
    events.emit(harness::events::EventKind::RunFinished { aborted: None });
    let _ = view.join();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ssh's exit status reaches the caller as a shell would report it.
    #[test]
    fn a_childs_status_becomes_the_exit_code() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_byte(std::process::ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_byte(std::process::ExitStatus::from_raw(255 << 8)), 255);
        // Killed by SIGTERM (15).
        assert_eq!(exit_byte(std::process::ExitStatus::from_raw(15)), 143);
    }

    /// A read of the log can end inside a character: what is shown stops before it, and the
    /// next read shows the rest once.
    #[test]
    fn a_log_read_that_ends_inside_a_character_is_shown_once() {
        let log = "boot ✓ done\n".as_bytes();
        let cut = "boot ✓".len() - 1;
        let (first, shown) = whole_chars(&log[..cut]);
        assert_eq!(first, "boot ");
        let (rest, more) = whole_chars(&log[shown..]);
        assert_eq!(format!("{first}{rest}"), "boot ✓ done\n");
        assert_eq!(shown + more, log.len());
    }
}
