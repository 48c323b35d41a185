//! Starting QEMU so that it can never outlive the harness.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. A
//! child forked from a tokio blocking-pool thread (reaped after ~10 s idle) would be killed in
//! the middle of a test. So every machine is forked from one dedicated thread that lives as long
//! as the process: the child then dies with SIGKILL when the harness dies in any way, SIGKILL
//! included. Each child also gets its own process group so a terminal's Ctrl-C reaches the harness
//! (which tears down in order) and not QEMU directly. A child may be confined to some host CPUs
//! ([`super::cpus`]) and given a nice value before it execs, so QEMU and all its threads inherit
//! both ([`Placement`]).
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use ::nix::sched::{sched_setaffinity, CpuSet};
use ::nix::sys::signal::Signal;
use ::nix::unistd::{getppid, Pid};

type Request = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> io::Result<&'static Mutex<mpsc::Sender<Request>>> {
    static SPAWNER: OnceLock<Result<Mutex<mpsc::Sender<Request>>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("labtest-spawner".into())
                .spawn(move || {
                    // Never returns while the process lives: the sender sits in a static.
                    for (mut command, reply) in rx {
                        let _ = reply.send(command.spawn());
                    }
                })
                .map_err(|e| format!("could not start the labtest-spawner thread: {e}"))?;
            Ok(Mutex::new(tx))
        })
        .as_ref()
        .map_err(|e| io::Error::other(e.clone()))
}

/// Where a child runs on the host: set in the child before it execs, so every thread it creates
/// (QEMU's vCPUs) inherits it.
#[derive(Debug, Default)]
pub struct Placement {
    /// Only these host CPUs; all of them when `None`.
    pub cpus: Option<CpuSet>,
    /// How much nicer than the harness it runs (0: as nice as the harness). Relative, so a
    /// harness started under `nice` keeps the same order between its children.
    pub nice: i32,
}

/// Spawns `command` tied to the harness's life (SIGKILL on harness death) in a new process group.
pub fn spawn_guarded(command: Command) -> io::Result<Child> {
    spawn_placed(command, Placement::default())
}

/// [`spawn_guarded`], placed on the host as `placement` says.
pub fn spawn_placed(mut command: Command, placement: Placement) -> io::Result<Child> {
    let parent = Pid::this();
    command.process_group(0);
    // SAFETY: the closure only makes async-signal-safe system calls (prctl, getppid,
    // sched_setaffinity, setpriority, _exit).
    unsafe {
        command.pre_exec(move || {
            ::nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The harness may have died between fork and prctl: then nobody would kill us.
            if getppid() != parent {
                ::nix::libc::_exit(1);
            }
            if let Some(cpus) = &placement.cpus {
                sched_setaffinity(Pid::from_raw(0), cpus).map_err(io::Error::from)?;
            }
            if placement.nice != 0 {
                use ::nix::libc::{__errno_location, getpriority, setpriority, PRIO_PROCESS};
                // getpriority may return -1 as a value: errno alone tells a failure.
                *__errno_location() = 0;
                let own = getpriority(PRIO_PROCESS, 0);
                if own == -1 && *__errno_location() != 0 {
                    return Err(io::Error::last_os_error());
                }
                if setpriority(PRIO_PROCESS, 0, own + placement.nice) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()?
        .lock()
        .map_err(|_| io::Error::other("the spawner lock was poisoned"))?
        .send((command, tx))
        .map_err(|_| io::Error::other("the labtest-spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the labtest-spawner thread did not answer"))?
}

/// SIGKILLs a guarded child's whole process group and reaps it.
pub fn kill_group(child: &mut Child) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = ::nix::sys::signal::killpg(pid, Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}
