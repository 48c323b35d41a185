//! `report/index.html`: one self-contained page about a run, for a person with a browser and
//! no network (a CI artifact, a laptop on a train). Inline CSS, inline SVG and a few lines of
//! script; no URL of any kind, so it opens from a zip or `file://` as it is.
//!
//! The timeline is derived by the pure [`timeline`] into a small serializable model, so the
//! data (which lane, which window, which mark) is pinned by snapshot tests and the drawing on
//! top of it stays dumb.
//!
//! ```
//! use harness::report::{history, html, Summary};
//!
//! let events = Vec::new();
//! let summary = Summary::from_events(&events);
//! let page = html::render(&events, &summary, &history::load("history.jsonl".as_ref(), "", 20));
//! assert!(page.starts_with("<!doctype html>"));
//! ```
//!
//! Every string on the page goes through a [`maud`] template, which escapes it: names, states,
//! reasons and journal lines come from guests and Kubernetes, and must never become markup.
//! The page is split as it reads: [`timeline`] (the model), `svg` (the drawings), `sections`
//! (the tables and lists) and `assets` (the inline style and script).
use std::path::Path;

use maud::{html, PreEscaped};

use super::history::RunRecord;
use super::summary::Summary;
use super::ARTIFACTS_FOLDER;
use crate::events::{Event, EventKind};

mod assets;
mod sections;
mod svg;
mod timeline;

pub use timeline::{
    timeline, AttemptSpan, CheckMark, CheckState, CpuPoint, FaultSpan, MachineLane, ScopeLane,
    Span, Timeline,
};

/// The page. `history` holds earlier runs of the lab, oldest first ([`super::history::load`]);
/// the current run is taken from `summary`, and if `history` already ends with it (appended
/// before rendering) it is not shown twice.
pub fn render(events: &[Event], summary: &Summary, history: &[RunRecord]) -> String {
    let folder: Option<&Path> = events.iter().find_map(|e| match &e.kind {
        EventKind::Artifact { path, what } if what == ARTIFACTS_FOLDER => Some(path.as_path()),
        _ => None,
    });
    let page = html! {
        (PreEscaped("<!doctype html>\n"))
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width";
                title { "labtest " (summary.lab) ": " (sections::run_result(summary.result)) }
                style { (PreEscaped(assets::CSS)) }
            }
            "\n"
            body {
                "\n"
                (sections::header(summary))
                (svg::timeline(&timeline(events)))
                (sections::measured_table(summary))
                (sections::cpu_table(summary))
                (sections::failures(summary, folder))
                (sections::history_section(summary, history))
                (sections::artifacts(events, folder))
                script { (PreEscaped(assets::SCRIPT)) }
                "\n"
            }
        }
        "\n"
    };
    page.into_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::sections::link;
    use super::timeline::MACHINE_UP;
    use super::*;
    use crate::events::Measured;
    use crate::fault::Fault;
    use crate::report::fixture;

    #[test]
    fn timeline_mixed_run() {
        insta::assert_json_snapshot!(timeline(&fixture::mixed_run()));
    }

    #[test]
    fn timeline_error_run() {
        insta::assert_json_snapshot!(timeline(&fixture::error_run()));
    }

    #[test]
    fn timeline_aborted_run() {
        insta::assert_json_snapshot!(timeline(&fixture::aborted_run()));
    }

    #[test]
    fn timeline_sampled_run() {
        insta::assert_json_snapshot!(timeline(&fixture::sampled_run()));
    }

    #[test]
    fn a_sampled_run_draws_a_cpu_band_per_machine_and_says_it_was_starved() {
        let events = fixture::sampled_run();
        let page = render(&events, &Summary::from_events(&events), &[]);
        assert_eq!(page.matches("<polygon class=\"cpu\"").count(), 2);
        assert!(page.contains("<g class=\"lane cpu\" data-machine=\"limiting-factor\">"));
        assert!(page.contains("<p class=\"starved\">HOST STARVED: "));
        assert!(page.contains("<section id=\"cpu\">"));
        assert!(page.contains("<th>wake-ups/s</th>"));
        let unsampled = fixture::passed_run();
        let page = render(&unsampled, &Summary::from_events(&unsampled), &[]);
        assert!(!page.contains("<polygon") && !page.contains("id=\"cpu\""));
    }

    #[test]
    fn timeline_every_kind() {
        insta::assert_json_snapshot!(timeline(&fixture::every_kind()));
    }

    fn at(secs: u64, kind: EventKind) -> Event {
        Event {
            elapsed: Duration::from_secs(secs),
            kind,
        }
    }

    /// `machine` is one machine, or `a<->b` for a fault between two.
    fn fault(secs: u64, machine: &str, fault: &str) -> Event {
        let value = match machine.split_once("<->") {
            Some((a, b)) => serde_json::json!({ "fault": fault, "a": a, "b": b }),
            None => serde_json::json!({
                "fault": fault, "machine": machine, "timeout": 5.0, "unit": "x.service"
            }),
        };
        let fault: Fault = serde_json::from_value(value).expect("a fault of the vocabulary");
        at(secs, EventKind::FaultInjected { fault })
    }

    #[test]
    fn faults_become_windows_on_every_machine_they_touch() {
        let up = |secs, m: &str| {
            at(
                secs,
                EventKind::MachineUp {
                    machine: m.into(),
                    boot_time: Duration::from_secs(5),
                },
            )
        };
        let events = [
            up(5, "a"),
            up(5, "b"),
            fault(10, "a<->b", "partition"),
            fault(12, "a", "freeze"),
            fault(14, "a", "thaw"),
            fault(15, "b<->a", "heal"),
            fault(16, "a<->b", "heal"),
            fault(17, "a", "link-down"),
            fault(18, "a", "link-up"),
            fault(20, "b", "crash"),
            at(
                20,
                EventKind::MachineExited {
                    machine: "b".into(),
                    status: "signal: 9 (SIGKILL)".into(),
                },
            ),
            at(
                21,
                EventKind::MachineStarting {
                    machine: "b".into(),
                },
            ),
            up(30, "b"),
            fault(31, "a", "reboot"),
            fault(32, "a", "link-down"),
            at(40, EventKind::RunFinished { aborted: None }),
        ];
        let t = timeline(&events);
        let windows = |m: usize| -> Vec<(String, u64, u64, Option<String>, bool)> {
            t.machines[m]
                .faults
                .iter()
                .map(|f| {
                    let until = f.until.clone();
                    (
                        f.fault.clone(),
                        f.start.as_secs(),
                        f.end.as_secs(),
                        until,
                        f.open,
                    )
                })
                .collect()
        };
        let w = |f: &str, a, b, until: Option<&str>, open| {
            (f.to_string(), a, b, until.map(str::to_string), open)
        };
        assert_eq!(
            windows(0),
            [
                w("partition", 10, 15, Some("heal"), false),
                w("freeze", 12, 14, Some("thaw"), false),
                // Nothing left to heal: shown as it happened, an instant.
                w("heal", 16, 16, None, false),
                w("link-down", 17, 18, Some("link-up"), false),
                w("reboot", 31, 31, None, false),
                w("link-down", 32, 40, None, true),
            ]
        );
        assert_eq!(
            windows(1),
            [
                w("partition", 10, 15, Some("heal"), false),
                w("heal", 16, 16, None, false),
                w("crash", 20, 30, Some(MACHINE_UP), false),
            ]
        );
        let states: Vec<(&str, u64, u64)> = t.machines[1]
            .states
            .iter()
            .map(|s| (s.label.as_str(), s.start.as_secs(), s.end.as_secs()))
            .collect();
        assert_eq!(
            states,
            [
                ("booting", 0, 5),
                ("up", 5, 20),
                ("off", 20, 21),
                ("booting", 21, 30),
                ("up", 30, 40)
            ]
        );
    }

    fn every_page() -> Vec<String> {
        let runs = [
            fixture::mixed_run(),
            fixture::passed_run(),
            fixture::error_run(),
            fixture::aborted_run(),
            fixture::every_kind(),
            fixture::sampled_run(),
        ];
        let history: Vec<RunRecord> = runs
            .iter()
            .enumerate()
            .map(|(i, e)| {
                RunRecord::from_summary(&Summary::from_events(e), 1_780_000_000 + i as u64)
            })
            .collect();
        runs.iter()
            .map(|e| render(e, &Summary::from_events(e), &history))
            .collect()
    }

    #[test]
    fn the_page_reaches_for_nothing_outside() {
        for page in every_page() {
            for needle in ["http://", "https://", "src=", "@import", "//"] {
                assert!(!page.contains(needle), "{needle} in the page");
            }
            for (i, _) in page.match_indices("url(") {
                assert_eq!(&page[i + 4..i + 5], "#", "url() not to a local fragment");
            }
            for (i, _) in page.match_indices("href=\"") {
                assert!(page[i + 6..].starts_with("../"), "href not into the folder");
            }
        }
    }

    #[test]
    fn links_go_into_the_folder_and_nowhere_else() {
        let page = &every_page()[4];
        assert!(page.contains("<a href=\"../machines/grey-area/console.log\">"));
        let mixed = &every_page()[0];
        assert!(mixed.contains("<a href=\"../kube/node-failure.txt\">kube/node-failure.txt</a>"));
        let folder = Path::new("/run/a b");
        assert_eq!(
            link(Path::new("/run/a b/kube/x#1.txt"), Some(folder)).into_string(),
            "<a href=\"../kube/x%231.txt\">kube/x#1.txt</a>"
        );
        assert_eq!(
            link(Path::new("/etc/passwd"), Some(folder)).into_string(),
            "<code>/etc/passwd</code>"
        );
        assert_eq!(
            link(Path::new("../outside.txt"), Some(folder)).into_string(),
            "<code>../outside.txt</code>"
        );
    }

    #[test]
    fn hostile_text_stays_text() {
        let hostile = "<script>alert('x')</script>\"><img onerror=x>";
        let events = [
            at(
                0,
                EventKind::RunStarted {
                    lab: hostile.into(),
                    scenarios: vec![hostile.into()],
                    started_at: None,
                },
            ),
            at(
                1,
                EventKind::ScenarioStarted {
                    scenario: hostile.into(),
                    attempt: 1,
                },
            ),
            fault(2, &format!("{hostile}<->x"), "partition"),
            at(
                5,
                EventKind::CheckFailed {
                    scope: hostile.into(),
                    check: hostile.into(),
                    reason: hostile.into(),
                    observed: Some(hostile.into()),
                    evidence: vec![hostile.into()],
                    took: Duration::from_secs(3),
                    measured: Some(Measured {
                        since: hostile.into(),
                        delay: Duration::from_secs(3),
                        budget: Duration::from_secs(3),
                    }),
                },
            ),
            at(
                6,
                EventKind::Warning {
                    message: hostile.into(),
                },
            ),
        ];
        let summary = Summary::from_events(&events);
        let page = render(&events, &summary, &[RunRecord::from_summary(&summary, 1)]);
        assert_eq!(
            page.matches("<script").count(),
            1,
            "only the page's own script"
        );
        assert!(!page.contains("<img"));
        // The template escapes what could end text or a (double-quoted) attribute; a single
        // quote can do neither, so it stays as it is.
        assert!(page.contains("&lt;script&gt;alert('x')&lt;/script&gt;&quot;&gt;&lt;img"));
    }

    /// What the guests say reaches every section (machine lanes, the CPU table's processes,
    /// failures, artifacts): a `<script>` in any of it is shown, never run.
    #[test]
    fn a_guest_string_with_a_script_tag_is_escaped_everywhere() {
        let script = "<script>alert(1)</script>";
        let run = serde_json::to_string(&fixture::sampled_run()).expect("events as JSON");
        let hostile = run
            .replace("limiting-factor", &format!("limiting-factor{script}"))
            .replace("kubelet", &format!("kubelet{script}"));
        let events: Vec<Event> = serde_json::from_str(&hostile).expect("events back");
        let summary = Summary::from_events(&events);
        let page = render(&events, &summary, &[RunRecord::from_summary(&summary, 1)]);
        assert_eq!(
            page.matches("<script").count(),
            1,
            "only the page's own script"
        );
        let shown = "&lt;script&gt;alert(1)&lt;/script&gt;";
        for place in [
            format!("data-machine=\"limiting-factor{shown}\""),
            format!(">limiting-factor{shown}</text>"),
            format!("<td>limiting-factor{shown}</td>"),
            format!("kubelet{shown} 9.0%"),
        ] {
            assert!(page.contains(&place), "{place} not in the page");
        }
    }

    #[test]
    fn the_current_run_is_not_its_own_history() {
        let events = fixture::mixed_run();
        let summary = Summary::from_events(&events);
        let appended = RunRecord::from_summary(&summary, 1_796_276_160);
        let page = render(&events, &summary, std::slice::from_ref(&appended));
        assert!(page.contains("No earlier runs"));
        let earlier = RunRecord {
            unix: 1_796_270_000,
            ..RunRecord::from_summary(&Summary::from_events(&fixture::passed_run()), 0)
        };
        let page = render(&events, &summary, &[earlier, appended]);
        assert_eq!(page.matches("<tr class=\"failed current\">").count(), 1);
        assert!(page.contains("2026-12-03 03:53"));
    }
}
