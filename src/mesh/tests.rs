//! In-process meshes on loopback: two or three nodes in one test process,
//! each with its own mesh thread, talking ZeroMQ (libzmq) over 127.0.0.1,
//! with and without a mesh key.
//!
//! Every wait is bounded ([`WAIT`]); ports are picked free by binding port 0
//! and released just before the mesh binds them.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::config::ClusterConfig;
use crate::push::unix_micros;

const WAIT: Duration = Duration::from_secs(20);

/// A mesh key for the keyed tests (CURVE).
const KEY: &str = "unit-test-mesh-key-0123456789-abcdef";

/// Ports for mesh listeners, which the peers must know before they start:
/// below Linux's ephemeral range (32768-60999), so that no outgoing
/// connection of a concurrent test can take one between this check and the
/// bind (and a restarted node gets its port back); and below the
/// 20000-32000 the integration tests use.
const PEER_PORTS: std::ops::Range<u16> = 12_000..20_000;

/// A free port from [`PEER_PORTS`], chosen at random.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let span = u64::from(PEER_PORTS.end - PEER_PORTS.start);
    (0u64..)
        .map(|attempt| PEER_PORTS.start + (RandomState::new().hash_one(attempt) % span) as u16)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free loopback port")
}

fn addr(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Node {
    handle: Option<MeshHandle>,
    metrics: Arc<MeshMetrics>,
    got: Arc<Mutex<Vec<Received>>>,
    /// Probes received (see [`flowing`]), kept apart from `got`.
    probes: Arc<AtomicUsize>,
}

/// Id prefix of the probe envelopes [`flowing`] sends.
const PROBE_PREFIX: &str = "probe-";

/// How often [`flowing`] sends a probe.
const PROBE_EVERY: Duration = Duration::from_millis(10);

impl Node {
    fn start(id: &str, port: u16, peers: &[String]) -> Node {
        Node::start_keyed(id, port, peers, "")
    }

    fn start_keyed(id: &str, port: u16, peers: &[String], key: &str) -> Node {
        let cluster = ClusterConfig {
            node_id: id.into(),
            mesh_listen: addr(port),
            mesh_peers: peers.to_vec(),
            mesh_key: key.into(),
        };
        let metrics = Arc::new(MeshMetrics::new());
        let got = Arc::new(Mutex::new(Vec::new()));
        let probes = Arc::new(AtomicUsize::new(0));
        let (sink, probe_sink) = (got.clone(), probes.clone());
        let handle = start(
            &cluster,
            Box::new(move |r: Received| {
                if r.id.starts_with(PROBE_PREFIX) {
                    probe_sink.fetch_add(1, Ordering::SeqCst);
                } else {
                    sink.lock().unwrap().push(r);
                }
            }),
            metrics.clone(),
        )
        .expect("mesh starts")
        .expect("mesh has peers");
        Node {
            handle: Some(handle),
            metrics,
            got,
            probes,
        }
    }

    fn handle(&self) -> &MeshHandle {
        self.handle.as_ref().expect("running")
    }

    fn publish(&self, id: &str, target: Target) -> bool {
        self.handle().publish(
            id,
            &target,
            ContentKind::Text,
            &Bytes::from(format!("payload of {id}")),
            unix_micros(),
        )
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    fn ids(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.id.clone())
            .collect()
    }

    fn wait_peers_up(&self, peers: &[String]) {
        wait_until("peers up", || {
            peers.iter().all(|p| self.metrics.peer_up(p) == Some(true))
        });
    }

    fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (bounded) until what `from` publishes reaches `to`: the SUB side
/// reports a connection before the PUB side applies its subscription
/// (ZeroMQ's "slow joiner"), so `from` sends probes until one arrives.
fn flowing(from: &Node, to: &Node) {
    flowing_into(from, &to.probes);
}

/// [`flowing`] to a receiver that counts its probes in `probes`.
fn flowing_into(from: &Node, probes: &AtomicUsize) {
    let before = probes.load(Ordering::SeqCst);
    let mut sent = 0;
    wait_until("envelopes flowing between the two", || {
        sent += 1;
        from.publish(
            &format!("{PROBE_PREFIX}{sent}"),
            Target::User("probe".into()),
        );
        std::thread::sleep(PROBE_EVERY);
        probes.load(Ordering::SeqCst) > before
    });
}

/// The node's metrics once the probes of [`flowing`] stopped arriving: the
/// baseline the rest of a test's counts are compared with.
fn after_probes(node: &Node) -> MeshSnapshot {
    steady("probes to stop arriving", PROBES_QUIET, || {
        node.metrics.snapshot().envelopes_in
    });
    node.metrics.snapshot()
}

/// How long no envelope arrives before the probes count as done.
const PROBES_QUIET: Duration = Duration::from_millis(200);

/// Waits (bounded) until `value` has not changed for `quiet`.
fn steady(what: &str, quiet: Duration, value: impl Fn() -> u64) -> u64 {
    let mut last = (value(), Instant::now());
    wait_until(what, || {
        let now = value();
        if now != last.0 {
            last = (now, Instant::now());
        }
        last.1.elapsed() >= quiet
    });
    last.0
}

#[test]
fn no_listen_or_no_peers_starts_nothing() {
    let metrics = Arc::new(MeshMetrics::new());
    let none = |cluster: ClusterConfig| {
        start(&cluster, Box::new(|_| {}), metrics.clone())
            .unwrap()
            .is_none()
    };
    assert!(none(ClusterConfig::default()));
    assert!(none(ClusterConfig {
        node_id: "n".into(),
        mesh_listen: String::new(),
        mesh_peers: vec![addr(1)],
        ..Default::default()
    }));
    assert!(none(ClusterConfig {
        node_id: "n".into(),
        mesh_listen: addr(7000),
        mesh_peers: vec!["TCP://127.0.0.1:7000/ ".into()],
        ..Default::default()
    }));
    assert!(matches!(
        start(
            &ClusterConfig {
                node_id: String::new(),
                mesh_listen: addr(7000),
                mesh_peers: vec![addr(7001)],
                ..Default::default()
            },
            Box::new(|_| {}),
            metrics.clone()
        ),
        Err(MeshError::NoNodeId)
    ));
    assert!(matches!(
        normalize_address("udp://x:1"),
        Err(MeshError::Address { .. })
    ));
    assert!(normalize_address("tcp://x:99999").is_err());
}

#[test]
fn a_bind_error_is_returned_by_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cluster = ClusterConfig {
        node_id: "a".into(),
        mesh_listen: addr(port),
        mesh_peers: vec![addr(free_port())],
        ..Default::default()
    };
    let result = start(&cluster, Box::new(|_| {}), Arc::new(MeshMetrics::new()));
    assert!(matches!(result, Err(MeshError::Bind { .. })), "{result:?}");
}

#[test]
fn three_nodes_deliver_once_and_never_back_to_the_origin() {
    let ports = [free_port(), free_port(), free_port()];
    let all: Vec<String> = ports.iter().map(|&p| addr(p)).collect();
    // Every node lists every node, itself included.
    let a = Node::start("a", ports[0], &all);
    let b = Node::start("b", ports[1], &all);
    let c = Node::start("c", ports[2], &all);
    a.wait_peers_up(&[all[1].clone(), all[2].clone()]);
    b.wait_peers_up(&[all[0].clone(), all[2].clone()]);
    c.wait_peers_up(&[all[0].clone(), all[1].clone()]);
    assert_eq!(
        a.metrics.peer_up(&all[0]),
        None,
        "own address is not a peer"
    );
    for (from, to) in [(&a, &b), (&a, &c), (&b, &a), (&b, &c), (&c, &a), (&c, &b)] {
        flowing(from, to);
    }
    let before = [&a, &b, &c].map(after_probes);

    let targets = [
        Target::User("alice".into()),
        Target::Users(vec!["bob".into(), "carol".into()]),
        Target::Room("lobby".into()),
        Target::Broadcast,
        Target::RoomJoin {
            room: "lobby".into(),
            uid: "dave".into(),
        },
    ];
    for (i, target) in targets.iter().enumerate() {
        assert!(a.publish(&format!("a-{i}"), target.clone()));
    }
    assert!(b.publish("b-0", Target::Broadcast));
    wait_until("b and c receive a's envelopes", || {
        b.count() == targets.len() && c.count() == targets.len() + 1
    });
    wait_until("a receives b's envelope", || a.count() == 1);
    // Anything extra (a copy, an echo) would arrive within this.
    std::thread::sleep(Duration::from_millis(300));

    let expected: Vec<String> = (0..targets.len()).map(|i| format!("a-{i}")).collect();
    assert_eq!(b.ids(), expected);
    let c_from_a: Vec<String> = c
        .ids()
        .into_iter()
        .filter(|id| id.starts_with("a-"))
        .collect();
    assert_eq!(c_from_a, expected);
    assert_eq!(a.ids(), vec!["b-0".to_string()]);
    let got = b.got.lock().unwrap();
    for (r, target) in got.iter().zip(&targets) {
        assert_eq!(&r.target, target);
        assert_eq!(r.origin, "a");
        assert_eq!(r.kind, ContentKind::Text);
        assert_eq!(r.payload, Bytes::from(format!("payload of {}", r.id)));
    }
    drop(got);
    for (node, before) in [&a, &b, &c].into_iter().zip(&before) {
        let s = node.metrics.snapshot();
        for reason in [DropReason::Duplicate, DropReason::Own, DropReason::Corrupt] {
            assert_eq!(s.drops(reason), before.drops(reason), "{reason:?}");
        }
        assert_eq!(s.lost, before.lost);
    }
    let sent = a.metrics.snapshot().envelopes_out - before[0].envelopes_out;
    assert_eq!(sent, targets.len() as u64);
    let received = b.metrics.snapshot().envelopes_in - before[1].envelopes_in;
    assert_eq!(received, targets.len() as u64);
}

#[test]
fn a_peer_listed_twice_delivers_once() {
    let (pa, pb) = (free_port(), free_port());
    let a = Node::start("a", pa, &[addr(pb)]);
    // The same peer under two names, and one exact repeat.
    let twice = [addr(pa), format!("tcp://localhost:{pa}"), addr(pa)];
    let b = Node::start("b", pb, &twice);
    b.wait_peers_up(&twice[..2]);
    flowing(&a, &b);
    // Probes come twice too: count duplicates from where they settle.
    let duplicates = || b.metrics.snapshot().drops(DropReason::Duplicate);
    let base = steady(
        "probe duplicates to settle",
        Duration::from_millis(200),
        duplicates,
    );

    for i in 0..100 {
        assert!(a.publish(&format!("m{i}"), Target::Broadcast));
    }
    wait_until("one copy of each", || b.count() == 100);
    wait_until("the second copies", || duplicates() == base + 100);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(b.count(), 100);
    let expected: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    assert_eq!(b.ids(), expected);
    assert_eq!(b.metrics.snapshot().lost, 0);
}

#[test]
fn a_burst_of_100000_arrives_in_order() {
    const N: usize = 100_000;
    const BURST_WINDOW: usize = 20_000;
    let (pa, pb) = (free_port(), free_port());
    let a = Node::start("a", pa, &[addr(pb)]);
    let b = Node::start("b", pb, &[addr(pa)]);
    b.wait_peers_up(&[addr(pa)]);
    flowing(&a, &b);
    let (a0, b0) = (after_probes(&a), after_probes(&b));

    let target = Target::User("u".into());
    let payload = Bytes::from_static(&[b'x'; 100]);
    let handle = a.handle();
    for i in 0..N {
        // The queue holds MESH_CHANNEL_CAPACITY; a burst larger than that
        // waits for room instead of counting drops. And at most BURST_WINDOW
        // envelopes are on their way: one libzmq pipe reliably holds about
        // 1,024 messages (batches), and past that PUB drops for the peer.
        while handle.queued() >= MESH_CHANNEL_CAPACITY
            || (i % 1_000 == 0 && i - b.count() >= BURST_WINDOW)
        {
            std::thread::yield_now();
        }
        assert!(handle.publish(
            &format!("{i}"),
            &target,
            ContentKind::Binary,
            &payload,
            unix_micros()
        ));
    }
    wait_until("the whole burst", || b.count() >= N);
    std::thread::sleep(Duration::from_millis(200));
    let got = b.got.lock().unwrap();
    assert_eq!(got.len(), N);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.id, i.to_string(), "in order");
        assert_eq!(r.payload, payload);
    }
    let (sa, sb) = (a.metrics.snapshot(), b.metrics.snapshot());
    assert_eq!(sa.envelopes_out - a0.envelopes_out, N as u64);
    assert_eq!(sb.envelopes_in - b0.envelopes_in, N as u64);
    assert_eq!(sb.lost, b0.lost);
    assert_eq!(sa.drops(DropReason::OutboundFull), 0);
    let bytes_out = sa.bytes_out - a0.bytes_out;
    assert!(bytes_out > (N * 100) as u64);
    assert_eq!(bytes_out, sb.bytes_in - b0.bytes_in);
    assert_eq!(sb.hop_count - b0.hop_count, N as u64);
}

#[test]
fn a_late_or_restarted_peer_starts_receiving() {
    let (pa, pb) = (free_port(), free_port());
    let a = Node::start("a", pa, &[addr(pb)]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.metrics.peer_up(&addr(pb)), Some(false));
    // Published while nobody listens: gone, and a's work is not blocked.
    // Sent before b exists (the mesh thread may be slow to get to it when
    // the machine is loaded), so that it cannot reach b.
    assert!(a.publish("early", Target::Broadcast));
    wait_until("early to be sent", || {
        a.metrics.snapshot().envelopes_out >= 1
    });

    let mut b = Node::start("b", pb, &[addr(pa)]);
    b.wait_peers_up(&[addr(pa)]);
    a.wait_peers_up(&[addr(pb)]);
    flowing(&a, &b);
    flowing(&b, &a);
    assert!(a.publish("a-1", Target::Broadcast));
    assert!(b.publish("b1-1", Target::Broadcast));
    wait_until("both directions", || b.count() == 1 && a.count() == 1);
    assert_eq!(b.ids(), vec!["a-1".to_string()]);

    // b goes away and comes back as a new process on the same address.
    b.stop();
    wait_until("a sees b down", || {
        a.metrics.peer_up(&addr(pb)) == Some(false)
    });
    let b2 = Node::start("b", pb, &[addr(pa)]);
    a.wait_peers_up(&[addr(pb)]);
    b2.wait_peers_up(&[addr(pa)]);
    flowing(&a, &b2);
    flowing(&b2, &a);
    assert!(b2.publish("b2-1", Target::Broadcast));
    assert!(a.publish("a-2", Target::Broadcast));
    wait_until("after the restart", || a.count() == 2 && b2.count() == 1);
    assert_eq!(a.ids(), vec!["b1-1".to_string(), "b2-1".to_string()]);
    let s = a.metrics.snapshot();
    assert_eq!(s.restarts, 1, "a new incarnation, not a gap");
    assert_eq!(s.lost, 0);
}

#[test]
fn garbage_is_counted_and_nothing_panics() {
    let (pa, pb, pj) = (free_port(), free_port(), free_port());
    // `a` also subscribes to a junk publisher of ours.
    let a = Node::start("a", pa, &[addr(pb), addr(pj)]);
    let b = Node::start("b", pb, &[addr(pa)]);

    // Raw TCP junk at a's PUB port: the ZMTP handshake fails there.
    for size in [1usize, 10, 64, 4096] {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", pa)) {
            let junk: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
            let _ = stream.write_all(&junk);
        }
    }

    // A ZeroMQ PUB socket that publishes junk to a's SUB.
    let context = zmq::Context::new();
    let junk = context.socket(zmq::PUB).unwrap();
    junk.bind(&addr(pj)).unwrap();
    let deadline = Instant::now() + WAIT;
    while a.metrics.snapshot().drops(DropReason::Corrupt) < 3 {
        assert!(Instant::now() < deadline, "corrupt messages not counted");
        let _ = junk.send("not a batch", 0);
        let mut forged = envelope::HEADER.to_vec();
        forged.extend_from_slice(&[0xa5; 100]);
        let _ = junk.send(forged, 0);
        let _ = junk.send_multipart(["frame one", "frame two"], 0);
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(junk);

    // The mesh still works both ways.
    a.wait_peers_up(&[addr(pb)]);
    b.wait_peers_up(&[addr(pa)]);
    flowing(&b, &a);
    assert!(b.publish("after-junk", Target::Broadcast));
    wait_until("delivery after junk", || a.count() == 1);
    assert_eq!(a.ids(), vec!["after-junk".to_string()]);
    assert!(a.metrics.snapshot().drops(DropReason::Corrupt) >= 3);
}

#[test]
fn publish_never_blocks_and_counts_a_full_queue() {
    // The peer never comes up; the thread keeps draining into a PUB socket
    // with no subscribers, so fill the queue faster than it drains by
    // stopping the mesh first: a stopped mesh refuses and counts.
    let (pa, pb) = (free_port(), free_port());
    let mut a = Node::start("a", pa, &[addr(pb)]);
    let handle = a.handle().clone();
    let started = Instant::now();
    a.stop();
    assert!(started.elapsed() < Duration::from_millis(MESH_STOP_TIMEOUT_MS + 500));
    assert!(!handle.publish("x", &Target::Broadcast, ContentKind::Text, &Bytes::new(), 0));
    assert_eq!(a.metrics.snapshot().drops(DropReason::OutboundFull), 1);
}

/// The executor -> mesh queue is bounded in bytes as well as entries: with
/// the mesh thread held up (its deliver closure blocks on a received
/// envelope), large envelopes are refused once [`MESH_OUTBOUND_BYTES_MAX`]
/// is queued, long before the entry cap.
#[test]
fn the_outbound_queue_is_bounded_in_bytes() {
    let (pa, pb) = (free_port(), free_port());
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let hold_rx = Mutex::new(hold_rx);
    let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held_in_thread = held.clone();
    let probes_of_a = Arc::new(AtomicUsize::new(0));
    let a_probes = probes_of_a.clone();
    let metrics = Arc::new(MeshMetrics::new());
    let cluster = ClusterConfig {
        node_id: "a".into(),
        mesh_listen: addr(pa),
        mesh_peers: vec![addr(pb)],
        ..Default::default()
    };
    let a = start(
        &cluster,
        Box::new(move |r: Received| {
            if r.id.starts_with(PROBE_PREFIX) {
                a_probes.fetch_add(1, Ordering::SeqCst);
                return;
            }
            // Holds a's mesh thread until the test lets go (bounded).
            held_in_thread.store(true, Ordering::SeqCst);
            let _ = hold_rx.lock().unwrap().recv_timeout(WAIT);
        }),
        metrics.clone(),
    )
    .unwrap()
    .unwrap();
    let b = Node::start("b", pb, &[addr(pa)]);
    wait_until("a subscribed to b", || {
        metrics.peer_up(&addr(pb)) == Some(true)
    });
    flowing_into(&b, &probes_of_a);
    assert!(b.publish("stop-a", Target::Broadcast));
    wait_until("a's thread is held", || held.load(Ordering::SeqCst));

    let payload = Bytes::from(vec![0u8; 4 * 1024 * 1024]);
    let size = envelope::estimated_bytes("big-0", &Target::Broadcast, payload.len());
    let fits = MESH_OUTBOUND_BYTES_MAX / size;
    let mut accepted = 0;
    for i in 0..fits + 10 {
        if a.publish(
            &format!("big-{i}"),
            &Target::Broadcast,
            ContentKind::Binary,
            &payload,
            0,
        ) {
            accepted += 1;
        }
    }
    assert_eq!(accepted, fits);
    assert!(a.queued_bytes() <= MESH_OUTBOUND_BYTES_MAX);
    assert_eq!(a.queued(), fits, "far below the entry cap");
    assert_eq!(metrics.snapshot().drops(DropReason::OutboundFull), 10);
    // Released, the thread drains the queue and the bytes are given back.
    hold_tx.send(()).unwrap();
    wait_until("the queue drains", || {
        a.queued_bytes() == 0 && a.queued() == 0
    });
    assert!(a.publish(
        "small",
        &Target::Broadcast,
        ContentKind::Text,
        &Bytes::new(),
        0
    ));
    drop(hold_tx);
    a.shutdown();
}

/// A ZMTP 3.0 greeting announcing `mechanism` (as client).
fn zmtp_greeting(mechanism: &[u8]) -> [u8; 64] {
    let mut greeting = [0u8; 64];
    greeting[0] = 0xff;
    // ZMTP 1.0-compatible length (libzmq refuses 0) and the 3.x marker.
    greeting[8] = 1;
    greeting[9] = 0x7f;
    greeting[10] = 3;
    greeting[12..12 + mechanism.len()].copy_from_slice(mechanism);
    greeting
}

/// A TCP connection to a mesh port that has exchanged ZMTP greetings
/// (libzmq reads the rest only after its greeting is answered).
fn zmtp_connect(port: u16, mechanism: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(&zmtp_greeting(mechanism)).unwrap();
    let mut greeting = [0u8; 64];
    std::io::Read::read_exact(&mut stream, &mut greeting).unwrap();
    assert_eq!(&greeting[12..12 + mechanism.len()], mechanism);
    stream
}

/// After the greeting, a NULL-mechanism SUB's READY and a subscription to
/// everything, for a subscriber that then never reads.
fn zmtp_sub_ready() -> Vec<u8> {
    let mut ready = vec![5u8];
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&3u32.to_be_bytes());
    ready.extend_from_slice(b"SUB");
    let mut out = vec![0x04, ready.len() as u8];
    out.extend_from_slice(&ready);
    out.extend_from_slice(&[0x00, 1, 1]);
    out
}

/// Per-peer isolation: a subscriber that completes the handshake and then
/// never reads fills only its own pipe. The healthy peer receives every
/// envelope with no loss (before libzmq, one global backlog cap made every
/// peer lose what the stalled one could not take), and the stalled
/// connection is closed by the heartbeat timeout.
#[test]
fn a_stalled_subscriber_costs_the_others_nothing() {
    let (pa, pb) = (free_port(), free_port());
    let a = Node::start("a", pa, &[addr(pb)]);
    let b = Node::start("b", pb, &[addr(pa)]);
    b.wait_peers_up(&[addr(pa)]);

    let mut stalled = zmtp_connect(pa, b"NULL");
    stalled.write_all(&zmtp_sub_ready()).unwrap();
    wait_until("both subscribers admitted", || {
        a.metrics.snapshot().subscriber_connects >= 2
    });
    flowing(&a, &b);
    let (a0, b0) = (after_probes(&a), after_probes(&b));

    // 4 KiB payloads: far more than the stalled pipe and its socket
    // buffers hold.
    const N: u64 = 30_000;
    let payload = Bytes::from(vec![7u8; 4096]);
    let handle = a.handle();
    for i in 0..N {
        while handle.queued() >= 1024 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(handle.publish(
            &format!("{i}"),
            &Target::Broadcast,
            ContentKind::Binary,
            &payload,
            0
        ));
    }
    wait_until("b receives every envelope", || b.count() as u64 == N);
    let (sa, sb) = (a.metrics.snapshot(), b.metrics.snapshot());
    assert_eq!(sb.lost, b0.lost, "{sa:?} {sb:?}");
    assert_eq!(sa.envelopes_out - a0.envelopes_out, N);
    assert_eq!(sa.drops, a0.drops);
    // The stalled subscriber answers no heartbeat: a closes it.
    wait_until("the stalled subscriber is dropped", || {
        a.metrics.snapshot().subscriber_disconnects >= 1
    });
    drop(stalled);
}

/// A ZMTP greeting followed by a frame header announcing 2^62 bytes (and
/// variants): refused from the header by `ZMQ_MAXMSGSIZE`, the connection
/// is dropped, nothing is allocated, and the mesh keeps delivering. Before
/// libzmq (zeromq 0.7) these 73 bytes aborted the process.
#[test]
fn huge_frame_announcements_are_refused_and_the_mesh_lives() {
    for key in ["", KEY] {
        let (pa, pb) = (free_port(), free_port());
        let a = Node::start_keyed("a", pa, &[addr(pb)], key);
        let b = Node::start_keyed("b", pb, &[addr(pa)], key);
        b.wait_peers_up(&[addr(pa)]);
        for (flags, length) in [
            (0x02u8, 1u64 << 62),
            (0x06, 1 << 62),
            (0x02, (MESH_MESSAGE_BYTES_MAX + 1) as u64),
            (0x02, u64::MAX),
        ] {
            // The greeting with the mechanism the node runs, so that the
            // frame header reaches libzmq's decoder: 64 + 9 = 73 bytes.
            let mechanism: &[u8] = if key.is_empty() { b"NULL" } else { b"CURVE" };
            let mut evil = zmtp_connect(pa, mechanism);
            let mut header = vec![flags];
            header.extend_from_slice(&length.to_be_bytes());
            let _ = evil.write_all(&header);
            // The node refuses the announced length and closes.
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut evil, &mut sink);
            assert!(sink.len() < 1024, "{} bytes answered", sink.len());
        }
        flowing(&a, &b);
        assert!(a.publish("alive", Target::Broadcast));
        wait_until("delivery after the attack", || b.count() == 1);
        wait_until("the refused connections are counted", || {
            let s = a.metrics.snapshot();
            s.subscriber_disconnects + s.handshake_failures_pub >= 4
        });
    }
}

/// With a key, nodes holding it deliver to each other (CURVE); a node with
/// another key neither receives from them nor reaches them, and each side
/// counts the failed handshakes.
#[test]
fn only_key_holders_exchange_envelopes() {
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let all = [addr(pa), addr(pb), addr(pc)];
    let a = Node::start_keyed("a", pa, &all, KEY);
    let b = Node::start_keyed("b", pb, &all, KEY);
    let c = Node::start_keyed("c", pc, &all, "another-key-of-enough-length-0123456789");
    a.wait_peers_up(&all[1..2]);
    b.wait_peers_up(&all[..1]);
    flowing(&a, &b);
    assert!(a.publish("a-1", Target::Broadcast));
    assert!(c.publish("c-1", Target::Broadcast));
    wait_until("b receives a's envelope", || b.count() == 1);
    wait_until("the outsider's handshakes fail on both sides", || {
        let s = a.metrics.snapshot();
        s.handshake_failures_pub >= 1 && s.handshake_failures_sub >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.ids(), vec!["a-1".to_string()]);
    assert_eq!(c.count(), 0);
    assert_eq!(a.metrics.peer_up(&all[2]), Some(false));
    assert_eq!(c.metrics.peer_up(&all[0]), Some(false));
}

#[test]
fn without_a_key_only_loopback_addresses_are_accepted() {
    let cluster = |listen: &str, peer: &str, key: &str| ClusterConfig {
        node_id: "n".into(),
        mesh_listen: listen.into(),
        mesh_peers: vec![peer.into()],
        mesh_key: key.into(),
    };
    let metrics = Arc::new(MeshMetrics::new());
    for (listen, peer) in [
        ("tcp://0.0.0.0:7000", "tcp://127.0.0.1:7001"),
        ("tcp://127.0.0.1:7000", "tcp://10.1.2.3:7001"),
        ("tcp://*:7000", "tcp://127.0.0.1:7001"),
        ("tcp://127.0.0.1:7000", "tcp://mesh.example:7001"),
    ] {
        let result = start(
            &cluster(listen, peer, ""),
            Box::new(|_| {}),
            metrics.clone(),
        );
        assert!(
            matches!(&result, Err(MeshError::KeyRequired { .. })),
            "{listen} {peer}: {result:?}"
        );
        let message = result.unwrap_err().to_string();
        assert!(message.contains("CORECAST_MESH_KEY"), "{message}");
    }
    for loopback in [
        "tcp://127.0.0.1:1",
        "tcp://localhost:1",
        "tcp://[::1]:1",
        "tcp://127.9.9.9:1",
    ] {
        assert!(is_loopback_address(loopback), "{loopback}");
    }
    assert!(matches!(
        start(
            &cluster("tcp://127.0.0.1:7000", "tcp://127.0.0.1:7001", "short"),
            Box::new(|_| {}),
            metrics
        ),
        Err(MeshError::Key(_))
    ));
}

/// Throughput and hop latency, one mesh to another on loopback.
/// `cargo test --release --lib mesh::tests::bench -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_relay_throughput_and_latency() {
    // CORECAST_BENCH_MESH_KEY= (empty) measures the NULL mechanism.
    let key = std::env::var("CORECAST_BENCH_MESH_KEY").unwrap_or_else(|_| KEY.to_string());
    println!(
        "mechanism: {}",
        if key.is_empty() { "NULL" } else { "CURVE" }
    );
    let (pa, pb) = (free_port(), free_port());
    let a = Node::start_keyed("a", pa, &[addr(pb)], &key);
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let probes_of_b = Arc::new(AtomicUsize::new(0));
    let b_probes = probes_of_b.clone();
    let metrics_b = Arc::new(MeshMetrics::new());
    let b = start(
        &ClusterConfig {
            node_id: "b".into(),
            mesh_listen: addr(pb),
            mesh_peers: vec![addr(pa)],
            mesh_key: key.clone(),
        },
        Box::new(move |r: Received| {
            if r.id.starts_with(PROBE_PREFIX) {
                b_probes.fetch_add(1, Ordering::SeqCst);
            } else {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }),
        metrics_b.clone(),
    )
    .unwrap()
    .unwrap();
    wait_until("b connected", || metrics_b.peer_up(&addr(pa)) == Some(true));
    flowing_into(&a, &probes_of_b);

    let target = Target::User("user-42".into());
    let payload = Bytes::from_static(&[b'x'; 100]);
    let handle = a.handle();

    // Throughput: as fast as the publisher can go while at most WINDOW
    // envelopes are on their way (well under what one peer's pipe holds:
    // MESH_PEER_SNDHWM_MESSAGES batches of tens of envelopes or more; so
    // this is the rate the pair sustains with no loss).
    const N: u64 = 2_000_000;
    const WINDOW: u64 = 20_000;
    let t0 = Instant::now();
    for i in 0..N {
        while i - received.load(Ordering::Relaxed) >= WINDOW
            || handle.queued() >= MESH_CHANNEL_CAPACITY
        {
            std::thread::yield_now();
        }
        handle.publish(
            &format!("t{i}"),
            &target,
            ContentKind::Binary,
            &payload,
            unix_micros(),
        );
    }
    let deadline = Instant::now() + WAIT;
    while received.load(Ordering::Relaxed) < N {
        assert!(
            Instant::now() < deadline,
            "received {} of {N}: a {:?}, b {:?}",
            received.load(Ordering::Relaxed),
            a.metrics.snapshot(),
            metrics_b.snapshot()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = t0.elapsed();
    let (sa, sb) = (a.metrics.snapshot(), metrics_b.snapshot());
    println!(
        "throughput: {N} envelopes (100-byte payload, user target) relayed in {:.3} s = {:.0} envelopes/s, \
         {:.1} MB/s of batches; {:.1} envelopes per batch; lost {}, drops at a {:?}",
        elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64(),
        sb.bytes_in as f64 / elapsed.as_secs_f64() / 1e6,
        sa.envelopes_out as f64 / sa.batches_out.max(1) as f64,
        sb.lost,
        sa.drops,
    );

    // Hop latency at a fixed rate: RATE/1000 envelopes every millisecond
    // (created_at is taken at publish, so the tick does not count).
    const RATE: u64 = 10_000;
    const SECONDS: u64 = 5;
    const PER_TICK: u64 = RATE / 1_000;
    std::thread::sleep(Duration::from_millis(200));
    metrics_b.reset_hop_latency();
    let before = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    for tick in 0..SECONDS * 1_000 {
        let due = t0 + Duration::from_millis(tick);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        for j in 0..PER_TICK {
            let i = tick * PER_TICK + j;
            handle.publish(
                &format!("l{i}"),
                &target,
                ContentKind::Binary,
                &payload,
                unix_micros(),
            );
        }
    }
    wait_until("rate phase received", || {
        received.load(Ordering::Relaxed) + metrics_b.snapshot().lost >= before + RATE * SECONDS
    });
    println!(
        "hop latency at {RATE}/s ({PER_TICK} per ms) for {SECONDS} s: p50 {} us, p90 {} us, p99 {} us, \
         p99.9 {} us, max {} us; lost {}",
        metrics_b.hop_latency_quantile_us(0.5),
        metrics_b.hop_latency_quantile_us(0.9),
        metrics_b.hop_latency_quantile_us(0.99),
        metrics_b.hop_latency_quantile_us(0.999),
        metrics_b.hop_latency_quantile_us(1.0),
        metrics_b.snapshot().lost,
    );
    b.shutdown();
}
