//! Shared set-up for the tests that boot real QEMU guests: the fixture guest (built and cached by
//! fixtures/guest/build.sh) and run scripts for the fixture lab's three machines.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use harness::lab::LabSpec;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a project script and returns the last line of its stdout, failing the test with the
/// script's stderr when it fails.
pub fn script_output(script: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(script)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {:?} failed ({}):\n{}",
        script.display(),
        args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// The built fixture guest (cached across runs).
pub fn guest_dir() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| script_output(&repo_root().join("fixtures/guest/build.sh"), &[], &[]))
}

/// The fixture lab's spec without Kubernetes or sshd: machines and network only, for the VM tier.
pub fn vm_spec() -> LabSpec {
    let spec = LabSpec::load(&repo_root().join("fixtures/lab")).expect("fixtures/lab/lab.toml");
    LabSpec {
        kubernetes: None,
        generations: Vec::new(),
        // The bare guest runs no sshd: only the fixture lab's generations start one.
        ssh: None,
        ..spec
    }
}

/// A directory with `bin/run-<machine>-vm` for every machine of the fixture lab.
pub fn run_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("labtest-run-")
            .tempdir()
            .expect("temp dir");
        let spec = vm_spec();
        let hosts: Vec<String> = spec
            .machines
            .iter()
            .map(|m| format!("{}={}", m.name, m.address))
            .collect();
        let prefix = spec.network.cidr.split('/').nth(1).unwrap_or("24");
        for machine in &spec.machines {
            script_output(
                &repo_root().join("fixtures/guest/mkrunvm.sh"),
                &[
                    &dir.path().to_string_lossy(),
                    &machine.name,
                    &format!("{}/{prefix}", machine.address),
                    &hosts.join(","),
                    "512",
                ],
                &[("LABTEST_GUEST_DIR", guest_dir())],
            );
        }
        dir
    })
    .path()
}

/// QEMU processes whose command line mentions `needle`.
pub fn qemu_processes_mentioning(needle: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-af", "qemu-system"])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}
