//! The NixOS-facing harness code against the real NixOS contracts that can run here (the NixOS
//! lab itself cannot: no nixpkgs, no KVM). Each test names the nixpkgs code whose behaviour it
//! pins; fixtures/lab/README.md's contract table points here.
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::error::Chain;
use harness::events::Events;
use harness::kube::join::join_line;
use harness::kube::KubeAccess;
use harness::nix::generation::sh_quote;
use harness::vm::MachineBuilder;

/// What `cat /var/lib/cfssl/apitoken.secret` prints on a NixOS master, trimmed: 32 hex digits
/// (pki.nix: `head -c 16 /dev/urandom | od -An -t x | tr -d ' '`).
const NIXOS_TOKEN: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn node_join_double() -> std::path::PathBuf {
    support::repo_root().join("tests/contracts/nixos-kubernetes-node-join")
}

fn bash(line: &str, env: &[(&str, &std::path::Path)]) -> std::process::Output {
    Command::new("bash")
        .args(["-c", line])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("bash runs")
}

#[test]
fn the_harness_join_line_satisfies_nixos_kubernetes_node_join() {
    let dir = tempfile::tempdir().expect("temp dir");
    let installed = dir.path().join("apitoken.secret");
    let out = bash(
        &join_line(NIXOS_TOKEN, &node_join_double().to_string_lossy()),
        &[("JOIN_TOKEN_FILE", &installed)],
    );
    assert!(
        out.status.success(),
        "the join exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&installed).expect("the installed token"),
        format!("{NIXOS_TOKEN}\n")
    );
}

/// Why the newline matters: `read -r token` under `set -e` fails at end of input without one,
/// and the script dies with nothing on stdout or stderr - the failure every node saw before.
#[test]
fn nixos_kubernetes_node_join_refuses_a_token_without_a_newline_silently() {
    let dir = tempfile::tempdir().expect("temp dir");
    let installed = dir.path().join("apitoken.secret");
    let out = bash(
        &format!(
            "printf '%s' {NIXOS_TOKEN} | {}",
            node_join_double().display()
        ),
        &[("JOIN_TOKEN_FILE", &installed)],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert!(!installed.exists());
}

/// The fixture's join script in a toplevel of its own: its config.env points KUBELET_DIR into
/// the temp dir, and a `systemctl` double on PATH says every unit is active and logs its calls.
struct FixtureJoin {
    dir: tempfile::TempDir,
}

impl FixtureJoin {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["bin", "kubelet", "path"] {
            std::fs::create_dir(dir.path().join(sub)).expect("a temp subdir");
        }
        std::fs::copy(
            support::repo_root().join("fixtures/lab/guest/labtest-join"),
            dir.path().join("bin/labtest-join"),
        )
        .expect("copy labtest-join");
        std::fs::write(
            dir.path().join("config.env"),
            format!(
                "MACHINE=limiting-factor\nMASTER_ADDRESS=10.77.0.10\nAPISERVER_PORT=6443\nKUBELET_DIR={}\n",
                dir.path().join("kubelet").display()
            ),
        )
        .expect("config.env");
        let systemctl = dir.path().join("path/systemctl");
        std::fs::write(
            &systemctl,
            format!(
                "#!/bin/sh\necho \"$*\" >>{}\nexit 0\n",
                dir.path().join("systemctl.log").display()
            ),
        )
        .expect("the systemctl double");
        let made_executable = Command::new("chmod")
            .args(["+x"])
            .arg(&systemctl)
            .status()
            .expect("chmod runs");
        assert!(made_executable.success());
        Self { dir }
    }

    /// Pipes `input` (a printf format and its argument) into the join.
    fn run(&self, printf: &str) -> std::process::Output {
        let path = format!(
            "{}:{}",
            self.dir.path().join("path").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("bash")
            .args([
                "-c",
                &format!(
                    "{printf} | {}",
                    self.dir.path().join("bin/labtest-join").display()
                ),
            ])
            .env("PATH", path)
            .stdin(Stdio::null())
            .output()
            .expect("bash runs")
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }
}

/// The fixture lab's join command is at least as strict at the same point (and says why).
#[test]
fn the_fixture_join_refuses_a_token_without_a_newline_too() {
    let join = FixtureJoin::new();
    let out = join.run("printf '%s' labtest1.Zm9v.abc");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ending in a newline"), "{stderr}");
}

/// A fresh NixOS node's `nixos-kubernetes-node-join` fails while kube-certmgr-bootstrap has not
/// fetched ca.pem yet (pki.nix: `systemctl restart certmgr` under `set -e`), so the harness
/// retries it (harness/src/kube/join.rs). The fixture's join fails a fresh node's first attempt
/// the same way and succeeds on the next, so every fixture lab boot exercises that retry.
#[test]
fn the_fixture_join_fails_a_fresh_nodes_first_attempt_and_succeeds_on_the_next() {
    let join = FixtureJoin::new();
    // base64 of a PEM-looking certificate: the join only checks for the header.
    let ca = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCnRlc3QKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=";
    let token = format!("printf '%s\\n' labtest1.{ca}.0f1e2d");
    let first = join.run(&token);
    assert_eq!(first.status.code(), Some(1), "{first:?}");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("no CA yet"), "{stderr}");
    assert!(
        !join.read("systemctl.log").contains("restart kubelet"),
        "the failed attempt restarted the kubelet"
    );
    assert!(join.read("kubelet/ca.crt").contains("BEGIN CERTIFICATE"));

    let second = join.run(&token);
    assert!(second.status.success(), "{second:?}");
    assert!(
        join.read("kubelet/bootstrap-kubeconfig")
            .contains("token: 0f1e2d"),
        "no bootstrap kubeconfig"
    );
    assert!(join
        .read("systemctl.log")
        .contains("restart kubelet.service"));
    let attempts = join.read("kubelet/join-attempts");
    let lines: Vec<&str> = attempts.lines().collect();
    assert_eq!(lines.len(), 2, "{attempts}");
    assert!(lines[0].contains("failed: no CA yet"), "{attempts}");
    assert!(lines[1].contains("joined"), "{attempts}");

    // Idempotent: a third run changes nothing and succeeds.
    let third = join.run(&token);
    assert!(third.status.success(), "{third:?}");
    assert!(String::from_utf8_lossy(&third.stdout).contains("bootstrap kubeconfig no"));
}

/// On NixOS the admin kubeconfig is a store file present from activation, and certmgr writes
/// the certificate and key it names later (pki.nix: `clusterAdminKubeconfig`, certmgr specs):
/// the harness must wait for them, within its deadline, and say which are missing if they never
/// come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_kubeconfig_is_read_once_the_certificates_it_names_exist() {
    let state = tempfile::tempdir().expect("temp dir");
    let machine = MachineBuilder::new(
        "grey-area",
        support::run_dir().join("bin/run-grey-area-vm"),
        state.path().join("grey-area"),
    )
    .forward(443)
    .boot_timeout(Duration::from_secs(240))
    .start(&Events::discard())
    .await
    .expect("the fixture guest boots");
    let secrets = "/var/lib/kubernetes/secrets";
    let kubeconfig = "/etc/kubernetes/cluster-admin.kubeconfig";
    machine
        .succeed(&format!(
            "mkdir -p /etc/kubernetes {secrets} && cat >{kubeconfig} <<'EOF'\n{}\nEOF",
            nixos_admin_kubeconfig(secrets)
        ))
        .await
        .expect("write the kubeconfig");

    // Never: the error names what is missing.
    let started = Instant::now();
    let err = KubeAccess::from_master(
        &machine,
        kubeconfig,
        443,
        Some("grey-area"),
        &state.path().join("never"),
        Duration::from_secs(5),
    )
    .await
    .err()
    .expect("no certificates, no kubeconfig");
    let text = Chain(&err).to_string();
    assert!(
        text.contains(&format!("{secrets}/ca.pem")) && text.contains("still missing"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{text}");

    // Later: certmgr's files appear 6 s after the harness starts waiting.
    let pem = test_pki(state.path());
    let (ca, cert, key) = (&pem[0], &pem[1], &pem[2]);
    let writer = format!(
        "sleep 6; printf '%s' '{ca}' >{secrets}/ca.pem; printf '%s' '{cert}' >{secrets}/cluster-admin.pem; \
         printf '%s' '{key}' >{secrets}/cluster-admin-key.pem"
    );
    machine
        .succeed(&format!(
            "systemd-run --unit=labtest-certmgr-double bash -c {}",
            sh_quote(&writer)
        ))
        .await
        .expect("start the late writer");
    let started = Instant::now();
    let access = KubeAccess::from_master(
        &machine,
        kubeconfig,
        443,
        Some("grey-area"),
        &state.path().join("kubeconfig"),
        Duration::from_secs(60),
    )
    .await
    .expect("the kubeconfig once its certificates exist");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "read before the files existed"
    );
    let written = std::fs::read_to_string(access.kubeconfig()).expect("the written kubeconfig");
    assert!(written.contains("client-key-data"), "{written}");
    assert!(
        !written.contains(secrets),
        "file references left in: {written}"
    );
}

/// switch-to-configuration-ng exits 4 when any unit of the system is failed once the switch is
/// done - a failed unit the switch never touched, or a service in auto-restart whose last run
/// failed - not only a unit it changed (pkgs/by-name/sw/switch-to-configuration-ng/src/src/main.rs,
/// NixOS/nixpkgs 00401fd7e581bc669e0cc61c088427d336031312: ListUnits, `failed` or `auto-restart`
/// with ExecMainStatus != 0). The fixture lab's switch-to-configuration, in a minimal generation
/// on a fixture guest, must be as strict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_switch_exits_4_when_any_unit_is_failed() {
    let state = tempfile::tempdir().expect("temp dir");
    let machine = MachineBuilder::new(
        "grey-area",
        support::run_dir().join("bin/run-grey-area-vm"),
        state.path().join("grey-area"),
    )
    .boot_timeout(Duration::from_secs(240))
    .start(&Events::discard())
    .await
    .expect("the fixture guest boots");
    let script =
        std::fs::read(support::repo_root().join("fixtures/lab/guest/switch-to-configuration"))
            .expect("the fixture's switch-to-configuration");
    let top = "/tmp/labtest-generation";
    machine
        .succeed(&format!(
            "mkdir -p {top}/bin {top}/etc/labtest-test {top}/units && echo 'test generation' >{top}/name \
             && echo hello >{top}/etc/labtest-test/file \
             && printf '[Unit]\\nDescription=the generation target\\n' >{top}/units/labtest.target"
        ))
        .await
        .expect("a minimal generation");
    machine
        .copy_in(
            &script,
            &format!("{top}/bin/switch-to-configuration"),
            Duration::from_secs(30),
        )
        .await
        .expect("copy switch-to-configuration");
    let switch = || async {
        machine
            .exec(
                &format!("chmod +x {top}/bin/switch-to-configuration && {top}/bin/switch-to-configuration switch"),
                Duration::from_secs(120),
            )
            .await
            .expect("switch-to-configuration runs")
    };

    // Nothing failed: 0. (reset-failed: whatever the guest's own boot left is not this test's.)
    machine
        .succeed("systemctl reset-failed")
        .await
        .expect("reset-failed");
    let clean = switch().await;
    assert_eq!(
        clean.status,
        0,
        "{}{}",
        clean.stdout_str(),
        clean.stderr_str()
    );

    // A failed unit the switch does not touch.
    machine
        .succeed(
            "systemd-run --unit=labtest-unrelated-failure false; \
             for i in $(seq 1 50); do systemctl is-failed -q labtest-unrelated-failure && exit 0; sleep 0.2; done; exit 1",
        )
        .await
        .expect("a failed unit");
    let failed = switch().await;
    assert_eq!(
        failed.status,
        4,
        "{}{}",
        failed.stdout_str(),
        failed.stderr_str()
    );
    assert!(
        failed
            .stderr_str()
            .contains("warning: the following units failed: labtest-unrelated-failure.service"),
        "{}",
        failed.stderr_str()
    );

    // A service restarting after a failed run counts too.
    machine
        .succeed(
            "systemctl reset-failed && systemd-run --unit=labtest-crash-loop -p Restart=always -p RestartSec=60 false; \
             for i in $(seq 1 50); do [ \"$(systemctl show -P SubState labtest-crash-loop)\" = auto-restart ] && exit 0; sleep 0.2; done; exit 1",
        )
        .await
        .expect("a service in auto-restart");
    let restarting = switch().await;
    assert_eq!(
        restarting.status,
        4,
        "{}{}",
        restarting.stdout_str(),
        restarting.stderr_str()
    );
    assert!(
        restarting
            .stderr_str()
            .contains("labtest-crash-loop.service"),
        "{}",
        restarting.stderr_str()
    );
}

/// top.lib.mkKubeConfig "cluster-admin" (nixpkgs services/cluster/kubernetes/default.nix): JSON
/// naming the CA, certificate and key by path.
fn nixos_admin_kubeconfig(secrets: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "certificate-authority": format!("{secrets}/ca.pem"),
            "server": "https://grey-area:443"}}],
        "users": [{"name": "cluster-admin", "user": {
            "client-certificate": format!("{secrets}/cluster-admin.pem"),
            "client-key": format!("{secrets}/cluster-admin-key.pem")}}],
        "contexts": [{"context": {"cluster": "local", "user": "cluster-admin"}, "name": "local"}],
        "current-context": "local"
    })
    .to_string()
}

/// A self-signed CA and a client certificate and key, PEM, made by the host's openssl.
fn test_pki(dir: &std::path::Path) -> [String; 3] {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (Debian package openssl)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=test-ca",
        "-days",
        "2",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "admin-key.pem",
        "-out",
        "admin.csr",
        "-subj",
        "/O=system:masters/CN=cluster-admin",
    ]);
    // rustls refuses v1 certificates: extensions make it v3.
    std::fs::write(
        dir.join("admin.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .expect("admin.ext");
    run(&[
        "x509",
        "-extfile",
        "admin.ext",
        "-req",
        "-in",
        "admin.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "admin.pem",
        "-days",
        "2",
    ]);
    ["ca.pem", "admin.pem", "admin-key.pem"]
        .map(|f| std::fs::read_to_string(dir.join(f)).expect("a PEM file"))
}
