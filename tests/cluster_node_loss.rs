//! A node killed with SIGKILL in the middle of a stream of 10,000 pushes:
//! users on the surviving nodes receive all of them, in order; the killed
//! node, restarted on the same mesh address, receives what is posted after
//! it is ready.

mod common;
use common::{Node, peer_port, wait_for};
use std::time::Duration;

const PUSHES: u64 = 10_000;
const KILL_AT: u64 = 3_000;

/// The cluster's shared secret: every mesh connection is CURVE.
const MESH_KEY: &str = "cluster-node-loss-test-key-0123456789ab";

fn start(id: &str, mesh: &str, peers: &str) -> Node {
    Node::start_meshed(id, mesh, peers, MESH_KEY)
}

#[test]
fn survivors_get_every_push_and_a_restarted_node_rejoins() {
    let mesh: Vec<String> = (0..3)
        .map(|_| format!("tcp://127.0.0.1:{}", peer_port()))
        .collect();
    let peers = mesh.join(",");
    let a = start("node-a", &mesh[0], &peers);
    let b = start("node-b", &mesh[1], &peers);
    let c = start("node-c", &mesh[2], &peers);
    for node in [&a, &b, &c] {
        node.wait_peers_up(2);
    }
    let mut on_a = a.connect("ua");
    let mut on_c = c.connect("uc");
    let mut on_b = b.connect("ub");

    let mut b = Some(b);
    for seq in 0..PUSHES {
        if seq == KILL_AT {
            let mut killed = b.take().expect("b runs until now");
            killed.child.kill().expect("SIGKILL node b");
            killed.child.wait().unwrap();
        }
        let (status, _) = a.push_json("/v1/push/broadcast", serde_json::json!({"seq": seq}));
        assert_eq!(status, 202, "push {seq}");
    }
    for (name, client) in [("a", &mut on_a), ("c", &mut on_c)] {
        for seq in 0..PUSHES {
            let msg = client.recv_json();
            assert_eq!(msg["data"]["seq"], seq, "user on {name} at {seq}");
        }
    }
    // B's user saw a prefix of the stream, in order, before B died.
    let mut seen = 0;
    while seen < KILL_AT {
        let Ok(tungstenite::Message::Text(text)) = on_b.ws.read() else {
            break;
        };
        let msg: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(msg["data"]["seq"], seen);
        seen += 1;
    }

    // B comes back on the same mesh address and receives new pushes.
    let b = start("node-b", &mesh[1], &peers);
    b.wait_peers_up(2);
    a.wait_peers_up(2);
    let mut on_b = b.connect("ub");
    wait_for(
        "a push from A to reach restarted B",
        Duration::from_secs(15),
        || {
            let (_, _) = a.push_json("/v1/push/user/ub", serde_json::json!("after restart"));
            !on_b.silent_for(Duration::from_millis(200))
        },
    );
    assert_eq!(
        a.metric("corecast_mesh_drops_total{reason=\"corrupt\"}"),
        0.0
    );
}
