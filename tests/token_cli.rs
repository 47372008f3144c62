//! `corecast token` mints a token the node accepts, from the same secret.

mod common;
use common::{Node, SECRET};
use std::process::Command;

#[test]
fn minted_token_connects() {
    let node = Node::start();
    let output = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["token", "--uid", "carol", "--rooms", "a,b", "--ttl", "10m"])
        .env("CORECAST_JWT_SECRET", SECRET)
        .env_remove("CORECAST_API_KEYS")
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let mut client = node.connect_with_token(token.trim());
    let (_, body) = node.push_json("/v1/push/room/b", serde_json::json!("room b"));
    assert_eq!(body["local_recipients"], 1);
    assert_eq!(client.recv_json()["data"], "room b");

    let refused = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["token", "--uid", "carol"])
        .env_remove("CORECAST_JWT_SECRET")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "no secret configured");
}
