//! The peer manager: the [`PeerManager`] handle and the state its tasks
//! share (the peer table, the known-peers table, the storage task).
//!
//! [`PeerManager`] is a cheap-to-clone handle. Long-lived work runs in tasks
//! tracked by one `TaskTracker` and stopped by one cancellation token, one
//! module each:
//!
//! - `accept`: the accept loop (when listening), which refuses connections
//!   over `max_peers` before any handshake and runs each admitted one's
//!   pre-auth phase under the budget of [`crate::admission`];
//! - `connection`: dial, hello, registration, and per connection a writer
//!   (bounded queue, write deadline, keepalive) and a reader (idle timeout,
//!   dispatch);
//! - `table`: the peer table's duplicate rules and what happens when a
//!   connection ends;
//! - `maintenance`: one task per bootstrap address (redialling forever with
//!   backoff), peer exchange every `exchange_interval`, discovery every
//!   `discovery_interval`.
//!
//! The peer table and the known-peers table sit behind `std::sync::Mutex`es
//! held only for short, non-async critical sections (never across an
//! `.await`), so that sending to a peer is a lock, a `try_send` and done.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use micelio_identity::{Identity, NodeId, PublicKey};
use micelio_wire::{Envelope, frame};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn};

use crate::admission::{Admission, LogGate};
use crate::config::{TransportConfig, is_dialable_addr};
use crate::discovery::{KnownPeer, KnownPeers};
use crate::error::{DialError, SendError, TransportError};
use crate::hello::{LocalHello, PeerHelloInfo};
use crate::link::{Direction, Listener, Transport};
use crate::stats::{Counters, TransportStats};
use crate::store::{self, PeerStore, StoreError, StoreHandle};
use crate::task::{TaskExit, TaskGroup};

mod accept;
mod connection;
mod maintenance;
mod table;

use accept::accept_loop;
use connection::{authenticate, dial, register};
use maintenance::{bootstrap_loop, exchange_frame, maintenance_loop, send_exchange};
use table::{Claim, claim, release_conn, settle_duplicate};

/// Capacity of the event stream handed to the consumer.
const EVENT_QUEUE: usize = 4096;

/// Grace period for tasks to stop on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// At most one admission log line per this period.
const ADMISSION_LOG_EVERY: Duration = Duration::from_secs(10);

/// A connected peer, as the manager describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSummary {
    /// The peer's NodeId.
    pub node_id: NodeId,
    /// Its Ed25519 key, bound to the Noise key by the hello.
    pub public_key: PublicKey,
    /// Who dialled.
    pub direction: Direction,
    /// The socket address of the connection.
    pub remote_addr: String,
    /// What its hello said.
    pub hello: PeerHelloInfo,
}

/// What the manager tells its consumer (the gossip layer, the node).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A peer completed the hello and is connected.
    Up(Box<PeerSummary>),
    /// A connected peer is gone.
    Down {
        /// The peer.
        node_id: NodeId,
        /// Why the connection ended.
        reason: String,
    },
    /// A message from a connected peer, for any type the connection layer
    /// does not handle itself (everything but hello, peer exchange and
    /// keepalive).
    Message {
        /// The connected peer it came from (not necessarily its originator).
        from: NodeId,
        /// The envelope, as received.
        envelope: Envelope,
    },
}

/// One open connection of a peer: its send queue and its cancel token.
struct Conn {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
}

/// A second connection to a peer that does not speak micelio's extensions,
/// kept open until the peer closes one of the two (see [`claim`]).
struct Standby {
    conn: Conn,
    direction: Direction,
    remote_addr: String,
}

struct Slot {
    /// The connection we send on.
    conn: Conn,
    /// A duplicate the peer has not closed yet (reference peers only).
    standby: Option<Standby>,
    summary: PeerSummary,
    /// Cancelled when the peer is gone (not when one of its connections is
    /// replaced or promoted).
    gone: CancellationToken,
    drop_logged: bool,
}

impl Slot {
    /// Closes every connection of the peer.
    fn close_all(&self) {
        self.conn.cancel.cancel();
        if let Some(sb) = &self.standby {
            sb.conn.cancel.cancel();
        }
    }
}

struct Registry {
    peers: HashMap<NodeId, Slot>,
    dialing: HashSet<NodeId>,
    /// Inbound connections not authenticated yet.
    admission: Admission,
    /// When a visitor was last admitted while full.
    last_visitor: Option<Instant>,
}

/// Least time between two visitors: inbound connections admitted to the
/// handshake while the node is full, only to be given a peer exchange and
/// closed after the hello.
///
/// Without them a newcomer whose bootstrap peers are all full would learn no
/// address and never join (connections over `max_peers` are otherwise closed
/// before the handshake). One per second bounds what a full node spends on
/// handshakes it will not keep.
pub(crate) const VISITOR_EVERY: Duration = Duration::from_secs(1);

struct Shared {
    identity: Arc<Identity>,
    config: TransportConfig,
    transport: Arc<dyn Transport>,
    registry: Mutex<Registry>,
    /// Admission refusals and evictions are logged at most once per period.
    admission_log: Mutex<LogGate>,
    /// Dropped peer-exchange entries are logged at most once per period.
    exchange_log: Mutex<LogGate>,
    known: Mutex<KnownPeers>,
    store: Option<StoreHandle>,
    counters: Counters,
    events: mpsc::Sender<PeerEvent>,
    cancel: CancellationToken,
    /// The long-lived tasks (accept loop, bootstrap dialers, maintenance
    /// loop, storage task), watched for [`PeerManager::closed`].
    tasks: TaskGroup,
    tracker: TaskTracker,
    /// Test-only fault: the maintenance loop panics when notified.
    #[cfg(test)]
    fault: tokio::sync::Notify,
    local_addr: Option<String>,
    local_hello: LocalHello,
    /// The tags sent in the hello: they change at runtime
    /// ([`PeerManager::set_tags`]); short critical sections only.
    hello_tags: Mutex<Vec<String>>,
    bootstrap_addrs: HashSet<String>,
    next_conn: AtomicU64,
    rng: Mutex<SmallRng>,
}

/// Locks a mutex, ignoring poisoning (the data stays consistent: every
/// critical section here is a few map operations).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Handle to a running peer manager. Clones share the same manager.
#[derive(Clone)]
#[must_use = "dropping every handle does not stop the manager; call shutdown()"]
pub struct PeerManager {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PeerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerManager")
            .field("node_id", self.shared.identity.node_id())
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl PeerManager {
    /// Starts a peer manager: binds the listener (if configured), loads the
    /// known peers from `store`, and starts the accept loop, the bootstrap
    /// dialers and the maintenance loop.
    ///
    /// Returns the handle and the stream of [`PeerEvent`]s; the consumer must
    /// keep reading it (a full stream slows the peers down, never the node).
    ///
    /// # Errors
    /// [`TransportError`] if the listener cannot be bound.
    pub async fn spawn(
        identity: Arc<Identity>,
        transport: Arc<dyn Transport>,
        config: TransportConfig,
        store: Option<Box<dyn PeerStore>>,
    ) -> Result<(Self, mpsc::Receiver<PeerEvent>), TransportError> {
        let listener = match &config.listen {
            Some(addr) => Some(transport.listen(addr).await?),
            None => None,
        };
        let local_addr = listener.as_ref().map(|l| l.local_addr());
        let advertise = config
            .advertise_addr
            .clone()
            .or_else(|| local_addr.clone())
            .filter(|a| is_dialable_addr(a));
        let mut known = KnownPeers::new(*identity.node_id());
        let cancel = CancellationToken::new();
        let tasks = TaskGroup::new(cancel.clone());
        let store = match store {
            Some(store) => load_known(store, &mut known, &tasks).await,
            None => None,
        };
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let seed = u64::from_le_bytes(
            identity.node_id().as_bytes()[..8]
                .try_into()
                .unwrap_or([0; 8]),
        ) ^ now_unix();
        let shared = Arc::new(Shared {
            hello_tags: Mutex::new(config.tags.clone()),
            local_hello: LocalHello {
                tags: config.tags.clone(),
                advertise_addr: advertise,
                features: config.features.clone(),
            },
            bootstrap_addrs: config.bootstrap.iter().cloned().collect(),
            identity,
            transport,
            registry: Mutex::new(Registry {
                peers: HashMap::new(),
                dialing: HashSet::new(),
                admission: Admission::new(
                    config.max_pending_per_host,
                    config.max_pending_handshakes,
                ),
                last_visitor: None,
            }),
            admission_log: Mutex::new(LogGate::new(ADMISSION_LOG_EVERY)),
            exchange_log: Mutex::new(LogGate::new(ADMISSION_LOG_EVERY)),
            known: Mutex::new(known),
            store,
            counters: Counters::default(),
            events,
            cancel,
            tasks,
            tracker: TaskTracker::new(),
            #[cfg(test)]
            fault: tokio::sync::Notify::new(),
            local_addr,
            next_conn: AtomicU64::new(1),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            config,
        });
        start_tasks(&shared, listener);
        Ok((Self { shared }, events_rx))
    }

    /// Our NodeId.
    pub fn node_id(&self) -> &NodeId {
        self.shared.identity.node_id()
    }

    /// The bound listen address, if listening.
    pub fn local_addr(&self) -> Option<&str> {
        self.shared.local_addr.as_deref()
    }

    /// The address we advertise to peers, if any.
    pub fn advertise_addr(&self) -> Option<&str> {
        self.shared.local_hello.advertise_addr.as_deref()
    }

    /// The tags this node sends in its hello from now on (connections
    /// already made keep what they were told; the state map carries the
    /// change to everyone).
    pub fn set_tags(&self, tags: Vec<String>) {
        *lock(&self.shared.hello_tags) = tags;
    }

    /// The tags this node sends in its hello.
    pub fn tags(&self) -> Vec<String> {
        lock(&self.shared.hello_tags).clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &TransportConfig {
        &self.shared.config
    }

    /// Dials `addr`, runs the handshake and hello, and registers the peer.
    ///
    /// Cancel safe: dropping the future drops the half-made connection.
    ///
    /// # Errors
    /// [`DialError`]; `Duplicate` when already connected to that node.
    pub async fn dial(&self, addr: &str) -> Result<NodeId, DialError> {
        dial(&self.shared, addr).await
    }

    /// Queues `env` for `to`.
    ///
    /// # Errors
    /// [`SendError::NotConnected`], [`SendError::QueueFull`] (dropped and
    /// counted) or [`SendError::TooLarge`].
    pub fn send(&self, to: &NodeId, env: &Envelope) -> Result<(), SendError> {
        self.send_frame(to, frame::encode_envelope(env)?)
    }

    /// Queues an already encoded frame for `to` (encode once, send to many).
    ///
    /// # Errors
    /// As [`PeerManager::send`].
    pub fn send_frame(&self, to: &NodeId, frame: Bytes) -> Result<(), SendError> {
        send_frame(&self.shared, to, frame)
    }

    /// Queues `env` for every connected peer but `except`; returns how many
    /// peers it was queued for.
    ///
    /// # Errors
    /// [`SendError::TooLarge`] if the envelope does not fit in a frame.
    pub fn broadcast(&self, env: &Envelope, except: Option<&NodeId>) -> Result<usize, SendError> {
        let frame = frame::encode_envelope(env)?;
        let ids = self.peer_ids();
        Ok(ids
            .iter()
            .filter(|id| Some(*id) != except)
            .filter(|id| send_frame(&self.shared, id, frame.clone()).is_ok())
            .count())
    }

    /// The connected peers.
    pub fn peers(&self) -> Vec<PeerSummary> {
        lock(&self.shared.registry)
            .peers
            .values()
            .map(|s| s.summary.clone())
            .collect()
    }

    /// The NodeIds of the connected peers.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        lock(&self.shared.registry).peers.keys().copied().collect()
    }

    /// How many connections are open to authenticated peers: one per peer,
    /// plus a duplicate briefly kept for a peer without micelio extensions
    /// until the peer closes one of the two.
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.registry)
            .peers
            .values()
            .map(|s| 1 + usize::from(s.standby.is_some()))
            .sum()
    }

    /// How many peers are connected.
    pub fn peer_count(&self) -> usize {
        lock(&self.shared.registry).peers.len()
    }

    /// How many inbound connections are still in the Noise handshake or
    /// hello (bounded by `max_pending_handshakes`).
    pub fn pending_handshakes(&self) -> usize {
        lock(&self.shared.registry).admission.len()
    }

    /// Whether `id` is connected.
    pub fn is_connected(&self, id: &NodeId) -> bool {
        lock(&self.shared.registry).peers.contains_key(id)
    }

    /// The known-peers table (what discovery would dial).
    pub fn known_peers(&self) -> Vec<KnownPeer> {
        lock(&self.shared.known).all()
    }

    /// How many peers the known-peers table holds (at most
    /// [`crate::discovery::MAX_KNOWN_PEERS`]).
    pub fn known_peer_count(&self) -> usize {
        lock(&self.shared.known).len()
    }

    /// Closes the connection to `id`, if any. Returns whether there was one.
    pub fn disconnect(&self, id: &NodeId) -> bool {
        match lock(&self.shared.registry).peers.get(id) {
            Some(slot) => {
                slot.close_all();
                true
            }
            None => false,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        let mut stats = self.shared.counters.snapshot();
        if let Some(store) = &self.shared.store {
            let c = store.counters();
            stats.store_writes = c.writes.load(Ordering::Relaxed);
            stats.store_errors = c.errors.load(Ordering::Relaxed);
            stats.store_dropped = c.dropped.load(Ordering::Relaxed);
        }
        stats
    }

    /// Resolves once the manager's long-lived tasks (the accept loop, the
    /// bootstrap dialers, the maintenance loop and the storage task) have
    /// ended, saying how: [`TaskExit::Stopped`] once
    /// [`PeerManager::shutdown`] has stopped them all (the store flushed and
    /// released), or [`TaskExit::Failed`] as soon as one of them panicked
    /// (the reason names it and carries the panic message) or returned by
    /// itself, which a supervisor should treat as the manager's death. The
    /// future owns what it needs, so it can be moved into a watching task.
    ///
    /// Cancel safety: safe to cancel.
    pub fn closed(&self) -> impl std::future::Future<Output = TaskExit> + Send + 'static {
        self.shared.tasks.closed()
    }

    /// Stops accepting and dialing, closes every connection, waits for the
    /// tasks (at most a few seconds) and flushes the peer store. Idempotent.
    pub async fn shutdown(&self) {
        if let Err(e) = self.shutdown_and_flush().await {
            warn!("flushing known peers: {e}");
        }
    }

    /// Like [`PeerManager::shutdown`], and reports whether the peer store
    /// wrote and flushed everything (waiting at most
    /// [`store::STORE_CLOSE_GRACE`] for it). Idempotent: once the store is
    /// closed, later calls return `Ok(())`.
    ///
    /// # Errors
    /// The [`StoreError`] of the final flush.
    pub async fn shutdown_and_flush(&self) -> Result<(), StoreError> {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        if timeout(SHUTDOWN_GRACE, self.shared.tracker.wait())
            .await
            .is_err()
        {
            warn!("transport tasks did not stop within {SHUTDOWN_GRACE:?}");
        }
        self.close_store().await
    }

    async fn close_store(&self) -> Result<(), StoreError> {
        match &self.shared.store {
            Some(store) => store.close().await,
            None => Ok(()),
        }
    }
}

/// Starts the long-lived tasks: the accept loop (if listening), one
/// bootstrap dialer per address, the maintenance loop.
fn start_tasks(shared: &Arc<Shared>, listener: Option<Box<dyn Listener>>) {
    let span = info_span!("transport", node = %shared.identity.node_id().short(12));
    let _entered = span.enter();
    let (tasks, tracker) = (&shared.tasks, &shared.tracker);
    if let Some(listener) = listener {
        info!(
            addr = shared.local_addr.as_deref().unwrap_or(""),
            "listening"
        );
        tasks.spawn_tracked(
            tracker,
            "the accept loop",
            accept_loop(shared.clone(), listener),
        );
    }
    for addr in shared.config.bootstrap.clone() {
        tasks.spawn_tracked(
            tracker,
            "a bootstrap dialer",
            bootstrap_loop(shared.clone(), addr),
        );
    }
    let maintenance = maintenance_loop(shared.clone());
    #[cfg(test)]
    let maintenance = tests::with_fault(shared.clone(), maintenance);
    tasks.spawn_tracked(tracker, "the maintenance loop", maintenance);
}

/// Loads the known peers from `store` in `spawn_blocking` and starts the
/// storage task that owns it from then on. A store that cannot be read is
/// logged and used all the same (for writes); one whose call panicked is
/// lost, and the node runs without persistence.
async fn load_known(
    store: Box<dyn PeerStore>,
    known: &mut KnownPeers,
    tasks: &TaskGroup,
) -> Option<StoreHandle> {
    match store::blocking(store, |s| s.load()).await {
        Ok((store, loaded)) => {
            match loaded {
                Ok(loaded) => {
                    let now = now_unix();
                    let n = loaded.peers.iter().filter(|i| known.load(i, now)).count();
                    if loaded.undecodable > 0 {
                        warn!(
                            bad = loaded.undecodable,
                            "skipped undecodable known-peer records"
                        );
                    }
                    if n > 0 {
                        info!(loaded = n, "loaded known peers");
                    }
                }
                Err(e) => warn!("cannot load known peers: {e}"),
            }
            Some(StoreHandle::spawn(store, tasks))
        }
        Err(e) => {
            warn!("loading known peers failed ({e}); known peers will not be persisted");
            None
        }
    }
}

fn send_frame(shared: &Shared, to: &NodeId, frame: Bytes) -> Result<(), SendError> {
    let mut reg = lock(&shared.registry);
    let slot = reg.peers.get_mut(to).ok_or(SendError::NotConnected)?;
    match slot.conn.tx.try_send(frame) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            shared
                .counters
                .send_queue_drops
                .fetch_add(1, Ordering::Relaxed);
            if !slot.drop_logged {
                slot.drop_logged = true;
                warn!(peer = %to.short(12), "send queue full: dropping messages for this peer");
            } else {
                debug!(peer = %to.short(12), "send queue full: message dropped");
            }
            Err(SendError::QueueFull)
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::NotConnected),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::MemoryPeerStore;
    use crate::tcp::TcpTransport;

    /// Test-only fault hook: the maintenance loop panics once
    /// [`Shared::fault`] is notified.
    pub(super) async fn with_fault(
        shared: Arc<Shared>,
        task: impl std::future::Future<Output = ()>,
    ) {
        tokio::select! {
            () = shared.fault.notified() => panic!("test fault: the maintenance loop panics"),
            () = task => {}
        }
    }

    async fn manager() -> PeerManager {
        let id = Arc::new(Identity::from_seed([3; 32]));
        let transport =
            TcpTransport::new(id.clone(), Duration::from_secs(1), Duration::from_secs(1));
        let (peers, _events) = PeerManager::spawn(
            id,
            Arc::new(transport),
            TransportConfig::new(Some("127.0.0.1:0".to_owned())),
            Some(Box::new(MemoryPeerStore::new())),
        )
        .await
        .unwrap();
        peers
    }

    #[tokio::test]
    async fn a_panicking_maintenance_loop_is_reported_by_closed() {
        let peers = manager().await;
        let closed = peers.closed();
        peers.shared.fault.notify_one();
        assert_eq!(
            closed.await,
            TaskExit::Failed(
                "the maintenance loop panicked: test fault: the maintenance loop panics".to_owned()
            )
        );
        peers.shutdown().await;
    }

    #[tokio::test]
    async fn a_panicking_storage_task_is_reported_by_closed() {
        let peers = manager().await;
        let closed = peers.closed();
        peers.shared.store.as_ref().unwrap().panic_for_tests();
        assert_eq!(
            closed.await,
            TaskExit::Failed(
                "the storage task panicked: test fault: the storage task panics".to_owned()
            )
        );
        assert!(matches!(
            peers.shutdown_and_flush().await,
            Err(StoreError::Stopped)
        ));
    }

    #[tokio::test]
    async fn a_shutdown_is_reported_as_a_stop_after_the_flush() {
        let peers = manager().await;
        let closed = tokio::spawn(peers.closed());
        tokio::task::yield_now().await;
        assert!(!closed.is_finished(), "running");
        peers.shutdown_and_flush().await.unwrap();
        assert_eq!(closed.await.unwrap(), TaskExit::Stopped);
    }
}
