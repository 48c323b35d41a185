//! Tier 4: a lab restored from the fixture lab's Ready snapshot, kept up with `labtest up` and
//! driven from the CLI as a user does between incidents: it stays Ready for two minutes, takes
//! a rebuild and a rollback, lets an admin in with `labtest ssh` and `labtest journal`, serves
//! nginx beside Kubernetes, and takes ssh again after a restore of a snapshot it saved. (Each
//! scenario is a test of its own in tests/scenarios.rs.)
mod support;

use std::time::Duration;

use assert_cmd::Command;

/// `labtest --lab fixtures/lab ARGS`, under TCG, bounded.
fn labtest(args: &[&str]) -> Command {
    let mut cmd = Command::cargo_bin("labtest").expect("the labtest binary");
    cmd.env("LABTEST_ACCEL", "tcg")
        .arg("--lab")
        .arg(support::repo_root().join("fixtures/lab"))
        .args(args)
        .timeout(Duration::from_secs(30 * 60));
    cmd
}

/// One field of a node, through `labtest kubectl` and a JSONPath; empty when it cannot be read.
fn node_field(node: &str, jsonpath: &str) -> String {
    let out = labtest(&["kubectl", "--", "get", "node", node, "-o", jsonpath])
        .timeout(Duration::from_secs(60))
        .output()
        .expect("labtest kubectl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// After a restore the guests' clocks resume from the moment of the save (they lag the host by
/// the snapshot's age, all by the same amount): the node controller must see every lease as
/// fresh, so for two minutes every node stays Ready and untainted - no eviction storm. Runs on
/// the Ready snapshot the suite's first lab test leaves (or makes one first), through `labtest up`; then the
/// same lab runs a scenario file with `labtest run --attach` and takes a `labtest rebuild` and
/// a `labtest rollback`.
#[test]
fn a_restored_lab_stays_ready_untainted_and_takes_a_rebuild_and_a_rollback() {
    let up = labtest(&["up"]).output().expect("labtest up");
    assert!(
        up.status.success(),
        "labtest up failed:\n{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    let verdict = loop {
        let out = labtest(&["kubectl", "--", "get", "nodes", "-o", "json"])
            .timeout(Duration::from_secs(60))
            .output()
            .expect("labtest kubectl");
        let nodes: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let items = nodes["items"].as_array().cloned().unwrap_or_default();
        let bad: Vec<String> = items
            .iter()
            .filter_map(|n| {
                let name = n["metadata"]["name"].as_str().unwrap_or("?");
                let ready = n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let taints = n["spec"]["taints"].as_array().map_or(0, |t| t.len());
                (!ready || taints > 0)
                    .then(|| format!("{name}: ready={ready} taints={}", n["spec"]["taints"]))
            })
            .collect();
        seen.push(format!(
            "{:>5.1}s: {} nodes, {bad:?}",
            started.elapsed().as_secs_f64(),
            items.len()
        ));
        if items.len() != 3 || !bad.is_empty() {
            break Err(seen.join("\n"));
        }
        if started.elapsed() > Duration::from_secs(120) {
            break Ok(());
        }
        std::thread::sleep(Duration::from_secs(10));
    };
    if let Err(history) = verdict {
        let _ = labtest(&["down"]).output();
        panic!("a node left Ready or was tainted after the restore:\n{history}");
    }

    // `run --attach`: a scenario on the lab that is up - no boot, no restore, seconds.
    let scratch = tempfile::tempdir().expect("temp dir");
    let file = scratch.path().join("attached.toml");
    std::fs::write(
        &file,
        "name = \"attached\"\n[[step]]\nwait = \"node-ready\"\nnode = \"limiting-factor\"\ntimeout = \"1m\"\n\
         [[step]]\nexpect = \"command-output\"\nmachine = \"limiting-factor\"\ncommand = \"hostname\"\ncontains = \"limiting-factor\"\n",
    )
    .expect("writing the scenario file");
    let junit = scratch.path().join("junit.xml");
    let report = scratch.path().join("report");
    let path = |p: &std::path::Path| p.to_str().expect("a UTF-8 temp path").to_string();
    let attached = labtest(&[
        "run",
        "--attach",
        "--scenario-file",
        &path(&file),
        "--report-dir",
        &path(&report),
        "--junit",
        &path(&junit),
    ])
    .timeout(Duration::from_secs(300))
    .output()
    .expect("labtest run --attach");
    let said = String::from_utf8_lossy(&attached.stdout).into_owned();
    let xml = std::fs::read_to_string(&junit).unwrap_or_default();
    let attached_ok = attached.status.success()
        && said.contains("PASSED")
        && !said.contains("== boot ==")
        && xml.contains("name=\"attached\"");
    if !attached_ok {
        let _ = labtest(&["down"]).output();
        panic!(
            "labtest run --attach: expected a passed run of `attached` with no boot:\n{said}{}\nJUnit:\n{xml}",
            String::from_utf8_lossy(&attached.stderr)
        );
    }

    // "Try my change before it touches the real machine": rebuild to a generation, see it in
    // the cluster, roll back, see it gone - on the restored lab, from the CLI.
    let label_of = || {
        node_field(
            "limiting-factor",
            "jsonpath={.metadata.labels.labtest\\.io/generation}",
        )
    };
    let wait_label = |want: &str| {
        let start = std::time::Instant::now();
        loop {
            let seen = label_of();
            if seen == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(240),
                "limiting-factor's labtest.io/generation label: expected {want:?}, saw {seen:?}"
            );
            std::thread::sleep(Duration::from_secs(5));
        }
    };
    let rebuilt = labtest(&["rebuild", "limiting-factor", "--generation", "node-label"])
        .output()
        .expect("labtest rebuild");
    let said = String::from_utf8_lossy(&rebuilt.stdout).into_owned();
    assert!(
        rebuilt.status.success() && said.contains("failed units: none"),
        "labtest rebuild: {said}{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    wait_label("node-label");
    let rolled = labtest(&["rollback", "limiting-factor"])
        .output()
        .expect("labtest rollback");
    assert!(
        rolled.status.success(),
        "labtest rollback: {}{}",
        String::from_utf8_lossy(&rolled.stdout),
        String::from_utf8_lossy(&rolled.stderr)
    );
    wait_label("");

    // SSH and the journal, as an admin between incidents; then the same on a lab restored from
    // a snapshot this lab saved after its key was let in (the restored lab has a key of its
    // own, so the snapshot's authorized_keys hold a stranger's).
    ssh_and_journal(&labtest);
    nginx_answers_from_the_other_machines(&labtest);
    // When this test is the suite's first lab test, this lab booted and saved Ready: this is
    // its second save, which must restore once the lab is down.
    let saved = labtest(&["snapshot", "save", "ssh-e2e"])
        .output()
        .expect("labtest snapshot save");
    let said = String::from_utf8_lossy(&saved.stdout).into_owned();
    let _ = labtest(&["down"]).output();
    assert!(
        saved.status.success(),
        "labtest snapshot save: {said}{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let up = labtest(&["up", "--from", "ssh-e2e"])
        .output()
        .expect("labtest up --from");
    let _ = labtest(&["snapshot", "rm", "ssh-e2e"]).output();
    if !up.status.success() {
        panic!(
            "labtest up --from ssh-e2e failed:\n{}{}",
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr)
        );
    }
    let again = labtest(&[
        "ssh",
        "limiting-factor",
        "--",
        "cat",
        "/root/.ssh/authorized_keys",
    ])
    .timeout(Duration::from_secs(120))
    .output()
    .expect("labtest ssh");
    let keys = String::from_utf8_lossy(&again.stdout).into_owned();
    let _ = labtest(&["down"]).output();
    assert!(
        again.status.success() && keys.lines().filter(|l| l.contains("labtest@")).count() >= 2,
        "ssh into a lab restored from a snapshot made with another key: expected success and \
         both labs' keys in authorized_keys:\n{keys}{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

type Labtest<'a> = &'a dyn Fn(&[&str]) -> Command;

/// What `labtest ssh` and `labtest journal` must do on the fixture lab: one command with its
/// status and output passed through, an interactive session on a pseudo-terminal, the journal
/// (which shows the login was by key), sshd as strict as the NixOS lab's, and a clear error
/// when a machine's sshd is down. Tears the lab down on a failure.
fn ssh_and_journal(labtest: Labtest) {
    let check = |ok: bool, what: &str, out: &std::process::Output| {
        if !ok {
            let _ = labtest(&["down"]).output();
            panic!(
                "{what}: exit {:?}\nstdout: {}\nstderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let run = |args: &[&str]| {
        labtest(args)
            .timeout(Duration::from_secs(120))
            .output()
            .expect("labtest")
    };
    let text = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();

    let one = run(&["ssh", "grey-area", "--", "hostname"]);
    check(
        one.status.success() && text(&one) == "grey-area\n",
        "labtest ssh grey-area -- hostname",
        &one,
    );
    // Several words reach the remote shell word for word; the status comes back.
    let status = run(&[
        "ssh",
        "limiting-factor",
        "--",
        "sh",
        "-c",
        "echo \"it's $(hostname)\"; echo oops >&2; exit 7",
    ]);
    check(
        status.status.code() == Some(7)
            && text(&status) == "it's limiting-factor\n"
            && String::from_utf8_lossy(&status.stderr).contains("oops"),
        "labtest ssh limiting-factor -- sh -c '...; exit 7'",
        &status,
    );
    // Through sshd on the guest's port 22 (the harness's forward), not the guest channel.
    let via = run(&["ssh", "congenital-optimist", "--", "echo $SSH_CONNECTION"]);
    check(
        via.status.success() && text(&via).trim_end().ends_with(" 22"),
        "labtest ssh congenital-optimist: SSH_CONNECTION ending in sshd's port 22",
        &via,
    );
    // sshd as strict as NixOS's services.openssh with vm-configs/services.json.
    let strict = run(&["ssh", "grey-area", "--", "sshd -T"]);
    let effective = text(&strict);
    // `sshd -T` names prohibit-password by its older synonym, without-password.
    for lines in [
        &["passwordauthentication no"][..],
        &["kbdinteractiveauthentication no"],
        &[
            "permitrootlogin without-password",
            "permitrootlogin prohibit-password",
        ],
        &["x11forwarding no"],
    ] {
        check(
            strict.status.success() && effective.lines().any(|l| lines.contains(&l)),
            &format!("sshd -T on grey-area: expected `{}`", lines[0]),
            &strict,
        );
    }

    // Interactive: a login shell on a pseudo-terminal (script(1) gives `labtest ssh` one, as a
    // terminal would), its exit status passed through.
    let labtest_bin = assert_cmd::cargo::cargo_bin("labtest");
    let lab = support::repo_root().join("fixtures/lab");
    let mut script = std::process::Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!(
            "{} --lab {} ssh limiting-factor",
            labtest_bin.display(),
            lab.display()
        ))
        .arg("/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script(1) (util-linux)");
    {
        use std::io::Write;
        let stdin = script.stdin.as_mut().expect("script's stdin");
        stdin
            .write_all(b"tty; echo marker-$((6*7)) $(hostname); exit 3\n")
            .expect("typing into the session");
    }
    // stdin stays open until the session ends: an EOF would end it early.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = script.try_wait().expect("waiting for script") {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = script.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(script.stdin.take());
    let out = script.wait_with_output().expect("script's output");
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    check(
        status.and_then(|s| s.code()) == Some(3)
            && seen.contains("/dev/pts/")
            && seen.contains("marker-42 limiting-factor"),
        "an interactive labtest ssh under a pseudo-terminal: a tty, the command's output, exit 3",
        &out,
    );

    // The journal, as an admin reads it: sshd's shows the logins above were by the lab key.
    let journal = run(&["journal", "grey-area", "sshd.service"]);
    check(
        journal.status.success()
            && text(&journal).contains("Accepted publickey for root from")
            && text(&journal).contains("ED25519"),
        "labtest journal grey-area sshd.service: a key login of root",
        &journal,
    );
    // --follow keeps printing until stopped; here the deadline stops it.
    let follow = run(&[
        "--timeout",
        "15",
        "journal",
        "limiting-factor",
        "kubelet.service",
        "-f",
    ]);
    check(
        follow.status.code() == Some(2)
            && text(&follow).contains("kubelet")
            && String::from_utf8_lossy(&follow.stderr).contains("did not finish within 15s"),
        "labtest journal limiting-factor kubelet.service --follow under --timeout 15",
        &follow,
    );

    // A machine whose sshd is down: a clear error, and ssh works again once it is back.
    let stop = run(&[
        "exec",
        "grey-area",
        "--",
        "systemctl",
        "stop",
        "sshd.service",
    ]);
    check(stop.status.success(), "systemctl stop sshd.service", &stop);
    let refused = run(&["ssh", "grey-area", "--", "true"]);
    let start = run(&[
        "exec",
        "grey-area",
        "--",
        "systemctl",
        "start",
        "sshd.service",
    ]);
    check(
        refused.status.code() == Some(2)
            && String::from_utf8_lossy(&refused.stderr)
                .contains("grey-area has no SSH server answering"),
        "labtest ssh to a machine whose sshd is stopped",
        &refused,
    );
    check(
        start.status.success(),
        "systemctl start sshd.service",
        &start,
    );
    let back = run(&["ssh", "grey-area", "--", "true"]);
    check(
        back.status.success(),
        "labtest ssh once sshd is back",
        &back,
    );
}

/// nginx on grey-area serves the NixOS config's page (vm-configs/services.json) to the other
/// machines, beside Kubernetes.
fn nginx_answers_from_the_other_machines(labtest: Labtest) {
    let services: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(support::repo_root().join("vm-configs/services.json"))
            .expect("vm-configs/services.json"),
    )
    .expect("services.json is JSON");
    let page = services["nginx"]["page"].as_str().expect("nginx.page");
    for machine in ["congenital-optimist", "limiting-factor"] {
        // bash's /dev/tcp: nothing the guest image might lack.
        let out = labtest(&[
            "exec",
            machine,
            "--",
            "timeout 20 bash -c 'exec 3<>/dev/tcp/grey-area/80 && printf \"GET / HTTP/1.0\\r\\nHost: grey-area\\r\\n\\r\\n\" >&3 && cat <&3'",
        ])
        .timeout(Duration::from_secs(60))
        .output()
        .expect("labtest exec curl");
        let answer = String::from_utf8_lossy(&out.stdout).into_owned();
        let served = answer.starts_with("HTTP/1.1 200 OK\r\n")
            // server_tokens off: no version, as nixpkgs' nginx module has it by default.
            && answer.contains("\r\nServer: nginx\r\n")
            && answer.ends_with(&format!("\r\n\r\n{page}"));
        if !(out.status.success() && served) {
            let _ = labtest(&["down"]).output();
            panic!(
                "{machine}: expected grey-area's nginx page {page:?}, got exit {:?}: {answer}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Step back into a failure: a scenario file fails while a worker is partitioned from the
/// master; the run saves the lab at that moment and prints the command that brings it back;
/// `labtest up --from` restores it with the worker still NotReady and the partition still
/// holding, and `heal` then brings the worker back.
#[test]
fn a_failed_scenario_is_kept_and_comes_back_as_it_failed() {
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let scratch = tempfile::tempdir().expect("temp dir");
    let file = scratch.path().join("fails-partitioned.toml");
    std::fs::write(
        &file,
        "name = \"fails-partitioned\"\n\
         [[step]]\nfault = \"partition\"\nmachines = [\"grey-area\", \"limiting-factor\"]\n\
         [[step]]\nwait = \"node-not-ready\"\nnode = \"limiting-factor\"\ntimeout = \"3m\"\n\
         [[step]]\nexpect = \"command-output\"\nmachine = \"limiting-factor\"\ncommand = \"hostname\"\ncontains = \"a-name-it-does-not-have\"\n",
    )
    .expect("writing the scenario file");
    let path = |p: &std::path::Path| p.to_str().expect("a UTF-8 temp path").to_string();
    let junit = scratch.path().join("junit.xml");
    let run = labtest(&[
        "run",
        "--scenario-file",
        &path(&file),
        "--report-dir",
        &path(&scratch.path().join("report")),
        "--junit",
        &path(&junit),
    ])
    .output()
    .expect("labtest run");
    let said = text(&run);
    assert_eq!(run.status.code(), Some(1), "the file must fail:\n{said}");
    let name = said
        .split_whitespace()
        .skip_while(|w| *w != "--from")
        .nth(1)
        .unwrap_or_else(|| panic!("no `up --from NAME` in the summary:\n{said}"))
        .to_string();
    assert!(
        name.starts_with("failed-fails-partitioned-") && said.contains("step back into it"),
        "{said}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap_or_default();
    assert!(
        xml.contains(&format!("up --from {name}")),
        "the JUnit failure names the command too:\n{xml}"
    );

    let restore_started = std::time::Instant::now();
    let up = labtest(&["up", "--from", &name])
        .output()
        .expect("labtest up");
    let restored_in = restore_started.elapsed();
    // The lab goes down and its snapshot out of the store whichever way the test ends.
    let down = || {
        let _ = labtest(&["down"]).output();
        let _ = labtest(&["snapshot", "rm", &name]).output();
    };
    if !up.status.success() {
        down();
        panic!("labtest up --from {name}:\n{}", text(&up));
    }
    println!(
        "up --from {name}: {:.1}s to a lab that answers",
        restored_in.as_secs_f64()
    );
    let ready_of = || {
        node_field(
            "limiting-factor",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        )
    };
    // Still failed, and it stays so: the partition came back with the lab.
    for _ in 0..3 {
        let status = text(&labtest(&["status"]).output().expect("labtest status"));
        let ready = ready_of();
        if ready == "True" || !status.contains("grey-area<->limiting-factor") {
            down();
            panic!("restored failure: expected limiting-factor NotReady behind its partition, saw Ready={ready:?}\n{status}");
        }
        std::thread::sleep(Duration::from_secs(10));
    }
    let healed = labtest(&["heal", "grey-area", "limiting-factor"])
        .output()
        .expect("labtest heal");
    if !healed.status.success() {
        down();
        panic!("labtest heal: {}", text(&healed));
    }
    let started = std::time::Instant::now();
    loop {
        let ready = ready_of();
        if ready == "True" {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            down();
            panic!("after heal, limiting-factor: expected Ready within 180s, last saw {ready:?}");
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    down();
}
