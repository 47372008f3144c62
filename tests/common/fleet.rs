//! Thousands of resuming WebSocket clients on one tokio thread (the resume
//! tests of issue 11): each user is a task that connects with
//! `since=<its last pos>` (empty at first), follows the phase the test
//! sets (connected, away, stopped), reconnects to another node when the
//! server closes it, and logs what it received: ids first seen (a
//! duplicate id is counted and dropped), per-origin order, `resumed`
//! frames. Include it with `#[path = "common/fleet.rs"] mod fleet;`
//! next to `mod common;`.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::{self, Message};

/// Handshakes in flight at once over the whole fleet (the box is shared,
/// and the node caps handshakes per source address at 256).
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 32;

/// Deadline of one TCP connect plus WebSocket handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest random pause before a reconnect after the server closed us
/// (spreads a drain's reconnects a little, as a real client's jitter does).
pub const RECONNECT_JITTER_MS_MAX: u64 = 100;

/// Pause before trying the next node after a refused or failed connect.
pub const CONNECT_RETRY_MS: u64 = 100;

/// Frames one user may log as malformed before the log stops growing.
const BAD_FRAMES_KEPT_MAX: usize = 16;

/// What every user task does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Stay connected; reconnect (with `since`) whenever closed.
    Connected,
    /// Close the connection and stay away.
    Away,
    /// Close and end the task.
    Stop,
}

/// `<node prefix>-<core>` and the counter of a push id
/// `<prefix>-<core>-<counter hex>`: pushes of one origin carry increasing
/// counters in the order that origin accepted them.
pub fn origin_and_counter(id: &str) -> Option<(&str, u64)> {
    let (origin, counter) = id.rsplit_once('-')?;
    Some((origin, u64::from_str_radix(counter, 16).ok()?))
}

/// A push (`late`) received after `after`, a push of the same origin
/// with a higher counter. A broken order when `late` was answered 202
/// before `after` was posted; two requests in flight at once have no order.
#[derive(Clone, Debug)]
pub struct OrderViolation {
    pub late: String,
    pub after: String,
}

impl std::fmt::Display for OrderViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} after {}", self.late, self.after)
    }
}

/// One `resumed` frame as the client saw it.
#[derive(Clone, Debug)]
pub struct Resumed {
    pub recovered: bool,
    pub missed: Option<u64>,
    /// Push frames received on this connection before the `resumed` frame.
    pub pushes_before: u64,
    /// Which of the user's connections it came on (1 = the first).
    pub connection: u64,
}

/// Everything one user received, over all its connections.
#[derive(Debug, Default)]
pub struct UserLog {
    /// Ids received, each once.
    pub seen: HashSet<String>,
    /// Ids in the order first seen.
    pub order: Vec<String>,
    /// `data` of each id first seen.
    pub data: HashMap<String, Value>,
    /// Highest counter seen per origin, and its id.
    pub last_per_origin: HashMap<String, (u64, String)>,
    /// Push frames whose id had been seen already (dropped).
    pub duplicates: u64,
    /// Each push that came after a push of the same origin with a higher
    /// counter. Whether that breaks the origin's order depends on how they
    /// were posted: the counter is taken when the request is read, the
    /// origin's order when it is sequenced, so two requests in flight at
    /// once may be sequenced either way (see [`OrderViolation`]).
    pub order_violations: Vec<OrderViolation>,
    /// The `pos` to resume from (of the last push or `resumed` frame).
    pub pos: Option<String>,
    /// Successful handshakes.
    pub connects: u64,
    /// Every connection's `resumed` frame (its answer to `since`), in order.
    pub resumes: Vec<Resumed>,
    /// Live `resumed` frames with `recovered:false` after a connection's
    /// first (loss notices: refetch state).
    pub loss_notices: u64,
    /// Frames that were not what the contract says (kept up to a bound).
    pub bad_frames: Vec<String>,
    /// Whether the current connection is up (handshake done).
    pub online: bool,
}

impl UserLog {
    /// Logs one push frame's id; false when it was a duplicate.
    pub fn record_push(&mut self, id: &str, data: &Value) -> bool {
        if !self.seen.insert(id.to_string()) {
            self.duplicates += 1;
            return false;
        }
        self.order.push(id.to_string());
        self.data.insert(id.to_string(), data.clone());
        match origin_and_counter(id) {
            Some((origin, counter)) => match self.last_per_origin.get_mut(origin) {
                Some((last, last_id)) if counter <= *last => {
                    self.order_violations.push(OrderViolation {
                        late: id.to_string(),
                        after: last_id.clone(),
                    });
                }
                Some(last) => *last = (counter, id.to_string()),
                None => {
                    self.last_per_origin
                        .insert(origin.to_string(), (counter, id.to_string()));
                }
            },
            None => self.bad(format!("push id not <prefix>-<core>-<hex>: {id}")),
        }
        true
    }

    fn bad(&mut self, what: String) {
        if self.bad_frames.len() < BAD_FRAMES_KEPT_MAX {
            self.bad_frames.push(what);
        }
    }
}

/// Counters over the whole fleet.
#[derive(Debug, Default)]
pub struct FleetStats {
    pub connect_failures: AtomicU64,
    pub refused_503: AtomicU64,
    pub server_closes: AtomicU64,
}

/// One user of the fleet: uid, token, the node index it connects to first.
pub struct FleetUser {
    pub uid: String,
    pub token: String,
    pub first_node: usize,
}

pub struct Fleet {
    phase: watch::Sender<Phase>,
    pub logs: Vec<Arc<Mutex<UserLog>>>,
    pub stats: Arc<FleetStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fleet {
    /// Starts every user's task on a tokio thread, in phase `Connected`.
    /// `nodes` are the WebSocket addresses (fixed for the test: restarted
    /// nodes come back on the same ports).
    pub fn start(users: Vec<FleetUser>, nodes: Vec<SocketAddr>) -> Fleet {
        assert!(!nodes.is_empty());
        let (phase, phase_rx) = watch::channel(Phase::Connected);
        let logs: Vec<_> = users
            .iter()
            .map(|_| Arc::new(Mutex::new(UserLog::default())))
            .collect();
        let stats = Arc::new(FleetStats::default());
        let task_logs = logs.clone();
        let task_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("fleet".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    let nodes = Arc::new(nodes);
                    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
                    let tasks: Vec<_> = users
                        .into_iter()
                        .zip(task_logs)
                        .map(|(user, log)| {
                            tokio::spawn(run_user(
                                user,
                                nodes.clone(),
                                phase_rx.clone(),
                                handshakes.clone(),
                                log,
                                task_stats.clone(),
                            ))
                        })
                        .collect();
                    for task in tasks {
                        let _ = task.await;
                    }
                });
            })
            .expect("spawn fleet thread");
        Fleet {
            phase,
            logs,
            stats,
            thread: Some(thread),
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Users whose connection is up now.
    pub fn online(&self) -> usize {
        self.logs
            .iter()
            .filter(|l| l.lock().unwrap().online)
            .count()
    }

    /// Stops every task and waits for the tokio thread (bounded by the
    /// tasks: each ends at its next step once the phase is `Stop`).
    pub fn stop(&mut self) {
        self.set_phase(Phase::Stop);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("fleet thread");
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Why one connect attempt failed.
enum ConnectError {
    /// The node answered the upgrade with this HTTP status.
    Status(u16),
    Other(String),
}

async fn connect(addr: SocketAddr, path: &str) -> Result<Ws, ConnectError> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::Other(format!("tcp: {e}")))?;
        let url = format!("ws://{addr}{path}");
        match tokio_tungstenite::client_async_with_config(
            url,
            stream,
            Some(crate::common::small_config()),
        )
        .await
        {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) => {
                Err(ConnectError::Status(resp.status().as_u16()))
            }
            Err(e) => Err(ConnectError::Other(format!("handshake: {e}"))),
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Other("handshake timed out".into())),
    }
}

/// A node other than `current` (any node when there is one).
fn another_node(current: usize, nodes: usize) -> usize {
    if nodes < 2 {
        return 0;
    }
    (current + 1 + rand::random_range(0..nodes - 1)) % nodes
}

async fn run_user(
    user: FleetUser,
    nodes: Arc<Vec<SocketAddr>>,
    mut phase: watch::Receiver<Phase>,
    handshakes: Arc<Semaphore>,
    log: Arc<Mutex<UserLog>>,
    stats: Arc<FleetStats>,
) {
    let mut node = user.first_node % nodes.len();
    loop {
        // Wait while away; end on stop.
        loop {
            match *phase.borrow_and_update() {
                Phase::Stop => return,
                Phase::Connected => break,
                Phase::Away => {}
            }
            if phase.changed().await.is_err() {
                return;
            }
        }
        let since = log.lock().unwrap().pos.clone().unwrap_or_default();
        let path = format!("/ws?token={}&since={since}", user.token);
        let permit = handshakes.acquire().await.expect("semaphore");
        let result = connect(nodes[node], &path).await;
        drop(permit);
        let mut ws = match result {
            Ok(ws) => ws,
            Err(e) => {
                match e {
                    ConnectError::Status(503) => stats.refused_503.fetch_add(1, Ordering::Relaxed),
                    _ => stats.connect_failures.fetch_add(1, Ordering::Relaxed),
                };
                node = (node + 1) % nodes.len();
                tokio::time::sleep(Duration::from_millis(CONNECT_RETRY_MS)).await;
                continue;
            }
        };
        {
            let mut log = log.lock().unwrap();
            log.connects += 1;
            log.online = true;
        }
        let mut pushes_before_resumed = 0u64;
        let mut resumed_seen = false;
        let closed_by_server = loop {
            tokio::select! {
                message = ws.next() => {
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            let mut log = log.lock().unwrap();
                            on_text(&mut log, text.as_str(), &mut pushes_before_resumed, &mut resumed_seen);
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break true,
                        Some(Ok(_)) => {} // pings are answered by the library; binary unused
                    }
                }
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() != Phase::Connected {
                        break false;
                    }
                }
            }
        };
        log.lock().unwrap().online = false;
        drop(ws); // the TCP connection closes: the node sees the user leave
        if closed_by_server {
            stats.server_closes.fetch_add(1, Ordering::Relaxed);
            node = another_node(node, nodes.len());
            let jitter = rand::random_range(0..=RECONNECT_JITTER_MS_MAX);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        } else {
            // Back from away: resume on another node too.
            node = another_node(node, nodes.len());
        }
    }
}

fn on_text(log: &mut UserLog, text: &str, pushes_before: &mut u64, resumed_seen: &mut bool) {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        log.bad(format!("not JSON: {text}"));
        return;
    };
    match frame["type"].as_str() {
        Some("push") => {
            let Some(id) = frame["id"].as_str() else {
                log.bad(format!("push without id: {text}"));
                return;
            };
            match frame["pos"].as_str() {
                Some(pos) => log.pos = Some(pos.to_string()),
                None => log.bad(format!("push without pos: {text}")),
            }
            if !*resumed_seen {
                *pushes_before += 1;
            }
            log.record_push(id, &frame["data"]);
        }
        Some("resumed") => {
            let Some(recovered) = frame["recovered"].as_bool() else {
                log.bad(format!("resumed without recovered: {text}"));
                return;
            };
            if *resumed_seen {
                // A live loss notice (contract: recovered:false, missed:0,
                // on a connection already resumed): pushes routed to the
                // connection's core were lost on the way.
                if recovered {
                    log.bad(format!("a second resumed frame, recovered: {text}"));
                }
                log.loss_notices += 1;
                if let Some(pos) = frame["pos"].as_str() {
                    log.pos = Some(pos.to_string());
                }
                return;
            }
            *resumed_seen = true;
            if let Some(pos) = frame["pos"].as_str() {
                log.pos = Some(pos.to_string());
            } else {
                log.bad(format!("resumed without pos: {text}"));
            }
            let connection = log.connects;
            log.resumes.push(Resumed {
                recovered,
                missed: frame["missed"].as_u64(),
                pushes_before: *pushes_before,
                connection,
            });
        }
        _ => {}
    }
}
