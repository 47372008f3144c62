//! The mesh is a trust boundary: real libzmq peers (Debian's `python3-zmq`)
//! that do not hold the cluster key can neither read from a node's PUB
//! socket nor inject into its SUB sockets, while delivery between the key
//! holders goes on.
//!
//! Attackers: a NULL-mechanism SUB (what read every push in plaintext
//! before), a CURVE SUB guessing a server key, a CURVE SUB that knows the
//! cluster's public key (leaked) but not its secret (refused by ZAP); a NULL
//! PUB and a CURVE PUB with its own key pair at addresses the node
//! subscribes to, both publishing a well-formed forged envelope.

mod common;
use bytes::Bytes;
use common::{Node, peer_port, require_python_module, rss_kib};
use corecast::mesh::ClusterKeys;
use corecast::mesh::envelope::{Batch, Envelope, encode};
use corecast::push::{ContentKind, Target};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const MESH_KEY: &str = "mesh-auth-test-key-0123456789abcdefghij";

/// How long each attacker runs, in seconds.
const ATTACK_SECONDS: &str = "3";

/// The attackers, one process each: `MODE SECONDS ENDPOINT [ARG]`.
const ATTACKER: &str = r#"
import sys, time, zmq
mode, seconds, endpoint = sys.argv[1], float(sys.argv[2]), sys.argv[3]
ctx = zmq.Context()
if mode.startswith("sub"):
    s = ctx.socket(zmq.SUB)
    if mode == "sub-curve-guess":
        pub, sec = zmq.curve_keypair()
        guess, _ = zmq.curve_keypair()
        s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, guess
    elif mode == "sub-curve-leaked":
        pub, sec = zmq.curve_keypair()
        s.curve_publickey, s.curve_secretkey = pub, sec
        s.curve_serverkey = sys.argv[4].encode()
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoint)
    print("ready", flush=True)
    n, deadline = 0, time.time() + seconds
    while time.time() < deadline:
        if s.poll(50):
            s.recv()
            n += 1
    print("received", n, flush=True)
else:
    forged = open(sys.argv[4], "rb").read()
    p = ctx.socket(zmq.PUB)
    if mode == "pub-curve-own":
        _, sec = zmq.curve_keypair()
        p.curve_server, p.curve_secretkey = True, sec
    p.bind(endpoint)
    print("ready", flush=True)
    n, deadline = 0, time.time() + seconds
    while time.time() < deadline:
        p.send(forged)
        n += 1
        time.sleep(0.01)
    print("sent", n, flush=True)
"#;

struct Attacker {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Attacker {
    fn start(script: &std::path::Path, args: &[&str]) -> Attacker {
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("attacker output").unwrap();
        assert_eq!(first, "ready", "{args:?}");
        Attacker { child, lines }
    }

    /// The attacker's last line ("received N" / "sent N"), once it ends.
    fn finish(mut self) -> String {
        let last = self.lines.next().expect("attacker result").unwrap();
        let _ = self.child.wait();
        last
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script() -> (tempdir::Dir, std::path::PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("attacker.py");
    std::fs::write(&path, ATTACKER).unwrap();
    (dir, path)
}

/// A private directory for the script and the forged bytes, removed on drop.
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let path = std::env::temp_dir().join(format!(
                "corecast-mesh-auth-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn start(id: &str, mesh: &str, peers: &str) -> Node {
    Node::start_meshed(id, mesh, peers, MESH_KEY)
}

fn mesh_address() -> String {
    format!("tcp://127.0.0.1:{}", peer_port())
}

#[test]
fn a_subscriber_without_the_key_reads_nothing() {
    if !require_python_module("zmq", "python3-zmq") {
        return;
    }
    let (_dir, script) = script();
    let mesh = [mesh_address(), mesh_address()];
    let peers = mesh.join(",");
    let a = start("node-a", &mesh[0], &peers);
    let b = start("node-b", &mesh[1], &peers);
    a.wait_peers_up(1);
    b.wait_peers_up(1);
    let mut on_b = b.connect("ub");
    let rss_before = rss_kib(a.pid());

    let public = zmq::z85_encode(&ClusterKeys::derive(MESH_KEY).unwrap().public).unwrap();
    let snoopers: Vec<Attacker> = [
        vec!["sub-null", ATTACK_SECONDS, &mesh[0]],
        vec!["sub-curve-guess", ATTACK_SECONDS, &mesh[0]],
        vec!["sub-curve-leaked", ATTACK_SECONDS, &mesh[0], &public],
    ]
    .iter()
    .map(|args| Attacker::start(&script, args))
    .collect();
    // Pushes accepted on A cross the mesh while the snoopers listen.
    for i in 0..30 {
        let (status, _) = a.push_json("/v1/push/user/ub", serde_json::json!(format!("secret {i}")));
        assert_eq!(status, 202);
        assert_eq!(on_b.recv_json()["data"], format!("secret {i}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    for snooper in snoopers {
        assert_eq!(snooper.finish(), "received 0");
    }
    let rss_after = rss_kib(a.pid());
    println!("snoopers x3 on node-a: RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(a.metric("corecast_mesh_handshake_failures_total{socket=\"pub\"}") >= 2.0);
    assert!(
        a.metric("corecast_mesh_zap_denied_total") >= 1.0,
        "the leaked-public client is refused by ZAP"
    );
    // The node still serves its cluster.
    let (status, _) = a.push_json("/v1/push/user/ub", serde_json::json!("after"));
    assert_eq!(status, 202);
    assert_eq!(on_b.recv_json()["data"], "after");
}

#[test]
fn a_publisher_without_the_key_injects_nothing() {
    if !require_python_module("zmq", "python3-zmq") {
        return;
    }
    let (dir, script) = script();
    // A well-formed batch claiming to come from node-b: what a forger sends.
    let forged = Batch {
        origin: "node-b".into(),
        incarnation: 7,
        envelopes: vec![Envelope {
            seq: 1,
            id: "forged-1".into(),
            target: Target::Broadcast,
            kind: ContentKind::Json,
            payload: Bytes::from_static(b"\"forged\""),
            created_at_us: 0,
            stamp: None,
            idempotency: None,
        }],
    };
    let forged_path = dir.0.join("forged.bin");
    std::fs::write(&forged_path, encode(&forged).unwrap().as_slice()).unwrap();
    let forged_path = forged_path.to_str().unwrap();

    let (rogue_null, rogue_curve) = (mesh_address(), mesh_address());
    let forgers = [
        Attacker::start(
            &script,
            &["pub-null", ATTACK_SECONDS, &rogue_null, forged_path],
        ),
        Attacker::start(
            &script,
            &["pub-curve-own", ATTACK_SECONDS, &rogue_curve, forged_path],
        ),
    ];
    let mesh = [mesh_address(), mesh_address()];
    // A subscribes to B and to both forgers.
    let a_peers = [mesh[0].as_str(), &mesh[1], &rogue_null, &rogue_curve].join(",");
    let a = start("node-a", &mesh[0], &a_peers);
    let b = start("node-b", &mesh[1], &mesh.join(","));
    a.wait_peers_up(1);
    b.wait_peers_up(1);
    let mut on_a = a.connect("ua");

    // Legitimate traffic from B during the attack.
    for i in 0..20 {
        let (status, _) = b.push_json("/v1/push/user/ua", serde_json::json!(format!("legit {i}")));
        assert_eq!(status, 202);
        assert_eq!(on_a.recv_json()["data"], format!("legit {i}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    for forger in forgers {
        assert!(forger.finish().starts_with("sent "));
    }
    assert!(
        on_a.silent_for(Duration::from_millis(500)),
        "something besides the legitimate pushes arrived"
    );
    assert_eq!(
        a.metric("corecast_mesh_envelopes_total{direction=\"in\"}"),
        20.0
    );
    assert!(a.metric("corecast_mesh_handshake_failures_total{socket=\"sub\"}") >= 2.0);
    for rogue in [&rogue_null, &rogue_curve] {
        assert_eq!(
            a.metric(&format!("corecast_mesh_peer_up{{peer=\"{rogue}\"}}")),
            0.0
        );
    }
}
