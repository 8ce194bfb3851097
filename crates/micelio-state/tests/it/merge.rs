//! The merge is order-free: property tests against an LWW model, plus the
//! clock, collection and fingerprint rules.

use std::collections::BTreeMap;

use bytes::Bytes;
use micelio_identity::{Identity, NodeId};
use micelio_state::{Limits, Merge, Meta, Reject, StateMap, Version, WriteError, key_position};
use proptest::prelude::*;

fn authors() -> Vec<NodeId> {
    (1u8..=3)
        .map(|i| *Identity::from_seed([i; 32]).node_id())
        .collect()
}

/// A synthetic entry: (key index, ts, author index, tie). Its tombstone flag
/// and value length follow from those (equal versions are the same entry,
/// as with real signatures).
type Op = (u8, u64, u8, u64);

fn deleted_of(op: &Op) -> bool {
    (op.1 + op.3 + u64::from(op.0)).is_multiple_of(3)
}

fn len_of(op: &Op) -> u32 {
    ((op.1 * 7 + op.3 * 3 + u64::from(op.0) + u64::from(op.2)) % 50) as u32
}

fn key_of(authors: &[NodeId], op: &Op) -> String {
    format!("{}/k{}", authors[op.2 as usize % authors.len()], op.0 % 6)
}

fn version_of(authors: &[NodeId], op: &Op) -> Version {
    Version {
        ts: op.1,
        node: authors[op.2 as usize % authors.len()],
        tie: op.3,
    }
}

fn map_of(ops: &[Op]) -> StateMap {
    let a = authors();
    let mut m = StateMap::new(a[0], Limits::default());
    for op in ops {
        m.merge(
            &key_of(&a, op),
            version_of(&a, op),
            deleted_of(op),
            len_of(op) as usize,
            0,
        )
        .expect("room");
    }
    m
}

/// What a map holds, comparable.
fn snapshot(m: &StateMap) -> (BTreeMap<String, Meta>, (u64, u64), BTreeMap<String, u64>) {
    let items = m
        .range(0, None)
        .map(|((_, k), meta)| (k.to_string(), *meta))
        .collect();
    (items, m.fingerprint(0, None), m.version_vector())
}

/// The LWW model: per key, the greatest version (its flags with it).
fn model(ops: &[Op]) -> BTreeMap<String, Meta> {
    let a = authors();
    let mut out: BTreeMap<String, Meta> = BTreeMap::new();
    for op in ops {
        let meta = Meta {
            version: version_of(&a, op),
            deleted: deleted_of(op),
            value_len: len_of(op),
        };
        let e = out.entry(key_of(&a, op)).or_insert(meta);
        if meta.version > e.version {
            *e = meta;
        }
    }
    out
}

fn op() -> impl Strategy<Value = Op> {
    // Small domains so that keys, timestamps and authors collide often.
    (0u8..6, 1u64..6, 0u8..3, 0u64..3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any delivery order, with duplicates, gives the same map, equal to
    /// the model.
    #[test]
    fn any_order_gives_the_model(ops in prop::collection::vec(op(), 0..40), seed in any::<u64>()) {
        let mut shuffled = ops.clone();
        // Fisher-Yates with a tiny LCG: deterministic per case.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let mut doubled = shuffled.clone();
        doubled.extend(ops.iter().rev().cloned());
        let a = snapshot(&map_of(&ops));
        prop_assert_eq!(&a, &snapshot(&map_of(&shuffled)));
        prop_assert_eq!(&a, &snapshot(&map_of(&doubled)));
        prop_assert_eq!(&a.0, &model(&ops));
    }

    /// merge(merge(A, B), C) = merge(A, merge(B, C)) = merge(C, B, A):
    /// merging whole maps (as entry sets) is associative and commutative.
    #[test]
    fn merging_maps_is_associative_and_commutative(
        x in prop::collection::vec(op(), 0..15),
        y in prop::collection::vec(op(), 0..15),
        z in prop::collection::vec(op(), 0..15),
    ) {
        let cat = |parts: &[&[Op]]| parts.concat();
        let left = snapshot(&map_of(&cat(&[&x, &y, &z])));
        prop_assert_eq!(&left, &snapshot(&map_of(&cat(&[&z, &y, &x]))));
        prop_assert_eq!(&left, &snapshot(&map_of(&cat(&[&y, &z, &x, &y]))));
    }

    /// The fingerprint of any range equals the sum over its entries, and
    /// adjacent ranges add up.
    #[test]
    fn fingerprints_of_ranges_add_up(ops in prop::collection::vec(op(), 0..40), a in any::<u64>(), b in any::<u64>()) {
        let m = map_of(&ops);
        let (lo, hi) = (a.min(b), a.max(b));
        let (f1, c1) = m.fingerprint(0, Some(lo));
        let (f2, c2) = m.fingerprint(lo, Some(hi));
        let (f3, c3) = m.fingerprint(hi, None);
        let (f, c) = m.fingerprint(0, None);
        prop_assert_eq!(c1 + c2 + c3, c);
        prop_assert_eq!(f1.wrapping_add(f2).wrapping_add(f3), f);
        prop_assert_eq!(c as usize, m.len());
        prop_assert_eq!(c2 as usize, m.range(lo, Some(hi)).count());
    }
}

#[test]
fn equal_timestamp_and_author_are_settled_by_the_tie_break() {
    let a = authors();
    let key = format!("{}/k", a[0]);
    let v = |tie| Version {
        ts: 5,
        node: a[0],
        tie,
    };
    for order in [[1u64, 2], [2, 1]] {
        let mut m = StateMap::new(a[1], Limits::default());
        for tie in order {
            m.merge(&key, v(tie), false, 1, 0).unwrap();
        }
        assert_eq!(m.get(&key).unwrap().version.tie, 2, "{order:?}");
    }
}

#[test]
fn signed_entries_round_trip_through_receive() {
    let me = Identity::from_seed([1; 32]);
    let other = Identity::from_seed([2; 32]);
    let mut mine = StateMap::new(*me.node_id(), Limits::default());
    let mut theirs = StateMap::new(*other.node_id(), Limits::default());
    let key = format!("{}/color", me.node_id());
    let set = mine
        .write(&me, &key, Some(Bytes::from_static(b"blue")), 10)
        .unwrap();
    assert_eq!(set.lamport_ts, 1);
    let del = mine.write(&me, &key, None, 11).unwrap();
    assert_eq!(del.lamport_ts, 2);
    assert!(del.deleted && del.value.is_empty());
    // Out of order: the tombstone first, then the older set.
    assert!(matches!(
        theirs.receive(&del, 20),
        Ok(Merge::Accepted { previous: None })
    ));
    assert_eq!(theirs.receive(&set, 21), Ok(Merge::Stale));
    assert_eq!(theirs.receive(&del, 22), Ok(Merge::Stale));
    assert!(theirs.get(&key).unwrap().deleted);
    assert_eq!(theirs.clock().now(), 2, "witnessed");
    assert_eq!(theirs.stats().tombstones, 1);
    // A forged copy is refused with its reason.
    let mut forged = set.clone();
    forged.lamport_ts = 99;
    assert_eq!(theirs.receive(&forged, 23), Err(Reject::BadSignature));
    assert_eq!(
        theirs.version_vector().get(&me.node_id().to_string()),
        Some(&2)
    );
}

#[test]
fn local_writes_check_keys_values_and_the_clock() {
    let me = Identity::from_seed([1; 32]);
    let mut m = StateMap::new(*me.node_id(), Limits::new(10, 2));
    let k = |s: &str| format!("{}/{s}", me.node_id());
    let other = format!("{}/x", Identity::from_seed([2; 32]).node_id());
    assert!(matches!(
        m.write(&me, &other, None, 0),
        Err(WriteError::InvalidKey(_))
    ));
    assert!(matches!(
        m.write(&me, &k(""), None, 0),
        Err(WriteError::InvalidKey(_))
    ));
    assert!(matches!(
        m.write(&me, &k("a\u{7}"), None, 0),
        Err(WriteError::InvalidKey(_))
    ));
    assert_eq!(
        m.write(&me, &k(&"x".repeat(192)), None, 0),
        Err(WriteError::KeyTooLong { len: 257, max: 256 })
    );
    assert_eq!(
        m.write(&me, &k("v"), Some(Bytes::from_static(&[0; 11])), 0),
        Err(WriteError::ValueTooLong { len: 11, max: 10 })
    );
    assert_eq!(m.clock().now(), 0, "a refused write takes no timestamp");
    m.write(&me, &k("a"), None, 0).unwrap();
    m.write(&me, &k("b"), None, 0).unwrap();
    assert_eq!(m.write(&me, &k("c"), None, 0), Err(WriteError::Full(2)));
    // Updating a held key is always allowed.
    m.write(&me, &k("a"), Some(Bytes::from_static(b"1")), 0)
        .unwrap();
    m.raise_clock(micelio_wire::limits::MAX_LAMPORT_TS);
    assert!(matches!(
        m.write(&me, &k("a"), None, 0),
        Err(WriteError::ClockExhausted(_))
    ));
}

#[test]
fn a_far_future_timestamp_of_another_author_is_not_witnessed() {
    let me = Identity::from_seed([1; 32]);
    let evil = Identity::from_seed([2; 32]);
    let mut m = StateMap::new(*me.node_id(), Limits::default());
    let mut e = micelio_wire::proto::StateEntry {
        key: format!("{}/x", evil.node_id()),
        value: Bytes::from_static(b"v"),
        lamport_ts: micelio_wire::limits::MAX_LAMPORT_TS,
        ..Default::default()
    };
    e.sign(&evil);
    assert!(matches!(m.receive(&e, 0), Ok(Merge::Accepted { .. })));
    assert_eq!(m.clock().now(), 0);
    assert_eq!(m.stats().unwitnessed, 1);
    let mine = m
        .write(&me, &format!("{}/y", me.node_id()), None, 0)
        .unwrap();
    assert_eq!(mine.lamport_ts, 1, "our clock is intact");
}

#[test]
fn tombstones_are_collected_after_their_age_and_stay_collected() {
    let a = authors();
    let mut m = StateMap::new(a[0], Limits::default());
    let key = format!("{}/gone", a[1]);
    let tomb = Version {
        ts: 4,
        node: a[1],
        tie: 0,
    };
    m.merge(&key, tomb, true, 0, 100).unwrap();
    // A newer tombstone keeps the first one's age.
    let newer = Version { ts: 5, ..tomb };
    m.merge(&key, newer, true, 0, 150).unwrap();
    assert!(m.collect(199, 100).is_empty());
    assert_eq!(m.collect(200, 100), vec![Box::<str>::from(key.as_str())]);
    assert!(m.get(&key).is_none());
    assert_eq!(
        (m.stats().tombstones, m.stats().entries, m.stats().collected),
        (0, 0, 1)
    );
    assert_eq!(m.fingerprint(0, None), (0, 0));
    // A late copy of it (or an older set) does not come back; a newer set does.
    assert_eq!(m.merge(&key, newer, true, 0, 201), Ok(Merge::Stale));
    assert_eq!(
        m.merge(&key, Version { ts: 3, ..tomb }, false, 1, 201),
        Ok(Merge::Stale)
    );
    assert!(matches!(
        m.merge(&key, Version { ts: 6, ..tomb }, false, 1, 202),
        Ok(Merge::Accepted { previous: None })
    ));
    // A revived key's old tombstone age no longer applies.
    let k2 = format!("{}/back", a[1]);
    m.merge(&k2, tomb, true, 0, 300).unwrap();
    m.merge(&k2, newer, false, 1, 301).unwrap();
    assert!(m.collect(10_000, 100).is_empty());
    assert!(!m.get(&k2).unwrap().deleted);
}

#[test]
fn a_full_map_refuses_new_keys_but_not_updates() {
    let a = authors();
    let mut m = StateMap::new(a[0], Limits::new(4096, 1));
    let k1 = format!("{}/1", a[1]);
    m.merge(
        &k1,
        Version {
            ts: 1,
            node: a[1],
            tie: 0,
        },
        false,
        1,
        0,
    )
    .unwrap();
    let k2 = format!("{}/2", a[1]);
    assert_eq!(
        m.merge(
            &k2,
            Version {
                ts: 2,
                node: a[1],
                tie: 0
            },
            false,
            1,
            0
        ),
        Err(Reject::Full(1))
    );
    assert!(
        m.merge(
            &k1,
            Version {
                ts: 3,
                node: a[1],
                tie: 0
            },
            false,
            1,
            0
        )
        .is_ok()
    );
}

#[test]
fn newer_than_follows_the_vector() {
    let a = authors();
    let mut m = StateMap::new(a[0], Limits::default());
    for (i, ts) in [(1, 3u64), (1, 5), (2, 2)] {
        let key = format!("{}/k{ts}", a[i]);
        m.merge(
            &key,
            Version {
                ts,
                node: a[i],
                tie: 0,
            },
            false,
            1,
            0,
        )
        .unwrap();
    }
    let known: BTreeMap<String, u64> = [(a[1].to_string(), 3)].into();
    let mut got: Vec<&str> = m.newer_than(&known).collect();
    got.sort_unstable();
    let mut want = vec![format!("{}/k5", a[1]), format!("{}/k2", a[2])];
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn positions_spread_keys_and_ranges_see_them() {
    let a = authors();
    let mut m = StateMap::new(a[0], Limits::default());
    for i in 0..200u64 {
        let key = format!("{}/{i}", a[1]);
        m.merge(
            &key,
            Version {
                ts: i + 1,
                node: a[1],
                tie: 0,
            },
            false,
            1,
            0,
        )
        .unwrap();
    }
    let mid = 1u64 << 63;
    let low = m.range(0, Some(mid)).count();
    assert!((60..140).contains(&low), "{low} of 200 below the middle");
    for ((pos, key), _) in m.range(mid, None) {
        assert_eq!(*pos, key_position(key));
        assert!(*pos >= mid);
    }
}
