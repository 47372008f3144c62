//! 5,000 connections all receive a broadcast; none is lost.

mod common;
use common::Node;

#[test]
fn five_thousand_connections_all_receive() {
    let node = Node::start();
    let mut clients: Vec<_> = (0..5_000)
        .map(|i| node.connect(&format!("user-{i}")))
        .collect();
    let (status, body) = node.push_json("/v1/push/broadcast", serde_json::json!({"wave": 1}));
    assert_eq!(status, 202);
    assert_eq!(body["local_recipients"], 5_000);
    let mut received = 0;
    for c in &mut clients {
        if c.recv_json()["data"]["wave"] == 1 {
            received += 1;
        }
    }
    assert_eq!(received, 5_000);
    assert_eq!(node.connections(), 5_000.0);
}
