//! The real mesh: `micelio` processes over TCP on 127.0.0.1, with the
//! harness joining as the originator.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use micelio_gossip::{Gossip, GossipConfig};
use micelio_identity::Identity;
use micelio_transport::{PeerManager, TcpTransport, TransportConfig};
use micelio_wire::MsgType;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::memory::{chat_payload, identity_seed};
use super::sys::{self, ProcSample};
use super::{
    Extra, Kind, MESSAGE_TIMEOUT, MIN_GAP, MeshArgs, MessageResult, Mode, Outcome, Variant,
    await_receipts, progress,
};

/// Longest wait for one process to print its listen address.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the mesh to carry a warm-up message to every node.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the harness node to connect to its bootstrap peers.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Processes the harness node bootstraps from.
const HARNESS_BOOTSTRAP: usize = 3;
/// Stderr lines kept per process to explain a failure.
const TAIL: usize = 20;
/// The log message of a received chat.
const CHAT_RECEIVED: &str = "chat received";
/// The log message of the counters a node logs on SIGUSR1.
const GOSSIP_STATS: &str = "gossip stats";
/// Longest wait for every process to answer SIGUSR1 with its counters.
const STATS_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for discovery to stop adding links before measuring.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the release `micelio` binary with the cargo that runs xtask and
/// returns its path (`$CARGO_TARGET_DIR/release/micelio`, default
/// `<root>/target`). `quiet` passes `--quiet` to cargo.
pub(crate) fn build_binary(root: &Path, quiet: bool) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "-p", "micelio"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if quiet {
        cmd.arg("--quiet");
    }
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build --release -p micelio failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| root.join("target"), |t| root.join(t));
    let bin = target.join("release").join("micelio");
    if !bin.is_file() {
        bail!("built micelio, but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// Parses an RFC 3339 timestamp (`2026-01-02T03:04:05.123456Z`, or with a
/// `±hh:mm` offset) into a [`SystemTime`].
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0u64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (k, c) in frac.bytes().take(digits).enumerate() {
            if k < 9 {
                nanos = nanos * 10 + u64::from(c - b'0');
            }
        }
        nanos *= 10u64.pow(9u32.saturating_sub(digits as u32));
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// A received chat found in a process's JSON log line: its message id and
/// the line's timestamp.
pub(crate) fn parse_chat_line(line: &str) -> Option<(String, SystemTime)> {
    if !line.contains(CHAT_RECEIVED) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != CHAT_RECEIVED {
        return None;
    }
    let id = fields
        .get("message_id")
        .or_else(|| v.get("message_id"))?
        .as_str()?
        .to_owned();
    let at = parse_rfc3339(v.get("timestamp")?.as_str()?)?;
    Some((id, at))
}

/// The numeric fields of a `gossip stats` JSON log line.
pub(crate) fn parse_stats_line(line: &str) -> Option<Counters> {
    if !line.contains(GOSSIP_STATS) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?.as_object()?;
    if fields.get("message")?.as_str()? != GOSSIP_STATS {
        return None;
    }
    Some(
        fields
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
            .collect(),
    )
}

/// One `gossip stats` line: counter name → value.
pub(crate) type Counters = std::collections::BTreeMap<String, u64>;

/// The listen address in a `peers       127.0.0.1:PORT` stdout line.
pub(crate) fn parse_peers_line(line: &str) -> Option<String> {
    let rest = line.strip_prefix("peers")?;
    let addr = rest.split_whitespace().next()?;
    addr.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.to_string())
}

/// The children, killed by handle when dropped (end of run, error, panic).
#[derive(Default)]
pub(crate) struct Children(pub(crate) Vec<Child>);

impl Children {
    /// Starts `cmd` with piped output, keeps the child so that it is killed
    /// with the others, and returns its pipes.
    pub(crate) fn spawn_piped(
        &mut self,
        mut cmd: Command,
        what: &str,
    ) -> anyhow::Result<(ChildStdout, ChildStderr)> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        self.0.push(child);
        match (stdout, stderr) {
            (Some(o), Some(e)) => Ok((o, e)),
            _ => bail!("{what}: no pipes"),
        }
    }
}

/// A `micelio` command for a benchmark node: its data dir, a HOME of its
/// own, loopback listeners on ports the system picks, logs in `log_format`,
/// and no `MICELIO_` variable inherited from the caller.
pub(crate) fn node_command(
    bin: &Path,
    home: &Path,
    data: &Path,
    name: &str,
    log_format: &str,
) -> Command {
    let mut cmd = micelio_testkit::micelio::command(bin, home, &[]);
    cmd.arg("--data-dir")
        .arg(data)
        .args(["--name", name])
        .args(["--listen", "127.0.0.1:0", "--ssh-listen", "127.0.0.1:0"])
        .args(["--log-format", log_format, "--log-level", "info"]);
    cmd
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// One process as the harness sees it.
struct Proc {
    addr: String,
    pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Every `gossip stats` line it logged, in order.
    stats: Arc<Mutex<Vec<Counters>>>,
}

type Receipt = (usize, String, SystemTime);

/// Starts process `i`; returns once it printed its listen address.
#[allow(clippy::too_many_arguments, reason = "one call site")]
fn start(
    bin: &Path,
    dir: &Path,
    i: usize,
    args: &MeshArgs,
    variant: Variant,
    bootstrap: &[String],
    children: &mut Children,
    receipts: &mpsc::UnboundedSender<Receipt>,
) -> anyhow::Result<Proc> {
    let data = dir.join(format!("node-{i}"));
    let mut cmd = node_command(bin, dir, &data, &format!("bench-{i}"), "json");
    if !bootstrap.is_empty() {
        cmd.arg("--bootstrap").arg(bootstrap.join(","));
    }
    cmd.env("MICELIO_NETWORK__EXCHANGE_INTERVAL", "1s")
        .env("MICELIO_NETWORK__DISCOVERY_INTERVAL", "1s")
        .env("MICELIO_NETWORK__MAX_PEERS", args.max_peers.to_string())
        .env(
            "MICELIO_GOSSIP__BROADCAST",
            match variant {
                Variant::Tree => "tree",
                Variant::Fanout => "fanout",
            },
        );
    if let Some(t) = args.threads {
        cmd.env("MICELIO_NODE__WORKER_THREADS", t.to_string());
    }
    let (stdout, stderr) = children.spawn_piped(cmd, &format!("process {i}"))?;
    let pid = children.0.last().map_or(0, Child::id);
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL)));
    let stats = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut addr_tx = Some(addr_tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = parse_peers_line(&line)
                && let Some(tx) = addr_tx.take()
            {
                let _ = tx.send(addr);
            }
        }
    });
    {
        let tail = tail.clone();
        let stats = stats.clone();
        let receipts = receipts.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((id, at)) = parse_chat_line(&line) {
                    let _ = receipts.send((i, id, at));
                    continue;
                }
                if let Some(counters) = parse_stats_line(&line) {
                    stats
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(counters);
                    continue;
                }
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
    }
    match addr_rx.recv_timeout(START_TIMEOUT) {
        Ok(addr) => Ok(Proc {
            addr,
            pid,
            tail,
            stats,
        }),
        Err(_) => {
            // Give the stderr reader a moment to collect the last words.
            thread::sleep(Duration::from_millis(200));
            let tail = tail.lock().unwrap_or_else(|p| p.into_inner());
            let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
            bail!(
                "process {i} printed no `peers  ADDR` line within {START_TIMEOUT:?}; its last log lines:\n{}",
                tail.join("\n")
            )
        }
    }
}

/// Receipts: message id → (process → log timestamp).
type Seen = super::Receipts<SystemTime>;

/// Asks every process for its counters (SIGUSR1) and waits, bounded by
/// [`STATS_TIMEOUT`], until each has logged a new `gossip stats` line;
/// returns the new lines, in process order.
async fn request_stats(procs: &[Proc]) -> anyhow::Result<Vec<Counters>> {
    let before: Vec<usize> = procs
        .iter()
        .map(|p| p.stats.lock().unwrap_or_else(|e| e.into_inner()).len())
        .collect();
    for (i, p) in procs.iter().enumerate() {
        sys::signal_usr1(p.pid).with_context(|| format!("SIGUSR1 to process {i}"))?;
    }
    let deadline = Instant::now() + STATS_TIMEOUT;
    loop {
        let latest: Vec<Option<Counters>> = procs
            .iter()
            .zip(&before)
            .map(|(p, &b)| {
                let s = p.stats.lock().unwrap_or_else(|e| e.into_inner());
                (s.len() > b).then(|| s.last().cloned()).flatten()
            })
            .collect();
        if latest.iter().all(Option::is_some) {
            return Ok(latest.into_iter().flatten().collect());
        }
        if Instant::now() >= deadline {
            let silent: Vec<String> = latest
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_none())
                .map(|(i, _)| i.to_string())
                .collect();
            bail!(
                "process {} logged no {GOSSIP_STATS:?} line within {STATS_TIMEOUT:?} of SIGUSR1",
                silent.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One line on the mesh's shape from each process' counters: the spread of
/// peers per process (min, median, max, how many have none) and the total
/// of eager and lazy tree links.
fn shape(stats: &[Counters]) -> String {
    let get = |c: &Counters, k: &str| c.get(k).copied().unwrap_or(0);
    let mut peers: Vec<u64> = stats.iter().map(|c| get(c, "peers")).collect();
    peers.sort_unstable();
    let eager: u64 = stats.iter().map(|c| get(c, "tree_eager_peers")).sum();
    let lazy: u64 = stats.iter().map(|c| get(c, "tree_lazy_peers")).sum();
    format!(
        "mesh: peers per process min {} median {} max {}, {} with none; tree links {eager} eager, {lazy} lazy",
        peers.first().copied().unwrap_or(0),
        peers.get(peers.len() / 2).copied().unwrap_or(0),
        peers.last().copied().unwrap_or(0),
        peers.iter().filter(|&&p| p == 0).count(),
    )
}

/// Σ over processes of `after[key] − before[key]`.
fn delta(before: &[Counters], after: &[Counters], key: &str) -> u64 {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let get = |c: &Counters| c.get(key).copied().unwrap_or(0);
            get(a).saturating_sub(get(b))
        })
        .sum()
}

/// Runs one configuration of `n` processes.
pub(crate) async fn run(
    args: &MeshArgs,
    n: usize,
    bin: &Path,
    variant: Variant,
) -> anyhow::Result<(Outcome, Extra)> {
    let mut rng = SmallRng::seed_from_u64(args.seed ^ (n as u64).rotate_left(40));
    // Dropped last: the children go first (declared after).
    let dir = tempfile::Builder::new()
        .prefix("micelio-mesh-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let mut children = Children::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut procs: Vec<Proc> = Vec::with_capacity(n);
    for i in 0..n {
        let earlier: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
        let count = rng.random_range(1..=2usize).min(earlier.len());
        let bootstrap: Vec<String> = earlier.choose_multiple(&mut rng, count).cloned().collect();
        let p = tokio::task::block_in_place(|| {
            start(
                bin,
                dir.path(),
                i,
                args,
                variant,
                &bootstrap,
                &mut children,
                &tx,
            )
        })?;
        procs.push(p);
    }
    drop(tx);
    progress(args, &format!("{n} processes started; the harness joins"));

    let identity = Arc::new(Identity::from_seed(identity_seed(args.seed, usize::MAX)));
    let mut config = TransportConfig::new(Some("127.0.0.1:0".into()));
    config.max_peers = args.max_peers;
    config.exchange_interval = Duration::from_secs(1);
    config.discovery_interval = Duration::from_secs(1);
    config.bootstrap = procs
        .choose_multiple(&mut rng, HARNESS_BOOTSTRAP.min(n))
        .map(|p| p.addr.clone())
        .collect();
    let want_peers = config.bootstrap.len();
    let transport = TcpTransport::new(identity.clone(), config.dial_timeout, config.hello_timeout);
    let (peers, events) = PeerManager::spawn(identity.clone(), Arc::new(transport), config, None)
        .await
        .context("starting the harness node")?;
    let mut gconfig = GossipConfig::default();
    gconfig.broadcast_tree = variant == Variant::Tree;
    let gossip = Gossip::spawn(identity, gconfig, peers.clone(), events);
    let result = measure(
        args, n, variant, &peers, &gossip, &mut rx, want_peers, &procs,
    )
    .await;
    gossip.shutdown().await;
    peers.shutdown().await;
    drop(children);
    drop(dir);
    result
}

#[allow(clippy::too_many_arguments, reason = "one call site")]
async fn measure(
    args: &MeshArgs,
    n: usize,
    variant: Variant,
    peers: &PeerManager,
    gossip: &Gossip,
    rx: &mut mpsc::UnboundedReceiver<Receipt>,
    want_peers: usize,
    procs: &[Proc],
) -> anyhow::Result<(Outcome, Extra)> {
    let joined = Instant::now() + JOIN_TIMEOUT;
    while peers.peer_count() < want_peers {
        if Instant::now() >= joined {
            bail!(
                "the harness node has {} of {want_peers} peers after {JOIN_TIMEOUT:?}",
                peers.peer_count()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Warm-up: until one message reaches every process (discovery is still
    // meshing the nodes up), within WARMUP_TIMEOUT.
    let mut seen = Seen::new();
    let warm_deadline = Instant::now() + WARMUP_TIMEOUT;
    let mut k = 0;
    loop {
        let id = gossip
            .originate(MsgType::Chat, chat_payload(k))
            .await
            .context("originating a warm-up message")?;
        k += 1;
        let until = (Instant::now() + Duration::from_secs(3)).min(warm_deadline);
        let got = await_receipts(rx, &mut seen, &id, None, n, until).await;
        if got >= n {
            break;
        }
        if Instant::now() >= warm_deadline {
            if seen.is_empty() {
                let tail = procs
                    .first()
                    .map(|p| {
                        let t = p.tail.lock().unwrap_or_else(|e| e.into_inner());
                        t.iter().cloned().collect::<Vec<_>>().join("\n")
                    })
                    .unwrap_or_default();
                bail!(
                    "no micelio process logged {CHAT_RECEIVED:?} for any of {k} warm-up chats within \
                     {WARMUP_TIMEOUT:?} (the harness had {} peers). The binary must log every \
                     received chat (type 3) at info level as a JSON line with \
                     `\"message\":\"chat received\"` and `\"message_id\"`; does this build \
                     wire gossip and log chats yet? Last log lines of process 0:\n{tail}",
                    peers.peer_count()
                );
            }
            progress(
                args,
                &format!("warm-up reached {got} of {n} processes only; measuring anyway"),
            );
            break;
        }
        tokio::time::sleep(MIN_GAP * 3).await;
    }
    // Discovery adds links until every node has max_peers or knows no one
    // new: measure the mesh once its link count stopped changing.
    let settle_deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut links = None;
    loop {
        let sample = request_stats(procs).await?;
        let now: u64 = sample
            .iter()
            .map(|c| c.get("peers").copied().unwrap_or(0))
            .sum();
        progress(args, &shape(&sample));
        if links == Some(now) || Instant::now() >= settle_deadline {
            break;
        }
        links = Some(now);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Let the tree settle on the final links (one more warm-up message).
    let id = gossip
        .originate(MsgType::Chat, chat_payload(k))
        .await
        .context("originating a warm-up message")?;
    await_receipts(
        rx,
        &mut seen,
        &id,
        None,
        n,
        Instant::now() + MESSAGE_TIMEOUT,
    )
    .await;
    tokio::time::sleep(MIN_GAP).await;
    let before = request_stats(procs).await?;
    progress(args, &shape(&before));
    let cpu_before: Vec<Option<ProcSample>> = procs.iter().map(|p| sys::sample(p.pid)).collect();
    let edges = peers.peer_count();
    let started = Instant::now();
    let mut results = Vec::with_capacity(args.messages);
    for k in 1..=args.messages {
        let t0 = Instant::now();
        let wall0 = SystemTime::now();
        let id = gossip
            .originate(MsgType::Chat, chat_payload(1000 + k))
            .await
            .with_context(|| format!("originating message {k}"))?;
        await_receipts(rx, &mut seen, &id, None, n, t0 + MESSAGE_TIMEOUT).await;
        let latencies_ms: Vec<f64> = seen
            .get(&id)
            .map(|m| {
                m.values()
                    .map(|at| {
                        at.duration_since(wall0)
                            .unwrap_or(Duration::ZERO)
                            .as_secs_f64()
                            * 1e3
                    })
                    .collect()
            })
            .unwrap_or_default();
        if latencies_ms.len() < n {
            let got = seen.get(&id);
            let missed: Vec<String> = (0..n)
                .filter(|i| !got.is_some_and(|m| m.contains_key(i)))
                .map(|i| i.to_string())
                .collect();
            progress(
                args,
                &format!("message {k}: missed by process {}", missed.join(", ")),
            );
        }
        results.push(MessageResult {
            latencies_ms,
            expected: n,
        });
        tokio::time::sleep_until(t0 + MIN_GAP).await;
    }
    let duration = started.elapsed();
    let cpu_after: Vec<Option<ProcSample>> = procs.iter().map(|p| sys::sample(p.pid)).collect();
    let after = request_stats(procs).await?;

    let nm = (n * args.messages).max(1) as f64;
    let per_msg = |key: &str| delta(&before, &after, key) as f64 / nm;
    let samples: Vec<ProcSample> = cpu_after.iter().flatten().copied().collect();
    let cpu: Option<Duration> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(b, a)| Some(a.as_ref()?.cpu.saturating_sub(b.as_ref()?.cpu)))
        .sum();
    let mean = |f: fn(&ProcSample) -> u64| {
        (!samples.is_empty())
            .then(|| samples.iter().map(f).sum::<u64>() as f64 / samples.len() as f64)
    };
    let eager: u64 = after
        .iter()
        .map(|c| c.get("tree_eager_peers").copied().unwrap_or(0))
        .sum();
    let mut drops = std::collections::BTreeMap::new();
    drops.insert(
        "non_duplicate".to_owned(),
        delta(&before, &after, "dropped").saturating_sub(delta(&before, &after, "duplicates")),
    );
    drops.insert(
        "send_refused".to_owned(),
        delta(&before, &after, "send_refused"),
    );
    let extra = Extra {
        mode: Mode::Broadcast,
        variant,
        max_hops: GossipConfig::default().max_hops,
        eager_announce: GossipConfig::default().eager_announce,
        rss_per_node_kib: mean(|s| s.rss_kib),
        rss_max_kib: samples.iter().map(|s| s.rss_kib).max(),
        threads_per_process: mean(|s| s.threads),
        data_bytes_per_node_per_msg: Some(per_msg("data_bytes_sent")),
        control_bytes_per_node_per_msg: Some(per_msg("control_bytes_sent")),
        data_frames_sent_per_node_per_msg: Some(per_msg("data_frames_sent")),
        control_frames_per_node_per_msg: Some(per_msg("control_frames_sent")),
        duplicates_per_node_per_msg: Some(per_msg("duplicates")),
        cpu_us_per_msg_per_node: cpu.map(|c| c.as_secs_f64() * 1e6 / nm),
        eager_per_node: Some(eager as f64 / n.max(1) as f64),
        tree: Some(serde_json::json!({
            "ihave_ids_sent": delta(&before, &after, "ihave_ids_sent"),
            "grafts_sent": delta(&before, &after, "grafts_sent"),
            "grafted_ids": delta(&before, &after, "grafted_ids"),
            "prunes_sent": delta(&before, &after, "prunes_sent"),
            "repairs_served": delta(&before, &after, "repairs_served"),
        })),
        ..Extra::default()
    };
    let outcome = Outcome {
        kind: Kind::Tcp,
        nodes: n,
        messages: results,
        redundancy: Some(per_msg("received")),
        bytes_sent: Some(
            delta(&before, &after, "data_bytes_sent")
                + delta(&before, &after, "control_bytes_sent"),
        ),
        duration,
        edges,
        drops: Some(drops),
    };
    Ok((outcome, extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        let t = UNIX_EPOCH + Duration::from_micros(951_868_800_123_456);
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00.123456Z"), Some(t));
        assert_eq!(parse_rfc3339("2000-03-01T01:00:00.123456+01:00"), Some(t));
        assert_eq!(parse_rfc3339("2000-02-29T19:00:00.123456-05:00"), Some(t));
        assert_eq!(
            parse_rfc3339("2026-03-21T12:34:56.5Z"),
            Some(UNIX_EPOCH + Duration::from_millis(1_774_096_496_500))
        );
        for bad in [
            "",
            "2000-03-01",
            "2000-03-01T00:00:00",
            "2000-13-01T00:00:00Z",
            "2000-03-01T00:00:00.Z",
            "2000-03-01T00:00:00+0100",
            "x000-03-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn chat_and_peers_lines_parse() {
        let line = r#"{"timestamp":"2000-03-01T00:00:00.000001Z","level":"INFO","fields":{"message":"chat received","message_id":"0b5e","nick":"x"},"target":"micelio::node"}"#;
        assert_eq!(
            parse_chat_line(line),
            Some((
                "0b5e".to_owned(),
                UNIX_EPOCH + Duration::from_micros(951_868_800_000_001)
            ))
        );
        let other = line.replace("chat received", "node started");
        assert_eq!(parse_chat_line(&other), None);
        assert_eq!(parse_chat_line("chat received, not json"), None);
        assert_eq!(
            parse_peers_line("peers       127.0.0.1:40123").as_deref(),
            Some("127.0.0.1:40123")
        );
        assert_eq!(parse_peers_line("peers       none (outbound only)"), None);
        assert_eq!(parse_peers_line("node id     abc"), None);
    }

    #[test]
    fn stats_lines_parse_and_deltas_sum() {
        let line = r#"{"timestamp":"2000-03-01T00:00:00Z","level":"INFO","fields":{"message":"gossip stats","why":"SIGUSR1","peers":3,"received":40,"grafted_ids":2},"target":"micelio::node"}"#;
        let c = parse_stats_line(line).unwrap();
        assert_eq!(c.get("peers"), Some(&3));
        assert_eq!(c.get("received"), Some(&40));
        assert_eq!(c.get("why"), None, "only numbers");
        assert_eq!(
            parse_stats_line(&line.replace("gossip stats", "node started")),
            None
        );
        let mut later = c.clone();
        later.insert("received".to_owned(), 55);
        assert_eq!(delta(&[c.clone(), c.clone()], &[later, c], "received"), 15);
    }
}
