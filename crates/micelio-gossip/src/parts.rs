//! The engine's parts: the keyring, the seen cache and the per-sender rate
//! limiter. Each is a plain synchronous structure; time is passed in.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use micelio_identity::{NodeId, PublicKey};

/// How a key came to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trust {
    /// Learned from a message's `sender_pubkey` (checked to hash to the
    /// sender's NodeId) or from a peer exchange.
    GossipLearned,
    /// Verified directly: the peer proved it in a hello over Noise.
    Direct,
}

/// Public keys of senders, by NodeId, with their trust level.
///
/// A direct key is never replaced by a gossip-learned one.
#[derive(Debug, Default, Clone)]
pub struct KeyRing {
    keys: HashMap<NodeId, (PublicKey, Trust)>,
}

impl KeyRing {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or upgrades a key. Returns whether the keyring changed. A key of
    /// lower trust than the one held is ignored; a key whose NodeId does not
    /// match is refused.
    pub fn add(&mut self, id: NodeId, key: PublicKey, trust: Trust) -> bool {
        if key.node_id() != id {
            return false;
        }
        match self.keys.get(&id) {
            Some((_, held)) if *held > trust => false,
            Some((k, held)) if *k == key && *held == trust => false,
            _ => {
                self.keys.insert(id, (key, trust));
                true
            }
        }
    }

    /// The key and trust of `id`.
    pub fn get(&self, id: &NodeId) -> Option<(PublicKey, Trust)> {
        self.keys.get(id).copied()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the keyring is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Message ids seen recently, each forgotten after a TTL, at most `cap` of
/// them (the oldest go first when full).
#[derive(Debug)]
pub struct SeenCache {
    ttl: Duration,
    cap: usize,
    at: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl SeenCache {
    /// An empty cache.
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            ttl,
            cap: cap.max(1),
            at: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `id` was seen and has not expired.
    pub fn contains(&self, id: &str, now: Instant) -> bool {
        self.at
            .get(id)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.ttl)
    }

    /// Marks `id` seen at `now`.
    pub fn insert(&mut self, id: &str, now: Instant) {
        self.expire(now);
        while self.at.len() >= self.cap {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.at.remove(&old);
                }
                None => break,
            }
        }
        if self.at.insert(id.to_owned(), now).is_none() {
            self.order.push_back((now, id.to_owned()));
        }
    }

    /// Forgets expired ids.
    pub fn expire(&mut self, now: Instant) {
        while let Some((t, _)) = self.order.front() {
            if now.saturating_duration_since(*t) < self.ttl {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.at.remove(&id);
            }
        }
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

/// Per-sender token buckets: `rate` tokens per second, at most `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<NodeId, (f64, Instant)>,
}

impl RateLimiter {
    /// Buckets of `rate` messages per second with a burst of `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `sender`'s bucket; false if it is empty.
    pub fn allow(&mut self, sender: NodeId, now: Instant) -> bool {
        let (tokens, last) = self.buckets.entry(sender).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets buckets that have been full for a while (idle senders).
    pub fn expire(&mut self, now: Instant) {
        let refill = Duration::from_secs_f64(self.burst / self.rate);
        self.buckets
            .retain(|_, (_, last)| now.saturating_duration_since(*last) <= refill);
    }

    /// Senders tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no sender is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micelio_identity::Identity;

    #[test]
    fn direct_keys_are_never_downgraded() {
        let a = Identity::from_seed([1; 32]);
        let mut k = KeyRing::new();
        assert!(k.add(*a.node_id(), a.public_key(), Trust::Direct));
        assert!(!k.add(*a.node_id(), a.public_key(), Trust::GossipLearned));
        assert_eq!(k.get(a.node_id()).unwrap().1, Trust::Direct);
        // A key that does not hash to the id is refused.
        let b = Identity::from_seed([2; 32]);
        assert!(!k.add(*a.node_id(), b.public_key(), Trust::Direct));
        // Gossip-learned then direct: upgraded.
        assert!(k.add(*b.node_id(), b.public_key(), Trust::GossipLearned));
        assert!(k.add(*b.node_id(), b.public_key(), Trust::Direct));
        assert_eq!(k.len(), 2);
    }

    #[test]
    fn seen_expires_and_is_capped() {
        let t0 = Instant::now();
        let mut s = SeenCache::new(Duration::from_secs(10), 3);
        s.insert("a", t0);
        assert!(s.contains("a", t0 + Duration::from_secs(9)));
        assert!(!s.contains("a", t0 + Duration::from_secs(10)));
        s.insert("b", t0 + Duration::from_secs(11));
        assert_eq!(s.len(), 1, "a expired");
        s.insert("c", t0 + Duration::from_secs(11));
        s.insert("d", t0 + Duration::from_secs(11));
        s.insert("e", t0 + Duration::from_secs(11));
        assert_eq!(s.len(), 3);
        assert!(
            !s.contains("b", t0 + Duration::from_secs(11)),
            "oldest evicted"
        );
    }

    #[test]
    fn token_bucket() {
        let id = *Identity::from_seed([1; 32]).node_id();
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 20);
        assert_eq!((0..30).filter(|_| r.allow(id, t0)).count(), 20, "burst");
        assert!(!r.allow(id, t0 + Duration::from_millis(50)));
        assert!(
            r.allow(id, t0 + Duration::from_millis(150)),
            "a token returned"
        );
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            (0..30).filter(|_| r.allow(id, later)).count(),
            20,
            "refilled to burst, not beyond"
        );
        r.expire(later + Duration::from_secs(60));
        assert!(r.is_empty());
    }
}
