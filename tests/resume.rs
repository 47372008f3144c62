//! Resume after a blip (issue 11): a user who was away gets exactly the
//! pushes it missed when it reconnects with `since=<its last pos>`, on the
//! node it left or on another one, each node's pushes in that node's
//! order, then `{"type":"resumed","recovered":true,"missed":N}`, then live
//! pushes. `since=` empty starts the stream at once; pushes to the token's
//! rooms and to rooms named in `&rooms=` (joined by `join` messages
//! before) are replayed; no `since` at all keeps the old behaviour (no
//! `resumed` frame). A binary push is its `{"type":"binary","id","pos"}`
//! text frame then the raw bytes, live and replayed.

mod common;
use common::{
    Client, Node, Poster, WAIT, cluster, mesh_in, read_until_resumed, resume_path, resumes,
    wait_mesh_in, wait_offline,
};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Pushes the user receives before leaving.
const BEFORE: usize = 10;
/// Pushes posted while away: to node A, to node B (plus one broadcast).
const AWAY_ON_A: usize = 10;
const AWAY_ON_B: usize = 5;

/// `<prefix>-<core>` and the counter of a push id `<prefix>-<core>-<hex>`.
fn origin_and_counter(id: &str) -> (String, u64) {
    let (origin, counter) = id.rsplit_once('-').expect("id <prefix>-<core>-<hex>");
    let counter = u64::from_str_radix(counter, 16).expect("hex counter");
    (origin.to_string(), counter)
}

/// Every origin's pushes come in increasing counter order.
fn assert_per_origin_order(frames: &[Value]) {
    let mut last: HashMap<String, u64> = HashMap::new();
    for frame in frames {
        let (origin, counter) = origin_and_counter(frame["id"].as_str().expect("id"));
        if let Some(&before) = last.get(&origin) {
            assert!(
                counter > before,
                "origin {origin}: {counter:x} after {before:x} in {frames:?}"
            );
        }
        last.insert(origin, counter);
    }
}

/// Every frame is a push with an id and a pos.
fn assert_push_frames(frames: &[Value]) {
    for frame in frames {
        assert_eq!(frame["type"], "push", "{frame}");
        assert!(frame["id"].is_string(), "{frame}");
        assert!(frame["pos"].is_string(), "push without pos: {frame}");
    }
}

fn resume(node: &Node, uid: &str, since: &str) -> Client {
    node.try_connect(&resume_path(node, uid, None, since, ""))
        .unwrap_or_else(|status| panic!("resume refused with {status}"))
}

fn away_and_back(back_on: usize) {
    let nodes = cluster(2);
    let posters: Vec<Poster> = nodes.iter().map(|n| Poster::new(n.http)).collect();
    let uid = "traveller";
    let path = format!("/v1/push/user/{uid}");

    let mut client = nodes[0].connect(uid);
    for n in 0..BEFORE {
        posters[n % 2].push_ok(&path, json!({"phase": "before", "n": n}));
    }
    let mut pos = None;
    for _ in 0..BEFORE {
        let frame = client.recv_json();
        assert_push_frames(std::slice::from_ref(&frame));
        pos = frame["pos"].as_str().map(str::to_string);
    }
    let pos = pos.expect("a pos on the last push");
    drop(client);
    wait_offline(&nodes[0], uid);

    let mesh_before = [mesh_in(&nodes[0]), mesh_in(&nodes[1])];
    // id -> (node, n); A's and B's ids in the order each node accepted them.
    let mut posted: HashMap<String, (char, usize)> = HashMap::new();
    let mut order: HashMap<char, Vec<String>> = HashMap::new();
    for (node, count) in [('a', AWAY_ON_A), ('b', AWAY_ON_B)] {
        let poster = &posters[if node == 'a' { 0 } else { 1 }];
        for n in 0..count {
            let id = poster.push_ok(
                &path,
                json!({"phase": "away", "node": node.to_string(), "n": n}),
            );
            posted.insert(id.clone(), (node, n));
            order.entry(node).or_default().push(id);
        }
    }
    let broadcast = posters[0].push_ok(
        "/v1/push/broadcast",
        json!({"phase": "away", "broadcast": true}),
    );
    posted.insert(broadcast.clone(), ('*', 0));
    // Both nodes hold everything before the user comes back.
    wait_mesh_in(&nodes[1], mesh_before[1] + (AWAY_ON_A + 1) as f64);
    wait_mesh_in(&nodes[0], mesh_before[0] + AWAY_ON_B as f64);

    let node = &nodes[back_on];
    let mut client = resume(node, uid, &pos);
    let (replayed, resumed) =
        read_until_resumed(&mut client, WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert_push_frames(&replayed);
    let ids: Vec<String> = replayed
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        posted.keys().cloned().collect::<HashSet<_>>(),
        "exactly the {} pushes posted while away: {replayed:?}",
        posted.len()
    );
    assert_eq!(ids.len(), posted.len(), "no push twice: {replayed:?}");
    for frame in &replayed {
        let id = frame["id"].as_str().unwrap();
        let (from, n) = posted[id];
        if from == '*' {
            assert_eq!(frame["data"], json!({"phase": "away", "broadcast": true}));
            assert!(frame.get("room").is_none(), "{frame}");
        } else {
            assert_eq!(
                frame["data"],
                json!({"phase": "away", "node": from.to_string(), "n": n})
            );
        }
    }
    assert_per_origin_order(&replayed);
    // Each node's pushes were posted over one keep-alive connection, so one
    // origin each (checked): the replay keeps the order each node accepted
    // them in.
    for (from, sent) in &order {
        let origins: HashSet<String> = sent.iter().map(|id| origin_and_counter(id).0).collect();
        if origins.len() == 1 {
            let got: Vec<&String> = ids.iter().filter(|id| posted[*id].0 == *from).collect();
            assert_eq!(
                got,
                sent.iter().collect::<Vec<_>>(),
                "node {from}'s pushes in its order"
            );
        } else {
            eprintln!("node {from}'s pushes came from {origins:?}: per-origin order checked only");
        }
    }
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["missed"], posted.len() as u64, "{resumed}");
    assert!(resumed["pos"].is_string(), "{resumed}");
    assert_eq!(resumes(node, "recovered"), 1.0);
    assert!(node.metric_sum("corecast_replayed_pushes_total") >= posted.len() as f64);

    // Then live pushes from both nodes.
    let live: HashSet<String> = posters
        .iter()
        .enumerate()
        .map(|(i, p)| p.push_ok(&path, json!({"phase": "live", "node": i})))
        .collect();
    let got: HashSet<String> = (0..live.len())
        .map(|_| {
            let frame = client.recv_json();
            assert_push_frames(std::slice::from_ref(&frame));
            assert_eq!(frame["data"]["phase"], "live", "{frame}");
            frame["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(got, live);
    assert!(
        client.silent_for(Duration::from_millis(300)),
        "nothing more"
    );
}

#[test]
fn away_and_back_on_the_other_node() {
    away_and_back(1);
}

#[test]
fn away_and_back_on_the_same_node() {
    away_and_back(0);
}

#[test]
fn empty_since_starts_the_stream_and_a_blip_before_the_first_push_recovers() {
    let node = Node::start();
    let uid = "newcomer";
    let path = format!("/v1/push/user/{uid}");

    // No since at all: the old behaviour, the first frame is the push.
    let mut plain = node.connect(uid);
    node.push_json(&path, json!("plain"));
    let frame = plain.recv_json();
    assert_eq!(
        frame["type"], "push",
        "no resumed frame without since: {frame}"
    );
    assert_eq!(frame["data"], "plain");
    drop(plain);
    wait_offline(&node, uid);

    // since= empty: resumed at once, nothing missed, with a pos.
    let mut client = resume(&node, uid, "");
    let (before, resumed) = read_until_resumed(&mut client, WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        before.is_empty(),
        "nothing replayed for since= empty: {before:?}"
    );
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["missed"], 0, "{resumed}");
    let start = resumed["pos"].as_str().expect("resumed pos").to_string();
    drop(client);
    wait_offline(&node, uid);

    // Two pushes while away, before the client's first push.
    let missed: Vec<String> = (0..2)
        .map(|n| {
            let (status, body) = node.push_json(&path, json!({"n": n}));
            assert_eq!(status, 202, "{body}");
            body["id"].as_str().unwrap().to_string()
        })
        .collect();
    let mut client = resume(&node, uid, &start);
    let (replayed, resumed) =
        read_until_resumed(&mut client, WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert_push_frames(&replayed);
    let ids: HashSet<String> = replayed
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        missed.iter().cloned().collect::<HashSet<_>>(),
        "{replayed:?}"
    );
    assert_eq!(replayed.len(), 2, "{replayed:?}");
    assert_per_origin_order(&replayed);
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["missed"], 2, "{resumed}");

    node.push_json(&path, json!("live"));
    assert_eq!(client.recv_json()["data"], "live");
}

#[test]
fn pushes_to_token_rooms_and_to_rooms_on_the_url_are_replayed() {
    // "claimed" comes with the token (joined at every connect); "joined"
    // only by a join message (free join), so only `&rooms=` brings it back.
    let node = Node::start_with(&[("CORECAST_WS_FREE_JOIN", "1")]);
    let uid = "member";
    let rooms = ["claimed"];
    let mut client = node.connect_rooms(uid, &rooms);
    assert_eq!(client.join("joined")["type"], "joined");
    let (status, _) = node.push_json(&format!("/v1/push/user/{uid}"), json!("first"));
    assert_eq!(status, 202);
    let first = client.recv_json();
    assert_eq!(first["data"], "first");
    let pos = first["pos"].as_str().expect("pos").to_string();
    drop(client);
    wait_offline(&node, uid);

    let mut expected = HashMap::new();
    for (route, data) in [
        ("/v1/push/room/claimed", "to claimed"),
        ("/v1/push/room/joined", "to joined"),
        ("/v1/push/room/elsewhere", "to elsewhere"),
        ("/v1/push/user/member", "to the user"),
    ] {
        let (status, body) = node.push_json(route, json!(data));
        assert_eq!(status, 202, "{body}");
        if data != "to elsewhere" {
            expected.insert(body["id"].as_str().unwrap().to_string(), data);
        }
    }
    let path = resume_path(&node, uid, Some(&rooms), &pos, "&rooms=joined");
    let mut client = node.try_connect(&path).expect("resume accepted");
    let (replayed, resumed) =
        read_until_resumed(&mut client, WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert_push_frames(&replayed);
    assert_eq!(replayed.len(), expected.len(), "{replayed:?}");
    for frame in &replayed {
        let id = frame["id"].as_str().unwrap();
        let data = expected
            .get(id)
            .unwrap_or_else(|| panic!("not for this user: {frame}"));
        assert_eq!(frame["data"], *data);
        match *data {
            "to claimed" => assert_eq!(frame["room"], "claimed"),
            "to joined" => assert_eq!(frame["room"], "joined"),
            _ => assert!(frame.get("room").is_none(), "{frame}"),
        }
    }
    assert_per_origin_order(&replayed);
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["missed"], expected.len() as u64, "{resumed}");

    // The room named on the URL is joined for live pushes too.
    node.push_json("/v1/push/room/joined", json!("live"));
    let live = client.recv_json();
    assert_eq!(live["data"], "live");
    assert_eq!(live["room"], "joined");
}

#[test]
fn a_binary_push_is_replayed_as_its_text_frame_then_its_bytes() {
    let node = Node::start();
    let uid = "bytes";
    let mut client = node.connect(uid);
    let (status, _) = node.push_json(&format!("/v1/push/user/{uid}"), json!("first"));
    assert_eq!(status, 202);
    let first = client.recv_json();
    let pos = first["pos"].as_str().expect("pos").to_string();
    drop(client);
    wait_offline(&node, uid);

    // Every byte value: not UTF-8, so only a binary frame can carry it.
    let bytes: Vec<u8> = (0..=255).collect();
    let path = format!("/v1/push/user/{uid}");
    let (status, body) = node.post(&path, "application/octet-stream", &bytes);
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    let mut client = resume(&node, uid, &pos);
    let (replayed, resumed) =
        read_until_resumed(&mut client, WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    let frame = &replayed[0];
    assert_eq!(frame["type"], "binary", "{frame}");
    assert_eq!(frame["id"], id.as_str());
    assert!(frame["pos"].is_string(), "{frame}");
    assert_eq!(frame["bytes"], json!(bytes));
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["missed"], 1, "{resumed}");

    // Live, the same two frames.
    let (status, body) = node.post(&path, "application/octet-stream", b"\xff live");
    assert_eq!(status, 202, "{body}");
    let tungstenite::Message::Text(text) = client.recv_message() else {
        panic!("a text frame first");
    };
    let frame: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(frame["type"], "binary", "{frame}");
    assert_eq!(frame["id"], body["id"]);
    assert!(frame["pos"].is_string(), "{frame}");
    assert_eq!(
        client.recv_message(),
        tungstenite::Message::binary(b"\xff live".to_vec())
    );
}
