//! An Ethernet hub for QEMU `-netdev stream` NICs, with per-pair partitions.
//!
//! Each machine gets its own unix socket, so the hub knows who sent a frame without learning MAC
//! addresses, and a partition is a rule on machine names that survives a machine's restart.
//! Frames are QEMU's stream framing: a 4-byte big-endian length, then the Ethernet frame.
//! Every frame goes to every other connected machine that is not partitioned from the sender. A
//! slow receiver (a frozen guest stops reading) loses frames instead of stalling the hub - what a
//! real switch does with a full queue.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const QUEUE_FRAMES: usize = 512;
/// Larger than any Ethernet frame QEMU sends (jumbo frames included); anything bigger is a
/// corrupt stream.
const MAX_FRAME: usize = 65536;

/// Why the hub could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A machine's port socket could not be bound.
    #[error("hub: cannot listen on {path}")]
    Listen {
        /// The socket's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A machine name the hub has no port for.
    #[error("hub: no machine named {0:?} on this network")]
    UnknownMachine(String),
}

struct Port {
    generation: u64,
    queue: mpsc::Sender<Arc<[u8]>>,
}

#[derive(Default)]
struct State {
    ports: Mutex<HashMap<String, Port>>,
    blocked: Mutex<HashSet<(String, String)>>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl State {
    fn blocked(&self, a: &str, b: &str) -> bool {
        self.blocked
            .lock()
            .map(|set| set.contains(&pair(a, b)))
            .unwrap_or(false)
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// A running hub. Dropping it stops it and removes its sockets.
pub struct Hub {
    dir: PathBuf,
    machines: Vec<String>,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

/// Frame counts, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    /// Frames passed from one machine to another.
    pub forwarded: u64,
    /// Frames dropped because their pair was partitioned or a machine isolated.
    pub dropped_by_partition: u64,
}

impl Hub {
    /// Starts a hub with one socket per machine in `dir` (`<dir>/<machine>.sock`).
    /// Must be called inside a tokio runtime.
    pub async fn start(dir: &Path, machines: &[String]) -> Result<Self, HubError> {
        let state = Arc::new(State::default());
        let mut tasks = Vec::new();
        for machine in machines {
            let path = dir.join(format!("{machine}.sock"));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).map_err(|source| HubError::Listen {
                path: path.clone(),
                source,
            })?;
            tasks.push(tokio::spawn(accept_loop(
                listener,
                machine.clone(),
                state.clone(),
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            machines: machines.to_vec(),
            state,
            tasks,
        })
    }

    /// The socket a machine's lab NIC connects to (`LABTEST_LAB_SOCKET`).
    pub fn socket(&self, machine: &str) -> Result<PathBuf, HubError> {
        self.check(machine)?;
        Ok(self.dir.join(format!("{machine}.sock")))
    }

    fn check(&self, machine: &str) -> Result<(), HubError> {
        if self.machines.iter().any(|m| m == machine) {
            Ok(())
        } else {
            Err(HubError::UnknownMachine(machine.to_string()))
        }
    }

    /// Drops all frames between `a` and `b`, both ways. Other pairs are untouched.
    pub fn partition(&self, a: &str, b: &str) -> Result<(), HubError> {
        self.check(a)?;
        self.check(b)?;
        if let Ok(mut set) = self.state.blocked.lock() {
            set.insert(pair(a, b));
        }
        Ok(())
    }

    /// Undoes [`Hub::partition`].
    pub fn heal(&self, a: &str, b: &str) -> Result<(), HubError> {
        self.check(a)?;
        self.check(b)?;
        if let Ok(mut set) = self.state.blocked.lock() {
            set.remove(&pair(a, b));
        }
        Ok(())
    }

    /// Partitions `machine` from every other machine.
    pub fn isolate(&self, machine: &str) -> Result<(), HubError> {
        for other in self.machines.iter().filter(|m| *m != machine) {
            self.partition(machine, other)?;
        }
        Ok(())
    }

    /// Heals every pair that involves `machine`.
    pub fn rejoin(&self, machine: &str) -> Result<(), HubError> {
        for other in self.machines.iter().filter(|m| *m != machine) {
            self.heal(machine, other)?;
        }
        Ok(())
    }

    /// The pairs currently cut.
    pub fn partitions(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<_> = self
            .state
            .blocked
            .lock()
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        pairs.sort();
        pairs
    }

    /// How many frames it passed and dropped so far.
    pub fn stats(&self) -> HubStats {
        HubStats {
            forwarded: self.state.forwarded.load(Ordering::Relaxed),
            dropped_by_partition: self.state.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for machine in &self.machines {
            let _ = std::fs::remove_file(self.dir.join(format!("{machine}.sock")));
        }
    }
}

async fn accept_loop(listener: UnixListener, machine: String, state: Arc<State>) {
    static GENERATION: AtomicU64 = AtomicU64::new(1);
    // Per-connection tasks are aborted with the accept loop through this set's drop.
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        if let Ok(mut ports) = state.ports.lock() {
            // A restarted machine reconnects: its new connection replaces the old one.
            ports.insert(
                machine.clone(),
                Port {
                    generation,
                    queue: tx,
                },
            );
        }
        tracing::debug!("hub: {machine} connected");
        connections.spawn(serve(
            stream,
            rx,
            machine.clone(),
            generation,
            state.clone(),
        ));
    }
}

async fn serve(
    stream: UnixStream,
    mut outgoing: mpsc::Receiver<Arc<[u8]>>,
    machine: String,
    generation: u64,
    state: Arc<State>,
) {
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            let len = (frame.len() as u32).to_be_bytes();
            if write.write_all(&len).await.is_err() || write.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let mut len = [0u8; 4];
    let mut frame = vec![0u8; MAX_FRAME];
    loop {
        if read.read_exact(&mut len).await.is_err() {
            break;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            tracing::warn!("hub: {machine} sent a {n}-byte frame; dropping its connection");
            break;
        }
        if read.read_exact(&mut frame[..n]).await.is_err() {
            break;
        }
        let data: Arc<[u8]> = Arc::from(&frame[..n]);
        let targets: Vec<(String, mpsc::Sender<Arc<[u8]>>)> = match state.ports.lock() {
            Ok(ports) => ports
                .iter()
                .filter(|(name, _)| **name != machine)
                .map(|(name, port)| (name.clone(), port.queue.clone()))
                .collect(),
            Err(_) => break,
        };
        for (name, queue) in targets {
            if state.blocked(&machine, &name) {
                state.dropped.fetch_add(1, Ordering::Relaxed);
            } else if queue.try_send(data.clone()).is_ok() {
                state.forwarded.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    writer.abort();
    if let Ok(mut ports) = state.ports.lock() {
        if ports.get(&machine).map(|p| p.generation) == Some(generation) {
            ports.remove(&machine);
        }
    }
    tracing::debug!("hub: {machine} disconnected");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn connect(hub: &Hub, machine: &str) -> UnixStream {
        UnixStream::connect(hub.socket(machine).unwrap())
            .await
            .unwrap()
    }

    async fn send(stream: &mut UnixStream, payload: &[u8]) {
        stream
            .write_all(&(payload.len() as u32).to_be_bytes())
            .await
            .unwrap();
        stream.write_all(payload).await.unwrap();
    }

    async fn recv(stream: &mut UnixStream) -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut len))
            .await
            .ok()?
            .ok()?;
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut buf).await.ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn frames_reach_everyone_but_partitioned_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let hub = Hub::start(dir.path(), &names).await.unwrap();
        let (mut a, mut b, mut c) = (
            connect(&hub, "a").await,
            connect(&hub, "b").await,
            connect(&hub, "c").await,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        send(&mut a, b"hello").await;
        assert_eq!(recv(&mut b).await.as_deref(), Some(&b"hello"[..]));
        assert_eq!(recv(&mut c).await.as_deref(), Some(&b"hello"[..]));

        hub.partition("a", "b").unwrap();
        send(&mut b, b"from b").await;
        assert_eq!(recv(&mut a).await, None, "a and b are partitioned");
        assert_eq!(recv(&mut c).await.as_deref(), Some(&b"from b"[..]));
        assert_eq!(hub.partitions(), vec![("a".to_string(), "b".to_string())]);
        assert!(hub.stats().dropped_by_partition >= 1);

        hub.heal("b", "a").unwrap();
        send(&mut b, b"healed").await;
        assert_eq!(recv(&mut a).await.as_deref(), Some(&b"healed"[..]));
    }

    #[tokio::test]
    async fn unknown_machines_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::start(dir.path(), &["a".to_string()]).await.unwrap();
        let err = hub.partition("a", "zz").unwrap_err();
        assert_eq!(
            err.to_string(),
            "hub: no machine named \"zz\" on this network"
        );
    }

    #[tokio::test]
    async fn a_reconnecting_machine_replaces_its_old_port() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let hub = Hub::start(dir.path(), &names).await.unwrap();
        let mut a = connect(&hub, "a").await;
        let old_b = connect(&hub, "b").await;
        drop(old_b);
        let mut b = connect(&hub, "b").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        send(&mut a, b"again").await;
        assert_eq!(recv(&mut b).await.as_deref(), Some(&b"again"[..]));
    }
}
