//! Idempotent publish (issue 11): the same `Idempotency-Key` posted to
//! node A, then (200 ms later, once A's envelope has reached B) to node B,
//! then to A again is delivered once to the connected user, and all three
//! 202 answers carry the first push's id (the two retries with
//! `"duplicate":true`). Another key is another push.

mod common;
use common::{Poster, cluster};
use serde_json::json;
use std::time::Duration;

/// Time for the first push's envelope to reach the other node (the
/// contract says tens of ms).
const MESH_SETTLE: Duration = Duration::from_millis(200);

/// Posts with `Idempotency-Key: key`; the 202's id and whether it said
/// `"duplicate":true`.
fn post(poster: &Poster, path: &str, key: &str, n: u32) -> (String, bool) {
    match poster.push(path, &json!({"n": n}), Some(key)) {
        Ok((202, body)) => (
            body["id"].as_str().expect("id").to_string(),
            body["duplicate"] == true,
        ),
        other => panic!("push {n} with key {key}: {other:?}"),
    }
}

#[test]
fn one_key_on_two_nodes_is_one_push_with_one_id() {
    let nodes = cluster(2);
    let (a, b) = (Poster::new(nodes[0].http), Poster::new(nodes[1].http));
    let uid = "once";
    let path = format!("/v1/push/user/{uid}");
    let mut client = nodes[1].connect(uid);

    let (first, duplicate) = post(&a, &path, "order-42", 1);
    assert!(!duplicate, "the first post is no duplicate");
    std::thread::sleep(MESH_SETTLE);
    let (second, duplicate_on_b) = post(&b, &path, "order-42", 2);
    let (third, duplicate_on_a) = post(&a, &path, "order-42", 3);
    assert_eq!(second, first, "B answers with the first push's id");
    assert_eq!(third, first, "A answers with the first push's id");
    assert!(
        duplicate_on_b && duplicate_on_a,
        "both retries say duplicate"
    );

    let frame = client.recv_json();
    assert_eq!(frame["type"], "push", "{frame}");
    assert_eq!(frame["id"], first.as_str());
    assert_eq!(
        frame["data"],
        json!({"n": 1}),
        "the first body is the one delivered"
    );
    assert!(
        client.silent_for(Duration::from_millis(500)),
        "delivered once"
    );

    // A different key is a different push.
    let (other, _) = post(&b, &path, "order-43", 4);
    assert_ne!(other, first);
    let frame = client.recv_json();
    assert_eq!(frame["id"], other.as_str());
    assert_eq!(frame["data"], json!({"n": 4}));
}
