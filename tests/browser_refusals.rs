//! Refusals a browser can read: a browser cannot see the HTTP status of a
//! refused upgrade (only close 1006), so a request with an `Origin` header
//! and a bad token gets the upgrade and an immediate close: 4003 for an
//! expired token (refresh it and reconnect), 4004 for any other bad token
//! (do not reconnect), with the token error's code as the reason. A request
//! without `Origin` (not a browser) still gets the 401.

mod common;
use common::{Node, SECRET, WAIT};
use std::net::TcpStream;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

fn upgrade(node: &Node, token: &str, origin: Option<&str>) -> Result<WebSocket<TcpStream>, u16> {
    let url = format!("ws://{}/ws?token={token}", node.ws);
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    let stream = TcpStream::connect(node.ws).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

fn close_of(mut ws: WebSocket<TcpStream>) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                return (frame.code.into(), frame.reason.to_string());
            }
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn a_browser_reads_why_its_token_was_refused() {
    let node = Node::start();
    let origin = Some("https://app.example");
    let now = jsonwebtoken::get_current_timestamp();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "late", "exp": now - 60}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();

    let ws = upgrade(&node, &expired, origin).expect("a browser gets the upgrade");
    assert_eq!(close_of(ws), (4003, "token_expired".to_string()));
    let ws = upgrade(&node, "not-a-jwt", origin).expect("a browser gets the upgrade");
    assert_eq!(close_of(ws), (4004, "token_malformed".to_string()));

    assert_eq!(
        upgrade(&node, &expired, None).err(),
        Some(401),
        "not a browser: 401"
    );
    assert_eq!(upgrade(&node, "not-a-jwt", None).err(), Some(401));
    let good = node.token("fine", None);
    let mut ws = upgrade(&node, &good, origin).expect("a good token from a browser");
    let (status, _) = node.push_json("/v1/push/user/fine", serde_json::json!("ok"));
    assert_eq!(status, 202);
    let Message::Text(text) = ws.read().unwrap() else {
        panic!("a push")
    };
    assert!(text.contains("\"ok\""));
    node.wait_metric(r#"corecast_handshakes_total{outcome="unauthorized"}"#, 4.0);
}
