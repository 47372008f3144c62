//! Rolling restart with zero loss (issue 11): a 3-node cluster, 2,000
//! users spread over it, 1,000 pushes/s to random users for 60 s through
//! every node's HTTP API, while each node in turn is drained (SIGTERM; the
//! test watches the process exit with 0) and restarted on the same ports.
//! Each client reconnects to another node with its last `pos` (the loop is
//! in tests/common/fleet.rs). Every push answered 202 reaches its user
//! exactly once after dropping ids already seen, and each origin's pushes
//! arrive in that origin's order (a push answered 202 before another was
//! posted to the same origin arrives before it; two requests in flight at
//! once have no order, and their ids, taken before the key claim, may
//! disagree with it: counted apart). A push the cluster refused (503 while
//! draining, a connection cut by the exit) is retried on the next node
//! with the same `Idempotency-Key`. The figures are printed for README
//! (`cargo test --release --test rolling_restart -- --nocapture`).

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use common::{CLUSTER_MESH_KEY, Node, Poster, peer_port, wait_for};
use fleet::{Fleet, FleetUser};
use nix::sys::signal::Signal;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const USERS: usize = 2000;
const PUSHES_PER_SEC: u32 = 1000;
const PUSHING_FOR: Duration = Duration::from_secs(60);
/// Threads posting pushes, each with a keep-alive connection per node.
const PUSHER_THREADS: u32 = 8;
/// Nodes tried for one push (with the same Idempotency-Key).
const ATTEMPTS_PER_PUSH: usize = NODES;
/// Pause between the attempts of one push.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// The first drain, then one every DRAIN_EVERY (all within PUSHING_FOR).
const FIRST_DRAIN_AT: Duration = Duration::from_secs(8);
const DRAIN_EVERY: Duration = Duration::from_secs(17);
/// `[shutdown] drain_period_ms` of the nodes: the 1001 closes are spread
/// over it.
const DRAIN_PERIOD_MS: u64 = 2000;
/// How long a drained node may take to exit.
const EXIT_WAIT: Duration = Duration::from_secs(30);
/// Attempts at restarting a node on its ports (should one still be taken).
const RESTART_ATTEMPTS: usize = 5;
/// Bound on the waits for the fleet (all online; all pushes received).
const FLEET_WAIT: Duration = Duration::from_secs(60);
const DELIVERY_WAIT: Duration = Duration::from_secs(30);
/// Problems listed in the failure message (all are counted).
const LISTED_MAX: usize = 20;

/// What one node is started with, every time (same ports, same id).
struct Spec {
    id: String,
    mesh: String,
    ws: SocketAddr,
    http: SocketAddr,
}

fn start(spec: &Spec, peers: &str) -> Result<Node, String> {
    let (ws, http) = (spec.ws.to_string(), spec.http.to_string());
    let drain = DRAIN_PERIOD_MS.to_string();
    Node::try_start_with(&[
        ("CORECAST_NODE_ID", spec.id.as_str()),
        ("CORECAST_MESH_LISTEN", spec.mesh.as_str()),
        ("CORECAST_MESH_PEERS", peers),
        ("CORECAST_MESH_KEY", CLUSTER_MESH_KEY),
        ("CORECAST_WS_LISTEN", ws.as_str()),
        ("CORECAST_HTTP_LISTEN", http.as_str()),
        ("CORECAST_DRAIN_PERIOD_MS", drain.as_str()),
    ])
}

fn start_retrying(spec: &Spec, peers: &str) -> Node {
    let mut failures = Vec::new();
    for _ in 0..RESTART_ATTEMPTS {
        match start(spec, peers) {
            Ok(node) => return node,
            Err(e) => failures.push(e),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{} did not start on its ports: {failures:?}", spec.id);
}

/// What the pushers saw.
#[derive(Default)]
struct Posted {
    /// (user index, id) of every 202.
    accepted: Vec<(usize, String)>,
    /// Per accepted id: when its first attempt was sent, when the 202 came
    /// (to tell a broken order from two requests in flight at once).
    timing: HashMap<String, (Instant, Instant)>,
    /// Pushes tried (each once, whatever its attempts).
    pushes: u64,
    /// Pushes no node answered 202.
    failed: u64,
    /// Attempts by answer: HTTP status, or "error" for a transport error.
    answers: BTreeMap<String, u64>,
    /// 202s that came on a second or later attempt.
    accepted_on_retry: u64,
}

fn pusher(
    thread: u32,
    http: Vec<SocketAddr>,
    start: Instant,
    posted: Arc<Mutex<Posted>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let posters: Vec<Poster> = http.iter().map(|a| Poster::new(*a)).collect();
        let interval = Duration::from_secs(1) / PUSHES_PER_SEC;
        for k in 0u32.. {
            let n = k * PUSHER_THREADS + thread;
            let due = start + interval * n;
            if due >= start + PUSHING_FOR {
                break;
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let user = rand::random_range(0..USERS);
            let path = format!("/v1/push/user/rr-{user}");
            let key = format!("rolling-{n}");
            let data = json!({"n": n});
            let mut accepted = None;
            let mut answers = Vec::new();
            let sent = Instant::now();
            for attempt in 0..ATTEMPTS_PER_PUSH {
                let node = (n as usize + attempt) % posters.len();
                match posters[node].push(&path, &data, Some(&key)) {
                    Ok((202, body)) => {
                        answers.push("202".to_string());
                        accepted = Some((attempt, body["id"].as_str().unwrap_or("").to_string()));
                        break;
                    }
                    Ok((status, _)) => answers.push(status.to_string()),
                    Err(_) => answers.push("error".to_string()),
                }
                std::thread::sleep(RETRY_PAUSE);
            }
            let mut posted = posted.lock().unwrap();
            posted.pushes += 1;
            for answer in answers {
                *posted.answers.entry(answer).or_default() += 1;
            }
            match accepted {
                Some((attempt, id)) => {
                    if attempt > 0 {
                        posted.accepted_on_retry += 1;
                    }
                    posted.timing.insert(id.clone(), (sent, Instant::now()));
                    posted.accepted.push((user, id));
                }
                None => posted.failed += 1,
            }
        }
    })
}

fn users_active(nodes: &[Node]) -> f64 {
    nodes
        .iter()
        .map(|n| n.metric_sum("corecast_users_active{"))
        .sum()
}

/// Whether `check` holds within `within` (polled; never panics).
fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn rolling_restart_loses_nothing() {
    let specs: Vec<Spec> = (0..NODES)
        .map(|i| Spec {
            id: format!("node-{}", (b'a' + i as u8) as char),
            mesh: format!("tcp://127.0.0.1:{}", peer_port()),
            // Below the ephemeral range, like the mesh ports: no outgoing
            // connection takes them while a node is down.
            ws: ([127, 0, 0, 1], peer_port()).into(),
            http: ([127, 0, 0, 1], peer_port()).into(),
        })
        .collect();
    let peers = specs
        .iter()
        .map(|s| s.mesh.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Node> = specs.iter().map(|s| start_retrying(s, &peers)).collect();
    for node in &nodes {
        node.wait_peers_up(NODES - 1);
    }

    let users: Vec<FleetUser> = (0..USERS)
        .map(|i| {
            let uid = format!("rr-{i}");
            FleetUser {
                token: nodes[0].token(&uid, None),
                uid,
                first_node: i % NODES,
            }
        })
        .collect();
    let mut fleet = Fleet::start(users, specs.iter().map(|s| s.ws).collect());
    let connect_start = Instant::now();
    wait_for("every user online", FLEET_WAIT, || {
        fleet.online() == USERS && users_active(&nodes) == USERS as f64
    });
    let connected_in = connect_start.elapsed();

    let posted = Arc::new(Mutex::new(Posted::default()));
    let start = Instant::now();
    let http: Vec<SocketAddr> = specs.iter().map(|s| s.http).collect();
    let pushers: Vec<_> = (0..PUSHER_THREADS)
        .map(|t| pusher(t, http.clone(), start, posted.clone()))
        .collect();

    let mut restarts = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let at = start + FIRST_DRAIN_AT + DRAIN_EVERY * i as u32;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let drain_start = Instant::now();
        nodes[i].signal(Signal::SIGTERM);
        let status = nodes[i].wait_exit(EXIT_WAIT);
        assert_eq!(
            status.code(),
            Some(0),
            "{} exits 0 after the drain: {status:?}",
            spec.id
        );
        let drained_in = drain_start.elapsed();
        nodes[i] = start_retrying(spec, &peers);
        for node in &nodes {
            node.wait_peers_up(NODES - 1);
        }
        restarts.push(format!(
            "{}: drained and exited in {drained_in:?}, back with peers up {:?} later (t={:?})",
            spec.id,
            drain_start.elapsed() - drained_in,
            drain_start.duration_since(start)
        ));
    }
    for pusher in pushers {
        pusher.join().expect("pusher");
    }
    let pushed_for = start.elapsed();
    let posted = std::mem::take(&mut *posted.lock().unwrap());
    let everything = wait_until(DELIVERY_WAIT, || {
        posted
            .accepted
            .iter()
            .all(|(u, id)| fleet.logs[*u].lock().unwrap().seen.contains(id))
    });
    fleet.stop();

    let mut problems = Vec::new();
    let mut missing = 0u64;
    let mut expected: Vec<HashSet<&str>> = vec![HashSet::new(); USERS];
    for (u, id) in &posted.accepted {
        expected[*u].insert(id.as_str());
        let log = fleet.logs[*u].lock().unwrap();
        if !log.seen.contains(id) {
            missing += 1;
            if problems.len() < LISTED_MAX {
                // What the user went through, to tell where it was lost.
                let resumes: Vec<bool> = log.resumes.iter().map(|r| r.recovered).collect();
                let (sent, answered) = posted.timing[id];
                problems.push(format!(
                    "rr-{u} never got {id} (posted at t={:?}, 202 at t={:?}; the user had {} \
                     connections, resumes recovered: {resumes:?})",
                    sent.duration_since(start),
                    answered.duration_since(start),
                    log.connects
                ));
            }
        }
    }
    let (mut received, mut unexpected, mut duplicates, mut disorder, mut bad) = (0, 0, 0, 0, 0);
    let mut in_flight_together = 0;
    let (mut connects, mut recovered, mut not_recovered, mut loss_notices) = (0, 0, 0, 0);
    for (u, log) in fleet.logs.iter().enumerate() {
        let log = log.lock().unwrap();
        received += log.seen.len();
        unexpected += log
            .seen
            .iter()
            .filter(|id| !expected[u].contains(id.as_str()))
            .count();
        duplicates += log.duplicates;
        // Out of order only when the late push was answered 202 before the
        // one seen first was sent; else both were in flight at once and
        // either order is the origin's.
        for v in &log.order_violations {
            match (posted.timing.get(&v.late), posted.timing.get(&v.after)) {
                (Some(&(_, late_answered)), Some(&(after_sent, _)))
                    if late_answered < after_sent =>
                {
                    disorder += 1;
                    if problems.len() < LISTED_MAX {
                        problems.push(format!("rr-{u}: out of order: {v}"));
                    }
                }
                _ => in_flight_together += 1,
            }
        }
        bad += log.bad_frames.len();
        connects += log.connects;
        loss_notices += log.loss_notices;
        if problems.len() < LISTED_MAX {
            for b in log.bad_frames.iter().take(1) {
                problems.push(format!("rr-{u}: {b}"));
            }
        }
        // The first connection's resume (since= empty) is not a recovery.
        for r in log.resumes.iter().filter(|r| r.connection > 1) {
            if r.recovered {
                recovered += 1;
            } else {
                not_recovered += 1;
            }
        }
    }
    let reconnects = connects.saturating_sub(USERS as u64);
    println!(
        "rolling restart: {NODES} nodes, {USERS} users (online in {connected_in:?}), \
         {PUSHES_PER_SEC} pushes/s scheduled for {PUSHING_FOR:?}: {} posted in {pushed_for:?} ({:.0}/s achieved)",
        posted.pushes,
        posted.pushes as f64 / pushed_for.as_secs_f64()
    );
    for line in &restarts {
        println!("  {line}");
    }
    println!(
        "  pushes {}, answered 202 {} ({} on a retry), not accepted by any node {}; attempts by answer {:?}",
        posted.pushes,
        posted.accepted.len(),
        posted.accepted_on_retry,
        posted.failed,
        posted.answers
    );
    println!(
        "  received {received} distinct ids ({unexpected} never answered 202), missing {missing}, \
         duplicates dropped {duplicates}, out of order {disorder} (and {in_flight_together} \
         reordered of two requests in flight at once), malformed frames {bad}, \
         everything received {everything}"
    );
    println!(
        "  reconnects {reconnects} (server closes {}, connect failures {}, refused 503 {}), \
         resumes after a reconnect: recovered {recovered}, not recovered {not_recovered}; \
         live loss notices {loss_notices}",
        fleet
            .stats
            .server_closes
            .load(std::sync::atomic::Ordering::Relaxed),
        fleet
            .stats
            .connect_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        fleet
            .stats
            .refused_503
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        missing == 0 && disorder == 0 && bad == 0,
        "{missing} missing, {disorder} out of order, {bad} malformed frames; first problems:\n{}",
        problems.join("\n")
    );
    assert!(!posted.accepted.is_empty(), "pushes were accepted");
}
