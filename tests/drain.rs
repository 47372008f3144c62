//! Graceful drain on SIGTERM and on SIGINT: every client receives every
//! push accepted before the signal and then a close 1001; `/readyz`
//! answers 503 during the drain (CORECAST_DRAIN_PERIOD_MS=2000); new
//! handshakes are refused; the process exits with status 0.

mod common;
use common::{Node, WAIT, wait_for};
use nix::sys::signal::Signal;
use std::time::Duration;

const CLIENTS: usize = 20;
const PUSHES: usize = 50;

fn readyz(node: &Node) -> Option<u16> {
    match ureq::get(&node.url("/readyz")).call() {
        Ok(r) => Some(r.status()),
        Err(ureq::Error::Status(code, _)) => Some(code),
        Err(_) => None, // the HTTP port is gone (end of the drain)
    }
}

/// Whether a new WebSocket handshake is refused: connection refused or
/// reset, or an HTTP error status instead of 101.
fn handshake_refused(node: &Node) -> bool {
    let Ok(stream) = std::net::TcpStream::connect(node.ws) else {
        return true;
    };
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let url = format!("ws://{}/ws?token={}", node.ws, node.token("late", None));
    match tungstenite::client::client(url, stream) {
        Ok(_) => false,
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status(), 503);
            true
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Io(e))) => {
            assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "handshake hung");
            true
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Protocol(_))) => true,
        Err(e) => panic!("handshake: {e}"),
    }
}

fn drains_on(signal: Signal) {
    let mut node = Node::start_with(&[("CORECAST_DRAIN_PERIOD_MS", "2000")]);
    let mut clients: Vec<_> = (0..CLIENTS)
        .map(|i| node.connect_rooms(&format!("u{i}"), &["all"]))
        .collect();
    assert_eq!(readyz(&node), Some(200));
    for n in 0..PUSHES {
        let path = if n.is_multiple_of(2) {
            "/v1/push/broadcast"
        } else {
            "/v1/push/room/all"
        };
        let (status, _) = node.push_json(path, serde_json::json!({"n": n}));
        assert_eq!(status, 202);
    }
    node.signal(signal);
    wait_for("/readyz 503", Duration::from_secs(2), || {
        readyz(&node) == Some(503)
    });
    assert!(handshake_refused(&node), "a handshake during the drain");

    for (i, client) in clients.iter_mut().enumerate() {
        for n in 0..PUSHES {
            assert_eq!(client.recv_json()["data"]["n"], n, "client {i}");
        }
        assert_eq!(client.expect_close(), 1001, "client {i}");
    }
    let status = node.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn sigterm_drains_and_exits_0() {
    drains_on(Signal::SIGTERM);
}

#[test]
fn sigint_drains_and_exits_0() {
    drains_on(Signal::SIGINT);
}
