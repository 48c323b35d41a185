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
mod boot;
pub mod channel;
pub mod cpus;
mod exec;
mod faults;
pub mod qmp;
pub mod sample;
pub mod spawn;
pub mod state;
mod waits;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::events::Events;
use crate::wait::WaitError;
// Defined with the fault vocabulary, the lowest layer that needs it (a crash's undo starts the
// machine again); this is where callers look for it.
pub use crate::fault::DEFAULT_BOOT_TIMEOUT;
pub use accel::Accel;
use channel::Channel;
pub use channel::{ChannelError, ExecOutput};
use qmp::{Qmp, QmpError};

/// The netdev id of the lab NIC in every run script (`-netdev stream,id=lab,...`).
pub const LAB_NETDEV: &str = "lab";
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes per command when copying into a guest: ~43 KB of base64 on one command line.
pub const COPY_CHUNK: usize = 32 * 1024;

/// What went wrong with a machine. Messages name the machine and, where it helps, the console
/// log; the cause is left to `source()`.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The run script is missing or not executable.
    #[error("{machine}: run script {path} does not exist or is not executable")]
    NoRunScript {
        /// The machine.
        machine: String,
        /// The script's path.
        path: PathBuf,
    },
    /// The run script could not be started.
    #[error("{machine}: could not start {path}")]
    Spawn {
        /// The machine.
        machine: String,
        /// The script's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// QEMU exited when it was not asked to.
    #[error("{machine}: QEMU exited ({status}) {during}; console log {console}:\n{tail}")]
    Exited {
        /// The machine.
        machine: String,
        /// How it exited.
        status: String,
        /// What the harness was doing then (`while booting`).
        during: String,
        /// The console log.
        console: PathBuf,
        /// The console log's last lines.
        tail: String,
    },
    /// The guest did not come up.
    #[error("{machine}: {message}; console log {console}")]
    Boot {
        /// The machine.
        machine: String,
        /// What went wrong.
        message: String,
        /// The console log.
        console: PathBuf,
    },
    /// The guest channel failed.
    #[error("{machine} (console log {console})")]
    Channel {
        /// The machine.
        machine: String,
        /// The channel's error.
        source: Box<ChannelError>,
        /// The console log.
        console: PathBuf,
    },
    /// A QMP command failed.
    #[error("{machine}")]
    Qmp {
        /// The machine.
        machine: String,
        /// QMP's error.
        source: QmpError,
    },
    /// A command the caller expected to succeed exited non-zero ([`Machine::succeed`]).
    #[error("{machine}: `{command}` exited with {status}, expected 0\nstdout: {stdout}\nstderr: {stderr}")]
    CommandFailed {
        /// The machine.
        machine: String,
        /// The command.
        command: String,
        /// Its exit status.
        status: i32,
        /// What it printed.
        stdout: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command the caller expected to fail exited 0 ([`Machine::fail`]).
    #[error("{machine}: `{command}` exited with 0, expected it to fail\nstdout: {stdout}")]
    CommandSucceeded {
        /// The machine.
        machine: String,
        /// The command.
        command: String,
        /// What it printed.
        stdout: String,
    },
    /// A wait on the guest ended without its value.
    #[error("{machine} (console log {console})")]
    Wait {
        /// The machine.
        machine: String,
        /// The wait's error.
        source: WaitError,
        /// The console log.
        console: PathBuf,
    },
    /// The machine is not in a state for what was asked (off, frozen, already running).
    #[error("{machine}: {message}")]
    State {
        /// The machine.
        machine: String,
        /// Which state, and what was asked.
        message: String,
    },
    /// The saved state itself is unusable (QEMU refused to load it, or its files are gone):
    /// unlike every other restore failure, trying again cannot help.
    #[error(
        "{machine}: its saved state {state} cannot be restored: {reason}; console log {console}"
    )]
    BadSavedState {
        /// The machine.
        machine: String,
        /// The saved state's file.
        state: PathBuf,
        /// Why it cannot be restored.
        reason: String,
        /// The console log.
        console: PathBuf,
    },
    /// A file of the machine's state dir could not be read or written.
    #[error("{machine}: {context}")]
    Io {
        /// The machine.
        machine: String,
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A bad `LABTEST_HOST_CPUS`: how to start QEMU, wrong before any machine starts.
    #[error(transparent)]
    HostCpus(#[from] cpus::HostCpusError),
}

/// How to start one machine. Build with [`MachineBuilder`].
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// The machine's name in the lab, also its host name.
    pub name: String,
    /// Its `run-<name>-vm` script.
    pub run_script: PathBuf,
    /// Where its disk overlay, sockets and console log live.
    pub state_dir: PathBuf,
    /// The accelerator QEMU runs with.
    pub accel: Accel,
    /// The hub port socket its lab NIC is wired to; `None`: no lab NIC.
    pub lab_socket: Option<PathBuf>,
    /// (host port on 127.0.0.1, guest port)
    pub forwards: Vec<(u16, u16)>,
    /// Extra kernel parameters (`QEMU_KERNEL_PARAMS`).
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
    /// A machine `name` started from `run_script`, its state kept in `state_dir`.
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

    /// Runs QEMU under this accelerator (default TCG).
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

    /// Extra kernel parameters (`QEMU_KERNEL_PARAMS`), e.g. to debug a boot.
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

    /// The configuration as built, for [`Machine::new`].
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
    /// Whether the lab NIC's carrier was last set down ([`Machine::set_link`]): QMP has no
    /// query for it, and a snapshot must carry it.
    link_down: std::sync::atomic::AtomicBool,
    /// Where the snapshot of the last save keeps the disk it froze, once committed
    /// ([`Machine::kept_at`]): the overlay the machine runs on names that disk by its
    /// state-dir path, which goes with the lab.
    kept_disk: std::sync::Mutex<Option<PathBuf>>,
}

/// What [`Machine::start`] and [`Machine::reboot`] observed.
#[derive(Debug, Clone)]
pub struct BootInfo {
    /// The guest's boot id (`/proc/sys/kernel/random/boot_id`): a new one means a new boot.
    pub boot_id: String,
    /// From QEMU's start (or the reboot) to the guest answering.
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
            link_down: std::sync::atomic::AtomicBool::new(false),
            kept_disk: std::sync::Mutex::new(None),
        })
    }

    /// The machine's name in the lab.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// How it is started.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// Its serial console's log, in its state dir (copied to the evidence dir at teardown).
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

    /// The disk image QEMU runs on now.
    pub fn disk(&self) -> PathBuf {
        self.disk
            .lock()
            .map(|d| d.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
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

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
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
