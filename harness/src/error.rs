//! How an error is shown: every error type of labtest leaves its cause out of its own message
//! (or is `#[error(transparent)]`), so [`Chain`], which walks `source()`, prints each cause once.
//! Anything that shows an error to a user - a report, a warning, a failed check - goes through
//! it, or through anyhow's `{:#}`, which walks the same chain.
use std::error::Error;
use std::fmt;

/// An error and every cause under it: `outer: cause: root cause`.
///
/// A cause whose message the one above it already ends with (a foreign error type that both
/// embeds and returns its source) is not repeated.
///
/// # Usage
/// ```
/// use harness::error::Chain;
/// let cause = std::io::Error::other("disk full");
/// let error = harness::report::ReportError::Io { path: "/r/junit.xml".into(), source: cause };
/// assert_eq!(Chain(&error).to_string(), "writing /r/junit.xml: disk full");
/// ```
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            if !shown.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer {
        source: Middle,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("middle: {source}")]
    struct Middle {
        source: std::io::Error,
    }

    #[test]
    fn every_cause_is_shown_once() {
        let error = Outer {
            source: Middle {
                source: std::io::Error::other("root"),
            },
        };
        // Middle embeds its source as foreign error types do: root is shown once all the same.
        assert_eq!(Chain(&error).to_string(), "outer: middle: root");
    }
}
