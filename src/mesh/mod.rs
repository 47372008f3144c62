//! The node-to-node mesh: every push accepted on this node is published once
//! to every other node; every push accepted elsewhere is handed to this node.
//!
//! Data flow:
//!
//! ```text
//! executors ──publish() (try_send, bounded in entries and bytes; eventfd wake)──►
//!     mesh thread (blocking, own OS thread, libzmq) ──batch──► PUB socket (bound on mesh_listen)
//! peers' PUB ──► one SUB socket per peer ──► Inbound (validate, own/duplicate drop,
//!                                             sequence gaps, hop latency) ──deliver()──► node
//! ```
//!
//! The mesh is a trust boundary (DESIGN section 2): with `cluster.mesh_key`
//! every connection is CURVE-encrypted and authenticated ([`curve`]); without
//! one it may only use loopback addresses. libzmq refuses any message larger
//! than [`MESH_MESSAGE_BYTES_MAX`] from its frame header, before allocating
//! (`ZMQ_MAXMSGSIZE`), for authenticated and unauthenticated peers alike.
//!
//! - [`envelope`]: the wire format (rkyv batches behind a magic/version
//!   header, checked decoding).
//! - [`inbound`]: the receive logic with no sockets (unit-tested with bytes).
//! - [`bridge`]: the thread, the ZeroMQ sockets, batching, socket monitors.
//! - [`curve`]: the key pair derived from the mesh key, the ZAP handler.
//! - [`validate`]: received envelopes checked like API input.
//! - [`metrics`]: counters, peer states, hop latency, the Prometheus
//!   collector.
//!
//! The mesh never blocks the executors (a full queue is a counted drop) and
//! never grows without bound: the outbound queue (entries and bytes),
//! batches, the duplicate filter, the origin table and every libzmq pipe
//! (per peer, in messages of at most [`MESH_MESSAGE_BYTES_MAX`]) are capped
//! by the constants below. A subscriber that stops reading fills only its
//! own pipe: libzmq's PUB drops for that subscriber alone, and it counts the
//! hole as lost for that peer when it reads again.

mod bridge;
pub mod curve;
pub mod envelope;
pub mod inbound;
pub mod metrics;
#[cfg(test)]
mod tests;
pub mod validate;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use crate::config::ClusterConfig;
use crate::limits::MESH_CHANNEL_CAPACITY;
use crate::push::{ContentKind, Target};

pub use curve::{ClusterKeys, MESH_KEY_BYTES_MIN};
pub use envelope::{KeyRef, Stamp};
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

/// Largest envelope, beyond its payload: fixed fields, the id, and the
/// largest target (a batch of [`crate::limits::BATCH_USERS_MAX`] names),
/// with slack for archive padding.
pub const MESH_ENVELOPE_OVERHEAD_BYTES_MAX: usize = 256
    + validate::MESH_ID_BYTES_MAX
    + crate::limits::BATCH_USERS_MAX * (crate::limits::NAME_BYTES_MAX + 16);

/// Largest batch's framing: header, origin, incarnation, the envelope list.
pub const MESH_BATCH_OVERHEAD_BYTES_MAX: usize =
    envelope::HEADER_BYTES + validate::MESH_ORIGIN_BYTES_MAX + 256;

/// Largest ZeroMQ message a mesh socket accepts (`ZMQ_MAXMSGSIZE` on every
/// socket): one envelope with the largest payload, or a full batch. libzmq
/// refuses a longer frame from its header, before allocating, and drops the
/// connection.
pub const MESH_MESSAGE_BYTES_MAX: usize = MESH_BATCH_OVERHEAD_BYTES_MAX
    + max_usize(
        MESH_BATCH_BYTES_MAX,
        validate::MESH_PAYLOAD_BYTES_MAX + MESH_ENVELOPE_OVERHEAD_BYTES_MAX,
    );

const fn max_usize(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Estimated bytes (payloads, names) waiting in the executor -> mesh queue,
/// at most; past it `publish` refuses (`outbound_full`) as when the queue is
/// full in entries ([`MESH_CHANNEL_CAPACITY`]).
pub const MESH_OUTBOUND_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Messages (batches) queued for one subscriber in the PUB socket
/// (`ZMQ_SNDHWM`, per pipe): past it libzmq drops for that subscriber only.
pub const MESH_PEER_SNDHWM_MESSAGES: i32 = 4_096;

/// Messages read ahead from one peer's PUB (`ZMQ_RCVHWM` of its SUB).
pub const MESH_PEER_RCVHWM_MESSAGES: i32 = 4_096;

/// Time a new connection has for the ZMTP greeting and the CURVE handshake
/// (`ZMQ_HANDSHAKE_IVL`); a peer that stalls in it is dropped.
pub const MESH_HANDSHAKE_TIMEOUT_MS: i32 = 2_000;

/// ZMTP PING every this often on every mesh connection
/// (`ZMQ_HEARTBEAT_IVL`).
pub const MESH_HEARTBEAT_IVL_MS: i32 = 500;

/// A connection with no traffic for this long after a PING is closed
/// (`ZMQ_HEARTBEAT_TIMEOUT`; also told to the peer as `ZMQ_HEARTBEAT_TTL`):
/// a stopped or silently dead peer is detected within this plus one
/// heartbeat interval.
pub const MESH_HEARTBEAT_TIMEOUT_MS: i32 = 2_000;

/// TCP keepalive on every mesh socket (`ZMQ_TCP_KEEPALIVE_*`): probes after
/// this many idle seconds, every interval, closed after the count.
pub const MESH_TCP_KEEPALIVE_IDLE_S: i32 = 5;
pub const MESH_TCP_KEEPALIVE_INTVL_S: i32 = 1;
pub const MESH_TCP_KEEPALIVE_CNT: i32 = 3;

/// One SUB connection attempt (TCP connect and ZMTP handshake) gives up
/// after this and is retried with backoff.
pub const MESH_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// Backoff between attempts to reach a peer: from min, doubling, to max.
pub const MESH_RECONNECT_MIN_MS: u64 = 50;
pub const MESH_RECONNECT_MAX_MS: u64 = 1_000;

/// At shutdown, time allowed for queued envelopes to reach the sockets
/// (`ZMQ_LINGER` of the PUB socket).
pub const MESH_FLUSH_TIMEOUT_MS: u64 = 1_000;

/// Time `shutdown` waits for the mesh thread to end after the flush.
pub const MESH_STOP_TIMEOUT_MS: u64 = MESH_FLUSH_TIMEOUT_MS + 1_000;

const _: () = assert!(MESH_BATCH_ENVELOPES_MAX <= MESH_CHANNEL_CAPACITY);
const _: () = assert!(MESH_BATCH_ENVELOPES_MAX <= MESH_DEDUP_IDS);
const _: () = assert!(MESH_OUTBOUND_BYTES_MAX >= 2 * MESH_MESSAGE_BYTES_MAX);
const _: () = assert!(MESH_HEARTBEAT_IVL_MS < MESH_HEARTBEAT_TIMEOUT_MS);
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
    Bind { address: String, source: zmq::Error },
    #[error(
        "the mesh address {address} is not a loopback address and cluster.mesh_key \
         (CORECAST_MESH_KEY) is not set: set a shared key of at least {MESH_KEY_BYTES_MIN} bytes \
         on every node, or use loopback addresses only"
    )]
    KeyRequired { address: String },
    #[error("mesh key: {0}")]
    Key(#[from] curve::CurveError),
    #[error("cannot set up the mesh sockets ({what}): {source}")]
    Socket {
        what: &'static str,
        source: zmq::Error,
    },
    #[error("cannot start the mesh thread: {0}")]
    Thread(#[source] std::io::Error),
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
    pub stamp: Option<Stamp>,
    pub idempotency: Option<KeyRef>,
}

/// What a push's envelope carries besides the push: its place in its
/// origin core's stream and its idempotency key.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    pub stamp: Option<Stamp>,
    pub idempotency: Option<KeyRef>,
}

/// One envelope on its way from an executor to the mesh thread.
struct Outbound {
    /// Estimated archive bytes, counted against [`MESH_OUTBOUND_BYTES_MAX`].
    bytes: usize,
    id: String,
    target: Target,
    kind: ContentKind,
    payload: Bytes,
    created_at_us: u64,
    extras: Extras,
}

/// Wakes the blocking mesh thread when an executor queues an envelope: one
/// eventfd write per sleep of the thread, not per envelope.
struct Waker {
    fd: nix::sys::eventfd::EventFd,
    /// Set by the mesh thread before it sleeps in `poll`.
    parked: AtomicBool,
}

impl Waker {
    fn new() -> Result<Self, MeshError> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| MeshError::Thread(e.into()))?;
        Ok(Self {
            fd,
            parked: AtomicBool::new(false),
        })
    }

    /// After a send on the queue: wakes the thread if it sleeps.
    fn wake_if_parked(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        // A plain load first: executors publishing while the thread is busy
        // only read the flag's cache line.
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            let _ = self.fd.write(1);
        }
    }

    fn wake(&self) {
        let _ = self.fd.write(1);
    }

    fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

struct Shared {
    waker: Waker,
    /// Estimated bytes in the outbound queue.
    queued_bytes: AtomicUsize,
    thread: Mutex<Option<JoinHandle<()>>>,
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    listen_endpoint: String,
    /// Peers expected to subscribe to this node's PUB, and when the mesh
    /// started: see [`MeshHandle::subscribed`].
    expected_subscribers: u64,
    started: std::time::Instant,
    /// Set once `subscribed` was true: a peer lost later is the usual case
    /// of a peer down, not a start.
    subscribed_once: AtomicBool,
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

/// How long a starting node waits for its peers to subscribe before it
/// takes pushes anyway (a peer that is down then meets its pushes late and
/// says so: `recovered:false` for resumes from before).
pub const MESH_SUBSCRIBE_GRACE_MS: u64 = 5_000;

impl MeshHandle {
    /// Whether as many subscribers as there are peers have completed their
    /// handshake with this node's PUB since it started (or the start-up
    /// grace is over). Until then a push this node accepts would be dropped
    /// by its PUB for the peers not yet there, which could never replay it:
    /// the API answers 503 and `/readyz` says starting.
    pub fn subscribed(&self) -> bool {
        if self.shared.subscribed_once.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.metrics.subscribers_ever() >= self.shared.expected_subscribers
            || self.shared.started.elapsed()
                >= std::time::Duration::from_millis(MESH_SUBSCRIBE_GRACE_MS);
        if now {
            self.shared.subscribed_once.store(true, Ordering::Relaxed);
        }
        now
    }

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
        self.publish_with(id, target, kind, payload, created_at_us, Extras::default())
    }

    /// [`Self::publish`] with the push's stamp and idempotency key.
    pub fn publish_with(
        &self,
        id: &str,
        target: &Target,
        kind: ContentKind,
        payload: &Bytes,
        created_at_us: u64,
        extras: Extras,
    ) -> bool {
        if self.tx.is_full() || self.tx.is_closed() {
            // Checked first so a full queue costs no clone of the target.
            self.metrics.count_drop(DropReason::OutboundFull, 1);
            return false;
        }
        let bytes = envelope::estimated_bytes(id, target, payload.len());
        let queued = &self.shared.queued_bytes;
        if queued.fetch_add(bytes, Ordering::AcqRel) + bytes > MESH_OUTBOUND_BYTES_MAX {
            queued.fetch_sub(bytes, Ordering::AcqRel);
            self.metrics.count_drop(DropReason::OutboundFull, 1);
            return false;
        }
        let envelope = Outbound {
            bytes,
            id: id.to_owned(),
            target: target.clone(),
            kind,
            payload: payload.clone(),
            created_at_us,
            extras,
        };
        match self.tx.try_send(envelope) {
            Ok(()) => {
                self.shared.waker.wake_if_parked();
                true
            }
            Err(_) => {
                queued.fetch_sub(bytes, Ordering::AcqRel);
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

    /// Estimated bytes waiting for the mesh thread.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// Flushes what is queued (bounded wait: [`MESH_FLUSH_TIMEOUT_MS`]) and
    /// stops the thread. Called once at shutdown; other clones of the handle
    /// stop publishing (their `publish` returns false).
    pub fn shutdown(self) {
        self.tx.close();
        self.shared.waker.wake();
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

/// Whether a mesh address names a loopback host (`localhost`, 127.0.0.0/8,
/// `::1`); `*`, wildcards and every other host are not.
pub fn is_loopback_address(address: &str) -> bool {
    let Ok(normalized) = normalize_address(address) else {
        return false;
    };
    let rest = &normalized["tcp://".len()..];
    let Some((host, _)) = rest.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What the mesh runs with: the cluster key pair, or (loopback only) none.
/// An unset key with any non-loopback address is
/// [`MeshError::KeyRequired`]; an unset key on loopback prints a warning.
pub fn security(
    cluster: &ClusterConfig,
    peers: &[String],
) -> Result<Option<ClusterKeys>, MeshError> {
    if !cluster.mesh_key.is_empty() {
        return Ok(Some(ClusterKeys::derive(&cluster.mesh_key)?));
    }
    let listen = cluster.mesh_listen.trim();
    if let Some(address) = std::iter::once(listen)
        .chain(peers.iter().map(String::as_str))
        .find(|a| !is_loopback_address(a))
    {
        return Err(MeshError::KeyRequired {
            address: address.to_owned(),
        });
    }
    tracing::warn!(
        "cluster.mesh_key (CORECAST_MESH_KEY) is not set: the mesh runs \
         unauthenticated and unencrypted, which is allowed on loopback addresses only"
    );
    Ok(None)
}

/// Starts the mesh thread: binds the PUB socket on `cluster.mesh_listen`
/// (before returning: a bind error is returned here) and connects to every
/// peer in the background. `deliver` runs on the mesh thread and must not
/// block. Returns `Ok(None)` and starts nothing when this node has no
/// `mesh_listen` or no peer other than itself. With `cluster.mesh_key` every
/// mesh connection is CURVE; without it, only loopback addresses are
/// accepted ([`security`]).
pub fn start(
    cluster: &ClusterConfig,
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
    if cluster.node_id.is_empty() {
        return Err(MeshError::NoNodeId);
    }
    let keys = security(cluster, &peers)?;
    let listen = cluster.mesh_listen.trim().to_owned();
    bridge::spawn(&cluster.node_id, listen, peers, keys, deliver, metrics).map(Some)
}
