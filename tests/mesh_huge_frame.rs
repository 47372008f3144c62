//! 73 bytes to the mesh port: a ZMTP greeting and a frame header announcing
//! 2^62 bytes (and its variants). With zeromq 0.7 this aborted the node (the
//! codec reserved the announced length); with libzmq and `ZMQ_MAXMSGSIZE`
//! the length is refused from the header, the connection is closed, and the
//! node lives, costs nothing and keeps delivering across the cluster.

mod common;
use common::{Node, peer_port, rss_kib};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const MESH_KEY: &str = "mesh-huge-frame-test-key-0123456789abcd";

fn start(id: &str, mesh: &str, peers: &str) -> Node {
    Node::start_meshed(id, mesh, peers, MESH_KEY)
}

/// A ZMTP 3.0 greeting announcing `mechanism`.
fn greeting(mechanism: &[u8]) -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xff;
    g[8] = 1;
    g[9] = 0x7f;
    g[10] = 3;
    g[12..12 + mechanism.len()].copy_from_slice(mechanism);
    g
}

/// Sends the 64-byte greeting (waiting for the node's, as a real peer
/// does, so the next bytes reach the frame decoder) and a 9-byte long-frame
/// header announcing `length`; returns the bytes the node answered before
/// it closed the connection (0 when it closed it at the greeting).
fn attack(port: u16, mechanism: &[u8], flags: u8, length: u64) -> usize {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&greeting(mechanism)).unwrap();
    let mut theirs = [0u8; 64];
    if stream.read_exact(&mut theirs).is_err() {
        // Refused at the greeting (a mechanism other than the node's).
        assert_eq!(mechanism, b"NULL", "a CURVE greeting must be answered");
        return 0;
    }
    let mut header = vec![flags];
    header.extend_from_slice(&length.to_be_bytes());
    let _ = stream.write_all(&header);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    64 + rest.len()
}

#[test]
fn huge_frame_announcements_do_not_stop_a_node() {
    let mesh: Vec<String> = (0..2)
        .map(|_| format!("tcp://127.0.0.1:{}", peer_port()))
        .collect();
    let peers = mesh.join(",");
    let a = start("node-a", &mesh[0], &peers);
    let b = start("node-b", &mesh[1], &peers);
    a.wait_peers_up(1);
    b.wait_peers_up(1);
    let mut on_a = a.connect("ua");
    let mut on_b = b.connect("ub");
    let port: u16 = mesh[0].rsplit(':').next().unwrap().parse().unwrap();
    let rss_before = rss_kib(a.pid());

    // 64 + 9 = 73 bytes each, data and command frames, CURVE (what the node
    // runs) and NULL (refused at the greeting).
    for _ in 0..10 {
        for (mechanism, flags, length) in [
            (&b"CURVE"[..], 0x02u8, 1u64 << 62),
            (b"CURVE", 0x06, 1 << 62),
            (b"CURVE", 0x02, u64::MAX),
            (b"NULL", 0x02, 1 << 62),
        ] {
            let answered = attack(port, mechanism, flags, length);
            assert!(answered < 4096, "{answered} bytes answered");
        }
    }

    let rss_after = rss_kib(a.pid());
    println!(
        "73-byte announcements x40 to node-a: alive, RSS {rss_before} KiB before, {rss_after} KiB after"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "{rss_before} -> {rss_after} KiB"
    );
    // Alive, and delivering both ways across the cluster.
    let (status, _) = b.push_json("/v1/push/user/ua", serde_json::json!("b to a"));
    assert_eq!(status, 202);
    assert_eq!(on_a.recv_json()["data"], "b to a");
    let (status, _) = a.push_json("/v1/push/user/ub", serde_json::json!("a to b"));
    assert_eq!(status, 202);
    assert_eq!(on_b.recv_json()["data"], "a to b");
    assert!(a.metric("corecast_mesh_handshake_failures_total{socket=\"pub\"}") >= 1.0);
}
