//! The folder a run leaves behind, one place to look when something failed:
//!
//! ```text
//! <dir>/machines/<name>/console.log
//! <dir>/machines/<name>/journal-<unit>.txt
//! <dir>/kube/<what>.txt
//! <dir>/report/{junit.xml,events.jsonl,summary.json,summary.txt}
//! ```
//!
//! Every file written through [`ArtifactsDir`] is announced with an `Artifact` event, so the
//!
//! The folder is a layer of its own, below the reports ([`crate::report`] adds the `report/`
//! files to it), so every layer that saves evidence - the scenarios too - can write to it.
use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::events::{EventKind, Events};

/// The `what` of the [`crate::events::EventKind::Artifact`] event that names the artifacts
/// folder itself; the summary points at that path.
pub const ARTIFACTS_FOLDER: &str = "artifacts folder";

/// Why a file could not be written into the folder.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    /// A file or folder could not be written.
    #[error("writing {path}")]
    Io {
        /// What could not be written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A relative path that would leave the folder (`..`, an absolute path, or empty).
    #[error("{path}: not a path inside the artifacts folder")]
    OutsideArtifacts {
        /// The path as given.
        path: PathBuf,
    },
}

/// A run's artifacts folder. Cheap to clone; share it with every layer that saves evidence.
///
/// ```
/// use harness::events::Events;
/// use harness::artifacts::ArtifactsDir;
///
/// let tmp = tempfile::tempdir().unwrap();
/// let events = Events::new();
/// let recorder = events.record();
/// let dir = ArtifactsDir::create(tmp.path().join("run"), &events).unwrap();
/// let path = dir.write_journal("grey-area", "kubelet.service", "kubelet started").unwrap();
/// assert!(path.ends_with("machines/grey-area/journal-kubelet.service.txt"));
/// assert_eq!(recorder.events().len(), 2); // the folder, then the journal
/// ```
#[derive(Debug, Clone)]
pub struct ArtifactsDir {
    root: PathBuf,
    events: Events,
    /// Set by the report layer ([`ArtifactsDir::with_history`]).
    pub(crate) history: Option<PathBuf>,
}

impl ArtifactsDir {
    /// Creates `root` (and parents) and announces it as the run's artifacts folder. The
    /// path is made absolute so the summary's pointer works from any directory.
    pub fn create(root: impl Into<PathBuf>, events: &Events) -> Result<Self, ArtifactsError> {
        let root = root.into();
        let root = std::path::absolute(&root).map_err(|source| ArtifactsError::Io {
            path: root.clone(),
            source,
        })?;
        create_dir(&root)?;
        events.emit(EventKind::Artifact {
            path: root.clone(),
            what: ARTIFACTS_FOLDER.to_string(),
        });
        Ok(Self {
            root,
            events: events.clone(),
            history: None,
        })
    }

    /// The folder itself, absolute.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the VM layer should write `machine`'s serial console. The folder is created
    /// and the file announced now, so it is findable even if the run dies mid-boot.
    pub fn console_log(&self, machine: &str) -> Result<PathBuf, ArtifactsError> {
        let dir = self.root.join("machines").join(file_name(machine));
        create_dir(&dir)?;
        let path = dir.join("console.log");
        self.announce(&path, format!("console of {machine}"));
        Ok(path)
    }

    /// Saves a unit's journal from `machine`, e.g. after a check on that unit failed.
    pub fn write_journal(
        &self,
        machine: &str,
        unit: &str,
        text: &str,
    ) -> Result<PathBuf, ArtifactsError> {
        self.write_text(
            machine_file(machine, &format!("journal-{}.txt", file_name(unit))),
            text,
            &format!("journal of {unit} on {machine}"),
        )
    }

    /// Saves where `machine`'s vCPUs were when its guest did not answer after `what` failed.
    pub fn write_vcpus(
        &self,
        machine: &str,
        what: &str,
        text: &str,
    ) -> Result<PathBuf, ArtifactsError> {
        self.write_text(
            machine_file(machine, &format!("vcpus-after-{}.txt", file_name(what))),
            text,
            &format!("{machine}'s vCPUs: its guest did not answer"),
        )
    }

    /// Saves Kubernetes state (`kubectl describe nodes`, events, pod lists) under `kube/`.
    pub fn write_kube(&self, what: &str, text: &str) -> Result<PathBuf, ArtifactsError> {
        let relative = Path::new("kube").join(format!("{}.txt", file_name(what)));
        self.write_text(relative, text, what)
    }

    /// Saves the CPU samples before `what` failed under `cpu/`
    /// ([`crate::report::cpu::evidence_text`]).
    pub fn write_cpu(&self, what: &str, text: &str) -> Result<PathBuf, ArtifactsError> {
        let relative = Path::new("cpu").join(format!("{}.txt", file_name(what)));
        self.write_text(relative, text, &format!("CPU samples before {what} failed"))
    }

    /// Writes `text` at `relative` inside the folder (parents created) and announces it.
    /// `relative` may not leave the folder.
    pub fn write_text(
        &self,
        relative: impl AsRef<Path>,
        text: &str,
        what: &str,
    ) -> Result<PathBuf, ArtifactsError> {
        let path = self.inside(relative.as_ref())?;
        write(&path, text)?;
        self.announce(&path, what.to_string());
        Ok(path)
    }

    /// Copies a file the harness did not write itself (a QEMU log, a nix build log) into
    /// the folder at `relative`, and announces it.
    pub fn copy_file(
        &self,
        from: &Path,
        relative: impl AsRef<Path>,
        what: &str,
    ) -> Result<PathBuf, ArtifactsError> {
        let path = self.inside(relative.as_ref())?;
        fs::copy(from, &path).map_err(|source| ArtifactsError::Io {
            path: path.clone(),
            source,
        })?;
        self.announce(&path, what.to_string());
        Ok(path)
    }

    fn announce(&self, path: &Path, what: String) {
        self.events.emit(EventKind::Artifact {
            path: path.to_path_buf(),
            what,
        });
    }

    fn inside(&self, relative: &Path) -> Result<PathBuf, ArtifactsError> {
        let plain = relative.components().count() > 0
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(ArtifactsError::OutsideArtifacts {
                path: relative.to_path_buf(),
            });
        }
        let path = self.root.join(relative);
        if let Some(parent) = path.parent() {
            create_dir(parent)?;
        }
        Ok(path)
    }
}

/// `machines/<machine>/<file>`: where a machine's own evidence goes.
fn machine_file(machine: &str, file: &str) -> PathBuf {
    Path::new("machines").join(file_name(machine)).join(file)
}

/// A machine, unit or topic name as one safe file name: names come from lab specs and
/// systemd (`kubelet.service`, `serial-getty@ttyS0.service`), so keep what is readable
/// and replace what could make a path.
fn file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "_".to_string()
    } else {
        cleaned
    }
}

fn create_dir(path: &Path) -> Result<(), ArtifactsError> {
    fs::create_dir_all(path).map_err(|source| ArtifactsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), ArtifactsError> {
    fs::write(path, text).map_err(|source| ArtifactsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ArtifactsDir::create(tmp.path().join("run"), &Events::discard()).expect("create");
        for bad in ["../escape.txt", "/etc/passwd", "", "a/../../b"] {
            assert!(
                matches!(
                    dir.write_text(bad, "x", "bad"),
                    Err(ArtifactsError::OutsideArtifacts { .. })
                ),
                "{bad}"
            );
        }
        let odd = dir.write_journal("..", "../../x", "x").expect("sanitized");
        assert!(odd.starts_with(dir.root()), "{}", odd.display());
    }
}
