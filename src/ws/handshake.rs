//! The WebSocket upgrade request, with no sockets: bytes in, an
//! [`UpgradeRequest`] or a [`HandshakeError`] with its HTTP status out, and
//! the exact response bytes to write back. [`check_origin`] is the
//! `[ws] allowed_origins` rule, also with no sockets.

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::auth::TokenError;
use crate::limits::HANDSHAKE_HEADERS_MAX;

/// The path clients upgrade on.
pub const WS_PATH: &str = "/ws";
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A complete, well-formed upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// `Sec-WebSocket-Accept` to answer with.
    pub accept: String,
    /// The token from `?token=` or `Authorization: Bearer`.
    pub token: Option<String>,
    /// The `Origin` header (browsers send it; other clients usually not).
    pub origin: Option<String>,
    /// `?since=` as sent (resume after this position; may be empty).
    pub since: Option<String>,
    /// `?rooms=` as sent (rooms to join before the replay).
    pub rooms: Option<String>,
}

/// Why a handshake was refused; each maps to an HTTP status, a JSON error
/// code and a metric outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("request headers exceed {0} bytes")]
    TooLarge(usize),
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("not a WebSocket upgrade: {0}")]
    NotWebSocket(&'static str),
    #[error("only GET upgrades to a WebSocket")]
    MethodNotAllowed,
    #[error("no WebSocket endpoint at this path (use /ws)")]
    NotFound,
    #[error("{0}")]
    Unauthorized(#[from] TokenError),
    #[error("node is at max_connections")]
    OverCapacity,
    #[error("node is draining")]
    Draining,
    #[error("handshake not finished within the timeout")]
    Timeout,
    #[error("origin {0:?} is not in allowed_origins")]
    OriginNotAllowed(String),
    #[error("too many handshakes in progress{0}; retry shortly")]
    Busy(&'static str),
}

/// Seconds a client is asked to wait (`Retry-After`) after a 503 for a
/// full node or a busy handshake stage.
pub const RETRY_AFTER_SECONDS: u32 = 1;

impl HandshakeError {
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HandshakeError::TooLarge(_) => (431, "Request Header Fields Too Large"),
            HandshakeError::Malformed(_) | HandshakeError::NotWebSocket(_) => (400, "Bad Request"),
            HandshakeError::MethodNotAllowed => (405, "Method Not Allowed"),
            HandshakeError::NotFound => (404, "Not Found"),
            HandshakeError::Unauthorized(_) => (401, "Unauthorized"),
            HandshakeError::OverCapacity | HandshakeError::Draining | HandshakeError::Busy(_) => {
                (503, "Service Unavailable")
            }
            HandshakeError::Timeout => (408, "Request Timeout"),
            HandshakeError::OriginNotAllowed(_) => (403, "Forbidden"),
        }
    }

    /// The machine-readable code in the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            HandshakeError::TooLarge(_) => "headers_too_large",
            HandshakeError::Malformed(_) => "malformed_request",
            HandshakeError::NotWebSocket(_) => "not_websocket",
            HandshakeError::MethodNotAllowed => "method_not_allowed",
            HandshakeError::NotFound => "not_found",
            HandshakeError::Unauthorized(e) => e.code(),
            HandshakeError::OverCapacity => "over_capacity",
            HandshakeError::Draining => "draining",
            HandshakeError::Timeout => "handshake_timeout",
            HandshakeError::OriginNotAllowed(_) => "origin_not_allowed",
            HandshakeError::Busy(_) => "busy",
        }
    }

    /// The `corecast_handshakes_total{outcome}` label.
    pub fn outcome(&self) -> crate::metrics::HandshakeOutcome {
        use crate::metrics::HandshakeOutcome as O;
        match self {
            HandshakeError::TooLarge(_) => O::TooLarge,
            HandshakeError::Malformed(_)
            | HandshakeError::NotWebSocket(_)
            | HandshakeError::MethodNotAllowed
            | HandshakeError::NotFound
            | HandshakeError::OriginNotAllowed(_) => O::BadRequest,
            HandshakeError::Unauthorized(_) => O::Unauthorized,
            HandshakeError::OverCapacity | HandshakeError::Draining | HandshakeError::Busy(_) => {
                O::OverCapacity
            }
            HandshakeError::Timeout => O::Timeout,
        }
    }

    /// The complete HTTP response for this refusal.
    pub fn response(&self) -> Vec<u8> {
        let (status, reason) = self.status();
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        })
        .to_string();
        let retry = match self {
            HandshakeError::OverCapacity | HandshakeError::Busy(_) => {
                format!("Retry-After: {RETRY_AFTER_SECONDS}\r\n")
            }
            _ => String::new(),
        };
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Parses `buf` as an upgrade request. `Ok(None)`: the headers are not
/// complete yet (and fit in `max_bytes` so far).
pub fn parse_upgrade(
    buf: &[u8],
    max_bytes: usize,
) -> Result<Option<UpgradeRequest>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; HANDSHAKE_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let status = request.parse(buf).map_err(|e| match e {
        httparse::Error::TooManyHeaders => HandshakeError::TooLarge(max_bytes),
        other => HandshakeError::Malformed(other.to_string()),
    })?;
    let httparse::Status::Complete(len) = status else {
        if buf.len() >= max_bytes {
            return Err(HandshakeError::TooLarge(max_bytes));
        }
        return Ok(None);
    };
    if len > max_bytes {
        return Err(HandshakeError::TooLarge(max_bytes));
    }
    let path = request.path.unwrap_or("/");
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    if route != WS_PATH {
        return Err(HandshakeError::NotFound);
    }
    if request.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| {
            v.split(|b| *b == b',')
                .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has_token("upgrade", "websocket") {
        return Err(HandshakeError::NotWebSocket("missing Upgrade: websocket"));
    }
    if !has_token("connection", "upgrade") {
        return Err(HandshakeError::NotWebSocket("missing Connection: upgrade"));
    }
    if header("sec-websocket-version") != Some(b"13") {
        return Err(HandshakeError::NotWebSocket(
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let key = header("sec-websocket-key")
        .filter(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k.trim_ascii())
                .is_ok_and(|raw| raw.len() == 16)
        })
        .ok_or(HandshakeError::NotWebSocket(
            "missing or bad Sec-WebSocket-Key",
        ))?;
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    };
    let token = param("token")
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .or_else(|| {
            header("authorization")
                .and_then(|v| v.strip_prefix(b"Bearer "))
                .and_then(|t| std::str::from_utf8(t.trim_ascii()).ok())
                .map(str::to_string)
        });
    let origin = header("origin")
        .and_then(|v| std::str::from_utf8(v.trim_ascii()).ok())
        .map(str::to_string);
    Ok(Some(UpgradeRequest {
        accept: accept_key(key.trim_ascii()),
        token,
        origin,
        since: param("since").map(str::to_string),
        rooms: param("rooms").map(str::to_string),
    }))
}

/// `[ws] allowed_origins`: with an empty list every request passes; else a
/// request that carries `Origin` passes only if it is in the list (ASCII
/// case-insensitive; `null` never matches). A request without `Origin` is
/// not from a browser page (browsers always send it on a WebSocket
/// upgrade), so cross-site hijacking does not apply to it and it passes.
pub fn check_origin(origin: Option<&str>, allowed: &[String]) -> Result<(), HandshakeError> {
    let Some(origin) = origin else {
        return Ok(());
    };
    if allowed.is_empty()
        || allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        Ok(())
    } else {
        let mut shown = origin.to_string();
        if shown.len() > ORIGIN_SHOWN_BYTES_MAX {
            let mut end = ORIGIN_SHOWN_BYTES_MAX;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
        }
        Err(HandshakeError::OriginNotAllowed(shown))
    }
}

/// Bytes of a refused `Origin` echoed in the 403 body.
const ORIGIN_SHOWN_BYTES_MAX: usize = 128;

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 section 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The `101 Switching Protocols` response.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(path: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn token_from_query_or_header() {
        let up = parse_upgrade(&request("/ws?a=1&token=abc", ""), 8192)
            .unwrap()
            .unwrap();
        assert_eq!(up.token.as_deref(), Some("abc"));
        let up = parse_upgrade(&request("/ws", "Authorization: Bearer xyz\r\n"), 8192)
            .unwrap()
            .unwrap();
        assert_eq!(up.token.as_deref(), Some("xyz"));
        let up = parse_upgrade(&request("/ws", ""), 8192).unwrap().unwrap();
        assert_eq!(up.token, None);
    }

    #[test]
    fn partial_then_too_large() {
        let full = request("/ws", "");
        assert_eq!(parse_upgrade(&full[..20], 8192), Ok(None));
        assert_eq!(
            parse_upgrade(&full[..full.len() - 2], full.len() - 2),
            Err(HandshakeError::TooLarge(full.len() - 2))
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            parse_upgrade(&request("/x", ""), 8192),
            Err(HandshakeError::NotFound)
        );
        let plain = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            parse_upgrade(plain, 8192),
            Err(HandshakeError::NotWebSocket(_))
        ));
        assert!(matches!(
            parse_upgrade(b"\x16\x03\x01garbage\r\n\r\n", 8192),
            Err(HandshakeError::Malformed(_))
        ));
        let post = request("/ws", "")
            .iter()
            .skip(3)
            .copied()
            .collect::<Vec<_>>();
        let post = [b"POST".as_slice(), &post].concat();
        assert_eq!(
            parse_upgrade(&post, 8192),
            Err(HandshakeError::MethodNotAllowed)
        );
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert!(matches!(
            parse_upgrade(&request("/ws", &many), 1 << 20),
            Err(HandshakeError::TooLarge(_))
        ));
    }

    #[test]
    fn origin_is_read_and_checked() {
        let up = parse_upgrade(&request("/ws", "Origin: https://app.example\r\n"), 8192)
            .unwrap()
            .unwrap();
        assert_eq!(up.origin.as_deref(), Some("https://app.example"));
        let allowed = vec![
            "https://app.example".to_string(),
            "http://localhost:3000/".into(),
        ];
        assert_eq!(check_origin(up.origin.as_deref(), &allowed), Ok(()));
        assert_eq!(check_origin(Some("HTTPS://APP.example"), &allowed), Ok(()));
        assert_eq!(
            check_origin(Some("http://localhost:3000"), &allowed),
            Ok(())
        );
        assert_eq!(check_origin(None, &allowed), Ok(()));
        assert_eq!(check_origin(Some("https://evil.example"), &[]), Ok(()));
        for bad in [
            "https://evil.example",
            "null",
            "https://app.example.evil",
            "http://app.example",
        ] {
            let error = check_origin(Some(bad), &allowed).unwrap_err();
            assert_eq!(error.status().0, 403, "{bad}");
            assert_eq!(error.code(), "origin_not_allowed");
        }
        let long = "x".repeat(10_000);
        let error = check_origin(Some(&long), &allowed).unwrap_err();
        assert!(error.response().len() < 1024);
    }

    #[test]
    fn error_response_is_json() {
        let response = HandshakeError::Unauthorized(TokenError::Expired).response();
        let text = String::from_utf8(response).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "token_expired");
    }
}
