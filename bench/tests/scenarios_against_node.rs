//! `corecast-bench idle` and `broadcast` against a real corecast node at small n: every
//! connection establishes, no broadcast message is lost or duplicated, and the run leaves
//! summary.json, .hgrm/.hlog files and an SVG plot behind. The options for several client
//! machines, against the same real node: a list of source addresses (several 127.x
//! addresses and a CIDR block, checked against the local address the kernel reports for each
//! connection), server RSS and CPU read from the node's `/metrics`, concurrent runs merged
//! with `corecast-bench merge`, and a broadcast measured by a receive-only run.

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

/// Runs corecast-bench with `args` as is; returns (success, stderr).
fn run_bench(args: &[String]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_corecast-bench"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run corecast-bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The node's endpoints, secrets and a phase timeout, without any server sampling.
fn node_args(node: &Node) -> Vec<String> {
    [
        "--ws",
        &format!("ws://127.0.0.1:{}", node.ws),
        "--http",
        &format!("http://127.0.0.1:{}", node.http),
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--timeout",
        "20",
    ]
    .map(String::from)
    .to_vec()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn read_summary(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
}

fn metrics_url(node: &Node) -> String {
    format!("http://127.0.0.1:{}/metrics", node.http)
}

/// VmRSS of `pid` in KiB, read by the test itself.
fn proc_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Total count of an `.hgrm` file's footer.
fn hgrm_total_count(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("Total count"))
        .expect("hgrm footer");
    line.rsplit('=')
        .next()
        .unwrap()
        .trim_end_matches(']')
        .trim()
        .parse()
        .unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corecast-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
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
        "latency.hlog",
        "handshake.hlog",
        "push_http.hlog",
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

#[test]
fn source_address_list_spreads_connections_and_server_stats_come_from_metrics() {
    let node = start_node();
    let dir = temp_dir("sources");
    let out = dir.join("idle");
    // Two addresses and a /30 (its two host addresses): four sources, 50 connections each.
    let mut a = args(&["idle"]);
    a.extend(node_args(&node));
    a.extend(args(&["--n", "200", "--hold-secs", "1"]));
    a.extend(args(&[
        "--source-addrs",
        "127.0.0.5,127.0.0.6,127.1.0.0/30",
    ]));
    a.extend(["--server-metrics".to_string(), metrics_url(&node)]);
    a.extend(["--out".to_string(), out.display().to_string()]);
    let (ok, stderr) = run_bench(&a);
    assert!(ok, "{stderr}");
    let rss_now = proc_rss_kib(node.child.id());
    let s = read_summary(&out);
    assert_eq!(s["connect"]["ok"], 200, "{s}");
    assert_eq!(s["source_addrs_count"], 4, "{s}");
    let by_source = s["connect"]["by_source"].as_object().unwrap();
    let mut seen: Vec<(&str, u64)> = by_source
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_u64().unwrap()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("127.0.0.5", 50),
            ("127.0.0.6", 50),
            ("127.1.0.1", 50),
            ("127.1.0.2", 50)
        ],
        "{s}"
    );
    // Every server sample came from /metrics (no --server-pid was given), and the node's RSS
    // read there agrees with /proc read by this test (within 50%: the node's metrics are
    // cached for up to a second and RSS moves a little).
    for phase in s["server"].as_array().unwrap() {
        for side in ["before", "after"] {
            let procs = phase[side]["procs"].as_array().unwrap();
            assert_eq!(procs.len(), 1, "{phase}");
            assert_eq!(procs[0]["pid"], 0, "{phase}");
            assert_eq!(procs[0]["metrics"], metrics_url(&node), "{phase}");
            assert!(procs[0]["cpu_us"].as_u64().unwrap() > 0, "{phase}");
        }
    }
    let rss_metrics = s["idle"]["server_rss_after_kib"].as_u64().unwrap();
    assert!(
        rss_metrics * 2 > rss_now && rss_metrics < rss_now * 2,
        "metrics RSS {rss_metrics} KiB, /proc {rss_now} KiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unusable_source_addresses_and_metrics_urls_fail_at_once_by_name() {
    let node = start_node();
    let dir = temp_dir("refused");
    let base = |extra: &[&str]| {
        let mut a = args(&["idle"]);
        a.extend(node_args(&node));
        a.extend(args(&["--n", "10", "--hold-secs", "1", "--out"]));
        a.push(dir.join("x").display().to_string());
        a.extend(args(extra));
        a
    };
    // 192.0.2.0/24 is TEST-NET-1, never assigned to an interface here.
    let started = Instant::now();
    let (ok, stderr) = run_bench(&base(&["--source-addrs", "127.0.0.5,192.0.2.1"]));
    assert!(!ok);
    assert!(
        stderr.contains("cannot bind source address 192.0.2.1"),
        "{stderr}"
    );
    let (ok, stderr) = run_bench(&base(&["--source-addrs", "10.0.0.0/40"]));
    assert!(!ok);
    assert!(stderr.contains("10.0.0.0/40"), "{stderr}");
    let wrong = format!("http://127.0.0.1:{}/nope", node.http);
    let (ok, stderr) = run_bench(&base(&["--server-metrics", &wrong]));
    assert!(!ok);
    assert!(
        stderr.contains(&wrong) && stderr.contains("404"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!dir.join("x/summary.json").exists(), "nothing was run");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn merge_of_two_concurrent_runs_gives_the_sum_of_counts() {
    let node = start_node();
    let dir = temp_dir("merge");
    // Two client runs at once, as two client machines would: own uid ranges, own source
    // addresses; one of them samples the node through /metrics.
    let run = |offset: &str, source: &str, out: &Path, metrics: bool| {
        let mut a = args(&["unicast"]);
        a.extend(node_args(&node));
        a.extend(args(&[
            "--n",
            "150",
            "--rate",
            "300",
            "--duration",
            "2",
            "--concurrency",
            "4",
            "--uid-offset",
            offset,
            "--source-addrs",
            source,
            "--out",
        ]));
        a.push(out.display().to_string());
        if metrics {
            a.extend(["--server-metrics".to_string(), metrics_url(&node)]);
        }
        Command::new(env!("CARGO_BIN_EXE_corecast-bench"))
            .args(&a)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run corecast-bench")
    };
    let (a, b) = (dir.join("a"), dir.join("b"));
    let first = run("0", "127.0.0.8", &a, true);
    let second = run("150", "127.0.0.9", &b, false);
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (sa, sb) = (read_summary(&a), read_summary(&b));
    let merged = dir.join("merged");
    let status = Command::new(env!("CARGO_BIN_EXE_corecast-bench"))
        .arg("merge")
        .arg("--out")
        .arg(&merged)
        .args([&a, &b])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let m = read_summary(&merged);
    let sum = |pointer: &str| {
        sa.pointer(pointer).and_then(|v| v.as_u64()).unwrap()
            + sb.pointer(pointer).and_then(|v| v.as_u64()).unwrap()
    };
    for pointer in [
        "/n",
        "/workers",
        "/connect/ok",
        "/connect/failed",
        "/unicast/scheduled",
        "/unicast/accepted",
        "/delivery/expected",
        "/delivery/unique",
        "/delivery/lost",
        "/delivery/duplicates",
        "/delivery/latency/count",
        "/connect/handshake/count",
        "/unicast/push_http/count",
    ] {
        assert_eq!(
            m.pointer(pointer).and_then(|v| v.as_u64()),
            Some(sum(pointer)),
            "{pointer}: {m}"
        );
    }
    assert_eq!(m["delivery"]["unique"], 1_200, "{m}");
    assert_eq!(m["delivery"]["lost"], 0, "{m}");
    assert_eq!(m["connect"]["by_source"]["127.0.0.8"], 150, "{m}");
    assert_eq!(m["connect"]["by_source"]["127.0.0.9"], 150, "{m}");
    // The merged .hgrm holds every delivery of both runs, and the merged latency bounds those
    // of the runs.
    assert_eq!(
        hgrm_total_count(&merged.join("latency.hgrm")),
        hgrm_total_count(&a.join("latency.hgrm")) + hgrm_total_count(&b.join("latency.hgrm"))
    );
    let max = |s: &serde_json::Value| s["delivery"]["latency"]["max_ms"].as_f64().unwrap();
    assert_eq!(max(&m), max(&sa).max(max(&sb)));
    // Server CPU came from the run that sampled /metrics, divided over both runs' pushes.
    let cpu = m["unicast"]["server_cpu_us_per_push"].as_f64().unwrap();
    let cpu_a = sa["unicast"]["server_cpu_us_per_push"].as_f64().unwrap();
    assert!(
        (cpu * 2.0 - cpu_a).abs() < 1e-6 * cpu_a.max(1.0),
        "{cpu} vs {cpu_a}"
    );
    assert!(sb["unicast"]["server_cpu_us_per_push"].is_null(), "{sb}");
    let hlog = std::fs::read_to_string(merged.join("latency.hlog")).unwrap();
    assert!(hlog.contains("Tag=r0-worker-0,") && hlog.contains("Tag=r1-worker-0,"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_receive_only_run_measures_another_runs_broadcasts() {
    let node = start_node();
    let dir = temp_dir("receive-only");
    let (r, p) = (dir.join("receiver"), dir.join("pusher"));
    let mut a = args(&["broadcast"]);
    a.extend(node_args(&node));
    a.extend(args(&[
        "--n",
        "100",
        "--messages",
        "3",
        "--interval-ms",
        "100",
    ]));
    let mut receiver_args = a.clone();
    receiver_args.extend(args(&[
        "--receive-only",
        "--source-addrs",
        "127.0.0.10",
        "--out",
    ]));
    receiver_args.push(r.display().to_string());
    let mut receiver = Command::new(env!("CARGO_BIN_EXE_corecast-bench"))
        .args(&receiver_args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The pusher starts once the receiver says it is waiting (connected, phase started).
    let stderr = receiver.stderr.take().unwrap();
    let (waiting_tx, waiting_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.starts_with("receive only: waiting") {
                let _ = waiting_tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let waiting = waiting_rx.recv_timeout(READY_TIMEOUT);
    if waiting.is_err() {
        let _ = receiver.kill();
        let _ = receiver.wait();
        panic!("receiver never waited: {}", reader.join().unwrap());
    }
    let mut pusher_args = a;
    pusher_args.extend(args(&["--uid-offset", "100", "--out"]));
    pusher_args.push(p.display().to_string());
    let (ok, stderr) = run_bench(&pusher_args);
    assert!(ok, "{stderr}");
    let status = receiver.wait().unwrap();
    let receiver_log = reader.join().unwrap();
    assert!(status.success(), "{receiver_log}");
    let rs = read_summary(&r);
    assert_eq!(rs["broadcast"]["accepted"], 0, "{rs}");
    assert_eq!(rs["delivery"]["unique"], 300, "{rs}");
    assert_eq!(rs["delivery"]["lost"], 0, "{rs}");
    assert_eq!(rs["delivery"]["duplicates"], 0, "{rs}");
    let merged = dir.join("merged");
    let status = Command::new(env!("CARGO_BIN_EXE_corecast-bench"))
        .arg("merge")
        .arg("--out")
        .arg(&merged)
        .args([&p, &r])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let m = read_summary(&merged);
    assert_eq!(m["broadcast"]["messages"], 3, "{m}");
    assert_eq!(m["broadcast"]["accepted"], 3, "{m}");
    assert_eq!(m["delivery"]["unique"], 600, "{m}");
    assert_eq!(m["delivery"]["lost"], 0, "{m}");
    for msg in m["broadcast"]["per_message"].as_array().unwrap() {
        assert_eq!(msg["deliveries"], 200, "{m}");
        assert!(msg["fanout_ms"].as_f64().is_some(), "{m}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
