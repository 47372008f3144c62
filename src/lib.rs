//! corecast: a WebSocket push gateway. Business systems push to users,
//! rooms or everyone over a node's HTTP API; every node delivers to the
//! WebSocket connections it holds.
//!
//! Module map:
//! - [`lifecycle`]: start-up (keys, ports, one pinned glommio executor per
//!   core, the mesh thread) and the signal wait that drains the node;
//!   [`node`]: what the executors share (config, keys, capacity slots);
//! - [`executor`]: one executor's main and its stop order;
//! - [`accept`]: the WebSocket accept loop and handshake;
//! - [`core`]: one per executor, the router between cores;
//! - [`session`]: a core's [`session::hub::Hub`] (shard, heartbeat wheel,
//!   buffer pool), the connection task over its sans-IO protocol, the
//!   channel (bounded write queue) and the disconnect table;
//! - [`listener`]: `SO_REUSEPORT` sockets built with nix, one per core;
//! - [`ws`]: the WebSocket protocol with no sockets (upgrade, frames, client
//!   messages); [`auth`]: tokens and API keys;
//! - [`push`]: the push type and `route()`, a pure function from a target
//!   to the cores that hold its recipients;
//! - [`http`]: the push API, `/metrics`, `/healthz`, `/readyz`;
//! - [`mesh`]: the ZeroMQ PUB/SUB mesh between nodes (rkyv envelopes);
//! - [`history`]: per-core stream history for resume (not yet wired);
//! - [`metrics`]: per-core counters and histograms, merged at scrape;
//! - [`link`]: byte and entry budgets of the queues between threads;
//! - [`config`] and [`limits`]: every option and every cap, named.
//!
//! Data flow, file by file:
//! 1. a client connects to whichever core the kernel picks:
//!    `accept.rs` reads the upgrade (`ws/handshake.rs`), checks the token
//!    (`auth.rs`) and takes a capacity slot (`node.rs`);
//! 2. the socket moves to its user's home core (`push/mod.rs`
//!    `home_core`): `session/connection.rs` `open` there, or a `dup`ed fd
//!    in a `CoreMsg::HandOff` over the channel mesh (`core.rs`);
//! 3. on the home core the hub (`session/hub.rs`) adds the channel
//!    (`session/channel.rs`) to its shard (`session/shard.rs`) and the
//!    heartbeat wheel (`session/wheel.rs`); the connection task feeds the
//!    client's bytes to `session/protocol.rs` and carries out its actions;
//! 4. a push arrives at any core's HTTP port (`http/mod.rs`,
//!    `http/api.rs`, `http/body.rs`), is encoded once (`push/mod.rs`,
//!    `ws/frame.rs`), published once to the cluster (`mesh/mod.rs`) and
//!    fanned out by `core.rs` (`route`) to the hubs that hold recipients,
//!    each writing the shared frame to its sockets (`session/shard.rs`);
//! 5. on every other node the mesh thread (`mesh/bridge.rs`,
//!    `mesh/inbound.rs`, `mesh/validate.rs`) decodes and checks what it
//!    receives, and `core.rs` `plan_received` routes it to the cores'
//!    inboxes, from where step 4's fan-out takes over.

pub mod accept;
pub mod auth;
pub mod config;
pub mod core;
pub mod executor;
pub mod history;
pub mod http;
pub mod lifecycle;
pub mod limits;
pub mod link;
pub mod listener;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod push;
pub mod session;
pub mod startup;
pub mod ws;
