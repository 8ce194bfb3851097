//! The state service: the tasks that run a [`StateMap`] over gossip and the
//! peer connections, behind a cheap-clone [`State`] handle.
//!
//! Three tasks and a thread:
//! - **intake** reads types 6, 7, 8 and 16 from gossip, checks the
//!   envelopes of the point-to-point ones against the connected peer's key,
//!   verifies every entry (large pages off the runtime, in
//!   `spawn_blocking`), and hands the verified results on in arrival order;
//! - **the state task** owns the map, the member table and the sync
//!   sessions: it merges, answers local calls, writes heartbeats, opens
//!   syncs and answers them, collects tombstones;
//! - **outbound** reads the entries to push from storage, cuts them into
//!   type-8 pages, signs and queues them, then the message that follows;
//! - **the storage thread** owns the [`StateStore`](crate::store::StateStore).
//!
//! Every queue between them is bounded.

mod intake;
mod outbound;
mod tags;
mod task;
pub use tags::TagSet;
pub(crate) use task::unix_now;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use micelio_gossip::Gossip;
use micelio_identity::{Identity, NodeId};
use micelio_transport::{PeerManager, StoreError, TaskExit, TaskGroup};
use micelio_wire::MsgType;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::error::{Reject, WriteError};
use crate::members::{LivenessConfig, Member};
use crate::store::{StateStore, StoreThread};
use crate::version::Limits;

/// Default period of the anti-entropy round (one peer per round).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Default period of tombstone collection.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Change events buffered per subscriber; a slower one misses events (it
/// is told how many, [`broadcast::error::RecvError::Lagged`]).
pub const CHANGE_QUEUE: usize = 4096;
/// Commands queued to the state task.
const COMMAND_QUEUE: usize = 1024;

/// Configuration of the state service.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateConfig {
    /// Key, value and entry limits.
    pub limits: Limits,
    /// Heartbeat interval and liveness thresholds.
    pub liveness: LivenessConfig,
    /// Period of the anti-entropy round: each round syncs with one
    /// connected peer (and every peer is synced when it connects).
    pub sync_interval: Duration,
    /// Age at which a tombstone is collected.
    pub tombstone_ttl: Duration,
    /// Period of tombstone collection (zero: never).
    pub gc_interval: Duration,
    /// What this node publishes about itself under `node/…` (its `tags`
    /// are the configured ones; runtime changes apply on top).
    pub node: NodeInfo,
    /// Where runtime tag changes ([`State::add_tag`]) are kept across
    /// restarts; `None`: they last until the node stops.
    pub tags_file: Option<std::path::PathBuf>,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            liveness: LivenessConfig::default(),
            sync_interval: DEFAULT_SYNC_INTERVAL,
            tombstone_ttl: micelio_wire::limits::DEFAULT_TOMBSTONE_GC_AGE,
            gc_interval: DEFAULT_GC_INTERVAL,
            node: NodeInfo::default(),
            tags_file: None,
        }
    }
}

/// What a node publishes about itself (membership keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `node/name`.
    pub name: String,
    /// `node/tags` (written comma separated).
    pub tags: Vec<String>,
    /// `node/addr`: the mesh address others can dial.
    pub addr: String,
    /// `node/version`.
    pub version: String,
}

/// A live entry or a tombstone, as the API hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The full key, `<node_id>/…`.
    pub key: String,
    /// The value (empty for a tombstone).
    pub value: Bytes,
    /// The author.
    pub author: NodeId,
    /// Its Lamport timestamp.
    pub ts: u64,
    /// Whether it is a tombstone.
    pub deleted: bool,
}

impl Entry {
    fn from_wire(e: &micelio_wire::proto::StateEntry, author: NodeId) -> Self {
        Self {
            key: e.key.clone(),
            value: e.value.clone(),
            author,
            ts: e.lamport_ts,
            deleted: e.deleted,
        }
    }

    /// The key without its `<node_id>/` prefix.
    pub fn sub_key(&self) -> &str {
        self.key
            .split_once('/')
            .map_or(self.key.as_str(), |(_, rest)| rest)
    }
}

/// Where an accepted entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Written on this node.
    Local,
    /// Received by gossip (type 6).
    Gossip,
    /// Received in a sync page (type 8).
    Sync,
}

/// A change of the map: an entry that won.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The new entry of its key (a tombstone for a delete).
    pub entry: Entry,
    /// Where it came from.
    pub origin: Origin,
}

/// Why a call on [`State`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The service has stopped.
    #[error("the state service stopped")]
    Stopped,
    /// The write was refused.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Storage failed; the write was applied in memory but may not survive
    /// a restart.
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    /// A tag is not valid, or the node would have too many.
    #[error(transparent)]
    Tag(#[from] crate::tags::TagError),
    /// The runtime tags could not be saved (nothing changed).
    #[error("{0}")]
    TagsFile(String),
}

/// Counters of the state service (`/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateStats {
    /// Entries held, tombstones included.
    pub entries: u64,
    /// Tombstones held.
    pub tombstones: u64,
    /// Bytes of keys and values held.
    pub bytes: u64,
    /// Bytes of the store on disk, if known.
    pub disk_bytes: Option<u64>,
    /// The Lamport clock.
    pub clock: u64,
    /// Local writes acknowledged.
    pub writes: u64,
    /// Entries accepted from gossip (type 6).
    pub accepted_gossip: u64,
    /// Entries accepted from sync pages (type 8).
    pub accepted_sync: u64,
    /// Entries that arrived stale (duplicates or older versions).
    pub stale: u64,
    /// Tombstones collected.
    pub collected: u64,
    /// Refused entries by reason ([`crate::Reject::label`]).
    pub rejected: BTreeMap<&'static str, u64>,
    /// Refused sync messages (types 7, 8, 16) by reason.
    pub bad_messages: BTreeMap<&'static str, u64>,
    /// Reconciliation sessions this node opened.
    pub sessions_opened: u64,
    /// Sessions opened by peers and accepted.
    pub sessions_accepted: u64,
    /// Sessions that ran to their end (either side).
    pub sessions_completed: u64,
    /// Session openings refused (too soon after the last one).
    pub sessions_throttled: u64,
    /// Type-7 requests sent (to reference peers).
    pub requests_sent: u64,
    /// Type-7 requests answered.
    pub requests_answered: u64,
    /// Type-7 requests ignored within the 30 s cooldown.
    pub requests_throttled: u64,
    /// Type-8 pages sent and their entries.
    pub pages_sent: u64,
    /// Entries sent in pages.
    pub entries_sent: u64,
    /// Bytes of the pages sent (payloads).
    pub page_bytes_sent: u64,
    /// Type-8 pages received.
    pub pages_received: u64,
    /// Bytes of the pages received (payloads).
    pub page_bytes_received: u64,
    /// Sync messages this node could not queue (a peer's send queue or
    /// the outbound queue was full).
    pub send_dropped: u64,
    /// Local writes gossip could not queue (its paced queue was full):
    /// anti-entropy carries them instead.
    pub gossip_refused: u64,
    /// Storage failures.
    pub store_errors: u64,
    /// Members by liveness: alive, suspect, dead, left.
    pub members: [u64; 4],
    /// Members forgotten because the table held
    /// [`MAX_MEMBERS`](crate::members::MAX_MEMBERS) (the longest silent
    /// first).
    pub members_evicted: u64,
}

/// Counters shared with the intake and outbound tasks.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) pages_sent: AtomicU64,
    pub(crate) entries_sent: AtomicU64,
    pub(crate) page_bytes_sent: AtomicU64,
    pub(crate) pages_received: AtomicU64,
    pub(crate) page_bytes_received: AtomicU64,
    pub(crate) send_dropped: AtomicU64,
    pub(crate) gossip_refused: AtomicU64,
    /// Type-6 entries the gossip validator refused, by
    /// [`Reject::LABELS`](crate::Reject::LABELS) position.
    pub(crate) relay_rejected: [AtomicU64; Reject::LABELS.len()],
    /// Whether each of those reasons has been logged.
    relay_logged: [std::sync::atomic::AtomicBool; Reject::LABELS.len()],
}

impl Shared {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts an entry refused before relay, and logs its reason once.
    pub(crate) fn relay_reject(&self, r: &Reject) {
        let label = r.label();
        let Some(i) = Reject::LABELS.iter().position(|l| *l == label) else {
            return;
        };
        self.relay_rejected[i].fetch_add(1, Ordering::Relaxed);
        if !self.relay_logged[i].swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason = label,
                error = %r,
                "refused a state entry before relaying it (logged once per reason; counted in /stats)"
            );
        }
    }
}

pub(crate) enum Command {
    Get {
        key: String,
        reply: oneshot::Sender<Result<Option<Entry>, StateError>>,
    },
    Scan {
        prefix: String,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Entry>, StateError>>,
    },
    Write {
        sub: String,
        value: Option<Bytes>,
        reply: oneshot::Sender<Result<Entry, StateError>>,
    },
    Stats(oneshot::Sender<StateStats>),
    Tags(oneshot::Sender<TagSet>),
    Tag {
        tag: String,
        add: bool,
        reply: oneshot::Sender<Result<Option<TagSet>, StateError>>,
    },
    Members(oneshot::Sender<Vec<Member>>),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to a running state service. Clones share it.
///
/// ```no_run
/// # async fn demo(state: micelio_state::State) -> Result<(), micelio_state::StateError> {
/// let entry = state.set("color", "blue").await?; // <node_id>/color, durable
/// assert_eq!(state.get(&entry.key).await?.unwrap().value, "blue");
/// let mut changes = state.subscribe();
/// while let Ok(change) = changes.recv().await {
///     println!("{} = {:?}", change.entry.key, change.entry.value);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "dropping the handle does not stop the service; call shutdown()"]
pub struct State {
    tx: mpsc::Sender<Command>,
    changes: broadcast::Sender<Change>,
    node_id: NodeId,
    limits: Limits,
    tasks: TaskGroup,
}

impl State {
    /// Loads `store`, then starts the service over `gossip` and `peers`.
    ///
    /// The peer manager's hello should list
    /// [`micelio_wire::limits::FEATURE_STATE_V1`] (in
    /// `TransportConfig::features`) so that micelio peers reconcile with
    /// this node completely; without it they treat it as a reference node.
    ///
    /// # Errors
    /// [`StateError::Store`] if the store cannot be read or its thread
    /// cannot start.
    pub async fn spawn(
        identity: Arc<Identity>,
        config: StateConfig,
        mut store: Box<dyn StateStore>,
        gossip: Gossip,
        peers: PeerManager,
    ) -> Result<State, StateError> {
        let me = *identity.node_id();
        let restore_config = config.clone();
        let (restored, overrides, store) = tokio::task::spawn_blocking(move || {
            let overrides = match &restore_config.tags_file {
                Some(path) => tags::Overrides::load(path).unwrap_or_else(|e| {
                    tracing::warn!("ignoring the runtime tags: {e}");
                    tags::Overrides::default()
                }),
                None => tags::Overrides::default(),
            };
            (
                task::restore(me, &restore_config, &mut *store),
                overrides,
                store,
            )
        })
        .await
        .map_err(|_| StoreError::Stopped)?;
        let restored = restored?;
        let configured_tags = config.node.tags.clone();
        let mut config = config;
        config.node.tags = overrides.apply(&configured_tags).tags;
        peers.set_tags(config.node.tags.clone());
        let store = StoreThread::spawn(store)
            .map_err(|e| StoreError::backend("cannot start the storage thread", e))?;
        let node_id = *identity.node_id();
        let shared = Arc::new(Shared::default());
        // Checked before gossip relays it: a forged entry goes no further.
        gossip
            .set_validator(
                MsgType::StateUpdate,
                intake::validator(config.limits, shared.clone()),
            )
            .await
            .map_err(|_| StateError::Stopped)?;
        let subs = intake::Subscriptions::open(&gossip).await?;
        let peer_events = gossip
            .subscribe_peers()
            .await
            .map_err(|_| StateError::Stopped)?;
        let cancel = CancellationToken::new();
        let tasks = TaskGroup::new(cancel.clone());
        let (inbound_tx, inbound_rx) = mpsc::channel(intake::INBOUND_QUEUE);
        let (out_tx, out_rx) = mpsc::channel(outbound::OUTBOUND_QUEUE);
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (changes, _) = broadcast::channel(CHANGE_QUEUE);
        let span = tracing::info_span!("state", node = %node_id.short(12));
        tasks.spawn(
            "the state intake task",
            intake::run(
                subs,
                peers.clone(),
                config.limits,
                shared.clone(),
                inbound_tx,
                cancel.clone(),
            )
            .instrument(span.clone()),
        );
        tasks.spawn(
            "the state outbound task",
            outbound::run(
                identity.clone(),
                peers.clone(),
                store.clone(),
                shared.clone(),
                out_rx,
                cancel.clone(),
            )
            .instrument(span.clone()),
        );
        let limits = config.limits;
        let state_task = task::StateTask::new(
            identity,
            config,
            restored,
            store,
            gossip,
            peers,
            shared,
            out_tx,
            changes.clone(),
            (configured_tags, overrides),
        );
        tasks.spawn(
            "the state task",
            state_task
                .run(rx, inbound_rx, peer_events, cancel)
                .instrument(span),
        );
        Ok(State {
            tx,
            changes,
            node_id,
            limits,
            tasks,
        })
    }

    /// This node's NodeId (its namespace is `<node_id>/`).
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The limits entries must meet.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The full key of `sub` in this node's namespace.
    pub fn own_key(&self, sub: &str) -> String {
        format!("{}/{sub}", self.node_id)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, StateError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StateError::Stopped)?;
        rx.await.map_err(|_| StateError::Stopped)
    }

    /// The live entry of the full key `key` (`None` if absent or deleted).
    ///
    /// # Errors
    /// [`StateError::Stopped`].
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, StateError> {
        let key = key.to_owned();
        self.call(|reply| Command::Get { key, reply }).await?
    }

    /// Live entries whose full key starts with `prefix`, in key order, at
    /// most `limit` of them.
    ///
    /// # Errors
    /// [`StateError::Stopped`].
    pub async fn scan(&self, prefix: &str, limit: usize) -> Result<Vec<Entry>, StateError> {
        let prefix = prefix.to_owned();
        self.call(|reply| Command::Scan {
            prefix,
            limit,
            reply,
        })
        .await?
    }

    /// Writes `value` at `<node_id>/<sub>`. Returns once the entry is on
    /// disk (flushed); it then goes out by gossip.
    ///
    /// # Errors
    /// [`StateError::Write`] for a bad key or value, a full map or an
    /// exhausted clock; [`StateError::Store`] if it could not be flushed.
    pub async fn set(&self, sub: &str, value: impl Into<Bytes>) -> Result<Entry, StateError> {
        let sub = sub.to_owned();
        let value = Some(value.into());
        self.call(|reply| Command::Write { sub, value, reply })
            .await?
    }

    /// Deletes `<node_id>/<sub>` (writes a tombstone), durably as
    /// [`State::set`].
    ///
    /// # Errors
    /// As [`State::set`].
    pub async fn delete(&self, sub: &str) -> Result<Entry, StateError> {
        let sub = sub.to_owned();
        self.call(|reply| Command::Write {
            sub,
            value: None,
            reply,
        })
        .await?
    }

    /// A stream of the map's changes from now on (local writes and entries
    /// received). A subscriber more than [`CHANGE_QUEUE`] behind misses
    /// events and is told how many.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The counters.
    ///
    /// # Errors
    /// [`StateError::Stopped`].
    pub async fn stats(&self) -> Result<StateStats, StateError> {
        self.call(Command::Stats).await
    }

    /// The mesh's members with their liveness, this node included.
    ///
    /// # Errors
    /// [`StateError::Stopped`].
    pub async fn members(&self) -> Result<Vec<Member>, StateError> {
        self.call(Command::Members).await
    }

    /// This node's tags, and which come from the configuration and which
    /// from runtime changes.
    ///
    /// # Errors
    /// [`StateError::Stopped`].
    pub async fn tags(&self) -> Result<TagSet, StateError> {
        self.call(Command::Tags).await
    }

    /// Adds `tag` to this node at runtime: kept across restarts (in
    /// [`StateConfig::tags_file`]), published in `node/tags` (durable when
    /// this returns) and sent in the hello from now on. `Ok(None)` when the
    /// node already had it.
    ///
    /// # Errors
    /// [`StateError::Tag`] for a bad tag or too many,
    /// [`StateError::TagsFile`] if it cannot be saved.
    pub async fn add_tag(&self, tag: &str) -> Result<Option<TagSet>, StateError> {
        self.tag(tag, true).await
    }

    /// Removes `tag` from this node at runtime, like [`State::add_tag`];
    /// `Ok(None)` when the node did not have it.
    ///
    /// # Errors
    /// [`StateError::TagsFile`] if the change cannot be saved.
    pub async fn remove_tag(&self, tag: &str) -> Result<Option<TagSet>, StateError> {
        self.tag(tag, false).await
    }

    async fn tag(&self, tag: &str, add: bool) -> Result<Option<TagSet>, StateError> {
        let tag = tag.to_owned();
        self.call(|reply| Command::Tag { tag, add, reply }).await?
    }

    /// Resolves once the service's tasks have ended (see
    /// [`TaskExit`]); a supervisor treats [`TaskExit::Failed`] as death.
    pub fn closed(&self) -> impl std::future::Future<Output = TaskExit> + Send + 'static {
        self.tasks.closed()
    }

    /// Stops the service: writes `node/left` (flushed) and hands it to
    /// gossip, so the mesh shows this node `left` at once, flushes the
    /// store and stops the tasks. Idempotent. Stop the state service
    /// before gossip, so that the last message still goes out.
    pub async fn shutdown(&self) {
        let _ = self.call(Command::Shutdown).await;
        self.tasks.cancel_token().cancel();
        let _ = self.tasks.closed().await;
    }
}

/// The message types the service reads.
pub(crate) const TYPES: [MsgType; 4] = [
    MsgType::StateUpdate,
    MsgType::StateSyncRequest,
    MsgType::StateSyncResponse,
    MsgType::StateReconcile,
];
