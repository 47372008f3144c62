//! Replay under fire (issue 11): 500 users of a 2-node cluster are away
//! (their connections closed) while pushes to random users are posted
//! continuously to both nodes; all 500 resume at once, each on the other
//! node, with the pushes still coming. Every push answered 202 reaches its
//! user exactly once (no duplicate at all: nothing is dropped here), each
//! origin's pushes in that origin's order, and every resume says
//! `recovered:true` with `missed` = the pushes sent before it.

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use common::{Node, Poster, cluster, wait_for};
use fleet::{Fleet, FleetUser, Phase};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USERS: usize = 500;
/// Pushes per second posted during the test, half to each node.
const PUSHES_PER_SEC: u64 = 400;
/// How long the users stay away while pushes are posted.
const AWAY_FOR: Duration = Duration::from_millis(1500);
/// How long pushes go on once the users are told to come back.
const PUSHING_AFTER_BACK: Duration = Duration::from_secs(3);
/// Bound on the pusher (in case the test's own waits misbehave).
const PUSHES_MAX: u64 = PUSHES_PER_SEC * 60;
/// Bound on every wait for the fleet.
const FLEET_WAIT: Duration = Duration::from_secs(60);
/// Bound on the wait for the last pushes to arrive.
const DELIVERY_WAIT: Duration = Duration::from_secs(20);
/// Problems listed in the failure message (all are counted).
const LISTED_MAX: usize = 10;

fn users_active(nodes: &[Node]) -> f64 {
    nodes
        .iter()
        .map(|n| n.metric_sum("corecast_users_active{"))
        .sum()
}

/// Posts to random users of `uids` at `PUSHES_PER_SEC`, alternating nodes,
/// until `stop`; every 202 is logged as (user index, id).
fn pusher(
    nodes: &[Node],
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<(usize, String)>>>,
    refused: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let posters: Vec<Poster> = nodes.iter().map(|n| Poster::new(n.http)).collect();
    std::thread::spawn(move || {
        let start = Instant::now();
        let interval = Duration::from_secs(1) / PUSHES_PER_SEC as u32;
        for k in 0..PUSHES_MAX {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let due = start + interval * k as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let user = rand::random_range(0..USERS);
            let path = format!("/v1/push/user/storm-{user}");
            match posters[k as usize % posters.len()].push(&path, &json!({"k": k}), None) {
                Ok((202, body)) => {
                    let id = body["id"].as_str().expect("202 with id").to_string();
                    accepted.lock().unwrap().push((user, id));
                }
                _ => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

#[test]
fn five_hundred_users_resume_at_once_while_pushes_go_on() {
    let nodes = cluster(2);
    let users: Vec<FleetUser> = (0..USERS)
        .map(|i| {
            let uid = format!("storm-{i}");
            FleetUser {
                token: nodes[0].token(&uid, None),
                uid,
                first_node: i % nodes.len(),
            }
        })
        .collect();
    let uids: Vec<String> = users.iter().map(|u| u.uid.clone()).collect();
    let mut fleet = Fleet::start(users, nodes.iter().map(|n| n.ws).collect());
    wait_for("every user online", FLEET_WAIT, || {
        fleet.online() == USERS && users_active(&nodes) == USERS as f64
    });

    // One push to all: every user holds a pos naming an origin.
    let body = json!({"uids": uids, "data": "first"}).to_string();
    let (status, answer) = nodes[0].post("/v1/push/users", "application/json", body.as_bytes());
    assert_eq!(status, 202, "{answer}");
    let first = answer["id"].as_str().expect("id").to_string();
    wait_for("every user got the first push", FLEET_WAIT, || {
        fleet
            .logs
            .iter()
            .all(|l| l.lock().unwrap().seen.contains(&first))
    });

    fleet.set_phase(Phase::Away);
    wait_for("every user away", FLEET_WAIT, || {
        fleet.online() == 0 && users_active(&nodes) == 0.0
    });
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let pushing = pusher(&nodes, stop.clone(), accepted.clone(), refused.clone());
    std::thread::sleep(AWAY_FOR);
    let away_pushes = accepted.lock().unwrap().len();
    let back_at = Instant::now();
    fleet.set_phase(Phase::Connected);
    std::thread::sleep(PUSHING_AFTER_BACK);
    let all_back = wait_until(FLEET_WAIT, || fleet.online() == USERS);
    let back_in = back_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    pushing.join().expect("pusher");
    let accepted = accepted.lock().unwrap().clone();
    let everything = wait_until(DELIVERY_WAIT, || {
        accepted
            .iter()
            .all(|(u, id)| fleet.logs[*u].lock().unwrap().seen.contains(id))
    });
    fleet.stop();

    let mut problems = Vec::new();
    let mut missing = 0;
    for (u, id) in &accepted {
        if !fleet.logs[*u].lock().unwrap().seen.contains(id) {
            missing += 1;
            if missing <= LISTED_MAX {
                problems.push(format!("storm-{u} never got {id}"));
            }
        }
    }
    let (mut duplicates, mut disorder, mut resumes, mut not_recovered) = (0, 0, 0, 0);
    for (u, log) in fleet.logs.iter().enumerate() {
        let log = log.lock().unwrap();
        duplicates += log.duplicates;
        disorder += log.order_violations.len();
        for v in log.order_violations.iter().take(2) {
            problems.push(format!("storm-{u}: out of order: {v}"));
        }
        for bad in log.bad_frames.iter().take(2) {
            problems.push(format!("storm-{u}: {bad}"));
        }
        if log.loss_notices > 0 {
            problems.push(format!("storm-{u}: {} live loss notices", log.loss_notices));
        }
        // The first connect (since= empty) and the one back from away.
        if log.resumes.len() < 2 {
            problems.push(format!(
                "storm-{u}: {} resumed frames, want 2",
                log.resumes.len()
            ));
        }
        for r in &log.resumes {
            resumes += 1;
            if !r.recovered {
                not_recovered += 1;
                problems.push(format!("storm-{u}: recovered:false"));
            }
            if r.missed != Some(r.pushes_before) {
                problems.push(format!(
                    "storm-{u}: missed {:?} but {} pushes before resumed",
                    r.missed, r.pushes_before
                ));
            }
        }
    }
    if duplicates > 0 {
        problems.push(format!("{duplicates} duplicate push frames"));
    }
    println!(
        "resume storm: {USERS} users, {} pushes answered 202 ({away_pushes} while away), {} refused, \
         {missing} missing, {duplicates} duplicates, {disorder} out of order, {resumes} resumed frames \
         ({not_recovered} recovered:false); all back {all_back} in {back_in:?}, everything received {everything}; \
         fleet: {} server closes, {} connect failures, {} refused 503",
        accepted.len(),
        refused.load(Ordering::Relaxed),
        fleet.stats.server_closes.load(Ordering::Relaxed),
        fleet.stats.connect_failures.load(Ordering::Relaxed),
        fleet.stats.refused_503.load(Ordering::Relaxed),
    );
    let total = problems.len();
    problems.truncate(LISTED_MAX * 3);
    assert!(
        total == 0 && missing == 0,
        "{total} problems (first {}):\n{}",
        problems.len(),
        problems.join("\n")
    );
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
        std::thread::sleep(Duration::from_millis(100));
    }
}
