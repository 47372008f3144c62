//! The node pings every ping_interval and closes a connection that stays
//! silent past idle_timeout; a client that answers pings stays.

mod common;
use common::Node;
use std::time::{Duration, Instant};
use tungstenite::Message;

#[test]
fn silent_client_is_pinged_then_closed() {
    let node = Node::start_with(&[
        ("CORECAST_PING_INTERVAL_MS", "1000"),
        ("CORECAST_IDLE_TIMEOUT_MS", "3000"),
    ]);
    let mut silent = node.connect("silent");
    // A raw read that never answers: tungstenite replies to pings only when
    // it writes, so read the ping and then stop reading entirely.
    match silent.ws.read().unwrap() {
        Message::Ping(_) => {}
        other => panic!("expected a ping, got {other:?}"),
    }
    let start = Instant::now();
    node.wait_metric("corecast_disconnects_total{reason=\"idle_timeout\"}", 1.0);
    assert!(start.elapsed() < Duration::from_secs(8));
}

#[test]
fn client_answering_pings_stays() {
    let node = Node::start_with(&[
        ("CORECAST_PING_INTERVAL_MS", "1000"),
        ("CORECAST_IDLE_TIMEOUT_MS", "2500"),
    ]);
    let mut alive = node.connect("alive");
    let until = Instant::now() + Duration::from_secs(5);
    let mut pings = 0;
    while Instant::now() < until {
        alive
            .ws
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match alive.ws.read() {
            Ok(Message::Ping(_)) => {
                pings += 1;
                alive.ws.flush().unwrap();
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(pings >= 3, "{pings} pings");
    let (_, body) = node.push_json("/v1/push/user/alive", serde_json::json!(1));
    assert_eq!(body["local_recipients"], 1);
}
