//! The installed node, live: /healthz, traffic, and a real Prometheus
//! scraping every metric the dashboard and the rules use.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::*;
use crate::metric_names::*;
use crate::support::*;

#[test]
fn installed_node_answers_healthz() {
    let d = deployment();
    let _lock = live_lock();
    let mut node = start_node(d, "node-a");
    wait_healthz(&mut node, d.http("node-a"));
    // Ready once its peers subscribed, or after the mesh's start-up grace
    // (node-b is not running here).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (mut status, mut body) = get(d.http("node-a"), "/readyz").unwrap();
    while status != 200 && std::time::Instant::now() < deadline {
        assert_eq!(body.trim(), "starting", "/readyz: {body}");
        std::thread::sleep(std::time::Duration::from_millis(200));
        (status, body) = get(d.http("node-a"), "/readyz").unwrap();
    }
    assert_eq!(status, 200, "/readyz: {body}");
}

/// Mints a client token with the secret of node-a's rendered configuration.
fn token(d: &Deployment, uid: &str, rooms: &str) -> String {
    let mut cmd = Command::new(d.binary("node-a"));
    cmd.arg("token")
        .arg("--config")
        .arg(d.config("node-a"))
        .args(["--uid", uid, "--rooms", rooms, "--ttl", "1h"]);
    for (key, _) in std::env::vars() {
        if key.starts_with("CORECAST_") {
            cmd.env_remove(key);
        }
    }
    let out = run_ok(&mut cmd);
    let t = text(&out.stdout).trim().to_string();
    assert_eq!(t.split('.').count(), 3, "not a JWT: {t:?}");
    t
}

type Client = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn ws_connect(addr: SocketAddr, token: &str) -> Client {
    let (client, response) = tungstenite::connect(format!("ws://{addr}/ws?token={token}"))
        .unwrap_or_else(|e| panic!("websocket to {addr}: {e}"));
    assert_eq!(response.status(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = client.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    client
}

/// Reads frames until a push arrives; returns its JSON.
fn next_push(client: &mut Client) -> Value {
    loop {
        match client.read().expect("read a push") {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Binary(b) => return json!({ "binary": b.len() }),
            _ => continue,
        }
    }
}

fn push(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, String) {
    let auth = format!("Bearer {API_KEY}");
    http_request(
        addr,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .unwrap_or_else(|e| panic!("POST {path} to {addr}: {e}"))
}

/// Makes every metric family of the contract move: handshakes (ok and
/// unauthorized), pushes of each kind accepted on node-a and delivered on
/// both nodes (so they cross the mesh), a push refused by a limit, client
/// disconnects.
fn drive_traffic(d: &Deployment) {
    let t = token(d, "alice", "lobby");
    let mut on_a = ws_connect(d.ws("node-a"), &t);
    let mut on_b = ws_connect(d.ws("node-b"), &t);
    // Subscriptions travel asynchronously: wait until each node's
    // subscription to the other is up before pushing across.
    for host in NODES {
        wait_for(
            &format!("{host}'s mesh peer up"),
            Duration::from_secs(20),
            || {
                let (_, text) = get(d.http(host), "/metrics").map_err(|e| e.to_string())?;
                text.lines()
                    .any(|l| l.starts_with("corecast_mesh_peer_up{") && l.ends_with(" 1"))
                    .then_some(())
                    .ok_or_else(|| "no mesh peer up yet".to_string())
            },
        );
    }

    let a = d.http("node-a");
    for (path, body) in [
        ("/v1/push/user/alice", json!({"data": "to alice"})),
        (
            "/v1/push/users",
            json!({"uids": ["alice", "bob"], "data": "to users"}),
        ),
        ("/v1/push/room/lobby", json!({"data": "to the lobby"})),
        ("/v1/push/broadcast", json!({"data": "to everyone"})),
    ] {
        let (status, answer) = push(a, path, body.to_string().as_bytes());
        assert_eq!(status, 202, "POST {path}: {answer}");
        for client in [&mut on_a, &mut on_b] {
            let got = next_push(client);
            assert_eq!(got["data"], body["data"], "{path}: {got}");
        }
    }

    // Limits and refusals.
    let too_big = format!("{{\"data\":\"{}\"}}", "x".repeat(70 * 1024));
    let (status, answer) = push(a, "/v1/push/broadcast", too_big.as_bytes());
    assert_eq!(status, 413, "oversized push: {answer}");
    let refused = tungstenite::connect(format!("ws://{}/ws?token=not-a-jwt", d.ws("node-a")));
    assert!(refused.is_err(), "a bad token was accepted");

    for mut client in [on_a, on_b] {
        let _ = client.close(None);
        let _ = client.flush();
        while client.read().is_ok() {}
    }
}

struct Prometheus {
    addr: SocketAddr,
}

impl Prometheus {
    fn query(&self, promql: &str) -> Result<Value, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = get(self.addr, &path).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(v["data"]["result"].clone())
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_every_dashboard_and_rule_metric() {
    let d = deployment();
    let _lock = live_lock();

    let mut nodes: Vec<Running> = NODES.iter().map(|h| start_node(d, h)).collect();
    for (node, host) in nodes.iter_mut().zip(NODES) {
        wait_healthz(node, d.http(host));
    }

    // The Prometheus of the Debian package, with the configuration and rules
    // the monitoring role rendered.
    let prom_port = free_ports(1)[0];
    let storage = scratch_sub("prometheus-data");
    let mut prometheus = Running::spawn(
        "prometheus",
        Command::new("prometheus")
            .arg(format!("--config.file={}", d.prometheus_config().display()))
            .arg(format!("--storage.tsdb.path={}", storage.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg("--log.level=warn"),
        &d.dir,
    );
    let prom = Prometheus {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, prom_port)),
    };
    wait_for("prometheus /-/ready", Duration::from_secs(30), || {
        prometheus.assert_alive();
        match get(prom.addr, "/-/ready") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // Both nodes scraped successfully, under their node ids.
    wait_for("both targets up", Duration::from_secs(30), || {
        let up = prom.query("up{job=\"corecast\"} == 1")?;
        let instances: BTreeSet<String> = up
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["metric"]["instance"].as_str().unwrap_or("").to_string())
            .collect();
        if instances == NODES.iter().map(|s| s.to_string()).collect() {
            Ok(())
        } else {
            Err(format!(
                "up: {up}; node logs:\n{}\n{}",
                nodes[0].log(),
                nodes[1].log()
            ))
        }
    });

    drive_traffic(d);

    // Every name the dashboard and the rules use returns data.
    let mut wanted: BTreeSet<String> = dashboard_metrics();
    wanted.extend(rule_metrics());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut missing: BTreeSet<String> = wanted.clone();
    while !missing.is_empty() && Instant::now() < deadline {
        missing.retain(|name| {
            !prom
                .query(name)
                .is_ok_and(|r| r.as_array().is_some_and(|a| !a.is_empty()))
        });
        if !missing.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    for node in &mut nodes {
        node.assert_alive();
    }
    assert!(
        missing.is_empty(),
        "no data in Prometheus for {missing:?} (of {} names used by the dashboard and rules)",
        wanted.len()
    );

    // The mesh links are up both ways.
    let peers = prom.query("corecast_mesh_peer_up == 1").unwrap();
    assert!(
        peers.as_array().unwrap().len() >= 2,
        "mesh peers up: {peers}"
    );

    // Every dashboard query is valid PromQL.
    for expr in dashboard_exprs() {
        prom.query(&expr)
            .unwrap_or_else(|e| panic!("dashboard query {expr:?}: {e}"));
    }

    // Every alert rule evaluates without error.
    wait_for("alert rules evaluated", Duration::from_secs(20), || {
        let (_, body) = get(prom.addr, "/api/v1/rules").map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let rules: Vec<&Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        if rules.is_empty() {
            return Err(format!("no rules loaded: {body}"));
        }
        match rules.iter().find(|r| r["health"] != "ok") {
            None => Ok(()),
            Some(r) => Err(format!(
                "{} health {}: {}",
                r["name"], r["health"], r["lastError"]
            )),
        }
    });
    prometheus.assert_alive();
}
