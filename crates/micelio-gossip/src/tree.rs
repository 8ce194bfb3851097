//! The broadcast tree: epidemic broadcast trees (Plumtree, Leitão, Pereira
//! and Rodrigues, SRDS 2007) over the peers that speak
//! [`micelio_wire::limits::FEATURE_BROADCAST_TREE_V1`].
//!
//! Every such peer is either *eager* (accepted gossip is pushed to it) or
//! *lazy* (only the message id is announced to it, batched, in a
//! `TreeIHave`). A new peer starts eager. A node that receives a duplicate
//! over an eager link prunes it (`TreePrune`: both ends turn it lazy), so the
//! eager links thin out into a spanning tree: the first copy of each
//! message keeps the path it came by. A node that hears of an id it lacks
//! and does not receive the message within `graft_timeout` grafts the first
//! peer that announced it (`TreeGraft`: both ends turn the link eager and
//! the announcer sends the message back); if that does not arrive within
//! `graft_retry` it grafts the next announcer, and so on. So the tree heals
//! itself where a link or a node went away, in one graft.
//!
//! This module holds only the tree's state: which peers are eager, what is
//! waiting to be announced, which ids are missing and when to graft. The
//! [`crate::Engine`] calls it from `handle`/`originate`/`tick`; it never
//! sees a socket or reads a clock.
//!
//! Caps: peers are the connected ones (bounded by the transport's
//! `max_peers`); at most [`MAX_LAZY_BATCH`] ids wait per lazy peer (a full
//! batch is sent at once); at most [`MAX_MISSING`] missing ids are tracked
//! (the oldest is forgotten first), each with at most [`MAX_ANNOUNCERS`]
//! announcers, and each is forgotten after [`MAX_GRAFT_ATTEMPTS`] grafts or
//! [`MISSING_TTL`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use micelio_identity::NodeId;

/// Most ids in one `TreeIHave` or `TreeGraft`; a lazy peer's batch is sent
/// as soon as it holds this many.
pub const MAX_LAZY_BATCH: usize = 256;
/// Most missing ids (heard of, not received) tracked at once.
pub const MAX_MISSING: usize = 4096;
/// Most announcers remembered per missing id.
pub const MAX_ANNOUNCERS: usize = 8;
/// Grafts sent for one missing id before it is given up (the gossip repair
/// digest is the net behind that).
pub const MAX_GRAFT_ATTEMPTS: u32 = 4;
/// A missing id is forgotten this long after it was first heard of.
pub const MISSING_TTL: Duration = Duration::from_secs(30);

/// The state of one link of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Messages are pushed over it.
    Eager,
    /// Message ids are announced over it.
    Lazy,
}

/// A message id heard of and not yet received.
#[derive(Debug)]
struct Missing {
    /// Peers that announced it, in order; the next graft goes to the front.
    announcers: VecDeque<NodeId>,
    /// When the next graft is due.
    due: Instant,
    first_heard: Instant,
    grafts: u32,
}

/// What [`Tree::tick`] asks the engine to send.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct TickOut {
    /// `TreeIHave` batches: (peer, ids).
    pub(crate) ihave: Vec<(NodeId, Vec<String>)>,
    /// `TreeGraft` messages: (peer, ids).
    pub(crate) graft: Vec<(NodeId, Vec<String>)>,
}

/// The tree state of one node.
#[derive(Debug)]
pub(crate) struct Tree {
    links: HashMap<NodeId, Link>,
    /// Ids waiting to be announced, per lazy peer.
    pending: HashMap<NodeId, Vec<String>>,
    /// When the oldest pending announcement was queued.
    pending_since: Option<Instant>,
    missing: HashMap<String, Missing>,
    /// Missing ids in the order first heard of (for the cap).
    missing_order: VecDeque<String>,
    /// Graft deadlines (stale entries skipped when popped).
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    lazy_delay: Duration,
    graft_timeout: Duration,
    graft_retry: Duration,
    /// Announce to eager links too.
    eager_announce: bool,
    /// Missing ids forgotten to stay under [`MAX_MISSING`].
    pub(crate) missing_evicted: u64,
}

impl Tree {
    pub(crate) fn new(
        lazy_delay: Duration,
        graft_timeout: Duration,
        graft_retry: Duration,
        eager_announce: bool,
    ) -> Self {
        Self {
            links: HashMap::new(),
            pending: HashMap::new(),
            pending_since: None,
            missing: HashMap::new(),
            missing_order: VecDeque::new(),
            timers: BinaryHeap::new(),
            lazy_delay,
            graft_timeout,
            graft_retry,
            eager_announce,
            missing_evicted: 0,
        }
    }

    /// A tree peer connected: it starts eager.
    pub(crate) fn add_peer(&mut self, peer: NodeId) {
        self.links.insert(peer, Link::Eager);
    }

    /// A peer disconnected (or stopped speaking the tree).
    pub(crate) fn remove_peer(&mut self, peer: &NodeId) {
        self.links.remove(peer);
        self.pending.remove(peer);
        for m in self.missing.values_mut() {
            m.announcers.retain(|p| p != peer);
        }
    }

    /// Whether `peer` is a tree peer.
    pub(crate) fn has(&self, peer: &NodeId) -> bool {
        self.links.contains_key(peer)
    }

    /// The link to `peer`, if it is a tree peer.
    pub(crate) fn link(&self, peer: &NodeId) -> Option<Link> {
        self.links.get(peer).copied()
    }

    /// Turns the link to `peer` eager; true if it was lazy.
    pub(crate) fn make_eager(&mut self, peer: &NodeId) -> bool {
        match self.links.get_mut(peer) {
            Some(l @ Link::Lazy) => {
                *l = Link::Eager;
                true
            }
            _ => false,
        }
    }

    /// Turns the link to `peer` lazy; true if it was eager.
    pub(crate) fn make_lazy(&mut self, peer: &NodeId) -> bool {
        match self.links.get_mut(peer) {
            Some(l @ Link::Eager) => {
                *l = Link::Lazy;
                true
            }
            _ => false,
        }
    }

    /// Eager and lazy tree peers, counted.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let eager = self.links.values().filter(|l| **l == Link::Eager).count();
        (eager, self.links.len() - eager)
    }

    /// Ids heard of and not yet received.
    pub(crate) fn missing_len(&self) -> usize {
        self.missing.len()
    }

    /// Splits the tree peers other than `except` into eager (pushed to)
    /// and lazy, and queues `id` for announcement to the lazy ones (and to
    /// the eager ones as well with `eager_announce`). Returns the eager
    /// peers, and the peers whose batch is now full (to be flushed at
    /// once).
    pub(crate) fn disseminate(
        &mut self,
        now: Instant,
        id: &str,
        except: Option<&NodeId>,
    ) -> (Vec<NodeId>, Vec<(NodeId, Vec<String>)>) {
        let mut eager = Vec::new();
        let mut full = Vec::new();
        for (peer, link) in &self.links {
            if Some(peer) == except {
                continue;
            }
            if *link == Link::Eager {
                eager.push(*peer);
                if !self.eager_announce {
                    continue;
                }
            }
            let batch = self.pending.entry(*peer).or_default();
            batch.push(id.to_owned());
            if batch.len() >= MAX_LAZY_BATCH {
                full.push((*peer, std::mem::take(batch)));
            }
            self.pending_since.get_or_insert(now);
        }
        (eager, full)
    }

    /// The message `id` arrived: no graft for it any more.
    pub(crate) fn received(&mut self, id: &str) {
        // The heap entry goes stale and is skipped when it comes up.
        self.missing.remove(id);
    }

    /// `peer` announced `id`, which this node has not seen: the graft
    /// timer starts if this is the first announcer.
    pub(crate) fn announced(&mut self, now: Instant, peer: NodeId, id: &str) {
        if let Some(m) = self.missing.get_mut(id) {
            if !m.announcers.contains(&peer) && m.announcers.len() < MAX_ANNOUNCERS {
                m.announcers.push_back(peer);
            }
            return;
        }
        while self.missing.len() >= MAX_MISSING {
            let Some(old) = self.missing_order.pop_front() else {
                break;
            };
            if self.missing.remove(&old).is_some() {
                self.missing_evicted += 1;
            }
        }
        let due = now + self.graft_timeout;
        self.missing.insert(
            id.to_owned(),
            Missing {
                announcers: VecDeque::from([peer]),
                due,
                first_heard: now,
                grafts: 0,
            },
        );
        self.missing_order.push_back(id.to_owned());
        // Keep the order queue from growing with ids already received.
        if self.missing_order.len() > 2 * MAX_MISSING {
            let missing = &self.missing;
            self.missing_order.retain(|id| missing.contains_key(id));
        }
        self.timers.push(Reverse((due, id.to_owned())));
    }

    /// When [`Tree::tick`] has something to do next, if ever.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let lazy = self.pending_since.map(|t| t + self.lazy_delay);
        let graft = self.timers.peek().map(|Reverse((t, _))| *t);
        match (lazy, graft) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends what is due at `now`: lazy batches older than `lazy_delay`,
    /// and a graft for every missing id whose timer ran out (to its next
    /// announcer, whose link turns eager). `seen` tells whether an id has
    /// arrived meanwhile.
    pub(crate) fn tick(&mut self, now: Instant, seen: impl Fn(&str) -> bool) -> TickOut {
        let mut out = TickOut::default();
        if let Some(since) = self.pending_since
            && now >= since + self.lazy_delay
        {
            self.pending_since = None;
            for (peer, ids) in self.pending.drain() {
                if !ids.is_empty() {
                    out.ihave.push((peer, ids));
                }
            }
            out.ihave.sort_by_key(|(p, _)| *p);
        }
        let mut grafts: HashMap<NodeId, Vec<String>> = HashMap::new();
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, id))) = self.timers.pop() else {
                break;
            };
            let Some(m) = self.missing.get_mut(&id) else {
                continue;
            };
            if m.due != due {
                continue;
            }
            if seen(&id)
                || m.grafts >= MAX_GRAFT_ATTEMPTS
                || now.saturating_duration_since(m.first_heard) >= MISSING_TTL
            {
                self.missing.remove(&id);
                continue;
            }
            let Some(peer) = m.announcers.pop_front() else {
                self.missing.remove(&id);
                continue;
            };
            // Try the others first next time, then this one again.
            m.announcers.push_back(peer);
            m.grafts += 1;
            m.due = now + self.graft_retry;
            self.timers.push(Reverse((m.due, id.clone())));
            let batch = grafts.entry(peer).or_default();
            if batch.len() < MAX_LAZY_BATCH {
                batch.push(id);
            }
        }
        for peer in grafts.keys() {
            self.make_eager(peer);
        }
        out.graft = grafts.into_iter().collect();
        out.graft.sort_by_key(|(p, _)| *p);
        out
    }

    /// Forgets the graft timers of ids that `seen` says have arrived and
    /// those older than [`MISSING_TTL`] (the rest expire in `tick`).
    pub(crate) fn expire(&mut self, now: Instant) {
        self.missing
            .retain(|_, m| now.saturating_duration_since(m.first_heard) < MISSING_TTL);
        let missing = &self.missing;
        self.missing_order.retain(|id| missing.contains_key(id));
        if self.missing.is_empty() {
            self.timers.clear();
        }
    }

    /// The peers, for tests.
    #[cfg(test)]
    pub(crate) fn peers(&self) -> std::collections::HashSet<NodeId> {
        self.links.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        *micelio_identity::Identity::from_seed([n; 32]).node_id()
    }

    fn tree() -> Tree {
        Tree::new(
            Duration::from_millis(10),
            Duration::from_millis(100),
            Duration::from_millis(50),
            false,
        )
    }

    #[test]
    fn peers_start_eager_and_lazy_ones_get_batched_announcements() {
        let mut t = tree();
        let now = Instant::now();
        t.add_peer(id(1));
        t.add_peer(id(2));
        t.add_peer(id(3));
        assert_eq!(t.peers().len(), 3);
        assert!(t.make_lazy(&id(3)));
        assert!(!t.make_lazy(&id(3)), "already lazy");
        let (mut eager, full) = t.disseminate(now, "m1", Some(&id(1)));
        eager.sort();
        assert_eq!(eager, vec![id(2)]);
        assert!(full.is_empty());
        t.disseminate(now, "m2", None);
        assert_eq!(t.next_due(), Some(now + Duration::from_millis(10)));
        assert_eq!(t.tick(now, |_| false), TickOut::default(), "not yet");
        let out = t.tick(now + Duration::from_millis(10), |_| false);
        // Only the lazy peer is told; the eager ones got the messages.
        assert_eq!(out.ihave, vec![(id(3), vec!["m1".into(), "m2".into()])]);
        // With eager announcements, everyone but the source is told.
        let mut all = Tree::new(Duration::ZERO, Duration::ZERO, Duration::ZERO, true);
        all.add_peer(id(1));
        all.add_peer(id(2));
        all.disseminate(now, "m", Some(&id(1)));
        assert_eq!(
            all.tick(now, |_| false).ihave,
            vec![(id(2), vec!["m".into()])]
        );
        assert_eq!(t.next_due(), None);
        assert_eq!(t.counts(), (2, 1));
    }

    #[test]
    fn a_full_batch_leaves_at_once() {
        let mut t = tree();
        let now = Instant::now();
        t.add_peer(id(1));
        t.make_lazy(&id(1));
        for i in 0..MAX_LAZY_BATCH - 1 {
            assert!(t.disseminate(now, &format!("m{i}"), None).1.is_empty());
        }
        let (_, full) = t.disseminate(now, "last", None);
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].1.len(), MAX_LAZY_BATCH);
    }

    #[test]
    fn a_missing_id_grafts_each_announcer_in_turn_then_gives_up() {
        let mut t = tree();
        let now = Instant::now();
        for n in 1..=2 {
            t.add_peer(id(n));
            t.make_lazy(&id(n));
        }
        t.announced(now, id(1), "m");
        t.announced(now, id(2), "m");
        t.announced(now, id(2), "m");
        assert_eq!(t.missing_len(), 1);
        let first = now + Duration::from_millis(100);
        assert_eq!(t.next_due(), Some(first));
        let out = t.tick(first, |_| false);
        assert_eq!(out.graft, vec![(id(1), vec!["m".into()])]);
        assert_eq!(
            t.link(&id(1)),
            Some(Link::Eager),
            "a graft makes the link eager"
        );
        let second = first + Duration::from_millis(50);
        assert_eq!(
            t.tick(second, |_| false).graft,
            vec![(id(2), vec!["m".into()])]
        );
        let mut at = second;
        let mut grafts = 2;
        while let Some(due) = t.next_due() {
            at = due.max(at);
            grafts += t.tick(at, |_| false).graft.len();
        }
        assert_eq!(grafts, MAX_GRAFT_ATTEMPTS as usize);
        assert_eq!(t.missing_len(), 0);
    }

    #[test]
    fn an_id_that_arrives_is_not_grafted() {
        let mut t = tree();
        let now = Instant::now();
        t.add_peer(id(1));
        t.announced(now, id(1), "m");
        t.received("m");
        assert!(
            t.tick(now + Duration::from_secs(1), |_| false)
                .graft
                .is_empty()
        );
        t.announced(now, id(1), "n");
        assert!(
            t.tick(now + Duration::from_secs(1), |i| i == "n")
                .graft
                .is_empty(),
            "seen meanwhile"
        );
    }

    #[test]
    fn missing_ids_are_capped_oldest_first() {
        let mut t = tree();
        let now = Instant::now();
        t.add_peer(id(1));
        for i in 0..MAX_MISSING + 10 {
            t.announced(now, id(1), &format!("m{i}"));
        }
        assert_eq!(t.missing_len(), MAX_MISSING);
        assert_eq!(t.missing_evicted, 10);
        assert!(!t.missing.contains_key("m0"));
        t.expire(now + MISSING_TTL);
        assert_eq!(t.missing_len(), 0);
    }

    #[test]
    fn a_departed_peer_is_forgotten_everywhere() {
        let mut t = tree();
        let now = Instant::now();
        t.add_peer(id(1));
        t.make_lazy(&id(1));
        t.disseminate(now, "x", None);
        t.announced(now, id(1), "m");
        t.remove_peer(&id(1));
        assert!(!t.has(&id(1)));
        let out = t.tick(now + Duration::from_secs(1), |_| false);
        assert!(out.ihave.is_empty() && out.graft.is_empty());
    }
}
