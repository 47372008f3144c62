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

use std::cell::Cell;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use glommio::channels::channel_mesh::Senders;
use glommio::net::TcpStream;

use crate::auth::Claims;
use crate::config::Config;
use crate::link::{LinkBudget, MESSAGE_OVERHEAD_BYTES};
use crate::mesh::Received;
use crate::metrics::{CoreMetrics, CoreSnapshot, latency_histogram};
use crate::node::{Node, Slot};
use crate::push::{IdGenerator, Push, Target, home_core, route};
use crate::session::connection;
use crate::session::hub::Hub;
use crate::session::shard::ChannelInfo;

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
    /// An authenticated connection whose home is this core, with the
    /// connection slot it holds (released if the message is dropped).
    HandOff {
        fd: OwnedFd,
        claims: Claims,
        accept: String,
        slot: Slot,
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

/// What a push counts for on a link's byte budget.
fn push_weight(push: &Push) -> usize {
    MESSAGE_OVERHEAD_BYTES + push.payload.len() + push.frame.len()
}

/// Why this node could not take a push: the API answers 503, never a 202
/// followed by a silent drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    #[error("the queue to core {0} is full")]
    CoreLink(usize),
    #[error("the cluster mesh's outbound queue is full")]
    Mesh,
}

/// Routes what the cluster mesh received to the cores of this node: a room
/// join or leave to the user's home core, a push to every core that holds
/// recipients (each with its part of the target).
pub fn plan_received(received: Received, cores: usize) -> Vec<(usize, CoreMsg)> {
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
            let push = Push::new(
                received.id,
                &target,
                received.kind,
                received.payload,
                received.created_at_us,
            );
            route(&target, cores)
                .into_iter()
                .map(|(core, part)| {
                    let msg = CoreMsg::Deliver {
                        push: push.clone(),
                        target: part,
                        reply: None,
                    };
                    (core, msg)
                })
                .collect()
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
    senders: Senders<CoreMsg>,
    busy_seconds: Cell<f64>,
}

impl Core {
    pub fn new(hub: Rc<Hub>, senders: Senders<CoreMsg>) -> Self {
        let node = hub.node.clone();
        let id = hub.core;
        Self {
            id,
            cores: senders.nr_consumers(),
            ids: IdGenerator::new(&node.id_prefix, id),
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
                reply,
            } => {
                let n = self.hub.deliver(&push, &target);
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
            } => {
                // SAFETY: the fd is a connected TCP socket handed to us alone.
                let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
                connection::open(&self.hub, stream, claims, &accept, slot);
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

    /// Delivers a push accepted by this node's HTTP API everywhere: local
    /// cores now, the cluster through the mesh. Returns local recipients,
    /// or [`Overloaded`] (and delivers nothing) when a core this push needs
    /// or the mesh cannot take it now.
    pub async fn push(self: &Rc<Self>, push: Arc<Push>, target: Target) -> Result<u32, Overloaded> {
        let routes = route(&target, self.cores);
        let bytes = push_weight(&push);
        // Only this core sends on its links, so room seen here stays.
        if let Some((full, _)) = routes
            .iter()
            .find(|(core, _)| *core != self.id && !self.link_to(*core).has_room(bytes))
        {
            return Err(Overloaded::CoreLink(*full));
        }
        if let Some(mesh) = &self.node.mesh
            && !mesh.publish(
                &push.id,
                &target,
                push.kind,
                &push.payload,
                push.created_at_us,
            )
        {
            return Err(Overloaded::Mesh);
        }
        Ok(self.fan_out(push, routes).await)
    }

    /// Delivers to the cores holding recipients (`routes`, whose links had
    /// room) and sums what they did.
    async fn fan_out(self: &Rc<Self>, push: Arc<Push>, routes: Vec<(usize, Target)>) -> u32 {
        let remote = routes.iter().filter(|(core, _)| *core != self.id).count();
        // A reply channel only when another core is involved.
        let replies = (remote > 0).then(|| async_channel::bounded(remote));
        let mut local = 0;
        let bytes = push_weight(&push);
        for (core, part) in routes {
            if core == self.id {
                local += self.hub.deliver(&push, &part);
            } else if let Some((tx, _)) = &replies {
                let msg = CoreMsg::Deliver {
                    push: push.clone(),
                    target: part,
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
        }
    }

    #[test]
    fn a_received_room_join_goes_to_the_users_home_core_only() {
        let plan = plan_received(
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
        let leave = plan_received(
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
        let plan = plan_received(received(Target::Disconnect { uid: "eve".into() }), 4);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].0, home_core("eve", 4));
        assert!(matches!(&plan[0].1, CoreMsg::Disconnect { uid, reply: None } if uid == "eve"));
    }

    #[test]
    fn a_received_push_is_planned_like_a_local_one() {
        let target = Target::User("bob".into());
        let plan = plan_received(received(target.clone()), 4);
        let routes = route(&target, 4);
        assert_eq!(plan.len(), routes.len());
        for ((core, msg), (want_core, want_part)) in plan.iter().zip(routes) {
            assert_eq!(*core, want_core);
            let CoreMsg::Deliver {
                push,
                target,
                reply,
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
        let plan = plan_received(received(Target::Broadcast), 3);
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
