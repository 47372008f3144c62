//! The node's log: one `tracing` subscriber writing to stderr, filtered by
//! `CORECAST_LOG` (an `EnvFilter`, default `info`) and formatted by
//! `CORECAST_LOG_FORMAT` (`text`, the default, or `json`: one object per
//! line), both with a timestamp and a level. Records of dependencies that
//! use the `log` facade (glommio does) are forwarded into the same output.
//!
//! Also owns the per-core tally of refused handshakes, logged as one
//! summary line per core per [`REFUSAL_SUMMARY_MS`] instead of a line per
//! refusal (a flood of bad clients must not become a flood of log lines,
//! and a refusal's token is never logged).

use std::cell::RefCell;
use std::io::IsTerminal;

use tracing_log::AsLog;
use tracing_subscriber::EnvFilter;

/// The filter variable (`EnvFilter` syntax: `info`, `corecast=debug,warn`).
pub const LOG_ENV: &str = "CORECAST_LOG";
/// The format variable: `text` or `json`.
pub const LOG_FORMAT_ENV: &str = "CORECAST_LOG_FORMAT";
/// The filter when [`LOG_ENV`] is unset or empty.
pub const DEFAULT_FILTER: &str = "info";
/// How often each core logs the handshakes it refused since the last
/// summary (when there were any), in milliseconds.
pub const REFUSAL_SUMMARY_MS: u64 = 10_000;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A log setting that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("{LOG_FORMAT_ENV}={0:?}: expected `text` or `json`")]
    Format(String),
    #[error("{LOG_ENV}={value:?}: {message}")]
    Filter { value: String, message: String },
}

/// Parses [`LOG_FORMAT_ENV`]; unset or empty is `text`.
pub fn parse_format(value: Option<&str>) -> Result<LogFormat, LogError> {
    match value.map(str::trim).unwrap_or("") {
        "" | "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(LogError::Format(other.to_string())),
    }
}

/// Parses [`LOG_ENV`]; unset or empty is [`DEFAULT_FILTER`].
pub fn parse_filter(value: Option<&str>) -> Result<EnvFilter, LogError> {
    let value = value.map(str::trim).filter(|v| !v.is_empty());
    EnvFilter::builder()
        .parse(value.unwrap_or(DEFAULT_FILTER))
        .map_err(|e| LogError::Filter {
            value: value.unwrap_or_default().to_string(),
            message: e.to_string(),
        })
}

/// Installs the process's logger from the environment. On a bad setting it
/// installs the default (`info`, text) and returns the error, so that the
/// caller can log it and stop. Call once, before any thread starts.
pub fn init_from_env() -> Result<(), LogError> {
    let format = parse_format(std::env::var(LOG_FORMAT_ENV).ok().as_deref());
    let filter = parse_filter(std::env::var(LOG_ENV).ok().as_deref());
    match (format, filter) {
        (Ok(format), Ok(filter)) => {
            install(format, filter);
            Ok(())
        }
        (format, filter) => {
            let fallback = parse_filter(None).expect("the default filter parses");
            install(format.clone().unwrap_or(LogFormat::Text), fallback);
            Err(format.err().or(filter.err()).expect("one of them failed"))
        }
    }
}

fn install(format: LogFormat, filter: EnvFilter) {
    // `log` records below the filter's most verbose level are dropped in
    // the facade, before they reach tracing (glommio's hot paths call
    // `log::trace!`).
    let max = filter
        .max_level_hint()
        .unwrap_or(tracing::level_filters::LevelFilter::TRACE);
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(max.as_log())
        .init();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(true);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    // Already installed (a second call): keep the first.
    let _ = installed;
}

/// How often a repeating error (an accept loop failing, e.g. on EMFILE) is
/// logged at most, in milliseconds; the repeats between are counted.
pub const REPEAT_ERROR_LOG_MS: u64 = 10_000;

/// Lets one line through per [`REPEAT_ERROR_LOG_MS`] and counts the ones
/// held back, so that an error repeating in a loop is one line per
/// interval, not a flood.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl Throttle {
    /// `Some(held back since the last line)` when a line may be logged
    /// `now`; `None` when this one is held back (and counted).
    pub fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
        let interval = std::time::Duration::from_millis(REPEAT_ERROR_LOG_MS);
        match self.last {
            Some(last) if now.saturating_duration_since(last) < interval => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// Refused handshakes on one core since its last summary, by reason (the
/// handshake error's `code`). Touched only on refusals and once per
/// summary, never on the push path.
#[derive(Debug, Default)]
pub struct RefusalTally {
    counts: RefCell<Vec<(&'static str, u64)>>,
}

impl RefusalTally {
    /// Counts one refusal with `reason`.
    pub fn count(&self, reason: &'static str) {
        let mut counts = self.counts.borrow_mut();
        match counts.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => counts.push((reason, 1)),
        }
    }

    /// The total and a `reason=count,...` list (sorted by reason) since the
    /// last call, then starts again; `None` when nothing was refused.
    pub fn take(&self) -> Option<(u64, String)> {
        let mut counts = std::mem::take(&mut *self.counts.borrow_mut());
        if counts.is_empty() {
            return None;
        }
        counts.sort_unstable();
        let total = counts.iter().map(|(_, n)| n).sum();
        let list = counts
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        Some((total, list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_defaults_to_text_and_refuses_unknown() {
        assert_eq!(parse_format(None), Ok(LogFormat::Text));
        assert_eq!(parse_format(Some("")), Ok(LogFormat::Text));
        assert_eq!(parse_format(Some("json")), Ok(LogFormat::Json));
        let err = parse_format(Some("xml")).unwrap_err();
        assert!(err.to_string().contains("CORECAST_LOG_FORMAT"), "{err}");
    }

    #[test]
    fn filter_defaults_to_info_and_names_a_bad_directive() {
        let filter = parse_filter(None).expect("default");
        assert_eq!(
            filter.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::INFO)
        );
        assert!(parse_filter(Some("corecast=debug,warn")).is_ok());
        let err = parse_filter(Some("corecast=loud")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CORECAST_LOG=\"corecast=loud\""),
            "{err}"
        );
    }

    #[test]
    fn throttle_lets_one_line_per_interval_through_and_counts_the_rest() {
        let mut throttle = Throttle::default();
        let t0 = std::time::Instant::now();
        let interval = std::time::Duration::from_millis(REPEAT_ERROR_LOG_MS);
        assert_eq!(throttle.allow(t0), Some(0));
        assert_eq!(throttle.allow(t0 + interval / 2), None);
        assert_eq!(throttle.allow(t0 + interval / 2), None);
        assert_eq!(throttle.allow(t0 + interval), Some(2));
        assert_eq!(throttle.allow(t0 + interval * 2), Some(0));
    }

    #[test]
    fn tally_sums_by_reason_and_starts_again() {
        let tally = RefusalTally::default();
        assert_eq!(tally.take(), None);
        tally.count("token_bad_signature");
        tally.count("busy");
        tally.count("token_bad_signature");
        assert_eq!(
            tally.take(),
            Some((3, "busy=1,token_bad_signature=2".to_string()))
        );
        assert_eq!(tally.take(), None);
    }
}
