//! Token lifetime (issue 10 item 8): a token whose `nbf` is in the future
//! is refused, and so is one whose `exp - now` is over
//! `[auth] token_ttl_max_ms` (default 7 days), e.g. `exp = u64::MAX`, a
//! token that never expires. Tokens within the rules still connect.
//!
//! A configured cap and `[ws] allowed_origins` are enforced too.
//!
//! Before (main at 11dadd5) both were accepted.

mod common;
use common::{Node, SECRET};
use std::time::Duration;

fn sign(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn refusal(node: &Node, token: &str) -> Option<u16> {
    node.try_connect(&format!("/ws?token={token}")).err()
}

#[test]
fn future_nbf_and_endless_tokens_are_refused() {
    let node = Node::start();
    let now = jsonwebtoken::get_current_timestamp();
    let later = sign(serde_json::json!({"sub": "u", "exp": now + 600, "nbf": now + 300}));
    assert_eq!(refusal(&node, &later), Some(401), "nbf in the future");
    let forever = sign(serde_json::json!({"sub": "u", "exp": u64::MAX}));
    assert_eq!(refusal(&node, &forever), Some(401), "exp = u64::MAX");
    let month = sign(serde_json::json!({"sub": "u", "exp": now + 31 * 86_400}));
    assert_eq!(
        refusal(&node, &month),
        Some(401),
        "31 days, over the 7-day default"
    );
    // Within the rules: nbf passed, a week's lifetime.
    let started = sign(serde_json::json!({"sub": "u", "exp": now + 600, "nbf": now - 5}));
    assert!(node.try_connect(&format!("/ws?token={started}")).is_ok());
    let week = corecast::auth::TokenKeys::new(SECRET.as_bytes()).mint(
        "w",
        None,
        None,
        Duration::from_secs(7 * 86_400 - 60),
    );
    let mut client = node.connect_with_token(&week);
    let (status, _) = node.push_json("/v1/push/user/w", serde_json::json!(1));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], 1);
}

#[test]
fn a_configured_lifetime_cap_is_enforced() {
    let node = Node::start_with(&[("CORECAST_TOKEN_TTL_MAX_MS", "3600000")]);
    let now = jsonwebtoken::get_current_timestamp();
    let two_hours = sign(serde_json::json!({"sub": "u", "exp": now + 7_200}));
    assert_eq!(refusal(&node, &two_hours), Some(401), "over the 1 h cap");
    let half_hour = sign(serde_json::json!({"sub": "u", "exp": now + 1_800}));
    assert!(node.try_connect(&format!("/ws?token={half_hour}")).is_ok());
}

#[test]
fn an_origin_outside_allowed_origins_is_refused_with_403() {
    let node = Node::start_with(&[("CORECAST_WS_ALLOWED_ORIGINS", "https://app.example")]);
    let token = node.token("o", None);
    let upgrade = |origin: Option<&str>| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(node.ws).unwrap();
        stream.set_read_timeout(Some(common::WAIT)).unwrap();
        let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        write!(
            stream,
            "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
        )
        .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        String::from_utf8_lossy(&head).into_owned()
    };
    assert_eq!(upgrade(Some("https://evil.example")), "HTTP/1.1 403");
    assert_eq!(upgrade(Some("https://app.example")), "HTTP/1.1 101");
    assert_eq!(upgrade(None), "HTTP/1.1 101", "no Origin: not a browser");
}
