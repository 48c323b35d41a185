//! Hand-written runs for the snapshot tests. Times are fixed so every rendering is
//! deterministic; the runs cover each way a scenario can end.
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use crate::events::{
    Event, EventKind, GuestUse, HostUse, Measured, Outcome, Phase, ProcessUse, QemuUse, Stream,
};
use crate::fault::Fault;

const SCENARIOS: [&str; 3] = ["pod-scheduling", "node-failure", "rebuild-rollback"];
/// Every run starts at the same wall-clock time, 2026-12-03T05:36:00.250Z, so snapshots hold.
const STARTED_AT_MS: u64 = 1_796_276_160_250;

struct Run(Vec<Event>);

/// One machine at one host tick: its QEMU's CPU %, and its guest sample (or why it is missing)
/// when one was due.
type MachineTick<'a> = (&'a str, f64, Option<Result<GuestUse, &'a str>>);

impl Run {
    fn new(lab: &str) -> Self {
        let mut run = Run(Vec::new());
        run.at(
            0,
            EventKind::RunStarted {
                lab: lab.into(),
                scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
                started_at: Some(crate::utc::rfc3339(
                    UNIX_EPOCH + Duration::from_millis(STARTED_AT_MS),
                )),
            },
        );
        run.at(
            0,
            EventKind::Artifact {
                path: "/tmp/labtest/run-1".into(),
                what: crate::report::ARTIFACTS_FOLDER.into(),
            },
        );
        run
    }

    fn at(&mut self, ms: u64, kind: EventKind) -> &mut Self {
        self.0.push(Event {
            elapsed: Duration::from_millis(ms),
            kind,
        });
        self
    }

    fn phase(&mut self, ms: u64, phase: Phase) -> &mut Self {
        self.at(ms, EventKind::Phase { phase })
    }

    /// Build, boot three machines and pass the readiness gate: 0 s to 60 s.
    fn lab_up(&mut self) -> &mut Self {
        self.phase(0, Phase::Build);
        self.at(
            30_000,
            EventKind::BuildProgress {
                what: ".#vm".into(),
                done: 3,
                expected: 3,
                running: vec![],
                downloads_done: 0,
                downloads_expected: 0,
            },
        );
        self.phase(30_000, Phase::Boot);
        let machines = ["grey-area", "congenital-optimist", "limiting-factor"];
        for m in machines {
            self.at(30_000, EventKind::MachineStarting { machine: m.into() });
        }
        for (i, m) in machines.iter().enumerate() {
            self.at(
                40_000 + 1_000 * i as u64,
                EventKind::MachineUp {
                    machine: m.to_string(),
                    boot_time: Duration::from_millis(10_000 + 1_000 * i as u64),
                },
            );
        }
        self.phase(42_000, Phase::Readiness);
        self.check_passes(42_000, "readiness", "apiserver /readyz", 5_000);
        self.check_passes(47_000, "readiness", "all nodes Ready", 13_000);
        self.phase(60_000, Phase::Scenario)
    }

    fn check_passes(&mut self, ms: u64, scope: &str, check: &str, took: u64) -> &mut Self {
        self.check_passed(ms, scope, check, took, 120, None)
    }

    /// A check that passes `took` ms after it starts, measuring its delay from `since`, which
    /// happened at `ms`.
    fn check_measured(
        &mut self,
        ms: u64,
        scope: &str,
        check: &str,
        took: u64,
        since: &str,
    ) -> &mut Self {
        let measured = Measured {
            since: since.into(),
            delay: Duration::from_millis(took),
            budget: Duration::from_secs(180),
        };
        self.check_passed(ms, scope, check, took, 180, Some(measured))
    }

    fn check_passed(
        &mut self,
        ms: u64,
        scope: &str,
        check: &str,
        took: u64,
        timeout_secs: u64,
        measured: Option<Measured>,
    ) -> &mut Self {
        self.at(
            ms,
            EventKind::CheckStarted {
                scope: scope.into(),
                check: check.into(),
                timeout: Duration::from_secs(timeout_secs),
            },
        );
        self.at(
            ms + took,
            EventKind::CheckPassed {
                scope: scope.into(),
                check: check.into(),
                took: Duration::from_millis(took),
                measured,
            },
        )
    }

    fn check_fails(&mut self, ms: u64, scope: &str, check: &str, reason: &str) -> &mut Self {
        self.at(
            ms,
            EventKind::CheckFailed {
                scope: scope.into(),
                check: check.into(),
                reason: reason.into(),
                observed: Some(format!("{check}: not yet")),
                evidence: vec![PathBuf::from(format!(
                    "/tmp/labtest/run-1/kube/{scope}.txt"
                ))],
                took: Duration::from_secs(30),
                measured: None,
            },
        )
    }

    fn output(
        &mut self,
        ms: u64,
        scope: &str,
        step: &str,
        stream: Stream,
        text: &str,
    ) -> &mut Self {
        self.at(
            ms,
            EventKind::StepOutput {
                scope: scope.into(),
                step: step.into(),
                stream,
                text: text.into(),
            },
        )
    }

    fn scenario(&mut self, ms: u64, name: &str, attempt: u32) -> &mut Self {
        self.at(
            ms,
            EventKind::ScenarioStarted {
                scenario: name.into(),
                attempt,
            },
        )
    }

    fn finished(
        &mut self,
        ms: u64,
        name: &str,
        attempt: u32,
        outcome: Outcome,
        took: u64,
        message: Option<&str>,
    ) -> &mut Self {
        self.at(
            ms,
            EventKind::ScenarioFinished {
                scenario: name.into(),
                attempt,
                outcome,
                took: Duration::from_millis(took),
                message: message.map(str::to_string),
            },
        )
    }

    /// A host tick: `machine` samples (`grey-area` 2 vCPUs, the others 1), then the host's.
    fn sample(&mut self, ms: u64, machines: &[MachineTick]) -> &mut Self {
        for (machine, pct, guest) in machines {
            let vcpus = if *machine == "grey-area" { 2 } else { 1 };
            let (guest, guest_missing) = match guest {
                Some(Ok(g)) => (Some(g.clone()), None),
                Some(Err(why)) => (None, Some(why.to_string())),
                None => (None, None),
            };
            self.at(
                ms,
                EventKind::MachineSample {
                    machine: machine.to_string(),
                    host: QemuUse {
                        cpu_pct: *pct,
                        vcpu_pct: vec![(pct * 0.9 / f64::from(vcpus)).round(); vcpus as usize],
                        rss_mib: 812.0,
                        wakeups_per_sec: (pct * 13.0).round(),
                        vcpu_wakeups_per_sec: vec![(pct * 4.0).round(); vcpus as usize],
                    },
                    guest,
                    guest_missing,
                },
            );
        }
        self.at(
            ms,
            EventKind::HostSample(HostUse {
                steal_pct: 0.4,
                cpus_allowed: 1,
                cpus_online: 2,
                confined_to: Some(1),
                sampler_pct: 0.2,
            }),
        )
    }

    fn end(&mut self, ms: u64, aborted: Option<&str>) -> Vec<Event> {
        if aborted.is_none() {
            self.phase(ms, Phase::Teardown);
        }
        self.at(
            ms + 2_000,
            EventKind::RunFinished {
                aborted: aborted.map(str::to_string),
            },
        );
        std::mem::take(&mut self.0)
    }
}

/// pod-scheduling passes; node-failure fails two checks; rebuild-rollback fails once then
/// passes (flaky).
pub fn mixed_run() -> Vec<Event> {
    let mut run = Run::new(".");
    run.lab_up();
    run.at(
        60_000,
        EventKind::SnapshotSaved {
            snapshot: "ready".into(),
            took: Duration::from_millis(2_400),
            bytes: 2_400 << 20,
        },
    );
    run.scenario(60_000, "pod-scheduling", 1)
        .check_passes(60_500, "pod-scheduling", "pods Running on 2 nodes", 8_000)
        .finished(72_300, "pod-scheduling", 1, Outcome::Passed, 12_300, None);
    run.at(
        72_300,
        EventKind::SnapshotRestored {
            snapshot: "ready".into(),
            took: Duration::from_millis(3_100),
        },
    );
    run.scenario(72_300, "node-failure", 1)
        .at(
            73_000,
            EventKind::FaultInjected {
                fault: Fault::LinkDown {
                    machine: "limiting-factor".into(),
                },
            },
        )
        .check_measured(73_000, "node-failure", "node NotReady", 41_000, "link-down")
        .output(
            114_000,
            "node-failure",
            "taint node.kubernetes.io/unreachable",
            Stream::Stdout,
            "Taints: <none>\n",
        )
        .output(
            114_000,
            "node-failure",
            "taint node.kubernetes.io/unreachable",
            Stream::Stderr,
            "warning: node limiting-factor lease expired\n",
        )
        .check_fails(
            144_000,
            "node-failure",
            "taint node.kubernetes.io/unreachable",
            "timed out after 30.0s",
        )
        .output(
            144_500,
            "node-failure",
            "pod without toleration evicted",
            Stream::Stdout,
            "pod/evict-me 1/1 Running\n",
        )
        .check_fails(
            174_500,
            "node-failure",
            "pod without toleration evicted",
            "timed out after 30.0s",
        )
        .at(
            174_600,
            EventKind::FailureKept {
                scenario: "node-failure".into(),
                snapshot: "failed-node-failure-20261207T174000Z".into(),
                restore:
                    "labtest --lab fixtures/lab up --from failed-node-failure-20261207T174000Z"
                        .into(),
                took: Duration::from_millis(1_600),
                bytes: 1_700 << 20,
            },
        )
        .finished(
            175_000,
            "node-failure",
            1,
            Outcome::Failed,
            102_700,
            Some("2 checks failed"),
        );
    run.scenario(175_000, "rebuild-rollback", 1)
        .phase(175_000, Phase::Build)
        .phase(190_000, Phase::Boot)
        .check_fails(
            220_000,
            "rebuild-rollback",
            "new generation booted",
            "boot_id unchanged",
        )
        .finished(
            221_000,
            "rebuild-rollback",
            1,
            Outcome::Failed,
            46_000,
            Some("1 check failed"),
        )
        .phase(221_000, Phase::Scenario)
        .scenario(221_000, "rebuild-rollback", 2)
        .check_passes(221_000, "rebuild-rollback", "new generation booted", 40_000)
        .finished(
            266_000,
            "rebuild-rollback",
            2,
            Outcome::Passed,
            45_000,
            None,
        );
    run.end(266_000, None)
}

/// Everything passes on the first attempt.
pub fn passed_run() -> Vec<Event> {
    let mut run = Run::new(".");
    run.lab_up();
    let mut t = 60_000;
    for (i, name) in SCENARIOS.iter().enumerate() {
        let took = 10_000 + 5_000 * i as u64;
        run.scenario(t, name, 1)
            .finished(t + took, name, 1, Outcome::Passed, took, None);
        t += took;
    }
    run.end(t, None)
}

/// pod-scheduling errors (harness lost the guest channel); node-failure fails on both
/// attempts; rebuild-rollback passes.
pub fn error_run() -> Vec<Event> {
    let mut run = Run::new("fixtures/lab");
    run.at(
        0,
        EventKind::Warning {
            message: "KVM unusable, using TCG: ~10x slower".into(),
        },
    );
    run.lab_up();
    run.scenario(60_000, "pod-scheduling", 1).finished(
        61_000,
        "pod-scheduling",
        1,
        Outcome::Error,
        1_000,
        Some("guest channel of grey-area closed"),
    );
    for attempt in 1..=2 {
        let t = 61_000 + 40_000 * (attempt as u64 - 1);
        run.scenario(t, "node-failure", attempt)
            .check_fails(
                t + 30_000,
                "node-failure",
                "node NotReady",
                "timed out after 30.0s",
            )
            .finished(
                t + 40_000,
                "node-failure",
                attempt,
                Outcome::Failed,
                40_000,
                Some("1 check failed"),
            );
    }
    run.scenario(141_000, "rebuild-rollback", 1).finished(
        200_000,
        "rebuild-rollback",
        1,
        Outcome::Passed,
        59_000,
        None,
    );
    run.end(200_000, None)
}

fn guest(user: f64, top: &[(&str, f64)]) -> GuestUse {
    GuestUse {
        user,
        system: 53.0,
        iowait: 1.5,
        steal: 0.0,
        load1: 2.5,
        mem_avail_mib: 301.0,
        top: top
            .iter()
            .map(|(comm, pct)| ProcessUse {
                comm: comm.to_string(),
                pct: *pct,
            })
            .collect(),
        cost_pct: 0.3,
    }
}

/// Every scenario passes on a lab confined to one host CPU (LABTEST_HOST_CPUS=1) for three vCPUs,
/// sampled every 3 s from 45 s to 72 s; the guests' samples come every 15 s, one of them missing
/// (a frozen machine).
pub fn sampled_run() -> Vec<Event> {
    let mut run = Run::new("fixtures/lab");
    run.at(
        30_000,
        EventKind::Warning {
            message:
                "the lab's QEMUs are confined to 1 host CPU (LABTEST_HOST_CPUS): expect it slower"
                    .into(),
        },
    );
    run.lab_up();
    let ga = |user| {
        guest(
            user,
            &[("kube-apiserver", 19.0), ("kubelet", 18.5), ("etcd", 7.0)],
        )
    };
    let lf = guest(12.0, &[("kubelet", 9.0), ("containerd", 2.5)]);
    for (i, t) in (45_000..=72_000).step_by(3_000).enumerate() {
        let due = i % 5 == 1;
        let (g, l) = match (due, i) {
            (false, _) => (None, None),
            (true, 1) => (Some(Ok(ga(42.0))), Some(Ok(lf.clone()))),
            (true, _) => (
                Some(Ok(ga(46.0))),
                Some(Err("is frozen (its CPUs are paused)")),
            ),
        };
        run.sample(
            t,
            &[
                ("grey-area", 69.0 + i as f64, g),
                ("limiting-factor", 25.0, l),
            ],
        );
    }
    for (i, name) in SCENARIOS.iter().enumerate() {
        let t = 60_000 + 15_000 * i as u64;
        run.scenario(t, name, 1)
            .finished(t + 15_000, name, 1, Outcome::Passed, 15_000, None);
    }
    let mut events = run.end(105_000, None);
    // In time order, as a run emits them.
    events.sort_by_key(|e| e.elapsed);
    events
}

/// The readiness gate fails: no scenario runs.
pub fn aborted_run() -> Vec<Event> {
    let mut run = Run::new(".");
    run.phase(0, Phase::Boot)
        .at(
            0,
            EventKind::MachineStarting {
                machine: "grey-area".into(),
            },
        )
        .at(
            10_000,
            EventKind::MachineUp {
                machine: "grey-area".into(),
                boot_time: Duration::from_secs(10),
            },
        )
        .phase(10_000, Phase::Readiness)
        .check_fails(
            130_000,
            "readiness",
            "apiserver /readyz",
            "timed out after 2m00s",
        )
        .check_fails(130_000, "readiness", "etcd healthy", "etcd.service failed")
        .phase(130_000, Phase::Teardown);
    run.end(131_000, Some("the lab never became ready"))
}

/// One event of every kind, in a plausible order.
pub fn every_kind() -> Vec<Event> {
    let mut run = Run::new(".");
    run.phase(0, Phase::Build)
        .at(
            5_000,
            EventKind::BuildProgress {
                what: ".#vm".into(),
                done: 12,
                expected: 40,
                running: vec!["linux-6.6".into(), "kubernetes-1.29".into()],
                downloads_done: 3,
                downloads_expected: 10,
            },
        )
        .at(
            6_000,
            EventKind::BuildProgress {
                what: ".#vm".into(),
                done: 0,
                expected: 0,
                running: vec![],
                downloads_done: 0,
                downloads_expected: 0,
            },
        )
        .at(
            6_000,
            EventKind::Warning {
                message: "KVM unusable, using TCG: ~10x slower".into(),
            },
        )
        .at(
            6_500,
            EventKind::SnapshotSaved {
                snapshot: "ready".into(),
                took: Duration::from_millis(2_400),
                bytes: 2_400 << 20,
            },
        )
        .at(
            6_600,
            EventKind::SnapshotRestored {
                snapshot: "ready".into(),
                took: Duration::from_millis(3_100),
            },
        )
        .at(
            7_000,
            EventKind::MachineStarting {
                machine: "grey-area".into(),
            },
        )
        .sample(
            7_500,
            &[(
                "grey-area",
                88.0,
                Some(Ok(guest(40.0, &[("systemd", 12.0)]))),
            )],
        )
        .at(
            21_700,
            EventKind::MachineUp {
                machine: "grey-area".into(),
                boot_time: Duration::from_millis(14_700),
            },
        )
        .at(
            22_000,
            EventKind::CheckStarted {
                scope: "readiness".into(),
                check: "apiserver /readyz".into(),
                timeout: Duration::from_secs(120),
            },
        )
        .at(
            23_000,
            EventKind::CheckProgress {
                scope: "readiness".into(),
                check: "apiserver /readyz".into(),
                observed: "connection refused".into(),
            },
        )
        .at(
            30_000,
            EventKind::CheckPassed {
                scope: "readiness".into(),
                check: "apiserver /readyz".into(),
                took: Duration::from_secs(8),
                measured: None,
            },
        )
        .scenario(30_000, "node-failure", 1)
        .at(
            31_000,
            EventKind::FaultInjected {
                fault: Fault::Crash {
                    machine: "limiting-factor".into(),
                },
            },
        )
        .at(
            31_500,
            EventKind::MachineExited {
                machine: "limiting-factor".into(),
                status: "signal: 9 (SIGKILL)".into(),
            },
        )
        .output(
            40_000,
            "node-failure",
            "kubectl get nodes",
            Stream::Stdout,
            "limiting-factor NotReady",
        )
        .check_fails(
            70_000,
            "node-failure",
            "taint present",
            "timed out after 30.0s",
        )

        .at(
            70_000,
            EventKind::CheckFailed {
                scope: "node-failure".into(),
                check: "bare failure".into(),
                reason: "no evidence, nothing observed".into(),
                observed: None,
                evidence: vec![],
                took: Duration::from_millis(250),
                measured: Some(Measured {
                    since: "power-loss".into(),
                    delay: Duration::from_millis(39_250),
                    budget: Duration::from_secs(90),
                }),
            },
        )
        .at(
            70_500,
            EventKind::FailureKept {
                scenario: "node-failure".into(),
                snapshot: "failed-node-failure-20261207T174000Z".into(),
                restore: "labtest --lab fixtures/lab up --from failed-node-failure-20261207T174000Z"
                    .into(),
                took: Duration::from_millis(1_600),
                bytes: 1_700 << 20,
            },
        )
        .finished(
            71_000,
            "node-failure",
            1,
            Outcome::Failed,
            41_000,
            Some("2 checks failed"),
        )
        .scenario(71_000, "node-failure", 2)
        .finished(100_000, "node-failure", 2, Outcome::Passed, 29_000, None)
        .scenario(100_000, "pod-scheduling", 1)
        .at(
            100_900,
            EventKind::FailureNotKept {
                scenario: "pod-scheduling".into(),
                reason: "lab fixture cannot be saved: limiting-factor is powered off; start it first (`labtest start limiting-factor`)".into(),
            },
        )
        .finished(
            101_000,
            "pod-scheduling",
            1,
            Outcome::Error,
            1_000,
            Some("kubeconfig missing"),
        )
        .at(
            3_725_000,
            EventKind::Artifact {
                path: "/tmp/labtest/run-1/machines/grey-area/console.log".into(),
                what: "console of grey-area".into(),
            },
        );
    let mut events = run.end(3_725_000, None);
    // The other way a run ends, so both renderings are pinned.
    events.push(Event {
        elapsed: Duration::from_millis(3_727_000),
        kind: EventKind::RunFinished {
            aborted: Some("the lab never became ready".into()),
        },
    });
    events
}
