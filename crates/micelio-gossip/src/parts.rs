//! The engine's parts: the keyring, the seen cache and the per-sender rate
//! limiter. Each is a plain synchronous structure with a stated cap; time is
//! passed in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use micelio_identity::{NodeId, PublicKey};

/// Default cap on gossip-learned keys held by a [`KeyRing`].
pub const DEFAULT_LEARNED_KEYS: usize = 4096;
/// Default cap on the per-sender buckets of a [`RateLimiter`].
pub const DEFAULT_RATE_BUCKETS: usize = 4096;

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
/// Two tables: direct keys of connected peers (as many as the transport
/// admits; kept while the peer is connected and never replaced by a
/// gossip-learned key), and gossip-learned keys, at most `learned_cap`,
/// least recently used evicted first (counted by [`KeyRing::evicted`]).
/// When a peer disconnects its key moves to the learned table. An evicted
/// key costs nothing but a re-learn: every gossip envelope carries its
/// sender's key.
#[derive(Debug, Clone)]
pub struct KeyRing {
    direct: HashMap<NodeId, PublicKey>,
    learned: HashMap<NodeId, (PublicKey, u64)>,
    /// Use order of learned keys: tick → id (smallest = least recent).
    lru: BTreeMap<u64, NodeId>,
    tick: u64,
    learned_cap: usize,
    evicted: u64,
}

impl Default for KeyRing {
    fn default() -> Self {
        Self::with_cap(DEFAULT_LEARNED_KEYS)
    }
}

impl KeyRing {
    /// An empty keyring holding at most [`DEFAULT_LEARNED_KEYS`] learned keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty keyring holding at most `learned_cap` (at least 1)
    /// gossip-learned keys.
    pub fn with_cap(learned_cap: usize) -> Self {
        Self {
            direct: HashMap::new(),
            learned: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            learned_cap: learned_cap.max(1),
            evicted: 0,
        }
    }

    /// Adds, refreshes or upgrades a key. Returns whether the keyring
    /// changed. A gossip-learned key for an id held as direct is ignored; a
    /// key whose NodeId does not match is refused. Adding a learned key
    /// again marks it recently used.
    pub fn add(&mut self, id: NodeId, key: PublicKey, trust: Trust) -> bool {
        if key.node_id() != id {
            return false;
        }
        match trust {
            Trust::Direct => {
                self.forget_learned(&id);
                self.direct.insert(id, key) != Some(key)
            }
            Trust::GossipLearned => {
                if self.direct.contains_key(&id) {
                    return false;
                }
                self.tick += 1;
                let tick = self.tick;
                if let Some((_, used)) = self.learned.get_mut(&id) {
                    self.lru.remove(used);
                    *used = tick;
                    self.lru.insert(tick, id);
                    return false;
                }
                while self.learned.len() >= self.learned_cap {
                    let Some((_, old)) = self.lru.pop_first() else {
                        break;
                    };
                    self.learned.remove(&old);
                    self.evicted += 1;
                }
                self.learned.insert(id, (key, tick));
                self.lru.insert(tick, id);
                true
            }
        }
    }

    /// The peer `id` disconnected: its direct key becomes a learned one
    /// (most recently used), subject to the cap.
    pub fn release(&mut self, id: &NodeId) {
        if let Some(key) = self.direct.remove(id) {
            self.add(*id, key, Trust::GossipLearned);
        }
    }

    fn forget_learned(&mut self, id: &NodeId) {
        if let Some((_, used)) = self.learned.remove(id) {
            self.lru.remove(&used);
        }
    }

    /// The key and trust of `id`.
    pub fn get(&self, id: &NodeId) -> Option<(PublicKey, Trust)> {
        if let Some(k) = self.direct.get(id) {
            return Some((*k, Trust::Direct));
        }
        self.learned
            .get(id)
            .map(|(k, _)| (*k, Trust::GossipLearned))
    }

    /// Number of keys held, both tables.
    pub fn len(&self) -> usize {
        self.direct.len() + self.learned.len()
    }

    /// Number of gossip-learned keys held.
    pub fn learned_len(&self) -> usize {
        self.learned.len()
    }

    /// Whether the keyring is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Learned keys evicted so far to stay within the cap.
    pub fn evicted(&self) -> u64 {
        self.evicted
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
    evicted: u64,
}

impl SeenCache {
    /// An empty cache.
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            ttl,
            cap: cap.max(1),
            at: HashMap::new(),
            order: VecDeque::new(),
            evicted: 0,
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
                    self.evicted += 1;
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

    /// Ids forgotten before their TTL to stay within the cap.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// Per-sender token buckets: `rate` tokens per second, at most `burst`,
/// for at most `cap` senders.
///
/// When the table is full and a new sender arrives, buckets that have
/// refilled completely are dropped first: a full bucket holds no
/// information (a new one starts full), so forgetting it gives nobody extra
/// budget. Only if none is full, the bucket holding the most tokens is
/// evicted (counted by [`RateLimiter::evicted`]): its sender regains at most
/// the few tokens it had spent, and an identity that drained its bucket is
/// the last to be forgotten. Identities are free, so a per-sender bucket
/// never limits a flood from many fresh identities anyway; it limits one
/// chatty sender, and the cap bounds the memory a flood costs.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    cap: usize,
    buckets: HashMap<NodeId, (f64, Instant)>,
    evicted: u64,
}

impl RateLimiter {
    /// Buckets of `rate` messages per second with a burst of `burst`, for at
    /// most [`DEFAULT_RATE_BUCKETS`] senders.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_cap(rate, burst, DEFAULT_RATE_BUCKETS)
    }

    /// As [`RateLimiter::new`], for at most `cap` (at least 1) senders.
    pub fn with_cap(rate: u32, burst: u32, cap: usize) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            cap: cap.max(1),
            buckets: HashMap::new(),
            evicted: 0,
        }
    }

    fn level(&self, tokens: f64, last: Instant, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        (tokens + elapsed * self.rate).min(self.burst)
    }

    fn make_room(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        let level = |t: f64, last: Instant| {
            (t + now.saturating_duration_since(last).as_secs_f64() * rate).min(burst)
        };
        self.buckets.retain(|_, (t, last)| level(*t, *last) < burst);
        while self.buckets.len() >= self.cap {
            let fullest = self
                .buckets
                .iter()
                .max_by(|a, b| level(a.1.0, a.1.1).total_cmp(&level(b.1.0, b.1.1)))
                .map(|(id, _)| *id);
            let Some(id) = fullest else { break };
            self.buckets.remove(&id);
            self.evicted += 1;
        }
    }

    /// Takes one token from `sender`'s bucket; false if it is empty.
    pub fn allow(&mut self, sender: NodeId, now: Instant) -> bool {
        if !self.buckets.contains_key(&sender) && self.buckets.len() >= self.cap {
            self.make_room(now);
        }
        let burst = self.burst;
        let (tokens, last) = *self.buckets.entry(sender).or_insert((burst, now));
        let mut tokens = self.level(tokens, last, now);
        let allowed = tokens >= 1.0;
        if allowed {
            tokens -= 1.0;
        }
        self.buckets.insert(sender, (tokens, now));
        allowed
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

    /// Buckets evicted before they had refilled, to stay within the cap.
    pub fn evicted(&self) -> u64 {
        self.evicted
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

    fn ident(n: u32) -> Identity {
        let mut seed = [7u8; 32];
        seed[..4].copy_from_slice(&n.to_le_bytes());
        Identity::from_seed(seed)
    }

    #[test]
    fn learned_keys_are_capped_lru_and_direct_keys_stay() {
        let mut k = KeyRing::with_cap(100);
        let peer = ident(1_000_000);
        let old = ident(1_000_001);
        k.add(*peer.node_id(), peer.public_key(), Trust::Direct);
        k.add(*old.node_id(), old.public_key(), Trust::GossipLearned);
        for n in 0..3000 {
            let f = ident(n);
            k.add(*f.node_id(), f.public_key(), Trust::GossipLearned);
            if n % 50 == 0 {
                // `old` keeps being used: it stays.
                k.add(*old.node_id(), old.public_key(), Trust::GossipLearned);
            }
        }
        assert_eq!(k.learned_len(), 100);
        assert_eq!(k.len(), 101);
        assert!(k.evicted() >= 2900, "{}", k.evicted());
        assert_eq!(k.get(peer.node_id()).unwrap().1, Trust::Direct);
        assert!(k.get(old.node_id()).is_some(), "recently used stays");
        assert!(k.get(ident(0).node_id()).is_none(), "least recent went");
        // A disconnected peer's key becomes a learned one.
        k.release(peer.node_id());
        assert_eq!(k.get(peer.node_id()).unwrap().1, Trust::GossipLearned);
        assert_eq!(k.learned_len(), 100);
    }

    #[test]
    fn a_full_bucket_table_drops_refilled_buckets_first() {
        let t0 = Instant::now();
        let mut r = RateLimiter::with_cap(10, 20, 50);
        let honest = *ident(9_999).node_id();
        let flooder = *ident(9_998).node_id();
        // The flooder drains its bucket.
        assert_eq!((0..30).filter(|_| r.allow(flooder, t0)).count(), 20);
        r.allow(honest, t0);
        // Thousands of fresh identities, one message each, all at once.
        for n in 0..5000 {
            r.allow(*ident(n).node_id(), t0);
            assert!(r.len() <= 50);
        }
        assert_eq!(r.len(), 50);
        assert!(r.evicted() > 4000);
        // The drained flooder was never forgotten: still no budget.
        assert!(!r.allow(flooder, t0), "eviction did not reset the flooder");
        // The honest sender is still served (its bucket, or a new full one).
        assert!(r.allow(honest, t0));
        // Later, refilled buckets make room without any eviction counted.
        let later = t0 + Duration::from_secs(3);
        let before = r.evicted();
        for n in 10_000..10_040 {
            assert!(r.allow(*ident(n).node_id(), later));
        }
        assert_eq!(r.evicted(), before, "only full buckets were dropped");
        assert!(r.len() <= 50);
    }
}
