//! The in-process mesh: N nodes over one `MemoryNetwork`, a built topology,
//! and the broadcast, loss, link-cut and churn runs over it (throughput is
//! in [`super::throughput`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use micelio_gossip::test_utils::GossipNode;
use micelio_gossip::{DropReason, GossipConfig, GossipStats};
use micelio_identity::Identity;
use micelio_transport::memory::{MemoryMesh, QUIET, linked};
use micelio_transport::{DialError, TransportConfig};
use micelio_wire::MsgType;
use micelio_wire::limits::FEATURE_BROADCAST_TREE_V1;
use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom as _, IteratorRandom as _};
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::topology::random_topology;
use super::{
    Extra, MESSAGE_TIMEOUT, MIN_GAP, MeshArgs, MessageResult, Mode, Outcome, SETTLE, Variant,
    progress, sys,
};

/// Least wait for the built topology to be up (more for big meshes, see
/// [`Harness::dial`]).
const LINKS_TIMEOUT: Duration = Duration::from_secs(30);
/// Dials in flight at once while the mesh is built.
const DIAL_CONCURRENCY: usize = 32;
/// How long a joining node (churn) may take to link up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The simulated address of node `i`.
pub(crate) fn addr(i: usize) -> String {
    let k = i + 1;
    format!(
        "127.{}.{}.{}:4000",
        1 + k / 65_536,
        (k / 256) % 256,
        k % 256
    )
}

/// The identity seed of node `i` in a run seeded with `seed`.
pub(crate) fn identity_seed(seed: u64, i: usize) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    s[31] = 0x6d; // 'm': keep seeds of this harness apart from tests' seeds.
    s
}

/// A chat payload of a realistic size.
pub(crate) fn chat_payload(k: usize) -> Bytes {
    use micelio_wire::WireMessage as _;
    let chat = micelio_wire::proto::ChatMessage {
        nick: "mesh-bench".into(),
        text: format!("benchmark message {k:04}: the quick brown fox jumps over the lazy dog"),
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    Bytes::from(chat.encode_wire())
}

/// A node of the run (exchange and discovery [`QUIET`], so the measured
/// topology is the one built).
type Node = GossipNode;

/// One delivery to a subscriber of the harness.
#[derive(Debug)]
pub(crate) struct Receipt {
    /// The node (slot) that got it.
    pub(crate) node: usize,
    /// The message id.
    pub(crate) id: String,
    /// The payload (throughput mode reads its sequence number from it).
    pub(crate) payload: Bytes,
    /// When its subscriber got it.
    pub(crate) at: Instant,
}

/// Counters of one node, or summed over nodes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    /// Gossip data frames received (`received`).
    pub(crate) received: u64,
    /// Of them, duplicates (`dropped[Duplicate]`).
    pub(crate) duplicates: u64,
    /// `forwarded + sent_originated`.
    pub(crate) frames_sent: u64,
    /// `data_frames_sent`.
    pub(crate) data_frames: u64,
    /// `data_bytes_sent`.
    pub(crate) data_bytes: u64,
    /// `control_frames_sent`.
    pub(crate) control_frames: u64,
    /// `control_bytes_sent`.
    pub(crate) control_bytes: u64,
    /// `ihave_ids_sent`.
    pub(crate) ihave_ids: u64,
    /// `grafts_sent`.
    pub(crate) grafts: u64,
    /// `prunes_sent`.
    pub(crate) prunes: u64,
    /// `repairs_served`.
    pub(crate) repairs_served: u64,
    /// `origin_refused`.
    pub(crate) origin_refused: u64,
    /// Drops other than duplicates, by reason, plus `send_queue_full`
    /// (the transport's) and `send_refused` (gossip's view of it).
    pub(crate) drops: BTreeMap<String, u64>,
}

impl Totals {
    fn of(s: &GossipStats, send_queue_drops: u64) -> Self {
        let mut drops = BTreeMap::new();
        for (reason, count) in &s.dropped {
            if *reason != DropReason::Duplicate {
                *drops.entry(reason.label().to_owned()).or_default() += count;
            }
        }
        drops.insert("send_queue_full".to_owned(), send_queue_drops);
        drops.insert("send_refused".to_owned(), s.send_refused);
        Self {
            received: s.received,
            duplicates: s.dropped.get(&DropReason::Duplicate).copied().unwrap_or(0),
            frames_sent: s.forwarded + s.sent_originated,
            data_frames: s.data_frames_sent,
            data_bytes: s.data_bytes_sent,
            control_frames: s.control_frames_sent,
            control_bytes: s.control_bytes_sent,
            ihave_ids: s.ihave_ids_sent,
            grafts: s.grafts_sent,
            prunes: s.prunes_sent,
            repairs_served: s.repairs_served,
            origin_refused: s.origin_refused,
            drops,
        }
    }

    fn add(&mut self, o: &Totals, sign: i64) {
        let f = |a: &mut u64, b: u64| {
            *a = if sign >= 0 {
                a.saturating_add(b)
            } else {
                a.saturating_sub(b)
            }
        };
        f(&mut self.received, o.received);
        f(&mut self.duplicates, o.duplicates);
        f(&mut self.frames_sent, o.frames_sent);
        f(&mut self.data_frames, o.data_frames);
        f(&mut self.data_bytes, o.data_bytes);
        f(&mut self.control_frames, o.control_frames);
        f(&mut self.control_bytes, o.control_bytes);
        f(&mut self.ihave_ids, o.ihave_ids);
        f(&mut self.grafts, o.grafts);
        f(&mut self.prunes, o.prunes);
        f(&mut self.repairs_served, o.repairs_served);
        f(&mut self.origin_refused, o.origin_refused);
        for (k, v) in &o.drops {
            f(self.drops.entry(k.clone()).or_default(), *v);
        }
    }

    /// `self - earlier`, counter by counter.
    pub(crate) fn since(&self, earlier: &Totals) -> Totals {
        let mut d = self.clone();
        d.add(earlier, -1);
        d.drops.retain(|_, c| *c > 0);
        d
    }
}

/// A mesh of in-process nodes, its built links and its deliveries.
pub(crate) struct Harness {
    /// The command line.
    pub(crate) args: MeshArgs,
    /// Tree or fanout.
    pub(crate) variant: Variant,
    /// The simulated network.
    pub(crate) mesh: MemoryMesh,
    /// Nodes by slot; `None` once a node left (churn).
    pub(crate) slots: Vec<Option<Node>>,
    /// Live built links of each slot.
    pub(crate) links: Vec<HashSet<usize>>,
    /// Which slots behave like reference nodes.
    pub(crate) reference: Vec<bool>,
    /// Deliveries, as the subscribers see them.
    pub(crate) rx: mpsc::UnboundedReceiver<Receipt>,
    tx: mpsc::UnboundedSender<Receipt>,
    /// Message id → slot → when it got it.
    pub(crate) receipts: HashMap<String, HashMap<usize, Instant>>,
    /// Every random choice of the run.
    pub(crate) rng: SmallRng,
    /// Counters of the live nodes at the start of the measured phase (a
    /// node that joined later counts from zero).
    baseline: HashMap<usize, Totals>,
    /// Increases of the nodes that left during the phase.
    retired: Totals,
    /// Time to spawn the nodes, and to dial and bring up the links.
    pub(crate) spawn_time: Duration,
    /// See above.
    pub(crate) link_time: Duration,
    /// Resident memory before the nodes and after the links, KiB.
    pub(crate) rss_before_kib: Option<u64>,
    /// See above.
    pub(crate) rss_after_kib: Option<u64>,
}

impl Harness {
    /// Spawns `n` nodes and brings up a random topology between them.
    pub(crate) async fn build(args: &MeshArgs, n: usize, variant: Variant) -> anyhow::Result<Self> {
        let mut rng = SmallRng::seed_from_u64(args.seed ^ (n as u64).rotate_left(32));
        let rss_before_kib = sys::rss_kib();
        let edges = random_topology(n, args.max_peers, args.degree, &mut rng)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let references = ((args.reference / 100.0 * n as f64).round() as usize).min(n);
        let mut reference = vec![false; n];
        for i in (0..n).choose_multiple(&mut rng, references) {
            reference[i] = true;
        }
        let mut h = Self {
            args: args.clone(),
            variant,
            mesh: MemoryMesh::new(),
            slots: Vec::with_capacity(n),
            links: vec![HashSet::new(); n],
            reference,
            rx,
            tx,
            receipts: HashMap::new(),
            rng,
            baseline: HashMap::new(),
            retired: Totals::default(),
            spawn_time: Duration::ZERO,
            link_time: Duration::ZERO,
            rss_before_kib,
            rss_after_kib: None,
        };
        let t = Instant::now();
        for i in 0..n {
            let node = h.spawn_node(i).await?;
            h.slots.push(Some(node));
        }
        h.spawn_time = t.elapsed();
        progress(
            args,
            &format!(
                "{n} nodes started in {:.1} s ({references} reference), dialling {} links",
                h.spawn_time.as_secs_f64(),
                edges.len()
            ),
        );
        let t = Instant::now();
        h.dial(&edges).await?;
        h.link_time = t.elapsed();
        h.rss_after_kib = sys::rss_kib();
        progress(
            args,
            &format!(
                "{} links up in {:.1} s",
                edges.len(),
                h.link_time.as_secs_f64()
            ),
        );
        Ok(h)
    }

    /// The gossip configuration of slot `i`.
    fn gossip_config(&self, i: usize) -> GossipConfig {
        let mut c = GossipConfig::default();
        c.broadcast_tree = self.variant == Variant::Tree && !self.reference[i];
        if let Some(h) = self.args.max_hops {
            c.max_hops = h;
        }
        c.eager_announce = self.args.eager_announce;
        c
    }

    /// The transport configuration of slot `i`: reference nodes announce
    /// no features, fanout nodes not the tree.
    fn transport_config(&self, i: usize) -> TransportConfig {
        let mut c = TransportConfig::new(Some(addr(i)));
        c.max_peers = self.args.max_peers;
        c.exchange_interval = QUIET;
        c.discovery_interval = QUIET;
        if self.reference[i] {
            c.features.clear();
        } else if self.variant == Variant::Fanout {
            c.features.retain(|f| f != FEATURE_BROADCAST_TREE_V1);
        }
        c
    }

    /// Starts the node of slot `i` and its subscriber.
    async fn spawn_node(&self, i: usize) -> anyhow::Result<Node> {
        let identity = Arc::new(Identity::from_seed(identity_seed(self.args.seed, i)));
        let node = GossipNode::spawn_with(
            &self.mesh,
            identity,
            self.transport_config(i),
            self.gossip_config(i),
        )
        .await
        .with_context(|| format!("starting node {i}"))?;
        let mut sub = node
            .gossip
            .subscribe(MsgType::Chat)
            .await
            .with_context(|| format!("subscribing node {i}"))?;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Some(d) = sub.recv().await {
                let receipt = Receipt {
                    node: i,
                    id: d.envelope.message_id,
                    payload: d.envelope.payload,
                    at: Instant::now(),
                };
                if tx.send(receipt).is_err() {
                    break;
                }
            }
        });
        Ok(node)
    }

    /// The live node of slot `i`.
    pub(crate) fn node(&self, i: usize) -> anyhow::Result<&Node> {
        self.slots
            .get(i)
            .and_then(Option::as_ref)
            .with_context(|| format!("node {i} is not running"))
    }

    /// Live slots.
    pub(crate) fn alive(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].is_some())
            .collect()
    }

    /// Dials `edges` (a few at a time) and waits until both ends of each
    /// see it.
    async fn dial(&mut self, edges: &[(usize, usize)]) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for &(a, b) in edges {
            while tasks.len() >= DIAL_CONCURRENCY {
                if let Some(r) = tasks.join_next().await {
                    r.context("a dial task failed")??;
                }
            }
            let peers = self.node(a)?.peers.clone();
            tasks.spawn(async move {
                match tokio::time::timeout(LINKS_TIMEOUT, peers.dial(&addr(b))).await {
                    Ok(Ok(_) | Err(DialError::Duplicate(_))) => Ok(()),
                    Ok(Err(e)) => bail!("link {a}-{b}: {e}"),
                    Err(_) => bail!("link {a}-{b}: dial timed out"),
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.context("a dial task failed")??;
        }
        let within = LINKS_TIMEOUT + Duration::from_millis(2 * edges.len() as u64);
        let deadline = Instant::now() + within;
        loop {
            let mut missing = 0;
            for &(a, b) in edges {
                if !linked(&self.node(a)?.peers, &self.node(b)?.peers) {
                    missing += 1;
                }
            }
            if missing == 0 {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{missing} of {} links not up after {within:?}", edges.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for &(a, b) in edges {
            self.links[a].insert(b);
            self.links[b].insert(a);
        }
        Ok(())
    }

    /// Links (connections) up now, as the managers count them.
    pub(crate) fn edge_count(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .map(|x| x.peers.peer_count())
            .sum::<usize>()
            / 2
    }

    /// Live nodes the built links connect to `origin` (not `origin`).
    pub(crate) fn component(&self, origin: usize) -> HashSet<usize> {
        let mut seen = HashSet::from([origin]);
        let mut queue = VecDeque::from([origin]);
        while let Some(u) = queue.pop_front() {
            for &v in &self.links[u] {
                if self.slots[v].is_some() && seen.insert(v) {
                    queue.push_back(v);
                }
            }
        }
        seen.remove(&origin);
        seen
    }

    /// Moves what the subscribers reported into `receipts`.
    pub(crate) fn drain(&mut self) {
        while let Ok(r) = self.rx.try_recv() {
            self.record(r);
        }
    }

    fn record(&mut self, r: Receipt) -> bool {
        let m = self.receipts.entry(r.id).or_default();
        m.entry(r.node).or_insert(r.at);
        true
    }

    /// Waits until every node of `expected` has message `id`, at most
    /// until `deadline`, and gives up earlier once no node of `expected`
    /// got it for [`SETTLE`]. Returns how many of them did.
    async fn await_set(&mut self, id: &str, expected: &HashSet<usize>, deadline: Instant) -> usize {
        let count = |h: &Self| {
            h.receipts
                .get(id)
                .map_or(0, |m| m.keys().filter(|k| expected.contains(k)).count())
        };
        let mut got = count(self);
        let mut last = Instant::now();
        loop {
            self.drain();
            let now_got = count(self);
            if now_got > got {
                got = now_got;
                last = Instant::now();
            }
            if got >= expected.len() {
                return got;
            }
            match tokio::time::timeout_at(deadline.min(last + SETTLE), self.rx.recv()).await {
                Ok(Some(r)) => {
                    self.record(r);
                }
                Ok(None) | Err(_) => return count(self),
            }
        }
    }

    /// Originates message `k` at `origin` and waits for it to reach
    /// `expected`; returns what it saw and the message id.
    async fn broadcast(
        &mut self,
        origin: usize,
        k: usize,
        expected: &HashSet<usize>,
    ) -> anyhow::Result<(MessageResult, String, Instant)> {
        let t0 = Instant::now();
        let id = self
            .node(origin)?
            .gossip
            .originate(MsgType::Chat, chat_payload(k))
            .await
            .with_context(|| format!("originating message {k}"))?;
        Ok((
            MessageResult {
                latencies_ms: Vec::new(),
                expected: expected.len(),
            },
            id,
            t0,
        ))
    }

    /// Fills in the latencies of a broadcast once it is finished, and says
    /// which expected nodes missed it.
    fn settle(
        &self,
        mut r: MessageResult,
        id: &str,
        t0: Instant,
        expected: &HashSet<usize>,
        origin: usize,
        k: usize,
    ) -> MessageResult {
        let got = self.receipts.get(id);
        r.latencies_ms = got
            .map(|m| {
                m.iter()
                    .filter(|(node, _)| expected.contains(node))
                    .map(|(_, at)| at.saturating_duration_since(t0).as_secs_f64() * 1e3)
                    .collect()
            })
            .unwrap_or_default();
        if r.latencies_ms.len() < expected.len() {
            let mut missed: Vec<usize> = expected
                .iter()
                .copied()
                .filter(|i| !got.is_some_and(|m| m.contains_key(i)))
                .collect();
            missed.sort_unstable();
            let shown: Vec<String> = missed
                .iter()
                .take(20)
                .map(|&i| {
                    let links = self.slots[i].as_ref().map_or(0, |x| x.peers.peer_count());
                    format!("{i} ({links} links)")
                })
                .collect();
            progress(
                &self.args,
                &format!(
                    "message {k} from node {origin}: missed by {} node(s): {}{}",
                    missed.len(),
                    shown.join(", "),
                    if missed.len() > shown.len() {
                        ", …"
                    } else {
                        ""
                    }
                ),
            );
        }
        r
    }

    /// The counters of every live node.
    async fn node_totals(&self) -> anyhow::Result<HashMap<usize, Totals>> {
        let mut out = HashMap::new();
        for i in self.alive() {
            let node = self.node(i)?;
            let s = node.gossip.stats().await.context("gossip stats")?;
            out.insert(i, Totals::of(&s, node.peers.stats().send_queue_drops));
        }
        Ok(out)
    }

    /// Starts the measured phase: remembers every live node's counters.
    pub(crate) async fn begin_phase(&mut self) -> anyhow::Result<()> {
        self.baseline = self.node_totals().await?;
        self.retired = Totals::default();
        Ok(())
    }

    /// Counter increases since [`Harness::begin_phase`], over every node
    /// that ran during the phase.
    pub(crate) async fn phase_totals(&self) -> anyhow::Result<Totals> {
        let mut sum = self.retired.clone();
        for (i, now) in self.node_totals().await? {
            let zero = Totals::default();
            sum.add(&now.since(self.baseline.get(&i).unwrap_or(&zero)), 1);
        }
        sum.drops.retain(|_, c| *c > 0);
        Ok(sum)
    }

    /// Eager (tree) peers per live node now, on average.
    pub(crate) async fn eager_per_node(&self) -> anyhow::Result<f64> {
        let alive = self.alive();
        let mut eager = 0u64;
        for &i in &alive {
            eager += self.node(i)?.gossip.stats().await?.tree_eager_peers;
        }
        Ok(eager as f64 / alive.len().max(1) as f64)
    }

    /// One unmeasured broadcast to every node, so that keys are learned and
    /// trees formed.
    pub(crate) async fn warm_up(&mut self) -> anyhow::Result<()> {
        let origin = self.rng.random_range(0..self.slots.len());
        let expected = self.component(origin);
        let (_, id, _) = self.broadcast(origin, 0, &expected).await?;
        self.await_set(&id, &expected, Instant::now() + MESSAGE_TIMEOUT)
            .await;
        tokio::time::sleep(MIN_GAP).await;
        Ok(())
    }

    /// Node `i` leaves: its links are forgotten, its counters retired.
    async fn leave(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.slots[i].take().context("leaving node not running")?;
        let s = node.gossip.stats().await.context("gossip stats")?;
        let now = Totals::of(&s, node.peers.stats().send_queue_drops);
        let zero = Totals::default();
        self.retired
            .add(&now.since(self.baseline.get(&i).unwrap_or(&zero)), 1);
        for v in std::mem::take(&mut self.links[i]) {
            self.links[v].remove(&i);
        }
        tokio::spawn(async move { node.shutdown().await });
        Ok(())
    }

    /// A new node joins, linked to `degree` random live nodes under the
    /// peer cap; returns its slot.
    async fn join(&mut self) -> anyhow::Result<usize> {
        let i = self.slots.len();
        let is_ref = self
            .rng
            .random_bool((self.args.reference / 100.0).clamp(0.0, 1.0));
        self.reference.push(is_ref);
        self.links.push(HashSet::new());
        let node = self.spawn_node(i).await?;
        self.slots.push(Some(node));
        let open: Vec<usize> = self
            .alive()
            .into_iter()
            .filter(|&v| v != i)
            .filter(|&v| {
                self.slots[v]
                    .as_ref()
                    .is_some_and(|x| x.peers.peer_count() < self.args.max_peers)
            })
            .collect();
        let want = self.args.degree.max(1).min(self.args.max_peers);
        let chosen: Vec<usize> = open.choose_multiple(&mut self.rng, want).copied().collect();
        let deadline = Instant::now() + JOIN_TIMEOUT;
        for &v in &chosen {
            let peers = self.node(i)?.peers.clone();
            match tokio::time::timeout_at(deadline, peers.dial(&addr(v))).await {
                Ok(Ok(_) | Err(DialError::Duplicate(_))) => {}
                Ok(Err(e)) => bail!("joining node {i} to {v}: {e}"),
                Err(_) => bail!("joining node {i} to {v}: timed out"),
            }
        }
        for &v in &chosen {
            while !linked(&self.node(i)?.peers, &self.node(v)?.peers) {
                if Instant::now() >= deadline {
                    bail!("joining node {i}: link to {v} not up in {JOIN_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.links[i].insert(v);
            self.links[v].insert(i);
        }
        let node = self.node(i)?;
        node.ready(chosen.len(), JOIN_TIMEOUT).await;
        Ok(i)
    }

    /// Stops every node.
    pub(crate) async fn shutdown(mut self) {
        self.mesh.network().set_loss(0.0);
        let mut tasks = tokio::task::JoinSet::new();
        for node in self.slots.drain(..).flatten() {
            tasks.spawn(async move { node.shutdown().await });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Runs one in-process configuration of `n` nodes in `mode` (every mode but
/// throughput).
pub(crate) async fn run(
    args: &MeshArgs,
    n: usize,
    mode: Mode,
    variant: Variant,
) -> anyhow::Result<(Outcome, Extra)> {
    let mut h = Harness::build(args, n, variant).await?;
    let result = match mode {
        Mode::Throughput => super::throughput::run(&mut h).await,
        _ => broadcasts(&mut h, mode).await,
    };
    h.shutdown().await;
    result
}

/// What every mode reports about the mesh it ran on.
pub(crate) fn base_extra(h: &Harness, mode: Mode) -> Extra {
    let n = h.slots.len().max(1) as f64;
    let rss = match (h.rss_before_kib, h.rss_after_kib) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    Extra {
        mode,
        variant: h.variant,
        max_hops: h.gossip_config(0).max_hops,
        eager_announce: h.gossip_config(0).eager_announce,
        reference_nodes: h.reference.iter().filter(|r| **r).count(),
        spawn_s: h.spawn_time.as_secs_f64(),
        link_s: h.link_time.as_secs_f64(),
        rss_before_mib: h.rss_before_kib.map(|k| k as f64 / 1024.0),
        rss_after_mib: h.rss_after_kib.map(|k| k as f64 / 1024.0),
        rss_total_mib: rss.map(|k| k as f64 / 1024.0),
        rss_per_node_kib: rss.map(|k| k as f64 / n),
        threads: sys::threads(),
        ..Extra::default()
    }
}

/// Fills the per-message figures of `extra` from the phase's counters.
pub(crate) fn counter_figures(
    extra: &mut Extra,
    t: &Totals,
    n: usize,
    m: usize,
    cpu: Option<Duration>,
) {
    let nm = (n.max(1) * m.max(1)) as f64;
    // The counters the tree engine fills are zero until it lands: report
    // them as unknown rather than as a free lunch.
    let filled = t.data_frames > 0;
    extra.data_bytes_per_node_per_msg = filled.then(|| t.data_bytes as f64 / nm);
    extra.control_bytes_per_node_per_msg = filled.then(|| t.control_bytes as f64 / nm);
    extra.data_frames_sent_per_node_per_msg = filled.then(|| t.data_frames as f64 / nm);
    extra.control_frames_per_node_per_msg = filled.then(|| t.control_frames as f64 / nm);
    extra.duplicates_per_node_per_msg = Some(t.duplicates as f64 / nm);
    extra.cpu_us_per_msg_per_node = cpu.map(|c| c.as_secs_f64() * 1e6 / nm);
    extra.tree = Some(serde_json::json!({
        "ihave_ids_sent": t.ihave_ids,
        "grafts_sent": t.grafts,
        "prunes_sent": t.prunes,
        "repairs_served": t.repairs_served,
    }));
}

/// M broadcasts one at a time (modes broadcast, loss, cut, churn).
async fn broadcasts(h: &mut Harness, mode: Mode) -> anyhow::Result<(Outcome, Extra)> {
    let args = h.args.clone();
    let n0 = h.slots.len();
    h.warm_up().await?;
    let mut extra = base_extra(h, mode);
    let edges = h.edge_count();
    let net = h.mesh.network().clone();
    h.begin_phase().await?;
    if mode == Mode::Loss {
        net.set_loss_seeded(args.loss / 100.0, args.seed);
        extra.loss = Some(args.loss / 100.0);
    }
    let lost_before = net.frames_lost();
    let bytes_before = net.bytes_sent();
    let cpu_before = sys::cpu_time();
    let started = Instant::now();
    let mut results = Vec::with_capacity(args.messages);
    let (mut joins, mut leaves, mut cut) = (0usize, 0usize, 0usize);
    for k in 1..=args.messages {
        if mode == Mode::Cut && k == args.messages / 2 + 1 {
            cut = cut_links(h, args.cut_links / 100.0);
            progress(&args, &format!("cut {cut} links before message {k}"));
        }
        let alive = h.alive();
        let Some(&origin) = alive.choose(&mut h.rng) else {
            bail!("no node left");
        };
        // Churn: every `churn_every` messages a node other than the origin
        // leaves as the message leaves; a new node joins once it is done.
        let churn_now = mode == Mode::Churn && k % args.churn_every.max(1) == 0;
        let leaver = if churn_now {
            alive
                .iter()
                .copied()
                .filter(|&v| v != origin)
                .choose(&mut h.rng)
        } else {
            None
        };
        let mut links_gone = h.links.clone();
        if let Some(v) = leaver {
            for u in std::mem::take(&mut links_gone[v]) {
                links_gone[u].remove(&v);
            }
        }
        // Judged over the nodes alive for the whole message and reachable
        // from the origin without the leaver.
        let expected = {
            let saved = std::mem::replace(&mut h.links, links_gone);
            let mut e = h.component(origin);
            h.links = saved;
            if let Some(v) = leaver {
                e.remove(&v);
            }
            e
        };
        let (r, id, t0) = h.broadcast(origin, k, &expected).await?;
        if let Some(v) = leaver {
            h.leave(v).await?;
            leaves += 1;
        }
        h.await_set(&id, &expected, t0 + MESSAGE_TIMEOUT).await;
        results.push(h.settle(r, &id, t0, &expected, origin, k));
        if churn_now {
            h.join().await?;
            joins += 1;
        }
        tokio::time::sleep_until(t0 + MIN_GAP).await;
    }
    let duration = started.elapsed();
    let cpu = match (cpu_before, sys::cpu_time()) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    net.set_loss(0.0);
    let bytes = net.bytes_sent() - bytes_before;
    let totals = h.phase_totals().await?;
    let n = h.alive().len().max(n0);
    if !totals.drops.is_empty() {
        progress(
            &args,
            &format!("drops during the broadcasts: {:?}", totals.drops),
        );
    }
    counter_figures(&mut extra, &totals, n, args.messages, cpu);
    extra.eager_per_node = Some(h.eager_per_node().await?);
    extra.frames_lost = Some(net.frames_lost() - lost_before);
    if mode == Mode::Cut {
        extra.cut_links = Some(cut);
    }
    if mode == Mode::Churn {
        extra.joins = Some(joins);
        extra.leaves = Some(leaves);
    }
    Ok((
        Outcome {
            kind: super::Kind::Memory,
            nodes: n0,
            redundancy: Some(totals.received as f64 / n as f64 / args.messages as f64),
            bytes_sent: Some(bytes),
            duration,
            edges,
            messages: results,
            drops: Some(totals.drops),
        },
        extra,
    ))
}

/// Cuts a share `fraction` of the live built links (at least one when the
/// share is positive); returns how many.
fn cut_links(h: &mut Harness, fraction: f64) -> usize {
    let mut all: Vec<(usize, usize)> = Vec::new();
    for (a, set) in h.links.iter().enumerate() {
        all.extend(set.iter().filter(|&&b| a < b).map(|&b| (a, b)));
    }
    all.sort_unstable();
    if fraction <= 0.0 || all.is_empty() {
        return 0;
    }
    let count = ((fraction * all.len() as f64).round() as usize).clamp(1, all.len());
    let chosen: Vec<(usize, usize)> = all.choose_multiple(&mut h.rng, count).copied().collect();
    for (a, b) in chosen {
        if let (Some(x), Some(y)) = (&h.slots[a], &h.slots[b]) {
            h.mesh.cut(&x.peers, &y.peers);
        }
        h.links[a].remove(&b);
        h.links[b].remove(&a);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_seeds_are_distinct() {
        let addrs: HashSet<String> = (0..100_000).map(addr).collect();
        assert_eq!(addrs.len(), 100_000);
        assert!(
            addrs
                .iter()
                .all(|a| a.parse::<std::net::SocketAddr>().is_ok())
        );
        assert_ne!(identity_seed(1, 0), identity_seed(1, 1));
        assert_ne!(identity_seed(1, 0), identity_seed(2, 0));
    }

    #[test]
    fn totals_subtract_counter_by_counter() {
        let mut a = Totals {
            received: 10,
            control_bytes: 7,
            ..Totals::default()
        };
        a.drops.insert("rate_limited".into(), 3);
        let mut b = a.clone();
        b.received = 25;
        b.drops.insert("rate_limited".into(), 5);
        let d = b.since(&a);
        assert_eq!((d.received, d.control_bytes), (15, 0));
        assert_eq!(d.drops.get("rate_limited"), Some(&2));
    }
}
