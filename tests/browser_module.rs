//! `GET /corecast.js` on the WebSocket port: the browser client as an ES
//! module any page may import (CORS `*`), with an ETag that turns a reload
//! into a 304, and the WebSocket upgrade on the same port unchanged.

mod common;
use common::{Node, WAIT};
use std::io::{Read, Write};
use std::net::TcpStream;

/// One raw HTTP/1.1 exchange on the WebSocket port: the status line and
/// headers (lowercased names) and the body.
fn get(node: &Node, request: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(node.ws).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn the_browser_client_is_served_with_cors_and_an_etag() {
    let node = Node::start();
    let (status, headers, body) = get(&node, "GET /corecast.js HTTP/1.1\r\nHost: n\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let module = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/assets/corecast.js"
    ))
    .unwrap();
    assert_eq!(body, module, "the module as it is in the repository");
    assert!(String::from_utf8_lossy(&body).contains("export class Corecast"));
    let etag = header(&headers, "etag").expect("an ETag").to_string();

    let (status, headers, body) = get(
        &node,
        &format!("GET /corecast.js HTTP/1.1\r\nHost: n\r\nIf-None-Match: {etag}\r\n\r\n"),
    );
    assert_eq!(status, "HTTP/1.1 304 Not Modified");
    assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
    assert!(body.is_empty());

    // The upgrade on the same port is unchanged.
    let mut client = node.connect("after-asset");
    let (status, _) = node.push_json("/v1/push/user/after-asset", serde_json::json!(1));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], 1);
}
