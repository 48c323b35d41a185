//! `lab.toml`: the spec, read and checked before anything builds or boots.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::LabError;

/// `lab.toml`: what the harness must know about a lab that its run scripts do not say.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabSpec {
    /// The lab's name: it names state dirs and snapshots, so a host name's characters only.
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
    /// The lab's private network.
    pub network: NetworkSpec,
    /// The machines, as `[[machine]]` tables.
    #[serde(rename = "machine")]
    pub machines: Vec<MachineSpec>,
    /// Where the apiserver is and how nodes join; absent for a lab without Kubernetes.
    pub kubernetes: Option<KubernetesSpec>,
    /// Named system generations `labtest rebuild --generation` can switch to (`[[generation]]`).
    #[serde(default, rename = "generation")]
    pub generations: Vec<GenerationSpec>,
    /// Every machine runs an OpenSSH server (`labtest ssh`); absent: none does.
    pub ssh: Option<SshSpec>,
}

fn default_vm_attr() -> String {
    "vm".into()
}

/// `[network]`: the lab's private L2 network.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// `a.b.c.d/len`; every machine's address lies in it.
    pub cidr: String,
}

/// `[[machine]]`: one machine of the lab.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    /// Its host name, also its Kubernetes node name and its run script's (`run-<name>-vm`).
    pub name: String,
    /// `master` (runs the control plane), `node` (runs a kubelet), or both.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Its address on the lab network.
    pub address: String,
}

/// `[kubernetes]`: where the cluster's apiserver is and how its nodes join.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSpec {
    /// The machine that runs the control plane.
    pub master: String,
    /// The apiserver's port on the master, forwarded to a host port.
    pub apiserver_port: u16,
    /// A name in the apiserver's certificate, checked instead of the forwarded address.
    pub tls_server_name: Option<String>,
    /// The admin kubeconfig's path on the master, copied out for the harness's client.
    pub admin_kubeconfig: String,
    /// Run on the master; its stdout is the join token. Absent: nodes join by themselves.
    pub join_token_command: Option<String>,
    /// Run on each node with the token on stdin.
    pub join_command: Option<String>,
    /// The kubelet's systemd unit on every machine (its journal is failure evidence).
    pub kubelet_unit: String,
    /// The container image the scenarios' pods run.
    pub workload_image: String,
}

/// `[ssh]`: every machine of the lab runs sshd, reached through a host port forward on
/// 127.0.0.1 with a key the harness makes for the lab.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SshSpec {
    /// sshd's port in the guest, forwarded to a free host port on every machine.
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Whom `labtest ssh` logs in as; the lab key is installed for this user.
    #[serde(default = "default_ssh_user")]
    pub user: String,
}

fn default_ssh_port() -> u16 {
    22
}

fn default_ssh_user() -> String {
    "root".into()
}

/// `[[generation]]`: a named system for one machine, to switch to with `labtest rebuild`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    /// The name `--generation` takes.
    pub name: String,
    /// The machine it is for.
    pub machine: String,
    /// The flake attribute that builds it.
    pub attr: String,
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

    /// Parses a spec's text; `path` names it in errors.
    ///
    /// # Errors
    /// [`LabError::BadSpec`] naming the line and field when it does not parse or contradicts
    /// itself.
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

    /// Every machine's name, in the spec's order.
    pub fn machine_names(&self) -> Vec<String> {
        self.machines.iter().map(|m| m.name.clone()).collect()
    }
}

/// The roles a machine may have: `master` runs the control plane, `node` a kubelet.
const ROLES: [&str; 2] = ["master", "node"];

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
    if let Some(ssh) = &spec.ssh {
        if ssh.port == 0 {
            return Err("[ssh] port = 0: expected sshd's port in the guest, 1-65535".into());
        }
        // The name goes into a guest shell command and the home directory lookup.
        let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if ssh.user.is_empty() || !ssh.user.chars().all(plain) || ssh.user.starts_with('-') {
            return Err(format!(
                "[ssh] user = {:?}: expected a user name (a-z, 0-9, '_', '-')",
                ssh.user
            ));
        }
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

#[cfg(test)]
mod tests {
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
            ("[ssh]\nport = 22", "[ssh]\nport = 0", "[ssh] port = 0: expected sshd's port"),
            ("user = \"root\"", "user = \"root; rm\"", "[ssh] user = \"root; rm\": expected a user name"),
        ];
        let spec = format!("vm_attr = \"vm\"\n{GOOD}\n[ssh]\nport = 22\nuser = \"root\"\n");
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
