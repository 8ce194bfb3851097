//! Known answers. The reference's signed entries (`testdata/reference-v1.json`)
//! pass every check and merge to the same map in any order; its type-7
//! payload is what this crate sends for the same version vector. The
//! micelio sync message (type 16) has known answers of its own,
//! `tests/vectors/reconcile-v1.json`, for other implementations: entry
//! positions, range fingerprints and whole messages, byte for byte. Set
//! `MICELIO_UPDATE_VECTORS=1` to rewrite that file after a deliberate
//! change of the protocol (and say so in `docs/protocol.md`).

use bytes::Bytes;
use micelio_identity::Identity;
use micelio_state::reconcile;
use micelio_state::{Limits, Merge, StateMap, key_position};
use micelio_wire::WireMessage as _;
use micelio_wire::proto::{StateEntry, StateReconcile, StateSyncRequest};
use serde_json::{Value, json};

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/reference-v1.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("field {k}"))
}

fn reference_entries() -> Vec<StateEntry> {
    reference()["state_entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| StateEntry {
            key: s(v, "Key").to_owned(),
            value: hex::decode(s(v, "ValueHex")).unwrap().into(),
            lamport_ts: v["LamportTs"].as_u64().unwrap(),
            node_id: s(v, "NodeID").to_owned(),
            deleted: v["Deleted"].as_bool().unwrap(),
            signature: hex::decode(s(v, "SignatureHex")).unwrap().into(),
            author_pubkey: hex::decode(s(v, "AuthorPubHex")).unwrap().into(),
        })
        .collect()
}

#[test]
fn the_references_entries_pass_and_merge_to_one_map_in_any_order() {
    let entries = reference_entries();
    assert!(entries.len() >= 2 && entries.iter().any(|e| e.deleted));
    let me = *Identity::from_seed([9; 32]).node_id();
    let mut forward = StateMap::new(me, Limits::default());
    let mut backward = StateMap::new(me, Limits::default());
    for e in &entries {
        assert!(
            matches!(forward.receive(e, 0), Ok(Merge::Accepted { .. })),
            "{}",
            e.key
        );
    }
    for e in entries.iter().rev() {
        backward.receive(e, 0).unwrap();
    }
    let key = &entries[0].key;
    assert_eq!(forward.get(key), backward.get(key));
    let newest = entries.iter().max_by_key(|e| e.lamport_ts).unwrap();
    assert_eq!(forward.get(key).unwrap().deleted, newest.deleted);
    // The clock has witnessed the newest timestamp.
    assert!(forward.clock().now() >= newest.lamport_ts);
    // Our type-7 vector for this map names the author at its newest ts.
    let vv = forward.version_vector();
    assert_eq!(vv.get(&newest.node_id), Some(&newest.lamport_ts));
    // And the reference's type-7 payload decodes to a vector we read the
    // same way: each node's highest timestamp.
    let bytes = hex::decode(s(&reference(), "state_sync_request_payload_hex")).unwrap();
    let req = StateSyncRequest::decode_wire(&bytes[..]).unwrap();
    assert_eq!(
        StateSyncRequest {
            known: req.known.clone()
        }
        .encode_wire(),
        bytes,
        "a vector in key order encodes as the reference's does"
    );
}

/// A fixed map: 40 entries by two authors (seeds 1 and 2), two of them
/// tombstones.
fn fixed_map() -> (StateMap, Vec<StateEntry>) {
    let authors = [Identity::from_seed([1; 32]), Identity::from_seed([2; 32])];
    let mut map = StateMap::new(*Identity::from_seed([9; 32]).node_id(), Limits::default());
    let mut entries = Vec::new();
    for i in 0..40u64 {
        let author = &authors[(i % 2) as usize];
        let mut e = StateEntry {
            key: format!("{}/k{i:02}", author.node_id()),
            value: Bytes::from(format!("value {i}")),
            lamport_ts: i + 1,
            deleted: i % 13 == 12,
            ..Default::default()
        };
        if e.deleted {
            e.value = Bytes::new();
        }
        e.sign(author);
        map.receive(&e, 0).unwrap();
        entries.push(e);
    }
    (map, entries)
}

fn message(session: u64, opened_by_sender: bool, answer: &reconcile::Answer) -> Vec<u8> {
    StateReconcile {
        session,
        opened_by_sender,
        ranges: answer.ranges.clone(),
        wants: answer.wants.clone(),
    }
    .encode_wire()
}

fn computed() -> Value {
    let (map, entries) = fixed_map();
    let positions: Vec<Value> = entries
        .iter()
        .map(|e| json!({"key": e.key, "position": format!("{:016x}", key_position(&e.key))}))
        .collect();
    let (fp, count) = map.fingerprint(0, None);
    let (half_fp, half_count) = map.fingerprint(0, Some(1 << 63));
    let opening = reconcile::Answer {
        ranges: reconcile::open(&map),
        ..Default::default()
    };
    // What a node holding nothing answers to that opening.
    let empty = StateMap::new(*Identity::from_seed([8; 32]).node_id(), Limits::default());
    let from_empty = reconcile::answer(&empty, &opening.ranges, &[]);
    // What a node holding the same map minus the first five entries
    // answers (it splits or lists, and asks for what it lacks).
    let mut partial = StateMap::new(*Identity::from_seed([8; 32]).node_id(), Limits::default());
    for e in &entries[5..] {
        partial.receive(e, 0).unwrap();
    }
    let from_partial = reconcile::answer(&partial, &opening.ranges, &[]);
    json!({
        "about": "micelio type-16 known answers: entries of seeds 1 and 2 (hex 0101…, 0202…), keys <node_id>/kNN, ts = NN + 1, value \"value NN\", tombstones at NN = 12, 25, 38",
        "positions": positions,
        "whole_range": {"fingerprint": format!("{fp:016x}"), "count": count},
        "first_half": {"fingerprint": format!("{half_fp:016x}"), "count": half_count},
        "opening_hex": hex::encode(message(1, true, &opening)),
        "answer_of_an_empty_node_hex": hex::encode(message(1, false, &from_empty)),
        "answer_of_an_empty_node_pushes": from_empty.push.len(),
        "answer_of_a_node_missing_five_hex": hex::encode(message(1, false, &from_partial)),
    })
}

#[test]
fn the_sync_message_matches_its_known_answers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/reconcile-v1.json"
    );
    let got = computed();
    if std::env::var_os("MICELIO_UPDATE_VECTORS").is_some() {
        std::fs::write(path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(got, want, "type-16 encoding or fingerprints changed");
    // The file's messages decode back to what they say.
    let opening =
        StateReconcile::decode_wire(&hex::decode(s(&want, "opening_hex")).unwrap()[..]).unwrap();
    assert_eq!(opening.ranges.len(), 1);
    assert_eq!(opening.ranges[0].count, 40);
}
