//! KVM or TCG. A `/dev/kvm` node proves nothing: on nested hosts without vmx/svm it exists, yet
//! stock kernels fail under it (MSR errors, a hang in the decompressor, emulation failures). So the
//! harness boots a real kernel under KVM for a few seconds and believes only that, caches the
//! verdict per host boot, and otherwise falls back to TCG with one loud line - nobody should
//! wonder why a run is slow.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The accelerator a machine runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation: works anywhere, ~10x slower.
    Tcg,
}

impl Accel {
    /// What the harness puts in QEMU_OPTS. Later `-machine` options override the run script's
    /// `-machine accel=kvm:tcg`, which would otherwise silently pick a broken KVM.
    pub fn qemu_opts(self) -> &'static str {
        match self {
            Accel::Kvm => "-machine accel=kvm",
            Accel::Tcg => "-machine accel=tcg",
        }
    }
}

/// What the user asked for (`LABTEST_ACCEL=auto|kvm|tcg`, or a CLI flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM when it works here, else TCG with a warning.
    Auto,
    /// KVM or an error: for a host that must be fast.
    Kvm,
    /// TCG, without probing KVM.
    Tcg,
}

/// Why the accelerator asked for cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    /// `LABTEST_ACCEL` (or `--accel`) is not a choice.
    #[error("LABTEST_ACCEL={0:?} is not one of auto, kvm, tcg")]
    BadChoice(String),
    /// KVM was forced and its probe failed; the probe's reason.
    #[error("KVM was forced (LABTEST_ACCEL=kvm) but does not work here: {0}")]
    KvmForcedButBroken(String),
}

impl AccelChoice {
    /// `LABTEST_ACCEL`, or `Auto` when it is unset.
    ///
    /// # Errors
    /// [`AccelError::BadChoice`] for any other word: a typo is refused, not guessed.
    pub fn from_env() -> Result<Self, AccelError> {
        match std::env::var("LABTEST_ACCEL") {
            Err(_) => Ok(Self::Auto),
            Ok(v) => v.parse(),
        }
    }
}

impl std::str::FromStr for AccelChoice {
    type Err = AccelError;
    fn from_str(s: &str) -> Result<Self, AccelError> {
        match s.trim() {
            "" | "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(AccelError::BadChoice(other.to_string())),
        }
    }
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone)]
pub struct AccelVerdict {
    /// The accelerator to run with.
    pub accel: Accel,
    /// Set when KVM was wanted but unusable: print it once, loudly.
    pub warning: Option<String>,
}

/// The kernel line that proves a guest got far past early boot under the accelerator.
const PROBE_MARKER: &str = "Freeing unused kernel";
/// From QEMU's start to the marker.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// From the run script's start to its `exec` of QEMU. That part is the script's, not KVM's:
/// qemu-vm.nix's startVM (useNixStoreImage) pipes the whole closure through `tar | mkfs.erofs`
/// into a new store image on every start (nixos/modules/virtualisation/qemu-vm.nix, NixOS/nixpkgs
/// 00008e8eb762c5def2670c20231de50db9bb75b3). Measured with Debian's erofs-utils over the fixture
/// lab's 345 MiB closure on the 2-core build host: 1.1-2.6 s; a NixOS Kubernetes closure is
/// several times larger. On a slow disk that alone could outlast PROBE_TIMEOUT and turn a working
/// KVM into a TCG fallback, so the probe's timer starts when QEMU does.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(600);

/// Picks the accelerator. `probe_script` is a run script of the lab being started: booting the
/// lab's own kernel is the only honest test.
///
/// # Errors
/// [`AccelError::KvmForcedButBroken`] when KVM was forced and the probe failed.
pub fn resolve(
    choice: AccelChoice,
    probe_script: &Path,
    cache_dir: &Path,
) -> Result<AccelVerdict, AccelError> {
    let verdict = match choice {
        AccelChoice::Tcg => {
            return Ok(AccelVerdict {
                accel: Accel::Tcg,
                warning: None,
            })
        }
        _ => kvm_verdict(probe_script, cache_dir),
    };
    match (choice, verdict) {
        (_, Ok(())) => Ok(AccelVerdict {
            accel: Accel::Kvm,
            warning: None,
        }),
        (AccelChoice::Kvm, Err(reason)) => Err(AccelError::KvmForcedButBroken(reason)),
        (_, Err(reason)) => Ok(AccelVerdict {
            accel: Accel::Tcg,
            warning: Some(format!(
                "KVM is not usable here ({reason}); running under TCG software emulation, expect boots and Go binaries ~10x slower. Set LABTEST_ACCEL=tcg to skip the probe."
            )),
        }),
    }
}

fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Ok when KVM works; Err(reason) otherwise. Cached per host boot, since only a reboot (or a
/// module load) changes the answer.
fn kvm_verdict(probe_script: &Path, cache_dir: &Path) -> Result<(), String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Err(format!("/dev/kvm cannot be opened: {e}"));
    }
    let cache = cache_dir.join("kvm-probe");
    let boot = host_boot_id();
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((cached_boot, verdict)) = text.split_once(' ') {
            if cached_boot == boot {
                return match verdict.trim() {
                    "ok" => Ok(()),
                    reason => Err(format!("{reason} (cached from an earlier probe this boot)")),
                };
            }
        }
    }
    let verdict = probe(probe_script, PREPARE_TIMEOUT, PROBE_TIMEOUT);
    let line = match &verdict {
        Ok(()) => format!("{boot} ok"),
        Err(reason) => format!("{boot} {reason}"),
    };
    let _ = std::fs::create_dir_all(cache_dir);
    let _ = std::fs::write(&cache, line);
    verdict
}

/// Whether process `pid` is running QEMU: the run scripts `exec` it (qemu-vm.nix's startVM,
/// fixtures/guest/mkrunvm.sh), so the script's own process becomes `qemu-system-*`
/// (nixpkgs' `qemu-kvm` is a symlink to it).
fn runs_qemu(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| {
            exe.file_name()
                .map(|n| n.to_string_lossy().starts_with("qemu-system"))
        })
        .unwrap_or(false)
}

/// Boots `script` under KVM alone, on a throwaway disk, until the kernel frees its init memory:
/// within `prepare` until the script has exec'd QEMU, then within `boot` of QEMU's start.
fn probe(script: &Path, prepare: Duration, boot: Duration) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("labtest-kvm-probe-")
        .tempdir()
        .map_err(|e| format!("no temp dir for the probe: {e}"))?;
    let log: PathBuf = dir.path().join("console.log");
    let console = std::fs::File::create(&log).map_err(|e| format!("probe log: {e}"))?;
    let console_err = console.try_clone().map_err(|e| format!("probe log: {e}"))?;
    let mut command = Command::new(script);
    command
        .current_dir(dir.path())
        .env("NIX_DISK_IMAGE", dir.path().join("probe.qcow2"))
        .env("TMPDIR", dir.path())
        .env("USE_TMPDIR", "1")
        .env("SHARED_DIR", dir.path())
        .env("QEMU_OPTS", Accel::Kvm.qemu_opts())
        .env("QEMU_NET_OPTS", "")
        .env("QEMU_KERNEL_PARAMS", "loglevel=7")
        .env_remove("LABTEST_LAB_SOCKET")
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err);
    let mut child =
        super::spawn::spawn_guarded(command).map_err(|e| format!("probe did not start: {e}"))?;
    let spawned = Instant::now();
    let mut qemu_started: Option<Instant> = None;
    let outcome = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(PROBE_MARKER) {
            break Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!(
                "a KVM boot exited ({status}): {}",
                crate::wait::tail_chars(&text, 200)
            ));
        }
        if qemu_started.is_none() && runs_qemu(child.id()) {
            qemu_started = Some(Instant::now());
        }
        match qemu_started {
            None if spawned.elapsed() > prepare => {
                break Err(format!(
                    "the run script did not start QEMU within {:.1}s; its output: {}",
                    prepare.as_secs_f64(),
                    crate::wait::tail_chars(&text, 200)
                ))
            }
            Some(at) if at.elapsed() > boot => {
                break Err(format!(
                    "a KVM boot did not reach {PROBE_MARKER:?} within {}s of QEMU's start",
                    boot.as_secs()
                ))
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    super::spawn::kill_group(&mut child);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_reject_nonsense() {
        assert_eq!("kvm".parse::<AccelChoice>().unwrap(), AccelChoice::Kvm);
        assert_eq!("".parse::<AccelChoice>().unwrap(), AccelChoice::Auto);
        let err = "fast".parse::<AccelChoice>().unwrap_err();
        assert!(err.to_string().contains("auto, kvm, tcg"), "{err}");
    }

    /// A stand-in run script: `prepare` seconds of work (qemu-vm.nix's mkfs.erofs), then it
    /// execs a program named qemu-system-x86_64 (a copy of bash) that prints `line` and stays
    /// (`sleep` not last: bash would exec a last command and stop being qemu-system-x86_64).
    fn fake_run_script(dir: &Path, prepare: &str, line: &str) -> PathBuf {
        let qemu = dir.join("qemu-system-x86_64");
        std::fs::copy("/bin/bash", &qemu).unwrap();
        let script = dir.join("run-probe-vm");
        std::fs::write(
            &script,
            format!(
                "#!/bin/bash\nsleep {prepare}\nexec {} -c 'echo \"{line}\"; sleep 30; exit 0'\n",
                qemu.display()
            ),
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .unwrap();
        script
    }

    #[test]
    fn the_probe_does_not_count_the_run_scripts_preparation() {
        let dir = tempfile::tempdir().unwrap();
        let script = fake_run_script(dir.path(), "2", "[ 0.5] Freeing unused kernel image");
        // Two seconds of preparation, a one-second boot budget: only QEMU's time counts.
        probe(&script, Duration::from_secs(30), Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn a_probe_that_never_reaches_qemu_or_the_marker_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let script = fake_run_script(dir.path(), "30", "never printed");
        let err = probe(&script, Duration::from_millis(500), Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("did not start QEMU within 0.5s"), "{err}");
        let script = fake_run_script(dir.path(), "0", "a kernel that hangs");
        let err = probe(&script, Duration::from_secs(30), Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("within 1s of QEMU's start"), "{err}");
    }

    #[test]
    fn forcing_tcg_needs_no_probe() {
        let verdict = resolve(
            AccelChoice::Tcg,
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(verdict.accel, Accel::Tcg);
        assert!(verdict.warning.is_none());
    }
}
