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
//! Not yet wired into delivery or the handshake (issue 11 is open): the
//! wire protocol and why a position is correct go in docs/contract.md when
//! it is.

pub mod idempotency;
pub mod membership;
pub mod position;
pub mod store;

#[cfg(test)]
mod tests;

pub use position::{Origin, Position, PositionError};
pub use store::{
    Admission, Arrival, CoreHistory, HistoryFull, HistoryLimits, Resume, ResumePlan, Routed,
};
