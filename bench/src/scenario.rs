//! The scenarios, run by the parent process: plan the workers, connect, run the phase
//! (`idle` hold, `broadcast` pushes, or open-loop `unicast`), sample the servers around each
//! phase, fold the worker reports into a [`Summary`] and write the outputs.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cli::{BroadcastArgs, Common, IdleArgs, UnicastArgs};
use crate::clock::{unix_secs, unix_us};
use crate::error::BenchError;
use crate::fleet::Fleet;
use crate::hist::{Hist, HistSet, Percentiles, new_hist, record};
use crate::http_client::{HttpConn, HttpError};
use crate::limits::{
    BROADCAST_MESSAGES_MAX, CONNECTIONS_MAX, PUSH_CONCURRENCY_MAX, PUSH_CONNECTIONS_MAX,
    SEQ_TRACKING_BYTES_MAX, TOKEN_TTL_SECS, UNICAST_PUSHES_MAX, WORKER_CONNECTIONS_MAX,
    WORKERS_MAX,
};
use crate::output::write_run;
use crate::proto::{Command, PhaseKind, PhaseReport, WorkerSpec};
use crate::server_stats::{PhaseCost, Sample, Sampler};
use crate::summary::{
    BroadcastSummary, ConnectSummary, DeliverySummary, IdleSummary, MessageFanout, Summary,
    UnicastSummary,
};
use crate::target::{self, Endpoint, TargetKind};

/// Delay between planning the unicast schedule and its first intended send.
const UNICAST_START_DELAY_MS: u64 = 100;

/// Which scenario and its own options.
pub enum Scenario {
    Idle(IdleArgs),
    Broadcast(BroadcastArgs),
    Unicast(UnicastArgs),
}

impl Scenario {
    fn common(&self) -> &Common {
        match self {
            Scenario::Idle(a) => &a.common,
            Scenario::Broadcast(a) => &a.common,
            Scenario::Unicast(a) => &a.common,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Scenario::Idle(_) => "idle",
            Scenario::Broadcast(_) => "broadcast",
            Scenario::Unicast(_) => "unicast",
        }
    }

    fn args_json(&self) -> serde_json::Value {
        match self {
            Scenario::Idle(a) => serde_json::to_value(a),
            Scenario::Broadcast(a) => serde_json::to_value(a),
            Scenario::Unicast(a) => serde_json::to_value(a),
        }
        .unwrap_or_default()
    }
}

/// Histograms kept by the parent for the output files (per worker, and merged).
#[derive(Default)]
struct Hists {
    handshake: HistSet,
    latency: HistSet,
    push_http: HistSet,
}

/// Entry point of the three scenario subcommands; blocks until the run is written.
pub fn run(scenario: Scenario) -> Result<Summary, BenchError> {
    crate::worker::raise_fd_limit(
        PUSH_CONNECTIONS_MAX + WORKERS_MAX * 3 + crate::limits::WORKER_FDS_OVERHEAD,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&rt, run_async(scenario))
}

fn bad(msg: impl Into<String>) -> BenchError {
    BenchError::BadArgument(msg.into())
}

fn plan(
    common: &Common,
    shared_channel: bool,
    source_addrs: &[std::net::Ipv4Addr],
) -> Result<Vec<WorkerSpec>, BenchError> {
    if common.n == 0 || common.n > CONNECTIONS_MAX {
        return Err(bad(format!("--n must be 1..={CONNECTIONS_MAX}")));
    }
    if common.uid_offset.checked_add(common.n).is_none() {
        return Err(bad("--uid-offset + --n overflows"));
    }
    if common.per_worker == 0 || common.per_worker > WORKER_CONNECTIONS_MAX {
        return Err(bad(format!(
            "--per-worker must be 1..={WORKER_CONNECTIONS_MAX}"
        )));
    }
    if common.target == TargetKind::Corecast && common.jwt_secret.is_empty() {
        return Err(bad(
            "--jwt-secret (or CORECAST_JWT_SECRET) is required for --target corecast",
        ));
    }
    let ws = common
        .ws
        .iter()
        .map(|u| Endpoint::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let needed = (common.n as usize).div_ceil(common.per_worker);
    let workers = common
        .workers
        .unwrap_or(needed)
        .max(needed)
        .min(common.n as usize);
    if workers > WORKERS_MAX {
        return Err(bad(format!("at most {WORKERS_MAX} workers")));
    }
    let base = common.n / workers as u64;
    let extra = common.n % workers as u64;
    let mut first = common.uid_offset;
    let mut specs = Vec::with_capacity(workers);
    for index in 0..workers {
        let count = base + u64::from((index as u64) < extra);
        specs.push(WorkerSpec {
            index,
            target: common.target,
            ws: ws.clone(),
            first,
            count,
            jwt_secret: common.jwt_secret.clone(),
            rooms: common.rooms.clone(),
            token_exp: unix_secs() + crate::limits::TOKEN_TTL_SECS,
            shared_channel,
            handshake_concurrency: common.handshake_concurrency,
            handshake_timeout_ms: common.handshake_timeout_ms,
            ramp_per_sec: common.ramp_per_sec.map(|r| r / workers as f64),
            pin_core: common.pin.then_some(index),
            source_addrs: source_addrs.to_vec(),
        });
        first += count;
    }
    const _: () = assert!(TOKEN_TTL_SECS > 3_600);
    Ok(specs)
}

/// Checks the scenario's own options before any connection is opened.
fn validate(scenario: &Scenario) -> Result<(), BenchError> {
    match scenario {
        Scenario::Idle(_) => Ok(()),
        Scenario::Broadcast(args) => {
            let common = &args.common;
            if args.messages == 0 || args.messages > BROADCAST_MESSAGES_MAX {
                return Err(bad(format!(
                    "--messages must be 1..={BROADCAST_MESSAGES_MAX}"
                )));
            }
            if common.n.saturating_mul(args.messages.div_ceil(64) * 8) > SEQ_TRACKING_BYTES_MAX {
                return Err(bad(format!(
                    "--n x --messages needs more than {SEQ_TRACKING_BYTES_MAX} bytes of delivery tracking"
                )));
            }
            Ok(())
        }
        Scenario::Unicast(args) => {
            if args.rate.is_nan()
                || args.duration.is_nan()
                || args.rate <= 0.0
                || args.duration <= 0.0
            {
                return Err(bad("--rate and --duration must be positive"));
            }
            let scheduled = (args.rate * args.duration).round() as u64;
            if scheduled == 0 || scheduled > UNICAST_PUSHES_MAX {
                return Err(bad(format!(
                    "rate x duration must be 1..={UNICAST_PUSHES_MAX} pushes"
                )));
            }
            if args.concurrency.saturating_mul(args.common.http.len()) > PUSH_CONNECTIONS_MAX {
                return Err(bad(format!(
                    "--concurrency x --http count must be at most {PUSH_CONNECTIONS_MAX}"
                )));
            }
            if args.concurrency == 0 || args.concurrency > PUSH_CONCURRENCY_MAX {
                return Err(bad(format!(
                    "--concurrency must be 1..={PUSH_CONCURRENCY_MAX}"
                )));
            }
            Ok(())
        }
    }
}

async fn run_async(scenario: Scenario) -> Result<Summary, BenchError> {
    validate(&scenario)?;
    let common = scenario.common().clone();
    let timeout = Duration::from_secs(common.timeout);
    let http = common
        .http
        .iter()
        .map(|u| Endpoint::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let receive_only = matches!(&scenario, Scenario::Broadcast(a) if a.receive_only);
    if !matches!(scenario, Scenario::Idle(_)) && !receive_only && http.is_empty() {
        return Err(bad("--http is required for broadcast and unicast"));
    }
    let shared_channel =
        common.target == TargetKind::Nchan && matches!(scenario, Scenario::Broadcast(_));
    let ws = common
        .ws
        .iter()
        .map(|u| Endpoint::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let source_addrs =
        crate::source_addrs::resolve(&common.source_addrs, common.no_source_rotation, &ws)?;
    let specs = plan(&common, shared_channel, &source_addrs)?;
    let sampler = Sampler::new(&common.server_pid, &common.server_metrics).await?;
    let mut summary = Summary {
        scenario: scenario.name().to_string(),
        label: common.label.clone(),
        target: format!("{:?}", common.target).to_lowercase(),
        started_unix_s: unix_secs(),
        args: scenario.args_json(),
        n: common.n,
        workers: specs.len(),
        uid_offset: common.uid_offset,
        source_addrs_count: source_addrs.len(),
        ..Default::default()
    };
    let mut hists = Hists::default();
    eprintln!(
        "corecast-bench {}: n={} over {} worker(s)",
        summary.scenario,
        common.n,
        specs.len()
    );

    let before_connect = sampler.take("before_connect").await;
    if let Some(at) = common.start_at {
        let now = unix_us();
        let at_us = at.saturating_mul(1_000_000);
        if at_us > now {
            eprintln!(
                "waiting {:.1} s for --start-at {at}",
                (at_us - now) as f64 / 1e6
            );
            tokio::time::sleep(Duration::from_micros(at_us - now)).await;
        } else {
            eprintln!(
                "warning: --start-at {at} is {:.1} s in the past",
                (now - at_us) as f64 / 1e6
            );
        }
    }
    let mut fleet = Fleet::spawn(&specs).await?;
    let n = common.n;
    let connected = fleet
        .wait_for(
            "connect",
            timeout,
            |s| s.connected.iter().all(Option::is_some),
            |s| {
                format!(
                    "{} ok, {} failed of {n}",
                    s.connected_ok(),
                    s.connected_failed()
                )
            },
        )
        .await;
    if let Err(e) = connected {
        fleet.close().await;
        return Err(e);
    }
    let after_connect = sampler.take("after_connect").await;
    let (connect, failed_indices) = fold_connect(&fleet, &mut hists.handshake);
    eprintln!(
        "connected {} ({} failed) in {:.2} s = {:.0}/s, handshake p50 {:.2} ms p99 {:.2} ms",
        connect.ok,
        connect.failed,
        connect.secs,
        connect.rate_per_sec,
        connect.handshake.p50_ms,
        connect.handshake.p99_ms
    );
    summary.connect = connect;
    summary.server.push(PhaseCost::between(
        "connect",
        before_connect.clone(),
        after_connect.clone(),
    ));

    let result = match &scenario {
        Scenario::Idle(args) => {
            idle(
                &mut fleet,
                args,
                &sampler,
                &before_connect,
                &after_connect,
                &mut summary,
            )
            .await
        }
        Scenario::Broadcast(args) => {
            broadcast(&mut fleet, args, &http, &sampler, &mut hists, &mut summary).await
        }
        Scenario::Unicast(args) => {
            unicast(
                &mut fleet,
                args,
                &http,
                &sampler,
                &failed_indices,
                &mut hists,
                &mut summary,
            )
            .await
        }
    };
    if result.is_ok() {
        // Written before the workers close: closing a million sockets can take a while.
        write_run(
            &common.out,
            &summary,
            &[
                ("latency", &hists.latency),
                ("handshake", &hists.handshake),
                ("push_http", &hists.push_http),
            ],
        )?;
        eprintln!("wrote {}", common.out.display());
    }
    fleet.close().await;
    result?;
    Ok(summary)
}

fn fold_connect(fleet: &Fleet, handshake: &mut HistSet) -> (ConnectSummary, HashSet<u64>) {
    let state = fleet.state.borrow();
    let mut c = ConnectSummary::default();
    let mut failed = HashSet::new();
    let (mut first, mut last) = (u64::MAX, 0u64);
    for (index, report) in state.connected.iter().enumerate() {
        let Some(report) = report else { continue };
        c.ok += report.ok;
        c.failed += report.failed;
        for (k, v) in &report.failures {
            *c.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &report.by_source {
            *c.by_source.entry(k.clone()).or_default() += v;
        }
        failed.extend(report.failed_indices.iter().copied());
        let mut h = new_hist();
        report.handshake.merge_into(&mut h);
        handshake.add(
            &format!("worker-{index}"),
            report.first_start_us,
            report.last_done_us,
            h,
        );
        first = first.min(report.first_start_us);
        if report.ok > 0 {
            last = last.max(report.last_done_us);
        }
    }
    c.secs = last.saturating_sub(first) as f64 / 1e6;
    if last > 0 {
        (c.first_start_us, c.last_done_us) = (first, last);
    }
    c.rate_per_sec = if c.secs > 0.0 {
        c.ok as f64 / c.secs
    } else {
        0.0
    };
    c.handshake = Percentiles::of(&handshake.merged);
    (c, failed)
}

/// Starts a delivery phase on every worker; returns the connections open at its start.
async fn start_phase(
    fleet: &mut Fleet,
    kind: PhaseKind,
    timeout: Duration,
) -> Result<u64, BenchError> {
    fleet
        .state
        .borrow_mut()
        .phase_open
        .iter_mut()
        .for_each(|o| *o = None);
    fleet.broadcast(&Command::Phase { kind }).await?;
    fleet
        .wait_for(
            "phase start",
            timeout,
            |s| s.phase_open.iter().all(Option::is_some),
            |_| String::new(),
        )
        .await?;
    Ok(fleet.state.borrow().phase_open.iter().flatten().sum())
}

fn fold_delivery(
    reports: &[PhaseReport],
    expected: u64,
    latency: &mut HistSet,
    cost: &PhaseCost,
) -> DeliverySummary {
    let mut d = DeliverySummary {
        expected,
        server_cpu_us: cost.cpu_us,
        ..Default::default()
    };
    for (index, r) in reports.iter().enumerate() {
        d.unique += r.unique;
        d.duplicates += r.duplicates;
        d.unparsed += r.unparsed;
        let mut h = new_hist();
        r.latency.merge_into(&mut h);
        latency.add(
            &format!("worker-{index}"),
            cost.before.at_us,
            cost.after.at_us,
            h,
        );
        for (k, v) in &r.closed {
            *d.closed_during_run.entry(k.clone()).or_default() += v;
        }
    }
    d.lost = expected.saturating_sub(d.unique);
    d.latency = Percentiles::of(&latency.merged);
    // No server sampled: no figure (rather than a 0 that reads like a measurement).
    d.server_cpu_us_per_delivery = (d.unique > 0 && !cost.after.procs.is_empty())
        .then(|| cost.cpu_us as f64 / d.unique as f64);
    d
}

async fn idle(
    fleet: &mut Fleet,
    args: &IdleArgs,
    sampler: &Sampler,
    before_connect: &Sample,
    after_connect: &Sample,
    summary: &mut Summary,
) -> Result<(), BenchError> {
    eprintln!(
        "holding {} connections idle for {} s",
        summary.connect.ok, args.hold_secs
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(args.hold_secs) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let held = sampler.take("held").await;
    let reports = fleet
        .collect_reports(Duration::from_secs(args.common.timeout))
        .await?;
    let mut closed = BTreeMap::new();
    for r in &reports {
        for (k, v) in &r.closed {
            *closed.entry(k.clone()).or_default() += v;
        }
    }
    let ok = summary.connect.ok.max(1);
    summary.idle = Some(IdleSummary {
        held_secs: args.hold_secs,
        open_at_end: reports.iter().map(|r| r.open).sum(),
        server_rss_before_kib: before_connect.rss_kib(),
        server_rss_after_kib: held.rss_kib(),
        server_bytes_per_connection: held.rss_kib().saturating_sub(before_connect.rss_kib()) as f64
            * 1024.0
            / ok as f64,
        server_cpu_us_while_idle: held.cpu_us().saturating_sub(after_connect.cpu_us()),
        pings_answered: reports.iter().map(|r| r.pings).sum(),
        closed,
    });
    summary
        .server
        .push(PhaseCost::between("idle_hold", after_connect.clone(), held));
    let i = summary.idle.as_ref().expect("just set");
    if !sampler.is_empty() {
        eprintln!(
            "server RSS {} -> {} KiB: {:.0} bytes per connection; {} open at end",
            i.server_rss_before_kib,
            i.server_rss_after_kib,
            i.server_bytes_per_connection,
            i.open_at_end
        );
    }
    Ok(())
}

fn auth(common: &Common) -> Option<&str> {
    (common.target == TargetKind::Corecast && !common.api_key.is_empty())
        .then_some(common.api_key.as_str())
}

async fn broadcast(
    fleet: &mut Fleet,
    args: &BroadcastArgs,
    http: &[Endpoint],
    sampler: &Sampler,
    hists: &mut Hists,
    summary: &mut Summary,
) -> Result<(), BenchError> {
    let common = &args.common;
    let timeout = Duration::from_secs(common.timeout);
    let open = start_phase(fleet, PhaseKind::Broadcast, timeout).await?;
    let workers_with_connections = fleet
        .state
        .borrow()
        .phase_open
        .iter()
        .filter(|o| o.unwrap_or(0) > 0)
        .count();
    let push_timeout = Duration::from_millis(common.push_timeout_ms);
    let mut conns: Vec<HttpConn> = http
        .iter()
        .cloned()
        .map(|e| HttpConn::new(e, push_timeout))
        .collect();
    let mut b = BroadcastSummary {
        messages: args.messages,
        open_at_start: open,
        ..Default::default()
    };
    let mut sent: Vec<(u64, u64)> = Vec::new();
    let before = sampler.take("broadcast_start").await;
    let client_before = Sample::of_pids("broadcast_start", &fleet.client_pids());
    let start = Instant::now();
    let mut push_http = new_hist();
    if args.receive_only {
        eprintln!(
            "receive only: waiting up to {} s for {} broadcasts pushed by another client",
            common.timeout, args.messages
        );
        // Send times come from the payloads once they arrive.
        sent.extend((0..args.messages).map(|seq| (seq, 0)));
    }
    let pushes = if args.receive_only { 0 } else { args.messages };
    for seq in 0..pushes {
        let conn = &mut conns[(seq % http.len() as u64) as usize];
        let path = target::push_path(common.target, conn.endpoint(), None);
        let t_us = unix_us();
        let body = target::push_body(common.target, seq, t_us);
        match conn
            .post(&path, auth(common), "application/json", body.as_bytes())
            .await
        {
            Ok((status, _)) if (200..300).contains(&status) => {
                b.accepted += 1;
                sent.push((seq, t_us));
            }
            Ok((status, body)) => {
                *b.push_errors.entry(format!("status_{status}")).or_default() += 1;
                eprintln!(
                    "broadcast {seq}: HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Err(e) => {
                // A timed-out answer may still have been delivered: track the seq, so a push
                // that reached everyone still shows its fan-out and one that did not shows as lost.
                if matches!(e, HttpError::Timeout) {
                    sent.push((seq, t_us));
                }
                *b.push_errors.entry(e.label().to_string()).or_default() += 1;
            }
        }
        record(&mut push_http, unix_us().saturating_sub(t_us));
        tokio::time::sleep_until(start + Duration::from_millis(args.interval_ms * (seq + 1))).await;
    }
    let expected_seqs: Vec<u64> = sent.iter().map(|s| s.0).collect();
    let all_done = |s: &crate::fleet::FleetState| {
        expected_seqs.iter().all(|seq| {
            s.seq_done
                .get(seq)
                .is_some_and(|c| c.workers >= workers_with_connections)
        })
    };
    let waited = fleet
        .wait_for("broadcast fan-out", timeout, all_done, |s| {
            format!(
                "{} of {} messages reached every connection; {} deliveries",
                s.seq_done.len(),
                sent.len(),
                s.unique()
            )
        })
        .await;
    if let Err(e) = waited {
        eprintln!("warning: {e}; reporting what arrived");
    }
    let after = sampler.take("broadcast_end").await;
    let client_after = Sample::of_pids("broadcast_end", &fleet.client_pids());
    hists
        .push_http
        .add("parent", before.at_us, unix_us(), push_http);
    let reports = fleet.collect_reports(timeout).await?;
    let cost = PhaseCost::between("broadcast", before, after);
    let client_cost = PhaseCost::between("broadcast", client_before, client_after);
    let mut delivery = fold_delivery(
        &reports,
        sent.len() as u64 * open,
        &mut hists.latency,
        &cost,
    );

    let mut deliveries_per_seq: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    for r in &reports {
        for &(seq, count, last_us, t_us) in &r.per_seq {
            let e = deliveries_per_seq.entry(seq).or_default();
            e.0 += count;
            e.1 = e.1.max(last_us);
            e.2 = t_us;
        }
    }
    let mut fanouts = Vec::new();
    for &(seq, sent_us) in &sent {
        let (deliveries, last_us, t_us) = deliveries_per_seq.get(&seq).copied().unwrap_or_default();
        // Receive only: the pusher's intended send time, from the payload (its clock).
        let sent_us = if args.receive_only { t_us } else { sent_us };
        let complete = deliveries >= open && open > 0;
        let fanout_ms = complete.then(|| last_us.saturating_sub(sent_us) as f64 / 1e3);
        let deliveries_per_sec = fanout_ms
            .filter(|ms| *ms > 0.0)
            .map(|ms| deliveries as f64 / (ms / 1e3));
        if let Some(ms) = fanout_ms {
            fanouts.push(ms);
        }
        b.per_message.push(MessageFanout {
            seq,
            sent_us,
            deliveries,
            fanout_ms,
            deliveries_per_sec,
        });
    }
    fanouts.sort_by(f64::total_cmp);
    b.fanout_ms_p50 = fanouts.get(fanouts.len() / 2).copied();
    b.fanout_ms_max = fanouts.last().copied();
    let rates: Vec<f64> = b
        .per_message
        .iter()
        .filter_map(|m| m.deliveries_per_sec)
        .collect();
    b.deliveries_per_sec_mean =
        (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64);
    b.push_http = Percentiles::of(&hists.push_http.merged);
    eprintln!(
        "broadcast: {} of {} accepted to {open} connections; fan-out p50 {:?} ms max {:?} ms; {:?} deliveries/s",
        b.accepted,
        args.messages,
        b.fanout_ms_p50,
        b.fanout_ms_max,
        b.deliveries_per_sec_mean.map(|r| r.round())
    );
    delivery.client_cpu_us_per_delivery =
        (delivery.unique > 0).then(|| client_cost.cpu_us as f64 / delivery.unique as f64);
    print_delivery(&delivery);
    summary.server.push(cost);
    summary.client.push(client_cost);
    summary.broadcast = Some(b);
    summary.delivery = Some(delivery);
    Ok(())
}

fn print_delivery(d: &DeliverySummary) {
    eprintln!(
        "deliveries {} of {} expected: lost {} duplicates {} | latency p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms | CPU us/delivery: server {:?} client {:?}",
        d.unique,
        d.expected,
        d.lost,
        d.duplicates,
        d.latency.p50_ms,
        d.latency.p99_ms,
        d.latency.p999_ms,
        d.latency.max_ms,
        d.server_cpu_us_per_delivery
            .map(|v| (v * 100.0).round() / 100.0),
        d.client_cpu_us_per_delivery
            .map(|v| (v * 100.0).round() / 100.0)
    );
    if !d.closed_during_run.is_empty() {
        eprintln!(
            "connections closed during the run: {:?}",
            d.closed_during_run
        );
    }
}

/// splitmix64 finalizer: a cheap, well-spread hash of a push index.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Counts shared by the unicast lanes.
#[derive(Default)]
struct Tally {
    accepted: u64,
    errors: BTreeMap<String, u64>,
    last_answer_us: u64,
    push_http: Option<Hist>,
}

#[allow(clippy::too_many_arguments)]
async fn unicast(
    fleet: &mut Fleet,
    args: &UnicastArgs,
    http: &[Endpoint],
    sampler: &Sampler,
    failed: &HashSet<u64>,
    hists: &mut Hists,
    summary: &mut Summary,
) -> Result<(), BenchError> {
    let common = &args.common;
    let scheduled = (args.rate * args.duration).round() as u64;
    let uids = common.uid_offset..common.uid_offset + common.n;
    let live: Rc<Vec<u64>> = Rc::new(uids.filter(|i| !failed.contains(i)).collect());
    if live.is_empty() {
        return Err(bad("no connection established"));
    }
    let timeout = Duration::from_secs(common.timeout);
    start_phase(fleet, PhaseKind::Unicast, timeout).await?;
    let before = sampler.take("unicast_start").await;
    let client_before = Sample::of_pids("unicast_start", &fleet.client_pids());
    let tally = Rc::new(RefCell::new(Tally {
        push_http: Some(new_hist()),
        ..Default::default()
    }));
    let start_instant = Instant::now() + Duration::from_millis(UNICAST_START_DELAY_MS);
    let start_us = unix_us() + UNICAST_START_DELAY_MS * 1_000;
    let interval_ns = 1e9 / args.rate;
    let auth = auth(common).map(str::to_string);
    let lane_count = args.concurrency.min(scheduled as usize);
    let push_timeout = Duration::from_millis(common.push_timeout_ms);
    let mut lanes = Vec::new();
    for lane in 0..lane_count {
        // One keep-alive connection per endpoint, opened on first use.
        let mut conns: Vec<HttpConn> = http
            .iter()
            .cloned()
            .map(|e| HttpConn::new(e, push_timeout))
            .collect();
        let (tally, live, auth, kind) = (tally.clone(), live.clone(), auth.clone(), common.target);
        lanes.push(tokio::task::spawn_local(async move {
            let mut k = lane as u64;
            while k < scheduled {
                let offset_ns = (k as f64 * interval_ns) as u64;
                tokio::time::sleep_until(start_instant + Duration::from_nanos(offset_ns)).await;
                let intended_us = start_us + offset_ns / 1_000;
                let index = live[(k % live.len() as u64) as usize];
                let seq = k / live.len() as u64;
                let uid = target::uid(index);
                // The node a push enters by is independent of the node holding the user, so
                // in a cluster (N-1)/N of the pushes cross the mesh, as in production.
                let pick = (mix64(k) % conns.len() as u64) as usize;
                let conn = &mut conns[pick];
                let path = target::push_path(kind, conn.endpoint(), Some(&uid));
                let body = target::push_body(kind, seq, intended_us);
                let result = conn
                    .post(&path, auth.as_deref(), "application/json", body.as_bytes())
                    .await;
                let now = unix_us();
                let mut t = tally.borrow_mut();
                match result {
                    Ok((status, _)) if (200..300).contains(&status) => t.accepted += 1,
                    Ok((status, _)) => {
                        *t.errors.entry(format!("status_{status}")).or_default() += 1
                    }
                    Err(e) => *t.errors.entry(e.label().to_string()).or_default() += 1,
                }
                t.last_answer_us = t.last_answer_us.max(now);
                if let Some(h) = t.push_http.as_mut() {
                    record(h, now.saturating_sub(intended_us));
                }
                k += lane_count as u64;
            }
        }));
    }
    let push_deadline = Instant::now() + Duration::from_secs_f64(args.duration) + timeout;
    let mut last_print = Instant::now();
    for handle in lanes {
        while !handle.is_finished() {
            if Instant::now() >= push_deadline {
                handle.abort();
                break;
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                let t = tally.borrow();
                eprintln!(
                    "unicast: {} accepted, {} errors of {scheduled}; {} delivered",
                    t.accepted,
                    t.errors.values().sum::<u64>(),
                    fleet.state.borrow().unique()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let accepted = tally.borrow().accepted;
    let waited = fleet
        .wait_for(
            "unicast delivery",
            timeout,
            |s| s.unique() >= accepted,
            |s| format!("{} of {accepted} delivered", s.unique()),
        )
        .await;
    if let Err(e) = waited {
        eprintln!("warning: {e}; reporting what arrived");
    }
    let after = sampler.take("unicast_end").await;
    let client_after = Sample::of_pids("unicast_end", &fleet.client_pids());
    let reports = fleet.collect_reports(timeout).await?;
    let cost = PhaseCost::between("unicast", before, after);
    let client_cost = PhaseCost::between("unicast", client_before, client_after);
    let mut delivery = fold_delivery(&reports, accepted, &mut hists.latency, &cost);
    let mut t = tally.borrow_mut();
    let pushed = t.push_http.take().unwrap_or_else(new_hist);
    hists
        .push_http
        .add("parent", start_us, t.last_answer_us.max(start_us), pushed);
    let push_secs = t.last_answer_us.saturating_sub(start_us) as f64 / 1e6;
    let u = UnicastSummary {
        rate_target: args.rate,
        duration_secs: args.duration,
        concurrency: args.concurrency,
        scheduled,
        accepted,
        push_errors: t.errors.clone(),
        achieved_rate: if push_secs > 0.0 {
            accepted as f64 / push_secs
        } else {
            0.0
        },
        push_http: Percentiles::of(&hists.push_http.merged),
        server_cpu_us_per_push: (accepted > 0 && !cost.after.procs.is_empty())
            .then(|| cost.cpu_us as f64 / accepted as f64),
    };
    eprintln!(
        "unicast: {} of {scheduled} accepted at {:.0}/s (target {}); push answer p99 {:.2} ms; server CPU {:?} us/push",
        u.accepted,
        u.achieved_rate,
        args.rate,
        u.push_http.p99_ms,
        u.server_cpu_us_per_push
            .map(|v| (v * 100.0).round() / 100.0)
    );
    if !u.push_errors.is_empty() {
        eprintln!("push errors: {:?}", u.push_errors);
    }
    delivery.client_cpu_us_per_delivery =
        (delivery.unique > 0).then(|| client_cost.cpu_us as f64 / delivery.unique as f64);
    print_delivery(&delivery);
    summary.server.push(cost);
    summary.client.push(client_cost);
    summary.unicast = Some(u);
    summary.delivery = Some(delivery);
    Ok(())
}
