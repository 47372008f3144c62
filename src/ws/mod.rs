//! The WebSocket protocol with no sockets: the upgrade request and its
//! token, frame encoding and decoding, client messages, and the browser
//! client served on the same port.

pub mod assets;
pub mod frame;
pub mod handshake;
pub mod message;
