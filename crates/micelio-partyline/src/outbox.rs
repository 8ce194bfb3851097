//! The partyline's outbox: what sessions send to the mesh, waiting its turn.
//!
//! One FIFO per session (so each session's lines leave in the order typed),
//! at most [`MAX_QUEUED_PER_SESSION`] lines each and [`MAX_QUEUED_LINES`] in
//! all, drained round-robin (so one session pasting a file delays the others
//! by at most one line per turn) no faster than the origin's pace (the
//! gossip `pace_per_sec` and `pace_burst`, under the mesh's per-sender
//! limit). It is a plain structure owned by the hub task: it never waits,
//! and the hub wakes it at [`Outbox::next_at`].

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use micelio_gossip::GossipError;
use micelio_wire::MsgType;
use tokio::time::Instant;

/// Most lines one session may have waiting to go out.
pub const MAX_QUEUED_PER_SESSION: usize = 256;
/// Most lines all sessions together may have waiting to go out.
pub const MAX_QUEUED_LINES: usize = 1024;
/// How long to wait before trying again when gossip's own queue is full.
const BLOCKED_RETRY: Duration = Duration::from_millis(100);

/// Bounds and pace of an [`Outbox`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxLimits {
    pub(crate) per_session: usize,
    pub(crate) total: usize,
    pub(crate) per_sec: u32,
    pub(crate) burst: u32,
}

/// Why a line was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The session already has this many lines waiting.
    SessionFull(usize),
    /// All sessions together have this many lines waiting.
    Full(usize),
}

/// What one pump did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Pumped {
    /// Lines handed to gossip.
    pub(crate) sent: u64,
    /// Lines gossip refused for good (it stopped, or the line is invalid).
    pub(crate) lost: u64,
}

pub(crate) struct Outbox {
    limits: OutboxLimits,
    queues: HashMap<u64, VecDeque<(MsgType, Bytes)>>,
    /// Sessions with lines waiting, in turn order.
    turn: VecDeque<u64>,
    total: usize,
    tokens: f64,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl Outbox {
    pub(crate) fn new(limits: OutboxLimits) -> Self {
        let limits = OutboxLimits {
            per_session: limits.per_session.max(1),
            total: limits.total.max(1),
            per_sec: limits.per_sec.max(1),
            burst: limits.burst.max(1),
        };
        Self {
            tokens: f64::from(limits.burst),
            limits,
            queues: HashMap::new(),
            turn: VecDeque::new(),
            total: 0,
            last: Instant::now(),
            blocked_until: None,
        }
    }

    /// Lines waiting, all sessions.
    pub(crate) fn len(&self) -> usize {
        self.total
    }

    /// The pace, lines per second.
    pub(crate) fn per_sec(&self) -> u32 {
        self.limits.per_sec
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(self.limits.per_sec))
            .min(f64::from(self.limits.burst));
        self.last = now;
    }

    /// Queues a line of `session`.
    pub(crate) fn push(
        &mut self,
        session: u64,
        kind: MsgType,
        payload: Bytes,
    ) -> Result<(), Refused> {
        let queued = self.queues.get(&session).map_or(0, VecDeque::len);
        if queued >= self.limits.per_session {
            return Err(Refused::SessionFull(queued));
        }
        if self.total >= self.limits.total {
            return Err(Refused::Full(self.total));
        }
        let q = self.queues.entry(session).or_default();
        if q.is_empty() {
            self.turn.push_back(session);
        }
        q.push_back((kind, payload));
        self.total += 1;
        Ok(())
    }

    /// Spends a token for a message sent around the outbox (presence), if
    /// one is there, so that the two together keep to the pace.
    pub(crate) fn spend(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    /// Hands waiting lines to `send` while tokens last, one session at a
    /// time in turn.
    pub(crate) fn pump(
        &mut self,
        now: Instant,
        send: &mut dyn FnMut(MsgType, Bytes) -> Result<(), GossipError>,
    ) -> Pumped {
        let mut done = Pumped::default();
        if self.blocked_until.is_some_and(|t| now < t) {
            return done;
        }
        self.blocked_until = None;
        self.refill(now);
        while self.tokens >= 1.0 {
            let Some(session) = self.turn.pop_front() else {
                break;
            };
            let Some(q) = self.queues.get_mut(&session) else {
                continue;
            };
            let Some((kind, payload)) = q.pop_front() else {
                self.queues.remove(&session);
                continue;
            };
            match send(kind, payload.clone()) {
                Ok(()) => {
                    self.tokens -= 1.0;
                    self.total -= 1;
                    done.sent += 1;
                }
                Err(GossipError::QueueFull(_)) => {
                    // Gossip's shared queue is full (other originators):
                    // keep the line first and try again shortly.
                    q.push_front((kind, payload));
                    self.turn.push_front(session);
                    self.blocked_until = Some(now + BLOCKED_RETRY);
                    break;
                }
                Err(_) => {
                    self.total -= 1;
                    done.lost += 1;
                }
            }
            if q.is_empty() {
                self.queues.remove(&session);
            } else {
                self.turn.push_back(session);
            }
        }
        done
    }

    /// When [`Outbox::pump`] has something to do next; `None` when empty.
    pub(crate) fn next_at(&mut self, now: Instant) -> Option<Instant> {
        if self.total == 0 {
            return None;
        }
        if let Some(t) = self.blocked_until {
            return Some(t);
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            Some(now)
        } else {
            // At least a millisecond: a wait rounded to nothing would wake
            // the hub with no token yet, again and again.
            let wait = (1.0 - self.tokens) / f64::from(self.limits.per_sec);
            Some(now + Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> OutboxLimits {
        OutboxLimits {
            per_session: 3,
            total: 5,
            per_sec: 10,
            burst: 2,
        }
    }

    fn line(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[tokio::test(start_paused = true)]
    async fn lines_leave_in_turn_at_the_pace_within_the_bounds() {
        let mut o = Outbox::new(limits());
        for n in 0..3 {
            o.push(1, MsgType::Chat, line(n)).unwrap();
        }
        assert_eq!(
            o.push(1, MsgType::Chat, line(9)),
            Err(Refused::SessionFull(3))
        );
        o.push(2, MsgType::Chat, line(10)).unwrap();
        o.push(2, MsgType::Chat, line(11)).unwrap();
        assert_eq!(o.push(3, MsgType::Chat, line(20)), Err(Refused::Full(5)));
        let mut sent = Vec::new();
        let mut send = |_: MsgType, p: Bytes| {
            sent.push(p[0]);
            Ok(())
        };
        let now = Instant::now();
        assert_eq!(o.pump(now, &mut send).sent, 2, "the burst");
        assert_eq!(o.next_at(now), Some(now + Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(o.pump(Instant::now(), &mut send).sent, 1, "then the pace");
        tokio::time::advance(Duration::from_secs(1)).await;
        o.pump(Instant::now(), &mut send);
        assert_eq!(o.len(), 0);
        assert_eq!(o.next_at(Instant::now()), None);
        assert_eq!(sent, vec![0, 10, 1, 11, 2], "round-robin, each in order");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_gossip_queue_keeps_the_line_for_later() {
        let mut o = Outbox::new(limits());
        o.push(1, MsgType::Chat, line(0)).unwrap();
        o.push(1, MsgType::Chat, line(1)).unwrap();
        let now = Instant::now();
        let mut full = |_: MsgType, _: Bytes| Err(GossipError::QueueFull(1));
        assert_eq!(o.pump(now, &mut full), Pumped::default());
        assert_eq!(o.len(), 2);
        assert_eq!(o.next_at(now), Some(now + BLOCKED_RETRY));
        tokio::time::advance(BLOCKED_RETRY).await;
        let mut sent = Vec::new();
        let mut send = |_: MsgType, p: Bytes| {
            sent.push(p[0]);
            Ok(())
        };
        o.pump(Instant::now(), &mut send);
        assert_eq!(sent, vec![0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_almost_there_is_waited_for_not_spun_on() {
        let mut o = Outbox::new(limits());
        o.tokens = 1.0 - 1e-12;
        o.push(1, MsgType::Chat, line(0)).unwrap();
        let now = Instant::now();
        o.last = now;
        assert!(o.next_at(now).unwrap() >= now + Duration::from_millis(1));
    }
}
