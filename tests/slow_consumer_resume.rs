//! A slow consumer loses nothing it resumes: a client that stops reading is
//! closed with 1013 once its send queue is over `send_queue_bytes_max`, and
//! what was queued (or never sent) is in the history: reconnecting with the
//! last `pos` it read replays exactly the rest, in order, `recovered:true`.

mod common;
use common::{Node, read_until_resumed, resume_path};
use std::time::Duration;

const PUSHES: usize = 200;
/// Each push's padding: 200 of them are far more than the kernel's socket
/// buffers and the 256 KiB queue of this test's node.
const PAD_BYTES: usize = 30_000;

#[test]
fn a_slow_consumer_closed_1013_resumes_everything_it_missed() {
    let node = Node::start_with(&[("CORECAST_LIMITS_SEND_QUEUE_BYTES_MAX", "262144")]);
    let mut slow = node.connect_small_rcvbuf("slow", 4096);
    let pad = "x".repeat(PAD_BYTES);
    let mut ids = Vec::with_capacity(PUSHES);
    for n in 0..PUSHES {
        let (status, body) = node.push_json(
            "/v1/push/user/slow",
            serde_json::json!({"n": n, "pad": pad}),
        );
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().expect("an id").to_string());
    }
    // Now read what the node had sent before it gave up on the client.
    let mut got: Vec<String> = Vec::new();
    let mut pos = None;
    let mut close_code = None;
    for _ in 0..PUSHES + 10 {
        match slow.ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let frame: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(frame["type"], "push", "{frame}");
                got.push(frame["id"].as_str().expect("id").to_string());
                pos = Some(frame["pos"].as_str().expect("pos").to_string());
            }
            Ok(tungstenite::Message::Close(frame)) => {
                close_code = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("read before the close: {e}"),
        }
    }
    assert_eq!(close_code, Some(1013), "closed as a slow consumer");
    assert!(got.len() < PUSHES, "the queue cap cut the client short");
    assert!(!got.is_empty(), "some pushes were written before the cap");
    drop(slow);
    // Counted when the connection's task ends, after the close.
    node.wait_metric(r#"corecast_disconnects_total{reason="slow_consumer"}"#, 1.0);

    let since = pos.expect("a position from the pushes read");
    let mut back = node
        .try_connect(&resume_path(&node, "slow", None, &since, ""))
        .expect("resume");
    let (replayed, resumed) =
        read_until_resumed(&mut back, Duration::from_secs(30)).expect("a resume");
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["missed"], PUSHES - got.len(), "{resumed}");
    got.extend(
        replayed
            .iter()
            .map(|frame| frame["id"].as_str().expect("id").to_string()),
    );
    assert_eq!(got, ids, "every push exactly once, in order");
}
