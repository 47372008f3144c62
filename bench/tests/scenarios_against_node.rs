//! `corecast-bench idle` and `broadcast` against a real corecast node at small n: every
//! connection establishes, no broadcast message is lost or duplicated, and the run leaves
//! summary.json, .hgrm files and an SVG plot behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONNECTIONS: u64 = 200;
const MESSAGES: u64 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const SECRET: &str = "bench-test-secret";
const API_KEY: &str = "bench-test-key";

/// The node binary: $CORECAST_NODE_BIN, else the newest of ../target/{debug,release}/corecast,
/// else built with `cargo build -p corecast`.
fn node_binary() -> PathBuf {
    if let Ok(path) = std::env::var("CORECAST_NODE_BIN") {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates =
        ["target/debug/corecast", "target/release/corecast"].map(|p| workspace.join(p));
    let newest = candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p.clone())))
        .max();
    if let Some((_, path)) = newest {
        return path;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "corecast"])
        .current_dir(&workspace)
        .status()
        .expect("run cargo build -p corecast");
    assert!(status.success(), "cargo build -p corecast failed");
    candidates[0].clone()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node process, killed on drop.
struct Node {
    child: Child,
    ws: u16,
    http: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn start_node() -> Node {
    let (ws, http) = (free_port(), free_port());
    let child = Command::new(node_binary())
        .env("CORECAST_WS_LISTEN", format!("127.0.0.1:{ws}"))
        .env("CORECAST_HTTP_LISTEN", format!("127.0.0.1:{http}"))
        .env("CORECAST_JWT_SECRET", SECRET)
        .env("CORECAST_API_KEYS", API_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start corecast node");
    let mut node = Node { child, ws, http };
    let start = Instant::now();
    while !ready(http) {
        assert!(
            node.child.try_wait().unwrap().is_none(),
            "node exited before /readyz"
        );
        assert!(start.elapsed() < READY_TIMEOUT, "node not ready in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    node
}

fn bench(node: &Node, args: &[&str], out: &Path) -> serde_json::Value {
    let ws = format!("ws://127.0.0.1:{}", node.ws);
    let http = format!("http://127.0.0.1:{}", node.http);
    let pid = node.child.id().to_string();
    let n = CONNECTIONS.to_string();
    let status = Command::new(env!("CARGO_BIN_EXE_corecast-bench"))
        .args(args)
        .args([
            "--ws",
            &ws,
            "--http",
            &http,
            "--server-pid",
            &pid,
            "--n",
            &n,
            "--timeout",
            "20",
        ])
        .args(["--jwt-secret", SECRET, "--api-key", API_KEY])
        .arg("--out")
        .arg(out)
        .status()
        .expect("run corecast-bench");
    assert!(status.success(), "corecast-bench {args:?} failed");
    for file in [
        "summary.json",
        "latency.hgrm",
        "handshake.hgrm",
        "latency.svg",
    ] {
        assert!(out.join(file).is_file(), "{file} not written");
    }
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn idle_and_broadcast_lose_nothing() {
    let node = start_node();
    let dir = std::env::temp_dir().join(format!("corecast-bench-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let idle = bench(&node, &["idle", "--hold-secs", "1"], &dir.join("idle"));
    assert_eq!(idle["connect"]["ok"], CONNECTIONS, "{idle}");
    assert_eq!(idle["idle"]["open_at_end"], CONNECTIONS, "{idle}");
    assert!(idle["idle"]["server_rss_after_kib"].as_u64().unwrap() > 0);

    let b = bench(
        &node,
        &[
            "broadcast",
            "--messages",
            &MESSAGES.to_string(),
            "--interval-ms",
            "100",
        ],
        &dir.join("b"),
    );
    assert_eq!(b["broadcast"]["accepted"], MESSAGES, "{b}");
    assert_eq!(b["delivery"]["unique"], CONNECTIONS * MESSAGES, "{b}");
    assert_eq!(b["delivery"]["lost"], 0, "{b}");
    assert_eq!(b["delivery"]["duplicates"], 0, "{b}");
    let svg = std::fs::read_to_string(dir.join("b/latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    let hgrm = std::fs::read_to_string(dir.join("b/latency.hgrm")).unwrap();
    assert!(hgrm.contains("Value     Percentile TotalCount 1/(1-Percentile)"));
    let _ = std::fs::remove_dir_all(&dir);
}
