//! Push budgets (issue 10 item 6, the 429 part), done as an abusive API
//! caller would against a real node: one key floods pushes as fast as one
//! connection goes; it is answered 429 with `Retry-After` past its budget,
//! counted, while another key's pushes still go through and are delivered.
//! Then the node budget refuses every key.
//!
//! Before (main at 11dadd5) nothing produced 429: every flood push was
//! accepted (202) and fanned out.

mod common;
use common::{API_KEY, Node};
use std::time::{Duration, Instant};

const OTHER_KEY: &str = "second-api-key";

/// POSTs a JSON push with `key`; returns status, `Retry-After`, body.
fn push(node: &Node, agent: &ureq::Agent, key: &str, uid: &str) -> (u16, Option<u64>, String) {
    let result = agent
        .post(&node.url(&format!("/v1/push/user/{uid}")))
        .set("Authorization", &format!("Bearer {key}"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"data":"x"}"#);
    let response = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("http: {e}"),
    };
    let status = response.status();
    let retry = response.header("Retry-After").and_then(|v| v.parse().ok());
    (status, retry, response.into_string().unwrap_or_default())
}

#[test]
fn a_flooding_key_gets_429_and_others_still_push() {
    let keys = format!("{API_KEY},{OTHER_KEY}");
    let node = Node::start_with(&[
        ("CORECAST_CORES", "1"),
        ("CORECAST_API_KEYS", keys.as_str()),
        ("CORECAST_KEY_PUSHES_PER_SEC_MAX", "50"),
        ("CORECAST_NODE_PUSHES_PER_SEC_MAX", "100000"),
    ]);
    let rss_before = common::rss_kib(node.pid());
    let flood = ureq::AgentBuilder::new().build();
    let (mut accepted, mut refused) = (0u32, 0u32);
    let started = Instant::now();
    for _ in 0..500 {
        let (status, retry, body) = push(&node, &flood, API_KEY, "nobody");
        match status {
            202 => accepted += 1,
            429 => {
                refused += 1;
                assert!(retry.is_some_and(|s| s >= 1), "Retry-After on a 429");
                assert!(body.contains("key_over_budget"), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst (one second's worth) plus what refilled while flooding.
    let allowed = 50.0 + 50.0 * elapsed;
    assert!(
        f64::from(accepted) <= allowed + 1.0,
        "{accepted} accepted in {elapsed:.2} s"
    );
    assert!(accepted >= 50, "the burst goes through: {accepted}");
    assert!(refused > 0);
    // The other key is not touched by the first one's budget.
    let mut victim = node.connect("victim");
    let other = ureq::AgentBuilder::new().build();
    let (status, _, body) = push(&node, &other, OTHER_KEY, "victim");
    assert_eq!(status, 202, "{body}");
    assert_eq!(victim.recv_json()["data"], "x");
    assert_eq!(
        node.metric("corecast_limit_refusals_total{limit=\"key_push_budget\"}"),
        f64::from(refused)
    );
    assert_eq!(
        node.metric("corecast_http_requests_total{route=\"push_user\",status=\"429\"}"),
        f64::from(refused)
    );
    // Honouring Retry-After gets the flooding key through again.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(push(&node, &flood, API_KEY, "nobody").0, 202);
    eprintln!(
        "key budget 50/s: {accepted} accepted, {refused} refused (429) of 500 in {elapsed:.2} s; \
         RSS {rss_before} KiB -> {} KiB",
        common::rss_kib(node.pid())
    );
}

#[test]
fn the_node_budget_holds_for_every_key() {
    let keys = format!("{API_KEY},{OTHER_KEY}");
    // Two cores: each holds half of the 40/s node budget, so a burst of at
    // most 40 gets through however the connections land.
    let node = Node::start_with(&[
        ("CORECAST_API_KEYS", keys.as_str()),
        ("CORECAST_KEY_PUSHES_PER_SEC_MAX", "0"),
        ("CORECAST_NODE_PUSHES_PER_SEC_MAX", "40"),
    ]);
    let mut accepted = 0u32;
    let mut last_refusal = None;
    let started = Instant::now();
    for i in 0..200 {
        // A fresh connection each time, so both cores are hit.
        let agent = ureq::AgentBuilder::new().build();
        let key = if i % 2 == 0 { API_KEY } else { OTHER_KEY };
        let (status, retry, body) = push(&node, &agent, key, "nobody");
        match status {
            202 => accepted += 1,
            429 => {
                assert!(body.contains("node_over_budget"), "{body}");
                last_refusal = retry;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        f64::from(accepted) <= 40.0 + 40.0 * elapsed + 2.0,
        "{accepted} accepted in {elapsed:.2} s"
    );
    assert!(last_refusal.is_some_and(|s| s >= 1));
    assert!(node.metric("corecast_limit_refusals_total{limit=\"node_push_budget\"}") > 0.0);
}
