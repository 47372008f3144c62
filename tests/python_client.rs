//! A client we did not write: Python `websockets` (Debian
//! python3-websockets) connects with a token and receives a push.

mod common;
use common::{Node, WAIT, wait_for};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const CLIENT: &str = r#"
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1]) as ws:
        print("connected", flush=True)
        message = await asyncio.wait_for(ws.recv(), 10)
        print(message, flush=True)
asyncio.run(main())
"#;

#[test]
fn python_websockets_receives_a_push() {
    if !common::require_python_module("websockets", "python3-websockets") {
        return;
    }
    let node = Node::start();
    let url = format!("ws://{}/ws?token={}", node.ws, node.token("py", None));
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", CLIENT, &url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with the websockets module (Debian python3-websockets)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "connected");
    wait_for("the python client to register", WAIT, || {
        node.request("GET", "/v1/users/py").1["channels"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    });
    let (status, _) = node.push_json("/v1/push/user/py", serde_json::json!({"from": "rust"}));
    assert_eq!(status, 202);
    let line = lines.next().expect("a message").unwrap();
    let msg: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(msg["type"], "push");
    assert_eq!(msg["data"]["from"], "rust");
    assert!(child.wait().unwrap().success());
}
