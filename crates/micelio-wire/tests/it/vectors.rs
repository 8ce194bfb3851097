//! Every envelope, frame, signature, signed-bytes string and state entry in
//! `testdata/reference-v1.json` is reproduced byte for byte, and every frame
//! decodes back to the same fields.

use bytes::{Bytes, BytesMut};
use micelio_identity::{Identity, PublicKey};
use micelio_wire::frame::{self, FrameDecoder};
use micelio_wire::proto::{StateEntry, StateSyncRequest, StateUpdate};
use micelio_wire::{Envelope, EnvelopeBuilder, MsgType, Payload, WireMessage as _};
use serde_json::Value;

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

fn hx(v: &Value, k: &str) -> Vec<u8> {
    hex::decode(s(v, k)).unwrap()
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("field {k}"))
}

/// The identity whose NodeId is `node_id`, among the vector identities.
fn identity_of(reference: &Value, node_id: &str) -> Identity {
    for ident in reference["identities"].as_array().unwrap() {
        if s(ident, "node_id") == node_id {
            let seed: [u8; 32] = hx(ident, "seed_hex").try_into().unwrap();
            return Identity::from_seed(seed);
        }
    }
    panic!("no identity {node_id}");
}

/// Checks one envelope vector in every direction.
fn check_envelope(reference: &Value, v: &Value) {
    let name = s(v, "name");
    let id = identity_of(reference, s(v, "sender_id"));
    let pubkey = hx(v, "sender_pubkey_hex");

    // Build it with our own code, from its fields, and sign.
    let env = EnvelopeBuilder::new(
        MsgType::from_u32(u(v, "msg_type") as u32),
        hx(v, "payload_hex"),
    )
    .message_id(s(v, "message_id"))
    .lamport_ts(u(v, "lamport_ts"))
    .hop_count(u(v, "hop_count") as u32)
    .with_sender_pubkey(!pubkey.is_empty())
    .sign(&id);
    assert_eq!(env.sender_id, s(v, "sender_id"), "{name}: sender_id");
    assert_eq!(
        hex::encode(env.signed_bytes()),
        s(v, "signed_bytes_hex"),
        "{name}: signed bytes"
    );
    assert_eq!(
        hex::encode(&env.signature),
        s(v, "signature_hex"),
        "{name}: signature"
    );
    assert_eq!(
        hex::encode(&env.sender_pubkey),
        s(v, "sender_pubkey_hex"),
        "{name}: pubkey"
    );
    assert_eq!(
        hex::encode(env.encode_wire()),
        s(v, "envelope_protobuf_hex"),
        "{name}: envelope protobuf"
    );
    assert_eq!(
        hex::encode(frame::encode_envelope(&env).unwrap()),
        s(v, "frame_hex"),
        "{name}: frame"
    );

    // Decode the reference's frame back to the same fields.
    let mut buf = BytesMut::from(&hx(v, "frame_hex")[..]);
    let decoded = FrameDecoder::new()
        .decode_envelope(&mut buf)
        .unwrap()
        .unwrap();
    assert!(buf.is_empty());
    assert_eq!(decoded, env, "{name}: decoded frame");
    assert_eq!(decoded.message_id, s(v, "message_id"));
    assert_eq!(decoded.lamport_ts, u(v, "lamport_ts"));
    assert_eq!(u64::from(decoded.hop_count), u(v, "hop_count"));
    assert_eq!(hex::encode(&decoded.payload), s(v, "payload_hex"));
    decoded.verify_with(&id.public_key()).unwrap();
    if !pubkey.is_empty() {
        assert_eq!(decoded.verify_embedded().unwrap(), id.public_key());
    }
    Payload::decode(&decoded).unwrap();

    // The envelope protobuf alone decodes too.
    let alone = Envelope::decode_wire(Bytes::from(hx(v, "envelope_protobuf_hex"))).unwrap();
    assert_eq!(alone, env);

    // Flip any byte of the signed region: the signature no longer verifies.
    let signed = env.signed_bytes();
    for i in [0, signed.len() / 2, signed.len() - 1] {
        let mut tampered = signed.clone();
        tampered[i] ^= 1;
        assert!(
            id.public_key().verify(&tampered, &env.signature).is_err(),
            "{name}: byte {i}"
        );
    }
}

#[test]
fn envelopes() {
    let r = reference();
    let envs = r["envelopes"].as_array().unwrap();
    assert!(envs.len() >= 3);
    for v in envs {
        check_envelope(&r, v);
    }
}

#[test]
fn payloads_decode_to_their_messages() {
    let r = reference();
    for v in r["envelopes"].as_array().unwrap() {
        let env = Envelope {
            msg_type: u(v, "msg_type") as u32,
            payload: hx(v, "payload_hex").into(),
            ..Default::default()
        };
        let p = Payload::decode(&env).unwrap();
        // Our re-encoding of the decoded message is the reference's payload.
        assert_eq!(
            hex::encode(p.encode()),
            s(v, "payload_hex"),
            "{}",
            s(v, "name")
        );
        match (s(v, "name"), p) {
            ("chat", Payload::Chat(c)) => {
                assert_eq!(c.nick, "alice");
                assert_eq!(c.text, "hello, mesh ✓");
            }
            ("hello", Payload::Hello(h)) => {
                assert_eq!(h.node_id, s(v, "sender_id"));
                assert_eq!(h.version, "0.1.0");
                assert_eq!(h.listen_addr, "127.0.0.1:4000");
                assert!(h.reachable);
                let key = PublicKey::from_bytes(&h.ed25519_pubkey).unwrap();
                assert_eq!(key.node_id().to_string(), h.node_id);
            }
            ("peer_exchange", Payload::PeerExchange(px)) => {
                assert!(!px.peers.is_empty());
                for p in px.peers {
                    let key = PublicKey::from_bytes(&p.ed25519_pubkey).unwrap();
                    assert_eq!(key.node_id().to_string(), p.node_id);
                }
            }
            (name, p) => panic!("{name}: unexpected {p:?}"),
        }
    }
}

#[test]
fn keepalive_frame() {
    let r = reference();
    let expected = s(&r, "keepalive_frame_hex");
    assert_eq!(
        hex::encode(frame::encode_envelope(&Envelope::keepalive()).unwrap()),
        expected
    );
    let mut buf = BytesMut::from(&hex::decode(expected).unwrap()[..]);
    let env = FrameDecoder::new()
        .decode_envelope(&mut buf)
        .unwrap()
        .unwrap();
    assert_eq!(env.kind(), MsgType::Keepalive);
    assert_eq!(env, Envelope::keepalive());
}

#[test]
fn state_entries_and_their_envelopes() {
    let r = reference();
    let entries = r["state_entries"].as_array().unwrap();
    assert!(entries.len() >= 2);
    for v in entries {
        let id = identity_of(&r, s(v, "NodeID"));
        let mut entry = StateEntry {
            key: s(v, "Key").to_owned(),
            value: hx(v, "ValueHex").into(),
            lamport_ts: u(v, "LamportTs"),
            deleted: v["Deleted"].as_bool().unwrap(),
            ..Default::default()
        };
        entry.sign(&id);
        assert_eq!(entry.node_id, s(v, "NodeID"));
        assert_eq!(
            hex::encode(&entry.signature),
            s(v, "SignatureHex"),
            "{}",
            s(v, "Name")
        );
        assert_eq!(hex::encode(&entry.author_pubkey), s(v, "AuthorPubHex"));
        assert_eq!(entry.verify().unwrap(), id.public_key());

        // The gossip envelope that carries it (type 6).
        let update = &v["UpdateEnvelope"];
        let payload = StateUpdate {
            entry: Some(entry.clone()),
        }
        .encode_wire();
        assert_eq!(hex::encode(&payload), s(update, "payload_hex"));
        check_envelope(&r, update);

        // And the entry decoded out of the reference's envelope verifies.
        let env = Envelope::decode_wire(Bytes::from(hx(update, "envelope_protobuf_hex"))).unwrap();
        let Payload::StateUpdate(StateUpdate { entry: Some(got) }) = Payload::decode(&env).unwrap()
        else {
            panic!("not a state update");
        };
        assert_eq!(got, entry);
        got.verify().unwrap();
    }
}

#[test]
fn state_sync_request_payload() {
    let r = reference();
    let bytes = hex::decode(s(&r, "state_sync_request_payload_hex")).unwrap();
    let req = StateSyncRequest::decode_wire(&bytes[..]).unwrap();
    assert_eq!(req.known.len(), 2);
    // Map entry order may differ between encoders: compare decoded maps.
    let again = StateSyncRequest::decode_wire(&req.encode_wire()[..]).unwrap();
    assert_eq!(again, req);
    let ids = r["identities"].as_array().unwrap();
    assert_eq!(req.known.get(s(&ids[1], "node_id")), Some(&7));
    assert_eq!(req.known.get(s(&ids[0], "node_id")), Some(&3));
    // Our map is ordered by key, which is the order the reference used here.
    assert_eq!(req.encode_wire(), bytes);
}
