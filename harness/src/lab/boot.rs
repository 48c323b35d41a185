//! Booting (or restoring) a lab's machines and hub together.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state_dir::{owner_stamp, OWNER_FILE, STATE_DIR_PREFIX};
use super::{Lab, LabError, LabSpec};
use crate::events::{EventKind, Events};
use crate::net::Hub;
use crate::sampler::{Sampler, SamplerConfig};
use crate::snapshot::Snapshot;
use crate::vm::cpus::HostCpus;
use crate::vm::{Accel, Machine, MachineBuilder, DEFAULT_BOOT_TIMEOUT};

/// How much nicer than the master's every other machine's QEMU runs. On real hardware each
/// machine has its own CPUs; on a host with fewer CPUs than the lab has vCPUs the machines
/// compete, and a node starting pods took the master's CPU until the control plane could not
/// take the nodes' status within the grace period (workers NotReady, evictions). At 5 (CFS
/// weight 335 against the master's 1024) the master gets 60 % of a contended CPU and each node
/// 20 %; the nodes lose nothing while the master idles. Applied once a node's guest channel
/// answers, so its boot is not starved ([`crate::vm::MachineBuilder::nice`]).
pub const NODE_NICE: i32 = 5;

/// Boots a lab. See [`Lab`].
///
/// # Usage
/// ```no_run
/// # async fn demo() -> Result<(), harness::lab::LabError> {
/// use harness::lab::{LabBuilder, LabSpec};
/// let spec = LabSpec::load("fixtures/lab".as_ref())?;
/// let lab = LabBuilder::new(spec, "/path/to/result")
///     .start(&harness::events::Events::discard())
///     .await?;
/// lab.machine("grey-area")?.succeed("hostname").await?;
/// lab.partition("grey-area", "limiting-factor")?;
/// # Ok(()) }
/// ```
pub struct LabBuilder {
    spec: LabSpec,
    run_dir: PathBuf,
    accel: Accel,
    keep: bool,
    boot_timeout: Duration,
    kernel_params: Vec<(String, String)>,
    evidence_dir: Option<PathBuf>,
    snapshot: Option<Snapshot>,
    host_cpus: Option<HostCpus>,
}

impl LabBuilder {
    /// `run_dir` holds `bin/run-<machine>-vm` (a `nix build` result).
    pub fn new(spec: LabSpec, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            spec,
            run_dir: run_dir.into(),
            accel: Accel::Tcg,
            keep: false,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            kernel_params: Vec::new(),
            evidence_dir: None,
            snapshot: None,
            host_cpus: None,
        }
    }

    /// Runs every QEMU of the lab on these host CPUs only (`LABTEST_HOST_CPUS`), to see how the
    /// lab fares on a smaller host.
    pub fn host_cpus(mut self, cpus: Option<HostCpus>) -> Self {
        self.host_cpus = cpus;
        self
    }

    /// Starts every machine from `snapshot` instead of booting: all load paused, then continue
    /// together. The run scripts must be the ones the snapshot was made with (its key says so).
    pub fn restore_from(mut self, snapshot: Snapshot) -> Self {
        self.snapshot = Some(snapshot);
        self
    }

    /// Runs the machines under this accelerator (default TCG; [`crate::vm::accel`] picks one).
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }

    /// Keep the state dir (disks, console logs) after the lab is dropped.
    pub fn keep(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// From the first QEMU start to every guest channel answering (default
    /// [`DEFAULT_BOOT_TIMEOUT`]; a restore's load and continue share it), and what a machine
    /// later gets for [`Machine::start`].
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }

    /// Where each machine's console log is copied when the lab goes away (also after a failed
    /// boot), as `<dir>/machines/<name>/console.log`: the state dir itself is temporary.
    pub fn evidence_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.evidence_dir = Some(dir.into());
        self
    }

    /// Extra kernel parameters for one machine (QEMU_KERNEL_PARAMS).
    pub fn kernel_params(mut self, machine: &str, params: &str) -> Self {
        self.kernel_params
            .push((machine.to_string(), params.to_string()));
        self
    }

    /// Starts the hub, then every machine at once, and waits for every guest channel.
    ///
    /// # Errors
    /// The first machine that fails to boot; every machine and the hub are torn down then.
    pub async fn start(self, events: &Events) -> Result<Lab, LabError> {
        let started = Instant::now();
        let lab_name = self.spec.name.clone();
        for machine in &self.spec.machines {
            let path = run_script(&self.run_dir, &machine.name);
            if !path.exists() {
                return Err(LabError::MissingRunScript {
                    lab: lab_name,
                    machine: machine.name.clone(),
                    path,
                });
            }
        }
        let state = tempfile::Builder::new()
            .prefix(STATE_DIR_PREFIX)
            .tempdir()
            .map_err(LabError::StateDir)?;
        std::fs::write(
            state.path().join(OWNER_FILE),
            owner_stamp(std::process::id()),
        )
        .map_err(LabError::StateDir)?;
        let hub_dir = state.path().join("hub");
        std::fs::create_dir_all(&hub_dir).map_err(LabError::StateDir)?;
        let hub = Hub::start(&hub_dir, &self.spec.machine_names()).await?;
        let master = self
            .spec
            .kubernetes
            .as_ref()
            .map(|k| (k.master.clone(), k.apiserver_port));
        let mut machines = Vec::new();
        for spec in &self.spec.machines {
            let mut builder = MachineBuilder::new(
                &spec.name,
                run_script(&self.run_dir, &spec.name),
                state.path().join("machines").join(&spec.name),
            )
            .accel(self.accel)
            .boot_timeout(self.boot_timeout)
            .host_cpus(self.host_cpus)
            .nice(if spec.roles.iter().any(|r| r == "master") {
                0
            } else {
                NODE_NICE
            })
            .lab_socket(hub.socket(&spec.name)?);
            if let Some((_, port)) = master.as_ref().filter(|(m, _)| *m == spec.name) {
                builder = builder.forward(*port);
            }
            // Every machine's sshd, for `labtest ssh`: on 127.0.0.1 only, like every forward.
            if let Some(ssh) = &self.spec.ssh {
                builder = builder.forward(ssh.port);
            }
            let params: Vec<&str> = self
                .kernel_params
                .iter()
                .filter(|(m, _)| *m == spec.name)
                .map(|(_, p)| p.as_str())
                .collect();
            if !params.is_empty() {
                builder = builder.kernel_params(params.join(" "));
            }
            if let Some(snapshot) = &self.snapshot {
                builder = builder.restore_from(snapshot.machine(&spec.name));
            }
            machines.push(Arc::new(Machine::new(builder.config(), events.clone())?));
        }
        let mut lab = Lab {
            spec: self.spec,
            machines,
            hub,
            state: Some(state),
            keep: self.keep,
            evidence_dir: self.evidence_dir,
            events: events.clone(),
            up_in: Duration::ZERO,
            sampler: None,
            restored_from: std::sync::Mutex::new(self.snapshot.as_ref().map(|s| s.meta.as_base())),
            ssh_key: tokio::sync::Mutex::new(()),
        };
        let deadline = started + self.boot_timeout;
        match &self.snapshot {
            None => {
                let boots = lab.machines.iter().map(|m| m.start_by(deadline));
                for result in futures::future::join_all(boots).await {
                    result?;
                }
            }
            Some(snapshot) => {
                // Loaded paused, then continued within milliseconds of each other: the guests'
                // clocks keep their mutual offsets, so no lease looks expired.
                let loads = lab
                    .machines
                    .iter()
                    .map(|m| m.start_paused_from_state(deadline));
                for result in futures::future::join_all(loads).await {
                    result?;
                }
                // Faults that held at the save hold again, from the first instant the guests
                // run: the hub's cut pairs before any frame passes, frozen machines never run.
                let faults = &snapshot.meta.faults;
                for (a, b) in &faults.partitions {
                    lab.hub.partition(a, b)?;
                }
                let resumes = lab
                    .machines
                    .iter()
                    .filter(|m| !faults.frozen.iter().any(|f| f == m.name()))
                    .map(|m| m.resume(deadline));
                for result in futures::future::join_all(resumes).await {
                    result?;
                }
                for machine in &faults.links_down {
                    lab.machine(machine)?.set_link(false).await?;
                }
                events.emit(EventKind::SnapshotRestored {
                    snapshot: snapshot.meta.name.to_string(),
                    took: started.elapsed(),
                });
                if !faults.is_empty() {
                    events.emit(EventKind::Warning {
                        message: format!(
                            "restored as saved, faults and all: {}",
                            faults.describe()
                        ),
                    });
                }
            }
        }
        lab.up_in = started.elapsed();
        let sampling = SamplerConfig {
            confined_to: self.host_cpus.map(|c| c.count() as u32),
            ..SamplerConfig::default()
        };
        lab.sampler = Sampler::start(lab.machines.clone(), events, sampling);
        tracing::info!(
            "lab {} up in {:.1}s",
            lab.spec.name,
            lab.up_in.as_secs_f64()
        );
        Ok(lab)
    }
}

fn run_script(run_dir: &Path, machine: &str) -> PathBuf {
    run_dir.join("bin").join(format!("run-{machine}-vm"))
}
