//! Harness of the browser tests: headless Chromium (Debian `chromium`)
//! driven over the DevTools protocol (a tungstenite client on the port
//! Chromium writes to `DevToolsActivePort`), a one-page HTTP server for the
//! test page, and a TCP proxy in front of a node that the test can cut and
//! close. Every process and thread here ends when its handle drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// How long Chromium may take to open its DevTools port.
const LAUNCH_WAIT: Duration = Duration::from_secs(30);

/// How long one DevTools command may take to be answered.
const COMMAND_WAIT: Duration = Duration::from_secs(30);

/// How often [`Browser::wait_true`] evaluates its condition again.
const POLL: Duration = Duration::from_millis(50);

/// Headless Chromium with a profile of its own, stopped by PID on drop.
pub struct Browser {
    child: Child,
    devtools: WebSocket<TcpStream>,
    next_id: u64,
    profile: PathBuf,
}

/// One page, attached with a DevTools session of its own.
pub struct Tab {
    session: String,
}

/// Starts Chromium, or `None` (the test skips) when it is not installed and
/// `CI` is unset (see `common::require`).
pub fn launch() -> Option<Browser> {
    if !crate::common::require_program("chromium", "chromium") {
        return None;
    }
    Some(Browser::launch())
}

impl Browser {
    fn launch() -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "corecast-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("profile dir");
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox", // the tests may run as root
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                // Background pages keep their timers running at full speed.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--window-size=1000,800",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromium");
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + LAUNCH_WAIT;
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.to_string(), path.to_string());
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort within {LAUNCH_WAIT:?}"
            );
            std::thread::sleep(POLL);
        };
        let stream = TcpStream::connect(format!("127.0.0.1:{port}")).expect("devtools port");
        stream.set_read_timeout(Some(COMMAND_WAIT)).unwrap();
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (devtools, _) = tungstenite::client(url, stream).expect("devtools websocket");
        Browser {
            child,
            devtools,
            next_id: 1,
            profile,
        }
    }

    /// Sends one DevTools command (to a page when `session`) and returns
    /// its result; the events in between are skipped.
    fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.devtools
            .send(Message::text(message.to_string()))
            .expect("send to devtools");
        let deadline = Instant::now() + COMMAND_WAIT;
        while Instant::now() < deadline {
            let text = match self.devtools.read().expect("read from devtools") {
                Message::Text(text) => text,
                _ => continue,
            };
            let answer: Value = serde_json::from_str(text.as_str()).expect("devtools JSON");
            if answer["id"] != json!(id) {
                continue;
            }
            assert!(
                answer.get("error").is_none(),
                "{method} failed: {}",
                answer["error"]
            );
            return answer["result"].clone();
        }
        panic!("{method}: no answer within {COMMAND_WAIT:?}");
    }

    /// Opens `url` in a new tab.
    pub fn open(&mut self, url: &str) -> Tab {
        let target = self.command(None, "Target.createTarget", json!({ "url": url }));
        let attached = self.command(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        Tab {
            session: attached["sessionId"]
                .as_str()
                .expect("a session id")
                .to_string(),
        }
    }

    /// Evaluates `expression` in `tab` (awaiting a promise) and returns its
    /// value as JSON; a thrown exception fails the test.
    pub fn eval(&mut self, tab: &Tab, expression: &str) -> Value {
        let result = self.command(
            Some(&tab.session),
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}\nthrew: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in `tab`, at most `within`.
    pub fn wait_true(&mut self, tab: &Tab, what: &str, within: Duration, expression: &str) {
        self.wait_true_showing(tab, what, within, expression, "null");
    }

    /// Like [`Browser::wait_true`]; on a timeout the failure shows the
    /// value of `show` (what the page saw).
    pub fn wait_true_showing(
        &mut self,
        tab: &Tab,
        what: &str,
        within: Duration,
        expression: &str,
        show: &str,
    ) {
        let deadline = Instant::now() + within;
        loop {
            if self.eval(tab, expression) == json!(true) {
                return;
            }
            if Instant::now() >= deadline {
                let seen = self.eval(tab, show);
                panic!("{what}: `{expression}` not true within {within:?}; {show}: {seen}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Saves a PNG of `tab` at `path` (its folder made as needed).
    pub fn screenshot(&mut self, tab: &Tab, path: &Path) {
        use base64::Engine;
        let shot = self.command(
            Some(&tab.session),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("artifact dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

static PROFILES: AtomicUsize = AtomicUsize::new(0);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Where the tests put what a person may look at (screenshots).
pub fn artifact_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts")
}

/// A test page that imports the module from `node_ws` and offers
/// `track(client)`: the client's states (with close codes), pushes
/// (`data`; a binary one as `"bin:1,2,3"`), their ids and `resumed` events,
/// as arrays the test reads.
pub fn test_page(node_ws: SocketAddr) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>corecast test page</title>
<script type="module">
import {{ Corecast }} from "http://{node_ws}/corecast.js";
window.Corecast = Corecast;
window.track = (client) => {{
  const t = {{ states: [], pushes: [], ids: [], resumed: [] }};
  client.on("state", (s, why) => t.states.push({{ s, code: (why && why.code) || null }}));
  const show = (data) => data instanceof ArrayBuffer ? "bin:" + new Uint8Array(data).join(",") : data;
  client.on("push", (m) => {{ t.pushes.push(show(m.data)); t.ids.push(m.id); }});
  client.on("resumed", (r) => t.resumed.push(r));
  t.state = () => client.state;
  return t;
}};
window.ready = true;
</script>"#
    )
}

/// Serves one HTML page on loopback for every `GET`, until dropped.
pub struct PageServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    pub fn start(html: String) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind page server");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                // Read the head (a GET has no body), then answer and close.
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                );
            }
        });
        PageServer { addr, stop }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept
    }
}

/// A TCP proxy on loopback in front of `upstream` that the test controls:
/// it can drop every connection, refuse (accept and close at once) new
/// ones, and freeze the open ones (their bytes dropped both ways, the
/// sockets left open: a half-open path, as after a laptop sleep); it counts
/// every connection attempt it sees.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<ProxyShared>,
}

#[derive(Default)]
struct ProxyShared {
    refusing: AtomicBool,
    stop: AtomicBool,
    /// Connections accepted, refused ones included.
    attempts: AtomicUsize,
    /// Both sockets of every relayed connection.
    live: Mutex<Vec<TcpStream>>,
    /// The freeze switch of every relayed connection.
    frozen: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared::default());
        let state = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if state.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                state.attempts.fetch_add(1, Ordering::SeqCst);
                if state.refusing.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut live = state.live.lock().unwrap();
                live.push(client.try_clone().expect("clone"));
                live.push(server.try_clone().expect("clone"));
                drop(live);
                let frozen = Arc::new(AtomicBool::new(false));
                state.frozen.lock().unwrap().push(frozen.clone());
                relay(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                    frozen.clone(),
                );
                relay(server, client, frozen);
            }
        });
        Proxy { addr, shared }
    }

    /// Cuts every relayed connection (both sides see a FIN).
    pub fn drop_all(&self) {
        for stream in self.shared.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// While on, every new connection is accepted and closed at once.
    pub fn refuse(&self, on: bool) {
        self.shared.refusing.store(on, Ordering::SeqCst);
    }

    /// From now on, the connections open now pass nothing (new ones do).
    pub fn freeze_open(&self) {
        for frozen in self.shared.frozen.lock().unwrap().drain(..) {
            frozen.store(true, Ordering::SeqCst);
        }
    }

    /// Connection attempts seen so far (refused ones included).
    pub fn attempts(&self) -> usize {
        self.shared.attempts.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.drop_all();
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` on a thread of its own until either side ends
/// (dropping the bytes while `frozen`), then shuts both down.
fn relay(mut from: TcpStream, mut to: TcpStream, frozen: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if !frozen.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
