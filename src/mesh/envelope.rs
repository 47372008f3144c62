//! The mesh wire format: envelopes (one push or membership change each)
//! packed into batches, one batch per ZeroMQ message.
//!
//! A batch is a small fixed header ([`HEADER`]: magic and version, so bytes
//! from anything else are recognised and refused) followed by an rkyv 0.8
//! archive of [`Batch`]. The origin node and its per-process incarnation are
//! written once per batch, not once per envelope: every envelope of a batch
//! comes from the node that sent it. Decoding copies the archive into an
//! aligned buffer and validates it with bytecheck before any field is read,
//! so corrupt or foreign bytes are an [`EnvelopeError`], never a panic or an
//! out-of-bounds read.

use bytes::Bytes;
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::util::AlignedVec;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::with::{ArchiveWith, DeserializeWith, SerializeWith};
use rkyv::{Archive, Deserialize, Place, Serialize};

use crate::push::{ContentKind, Target};

/// First bytes of every batch: "CCMB" (corecast mesh batch).
pub const MAGIC: [u8; 4] = *b"CCMB";

/// Wire format version; a receiver refuses any other.
pub const VERSION: u16 = 2;

/// Bytes of the header before the archive. A multiple of 8 so that the
/// archive, written right after it, keeps the alignment rkyv laid it out
/// with (its widest field is a `u64`).
pub const HEADER_BYTES: usize = 8;

/// The header: magic, version (little endian), two reserved zero bytes.
pub const HEADER: [u8; HEADER_BYTES] = {
    let v = VERSION.to_le_bytes();
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], 0, 0]
};

const _: () = assert!(HEADER_BYTES.is_multiple_of(8));

/// Why a received message is not a batch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("message shorter than the batch header ({0} bytes)")]
    Short(usize),
    #[error("not a corecast mesh batch (bad magic)")]
    Magic,
    #[error("unsupported mesh batch version {0}")]
    Version(u16),
    #[error("a mesh batch is one ZeroMQ frame, got {0}")]
    Frames(usize),
    #[error("invalid batch archive: {0}")]
    Archive(String),
}

/// Where a push sits in its origin core's stream (DESIGN section 3.1):
/// the origin node's incarnation, the core that accepted it and that
/// core's seq, from 1 with no holes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Stamp {
    pub incarnation: u64,
    pub core: u16,
    pub seq: u64,
}

/// An `Idempotency-Key` with the API key that scopes it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct KeyRef {
    pub scope: u64,
    pub key: String,
}

/// One push (or membership change) accepted on its origin node.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Envelope {
    /// Per-origin (per-incarnation) sequence number, from 1, no holes at the
    /// origin: a hole seen by a receiver is a lost envelope.
    pub seq: u64,
    /// Cluster-unique message id.
    pub id: String,
    pub target: Target,
    pub kind: ContentKind,
    #[rkyv(with = BytesAsVec)]
    pub payload: Bytes,
    /// When the origin accepted it, microseconds since the Unix epoch.
    pub created_at_us: u64,
    /// A push's place in its origin core's stream; none for membership
    /// changes and disconnects.
    pub stamp: Option<Stamp>,
    /// The push's `Idempotency-Key`, so every node remembers it.
    pub idempotency: Option<KeyRef>,
}

/// Envelopes from one origin, in sequence order, sent as one ZeroMQ message.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Batch {
    /// The origin's node id.
    pub origin: String,
    /// Random per process: a restarted origin (sequence back to 1) has a new
    /// incarnation, which is how receivers tell a restart from a gap.
    pub incarnation: u64,
    pub envelopes: Vec<Envelope>,
}

/// Archives [`Bytes`] as a plain byte vector (rkyv has no `bytes` support
/// without a feature), so payloads are serialized without a copy into a
/// `Vec` first.
pub struct BytesAsVec;

impl ArchiveWith<Bytes> for BytesAsVec {
    type Archived = ArchivedVec<u8>;
    type Resolver = VecResolver;

    fn resolve_with(field: &Bytes, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(field.len(), resolver, out);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> SerializeWith<Bytes, S> for BytesAsVec {
    fn serialize_with(field: &Bytes, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::<u8>::serialize_from_slice(field.as_ref(), serializer)
    }
}

impl<D: Fallible + ?Sized> DeserializeWith<ArchivedVec<u8>, Bytes, D> for BytesAsVec {
    fn deserialize_with(field: &ArchivedVec<u8>, _: &mut D) -> Result<Bytes, D::Error> {
        Ok(Bytes::copy_from_slice(field.as_slice()))
    }
}

/// A rough upper bound of the archived size of one envelope, used to cut
/// batches near [`super::MESH_BATCH_BYTES_MAX`] without serializing twice.
pub fn estimated_bytes(id: &str, target: &Target, payload_len: usize) -> usize {
    // Fixed part: seq, created_at, kind, the stamp, relative pointers,
    // padding; an idempotency key adds at most its own bytes and a pointer
    // (see `IDEMPOTENCY_KEY_BYTES_MAX`, counted here in full).
    const FIXED: usize = 96 + crate::history::idempotency::IDEMPOTENCY_KEY_BYTES_MAX;
    // Per name in a target: a relative pointer and a length, plus padding.
    const PER_NAME: usize = 12;
    let target_bytes = match target {
        Target::User(uid) | Target::Room(uid) => uid.len() + PER_NAME,
        Target::Users(uids) => uids.iter().map(|u| u.len() + PER_NAME).sum::<usize>() + 8,
        Target::Broadcast => 0,
        Target::RoomJoin { room, uid } | Target::RoomLeave { room, uid } => {
            room.len() + uid.len() + 2 * PER_NAME
        }
        Target::Disconnect { uid } => uid.len() + PER_NAME,
    };
    FIXED + id.len() + target_bytes + payload_len
}

/// Serializes a batch behind the header.
pub fn encode(batch: &Batch) -> Result<AlignedVec, EnvelopeError> {
    let mut out = AlignedVec::<16>::with_capacity(HEADER_BYTES + 256);
    out.extend_from_slice(&HEADER);
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(batch, out)
        .map_err(|e| EnvelopeError::Archive(e.to_string()))
}

/// Checks the header and returns the archive bytes after it.
pub fn strip_header(message: &[u8]) -> Result<&[u8], EnvelopeError> {
    if message.len() < HEADER_BYTES {
        return Err(EnvelopeError::Short(message.len()));
    }
    let (header, body) = message.split_at(HEADER_BYTES);
    if header[..4] != MAGIC {
        return Err(EnvelopeError::Magic);
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != VERSION {
        return Err(EnvelopeError::Version(version));
    }
    Ok(body)
}

/// Validates received bytes into an archived batch, reusing one aligned
/// buffer (one per receiving task: no allocation per message once warm).
#[derive(Default)]
pub struct Decoder {
    aligned: AlignedVec<16>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The archived batch in `message` (header included), checked.
    pub fn decode<'a>(&'a mut self, message: &[u8]) -> Result<&'a ArchivedBatch, EnvelopeError> {
        let body = strip_header(message)?;
        self.aligned.clear();
        self.aligned.extend_from_slice(body);
        rkyv::access::<ArchivedBatch, rkyv::rancor::Error>(&self.aligned)
            .map_err(|e| EnvelopeError::Archive(e.to_string()))
    }
}

/// Decodes a whole batch into owned values (tests and tools; the mesh reads
/// the archive in place with [`Decoder`]).
pub fn decode_owned(message: &[u8]) -> Result<Batch, EnvelopeError> {
    let body = strip_header(message)?;
    let mut aligned = AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    rkyv::from_bytes::<Batch, rkyv::rancor::Error>(&aligned)
        .map_err(|e| EnvelopeError::Archive(e.to_string()))
}

impl ArchivedEnvelope {
    /// The stamp as an owned value.
    pub fn stamp_owned(&self) -> Option<Stamp> {
        self.stamp.as_ref().map(|s| Stamp {
            incarnation: s.incarnation.to_native(),
            core: s.core.to_native(),
            seq: s.seq.to_native(),
        })
    }

    /// The idempotency key as an owned value.
    pub fn idempotency_owned(&self) -> Option<KeyRef> {
        self.idempotency.as_ref().map(|k| KeyRef {
            scope: k.scope.to_native(),
            key: k.key.as_str().to_owned(),
        })
    }

    /// The target as an owned value.
    pub fn target_owned<E: Source>(&self) -> Result<Target, E> {
        rkyv::deserialize::<Target, E>(&self.target)
    }

    /// The content kind as an owned value.
    pub fn kind_owned(&self) -> ContentKind {
        match self.kind {
            crate::ws::frame::ArchivedContentKind::Json => ContentKind::Json,
            crate::ws::frame::ArchivedContentKind::Text => ContentKind::Text,
            crate::ws::frame::ArchivedContentKind::Binary => ContentKind::Binary,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    fn sample() -> Batch {
        let targets = [
            Target::User("alice".into()),
            Target::Users(vec!["bob".into(), "carol".into()]),
            Target::Room("lobby".into()),
            Target::Broadcast,
            Target::RoomJoin {
                room: "r".into(),
                uid: "dave".into(),
            },
            Target::RoomLeave {
                room: "r".into(),
                uid: "dave".into(),
            },
            Target::Disconnect { uid: "erin".into() },
        ];
        let kinds = [ContentKind::Json, ContentKind::Text, ContentKind::Binary];
        Batch {
            origin: "node-a".into(),
            incarnation: 0xdead_beef,
            envelopes: targets
                .into_iter()
                .enumerate()
                .map(|(i, target)| Envelope {
                    seq: i as u64 + 1,
                    id: format!("abc-{i}"),
                    target,
                    kind: kinds[i % 3],
                    payload: Bytes::from(vec![i as u8; i * 7]),
                    created_at_us: 1_700_000_000_000_000 + i as u64,
                    stamp: (i % 2 == 0).then_some(Stamp {
                        incarnation: 77,
                        core: i as u16,
                        seq: i as u64 + 1,
                    }),
                    idempotency: (i % 3 == 0).then(|| KeyRef {
                        scope: 9,
                        key: format!("k{i}"),
                    }),
                })
                .collect(),
        }
    }

    #[test]
    fn a_batch_round_trips() {
        let batch = sample();
        let bytes = encode(&batch).expect("encode");
        assert_eq!(&bytes[..HEADER_BYTES], &HEADER);
        assert_eq!(decode_owned(&bytes).expect("decode"), batch);

        let mut decoder = Decoder::new();
        let archived = decoder.decode(&bytes).expect("access");
        assert_eq!(archived.origin.as_str(), "node-a");
        assert_eq!(archived.incarnation.to_native(), 0xdead_beef);
        for (a, e) in archived.envelopes.iter().zip(&batch.envelopes) {
            assert_eq!(a.seq.to_native(), e.seq);
            assert_eq!(a.id.as_str(), e.id);
            assert_eq!(a.target_owned::<rkyv::rancor::Error>().unwrap(), e.target);
            assert_eq!(a.kind_owned(), e.kind);
            assert_eq!(a.payload.as_slice(), &e.payload[..]);
            assert_eq!(a.created_at_us.to_native(), e.created_at_us);
            assert_eq!(a.stamp_owned(), e.stamp);
            assert_eq!(a.idempotency_owned(), e.idempotency);
        }
    }

    #[test]
    fn an_empty_batch_round_trips() {
        let batch = Batch {
            origin: String::new(),
            incarnation: 0,
            envelopes: Vec::new(),
        };
        assert_eq!(decode_owned(&encode(&batch).unwrap()).unwrap(), batch);
    }

    #[test]
    fn the_estimate_bounds_the_archived_size() {
        let batch = sample();
        let estimate: usize = batch
            .envelopes
            .iter()
            .map(|e| estimated_bytes(&e.id, &e.target, e.payload.len()))
            .sum();
        let actual = encode(&batch).unwrap().len() - HEADER_BYTES;
        assert!(
            actual <= estimate + 64,
            "actual {actual}, estimate {estimate}"
        );
    }

    #[test]
    fn foreign_bytes_are_refused() {
        assert_eq!(decode_owned(b"").unwrap_err(), EnvelopeError::Short(0));
        assert_eq!(decode_owned(b"CCMB").unwrap_err(), EnvelopeError::Short(4));
        assert_eq!(
            decode_owned(b"HTTP/1.1 200 OK\r\n").unwrap_err(),
            EnvelopeError::Magic
        );
        let mut bytes = encode(&sample()).unwrap().to_vec();
        bytes[4] = 1;
        assert_eq!(
            decode_owned(&bytes).unwrap_err(),
            EnvelopeError::Version(1),
            "a node of the previous wire format is refused, not misread"
        );
        // A valid header with a garbage body.
        let mut junk = HEADER.to_vec();
        junk.extend_from_slice(&[0xff; 64]);
        assert!(matches!(
            Decoder::new().decode(&junk),
            Err(EnvelopeError::Archive(_))
        ));
    }

    #[test]
    fn random_and_damaged_bytes_never_panic() {
        let good = encode(&sample()).unwrap().to_vec();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut decoder = Decoder::new();
        let mut accepted = 0u32;
        // Every truncation of a good batch.
        for len in 0..good.len() {
            if decoder.decode(&good[..len]).is_ok() {
                accepted += 1;
            }
        }
        // Random bit flips and byte overwrites in the archive.
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(HEADER_BYTES..bytes.len());
                if rng.random_bool(0.5) {
                    bytes[at] ^= 1 << rng.random_range(0..8);
                } else {
                    bytes[at] = rng.random();
                }
            }
            if let Ok(batch) = decoder.decode(&bytes) {
                // Whatever validates must be readable without panicking.
                for e in batch.envelopes.iter() {
                    let _ = e.target_owned::<rkyv::rancor::Error>();
                    let _ = (e.id.as_str().len(), e.payload.len(), e.kind_owned());
                }
                accepted += 1;
            }
        }
        // Pure random bytes behind a valid header.
        for _ in 0..20_000 {
            let mut bytes = HEADER.to_vec();
            let mut body = vec![0u8; rng.random_range(0..512)];
            rng.fill_bytes(&mut body);
            bytes.extend_from_slice(&body);
            let _ = decoder.decode(&bytes);
        }
        // Some flips land in payload bytes and still validate; that is fine.
        assert!(accepted < 20_000 + good.len() as u32);
    }
}
