//! `corecast-bench merge --out DIR RUN...`: folds runs of one scenario made at the same time
//! (several client processes or machines against one cluster) into one run directory.
//!
//! Histograms are merged exactly from each run's `.hlog` (every worker's V2 histogram), so the
//! merged percentiles are those of all deliveries, not an average of percentiles. Counts
//! (connections, pushes, deliveries, losses, duplicates) are summed. Server cost cannot be
//! summed: each run that sampled the servers read the same nodes, so the merged server CPU of a
//! phase is the largest any run saw over its own window (for a broadcast, the pushing run's), and per-delivery / per-push figures
//! divide it by the merged counts (valid when the runs' phases overlap, as in the how-to).
//! A broadcast's merged fan-out is its send time to the last receive in any run (a
//! receive-only run takes the send time from the payload: the pusher's clock, so the client
//! machines' clocks must agree, e.g. by NTP or chrony).
//! Every run's own server and client samples are kept, their phase prefixed `r{i}:`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::BenchError;
use crate::hist::{HistSet, Percentiles, read_hlog};
use crate::output::write_run;
use crate::server_stats::PhaseCost;
use crate::summary::{
    BroadcastSummary, DeliverySummary, IdleSummary, MessageFanout, Summary, UnicastSummary,
};

/// Histogram file stems a run writes, in output order.
const HIST_NAMES: [&str; 3] = ["latency", "handshake", "push_http"];
/// Most runs one merge may take.
const MERGE_RUNS_MAX: usize = 1_024;

/// One run read back: its summary and its histograms by name.
struct Run {
    dir: PathBuf,
    summary: Summary,
    hists: BTreeMap<&'static str, HistSet>,
}

fn read_run(dir: &Path) -> Result<Run, BenchError> {
    let text = std::fs::read_to_string(dir.join("summary.json"))
        .map_err(|e| BenchError::Merge(format!("{}: summary.json: {e}", dir.display())))?;
    let summary: Summary = serde_json::from_str(&text)?;
    let mut hists = BTreeMap::new();
    for name in HIST_NAMES {
        let path = dir.join(format!("{name}.hlog"));
        let bytes = std::fs::read(&path).map_err(|e| {
            BenchError::Merge(format!(
                "{}: {e} (runs of corecast-bench before .hlog files cannot be merged)",
                path.display()
            ))
        })?;
        hists.insert(name, read_hlog(&bytes)?);
    }
    Ok(Run {
        dir: dir.to_path_buf(),
        summary,
        hists,
    })
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Largest CPU any run measured on the servers over its `phase`. For a broadcast, the runs
/// that pushed come first: a receive-only run's window also holds its wait for the pusher (and
/// the pusher's connections), so it is used only when no pusher sampled the servers.
fn server_cpu_us(runs: &[Run], phase: &str) -> Option<u64> {
    let pushed = |r: &&Run| r.summary.broadcast.as_ref().is_some_and(|b| b.accepted > 0);
    let sampled = |r: &&Run| {
        r.summary
            .server
            .iter()
            .any(|c| c.phase == phase && !c.after.procs.is_empty())
    };
    let pushers: Vec<&Run> = runs.iter().filter(pushed).filter(sampled).collect();
    let chosen: Vec<&Run> = if pushers.is_empty() {
        runs.iter().collect()
    } else {
        pushers
    };
    chosen
        .into_iter()
        .flat_map(|r| r.summary.server.iter())
        .filter(|c| c.phase == phase && !c.after.procs.is_empty())
        .map(|c| c.cpu_us)
        .max()
}

/// The client CPU (parent + workers) of `phase`, summed over runs: each run is its own
/// processes.
fn client_cpu_us(runs: &[Run], phase: &str) -> u64 {
    runs.iter()
        .flat_map(|r| r.summary.client.iter())
        .filter(|c| c.phase == phase)
        .map(|c| c.cpu_us)
        .sum()
}

fn per(total: Option<u64>, count: u64) -> Option<f64> {
    total.filter(|_| count > 0).map(|t| t as f64 / count as f64)
}

fn merge_idle(runs: &[Run], ok: u64) -> Option<IdleSummary> {
    let idles: Vec<&IdleSummary> = runs
        .iter()
        .filter_map(|r| r.summary.idle.as_ref())
        .collect();
    if idles.is_empty() {
        return None;
    }
    let mut m = IdleSummary::default();
    let sampled: Vec<&&IdleSummary> = idles
        .iter()
        .filter(|i| i.server_rss_after_kib > 0)
        .collect();
    for i in &idles {
        m.held_secs = m.held_secs.max(i.held_secs);
        m.open_at_end += i.open_at_end;
        m.pings_answered += i.pings_answered;
        add_counts(&mut m.closed, &i.closed);
        m.server_cpu_us_while_idle = m.server_cpu_us_while_idle.max(i.server_cpu_us_while_idle);
    }
    // The earliest reading before any run connected, the latest with every run connected.
    m.server_rss_before_kib = sampled
        .iter()
        .map(|i| i.server_rss_before_kib)
        .min()
        .unwrap_or(0);
    m.server_rss_after_kib = sampled
        .iter()
        .map(|i| i.server_rss_after_kib)
        .max()
        .unwrap_or(0);
    m.server_bytes_per_connection = m
        .server_rss_after_kib
        .saturating_sub(m.server_rss_before_kib) as f64
        * 1024.0
        / ok.max(1) as f64;
    Some(m)
}

fn merge_broadcast(runs: &[Run], push_http: &HistSet) -> Option<BroadcastSummary> {
    let all: Vec<&BroadcastSummary> = runs
        .iter()
        .filter_map(|r| r.summary.broadcast.as_ref())
        .collect();
    if all.is_empty() {
        return None;
    }
    let mut m = BroadcastSummary::default();
    // Per seq over runs: (send time, deliveries, fan-out if every run saw it everywhere).
    let mut per_seq: BTreeMap<u64, (u64, u64, Option<f64>)> = BTreeMap::new();
    for b in &all {
        // Every run counts the same broadcasts (a receive-only run waits for the pusher's).
        m.messages = m.messages.max(b.messages);
        m.accepted += b.accepted;
        m.open_at_start += b.open_at_start;
        add_counts(&mut m.push_errors, &b.push_errors);
        for msg in &b.per_message {
            let e = per_seq
                .entry(msg.seq)
                .or_insert((msg.sent_us, 0, Some(0.0)));
            if e.0 == 0 {
                e.0 = msg.sent_us;
            }
            e.1 += msg.deliveries;
            e.2 = match (e.2, msg.fanout_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
    }
    // A seq some run never reported did not reach that run's connections.
    let mut fanouts = Vec::new();
    for (&seq, &(sent_us, deliveries, fanout)) in &per_seq {
        let seen_by_all = all
            .iter()
            .all(|b| b.per_message.iter().any(|msg| msg.seq == seq));
        let fanout_ms = fanout.filter(|_| seen_by_all);
        if let Some(ms) = fanout_ms {
            fanouts.push(ms);
        }
        m.per_message.push(MessageFanout {
            seq,
            sent_us,
            deliveries,
            fanout_ms,
            deliveries_per_sec: fanout_ms
                .filter(|ms| *ms > 0.0)
                .map(|ms| deliveries as f64 / (ms / 1e3)),
        });
    }
    fanouts.sort_by(f64::total_cmp);
    m.fanout_ms_p50 = fanouts.get(fanouts.len() / 2).copied();
    m.fanout_ms_max = fanouts.last().copied();
    let rates: Vec<f64> = m
        .per_message
        .iter()
        .filter_map(|msg| msg.deliveries_per_sec)
        .collect();
    m.deliveries_per_sec_mean =
        (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64);
    m.push_http = Percentiles::of(&push_http.merged);
    Some(m)
}

fn merge_unicast(runs: &[Run], push_http: &HistSet) -> Option<UnicastSummary> {
    let all: Vec<&UnicastSummary> = runs
        .iter()
        .filter_map(|r| r.summary.unicast.as_ref())
        .collect();
    if all.is_empty() {
        return None;
    }
    let mut m = UnicastSummary::default();
    for u in &all {
        m.rate_target += u.rate_target;
        m.duration_secs = m.duration_secs.max(u.duration_secs);
        m.concurrency += u.concurrency;
        m.scheduled += u.scheduled;
        m.accepted += u.accepted;
        m.achieved_rate += u.achieved_rate;
        add_counts(&mut m.push_errors, &u.push_errors);
    }
    m.push_http = Percentiles::of(&push_http.merged);
    m.server_cpu_us_per_push = per(server_cpu_us(runs, "unicast"), m.accepted);
    Some(m)
}

fn merge_delivery(runs: &[Run], latency: &HistSet, phase: &str) -> Option<DeliverySummary> {
    let all: Vec<&DeliverySummary> = runs
        .iter()
        .filter_map(|r| r.summary.delivery.as_ref())
        .collect();
    if all.is_empty() {
        return None;
    }
    let mut m = DeliverySummary::default();
    for d in &all {
        m.expected += d.expected;
        m.unique += d.unique;
        m.lost += d.lost;
        m.duplicates += d.duplicates;
        m.unparsed += d.unparsed;
        add_counts(&mut m.closed_during_run, &d.closed_during_run);
    }
    m.latency = Percentiles::of(&latency.merged);
    let server = server_cpu_us(runs, phase);
    m.server_cpu_us = server.unwrap_or(0);
    m.server_cpu_us_per_delivery = per(server, m.unique);
    m.client_cpu_us_per_delivery = per(Some(client_cpu_us(runs, phase)), m.unique);
    Some(m)
}

/// Merges the runs in `dirs` into `out`; returns the merged summary.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<Summary, BenchError> {
    if dirs.len() > MERGE_RUNS_MAX {
        return Err(BenchError::Merge(format!("at most {MERGE_RUNS_MAX} runs")));
    }
    let runs = dirs
        .iter()
        .map(|d| read_run(d))
        .collect::<Result<Vec<_>, _>>()?;
    let first = &runs[0].summary;
    if let Some(other) = runs
        .iter()
        .find(|r| r.summary.scenario != first.scenario || r.summary.target != first.target)
    {
        return Err(BenchError::Merge(format!(
            "{} is a {} run against {}, {} a {} run against {}",
            other.dir.display(),
            other.summary.scenario,
            other.summary.target,
            runs[0].dir.display(),
            first.scenario,
            first.target
        )));
    }
    let mut hists: BTreeMap<&str, HistSet> = BTreeMap::new();
    for (i, run) in runs.iter().enumerate() {
        for (name, set) in &run.hists {
            let into = hists.entry(name).or_default();
            for part in &set.parts {
                into.add(
                    &format!("r{i}-{}", part.tag),
                    part.start_us,
                    part.end_us,
                    part.hist.clone(),
                );
            }
        }
    }
    let mut m = Summary {
        scenario: first.scenario.clone(),
        target: first.target.clone(),
        label: Some(format!(
            "merged: {}",
            runs.iter()
                .map(|r| r
                    .summary
                    .label
                    .clone()
                    .unwrap_or_else(|| r.dir.display().to_string()))
                .collect::<Vec<_>>()
                .join(" + ")
        )),
        started_unix_s: runs
            .iter()
            .map(|r| r.summary.started_unix_s)
            .min()
            .unwrap_or(0),
        args: serde_json::Value::Array(runs.iter().map(|r| r.summary.args.clone()).collect()),
        uid_offset: runs.iter().map(|r| r.summary.uid_offset).min().unwrap_or(0),
        ..Default::default()
    };
    let (mut first_us, mut last_us) = (u64::MAX, 0u64);
    for (i, run) in runs.iter().enumerate() {
        let s = &run.summary;
        m.n += s.n;
        m.workers += s.workers;
        m.source_addrs_count += s.source_addrs_count;
        m.connect.ok += s.connect.ok;
        m.connect.failed += s.connect.failed;
        add_counts(&mut m.connect.failures, &s.connect.failures);
        add_counts(&mut m.connect.by_source, &s.connect.by_source);
        if s.connect.last_done_us > 0 {
            first_us = first_us.min(s.connect.first_start_us);
            last_us = last_us.max(s.connect.last_done_us);
        }
        let prefixed = |costs: &[PhaseCost]| {
            costs
                .iter()
                .map(|c| PhaseCost {
                    phase: format!("r{i}:{}", c.phase),
                    ..c.clone()
                })
                .collect::<Vec<_>>()
        };
        m.server.extend(prefixed(&s.server));
        m.client.extend(prefixed(&s.client));
    }
    if last_us > 0 {
        m.connect.first_start_us = first_us;
        m.connect.last_done_us = last_us;
        m.connect.secs = last_us.saturating_sub(first_us) as f64 / 1e6;
        m.connect.rate_per_sec = if m.connect.secs > 0.0 {
            m.connect.ok as f64 / m.connect.secs
        } else {
            0.0
        };
    }
    let empty = HistSet::default();
    let hist = |name: &str| hists.get(name).unwrap_or(&empty);
    m.connect.handshake = Percentiles::of(&hist("handshake").merged);
    m.idle = merge_idle(&runs, m.connect.ok);
    m.broadcast = merge_broadcast(&runs, hist("push_http"));
    m.unicast = merge_unicast(&runs, hist("push_http"));
    m.delivery = merge_delivery(&runs, hist("latency"), &m.scenario);
    let named: Vec<(&str, &HistSet)> = HIST_NAMES.iter().map(|n| (*n, hist(n))).collect();
    write_run(out, &m, &named)?;
    Ok(m)
}

/// The few lines `merge` prints.
pub fn describe(m: &Summary, runs: usize) -> String {
    let mut out = format!(
        "merged {runs} {} runs: n={} connected={} failed={} over {} workers\n",
        m.scenario, m.n, m.connect.ok, m.connect.failed, m.workers
    );
    if let Some(d) = &m.delivery {
        out.push_str(&format!(
            "deliveries {} of {} expected: lost {} duplicates {} | latency p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms (count {})\n",
            d.unique,
            d.expected,
            d.lost,
            d.duplicates,
            d.latency.p50_ms,
            d.latency.p99_ms,
            d.latency.p999_ms,
            d.latency.max_ms,
            d.latency.count
        ));
    }
    if let Some(i) = &m.idle {
        out.push_str(&format!(
            "idle: {} open at end; server RSS {} -> {} KiB: {:.0} bytes per connection\n",
            i.open_at_end,
            i.server_rss_before_kib,
            i.server_rss_after_kib,
            i.server_bytes_per_connection
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist::{new_hist, record};

    fn write_fake_run(dir: &Path, scenario: &str, latencies_us: &[u64], unique: u64) {
        let mut latency = HistSet::default();
        let mut h = new_hist();
        for &us in latencies_us {
            record(&mut h, us);
        }
        latency.add("worker-0", 1_000_000, 2_000_000, h);
        let summary = Summary {
            scenario: scenario.into(),
            target: "corecast".into(),
            n: unique,
            connect: crate::summary::ConnectSummary {
                ok: unique,
                first_start_us: 1_000_000,
                last_done_us: 1_500_000,
                ..Default::default()
            },
            delivery: Some(DeliverySummary {
                expected: unique,
                unique,
                latency: Percentiles::of(&latency.merged),
                ..Default::default()
            }),
            ..Default::default()
        };
        let empty = HistSet::default();
        write_run(
            dir,
            &summary,
            &[
                ("latency", &latency),
                ("handshake", &empty),
                ("push_http", &empty),
            ],
        )
        .unwrap();
    }

    #[test]
    fn merge_sums_counts_and_merges_histograms_exactly() {
        let dir = std::env::temp_dir().join(format!("cb-merge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_fake_run(&dir.join("a"), "unicast", &[1_000, 2_000, 3_000], 3);
        write_fake_run(&dir.join("b"), "unicast", &[100_000], 1);
        write_fake_run(&dir.join("c"), "idle", &[], 1);
        let m = merge(&[dir.join("a"), dir.join("b")], &dir.join("m")).unwrap();
        assert_eq!(m.connect.ok, 4);
        let d = m.delivery.unwrap();
        assert_eq!((d.unique, d.expected, d.latency.count), (4, 4, 4));
        assert!((d.latency.max_ms - 100.0).abs() < 0.1, "{:?}", d.latency);
        let back = read_hlog(&std::fs::read(dir.join("m/latency.hlog")).unwrap()).unwrap();
        let tags: Vec<&str> = back.parts.iter().map(|p| p.tag.as_str()).collect();
        assert_eq!(tags, ["r0-worker-0", "r1-worker-0"]);
        assert!(dir.join("m/latency.hgrm").is_file());
        let e = merge(&[dir.join("a"), dir.join("c")], &dir.join("m2")).unwrap_err();
        assert!(e.to_string().contains("idle run"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
