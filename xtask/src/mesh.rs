//! `cargo xtask mesh`: how fast, and how completely, a gossip message reaches
//! every node of a mesh (SPEC §13), and what it costs.
//!
//! ```text
//! cargo xtask mesh [--nodes N[,N…]]… [--transport memory|tcp|both]
//!                  [--messages M] [--max-peers P] [--degree D] [--seed S]
//!                  [--json-only]
//! ```
//!
//! Defaults: `--nodes 10,50,100 --transport memory --messages 20
//! --max-peers 8 --degree 3 --seed 1`. `--nodes` is repeatable and takes
//! comma lists. Each (transport, N) pair is one configuration.
//!
//! # What is measured
//!
//! For every configuration, M messages are broadcast one at a time; for each
//! message the harness records when each receiving node got it. Reported:
//!
//! - `p50_ms`, `p90_ms`, `p99_ms`, `max_ms`: percentiles (nearest rank) over
//!   the M messages of the *time until every node has it*, i.e. for one
//!   message the largest latency over the nodes that received it. Use
//!   `complete` (the share of messages that reached every node) to tell
//!   whether that maximum covers all nodes;
//! - `delivery_p50_ms`: median latency over all (message, node) deliveries;
//! - `reached`: deliveries that happened ÷ deliveries expected;
//! - `redundancy`: gossip frames sent per node per broadcast — over all
//!   nodes, the increase of the gossip counters `forwarded` (frames sent
//!   when relaying) plus `sent_originated` (the first sends, one per peer of
//!   the originator) during the broadcast phase, ÷ N ÷ M. Each node receives
//!   a message about `redundancy` times; 1 would be a perfect spanning
//!   tree, flooding gives about the mean degree, fanout f at most f;
//! - `bytes_per_node_per_s`: bytes sent on the network during the broadcast
//!   phase ÷ N ÷ its duration (frames with their headers, keepalives and
//!   peer exchanges included; the memory transport has no Noise overhead).
//!   The phase includes the 100 ms gaps and the waits for messages that
//!   miss a node (see below), so it is a load figure for this pacing, not a
//!   capacity; `bytes_per_node_per_msg` is the same per broadcast instead of
//!   per second.
//!
//! Output: a table (to stdout), then one JSON line per configuration with the
//! keys `bench` (`"mesh"`), `transport`, `nodes`, `messages`, `reached`,
//! `complete`, `p50_ms`, `p90_ms`, `p99_ms`, `max_ms`, `delivery_p50_ms`,
//! `redundancy`, `bytes_per_node_per_s`, `bytes_per_node_per_msg`, `edges`,
//! `drops` (memory: gossip drops other than duplicates and full transport
//! send queues during the broadcast phase, by reason; tcp: `null`),
//! `max_peers`, `degree`, `seed`, `duration_s`, `topology`. `--json-only`
//! prints only the JSON lines; progress goes to stderr otherwise.
//!
//! # How
//!
//! **memory**: N nodes in this process, each a `PeerManager` over one shared
//! `MemoryNetwork` (addresses `127.1.x.y:4000`, identities derived from the
//! seed) and a `Gossip` engine with the default configuration (fanout 3,
//! 10 hops). The topology is built, not discovered: a random spanning tree
//! (so the mesh is connected), then random extra links until each node has
//! `--degree` links where both ends are under `--max-peers`. Every link is
//! dialled explicitly and the run waits (bounded) until all are up. Peer
//! exchange and discovery run only once an hour, so the topology measured is
//! the one built; the actual link count at broadcast time is reported as
//! `edges`. Each message is originated by a random node, latencies are
//! `tokio::time::Instant` differences between the `originate` call and each
//! other node's subscriber receiving it.
//!
//! **tcp**: N real `micelio` processes (built first with
//! `cargo build --release -p micelio`, honouring `CARGO_TARGET_DIR`) on
//! 127.0.0.1, each started with `--listen 127.0.0.1:0`, a data dir in a temp
//! dir, JSON logs, exchange and discovery every second and
//! `network.max_peers` = P, bootstrapping from 1–2 random earlier nodes. The
//! mesh is whatever discovery makes of that (`topology: "discovered"`). The
//! *originator is always the harness*: it joins the mesh as an in-process
//! node (TCP transport + gossip, bootstrapping from 3 random processes) and
//! originates `ChatMessage`s (type 3); every process logs each chat it
//! receives as a JSON line (`"message":"chat received"`, `message_id`,
//! `timestamp`) that the harness reads from its stderr. Latency is that log
//! timestamp minus the harness's wall clock (`SystemTime`) just before
//! originating, so it includes the time to format and write the log line.
//! `redundancy` and `bytes_per_node_per_s` are not measurable from outside
//! the processes yet and are printed as `null`; `edges` is the harness's
//! own peer count.
//!
//! In both modes one unmeasured warm-up broadcast comes first (in tcp mode it
//! also waits until the mesh carries a message to every node, up to 30 s),
//! the messages are sent one at a time — the next one once the previous
//! reached every node, or reached no new node for 2 s (gossip does not
//! retransmit, so such a message is finished), or after 10 s at most — and
//! at least 100 ms apart, so that no sender exceeds the default per-sender
//! rate limit (10 msg/s, burst 20). Messages that miss nodes are listed on
//! stderr with the nodes they missed.
//!
//! `cargo xtask` builds xtask in the dev profile, where signatures are far
//! slower than in a real node: `mesh` therefore re-runs itself once from a
//! release build (`cargo run --release -p xtask -- mesh …`, built the first
//! time it is needed). Set `XTASK_MESH_DEV=1` to measure the dev build
//! instead (only useful to debug the harness).
//!
//! # Caveats
//!
//! Everything runs on one machine: in memory mode N nodes share the
//! runtime's worker threads, in tcp mode N processes share the cores, so
//! latencies grow with N partly because of CPU contention, not only hops.
//! Timings of a single run vary; compare figures from the same machine and
//! run several seeds before drawing conclusions.
//!
//! `reached` below 1 with no drops is the nature of push gossip with a
//! fixed fanout, not a lost frame: a node forwards each message once, to 3
//! random peers, so a node is missed when none of its peers picks it. The
//! denser the mesh (compared with the fanout), the likelier: with every
//! node at 8 links, about 1 % of deliveries miss.
//!
//! In tcp mode discovery keeps running (every second) during the
//! measurement, so links may still be added while messages fly, and the
//! harness node takes a peer slot of the processes it is connected to.

mod memory;
mod tcp;
mod topology;

pub(crate) use tcp::{Children, build_binary, node_command};

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Default sizes of the meshes.
const DEFAULT_NODES: &[usize] = &[10, 50, 100];
/// How long one message may take to reach every node before the missing
/// deliveries count as misses.
pub(crate) const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// A message that reached no new node for this long is finished.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);
/// Least time between two originations (the default rate limit is 10 msg/s
/// per sender).
pub(crate) const MIN_GAP: Duration = Duration::from_millis(100);

const USAGE: &str = "usage: cargo xtask mesh [--nodes N[,N…]]… [--transport memory|tcp|both]
                        [--messages M] [--max-peers P] [--degree D] [--seed S] [--json-only]

Measures how fast and how completely gossip messages reach every node of a
mesh (in process over the memory transport, or real `micelio` processes over
TCP). Defaults: --nodes 10,50,100 --transport memory --messages 20
--max-peers 8 --degree 3 --seed 1.";

/// Which transports to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// In-process nodes over `MemoryNetwork`.
    Memory,
    /// `micelio` processes over TCP on 127.0.0.1.
    Tcp,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Tcp => "tcp",
        }
    }
}

/// The parsed command line of `cargo xtask mesh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MeshArgs {
    /// Mesh sizes, in order.
    pub(crate) nodes: Vec<usize>,
    /// Transports, in order.
    pub(crate) transports: Vec<Kind>,
    /// Measured broadcasts per configuration.
    pub(crate) messages: usize,
    /// Peer cap of every node.
    pub(crate) max_peers: usize,
    /// Links per node of the built topology (memory).
    pub(crate) degree: usize,
    /// Seed of every random choice the harness makes.
    pub(crate) seed: u64,
    /// Print only the JSON lines.
    pub(crate) json_only: bool,
}

impl Default for MeshArgs {
    fn default() -> Self {
        Self {
            nodes: DEFAULT_NODES.to_vec(),
            transports: vec![Kind::Memory],
            messages: 20,
            max_peers: 8,
            degree: 3,
            seed: 1,
            json_only: false,
        }
    }
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> anyhow::Result<T> {
    text.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag}: {text:?} is not a valid number"))
}

/// Splits `--flag=value` into the flag and its inline value; any other
/// argument comes back whole, with no value.
pub(crate) fn split_flag(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f, Some(v)),
        _ => (arg, None),
    }
}

/// Parses the arguments after `mesh`. `Ok(None)` means `--help`.
pub(crate) fn parse_args(args: &[&str]) -> anyhow::Result<Option<MeshArgs>> {
    let mut out = MeshArgs::default();
    let mut nodes_given = false;
    let mut i = 0;
    while i < args.len() {
        let (flag, inline) = split_flag(args[i]);
        i += 1;
        if matches!(flag, "--help" | "-h") {
            return Ok(None);
        }
        if flag == "--json-only" {
            if inline.is_some() {
                bail!("--json-only takes no value");
            }
            out.json_only = true;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let v = args
                    .get(i)
                    .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))?;
                i += 1;
                v
            }
        };
        match flag {
            "--nodes" => {
                if !nodes_given {
                    out.nodes.clear();
                    nodes_given = true;
                }
                for part in value.split(',').filter(|p| !p.trim().is_empty()) {
                    out.nodes.push(number(flag, part)?);
                }
            }
            "--transport" => {
                out.transports = match value {
                    "memory" => vec![Kind::Memory],
                    "tcp" => vec![Kind::Tcp],
                    "both" => vec![Kind::Memory, Kind::Tcp],
                    other => bail!("--transport: {other:?} is not memory, tcp or both"),
                }
            }
            "--messages" => out.messages = number(flag, value)?,
            "--max-peers" => out.max_peers = number(flag, value)?,
            "--degree" => out.degree = number(flag, value)?,
            "--seed" => out.seed = number(flag, value)?,
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if out.nodes.is_empty() {
        bail!("--nodes: give at least one mesh size");
    }
    if let Some(n) = out.nodes.iter().find(|n| **n < 2) {
        bail!("--nodes: a mesh needs at least 2 nodes, not {n}");
    }
    if out.messages == 0 {
        bail!("--messages: at least 1");
    }
    if out.max_peers < 2 {
        bail!("--max-peers: at least 2 (a connected mesh needs it)");
    }
    Ok(Some(out))
}

/// One broadcast as observed by the harness.
#[derive(Debug, Clone, Default)]
pub(crate) struct MessageResult {
    /// Latency to each node that received it, in milliseconds.
    pub(crate) latencies_ms: Vec<f64>,
    /// How many nodes should have received it.
    pub(crate) expected: usize,
}

/// What one configuration produced, before summarising.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The transport.
    pub(crate) kind: Kind,
    /// Mesh size (processes in tcp mode, the harness node not counted).
    pub(crate) nodes: usize,
    /// Per measured message.
    pub(crate) messages: Vec<MessageResult>,
    /// Frames sent per node per broadcast, if measurable.
    pub(crate) redundancy: Option<f64>,
    /// Bytes sent during the broadcast phase, if measurable.
    pub(crate) bytes_sent: Option<u64>,
    /// Duration of the broadcast phase.
    pub(crate) duration: Duration,
    /// Links at broadcast time (memory: all; tcp: the harness's).
    pub(crate) edges: usize,
    /// Messages dropped during the broadcast phase, by reason (duplicates
    /// excluded), if measurable.
    pub(crate) drops: Option<BTreeMap<String, u64>>,
}

/// Deliveries seen so far: message id → (node → when it got it).
pub(crate) type Receipts<T> = HashMap<String, HashMap<usize, T>>;

/// Waits until message `id` has reached `want` nodes other than `skip`, at
/// most until `deadline`, and gives up earlier once no new node got it for
/// [`SETTLE`] (gossip does not retransmit: a quiet message is finished).
/// Drains `rx` into `receipts` meanwhile; returns how many nodes got `id`.
pub(crate) async fn await_receipts<T>(
    rx: &mut mpsc::UnboundedReceiver<(usize, String, T)>,
    receipts: &mut Receipts<T>,
    id: &str,
    skip: Option<usize>,
    want: usize,
    deadline: Instant,
) -> usize {
    let count = |r: &Receipts<T>| {
        r.get(id)
            .map_or(0, |m| m.keys().filter(|k| Some(**k) != skip).count())
    };
    // Records a receipt; whether it is one of `id`.
    let record = |r: &mut Receipts<T>, (node, mid, at): (usize, String, T)| {
        let ours = mid == id;
        r.entry(mid).or_default().entry(node).or_insert(at);
        ours
    };
    let mut last = Instant::now();
    loop {
        while let Ok(receipt) = rx.try_recv() {
            if record(receipts, receipt) {
                last = Instant::now();
            }
        }
        let got = count(receipts);
        if got >= want {
            return got;
        }
        match tokio::time::timeout_at(deadline.min(last + SETTLE), rx.recv()).await {
            Ok(Some(receipt)) => {
                if record(receipts, receipt) {
                    last = Instant::now();
                }
            }
            Ok(None) | Err(_) => return count(receipts),
        }
    }
}

/// Nearest-rank percentile of `sorted` (ascending); `None` when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The figures of one configuration.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    kind: Kind,
    nodes: usize,
    messages: usize,
    reached: f64,
    complete: f64,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    delivery_p50: Option<f64>,
    redundancy: Option<f64>,
    bytes_per_node_per_s: Option<f64>,
    bytes_per_node_per_msg: Option<f64>,
    edges: usize,
    duration: Duration,
    drops: Option<BTreeMap<String, u64>>,
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Summarises an outcome.
pub(crate) fn summarise(o: &Outcome) -> Summary {
    let expected: usize = o.messages.iter().map(|m| m.expected).sum();
    let got: usize = o.messages.iter().map(|m| m.latencies_ms.len()).sum();
    let complete = o
        .messages
        .iter()
        .filter(|m| m.latencies_ms.len() >= m.expected)
        .count();
    let per_message = sorted(
        o.messages
            .iter()
            .filter_map(|m| m.latencies_ms.iter().copied().reduce(f64::max))
            .collect(),
    );
    let deliveries = sorted(
        o.messages
            .iter()
            .flat_map(|m| m.latencies_ms.iter().copied())
            .collect(),
    );
    let n = o.nodes as f64;
    let m = o.messages.len().max(1) as f64;
    let secs = o.duration.as_secs_f64();
    Summary {
        kind: o.kind,
        nodes: o.nodes,
        messages: o.messages.len(),
        reached: if expected == 0 {
            0.0
        } else {
            got as f64 / expected as f64
        },
        complete: complete as f64 / m,
        p50: percentile(&per_message, 50.0),
        p90: percentile(&per_message, 90.0),
        p99: percentile(&per_message, 99.0),
        max: per_message.last().copied(),
        delivery_p50: percentile(&deliveries, 50.0),
        redundancy: o.redundancy,
        bytes_per_node_per_s: o
            .bytes_sent
            .filter(|_| secs > 0.0)
            .map(|b| b as f64 / n / secs),
        bytes_per_node_per_msg: o.bytes_sent.map(|b| b as f64 / n / m),
        edges: o.edges,
        duration: o.duration,
        drops: o.drops.clone(),
    }
}

/// `x` rounded to `places` decimals.
pub(crate) fn round(x: f64, places: i32) -> f64 {
    let k = 10f64.powi(places);
    (x * k).round() / k
}

impl Summary {
    /// The JSON line of this configuration.
    fn json(&self, args: &MeshArgs) -> serde_json::Value {
        let ms = |v: Option<f64>| v.map(|x| round(x, 3));
        serde_json::json!({
            "bench": "mesh",
            "transport": self.kind.name(),
            "nodes": self.nodes,
            "messages": self.messages,
            "reached": round(self.reached, 4),
            "complete": round(self.complete, 4),
            "p50_ms": ms(self.p50),
            "p90_ms": ms(self.p90),
            "p99_ms": ms(self.p99),
            "max_ms": ms(self.max),
            "delivery_p50_ms": ms(self.delivery_p50),
            "redundancy": self.redundancy.map(|r| round(r, 3)),
            "bytes_per_node_per_s": self.bytes_per_node_per_s.map(|b| round(b, 1)),
            "bytes_per_node_per_msg": self.bytes_per_node_per_msg.map(|b| round(b, 1)),
            "edges": self.edges,
            "drops": self.drops,
            "max_peers": args.max_peers,
            "degree": args.degree,
            "seed": args.seed,
            "duration_s": round(self.duration.as_secs_f64(), 3),
            "topology": match self.kind {
                Kind::Memory => "built",
                Kind::Tcp => "discovered",
            },
        })
    }
}

fn cell(v: Option<f64>, places: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.places$}"))
}

/// The readable table of all configurations.
fn table(summaries: &[Summary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:>5} {:>5} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>12}",
        "transport",
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
        "B/node/s"
    );
    for s in summaries {
        let _ = writeln!(
            out,
            "{:<9} {:>5} {:>5} {:>6} {:>7.1}% {:>8.1}% {:>9} {:>9} {:>9} {:>9} {:>10} {:>12}",
            s.kind.name(),
            s.nodes,
            s.messages,
            s.edges,
            s.reached * 100.0,
            s.complete * 100.0,
            cell(s.p50, 2),
            cell(s.p90, 2),
            cell(s.p99, 2),
            cell(s.max, 2),
            cell(s.redundancy, 2),
            cell(s.bytes_per_node_per_s, 0),
        );
    }
    out
}

/// Progress and notes, to stderr unless `--json-only`.
pub(crate) fn progress(args: &MeshArgs, text: &str) {
    if !args.json_only {
        let _ = writeln!(std::io::stderr().lock(), "mesh: {text}");
    }
}

/// Set to run the benchmark in the dev profile instead of re-running it
/// optimised.
const DEV_PROFILE_ENV: &str = "XTASK_MESH_DEV";

/// `cargo xtask` builds the dev profile, where signatures and the runtime
/// are unoptimised and figures meaningless: run the same command again from
/// a release build of xtask.
fn rerun_optimised(root: &Path, args: &MeshArgs, raw: &[&str]) -> anyhow::Result<()> {
    progress(
        args,
        &format!(
            "re-running optimised (cargo run --release -p xtask); set {DEV_PROFILE_ENV}=1 to skip"
        ),
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(root)
        .args(["run", "--release", "--quiet", "-p", "xtask", "--", "mesh"])
        .args(raw)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("the optimised run failed ({status})");
    }
    Ok(())
}

/// `cargo xtask mesh …`.
pub(crate) fn run(root: &Path, raw: &[&str]) -> anyhow::Result<()> {
    let Some(args) = parse_args(raw)? else {
        let _ = writeln!(std::io::stdout().lock(), "{USAGE}");
        return Ok(());
    };
    if cfg!(debug_assertions) && std::env::var_os(DEV_PROFILE_ENV).is_none() {
        return rerun_optimised(root, &args, raw);
    }
    let binary = if args.transports.contains(&Kind::Tcp) {
        progress(&args, "building the release micelio binary…");
        Some(tcp::build_binary(root, args.json_only)?)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let mut summaries = Vec::new();
    let mut failures = Vec::new();
    for &kind in &args.transports {
        for &n in &args.nodes {
            progress(&args, &format!("{} mesh of {n} nodes…", kind.name()));
            let outcome = match (kind, &binary) {
                (Kind::Memory, _) => runtime.block_on(memory::run(&args, n)),
                (Kind::Tcp, Some(bin)) => runtime.block_on(tcp::run(&args, n, bin)),
                (Kind::Tcp, None) => Err(anyhow::anyhow!("the micelio binary was not built")),
            };
            match outcome {
                Ok(o) => {
                    let s = summarise(&o);
                    if !args.json_only {
                        let _ = write!(
                            std::io::stderr().lock(),
                            "{}",
                            table(std::slice::from_ref(&s))
                        );
                    }
                    summaries.push(s);
                }
                Err(e) => {
                    let text = format!("{} mesh of {n} nodes failed: {e:#}", kind.name());
                    progress(&args, &text);
                    failures.push(text);
                }
            }
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    let mut stdout = std::io::stdout().lock();
    if !args.json_only && !summaries.is_empty() {
        let _ = write!(stdout, "\n{}\n", table(&summaries));
    }
    for s in &summaries {
        let _ = writeln!(stdout, "{}", s.json(&args));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags_parse() {
        assert_eq!(parse_args(&[]).unwrap(), Some(MeshArgs::default()));
        let a = parse_args(&[
            "--nodes",
            "10,20",
            "--nodes=30",
            "--transport",
            "both",
            "--messages=5",
            "--max-peers",
            "4",
            "--degree",
            "2",
            "--seed",
            "99",
            "--json-only",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.nodes, vec![10, 20, 30]);
        assert_eq!(a.transports, vec![Kind::Memory, Kind::Tcp]);
        assert_eq!(
            (a.messages, a.max_peers, a.degree, a.seed, a.json_only),
            (5, 4, 2, 99, true)
        );
        assert_eq!(parse_args(&["--help"]).unwrap(), None);
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["--nodes"][..],
            &["--nodes", "x"],
            &["--nodes", "1"],
            &["--transport", "udp"],
            &["--messages", "0"],
            &["--max-peers", "1"],
            &["--frobnicate"],
            &["--json-only=yes"],
        ] {
            assert!(parse_args(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 90.0), Some(90.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
    }

    #[test]
    fn summary_counts_misses_and_takes_the_slowest_node() {
        let o = Outcome {
            kind: Kind::Memory,
            nodes: 3,
            messages: vec![
                MessageResult {
                    latencies_ms: vec![1.0, 4.0],
                    expected: 2,
                },
                MessageResult {
                    latencies_ms: vec![2.0],
                    expected: 2,
                },
            ],
            redundancy: Some(2.0),
            bytes_sent: Some(600),
            duration: Duration::from_secs(2),
            edges: 2,
            drops: None,
        };
        let s = summarise(&o);
        assert_eq!(s.reached, 0.75);
        assert_eq!(s.complete, 0.5);
        assert_eq!(s.max, Some(4.0));
        assert_eq!(s.p50, Some(2.0));
        assert_eq!(s.bytes_per_node_per_s, Some(100.0));
        assert_eq!(s.bytes_per_node_per_msg, Some(100.0));
        let j = s.json(&MeshArgs::default());
        for key in [
            "bench",
            "transport",
            "nodes",
            "messages",
            "reached",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
            "redundancy",
            "bytes_per_node_per_s",
        ] {
            assert!(j.get(key).is_some(), "{key}");
        }
        assert!(table(&[s]).contains("75.0%"));
    }
}
