//! A deterministic, scripted simulator of gossip engines (no sockets, no
//! clock): nodes, links cut and healed, messages originated; the script
//! asserts that each message reaches exactly the originator's connected
//! component, each node exactly once.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use micelio_gossip::{Action, Engine, GossipConfig};
use micelio_identity::{Identity, NodeId};
use micelio_wire::{Envelope, MsgType};

enum Op {
    Link(usize, usize),
    Cut(usize, usize),
    /// Originate from a node; expect delivery at exactly these other nodes.
    Say(usize, &'static [usize]),
    /// Like `Say`, with five repair rounds before checking.
    SayThenRepair(usize, &'static [usize]),
}

struct Sim {
    engines: Vec<Engine>,
    ids: Vec<Arc<Identity>>,
    index: HashMap<NodeId, usize>,
    links: BTreeSet<(usize, usize)>,
    now: Instant,
}

impl Sim {
    fn new(n: usize) -> Self {
        Self::with_config(n, GossipConfig::default())
    }

    fn with_config(n: usize, config: GossipConfig) -> Self {
        let ids: Vec<Arc<Identity>> = (0..n)
            .map(|i| Arc::new(Identity::from_seed([i as u8 + 1; 32])))
            .collect();
        let engines = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut e = Engine::new(id.clone(), config.clone(), i as u64);
                e.register(MsgType::Chat);
                e
            })
            .collect();
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id.node_id(), i))
            .collect();
        Sim {
            engines,
            ids,
            index,
            links: BTreeSet::new(),
            now: Instant::now(),
        }
    }

    fn key(a: usize, b: usize) -> (usize, usize) {
        (a.min(b), a.max(b))
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Link(a, b) => {
                self.links.insert(Self::key(a, b));
                let (ia, ib) = (self.ids[a].clone(), self.ids[b].clone());
                self.engines[a].peer_up(*ib.node_id(), ib.public_key());
                self.engines[b].peer_up(*ia.node_id(), ia.public_key());
            }
            Op::Cut(a, b) => {
                self.links.remove(&Self::key(a, b));
                let (na, nb) = (*self.ids[a].node_id(), *self.ids[b].node_id());
                self.engines[a].peer_down(&nb);
                self.engines[b].peer_down(&na);
            }
            Op::Say(origin, expected) | Op::SayThenRepair(origin, expected) => {
                self.now += std::time::Duration::from_secs(1);
                let (_, actions) =
                    self.engines[origin].originate(self.now, MsgType::Chat, "x".into());
                let mut queue: VecDeque<(usize, usize, Envelope)> = VecDeque::new();
                let mut delivered: HashMap<usize, usize> = HashMap::new();
                self.enqueue(origin, actions, &mut queue, &mut delivered);
                self.drain(&mut queue, &mut delivered);
                if matches!(op, Op::SayThenRepair(..)) {
                    for _ in 0..5 {
                        self.now += std::time::Duration::from_secs(1);
                        for i in 0..self.engines.len() {
                            let actions = self.engines[i].repair_tick(self.now);
                            self.enqueue(i, actions, &mut queue, &mut delivered);
                        }
                        self.drain(&mut queue, &mut delivered);
                    }
                }
                let got: BTreeSet<usize> = delivered.keys().copied().collect();
                let want: BTreeSet<usize> = expected.iter().copied().collect();
                assert_eq!(got, want, "message from {origin} reached the wrong nodes");
                assert!(
                    delivered.values().all(|&c| c == 1),
                    "exactly once: {delivered:?}"
                );
            }
        }
    }

    fn drain(
        &mut self,
        queue: &mut VecDeque<(usize, usize, Envelope)>,
        delivered: &mut HashMap<usize, usize>,
    ) {
        let mut steps = 0;
        while let Some((to, from, env)) = queue.pop_front() {
            steps += 1;
            assert!(steps < 100_000, "runaway relay");
            let from_id = *self.ids[from].node_id();
            let result = match env.kind() {
                MsgType::GossipDigest | MsgType::GossipRequest => {
                    self.engines[to].handle_repair(self.now, from_id, &env)
                }
                _ => self.engines[to].handle(self.now, from_id, env),
            };
            if let Ok(actions) = result {
                self.enqueue(to, actions, queue, delivered);
            }
        }
    }

    fn enqueue(
        &self,
        at: usize,
        actions: Vec<Action>,
        queue: &mut VecDeque<(usize, usize, Envelope)>,
        delivered: &mut HashMap<usize, usize>,
    ) {
        for a in actions {
            match a {
                Action::Deliver(_) => *delivered.entry(at).or_default() += 1,
                Action::Send { to, envelope } => {
                    for peer in to {
                        let j = self.index[&peer];
                        // A frame only crosses a live link.
                        if self.links.contains(&Self::key(at, j)) {
                            queue.push_back((j, at, envelope.clone()));
                        }
                    }
                }
            }
        }
    }

    fn run(n: usize, script: &[Op]) {
        Self::run_with(n, GossipConfig::default(), script);
    }

    fn run_with(n: usize, config: GossipConfig, script: &[Op]) {
        let mut sim = Sim::with_config(n, config);
        for op in script {
            sim.apply(op);
        }
    }
}

#[test]
fn chain_then_cut_in_the_middle_then_heal() {
    use Op::*;
    Sim::run(
        6,
        &[
            Link(0, 1),
            Link(1, 2),
            Link(2, 3),
            Link(3, 4),
            Link(4, 5),
            Say(0, &[1, 2, 3, 4, 5]),
            Say(5, &[0, 1, 2, 3, 4]),
            Cut(2, 3),
            Say(0, &[1, 2]),
            Say(4, &[3, 5]),
            Link(2, 3),
            Say(3, &[0, 1, 2, 4, 5]),
        ],
    );
}

#[test]
fn two_clusters_joined_by_a_bridge_node() {
    use Op::*;
    // 0-1-2 a triangle, 3-4-5 a triangle, 6 linked to 1 and 4 only.
    Sim::run(
        7,
        &[
            Link(0, 1),
            Link(1, 2),
            Link(0, 2),
            Link(3, 4),
            Link(4, 5),
            Link(3, 5),
            Say(0, &[1, 2]),
            Link(6, 1),
            Link(6, 4),
            Say(0, &[1, 2, 3, 4, 5, 6]),
            Say(5, &[0, 1, 2, 3, 4, 6]),
            Cut(6, 4),
            Say(3, &[4, 5]),
            Say(6, &[0, 1, 2]),
        ],
    );
}

#[test]
fn full_mesh_and_star() {
    use Op::*;
    let mut full = Vec::new();
    for a in 0..6 {
        for b in a + 1..6 {
            full.push(Link(a, b));
        }
    }
    full.push(Say(0, &[1, 2, 3, 4, 5]));
    full.push(Say(3, &[0, 1, 2, 4, 5]));
    Sim::run(6, &full);
    // A hub (0) with four leaves: from a leaf the hub relays to the three
    // others (fanout 3); from the hub every leaf hears it.
    Sim::run(
        5,
        &[
            Link(0, 1),
            Link(0, 2),
            Link(0, 3),
            Link(0, 4),
            Say(1, &[0, 2, 3, 4]),
            Say(0, &[1, 2, 3, 4]),
        ],
    );
}

#[test]
fn an_isolated_node_hears_nothing_and_is_heard_by_none() {
    use Op::*;
    Sim::run(
        4,
        &[
            Link(0, 1),
            Link(1, 2),
            Say(3, &[]),
            Say(0, &[1, 2]),
            Link(3, 0),
            Say(3, &[0, 1, 2]),
        ],
    );
}

#[test]
fn repair_completes_what_random_fanout_missed_in_a_dense_mesh() {
    use Op::*;
    // Nodes 1..12 form a full mesh; node 0 hangs off node 1. With fanout 1
    // the relays from node 1 on are a random walk that misses nodes; the
    // repair rounds bring the message to everyone, still exactly once.
    let n = 12;
    let mut config = GossipConfig::default();
    config.fanout = 1;
    // The reference's relay rule (random fanout), not the broadcast tree.
    config.broadcast_tree = false;
    let mut sim = Sim::with_config(n, config);
    sim.apply(&Link(0, 1));
    for a in 1..n {
        for b in a + 1..n {
            sim.apply(&Link(a, b));
        }
    }
    sim.now += std::time::Duration::from_secs(1);
    let (_, actions) = sim.engines[0].originate(sim.now, MsgType::Chat, "x".into());
    let mut queue = VecDeque::new();
    let mut delivered = HashMap::new();
    sim.enqueue(0, actions, &mut queue, &mut delivered);
    sim.drain(&mut queue, &mut delivered);
    let before = delivered.len();
    assert!(
        before < n - 1,
        "fanout 1 alone should miss nodes (reached {before})"
    );
    for _ in 0..5 {
        sim.now += std::time::Duration::from_secs(1);
        for i in 0..n {
            let actions = sim.engines[i].repair_tick(sim.now);
            sim.enqueue(i, actions, &mut queue, &mut delivered);
        }
        sim.drain(&mut queue, &mut delivered);
    }
    assert_eq!(delivered.len(), n - 1, "everyone but the originator");
    assert!(
        delivered.values().all(|&c| c == 1),
        "exactly once: {delivered:?}"
    );
}

#[test]
fn a_line_said_before_any_peer_arrives_is_repaired_once_they_do() {
    use Op::*;
    let mut sim = Sim::new(3);
    // Node 0 speaks alone, then links come up.
    sim.now += std::time::Duration::from_secs(1);
    let (_, actions) = sim.engines[0].originate(sim.now, MsgType::Chat, "early".into());
    assert!(actions.is_empty(), "nobody to send to");
    sim.apply(&Link(0, 1));
    sim.apply(&Link(1, 2));
    let mut queue = VecDeque::new();
    let mut delivered = HashMap::new();
    for _ in 0..3 {
        sim.now += std::time::Duration::from_secs(1);
        for i in 0..3 {
            let actions = sim.engines[i].repair_tick(sim.now);
            sim.enqueue(i, actions, &mut queue, &mut delivered);
        }
        sim.drain(&mut queue, &mut delivered);
    }
    assert_eq!(delivered.get(&1), Some(&1));
    assert_eq!(delivered.get(&2), Some(&1));
}

#[test]
fn a_big_star_is_completed_by_repair() {
    use Op::*;
    // A hub (0) with six leaves: from a leaf, the hub relays to only three
    // of the five others (fanout 3); its digests bring the rest.
    Sim::run(
        7,
        &[
            Link(0, 1),
            Link(0, 2),
            Link(0, 3),
            Link(0, 4),
            Link(0, 5),
            Link(0, 6),
            SayThenRepair(1, &[0, 2, 3, 4, 5, 6]),
            SayThenRepair(4, &[0, 1, 2, 3, 5, 6]),
        ],
    );
}
