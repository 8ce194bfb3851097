//! `desired` mode: how long a fleet takes to converge on a desired value,
//! beside a plain state write of the same run.
//!
//! Every fifth node carries the tags `bench,canary`, the others `bench`;
//! node 0 desires a new key `bench/<k>` for `bench+!canary` (so four in
//! five nodes match, node 0 among them) each round. Measured from the
//! `desire` call (in process) or from node 0's acknowledgement of the
//! desired entry (real processes, read from the log):
//! - *applied*: until the last matching node has published its `actual/`
//!   entry for the key with status `ok`;
//! - *held by node 0*: until node 0 holds every one of those entries;
//! - *drift empty*: until, after that, node 0's `drift` lists nothing. In
//!   process, `Desired::drift` is polled every millisecond; with real
//!   processes it is the time node 0's log accepted the last entry (drift
//!   is computed from the map on demand, so it is the same figure),
//!   confirmed by one `/drift --json` over ssh that must say `converged`
//!   (a round where it does not is not counted).
//!
//! Beside them, each round, a plain write from node 0 until every node
//! holds it: the state write propagation time of the same mesh. Desired
//! state costs at least that (the desired entry out), then the
//! reconciler's run, then the matching nodes' answers, which are one
//! entry from each of them at about the same moment: so in process, after
//! the rounds, as many rounds time that shape alone (every matching node
//! writes one entry at once, until node 0 holds them all), and with real
//! processes the command's run is timed (from the task's `reconciling` log
//! line to its `applied`). In process, the `TreeGraft`s of the whole mesh
//! are counted, during the rounds and during the bursts.
//! After each converged round, one `drift` call is timed (in process).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use micelio_identity::NodeId;
use micelio_state::desired::{
    ACTUAL_PREFIX, ActualRecord, ActualStatus, Applied, Author, Desired, DesiredConfig,
    ReconcileFuture, Reconciler,
};
use micelio_state::selector::Selector;
use micelio_state::store::MemoryStateStore;
use micelio_state::{Liveness, StateConfig};
use rand::SeedableRng as _;
use rand::rngs::SmallRng;
use serde_json::json;

use super::procs::{Procs, write_visible};
use super::{Args, cell, emit, ms, pcts, progress, spawn_node_with};

/// What node 0 desires each round.
const SELECTOR: &str = "bench+!canary";
/// The pause after each desire and each write. A round makes node 0
/// originate three messages (its desired entry, its own actual entry, the
/// write); with these pauses that is under 5 a second, below the pace of a
/// node's own originations (`DEFAULT_PACE_PER_SEC`, 8), which would
/// otherwise queue them and be what is measured.
const GAP: Duration = Duration::from_millis(300);
/// The longest wait for one round.
const ROUND: Duration = Duration::from_secs(15);

fn tags(i: usize) -> Vec<String> {
    if i % 5 == 4 {
        vec!["bench".to_owned(), "canary".to_owned()]
    } else {
        vec!["bench".to_owned()]
    }
}

fn matching(n: usize) -> Vec<usize> {
    (0..n).filter(|i| i % 5 != 4).collect()
}

fn value(k: usize) -> String {
    String::from_utf8_lossy(&super::value(k)).into_owned()
}

/// The in-process reconciler: claims `bench/` and reports the value as
/// applied at once, so the figures are the mesh's and the engine's.
struct Echo;

impl Reconciler for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    fn prefix(&self) -> &str {
        "bench/"
    }
    fn apply(&self, _key: &str, value: &str) -> ReconcileFuture {
        let value = value.to_owned();
        Box::pin(async move { Applied::ok(value) })
    }
    fn remove(&self, _key: &str) -> ReconcileFuture {
        Box::pin(async { Applied::ok("") })
    }
}

/// (observer, author, sub-key) → when the observer's change stream
/// reported it.
type Arrivals = Arc<Mutex<HashMap<(usize, usize, String), Instant>>>;

fn arrived(seen: &Arrivals, observer: usize, author: usize, sub: &str) -> Option<Instant> {
    seen.lock()
        .ok()?
        .get(&(observer, author, sub.to_owned()))
        .copied()
}

/// `desired` over the memory transport with `n` nodes.
pub(super) async fn memory(args: &Args, n: usize) -> anyhow::Result<()> {
    let mesh = micelio_transport::memory::MemoryMesh::new();
    let mut rng = SmallRng::seed_from_u64(args.seed ^ n as u64 ^ 0xde51);
    let mut nodes = Vec::with_capacity(n);
    let mut desired = Vec::with_capacity(n);
    for i in 0..n {
        let mut config = StateConfig::default();
        config.node.tags = tags(i);
        let mut gossip = micelio_gossip::GossipConfig::default();
        gossip.broadcast_tree = !args.no_tree;
        let node = spawn_node_with(
            &mesh,
            super::identity(args.seed, i),
            i,
            Box::new(MemoryStateStore::new()),
            config,
            gossip,
        )
        .await?;
        let d = Desired::spawn(
            node.state.clone(),
            DesiredConfig::default(),
            vec![Arc::new(Echo)],
        )
        .await
        .with_context(|| format!("starting the desired state of node {i}"))?;
        nodes.push(node);
        desired.push(d);
    }
    let index: Arc<HashMap<NodeId, usize>> = Arc::new(
        nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (*node.state.node_id(), i))
            .collect(),
    );
    let edges = crate::mesh::topology::random_topology(n, 8, 3, &mut rng)?;
    for &(a, b) in &edges {
        super::link(&nodes, a, b).await?;
    }
    progress(
        args,
        &format!("desired: {n} nodes, {} links; settling", edges.len()),
    );
    let seen: Arrivals = Arc::default();
    for (observer, node) in nodes.iter().enumerate() {
        let mut changes = node.state.subscribe();
        let (seen, index) = (seen.clone(), index.clone());
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(c) => {
                        let now = Instant::now();
                        let sub = c.entry.sub_key();
                        let wanted = sub.starts_with("write/")
                            || (sub.starts_with(ACTUAL_PREFIX)
                                && ActualRecord::decode(&c.entry.value)
                                    .is_ok_and(|r| r.status == ActualStatus::Ok));
                        if let (true, Some(&author)) = (wanted, index.get(&c.entry.author))
                            && let Ok(mut s) = seen.lock()
                        {
                            s.entry((observer, author, sub.to_owned())).or_insert(now);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
        });
    }
    // Settle: one write from every node, seen everywhere, and node 0
    // knows every member's tags.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start = Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        node.state
            .set(&format!("write/warmup-{i}"), super::value(i))
            .await?;
    }
    loop {
        let everywhere = (0..n).all(|a| {
            let sub = format!("write/warmup-{a}");
            (0..n).all(|o| arrived(&seen, o, a, &sub).is_some())
        });
        let members = nodes[0].state.members().await?;
        let tagged = members.len() == n
            && members
                .iter()
                .all(|m| !m.tags.is_empty() && m.liveness == Liveness::Alive);
        if everywhere && tagged {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the {n} nodes did not settle within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grafts_before = grafts(&nodes).await?;
    let selector = Selector::parse(SELECTOR)?;
    let targets = matching(n);
    let (mut applied, mut held, mut drift, mut writes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut calls, mut burst) = (Vec::new(), Vec::new());
    let mut lost = 0;
    let rounds = args.writes;
    for k in 0..rounds {
        let key = format!("bench/{k}");
        let sub = format!("{ACTUAL_PREFIX}{key}");
        let start = Instant::now();
        desired[0]
            .desire(&selector, &key, &value(k), Author::default())
            .await?;
        let deadline = start + ROUND;
        let mut applied_at = None;
        let drift_at = loop {
            if applied_at.is_none() {
                applied_at = targets
                    .iter()
                    .map(|&m| arrived(&seen, m, m, &sub))
                    .collect::<Option<Vec<_>>>()
                    .and_then(|v| v.into_iter().max());
            }
            let at_zero = targets
                .iter()
                .map(|&m| arrived(&seen, 0, m, &sub))
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.into_iter().max());
            if let Some(z) = at_zero
                && desired[0].drift(None).await?.is_empty()
            {
                break Some((z, Instant::now()));
            }
            if Instant::now() > deadline {
                let left = desired[0].drift(None).await?;
                progress(
                    args,
                    &format!(
                        "desired: round {k} did not converge within {ROUND:?}; node 0 sees {} \
                         nodes drift, all applied: {}",
                        left.len(),
                        applied_at.is_some()
                    ),
                );
                break None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        match (applied_at, drift_at) {
            (Some(a), Some((z, d))) => {
                applied.push(ms(a - start));
                held.push(ms(z - start));
                drift.push(ms(d - start));
                // What one `drift` costs on the converged fleet.
                let t = Instant::now();
                desired[0].drift(None).await?;
                calls.push(ms(t.elapsed()));
            }
            _ => lost += 1,
        }
        tokio::time::sleep(GAP).await;
        let wsub = format!("write/{k}");
        let start = Instant::now();
        nodes[0].state.set(&wsub, super::value(k)).await?;
        let deadline = start + ROUND;
        loop {
            let all: Option<Vec<Instant>> = (0..n).map(|o| arrived(&seen, o, 0, &wsub)).collect();
            if let Some(t) = all.and_then(|v| v.into_iter().max()) {
                writes.push(ms(t - start));
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(GAP).await;
        if (k + 1) % 20 == 0 {
            progress(args, &format!("desired: {n} nodes, {} rounds done", k + 1));
        }
    }
    let grafts = grafts(&nodes).await? - grafts_before;
    // Apart, after the rounds (so that it does not disturb them): the
    // shape of the answers to a desire alone.
    for k in 0..rounds {
        // Every matching node writes one entry at the same moment; until
        // node 0 holds them all.
        let bsub = format!("write/burst-{k}");
        let start = Instant::now();
        let mut writers = tokio::task::JoinSet::new();
        for &m in &targets {
            let (state, bsub) = (nodes[m].state.clone(), bsub.clone());
            writers.spawn(async move { state.set(&bsub, super::value(k)).await });
        }
        while let Some(done) = writers.join_next().await {
            done??;
        }
        let deadline = start + ROUND;
        loop {
            let all: Option<Vec<Instant>> = targets
                .iter()
                .map(|&m| arrived(&seen, 0, m, &bsub))
                .collect();
            if let Some(t) = all.and_then(|v| v.into_iter().max()) {
                burst.push(ms(t - start));
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(GAP).await;
    }
    let burst_grafts = self::grafts(&nodes).await? - grafts_before - grafts;
    for d in &desired {
        d.shutdown().await;
    }
    super::stop(&nodes).await;
    report(
        args,
        &Figures {
            transport: if args.no_tree {
                "memory, tree off"
            } else {
                "memory"
            },
            grafts: Some(grafts),
            burst_grafts: Some(burst_grafts),
            nodes: n,
            matching: targets.len(),
            rounds,
            lost,
            applied,
            held,
            drift,
            calls,
            writes,
            burst,
            runs: Vec::new(),
        },
    );
    Ok(())
}

/// `TreeGraft`s sent by all of `nodes` so far.
async fn grafts(nodes: &[super::Node]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for node in nodes {
        sum += node.net.gossip.stats().await?.grafts_sent;
    }
    Ok(sum)
}

/// The figures of one run.
struct Figures {
    transport: &'static str,
    nodes: usize,
    matching: usize,
    rounds: usize,
    /// `TreeGraft`s the whole mesh sent during the rounds (in process).
    grafts: Option<u64>,
    /// The same during the bursts (in process).
    burst_grafts: Option<u64>,
    lost: usize,
    applied: Vec<f64>,
    /// Until node 0 held every matching node's actual entry.
    held: Vec<f64>,
    drift: Vec<f64>,
    /// One `Desired::drift` call on node 0 once converged (in process).
    calls: Vec<f64>,
    writes: Vec<f64>,
    /// Every matching node writes once at the same moment: until node 0
    /// holds them all (in process).
    burst: Vec<f64>,
    /// A command reconciler's run, from the task's `reconciling` to its
    /// `applied` (real processes).
    runs: Vec<f64>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b)
        .filter(|(_, b)| *b > 0.0)
        .map(|(a, b)| crate::mesh::round(a / b, 2))
}

fn report(args: &Args, f: &Figures) {
    let (a50, a90, a99) = pcts(f.applied.clone());
    let (d50, d90, d99) = pcts(f.drift.clone());
    let (h50, _, h99) = pcts(f.held.clone());
    let (c50, _, c99) = pcts(f.calls.clone());
    let (b50, _, b99) = pcts(f.burst.clone());
    let (r50, _, r99) = pcts(f.runs.clone());
    let (w50, w90, w99) = pcts(f.writes.clone());
    let row = json!({
        "bench": "state_desired", "transport": f.transport, "nodes": f.nodes,
        "matching": f.matching, "rounds": f.rounds, "grafts": f.grafts, "burst_grafts": f.burst_grafts, "converged": f.drift.len(), "lost": f.lost,
        "applied_p50_ms": a50, "applied_p90_ms": a90, "applied_p99_ms": a99,
        "drift_call_p50_ms": c50, "drift_call_p99_ms": c99,
        "burst_to_node0_p50_ms": b50, "burst_to_node0_p99_ms": b99,
        "command_run_p50_ms": r50, "command_run_p99_ms": r99,
        "held_by_node0_p50_ms": h50, "held_by_node0_p99_ms": h99,
        "drift_empty_p50_ms": d50, "drift_empty_p90_ms": d90, "drift_empty_p99_ms": d99,
        "write_p50_ms": w50, "write_p90_ms": w90, "write_p99_ms": w99,
        "drift_empty_p50_vs_write_p50": ratio(d50, w50),
        "drift_empty_p99_vs_write_p99": ratio(d99, w99),
    });
    let table = format!(
        "desired → converged, {} of {} nodes match ({}): applied everywhere p50 {} p90 {} p99 {} ms; \
         every actual entry on node 0 p50 {} p99 {} ms; \
         /drift empty on node 0 p50 {} p90 {} p99 {} ms ({} of {} rounds; one drift call p50 {} p99 {} ms); \
         state write → all nodes p50 {} p90 {} p99 {} ms; drift empty ÷ write p50 {} p99 {}; \
         {} matching nodes write at once → node 0 p50 {} p99 {} ms; command run p50 {} p99 {} ms{}\n",
        f.matching,
        f.nodes,
        f.transport,
        cell(a50),
        cell(a90),
        cell(a99),
        cell(h50),
        cell(h99),
        cell(d50),
        cell(d90),
        cell(d99),
        f.drift.len(),
        f.rounds,
        cell(c50),
        cell(c99),
        cell(w50),
        cell(w90),
        cell(w99),
        cell(ratio(d50, w50)),
        cell(ratio(d99, w99)),
        f.matching,
        cell(b50),
        cell(b99),
        cell(r50),
        cell(r99),
        f.grafts
            .zip(f.burst_grafts)
            .map(|(g, b)| format!(
                "; grafts: {g} in the {} rounds, {b} in the bursts",
                f.rounds
            ))
            .unwrap_or_default(),
    );
    emit(args, &row, &table);
}

/// `desired` with real processes and command reconcilers.
pub(super) fn procs(root: &Path, args: &Args) -> anyhow::Result<()> {
    if args.desired_procs == 0 {
        return Ok(());
    }
    let n = args.desired_procs.max(2);
    let mut fleet = Procs::start(root, args, n, |i, dir| {
        let tags: Vec<String> = tags(i).iter().map(|t| format!("{t:?}")).collect();
        let config = format!(
            "[node]\ntags = [{}]\n\n[[reconcile]]\nname = \"bench\"\nprefix = \"bench/\"\n\
             command = [\"/bin/sh\", \"-c\", \"cat > /dev/null\"]\ntimeout = \"10s\"\n",
            tags.join(", ")
        );
        let path = dir.join(format!("node-{i}.toml"));
        std::fs::write(&path, config)?;
        Ok(Some(path))
    })?;
    let targets = matching(n);
    let rounds = args.writes.min(30);
    let (mut applied, mut held, mut drift, mut writes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut lost, mut unconfirmed) = (0, 0);
    let mut runs = Vec::new();
    for k in 0..rounds {
        let key = format!("bench/{k}");
        fleet.ssh(0, &format!("/desire {SELECTOR} {key} {}", value(k)))?;
        let desired_sub = format!("desired/{SELECTOR}/{key}");
        let actual_sub = format!("/{ACTUAL_PREFIX}{key}");
        let mut times = None;
        fleet.wait(ROUND, |p| {
            let Some(start) = p.find(&desired_sub).and_then(|(_, s)| s.acked) else {
                return false;
            };
            // Per matching process: when it published, and when node 0
            // held it.
            let mut per: HashMap<usize, (std::time::SystemTime, std::time::SystemTime)> =
                HashMap::new();
            for (full, s) in &p.seen {
                if !full.ends_with(&actual_sub) {
                    continue;
                }
                if let (Some(by), Some(at)) = (s.acked_by, s.acked) {
                    let at_zero = if by == 0 {
                        Some(at)
                    } else {
                        s.accepted.get(&0).copied()
                    };
                    if let Some(z) = at_zero {
                        per.insert(by, (at, z));
                    }
                }
            }
            if !targets.iter().all(|m| per.contains_key(m)) {
                return false;
            }
            let since = |t: std::time::SystemTime| ms(t.duration_since(start).unwrap_or_default());
            let a = per.values().map(|v| since(v.0)).fold(0.0, f64::max);
            let d = per.values().map(|v| since(v.1)).fold(0.0, f64::max);
            times = Some((a, d));
            true
        });
        match times {
            Some((a, d)) => {
                applied.push(a);
                held.push(d);
                drift.push(d);
                let text = fleet.ssh(0, "/drift --json")?;
                let converged = serde_json::from_str::<serde_json::Value>(&text)
                    .is_ok_and(|v| v["converged"] == true);
                if !converged {
                    // Not a convergence after all: not counted.
                    applied.pop();
                    held.pop();
                    drift.pop();
                    unconfirmed += 1;
                }
            }
            None => lost += 1,
        }
        fleet.drain();
        for &m in &targets {
            if let Some((Some(s), Some(e))) = fleet.runs.get(&(m, key.clone())) {
                runs.push(ms(e.duration_since(*s).unwrap_or_default()));
            }
        }
        let wsub = format!("write/{k}");
        fleet.ssh(0, &format!("/set {wsub} {}", value(k)))?;
        if let Some(d) = write_visible(&mut fleet, &wsub) {
            writes.push(ms(d));
        }
        std::thread::sleep(GAP);
    }
    fleet.stop();
    if unconfirmed > 0 {
        progress(
            args,
            &format!(
                "desired: {unconfirmed} rounds where /drift --json on node 0 was not yet converged \
                 when its log held every actual entry"
            ),
        );
    }
    report(
        args,
        &Figures {
            transport: "tcp",
            grafts: None,
            burst_grafts: None,
            nodes: n,
            matching: targets.len(),
            rounds,
            lost: lost + unconfirmed,
            applied,
            held,
            drift,
            calls: Vec::new(),
            writes,
            burst: Vec::new(),
            runs,
        },
    );
    Ok(())
}
