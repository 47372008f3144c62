//! The node-to-node mesh: every push accepted on this node is published once
//! to every other node; every push accepted elsewhere is handed to this node.
//!
//! Data flow:
//!
//! ```text
//! executors ──publish() (try_send, bounded)──► mesh thread ──batch──► PUB socket (bound on mesh_listen)
//!                                              (tokio current_thread, own OS thread)
//! peers' PUB ──► one SUB socket per peer ──► Inbound (validate, own/duplicate drop,
//!                                             sequence gaps, hop latency) ──deliver()──► node
//! ```
//!
//! - [`envelope`]: the wire format (rkyv batches behind a magic/version
//!   header, checked decoding).
//! - [`inbound`]: the receive logic with no sockets (unit-tested with bytes).
//! - [`bridge`]: the thread, the ZeroMQ sockets, batching and reconnects.
//! - [`validate`]: received envelopes checked like API input.
//! - [`metrics`]: counters, peer states, hop latency, the Prometheus
//!   collector.
//!
//! The mesh never blocks the executors (a full queue is a counted drop) and
//! never grows without bound: queues, batches, the duplicate filter, the
//! origin table and the bytes waiting in the PUB socket are all capped by
//! the constants below.

mod bridge;
pub mod envelope;
pub mod inbound;
pub mod metrics;
#[cfg(test)]
mod tests;
pub mod validate;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use crate::config::ClusterConfig;
use crate::limits::MESH_CHANNEL_CAPACITY;
use crate::push::{ContentKind, Target};

pub use metrics::{DropReason, MeshCollector, MeshMetrics, MeshSnapshot};

/// A fresh metrics set to pass to [`start`] (and to [`collectors`]).
pub fn new_metrics() -> Arc<MeshMetrics> {
    Arc::new(MeshMetrics::new())
}

/// The mesh's Prometheus collectors, for the node's `/metrics`.
pub fn collectors(
    metrics: &Arc<MeshMetrics>,
) -> Vec<Box<dyn prometheus_client::collector::Collector>> {
    vec![Box::new(MeshCollector(metrics.clone()))]
}

/// Largest batch (one ZeroMQ message), in estimated archive bytes; an
/// envelope larger than this travels alone.
pub const MESH_BATCH_BYTES_MAX: usize = 64 * 1024;

/// Envelopes in one batch, at most.
pub const MESH_BATCH_ENVELOPES_MAX: usize = 1024;

/// Message ids remembered by the duplicate filter.
pub const MESH_DEDUP_IDS: usize = 65_536;

/// Origin nodes whose sequence is tracked (a cluster is far smaller).
pub const MESH_ORIGINS_MAX: usize = 1024;

/// Batch bytes handed to the PUB socket and not yet written to every
/// subscriber's TCP socket. The zeromq crate queues up to 100,000 messages
/// per subscriber with no byte limit; past this cap (a stalled subscriber)
/// new batches are dropped (`pub_backlog`) instead of growing memory.
pub const MESH_PUB_BACKLOG_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One SUB connection attempt (TCP connect and ZMTP handshake) gives up
/// after this and is retried with backoff.
pub const MESH_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// Backoff between attempts to reach a peer: from min, doubling, to max.
pub const MESH_RECONNECT_MIN_MS: u64 = 50;
pub const MESH_RECONNECT_MAX_MS: u64 = 1_000;

/// At shutdown, time allowed for queued envelopes to reach the sockets.
pub const MESH_FLUSH_TIMEOUT_MS: u64 = 1_000;

/// Time `start` waits for the mesh thread to bind its PUB socket.
pub const MESH_START_TIMEOUT_MS: u64 = 5_000;

/// Time `shutdown` waits for the mesh thread to end after the flush.
pub const MESH_STOP_TIMEOUT_MS: u64 = MESH_FLUSH_TIMEOUT_MS + 1_000;

const _: () = assert!(MESH_BATCH_ENVELOPES_MAX <= MESH_CHANNEL_CAPACITY);
const _: () = assert!(MESH_BATCH_ENVELOPES_MAX <= MESH_DEDUP_IDS);
const _: () = assert!(MESH_PUB_BACKLOG_BYTES_MAX >= 16 * MESH_BATCH_BYTES_MAX);
const _: () = assert!(MESH_RECONNECT_MIN_MS <= MESH_RECONNECT_MAX_MS);
const _: () = assert!(MESH_FLUSH_TIMEOUT_MS < MESH_STOP_TIMEOUT_MS);

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cluster.node_id is empty: the mesh needs it to recognise its own envelopes")]
    NoNodeId,
    #[error("invalid mesh address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("cannot bind the mesh PUB socket on {address}: {source}")]
    Bind {
        address: String,
        source: zeromq::ZmqError,
    },
    #[error("cannot start the mesh thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(
        "the mesh thread did not report its PUB socket bound within {MESH_START_TIMEOUT_MS} ms"
    )]
    StartTimeout,
}

/// What the mesh hands to the node for every envelope that is valid, not
/// from this node, and not a duplicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub origin: String,
    pub id: String,
    pub target: Target,
    pub kind: ContentKind,
    pub payload: Bytes,
    pub created_at_us: u64,
}

/// One envelope on its way from an executor to the mesh thread.
struct Outbound {
    id: String,
    target: Target,
    kind: ContentKind,
    payload: Bytes,
    created_at_us: u64,
}

struct Shared {
    thread: Mutex<Option<JoinHandle<()>>>,
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    listen_endpoint: String,
}

/// The executors' end of the mesh: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct MeshHandle {
    tx: async_channel::Sender<Outbound>,
    metrics: Arc<MeshMetrics>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MeshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshHandle")
            .field("listen", &self.shared.listen_endpoint)
            .field("queued", &self.tx.len())
            .finish()
    }
}

impl MeshHandle {
    /// Non-blocking; called from glommio executors. Publishes one envelope
    /// for a push (or a membership change: `Target::RoomJoin`/`RoomLeave`
    /// with an empty payload) accepted on this node. Returns false (and
    /// counts a drop with reason "outbound_full") when the bounded queue is
    /// full or the mesh is stopping.
    pub fn publish(
        &self,
        id: &str,
        target: &Target,
        kind: ContentKind,
        payload: &Bytes,
        created_at_us: u64,
    ) -> bool {
        if self.tx.is_full() || self.tx.is_closed() {
            // Checked first so a full queue costs no clone of the target.
            self.metrics.count_drop(DropReason::OutboundFull, 1);
            return false;
        }
        let envelope = Outbound {
            id: id.to_owned(),
            target: target.clone(),
            kind,
            payload: payload.clone(),
            created_at_us,
        };
        match self.tx.try_send(envelope) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.count_drop(DropReason::OutboundFull, 1);
                false
            }
        }
    }

    /// The address the PUB socket is bound to (the port resolved when the
    /// configuration asked for port 0).
    pub fn listen_endpoint(&self) -> &str {
        &self.shared.listen_endpoint
    }

    /// Envelopes waiting for the mesh thread.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Flushes what is queued (bounded wait: [`MESH_FLUSH_TIMEOUT_MS`]) and
    /// stops the thread. Called once at shutdown; other clones of the handle
    /// stop publishing (their `publish` returns false).
    pub fn shutdown(self) {
        self.tx.close();
        let stopped = self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(stopped) = stopped else { return };
        if stopped
            .recv_timeout(Duration::from_millis(MESH_STOP_TIMEOUT_MS))
            .is_ok()
        {
            let thread = self
                .shared
                .thread
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        }
        // Otherwise the thread is left to finish on its own: shutdown stays
        // bounded whatever a peer or the runtime does.
    }
}

/// A mesh address, normalized for comparison: `tcp://host:port`, lower
/// case, no surrounding space or trailing slash.
pub fn normalize_address(address: &str) -> Result<String, MeshError> {
    let bad = |reason: &str| MeshError::Address {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let lower = address.trim().trim_end_matches('/').to_ascii_lowercase();
    let rest = lower
        .strip_prefix("tcp://")
        .ok_or_else(|| bad("expected tcp://host:port"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("expected tcp://host:port"))?;
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("port is not a number from 0 to 65535"))?;
    Ok(format!("tcp://{host}:{port}"))
}

/// The peers to connect to: every configured peer except this node's own
/// address and exact repeats (after normalization), in configured order.
/// Returned as written in the configuration (trimmed): that is the metric
/// label.
pub fn peers_to_connect(cluster: &ClusterConfig) -> Result<Vec<String>, MeshError> {
    let own = if cluster.mesh_listen.trim().is_empty() {
        None
    } else {
        Some(normalize_address(&cluster.mesh_listen)?)
    };
    let mut seen = std::collections::HashSet::new();
    let mut peers = Vec::new();
    for peer in &cluster.mesh_peers {
        if peer.trim().is_empty() {
            continue;
        }
        let normalized = normalize_address(peer)?;
        if Some(&normalized) == own.as_ref() || !seen.insert(normalized) {
            continue;
        }
        peers.push(peer.trim().to_owned());
    }
    Ok(peers)
}

/// Starts the mesh thread: binds the PUB socket on `cluster.mesh_listen`
/// (before returning: a bind error is returned here) and connects to every
/// peer in the background. `deliver` runs on the mesh thread and must not
/// block. Returns `Ok(None)` and starts nothing when this node has no
/// `mesh_listen` or no peer other than itself.
pub fn start(
    node_id: &str,
    cluster: &ClusterConfig,
    pin_cpu: Option<usize>,
    deliver: Box<dyn Fn(Received) + Send>,
    metrics: Arc<MeshMetrics>,
) -> Result<Option<MeshHandle>, MeshError> {
    if cluster.mesh_listen.trim().is_empty() {
        return Ok(None);
    }
    let peers = peers_to_connect(cluster)?;
    if peers.is_empty() {
        return Ok(None);
    }
    if node_id.is_empty() {
        return Err(MeshError::NoNodeId);
    }
    let listen = cluster.mesh_listen.trim().to_owned();
    bridge::spawn(node_id, listen, peers, pin_cpu, deliver, metrics).map(Some)
}
