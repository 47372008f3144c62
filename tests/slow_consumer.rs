//! A client that never reads is a slow consumer: once its kernel buffers
//! and its bounded send queue (send_queue_frames_max=4096,
//! send_queue_bytes_max=1 MiB) are full it is closed with 1013 and counted,
//! while 1,000 other clients each receive all of 1,000 broadcast pushes of
//! about 1 KiB, in order; and the node's RSS stays bounded.
//!
//! On loopback the kernel sizes a new socket's send buffer from the initial
//! congestion window and the 64 KiB MSS (about 1.4 MB here, up to
//! tcp_wmem max = 4 MiB), so 1 MiB of broadcasts alone never reaches the
//! queue caps: the first 200 rounds also push 32 KiB to the slow user.

mod common;
use common::{Node, WAIT, rss_kib, wait_for};
use std::time::Duration;

const CLIENTS: usize = 1_000;
const PUSHES: usize = 1_000;

#[test]
fn a_client_that_never_reads_is_closed_1013_and_the_others_get_everything() {
    let node = Node::start();
    let mut slow = node.connect_small_rcvbuf("slow", 4096);
    let readers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut client = node.connect(&format!("fast-{i}"));
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    client
                        .ws
                        .get_mut()
                        .set_read_timeout(Some(Duration::from_secs(60)))
                        .unwrap();
                    for n in 0..PUSHES {
                        let msg = client.recv_json();
                        assert_eq!(msg["data"]["n"], n, "client {i}: order or loss");
                    }
                    client
                })
                .unwrap()
        })
        .collect();
    wait_for("all connected", WAIT, || {
        node.connections() == (CLIENTS + 1) as f64
    });
    let rss_before = rss_kib(node.pid());

    // The slow client reads nothing until the node has given up on it;
    // then it reads what its buffers hold and must find a close 1013.
    let slow_reader = {
        let metrics = node.url("/metrics");
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            loop {
                let text = ureq::get(&metrics).call().unwrap().into_string().unwrap();
                if text.lines().any(|l| {
                    l.strip_prefix(r#"corecast_limit_refusals_total{limit="send_queue"} "#)
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v >= 1.0)
                }) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "never a slow consumer"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            slow.expect_close()
        })
    };

    let pad = "p".repeat(1000);
    let big = "s".repeat(32 * 1024);
    let started = std::time::Instant::now();
    for n in 0..PUSHES {
        if n < 200 {
            let (status, _) = node.post("/v1/push/user/slow", "text/plain", big.as_bytes());
            assert_eq!(status, 202, "push to slow {n}");
        }
        let (status, _) = node.push_json(
            "/v1/push/broadcast",
            serde_json::json!({"n": n, "pad": pad}),
        );
        assert_eq!(status, 202, "push {n}");
    }
    let _fast: Vec<_> = readers
        .into_iter()
        .map(|r| r.join().expect("a fast client lost or reordered a push"))
        .collect();
    eprintln!(
        "{PUSHES} pushes read by {CLIENTS} clients in {:?}",
        started.elapsed()
    );
    assert_eq!(slow_reader.join().expect("slow reader"), 1013);
    node.wait_metric(r#"corecast_disconnects_total{reason="slow_consumer"}"#, 1.0);
    assert_eq!(node.connections(), CLIENTS as f64);

    let rss_after = rss_kib(node.pid());
    eprintln!("node RSS: {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
