//! Sessions: the hub of one core (shard, heartbeat wheel, buffer pool),
//! the connection task and its sans-IO protocol, the channel state shared
//! by delivery and the task, the user's stream (history, resume) on the
//! core, and the table of disconnect reasons.

pub mod channel;
pub mod connection;
pub mod disconnect;
pub mod hub;
pub mod protocol;
pub mod shard;
pub mod stream;
pub mod wheel;
