//! Per-node stream history: positions, retention, replay for resume,
//! idempotent publish and server-side membership. Pure logic, no sockets,
//! no clock (`now_ms` is passed in): each executor owns one of each, so
//! nothing here is shared between cores.
//!
//! - [`position`]: the `pos`/`since` vector over origins and its text form;
//! - [`store`]: one core's retained pushes, per-origin proof of
//!   completeness (head, floor, prev-chain), resume planning;
//! - [`idempotency`]: `Idempotency-Key` -> first id, bounded, with a ttl;
//! - [`membership`]: server-side room membership independent of
//!   connections.
//!
//! - [`router`]: the per-core chains (`prev`) and advance markers that let
//!   a core prove it has every push of an origin up to its head.
//!
//! The wire protocol and why a position is correct are in docs/contract.md.

pub mod idempotency;
pub mod membership;
pub mod position;
pub mod router;
pub mod store;

#[cfg(test)]
mod tests;

pub use position::{Origin, Position, PositionError};
pub use router::{MeshRouter, Sequencer, Step};
pub use store::{
    Admission, Arrival, CoreHistory, HistoryFull, HistoryLimits, Resume, ResumePlan, Routed,
};
