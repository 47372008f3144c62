//! The browser client (src/assets/corecast.js) under Node.js (Debian
//! `nodejs`), with the WebSocket of npm `ws` (pinned, installed under
//! target/node-ws by .ci/test) passed as `{ WebSocket }`, or Node's own
//! where it has one: the backoff between failed attempts has full jitter
//! within [0, min(cap, base * 2^n)); a connection the server closes with
//! 4001 (replaced) or 4002 (disconnected) is not reconnected; a connection
//! that goes silent (a proxy that stops passing bytes, the sockets still
//! open) is noticed by the `{"type":"ping"}` liveness check, dropped and
//! opened again.

mod browser;
mod common;
use browser::Proxy;
use common::{Node, WAIT, wait_for};
use serde_json::Value;
use std::io::{BufRead, BufReader, Lines};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

/// The module, as the node serves it (tests/browser_module.rs checks that).
const MODULE: &str = include_str!("../src/assets/corecast.js");

/// Drives the module; one JSON object per stdout line. Arguments: mode,
/// URL, token, and the folder holding node_modules/ws ("" for Node's own
/// WebSocket).
const SCRIPT: &str = r#"
import { createRequire } from "node:module";
import { Corecast } from "./corecast.mjs";
const [mode, url, token, wsDir] = process.argv.slice(2);
const Base = wsDir ? createRequire(wsDir + "/")("ws") : globalThis.WebSocket;
const attempts = [];
class Counted extends Base {
  constructor(...args) { super(...args); attempts.push(performance.now()); }
}
const say = (o) => console.log(JSON.stringify(o));
setTimeout(() => { say({ timeout: true, attempts: attempts.length }); process.exit(1); }, 30000);
if (mode === "backoff-max" || mode === "backoff-random") {
  if (mode === "backoff-max") Math.random = () => 0.999999;
  const c = new Corecast(url, { token, WebSocket: Counted, backoffBaseMs: BASE, backoffCapMs: CAP });
  c.connect();
  setInterval(() => {
    if (attempts.length < ATTEMPTS) return;
    c.close();
    say({ attempts });
    process.exit(0);
  }, 2);
} else if (mode === "live") {
  const c = new Corecast(url, {
    token, WebSocket: Counted, backoffBaseMs: 50, backoffCapMs: 200,
    pingIntervalMs: LIVE_MS, pongTimeoutMs: LIVE_MS,
  });
  c.on("state", (s, why) => say({ state: s, code: (why && why.code) || null, at: performance.now() }));
  c.connect();
} else {
  const c = new Corecast(url, { token, WebSocket: Counted, backoffBaseMs: 50, backoffCapMs: 200 });
  c.on("state", (s, why) => {
    if (s === "open") say({ open: attempts.length });
    if (s === "closed") {
      say({ closed: why && why.code });
      setTimeout(() => { say({ attempts: attempts.length }); process.exit(0); }, WATCH_MS);
    }
  });
  c.connect();
}
"#;

/// Backoff options of the timing runs.
const BASE_MS: f64 = 100.0;
const CAP_MS: f64 = 800.0;

/// Connection attempts a timing run makes (so 8 waits: 100, 200, 400 and
/// five at the 800 cap).
const ATTEMPTS: usize = 9;

/// Timer lateness and connect time allowed on top of a wait's upper bound
/// (a loaded 2-core machine showed 170 ms; a missing cap would be 800 ms
/// over by the fifth wait). Timers never fire early, so the lower bounds
/// of the pinned run are exact.
const SLACK_MS: f64 = 300.0;

/// How long a closed client is watched for another attempt.
const WATCH_MS: u64 = 2000;

/// pingIntervalMs and pongTimeoutMs of the liveness run.
const LIVE_MS: u64 = 300;

/// The folder with node_modules/ws, "" for Node's own WebSocket, or `None`
/// (skip) when there is neither and CI is unset.
fn websocket_source() -> Option<String> {
    if !common::require_program("node", "nodejs") {
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/node-ws");
    if dir.join("node_modules/ws/package.json").is_file() {
        return Some(dir.display().to_string());
    }
    let global = Command::new("node")
        .args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if global {
        return Some(String::new());
    }
    common::require(
        false,
        "npm ws under target/node-ws (made by .ci/test; this Node has no global WebSocket)",
        "npm",
    )
    .then(String::new)
}

/// A node process running [`SCRIPT`] in `mode`; stopped by PID on drop.
struct Script {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    _dir: TempDir,
}

impl Script {
    fn run(mode: &str, url: &str, token: &str, ws_dir: &str) -> Script {
        let dir = TempDir::new();
        std::fs::write(dir.0.join("corecast.mjs"), MODULE).unwrap();
        let script = SCRIPT
            .replace("BASE", &BASE_MS.to_string())
            .replace("CAP", &CAP_MS.to_string())
            .replace("ATTEMPTS", &ATTEMPTS.to_string())
            .replace("WATCH_MS", &WATCH_MS.to_string())
            .replace("LIVE_MS", &LIVE_MS.to_string());
        std::fs::write(dir.0.join("run.mjs"), script).unwrap();
        let mut child = Command::new("node")
            .arg(dir.0.join("run.mjs"))
            .args([mode, url, token, ws_dir])
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Script {
            child,
            lines,
            _dir: dir,
        }
    }

    /// The next JSON line (the script exits on its own within 30 s).
    fn next(&mut self) -> Value {
        let line = self.lines.next().expect("the script ended early").unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "corecast-node-client-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nothing listens on (every attempt is refused at once).
fn refused_url() -> String {
    let port = common::free_port();
    format!("ws://127.0.0.1:{port}/ws")
}

/// The waits between the attempts of a timing run, in ms.
fn waits(mode: &str, ws_dir: &str) -> Vec<f64> {
    let mut script = Script::run(mode, &refused_url(), "t", ws_dir);
    let report = script.next();
    let times: Vec<f64> = report["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("{report}"))
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    assert!(times.len() >= ATTEMPTS, "{report}");
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The upper bound of the n-th wait (from 0).
fn bound(n: usize) -> f64 {
    CAP_MS.min(BASE_MS * 2f64.powi(n as i32))
}

#[test]
fn backoff_doubles_to_the_cap_with_full_jitter() {
    let Some(ws_dir) = websocket_source() else {
        return;
    };
    // Math.random pinned just below 1: each wait is its upper bound.
    let top = waits("backoff-max", &ws_dir);
    for (n, wait) in top.iter().enumerate() {
        assert!(
            *wait >= bound(n) - 2.0 && *wait <= bound(n) + SLACK_MS,
            "wait {n}: {wait:.0} ms, bound {} ms ({top:.0?})",
            bound(n)
        );
    }
    // The real Math.random: each wait anywhere below its bound, and spread.
    let jittered = waits("backoff-random", &ws_dir);
    for (n, wait) in jittered.iter().enumerate() {
        assert!(
            *wait >= 0.0 && *wait <= bound(n) + SLACK_MS,
            "wait {n}: {wait:.0} ms above its bound {} ms ({jittered:.0?})",
            bound(n)
        );
    }
    let capped: Vec<f64> = jittered[3..].to_vec();
    let spread = capped.iter().cloned().fold(f64::MIN, f64::max)
        - capped.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        spread > 20.0,
        "the waits at the cap are all alike: {capped:.0?}"
    );
    eprintln!("waits at the bound: {top:.0?} ms; jittered: {jittered:.0?} ms");
}

/// Connects a Node client as `uid`, has `close_it` make the node close it,
/// and returns the close code and the attempts made in all.
fn closed_by_the_node(
    node: &Node,
    uid: &str,
    ws_dir: &str,
    close_it: impl FnOnce(),
) -> (Value, Value) {
    let url = format!("ws://{}/ws", node.ws);
    let mut script = Script::run("final", &url, &node.token(uid, None), ws_dir);
    assert_eq!(script.next()["open"], 1);
    wait_for("the Node client to register", WAIT, || {
        node.request("GET", &format!("/v1/users/{uid}")).1["channels"]
            .as_array()
            .is_some_and(|c| c.len() == 1)
    });
    close_it();
    let closed = script.next()["closed"].clone();
    let attempts = script.next()["attempts"].clone();
    (closed, attempts)
}

#[test]
fn no_reconnect_after_4002_or_4001() {
    let Some(ws_dir) = websocket_source() else {
        return;
    };
    let node = Node::start_with(&[("CORECAST_LIMITS_MAX_CHANNELS_PER_USER", "1")]);
    let (closed, attempts) = closed_by_the_node(&node, "node-4002", &ws_dir, || {
        let (status, answer) = node.request("DELETE", "/v1/users/node-4002/connections");
        assert_eq!(status, 202, "{answer}");
    });
    assert_eq!(closed, 4002);
    assert_eq!(
        attempts, 1,
        "attempts in all, {WATCH_MS} ms after the close"
    );

    let mut newer = None;
    let (closed, attempts) = closed_by_the_node(&node, "node-4001", &ws_dir, || {
        newer = Some(node.connect("node-4001")); // the one allowed connection
    });
    assert_eq!(closed, 4001);
    assert_eq!(
        attempts, 1,
        "attempts in all, {WATCH_MS} ms after the close"
    );
    assert!(newer.is_some());
}

#[test]
fn a_silent_connection_is_noticed_by_the_ping_and_reopened() {
    let Some(ws_dir) = websocket_source() else {
        return;
    };
    let node = Node::start();
    let proxy = Proxy::start(node.ws);
    let url = format!("ws://{}/ws", proxy.addr);
    let mut script = Script::run("live", &url, &node.token("sleeper", None), &ws_dir);
    let connecting = script.next();
    assert_eq!(connecting["state"], "connecting", "{connecting}");
    let open = script.next();
    assert_eq!(open["state"], "open", "{open}");
    // Quiet for pingIntervalMs, then a ping nobody answers for pongTimeoutMs.
    proxy.freeze_open();
    let dropped = script.next();
    assert_eq!(dropped["state"], "connecting", "{dropped}");
    assert_eq!(
        dropped["code"], 4000,
        "dropped by the client itself: {dropped}"
    );
    let silent_ms = dropped["at"].as_f64().unwrap() - open["at"].as_f64().unwrap();
    assert!(
        silent_ms < (4 * LIVE_MS) as f64 + SLACK_MS,
        "noticed after {silent_ms:.0} ms (ping after {LIVE_MS} ms of quiet, {LIVE_MS} ms for the pong)"
    );
    let reopened = script.next();
    assert_eq!(reopened["state"], "open", "{reopened}");
    assert_eq!(proxy.attempts(), 2);
    eprintln!("a frozen connection was dropped {silent_ms:.0} ms after it opened");
}
