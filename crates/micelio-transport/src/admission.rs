//! Admission of inbound connections that are not authenticated yet.
//!
//! An accepted socket costs the node a task, a file descriptor and, once
//! bytes arrive, Diffie-Hellman work, before anyone knows who is on the
//! other end. Such connections do not count against `max_peers` (which
//! counts authenticated peers only); they get their own budget instead,
//! per source host (`max_pending_per_host`) and overall
//! (`max_pending_handshakes`).
//!
//! A full budget does not simply refuse newcomers: an attacker reopening
//! silent sockets from the same address as an honest peer would then win
//! every race for a freed slot. What tells them apart is progress, so:
//!
//! - every pending connection is [`Stage::Silent`] until its first bytes
//!   arrive, then [`Stage::Working`] (Noise handshake and hello running);
//! - when a newcomer finds its host's budget (or the overall one) full, the
//!   oldest silent connection of that host (or overall) is closed to make
//!   room;
//! - a working connection is closed for a newcomer only once it has been
//!   pending for [`PROTECTED_FOR`] (an honest handshake and hello take a few
//!   round trips); if no connection can be closed, the newcomer is refused.
//!
//! Silent sockets therefore never keep an honest peer out, and the whole
//! pre-auth phase is still bounded by `TransportConfig::preauth_timeout`.
//!
//! The table is synchronous and takes time as an argument, so it is tested
//! without sockets.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a pending connection that is making progress is protected from
/// eviction by newcomers.
pub(crate) const PROTECTED_FOR: Duration = Duration::from_secs(2);

/// How far a pending connection got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// Accepted; nothing received yet.
    Silent,
    /// Bytes arrived: the Noise handshake or the hello is running.
    Working,
}

/// Why a newcomer was refused, or which budget made room for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Budget {
    /// The per-host budget.
    PerHost,
    /// The overall budget.
    Total,
}

impl Budget {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::PerHost => "per-host pre-auth budget full",
            Self::Total => "pre-auth budget full",
        }
    }
}

struct Pending {
    host: String,
    stage: Stage,
    since: Instant,
    cancel: CancellationToken,
}

/// The pending-connection table: at most `total` entries, at most
/// `per_host` of one host; eviction as described in the module doc.
pub(crate) struct Admission {
    per_host_max: usize,
    total_max: usize,
    pending: HashMap<u64, Pending>,
    per_host: HashMap<String, usize>,
}

impl Admission {
    pub(crate) fn new(per_host_max: usize, total_max: usize) -> Self {
        Self {
            per_host_max: per_host_max.max(1),
            total_max: total_max.max(1),
            pending: HashMap::new(),
            per_host: HashMap::new(),
        }
    }

    /// Admits connection `id` from `host`. `Ok(Some(budget))` means an older
    /// connection was closed (its token cancelled) to make room.
    ///
    /// # Errors
    /// The full budget, when nothing could be evicted: refuse the newcomer.
    pub(crate) fn admit(
        &mut self,
        id: u64,
        host: &str,
        now: Instant,
        cancel: CancellationToken,
    ) -> Result<Option<Budget>, Budget> {
        let host_full = self.per_host.get(host).copied().unwrap_or(0) >= self.per_host_max;
        let total_full = self.pending.len() >= self.total_max;
        let evicted = if host_full || total_full {
            let budget = if host_full {
                Budget::PerHost
            } else {
                Budget::Total
            };
            let victim = self
                .pending
                .iter()
                .filter(|(_, p)| !host_full || p.host == host)
                .filter(|(_, p)| {
                    p.stage == Stage::Silent
                        || now.saturating_duration_since(p.since) >= PROTECTED_FOR
                })
                .min_by_key(|(_, p)| (p.stage, p.since))
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                return Err(budget);
            };
            if let Some(p) = self.remove(victim) {
                p.cancel.cancel();
            }
            Some(budget)
        } else {
            None
        };
        *self.per_host.entry(host.to_owned()).or_insert(0) += 1;
        self.pending.insert(
            id,
            Pending {
                host: host.to_owned(),
                stage: Stage::Silent,
                since: now,
                cancel,
            },
        );
        Ok(evicted)
    }

    /// Marks connection `id` as making progress.
    pub(crate) fn progressed(&mut self, id: u64) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.stage = Stage::Working;
        }
    }

    /// Forgets connection `id` (authenticated, failed or evicted). Idempotent.
    fn remove(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        if let Some(n) = self.per_host.get_mut(&p.host) {
            *n -= 1;
            if *n == 0 {
                self.per_host.remove(&p.host);
            }
        }
        Some(p)
    }

    /// Forgets connection `id`. Idempotent.
    pub(crate) fn release(&mut self, id: u64) {
        self.remove(id);
    }

    /// How many connections are pending.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

/// The host part of a `host:port` socket address (the whole string if it
/// has no port): the key of the per-host budget.
pub(crate) fn host_of(remote: &str) -> &str {
    match remote.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => remote,
    }
}

/// A log gate: lets one line through per `every`, and says how many it held
/// back since.
#[derive(Debug)]
pub(crate) struct LogGate {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl LogGate {
    pub(crate) const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(held back since the last line)` if a line may be logged now.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(
        a: &mut Admission,
        id: u64,
        host: &str,
        now: Instant,
    ) -> (Result<Option<Budget>, Budget>, CancellationToken) {
        let t = CancellationToken::new();
        (a.admit(id, host, now, t.clone()), t)
    }

    #[test]
    fn silent_sockets_make_room_for_a_newcomer_of_the_same_host() {
        let mut a = Admission::new(2, 10);
        let now = Instant::now();
        let (r, t1) = admit(&mut a, 1, "10.0.0.1", now);
        assert_eq!(r, Ok(None));
        let (_, t2) = admit(&mut a, 2, "10.0.0.1", now + Duration::from_millis(1));
        // A third from the same host evicts the oldest silent one.
        let (r, _t3) = admit(&mut a, 3, "10.0.0.1", now + Duration::from_millis(2));
        assert_eq!(r, Ok(Some(Budget::PerHost)));
        assert!(t1.is_cancelled() && !t2.is_cancelled());
        assert_eq!(a.len(), 2);
        // Another host is not affected by this host's budget.
        let (r, _) = admit(&mut a, 4, "10.0.0.2", now);
        assert_eq!(r, Ok(None));
    }

    #[test]
    fn a_connection_making_progress_is_protected_for_a_while() {
        let mut a = Admission::new(1, 10);
        let now = Instant::now();
        let (_, t1) = admit(&mut a, 1, "h", now);
        a.progressed(1);
        let (r, _) = admit(&mut a, 2, "h", now + Duration::from_millis(10));
        assert_eq!(
            r,
            Err(Budget::PerHost),
            "a working handshake is not evicted"
        );
        assert!(!t1.is_cancelled());
        let (r, _) = admit(&mut a, 3, "h", now + PROTECTED_FOR);
        assert_eq!(r, Ok(Some(Budget::PerHost)), "a stalled one is");
        assert!(t1.is_cancelled());
    }

    #[test]
    fn the_total_budget_evicts_across_hosts_silent_first() {
        let mut a = Admission::new(8, 3);
        let now = Instant::now();
        let (_, t1) = admit(&mut a, 1, "a", now);
        let (_, t2) = admit(&mut a, 2, "b", now + Duration::from_millis(1));
        let (_, t3) = admit(&mut a, 3, "c", now + Duration::from_millis(2));
        a.progressed(1);
        let (r, _) = admit(&mut a, 4, "d", now + Duration::from_millis(3));
        assert_eq!(r, Ok(Some(Budget::Total)));
        assert!(!t1.is_cancelled() && t2.is_cancelled() && !t3.is_cancelled());
        a.release(3);
        a.release(3);
        assert_eq!(a.len(), 2);
        assert_eq!(a.per_host.len(), 2, "per-host counts drop to zero and go");
    }

    #[test]
    fn host_keys() {
        assert_eq!(host_of("127.0.0.1:4000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:4000"), "[::1]");
        assert_eq!(host_of("mem:abc"), "mem:abc");
    }

    #[test]
    fn log_gate_lets_one_line_through_per_period() {
        let mut g = LogGate::new(Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(g.allow(now), Some(0));
        assert_eq!(g.allow(now + Duration::from_secs(1)), None);
        assert_eq!(g.allow(now + Duration::from_secs(2)), None);
        assert_eq!(g.allow(now + Duration::from_secs(10)), Some(2));
    }
}
