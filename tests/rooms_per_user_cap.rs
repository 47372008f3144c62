//! max_rooms_per_user: a join past the cap is refused with an error frame
//! and counted; a token naming more rooms than the cap is refused (401).

mod common;
use common::Node;

#[test]
fn joins_past_the_cap_are_refused() {
    let node = Node::start_with(&[
        ("CORECAST_FREE_JOIN", "true"),
        ("CORECAST_MAX_ROOMS_PER_USER", "5"),
    ]);
    let mut client = node.connect("roomy");
    for i in 0..5 {
        assert_eq!(client.join(&format!("r{i}"))["type"], "joined", "room {i}");
    }
    let refused = client.join("one-too-many");
    assert_eq!(refused["error"]["code"], "too_many_rooms");
    assert_eq!(
        node.metric("corecast_limit_refusals_total{limit=\"rooms_per_user\"}"),
        1.0
    );
    // Membership is unchanged: a push to the refused room reaches nobody.
    let (_, body) = node.push_json("/v1/push/room/one-too-many", serde_json::json!(1));
    assert_eq!(body["local_recipients"], 0);
    let (_, body) = node.push_json("/v1/push/room/r4", serde_json::json!(2));
    assert_eq!(body["local_recipients"], 1);

    let rooms: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    let rooms: Vec<&str> = rooms.iter().map(String::as_str).collect();
    let token = node.token("too-many", Some(&rooms));
    assert_eq!(
        node.try_connect(&format!("/ws?token={token}")).err(),
        Some(401)
    );
}
