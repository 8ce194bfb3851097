//! Discovery: the table of known peers, peer-exchange validation and merge,
//! dial candidate selection with per-peer backoff. Persistence is
//! [`crate::store`]'s.
//!
//! The table is a plain synchronous structure driven by the peer manager;
//! time comes in as arguments so that it is testable without sleeping.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use micelio_identity::{NodeId, PublicKey};
use micelio_wire::limits::MAX_DISCOVERY_BACKOFF;
use micelio_wire::proto::PeerInfo;
use rand::Rng;
use rand::seq::SliceRandom;
use tokio::time::Instant;

use crate::config::is_dialable_addr;
use crate::hello::PeerHelloInfo;

/// Most peers remembered. When full, a new entry evicts an unconfirmed
/// failing one first, then an unconfirmed one, then a confirmed failing one
/// (oldest `last_seen` first); confirmed peers that answer are never evicted
/// for an entry nobody has confirmed.
pub const MAX_KNOWN_PEERS: usize = 4096;
/// Most unconfirmed entries one peer-exchange sender may have in the table
/// at a time; further new entries from it are dropped
/// ([`EntryDrop::SenderQuota`]).
pub const MAX_NEW_PER_SENDER: usize = 256;
/// Most entries read from one received peer exchange; the rest are dropped
/// ([`EntryDrop::OverCap`]).
pub const MAX_EXCHANGE_READ: usize = 1024;
/// Most entries sent in one peer exchange: ourselves, then confirmed peers,
/// then unconfirmed ones, most recently seen first.
pub const MAX_EXCHANGE_SENT: usize = 64;
/// How far into the future a received `last_seen` may point: larger values
/// are clamped to the receiver's clock plus this.
pub const MAX_LAST_SEEN_SKEW: Duration = Duration::from_secs(60);
/// Failed dials after which an unconfirmed entry is forgotten.
pub const MAX_UNCONFIRMED_FAILS: u32 = 3;

/// A peer the node knows how to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KnownPeer {
    /// Its NodeId.
    pub node_id: NodeId,
    /// Its public key (hashes to `node_id`).
    pub public_key: PublicKey,
    /// Where to dial it.
    pub addr: String,
    /// Whether it accepts inbound connections.
    pub reachable: bool,
    /// Unix seconds when it was last seen alive (by us or by a peer),
    /// clamped to at most [`MAX_LAST_SEEN_SKEW`] ahead of our clock.
    pub last_seen: u64,
    /// Consecutive failed dials.
    pub fails: u32,
    /// When the last dial failed.
    pub last_fail: Option<Instant>,
    /// Whether we completed a connection (hello) with it. Only confirmed
    /// entries are persisted.
    pub confirmed: bool,
    /// The peer-exchange sender that introduced it, while unconfirmed.
    pub source: Option<NodeId>,
}

impl KnownPeer {
    /// A fresh unconfirmed record of a validated, reachable entry.
    fn reachable(
        node_id: NodeId,
        public_key: PublicKey,
        info: &PeerInfo,
        last_seen: u64,
        source: Option<NodeId>,
    ) -> Self {
        Self {
            node_id,
            public_key,
            addr: info.addr.clone(),
            reachable: true,
            last_seen,
            fails: 0,
            last_fail: None,
            confirmed: false,
            source,
        }
    }

    /// The wire form, as sent in a peer exchange and persisted.
    pub fn to_info(&self) -> PeerInfo {
        PeerInfo {
            node_id: self.node_id.to_string(),
            addr: self.addr.clone(),
            reachable: self.reachable,
            ed25519_pubkey: self.public_key.as_bytes().to_vec().into(),
            last_seen: self.last_seen,
        }
    }

    /// Backoff before the next dial: min(2^(fails−1), 30) s, none without
    /// failures.
    pub fn backoff(&self) -> Duration {
        match self.fails {
            0 => Duration::ZERO,
            n => Duration::from_secs(1u64 << (n - 1).min(5)).min(MAX_DISCOVERY_BACKOFF),
        }
    }

    /// Eviction order when the table is full, lowest first: unconfirmed
    /// before confirmed, failing before answering, then the entries of the
    /// sender with the most unconfirmed entries (`source_share`), then the
    /// oldest `last_seen`.
    fn eviction_rank(&self, source_share: usize) -> (bool, bool, std::cmp::Reverse<usize>, u64) {
        (
            self.confirmed,
            self.fails == 0,
            std::cmp::Reverse(source_share),
            self.last_seen,
        )
    }
}

/// Why a peer-exchange entry was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryDrop {
    /// It describes ourselves.
    SelfEntry,
    /// It is marked unreachable.
    Unreachable,
    /// Its address is empty, malformed or a wildcard.
    BadAddress,
    /// Its key is not a valid 32-byte key hashing to its `node_id`.
    BadIdentity,
    /// The table is full of confirmed, answering peers.
    TableFull,
    /// Its sender already has [`MAX_NEW_PER_SENDER`] unconfirmed entries.
    SenderQuota,
    /// Beyond the first [`MAX_EXCHANGE_READ`] entries of one message.
    OverCap,
}

/// How many entries of one peer exchange were dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EntryDrops {
    /// [`EntryDrop::SelfEntry`].
    pub(crate) self_entry: u64,
    /// [`EntryDrop::Unreachable`].
    pub(crate) unreachable: u64,
    /// [`EntryDrop::BadAddress`].
    pub(crate) bad_address: u64,
    /// [`EntryDrop::BadIdentity`].
    pub(crate) bad_identity: u64,
    /// [`EntryDrop::TableFull`].
    pub(crate) table_full: u64,
    /// [`EntryDrop::SenderQuota`].
    pub(crate) sender_quota: u64,
    /// [`EntryDrop::OverCap`].
    pub(crate) over_cap: u64,
}

impl EntryDrops {
    fn add(&mut self, why: EntryDrop, n: u64) {
        let c = match why {
            EntryDrop::SelfEntry => &mut self.self_entry,
            EntryDrop::Unreachable => &mut self.unreachable,
            EntryDrop::BadAddress => &mut self.bad_address,
            EntryDrop::BadIdentity => &mut self.bad_identity,
            EntryDrop::TableFull => &mut self.table_full,
            EntryDrop::SenderQuota => &mut self.sender_quota,
            EntryDrop::OverCap => &mut self.over_cap,
        };
        *c += n;
    }

    /// Every count as (reason, value).
    pub(crate) fn entries(&self) -> [(&'static str, u64); 7] {
        [
            ("self", self.self_entry),
            ("unreachable", self.unreachable),
            ("bad_address", self.bad_address),
            ("bad_identity", self.bad_identity),
            ("table_full", self.table_full),
            ("sender_quota", self.sender_quota),
            ("over_cap", self.over_cap),
        ]
    }

    /// All dropped entries.
    pub(crate) fn total(&self) -> u64 {
        self.entries().iter().map(|(_, n)| n).sum()
    }

    /// The non-zero counts, as `reason=count` separated by spaces: one log
    /// line per message.
    pub(crate) fn summary(&self) -> String {
        self.entries()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What merging one peer exchange did.
#[derive(Debug, Default)]
pub(crate) struct MergeOutcome {
    /// New entries.
    pub(crate) added: usize,
    /// Existing entries refreshed.
    pub(crate) refreshed: usize,
    /// Entries evicted to make room.
    pub(crate) evicted: Vec<KnownPeer>,
    /// Dropped entries, by reason.
    pub(crate) drops: EntryDrops,
}

/// Validates one received entry.
///
/// # Errors
/// The reason to drop it.
pub fn validate_entry(info: &PeerInfo, self_id: &NodeId) -> Result<(NodeId, PublicKey), EntryDrop> {
    if self_id.matches_str(&info.node_id) {
        return Err(EntryDrop::SelfEntry);
    }
    if !info.reachable {
        return Err(EntryDrop::Unreachable);
    }
    if !is_dialable_addr(&info.addr) {
        return Err(EntryDrop::BadAddress);
    }
    if !NodeId::from_public_key_bytes(&info.ed25519_pubkey).matches_str(&info.node_id) {
        return Err(EntryDrop::BadIdentity);
    }
    let key = PublicKey::from_bytes(&info.ed25519_pubkey).map_err(|_| EntryDrop::BadIdentity)?;
    Ok((key.node_id(), key))
}

/// `last_seen` as a receiver believes it: at most [`MAX_LAST_SEEN_SKEW`]
/// ahead of its own clock, so that an entry claiming the future cannot beat
/// every later honest entry.
pub fn clamp_last_seen(last_seen: u64, now_unix: u64) -> u64 {
    last_seen.min(now_unix.saturating_add(MAX_LAST_SEEN_SKEW.as_secs()))
}

/// The known-peers table: at most [`MAX_KNOWN_PEERS`] entries, at most
/// [`MAX_NEW_PER_SENDER`] unconfirmed ones per introducing sender.
#[derive(Debug)]
pub(crate) struct KnownPeers {
    self_id: NodeId,
    cap: usize,
    peers: HashMap<NodeId, KnownPeer>,
    /// Unconfirmed entries per introducing sender (at most one key per
    /// entry, so bounded by the table).
    by_source: HashMap<NodeId, usize>,
}

impl KnownPeers {
    pub(crate) fn new(self_id: NodeId) -> Self {
        Self::with_cap(self_id, MAX_KNOWN_PEERS)
    }

    pub(crate) fn with_cap(self_id: NodeId, cap: usize) -> Self {
        Self {
            self_id,
            cap: cap.max(1),
            peers: HashMap::new(),
            by_source: HashMap::new(),
        }
    }

    pub(crate) fn all(&self) -> Vec<KnownPeer> {
        self.peers.values().cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    fn unsource(&mut self, rec_source: Option<NodeId>) {
        if let Some(src) = rec_source
            && let Some(n) = self.by_source.get_mut(&src)
        {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&src);
            }
        }
    }

    fn remove(&mut self, id: &NodeId) -> Option<KnownPeer> {
        let rec = self.peers.remove(id)?;
        self.unsource(rec.source);
        Some(rec)
    }

    /// Makes room for one more entry if the table is full: evicts the
    /// lowest-ranked entry, unless the newcomer is unconfirmed and every
    /// entry is confirmed and answering. Returns `Err` if there is no room,
    /// `Ok(Some(evicted))` if an entry went.
    fn make_room(&mut self, confirmed_newcomer: bool) -> Result<Option<KnownPeer>, EntryDrop> {
        if self.peers.len() < self.cap {
            return Ok(None);
        }
        let victim = self
            .peers
            .values()
            .min_by_key(|p| {
                let share = p.source.and_then(|s| self.by_source.get(&s)).copied();
                p.eviction_rank(share.unwrap_or(0))
            })
            .filter(|p| confirmed_newcomer || !p.confirmed || p.fails > 0)
            .map(|p| p.node_id)
            .ok_or(EntryDrop::TableFull)?;
        Ok(self.remove(&victim))
    }

    /// Records a peer we just completed a hello with: it is confirmed.
    /// Returns the record to persist and the entry evicted for it, if any.
    pub(crate) fn on_connected(
        &mut self,
        info: &PeerHelloInfo,
        now_unix: u64,
    ) -> (Option<KnownPeer>, Option<KnownPeer>) {
        if info.node_id == self.self_id {
            return (None, None);
        }
        let dialable = info.reachable && is_dialable_addr(&info.listen_addr);
        let mut evicted = None;
        if !self.peers.contains_key(&info.node_id) {
            if !dialable {
                return (None, None);
            }
            match self.make_room(true) {
                Ok(e) => evicted = e,
                Err(_) => return (None, None),
            }
        }
        let rec = self.peers.entry(info.node_id).or_insert_with(|| KnownPeer {
            node_id: info.node_id,
            public_key: info.public_key,
            addr: String::new(),
            reachable: false,
            last_seen: 0,
            fails: 0,
            last_fail: None,
            confirmed: false,
            source: None,
        });
        if dialable {
            rec.addr = info.listen_addr.clone();
        }
        rec.reachable = dialable;
        rec.last_seen = now_unix;
        rec.fails = 0;
        rec.last_fail = None;
        rec.confirmed = true;
        let source = rec.source.take();
        let rec = rec.clone();
        self.unsource(source);
        (Some(rec), evicted)
    }

    /// Inserts a record loaded from storage (validated like a received
    /// entry). Only confirmed entries are stored, so it is confirmed.
    pub(crate) fn load(&mut self, info: &PeerInfo, now_unix: u64) -> bool {
        match validate_entry(info, &self.self_id) {
            Ok((node_id, public_key)) if self.peers.len() < self.cap => {
                let last_seen = clamp_last_seen(info.last_seen, now_unix);
                let mut rec = KnownPeer::reachable(node_id, public_key, info, last_seen, None);
                rec.confirmed = true;
                self.peers.insert(node_id, rec);
                true
            }
            _ => false,
        }
    }

    /// Merges a peer exchange received from `sender`.
    pub(crate) fn merge(
        &mut self,
        sender: &NodeId,
        entries: &[PeerInfo],
        now_unix: u64,
    ) -> MergeOutcome {
        let mut out = MergeOutcome::default();
        if entries.len() > MAX_EXCHANGE_READ {
            out.drops.add(
                EntryDrop::OverCap,
                (entries.len() - MAX_EXCHANGE_READ) as u64,
            );
        }
        for info in entries.iter().take(MAX_EXCHANGE_READ) {
            match self.merge_one(sender, info, now_unix, &mut out) {
                Ok(()) => {}
                Err(why) => out.drops.add(why, 1),
            }
        }
        out
    }

    fn merge_one(
        &mut self,
        sender: &NodeId,
        info: &PeerInfo,
        now_unix: u64,
        out: &mut MergeOutcome,
    ) -> Result<(), EntryDrop> {
        let (node_id, public_key) = validate_entry(info, &self.self_id)?;
        let last_seen = clamp_last_seen(info.last_seen, now_unix);
        if let Some(rec) = self.peers.get_mut(&node_id) {
            if last_seen > rec.last_seen {
                // A confirmed peer's address came from its own hello: a third
                // party may move it only while we fail to reach it there (or
                // if its hello gave none).
                if !rec.confirmed || rec.fails > 0 || !rec.reachable {
                    rec.addr = info.addr.clone();
                    rec.reachable = true;
                }
                rec.last_seen = last_seen;
                out.refreshed += 1;
            }
            return Ok(());
        }
        if self.by_source.get(sender).copied().unwrap_or(0) >= MAX_NEW_PER_SENDER {
            return Err(EntryDrop::SenderQuota);
        }
        if let Some(evicted) = self.make_room(false)? {
            out.evicted.push(evicted);
        }
        let rec = KnownPeer::reachable(node_id, public_key, info, last_seen, Some(*sender));
        self.peers.insert(node_id, rec);
        *self.by_source.entry(*sender).or_insert(0) += 1;
        out.added += 1;
        Ok(())
    }

    /// The entries of a peer exchange for `recipient`, at most
    /// [`MAX_EXCHANGE_SENT`]: ourselves first if we are reachable, then the
    /// known reachable peers but the recipient — confirmed before
    /// unconfirmed, most recently seen first, unconfirmed ones that failed
    /// a dial left out.
    pub(crate) fn exchange_list(&self, recipient: &NodeId, me: Option<PeerInfo>) -> Vec<PeerInfo> {
        let mut list: Vec<&KnownPeer> = self
            .peers
            .values()
            .filter(|p| p.node_id != *recipient && p.reachable && is_dialable_addr(&p.addr))
            .filter(|p| p.confirmed || p.fails == 0)
            .collect();
        list.sort_by(|a, b| {
            b.confirmed
                .cmp(&a.confirmed)
                .then(b.last_seen.cmp(&a.last_seen))
                .then(a.node_id.cmp(&b.node_id))
        });
        let mut out: Vec<PeerInfo> = me.into_iter().collect();
        let room = MAX_EXCHANGE_SENT.saturating_sub(out.len());
        out.extend(list.into_iter().take(room).map(KnownPeer::to_info));
        out
    }

    /// Up to `max` random dial candidates: known, reachable, not connected,
    /// not being dialled, not a bootstrap address, and past their backoff.
    /// Confirmed entries come first, and each introducing sender supplies at
    /// most one candidate per round while others have some, so that one
    /// sender's entries cannot crowd out everyone else's.
    pub(crate) fn candidates(
        &self,
        now: Instant,
        skip: &HashSet<NodeId>,
        skip_addrs: &HashSet<String>,
        max: usize,
        rng: &mut impl Rng,
    ) -> Vec<KnownPeer> {
        let mut c: Vec<&KnownPeer> = self
            .peers
            .values()
            .filter(|p| p.reachable && !skip.contains(&p.node_id) && !skip_addrs.contains(&p.addr))
            .filter(|p| p.last_fail.is_none_or(|t| now >= t + p.backoff()))
            .collect();
        c.sort_by_key(|p| p.node_id);
        c.shuffle(rng);
        c.sort_by_key(|p| !p.confirmed);
        let mut picked: Vec<KnownPeer> = Vec::new();
        let mut sources: HashSet<NodeId> = HashSet::new();
        let mut rest = Vec::new();
        for p in c {
            if picked.len() >= max {
                break;
            }
            match p.source {
                Some(src) if !sources.insert(src) => rest.push(p),
                _ => picked.push(p.clone()),
            }
        }
        let room = max.saturating_sub(picked.len());
        picked.extend(rest.into_iter().take(room).cloned());
        picked
    }

    /// Records a failed dial. Returns the updated record, or `None` if the
    /// entry is unknown or was forgotten (an unconfirmed entry after
    /// [`MAX_UNCONFIRMED_FAILS`] failures).
    pub(crate) fn record_failure(&mut self, node_id: &NodeId, now: Instant) -> Option<KnownPeer> {
        let rec = self.peers.get_mut(node_id)?;
        rec.fails = rec.fails.saturating_add(1);
        rec.last_fail = Some(now);
        if !rec.confirmed && rec.fails >= MAX_UNCONFIRMED_FAILS {
            self.remove(node_id);
            return None;
        }
        Some(rec.clone())
    }
}

/// A random delay in `[0, max]`.
pub(crate) fn jitter(max: Duration, rng: &mut impl Rng) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use micelio_identity::Identity;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn id(n: u8) -> Identity {
        Identity::from_seed([n; 32])
    }

    fn info(n: u8, addr: &str, last_seen: u64) -> PeerInfo {
        let i = id(n);
        PeerInfo {
            node_id: i.node_id().to_string(),
            addr: addr.into(),
            reachable: true,
            ed25519_pubkey: i.public_key().as_bytes().to_vec().into(),
            last_seen,
        }
    }

    #[test]
    fn validation_drops_each_bad_kind() {
        let me = *id(1).node_id();
        assert_eq!(
            validate_entry(&info(1, "127.0.0.1:1", 1), &me),
            Err(EntryDrop::SelfEntry)
        );
        let mut e = info(2, "127.0.0.1:1", 1);
        e.reachable = false;
        assert_eq!(validate_entry(&e, &me), Err(EntryDrop::Unreachable));
        for bad in ["", "0.0.0.0:5", "[::]:5", "nohost"] {
            assert_eq!(
                validate_entry(&info(2, bad, 1), &me),
                Err(EntryDrop::BadAddress),
                "{bad}"
            );
        }
        let mut e = info(2, "127.0.0.1:1", 1);
        e.node_id = id(3).node_id().to_string();
        assert_eq!(validate_entry(&e, &me), Err(EntryDrop::BadIdentity));
        assert!(validate_entry(&info(2, "127.0.0.1:1", 1), &me).is_ok());
    }

    fn seeded(n: u32) -> Identity {
        let mut seed = [7u8; 32];
        seed[..4].copy_from_slice(&n.to_le_bytes());
        Identity::from_seed(seed)
    }

    fn fake(n: u32, last_seen: u64) -> PeerInfo {
        let i = seeded(n);
        PeerInfo {
            node_id: i.node_id().to_string(),
            addr: "127.0.0.1:1".into(),
            reachable: true,
            ed25519_pubkey: i.public_key().as_bytes().to_vec().into(),
            last_seen,
        }
    }

    fn hello_of(n: u8, addr: &str) -> PeerHelloInfo {
        let i = id(n);
        PeerHelloInfo {
            node_id: *i.node_id(),
            public_key: i.public_key(),
            version: "0.1.0".into(),
            tags: vec![],
            reachable: true,
            listen_addr: addr.into(),
            features: vec![],
        }
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn merge_keeps_the_newest() {
        let from = *id(9).node_id();
        let mut t = KnownPeers::new(*id(1).node_id());
        let o = t.merge(
            &from,
            &[info(2, "127.0.0.1:2", 10), info(1, "127.0.0.1:1", 10)],
            NOW,
        );
        assert_eq!(o.added, 1);
        assert_eq!(o.drops.self_entry, 1);
        let o = t.merge(&from, &[info(2, "127.0.0.1:9", 5)], NOW);
        assert_eq!(o.refreshed, 0, "older news is ignored");
        let o = t.merge(&from, &[info(2, "127.0.0.1:9", 11)], NOW);
        assert_eq!(o.refreshed, 1);
        assert_eq!(t.all()[0].addr, "127.0.0.1:9");
    }

    /// Regression (issue 8, item 11): one sender filled the table with
    /// 4,096 fakes and every later valid entry was refused.
    #[test]
    fn one_sender_flooding_10000_fakes_cannot_crowd_out_an_honest_entry() {
        let me = *id(1).node_id();
        let flooder = *id(9).node_id();
        let honest_sender = *id(8).node_id();
        let mut t = KnownPeers::new(me);
        let fakes: Vec<PeerInfo> = (0..10_000).map(|n| fake(n, NOW)).collect();
        let mut quota = 0;
        for chunk in fakes.chunks(1000) {
            quota += t.merge(&flooder, chunk, NOW).drops.sender_quota;
        }
        assert_eq!(t.len(), MAX_NEW_PER_SENDER);
        assert_eq!(quota, 10_000 - MAX_NEW_PER_SENDER as u64);
        let o = t.merge(&honest_sender, &[info(3, "127.0.0.1:3", NOW - 100)], NOW);
        assert_eq!(o.added, 1, "the honest entry is accepted");
        // And discovery dials it in the very first round, next to a fake.
        let mut rng = SmallRng::seed_from_u64(1);
        let c = t.candidates(
            Instant::now(),
            &HashSet::new(),
            &HashSet::new(),
            3,
            &mut rng,
        );
        assert!(c.iter().any(|p| p.node_id == *id(3).node_id()), "{c:?}");
        assert_eq!(c.iter().filter(|p| p.source == Some(flooder)).count(), 2);
        // A single message is read only up to its cap.
        let o = t.merge(id(7).node_id(), &fakes[..MAX_EXCHANGE_READ + 5], NOW);
        assert_eq!(o.drops.over_cap, 5);
    }

    #[test]
    fn a_full_table_evicts_unconfirmed_and_failing_entries_first() {
        let me = *id(1).node_id();
        let mut t = KnownPeers::with_cap(me, 4);
        // Two confirmed peers, two fakes from different senders.
        t.on_connected(&hello_of(2, "127.0.0.1:2"), NOW);
        t.on_connected(&hello_of(3, "127.0.0.1:3"), NOW);
        t.merge(id(20).node_id(), &[fake(1, NOW + 30)], NOW);
        t.merge(id(21).node_id(), &[fake(2, NOW + 30)], NOW);
        let failing = *seeded(2).node_id();
        t.record_failure(&failing, Instant::now());
        // A new entry evicts the failing fake first, then the other fake.
        let o = t.merge(id(22).node_id(), &[info(4, "127.0.0.1:4", NOW + 50)], NOW);
        assert_eq!((o.added, o.evicted.len()), (1, 1));
        assert_eq!(o.evicted[0].node_id, failing);
        let o = t.merge(id(23).node_id(), &[info(5, "127.0.0.1:5", NOW + 50)], NOW);
        assert_eq!(o.evicted[0].node_id, *seeded(1).node_id());
        // Now the unconfirmed entries 4 and 5 go before confirmed 2 and 3.
        let o = t.merge(id(24).node_id(), &[info(6, "127.0.0.1:6", NOW)], NOW);
        assert!(!o.evicted[0].confirmed);
        // Among unconfirmed entries, the sender with the largest share loses.
        let mut t = KnownPeers::with_cap(me, 3);
        t.merge(
            id(20).node_id(),
            &[fake(1, NOW + 60), fake(2, NOW + 60)],
            NOW,
        );
        t.merge(id(21).node_id(), &[info(4, "127.0.0.1:4", NOW - 900)], NOW);
        let o = t.merge(id(22).node_id(), &[info(5, "127.0.0.1:5", NOW - 900)], NOW);
        assert_eq!(o.evicted[0].source, Some(*id(20).node_id()));
        // With only confirmed, answering peers left, an unconfirmed newcomer
        // is refused, a confirmed one is not.
        let mut t = KnownPeers::with_cap(me, 2);
        t.on_connected(&hello_of(2, "127.0.0.1:2"), NOW);
        t.on_connected(&hello_of(3, "127.0.0.1:3"), NOW);
        let o = t.merge(id(22).node_id(), &[info(4, "127.0.0.1:4", NOW)], NOW);
        assert_eq!(o.drops.table_full, 1);
        let (rec, evicted) = t.on_connected(&hello_of(4, "127.0.0.1:4"), NOW + 1);
        assert!(rec.is_some() && evicted.is_some());
    }

    #[test]
    fn unconfirmed_entries_that_keep_failing_are_forgotten() {
        let mut t = KnownPeers::new(*id(1).node_id());
        t.merge(id(9).node_id(), &[fake(1, NOW)], NOW);
        t.on_connected(&hello_of(2, "127.0.0.1:2"), NOW);
        let now = Instant::now();
        for _ in 0..MAX_UNCONFIRMED_FAILS + 2 {
            t.record_failure(seeded(1).node_id(), now);
            t.record_failure(id(2).node_id(), now);
        }
        let ids: Vec<NodeId> = t.all().iter().map(|p| p.node_id).collect();
        assert_eq!(ids, vec![*id(2).node_id()], "the confirmed peer stays");
        assert!(t.by_source.is_empty());
    }

    #[test]
    fn an_exchange_stays_within_its_cap_confirmed_and_recent_first() {
        let me = *id(1).node_id();
        let mut t = KnownPeers::new(me);
        for n in 0..3 {
            let fakes: Vec<PeerInfo> = (n * 200..n * 200 + 200)
                .map(|k| fake(k, NOW + 60))
                .collect();
            t.merge(id(30 + n as u8).node_id(), &fakes, NOW);
        }
        t.on_connected(&hello_of(2, "127.0.0.1:2"), NOW - 1000);
        t.on_connected(&hello_of(3, "127.0.0.1:3"), NOW - 10);
        let list = t.exchange_list(id(4).node_id(), Some(info(1, "127.0.0.1:1", NOW)));
        assert_eq!(list.len(), MAX_EXCHANGE_SENT);
        assert_eq!(
            list[0].node_id,
            id(1).node_id().to_string(),
            "ourselves first"
        );
        assert_eq!(
            list[1].node_id,
            id(3).node_id().to_string(),
            "then confirmed, newest first"
        );
        assert_eq!(list[2].node_id, id(2).node_id().to_string());
    }

    #[test]
    fn a_third_party_cannot_move_a_confirmed_peer_that_answers() {
        let mut t = KnownPeers::new(*id(1).node_id());
        t.on_connected(&hello_of(2, "127.0.0.1:2"), NOW);
        t.merge(
            id(9).node_id(),
            &[info(2, "127.0.0.1:666", NOW + 10)],
            NOW + 10,
        );
        assert_eq!(t.all()[0].addr, "127.0.0.1:2");
        assert_eq!(t.all()[0].last_seen, NOW + 10);
        t.record_failure(id(2).node_id(), Instant::now());
        t.merge(
            id(9).node_id(),
            &[info(2, "127.0.0.1:3", NOW + 20)],
            NOW + 20,
        );
        assert_eq!(t.all()[0].addr, "127.0.0.1:3", "moved once unreachable");
    }

    /// Regression (issue 8, item 11): `last_seen` = 2^63 pinned an address
    /// forever.
    #[test]
    fn a_last_seen_in_the_far_future_is_clamped() {
        let from = *id(9).node_id();
        let mut t = KnownPeers::new(*id(1).node_id());
        t.merge(&from, &[info(2, "127.0.0.1:666", 1 << 63)], NOW);
        assert_eq!(t.all()[0].last_seen, NOW + MAX_LAST_SEEN_SKEW.as_secs());
        // A minute later an honest, newer entry replaces it.
        let later = NOW + MAX_LAST_SEEN_SKEW.as_secs() + 1;
        let o = t.merge(id(8).node_id(), &[info(2, "127.0.0.1:2", later)], later);
        assert_eq!(o.refreshed, 1);
        assert_eq!(t.all()[0].addr, "127.0.0.1:2");
        assert_eq!(clamp_last_seen(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn drops_are_summarised_on_one_line() {
        let me = *id(1).node_id();
        let mut t = KnownPeers::new(me);
        let mut bad = info(2, "0.0.0.0:1", NOW);
        let mut unreachable = info(3, "127.0.0.1:3", NOW);
        unreachable.reachable = false;
        let o = t.merge(
            id(9).node_id(),
            &[
                info(1, "127.0.0.1:1", NOW),
                bad.clone(),
                unreachable.clone(),
                {
                    bad.addr = String::new();
                    bad
                },
            ],
            NOW,
        );
        assert_eq!(o.drops.total(), 4);
        assert_eq!(o.drops.summary(), "self=1 unreachable=1 bad_address=2");
    }

    #[test]
    fn exchange_list_excludes_the_recipient() {
        let mut t = KnownPeers::new(*id(1).node_id());
        t.merge(
            id(9).node_id(),
            &[info(2, "127.0.0.1:2", 1), info(3, "127.0.0.1:3", 1)],
            NOW,
        );
        let list = t.exchange_list(id(2).node_id(), Some(info(1, "127.0.0.1:1", 1)));
        let ids: Vec<_> = list.iter().map(|p| p.node_id.clone()).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&id(1).node_id().to_string()));
        assert!(ids.contains(&id(3).node_id().to_string()));
    }

    #[test]
    fn backoff_schedule() {
        let mut p = KnownPeers::new(*id(1).node_id());
        p.merge(id(9).node_id(), &[info(2, "127.0.0.1:2", 1)], NOW);
        p.on_connected(&hello_of(2, "127.0.0.1:2"), NOW);
        let now = Instant::now();
        let expected = [1, 2, 4, 8, 16, 30, 30];
        for secs in expected {
            let rec = p.record_failure(id(2).node_id(), now).unwrap();
            assert_eq!(rec.backoff(), Duration::from_secs(secs));
        }
    }

    #[test]
    fn candidates_respect_backoff_and_skips() {
        let mut t = KnownPeers::new(*id(1).node_id());
        for n in [2, 3, 4] {
            t.merge(
                id(10 + n).node_id(),
                &[info(n, &format!("127.0.0.1:{n}"), 1)],
                NOW,
            );
        }
        let mut rng = SmallRng::seed_from_u64(7);
        let now = Instant::now();
        let skip: HashSet<NodeId> = [*id(2).node_id()].into();
        let addrs: HashSet<String> = ["127.0.0.1:3".to_owned()].into();
        let c = t.candidates(now, &skip, &addrs, 3, &mut rng);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].node_id, *id(4).node_id());
        t.record_failure(id(4).node_id(), now);
        assert!(t.candidates(now, &skip, &addrs, 3, &mut rng).is_empty());
        let later = now + Duration::from_secs(1);
        assert_eq!(t.candidates(later, &skip, &addrs, 3, &mut rng).len(), 1);
        assert!(
            t.candidates(later, &HashSet::new(), &HashSet::new(), 2, &mut rng)
                .len()
                == 2
        );
    }

    #[test]
    fn loaded_records_are_confirmed_and_clamped() {
        let (rec, _) =
            KnownPeers::new(*id(1).node_id()).on_connected(&hello_of(2, "127.0.0.1:2"), 7);
        let mut t = KnownPeers::new(*id(1).node_id());
        let mut info = rec.unwrap().to_info();
        info.last_seen = u64::MAX;
        assert!(t.load(&info, NOW));
        assert!(t.all()[0].confirmed);
        assert_eq!(t.all()[0].last_seen, NOW + MAX_LAST_SEEN_SKEW.as_secs());
        assert!(!t.load(&info_bad(), NOW));
    }

    fn info_bad() -> PeerInfo {
        info(3, "0.0.0.0:1", 1)
    }
}
