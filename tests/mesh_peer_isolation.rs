//! One bad peer never stops the others: of four keyed nodes, one is stalled
//! (SIGSTOP for a few seconds, then SIGCONT) and one is silently dead
//! (SIGSTOP until the end: its kernel still acknowledges TCP, so only the
//! ZMTP heartbeat can tell). A third node receives every push posted on the
//! first, in order and on time; the first sees the dead peer go down within
//! seconds; and what the stalled node missed is counted as lost for its
//! peer on the stalled node alone.

mod common;
use common::{Node, peer_port, rss_kib, wait_for};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

const MESH_KEY: &str = "mesh-isolation-test-key-0123456789abcdef";

/// How long the stalled node stays stopped while pushes flow.
const STALL: Duration = Duration::from_secs(5);

/// A peer's heartbeat must find it gone within this (MESH_HEARTBEAT_*
/// plus scheduling slack).
const DETECT_WITHIN: Duration = Duration::from_secs(6);

fn start(id: &str, mesh: &str, peers: &str) -> Node {
    Node::start_meshed(id, mesh, peers, MESH_KEY)
}

fn peer_series(name: &str, peer: &str) -> String {
    format!("{name}{{peer=\"{peer}\"}}")
}

#[test]
fn a_stalled_and_a_dead_peer_do_not_stop_delivery_to_a_third() {
    let mesh: Vec<String> = (0..4)
        .map(|_| format!("tcp://127.0.0.1:{}", peer_port()))
        .collect();
    let peers = mesh.join(",");
    let a = start("node-a", &mesh[0], &peers);
    let stalled = start("node-b", &mesh[1], &peers);
    let c = start("node-c", &mesh[2], &peers);
    let dead = start("node-d", &mesh[3], &peers);
    for node in [&a, &stalled, &c, &dead] {
        node.wait_peers_up(3);
    }
    let mut on_c = c.connect("uc");
    let rss_before = rss_kib(a.pid());

    dead.signal(Signal::SIGSTOP);
    stalled.signal(Signal::SIGSTOP);
    let stopped_at = Instant::now();
    let mut dead_seen_after = None;
    let mut sent = 0u64;
    let payload = "x".repeat(1024);
    while stopped_at.elapsed() < STALL {
        let (status, _) = a.push_json(
            "/v1/push/user/uc",
            serde_json::json!(format!("{sent} {payload}")),
        );
        assert_eq!(status, 202);
        let got = on_c.recv_json();
        assert_eq!(
            got["data"].as_str().and_then(|d| d.split(' ').next()),
            Some(sent.to_string().as_str()),
            "c gets every push, in order, while two peers are stopped"
        );
        sent += 1;
        if dead_seen_after.is_none()
            && sent.is_multiple_of(50)
            && a.metric(&peer_series("corecast_mesh_peer_up", &mesh[3])) == 0.0
        {
            dead_seen_after = Some(stopped_at.elapsed());
        }
    }
    wait_for("a sees the dead peer down", DETECT_WITHIN, || {
        a.metric(&peer_series("corecast_mesh_peer_up", &mesh[3])) == 0.0
    });
    let detected = dead_seen_after.unwrap_or_else(|| stopped_at.elapsed());
    assert!(detected <= DETECT_WITHIN, "detected after {detected:?}");
    assert!(a.metric(&peer_series("corecast_mesh_peer_down_total", &mesh[3])) >= 1.0);
    let rss_during = rss_kib(a.pid());

    // The stalled node comes back, reconnects, and the next push shows it
    // the hole in node-a's sequence.
    stalled.signal(Signal::SIGCONT);
    stalled.wait_peers_up(2);
    let mut on_b = stalled.connect("ub");
    let lost_series = peer_series("corecast_mesh_peer_lost_envelopes_total", &mesh[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut marker = 0;
    loop {
        let (status, _) = a.push_json("/v1/push/user/ub", serde_json::json!(format!("m{marker}")));
        assert_eq!(status, 202);
        marker += 1;
        if !on_b.silent_for(Duration::from_millis(200)) && stalled.metric(&lost_series) > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled node never saw its loss"
        );
    }
    let lost_on_b = stalled.metric(&lost_series);
    println!(
        "node-a posted {sent} pushes to a user on node-c while node-b (stalled) and node-d (dead) \
         were stopped: c got all of them in order; node-a saw node-d down within {detected:?}; \
         node-b counted {lost_on_b} lost from node-a; node-a RSS {rss_before} KiB before, \
         {rss_during} KiB during"
    );
    // Losses are the stalled node's alone.
    assert_eq!(
        c.metric(&peer_series(
            "corecast_mesh_peer_lost_envelopes_total",
            &mesh[0]
        )),
        0.0
    );
    assert_eq!(c.metric("corecast_mesh_lost_envelopes_total"), 0.0);
    assert!(lost_on_b <= sent as f64);
    assert!(
        rss_during < rss_before + 128 * 1024,
        "{rss_before} -> {rss_during} KiB"
    );
    dead.signal(Signal::SIGCONT);
}
