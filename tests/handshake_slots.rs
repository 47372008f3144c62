//! Handshake-slot exhaustion from one address: 1,500 connections from
//! 127.0.0.2 that never send a byte. Past that address's share of the
//! handshake slots the node answers 503 with `Retry-After` at once, the
//! ones holding a slot are let go at the request-line deadline (1 s), and
//! a well-behaved client from another address connects within 1 s
//! throughout. (Before slots, a permit was taken before accept: 1,024
//! silent connections held every permit of a 2-core node, and the next
//! client waited in the kernel's backlog until a handshake timeout freed
//! one.)

mod common;
use common::{Node, WAIT, connect_from, wait_for};
use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

/// Silent connections the attacker opens.
const SLOW_CONNECTIONS: usize = 1_500;

/// What a well-behaved client may wait for its upgrade meanwhile.
const HONEST_WITHIN: Duration = Duration::from_secs(1);

/// What the node wrote before closing, read for at most `within`.
fn answer(stream: &mut TcpStream, within: Duration) -> String {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

#[test]
fn silent_connections_from_one_address_do_not_lock_others_out() {
    let node = Node::start();
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..SLOW_CONNECTIONS)
        .map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 2), node.ws))
        .collect();
    eprintln!(
        "{SLOW_CONNECTIONS} silent connections opened in {:?}",
        started.elapsed()
    );

    let honest = Instant::now();
    let mut client = node.connect("honest");
    let waited = honest.elapsed();
    assert!(waited < HONEST_WITHIN, "a good client waited {waited:?}");
    let (status, _) = node.push_json("/v1/push/user/honest", serde_json::json!("hi"));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], "hi");

    // The last connections found no slot: a 503 with Retry-After, at once.
    let refused = answer(slow.last_mut().unwrap(), WAIT);
    assert!(refused.starts_with("HTTP/1.1 503"), "got {refused:?}");
    assert!(refused.contains("Retry-After: 1\r\n"), "got {refused:?}");
    assert!(refused.contains("\"busy\""), "got {refused:?}");
    let counted = node.metric(r#"corecast_limit_refusals_total{limit="handshakes_per_address"}"#);
    let share = 256; // handshakes_per_address_max, the default
    assert!(
        counted >= (SLOW_CONNECTIONS - share) as f64,
        "{counted} refused of {SLOW_CONNECTIONS}"
    );

    // The first ones held a slot: let go at the request-line deadline.
    let holder = answer(&mut slow[0], WAIT);
    assert!(holder.starts_with("HTTP/1.1 408"), "got {holder:?}");
    wait_for("every slot to be free again", WAIT, || {
        node.metric(r#"corecast_handshakes_total{outcome="timeout"}"#) >= 1.0
    });
    drop(slow);
    let again = Instant::now();
    let _second = node.connect("honest2");
    assert!(again.elapsed() < HONEST_WITHIN);
}
