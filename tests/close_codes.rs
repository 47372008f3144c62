//! Close codes a peer may not send (RFC 6455 section 7.4, issue 10 item 8)
//! fail the connection with 1002 instead of being echoed; valid ones are
//! echoed. Sent as raw masked frames on a real connection, while another
//! user keeps receiving pushes.
//!
//! Before (main at 11dadd5) every code, 1005, 1006, 0 or 65535 included,
//! was echoed back.

mod common;
use common::{Node, masked_frame};
use std::io::Write;
use tungstenite::Message;

/// Sends a close frame with `code` and returns the code the node closes
/// with.
fn close_with(node: &Node, code: u16) -> u16 {
    let mut client = node.connect("closer");
    let payload = [&code.to_be_bytes()[..], b"bye"].concat();
    let frame = masked_frame(0x88, &payload);
    client.ws.get_mut().write_all(&frame).unwrap();
    loop {
        match client.ws.read() {
            Ok(Message::Close(Some(frame))) => return frame.code.into(),
            Ok(Message::Close(None)) => return 1005,
            Ok(_) => continue,
            // tungstenite refuses to parse some codes the node may not send
            // either: that is a failure of this test.
            Err(e) => panic!("no close frame after code {code}: {e}"),
        }
    }
}

#[test]
fn invalid_close_codes_fail_with_1002() {
    let node = Node::start();
    let mut bystander = node.connect("bystander");
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        assert_eq!(close_with(&node, code), 1002, "code {code}");
        let (status, _) = node.push_json("/v1/push/user/bystander", serde_json::json!(code));
        assert_eq!(status, 202);
        assert_eq!(bystander.recv_json()["data"], code);
    }
    assert!(node.metric("corecast_disconnects_total{reason=\"protocol_error\"}") >= 11.0);
}

#[test]
fn valid_close_codes_are_echoed() {
    let node = Node::start();
    for code in [1000, 1001, 1003, 1008, 1011, 1013, 3000, 4000, 4999] {
        assert_eq!(close_with(&node, code), code, "code {code}");
    }
}
