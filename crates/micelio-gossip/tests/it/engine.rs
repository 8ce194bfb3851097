//! Every drop rule of the engine, each broken on purpose: dropped, counted,
//! never delivered, never forwarded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use micelio_gossip::{Action, DropReason, Engine, GossipConfig, Trust};
use micelio_identity::{Identity, NodeId};
use micelio_wire::{Envelope, EnvelopeBuilder, MsgType};

fn id(n: u8) -> Arc<Identity> {
    Arc::new(Identity::from_seed([n; 32]))
}

/// A receiving engine (seed 1) connected to peers 2, 3, 4 and 5, with a chat
/// handler.
fn receiver(config: GossipConfig) -> Engine {
    let mut e = Engine::new(id(1), config, 7);
    for n in 2..=5 {
        let p = id(n);
        e.peer_up(*p.node_id(), p.public_key());
    }
    e.register(MsgType::Chat);
    e
}

fn chat_from(n: u8) -> Envelope {
    EnvelopeBuilder::gossip(MsgType::Chat, &b"hello"[..]).sign(&id(n))
}

fn peer(n: u8) -> NodeId {
    *id(n).node_id()
}

#[track_caller]
fn dropped(e: &mut Engine, env: Envelope, reason: DropReason) {
    let before = e.stats();
    assert_eq!(e.handle(Instant::now(), peer(2), env), Err(reason));
    let after = e.stats();
    assert_eq!(after.dropped_for(reason), before.dropped_for(reason) + 1);
    assert_eq!(after.delivered, before.delivered, "never delivered");
    assert_eq!(after.forwarded, before.forwarded, "never forwarded");
}

#[test]
fn an_honest_message_is_delivered_once_and_forwarded_to_fanout_peers() {
    let mut e = receiver(GossipConfig::default());
    let env = chat_from(9);
    let actions = e.handle(Instant::now(), peer(2), env.clone()).unwrap();
    assert_eq!(actions.len(), 2);
    match &actions[0] {
        Action::Deliver(d) => {
            assert_eq!(d.sender, peer(9));
            assert_eq!(d.from_peer, peer(2));
        }
        other => panic!("{other:?}"),
    }
    match &actions[1] {
        Action::Send { to, envelope } => {
            assert_eq!(to.len(), 3, "fanout");
            assert!(!to.contains(&peer(2)), "not back to the sender");
            assert_eq!(envelope.hop_count, env.hop_count - 1);
            envelope.verify_embedded().unwrap();
        }
        other => panic!("{other:?}"),
    }
    dropped(&mut e, env, DropReason::Duplicate);
}

#[test]
fn a_payload_its_validator_refuses_is_neither_delivered_nor_relayed_nor_repaired() {
    let mut e = receiver(GossipConfig::default());
    e.set_validator(
        MsgType::Chat,
        Arc::new(|env: &Envelope| {
            if &env.payload[..] == b"evil" {
                Err("evil")
            } else {
                Ok(())
            }
        }),
    );
    let evil = EnvelopeBuilder::gossip(MsgType::Chat, &b"evil"[..]).sign(&id(9));
    dropped(&mut e, evil.clone(), DropReason::Invalid);
    // Remembered: another copy is a duplicate, not checked again.
    dropped(&mut e, evil, DropReason::Duplicate);
    assert_eq!(e.stats().retained, 0, "not kept for repair");
    // Other payloads of the type, and other types, pass.
    assert!(e.handle(Instant::now(), peer(2), chat_from(9)).is_ok());
    assert_eq!(DropReason::Invalid.label(), "invalid");
}

#[test]
fn a_forged_signature_is_dropped() {
    let mut e = receiver(GossipConfig::default());
    let mut env = chat_from(9);
    env.payload = Bytes::from_static(b"changed");
    dropped(&mut e, env.clone(), DropReason::BadSignature);
    // Not marked seen: the genuine message is still accepted afterwards.
    assert!(e.handle(Instant::now(), peer(2), chat_from(9)).is_ok());
}

#[test]
fn a_sender_id_that_does_not_hash_from_the_key_is_dropped() {
    let mut e = receiver(GossipConfig::default());
    let mut env = chat_from(9);
    env.sender_id = peer(8).to_string();
    dropped(&mut e, env, DropReason::SenderKeyMismatch);
    let mut env = chat_from(9);
    env.sender_pubkey = Bytes::new();
    dropped(&mut e, env, DropReason::UnknownSender);
    let mut env = chat_from(9);
    env.sender_id = "not-a-node-id".into();
    dropped(&mut e, env, DropReason::UnknownSender);
}

#[test]
fn oversized_payloads_and_bad_ids_are_dropped() {
    let mut e = receiver(GossipConfig::default());
    let big = EnvelopeBuilder::gossip(MsgType::Chat, vec![0; 64 * 1024 + 1]).sign(&id(9));
    dropped(&mut e, big, DropReason::PayloadTooLarge);
    let mut env = chat_from(9);
    env.message_id.clear();
    dropped(&mut e, env, DropReason::EmptyMessageId);
    let mut env = chat_from(9);
    env.message_id = "m".repeat(129);
    dropped(&mut e, env, DropReason::MessageIdTooLong);
    let mut env = chat_from(9);
    env.sender_id.clear();
    dropped(&mut e, env, DropReason::EmptySenderId);
    let mut env = chat_from(9);
    env.sender_id = "s".repeat(129);
    dropped(&mut e, env, DropReason::SenderIdTooLong);
    // The limit itself is fine.
    let at = EnvelopeBuilder::gossip(MsgType::Chat, vec![0; 64 * 1024]).sign(&id(9));
    assert!(e.handle(Instant::now(), peer(2), at).is_ok());
}

#[test]
fn a_replay_after_relay_is_dropped_and_point_to_point_types_are_refused() {
    let mut e = receiver(GossipConfig::default());
    let env = chat_from(9);
    e.handle(Instant::now(), peer(2), env.clone()).unwrap();
    let mut replay = env;
    replay.hop_count = 10;
    dropped(&mut e, replay, DropReason::Duplicate);
    let hello = EnvelopeBuilder::new(MsgType::Hello, Bytes::new()).sign(&id(9));
    dropped(&mut e, hello, DropReason::NotGossip);
    dropped(
        &mut e,
        EnvelopeBuilder::gossip(MsgType::Chat, Bytes::new()).sign(&id(1)),
        DropReason::FromSelf,
    );
}

#[test]
fn a_direct_key_is_never_overwritten_by_a_gossip_learned_one() {
    let mut e = receiver(GossipConfig::default());
    assert_eq!(e.keyring().get(&peer(2)).unwrap().1, Trust::Direct);
    // A message from peer 2, relayed by peer 3, carrying peer 2's key.
    e.handle(Instant::now(), peer(3), chat_from(2)).unwrap();
    assert_eq!(e.keyring().get(&peer(2)).unwrap().1, Trust::Direct);
    assert!(!e.learn_key(peer(2), id(2).public_key()));
    assert_eq!(e.keyring().get(&peer(2)).unwrap().1, Trust::Direct);
    // An unknown sender is learned with gossip trust, after verification.
    e.handle(Instant::now(), peer(3), chat_from(9)).unwrap();
    assert_eq!(e.keyring().get(&peer(9)).unwrap().1, Trust::GossipLearned);
    // A later hello upgrades it.
    e.peer_up(peer(9), id(9).public_key());
    assert_eq!(e.keyring().get(&peer(9)).unwrap().1, Trust::Direct);
}

#[test]
fn a_sender_over_its_rate_is_cut_and_recovers_when_tokens_return() {
    let mut config = GossipConfig::default();
    config.rate_per_sec = 10;
    config.rate_burst = 20;
    let mut e = receiver(config);
    let t0 = Instant::now();
    let msgs: Vec<Envelope> = (0..30).map(|_| chat_from(9)).collect();
    let accepted = msgs
        .iter()
        .filter(|m| e.handle(t0, peer(2), (*m).clone()).is_ok())
        .count();
    assert_eq!(accepted, 20, "the burst");
    assert_eq!(e.stats().dropped_for(DropReason::RateLimited), 10);
    // Rate-limited messages were not marked seen: after 1 s (10 tokens)
    // ten of them are accepted on a retry.
    let later = t0 + Duration::from_secs(1);
    let retried = msgs[20..]
        .iter()
        .filter(|m| e.handle(later, peer(2), (*m).clone()).is_ok())
        .count();
    assert_eq!(retried, 10);
    // Another sender is not affected.
    assert!(e.handle(later, peer(2), chat_from(8)).is_ok());
}

#[test]
fn an_unknown_type_is_relayed_without_a_handler_and_delivered_with_one() {
    let mut e = receiver(GossipConfig::default());
    let env = EnvelopeBuilder::gossip(MsgType::Plugin(1001), &b"x"[..]).sign(&id(9));
    let actions = e.handle(Instant::now(), peer(2), env.clone()).unwrap();
    assert_eq!(actions.len(), 1);
    assert!(matches!(&actions[0], Action::Send { to, .. } if to.len() == 3));
    assert_eq!(e.stats().unhandled, 1);
    let mut with = receiver(GossipConfig::default());
    with.register(MsgType::Plugin(1001));
    let actions = with.handle(Instant::now(), peer(2), env).unwrap();
    assert!(matches!(&actions[0], Action::Deliver(d) if d.msg_type == MsgType::Plugin(1001)));
}

#[test]
fn the_hop_budget_is_respected() {
    let mut e = receiver(GossipConfig::default());
    let last = EnvelopeBuilder::gossip(MsgType::Chat, Bytes::new())
        .hop_count(1)
        .sign(&id(9));
    let actions = e.handle(Instant::now(), peer(2), last).unwrap();
    assert_eq!(actions.len(), 1, "delivered, not forwarded");
    let zero = EnvelopeBuilder::gossip(MsgType::Chat, Bytes::new())
        .hop_count(0)
        .sign(&id(9));
    assert_eq!(e.handle(Instant::now(), peer(2), zero).unwrap().len(), 1);
}

#[test]
fn seen_ids_expire_after_the_ttl() {
    let mut config = GossipConfig::default();
    config.seen_ttl = Duration::from_secs(300);
    let mut e = receiver(config);
    let t0 = Instant::now();
    let env = chat_from(9);
    e.handle(t0, peer(2), env.clone()).unwrap();
    assert_eq!(
        e.handle(t0 + Duration::from_secs(299), peer(2), env.clone()),
        Err(DropReason::Duplicate)
    );
    e.expire(t0 + Duration::from_secs(301));
    assert_eq!(e.stats().seen, 0);
    assert!(
        e.handle(t0 + Duration::from_secs(301), peer(2), env)
            .is_ok()
    );
}

/// A fresh identity per `n`: free to make, as an attacker's are.
fn fresh(n: u32) -> Arc<Identity> {
    let mut seed = [0xA5; 32];
    seed[..4].copy_from_slice(&n.to_le_bytes());
    Arc::new(Identity::from_seed(seed))
}

fn delivered_from(actions: &[Action], sender: NodeId) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Deliver(d) if d.sender == sender))
}

#[test]
fn a_flood_from_thousands_of_fresh_identities_stays_within_every_cap() {
    let mut config = GossipConfig::default();
    config.learned_keys_cap = 300;
    config.rate_buckets_cap = 300;
    config.seen_cap = 1000;
    let mut e = receiver(config);
    let t0 = Instant::now();
    // An honest sender, not a peer, known before the flood.
    let honest = id(60);
    let env = EnvelopeBuilder::gossip(MsgType::Chat, &b"before"[..]).sign(&honest);
    assert!(delivered_from(
        &e.handle(t0, peer(2), env).unwrap(),
        *honest.node_id()
    ));
    // 5,000 fresh identities, one message each, within one second.
    for n in 0..5000u32 {
        let now = t0 + Duration::from_micros(u64::from(n) * 200);
        let env = EnvelopeBuilder::gossip(MsgType::Chat, &b"flood"[..]).sign(&fresh(n));
        assert!(e.handle(now, peer(3), env).is_ok());
        let s = e.stats();
        assert!(s.learned_keys <= 300 && s.rate_buckets <= 300 && s.seen <= 1000);
        assert!(s.retained as usize <= micelio_gossip::MAX_RETAINED);
    }
    let s = e.stats();
    assert_eq!(s.learned_keys, 300);
    assert_eq!(s.keys, 300 + 4, "the four peers' direct keys stay");
    assert_eq!(s.rate_buckets, 300);
    assert_eq!(s.seen, 1000);
    assert_eq!(s.retained as usize, micelio_gossip::MAX_RETAINED);
    assert!(s.keys_evicted >= 4700, "{s:?}");
    assert!(s.seen_evicted >= 4000, "{s:?}");
    assert!(s.retained_evicted > 0, "{s:?}");
    for n in 2..=5 {
        assert_eq!(e.keyring().get(&peer(n)).unwrap().1, Trust::Direct);
    }
    // The honest sender and a newcomer are still served.
    let now = t0 + Duration::from_secs(1);
    let env = EnvelopeBuilder::gossip(MsgType::Chat, &b"after"[..]).sign(&honest);
    assert!(delivered_from(
        &e.handle(now, peer(2), env).unwrap(),
        *honest.node_id()
    ));
    let newcomer = id(61);
    let env = EnvelopeBuilder::gossip(MsgType::Chat, &b"new"[..]).sign(&newcomer);
    assert!(delivered_from(
        &e.handle(now, peer(4), env).unwrap(),
        *newcomer.node_id()
    ));
    // A connected peer too.
    let env = EnvelopeBuilder::gossip(MsgType::Chat, &b"peer"[..]).sign(&id(5));
    assert!(delivered_from(
        &e.handle(now, peer(5), env).unwrap(),
        peer(5)
    ));
}

#[test]
fn the_repair_store_is_bounded_in_bytes() {
    let mut e = receiver(GossipConfig::default());
    let t0 = Instant::now();
    let big = Bytes::from(vec![b'x'; 60 * 1024]);
    for n in 0..300u32 {
        let env = EnvelopeBuilder::gossip(MsgType::Chat, big.clone()).sign(&fresh(n));
        assert!(e.handle(t0, peer(2), env).is_ok());
        assert!(e.stats().retained_bytes as usize <= micelio_gossip::MAX_RETAINED_BYTES);
    }
    let s = e.stats();
    assert!(s.retained < 300 && s.retained > 100, "{s:?}");
    assert!(s.retained_evicted > 0);
}

#[test]
fn an_undecodable_repair_payload_has_its_own_drop_reason() {
    let mut e = receiver(GossipConfig::default());
    for kind in [MsgType::GossipDigest, MsgType::GossipRequest] {
        // Field 1 as a varint, where a repeated string is expected.
        let env = EnvelopeBuilder::new(kind, &[0x08, 0x01][..]).sign(&id(2));
        let before = e.stats().dropped_for(DropReason::BadRepairPayload);
        assert_eq!(
            e.handle_repair(Instant::now(), peer(2), &env),
            Err(DropReason::BadRepairPayload)
        );
        let s = e.stats();
        assert_eq!(s.dropped_for(DropReason::BadRepairPayload), before + 1);
        assert_eq!(s.dropped_for(DropReason::NotGossip), 0);
    }
}

#[test]
fn repair_traffic_goes_only_to_peers_that_speak_the_extensions() {
    let mut e = Engine::new(id(1), GossipConfig::default(), 7);
    let (micelio, reference) = (id(2), id(3));
    e.peer_up_with(*micelio.node_id(), micelio.public_key(), true);
    e.peer_up_with(*reference.node_id(), reference.public_key(), false);
    let now = Instant::now();
    let (_, sent) = e.originate(now, MsgType::Chat, Bytes::from_static(b"hi"));
    match &sent[..] {
        [Action::Send { to, .. }] => assert_eq!(to.len(), 2, "gossip goes to both"),
        other => panic!("{other:?}"),
    }
    let later = now + std::time::Duration::from_secs(1);
    match &e.repair_tick(later)[..] {
        [Action::Send { to, envelope }] => {
            assert_eq!(to, &vec![peer(2)], "the digest skips the reference peer");
            assert_eq!(envelope.kind(), MsgType::GossipDigest);
        }
        other => panic!("{other:?}"),
    }
    // A repair message from a peer that did not announce the extensions is
    // never answered.
    let digest = EnvelopeBuilder::new(MsgType::GossipDigest, &b""[..]).sign(&reference);
    assert_eq!(
        e.handle_repair(now, peer(3), &digest),
        Err(DropReason::NotExtensionPeer)
    );
    // With only reference peers, no digest at all.
    e.peer_down(&peer(2));
    assert!(
        e.repair_tick(later + std::time::Duration::from_secs(1))
            .is_empty()
    );
}

#[test]
fn a_duplicate_by_a_shorter_path_moves_the_tree_parent_to_it() {
    let mut e = receiver(GossipConfig::default());
    let now = Instant::now();
    let mut env = chat_from(9);
    env.hop_count = 5;
    e.handle(now, peer(2), env.clone()).unwrap();
    // The same message again from peer 3, two hops closer to its origin.
    env.hop_count = 7;
    assert_eq!(e.handle(now, peer(3), env), Err(DropReason::Duplicate));
    assert_eq!(e.next_tick(), Some(now), "due at once");
    let actions = e.tick(now);
    let sent: Vec<(MsgType, Vec<NodeId>)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, envelope } => Some((envelope.kind(), to.clone())),
            Action::Deliver(_) => None,
        })
        .collect();
    assert!(
        sent.contains(&(MsgType::TreePrune, vec![peer(2)])),
        "{sent:?}"
    );
    assert!(
        sent.contains(&(MsgType::TreeGraft, vec![peer(3)])),
        "{sent:?}"
    );
    assert!(e.eager_peers().contains(&peer(3)));
    assert!(e.lazy_peers().contains(&peer(2)));
    // A duplicate by a path no shorter prunes its own link.
    let mut other = chat_from(8);
    other.hop_count = 5;
    e.handle(now, peer(3), other.clone()).unwrap();
    other.hop_count = 5;
    assert_eq!(e.handle(now, peer(4), other), Err(DropReason::Duplicate));
    let actions = e.tick(now);
    assert!(matches!(
        &actions[..],
        [Action::Send { to, envelope }] if to == &vec![peer(4)] && envelope.kind() == MsgType::TreePrune
    ));
    assert_eq!(e.stats().prunes_sent, 2);
}

#[test]
fn tree_messages_from_a_peer_that_did_not_announce_the_tree_are_dropped() {
    let mut e = Engine::new(id(1), GossipConfig::default(), 7);
    let p = id(2);
    e.peer_up_with(*p.node_id(), p.public_key(), true);
    let graft = Envelope {
        msg_type: MsgType::TreeGraft.as_u32(),
        ..Envelope::default()
    };
    assert_eq!(
        e.handle_tree(Instant::now(), peer(2), &graft),
        Err(DropReason::NotTreePeer)
    );
    // From a tree peer, a payload that does not decode has its reason.
    let q = id(3);
    e.peer_up(*q.node_id(), q.public_key());
    let bad = Envelope {
        msg_type: MsgType::TreeIHave.as_u32(),
        payload: Bytes::from_static(&[0x08, 0x01]),
        ..Envelope::default()
    };
    assert_eq!(
        e.handle_tree(Instant::now(), peer(3), &bad),
        Err(DropReason::BadTreePayload)
    );
    let s = e.stats();
    assert_eq!(s.dropped_for(DropReason::NotTreePeer), 1);
    assert_eq!(s.dropped_for(DropReason::BadTreePayload), 1);
}
