//! The state service over the in-memory transport: dissemination, anti-
//! entropy after cuts and loss, reference-style peers, membership,
//! persistence across restarts, rejections.

use std::time::Duration;

use bytes::Bytes;
use micelio_gossip::GossipConfig;
use micelio_gossip::test_utils::GossipNode;
use micelio_identity::Identity;
use micelio_state::store::{MemoryStateStore, SledStateStore, StateStore};
use micelio_state::{Liveness, LivenessConfig, State, StateConfig};
use micelio_testkit::wait::until_async;
use micelio_transport::TransportConfig;
use micelio_transport::memory::MemoryMesh;
use micelio_wire::limits::FEATURE_STATE_V1;

const WITHIN: Duration = Duration::from_secs(20);

struct Node {
    net: GossipNode,
    state: State,
}

fn config() -> StateConfig {
    let mut c = StateConfig::default();
    c.sync_interval = Duration::from_millis(300);
    c.liveness = LivenessConfig {
        heartbeat_interval: Duration::from_millis(200),
        suspect_after: Duration::from_millis(1500),
        dead_after: Duration::from_secs(3),
    };
    c
}

fn transport(seed: u8, micelio: bool) -> TransportConfig {
    let mut t = MemoryMesh::config(seed);
    if micelio {
        t.features.push(FEATURE_STATE_V1.to_owned());
    }
    t
}

async fn node_with(
    mesh: &MemoryMesh,
    seed: u8,
    micelio: bool,
    store: Box<dyn StateStore>,
    cfg: StateConfig,
) -> Node {
    node_gossip(mesh, seed, micelio, store, cfg, GossipConfig::default()).await
}

async fn node_gossip(
    mesh: &MemoryMesh,
    seed: u8,
    micelio: bool,
    store: Box<dyn StateStore>,
    cfg: StateConfig,
    gossip: GossipConfig,
) -> Node {
    let net = GossipNode::spawn_with(
        mesh,
        MemoryMesh::identity(seed),
        transport(seed, micelio),
        gossip,
    )
    .await
    .unwrap();
    let mut cfg = cfg;
    cfg.node.name = format!("n{seed}");
    let state = State::spawn(
        net.identity.clone(),
        cfg,
        store,
        net.gossip.clone(),
        net.peers.clone(),
    )
    .await
    .unwrap();
    Node { net, state }
}

async fn node(mesh: &MemoryMesh, seed: u8) -> Node {
    node_with(
        mesh,
        seed,
        true,
        Box::new(MemoryStateStore::new()),
        config(),
    )
    .await
}

impl Node {
    async fn stop(&self) {
        self.state.shutdown().await;
        self.net.shutdown().await;
    }

    async fn value(&self, key: &str) -> Option<Bytes> {
        self.state.get(key).await.unwrap().map(|e| e.value)
    }

    /// (key, ts) of every live entry that is not membership.
    async fn data(&self) -> Vec<(String, u64)> {
        self.state
            .scan("", usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| !e.sub_key().starts_with("node/"))
            .map(|e| (e.key, e.ts))
            .collect()
    }
}

/// Waits until every node holds the same `want` data entries; on timeout
/// the panic says what each holds.
async fn converged(nodes: &[&Node], want: usize) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let mut maps = Vec::new();
        for n in nodes {
            maps.push(n.data().await);
        }
        if maps[0].len() == want && maps.iter().all(|m| *m == maps[0]) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let mut why = String::new();
            for (n, m) in nodes.iter().zip(&maps) {
                let s = n.state.stats().await.unwrap();
                why += &format!("\n{}: {} entries, {s:?}", n.net.node_id().short(8), m.len());
            }
            panic!("maps did not converge to {want} entries within {WITHIN:?}:{why}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reaches_every_node_and_is_durable_when_acknowledged() {
    let mesh = MemoryMesh::new();
    let (a, b, c) = (
        node(&mesh, 1).await,
        node(&mesh, 2).await,
        node(&mesh, 3).await,
    );
    a.net.link(&b.net, WITHIN).await.unwrap();
    b.net.link(&c.net, WITHIN).await.unwrap();
    let e = a.state.set("color", "blue").await.unwrap();
    assert_eq!(e.key, a.state.own_key("color"));
    until_async(WITHIN, "c sees the write", || async {
        c.value(&e.key).await.as_deref() == Some(&b"blue"[..])
    })
    .await;
    let d = a.state.delete("color").await.unwrap();
    assert!(d.deleted && d.ts > e.ts);
    until_async(WITHIN, "c sees the delete", || async {
        c.value(&e.key).await.is_none()
    })
    .await;
    // Writes outside the rules are refused with a reason.
    assert!(a.state.set("", "x").await.is_err());
    assert!(a.state.set("k", vec![0u8; 4097]).await.is_err());
    let stats = c.state.stats().await.unwrap();
    assert!(stats.accepted_gossip >= 2, "{stats:?}");
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_both_sides_of_a_cut_converge_after_it_heals() {
    let mesh = MemoryMesh::new();
    let nodes = [
        node(&mesh, 1).await,
        node(&mesh, 2).await,
        node(&mesh, 3).await,
        node(&mesh, 4).await,
    ];
    // A line 1-2-3-4, cut in the middle.
    for w in nodes.windows(2) {
        w[0].net.link(&w[1].net, WITHIN).await.unwrap();
    }
    mesh.cut(&nodes[1].net.peers, &nodes[2].net.peers);
    until_async(WITHIN, "the cut took", || async {
        !nodes[1].net.peers.is_connected(&nodes[2].net.node_id())
    })
    .await;
    for i in 0..150 {
        nodes[0].state.set(&format!("left/{i}"), "l").await.unwrap();
        nodes[3]
            .state
            .set(&format!("right/{i}"), "r")
            .await
            .unwrap();
    }
    // Both sides overwrite one of their own keys too.
    nodes[0].state.set("left/0", "newer").await.unwrap();
    converged(&[&nodes[0], &nodes[1]], 150).await;
    converged(&[&nodes[2], &nodes[3]], 150).await;
    mesh.restore(&nodes[1].net.peers, &nodes[2].net.peers);
    nodes[1].net.link(&nodes[2].net, WITHIN).await.unwrap();
    let refs: Vec<&Node> = nodes.iter().collect();
    converged(&refs, 300).await;
    assert_eq!(
        nodes[3]
            .value(&nodes[0].state.own_key("left/0"))
            .await
            .as_deref(),
        Some(&b"newer"[..])
    );
    let s = nodes[2].state.stats().await.unwrap();
    assert!(s.sessions_opened + s.sessions_accepted > 0, "{s:?}");
    for n in &nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_loss_does_not_keep_maps_apart() {
    let mesh = MemoryMesh::new();
    let nodes = [
        node(&mesh, 1).await,
        node(&mesh, 2).await,
        node(&mesh, 3).await,
    ];
    nodes[0].net.link(&nodes[1].net, WITHIN).await.unwrap();
    nodes[1].net.link(&nodes[2].net, WITHIN).await.unwrap();
    mesh.network().set_loss_seeded(0.2, 7);
    for i in 0..100 {
        nodes[i % 3].state.set(&format!("k{i}"), "v").await.unwrap();
    }
    mesh.network().set_loss(0.0);
    let refs: Vec<&Node> = nodes.iter().collect();
    converged(&refs, 100).await;
    for n in &nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_style_peer_is_synced_with_type_7_and_8() {
    let mesh = MemoryMesh::new();
    let a = node(&mesh, 1).await;
    for i in 0..2500 {
        a.state.set(&format!("k{i}"), "v").await.unwrap();
    }
    // A node whose hello lacks micelio/state/1 (as a reference node): it
    // gets every entry in pages of at most 1,000, answering a type 7.
    let r = node_with(&mesh, 2, false, Box::new(MemoryStateStore::new()), config()).await;
    a.net.link(&r.net, WITHIN).await.unwrap();
    converged(&[&a, &r], 2500).await;
    let sa = a.state.stats().await.unwrap();
    assert!(sa.requests_answered >= 1, "{sa:?}");
    assert!(sa.pages_sent >= 3, "{sa:?}");
    assert_eq!(sa.sessions_opened, 0, "no type 16 to a reference peer");
    let sr = r.state.stats().await.unwrap();
    assert!(sr.requests_sent >= 1);
    a.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_alive_dead_and_left_mesh_wide() {
    let mesh = MemoryMesh::new();
    let (a, b, c) = (
        node(&mesh, 1).await,
        node(&mesh, 2).await,
        node(&mesh, 3).await,
    );
    a.net.link(&b.net, WITHIN).await.unwrap();
    b.net.link(&c.net, WITHIN).await.unwrap();
    let liveness = |n: &Node, of: &Node| {
        let id = of.net.node_id();
        let s = n.state.clone();
        async move {
            s.members()
                .await
                .unwrap()
                .into_iter()
                .find(|m| m.node_id == id)
                .map(|m| m.liveness)
        }
    };
    // a has no link to c, and still sees it alive.
    until_async(WITHIN, "a sees c alive", || async {
        liveness(&a, &c).await == Some(Liveness::Alive)
    })
    .await;
    until_async(WITHIN, "a knows c's name", || async {
        a.state
            .members()
            .await
            .unwrap()
            .iter()
            .any(|m| m.name == "n3")
    })
    .await;
    // A clean stop shows as left at once.
    c.stop().await;
    until_async(WITHIN, "a sees c left", || async {
        liveness(&a, &c).await == Some(Liveness::Left)
    })
    .await;
    // A node that vanishes is suspect, then dead.
    b.net.shutdown().await;
    until_async(WITHIN, "a sees b dead", || async {
        liveness(&a, &b).await == Some(Liveness::Dead)
    })
    .await;
    b.state.shutdown().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_reloads_its_map_and_its_clock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mesh = MemoryMesh::new();
    let store = || Box::new(SledStateStore::open(&path, 1 << 20).unwrap());
    let a = node_with(&mesh, 1, true, store(), config()).await;
    let last = a.state.set("x", "1").await.unwrap();
    a.stop().await;
    drop(a);
    let a = node_with(&mesh, 1, true, store(), config()).await;
    assert_eq!(a.value(&last.key).await.as_deref(), Some(&b"1"[..]));
    let next = a.state.set("x", "2").await.unwrap();
    assert!(
        next.ts > last.ts,
        "the clock went on: {} > {}",
        next.ts,
        last.ts
    );
    a.stop().await;
}

/// An entry of `author` at `key`, signed by `signer`.
fn entry(signer: &Identity, key: String, value: &[u8], ts: u64) -> micelio_wire::proto::StateEntry {
    let mut e = micelio_wire::proto::StateEntry {
        key,
        value: Bytes::copy_from_slice(value),
        lamport_ts: ts,
        ..Default::default()
    };
    e.sign(signer);
    e
}

fn type6(e: &micelio_wire::proto::StateEntry) -> Bytes {
    micelio_wire::WireMessage::encode_bytes(&micelio_wire::proto::StateUpdate {
        entry: Some(e.clone()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_entry_is_refused_counted_and_never_stored_or_forwarded() {
    let mesh = MemoryMesh::new();
    let (a, b, c) = (
        node(&mesh, 1).await,
        node(&mesh, 2).await,
        node(&mesh, 3).await,
    );
    // a - b - c: whatever c gets from a, b relayed.
    a.net.link(&b.net, WITHIN).await.unwrap();
    b.net.link(&c.net, WITHIN).await.unwrap();
    let me = a.net.identity.clone();
    let ns = |sub: &str| format!("{}/{sub}", a.net.node_id());
    let stranger = Identity::from_seed([77; 32]);
    let mut bad_sig = entry(&me, ns("sig"), b"v", 5);
    bad_sig.value = Bytes::from_static(b"changed after signing");
    let outside = entry(&me, format!("{}/x", b.net.node_id()), b"v", 5);
    let mut mismatch = entry(&stranger, ns("who"), b"evil", 5);
    mismatch.node_id = a.net.node_id().to_string();
    let future = entry(&me, ns("late"), b"v", (1 << 62) + 1);
    let long_key = entry(&me, ns(&"k".repeat(250)), b"v", 5);
    let long_value = entry(&me, ns("big"), &[b'x'; 4097], 5);
    let bad: Vec<(&str, Bytes, String)> = vec![
        ("bad_signature", type6(&bad_sig), bad_sig.key.clone()),
        ("outside_namespace", type6(&outside), outside.key.clone()),
        ("author_mismatch", type6(&mismatch), mismatch.key.clone()),
        ("timestamp_too_large", type6(&future), future.key.clone()),
        ("key_too_long", type6(&long_key), long_key.key.clone()),
        ("value_too_long", type6(&long_value), long_value.key.clone()),
        (
            "malformed",
            Bytes::from_static(b"\xff\xff not protobuf"),
            String::new(),
        ),
    ];
    for (_, payload, _) in &bad {
        a.net
            .gossip
            .originate(micelio_wire::MsgType::StateUpdate, payload.clone())
            .await
            .unwrap();
    }
    // A good one after them: once c has it, b has handled them all.
    let good = a.state.set("good", "v").await.unwrap();
    until_async(WITHIN, "c has the good entry", || async {
        c.value(&good.key).await.is_some()
    })
    .await;
    until_async(WITHIN, "b counted every refusal", || async {
        let s = b.state.stats().await.unwrap();
        bad.iter()
            .all(|(label, _, _)| s.rejected.get(label) == Some(&1))
    })
    .await;
    for (label, _, key) in &bad {
        if !key.is_empty() {
            assert!(b.value(key).await.is_none(), "{label}: stored on b");
            assert!(c.value(key).await.is_none(), "{label}: reached c");
        }
    }
    // b relayed none of them: c never saw one.
    let s = c.state.stats().await.unwrap();
    assert!(
        s.rejected.is_empty(),
        "c saw refused entries: {:?}",
        s.rejected
    );
    let g = b.net.gossip.stats().await.unwrap();
    assert_eq!(g.dropped_for(micelio_gossip::DropReason::Invalid), 7);
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sync_messages_are_refused_and_counted() {
    use micelio_wire::proto::{StateRange, StateReconcile, StateSyncResponse};
    use micelio_wire::{EnvelopeBuilder, MsgType, WireMessage as _};
    let mesh = MemoryMesh::new();
    let (a, b) = (node(&mesh, 1).await, node(&mesh, 2).await);
    a.net.link(&b.net, WITHIN).await.unwrap();
    let me = a.net.identity.clone();
    let to = b.net.node_id();
    let send = |kind: MsgType, payload: Bytes| {
        let env = EnvelopeBuilder::new(kind, payload).sign(&me);
        a.net.peers.send(&to, &env).unwrap();
    };
    // A page whose entries are forged, and one that does not decode.
    let mut forged = entry(&me, format!("{}/p", a.net.node_id()), b"v", 9);
    forged.value = Bytes::from_static(b"altered");
    let outside = entry(&me, format!("{to}/p"), b"v", 9);
    send(
        MsgType::StateSyncResponse,
        StateSyncResponse {
            entries: vec![forged.clone(), outside.clone()],
        }
        .encode_bytes(),
    );
    send(
        MsgType::StateSyncResponse,
        Bytes::from_static(b"\xff\xff\xff"),
    );
    send(MsgType::StateReconcile, Bytes::from_static(b"\xff\xff\xff"));
    // A reconcile message whose ranges are out of order.
    send(
        MsgType::StateReconcile,
        StateReconcile {
            session: 77,
            opened_by_sender: true,
            ranges: vec![StateRange {
                lo: 500,
                hi: 100,
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_bytes(),
    );
    until_async(WITHIN, "b counted every bad message", || async {
        let s = b.state.stats().await.unwrap();
        s.rejected.get("bad_signature") == Some(&1)
            && s.rejected.get("outside_namespace") == Some(&1)
            && s.bad_messages.get("page_undecodable") == Some(&1)
            && s.bad_messages.get("reconcile_undecodable") == Some(&1)
            && s.bad_messages.len() >= 3
    })
    .await;
    assert!(b.value(&forged.key).await.is_none());
    assert!(b.value(&outside.key).await.is_none());
    // b still syncs with a afterwards.
    let later = a.state.set("later", "v").await.unwrap();
    until_async(WITHIN, "b has a's later write", || async {
        b.value(&later.key).await.is_some()
    })
    .await;
    for n in [a, b] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_nodes_name_reaches_nodes_beyond_its_first_peer_without_a_sync_round() {
    let mesh = MemoryMesh::new();
    // No anti-entropy rounds and no gossip repair: what reaches c past b
    // is gossip only, sent after the link.
    let mut cfg = config();
    cfg.sync_interval = Duration::from_secs(3600);
    let mut quiet = GossipConfig::default();
    quiet.repair_interval = Duration::ZERO;
    let store = || Box::new(MemoryStateStore::new());
    let b = node_gossip(&mesh, 2, true, store(), cfg.clone(), quiet.clone()).await;
    let c = node_gossip(&mesh, 3, true, store(), cfg.clone(), quiet.clone()).await;
    b.net.link(&c.net, WITHIN).await.unwrap();
    // a wrote its membership keys before it had any peer.
    let a = node_gossip(&mesh, 1, true, store(), cfg, quiet).await;
    a.net.link(&b.net, WITHIN).await.unwrap();
    let a_id = a.net.node_id();
    until_async(WITHIN, "c knows a's name", || async {
        c.state
            .members()
            .await
            .unwrap()
            .iter()
            .any(|m| m.node_id == a_id && m.name == "n1")
    })
    .await;
    for n in [a, b, c] {
        n.stop().await;
    }
}
