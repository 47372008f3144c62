//! Server process cost: resident memory and CPU time of every `--server-pid` (from /proc, a
//! node on this machine) and every `--server-metrics` URL (from the node's `/metrics`
//! `process_resident_memory_bytes` and `process_cpu_seconds_total`, a node anywhere), sampled
//! around each phase so a phase's cost is the difference.
//!
//! A node refreshes `/metrics` at most once a second, so a metrics sample waits
//! METRICS_FRESH_AFTER_MS before scraping: the value it reads then was taken after the moment
//! the sample stands for.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::http_client::HttpConn;
use crate::limits::{METRICS_FRESH_AFTER_MS, METRICS_SCRAPE_TIMEOUT_MS};
use crate::target::Endpoint;

/// Prometheus name of the node's resident memory gauge (bytes).
const RSS_METRIC: &str = "process_resident_memory_bytes";
/// Prometheus name of the node's CPU time counter (user + system seconds).
const CPU_METRIC: &str = "process_cpu_seconds_total";

/// One reading of one server process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcSample {
    /// The /proc PID, 0 for a metrics reading.
    pub pid: u32,
    /// The `--server-metrics` URL the reading came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    pub rss_kib: u64,
    pub cpu_us: u64,
}

/// Where server samples come from: local PIDs and remote metrics URLs.
pub struct Sampler {
    pids: Vec<u32>,
    metrics: Vec<Endpoint>,
}

impl Sampler {
    /// Parses the metrics URLs and scrapes each once, so a wrong URL fails the run before any
    /// connection is opened.
    pub async fn new(pids: &[u32], metrics_urls: &[String]) -> Result<Sampler, BenchError> {
        let metrics = metrics_urls
            .iter()
            .map(|u| Endpoint::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        for endpoint in &metrics {
            scrape(endpoint).await.map_err(|reason| {
                BenchError::BadArgument(format!("--server-metrics {}: {reason}", endpoint.url))
            })?;
        }
        Ok(Sampler {
            pids: pids.to_vec(),
            metrics,
        })
    }

    /// Whether no server is sampled at all.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.metrics.is_empty()
    }

    /// Reads every source; a metrics source is read METRICS_FRESH_AFTER_MS from now. A source
    /// that cannot be read counts as zero (and is reported on stderr).
    pub async fn take(&self, label: &str) -> Sample {
        let mut sample = Sample::of_pids(label, &self.pids);
        if self.metrics.is_empty() {
            return sample;
        }
        tokio::time::sleep(Duration::from_millis(METRICS_FRESH_AFTER_MS)).await;
        sample.at_us = crate::clock::unix_us();
        for endpoint in &self.metrics {
            let reading = scrape(endpoint).await.unwrap_or_else(|reason| {
                eprintln!("warning: {label}: {}: {reason}", endpoint.url);
                ProcSample::default()
            });
            sample.procs.push(ProcSample {
                metrics: Some(endpoint.url.clone()),
                ..reading
            });
        }
        sample
    }
}

/// GETs `endpoint` and reads RSS and CPU time from its Prometheus text.
async fn scrape(endpoint: &Endpoint) -> Result<ProcSample, String> {
    let mut conn = HttpConn::new(
        endpoint.clone(),
        Duration::from_millis(METRICS_SCRAPE_TIMEOUT_MS),
    );
    let path = if endpoint.path.is_empty() {
        "/metrics"
    } else {
        endpoint.path.as_str()
    };
    let (status, body) = conn.get(path).await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    parse_metrics(&String::from_utf8_lossy(&body))
}

/// RSS and CPU time from a Prometheus text exposition.
fn parse_metrics(text: &str) -> Result<ProcSample, String> {
    let value = |name: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .find_map(|rest| {
                rest.strip_prefix(' ')
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("no {name} in the answer (a corecast node exports it)"))
    };
    Ok(ProcSample {
        pid: 0,
        metrics: None,
        rss_kib: (value(RSS_METRIC)? / 1024.0) as u64,
        cpu_us: (value(CPU_METRIC)? * 1e6) as u64,
    })
}

/// Readings of every server process at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub label: String,
    pub at_us: u64,
    pub procs: Vec<ProcSample>,
}

impl Sample {
    /// Reads `pids` from /proc now.
    pub fn of_pids(label: &str, pids: &[u32]) -> Sample {
        Sample {
            label: label.to_string(),
            at_us: crate::clock::unix_us(),
            procs: pids
                .iter()
                .map(|&pid| {
                    read_proc(pid).unwrap_or(ProcSample {
                        pid,
                        ..Default::default()
                    })
                })
                .collect(),
        }
    }

    pub fn rss_kib(&self) -> u64 {
        self.procs.iter().map(|p| p.rss_kib).sum()
    }

    pub fn cpu_us(&self) -> u64 {
        self.procs.iter().map(|p| p.cpu_us).sum()
    }
}

/// Cost of a phase: the difference of two samples, summed over server processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseCost {
    pub phase: String,
    pub secs: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub cpu_us: u64,
    pub before: Sample,
    pub after: Sample,
}

impl PhaseCost {
    pub fn between(phase: &str, before: Sample, after: Sample) -> PhaseCost {
        PhaseCost {
            phase: phase.to_string(),
            secs: after.at_us.saturating_sub(before.at_us) as f64 / 1e6,
            rss_before_kib: before.rss_kib(),
            rss_after_kib: after.rss_kib(),
            cpu_us: after.cpu_us().saturating_sub(before.cpu_us()),
            before,
            after,
        }
    }
}

fn clock_ticks_per_sec() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|t| t as u64)
        .unwrap_or(100)
}

/// Reads VmRSS and utime+stime of `pid`; `None` if the process is gone.
pub fn read_proc(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcSample {
        pid,
        metrics: None,
        rss_kib: parse_vm_rss_kib(&status)?,
        cpu_us: parse_cpu_ticks(&stat)? * 1_000_000 / clock_ticks_per_sec(),
    })
}

fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat; the command name in
/// field 2 may hold spaces, so count from the last ')').
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_process_metrics() {
        let text = "# HELP process_resident_memory_bytes Resident memory size in bytes\n\
                    # TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes 10485760.0\n\
                    process_resident_memory_bytes_other 1\n\
                    process_cpu_seconds_total 1.5\n";
        let p = parse_metrics(text).unwrap();
        assert_eq!((p.rss_kib, p.cpu_us), (10_240, 1_500_000));
        let e = parse_metrics("process_cpu_seconds_total 1\n").unwrap_err();
        assert!(e.contains(RSS_METRIC), "{e}");
    }

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            parse_vm_rss_kib("Name:\tx\nVmRSS:\t  1234 kB\n"),
            Some(1234)
        );
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(12));
        let me = read_proc(std::process::id()).unwrap();
        assert!(me.rss_kib > 0);
    }
}
