//! Latency histograms: microsecond HdrHistograms, their transport between processes as raw
//! (value, count) pairs, the classic `.hgrm` percentile text and a short percentile summary.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::limits::{HISTOGRAM_MAX_US, HISTOGRAM_SIGFIG};

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
}
