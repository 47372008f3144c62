//! Token lifetime (issue 10 item 8): a token whose `nbf` is in the future
//! is refused, and so is one whose `exp - now` is over
//! `[auth] token_ttl_max_ms` (default 7 days), e.g. `exp = u64::MAX`, a
//! token that never expires. Tokens within the rules still connect.
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
