//! Tests of the reconciliation: sessions between two simulated maps (the
//! version-vector gap, a fresh node, a cut catch-up, both sides newer), and
//! the bounds of every message and answer.

use std::collections::HashMap;

use bytes::Bytes;
use micelio_identity::Identity;
use micelio_wire::proto::StateEntry;

use super::*;
use crate::version::Limits;

/// A node of the simulation: the map and the entries behind it.
struct Node {
    map: StateMap,
    values: HashMap<String, StateEntry>,
}

impl Node {
    fn new(seed: u8) -> Self {
        let id = Identity::from_seed([seed; 32]);
        Self {
            map: StateMap::new(*id.node_id(), Limits::default()),
            values: HashMap::new(),
        }
    }

    fn take(&mut self, e: &StateEntry) {
        if let Ok(crate::Merge::Accepted { .. }) = self.map.receive(e, 0) {
            self.values.insert(e.key.clone(), e.clone());
        }
    }

    fn summary(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .values
            .values()
            .map(|e| (e.key.clone(), e.lamport_ts))
            .collect();
        v.sort();
        v
    }
}

fn entry(author: &Identity, sub: &str, ts: u64) -> StateEntry {
    let mut e = StateEntry {
        key: format!("{}/{sub}", author.node_id()),
        value: Bytes::from(format!("{sub}@{ts}")),
        lamport_ts: ts,
        ..Default::default()
    };
    e.sign(author);
    e
}

/// Runs one session opened by `a` until a message without ranges; returns
/// (rounds, entries moved).
fn session(a: &mut Node, b: &mut Node) -> (usize, usize) {
    let mut msg = (open(&a.map), Vec::<u64>::new());
    let mut moved = 0;
    let mut rounds = 0;
    // Which side receives next: true = b.
    let mut to_b = true;
    loop {
        rounds += 1;
        assert!(rounds < 10_000, "the session does not end");
        let (recv, send) = if to_b {
            (&mut *b, &mut *a)
        } else {
            (&mut *a, &mut *b)
        };
        check(&msg.0, &msg.1).expect("well formed");
        let ans = answer(&recv.map, &msg.0, &msg.1);
        for k in &ans.push {
            let e = recv.values[&**k].clone();
            send.take(&e);
            moved += 1;
        }
        if msg.0.is_empty() {
            return (rounds, moved);
        }
        msg = (ans.ranges, ans.wants);
        to_b = !to_b;
    }
}

#[test]
fn equal_maps_end_in_one_round() {
    let o = Identity::from_seed([9; 32]);
    let (mut a, mut b) = (Node::new(1), Node::new(2));
    for i in 0..500 {
        let e = entry(&o, &format!("k{i}"), i + 1);
        a.take(&e);
        b.take(&e);
    }
    let (rounds, moved) = session(&mut a, &mut b);
    assert_eq!(moved, 0);
    assert_eq!(rounds, 2, "open, then the empty answer");
}

#[test]
fn the_version_vector_misses_an_earlier_entry_and_reconciliation_finds_it() {
    // Origin o wrote a (ts 1) then b (ts 2). Node y got b by gossip and
    // lost a.
    let o = Identity::from_seed([9; 32]);
    let (mut x, mut y) = (Node::new(1), Node::new(2));
    let a = entry(&o, "a", 1);
    let b = entry(&o, "b", 2);
    x.take(&a);
    x.take(&b);
    y.take(&b);
    // The reference's sync: y asks with its vector, x answers what is newer.
    let known = y.map.version_vector();
    let newer: Vec<&str> = x.map.newer_than(&known).collect();
    assert!(newer.is_empty(), "the vector says y is up to date");
    // Range reconciliation, opened by either side, closes the gap.
    let (_, moved) = session(&mut y, &mut x);
    assert_eq!(moved, 1);
    assert_eq!(x.summary(), y.summary());
    let (mut x2, mut y2) = (Node::new(1), Node::new(2));
    x2.take(&a);
    x2.take(&b);
    y2.take(&b);
    session(&mut x2, &mut y2);
    assert_eq!(x2.summary(), y2.summary());
}

#[test]
fn a_fresh_node_gets_everything_in_bounded_rounds() {
    let o = Identity::from_seed([9; 32]);
    let (mut full, mut fresh) = (Node::new(1), Node::new(2));
    let n = 10_000u64;
    for i in 0..n {
        full.take(&entry(&o, &format!("k{i}"), i + 1));
    }
    let (rounds, moved) = session(&mut fresh, &mut full);
    assert_eq!(moved as u64, n);
    assert_eq!(fresh.summary(), full.summary());
    // Each round trip carries up to PUSH_BUDGET entries.
    assert!(
        rounds <= 2 * (n as usize / PUSH_BUDGET + 4),
        "{rounds} rounds"
    );
}

#[test]
fn a_cut_catch_up_resumes_where_it_stopped() {
    let o = Identity::from_seed([9; 32]);
    let (mut full, mut fresh) = (Node::new(1), Node::new(2));
    for i in 0..6000u64 {
        full.take(&entry(&o, &format!("k{i}"), i + 1));
    }
    // Two rounds, then the link is cut.
    let mut msg = (open(&fresh.map), Vec::new());
    let mut to_full = true;
    for _ in 0..3 {
        let (recv, send) = if to_full {
            (&mut full, &mut fresh)
        } else {
            (&mut fresh, &mut full)
        };
        let ans = answer(&recv.map, &msg.0, &msg.1);
        for k in &ans.push {
            let e = recv.values[&**k].clone();
            send.take(&e);
        }
        msg = (ans.ranges, ans.wants);
        to_full = !to_full;
    }
    let got = fresh.values.len();
    assert!(got > 0 && got < 6000, "cut midway: {got}");
    let (_, moved) = session(&mut fresh, &mut full);
    assert_eq!(moved + got, 6000, "nothing received twice");
    assert_eq!(fresh.summary(), full.summary());
}

#[test]
fn both_sides_newer_in_places_converge_both_ways() {
    let writers: Vec<Identity> = (10..14).map(|s| Identity::from_seed([s; 32])).collect();
    let (mut a, mut b) = (Node::new(1), Node::new(2));
    // Shared history, then each side gets writes the other lacks,
    // including newer versions of shared keys.
    for (w, id) in writers.iter().enumerate() {
        for i in 0..300u64 {
            let e = entry(id, &format!("k{i}"), i + 1);
            a.take(&e);
            b.take(&e);
        }
        for i in 0..100u64 {
            let ts = 1000 + i + w as u64;
            if i % 2 == 0 {
                a.take(&entry(id, &format!("k{i}"), ts));
                b.take(&entry(id, &format!("only-b-{i}"), ts));
            } else {
                b.take(&entry(id, &format!("k{i}"), ts));
                a.take(&entry(id, &format!("only-a-{i}"), ts));
            }
        }
    }
    session(&mut a, &mut b);
    assert_eq!(a.summary(), b.summary());
    // Nothing left to do.
    assert_eq!(session(&mut b, &mut a).1, 0);
}

#[test]
fn malformed_messages_are_refused() {
    let r = |lo, hi| StateRange {
        lo,
        hi,
        ..Default::default()
    };
    assert!(matches!(
        check(&[r(5, 5)], &[]),
        Err(Malformed::EmptyRange { .. })
    ));
    assert!(matches!(
        check(&vec![r(0, 0); MAX_RANGES + 1], &[]),
        Err(Malformed::TooManyRanges(_))
    ));
    assert!(matches!(
        check(&[], &vec![0; MAX_WANTS + 1]),
        Err(Malformed::TooManyWants(_))
    ));
    let mut bad = r(10, 20);
    bad.items_mode = true;
    bad.items.push(StateItem {
        position: 30,
        node_id: Bytes::from_static(&[0; 32]),
        ..Default::default()
    });
    assert!(matches!(
        check(&[bad.clone()], &[]),
        Err(Malformed::BadItems(_))
    ));
    bad.items[0].position = 15;
    bad.items[0].node_id = Bytes::from_static(&[0; 3]);
    assert!(matches!(
        check(&[bad.clone()], &[]),
        Err(Malformed::BadItems(_))
    ));
    bad.items[0].node_id = Bytes::from_static(&[0; 32]);
    assert!(check(&[bad], &[]).is_ok());
}

#[test]
fn an_answer_stays_bounded_whatever_it_is_asked() {
    let o = Identity::from_seed([9; 32]);
    let mut full = Node::new(1);
    for i in 0..20_000u64 {
        full.take(&entry(&o, &format!("k{i}"), i + 1));
    }
    // A peer sends the most ranges, each with a wrong fingerprint.
    let step = u64::MAX / MAX_RANGES as u64;
    let ranges: Vec<StateRange> = (0..MAX_RANGES as u64)
        .map(|i| StateRange {
            lo: i * step,
            hi: if i + 1 == MAX_RANGES as u64 {
                0
            } else {
                (i + 1) * step
            },
            fingerprint: 1,
            count: 1,
            ..Default::default()
        })
        .collect();
    check(&ranges, &[]).unwrap();
    let ans = answer(&full.map, &ranges, &[]);
    assert!(ans.ranges.len() <= MAX_RANGES);
    assert!(ans.push.len() <= PUSH_BUDGET);
    let items: usize = ans.ranges.iter().map(|r| r.items.len()).sum();
    assert!(
        items * ITEM_BYTES <= MAX_ANSWER_BYTES + MAX_ITEMS as usize * SPLIT as usize * ITEM_BYTES
    );
}

#[test]
fn an_answer_to_many_wide_differing_ranges_is_still_well_formed() {
    let o = Identity::from_seed([9; 32]);
    let mut big = Node::new(1);
    for i in 0..100_000u64 {
        big.take(&entry(&o, &format!("k{i}"), i + 1));
    }
    // Each range holds about 100 entries (more than MAX_ITEMS, so it would
    // be split) and its fingerprint differs.
    let step = u64::MAX / MAX_RANGES as u64;
    let ranges: Vec<StateRange> = (0..MAX_RANGES as u64)
        .map(|i| StateRange {
            lo: i * step,
            hi: if i + 1 == MAX_RANGES as u64 {
                0
            } else {
                (i + 1) * step
            },
            fingerprint: 1,
            count: 100,
            ..Default::default()
        })
        .collect();
    let ans = answer(&big.map, &ranges, &[]);
    assert!(
        ans.ranges.len() <= MAX_RANGES,
        "{} ranges",
        ans.ranges.len()
    );
    check(&ans.ranges, &ans.wants).expect("the peer accepts the answer");
    // Every position is still covered by some answered range or settled:
    // the last range reaches the end of the space.
    assert_eq!(ans.ranges.last().map(|r| r.hi), Some(0));
}

#[test]
fn wants_stay_within_their_limit() {
    let o = Identity::from_seed([9; 32]);
    let empty = Node::new(1);
    let mut other = Node::new(2);
    for i in 0..6_000u64 {
        other.take(&entry(&o, &format!("k{i}"), i + 1));
    }
    // The peer lists 6,000 items we lack, in ranges of at most 32.
    let step = u64::MAX / 512;
    let ranges: Vec<StateRange> = (0..512u64)
        .map(|i| {
            let hi = if i == 511 { None } else { Some((i + 1) * step) };
            items_range(&other.map, i * step, hi)
        })
        .collect();
    assert!(ranges.iter().all(|r| r.items.len() <= MAX_RANGE_ITEMS));
    check(&ranges, &[]).unwrap();
    let ans = answer(&empty.map, &ranges, &[]);
    assert_eq!(ans.wants.len(), MAX_WANTS);
    check(&ans.ranges, &ans.wants).expect("the peer accepts the answer");
    assert!(
        !ans.ranges.is_empty(),
        "the rest comes back as a continuation"
    );
}

#[test]
fn large_maps_that_differ_widely_converge() {
    let (x, y) = (Identity::from_seed([7; 32]), Identity::from_seed([8; 32]));
    let mut a = Node::new(1);
    let mut b = Node::new(2);
    for i in 0..60_000u64 {
        let e = entry(&x, &format!("k{i}"), i + 1);
        a.take(&e);
        if i % 30 != 0 {
            b.take(&e);
        }
    }
    for i in 0..2_000u64 {
        b.take(&entry(&y, &format!("b{i}"), i + 1));
    }
    let mut sessions = 0;
    while a.summary() != b.summary() {
        sessions += 1;
        assert!(sessions <= 5, "not converged after 5 sessions");
        session(&mut a, &mut b);
    }
    assert_eq!(a.summary().len(), 62_000);
}
