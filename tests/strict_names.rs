//! Names refuse control characters and bad percent-encoding (issue 10
//! item 8) instead of decoding lossily, on every way in: HTTP path
//! segments, batch uids, token claims and client joins. Each refusal
//! changes nothing else: a connected user keeps receiving.
//!
//! Before (main at 11dadd5) `%FF` and `%FE` both became the uid "\u{FFFD}"
//! (one user reachable under two raw names), and control characters were
//! accepted everywhere.

mod common;
use common::{API_KEY, Node};
use std::io::{Read, Write};
use std::time::Duration;

/// Sends a raw POST with a JSON body; returns status line and body.
fn raw_post(node: &Node, path: &str, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(node.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    (status, answer)
}

fn still_delivers(node: &Node, client: &mut common::Client, n: i64) {
    let (status, _) = node.push_json("/v1/push/user/good", serde_json::json!(n));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], n);
}

#[test]
fn path_segments_decode_strictly() {
    let node = Node::start();
    let mut good = node.connect("good");
    for path in [
        "/v1/push/user/%FF",
        "/v1/push/user/%FE",
        "/v1/push/user/%ZZ",
        "/v1/push/user/a%",
        "/v1/push/user/a%0Ab",
        "/v1/push/user/%00",
        "/v1/push/room/%7F",
        "/v1/rooms/r/members/%C2%85",
    ] {
        let (status, answer) = raw_post(&node, path, r#"{"data":1}"#);
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(answer.contains("\"bad_request\""), "{answer}");
    }
    still_delivers(&node, &mut good, 1);
    // Valid escapes still decode: %C3%A9 is "é".
    let mut accented = node.connect("é");
    let (status, _) = raw_post(&node, "/v1/push/user/%C3%A9", r#"{"data":"e"}"#);
    assert_eq!(status, 202);
    assert_eq!(accented.recv_json()["data"], "e");
}

#[test]
fn control_characters_are_refused_everywhere() {
    let node = Node::start();
    let mut good = node.connect("good");
    let (status, answer) = raw_post(
        &node,
        "/v1/push/users",
        r#"{"uids":["good","a\u0007b"],"data":1}"#,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        good.silent_for(Duration::from_millis(300)),
        "nothing was half-sent"
    );
    let bad_sub = node.token("tab\there", None);
    assert_eq!(
        node.try_connect(&format!("/ws?token={bad_sub}")).err(),
        Some(401)
    );
    let bad_room = node.token("roomy", Some(&["ok", "new\nline"]));
    assert_eq!(
        node.try_connect(&format!("/ws?token={bad_room}")).err(),
        Some(401)
    );
    let mut joiner = common::Node::connect_rooms(&node, "joiner", &["ok"]);
    let refused = joiner.join("bell\u{7}");
    assert_eq!(refused["error"]["code"], "bad_room", "{refused}");
    still_delivers(&node, &mut good, 2);
}
