//! `DELETE /v1/users/{uid}/connections` (logout, ban): every connection of
//! the user on every node of the cluster is closed with 4002; the answer
//! counts the ones closed on the node asked; other users stay connected.

mod common;
use common::{API_KEY, WAIT, cluster};

fn delete(node: &common::Node, path: &str) -> (u16, serde_json::Value) {
    let answer = ureq::delete(&node.url(path))
        .set("Authorization", &format!("Bearer {API_KEY}"))
        .call();
    let response = match answer {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("DELETE {path}: {e}"),
    };
    let status = response.status();
    (
        status,
        serde_json::from_str(&response.into_string().unwrap()).unwrap(),
    )
}

#[test]
fn a_user_is_disconnected_on_every_node() {
    let nodes = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut tabs = [
        a.connect("banned"),
        a.connect("banned"),
        b.connect("banned"),
    ];
    let mut other = b.connect("bystander");

    let (status, body) = delete(a, "/v1/users/banned/connections");
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["closed"], 2, "closed on the node asked: {body}");
    assert!(body["id"].is_string());
    for tab in &mut tabs {
        assert_eq!(tab.expect_close(), 4002);
    }
    common::wait_for("the closes to be counted", WAIT, || {
        a.metric(r#"corecast_disconnects_total{reason="disconnected"}"#) == 2.0
            && b.metric(r#"corecast_disconnects_total{reason="disconnected"}"#) == 1.0
    });
    let (status, _) = b.push_json("/v1/push/user/bystander", serde_json::json!("still"));
    assert_eq!(status, 202);
    assert_eq!(other.recv_json()["data"], "still");

    let (status, body) = delete(b, "/v1/users/nobody/connections");
    assert_eq!((status, body["closed"].as_u64()), (202, Some(0)));
    let (status, _) = b.request("GET", "/v1/users/banned/connections");
    assert_eq!(status, 405);
}
