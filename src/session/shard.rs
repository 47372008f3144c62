//! One core's sessions: `uid -> User { channels, rooms }` and the room index
//! of this core's users. Single-threaded: every session of a user lives on
//! its home core, so the per-user cap, eviction and multi-device fan-out
//! need no lock.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::push::Target;
use crate::session::channel::{Channel, QueueCaps, Sent};
use crate::session::disconnect::DisconnectReason;

/// All connections of one user on this core, oldest first, and the rooms
/// the user is in. Most users have one connection and no room: both lists
/// keep that case free of heap allocations.
#[derive(Debug, Default)]
struct User {
    channels: SmallVec<[Rc<Channel>; 1]>,
    // 8 bytes instead of a Vec's 24 in every user entry: most users are in
    // no room, and the users table is the largest per-user structure.
    #[allow(clippy::box_collection)]
    rooms: Option<Box<Vec<Rc<str>>>>,
}

impl User {
    fn rooms(&self) -> &[Rc<str>] {
        self.rooms.as_deref().map_or(&[], Vec::as_slice)
    }
}

/// Why a join was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinError {
    TooManyRooms,
}

/// What one delivery did, for the caller's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Connections the frame was handed to.
    pub delivered: u32,
    /// Connections closed as slow consumers on the way.
    pub slow_consumers: u32,
}

/// A channel as presence shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelInfo {
    pub id: u64,
    pub device: Option<String>,
    pub core: usize,
    pub connected_at_ms: u64,
}

/// The sessions of one core.
#[derive(Debug, Default)]
pub struct Shard {
    users: HashMap<Rc<str>, User>,
    rooms: HashMap<Rc<str>, HashSet<Rc<str>>>,
    connections: usize,
}

impl Shard {
    pub fn connections(&self) -> usize {
        self.connections
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// The interned uid for a user of this shard (so every channel of a
    /// user shares one allocation).
    pub fn intern_uid(&self, uid: &str) -> Rc<str> {
        self.users
            .get_key_value(uid)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Rc::from(uid))
    }

    /// Adds a connection; returns the oldest one when the user is now over
    /// `max_per_user` (the caller closes it with 4001).
    pub fn add(&mut self, channel: Rc<Channel>, max_per_user: usize) -> Option<Rc<Channel>> {
        let user = self.users.entry(channel.uid.clone()).or_default();
        user.channels.push(channel);
        self.connections += 1;
        let open = user.channels.iter().filter(|c| c.is_open()).count();
        if open > max_per_user {
            user.channels.iter().find(|c| c.is_open()).cloned()
        } else {
            None
        }
    }

    /// Removes a connection that ended; the user and its room memberships go
    /// with its last connection.
    pub fn remove(&mut self, channel: &Channel) {
        let Some(user) = self.users.get_mut(&*channel.uid) else {
            return;
        };
        let before = user.channels.len();
        user.channels.retain(|c| c.id != channel.id);
        if user.channels.len() == before {
            return;
        }
        self.connections -= 1;
        if user.channels.is_empty()
            && let Some((uid, user)) = self.users.remove_entry(&*channel.uid)
        {
            for room in user.rooms() {
                self.leave_index(room, &uid);
            }
        }
    }

    fn leave_index(&mut self, room: &str, uid: &str) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(uid);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Puts a connected user in a room. A user with no connection on this
    /// core is not tracked: membership lives as long as the user's sessions.
    /// Returns whether the user is connected here.
    pub fn join(&mut self, uid: &str, room: &str, max_rooms: usize) -> Result<bool, JoinError> {
        let Some((uid, user)) = self.users.get_key_value(uid) else {
            return Ok(false);
        };
        if user.rooms().iter().any(|r| &**r == room) {
            return Ok(true);
        }
        if user.rooms().len() >= max_rooms {
            return Err(JoinError::TooManyRooms);
        }
        let uid = uid.clone();
        let room: Rc<str> = self
            .rooms
            .get_key_value(room)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Rc::from(room));
        self.rooms
            .entry(room.clone())
            .or_default()
            .insert(uid.clone());
        self.users
            .get_mut(&uid)
            .expect("user looked up above")
            .rooms
            .get_or_insert_with(Box::default)
            .push(room);
        Ok(true)
    }

    /// Takes a user out of a room. Returns whether the user was in it.
    pub fn leave(&mut self, uid: &str, room: &str) -> bool {
        let Some(user) = self.users.get_mut(uid) else {
            return false;
        };
        let Some(rooms) = user.rooms.as_mut() else {
            return false;
        };
        let before = rooms.len();
        rooms.retain(|r| &**r != room);
        if rooms.len() == before {
            return false;
        }
        if rooms.is_empty() {
            user.rooms = None;
        }
        self.leave_index(room, uid);
        true
    }

    /// The rooms a connected user is in on this core.
    pub fn user_rooms(&self, uid: &str) -> Vec<Rc<str>> {
        self.users
            .get(uid)
            .map_or_else(Vec::new, |u| u.rooms().to_vec())
    }

    /// Open connections of a user on this core.
    pub fn user_connections(&self, uid: &str) -> usize {
        self.users
            .get(uid)
            .map_or(0, |u| u.channels.iter().filter(|c| c.is_open()).count())
    }

    /// Hands `frame` to every connection `target` names on this core.
    pub fn deliver(&self, target: &Target, frame: &Bytes, caps: QueueCaps, tick: u32) -> Fanout {
        let mut fanout = Fanout::default();
        let mut to_user = |user: &User| {
            for channel in &user.channels {
                match channel.send(frame, caps) {
                    Sent::Written | Sent::Queued => fanout.delivered += 1,
                    Sent::Dropped => {}
                    Sent::Overflow => {
                        channel.close(DisconnectReason::SlowConsumer, tick, true);
                        fanout.slow_consumers += 1;
                    }
                }
            }
        };
        match target {
            Target::User(uid) => {
                if let Some(user) = self.users.get(uid.as_str()) {
                    to_user(user);
                }
            }
            Target::Users(uids) => {
                for uid in uids {
                    if let Some(user) = self.users.get(uid.as_str()) {
                        to_user(user);
                    }
                }
            }
            Target::Room(room) => {
                if let Some(members) = self.rooms.get(room.as_str()) {
                    for uid in members {
                        if let Some(user) = self.users.get(uid) {
                            to_user(user);
                        }
                    }
                }
            }
            Target::Broadcast => {
                for user in self.users.values() {
                    to_user(user);
                }
            }
            Target::RoomJoin { .. } | Target::RoomLeave { .. } | Target::Disconnect { .. } => {}
        }
        fanout
    }

    /// Presence of a user on this core.
    pub fn presence(&self, uid: &str, core: usize) -> Vec<ChannelInfo> {
        self.users.get(uid).map_or_else(Vec::new, |user| {
            user.channels
                .iter()
                .filter(|c| c.is_open())
                .map(|c| ChannelInfo {
                    id: c.id,
                    device: c.device().map(str::to_string),
                    core,
                    connected_at_ms: c.connected_at_ms,
                })
                .collect()
        })
    }

    /// Every open connection (for the drain at shutdown).
    /// The open connections of one user on this core.
    pub fn user_channels(&self, uid: &str) -> Vec<Rc<Channel>> {
        self.users.get(uid).map_or_else(Vec::new, |u| {
            u.channels.iter().filter(|c| c.is_open()).cloned().collect()
        })
    }

    pub fn open_channels(&self) -> Vec<Rc<Channel>> {
        self.users
            .values()
            .flat_map(|u| u.channels.iter())
            .filter(|c| c.is_open())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(id: u64, uid: &str) -> Rc<Channel> {
        // fd -1: sends fail, which is fine for bookkeeping tests.
        Rc::new(Channel::new(
            id,
            -1,
            Rc::from(uid),
            Default::default(),
            0,
            0,
        ))
    }

    #[test]
    fn cap_names_the_oldest_open_channel() {
        let mut shard = Shard::default();
        assert!(shard.add(channel(1, "a"), 2).is_none());
        assert!(shard.add(channel(2, "a"), 2).is_none());
        let evicted = shard.add(channel(3, "a"), 2).unwrap();
        assert_eq!(evicted.id, 1);
        assert_eq!(shard.connections(), 3);
    }

    #[test]
    fn last_channel_takes_rooms_with_it() {
        let mut shard = Shard::default();
        let c1 = channel(1, "a");
        let c2 = channel(2, "a");
        shard.add(c1.clone(), 10);
        shard.add(c2.clone(), 10);
        assert_eq!(shard.join("a", "r", 4), Ok(true));
        assert_eq!(shard.join("ghost", "r", 4), Ok(false));
        assert_eq!(shard.rooms(), 1);
        shard.remove(&c1);
        assert_eq!(shard.rooms(), 1);
        shard.remove(&c2);
        assert_eq!(
            (shard.rooms(), shard.users(), shard.connections()),
            (0, 0, 0)
        );
    }

    #[test]
    fn room_cap() {
        let mut shard = Shard::default();
        shard.add(channel(1, "a"), 10);
        assert_eq!(shard.join("a", "r1", 1), Ok(true));
        assert_eq!(shard.join("a", "r1", 1), Ok(true));
        assert_eq!(shard.join("a", "r2", 1), Err(JoinError::TooManyRooms));
        assert!(shard.leave("a", "r1"));
        assert!(!shard.leave("a", "r1"));
        assert_eq!(shard.rooms(), 0);
    }
    /// Delivery over real sockets: a user whose socket is full and a
    /// queue at its cap is closed as a slow consumer (1013), once, while
    /// the other user on the core keeps receiving every frame.
    #[test]
    fn deliver_closes_only_the_slow_consumer() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixStream;

        use crate::session::channel::ChannelState;

        // Few enough frames that the fast socket's default buffer holds
        // them all, many more than the slow socket and its queue take.
        const FRAMES: usize = 50;
        const FRAME_BYTES: usize = 1000;
        let caps = QueueCaps {
            frames_max: 8,
            bytes_max: 1 << 20,
        };
        let (slow_ours, _slow_theirs) = UnixStream::pair().expect("socketpair");
        nix::sys::socket::setsockopt(&slow_ours, nix::sys::socket::sockopt::SndBuf, &4096usize)
            .expect("SO_SNDBUF");
        let (fast_ours, mut fast_theirs) = UnixStream::pair().expect("socketpair");
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; FRAMES * FRAME_BYTES];
            fast_theirs
                .read_exact(&mut buf)
                .expect("every frame arrives");
            buf
        });
        let on = |id, fd, uid: &str| {
            Rc::new(Channel::new(
                id,
                fd,
                Rc::from(uid),
                Default::default(),
                0,
                0,
            ))
        };
        let slow = on(1, slow_ours.as_raw_fd(), "slow");
        let fast = on(2, fast_ours.as_raw_fd(), "fast");
        let mut shard = Shard::default();
        shard.add(slow.clone(), 4);
        shard.add(fast.clone(), 4);
        let frame = Bytes::from(vec![b'x'; FRAME_BYTES]);
        let mut delivered = 0;
        let mut slow_consumers = 0;
        for _ in 0..FRAMES {
            let fanout = shard.deliver(&Target::Broadcast, &frame, caps, 7);
            delivered += fanout.delivered;
            slow_consumers += fanout.slow_consumers;
            assert!(fast.flushed(), "the fast socket takes every frame at once");
        }
        assert_eq!(slow_consumers, 1, "the slow consumer is closed once");
        assert_eq!(
            slow.state(),
            ChannelState::Closing {
                reason: DisconnectReason::SlowConsumer,
                since_tick: 7
            }
        );
        assert!(fast.is_open(), "the other user is untouched");
        assert!(
            delivered as usize > FRAMES,
            "every frame reached the fast user, some the slow one"
        );
        drop(shard);
        drop(fast);
        let received = reader.join().expect("reader");
        assert!(received.iter().all(|b| *b == b'x'));
    }
}
