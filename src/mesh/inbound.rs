//! What a node does with a received batch, with no sockets and no clock:
//! validate it, drop this node's own envelopes and duplicates, track each
//! origin's sequence (gaps are lost envelopes, a new incarnation is a
//! restart, not a gap), record hop latency and hand the rest to the node.
//!
//! All state is bounded: the duplicate filter remembers the last
//! [`MESH_DEDUP_IDS`] message ids, the sequence table at most
//! [`MESH_ORIGINS_MAX`] origins.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use super::envelope::{Decoder, EnvelopeError};
use super::metrics::{DropReason, MeshMetrics};
use super::{MESH_DEDUP_IDS, MESH_ORIGINS_MAX, Received};

/// A `Hasher` for keys that are already uniformly random 64-bit hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The last `capacity` message ids seen, as keyed 64-bit hashes (SipHash
/// with a per-process random key): a ring for age, a set for lookup. A false
/// "duplicate" needs a 64-bit collision with one of the remembered ids:
/// about 65,536 / 2^64 per envelope.
pub struct RecentIds {
    keys: RandomState,
    ring: VecDeque<u64>,
    set: HashSet<u64, BuildHasherDefault<PassThrough>>,
    capacity: usize,
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        Self {
            keys: RandomState::new(),
            ring: VecDeque::with_capacity(capacity),
            set: HashSet::with_capacity_and_hasher(capacity, BuildHasherDefault::default()),
            capacity: capacity.max(1),
        }
    }

    /// Remembers `id`; false if it was already remembered.
    pub fn insert(&mut self, id: &str) -> bool {
        let key = self.keys.hash_one(id);
        if !self.set.insert(key) {
            return false;
        }
        if self.ring.len() == self.capacity
            && let Some(oldest) = self.ring.pop_front()
        {
            self.set.remove(&oldest);
        }
        self.ring.push_back(key);
        true
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

/// What a sequence number says about the envelopes before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqEvent {
    /// The next one, or the first seen from this origin.
    InOrder,
    /// This many envelopes between the last one seen and this one are lost.
    Gap(u64),
    /// The origin restarted (new incarnation): tracking starts over.
    Restart,
    /// At or before the last one seen (a late copy through another address).
    Late,
    /// Not tracked: the table of origins is full.
    Untracked,
}

struct OriginSeq {
    incarnation: u64,
    last: u64,
}

/// Last sequence number seen per origin node.
pub struct Sequences {
    origins: HashMap<String, OriginSeq>,
    capacity: usize,
}

impl Sequences {
    pub fn new(capacity: usize) -> Self {
        Self {
            origins: HashMap::new(),
            capacity,
        }
    }

    pub fn observe(&mut self, origin: &str, incarnation: u64, seq: u64) -> SeqEvent {
        let Some(state) = self.origins.get_mut(origin) else {
            if self.origins.len() >= self.capacity {
                return SeqEvent::Untracked;
            }
            self.origins.insert(
                origin.to_owned(),
                OriginSeq {
                    incarnation,
                    last: seq,
                },
            );
            return SeqEvent::InOrder;
        };
        if state.incarnation != incarnation {
            *state = OriginSeq {
                incarnation,
                last: seq,
            };
            return SeqEvent::Restart;
        }
        if seq <= state.last {
            return SeqEvent::Late;
        }
        let missing = seq - state.last - 1;
        state.last = seq;
        if missing == 0 {
            SeqEvent::InOrder
        } else {
            SeqEvent::Gap(missing)
        }
    }
}

/// The receive side of one node's mesh.
pub struct Inbound {
    node_id: String,
    decoder: Decoder,
    recent: RecentIds,
    sequences: Sequences,
    hops_us: Vec<u64>,
    deliver: Box<dyn Fn(Received) + Send>,
    metrics: Arc<MeshMetrics>,
}

impl Inbound {
    pub fn new(
        node_id: &str,
        deliver: Box<dyn Fn(Received) + Send>,
        metrics: Arc<MeshMetrics>,
    ) -> Self {
        Self {
            node_id: node_id.to_owned(),
            decoder: Decoder::new(),
            recent: RecentIds::new(MESH_DEDUP_IDS),
            sequences: Sequences::new(MESH_ORIGINS_MAX),
            hops_us: Vec::new(),
            deliver,
            metrics,
        }
    }

    /// A ZeroMQ message that is not one frame: counted as corrupt.
    pub fn handle_malformed(&mut self, frames: usize, bytes: usize) -> EnvelopeError {
        self.metrics.count_in_bytes(bytes as u64);
        self.metrics.count_drop(DropReason::Corrupt, 1);
        EnvelopeError::Frames(frames)
    }

    /// Handles one received batch; `now_us` is this node's wall clock
    /// (microseconds since the Unix epoch). Returns how many envelopes were
    /// delivered.
    pub fn handle(&mut self, message: &[u8], now_us: u64) -> Result<usize, EnvelopeError> {
        self.handle_from(None, message, now_us)
    }

    /// [`Self::handle`] for a batch that arrived through `peer` (the
    /// configured address of the SUB connection): sequence gaps are also
    /// counted as lost for that peer.
    pub fn handle_from(
        &mut self,
        peer: Option<&str>,
        message: &[u8],
        now_us: u64,
    ) -> Result<usize, EnvelopeError> {
        let Self {
            node_id,
            decoder,
            recent,
            sequences,
            hops_us,
            deliver,
            metrics,
        } = self;
        metrics.count_in_bytes(message.len() as u64);
        let batch = match decoder.decode(message) {
            Ok(batch) => batch,
            Err(e) => {
                metrics.count_drop(DropReason::Corrupt, 1);
                return Err(e);
            }
        };
        let origin = batch.origin.as_str();
        if super::validate::check_origin(origin).is_err() {
            metrics.count_drop(DropReason::Invalid, batch.envelopes.len() as u64);
            return Ok(0);
        }
        if origin == node_id.as_str() {
            metrics.count_drop(DropReason::Own, batch.envelopes.len() as u64);
            return Ok(0);
        }
        let incarnation = batch.incarnation.to_native();
        let (mut delivered, mut duplicates, mut lost, mut corrupt, mut invalid) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        hops_us.clear();
        for envelope in batch.envelopes.iter() {
            let id = envelope.id.as_str();
            if !recent.insert(id) {
                duplicates += 1;
                continue;
            }
            match sequences.observe(origin, incarnation, envelope.seq.to_native()) {
                SeqEvent::Gap(n) => lost += n,
                SeqEvent::Restart => metrics.count_restart(),
                SeqEvent::InOrder | SeqEvent::Late | SeqEvent::Untracked => {}
            }
            // The archive was validated as a whole; a target that still fails
            // to deserialize is counted, never unwrapped.
            let Ok(target) = envelope.target_owned::<rkyv::rancor::Error>() else {
                corrupt += 1;
                continue;
            };
            let kind = envelope.kind_owned();
            let payload = envelope.payload.as_slice();
            if super::validate::check_envelope(id, &target, kind, payload).is_err() {
                invalid += 1;
                continue;
            }
            let stamp = envelope.stamp_owned();
            let idempotency = envelope.idempotency_owned();
            if super::validate::check_extras(stamp.as_ref(), idempotency.as_ref()).is_err() {
                invalid += 1;
                continue;
            }
            let created_at_us = envelope.created_at_us.to_native();
            hops_us.push(now_us.saturating_sub(created_at_us));
            deliver(Received {
                origin: origin.to_owned(),
                id: id.to_owned(),
                target,
                kind,
                payload: Bytes::copy_from_slice(payload),
                created_at_us,
                stamp,
                idempotency,
            });
            delivered += 1;
        }
        metrics.count_in_envelopes(delivered);
        if duplicates > 0 {
            metrics.count_drop(DropReason::Duplicate, duplicates);
        }
        if corrupt > 0 {
            metrics.count_drop(DropReason::Corrupt, corrupt);
        }
        if invalid > 0 {
            metrics.count_drop(DropReason::Invalid, invalid);
        }
        if lost > 0 {
            metrics.count_lost(lost);
            if let Some(peer) = peer {
                metrics.count_peer_lost(peer, lost);
            }
        }
        if !hops_us.is_empty() {
            metrics.record_hops(hops_us.iter().copied());
        }
        Ok(delivered as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::envelope::{Batch, Envelope, encode};
    use crate::push::{ContentKind, Target};
    use std::sync::Mutex;

    fn batch(origin: &str, incarnation: u64, seqs: &[u64]) -> Vec<u8> {
        let batch = Batch {
            origin: origin.into(),
            incarnation,
            envelopes: seqs
                .iter()
                .map(|&seq| Envelope {
                    seq,
                    id: format!("{origin}-{incarnation}-{seq}"),
                    target: Target::Room("r".into()),
                    kind: ContentKind::Text,
                    payload: Bytes::from(format!("m{seq}")),
                    created_at_us: 1_000,
                    stamp: None,
                    idempotency: None,
                })
                .collect(),
        };
        encode(&batch).unwrap().to_vec()
    }

    fn inbound() -> (Inbound, Arc<Mutex<Vec<Received>>>, Arc<MeshMetrics>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let metrics = Arc::new(MeshMetrics::new());
        let inbound = Inbound::new(
            "me",
            Box::new(move |r| sink.lock().unwrap().push(r)),
            metrics.clone(),
        );
        (inbound, got, metrics)
    }

    #[test]
    fn delivers_valid_envelopes_with_their_fields() {
        let (mut inbound, got, metrics) = inbound();
        assert_eq!(inbound.handle(&batch("a", 1, &[1, 2]), 1_250), Ok(2));
        let got = got.lock().unwrap();
        assert_eq!(got[0].origin, "a");
        assert_eq!(got[0].id, "a-1-1");
        assert_eq!(got[1].payload, Bytes::from("m2"));
        assert_eq!(got[1].target, Target::Room("r".into()));
        assert_eq!(got[1].kind, ContentKind::Text);
        assert_eq!(got[1].created_at_us, 1_000);
        let s = metrics.snapshot();
        assert_eq!(s.envelopes_in, 2);
        assert_eq!(s.hop_count, 2);
        assert_eq!(metrics.hop_latency_quantile_us(1.0), 250);
    }

    #[test]
    fn drops_its_own_envelopes() {
        let (mut inbound, got, metrics) = inbound();
        assert_eq!(inbound.handle(&batch("me", 1, &[1, 2, 3]), 0), Ok(0));
        assert!(got.lock().unwrap().is_empty());
        assert_eq!(metrics.snapshot().drops(DropReason::Own), 3);
    }

    #[test]
    fn drops_duplicates_by_id() {
        let (mut inbound, got, metrics) = inbound();
        let b = batch("a", 1, &[1, 2, 3]);
        assert_eq!(inbound.handle(&b, 0), Ok(3));
        assert_eq!(inbound.handle(&b, 0), Ok(0));
        assert_eq!(inbound.handle(&batch("a", 1, &[3, 4]), 0), Ok(1));
        assert_eq!(got.lock().unwrap().len(), 4);
        let s = metrics.snapshot();
        assert_eq!(s.drops(DropReason::Duplicate), 4);
        assert_eq!(s.lost, 0, "a duplicate copy is not a gap");
    }

    #[test]
    fn the_duplicate_filter_is_bounded() {
        let mut recent = RecentIds::new(4);
        for i in 0..10 {
            assert!(recent.insert(&format!("id{i}")));
        }
        assert_eq!(recent.len(), 4);
        assert!(!recent.insert("id9"));
        assert!(recent.insert("id0"), "forgotten after capacity newer ids");
    }

    #[test]
    fn counts_gaps_as_lost() {
        let (mut inbound, got, metrics) = inbound();
        inbound.handle(&batch("a", 1, &[1, 2]), 0).unwrap();
        inbound.handle(&batch("a", 1, &[5, 6]), 0).unwrap();
        inbound.handle(&batch("b", 9, &[100]), 0).unwrap();
        inbound.handle(&batch("b", 9, &[101, 110]), 0).unwrap();
        assert_eq!(metrics.snapshot().lost, 2 + 8);
        assert_eq!(got.lock().unwrap().len(), 7);
    }

    #[test]
    fn a_restarted_origin_is_not_a_gap() {
        let (mut inbound, got, metrics) = inbound();
        inbound.handle(&batch("a", 1, &[1, 2, 3, 4, 5]), 0).unwrap();
        // New process: sequence back to 1, new incarnation, new ids.
        inbound.handle(&batch("a", 2, &[1, 2]), 0).unwrap();
        inbound.handle(&batch("a", 2, &[4]), 0).unwrap();
        let s = metrics.snapshot();
        assert_eq!(s.restarts, 1);
        assert_eq!(s.lost, 1);
        assert_eq!(got.lock().unwrap().len(), 8);
    }

    #[test]
    fn late_copies_are_delivered_once_and_not_counted() {
        let mut seqs = Sequences::new(8);
        assert_eq!(seqs.observe("a", 1, 10), SeqEvent::InOrder);
        assert_eq!(seqs.observe("a", 1, 12), SeqEvent::Gap(1));
        assert_eq!(seqs.observe("a", 1, 11), SeqEvent::Late);
        assert_eq!(seqs.observe("a", 1, 13), SeqEvent::InOrder);
    }

    #[test]
    fn the_origin_table_is_bounded() {
        let mut seqs = Sequences::new(2);
        assert_eq!(seqs.observe("a", 1, 1), SeqEvent::InOrder);
        assert_eq!(seqs.observe("b", 1, 1), SeqEvent::InOrder);
        assert_eq!(seqs.observe("c", 1, 1), SeqEvent::Untracked);
        assert_eq!(seqs.observe("a", 1, 3), SeqEvent::Gap(1));
    }

    #[test]
    fn invalid_envelopes_and_origins_are_counted_not_delivered() {
        let (mut inbound, got, metrics) = inbound();
        let envelope = |seq: u64, target: Target, kind, payload: &'static [u8]| Envelope {
            seq,
            id: format!("x-{seq}"),
            target,
            kind,
            payload: Bytes::from_static(payload),
            created_at_us: 0,
            stamp: None,
            idempotency: None,
        };
        let forged = Batch {
            origin: "a".into(),
            incarnation: 1,
            envelopes: vec![
                envelope(1, Target::User("a\nb".into()), ContentKind::Text, b"x"),
                envelope(2, Target::User("ok".into()), ContentKind::Text, &[0xff]),
                envelope(3, Target::User("ok".into()), ContentKind::Json, b"{oops"),
                envelope(4, Target::Users(Vec::new()), ContentKind::Text, b"x"),
                envelope(5, Target::User("ok".into()), ContentKind::Json, b"[1]"),
            ],
        };
        assert_eq!(inbound.handle(&encode(&forged).unwrap(), 0), Ok(1));
        let long_origin = Batch {
            origin: "o".repeat(crate::limits::NAME_BYTES_MAX + 1),
            ..forged
        };
        assert_eq!(inbound.handle(&encode(&long_origin).unwrap(), 0), Ok(0));
        assert_eq!(got.lock().unwrap().len(), 1);
        assert_eq!(metrics.snapshot().drops(DropReason::Invalid), 4 + 5);
    }

    #[test]
    fn corrupt_messages_are_counted_not_delivered() {
        let (mut inbound, got, metrics) = inbound();
        assert!(inbound.handle(b"garbage", 0).is_err());
        let mut truncated = batch("a", 1, &[1, 2]);
        truncated.truncate(truncated.len() - 3);
        assert!(inbound.handle(&truncated, 0).is_err());
        inbound.handle_malformed(2, 10);
        assert!(got.lock().unwrap().is_empty());
        assert_eq!(metrics.snapshot().drops(DropReason::Corrupt), 3);
    }
}
