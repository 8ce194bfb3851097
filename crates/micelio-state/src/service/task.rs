//! The state task: owns the map, the member table and the sync sessions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use micelio_gossip::Gossip;
use micelio_identity::{Identity, NodeId};
use micelio_transport::{PeerEvent, PeerManager};
use micelio_wire::limits::{FEATURE_STATE_V1, REFERENCE_SYNC_COOLDOWN, REFERENCE_SYNC_MAX_ENTRIES};
use micelio_wire::proto::{StateEntry, StateReconcile, StateSyncRequest, StateUpdate};
use micelio_wire::{MsgType, WireMessage as _};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::intake::Inbound;
use super::outbound::Outgoing;
use super::{Change, Command, Entry, Origin, Shared, StateConfig, StateError, StateStats};
use crate::error::Reject;
use crate::map::{Merge, StateMap};
use crate::members::{Members, keys};
use crate::reconcile;
use crate::store::{Batch, StoreThread};
use crate::version::Version;

/// A session idle this long is forgotten (its messages were lost with a
/// link, for instance), so that a new one can be opened.
const SESSION_IDLE: Duration = Duration::from_secs(10);
/// Peers remembered for the type-7 cooldowns (both ways); the oldest is
/// forgotten first.
const COOLDOWN_CAP: usize = 4096;
/// Keys handed to outbound per step of a type-7 answer.
const ANSWER_STEP: usize = REFERENCE_SYNC_MAX_ENTRIES;
/// Period of the answer pump while type-7 answers are in progress.
const PUMP_EVERY: Duration = Duration::from_millis(20);
/// Type-7 answers in progress at once; more requests wait for the next
/// cooldown.
const MAX_ANSWERS: usize = 16;

/// One reconciliation session with a peer.
#[derive(Debug, Clone, Copy)]
struct Session {
    id: u64,
    last: Instant,
    pushed: u64,
}

#[derive(Debug, Default)]
struct PeerSync {
    speaks_state: bool,
    /// The session this node opened.
    mine: Option<Session>,
    /// The session the peer opened.
    theirs: Option<Session>,
    /// When the peer last opened one that was accepted.
    theirs_opened: Option<Instant>,
}

/// A type-7 answer in progress: a walk of the map from `cursor`.
#[derive(Debug)]
struct Answer {
    peer: NodeId,
    known: BTreeMap<String, u64>,
    cursor: Option<(u64, Box<str>)>,
}

/// A bounded map of per-peer times, oldest forgotten first.
#[derive(Debug, Default)]
struct Cooldowns {
    at: HashMap<NodeId, Instant>,
    order: VecDeque<NodeId>,
}

impl Cooldowns {
    fn ready(&self, peer: &NodeId, now: Instant, every: Duration) -> bool {
        self.at
            .get(peer)
            .is_none_or(|t| now.saturating_duration_since(*t) >= every)
    }

    fn mark(&mut self, peer: NodeId, now: Instant) {
        if self.at.insert(peer, now).is_none() {
            self.order.push_back(peer);
            while self.order.len() > COOLDOWN_CAP {
                if let Some(old) = self.order.pop_front() {
                    self.at.remove(&old);
                }
            }
        }
    }
}

pub(crate) struct StateTask {
    identity: Arc<Identity>,
    config: StateConfig,
    /// `node.tags` as configured (`config.node.tags` holds those in force).
    configured_tags: Vec<String>,
    /// Runtime tag changes.
    overrides: super::tags::Overrides,
    map: StateMap,
    members: Members,
    store: StoreThread,
    gossip: Gossip,
    peers: PeerManager,
    shared: Arc<Shared>,
    outbound: mpsc::Sender<Outgoing>,
    changes: broadcast::Sender<Change>,
    sync: HashMap<NodeId, PeerSync>,
    requested: Cooldowns,
    answered: Cooldowns,
    answers: VecDeque<Answer>,
    stats: StateStats,
    logged: std::collections::HashSet<&'static str>,
    heartbeat: u64,
    next_session: u64,
    rng: u64,
    stopping: bool,
    /// Whether this node's membership entries were gossiped since it last
    /// had no peer (see [`StateTask::announce`]).
    announced: bool,
    /// Whether this node's own hello offers reconciliation
    /// ([`FEATURE_STATE_V1`]); without it, it syncs as a reference node.
    complete: bool,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The map and member table rebuilt from the store at start.
pub(crate) struct Restored {
    map: StateMap,
    members: Members,
    /// This node's last heartbeat counter.
    heartbeat: u64,
}

/// Reads `store` back into a new map and member table, one entry at a
/// time (blocking: called on a blocking thread). Entries on this node's
/// own disk were verified when they arrived.
///
/// # Errors
/// The store could not be read.
pub(crate) fn restore(
    me: NodeId,
    config: &StateConfig,
    store: &mut dyn crate::store::StateStore,
) -> Result<Restored, micelio_transport::StoreError> {
    let mut map = StateMap::new(me, config.limits);
    let mut members = Members::new(me, config.liveness, Instant::now().into_std());
    let unix = unix_now();
    let mut heartbeat = 0;
    let mut refused = 0u64;
    let loaded = store.load(&mut |e| {
        let Ok(author) = e.node_id.parse::<NodeId>() else {
            refused += 1;
            return;
        };
        let version = Version::of(&e, author);
        if map
            .merge(&e.key, version, e.deleted, e.value.len(), unix)
            .is_err()
        {
            refused += 1;
            return;
        }
        if let Some(sub) = sub_key(&e.key) {
            members.observe(author, sub, &e.value, e.lamport_ts, e.deleted, None);
            if author == me && sub == keys::HEARTBEAT {
                heartbeat = parse_counter(&e.value);
            }
        }
    })?;
    map.raise_clock(loaded.clock);
    if loaded.entries > 0 || loaded.undecodable > 0 {
        info!(
            entries = map.len(),
            clock = map.clock().now(),
            undecodable = loaded.undecodable,
            refused,
            "state loaded"
        );
    }
    Ok(Restored {
        map,
        members,
        heartbeat,
    })
}

impl StateTask {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        identity: Arc<Identity>,
        config: StateConfig,
        restored: Restored,
        store: StoreThread,
        gossip: Gossip,
        peers: PeerManager,
        shared: Arc<Shared>,
        outbound: mpsc::Sender<Outgoing>,
        changes: broadcast::Sender<Change>,
        (configured_tags, overrides): (Vec<String>, super::tags::Overrides),
    ) -> Self {
        let me = *identity.node_id();
        let unix = unix_now();
        let Restored {
            map,
            members,
            heartbeat,
        } = restored;
        let complete = peers
            .config()
            .features
            .iter()
            .any(|f| f == FEATURE_STATE_V1);
        let rng = u64::from_le_bytes(me.as_bytes()[..8].try_into().unwrap_or([7; 8]))
            ^ u64::from(std::process::id())
            ^ unix;
        Self {
            identity,
            config,
            configured_tags,
            overrides,
            map,
            members,
            store,
            gossip,
            peers,
            shared,
            outbound,
            changes,
            sync: HashMap::new(),
            requested: Cooldowns::default(),
            answered: Cooldowns::default(),
            answers: VecDeque::new(),
            stats: StateStats::default(),
            logged: Default::default(),
            heartbeat,
            next_session: rng,
            rng,
            stopping: false,
            announced: false,
            complete,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut peer_events: mpsc::Receiver<PeerEvent>,
        cancel: CancellationToken,
    ) {
        self.publish_self().await;
        let mut beat = tokio::time::interval(
            self.config
                .liveness
                .heartbeat_interval
                .max(Duration::from_millis(10)),
        );
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // publish_self just wrote one.
        beat.reset();
        // Rounds are spread: each waits `sync_interval` × 0.5–1.5, so that
        // nodes started together (a fleet restarted at once) do not all
        // reconcile in the same instant.
        let sync = tokio::time::sleep(self.sync_delay());
        tokio::pin!(sync);
        let gc_every = if self.config.gc_interval.is_zero() {
            Duration::from_secs(86_400 * 365)
        } else {
            self.config.gc_interval
        };
        let mut gc = tokio::time::interval(gc_every);
        gc.reset();
        let mut pump = tokio::time::interval(PUMP_EVERY);
        // The storage thread is watched: if it dies, this task ends, and
        // `State::closed` reports the service failed.
        let store = self.store.clone();
        let store_gone = store.closed();
        tokio::pin!(store_gone);
        loop {
            let answering = !self.answers.is_empty();
            tokio::select! {
                _ = cancel.cancelled() => break,
                () = &mut store_gone => {
                    tracing::error!("the state storage thread stopped; stopping the state service");
                    return;
                }
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => break,
                },
                msg = inbound.recv() => match msg {
                    Some(msg) => self.inbound(msg).await,
                    None => break,
                },
                ev = peer_events.recv(), if !self.stopping => match ev {
                    Some(ev) => self.peer_event(ev).await,
                    None => break,
                },
                _ = beat.tick(), if !self.stopping => self.beat().await,
                () = &mut sync, if !self.stopping => {
                    self.sync_round();
                    let next = tokio::time::Instant::now() + self.sync_delay();
                    sync.as_mut().reset(next);
                }
                _ = gc.tick() => self.collect().await,
                _ = pump.tick(), if answering => self.pump(),
            }
        }
        if let Err(e) = self.store.close().await {
            warn!(error = %e, "the state store did not close cleanly");
        }
        debug!("state service stopped");
    }

    // ---- local calls ----

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Get { key, reply } => {
                let live = self.map.get(&key).is_some_and(|m| !m.deleted);
                if !live {
                    let _ = reply.send(Ok(None));
                    return;
                }
                self.read(vec![key.into()], move |mut v| {
                    let _ = reply.send(Ok(v.pop()));
                })
                .await;
            }
            Command::Scan {
                prefix,
                limit,
                reply,
            } => {
                let keys: Vec<Box<str>> = self
                    .map
                    .keys_with_prefix(&prefix)
                    .into_iter()
                    .filter(|k| self.map.get(k).is_some_and(|m| !m.deleted))
                    .take(limit)
                    .map(Box::from)
                    .collect();
                self.read(keys, move |mut v| {
                    v.sort_by(|a, b| a.key.cmp(&b.key));
                    let _ = reply.send(Ok(v));
                })
                .await;
            }
            Command::Write { sub, value, reply } => {
                let r = self.write(&sub, value, true).await;
                match r {
                    Ok(pending) => {
                        tokio::spawn(async move {
                            let _ = reply.send(pending.await);
                        });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Stats(reply) => {
                let mut s = self.stats.clone();
                let m = self.map.stats();
                s.entries = m.entries;
                s.tombstones = m.tombstones;
                s.bytes = m.bytes;
                s.stale = m.stale;
                s.collected = m.collected;
                s.clock = self.map.clock().now();
                let sh = &self.shared;
                s.pages_sent = sh.pages_sent.load(Ordering::Relaxed);
                s.entries_sent = sh.entries_sent.load(Ordering::Relaxed);
                s.page_bytes_sent = sh.page_bytes_sent.load(Ordering::Relaxed);
                s.pages_received = sh.pages_received.load(Ordering::Relaxed);
                s.page_bytes_received = sh.page_bytes_received.load(Ordering::Relaxed);
                s.send_dropped += sh.send_dropped.load(Ordering::Relaxed);
                s.gossip_refused = sh.gossip_refused.load(Ordering::Relaxed);
                s.store_errors += self.store.failures();
                for (label, n) in crate::Reject::LABELS.iter().zip(&sh.relay_rejected) {
                    let n = n.load(Ordering::Relaxed);
                    if n > 0 {
                        *s.rejected.entry(label).or_default() += n;
                    }
                }
                s.members = self.members.counts(Instant::now().into_std());
                s.members_evicted = self.members.evicted();
                let store = self.store.clone();
                tokio::spawn(async move {
                    s.disk_bytes = store.disk_bytes().await;
                    let _ = reply.send(s);
                });
            }
            Command::Tags(reply) => {
                let _ = reply.send(self.overrides.apply(&self.configured_tags));
            }
            Command::Tag { tag, add, reply } => {
                let _ = reply.send(self.change_tag(&tag, add).await);
            }
            Command::Members(reply) => {
                let _ = reply.send(self.members.list(Instant::now().into_std()));
            }
            Command::Shutdown(reply) => {
                if !self.stopping {
                    self.stopping = true;
                    let left = Bytes::from(unix_now().to_string());
                    if let Ok(pending) = self.write(keys::LEFT, Some(left), true).await
                        && let Err(e) = pending.await
                    {
                        warn!(error = %e, "could not record node/left");
                    }
                }
                let _ = reply.send(());
            }
        }
    }

    /// Adds or removes a runtime tag: saved, then published, then sent in
    /// the hello.
    async fn change_tag(
        &mut self,
        tag: &str,
        add: bool,
    ) -> Result<Option<super::TagSet>, StateError> {
        if add {
            crate::tags::check_tag(tag)?;
        }
        let Some(next) = self.overrides.change(&self.configured_tags, tag, add) else {
            return Ok(None);
        };
        let set = next.apply(&self.configured_tags);
        crate::tags::check_tags(&set.tags)?;
        if let Some(path) = self.config.tags_file.clone() {
            let saving = next.clone();
            tokio::task::spawn_blocking(move || saving.save(&path))
                .await
                .map_err(|_| StateError::Stopped)?
                .map_err(StateError::TagsFile)?;
        }
        self.overrides = next;
        self.config.node.tags.clone_from(&set.tags);
        let value = Bytes::from(crate::tags::join_list(&set.tags));
        self.write(keys::TAGS, Some(value), true).await?.await?;
        self.peers.set_tags(set.tags.clone());
        info!(tags = %crate::tags::join_list(&set.tags), "tags changed");
        Ok(Some(set))
    }

    /// Reads `keys` from storage and hands the entries to `done`, without
    /// waiting here.
    async fn read(&mut self, keys: Vec<Box<str>>, done: impl FnOnce(Vec<Entry>) + Send + 'static) {
        match self.store.get(keys).await {
            Ok(rx) => {
                tokio::spawn(async move {
                    let entries = rx.await.unwrap_or_default();
                    done(
                        entries
                            .iter()
                            .filter(|e| !e.deleted)
                            .filter_map(|e| Some(Entry::from_wire(e, e.node_id.parse().ok()?)))
                            .collect(),
                    );
                });
            }
            Err(_) => done(Vec::new()),
        }
    }

    /// Makes a local write: merged now, persisted (flushed if `durable`),
    /// then gossiped. The returned future resolves once it is on disk.
    async fn write(
        &mut self,
        sub: &str,
        value: Option<Bytes>,
        durable: bool,
    ) -> Result<
        impl std::future::Future<Output = Result<Entry, StateError>> + Send + 'static,
        StateError,
    > {
        let key = format!("{}/{sub}", self.map.me());
        let entry = self.map.write(&self.identity, &key, value, unix_now())?;
        let me = *self.map.me();
        self.observe(&entry, me, Origin::Local);
        let (done, rx) = oneshot::channel();
        let batch = Batch {
            puts: vec![entry.clone()],
            removes: vec![],
            clock: self.map.clock().now(),
        };
        if self.store.write(batch, durable, Some(done)).await.is_err() {
            self.stats.store_errors += 1;
        }
        self.stats.writes += 1;
        let gossip = self.gossip.clone();
        let shared = self.shared.clone();
        Ok(async move {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(StateError::Store(e)),
                Err(_) => return Err(StateError::Stopped),
            }
            debug!(key = %entry.key, ts = entry.lamport_ts, "state write acknowledged");
            let out = Entry::from_wire(&entry, me);
            let payload = StateUpdate { entry: Some(entry) }.encode_bytes();
            if gossip.try_originate(MsgType::StateUpdate, payload).is_err() {
                // Anti-entropy carries it instead.
                Shared::add(&shared.gossip_refused, 1);
            }
            Ok(out)
        })
    }

    /// Gossips this node's membership entries (`node/name`, `node/tags`,
    /// `node/addr`, `node/version`) again, as they are, when it gets a peer
    /// after having none: written at start, before any link, they reached
    /// nobody, and anti-entropy alone would carry them one hop per round.
    async fn announce(&mut self) {
        let keys: Vec<Box<str>> = [keys::NAME, keys::TAGS, keys::ADDR, keys::VERSION]
            .iter()
            .map(|sub| self.own_key(sub).into_boxed_str())
            .collect();
        let Ok(rx) = self.store.get(keys).await else {
            return;
        };
        let gossip = self.gossip.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            for entry in rx.await.unwrap_or_default() {
                let payload = StateUpdate { entry: Some(entry) }.encode_bytes();
                if gossip.try_originate(MsgType::StateUpdate, payload).is_err() {
                    Shared::add(&shared.gossip_refused, 1);
                }
            }
        });
    }

    fn own_key(&self, sub: &str) -> String {
        format!("{}/{sub}", self.map.me())
    }

    async fn publish_self(&mut self) {
        let node = self.config.node.clone();
        let items = [
            (keys::NAME, node.name),
            (keys::TAGS, node.tags.join(",")),
            (keys::ADDR, node.addr),
            (keys::VERSION, node.version),
        ];
        for (sub, value) in items {
            if self.current_value(sub).await.as_deref() == Some(value.as_bytes()) {
                continue;
            }
            match self.write(sub, Some(Bytes::from(value)), false).await {
                Ok(pending) => {
                    tokio::spawn(pending);
                }
                Err(e) => warn!(key = sub, error = %e, "cannot publish membership"),
            }
        }
        self.beat().await;
    }

    /// Our own stored value of `sub`, if live.
    async fn current_value(&mut self, sub: &str) -> Option<Bytes> {
        let key = format!("{}/{sub}", self.map.me());
        if self.map.get(&key).is_none_or(|m| m.deleted) {
            return None;
        }
        let rx = self.store.get(vec![key.into()]).await.ok()?;
        rx.await.ok()?.pop().map(|e| e.value)
    }

    async fn beat(&mut self) {
        self.heartbeat += 1;
        let value = Bytes::from(self.heartbeat.to_string());
        match self.write(keys::HEARTBEAT, Some(value), true).await {
            Ok(pending) => {
                tokio::spawn(pending);
            }
            Err(e) => {
                if self.logged.insert("heartbeat") {
                    warn!(error = %e, "cannot write the heartbeat");
                }
            }
        }
    }

    async fn collect(&mut self) {
        let removed = self
            .map
            .collect(unix_now(), self.config.tombstone_ttl.as_secs());
        if removed.is_empty() {
            return;
        }
        debug!(count = removed.len(), "tombstones collected");
        let batch = Batch {
            puts: vec![],
            removes: removed,
            clock: self.map.clock().now(),
        };
        if self.store.write(batch, false, None).await.is_err() {
            self.stats.store_errors += 1;
        }
    }

    // ---- what arrives ----

    fn observe(&mut self, e: &StateEntry, author: NodeId, origin: Origin) {
        if origin != Origin::Local {
            debug!(key = %e.key, ts = e.lamport_ts, origin = ?origin, "state entry accepted");
        }
        if let Some(sub) = sub_key(&e.key) {
            self.members.observe(
                author,
                sub,
                &e.value,
                e.lamport_ts,
                e.deleted,
                Some(Instant::now().into_std()),
            );
        }
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(Change {
                entry: Entry::from_wire(e, author),
                origin,
            });
        }
    }

    fn reject(&mut self, r: &Reject) {
        let label = r.label();
        *self.stats.rejected.entry(label).or_default() += 1;
        if self.logged.insert(label) {
            warn!(reason = label, error = %r, "refused a state entry (logged once per reason; counted in /stats)");
        }
    }

    fn bad(&mut self, reason: &'static str) {
        *self.stats.bad_messages.entry(reason).or_default() += 1;
        if self.logged.insert(reason) {
            warn!(
                reason,
                "refused a state sync message (logged once per reason; counted in /stats)"
            );
        }
    }

    async fn inbound(&mut self, msg: Inbound) {
        match msg {
            Inbound::Entries {
                source,
                entries,
                rejected,
            } => {
                for r in &rejected {
                    self.reject(r);
                }
                let now = unix_now();
                let mut puts = Vec::new();
                for (e, v) in entries {
                    match self.map.merge(&e.key, v, e.deleted, e.value.len(), now) {
                        Ok(Merge::Accepted { .. }) => {
                            match source {
                                Origin::Sync => self.stats.accepted_sync += 1,
                                _ => self.stats.accepted_gossip += 1,
                            }
                            self.observe(&e, v.node, source);
                            puts.push(e);
                        }
                        Ok(Merge::Stale) => {}
                        Err(r) => self.reject(&r),
                    }
                }
                if !puts.is_empty() {
                    let batch = Batch {
                        puts,
                        removes: vec![],
                        clock: self.map.clock().now(),
                    };
                    if self.store.write(batch, false, None).await.is_err() {
                        self.stats.store_errors += 1;
                    }
                }
            }
            Inbound::SyncRequest { peer, known } => self.on_request(peer, known),
            Inbound::Reconcile { peer, msg } => self.on_reconcile(peer, msg),
            Inbound::Bad { reason } => self.bad(reason),
        }
    }

    async fn peer_event(&mut self, ev: PeerEvent) {
        match ev {
            PeerEvent::Up(p) => {
                let id = p.node_id;
                if !self.announced {
                    self.announced = true;
                    self.announce().await;
                }
                let speaks = p.hello.speaks(FEATURE_STATE_V1);
                self.sync.entry(id).or_default().speaks_state = speaks;
                // Between two micelio nodes one session does it both ways:
                // the one with the lower NodeId opens it on connect, so
                // that they do not both push everything at once.
                if !(speaks && self.complete) || self.map.me() < &id {
                    self.sync_with(id);
                }
            }
            PeerEvent::Down { node_id, .. } => {
                self.sync.remove(&node_id);
                self.answers.retain(|a| a.peer != node_id);
                if self.sync.is_empty() {
                    self.announced = false;
                }
            }
            _ => {}
        }
    }

    // ---- anti-entropy ----

    fn random(&mut self) -> u64 {
        // xorshift64*: only to spread peer choices and session ids.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The wait before the next anti-entropy round: `sync_interval` times a
    /// random factor in 0.5–1.5 (at least 10 ms).
    fn sync_delay(&mut self) -> Duration {
        let every = self.config.sync_interval.max(Duration::from_millis(10));
        let permille = 500 + self.random() % 1001;
        every * u32::try_from(permille).unwrap_or(1000) / 1000
    }

    /// One round: a random connected peer (the peer table is refreshed from
    /// the manager, in case an event was missed), and session expiry.
    fn sync_round(&mut self) {
        let now = Instant::now();
        let connected = self.peers.peers();
        self.sync
            .retain(|id, _| connected.iter().any(|p| p.node_id == *id));
        for p in &connected {
            self.sync.entry(p.node_id).or_insert_with(|| PeerSync {
                speaks_state: p.hello.speaks(FEATURE_STATE_V1),
                ..Default::default()
            });
        }
        for s in self.sync.values_mut() {
            let idle = |x: &Option<Session>| {
                x.is_some_and(|s| now.saturating_duration_since(s.last) > SESSION_IDLE)
            };
            if idle(&s.mine) {
                s.mine = None;
            }
            if idle(&s.theirs) {
                s.theirs = None;
            }
        }
        if connected.is_empty() {
            return;
        }
        let pick = (self.random() % connected.len() as u64) as usize;
        self.sync_with(connected[pick].node_id);
    }

    /// Opens a session with a micelio peer, or sends a type 7 to a
    /// reference peer (at most once per 30 s).
    fn sync_with(&mut self, peer: NodeId) {
        let now = Instant::now();
        let Some(s) = self.sync.get(&peer) else {
            return;
        };
        if s.speaks_state && self.complete {
            // One session per pair at a time, whoever opened it.
            if s.mine.is_some() || s.theirs.is_some() {
                return;
            }
            self.next_session = self.next_session.wrapping_add(self.random() | 1);
            let id = self.next_session;
            let msg = StateReconcile {
                session: id,
                opened_by_sender: true,
                ranges: reconcile::open(&self.map),
                wants: vec![],
            };
            if self.queue(
                peer,
                vec![],
                Some((MsgType::StateReconcile, msg.encode_bytes())),
            ) {
                if let Some(s) = self.sync.get_mut(&peer) {
                    s.mine = Some(Session {
                        id,
                        last: now,
                        pushed: 0,
                    });
                }
                self.stats.sessions_opened += 1;
            }
        } else {
            if !self.requested.ready(&peer, now, REFERENCE_SYNC_COOLDOWN) {
                return;
            }
            let req = StateSyncRequest {
                known: self.map.version_vector(),
            };
            if self.queue(
                peer,
                vec![],
                Some((MsgType::StateSyncRequest, req.encode_bytes())),
            ) {
                self.requested.mark(peer, now);
                self.stats.requests_sent += 1;
            }
        }
    }

    /// Hands a job to outbound; false (counted) when its queue is full.
    fn queue(&mut self, peer: NodeId, push: Vec<Box<str>>, then: Option<(MsgType, Bytes)>) -> bool {
        match self.outbound.try_send(Outgoing { peer, push, then }) {
            Ok(()) => true,
            Err(_) => {
                self.stats.send_dropped += 1;
                false
            }
        }
    }

    /// A type-7 request: answered at most once per peer per 30 s (as the
    /// reference does), with every entry newer than its vector, in pages.
    fn on_request(&mut self, peer: NodeId, known: BTreeMap<String, u64>) {
        let now = Instant::now();
        if !self.answered.ready(&peer, now, REFERENCE_SYNC_COOLDOWN)
            || self.answers.len() >= MAX_ANSWERS
            || self.answers.iter().any(|a| a.peer == peer)
        {
            self.stats.requests_throttled += 1;
            return;
        }
        self.answered.mark(peer, now);
        self.stats.requests_answered += 1;
        self.answers.push_back(Answer {
            peer,
            known,
            cursor: None,
        });
        self.pump();
    }

    /// Moves each type-7 answer in progress one step along the map.
    fn pump(&mut self) {
        let mut i = 0;
        while i < self.answers.len() {
            if self.outbound.capacity() == 0 {
                return;
            }
            let a = &mut self.answers[i];
            let mut keys = Vec::new();
            let mut last = None;
            let mut floors: HashMap<NodeId, u64> = HashMap::new();
            for (slot, meta) in self.map.after(a.cursor.as_ref()).take(ANSWER_STEP * 4) {
                last = Some(slot.clone());
                let floor = *floors.entry(meta.version.node).or_insert_with(|| {
                    a.known
                        .get(&meta.version.node.to_string())
                        .copied()
                        .unwrap_or(0)
                });
                if meta.version.ts > floor {
                    keys.push(slot.1.clone());
                    if keys.len() >= ANSWER_STEP {
                        break;
                    }
                }
            }
            let done = last.is_none();
            a.cursor = last;
            let peer = a.peer;
            if done {
                self.answers.remove(i);
                continue;
            }
            if !keys.is_empty() && !self.queue(peer, keys, None) {
                return;
            }
            i += 1;
        }
    }

    /// A type-16 message.
    fn on_reconcile(&mut self, peer: NodeId, msg: StateReconcile) {
        if !self.sync.get(&peer).is_some_and(|s| s.speaks_state) {
            // Point-to-point extension traffic only between peers whose
            // hellos both offer it.
            self.bad("reconcile_not_offered");
            return;
        }
        if let Err(e) = reconcile::check(&msg.ranges, &msg.wants) {
            debug!(peer = %peer.short(12), error = %e, "malformed reconciliation");
            self.bad("reconcile_malformed");
            // The session it belongs to ends here.
            if let Some(s) = self.sync.get_mut(&peer) {
                let slot = if msg.opened_by_sender {
                    &mut s.theirs
                } else {
                    &mut s.mine
                };
                if slot.is_some_and(|x| x.id == msg.session) {
                    *slot = None;
                }
            }
            return;
        }
        let now = Instant::now();
        let min_open = (self.config.sync_interval / 2).max(Duration::from_millis(500));
        let cap = self.map.len() as u64 + 10_000;
        if !self.complete {
            // This node's hello did not offer reconciliation.
            self.bad("reconcile_unexpected");
            return;
        }
        let me_first = self.map.me() < &peer;
        let s = self.sync.entry(peer).or_default();
        let session = if msg.opened_by_sender {
            if s.theirs.map(|x| x.id) != Some(msg.session) {
                // Both opened at once: the lower NodeId's session goes on.
                let collides = s.mine.is_some();
                if collides && !me_first {
                    s.mine = None;
                }
                if (collides && me_first)
                    || s.theirs_opened
                        .is_some_and(|t| now.saturating_duration_since(t) < min_open)
                {
                    self.stats.sessions_throttled += 1;
                    // "Not now": an empty answer ends the opener's session.
                    let no = StateReconcile {
                        session: msg.session,
                        opened_by_sender: false,
                        ranges: vec![],
                        wants: vec![],
                    };
                    self.queue(
                        peer,
                        vec![],
                        Some((MsgType::StateReconcile, no.encode_bytes())),
                    );
                    return;
                }
                s.theirs = Some(Session {
                    id: msg.session,
                    last: now,
                    pushed: 0,
                });
                s.theirs_opened = Some(now);
                self.stats.sessions_accepted += 1;
            }
            &mut s.theirs
        } else {
            if s.mine.map(|x| x.id) != Some(msg.session) {
                // An empty answer to a session this node gave up (a
                // collision, an idle timeout) is expected; anything else
                // is not.
                if !msg.ranges.is_empty() || !msg.wants.is_empty() {
                    self.bad("reconcile_unknown_session");
                }
                return;
            }
            &mut s.mine
        };
        let Some(sess) = session.as_mut() else {
            return;
        };
        sess.last = now;
        if sess.pushed > cap {
            *session = None;
            self.bad("reconcile_over_budget");
            return;
        }
        let ans = reconcile::answer(&self.map, &msg.ranges, &msg.wants);
        sess.pushed += ans.push.len() as u64;
        let ended = msg.ranges.is_empty();
        // A message without ranges is the last of a session: its receiver
        // answers it with pages only.
        let last_word = ans.ranges.is_empty();
        if ended || last_word {
            *session = None;
            self.stats.sessions_completed += 1;
        }
        let then = (!ended).then(|| {
            let reply = StateReconcile {
                session: msg.session,
                opened_by_sender: !msg.opened_by_sender,
                ranges: ans.ranges,
                wants: ans.wants,
            };
            (MsgType::StateReconcile, reply.encode_bytes())
        });
        if (!ans.push.is_empty() || then.is_some())
            && !self.queue(peer, ans.push, then)
            && let Some(s) = self.sync.get_mut(&peer)
        {
            {
                if msg.opened_by_sender {
                    s.theirs = None;
                } else {
                    s.mine = None;
                }
            }
        }
    }
}

/// The key without its `<node_id>/` prefix.
fn sub_key(key: &str) -> Option<&str> {
    key.split_once('/').map(|(_, rest)| rest)
}

fn parse_counter(v: &[u8]) -> u64 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}
