//! A scripted simulation over the in-memory transport: six nodes write and
//! delete random keys while links are cut and restored and frames are
//! lost, duplicated and reordered. At the end every node's map equals every
//! other's and equals the map computed by the LWW rule from all the
//! acknowledged writes.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use micelio_gossip::GossipConfig;
use micelio_gossip::test_utils::GossipNode;
use micelio_state::store::MemoryStateStore;
use micelio_state::{LivenessConfig, State, StateConfig};
use micelio_transport::memory::MemoryMesh;
use micelio_wire::limits::FEATURE_STATE_V1;

const WITHIN: Duration = Duration::from_secs(30);
const NODES: usize = 6;
/// Links of the simulated mesh: a ring with two chords.
const LINKS: [(usize, usize); 8] = [
    (0, 1),
    (1, 2),
    (2, 3),
    (3, 4),
    (4, 5),
    (5, 0),
    (0, 3),
    (1, 4),
];

/// SplitMix64: a seeded script, the same on every run.
struct Script(u64);

impl Script {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Sim {
    mesh: MemoryMesh,
    nodes: Vec<(GossipNode, State)>,
}

fn state_config(i: usize) -> StateConfig {
    let mut c = StateConfig::default();
    c.sync_interval = Duration::from_millis(250);
    c.liveness = LivenessConfig {
        heartbeat_interval: Duration::from_millis(500),
        suspect_after: Duration::from_secs(2),
        dead_after: Duration::from_secs(4),
    };
    c.node.name = format!("n{i}");
    c
}

impl Sim {
    async fn start() -> Sim {
        let mesh = MemoryMesh::new();
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let seed = u8::try_from(i + 1).unwrap();
            let mut t = MemoryMesh::config(seed);
            t.features.push(FEATURE_STATE_V1.to_owned());
            let net = GossipNode::spawn_with(
                &mesh,
                MemoryMesh::identity(seed),
                t,
                GossipConfig::default(),
            )
            .await
            .unwrap();
            let state = State::spawn(
                net.identity.clone(),
                state_config(i),
                Box::new(MemoryStateStore::new()),
                net.gossip.clone(),
                net.peers.clone(),
            )
            .await
            .unwrap();
            nodes.push((net, state));
        }
        for (a, b) in LINKS {
            nodes[a].0.link(&nodes[b].0, WITHIN).await.unwrap();
        }
        Sim { mesh, nodes }
    }

    /// Every live entry that is not membership: key → value.
    async fn data(state: &State) -> BTreeMap<String, Bytes> {
        state
            .scan("", usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| !e.sub_key().starts_with("node/"))
            .map(|e| (e.key, e.value))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_writes_under_cuts_loss_duplication_and_reordering_converge_to_the_lww_model() {
    let sim = Sim::start().await;
    let net = sim.mesh.network();
    net.set_loss_seeded(0.05, 42);
    net.set_duplication(0.05);
    net.set_reordering(0.05);
    let mut script = Script(2026);
    // Every acknowledged write: key → (ts, author, value or None).
    let mut acked: BTreeMap<String, (u64, String, Option<Bytes>)> = BTreeMap::new();
    let mut cut: Vec<(usize, usize)> = Vec::new();
    for op in 0..600 {
        if op % 60 == 59 {
            // Cut a random link, or restore the oldest cut.
            if cut.len() < 3 && script.below(3) > 0 {
                let (a, b) = LINKS[script.below(LINKS.len())];
                if !cut.contains(&(a, b)) {
                    sim.mesh.cut(&sim.nodes[a].0.peers, &sim.nodes[b].0.peers);
                    cut.push((a, b));
                }
            } else if !cut.is_empty() {
                let (a, b) = cut.remove(0);
                sim.mesh
                    .restore(&sim.nodes[a].0.peers, &sim.nodes[b].0.peers);
                // Linking may fail under loss; anti-entropy with the
                // other neighbours covers it, and the end re-links all.
                let _ = sim.nodes[a].0.link(&sim.nodes[b].0, WITHIN).await;
            }
        }
        let i = script.below(NODES);
        let state = &sim.nodes[i].1;
        let sub = format!("k/{}", script.below(25));
        let key = state.own_key(&sub);
        let entry = if acked.contains_key(&key) && script.below(8) == 0 {
            state.delete(&sub).await.unwrap()
        } else {
            state.set(&sub, format!("v{op}")).await.unwrap()
        };
        let value = (!entry.deleted).then(|| entry.value.clone());
        let author = entry.author.to_hex();
        let newer = acked
            .get(&key)
            .is_none_or(|(ts, a, _)| (entry.ts, &author) > (*ts, a));
        if newer {
            acked.insert(key, (entry.ts, author, value));
        }
    }
    assert!(net.frames_lost() > 0 && net.frames_duplicated() > 0 && net.frames_reordered() > 0);
    // Faults end, links come back.
    net.set_loss(0.0);
    net.set_duplication(0.0);
    net.set_reordering(0.0);
    for (a, b) in cut.drain(..) {
        sim.mesh
            .restore(&sim.nodes[a].0.peers, &sim.nodes[b].0.peers);
        sim.nodes[a].0.link(&sim.nodes[b].0, WITHIN).await.unwrap();
    }
    let model: BTreeMap<String, Bytes> = acked
        .into_iter()
        .filter_map(|(k, (_, _, v))| v.map(|v| (k, v)))
        .collect();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let mut maps = Vec::new();
        for (_, state) in &sim.nodes {
            maps.push(Sim::data(state).await);
        }
        if maps.iter().all(|m| *m == model) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let mut why = String::new();
            for (m, (net, state)) in maps.iter().zip(&sim.nodes) {
                let missing = model.keys().filter(|k| !m.contains_key(*k)).count();
                let extra = m.keys().filter(|k| !model.contains_key(*k)).count();
                let differ = m
                    .iter()
                    .filter(|(k, v)| model.get(*k).is_some_and(|w| w != *v))
                    .count();
                let s = state.stats().await.unwrap();
                why += &format!(
                    "\n{}: missing {missing} extra {extra} differ {differ}; {s:?}",
                    net.node_id().short(8)
                );
            }
            panic!("maps did not reach the model ({} keys):{why}", model.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (net, state) in &sim.nodes {
        state.shutdown().await;
        net.shutdown().await;
    }
}
