//! End-to-end: a real `micelio` process flooded by gossip from many fresh
//! identities keeps its memory bounded and keeps serving an honest peer.
//!
//! Identities cost nothing to make, so every table the node keys by sender
//! (gossip keyring, rate-limiter buckets, seen cache, partyline presence)
//! must be capped. A hostile peer sends, from each of `MICELIO_FLOOD_IDS`
//! fresh identities (default 20,000), one presence (type 9) and one plugin
//! message (type 1001, relayed without a handler); an observer peer counts
//! what the node relays. The node's resident set size is read from
//! `/proc/<pid>/status` before and after each of three floods: once the caps
//! are full, a further flood must not grow it.
//!
//! The seen cache, the one large table (262,144 ids by default), is set to
//! `MICELIO_FLOOD_SEEN_CAP` (default 16,384) so that the first flood fills
//! every cap. `MICELIO_FLOOD_IDS=100000 MICELIO_FLOOD_SEEN_CAP=0 cargo test
//! --release -p micelio --test flood -- --nocapture` runs the defaults and
//! gives the figures recorded in `docs/benchmarks.md`;
//! `MICELIO_FLOOD_BIN=<path>` floods another build instead, to compare.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use micelio_identity::Identity;
use micelio_transport::hello::{self, LocalHello};
use micelio_transport::{Link, TcpTransport, Transport as _};
use micelio_wire::proto::Presence;
use micelio_wire::{Envelope, EnvelopeBuilder, MsgType, WireMessage as _, frame};
use support::{FAST, Node, WAIT};

/// The message type flooded: a plugin type, relayed without a handler.
const FLOOD_TYPE: MsgType = MsgType::Plugin(1001);

fn identities_per_flood() -> usize {
    std::env::var("MICELIO_FLOOD_IDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS line")
}

/// Dials `addr` as `me` and completes the hello, like a reference peer
/// (no extension features).
async fn connect(me: &Arc<Identity>, addr: &str) -> Link {
    let t = TcpTransport::new(me.clone(), WAIT, WAIT);
    let mut link = t.dial(addr).await.expect("dial the node");
    let local = LocalHello {
        tags: Vec::new(),
        advertise_addr: None,
        features: Vec::new(),
    };
    hello::exchange(&mut link, me, &local, WAIT)
        .await
        .expect("hello with the node");
    link
}

/// The frames of one flood: from each of `n` fresh identities (seeded by
/// `round`, so runs repeat), one presence and one plugin message.
fn flood_frames(round: u32, n: usize) -> Vec<Vec<u8>> {
    let mut frames = Vec::with_capacity(2 * n);
    for i in 0..n {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&round.to_be_bytes());
        seed[4..12].copy_from_slice(&(i as u64).to_be_bytes());
        seed[31] = 0xf1;
        let id = Identity::from_seed(seed);
        let presence = Presence {
            node_name: format!("fake-{round}-{i}"),
            nicks: vec![format!("n{i}")],
            seq: 1,
            ttl_secs: 600,
        };
        let p = EnvelopeBuilder::gossip(MsgType::Presence, presence.encode_wire()).sign(&id);
        let m = EnvelopeBuilder::gossip(FLOOD_TYPE, format!("flood {round} {i}")).sign(&id);
        for env in [p, m] {
            frames.push(frame::encode_envelope(&env).expect("small frame").to_vec());
        }
    }
    frames
}

#[test]
fn memory_stays_flat_across_three_floods_of_fresh_identities() {
    let n = identities_per_flood();
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("fast.toml");
    // The seen cache is the one large table (262,144 ids by default): it is
    // made small here so that the first flood fills every cap. 0 keeps
    // the default, for the recorded figures.
    let seen_cap: usize = std::env::var("MICELIO_FLOOD_SEEN_CAP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16_384);
    let gossip = if seen_cap == 0 {
        String::new()
    } else {
        format!("[gossip]\nseen_cap = {seen_cap}\n")
    };
    std::fs::write(&config, format!("{FAST}{gossip}")).unwrap();
    // Another build to measure in the same run (an older one, say).
    let bin = std::env::var_os("MICELIO_FLOOD_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_micelio").into(), PathBuf::from);
    let node = Node::start_bin(
        &bin,
        home.path(),
        &home.path().join("n"),
        &config,
        &["--listen", "127.0.0.1:0"],
        &[],
    );
    let pid = node.pid();
    let addr = node.addr.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let relayed = Arc::new(AtomicU64::new(0));
    let observer = rt.block_on(connect(&Arc::new(Identity::from_seed([0x0b; 32])), &addr));
    // The observer counts relayed flood messages and keeps its link alive.
    let count = relayed.clone();
    let observer_task = rt.spawn(async move {
        let Link {
            mut sink,
            mut source,
            ..
        } = observer;
        let keepalive = frame::encode_envelope(&Envelope::keepalive()).expect("keepalive");
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                got = source.recv() => match got {
                    Ok(Some(env)) if env.kind() == FLOOD_TYPE => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(_)) => {}
                    _ => return,
                },
                _ = tick.tick() => {
                    if sink.send(&keepalive).await.is_err() {
                        return;
                    }
                }
            }
        }
    });

    let mut rss = vec![("before", rss_kib(pid))];
    let mut relayed_per_round = Vec::new();
    for round in 1..=3u32 {
        let frames = flood_frames(round, n);
        let before = relayed.load(Ordering::Relaxed);
        // A fresh connection per flood: the attacker says nothing between
        // floods, and the node may drop it as idle.
        rt.block_on(async {
            let attacker = Arc::new(Identity::from_seed([0xa0 + round as u8; 32]));
            let mut link = connect(&attacker, &addr).await;
            for f in &frames {
                link.sink.send(f).await.expect("the node keeps reading");
            }
        });
        // Wait until the node has relayed this flood (or stopped relaying).
        let mut last = (relayed.load(Ordering::Relaxed), std::time::Instant::now());
        let deadline = std::time::Instant::now() + 4 * WAIT;
        loop {
            let now = relayed.load(Ordering::Relaxed);
            if now - before >= n as u64 {
                break;
            }
            if now != last.0 {
                last = (now, std::time::Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(3) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "flood never drained");
            std::thread::sleep(Duration::from_millis(50));
        }
        relayed_per_round.push(relayed.load(Ordering::Relaxed) - before);
        rss.push((
            ["after 1", "after 2", "after 3"][round as usize - 1],
            rss_kib(pid),
        ));
    }

    // An honest peer is still served: its message is relayed to the observer.
    let honest = Arc::new(Identity::from_seed([0x42; 32]));
    let before = relayed.load(Ordering::Relaxed);
    rt.block_on(async {
        let mut link = connect(&honest, &addr).await;
        let env = EnvelopeBuilder::gossip(FLOOD_TYPE, "honest").sign(&honest);
        link.sink
            .send(&frame::encode_envelope(&env).unwrap())
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while relayed.load(Ordering::Relaxed) == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the honest message was not relayed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    #[allow(clippy::print_stdout)]
    {
        println!("flood: {n} fresh identities per flood, two messages each");
        for (label, kib) in &rss {
            println!("rss {label:>8}: {:>7.1} MiB", *kib as f64 / 1024.0);
        }
        println!("relayed per flood: {relayed_per_round:?}");
    }
    observer_task.abort();
    node.terminate();

    // Every flood was received and relayed (the node kept serving).
    for r in &relayed_per_round {
        assert!(
            *r > 0,
            "a flood was not relayed at all: {relayed_per_round:?}"
        );
    }
    // Once the per-sender tables are full, a further flood costs nothing:
    // the third flood grows the RSS by less than a tenth of the unbounded
    // cost (about 600 bytes per identity) of one flood, plus 4 MiB of
    // allocator slack.
    let (after2, after3) = (rss[2].1, rss[3].1);
    let unbounded_kib = (n as u64 * 600) / 1024;
    let slack = unbounded_kib / 10 + 4 * 1024;
    assert!(
        after3 <= after2 + slack,
        "RSS grew from {after2} KiB to {after3} KiB in the third flood of {n} identities: {rss:?}"
    );
}
