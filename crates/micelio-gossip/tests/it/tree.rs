//! The broadcast tree in a deterministic discrete-event simulator: engines
//! only (no sockets, no clock), a virtual time, a latency per link, frames
//! optionally lost, links cut and added, nodes killed and added, nodes that
//! behave like the reference (random fanout, no extension). Each message
//! must reach every node of the originator's connected component exactly
//! once; a stable mesh must thin out into a spanning tree.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use micelio_gossip::{Action, Engine, GossipConfig, PeerCaps};
use micelio_identity::{Identity, NodeId};
use micelio_wire::{Envelope, MsgType};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

/// A frame in flight.
struct Frame {
    to: usize,
    from: usize,
    env: Envelope,
}

/// What a simulated node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// This version: broadcast tree and repair.
    Micelio,
    /// A micelio node from before the tree: random fanout and repair.
    Legacy,
    /// A reference node: random fanout, no extension at all.
    Reference,
}

struct Node {
    engine: Engine,
    identity: Arc<Identity>,
    kind: Kind,
    alive: bool,
}

struct Sim {
    nodes: Vec<Node>,
    index: HashMap<NodeId, usize>,
    /// Live links, with their one-way latency.
    links: BTreeMap<(usize, usize), Duration>,
    /// (due, sequence) → frame.
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    frames: HashMap<u64, Frame>,
    seq: u64,
    /// Virtual time since `epoch`.
    now: Duration,
    epoch: Instant,
    next_repair: Duration,
    rng: SmallRng,
    loss: f64,
    /// Deliveries per (message id, node).
    delivered: HashMap<String, BTreeMap<usize, u32>>,
    /// Data frames received per node (duplicates included).
    data_frames: u64,
}

fn key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    fn new(seed: u64) -> Self {
        Sim {
            nodes: Vec::new(),
            index: HashMap::new(),
            links: BTreeMap::new(),
            queue: BinaryHeap::new(),
            frames: HashMap::new(),
            seq: 0,
            now: Duration::ZERO,
            epoch: Instant::now(),
            next_repair: Duration::from_secs(1),
            rng: SmallRng::seed_from_u64(seed),
            loss: 0.0,
            delivered: HashMap::new(),
            data_frames: 0,
        }
    }

    fn at(&self) -> Instant {
        self.epoch + self.now
    }

    /// Adds a node of this version.
    fn add(&mut self) -> usize {
        self.add_kind(Kind::Micelio)
    }

    /// Adds a node of `kind`.
    fn add_kind(&mut self, kind: Kind) -> usize {
        let i = self.nodes.len();
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        seed[31] = 0x74;
        let identity = Arc::new(Identity::from_seed(seed));
        let mut config = GossipConfig::default();
        if kind != Kind::Micelio {
            config.broadcast_tree = false;
        }
        if kind == Kind::Reference {
            config.repair_interval = Duration::ZERO;
        }
        let mut engine = Engine::new(identity.clone(), config, i as u64);
        engine.register(MsgType::Chat);
        self.index.insert(*identity.node_id(), i);
        self.nodes.push(Node {
            engine,
            identity,
            kind,
            alive: true,
        });
        i
    }

    /// What `seen_by` learns of `of` from its hello.
    fn caps(&self, of: usize, seen_by: usize) -> PeerCaps {
        match (self.nodes[of].kind, self.nodes[seen_by].kind) {
            // A reference node reads nobody's features; nobody reads any
            // in a reference node's hello.
            (Kind::Reference, _) | (_, Kind::Reference) => PeerCaps::REFERENCE,
            (Kind::Legacy, _) => {
                let mut c = PeerCaps::MICELIO;
                c.tree = false;
                c
            }
            _ => PeerCaps::MICELIO,
        }
    }

    fn link(&mut self, a: usize, b: usize) {
        let latency = Duration::from_micros(self.rng.random_range(500..5_000));
        self.links.insert(key(a, b), latency);
        let (ia, ib) = (
            self.nodes[a].identity.clone(),
            self.nodes[b].identity.clone(),
        );
        let (ca, cb) = (self.caps(b, a), self.caps(a, b));
        self.nodes[a]
            .engine
            .peer_up_caps(*ib.node_id(), ib.public_key(), ca);
        self.nodes[b]
            .engine
            .peer_up_caps(*ia.node_id(), ia.public_key(), cb);
    }

    fn cut(&mut self, a: usize, b: usize) {
        if self.links.remove(&key(a, b)).is_none() {
            return;
        }
        let (na, nb) = (
            *self.nodes[a].identity.node_id(),
            *self.nodes[b].identity.node_id(),
        );
        self.nodes[a].engine.peer_down(&nb);
        self.nodes[b].engine.peer_down(&na);
    }

    fn kill(&mut self, i: usize) {
        let linked: Vec<(usize, usize)> = self
            .links
            .keys()
            .filter(|(a, b)| *a == i || *b == i)
            .copied()
            .collect();
        for (a, b) in linked {
            self.cut(a, b);
        }
        self.nodes[i].alive = false;
    }

    fn send(&mut self, from: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Deliver(d) => {
                    *self
                        .delivered
                        .entry(d.envelope.message_id.clone())
                        .or_default()
                        .entry(from)
                        .or_default() += 1;
                }
                Action::Send { to, envelope } => {
                    for peer in to {
                        let j = self.index[&peer];
                        let Some(latency) = self.links.get(&key(from, j)).copied() else {
                            continue;
                        };
                        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
                            continue;
                        }
                        self.seq += 1;
                        self.queue.push(Reverse((self.now + latency, self.seq)));
                        self.frames.insert(
                            self.seq,
                            Frame {
                                to: j,
                                from,
                                env: envelope.clone(),
                            },
                        );
                    }
                }
            }
        }
    }

    /// Runs events until virtual time `until`.
    fn run_until(&mut self, until: Duration) {
        loop {
            let frame_at = self.queue.peek().map(|Reverse((t, _))| *t);
            let tick = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.alive)
                .filter_map(|(i, n)| n.engine.next_tick().map(|t| (t - self.epoch, i)))
                .min();
            let mut next = self.next_repair;
            if let Some(t) = frame_at {
                next = next.min(t);
            }
            if let Some((t, _)) = tick {
                next = next.min(t);
            }
            if next > until {
                self.now = until;
                return;
            }
            self.now = next.max(self.now);
            if frame_at == Some(next) {
                let Some(Reverse((_, seq))) = self.queue.pop() else {
                    unreachable!()
                };
                let f = self.frames.remove(&seq).unwrap();
                if !self.links.contains_key(&key(f.from, f.to)) {
                    continue; // the link went down while it flew
                }
                let from_id = *self.nodes[f.from].identity.node_id();
                let at = self.at();
                let engine = &mut self.nodes[f.to].engine;
                let result = match f.env.kind() {
                    MsgType::GossipDigest | MsgType::GossipRequest => {
                        engine.handle_repair(at, from_id, &f.env)
                    }
                    MsgType::TreeIHave | MsgType::TreeGraft | MsgType::TreePrune => {
                        engine.handle_tree(at, from_id, &f.env)
                    }
                    _ => {
                        self.data_frames += 1;
                        engine.handle(at, from_id, f.env)
                    }
                };
                if let Ok(actions) = result {
                    self.send(f.to, actions);
                }
            } else if let Some((t, i)) = tick
                && t == next
            {
                let at = self.at();
                let actions = self.nodes[i].engine.tick(at);
                self.send(i, actions);
            } else {
                self.next_repair += Duration::from_secs(1);
                let at = self.at();
                for i in 0..self.nodes.len() {
                    if self.nodes[i].alive {
                        let actions = self.nodes[i].engine.repair_tick(at);
                        self.send(i, actions);
                    }
                }
            }
        }
    }

    /// Originates a message at `origin` and returns its id.
    fn say(&mut self, origin: usize) -> String {
        let at = self.at();
        let (env, actions) = self.nodes[origin]
            .engine
            .originate(at, MsgType::Chat, "hello".into());
        self.send(origin, actions);
        self.delivered.entry(env.message_id.clone()).or_default();
        env.message_id
    }

    /// Runs for `secs` virtual seconds.
    fn settle(&mut self, secs: u64) {
        let until = self.now + Duration::from_secs(secs);
        self.run_until(until);
    }

    /// The connected component of `origin` (live links).
    fn component(&self, origin: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::from([origin]);
        let mut todo = VecDeque::from([origin]);
        while let Some(n) = todo.pop_front() {
            for (a, b) in self.links.keys() {
                let other = if *a == n {
                    *b
                } else if *b == n {
                    *a
                } else {
                    continue;
                };
                if seen.insert(other) {
                    todo.push_back(other);
                }
            }
        }
        seen
    }

    /// Message `id` from `origin` reached every other node of its
    /// component, each exactly once, and no one else.
    #[track_caller]
    fn assert_reached(&self, id: &str, origin: usize) {
        let want: BTreeSet<usize> = self
            .component(origin)
            .into_iter()
            .filter(|n| *n != origin)
            .collect();
        let got = &self.delivered[id];
        let nodes: BTreeSet<usize> = got.keys().copied().collect();
        let mut detail = String::new();
        for m in want.difference(&nodes) {
            let e = &self.nodes[*m].engine;
            let mid = *self.nodes[*m].identity.node_id();
            for (a, b) in self.links.keys().filter(|(a, b)| a == m || b == m) {
                let o = if a == m { *b } else { *a };
                let oid = *self.nodes[o].identity.node_id();
                detail += &format!(
                    "\n  missed by {m}, link to {o}: {m} eager={} {o} eager={} {o} has it={}",
                    e.eager_peers().contains(&oid),
                    self.nodes[o].engine.eager_peers().contains(&mid),
                    got.contains_key(&o) || o == origin
                );
            }
        }
        assert_eq!(
            nodes, want,
            "message from {origin} reached the wrong nodes{detail}"
        );
        assert!(got.values().all(|&c| c == 1), "exactly once: {got:?}");
    }

    /// Links both ends treat as eager.
    fn eager_links(&self) -> Vec<(usize, usize)> {
        self.links
            .keys()
            .filter(|(a, b)| {
                let (na, nb) = (
                    *self.nodes[*a].identity.node_id(),
                    *self.nodes[*b].identity.node_id(),
                );
                self.nodes[*a].engine.eager_peers().contains(&nb)
                    && self.nodes[*b].engine.eager_peers().contains(&na)
            })
            .copied()
            .collect()
    }

    /// A random connected graph: a random spanning tree plus extra links
    /// until the mean degree is about `degree`.
    fn random_mesh(&mut self, n: usize, degree: usize) {
        let first = self.nodes.len();
        for _ in 0..n {
            self.add();
        }
        for i in 1..n {
            let j = self.rng.random_range(0..i);
            self.link(first + i, first + j);
        }
        let extra = (n * degree / 2).saturating_sub(n - 1);
        let mut added = 0;
        while added < extra {
            let (a, b) = (self.rng.random_range(0..n), self.rng.random_range(0..n));
            if a != b && !self.links.contains_key(&key(first + a, first + b)) {
                self.link(first + a, first + b);
                added += 1;
            }
        }
    }
}

/// The eager links form a spanning tree of the (connected) mesh: N − 1 of
/// them, reaching every node.
#[track_caller]
fn assert_spanning_tree(sim: &Sim) {
    let eager = sim.eager_links();
    let live: Vec<usize> = (0..sim.nodes.len())
        .filter(|i| sim.nodes[*i].alive)
        .collect();
    assert_eq!(eager.len(), live.len() - 1, "a tree has N - 1 links");
    let mut seen = BTreeSet::from([live[0]]);
    let mut todo = VecDeque::from([live[0]]);
    while let Some(n) = todo.pop_front() {
        for (a, b) in &eager {
            let other = if *a == n {
                *b
            } else if *b == n {
                *a
            } else {
                continue;
            };
            if seen.insert(other) {
                todo.push_back(other);
            }
        }
    }
    assert_eq!(seen.len(), live.len(), "the eager links span the mesh");
}

#[test]
fn a_stable_mesh_converges_to_a_spanning_tree_and_then_sends_each_node_one_copy() {
    let mut sim = Sim::new(1);
    let n = 40;
    sim.random_mesh(n, 5);
    let grafted = |sim: &Sim| -> u64 {
        sim.nodes
            .iter()
            .map(|node| node.engine.stats().grafted_ids)
            .sum()
    };
    for k in 0..30 {
        let before = grafted(&sim);
        let id = sim.say(k % n);
        sim.settle(2);
        sim.assert_reached(&id, k % n);
        // The first messages build the tree: crossing prunes may cut it
        // too far, and a few grafts mend it. Then it stands.
        if k >= 5 {
            assert_eq!(grafted(&sim), before, "message {k} waited for a graft");
        }
    }
    assert_spanning_tree(&sim);
    // Once the tree stands, a message costs one data frame per node.
    let before = sim.data_frames;
    let id = sim.say(7);
    sim.settle(2);
    sim.assert_reached(&id, 7);
    assert_eq!(sim.data_frames - before, n as u64 - 1, "no duplicates");
}

#[test]
fn cut_links_are_repaired_by_grafts_within_one_message() {
    let mut sim = Sim::new(2);
    let n = 30;
    sim.random_mesh(n, 5);
    for k in 0..20 {
        let id = sim.say(k % n);
        sim.settle(2);
        sim.assert_reached(&id, k % n);
    }
    // Cut half of the tree's links (the mesh stays connected or not: the
    // check is against the component).
    let eager = sim.eager_links();
    for (a, b) in eager.iter().step_by(2) {
        sim.cut(*a, *b);
    }
    let mut grafted = false;
    for k in 0..20 {
        let origin = (k * 7) % n;
        let id = sim.say(origin);
        // Well within one repair interval: the lazy path did it.
        sim.run_until(sim.now + Duration::from_millis(900));
        sim.assert_reached(&id, origin);
        sim.settle(1);
        grafted |= sim.nodes.iter().any(|x| x.engine.stats().grafted_ids > 0);
    }
    assert!(grafted, "the tree healed by grafting");
    if sim.component(0).len() == n {
        assert_spanning_tree(&sim);
    }
}

#[test]
fn killed_and_added_nodes_leave_and_join_the_tree() {
    let mut sim = Sim::new(3);
    let n = 30;
    sim.random_mesh(n, 4);
    for k in 0..10 {
        let id = sim.say(k);
        sim.settle(2);
        sim.assert_reached(&id, k);
    }
    for victim in [3, 11, 19] {
        sim.kill(victim);
    }
    for _ in 0..5 {
        let fresh = sim.add();
        for _ in 0..3 {
            let to = loop {
                let c = sim.rng.random_range(0..fresh);
                if sim.nodes[c].alive {
                    break c;
                }
            };
            sim.link(fresh, to);
        }
    }
    let live: Vec<usize> = (0..sim.nodes.len())
        .filter(|i| sim.nodes[*i].alive)
        .collect();
    for k in 0..30 {
        let origin = live[(k * 5) % live.len()];
        let id = sim.say(origin);
        sim.settle(2);
        sim.assert_reached(&id, origin);
    }
    if sim.component(live[0]).len() == live.len() {
        assert_spanning_tree(&sim);
    }
}

#[test]
fn with_ten_percent_of_frames_lost_every_message_still_reaches_everyone_once() {
    let mut sim = Sim::new(4);
    let n = 40;
    sim.random_mesh(n, 5);
    // Let the tree form, then lose frames.
    for k in 0..10 {
        let id = sim.say(k);
        sim.settle(2);
        sim.assert_reached(&id, k);
    }
    sim.loss = 0.10;
    let mut ids = Vec::new();
    for k in 0..40 {
        ids.push((sim.say(k % n), k % n));
        sim.run_until(sim.now + Duration::from_millis(150));
    }
    // The lazy path and, behind it, the repair digests.
    sim.settle(5);
    for (id, origin) in &ids {
        sim.assert_reached(id, *origin);
    }
}

#[test]
fn a_mixed_mesh_with_reference_nodes_reaches_everyone_once() {
    let mut sim = Sim::new(5);
    let n = 30;
    sim.random_mesh(n, 4);
    // A few reference-behaving nodes, bridging into the mesh and hanging
    // off it, one of them a cut vertex (node 33 reaches node 34 only).
    let r1 = sim.add_kind(Kind::Reference);
    let r2 = sim.add_kind(Kind::Reference);
    let r3 = sim.add_kind(Kind::Reference);
    let leaf = sim.add();
    sim.link(r1, 0);
    sim.link(r1, 10);
    sim.link(r2, 5);
    sim.link(r2, r1);
    sim.link(r3, 20);
    sim.link(leaf, r3);
    let mut origins: Vec<usize> = vec![0, 7, r1, r2, r3, leaf];
    origins.extend(0..10);
    for origin in origins {
        let id = sim.say(origin);
        sim.settle(3);
        sim.assert_reached(&id, origin);
    }
    // Reference peers never take part in the tree: no tree frame reaches
    // them, and they are never pruned.
    for r in [r1, r2, r3] {
        let s = sim.nodes[r].engine.stats();
        assert_eq!(s.tree_received, 0, "node {r} got tree traffic");
        assert_eq!(s.repair_received, 0, "node {r} got repair traffic");
    }
}

#[test]
fn micelio_nodes_from_before_the_tree_are_pushed_to_and_repaired() {
    let mut sim = Sim::new(10);
    let n = 20;
    sim.random_mesh(n, 4);
    let l1 = sim.add_kind(Kind::Legacy);
    let l2 = sim.add_kind(Kind::Legacy);
    sim.link(l1, 3);
    sim.link(l1, 9);
    sim.link(l2, l1);
    for origin in [0, l1, l2, 5, 12] {
        let id = sim.say(origin);
        sim.settle(3);
        sim.assert_reached(&id, origin);
    }
    for l in [l1, l2] {
        let s = sim.nodes[l].engine.stats();
        assert_eq!(s.tree_received, 0, "node {l} got tree traffic");
        assert!(s.repair_received > 0, "node {l} takes part in repair");
    }
}

#[test]
fn chain_star_bridge_and_full_meshes_deliver_exactly_once() {
    // Chain.
    let mut sim = Sim::new(6);
    for _ in 0..8 {
        sim.add();
    }
    for i in 0..7 {
        sim.link(i, i + 1);
    }
    for origin in [0, 7, 3] {
        let id = sim.say(origin);
        sim.settle(2);
        sim.assert_reached(&id, origin);
    }
    // Star.
    let mut sim = Sim::new(7);
    for _ in 0..9 {
        sim.add();
    }
    for i in 1..9 {
        sim.link(0, i);
    }
    for origin in [0, 1, 8] {
        let id = sim.say(origin);
        sim.settle(2);
        sim.assert_reached(&id, origin);
    }
    // Two full meshes joined by a bridge node, then the bridge cut.
    let mut sim = Sim::new(8);
    for _ in 0..11 {
        sim.add();
    }
    for a in 0..5 {
        for b in a + 1..5 {
            sim.link(a, b);
            sim.link(a + 5, b + 5);
        }
    }
    sim.link(10, 0);
    sim.link(10, 5);
    for origin in [0, 9, 10, 2, 7] {
        let id = sim.say(origin);
        sim.settle(2);
        sim.assert_reached(&id, origin);
    }
    sim.cut(10, 5);
    for origin in [6, 1] {
        let id = sim.say(origin);
        sim.settle(2);
        sim.assert_reached(&id, origin);
    }
    assert!(sim.eager_links().len() >= 4);
}

#[test]
fn a_line_said_alone_reaches_peers_that_connect_later() {
    let mut sim = Sim::new(9);
    for _ in 0..4 {
        sim.add();
    }
    let id = sim.say(0);
    sim.settle(1);
    sim.link(0, 1);
    sim.link(1, 2);
    sim.link(2, 3);
    sim.settle(4);
    sim.assert_reached(&id, 0);
}
