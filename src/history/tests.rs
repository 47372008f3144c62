//! Scenario tests of one core's history: resumes after pushes from several
//! origins, losses, gaps, eviction and restarts, all driven with a `now`.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::push::{ContentKind, Push, Target};

const A: Origin = Origin {
    incarnation: 11,
    core: 0,
};
const B: Origin = Origin {
    incarnation: 22,
    core: 1,
};

fn limits() -> HistoryLimits {
    HistoryLimits {
        ttl_ms: 1_000,
        bytes_max: 1 << 20,
    }
}

fn push(id: &str, _target: &Target) -> Arc<Push> {
    Push::new(
        id.to_string(),
        ContentKind::Json,
        Bytes::from_static(b"{\"n\":1}"),
        0,
    )
}

fn user(uid: &str) -> Target {
    Target::User(uid.into())
}

/// Admits `seq` of `origin` (prev = seq - 1: everything routed here).
fn add(h: &mut CoreHistory, origin: Origin, seq: u64, target: Target, now: u64) {
    let id = format!("{}-{seq}", origin.incarnation);
    let p = push(&id, &target);
    h.admit(
        Routed {
            origin,
            seq,
            prev: seq - 1,
        },
        target,
        p,
        now,
        Admission::Refuse,
    )
    .unwrap();
}

fn ready(plan: ResumePlan) -> Resume {
    match plan {
        ResumePlan::Ready(r) => r,
        ResumePlan::Wait => panic!("expected a plan, got Wait"),
    }
}

fn ids(h: &CoreHistory, r: &Resume) -> Vec<String> {
    r.entries
        .iter()
        .map(|n| h.entry(*n).unwrap().push.id.clone())
        .collect()
}

/// A position that names one origin at `seq`.
fn at(origin: Origin, seq: u64) -> Position {
    let mut pos = Position::new();
    pos.set(origin, seq);
    pos
}

#[test]
fn away_and_back_gets_exactly_what_was_missed_in_origin_order() {
    let mut h = CoreHistory::new(limits());
    for seq in 1..=10 {
        add(&mut h, A, seq, user("u"), 0);
    }
    let since = h.position();
    for seq in 11..=20 {
        add(&mut h, A, seq, user("u"), 1);
        if seq <= 15 {
            add(&mut h, B, seq - 10, user("u"), 1);
        }
    }
    add(&mut h, B, 6, Target::Broadcast, 2);
    add(&mut h, A, 21, user("other"), 2);
    add(&mut h, B, 7, Target::Room("not-mine".into()), 2);

    let r = ready(h.plan_resume("u", &[], &since));
    assert!(r.recovered);
    let got = ids(&h, &r);
    assert_eq!(got.len(), 16);
    let a: Vec<_> = got
        .iter()
        .filter(|i| i.starts_with("11-"))
        .cloned()
        .collect();
    let b: Vec<_> = got
        .iter()
        .filter(|i| i.starts_with("22-"))
        .cloned()
        .collect();
    assert_eq!(a, (11..=20).map(|s| format!("11-{s}")).collect::<Vec<_>>());
    assert_eq!(b, (1..=6).map(|s| format!("22-{s}")).collect::<Vec<_>>());
    assert_eq!(r.pos.get(A), 21);
    assert_eq!(r.pos.get(B), 7);

    // Resuming from the returned position replays nothing and recovers.
    let again = ready(h.plan_resume("u", &[], &r.pos));
    assert!(again.recovered);
    assert!(again.entries.is_empty());
}

#[test]
fn rooms_and_broadcasts_are_part_of_the_stream() {
    let mut h = CoreHistory::new(limits());
    add(&mut h, A, 1, Target::Room("r".into()), 0);
    add(&mut h, A, 2, Target::Users(vec!["x".into(), "u".into()]), 0);
    add(&mut h, A, 3, Target::Broadcast, 0);
    add(&mut h, A, 4, Target::Room("s".into()), 0);
    let r = ready(h.plan_resume("u", &["r"], &Position::new()));
    assert_eq!(ids(&h, &r), ["11-1", "11-2", "11-3"]);
    assert!(r.recovered, "history starts at the origin's first seq");
}

#[test]
fn since_older_than_the_window_is_not_recovered() {
    let mut h = CoreHistory::new(limits());
    add(&mut h, A, 1, user("u"), 0);
    let since = h.position();
    add(&mut h, A, 2, user("u"), 100);
    add(&mut h, A, 3, user("u"), 900);
    h.expire(1_100); // seq 1 and 2 expire
    assert_eq!(h.len(), 1);
    let r = ready(h.plan_resume("u", &[], &since));
    assert!(!r.recovered);
    assert_eq!(ids(&h, &r), ["11-3"], "what it has is still sent");

    // From after the evicted entries it is provable again.
    let later = at(A, 2);
    let r = ready(h.plan_resume("u", &[], &later));
    assert!(r.recovered);
    assert_eq!(ids(&h, &r), ["11-3"]);
}

#[test]
fn full_history_refuses_local_pushes_and_evicts_for_received_ones() {
    let one = CoreHistory::entry_bytes(&push("11-1", &user("u")), &user("u"));
    let mut h = CoreHistory::new(HistoryLimits {
        ttl_ms: 1_000,
        bytes_max: one * 2,
    });
    add(&mut h, A, 1, user("u"), 0);
    add(&mut h, A, 2, user("u"), 0);
    assert!(!h.has_room(one, 10));
    let p = push("11-3", &user("u"));
    assert_eq!(
        h.admit(
            Routed {
                origin: A,
                seq: 3,
                prev: 2
            },
            user("u"),
            p.clone(),
            10,
            Admission::Refuse
        ),
        Err(HistoryFull { bytes: one * 2 })
    );
    assert_eq!(h.len(), 2, "a refused push is not kept");
    assert_eq!(
        h.admit(
            Routed {
                origin: A,
                seq: 3,
                prev: 2
            },
            user("u"),
            p,
            10,
            Admission::Evict
        ),
        Ok(Arrival::InOrder)
    );
    assert_eq!(h.len(), 2);
    assert_eq!(h.bytes(), one * 2);
    let r = ready(h.plan_resume("u", &[], &Position::new()));
    assert!(!r.recovered, "seq 1 was evicted");
    // Expired entries make room for a local push again.
    assert!(h.has_room(one, 1_010));
    assert_eq!(h.len(), 0);
}

#[test]
fn a_break_in_the_prev_chain_makes_older_resumes_unproven() {
    let mut h = CoreHistory::new(limits());
    add(&mut h, A, 1, user("u"), 0);
    let since = h.position();
    // Seq 3 was routed here after 2, but 2 never arrived.
    let p = push("11-3", &user("u"));
    assert_eq!(
        h.admit(
            Routed {
                origin: A,
                seq: 3,
                prev: 2
            },
            user("u"),
            p,
            0,
            Admission::Refuse
        ),
        Ok(Arrival::AfterLoss)
    );
    assert!(!ready(h.plan_resume("u", &[], &since)).recovered);
    let after = at(A, 2);
    assert!(ready(h.plan_resume("u", &[], &after)).recovered);
}

#[test]
fn a_mesh_gap_makes_resumes_across_it_unproven() {
    let mut h = CoreHistory::new(limits());
    add(&mut h, A, 1, user("u"), 0);
    let since = h.position();
    h.mark_gap(A, 5, 0);
    add(&mut h, A, 6, user("u"), 0);
    let r = ready(h.plan_resume("u", &[], &since));
    assert!(!r.recovered);
    assert_eq!(ids(&h, &r), ["11-6"]);
    let after = at(A, 5);
    assert!(ready(h.plan_resume("u", &[], &after)).recovered);
}

#[test]
fn an_origin_met_late_is_provable_only_from_where_it_was_met() {
    let mut h = CoreHistory::new(limits());
    // First message of A routed here says 4 came before: this core missed
    // 1..=4 (it started after them).
    let p = push("11-9", &user("u"));
    h.admit(
        Routed {
            origin: A,
            seq: 9,
            prev: 4,
        },
        user("u"),
        p,
        0,
        Admission::Refuse,
    )
    .unwrap();
    assert!(!ready(h.plan_resume("u", &[], &Position::new())).recovered);
    let since = at(A, 4);
    let r = ready(h.plan_resume("u", &[], &since));
    assert!(r.recovered);
    assert_eq!(ids(&h, &r), ["11-9"]);
}

#[test]
fn since_ahead_of_this_core_waits_until_the_origin_catches_up() {
    let mut h = CoreHistory::new(limits());
    add(&mut h, A, 1, user("u"), 0);
    let mut since = Position::new();
    since.set(A, 3); // the client saw seq 3 on another node
    assert_eq!(h.plan_resume("u", &[], &since), ResumePlan::Wait);
    // Seq 2 and 3 went to other cores; the marker moves the head.
    assert_eq!(h.advance(A, 3, 1, 5), Arrival::InOrder);
    let r = ready(h.plan_resume("u", &[], &since));
    assert!(r.recovered);
    assert!(r.entries.is_empty());
    assert_eq!(r.pos.get(A), 3);
}

#[test]
fn an_advance_marker_reveals_a_lost_last_message() {
    let mut h = CoreHistory::new(limits());
    add(&mut h, A, 1, user("u"), 0);
    let since = h.position();
    // The router routed seq 2 here, it was lost, and nothing else came.
    assert_eq!(h.advance(A, 7, 2, 5), Arrival::AfterLoss);
    assert!(!ready(h.plan_resume("u", &[], &since)).recovered);
}

#[test]
fn an_unknown_origin_in_since_is_not_recovered_after_the_wait() {
    // The node restarted: its new incarnation does not know the old one.
    let mut h = CoreHistory::new(limits());
    add(&mut h, B, 1, user("u"), 0);
    let since = at(A, 10);
    assert_eq!(h.plan_resume("u", &[], &since), ResumePlan::Wait);
    let r = h.plan_resume_now("u", &[], &since);
    assert!(!r.recovered);
    assert_eq!(ids(&h, &r), ["22-1"]);
    assert!(!r.pos.contains(A), "the position after it is this core's");
}

#[test]
fn an_origin_absent_from_since_counts_from_its_first_seq() {
    let mut h = CoreHistory::new(limits());
    add(&mut h, A, 1, user("u"), 0);
    add(&mut h, B, 1, user("u"), 0);
    let since = at(A, 1);
    let r = ready(h.plan_resume("u", &[], &since));
    assert!(r.recovered);
    assert_eq!(ids(&h, &r), ["22-1"]);
    h.expire(2_000);
    let r = ready(h.plan_resume("u", &[], &since));
    assert!(
        !r.recovered,
        "B's first push is gone and since does not name B"
    );
}

#[test]
fn duplicates_are_dropped() {
    let mut h = CoreHistory::new(limits());
    add(&mut h, A, 1, user("u"), 0);
    let p = push("11-1", &user("u"));
    assert_eq!(
        h.admit(
            Routed {
                origin: A,
                seq: 1,
                prev: 0
            },
            user("u"),
            p,
            0,
            Admission::Refuse
        ),
        Ok(Arrival::Duplicate)
    );
    assert_eq!(h.len(), 1);
}

#[test]
fn position_text_is_cached_until_a_change() {
    let mut h = CoreHistory::new(limits());
    add(&mut h, A, 1, user("u"), 0);
    let first = h.position_text();
    assert!(Arc::ptr_eq(&first, &h.position_text()));
    assert_eq!(Position::parse(&first).unwrap(), h.position());
    add(&mut h, A, 2, user("u"), 0);
    let second = h.position_text();
    assert_ne!(first, second);
    assert_eq!(Position::parse(&second).unwrap().get(A), 2);
}

#[test]
fn a_huge_replay_is_cut_and_not_recovered() {
    let mut h = CoreHistory::new(HistoryLimits {
        ttl_ms: 1_000,
        bytes_max: usize::MAX,
    });
    for seq in 1..=(store::REPLAY_PUSHES_MAX as u64 + 1) {
        add(&mut h, A, seq, user("u"), 0);
    }
    let r = ready(h.plan_resume("u", &[], &Position::new()));
    assert!(!r.recovered);
    assert_eq!(r.entries.len(), store::REPLAY_PUSHES_MAX);
    assert_eq!(h.entry(r.entries[0]).unwrap().seq, 1, "oldest first");
}

#[test]
fn idle_dead_origins_are_forgotten_past_the_cap() {
    let mut h = CoreHistory::new(limits());
    for i in 0..=store::ORIGINS_PER_CORE_MAX as u64 {
        let o = Origin {
            incarnation: 100 + i,
            core: 0,
        };
        h.advance(o, 1, 0, i);
    }
    assert_eq!(h.position().len(), store::ORIGINS_PER_CORE_MAX);
    assert!(!h.position().contains(Origin {
        incarnation: 100,
        core: 0
    }));
    assert!(
        Position::parse(&h.position_text()).is_ok(),
        "a core's position always parses"
    );
}

#[test]
fn eviction_keeps_the_indexes_in_step() {
    let mut h = CoreHistory::new(limits());
    for seq in 1..=100 {
        let target = match seq % 4 {
            0 => user("u"),
            1 => Target::Users(vec!["u".into(), "u".into(), "v".into()]),
            2 => Target::Room("r".into()),
            _ => Target::Broadcast,
        };
        add(&mut h, A, seq, target, seq * 10);
    }
    h.expire(1_505); // entries at <= 505 ms expire: seq 1..=50
    assert_eq!(h.len(), 50);
    let since = at(A, 50);
    let r = ready(h.plan_resume("u", &["r"], &since));
    assert!(r.recovered);
    let seqs: Vec<u64> = r.entries.iter().map(|n| h.entry(*n).unwrap().seq).collect();
    assert_eq!(seqs, (51..=100).collect::<Vec<_>>());
    let v = ready(h.plan_resume("v", &[], &since));
    assert_eq!(v.entries.len(), 12 + 13); // batches naming v, broadcasts
    h.expire(10_000);
    assert_eq!(h.bytes(), 0);
    assert!(h.is_empty());
}
