//! Discovery: the table of known peers, peer-exchange validation and merge,
//! dial candidate selection with per-peer backoff, and persistence in sled.
//!
//! The table is a plain synchronous structure driven by the peer manager;
//! time comes in as arguments so that it is testable without sleeping.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use micelio_identity::{NodeId, PublicKey};
use micelio_wire::WireMessage as _;
use micelio_wire::limits::MAX_DISCOVERY_BACKOFF;
use micelio_wire::proto::PeerInfo;
use rand::Rng;
use rand::seq::SliceRandom;
use tokio::time::Instant;

use crate::config::is_dialable_addr;
use crate::hello::PeerHelloInfo;

/// Most peers remembered; entries beyond it are ignored.
pub const MAX_KNOWN_PEERS: usize = 4096;

/// A peer the node knows how to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPeer {
    /// Its NodeId.
    pub node_id: NodeId,
    /// Its public key (hashes to `node_id`).
    pub public_key: PublicKey,
    /// Where to dial it.
    pub addr: String,
    /// Whether it accepts inbound connections.
    pub reachable: bool,
    /// Unix seconds when it was last seen alive (by us or by a peer).
    pub last_seen: u64,
    /// Consecutive failed dials.
    pub fails: u32,
    /// When the last dial failed.
    pub last_fail: Option<Instant>,
}

impl KnownPeer {
    /// A fresh record of a validated, reachable entry.
    fn reachable(node_id: NodeId, public_key: PublicKey, info: &PeerInfo) -> Self {
        Self {
            node_id,
            public_key,
            addr: info.addr.clone(),
            reachable: true,
            last_seen: info.last_seen,
            fails: 0,
            last_fail: None,
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
}

/// Why a peer-exchange entry was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryDrop {
    /// It describes ourselves.
    SelfEntry,
    /// It is marked unreachable.
    Unreachable,
    /// Its address is empty, malformed or a wildcard.
    BadAddress,
    /// Its key is not a valid 32-byte key hashing to its `node_id`.
    BadIdentity,
    /// The table is full.
    TableFull,
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

/// The known-peers table.
#[derive(Debug)]
pub(crate) struct KnownPeers {
    self_id: NodeId,
    peers: HashMap<NodeId, KnownPeer>,
}

impl KnownPeers {
    pub(crate) fn new(self_id: NodeId) -> Self {
        Self {
            self_id,
            peers: HashMap::new(),
        }
    }

    pub(crate) fn all(&self) -> Vec<KnownPeer> {
        self.peers.values().cloned().collect()
    }

    /// Records a peer we just completed a hello with. Returns the record to
    /// persist.
    pub(crate) fn on_connected(
        &mut self,
        info: &PeerHelloInfo,
        now_unix: u64,
    ) -> Option<KnownPeer> {
        if info.node_id == self.self_id {
            return None;
        }
        let dialable = info.reachable && is_dialable_addr(&info.listen_addr);
        if !self.peers.contains_key(&info.node_id)
            && (!dialable || self.peers.len() >= MAX_KNOWN_PEERS)
        {
            return None;
        }
        let rec = self.peers.entry(info.node_id).or_insert_with(|| KnownPeer {
            node_id: info.node_id,
            public_key: info.public_key,
            addr: String::new(),
            reachable: false,
            last_seen: 0,
            fails: 0,
            last_fail: None,
        });
        if dialable {
            rec.addr = info.listen_addr.clone();
        }
        rec.reachable = dialable;
        rec.last_seen = now_unix;
        rec.fails = 0;
        rec.last_fail = None;
        Some(rec.clone())
    }

    /// Inserts a record loaded from storage (validated like a received entry).
    pub(crate) fn load(&mut self, info: &PeerInfo) -> bool {
        match validate_entry(info, &self.self_id) {
            Ok((node_id, public_key)) if self.peers.len() < MAX_KNOWN_PEERS => {
                self.peers
                    .insert(node_id, KnownPeer::reachable(node_id, public_key, info));
                true
            }
            _ => false,
        }
    }

    /// Merges a received peer exchange: returns the records that changed
    /// (to persist) and the dropped entries with their reasons.
    pub(crate) fn merge(&mut self, entries: &[PeerInfo]) -> (Vec<KnownPeer>, Vec<EntryDrop>) {
        let mut changed = Vec::new();
        let mut dropped = Vec::new();
        for info in entries {
            let (node_id, public_key) = match validate_entry(info, &self.self_id) {
                Ok(v) => v,
                Err(why) => {
                    dropped.push(why);
                    continue;
                }
            };
            let full = self.peers.len() >= MAX_KNOWN_PEERS;
            match self.peers.get_mut(&node_id) {
                Some(rec) => {
                    if info.last_seen > rec.last_seen {
                        rec.addr = info.addr.clone();
                        rec.reachable = true;
                        rec.last_seen = info.last_seen;
                        changed.push(rec.clone());
                    }
                }
                None if full => dropped.push(EntryDrop::TableFull),
                None => {
                    let rec = KnownPeer::reachable(node_id, public_key, info);
                    self.peers.insert(node_id, rec.clone());
                    changed.push(rec);
                }
            }
        }
        (changed, dropped)
    }

    /// The entries of a peer exchange for `recipient`: ourselves first if we
    /// are reachable, then every known reachable peer but the recipient.
    pub(crate) fn exchange_list(&self, recipient: &NodeId, me: Option<PeerInfo>) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = me.into_iter().collect();
        out.extend(
            self.peers
                .values()
                .filter(|p| p.node_id != *recipient && p.reachable && is_dialable_addr(&p.addr))
                .map(KnownPeer::to_info),
        );
        out
    }

    /// Up to `max` random dial candidates: known, reachable, not connected,
    /// not being dialled, not a bootstrap address, and past their backoff.
    pub(crate) fn candidates(
        &self,
        now: Instant,
        skip: &HashSet<NodeId>,
        skip_addrs: &HashSet<String>,
        max: usize,
        rng: &mut impl Rng,
    ) -> Vec<KnownPeer> {
        let mut c: Vec<KnownPeer> = self
            .peers
            .values()
            .filter(|p| p.reachable && !skip.contains(&p.node_id) && !skip_addrs.contains(&p.addr))
            .filter(|p| p.last_fail.is_none_or(|t| now >= t + p.backoff()))
            .cloned()
            .collect();
        c.shuffle(rng);
        c.truncate(max);
        c
    }

    /// Records a failed dial; returns the updated record.
    pub(crate) fn record_failure(&mut self, node_id: &NodeId, now: Instant) -> Option<KnownPeer> {
        let rec = self.peers.get_mut(node_id)?;
        rec.fails = rec.fails.saturating_add(1);
        rec.last_fail = Some(now);
        Some(rec.clone())
    }
}

/// Known peers persisted in a sled tree, keyed by NodeId, valued by the
/// `PeerInfo` protobuf.
#[derive(Debug, Clone)]
pub struct PeerStore {
    tree: sled::Tree,
}

impl PeerStore {
    /// Uses `tree` (for example `db.open_tree("peers")`).
    pub fn new(tree: sled::Tree) -> Self {
        Self { tree }
    }

    /// Every stored record that decodes; undecodable ones are skipped and
    /// counted in the second value.
    pub fn load(&self) -> (Vec<PeerInfo>, usize) {
        let mut out = Vec::new();
        let mut bad = 0;
        for item in self.tree.iter() {
            match item {
                Ok((_, v)) => match PeerInfo::decode_wire(&v[..]) {
                    Ok(info) => out.push(info),
                    Err(_) => bad += 1,
                },
                Err(_) => bad += 1,
            }
        }
        (out, bad)
    }

    /// Stores one record.
    ///
    /// # Errors
    /// The sled error, if the write failed.
    pub fn save(&self, peer: &KnownPeer) -> Result<(), sled::Error> {
        self.tree.insert(
            peer.node_id.to_hex().as_bytes(),
            peer.to_info().encode_wire(),
        )?;
        Ok(())
    }

    /// Flushes to disk.
    ///
    /// # Errors
    /// The sled error, if the flush failed.
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.tree.flush().map(|_| ())
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

    #[test]
    fn merge_keeps_the_newest() {
        let mut t = KnownPeers::new(*id(1).node_id());
        let (changed, dropped) = t.merge(&[info(2, "127.0.0.1:2", 10), info(1, "127.0.0.1:1", 10)]);
        assert_eq!(changed.len(), 1);
        assert_eq!(dropped, vec![EntryDrop::SelfEntry]);
        let (changed, _) = t.merge(&[info(2, "127.0.0.1:9", 5)]);
        assert!(changed.is_empty(), "older news is ignored");
        let (changed, _) = t.merge(&[info(2, "127.0.0.1:9", 11)]);
        assert_eq!(changed[0].addr, "127.0.0.1:9");
    }

    #[test]
    fn exchange_list_excludes_the_recipient() {
        let mut t = KnownPeers::new(*id(1).node_id());
        t.merge(&[info(2, "127.0.0.1:2", 1), info(3, "127.0.0.1:3", 1)]);
        let list = t.exchange_list(id(2).node_id(), Some(info(1, "127.0.0.1:1", 1)));
        let ids: Vec<_> = list.iter().map(|p| p.node_id.clone()).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&id(1).node_id().to_string()));
        assert!(ids.contains(&id(3).node_id().to_string()));
    }

    #[test]
    fn backoff_schedule() {
        let mut p = KnownPeers::new(*id(1).node_id());
        p.merge(&[info(2, "127.0.0.1:2", 1)]);
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
        t.merge(&[
            info(2, "127.0.0.1:2", 1),
            info(3, "127.0.0.1:3", 1),
            info(4, "127.0.0.1:4", 1),
        ]);
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
    fn store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = PeerStore::new(db.open_tree("peers").unwrap());
        let mut t = KnownPeers::new(*id(1).node_id());
        let (changed, _) = t.merge(&[info(2, "127.0.0.1:2", 7)]);
        store.save(&changed[0]).unwrap();
        db.open_tree("peers")
            .unwrap()
            .insert(b"junk", b"\xff\xff".as_slice())
            .unwrap();
        let (loaded, bad) = store.load();
        assert_eq!(bad, 1);
        let mut t2 = KnownPeers::new(*id(1).node_id());
        assert!(t2.load(&loaded[0]));
        assert_eq!(t2.all()[0].addr, "127.0.0.1:2");
    }
}
