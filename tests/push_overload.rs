//! A node that cannot take a push answers 503 "overloaded", never a 202
//! followed by a silent drop. The link from one core to the other is given
//! a 1-byte budget, so that every push accepted on the core that is not the
//! user's home has no room to travel: those are answered 503 and never
//! delivered, while those accepted on the home core are answered 202 and
//! delivered, every one, in order.

mod common;
use common::{API_KEY, Node};
use std::time::Duration;

/// Pushes sent, each on its own HTTP connection (the kernel spreads them
/// over both cores).
const PUSHES: usize = 60;

#[test]
fn a_push_with_no_room_is_refused_not_dropped() {
    let node = Node::start_with(&[("CORECAST_CORE_LINK_BYTES_MAX", "1")]);
    let mut user = node.connect("target");
    let mut accepted = Vec::new();
    let mut refused = 0;
    for seq in 0..PUSHES {
        let agent = ureq::AgentBuilder::new().max_idle_connections(0).build();
        let body = serde_json::json!({"data": {"seq": seq}}).to_string();
        let answer = agent
            .post(&node.url("/v1/push/user/target"))
            .set("Authorization", &format!("Bearer {API_KEY}"))
            .set("Content-Type", "application/json")
            .send_string(&body);
        match answer {
            Ok(r) => {
                assert_eq!(r.status(), 202);
                accepted.push(seq);
            }
            Err(ureq::Error::Status(503, r)) => {
                assert_eq!(r.header("Retry-After"), Some("1"));
                let text = r.into_string().unwrap();
                assert!(text.contains("\"overloaded\""), "{text}");
                refused += 1;
            }
            Err(e) => panic!("push {seq}: {e}"),
        }
    }
    assert!(refused > 0, "pushes on the other core were refused");
    assert!(!accepted.is_empty(), "pushes on the home core went through");
    for seq in &accepted {
        assert_eq!(user.recv_json()["data"]["seq"], *seq, "every 202, in order");
    }
    assert!(
        user.silent_for(Duration::from_millis(300)),
        "nothing refused arrives"
    );
    eprintln!(
        "{} accepted, {refused} refused as overloaded",
        accepted.len()
    );
}
