//! A client on the push API port that never finishes a request (or sits on
//! an idle keep-alive connection) is closed after http_idle_timeout_ms, so
//! slow clients cannot pin the API's connection slots; requests in flight
//! are unaffected.

mod common;
use common::Node;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn stalled_http_client_is_closed() {
    let node = Node::start_with(&[("CORECAST_HTTP_IDLE_TIMEOUT_MS", "1000")]);
    let mut stalled = TcpStream::connect(node.http).unwrap();
    stalled
        .write_all(b"POST /v1/push/broadcast HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    // Meanwhile and afterwards the API answers.
    assert_eq!(node.request("GET", "/healthz").0, 200);
    let mut client = node.connect("u");
    let (status, _) = node.push_json("/v1/push/user/u", serde_json::json!(1));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], 1);
}
