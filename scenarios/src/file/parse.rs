//! Reading a scenario file: TOML with line numbers kept, every step checked against the
//! vocabulary ([`crate::vocabulary`]), every error naming the file, the line and the field.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use harness::vm::DEFAULT_BOOT_TIMEOUT;
use serde::Deserialize;
use toml::{Spanned, Value};

use super::*;
use crate::vocabulary::{self, ExpectKind, StepKind, WaitKind};
use harness::fault::FaultKind;

/// [`ScenarioFile::parse`]: the whole file, or the first problem in it.
pub(super) fn parse_file(text: &str, path: &Path) -> Result<ScenarioFile, FileError> {
    let src = Source::new(text, path);
    let raw: RawFile = toml::from_str(text).map_err(|e| src.toml_error(&e))?;

    let name = match raw.name {
        None => return Err(src.error(1, "name", "missing: every scenario file needs `name = \"...\"` (lower-case letters, digits and dashes)")),
        Some(value) => {
            let line = src.line(value.span().start);
            let name = expect_string(&src, line, "name", value.into_inner())?;
            if !is_slug(&name) {
                return Err(src.error(
                    line,
                    "name",
                    format!("expected lower-case letters, digits and dashes (it becomes a JUnit testcase and a directory name), saw {name:?}"),
                ));
            }
            name
        }
    };
    let description = match raw.description {
        None => None,
        Some(value) => {
            let line = src.line(value.span().start);
            Some(expect_string(
                &src,
                line,
                "description",
                value.into_inner(),
            )?)
        }
    };
    if raw.step.is_empty() {
        return Err(src.error(
            src.last_line(),
            "step",
            "the file has no [[step]]: a scenario needs at least one",
        ));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let steps = raw
        .step
        .into_iter()
        .enumerate()
        .map(|(i, table)| parse_step(&src, base, i + 1, table))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ScenarioFile {
        path: path.to_path_buf(),
        name,
        description,
        steps,
    })
}

/// Field values stay `toml::Value` so that the type checks are ours: serde's messages name
/// neither the field nor the line.
type RawTable = BTreeMap<Spanned<String>, Spanned<Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Option<Spanned<Value>>,
    description: Option<Spanned<Value>>,
    #[serde(default)]
    step: Vec<Spanned<RawTable>>,
}

struct Source<'a> {
    text: &'a str,
    path: &'a Path,
    /// Byte offset of each line's first character.
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(text: &'a str, path: &'a Path) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            text,
            path,
            line_starts,
        }
    }

    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    fn last_line(&self) -> usize {
        self.line(self.text.trim_end().len())
    }

    fn error(
        &self,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> FileError {
        FileError::Invalid {
            path: self.path.to_path_buf(),
            line,
            field: field.into(),
            message: message.into(),
        }
    }

    /// Syntax errors, unknown top-level keys and a `step` that is not an array of tables come
    /// from the TOML parser; its span gives the line, and the field is recovered from its
    /// message or from the source line.
    fn toml_error(&self, e: &toml::de::Error) -> FileError {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let line = self.line(offset);
        let mut message = e.message().trim().to_string();
        if message.ends_with("expected a sequence") {
            // serde's words for `[step]` (or `step = ...`) where `[[step]]` was meant.
            message.push_str(": steps are written as [[step]] tables");
        }
        let field = backticked(&message)
            .filter(|_| {
                message.starts_with("unknown field") || message.starts_with("duplicate key")
            })
            .or_else(|| self.key_on_line(line))
            .unwrap_or_else(|| "(file)".to_string());
        self.error(line, field, message)
    }

    /// The key of `key = value` or the name of a `[table]` header on a line.
    fn key_on_line(&self, line: usize) -> Option<String> {
        let text = self.text.lines().nth(line.checked_sub(1)?)?.trim();
        let key = if let Some(header) = text.strip_prefix('[') {
            header.trim_start_matches('[').split(']').next()?
        } else {
            text.split('=').next()?
        };
        let key = key.trim().trim_matches('"');
        (!key.is_empty() && !key.starts_with('#')).then(|| key.to_string())
    }
}

fn backticked(message: &str) -> Option<String> {
    let rest = &message[message.find('`')? + 1..];
    Some(rest[..rest.find('`')?].to_string())
}

fn is_slug(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
}

/// How a value looks in a message: its TOML type and, when short, the value itself.
fn seen(value: &Value) -> String {
    let shown = value.to_string();
    if shown.len() <= 40 && !shown.contains('\n') {
        format!("{} {shown}", value.type_str())
    } else {
        value.type_str().to_string()
    }
}

fn expect_string(
    src: &Source,
    line: usize,
    field: &str,
    value: Value,
) -> Result<String, FileError> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Ok(s),
        Value::String(_) => Err(src.error(line, field, "expected a non-empty string, saw \"\"")),
        other => Err(src.error(
            line,
            field,
            format!("expected a string, saw {}", seen(&other)),
        )),
    }
}

/// `"90s"`, `"3m"`, `"1m30s"`, `"500ms"`, `"1h"`: numbers each followed by a unit.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(n).ok()?)?)?;
        rest = &rest[len..];
    }
    Some(total)
}

/// Reads the fields of one step, checking types and recording lines.
struct StepReader<'s, 'a> {
    src: &'s Source<'a>,
    number: usize,
    /// The line of the kind key: where "this step lacks X" errors point.
    kind_line: usize,
    /// e.g. `wait = "node-ready"`, for messages.
    kind_text: String,
    fields: BTreeMap<String, (usize, Value)>,
    lines: BTreeMap<String, usize>,
}

impl StepReader<'_, '_> {
    fn field(&self, name: &str) -> String {
        format!("step[{}].{name}", self.number)
    }

    fn err(&self, line: usize, name: &str, message: impl Into<String>) -> FileError {
        self.src.error(line, self.field(name), message)
    }

    fn take(&mut self, name: &str) -> Option<(usize, Value)> {
        let (line, value) = self.fields.remove(name)?;
        self.lines.insert(name.to_string(), line);
        Some((line, value))
    }

    fn missing(&self, name: &str, example: &str) -> FileError {
        self.err(
            self.kind_line,
            name,
            format!(
                "missing: a `{}` step needs `{name}` (e.g. {example})",
                self.kind_text
            ),
        )
    }

    fn opt_string(&mut self, name: &str) -> Result<Option<String>, FileError> {
        match self.take(name) {
            None => Ok(None),
            Some((line, value)) => {
                expect_string(self.src, line, &self.field(name), value).map(Some)
            }
        }
    }

    fn string(&mut self, name: &str, example: &str) -> Result<String, FileError> {
        self.opt_string(name)?
            .ok_or_else(|| self.missing(name, example))
    }

    fn opt_duration(&mut self, name: &str) -> Result<Option<Duration>, FileError> {
        let Some((line, value)) = self.take(name) else {
            return Ok(None);
        };
        let expected =
            "expected a duration such as \"90s\", \"3m\" or \"1m30s\" (units ms, s, m, h)";
        let Value::String(text) = &value else {
            return Err(self.err(line, name, format!("{expected}, saw {}", seen(&value))));
        };
        match parse_duration(text) {
            Some(d) if d > Duration::ZERO => Ok(Some(d)),
            Some(_) => Err(self.err(
                line,
                name,
                format!("expected a duration above zero, saw {text:?}"),
            )),
            None => Err(self.err(line, name, format!("{expected}, saw {text:?}"))),
        }
    }

    fn duration_or(&mut self, name: &str, default: Duration) -> Result<Duration, FileError> {
        Ok(self.opt_duration(name)?.unwrap_or(default))
    }

    fn opt_count(&mut self, name: &str, min: i64) -> Result<Option<u32>, FileError> {
        let Some((line, value)) = self.take(name) else {
            return Ok(None);
        };
        match value {
            Value::Integer(n) if n >= min => u32::try_from(n).map(Some).map_err(|_| {
                self.err(
                    line,
                    name,
                    format!("expected at most {}, saw {n}", u32::MAX),
                )
            }),
            Value::Integer(n) => {
                Err(self.err(line, name, format!("expected an integer >= {min}, saw {n}")))
            }
            other => Err(self.err(
                line,
                name,
                format!("expected an integer >= {min}, saw {}", seen(&other)),
            )),
        }
    }

    fn string_list(
        &mut self,
        name: &str,
        example: &str,
    ) -> Result<(usize, Vec<String>), FileError> {
        let Some((line, value)) = self.take(name) else {
            return Err(self.missing(name, example));
        };
        let Value::Array(items) = value else {
            return Err(self.err(
                line,
                name,
                format!(
                    "expected an array of strings (e.g. {example}), saw {}",
                    seen(&value)
                ),
            ));
        };
        items
            .into_iter()
            .map(|item| match item {
                Value::String(s) if !s.trim().is_empty() => Ok(s),
                other => Err(self.err(
                    line,
                    name,
                    format!("expected an array of non-empty strings (e.g. {example}), saw an element {}", seen(&other)),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|list| (line, list))
    }

    fn namespace(&mut self) -> Result<String, FileError> {
        Ok(self
            .opt_string("namespace")?
            .unwrap_or_else(|| "default".to_string()))
    }

    fn pair(&mut self) -> Result<(String, String), FileError> {
        let example = r#"machines = ["grey-area", "limiting-factor"]"#;
        let (line, list) = self.string_list("machines", example)?;
        match <[String; 2]>::try_from(list) {
            Ok([a, b]) if a != b => Ok((a, b)),
            Ok([a, _]) => Err(self.err(
                line,
                "machines",
                format!("expected two different machines, saw {a:?} twice"),
            )),
            Err(list) => Err(self.err(
                line,
                "machines",
                format!(
                    "expected exactly two machines (e.g. {example}), saw {}",
                    list.len()
                ),
            )),
        }
    }

    fn taint(&mut self) -> Result<Taint, FileError> {
        let key = self.string("key", r#"key = "node.kubernetes.io/unreachable""#)?;
        let line = self.kind_line;
        let effect = match self.opt_string("effect")? {
            None => None,
            Some(text) => Some(TaintEffect::from_name(&text).ok_or_else(|| {
                self.err(
                    self.lines.get("effect").copied().unwrap_or(line),
                    "effect",
                    format!(
                        "expected one of {}, saw {text:?}",
                        TaintEffect::names().join(" | ")
                    ),
                )
            })?),
        };
        Ok(Taint { key, effect })
    }

    fn label(&mut self) -> Result<Label, FileError> {
        let text = self.string("label", r#"label = "labtest.io/generation=node-label""#)?;
        let (key, value) = match text.split_once('=') {
            Some((key, value)) => (key.trim(), Some(value.trim().to_string())),
            None => (text.trim(), None),
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            let line = self.lines.get("label").copied().unwrap_or(self.kind_line);
            return Err(self.err(
                line,
                "label",
                format!(
                    "expected \"key=value\" or \"key\" with a key without spaces, saw {text:?}"
                ),
            ));
        }
        Ok(Label {
            key: key.to_string(),
            value,
        })
    }

    fn pods(&mut self) -> Result<PodSelector, FileError> {
        match (self.opt_string("pod")?, self.opt_string("selector")?) {
            (Some(name), None) => Ok(PodSelector::Name(name)),
            (None, Some(selector)) => Ok(PodSelector::Labels(selector)),
            (None, None) => Err(self.missing("pod", r#"pod = "web-0" or selector = "app=web""#)),
            (Some(_), Some(_)) => Err(self.err(
                self.lines
                    .get("selector")
                    .copied()
                    .unwrap_or(self.kind_line),
                "selector",
                "expected either `pod` or `selector`, saw both",
            )),
        }
    }
}

/// Default deadlines of steps whose `timeout` is optional: long enough for a TCG guest.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
const REBUILD_TIMEOUT: Duration = Duration::from_secs(600);
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(300);

/// A step's kind key, with the word its value names for the kinds that have a vocabulary.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Apply,
    Manifest,
    Fault(FaultKind),
    Wait(WaitKind),
    Rebuild,
    Rollback,
    Expect(ExpectKind),
    Sleep,
}

fn parse_step(
    src: &Source,
    base: &Path,
    number: usize,
    table: Spanned<RawTable>,
) -> Result<Step, FileError> {
    let step_line = src.line(table.span().start);
    let mut fields = BTreeMap::new();
    for (key, value) in table.into_inner() {
        let line = src.line(key.span().start);
        fields.insert(key.into_inner(), (line, value.into_inner()));
    }
    let step_field = format!("step[{number}]");

    let kinds = vocabulary::kinds();
    let present: Vec<StepKind> = StepKind::ALL
        .iter()
        .copied()
        .filter(|k| fields.contains_key(k.name()))
        .collect();
    let kind = match present.as_slice() {
        [kind] => *kind,
        [] => {
            // A misspelt kind key is the likely cause: point at it.
            let hint = fields
                .iter()
                .map(|(key, (line, _))| (did_you_mean(key, &kinds), *line))
                .find(|(hint, _)| !hint.is_empty());
            let (hint, line) = hint.unwrap_or_default();
            return Err(src.error(
                if line == 0 { step_line } else { line },
                step_field,
                format!(
                    "this step does nothing: it needs exactly one of {}{hint}",
                    kinds.join(", ")
                ),
            ));
        }
        [first, second, ..] => {
            let (first, second) = (first.name(), second.name());
            let line = |k: &str| fields.get(k).map_or(step_line, |(l, _)| *l);
            return Err(src.error(
                line(second),
                step_field,
                format!(
                    "expected one kind per step, saw `{first}` (line {}) and `{second}` (line {}): split it into two [[step]]s",
                    line(first),
                    line(second)
                ),
            ));
        }
    };

    // The kind's value: a word of its vocabulary, or for apply/manifest/rebuild/rollback/sleep
    // a free string checked below.
    let kind_name = kind.name();
    let kind_field = format!("step[{number}].{kind_name}");
    let (kind_line, kind_value) = fields
        .remove(kind_name)
        .ok_or_else(|| src.error(step_line, kind_field.clone(), "missing"))?;
    let kind_value = expect_string(src, kind_line, &kind_field, kind_value)?;
    let word = match kind {
        StepKind::Apply => Some(Kind::Apply),
        StepKind::Manifest => Some(Kind::Manifest),
        StepKind::Fault => FaultKind::from_name(&kind_value).map(Kind::Fault),
        StepKind::Wait => WaitKind::from_name(&kind_value).map(Kind::Wait),
        StepKind::Rebuild => Some(Kind::Rebuild),
        StepKind::Rollback => Some(Kind::Rollback),
        StepKind::Expect => ExpectKind::from_name(&kind_value).map(Kind::Expect),
        StepKind::Sleep => Some(Kind::Sleep),
    };
    let values = vocabulary::values(kind_name);
    let Some(word) = word else {
        return Err(src.error(
            kind_line,
            kind_field,
            format!(
                "expected one of {}, saw {kind_value:?}{}",
                values.join(" | "),
                did_you_mean(&kind_value, &values)
            ),
        ));
    };
    let kind_text = if values.is_empty() {
        kind_name.to_string()
    } else {
        format!("{kind_name} = \"{kind_value}\"")
    };

    // Keys that do not belong are reported before keys that are missing: a misspelt
    // `timout` should be named as such, not reported as a missing `timeout`.
    let allowed = vocabulary::keys(kind_name, &kind_value);
    for (key, (line, _)) in &fields {
        if key == "note" || allowed.contains(&key.as_str()) {
            continue;
        }
        let takes = if allowed.is_empty() {
            "no other keys".to_string()
        } else {
            allowed.join(", ")
        };
        let what = if KNOWN_FIELDS.contains(&key.as_str()) {
            "does not apply to"
        } else {
            "is not a key of"
        };
        return Err(src.error(
            *line,
            format!("step[{number}].{key}"),
            format!(
                "`{key}` {what} a `{kind_text}` step; it takes: {takes} (and note){}",
                did_you_mean(key, allowed)
            ),
        ));
    }

    let mut r = StepReader {
        src,
        number,
        kind_line,
        kind_text,
        fields,
        lines: BTreeMap::from([(kind_name.to_string(), kind_line)]),
    };
    let note = r.opt_string("note")?;
    let machine_example = r#"machine = "limiting-factor""#;
    let node_example = r#"node = "limiting-factor""#;
    let unit_example = r#"unit = "kubelet.service""#;
    let deployment_example = r#"deployment = "web""#;
    let action = match word {
        Kind::Apply => {
            let written = kind_value;
            let path = base.join(&written);
            if !path.is_file() {
                return Err(src.error(
                    kind_line,
                    kind_field,
                    format!(
                        "expected a manifest file (relative to the scenario file), saw {written:?}: {} is not a readable file",
                        path.display()
                    ),
                ));
            }
            Action::Apply(Apply {
                source: ManifestSource::File { path, written },
                namespace: r.opt_string("namespace")?,
            })
        }
        Kind::Manifest => Action::Apply(Apply {
            source: ManifestSource::Inline(kind_value),
            namespace: r.opt_string("namespace")?,
        }),
        Kind::Fault(fault) => {
            let fault = match fault {
                FaultKind::Crash => Fault::Crash {
                    machine: r.string("machine", machine_example)?,
                },
                FaultKind::Freeze => Fault::Freeze {
                    machine: r.string("machine", machine_example)?,
                },
                FaultKind::Thaw => Fault::Thaw {
                    machine: r.string("machine", machine_example)?,
                },
                FaultKind::Shutdown => Fault::Shutdown {
                    machine: r.string("machine", machine_example)?,
                    timeout: r.duration_or("timeout", SHUTDOWN_TIMEOUT)?,
                },
                FaultKind::Start => Fault::Start {
                    machine: r.string("machine", machine_example)?,
                    timeout: r.duration_or("timeout", DEFAULT_BOOT_TIMEOUT)?,
                },
                FaultKind::Reboot => Fault::Reboot {
                    machine: r.string("machine", machine_example)?,
                    timeout: r.duration_or("timeout", DEFAULT_BOOT_TIMEOUT)?,
                },
                FaultKind::LinkDown => Fault::LinkDown {
                    machine: r.string("machine", machine_example)?,
                },
                FaultKind::LinkUp => Fault::LinkUp {
                    machine: r.string("machine", machine_example)?,
                },
                FaultKind::Partition => {
                    let (a, b) = r.pair()?;
                    Fault::Partition { a, b }
                }
                FaultKind::Heal => {
                    let (a, b) = r.pair()?;
                    Fault::Heal { a, b }
                }
                FaultKind::Isolate => Fault::Isolate {
                    machine: r.string("machine", machine_example)?,
                },
                FaultKind::Rejoin => Fault::Rejoin {
                    machine: r.string("machine", machine_example)?,
                },
                FaultKind::StopUnit => Fault::StopUnit {
                    machine: r.string("machine", machine_example)?,
                    unit: r.string("unit", unit_example)?,
                },
                FaultKind::StartUnit => Fault::StartUnit {
                    machine: r.string("machine", machine_example)?,
                    unit: r.string("unit", unit_example)?,
                },
            };
            fault
                .check_arguments()
                .map_err(|reason| r.err(kind_line, "fault", reason))?;
            Action::Fault(fault)
        }
        Kind::Wait(wait) => {
            let condition = match wait {
                WaitKind::NodeReady => WaitFor::NodeReady {
                    node: r.string("node", node_example)?,
                },
                WaitKind::NodeNotReady => WaitFor::NodeNotReady {
                    node: r.string("node", node_example)?,
                },
                WaitKind::NodeHasLabel => WaitFor::NodeHasLabel {
                    node: r.string("node", node_example)?,
                    label: r.label()?,
                },
                WaitKind::NodeLacksLabel => WaitFor::NodeLacksLabel {
                    node: r.string("node", node_example)?,
                    label: r.label()?,
                },
                WaitKind::NodeTainted => WaitFor::NodeTainted {
                    node: r.string("node", node_example)?,
                    taint: r.taint()?,
                },
                WaitKind::NodeUntainted => WaitFor::NodeUntainted {
                    node: r.string("node", node_example)?,
                    taint: r.taint()?,
                },
                WaitKind::DeploymentAvailable => WaitFor::DeploymentAvailable {
                    deployment: r.string("deployment", deployment_example)?,
                    namespace: r.namespace()?,
                    replicas: r.opt_count("replicas", 1)?,
                },
                WaitKind::DeploymentRolledOut => WaitFor::DeploymentRolledOut {
                    deployment: r.string("deployment", deployment_example)?,
                    namespace: r.namespace()?,
                },
                WaitKind::DaemonSetReady => WaitFor::DaemonSetReady {
                    daemonset: r.string("daemonset", r#"daemonset = "probe""#)?,
                    namespace: r.namespace()?,
                },
                WaitKind::PodRunning => WaitFor::PodRunning {
                    pods: r.pods()?,
                    namespace: r.namespace()?,
                    node: r.opt_string("node")?,
                    count: r.opt_count("count", 1)?.unwrap_or(1),
                },
                WaitKind::PodPending => WaitFor::PodPending {
                    pods: r.pods()?,
                    namespace: r.namespace()?,
                    count: r.opt_count("count", 1)?.unwrap_or(1),
                },
                WaitKind::UnitActive => WaitFor::UnitActive {
                    machine: r.string("machine", machine_example)?,
                    unit: r.string("unit", unit_example)?,
                },
                WaitKind::UnitFailed => WaitFor::UnitFailed {
                    machine: r.string("machine", machine_example)?,
                    unit: r.string("unit", unit_example)?,
                },
                WaitKind::CommandSucceeds => WaitFor::CommandSucceeds {
                    machine: r.string("machine", machine_example)?,
                    command: r.string("command", r#"command = "test -e /run/ready""#)?,
                },
            };
            let timeout = r.opt_duration("timeout")?.ok_or_else(|| {
                r.missing("timeout", r#"timeout = "3m"; every wait needs a deadline"#)
            })?;
            let interval = r
                .opt_duration("interval")?
                .unwrap_or_else(|| condition.default_interval());
            if interval >= timeout {
                return Err(r.err(
                    r.lines.get("interval").copied().unwrap_or(kind_line),
                    "interval",
                    format!(
                        "expected an interval shorter than the timeout ({}), saw {}",
                        humane(timeout),
                        humane(interval)
                    ),
                ));
            }
            Action::Wait(WaitStep {
                condition,
                timeout,
                interval,
            })
        }
        Kind::Rebuild => Action::Rebuild(Rebuild {
            generation: kind_value,
            timeout: r.duration_or("timeout", REBUILD_TIMEOUT)?,
        }),
        Kind::Rollback => Action::Rollback(Rollback {
            machine: kind_value,
            timeout: r.duration_or("timeout", ROLLBACK_TIMEOUT)?,
        }),
        Kind::Expect(expect) => Action::Expect(match expect {
            ExpectKind::PodsOnSurvivingNodes => Expectation::PodsOnSurvivingNodes {
                deployment: r.string("deployment", deployment_example)?,
                namespace: r.namespace()?,
                failed_nodes: {
                    let example = r#"failed_nodes = ["limiting-factor"]"#;
                    let (line, nodes) = r.string_list("failed_nodes", example)?;
                    if nodes.is_empty() {
                        return Err(r.err(
                            line,
                            "failed_nodes",
                            format!("expected at least one node (e.g. {example}), saw []"),
                        ));
                    }
                    nodes
                },
            },
            ExpectKind::ReplicasAvailable => Expectation::ReplicasAvailable {
                deployment: r.string("deployment", deployment_example)?,
                namespace: r.namespace()?,
                count: r
                    .opt_count("count", 0)?
                    .ok_or_else(|| r.missing("count", "count = 3"))?,
            },
            ExpectKind::NodeHasLabel => Expectation::NodeHasLabel {
                node: r.string("node", node_example)?,
                label: r.label()?,
            },
            ExpectKind::NodeLacksLabel => Expectation::NodeLacksLabel {
                node: r.string("node", node_example)?,
                label: r.label()?,
            },
            ExpectKind::CommandOutput => Expectation::CommandOutput {
                machine: r.string("machine", machine_example)?,
                command: r.string("command", r#"command = "hostname""#)?,
                contains: r.string("contains", r#"contains = "limiting-factor""#)?,
            },
        }),
        Kind::Sleep => {
            let d = parse_duration(&kind_value).filter(|d| *d > Duration::ZERO);
            Action::Sleep(d.ok_or_else(|| {
                src.error(
                    kind_line,
                    kind_field,
                    format!("expected a duration above zero such as \"10s\" or \"1m30s\", saw {kind_value:?}"),
                )
            })?)
        }
    };
    debug_assert!(r.fields.is_empty(), "unread fields {:?}", r.fields.keys());
    Ok(Step {
        number,
        line: step_line,
        action,
        note,
        lines: r.lines,
    })
}

/// Every key some step kind takes: a key outside this list is a typo, inside it a misplaced key.
const KNOWN_FIELDS: [&str; 19] = [
    "namespace",
    "machine",
    "machines",
    "timeout",
    "interval",
    "unit",
    "node",
    "key",
    "effect",
    "deployment",
    "replicas",
    "daemonset",
    "pod",
    "selector",
    "count",
    "command",
    "failed_nodes",
    "label",
    "contains",
];

/// " (did you mean `x`?)" for a near miss among `candidates`, else "".
fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let s = Duration::from_secs;
        assert_eq!(parse_duration("90s"), Some(s(90)));
        assert_eq!(parse_duration("3m"), Some(s(180)));
        assert_eq!(parse_duration("1m30s"), Some(s(90)));
        assert_eq!(parse_duration("1h2m3s"), Some(s(3723)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        for bad in ["", "90", "s", "3 m", "1.5m", "-1s", "3min", "1d"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn humane_round_trips() {
        for text in ["90s", "3m", "1m30s", "1h", "500ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&humane(d)), Some(d), "{text}");
        }
        assert_eq!(humane(Duration::from_secs(90)), "1m30s");
    }

    #[test]
    fn lines_are_one_based() {
        let src = Source::new("a\nb\n\nc", Path::new("x"));
        assert_eq!(src.line(0), 1);
        assert_eq!(src.line(2), 2);
        assert_eq!(src.line(4), 3);
        assert_eq!(src.line(5), 4);
    }

    #[test]
    fn near_misses_are_suggested() {
        assert_eq!(
            did_you_mean("timout", &["node", "timeout"]),
            " (did you mean `timeout`?)"
        );
        assert_eq!(did_you_mean("zzz", &["node", "timeout"]), "");
        assert_eq!(edit_distance("crsh", "crash"), 1);
    }
}
