//! One process at a time boots a lab for its Ready snapshot.
use std::fs::File;
use std::time::{Duration, Instant};

use super::{ReadyError, READY_SNAPSHOT};
use crate::events::{EventKind, Events};
use crate::snapshot::SnapshotStore;

/// How long a process waits for another one that is making the same Ready snapshot: a cold
/// build, a boot and the gate, on a slow runner.
const SNAPSHOT_LOCK_WAIT: Duration = Duration::from_secs(75 * 60);

/// The lock that makes one process at a time boot a lab for its Ready snapshot; held until the
/// returned file is dropped.
pub(super) async fn lock_snapshot(
    store: &SnapshotStore,
    lab: &str,
    events: &Events,
) -> Result<nix::fcntl::Flock<File>, ReadyError> {
    use nix::fcntl::{Flock, FlockArg};
    let dir = store.root().join(lab);
    std::fs::create_dir_all(&dir).map_err(|source| ReadyError::Io {
        what: "creating",
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(format!("{READY_SNAPSHOT}.lock"));
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        let file = File::create(&path).map_err(|source| ReadyError::Io {
            what: "opening the snapshot lock",
            path: path.clone(),
            source,
        })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
            Err((_, errno)) => {
                return Err(ReadyError::Io {
                    what: "locking",
                    path,
                    source: std::io::Error::from(errno),
                })
            }
        }
        if started.elapsed() > SNAPSHOT_LOCK_WAIT {
            return Err(ReadyError::SnapshotLock {
                lab: lab.to_string(),
                lock: path,
                waited: started.elapsed(),
            });
        }
        if started.elapsed() < Duration::from_secs(1) || said.elapsed() > Duration::from_secs(30) {
            said = Instant::now();
            events.emit(EventKind::Warning {
                message: format!(
                    "another process is making the Ready snapshot of lab {lab} (lock {}); waiting for it, {:.0}s so far",
                    path.display(),
                    started.elapsed().as_secs_f64()
                ),
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
