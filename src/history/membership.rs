//! Server-side room membership, kept per user on the user's home core and
//! independent of connections: `POST /v1/rooms/{room}/members/{uid}` stays
//! until `DELETE`, and a user who connects later (to any node: the change
//! travels the mesh to every node) gets the rooms at registration.
//!
//! Bounded twice: `max_rooms_per_user` per user and a per-core share of the
//! node-wide cap on stored memberships; a join past either is refused, never
//! grown.

use std::collections::HashMap;

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("the user is in max_rooms_per_user rooms")]
    UserFull,
    #[error("the node stores its maximum of server-side memberships")]
    NodeFull,
}

/// One core's stored memberships: uid -> rooms.
#[derive(Debug)]
pub struct Memberships {
    rooms_per_user_max: usize,
    memberships_max: usize,
    count: usize,
    users: HashMap<Box<str>, Vec<Box<str>>>,
}

impl Memberships {
    pub fn new(rooms_per_user_max: usize, memberships_max: usize) -> Self {
        Self {
            rooms_per_user_max,
            memberships_max,
            count: 0,
            users: HashMap::new(),
        }
    }

    /// Stored memberships on this core.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds `room` for `uid`; `Ok(false)` when it was already there.
    pub fn join(&mut self, uid: &str, room: &str) -> Result<bool, MembershipError> {
        let rooms = self.users.get(uid);
        if rooms.is_some_and(|r| r.iter().any(|x| &**x == room)) {
            return Ok(false);
        }
        if rooms.is_some_and(|r| r.len() >= self.rooms_per_user_max) {
            return Err(MembershipError::UserFull);
        }
        if self.count >= self.memberships_max {
            return Err(MembershipError::NodeFull);
        }
        self.users.entry(uid.into()).or_default().push(room.into());
        self.count += 1;
        Ok(true)
    }

    /// Removes `room` for `uid`; `false` when it was not there.
    pub fn leave(&mut self, uid: &str, room: &str) -> bool {
        let Some(rooms) = self.users.get_mut(uid) else {
            return false;
        };
        let Some(i) = rooms.iter().position(|x| &**x == room) else {
            return false;
        };
        rooms.swap_remove(i);
        self.count -= 1;
        if rooms.is_empty() {
            self.users.remove(uid);
        }
        true
    }

    /// The rooms stored for `uid`.
    pub fn rooms(&self, uid: &str) -> &[Box<str>] {
        self.users.get(uid).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_is_kept_until_leave() {
        let mut m = Memberships::new(4, 100);
        assert_eq!(m.join("u", "r1"), Ok(true));
        assert_eq!(m.join("u", "r1"), Ok(false));
        assert_eq!(m.join("u", "r2"), Ok(true));
        assert_eq!(m.rooms("u").len(), 2);
        assert!(m.leave("u", "r1"));
        assert!(!m.leave("u", "r1"));
        assert!(!m.leave("nobody", "r1"));
        assert_eq!(&*m.rooms("u")[0], "r2");
        assert!(m.leave("u", "r2"));
        assert!(m.rooms("u").is_empty());
        assert_eq!(m.count(), 0);
    }

    #[test]
    fn bounded_per_user_and_per_node() {
        let mut m = Memberships::new(2, 3);
        m.join("a", "1").unwrap();
        m.join("a", "2").unwrap();
        assert_eq!(m.join("a", "3"), Err(MembershipError::UserFull));
        m.join("b", "1").unwrap();
        assert_eq!(m.join("c", "1"), Err(MembershipError::NodeFull));
        // Re-joining a stored room is not a new membership.
        assert_eq!(m.join("a", "1"), Ok(false));
        assert!(m.leave("a", "1"));
        assert_eq!(m.join("c", "1"), Ok(true));
    }
}
