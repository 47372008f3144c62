//! Room pushes reach members only: members by token claim, by client
//! `join` and by server-side join; `leave` and server-side leave end it.

mod common;
use common::Node;
use std::time::Duration;

#[test]
fn room_push_reaches_members_only() {
    let node = Node::start();
    let mut by_claim = node.connect_rooms("claim", &["lobby"]);
    let mut by_join = node.connect_rooms("joiner", &["lobby"]);
    let mut by_server = node.connect("server-joined");
    let mut outsider = node.connect("outsider");

    by_join.send_text(r#"{"type":"leave","room":"lobby"}"#);
    assert_eq!(by_join.recv_json()["type"], "left");
    assert_eq!(by_join.join("lobby")["type"], "joined");
    let (status, _) = node.request("POST", "/v1/rooms/lobby/members/server-joined");
    assert_eq!(status, 202);

    let (status, body) = node.push_json("/v1/push/room/lobby", serde_json::json!({"n": 1}));
    assert_eq!(status, 202);
    assert_eq!(body["local_recipients"], 3);
    for member in [&mut by_claim, &mut by_join, &mut by_server] {
        let msg = member.recv_json();
        assert_eq!(msg["room"], "lobby");
        assert_eq!(msg["data"]["n"], 1);
    }
    assert!(outsider.silent_for(Duration::from_millis(300)));

    // The outsider may not join a room its token does not name.
    let refused = outsider.join("lobby");
    assert_eq!(refused["error"]["code"], "forbidden");

    let (status, _) = node.request("DELETE", "/v1/rooms/lobby/members/server-joined");
    assert_eq!(status, 202);
    let (_, body) = node.push_json("/v1/push/room/lobby", serde_json::json!({"n": 2}));
    assert_eq!(body["local_recipients"], 2);
    assert!(by_server.silent_for(Duration::from_millis(300)));
    assert_eq!(by_claim.recv_json()["data"]["n"], 2);
}
