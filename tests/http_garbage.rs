//! Malformed HTTP on the push API port (garbage, a broken request line,
//! thousands of headers, a lying Content-Length) gets an error or a closed
//! connection, never a crash; pushes keep working.

mod common;
use common::Node;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn exchange(node: &Node, bytes: &[u8]) -> String {
    let mut raw = TcpStream::connect(node.http).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = raw.write_all(bytes);
    let _ = raw.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn malformed_http_never_hurts_the_node() {
    let node = Node::start();
    let mut client = node.connect("steady");

    let garbage = exchange(
        &node,
        &[0x16, 0x03, 0x01, 0xff, 0x00, b'\r', b'\n', b'\r', b'\n'],
    );
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
        "{garbage}"
    );
    let bad_line = exchange(&node, b"POST\r\n\r\n");
    assert!(
        bad_line.is_empty() || bad_line.starts_with("HTTP/1.1 400"),
        "{bad_line}"
    );
    let many: String = (0..5_000).map(|i| format!("X-{i}: y\r\n")).collect();
    let headers = exchange(
        &node,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    );
    assert!(
        headers.is_empty() || headers.starts_with("HTTP/1.1 4"),
        "{}",
        &headers[..headers.len().min(200)]
    );
    let lying = exchange(
        &node,
        b"POST /v1/push/user/steady HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-api-key\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"data\":1}",
    );
    assert!(!lying.starts_with("HTTP/1.1 202"), "{lying}");

    let (status, _) = node.push_json("/v1/push/user/steady", serde_json::json!("still here"));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], "still here");
    assert_eq!(node.request("GET", "/healthz").0, 200);
}
