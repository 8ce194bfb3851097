//! `cargo xtask mesh`: how fast, and how completely, a gossip message reaches
//! every node of a mesh (SPEC §13), and what it costs.
//!
//! ```text
//! cargo xtask mesh [--nodes N[,N…]]… [--transport memory|tcp|both]
//!                  [--messages M] [--max-peers P] [--degree D] [--seed S]
//!                  [--mode broadcast|loss|frame-loss|cut|churn|throughput[,…]]
//!                  [--broadcast tree|fanout[,…]] [--max-hops H] [--reference PCT]
//!                  [--loss PCT] [--cut-links PCT] [--churn-every K]
//!                  [--senders K] [--rates R[,R…]] [--step-secs S] [--late-ms L]
//!                  [--peer gossipsub] [--gossipsub-manifest PATH] [--threads T]
//!                  [--json-only]
//! ```
//!
//! Defaults: `--nodes 10,50,100 --transport memory --messages 20
//! --max-peers 8 --degree 3 --seed 1 --mode broadcast --broadcast tree
//! --reference 0 --loss 10 --cut-links 5 --churn-every 2 --rates
//! 50,100,150,200,270,320,400 --step-secs 3 --late-ms 2000`, every node a
//! sender, hop budget the default (32), no comparison peer. `--nodes` is
//! repeatable; `--nodes`, `--mode`, `--broadcast` and `--rates` take comma
//! lists. Each (transport, N, mode, broadcast) is one configuration, run in
//! that nesting order (tcp runs the broadcast mode only, once per N and
//! broadcast variant).
//!
//! # Modes (memory transport)
//!
//! - `broadcast`: M messages, one at a time, each from a random node, on
//!   the stable built mesh.
//! - `loss` (= `frame-loss` then `cut`): the same with faults.
//!   `frame-loss` loses `--loss` percent of the frames on every link during
//!   the measured phase (`MemoryNetwork::set_loss_seeded`, seeded with
//!   `--seed`; the first frame of each direction of a connection, its hello,
//!   is never lost, nor anything before the phase). `cut` cuts `--cut-links`
//!   percent of the built links (at least one) just before message M/2+1;
//!   cut links stay cut (dials between their ends are refused). A mode
//!   whose percentage is 0 is skipped.
//! - `churn`: every `--churn-every` messages, a random node other than the
//!   origin leaves (shut down) right after the message is originated, and
//!   once the message is finished a new node joins, linked to `--degree`
//!   random live nodes under the cap (the harness waits until those links
//!   are up and its gossip holds their keys). `joins`, `leaves` report them.
//! - `throughput`: `--senders` random nodes (default every node) originate
//!   at once through `Gossip::try_originate` (paced by each node's gossip
//!   at `pace_per_sec`, 8 msg/s, so a node never exceeds the relays'
//!   per-sender limit). Each step offers an aggregate rate R of `--rates`
//!   for `--step-secs`, round robin over the senders (R ÷ K msg/s each,
//!   evenly spaced), then waits until every message reached every other
//!   node, or no delivery came for 2 s, or 10 s. A step is *lossless* when
//!   no origination was refused (pace queue full), every message reached
//!   every other node and no delivery took more than `--late-ms` (latency
//!   measured from the `try_originate` call, pacing delay included). Steps
//!   stop at the first step that is not lossless (2.5 s apart, so that the
//!   rate buckets refill). `throughput_msg_s` is the highest lossless R
//!   (`null` if none); every other figure of the row is that step's (or,
//!   if none passed, the failed first step's); `throughput_steps` lists
//!   every step (`rate`, `offered`, `refused`, `incomplete`, `late`,
//!   `p50_ms`, `p99_ms`, `cpu_us_per_msg_per_node`, `lossless`).
//!
//! Who counts as a receiver (`reached`'s denominator): in `broadcast` and
//! `frame-loss`, every other node; in `cut` and `churn`, the live nodes
//! that the remaining built links connect to the origin for the whole
//! message (a leaving node, and everything only it connected, excluded).
//!
//! `--broadcast tree,fanout` runs every configuration once per variant:
//! `tree` sets `GossipConfig.broadcast_tree = true` (the default), `fanout`
//! sets it false on every node and leaves `micelio/tree/1` out of the
//! hello's features, so that the old random-fanout figures are measured
//! beside the new ones (`impl`: `micelio-tree`, `micelio-fanout`).
//! `--reference P` makes P percent of the nodes (chosen at random; the same
//! share of churn's joiners) behave like reference nodes: empty
//! `TransportConfig.features` and `broadcast_tree = false`; reached must
//! stay 100 %. `--max-hops H` sets `GossipConfig.max_hops` of every node;
//! the row says `max_hops`. `--eager-announce on|off` sets
//! `GossipConfig.eager_announce` (default on: ids also go to the tree's
//! eager links, so that a lost push is grafted rather than repaired); the
//! row says `eager_announce`.
//!
//! `--peer gossipsub` runs the comparison peer after micelio's variants of
//! every broadcast and throughput configuration: `cargo run --release
//! --manifest-path bench/gossipsub/Cargo.toml -- --nodes N --messages M
//! --max-peers P --degree D --seed S --mode broadcast|throughput` (a
//! separate cargo workspace; `--gossipsub-manifest` names another
//! manifest, relative to the workspace root). Its JSON lines are printed
//! beside ours, marked `"impl":"gossipsub"`, and shown in the table.
//!
//! # What is measured
//!
//! For every configuration, the harness records when each receiving node
//! got each message. Reported:
//!
//! - `p50_ms`, `p90_ms`, `p99_ms`, `max_ms`: percentiles (nearest rank) over
//!   the M messages of the *time until every node has it*, i.e. for one
//!   message the largest latency over the nodes that received it. Use
//!   `complete` (the share of messages that reached every receiver) to tell
//!   whether that maximum covers all nodes;
//! - `delivery_p50_ms`: median latency over all (message, node) deliveries;
//! - `reached`: deliveries that happened ÷ deliveries expected;
//! - `redundancy` (memory): gossip **data frames received per node per
//!   message** — over every node that ran during the phase, the increase
//!   of gossip's `received` counter, ÷ N (all nodes, the originator
//!   included, so a perfect spanning tree gives (N−1)/N, just under 1) ÷ M.
//!   Repair and tree control messages are not data frames. Duplicates
//!   (`dropped[Duplicate]`) alone: `duplicates_per_node_per_msg`.
//!   Flooding gives about the mean degree, random fanout f at most f;
//! - `data_bytes_per_node_per_msg`, `data_frames_sent_per_node_per_msg`:
//!   increases of gossip's `data_bytes_sent` (frame headers included) and
//!   `data_frames_sent` summed over nodes, ÷ N ÷ M;
//!   `control_bytes_per_node_per_msg`, `control_frames_per_node_per_msg`:
//!   the same of `control_bytes_sent`, `control_frames_sent` (repair
//!   digests and requests, `TreeIHave`, `TreeGraft`, `TreePrune`). Printed
//!   `null` while the engine leaves these counters at zero;
//! - `cpu_us_per_msg_per_node`: CPU time of the whole process (every
//!   thread, user + system, `CLOCK_PROCESS_CPUTIME_ID`) during the measured
//!   phase ÷ N ÷ M, in µs. It includes everything the nodes do meanwhile
//!   (keepalives, repair rounds, the 100 ms gaps' timers), the harness's
//!   own work (its subscribers, bookkeeping, counter reads, churn's node
//!   starts), and the memory transport's frame copies; it excludes nothing
//!   (there is one process), so it is an upper bound of the protocol's cost;
//! - `eager_per_node`: mean `tree_eager_peers` over the live nodes at the
//!   end (a spanning tree has 2(N−1)/N; 0 for fanout);
//!   `tree`: the phase's `ihave_ids_sent`, `grafts_sent`, `prunes_sent`,
//!   `repairs_served`, summed;
//! - `bytes_per_node_per_s`: bytes sent on the network during the phase
//!   ÷ N ÷ its duration (frames with their headers, keepalives and peer
//!   exchanges included, lost frames too; the memory transport has no
//!   Noise overhead). The phase includes the 100 ms gaps and the waits for
//!   messages that miss a node, so it is a load figure for this pacing,
//!   not a capacity; `bytes_per_node_per_msg` is the same per message;
//! - memory and build: `rss_before_mib` (`VmRSS` before the nodes were
//!   spawned), `rss_after_mib` (once every link was up), `rss_total_mib`
//!   (their difference) and `rss_per_node_kib` (difference ÷ N); `spawn_s`
//!   and `link_s` (seconds to start the nodes, then to dial the links — 32
//!   dials in flight — and see both ends up); `threads` of the process.
//!   The allocator reuses memory a previous configuration freed without
//!   growing `VmRSS`: only the first configuration of a run has an exact
//!   difference, later ones a lower bound (run one size per invocation to
//!   measure memory);
//! - faults: `loss` (share of frames lost, frame-loss), `frames_lost` (by
//!   the network during the phase), `cut_links` (how many, cut),
//!   `joins`/`leaves` (churn), `reference_nodes`, `max_hops`.
//!
//! Output: a table (to stdout), then one JSON line per configuration with the
//! keys `bench` (`"mesh"`), `impl`, `mode`, `transport`, `nodes`,
//! `messages`, `reached`, `complete`, `p50_ms`, `p90_ms`, `p99_ms`,
//! `max_ms`, `delivery_p50_ms`, `redundancy`, `bytes_per_node_per_s`,
//! `bytes_per_node_per_msg`, `edges`, `drops` (memory: gossip drops other
//! than duplicates, full transport send queues (`send_queue_full`) and
//! gossip's refused sends (`send_refused`) during the phase, by reason;
//! tcp: `null`), `max_peers`, `degree`, `seed`, `duration_s`, `topology`,
//! and (memory) the keys above. `--json-only` prints only the JSON lines;
//! progress goes to stderr otherwise.
//!
//! # How
//!
//! **memory**: N nodes in this process, each a `PeerManager` over one shared
//! `MemoryNetwork` (addresses `127.x.y.z:4000`, identities derived from the
//! seed) and a `Gossip` engine with the default configuration (but see
//! `--broadcast`, `--reference`, `--max-hops`). The memory transport runs
//! the signed hello but no Noise handshake. The topology is built, not
//! discovered: a random spanning tree (so the mesh is connected), then
//! random extra links until each node has `--degree` links where both ends
//! are under `--max-peers`. Every link is dialled explicitly and the run
//! waits (bounded) until all are up. Peer exchange and discovery run only
//! once an hour, so the topology measured is the one built; the actual
//! link count at the start of the phase is reported as `edges`. Each
//! message is originated by a random node, latencies are
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
//! Each process runs with `gossip.broadcast` of the variant
//! (`--broadcast`, `MICELIO_GOSSIP__BROADCAST`) and, with `--threads T`,
//! `node.worker_threads = T` (1: a single-threaded runtime).
//!
//! After the warm-up the harness waits until discovery stopped adding
//! links (the processes' summed peer counts equal in two samples 2 s
//! apart, at most 30 s), sends one more unmeasured message so that the tree
//! settles on the final links, then reads every process's counters: it
//! sends SIGUSR1 and reads the `gossip stats` line each process logs (see
//! `docs/operations.md`), before and after the measured messages.
//! `redundancy`, `*_per_node_per_msg`, `duplicates_per_node_per_msg`,
//! `eager_per_node` and `tree` (with `grafted_ids`) come from the
//! differences of those counters over the N processes, ÷ N ÷ M, like the
//! memory figures; `drops` has `non_duplicate` (every other drop) and
//! `send_refused`. `cpu_us_per_msg_per_node` is the processes' CPU
//! (`utime + stime` of `/proc/<pid>/stat`, clock ticks, so ±10 ms per
//! process) over the phase ÷ N ÷ M; it includes each process's logging of
//! every chat line (a JSON line on stderr), keepalives and discovery, not
//! the harness's own work. `rss_per_node_kib` is the mean `VmRSS` of a
//! process at the end, `rss_max_kib` the largest, `threads_per_process`
//! their mean thread count; `edges` is the harness's own peer count.
//!
//! In the one-at-a-time modes one unmeasured warm-up broadcast comes first
//! (in tcp mode it also waits until the mesh carries a message to every
//! node, up to 30 s), the messages are sent one at a time — the next one
//! once the previous reached every receiver, or reached no new receiver
//! for 2 s (such a message is finished), or after 10 s at most — and at
//! least 100 ms apart, so that no sender exceeds the default per-sender
//! rate limit (10 msg/s, burst 20). Messages that miss nodes are listed on
//! stderr with (up to 20 of) the nodes they missed.
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
//! With random fanout, `reached` below 1 with no drops is the nature of
//! push gossip, not a lost frame: a node forwards each message once, to 3
//! random peers, so a node is missed when none of its peers picks it, and
//! waits for the next one-second repair round (the tail of p99).
//!
//! In tcp mode discovery keeps running (every second) during the
//! measurement, so links may still be added while messages fly, and the
//! harness node takes a peer slot of the processes it is connected to.

mod gossipsub;
pub(crate) mod memory;
pub(crate) mod sys;
mod tcp;
mod throughput;
pub(crate) mod topology;

pub(crate) use tcp::{Children, build_binary, node_command, parse_rfc3339};

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
                        [--mode broadcast|loss|cut|churn|throughput[,…]]
                        [--broadcast tree|fanout[,…]] [--max-hops H] [--reference PCT]
                        [--loss PCT] [--cut-links PCT] [--churn-every K]
                        [--senders K] [--rates R[,R…]] [--step-secs S] [--late-ms L]
                        [--peer gossipsub] [--gossipsub-manifest PATH] [--threads T]

Measures how fast and how completely gossip messages reach every node of a
mesh (in process over the memory transport, or real `micelio` processes over
TCP). Defaults: --nodes 10,50,100 --transport memory --messages 20
--max-peers 8 --degree 3 --seed 1.";

/// What a configuration measures (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Mode {
    /// M broadcasts one at a time on a stable mesh.
    #[default]
    Broadcast,
    /// The same with a share of frames lost.
    Loss,
    /// The same with a share of the links cut after M/2 messages.
    Cut,
    /// The same while nodes leave and join.
    Churn,
    /// Many senders at once, rate raised in steps.
    Throughput,
}

impl Mode {
    /// Its name on the command line and in the JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Broadcast => "broadcast",
            Mode::Loss => "loss",
            Mode::Cut => "cut",
            Mode::Churn => "churn",
            Mode::Throughput => "throughput",
        }
    }
}

/// How micelio nodes disseminate (`GossipConfig::broadcast_tree`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Variant {
    /// Epidemic broadcast tree (the default).
    #[default]
    Tree,
    /// The reference's random fanout.
    Fanout,
}

impl Variant {
    /// The `impl` column.
    pub(crate) fn impl_name(self) -> &'static str {
        match self {
            Variant::Tree => "micelio-tree",
            Variant::Fanout => "micelio-fanout",
        }
    }
}

/// Comparison peers run beside micelio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// libp2p gossipsub (`bench/gossipsub`).
    Gossipsub,
}

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
#[derive(Debug, Clone, PartialEq)]
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
    /// Modes, in order (memory only; tcp runs broadcast).
    pub(crate) modes: Vec<Mode>,
    /// Dissemination variants of micelio nodes, in order (memory).
    pub(crate) variants: Vec<Variant>,
    /// Hop budget of originated messages (`None`: the engine's default).
    pub(crate) max_hops: Option<u32>,
    /// `GossipConfig::eager_announce` of every node (memory).
    pub(crate) eager_announce: bool,
    /// Percent of nodes that behave like reference nodes.
    pub(crate) reference: f64,
    /// Percent of frames lost in loss mode.
    pub(crate) loss: f64,
    /// Percent of built links cut in cut mode.
    pub(crate) cut_links: f64,
    /// Churn mode: one node leaves and one joins every this many messages.
    pub(crate) churn_every: usize,
    /// Throughput mode: senders (`None`: every node).
    pub(crate) senders: Option<usize>,
    /// Throughput mode: aggregate offered rates, msg/s, in order.
    pub(crate) rates: Vec<f64>,
    /// Throughput mode: seconds per step.
    pub(crate) step_secs: f64,
    /// Throughput mode: a delivery later than this (ms) fails the step.
    pub(crate) late_ms: f64,
    /// Comparison peers.
    pub(crate) peers: Vec<Peer>,
    /// The gossipsub project's manifest (relative to the workspace root).
    pub(crate) gossipsub_manifest: Option<String>,
    /// `node.worker_threads` of every process (tcp; `None`: the binary's
    /// default, one per core).
    pub(crate) threads: Option<usize>,
}

/// Default throughput steps, aggregate msg/s.
const DEFAULT_RATES: &[f64] = &[50.0, 100.0, 150.0, 200.0, 270.0, 320.0, 400.0];

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
            modes: vec![Mode::Broadcast],
            variants: vec![Variant::Tree],
            max_hops: None,
            eager_announce: true,
            reference: 0.0,
            loss: 10.0,
            cut_links: 5.0,
            churn_every: 2,
            senders: None,
            rates: DEFAULT_RATES.to_vec(),
            step_secs: 3.0,
            late_ms: 2000.0,
            peers: Vec::new(),
            gossipsub_manifest: None,
            threads: None,
        }
    }
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> anyhow::Result<T> {
    text.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag}: {text:?} is not a valid number"))
}

/// The non-empty parts of a comma list.
fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// A percentage, 0 to 100.
fn percent(flag: &str, text: &str) -> anyhow::Result<f64> {
    let p: f64 = number(flag, text)?;
    if !(0.0..=100.0).contains(&p) {
        bail!("{flag}: {text:?} is not a percentage (0 to 100)");
    }
    Ok(p)
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
            "--mode" => {
                out.modes.clear();
                for part in list(value) {
                    let modes: &[Mode] = match part {
                        "broadcast" => &[Mode::Broadcast],
                        "loss" => &[Mode::Loss, Mode::Cut],
                        "frame-loss" => &[Mode::Loss],
                        "cut" => &[Mode::Cut],
                        "churn" => &[Mode::Churn],
                        "throughput" => &[Mode::Throughput],
                        other => bail!(
                            "--mode: {other:?} is not broadcast, loss, frame-loss, cut, churn or throughput"
                        ),
                    };
                    for m in modes {
                        if !out.modes.contains(m) {
                            out.modes.push(*m);
                        }
                    }
                }
            }
            "--broadcast" => {
                out.variants.clear();
                for part in list(value) {
                    let v = match part {
                        "tree" => Variant::Tree,
                        "fanout" => Variant::Fanout,
                        other => bail!("--broadcast: {other:?} is not tree or fanout"),
                    };
                    if !out.variants.contains(&v) {
                        out.variants.push(v);
                    }
                }
            }
            "--peer" => {
                out.peers.clear();
                for part in list(value) {
                    match part {
                        "gossipsub" => out.peers.push(Peer::Gossipsub),
                        "none" => {}
                        other => bail!("--peer: {other:?} is not gossipsub"),
                    }
                }
            }
            "--gossipsub-manifest" => out.gossipsub_manifest = Some(value.to_owned()),
            "--max-hops" => out.max_hops = Some(number(flag, value)?),
            "--eager-announce" => {
                out.eager_announce = match value {
                    "on" => true,
                    "off" => false,
                    other => bail!("--eager-announce takes on or off, got {other:?}"),
                }
            }
            "--reference" => out.reference = percent(flag, value)?,
            "--loss" => out.loss = percent(flag, value)?,
            "--cut-links" => out.cut_links = percent(flag, value)?,
            "--churn-every" => out.churn_every = number(flag, value)?,
            "--senders" => out.senders = Some(number(flag, value)?),
            "--rates" => {
                out.rates = list(value)
                    .map(|p| number::<f64>(flag, p))
                    .collect::<anyhow::Result<_>>()?;
            }
            "--step-secs" => out.step_secs = number(flag, value)?,
            "--late-ms" => out.late_ms = number(flag, value)?,
            "--threads" => out.threads = Some(number(flag, value)?),
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
    if out.modes.is_empty() || out.variants.is_empty() {
        bail!("--mode and --broadcast: give at least one");
    }
    if out.max_hops == Some(0) {
        bail!("--max-hops: at least 1");
    }
    if out.churn_every == 0 || out.senders == Some(0) {
        bail!("--churn-every and --senders: at least 1");
    }
    if out.rates.is_empty() || out.rates.iter().any(|r| !(*r > 0.0 && r.is_finite())) {
        bail!("--rates: positive rates, at least one");
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(out.step_secs) || !positive(out.late_ms) {
        bail!("--step-secs and --late-ms: positive");
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

/// What an in-process configuration measures beyond [`Outcome`] (every
/// figure is documented in the module documentation, under its JSON key).
#[derive(Debug, Clone, Default)]
pub(crate) struct Extra {
    /// The mode.
    pub(crate) mode: Mode,
    /// Tree or fanout.
    pub(crate) variant: Variant,
    /// Hop budget of the originated messages.
    pub(crate) max_hops: u32,
    /// Whether ids were announced to eager links too.
    pub(crate) eager_announce: bool,
    /// Nodes that behaved like reference nodes.
    pub(crate) reference_nodes: usize,
    /// Seconds to spawn the nodes.
    pub(crate) spawn_s: f64,
    /// Seconds to dial the links and see them up.
    pub(crate) link_s: f64,
    /// Resident memory before the nodes were spawned, MiB.
    pub(crate) rss_before_mib: Option<f64>,
    /// Resident memory once the links were up, MiB.
    pub(crate) rss_after_mib: Option<f64>,
    /// Their difference, MiB.
    pub(crate) rss_total_mib: Option<f64>,
    /// The difference per node, KiB.
    pub(crate) rss_per_node_kib: Option<f64>,
    /// Threads of the process.
    pub(crate) threads: Option<u64>,
    /// Mean threads of a node process (tcp).
    pub(crate) threads_per_process: Option<f64>,
    /// Largest resident memory of a node process at the end, KiB (tcp).
    pub(crate) rss_max_kib: Option<u64>,
    /// Gossip data bytes sent per node per message.
    pub(crate) data_bytes_per_node_per_msg: Option<f64>,
    /// Control bytes sent per node per message.
    pub(crate) control_bytes_per_node_per_msg: Option<f64>,
    /// Gossip data frames sent per node per message.
    pub(crate) data_frames_sent_per_node_per_msg: Option<f64>,
    /// Control frames sent per node per message.
    pub(crate) control_frames_per_node_per_msg: Option<f64>,
    /// Duplicates received per node per message.
    pub(crate) duplicates_per_node_per_msg: Option<f64>,
    /// Process CPU per message per node, µs.
    pub(crate) cpu_us_per_msg_per_node: Option<f64>,
    /// Mean eager (tree) peers per node at the end.
    pub(crate) eager_per_node: Option<f64>,
    /// Broadcast-tree counters of the phase.
    pub(crate) tree: Option<serde_json::Value>,
    /// Share of frames lost (loss mode).
    pub(crate) loss: Option<f64>,
    /// Frames the network lost during the phase.
    pub(crate) frames_lost: Option<u64>,
    /// Links cut (cut mode).
    pub(crate) cut_links: Option<usize>,
    /// Nodes that joined and left (churn mode).
    pub(crate) joins: Option<usize>,
    /// See above.
    pub(crate) leaves: Option<usize>,
    /// Senders (throughput mode).
    pub(crate) senders: Option<usize>,
    /// Highest lossless aggregate rate, msg/s (throughput mode).
    pub(crate) throughput_msg_s: Option<f64>,
    /// Every step (throughput mode).
    pub(crate) throughput_steps: Option<serde_json::Value>,
}

impl Extra {
    /// Adds these figures to a configuration's JSON object.
    fn merge_into(&self, v: &mut serde_json::Value) {
        let r = |x: Option<f64>, p: i32| x.map(|x| round(x, p));
        let add = serde_json::json!({
            "impl": self.variant.impl_name(),
            "mode": self.mode.name(),
            "max_hops": self.max_hops,
            "eager_announce": self.eager_announce,
            "reference_nodes": self.reference_nodes,
            "spawn_s": round(self.spawn_s, 3),
            "link_s": round(self.link_s, 3),
            "rss_before_mib": r(self.rss_before_mib, 1),
            "rss_after_mib": r(self.rss_after_mib, 1),
            "rss_total_mib": r(self.rss_total_mib, 1),
            "rss_per_node_kib": r(self.rss_per_node_kib, 1),
            "threads": self.threads,
            "threads_per_process": r(self.threads_per_process, 1),
            "rss_max_kib": self.rss_max_kib,
            "data_bytes_per_node_per_msg": r(self.data_bytes_per_node_per_msg, 1),
            "control_bytes_per_node_per_msg": r(self.control_bytes_per_node_per_msg, 1),
            "data_frames_sent_per_node_per_msg": r(self.data_frames_sent_per_node_per_msg, 3),
            "control_frames_per_node_per_msg": r(self.control_frames_per_node_per_msg, 3),
            "duplicates_per_node_per_msg": r(self.duplicates_per_node_per_msg, 3),
            "cpu_us_per_msg_per_node": r(self.cpu_us_per_msg_per_node, 2),
            "eager_per_node": r(self.eager_per_node, 3),
            "tree": self.tree,
            "loss": self.loss,
            "frames_lost": self.frames_lost,
            "cut_links": self.cut_links,
            "joins": self.joins,
            "leaves": self.leaves,
            "senders": self.senders,
            "throughput_msg_s": self.throughput_msg_s,
            "throughput_steps": self.throughput_steps,
        });
        if let (Some(obj), serde_json::Value::Object(add)) = (v.as_object_mut(), add) {
            obj.extend(add);
        }
    }
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

/// A number of a JSON row, if there.
fn num(row: &serde_json::Value, key: &str) -> Option<f64> {
    row.get(key).and_then(serde_json::Value::as_f64)
}

/// A text of a JSON row, `-` if absent.
fn text<'a>(row: &'a serde_json::Value, key: &str) -> &'a str {
    row.get(key)
        .and_then(serde_json::Value::as_str)
        .unwrap_or("-")
}

/// The readable table of all configurations, from their JSON lines (so
/// that the comparison peer's rows line up with ours).
fn table(rows: &[serde_json::Value]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<10} {:<6} {:>5} {:>4} {:>5} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>7} {:>6} {:>7} {:>8}",
        "impl",
        "mode",
        "transp",
        "nodes",
        "msgs",
        "edges",
        "reached",
        "complete",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "redund",
        "ctl B/nm",
        "cpu µs",
        "eager",
        "msg/s",
        "KiB/node"
    );
    for r in rows {
        let pct =
            |k: &str| num(r, k).map_or_else(|| "-".to_owned(), |x| format!("{:.1}%", x * 100.0));
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:<6} {:>5} {:>4} {:>5} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>7} {:>6} {:>7} {:>8}",
            text(r, "impl"),
            text(r, "mode"),
            text(r, "transport"),
            cell(num(r, "nodes"), 0),
            cell(num(r, "messages"), 0),
            cell(num(r, "edges"), 0),
            pct("reached"),
            pct("complete"),
            cell(num(r, "p50_ms"), 2),
            cell(num(r, "p90_ms"), 2),
            cell(num(r, "p99_ms"), 2),
            cell(num(r, "max_ms"), 2),
            cell(num(r, "redundancy"), 2),
            cell(num(r, "control_bytes_per_node_per_msg"), 0),
            cell(num(r, "cpu_us_per_msg_per_node"), 1),
            cell(num(r, "eager_per_node"), 2),
            cell(num(r, "throughput_msg_s"), 0),
            cell(num(r, "rss_per_node_kib"), 0),
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
/// are unoptimised and figures meaningless: runs `cargo xtask <command>
/// <raw…>` again from a release build of xtask. Shared by the benchmark
/// commands (`mesh`, `state`).
pub(crate) fn rerun_optimised(root: &Path, command: &str, raw: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(root)
        .args(["run", "--release", "--quiet", "-p", "xtask", "--", command])
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
        progress(
            &args,
            &format!(
                "re-running optimised (cargo run --release -p xtask); set {DEV_PROFILE_ENV}=1 to skip"
            ),
        );
        return rerun_optimised(root, "mesh", raw);
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
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let mut failures = Vec::new();
    let show = |rows: &mut Vec<serde_json::Value>, new: Vec<serde_json::Value>| {
        if !args.json_only {
            let _ = write!(std::io::stderr().lock(), "{}", table(&new));
        }
        rows.extend(new);
    };
    for &kind in &args.transports {
        for &n in &args.nodes {
            let modes: Vec<Mode> = match kind {
                // The process mesh measures broadcasts only.
                Kind::Tcp => vec![Mode::Broadcast],
                Kind::Memory => args.modes.clone(),
            };
            for &mode in &modes {
                if (mode == Mode::Loss && args.loss == 0.0)
                    || (mode == Mode::Cut && args.cut_links == 0.0)
                {
                    continue;
                }
                let variants = args.variants.clone();
                for &variant in &variants {
                    let label = format!(
                        "{} {} {} mesh of {n} nodes",
                        kind.name(),
                        mode.name(),
                        variant.impl_name()
                    );
                    progress(&args, &format!("{label}…"));
                    let outcome = match (kind, &binary) {
                        (Kind::Memory, _) => runtime
                            .block_on(memory::run(&args, n, mode, variant))
                            .map(|(o, e)| (o, Some(e))),
                        (Kind::Tcp, Some(bin)) => runtime
                            .block_on(tcp::run(&args, n, bin, variant))
                            .map(|(o, e)| (o, Some(e))),
                        (Kind::Tcp, None) => {
                            Err(anyhow::anyhow!("the micelio binary was not built"))
                        }
                    };
                    match outcome {
                        Ok((o, extra)) => {
                            let mut row = summarise(&o).json(&args);
                            match extra {
                                Some(e) => e.merge_into(&mut row),
                                None => {
                                    if let Some(obj) = row.as_object_mut() {
                                        obj.insert("impl".into(), "micelio".into());
                                        obj.insert("mode".into(), mode.name().into());
                                    }
                                }
                            }
                            show(&mut rows, vec![row]);
                        }
                        Err(e) => {
                            let text = format!("{label} failed: {e:#}");
                            progress(&args, &text);
                            failures.push(text);
                        }
                    }
                }
                if kind == Kind::Memory {
                    for &peer in &args.peers {
                        let Peer::Gossipsub = peer;
                        if !gossipsub::supports(mode) {
                            continue;
                        }
                        progress(
                            &args,
                            &format!("gossipsub {} mesh of {n} nodes…", mode.name()),
                        );
                        match gossipsub::run(root, &args, n, mode) {
                            Ok(new) => show(&mut rows, new),
                            Err(e) => {
                                let text = format!(
                                    "gossipsub {} mesh of {n} nodes failed: {e:#}",
                                    mode.name()
                                );
                                progress(&args, &text);
                                failures.push(text);
                            }
                        }
                    }
                }
            }
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    let mut stdout = std::io::stdout().lock();
    if !args.json_only && !rows.is_empty() {
        let _ = write!(stdout, "\n{}\n", table(&rows));
    }
    for r in &rows {
        let _ = writeln!(stdout, "{r}");
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
    fn mode_and_fault_flags_parse() {
        let a = parse_args(&[
            "--mode",
            "loss,throughput,cut",
            "--broadcast=tree,fanout",
            "--reference",
            "20",
            "--max-hops",
            "16",
            "--loss",
            "2.5",
            "--cut-links=0",
            "--rates",
            "10, 20",
            "--senders",
            "5",
            "--churn-every",
            "3",
            "--peer",
            "gossipsub",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.modes, vec![Mode::Loss, Mode::Cut, Mode::Throughput]);
        assert_eq!(a.variants, vec![Variant::Tree, Variant::Fanout]);
        assert_eq!((a.reference, a.loss, a.cut_links), (20.0, 2.5, 0.0));
        assert_eq!(
            (a.max_hops, a.senders, a.churn_every),
            (Some(16), Some(5), 3)
        );
        assert_eq!(a.rates, vec![10.0, 20.0]);
        assert_eq!(a.peers, vec![Peer::Gossipsub]);
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
            &["--mode", "storm"],
            &["--broadcast", "flood"],
            &["--loss", "101"],
            &["--reference", "-1"],
            &["--rates", "0"],
            &["--max-hops", "0"],
            &["--peer", "floodsub"],
            &["--step-secs", "0"],
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
        assert!(table(&[j]).contains("75.0%"));
    }
}
