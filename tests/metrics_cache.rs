//! `/metrics` under a scrape storm (issue 10 item 8): the per-core
//! snapshots (latency histograms and busy time, carried over the core
//! channels that also carry deliveries) are taken at most once a second
//! per core, so pipelined scrapes cost the other cores nothing more, while
//! counters stay fresh and pushes keep flowing.
//!
//! Before (main at 11dadd5) every scrape sent a snapshot request to every
//! core and copied each core's ~140 KB histogram back.

mod common;
use common::Node;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn busy_seconds(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("corecast_executor_busy_seconds_total{"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_scrape_storm_reuses_snapshots_and_keeps_counters_fresh() {
    let node = Node::start_with(&[("CORECAST_CORES", "2")]);
    let mut client = node.connect("watcher");
    // 200 scrapes pipelined on one keep-alive connection (one core).
    let mut storm = std::net::TcpStream::connect(node.http).unwrap();
    storm
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200);
    storm.write_all(&request).unwrap();
    let mut texts = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    while texts.len() < 200 {
        let n = storm.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "storm connection closed after {} answers",
            texts.len()
        );
        buf.extend_from_slice(&chunk[..n]);
        while let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if buf.len() < head_end + 4 + length {
                break;
            }
            let body = String::from_utf8_lossy(&buf[head_end + 4..head_end + 4 + length]);
            texts.push(body.into_owned());
            buf.drain(..head_end + 4 + length);
        }
    }
    let storm_time = started.elapsed();
    // Snapshots are retaken at most once a second per core: over the storm
    // at most one distinct snapshot per started second (plus the first).
    let mut distinct: Vec<Vec<String>> = texts.iter().map(|t| busy_seconds(t)).collect();
    assert!(
        distinct.iter().all(|d| d.len() == 2),
        "a busy series per core"
    );
    distinct.dedup();
    let most = storm_time.as_secs() as usize + 2;
    assert!(
        distinct.len() <= most,
        "{} distinct snapshots in {storm_time:?}",
        distinct.len()
    );
    // Counters are read fresh on every scrape, cached snapshots or not.
    let (status, _) = node.push_json("/v1/push/user/watcher", serde_json::json!(1));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], 1);
    node.wait_metric("corecast_pushes_total{kind=\"user\"}", 1.0);
    eprintln!("200 pipelined scrapes answered in {storm_time:?}");
}
