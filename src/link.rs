//! Byte and entry budgets of the queues between threads: each one-way link
//! (core -> core over the channel mesh, the mesh thread -> a core's inbox)
//! counts what is in flight on it. The sender reserves before it sends and
//! the receiver releases what it took, so every queue is bounded in bytes
//! as well as in entries. A link has one sending thread, and its counters
//! are touched by exactly two threads (no lock; each link on its own cache
//! line).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes counted for any message besides the push bytes it carries (the
/// message itself, the channel slot).
pub const MESSAGE_OVERHEAD_BYTES: usize = 128;

/// In flight on one link: bounded by `entries_max` and `bytes_max`.
#[derive(Debug)]
#[repr(align(64))]
pub struct LinkBudget {
    entries: AtomicUsize,
    bytes: AtomicUsize,
    entries_max: usize,
    bytes_max: usize,
}

impl LinkBudget {
    pub fn new(entries_max: usize, bytes_max: usize) -> Self {
        Self {
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            entries_max,
            bytes_max,
        }
    }

    /// Whether one more message of `bytes` fits now. Only the link's one
    /// sender adds, so room seen here stays until it reserves.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.entries.load(Ordering::Acquire) < self.entries_max
            && self.bytes.load(Ordering::Acquire) + bytes <= self.bytes_max
    }

    /// Reserves room for a message of `bytes`; `false` (nothing reserved)
    /// when it does not fit.
    pub fn try_reserve(&self, bytes: usize) -> bool {
        if !self.has_room(bytes) {
            return false;
        }
        self.reserve(bytes);
        true
    }

    /// Counts a message that is sent whatever the budget (a control
    /// message whose sender waits for the channel instead of failing).
    pub fn reserve(&self, bytes: usize) {
        self.entries.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// The receiver took a message of `bytes` off the link.
    pub fn release(&self, bytes: usize) {
        self.entries.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// (entries, bytes) in flight now.
    pub fn in_flight(&self) -> (usize, usize) {
        (
            self.entries.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }
}

/// The links of a node: `cores x cores` between cores (row: sender) and
/// one per core from the mesh thread.
#[derive(Debug)]
pub struct Links {
    cores: usize,
    between: Vec<LinkBudget>,
    from_mesh: Vec<LinkBudget>,
}

impl Links {
    pub fn new(cores: usize, core: (usize, usize), mesh: (usize, usize)) -> Self {
        Self {
            cores,
            between: (0..cores * cores)
                .map(|_| LinkBudget::new(core.0, core.1))
                .collect(),
            from_mesh: (0..cores)
                .map(|_| LinkBudget::new(mesh.0, mesh.1))
                .collect(),
        }
    }

    /// The link from core `from` to core `to`.
    pub fn between(&self, from: usize, to: usize) -> &LinkBudget {
        &self.between[from * self.cores + to]
    }

    /// The link from the mesh thread to core `to`.
    pub fn from_mesh(&self, to: usize) -> &LinkBudget {
        &self.from_mesh[to]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_bounded_in_bytes_and_in_entries() {
        let link = LinkBudget::new(3, 1000);
        assert!(link.try_reserve(600));
        assert!(!link.try_reserve(500), "bytes: 600 + 500 > 1000");
        assert!(link.try_reserve(300));
        assert!(link.try_reserve(0));
        assert!(!link.try_reserve(0), "entries: 3 in flight");
        link.release(600);
        assert_eq!(link.in_flight(), (2, 300));
        assert!(link.try_reserve(700));
    }

    #[test]
    fn links_are_one_way_and_on_their_own_cache_lines() {
        let links = Links::new(2, (1, 100), (1, 100));
        assert!(links.between(0, 1).try_reserve(10));
        assert!(
            links.between(1, 0).try_reserve(10),
            "the other direction is another link"
        );
        assert!(!links.between(0, 1).try_reserve(10));
        assert!(links.from_mesh(1).try_reserve(10));
        assert_eq!(std::mem::align_of::<LinkBudget>(), 64);
    }
}
