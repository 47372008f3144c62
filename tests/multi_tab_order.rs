//! A user with three tabs that landed on different accepting cores gets
//! every push on every tab, in the order the node accepted them, and all
//! three sessions live on the user's one home core.

mod common;
use common::{Client, Node, WAIT, wait_for};

/// The home core of "alice" on a 2-core node (FNV-1a, pinned in
/// `push::tests::home_is_stable`).
const ALICE_HOME: u64 = 1;

/// Connections tried until one tab was accepted on each core; the kernel's
/// `SO_REUSEPORT` hash picks the core, so this bounds a run of bad luck
/// (2 * 2^-30).
const ATTEMPTS_MAX: usize = 30;

fn handoffs(node: &Node) -> f64 {
    node.metric_sum("corecast_handoffs_total{")
}

#[test]
fn every_tab_gets_every_push_in_order() {
    let node = Node::start();
    // Keep one tab accepted by the home core itself and one handed over
    // from the other core, then a third of either kind.
    let (mut direct, mut handed): (Option<Client>, Option<Client>) = (None, None);
    let mut third = None;
    for _ in 0..ATTEMPTS_MAX {
        let before = handoffs(&node);
        let tab = node.connect("alice");
        let slot = if handoffs(&node) > before {
            &mut handed
        } else {
            &mut direct
        };
        if slot.is_none() {
            *slot = Some(tab);
        } else if third.is_none() {
            third = Some(tab);
        }
        if direct.is_some() && handed.is_some() && third.is_some() {
            break;
        }
    }
    let mut tabs: Vec<Client> = [direct, handed, third]
        .into_iter()
        .map(|tab| tab.expect("a tab accepted on each core"))
        .collect();
    assert!(
        handoffs(&node) >= 1.0,
        "one tab came through the other core"
    );

    // The tabs tried and not kept were dropped: wait until they are gone.
    let presence = || node.request("GET", "/v1/users/alice").1;
    wait_for("alice's three kept tabs", WAIT, || {
        presence()["channels"].as_array().map(Vec::len) == Some(3)
    });
    let presence = presence();
    let channels = presence["channels"].as_array().unwrap();
    for channel in channels {
        assert_eq!(
            channel["core"], ALICE_HOME,
            "every session on the home core: {presence}"
        );
    }
    for seq in 0..50 {
        let (status, body) = node.push_json("/v1/push/user/alice", serde_json::json!({"seq": seq}));
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["local_recipients"], 3);
    }
    for tab in &mut tabs {
        for seq in 0..50 {
            let msg = tab.recv_json();
            assert_eq!(msg["type"], "push");
            assert_eq!(msg["data"]["seq"], seq);
        }
    }
}
