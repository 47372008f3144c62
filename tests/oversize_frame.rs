//! Client messages over `client_message_bytes_max` (default 4096) end the
//! connection with close 1009 and are counted, whether sent as one frame or
//! as fragments whose total goes over; other clients are unaffected.

mod common;
use common::{Client, Node, masked_frame};

const MAX: usize = 4096;

fn still_delivers(node: &Node, client: &mut Client, n: i64) {
    let (status, _) = node.push_json("/v1/push/user/bystander", serde_json::json!({"n": n}));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"]["n"], n);
}

#[test]
fn oversize_message_is_closed_with_1009() {
    let node = Node::start();
    let mut bystander = node.connect("bystander");

    // One frame just over the cap.
    let mut big = node.connect("big");
    big.send_text(&"x".repeat(MAX + 1));
    assert_eq!(big.expect_close(), 1009);
    still_delivers(&node, &mut bystander, 1);

    // At the cap is fine: answered (with an error frame: it is not JSON).
    let mut edge = node.connect("edge");
    edge.send_text(&"x".repeat(MAX));
    assert_eq!(edge.recv_json()["type"], "error");

    // Fragments each under the cap, together over it.
    let mut fragmented = node.connect("fragmented");
    let half = vec![b'y'; MAX / 2 + 1];
    fragmented.send_raw(&masked_frame(0x01, &half)); // text, not final
    fragmented.send_raw(&masked_frame(0x80, &half)); // continuation, final
    assert_eq!(fragmented.expect_close(), 1009);
    still_delivers(&node, &mut bystander, 2);

    // Counted when the connection ends (after the closing handshake).
    node.wait_metric(
        r#"corecast_disconnects_total{reason="message_too_big"}"#,
        2.0,
    );
    assert_eq!(
        node.metric(r#"corecast_limit_refusals_total{limit="client_message_bytes"}"#),
        2.0
    );
    // The one at the cap is still connected.
    edge.send_text(r#"{"type":"leave","room":"r"}"#);
    assert_eq!(edge.recv_json()["type"], "left");
}
