//! Mesh counters, peer states and the hop-latency histogram, plus a
//! Prometheus collector that exposes them under the contract's names.
//!
//! The mesh thread is the only writer of almost everything here (the node's
//! deliver closure also counts `deliver_full` drops, and executors count
//! `outbound_full`); the scraper reads. Counters are relaxed atomics; the
//! histogram sits behind a mutex taken once per received batch and once per
//! scrape. Every family is emitted even at zero (each drop reason, each
//! configured peer), so dashboards and alert rules always find the series.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Highest hop latency the histogram resolves; slower hops are recorded as
/// this value.
pub const HOP_LATENCY_US_MAX: u64 = 60_000_000;

/// Significant figures of the hop-latency histogram.
const HOP_LATENCY_SIGFIG: u8 = 3;

/// Bucket upper bounds of `corecast_mesh_hop_latency_seconds`, in
/// microseconds (50 us .. 10 s); `+Inf` follows.
pub const HOP_LATENCY_BUCKETS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

const _: () =
    assert!(HOP_LATENCY_BUCKETS_US[HOP_LATENCY_BUCKETS_US.len() - 1] < HOP_LATENCY_US_MAX);

/// Why an envelope was not published or not delivered; the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The executor -> mesh queue was full ([`super::MeshHandle::publish`]
    /// returned false).
    OutboundFull,
    /// No longer counted (the series stays, at 0, for dashboards): since the
    /// mesh runs on libzmq, a subscriber that falls behind fills only its own
    /// pipe ([`super::MESH_PEER_SNDHWM_MESSAGES`]) and the envelopes it
    /// misses are counted as lost for that peer on the subscriber
    /// (`corecast_mesh_peer_lost_envelopes_total`).
    PubBacklog,
    /// Already seen (same message id), e.g. a peer reached by two addresses.
    Duplicate,
    /// Published by this node (it reached us through a peer address that is
    /// this node under another name).
    Own,
    /// A ZeroMQ message that is not a valid batch; counted per message.
    Corrupt,
    /// The node's per-core inbox was full (counted by the deliver closure).
    DeliverFull,
    /// A valid batch whose origin or envelope the API would refuse (names,
    /// sizes, UTF-8, JSON: [`super::validate`]).
    Invalid,
    /// An encoded batch over [`super::MESH_MESSAGE_BYTES_MAX`] (which every
    /// peer would refuse): not sent, its sequence numbers skipped.
    Oversize,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::OutboundFull,
        DropReason::PubBacklog,
        DropReason::Duplicate,
        DropReason::Own,
        DropReason::Corrupt,
        DropReason::DeliverFull,
        DropReason::Invalid,
        DropReason::Oversize,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::OutboundFull => "outbound_full",
            DropReason::PubBacklog => "pub_backlog",
            DropReason::Duplicate => "duplicate",
            DropReason::Own => "own",
            DropReason::Corrupt => "corrupt",
            DropReason::DeliverFull => "deliver_full",
            DropReason::Invalid => "invalid",
            DropReason::Oversize => "oversize",
        }
    }
}

/// The hop-latency histogram and the exact sum (HDR only keeps counts).
struct HopLatency {
    histogram: Histogram<u64>,
    sum_us: u64,
}

/// One configured peer (this node's SUB connection to its PUB socket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerState {
    /// The connection is up (ZMTP/CURVE handshake succeeded, not since
    /// disconnected).
    pub up: bool,
    /// Times the connection went from up to down.
    pub downs: u64,
    /// Envelopes missing from the sequences received through this peer.
    pub lost: u64,
}

/// Which mesh socket saw a failed handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// This node's PUB socket (a subscriber that failed to authenticate).
    Pub,
    /// A SUB socket (a peer address that is not a key holder).
    Sub,
}

/// Every mesh metric of one node. Create one, share it (`Arc`) with
/// [`super::start`] and register a [`MeshCollector`] over it.
pub struct MeshMetrics {
    envelopes_in: AtomicU64,
    envelopes_out: AtomicU64,
    batches_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    lost: AtomicU64,
    restarts: AtomicU64,
    handshake_failures: [AtomicU64; 2],
    subscriber_connects: AtomicU64,
    subscriber_disconnects: AtomicU64,
    zap_denied: Arc<AtomicU64>,
    peers: Mutex<BTreeMap<String, PeerState>>,
    hop: Mutex<HopLatency>,
}

impl std::fmt::Debug for MeshMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshMetrics")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// A copy of the counters, for tests and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshSnapshot {
    pub envelopes_in: u64,
    pub envelopes_out: u64,
    /// ZeroMQ messages sent (not exported: envelopes per batch in tests).
    pub batches_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Indexed like [`DropReason::ALL`].
    pub drops: [u64; DropReason::ALL.len()],
    pub lost: u64,
    /// Origins seen coming back with a new incarnation.
    pub restarts: u64,
    pub hop_count: u64,
    /// Failed ZMTP/CURVE handshakes on the PUB socket and on SUB sockets.
    pub handshake_failures_pub: u64,
    pub handshake_failures_sub: u64,
    /// Subscribers whose handshake succeeded on the PUB socket, and
    /// disconnections seen there.
    pub subscriber_connects: u64,
    pub subscriber_disconnects: u64,
    /// CURVE clients refused by the ZAP handler.
    pub zap_denied: u64,
}

impl MeshSnapshot {
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain counters behind: keep
    // using them rather than poisoning every scrape.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Default for MeshMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MeshMetrics {
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, HOP_LATENCY_US_MAX, HOP_LATENCY_SIGFIG)
            .expect("constant histogram bounds are valid");
        Self {
            envelopes_in: AtomicU64::new(0),
            envelopes_out: AtomicU64::new(0),
            batches_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            drops: Default::default(),
            lost: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            handshake_failures: Default::default(),
            subscriber_connects: AtomicU64::new(0),
            subscriber_disconnects: AtomicU64::new(0),
            zap_denied: Arc::new(AtomicU64::new(0)),
            peers: Mutex::new(BTreeMap::new()),
            hop: Mutex::new(HopLatency {
                histogram,
                sum_us: 0,
            }),
        }
    }

    /// Counts `n` envelopes dropped for `reason`.
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count_out(&self, envelopes: u64, bytes: u64) {
        self.envelopes_out.fetch_add(envelopes, Ordering::Relaxed);
        self.batches_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn count_in_bytes(&self, bytes: u64) {
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn count_in_envelopes(&self, envelopes: u64) {
        self.envelopes_in.fetch_add(envelopes, Ordering::Relaxed);
    }

    pub(crate) fn count_lost(&self, envelopes: u64) {
        self.lost.fetch_add(envelopes, Ordering::Relaxed);
    }

    pub(crate) fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Declares a peer (state 0) so its series exists before it connects.
    pub(crate) fn add_peer(&self, peer: &str) {
        lock(&self.peers).entry(peer.to_owned()).or_default();
    }

    /// Records whether `peer` is up; `true` when that changed.
    pub(crate) fn set_peer_up(&self, peer: &str, up: bool) -> bool {
        let mut peers = lock(&self.peers);
        let state = peers.entry(peer.to_owned()).or_default();
        if state.up && !up {
            state.downs += 1;
        }
        let changed = state.up != up;
        state.up = up;
        changed
    }

    /// Counts `n` envelopes lost in what arrived through `peer`.
    pub(crate) fn count_peer_lost(&self, peer: &str, n: u64) {
        lock(&self.peers).entry(peer.to_owned()).or_default().lost += n;
    }

    pub(crate) fn count_handshake_failure(&self, side: Side) {
        self.handshake_failures[side as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_subscriber(&self, connected: bool) {
        let counter = if connected {
            &self.subscriber_connects
        } else {
            &self.subscriber_disconnects
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counter the ZAP handler thread increments.
    pub(crate) fn zap_denied_counter(&self) -> Arc<AtomicU64> {
        self.zap_denied.clone()
    }

    /// Whether `peer`'s SUB connection is up.
    /// Subscribers that completed a handshake with this node's PUB since
    /// it started (a refused handshake is counted as a disconnect only, so
    /// connects minus disconnects would undercount).
    pub fn subscribers_ever(&self) -> u64 {
        self.subscriber_connects.load(Ordering::Relaxed)
    }

    pub fn peer_up(&self, peer: &str) -> Option<bool> {
        lock(&self.peers).get(peer).map(|s| s.up)
    }

    /// Everything known about `peer`.
    pub fn peer(&self, peer: &str) -> Option<PeerState> {
        lock(&self.peers).get(peer).copied()
    }

    /// Records hop latencies (microseconds) of one received batch.
    pub(crate) fn record_hops(&self, hops_us: impl IntoIterator<Item = u64>) {
        let mut hop = lock(&self.hop);
        for us in hops_us {
            hop.histogram.saturating_record(us.max(1));
            hop.sum_us = hop.sum_us.saturating_add(us);
        }
    }

    /// Hop latency at `quantile` (0..=1), microseconds; 0 when empty.
    pub fn hop_latency_quantile_us(&self, quantile: f64) -> u64 {
        lock(&self.hop).histogram.value_at_quantile(quantile)
    }

    /// Forgets recorded hop latencies (benchmarks measure a phase).
    pub fn reset_hop_latency(&self) {
        let mut hop = lock(&self.hop);
        hop.histogram.reset();
        hop.sum_us = 0;
    }

    pub fn snapshot(&self) -> MeshSnapshot {
        let mut drops = [0; DropReason::ALL.len()];
        for (out, counter) in drops.iter_mut().zip(&self.drops) {
            *out = counter.load(Ordering::Relaxed);
        }
        MeshSnapshot {
            envelopes_in: self.envelopes_in.load(Ordering::Relaxed),
            envelopes_out: self.envelopes_out.load(Ordering::Relaxed),
            batches_out: self.batches_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            drops,
            lost: self.lost.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            hop_count: lock(&self.hop).histogram.len(),
            handshake_failures_pub: self.handshake_failures[Side::Pub as usize]
                .load(Ordering::Relaxed),
            handshake_failures_sub: self.handshake_failures[Side::Sub as usize]
                .load(Ordering::Relaxed),
            subscriber_connects: self.subscriber_connects.load(Ordering::Relaxed),
            subscriber_disconnects: self.subscriber_disconnects.load(Ordering::Relaxed),
            zap_denied: self.zap_denied.load(Ordering::Relaxed),
        }
    }

    /// Per-bucket (not cumulative) counts at [`HOP_LATENCY_BUCKETS_US`] plus
    /// `+Inf`, the sum in seconds and the count. A bucket holds the values
    /// HDR considers equivalent to its bound (3 significant figures).
    fn hop_buckets(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let hop = lock(&self.hop);
        let mut buckets = Vec::with_capacity(HOP_LATENCY_BUCKETS_US.len() + 1);
        let mut below = 0u64;
        for &le in &HOP_LATENCY_BUCKETS_US {
            let cumulative = hop.histogram.count_between(0, le);
            buckets.push((le as f64 / 1e6, cumulative.saturating_sub(below)));
            below = below.max(cumulative);
        }
        let count = hop.histogram.len();
        buckets.push((f64::MAX, count.saturating_sub(below)));
        (buckets, hop.sum_us as f64 / 1e6, count)
    }
}

/// Exposes [`MeshMetrics`] to a `prometheus_client` registry:
/// `registry.register_collector(Box::new(MeshCollector(metrics.clone())))`.
#[derive(Debug)]
pub struct MeshCollector(pub Arc<MeshMetrics>);

fn encode_counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for &(value, count) in values {
        let labels = [(label, value)];
        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for MeshCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let s = m.snapshot();
        // Counter names get `_total` from the encoder.
        encode_counter_family(
            &mut encoder,
            "corecast_mesh_envelopes",
            "Envelopes published to (out) and accepted from (in) the cluster mesh.",
            "direction",
            &[("in", s.envelopes_in), ("out", s.envelopes_out)],
        )?;
        encode_counter_family(
            &mut encoder,
            "corecast_mesh_bytes",
            "Mesh batch bytes sent on the PUB socket (out, once per batch) and received (in).",
            "direction",
            &[("in", s.bytes_in), ("out", s.bytes_out)],
        )?;
        let drops: Vec<(&str, u64)> = DropReason::ALL
            .iter()
            .map(|r| (r.label(), s.drops(*r)))
            .collect();
        encode_counter_family(
            &mut encoder,
            "corecast_mesh_drops",
            "Envelopes dropped by the mesh, by reason (corrupt counts messages).",
            "reason",
            &drops,
        )?;
        {
            let lost = ConstCounter::new(s.lost);
            let metric = encoder.encode_descriptor(
                "corecast_mesh_lost_envelopes",
                "Envelopes missing from a peer's sequence (gaps seen by this node).",
                None,
                lost.metric_type(),
            )?;
            lost.encode(metric)?;
        }
        let peers: Vec<(String, PeerState)> = lock(&m.peers)
            .iter()
            .map(|(peer, state)| (peer.clone(), *state))
            .collect();
        {
            let mut family = encoder.encode_descriptor(
                "corecast_mesh_peer_up",
                "Whether this node's SUB connection to a peer's PUB socket is up.",
                None,
                MetricType::Gauge,
            )?;
            for (peer, state) in &peers {
                let labels = [("peer", peer.as_str())];
                ConstGauge::new(i64::from(state.up)).encode(family.encode_family(&labels)?)?;
            }
        }
        let downs: Vec<(&str, u64)> = peers.iter().map(|(p, s)| (p.as_str(), s.downs)).collect();
        encode_counter_family(
            &mut encoder,
            "corecast_mesh_peer_down",
            "Times this node's SUB connection to a peer went down (disconnect, heartbeat \
             timeout, keepalive failure).",
            "peer",
            &downs,
        )?;
        let lost: Vec<(&str, u64)> = peers.iter().map(|(p, s)| (p.as_str(), s.lost)).collect();
        encode_counter_family(
            &mut encoder,
            "corecast_mesh_peer_lost_envelopes",
            "Envelopes missing from the sequences received through one peer's connection.",
            "peer",
            &lost,
        )?;
        encode_counter_family(
            &mut encoder,
            "corecast_mesh_handshake_failures",
            "Failed ZMTP/CURVE handshakes: on this node's PUB socket (socket=pub: a \
             subscriber without the cluster key) and on its SUB sockets (socket=sub).",
            "socket",
            &[
                ("pub", s.handshake_failures_pub),
                ("sub", s.handshake_failures_sub),
            ],
        )?;
        encode_counter_family(
            &mut encoder,
            "corecast_mesh_subscriber_events",
            "Subscribers admitted on this node's PUB socket (connected) and connections \
             closed there (disconnected, including refused handshakes).",
            "event",
            &[
                ("connected", s.subscriber_connects),
                ("disconnected", s.subscriber_disconnects),
            ],
        )?;
        {
            let denied = ConstCounter::new(s.zap_denied);
            let metric = encoder.encode_descriptor(
                "corecast_mesh_zap_denied",
                "CURVE clients refused by the ZAP handler (a key pair other than the cluster's).",
                None,
                denied.metric_type(),
            )?;
            denied.encode(metric)?;
        }
        {
            let (buckets, sum, count) = m.hop_buckets();
            let mut metric = encoder.encode_descriptor(
                "corecast_mesh_hop_latency_seconds",
                "Origin accept (created_at) to receipt on this node, per envelope.",
                None,
                MetricType::Histogram,
            )?;
            metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn scrape(metrics: &Arc<MeshMetrics>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(MeshCollector(metrics.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn every_family_is_exposed_at_zero() {
        let metrics = Arc::new(MeshMetrics::new());
        metrics.add_peer("tcp://10.0.0.2:7000");
        let text = scrape(&metrics);
        for line in [
            "corecast_mesh_envelopes_total{direction=\"in\"} 0",
            "corecast_mesh_envelopes_total{direction=\"out\"} 0",
            "corecast_mesh_bytes_total{direction=\"in\"} 0",
            "corecast_mesh_bytes_total{direction=\"out\"} 0",
            "corecast_mesh_drops_total{reason=\"outbound_full\"} 0",
            "corecast_mesh_drops_total{reason=\"duplicate\"} 0",
            "corecast_mesh_drops_total{reason=\"own\"} 0",
            "corecast_mesh_drops_total{reason=\"corrupt\"} 0",
            "corecast_mesh_drops_total{reason=\"deliver_full\"} 0",
            "corecast_mesh_drops_total{reason=\"pub_backlog\"} 0",
            "corecast_mesh_drops_total{reason=\"invalid\"} 0",
            "corecast_mesh_drops_total{reason=\"oversize\"} 0",
            "corecast_mesh_peer_down_total{peer=\"tcp://10.0.0.2:7000\"} 0",
            "corecast_mesh_peer_lost_envelopes_total{peer=\"tcp://10.0.0.2:7000\"} 0",
            "corecast_mesh_handshake_failures_total{socket=\"pub\"} 0",
            "corecast_mesh_handshake_failures_total{socket=\"sub\"} 0",
            "corecast_mesh_subscriber_events_total{event=\"connected\"} 0",
            "corecast_mesh_zap_denied_total 0",
            "corecast_mesh_lost_envelopes_total 0",
            "corecast_mesh_peer_up{peer=\"tcp://10.0.0.2:7000\"} 0",
            "corecast_mesh_hop_latency_seconds_sum 0.0",
            "corecast_mesh_hop_latency_seconds_count 0",
            "corecast_mesh_hop_latency_seconds_bucket{le=\"0.00005\"} 0",
            "corecast_mesh_hop_latency_seconds_bucket{le=\"+Inf\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Arc::new(MeshMetrics::new());
        metrics.record_hops([40, 90, 900, 2_000_000, 90_000_000]);
        metrics.count_drop(DropReason::DeliverFull, 1);
        metrics.set_peer_up("p", true);
        let text = scrape(&metrics);
        for line in [
            "corecast_mesh_hop_latency_seconds_count 5",
            "corecast_mesh_hop_latency_seconds_bucket{le=\"0.00005\"} 1",
            "corecast_mesh_hop_latency_seconds_bucket{le=\"0.0001\"} 2",
            "corecast_mesh_hop_latency_seconds_bucket{le=\"0.001\"} 3",
            "corecast_mesh_hop_latency_seconds_bucket{le=\"2.5\"} 4",
            "corecast_mesh_hop_latency_seconds_bucket{le=\"10.0\"} 4",
            "corecast_mesh_hop_latency_seconds_bucket{le=\"+Inf\"} 5",
            "corecast_mesh_drops_total{reason=\"deliver_full\"} 1",
            "corecast_mesh_peer_up{peer=\"p\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
