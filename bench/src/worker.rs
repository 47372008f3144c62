//! A worker process (`corecast-bench worker`, hidden): holds up to WORKER_CONNECTIONS_MAX
//! client connections on one current-thread tokio runtime, optionally pinned to a core.
//!
//! Data flow: the parent writes a [`WorkerSpec`] line on stdin; the worker opens its
//! connections (bounded handshake concurrency, optional ramp, source addresses from
//! [`crate::source_addrs`]), reports [`Event::Connected`], then records every delivery (latency from the
//! payload's `t_us`, loss and duplicates from its `seq`) until the parent asks for a report or
//! tells it to close. Idle connections own no read buffer: all of them read into one scratch
//! buffer of the worker.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, ErrorKind};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::LocalSet;
use tokio::time::Instant;

use crate::clock::unix_us;
use crate::error::{BenchError, ConnectError};
use crate::hist::{Hist, RawHist, new_hist, record};
use crate::limits::{
    PROGRESS_INTERVAL_MS, READ_SCRATCH_BYTES, SEQ_TRACKED_MAX, STATS_INTERVAL_MS,
    WORKER_CONNECTIONS_MAX, WORKER_FDS_OVERHEAD,
};
use crate::proto::{Command, ConnectReport, Event, PhaseKind, PhaseReport, WorkerSpec};
use crate::target::{self, BROADCAST_CHANNEL, Endpoint, TargetKind};
use crate::token::TokenMinter;
use crate::ws_proto::{self, FrameReader};

/// Bytes read per call while waiting for the upgrade answer.
const HANDSHAKE_READ_BYTES: usize = 2_048;
/// How often the connect loop checks whether every attempt finished.
const CONNECT_POLL_MS: u64 = 10;

/// Entry point of the `worker` subcommand.
pub fn run() -> Result<(), BenchError> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let spec: WorkerSpec = serde_json::from_str(&line)?;
    if spec.count as usize > WORKER_CONNECTIONS_MAX {
        return Err(BenchError::BadArgument(format!(
            "worker asked for {} connections",
            spec.count
        )));
    }
    if let Some(core) = spec.pin_core {
        pin_to(core);
    }
    raise_fd_limit(spec.count as usize + WORKER_FDS_OVERHEAD);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    LocalSet::new().block_on(&rt, worker_main(spec))
}

fn pin_to(core: usize) {
    if let Some(ids) = core_affinity::get_core_ids()
        && !ids.is_empty()
    {
        core_affinity::set_for_current(ids[core % ids.len()]);
    }
}

/// Raises this process's soft open-file limit towards `needed` (never past the hard limit).
pub fn raise_fd_limit(needed: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < needed as u64
    {
        let _ = setrlimit(
            Resource::RLIMIT_NOFILE,
            hard.min(needed as u64 * 2).max(soft),
            hard,
        );
    }
}

/// Delivery bookkeeping of one broadcast seq in this worker.
#[derive(Default)]
struct SeqAgg {
    deliveries: u64,
    last_us: u64,
    /// The payload's intended send time (the pusher's clock).
    sent_us: u64,
    done: bool,
}

/// State shared by every connection task of the worker (single thread, so a RefCell).
struct Shared {
    phase: Option<PhaseKind>,
    generation: u32,
    latency: Hist,
    unique: u64,
    duplicates: u64,
    unparsed: u64,
    open: u64,
    closed: BTreeMap<String, u64>,
    pings: u64,
    per_seq: HashMap<u64, SeqAgg>,
    connect: ConnectReport,
    handshake: Hist,
    events: mpsc::UnboundedSender<Event>,
}

impl Shared {
    fn reset_phase(&mut self, kind: PhaseKind) {
        self.phase = Some(kind);
        self.generation = self.generation.wrapping_add(1);
        self.latency = new_hist();
        self.unique = 0;
        self.duplicates = 0;
        self.unparsed = 0;
        self.per_seq.clear();
    }

    fn report(&self) -> PhaseReport {
        let mut per_seq: Vec<(u64, u64, u64, u64)> = self
            .per_seq
            .iter()
            .map(|(seq, a)| (*seq, a.deliveries, a.last_us, a.sent_us))
            .collect();
        per_seq.sort_unstable();
        PhaseReport {
            latency: RawHist::from_hist(&self.latency),
            unique: self.unique,
            duplicates: self.duplicates,
            unparsed: self.unparsed,
            open: self.open,
            closed: self.closed.clone(),
            pings: self.pings,
            per_seq,
        }
    }
}

/// Per-connection record of which seqs arrived in the current phase.
#[derive(Default)]
struct SeqTrack {
    generation: u32,
    seen: Vec<u64>,
}

#[derive(Deserialize)]
struct PushPayload {
    seq: Option<u64>,
    t_us: Option<u64>,
    data: Option<InnerPayload>,
}

#[derive(Deserialize)]
struct InnerPayload {
    seq: Option<u64>,
    t_us: Option<u64>,
}

/// Extracts (seq, t_us) from a corecast push frame or a raw nchan message.
fn parse_payload(bytes: &[u8]) -> Option<(u64, u64)> {
    let p: PushPayload = serde_json::from_slice(bytes).ok()?;
    match p.data {
        Some(InnerPayload {
            seq: Some(seq),
            t_us: Some(t),
        }) => Some((seq, t)),
        _ => Some((p.seq?, p.t_us?)),
    }
}

fn on_delivery(shared: &RefCell<Shared>, track: &mut SeqTrack, payload: &[u8]) {
    let now = unix_us();
    let mut s = shared.borrow_mut();
    let Some(kind) = s.phase else { return };
    let Some((seq, t_us)) = parse_payload(payload).filter(|(seq, _)| *seq < SEQ_TRACKED_MAX) else {
        s.unparsed += 1;
        return;
    };
    if track.generation != s.generation {
        track.generation = s.generation;
        track.seen.clear();
    }
    let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
    if track.seen.len() <= word {
        track.seen.resize(word + 1, 0);
    }
    if track.seen[word] & bit != 0 {
        s.duplicates += 1;
        return;
    }
    track.seen[word] |= bit;
    s.unique += 1;
    record(&mut s.latency, now.saturating_sub(t_us));
    if kind == PhaseKind::Broadcast {
        let open = s.open;
        let agg = s.per_seq.entry(seq).or_default();
        agg.deliveries += 1;
        agg.last_us = agg.last_us.max(now);
        agg.sent_us = t_us;
        if !agg.done && agg.deliveries >= open {
            agg.done = true;
            let event = Event::SeqDone {
                seq,
                deliveries: agg.deliveries,
                last_us: agg.last_us,
            };
            let _ = s.events.send(event);
        }
    }
}

/// Reads one established connection until it closes; answers pings and close frames.
async fn run_connection(
    shared: Rc<RefCell<Shared>>,
    scratch: Rc<RefCell<Vec<u8>>>,
    mut stream: TcpStream,
    early: Vec<u8>,
) {
    let mut reader = FrameReader::default();
    let mut track = SeqTrack::default();
    let mut replies: Vec<Vec<u8>> = Vec::new();
    let mut close_code: Option<Option<u16>> = None;
    let mut handle =
        |bytes: &[u8], replies: &mut Vec<Vec<u8>>, close_code: &mut Option<Option<u16>>| {
            reader.feed(bytes, |event| match event {
                ws_proto::Event::Message(m) => on_delivery(&shared, &mut track, m),
                ws_proto::Event::Ping(p) => {
                    shared.borrow_mut().pings += 1;
                    replies.push(ws_proto::pong_frame(p));
                }
                ws_proto::Event::Close(code) => *close_code = Some(code),
            })
        };
    let mut reason = match handle(&early, &mut replies, &mut close_code) {
        Ok(()) => None,
        Err(_) => Some("protocol_error".to_string()),
    };
    while reason.is_none() {
        for frame in replies.drain(..) {
            if stream.write_all(&frame).await.is_err() {
                reason = Some("write_error".to_string());
            }
        }
        if let Some(code) = close_code {
            let _ = stream.write_all(&ws_proto::close_frame()).await;
            reason = Some(match code {
                Some(c) => format!("close_{c}"),
                None => "close".to_string(),
            });
            break;
        }
        if reason.is_some() {
            break;
        }
        if stream.readable().await.is_err() {
            reason = Some("io_error".to_string());
            break;
        }
        let mut buf = scratch.borrow_mut();
        match stream.try_read(&mut buf) {
            Ok(0) => reason = Some("eof".to_string()),
            Ok(n) => {
                if handle(&buf[..n], &mut replies, &mut close_code).is_err() {
                    reason = Some("protocol_error".to_string());
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => reason = Some(format!("io_{:?}", e.kind()).to_lowercase()),
        }
    }
    let mut s = shared.borrow_mut();
    s.open = s.open.saturating_sub(1);
    *s.closed.entry(reason.unwrap_or_default()).or_default() += 1;
}

/// Opens one TCP connection (bound to `source` when given) and upgrades it.
/// Returns the stream and any frame bytes that arrived with the upgrade answer.
pub async fn connect(
    endpoint: &Endpoint,
    path: &str,
    source: Option<SocketAddr>,
) -> Result<(TcpStream, Vec<u8>), ConnectError> {
    let socket = TcpSocket::new_v4().map_err(ConnectError::Connect)?;
    if let Some(addr) = source {
        // The port is chosen at connect time, per destination: one source address then serves
        // ~28k connections to each target instead of ~28k in all.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        socket.bind(addr).map_err(ConnectError::Connect)?;
    }
    let mut stream = socket
        .connect(endpoint.addr)
        .await
        .map_err(ConnectError::Connect)?;
    stream.set_nodelay(true)?;
    let key = ws_proto::new_key();
    stream
        .write_all(ws_proto::upgrade_request(&endpoint.host, path, &key).as_bytes())
        .await?;
    let mut answer = Vec::with_capacity(HANDSHAKE_READ_BYTES);
    let mut chunk = vec![0u8; HANDSHAKE_READ_BYTES];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ConnectError::Closed);
        }
        answer.extend_from_slice(&chunk[..n]);
        if let Some(used) = ws_proto::parse_upgrade_response(&answer, &key)? {
            return Ok((stream, answer.split_off(used)));
        }
    }
}

async fn worker_main(spec: WorkerSpec) -> Result<(), BenchError> {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<Event>();
    let writer = tokio::task::spawn_local(async move {
        let mut out = tokio::io::stdout();
        while let Some(event) = events_rx.recv().await {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            if out.write_all(&line).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
    });
    let shared = Rc::new(RefCell::new(Shared {
        phase: None,
        generation: 0,
        latency: new_hist(),
        unique: 0,
        duplicates: 0,
        unparsed: 0,
        open: 0,
        closed: BTreeMap::new(),
        pings: 0,
        per_seq: HashMap::new(),
        connect: ConnectReport::default(),
        handshake: new_hist(),
        events: events_tx.clone(),
    }));
    let (close_tx, mut close_rx) = mpsc::unbounded_channel::<()>();
    tokio::task::spawn_local(read_commands(shared.clone(), close_tx));

    connect_all(&spec, &shared).await?;
    let report = {
        let s = shared.borrow();
        let mut report = s.connect.clone();
        report.handshake = RawHist::from_hist(&s.handshake);
        report
    };
    let _ = events_tx.send(Event::Connected(report));

    let mut tick = tokio::time::interval(Duration::from_millis(STATS_INTERVAL_MS));
    loop {
        tokio::select! {
            _ = close_rx.recv() => break,
            _ = tick.tick() => {
                let s = shared.borrow();
                if s.phase.is_some() {
                    let _ = s.events.send(Event::Stats { unique: s.unique, duplicates: s.duplicates, open: s.open });
                }
            }
        }
    }
    drop(events_tx);
    shared.borrow_mut().events = mpsc::unbounded_channel().0;
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    Ok(())
}

async fn read_commands(shared: Rc<RefCell<Shared>>, close_tx: mpsc::UnboundedSender<()>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<Command>(&line) {
            Ok(Command::Phase { kind }) => {
                let mut s = shared.borrow_mut();
                s.reset_phase(kind);
                let _ = s.events.send(Event::PhaseStarted { open: s.open });
            }
            Ok(Command::Report) => {
                let s = shared.borrow();
                let _ = s.events.send(Event::Report(s.report()));
            }
            Ok(Command::Close) => break,
            Err(e) => {
                let _ = shared.borrow().events.send(Event::Fatal {
                    message: format!("bad command: {e}"),
                });
            }
        }
    }
    let _ = close_tx.send(());
}

async fn connect_all(spec: &WorkerSpec, shared: &Rc<RefCell<Shared>>) -> Result<(), BenchError> {
    let minter = TokenMinter::new(&spec.jwt_secret, spec.rooms.clone(), spec.token_exp);
    let scratch = Rc::new(RefCell::new(vec![0u8; READ_SCRATCH_BYTES]));
    let permits = std::sync::Arc::new(Semaphore::new(spec.handshake_concurrency.max(1)));
    let endpoints: Vec<Rc<Endpoint>> = spec.ws.iter().cloned().map(Rc::new).collect();
    let start = Instant::now();
    shared.borrow_mut().connect.first_start_us = unix_us();
    let mut last_progress = Instant::now();
    let handshake_timeout_ms = spec.handshake_timeout_ms;
    for i in 0..spec.count {
        if let Some(rate) = spec.ramp_per_sec.filter(|r| *r > 0.0) {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        if last_progress.elapsed() >= Duration::from_millis(PROGRESS_INTERVAL_MS) {
            last_progress = Instant::now();
            let s = shared.borrow();
            let _ = s.events.send(Event::Progress {
                ok: s.connect.ok,
                failed: s.connect.failed,
            });
        }
        let global = spec.first + i;
        let uid = target::uid(global);
        let endpoint = endpoints[(global % endpoints.len() as u64) as usize].clone();
        let channel = if spec.shared_channel {
            BROADCAST_CHANNEL
        } else {
            uid.as_str()
        };
        let token = match spec.target {
            TargetKind::Corecast => minter.mint(&uid)?,
            TargetKind::Nchan => String::new(),
        };
        let path = target::subscribe_path(spec.target, &endpoint, channel, &token);
        let source = crate::source_addrs::for_connection(&spec.source_addrs, global);
        let (shared, scratch) = (shared.clone(), scratch.clone());
        tokio::task::spawn_local(async move {
            let started = Instant::now();
            let attempt = Box::pin(connect(&endpoint, &path, source));
            let result =
                match tokio::time::timeout(Duration::from_millis(handshake_timeout_ms), attempt)
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(ConnectError::Timeout),
                };
            drop(permit);
            drop(path);
            drop(endpoint);
            let established = {
                let mut s = shared.borrow_mut();
                match result {
                    Ok(ok) => {
                        let local = ok.0.local_addr().map(|a| a.ip().to_string());
                        *s.connect
                            .by_source
                            .entry(local.unwrap_or_else(|_| "unknown".into()))
                            .or_default() += 1;
                        s.connect.ok += 1;
                        s.open += 1;
                        s.connect.last_done_us = unix_us();
                        record(&mut s.handshake, started.elapsed().as_micros() as u64);
                        Some(ok)
                    }
                    Err(e) => {
                        s.connect.failed += 1;
                        s.connect.failed_indices.push(global);
                        *s.connect.failures.entry(e.label()).or_default() += 1;
                        None
                    }
                }
            };
            if let Some((stream, early)) = established {
                run_connection(shared, scratch, stream, early).await;
            }
        });
    }
    loop {
        {
            let s = shared.borrow();
            if s.connect.ok + s.connect.failed >= spec.count {
                return Ok(());
            }
            if last_progress.elapsed() >= Duration::from_millis(PROGRESS_INTERVAL_MS) {
                last_progress = Instant::now();
                let _ = s.events.send(Event::Progress {
                    ok: s.connect.ok,
                    failed: s.connect.failed,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(CONNECT_POLL_MS)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_parsed_from_corecast_and_nchan_frames() {
        let corecast = br#"{"type":"push","id":"m1","data":{"seq":4,"t_us":99}}"#;
        assert_eq!(parse_payload(corecast), Some((4, 99)));
        assert_eq!(parse_payload(br#"{"seq":5,"t_us":7}"#), Some((5, 7)));
        assert_eq!(parse_payload(b"hello"), None);
    }
}
