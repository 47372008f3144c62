//! HTTP slot exhaustion on the push API port (issue 10 item 5), done as an
//! attacker would against a real node: keep-alive clients that poll
//! `/healthz` under the idle timeout, a head trickled byte by byte, one
//! address opening connection after connection; and the other side of the
//! rule, a slow upload that must not be cut mid-request.
//!
//! Before the fix (main at 11dadd5) the pollers kept every slot forever,
//! and the slow upload was reset 1 s (the idle timeout) after it started.

mod common;
use common::{API_KEY, Node, connect_from, rss_kib};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One HTTP/1.1 response: status, lower-cased head, body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn closes(&self) -> bool {
        self.head.contains("\r\nconnection: close")
    }
}

/// Reads one response (Content-Length framed). `None`: the connection
/// ended (EOF, reset or read timeout) before a whole response.
fn read_answer(stream: &mut TcpStream) -> Option<Answer> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some(Answer { status, head, body })
}

fn get(stream: &mut TcpStream, path: &str) -> Option<Answer> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    read_answer(stream)
}

/// Whether the peer closed (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const GOOD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

#[test]
fn keepalive_pollers_cannot_pin_the_slots() {
    // One core with 4 slots; connections retire at 2 s of age.
    let node = Node::start_with(&[
        ("CORECAST_CORES", "1"),
        ("CORECAST_HTTP_CONNECTIONS_PER_CORE_MAX", "4"),
        ("CORECAST_HTTP_CONNECTION_AGE_MAX_MS", "2000"),
    ]);
    let rss_before = rss_kib(node.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    // Four pollers, each `GET /healthz` every 300 ms on a keep-alive
    // connection (far under the 60 s idle timeout), reconnecting at once
    // whenever the node closes theirs.
    let pollers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served, http) = (stop.clone(), served.clone(), node.http);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut conn = connect_from(ATTACKER, http);
                    while !stop.load(Ordering::Relaxed) {
                        let Some(answer) = get(&mut conn, "/healthz") else {
                            break;
                        };
                        served.fetch_add(1, Ordering::Relaxed);
                        if answer.closes() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(300));
                    }
                }
            })
        })
        .collect();
    common::wait_for(
        "the pollers to hold every slot",
        Duration::from_secs(5),
        || served.load(Ordering::Relaxed) >= 8,
    );
    // A well-behaved caller queues behind them and must be served when the
    // first poller's connection retires (2 s of age), not never.
    let started = Instant::now();
    let mut good = connect_from(GOOD, node.http);
    let answer = get(&mut good, "/healthz").expect("served while the pollers keep polling");
    let waited = started.elapsed();
    assert_eq!(answer.status, 200);
    assert!(waited < Duration::from_secs(4), "served after {waited:?}");
    let mut client = node.connect("victim");
    let body = br#"{"data":"through"}"#;
    let push = format!(
        "POST /v1/push/user/victim HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    good.write_all(push.as_bytes()).unwrap();
    good.write_all(body).unwrap();
    let pushed = match read_answer(&mut good) {
        Some(answer) => answer,
        None => {
            // Its connection may itself have retired: a fresh one gets in.
            let mut again = connect_from(GOOD, node.http);
            again.write_all(push.as_bytes()).unwrap();
            again.write_all(body).unwrap();
            read_answer(&mut again).expect("push answered")
        }
    };
    assert_eq!(
        pushed.status,
        202,
        "{}",
        String::from_utf8_lossy(&pushed.body)
    );
    assert_eq!(client.recv_json()["data"], "through");
    stop.store(true, Ordering::Relaxed);
    for poller in pollers {
        poller.join().unwrap();
    }
    eprintln!(
        "keepalive pollers: good caller served after {waited:?}; RSS {rss_before} KiB -> {} KiB",
        rss_kib(node.pid())
    );
}

#[test]
fn a_slow_upload_is_not_cut_mid_request() {
    let node = Node::start_with(&[("CORECAST_HTTP_IDLE_TIMEOUT_MS", "1000")]);
    let mut client = node.connect("patient");
    let body = br#"{"data":"slow"}"#;
    let mut conn = connect_from(GOOD, node.http);
    let head = format!(
        "POST /v1/push/user/patient HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    // One byte every 250 ms: 3.75 s in flight, nearly 4x the idle timeout,
    // but never silent for as long as it.
    let started = Instant::now();
    for byte in body {
        std::thread::sleep(Duration::from_millis(250));
        conn.write_all(&[*byte]).unwrap();
    }
    let answer = read_answer(&mut conn).expect("answered, not reset");
    assert!(started.elapsed() > Duration::from_millis(3500));
    assert_eq!(
        answer.status,
        202,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(client.recv_json()["data"], "slow");
    // A body that stops arriving is answered 408 (after the idle timeout),
    // not left to hold the connection.
    let mut stalled = connect_from(GOOD, node.http);
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(&body[..3]).unwrap();
    let started = Instant::now();
    let answer = read_answer(&mut stalled).expect("408 answer");
    assert_eq!(answer.status, 408);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn header_timeout_is_separate_from_keepalive_idle() {
    let node = Node::start_with(&[("CORECAST_HTTP_HEADER_TIMEOUT_MS", "1000")]);
    // A head trickled one header line every 200 ms (each byte resets any
    // idle clock) is cut once it has taken 1 s.
    let mut loris = connect_from(ATTACKER, node.http);
    loris.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    let mut cut = false;
    for i in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        if loris.write_all(format!("X-{i}: y\r\n").as_bytes()).is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut loris, Duration::from_millis(1)) {
            cut = true;
            break;
        }
    }
    let waited = started.elapsed();
    assert!(cut, "a trickled head was never cut");
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "cut after {waited:?}"
    );
    // A keep-alive connection idle for longer than the header timeout (but
    // under the 60 s idle timeout) serves its next request.
    let mut kept = connect_from(GOOD, node.http);
    assert_eq!(get(&mut kept, "/healthz").unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(get(&mut kept, "/healthz").unwrap().status, 200);
    assert!(node.metric("corecast_limit_refusals_total{limit=\"http_header_timeout\"}") >= 1.0);
}

#[test]
fn requests_per_connection_are_capped() {
    let node = Node::start_with(&[("CORECAST_HTTP_REQUESTS_PER_CONNECTION_MAX", "3")]);
    let mut conn = connect_from(GOOD, node.http);
    for _ in 0..2 {
        let answer = get(&mut conn, "/healthz").unwrap();
        assert_eq!(answer.status, 200);
        assert!(!answer.closes());
    }
    let last = get(&mut conn, "/healthz").unwrap();
    assert_eq!(last.status, 200);
    assert!(last.closes(), "third answer says close: {}", last.head);
    assert!(closed_within(&mut conn, Duration::from_secs(2)));
}

#[test]
fn one_address_cannot_take_every_slot() {
    let node = Node::start_with(&[
        ("CORECAST_CORES", "1"),
        ("CORECAST_HTTP_CONNECTIONS_PER_CORE_MAX", "16"),
        ("CORECAST_HTTP_CONNECTIONS_PER_ADDRESS_PER_CORE_MAX", "4"),
    ]);
    let rss_before = rss_kib(node.pid());
    // The attacker's address opens silent connections: the first 4 hold a
    // slot (until the header timeout), every later one is answered 503 with
    // Retry-After at once.
    let held: Vec<TcpStream> = (0..4).map(|_| connect_from(ATTACKER, node.http)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut refused = 0;
    let started = Instant::now();
    for _ in 0..50 {
        let mut extra = connect_from(ATTACKER, node.http);
        let answer = read_answer(&mut extra).expect("an answer, not a hang");
        assert_eq!(answer.status, 503);
        assert!(
            answer.head.contains("\r\nretry-after: 1\r\n"),
            "{}",
            answer.head
        );
        refused += 1;
    }
    let refusing = started.elapsed();
    assert!(
        refusing < Duration::from_secs(5),
        "50 refusals took {refusing:?}"
    );
    // Another address is served and its pushes are delivered meanwhile.
    let mut client = node.connect("other");
    let (status, _) = node.push_json("/v1/push/user/other", serde_json::json!("ok"));
    assert_eq!(status, 202);
    assert_eq!(client.recv_json()["data"], "ok");
    assert_eq!(
        node.metric("corecast_limit_refusals_total{limit=\"http_connections_per_address\"}"),
        f64::from(refused)
    );
    // The held connections still count: closing them frees the address.
    drop(held);
    common::wait_for(
        "the address's slots to free",
        Duration::from_secs(5),
        || {
            let mut again = connect_from(ATTACKER, node.http);
            get(&mut again, "/healthz").is_some_and(|a| a.status == 200)
        },
    );
    eprintln!(
        "per-address cap: {refused} refusals in {refusing:?}; RSS {rss_before} KiB -> {} KiB",
        rss_kib(node.pid())
    );
}

#[test]
fn an_idle_connection_retires_at_its_age() {
    let node = Node::start_with(&[("CORECAST_HTTP_CONNECTION_AGE_MAX_MS", "1000")]);
    let mut conn = connect_from(GOOD, node.http);
    let started = Instant::now();
    assert_eq!(get(&mut conn, "/healthz").unwrap().status, 200);
    // Idle from here on: far under the 60 s idle timeout and the 10 s header
    // timeout, yet closed once it is 1 s old.
    assert!(closed_within(&mut conn, Duration::from_secs(5)));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
}
