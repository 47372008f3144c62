//! Three real node processes linked by the ZeroMQ mesh, with a shared mesh
//! key (every mesh connection CURVE): a push accepted by any node reaches the
//! user wherever it is connected, exactly once.

mod common;
use common::{cluster, wait_for};
use std::time::Duration;

/// The next push message, or None after a quiet 300 ms.
fn next(client: &mut common::Client) -> Option<serde_json::Value> {
    if client.silent_for(Duration::from_millis(300)) {
        None
    } else {
        None.or(Some(client.recv_json()))
    }
}

#[test]
fn pushes_cross_the_mesh_exactly_once() {
    let nodes = cluster(3);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut on_a = a.connect("ua");
    let mut on_b = b.connect("ub");
    let mut on_c = c.connect("uc");

    // A user on C receives a push posted to A.
    let (status, body) = a.push_json("/v1/push/user/uc", serde_json::json!("to c"));
    assert_eq!(status, 202);
    assert_eq!(body["local_recipients"], 0);
    assert_eq!(on_c.recv_json()["data"], "to c");

    // A broadcast posted to B reaches A, B and C exactly once each.
    let (_, body) = b.push_json("/v1/push/broadcast", serde_json::json!("all"));
    assert_eq!(body["local_recipients"], 1);
    for client in [&mut on_a, &mut on_b, &mut on_c] {
        assert_eq!(client.recv_json()["data"], "all");
        assert_eq!(next(client), None, "a duplicate arrived");
    }

    // Server-side join on A for a user on C, then a room push from B.
    let (status, _) = a.request("POST", "/v1/rooms/ops/members/uc");
    assert_eq!(status, 202);
    wait_for("the join to reach C", Duration::from_secs(5), || {
        let (_, body) = c.push_json("/v1/push/room/ops", serde_json::json!("probe"));
        body["local_recipients"] == 1
    });
    assert_eq!(on_c.recv_json()["data"], "probe");
    let (_, _) = b.push_json("/v1/push/room/ops", serde_json::json!("room"));
    let msg = on_c.recv_json();
    assert_eq!(
        (msg["room"].as_str(), msg["data"].as_str()),
        (Some("ops"), Some("room"))
    );
    assert_eq!(next(&mut on_a), None);

    // Batch across nodes.
    let body = serde_json::json!({"uids": ["ua", "uc"], "data": "batch"});
    let (status, _) = b.post(
        "/v1/push/users",
        "application/json",
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 202);
    assert_eq!(on_a.recv_json()["data"], "batch");
    assert_eq!(on_c.recv_json()["data"], "batch");
    assert_eq!(next(&mut on_b), None);
}
