//! Latency histograms: microsecond HdrHistograms, their transport between processes as raw
//! (value, count) pairs, the classic `.hgrm` percentile text, a short percentile summary, and
//! the mergeable form: an HdrHistogram interval log (`.hlog`, one compressed V2 histogram in
//! base64 per worker, tagged), which `corecast-bench merge` and HdrHistogram's own tools
//! (`HistogramLogProcessor`) read.

use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

use crate::limits::{HISTOGRAM_MAX_US, HISTOGRAM_SIGFIG};

/// Interval-log max values are divided by this: microseconds recorded, milliseconds shown.
const HLOG_MAX_VALUE_DIVISOR: f64 = 1_000.0;
/// Most intervals one `.hlog` may hold when read back (workers x runs merged).
const HLOG_INTERVALS_MAX: usize = 100_000;

/// A latency histogram in microseconds.
pub type Hist = Histogram<u64>;

/// Percentile ticks per half distance in the `.hgrm` output (HdrHistogram's default is 5).
const HGRM_TICKS_PER_HALF_DISTANCE: u32 = 5;
/// `.hgrm` values are printed in milliseconds.
const HGRM_UNIT_US: f64 = 1_000.0;

/// An empty histogram covering 1 us ..= HISTOGRAM_MAX_US.
pub fn new_hist() -> Hist {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, HISTOGRAM_SIGFIG)
        .expect("constant bounds are valid")
}

/// Records `us`, clamped into the histogram's range.
pub fn record(h: &mut Hist, us: u64) {
    h.saturating_record(us.clamp(1, HISTOGRAM_MAX_US));
}

/// A histogram as the non-empty (value, count) pairs, for JSON lines between processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawHist(pub Vec<(u64, u64)>);

impl RawHist {
    pub fn from_hist(h: &Hist) -> RawHist {
        RawHist(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds these counts into `into`.
    pub fn merge_into(&self, into: &mut Hist) {
        for &(value, count) in &self.0 {
            // Values came from a histogram with the same bounds; clamp anyway.
            let _ = into.record_n(value.clamp(1, HISTOGRAM_MAX_US), count);
        }
    }
}

/// One contributor to a histogram: a worker, the parent, or a whole earlier run.
#[derive(Debug, Clone)]
pub struct Part {
    /// Interval-log tag (no spaces or commas), e.g. `worker-3`.
    pub tag: String,
    pub start_us: u64,
    pub end_us: u64,
    pub hist: Hist,
}

/// A histogram folded from its parts, the parts kept for the interval log.
#[derive(Debug, Clone)]
pub struct HistSet {
    pub merged: Hist,
    pub parts: Vec<Part>,
}

impl Default for HistSet {
    fn default() -> HistSet {
        HistSet {
            merged: new_hist(),
            parts: Vec::new(),
        }
    }
}

impl HistSet {
    /// Adds `hist` to the merged histogram and keeps it as a part tagged `tag`.
    pub fn add(&mut self, tag: &str, start_us: u64, end_us: u64, hist: Hist) {
        add_clamped(&mut self.merged, &hist);
        let tag: String = tag
            .chars()
            .map(|c| {
                if matches!(c, ',' | ' ' | '\r' | '\n') {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        self.parts.push(Part {
            tag,
            start_us,
            end_us: end_us.max(start_us),
            hist,
        });
    }
}

/// Adds every count of `from` into `into`, values clamped into `into`'s range.
pub fn add_clamped(into: &mut Hist, from: &Hist) {
    for v in from.iter_recorded() {
        let _ = into.record_n(
            v.value_iterated_to().clamp(1, HISTOGRAM_MAX_US),
            v.count_at_value(),
        );
    }
}

/// Why an interval log could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HlogError {
    #[error("interval log: {0}")]
    Write(String),
    #[error("interval log: parse error at byte {0}")]
    Parse(usize),
    #[error("interval log: bad histogram {index}: {reason}")]
    Histogram { index: usize, reason: String },
    #[error("interval log: more than {HLOG_INTERVALS_MAX} intervals")]
    TooManyIntervals,
}

fn duration_of_us(us: u64) -> Duration {
    Duration::from_micros(us)
}

/// The interval log of `set`: a header (`StartTime` = `BaseTime` = the first part's start),
/// then one line per part, `Tag=T,start,duration,max_ms,HISTFAAA...` (timestamps in seconds
/// from BaseTime, values recorded in microseconds).
pub fn hlog_text(set: &HistSet, comment: &str) -> Result<String, HlogError> {
    let base_us = set.parts.iter().map(|p| p.start_us).min().unwrap_or(0);
    let base = std::time::UNIX_EPOCH + duration_of_us(base_us);
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    {
        let mut writer = IntervalLogWriterBuilder::new()
            .add_comment(comment)
            .add_comment("values are microseconds; merge with `corecast-bench merge`")
            .with_start_time(base)
            .with_base_time(base)
            .with_max_value_divisor(HLOG_MAX_VALUE_DIVISOR)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(|e| HlogError::Write(e.to_string()))?;
        for part in &set.parts {
            writer
                .write_histogram(
                    &part.hist,
                    duration_of_us(part.start_us - base_us),
                    duration_of_us(part.end_us - part.start_us),
                    Tag::new(&part.tag),
                )
                .map_err(|e| HlogError::Write(e.to_string()))?;
        }
    }
    String::from_utf8(out).map_err(|e| HlogError::Write(e.to_string()))
}

/// The parts of an interval log (as written by [`hlog_text`] or by HdrHistogram's Java
/// `HistogramLogWriter`), folded into a [`HistSet`].
pub fn read_hlog(bytes: &[u8]) -> Result<HistSet, HlogError> {
    let mut set = HistSet::default();
    let mut base_us = 0u64;
    let mut deserializer = Deserializer::new();
    for (index, entry) in IntervalLogIterator::new(bytes).enumerate() {
        if index >= HLOG_INTERVALS_MAX {
            return Err(HlogError::TooManyIntervals);
        }
        match entry.map_err(|e| match e {
            hdrhistogram::serialization::interval_log::LogIteratorError::ParseError { offset } => {
                HlogError::Parse(offset)
            }
        })? {
            LogEntry::BaseTime(t) => base_us = t.as_micros() as u64,
            LogEntry::StartTime(_) => {}
            LogEntry::Interval(interval) => {
                let bad = |reason: String| HlogError::Histogram { index, reason };
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(interval.encoded_histogram())
                    .map_err(|e| bad(e.to_string()))?;
                let hist: Hist = deserializer
                    .deserialize(&mut raw.as_slice())
                    .map_err(|e| bad(format!("{e:?}")))?;
                let start_us = base_us + interval.start_timestamp().as_micros() as u64;
                let tag = interval.tag().map(|t| t.to_string()).unwrap_or_default();
                let end_us = start_us + interval.duration().as_micros() as u64;
                set.add(&tag, start_us, end_us, hist);
            }
        }
    }
    Ok(set)
}

/// Percentiles of a histogram in milliseconds, as written to summary.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Hist) -> Percentiles {
        let ms = |us: u64| us as f64 / HGRM_UNIT_US;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / HGRM_UNIT_US,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The classic HdrHistogram percentile distribution ("Value Percentile TotalCount
/// 1/(1-Percentile)"), values in milliseconds.
pub fn hgrm_text(h: &Hist) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / HGRM_UNIT_US;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:>12.3} {q:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:>12.3} {q:>2.12} {total:>10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / HGRM_UNIT_US,
            h.stdev() / HGRM_UNIT_US,
            h.max() as f64 / HGRM_UNIT_US,
        )
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:>12.3}, Total count    = {:>12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        (2 * 10u32.pow(u32::from(h.sigfig()))).next_power_of_two()
    );
    out
}

/// (percentile, value in ms) points of the distribution, for plotting.
pub fn percentile_points(h: &Hist) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE)
        .map(|v| {
            (
                v.quantile_iterated_to(),
                v.value_iterated_to() as f64 / HGRM_UNIT_US,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_roundtrip_and_hgrm() {
        let mut h = new_hist();
        for us in 1..=1000 {
            record(&mut h, us * 10);
        }
        let raw = RawHist::from_hist(&h);
        let mut merged = new_hist();
        raw.merge_into(&mut merged);
        raw.merge_into(&mut merged);
        assert_eq!(merged.len(), 2000);
        assert_eq!(merged.value_at_quantile(0.5), h.value_at_quantile(0.5));
        let text = hgrm_text(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        assert!(text.contains("#[Max     ="));
        let last_data = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        assert!(last_data.contains("1.000000000000"));
        let p = Percentiles::of(&h);
        assert!((p.p50_ms - 5.0).abs() < 0.01, "{p:?}");
    }

    #[test]
    fn interval_log_roundtrip_keeps_parts_and_counts() {
        let mut set = HistSet::default();
        let mut a = new_hist();
        for us in 1..=100 {
            record(&mut a, us * 100);
        }
        let mut b = new_hist();
        record(&mut b, 7_000_000);
        set.add("worker-0", 1_700_000_000_000_000, 1_700_000_002_500_000, a);
        set.add("worker 1", 1_700_000_000_500_000, 1_700_000_003_000_000, b);
        set.add(
            "worker-2",
            1_700_000_001_000_000,
            1_700_000_001_000_000,
            new_hist(),
        );
        let text = hlog_text(&set, "test").unwrap();
        assert!(text.contains("#[BaseTime: 1700000000.000"), "{text}");
        assert!(text.contains("Tag=worker_1,0.500,2.500,7000.0"), "{text}");
        let back = read_hlog(text.as_bytes()).unwrap();
        assert_eq!(back.merged.len(), 101);
        assert_eq!(back.merged.max(), set.merged.max());
        let tags: Vec<&str> = back.parts.iter().map(|p| p.tag.as_str()).collect();
        assert_eq!(tags, ["worker-0", "worker_1", "worker-2"]);
        assert_eq!(back.parts[1].start_us, 1_700_000_000_500_000);
        assert_eq!(back.parts[1].end_us, 1_700_000_003_000_000);
        assert!(read_hlog(b"Tag=x,1,2,3,notbase64!\n").is_err());
    }
}
