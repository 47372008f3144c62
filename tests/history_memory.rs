//! History memory (issue 11): 5,000 pushes with a 100-byte payload to
//! users who are not connected are all retained (`corecast_history_entries`
//! grows by at least 5,000, `corecast_history_bytes` by at least their
//! payloads), and the figure for README is printed: history bytes and RSS
//! per retained push (`cargo test --release --test history_memory --
//! --nocapture`). The idle-connection figure with history on is
//! `bench/scripts/idle-memory.sh 15000`.

mod common;
use common::{Node, Poster, rss_kib};
use serde_json::json;
use std::time::Duration;

const PUSHES: usize = 5000;
const PAYLOAD_BYTES: usize = 100;
/// Users the pushes are spread over (none connected).
const USERS: usize = 500;

/// Sum of the series named exactly `name` (with or without labels).
fn series(node: &Node, name: &str) -> f64 {
    node.metrics()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn history_holds_every_push_and_its_cost_is_printed() {
    let node = Node::start();
    let poster = Poster::new(node.http);
    // Warm up: first allocations are not charged to the pushes.
    for i in 0..100 {
        poster.push_ok(&format!("/v1/push/user/warm-{i}"), json!("warm"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (bytes_before, entries_before) = (
        series(&node, "corecast_history_bytes"),
        series(&node, "corecast_history_entries"),
    );
    let rss_before = rss_kib(node.pid());
    for i in 0..PUSHES {
        // A JSON string of PAYLOAD_BYTES bytes, quotes included.
        let payload = format!("{:0>width$}", i, width = PAYLOAD_BYTES - 2);
        poster.push_ok(&format!("/v1/push/user/away-{}", i % USERS), json!(payload));
    }
    std::thread::sleep(Duration::from_millis(500));
    let entries = series(&node, "corecast_history_entries") - entries_before;
    let bytes = series(&node, "corecast_history_bytes") - bytes_before;
    let rss = rss_kib(node.pid()).saturating_sub(rss_before) as f64 * 1024.0;
    println!(
        "history: {PUSHES} pushes of {PAYLOAD_BYTES} bytes to {USERS} offline users: \
         {entries} entries, {bytes} bytes ({:.0} B per push, {:.0} B per entry), RSS +{:.0} B per push",
        bytes / PUSHES as f64,
        bytes / entries.max(1.0),
        rss / PUSHES as f64
    );
    assert!(
        entries >= PUSHES as f64,
        "every push retained: {entries} entries"
    );
    assert!(
        bytes >= (PUSHES * PAYLOAD_BYTES) as f64,
        "history bytes count the payloads: {bytes}"
    );
}
