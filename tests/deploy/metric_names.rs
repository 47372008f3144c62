//! The metric names the dashboard, the alert rules and docs/contract.md use.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

#[allow(unused_imports)]
use crate::{http::*, support::*};

/// The prefixes of the metric names the node exports: its own, and the
/// Prometheus standard process figures.
const METRIC_PREFIXES: &[&str] = &["corecast_", "process_"];

/// Every `corecast_*` and `process_*` name in `s`.
pub fn metric_names(s: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in METRIC_PREFIXES {
        names.extend(prefixed_names(s, prefix));
    }
    names
}

/// Every name starting with `prefix` (at a word boundary) in `s`.
fn prefixed_names(s: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some(pos) = s[i..].find(prefix) {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(s[start..end].to_string());
        }
        i = end;
    }
    names
}

pub fn dashboard() -> Value {
    let path = ansible_dir().join("roles/monitoring/files/corecast-dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The PromQL of every panel target and of the templating queries, with
/// Grafana's variables replaced by values Prometheus accepts.
pub fn dashboard_exprs() -> Vec<String> {
    pub fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard(), &mut exprs);
    exprs
        .into_iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
        })
        .collect()
}

/// The metric names the dashboard queries (targets and the node variable).
pub fn dashboard_metrics() -> BTreeSet<String> {
    let d = dashboard();
    let mut names = BTreeSet::new();
    for e in dashboard_exprs() {
        names.extend(metric_names(&e));
    }
    for var in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["definition"].as_str() {
            names.extend(metric_names(q));
        }
    }
    names
}

pub fn rules_file() -> PathBuf {
    ansible_dir().join("roles/monitoring/files/corecast-alerts.yml")
}

/// The metric names in the alert rules (comments aside).
pub fn rule_metrics() -> BTreeSet<String> {
    std::fs::read_to_string(rules_file())
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(metric_names)
        .collect()
}

/// The metric names docs/contract.md fixes, with `_bucket`, `_sum`, `_count`
/// for each histogram.
pub fn contract_metrics() -> BTreeSet<String> {
    let contract = std::fs::read_to_string(repo().join("docs/contract.md")).unwrap();
    let section = contract
        .split("## Metric names")
        .nth(1)
        .expect("docs/contract.md has a '## Metric names' section");
    let mut names = metric_names(section);
    for name in names.clone() {
        if let Some(base) = name.strip_suffix("_bucket") {
            names.insert(format!("{base}_sum"));
            names.insert(format!("{base}_count"));
        }
    }
    names
}
