//! The mesh thread and its libzmq sockets: one blocking OS thread
//! (optionally pinned to a CPU) that owns a ZeroMQ context, this node's PUB
//! socket, one SUB socket per peer and a monitor per socket, and sleeps in
//! `zmq_poll` on all of them plus an eventfd the executors ring.
//!
//! Every socket is set up on the caller's thread before the thread starts
//! (a bind error is returned by `start`) with the limits of [`super`]:
//! `ZMQ_MAXMSGSIZE` (a longer frame is refused from its header, before any
//! allocation), per-pipe high-water marks, the handshake deadline, ZMTP
//! heartbeats and TCP keepalive; and, with a mesh key, CURVE (server on
//! PUB, client on SUB) behind the ZAP handler of [`super::curve`].
//!
//! Outbound: at each wake-up the thread drains what is waiting (up to one
//! batch per message, a few batches per turn) into ZeroMQ messages, numbers
//! the envelopes with this node's sequence and sends on the PUB socket,
//! which never blocks: a subscriber whose pipe is full misses the message
//! alone, and sees the hole in the sequence when it reads again.
//!
//! Inbound: libzmq connects every SUB socket in the background and
//! reconnects with backoff by itself; the monitors' handshake and
//! disconnect events drive `corecast_mesh_peer_up` and the counters.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::curve::{ClusterKeys, ZAP_DOMAIN, ZapHandler};
use super::envelope::{self, Batch, Envelope};
use super::inbound::Inbound;
use super::metrics::{DropReason, MeshMetrics, Side};
use super::{
    MESH_BATCH_BYTES_MAX, MESH_BATCH_ENVELOPES_MAX, MESH_CONNECT_TIMEOUT_MS, MESH_FLUSH_TIMEOUT_MS,
    MESH_HANDSHAKE_TIMEOUT_MS, MESH_HEARTBEAT_IVL_MS, MESH_HEARTBEAT_TIMEOUT_MS,
    MESH_MESSAGE_BYTES_MAX, MESH_PEER_RCVHWM_MESSAGES, MESH_PEER_SNDHWM_MESSAGES,
    MESH_RECONNECT_MAX_MS, MESH_RECONNECT_MIN_MS, MESH_TCP_KEEPALIVE_CNT,
    MESH_TCP_KEEPALIVE_IDLE_S, MESH_TCP_KEEPALIVE_INTVL_S, MeshError, MeshHandle, Outbound,
    Received, Shared, Waker,
};
use crate::limits::MESH_CHANNEL_CAPACITY;
use crate::push::unix_micros;

/// Longest sleep in `zmq_poll` when nothing happens (a safety net: the
/// eventfd and the sockets wake the thread).
const POLL_TIMEOUT_MS: i64 = 100;

/// Batches sent per turn of the loop before the SUB sockets are read.
const BATCHES_PER_TURN: usize = 16;

/// Messages read from one SUB socket per turn before the next socket.
const RECEIVES_PER_TURN: usize = 256;

/// The monitor events the mesh acts on.
fn monitored_events() -> i32 {
    use zmq::SocketEvent::*;
    [
        HANDSHAKE_SUCCEEDED,
        HANDSHAKE_FAILED_NO_DETAIL,
        HANDSHAKE_FAILED_PROTOCOL,
        HANDSHAKE_FAILED_AUTH,
        DISCONNECTED,
    ]
    .iter()
    .fold(0, |mask, e| mask | i32::from(e.to_raw()))
}

fn socket_error(what: &'static str) -> impl Fn(zmq::Error) -> MeshError {
    move |source| MeshError::Socket { what, source }
}

/// Options every mesh socket gets.
fn limit(socket: &zmq::Socket) -> Result<(), zmq::Error> {
    socket.set_maxmsgsize(MESH_MESSAGE_BYTES_MAX as i64)?;
    socket.set_handshake_ivl(MESH_HANDSHAKE_TIMEOUT_MS)?;
    socket.set_heartbeat_ivl(MESH_HEARTBEAT_IVL_MS)?;
    socket.set_heartbeat_timeout(MESH_HEARTBEAT_TIMEOUT_MS)?;
    socket.set_heartbeat_ttl(MESH_HEARTBEAT_TIMEOUT_MS)?;
    socket.set_tcp_keepalive(1)?;
    socket.set_tcp_keepalive_idle(MESH_TCP_KEEPALIVE_IDLE_S)?;
    socket.set_tcp_keepalive_intvl(MESH_TCP_KEEPALIVE_INTVL_S)?;
    socket.set_tcp_keepalive_cnt(MESH_TCP_KEEPALIVE_CNT)?;
    Ok(())
}

/// Starts `socket`'s monitor and returns the PAIR socket that reads it
/// (connected before the socket binds or connects, so no event is missed).
fn monitor(
    context: &zmq::Context,
    socket: &zmq::Socket,
    name: &str,
) -> Result<zmq::Socket, zmq::Error> {
    let endpoint = format!("inproc://corecast-mesh-monitor-{name}");
    socket.monitor(&endpoint, monitored_events())?;
    let reader = context.socket(zmq::PAIR)?;
    reader.set_linger(0)?;
    reader.connect(&endpoint)?;
    Ok(reader)
}

struct Peer {
    address: String,
    socket: zmq::Socket,
    monitor: zmq::Socket,
}

pub(super) fn spawn(
    node_id: &str,
    listen: String,
    peers: Vec<String>,
    keys: Option<ClusterKeys>,
    deliver: Box<dyn Fn(Received) + Send>,
    metrics: Arc<MeshMetrics>,
) -> Result<MeshHandle, MeshError> {
    for peer in &peers {
        metrics.add_peer(peer);
    }
    let context = zmq::Context::new();
    // The ZAP handler must be bound before the first CURVE socket exists.
    let zap = match &keys {
        Some(keys) => Some(
            ZapHandler::start(&context, keys.public, metrics.zap_denied_counter())
                .map_err(socket_error("ZAP handler"))?,
        ),
        None => None,
    };

    let publisher = context
        .socket(zmq::PUB)
        .map_err(socket_error("PUB socket"))?;
    let setup = |s: &zmq::Socket| -> Result<(), zmq::Error> {
        limit(s)?;
        s.set_sndhwm(MESH_PEER_SNDHWM_MESSAGES)?;
        s.set_linger(MESH_FLUSH_TIMEOUT_MS as i32)?;
        if let Some(keys) = &keys {
            s.set_curve_server(true)?;
            s.set_curve_secretkey(&keys.secret)?;
            s.set_zap_domain(ZAP_DOMAIN)?;
        }
        Ok(())
    };
    setup(&publisher).map_err(socket_error("PUB options"))?;
    let pub_monitor = monitor(&context, &publisher, "pub").map_err(socket_error("PUB monitor"))?;
    publisher.bind(&listen).map_err(|source| MeshError::Bind {
        address: listen.clone(),
        source,
    })?;
    let listen_endpoint = match publisher.get_last_endpoint() {
        Ok(Ok(endpoint)) => endpoint,
        _ => listen.clone(),
    };

    let peer_count = peers.len();
    let mut subscribers = Vec::with_capacity(peers.len());
    for (i, address) in peers.into_iter().enumerate() {
        let socket = context
            .socket(zmq::SUB)
            .map_err(socket_error("SUB socket"))?;
        let setup = |s: &zmq::Socket| -> Result<(), zmq::Error> {
            limit(s)?;
            s.set_rcvhwm(MESH_PEER_RCVHWM_MESSAGES)?;
            s.set_linger(0)?;
            s.set_reconnect_ivl(MESH_RECONNECT_MIN_MS as i32)?;
            s.set_reconnect_ivl_max(MESH_RECONNECT_MAX_MS as i32)?;
            s.set_connect_timeout(MESH_CONNECT_TIMEOUT_MS as i32)?;
            if let Some(keys) = &keys {
                s.set_curve_serverkey(&keys.public)?;
                s.set_curve_publickey(&keys.public)?;
                s.set_curve_secretkey(&keys.secret)?;
            }
            s.set_subscribe(b"")
        };
        setup(&socket).map_err(socket_error("SUB options"))?;
        let monitor =
            monitor(&context, &socket, &format!("sub-{i}")).map_err(socket_error("SUB monitor"))?;
        socket
            .connect(&address)
            .map_err(|source| MeshError::Address {
                address: address.clone(),
                reason: source.to_string(),
            })?;
        subscribers.push(Peer {
            address,
            socket,
            monitor,
        });
    }

    let (tx, rx) = async_channel::bounded(MESH_CHANNEL_CAPACITY);
    let (stopped_tx, stopped_rx) = std::sync::mpsc::sync_channel(1);
    let shared = Arc::new(Shared {
        waker: Waker::new()?,
        queued_bytes: Default::default(),
        thread: Mutex::new(None),
        stopped: Mutex::new(Some(stopped_rx)),
        listen_endpoint,
        expected_subscribers: peer_count as u64,
        subscribed_once: Default::default(),
        started: std::time::Instant::now(),
    });
    let mesh = Mesh {
        inbound: Inbound::new(node_id, deliver, metrics.clone()),
        node_id: node_id.to_owned(),
        incarnation: rand::random(),
        publisher,
        pub_monitor,
        peers: subscribers,
        metrics: metrics.clone(),
        shared: shared.clone(),
        seq: 0,
        carried: None,
    };
    let thread = std::thread::Builder::new()
        .name("corecast-mesh".into())
        .spawn(move || {
            mesh.run(rx);
            // Sockets are closed; the ZAP handler's goes next; dropping the
            // context then waits (bounded by the PUB linger) for the flush.
            drop(zap);
            drop(context);
            let _ = stopped_tx.send(());
        })
        .map_err(MeshError::Thread)?;
    *shared.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
    Ok(MeshHandle {
        tx,
        metrics,
        shared,
    })
}

struct Mesh {
    inbound: Inbound,
    node_id: String,
    incarnation: u64,
    publisher: zmq::Socket,
    pub_monitor: zmq::Socket,
    peers: Vec<Peer>,
    metrics: Arc<MeshMetrics>,
    shared: Arc<Shared>,
    seq: u64,
    carried: Option<Outbound>,
}

impl Mesh {
    fn run(mut self, rx: async_channel::Receiver<Outbound>) {
        let mut message = zmq::Message::new();
        loop {
            let mut busy = false;
            for _ in 0..BATCHES_PER_TURN {
                if !self.publish_one(&rx) {
                    break;
                }
                busy = true;
            }
            if rx.is_closed() && rx.is_empty() && self.carried.is_none() {
                // Shutdown: everything queued has been handed to the PUB
                // socket; its linger bounds the flush.
                return;
            }
            for i in 0..self.peers.len() {
                busy |= self.receive(i, &mut message);
            }
            self.read_monitors();
            if busy || !rx.is_empty() || self.carried.is_some() {
                continue;
            }
            self.sleep(&rx);
        }
    }

    /// Parks in `zmq_poll` until a socket, a monitor or the eventfd is
    /// ready (or [`POLL_TIMEOUT_MS`]).
    fn sleep(&self, rx: &async_channel::Receiver<Outbound>) {
        let waker = &self.shared.waker;
        waker.parked.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if !rx.is_empty() || rx.is_closed() {
            waker.parked.store(false, Ordering::SeqCst);
            return;
        }
        let mut items = Vec::with_capacity(2 + 2 * self.peers.len());
        items.push(zmq::PollItem::from_fd(waker.raw_fd(), zmq::POLLIN));
        items.push(self.pub_monitor.as_poll_item(zmq::POLLIN));
        for peer in &self.peers {
            items.push(peer.socket.as_poll_item(zmq::POLLIN));
            items.push(peer.monitor.as_poll_item(zmq::POLLIN));
        }
        let _ = zmq::poll(&mut items, POLL_TIMEOUT_MS);
        waker.parked.store(false, Ordering::SeqCst);
        if items[0].is_readable() {
            let _ = waker.fd.read();
        }
    }

    /// Sends one batch of what is queued; false when nothing was queued.
    fn publish_one(&mut self, rx: &async_channel::Receiver<Outbound>) -> bool {
        let first = match self.carried.take() {
            Some(envelope) => envelope,
            None => match rx.try_recv() {
                Ok(envelope) => envelope,
                Err(_) => return false,
            },
        };
        let queued = &self.shared.queued_bytes;
        queued.fetch_sub(first.bytes, Ordering::AcqRel);
        let mut estimate = first.bytes;
        let mut envelopes: Vec<Outbound> = Vec::with_capacity(64);
        envelopes.push(first);
        while envelopes.len() < MESH_BATCH_ENVELOPES_MAX {
            let Ok(next) = rx.try_recv() else { break };
            queued.fetch_sub(next.bytes, Ordering::AcqRel);
            if estimate + next.bytes > MESH_BATCH_BYTES_MAX {
                self.carried = Some(next);
                break;
            }
            estimate += next.bytes;
            envelopes.push(next);
        }
        // The carried envelope was taken off the byte count; put it back
        // until it is sent.
        if let Some(carried) = &self.carried {
            queued.fetch_add(carried.bytes, Ordering::AcqRel);
        }
        let count = envelopes.len() as u64;
        let mut seq = self.seq;
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
                        stamp: e.extras.stamp,
                        idempotency: e.extras.idempotency,
                    }
                })
                .collect(),
        };
        // The envelopes take their sequence numbers whatever happens next,
        // so every receiver sees a batch that is not sent as lost.
        self.seq = seq;
        let bytes = match envelope::encode(&batch) {
            Ok(bytes) => bytes,
            Err(_) => {
                // Serializing owned values into memory does not fail in
                // practice; count it rather than stop the mesh.
                self.metrics.count_drop(DropReason::Corrupt, count);
                return true;
            }
        };
        if bytes.len() > MESH_MESSAGE_BYTES_MAX {
            self.metrics.count_drop(DropReason::Oversize, count);
            return true;
        }
        // A PUB send never blocks: it queues per subscriber, or drops for a
        // subscriber whose pipe is at its high-water mark.
        let _ = self.publisher.send(&bytes[..], zmq::DONTWAIT);
        self.metrics.count_out(count, bytes.len() as u64);
        true
    }

    /// Reads what peer `i` has sent (up to [`RECEIVES_PER_TURN`] messages);
    /// true if anything was read.
    fn receive(&mut self, i: usize, message: &mut zmq::Message) -> bool {
        let mut any = false;
        for _ in 0..RECEIVES_PER_TURN {
            let peer = &self.peers[i];
            if peer.socket.recv(message, zmq::DONTWAIT).is_err() {
                break;
            }
            any = true;
            if message.get_more() {
                // Not one frame: read the rest of it and count it once.
                let (mut frames, mut bytes) = (1usize, message.len());
                while message.get_more() && peer.socket.recv(message, zmq::DONTWAIT).is_ok() {
                    frames += 1;
                    bytes += message.len();
                }
                self.inbound.handle_malformed(frames, bytes);
                continue;
            }
            // Errors are counted inside; nothing else to do with them.
            let _ = self
                .inbound
                .handle_from(Some(&peer.address), message, unix_micros());
        }
        any
    }

    fn read_monitors(&self) {
        while let Some(event) = next_event(&self.pub_monitor) {
            use zmq::SocketEvent::*;
            match event {
                HANDSHAKE_SUCCEEDED => self.metrics.count_subscriber(true),
                DISCONNECTED => self.metrics.count_subscriber(false),
                HANDSHAKE_FAILED_NO_DETAIL | HANDSHAKE_FAILED_PROTOCOL | HANDSHAKE_FAILED_AUTH => {
                    self.metrics.count_handshake_failure(Side::Pub)
                }
                _ => {}
            }
        }
        for peer in &self.peers {
            while let Some(event) = next_event(&peer.monitor) {
                use zmq::SocketEvent::*;
                let up = match event {
                    HANDSHAKE_SUCCEEDED => true,
                    DISCONNECTED => false,
                    HANDSHAKE_FAILED_NO_DETAIL
                    | HANDSHAKE_FAILED_PROTOCOL
                    | HANDSHAKE_FAILED_AUTH => {
                        self.metrics.count_handshake_failure(Side::Sub);
                        continue;
                    }
                    _ => continue,
                };
                if !self.metrics.set_peer_up(&peer.address, up) {
                    continue;
                }
                if up {
                    tracing::info!(peer = %peer.address, "mesh peer up");
                } else {
                    tracing::warn!(peer = %peer.address, "mesh peer down");
                }
            }
        }
    }
}

/// The next event on a monitor socket, if one is waiting: a two-frame
/// message whose first frame holds the event id (u16) and a value (u32).
fn next_event(monitor: &zmq::Socket) -> Option<zmq::SocketEvent> {
    let frames = monitor.recv_multipart(zmq::DONTWAIT).ok()?;
    let head = frames.first()?;
    let id = u16::from_ne_bytes(head.get(..2)?.try_into().ok()?);
    Some(zmq::SocketEvent::from_raw(id))
}
