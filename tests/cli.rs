//! The command line, as users and scripts call it: every command, wrong arguments, a missing
//! lab, and a lab kept up between commands (on tests/labs/vm-only: real guests, no Kubernetes).
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;

fn labtest() -> Command {
    let mut cmd = Command::cargo_bin("labtest").expect("the labtest binary");
    cmd.env("LABTEST_ACCEL", "tcg")
        .timeout(Duration::from_secs(600));
    cmd
}

fn vm_lab() -> PathBuf {
    support::repo_root().join("tests/labs/vm-only")
}

#[test]
fn help_and_list_name_every_command_and_scenario() {
    let help = labtest().arg("--help").assert().success();
    let out = String::from_utf8_lossy(&help.get_output().stdout).into_owned();
    for command in [
        "run",
        "up",
        "status",
        "down",
        "exec",
        "kubectl",
        "crash",
        "freeze",
        "thaw",
        "start",
        "partition",
        "heal",
        "list",
        "ssh",
        "journal",
    ] {
        assert!(
            out.contains(command),
            "--help does not mention {command}:\n{out}"
        );
    }
    assert!(
        !out.contains("__serve"),
        "the internal server command stays hidden"
    );
    labtest()
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains("pod-scheduling"))
        .stdout(predicate::str::contains("node-failure"))
        .stdout(predicate::str::contains("rebuild-rollback"));
}

#[test]
fn wrong_arguments_exit_2_with_usage() {
    labtest()
        .assert()
        .code(2)
        .stderr(predicate::str::contains("Usage"));
    labtest()
        .arg("crash")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("<MACHINE>"));
    labtest().args(["partition", "a"]).assert().code(2);
    labtest().args(["exec", "grey-area"]).assert().code(2);
    labtest()
        .args(["--accel", "warp", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("auto, kvm, tcg"));
}

#[test]
fn a_missing_lab_exits_2_and_says_so() {
    let missing = "/nonexistent/lab";
    labtest()
        .args(["run", "--lab", missing])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "no lab spec at /nonexistent/lab/lab.toml",
        ));
    labtest()
        .args(["up", "--lab", missing])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no lab spec"));
    for args in [
        vec!["status"],
        vec!["down"],
        vec!["exec", "grey-area", "--", "true"],
        vec!["kubectl", "--", "get", "nodes"],
        vec!["freeze", "grey-area"],
        vec!["heal", "a", "b"],
    ] {
        labtest()
            .args(["--lab", missing])
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("is not a lab (no lab.toml there)"));
    }
}

#[test]
fn an_unknown_scenario_is_refused_before_anything_boots() {
    let start = Instant::now();
    labtest()
        .args(["run", "--scenario", "chaos-monkey", "--lab"])
        .arg(vm_lab())
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "no scenario named \"chaos-monkey\"",
        ))
        .stderr(predicate::str::contains("pod-scheduling"));
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// A lab.toml mistake exits 2 naming the field before anything builds or boots - for `run`,
/// `up` and the commands that read the spec - instead of failing minutes in (or in QEMU).
#[test]
fn a_bad_lab_spec_is_refused_before_anything_builds_or_boots() {
    let spec = std::fs::read_to_string(vm_lab().join("lab.toml")).expect("vm-only lab.toml");
    for (from, to, expected) in [
        (
            "address = \"10.77.0.12\"",
            "address = \"10.77.0.10\"",
            "address 10.77.0.10 is machine \"grey-area\"'s already",
        ),
        (
            "address = \"10.77.0.12\"",
            "address = \"10.77.1.12\"",
            "is outside [network] cidr 10.77.0.0/24",
        ),
        (
            "name = \"limiting-factor\"",
            "name = \"limiting_factor\"",
            "name: expected a host name",
        ),
    ] {
        let lab = tempfile::tempdir().expect("temp dir");
        assert!(spec.contains(from), "{from} is not in the vm-only lab.toml");
        std::fs::write(lab.path().join("lab.toml"), spec.replacen(from, to, 1)).expect("write");
        for args in [vec!["run"], vec!["up"]] {
            let start = Instant::now();
            labtest()
                .arg("--lab")
                .arg(lab.path())
                .args(&args)
                .assert()
                .code(2)
                .stderr(predicate::str::contains(expected))
                .stderr(predicate::str::contains("lab.toml"));
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{args:?} took {:?}",
                start.elapsed()
            );
        }
    }
}

/// SIGTERM (what CI cancellation and nextest's terminate-after send) and SIGINT during
/// `labtest run`: the run stops within 15 s with 143 / 130, still writes its summary (saying it
/// was interrupted) and JUnit, and leaves no QEMU behind.
#[test]
fn an_interrupted_run_keeps_its_reports_and_leaves_no_qemu() {
    for (signal, code, name) in [
        (nix::sys::signal::Signal::SIGTERM, 143, "SIGTERM"),
        (nix::sys::signal::Signal::SIGINT, 130, "SIGINT"),
    ] {
        let before = qemus();
        let report = tempfile::tempdir().expect("temp dir");
        let junit = report.path().join("junit.xml");
        let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("labtest"));
        command
            .env("LABTEST_ACCEL", "tcg")
            .arg("--lab")
            .arg(vm_lab())
            .arg("run")
            .arg("--report-dir")
            .arg(report.path())
            .arg("--junit")
            .arg(&junit);
        let (status, seen) = interrupt_during_boot(command, signal);
        assert_eq!(status.code(), Some(code), "{name}:\n{seen}");
        let summary = std::fs::read_to_string(report.path().join("report/summary.txt"))
            .unwrap_or_else(|e| panic!("{name}: no summary.txt ({e})"));
        assert!(
            summary.contains(&format!("interrupted by {name}")),
            "{name}: {summary}"
        );
        assert!(junit.exists(), "{name}: no JUnit file");
        no_new_qemu_within(&before, 10, "the interrupted run");
    }
}

/// The server `up` starts is in its own process group, out of reach of a terminal's Ctrl-C:
/// the client must pass the interrupt on, or the lab boots on and stays up unasked.
#[test]
fn an_interrupted_up_takes_its_server_and_machines_down() {
    let before = qemus();
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("labtest"));
    command
        .env("LABTEST_ACCEL", "tcg")
        .arg("--lab")
        .arg(vm_lab())
        .args(["up", "--no-snapshot"]);
    let (status, seen) = interrupt_during_boot(command, nix::sys::signal::Signal::SIGINT);
    assert_eq!(status.code(), Some(130), "{seen}");
    no_new_qemu_within(&before, 10, "the interrupted `up`");
    labtest()
        .arg("--lab")
        .arg(vm_lab())
        .arg("status")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no lab is up"));
}

/// Starts `command`, sends `signal` 3 s after its first machine starts booting and returns how
/// it ended (within 15 s of the signal, or the test fails) with everything it printed.
fn interrupt_during_boot(
    mut command: std::process::Command,
    signal: nix::sys::signal::Signal,
) -> (std::process::ExitStatus, String) {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("labtest starts");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !seen.iter().any(|l: &String| l.contains(": starting")) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no machine started within 300 s:\n{}", seen.join("\n"));
            }
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
        .expect("signal labtest");
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for labtest") {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("labtest did not stop within 20 s of {signal}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    seen.extend(rx.try_iter());
    (status, seen.join("\n"))
}

/// Every QEMU process on the machine, by command line.
fn qemus() -> std::collections::BTreeSet<String> {
    support::qemu_processes_mentioning("").into_iter().collect()
}

/// Fails the test unless every QEMU that is not in `before` is gone within `secs`.
fn no_new_qemu_within(before: &std::collections::BTreeSet<String>, secs: u64, what: &str) {
    let start = Instant::now();
    loop {
        let left: Vec<String> = qemus().difference(before).cloned().collect();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "QEMU outlived {what}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fault_commands_refuse_arguments_that_make_no_sense_before_asking_the_lab() {
    let lab = vm_lab();
    for (args, message) in [
        (
            vec!["partition", "grey-area", "grey-area"],
            "expected two different machines, saw \"grey-area\" twice",
        ),
        (
            vec!["heal", "grey-area", "nosuch"],
            "expected a machine of the lab (grey-area, limiting-factor), saw \"nosuch\"",
        ),
        (vec!["crash", "nosuch"], "saw \"nosuch\""),
        (vec!["freeze", "Grey-Area"], "saw \"Grey-Area\""),
    ] {
        labtest()
            .arg("--lab")
            .arg(&lab)
            .args(&args)
            .timeout(Duration::from_secs(20))
            .assert()
            .code(2)
            .stderr(predicate::str::contains("refused"))
            .stderr(predicate::str::contains(message));
    }
    labtest()
        .args(["--timeout", "0", "status"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--timeout"));
}

/// Snapshot names become directories of the store: one that reaches outside it is refused as
/// the arguments are read, and the store is left as it was.
#[test]
fn a_snapshot_name_that_is_not_plain_is_refused_before_the_store_is_touched() {
    let store = tempfile::tempdir().expect("temp dir");
    let kept = store.path().join("vm-only/ready");
    std::fs::create_dir_all(&kept).expect("a snapshot dir");
    for args in [
        vec!["snapshot", "rm", ".."],
        vec!["snapshot", "save", "../x"],
        vec!["up", "--from", ".hidden"],
    ] {
        labtest()
            .env("LABTEST_SNAPSHOTS", store.path())
            .arg("--lab")
            .arg(vm_lab())
            .args(&args)
            .timeout(Duration::from_secs(20))
            .assert()
            .code(2)
            .stderr(predicate::str::contains(
                "expected letters, digits, '-', '_' or '.', not starting with '.'",
            ));
    }
    assert!(kept.exists(), "a refused name removed snapshots");
}

/// A cache as the build scripts and snapshot saves leave it: two guests and two Kubernetes
/// builds (the newer current), snapshots of a current and an old key, a killed save.
#[test]
fn cache_lists_sizes_and_prune_keeps_only_what_is_current() {
    let cache = tempfile::tempdir().expect("tempdir");
    let root = cache.path();
    let write = |path: &str, bytes: usize| {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, vec![b'x'; bytes]).expect("write");
    };
    write("guest/oldkey/rootfs.img", 300_000);
    write("guest/oldkey/.complete", 0);
    std::thread::sleep(Duration::from_millis(20));
    write("guest/newkey/rootfs.img", 300_000);
    write("guest/newkey/.complete", 0);
    write("kubernetes/1.20.2-old/VERSION", 10);
    std::thread::sleep(Duration::from_millis(20));
    write("kubernetes/1.20.2-new/VERSION", 10);
    write("kubernetes/go-build/cache", 1000);
    let meta = |name: &str, key: &str| {
        format!(
            r#"{{"format":"labtest-snapshot-1","lab":"fixture","name":"{name}","key":"{key}","inputs":[],"machines":[],"created":0,"save_secs":1.0,"bytes":1}}"#
        )
    };
    write("snapshots/fixture/ready/state", 1000);
    std::fs::write(
        root.join("snapshots/fixture/ready/snapshot.json"),
        meta("ready", "k2"),
    )
    .expect("meta");
    write("snapshots/fixture/incident/state", 1000);
    std::fs::write(
        root.join("snapshots/fixture/incident/snapshot.json"),
        meta("incident", "k1"),
    )
    .expect("meta");
    std::fs::write(root.join("snapshots/fixture/.current-key"), "k2").expect("key");
    write("snapshots/fixture/.part-ready-999999999/state", 1000);

    let cmd = || {
        let mut cmd = labtest();
        cmd.env("LABTEST_CACHE", root)
            .env_remove("LABTEST_SNAPSHOTS")
            .arg("--lab")
            .arg(vm_lab())
            .timeout(Duration::from_secs(30));
        cmd
    };
    let listed = cmd().arg("cache").assert().success();
    let text = String::from_utf8_lossy(&listed.get_output().stdout).into_owned();
    for (entry, state) in [
        ("guest/newkey", "current"),
        ("guest/oldkey", "old"),
        ("kubernetes/1.20.2-new", "current"),
        ("kubernetes/1.20.2-old", "old"),
        ("snapshots/fixture/ready", "current"),
        ("snapshots/fixture/incident", "old"),
        ("snapshots/fixture/.part-ready-999999999", "old"),
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_end().ends_with(entry))
            .unwrap_or_else(|| panic!("no line for {entry} in:\n{text}"));
        assert!(line.contains(state), "{entry} should be {state}: {line}");
    }
    assert!(text.contains("`labtest cache prune` frees"), "{text}");
    cmd().args(["cache", "prune"]).assert().success();
    for gone in [
        "guest/oldkey",
        "kubernetes/1.20.2-old",
        "snapshots/fixture/incident",
        "snapshots/fixture/.part-ready-999999999",
    ] {
        assert!(!root.join(gone).exists(), "{gone} survived prune");
    }
    for kept in [
        "guest/newkey",
        "kubernetes/1.20.2-new",
        "kubernetes/go-build",
        "snapshots/fixture/ready",
    ] {
        assert!(root.join(kept).exists(), "{kept} was pruned");
    }
}

#[test]
fn commands_on_a_lab_that_is_not_up_explain_how_to_start_it() {
    let lab = vm_lab();
    for args in [
        vec!["status"],
        vec!["exec", "grey-area", "--", "true"],
        vec!["ssh", "grey-area"],
        vec!["journal", "grey-area", "--follow"],
        vec!["crash", "grey-area"],
    ] {
        labtest()
            .arg("--lab")
            .arg(&lab)
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("no lab is up"))
            .stderr(predicate::str::contains("labtest up"));
    }
}

/// One lab kept up across commands, then its server is SIGKILLed: nothing may survive it.
#[test]
fn up_exec_faults_down_and_no_qemu_survives_a_killed_server() {
    let lab = vm_lab();
    let run = |args: &[&str]| {
        let mut cmd = labtest();
        cmd.arg("--lab").arg(&lab).args(args);
        cmd
    };
    let _down = DownOnDrop(lab.clone(), None);
    run(&["up"])
        .assert()
        .success()
        .stdout(predicate::str::contains("lab vm-only is up"))
        .stdout(predicate::str::contains("labtest --lab"));
    run(&["up"])
        .assert()
        .success()
        .stdout(predicate::str::contains("already up"));
    run(&["status"])
        .assert()
        .success()
        .stdout(predicate::str::is_match("grey-area +running").unwrap());
    run(&["exec", "grey-area", "--", "hostname"])
        .assert()
        .success()
        .stdout("grey-area\n");
    run(&[
        "exec",
        "limiting-factor",
        "--",
        "sh",
        "-c",
        "echo oops >&2; exit 7",
    ])
    .assert()
    .code(7)
    .stderr("oops\n");
    run(&["exec", "nosuch", "--", "true"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no machine named \"nosuch\""));
    // This lab's machines run no sshd: `ssh` and `journal` say so, and how to get a shell.
    for args in [
        &["ssh", "grey-area", "--", "true"][..],
        &["journal", "grey-area", "sshd.service"][..],
    ] {
        run(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(
                "lab vm-only runs no SSH server (its lab.toml has no [ssh])",
            ))
            .stderr(predicate::str::contains("labtest exec"));
    }
    run(&["kubectl", "--", "get", "nodes"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no Kubernetes"));
    run(&["partition", "grey-area", "limiting-factor"])
        .assert()
        .success();
    run(&[
        "exec",
        "grey-area",
        "--",
        "ping",
        "-c1",
        "-W2",
        "limiting-factor",
    ])
    .assert()
    .code(1);
    run(&["heal", "grey-area", "limiting-factor"])
        .assert()
        .success();
    // The failed pings left limiting-factor's neighbour entry FAILED on grey-area: the first
    // packets after the heal may still be refused while ARP resolves it again.
    run(&[
        "exec",
        "grey-area",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do ping -c1 -W2 limiting-factor && exit 0; sleep 1; done; exit 1",
    ])
    .assert()
    .success();
    run(&["heal", "grey-area", "limiting-factor"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not partitioned: nothing to heal"));
    run(&["thaw", "limiting-factor"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is not frozen"));
    run(&["freeze", "limiting-factor"]).assert().success();
    run(&["freeze", "limiting-factor"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "limiting-factor is frozen: thaw it first (`labtest thaw limiting-factor`)",
        ));
    run(&["status"])
        .assert()
        .success()
        .stdout(predicate::str::is_match("limiting-factor +paused").unwrap());
    run(&["thaw", "limiting-factor"]).assert().success();
    run(&["crash", "limiting-factor"]).assert().success();
    run(&["exec", "limiting-factor", "--", "true"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "start it with `labtest start limiting-factor`",
        ));
    run(&["crash", "limiting-factor"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("limiting-factor is off"));
    run(&["status"])
        .assert()
        .success()
        .stdout(predicate::str::is_match("limiting-factor +off").unwrap());
    run(&["start", "limiting-factor"])
        .assert()
        .success()
        .stdout(predicate::str::contains("limiting-factor: started"));
    run(&["exec", "limiting-factor", "--", "hostname"])
        .assert()
        .success()
        .stdout(
            "limiting-factor
",
        );
    run(&["start", "limiting-factor"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already running"));
    run(&["down"])
        .assert()
        .success()
        .stdout(predicate::str::contains("lab is down"));
    run(&["status"]).assert().code(2);

    // Again, and this time the server dies by SIGKILL: its QEMUs must die with it.
    run(&["up"]).assert().success();
    let status = run(&["status"]).assert().success();
    let text = String::from_utf8_lossy(&status.get_output().stdout).into_owned();
    let pid: i32 = text
        .split("server pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no server pid in status:\n{text}"));
    let state = text
        .split("state ")
        .nth(1)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no state dir in status:\n{text}"));
    assert_eq!(support::qemu_processes_mentioning(&state).len(), 2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the server");
    let start = Instant::now();
    while !support::qemu_processes_mentioning(&state).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "QEMU outlived its SIGKILLed server: {:?}",
            support::qemu_processes_mentioning(&state)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The next `status` cleans what the dead server left (its state dir of disk overlays
    // and sockets) and says it is down.
    assert!(std::path::Path::new(&state).exists());
    run(&["status"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cleared the stale session"))
        .stderr(predicate::str::contains("no lab is up"));
    assert!(
        !std::path::Path::new(&state).exists(),
        "{state} outlived its server"
    );
}

/// Writes a scenario file into a fresh temp dir; the dir lives as long as the returned guard.
fn scenario_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("writing the scenario file");
    (dir, path)
}

#[test]
fn a_scenario_file_with_a_bad_field_is_refused_with_file_line_and_field_before_anything_boots() {
    let (_dir, path) = scenario_file(
        "typo.toml",
        "name = \"typo\"\n\n[[step]]\nwait = \"node-ready\"\nnode = \"limiting-factor\"\ntimout = \"3m\"\n",
    );
    let start = Instant::now();
    refused_before_boot(&path, &format!("{}:6: step[1].timout:", path.display()))
        .stderr(predicate::str::contains("did you mean `timeout`?"));
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// `labtest run --scenario-file path` on the VM-only lab must exit 2 with `message` on stderr.
fn refused_before_boot(path: &std::path::Path, message: &str) -> assert_cmd::assert::Assert {
    labtest()
        .args(["run", "--lab"])
        .arg(vm_lab())
        .arg("--scenario-file")
        .arg(path)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(message))
}

#[test]
fn a_scenario_file_naming_what_the_lab_lacks_is_refused_before_anything_boots() {
    let (_dir, path) = scenario_file(
        "missing.toml",
        "name = \"missing\"\n\n[[step]]\nfault = \"crash\"\nmachine = \"congenital-optimist\"\n",
    );
    let start = Instant::now();
    refused_before_boot(
        &path,
        &format!(
            "{}:5: step[1].machine: the lab has no machine named \"congenital-optimist\" (it has: grey-area, limiting-factor)",
            path.display()
        ),
    );
    // vm-only has no [[generation]]: a rebuild cannot be run there.
    let (_dir, path) = scenario_file(
        "rebuild.toml",
        "name = \"rebuild\"\n\n[[step]]\nrebuild = \"node-label\"\n",
    );
    refused_before_boot(
        &path,
        &format!(
            "{}:4: step[1].rebuild: the lab has no generation named \"node-label\" (it has: none)",
            path.display()
        ),
    );
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn scenario_files_are_refused_for_bad_manifests_and_names_taken_before_anything_boots() {
    let (_dir, path) = scenario_file(
        "manifest.toml",
        "name = \"manifest\"\n\n[[step]]\nmanifest = \"\"\"\nkind: Pod\nmetadata: {name: p}\n\"\"\"\n",
    );
    refused_before_boot(
        &path,
        &format!(
            "{}:4: step[1].manifest: inline manifest: document 1 (line 1): missing /apiVersion",
            path.display()
        ),
    );
    // The name is the JUnit testcase name: a built-in's, or another file's, would be ambiguous.
    let (_dir, path) = scenario_file(
        "clash.toml",
        "# an incident\nname = \"node-failure\"\n\n[[step]]\nsleep = \"1s\"\n",
    );
    refused_before_boot(
        &path,
        &format!(
            "{}:2: name: expected a name no other scenario of this run has",
            path.display()
        ),
    )
    .stderr(predicate::str::contains("the name of a built-in scenario"));
}

/// A node whose join command keeps failing ends the run once its retry window has passed
/// (harness::kube::join::JOIN_RETRY_WINDOW), naming the node, its last attempt's exit status
/// and its stderr - which shows the master's token reached the whole join command's stdin - with
/// the evidence folder named and no QEMU left behind.
#[test]
fn a_node_that_cannot_join_ends_the_run_with_its_error_and_leaves_nothing_running() {
    let kubernetes = r#"
[kubernetes]
master = "grey-area"
apiserver_port = 6443
admin_kubeconfig = "/etc/hostname"
join_token_command = "echo labtest-token"
join_command = "read -r token; echo \"kubelet refused a token of ${#token} bytes\" >&2; exit 3"
kubelet_unit = "kubelet.service"
workload_image = "labtest/workload:1"
"#;
    let lab = vm_lab_variant(kubernetes);
    let report = tempfile::Builder::new()
        .prefix("labtest-join-report-")
        .tempdir()
        .expect("temp dir");

    let start = Instant::now();
    let out = labtest()
        .args(["run", "--lab"])
        .arg(lab.path())
        .arg("--report-dir")
        .arg(report.path())
        .output()
        .expect("labtest runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    for expected in [
        "failed to join",
        "exited 3, expected 0",
        "limiting-factor: attempt ",
        "kubelet refused a token of 13 bytes",
        &format!("artifacts: {}", report.path().display()),
    ] {
        assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(300) + harness::kube::join::JOIN_RETRY_WINDOW,
        "took {:?}",
        start.elapsed()
    );
    let needle = report.path().display().to_string();
    assert!(
        support::qemu_processes_mentioning(&needle).is_empty(),
        "QEMU left running: {:?}",
        support::qemu_processes_mentioning(&needle)
    );
    // The lab was booted for the first scenario (each scenario gets a lab of its own).
    assert!(report
        .path()
        .join("labs/pod-scheduling/machines/limiting-factor/console.log")
        .exists());
}

/// Takes the lab at `.0` down when dropped (a failing test must not leave it up for the next),
/// with `.1` as LABTEST_SNAPSHOTS where the test uses its own.
struct DownOnDrop(PathBuf, Option<PathBuf>);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let mut cmd = labtest();
        if let Some(snapshots) = &self.1 {
            cmd.env("LABTEST_SNAPSHOTS", snapshots);
        }
        let _ = cmd.arg("--lab").arg(&self.0).arg("down").output();
    }
}

fn two_labs_from_one_snapshot(lab_dir: &std::path::Path, snapshots: &std::path::Path) {
    use harness::events::Events;
    use harness::lab::{LabBuilder, LabSpec};
    use harness::snapshot::{SnapshotKey, SnapshotStore};
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let events = Events::discard();
        let spec = LabSpec::load(lab_dir).expect("vm-only lab.toml");
        let build = tempfile::tempdir().expect("temp dir");
        let run_dir = harness::lab::build(
            lab_dir,
            &spec,
            build.path(),
            &events,
            Duration::from_secs(600),
        )
        .await
        .expect("build the lab");
        let text = std::fs::read_to_string(lab_dir.join("lab.toml")).expect("lab.toml");
        let key = SnapshotKey::compute(
            &text,
            &run_dir,
            &spec.machine_names(),
            harness::vm::Accel::Tcg.qemu_opts(),
        )
        .expect("the key");
        let snapshot = SnapshotStore::new(snapshots)
            .lookup("vm-only", &harness::ready::READY_SNAPSHOT, &key)
            .expect("the Ready snapshot the CLI saved");
        let restore = || {
            LabBuilder::new(spec.clone(), &run_dir)
                .restore_from(snapshot.clone())
                .start(&events)
        };
        let (a, b) = tokio::join!(restore(), restore());
        let (a, b) = (a.expect("lab a"), b.expect("lab b"));
        let ga = a.machine("grey-area").expect("grey-area");
        ga.succeed("touch /root/only-in-a")
            .await
            .expect("write in a");
        let gb = b.machine("grey-area").expect("grey-area");
        gb.succeed("test ! -e /root/only-in-a")
            .await
            .expect("b does not see a's file");
        for lab in [&a, &b] {
            lab.machine("limiting-factor")
                .expect("limiting-factor")
                .succeed("ping -c1 -W5 grey-area")
                .await
                .expect("each lab's machines reach each other over their own hub");
        }
    });
}

/// A lab dir beside vm-only whose lab.toml is vm-only's plus `extra`: the same machines and run
/// scripts (its prepare step copies vm-only's), so the same snapshot key unless `extra` changes it.
fn vm_lab_variant(extra: &str) -> tempfile::TempDir {
    let lab = tempfile::Builder::new()
        .prefix("labtest-vm-variant-")
        .tempdir()
        .expect("temp dir");
    let vm_only = vm_lab();
    std::fs::copy(vm_only.join("flake.nix"), lab.path().join("flake.nix")).expect("copy flake");
    let spec = std::fs::read_to_string(vm_only.join("lab.toml")).expect("vm-only lab.toml");
    let spec = spec.replace(
        "prepare = \"./prepare.sh\"",
        &format!(
            "prepare = \"{0}/prepare.sh && rm -rf local && cp -r {0}/local local\"",
            vm_only.display()
        ),
    );
    std::fs::write(lab.path().join("lab.toml"), spec + extra).expect("write lab.toml");
    lab
}

fn output_text(assert: &assert_cmd::assert::Assert) -> String {
    let out = assert.get_output();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whole-lab snapshots on the VM-only lab, through the CLI: the first `up` boots and saves, the
/// next ones restore the same boot pristine; a corrupt snapshot and a changed lab.toml each say
/// why and boot afresh; two labs run from one snapshot at once; a server killed during a save or
/// a restore leaves no QEMU and no half snapshot that a later `up` would use.
#[test]
fn up_restores_a_pristine_snapshot_and_boots_afresh_when_it_is_stale_or_corrupt() {
    let snapshots = tempfile::tempdir().expect("temp dir");
    let lab = vm_lab();
    let run_in = |dir: &std::path::Path, args: &[&str]| {
        let mut cmd = labtest();
        cmd.env("LABTEST_SNAPSHOTS", snapshots.path())
            .arg("--lab")
            .arg(dir)
            .args(args);
        cmd
    };
    let run = |args: &[&str]| run_in(&lab, args);
    // Whatever fails below, the lab does not stay up for the next test.
    let _down = DownOnDrop(lab.clone(), Some(snapshots.path().to_path_buf()));
    let boot_id = |dir: &std::path::Path| {
        let out = run_in(
            dir,
            &[
                "exec",
                "grey-area",
                "--",
                "cat",
                "/proc/sys/kernel/random/boot_id",
            ],
        )
        .assert()
        .success();
        String::from_utf8_lossy(&out.get_output().stdout)
            .trim()
            .to_string()
    };

    let first = output_text(&run(&["up"]).assert().success());
    assert!(
        first.contains("none saved yet") && first.contains("snapshot ready saved"),
        "{first}"
    );
    let booted = boot_id(&lab);
    run(&[
        "exec",
        "grey-area",
        "--",
        "touch",
        "/root/after-the-snapshot",
    ])
    .assert()
    .success();
    // A second save of the lab that booted and saved Ready: its disk lies above Ready's, not
    // above a file of the lab's state dir, so it restores after the lab is gone.
    run(&["snapshot", "save", "second-save"]).assert().success();
    run(&["down"]).assert().success();
    run(&["up", "--from", "second-save"]).assert().success();
    run(&[
        "exec",
        "grey-area",
        "--",
        "test",
        "-e",
        "/root/after-the-snapshot",
    ])
    .assert()
    .success();
    run(&["down"]).assert().success();
    run(&["snapshot", "rm", "second-save"]).assert().success();

    let started = Instant::now();
    let again = output_text(&run(&["up"]).assert().success());
    let took = started.elapsed();
    assert!(
        again.contains("lab restored from snapshot ready"),
        "{again}"
    );
    eprintln!("up from the snapshot took {:.1}s", took.as_secs_f64());
    assert_eq!(boot_id(&lab), booted, "a restore continues the saved boot");
    run(&[
        "exec",
        "grey-area",
        "--",
        "test",
        "!",
        "-e",
        "/root/after-the-snapshot",
    ])
    .assert()
    .success();
    let ping = || {
        run(&[
            "exec",
            "grey-area",
            "--",
            "ping",
            "-c1",
            "-W5",
            "limiting-factor",
        ])
        .assert()
    };
    ping().success();

    // Faults come back with a snapshot: a save leaves a frozen machine frozen, and a restore
    // brings it back frozen behind the same partition.
    run(&["freeze", "limiting-factor"]).assert().success();
    run(&["partition", "grey-area", "limiting-factor"])
        .assert()
        .success();
    run(&["snapshot", "save", "incident-faults"])
        .assert()
        .success();
    let status = output_text(&run(&["status"]).assert().success());
    assert!(
        status.contains("limiting-factor") && status.contains("paused"),
        "the save thawed a frozen machine:\n{status}"
    );
    run(&["down"]).assert().success();
    let back = output_text(&run(&["up", "--from", "incident-faults"]).assert().success());
    assert!(
        back.contains("restored as saved, faults and all")
            && back.contains("limiting-factor frozen"),
        "{back}"
    );
    let status = output_text(&run(&["status"]).assert().success());
    assert!(
        status.contains("paused") && status.contains("grey-area<->limiting-factor"),
        "restored without its faults:\n{status}"
    );
    run(&["thaw", "limiting-factor"]).assert().success();
    run(&["exec", "limiting-factor", "--", "true"])
        .assert()
        .success();
    ping().failure();
    run(&["heal", "grey-area", "limiting-factor"])
        .assert()
        .success();
    ping().success();
    run(&["down"]).assert().success();
    run(&["snapshot", "rm", "incident-faults"])
        .assert()
        .success();

    // Two labs from the one snapshot at the same time, each with its own disks, hub and ports
    // (through the library, as a user's own test would).
    two_labs_from_one_snapshot(&lab, snapshots.path());

    // A corrupt state: QEMU refuses it, the run says so and boots afresh, and saves anew.
    let state = snapshots.path().join("vm-only/ready/grey-area.state");
    let mut bytes = std::fs::read(&state).expect("the saved state");
    for b in bytes.iter_mut().skip(4).take(64 * 1024) {
        *b = 0xa5;
    }
    std::fs::write(&state, &bytes).expect("corrupt the state");
    let corrupt = output_text(&run(&["up"]).assert().success());
    assert!(
        corrupt.contains("restoring snapshot") && corrupt.contains("booting afresh"),
        "{corrupt}"
    );
    // QEMU's refusal is the one restore failure that removes the snapshot without a retry.
    assert!(
        corrupt.contains("load of migration failed")
            && corrupt.contains("cannot be restored: removing it")
            && !corrupt.contains("trying it once more"),
        "{corrupt}"
    );
    assert!(corrupt.contains("snapshot ready saved"), "{corrupt}");
    assert_ne!(
        boot_id(&lab),
        booted,
        "a fresh boot after a corrupt snapshot"
    );
    run(&["down"]).assert().success();

    // SIGKILL of the server while it saves, then while it restores: no QEMU outlives it, and
    // no half-written snapshot is ever restored.
    let before = qemus();
    let server_pid = || -> Option<i32> {
        let out = std::process::Command::new("pgrep")
            .args([
                "-f",
                "--",
                &format!("--lab {} --accel tcg __serve", lab.display()),
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    };
    let sigkill = |pid: i32| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL the server");
    };
    let part_dir = || {
        std::fs::read_dir(snapshots.path().join("vm-only"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".part-"))
    };
    for (args, moment) in [(&["up", "--fresh"][..], "save"), (&["up"][..], "restore")] {
        let mut up = std::process::Command::new(assert_cmd::cargo::cargo_bin("labtest"))
            .env("LABTEST_ACCEL", "tcg")
            .env("LABTEST_SNAPSHOTS", snapshots.path())
            .arg("--lab")
            .arg(&lab)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("labtest up");
        let start = Instant::now();
        let killed = loop {
            let now = match moment {
                "save" => part_dir(),
                _ => !qemus().difference(&before).collect::<Vec<_>>().is_empty(),
            };
            if let (true, Some(pid)) = (now, server_pid()) {
                sigkill(pid);
                break true;
            }
            if start.elapsed() > Duration::from_secs(240) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let _ = up.wait();
        assert!(killed, "never saw the server {moment}");
        no_new_qemu_within(&before, 10, "its SIGKILLed server");
        let listed = output_text(&run(&["snapshot", "list"]).assert().success());
        assert!(!listed.contains(".part-"), "{listed}");
    }
    // The save killed half-way left the older snapshot in place, never a half one.
    let after = output_text(&run(&["up"]).assert().success());
    assert!(
        after.contains("lab restored from snapshot ready"),
        "{after}"
    );
    run(&["down"]).assert().success();

    // A changed lab.toml: another key, with the input that changed named.
    let changed = vm_lab_variant("# a changed lab\n");
    let _changed_down = DownOnDrop(
        changed.path().to_path_buf(),
        Some(snapshots.path().to_path_buf()),
    );
    let text = output_text(&run_in(changed.path(), &["up"]).assert().success());
    assert!(
        text.contains("made from other inputs; changed: lab.toml"),
        "{text}"
    );
    run_in(changed.path(), &["down"]).assert().success();
}

/// A lab whose build fails at once, before anything boots: no `nix` on PATH (and no prepare
/// step, which would need bash). Nix's own diagnosis ("install Nix") is the error's cause.
fn lab_without_nix() -> (tempfile::TempDir, tempfile::TempDir) {
    let lab = tempfile::Builder::new()
        .prefix("labtest-no-nix-")
        .tempdir()
        .expect("temp dir");
    let spec = std::fs::read_to_string(vm_lab().join("lab.toml")).expect("vm-only lab.toml");
    let spec = spec.replace("prepare = \"./prepare.sh\"\n", "");
    std::fs::write(lab.path().join("lab.toml"), spec).expect("write lab.toml");
    let empty_path = tempfile::tempdir().expect("temp dir");
    (lab, empty_path)
}

/// The build's cause reaches the summary and JUnit of `run`, each cause once.
#[test]
fn a_run_whose_build_fails_reports_the_builds_own_error_once() {
    let (lab, empty_path) = lab_without_nix();
    let report = tempfile::tempdir().expect("temp dir");
    let junit = report.path().join("junit.xml");
    let assert = labtest()
        .env("PATH", empty_path.path())
        .args(["run", "--scenario", "pod-scheduling", "--lab"])
        .arg(lab.path())
        .arg("--report-dir")
        .arg(report.path().join("run"))
        .arg("--junit")
        .arg(&junit)
        .assert()
        .code(2);
    let text = output_text(&assert);
    let summary = text
        .lines()
        .find(|l| l.starts_with("run aborted:"))
        .unwrap_or_else(|| panic!("no summary line in:\n{text}"));
    for cause in [
        "building lab",
        "building its machines failed",
        "install Nix",
    ] {
        assert_eq!(summary.matches(cause).count(), 1, "{cause:?} in: {summary}");
    }
    let xml = std::fs::read_to_string(&junit).expect("the JUnit file");
    assert!(xml.contains("install Nix"), "{xml}");
}

/// `up` shows the server's log, in which the build's cause must appear once.
#[test]
fn an_up_whose_build_fails_prints_the_builds_own_error_once() {
    let (lab, empty_path) = lab_without_nix();
    let assert = labtest()
        .env("PATH", empty_path.path())
        .args(["up", "--no-snapshot", "--lab"])
        .arg(lab.path())
        .assert()
        .code(2);
    let text = output_text(&assert);
    assert_eq!(text.matches("install Nix").count(), 1, "{text}");
}

/// A prepare step that cannot even be started (no bash on PATH) is said to be that, not a
/// problem with the lab's state dir.
#[test]
fn a_prepare_step_that_cannot_start_is_named_as_such() {
    let (lab, empty_path) = lab_without_nix();
    let spec = std::fs::read_to_string(lab.path().join("lab.toml")).expect("lab.toml");
    let spec = spec.replace(
        "name = \"vm-only\"\n",
        "name = \"vm-only\"\nprepare = \"true\"\n",
    );
    std::fs::write(lab.path().join("lab.toml"), spec).expect("write lab.toml");
    let report = tempfile::tempdir().expect("temp dir");
    let assert = labtest()
        .env("PATH", empty_path.path())
        .args(["run", "--scenario", "pod-scheduling", "--lab"])
        .arg(lab.path())
        .arg("--report-dir")
        .arg(report.path())
        .assert()
        .code(2);
    let text = output_text(&assert);
    assert!(
        text.contains("could not start its prepare step `true`"),
        "{text}"
    );
    assert!(!text.contains("state dir"), "{text}");
}

/// A bad LABTEST_HOST_CPUS (or --host-cpus) is refused with exit 2 naming the variable, before
/// anything builds or boots.
#[test]
fn a_bad_host_cpus_setting_is_refused_before_anything_boots() {
    let before = qemus();
    for bad in ["0", "999", "two"] {
        for args in [vec!["run"], vec!["up"]] {
            let start = Instant::now();
            labtest()
                .env("LABTEST_HOST_CPUS", bad)
                .arg("--lab")
                .arg(vm_lab())
                .args(&args)
                .assert()
                .code(2)
                .stderr(predicate::str::contains(format!(
                    "LABTEST_HOST_CPUS={bad:?}: expected a number of host CPUs from 1 to"
                )));
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{args:?} took {:?}",
                start.elapsed()
            );
        }
    }
    labtest()
        .arg("--lab")
        .arg(vm_lab())
        .args(["run", "--host-cpus", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("LABTEST_HOST_CPUS=\"0\""));
    no_new_qemu_within(&before, 1, "a refused LABTEST_HOST_CPUS");
}

/// `labtest top --once` on a lab kept up with LABTEST_HOST_CPUS=1: every machine's host CPU,
/// vCPUs and RSS, the guests' user/system and busiest processes, the host's side saying the
/// QEMUs may use one CPU - and every thread of every QEMU really is on CPU 0 only.
#[test]
fn top_once_shows_a_lab_confined_to_one_host_cpu() {
    let lab = vm_lab();
    let run = |args: &[&str]| {
        let mut cmd = labtest();
        cmd.env("LABTEST_HOST_CPUS", "1")
            .arg("--lab")
            .arg(&lab)
            .args(args);
        cmd
    };
    let _down = DownOnDrop(lab.clone(), None);
    let up = output_text(&run(&["up", "--no-snapshot"]).assert().success());
    assert!(
        up.contains("confined to 1 host CPU (LABTEST_HOST_CPUS)"),
        "{up}"
    );

    // The guests are sampled every 15 s: ask until both have been (bounded).
    let start = Instant::now();
    let text = loop {
        let text = output_text(&run(&["top", "--once"]).assert().success());
        if text.matches("top ").count() >= 2 || start.elapsed() > Duration::from_secs(90) {
            break text;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    for expected in [
        "lab vm-only",
        "grey-area",
        "limiting-factor",
        "% of a core, vCPUs",
        "guest user",
        "the QEMUs may use 1 of",
        "(LABTEST_HOST_CPUS=1)",
    ] {
        assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
    }
    assert_eq!(text.matches("\n                 top ").count(), 2, "{text}");

    let status = output_text(&run(&["status"]).assert().success());
    let state = status
        .split("state ")
        .nth(1)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no state dir in status:\n{status}"));
    let qemus = support::qemu_processes_mentioning(&state);
    assert_eq!(qemus.len(), 2, "{qemus:?}");
    for line in qemus {
        let pid = line.split_whitespace().next().expect("a pid");
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("its threads");
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(str::trim);
            assert_eq!(allowed, Some("0"), "{}: {status}", task.path().display());
        }
    }
}
