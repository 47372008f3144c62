//! `corecast-bench report DIR...`: earlier runs side by side, one column per run, read from
//! each directory's summary.json (missing values print as "-").

use std::path::PathBuf;

use serde_json::Value;

use crate::error::BenchError;

/// (row label, JSON pointer into summary.json, decimals).
const ROWS: &[(&str, &str, usize)] = &[
    ("scenario", "/scenario", 0),
    ("label", "/label", 0),
    ("target", "/target", 0),
    ("connections asked", "/n", 0),
    ("workers", "/workers", 0),
    ("connected", "/connect/ok", 0),
    ("connect failed", "/connect/failed", 0),
    ("connects/s", "/connect/rate_per_sec", 0),
    ("handshake p50 ms", "/connect/handshake/p50_ms", 2),
    ("handshake p99 ms", "/connect/handshake/p99_ms", 2),
    (
        "idle: server bytes/conn",
        "/idle/server_bytes_per_connection",
        0,
    ),
    ("idle: server RSS KiB", "/idle/server_rss_after_kib", 0),
    ("bcast: messages accepted", "/broadcast/accepted", 0),
    ("bcast: fan-out p50 ms", "/broadcast/fanout_ms_p50", 1),
    ("bcast: fan-out max ms", "/broadcast/fanout_ms_max", 1),
    (
        "bcast: deliveries/s",
        "/broadcast/deliveries_per_sec_mean",
        0,
    ),
    ("uni: target rate/s", "/unicast/rate_target", 0),
    ("uni: achieved rate/s", "/unicast/achieved_rate", 0),
    ("uni: push answer p99 ms", "/unicast/push_http/p99_ms", 2),
    (
        "uni: server CPU us/push",
        "/unicast/server_cpu_us_per_push",
        2,
    ),
    ("deliveries", "/delivery/unique", 0),
    ("lost", "/delivery/lost", 0),
    ("duplicates", "/delivery/duplicates", 0),
    ("latency p50 ms", "/delivery/latency/p50_ms", 2),
    ("latency p99 ms", "/delivery/latency/p99_ms", 2),
    ("latency p99.9 ms", "/delivery/latency/p999_ms", 2),
    ("latency max ms", "/delivery/latency/max_ms", 2),
    (
        "server CPU us/delivery",
        "/delivery/server_cpu_us_per_delivery",
        3,
    ),
];

fn cell(v: Option<&Value>, decimals: usize) -> String {
    match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() || decimals > 0 => format!("{f:.decimals$}"),
            _ => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// The table as text.
pub fn table(dirs: &[PathBuf]) -> Result<String, BenchError> {
    let mut runs = Vec::new();
    for dir in dirs {
        let text = std::fs::read_to_string(dir.join("summary.json"))?;
        runs.push((
            dir.display().to_string(),
            serde_json::from_str::<Value>(&text)?,
        ));
    }
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once("run".to_string())
            .chain(runs.iter().map(|r| r.0.clone()))
            .collect(),
    ];
    for (label, pointer, decimals) in ROWS {
        let cells: Vec<String> = runs
            .iter()
            .map(|(_, v)| cell(v.pointer(pointer), *decimals))
            .collect();
        if cells.iter().all(|c| c == "-") {
            continue;
        }
        rows.push(std::iter::once(label.to_string()).chain(cells).collect());
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c == 0 {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_runs_side_by_side() {
        let dir = std::env::temp_dir().join(format!("cb-report-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(
            a.join("summary.json"),
            r#"{"scenario":"idle","n":10,"connect":{"rate_per_sec":1234.5}}"#,
        )
        .unwrap();
        std::fs::write(
            b.join("summary.json"),
            r#"{"scenario":"unicast","n":20,"delivery":{"lost":0}}"#,
        )
        .unwrap();
        let t = table(&[a, b]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            t.lines()
                .any(|l| l.starts_with("scenario") && l.contains("idle") && l.contains("unicast"))
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("connects/s") && l.contains("1234") && l.ends_with('-'))
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("lost") && l.trim_end().ends_with('0'))
        );
    }
}
