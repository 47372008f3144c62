//! What a run measured, as written to `summary.json` (and read back by `report`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::Percentiles;
use crate::server_stats::PhaseCost;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub scenario: String,
    pub label: Option<String>,
    pub target: String,
    pub started_unix_s: u64,
    pub args: serde_json::Value,
    pub n: u64,
    pub workers: usize,
    /// Connections were users u{uid_offset} .. u{uid_offset + n - 1}.
    pub uid_offset: u64,
    /// Local addresses the connections were bound to (empty: the kernel's choice).
    pub source_addrs_count: usize,
    pub connect: ConnectSummary,
    /// Server RSS and CPU around each phase, summed over `--server-pid`s.
    pub server: Vec<PhaseCost>,
    /// The load client's own cost (parent + workers) in the delivery phase: is it the bottleneck?
    pub client: Vec<PhaseCost>,
    pub idle: Option<IdleSummary>,
    pub broadcast: Option<BroadcastSummary>,
    pub unicast: Option<UnicastSummary>,
    pub delivery: Option<DeliverySummary>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectSummary {
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Established connections per local address (from `getsockname`).
    pub by_source: BTreeMap<String, u64>,
    /// Unix microseconds of the first connect attempt and the last established connection.
    pub first_start_us: u64,
    pub last_done_us: u64,
    /// From the first connect attempt to the last established connection.
    pub secs: f64,
    pub rate_per_sec: f64,
    /// TCP connect + WebSocket upgrade, per connection.
    pub handshake: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct IdleSummary {
    pub held_secs: u64,
    pub open_at_end: u64,
    pub server_rss_before_kib: u64,
    pub server_rss_after_kib: u64,
    /// (server RSS after holding - before connecting) / connections established.
    pub server_bytes_per_connection: f64,
    pub server_cpu_us_while_idle: u64,
    pub pings_answered: u64,
    pub closed: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageFanout {
    pub seq: u64,
    pub sent_us: u64,
    pub deliveries: u64,
    /// Push sent -> last connection received it; `None` when it never reached all of them.
    pub fanout_ms: Option<f64>,
    pub deliveries_per_sec: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BroadcastSummary {
    pub messages: u64,
    pub accepted: u64,
    pub push_errors: BTreeMap<String, u64>,
    pub open_at_start: u64,
    pub fanout_ms_p50: Option<f64>,
    pub fanout_ms_max: Option<f64>,
    pub deliveries_per_sec_mean: Option<f64>,
    pub per_message: Vec<MessageFanout>,
    /// HTTP answer time of the broadcast pushes.
    pub push_http: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UnicastSummary {
    pub rate_target: f64,
    pub duration_secs: f64,
    pub concurrency: usize,
    pub scheduled: u64,
    pub accepted: u64,
    pub push_errors: BTreeMap<String, u64>,
    /// Accepted pushes / (last answer - first intended send).
    pub achieved_rate: f64,
    /// Intended send time -> HTTP answer (includes waiting for a free lane).
    pub push_http: Percentiles,
    pub server_cpu_us_per_push: Option<f64>,
}

/// Deliveries of the measured phase (broadcast or unicast).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliverySummary {
    pub expected: u64,
    pub unique: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub unparsed: u64,
    /// Intended send time (payload `t_us`) -> frame read by the client.
    pub latency: Percentiles,
    pub closed_during_run: BTreeMap<String, u64>,
    pub server_cpu_us: u64,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub client_cpu_us_per_delivery: Option<f64>,
}
