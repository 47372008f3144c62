//! A connection whose token expires is closed with 4003 ("token expired")
//! at the heartbeat tick after its `exp`, so that the client refreshes its
//! token and reconnects; a connection with a longer token stays open.

mod common;
use common::{Node, SECRET, WAIT};
use corecast::auth::TokenKeys;
use std::time::{Duration, Instant};

/// Lifetime of the short token (`exp` has one-second resolution).
const SHORT_TTL: Duration = Duration::from_secs(2);

#[test]
fn an_expired_token_closes_its_connection_with_4003() {
    let node = Node::start();
    let keys = TokenKeys::new(SECRET.as_bytes());
    let short = keys.mint("brief", None, None, SHORT_TTL);
    let started = Instant::now();
    let mut expiring = node.connect_with_token(&short);
    let mut lasting = node.connect("lasting");
    assert_eq!(expiring.expect_close(), 4003);
    let closed_after = started.elapsed();
    assert!(
        closed_after <= SHORT_TTL + Duration::from_secs(2),
        "closed {closed_after:?} after connect, for a {SHORT_TTL:?} token"
    );
    assert!(closed_after < WAIT);
    node.wait_metric(r#"corecast_disconnects_total{reason="token_expired"}"#, 1.0);
    let (status, _) = node.push_json("/v1/push/user/lasting", serde_json::json!("still here"));
    assert_eq!(status, 202);
    assert_eq!(lasting.recv_json()["data"], "still here");
}
