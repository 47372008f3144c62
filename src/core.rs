//! One [`Core`] per executor: its session shard, heartbeat wheel, buffer
//! pool, metrics and its ends of the channel mesh to the other cores.
//!
//! Data flow on a core:
//! - WS accept -> handshake (parse, token, capacity) -> the user's home core
//!   (`hash(uid) % cores`): registered here, or the socket's fd is `dup`ed
//!   and handed over the channel mesh;
//! - a push from the HTTP API -> [`route`] -> delivered locally, sent to the
//!   other cores that hold recipients, published once on the cluster mesh;
//! - messages from other cores or from the cluster mesh -> [`Core::handle`].

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::AsyncReadExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use hdrhistogram::Histogram;
use tungstenite::protocol::frame::coding::{Control, OpCode};

use crate::auth::{ApiKeys, Claims, TokenKeys};
use crate::config::Config;
use crate::limits::{DRAIN_STEPS, READ_BUFFER_BYTES, READ_BUFFER_POOL_MAX, TICK_MS};
use crate::mesh::MeshHandle;
use crate::metrics::{CoreMetrics, CoreSnapshot, HandshakeOutcome, Limit, latency_histogram};
use crate::push::{IdGenerator, Push, Target, home_core, route};
use crate::session::channel::{Channel, QueueCaps, TokenExtras};
use crate::session::connection::Connection;
use crate::session::disconnect::DisconnectReason;
use crate::session::shard::{ChannelInfo, JoinError, Shard};
use crate::session::wheel::{Periods, Wheel};
use crate::ws::frame;
use crate::ws::handshake::{self, HandshakeError, UpgradeRequest};
use crate::ws::message::MessageError;

/// Handshakes one core works on at once; further connections wait in the
/// kernel's accept queue (a permit is taken before accept).
pub const HANDSHAKES_IN_FLIGHT_PER_CORE: u64 = 512;

/// Ended connections (at least; or half the live ones) after which the
/// heartbeat wheel drops their entries: bounds the memory that ended
/// connections keep until their slot comes round.
const WHEEL_COMPACT_ENDINGS_MIN: usize = 1024;

/// A reply channel for a question asked of another core.
pub type Reply<T> = async_channel::Sender<T>;

/// Messages between cores (and from the mesh thread into a core).
#[derive(Debug)]
pub enum CoreMsg {
    /// Deliver a push to the recipients `target` names on this core.
    Deliver {
        push: Arc<Push>,
        target: Target,
        reply: Option<Reply<u32>>,
    },
    /// Server-side room join or leave for a user whose home is this core.
    Membership {
        room: String,
        uid: String,
        join: bool,
        reply: Option<Reply<u32>>,
    },
    /// An authenticated connection whose home is this core.
    HandOff {
        fd: OwnedFd,
        claims: Claims,
        accept: String,
    },
    Presence {
        uid: String,
        reply: Reply<Vec<ChannelInfo>>,
    },
    Snapshot {
        reply: Reply<CoreSnapshot>,
    },
}

/// What every core shares: read-only configuration and keys, and a few
/// node-wide atomics (none of them on the delivery path).
#[derive(Debug)]
pub struct Node {
    pub config: Arc<Config>,
    pub node_id: String,
    pub tokens: TokenKeys,
    pub api_keys: ApiKeys,
    /// Per-process prefix of message ids (see [`IdGenerator`]).
    pub id_prefix: String,
    /// Open (or handing-off) WebSocket connections, checked against
    /// `max_connections` at the handshake.
    pub connections: AtomicUsize,
    pub draining: AtomicBool,
    /// Closed (never sent on) when the node starts draining: wakes every
    /// core at once with no polling.
    pub drain_signal: async_channel::Receiver<()>,
    pub core_metrics: Vec<Arc<CoreMetrics>>,
    pub mesh: Option<MeshHandle>,
    pub mesh_metrics: Arc<crate::mesh::MeshMetrics>,
}

/// Read buffers lent to connections while bytes move.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: RefCell<Vec<Box<[u8]>>>,
}

impl BufferPool {
    pub fn take(&self) -> Box<[u8]> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; READ_BUFFER_BYTES].into_boxed_slice())
    }

    pub fn put(&self, buf: Box<[u8]>) {
        let mut free = self.free.borrow_mut();
        if free.len() < READ_BUFFER_POOL_MAX {
            free.push(buf);
        }
    }
}

/// One executor's state.
pub struct Core {
    pub id: usize,
    pub cores: usize,
    pub node: Arc<Node>,
    pub config: Arc<Config>,
    pub metrics: Arc<CoreMetrics>,
    pub pool: BufferPool,
    /// Message ids for pushes accepted on this core.
    pub ids: IdGenerator,
    shard: RefCell<Shard>,
    wheel: RefCell<Wheel>,
    latency: RefCell<Histogram<u64>>,
    busy_seconds: Cell<f64>,
    senders: Senders<CoreMsg>,
    tick: Cell<u32>,
    next_channel_id: Cell<u64>,
    ping_frame: Bytes,
    /// Handshakes and disconnects since the last memory trim.
    churn: Cell<u32>,
    /// Connections ended since the heartbeat wheel was last compacted.
    ended_since_compaction: Cell<usize>,
}

fn unix_millis() -> u64 {
    crate::push::unix_micros() / 1000
}

impl Core {
    pub fn tick(&self) -> u32 {
        self.tick.get()
    }

    /// Whether the node drains. The node-wide flag is set before the drain
    /// signal wakes the cores, so every core refuses handshakes and answers
    /// `/readyz` 503 from the moment of the signal, not from its next poll.
    pub fn is_draining(&self) -> bool {
        self.node.draining.load(Ordering::Relaxed)
    }

    pub fn queue_caps(&self) -> QueueCaps {
        QueueCaps {
            frames_max: self.config.limits.send_queue_frames_max,
            bytes_max: self.config.limits.send_queue_bytes_max,
        }
    }

    fn refresh_gauges(&self) {
        let shard = self.shard.borrow();
        self.metrics
            .connections
            .store(shard.connections() as i64, Ordering::Relaxed);
        self.metrics
            .users
            .store(shard.users() as i64, Ordering::Relaxed);
        self.metrics
            .rooms
            .store(shard.rooms() as i64, Ordering::Relaxed);
    }

    /// Client `join` (the user is on this core: it is its home).
    pub fn join_room(&self, uid: &str, room: &str) -> Result<(), MessageError> {
        let max = self.config.limits.max_rooms_per_user;
        let joined = self.shard.borrow_mut().join(uid, room, max);
        self.refresh_gauges();
        match joined {
            Ok(_) => Ok(()),
            Err(JoinError::TooManyRooms) => {
                self.metrics.refused(Limit::RoomsPerUser);
                Err(MessageError::TooManyRooms)
            }
        }
    }

    pub fn leave_room(&self, uid: &str, room: &str) {
        self.shard.borrow_mut().leave(uid, room);
        self.refresh_gauges();
    }

    /// Gives the pages freed by finished handshakes and closed connections
    /// back to the kernel, once per tick after churn. Handshakes allocate
    /// and free a few KiB each; without this, the holes they leave between
    /// long-lived session objects stay resident after a connection storm.
    fn release_transient_memory(&self) {
        let churn = self.churn.replace(0);
        if churn > 0 {
            // SAFETY: malloc_trim has no preconditions; it only releases
            // free heap memory.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    /// Makes the heartbeat wheel end a closing connection whose client does
    /// not finish the close handshake in time.
    pub fn watch_closing(&self, channel: &Rc<Channel>) {
        self.wheel.borrow_mut().schedule(channel, self.tick(), 1);
    }

    /// Called by a connection task when it ends.
    pub fn connection_ended(&self, channel: &Channel, reason: DisconnectReason) {
        self.churn.set(self.churn.get().saturating_add(1));
        self.shard.borrow_mut().remove(channel);
        let ended = self.ended_since_compaction.get() + 1;
        let live = self.shard.borrow().connections();
        if ended >= WHEEL_COMPACT_ENDINGS_MIN.max(live / 2) {
            self.wheel.borrow_mut().drop_ended();
            self.ended_since_compaction.set(0);
        } else {
            self.ended_since_compaction.set(ended);
        }
        self.metrics.disconnect(reason);
        self.node.connections.fetch_sub(1, Ordering::Relaxed);
        self.refresh_gauges();
    }

    /// Registers an authenticated connection on its home core, answers 101
    /// and starts its task.
    fn register(self: &Rc<Self>, stream: TcpStream, claims: Claims, accept: &str) {
        if self.is_draining() {
            let _ = nix::sys::socket::send(
                stream.as_raw_fd(),
                &HandshakeError::Draining.response(),
                nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            );
            self.node.connections.fetch_sub(1, Ordering::Relaxed);
            self.metrics.handshake(HandshakeOutcome::OverCapacity);
            return;
        }
        let id = self.next_channel_id.get();
        self.next_channel_id.set(id + 1);
        let tick = self.tick();
        let mut shard = self.shard.borrow_mut();
        let uid = shard.intern_uid(&claims.sub);
        let permitted = claims
            .rooms
            .as_ref()
            .map(|rooms| rooms.iter().map(|r| Box::from(r.as_str())).collect());
        let extras = TokenExtras {
            device: claims.device.map(String::into_boxed_str),
            permitted_rooms: permitted,
        };
        let channel = Rc::new(Channel::new(
            (id << 8) | self.id as u64,
            stream.as_raw_fd(),
            uid.clone(),
            extras,
            unix_millis(),
            tick,
        ));
        // The 101 goes out before anything else can be sent to the channel.
        channel.send(
            &Bytes::from(handshake::switching_protocols(accept)),
            self.queue_caps(),
        );
        let evicted = shard.add(channel.clone(), self.config.limits.max_channels_per_user);
        for room in claims.rooms.iter().flatten() {
            // Token rooms were bounded by max_rooms_per_user at verification.
            let _ = shard.join(&uid, room, self.config.limits.max_rooms_per_user);
        }
        drop(shard);
        if let Some(old) = evicted {
            old.close(DisconnectReason::Replaced, tick, false);
        }
        self.wheel.borrow_mut().schedule(
            &channel,
            tick,
            (self.config.heartbeat.ping_interval_ms / TICK_MS) as u32,
        );
        self.metrics.handshake(HandshakeOutcome::Ok);
        self.refresh_gauges();
        glommio::spawn_local(Connection::new(self.clone(), channel, stream)).detach();
    }

    /// Delivers to this core's recipients; records push-to-socket latency.
    pub fn deliver_local(&self, push: &Push, target: &Target) -> u32 {
        let fanout =
            self.shard
                .borrow()
                .deliver(target, &push.frame, self.queue_caps(), self.tick());
        if fanout.delivered > 0 {
            self.metrics.delivered(u64::from(fanout.delivered));
            let micros = push.accepted_at.elapsed().as_micros() as u64;
            let _ = self.latency.borrow_mut().record(micros.max(1));
        }
        for _ in 0..fanout.slow_consumers {
            self.metrics.refused(Limit::SendQueue);
        }
        fanout.delivered
    }

    /// Server-side join/leave of a user whose home is this core.
    pub fn membership_local(&self, room: &str, uid: &str, join: bool) -> u32 {
        let max = self.config.limits.max_rooms_per_user;
        let mut shard = self.shard.borrow_mut();
        let affected = if join {
            match shard.join(uid, room, max) {
                Ok(true) => shard.user_connections(uid),
                Ok(false) => 0,
                Err(JoinError::TooManyRooms) => {
                    self.metrics.refused(Limit::RoomsPerUser);
                    0
                }
            }
        } else if shard.leave(uid, room) {
            shard.user_connections(uid)
        } else {
            0
        };
        drop(shard);
        self.refresh_gauges();
        affected as u32
    }

    /// Handles a message from another core or from the mesh.
    pub fn handle(self: &Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::Deliver {
                push,
                target,
                reply,
            } => {
                let n = self.deliver_local(&push, &target);
                if let Some(reply) = reply {
                    let _ = reply.try_send(n);
                }
            }
            CoreMsg::Membership {
                room,
                uid,
                join,
                reply,
            } => {
                let n = self.membership_local(&room, &uid, join);
                if let Some(reply) = reply {
                    let _ = reply.try_send(n);
                }
            }
            CoreMsg::HandOff { fd, claims, accept } => {
                // SAFETY: the fd is a connected TCP socket handed to us alone.
                let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
                self.register(stream, claims, &accept);
            }
            CoreMsg::Presence { uid, reply } => {
                let _ = reply.try_send(self.shard.borrow().presence(&uid, self.id));
            }
            CoreMsg::Snapshot { reply } => {
                let _ = reply.try_send(self.snapshot());
            }
        }
    }

    fn snapshot(&self) -> CoreSnapshot {
        let stats = glommio::executor().executor_stats();
        let busy = self.busy_seconds.get() + stats.executor_runtime().as_secs_f64();
        self.busy_seconds.set(busy);
        CoreSnapshot {
            push_latency_us: self.latency.borrow().clone(),
            busy_seconds: busy,
        }
    }

    /// Sends `msg` to core `to` (or handles it here when `to` is this core).
    async fn send_to(self: &Rc<Self>, to: usize, msg: CoreMsg) {
        if to == self.id {
            self.handle(msg);
        } else if let Err(e) = self.senders.send_to(to, msg).await {
            eprintln!(
                "corecast: core {} -> core {to}: channel closed: {e}",
                self.id
            );
        }
    }

    /// Delivers a push accepted by this node's HTTP API everywhere: local
    /// cores now, the cluster through the mesh. Returns local recipients.
    pub async fn push(self: &Rc<Self>, push: Arc<Push>, target: Target) -> u32 {
        if let Some(mesh) = &self.node.mesh {
            mesh.publish(
                &push.id,
                &target,
                push.kind,
                &push.payload,
                push.created_at_us,
            );
        }
        self.fan_out(push, target).await
    }

    /// Delivers to the cores holding recipients and sums what they did.
    pub async fn fan_out(self: &Rc<Self>, push: Arc<Push>, target: Target) -> u32 {
        let routes = route(&target, self.cores);
        let remote = routes.iter().filter(|(core, _)| *core != self.id).count();
        // A reply channel only when another core is involved.
        let replies = (remote > 0).then(|| async_channel::bounded(remote));
        let mut local = 0;
        for (core, part) in routes {
            if core == self.id {
                local += self.deliver_local(&push, &part);
            } else if let Some((tx, _)) = &replies {
                let msg = CoreMsg::Deliver {
                    push: push.clone(),
                    target: part,
                    reply: Some(tx.clone()),
                };
                self.send_to(core, msg).await;
            }
        }
        if let Some((tx, rx)) = replies {
            drop(tx);
            for _ in 0..remote {
                match rx.recv().await {
                    Ok(n) => local += n,
                    Err(_) => break,
                }
            }
        }
        local
    }

    /// Server-side join/leave, cluster-wide, under the message id `id` (the
    /// one the API answers with). Returns local connections affected.
    pub async fn membership(
        self: &Rc<Self>,
        id: &str,
        room: String,
        uid: String,
        join: bool,
    ) -> u32 {
        if let Some(mesh) = &self.node.mesh {
            let target = if join {
                Target::RoomJoin {
                    room: room.clone(),
                    uid: uid.clone(),
                }
            } else {
                Target::RoomLeave {
                    room: room.clone(),
                    uid: uid.clone(),
                }
            };
            mesh.publish(
                id,
                &target,
                crate::push::ContentKind::Json,
                &Bytes::new(),
                crate::push::unix_micros(),
            );
        }
        self.membership_any(room, uid, join).await
    }

    /// Join/leave on the user's home core of this node.
    pub async fn membership_any(self: &Rc<Self>, room: String, uid: String, join: bool) -> u32 {
        let home = home_core(&uid, self.cores);
        if home == self.id {
            return self.membership_local(&room, &uid, join);
        }
        let (tx, rx) = async_channel::bounded(1);
        let msg = CoreMsg::Membership {
            room,
            uid,
            join,
            reply: Some(tx),
        };
        self.send_to(home, msg).await;
        rx.recv().await.unwrap_or(0)
    }

    /// Presence of a user on this node (asked of its home core).
    pub async fn presence(self: &Rc<Self>, uid: String) -> Vec<ChannelInfo> {
        let home = home_core(&uid, self.cores);
        if home == self.id {
            return self.shard.borrow().presence(&uid, self.id);
        }
        let (tx, rx) = async_channel::bounded(1);
        self.send_to(home, CoreMsg::Presence { uid, reply: tx })
            .await;
        rx.recv().await.unwrap_or_default()
    }

    /// Gathers every core's snapshot (histograms, busy time) for a scrape.
    pub async fn snapshots(self: &Rc<Self>) -> Vec<CoreSnapshot> {
        let mut out = Vec::with_capacity(self.cores);
        for core in 0..self.cores {
            if core == self.id {
                out.push(self.snapshot());
                continue;
            }
            let (tx, rx) = async_channel::bounded(1);
            self.send_to(core, CoreMsg::Snapshot { reply: tx }).await;
            out.push(rx.recv().await.unwrap_or_else(|_| CoreSnapshot {
                push_latency_us: latency_histogram(),
                busy_seconds: 0.0,
            }));
        }
        out
    }

    /// Runs one WebSocket handshake to its end: refused with an HTTP error,
    /// or registered on the user's home core.
    async fn handshake(self: Rc<Self>, mut stream: TcpStream) {
        self.churn.set(self.churn.get().saturating_add(1));
        let timeout = self.config.handshake_timeout();
        let read = futures_lite::future::or(
            async { Some(self.read_upgrade(&mut stream).await) },
            async {
                glommio::timer::sleep(timeout).await;
                None
            },
        )
        .await;
        let outcome = match read {
            None => Err(HandshakeError::Timeout),
            Some(Err(e)) => Err(e),
            Some(Ok(None)) => {
                self.metrics.handshake(HandshakeOutcome::IoError);
                return;
            }
            Some(Ok(Some(request))) => self.authorize(&request).map(|c| (c, request.accept)),
        };
        match outcome {
            Err(error) => {
                self.metrics.handshake(error.outcome());
                match &error {
                    HandshakeError::TooLarge(_) => {
                        self.metrics.refused(Limit::HandshakeHeaderBytes)
                    }
                    HandshakeError::Timeout => self.metrics.refused(Limit::HandshakeTimeout),
                    HandshakeError::OverCapacity => self.metrics.refused(Limit::MaxConnections),
                    _ => {}
                }
                let _ = nix::sys::socket::send(
                    stream.as_raw_fd(),
                    &error.response(),
                    nix::sys::socket::MsgFlags::MSG_DONTWAIT
                        | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                );
                drop(stream);
            }
            Ok((claims, accept)) => {
                let home = home_core(&claims.sub, self.cores);
                if home == self.id {
                    self.register(stream, claims, &accept);
                    return;
                }
                // SAFETY: the raw fd is open for as long as `stream` lives.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
                match nix::unistd::dup(borrowed) {
                    Ok(fd) => {
                        drop(stream);
                        self.send_to(home, CoreMsg::HandOff { fd, claims, accept })
                            .await;
                    }
                    Err(_) => {
                        self.node.connections.fetch_sub(1, Ordering::Relaxed);
                        self.metrics.handshake(HandshakeOutcome::IoError);
                    }
                }
            }
        }
    }

    /// Reads until the upgrade request is complete. `Ok(None)`: the client
    /// went away.
    async fn read_upgrade(
        &self,
        stream: &mut TcpStream,
    ) -> Result<Option<UpgradeRequest>, HandshakeError> {
        let max = self.config.limits.handshake_header_bytes_max;
        let mut buf: Vec<u8> = Vec::with_capacity(1024.min(max));
        let mut chunk = [0u8; 1024];
        loop {
            let room = (max - buf.len()).min(chunk.len());
            if room == 0 {
                return Err(HandshakeError::TooLarge(max));
            }
            let n = match stream.read(&mut chunk[..room]).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(request) = handshake::parse_upgrade(&buf, max)? {
                return Ok(Some(request));
            }
        }
    }

    /// Token, drain and capacity checks; takes a connection slot on success.
    fn authorize(&self, request: &UpgradeRequest) -> Result<Claims, HandshakeError> {
        let token = request
            .token
            .as_deref()
            .ok_or(HandshakeError::Unauthorized(
                crate::auth::TokenError::Missing,
            ))?;
        let claims = self
            .node
            .tokens
            .verify(token, self.config.limits.max_rooms_per_user)?;
        if self.is_draining() {
            return Err(HandshakeError::Draining);
        }
        let before = self.node.connections.fetch_add(1, Ordering::Relaxed);
        if before >= self.config.limits.max_connections {
            self.node.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(HandshakeError::OverCapacity);
        }
        Ok(claims)
    }

    /// Closes this core's connections with 1001, spread over the drain
    /// period, then waits (bounded) for their tasks to end.
    async fn drain(self: &Rc<Self>) {
        let channels = self.shard.borrow().open_channels();
        let period = self.config.drain_period();
        let steps = DRAIN_STEPS.max(1);
        let per_step = channels.len().div_ceil(steps as usize).max(1);
        let pause = period / steps as u32;
        for batch in channels.chunks(per_step) {
            let tick = self.tick();
            for channel in batch {
                channel.close(DisconnectReason::Shutdown, tick, false);
            }
            glommio::timer::sleep(pause).await;
        }
        let deadline = Instant::now() + Duration::from_millis(TICK_MS * 4);
        while self.shard.borrow().connections() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs one executor's core until the node drains.
pub async fn run(
    id: usize,
    node: Arc<Node>,
    mesh: MeshBuilder<CoreMsg, Full>,
    foreign: async_channel::Receiver<CoreMsg>,
    ready: std::sync::mpsc::Sender<usize>,
) {
    let cores = mesh.nr_peers();
    let (senders, mut receivers): (Senders<CoreMsg>, Receivers<CoreMsg>) =
        mesh.join().await.expect("channel mesh join");
    let config = node.config.clone();
    let ids = IdGenerator::new(&node.id_prefix, id);
    let core = Rc::new(Core {
        id,
        cores,
        metrics: node.core_metrics[id].clone(),
        config: config.clone(),
        node,
        pool: BufferPool::default(),
        ids,
        shard: RefCell::default(),
        wheel: RefCell::default(),
        latency: RefCell::new(latency_histogram()),
        busy_seconds: Cell::new(0.0),
        senders,
        tick: Cell::new(0),
        next_channel_id: Cell::new(1),
        ping_frame: frame::encode(OpCode::Control(Control::Ping), b""),
        churn: Cell::new(0),
        ended_since_compaction: Cell::new(0),
    });

    for (_, receiver) in receivers.streams() {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = receiver.recv().await {
                core.handle(msg);
            }
        })
        .detach();
    }
    {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Ok(msg) = foreign.recv().await {
                core.handle(msg);
            }
        })
        .detach();
    }
    spawn_heartbeat(core.clone());

    let ws_listener = crate::listener::bind_reuseport(config.ws.listen, config.ws.backlog)
        .expect("bind WebSocket listener");
    let http_listener = crate::listener::bind_reuseport(config.http.listen, config.http.backlog)
        .expect("bind HTTP listener");
    let ws_task = glommio::spawn_local(accept_websockets(core.clone(), ws_listener));
    let http_task = glommio::spawn_local(crate::http::serve(core.clone(), http_listener));
    let _ = ready.send(id);

    // Err once the node closes the signal; nothing is ever sent on it.
    let _ = core.node.drain_signal.recv().await;
    ws_task.cancel().await;
    core.drain().await;
    http_task.cancel().await;
}

fn spawn_heartbeat(core: Rc<Core>) {
    glommio::spawn_local(async move {
        let periods = Periods {
            ping_ticks: (core.config.heartbeat.ping_interval_ms / TICK_MS).max(1) as u32,
            idle_ticks: (core.config.heartbeat.idle_timeout_ms / TICK_MS).max(2) as u32,
        };
        let start = Instant::now();
        loop {
            let next = core.tick() + 1;
            let due = start + Duration::from_millis(TICK_MS * u64::from(next));
            glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
            core.tick.set(next);
            core.wheel
                .borrow_mut()
                .tick(next, periods, &core.ping_frame);
            core.release_transient_memory();
        }
    })
    .detach();
}

async fn accept_websockets(core: Rc<Core>, listener: glommio::net::TcpListener) {
    let permits = Rc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_PER_CORE));
    loop {
        let Ok(permit) = permits.acquire_static_permit(1).await else {
            return;
        };
        match listener.accept().await {
            Ok(stream) => {
                let core = core.clone();
                glommio::spawn_local(async move {
                    core.handshake(stream).await;
                    drop(permit);
                })
                .detach();
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("corecast: core {}: accept failed: {e}", core.id);
                drop(permit);
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
