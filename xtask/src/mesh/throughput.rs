//! Throughput mode: many senders at once, the aggregate offered rate
//! raised in steps until a step loses or delays a delivery.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use micelio_gossip::GossipError;
use micelio_wire::proto::ChatMessage;
use micelio_wire::{MsgType, WireMessage as _};
use rand::seq::IteratorRandom as _;
use tokio::time::Instant;

use super::memory::{Harness, Receipt, chat_payload, counter_figures};
use super::{Extra, MESSAGE_TIMEOUT, MessageResult, Mode, Outcome, SETTLE, progress, round, sys};

/// Pause between two steps, so that every sender's pace bucket (and the
/// relays' per-sender buckets) is full again when the next one starts.
const STEP_PAUSE: Duration = Duration::from_millis(2500);

/// The sequence number `chat_payload(k)` carries, read back.
fn sequence(payload: &bytes::Bytes) -> Option<usize> {
    let chat = ChatMessage::decode_wire(payload.clone()).ok()?;
    let rest = chat.text.strip_prefix("benchmark message ")?;
    rest.split(':').next()?.parse().ok()
}

/// What one step produced.
struct Step {
    /// Aggregate offered rate, messages per second.
    rate: f64,
    /// Messages offered (refused ones included).
    offered: usize,
    /// Originations the pacer refused (queue full).
    refused: usize,
    /// Per message that was accepted.
    results: Vec<MessageResult>,
    /// Messages whose slowest delivery took more than `--late-ms`.
    late: usize,
    /// Messages that missed a node.
    incomplete: usize,
    /// CPU time of the step (origination to the last delivery).
    cpu: Option<Duration>,
    /// The step, first origination to the end of the wait.
    duration: Duration,
    /// Counter increases over the step.
    totals: super::memory::Totals,
    /// Network bytes sent during the step.
    bytes: u64,
}

impl Step {
    fn lossless(&self) -> bool {
        self.refused == 0 && self.incomplete == 0 && self.late == 0
    }

    fn json(&self, n: usize) -> serde_json::Value {
        let mut slowest: Vec<f64> = self
            .results
            .iter()
            .filter_map(|m| m.latencies_ms.iter().copied().reduce(f64::max))
            .collect();
        slowest.sort_by(f64::total_cmp);
        let nm = (n * self.results.len().max(1)) as f64;
        serde_json::json!({
            "rate": self.rate,
            "offered": self.offered,
            "refused": self.refused,
            "incomplete": self.incomplete,
            "late": self.late,
            "p50_ms": super::percentile(&slowest, 50.0).map(|x| round(x, 3)),
            "p99_ms": super::percentile(&slowest, 99.0).map(|x| round(x, 3)),
            "cpu_us_per_msg_per_node": self.cpu.map(|c| round(c.as_secs_f64() * 1e6 / nm, 2)),
            "lossless": self.lossless(),
        })
    }
}

/// Runs the throughput mode on a built mesh.
pub(crate) async fn run(h: &mut Harness) -> anyhow::Result<(Outcome, Extra)> {
    let args = h.args.clone();
    let n = h.slots.len();
    h.warm_up().await?;
    let mut extra = super::memory::base_extra(h, Mode::Throughput);
    let edges = h.edge_count();
    let k = args.senders.unwrap_or(n).clamp(1, n);
    let mut senders: Vec<usize> = (0..n).choose_multiple(&mut h.rng, k);
    senders.sort_unstable();
    extra.senders = Some(k);
    let mut seq = 1usize;
    let mut best: Option<Step> = None;
    let mut last: Option<Step> = None;
    let mut steps = Vec::new();
    for &rate in &args.rates {
        let step = step(h, &senders, rate, &mut seq).await?;
        progress(
            &args,
            &format!(
                "throughput {rate} msg/s from {k} senders: {} offered, {} refused, {} incomplete, {} late, drops {:?}",
                step.offered, step.refused, step.incomplete, step.late, step.totals.drops
            ),
        );
        steps.push(step.json(n));
        let ok = step.lossless();
        if ok {
            best = Some(step);
        } else {
            last = Some(step);
            break;
        }
        tokio::time::sleep(STEP_PAUSE).await;
    }
    extra.throughput_steps = Some(serde_json::Value::Array(steps));
    extra.throughput_msg_s = best.as_ref().map(|s| s.rate);
    // The figures of the best step, or of the first (failed) one.
    let shown = best.or(last).context("no throughput step ran")?;
    let m = shown.results.len();
    counter_figures(&mut extra, &shown.totals, n, m, shown.cpu);
    extra.eager_per_node = Some(h.eager_per_node().await?);
    Ok((
        Outcome {
            kind: super::Kind::Memory,
            nodes: n,
            redundancy: Some(shown.totals.received as f64 / n as f64 / m.max(1) as f64),
            bytes_sent: Some(shown.bytes),
            duration: shown.duration,
            edges,
            messages: shown.results,
            drops: Some(shown.totals.drops),
        },
        extra,
    ))
}

/// One step: `rate` messages per second in all, round robin over
/// `senders`, for `--step-secs`, each through `try_originate`.
async fn step(
    h: &mut Harness,
    senders: &[usize],
    rate: f64,
    seq: &mut usize,
) -> anyhow::Result<Step> {
    let args = h.args.clone();
    let count = ((rate * args.step_secs).round() as usize).max(1);
    let gap = Duration::from_secs_f64(1.0 / rate.max(0.001));
    h.drain();
    h.receipts.clear();
    h.begin_phase().await?;
    let bytes_before = h.mesh.network().bytes_sent();
    let cpu_before = sys::cpu_time();
    let t0 = Instant::now();
    // seq → (sender, when it was offered).
    let mut offered: HashMap<usize, (usize, Instant)> = HashMap::with_capacity(count);
    // seq → node → when it got it.
    let mut got: HashMap<usize, HashMap<usize, Instant>> = HashMap::with_capacity(count);
    let mut refused = 0;
    let mut last_news: Instant;
    let record = |got: &mut HashMap<usize, HashMap<usize, Instant>>, r: Receipt| {
        if let Some(s) = sequence(&r.payload) {
            got.entry(s).or_default().entry(r.node).or_insert(r.at);
        }
    };
    for j in 0..count {
        let at = t0 + gap.mul_f64(j as f64);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(at) => break,
                r = h.rx.recv() => match r {
                    Some(r) => record(&mut got, r),
                    None => break,
                },
            }
        }
        let sender = senders[j % senders.len()];
        let s = *seq;
        *seq += 1;
        match h
            .node(sender)?
            .gossip
            .try_originate(MsgType::Chat, chat_payload(s))
        {
            Ok(()) => {
                offered.insert(s, (sender, Instant::now()));
            }
            Err(GossipError::QueueFull(_)) => refused += 1,
            Err(e) => return Err(e).context("try_originate"),
        }
    }
    // Wait until every accepted message reached every other node, or no
    // delivery came for SETTLE, or MESSAGE_TIMEOUT after the last offer.
    let want = h.slots.len() - 1;
    let deadline = Instant::now() + MESSAGE_TIMEOUT;
    last_news = Instant::now();
    let done = |got: &HashMap<usize, HashMap<usize, Instant>>| {
        offered.iter().all(|(s, (origin, _))| {
            got.get(s)
                .is_some_and(|m| m.keys().filter(|k| *k != origin).count() >= want)
        })
    };
    while !done(&got) {
        match tokio::time::timeout_at(deadline.min(last_news + SETTLE), h.rx.recv()).await {
            Ok(Some(r)) => {
                record(&mut got, r);
                last_news = Instant::now();
            }
            Ok(None) | Err(_) => break,
        }
    }
    let duration = t0.elapsed();
    let cpu = match (cpu_before, sys::cpu_time()) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let totals = h.phase_totals().await?;
    let bytes = h.mesh.network().bytes_sent() - bytes_before;
    let late_ms = args.late_ms;
    let mut results = Vec::with_capacity(offered.len());
    let (mut late, mut incomplete) = (0, 0);
    let mut seqs: Vec<&usize> = offered.keys().collect();
    seqs.sort_unstable();
    for s in seqs {
        let (origin, at) = offered[s];
        let latencies_ms: Vec<f64> = got
            .get(s)
            .map(|m| {
                m.iter()
                    .filter(|(node, _)| **node != origin)
                    .map(|(_, t)| t.saturating_duration_since(at).as_secs_f64() * 1e3)
                    .collect()
            })
            .unwrap_or_default();
        if latencies_ms.len() < want {
            incomplete += 1;
        }
        if latencies_ms.iter().any(|l| *l > late_ms) {
            late += 1;
        }
        results.push(MessageResult {
            latencies_ms,
            expected: want,
        });
    }
    Ok(Step {
        rate,
        offered: count,
        refused,
        results,
        late,
        incomplete,
        cpu,
        duration,
        totals,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_number_is_read_back() {
        assert_eq!(sequence(&chat_payload(7)), Some(7));
        assert_eq!(sequence(&chat_payload(123_456)), Some(123_456));
        assert_eq!(sequence(&bytes::Bytes::from_static(b"junk")), None);
    }
}
