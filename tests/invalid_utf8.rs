//! Malformed client frames end the connection with the RFC 6455 close code:
//! text that is not UTF-8 (whole or fragmented) -> 1007; an unmasked frame,
//! a reserved opcode, a fragmented control frame or reserved bits -> 1002.
//! Each is counted and leaves other clients unaffected. The bad frames are
//! written raw on the socket after a real handshake.

mod common;
use common::{Node, masked_frame};

#[test]
fn invalid_utf8_closes_1007_and_protocol_violations_close_1002() {
    let node = Node::start();
    let mut bystander = node.connect("bystander");

    let invalid_utf8: &[&[Vec<u8>]] = &[
        &[masked_frame(0x81, &[b'{', 0xff, 0xfe, b'}'])],
        // A UTF-8 sequence cut across fragments and never finished.
        &[
            masked_frame(0x01, "é".as_bytes()),
            masked_frame(0x80, &[0xc3]),
        ],
    ];
    let mut unmasked = vec![0x81, 0x02];
    unmasked.extend_from_slice(b"{}");
    let protocol: &[(&str, Vec<u8>)] = &[
        ("unmasked", unmasked),
        ("reserved data opcode", masked_frame(0x83, b"")),
        ("reserved control opcode", masked_frame(0x8b, b"")),
        ("fragmented ping", masked_frame(0x09, b"")),
        ("rsv1", masked_frame(0xc1, b"{}")),
        ("rsv3", masked_frame(0x91, b"{}")),
        ("continuation first", masked_frame(0x80, b"x")),
    ];

    for (i, frames) in invalid_utf8.iter().enumerate() {
        let mut client = node.connect(&format!("utf8-{i}"));
        for frame in frames.iter() {
            client.send_raw(frame);
        }
        assert_eq!(client.expect_close(), 1007, "case {i}");
    }
    for (name, frame) in protocol {
        let mut client = node.connect(name);
        client.send_raw(frame);
        assert_eq!(client.expect_close(), 1002, "{name}");
    }

    let (status, _) = node.push_json("/v1/push/user/bystander", serde_json::json!({"n": 1}));
    assert_eq!(status, 202);
    assert_eq!(bystander.recv_json()["data"]["n"], 1);
    // Counted when each connection ends (after the closing handshake).
    node.wait_metric(
        r#"corecast_disconnects_total{reason="invalid_utf8"}"#,
        invalid_utf8.len() as f64,
    );
    node.wait_metric(
        r#"corecast_disconnects_total{reason="protocol_error"}"#,
        protocol.len() as f64,
    );
}
