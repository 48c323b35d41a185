//! Static checks of the NixOS lab's files that can run without nixpkgs:
//! (a) every `.nix` file in the repository parses (`nix-instantiate --parse`);
//! (b) the flake's outputs carry the names the harness and `lab.toml` rely on, evaluated with
//!     nixpkgs replaced by `tests/nix-stub`, a test double that only shapes `lib.nixosSystem`.
//!
//! Neither check says the NixOS configurations evaluate or boot: that takes the real nixpkgs
//! (the `nixos` nextest profile). A missing Nix is a failure, not a skip: the project's set-up
//! installs Debian's nix-bin, so its absence means the machine is not set up.

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MACHINES: [&str; 3] = ["grey-area", "congenital-optimist", "limiting-factor"];

/// Directories that hold build products or other tools' state, never lab sources.
const SKIP_DIRS: [&str; 4] = ["target", ".git", "node_modules", ".direnv"];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Flakes and an empty substituter list, as the notes on Debian's Nix 2.8 prescribe: no
/// download is ever attempted. An empty build-users-group lets root evaluate without a daemon.
const NIX_CONFIG: &str =
    "experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group =\n";

fn nix_command(tool: &Path) -> Command {
    let mut cmd = Command::new(tool);
    cmd.env("NIX_CONFIG", NIX_CONFIG);
    cmd
}

fn find_tool(name: &str) -> PathBuf {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found on PATH. Expected Nix to be installed (Debian: \
                 `apt-get install -y --no-install-recommends nix-bin`, which the project's \
                 set-up script does); seen PATH={}",
                path.to_string_lossy()
            )
        })
}

fn run(mut cmd: Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not run {what}: {e} (command: {cmd:?})"))
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry =
            entry.unwrap_or_else(|e| panic!("cannot read an entry of {}: {e}", dir.display()));
        let path = entry.path();
        let file_type = entry
            .file_type()
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
        // Symlinks are skipped: `result` links of nix builds point into /nix/store.
        if file_type.is_dir() {
            let name = entry.file_name();
            if !SKIP_DIRS.iter().any(|skip| name == *skip) {
                nix_files(&path, out);
            }
        } else if file_type.is_file() && path.extension().is_some_and(|ext| ext == "nix") {
            out.push(path);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let nix_instantiate = find_tool("nix-instantiate");
    let root = repo_root();
    let mut files = Vec::new();
    nix_files(&root, &mut files);
    files.sort();

    for expected in [
        "flake.nix",
        "vm-configs/common.nix",
        "vm-configs/vm.nix",
        "vm-configs/guest.nix",
    ] {
        assert!(
            files.contains(&root.join(expected)),
            "expected the lab file {expected} under {}, not found",
            root.display()
        );
    }

    let mut failures = Vec::new();
    for file in &files {
        let mut cmd = nix_command(&nix_instantiate);
        cmd.arg("--parse").arg(file);
        let out = run(cmd, "nix-instantiate --parse");
        if !out.status.success() {
            failures.push(format!(
                "{}: {}",
                file.strip_prefix(&root).unwrap_or(file).display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} .nix files do not parse:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    let entries =
        fs::read_dir(from).unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display()));
    for entry in entries {
        let entry =
            entry.unwrap_or_else(|e| panic!("cannot read an entry of {}: {e}", from.display()));
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap_or_else(|e| {
                panic!("cannot copy {} to {}: {e}", src.display(), dst.display())
            });
        }
    }
}

/// `nix eval --json` of one flake attribute with nixpkgs overridden by the test double.
fn eval_flake(nix: &Path, flake: &Path, cache: &Path, attr: &str, apply: &str) -> String {
    let stub = repo_root().join("tests/nix-stub");
    let mut cmd = nix_command(nix);
    cmd.env("XDG_CACHE_HOME", cache)
        .args([
            "eval",
            "--json",
            "--no-write-lock-file",
            "--override-input",
            "nixpkgs",
        ])
        .arg(format!("path:{}", stub.display()))
        .arg(format!("path:{}#{attr}", flake.display()))
        .args(["--apply", apply]);
    let out = run(cmd, "nix eval");
    assert!(
        out.status.success(),
        "nix eval of flake.nix#{attr} (nixpkgs = test double {}) failed:\n{}",
        stub.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Names from a JSON list of plain strings (attribute names: no quotes or commas inside).
fn json_names(json: &str) -> BTreeSet<String> {
    json.trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn flake_outputs_have_the_names_the_harness_uses() {
    let nix = find_tool("nix");
    let root = repo_root();
    // A flake inside a git repository only sees files git tracks; a copy outside it sees what is
    // on disk, so the check does not depend on what has been committed yet.
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
    let flake = work.path().join("lab");
    fs::create_dir_all(&flake).unwrap_or_else(|e| panic!("cannot create {}: {e}", flake.display()));
    fs::copy(root.join("flake.nix"), flake.join("flake.nix"))
        .unwrap_or_else(|e| panic!("cannot copy {}/flake.nix: {e}", root.display()));
    copy_tree(&root.join("vm-configs"), &flake.join("vm-configs"));
    let cache = work.path().join("cache");

    let configs = json_names(&eval_flake(
        &nix,
        &flake,
        &cache,
        "nixosConfigurations",
        "builtins.attrNames",
    ));
    let expected: BTreeSet<String> = MACHINES.iter().map(|m| m.to_string()).collect();
    assert_eq!(configs, expected, "flake.nix: nixosConfigurations names");

    let missing = eval_flake(
        &nix,
        &flake,
        &cache,
        "nixosConfigurations",
        "cs: builtins.concatLists (builtins.attrValues (builtins.mapAttrs (n: c: c.missingModules) cs))",
    );
    assert_eq!(
        missing, "[]",
        "flake.nix passes module files to nixosSystem that do not exist"
    );

    let packages = json_names(&eval_flake(
        &nix,
        &flake,
        &cache,
        "packages.x86_64-linux",
        "builtins.attrNames",
    ));
    let mut expected: BTreeSet<String> = MACHINES.iter().map(|m| format!("{m}-vm")).collect();
    expected.extend(
        [
            "vm",
            "limiting-factor-node-label",
            "limiting-factor-broken-kubelet",
        ]
        .map(String::from),
    );
    assert_eq!(packages, expected, "flake.nix: packages.x86_64-linux names");

    let vm_paths = eval_flake(
        &nix,
        &flake,
        &cache,
        "packages.x86_64-linux.vm",
        "p: p.pathCount",
    );
    assert_eq!(
        vm_paths, "3",
        "flake.nix: packages.x86_64-linux.vm should join the three run-<machine>-vm outputs"
    );

    // Every attribute lab.toml names must be one the flake has.
    let spec_path = root.join("lab.toml");
    let spec = read(&spec_path);
    for line in spec.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        let attr = match key.trim() {
            "vm_attr" => value,
            "attr" => value
                .strip_prefix("packages.x86_64-linux.")
                .unwrap_or_else(|| {
                    panic!(
                        "{}: generation attr {value:?} is not under packages.x86_64-linux",
                        spec_path.display()
                    )
                }),
            _ => continue,
        };
        assert!(
            packages.contains(attr),
            "{} names flake attribute {attr:?}, which flake.nix does not define (it has {packages:?})",
            spec_path.display()
        );
    }
}

/// vm-configs/tuning.json, the settings both labs share, and where each key lands in the NixOS
/// lab: the line of vm-configs/vm.nix that assigns it to the nixpkgs option carrying it. A key
/// added to the file without a row here fails the test, so no setting reaches one lab only.
const TUNING_IN_NIXOS: [(&str, &str); 6] = [
    ("kernelParams", "boot.kernelParams = tuning.kernelParams;"),
    (
        "apiserverFlags",
        "services.kubernetes.apiserver.extraOpts = lib.mkIf isMaster (lib.concatStringsSep \" \" tuning.apiserverFlags);",
    ),
    (
        "controllerManagerFlags",
        "lib.concatStringsSep \" \" tuning.controllerManagerFlags",
    ),
    (
        "leaderElect",
        "services.kubernetes.controllerManager.leaderElect = tuning.leaderElect; services.kubernetes.scheduler.leaderElect = tuning.leaderElect;",
    ),
    (
        "controlPlaneEnvironment",
        "environment = tuning.controlPlaneEnvironment;",
    ),
    (
        "timerSlackNSec",
        "(_: enabled: lib.mkIf enabled { serviceConfig.TimerSlackNSec = tuning.timerSlackNSec; })",
    ),
];

/// The Go daemons of Kubernetes on every machine and, on the master, besides them: the units
/// that get tuning.json's timer slack in both labs (the NixOS lab adds the daemons only it runs).
const GO_DAEMONS: [&str; 2] = ["containerd", "kubelet"];

/// The units of the fixture master that get the control-plane environment; vm.nix names the
/// same four (checked below).
const CONTROL_PLANE_UNITS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

fn read_tuning() -> serde_json::Map<String, serde_json::Value> {
    let path = repo_root().join("vm-configs/tuning.json");
    match serde_json::from_str(&read(&path)) {
        Ok(serde_json::Value::Object(map)) => map,
        other => panic!("{}: expected a JSON object, got {other:?}", path.display()),
    }
}

fn strings(value: &serde_json::Value, key: &str) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("tuning.json: {key} should be a list of strings, is {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("tuning.json: {key} holds a non-string {v}"))
                .to_owned()
        })
        .collect()
}

/// `nix build` of fixture-lab outputs (after its prepare step), as the harness builds them.
fn build_fixture(attrs: &[&str]) -> Vec<PathBuf> {
    let lab = repo_root().join("fixtures/lab");
    let prepare = run(
        Command::new(lab.join("prepare.sh")),
        "fixtures/lab/prepare.sh",
    );
    assert!(
        prepare.status.success(),
        "fixtures/lab/prepare.sh failed (is ci/setup.sh done?):\n{}",
        String::from_utf8_lossy(&prepare.stderr).trim()
    );
    let mut cmd = nix_command(&find_tool("nix"));
    // The fixture's builders use the host's tools (its lab.toml: sandbox = false).
    cmd.env("NIX_CONFIG", format!("{NIX_CONFIG}sandbox = false\n"))
        .args(["build", "--no-link", "--json"])
        .args(attrs.iter().map(|a| format!("path:{}#{a}", lab.display())));
    let out = run(cmd, "nix build of the fixture lab");
    assert!(
        out.status.success(),
        "nix build of fixtures/lab#{attrs:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // Nix 2.8 (Debian) has no --print-out-paths: `--json` lists each attribute's outputs.
    let built: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "nix build --json printed no JSON list ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    built
        .iter()
        .map(|b| match b["outputs"]["out"].as_str() {
            Some(out) => PathBuf::from(out),
            None => panic!("nix build --json: no outputs.out in {b}"),
        })
        .collect()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn every_tuned_setting_reaches_both_labs() {
    let tuning = read_tuning();
    let keys: BTreeSet<&str> = tuning
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "why")
        .collect();
    let known: BTreeSet<&str> = TUNING_IN_NIXOS.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys, known,
        "vm-configs/tuning.json's keys and the ones this test maps to both labs differ"
    );
    let why = tuning.get("why").and_then(|w| w.as_object());
    for key in &keys {
        assert!(
            why.is_some_and(|w| w.get(*key).is_some_and(|v| v.is_string())),
            "tuning.json: {key} has no \"why\" entry saying what it is for"
        );
    }

    // The NixOS lab: vm.nix reads the file and hands each key to its option.
    let vm_nix = read(&repo_root().join("vm-configs/vm.nix"));
    let flat: String = vm_nix.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("tuning = builtins.fromJSON (builtins.readFile ./tuning.json);"),
        "vm-configs/vm.nix does not read ./tuning.json"
    );
    for (key, assignment) in TUNING_IN_NIXOS {
        assert!(
            flat.contains(assignment),
            "vm-configs/vm.nix does not give tuning.{key} to the NixOS lab (expected `{assignment}`)"
        );
    }
    let nixos_enables = [
        "containerd = config.virtualisation.containerd.enable;",
        "kubelet = k8s.kubelet.enable;",
        "etcd = config.services.etcd.enable;",
        "kube-apiserver = k8s.apiserver.enable;",
        "kube-controller-manager = k8s.controllerManager.enable;",
        "kube-scheduler = k8s.scheduler.enable;",
    ];
    for enable in nixos_enables {
        assert!(
            flat.contains(enable),
            "vm-configs/vm.nix should give the timer slack to every unit the fixture gives it (missing `{enable}`)"
        );
    }
    let units = CONTROL_PLANE_UNITS.map(|u| format!("\"{u}\"")).join(" ");
    assert!(
        flat.contains(&format!("lib.genAttrs [ {units} ]")),
        "vm-configs/vm.nix should set the control-plane environment on exactly {CONTROL_PLANE_UNITS:?}"
    );

    // The fixture lab: its run scripts and the master's units carry every value.
    let built = build_fixture(&["vm", "grey-area", "limiting-factor"]);
    let (vm, master, node) = (&built[0], &built[1], &built[2]);
    let slack = tuning["timerSlackNSec"]
        .as_str()
        .expect("tuning.json: timerSlackNSec should be a string");
    let slack_line = format!("TimerSlackNSec={slack}");
    for (toplevel, daemons) in [
        (master, [&GO_DAEMONS[..], &CONTROL_PLANE_UNITS[..]].concat()),
        (node, GO_DAEMONS.to_vec()),
    ] {
        for daemon in daemons {
            let drop_in = toplevel.join(format!("units/{daemon}.service.d/timer-slack.conf"));
            let text = read(&drop_in);
            assert!(
                text.lines().any(|l| l == slack_line),
                "{} should say {slack_line}:\n{text}",
                drop_in.display()
            );
        }
    }
    for machine in MACHINES {
        let script = read(&vm.join(format!("bin/run-{machine}-vm")));
        for param in strings(&tuning["kernelParams"], "kernelParams") {
            assert!(
                script.split_whitespace().any(|w| w == param),
                "the fixture's run-{machine}-vm lacks kernel parameter {param}:\n{script}"
            );
        }
    }
    let unit = |name: &str| read(&master.join(format!("units/{name}.service")));
    for (key, name) in [
        ("apiserverFlags", "kube-apiserver"),
        ("controllerManagerFlags", "kube-controller-manager"),
    ] {
        let text = unit(name);
        for flag in strings(&tuning[key], key) {
            assert!(
                text.split_whitespace().any(|w| w == flag),
                "the fixture's {name}.service lacks {flag} (tuning.json {key}):\n{text}"
            );
        }
    }
    let leader_elect = format!(
        "--leader-elect={}",
        tuning["leaderElect"]
            .as_bool()
            .expect("tuning.json: leaderElect should be true or false")
    );
    for name in ["kube-controller-manager", "kube-scheduler"] {
        let text = unit(name);
        assert!(
            text.split_whitespace().any(|w| w == leader_elect),
            "the fixture's {name}.service lacks {leader_elect} (tuning.json leaderElect):\n{text}"
        );
        // nixpkgs' controller-manager.nix and scheduler.nix pass neither: with them the two
        // re-opened watches of a kube-system ConfigMap 0.6 times a second at idle (the
        // apiserver's request counts), traffic the NixOS lab never makes.
        for flag in ["--authentication-kubeconfig", "--authorization-kubeconfig"] {
            assert!(
                !text.contains(flag),
                "the fixture's {name}.service passes {flag}, which the NixOS module does not:\n{text}"
            );
        }
    }
    let environment = tuning["controlPlaneEnvironment"]
        .as_object()
        .expect("tuning.json: controlPlaneEnvironment should be an object");
    for name in CONTROL_PLANE_UNITS {
        let text = unit(name);
        let line = text
            .lines()
            .find(|l| l.starts_with("Environment="))
            .unwrap_or_else(|| panic!("the fixture's {name}.service has no Environment=:\n{text}"));
        for (var, value) in environment {
            let value = value.as_str().expect("environment values are strings");
            assert!(
                line.split_whitespace()
                    .any(|w| w.trim_start_matches("Environment=") == format!("{var}={value}")),
                "the fixture's {name}.service lacks {var}={value}: {line}"
            );
        }
    }
}

/// A `.nix` file's code without its comments (`#` to the end of the line) and with whitespace
/// collapsed, so a check of an assignment cannot be satisfied by a comment quoting it. None of
/// the strings these checks look at contain a `#`.
fn nix_code(relative: &str) -> String {
    read(&repo_root().join(relative))
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A generation `labtest rebuild` imports must survive a power cycle of the NixOS guest:
/// qemu-vm.nix's default `writableStoreUseTmpfs = true` mounts the overlay's upper layer
/// (/nix/.rw-store) as a tmpfs, while the Nix database that registers the imported paths is on
/// the root disk. tests/lab_api.rs power-cycles the fixture lab through the same promise.
#[test]
fn the_nixos_guests_keep_imported_store_paths_on_their_disk() {
    let vm = nix_code("vm-configs/vm.nix");
    for line in [
        "useNixStoreImage = true;",
        "writableStore = true;",
        "writableStoreUseTmpfs = false;",
    ] {
        assert!(vm.contains(line), "vm-configs/vm.nix lacks `{line}`");
    }
    assert!(
        !vm.contains("writableStoreUseTmpfs = true"),
        "vm-configs/vm.nix puts the writable store on a tmpfs"
    );
}

/// The cluster NIC and the user-mode NIC are named by MAC address, never by the order QEMU
/// creates them in: nothing in the VM overlay may address eth0 or eth1.
#[test]
fn the_nixos_guests_name_their_nics_by_mac_address() {
    let vm = nix_code("vm-configs/vm.nix");
    for line in [
        "\"10-labtest-hub\" = { matchConfig.MACAddress = mac; linkConfig.Name = \"hub0\"; };",
        "\"10-labtest-user\" = { matchConfig.MACAddress = \"52:54:00:12:34:56\"; linkConfig.Name = \"user0\"; };",
        "labtest.clusterInterface = lib.mkVMOverride \"hub0\";",
        "networking.interfaces.user0.ipv4.addresses",
        "interface = config.labtest.clusterInterface;",
        "virtio-net-pci,netdev=lab,mac=${mac}",
    ] {
        assert!(vm.contains(line), "vm-configs/vm.nix lacks `{line}`");
    }
    for name in ["eth0", "eth1"] {
        assert!(
            !vm.contains(name),
            "vm-configs/vm.nix names a NIC by its order ({name})"
        );
    }
}

/// The Corefile's ports are read from the DNS addon's own Deployment; if a newer nixpkgs renames
/// the Deployment, the container or its port, the evaluation must fail rather than pass on the
/// fallbacks (addons/dns.nix: `coredns-deploy`, container `coredns`, port `dns`).
#[test]
fn the_coredns_ports_come_from_a_deployment_that_was_found() {
    let common = nix_code("vm-configs/common.nix");
    for line in [
        "corednsDeployment = k8s.addonManager.addons.coredns-deploy or null;",
        "corednsFound = lib.findFirst (c: (c.name or \"\") == \"coredns\") null",
        "corednsDnsPort = lib.findFirst (p: (p.name or \"\") == \"dns\") null",
        "assertion = !k8s.addons.dns.enable || (corednsFound != null && corednsDnsPort != null);",
    ] {
        assert!(
            common.contains(line),
            "vm-configs/common.nix lacks `{line}`"
        );
    }
}

/// broken-kubelet is built on top of node-label in both labs, so the scenario file's
/// node-label -> broken-kubelet -> rollback changes the kubelet only and keeps the label.
#[test]
fn broken_kubelet_is_built_on_top_of_node_label_in_both_labs() {
    let flake = nix_code("flake.nix");
    assert!(
        flake.contains(
            "broken-kubelet = [ ./vm-configs/generations/node-label.nix ./vm-configs/generations/broken-kubelet.nix ];"
        ),
        "flake.nix: broken-kubelet is not node-label plus the broken kubelet"
    );
    let fixture = nix_code("fixtures/lab/flake.nix");
    assert!(
        fixture.contains(
            "broken-kubelet = { suffix = \"-broken-kubelet\"; nodeLabels = \"labtest.io/generation=node-label\";"
        ),
        "fixtures/lab/flake.nix: broken-kubelet drops node-label's label"
    );
}

/// vm-configs/services.json, the traditional services both labs run beside Kubernetes: sshd on
/// every machine with the same settings (no password of any kind), nginx on grey-area serving
/// the same page on the same port. The NixOS lab reads the file in vm.nix and grey-area.nix; the
/// fixture lab renders it into each machine's generation. Both lab.toml say the same `[ssh]`.
#[test]
fn every_service_setting_reaches_both_labs() {
    let text = read(&repo_root().join("vm-configs/services.json"));
    let services: serde_json::Value =
        serde_json::from_str(&text).expect("vm-configs/services.json is JSON");
    let sshd = services["sshd"]
        .as_object()
        .expect("services.json: sshd should be an object of sshd_config settings");
    let nginx = &services["nginx"];
    let page = nginx["page"].as_str().expect("services.json: nginx.page");
    let port = nginx["port"].as_u64().expect("services.json: nginx.port");
    let nginx_machine = nginx["machine"]
        .as_str()
        .expect("services.json: nginx.machine");
    for key in ["sshd", "nginx"] {
        assert!(
            services["why"][key].is_string(),
            "services.json: {key} has no \"why\" entry saying what it is for"
        );
    }
    // Never a password, in either lab: the settings the harness's way in relies on.
    for (key, want) in [
        ("PasswordAuthentication", serde_json::json!(false)),
        ("KbdInteractiveAuthentication", serde_json::json!(false)),
    ] {
        assert_eq!(sshd.get(key), Some(&want), "services.json: sshd.{key}");
    }

    // The NixOS lab.
    let common = nix_code("vm-configs/common.nix");
    assert!(
        common.contains("services.openssh.enable = true;"),
        "vm-configs/common.nix no longer enables sshd on every machine"
    );
    let vm = nix_code("vm-configs/vm.nix");
    for code in [
        "services = builtins.fromJSON (builtins.readFile ./services.json);",
        "settings = services.sshd;",
        "authorizedKeysInHomedir = true;",
        "restrictNetwork = true;",
    ] {
        assert!(vm.contains(code), "vm-configs/vm.nix lacks `{code}`");
    }
    assert!(
        !vm.contains("forwardPorts"),
        "vm-configs/vm.nix: a fixed host port (virtualisation.forwardPorts) would make two labs \
         from one snapshot fight over it; the harness forwards sshd itself"
    );
    let grey_area = nix_code(&format!("vm-configs/{nginx_machine}.nix"));
    for code in [
        "services = builtins.fromJSON (builtins.readFile ./services.json);",
        "defaultHTTPListenPort = services.nginx.port;",
        "root = pkgs.writeTextDir \"index.html\" services.nginx.page;",
        "allowedTCPPorts = [ services.nginx.port ];",
    ] {
        assert!(
            grey_area.contains(code),
            "vm-configs/{nginx_machine}.nix lacks `{code}`"
        );
    }

    // Both lab.toml: every machine's sshd on the same guest port, as the same user.
    for lab in [".", "fixtures/lab"] {
        let spec = harness::lab::LabSpec::load(&repo_root().join(lab)).expect("lab.toml");
        let ssh = spec
            .ssh
            .unwrap_or_else(|| panic!("{lab}/lab.toml has no [ssh]"));
        assert_eq!(
            (ssh.port, ssh.user.as_str()),
            (22, "root"),
            "{lab}/lab.toml [ssh]"
        );
    }

    // The fixture lab: every machine's generation carries the settings; only grey-area nginx.
    let built = build_fixture(&MACHINES);
    for machine in MACHINES {
        // `nix build --json` does not keep the attributes' order: find each by its name.
        let top = built
            .iter()
            .find(|p| {
                p.to_string_lossy()
                    .ends_with(&format!("-labtest-system-{machine}"))
            })
            .unwrap_or_else(|| panic!("no toplevel of {machine} among {built:?}"));
        let config = read(&top.join("etc/ssh/sshd_config"));
        for (key, value) in sshd {
            let value = match value {
                serde_json::Value::Bool(b) => (if *b { "yes" } else { "no" }).to_string(),
                serde_json::Value::String(s) => s.clone(),
                other => panic!("services.json: sshd.{key} = {other}: expected a bool or string"),
            };
            let lines: Vec<&str> = config
                .lines()
                .filter(|l| l.split_whitespace().next() == Some(key.as_str()))
                .collect();
            assert_eq!(
                lines,
                [format!("{key} {value}")],
                "{machine}'s sshd_config: expected exactly one `{key} {value}`:\n{config}"
            );
        }
        let target = read(&top.join("units/labtest.target"));
        assert!(
            target.contains("sshd.service"),
            "{machine}'s labtest.target does not start sshd.service:\n{target}"
        );
        assert!(
            top.join("units/sshd.service").is_file(),
            "{machine}: no sshd.service"
        );
        let conf = top.join("etc/nginx/nginx.conf");
        if machine == nginx_machine {
            let conf = read(&conf);
            assert!(
                conf.contains(&format!("listen 0.0.0.0:{port} default_server;"))
                    && conf.contains("server_tokens off;"),
                "{machine}'s nginx.conf:\n{conf}"
            );
            assert_eq!(read(&top.join("share/www/index.html")), page);
            assert!(target.contains("nginx.service"), "{target}");
        } else {
            assert!(
                !conf.exists(),
                "{machine} runs nginx, only {nginx_machine} should"
            );
        }
    }
}
