//! The application-level liveness check a browser client needs (it cannot
//! see WebSocket pings): `{"type":"ping"}` is answered `{"type":"pong"}`,
//! and counts in the client's message rate like any other message.

mod common;
use common::Node;

#[test]
fn a_ping_message_is_answered_with_a_pong_message() {
    let node = Node::start_with(&[("CORECAST_CLIENT_MESSAGES_PER_SEC_MAX", "5")]);
    let mut client = node.connect("pinger");
    client.send_text(r#"{"type":"ping"}"#);
    assert_eq!(client.recv_json(), serde_json::json!({"type": "pong"}));
    // Past the rate limit a ping is refused like any message.
    for _ in 0..6 {
        client.send_text(r#"{"type":"ping"}"#);
    }
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(client.recv_json());
    }
    assert!(
        answers.iter().any(|a| a["error"]["code"] == "rate_limited"),
        "{answers:?}"
    );
}
