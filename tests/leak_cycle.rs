//! Connect/push/disconnect cycles leak nothing: after a warm-up and N cycles
//! (CORECAST_LEAK_CYCLES, default 3,000; `bench/scripts/leak-cycle.sh`-style
//! full run: `CORECAST_LEAK_CYCLES=100000 cargo test --release --test
//! leak_cycle -- --nocapture`), the node's RSS and open fd count are within
//! 5% of the baseline and every shard is empty (no connection, user or
//! room left).

mod common;
use common::{Node, WAIT, fd_count, rss_kib, wait_for};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

const WARM_UP: usize = 300;
/// Absolute RSS slack on top of 5%: allocator arenas and the read-buffer
/// pool settle in steps of a few hundred KiB, which is more than 5% of a
/// small baseline.
const RSS_SLACK_KIB: u64 = 2 * 1024;
/// Absolute fd slack on top of 5%: the test's own HTTP client keeps up to
/// one idle keep-alive connection to the node, plus the one in use, so the
/// node's fd count moves by up to two sockets between any two samples. A
/// leaked WebSocket per cycle would show as thousands.
const FD_SLACK: usize = 2;
/// The history's ttl in this test and the heartbeat tick that expires it.
const HISTORY_EXPIRY: std::time::Duration = std::time::Duration::from_millis(2_500);

fn cycle(node: &Node, i: usize) {
    let uid = format!("leak-{i}");
    let room = format!("room-{}", i % 7);
    let mut client = node.connect_rooms(&uid, &[room.as_str()]);
    if i.is_multiple_of(2) {
        client.join(&room);
    }
    let (status, _) = node.push_json(&format!("/v1/push/user/{uid}"), serde_json::json!(i));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], i);
    if i.is_multiple_of(3) {
        // An abrupt disconnect (no close frame) now and then.
        drop(client);
        return;
    }
    client
        .ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .unwrap();
    assert_eq!(client.expect_close(), 1000);
}

fn settle(node: &Node) {
    wait_for("every shard empty", WAIT, || {
        node.connections() == 0.0
            && node.metric_sum("corecast_users_active{") == 0.0
            && node.metric_sum("corecast_rooms_active{") == 0.0
    });
}

#[test]
fn cycles_leak_no_memory_fd_or_session() {
    let cycles: usize = std::env::var("CORECAST_LEAK_CYCLES")
        .ok()
        .map(|v| v.parse().expect("CORECAST_LEAK_CYCLES is a number"))
        .unwrap_or(3_000);
    // History keeps every push for its ttl: a short one, so that what the
    // cycles pushed has expired when RSS is sampled (a leak stays).
    let node = Node::start_with(&[("CORECAST_HISTORY_TTL_MS", "1000")]);
    for i in 0..WARM_UP {
        cycle(&node, i);
    }
    settle(&node);
    std::thread::sleep(HISTORY_EXPIRY);
    let (rss0, fds0) = (rss_kib(node.pid()), fd_count(node.pid()));

    let started = std::time::Instant::now();
    for i in 0..cycles {
        cycle(&node, WARM_UP + i);
    }
    settle(&node);
    std::thread::sleep(HISTORY_EXPIRY);
    // Freed memory goes back to the kernel at the core's next heartbeat tick
    // (malloc_trim after churn): wait (bounded) for it rather than sample
    // the instant the last connection ends.
    let bound = rss0 + rss0 / 20 + RSS_SLACK_KIB;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while rss_kib(node.pid()) > bound && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (rss1, fds1) = (rss_kib(node.pid()), fd_count(node.pid()));
    eprintln!(
        "{cycles} cycles in {:?}: RSS {rss0} -> {rss1} KiB, fds {fds0} -> {fds1}",
        started.elapsed()
    );
    assert!(rss1 <= bound, "RSS grew from {rss0} KiB to {rss1} KiB");
    assert!(
        fds1 <= fds0 + fds0 / 20 + FD_SLACK,
        "open fds grew from {fds0} to {fds1}"
    );
    assert_eq!(
        node.metric(r#"corecast_handshakes_total{outcome="ok"}"#),
        (WARM_UP + cycles) as f64
    );
    assert_eq!(
        node.metric_sum("corecast_history_entries{"),
        0.0,
        "expired history is dropped"
    );
}
