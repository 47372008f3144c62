//! A broadcast reaches every connection; a batch push reaches exactly the
//! listed users.

mod common;
use common::Node;
use std::time::Duration;

#[test]
fn broadcast_reaches_everyone() {
    let node = Node::start();
    let mut clients: Vec<_> = (0..20).map(|i| node.connect(&format!("u{i}"))).collect();
    let (status, body) = node.push_json("/v1/push/broadcast", serde_json::json!("all"));
    assert_eq!(status, 202);
    assert_eq!(body["local_recipients"], 20);
    for c in &mut clients {
        assert_eq!(c.recv_json()["data"], "all");
    }
}

#[test]
fn batch_reaches_exactly_the_listed_users() {
    let node = Node::start();
    let mut clients: Vec<_> = (0..10).map(|i| node.connect(&format!("u{i}"))).collect();
    let body = serde_json::json!({"uids": ["u1", "u3", "u5", "nobody"], "data": {"x": 1}});
    let (status, answer) = node.post(
        "/v1/push/users",
        "application/json",
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["local_recipients"], 3);
    for (i, c) in clients.iter_mut().enumerate() {
        if [1, 3, 5].contains(&i) {
            assert_eq!(c.recv_json()["data"]["x"], 1);
        } else {
            assert!(
                c.silent_for(Duration::from_millis(100)),
                "u{i} got a message"
            );
        }
    }
}

#[test]
fn text_and_binary_bodies() {
    let node = Node::start();
    let mut c = node.connect("t");
    let (status, _) = node.post(
        "/v1/push/user/t",
        "text/plain; charset=utf-8",
        "héllo".as_bytes(),
    );
    assert_eq!(status, 202);
    assert_eq!(c.recv_json()["data"], "héllo");
    let (status, _) = node.post(
        "/v1/push/user/t",
        "application/octet-stream",
        &[0, 1, 2, 255],
    );
    assert_eq!(status, 202);
    // A binary push is announced by a text frame with its id and position,
    // then comes as the raw bytes.
    let header = c.recv_json();
    assert_eq!(header["type"], "binary", "{header}");
    assert!(
        header["id"].is_string() && header["pos"].is_string(),
        "{header}"
    );
    match c.recv_message() {
        tungstenite::Message::Binary(bytes) => assert_eq!(&bytes[..], &[0, 1, 2, 255]),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}
