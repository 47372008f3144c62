//! Every bad input gets its documented status and changes nothing else:
//! a connected user keeps receiving after each refusal.

mod common;
use common::{API_KEY, Node, SECRET};
use corecast::auth::{Claims, TokenKeys};
use std::io::{Read, Write};
use std::time::Duration;

fn still_delivers(node: &Node, client: &mut common::Client, n: i64) {
    let (status, _) = node.push_json("/v1/push/user/good", serde_json::json!({"n": n}));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"]["n"], n);
}

#[test]
fn bad_handshakes_are_refused_before_upgrade() {
    let node = Node::start();
    let mut good = node.connect("good");
    assert_eq!(node.try_connect("/ws").err(), Some(401), "missing token");
    assert_eq!(
        node.try_connect("/ws?token=garbage").err(),
        Some(401),
        "malformed"
    );
    let forged = TokenKeys::new(b"another-secret").mint("x", None, None, Duration::from_secs(60));
    assert_eq!(
        node.try_connect(&format!("/ws?token={forged}")).err(),
        Some(401)
    );
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims {
            sub: "x".into(),
            exp: 1_000,
            rooms: None,
            device: None,
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        node.try_connect(&format!("/ws?token={expired}")).err(),
        Some(401)
    );
    assert_eq!(node.try_connect("/nope").err(), Some(404));
    still_delivers(&node, &mut good, 1);

    // Not a WebSocket request: 400 with a JSON reason.
    let mut raw = std::net::TcpStream::connect(node.ws).unwrap();
    raw.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"not_websocket\""), "{answer}");

    // Garbage bytes and oversize headers.
    let mut raw = std::net::TcpStream::connect(node.ws).unwrap();
    raw.write_all(&[0x16, 3, 1, 0, 0xff, 0xfe, b'\r', b'\n', b'\r', b'\n'])
        .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let mut raw = std::net::TcpStream::connect(node.ws).unwrap();
    let huge = format!("GET /ws HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let _ = raw.write_all(huge.as_bytes());
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    still_delivers(&node, &mut good, 2);
    assert!(node.metric("corecast_handshakes_total{outcome=\"unauthorized\"}") >= 4.0);
}

#[test]
fn bad_pushes_get_their_status() {
    let node = Node::start();
    let mut good = node.connect("good");
    let url = node.url("/v1/push/user/good");
    let no_key = ureq::post(&url)
        .set("Content-Type", "application/json")
        .send_string("{\"data\":1}");
    assert_eq!(no_key.unwrap_err().into_response().unwrap().status(), 401);
    let wrong_key = ureq::post(&url)
        .set("Authorization", "Bearer nope")
        .set("Content-Type", "application/json")
        .send_string("{\"data\":1}");
    assert_eq!(
        wrong_key.unwrap_err().into_response().unwrap().status(),
        401
    );
    let cases: &[(&str, &str, &[u8], u16, &str)] = &[
        (
            "/v1/push/user/good",
            "application/json",
            b"{not json",
            400,
            "bad_request",
        ),
        (
            "/v1/push/user/good",
            "application/json",
            b"{\"nodata\":1}",
            400,
            "bad_request",
        ),
        (
            "/v1/push/user/good",
            "application/xml",
            b"<a/>",
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/push/users",
            "text/plain",
            b"hi",
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/push/users",
            "application/json",
            b"{\"data\":1}",
            400,
            "bad_request",
        ),
        (
            "/v1/push/users",
            "application/json",
            b"{\"uids\":[],\"data\":1}",
            400,
            "bad_request",
        ),
        (
            "/v1/push/nowhere",
            "application/json",
            b"{\"data\":1}",
            404,
            "not_found",
        ),
        (
            "/v1/push/user/good",
            "text/plain",
            b"\xff\xfe",
            400,
            "bad_request",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let (got, answer) = node.post(path, content_type, body);
        assert_eq!(got, *status, "{path} {content_type}: {answer}");
        assert_eq!(answer["error"]["code"], *code, "{answer}");
    }
    let big = vec![b'a'; 70 * 1024];
    let (status, answer) = node.post("/v1/push/user/good", "text/plain", &big);
    assert_eq!(status, 413, "{answer}");
    let (status, _) = node.request("GET", "/v1/push/broadcast");
    assert_eq!(status, 405);
    let (status, _) = node.request("PUT", "/v1/rooms/r/members/u");
    assert_eq!(status, 405);
    still_delivers(&node, &mut good, 3);
    assert_eq!(
        node.metric("corecast_limit_refusals_total{limit=\"push_body_bytes\"}"),
        1.0
    );
    let _ = API_KEY;
}

#[test]
fn bad_client_messages_get_error_frames() {
    let node = Node::start();
    let mut client = node.connect("c");
    client.send_text("{oops");
    assert_eq!(client.recv_json()["error"]["code"], "bad_json");
    client.send_text(r#"{"type":"dance"}"#);
    assert_eq!(client.recv_json()["error"]["code"], "unknown_type");
    client
        .ws
        .send(tungstenite::Message::binary(vec![1, 2, 3]))
        .unwrap();
    assert_eq!(client.recv_json()["error"]["code"], "binary_not_accepted");
    let (status, _) = node.push_json("/v1/push/user/c", serde_json::json!(7));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], 7);
}
