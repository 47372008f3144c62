//! One core's history: the pushes routed to this core, kept for resume.
//!
//! Owned by one executor (no lock, no sharing between cores). It holds,
//! oldest first, every push this core delivered (its users' pushes, rooms,
//! broadcasts) as the same `Arc<Push>` that delivery used, bounded by a time
//! to live and a byte budget, plus for every origin what it can *prove*:
//!
//! - `head`: the highest seq of the origin this core knows about, from a push
//!   or an advance marker. Everything of the origin up to `head` that was
//!   routed here has been delivered here, except what `floor` covers.
//! - `floor`: a resume from `since[O] < floor` cannot be proven complete:
//!   entries evicted (ttl, bytes), envelopes lost (a prev-chain mismatch,
//!   a mesh gap), or the core met the origin late.
//!
//! The router attaches to each message for this core the previous seq of the
//! same origin it routed here (`prev`); a mismatch with what this core last
//! received means a loss in between. Per-origin order is the router's FIFO
//! order, so entries of one origin are in seq order in the queue.
//!
//! A resume ([`CoreHistory::plan_resume`]) is a pure function of this state:
//! the entries for the user after `since`, the `recovered` verdict, and the
//! position to hand out after them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::history::position::{Origin, POSITION_ORIGINS_MAX, Position};
use crate::push::{Push, Target};

/// Fixed bookkeeping bytes counted per entry on top of payload and frame
/// (entry, queue slot, index slots); measured figure in README.
pub const ENTRY_OVERHEAD_BYTES: usize = 160;

/// Pushes one resume replays at most; more and the resume is not recovered.
pub const REPLAY_PUSHES_MAX: usize = 10_000;

/// Origins one core tracks; the oldest idle origin with nothing retained is
/// forgotten past this (a position names at most this many).
pub const ORIGINS_PER_CORE_MAX: usize = POSITION_ORIGINS_MAX;

/// Retention of one core's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    pub ttl_ms: u64,
    /// This core's share of `[history] bytes_max`.
    pub bytes_max: usize,
}

/// What to do when the byte budget is full of unexpired entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Refuse the push (the accepting core: the API answers 503).
    Refuse,
    /// Evict the oldest (a push already answered 202 elsewhere: keep the
    /// newest, and let `floor` make older resumes honest).
    Evict,
}

/// The byte budget is full of entries younger than the ttl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("history full: {bytes} bytes of unexpired pushes")]
pub struct HistoryFull {
    pub bytes: usize,
}

/// Where a message sits in its origin's chain: `seq` of `origin`, routed
/// to this core after `prev` (the router's previous seq for this core).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed {
    pub origin: Origin,
    pub seq: u64,
    pub prev: u64,
}

/// One retained push.
#[derive(Debug)]
pub struct Entry {
    pub origin: Origin,
    pub seq: u64,
    pub target: Target,
    pub push: Arc<Push>,
    /// The frame(s) this core sent for it, `pos` included: a replay sends
    /// the same bytes.
    pub frame: Bytes,
    pub at_ms: u64,
    bytes: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct OriginState {
    head: u64,
    /// Seq of the last message routed here that arrived (the prev-chain).
    last_routed: u64,
    floor: u64,
    retained: usize,
    /// `now_ms` of the last message of this origin (to forget idle ones).
    seen_ms: u64,
}

/// What a resume request gets.
#[derive(Debug, PartialEq, Eq)]
pub enum ResumePlan {
    /// `since` is ahead of this core for some origin (its pushes are still
    /// in flight here) or names an origin this core has not heard of yet:
    /// try again shortly, then call [`CoreHistory::plan_resume_now`].
    Wait,
    Ready(Resume),
}

/// The replay of one resume.
#[derive(Debug, PartialEq, Eq)]
pub struct Resume {
    /// Entry numbers to send, in delivery order (see [`CoreHistory::entry`]).
    pub entries: Vec<u64>,
    /// Whether `entries` is provably every push for the user after `since`.
    pub recovered: bool,
    /// The position after the replay (this core's heads).
    pub pos: Position,
}

/// Where a received message stands in its origin's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Next in the chain.
    InOrder,
    /// Messages routed here were lost before this one (floor raised).
    AfterLoss,
    /// Already seen (seq not above head): dropped.
    Duplicate,
}

/// One core's retained pushes and per-origin knowledge.
#[derive(Debug)]
pub struct CoreHistory {
    limits: HistoryLimits,
    entries: VecDeque<Entry>,
    /// Number of `entries[0]`; numbers grow by one per admitted entry.
    first_number: u64,
    bytes: usize,
    origins: HashMap<Origin, OriginState>,
    by_user: HashMap<Box<str>, VecDeque<u64>>,
    by_room: HashMap<Box<str>, VecDeque<u64>>,
    broadcasts: VecDeque<u64>,
    /// Cached encoding of the current position (`None` after a change).
    pos_text: Option<Arc<str>>,
}

impl CoreHistory {
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            limits,
            entries: VecDeque::new(),
            first_number: 0,
            bytes: 0,
            origins: HashMap::new(),
            by_user: HashMap::new(),
            by_room: HashMap::new(),
            broadcasts: VecDeque::new(),
            pos_text: None,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes an entry for this push and target is counted as before its
    /// frame is attached ([`Self::attach_frame`] adds the frame's length).
    pub fn entry_bytes(push: &Push, target: &Target) -> usize {
        let names = match target {
            Target::User(uid) => uid.len(),
            Target::Users(uids) => uids.iter().map(|u| u.len() + 8).sum(),
            Target::Room(room) => room.len(),
            _ => 0,
        };
        ENTRY_OVERHEAD_BYTES + push.payload.len() + push.id.len() + names
    }

    /// Whether a push of `bytes` would be admitted with [`Admission::Refuse`]
    /// now (the accepting core asks before answering 202).
    pub fn has_room(&mut self, bytes: usize, now_ms: u64) -> bool {
        self.expire(now_ms);
        self.bytes + bytes <= self.limits.bytes_max
    }

    /// Keeps a push of `origin` (`seq`, routed here after `prev`). A
    /// duplicate is not kept; a loss before it raises the origin's floor.
    pub fn admit(
        &mut self,
        routed: Routed,
        target: Target,
        push: Arc<Push>,
        now_ms: u64,
        admission: Admission,
    ) -> Result<Arrival, HistoryFull> {
        let Routed { origin, seq, prev } = routed;
        if self
            .origins
            .get(&origin)
            .is_some_and(|s| seq <= s.last_routed)
        {
            return Ok(Arrival::Duplicate);
        }
        let bytes = Self::entry_bytes(&push, &target);
        self.expire(now_ms);
        while self.bytes + bytes > self.limits.bytes_max {
            match admission {
                Admission::Refuse => return Err(HistoryFull { bytes: self.bytes }),
                Admission::Evict => {
                    if !self.evict_oldest() {
                        break; // one entry larger than the budget: kept alone
                    }
                }
            }
        }
        let arrival = self.chain(origin, seq, prev, now_ms);
        let state = self.origins.entry(origin).or_default();
        state.last_routed = seq;
        state.retained += 1;
        let number = self.first_number + self.entries.len() as u64;
        match &target {
            Target::User(uid) => index(&mut self.by_user, uid, number),
            Target::Users(uids) => {
                for uid in uids {
                    index(&mut self.by_user, uid, number);
                }
            }
            Target::Room(room) => index(&mut self.by_room, room, number),
            Target::Broadcast => self.broadcasts.push_back(number),
            Target::RoomJoin { .. } | Target::RoomLeave { .. } | Target::Disconnect { .. } => {}
        }
        self.bytes += bytes;
        self.entries.push_back(Entry {
            origin,
            seq,
            target,
            push,
            frame: Bytes::new(),
            at_ms: now_ms,
            bytes,
        });
        self.pos_text = None;
        self.forget_idle_origins();
        Ok(arrival)
    }

    /// Attaches the frame sent for the newest entry (encoded after
    /// [`Self::admit`], because it carries the position after the push).
    pub fn attach_frame(&mut self, frame: Bytes) {
        if let Some(entry) = self.entries.back_mut() {
            self.bytes += frame.len();
            entry.bytes += frame.len();
            entry.frame = frame;
        }
    }

    /// An advance marker: `origin` is at `seq`, and the last message it
    /// routed here was `prev`. Moves the head although no push came.
    pub fn advance(&mut self, origin: Origin, seq: u64, prev: u64, now_ms: u64) -> Arrival {
        let arrival = self.chain(origin, prev, prev, now_ms);
        let state = self.origins.entry(origin).or_default();
        if seq > state.head {
            state.head = seq;
            self.pos_text = None;
        }
        self.forget_idle_origins();
        arrival
    }

    /// Envelopes of `origin` with seq in `lo..=hi` were lost on the way to
    /// this node (a mesh gap, or a node that met the origin late): resumes
    /// from before `hi` are not provable.
    pub fn mark_gap(&mut self, origin: Origin, hi: u64, now_ms: u64) {
        let state = self.origins.entry(origin).or_default();
        state.floor = state.floor.max(hi);
        state.seen_ms = now_ms;
        if hi > state.head {
            state.head = hi;
            self.pos_text = None;
        }
        // The router's chain skipped the lost seqs too: whatever it routed
        // here before hi is accounted for by the floor.
        state.last_routed = state.last_routed.max(hi);
        self.forget_idle_origins();
    }

    /// Checks the prev-chain for a message `seq` routed after `prev` and
    /// moves the head; returns whether something was lost before it.
    fn chain(&mut self, origin: Origin, seq: u64, prev: u64, now_ms: u64) -> Arrival {
        let state = self.origins.entry(origin).or_default();
        state.seen_ms = now_ms;
        let arrival = if prev > state.last_routed {
            // Messages routed here in (last_routed, prev] never arrived.
            state.floor = state.floor.max(prev);
            state.last_routed = prev;
            Arrival::AfterLoss
        } else {
            Arrival::InOrder
        };
        if seq > state.head {
            state.head = seq;
            self.pos_text = None;
        }
        arrival
    }

    /// Drops entries older than the ttl.
    pub fn expire(&mut self, now_ms: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.at_ms.saturating_add(self.limits.ttl_ms) <= now_ms)
        {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) -> bool {
        let Some(entry) = self.entries.pop_front() else {
            return false;
        };
        let number = self.first_number;
        self.first_number += 1;
        self.bytes -= entry.bytes;
        if let Some(state) = self.origins.get_mut(&entry.origin) {
            state.floor = state.floor.max(entry.seq);
            state.retained -= 1;
        }
        match &entry.target {
            Target::User(uid) => unindex(&mut self.by_user, uid, number),
            Target::Users(uids) => {
                for uid in uids {
                    unindex(&mut self.by_user, uid, number);
                }
            }
            Target::Room(room) => unindex(&mut self.by_room, room, number),
            Target::Broadcast => {
                if self.broadcasts.front() == Some(&number) {
                    self.broadcasts.pop_front();
                }
            }
            Target::RoomJoin { .. } | Target::RoomLeave { .. } | Target::Disconnect { .. } => {}
        }
        true
    }

    /// Past [`ORIGINS_PER_CORE_MAX`], forgets the least recently heard
    /// origin that has nothing retained (a dead incarnation, usually).
    fn forget_idle_origins(&mut self) {
        while self.origins.len() > ORIGINS_PER_CORE_MAX {
            let idle = self
                .origins
                .iter()
                .filter(|(_, s)| s.retained == 0)
                .min_by_key(|(_, s)| s.seen_ms)
                .map(|(o, _)| *o);
            match idle {
                Some(origin) => {
                    self.origins.remove(&origin);
                    self.pos_text = None;
                }
                None => break,
            }
        }
    }

    /// The entry with this number, if still retained.
    pub fn entry(&self, number: u64) -> Option<&Entry> {
        let i = number.checked_sub(self.first_number)?;
        self.entries.get(usize::try_from(i).ok()?)
    }

    /// This core's position: the head of every origin it knows.
    pub fn position(&self) -> Position {
        let mut pos = Position::new();
        for (origin, state) in &self.origins {
            pos.set(*origin, state.head);
        }
        pos
    }

    /// [`Self::position`] encoded, cached until the next change (a push
    /// frame's `pos` is encoded once per core, not per recipient).
    pub fn position_text(&mut self) -> Arc<str> {
        if let Some(text) = &self.pos_text {
            return text.clone();
        }
        let text: Arc<str> = self.position().encode().into();
        self.pos_text = Some(text.clone());
        text
    }

    /// Plans a resume of `uid` (member of `rooms`) from `since`. `Wait`
    /// when `since` is ahead of this core (see [`ResumePlan::Wait`]).
    pub fn plan_resume(&self, uid: &str, rooms: &[&str], since: &Position) -> ResumePlan {
        let ahead = since
            .iter()
            .any(|(origin, seq)| match self.origins.get(&origin) {
                Some(state) => seq > state.head,
                None => true,
            });
        if ahead {
            ResumePlan::Wait
        } else {
            ResumePlan::Ready(self.plan_resume_now(uid, rooms, since))
        }
    }

    /// Plans a resume with what this core has now (after waiting enough):
    /// what `since` names beyond this core's knowledge makes it unproven.
    pub fn plan_resume_now(&self, uid: &str, rooms: &[&str], since: &Position) -> Resume {
        let mut recovered = since.iter().all(|(origin, seq)| {
            self.origins
                .get(&origin)
                .is_some_and(|state| seq <= state.head)
        });
        for (origin, state) in &self.origins {
            if since.get(*origin) < state.floor {
                recovered = false;
            }
        }
        let mut numbers: Vec<u64> = Vec::new();
        let mut take = |list: Option<&VecDeque<u64>>| {
            for &number in list.into_iter().flatten() {
                if let Some(entry) = self.entry(number)
                    && entry.seq > since.get(entry.origin)
                {
                    numbers.push(number);
                }
            }
        };
        take(self.by_user.get(uid));
        for room in rooms {
            take(self.by_room.get(*room));
        }
        take(Some(&self.broadcasts));
        numbers.sort_unstable();
        numbers.dedup();
        if numbers.len() > REPLAY_PUSHES_MAX {
            numbers.truncate(REPLAY_PUSHES_MAX);
            recovered = false;
        }
        Resume {
            entries: numbers,
            recovered,
            pos: self.position(),
        }
    }
}

fn index(map: &mut HashMap<Box<str>, VecDeque<u64>>, name: &str, number: u64) {
    match map.get_mut(name) {
        Some(list) => {
            if list.back() != Some(&number) {
                list.push_back(number);
            }
        }
        None => {
            map.insert(name.into(), VecDeque::from([number]));
        }
    }
}

fn unindex(map: &mut HashMap<Box<str>, VecDeque<u64>>, name: &str, number: u64) {
    if let Some(list) = map.get_mut(name) {
        if list.front() == Some(&number) {
            list.pop_front();
        }
        if list.is_empty() {
            map.remove(name);
        }
    }
}
