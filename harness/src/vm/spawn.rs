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
    // sched_setaffinity, _exit).
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

/// Sets every thread of process `pid` (nice is per thread on Linux, and QEMU's vCPU threads
/// exist by now) to `relative` nicer than the calling thread. Relative, so a harness started
/// under `nice` keeps the same order between its children.
pub fn renice_threads(pid: u32, relative: i32) -> io::Result<()> {
    use ::nix::libc::{id_t, setpriority, PRIO_PROCESS};
    ::nix::errno::Errno::clear();
    // SAFETY: getpriority has no memory effects.
    let own = unsafe { ::nix::libc::getpriority(PRIO_PROCESS, 0) };
    // -1 is also a valid priority: errno alone tells a failure.
    if own == -1 && ::nix::errno::Errno::last_raw() != 0 {
        return Err(io::Error::last_os_error());
    }
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = task?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<id_t>().ok())
        else {
            continue;
        };
        // SAFETY: setpriority has no memory effects.
        if unsafe { setpriority(PRIO_PROCESS, tid, own + relative) } != 0 {
            let err = io::Error::last_os_error();
            // A thread that ended meanwhile is no longer there to renice.
            if err.raw_os_error() != Some(::nix::libc::ESRCH) {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// SIGKILLs a guarded child's whole process group and reaps it.
pub fn kill_group(child: &mut Child) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = ::nix::sys::signal::killpg(pid, Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of every thread of `pid` (field 19 of /proc/PID/task/TID/stat).
    fn thread_nices(pid: u32) -> Vec<i32> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|t| {
                let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap();
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .unwrap()
                    .1
                    .split_whitespace()
                    .collect();
                fields[16].parse().unwrap()
            })
            .collect()
    }

    /// QEMU's vCPU threads exist before the guest answers: renicing must reach every thread,
    /// not only the main one that setpriority(PRIO_PROCESS, pid) changes.
    #[test]
    fn renice_reaches_every_thread_relative_to_the_caller() {
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import threading,time\nfor _ in range(3): threading.Thread(target=time.sleep,args=(30,),daemon=True).start()\nprint('up', flush=True)\ntime.sleep(30)",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let own = thread_nices(std::process::id())[0];
        renice_threads(child.id(), 3).unwrap();
        let nices = thread_nices(child.id());
        kill_group(&mut child);
        assert_eq!(nices.len(), 4, "expected the main thread and three others");
        assert!(
            nices.iter().all(|n| *n == (own + 3).min(19)),
            "expected every thread at {}, saw {nices:?}",
            own + 3
        );
    }
}
