//! The mesh wire format: a batch of rkyv-archived envelopes in one ZeroMQ
//! message, recognised by a magic number and validated by rkyv's checked
//! access, so corrupt or foreign bytes are an error value, never a panic.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::push::{ContentKind, Target};

/// "CCST": the first field of every batch this version writes.
pub const BATCH_MAGIC: u32 = 0x4343_5354;
pub const BATCH_VERSION: u16 = 1;

/// One push or membership change crossing the mesh.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Envelope {
    /// The node that accepted it.
    pub origin: String,
    /// Random per process of the origin: a restarted origin starts a new
    /// sequence.
    pub incarnation: u64,
    /// Per-origin sequence number (1, 2, ...): gaps are lost envelopes.
    pub seq: u64,
    pub id: String,
    pub target: Target,
    pub kind: ContentKind,
    pub payload: Vec<u8>,
    pub created_at_us: u64,
}

/// Many envelopes in one ZeroMQ message.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Batch {
    pub magic: u32,
    pub version: u16,
    pub envelopes: Vec<Envelope>,
}

/// Bytes on the mesh port that are not a batch of ours.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid envelope batch: {0}")]
    Invalid(String),
    #[error("foreign batch (magic {magic:#x}, version {version})")]
    Foreign { magic: u32, version: u16 },
}

pub fn encode(envelopes: Vec<Envelope>) -> Vec<u8> {
    let batch = Batch {
        magic: BATCH_MAGIC,
        version: BATCH_VERSION,
        envelopes,
    };
    rkyv::to_bytes::<rancor::Error>(&batch)
        .expect("serializing owned data to memory cannot fail")
        .into_vec()
}

pub fn decode(bytes: &[u8]) -> Result<Batch, DecodeError> {
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let batch = rkyv::from_bytes::<Batch, rancor::Error>(&aligned)
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if batch.magic != BATCH_MAGIC || batch.version != BATCH_VERSION {
        return Err(DecodeError::Foreign {
            magic: batch.magic,
            version: batch.version,
        });
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(seq: u64) -> Envelope {
        Envelope {
            origin: "a".into(),
            incarnation: 7,
            seq,
            id: format!("id-{seq}"),
            target: Target::Users(vec!["u1".into(), "u2".into()]),
            kind: ContentKind::Json,
            payload: b"{\"x\":1}".to_vec(),
            created_at_us: 42,
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(vec![envelope(1), envelope(2)]);
        let batch = decode(&bytes).unwrap();
        assert_eq!(batch.envelopes, vec![envelope(1), envelope(2)]);
    }

    #[test]
    fn garbage_and_truncations_are_errors() {
        let bytes = encode(vec![envelope(1)]);
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        let mut state = 0x1234_5678u64;
        for len in 0..2000 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            assert!(decode(&junk).is_err() || len > 16);
        }
        let mut flipped = bytes.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = decode(&flipped);
            flipped[i] ^= 0xff;
        }
    }
}
