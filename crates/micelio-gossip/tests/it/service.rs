//! The gossip service over real peer managers on the in-memory transport:
//! star, chain, bridge and full-mesh topologies; every node gets every
//! message exactly once.

use std::time::Duration;

use bytes::Bytes;
use micelio_gossip::test_utils::GossipNode;
use micelio_gossip::{Delivered, Gossip, GossipConfig, GossipError};
use micelio_identity::{Identity, NodeId};
use micelio_testkit::wait;
use micelio_transport::TransportConfig;
use micelio_transport::memory::MemoryMesh;
use micelio_wire::proto::ChatMessage;
use micelio_wire::{MsgType, WireMessage as _};
use tokio::sync::mpsc;

/// A delivered type-3 message, decoded (gossip itself knows no chat: the
/// tests use it as a sample payload).
struct ChatLine {
    node: NodeId,
    nick: String,
    text: String,
    message_id: String,
}

impl ChatLine {
    fn from_delivered(d: &Delivered) -> Option<Self> {
        let m = ChatMessage::decode_wire(d.envelope.payload.clone()).ok()?;
        Some(Self {
            node: d.sender,
            nick: m.nick,
            text: m.text,
            message_id: d.envelope.message_id.clone(),
        })
    }
}

trait Say {
    async fn say(&self, nick: &str, text: &str) -> Result<String, GossipError>;
}

impl Say for Gossip {
    async fn say(&self, nick: &str, text: &str) -> Result<String, GossipError> {
        let payload = ChatMessage {
            nick: nick.into(),
            text: text.into(),
            timestamp: 0,
        }
        .encode_wire();
        self.originate(MsgType::Chat, payload.into()).await
    }
}

/// Bound of every wait.
const T: Duration = Duration::from_secs(10);

/// A gossip test node and the chat lines it has received so far.
struct Node {
    node: GossipNode,
    chat: mpsc::Receiver<Delivered>,
    got: Vec<ChatLine>,
}

impl std::ops::Deref for Node {
    type Target = GossipNode;
    fn deref(&self) -> &GossipNode {
        &self.node
    }
}

impl Node {
    async fn new(node: GossipNode) -> Node {
        let chat = node.gossip.subscribe(MsgType::Chat).await.unwrap();
        Node {
            node,
            chat,
            got: Vec::new(),
        }
    }

    /// Takes in what has arrived so far.
    fn drain(&mut self) {
        while let Ok(d) = self.chat.try_recv() {
            self.got.push(ChatLine::from_delivered(&d).unwrap());
        }
    }

    /// Waits for the next line, bounded.
    async fn next(&mut self, what: &str) {
        let d = tokio::time::timeout(T, self.chat.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: timed out"))
            .unwrap();
        self.got.push(ChatLine::from_delivered(&d).unwrap());
    }
}

/// A node with the default configurations (listening unless `listen` is
/// false); topologies are built by explicit dials and stay as built.
async fn node(mesh: &MemoryMesh, seed: u8, listen: bool) -> Node {
    node_with(mesh, seed, GossipConfig::default(), |c| {
        if !listen {
            c.listen = None;
        }
    })
    .await
}

async fn node_with(
    mesh: &MemoryMesh,
    seed: u8,
    gossip: GossipConfig,
    tune: impl FnOnce(&mut TransportConfig),
) -> Node {
    let mut cfg = MemoryMesh::config(seed);
    tune(&mut cfg);
    let g = GossipNode::spawn_with(mesh, MemoryMesh::identity(seed), cfg, gossip)
        .await
        .unwrap();
    Node::new(g).await
}

async fn link(a: &Node, b: &Node) {
    a.link(b, T).await.unwrap();
}

/// Waits until every node's gossip knows all of its connected peers.
async fn everyone_ready(nodes: &[Node]) {
    for n in nodes {
        assert!(
            n.ready(n.peers.peer_count(), T).await,
            "gossip never saw its peers"
        );
    }
}

async fn stop(nodes: &[&Node]) {
    for n in nodes {
        n.shutdown().await;
    }
}

/// Each node says one line; waits until every other node has every line,
/// then checks nothing arrived twice.
async fn everyone_hears_everyone_once(nodes: &mut [Node]) {
    // Give the gossip tasks the Up events before originating.
    everyone_ready(nodes).await;
    let mut ids = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        ids.push(
            n.gossip
                .say(&format!("user{i}"), &format!("line from {i}"))
                .await
                .unwrap(),
        );
    }
    let total = nodes.len();
    for (i, n) in nodes.iter_mut().enumerate() {
        while n.got.len() < total - 1 {
            n.next(&format!(
                "node {i}: line {} of {}",
                n.got.len() + 1,
                total - 1
            ))
            .await;
        }
    }
    // A duplicate would have been delivered by now: every relay finished
    // before the last first delivery plus the queue drain below.
    for n in nodes.iter() {
        let s = n.gossip.stats().await.unwrap();
        assert_eq!(s.delivered as usize, total - 1, "delivered once each");
    }
    let node_ids: Vec<NodeId> = nodes.iter().map(|n| n.node_id()).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        n.drain();
        assert_eq!(
            n.got.len(),
            total - 1,
            "node {i} got a line twice or missed one"
        );
        let mut seen: Vec<&str> = n.got.iter().map(|l| l.message_id.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), total - 1);
        for l in &n.got {
            let origin = ids.iter().position(|m| *m == l.message_id).unwrap();
            assert_ne!(origin, i, "own line delivered back");
            assert_eq!(l.nick, format!("user{origin}"));
            assert_eq!(l.text, format!("line from {origin}"));
            assert_eq!(l.node, node_ids[origin], "verified originator");
        }
    }
    for n in nodes.iter() {
        n.shutdown().await;
    }
}

/// `n` nodes (listening where `listen` says), then the links `edges`
/// (dialler, dialled), each up before the next.
async fn build(
    mesh: &MemoryMesh,
    n: u8,
    listen: impl Fn(u8) -> bool,
    edges: impl IntoIterator<Item = (usize, usize)>,
) -> Vec<Node> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(node(mesh, 100 + i, listen(i)).await);
    }
    for (a, b) in edges {
        link(&v[a], &v[b]).await;
    }
    v
}

/// Every node of the topology `edges` on `n` listening nodes hears every
/// other node's line once.
async fn check(n: u8, edges: impl IntoIterator<Item = (usize, usize)>) {
    let mut nodes = build(&MemoryMesh::new(), n, |_| true, edges).await;
    everyone_hears_everyone_once(&mut nodes).await;
}

#[tokio::test(start_paused = true)]
async fn star() {
    check(5, (1..5).map(|leaf| (leaf, 0))).await;
}

#[tokio::test(start_paused = true)]
async fn chain() {
    check(6, (1..6).map(|i| (i, i - 1))).await;
}

#[tokio::test(start_paused = true)]
async fn full_mesh() {
    check(6, (0..6).flat_map(|a| (a + 1..6).map(move |b| (a, b)))).await;
}

#[tokio::test(start_paused = true)]
async fn an_outbound_only_bridge_joins_two_meshes() {
    // 0,1,2 and 3,4,5 are two meshes; 6 listens nowhere and dials 1 and 4.
    let edges = [
        (0, 1),
        (1, 2),
        (0, 2),
        (3, 4),
        (4, 5),
        (3, 5),
        (6, 1),
        (6, 4),
    ];
    let mut n = build(&MemoryMesh::new(), 7, |i| i != 6, edges).await;
    assert!(
        !n[1].peers.is_connected(&n[4].node_id()),
        "the meshes meet only through the bridge"
    );
    everyone_hears_everyone_once(&mut n).await;
}

/// Waits until node `n` has received a line with `text`, bounded.
async fn wait_line(n: &mut Node, text: &str) {
    n.drain();
    while !n.got.iter().any(|l| l.text == text) {
        n.next(&format!("never got {text:?}")).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_partition_hears_only_itself_and_catches_up_when_healed() {
    let mesh = MemoryMesh::new();
    let mut n = build(&mesh, 4, |_| true, (1..4).map(|i| (i, i - 1))).await;
    everyone_ready(&n).await;
    // Cut the chain in the middle: {0,1} | {2,3}.
    mesh.cut(&n[1].peers, &n[2].peers);
    wait::eventually(T, "the cut seen on both sides", || {
        !n[1].peers.is_connected(&n[2].node_id()) && !n[2].peers.is_connected(&n[1].node_id())
    })
    .await;
    n[0].gossip.say("a", "during the cut").await.unwrap();
    n[3].gossip.say("d", "other side").await.unwrap();
    wait_line(&mut n[1], "during the cut").await;
    wait_line(&mut n[2], "other side").await;
    // Nothing crossed the cut: each side has only its own line.
    for (i, foreign) in [
        (0, "other side"),
        (1, "other side"),
        (2, "during the cut"),
        (3, "during the cut"),
    ] {
        n[i].drain();
        assert!(
            !n[i].got.iter().any(|l| l.text == foreign),
            "node {i} heard across the cut"
        );
    }
    // Heal: the link comes back (the bootstrap-less pair is redialled by
    // hand here), and repair brings each side the other's recent line.
    mesh.restore(&n[1].peers, &n[2].peers);
    link(&n[2], &n[1]).await;
    wait_line(&mut n[0], "other side").await;
    wait_line(&mut n[3], "during the cut").await;
    wait_line(&mut n[1], "other side").await;
    wait_line(&mut n[2], "during the cut").await;
    for (i, node) in n.iter_mut().enumerate() {
        node.drain();
        let mut texts: Vec<&str> = node.got.iter().map(|l| l.text.as_str()).collect();
        texts.sort_unstable();
        let before = texts.len();
        texts.dedup();
        assert_eq!(before, texts.len(), "node {i} got a line twice");
    }
    for node in n.iter() {
        node.shutdown().await;
    }
}

/// Waits until `n`'s gossip knows `peers` connected peers.
async fn knows(n: &Node, peers: usize) {
    assert!(n.ready(peers, T).await, "gossip never saw its peers");
}

#[tokio::test(start_paused = true)]
async fn a_point_to_point_message_carries_the_connected_peer_as_sender() {
    let mesh = MemoryMesh::new();
    let (a, b) = (node(&mesh, 60, true).await, node(&mesh, 61, true).await);
    link(&a, &b).await;
    knows(&b, 1).await;
    let mut sync = b.gossip.subscribe(MsgType::StateSyncRequest).await.unwrap();
    let someone_else = Identity::from_seed([62; 32]);
    let me = Identity::from_seed([60; 32]);
    let claims = |who: &Identity, body: &'static [u8]| {
        micelio_wire::EnvelopeBuilder::new(MsgType::StateSyncRequest, body).sign(who)
    };
    // Claims to be another node: refused, counted.
    a.peers
        .send(&b.node_id(), &claims(&someone_else, b"forged"))
        .unwrap();
    // Names nobody: delivered as from the connected peer.
    let mut anonymous = claims(&me, b"anonymous");
    anonymous.sender_id.clear();
    a.peers.send(&b.node_id(), &anonymous).unwrap();
    // Honest.
    a.peers.send(&b.node_id(), &claims(&me, b"honest")).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(5), sync.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(d);
    }
    for d in &got {
        assert_eq!(d.sender, a.node_id(), "the connected peer");
        assert_eq!(d.from_peer, a.node_id());
        assert_ne!(&d.envelope.payload[..], b"forged");
    }
    let s = b.gossip.stats().await.unwrap();
    assert_eq!(s.dropped_for(micelio_gossip::DropReason::SenderNotPeer), 1);
    assert!(sync.try_recv().is_err(), "the forged one never arrives");
    stop(&[&a, &b]).await;
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_falls_behind_has_its_drops_counted() {
    let mesh = MemoryMesh::new();
    let mut config = GossipConfig::default();
    config.rate_per_sec = 1_000_000;
    config.rate_burst = 1_000_000;
    let mk = |seed: u8| {
        let mut cfg = MemoryMesh::config(seed);
        cfg.send_queue = 4096;
        let config = config.clone();
        let mesh = &mesh;
        async move {
            GossipNode::spawn_with(mesh, MemoryMesh::identity(seed), cfg, config)
                .await
                .unwrap()
        }
    };
    let (na, nb) = (mk(63).await, mk(64).await);
    nb.link(&na, T).await.unwrap();
    let (a, b) = (&na.gossip, &nb.gossip);
    // One subscriber that reads, one that never does.
    let mut reader = b.subscribe(MsgType::Chat).await.unwrap();
    let _stuck = b.subscribe(MsgType::Chat).await.unwrap();
    let total = 1500u64;
    let mut read = 0u64;
    for _ in 0..total {
        a.say("x", "line").await.unwrap();
        while reader.try_recv().is_ok() {
            read += 1;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while read < total {
        assert!(tokio::time::Instant::now() < deadline, "read {read}");
        match tokio::time::timeout(Duration::from_secs(5), reader.recv()).await {
            Ok(Some(_)) => read += 1,
            _ => panic!("reader got {read} of {total}"),
        }
    }
    let s = b.stats().await.unwrap();
    assert_eq!(s.delivered, total);
    assert_eq!(s.subscribers.len(), 2, "{:?}", s.subscribers);
    let (r, st) = (&s.subscribers[0], &s.subscribers[1]);
    assert_eq!((r.delivered, r.dropped), (total, 0));
    assert_eq!(st.delivered, 1024, "its queue filled");
    assert_eq!(st.dropped, total - 1024, "and the rest was counted");
    assert_eq!(s.subscriber_drops(), total - 1024);
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reference_like_peer_gets_no_repair_traffic_while_micelio_peers_repair() {
    let mesh = MemoryMesh::new();
    // m1 says a line while alone; m2 and a reference-like node r (no
    // extensions announced, no repair of its own, as the Go node) then join.
    let m1 = node(&mesh, 70, true).await;
    let mut m2 = node(&mesh, 71, true).await;
    let mut gc = GossipConfig::default();
    gc.repair_interval = Duration::ZERO;
    let mut r = node_with(&mesh, 72, gc, |c| c.features = Vec::new()).await;
    m1.gossip.say("m", "said alone").await.unwrap();
    link(&m2, &m1).await;
    link(&r, &m1).await;
    link(&r, &m2).await;
    knows(&m1, 2).await;
    // m2 is repaired from m1's digest.
    wait_line(&mut m2, "said alone").await;
    // Several more repair rounds, with traffic: still nothing for r.
    for i in 0..3 {
        m1.gossip.say("m", &format!("later {i}")).await.unwrap();
        wait_line(&mut r, &format!("later {i}")).await;
        wait_line(&mut m2, &format!("later {i}")).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let rs = r.gossip.stats().await.unwrap();
    assert_eq!(rs.repair_received, 0, "no type 11/12 frame reached r");
    assert_eq!(rs.tree_received, 0, "no type 13/14/15 frame reached r");
    // r may still get the repaired line: m2 relays it as ordinary gossip.
    let (s1, s2) = (
        m1.gossip.stats().await.unwrap(),
        m2.gossip.stats().await.unwrap(),
    );
    assert!(
        s1.digests_sent > 0 && s2.repair_received > 0,
        "{s1:?} {s2:?}"
    );
    assert!(s1.repairs_served > 0, "m1 answered m2's request");
    stop(&[&m1, &m2, &r]).await;
}

/// Sum over `nodes` of a counter.
async fn total(nodes: &[Node], f: impl Fn(&micelio_gossip::GossipStats) -> u64) -> u64 {
    let mut t = 0;
    for n in nodes {
        t += f(&n.gossip.stats().await.unwrap());
    }
    t
}

#[tokio::test(start_paused = true)]
async fn a_full_mesh_of_services_settles_into_a_tree_and_then_each_node_gets_one_copy() {
    let mesh = MemoryMesh::new();
    let n = 6u8;
    let mut nodes = build(
        &mesh,
        n,
        |_| true,
        (0..n as usize).flat_map(|a| (a + 1..n as usize).map(move |b| (a, b))),
    )
    .await;
    everyone_ready(&nodes).await;
    // Messages prune the duplicate links away…
    for k in 0..10 {
        let from = k % nodes.len();
        let line = format!("warm {k}");
        nodes[from].gossip.say("u", &line).await.unwrap();
        for (i, node) in nodes.iter_mut().enumerate() {
            if i != from {
                wait_line(node, &line).await;
            }
        }
        // Let the prunes land.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let eager = total(&nodes, |s| s.tree_eager_peers).await;
    assert_eq!(
        eager,
        2 * (u64::from(n) - 1),
        "a spanning tree: N - 1 links, two ends each"
    );
    assert!(total(&nodes, |s| s.prunes_sent).await > 0);
    // …after which a message costs one data frame per node.
    let before = total(&nodes, |s| s.received).await;
    nodes[3].gossip.say("u", "on the tree").await.unwrap();
    for (i, node) in nodes.iter_mut().enumerate() {
        if i != 3 {
            wait_line(node, "on the tree").await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = total(&nodes, |s| s.received).await;
    assert_eq!(after - before, u64::from(n) - 1, "no duplicate frame");
    assert!(
        total(&nodes, |s| s.ihave_ids_sent).await > 0,
        "lazy links got ids"
    );
    assert!(total(&nodes, |s| s.control_bytes_sent).await > 0);
    assert!(total(&nodes, |s| s.data_bytes_sent).await > 0);
    let refs: Vec<&Node> = nodes.iter().collect();
    stop(&refs).await;
}

#[tokio::test(start_paused = true)]
async fn paced_originations_leave_in_order_under_the_mesh_rate_and_overflow_is_refused() {
    let mesh = MemoryMesh::new();
    let (a, mut b) = (node(&mesh, 80, true).await, node(&mesh, 81, true).await);
    link(&a, &b).await;
    knows(&a, 1).await;
    knows(&b, 1).await;
    let config = a.gossip.config().clone();
    let (mut accepted, mut refused) = (0usize, 0usize);
    for i in 0..300u32 {
        match a
            .gossip
            .try_originate(MsgType::Chat, i.to_be_bytes().to_vec().into())
        {
            Ok(()) => accepted += 1,
            Err(GossipError::QueueFull(n)) => {
                assert_eq!(n, config.origin_queue);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(accepted, config.origin_queue, "the queue is bounded");
    assert_eq!(refused, 300 - config.origin_queue);
    let start = tokio::time::Instant::now();
    for k in 0..accepted {
        let d = tokio::time::timeout(Duration::from_secs(120), b.chat.recv())
            .await
            .unwrap()
            .unwrap();
        let n = u32::from_be_bytes(d.envelope.payload[..4].try_into().unwrap());
        assert_eq!(n as usize, k, "in order");
        // No faster than the origin's bucket: burst, then the pace.
        let earliest =
            k.saturating_sub(config.pace_burst as usize) as f64 / f64::from(config.pace_per_sec);
        let at = start.elapsed().as_secs_f64();
        assert!(at + 0.01 >= earliest, "message {k} left at {at} s");
    }
    let (sa, sb) = (
        a.gossip.stats().await.unwrap(),
        b.gossip.stats().await.unwrap(),
    );
    assert_eq!(sa.origin_refused as usize, refused);
    assert_eq!(sa.origin_queued, 0);
    assert_eq!(sb.dropped_for(micelio_gossip::DropReason::RateLimited), 0);
    // Not gossip, or too large: refused at once.
    assert!(matches!(
        a.gossip
            .try_originate(MsgType::StateSyncRequest, Bytes::new()),
        Err(GossipError::NotGossip(_))
    ));
    stop(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_events_list_current_peers_first_then_comings_and_goings() {
    use micelio_transport::PeerEvent;
    let mesh = MemoryMesh::new();
    let a = GossipNode::spawn(&mesh, 1).await.unwrap();
    let b = GossipNode::spawn(&mesh, 2).await.unwrap();
    let c = GossipNode::spawn(&mesh, 3).await.unwrap();
    a.link(&b, T).await.unwrap();
    // A subscriber that comes late hears of b at once.
    let mut events = a.gossip.subscribe_peers().await.unwrap();
    let first = tokio::time::timeout(T, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first, PeerEvent::Up(p) if p.node_id == b.node_id()),
        "{first:?}"
    );
    // Then c coming, and b going.
    a.link(&c, T).await.unwrap();
    let next = tokio::time::timeout(T, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&next, PeerEvent::Up(p) if p.node_id == c.node_id()),
        "{next:?}"
    );
    b.shutdown().await;
    let gone = tokio::time::timeout(T, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&gone, PeerEvent::Down { node_id, .. } if *node_id == b.node_id()),
        "{gone:?}"
    );
    a.shutdown().await;
    c.shutdown().await;
}
