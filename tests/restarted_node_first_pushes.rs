//! A node restarted in a cluster answers pushes as soon as it is ready
//! (a load balancer sends them once `/readyz` says 200): each one answered
//! 202 reaches a user connected to another node, in the node's order.
//! Found by tests/rolling_restart.rs: the first pushes a restarted node
//! answered 202 went missing for users on the other nodes, with no live
//! `resumed` `recovered:false` either.

mod common;
use common::{CLUSTER_MESH_KEY, Client, Node, Poster, WAIT, peer_port};
use serde_json::json;
use std::time::Duration;

/// Pushes posted to the restarted node right after it is ready.
const PUSHES: usize = 20;
/// Later pushes tried until one reaches A (bounded).
const MARKERS_MAX: usize = 50;

#[test]
fn first_pushes_of_a_restarted_node_reach_the_other_nodes() {
    let (pa, pb) = (peer_port(), peer_port());
    let (ma, mb) = (
        format!("tcp://127.0.0.1:{pa}"),
        format!("tcp://127.0.0.1:{pb}"),
    );
    let peers = format!("{ma},{mb}");
    let a = Node::start_meshed("node-a", &ma, &peers, CLUSTER_MESH_KEY);
    let b = Node::start_meshed("node-b", &mb, &peers, CLUSTER_MESH_KEY);
    a.wait_peers_up(1);
    b.wait_peers_up(1);
    let mut client = a.connect("watcher");
    drop(b);
    let b = Node::start_meshed("node-b", &mb, &peers, CLUSTER_MESH_KEY);
    // Until A has subscribed to the new B, B answers pushes 503 (its PUB
    // would drop them for A) and /readyz says "starting".
    b.wait_ready();
    let poster = Poster::new(b.http);
    let ids: Vec<String> = (0..PUSHES)
        .map(|n| poster.push_ok("/v1/push/user/watcher", json!({"n": n})))
        .collect();
    // Then, once A is subscribed to the new B again, pushes until one
    // arrives: A has now seen the new incarnation, so a hole before it is
    // known to A.
    a.wait_peers_up(1);
    let mut markers = Vec::new();
    let mut got = Vec::new();
    let mut told = None;
    for n in 0..MARKERS_MAX {
        markers.push(poster.push_ok("/v1/push/user/watcher", json!({"marker": n})));
        while let Some(frame) = next_frame(&mut client, Duration::from_millis(100)) {
            if frame["type"] == "resumed" {
                told = Some(frame);
            } else {
                got.push(frame["id"].as_str().expect("id").to_string());
            }
        }
        if got.iter().any(|id| markers.contains(id)) {
            break;
        }
    }
    assert!(
        got.iter().any(|id| markers.contains(id)),
        "no push from the restarted node reached A"
    );
    let lost: Vec<&String> = ids.iter().filter(|id| !got.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {PUSHES} pushes answered 202 by the restarted node never reached the user on A \
         ({}); loss notice: {told:?}",
        lost.len(),
        if told.is_some() { "told" } else { "silently" }
    );
    let first: Vec<&String> = got.iter().filter(|id| ids.contains(id)).collect();
    assert_eq!(first, ids.iter().collect::<Vec<_>>(), "in the node's order");
}

/// The next text frame within `wait`, or None (pings skipped).
fn next_frame(client: &mut Client, wait: Duration) -> Option<serde_json::Value> {
    client.ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    let frame = loop {
        match client.ws.read() {
            Ok(tungstenite::Message::Text(text)) => break serde_json::from_str(&text).ok(),
            Ok(tungstenite::Message::Close(frame)) => panic!("closed: {frame:?}"),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break None;
            }
            Err(e) => panic!("read: {e}"),
        }
    };
    client.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    frame
}
