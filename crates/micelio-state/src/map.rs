//! [`StateMap`]: the sans-IO core of the replicated map.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use micelio_identity::{Identity, NodeId};
use micelio_wire::proto::StateEntry;

use crate::clock::LamportClock;
use crate::error::{Reject, WriteError};
use crate::version::{Limits, Version, key_position, tie_of, verify_entry};

/// Bits of a key's position that pick its leaf of the fingerprint table.
pub(crate) const LEAF_BITS: u32 = 12;
/// Leaves of the fingerprint table.
pub(crate) const LEAVES: usize = 1 << LEAF_BITS;
/// Most collected tombstones remembered (their versions), so that a copy
/// arriving late does not bring them back; the oldest is forgotten first.
pub(crate) const MAX_COLLECTED: usize = 100_000;
/// Largest forward jump of the clock that an entry of another author may
/// cause. An entry further ahead is accepted but not witnessed, so that one
/// valid author writing near 2^62 cannot exhaust everyone's clock.
pub(crate) const MAX_WITNESS_JUMP: u64 = 1 << 32;

/// What the map keeps of an entry: its version and sizes. The value itself
/// belongs to storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The entry's place in the LWW order.
    pub version: Version,
    /// Whether it is a tombstone.
    pub deleted: bool,
    /// Length of its value in bytes.
    pub value_len: u32,
}

/// The outcome of a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The entry won and is now the key's entry; `previous` is what it
    /// replaced.
    Accepted {
        /// The key's former entry, if it had one.
        previous: Option<Meta>,
    },
    /// The key already holds this entry or a newer one (or a newer
    /// collected tombstone): nothing changed.
    Stale,
}

/// Counters of the map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Entries held, tombstones included.
    pub entries: u64,
    /// Tombstones held.
    pub tombstones: u64,
    /// Bytes of keys and values held.
    pub bytes: u64,
    /// Entries that arrived stale (duplicates or older versions).
    pub stale: u64,
    /// Tombstones collected since start.
    pub collected: u64,
    /// Entries of other authors accepted without moving the clock: more
    /// than 2^32 ahead of it.
    pub unwitnessed: u64,
}

/// One leaf of the fingerprint table: the sum of the item hashes of the
/// keys whose position falls in it, and their count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Leaf {
    fp: u64,
    count: u64,
}

/// The replicated map's core: entries' metadata ordered by key position,
/// the Lamport clock, the version vector, the fingerprint table, and the
/// tombstones' ages. No I/O and no clock of its own: time is passed in as
/// Unix seconds.
#[derive(Debug)]
pub struct StateMap {
    me: NodeId,
    limits: Limits,
    clock: LamportClock,
    items: BTreeMap<(u64, Box<str>), Meta>,
    leaves: Vec<Leaf>,
    /// Highest timestamp held per author (monotone).
    vector: HashMap<NodeId, u64>,
    /// Tombstones in the order they were first seen: (since, key). A key
    /// may appear more than once; `tomb_since` says which is current.
    tomb_queue: VecDeque<(u64, Box<str>)>,
    tomb_since: HashMap<Box<str>, u64>,
    /// Collected tombstones' versions, oldest first.
    collected: HashMap<Box<str>, Version>,
    collected_order: VecDeque<Box<str>>,
    stats: Stats,
}

impl StateMap {
    /// An empty map owned by `me`.
    pub fn new(me: NodeId, limits: Limits) -> Self {
        Self {
            me,
            limits,
            clock: LamportClock::default(),
            items: BTreeMap::new(),
            leaves: vec![Leaf::default(); LEAVES],
            vector: HashMap::new(),
            tomb_queue: VecDeque::new(),
            tomb_since: HashMap::new(),
            collected: HashMap::new(),
            collected_order: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The owner's NodeId.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The limits entries must meet.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The clock.
    pub fn clock(&self) -> LamportClock {
        self.clock
    }

    /// Moves the clock to at least `ts` (on start: the highest timestamp
    /// persisted, so the clock never goes backwards across restarts).
    pub fn raise_clock(&mut self, ts: u64) {
        self.clock.witness(ts);
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Entries held, tombstones included.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The metadata of `key`'s entry (a tombstone included).
    pub fn get(&self, key: &str) -> Option<&Meta> {
        self.items.get(&(key_position(key), Box::from(key)))
    }

    /// Verifies a received entry ([`verify_entry`]) and merges it.
    ///
    /// # Errors
    /// Why it was refused.
    pub fn receive(&mut self, entry: &StateEntry, now_unix: u64) -> Result<Merge, Reject> {
        let version = verify_entry(entry, &self.limits)?;
        self.merge(
            &entry.key,
            version,
            entry.deleted,
            entry.value.len(),
            now_unix,
        )
    }

    /// Merges an entry whose checks passed: witnesses its timestamp, then
    /// keeps it if it is newer than the key's entry (the LWW rule of
    /// [`Version`]).
    ///
    /// # Errors
    /// [`Reject::Full`] for a new key while the map holds `max_entries`.
    pub fn merge(
        &mut self,
        key: &str,
        version: Version,
        deleted: bool,
        value_len: usize,
        now_unix: u64,
    ) -> Result<Merge, Reject> {
        if version.node == self.me
            || version.ts <= self.clock.now().saturating_add(MAX_WITNESS_JUMP)
        {
            self.clock.witness(version.ts);
        } else {
            self.stats.unwitnessed += 1;
        }
        let pos = key_position(key);
        let slot = (pos, Box::<str>::from(key));
        let previous = self.items.get(&slot).copied();
        match previous {
            Some(old) if old.version >= version => {
                self.stats.stale += 1;
                return Ok(Merge::Stale);
            }
            None => {
                if self.collected.get(key).is_some_and(|c| *c >= version) {
                    self.stats.stale += 1;
                    return Ok(Merge::Stale);
                }
                if self.items.len() as u64 >= self.limits.max_entries {
                    return Err(Reject::Full(self.items.len() as u64));
                }
            }
            Some(_) => {}
        }
        let meta = Meta {
            version,
            deleted,
            value_len: u32::try_from(value_len).unwrap_or(u32::MAX),
        };
        let leaf = &mut self.leaves[leaf_of(pos)];
        if let Some(old) = previous {
            leaf.fp = leaf.fp.wrapping_sub(item_hash(pos, &old.version));
            leaf.count -= 1;
            self.stats.bytes -= key.len() as u64 + u64::from(old.value_len);
            if old.deleted {
                self.stats.tombstones -= 1;
            }
        } else {
            self.stats.entries += 1;
        }
        leaf.fp = leaf.fp.wrapping_add(item_hash(pos, &version));
        leaf.count += 1;
        self.stats.bytes += key.len() as u64 + u64::from(meta.value_len);
        if deleted {
            self.stats.tombstones += 1;
            // A newer tombstone keeps the first one's age (as the reference).
            if !previous.is_some_and(|p| p.deleted) {
                self.tomb_since.insert(slot.1.clone(), now_unix);
                self.tomb_queue.push_back((now_unix, slot.1.clone()));
                // Keys deleted, revived and deleted again leave stale
                // queue entries: dropped once they outnumber the live ones,
                // so the queue stays within twice the tombstones held.
                if self.tomb_queue.len() > 2 * self.tomb_since.len() + 1024 {
                    let since = &self.tomb_since;
                    self.tomb_queue.retain(|(t, k)| since.get(k) == Some(t));
                }
            }
        } else if previous.is_some_and(|p| p.deleted) {
            self.tomb_since.remove(key);
        }
        let top = self.vector.entry(version.node).or_insert(0);
        *top = (*top).max(version.ts);
        self.items.insert(slot, meta);
        Ok(Merge::Accepted { previous })
    }

    /// Builds, signs and merges a local write of `key` (a full key in the
    /// owner's namespace): a value, or a tombstone when `value` is `None`.
    /// Returns the signed entry, to be persisted and then disseminated.
    ///
    /// # Errors
    /// An invalid or oversized key or value, an exhausted clock, a full map.
    pub fn write(
        &mut self,
        identity: &Identity,
        key: &str,
        value: Option<Bytes>,
        now_unix: u64,
    ) -> Result<StateEntry, WriteError> {
        let sub = key
            .strip_prefix(self.me.to_string().as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or(WriteError::InvalidKey("outside this node's namespace"))?;
        if sub.is_empty() {
            return Err(WriteError::InvalidKey("empty"));
        }
        if sub.chars().any(char::is_control) {
            return Err(WriteError::InvalidKey("control character"));
        }
        if key.len() > self.limits.max_key {
            return Err(WriteError::KeyTooLong {
                len: key.len(),
                max: self.limits.max_key,
            });
        }
        let deleted = value.is_none();
        let value = value.unwrap_or_default();
        if value.len() > self.limits.max_value {
            return Err(WriteError::ValueTooLong {
                len: value.len(),
                max: self.limits.max_value,
            });
        }
        if self.get(key).is_none() && self.items.len() as u64 >= self.limits.max_entries {
            return Err(WriteError::Full(self.items.len() as u64));
        }
        let mut probe = self.clock;
        let ts = probe.tick()?;
        let mut entry = StateEntry {
            key: key.to_owned(),
            value,
            lamport_ts: ts,
            deleted,
            ..Default::default()
        };
        entry.sign(identity);
        self.clock = probe;
        let version = Version {
            ts,
            node: self.me,
            tie: tie_of(&entry.signature),
        };
        // Our own entry with a fresh timestamp always wins.
        self.merge(key, version, deleted, entry.value.len(), now_unix)
            .map_err(|_| WriteError::Full(self.items.len() as u64))?;
        Ok(entry)
    }

    /// Removes tombstones first seen at least `ttl_secs` before `now_unix`
    /// and remembers their versions; returns the keys removed (for storage).
    pub fn collect(&mut self, now_unix: u64, ttl_secs: u64) -> Vec<Box<str>> {
        let mut out = Vec::new();
        while let Some((since, _)) = self.tomb_queue.front() {
            if now_unix.saturating_sub(*since) < ttl_secs {
                break;
            }
            let Some((since, key)) = self.tomb_queue.pop_front() else {
                break;
            };
            // Skip stale queue entries (revived, or re-deleted later).
            if self.tomb_since.get(&key) != Some(&since) {
                continue;
            }
            self.tomb_since.remove(&key);
            let pos = key_position(&key);
            let Some(meta) = self.items.remove(&(pos, key.clone())) else {
                continue;
            };
            let leaf = &mut self.leaves[leaf_of(pos)];
            leaf.fp = leaf.fp.wrapping_sub(item_hash(pos, &meta.version));
            leaf.count -= 1;
            self.stats.entries -= 1;
            self.stats.tombstones -= 1;
            self.stats.bytes -= key.len() as u64 + u64::from(meta.value_len);
            self.stats.collected += 1;
            if self.collected.insert(key.clone(), meta.version).is_none() {
                self.collected_order.push_back(key.clone());
            }
            while self.collected_order.len() > MAX_COLLECTED {
                if let Some(old) = self.collected_order.pop_front() {
                    self.collected.remove(&old);
                }
            }
            out.push(key);
        }
        out
    }

    /// The version vector: for each author, the highest timestamp held
    /// (type 7's `known`).
    pub fn version_vector(&self) -> BTreeMap<String, u64> {
        self.vector
            .iter()
            .map(|(id, ts)| (id.to_string(), *ts))
            .collect()
    }

    /// Keys whose entry is newer than `known` says for its author (a
    /// missing author counts as 0): what a type-8 answer to that type 7
    /// holds.
    pub fn newer_than<'a>(
        &'a self,
        known: &'a BTreeMap<String, u64>,
    ) -> impl Iterator<Item = &'a str> + 'a {
        let mut cache: HashMap<NodeId, u64> = HashMap::new();
        self.items.iter().filter_map(move |((_, key), meta)| {
            let floor = *cache.entry(meta.version.node).or_insert_with(|| {
                known
                    .get(&meta.version.node.to_string())
                    .copied()
                    .unwrap_or(0)
            });
            (meta.version.ts > floor).then_some(&**key)
        })
    }

    /// Keys that start with `prefix`, in key order (a scan of the map).
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .items
            .keys()
            .map(|(_, k)| &**k)
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Fingerprint and count of the positions in `lo..hi` (`hi` = `None`
    /// for the end of the space): the wrapping sum of the item hashes.
    /// Whole leaves are summed from the table, the edges scanned.
    pub fn fingerprint(&self, lo: u64, hi: Option<u64>) -> (u64, u64) {
        let leaf_size = 1u64 << (64 - LEAF_BITS);
        let first_full = lo.div_ceil(leaf_size);
        let end_leaf = hi.map_or(LEAVES as u64, |h| h / leaf_size);
        if first_full >= end_leaf {
            return self.scan_fingerprint(lo, hi);
        }
        let (mut fp, mut count) = self.scan_fingerprint(lo, Some(first_full * leaf_size));
        for leaf in &self.leaves[first_full as usize..end_leaf as usize] {
            fp = fp.wrapping_add(leaf.fp);
            count += leaf.count;
        }
        if let Some(h) = hi {
            let (tail_fp, tail_count) = self.scan_fingerprint(end_leaf * leaf_size, Some(h));
            fp = fp.wrapping_add(tail_fp);
            count += tail_count;
        }
        (fp, count)
    }

    /// [`Self::fingerprint`] by scanning the entries of the range.
    fn scan_fingerprint(&self, lo: u64, hi: Option<u64>) -> (u64, u64) {
        self.range(lo, hi)
            .fold((0, 0), |(fp, count), ((pos, _), meta)| {
                (fp.wrapping_add(item_hash(*pos, &meta.version)), count + 1)
            })
    }

    /// Entries whose position is in `lo..hi` (`None`: to the end), in
    /// position order.
    pub fn range(
        &self,
        lo: u64,
        hi: Option<u64>,
    ) -> impl Iterator<Item = (&(u64, Box<str>), &Meta)> + '_ {
        let start = (lo, Box::<str>::from(""));
        let it = self.items.range(start..);
        it.take_while(move |((pos, _), _)| hi.is_none_or(|h| *pos < h))
    }
}

impl StateMap {
    /// Entries after `cursor` (from the start when `None`), in position
    /// order: a resumable walk of the whole map.
    pub fn after(
        &self,
        cursor: Option<&(u64, Box<str>)>,
    ) -> impl Iterator<Item = (&(u64, Box<str>), &Meta)> + '_ {
        use std::ops::Bound;
        let start = match cursor {
            Some(c) => Bound::Excluded(c.clone()),
            None => Bound::Unbounded,
        };
        self.items.range((start, Bound::Unbounded))
    }
}

fn leaf_of(pos: u64) -> usize {
    (pos >> (64 - LEAF_BITS)) as usize
}

/// The hash of an item in the fingerprints: its position and version mixed
/// (splitmix64 steps; both ends compute the same).
fn item_hash(pos: u64, v: &Version) -> u64 {
    let id = v.node.as_bytes();
    let node = u64::from_be_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]]);
    let mut h = mix(pos ^ 0x6d69_6365_6c69_6f31);
    h = mix(h ^ v.ts);
    h = mix(h ^ node);
    mix(h ^ v.tie)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
