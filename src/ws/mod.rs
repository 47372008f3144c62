//! The WebSocket protocol with no sockets: the upgrade request and its
//! token, frame encoding and decoding, and client messages.

pub mod frame;
pub mod handshake;
pub mod message;
