//! Why a connection ended: one table reused as the WebSocket close code, the
//! close reason text and the `corecast_disconnects_total{reason}` label.

use crate::ws::frame::CloseCode;

macro_rules! reasons {
    ($($variant:ident => ($label:literal, $code:expr, $text:literal)),+ $(,)?) => {
        /// Why a connection ended.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum DisconnectReason { $($variant),+ }
        impl DisconnectReason {
            pub const ALL: &'static [DisconnectReason] = &[$(DisconnectReason::$variant),+];
            pub const COUNT: usize = Self::ALL.len();
            /// The metric label.
            pub fn label(self) -> &'static str {
                match self { $(DisconnectReason::$variant => $label),+ }
            }
            /// The close code sent to the client.
            pub fn close_code(self) -> CloseCode {
                match self { $(DisconnectReason::$variant => $code),+ }
            }
            /// The close reason text sent to the client.
            pub fn text(self) -> &'static str {
                match self { $(DisconnectReason::$variant => $text),+ }
            }
        }
    };
}

reasons! {
    ClientClose => ("client_close", CloseCode::Normal, "bye"),
    Replaced => ("replaced", CloseCode::Replaced, "replaced by a newer connection"),
    Disconnected => ("disconnected", CloseCode::Disconnected, "disconnected by the server"),
    TokenExpired => ("token_expired", CloseCode::TokenExpired, "token expired"),
    SlowConsumer => ("slow_consumer", CloseCode::TryAgainLater, "slow consumer: outbound queue full"),
    IdleTimeout => ("idle_timeout", CloseCode::GoingAway, "idle timeout"),
    ProtocolError => ("protocol_error", CloseCode::Protocol, "protocol error"),
    MessageTooBig => ("message_too_big", CloseCode::TooBig, "message too big"),
    InvalidUtf8 => ("invalid_utf8", CloseCode::InvalidPayload, "invalid UTF-8"),
    RateLimited => ("rate_limited", CloseCode::Policy, "too many messages"),
    Shutdown => ("shutdown", CloseCode::GoingAway, "server shutting down"),
    IoError => ("io_error", CloseCode::Error, "i/o error"),
}

impl DisconnectReason {
    /// The reason for a client frame that broke the protocol.
    pub fn from_frame_error(error: &crate::ws::frame::FrameError) -> Self {
        match error.close_code() {
            CloseCode::TooBig => DisconnectReason::MessageTooBig,
            CloseCode::InvalidPayload => DisconnectReason::InvalidUtf8,
            _ => DisconnectReason::ProtocolError,
        }
    }
}
