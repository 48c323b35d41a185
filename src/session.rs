//! Where a lab kept up between commands lives: one session dir per lab path, holding the
//! serving process's lock, its control socket, its log and what it tells clients (`info.json`).
//!
//! The lock is the truth: a session whose lock nobody holds is stale (its server died, even by
//! SIGKILL) and is cleaned up by the next `up`; a held lock means the lab is up.
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// What the server publishes once the lab is up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub lab: String,
    pub lab_dir: PathBuf,
    pub pid: u32,
    pub machines: Vec<String>,
    pub state_dir: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    /// Whether the lab's machines run sshd (`labtest ssh`).
    #[serde(default)]
    pub ssh: bool,
}

impl Info {
    /// What a server serving `lab` (from `spec` at `lab_dir`) tells its clients.
    pub fn serving(
        spec: &harness::lab::LabSpec,
        lab_dir: &Path,
        lab: &harness::lab::Lab,
        session: &Session,
    ) -> Result<Self> {
        Ok(Info {
            lab: spec.name.clone(),
            lab_dir: lab_dir.canonicalize()?,
            pid: std::process::id(),
            machines: spec.machine_names(),
            state_dir: lab.state_dir().map(Path::to_path_buf).unwrap_or_default(),
            kubeconfig: spec.kubernetes.as_ref().map(|_| session.kubeconfig()),
            ssh: spec.ssh.is_some(),
        })
    }
}

pub struct Session {
    pub dir: PathBuf,
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

impl Session {
    /// The session of the lab at `lab_dir` (which must exist).
    pub fn for_lab(lab_dir: &Path) -> Result<Self> {
        let lab_dir = lab_dir
            .canonicalize()
            .with_context(|| format!("lab dir {} does not exist", lab_dir.display()))?;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("labtest-{}", nix::unistd::getuid()))
            });
        let name = lab_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        let dir = base.join("labtest").join(format!(
            "{name}-{:08x}",
            fnv1a(&lab_dir.to_string_lossy()) as u32
        ));
        Ok(Self { dir })
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("serve.log")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn info_path(&self) -> PathBuf {
        self.dir.join("info.json")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// Takes the session's lock for a server; `None` when another server holds it.
    pub fn lock(&self) -> Result<Option<Flock<File>>> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let file = File::create(self.lock_path())
            .with_context(|| format!("creating {}", self.lock_path().display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e).context("locking the session"),
        }
    }

    /// Whether a live server holds the lock.
    pub fn is_up(&self) -> bool {
        if !self.lock_path().exists() {
            return false;
        }
        match File::open(self.lock_path()) {
            // A shared lock is refused exactly while a server holds the exclusive one.
            Ok(file) => Flock::lock(file, FlockArg::LockSharedNonblock).is_err(),
            Err(_) => false,
        }
    }

    /// When no server holds the lock but one left its socket or info behind (it was killed),
    /// removes them (its lab state dir goes with the owner sweep,
    /// `harness::lab::remove_orphaned_state_dirs`). Returns a line saying so, if it did.
    pub fn clear_if_stale(&self) -> Option<String> {
        if self.is_up() || !(self.socket().exists() || self.info_path().exists()) {
            return None;
        }
        self.clear_stale();
        Some(format!(
            "cleared the stale session of a dead server in {}",
            self.dir.display()
        ))
    }

    /// Removes what a dead server left behind.
    pub fn clear_stale(&self) {
        for path in [self.socket(), self.info_path()] {
            let _ = std::fs::remove_file(path);
        }
    }

    pub fn write_info(&self, info: &Info) -> Result<()> {
        let tmp = self.dir.join("info.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)?;
        std::fs::rename(&tmp, self.info_path())?;
        Ok(())
    }

    pub fn info(&self) -> Option<Info> {
        let text = std::fs::read(self.info_path()).ok()?;
        serde_json::from_slice(&text).ok()
    }
}
