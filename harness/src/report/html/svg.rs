//! The drawings: the run's timeline (phases, scenarios, machine lanes with their faults and host
//! CPU, check lanes) and the history's sparklines, as inline SVG drawn from [`super::timeline`].
use std::time::Duration;

use maud::{html, Markup, PreEscaped};

use super::timeline::{AttemptSpan, CheckMark, CheckState, MachineLane, Timeline};
use crate::events::Outcome;
use crate::report::{fmt_duration, fmt_measured};

// Timeline geometry, in SVG user units (= CSS px at the page's width).
const WIDTH: f64 = 1240.0;
const LABEL: f64 = 190.0;
const PLOT: f64 = WIDTH - LABEL - 20.0;
const ROW: f64 = 22.0;
const CHECK_ROW: f64 = 16.0;
const CPU_ROW: f64 = 18.0;

/// A coordinate as the drawing writes it: one decimal is finer than a pixel.
fn at(v: f64) -> String {
    format!("{v:.1}")
}

/// A machine's host CPU under its lane: an area from 0 to the band's top, which is all its vCPUs
/// busy (or the highest sample, when the QEMU's other threads took it over that).
fn cpu_band(m: &MachineLane, y: f64, x: &dyn Fn(Duration) -> f64) -> Markup {
    let vcpus = m.cpu.iter().map(|p| p.vcpus).max().unwrap_or(1).max(1);
    let peak = m.cpu.iter().map(|p| p.host_pct).fold(0.0, f64::max);
    let scale = (f64::from(vcpus) * 100.0).max(peak).max(1.0);
    let mean = m.cpu.iter().map(|p| p.host_pct).sum::<f64>() / m.cpu.len() as f64;
    let base = y + CPU_ROW - 2.0;
    let height = CPU_ROW - 4.0;
    let mut points = vec![format!("{:.1},{base:.1}", x(m.cpu[0].at))];
    for p in &m.cpu {
        points.push(format!(
            "{:.1},{:.1}",
            x(p.at),
            base - p.host_pct / scale * height
        ));
    }
    points.push(format!("{:.1},{base:.1}", x(m.cpu[m.cpu.len() - 1].at)));
    let s = if vcpus == 1 { "" } else { "s" };
    html! {
        g class="lane cpu" data-machine=(m.name) {
            text class="lane-label cpu" x=(LABEL - 8.0) y=(y + 12.0) { "cpu" }
            rect class="cpu-frame" x=(LABEL) y=(base - height) width=(PLOT) height=(height) {}
            polygon class="cpu" points=(points.join(" ")) {
                title {
                    (m.name) ": its QEMU used " (format!("{mean:.0}")) "% of a host core on average, "
                    (format!("{peak:.0}")) "% at most (band top: " (format!("{scale:.0}")) "%, "
                    (vcpus) " vCPU" (s) " busy)"
                }
            }
        }
    }
}

/// The timeline section: every lane over run time, a tick every few seconds, and a cursor line
/// the page's script moves.
pub(super) fn timeline(t: &Timeline) -> Markup {
    let end = t.end.as_secs_f64().max(1.0);
    let x = |d: Duration| LABEL + d.as_secs_f64() / end * PLOT;
    let w = |a: Duration, b: Duration| (x(b) - x(a)).max(2.0);
    let mut body: Vec<Markup> = Vec::new();
    let mut y = 28.0;

    body.push(row_label(y, "phases"));
    for p in &t.phases {
        body.push(html! {
            rect class={ "phase " (p.label) } x=(at(x(p.start))) y=(y) width=(at(w(p.start, p.end)))
                height=(ROW - 4.0) {
                title {
                    (p.label) ": " (secs_span(p.start, p.end)) " ("
                    (fmt_duration(p.end.saturating_sub(p.start))) ")"
                }
            }
            @if let Some(label) = fitted_text(x(p.start), w(p.start, p.end), y + 13.0, &p.label, true) {
                (label)
            }
        });
    }
    y += ROW;
    body.push(row_label(y, "scenarios"));
    for a in &t.attempts {
        let outcome = a.outcome.map_or("unfinished", Outcome::as_str);
        let label = attempt_label(t, a);
        body.push(html! {
            rect class={ "scenario " (outcome) } data-scenario=(a.scenario) x=(at(x(a.start))) y=(y)
                width=(at(w(a.start, a.end))) height=(ROW - 4.0) {
                title { (label) " " (outcome) ": " (secs_span(a.start, a.end)) }
            }
            @if let Some(text) = fitted_text(x(a.start), w(a.start, a.end), y + 13.0, &label, true) {
                (text)
            }
        });
    }
    y += ROW + 8.0;

    for m in &t.machines {
        body.push(html! {
            g class="lane machine" data-machine=(m.name) {
                (row_label(y, &m.name))
                @for s in &m.states {
                    rect class={ "state " (s.label) } x=(at(x(s.start))) y=(y + 3.0)
                        width=(at(w(s.start, s.end))) height=(ROW - 8.0) {
                        title { (m.name) " " (s.label) ": " (secs_span(s.start, s.end)) }
                    }
                }
                @for f in &m.faults {
                    @let instant = f.ended_by.is_none();
                    @let until = match (&f.until, instant) {
                        (_, true) => format!("at {:.1}s", f.start.as_secs_f64()),
                        (Some(u), _) => format!("{} until {u}", secs_span(f.start, f.end)),
                        (None, _) => {
                            format!("{} (still in effect at the end)", secs_span(f.start, f.end))
                        }
                    };
                    rect class={ "fault" @if instant { " instant" } } data-fault=(f.fault)
                        x=(at(x(f.start) - if instant { 1.5 } else { 0.0 })) y=(y - 1.0)
                        width=(at(if instant { 3.0 } else { w(f.start, f.end) })) height=(ROW) {
                        title {
                            (f.fault) " " (m.name)
                            @if let Some(other) = &f.with { " with " (other) }
                            ": " (until)
                        }
                    }
                    text class="fault-label" x=(at(x(f.start) + 3.0)) y=(y + 14.0) { (f.fault) }
                }
            }
        });
        y += ROW + 2.0;
        if !m.cpu.is_empty() {
            body.push(cpu_band(m, y, &x));
            y += CPU_ROW + 2.0;
        }
    }
    y += 8.0;

    for lane in &t.scopes {
        let height = f64::from(lane.rows) * CHECK_ROW + 6.0;
        let mut checks: Vec<Markup> = Vec::new();
        for (i, c) in lane.checks.iter().enumerate() {
            let cy = y + 3.0 + f64::from(c.row) * CHECK_ROW;
            let state = match c.state {
                CheckState::Passed => "passed",
                CheckState::Failed => "failed",
                CheckState::Running => "running",
            };
            let next = lane
                .checks
                .iter()
                .enumerate()
                .filter(|(j, o)| *j != i && o.row == c.row && o.start >= c.end)
                .map(|(_, o)| x(o.start))
                .fold(LABEL + PLOT, f64::min);
            // The name inside the bar, else after it up to the next check on its row, else cut.
            let (bar, after) = (w(c.start, c.end), next - x(c.end) - 4.0);
            let name = fitted_text(x(c.start), bar, cy + 10.0, &c.check, false)
                .or_else(|| fitted_text(x(c.end) + 2.0, after, cy + 10.0, &c.check, false))
                .or_else(|| fitted_text(x(c.start), bar, cy + 10.0, &c.check, true));
            checks.push(html! {
                g class={ "check " (state) } data-check=(c.check) {
                    title { (check_tooltip(c)) }
                    rect x=(at(x(c.start))) y=(cy) width=(at(w(c.start, c.end)))
                        height=(CHECK_ROW - 4.0) rx="2" {}
                    // From the named moment (the fault) to the end: the delay the check measured.
                    @if let Some(m) = &c.measured {
                        @let since = x(c.end.saturating_sub(m.delay));
                        @let ly = cy + CHECK_ROW - 4.0;
                        line class="measured" x1=(at(since)) x2=(at(x(c.end))) y1=(ly) y2=(ly) {}
                        circle class="since" cx=(at(since)) cy=(ly) r="2.5" {}
                    }
                    @if let Some(name) = name { (name) }
                }
            });
        }
        body.push(html! {
            g class="lane scope" data-scope=(lane.name) {
                (row_label(y + height / 2.0 - 11.0, &lane.name))
                @for a in t.attempts.iter().filter(|a| a.scenario == lane.name) {
                    rect class={ "attempt " (a.outcome.map_or("unfinished", Outcome::as_str)) }
                        x=(at(x(a.start))) y=(y) width=(at(w(a.start, a.end))) height=(height) {}
                }
                @for check in &checks { (check) }
            }
        });
        y += height + 4.0;
    }

    // Ticks are counted last, when the height is known, so that their lines run through every
    // lane; they are drawn first, under the lanes.
    let step = tick_step(end);
    let mut ticks = Vec::new();
    let mut s = 0.0;
    while s <= end + 1e-9 {
        ticks.push((LABEL + s / end * PLOT, s));
        s += step;
    }
    let h = y + 4.0;
    html! {
        section id="timeline" {
            h2 { "Timeline " small { "seconds since the run started" } }
            svg class="timeline" viewBox={ "0 0 " (WIDTH) " " (h) } width=(WIDTH) height=(h)
                data-x0=(LABEL) data-plot=(PLOT) data-end=(end) role="img" {
                defs {
                    pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse"
                        patternTransform="rotate(45)" {
                        rect width="3" height="6" class="hatch" {}
                    }
                }
                @for (tx, s) in &ticks {
                    line class="tick" x1=(at(*tx)) x2=(at(*tx)) y1="22" y2=(y) {}
                    text class="tick" x=(at(*tx)) y="16" { (s) "s" }
                }
                @for lane in &body { (lane) }
                line id="cursor-line" y1="22" y2=(y) visibility="hidden" {}
            }
            p class="legend" {
                span class="k booting" {} "booting "
                span class="k up" {} "up "
                span class="k off" {} "off "
                span class="k fault" {} "fault "
                span class="k passed" {} "check passed "
                span class="k failed" {} "check failed "
                span class="k running" {} "unfinished "
                span class="k cpu" {} "host CPU of a machine's QEMU (top: all its vCPUs busy) "
                (PreEscaped("&#9679;&#8212;")) " measured delay, from the moment it counts from"
            }
        }
        "\n"
    }
}

fn row_label(y: f64, label: &str) -> Markup {
    html! { text class="lane-label" x=(LABEL - 8.0) y=(y + 14.0) { (label) } }
}

/// `text` at `x` if it fits in `width` (at ~6.5 px a character), cut short with an ellipsis
/// when `cut` allows; `None` when it cannot be drawn there.
fn fitted_text(x: f64, width: f64, y: f64, text: &str, cut: bool) -> Option<Markup> {
    let room = ((width - 6.0) / 6.5).floor().max(0.0) as usize;
    let shown = if text.chars().count() <= room {
        text.to_string()
    } else if cut && room >= 5 {
        let mut short: String = text.chars().take(room - 1).collect();
        short.push('\u{2026}');
        short
    } else {
        return None;
    };
    Some(html! { text class="in-bar" x=(at(x + 3.0)) y=(y) { (shown) } })
}

fn attempt_label(t: &Timeline, a: &AttemptSpan) -> String {
    if t.attempts
        .iter()
        .any(|o| o.scenario == a.scenario && o.attempt != a.attempt)
    {
        format!("{} #{}", a.scenario, a.attempt)
    } else {
        a.scenario.clone()
    }
}

fn secs_span(a: Duration, b: Duration) -> String {
    format!("{:.1}s-{:.1}s", a.as_secs_f64(), b.as_secs_f64())
}

fn check_tooltip(c: &CheckMark) -> String {
    let took = fmt_duration(c.end.saturating_sub(c.start));
    let mut tip = match c.state {
        CheckState::Passed => format!("{}: passed in {took}", c.check),
        CheckState::Failed => format!("{}: FAILED after {took}", c.check),
        CheckState::Running => format!("{}: unfinished after {took}", c.check),
    };
    if !c.timeout.is_zero() {
        tip.push_str(&format!(" of {}", fmt_duration(c.timeout)));
    }
    if let Some(reason) = &c.reason {
        tip.push_str(&format!("\n{reason}"));
    }
    if let Some(observed) = &c.observed {
        tip.push_str(&format!("\nlast seen: {observed}"));
    }
    if let Some(m) = &c.measured {
        tip.push_str(&format!("\n{}", fmt_measured(m)));
    }
    tip
}

/// About ten ticks, at steps a person counts in.
fn tick_step(end: f64) -> f64 {
    const STEPS: [f64; 14] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
    ];
    STEPS
        .into_iter()
        .find(|&s| end / s <= 12.0)
        .unwrap_or((end / 10.0).ceil())
}

/// A small line of the values, the last (this run) drawn as a bigger dot; `label` says a value
/// as the table does.
pub(super) fn sparkline(values: &[Option<f64>], label: impl Fn(f64) -> String) -> Markup {
    let (w, h) = (200.0, 28.0);
    let max = values
        .iter()
        .flatten()
        .copied()
        .fold(0.0, f64::max)
        .max(0.001);
    let step = w / (values.len().max(2) - 1) as f64;
    let dots: Vec<(f64, f64, f64, bool)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let v = (*v)?;
            let (px, py) = (i as f64 * step + 4.0, h - 3.0 - v / max * (h - 8.0));
            Some((px, py, v, i + 1 == values.len()))
        })
        .collect();
    let points: Vec<String> = dots
        .iter()
        .map(|(px, py, _, _)| format!("{px:.1},{py:.1}"))
        .collect();
    html! {
        svg class="spark" width=(w + 8.0) height=(h) {
            polyline points=(points.join(" ")) {}
            @for (px, py, v, current) in &dots {
                circle class=(if *current { "current" } else { "run" }) cx=(at(*px)) cy=(at(*py))
                    r=(if *current { 4 } else { 2 }) {
                    title { (label(*v)) }
                }
            }
        }
    }
}
