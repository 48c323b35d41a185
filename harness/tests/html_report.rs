//! The HTML report as a person sees it: rendered for a realistic run, opened in headless
//! Chromium from `file://` with no network, and checked on the DOM the browser built (not on
//! the string we wrote), plus a screenshot that must be a real picture.
//!
//! Needs Debian's `chromium` (ci/setup.sh installs it). Without it this test fails: a report
//! nobody has seen render is not tested.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::events::{Event, EventKind, Measured, Outcome, Phase};
use harness::fault::Fault;
use harness::report::history::RunRecord;
use harness::report::{html, Summary, ARTIFACTS_FOLDER};

const CHROMIUM: &str = "/usr/bin/chromium";
const FOLDER: &str = "/tmp/labtest/run-7";
const MACHINES: [&str; 3] = ["grey-area", "congenital-optimist", "limiting-factor"];

struct Run(Vec<Event>);

impl Run {
    fn at(&mut self, secs: f64, kind: EventKind) -> &mut Self {
        self.0.push(Event {
            elapsed: Duration::from_secs_f64(secs),
            kind,
        });
        self
    }

    fn check(&mut self, start: f64, end: f64, scope: &str, check: &str) -> &mut Self {
        self.at(
            start,
            EventKind::CheckStarted {
                scope: scope.into(),
                check: check.into(),
                timeout: Duration::from_secs(120),
            },
        )
        .at(
            end,
            EventKind::CheckPassed {
                scope: scope.into(),
                check: check.into(),
                took: Duration::from_secs_f64(end - start),
                measured: None,
            },
        )
    }

    fn fault(&mut self, secs: f64, fault: Fault) -> &mut Self {
        self.at(secs, EventKind::FaultInjected { fault })
    }
}

/// Build, boot, readiness; pod-scheduling passes; node-failure crashes limiting-factor, measures
/// NotReady and fails on the taint; a partition along the way.
fn realistic_run() -> Vec<Event> {
    let mut run = Run(Vec::new());
    run.at(
        0.0,
        EventKind::RunStarted {
            lab: ".".into(),
            scenarios: vec!["pod-scheduling".into(), "node-failure".into()],
            started_at: Some("2026-12-03T05:36:00.000Z".into()),
        },
    )
    .at(
        0.0,
        EventKind::Artifact {
            path: FOLDER.into(),
            what: ARTIFACTS_FOLDER.into(),
        },
    )
    .at(
        0.0,
        EventKind::Phase {
            phase: Phase::Build,
        },
    )
    .at(20.0, EventKind::Phase { phase: Phase::Boot });
    for (i, m) in MACHINES.iter().enumerate() {
        run.at(
            20.0,
            EventKind::MachineStarting {
                machine: m.to_string(),
            },
        )
        .at(
            20.0,
            EventKind::Artifact {
                path: Path::new(FOLDER)
                    .join("machines")
                    .join(m)
                    .join("console.log"),
                what: format!("console of {m}"),
            },
        )
        .at(
            34.0 + i as f64,
            EventKind::MachineUp {
                machine: m.to_string(),
                boot_time: Duration::from_secs(14 + i as u64),
            },
        );
    }
    run.at(
        36.0,
        EventKind::Phase {
            phase: Phase::Readiness,
        },
    )
    .check(36.0, 41.0, "readiness", "apiserver /readyz")
    .check(41.0, 58.0, "readiness", "all nodes Ready")
    .at(
        58.0,
        EventKind::Phase {
            phase: Phase::Scenario,
        },
    )
    .at(
        58.0,
        EventKind::ScenarioStarted {
            scenario: "pod-scheduling".into(),
            attempt: 1,
        },
    )
    .check(58.5, 66.0, "pod-scheduling", "pods Running on 2 nodes")
    .fault(
        60.0,
        Fault::Partition {
            a: "grey-area".into(),
            b: "congenital-optimist".into(),
        },
    )
    .fault(
        64.0,
        Fault::Heal {
            a: "grey-area".into(),
            b: "congenital-optimist".into(),
        },
    )
    .at(
        67.0,
        EventKind::ScenarioFinished {
            scenario: "pod-scheduling".into(),
            attempt: 1,
            outcome: Outcome::Passed,
            took: Duration::from_secs(9),
            message: None,
        },
    )
    .at(
        67.0,
        EventKind::ScenarioStarted {
            scenario: "node-failure".into(),
            attempt: 1,
        },
    )
    .fault(
        68.0,
        Fault::Crash {
            machine: "limiting-factor".into(),
        },
    )
    .at(
        68.1,
        EventKind::MachineExited {
            machine: "limiting-factor".into(),
            status: "signal: 9 (SIGKILL)".into(),
        },
    )
    .at(
        68.5,
        EventKind::CheckStarted {
            scope: "node-failure".into(),
            check: "node NotReady".into(),
            timeout: Duration::from_secs(60),
        },
    )
    .at(
        80.0,
        EventKind::CheckProgress {
            scope: "node-failure".into(),
            check: "node NotReady".into(),
            observed: "limiting-factor Ready".into(),
        },
    )
    .at(
        110.0,
        EventKind::CheckPassed {
            scope: "node-failure".into(),
            check: "node NotReady".into(),
            took: Duration::from_secs_f64(41.5),
            measured: Some(Measured {
                since: "power-loss".into(),
                delay: Duration::from_secs(42),
                budget: Duration::from_secs(50),
            }),
        },
    )
    .at(
        110.0,
        EventKind::CheckStarted {
            scope: "node-failure".into(),
            check: "taint node.kubernetes.io/unreachable".into(),
            timeout: Duration::from_secs(30),
        },
    )
    .at(
        140.0,
        EventKind::Artifact {
            path: Path::new(FOLDER).join("kube/describe-nodes.txt"),
            what: "kubectl describe nodes".into(),
        },
    )
    .at(
        140.0,
        EventKind::CheckFailed {
            scope: "node-failure".into(),
            check: "taint node.kubernetes.io/unreachable".into(),
            reason: "timed out after 30.0s".into(),
            observed: Some("Taints: <script>document.title='pwned'</script>".into()),
            evidence: vec![Path::new(FOLDER).join("kube/describe-nodes.txt")],
            took: Duration::from_secs(30),
            measured: None,
        },
    )
    .at(
        141.0,
        EventKind::MachineStarting {
            machine: "limiting-factor".into(),
        },
    )
    .at(
        155.0,
        EventKind::MachineUp {
            machine: "limiting-factor".into(),
            boot_time: Duration::from_secs(14),
        },
    )
    .at(
        156.0,
        EventKind::ScenarioFinished {
            scenario: "node-failure".into(),
            attempt: 1,
            outcome: Outcome::Failed,
            took: Duration::from_secs(89),
            message: Some("1 check failed".into()),
        },
    )
    .at(
        156.0,
        EventKind::Phase {
            phase: Phase::Teardown,
        },
    )
    .at(158.0, EventKind::RunFinished { aborted: None });
    run.0
}

/// Earlier runs: a little faster, one of them failed.
fn history(summary: &Summary) -> Vec<RunRecord> {
    (0..8)
        .map(|i| {
            let mut r = RunRecord::from_summary(summary, 1_796_000_000 + i * 3_600);
            r.result = if i == 5 { "failed" } else { "passed" }.into();
            let jitter = Duration::from_secs(i % 3);
            r.ready = r.ready.map(|d| d - Duration::from_secs(6) + jitter);
            for s in &mut r.scenarios {
                s.duration = s.duration.saturating_sub(Duration::from_secs(10)) + jitter;
            }
            r
        })
        .collect()
}

/// Runs Chromium headless with a fresh profile and no network, at most 60 s.
fn chromium(page: &Path, args: &[String], stdout: &Path, profile: &Path) {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run ci/setup.sh (it installs Debian's `chromium` package)"
    );
    let out = fs::File::create(stdout).expect("create the stdout file");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // The page must not need the network: make any attempt fail.
            "--proxy-server=127.0.0.1:9",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        // Chromium's DOM dump can be larger than a pipe: a file never blocks it.
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait().expect("wait for chromium") {
            Some(status) => {
                assert!(status.success(), "chromium failed: {status}");
                return;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within 60 s");
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn chromium_shows_the_run() {
    let events = realistic_run();
    let summary = Summary::from_events(&events);
    let page_html = html::render(&events, &summary, &history(&summary));
    let tmp = tempfile::tempdir().expect("tempdir");
    let report = tmp.path().join("run/report");
    fs::create_dir_all(&report).expect("create report dir");
    let page = report.join("index.html");
    fs::write(&page, &page_html).expect("write the page");

    let dom_file = tmp.path().join("dom.html");
    chromium(
        &page,
        &["--dump-dom".into()],
        &dom_file,
        &tmp.path().join("profile-dom"),
    );
    let dom = fs::read_to_string(&dom_file).expect("read the dumped DOM");

    // The inline script ran, so the page parsed to its end.
    assert!(
        dom.contains("id=\"cursor\""),
        "the script did not run:\n{dom}"
    );
    for m in MACHINES {
        assert_eq!(
            dom.matches(&format!("class=\"lane machine\" data-machine=\"{m}\""))
                .count(),
            1,
            "one lane for {m}"
        );
    }
    assert!(dom.contains("class=\"fault\" data-fault=\"crash\""));
    assert_eq!(
        dom.matches("class=\"fault\" data-fault=\"partition\"")
            .count(),
        2,
        "a partition shades both machines"
    );
    assert!(
        dom.contains("class=\"check failed\" data-check=\"taint node.kubernetes.io/unreachable\"")
    );
    assert!(dom.contains("<td>node NotReady</td><td>power-loss</td>"));
    assert!(
        dom.contains("class=\"near\""),
        "42 s of a 50 s budget is flagged"
    );
    assert!(dom.contains("href=\"../machines/limiting-factor/console.log\""));
    // The guest's text is shown, not run.
    assert!(dom.contains("&lt;script&gt;document.title="));
    assert!(!dom.contains("<title>pwned"));
    assert!(
        dom.contains("<tr class=\"failed current\">"),
        "this run in the history"
    );

    let shot = tmp.path().join("shot.png");
    chromium(
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,1800".into(),
            "--hide-scrollbars".into(),
        ],
        &tmp.path().join("shot.out"),
        &tmp.path().join("profile-shot"),
    );
    let png = fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(png.len() > 50_000, "a blank page? {} bytes", png.len());
    // For a person to look at: LABTEST_KEEP_SHOT=path copies it out.
    if let Some(keep) = std::env::var_os("LABTEST_KEEP_SHOT") {
        let keep = PathBuf::from(keep);
        fs::copy(&shot, &keep).expect("copy the screenshot");
        fs::copy(&page, keep.with_extension("html")).expect("copy the page");
    }
}
