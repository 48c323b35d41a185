//! The page's sections other than the timeline: the header and scenario table, measured delays,
//! where the CPU went, failed checks, the history and the artifacts.
use std::path::{Component, Path};
use std::time::Duration;

use maud::{html, Markup, PreEscaped};

use super::svg::sparkline;
use crate::events::{Event, EventKind};
use crate::report::history::RunRecord;
use crate::report::summary::{
    Attempt, CheckRecord, FailedCheck, RunResult, ScenarioResult, Summary,
};
use crate::report::{fmt_duration, ARTIFACTS_FOLDER};

pub(super) fn run_result(r: RunResult) -> &'static str {
    match r {
        RunResult::Passed => "passed",
        RunResult::Failed => "failed",
        RunResult::Aborted => "aborted",
    }
}

fn scenario_class(r: ScenarioResult) -> &'static str {
    match r {
        ScenarioResult::Passed => "passed",
        ScenarioResult::Flaky => "flaky",
        ScenarioResult::Failed => "failed",
        ScenarioResult::Error => "error",
        ScenarioResult::NotRun => "not-run",
    }
}

/// The run's result, phases, machines and warnings, then a row per scenario.
pub(super) fn header(s: &Summary) -> Markup {
    let result = run_result(s.result);
    html! {
        header class={ "run " (result) } {
            h1 {
                "labtest " span class={ "badge " (result) } { (result.to_uppercase()) }
                " lab " code { (s.lab) }
            }
            p {
                (fmt_duration(s.duration))
                @for p in &s.phases {
                    " " (PreEscaped("&middot;")) " " (p.phase.as_str()) " " (fmt_duration(p.took))
                }
            }
            @if !s.machines.is_empty() {
                p {
                    @for (i, m) in s.machines.iter().enumerate() {
                        @if i > 0 { ", " }
                        b { (m.name) } " "
                        @match m.first_boot {
                            Some(boot) => { "up in " (fmt_duration(boot)) }
                            None => { "never up" }
                        }
                        @if m.starts > 1 { " (" (m.starts) " starts)" }
                    }
                }
            }
            @for w in &s.warnings {
                p class="warning" { "WARNING: " (w) }
            }
            @if let Some(starved) = s.cpu.as_ref().and_then(|c| c.starved.as_ref()) {
                p class="starved" { (starved) }
            }
            @if let Some(reason) = &s.aborted {
                p class="abort-reason" { "run aborted: " (reason) }
            }
        }
        "\n"
        section id="scenarios" {
            table {
                tr { th { "scenario" } th { "result" } th { "duration" } th { "first failure" } }
                @for sc in &s.scenarios {
                    @let failure = match sc.first_failure() {
                        Some(f) => format!("{}: {}", f.check, f.reason),
                        None => sc
                            .attempts
                            .iter()
                            .rev()
                            .find_map(|a| a.message.clone())
                            .unwrap_or_default(),
                    };
                    tr class=(scenario_class(sc.result)) {
                        td { (sc.name) }
                        td class="result" {
                            (sc.result.as_str())
                            @if sc.attempts.len() > 1 { " (" (sc.attempts.len()) " attempts)" }
                        }
                        td class="num" {
                            @if sc.attempts.is_empty() { "-" } @else { (fmt_duration(sc.duration)) }
                        }
                        td { (failure) }
                    }
                }
            }
        }
        "\n"
    }
}

/// Every check with a measured delay, where it ran: the lab's (the gate, machines' waits),
/// then each scenario's.
fn measured_checks(s: &Summary) -> Vec<(String, &CheckRecord)> {
    let mut rows: Vec<(String, &CheckRecord)> =
        s.lab_checks.iter().map(|c| (c.scope.clone(), c)).collect();
    for sc in &s.scenarios {
        for a in &sc.attempts {
            let name = if sc.attempts.len() > 1 {
                format!("{} #{}", sc.name, a.attempt)
            } else {
                sc.name.clone()
            };
            rows.extend(a.checks.iter().map(|c| (name.clone(), c)));
        }
    }
    rows.retain(|(_, c)| c.measured.is_some());
    rows
}

/// Each measured delay against its budget, as a bar.
pub(super) fn measured_table(s: &Summary) -> Markup {
    let rows: Vec<_> = measured_checks(s)
        .into_iter()
        .filter_map(|(scope, c)| c.measured.as_ref().map(|m| (scope, c, m)))
        .collect();
    html! {
        section id="measured" {
            h2 { "Measured delays" }
            @if rows.is_empty() {
                p { "No check measured a delay in this run." }
            } @else {
                table {
                    tr {
                        th { "scenario" } th { "check" } th { "since" } th { "delay" }
                        th { "budget" } th { "of budget" }
                    }
                    @for (scope, c, m) in &rows {
                        @let fraction = m.delay.as_secs_f64() / m.budget.as_secs_f64().max(0.001);
                        @let class = match fraction {
                            f if f > 1.0 => "over",
                            f if f > 0.8 => "near",
                            _ => "ok",
                        };
                        tr class={ (class) @if !c.passed { " failed" } } {
                            td { (scope) }
                            td { (c.check) }
                            td { (m.since) }
                            td class="num" { (fmt_duration(m.delay)) }
                            td class="num" { (fmt_duration(m.budget)) }
                            td {
                                span class="bar" {
                                    span style={ "width:" (format!("{:.0}", (fraction * 100.0).min(100.0))) "%" } {}
                                }
                                " " (format!("{:.0}", fraction * 100.0)) "%"
                            }
                        }
                    }
                }
            }
        }
        "\n"
    }
}

/// Where the CPU went per machine, and the host's side of it; nothing for an unsampled run.
pub(super) fn cpu_table(s: &Summary) -> Markup {
    let Some(cpu) = &s.cpu else {
        return html! {};
    };
    let pct = |v: f64| format!("{v:.1}%");
    let opt = |v: Option<f64>| v.map_or("-".to_string(), pct);
    let h = &cpu.host;
    html! {
        section id="cpu" {
            h2 {
                "Where the CPU went "
                small {
                    "host: % of one host core; guest: % of its CPU time; processes: % of one vCPU"
                }
            }
            table {
                tr {
                    th { "machine" } th { "vCPUs" } th { "host mean" } th { "host max" }
                    th { "RSS max" } th { "wake-ups/s" } th { "guest user" } th { "guest sys" }
                    th { "busiest guest processes" }
                }
                @for m in &cpu.machines {
                    tr {
                        td { (m.name) }
                        td class="num" { (m.vcpus) }
                        td class="num" { (pct(m.host_cpu_mean)) }
                        td class="num" { (pct(m.host_cpu_max)) }
                        td class="num" { (format!("{:.0}", m.rss_mib_max)) " MiB" }
                        td class="num" {
                            (m.wakeups_per_sec_mean.map_or("-".to_string(), |w| format!("{w:.0}")))
                        }
                        td class="num" { (opt(m.guest_user_mean)) }
                        td class="num" { (opt(m.guest_system_mean)) }
                        td {
                            @for (i, p) in m.top.iter().enumerate() {
                                @if i > 0 { ", " }
                                (p.comm) " " (pct(p.pct))
                            }
                        }
                    }
                }
            }
            p {
                "host steal " (pct(h.steal_mean)) " mean, " (pct(h.steal_max))
                " max; the QEMUs could use " (h.cpus_allowed) " of " (h.cpus_online) " host CPUs"
                (crate::report::cpu::confined_note(h.confined_to))
                "; sampling cost " (pct(cpu.sampler.host_pct_mean)) " of a host core and "
                (pct(cpu.sampler.guest_pct_mean)) " of a vCPU in the guests"
            }
        }
        "\n"
    }
}

/// Every failed check with what it last saw and links to its evidence, by where it ran.
pub(super) fn failures(s: &Summary, folder: Option<&Path>) -> Markup {
    let mut groups: Vec<(String, &[FailedCheck], Option<&Attempt>)> = Vec::new();
    if !s.lab_failures.is_empty() {
        groups.push((
            "the lab, before the scenarios".into(),
            &s.lab_failures,
            None,
        ));
    }
    for sc in &s.scenarios {
        let failed =
            |a: &&Attempt| !a.failed_checks.is_empty() || a.kept.is_some() || a.not_kept.is_some();
        for a in sc.attempts.iter().filter(failed) {
            let name = if sc.attempts.len() > 1 {
                format!("{}, attempt {}", sc.name, a.attempt)
            } else {
                sc.name.clone()
            };
            groups.push((name, &a.failed_checks, Some(a)));
        }
    }
    if groups.is_empty() {
        return html! {};
    }
    html! {
        section id="failures" {
            h2 { "Failed checks" }
            @for (name, checks, attempt) in &groups {
                h3 { (name) }
                @if let Some(a) = attempt {
                    @if checks.is_empty() {
                        @if let Some(message) = &a.message { p { (message) } }
                    }
                    @if let Some(kept) = &a.kept {
                        p class="kept" { "step back into it: " code { (kept.restore) }
                            " (saved in " (fmt_duration(kept.took)) ", "
                            (format!("{:.1}", kept.bytes as f64 / (1024.0 * 1024.0 * 1024.0))) " GiB on disk)" }
                    }
                    @if let Some(reason) = &a.not_kept {
                        p { "lab not kept: " (reason) }
                    }
                }
                @for c in checks.iter() {
                    div class="failure" {
                        p { b { (c.check) } ": FAILED after " (fmt_duration(c.took)) ": " (c.reason) }
                        @if let Some(observed) = &c.observed {
                            p { "last seen:" }
                            pre { (observed) }
                        }
                        @if !c.evidence.is_empty() {
                            p { "evidence:" }
                            ul {
                                @for path in &c.evidence { li { (link(path, folder)) } }
                            }
                        }
                    }
                }
            }
        }
        "\n"
    }
}

/// Every file the run announced, once each, linked where it is inside the folder.
pub(super) fn artifacts(events: &[Event], folder: Option<&Path>) -> Markup {
    let mut seen = Vec::new();
    for e in events {
        let EventKind::Artifact { path, what } = &e.kind else {
            continue;
        };
        if what == ARTIFACTS_FOLDER || seen.iter().any(|(p, _)| *p == path) {
            continue;
        }
        seen.push((path, what));
    }
    html! {
        section id="artifacts" {
            h2 { "Artifacts" }
            @if let Some(folder) = folder {
                p { "folder " code { (folder.display().to_string()) } }
            }
            ul {
                @for (path, what) in &seen {
                    li { (link(path, folder)) " " (PreEscaped("&mdash;")) " " (what) }
                }
            }
        }
        "\n"
    }
}

/// A link relative to `report/index.html` for a file inside the artifacts folder (a relative
/// path is taken as inside it); anything else is only named, since the page must open
/// wherever the folder is copied.
pub(super) fn link(path: &Path, folder: Option<&Path>) -> Markup {
    let inside = match folder {
        Some(f) if path.is_absolute() => path.strip_prefix(f).ok(),
        _ if path.is_relative() => Some(path),
        _ => None,
    };
    let Some(rel) = inside.filter(|r| {
        r.components().count() > 0 && r.components().all(|c| matches!(c, Component::Normal(_)))
    }) else {
        return html! { code { (path.display().to_string()) } };
    };
    let text: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let href: Vec<String> = text.iter().map(|part| percent(part)).collect();
    html! { a href={ "../" (href.join("/")) } { (text.join("/")) } }
}

fn percent(part: &str) -> String {
    let mut out = String::new();
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// This run's times against the last 20 runs of the lab: a sparkline, median and range per
/// measure, then a row per run.
pub(super) fn history_section(s: &Summary, history: &[RunRecord]) -> Markup {
    let current = RunRecord::from_summary(s, 0);
    let mut runs: Vec<&RunRecord> = history.iter().collect();
    if runs.last().is_some_and(|r| {
        RunRecord {
            unix: 0,
            ..(*r).clone()
        } == current
    }) {
        runs.pop();
    }
    let skip = runs.len().saturating_sub(20);
    let runs = &runs[skip..];
    if runs.is_empty() {
        return html! {
            section id="history" {
                h2 { "This run against the last runs" }
                p { "No earlier runs of this lab in the history." }
            }
            "\n"
        };
    }
    type Metric<'a> = (String, Box<dyn Fn(&RunRecord) -> Option<Duration> + 'a>);
    let mut metrics: Vec<Metric> = vec![
        ("time to Ready".into(), Box::new(|r: &RunRecord| r.ready)),
        (
            "whole run".into(),
            Box::new(|r: &RunRecord| Some(r.duration)),
        ),
    ];
    for sc in &current.scenarios {
        let name = sc.name.clone();
        metrics.push((
            sc.name.clone(),
            Box::new(move |r: &RunRecord| {
                r.scenario(&name)
                    .filter(|s| s.result != "not_run")
                    .map(|s| s.duration)
            }),
        ));
    }
    let every: Vec<&RunRecord> = runs
        .iter()
        .copied()
        .chain(std::iter::once(&current))
        .collect();
    html! {
        section id="history" {
            h2 { "This run against the last runs" }
            table class="history" {
                tr {
                    th {} th { "last runs " (PreEscaped("&rarr;")) " this run" } th { "this run" }
                    th { "median before" } th { "range before" }
                }
                @for (name, get) in &metrics {
                    @let values: Vec<Option<f64>> =
                        every.iter().map(|r| get(r).map(|d| d.as_secs_f64())).collect();
                    @let before = sorted_before(&values);
                    @let this = values.last().copied().flatten();
                    @let median = before.get(before.len() / 2).copied();
                    @let slower = matches!((this, median), (Some(t), Some(m)) if t > m * 1.2 && t - m > 5.0);
                    tr {
                        td { (name) }
                        td { (sparkline(&values, |v| fmt_opt(Some(v)))) }
                        td class={ "num" @if slower { " slower" } } { (fmt_opt(this)) }
                        td class="num" { (fmt_opt(median)) }
                        td class="num" {
                            @match (before.first(), before.last()) {
                                (Some(a), Some(b)) => {
                                    (fmt_opt(Some(*a))) (PreEscaped("&ndash;")) (fmt_opt(Some(*b)))
                                }
                                _ => { "-" }
                            }
                        }
                    }
                }
            }
            table class="runs" {
                tr {
                    th { "run (UTC)" } th { "result" }
                    @for (name, _) in &metrics { th { (name) } }
                }
                @for (i, r) in every.iter().enumerate() {
                    @let this = i == runs.len();
                    tr class={ (r.result) @if this { " current" } } {
                        td { @if this { "this run" } @else { (crate::utc::minutes(r.unix)) } }
                        td class="result" { (r.result) }
                        @for (_, get) in &metrics {
                            td class="num" { (fmt_opt(get(r).map(|d| d.as_secs_f64()))) }
                        }
                    }
                }
            }
        }
        "\n"
    }
}

/// The earlier runs' values (all but the last, this run's), the ones there are, in order.
fn sorted_before(values: &[Option<f64>]) -> Vec<f64> {
    let mut before: Vec<f64> = values[..values.len() - 1]
        .iter()
        .flatten()
        .copied()
        .collect();
    before.sort_by(f64::total_cmp);
    before
}

fn fmt_opt(secs: Option<f64>) -> String {
    secs.map_or("-".into(), |s| fmt_duration(Duration::from_secs_f64(s)))
}
