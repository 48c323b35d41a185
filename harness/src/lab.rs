//! A lab: a spec (`lab.toml` beside the lab's flake) plus its machines and their private network,
//! booted together and torn down together. The repo's NixOS lab and the fixture lab are both labs;
//! nothing above this layer knows which one it drives.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::events::{EventKind, Events};
use crate::fault::Fault;
use crate::net::{Hub, HubError};
use crate::sampler::{Sampler, SamplerConfig};
use crate::snapshot::{
    Snapshot, SnapshotError, SnapshotKey, SnapshotMeta, SnapshotName, SnapshotStore,
};
use crate::vm::cpus::HostCpus;
use crate::vm::{Accel, Machine, MachineBuilder, VmError, DEFAULT_BOOT_TIMEOUT};

/// `lab.toml`: what the harness must know about a lab that its run scripts do not say.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabSpec {
    pub name: String,
    /// `nix build <lab>#<vm_attr>` yields `bin/run-<machine>-vm` for every machine.
    #[serde(default = "default_vm_attr")]
    pub vm_attr: String,
    /// A command run in the lab dir before `nix build` (e.g. building cached fixture parts).
    /// A lab with one is built as a `path:` flake, so files it generates count even when git
    /// does not track them.
    pub prepare: Option<String>,
    /// Extra `nix.conf` lines for this lab's builds (e.g. `sandbox = false`).
    #[serde(default)]
    pub nix_config: Vec<String>,
    /// The flake attribute of a machine's system as the flake defines it now (`{machine}`
    /// stands for its name): what `labtest rebuild MACHINE` builds and switches to.
    pub system_attr: Option<String>,
    pub network: NetworkSpec,
    #[serde(rename = "machine")]
    pub machines: Vec<MachineSpec>,
    pub kubernetes: Option<KubernetesSpec>,
    #[serde(default, rename = "generation")]
    pub generations: Vec<GenerationSpec>,
}

fn default_vm_attr() -> String {
    "vm".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub cidr: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    pub name: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub address: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSpec {
    pub master: String,
    pub apiserver_port: u16,
    pub tls_server_name: Option<String>,
    pub admin_kubeconfig: String,
    /// Run on the master; its stdout is the join token. Absent: nodes join by themselves.
    pub join_token_command: Option<String>,
    /// Run on each node with the token on stdin.
    pub join_command: Option<String>,
    pub kubelet_unit: String,
    pub workload_image: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    pub name: String,
    pub machine: String,
    pub attr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("no lab spec at {path} (a lab is a flake with a lab.toml beside it)")]
    NoSpec {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lab spec {path} is invalid: {message}")]
    BadSpec { path: PathBuf, message: String },
    #[error("lab {lab}: no run script for machine {machine}: expected {path}")]
    MissingRunScript {
        lab: String,
        machine: String,
        path: PathBuf,
    },
    #[error("lab {lab} has no machine named {machine:?} (it has: {known})")]
    UnknownMachine {
        lab: String,
        machine: String,
        known: String,
    },
    #[error(transparent)]
    Vm(Box<VmError>),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("lab state dir: {0}")]
    StateDir(std::io::Error),
    #[error("lab {lab}: could not keep {machine}'s console log {from} as {to}")]
    ConsoleLog {
        lab: String,
        machine: String,
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("lab {lab}: could not remove its state dir {path}")]
    RemoveStateDir {
        lab: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A fault that makes no sense on this lab, or not in the state it is in now.
    #[error("fault `{fault}` refused: {reason}")]
    FaultRefused { fault: String, reason: String },
    #[error("lab {lab}: could not start its prepare step `{command}` with bash")]
    PrepareSpawn {
        lab: String,
        command: String,
        source: std::io::Error,
    },
    #[error("lab {lab}: `nix build {installable}` succeeded but named no output path; expected one (log in {out_dir})")]
    NoBuildOutput {
        lab: String,
        installable: String,
        out_dir: PathBuf,
    },
    #[error("lab {lab}: prepare step `{command}` failed ({status}); log {log}:\n{tail}")]
    Prepare {
        lab: String,
        command: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    /// Nix's diagnosis is the source.
    #[error("lab {lab}: building its machines failed")]
    Build {
        lab: String,
        source: Box<crate::nix::NixError>,
    },
}

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

impl From<VmError> for LabError {
    fn from(error: VmError) -> Self {
        LabError::Vm(Box::new(error))
    }
}

impl LabSpec {
    /// Reads `<lab_dir>/lab.toml`.
    ///
    /// # Errors
    /// [`LabError::NoSpec`] when the file is missing; [`LabError::BadSpec`] naming the line and
    /// field when it does not parse or contradicts itself.
    pub fn load(lab_dir: &Path) -> Result<Self, LabError> {
        let path = lab_dir.join("lab.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| LabError::NoSpec {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, LabError> {
        let bad = |message: String| LabError::BadSpec {
            path: path.to_path_buf(),
            message,
        };
        let spec: LabSpec = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        validate(&spec).map_err(bad)?;
        Ok(spec)
    }

    /// The flake attribute `labtest rebuild` builds for `machine`: the named generation's, or
    /// the machine's system as the flake has it now (`system_attr`).
    ///
    /// # Errors
    /// [`LabError::BadSpec`] naming what the spec offers instead.
    pub fn rebuild_attr(
        &self,
        machine: &str,
        generation: Option<&str>,
    ) -> Result<String, LabError> {
        let bad = |message: String| LabError::BadSpec {
            path: PathBuf::from("lab.toml"),
            message,
        };
        let offered = || {
            let names: Vec<&str> = self
                .generations
                .iter()
                .filter(|g| g.machine == machine)
                .map(|g| g.name.as_str())
                .collect();
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        match generation {
            Some(name) => self
                .generations
                .iter()
                .find(|g| g.name == name && g.machine == machine)
                .map(|g| g.attr.clone())
                .ok_or_else(|| {
                    bad(format!(
                        "no [[generation]] {name:?} for machine {machine} (its generations: {})",
                        offered()
                    ))
                }),
            None => self
                .system_attr
                .as_ref()
                .map(|a| a.replace("{machine}", machine))
                .ok_or_else(|| {
                    bad(format!(
                        "no system_attr to build {machine}'s current system from; name a generation instead (its generations: {})",
                        offered()
                    ))
                }),
        }
    }

    pub fn machine_names(&self) -> Vec<String> {
        self.machines.iter().map(|m| m.name.clone()).collect()
    }
}

/// The roles a machine may have: `master` runs the control plane, `node` a kubelet.
const ROLES: [&str; 2] = ["master", "node"];

/// How much nicer than the master's every other machine's QEMU runs. On real hardware each
/// machine has its own CPUs; on a host with fewer CPUs than the lab has vCPUs the machines
/// compete, and a node starting pods took the master's CPU until the control plane could not
/// take the nodes' status within the grace period (workers NotReady, evictions). At 5 (CFS
/// weight 335 against the master's 1024) the master gets 60 % of a contended CPU and each node
/// 20 %; the nodes lose nothing while the master idles. Applied once a node's guest channel
/// answers, so its boot is not starved ([`crate::vm::MachineBuilder::nice`]).
pub const NODE_NICE: i32 = 5;

/// Every rule a lab.toml must meet before anything builds or boots: a mistake found after a
/// three-machine boot (or by QEMU, minutes in) wastes the boot. Each message names the field,
/// what was expected and what was seen.
fn validate(spec: &LabSpec) -> Result<(), String> {
    if !is_host_name(&spec.name) {
        return Err(format!(
            "name = {:?}: expected 1-63 of a-z, 0-9 and '-', not at either end (it names state dirs and snapshots)",
            spec.name
        ));
    }
    let not_blank = |field: &str, value: &str| {
        if value.trim().is_empty() {
            Err(format!("{field}: expected a value, saw an empty string"))
        } else {
            Ok(())
        }
    };
    not_blank("vm_attr", &spec.vm_attr)?;
    if let Some(attr) = &spec.system_attr {
        not_blank("system_attr", attr)?;
    }
    if let Some(prepare) = &spec.prepare {
        not_blank("prepare", prepare)?;
    }
    let (network, mask) = parse_cidr(&spec.network.cidr)
        .map_err(|why| format!("[network] cidr = {:?}: {why}", spec.network.cidr))?;
    let broadcast = network | !mask;
    if spec.machines.is_empty() {
        return Err("it names no [[machine]]".into());
    }
    let mut names = BTreeSet::new();
    let mut addresses = std::collections::BTreeMap::new();
    for machine in &spec.machines {
        let name = &machine.name;
        if !is_host_name(name) {
            return Err(format!(
                "machine {name:?}: name: expected a host name (1-63 of a-z, 0-9 and '-', not at either end)"
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(format!("machine {name:?} appears twice"));
        }
        let mut roles = BTreeSet::new();
        for role in &machine.roles {
            if !ROLES.contains(&role.as_str()) {
                return Err(format!(
                    "machine {name:?}: roles: {role:?} is not a role (expected {})",
                    ROLES.join(" or ")
                ));
            }
            if !roles.insert(role) {
                return Err(format!("machine {name:?}: roles: {role:?} appears twice"));
            }
        }
        let address: std::net::Ipv4Addr = machine.address.parse().map_err(|_| {
            format!(
                "machine {name:?}: address {:?} is not an IPv4 address",
                machine.address
            )
        })?;
        let bits = u32::from(address);
        let cidr = &spec.network.cidr;
        if bits & mask != network {
            return Err(format!(
                "machine {name:?}: address {address} is outside [network] cidr {cidr}"
            ));
        }
        if bits == network || bits == broadcast {
            let which = if bits == network {
                "network"
            } else {
                "broadcast"
            };
            return Err(format!(
                "machine {name:?}: address {address} is the {which} address of {cidr}, not a host's"
            ));
        }
        if let Some(other) = addresses.insert(bits, name.as_str()) {
            return Err(format!(
                "machine {name:?}: address {address} is machine {other:?}'s already"
            ));
        }
    }
    if let Some(k8s) = &spec.kubernetes {
        validate_kubernetes(spec, k8s)?;
    }
    let mut generations = BTreeSet::new();
    for generation in &spec.generations {
        let name = &generation.name;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!(
                "[[generation]] name = {name:?}: expected a name without spaces or '/'"
            ));
        }
        if !generations.insert(name.as_str()) {
            return Err(format!("[[generation]] {name:?} appears twice"));
        }
        if !names.contains(generation.machine.as_str()) {
            return Err(format!(
                "generation {name:?}: machine {:?} is not one of the machines",
                generation.machine
            ));
        }
        not_blank(&format!("generation {name:?}: attr"), &generation.attr)?;
    }
    Ok(())
}

fn validate_kubernetes(spec: &LabSpec, k8s: &KubernetesSpec) -> Result<(), String> {
    let Some(master) = spec.machines.iter().find(|m| m.name == k8s.master) else {
        return Err(format!(
            "[kubernetes] master = {:?} is not one of the machines",
            k8s.master
        ));
    };
    if !master.roles.iter().any(|r| r == "master") {
        return Err(format!(
            "[kubernetes] master = {:?}: expected a machine with role \"master\", it has roles {:?}",
            k8s.master, master.roles
        ));
    }
    if !spec
        .machines
        .iter()
        .any(|m| m.roles.iter().any(|r| r == "node"))
    {
        return Err(
            "[kubernetes]: expected at least one machine with role \"node\" (a cluster without kubelets cannot schedule anything)"
                .into(),
        );
    }
    if k8s.apiserver_port == 0 {
        return Err(
            "[kubernetes] apiserver_port = 0: expected the apiserver's port in the guest, 1-65535"
                .into(),
        );
    }
    if !k8s.admin_kubeconfig.starts_with('/') {
        return Err(format!(
            "[kubernetes] admin_kubeconfig = {:?}: expected an absolute path on the master",
            k8s.admin_kubeconfig
        ));
    }
    match (&k8s.join_token_command, &k8s.join_command) {
        (Some(_), None) | (None, Some(_)) => {
            return Err("[kubernetes] join_token_command and join_command go together: the token one prints on the master is the join one's stdin on each node (give both, or neither when nodes join by themselves)".into());
        }
        (Some(token), Some(join)) => {
            for (field, command) in [("join_token_command", token), ("join_command", join)] {
                if command.trim().is_empty() {
                    return Err(format!(
                        "[kubernetes] {field}: expected a shell command, saw an empty string"
                    ));
                }
            }
        }
        (None, None) => {}
    }
    if !k8s.kubelet_unit.ends_with(".service") || k8s.kubelet_unit.len() <= ".service".len() {
        return Err(format!(
            "[kubernetes] kubelet_unit = {:?}: expected a systemd service name (e.g. \"kubelet.service\")",
            k8s.kubelet_unit
        ));
    }
    if k8s.workload_image.trim().is_empty() {
        return Err("[kubernetes] workload_image: expected an image name the guests have (they pull nothing), saw an empty string".into());
    }
    if let Some(name) = &k8s.tls_server_name {
        if name.trim().is_empty() {
            return Err("[kubernetes] tls_server_name: expected a name in the apiserver certificate, saw an empty string".into());
        }
    }
    Ok(())
}

/// An RFC 1123 label, lowercase: what a host name, a Kubernetes node name and a dir name share.
fn is_host_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `a.b.c.d/len` as the network's address bits and its mask; the address must be the
/// network's own (no host bits), and the network must hold at least two hosts.
fn parse_cidr(cidr: &str) -> Result<(u32, u32), String> {
    let (address, prefix) = cidr
        .split_once('/')
        .ok_or("expected an IPv4 network as address/prefix, e.g. \"10.77.0.0/24\"")?;
    let address: std::net::Ipv4Addr = address
        .parse()
        .map_err(|_| format!("{address:?} is not an IPv4 address"))?;
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("prefix {prefix:?}: expected 0-32"))?;
    if prefix > 30 {
        return Err(format!(
            "prefix /{prefix} holds fewer than two hosts: expected /30 or shorter"
        ));
    }
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    let bits = u32::from(address);
    if bits & !mask != 0 {
        return Err(format!(
            "{address} has host bits set for /{prefix}: expected the network address {}",
            std::net::Ipv4Addr::from(bits & mask)
        ));
    }
    Ok((bits, mask))
}

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
                let resumes = lab.machines.iter().map(|m| m.resume(deadline));
                for result in futures::future::join_all(resumes).await {
                    result?;
                }
                events.emit(EventKind::SnapshotRestored {
                    snapshot: snapshot.meta.name.to_string(),
                    took: started.elapsed(),
                });
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

/// A booted lab. Dropping it kills every machine, stops the hub and removes the state dir
/// (unless kept).
pub struct Lab {
    spec: LabSpec,
    machines: Vec<Arc<Machine>>,
    hub: Hub,
    state: Option<tempfile::TempDir>,
    keep: bool,
    evidence_dir: Option<PathBuf>,
    events: Events,
    up_in: Duration,
    /// Samples where the CPU goes from the moment the lab is up until it is dropped.
    sampler: Option<Sampler>,
}

impl Lab {
    /// The CPU samples of the last minutes ([`crate::sampler`]), oldest first: for failure
    /// evidence and `labtest top`.
    pub fn recent_samples(&self) -> Vec<crate::events::Event> {
        self.sampler
            .as_ref()
            .map(Sampler::recent)
            .unwrap_or_default()
    }

    /// From the first QEMU start to every guest channel answering (booted or restored): how
    /// fast this machine runs these guests, which later deadlines may scale by.
    pub fn up_in(&self) -> Duration {
        self.up_in
    }

    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    pub fn machines(&self) -> &[Arc<Machine>] {
        &self.machines
    }

    /// # Errors
    /// [`LabError::UnknownMachine`] listing the lab's machines.
    pub fn machine(&self, name: &str) -> Result<&Arc<Machine>, LabError> {
        self.machines
            .iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| LabError::UnknownMachine {
                lab: self.spec.name.clone(),
                machine: name.to_string(),
                known: self.spec.machine_names().join(", "),
            })
    }

    pub fn state_dir(&self) -> Option<&Path> {
        self.state.as_ref().map(|s| s.path())
    }

    /// Cuts the lab network between two machines, both ways; other pairs keep talking.
    pub fn partition(&self, a: &str, b: &str) -> Result<(), LabError> {
        self.machine(a)?;
        self.machine(b)?;
        self.hub.partition(a, b)?;
        self.events.emit(EventKind::FaultInjected {
            fault: Fault::Partition {
                a: a.to_string(),
                b: b.to_string(),
            },
        });
        Ok(())
    }

    pub fn heal(&self, a: &str, b: &str) -> Result<(), LabError> {
        self.machine(a)?;
        self.machine(b)?;
        self.hub.heal(a, b)?;
        self.events.emit(EventKind::FaultInjected {
            fault: Fault::Heal {
                a: a.to_string(),
                b: b.to_string(),
            },
        });
        Ok(())
    }

    /// Cuts a machine from every other machine (the hub keeps its link up, as a real switch
    /// failure would look from the guest).
    pub fn isolate(&self, machine: &str) -> Result<(), LabError> {
        self.machine(machine)?;
        self.hub.isolate(machine)?;
        self.events.emit(EventKind::FaultInjected {
            fault: Fault::Isolate {
                machine: machine.to_string(),
            },
        });
        Ok(())
    }

    pub fn rejoin(&self, machine: &str) -> Result<(), LabError> {
        self.machine(machine)?;
        self.hub.rejoin(machine)?;
        self.events.emit(EventKind::FaultInjected {
            fault: Fault::Rejoin {
                machine: machine.to_string(),
            },
        });
        Ok(())
    }

    pub fn partitions(&self) -> Vec<(String, String)> {
        self.hub.partitions()
    }

    /// Puts `fault` on the lab (or ends one): where a machine gets crashed, frozen, cut off or
    /// has a unit stopped, for the CLI, scenario files and the built-in scenarios alike. Returns
    /// what was done, in one line.
    ///
    /// A fault that makes no sense is refused before anything happens: an unknown machine, a
    /// pair that is one machine ([`Fault::check`]), and a fault the machine's state rules out -
    /// freezing or crashing a machine that is off, thawing one that is not frozen, starting one
    /// that runs, healing a pair that is not cut, rejoining a machine that is not isolated.
    ///
    /// # Errors
    /// [`LabError::FaultRefused`] saying why, or the VM or hub error of the injection itself.
    pub async fn inject(&self, fault: &Fault) -> Result<String, LabError> {
        let refuse = |reason: String| LabError::FaultRefused {
            fault: fault.to_string(),
            reason,
        };
        fault.check(&self.spec.machine_names()).map_err(&refuse)?;
        let vm = |e: VmError| LabError::Vm(Box::new(e));
        let machine = self.machine(fault.machines()[0])?;
        let running = machine.is_running();
        let frozen = running && machine.qmp_status().await.ok().as_deref() == Some("paused");
        let name = machine.name();
        let needs_running = !matches!(
            fault,
            Fault::Start { .. }
                | Fault::Partition { .. }
                | Fault::Heal { .. }
                | Fault::Isolate { .. }
                | Fault::Rejoin { .. }
        );
        if needs_running && !running {
            return Err(refuse(format!(
                "{name} is off (crashed or shut down): power it on first (`labtest start {name}`)"
            )));
        }
        let needs_thawed = matches!(
            fault,
            Fault::Freeze { .. }
                | Fault::Shutdown { .. }
                | Fault::Reboot { .. }
                | Fault::StopUnit { .. }
                | Fault::StartUnit { .. }
        );
        if needs_thawed && frozen {
            return Err(refuse(format!(
                "{name} is frozen: thaw it first (`labtest thaw {name}`)"
            )));
        }
        let cut = |a: &str, b: &str| {
            self.partitions()
                .iter()
                .any(|(x, y)| (x == a && y == b) || (x == b && y == a))
        };
        Ok(match fault {
            Fault::Crash { .. } => {
                machine.crash().await.map_err(vm)?;
                format!("{name}: crashed (power loss)")
            }
            Fault::Freeze { .. } => {
                machine.freeze().await.map_err(vm)?;
                format!("{name}: frozen")
            }
            Fault::Thaw { .. } => {
                if !frozen {
                    return Err(refuse(format!("{name} is not frozen: nothing to thaw")));
                }
                machine.thaw().await.map_err(vm)?;
                format!("{name}: thawed")
            }
            Fault::Shutdown { timeout, .. } => {
                machine.shutdown(*timeout).await.map_err(vm)?;
                format!("{name}: shut down")
            }
            Fault::Start { timeout, .. } => {
                if running {
                    return Err(refuse(format!("{name} is already running")));
                }
                let boot = machine
                    .start_by(Instant::now() + *timeout)
                    .await
                    .map_err(vm)?;
                format!(
                    "{name}: started, its guest answered after {:.1}s (boot id {})",
                    boot.took.as_secs_f64(),
                    boot.boot_id
                )
            }
            Fault::Reboot { timeout, .. } => {
                let boot = machine.reboot(*timeout).await.map_err(vm)?;
                format!(
                    "{name}: rebooted in {:.1}s (boot id {})",
                    boot.took.as_secs_f64(),
                    boot.boot_id
                )
            }
            Fault::LinkDown { .. } => {
                machine.set_link(false).await.map_err(vm)?;
                format!("{name}: lab link down")
            }
            Fault::LinkUp { .. } => {
                machine.set_link(true).await.map_err(vm)?;
                format!("{name}: lab link up")
            }
            Fault::Partition { a, b } => {
                if cut(a, b) {
                    return Err(refuse(format!("{a} and {b} are already cut off")));
                }
                self.partition(a, b)?;
                format!("{a} and {b} are cut off from each other")
            }
            Fault::Heal { a, b } => {
                if !cut(a, b) {
                    return Err(refuse(format!(
                        "{a} and {b} are not partitioned: nothing to heal"
                    )));
                }
                self.heal(a, b)?;
                format!("{a} and {b} can talk again")
            }
            Fault::Isolate { .. } => {
                self.isolate(name)?;
                format!("{name}: isolated from every other machine")
            }
            Fault::Rejoin { .. } => {
                if !self
                    .partitions()
                    .iter()
                    .any(|(a, b)| a == name || b == name)
                {
                    return Err(refuse(format!(
                        "{name} is not cut off from any machine: nothing to rejoin"
                    )));
                }
                self.rejoin(name)?;
                format!("{name}: back on the lab network")
            }
            Fault::StopUnit { unit, .. } | Fault::StartUnit { unit, .. } => {
                let verb = if matches!(fault, Fault::StopUnit { .. }) {
                    "stop"
                } else {
                    "start"
                };
                let command = format!(
                    "systemctl {verb} {}",
                    crate::vm::channel::ansi_c_quote(unit)
                );
                let out = machine
                    .exec(&command, Duration::from_secs(60))
                    .await
                    .map_err(vm)?;
                if out.status != 0 {
                    return Err(refuse(format!(
                        "expected `{command}` on {name} to exit 0, saw {}: {}",
                        out.status,
                        out.stderr_str().trim()
                    )));
                }
                format!("{name}: {verb}ped {unit}")
            }
        })
    }

    /// Saves the whole lab as snapshot `name` in `store`: every machine paused together, each
    /// one's state and disk saved, then all continued together, so the lab goes on as it was.
    ///
    /// # Errors
    /// [`LabError::Vm`] for the machine that could not be saved (a mounted 9p share, a failed
    /// migration), [`LabError::Snapshot`] for the store; nothing half-written stays usable.
    pub async fn save_snapshot(
        &self,
        store: &SnapshotStore,
        name: &SnapshotName,
        key: &SnapshotKey,
        events: &Events,
    ) -> Result<Snapshot, LabError> {
        let started = Instant::now();
        // A sampling command caught half-way would be saved with the guest, and its reply come
        // back into a restored lab's fresh channel.
        let _quiet = match &self.sampler {
            Some(sampler) => Some(sampler.hold_guests().await),
            None => None,
        };
        let part = store.begin(&self.spec.name, name)?;
        let pauses = self.machines.iter().map(|m| m.pause());
        let paused = futures::future::join_all(pauses).await;
        let saved = match paused.into_iter().collect::<Result<Vec<()>, VmError>>() {
            Ok(_) => {
                let saves = self.machines.iter().map(|m| {
                    let into = crate::vm::state::SavedState::in_dir(&part, m.name());
                    async move { m.save_state(&into, SAVE_TIMEOUT).await }
                });
                futures::future::join_all(saves)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<()>, VmError>>()
            }
            Err(e) => Err(e),
        };
        let unpauses = self.machines.iter().map(|m| m.unpause());
        let unpaused = futures::future::join_all(unpauses).await;
        if let Err(e) = saved {
            let _ = std::fs::remove_dir_all(&part);
            return Err(e.into());
        }
        unpaused.into_iter().collect::<Result<Vec<()>, VmError>>()?;
        let bytes = self
            .machines
            .iter()
            .map(|m| {
                let saved = crate::vm::state::SavedState::in_dir(&part, m.name());
                crate::vm::state::file_size(&saved.state) + crate::vm::state::file_size(&saved.disk)
            })
            .sum();
        let meta = SnapshotMeta {
            format: crate::snapshot::FORMAT.into(),
            lab: self.spec.name.clone(),
            name: name.clone(),
            key: key.hash.clone(),
            inputs: key.inputs.clone(),
            machines: self.spec.machine_names(),
            created: crate::snapshot::now_secs(),
            save_secs: started.elapsed().as_secs_f64(),
            bytes,
        };
        let snapshot = store.commit(&part, &meta)?;
        events.emit(EventKind::SnapshotSaved {
            snapshot: name.to_string(),
            took: started.elapsed(),
            bytes,
        });
        Ok(snapshot)
    }
}

/// How long one machine's state may take to write (measured: 0.36 s for 137 MiB).
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);

impl Lab {
    /// Tears the lab down now, as dropping it does, but says what went wrong: every QEMU
    /// killed and reaped, each console log kept in the evidence dir, the state dir removed
    /// (unless kept).
    ///
    /// # Errors
    /// [`LabError::ConsoleLog`] for the first console log that could not be kept (the others
    /// still are), [`LabError::RemoveStateDir`].
    pub fn shut_down(mut self) -> Result<(), LabError> {
        self.tear_down()
    }

    /// What [`Lab::shut_down`] and drop do; a second call finds nothing left to do.
    fn tear_down(&mut self) -> Result<(), LabError> {
        // No sample of machines on their way down.
        self.sampler.take();
        for machine in &self.machines {
            machine.kill();
        }
        let mut logs = Ok(());
        if let Some(dir) = self.evidence_dir.take() {
            for machine in &self.machines {
                let target = dir.join("machines").join(machine.name());
                let to = target.join("console.log");
                let copied = std::fs::create_dir_all(&target)
                    .and_then(|()| std::fs::copy(machine.console_log(), &to));
                match copied {
                    Ok(_) => self.events.emit(EventKind::Artifact {
                        path: to,
                        what: format!("{} serial console", machine.name()),
                    }),
                    Err(source) if logs.is_ok() => {
                        logs = Err(LabError::ConsoleLog {
                            lab: self.spec.name.clone(),
                            machine: machine.name().to_string(),
                            from: machine.console_log(),
                            to,
                            source,
                        })
                    }
                    Err(_) => {}
                }
            }
        }
        let removed = match self.state.take() {
            Some(state) if self.keep => {
                let kept = state.keep();
                tracing::info!("lab state kept in {}", kept.display());
                Ok(())
            }
            Some(state) => {
                let path = state.path().to_path_buf();
                state.close().map_err(|source| LabError::RemoveStateDir {
                    lab: self.spec.name.clone(),
                    path,
                    source,
                })
            }
            None => Ok(()),
        };
        logs.and(removed)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Best effort: whoever wants the errors calls shut_down.
        let _ = self.tear_down();
    }
}

/// A running lab's state dir (disk overlays, hub sockets, console logs until teardown) lives
/// in the temp dir under this prefix, with an [`OWNER_FILE`] naming the process that owns it.
const STATE_DIR_PREFIX: &str = "labtest-";
const OWNER_FILE: &str = "owner";

/// `<pid> <start time>`: the start time (field 22 of /proc/PID/stat) tells a live owner from a
/// later process that got the same pid.
fn owner_stamp(pid: u32) -> String {
    format!("{pid} {}", process_start(pid).unwrap_or_default())
}

/// The start time of a live process; `None` for one that is gone or a zombie (killed, not yet
/// reaped: a SIGKILLed server whose parent is gone may stay one for as long as nothing reaps).
fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if matches!(state, "Z" | "X") {
        return None;
    }
    fields.nth(18).map(str::to_string)
}

/// Removes the state dirs of labs whose owning process is gone (killed by SIGKILL, so its
/// teardown never ran; its QEMUs died with it). Returns what it removed. Dirs without an owner
/// file, or whose owner lives, are left alone.
pub fn remove_orphaned_state_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(STATE_DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let Ok(stamp) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let owner_alive = stamp
            .split_once(' ')
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
            .is_some_and(|pid| owner_stamp(pid) == stamp);
        if !owner_alive && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_state_dirs_of_dead_owners_are_removed() {
        let dead = tempfile::Builder::new()
            .prefix(STATE_DIR_PREFIX)
            .tempdir()
            .expect("temp dir");
        let live = tempfile::Builder::new()
            .prefix(STATE_DIR_PREFIX)
            .tempdir()
            .expect("temp dir");
        let unowned = tempfile::Builder::new()
            .prefix(STATE_DIR_PREFIX)
            .tempdir()
            .expect("temp dir");
        // Our pid with another start time: the pid was reused, its owner is gone.
        std::fs::write(
            dead.path().join(OWNER_FILE),
            format!("{} 1", std::process::id()),
        )
        .expect("write");
        std::fs::write(
            live.path().join(OWNER_FILE),
            owner_stamp(std::process::id()),
        )
        .expect("write");
        // A killed owner nobody has reaped yet is a zombie: gone all the same.
        let zombie = tempfile::Builder::new()
            .prefix(STATE_DIR_PREFIX)
            .tempdir()
            .expect("temp dir");
        let mut child = std::process::Command::new("sleep")
            .arg("0.1")
            .spawn()
            .expect("sleep");
        std::fs::write(zombie.path().join(OWNER_FILE), owner_stamp(child.id())).expect("write");
        std::thread::sleep(Duration::from_millis(500));
        let removed = remove_orphaned_state_dirs();
        let _ = child.wait();
        assert!(removed.contains(&dead.path().to_path_buf()), "{removed:?}");
        assert!(!dead.path().exists());
        assert!(!zombie.path().exists(), "a zombie owner counted as alive");
        assert!(live.path().exists());
        assert!(unowned.path().exists());
    }

    use super::*;

    const GOOD: &str = r#"
name = "t"
[network]
cidr = "10.77.0.0/24"
[[machine]]
name = "a"
roles = ["master"]
address = "10.77.0.10"
[[machine]]
name = "b"
roles = ["node"]
address = "10.77.0.11"
[kubernetes]
master = "a"
apiserver_port = 6443
admin_kubeconfig = "/etc/k.conf"
kubelet_unit = "kubelet.service"
workload_image = "labtest/workload:1"
"#;

    #[test]
    fn a_good_spec_parses() {
        let spec = LabSpec::parse(GOOD, Path::new("lab.toml")).unwrap();
        assert_eq!(spec.vm_attr, "vm");
        assert_eq!(spec.machine_names(), ["a", "b"]);
        assert_eq!(spec.kubernetes.unwrap().apiserver_port, 6443);
    }

    #[test]
    fn the_repos_own_specs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let spec = LabSpec::load(&root).unwrap();
        assert_eq!(
            spec.machine_names(),
            ["grey-area", "congenital-optimist", "limiting-factor"]
        );
    }

    /// Each rule of `validate`, broken once: the spec is refused with a message naming the field.
    #[test]
    fn every_spec_rule_refuses_what_breaks_it() {
        let cases: &[(&str, &str, &str)] = &[
            ("name = \"t\"", "name = \"My Lab\"", "name = \"My Lab\": expected 1-63 of a-z"),
            ("cidr = \"10.77.0.0/24\"", "cidr = \"10.77.0.0\"", "[network] cidr = \"10.77.0.0\": expected an IPv4 network"),
            ("cidr = \"10.77.0.0/24\"", "cidr = \"10.77.0.300/24\"", "\"10.77.0.300\" is not an IPv4 address"),
            ("cidr = \"10.77.0.0/24\"", "cidr = \"10.77.0.0/33\"", "prefix \"33\": expected 0-32"),
            ("cidr = \"10.77.0.0/24\"", "cidr = \"10.77.0.0/31\"", "fewer than two hosts"),
            ("cidr = \"10.77.0.0/24\"", "cidr = \"10.77.0.1/24\"", "host bits set for /24: expected the network address 10.77.0.0"),
            ("name = \"a\"", "name = \"A_1\"", "machine \"A_1\": name: expected a host name"),
            ("name = \"b\"", "name = \"-b\"", "machine \"-b\": name: expected a host name"),
            ("name = \"b\"", "name = \"a\"", "machine \"a\" appears twice"),
            ("roles = [\"node\"]", "roles = [\"worker\"]", "roles: \"worker\" is not a role (expected master or node)"),
            ("roles = [\"node\"]", "roles = [\"node\", \"node\"]", "roles: \"node\" appears twice"),
            ("address = \"10.77.0.11\"", "address = \"10.77.0\"", "address \"10.77.0\" is not an IPv4 address"),
            ("address = \"10.77.0.11\"", "address = \"10.78.0.11\"", "address 10.78.0.11 is outside [network] cidr 10.77.0.0/24"),
            ("address = \"10.77.0.11\"", "address = \"10.77.0.0\"", "is the network address of 10.77.0.0/24"),
            ("address = \"10.77.0.11\"", "address = \"10.77.0.255\"", "is the broadcast address of 10.77.0.0/24"),
            ("address = \"10.77.0.11\"", "address = \"10.77.0.10\"", "address 10.77.0.10 is machine \"a\"'s already"),
            ("master = \"a\"", "master = \"b\"", "master = \"b\": expected a machine with role \"master\""),
            ("roles = [\"node\"]", "roles = []", "expected at least one machine with role \"node\""),
            ("apiserver_port = 6443", "apiserver_port = 0", "apiserver_port = 0: expected the apiserver's port"),
            ("admin_kubeconfig = \"/etc/k.conf\"", "admin_kubeconfig = \"k.conf\"", "expected an absolute path on the master"),
            ("kubelet_unit = \"kubelet.service\"", "kubelet_unit = \"kubelet\"", "kubelet_unit = \"kubelet\": expected a systemd service name"),
            ("workload_image = \"labtest/workload:1\"", "workload_image = \" \"", "workload_image: expected an image name"),
            ("kubelet_unit = \"kubelet.service\"", "kubelet_unit = \"kubelet.service\"\njoin_command = \"join\"", "join_token_command and join_command go together"),
            ("kubelet_unit = \"kubelet.service\"", "kubelet_unit = \"kubelet.service\"\njoin_command = \" \"\njoin_token_command = \"cat t\"", "join_command: expected a shell command"),
            ("vm_attr = \"vm\"", "vm_attr = \"\"", "vm_attr: expected a value"),
        ];
        let spec = format!("vm_attr = \"vm\"\n{GOOD}");
        LabSpec::parse(&spec, Path::new("lab.toml")).unwrap();
        for (from, to, expected) in cases {
            assert!(
                spec.contains(from),
                "the case {from:?} matches nothing in the spec"
            );
            let broken = spec.replacen(from, to, 1);
            let err = LabSpec::parse(&broken, Path::new("lab.toml"))
                .expect_err(&format!("{to:?} was accepted"))
                .to_string();
            assert!(
                err.contains(expected),
                "{to:?}: expected {expected:?} in: {err}"
            );
        }
        let generations =
            format!("{spec}\n[[generation]]\nname = \"g\"\nmachine = \"b\"\nattr = \"x\"\n");
        LabSpec::parse(&generations, Path::new("lab.toml")).unwrap();
        for (from, to, expected) in [
            (
                "name = \"g\"",
                "name = \"my gen\"",
                "expected a name without spaces",
            ),
            (
                "machine = \"b\"\nattr",
                "machine = \"zz\"\nattr",
                "machine \"zz\" is not one of the machines",
            ),
            ("attr = \"x\"", "attr = \"\"", "attr: expected a value"),
        ] {
            let err = LabSpec::parse(&generations.replacen(from, to, 1), Path::new("lab.toml"))
                .expect_err(to)
                .to_string();
            assert!(
                err.contains(expected),
                "{to:?}: expected {expected:?} in: {err}"
            );
        }
        let twice =
            format!("{generations}[[generation]]\nname = \"g\"\nmachine = \"a\"\nattr = \"y\"\n");
        let err = LabSpec::parse(&twice, Path::new("lab.toml")).unwrap_err();
        assert!(
            err.to_string()
                .contains("[[generation]] \"g\" appears twice"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let err = LabSpec::parse(
            &GOOD.replace("apiserver_port = 6443", "apiserver_port = \"x\""),
            Path::new("lab.toml"),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 15"), "{text}");
        assert!(text.contains("apiserver_port"), "{text}");

        let err = LabSpec::parse(
            &GOOD.replace("master = \"a\"", "master = \"zz\""),
            Path::new("lab.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("master = \"zz\" is not one of the machines"),
            "{err}"
        );

        let err = LabSpec::parse(&GOOD.replace("cidr", "cdir"), Path::new("lab.toml")).unwrap_err();
        assert!(err.to_string().contains("cdir"), "{err}");
    }
}
