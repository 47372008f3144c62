//! Garbage on the mesh port: a real ZeroMQ PUB that the node subscribes to
//! publishes junk; it is counted as corrupt and the node keeps delivering.

mod common;
use common::{Node, peer_port};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use zeromq::{Socket, SocketSend};

/// A ZeroMQ PUB on its own thread publishing junk until `stop` (bounded
/// to 20 s).
fn rogue_publisher(address: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut publisher = zeromq::PubSocket::new();
            publisher.bind(&address).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut i = 0u8;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                i = i.wrapping_add(1);
                let junk: Vec<u8> = (0..(i as usize * 37 % 900))
                    .map(|j| (j as u8) ^ i)
                    .collect();
                let _ = publisher.send(zeromq::ZmqMessage::from(junk)).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
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
    ]);
    node.wait_peers_up(1);
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
