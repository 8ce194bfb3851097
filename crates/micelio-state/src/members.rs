//! Mesh membership derived from the state map: every node publishes
//! `node/name`, `node/tags`, `node/addr`, `node/version` and a heartbeat
//! counter `node/heartbeat` (one key, overwritten) in its namespace, and
//! `node/left` when it stops cleanly. Liveness comes from when this node
//! last saw each member's heartbeat advance, so it covers members that have
//! no direct connection to it. Sans-IO: time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use micelio_identity::NodeId;

/// The sub-keys of membership, under `<node_id>/`.
pub mod keys {
    /// The node's name.
    pub const NAME: &str = "node/name";
    /// Its tags, comma separated.
    pub const TAGS: &str = "node/tags";
    /// Its advertised mesh address.
    pub const ADDR: &str = "node/addr";
    /// Its software version.
    pub const VERSION: &str = "node/version";
    /// Its heartbeat counter (decimal), rewritten every heartbeat interval.
    pub const HEARTBEAT: &str = "node/heartbeat";
    /// Written (Unix seconds) when the node stops cleanly.
    pub const LEFT: &str = "node/left";
}

/// Most members tracked; beyond it the member seen least recently is
/// forgotten (a stranger's identity costs nothing to make).
pub const MAX_MEMBERS: usize = 10_000;

/// How alive a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Liveness {
    /// Its heartbeat advanced within `suspect_after`.
    Alive,
    /// Its heartbeat has not advanced for `suspect_after`.
    Suspect,
    /// Its heartbeat has not advanced for `dead_after`.
    Dead,
    /// It said it stopped (`node/left` newer than its last heartbeat).
    Left,
}

impl Liveness {
    /// A lowercase label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Dead => "dead",
            Self::Left => "left",
        }
    }
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Liveness thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// How often a node writes its heartbeat.
    pub heartbeat_interval: Duration,
    /// Silence after which a member is suspect.
    pub suspect_after: Duration,
    /// Silence after which a member is dead.
    pub dead_after: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            suspect_after: Duration::from_secs(15),
            dead_after: Duration::from_secs(30),
        }
    }
}

/// A member as the map describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its NodeId.
    pub node_id: NodeId,
    /// `node/name` (empty if not published).
    pub name: String,
    /// `node/tags`, split at commas.
    pub tags: Vec<String>,
    /// `node/addr`.
    pub addr: String,
    /// `node/version`.
    pub version: String,
    /// The last heartbeat counter seen.
    pub heartbeat: u64,
    /// How long ago this node saw the heartbeat advance (`None`: never
    /// since it started, the member is known from storage only).
    pub last_heartbeat: Option<Duration>,
    /// Its liveness.
    pub liveness: Liveness,
    /// Whether this is the local node.
    pub is_self: bool,
}

#[derive(Debug, Clone, Default)]
struct Record {
    name: String,
    tags: Vec<String>,
    addr: String,
    version: String,
    heartbeat: u64,
    heartbeat_ts: u64,
    left_ts: u64,
    /// When the heartbeat last advanced here.
    beat_at: Option<Instant>,
    /// When the record was made or touched (for eviction).
    touched: Option<Instant>,
}

/// The member table.
#[derive(Debug)]
pub struct Members {
    me: NodeId,
    config: LivenessConfig,
    started: Instant,
    records: HashMap<NodeId, Record>,
    evicted: u64,
}

impl Members {
    /// An empty table for node `me`, started at `now`.
    pub fn new(me: NodeId, config: LivenessConfig, now: Instant) -> Self {
        Self {
            me,
            config,
            started: now,
            records: HashMap::new(),
            evicted: 0,
        }
    }

    /// Members forgotten because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Feeds an accepted entry of `author`: `sub` is the key without the
    /// `<node_id>/` prefix; `seen` is when it arrived, `None` for entries
    /// read from storage at start (they say nothing about liveness now).
    /// Returns whether the entry was a membership key.
    pub fn observe(
        &mut self,
        author: NodeId,
        sub: &str,
        value: &[u8],
        ts: u64,
        deleted: bool,
        seen: Option<Instant>,
    ) -> bool {
        let now = seen.unwrap_or(self.started);
        if !sub.starts_with("node/") {
            return false;
        }
        if !self.records.contains_key(&author) && self.records.len() >= MAX_MEMBERS {
            self.evict_one();
        }
        let r = self.records.entry(author).or_default();
        r.touched = Some(now);
        let text = if deleted {
            String::new()
        } else {
            String::from_utf8_lossy(value).into_owned()
        };
        match sub {
            keys::NAME => r.name = text,
            keys::TAGS => {
                r.tags = text
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            keys::ADDR => r.addr = text,
            keys::VERSION => r.version = text,
            keys::HEARTBEAT if ts > r.heartbeat_ts => {
                r.heartbeat_ts = ts;
                r.heartbeat = text.trim().parse().unwrap_or(0);
                r.beat_at = seen.or(r.beat_at);
            }
            keys::LEFT if !deleted => r.left_ts = r.left_ts.max(ts),
            _ => {}
        }
        true
    }

    /// Forgets a member whose entries were all collected.
    pub fn forget(&mut self, id: &NodeId) {
        self.records.remove(id);
    }

    fn evict_one(&mut self) {
        let oldest = self
            .records
            .iter()
            .filter(|(id, _)| **id != self.me)
            .min_by_key(|(_, r)| r.beat_at.or(r.touched))
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.records.remove(&id);
            self.evicted += 1;
        }
    }

    fn liveness(&self, id: &NodeId, r: &Record, now: Instant) -> Liveness {
        if *id == self.me {
            return Liveness::Alive;
        }
        if r.left_ts > r.heartbeat_ts {
            return Liveness::Left;
        }
        // Known from storage only: counted from our own start.
        let since = r.beat_at.unwrap_or(self.started);
        let silent = now.saturating_duration_since(since);
        if silent >= self.config.dead_after {
            Liveness::Dead
        } else if silent >= self.config.suspect_after {
            Liveness::Suspect
        } else {
            Liveness::Alive
        }
    }

    /// The members, sorted by name then NodeId.
    pub fn list(&self, now: Instant) -> Vec<Member> {
        let mut out: Vec<Member> = self
            .records
            .iter()
            .map(|(id, r)| Member {
                node_id: *id,
                name: r.name.clone(),
                tags: r.tags.clone(),
                addr: r.addr.clone(),
                version: r.version.clone(),
                heartbeat: r.heartbeat,
                last_heartbeat: r.beat_at.map(|t| now.saturating_duration_since(t)),
                liveness: self.liveness(id, r, now),
                is_self: *id == self.me,
            })
            .collect();
        out.sort_by(|a, b| (&a.name, a.node_id).cmp(&(&b.name, b.node_id)));
        out
    }

    /// How many members are in each state: alive, suspect, dead, left.
    pub fn counts(&self, now: Instant) -> [u64; 4] {
        let mut c = [0u64; 4];
        for (id, r) in &self.records {
            c[self.liveness(id, r, now) as usize] += 1;
        }
        c
    }

    /// Liveness of each member, for change detection.
    pub fn snapshot(&self, now: Instant) -> HashMap<NodeId, Liveness> {
        self.records
            .iter()
            .map(|(id, r)| (*id, self.liveness(id, r, now)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    #[test]
    fn heartbeats_drive_liveness_and_left_wins_until_the_next_beat() {
        let t0 = Instant::now();
        let cfg = LivenessConfig::default();
        let mut m = Members::new(id(0), cfg, t0);
        m.observe(id(1), keys::NAME, b"one", 1, false, Some(t0));
        m.observe(id(1), keys::HEARTBEAT, b"1", 2, false, Some(t0));
        assert!(!m.observe(id(1), "app/x", b"", 3, false, Some(t0)));
        let at = |m: &Members, s: u64| {
            m.list(t0 + Duration::from_secs(s))
                .into_iter()
                .find(|x| x.node_id == id(1))
                .unwrap()
                .liveness
        };
        assert_eq!(at(&m, 14), Liveness::Alive);
        assert_eq!(at(&m, 15), Liveness::Suspect);
        assert_eq!(at(&m, 30), Liveness::Dead);
        // A beat brings it back.
        m.observe(
            id(1),
            keys::HEARTBEAT,
            b"2",
            5,
            false,
            Some(t0 + Duration::from_secs(31)),
        );
        assert_eq!(at(&m, 32), Liveness::Alive);
        // A clean stop shows at once.
        m.observe(
            id(1),
            keys::LEFT,
            b"100",
            6,
            false,
            Some(t0 + Duration::from_secs(33)),
        );
        assert_eq!(at(&m, 33), Liveness::Left);
        // An older heartbeat arriving late changes nothing.
        m.observe(
            id(1),
            keys::HEARTBEAT,
            b"1",
            4,
            false,
            Some(t0 + Duration::from_secs(34)),
        );
        assert_eq!(at(&m, 34), Liveness::Left);
        // A restart's heartbeat is newer than the left mark.
        m.observe(
            id(1),
            keys::HEARTBEAT,
            b"3",
            7,
            false,
            Some(t0 + Duration::from_secs(40)),
        );
        assert_eq!(at(&m, 40), Liveness::Alive);
        assert_eq!(m.list(t0)[0].name, "one");
    }

    #[test]
    fn members_known_from_storage_age_from_our_start_and_we_are_alive() {
        let t0 = Instant::now();
        let mut m = Members::new(id(0), LivenessConfig::default(), t0);
        m.observe(id(0), keys::HEARTBEAT, b"9", 9, false, None);
        m.observe(id(2), keys::HEARTBEAT, b"9", 9, false, None);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(m.counts(later), [1, 0, 1, 0]);
        let me = m.list(later).into_iter().find(|x| x.is_self).unwrap();
        assert_eq!(me.liveness, Liveness::Alive);
    }

    #[test]
    fn the_table_is_capped_and_forgets_the_quietest() {
        let t0 = Instant::now();
        let mut m = Members::new(id(0), LivenessConfig::default(), t0);
        for i in 0..MAX_MEMBERS as u32 + 5 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&(i + 1).to_be_bytes());
            let t = t0 + Duration::from_millis(u64::from(i));
            m.observe(
                NodeId::from_bytes(b),
                keys::HEARTBEAT,
                b"1",
                1,
                false,
                Some(t),
            );
        }
        assert_eq!(m.list(t0).len(), MAX_MEMBERS);
        assert_eq!(m.evicted(), 5);
    }
}
