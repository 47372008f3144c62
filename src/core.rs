//! [`Core`]: one executor's router between cores. A push accepted by this
//! core's HTTP API is published once to the cluster and fanned out to the
//! cores that hold its recipients; messages from other cores and from the
//! mesh thread arrive as [`CoreMsg`]s and are carried out on this core's
//! [`Hub`]. Sessions themselves are the hub's; starting an executor is
//! [`crate::executor`]'s and the handshake [`crate::accept`]'s.
//!
//! Data flow on a core:
//! - WS accept -> handshake ([`crate::accept`]) -> the user's home core
//!   (`hash(uid) % cores`): opened there, or the socket's fd is `dup`ed and
//!   handed over the channel mesh as [`CoreMsg::HandOff`];
//! - a push from the HTTP API -> [`route`] -> delivered by the local hub,
//!   sent to the other cores that hold recipients, published once on the
//!   cluster mesh;
//! - what the cluster mesh receives -> [`plan_received`] -> the cores'
//!   inboxes -> [`Core::handle`].

use std::cell::{Cell, RefCell};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use glommio::channels::channel_mesh::Senders;
use glommio::net::TcpStream;

use crate::auth::Claims;
use crate::config::Config;
use crate::history::idempotency::{Claim, IdempotencyError, key_core};
use crate::history::store::Routed;
use crate::history::{MeshRouter, Origin, Sequencer, Step};
use crate::link::{LinkBudget, MESSAGE_OVERHEAD_BYTES};
use crate::mesh::{Extras, KeyRef, Received, Stamp};
use crate::metrics::{CoreMetrics, CoreSnapshot, latency_histogram};
use crate::node::{Node, Slot};
use crate::push::{IdGenerator, Push, Target, home_core, route};
use crate::session::connection;
use crate::session::hub::Hub;
use crate::session::shard::ChannelInfo;
use crate::session::stream::Opening;

/// A reply channel for a question asked of another core.
pub type Reply<T> = async_channel::Sender<T>;

/// Messages between cores (and from the mesh thread into a core).
#[derive(Debug)]
pub enum CoreMsg {
    /// Deliver a push to the recipients `target` names on this core, and
    /// keep it in this core's history at its place in its origin's chain
    /// (`None`: a push with no stamp, delivered live only).
    Deliver {
        push: Arc<Push>,
        target: Target,
        routed: Option<Routed>,
        reply: Option<Reply<u32>>,
    },
    /// Nothing of `origin` was routed here since `prev`; it is at `seq`.
    Advance {
        origin: Origin,
        seq: u64,
        prev: u64,
    },
    /// Seqs of `origin` up to `hi` were lost before this node.
    Gap {
        origin: Origin,
        hi: u64,
    },
    /// Records an idempotency key for push `id` on its key core; with a
    /// reply, answers whether the key was fresh (a push from this node's
    /// API) — without, just remembers it (a push from the mesh).
    Claim {
        key: KeyRef,
        id: String,
        reply: Option<Reply<Result<Claim, IdempotencyError>>>,
    },
    /// Forgets a fresh claim whose push was refused after all.
    Unclaim {
        key: KeyRef,
    },
    /// Server-side room join or leave for a user whose home is this core.
    Membership {
        room: String,
        uid: String,
        join: bool,
        reply: Option<Reply<u32>>,
    },
    /// An authenticated connection whose home is this core, with the
    /// connection slot it holds (released if the message is dropped).
    HandOff {
        fd: OwnedFd,
        claims: Claims,
        accept: String,
        slot: Slot,
        opening: Opening,
    },
    /// Close every connection of a user whose home is this core (4002).
    Disconnect {
        uid: String,
        reply: Option<Reply<u32>>,
    },
    Presence {
        uid: String,
        reply: Reply<Vec<ChannelInfo>>,
    },
    Snapshot {
        reply: Reply<CoreSnapshot>,
    },
}

impl CoreMsg {
    /// What this message counts for on a link's byte budget.
    pub fn weight(&self) -> usize {
        match self {
            CoreMsg::Deliver { push, .. } => push_weight(push),
            _ => MESSAGE_OVERHEAD_BYTES,
        }
    }
}

/// What a push counts for on a link's byte budget (the payload, and the
/// frame the receiving core encodes from it).
fn push_weight(push: &Push) -> usize {
    MESSAGE_OVERHEAD_BYTES + 2 * push.payload.len() + push.id.len()
}

/// Why this node could not take a push: the API answers 503, never a 202
/// followed by a silent drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    #[error("the queue to core {0} is full")]
    CoreLink(usize),
    #[error("the cluster mesh's outbound queue is full")]
    Mesh,
    #[error("the history of core {0} is full of unexpired pushes")]
    History(usize),
    #[error("too many idempotency keys are remembered")]
    IdempotencyKeys,
    #[error("the node is starting: its cluster peers have not all subscribed to it yet")]
    MeshStarting,
}

/// What became of a push the API accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Delivered and kept for resume; recipients on this node.
    New { recipients: u32 },
    /// Its idempotency key was seen before: not delivered again; the first
    /// push's id.
    Duplicate { first_id: String },
}

/// Routes what the cluster mesh received to the cores of this node: a room
/// join or leave to the user's home core, a push to every core that holds
/// recipients (each with its part of the target and its place in the
/// origin's chain, from `router`), markers and gaps to the others, and an
/// idempotency key to its key core.
pub fn plan_received(
    received: Received,
    cores: usize,
    router: &mut MeshRouter,
) -> Vec<(usize, CoreMsg)> {
    let join = matches!(received.target, Target::RoomJoin { .. });
    match received.target {
        Target::Disconnect { uid } => {
            vec![(
                home_core(&uid, cores),
                CoreMsg::Disconnect { uid, reply: None },
            )]
        }
        Target::RoomJoin { room, uid } | Target::RoomLeave { room, uid } => {
            let home = home_core(&uid, cores);
            vec![(
                home,
                CoreMsg::Membership {
                    room,
                    uid,
                    join,
                    reply: None,
                },
            )]
        }
        target => {
            let mut plan = Vec::new();
            if let Some(key) = received.idempotency {
                plan.push((
                    key_core(key.scope, &key.key, cores),
                    CoreMsg::Claim {
                        key,
                        id: received.id.clone(),
                        reply: None,
                    },
                ));
            }
            let push = Push::new(
                received.id,
                received.kind,
                received.payload,
                received.created_at_us,
            );
            let routes = route(&target, cores);
            let Some(stamp) = received.stamp else {
                plan.extend(routes.into_iter().map(|(core, part)| {
                    let msg = CoreMsg::Deliver {
                        push: push.clone(),
                        target: part,
                        routed: None,
                        reply: None,
                    };
                    (core, msg)
                }));
                return plan;
            };
            let origin = Origin {
                incarnation: stamp.incarnation,
                core: stamp.core,
            };
            let hit: Vec<usize> = routes.iter().map(|(core, _)| *core).collect();
            let mut parts: Vec<Option<Target>> = vec![None; cores];
            for (core, part) in routes {
                parts[core] = Some(part);
            }
            for (core, step) in router.route(origin, stamp.seq, &hit) {
                let msg = match step {
                    Step::Deliver(routed) => match parts[core].take() {
                        Some(part) => CoreMsg::Deliver {
                            push: push.clone(),
                            target: part,
                            routed: Some(routed),
                            reply: None,
                        },
                        None => continue,
                    },
                    Step::Advance { origin, seq, prev } => CoreMsg::Advance { origin, seq, prev },
                    Step::Gap { origin, hi } => CoreMsg::Gap { origin, hi },
                };
                plan.push((core, msg));
            }
            plan
        }
    }
}

/// One executor's router.
pub struct Core {
    pub id: usize,
    pub cores: usize,
    pub node: Arc<Node>,
    pub config: Arc<Config>,
    pub metrics: Arc<CoreMetrics>,
    /// This core's sessions.
    pub hub: Rc<Hub>,
    /// Message ids for pushes accepted on this core.
    pub ids: IdGenerator,
    /// This core's origin: numbers the pushes it accepts.
    sequencer: RefCell<Sequencer>,
    /// Rung (never blocking) when markers are due; see [`Self::run_markers`].
    markers_due: (async_channel::Sender<()>, async_channel::Receiver<()>),
    senders: Senders<CoreMsg>,
    busy_seconds: Cell<f64>,
}

impl Core {
    pub fn new(hub: Rc<Hub>, senders: Senders<CoreMsg>) -> Self {
        let node = hub.node.clone();
        let id = hub.core;
        let cores = senders.nr_consumers();
        let origin = Origin {
            incarnation: node.incarnation,
            core: id as u16,
        };
        Self {
            id,
            cores,
            ids: IdGenerator::new(&node.id_prefix, id),
            sequencer: RefCell::new(Sequencer::new(origin, cores)),
            markers_due: async_channel::bounded(1),
            config: node.config.clone(),
            metrics: hub.metrics.clone(),
            node,
            hub,
            senders,
            busy_seconds: Cell::new(0.0),
        }
    }

    /// Whether the node drains (see [`Hub::is_draining`]).
    pub fn is_draining(&self) -> bool {
        self.hub.is_draining()
    }

    /// Handles a message from another core or from the mesh.
    pub fn handle(self: &Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::Deliver {
                push,
                target,
                routed,
                reply,
            } => {
                let n = self.hub.deliver(&push, &target, routed);
                if let Some(reply) = reply {
                    let _ = reply.try_send(n);
                }
            }
            CoreMsg::Advance { origin, seq, prev } => self.hub.advance(origin, seq, prev),
            CoreMsg::Gap { origin, hi } => self.hub.gap(origin, hi),
            CoreMsg::Claim { key, id, reply } => {
                let claimed = self.hub.claim(&key, &id);
                if let Some(reply) = reply {
                    let _ = reply.try_send(claimed);
                }
            }
            CoreMsg::Unclaim { key } => self.hub.unclaim(&key),
            CoreMsg::Membership {
                room,
                uid,
                join,
                reply,
            } => {
                let n = self.hub.membership(&room, &uid, join);
                if let Some(reply) = reply {
                    let _ = reply.try_send(n);
                }
            }
            CoreMsg::HandOff {
                fd,
                claims,
                accept,
                slot,
                opening,
            } => {
                // SAFETY: the fd is a connected TCP socket handed to us alone.
                let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
                connection::open(&self.hub, stream, claims, &accept, slot, opening);
            }
            CoreMsg::Disconnect { uid, reply } => {
                let n = self.hub.disconnect_user(&uid);
                if let Some(reply) = reply {
                    let _ = reply.try_send(n);
                }
            }
            CoreMsg::Presence { uid, reply } => {
                let _ = reply.try_send(self.hub.presence(&uid));
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
            push_latency_us: self.hub.latency(),
            busy_seconds: busy,
        }
    }

    /// The link from this core to core `to`.
    fn link_to(&self, to: usize) -> &LinkBudget {
        self.node.links.between(self.id, to)
    }

    /// Sends `msg` to core `to` (or handles it here when `to` is this core),
    /// waiting while the channel is full. For the few messages that are
    /// not pushes; they count on the link's budget whatever it holds.
    pub async fn send_to(self: &Rc<Self>, to: usize, msg: CoreMsg) {
        if to == self.id {
            self.handle(msg);
            return;
        }
        let bytes = msg.weight();
        self.link_to(to).reserve(bytes);
        if let Err(e) = self.senders.send_to(to, msg).await {
            self.link_to(to).release(bytes);
            tracing::error!(core = self.id, to, error = ?e, "channel to core closed");
        }
    }

    /// Sends `msg` to core `to` now if its link has room; false if not.
    fn try_send_now(self: &Rc<Self>, to: usize, msg: CoreMsg) -> bool {
        if to == self.id {
            self.handle(msg);
            return true;
        }
        let bytes = msg.weight();
        let link = self.link_to(to);
        if !link.has_room(bytes) {
            return false;
        }
        link.reserve(bytes);
        if self.senders.try_send_to(to, msg).is_err() {
            link.release(bytes);
            return false;
        }
        true
    }

    /// Sends this core's advance markers a little after pushes were
    /// accepted ([`ADVANCE_INTERVAL_MS`]), so that the other cores' heads
    /// follow this origin without a message per push. Runs for the life of
    /// the executor.
    pub async fn run_markers(self: Rc<Self>) {
        let interval = std::time::Duration::from_millis(crate::limits::ADVANCE_INTERVAL_MS);
        while self.markers_due.1.recv().await.is_ok() {
            glommio::timer::sleep(interval).await;
            let markers = self.sequencer.borrow_mut().markers();
            for (core, step) in markers {
                let Step::Advance { origin, seq, prev } = step else {
                    continue;
                };
                if !self.try_send_now(core, CoreMsg::Advance { origin, seq, prev }) {
                    self.sequencer.borrow_mut().unsent(core);
                    let _ = self.markers_due.0.try_send(());
                }
            }
        }
    }

    /// Delivers a push accepted by this node's HTTP API everywhere: local
    /// cores now, the cluster through the mesh, each keeping it in its
    /// history before the answer. With an idempotency key seen before
    /// (on any node), delivers nothing and names the first push. Refused
    /// with [`Overloaded`] (nothing delivered) when a core, its history or
    /// the mesh cannot take it now.
    pub async fn push(
        self: &Rc<Self>,
        push: Arc<Push>,
        target: Target,
        idempotency: Option<KeyRef>,
    ) -> Result<Accepted, Overloaded> {
        if self
            .node
            .mesh
            .as_ref()
            .is_some_and(|mesh| !mesh.subscribed())
        {
            return Err(Overloaded::MeshStarting);
        }
        let routes = route(&target, self.cores);
        self.check_room(&push, &target, &routes)?;
        if let Some(key) = &idempotency {
            match self.claim(key, &push.id).await {
                Ok(Claim::Fresh) => {}
                Ok(Claim::Seen(first_id)) => return Ok(Accepted::Duplicate { first_id }),
                Err(_) => return Err(Overloaded::IdempotencyKeys),
            }
            // The claim may have waited: look again, and give the key back
            // if the push cannot go after all.
            if let Err(overloaded) = self.check_room(&push, &target, &routes) {
                self.unclaim(key.clone()).await;
                return Err(overloaded);
            }
        }
        let seq = self.sequencer.borrow().next_seq();
        if let Some(mesh) = &self.node.mesh {
            let extras = Extras {
                stamp: Some(Stamp {
                    incarnation: self.node.incarnation,
                    core: self.id as u16,
                    seq,
                }),
                idempotency: idempotency.clone(),
            };
            let published = mesh.publish_with(
                &push.id,
                &target,
                push.kind,
                &push.payload,
                push.created_at_us,
                extras,
            );
            if !published {
                if let Some(key) = idempotency {
                    self.unclaim(key).await;
                }
                return Err(Overloaded::Mesh);
            }
        }
        let hit: Vec<usize> = routes.iter().map(|(core, _)| *core).collect();
        let (numbered, steps) = self.sequencer.borrow_mut().sequence(&hit);
        debug_assert_eq!(numbered, seq, "nothing numbered in between");
        let _ = self.markers_due.0.try_send(());
        let recipients = self.fan_out(push, routes, steps).await;
        Ok(Accepted::New { recipients })
    }

    /// Whether every core this push needs has room on its link and in its
    /// history now (only this core sends on its links, so room seen here
    /// stays until the push is sent; a history can only shrink meanwhile).
    fn check_room(
        &self,
        push: &Push,
        target: &Target,
        routes: &[(usize, Target)],
    ) -> Result<(), Overloaded> {
        let bytes = push_weight(push);
        let history_bytes = crate::history::CoreHistory::entry_bytes(push, target) + bytes;
        for (core, _) in routes {
            if *core != self.id && !self.link_to(*core).has_room(bytes) {
                return Err(Overloaded::CoreLink(*core));
            }
            if !self.node.history_room[*core].has_room(history_bytes) {
                return Err(Overloaded::History(*core));
            }
        }
        Ok(())
    }

    /// Claims an idempotency key on its key core.
    async fn claim(self: &Rc<Self>, key: &KeyRef, id: &str) -> Result<Claim, IdempotencyError> {
        let owner = key_core(key.scope, &key.key, self.cores);
        if owner == self.id {
            return self.hub.claim(key, id);
        }
        let (tx, rx) = async_channel::bounded(1);
        let msg = CoreMsg::Claim {
            key: key.clone(),
            id: id.to_owned(),
            reply: Some(tx),
        };
        self.send_to(owner, msg).await;
        rx.recv().await.unwrap_or(Err(IdempotencyError::Full))
    }

    async fn unclaim(self: &Rc<Self>, key: KeyRef) {
        let owner = key_core(key.scope, &key.key, self.cores);
        self.send_to(owner, CoreMsg::Unclaim { key }).await;
    }

    /// Delivers to the cores holding recipients (`routes`, whose links had
    /// room), each with its step of the chain, and sums what they did.
    async fn fan_out(
        self: &Rc<Self>,
        push: Arc<Push>,
        routes: Vec<(usize, Target)>,
        steps: Vec<(usize, Step)>,
    ) -> u32 {
        let remote = routes.iter().filter(|(core, _)| *core != self.id).count();
        // A reply channel only when another core is involved.
        let replies = (remote > 0).then(|| async_channel::bounded(remote));
        let mut local = 0;
        let bytes = push_weight(&push);
        for ((core, part), (step_core, step)) in routes.into_iter().zip(steps) {
            debug_assert_eq!(core, step_core, "steps follow the routes");
            let routed = match step {
                Step::Deliver(routed) => Some(routed),
                _ => None,
            };
            if core == self.id {
                local += self.hub.deliver(&push, &part, routed);
            } else if let Some((tx, _)) = &replies {
                let msg = CoreMsg::Deliver {
                    push: push.clone(),
                    target: part,
                    routed,
                    reply: Some(tx.clone()),
                };
                let link = self.link_to(core);
                link.reserve(bytes);
                if self.senders.try_send_to(core, msg).is_err() {
                    // The link's budget is at most the channel's capacity,
                    // so only a closed channel (a stopping core) gets here.
                    link.release(bytes);
                }
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
        self.publish_control(id, &target);
        self.membership_any(room, uid, join).await
    }

    /// Join/leave on the user's home core of this node.
    pub async fn membership_any(self: &Rc<Self>, room: String, uid: String, join: bool) -> u32 {
        let home = home_core(&uid, self.cores);
        if home == self.id {
            return self.hub.membership(&room, &uid, join);
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

    /// Publishes a control message (a membership change, a disconnect) to
    /// the cluster: no payload, the target says it all.
    fn publish_control(&self, id: &str, target: &Target) {
        if let Some(mesh) = &self.node.mesh {
            mesh.publish(
                id,
                target,
                crate::push::ContentKind::Json,
                &Bytes::new(),
                crate::push::unix_micros(),
            );
        }
    }

    /// Closes every connection of `uid` cluster-wide with 4002, under the
    /// message id `id`. Returns the connections closed on this node.
    pub async fn disconnect(self: &Rc<Self>, id: &str, uid: String) -> u32 {
        self.publish_control(id, &Target::Disconnect { uid: uid.clone() });
        let home = home_core(&uid, self.cores);
        if home == self.id {
            return self.hub.disconnect_user(&uid);
        }
        let (tx, rx) = async_channel::bounded(1);
        self.send_to(
            home,
            CoreMsg::Disconnect {
                uid,
                reply: Some(tx),
            },
        )
        .await;
        rx.recv().await.unwrap_or(0)
    }

    /// Presence of a user on this node (asked of its home core).
    pub async fn presence(self: &Rc<Self>, uid: String) -> Vec<ChannelInfo> {
        let home = home_core(&uid, self.cores);
        if home == self.id {
            return self.hub.presence(&uid);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::ContentKind;

    fn received(target: Target) -> Received {
        Received {
            origin: "n2".into(),
            id: "m1".into(),
            target,
            kind: ContentKind::Json,
            payload: Bytes::from_static(b"{}"),
            created_at_us: 1,
            stamp: None,
            idempotency: None,
        }
    }

    fn plan_fresh(received: Received, cores: usize) -> Vec<(usize, CoreMsg)> {
        plan_received(received, cores, &mut MeshRouter::new(cores))
    }

    #[test]
    fn a_stamped_push_is_chained_and_the_other_cores_get_markers() {
        let mut router = MeshRouter::new(3);
        let mut r = received(Target::User("bob".into()));
        r.stamp = Some(Stamp {
            incarnation: 5,
            core: 1,
            seq: 1,
        });
        r.idempotency = Some(KeyRef {
            scope: 3,
            key: "k".into(),
        });
        let plan = plan_received(r, 3, &mut router);
        let home = home_core("bob", 3);
        let origin = Origin {
            incarnation: 5,
            core: 1,
        };
        let mut delivered = 0;
        let mut advanced = Vec::new();
        let mut claims = 0;
        for (core, msg) in &plan {
            match msg {
                CoreMsg::Deliver { routed, .. } => {
                    assert_eq!(*core, home);
                    assert_eq!(
                        *routed,
                        Some(Routed {
                            origin,
                            seq: 1,
                            prev: 0
                        })
                    );
                    delivered += 1;
                }
                CoreMsg::Advance {
                    seq: 1, prev: 0, ..
                } => advanced.push(*core),
                CoreMsg::Claim {
                    key,
                    id,
                    reply: None,
                } => {
                    assert_eq!(*core, key_core(3, "k", 3));
                    assert_eq!((key.key.as_str(), id.as_str()), ("k", "m1"));
                    claims += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((delivered, claims), (1, 1));
        advanced.sort_unstable();
        let others: Vec<usize> = (0..3).filter(|c| *c != home).collect();
        assert_eq!(advanced, others);
    }

    #[test]
    fn a_received_room_join_goes_to_the_users_home_core_only() {
        let plan = plan_fresh(
            received(Target::RoomJoin {
                room: "lobby".into(),
                uid: "alice".into(),
            }),
            4,
        );
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].0, home_core("alice", 4));
        assert!(matches!(
            &plan[0].1,
            CoreMsg::Membership { room, uid, join: true, reply: None }
                if room == "lobby" && uid == "alice"
        ));
        let leave = plan_fresh(
            received(Target::RoomLeave {
                room: "lobby".into(),
                uid: "alice".into(),
            }),
            4,
        );
        assert!(matches!(
            &leave[0].1,
            CoreMsg::Membership { join: false, .. }
        ));
    }

    #[test]
    fn a_received_disconnect_goes_to_the_users_home_core_only() {
        let plan = plan_fresh(received(Target::Disconnect { uid: "eve".into() }), 4);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].0, home_core("eve", 4));
        assert!(matches!(&plan[0].1, CoreMsg::Disconnect { uid, reply: None } if uid == "eve"));
    }

    #[test]
    fn a_received_push_is_planned_like_a_local_one() {
        let target = Target::User("bob".into());
        let plan = plan_fresh(received(target.clone()), 4);
        let routes = route(&target, 4);
        assert_eq!(plan.len(), routes.len());
        for ((core, msg), (want_core, want_part)) in plan.iter().zip(routes) {
            assert_eq!(*core, want_core);
            let CoreMsg::Deliver {
                push,
                target,
                reply,
                ..
            } = msg
            else {
                panic!("a push plans deliveries, got {msg:?}");
            };
            assert_eq!(*target, want_part);
            assert!(reply.is_none(), "nobody waits on a mesh delivery");
            assert_eq!(&*push.id, "m1");
        }
    }

    #[test]
    fn a_received_broadcast_reaches_every_core_with_one_shared_push() {
        let plan = plan_fresh(received(Target::Broadcast), 3);
        let cores: Vec<usize> = plan.iter().map(|(core, _)| *core).collect();
        assert_eq!(cores, vec![0, 1, 2]);
        let pushes: Vec<&Arc<Push>> = plan
            .iter()
            .map(|(_, msg)| match msg {
                CoreMsg::Deliver { push, .. } => push,
                other => panic!("broadcast plans deliveries, got {other:?}"),
            })
            .collect();
        assert!(
            pushes.windows(2).all(|w| Arc::ptr_eq(w[0], w[1])),
            "encoded once"
        );
    }
}
