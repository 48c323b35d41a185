//! Wall-clock times as UTC text, with std only: the run's start in `events.jsonl` and the
//! summary (RFC 3339, to line up with guests' journals), the dates of earlier runs in the HTML
//! report. Dates come from the civil-from-days algorithm (Howard Hinnant's).
//!
//! A leaf: it depends on nothing else in the crate.
//!
//! # Usage
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//!
//! let at = UNIX_EPOCH + Duration::from_millis(1_796_276_160_250);
//! assert_eq!(harness::utc::rfc3339(at), "2026-12-03T05:36:00.250Z");
//! assert_eq!(harness::utc::minutes(1_796_276_160), "2026-12-03 05:36");
//! ```
use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-12-03T05:36:00.250Z`: RFC 3339 in UTC, to the millisecond (as `elapsed` in events).
/// A time before the Unix epoch reads as the epoch.
pub fn rfc3339(at: SystemTime) -> String {
    let millis = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let unix = millis / 1000;
    let rem = unix % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        date(unix),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis % 1000
    )
}

/// `2026-12-03 05:36`, from seconds since the Unix epoch.
pub fn minutes(unix: u64) -> String {
    let rem = unix % 86_400;
    format!("{} {:02}:{:02}", date(unix), rem / 3600, rem % 3600 / 60)
}

/// `2026-12-03`, from seconds since the Unix epoch.
fn date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_read_as_utc() {
        assert_eq!(minutes(0), "1970-01-01 00:00");
        assert_eq!(minutes(951_782_400 + 3_661), "2000-02-29 01:01");
        assert_eq!(minutes(1_796_276_160), "2026-12-03 05:36");
    }

    #[test]
    fn rfc3339_has_seconds_and_milliseconds() {
        let at = |ms: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            at((951_782_400 + 3_661) * 1000 + 7),
            "2000-02-29T01:01:01.007Z"
        );
        assert_eq!(at(1_796_276_159_999), "2026-12-03T05:35:59.999Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
