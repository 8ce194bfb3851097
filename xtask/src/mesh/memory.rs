//! The in-process mesh: N nodes over one `MemoryNetwork`, a built topology.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use micelio_gossip::test_utils::GossipNode;
use micelio_gossip::{DropReason, GossipConfig};
use micelio_identity::Identity;
use micelio_transport::memory::{MemoryMesh, QUIET, linked};
use micelio_transport::{DialError, TransportConfig};
use micelio_wire::MsgType;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::topology::random_topology;
use super::{MESSAGE_TIMEOUT, MIN_GAP, MeshArgs, MessageResult, Outcome, await_receipts, progress};

/// Longest wait for the built topology to be up.
const LINKS_TIMEOUT: Duration = Duration::from_secs(30);

/// The simulated address of node `i`.
fn addr(i: usize) -> String {
    let k = i + 1;
    format!("127.1.{}.{}:4000", k / 256, k % 256)
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

type Receipts = super::Receipts<Instant>;

/// Runs one in-process configuration of `n` nodes.
pub(crate) async fn run(args: &MeshArgs, n: usize) -> anyhow::Result<Outcome> {
    let mut rng = SmallRng::seed_from_u64(args.seed ^ (n as u64).rotate_left(32));
    let edges = random_topology(n, args.max_peers, args.degree, &mut rng)?;
    let mesh = MemoryMesh::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::with_capacity(n);
    let result = async {
        for i in 0..n {
            let identity = Arc::new(Identity::from_seed(identity_seed(args.seed, i)));
            let mut config = TransportConfig::new(Some(addr(i)));
            config.max_peers = args.max_peers;
            config.exchange_interval = QUIET;
            config.discovery_interval = QUIET;
            let node = GossipNode::spawn_with(&mesh, identity, config, GossipConfig::default())
                .await
                .with_context(|| format!("starting node {i}"))?;
            let mut sub = node
                .gossip
                .subscribe(MsgType::Chat)
                .await
                .with_context(|| format!("subscribing node {i}"))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(d) = sub.recv().await {
                    let at = Instant::now();
                    if tx.send((i, d.envelope.message_id, at)).is_err() {
                        break;
                    }
                }
            });
            nodes.push(node);
        }
        progress(
            args,
            &format!("{n} nodes started, dialling {} links", edges.len()),
        );
        for &(a, b) in &edges {
            match tokio::time::timeout(LINKS_TIMEOUT, nodes[a].peers.dial(&addr(b))).await {
                Ok(Ok(_) | Err(DialError::Duplicate(_))) => {}
                Ok(Err(e)) => bail!("link {a}-{b}: {e}"),
                Err(_) => bail!("link {a}-{b}: dial timed out"),
            }
        }
        let deadline = Instant::now() + LINKS_TIMEOUT;
        loop {
            let missing = edges
                .iter()
                .filter(|&&(a, b)| !linked(&nodes[a].peers, &nodes[b].peers))
                .count();
            if missing == 0 {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{missing} of {} links not up after {LINKS_TIMEOUT:?}",
                    edges.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let mut receipts = Receipts::new();
        // Warm-up, unmeasured.
        let origin = rng.random_range(0..n);
        let id = nodes[origin]
            .gossip
            .originate(MsgType::Chat, chat_payload(0))
            .await
            .context("originating the warm-up message")?;
        let deadline = Instant::now() + MESSAGE_TIMEOUT;
        await_receipts(&mut rx, &mut receipts, &id, Some(origin), n - 1, deadline).await;
        tokio::time::sleep(MIN_GAP).await;

        let edge_count = nodes.iter().map(|x| x.peers.peer_count()).sum::<usize>() / 2;
        let (frames_before, drops_before) = counters(&nodes).await?;
        let bytes_before = mesh.network().bytes_sent();
        let started = Instant::now();
        let mut results = Vec::with_capacity(args.messages);
        for k in 1..=args.messages {
            let origin = rng.random_range(0..n);
            let t0 = Instant::now();
            let id = nodes[origin]
                .gossip
                .originate(MsgType::Chat, chat_payload(k))
                .await
                .with_context(|| format!("originating message {k}"))?;
            await_receipts(
                &mut rx,
                &mut receipts,
                &id,
                Some(origin),
                n - 1,
                t0 + MESSAGE_TIMEOUT,
            )
            .await;
            let latencies_ms: Vec<f64> = receipts
                .get(&id)
                .map(|m| {
                    m.iter()
                        .filter(|(node, _)| **node != origin)
                        .map(|(_, at)| at.saturating_duration_since(t0).as_secs_f64() * 1e3)
                        .collect()
                })
                .unwrap_or_default();
            if latencies_ms.len() < n - 1 {
                let got = receipts.get(&id);
                let missed: Vec<String> = (0..n)
                    .filter(|i| *i != origin && !got.is_some_and(|m| m.contains_key(i)))
                    .map(|i| format!("{i} ({} links)", nodes[i].peers.peer_count()))
                    .collect();
                progress(
                    args,
                    &format!(
                        "message {k} from node {origin}: missed by node {}",
                        missed.join(", ")
                    ),
                );
            }
            results.push(MessageResult {
                latencies_ms,
                expected: n - 1,
            });
            tokio::time::sleep_until(t0 + MIN_GAP).await;
        }
        let duration = started.elapsed();
        let bytes = mesh.network().bytes_sent() - bytes_before;
        let (frames_after, mut drops) = counters(&nodes).await?;
        let frames = frames_after - frames_before;
        for (reason, count) in drops_before {
            if let Some(c) = drops.get_mut(&reason) {
                *c -= count;
            }
        }
        drops.retain(|_, c| *c > 0);
        if !drops.is_empty() {
            progress(args, &format!("drops during the broadcasts: {drops:?}"));
        }
        Ok(Outcome {
            kind: super::Kind::Memory,
            nodes: n,
            redundancy: Some(frames as f64 / n as f64 / args.messages as f64),
            bytes_sent: Some(bytes),
            duration,
            edges: edge_count,
            messages: results,
            drops: Some(drops),
        })
    }
    .await;
    shutdown(nodes).await;
    result
}

/// Gossip frames sent so far by all nodes — relayed (`forwarded`) and
/// originated (`sent_originated`, one per peer of the originator) — and
/// every drop other than duplicates, by reason (gossip's, and the
/// transport's full send queues as `send_queue_full`).
async fn counters(nodes: &[Node]) -> anyhow::Result<(u64, BTreeMap<String, u64>)> {
    let mut frames = 0;
    let mut drops = BTreeMap::new();
    for node in nodes {
        let s = node.gossip.stats().await.context("gossip stats")?;
        frames += s.forwarded + s.sent_originated;
        for (reason, count) in s.dropped {
            if reason != DropReason::Duplicate {
                *drops.entry(reason.label().to_owned()).or_default() += count;
            }
        }
        *drops.entry("send_queue_full".to_owned()).or_default() +=
            node.peers.stats().send_queue_drops;
    }
    Ok((frames, drops))
}

async fn shutdown(nodes: Vec<Node>) {
    let mut tasks = tokio::task::JoinSet::new();
    for node in nodes {
        tasks.spawn(async move { node.shutdown().await });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_seeds_are_distinct() {
        let addrs: std::collections::HashSet<String> = (0..1000).map(addr).collect();
        assert_eq!(addrs.len(), 1000);
        assert!(
            addrs
                .iter()
                .all(|a| a.parse::<std::net::SocketAddr>().is_ok())
        );
        assert_ne!(identity_seed(1, 0), identity_seed(1, 1));
        assert_ne!(identity_seed(1, 0), identity_seed(2, 0));
    }
}
