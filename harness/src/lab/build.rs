//! Building a lab's machines (and its generations) with Nix.
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{LabError, LabSpec};
use crate::events::{EventKind, Events};

/// Makes a lab's machines: runs its `prepare` step, then `nix build <lab>#<vm_attr>`, with
/// progress as [`EventKind::BuildProgress`]. Returns the directory holding `bin/run-*-vm`.
///
/// # Errors
/// [`LabError::Prepare`] with the log's tail, [`LabError::Build`] with Nix's own diagnosis
/// (evaluation error, failed derivation and its log tail, missing `nix`).
pub async fn build(
    lab_dir: &Path,
    spec: &LabSpec,
    out_dir: &Path,
    events: &Events,
    timeout: Duration,
) -> Result<PathBuf, LabError> {
    std::fs::create_dir_all(out_dir).map_err(LabError::StateDir)?;
    let lab_dir = lab_dir.canonicalize().map_err(|source| LabError::NoSpec {
        path: lab_dir.to_path_buf(),
        source,
    })?;
    if let Some(command) = &spec.prepare {
        let log = out_dir.join("prepare.log");
        let file = std::fs::File::create(&log).map_err(LabError::StateDir)?;
        let file_err = file.try_clone().map_err(LabError::StateDir)?;
        let status = tokio::process::Command::new("bash")
            .args(["-c", command])
            .current_dir(&lab_dir)
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(file_err)
            .status()
            .await
            .map_err(|source| LabError::PrepareSpawn {
                lab: spec.name.clone(),
                command: command.clone(),
                source,
            })?;
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            return Err(LabError::Prepare {
                lab: spec.name.clone(),
                command: command.clone(),
                status: status.to_string(),
                log,
                tail: lines[lines.len().saturating_sub(20)..].join("\n"),
            });
        }
    }
    build_attr(&lab_dir, spec, &spec.vm_attr, out_dir, events, timeout).await
}

/// Builds one attribute of a lab's flake (the machines, or a system generation for a rebuild)
/// with the lab's Nix settings; returns its output path.
///
/// # Errors
/// [`LabError::Build`] with Nix's own diagnosis.
pub async fn build_attr(
    lab_dir: &Path,
    spec: &LabSpec,
    attr: &str,
    out_dir: &Path,
    events: &Events,
    timeout: Duration,
) -> Result<PathBuf, LabError> {
    let build_error = |source| LabError::Build {
        lab: spec.name.clone(),
        source: Box::new(source),
    };
    let nix = lab_nix(spec).map_err(build_error)?;
    let flake = flake_ref(lab_dir, spec);
    let what = format!("{flake}#{attr}");
    let paths = nix
        .build(&flake, &[attr], out_dir, timeout, |p| {
            events.emit(EventKind::BuildProgress {
                what: what.clone(),
                done: p.done,
                expected: p.expected,
                running: p.running.clone(),
                downloads_done: 0,
                downloads_expected: p.downloads.len() as u64,
            })
        })
        .await
        .map_err(build_error)?;
    paths
        .into_iter()
        .next()
        .ok_or_else(|| LabError::NoBuildOutput {
            lab: spec.name.clone(),
            installable: what,
            out_dir: out_dir.to_path_buf(),
        })
}

/// `nix` with the lab's own settings (`nix_config` in lab.toml).
pub fn lab_nix(spec: &LabSpec) -> Result<crate::nix::Nix, crate::nix::NixError> {
    let mut nix = crate::nix::Nix::find()?;
    for line in &spec.nix_config {
        nix = nix.with_config(line);
    }
    Ok(nix)
}

/// A lab with a prepare step is a `path:` flake, so files the step generates count even where
/// git does not track them; any other lab is whatever flake its directory is.
fn flake_ref(lab_dir: &Path, spec: &LabSpec) -> String {
    if spec.prepare.is_some() {
        format!("path:{}", lab_dir.display())
    } else {
        lab_dir.display().to_string()
    }
}
