//! What every core of a node shares: read-only configuration and keys, the
//! connection capacity, the drain flag and signal, the per-core metrics and
//! the cluster mesh handle. Nothing here is on the delivery path, and this
//! file names no core, session or executor type, so that any of them can
//! hold an `Arc<Node>` without an import circle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::auth::{ApiKeys, TokenKeys};
use crate::config::Config;
use crate::link::Links;
use crate::mesh::{MeshHandle, MeshMetrics};
use crate::metrics::CoreMetrics;

/// The node-wide state shared by its executors.
#[derive(Debug)]
pub struct Node {
    pub config: Arc<Config>,
    pub node_id: String,
    pub tokens: TokenKeys,
    pub api_keys: ApiKeys,
    /// Per-process prefix of message ids (see [`crate::push::IdGenerator`]).
    pub id_prefix: String,
    /// Random per process start: this process's cores are the history
    /// origins `(incarnation, core)` (see [`crate::history::Origin`]).
    pub incarnation: u64,
    /// Open (or handing-off) WebSocket connections against `max_connections`.
    pub capacity: Arc<Capacity>,
    /// Set before the drain signal closes, so every core sees it at once.
    pub draining: AtomicBool,
    /// Closed (never sent on) when the node starts draining: wakes every
    /// core at once with no polling.
    pub drain_signal: async_channel::Receiver<()>,
    pub core_metrics: Vec<Arc<CoreMetrics>>,
    /// The budgets of the queues between cores and from the mesh thread.
    pub links: Arc<Links>,
    pub mesh: Option<MeshHandle>,
    pub mesh_metrics: Arc<MeshMetrics>,
    /// Per core: how full its history is, for the accepting core's check
    /// that a push will be kept (a 202 means recoverable).
    pub history_room: Vec<HistoryRoom>,
}

/// One core's history fill: written by its core only, read by the cores
/// that accept pushes for it (one relaxed load per push and target core).
#[derive(Debug)]
pub struct HistoryRoom {
    used: AtomicUsize,
    max: usize,
}

impl HistoryRoom {
    pub fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Whether `bytes` more fit among the unexpired entries.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.used.load(Ordering::Relaxed).saturating_add(bytes) <= self.max
    }

    /// The owner core's current fill.
    pub fn set(&self, used: usize) {
        self.used.store(used, Ordering::Relaxed);
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Node {
    /// Whether the node drains (refuses handshakes, answers `/readyz` 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Connection slots of a node: at most `max` are taken at once.
#[derive(Debug)]
pub struct Capacity {
    taken: AtomicUsize,
    max: usize,
}

impl Capacity {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            taken: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes a slot, or `None` when all `max` are taken.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let before = self.taken.fetch_add(1, Ordering::Relaxed);
        if before >= self.max {
            self.taken.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot {
            capacity: self.clone(),
        })
    }

    /// Slots taken now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }
}

/// One taken connection slot, released when dropped: it travels with the
/// connection from the handshake, through a hand-off to the home core, to
/// the end of the connection's task, so that no path can leak it.
#[derive(Debug)]
pub struct Slot {
    capacity: Arc<Capacity>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.capacity.taken.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released_on_drop() {
        let capacity = Capacity::new(2);
        let a = capacity.try_take().expect("first slot");
        let b = capacity.try_take().expect("second slot");
        assert!(capacity.try_take().is_none(), "a third slot past max");
        assert_eq!(capacity.taken(), 2);
        drop(a);
        assert_eq!(capacity.taken(), 1);
        let c = capacity.try_take().expect("a released slot is free again");
        drop((b, c));
        assert_eq!(capacity.taken(), 0);
    }

    #[test]
    fn a_slot_dropped_on_another_thread_is_released() {
        let capacity = Capacity::new(1);
        let slot = capacity.try_take().expect("slot");
        std::thread::spawn(move || drop(slot))
            .join()
            .expect("thread");
        assert_eq!(capacity.taken(), 0);
    }
}
