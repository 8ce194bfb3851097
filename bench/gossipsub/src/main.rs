//! `gossipsub-bench`: libp2p gossipsub meshes in one process, measured the
//! way `cargo xtask mesh` measures micelio, so both can be compared in one
//! sitting on one machine.
//!
//! Every node is a libp2p swarm with an ed25519 identity over libp2p's
//! in-memory transport (noise + yamux), running gossipsub with signed
//! messages and strict validation on one topic. The links are exactly those
//! of micelio's harness for the same `--nodes/--max-peers/--degree/--seed`
//! (the generator is the harness's own source file).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::{AsyncRead, AsyncWrite, StreamExt as _};
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade;
use libp2p::gossipsub::{self, MessageAuthenticity, MessageId};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{Swarm, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Transport as _, noise, yamux};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

#[path = "../../../xtask/src/mesh/topology.rs"]
mod topology;

/// The libp2p crate version this was built against (see Cargo.lock).
const LIBP2P_VERSION: &str = "0.57.1 (libp2p-gossipsub 0.50.1)";
/// The one topic of every run.
const TOPIC: &str = "micelio-bench";
/// Longest wait for the links and the gossipsub mesh to be up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one broadcast may take to reach every node (as the harness).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// A broadcast that reached no new node for this long is finished (as the
/// harness).
const SETTLE: Duration = Duration::from_secs(2);
/// Least time between two broadcasts (as the harness).
const MIN_GAP: Duration = Duration::from_millis(100);
/// Throughput mode: every message must reach every node within this.
const LATE: Duration = Duration::from_secs(2);
/// Throughput mode: a step is drained once no delivery came for this long.
const QUIET: Duration = Duration::from_secs(1);
/// Throughput mode: the aggregate offered rates tried, in order (msg/s).
const RATES: &[u32] = &[
    20, 30, 40, 50, 60, 70, 80, 90, 100, 120, 140, 160, 180, 200, 250, 300, 350, 400, 500, 600,
    800, 1000, 1500, 2000,
];
/// Kernel clock ticks per second of `/proc/self/stat` (USER_HZ, fixed at
/// 100 in Linux's user ABI).
const TICKS_PER_S: u64 = 100;

const USAGE: &str = "usage: gossipsub-bench [--nodes N[,N…]] [--messages M] [--max-peers P]
                       [--degree D] [--seed S] [--mode broadcast|throughput]
                       [--step-secs T] [--json-only]

libp2p gossipsub (signed, strict validation) over the in-memory transport,
N nodes in one process, on the topology `cargo xtask mesh` builds for the
same N/P/D/S. Defaults: --nodes 10,50,100 --messages 20 --max-peers 8
--degree 3 --seed 1 --mode broadcast --step-secs 5.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Broadcast,
    Throughput,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Broadcast => "broadcast",
            Mode::Throughput => "throughput",
        }
    }
}

#[derive(Debug, Clone)]
struct Args {
    nodes: Vec<usize>,
    messages: usize,
    max_peers: usize,
    degree: usize,
    seed: u64,
    mode: Mode,
    step_secs: f64,
    json_only: bool,
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> anyhow::Result<T> {
    text.parse()
        .map_err(|_| anyhow::anyhow!("{flag}: not a number: {text:?}"))
}

fn parse_args(raw: &[String]) -> anyhow::Result<Option<Args>> {
    let mut args = Args {
        nodes: vec![10, 50, 100],
        messages: 20,
        max_peers: 8,
        degree: 3,
        seed: 1,
        mode: Mode::Broadcast,
        step_secs: 5.0,
        json_only: false,
    };
    let mut nodes_given = false;
    let mut it = raw.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> anyhow::Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--json-only" => args.json_only = true,
            "--nodes" => {
                if !nodes_given {
                    args.nodes.clear();
                    nodes_given = true;
                }
                for part in value()?.split(',').filter(|p| !p.is_empty()) {
                    let n: usize = number(flag, part)?;
                    if n < 2 {
                        bail!("--nodes: a mesh needs at least 2 nodes");
                    }
                    args.nodes.push(n);
                }
            }
            "--messages" => args.messages = number(flag, &value()?)?,
            "--max-peers" => args.max_peers = number(flag, &value()?)?,
            "--degree" => args.degree = number(flag, &value()?)?,
            "--seed" => args.seed = number(flag, &value()?)?,
            "--step-secs" => args.step_secs = number(flag, &value()?)?,
            "--mode" => {
                args.mode = match value()?.as_str() {
                    "broadcast" => Mode::Broadcast,
                    "throughput" => Mode::Throughput,
                    other => bail!("--mode: broadcast or throughput, not {other:?}"),
                }
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if args.nodes.is_empty() {
        bail!("--nodes: no mesh size given");
    }
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    if !(args.step_secs > 0.0 && args.step_secs <= 600.0) {
        bail!("--step-secs must be in (0, 600]");
    }
    Ok(Some(args))
}

fn progress(args: &Args, text: &str) {
    if !args.json_only {
        let _ = writeln!(std::io::stderr().lock(), "gossipsub-bench: {text}");
    }
}

/// Process CPU time so far (user + system, every thread), in microseconds:
/// the sum of the threads' run times in `/proc/self/task/*/schedstat`
/// (nanoseconds; threads do not exit during a phase — tokio's workers live
/// as long as the runtime), or, where that is missing, `utime + stime` of
/// `/proc/self/stat` (10 ms ticks).
fn cpu_us() -> anyhow::Result<u64> {
    if let Some(ns) = schedstat_ns() {
        return Ok(ns / 1_000);
    }
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |k: usize| -> anyhow::Result<u64> {
        fields
            .get(k - 3)
            .context("short /proc/self/stat")?
            .parse()
            .context("bad /proc/self/stat field")
    };
    Ok((field(14)? + field(15)?) * (1_000_000 / TICKS_PER_S))
}

/// Sum of the run times of this process's threads, in nanoseconds.
fn schedstat_ns() -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path().join("schedstat");
        // A thread that just exited is simply not counted.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// A chat line of a realistic size (~120 bytes), like the harness's.
fn chat_payload(k: usize) -> Vec<u8> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{{\"nick\":\"mesh-bench\",\"text\":\"benchmark message {k:06}: the quick brown fox jumps over the lazy dog\",\"ts\":{ts}}}"
    )
    .into_bytes()
}

/// Counts every data message a node's gossipsub decodes (and, in strict
/// mode, has verified) — duplicates included: gossipsub calls the inbound
/// transform before its duplicate check.
#[derive(Clone)]
struct CountingTransform(Arc<AtomicU64>);

impl gossipsub::DataTransform for CountingTransform {
    fn inbound_transform(
        &self,
        raw: gossipsub::RawMessage,
    ) -> Result<gossipsub::Message, std::io::Error> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(gossipsub::Message {
            source: raw.source,
            data: raw.data,
            sequence_number: raw.sequence_number,
            topic: raw.topic,
        })
    }

    fn outbound_transform(
        &self,
        _topic: &gossipsub::TopicHash,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, std::io::Error> {
        Ok(data)
    }
}

/// A memory-transport stream that counts the bytes written into it (noise
/// ciphertext, so everything: data, control, yamux framing).
struct Counted<S> {
    inner: S,
    bytes: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.bytes.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Counters shared by every node of a run.
#[derive(Clone, Default)]
struct Counters {
    /// Data messages received (duplicates included).
    data: Arc<AtomicU64>,
    /// Bytes written on the memory transport.
    bytes: Arc<AtomicU64>,
}

/// What a node reports about its gossipsub state.
#[derive(Debug, Clone, Copy)]
struct Status {
    /// Connected peers subscribed to the topic.
    subscribed: usize,
    /// Peers in this node's gossipsub mesh for the topic.
    mesh: usize,
}

enum Cmd {
    Dial(Multiaddr),
    Publish(Vec<u8>, oneshot::Sender<Result<MessageId, String>>),
    Status(oneshot::Sender<Status>),
}

/// A delivery: node, message id, when.
type Receipt = (usize, MessageId, Instant);

struct Node {
    addr: Multiaddr,
    cmd: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

type Behaviour = gossipsub::Behaviour<CountingTransform>;

fn build_swarm(key: &Keypair, counters: &Counters) -> anyhow::Result<Swarm<Behaviour>> {
    let bytes = counters.bytes.clone();
    let transport = MemoryTransport::new()
        .map(move |inner, _| Counted {
            inner,
            bytes: bytes.clone(),
        })
        .upgrade(upgrade::Version::V1)
        .authenticate(noise::Config::new(key).context("noise config")?)
        .multiplex(yamux::Config::default())
        .boxed();
    let behaviour = Behaviour::new_with_transform(
        MessageAuthenticity::Signed(key.clone()),
        gossipsub::Config::default(),
        CountingTransform(counters.data.clone()),
    )
    .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
    let config = libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(Duration::from_secs(3600));
    Ok(Swarm::new(
        transport,
        behaviour,
        key.public().to_peer_id(),
        config,
    ))
}

/// The ed25519 identity of node `i` in a run seeded with `seed` (the
/// harness's seed layout, with a different last byte).
fn identity(seed: u64, i: usize) -> anyhow::Result<Keypair> {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    s[31] = 0x67; // 'g'
    Keypair::ed25519_from_bytes(s).context("ed25519 identity")
}

/// Starts node `i`, listening on memory port `port`.
fn spawn_node(
    i: usize,
    key: Keypair,
    port: NonZeroU64,
    counters: &Counters,
    receipts: mpsc::UnboundedSender<Receipt>,
) -> anyhow::Result<Node> {
    let peer_id: PeerId = key.public().to_peer_id();
    let mut swarm = build_swarm(&key, counters)?;
    let topic = gossipsub::IdentTopic::new(TOPIC);
    swarm
        .behaviour_mut()
        .subscribe(&topic)
        .map_err(|e| anyhow::anyhow!("subscribing: {e}"))?;
    let listen: Multiaddr = Protocol::Memory(port.get()).into();
    swarm
        .listen_on(listen.clone())
        .with_context(|| format!("node {i} listening on {listen}"))?;
    let addr = listen.with(Protocol::P2p(peer_id));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let hash = topic.hash();
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Dial(addr)) => {
                        if let Err(e) = swarm.dial(addr) {
                            let _ = writeln!(std::io::stderr(), "gossipsub-bench: node {i}: dial: {e}");
                        }
                    }
                    Some(Cmd::Publish(data, reply)) => {
                        let r = swarm
                            .behaviour_mut()
                            .publish(topic.clone(), data)
                            .map_err(|e| e.to_string());
                        let _ = reply.send(r);
                    }
                    Some(Cmd::Status(reply)) => {
                        let b = swarm.behaviour();
                        let subscribed = b
                            .all_peers()
                            .filter(|(_, topics)| topics.contains(&&hash))
                            .count();
                        let mesh = b.mesh_peers(&hash).count();
                        let _ = reply.send(Status { subscribed, mesh });
                    }
                },
                event = swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(gossipsub::Event::Message { message_id, .. }) = event {
                        let at = Instant::now();
                        if receipts.send((i, message_id, at)).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    Ok(Node {
        addr,
        cmd: tx,
        task,
    })
}

async fn status(node: &Node) -> anyhow::Result<Status> {
    let (tx, rx) = oneshot::channel();
    node.cmd
        .send(Cmd::Status(tx))
        .map_err(|_| anyhow::anyhow!("node stopped"))?;
    rx.await.context("node stopped")
}

fn publish(
    node: &Node,
    data: Vec<u8>,
) -> anyhow::Result<oneshot::Receiver<Result<MessageId, String>>> {
    let (tx, rx) = oneshot::channel();
    node.cmd
        .send(Cmd::Publish(data, tx))
        .map_err(|_| anyhow::anyhow!("node stopped"))?;
    Ok(rx)
}

async fn publish_now(node: &Node, data: Vec<u8>) -> anyhow::Result<MessageId> {
    publish(node, data)?
        .await
        .context("node stopped")?
        .map_err(|e| anyhow::anyhow!("publish: {e}"))
}

async fn shutdown(nodes: Vec<Node>) {
    for node in nodes {
        drop(node.cmd);
        if tokio::time::timeout(Duration::from_secs(5), node.task)
            .await
            .is_err()
        {
            // The task is detached and ends with the runtime.
        }
    }
}

/// Deliveries so far: message id → node → when.
type Receipts = HashMap<MessageId, HashMap<usize, Instant>>;

fn record(receipts: &mut Receipts, (node, id, at): Receipt) -> MessageId {
    receipts
        .entry(id.clone())
        .or_default()
        .entry(node)
        .or_insert(at);
    id
}

fn count(receipts: &Receipts, id: &MessageId, skip: usize) -> usize {
    receipts
        .get(id)
        .map_or(0, |m| m.keys().filter(|k| **k != skip).count())
}

/// Waits until `id` reached `want` nodes other than `skip`, at most until
/// `deadline`, giving up once no new node got it for [`SETTLE`] (as the
/// harness does).
async fn await_receipts(
    rx: &mut mpsc::UnboundedReceiver<Receipt>,
    receipts: &mut Receipts,
    id: &MessageId,
    skip: usize,
    want: usize,
    deadline: Instant,
) -> usize {
    let mut last = Instant::now();
    loop {
        while let Ok(r) = rx.try_recv() {
            if record(receipts, r) == *id {
                last = Instant::now();
            }
        }
        let got = count(receipts, id, skip);
        if got >= want {
            return got;
        }
        match tokio::time::timeout_at(deadline.min(last + SETTLE), rx.recv()).await {
            Ok(Some(r)) => {
                if record(receipts, r) == *id {
                    last = Instant::now();
                }
            }
            Ok(None) | Err(_) => return count(receipts, id, skip),
        }
    }
}

/// Nearest-rank percentile of ascending `sorted`.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn round(x: f64, places: i32) -> f64 {
    let k = 10f64.powi(places);
    (x * k).round() / k
}

/// Latencies (ms after `t0`) of one message to each node but its origin.
struct Sent {
    latencies_ms: Vec<f64>,
    expected: usize,
}

/// The figures of a set of messages, as the harness computes them.
#[derive(Debug, Clone, Default)]
struct Figures {
    messages: usize,
    reached: f64,
    complete: f64,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    delivery_p50: Option<f64>,
}

fn figures(sent: &[Sent]) -> Figures {
    let expected: usize = sent.iter().map(|m| m.expected).sum();
    let got: usize = sent.iter().map(|m| m.latencies_ms.len()).sum();
    let complete = sent
        .iter()
        .filter(|m| m.latencies_ms.len() >= m.expected)
        .count();
    let per_message = sorted(
        sent.iter()
            .filter_map(|m| m.latencies_ms.iter().copied().reduce(f64::max))
            .collect(),
    );
    let deliveries = sorted(
        sent.iter()
            .flat_map(|m| m.latencies_ms.iter().copied())
            .collect(),
    );
    Figures {
        messages: sent.len(),
        reached: if expected == 0 {
            0.0
        } else {
            got as f64 / expected as f64
        },
        complete: complete as f64 / sent.len().max(1) as f64,
        p50: percentile(&per_message, 50.0),
        p90: percentile(&per_message, 90.0),
        p99: percentile(&per_message, 99.0),
        max: per_message.last().copied(),
        delivery_p50: percentile(&deliveries, 50.0),
    }
}

fn latencies(receipts: &Receipts, id: &MessageId, origin: usize, t0: Instant) -> Vec<f64> {
    receipts
        .get(id)
        .map(|m| {
            m.iter()
                .filter(|(node, _)| **node != origin)
                .map(|(_, at)| at.saturating_duration_since(t0).as_secs_f64() * 1e3)
                .collect()
        })
        .unwrap_or_default()
}

/// One throughput step.
#[derive(Debug, Clone)]
struct Step {
    rate: u32,
    sent_rate: f64,
    lossless: bool,
    figures: Figures,
    redundancy: f64,
    cpu_us_per_msg_per_node: f64,
    bytes_per_node_per_msg: f64,
    duration: Duration,
}

/// What one configuration produced.
struct Outcome {
    nodes: usize,
    edges: usize,
    figures: Figures,
    redundancy: f64,
    cpu_us_per_msg_per_node: f64,
    bytes_per_node_per_msg: f64,
    duration: Duration,
    throughput: Option<f64>,
    steps: Vec<Step>,
}

/// A running mesh.
struct Mesh {
    nodes: Vec<Node>,
    rx: mpsc::UnboundedReceiver<Receipt>,
    receipts: Receipts,
    counters: Counters,
    edges: usize,
    rng: SmallRng,
}

async fn start_mesh(args: &Args, n: usize, run: u64) -> anyhow::Result<Mesh> {
    let mut rng = SmallRng::seed_from_u64(args.seed ^ (n as u64).rotate_left(32));
    let edges = topology::random_topology(n, args.max_peers, args.degree, &mut rng)?;
    let mut degree = vec![0usize; n];
    for &(a, b) in &edges {
        degree[a] += 1;
        degree[b] += 1;
    }
    let counters = Counters::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        // Ports of one run apart from other runs' in this process.
        let port = NonZeroU64::new((run << 32) + i as u64 + 1).context("port")?;
        nodes.push(spawn_node(
            i,
            identity(args.seed, i)?,
            port,
            &counters,
            tx.clone(),
        )?);
    }
    let mesh = Mesh {
        nodes,
        rx,
        receipts: Receipts::new(),
        counters,
        edges: edges.len(),
        rng,
    };
    progress(
        args,
        &format!("{n} nodes started, dialling {} links", edges.len()),
    );
    for &(a, b) in &edges {
        mesh.nodes[a]
            .cmd
            .send(Cmd::Dial(mesh.nodes[b].addr.clone()))
            .map_err(|_| anyhow::anyhow!("node {a} stopped"))?;
    }
    // Every link up with its peer subscribed, and every node with a mesh
    // (gossipsub forms it at its first heartbeat, 5 s after start).
    let low = gossipsub::Config::default().mesh_n_low();
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let mut unlinked = 0;
        let mut unmeshed = 0;
        for (i, node) in mesh.nodes.iter().enumerate() {
            let s = status(node).await?;
            if s.subscribed < degree[i] {
                unlinked += 1;
            }
            if s.mesh < degree[i].min(low) {
                unmeshed += 1;
            }
        }
        if unlinked == 0 && unmeshed == 0 {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "after {SETUP_TIMEOUT:?}: {unlinked} nodes lack subscribed peers, {unmeshed} lack a mesh"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two more heartbeats for the mesh to settle.
    let heartbeat = gossipsub::Config::default().heartbeat_interval();
    tokio::time::sleep(heartbeat * 2).await;
    let meshes: Vec<usize> = {
        let mut v = Vec::with_capacity(n);
        for node in &mesh.nodes {
            v.push(status(node).await?.mesh);
        }
        v
    };
    progress(
        args,
        &format!(
            "links up; gossipsub mesh degree min {} mean {:.2} max {}",
            meshes.iter().min().copied().unwrap_or(0),
            meshes.iter().sum::<usize>() as f64 / n as f64,
            meshes.iter().max().copied().unwrap_or(0),
        ),
    );
    Ok(mesh)
}

impl Mesh {
    /// One unmeasured broadcast, then the gap.
    async fn warm_up(&mut self) -> anyhow::Result<()> {
        let n = self.nodes.len();
        let origin = self.rng.random_range(0..n);
        let id = publish_now(&self.nodes[origin], chat_payload(0))
            .await
            .context("warm-up")?;
        let deadline = Instant::now() + MESSAGE_TIMEOUT;
        await_receipts(
            &mut self.rx,
            &mut self.receipts,
            &id,
            origin,
            n - 1,
            deadline,
        )
        .await;
        tokio::time::sleep(MIN_GAP).await;
        Ok(())
    }

    fn snapshot(&self) -> anyhow::Result<(u64, u64, u64)> {
        Ok((
            self.counters.data.load(Ordering::Relaxed),
            self.counters.bytes.load(Ordering::Relaxed),
            cpu_us()?,
        ))
    }
}

async fn run_broadcast(args: &Args, n: usize, run: u64) -> anyhow::Result<Outcome> {
    let mut mesh = start_mesh(args, n, run).await?;
    let result = async {
        mesh.warm_up().await?;
        let (data0, bytes0, cpu0) = mesh.snapshot()?;
        let started = Instant::now();
        let mut sent = Vec::with_capacity(args.messages);
        for k in 1..=args.messages {
            let origin = mesh.rng.random_range(0..n);
            let t0 = Instant::now();
            let id = publish_now(&mesh.nodes[origin], chat_payload(k))
                .await
                .with_context(|| format!("message {k}"))?;
            await_receipts(
                &mut mesh.rx,
                &mut mesh.receipts,
                &id,
                origin,
                n - 1,
                t0 + MESSAGE_TIMEOUT,
            )
            .await;
            let l = latencies(&mesh.receipts, &id, origin, t0);
            if l.len() < n - 1 {
                progress(
                    args,
                    &format!(
                        "message {k} from node {origin}: reached {} of {}",
                        l.len(),
                        n - 1
                    ),
                );
            }
            sent.push(Sent {
                latencies_ms: l,
                expected: n - 1,
            });
            tokio::time::sleep_until(t0 + MIN_GAP).await;
        }
        let duration = started.elapsed();
        let (data1, bytes1, cpu1) = mesh.snapshot()?;
        let per = (n * args.messages) as f64;
        Ok(Outcome {
            nodes: n,
            edges: mesh.edges,
            figures: figures(&sent),
            redundancy: (data1 - data0) as f64 / per,
            cpu_us_per_msg_per_node: (cpu1 - cpu0) as f64 / per,
            bytes_per_node_per_msg: (bytes1 - bytes0) as f64 / per,
            duration,
            throughput: None,
            steps: Vec::new(),
        })
    }
    .await;
    shutdown(mesh.nodes).await;
    result
}

/// Drains deliveries until none came for [`QUIET`] (at most 10 s).
async fn drain(mesh: &mut Mesh) {
    let until = Instant::now() + MESSAGE_TIMEOUT;
    loop {
        match tokio::time::timeout_at(until.min(Instant::now() + QUIET), mesh.rx.recv()).await {
            Ok(Some(r)) => {
                record(&mut mesh.receipts, r);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

async fn throughput_step(args: &Args, mesh: &mut Mesh, rate: u32) -> anyhow::Result<Step> {
    let n = mesh.nodes.len();
    let total = ((f64::from(rate) * args.step_secs).round() as usize).max(1);
    // Senders take turns in a shuffled order: each sends rate / n msg/s.
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut mesh.rng);
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
    let (data0, bytes0, cpu0) = mesh.snapshot()?;
    let start = Instant::now();
    let mut pending = Vec::with_capacity(total);
    for j in 0..total {
        let at = start + gap * j as u32;
        tokio::time::sleep_until(at).await;
        while let Ok(r) = mesh.rx.try_recv() {
            record(&mut mesh.receipts, r);
        }
        let origin = order[j % n];
        let t0 = Instant::now();
        let reply = publish(&mesh.nodes[origin], chat_payload(j))?;
        pending.push((origin, t0, reply));
    }
    let last_t0 = pending.last().map_or(start, |p| p.1);
    let sent_rate = if total > 1 {
        (total - 1) as f64 / last_t0.saturating_duration_since(start).as_secs_f64()
    } else {
        f64::from(rate)
    };
    let mut ids = Vec::with_capacity(total);
    let mut failed = 0;
    for (origin, t0, reply) in pending {
        match reply.await {
            Ok(Ok(id)) => ids.push((origin, t0, Some(id))),
            Ok(Err(_)) | Err(_) => {
                failed += 1;
                ids.push((origin, t0, None));
            }
        }
    }
    if failed > 0 {
        progress(args, &format!("{rate} msg/s: {failed} publishes refused"));
    }
    // Wait until everything arrived, or the last message is late.
    let deadline = last_t0 + LATE;
    loop {
        while let Ok(r) = mesh.rx.try_recv() {
            record(&mut mesh.receipts, r);
        }
        let done = ids.iter().all(|(origin, _, id)| {
            id.as_ref()
                .is_some_and(|id| count(&mesh.receipts, id, *origin) >= n - 1)
        });
        if done {
            break;
        }
        match tokio::time::timeout_at(deadline, mesh.rx.recv()).await {
            Ok(Some(r)) => {
                record(&mut mesh.receipts, r);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let duration = start.elapsed();
    let (data1, bytes1, cpu1) = mesh.snapshot()?;
    let sent: Vec<Sent> = ids
        .iter()
        .map(|(origin, t0, id)| Sent {
            latencies_ms: id
                .as_ref()
                .map(|id| latencies(&mesh.receipts, id, *origin, *t0))
                .unwrap_or_default()
                .into_iter()
                .filter(|ms| *ms <= LATE.as_secs_f64() * 1e3)
                .collect(),
            expected: n - 1,
        })
        .collect();
    let figures = figures(&sent);
    let per = (n * total) as f64;
    let step = Step {
        rate,
        sent_rate,
        lossless: figures.complete >= 1.0,
        figures,
        redundancy: (data1 - data0) as f64 / per,
        cpu_us_per_msg_per_node: (cpu1 - cpu0) as f64 / per,
        bytes_per_node_per_msg: (bytes1 - bytes0) as f64 / per,
        duration,
    };
    drain(mesh).await;
    Ok(step)
}

async fn run_throughput(args: &Args, n: usize, run: u64) -> anyhow::Result<Outcome> {
    let mut mesh = start_mesh(args, n, run).await?;
    let result = async {
        mesh.warm_up().await?;
        let mut steps: Vec<Step> = Vec::new();
        for &rate in RATES {
            let step = throughput_step(args, &mut mesh, rate).await?;
            progress(
                args,
                &format!(
                    "{rate:>5} msg/s offered ({:.1} sent): {} — reached {:.2}%, complete {:.1}%, p99 {} ms, cpu {:.1} µs/msg/node",
                    step.sent_rate,
                    if step.lossless { "lossless" } else { "LOST OR LATE" },
                    step.figures.reached * 100.0,
                    step.figures.complete * 100.0,
                    cell(step.figures.p99, 1),
                    step.cpu_us_per_msg_per_node,
                ),
            );
            let lossless = step.lossless;
            steps.push(step);
            if !lossless {
                break;
            }
        }
        let best = steps
            .iter()
            .rev()
            .find(|s| s.lossless)
            .or(steps.first())
            .cloned()
            .context("no throughput step ran")?;
        Ok(Outcome {
            nodes: n,
            edges: mesh.edges,
            figures: best.figures.clone(),
            redundancy: best.redundancy,
            cpu_us_per_msg_per_node: best.cpu_us_per_msg_per_node,
            bytes_per_node_per_msg: best.bytes_per_node_per_msg,
            duration: best.duration,
            throughput: Some(if best.lossless { f64::from(best.rate) } else { 0.0 }),
            steps,
        })
    }
    .await;
    shutdown(mesh.nodes).await;
    result
}

fn json(args: &Args, o: &Outcome) -> serde_json::Value {
    let ms = |v: Option<f64>| v.map(|x| round(x, 3));
    let f = &o.figures;
    let mut v = serde_json::json!({
        "bench": "mesh",
        "impl": "gossipsub",
        "transport": "memory",
        "mode": args.mode.name(),
        "nodes": o.nodes,
        "messages": f.messages,
        "reached": round(f.reached, 4),
        "complete": round(f.complete, 4),
        "p50_ms": ms(f.p50),
        "p90_ms": ms(f.p90),
        "p99_ms": ms(f.p99),
        "max_ms": ms(f.max),
        "delivery_p50_ms": ms(f.delivery_p50),
        "redundancy": round(o.redundancy, 3),
        "cpu_us_per_msg_per_node": round(o.cpu_us_per_msg_per_node, 1),
        "bytes_per_node_per_msg": round(o.bytes_per_node_per_msg, 1),
        "throughput_msg_s": o.throughput,
        "edges": o.edges,
        "max_peers": args.max_peers,
        "degree": args.degree,
        "seed": args.seed,
        "duration_s": round(o.duration.as_secs_f64(), 3),
        "topology": "built",
        "libp2p": LIBP2P_VERSION,
    });
    if args.mode == Mode::Throughput {
        v["step_s"] = serde_json::json!(args.step_secs);
        v["steps"] = o
            .steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "rate_msg_s": s.rate,
                    "sent_msg_s": round(s.sent_rate, 1),
                    "lossless": s.lossless,
                    "messages": s.figures.messages,
                    "reached": round(s.figures.reached, 4),
                    "complete": round(s.figures.complete, 4),
                    "p50_ms": ms(s.figures.p50),
                    "p99_ms": ms(s.figures.p99),
                    "max_ms": ms(s.figures.max),
                    "redundancy": round(s.redundancy, 3),
                    "cpu_us_per_msg_per_node": round(s.cpu_us_per_msg_per_node, 1),
                })
            })
            .collect();
    }
    v
}

fn cell(v: Option<f64>, places: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.places$}"))
}

fn table(args: &Args, outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<10} {:>5} {:>6} {:>6} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9} {:>8}",
        "impl",
        "mode",
        "nodes",
        "msgs",
        "edges",
        "reached",
        "complete",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "redundancy",
        "cpu µs",
        "B/node/m",
        "msg/s"
    );
    for o in outcomes {
        let f = &o.figures;
        let _ = writeln!(
            out,
            "{:<10} {:<10} {:>5} {:>6} {:>6} {:>7.1}% {:>8.1}% {:>8} {:>8} {:>8} {:>8} {:>10.2} {:>9.1} {:>9.0} {:>8}",
            "gossipsub",
            args.mode.name(),
            o.nodes,
            f.messages,
            o.edges,
            f.reached * 100.0,
            f.complete * 100.0,
            cell(f.p50, 2),
            cell(f.p90, 2),
            cell(f.p99, 2),
            cell(f.max, 2),
            o.redundancy,
            o.cpu_us_per_msg_per_node,
            o.bytes_per_node_per_msg,
            cell(o.throughput, 0),
        );
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some(args) = parse_args(&raw)? else {
        let _ = writeln!(std::io::stdout(), "{USAGE}");
        return Ok(());
    };
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for (run, &n) in args.nodes.iter().enumerate() {
        progress(
            &args,
            &format!(
                "{} mode, {n} nodes (libp2p {LIBP2P_VERSION})",
                args.mode.name()
            ),
        );
        let run = run as u64 + 1;
        let outcome = match args.mode {
            Mode::Broadcast => run_broadcast(&args, n, run).await,
            Mode::Throughput => run_throughput(&args, n, run).await,
        };
        match outcome {
            Ok(o) => {
                if !args.json_only {
                    let _ = write!(
                        std::io::stderr().lock(),
                        "{}",
                        table(&args, std::slice::from_ref(&o))
                    );
                }
                outcomes.push(o);
            }
            Err(e) => {
                let text = format!("{n} nodes failed: {e:#}");
                progress(&args, &text);
                failures.push(text);
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    if !args.json_only && !outcomes.is_empty() {
        let _ = write!(stdout, "\n{}\n", table(&args, &outcomes));
    }
    for o in &outcomes {
        let _ = writeln!(stdout, "{}", json(&args, o));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
