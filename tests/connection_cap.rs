//! `max_connections` is enforced at the handshake: with
//! CORECAST_MAX_CONNECTIONS=50 the 51st upgrade is answered 503 with a JSON
//! error body and counted in `corecast_limit_refusals_total`, while the 50
//! open connections keep receiving and a freed slot can be taken again.

mod common;
use common::{Node, WAIT, wait_for};
use std::io::{Read, Write};

const MAX: usize = 50;

#[test]
fn connection_51_is_refused_and_the_node_keeps_serving() {
    let node = Node::start_with(&[("CORECAST_MAX_CONNECTIONS", "50")]);
    let mut clients: Vec<_> = (0..MAX).map(|i| node.connect(&format!("u{i}"))).collect();
    wait_for("50 connections", WAIT, || node.connections() == MAX as f64);

    // The 51st, by hand to see the whole answer.
    let mut raw = std::net::TcpStream::connect(node.ws).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let token = node.token("u-extra", None);
    write!(
        raw,
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(json["error"]["code"], "over_capacity", "{json}");
    assert_eq!(
        node.metric(r#"corecast_limit_refusals_total{limit="max_connections"}"#),
        1.0
    );
    assert_eq!(
        node.metric(r#"corecast_handshakes_total{outcome="over_capacity"}"#),
        1.0
    );
    // tungstenite sees the same refusal.
    assert_eq!(
        node.try_connect(&format!("/ws?token={token}")).err(),
        Some(503)
    );

    // Existing clients are served.
    let (status, _) = node.push_json("/v1/push/user/u7", serde_json::json!({"n": 1}));
    assert_eq!(status, 202);
    assert_eq!(clients[7].recv_json()["data"]["n"], 1);

    // One leaves; its slot is free again.
    let mut leaving = clients.pop().unwrap();
    leaving
        .ws
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        }))
        .unwrap();
    assert_eq!(leaving.expect_close(), 1000, "the node echoes the code");
    wait_for("49 connections", WAIT, || {
        node.connections() == (MAX - 1) as f64
    });
    let mut newcomer = node.connect("u-extra");
    let (status, _) = node.push_json("/v1/push/user/u-extra", serde_json::json!({"n": 2}));
    assert_eq!(status, 202);
    assert_eq!(newcomer.recv_json()["data"]["n"], 2);
    assert_eq!(node.connections(), MAX as f64);
    assert_eq!(
        node.metric(r#"corecast_limit_refusals_total{limit="max_connections"}"#),
        2.0
    );
}
