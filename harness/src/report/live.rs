//! What the user watches while a run goes.
//!
//! On a terminal: a status line (elapsed, phase, what is being waited for and what it last
//! saw) and bars for the nix build and for machines booting, with the lines that matter
//! (machine up, faults, checks passed or failed, scenario verdicts, warnings) printed above
//! them so the scrollback is a readable record. Elsewhere (CI): the same record as one line
//! per event, with build progress thinned out so a long build does not flood the log.
use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{fmt_duration, render_plain_line};
use crate::events::{Event, EventKind, Events};

/// How often plain mode prints build progress at most (run time, not wall clock, so the
/// output only depends on the events).
const BUILD_LINE_EVERY: Duration = Duration::from_secs(10);

/// How the live view shows a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars and a status line; for a person at a terminal.
    Tty,
    /// One line per event on stdout; for CI logs and pipes.
    Plain,
}

impl Mode {
    /// `Tty` when stdout is a terminal that can redraw, `Plain` otherwise.
    pub fn detect() -> Mode {
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        if std::io::stdout().is_terminal() && !dumb {
            Mode::Tty
        } else {
            Mode::Plain
        }
    }
}

/// Runs a [`LiveView`] on its own thread until `RunFinished` or until every [`Events`]
/// handle is gone. Join it before printing the summary, so the two do not interleave.
pub fn spawn(events: &Events, mode: Mode) -> JoinHandle<()> {
    let mut rx = events.subscribe();
    std::thread::spawn(move || {
        let mut view = LiveView::new(mode);
        while let Some(event) = rx.blocking_recv() {
            view.handle(&event);
            if matches!(event.kind, EventKind::RunFinished { .. }) {
                break;
            }
        }
        view.finish();
    })
}

/// Renders events as they come. Feed it with [`LiveView::handle`]; [`spawn`] does that.
pub struct LiveView {
    inner: Inner,
}

enum Inner {
    Tty(Bars),
    Plain(Plain),
}

impl LiveView {
    /// A view on stdout in `mode`.
    pub fn new(mode: Mode) -> Self {
        let inner = match mode {
            Mode::Tty => Inner::Tty(Bars::new(ProgressDrawTarget::stdout())),
            Mode::Plain => Inner::Plain(Plain::new(Box::new(std::io::stdout()))),
        };
        Self { inner }
    }

    /// Plain mode into any writer (tests, a log file).
    pub fn plain(out: Box<dyn Write + Send>) -> Self {
        Self {
            inner: Inner::Plain(Plain::new(out)),
        }
    }

    /// Shows one event.
    pub fn handle(&mut self, event: &Event) {
        match &mut self.inner {
            Inner::Tty(bars) => bars.handle(event),
            Inner::Plain(plain) => plain.handle(event),
        }
    }

    /// Clears the bars (the printed lines stay) and flushes.
    pub fn finish(&mut self) {
        match &mut self.inner {
            Inner::Tty(bars) => bars.finish(),
            Inner::Plain(plain) => {
                // Nothing useful to do if stdout is gone.
                let _ = plain.out.flush();
            }
        }
    }
}

struct Plain {
    out: Box<dyn Write + Send>,
    last_build: Option<(Duration, u64)>,
    last_observed: Option<(String, String, String)>,
}

impl Plain {
    fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            last_build: None,
            last_observed: None,
        }
    }

    fn handle(&mut self, event: &Event) {
        if !self.wanted(event) {
            return;
        }
        if let Some(line) = render_plain_line(event) {
            // A closed stdout must not take the run down with it.
            let _ = writeln!(self.out, "{line}");
        }
    }

    fn wanted(&mut self, event: &Event) -> bool {
        match &event.kind {
            EventKind::BuildProgress { done, expected, .. } => {
                let finished = done == expected;
                let due = match self.last_build {
                    None => true,
                    Some((at, last_done)) => {
                        *done != last_done
                            && (finished || event.elapsed.saturating_sub(at) >= BUILD_LINE_EVERY)
                    }
                };
                if due {
                    self.last_build = Some((event.elapsed, *done));
                }
                due
            }
            EventKind::CheckProgress {
                scope,
                check,
                observed,
            } => {
                let key = (scope.clone(), check.clone(), observed.clone());
                let changed = self.last_observed.as_ref() != Some(&key);
                self.last_observed = Some(key);
                changed
            }
            EventKind::Phase { .. } => {
                self.last_build = None;
                true
            }
            _ => true,
        }
    }
}

struct Bars {
    multi: MultiProgress,
    status: ProgressBar,
    phase: String,
    waiting: Option<Waiting>,
    build: Option<ProgressBar>,
    boot: Option<(ProgressBar, BTreeSet<String>)>,
}

impl Bars {
    fn new(target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let status = multi.add(ProgressBar::new_spinner());
        status.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed:>4}] {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        status.enable_steady_tick(Duration::from_millis(120));
        Self {
            multi,
            status,
            phase: "starting".to_string(),
            waiting: None,
            build: None,
            boot: None,
        }
    }

    fn handle(&mut self, event: &Event) {
        let permanent = !matches!(
            event.kind,
            EventKind::BuildProgress { .. }
                | EventKind::CheckStarted { .. }
                | EventKind::CheckProgress { .. }
                | EventKind::MachineStarting { .. }
        );
        if permanent {
            if let Some(line) = render_plain_line(event) {
                // A terminal that went away is not worth failing the run over.
                let _ = self.multi.println(line);
            }
        }
        match &event.kind {
            EventKind::Phase { phase } => {
                self.phase = phase.as_str().to_string();
                self.waiting = None;
                if let Some(bar) = self.build.take() {
                    bar.finish_and_clear();
                }
            }
            EventKind::BuildProgress {
                what,
                done,
                expected,
                running,
                ..
            } => {
                let bar = self.build.get_or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new(0));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "  build {prefix} [{bar:30}] {pos}/{len} {wide_msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.set_prefix(what.clone());
                    bar
                });
                bar.set_length(*expected);
                bar.set_position(*done);
                bar.set_message(running.join(", "));
            }
            EventKind::MachineStarting { machine } => {
                let (bar, booting) = self.boot.get_or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new(0));
                    bar.set_style(
                        ProgressStyle::with_template("  boot [{bar:30}] {pos}/{len} {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    (bar, BTreeSet::new())
                });
                if booting.insert(machine.clone()) {
                    bar.inc_length(1);
                }
                bar.set_message(waiting_for(booting));
            }
            EventKind::MachineUp { machine, .. } | EventKind::MachineExited { machine, .. } => {
                if let Some((bar, booting)) = &mut self.boot {
                    if booting.remove(machine) {
                        bar.inc(1);
                    }
                    bar.set_message(waiting_for(booting));
                    if booting.is_empty() {
                        bar.finish_and_clear();
                        self.boot = None;
                    }
                }
            }
            EventKind::CheckStarted {
                scope,
                check,
                timeout,
            } => {
                self.waiting = Some(Waiting {
                    check: format!("{scope}: {check}"),
                    timeout: *timeout,
                    started: event.elapsed,
                    observed: None,
                });
            }
            EventKind::CheckProgress { observed, .. } => {
                if let Some(waiting) = &mut self.waiting {
                    waiting.observed = Some(observed.clone());
                }
            }
            EventKind::CheckPassed { .. } | EventKind::CheckFailed { .. } => self.waiting = None,
            EventKind::ScenarioStarted { scenario, attempt } => {
                self.phase = if *attempt > 1 {
                    format!("scenario {scenario} (attempt {attempt})")
                } else {
                    format!("scenario {scenario}")
                };
            }
            _ => {}
        }
        self.status
            .set_message(status_message(&self.phase, self.waiting.as_ref()));
    }

    fn finish(&mut self) {
        if let Some(bar) = self.build.take() {
            bar.finish_and_clear();
        }
        if let Some((bar, _)) = self.boot.take() {
            bar.finish_and_clear();
        }
        self.status.finish_and_clear();
    }
}

/// The check the status line shows: what runs, its budget, when it began, what it last saw.
struct Waiting {
    check: String,
    timeout: Duration,
    started: Duration,
    observed: Option<String>,
}

/// The terminal's status line: the phase, then the running check with its budget and start
/// (the spinner beside it counts the run's time) and the state it last observed.
fn status_message(phase: &str, waiting: Option<&Waiting>) -> String {
    let Some(w) = waiting else {
        return phase.to_string();
    };
    let mut message = format!(
        "{phase} | {} (budget {}, since [{}])",
        w.check,
        fmt_duration(w.timeout),
        fmt_duration(w.started)
    );
    match &w.observed {
        Some(observed) => {
            message.push_str(": ");
            message.push_str(observed);
        }
        None => message.push_str(": nothing observed yet"),
    }
    message
}

fn waiting_for(booting: &BTreeSet<String>) -> String {
    booting.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn plain_output(events: &[Event]) -> String {
        let out = Shared::default();
        let mut view = LiveView::plain(Box::new(out.clone()));
        for e in events {
            view.handle(e);
        }
        view.finish();
        let bytes = out.0.lock().expect("output").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn plain_mode_mixed_run() {
        insta::assert_snapshot!(plain_output(&fixture::mixed_run()));
    }

    #[test]
    fn plain_mode_thins_build_progress_and_repeats() {
        let progress = |s: u64, done: u64| Event {
            elapsed: Duration::from_secs(s),
            kind: EventKind::BuildProgress {
                what: ".#vm".into(),
                done,
                expected: 5,
                running: vec![],
                downloads_done: 0,
                downloads_expected: 0,
            },
        };
        let observed = |s: u64, what: &str| Event {
            elapsed: Duration::from_secs(s),
            kind: EventKind::CheckProgress {
                scope: "readiness".into(),
                check: "all nodes Ready".into(),
                observed: what.into(),
            },
        };
        let events = [
            progress(0, 0),
            progress(1, 1),
            progress(2, 2),
            progress(12, 3),
            progress(13, 3),
            progress(14, 5),
            observed(15, "1/3 Ready"),
            observed(16, "1/3 Ready"),
            observed(17, "3/3 Ready"),
        ];
        insta::assert_snapshot!(plain_output(&events), @r"
        [   0.0s] build .#vm: 0/5 built
        [  12.0s] build .#vm: 3/5 built
        [  14.0s] build .#vm: 5/5 built
        [  15.0s] readiness: all nodes Ready: not yet: 1/3 Ready
        [  17.0s] readiness: all nodes Ready: not yet: 3/3 Ready
        ");
    }

    #[test]
    fn the_status_line_names_the_running_check_its_budget_and_what_it_saw() {
        let mut bars = Bars::new(ProgressDrawTarget::hidden());
        let mut lines = Vec::new();
        for event in fixture::every_kind().iter().chain(&fixture::mixed_run()) {
            bars.handle(event);
            let line = status_message(&bars.phase, bars.waiting.as_ref());
            if lines.last() != Some(&line) {
                lines.push(line);
            }
        }
        bars.finish();
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn bars_follow_every_kind_of_event() {
        let mut bars = Bars::new(ProgressDrawTarget::hidden());
        for event in fixture::every_kind().iter().chain(&fixture::mixed_run()) {
            bars.handle(event);
        }
        assert!(bars.boot.is_none(), "every machine came up");
        bars.finish();
    }

    #[test]
    fn spawned_view_stops_at_run_finished() {
        let events = Events::new();
        let view = spawn(&events, Mode::Plain);
        events.emit(EventKind::RunFinished { aborted: None });
        // `events` is still alive: only RunFinished can end the view.
        view.join().expect("view thread");
    }
}
