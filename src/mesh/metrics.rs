//! The mesh's counters: written by the mesh thread (and, for deliveries the
//! cores could not take, by the node's bridge), read at scrape.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::metrics::{encode_latency_histogram, latency_histogram};

/// Why an envelope was dropped (`corecast_mesh_drops_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshDrop {
    /// The executor-to-mesh queue was full.
    OutboundFull,
    /// Seen before (a peer listed twice, a replay).
    Duplicate,
    /// Published by this node.
    Own,
    /// Not a valid batch of ours.
    Corrupt,
    /// A core's inbox from the mesh was full.
    DeliverFull,
}

impl MeshDrop {
    pub const ALL: [MeshDrop; 5] = [
        MeshDrop::OutboundFull,
        MeshDrop::Duplicate,
        MeshDrop::Own,
        MeshDrop::Corrupt,
        MeshDrop::DeliverFull,
    ];
    pub fn label(self) -> &'static str {
        match self {
            MeshDrop::OutboundFull => "outbound_full",
            MeshDrop::Duplicate => "duplicate",
            MeshDrop::Own => "own",
            MeshDrop::Corrupt => "corrupt",
            MeshDrop::DeliverFull => "deliver_full",
        }
    }
}

#[derive(Debug)]
pub struct MeshMetrics {
    pub envelopes_in: AtomicU64,
    pub envelopes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub lost: AtomicU64,
    drops: [AtomicU64; 5],
    peers: Mutex<BTreeMap<String, bool>>,
    hop_latency_us: Mutex<Histogram<u64>>,
}

impl Default for MeshMetrics {
    fn default() -> Self {
        Self {
            envelopes_in: AtomicU64::new(0),
            envelopes_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            peers: Mutex::new(BTreeMap::new()),
            hop_latency_us: Mutex::new(latency_histogram()),
        }
    }
}

impl MeshMetrics {
    pub fn dropped(&self, reason: MeshDrop, n: u64) {
        self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
    }
    pub fn drops_of(&self, reason: MeshDrop) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }
    pub fn peer(&self, address: &str, up: bool) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.insert(address.to_string(), up);
        }
    }
    pub fn hop(&self, micros: u64) {
        if let Ok(mut h) = self.hop_latency_us.lock() {
            let _ = h.record(micros.max(1));
        }
    }
    pub fn hop_histogram(&self) -> Histogram<u64> {
        self.hop_latency_us
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| latency_histogram())
    }
}

/// The Prometheus view of [`MeshMetrics`].
#[derive(Debug)]
pub struct MeshCollector(pub std::sync::Arc<MeshMetrics>);

fn load(v: &AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

impl Collector for MeshCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.0;
        for (name, help, values) in [
            (
                "corecast_mesh_envelopes",
                "Envelopes published (out) and accepted from peers (in)",
                [load(&m.envelopes_in), load(&m.envelopes_out)],
            ),
            (
                "corecast_mesh_bytes",
                "Mesh message bytes received (in) and sent (out)",
                [load(&m.bytes_in), load(&m.bytes_out)],
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (direction, value) in ["in", "out"].into_iter().zip(values) {
                let labels = [("direction", direction)];
                ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "corecast_mesh_drops",
                "Envelopes dropped, by reason",
                None,
                MetricType::Counter,
            )?;
            for reason in MeshDrop::ALL {
                let labels = [("reason", reason.label())];
                ConstCounter::new(m.drops_of(reason)).encode(metric.encode_family(&labels)?)?;
            }
        }
        ConstCounter::new(load(&m.lost)).encode(encoder.encode_descriptor(
            "corecast_mesh_lost_envelopes",
            "Envelopes missing from a peer's sequence (lost on the way)",
            None,
            MetricType::Counter,
        )?)?;
        {
            let mut metric = encoder.encode_descriptor(
                "corecast_mesh_peer_up",
                "1 while the subscription to a peer is connected",
                None,
                MetricType::Gauge,
            )?;
            let peers = m.peers.lock().map(|p| p.clone()).unwrap_or_default();
            for (peer, up) in peers {
                let labels = [("peer", peer.as_str())];
                ConstGauge::new(i64::from(up)).encode(metric.encode_family(&labels)?)?;
            }
        }
        encode_latency_histogram(
            &mut encoder,
            "corecast_mesh_hop_latency_seconds",
            "Origin node accepted a push to this node received it",
            &m.hop_histogram(),
        )
    }
}
