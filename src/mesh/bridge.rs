//! The mesh thread: a tokio current_thread runtime on its own OS thread
//! (the zeromq crate needs tokio; the executors run glommio), optionally
//! pinned to a CPU.
//!
//! Outbound: envelopes from the executors arrive on a bounded
//! `async-channel`; at each wake-up the thread drains everything waiting (up
//! to one batch) into one ZeroMQ message, numbers the envelopes with this
//! node's sequence and sends the batch on the PUB socket. A PUB socket drops
//! silently for a subscriber that falls behind, and does so far more often
//! with many small messages than with a few large ones (DESIGN section 2),
//! hence the batches.
//!
//! Inbound: one SUB socket per peer, each in its own task. zeromq 0.7's
//! `connect` waits for the peer (it takes the socket mutably, so one socket
//! shared by all peers could not receive from the peers that are up while
//! it waits for one that is down). Each task connects with a short timeout,
//! retries with backoff, and on a disconnect drops the socket and starts
//! over, so a peer that starts late or restarts is reached within
//! [`MESH_RECONNECT_MAX_MS`] of coming up, and its state shows in
//! `corecast_mesh_peer_up`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::StreamExt;
use rkyv::util::AlignedVec;
use tokio::task::JoinSet;
use zeromq::{PubSocket, Socket, SocketEvent, SocketOptions, SocketRecv, SocketSend, SubSocket};

use super::envelope::{self, Batch, Envelope};
use super::inbound::Inbound;
use super::metrics::{DropReason, MeshMetrics};
use super::{
    MESH_BATCH_BYTES_MAX, MESH_BATCH_ENVELOPES_MAX, MESH_CONNECT_TIMEOUT_MS, MESH_FLUSH_TIMEOUT_MS,
    MESH_PUB_BACKLOG_BYTES_MAX, MESH_RECONNECT_MAX_MS, MESH_RECONNECT_MIN_MS,
    MESH_START_TIMEOUT_MS, MeshError, MeshHandle, Outbound, Received, Shared,
};
use crate::limits::MESH_CHANNEL_CAPACITY;
use crate::push::unix_micros;

/// How often the shutdown flush checks whether the PUB backlog is written.
const FLUSH_POLL_MS: u64 = 5;

/// Encoded batch bytes that count against the PUB backlog until the zeromq
/// crate has written them to every subscriber and dropped its last
/// reference.
struct Tracked {
    bytes: AlignedVec<16>,
    backlog: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.backlog.fetch_sub(self.bytes.len(), Ordering::AcqRel);
    }
}

pub(super) fn spawn(
    node_id: &str,
    listen: String,
    peers: Vec<String>,
    pin_cpu: Option<usize>,
    deliver: Box<dyn Fn(Received) + Send>,
    metrics: Arc<MeshMetrics>,
) -> Result<MeshHandle, MeshError> {
    for peer in &peers {
        metrics.add_peer(peer);
    }
    let (tx, rx) = async_channel::bounded(MESH_CHANNEL_CAPACITY);
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (stopped_tx, stopped_rx) = std::sync::mpsc::sync_channel(1);
    let thread_metrics = metrics.clone();
    let node_id = node_id.to_owned();
    let thread = std::thread::Builder::new()
        .name("corecast-mesh".into())
        .spawn(move || {
            if let Some(cpu) = pin_cpu {
                // Best effort: an unpinned mesh still works.
                let _ = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("corecast-mesh")
                .build();
            match runtime {
                Ok(runtime) => {
                    let mesh = Mesh {
                        node_id,
                        incarnation: rand::random(),
                        listen,
                        peers,
                        metrics: thread_metrics,
                    };
                    runtime.block_on(mesh.run(rx, deliver, ready_tx));
                    drop(runtime);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(MeshError::Thread(e)));
                }
            }
            let _ = stopped_tx.send(());
        })
        .map_err(MeshError::Thread)?;

    let listen_endpoint = match ready_rx.recv_timeout(Duration::from_millis(MESH_START_TIMEOUT_MS))
    {
        Ok(Ok(endpoint)) => endpoint,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            // Closing the queue makes the thread exit once it gets going.
            tx.close();
            return Err(MeshError::StartTimeout);
        }
    };
    Ok(MeshHandle {
        tx,
        metrics,
        shared: Arc::new(Shared {
            thread: Mutex::new(Some(thread)),
            stopped: Mutex::new(Some(stopped_rx)),
            listen_endpoint,
        }),
    })
}

struct Mesh {
    node_id: String,
    incarnation: u64,
    listen: String,
    peers: Vec<String>,
    metrics: Arc<MeshMetrics>,
}

impl Mesh {
    async fn run(
        self,
        rx: async_channel::Receiver<Outbound>,
        deliver: Box<dyn Fn(Received) + Send>,
        ready: std::sync::mpsc::SyncSender<Result<String, MeshError>>,
    ) {
        let mut socket = PubSocket::new();
        match socket.bind(&self.listen).await {
            Ok(endpoint) => {
                let _ = ready.send(Ok(endpoint.to_string()));
            }
            Err(source) => {
                let _ = ready.send(Err(MeshError::Bind {
                    address: self.listen.clone(),
                    source,
                }));
                return;
            }
        }

        let inbound = Arc::new(Mutex::new(Inbound::new(
            &self.node_id,
            deliver,
            self.metrics.clone(),
        )));
        let mut peers = JoinSet::new();
        for peer in &self.peers {
            peers.spawn(peer_task(
                peer.clone(),
                inbound.clone(),
                self.metrics.clone(),
            ));
        }

        let backlog = Arc::new(AtomicUsize::new(0));
        self.publish_until_closed(&mut socket, &rx, &backlog).await;

        // Shutdown: the queue is closed and drained; give the PUB socket a
        // bounded time to write what it holds, then drop everything.
        let deadline = Instant::now() + Duration::from_millis(MESH_FLUSH_TIMEOUT_MS);
        while backlog.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(FLUSH_POLL_MS)).await;
        }
        peers.abort_all();
        drop(socket);
    }

    /// Sends batches until the executors' queue is closed and empty.
    async fn publish_until_closed(
        &self,
        socket: &mut PubSocket,
        rx: &async_channel::Receiver<Outbound>,
        backlog: &Arc<AtomicUsize>,
    ) {
        let mut seq: u64 = 0;
        let mut carried: Option<Outbound> = None;
        loop {
            let first = match carried.take() {
                Some(envelope) => envelope,
                None => match rx.recv().await {
                    Ok(envelope) => envelope,
                    Err(_) => return,
                },
            };
            let mut envelopes: Vec<Outbound> = Vec::with_capacity(64);
            let mut estimate =
                envelope::estimated_bytes(&first.id, &first.target, first.payload.len());
            envelopes.push(first);
            while envelopes.len() < MESH_BATCH_ENVELOPES_MAX {
                let Ok(next) = rx.try_recv() else { break };
                let size = envelope::estimated_bytes(&next.id, &next.target, next.payload.len());
                if estimate + size > MESH_BATCH_BYTES_MAX {
                    carried = Some(next);
                    break;
                }
                estimate += size;
                envelopes.push(next);
            }
            let count = envelopes.len() as u64;
            if backlog.load(Ordering::Acquire) > MESH_PUB_BACKLOG_BYTES_MAX {
                // A subscriber is not reading: do not queue more behind it.
                // The envelopes still take their sequence numbers, so every
                // receiver sees the hole and counts them as lost.
                seq += count;
                self.metrics.count_drop(DropReason::PubBacklog, count);
                continue;
            }
            let batch = Batch {
                origin: self.node_id.clone(),
                incarnation: self.incarnation,
                envelopes: envelopes
                    .into_iter()
                    .map(|e| {
                        seq += 1;
                        Envelope {
                            seq,
                            id: e.id,
                            target: e.target,
                            kind: e.kind,
                            payload: e.payload,
                            created_at_us: e.created_at_us,
                        }
                    })
                    .collect(),
            };
            let bytes = match envelope::encode(&batch) {
                Ok(bytes) => bytes,
                Err(_) => {
                    // Serializing owned values into memory does not fail in
                    // practice; count it rather than stop the mesh.
                    self.metrics.count_drop(DropReason::Corrupt, count);
                    continue;
                }
            };
            let len = bytes.len();
            backlog.fetch_add(len, Ordering::AcqRel);
            let message = Bytes::from_owner(Tracked {
                bytes,
                backlog: backlog.clone(),
            });
            // A PUB send only queues (or drops for slow subscribers).
            let _ = socket.send(message.into()).await;
            self.metrics.count_out(count, len as u64);
        }
    }
}

/// Receives from one peer for as long as the mesh runs: connect (with a
/// timeout), receive until the peer goes away, back off, start over.
async fn peer_task(peer: String, inbound: Arc<Mutex<Inbound>>, metrics: Arc<MeshMetrics>) {
    let min = Duration::from_millis(MESH_RECONNECT_MIN_MS);
    let max = Duration::from_millis(MESH_RECONNECT_MAX_MS);
    let mut backoff = min;
    loop {
        let mut options = SocketOptions::default();
        options.connect_timeout(Duration::from_millis(MESH_CONNECT_TIMEOUT_MS));
        let mut socket = SubSocket::with_options(options);
        let mut events = socket.monitor();
        // Remembered and sent to the peer on (every) connection.
        let subscribed = socket.subscribe("").await.is_ok();
        if !subscribed || socket.connect(&peer).await.is_err() {
            drop(socket);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max);
            continue;
        }
        metrics.set_peer_up(&peer, true);
        backoff = min;
        loop {
            tokio::select! {
                message = socket.recv() => match message {
                    Ok(message) => handle_message(&inbound, message),
                    Err(_) => break,
                },
                event = events.next() => match event {
                    Some(SocketEvent::Disconnected(_)) | None => break,
                    Some(_) => {}
                },
            }
        }
        metrics.set_peer_up(&peer, false);
        drop(socket);
        tokio::time::sleep(backoff).await;
    }
}

fn handle_message(inbound: &Mutex<Inbound>, message: zeromq::ZmqMessage) {
    let mut inbound = inbound.lock().unwrap_or_else(|p| p.into_inner());
    if message.len() != 1 {
        let bytes = message.iter().map(|frame| frame.len()).sum();
        inbound.handle_malformed(message.len(), bytes);
        return;
    }
    if let Some(frame) = message.get(0) {
        // Errors are counted inside; nothing else to do with a bad message.
        let _ = inbound.handle(frame, unix_micros());
    }
}
