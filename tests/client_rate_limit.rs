//! A client sending messages faster than client_messages_per_sec_max gets
//! one `rate_limited` error frame, then (at twice the rate) close 1008;
//! other clients keep receiving.

mod common;
use common::Node;

#[test]
fn flooding_client_is_warned_then_closed() {
    let node = Node::start();
    let mut bystander = node.connect("calm");
    let mut flooder = node.connect_rooms("flood", &["r"]);
    // The default limit is 20 messages per second: 60 in a burst cross
    // both the warning and the close threshold within one tick.
    for _ in 0..60 {
        if flooder
            .ws
            .send(tungstenite::Message::text(r#"{"type":"join","room":"r"}"#))
            .is_err()
        {
            break;
        }
    }
    let mut acks = 0;
    let mut warned = false;
    let code = loop {
        match flooder.ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let msg: serde_json::Value = serde_json::from_str(&text).unwrap();
                match msg["type"].as_str() {
                    Some("joined") => acks += 1,
                    Some("error") => {
                        assert_eq!(msg["error"]["code"], "rate_limited");
                        warned = true;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            Ok(tungstenite::Message::Close(Some(frame))) => break u16::from(frame.code),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert!(warned, "no rate_limited error frame before the close");
    assert_eq!(code, 1008);
    assert!(acks <= 20, "{acks} messages were served past the limit");
    assert!(node.metric("corecast_limit_refusals_total{limit=\"client_message_rate\"}") >= 1.0);
    let (status, _) = node.push_json("/v1/push/user/calm", serde_json::json!("fine"));
    assert_eq!(status, 202);
    assert_eq!(bystander.recv_json()["data"], "fine");
}
