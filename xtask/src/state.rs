//! `cargo xtask state`: what the replicated state costs and how fast it
//! converges, each figure beside the raw limit measured in the same run.
//!
//! ```text
//! cargo xtask state [--mode latency,heal,catchup,heartbeat,rss,procs,desired]
//!                   [--nodes N[,N…]] [--procs N] [--desired-procs N] [--writes M] [--quiet] [--memory-store] [--no-tree] [--entries E[,E…]]
//!                   [--heartbeat-secs S] [--seed S] [--json-only]
//! ```
//!
//! Defaults: every mode, `--nodes 10,50,100 --writes 100 --entries
//! 100000 --heartbeat-secs 30 --seed 1`. Like `mesh`, the command re-runs
//! itself from a release build of xtask (set `XTASK_STATE_DEV=1` to skip).
//! Every mode runs in this process over the in-memory transport (real
//! frame codec, no sockets, no Noise), except `rss`, which measures a child
//! process of its own, and `procs` and the second half of `desired`, which
//! start real `micelio` processes.
//!
//! # Modes
//!
//! - `latency`: N nodes (`GossipNode` + `State`, in-memory stores) on a
//!   random topology (each node dials 3, at most 8 peers), meshed and
//!   settled, then one unmeasured write from every node, each seen
//!   everywhere. M writes of 100-byte values (`bench/<k>`), each from a
//!   random node, alternating with M raw gossip messages, 25 ms apart:
//!   *write → visible* is the time from the
//!   `State::set` call until the last other node's change stream reports
//!   the entry (the origin's `set` returns after its store flushed; the
//!   memory store's flush is free). Beside it, the raw limit: the gossip
//!   messages (type 3, 100 bytes) from random nodes of the same mesh, time
//!   until the last node delivers. p50/p90/p99 (nearest rank) of both; the
//!   three slowest writes are listed on stderr. `--quiet` turns the state
//!   layer's own traffic off in this mode (heartbeats and sync rounds once
//!   an hour), to tell its cost apart. A
//!   second figure, `ack`, is the `set` latency of one node on a sled
//!   store (written and fsynced) beside a bare sled `insert` + `flush` of
//!   the same bytes.
//! - `heal`: five nodes, fully linked, split 2/3 (every link across cut),
//!   1,000 writes on each side (500 + 500, 334 + 333 + 333), each side
//!   converged; then the links are restored and redialled: the time until
//!   every node holds all 2,000.
//! - `catchup`: a node holding E entries (100 authors, 100-byte values,
//!   signed beforehand and loaded from its store), and a fresh node on a
//!   sled store that connects to it: entries/s until it holds all E, and
//!   the bytes the two exchanged ÷ the encoded size of the E entries.
//!   Beside it, on one core: single Ed25519 verifications per second of the
//!   same entries' signatures, and batch verifications per second
//!   (`ed25519_dalek::verify_batch`, 64 per batch). Then the same again
//!   with the link cut once the fresh node holds half: total bytes ÷ raw,
//!   which shows the catch-up resumes rather than starting over.
//!   `--memory-store` gives the fresh node a memory store instead, to tell
//!   sled's share apart.
//! - `heartbeat`: 100 nodes (or the largest `--nodes`) idle for S seconds
//!   with the default liveness timers (heartbeat every 5 s, sync round every
//!   10 s): bytes sent per node per second on the whole network, and
//!   gossip data bytes alone; entries and tombstones before and after
//!   (heartbeats overwrite one key per node: the map does not grow).
//! - `procs`: N real `micelio` processes (release build, N = 50 unless
//!   `--procs` says otherwise) on 127.0.0.1, each bootstrapping from up to
//!   three earlier ones, one runtime thread each (as `cargo xtask mesh
//!   --transport tcp --threads 1`), logging JSON with `micelio_state=debug`. M writes
//!   (`--writes`, at most 50 here) of 100-byte values go in by `ssh … /set`
//!   on random nodes, one at a time. *Write → visible* is from the origin's
//!   `state write acknowledged` log line to the last other process's
//!   `state entry accepted` line for that key (one machine, one clock: the
//!   log timestamps), so ssh's own time is not counted.
//! - `rss`: a child process (`xtask state rss-fill`) writes E entries
//!   (largest `--entries`; 100-byte values, 1,000 authors) into a sled state
//!   store; a second (`xtask state rss-load`) starts a node on it (sled
//!   cache 32 MiB, the default) and reports its resident memory once loaded,
//!   beside its resident memory before opening the store, and the store's
//!   bytes on disk per entry.
//! - `desired`: desired state from `/desire` to a converged fleet, for
//!   each `--nodes` N in process (memory transport, a reconciler that
//!   applies at once) and for `--desired-procs` real processes (10 unless
//!   told, 0 for none; command reconcilers), each round beside a plain state write of
//!   the same mesh; `--writes` rounds (at most 30 with processes);
//!   `--no-tree` turns the broadcast tree off in process. See
//!   [`desired`] for what exactly is timed.
//!
//! Output: a table per mode on stderr, and one JSON line per figure on
//! stdout (`"bench": "state_<mode>"`). Figures vary with the machine:
//! compare rows of one run.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use micelio_gossip::GossipConfig;
use micelio_gossip::test_utils::GossipNode;
use micelio_identity::Identity;
use micelio_state::store::{Batch, MemoryStateStore, SledStateStore, StateStore};
use micelio_state::{State, StateConfig};
use micelio_transport::TransportConfig;
use micelio_transport::memory::MemoryMesh;
use micelio_wire::MsgType;
use micelio_wire::WireMessage as _;
use micelio_wire::limits::FEATURE_STATE_V1;
use micelio_wire::proto::StateEntry;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

use crate::mesh::{percentile, round};

mod desired;
mod procs;

/// Every mode, in the order they run by default.
const MODES: [&str; 7] = [
    "latency",
    "heal",
    "catchup",
    "heartbeat",
    "rss",
    "procs",
    "desired",
];

const USAGE: &str = "usage: cargo xtask state [--mode latency,heal,catchup,heartbeat,rss,procs,desired] \
[--nodes N[,N…]] [--procs N] [--desired-procs N] [--writes M] [--quiet] [--memory-store] [--no-tree] [--entries E[,E…]] [--heartbeat-secs S] [--seed S] [--json-only]";

/// Set to run the dev build as it is.
const DEV_PROFILE_ENV: &str = "XTASK_STATE_DEV";
/// Longest wait for one convergence.
const CONVERGE: Duration = Duration::from_secs(300);
/// Value size of every benchmark entry.
const VALUE: usize = 100;

#[derive(Debug, Clone)]
struct Args {
    modes: Vec<String>,
    nodes: Vec<usize>,
    procs: usize,
    /// Processes of the `desired` mode.
    desired_procs: usize,
    writes: usize,
    entries: Vec<usize>,
    heartbeat_secs: u64,
    /// `latency` with heartbeats and sync rounds once an hour: the state
    /// layer's own background traffic off.
    quiet: bool,
    /// `catchup` into a memory store instead of sled.
    memory_store: bool,
    /// In-process `desired` with the broadcast tree off (every node pushes
    /// to `fanout` random peers, the reference's rule).
    no_tree: bool,
    seed: u64,
    json_only: bool,
}

fn parse(raw: &[&str]) -> anyhow::Result<Option<Args>> {
    let mut a = Args {
        modes: MODES.map(str::to_owned).to_vec(),
        nodes: vec![10, 50, 100],
        procs: 50,
        desired_procs: 10,
        writes: 100,
        entries: vec![100_000],
        heartbeat_secs: 30,
        quiet: false,
        memory_store: false,
        no_tree: false,
        seed: 1,
        json_only: false,
    };
    let mut it = raw.iter();
    let list = |v: &str| -> anyhow::Result<Vec<usize>> {
        v.split(',')
            .map(|x| x.trim().replace('_', "").parse().context("a number"))
            .collect()
    };
    while let Some(&flag) = it.next() {
        let (flag, inline) = crate::mesh::split_flag(flag);
        let mut value = || -> anyhow::Result<String> {
            match inline {
                Some(v) => Ok(v.to_owned()),
                None => it
                    .next()
                    .map(|v| (*v).to_owned())
                    .with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "--help" | "-h" => return Ok(None),
            "--mode" => a.modes = value()?.split(',').map(str::to_owned).collect(),
            "--nodes" => a.nodes = list(&value()?)?,
            "--procs" => a.procs = value()?.parse()?,
            "--desired-procs" => a.desired_procs = value()?.parse()?,
            "--writes" => a.writes = value()?.parse()?,
            "--entries" => a.entries = list(&value()?)?,
            "--heartbeat-secs" => a.heartbeat_secs = value()?.parse()?,
            "--seed" => a.seed = value()?.parse()?,
            "--json-only" => a.json_only = true,
            "--quiet" => a.quiet = true,
            "--memory-store" => a.memory_store = true,
            "--no-tree" => a.no_tree = true,
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    for m in &a.modes {
        if !MODES.contains(&m.as_str()) {
            bail!("unknown mode {m}\n{USAGE}");
        }
    }
    if a.nodes.iter().any(|&n| n < 2) || a.writes == 0 || a.entries.contains(&0) {
        bail!("--nodes must be at least 2, --writes and --entries at least 1");
    }
    Ok(Some(a))
}

fn progress(args: &Args, text: &str) {
    if !args.json_only {
        let _ = writeln!(std::io::stderr().lock(), "state: {text}");
    }
}

fn emit(args: &Args, row: &serde_json::Value, table: &str) {
    if !args.json_only {
        let _ = write!(std::io::stderr().lock(), "{table}");
    }
    let _ = writeln!(std::io::stdout().lock(), "{row}");
}

/// `cargo xtask state …`.
pub(crate) fn run(root: &Path, raw: &[&str]) -> anyhow::Result<()> {
    match raw {
        ["rss-fill", dir, entries] => return rss_fill(Path::new(dir), entries.parse()?),
        ["rss-load", dir] => return rss_load(Path::new(dir)),
        _ => {}
    }
    let Some(args) = parse(raw)? else {
        let _ = writeln!(std::io::stdout().lock(), "{USAGE}");
        return Ok(());
    };
    if cfg!(debug_assertions) && std::env::var_os(DEV_PROFILE_ENV).is_none() {
        progress(
            &args,
            &format!(
                "re-running optimised (cargo run --release -p xtask); set {DEV_PROFILE_ENV}=1 to skip"
            ),
        );
        return crate::mesh::rerun_optimised(root, "state", raw);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    for mode in args.modes.clone() {
        match mode.as_str() {
            "latency" => {
                for &n in &args.nodes {
                    runtime.block_on(latency(&args, n))?;
                }
                ack_latency(&args)?;
            }
            "heal" => runtime.block_on(heal(&args))?,
            "catchup" => {
                for &e in &args.entries {
                    runtime.block_on(catchup(&args, e))?;
                }
            }
            "heartbeat" => {
                let n = args.nodes.iter().copied().max().unwrap_or(100);
                runtime.block_on(heartbeat(&args, n))?;
            }
            "rss" => rss(&args)?,
            "procs" => procs::procs(root, &args)?,
            "desired" => {
                for &n in &args.nodes {
                    runtime.block_on(desired::memory(&args, n))?;
                }
                desired::procs(root, &args)?;
            }
            _ => unreachable!("checked by parse"),
        }
    }
    Ok(())
}

// ---- a mesh of state nodes on the memory transport ----

struct Node {
    net: GossipNode,
    state: State,
}

fn transport(seed: u8) -> TransportConfig {
    let mut t = MemoryMesh::config(seed);
    t.features.push(FEATURE_STATE_V1.to_owned());
    t
}

async fn spawn_node(
    mesh: &MemoryMesh,
    identity: Identity,
    i: usize,
    store: Box<dyn StateStore>,
    config: StateConfig,
) -> anyhow::Result<Node> {
    spawn_node_with(mesh, identity, i, store, config, GossipConfig::default()).await
}

async fn spawn_node_with(
    mesh: &MemoryMesh,
    identity: Identity,
    i: usize,
    store: Box<dyn StateStore>,
    config: StateConfig,
    gossip: GossipConfig,
) -> anyhow::Result<Node> {
    let seed = (i % 250) as u8 + 1;
    let mut t = transport(seed);
    t.listen = Some(crate::mesh::memory::addr(i));
    let net = GossipNode::spawn_with(mesh, Arc::new(identity), t, gossip)
        .await
        .with_context(|| format!("starting node {i}"))?;
    let mut config = config;
    config.node.name = format!("n{i}");
    let state = State::spawn(
        net.identity.clone(),
        config,
        store,
        net.gossip.clone(),
        net.peers.clone(),
    )
    .await
    .with_context(|| format!("starting the state of node {i}"))?;
    Ok(Node { net, state })
}

fn identity(seed: u64, i: usize) -> Identity {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    s[31] = 0x5e;
    Identity::from_seed(s)
}

async fn link(nodes: &[Node], a: usize, b: usize) -> anyhow::Result<()> {
    nodes[a]
        .net
        .link(&nodes[b].net, Duration::from_secs(60))
        .await
        .with_context(|| format!("linking {a}-{b}"))
}

async fn stop(nodes: &[Node]) {
    for n in nodes {
        n.state.shutdown().await;
        n.net.shutdown().await;
    }
}

fn value(k: usize) -> Bytes {
    let mut v = format!("v{k}-").into_bytes();
    v.resize(VALUE, b'.');
    Bytes::from(v)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pcts(mut v: Vec<f64>) -> (Option<f64>, Option<f64>, Option<f64>) {
    v.sort_by(f64::total_cmp);
    (
        percentile(&v, 50.0).map(|x| round(x, 2)),
        percentile(&v, 90.0).map(|x| round(x, 2)),
        percentile(&v, 99.0).map(|x| round(x, 2)),
    )
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
}

// ---- latency ----

async fn latency(args: &Args, n: usize) -> anyhow::Result<()> {
    let mesh = MemoryMesh::new();
    let mut rng = SmallRng::seed_from_u64(args.seed ^ n as u64);
    let mut nodes = Vec::with_capacity(n);
    let mut config = StateConfig::default();
    if args.quiet {
        config.liveness.heartbeat_interval = Duration::from_secs(3600);
        config.liveness.suspect_after = Duration::from_secs(7200);
        config.liveness.dead_after = Duration::from_secs(10_800);
        config.sync_interval = Duration::from_secs(3600);
    }
    for i in 0..n {
        let node = spawn_node(
            &mesh,
            identity(args.seed, i),
            i,
            Box::new(MemoryStateStore::new()),
            config.clone(),
        )
        .await?;
        nodes.push(node);
    }
    let edges = crate::mesh::topology::random_topology(n, 8, 3, &mut rng)?;
    for &(a, b) in &edges {
        link(&nodes, a, b).await?;
    }
    progress(
        args,
        &format!("latency: {n} nodes, {} links; settling", edges.len()),
    );
    // Arrivals: (node, key) → when.
    let seen: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let chat_seen: Arc<Mutex<HashMap<Bytes, Vec<Instant>>>> = Arc::default();
    for node in &nodes {
        let mut changes = node.state.subscribe();
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(c) if c.entry.sub_key().starts_with("bench/") => {
                        let now = Instant::now();
                        if let Ok(mut s) = seen.lock() {
                            s.entry(c.entry.key).or_default().push(now);
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
        });
        let mut chat = node.net.gossip.subscribe(MsgType::Chat).await?;
        let chat_seen = chat_seen.clone();
        tokio::spawn(async move {
            while let Some(d) = chat.recv().await {
                let now = Instant::now();
                if let Ok(mut s) = chat_seen.lock() {
                    s.entry(d.envelope.payload).or_default().push(now);
                }
            }
        });
    }
    // Settle: the first heartbeats and sync rounds after the links; then
    // one unmeasured write from every node, each seen everywhere.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warm_start = Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        node.state
            .set(&format!("bench/warmup-{i}"), value(i))
            .await?;
    }
    loop {
        let done = seen.lock().is_ok_and(|s| {
            s.iter()
                .filter(|(k, _)| k.contains("/bench/warmup-"))
                .filter(|(_, v)| v.len() >= n)
                .count()
                >= n
        });
        if done {
            break;
        }
        if warm_start.elapsed() > Duration::from_secs(30) {
            bail!("the warm-up writes did not reach every node within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // State writes and raw gossip messages alternate, so that both see
    // the same mesh (its broadcast tree settles during the first ones).
    let mut writes = Vec::new();
    let mut chats = Vec::new();
    let mut slowest: Vec<(f64, usize, usize, f64)> = Vec::new();
    let mut lost = 0;
    for k in 0..args.writes {
        let i = rng.random_range(0..n);
        let start = Instant::now();
        let e = nodes[i].state.set(&format!("bench/{k}"), value(k)).await?;
        let acked = ms(start.elapsed());
        let deadline = start + Duration::from_secs(10);
        let done = loop {
            let count = seen
                .lock()
                .map(|s| s.get(&e.key).map_or(0, Vec::len))
                .unwrap_or(0);
            // The origin's own stream reports its write too.
            if count >= n {
                break seen
                    .lock()
                    .ok()
                    .and_then(|s| s[&e.key].iter().max().copied());
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        match done {
            Some(t) => {
                writes.push(ms(t - start));
                slowest.push((ms(t - start), k, i, acked));
            }
            None => lost += 1,
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        let i = rng.random_range(0..n);
        let payload = value(1_000_000 + k);
        let start = Instant::now();
        nodes[i]
            .net
            .gossip
            .originate(MsgType::Chat, payload.clone())
            .await?;
        let deadline = start + Duration::from_secs(10);
        loop {
            let last = chat_seen.lock().ok().and_then(|s| {
                s.get(&payload)
                    .filter(|v| v.len() >= n - 1)
                    .and_then(|v| v.iter().max().copied())
            });
            if let Some(t) = last {
                chats.push(ms(t - start));
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    slowest.truncate(3);
    progress(
        args,
        &format!(
            "latency: slowest writes (ms, write, origin, ms until the origin's ack): {:?}",
            slowest
                .iter()
                .map(|(t, k, i, a)| (round(*t, 1), *k, *i, round(*a, 1)))
                .collect::<Vec<_>>()
        ),
    );
    stop(&nodes).await;
    let (p50, p90, p99) = pcts(writes.clone());
    let (g50, g90, g99) = pcts(chats.clone());
    let row = json!({
        "bench": "state_latency", "transport": "memory", "nodes": n, "writes": args.writes,
        "background": if args.quiet { "off" } else { "default" },
        "visible_everywhere": writes.len(), "lost": lost,
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
        "gossip_p50_ms": g50, "gossip_p90_ms": g90, "gossip_p99_ms": g99,
        "p99_vs_gossip_p99": p99.zip(g99).map(|(a, b)| round(a / b, 2)),
    });
    let table = format!(
        "state write → visible on all {n} nodes (memory): p50 {} p90 {} p99 {} ms ({} of {}); \
         raw gossip message: p50 {} p90 {} p99 {} ms\n",
        cell(p50),
        cell(p90),
        cell(p99),
        writes.len(),
        args.writes,
        cell(g50),
        cell(g90),
        cell(g99)
    );
    emit(args, &row, &table);
    Ok(())
}

/// `set` on a sled store (fsynced) beside bare sled insert + flush.
fn ack_latency(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let writes = args.writes.max(100);
    let acks = runtime.block_on(async {
        let mesh = MemoryMesh::new();
        let path = dir.path().join("state");
        let store =
            tokio::task::spawn_blocking(move || SledStateStore::open(&path, 8 << 20)).await??;
        let node = spawn_node(
            &mesh,
            identity(args.seed, 0),
            0,
            Box::new(store),
            StateConfig::default(),
        )
        .await?;
        let mut acks = Vec::new();
        for k in 0..writes {
            let t = Instant::now();
            node.state.set(&format!("bench/{k}"), value(k)).await?;
            acks.push(ms(t.elapsed()));
        }
        stop(std::slice::from_ref(&node)).await;
        anyhow::Ok(acks)
    })?;
    let db = sled::Config::new()
        .path(dir.path().join("raw"))
        .cache_capacity(8 << 20)
        .open()?;
    let mut raw = Vec::new();
    for k in 0..writes {
        let t = Instant::now();
        db.insert(format!("bench/{k}"), value(k).to_vec())?;
        db.flush()?;
        raw.push(ms(t.elapsed()));
    }
    let (a50, _, a99) = pcts(acks);
    let (r50, _, r99) = pcts(raw);
    let row = json!({
        "bench": "state_ack", "store": "sled", "writes": writes,
        "ack_p50_ms": a50, "ack_p99_ms": a99,
        "sled_insert_flush_p50_ms": r50, "sled_insert_flush_p99_ms": r99,
    });
    let table = format!(
        "local write acknowledged (sled, flushed): p50 {} p99 {} ms; bare sled insert+flush: p50 {} p99 {} ms\n",
        cell(a50),
        cell(a99),
        cell(r50),
        cell(r99)
    );
    emit(args, &row, &table);
    Ok(())
}

// ---- heal ----

async fn count_bench(state: &State) -> anyhow::Result<usize> {
    Ok(state
        .scan("", usize::MAX)
        .await?
        .iter()
        .filter(|e| e.sub_key().starts_with("split/"))
        .count())
}

async fn wait_counts(nodes: &[Node], which: &[usize], want: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for &i in which {
            if count_bench(&nodes[i].state).await? < want {
                all = false;
                break;
            }
        }
        if all {
            return Ok(start.elapsed());
        }
        if start.elapsed() > CONVERGE {
            bail!("nodes {which:?} did not reach {want} entries within {CONVERGE:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn heal(args: &Args) -> anyhow::Result<()> {
    let mesh = MemoryMesh::new();
    let mut nodes = Vec::new();
    for i in 0..5 {
        nodes.push(
            spawn_node(
                &mesh,
                identity(args.seed, 100 + i),
                i,
                Box::new(MemoryStateStore::new()),
                StateConfig::default(),
            )
            .await?,
        );
    }
    let mut across = Vec::new();
    for a in 0..5 {
        for b in a + 1..5 {
            link(&nodes, a, b).await?;
            if (a < 2) != (b < 2) {
                across.push((a, b));
            }
        }
    }
    for &(a, b) in &across {
        mesh.cut(&nodes[a].net.peers, &nodes[b].net.peers);
    }
    let share = [500, 500, 334, 333, 333];
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &count) in share.iter().enumerate() {
        let state = nodes[i].state.clone();
        tasks.spawn(async move {
            for k in 0..count {
                state.set(&format!("split/{i}-{k}"), value(k)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    wait_counts(&nodes, &[0, 1], 1000).await?;
    wait_counts(&nodes, &[2, 3, 4], 1000).await?;
    progress(args, "heal: 1,000 writes on each side of the cut; healing");
    let bytes_before = mesh.network().bytes_sent();
    let start = Instant::now();
    for &(a, b) in &across {
        mesh.restore(&nodes[a].net.peers, &nodes[b].net.peers);
    }
    for &(a, b) in &across {
        link(&nodes, a, b).await?;
    }
    let linked = start.elapsed();
    let converged = wait_counts(&nodes, &[0, 1, 2, 3, 4], 2000).await? + linked;
    let bytes = mesh.network().bytes_sent() - bytes_before;
    stop(&nodes).await;
    let raw: u64 = 1000 * entry_len_estimate() * 2;
    let row = json!({
        "bench": "state_heal", "nodes": 5, "writes_per_side": 1000,
        "relink_ms": round(ms(linked), 1), "converged_ms": round(ms(converged), 1),
        "bytes": bytes, "bytes_vs_one_copy_each_way": round(bytes as f64 / raw as f64, 2),
    });
    let table = format!(
        "heal after a 2/3 split, 1,000 writes per side: links back in {:.0} ms, all 5 nodes hold all 2,000 after {:.0} ms ({} bytes on the wire)\n",
        ms(linked),
        ms(converged),
        bytes
    );
    emit(args, &row, &table);
    Ok(())
}

/// The encoded size of one benchmark entry (key `<id>/split/i-k`, 100-byte
/// value), for a ratio: one copy of each entry sent once.
fn entry_len_estimate() -> u64 {
    let id = identity(0, 0);
    let mut e = StateEntry {
        key: format!("{}/split/0-000", id.node_id()),
        value: value(0),
        lamport_ts: 1000,
        ..Default::default()
    };
    e.sign(&id);
    e.encoded_len_wire() as u64
}

// ---- catch-up ----

/// `count` signed entries by 100 authors (each author's own namespace),
/// signed on every core.
fn signed_entries(seed: u64, count: usize, authors: usize) -> Vec<StateEntry> {
    let ids: Arc<Vec<Identity>> =
        Arc::new((0..authors).map(|a| identity(seed, 10_000 + a)).collect());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = count.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let ids = ids.clone();
            std::thread::spawn(move || {
                let lo = t * chunk;
                let hi = ((t + 1) * chunk).min(count);
                (lo..hi)
                    .map(|k| {
                        let author = &ids[k % ids.len()];
                        let mut e = StateEntry {
                            key: format!("{}/data/{k:08}", author.node_id()),
                            value: value(k),
                            lamport_ts: (k / ids.len()) as u64 + 1,
                            ..Default::default()
                        };
                        e.sign(author);
                        e
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect()
}

/// Single and batch Ed25519 verifications per second, on this thread.
fn verify_rates(entries: &[StateEntry]) -> (f64, f64) {
    use ed25519_dalek::{Signature, VerifyingKey};
    let sample = &entries[..entries.len().min(20_000)];
    let prepared: Vec<(Vec<u8>, Signature, VerifyingKey)> = sample
        .iter()
        .filter_map(|e| {
            let key: [u8; 32] = e.author_pubkey[..].try_into().ok()?;
            let sig: [u8; 64] = e.signature[..].try_into().ok()?;
            Some((
                e.signed_bytes(),
                Signature::from_bytes(&sig),
                VerifyingKey::from_bytes(&key).ok()?,
            ))
        })
        .collect();
    let t = Instant::now();
    let mut ok = 0;
    for (m, s, k) in &prepared {
        if k.verify_strict(m, s).is_ok() {
            ok += 1;
        }
    }
    let single = ok as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut verified = 0;
    for batch in prepared.chunks(64) {
        let msgs: Vec<&[u8]> = batch.iter().map(|(m, _, _)| &m[..]).collect();
        let sigs: Vec<Signature> = batch.iter().map(|(_, s, _)| *s).collect();
        let keys: Vec<VerifyingKey> = batch.iter().map(|(_, _, k)| *k).collect();
        if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
            verified += batch.len();
        }
    }
    let batch = verified as f64 / t.elapsed().as_secs_f64();
    (single, batch)
}

async fn catchup(args: &Args, count: usize) -> anyhow::Result<()> {
    progress(args, &format!("catchup: signing {count} entries"));
    let entries = signed_entries(args.seed, count, 100);
    let raw_bytes: u64 = entries.iter().map(|e| e.encoded_len_wire() as u64).sum();
    let (single, batch) = verify_rates(&entries);
    let mut source = MemoryStateStore::new();
    for chunk in entries.chunks(10_000) {
        source.apply(&Batch {
            puts: chunk.to_vec(),
            removes: Vec::new(),
            clock: 0,
        })?;
    }
    drop(entries);
    let mut rows = Vec::new();
    for cut_midway in [false, true] {
        let dir = tempfile::tempdir()?;
        let mesh = MemoryMesh::new();
        let a = spawn_node(
            &mesh,
            identity(args.seed, 1),
            0,
            Box::new(source.clone()),
            StateConfig::default(),
        )
        .await?;
        let path = dir.path().join("state");
        let store: Box<dyn StateStore> = if args.memory_store {
            Box::new(MemoryStateStore::new())
        } else {
            Box::new(
                tokio::task::spawn_blocking(move || SledStateStore::open(&path, 32 << 20))
                    .await??,
            )
        };
        let b = spawn_node(
            &mesh,
            identity(args.seed, 2),
            1,
            store,
            StateConfig::default(),
        )
        .await?;
        let nodes = [a, b];
        let want = count as u64;
        // Besides the data, each holds its own membership keys; the fresh
        // node is done when it holds everything the source does besides
        // its own.
        let a0 = nodes[0].state.stats().await?.entries;
        let b0 = nodes[1].state.stats().await?.entries;
        let bytes_before = mesh.network().bytes_sent();
        let cpu_before = crate::mesh::sys::cpu_time();
        let start = Instant::now();
        link(&nodes, 0, 1).await?;
        let mut was_cut = false;
        let elapsed = loop {
            let s = nodes[1].state.stats().await?;
            let data = s.entries.saturating_sub(b0);
            if data >= a0 {
                break start.elapsed();
            }
            if cut_midway && !was_cut && data >= want / 2 {
                was_cut = true;
                mesh.cut(&nodes[0].net.peers, &nodes[1].net.peers);
                progress(
                    args,
                    &format!("catchup: cut at {data} of {want}; restoring"),
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                mesh.restore(&nodes[0].net.peers, &nodes[1].net.peers);
                link(&nodes, 0, 1).await?;
            }
            if start.elapsed() > CONVERGE {
                bail!("the fresh node holds {data} of {want} after {CONVERGE:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let cpu = crate::mesh::sys::cpu_time()
            .zip(cpu_before)
            .map(|(a, b)| (a - b).as_secs_f64());
        let bytes = mesh.network().bytes_sent() - bytes_before;
        let s = nodes[1].state.stats().await?;
        stop(&nodes).await;
        let rate = count as f64 / elapsed.as_secs_f64();
        let row = json!({
            "bench": "state_catchup", "entries": count, "cut_midway": cut_midway,
            "fresh_store": if args.memory_store { "memory" } else { "sled" },
            "secs": round(elapsed.as_secs_f64(), 2), "entries_per_s": round(rate, 0),
            "single_verify_per_s": round(single, 0), "batch_verify_per_s": round(batch, 0),
            "vs_batch_rate": round(rate / batch, 2),
            "bytes": bytes, "raw_entry_bytes": raw_bytes,
            "bytes_vs_raw": round(bytes as f64 / raw_bytes as f64, 3),
            "cpu_s": cpu.map(|c| round(c, 2)),
            "stale": s.stale, "sessions_accepted": s.sessions_accepted,
            "pages_received": s.pages_received,
        });
        let table = format!(
            "catch-up of {count} entries{}: {:.1} s, {:.0} entries/s ({:.2} × batch verify {:.0}/s, single {:.0}/s), {:.3} × raw bytes\n",
            if cut_midway { " (cut midway)" } else { "" },
            elapsed.as_secs_f64(),
            rate,
            rate / batch,
            batch,
            single,
            bytes as f64 / raw_bytes as f64
        );
        emit(args, &row, &table);
        rows.push(row);
    }
    Ok(())
}

// ---- heartbeat ----

async fn heartbeat(args: &Args, n: usize) -> anyhow::Result<()> {
    let mesh = MemoryMesh::new();
    let mut rng = SmallRng::seed_from_u64(args.seed ^ 0xbeef);
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        nodes.push(
            spawn_node(
                &mesh,
                identity(args.seed, 500 + i),
                i,
                Box::new(MemoryStateStore::new()),
                StateConfig::default(),
            )
            .await?,
        );
    }
    let edges = crate::mesh::topology::random_topology(n, 8, 3, &mut rng)?;
    for &(a, b) in &edges {
        link(&nodes, a, b).await?;
    }
    progress(
        args,
        &format!("heartbeat: {n} nodes meshed; waiting until every node knows every member"),
    );
    // Settled: every node holds the five membership keys of every member.
    let settle = Instant::now();
    loop {
        let mut all = true;
        for node in &nodes {
            if node.state.stats().await?.entries < 5 * n as u64 {
                all = false;
                break;
            }
        }
        if all {
            break;
        }
        if settle.elapsed() > Duration::from_secs(120) {
            bail!("membership did not spread to every node within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let membership_secs = settle.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let totals = |nodes: &[Node]| {
        let nodes: Vec<(State, micelio_gossip::Gossip)> = nodes
            .iter()
            .map(|n| (n.state.clone(), n.net.gossip.clone()))
            .collect();
        async move {
            let (mut entries, mut tombstones, mut data) = (0u64, 0u64, 0u64);
            for (s, g) in &nodes {
                let st = s.stats().await?;
                entries += st.entries;
                tombstones += st.tombstones;
                data += g.stats().await?.data_bytes_sent;
            }
            anyhow::Ok((entries, tombstones, data))
        }
    };
    let before = totals(&nodes).await?;
    let bytes_before = mesh.network().bytes_sent();
    let frames_before = mesh.network().frames_sent();
    tokio::time::sleep(Duration::from_secs(args.heartbeat_secs)).await;
    let after = totals(&nodes).await?;
    let bytes = mesh.network().bytes_sent() - bytes_before;
    let frames = mesh.network().frames_sent() - frames_before;
    stop(&nodes).await;
    let per = |x: u64| round(x as f64 / n as f64 / args.heartbeat_secs as f64, 1);
    let row = json!({
        "bench": "state_heartbeat", "nodes": n, "secs": args.heartbeat_secs,
        "membership_everywhere_after_s": round(membership_secs, 1),
        "bytes_per_node_per_s": per(bytes), "frames_per_node_per_s": per(frames),
        "gossip_data_bytes_per_node_per_s": per(after.2 - before.2),
        "entries_per_node_before": before.0 / n as u64, "entries_per_node_after": after.0 / n as u64,
        "tombstones_after": after.1,
    });
    let table = format!(
        "idle {n}-node mesh, heartbeat every 5 s: {} bytes/s per node on the wire ({} frames/s), of which gossip data {} bytes/s; entries per node {} → {}, tombstones {}\n",
        per(bytes),
        per(frames),
        per(after.2 - before.2),
        before.0 / n as u64,
        after.0 / n as u64,
        after.1
    );
    emit(args, &row, &table);
    Ok(())
}

// ---- rss ----

fn rss(args: &Args) -> anyhow::Result<()> {
    let count = args.entries.iter().copied().max().unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    progress(
        args,
        &format!("rss: writing {count} entries into a sled store"),
    );
    let status = std::process::Command::new(&exe)
        .args(["state", "rss-fill"])
        .arg(dir.path())
        .arg(count.to_string())
        .status()?;
    if !status.success() {
        bail!("rss-fill failed ({status})");
    }
    let out = std::process::Command::new(&exe)
        .args(["state", "rss-load"])
        .arg(dir.path())
        .output()?;
    if !out.status.success() {
        bail!("rss-load failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut row: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let disk = dir_bytes(&dir.path().join("state"));
    row["bench"] = json!("state_rss");
    row["entries"] = json!(count);
    row["disk_bytes"] = json!(disk);
    row["disk_bytes_per_entry"] = json!(round(disk as f64 / count as f64, 1));
    let table = format!(
        "a node holding {count} entries of 100-byte values (sled cache 32 MiB): RSS {} MiB (before opening the store {} MiB), {:.0} disk bytes per entry\n",
        row["rss_loaded_kib"].as_u64().unwrap_or(0) / 1024,
        row["rss_before_kib"].as_u64().unwrap_or(0) / 1024,
        disk as f64 / count as f64
    );
    emit(args, &row, &table);
    Ok(())
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(path) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn rss_fill(dir: &Path, count: usize) -> anyhow::Result<()> {
    let mut store = SledStateStore::open(&dir.join("state"), 32 << 20)?;
    // In slices, so that this process holds few entries at a time.
    let mut done = 0;
    let mut k0 = 0;
    while done < count {
        let n = (count - done).min(100_000);
        // Each slice has authors of its own: keys are unique across slices.
        let part = signed_entries(k0 as u64 + 7, n, 1000);
        store.apply(&Batch {
            puts: part,
            removes: Vec::new(),
            clock: 0,
        })?;
        done += n;
        k0 += 1;
    }
    store.flush()?;
    Ok(())
}

fn rss_load(dir: &Path) -> anyhow::Result<()> {
    let before = crate::mesh::sys::rss_kib();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (loaded, entries) = runtime.block_on(async {
        let path = dir.join("state");
        let store =
            tokio::task::spawn_blocking(move || SledStateStore::open(&path, 32 << 20)).await??;
        let mesh = MemoryMesh::new();
        let node = spawn_node(
            &mesh,
            identity(9, 9),
            0,
            Box::new(store),
            StateConfig::default(),
        )
        .await?;
        let s = node.state.stats().await?;
        // A few reads, as an operator's /get would do.
        let some = node.state.scan("", 10).await?;
        for e in &some {
            let _ = node.state.get(&e.key).await?;
        }
        let rss = crate::mesh::sys::rss_kib();
        stop(std::slice::from_ref(&node)).await;
        anyhow::Ok((rss, s.entries))
    })?;
    let _ = writeln!(
        std::io::stdout().lock(),
        "{}",
        json!({"rss_before_kib": before, "rss_loaded_kib": loaded, "entries_loaded": entries})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn flags_parse() {
        let a = parse(&[
            "--mode",
            "heal,catchup",
            "--entries",
            "1_000,2000",
            "--json-only",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.modes, ["heal", "catchup"]);
        assert_eq!(a.entries, [1000, 2000]);
        assert!(a.json_only);
        assert!(parse(&["--mode", "nope"]).is_err());
        assert!(parse(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn signed_entries_verify_and_are_unique() {
        let e = signed_entries(1, 50, 7);
        assert_eq!(e.len(), 50);
        let keys: HashSet<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys.len(), 50);
        for x in &e {
            x.verify().unwrap();
        }
        let (single, batch) = verify_rates(&e);
        assert!(single > 0.0 && batch > 0.0);
    }
}
