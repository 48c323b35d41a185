//! One QEMU machine, started from a `run-<name>-vm` script that honours the NixOS qemu-vm contract
//! (NIX_DISK_IMAGE, TMPDIR/USE_TMPDIR, SHARED_DIR, QEMU_OPTS, QEMU_NET_OPTS, QEMU_KERNEL_PARAMS,
//! extra arguments). The harness cannot tell a NixOS script from a fixture script, on purpose.
//!
//! What the harness adds to every machine: a QMP socket, a virtio-serial controller with two guest
//! channel ports (`labtest.shell` for commands, `labtest.ctl` to rescue the first when a command
//! overruns), the accelerator choice, the lab NIC socket (`LABTEST_LAB_SOCKET`) and host port
//! forwards. All of it lives in the machine's own state dir, so two labs never collide.
//!
//! Faults live here too: [`Machine::crash`], [`Machine::freeze`], [`Machine::thaw`],
//! [`Machine::shutdown`], [`Machine::reboot`], [`Machine::set_link`].
pub mod accel;
pub mod channel;
pub mod cpus;
pub mod qmp;
pub mod sample;
pub mod spawn;
pub mod state;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

use crate::check;
use crate::error::Chain;
use crate::events::{EventKind, Events};
use crate::fault::Fault;
use crate::wait::{poll_until, tail_chars, Poll, Wait, WaitError};
pub use accel::Accel;
use channel::Channel;
pub use channel::{ChannelError, ExecOutput};
use qmp::{Qmp, QmpError};

/// The netdev id of the lab NIC in every run script (`-netdev stream,id=lab,...`).
pub const LAB_NETDEV: &str = "lab";
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// From QEMU start to the guest channel answering, when nobody says otherwise: a machine, a
/// lab, a fault's start and a scenario file's start all use it. Twice the slowest cold boot of
/// the fixture lab measured on the 2-core TCG CI host (135 s for three guests at once).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Bytes per command when copying into a guest: ~43 KB of base64 on one command line.
pub const COPY_CHUNK: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{machine}: run script {path} does not exist or is not executable")]
    NoRunScript { machine: String, path: PathBuf },
    #[error("{machine}: could not start {path}")]
    Spawn {
        machine: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{machine}: QEMU exited ({status}) {during}; console log {console}:\n{tail}")]
    Exited {
        machine: String,
        status: String,
        during: String,
        console: PathBuf,
        tail: String,
    },
    #[error("{machine}: {message}; console log {console}")]
    Boot {
        machine: String,
        message: String,
        console: PathBuf,
    },
    #[error("{machine} (console log {console})")]
    Channel {
        machine: String,
        source: Box<ChannelError>,
        console: PathBuf,
    },
    #[error("{machine}")]
    Qmp { machine: String, source: QmpError },
    #[error("{machine}: `{command}` exited with {status}, expected 0\nstdout: {stdout}\nstderr: {stderr}")]
    CommandFailed {
        machine: String,
        command: String,
        status: i32,
        stdout: String,
        stderr: String,
    },
    #[error("{machine}: `{command}` exited with 0, expected it to fail\nstdout: {stdout}")]
    CommandSucceeded {
        machine: String,
        command: String,
        stdout: String,
    },
    #[error("{machine} (console log {console})")]
    Wait {
        machine: String,
        source: WaitError,
        console: PathBuf,
    },
    #[error("{machine}: {message}")]
    State { machine: String, message: String },
    /// The saved state itself is unusable (QEMU refused to load it, or its files are gone):
    /// unlike every other restore failure, trying again cannot help.
    #[error(
        "{machine}: its saved state {state} cannot be restored: {reason}; console log {console}"
    )]
    BadSavedState {
        machine: String,
        state: PathBuf,
        reason: String,
        console: PathBuf,
    },
    #[error("{machine}: {context}")]
    Io {
        machine: String,
        context: String,
        source: std::io::Error,
    },
    /// A bad `LABTEST_HOST_CPUS`: how to start QEMU, wrong before any machine starts.
    #[error(transparent)]
    HostCpus(#[from] cpus::HostCpusError),
}

/// How to start one machine. Build with [`MachineBuilder`].
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub name: String,
    pub run_script: PathBuf,
    pub state_dir: PathBuf,
    pub accel: Accel,
    pub lab_socket: Option<PathBuf>,
    /// (host port on 127.0.0.1, guest port)
    pub forwards: Vec<(u16, u16)>,
    pub kernel_params: Option<String>,
    /// What [`Machine::start`] gives the guest to answer.
    pub boot_timeout: Duration,
    /// Start the first time from a saved state instead of booting (see [`state`]).
    pub restore: Option<state::SavedState>,
    /// Confine QEMU to these host CPUs ([`cpus`]).
    pub host_cpus: Option<cpus::HostCpus>,
    /// How much nicer than the harness the QEMU process runs (0: as nice as the harness): its
    /// CPU share when the host is short of CPU. See [`MachineBuilder::nice`].
    pub nice: i32,
}

/// Builder for a [`Machine`].
///
/// # Usage
/// ```no_run
/// # async fn demo() -> Result<(), harness::vm::VmError> {
/// use harness::vm::{Accel, MachineBuilder};
/// let machine = MachineBuilder::new("grey-area", "result/bin/run-grey-area-vm", "/tmp/lab/grey-area")
///     .accel(Accel::Tcg)
///     .forward(6443)
///     .start(&harness::events::Events::discard())
///     .await?;
/// let out = machine.succeed("uname -r").await?;
/// # Ok(()) }
/// ```
pub struct MachineBuilder {
    config: MachineConfig,
}

impl MachineBuilder {
    pub fn new(
        name: impl Into<String>,
        run_script: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            config: MachineConfig {
                name: name.into(),
                run_script: run_script.into(),
                state_dir: state_dir.into(),
                accel: Accel::Tcg,
                lab_socket: None,
                forwards: Vec::new(),
                kernel_params: None,
                boot_timeout: DEFAULT_BOOT_TIMEOUT,
                restore: None,
                host_cpus: None,
                nice: 0,
            },
        }
    }

    pub fn accel(mut self, accel: Accel) -> Self {
        self.config.accel = accel;
        self
    }

    /// Wires the machine's lab NIC to a hub port socket.
    pub fn lab_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.config.lab_socket = Some(socket.into());
        self
    }

    /// Forwards a free host port on 127.0.0.1 to `guest_port`; see [`Machine::host_port`].
    pub fn forward(mut self, guest_port: u16) -> Self {
        self.config.forwards.push((0, guest_port));
        self
    }

    pub fn kernel_params(mut self, params: impl Into<String>) -> Self {
        self.config.kernel_params = Some(params.into());
        self
    }

    /// Starts the machine the first time from `saved` (RAM, devices, disk) instead of booting;
    /// later starts (after a crash) boot from the disk as it is then.
    pub fn restore_from(mut self, saved: state::SavedState) -> Self {
        self.config.restore = Some(saved);
        self
    }

    /// Runs the machine's QEMU (every thread of it) this much nicer than the harness once its
    /// guest channel answers. On a host with fewer free CPUs than the lab has vCPUs, a higher
    /// value yields CPU to those at 0: the lab gives it to the machines that are not the master,
    /// so the control plane keeps taking the nodes' status while they start pods, as a master
    /// with a CPU of its own would. The boot itself runs at the harness's priority: niced from
    /// QEMU's start, a node on one host CPU beside a master booting its control plane got 12 %
    /// of it and its guest channel did not answer within 300 s (2026-12-05).
    pub fn nice(mut self, nice: i32) -> Self {
        self.config.nice = nice;
        self
    }

    /// Runs QEMU on these host CPUs only (all its threads).
    pub fn host_cpus(mut self, cpus: Option<cpus::HostCpus>) -> Self {
        self.config.host_cpus = cpus;
        self
    }

    /// Deadline from QEMU start to the guest channel answering, for [`Machine::start`]
    /// (default [`DEFAULT_BOOT_TIMEOUT`]).
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.config.boot_timeout = timeout;
        self
    }

    pub fn config(self) -> MachineConfig {
        self.config
    }

    /// Starts the machine and waits for its guest channel, at most its boot timeout.
    pub async fn start(self, events: &Events) -> Result<Machine, VmError> {
        let machine = Machine::new(self.config, events.clone())?;
        machine.start().await?;
        Ok(machine)
    }
}

struct Connections {
    qmp: Qmp,
    shell: Channel,
    ctl: Channel,
}

/// QMP, the shell channel and the control channel, each behind its own lock: a fault, a status
/// query or a thaw must act at once while a command runs (or hangs on a frozen guest).
#[derive(Default)]
struct Links {
    qmp: Mutex<Option<Qmp>>,
    shell: Mutex<Option<Channel>>,
    ctl: Mutex<Option<Channel>>,
}

impl Links {
    async fn install(&self, conn: Connections) {
        *self.qmp.lock().await = Some(conn.qmp);
        *self.shell.lock().await = Some(conn.shell);
        *self.ctl.lock().await = Some(conn.ctl);
    }

    async fn clear(&self) {
        *self.qmp.lock().await = None;
        *self.shell.lock().await = None;
        *self.ctl.lock().await = None;
    }
}

/// A running (or stopped) QEMU machine. Dropping it kills QEMU.
pub struct Machine {
    config: MachineConfig,
    events: Events,
    child: std::sync::Mutex<Option<Child>>,
    links: Links,
    boot_id: std::sync::Mutex<Option<String>>,
    starts: std::sync::atomic::AtomicU32,
    /// The disk image QEMU writes to (NIX_DISK_IMAGE): a save moves the machine onto a new
    /// overlay above the frozen one.
    disk: std::sync::Mutex<PathBuf>,
}

/// What [`Machine::start`] and [`Machine::reboot`] observed.
#[derive(Debug, Clone)]
pub struct BootInfo {
    pub boot_id: String,
    pub took: Duration,
}

impl Machine {
    /// Prepares a machine (state dir, ports) without starting it.
    pub fn new(mut config: MachineConfig, events: Events) -> Result<Self, VmError> {
        let name = config.name.clone();
        let io = |context: &str, source| VmError::Io {
            machine: name.clone(),
            context: context.to_string(),
            source,
        };
        if !is_executable(&config.run_script) {
            return Err(VmError::NoRunScript {
                machine: config.name.clone(),
                path: config.run_script.clone(),
            });
        }
        if config.state_dir.to_string_lossy().contains(',') {
            return Err(VmError::State {
                machine: config.name.clone(),
                message: format!(
                    "state dir {} contains a comma, which QEMU's option syntax cannot carry",
                    config.state_dir.display()
                ),
            });
        }
        for sub in ["tmp", "shared"] {
            std::fs::create_dir_all(config.state_dir.join(sub))
                .map_err(|e| io(&format!("creating {}/{sub}", config.state_dir.display()), e))?;
        }
        for forward in &mut config.forwards {
            if forward.0 == 0 {
                forward.0 = free_port().map_err(|e| io("picking a free port", e))?;
            }
        }
        let disk = config.state_dir.join(format!("{}.qcow2", config.name));
        Ok(Self {
            config,
            events,
            child: std::sync::Mutex::new(None),
            links: Links::default(),
            boot_id: std::sync::Mutex::new(None),
            starts: std::sync::atomic::AtomicU32::new(0),
            disk: std::sync::Mutex::new(disk),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    pub fn console_log(&self) -> PathBuf {
        self.config.state_dir.join("console.log")
    }

    /// The host port forwarded to `guest_port`, if the machine forwards it.
    pub fn host_port(&self, guest_port: u16) -> Option<u16> {
        self.config
            .forwards
            .iter()
            .find(|(_, guest)| *guest == guest_port)
            .map(|(host, _)| *host)
    }

    /// The guest's boot id as of the last (re)connect.
    pub fn boot_id(&self) -> Option<String> {
        self.boot_id.lock().ok().and_then(|b| b.clone())
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.config.state_dir.join(name)
    }

    fn qemu_args(&self) -> Vec<String> {
        let qmp = self.socket("qmp.sock");
        let mut args = vec![
            // Names QEMU's threads (`CPU 0/TCG`...), so the sampler can tell vCPUs from the
            // rest; merged with the run script's own `-name`.
            "-name".to_string(),
            "debug-threads=on".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp.display()),
            "-device".into(),
            "virtio-serial-pci,id=ltser".into(),
        ];
        for port in ["shell", "ctl"] {
            args.push("-chardev".into());
            args.push(format!(
                "socket,id=lt-{port},path={},server=on,wait=off",
                self.socket(&format!("{port}.sock")).display()
            ));
            args.push("-device".into());
            args.push(format!(
                "virtserialport,bus=ltser.0,chardev=lt-{port},name=labtest.{port}"
            ));
        }
        args
    }

    /// [`Machine::start_by`] its boot timeout from now ([`MachineBuilder::boot_timeout`]).
    ///
    /// # Cancel safety
    /// As [`Machine::start_by`].
    pub async fn start(&self) -> Result<BootInfo, VmError> {
        self.start_by(Instant::now() + self.config.boot_timeout)
            .await
    }

    /// Starts QEMU (again, after a crash or shutdown) and waits until the guest channel answers
    /// or `deadline` passes. A machine built with [`MachineBuilder::restore_from`] comes back
    /// from its saved state the first time ([`Machine::start_paused_from_state`] +
    /// [`Machine::resume`]).
    ///
    /// # Errors
    /// Why QEMU did not start or its guest did not answer, with the console log; QEMU is then
    /// killed, so the machine is off and can be started again.
    ///
    /// # Cancel safety
    /// This method is cancel safe: dropped before it returns, it kills QEMU and leaves the
    /// machine off, as an error does.
    pub async fn start_by(&self, deadline: Instant) -> Result<BootInfo, VmError> {
        let started = Instant::now();
        if self.config.restore.is_some()
            && self.starts.load(std::sync::atomic::Ordering::Relaxed) == 0
        {
            self.start_paused_from_state(deadline).await?;
            let boot_id = self.resume(deadline).await?;
            self.apply_nice()?;
            return Ok(BootInfo {
                boot_id,
                took: started.elapsed(),
            });
        }
        self.spawn(&[])?;
        let half_started = HalfStarted::new(self);
        let conn = self.connect(deadline, "while booting").await?;
        self.links.install(conn).await;
        let boot_id = self.handshake(started, deadline).await?;
        self.apply_nice()?;
        half_started.up();
        let info = BootInfo {
            boot_id,
            took: started.elapsed(),
        };
        self.events.emit(EventKind::MachineUp {
            machine: self.config.name.clone(),
            boot_time: info.took,
        });
        Ok(info)
    }

    /// Runs the run script with the harness's environment and `extra` QEMU arguments.
    fn spawn(&self, extra: &[String]) -> Result<(), VmError> {
        if self.is_running() {
            return Err(self.state_error("is already running"));
        }
        let n = self
            .starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.events.emit(EventKind::MachineStarting {
            machine: self.config.name.clone(),
        });
        for sock in ["qmp.sock", "shell.sock", "ctl.sock"] {
            let _ = std::fs::remove_file(self.socket(sock));
        }
        let console = self.open_console(n)?;
        let mut command = Command::new(&self.config.run_script);
        let forwards: Vec<String> = self
            .config
            .forwards
            .iter()
            .map(|(host, guest)| format!("hostfwd=tcp:127.0.0.1:{host}-:{guest}"))
            .collect();
        command
            .current_dir(&self.config.state_dir)
            .env("NIX_DISK_IMAGE", self.disk())
            .env("TMPDIR", self.config.state_dir.join("tmp"))
            .env("USE_TMPDIR", "1")
            .env("SHARED_DIR", self.config.state_dir.join("shared"))
            .env("QEMU_OPTS", self.config.accel.qemu_opts())
            .env("QEMU_NET_OPTS", forwards.join(","))
            .env(
                "QEMU_KERNEL_PARAMS",
                self.config.kernel_params.clone().unwrap_or_default(),
            )
            .args(self.qemu_args())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(console.try_clone().map_err(|e| self.io("console log", e))?)
            .stderr(console);
        match &self.config.lab_socket {
            Some(socket) => command.env("LABTEST_LAB_SOCKET", socket),
            None => command.env_remove("LABTEST_LAB_SOCKET"),
        };
        let placement = spawn::Placement {
            cpus: self.config.host_cpus.map(|c| c.cpu_set()),
        };
        let child = spawn::spawn_placed(command, placement).map_err(|source| VmError::Spawn {
            machine: self.config.name.clone(),
            path: self.config.run_script.clone(),
            source,
        })?;
        *self
            .child
            .lock()
            .map_err(|_| self.state_error("child lock poisoned"))? = Some(child);
        Ok(())
    }

    /// The disk image QEMU runs on now.
    pub fn disk(&self) -> PathBuf {
        self.disk
            .lock()
            .map(|d| d.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn open_console(&self, start_number: u32) -> Result<File, VmError> {
        let mut console = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.console_log())
            .map_err(|e| self.io("opening the console log", e))?;
        writeln!(
            console,
            "=== labtest: start #{start_number} of {} ({}) ===",
            self.config.name,
            self.config.run_script.display()
        )
        .map_err(|e| self.io("writing the console log", e))?;
        Ok(console)
    }

    /// Connects QMP and both channels, failing fast if QEMU exits meanwhile.
    async fn connect(&self, deadline: Instant, during: &str) -> Result<Connections, VmError> {
        let qmp_path = self.socket("qmp.sock");
        let wait = Wait::new(
            format!("QEMU of {} to open its QMP socket", self.config.name),
            deadline.saturating_duration_since(Instant::now()),
            Duration::from_millis(20),
        );
        let qmp = poll_until(&wait, || async {
            if let Some(exit) = self.exit_status() {
                return Poll::Failed(exit);
            }
            match Qmp::connect(&qmp_path, QMP_TIMEOUT).await {
                Ok(qmp) => Poll::Ready(qmp),
                Err(e) => Poll::Pending(Chain(&e).to_string()),
            }
        })
        .await
        .map_err(|e| self.boot_failure(e, during))?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let shell = Channel::connect(&self.socket("shell.sock"), remaining)
            .await
            .map_err(|e| self.channel_error(e))?;
        let ctl = Channel::connect(&self.socket("ctl.sock"), remaining)
            .await
            .map_err(|e| self.channel_error(e))?;
        Ok(Connections { qmp, shell, ctl })
    }

    /// Waits for the shell to answer and records the boot id. The request waits in QEMU's socket
    /// buffer until the guest opens the port, so one request is enough: no polling, no boot race.
    /// `since` is when QEMU started (or continued), for the error.
    async fn handshake(&self, since: Instant, deadline: Instant) -> Result<String, VmError> {
        let mut guard = self.links.shell.lock().await;
        let shell = guard
            .as_mut()
            .ok_or_else(|| self.state_error("is not connected"))?;
        let reply = loop {
            let slice =
                Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now()));
            match shell
                .exec("read -r b </proc/sys/kernel/random/boot_id; echo $b", slice)
                .await
            {
                Ok(out) => break out,
                Err(ChannelError::Timeout { .. }) | Err(ChannelError::Busy { .. })
                    if Instant::now() < deadline =>
                {
                    if let Some(exit) = self.exit_status() {
                        return Err(self.exited(exit, "before its guest channel answered"));
                    }
                }
                Err(ChannelError::Timeout { .. }) | Err(ChannelError::Busy { .. }) => {
                    return Err(VmError::Boot {
                        machine: self.config.name.clone(),
                        message: format!(
                            "the guest channel (virtio port labtest.shell) did not answer within {:.0}s of QEMU start; \
                             is labtest-shell installed in the guest? last console lines:\n{}",
                            deadline.saturating_duration_since(since).as_secs_f64(),
                            self.console_tail(15)
                        ),
                        console: self.console_log(),
                    })
                }
                Err(e) => return Err(self.channel_error(e)),
            }
        };
        let boot_id = reply.stdout_str().trim().to_string();
        if let Ok(mut b) = self.boot_id.lock() {
            *b = Some(boot_id.clone());
        }
        Ok(boot_id)
    }

    /// Runs a command in the guest with a deadline; the exit status is in the result.
    ///
    /// When the command overruns, the harness kills it through the `labtest.ctl` port so the
    /// channel is usable again, and returns the timeout error.
    ///
    /// # Cancel safety
    /// This method is cancel safe. A command whose caller stopped waiting (a deadline around
    /// the call, a select! on a signal) is killed like an overrunning one when the next command
    /// comes, and its reply is discarded: the next command gets its own output.
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput, VmError> {
        // A frozen guest would answer nothing until the deadline: say so at once.
        let paused = self.qmp_status().await.ok().as_deref() == Some("paused");
        self.refuse_frozen(paused, command)?;
        let guard = self.links.shell.lock().await;
        self.exec_on(guard, command, timeout).await
    }

    /// [`Machine::exec`] for an observer that must never hold anyone up: `Ok(None)` at once when
    /// another command (or a QMP call) holds the guest channel, instead of waiting for it.
    ///
    /// # Errors
    /// As [`Machine::exec`]: at once for a frozen or powered-off machine.
    pub async fn exec_if_idle(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<Option<ExecOutput>, VmError> {
        let paused = {
            let Ok(mut guard) = self.links.qmp.try_lock() else {
                return Ok(None);
            };
            match guard.as_mut() {
                Some(qmp) => qmp.status(QMP_TIMEOUT).await.ok().as_deref() == Some("paused"),
                None => false,
            }
        };
        self.refuse_frozen(paused, command)?;
        let Ok(guard) = self.links.shell.try_lock() else {
            return Ok(None);
        };
        self.exec_on(guard, command, timeout).await.map(Some)
    }

    /// Gives the running QEMU its configured nice value ([`MachineBuilder::nice`]).
    fn apply_nice(&self) -> Result<(), VmError> {
        if self.config.nice == 0 {
            return Ok(());
        }
        let pid = self
            .child
            .lock()
            .map_err(|_| self.state_error("child lock poisoned"))?
            .as_ref()
            .map(|c| c.id());
        let Some(pid) = pid else {
            return Err(self.state_error("has no QEMU process to renice"));
        };
        spawn::renice_threads(pid, self.config.nice).map_err(|e| self.io("renicing QEMU", e))
    }

    fn refuse_frozen(&self, paused: bool, command: &str) -> Result<(), VmError> {
        if paused {
            return Err(self.state_error(&format!(
                "is frozen (its CPUs are paused), so it cannot run `{}`: thaw it with `labtest thaw {}` (Machine::thaw)",
                tail_chars(command, 200),
                self.config.name
            )));
        }
        Ok(())
    }

    /// Runs `command` on the shell channel held by `guard`.
    async fn exec_on(
        &self,
        mut guard: tokio::sync::MutexGuard<'_, Option<Channel>>,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, VmError> {
        let shell = guard.as_mut().ok_or_else(|| {
            self.state_error(&format!(
                "is off (crashed or shut down), so it cannot run `{}`: start it with `labtest start {}` (Machine::start)",
                tail_chars(command, 200),
                self.config.name
            ))
        })?;
        if let Some(marker) = shell.unanswered_marker() {
            self.kill_shell_command(marker).await;
        }
        match shell.exec(command, timeout).await {
            Ok(out) => Ok(out),
            Err(err @ ChannelError::Timeout { .. }) => {
                if let Some(marker) = shell.unanswered_marker() {
                    self.kill_shell_command(marker).await;
                }
                Err(self.channel_error(err))
            }
            Err(e) => Err(self.channel_error(e)),
        }
    }

    /// Kills the shell channel's request `marker` with everything it started, through the
    /// `labtest.ctl` port, so the shell reads the next request. Best effort: if it fails, the
    /// next command waits for the old one's reply (within its own deadline) and says it is busy.
    /// A rescue that reaches the guest late kills nothing else: it names its request.
    async fn kill_shell_command(&self, marker: &str) {
        let rescue = channel::rescue_command(marker);
        if let Some(ctl) = self.links.ctl.lock().await.as_mut() {
            let _ = ctl.exec(&rescue, Duration::from_secs(5)).await;
        }
    }

    /// Runs a command that must exit 0 (deadline 60 s) and returns its stdout.
    pub async fn succeed(&self, command: &str) -> Result<String, VmError> {
        self.succeed_within(command, Duration::from_secs(60)).await
    }

    /// Like [`Machine::succeed`] with an explicit deadline.
    pub async fn succeed_within(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<String, VmError> {
        let out = self.exec(command, timeout).await?;
        if out.status != 0 {
            return Err(VmError::CommandFailed {
                machine: self.config.name.clone(),
                command: command.to_string(),
                status: out.status,
                stdout: tail_chars(&out.stdout_str(), 2000),
                stderr: tail_chars(&out.stderr_str(), 2000),
            });
        }
        Ok(out.stdout_str())
    }

    /// Runs a command that must exit non-zero (deadline 60 s), as the NixOS test driver's
    /// `machine.fail`, and returns its stderr: for proving something is refused.
    ///
    /// # Errors
    /// [`VmError::CommandSucceeded`] with its stdout when it exits 0.
    pub async fn fail(&self, command: &str) -> Result<String, VmError> {
        let out = self.exec(command, Duration::from_secs(60)).await?;
        if out.status == 0 {
            return Err(VmError::CommandSucceeded {
                machine: self.config.name.clone(),
                command: command.to_string(),
                stdout: tail_chars(&out.stdout_str(), 2000),
            });
        }
        Ok(out.stderr_str())
    }

    /// Writes `data` to `guest_path` over the guest channel, replacing it atomically. No shared
    /// directory: a lab that can be snapshotted mounts no 9p share, and NixOS lab VMs have none.
    /// The data travels base64-encoded in chunks of [`COPY_CHUNK`] bytes, one command each.
    ///
    /// # Errors
    /// [`VmError::CommandFailed`] naming the step; a timeout when `timeout` passes.
    pub async fn copy_in(
        &self,
        data: &[u8],
        guest_path: &str,
        timeout: Duration,
    ) -> Result<(), VmError> {
        use base64::Engine;
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let target = channel::ansi_c_quote(guest_path);
        let part = channel::ansi_c_quote(&format!("{guest_path}.labtest-in-{}", unique_suffix()));
        self.succeed_within(
            &format!("mkdir -p \"$(dirname {target})\" && : >{part}.b64"),
            left(),
        )
        .await?;
        for chunk in data.chunks(COPY_CHUNK) {
            let text = base64::engine::general_purpose::STANDARD.encode(chunk);
            self.succeed_within(&format!("printf %s {text} >>{part}.b64"), left())
                .await?;
        }
        self.succeed_within(
            &format!("base64 -d {part}.b64 >{part} && rm -f {part}.b64 && mv -f {part} {target}"),
            left(),
        )
        .await
        .map(|_| ())
    }

    /// Reads `guest_path` over the guest channel (base64, so any bytes survive).
    ///
    /// # Errors
    /// [`VmError::CommandFailed`] when the file cannot be read; [`VmError::State`] when what came
    /// back is not base64.
    pub async fn copy_out(&self, guest_path: &str, timeout: Duration) -> Result<Vec<u8>, VmError> {
        use base64::Engine;
        let text = self
            .succeed_within(
                &format!("base64 -w0 {}", channel::ansi_c_quote(guest_path)),
                timeout,
            )
            .await?;
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| self.state_error(&format!("copying {guest_path} out: bad base64: {e}")))
    }

    /// Waits until `command` exits 0 in the guest; returns its stdout. Like every wait of a
    /// machine it is reported as a check of the machine's scope ([`crate::check`]).
    pub async fn wait_until_succeeds(&self, command: &str, wait: &Wait) -> Result<String, VmError> {
        let per_try = wait.timeout.min(Duration::from_secs(30));
        check::run(&self.events, self.name(), wait, || async move {
            if let Some(exit) = self.exit_status() {
                return Poll::Failed(format!("QEMU exited: {exit}"));
            }
            match self.exec(command, per_try).await {
                Ok(out) if out.status == 0 => Poll::Ready(out.stdout_str()),
                Ok(out) => Poll::Pending(format!(
                    "`{command}` exited {}: {}",
                    out.status,
                    tail_chars(&format!("{}{}", out.stdout_str(), out.stderr_str()), 300)
                )),
                Err(e) => Poll::Pending(Chain(&e).to_string()),
            }
        })
        .await
        .map_err(|source| self.wait_error(source))
    }

    /// Waits until something in the guest listens on TCP `port` (checked with bash's /dev/tcp,
    /// so no tool needs to exist in the guest).
    pub async fn wait_for_port(&self, port: u16, wait: &Wait) -> Result<(), VmError> {
        self.wait_until_succeeds(&format!("exec 3<>/dev/tcp/127.0.0.1/{port}"), wait)
            .await
            .map(|_| ())
    }

    /// Waits until a systemd unit is active; gives up at once if it enters `failed`, with its
    /// status and journal tail as the reason.
    pub async fn wait_for_unit(&self, unit: &str, wait: &Wait) -> Result<(), VmError> {
        let query = format!(
            "systemctl show -p ActiveState --value {}",
            channel::ansi_c_quote(unit)
        );
        check::run(&self.events, self.name(), wait, || {
            let query = query.clone();
            async move {
                if let Some(exit) = self.exit_status() {
                    return Poll::Failed(format!("QEMU exited: {exit}"));
                }
                match self.exec(&query, Duration::from_secs(30)).await {
                    Ok(out) => match out.stdout_str().trim() {
                        "active" => Poll::Ready(()),
                        "failed" => Poll::Failed(format!(
                            "{unit} failed:\n{}",
                            self.unit_evidence(unit).await
                        )),
                        other => Poll::Pending(format!("{unit} is {other}")),
                    },
                    Err(e) => Poll::Pending(Chain(&e).to_string()),
                }
            }
        })
        .await
        .map_err(|source| self.wait_error(source))
    }

    /// `systemctl status` and the journal tail of a unit, for error messages and artifacts.
    pub async fn unit_evidence(&self, unit: &str) -> String {
        let unit = channel::ansi_c_quote(unit);
        match self
            .exec(
                &format!("systemctl status --no-pager {unit} 2>&1 | head -20; journalctl --no-pager -n 30 -u {unit} 2>&1"),
                Duration::from_secs(30),
            )
            .await
        {
            Ok(out) => out.stdout_str(),
            Err(e) => format!("(could not read the unit's status: {})", Chain(&e)),
        }
    }

    /// `systemctl --failed` with the status and journal tail of each failed unit, the load and
    /// the busiest processes, then the journal's last warnings: what broke or choked in the
    /// guest when the cause is not in the unit a caller thought of.
    pub async fn health_evidence(&self) -> String {
        let script = "systemctl --failed --no-pager 2>&1; \
            for u in $(systemctl list-units --failed --plain --no-legend 2>/dev/null | awk '{print $1}'); do \
            printf '\\n=== %s\\n' \"$u\"; systemctl status --no-pager \"$u\" 2>&1 | head -20; \
            journalctl --no-pager -n 40 -u \"$u\" 2>&1; done; \
            printf '\\n=== load\\n'; top -bn1 2>&1 | head -20; \
            printf '\\n=== the last warnings\\n'; journalctl --no-pager -p warning -n 60 2>&1";
        match self.exec(script, Duration::from_secs(60)).await {
            Ok(out) => out.stdout_str(),
            Err(e) => format!("(could not read the machine's health: {})", Chain(&e)),
        }
    }

    /// The console log from this start's marker on (all of it if the marker is missing).
    fn console_of_this_start(&self) -> String {
        let marker = format!(
            "=== labtest: start #{} ",
            self.starts.load(std::sync::atomic::Ordering::Relaxed)
        );
        let log = std::fs::read_to_string(self.console_log()).unwrap_or_default();
        match log.rfind(&marker) {
            Some(at) => log[at..].to_string(),
            None => log,
        }
    }

    /// Waits until `text` appears in the console log (this start's part of it).
    pub async fn wait_for_console_text(&self, text: &str, wait: &Wait) -> Result<(), VmError> {
        check::run(&self.events, self.name(), wait, || async {
            let this_start = self.console_of_this_start();
            if this_start.contains(text) {
                Poll::Ready(())
            } else if let Some(exit) = self.exit_status() {
                Poll::Failed(format!("QEMU exited: {exit}"))
            } else {
                Poll::Pending(format!("last console line: {}", last_line(&this_start)))
            }
        })
        .await
        .map_err(|source| self.wait_error(source))
    }

    /// The last `lines` lines of the console log.
    pub fn console_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.console_log()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    async fn qmp(
        &self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VmError> {
        let mut guard = self.links.qmp.lock().await;
        let qmp = guard
            .as_mut()
            .ok_or_else(|| self.state_error("is not running"))?;
        qmp.execute(command, arguments, QMP_TIMEOUT)
            .await
            .map_err(|source| VmError::Qmp {
                machine: self.config.name.clone(),
                source,
            })
    }

    fn fault(&self, fault: impl FnOnce(String) -> Fault) {
        self.events.emit(EventKind::FaultInjected {
            fault: fault(self.config.name.clone()),
        });
    }

    /// Power loss: QEMU quits at once, nothing in the guest gets to run. [`Machine::start`]
    /// boots it again from the same disk.
    pub async fn crash(&self) -> Result<(), VmError> {
        self.fault(|machine| Fault::Crash { machine });
        // QEMU may exit before answering `quit`: a closed connection is the expected outcome.
        let _ = self.qmp("quit", None).await;
        self.reap(Duration::from_secs(10)).await
    }

    /// Pauses the guest's CPUs (QMP `stop`): it answers nothing until [`Machine::thaw`].
    pub async fn freeze(&self) -> Result<(), VmError> {
        self.fault(|machine| Fault::Freeze { machine });
        self.qmp("stop", None).await.map(|_| ())
    }

    pub async fn thaw(&self) -> Result<(), VmError> {
        self.fault(|machine| Fault::Thaw { machine });
        self.qmp("cont", None).await.map(|_| ())
    }

    /// Sets the lab NIC's carrier (QMP `set_link lab`): down cuts the machine from every peer.
    pub async fn set_link(&self, up: bool) -> Result<(), VmError> {
        self.fault(|machine| {
            if up {
                Fault::LinkUp { machine }
            } else {
                Fault::LinkDown { machine }
            }
        });
        self.qmp("set_link", Some(json!({ "name": LAB_NETDEV, "up": up })))
            .await
            .map(|_| ())
    }

    /// The state QMP reports: "running", "paused", ...
    pub async fn qmp_status(&self) -> Result<String, VmError> {
        let mut guard = self.links.qmp.lock().await;
        let qmp = guard
            .as_mut()
            .ok_or_else(|| self.state_error("is not running"))?;
        qmp.status(QMP_TIMEOUT)
            .await
            .map_err(|source| VmError::Qmp {
                machine: self.config.name.clone(),
                source,
            })
    }

    /// Graceful power-off through systemd (as the NixOS test driver's `shutdown()` does), then
    /// waits for QEMU to exit. Not the ACPI button: a guest without logind ignores it.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), VmError> {
        self.fault(|machine| Fault::Shutdown { machine, timeout });
        {
            let mut guard = self.links.ctl.lock().await;
            let ctl = guard
                .as_mut()
                .ok_or_else(|| self.state_error("is not running"))?;
            // The reply may never come: the shell dies with the guest.
            let _ = ctl
                .exec(
                    "systemctl poweroff >/dev/null 2>&1 &",
                    Duration::from_secs(5),
                )
                .await;
        }
        self.reap(timeout).await
    }

    /// Reboots the guest through systemd and waits for the channel to answer from the new boot
    /// (a changed boot id), reconnecting by itself.
    pub async fn reboot(&self, timeout: Duration) -> Result<BootInfo, VmError> {
        self.fault(|machine| Fault::Reboot { machine, timeout });
        let started = Instant::now();
        let old = self.boot_id();
        {
            let mut guard = self.links.ctl.lock().await;
            let ctl = guard
                .as_mut()
                .ok_or_else(|| self.state_error("is not running"))?;
            // The reply may never come: the shell dies with the old boot.
            let _ = ctl
                .exec("systemctl reboot >/dev/null 2>&1 &", Duration::from_secs(5))
                .await;
        }
        let deadline = started + timeout;
        // Wait for QEMU's RESET, then reconnect: a fresh socket connection drops whatever the
        // old boot left half-written.
        let reset = Wait::new(
            format!("{} to reset", self.config.name),
            timeout,
            Duration::from_millis(100),
        );
        poll_until(&reset, || async {
            if let Some(exit) = self.exit_status() {
                return Poll::Failed(format!("QEMU exited: {exit}"));
            }
            let mut guard = self.links.qmp.lock().await;
            match guard.as_mut() {
                Some(qmp) => {
                    let _ = qmp.status(QMP_TIMEOUT).await;
                    if qmp.events.iter().any(|e| e["event"] == "RESET") {
                        qmp.events.clear();
                        Poll::Ready(())
                    } else {
                        Poll::Pending("no RESET event yet".into())
                    }
                }
                None => Poll::Failed("not connected".into()),
            }
        })
        .await
        .map_err(|source| self.wait_error(source))?;
        self.links.clear().await;
        let conn = self.connect(deadline, "while rebooting").await?;
        self.links.install(conn).await;
        let boot_id = self.handshake(started, deadline).await?;
        if Some(&boot_id) == old.as_ref() {
            return Err(self.state_error("answered after reboot with the same boot id"));
        }
        Ok(BootInfo {
            boot_id,
            took: started.elapsed(),
        })
    }

    /// Whether QEMU's process is alive.
    pub fn is_running(&self) -> bool {
        self.child
            .lock()
            .map(|mut c| matches!(c.as_mut().map(|c| c.try_wait()), Some(Ok(None))))
            .unwrap_or(false)
    }

    /// QEMU's process id while it runs (the run script execs QEMU, so the child is QEMU).
    pub fn pid(&self) -> Option<u32> {
        if !self.is_running() {
            return None;
        }
        self.child.lock().ok()?.as_ref().map(Child::id)
    }

    /// The exit status if QEMU has exited, `None` while it runs (or never ran).
    fn exit_status(&self) -> Option<String> {
        let mut guard = self.child.lock().ok()?;
        match guard.as_mut()?.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// Waits for QEMU to exit; then the machine is stopped and can be started again.
    async fn reap(&self, timeout: Duration) -> Result<(), VmError> {
        let wait = Wait::new(
            format!("QEMU of {} to exit", self.config.name),
            timeout,
            Duration::from_millis(20),
        );
        poll_until(&wait, || async {
            match self.exit_status() {
                Some(status) => Poll::Ready(status),
                None => Poll::Pending("QEMU still running".into()),
            }
        })
        .await
        .map_err(|source| self.wait_error(source))?;
        self.links.clear().await;
        self.events.emit(EventKind::MachineExited {
            machine: self.config.name.clone(),
            status: self.exit_status().unwrap_or_default(),
        });
        Ok(())
    }

    /// Kills QEMU now (SIGKILL to its process group). Idempotent.
    pub fn kill(&self) {
        if let Ok(mut guard) = self.child.lock() {
            if let Some(child) = guard.as_mut() {
                spawn::kill_group(child);
            }
        }
    }

    fn boot_failure(&self, error: WaitError, during: &str) -> VmError {
        match self.exit_status() {
            Some(status) => self.exited(status, during),
            None => VmError::Wait {
                machine: self.config.name.clone(),
                source: error,
                console: self.console_log(),
            },
        }
    }

    fn exited(&self, status: String, during: &str) -> VmError {
        VmError::Exited {
            machine: self.config.name.clone(),
            status,
            during: during.to_string(),
            console: self.console_log(),
            tail: self.console_tail(15),
        }
    }

    fn channel_error(&self, source: ChannelError) -> VmError {
        VmError::Channel {
            machine: self.config.name.clone(),
            source: Box::new(source),
            console: self.console_log(),
        }
    }

    fn wait_error(&self, source: WaitError) -> VmError {
        VmError::Wait {
            machine: self.config.name.clone(),
            source,
            console: self.console_log(),
        }
    }

    fn state_error(&self, message: &str) -> VmError {
        VmError::State {
            machine: self.config.name.clone(),
            message: message.to_string(),
        }
    }

    fn io(&self, context: &str, source: std::io::Error) -> VmError {
        VmError::Io {
            machine: self.config.name.clone(),
            context: context.to_string(),
            source,
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A QEMU spawned whose guest has not answered yet. Dropped before [`HalfStarted::up`] (an
/// error, or the start's future dropped), it kills QEMU and forgets its sockets: a machine no
/// one talks to must not keep running, or exec says "is off" and start "already running".
struct HalfStarted<'a> {
    machine: Option<&'a Machine>,
}

impl<'a> HalfStarted<'a> {
    fn new(machine: &'a Machine) -> Self {
        Self {
            machine: Some(machine),
        }
    }

    /// The guest answered: the machine is up and stays so.
    fn up(mut self) {
        self.machine = None;
    }
}

impl Drop for HalfStarted<'_> {
    fn drop(&mut self) {
        let Some(machine) = self.machine else { return };
        machine.kill();
        // Uncontended unless the start was dropped while holding one; a link left then is
        // replaced by the next start.
        if let Ok(mut qmp) = machine.links.qmp.try_lock() {
            *qmp = None;
        }
        if let Ok(mut shell) = machine.links.shell.try_lock() {
            *shell = None;
        }
        if let Ok(mut ctl) = machine.links.ctl.try_lock() {
            *ctl = None;
        }
        machine.events.emit(EventKind::MachineExited {
            machine: machine.config.name.clone(),
            status: machine
                .exit_status()
                .unwrap_or_else(|| "killed: its start did not finish".into()),
        });
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| tail_chars(l, 200))
        .unwrap_or_else(|| "(nothing yet)".into())
}

/// A free TCP port on 127.0.0.1 for a host forward. Another process could take it before QEMU
/// binds it; QEMU then fails at start with "could not set up host forwarding rule", which the
/// console log shows.
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
