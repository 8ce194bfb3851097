//! The peer manager: listener, dialing, hello, the peer table, per-peer
//! tasks, keepalive and idle timeout, peer exchange and discovery.
//!
//! [`PeerManager`] is a cheap-to-clone handle. Long-lived work runs in tasks
//! tracked by one `TaskTracker` and stopped by one cancellation token:
//!
//! - the accept loop (when listening), which refuses connections over
//!   `max_peers` before any handshake;
//! - one task per bootstrap address, redialling forever with backoff;
//! - the maintenance loop: peer exchange every `exchange_interval`,
//!   discovery every `discovery_interval`;
//! - per connection, a writer (bounded queue, write deadline, keepalive) and
//!   a reader (idle timeout, dispatch).
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
use micelio_wire::proto::{PeerExchange, PeerInfo};
use micelio_wire::{Envelope, EnvelopeBuilder, MsgType, WireMessage as _, frame};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::admission::{Admission, LogGate, host_of};
use crate::config::{TransportConfig, is_dialable_addr};
use crate::discovery::{KnownPeer, KnownPeers, jitter};
use crate::error::{DialError, LinkError, SendError, TransportError};
use crate::hello::{self, LocalHello, PeerHelloInfo};
use crate::link::{Direction, FrameSink, FrameSource, Incoming, Link, Listener, Transport};
use crate::stats::{Counters, TransportStats};
use crate::store::{self, PeerStore, StoreError, StoreHandle};

/// Capacity of the event stream handed to the consumer.
const EVENT_QUEUE: usize = 4096;
/// Grace period for tasks to stop on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// At most one admission log line per this period.
const ADMISSION_LOG_EVERY: Duration = Duration::from_secs(10);
/// Pause after a failing `accept` (for example out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

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
}

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
    tracker: TaskTracker,
    local_addr: Option<String>,
    local_hello: LocalHello,
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
        let store = match store {
            Some(store) => load_known(store, &mut known).await,
            None => None,
        };
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let seed = u64::from_le_bytes(
            identity.node_id().as_bytes()[..8]
                .try_into()
                .unwrap_or([0; 8]),
        ) ^ now_unix();
        let shared = Arc::new(Shared {
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
            }),
            admission_log: Mutex::new(LogGate::new(ADMISSION_LOG_EVERY)),
            exchange_log: Mutex::new(LogGate::new(ADMISSION_LOG_EVERY)),
            known: Mutex::new(known),
            store,
            counters: Counters::default(),
            events,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            local_addr,
            next_conn: AtomicU64::new(1),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            config,
        });
        let span = info_span!("transport", node = %shared.identity.node_id().short(12));
        if let Some(listener) = listener {
            info!(parent: &span, addr = shared.local_addr.as_deref().unwrap_or(""), "listening");
            shared
                .tracker
                .spawn(accept_loop(shared.clone(), listener).instrument(span.clone()));
        }
        for addr in shared.config.bootstrap.clone() {
            shared
                .tracker
                .spawn(bootstrap_loop(shared.clone(), addr).instrument(span.clone()));
        }
        shared
            .tracker
            .spawn(maintenance_loop(shared.clone()).instrument(span));
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

/// Loads the known peers from `store` in `spawn_blocking` and starts the
/// storage task that owns it from then on. A store that cannot be read is
/// logged and used all the same (for writes); one whose call panicked is
/// lost, and the node runs without persistence.
async fn load_known(store: Box<dyn PeerStore>, known: &mut KnownPeers) -> Option<StoreHandle> {
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
            Some(StoreHandle::spawn(store))
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

async fn accept_loop(shared: Arc<Shared>, mut listener: Box<dyn Listener>) {
    loop {
        let incoming = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let incoming = match incoming {
            Ok(i) => i,
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    _ = sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        admit(&shared, incoming);
        // Let the connections just admitted read their first bytes before
        // the next accept can evict them (on a busy current-thread runtime
        // the accept loop would otherwise run many accepts in a row).
        tokio::task::yield_now().await;
    }
}

/// Applies `max_peers` and the pre-auth budget to an accepted connection,
/// then runs its handshake and hello in a task of its own.
fn admit(shared: &Arc<Shared>, incoming: Box<dyn Incoming>) {
    let remote = incoming.remote_addr();
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let evict = shared.cancel.child_token();
    let now = Instant::now();
    let decision = {
        let mut reg = lock(&shared.registry);
        if reg.peers.len() >= shared.config.max_peers {
            Err(None)
        } else {
            let host = host_of(&remote);
            reg.admission
                .admit(conn_id, host, now, evict.clone())
                .map_err(Some)
        }
    };
    let refused = match decision {
        Ok(None) => None,
        Ok(Some(budget)) => {
            shared
                .counters
                .preauth_evicted
                .fetch_add(1, Ordering::Relaxed);
            if let Some(held) = lock(&shared.admission_log).allow(now) {
                info!(remote = %remote, held_back = held, "closed an unauthenticated connection to admit a newer one: {}", budget.label());
            }
            None
        }
        Err(None) => {
            shared
                .counters
                .refused_max_peers
                .fetch_add(1, Ordering::Relaxed);
            Some("max_peers reached")
        }
        Err(Some(budget)) => {
            shared
                .counters
                .preauth_refused
                .fetch_add(1, Ordering::Relaxed);
            Some(budget.label())
        }
    };
    if let Some(why) = refused {
        if let Some(held) = lock(&shared.admission_log).allow(now) {
            info!(remote = %remote, held_back = held, "refused inbound connection: {why}");
        }
        return;
    }
    let s = shared.clone();
    shared
        .tracker
        .spawn(preauth(s, conn_id, remote, incoming, evict).in_current_span());
}

/// The pre-auth phase of an inbound connection: first bytes, Noise
/// handshake and hello under one deadline, ended early by eviction or
/// shutdown; then registration.
async fn preauth(
    s: Arc<Shared>,
    conn_id: u64,
    remote: String,
    mut incoming: Box<dyn Incoming>,
    evict: CancellationToken,
) {
    let deadline = s.config.preauth_timeout;
    let work = async {
        incoming.first_bytes().await;
        lock(&s.registry).admission.progressed(conn_id);
        let link = incoming.upgrade().await.inspect_err(|_| {
            s.counters
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
        })?;
        authenticate(&s, link).await
    };
    let outcome = tokio::select! {
        _ = evict.cancelled() => None,
        r = timeout(deadline, work) => Some(r),
    };
    lock(&s.registry).admission.release(conn_id);
    match outcome {
        Some(Ok(Ok((link, info)))) => {
            let _ = register(&s, link, info).await;
        }
        Some(Ok(Err(e))) => debug!(remote = %remote, "rejected inbound connection: {e}"),
        Some(Err(_)) => {
            s.counters.preauth_timeouts.fetch_add(1, Ordering::Relaxed);
            debug!(remote = %remote, "closed inbound connection: not authenticated within {deadline:?}");
        }
        None => debug!(remote = %remote, "closed unauthenticated inbound connection"),
    }
}

async fn dial(shared: &Arc<Shared>, addr: &str) -> Result<NodeId, DialError> {
    if shared.cancel.is_cancelled() {
        return Err(DialError::ShuttingDown);
    }
    let link = match shared.transport.dial(addr).await {
        Ok(link) => link,
        Err(e) => {
            shared
                .counters
                .dial_failures
                .fetch_add(1, Ordering::Relaxed);
            if matches!(
                e,
                TransportError::Handshake(_) | TransportError::HandshakeTimeout
            ) {
                shared
                    .counters
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            debug!(addr, "dial failed: {e}");
            return Err(e.into());
        }
    };
    establish(shared, link).await
}

/// Runs the hello on a fresh link and registers the peer.
async fn establish(shared: &Arc<Shared>, link: Link) -> Result<NodeId, DialError> {
    let (link, info) = authenticate(shared, link).await?;
    register(shared, link, info).await
}

/// Runs the hello on a fresh link and applies the identity checks.
async fn authenticate(
    shared: &Arc<Shared>,
    mut link: Link,
) -> Result<(Link, PeerHelloInfo), DialError> {
    let info = tokio::select! {
        _ = shared.cancel.cancelled() => return Err(DialError::ShuttingDown),
        r = hello::exchange(&mut link, &shared.identity, &shared.local_hello, shared.config.hello_timeout) => r,
    };
    let info = match info {
        Ok(info) => info,
        Err(e) => {
            shared
                .counters
                .hello_failures
                .fetch_add(1, Ordering::Relaxed);
            info!(remote = %link.remote_addr, direction = %link.direction, reason = e.label(), "rejected connection: hello failed: {e}");
            return Err(e.into());
        }
    };
    if info.node_id == *shared.identity.node_id() {
        shared
            .counters
            .self_connections
            .fetch_add(1, Ordering::Relaxed);
        info!(remote = %link.remote_addr, "rejected connection: it is ourselves");
        return Err(DialError::SelfConnection);
    }
    Ok((link, info))
}

/// Which connection to keep when two link the same pair of nodes: the one
/// dialled by the node with the smaller NodeId. Both ends decide alike, so
/// simultaneous dials leave exactly one connection.
fn keep_new(me: &NodeId, peer: &NodeId, old: Direction, new: Direction) -> bool {
    if old == new {
        return false;
    }
    let initiator = |d: Direction| if d == Direction::Outbound { *me } else { *peer };
    initiator(new) < initiator(old)
}

async fn register(
    shared: &Arc<Shared>,
    link: Link,
    info: PeerHelloInfo,
) -> Result<NodeId, DialError> {
    let node_id = info.node_id;
    let Link {
        remote_addr,
        direction,
        sink,
        source,
        ..
    } = link;
    let summary = PeerSummary {
        node_id,
        public_key: info.public_key,
        direction,
        remote_addr: remote_addr.clone(),
        hello: info.clone(),
    };
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let cancel = shared.cancel.child_token();
    let (tx, rx) = mpsc::channel(shared.config.send_queue.max(1));
    let conn = Conn {
        id: conn_id,
        tx,
        cancel: cancel.clone(),
    };
    let claimed = claim(shared, conn, &summary);
    let counter = match direction {
        Direction::Inbound => &shared.counters.connections_inbound,
        Direction::Outbound => &shared.counters.connections_outbound,
    };
    match claimed {
        Err(e) => {
            let c = &shared.counters;
            match e {
                DialError::TooManyPeers => {
                    c.closed_max_peers.fetch_add(1, Ordering::Relaxed);
                    info!(peer = %node_id.short(12), direction = %direction, "rejected connection: max_peers reached");
                }
                _ => {
                    c.duplicates_closed.fetch_add(1, Ordering::Relaxed);
                    info!(peer = %node_id.short(12), direction = %direction, remote = %remote_addr, "closed duplicate connection");
                }
            }
            return Err(e);
        }
        Ok(Claim::New) => {
            counter.fetch_add(1, Ordering::Relaxed);
            info!(peer = %node_id, direction = %direction, remote = %remote_addr, "peer connected");
            let _ = shared.events.send(PeerEvent::Up(Box::new(summary))).await;
        }
        Ok(Claim::Replaced) => {
            counter.fetch_add(1, Ordering::Relaxed);
            shared
                .counters
                .duplicates_closed
                .fetch_add(1, Ordering::Relaxed);
            info!(peer = %node_id.short(12), direction = %direction, remote = %remote_addr, "replaced duplicate connection");
        }
        Ok(Claim::Standby) => {
            counter.fetch_add(1, Ordering::Relaxed);
            shared
                .counters
                .duplicates_kept
                .fetch_add(1, Ordering::Relaxed);
            info!(peer = %node_id.short(12), direction = %direction, remote = %remote_addr, "duplicate connection to a peer without micelio extensions: keeping both until the peer closes one");
            let s = shared.clone();
            let grace = shared.config.duplicate_grace;
            shared.tracker.spawn(
                async move {
                    tokio::select! {
                        _ = s.cancel.cancelled() => {}
                        _ = sleep(grace) => settle_duplicate(&s, &node_id, conn_id),
                    }
                }
                .in_current_span(),
            );
        }
    }

    let (persist, evicted) = lock(&shared.known).on_connected(&info, now_unix());
    if let Some(store) = &shared.store {
        // Queued for the storage task: never waits on the disk.
        if let Some(rec) = persist {
            store.save(rec.node_id, rec.to_info());
        }
        if let Some(old) = evicted.filter(|e| e.confirmed) {
            store.remove(old.node_id);
        }
    }

    let span = info_span!("peer", peer = %node_id.short(12), dir = %direction);
    let close_reason = Arc::new(Mutex::new(None));
    let writer = writer_task(
        shared.clone(),
        sink,
        rx,
        cancel.clone(),
        close_reason.clone(),
    );
    shared.tracker.spawn(writer.instrument(span.clone()));
    let reader = reader_task(
        shared.clone(),
        conn_id,
        node_id,
        info.public_key,
        source,
        cancel,
        close_reason,
    );
    shared.tracker.spawn(reader.instrument(span));
    send_exchange(shared, &node_id);
    Ok(node_id)
}

/// How a freshly authenticated connection entered the peer table.
enum Claim {
    /// First connection to that peer.
    New,
    /// It replaced the existing connection (micelio rule).
    Replaced,
    /// Kept beside the existing one until the peer closes one (reference
    /// rule).
    Standby,
}

/// Enters a connection in the peer table, applying the duplicate rules:
///
/// - between micelio nodes (both hellos announce the extensions), keep the
///   connection dialled by the smaller NodeId ([`keep_new`]): both ends
///   decide alike;
/// - with a peer that does not (a reference node keeps whichever it
///   registered first and closes the later one, which may be the one we
///   would keep), close neither: the new connection becomes a standby and
///   whichever of the two the peer leaves open survives, so exactly one
///   remains and nobody redials. If the peer closes neither within
///   `duplicate_grace`, the micelio rule decides ([`settle_duplicate`]).
///
/// # Errors
/// `Duplicate` for a connection closed as a duplicate, `TooManyPeers` over
/// `max_peers`.
fn claim(shared: &Shared, conn: Conn, summary: &PeerSummary) -> Result<Claim, DialError> {
    let me = *shared.identity.node_id();
    let node_id = summary.node_id;
    let micelio_rule = summary.hello.speaks_extensions()
        && shared
            .config
            .features
            .iter()
            .any(|f| f == micelio_wire::limits::FEATURE_EXTENSIONS_V1);
    let mut reg = lock(&shared.registry);
    let full = reg.peers.len() >= shared.config.max_peers;
    let Some(old) = reg.peers.get_mut(&node_id) else {
        if full {
            return Err(DialError::TooManyPeers);
        }
        reg.peers.insert(
            node_id,
            Slot {
                conn,
                standby: None,
                summary: summary.clone(),
                gone: shared.cancel.child_token(),
                drop_logged: false,
            },
        );
        return Ok(Claim::New);
    };
    if !micelio_rule {
        if old.standby.is_some() {
            return Err(DialError::Duplicate(node_id));
        }
        old.standby = Some(Standby {
            conn,
            direction: summary.direction,
            remote_addr: summary.remote_addr.clone(),
        });
        return Ok(Claim::Standby);
    }
    if !keep_new(&me, &node_id, old.summary.direction, summary.direction) {
        return Err(DialError::Duplicate(node_id));
    }
    old.close_all();
    old.conn = conn;
    old.standby = None;
    old.summary = summary.clone();
    old.drop_logged = false;
    Ok(Claim::Replaced)
}

/// `duplicate_grace` after a standby was kept: if the peer still left both
/// connections open, close the one the micelio rule would close (both ends
/// of a pair that both wait agree on it).
fn settle_duplicate(shared: &Shared, node_id: &NodeId, standby_id: u64) {
    let me = *shared.identity.node_id();
    let reg = lock(&shared.registry);
    let Some(slot) = reg.peers.get(node_id) else {
        return;
    };
    let Some(sb) = slot.standby.as_ref().filter(|sb| sb.conn.id == standby_id) else {
        return;
    };
    shared
        .counters
        .duplicates_closed
        .fetch_add(1, Ordering::Relaxed);
    if keep_new(&me, node_id, slot.summary.direction, sb.direction) {
        info!(peer = %node_id.short(12), "peer left both connections open: closing the older one");
        slot.conn.cancel.cancel();
    } else {
        info!(peer = %node_id.short(12), "peer left both connections open: closing the newer one");
        sb.conn.cancel.cancel();
    }
}

/// A connection of `node_id` ended: forget it. Returns true if the peer is
/// gone (its last connection), false if it still has one (a standby was
/// promoted, or the standby itself ended).
fn release_conn(shared: &Shared, node_id: &NodeId, conn_id: u64) -> bool {
    let mut reg = lock(&shared.registry);
    let Some(slot) = reg.peers.get_mut(node_id) else {
        return false;
    };
    if slot.conn.id == conn_id {
        if let Some(sb) = slot.standby.take() {
            info!(peer = %node_id.short(12), remote = %sb.remote_addr, "peer closed one of two connections: keeping the other");
            shared
                .counters
                .standby_promoted
                .fetch_add(1, Ordering::Relaxed);
            slot.conn = sb.conn;
            slot.summary.direction = sb.direction;
            slot.summary.remote_addr = sb.remote_addr;
            slot.drop_logged = false;
            return false;
        }
        if let Some(slot) = reg.peers.remove(node_id) {
            slot.gone.cancel();
        }
        return true;
    }
    if slot
        .standby
        .as_ref()
        .is_some_and(|sb| sb.conn.id == conn_id)
    {
        slot.standby = None;
    }
    false
}

async fn writer_task(
    shared: Arc<Shared>,
    mut sink: Box<dyn FrameSink>,
    mut rx: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
    close_reason: Arc<Mutex<Option<String>>>,
) {
    let keepalive_frame = match frame::encode_envelope(&Envelope::keepalive()) {
        Ok(f) => f,
        Err(_) => Bytes::new(),
    };
    let keepalive = shared.config.keepalive_interval;
    let write_timeout = shared.config.write_timeout;
    let mut last_send = Instant::now();
    let reason = loop {
        let (frame, is_keepalive) = tokio::select! {
            biased;
            _ = cancel.cancelled() => break None,
            f = rx.recv() => match f {
                Some(f) => (f, false),
                None => break None,
            },
            _ = sleep_until(last_send + keepalive) => (keepalive_frame.clone(), true),
        };
        match timeout(write_timeout, sink.send(&frame)).await {
            Ok(Ok(())) => {
                last_send = Instant::now();
                if is_keepalive {
                    shared
                        .counters
                        .keepalives_sent
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    shared.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => break Some(format!("write failed: {e}")),
            Err(_) => break Some(format!("write timed out after {write_timeout:?}")),
        }
    };
    if let Some(reason) = reason {
        debug!("closing connection: {reason}");
        lock(&close_reason).get_or_insert(reason);
    }
    cancel.cancel();
    let _ = timeout(Duration::from_secs(1), sink.close()).await;
}

async fn reader_task(
    shared: Arc<Shared>,
    conn_id: u64,
    node_id: NodeId,
    key: PublicKey,
    mut source: Box<dyn FrameSource>,
    cancel: CancellationToken,
    close_reason: Arc<Mutex<Option<String>>>,
) {
    let idle = shared.config.idle_timeout;
    let local_reason = || {
        lock(&close_reason).clone().unwrap_or_else(|| {
            if shared.cancel.is_cancelled() {
                "shutting down".to_owned()
            } else {
                "closed locally".to_owned()
            }
        })
    };
    let reason = loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => break local_reason(),
            r = timeout(idle, source.recv()) => r,
        };
        let env = match received {
            Err(_) => {
                shared
                    .counters
                    .idle_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                break format!("idle for {idle:?}");
            }
            Ok(Ok(Some(env))) => env,
            Ok(Ok(None)) => break "closed by peer".to_owned(),
            Ok(Err(LinkError::BadEnvelope(e))) => {
                shared
                    .counters
                    .bad_envelopes
                    .fetch_add(1, Ordering::Relaxed);
                debug!("dropped frame with an undecodable envelope: {e}");
                continue;
            }
            Ok(Err(e)) => break e.to_string(),
        };
        shared
            .counters
            .frames_received
            .fetch_add(1, Ordering::Relaxed);
        match env.kind() {
            MsgType::Keepalive => {}
            MsgType::Hello | MsgType::HelloAck => {
                shared.counters.late_hellos.fetch_add(1, Ordering::Relaxed);
                debug!("dropped a hello received after the handshake");
            }
            MsgType::PeerExchange => handle_exchange(&shared, &node_id, &key, &env),
            _ => {
                let event = PeerEvent::Message {
                    from: node_id,
                    envelope: env,
                };
                tokio::select! {
                    _ = cancel.cancelled() => break local_reason(),
                    r = shared.events.send(event) => {
                        if r.is_ok() {
                            shared.counters.messages_delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    };
    cancel.cancel();
    if release_conn(&shared, &node_id, conn_id) {
        info!(peer = %node_id, "peer disconnected: {reason}");
        let _ = shared
            .events
            .send(PeerEvent::Down { node_id, reason })
            .await;
    }
}

fn handle_exchange(shared: &Shared, from: &NodeId, key: &PublicKey, env: &Envelope) {
    let reject = |why: &str| {
        shared
            .counters
            .peer_exchange_rejected
            .fetch_add(1, Ordering::Relaxed);
        debug!(peer = %from.short(12), "rejected peer exchange: {why}");
    };
    if !from.matches_str(&env.sender_id) {
        return reject("sender is not the connected peer");
    }
    if env.verify_with(key).is_err() {
        return reject("bad signature");
    }
    let Ok(px) = PeerExchange::decode_wire(env.payload.clone()) else {
        return reject("payload does not decode");
    };
    let outcome = lock(&shared.known).merge(from, &px.peers, now_unix());
    let dropped = outcome.drops.total();
    let c = &shared.counters;
    c.peer_entries_dropped.fetch_add(dropped, Ordering::Relaxed);
    c.peer_entries_quota
        .fetch_add(outcome.drops.sender_quota, Ordering::Relaxed);
    c.known_peers_evicted
        .fetch_add(outcome.evicted.len() as u64, Ordering::Relaxed);
    if dropped > 0 {
        // One line per message, with the counts by reason.
        let summary = outcome.drops.summary();
        match lock(&shared.exchange_log).allow(Instant::now()) {
            Some(held) => {
                info!(peer = %from.short(12), dropped, held_back = held, "dropped peer-exchange entries: {summary}");
            }
            None => {
                debug!(peer = %from.short(12), dropped, "dropped peer-exchange entries: {summary}")
            }
        }
    }
    if outcome.added + outcome.refreshed > 0 {
        debug!(peer = %from.short(12), added = outcome.added, refreshed = outcome.refreshed, "merged peer exchange");
    }
    if let Some(store) = &shared.store {
        for old in outcome.evicted.iter().filter(|e| e.confirmed) {
            store.remove(old.node_id);
        }
    }
}

fn send_exchange(shared: &Shared, to: &NodeId) {
    let me = shared
        .local_hello
        .advertise_addr
        .as_ref()
        .map(|addr| PeerInfo {
            node_id: shared.identity.node_id().to_string(),
            addr: addr.clone(),
            reachable: true,
            ed25519_pubkey: shared.identity.public_key().as_bytes().to_vec().into(),
            last_seen: now_unix(),
        });
    let peers = lock(&shared.known).exchange_list(to, me);
    if peers.is_empty() {
        return;
    }
    let env = EnvelopeBuilder::new(MsgType::PeerExchange, PeerExchange { peers }.encode_wire())
        .sign(&shared.identity);
    match frame::encode_envelope(&env) {
        Ok(f) => {
            let _ = send_frame(shared, to, f);
        }
        Err(e) => warn!("peer exchange too large to send: {e}"),
    }
}

async fn bootstrap_loop(shared: Arc<Shared>, addr: String) {
    let schedule = if shared.config.bootstrap_backoff.is_empty() {
        vec![Duration::from_secs(1)]
    } else {
        shared.config.bootstrap_backoff.clone()
    };
    let mut attempt = 0usize;
    loop {
        let delay = match dial(&shared, &addr).await {
            Ok(id) | Err(DialError::Duplicate(id)) => {
                attempt = 0;
                let token = lock(&shared.registry)
                    .peers
                    .get(&id)
                    .map(|s| s.gone.clone());
                if let Some(token) = token {
                    tokio::select! {
                        _ = shared.cancel.cancelled() => return,
                        _ = token.cancelled() => {}
                    }
                }
                schedule[0]
            }
            Err(DialError::ShuttingDown) => return,
            Err(e) => {
                let delay = schedule[attempt.min(schedule.len() - 1)];
                attempt += 1;
                info!(addr = %addr, attempt, "bootstrap dial failed: {e}; retrying in {delay:?}");
                delay
            }
        };
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = sleep(delay) => {}
        }
    }
}

async fn maintenance_loop(shared: Arc<Shared>) {
    let mut exchange = tokio::time::interval(shared.config.exchange_interval);
    exchange.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut discovery = tokio::time::interval(shared.config.discovery_interval);
    discovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first ticks fire at once; peers get an exchange when they connect.
    exchange.tick().await;
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = exchange.tick() => {
                let ids: Vec<NodeId> = lock(&shared.registry).peers.keys().copied().collect();
                for id in ids {
                    send_exchange(&shared, &id);
                }
            }
            _ = discovery.tick() => discovery_round(&shared),
        }
    }
}

fn discovery_round(shared: &Arc<Shared>) {
    let candidates = {
        let mut reg = lock(&shared.registry);
        let room = shared
            .config
            .max_peers
            .saturating_sub(reg.peers.len() + reg.dialing.len());
        if room == 0 {
            return;
        }
        let mut skip: HashSet<NodeId> = reg.peers.keys().copied().collect();
        skip.extend(reg.dialing.iter().copied());
        skip.insert(*shared.identity.node_id());
        let mut rng = lock(&shared.rng);
        let c = lock(&shared.known).candidates(
            Instant::now(),
            &skip,
            &shared.bootstrap_addrs,
            room.min(micelio_wire::limits::DISCOVERY_DIALS_PER_ROUND),
            &mut *rng,
        );
        for p in &c {
            reg.dialing.insert(p.node_id);
        }
        c
    };
    for peer in candidates {
        let delay = jitter(shared.config.discovery_jitter, &mut *lock(&shared.rng));
        let s = shared.clone();
        shared.tracker.spawn(
            async move {
                tokio::select! {
                    _ = s.cancel.cancelled() => {}
                    _ = sleep(delay) => {
                        match dial(&s, &peer.addr).await {
                            Ok(_) | Err(DialError::Duplicate(_)) | Err(DialError::ShuttingDown) => {}
                            Err(e) => {
                                debug!(peer = %peer.node_id.short(12), addr = %peer.addr, "discovery dial failed: {e}");
                                // Failures are not persisted: only confirmed
                                // entries are, and a restart retries them.
                                let _ = lock(&s.known).record_failure(&peer.node_id, Instant::now());
                            }
                        }
                    }
                }
                lock(&s.registry).dialing.remove(&peer.node_id);
            }
            .in_current_span(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_rule_is_symmetric() {
        let a = *Identity::from_seed([1; 32]).node_id();
        let b = *Identity::from_seed([2; 32]).node_id();
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        use Direction::*;
        // On lo: its outbound (lo dialled) beats the inbound (hi dialled).
        assert!(keep_new(&lo, &hi, Inbound, Outbound));
        assert!(!keep_new(&lo, &hi, Outbound, Inbound));
        // On hi: the inbound (lo dialled) beats its outbound.
        assert!(keep_new(&hi, &lo, Outbound, Inbound));
        assert!(!keep_new(&hi, &lo, Inbound, Outbound));
        // Same direction twice: keep the first.
        assert!(!keep_new(&lo, &hi, Outbound, Outbound));
        assert!(!keep_new(&hi, &lo, Inbound, Inbound));
    }
}
