//! What a push is and where it goes: the [`Push`] accepted by the HTTP API
//! or received from the mesh, and [`route`], a pure function from a target
//! to the cores that hold its recipients.
//!
//! A push is encoded once ([`Push::frame`]) where it enters the node and the
//! same bytes travel to every core and every recipient.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use crate::ws::frame::ContentKind;
use crate::ws::frame::encode_push;

/// Who a push or a membership change is for.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Target {
    /// Every connection of one user.
    User(String),
    /// Every connection of each listed user.
    Users(Vec<String>),
    /// Every connection of every member of a room.
    Room(String),
    /// Every connection.
    Broadcast,
    /// Server-side join of a user (all its connections) to a room.
    RoomJoin { room: String, uid: String },
    /// Server-side leave of a user from a room.
    RoomLeave { room: String, uid: String },
    /// Close every connection of a user with 4002 (logout, ban).
    Disconnect { uid: String },
}

/// One message on its way to clients; shared (`Arc`) by every core that
/// delivers it. Each delivering core encodes its frame once
/// ([`Push::frame`]), with its own stream position, and every recipient on
/// that core gets the same bytes.
#[derive(Debug)]
pub struct Push {
    /// Cluster-unique message id (origin node prefix + counter).
    pub id: String,
    pub kind: ContentKind,
    /// The body as accepted (what the mesh carries).
    pub payload: Bytes,
    /// When the origin node accepted it, microseconds since the Unix epoch.
    pub created_at_us: u64,
    /// When this node accepted or received it (push-to-socket latency).
    pub accepted_at: Instant,
}

impl Push {
    pub fn new(id: String, kind: ContentKind, payload: Bytes, created_at_us: u64) -> Arc<Push> {
        Arc::new(Push {
            id,
            kind,
            payload,
            created_at_us,
            accepted_at: Instant::now(),
        })
    }

    /// The frame(s) for `target`'s recipients on one core, whose stream
    /// position after this push is `pos`; room pushes name their room.
    pub fn frame(&self, target: &Target, pos: &str) -> Bytes {
        let room = match target {
            Target::Room(room) => Some(room.as_str()),
            _ => None,
        };
        encode_push(&self.id, room, self.kind, &self.payload, pos)
    }
}

/// Microseconds since the Unix epoch (wall clock, comparable across nodes).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A random per-process id prefix: a restarted node never reuses ids.
pub fn id_prefix() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Makes cluster-unique message ids on one core: the node's per-process
/// prefix, the core, and a counter only this core touches (no cache line
/// shared between cores on the push path).
#[derive(Debug)]
pub struct IdGenerator {
    prefix: String,
    next: Cell<u64>,
}

impl IdGenerator {
    pub fn new(node_prefix: &str, core: usize) -> Self {
        Self {
            prefix: format!("{node_prefix}-{core:x}"),
            next: Cell::new(1),
        }
    }

    pub fn next_id(&self) -> String {
        let n = self.next.get();
        self.next.set(n + 1);
        format!("{}-{n:x}", self.prefix)
    }
}

/// The core that owns every session of `uid`: FNV-1a, stable across
/// processes and releases.
pub fn home_core(uid: &str, cores: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uid.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % cores.max(1) as u64) as usize
}

/// Where a target's recipients live: each core with the part of the target
/// it must deliver. A user goes to its home core only; a batch is split by
/// home core; rooms and broadcasts go to every core.
pub fn route(target: &Target, cores: usize) -> Vec<(usize, Target)> {
    match target {
        Target::User(uid)
        | Target::RoomJoin { uid, .. }
        | Target::RoomLeave { uid, .. }
        | Target::Disconnect { uid } => {
            vec![(home_core(uid, cores), target.clone())]
        }
        Target::Users(uids) => {
            let mut per_core: Vec<Vec<String>> = vec![Vec::new(); cores];
            for uid in uids {
                per_core[home_core(uid, cores)].push(uid.clone());
            }
            per_core
                .into_iter()
                .enumerate()
                .filter(|(_, uids)| !uids.is_empty())
                .map(|(core, uids)| (core, Target::Users(uids)))
                .collect()
        }
        Target::Room(_) | Target::Broadcast => {
            (0..cores).map(|core| (core, target.clone())).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_has_one_home() {
        for cores in 1..8 {
            let routes = route(&Target::User("alice".into()), cores);
            assert_eq!(routes.len(), 1);
            assert_eq!(routes[0].0, home_core("alice", cores));
        }
    }

    #[test]
    fn a_batch_is_split_by_home_and_loses_no_one() {
        let uids: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
        let routes = route(&Target::Users(uids.clone()), 3);
        let mut seen: Vec<String> = Vec::new();
        for (core, target) in routes {
            let Target::Users(part) = target else {
                panic!("batch stays a batch")
            };
            assert!(part.iter().all(|u| home_core(u, 3) == core));
            seen.extend(part);
        }
        seen.sort();
        let mut expected = uids;
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn rooms_and_broadcasts_go_everywhere() {
        assert_eq!(route(&Target::Broadcast, 4).len(), 4);
        assert_eq!(route(&Target::Room("r".into()), 2).len(), 2);
    }

    #[test]
    fn home_is_stable() {
        // Pinned values: changing the hash re-homes every user of a running
        // cluster during a rolling upgrade.
        assert_eq!(home_core("alice", 2), 1);
        assert_eq!(home_core("alice", 3), 2);
        assert_eq!(home_core("alice", 7), 1);
        assert_eq!(home_core("bob", 2), 0);
        assert_eq!(home_core("bob", 256), 84);
        assert_eq!(home_core("carol", 7), 6);
        assert_eq!(home_core("", 5), (0xcbf2_9ce4_8422_2325u64 % 5) as usize);
    }

    #[test]
    fn ids_are_unique() {
        let prefix = id_prefix();
        let ids = IdGenerator::new(&prefix, 0);
        assert_ne!(ids.next_id(), ids.next_id());
        assert_ne!(
            IdGenerator::new(&prefix, 0).next_id(),
            IdGenerator::new(&prefix, 1).next_id()
        );
        assert_ne!(
            IdGenerator::new(&id_prefix(), 0).next_id(),
            IdGenerator::new(&id_prefix(), 0).next_id()
        );
    }
}
