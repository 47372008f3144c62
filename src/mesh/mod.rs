//! The cluster mesh: one ZeroMQ PUB socket per node and one SUB socket per
//! peer, on a thread of its own (the `zeromq` crate runs on tokio), bridged
//! to the executors by bounded channels that executors never block on.
//!
//! A push accepted by a node is published once; every other node delivers
//! it to its own connections. Envelopes waiting at a flush are batched into
//! one ZeroMQ message (a PUB socket drops whole messages for a subscriber
//! that falls behind, so few large messages lose far less than many small
//! ones), and each carries a per-origin sequence number so receivers count
//! gaps. A receiver drops its own envelopes and duplicates by message id.

pub mod envelope;
pub mod metrics;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use zeromq::{Socket, SocketRecv, SocketSend};

use self::envelope::Envelope;
pub use self::metrics::{MeshCollector, MeshDrop, MeshMetrics};
use crate::config::ClusterConfig;
use crate::limits::MESH_CHANNEL_CAPACITY;
use crate::push::{ContentKind, Target, unix_micros};

/// Envelopes in one ZeroMQ message, at most.
pub const BATCH_ENVELOPES_MAX: usize = 1024;
/// Recent message ids remembered for duplicate detection.
pub const DEDUP_WINDOW: usize = 65_536;
/// Pause before a lost peer subscription is set up again.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(200);
/// Time `shutdown` gives the thread to publish what is queued.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot start the mesh runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot bind the PUB socket on {address}: {message}")]
    Bind { address: String, message: String },
}

/// What the mesh hands to the node for every valid envelope that is not
/// from this node and not a duplicate.
#[derive(Debug)]
pub struct Received {
    pub origin: String,
    pub id: String,
    pub target: Target,
    pub kind: ContentKind,
    pub payload: Bytes,
    pub created_at_us: u64,
}

/// The executors' end of the mesh.
#[derive(Debug)]
pub struct MeshHandle {
    outbound: async_channel::Sender<Envelope>,
    origin: String,
    incarnation: u64,
    metrics: Arc<MeshMetrics>,
    thread: Option<JoinHandle<()>>,
}

impl MeshHandle {
    /// Queues one envelope for publication without blocking; `false` (and
    /// a counted drop) when the queue is full.
    pub fn publish(
        &self,
        id: &str,
        target: &Target,
        kind: ContentKind,
        payload: &Bytes,
        created_at_us: u64,
    ) -> bool {
        let envelope = Envelope {
            origin: self.origin.clone(),
            incarnation: self.incarnation,
            seq: 0, // numbered by the mesh thread, in publication order
            id: id.to_string(),
            target: target.clone(),
            kind,
            payload: payload.to_vec(),
            created_at_us,
        };
        if self.outbound.try_send(envelope).is_err() {
            self.metrics.dropped(MeshDrop::OutboundFull, 1);
            return false;
        }
        true
    }

    /// Publishes what is queued (bounded wait) and stops the thread.
    pub fn shutdown(mut self) {
        self.outbound.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn normalize(address: &str) -> String {
    address
        .trim()
        .trim_end_matches('/')
        .replace("localhost", "127.0.0.1")
}

/// Starts the mesh thread, or returns `None` for a node with no mesh.
pub fn start(
    node_id: &str,
    cluster: &ClusterConfig,
    pin_cpu: Option<usize>,
    deliver: Box<dyn Fn(Received) + Send>,
    metrics: Arc<MeshMetrics>,
) -> Result<Option<MeshHandle>, MeshError> {
    if cluster.mesh_listen.is_empty() {
        return Ok(None);
    }
    let own = normalize(&cluster.mesh_listen);
    let mut peers: Vec<String> = cluster
        .mesh_peers
        .iter()
        .map(|p| normalize(p))
        .filter(|p| *p != own)
        .collect();
    peers.sort();
    peers.dedup();
    let (tx, rx) = async_channel::bounded(MESH_CHANNEL_CAPACITY);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let listen = cluster.mesh_listen.clone();
    let origin = node_id.to_string();
    let thread_metrics = metrics.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MeshError::Runtime)?;
    let thread = std::thread::Builder::new()
        .name("corecast-mesh".into())
        .spawn(move || {
            if let Some(cpu) = pin_cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            }
            runtime.block_on(run(
                listen,
                origin,
                peers,
                rx,
                deliver,
                thread_metrics,
                bound_tx,
            ));
        })
        .map_err(MeshError::Runtime)?;
    match bound_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(message)) => {
            let _ = thread.join();
            return Err(MeshError::Bind {
                address: cluster.mesh_listen.clone(),
                message,
            });
        }
        Err(_) => {
            return Err(MeshError::Bind {
                address: cluster.mesh_listen.clone(),
                message: "mesh thread ended".into(),
            });
        }
    }
    Ok(Some(MeshHandle {
        outbound: tx,
        origin: node_id.to_string(),
        incarnation: rand::random(),
        metrics,
        thread: Some(thread),
    }))
}

async fn run(
    listen: String,
    origin: String,
    peers: Vec<String>,
    outbound: async_channel::Receiver<Envelope>,
    deliver: Box<dyn Fn(Received) + Send>,
    metrics: Arc<MeshMetrics>,
    bound: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut publisher = zeromq::PubSocket::new();
    if let Err(e) = publisher.bind(&listen).await {
        let _ = bound.send(Err(e.to_string()));
        return;
    }
    let _ = bound.send(Ok(()));
    let (inbound_tx, inbound_rx) = tokio::sync::mpsc::channel::<(String, Bytes)>(1024);
    for peer in peers {
        metrics.peer(&peer, false);
        tokio::spawn(subscribe(peer, inbound_tx.clone(), metrics.clone()));
    }
    drop(inbound_tx);
    let receiver = tokio::spawn(receive(origin, inbound_rx, deliver, metrics.clone()));
    publish(&mut publisher, outbound, &metrics).await;
    receiver.abort();
}

/// Publishes queued envelopes in batches until the queue is closed, then
/// flushes what is left (bounded).
async fn publish(
    publisher: &mut zeromq::PubSocket,
    outbound: async_channel::Receiver<Envelope>,
    metrics: &MeshMetrics,
) {
    let mut seq = 0u64;
    let mut batch = Vec::with_capacity(BATCH_ENVELOPES_MAX);
    while let Ok(first) = outbound.recv().await {
        batch.push(first);
        while batch.len() < BATCH_ENVELOPES_MAX {
            match outbound.try_recv() {
                Ok(envelope) => batch.push(envelope),
                Err(_) => break,
            }
        }
        for envelope in &mut batch {
            seq += 1;
            envelope.seq = seq;
        }
        let count = batch.len() as u64;
        let bytes = envelope::encode(std::mem::take(&mut batch));
        metrics
            .bytes_out
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let sent = tokio::time::timeout(
            SHUTDOWN_FLUSH,
            publisher.send(zeromq::ZmqMessage::from(bytes)),
        )
        .await;
        if matches!(sent, Ok(Ok(()))) {
            metrics
                .envelopes_out
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Keeps one SUB socket connected to `peer`, forwarding every message.
async fn subscribe(
    peer: String,
    inbound: tokio::sync::mpsc::Sender<(String, Bytes)>,
    metrics: Arc<MeshMetrics>,
) {
    loop {
        let mut socket = zeromq::SubSocket::new();
        if socket.subscribe("").await.is_ok() && socket.connect(&peer).await.is_ok() {
            metrics.peer(&peer, true);
            let mut events = socket.monitor();
            loop {
                tokio::select! {
                    message = socket.recv() => match message {
                        Ok(message) => {
                            for frame in message.into_vec() {
                                if inbound.send((peer.clone(), frame)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(_) => break,
                    },
                    event = futures_lite::StreamExt::next(&mut events) => match event {
                        Some(zeromq::SocketEvent::Disconnected(_)) | None => break,
                        Some(_) => {}
                    },
                }
            }
            metrics.peer(&peer, false);
        }
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

/// Decodes, filters and hands over what the subscriptions receive.
async fn receive(
    origin: String,
    mut inbound: tokio::sync::mpsc::Receiver<(String, Bytes)>,
    deliver: Box<dyn Fn(Received) + Send>,
    metrics: Arc<MeshMetrics>,
) {
    let mut seen: HashSet<String> = HashSet::with_capacity(DEDUP_WINDOW);
    let mut order: VecDeque<String> = VecDeque::with_capacity(DEDUP_WINDOW);
    // (origin, incarnation) -> last sequence number
    let mut last_seq: HashMap<(String, u64), u64> = HashMap::new();
    while let Some((_peer, bytes)) = inbound.recv().await {
        metrics
            .bytes_in
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let batch = match envelope::decode(&bytes) {
            Ok(batch) => batch,
            Err(_) => {
                metrics.dropped(MeshDrop::Corrupt, 1);
                continue;
            }
        };
        let now = unix_micros();
        for envelope in batch.envelopes {
            if envelope.origin == origin {
                metrics.dropped(MeshDrop::Own, 1);
                continue;
            }
            if seen.contains(&envelope.id) {
                metrics.dropped(MeshDrop::Duplicate, 1);
                continue;
            }
            if order.len() == DEDUP_WINDOW
                && let Some(old) = order.pop_front()
            {
                seen.remove(&old);
            }
            seen.insert(envelope.id.clone());
            order.push_back(envelope.id.clone());
            let key = (envelope.origin.clone(), envelope.incarnation);
            let last = last_seq.entry(key).or_insert(0);
            if envelope.seq > *last + 1 {
                metrics.lost.fetch_add(
                    envelope.seq - *last - 1,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            *last = (*last).max(envelope.seq);
            metrics
                .envelopes_in
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics.hop(now.saturating_sub(envelope.created_at_us));
            deliver(Received {
                origin: envelope.origin,
                id: envelope.id,
                target: envelope.target,
                kind: envelope.kind,
                payload: Bytes::from(envelope.payload),
                created_at_us: envelope.created_at_us,
            });
        }
    }
}

/// A fresh metrics set for a node.
pub fn new_metrics() -> Arc<MeshMetrics> {
    Arc::new(MeshMetrics::default())
}

/// The mesh's Prometheus collectors.
pub fn collectors(
    metrics: &Arc<MeshMetrics>,
) -> Vec<Box<dyn prometheus_client::collector::Collector>> {
    vec![Box::new(MeshCollector(metrics.clone()))]
}
