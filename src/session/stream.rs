//! The user's stream on one core (DESIGN section 3.1): what the hub does
//! with [`crate::history`]. Delivery keeps every push in the core's history
//! and encodes its frame once, with the core's position after it; a
//! connection that opens with `since` gets, before any live push, every
//! push it missed and a `resumed` frame saying whether that is provably all
//! of them; idempotency keys and server-side memberships live here too.
//!
//! Ordering: a resume registers the channel and queues its replay in one
//! synchronous step on the home core, so a push delivered after the plan
//! is live (after the replay) and one delivered before is in the replay:
//! none is lost, sent twice or reordered.

use std::rc::Rc;
use std::sync::Arc;

use crate::history::idempotency::{Claim, IdempotencyError};
use crate::history::store::Routed;
use crate::history::{Admission, Arrival, Origin, Position, PositionError, ResumePlan};
use crate::limits::{RESUME_POLL_MS, RESUME_WAIT_MS};
use crate::mesh::KeyRef;
use crate::metrics::Limit;
use crate::push::{Push, Target};
use crate::session::channel::Channel;
use crate::session::hub::Hub;
use crate::ws::frame;

/// What `since=` asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// `since=` (empty): nothing to recover; start a stream and learn its
    /// position (`resumed` at once).
    Start,
    /// Resume after this position (`0`: the empty one, everything kept).
    After(Position),
    /// Not a position: resumed with `recovered: false`.
    Malformed(PositionError),
}

/// What a connection asked for at the upgrade besides its token.
#[derive(Debug, Default)]
pub struct Opening {
    /// `since=`: see [`Since`]. `None`: no resume, no `resumed` frame.
    pub since: Option<Since>,
    /// `rooms=`: rooms to join before the replay (each permitted as a
    /// `join` message would be).
    pub rooms: Vec<String>,
}

impl Opening {
    /// Reads the query parameters `since` and `rooms` (comma-separated,
    /// percent-encoded names) of an upgrade request.
    pub fn from_query(since: Option<&str>, rooms: Option<&str>, rooms_max: usize) -> Self {
        let since = since.map(|text| {
            if text.is_empty() {
                return Since::Start;
            }
            match percent_decode(text)
                .ok_or(PositionError::BadEntry)
                .and_then(|text| Position::parse(&text))
            {
                Ok(position) => Since::After(position),
                Err(e) => Since::Malformed(e),
            }
        });
        let rooms = rooms
            .into_iter()
            .flat_map(|list| list.split(','))
            .filter(|r| !r.is_empty())
            .filter_map(percent_decode)
            .take(rooms_max)
            .collect();
        Self { since, rooms }
    }
}

/// Decodes a query value: `+` is a space, then `%XX` escapes as in a path
/// segment ([`crate::auth::decode_segment`]); `None` for a bad escape or
/// bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    crate::auth::decode_segment(&text.replace('+', " ")).ok()
}

/// The `resumed` frame's text.
pub fn resumed_text(recovered: bool, missed: usize, pos: &str) -> String {
    serde_json::json!({
        "type": "resumed",
        "recovered": recovered,
        "missed": missed,
        "pos": pos,
    })
    .to_string()
}

fn unix_millis() -> u64 {
    crate::push::unix_micros() / 1000
}

impl Hub {
    /// Delivers to this core's recipients and keeps the push for resume
    /// at its place in its origin's chain (`None`: not resumable, live
    /// only). The frame is encoded once here, with this core's position
    /// after the push, and shared by every recipient and the history.
    pub fn deliver(&self, push: &Arc<Push>, target: &Target, routed: Option<Routed>) -> u32 {
        let frame = match routed {
            Some(routed) => {
                let mut history = self.history.borrow_mut();
                let admitted = history.admit(
                    routed,
                    target.clone(),
                    push.clone(),
                    unix_millis(),
                    Admission::Evict,
                );
                let lost = match admitted {
                    Ok(Arrival::Duplicate) | Err(_) => return 0,
                    Ok(arrival) => arrival == Arrival::AfterLoss,
                };
                let pos = history.position_text();
                let frame = push.frame(target, &pos);
                history.attach_frame(frame.clone());
                drop(history);
                self.publish_history_fill();
                if lost {
                    self.tell_loss();
                }
                frame
            }
            None => push.frame(target, ""),
        };
        self.deliver_frame(push, target, &frame)
    }

    /// `origin` is at `seq` with nothing routed here since `prev`.
    pub fn advance(&self, origin: Origin, seq: u64, prev: u64) {
        let arrival = self
            .history
            .borrow_mut()
            .advance(origin, seq, prev, unix_millis());
        if arrival == Arrival::AfterLoss {
            self.tell_loss();
        }
    }

    /// Seqs of `origin` up to `hi` never reached this node.
    pub fn gap(&self, origin: Origin, hi: u64) {
        self.history
            .borrow_mut()
            .mark_gap(origin, hi, unix_millis());
        self.tell_loss();
    }

    /// Pushes routed here were lost (a mesh gap, a full inbox): the open
    /// connections of this core may have missed one, and no later resume
    /// would show it, so each gets `{"type":"resumed","recovered":false}`
    /// now, live: the application refetches its state, as after a resume
    /// that could not be proven. At most once per heartbeat tick.
    fn tell_loss(&self) {
        let tick = self.tick();
        if self.loss_told_tick.replace(Some(tick)) == Some(tick) {
            return;
        }
        let pos = self.history.borrow_mut().position_text();
        let notice = frame::encode_text(&resumed_text(false, 0, &pos));
        let channels = self.open_channels();
        for channel in &channels {
            channel.send_replay(&notice);
        }
        if !channels.is_empty() {
            tracing::warn!(
                core = self.core,
                connections = channels.len(),
                "pushes routed to this core were lost on the way; its connections were told to refetch"
            );
        }
    }

    /// Publishes this core's history fill for the accepting cores' check
    /// and the metrics.
    pub(super) fn publish_history_fill(&self) {
        use std::sync::atomic::Ordering;
        let history = self.history.borrow();
        self.node.history_room[self.core].set(history.bytes());
        self.metrics
            .history_bytes
            .store(history.bytes() as i64, Ordering::Relaxed);
        self.metrics
            .history_entries
            .store(history.len() as i64, Ordering::Relaxed);
    }

    /// Drops expired entries (on every heartbeat tick, so that the fill the
    /// accepting cores see does not count them).
    pub(super) fn expire_history(&self) {
        self.history.borrow_mut().expire(unix_millis());
        self.publish_history_fill();
    }

    /// Records an idempotency key on its key core: fresh (the caller
    /// delivers) or seen (the first push's id).
    pub fn claim(&self, key: &KeyRef, id: &str) -> Result<Claim, IdempotencyError> {
        self.idempotency
            .borrow_mut()
            .claim(key.scope, &key.key, id, unix_millis())
    }

    pub fn unclaim(&self, key: &KeyRef) {
        self.idempotency.borrow_mut().forget(key.scope, &key.key);
    }

    /// Stores a server-side join or leave for a user whose home is this
    /// core (kept across reconnects); false when a cap refused the join.
    pub(super) fn store_membership(&self, room: &str, uid: &str, join: bool) -> bool {
        let mut memberships = self.memberships.borrow_mut();
        if !join {
            memberships.leave(uid, room);
            return true;
        }
        match memberships.join(uid, room) {
            Ok(_) => true,
            Err(_) => {
                self.metrics.refused(Limit::RoomsPerUser);
                false
            }
        }
    }

    /// Server-side rooms of a user, to join at registration.
    pub(super) fn stored_rooms(&self, uid: &str) -> Vec<Box<str>> {
        self.memberships.borrow().rooms(uid).to_vec()
    }

    /// Waits (bounded by [`RESUME_WAIT_MS`]) while `since` names pushes
    /// this core has not received yet (still on their way from another
    /// core or node).
    pub async fn wait_until_caught_up(&self, uid: &str, since: &Position) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(RESUME_WAIT_MS);
        loop {
            let plan = self.history.borrow().plan_resume(uid, &[], since);
            if !matches!(plan, ResumePlan::Wait) || std::time::Instant::now() >= deadline {
                return;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(RESUME_POLL_MS)).await;
        }
    }

    /// Queues, right after registration, what a connection that opened with
    /// `since` missed, then its `resumed` frame.
    pub fn replay(&self, channel: &Rc<Channel>, since: &Since) {
        let (recovered, missed, pos) = match since {
            Since::Start => (true, 0, self.history.borrow_mut().position_text()),
            Since::After(since) => {
                let rooms = self.user_rooms(&channel.uid);
                let rooms: Vec<&str> = rooms.iter().map(|r| &**r).collect();
                let history = self.history.borrow();
                let resume = history.plan_resume_now(&channel.uid, &rooms, since);
                for &number in &resume.entries {
                    if let Some(entry) = history.entry(number) {
                        channel.send_replay(&entry.frame);
                    }
                }
                (
                    resume.recovered,
                    resume.entries.len(),
                    resume.pos.encode().into(),
                )
            }
            Since::Malformed(_) => (false, 0, self.history.borrow_mut().position_text()),
        };
        self.metrics.resumed(recovered, missed as u64);
        channel.send_replay(&frame::encode_text(&resumed_text(recovered, missed, &pos)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_opening_reads_since_and_rooms() {
        let o = Opening::from_query(Some("a.0.5"), Some("r1,r%202,,r3"), 2);
        let Some(Since::After(since)) = o.since else {
            panic!("a position")
        };
        assert_eq!(
            since.get(Origin {
                incarnation: 10,
                core: 0
            }),
            5
        );
        assert_eq!(o.rooms, ["r1", "r 2"], "capped at rooms_max");
        let malformed = |text| {
            matches!(
                Opening::from_query(Some(text), None, 4).since,
                Some(Since::Malformed(_))
            )
        };
        assert!(malformed("%zz") && malformed("garbage"));
        let fresh = Opening::from_query(Some(""), None, 4);
        assert_eq!(fresh.since, Some(Since::Start));
        let nothing_yet = Opening::from_query(Some("0"), None, 4);
        assert_eq!(nothing_yet.since, Some(Since::After(Position::new())));
        assert!(Opening::from_query(None, None, 4).since.is_none());
    }

    #[test]
    fn the_resumed_frame_says_what_happened() {
        let v: serde_json::Value = serde_json::from_str(&resumed_text(false, 3, "a.0.1")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "resumed", "recovered": false, "missed": 3, "pos": "a.0.1"})
        );
    }

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode("a%2Cb+c").as_deref(), Some("a,b c"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }
}
