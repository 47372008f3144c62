//! The demo page (issue 12): in dev mode (no configured `jwt_secret`)
//! `GET /` on the WebSocket port serves a page that connects with a token
//! minted for that request and prints the `curl` line that pushes to it;
//! the banner prints its URL; with a configured secret it is a 404. In
//! headless Chromium: the page opens from the banner's URL, a push posted
//! to the URL and with the key of the page's `curl` line shows in its DOM
//! (screenshot in target/test-artifacts/demo-page.png).

mod browser;
mod common;

use common::{Node, WAIT, start_dev};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// One raw `GET path` on `addr`: the status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The demo URL the banner prints.
fn banner_url(out: &str) -> String {
    let mut lines = out.lines();
    lines.find(|l| l.starts_with("open the demo page"));
    lines
        .next()
        .expect("the URL after the demo line")
        .trim()
        .to_string()
}

#[test]
fn the_demo_page_is_served_in_dev_mode_only_with_a_working_token() {
    let (out, node) = start_dev(&[]);
    assert_eq!(banner_url(&out), format!("http://{}/", node.ws), "{out}");
    let (status, html) = get(node.ws, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(html.contains(r#"import { Corecast } from "/corecast.js";"#));
    // The token in the page is fresh and the node takes it.
    let config = html
        .split(r#"<script type="application/json" id="config">"#)
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .expect("the page's config");
    let config: serde_json::Value = serde_json::from_str(config).unwrap();
    assert_eq!(config["uid"], "alice");
    assert_eq!(config["http_port"], node.http.port());
    let mut client = node.connect_with_token(config["token"].as_str().unwrap());
    let key = config["api_key"].as_str().expect("the generated key");
    let status = ureq::post(&format!("http://{}/v1/push/user/alice", node.http))
        .set("Authorization", &format!("Bearer {key}"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"data":"to the page's token"}"#)
        .map(|r| r.status())
        .unwrap_or_else(|e| panic!("push with the page's key: {e}"));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], "to the page's token");

    // A configured secret: no page (the API key alone being random is not
    // dev mode for the page).
    let configured = Node::start();
    let (status, _) = get(configured.ws, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (out, only_key_random) = start_dev(&[("CORECAST_JWT_SECRET", common::SECRET)]);
    assert!(!out.contains("demo page"), "{out}");
    assert_eq!(get(only_key_random.ws, "/").0, "HTTP/1.1 404 Not Found");
}

#[test]
fn chromium_shows_a_push_on_the_demo_page() {
    let Some(mut browser) = browser::launch() else {
        return;
    };
    let (out, _node) = start_dev(&[]);
    let tab = browser.open(&banner_url(&out));
    browser.wait_true(
        &tab,
        "the demo page connects",
        WAIT,
        r#"document.getElementById("state")?.textContent === "open""#,
    );
    let curl = browser.eval(&tab, r#"document.getElementById("curl").textContent"#);
    let curl = curl.as_str().expect("the curl line");
    let url = curl
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("a URL in the curl line");
    let key = curl
        .split("Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("a key in the curl line");
    let status = ureq::post(url)
        .set("Authorization", &format!("Bearer {key}"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"data":{"hello":"from the demo test"}}"#)
        .map(|r| r.status())
        .unwrap_or_else(|e| panic!("the page's curl line: {e}"));
    assert_eq!(status, 202);
    browser.wait_true(
        &tab,
        "the push in the page",
        WAIT,
        r##"document.querySelector("#pushes li .data")?.textContent === '{"hello":"from the demo test"}'"##,
    );
    let path = browser::artifact_dir().join("demo-page.png");
    browser.screenshot(&tab, &path);
    eprintln!("screenshot: {}", path.display());
}
