//! The eleventh tab of a user closes the oldest one with 4001.

mod common;
use common::Node;

#[test]
fn eleventh_tab_replaces_the_oldest() {
    let node = Node::start();
    let mut tabs: Vec<_> = (0..10).map(|_| node.connect("bob")).collect();
    let mut newest = node.connect("bob");
    assert_eq!(tabs[0].expect_close(), 4001);
    node.wait_metric("corecast_disconnects_total{reason=\"replaced\"}", 1.0);
    let (status, body) = node.push_json("/v1/push/user/bob", serde_json::json!("hi"));
    assert_eq!(status, 202);
    assert_eq!(body["local_recipients"], 10);
    assert_eq!(newest.recv_json()["data"], "hi");
    for tab in tabs.iter_mut().skip(1) {
        assert_eq!(tab.recv_json()["data"], "hi");
    }
}
