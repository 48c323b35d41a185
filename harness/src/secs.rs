//! Durations as seconds with millisecond precision, as every JSON file of a run writes them
//! (`events.jsonl`, `summary.json`, `history.jsonl`): readable, and a whole-millisecond duration
//! survives the round trip exactly. Use with `#[serde(with = "crate::secs")]`.
//!
//! A leaf: it depends on nothing else in the crate, so the vocabularies ([`crate::fault`],
//! [`crate::events`]) and the reports can all use it.
use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// Writes `d` as seconds, to the millisecond.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_millis() as f64 / 1000.0)
}

/// Reads seconds; a negative or non-finite number is refused.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(serde::de::Error::custom(format!(
            "not a duration in seconds: {secs}"
        )));
    }
    Ok(Duration::from_millis((secs * 1000.0).round() as u64))
}
