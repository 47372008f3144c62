//! Idempotent publish: `Idempotency-Key` -> the first push's id.
//!
//! A key is scoped by the API key that sent it ([`crate::auth::ApiKeys::scope`]:
//! the same on every node; two tenants may use the same
//! key) and remembered for `[history] idempotency_ttl_ms`. Each core keeps
//! the keys whose [`key_core`] it is, so one key has one owner per node; the
//! key travels in the mesh envelope and every node records it, so a retry at
//! another node finds the first id there. Bounded: a full table of unexpired
//! keys refuses new keys (the API answers 503) rather than forgetting one
//! and delivering twice.

use std::collections::{HashMap, VecDeque};

/// Longest `Idempotency-Key` accepted, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyError {
    #[error("Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters")]
    BadKey,
    #[error("too many idempotency keys remembered; retry later")]
    Full,
}

/// Checks the header value: visible ASCII, bounded.
pub fn validate_key(key: &str) -> Result<(), IdempotencyError> {
    let ok = !key.is_empty()
        && key.len() <= IDEMPOTENCY_KEY_BYTES_MAX
        && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(IdempotencyError::BadKey)
    }
}

/// The core that owns `key` of `scope`.
pub fn key_core(scope: u64, key: &str, cores: usize) -> usize {
    let mut hash = scope;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % cores.max(1) as u64) as usize
}

/// What a key says about a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use: deliver, and answer with the new id.
    Fresh,
    /// Seen within the ttl: do not deliver; answer with this id.
    Seen(String),
}

/// One core's remembered keys.
#[derive(Debug)]
pub struct IdempotencyTable {
    ttl_ms: u64,
    keys_max: usize,
    keys: HashMap<(u64, Box<str>), (String, u64)>,
    /// Insertion order with expiry, to drop the expired oldest first.
    order: VecDeque<(u64, (u64, Box<str>))>,
}

impl IdempotencyTable {
    pub fn new(ttl_ms: u64, keys_max: usize) -> Self {
        Self {
            ttl_ms,
            keys_max,
            keys: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Looks `key` up without recording it.
    pub fn lookup(&mut self, scope: u64, key: &str, now_ms: u64) -> Claim {
        self.expire(now_ms);
        match self.keys.get(&(scope, Box::from(key))) {
            Some((id, _)) => Claim::Seen(id.clone()),
            None => Claim::Fresh,
        }
    }

    /// Records `key` -> `id` unless the key is already known (then the
    /// first id wins and is returned as `Seen`).
    pub fn claim(
        &mut self,
        scope: u64,
        key: &str,
        id: &str,
        now_ms: u64,
    ) -> Result<Claim, IdempotencyError> {
        validate_key(key)?;
        if let Claim::Seen(first) = self.lookup(scope, key, now_ms) {
            return Ok(Claim::Seen(first));
        }
        if self.keys.len() >= self.keys_max {
            return Err(IdempotencyError::Full);
        }
        let expires = now_ms.saturating_add(self.ttl_ms);
        let k: (u64, Box<str>) = (scope, key.into());
        self.keys.insert(k.clone(), (id.to_string(), expires));
        self.order.push_back((expires, k));
        Ok(Claim::Fresh)
    }

    /// Forgets a key (its push was refused after the claim): a retry is
    /// then a fresh push. Its place in the expiry order goes with its ttl.
    pub fn forget(&mut self, scope: u64, key: &str) {
        self.keys.remove(&(scope, Box::from(key)));
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now_ms {
                break;
            }
            if let Some((expires, k)) = self.order.pop_front() {
                // A key forgotten and claimed again has a later expiry of
                // its own: only the entry this order slot made goes.
                if self.keys.get(&k).is_some_and(|(_, at)| *at == expires) {
                    self.keys.remove(&k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_id_wins_within_the_ttl() {
        let mut t = IdempotencyTable::new(1_000, 10);
        assert_eq!(t.claim(1, "k", "id-1", 0), Ok(Claim::Fresh));
        assert_eq!(t.claim(1, "k", "id-2", 999), Ok(Claim::Seen("id-1".into())));
        assert_eq!(t.lookup(1, "k", 999), Claim::Seen("id-1".into()));
        assert_eq!(t.claim(1, "k", "id-3", 1_000), Ok(Claim::Fresh));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn scoped_by_api_key() {
        let mut t = IdempotencyTable::new(1_000, 10);
        let keys = crate::auth::ApiKeys::new(&["key-a".into(), "key-b".into()]);
        let (a, b) = (keys.scope(0), keys.scope(1));
        assert_ne!(a, b);
        assert_eq!(t.claim(a, "k", "id-a", 0), Ok(Claim::Fresh));
        assert_eq!(t.claim(b, "k", "id-b", 0), Ok(Claim::Fresh));
        assert_eq!(t.lookup(b, "k", 1), Claim::Seen("id-b".into()));
    }

    #[test]
    fn full_refuses_until_keys_expire() {
        let mut t = IdempotencyTable::new(100, 2);
        t.claim(1, "a", "1", 0).unwrap();
        t.claim(1, "b", "2", 50).unwrap();
        assert_eq!(t.claim(1, "c", "3", 99), Err(IdempotencyError::Full));
        // A known key still answers while full.
        assert_eq!(t.claim(1, "b", "9", 99), Ok(Claim::Seen("2".into())));
        assert_eq!(t.claim(1, "c", "3", 100), Ok(Claim::Fresh));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn keys_are_validated() {
        assert_eq!(validate_key(""), Err(IdempotencyError::BadKey));
        assert_eq!(validate_key("a b"), Err(IdempotencyError::BadKey));
        assert_eq!(validate_key("é"), Err(IdempotencyError::BadKey));
        assert_eq!(
            validate_key(&"k".repeat(IDEMPOTENCY_KEY_BYTES_MAX + 1)),
            Err(IdempotencyError::BadKey)
        );
        assert!(validate_key(&"k".repeat(IDEMPOTENCY_KEY_BYTES_MAX)).is_ok());
        let mut t = IdempotencyTable::new(1, 1);
        assert_eq!(t.claim(1, "a\nb", "1", 0), Err(IdempotencyError::BadKey));
    }

    #[test]
    fn key_owner_is_stable_and_in_range() {
        for cores in 1..6 {
            let c = key_core(7, "order-42", cores);
            assert!(c < cores);
            assert_eq!(c, key_core(7, "order-42", cores));
        }
    }
}
