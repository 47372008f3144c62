//! `recovered:false` whenever the node cannot prove it has every push after
//! `since` (issue 11): a malformed position, a position naming an origin
//! the node never heard of, one older than the history window, a node
//! restarted since (a new process), and a mesh gap (node B's subscription
//! to node A runs through a TCP proxy in the test, cut while A accepts
//! pushes for the user). The connection stays usable: live pushes follow.

mod common;
use common::{
    CLUSTER_MESH_KEY, Client, Node, Poster, WAIT, mesh_in, peer_port, read_until_resumed,
    resume_path, resumes, wait_for, wait_offline,
};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn resume(node: &Node, uid: &str, since: &str) -> Client {
    node.try_connect(&resume_path(node, uid, None, since, ""))
        .unwrap_or_else(|status| panic!("resume with since={since:.40} refused with {status}"))
}

/// Resumes and requires `recovered:false`; the pushes sent before it.
fn expect_not_recovered(node: &Node, uid: &str, since: &str) -> (Client, Vec<Value>) {
    let mut client = resume(node, uid, since);
    let (pushes, resumed) =
        read_until_resumed(&mut client, WAIT).unwrap_or_else(|e| panic!("since={since:.40}: {e}"));
    assert_eq!(resumed["type"], "resumed");
    assert_eq!(resumed["recovered"], false, "since={since:.40}: {resumed}");
    assert!(resumed["pos"].is_string(), "{resumed}");
    if let Some(missed) = resumed["missed"].as_u64() {
        assert_eq!(
            missed,
            pushes.len() as u64,
            "missed = pushes sent: {resumed}"
        );
    }
    (client, pushes)
}

/// The connection works after the resume: a push reaches it.
fn assert_live(node: &Node, client: &mut Client, uid: &str) {
    let (status, _) = node.push_json(&format!("/v1/push/user/{uid}"), json!("live"));
    assert_eq!(status, 202);
    let frame = client.recv_json();
    assert_eq!(frame["type"], "push", "{frame}");
    assert_eq!(frame["data"], "live", "{frame}");
}

/// Connects `uid`, posts one push to it and returns its `pos`; the user is
/// offline again when this returns.
fn pos_after_one_push(node: &Node, uid: &str) -> String {
    let mut client = node.connect(uid);
    let (status, _) = node.push_json(&format!("/v1/push/user/{uid}"), json!("first"));
    assert_eq!(status, 202);
    let frame = client.recv_json();
    assert_eq!(frame["data"], "first");
    let pos = frame["pos"]
        .as_str()
        .expect("a push frame with pos")
        .to_string();
    drop(client);
    wait_offline(node, uid);
    pos
}

#[test]
fn malformed_or_unknown_positions_are_not_recovered() {
    let node = Node::start();
    let cases = [
        "garbage".to_string(),
        "1.2".to_string(),
        "zz.zz.zz.zz".to_string(),
        "1.0.5_1.0.5".to_string(),
        "a".repeat(1900),
        // Well-formed, but no origin this node ever heard of.
        "zzzzzz.0.5".to_string(),
    ];
    for (i, since) in cases.iter().enumerate() {
        // A user of its own per case: nothing retained for it, so nothing to
        // send before the answer.
        let uid = format!("lost-{i}");
        let (mut client, pushes) = expect_not_recovered(&node, &uid, since);
        assert!(pushes.is_empty(), "since={since:.40}: {pushes:?}");
        assert_live(&node, &mut client, &uid);
    }
    assert_eq!(resumes(&node, "not_recovered"), cases.len() as f64);
}

/// The history window in the window test (CORECAST_HISTORY_TTL_MS).
const TTL_MS: u64 = 1000;

#[test]
fn a_position_older_than_the_window_is_not_recovered() {
    let ttl = TTL_MS.to_string();
    let node = Node::start_with(&[("CORECAST_HISTORY_TTL_MS", ttl.as_str())]);
    let uid = "sleeper";
    let pos = pos_after_one_push(&node, uid);
    let (status, _) = node.push_json(&format!("/v1/push/user/{uid}"), json!("expired"));
    assert_eq!(status, 202);
    std::thread::sleep(Duration::from_millis(TTL_MS * 5 / 2));
    let (mut client, pushes) = expect_not_recovered(&node, uid, &pos);
    // What the node still holds it may send; nothing else.
    for push in &pushes {
        assert_eq!(push["data"], "expired", "{pushes:?}");
    }
    assert_live(&node, &mut client, uid);
}

#[test]
fn a_node_restarted_since_does_not_recover() {
    let node = Node::start();
    let uid = "returning";
    let pos = pos_after_one_push(&node, uid);
    drop(node); // SIGKILL and wait: the process is gone
    let node = Node::start();
    let (status, _) = node.push_json(&format!("/v1/push/user/{uid}"), json!("after restart"));
    assert_eq!(status, 202);
    let (mut client, pushes) = expect_not_recovered(&node, uid, &pos);
    for push in &pushes {
        assert_eq!(push["data"], "after restart", "{pushes:?}");
    }
    assert_live(&node, &mut client, uid);
}

/// A TCP forwarder on loopback that the test can cut (every forwarded
/// connection shut down, new ones accepted and closed at once) and
/// restore. Threads end when the proxy drops.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the proxy's accept loop looks for a connection or a stop.
const PROXY_POLL: Duration = Duration::from_millis(10);

impl Proxy {
    fn start(to: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (t_cut, t_stop, t_live) = (cut.clone(), stop.clone(), live.clone());
        let thread = std::thread::spawn(move || {
            while !t_stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(PROXY_POLL);
                        continue;
                    }
                    Err(_) => continue,
                };
                if t_cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                client.set_nonblocking(false).unwrap();
                let Ok(upstream) = TcpStream::connect(to) else {
                    continue;
                };
                let mut live = t_live.lock().unwrap();
                live.push(client.try_clone().unwrap());
                live.push(upstream.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            addr,
            cut,
            stop,
            live,
            thread: Some(thread),
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Pushes posted to A while B's subscription to A is cut.
const DURING_CUT: usize = 3;

/// Pushes tried after the restore until one reaches B (ZeroMQ's PUB drops
/// what it sends before the new subscription has arrived).
const AFTER_RESTORE_MAX: usize = 50;

#[test]
fn a_mesh_gap_is_not_recovered() {
    let (pa, pb) = (peer_port(), peer_port());
    let a_addr = format!("tcp://127.0.0.1:{pa}");
    let b_addr = format!("tcp://127.0.0.1:{pb}");
    let proxy = Proxy::start(([127, 0, 0, 1], pa).into());
    let via_proxy = format!("tcp://{}", proxy.addr);
    let a = Node::start_meshed(
        "node-a",
        &a_addr,
        &format!("{a_addr},{b_addr}"),
        CLUSTER_MESH_KEY,
    );
    let b = Node::start_meshed(
        "node-b",
        &b_addr,
        &format!("{via_proxy},{b_addr}"),
        CLUSTER_MESH_KEY,
    );
    a.wait_peers_up(1);
    b.wait_peers_up(1);
    let b_sees_a = format!("corecast_mesh_peer_up{{peer=\"{via_proxy}\"}}");
    assert_eq!(
        b.metric(&b_sees_a),
        1.0,
        "B subscribes to A through the proxy"
    );

    let uid = "behind-a-gap";
    let path = format!("/v1/push/user/{uid}");
    // One keep-alive connection to A: one origin, in order on the mesh.
    let to_a = Poster::new(a.http);
    let mut client = b.connect(uid);
    let first = to_a.push_ok(&path, json!("through the proxy"));
    let frame = client.recv_json();
    assert_eq!(frame["id"], first.as_str());
    let pos = frame["pos"].as_str().expect("pos").to_string();
    drop(client);
    wait_offline(&b, uid);

    proxy.cut();
    wait_for("B to see A down", Duration::from_secs(10), || {
        b.metric(&b_sees_a) == 0.0
    });
    let mut posted: HashSet<String> = (0..DURING_CUT)
        .map(|n| to_a.push_ok(&path, json!({"during_cut": n})))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    proxy.restore();
    b.wait_peers_up(1);
    let before = mesh_in(&b);
    let mut arrived = false;
    for n in 0..AFTER_RESTORE_MAX {
        posted.insert(to_a.push_ok(&path, json!({"after_restore": n})));
        std::thread::sleep(Duration::from_millis(100));
        if mesh_in(&b) > before {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "no push from A reached B after the restore");
    assert!(
        b.metric(&format!(
            "corecast_mesh_peer_lost_envelopes_total{{peer=\"{via_proxy}\"}}"
        )) >= DURING_CUT as f64,
        "B counted the gap in A's sequence"
    );
    std::thread::sleep(Duration::from_millis(200));

    let (mut client, pushes) = expect_not_recovered(&b, uid, &pos);
    let mut seen = HashSet::new();
    for push in &pushes {
        let id = push["id"].as_str().expect("id");
        assert!(posted.contains(id), "only pushes posted after pos: {push}");
        assert!(seen.insert(id.to_string()), "no duplicate: {pushes:?}");
    }
    assert_live(&b, &mut client, uid);
    drop(proxy);
}
