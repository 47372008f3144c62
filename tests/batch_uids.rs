//! A batch's uid list is de-duplicated and capped while it is parsed
//! (issue 10 item 7, batch part): one uid listed 10,000 times gets one
//! frame, not 10,000 (which made it a slow consumer and closed it 1013),
//! and a list over the cap is refused without being built.
//!
//! Before (main at 11dadd5): 10,000 frames were queued for the listed user,
//! whose connection was closed as a slow consumer.

mod common;
use common::Node;
use std::time::Duration;

#[test]
fn one_uid_listed_10000_times_gets_one_frame() {
    let node = Node::start();
    // A one-letter uid: 10,000 of them fit the 64 KiB body cap.
    let mut victim = node.connect("v");
    let rss_before = common::rss_kib(node.pid());
    let uids = vec!["v"; 10_000];
    let body = serde_json::json!({"uids": uids, "data": "once"}).to_string();
    let (status, answer) = node.post("/v1/push/users", "application/json", body.as_bytes());
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["local_recipients"], 1, "{answer}");
    assert_eq!(victim.recv_json()["data"], "once");
    assert!(
        victim.silent_for(Duration::from_millis(500)),
        "a second frame arrived"
    );
    // Still connected: a later push arrives.
    let (status, _) = node.push_json("/v1/push/user/v", serde_json::json!("after"));
    assert_eq!(status, 202);
    assert_eq!(victim.recv_json()["data"], "after");
    eprintln!(
        "batch of 10,000 copies of one uid: 1 frame; RSS {rss_before} KiB -> {} KiB",
        common::rss_kib(node.pid())
    );
}

#[test]
fn a_list_over_the_cap_is_refused() {
    let node = Node::start();
    let mut victim = node.connect("victim");
    // The cap counts what the body lists, duplicates included.
    let uids = vec!["v"; 10_001];
    let body = serde_json::json!({"uids": uids, "data": 1}).to_string();
    let (status, answer) = node.post("/v1/push/users", "application/json", body.as_bytes());
    assert_eq!(status, 400);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uids must list"),
        "{answer}"
    );
    let (status, _) = node.push_json("/v1/push/user/victim", serde_json::json!(2));
    assert_eq!(status, 202);
    assert_eq!(victim.recv_json()["data"], 2);
}
