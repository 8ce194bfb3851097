//! `cargo xtask plugins`: what a plugin costs, an external one beside a
//! no-op in-process one in the same run.
//!
//! ```text
//! cargo xtask plugins [--calls N] [--events E] [--json-only]
//! ```
//!
//! One node in this process (memory transport, gossip, state in memory,
//! partyline) with two plugins: `inproc`, an in-process plugin that
//! answers `/inproc` at once and counts its events, and `ext`, a Python
//! program on the helper of `examples/plugins/python` that does the same
//! for `/ext` (`python3` must be installed). Both subscribe to state
//! events.
//!
//! - *Command round trip*: N calls (default 2,000) of each command through
//!   a partyline session, one at a time: p50/p99 of the time from
//!   `Session::input` to its reply.
//! - *Event rate before drops*: state writes at a paced rate R (1,000,
//!   2,000, 5,000, … a second, each for E writes, default 10,000), every
//!   write an event for both plugins; for each R, how many events each
//!   plugin received and how many were dropped (the host's queue and, for
//!   the program, the lines it did not read). The figure is the highest
//!   rate the node actually produced at which the program lost nothing,
//!   beside the fastest rate the node produced writes at (the in-process
//!   plugin's, the raw limit). Rates stop when the node falls behind.
//! - *Events handed straight to the program*: the node's own sources are
//!   slower than the program, so its limit is found by calling the
//!   external plugin's `event` directly, 50,000 events at 20,000, 50,000,
//!   100,000 … a second (paced per batch of 500), until lines it did not
//!   read are dropped.
//!
//! Like `mesh`, it re-runs itself from a release build of xtask (set
//! `XTASK_PLUGINS_DEV=1` to skip). Output: a table on stderr and one JSON
//! line per figure on stdout (`"bench": "plugins_…"`).

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use micelio_gossip::GossipConfig;
use micelio_gossip::test_utils::GossipNode;
use micelio_partyline::{Partyline, PartylineConfig};
use micelio_plugins::external::{ExternalConfig, ExternalPlugin};
use micelio_plugins::{
    BoxFuture, Event, EventKind, Manifest, Plugin, PluginCall, PluginHost, Plugins, Reply,
};
use micelio_state::store::MemoryStateStore;
use micelio_state::{State, StateConfig};
use micelio_transport::memory::MemoryMesh;
use serde_json::json;

use crate::mesh::{percentile, round};

const DEV_ENV: &str = "XTASK_PLUGINS_DEV";
const USAGE: &str = "usage: cargo xtask plugins [--calls N] [--events E] [--json-only]";
/// The paced rates tried, events a second.
const RATES: [u64; 7] = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000];

/// The Python program: answers `/ext` and `/ext count`, counts events.
const PROGRAM: &str = r#"
import os, sys
sys.path.insert(0, os.environ["HELPER_DIR"])
from micelio_plugin import Plugin
p = Plugin(commands=[("ext", "/ext", "bench")], events=["state"])
seen = [0]
@p.on("state")
def on_state(params):
    seen[0] += 1
@p.command("ext")
def ext(call):
    return str(seen[0]) if call["args"] == "count" else "ok"
p.run()
"#;

struct Args {
    calls: usize,
    events: u64,
    json_only: bool,
}

fn parse(raw: &[&str]) -> anyhow::Result<Option<Args>> {
    let mut a = Args {
        calls: 2_000,
        events: 10_000,
        json_only: false,
    };
    let mut it = raw.iter();
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
            "--calls" => a.calls = value()?.parse()?,
            "--events" => a.events = value()?.parse()?,
            "--json-only" => a.json_only = true,
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    if a.calls == 0 || a.events == 0 {
        bail!("--calls and --events must be at least 1");
    }
    Ok(Some(a))
}

fn say(args: &Args, text: &str) {
    if !args.json_only {
        let _ = writeln!(std::io::stderr().lock(), "plugins: {text}");
    }
}

fn emit(args: &Args, row: &serde_json::Value, table: &str) {
    if !args.json_only {
        let _ = write!(std::io::stderr().lock(), "{table}");
    }
    let _ = writeln!(std::io::stdout().lock(), "{row}");
}

/// `cargo xtask plugins …`.
pub(crate) fn run(root: &Path, raw: &[&str]) -> anyhow::Result<()> {
    let Some(args) = parse(raw)? else {
        let _ = writeln!(std::io::stdout().lock(), "{USAGE}");
        return Ok(());
    };
    if cfg!(debug_assertions) && std::env::var_os(DEV_ENV).is_none() {
        say(&args, "re-running optimised (cargo run --release -p xtask)");
        return crate::mesh::rerun_optimised(root, "plugins", raw);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(bench(root, &args))
}

/// The in-process plugin: answers at once, counts events.
struct Inproc {
    seen: Arc<AtomicU64>,
}

impl Plugin for Inproc {
    fn name(&self) -> &str {
        "inproc"
    }
    fn manifest(&self) -> Manifest {
        Manifest::new()
            .command("inproc", "/inproc", "bench")
            .event(EventKind::State)
    }
    fn command(&self, _call: PluginCall) -> BoxFuture<Reply> {
        Box::pin(async { Reply::ok("ok") })
    }
    fn event(&self, _event: Event) -> BoxFuture<()> {
        self.seen.fetch_add(1, Ordering::Relaxed);
        Box::pin(async {})
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn pcts(mut v: Vec<f64>) -> (Option<f64>, Option<f64>) {
    v.sort_by(f64::total_cmp);
    (
        percentile(&v, 50.0).map(|x| round(x, 1)),
        percentile(&v, 99.0).map(|x| round(x, 1)),
    )
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| x.to_string())
}

/// Drops so far: (in-process, external), the host's and the program's.
fn drops(plugins: &Plugins) -> (u64, u64) {
    let list = plugins.list();
    let of = |name: &str| {
        list.iter().find(|p| p.name == name).map_or(0, |p| {
            p.dropped + p.health.as_ref().map_or(0, |h| h.out_dropped)
        })
    };
    (of("inproc"), of("ext"))
}

async fn bench(root: &Path, args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let program = dir.path().join("bench_plugin.py");
    std::fs::write(&program, PROGRAM)?;
    let mesh = MemoryMesh::new();
    let net = GossipNode::spawn_with(
        &mesh,
        MemoryMesh::identity(1),
        MemoryMesh::config(1),
        GossipConfig::default(),
    )
    .await?;
    let state = State::spawn(
        net.identity.clone(),
        StateConfig::default(),
        Box::new(MemoryStateStore::new()),
        net.gossip.clone(),
        net.peers.clone(),
    )
    .await?;
    let party = Partyline::spawn(
        PartylineConfig::new("bench"),
        net.gossip.clone(),
        net.peers.clone(),
    )
    .await?;
    party.attach_state(state.clone())?;
    let seen = Arc::new(AtomicU64::new(0));
    let mut host = PluginHost::new();
    host.add(Arc::new(Inproc { seen: seen.clone() }))?;
    let mut ext = ExternalConfig::new("ext", "python3");
    ext.args = vec![program.display().to_string()];
    ext.env.insert(
        "HELPER_DIR".into(),
        root.join("examples/plugins/python").display().to_string(),
    );
    let external: Arc<dyn Plugin> =
        ExternalPlugin::launch(ext, &net.identity.node_id().to_hex(), "bench")
            .await
            .context("starting the Python plugin (is python3 installed?)")?;
    host.add(external.clone())?;
    let plugins = host.start(&party, state.clone()).await?;
    let mut session = party.join_quiet("bench").await?;
    // Wait for both to run.
    let start = Instant::now();
    while session.input("/ext").await.text != "ok" {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("the Python plugin did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    say(
        args,
        &format!("command round trip: {} calls each", args.calls),
    );
    let mut rows = Vec::new();
    for cmd in ["/inproc", "/ext"] {
        for _ in 0..100 {
            session.input(cmd).await;
        }
        let mut lat = Vec::with_capacity(args.calls);
        for _ in 0..args.calls {
            let t = Instant::now();
            let r = session.input(cmd).await;
            lat.push(us(t.elapsed()));
            if r.status != 0 {
                bail!("{cmd} failed: {}", r.text);
            }
        }
        let (p50, p99) = pcts(lat);
        rows.push((cmd, p50, p99));
    }
    let (i50, i99) = (rows[0].1, rows[0].2);
    let (e50, e99) = (rows[1].1, rows[1].2);
    let ratio = e50.zip(i50).map(|(e, i)| round(e / i.max(1e-6), 1));
    emit(
        args,
        &json!({"bench": "plugins_command", "calls": args.calls,
                "inproc_p50_us": i50, "inproc_p99_us": i99,
                "external_p50_us": e50, "external_p99_us": e99,
                "external_p50_vs_inproc": ratio}),
        &format!(
            "command round trip: in-process p50 {} p99 {} µs; external (Python) p50 {} p99 {} µs; external ÷ in-process p50 {}×\n",
            cell(i50),
            cell(i99),
            cell(e50),
            cell(e99),
            cell(ratio)
        ),
    );

    // Events at paced rates.
    let mut best_clean = None;
    let mut fastest_made = 0.0f64;
    let mut k = 0u64;
    for rate in RATES {
        let (d_in0, d_ext0) = drops(&plugins);
        let seen_in0 = seen.load(Ordering::Relaxed);
        let seen_ext0: u64 = session.input("/ext count").await.text.parse().unwrap_or(0);
        let gap = Duration::from_secs_f64(1.0 / rate as f64);
        let t0 = tokio::time::Instant::now();
        for i in 0..args.events {
            let due = t0 + gap.mul_f64(i as f64);
            if due > tokio::time::Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            state.set(&format!("bench/{k}"), &b"v"[..]).await?;
            k += 1;
        }
        let took = t0.elapsed();
        let made = args.events as f64 / took.as_secs_f64();
        fastest_made = fastest_made.max(made);
        // Let the queues drain before counting.
        let settle = Instant::now();
        let mut last = (u64::MAX, u64::MAX);
        loop {
            let now_ext: u64 = session.input("/ext count").await.text.parse().unwrap_or(0);
            let now = (seen.load(Ordering::Relaxed), now_ext);
            if now == last || settle.elapsed() > Duration::from_secs(10) {
                break;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (d_in, d_ext) = drops(&plugins);
        let got_in = seen.load(Ordering::Relaxed) - seen_in0;
        let got_ext = last.1.saturating_sub(seen_ext0);
        let (lost_in, lost_ext) = (d_in - d_in0, d_ext - d_ext0);
        say(
            args,
            &format!(
                "events at {rate}/s (made {made:.0}/s): in-process got {got_in}, dropped {lost_in}; \
                 external got {got_ext}, dropped {lost_ext}"
            ),
        );
        emit(
            args,
            &json!({"bench": "plugins_events", "rate_per_s": rate, "produced_per_s": round(made, 0),
                    "events": args.events, "inproc_received": got_in, "inproc_dropped": lost_in,
                    "external_received": got_ext, "external_dropped": lost_ext}),
            "",
        );
        if lost_ext == 0 && got_ext >= args.events {
            best_clean = Some(made.round());
        }
        if made < rate as f64 * 0.8 {
            // The node cannot make writes faster: higher rates mean nothing.
            break;
        }
    }
    emit(
        args,
        &json!({"bench": "plugins_event_rate", "external_clean_rate_per_s": best_clean,
                "node_fastest_writes_per_s": round(fastest_made, 0)}),
        &format!(
            "events: the Python plugin lost nothing up to {} events/s produced by the node, which made at most {:.0} state writes/s (every one an event for both plugins)\n",
            best_clean.map_or_else(|| "no tried rate".to_owned(), |r| format!("{r:.0}")),
            fastest_made
        ),
    );
    direct(args, &external, &mut session).await?;
    plugins.shutdown().await;
    party.shutdown().await;
    state.shutdown().await;
    net.shutdown().await;
    Ok(())
}

/// Rates tried when events are handed to the program directly.
const DIRECT_RATES: [u64; 6] = [20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000];
/// Events per batch of the direct phase (paced per batch).
const BATCH: u64 = 500;

/// Events handed straight to the external plugin (the node's own event
/// sources cannot go this fast): at each rate, 50,000 events, then how
/// many the program counted and how many lines it did not read.
async fn direct(
    args: &Args,
    external: &Arc<dyn Plugin>,
    session: &mut micelio_partyline::Session,
) -> anyhow::Result<()> {
    let count = |text: String| text.parse::<u64>().unwrap_or(0);
    let mut clean = None;
    let total = 50_000u64;
    for rate in DIRECT_RATES {
        let before = count(session.input("/ext count").await.text);
        let dropped0 = external.health().map_or(0, |h| h.out_dropped);
        let event = Event::State {
            key: "bench/direct".into(),
            author: *micelio_transport::memory::MemoryMesh::identity(1).node_id(),
            value: bytes::Bytes::from_static(b"v"),
            deleted: false,
        };
        let t0 = tokio::time::Instant::now();
        let per_batch = Duration::from_secs_f64(BATCH as f64 / rate as f64);
        for b in 0..total / BATCH {
            let due = t0 + per_batch.mul_f64(b as f64);
            if due > tokio::time::Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            for _ in 0..BATCH {
                external.event(event.clone()).await;
            }
        }
        let offered = total as f64 / t0.elapsed().as_secs_f64();
        // Until the program has read what it will.
        let mut last = u64::MAX;
        let settle = Instant::now();
        let got = loop {
            let now = count(session.input("/ext count").await.text) - before;
            if now == last || settle.elapsed() > Duration::from_secs(20) {
                break now;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let lost = external.health().map_or(0, |h| h.out_dropped) - dropped0;
        say(
            args,
            &format!(
                "direct at {rate}/s (offered {offered:.0}/s): the program got {got}, {lost} dropped"
            ),
        );
        emit(
            args,
            &json!({"bench": "plugins_direct", "rate_per_s": rate, "offered_per_s": round(offered, 0),
                    "events": total, "external_received": got, "external_dropped": lost}),
            "",
        );
        if lost == 0 && got >= total {
            clean = Some(rate);
        } else {
            break;
        }
    }
    emit(
        args,
        &json!({"bench": "plugins_direct_rate", "external_clean_rate_per_s": clean}),
        &format!(
            "events handed straight to the Python plugin: none lost up to {} events/s\n",
            clean.map_or_else(|| "no tried rate".to_owned(), |r| r.to_string())
        ),
    );
    Ok(())
}
