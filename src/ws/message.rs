//! Messages clients send as text frames: `join`, `leave` and `ping` (an
//! application-level liveness check: JavaScript cannot see WebSocket pings,
//! so a browser client notices a half-open connection by its `pong`).
//! Anything else is answered with an error frame (and counted toward the
//! abuse limit).

use serde::Deserialize;

use crate::auth::valid_name;

/// A parsed client message.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Join(String),
    Leave(String),
    /// `{"type":"ping"}`: answered `{"type":"pong"}`.
    Ping,
}

/// The answer to a client's `{"type":"ping"}`.
pub const PONG_MESSAGE: &str = r#"{"type":"pong"}"#;

/// Why a client message was refused; `code` goes into the error frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message is not valid JSON of the form {{\"type\":...,\"room\":...}}")]
    BadJson,
    #[error("unknown message type")]
    UnknownType,
    #[error("room name must be 1..=256 bytes with no control character")]
    BadRoom,
    #[error("room not permitted by the token")]
    Forbidden,
    #[error("max_rooms_per_user reached")]
    TooManyRooms,
    #[error("binary messages are not accepted")]
    Binary,
    #[error("too many messages: slow down")]
    RateLimited,
}

impl MessageError {
    pub fn code(&self) -> &'static str {
        match self {
            MessageError::BadJson => "bad_json",
            MessageError::UnknownType => "unknown_type",
            MessageError::BadRoom => "bad_room",
            MessageError::Forbidden => "forbidden",
            MessageError::TooManyRooms => "too_many_rooms",
            MessageError::Binary => "binary_not_accepted",
            MessageError::RateLimited => "rate_limited",
        }
    }

    /// The error frame's JSON text.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "type": "error",
            "error": { "code": self.code(), "message": self.to_string() }
        })
        .to_string()
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    room: Option<std::borrow::Cow<'a, str>>,
}

/// Parses one text message.
pub fn parse(text: &[u8]) -> Result<ClientMessage, MessageError> {
    let wire: Wire = serde_json::from_slice(text).map_err(|_| MessageError::BadJson)?;
    let room = || -> Result<String, MessageError> {
        let room = wire.room.as_deref().ok_or(MessageError::BadRoom)?;
        valid_name(room)
            .then(|| room.to_string())
            .ok_or(MessageError::BadRoom)
    };
    match wire.kind {
        "join" => Ok(ClientMessage::Join(room()?)),
        "leave" => Ok(ClientMessage::Leave(room()?)),
        "ping" => Ok(ClientMessage::Ping),
        _ => Err(MessageError::UnknownType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_leave() {
        assert_eq!(
            parse(br#"{"type":"join","room":"a"}"#),
            Ok(ClientMessage::Join("a".into()))
        );
        assert_eq!(
            parse(br#"{"room":"b\u00e9","type":"leave"}"#),
            Ok(ClientMessage::Leave("bé".into()))
        );
        assert_eq!(
            parse(br#"{"room":"b\n","type":"leave"}"#),
            Err(MessageError::BadRoom)
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(b"{"), Err(MessageError::BadJson));
        assert_eq!(
            parse(br#"{"type":"dance"}"#),
            Err(MessageError::UnknownType)
        );
        assert_eq!(parse(br#"{"type":"join"}"#), Err(MessageError::BadRoom));
        assert_eq!(
            parse(br#"{"type":"join","room":""}"#),
            Err(MessageError::BadRoom)
        );
        assert!(MessageError::Forbidden.to_json().contains("forbidden"));
    }

    #[test]
    fn ping_needs_no_room() {
        assert_eq!(parse(br#"{"type":"ping"}"#), Ok(ClientMessage::Ping));
    }
}
