//! The parent <-> worker pipe protocol: one JSON document per line. The parent writes a
//! [`WorkerSpec`] then [`Command`]s on the worker's stdin; the worker answers with [`Event`]s on
//! its stdout. A worker whose stdin closes exits, so a dead parent never leaves load behind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::RawHist;
use crate::target::{Endpoint, TargetKind};

/// Everything a worker needs to open its share of connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub index: usize,
    pub target: TargetKind,
    pub ws: Vec<Endpoint>,
    /// Global index of this worker's first connection; uids are `u{global index}`.
    pub first: u64,
    pub count: u64,
    pub jwt_secret: String,
    pub rooms: Vec<String>,
    pub token_exp: u64,
    /// nchan only: subscribe every connection to the shared broadcast channel.
    pub shared_channel: bool,
    pub handshake_concurrency: usize,
    pub handshake_timeout_ms: u64,
    /// This worker's share of `--ramp-per-sec`.
    pub ramp_per_sec: Option<f64>,
    pub pin_core: Option<usize>,
    /// Local addresses to bind connection `i` to (`i mod len`); empty: the kernel picks.
    pub source_addrs: Vec<std::net::Ipv4Addr>,
}

/// What a measurement phase expects to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// Every connection receives every seq; the worker reports when a seq reached all of its
    /// open connections.
    Broadcast,
    /// Each connection receives its own seqs.
    Unicast,
}

/// Parent -> worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Reset phase counters and start recording deliveries of this kind.
    Phase { kind: PhaseKind },
    /// Answer with an [`Event::Report`] of the current phase.
    Report,
    /// Close every connection and exit.
    Close,
}

/// Result of the connect phase of one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectReport {
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Global indices of the connections that did not establish.
    pub failed_indices: Vec<u64>,
    pub handshake: RawHist,
    pub first_start_us: u64,
    pub last_done_us: u64,
    /// Established connections per local address, as the kernel reports it (`getsockname`).
    #[serde(default)]
    pub by_source: BTreeMap<String, u64>,
}

/// Counters of a delivery phase in one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseReport {
    pub latency: RawHist,
    pub unique: u64,
    pub duplicates: u64,
    /// Deliveries whose payload had no seq/t_us, or a seq beyond what is tracked.
    pub unparsed: u64,
    pub open: u64,
    pub closed: BTreeMap<String, u64>,
    /// Server pings answered since the connections opened.
    pub pings: u64,
    /// Per broadcast seq: (seq, deliveries, latest receive time in unix us, the payload's
    /// intended send time).
    pub per_seq: Vec<(u64, u64, u64, u64)>,
}

/// Worker -> parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Connect progress, sent periodically while connecting.
    Progress { ok: u64, failed: u64 },
    /// All connections of this worker were attempted.
    Connected(ConnectReport),
    /// Broadcast `seq` reached every open connection of this worker; `last_us` is the receive
    /// time of the last one.
    SeqDone {
        seq: u64,
        deliveries: u64,
        last_us: u64,
    },
    /// Periodic delivery counters during a phase.
    Stats {
        unique: u64,
        duplicates: u64,
        open: u64,
    },
    /// The worker reset its counters for a new phase; `open` connections take part.
    PhaseStarted { open: u64 },
    /// Answer to [`Command::Report`].
    Report(PhaseReport),
    /// The worker hit an error it cannot recover from.
    Fatal { message: String },
}
