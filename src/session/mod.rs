//! Sessions: the connection task (read loop, bounded write queue), the
//! per-core shard (uid -> connections, rooms), the heartbeat wheel and the
//! table of disconnect reasons.

pub mod channel;
pub mod connection;
pub mod disconnect;
pub mod shard;
pub mod wheel;
