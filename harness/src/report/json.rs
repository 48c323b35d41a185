//! JSON for machines: `events.jsonl` keeps the whole stream (so any rendering can be made
//! again later, e.g. a JUnit file from a run that crashed before writing one) and
//! `summary.json` is [`Summary`] for dashboards and scripts.
use std::io::BufRead;

use super::summary::Summary;
use super::ReportError;
use crate::events::Event;

/// One JSON object per line, in emission order.
pub fn events_jsonl(events: &[Event]) -> Result<String, ReportError> {
    let mut out = String::new();
    for event in events {
        out.push_str(&serde_json::to_string(event)?);
        out.push('\n');
    }
    Ok(out)
}

/// Reads what [`events_jsonl`] wrote. Blank lines are skipped; a bad line is an error
/// naming its number, since a half-read stream would give a summary that lies.
pub fn read_events_jsonl(reader: impl BufRead) -> Result<Vec<Event>, ReportError> {
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| ReportError::BadEventLine {
            line: i + 1,
            source: serde_json::Error::io(source),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(&line).map_err(|source| ReportError::BadEventLine {
            line: i + 1,
            source,
        })?;
        events.push(event);
    }
    Ok(events)
}

/// The summary, pretty-printed.
pub fn summary_json(summary: &Summary) -> Result<String, ReportError> {
    let mut json = serde_json::to_string_pretty(summary)?;
    json.push('\n');
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn events_survive_the_file() {
        let events = fixture::every_kind();
        let text = events_jsonl(&events).expect("serialize");
        assert_eq!(text.lines().count(), events.len());
        let back = read_events_jsonl(text.as_bytes()).expect("read back");
        assert_eq!(back, events);
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = read_events_jsonl("\n{\"elapsed\":1}\n".as_bytes()).expect_err("bad line");
        let text = crate::error::Chain(&err).to_string();
        assert!(text.starts_with("events.jsonl line 2: "), "{text}");
    }

    #[test]
    fn summary_json_mixed_run() {
        let summary = Summary::from_events(&fixture::mixed_run());
        insta::assert_snapshot!(summary_json(&summary).expect("json"));
    }

    #[test]
    fn summary_json_sampled_run() {
        let summary = Summary::from_events(&fixture::sampled_run());
        insta::assert_snapshot!(summary_json(&summary).expect("json"));
    }

    #[test]
    fn summary_json_aborted_run() {
        let summary = Summary::from_events(&fixture::aborted_run());
        insta::assert_snapshot!(summary_json(&summary).expect("json"));
    }
}
