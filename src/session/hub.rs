//! [`Hub`]: the sessions of one core. It owns the shard (uid -> channels,
//! rooms), the heartbeat wheel, the read-buffer pool, the core's tick, the
//! encoded ping frame, the push-latency histogram and the churn counters,
//! and it is all that a connection task needs of its core: routing between
//! cores is [`crate::core::Core`]'s job, never the hub's.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tungstenite::protocol::frame::coding::{Control, OpCode};

use crate::auth::Claims;
use crate::config::Config;
use crate::history::idempotency::IdempotencyTable;
use crate::history::membership::Memberships;
use crate::history::{CoreHistory, HistoryLimits};
use crate::limits::{DRAIN_STEPS, READ_BUFFER_BYTES, READ_BUFFER_POOL_MAX, TICK_MS};
use crate::metrics::{CoreMetrics, HandshakeOutcome, Limit, latency_histogram};
use crate::node::{Node, Slot};
use crate::push::{Push, Target};
use crate::session::channel::{Channel, QueueCaps, TokenExtras};
use crate::session::disconnect::DisconnectReason;
use crate::session::shard::{ChannelInfo, JoinError, Shard};
use crate::session::wheel::{Periods, Wheel};
use crate::ws::frame;
use crate::ws::handshake;
use crate::ws::message::MessageError;

/// Ended connections (at least; or half the live ones) after which the
/// heartbeat wheel drops their entries: bounds the memory that ended
/// connections keep until their slot comes round.
const WHEEL_COMPACT_ENDINGS_MIN: usize = 1024;

/// Bits of a channel id that name its core (the rest count up per core).
const CHANNEL_ID_CORE_BITS: u32 = 8;

/// How long a drain waits, after its last close, for the connection tasks
/// to end.
const DRAIN_GRACE: Duration = Duration::from_millis(TICK_MS * 4);

/// How often a drain checks whether its connections have ended.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Heartbeat ticks between two refused-handshake summaries.
const REFUSAL_SUMMARY_TICKS: u64 = crate::logging::REFUSAL_SUMMARY_MS / TICK_MS;

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

/// This core's sessions.
pub struct Hub {
    /// The core (executor) this hub belongs to.
    pub core: usize,
    pub node: Arc<Node>,
    pub config: Arc<Config>,
    pub metrics: Arc<CoreMetrics>,
    pub pool: BufferPool,
    shard: RefCell<Shard>,
    wheel: RefCell<Wheel>,
    latency: RefCell<Histogram<u64>>,
    tick: Cell<u32>,
    next_channel_id: Cell<u64>,
    ping_frame: Bytes,
    /// Handshakes and disconnects since the last memory trim.
    churn: Cell<u32>,
    /// Connections ended since the heartbeat wheel was last compacted.
    ended_since_compaction: Cell<usize>,
    /// Handshakes refused since the last summary line.
    refusals: crate::logging::RefusalTally,
    /// This core's share of the node's history (see [`super::stream`]).
    pub(super) history: RefCell<CoreHistory>,
    /// Idempotency keys whose key core this is.
    pub(super) idempotency: RefCell<IdempotencyTable>,
    /// Server-side room memberships of the users whose home this is.
    pub(super) memberships: RefCell<Memberships>,
    /// The tick of the last loss notice (see `stream::tell_loss`).
    pub(super) loss_told_tick: Cell<Option<u32>>,
}

fn unix_millis() -> u64 {
    crate::push::unix_micros() / 1000
}

fn unix_seconds() -> u32 {
    u32::try_from(unix_millis() / 1000).unwrap_or(u32::MAX)
}

impl Hub {
    pub fn new(core: usize, node: Arc<Node>) -> Self {
        let history = &node.config.history;
        let cores = node.core_metrics.len().max(1);
        let history_limits = HistoryLimits {
            ttl_ms: history.ttl_ms,
            bytes_max: node.history_room[core].max(),
        };
        let idempotency = IdempotencyTable::new(
            history.idempotency_ttl_ms,
            history.idempotency_keys_max.div_ceil(cores),
        );
        let memberships = Memberships::new(
            node.config.limits.max_rooms_per_user,
            history.memberships_max.div_ceil(cores),
        );
        Self {
            history: RefCell::new(CoreHistory::new(history_limits)),
            idempotency: RefCell::new(idempotency),
            memberships: RefCell::new(memberships),
            loss_told_tick: Cell::new(None),
            core,
            config: node.config.clone(),
            metrics: node.core_metrics[core].clone(),
            node,
            pool: BufferPool::default(),
            shard: RefCell::default(),
            wheel: RefCell::default(),
            latency: RefCell::new(latency_histogram()),
            tick: Cell::new(0),
            next_channel_id: Cell::new(1),
            ping_frame: frame::encode(OpCode::Control(Control::Ping), b""),
            churn: Cell::new(0),
            ended_since_compaction: Cell::new(0),
            refusals: Default::default(),
        }
    }

    /// This core's heartbeat tick (one per [`TICK_MS`]).
    pub fn tick(&self) -> u32 {
        self.tick.get()
    }

    /// Whether the node drains. The node-wide flag is set before the drain
    /// signal wakes the cores, so every core refuses handshakes and answers
    /// `/readyz` 503 from the moment of the signal, not from its next poll.
    pub fn is_draining(&self) -> bool {
        self.node.is_draining()
    }

    pub fn queue_caps(&self) -> QueueCaps {
        QueueCaps {
            frames_max: self.config.limits.send_queue_frames_max,
            bytes_max: self.config.limits.send_queue_bytes_max,
        }
    }

    /// The heartbeat periods in ticks, from the configuration.
    pub fn periods(&self) -> Periods {
        Periods {
            ping_ticks: (self.config.heartbeat.ping_interval_ms / TICK_MS).max(1) as u32,
            idle_ticks: (self.config.heartbeat.idle_timeout_ms / TICK_MS).max(2) as u32,
        }
    }

    /// Counts one handshake or disconnect towards the next memory trim.
    pub fn count_churn(&self) {
        self.churn.set(self.churn.get().saturating_add(1));
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

    /// Adds an authenticated connection whose home is this core: queues
    /// its 101 answer first, evicts the user's oldest channel past
    /// `max_channels_per_user`, joins the token's rooms and schedules its
    /// first ping. The channel holds `slot` until it is dropped. The caller
    /// starts the connection's task.
    pub fn add(
        &self,
        fd: RawFd,
        claims: Claims,
        accept: &str,
        slot: Slot,
        rooms: &[String],
    ) -> Rc<Channel> {
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
        let mut channel = Channel::new(
            (id << CHANNEL_ID_CORE_BITS) | self.core as u64,
            fd,
            uid.clone(),
            extras,
            unix_millis(),
            tick,
        );
        channel.expires_at_s = u32::try_from(claims.exp).unwrap_or(u32::MAX);
        channel.slot = Some(slot);
        let channel = Rc::new(channel);
        // The 101 goes out before anything else can be sent to the channel.
        channel.send(
            &Bytes::from(handshake::switching_protocols(accept)),
            self.queue_caps(),
        );
        let evicted = shard.add(channel.clone(), self.config.limits.max_channels_per_user);
        let max_rooms = self.config.limits.max_rooms_per_user;
        for room in claims.rooms.iter().flatten() {
            // Token rooms were bounded by max_rooms_per_user at verification.
            let _ = shard.join(&uid, room, max_rooms);
        }
        for room in self.stored_rooms(&uid) {
            let _ = shard.join(&uid, &room, max_rooms);
        }
        for room in rooms {
            let permitted = self.config.ws.free_join || channel.permits(room);
            if permitted && crate::auth::valid_name(room) {
                let _ = shard.join(&uid, room, max_rooms);
            }
        }
        drop(shard);
        if let Some(old) = evicted {
            old.close(DisconnectReason::Replaced, tick, false);
        }
        self.wheel
            .borrow_mut()
            .add(&channel, tick, self.periods(), unix_seconds());
        self.metrics.handshake(HandshakeOutcome::Ok);
        self.refresh_gauges();
        channel
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

    /// This core's open connections.
    pub(super) fn open_channels(&self) -> Vec<Rc<Channel>> {
        self.shard.borrow().open_channels()
    }

    /// The rooms a connected user is in on this core.
    pub fn user_rooms(&self, uid: &str) -> Vec<Rc<str>> {
        self.shard.borrow().user_rooms(uid)
    }

    /// Hands an encoded push to this core's recipients; records
    /// push-to-socket latency.
    pub(super) fn deliver_frame(&self, push: &Push, target: &Target, frame: &Bytes) -> u32 {
        let fanout = self
            .shard
            .borrow()
            .deliver(target, frame, self.queue_caps(), self.tick());
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

    /// Server-side join/leave of a user whose home is this core. Returns
    /// the user's connections affected.
    pub fn membership(&self, room: &str, uid: &str, join: bool) -> u32 {
        if !self.store_membership(room, uid, join) {
            return 0;
        }
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

    /// Closes every connection of `uid` on this core with 4002; returns
    /// how many.
    pub fn disconnect_user(&self, uid: &str) -> u32 {
        let channels = self.shard.borrow().user_channels(uid);
        let tick = self.tick();
        for channel in &channels {
            channel.close(DisconnectReason::Disconnected, tick, false);
        }
        channels.len() as u32
    }

    /// The user's connections on this core.
    pub fn presence(&self, uid: &str) -> Vec<ChannelInfo> {
        self.shard.borrow().presence(uid, self.core)
    }

    /// A copy of this core's push-to-socket latency histogram.
    pub fn latency(&self) -> Histogram<u64> {
        self.latency.borrow().clone()
    }

    /// Makes the heartbeat wheel end a closing connection whose client does
    /// not finish the close handshake in time.
    pub fn watch_closing(&self, channel: &Rc<Channel>) {
        self.wheel.borrow_mut().schedule(channel, self.tick(), 1);
    }

    /// Called by a connection task when it ends.
    pub fn connection_ended(&self, channel: &Channel, reason: DisconnectReason) {
        self.count_churn();
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
        self.refresh_gauges();
    }

    /// Advances the heartbeat to `tick`: pings the channels that are due,
    /// ends the idle and the stuck-closing ones, and trims memory after
    /// churn.
    pub fn on_tick(&self, tick: u32) {
        self.tick.set(tick);
        self.wheel
            .borrow_mut()
            .tick(tick, self.periods(), &self.ping_frame, unix_seconds());
        self.expire_history();
        self.release_transient_memory();
        if u64::from(tick) % REFUSAL_SUMMARY_TICKS == 0 {
            self.log_refusals();
        }
    }

    /// Counts a refused handshake for the next summary line.
    pub fn count_refusal(&self, reason: &'static str) {
        self.refusals.count(reason);
    }

    /// Logs the handshakes refused since the last summary, if any.
    fn log_refusals(&self) {
        if let Some((total, reasons)) = self.refusals.take() {
            tracing::info!(
                core = self.core,
                refused = total,
                reasons = %reasons,
                interval_ms = crate::logging::REFUSAL_SUMMARY_MS,
                "refused handshakes"
            );
        }
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

    /// Closes this core's connections with 1001, spread over the drain
    /// period, then waits (bounded) for their tasks to end.
    pub async fn drain(&self) {
        let channels = self.shard.borrow().open_channels();
        let started = Instant::now();
        tracing::info!(
            core = self.core,
            connections = channels.len(),
            "core draining"
        );
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
        let deadline = Instant::now() + DRAIN_GRACE;
        while self.shard.borrow().connections() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(DRAIN_POLL).await;
        }
        self.log_refusals();
        let left = self.shard.borrow().connections();
        tracing::info!(
            core = self.core,
            closed = channels.len().saturating_sub(left),
            left,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "core drained"
        );
    }
}
