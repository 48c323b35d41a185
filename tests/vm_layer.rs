//! Tier 2: the VM layer on real QEMU (TCG here) with the fixture guest: a lab of three machines,
//! commands, the lab network with partitions, and every fault the layer offers.
mod support;

use std::time::{Duration, Instant};

use harness::error::Chain;
use harness::events::{EventKind, Events};
use harness::lab::{Lab, LabBuilder};
use harness::ready::{ReadyLab, Snapshots};
use harness::vm::{Machine, MachineBuilder, VmError};
use harness::wait::Wait;

fn wait(what: &str, secs: u64) -> Wait {
    Wait::new(what, Duration::from_secs(secs), Duration::from_millis(250))
}

async fn ping(lab: &Lab, from: &str, to: &str) -> bool {
    let machine = lab.machine(from).unwrap();
    let out = machine
        .exec(&format!("ping -c1 -W2 {to}"), Duration::from_secs(10))
        .await
        .unwrap();
    out.status == 0
}

async fn start_lab(events: &Events) -> Lab {
    LabBuilder::new(support::vm_spec(), support::run_dir())
        .boot_timeout(Duration::from_secs(240))
        .start(events)
        .await
        .expect("the fixture lab boots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_machines_run_commands_and_share_a_partitionable_network() {
    let events = Events::new();
    let recorder = events.record();
    let lab = start_lab(&events).await;
    let ga = lab.machine("grey-area").unwrap();

    // Exit codes, stdout, stderr.
    let out = ga
        .exec("echo out; echo err >&2; exit 3", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (
            out.status,
            out.stdout_str().as_str(),
            out.stderr_str().as_str()
        ),
        (3, "out\n", "err\n")
    );
    for machine in lab.machines() {
        let name = machine.succeed("hostname").await.unwrap();
        assert_eq!(name.trim(), machine.name());
    }
    // Large output arrives intact.
    let out = ga
        .exec(
            "head -c 1000000 /dev/zero | tr '\\0' x",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), 1_000_000);
    assert!(out.stdout.iter().all(|b| *b == b'x'));
    // Failing commands say what they ran and what came back.
    let err = ga.succeed("echo nope >&2; false").await.unwrap_err();
    assert!(
        matches!(err, VmError::CommandFailed { status: 1, .. }),
        "{err}"
    );
    assert!(Chain(&err).to_string().contains("nope"), "{err}");
    assert_eq!(
        ga.fail("echo refused >&2; exit 3").await.unwrap(),
        "refused\n"
    );
    let err = ga.fail("echo yes").await.unwrap_err();
    assert!(
        matches!(err, VmError::CommandSucceeded { .. }) && Chain(&err).to_string().contains("yes"),
        "{err}"
    );

    // Every pair talks over the lab network, by name from /etc/hosts.
    for (a, b) in [
        ("grey-area", "congenital-optimist"),
        ("congenital-optimist", "limiting-factor"),
        ("limiting-factor", "grey-area"),
    ] {
        assert!(ping(&lab, a, b).await, "{a} cannot reach {b}");
    }

    // A partition cuts exactly one pair.
    lab.partition("grey-area", "limiting-factor").unwrap();
    assert!(!ping(&lab, "grey-area", "limiting-factor").await);
    assert!(!ping(&lab, "limiting-factor", "grey-area").await);
    assert!(ping(&lab, "grey-area", "congenital-optimist").await);
    assert!(ping(&lab, "congenital-optimist", "limiting-factor").await);
    lab.heal("grey-area", "limiting-factor").unwrap();
    assert!(ping(&lab, "grey-area", "limiting-factor").await);
    assert!(lab.partitions().is_empty());

    // A command that overruns its deadline is killed; the channel stays usable.
    let start = Instant::now();
    let err = ga
        .exec("sleep 300", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        Chain(&err).to_string().contains("no reply within 2.0s"),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(ga.succeed("echo alive").await.unwrap(), "alive\n");

    // Files in and out through the shared dir.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ga.copy_in(&data, "/root/blob", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        ga.copy_out("/root/blob", Duration::from_secs(30))
            .await
            .unwrap(),
        data
    );

    // Waits: unit, port, console text; each fails clearly.
    ga.wait_for_unit("systemd-journald.service", &wait("journald", 30))
        .await
        .unwrap();
    let err = ga
        .wait_for_unit(
            "labtest-no-such.service",
            &wait("a unit that never starts", 3),
        )
        .await
        .unwrap_err();
    assert!(
        Chain(&err)
            .to_string()
            .contains("labtest-no-such.service is inactive"),
        "{err}"
    );
    ga.succeed("systemd-run --unit=labtest-fails false")
        .await
        .unwrap();
    let err = ga
        .wait_for_unit("labtest-fails.service", &wait("a failing unit", 60))
        .await
        .unwrap_err();
    assert!(
        Chain(&err).to_string().contains("gave up"),
        "a failed unit ends the wait at once: {err}"
    );
    let health = ga.health_evidence().await;
    assert!(
        health.contains("=== labtest-fails.service")
            && health.contains("status=1/FAILURE")
            && health.contains("=== load"),
        "the health evidence names the failed unit, its status and the load: {health}"
    );
    let err = ga
        .wait_for_port(7777, &wait("port 7777", 2))
        .await
        .unwrap_err();
    assert!(Chain(&err).to_string().contains("last observed"), "{err}");
    ga.succeed("nohup nc -lk -p 7777 >/dev/null 2>&1 </dev/null & disown")
        .await
        .unwrap();
    ga.wait_for_port(7777, &wait("port 7777", 30))
        .await
        .unwrap();
    ga.wait_for_console_text("labtest-shell: labtest.shell ready", &wait("console", 5))
        .await
        .unwrap();
    // Each of those waits was reported as a check of the machine's scope, failures with why.
    let checks: Vec<(String, String, String)> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::CheckPassed { scope, check, .. } => Some((scope, check, "passed".into())),
            EventKind::CheckFailed {
                scope,
                check,
                reason,
                ..
            } => Some((scope, check, reason)),
            _ => None,
        })
        .collect();
    let outcome = |check: &str| {
        checks
            .iter()
            .filter(|(scope, c, _)| scope == "grey-area" && c == check)
            .map(|(_, _, outcome)| outcome.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(outcome("journald"), ["passed"], "{checks:?}");
    assert_eq!(outcome("console"), ["passed"], "{checks:?}");
    assert!(
        outcome("a failing unit")
            .first()
            .is_some_and(|reason| reason.contains("labtest-fails.service failed")),
        "{checks:?}"
    );
    assert_eq!(outcome("port 7777").len(), 2, "{checks:?}");

    // Freeze: a command on a frozen machine is refused at once, saying why; thaw, and
    // everything answers again.
    let co = lab.machine("congenital-optimist").unwrap();
    co.freeze().await.unwrap();
    assert_eq!(co.qmp_status().await.unwrap(), "paused");
    let asked = Instant::now();
    let err = co.exec("true", Duration::from_secs(30)).await.unwrap_err();
    assert!(Chain(&err).to_string().contains("is frozen"), "{err}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    // What the evidence of a guest that does not answer shows: where each vCPU is.
    let vcpus = co.cpu_state().await.unwrap();
    assert!(
        vcpus.contains("(qemu) info cpus") && vcpus.contains("RIP="),
        "{vcpus}"
    );
    co.thaw().await.unwrap();
    assert_eq!(co.succeed("echo thawed").await.unwrap(), "thawed\n");
    // A command that is running when the machine freezes holds only the shell channel: status
    // and thaw still answer within a second, and the command then completes.
    let pending = {
        let co = co.clone();
        tokio::spawn(async move { co.exec("sleep 2; echo done", Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    co.freeze().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (what, took) in [
        ("status", {
            let t = Instant::now();
            assert_eq!(co.qmp_status().await.unwrap(), "paused");
            t.elapsed()
        }),
        ("thaw", {
            let t = Instant::now();
            co.thaw().await.unwrap();
            t.elapsed()
        }),
    ] {
        assert!(
            took < Duration::from_secs(1),
            "{what} took {took:?} behind a pending exec"
        );
    }
    let out = pending.await.unwrap().unwrap();
    assert_eq!(out.stdout_str(), "done\n");

    // Power loss, then a fresh boot from the same disk that rejoins the network.
    let lf = lab.machine("limiting-factor").unwrap();
    let first_boot = lf.boot_id().unwrap();
    lf.succeed("echo kept > /root/mark; sync").await.unwrap();
    lf.crash().await.unwrap();
    assert!(!lf.is_running());
    assert!(lf.exec("true", Duration::from_secs(1)).await.is_err());
    let boot = lf.start().await.unwrap();
    assert_ne!(boot.boot_id, first_boot);
    assert_eq!(lf.succeed("cat /root/mark").await.unwrap(), "kept\n");
    assert!(ping(&lab, "limiting-factor", "grey-area").await);

    // Reboot with automatic reconnect onto the new boot.
    let before = co.boot_id().unwrap();
    let boot = co.reboot(Duration::from_secs(180)).await.unwrap();
    assert_ne!(boot.boot_id, before);
    assert_eq!(co.succeed("echo back").await.unwrap(), "back\n");

    // Link down through QMP cuts a machine from everyone.
    co.set_link(false).await.unwrap();
    assert!(!ping(&lab, "grey-area", "congenital-optimist").await);
    co.set_link(true).await.unwrap();
    assert!(ping(&lab, "grey-area", "congenital-optimist").await);

    // Graceful shutdown ends QEMU.
    co.shutdown(Duration::from_secs(90)).await.unwrap();
    assert!(!co.is_running());

    let state = lab.state_dir().unwrap().to_path_buf();
    drop(lab);
    assert!(!state.exists(), "the state dir is removed");
    assert!(support::qemu_processes_mentioning(&state.to_string_lossy()).is_empty());
}

#[tokio::test]
async fn a_missing_run_script_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = MachineBuilder::new(
        "ghost",
        dir.path().join("bin/run-ghost-vm"),
        dir.path().join("state"),
    )
    .start(&Events::discard())
    .await
    .err()
    .expect("no machine without a run script");
    assert!(matches!(err, VmError::NoRunScript { .. }), "{err}");
    assert!(
        Chain(&err)
            .to_string()
            .contains("run-ghost-vm does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn a_run_script_that_exits_at_once_is_reported_with_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("run-broken-vm");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'qemu: could not load kernel' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let start = Instant::now();
    let err = MachineBuilder::new("broken", &script, dir.path().join("state"))
        .boot_timeout(Duration::from_secs(30))
        .start(&Events::discard())
        .await
        .err()
        .expect("the machine cannot start");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    let text = Chain(&err).to_string();
    assert!(matches!(err, VmError::Exited { .. }), "{text}");
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(text.contains("could not load kernel"), "{text}");
}

#[tokio::test]
async fn a_guest_that_never_answers_times_out_with_its_console() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let err = MachineBuilder::new(
        "grey-area",
        support::run_dir().join("bin/run-grey-area-vm"),
        dir.path().join("state"),
    )
    .kernel_params("systemd.mask=labtest-shell@labtest.shell.service")
    .boot_timeout(Duration::from_secs(40))
    .start(&Events::discard())
    .await
    .err()
    .expect("the guest channel never answers");
    let text = Chain(&err).to_string();
    assert!(
        start.elapsed() < Duration::from_secs(50),
        "took {:?}",
        start.elapsed()
    );
    assert!(text.contains("did not answer within 40s"), "{text}");
    assert!(text.contains("console.log"), "{text}");
    assert!(support::qemu_processes_mentioning(&dir.path().to_string_lossy()).is_empty());
}

/// A generation the guest's store lacks (it sees its own store image, not the host's store) is
/// copied in the way deploy tools copy a closure - `nix-store --export` on the host, `--import`
/// in the guest - and becomes a valid, activatable system there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_missing_from_the_guest_store_is_copied_in_and_switched_to() {
    use harness::nix::{Nix, SystemProfile};
    let lab = support::repo_root().join("tests/labs/vm-only");
    support::script_output(&lab.join("prepare.sh"), &[], &[]);
    let state = tempfile::tempdir().expect("temp dir");
    let machine = MachineBuilder::new(
        "grey-area",
        lab.join("local/bin/run-grey-area-vm"),
        state.path().join("grey-area"),
    )
    .boot_timeout(Duration::from_secs(240))
    .start(&Events::discard())
    .await
    .expect("a guest with a store image boots");

    // A toplevel built now, so no image can hold it: the nix layer's fixture with a fresh nonce.
    let flake = tempfile::tempdir().expect("temp dir");
    let src = support::repo_root().join("harness/tests/nix-fixture");
    for file in ["flake.nix", "toplevel-builder.sh"] {
        std::fs::copy(src.join(file), flake.path().join(file)).expect("copy the fixture flake");
    }
    let nonce = format!("\"vm-layer-{}-{:?}\"\n", std::process::id(), Instant::now());
    std::fs::write(flake.path().join("nonce.nix"), nonce).expect("nonce");
    let nix = Nix::find().expect("nix").for_debian_single_user();
    let built = nix
        .build(
            &format!("path:{}", flake.path().display()),
            &["gen1"],
            &state.path().join("out"),
            Duration::from_secs(300),
            |_| {},
        )
        .await
        .expect("build gen1");
    let toplevel = built[0].to_string_lossy().into_owned();
    let absent = machine
        .exec(&format!("test -e {toplevel}"), Duration::from_secs(10))
        .await
        .expect("ask the guest");
    assert_ne!(absent.status, 0, "the guest already has {toplevel}");

    let profile = SystemProfile::at("/root/labtest-profile", "/root/labtest-current");
    let activation = profile
        .switch_to(&nix, &machine, &built[0])
        .await
        .expect("copy the closure in and switch");
    assert_eq!(activation.toplevel, toplevel);
    machine
        .succeed(&format!("nix-store --check-validity {toplevel} && test -x {toplevel}/bin/switch-to-configuration"))
        .await
        .expect("the copied closure is valid in the guest's store");
    let gens = profile
        .list_generations(&machine)
        .await
        .expect("generations");
    assert_eq!(gens.len(), 1, "{gens:?}");
    assert_eq!(gens[0].toplevel.as_deref(), Some(toplevel.as_str()));
}

/// A caller that stops waiting for a command (a deadline around it, Ctrl-C) must not leave it
/// running, nor leave its reply for the next command to read as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_caller_gave_up_is_killed_and_its_reply_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let machine = MachineBuilder::new(
        "grey-area",
        support::run_dir().join("bin/run-grey-area-vm"),
        dir.path().join("state"),
    )
    .boot_timeout(Duration::from_secs(240))
    .start(&Events::discard())
    .await
    .expect("the fixture guest boots");
    let given_up = tokio::time::timeout(
        Duration::from_secs(2),
        machine.exec("echo first; sleep 300; echo done", Duration::from_secs(600)),
    )
    .await;
    assert!(
        given_up.is_err(),
        "expected the wait to be cut off: {given_up:?}"
    );
    let start = Instant::now();
    let out = machine.succeed("echo next").await.unwrap();
    assert_eq!(out, "next\n");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the abandoned command was waited for: {:?}",
        start.elapsed()
    );
}

/// A machine whose guest channel never answers (its shell masked): QEMU runs, the start fails.
fn mute_machine(state: &std::path::Path) -> Machine {
    let config = MachineBuilder::new(
        "grey-area",
        support::run_dir().join("bin/run-grey-area-vm"),
        state,
    )
    .kernel_params("systemd.mask=labtest-shell@labtest.shell.service")
    .config();
    Machine::new(config, Events::discard()).unwrap()
}

/// A start that fails after QEMU is spawned must not leave QEMU running behind a machine that
/// no longer talks to it (exec would say "is off", start "already running").
#[tokio::test]
async fn a_start_that_fails_after_the_spawn_leaves_no_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let machine = mute_machine(&dir.path().join("state"));
    let err = machine
        .start_by(Instant::now() + Duration::from_secs(5))
        .await
        .expect_err("the guest never answers");
    assert!(
        Chain(&err).to_string().contains("did not answer within 5s"),
        "{err}"
    );
    assert!(!machine.is_running(), "QEMU still runs after: {err}");
    assert!(support::qemu_processes_mentioning(&dir.path().to_string_lossy()).is_empty());
}

/// The same for a start whose caller stops waiting (a deadline around it, Ctrl-C).
#[tokio::test]
async fn a_start_dropped_before_the_guest_answers_leaves_no_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let machine = mute_machine(&dir.path().join("state"));
    let start = machine.start_by(Instant::now() + Duration::from_secs(240));
    let dropped = tokio::time::timeout(Duration::from_secs(3), start).await;
    assert!(
        dropped.is_err(),
        "expected the start to be cut off: {dropped:?}"
    );
    assert!(!machine.is_running(), "QEMU still runs");
    assert!(support::qemu_processes_mentioning(&dir.path().to_string_lossy()).is_empty());
}

/// The sampler runs from the moment a lab is up: within ~20 s of a one-machine lab there are
/// host samples of its QEMU (busy and waking under TCG, so above zero, with its vCPU threads)
/// and a guest sample with the guest's busiest processes - and sampling costs well under 2 % of
/// a core on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_lab_is_sampled_on_the_host_and_in_the_guest() {
    let spec = support::vm_spec();
    let one = harness::lab::LabSpec {
        machines: spec.machines[..1].to_vec(),
        ..spec
    };
    let events = Events::new();
    let recorder = events.record();
    let lab = LabBuilder::new(one, support::run_dir())
        .boot_timeout(Duration::from_secs(240))
        .start(&events)
        .await
        .expect("a one-machine lab boots");
    let sampled = || {
        let events = recorder.events();
        let host = events.iter().any(|e| {
            matches!(&e.kind, EventKind::MachineSample { host, .. }
                if host.cpu_pct > 0.0 && !host.vcpu_pct.is_empty() && host.rss_mib > 0.0
                    && host.wakeups_per_sec > 0.0
                    && host.vcpu_wakeups_per_sec.len() == host.vcpu_pct.len())
        });
        let guest = events.iter().any(|e| {
            matches!(&e.kind, EventKind::MachineSample { guest: Some(g), .. } if !g.top.is_empty())
        });
        host && guest
    };
    let start = Instant::now();
    while !sampled() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no host and guest samples within 60 s: {:?}",
            recorder
                .events()
                .iter()
                .filter(|e| matches!(
                    e.kind,
                    EventKind::MachineSample { .. } | EventKind::HostSample(_)
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let events = recorder.events();
    for e in &events {
        match &e.kind {
            EventKind::MachineSample { machine, guest, .. } => {
                assert_eq!(machine, "grey-area");
                if let Some(g) = guest {
                    assert!(g.cost_pct < 2.0, "the guest half costs {g:?}");
                }
            }
            EventKind::HostSample(h) => {
                assert!(h.sampler_pct < 2.0, "the host half costs {h:?}");
                assert!(
                    h.cpus_allowed >= 1 && h.cpus_allowed <= h.cpus_online,
                    "{h:?}"
                );
            }
            _ => {}
        }
    }
    // What a failure's evidence would carry.
    let evidence = harness::report::cpu::evidence_text(&lab.recent_samples());
    assert!(evidence.contains("grey-area"), "{evidence}");
}

/// `ReadyLab::shutdown` returns once no QEMU of the lab is left, with each console log kept in
/// the report dir, and returns what went wrong where drop could only print it: here a
/// console log with nowhere to go (a file where its directory belongs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_lab_shut_down_says_which_console_log_it_could_not_keep_and_leaves_no_qemu() {
    let report = tempfile::tempdir().unwrap();
    let lab = ReadyLab::from_dir(support::repo_root().join("tests/labs/vm-only"))
        .snapshots(Snapshots::Off)
        .report_dir(report.path())
        .events(Events::discard())
        .start()
        .await
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let state = lab.lab().state_dir().expect("a state dir").to_path_buf();
    let machines = report.path().join("machines");
    std::fs::create_dir_all(&machines).unwrap();
    std::fs::write(machines.join("grey-area"), "in the way").unwrap();

    let err = lab
        .shutdown()
        .await
        .expect_err("grey-area's log cannot be kept");
    let text = Chain(&err).to_string();
    assert!(
        text.contains("could not keep grey-area's console log"),
        "{text}"
    );
    assert!(support::qemu_processes_mentioning(&state.to_string_lossy()).is_empty());
    assert!(
        !state.exists(),
        "the state dir is left: {}",
        state.display()
    );
    assert!(machines.join("limiting-factor/console.log").is_file());
}
