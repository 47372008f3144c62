//! The handshake timeout cuts slowloris clients: with
//! CORECAST_HANDSHAKE_TIMEOUT_MS=1000, a client that sends half a request
//! line and then nothing has its socket closed by the node at the timeout
//! (after a best-effort 408), counted as
//! `corecast_handshakes_total{outcome="timeout"}`; meanwhile a normal
//! client connects and receives.

mod common;
use common::{Node, WAIT};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[test]
fn half_a_request_line_is_cut_at_the_timeout() {
    let node = Node::start_with(&[("CORECAST_HANDSHAKE_TIMEOUT_MS", "1000")]);
    let started = Instant::now();
    let mut loris = std::net::TcpStream::connect(node.ws).unwrap();
    loris.write_all(b"GET /ws?tok").unwrap();
    loris.set_read_timeout(Some(WAIT)).unwrap();

    // While the loris hangs, a normal client connects and receives.
    let mut good = node.connect("good");
    let (status, _) = node.push_json("/v1/push/user/good", serde_json::json!({"n": 1}));
    assert_eq!(status, 202);
    assert_eq!(good.recv_json()["data"]["n"], 1);
    assert_eq!(
        node.metric(r#"corecast_handshakes_total{outcome="timeout"}"#),
        0.0,
        "not cut before the timeout"
    );

    // The node closes the loris: EOF (after a 408), or a reset.
    let mut answer = Vec::new();
    let read = loris.read_to_end(&mut answer);
    let elapsed = started.elapsed();
    match read {
        Ok(_) => {
            let text = String::from_utf8_lossy(&answer);
            assert!(
                answer.is_empty() || text.starts_with("HTTP/1.1 408"),
                "{text}"
            );
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(
        elapsed >= Duration::from_millis(900),
        "cut too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "cut too late: {elapsed:?}"
    );
    assert_eq!(
        node.metric(r#"corecast_handshakes_total{outcome="timeout"}"#),
        1.0
    );
    assert_eq!(
        node.metric(r#"corecast_limit_refusals_total{limit="handshake_timeout"}"#),
        1.0
    );

    // The normal client is still served.
    let (status, _) = node.push_json("/v1/push/user/good", serde_json::json!({"n": 2}));
    assert_eq!(status, 202);
    assert_eq!(good.recv_json()["data"]["n"], 2);
}
