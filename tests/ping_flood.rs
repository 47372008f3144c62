//! A ping flood from a client that never reads: one user with a valid
//! token opens a socket with a 2 KiB receive buffer and writes 64 MiB of
//! masked empty pings as fast as the node takes them. The node answers at
//! most one pong at a time, counts the pings in the client's rate window
//! and closes it (1008), so its memory stays within a few MiB and another
//! user's pushes keep arriving. (Before the fix the same attack grew the
//! node by about 920 MiB: every ping queued a pong past the caps.)

mod common;
use common::{Node, WAIT, masked_frame, rss_kib, wait_for};
use std::io::Write;
use std::time::{Duration, Instant};

/// What the attacker tries to send.
const FLOOD_BYTES: usize = 64 * 1024 * 1024;

/// Receive buffer of the attacker's socket, set before connect.
const ATTACKER_RCVBUF_BYTES: usize = 2048;

/// How much the node may grow during the attack: its send-queue cap
/// (1 MiB by default) plus allocator slack, far from the ~920 MiB the
/// unbounded pong queue cost.
const RSS_GROWTH_MAX_KIB: u64 = 16 * 1024;

/// How long the attacker keeps writing at most.
const FLOOD_FOR: Duration = Duration::from_secs(20);

#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_bounded() {
    let node = Node::start();
    let mut victim = node.connect("victim");
    let rss_before = rss_kib(node.pid());

    let mut attacker = node.connect_small_rcvbuf("attacker", ATTACKER_RCVBUF_BYTES);
    let ping = masked_frame(0x89, b"");
    let chunk: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 10_000)
        .collect();
    let flood = std::thread::spawn(move || {
        let socket = attacker.ws.get_mut();
        socket
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let (mut sent, started) = (0usize, Instant::now());
        while sent < FLOOD_BYTES && started.elapsed() < FLOOD_FOR {
            match socket.write(&chunk) {
                Ok(n) => sent += n,
                // Blocked (the node stopped reading) or closed by the node.
                Err(_) => break,
            }
        }
        sent
    });

    // Meanwhile another user is served.
    for seq in 0..20 {
        let (status, _) = node.push_json("/v1/push/user/victim", serde_json::json!({"seq": seq}));
        assert_eq!(status, 202);
        assert_eq!(victim.recv_json()["data"]["seq"], seq);
    }
    let sent = flood.join().expect("flood thread");
    wait_for("the flood to be refused", WAIT, || {
        node.metric(r#"corecast_limit_refusals_total{limit="client_message_rate"}"#) > 0.0
    });
    let rss_after = rss_kib(node.pid());
    eprintln!(
        "ping flood: attacker wrote {} KiB; node RSS {rss_before} -> {rss_after} KiB",
        sent / 1024
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_MAX_KIB,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    wait_for("the attacker to be closed", WAIT, || {
        node.metric(r#"corecast_disconnects_total{reason="rate_limited"}"#) >= 1.0
            || node.metric_sum("corecast_users_active{") <= 1.0
    });
    let (status, _) = node.push_json("/v1/push/user/victim", serde_json::json!("after"));
    assert_eq!(status, 202);
    assert_eq!(victim.recv_json()["data"], "after");
}
