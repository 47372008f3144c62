//! The chains that let a core prove what it has: for every origin, the seq
//! of the last message routed to each core of this node (`prev`), and the
//! markers that move a core's head when nothing was routed to it.
//!
//! Two routers exist per node, each owned by one thread:
//! - [`Sequencer`]: a core's own origin. It numbers the pushes the core's
//!   HTTP API accepts and routes them to this node's cores;
//! - [`MeshRouter`]: every other origin, on the mesh thread. It sees every
//!   envelope of a remote origin in that origin's order (the mesh carries
//!   every push to every node), so a hole in an origin's seqs is a loss it
//!   reports to every core as a [`Step::Gap`].
//!
//! Both are pure: they say what to send; the caller sends it.

use std::collections::HashMap;

use crate::history::position::Origin;
use crate::history::store::Routed;

/// Remote origins one mesh router tracks; the least recently heard is
/// forgotten past it (a later message of it then counts as met late).
pub const MESH_ROUTER_ORIGINS_MAX: usize = 1024;

/// What a router asks the caller to send to one core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Deliver the message to this core with its place in the chain.
    Deliver(Routed),
    /// No message for this core: its head moves to `seq`, the last message
    /// routed to it being `prev`.
    Advance { origin: Origin, seq: u64, prev: u64 },
    /// Seqs up to `hi` of `origin` were lost before this node: resumes
    /// from before `hi` cannot be proven.
    Gap { origin: Origin, hi: u64 },
}

/// One origin's chain towards this node's cores.
#[derive(Clone, Debug)]
struct Chain {
    /// The origin's last seq routed (to any core).
    last: u64,
    /// Per core: the last seq routed to it.
    prev_to: Vec<u64>,
    /// Per core: the seq its head was last moved to by a message or marker.
    told: Vec<u64>,
}

impl Chain {
    fn new(cores: usize, start: u64) -> Self {
        Self {
            last: start,
            prev_to: vec![start; cores],
            told: vec![start; cores],
        }
    }

    /// Routes `seq` to `cores_hit` (sorted or not) and says what each core
    /// of the node gets: a delivery, or (`advance_others`) a marker.
    fn route(
        &mut self,
        origin: Origin,
        seq: u64,
        cores_hit: &[usize],
        advance_others: bool,
        out: &mut Vec<(usize, Step)>,
    ) {
        for &core in cores_hit {
            let prev = self.prev_to[core];
            self.prev_to[core] = seq;
            self.told[core] = seq;
            out.push((core, Step::Deliver(Routed { origin, seq, prev })));
        }
        self.last = seq;
        if advance_others {
            self.advance(origin, out);
        }
    }

    /// Markers for every core whose head is behind the origin's last seq.
    fn advance(&mut self, origin: Origin, out: &mut Vec<(usize, Step)>) {
        for core in 0..self.prev_to.len() {
            if self.told[core] < self.last {
                self.told[core] = self.last;
                out.push((
                    core,
                    Step::Advance {
                        origin,
                        seq: self.last,
                        prev: self.prev_to[core],
                    },
                ));
            }
        }
    }
}

/// A core's own origin: numbers what the core accepts, from 1.
#[derive(Debug)]
pub struct Sequencer {
    origin: Origin,
    chain: Chain,
}

impl Sequencer {
    pub fn new(origin: Origin, cores: usize) -> Self {
        Self {
            origin,
            chain: Chain::new(cores, 0),
        }
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The seq the next push will get.
    pub fn next_seq(&self) -> u64 {
        self.chain.last + 1
    }

    /// Numbers one push routed to `cores_hit`: the deliveries, in
    /// `cores_hit` order. Markers for the other cores wait for
    /// [`Self::markers`] (sent on a timer, not per push).
    pub fn sequence(&mut self, cores_hit: &[usize]) -> (u64, Vec<(usize, Step)>) {
        let seq = self.chain.last + 1;
        let mut out = Vec::with_capacity(cores_hit.len());
        self.chain
            .route(self.origin, seq, cores_hit, false, &mut out);
        (seq, out)
    }

    /// Markers for the cores whose head is behind this origin.
    pub fn markers(&mut self) -> Vec<(usize, Step)> {
        let mut out = Vec::new();
        self.chain.advance(self.origin, &mut out);
        out
    }

    /// A marker that could not be sent: ask again at the next round.
    pub fn unsent(&mut self, core: usize) {
        self.chain.told[core] = self.chain.prev_to[core];
    }
}

/// Every remote origin's chain towards this node's cores.
#[derive(Debug)]
pub struct MeshRouter {
    cores: usize,
    chains: HashMap<Origin, Chain>,
    /// A counter per message, to forget the least recently heard origin.
    clock: u64,
    heard: HashMap<Origin, u64>,
}

impl MeshRouter {
    pub fn new(cores: usize) -> Self {
        Self {
            cores,
            chains: HashMap::new(),
            clock: 0,
            heard: HashMap::new(),
        }
    }

    /// Routes seq `seq` of `origin` to `cores_hit`. A duplicate (seq not
    /// above the last) gives nothing; a hole (or an origin met after its
    /// first message) gives a gap to every core first; every core not hit
    /// gets a marker.
    pub fn route(&mut self, origin: Origin, seq: u64, cores_hit: &[usize]) -> Vec<(usize, Step)> {
        let mut out = Vec::with_capacity(self.cores + 1);
        self.clock += 1;
        self.heard.insert(origin, self.clock);
        let cores = self.cores;
        let chain = self
            .chains
            .entry(origin)
            .or_insert_with(|| Chain::new(cores, 0));
        if seq <= chain.last {
            return out;
        }
        if seq > chain.last + 1 {
            let hi = seq - 1;
            for core in 0..cores {
                out.push((core, Step::Gap { origin, hi }));
                // Whatever was routed to a core before `hi` is covered by
                // the gap: a core that missed the gap message too sees the
                // loss in its chain.
                chain.prev_to[core] = hi;
                chain.told[core] = hi;
            }
            chain.last = hi;
        }
        chain.route(origin, seq, cores_hit, true, &mut out);
        self.forget_oldest();
        out
    }

    fn forget_oldest(&mut self) {
        if self.chains.len() <= MESH_ROUTER_ORIGINS_MAX {
            return;
        }
        if let Some(oldest) = self
            .heard
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(o, _)| *o)
        {
            self.chains.remove(&oldest);
            self.heard.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Origin = Origin {
        incarnation: 7,
        core: 0,
    };

    #[test]
    fn a_sequencer_chains_each_core_and_marks_the_others_on_demand() {
        let mut s = Sequencer::new(A, 3);
        let (seq, steps) = s.sequence(&[1]);
        assert_eq!(seq, 1);
        assert_eq!(
            steps,
            vec![(
                1,
                Step::Deliver(Routed {
                    origin: A,
                    seq: 1,
                    prev: 0
                })
            )]
        );
        let (_, steps) = s.sequence(&[1, 2]);
        assert_eq!(
            steps,
            vec![
                (
                    1,
                    Step::Deliver(Routed {
                        origin: A,
                        seq: 2,
                        prev: 1
                    })
                ),
                (
                    2,
                    Step::Deliver(Routed {
                        origin: A,
                        seq: 2,
                        prev: 0
                    })
                ),
            ]
        );
        assert_eq!(
            s.markers(),
            vec![(
                0,
                Step::Advance {
                    origin: A,
                    seq: 2,
                    prev: 0
                }
            )]
        );
        assert!(s.markers().is_empty(), "told once");
        s.unsent(0);
        assert_eq!(s.markers().len(), 1, "an unsent marker is asked again");
    }

    #[test]
    fn the_mesh_router_reports_holes_and_late_meetings_as_gaps() {
        let mut r = MeshRouter::new(2);
        // Met at seq 5: 1..=4 may have been for us.
        let steps = r.route(A, 5, &[0]);
        assert_eq!(steps[0], (0, Step::Gap { origin: A, hi: 4 }));
        assert_eq!(steps[1], (1, Step::Gap { origin: A, hi: 4 }));
        assert_eq!(
            steps[2],
            (
                0,
                Step::Deliver(Routed {
                    origin: A,
                    seq: 5,
                    prev: 4
                })
            )
        );
        assert_eq!(
            steps[3],
            (
                1,
                Step::Advance {
                    origin: A,
                    seq: 5,
                    prev: 4
                }
            )
        );
        assert!(r.route(A, 5, &[0]).is_empty(), "a duplicate gives nothing");
        let steps = r.route(A, 6, &[1]);
        assert_eq!(
            steps,
            vec![
                (
                    1,
                    Step::Deliver(Routed {
                        origin: A,
                        seq: 6,
                        prev: 4
                    })
                ),
                (
                    0,
                    Step::Advance {
                        origin: A,
                        seq: 6,
                        prev: 5
                    }
                ),
            ]
        );
        let steps = r.route(A, 9, &[0]);
        assert_eq!(steps[0], (0, Step::Gap { origin: A, hi: 8 }));
        assert_eq!(
            steps[2],
            (
                0,
                Step::Deliver(Routed {
                    origin: A,
                    seq: 9,
                    prev: 8
                })
            )
        );
    }

    #[test]
    fn the_first_message_of_an_origin_is_not_a_gap() {
        let mut r = MeshRouter::new(1);
        let steps = r.route(A, 1, &[0]);
        assert_eq!(
            steps,
            vec![(
                0,
                Step::Deliver(Routed {
                    origin: A,
                    seq: 1,
                    prev: 0
                })
            )]
        );
    }
}
