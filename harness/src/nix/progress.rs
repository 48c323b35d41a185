//! The parser for `nix build --log-format internal-json` (stderr lines `@nix {json}`).
//!
//! Activity and result type numbers are Nix's `ActivityType` / `ResultType` (src/libutil/logging.hh);
//! they have been stable from Nix 2.3 through current releases, which is why plain numbers are fine.
use std::collections::{HashMap, VecDeque};

use serde::Deserialize;
use serde_json::Value;

/// How many lines of each derivation's build log are kept for error reports.
pub const LOG_TAIL_LINES: usize = 25;

const ACT_COPY_PATH: u64 = 100;
const ACT_FILE_TRANSFER: u64 = 101;
const ACT_REALISE: u64 = 102;
const ACT_BUILDS: u64 = 104;
const ACT_BUILD: u64 = 105;
const ACT_SUBSTITUTE: u64 = 108;

const RES_BUILD_LOG_LINE: u64 = 101;
const RES_PROGRESS: u64 = 105;
const RES_POST_BUILD_LOG_LINE: u64 = 107;

/// A snapshot of one `nix build`, handed to the progress callback after every line that changed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildProgress {
    /// The attribute being built (one `nix build` per attribute).
    pub attr: String,
    /// Derivations built so far, out of `expected`; from Nix's `actBuilds` counters.
    pub done: u64,
    /// Derivations to build in all.
    pub expected: u64,
    /// Derivations that failed so far.
    pub failed: u64,
    /// Derivations building right now (`.drv` store paths).
    pub running: Vec<String>,
    /// Copies and downloads in flight (Nix's own description, e.g. "copying path '/nix/store/...'").
    pub downloads: Vec<String>,
    /// The last line any builder printed.
    pub last_log_line: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Line {
    Start {
        id: u64,
        #[serde(rename = "type")]
        kind: u64,
        #[serde(default)]
        text: String,
        #[serde(default)]
        fields: Vec<Value>,
    },
    Stop {
        id: u64,
    },
    Result {
        id: u64,
        #[serde(rename = "type")]
        kind: u64,
        #[serde(default)]
        fields: Vec<Value>,
    },
    Msg {
        level: u64,
        msg: String,
    },
    #[serde(other)]
    Unknown,
}

struct Activity {
    kind: u64,
    text: String,
    drv: Option<String>,
}

/// Folds `@nix` lines into a [`BuildProgress`] plus what error reporting needs afterwards.
#[derive(Default)]
pub struct ProgressParser {
    progress: BuildProgress,
    activities: HashMap<u64, Activity>,
    /// Insertion order of running builds, so `running` lists them oldest first.
    build_order: Vec<u64>,
    logs: HashMap<String, VecDeque<String>>,
    errors: Vec<String>,
    plain_tail: VecDeque<String>,
    realise_started: bool,
}

impl ProgressParser {
    /// A parser for the build of `attr`, nothing seen yet.
    pub fn new(attr: &str) -> Self {
        ProgressParser {
            progress: BuildProgress {
                attr: attr.to_owned(),
                ..BuildProgress::default()
            },
            ..ProgressParser::default()
        }
    }

    /// The build as the lines so far tell it.
    pub fn progress(&self) -> &BuildProgress {
        &self.progress
    }

    /// Error messages Nix printed (level 0), ANSI codes and the `error:` prefix removed.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Whether Nix got past evaluation into realising paths; errors before that are evaluation errors.
    pub fn realise_started(&self) -> bool {
        self.realise_started
    }

    /// The last [`LOG_TAIL_LINES`] lines `drv`'s builder printed.
    pub fn log_tail(&self, drv: &str) -> Vec<String> {
        self.logs
            .get(drv)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Lines on stderr that were not `@nix` JSON (Nix prints some errors raw, e.g. bad arguments).
    pub fn plain_tail(&self) -> Vec<String> {
        self.plain_tail.iter().cloned().collect()
    }

    /// Feeds one stderr line; returns true when the visible progress changed.
    pub fn feed(&mut self, line: &str) -> bool {
        let Some(json) = line.strip_prefix("@nix ") else {
            if !line.trim().is_empty() {
                push_bounded(&mut self.plain_tail, strip_ansi(line));
            }
            return false;
        };
        let Ok(parsed) = serde_json::from_str::<Line>(json) else {
            push_bounded(&mut self.plain_tail, strip_ansi(line));
            return false;
        };
        let before = self.progress.clone();
        match parsed {
            Line::Start {
                id,
                kind,
                text,
                fields,
            } => {
                let drv = (kind == ACT_BUILD)
                    .then(|| fields.first().and_then(Value::as_str).map(str::to_owned))
                    .flatten();
                if kind == ACT_REALISE || kind == ACT_BUILD {
                    self.realise_started = true;
                }
                if kind == ACT_BUILD {
                    self.build_order.push(id);
                }
                self.activities.insert(id, Activity { kind, text, drv });
            }
            Line::Stop { id } => {
                self.activities.remove(&id);
                self.build_order.retain(|b| *b != id);
            }
            Line::Result { id, kind, fields } => self.result(id, kind, &fields),
            Line::Msg { level, msg } => {
                if level == 0 {
                    let clean = strip_ansi(&msg);
                    let clean = clean.strip_prefix("error:").unwrap_or(&clean).trim();
                    self.errors.push(clean.to_owned());
                }
            }
            Line::Unknown => {}
        }
        self.refresh_lists();
        self.progress != before
    }

    fn result(&mut self, id: u64, kind: u64, fields: &[Value]) {
        let Some(activity) = self.activities.get(&id) else {
            return;
        };
        match kind {
            RES_PROGRESS if activity.kind == ACT_BUILDS => {
                let n = |i: usize| fields.get(i).and_then(Value::as_u64).unwrap_or(0);
                self.progress.done = n(0);
                self.progress.expected = n(1);
                self.progress.failed = n(3);
            }
            RES_BUILD_LOG_LINE | RES_POST_BUILD_LOG_LINE => {
                let Some(text) = fields.first().and_then(Value::as_str) else {
                    return;
                };
                let text = strip_ansi(text);
                if let Some(drv) = &activity.drv {
                    push_bounded(self.logs.entry(drv.clone()).or_default(), text.clone());
                }
                self.progress.last_log_line = Some(text);
            }
            _ => {}
        }
    }

    fn refresh_lists(&mut self) {
        let activities = &self.activities;
        self.progress.running = self
            .build_order
            .iter()
            .filter_map(|id| activities.get(id)?.drv.clone())
            .collect();
        let mut downloads: Vec<(u64, String)> = activities
            .iter()
            .filter(|(_, a)| {
                matches!(a.kind, ACT_COPY_PATH | ACT_FILE_TRANSFER | ACT_SUBSTITUTE)
                    && !a.text.is_empty()
            })
            .map(|(id, a)| (*id, a.text.clone()))
            .collect();
        // Activity ids increase, so sorting by id keeps the list stable between snapshots.
        downloads.sort();
        self.progress.downloads = downloads.into_iter().map(|(_, t)| t).collect();
    }
}

fn push_bounded(lines: &mut VecDeque<String>, line: String) {
    if lines.len() == LOG_TAIL_LINES {
        lines.pop_front();
    }
    lines.push_back(line);
}

/// Removes ANSI escape sequences (Nix colours its messages even in JSON mode).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters and intermediates, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines recorded from Debian's Nix 2.8.0 building a two-derivation closure whose leaf fails.
    const FAILING: &str = r#"@nix {"action":"start","id":1,"level":0,"text":"","type":102}
@nix {"action":"start","id":2,"level":0,"text":"","type":104}
@nix {"action":"result","fields":[0,2,0,0],"id":2,"type":105}
@nix {"action":"start","fields":["/nix/store/1qh0-bad.drv","",1,1],"id":5,"level":3,"text":"building '/nix/store/1qh0-bad.drv'","type":105}
@nix {"action":"result","fields":[0,2,1,0],"id":2,"type":105}
@nix {"action":"result","fields":["line1"],"id":5,"type":101}
@nix {"action":"result","fields":["oops"],"id":5,"type":101}
@nix {"action":"result","fields":[0,1,0,1],"id":2,"type":105}
@nix {"action":"stop","id":5}
@nix {"action":"msg","column":null,"file":null,"level":0,"line":null,"msg":"\u001b[31;1merror:\u001b[0m builder for '\u001b[35;1m/nix/store/1qh0-bad.drv\u001b[0m' failed with exit code 3","raw_msg":"x"}"#;

    #[test]
    fn follows_counters_running_builds_and_log_lines() {
        let mut p = ProgressParser::new("bad");
        let mut snapshots = Vec::new();
        for line in FAILING.lines() {
            if p.feed(line) {
                snapshots.push(p.progress().clone());
            }
        }
        assert!(p.realise_started());
        let building = snapshots
            .iter()
            .find(|s| !s.running.is_empty())
            .expect("a snapshot with a running build");
        assert_eq!(building.running, vec!["/nix/store/1qh0-bad.drv".to_owned()]);
        let last = p.progress();
        assert_eq!((last.done, last.expected, last.failed), (0, 1, 1));
        assert!(last.running.is_empty());
        assert_eq!(last.last_log_line.as_deref(), Some("oops"));
        assert_eq!(p.log_tail("/nix/store/1qh0-bad.drv"), vec!["line1", "oops"]);
        assert_eq!(
            p.errors(),
            ["builder for '/nix/store/1qh0-bad.drv' failed with exit code 3"]
        );
    }

    #[test]
    fn keeps_plain_lines_and_bounds_log_tails() {
        let mut p = ProgressParser::new("x");
        assert!(!p.feed("error: unrecognised flag '--frob'"));
        assert_eq!(p.plain_tail(), vec!["error: unrecognised flag '--frob'"]);
        p.feed(r#"@nix {"action":"start","fields":["/d.drv"],"id":1,"type":105,"text":""}"#);
        for i in 0..40 {
            p.feed(&format!(
                r#"@nix {{"action":"result","fields":["l{i}"],"id":1,"type":101}}"#
            ));
        }
        let tail = p.log_tail("/d.drv");
        assert_eq!(tail.len(), LOG_TAIL_LINES);
        assert_eq!(tail.last().map(String::as_str), Some("l39"));
    }

    #[test]
    fn strips_colour_codes() {
        assert_eq!(strip_ansi("\u{1b}[31;1merror:\u{1b}[0m x"), "error: x");
    }
}
