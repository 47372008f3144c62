//! Garbage on the mesh: a real libzmq PUB that holds the cluster key (an
//! authenticated peer gone wrong) and that the node subscribes to publishes
//! junk; it is counted as corrupt and the node keeps delivering.

mod common;
use common::{Node, peer_port};
use corecast::mesh::ClusterKeys;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const MESH_KEY: &str = "mesh-garbage-test-key-0123456789abcdef";

/// A CURVE PUB with the cluster's key pair on its own thread, publishing
/// junk until `stop` (bounded to 20 s).
fn rogue_publisher(address: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let keys = ClusterKeys::derive(MESH_KEY).expect("a valid key");
    std::thread::spawn(move || {
        let context = zmq::Context::new();
        let publisher = context.socket(zmq::PUB).unwrap();
        publisher.set_curve_server(true).unwrap();
        publisher.set_curve_secretkey(&keys.secret).unwrap();
        publisher.bind(&address).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut i = 0u8;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            i = i.wrapping_add(1);
            let junk: Vec<u8> = (0..(i as usize * 37 % 900))
                .map(|j| (j as u8) ^ i)
                .collect();
            let _ = publisher.send(junk, 0);
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

#[test]
fn corrupt_envelopes_are_counted_and_dropped() {
    let rogue = format!("tcp://127.0.0.1:{}", peer_port());
    let own = format!("tcp://127.0.0.1:{}", peer_port());
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = rogue_publisher(rogue.clone(), stop.clone());
    let node = Node::start_with(&[
        ("CORECAST_MESH_LISTEN", own.as_str()),
        ("CORECAST_MESH_PEERS", rogue.as_str()),
        ("CORECAST_MESH_KEY", MESH_KEY),
    ]);
    node.wait_peers_up(1);
    // The rogue peer never subscribes: pushes wait for the start-up grace.
    node.wait_ready();
    let mut client = node.connect("victim");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.metric("corecast_mesh_drops_total{reason=\"corrupt\"}") < 10.0 {
        assert!(Instant::now() < deadline, "junk never counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = node.push_json("/v1/push/user/victim", serde_json::json!("ok"));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], "ok");
    assert_eq!(
        node.metric("corecast_mesh_envelopes_total{direction=\"in\"}"),
        0.0
    );
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
}
