//! Files a run leaves in `--out`: `summary.json`, one `.hgrm` (percentiles) and one `.hlog`
//! (mergeable interval log, one histogram per worker) per histogram, `latency.svg`.

use std::path::Path;

use crate::error::BenchError;
use crate::hist::{HistSet, hgrm_text, hlog_text, percentile_points};
use crate::summary::Summary;
use crate::svg::{Series, percentile_plot};

/// Writes everything; `hists` are (file stem, histogram set) pairs, empty ones skipped in the
/// plot.
pub fn write_run(
    dir: &Path,
    summary: &Summary,
    hists: &[(&str, &HistSet)],
) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(summary)?,
    )?;
    for (name, set) in hists {
        std::fs::write(dir.join(format!("{name}.hgrm")), hgrm_text(&set.merged))?;
        let comment = format!(
            "corecast-bench {} {name}, {}",
            summary.scenario,
            summary.label.as_deref().unwrap_or("no label")
        );
        std::fs::write(dir.join(format!("{name}.hlog")), hlog_text(set, &comment)?)?;
    }
    let series: Vec<Series<'_>> = hists
        .iter()
        .filter(|(_, set)| !set.merged.is_empty())
        .map(|(name, set)| Series {
            name,
            points: percentile_points(&set.merged),
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
