//! corecast: a WebSocket push gateway. Business systems push to users,
//! rooms or everyone over a node's HTTP API; every node delivers to the
//! WebSocket connections it holds.
//!
//! Module map and data flow:
//! - [`node`]: start-up (keys, ports, one pinned glommio executor per core,
//!   the mesh thread) and the signal wait that drains the node;
//! - [`core`]: one per executor; owns a session shard, a heartbeat wheel, a
//!   buffer pool and its ends of the channel mesh between cores;
//! - [`listener`]: `SO_REUSEPORT` sockets built with nix, one per core;
//! - [`ws`]: the WebSocket protocol with no sockets (upgrade, frames, client
//!   messages); [`auth`]: tokens and API keys;
//! - [`session`]: the connection task, its shared channel state, the shard
//!   (uid -> connections, rooms) and the disconnect table;
//! - [`push`]: the push type and `route()`, a pure function from a target
//!   to the cores that hold its recipients;
//! - [`http`]: the push API, `/metrics`, `/healthz`, `/readyz`;
//! - [`mesh`]: the ZeroMQ PUB/SUB mesh between nodes (rkyv envelopes);
//! - [`metrics`]: per-core counters and histograms, merged at scrape;
//! - [`config`] and [`limits`]: every option and every cap, named.
//!
//! A WebSocket client connects to any core; after the handshake its socket
//! moves to its user's home core. A push accepted on core A is encoded
//! once, delivered to A's recipients, sent to the other cores holding
//! recipients, and published once to the cluster.

pub mod accept;
pub mod auth;
pub mod config;
pub mod core;
pub mod executor;
pub mod history;
pub mod http;
pub mod lifecycle;
pub mod limits;
pub mod listener;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod push;
pub mod session;
pub mod ws;
