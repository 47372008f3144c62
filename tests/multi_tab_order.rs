//! A user with three tabs (three source ports, landing on different cores)
//! gets every push on every tab, in the order the node accepted them.

mod common;
use common::Node;

#[test]
fn every_tab_gets_every_push_in_order() {
    let node = Node::start();
    let mut tabs: Vec<_> = (0..3).map(|_| node.connect("alice")).collect();
    let (_, presence) = node.request("GET", "/v1/users/alice");
    assert_eq!(presence["channels"].as_array().unwrap().len(), 3);
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
