//! Push budgets, with no sockets and a `now` passed in: token buckets per
//! API key and for the node (`[limits] key_pushes_per_sec_max`,
//! `node_pushes_per_sec_max`), refused as 429 with `Retry-After`.
//!
//! Each core owns its own [`PushBudgets`] holding `1/cores` of every rate,
//! so no lock and no cache line is shared between cores on the push path.
//! The price: one client connection lands on one core and so gets that
//! core's share; a client that needs a key's whole budget spreads its
//! requests over several connections (the kernel spreads connections over
//! cores with `SO_REUSEPORT`).

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, at most `capacity` saved.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_per_sec: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate_per_sec` tokens per second with a burst of one
    /// second (at least one token, so a rate below one per second still
    /// lets a push through now and then).
    pub fn new(rate_per_sec: f64, now: Instant) -> Self {
        let capacity = rate_per_sec.max(1.0);
        Self {
            rate_per_sec,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.capacity);
        self.last = now;
    }

    /// `Ok` if a token is there now; else how long until one is.
    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            Ok(())
        } else if self.rate_per_sec <= 0.0 {
            Err(Duration::MAX)
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.rate_per_sec,
            ))
        }
    }

    /// Takes one token; call after [`TokenBucket::check`] said `Ok`.
    pub fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

/// Which budget refused a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverBudget {
    /// The API key's share on this core is spent.
    Key { retry_after: Duration },
    /// The node's share on this core is spent.
    Node { retry_after: Duration },
}

impl OverBudget {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(self) -> u64 {
        let (OverBudget::Key { retry_after } | OverBudget::Node { retry_after }) = self;
        let secs = retry_after
            .as_secs()
            .saturating_add(u64::from(retry_after.subsec_nanos() > 0));
        secs.clamp(1, RETRY_AFTER_SECS_MAX)
    }
}

/// Largest `Retry-After` answered, in seconds.
pub const RETRY_AFTER_SECS_MAX: u64 = 60;

/// One core's share of the push budgets: a bucket per configured API key
/// (by index) and one for the node. A rate of 0 means no budget.
#[derive(Debug)]
pub struct PushBudgets {
    keys: Vec<Option<TokenBucket>>,
    node: Option<TokenBucket>,
}

impl PushBudgets {
    /// Budgets for `keys` API keys on one of `cores` executors.
    pub fn new(
        key_per_sec: u32,
        node_per_sec: u32,
        keys: usize,
        cores: usize,
        now: Instant,
    ) -> Self {
        let share = |rate: u32| {
            (rate > 0).then(|| TokenBucket::new(f64::from(rate) / cores.max(1) as f64, now))
        };
        Self {
            keys: (0..keys).map(|_| share(key_per_sec)).collect(),
            node: share(node_per_sec),
        }
    }

    /// Takes one push from key `key`'s budget and the node's, or neither.
    pub fn admit(&mut self, key: usize, now: Instant) -> Result<(), OverBudget> {
        let mut key_bucket = self.keys.get_mut(key).and_then(Option::as_mut);
        if let Some(bucket) = key_bucket.as_deref_mut() {
            bucket
                .check(now)
                .map_err(|retry_after| OverBudget::Key { retry_after })?;
        }
        if let Some(bucket) = self.node.as_mut() {
            bucket
                .check(now)
                .map_err(|retry_after| OverBudget::Node { retry_after })?;
            bucket.take();
        }
        if let Some(bucket) = key_bucket {
            bucket.take();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, t0);
        for _ in 0..10 {
            bucket.check(t0).unwrap();
            bucket.take();
        }
        let wait = bucket.check(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(bucket.check(t0 + Duration::from_millis(99)).is_err());
        assert!(bucket.check(t0 + Duration::from_millis(100)).is_ok());
        // Savings stop at the capacity.
        let mut idle = TokenBucket::new(10.0, t0);
        idle.check(t0 + Duration::from_secs(3600)).unwrap();
        let mut n = 0;
        while idle.check(t0 + Duration::from_secs(3600)).is_ok() {
            idle.take();
            n += 1;
        }
        assert_eq!(n, 10);
    }

    #[test]
    fn key_and_node_shares_per_core() {
        let t0 = Instant::now();
        // 20/s per key and 30/s per node over 2 cores: 10 and 15 here.
        let mut budgets = PushBudgets::new(20, 30, 2, 2, t0);
        for _ in 0..10 {
            budgets.admit(0, t0).unwrap();
        }
        let refused = budgets.admit(0, t0).unwrap_err();
        assert!(matches!(refused, OverBudget::Key { .. }));
        assert_eq!(refused.retry_after_secs(), 1);
        // The other key still has its share, until the node's runs out.
        for _ in 0..5 {
            budgets.admit(1, t0).unwrap();
        }
        assert!(matches!(budgets.admit(1, t0), Err(OverBudget::Node { .. })));
    }

    #[test]
    fn a_node_refusal_takes_nothing_from_the_key() {
        let t0 = Instant::now();
        let mut budgets = PushBudgets::new(10, 5, 1, 1, t0);
        for _ in 0..5 {
            budgets.admit(0, t0).unwrap();
        }
        for _ in 0..100 {
            assert!(matches!(budgets.admit(0, t0), Err(OverBudget::Node { .. })));
        }
        // 200 ms later the node has 1 token again and the key 5 + 2: had
        // the refusals cost the key, it would be deep in debt.
        budgets.admit(0, t0 + Duration::from_millis(200)).unwrap();
    }

    #[test]
    fn zero_means_no_budget() {
        let t0 = Instant::now();
        let mut budgets = PushBudgets::new(0, 0, 1, 4, t0);
        for _ in 0..100_000 {
            budgets.admit(0, t0).unwrap();
        }
        // An unknown key index has no key budget (the API checks keys first).
        let mut budgets = PushBudgets::new(1, 0, 1, 1, t0);
        budgets.admit(5, t0).unwrap();
    }

    #[test]
    fn retry_after_rounds_up_and_is_capped() {
        let slow = OverBudget::Node {
            retry_after: Duration::from_millis(1_001),
        };
        assert_eq!(slow.retry_after_secs(), 2);
        let never = OverBudget::Key {
            retry_after: Duration::MAX,
        };
        assert_eq!(never.retry_after_secs(), RETRY_AFTER_SECS_MAX);
        let soon = OverBudget::Key {
            retry_after: Duration::from_millis(3),
        };
        assert_eq!(soon.retry_after_secs(), 1);
    }
}
