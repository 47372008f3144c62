//! Files a run leaves in `--out`: `summary.json`, one `.hgrm` per histogram, `latency.svg`.

use std::path::Path;

use crate::error::BenchError;
use crate::hist::{Hist, hgrm_text, percentile_points};
use crate::summary::Summary;
use crate::svg::{Series, percentile_plot};

/// Writes everything; `hists` are (file stem, histogram) pairs, empty ones skipped in the plot.
pub fn write_run(dir: &Path, summary: &Summary, hists: &[(&str, &Hist)]) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(summary)?,
    )?;
    for (name, h) in hists {
        std::fs::write(dir.join(format!("{name}.hgrm")), hgrm_text(h))?;
    }
    let series: Vec<Series<'_>> = hists
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| Series {
            name,
            points: percentile_points(h),
        })
        .collect();
    let title = format!(
        "corecast-bench {} against {}: n={}{}",
        summary.scenario,
        summary.target,
        summary.n,
        summary
            .label
            .as_deref()
            .map(|l| format!(" ({l})"))
            .unwrap_or_default()
    );
    std::fs::write(dir.join("latency.svg"), percentile_plot(&title, &series))?;
    Ok(())
}
