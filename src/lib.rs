//! corecast: a WebSocket push gateway.

pub mod config;
pub mod limits;
pub mod push;
pub mod ws;
