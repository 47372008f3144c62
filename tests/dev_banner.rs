//! The dev banner prints only what the node generated (issue 10 item 8):
//! with only `CORECAST_JWT_SECRET` set, the real secret and any token
//! minted with it stay out of stdout (and so out of journald), and the
//! generated API key it does print works; the reverse case alike.
//!
//! Before (main at 11dadd5) the banner printed the configured secret and a
//! one-hour token for `alice` signed with it.

mod common;
use common::start_dev as start;
use common::{API_KEY, SECRET};

/// The value printed after `NAME=` in the banner.
fn printed(out: &str, name: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
}

#[test]
fn a_configured_jwt_secret_is_never_printed() {
    let (out, node) = start(&[("CORECAST_JWT_SECRET", SECRET)]);
    assert!(!out.contains(SECRET), "secret in the banner:\n{out}");
    assert!(printed(&out, "CORECAST_JWT_SECRET").is_none(), "{out}");
    // No JWT at all: every JWT starts with the base64 of `{"`.
    assert!(
        !out.contains("eyJ"),
        "a token minted with the real secret:\n{out}"
    );
    // The generated key is printed, and it is the one the node takes.
    let key = printed(&out, "CORECAST_API_KEYS").expect("generated key printed");
    let status = ureq::post(&format!("http://{}/v1/push/broadcast", node.http))
        .set("Authorization", &format!("Bearer {key}"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"data":1}"#)
        .map(|r| r.status())
        .unwrap_or_else(|e| panic!("push with the printed key: {e}"));
    assert_eq!(status, 202);
}

#[test]
fn a_configured_api_key_is_never_printed() {
    let (out, node) = start(&[("CORECAST_API_KEYS", API_KEY)]);
    assert!(!out.contains(API_KEY), "API key in the banner:\n{out}");
    assert!(printed(&out, "CORECAST_API_KEYS").is_none(), "{out}");
    // The generated secret and its token are printed, and the token works.
    assert!(printed(&out, "CORECAST_JWT_SECRET").is_some(), "{out}");
    let token = out
        .split("token=")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("a sample token");
    let mut client = node.connect_with_token(token);
    let (status, _) = node.push_json("/v1/push/user/alice", serde_json::json!("hi"));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], "hi");
}

#[test]
fn a_fully_configured_node_prints_no_banner() {
    let (out, _node) = start(&[
        ("CORECAST_JWT_SECRET", SECRET),
        ("CORECAST_API_KEYS", API_KEY),
    ]);
    assert!(!out.contains("dev mode"), "{out}");
    assert!(!out.contains(SECRET) && !out.contains(API_KEY), "{out}");
}
