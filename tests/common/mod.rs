//! Test harness: a real `corecast` process on loopback ports chosen by the
//! kernel, real WebSocket clients (tungstenite over std sockets) and real
//! HTTP (ureq). Every node is stopped by PID when its handle drops.
#![allow(dead_code, clippy::zombie_processes)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corecast::auth::TokenKeys;
use serde_json::Value;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "test-secret-0123456789";
pub const API_KEY: &str = "test-api-key";
pub const WAIT: Duration = Duration::from_secs(10);

/// The mesh key of the clusters [`cluster`] starts (every mesh connection
/// CURVE-encrypted and admitted by it).
pub const CLUSTER_MESH_KEY: &str = "cluster-test-mesh-key-0123456789abcdef";

/// How long a cluster's mesh subscriptions may take to come up.
pub const PEERS_WAIT: Duration = Duration::from_secs(20);

/// How long a node may take to report ready.
pub const READY_WAIT: Duration = Duration::from_secs(30);

/// How often a bounded wait checks its condition again.
const POLL: Duration = Duration::from_millis(20);

pub struct Node {
    pub child: Child,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    pub node_id: String,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

impl Node {
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// Starts a node with the test secret and key on ports 0, plus `env`.
    pub fn start_with(env: &[(&str, &str)]) -> Node {
        Node::try_start_with(env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Node::start_with`]; `Err` when the node exits (or stays
    /// silent) before it reports ready.
    pub fn try_start_with(env: &[(&str, &str)]) -> Result<Node, String> {
        Node::spawn(env, None, None)
    }

    /// Like [`Node::start_with`], with the node's stderr collected line by
    /// line into the returned [`Stderr`].
    pub fn start_capturing_stderr(env: &[(&str, &str)]) -> (Node, Stderr) {
        let stderr = Stderr::default();
        let node = Node::spawn(env, Some(stderr.clone()), None).unwrap_or_else(|e| panic!("{e}"));
        (node, stderr)
    }

    /// Like [`Node::start_capturing_stderr`], with `prepare` run in the
    /// child before exec (limits, seccomp: async-signal-safe calls only);
    /// `Err` when the node exits before it is ready, its stderr kept.
    pub fn try_start_prepared(
        env: &[(&str, &str)],
        prepare: PreExec,
    ) -> (Result<Node, String>, Stderr) {
        let stderr = Stderr::default();
        (
            Node::spawn(env, Some(stderr.clone()), Some(prepare)),
            stderr,
        )
    }

    fn spawn(
        env: &[(&str, &str)],
        capture: Option<Stderr>,
        prepare: Option<PreExec>,
    ) -> Result<Node, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_corecast"));
        command
            .env("CORECAST_WS_LISTEN", "127.0.0.1:0")
            .env("CORECAST_HTTP_LISTEN", "127.0.0.1:0")
            .env("CORECAST_JWT_SECRET", SECRET)
            .env("CORECAST_API_KEYS", API_KEY)
            .env("CORECAST_CORES", "2")
            .stdout(Stdio::piped())
            .stderr(if capture.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        for (k, v) in env {
            command.env(k, v);
        }
        if let Some(prepare) = prepare {
            use std::os::unix::process::CommandExt;
            // SAFETY: the hook makes async-signal-safe calls only (see
            // `try_start_prepared`).
            unsafe { command.pre_exec(prepare) };
        }
        let mut child = command.spawn().expect("spawn corecast");
        if let Some(capture) = capture {
            capture.collect(child.stderr.take().expect("stderr"));
        }
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                _ => {
                    let status = child.wait().expect("wait");
                    return Err(format!("node exited before it was ready ({status})"));
                }
            };
            if line.starts_with("corecast: ready") {
                let node = Node {
                    ws: field(&line, "ws").unwrap().parse().unwrap(),
                    http: field(&line, "http").unwrap().parse().unwrap(),
                    node_id: field(&line, "node_id").unwrap().to_string(),
                    child,
                };
                // Keep draining stdout so the node never blocks on it.
                std::thread::spawn(move || for _ in lines.by_ref() {});
                return Ok(node);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("node did not become ready in {READY_WAIT:?}"));
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn token(&self, uid: &str, rooms: Option<&[&str]>) -> String {
        TokenKeys::new(SECRET.as_bytes()).mint(
            uid,
            rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
            None,
            Duration::from_secs(600),
        )
    }

    pub fn connect(&self, uid: &str) -> Client {
        self.connect_with_token(&self.token(uid, None))
    }

    pub fn connect_rooms(&self, uid: &str, rooms: &[&str]) -> Client {
        self.connect_with_token(&self.token(uid, Some(rooms)))
    }

    pub fn connect_with_token(&self, token: &str) -> Client {
        self.try_connect(&format!("/ws?token={token}"))
            .unwrap_or_else(|e| panic!("connect failed: {e}"))
    }

    /// Connects on `path`, returning the HTTP status of a refused upgrade.
    pub fn try_connect(&self, path: &str) -> Result<Client, u16> {
        let stream = TcpStream::connect(self.ws).expect("tcp connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let url = format!("ws://{}{path}", self.ws);
        match tungstenite::client::client_with_config(url, stream, Some(small_config())) {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                Err(resp.status().as_u16())
            }
            Err(e) => panic!("handshake error: {e}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// POSTs `body` with `content_type` and the API key; returns status and
    /// the JSON answer.
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let request = ureq::post(&self.url(path))
            .set("Authorization", &format!("Bearer {API_KEY}"))
            .set("Content-Type", content_type);
        answer(request.send_bytes(body))
    }

    pub fn push_json(&self, path: &str, data: Value) -> (u16, Value) {
        let body = serde_json::json!({ "data": data }).to_string();
        self.post(path, "application/json", body.as_bytes())
    }

    pub fn request(&self, method: &str, path: &str) -> (u16, Value) {
        answer(
            ureq::request(method, &self.url(path))
                .set("Authorization", &format!("Bearer {API_KEY}"))
                .call(),
        )
    }

    pub fn metrics(&self) -> String {
        ureq::get(&self.url("/metrics"))
            .call()
            .expect("metrics")
            .into_string()
            .unwrap()
    }

    /// The value of one series in `/metrics` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until the series `series` reads `want`.
    pub fn wait_metric(&self, series: &str, want: f64) {
        wait_for(&format!("{series} == {want}"), WAIT, || {
            self.metric(series) == want
        });
    }

    pub fn connections(&self) -> f64 {
        self.metrics()
            .lines()
            .filter_map(|l| l.strip_prefix("corecast_connections_active{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Waits until `want` mesh subscriptions of this node are up.
    /// Waits until `/readyz` answers 200: a restarted node in a cluster
    /// takes pushes once its peers have subscribed to it.
    pub fn wait_ready(&self) {
        wait_for("/readyz 200", WAIT, || {
            self.request("GET", "/readyz").0 == 200
        });
    }

    pub fn wait_peers_up(&self, want: usize) {
        let mut up = 0;
        wait_for(&format!("{want} mesh peers up"), PEERS_WAIT, || {
            up = self
                .metrics()
                .lines()
                .filter(|l| l.starts_with("corecast_mesh_peer_up{") && l.ends_with(" 1"))
                .count();
            up >= want
        });
    }

    /// Sum of every series whose line starts with `prefix` (e.g.
    /// `corecast_users_active{` for all cores).
    pub fn metric_sum(&self, prefix: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Starts a node meshed on `mesh` (its PUB address) with `peers` (every
    /// node's PUB address, comma-separated) under the cluster key `key`.
    pub fn start_meshed(id: &str, mesh: &str, peers: &str, key: &str) -> Node {
        Node::start_with(&[
            ("CORECAST_NODE_ID", id),
            ("CORECAST_MESH_LISTEN", mesh),
            ("CORECAST_MESH_PEERS", peers),
            ("CORECAST_MESH_KEY", key),
        ])
    }

    /// Connects `uid` on a socket whose receive buffer was set to
    /// `rcvbuf_bytes` before connect (so the window stays small).
    pub fn connect_small_rcvbuf(&self, uid: &str, rcvbuf_bytes: usize) -> Client {
        use nix::sys::socket::{setsockopt, sockopt};
        let stream = connect_prepared(self.ws, |fd| {
            setsockopt(fd, sockopt::RcvBuf, &rcvbuf_bytes).expect("SO_RCVBUF");
        });
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let url = format!("ws://{}/ws?token={}", self.ws, self.token(uid, None));
        let (ws, _) = tungstenite::client::client_with_config(url, stream, Some(small_config()))
            .expect("handshake");
        Client { ws }
    }

    /// Waits (bounded) for the node process to exit; returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut status = None;
        wait_for("the node to exit", within, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        status.expect("exited")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hook run in a node's process between fork and exec.
pub type PreExec = Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>;

/// A node's stderr lines, collected by a thread until the node closes it.
#[derive(Clone, Default)]
pub struct Stderr {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Stderr {
    fn collect(&self, stderr: std::process::ChildStderr) {
        let this = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                this.lines.lock().unwrap().push(line);
            }
            this.ended.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (bounded) for a line that `matches`; returns it.
    pub fn wait_line(
        &self,
        what: &str,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let lines = self.lines();
            if let Some(line) = lines.iter().find(|l| matches(l)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; stderr so far:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits (bounded) until the node has closed its stderr; every line.
    pub fn wait_end(&self, within: Duration) -> Vec<String> {
        wait_for("stderr to close", within, || {
            self.ended.load(std::sync::atomic::Ordering::SeqCst)
        });
        self.lines()
    }
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("http: {e}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A client config with small buffers (tungstenite's defaults are 128 KiB
/// each way per connection).
pub fn small_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    /// The next text message as JSON (pings are answered on the way).
    pub fn recv_json(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read") {
                Message::Text(text) => return serde_json::from_str(&text).expect("json"),
                Message::Binary(b) => return Value::String(format!("binary:{}", b.len())),
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    pub fn recv_message(&mut self) -> Message {
        loop {
            match self.ws.read().expect("read") {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    /// Reads until the server's close frame; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(frame))) => return frame.code.into(),
                Ok(Message::Close(None)) => return 1005,
                Ok(_) => continue,
                Err(e) => panic!("no close frame: {e}"),
            }
        }
    }

    /// Whether nothing arrives within `wait`.
    pub fn silent_for(&mut self, wait: Duration) -> bool {
        self.ws.get_mut().set_read_timeout(Some(wait)).unwrap();
        let result = loop {
            match self.ws.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(_) => break false,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break true;
                }
                Err(e) => panic!("read: {e}"),
            }
        };
        self.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        result
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    pub fn join(&mut self, room: &str) -> Value {
        self.send_text(&serde_json::json!({"type":"join","room":room}).to_string());
        self.recv_json()
    }

    /// Writes raw bytes on the socket under the WebSocket (hand-made frames).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.ws.get_mut().write_all(bytes).expect("raw write");
    }
}

/// A loopback port that was free a moment ago (for a client-side use; a
/// node's own ports are bound at 0 and read back).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Ports for mesh listeners, which every peer must know before it starts
/// (so they cannot be bound at 0): below Linux's ephemeral range
/// (32768-60999), so that no outgoing connection of a concurrent test can
/// take one between the check here and the node's bind.
const PEER_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Attempts at starting a cluster on fresh peer ports, should another
/// listener take a chosen port first.
const CLUSTER_ATTEMPTS: usize = 3;

/// A free port from [`PEER_PORTS`], chosen at random.
pub fn peer_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let span = u64::from(PEER_PORTS.end - PEER_PORTS.start);
    for attempt in 0u64.. {
        let pick = RandomState::new().hash_one(attempt) % span;
        let port = PEER_PORTS.start + pick as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    unreachable!("the loop only ends by returning")
}

/// Starts `n` nodes wired into one mesh (each lists every node, itself
/// included) with [`CLUSTER_MESH_KEY`] and waits until every subscription
/// is up.
pub fn cluster(n: usize) -> Vec<Node> {
    let mut failures = Vec::new();
    for _ in 0..CLUSTER_ATTEMPTS {
        match try_cluster(n) {
            Ok(nodes) => return nodes,
            Err(e) => failures.push(e),
        }
    }
    panic!("no cluster of {n} came up: {failures:?}");
}

fn try_cluster(n: usize) -> Result<Vec<Node>, String> {
    let peers: Vec<String> = (0..n)
        .map(|_| format!("tcp://127.0.0.1:{}", peer_port()))
        .collect();
    let peers_env = peers.join(",");
    let nodes = (0..n)
        .map(|i| {
            let id = format!("node-{}", (b'a' + i as u8) as char);
            Node::try_start_with(&[
                ("CORECAST_NODE_ID", id.as_str()),
                ("CORECAST_MESH_LISTEN", peers[i].as_str()),
                ("CORECAST_MESH_PEERS", peers_env.as_str()),
                ("CORECAST_MESH_KEY", CLUSTER_MESH_KEY),
            ])
        })
        .collect::<Result<Vec<Node>, String>>()?;
    for node in &nodes {
        node.wait_peers_up(n - 1);
    }
    Ok(nodes)
}

/// Waits (bounded by `within`) until `check` holds; panics naming `what`.
pub fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Open file descriptors of process `pid` (entries of /proc/<pid>/fd).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// One masked client frame: `first` is the FIN/RSV/opcode byte as sent.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// A TCP connection to `to` on a socket `prepare` set up before connect
/// (a receive buffer, a source address).
pub fn connect_prepared(to: SocketAddr, prepare: impl FnOnce(&std::os::fd::OwnedFd)) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, socket};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    prepare(&fd);
    let SocketAddr::V4(to) = to else {
        panic!("loopback v4 expected")
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).expect("connect");
    TcpStream::from(fd)
}

/// A TCP connection to `to` from the loopback source address `from` (any
/// port): tests of per-address limits play several clients this way.
pub fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{SockaddrIn, bind};
    connect_prepared(to, |fd| {
        let source = SockaddrIn::from(std::net::SocketAddrV4::new(from, 0));
        bind(std::os::fd::AsRawFd::as_raw_fd(fd), &source).expect("bind source");
    })
}

/// Whether the outside program `program` (from the Debian package `package`)
/// can be run; see [`require`].
pub fn require_program(program: &str, package: &str) -> bool {
    let found = if program.contains('/') {
        std::path::Path::new(program).is_file()
    } else {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        })
    };
    require(found, program, package)
}

/// Whether `/usr/bin/python3` can import `module` (from the Debian package
/// `package`); see [`require`].
pub fn require_python_module(module: &str, package: &str) -> bool {
    let found = Command::new("/usr/bin/python3")
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require(found, &format!("python3 module {module}"), package)
}

/// Runs a node with `env` and no other CORECAST_* secret (dev mode, on
/// ports 0, one core) until it is ready; returns its stdout up to the ready
/// line (the dev banner), and the node.
pub fn start_dev(env: &[(&str, &str)]) -> (String, Node) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_corecast"));
    command
        .env_remove("CORECAST_JWT_SECRET")
        .env_remove("CORECAST_API_KEYS")
        .env("CORECAST_WS_LISTEN", "127.0.0.1:0")
        .env("CORECAST_HTTP_LISTEN", "127.0.0.1:0")
        .env("CORECAST_CORES", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn corecast");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = String::new();
    let ready = loop {
        let line = lines.next().expect("exited before ready").unwrap();
        out.push_str(&line);
        out.push('\n');
        if line.starts_with("corecast: ready") {
            break line;
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let node = Node {
        ws: field(&ready, "ws").unwrap().parse().unwrap(),
        http: field(&ready, "http").unwrap().parse().unwrap(),
        node_id: field(&ready, "node_id").unwrap().to_string(),
        child,
    };
    (out, node)
}

/// The one rule for tests that need an outside program: present, true;
/// absent and `CI` unset, prints which Debian package to install and returns
/// false so the caller skips; absent and `CI` set, panics, so CI can never
/// pass by skipping (`.ci/test` installs every listed package).
pub fn require(found: bool, what: &str, package: &str) -> bool {
    if found {
        return true;
    }
    let hint = format!(
        "{what} not found: install the Debian package {package} \
         (`apt-get install {package}`, or run `.ci/test` as root)"
    );
    assert!(std::env::var_os("CI").is_none(), "CI is set: {hint}");
    eprintln!("SKIPPED: {hint}");
    false
}

/// A keep-alive client of one node's push API (one HTTP connection reused,
/// so the pushes it posts are accepted by one executor: one origin, whose
/// order they keep), with a bounded timeout, transport errors returned.
pub struct Poster {
    agent: ureq::Agent,
    base: String,
}

/// How long one push request through a [`Poster`] may take.
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);

impl Poster {
    pub fn new(http: SocketAddr) -> Poster {
        Poster {
            agent: ureq::AgentBuilder::new().timeout(POST_TIMEOUT).build(),
            base: format!("http://{http}"),
        }
    }

    /// POSTs `{"data": data}` to `path`, with `Idempotency-Key: key` when
    /// given: the status and JSON answer, or why no answer came.
    pub fn push(
        &self,
        path: &str,
        data: &Value,
        key: Option<&str>,
    ) -> Result<(u16, Value), String> {
        let mut request = self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {API_KEY}"))
            .set("Content-Type", "application/json");
        if let Some(key) = key {
            request = request.set("Idempotency-Key", key);
        }
        let body = serde_json::json!({ "data": data }).to_string();
        let response = match request.send_string(&body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e.to_string()),
        };
        let status = response.status();
        let text = response.into_string().map_err(|e| e.to_string())?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Posts and requires a 202; the push's id.
    pub fn push_ok(&self, path: &str, data: Value) -> String {
        match self.push(path, &data, None) {
            Ok((202, body)) => body["id"].as_str().expect("202 with an id").to_string(),
            other => panic!("push {path} {data}: {other:?}"),
        }
    }
}

/// `/ws?token=...&since=<since>` for `uid`, plus `extra` (e.g.
/// `&rooms=a,b`).
pub fn resume_path(
    node: &Node,
    uid: &str,
    rooms: Option<&[&str]>,
    since: &str,
    extra: &str,
) -> String {
    format!("/ws?token={}&since={since}{extra}", node.token(uid, rooms))
}

/// Every push frame up to the first `resumed` frame and that frame, read
/// within `within` (bounded in frames too); `Err` names what came instead.
/// A binary push (a `{"type":"binary",...}` text frame, then the raw bytes)
/// is one entry: the text frame with the bytes under `"bytes"`.
pub fn read_until_resumed(
    client: &mut Client,
    within: Duration,
) -> Result<(Vec<Value>, Value), String> {
    const FRAMES_MAX: usize = 100_000;
    let deadline = Instant::now() + within;
    let mut pushes = Vec::new();
    for _ in 0..FRAMES_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        client.ws.get_mut().set_read_timeout(Some(left)).unwrap();
        let message = client.ws.read();
        client.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        match message {
            Ok(Message::Text(text)) => {
                let frame: Value =
                    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
                match frame["type"].as_str() {
                    Some("resumed") => return Ok((pushes, frame)),
                    Some("push") => pushes.push(frame),
                    Some("binary") => {
                        // The raw bytes follow at once in a binary frame:
                        // kept on the text frame as "bytes" (an array).
                        let mut frame = frame;
                        match client.recv_message() {
                            Message::Binary(bytes) => {
                                frame["bytes"] = Value::from(bytes.to_vec());
                            }
                            other => {
                                return Err(format!("{frame} not followed by bytes: {other:?}"));
                            }
                        }
                        pushes.push(frame);
                    }
                    _ => return Err(format!("unexpected frame before resumed: {frame}")),
                }
            }
            Ok(Message::Binary(bytes)) => {
                return Err(format!(
                    "a binary frame ({} bytes) without its text frame before resumed",
                    bytes.len()
                ));
            }
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
            Ok(Message::Close(frame)) => return Err(format!("closed before resumed: {frame:?}")),
            Err(e) => {
                return Err(format!(
                    "no resumed frame ({e}) after {} push frames: {pushes:?}",
                    pushes.len()
                ));
            }
        }
    }
    Err(format!(
        "no resumed frame within {within:?}; {} push frames before: {pushes:?}",
        pushes.len()
    ))
}

/// Waits until `uid` has no connection on `node` (its presence is empty).
pub fn wait_offline(node: &Node, uid: &str) {
    wait_for(&format!("{uid} offline on {}", node.node_id), WAIT, || {
        let (status, body) = node.request("GET", &format!("/v1/users/{uid}"));
        status == 200 && body["channels"].as_array().is_some_and(Vec::is_empty)
    });
}

/// Mesh envelopes this node has received.
pub fn mesh_in(node: &Node) -> f64 {
    node.metric("corecast_mesh_envelopes_total{direction=\"in\"}")
}

/// Waits until `node` has received at least `want` mesh envelopes in all,
/// then a moment more for them to reach its cores.
pub fn wait_mesh_in(node: &Node, want: f64) {
    wait_for(
        &format!("{want} mesh envelopes in on {}", node.node_id),
        WAIT,
        || mesh_in(node) >= want,
    );
    std::thread::sleep(Duration::from_millis(200));
}

/// `corecast_resumes_total` for `outcome` ("recovered" or "not_recovered"),
/// summed over any other labels.
pub fn resumes(node: &Node, outcome: &str) -> f64 {
    let label = format!("outcome=\"{outcome}\"");
    node.metrics()
        .lines()
        .filter(|l| l.starts_with("corecast_resumes_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
