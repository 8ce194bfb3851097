//! Persistence of known peers, behind a small synchronous trait, kept off
//! the async runtime.
//!
//! This is the storage pattern of micelio (micelio-state follows it):
//!
//! 1. **A synchronous trait** ([`PeerStore`]: `load`, `save`, `remove`,
//!    `flush`) that knows nothing of async. Implementations may block.
//! 2. **Two implementations**: [`MemoryPeerStore`] for tests and embedders
//!    that persist nothing, and [`SledPeerStore`] on disk. No storage-crate
//!    type appears in the public API; [`StoreError`] carries a message and
//!    a boxed source.
//! 3. **One storage task owns the store** and runs every call in
//!    `spawn_blocking`, so a slow disk never stalls a runtime worker. It is
//!    fed by a bounded channel with `try_send` (callers never wait; a full
//!    queue drops the write, counted), coalesces queued writes to the same
//!    key into one, and logs failures at most once per period (counted
//!    each time).
//! 4. **Shutdown flushes and reports**: the owner sends a close command and
//!    gets the result of the final flush (bounded by a grace period).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use micelio_identity::NodeId;
use micelio_wire::WireMessage as _;
use micelio_wire::proto::PeerInfo;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

use crate::admission::LogGate;
use crate::task::TaskGroup;

/// The sled cache, set explicitly: sled's default is 1 GiB.
pub const SLED_CACHE_BYTES: u64 = 4 << 20;
/// The sled tree holding known peers.
pub const SLED_PEERS_TREE: &str = "peers";
/// How long [`SledPeerStore::open`] waits for a database lock still held by
/// a handle of this process that was just dropped.
pub const SLED_LOCK_WAIT: Duration = Duration::from_secs(2);
/// Writes queued for the storage task before further ones are dropped.
pub const STORE_QUEUE: usize = 1024;
/// Queued writes taken into one batch (one `spawn_blocking` call).
const STORE_BATCH: usize = 256;
/// Longest wait for the final flush on shutdown.
pub const STORE_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// At most one storage-failure log line per this period.
const STORE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage backend failed.
    #[error("{message}")]
    Backend {
        /// What failed, for operators.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The storage task is gone (it panicked, or the store was closed).
    #[error("the storage task stopped")]
    Stopped,
    /// The final flush did not finish within [`STORE_CLOSE_GRACE`].
    #[error("the peer store did not flush within {0:?}")]
    Timeout(Duration),
}

impl StoreError {
    /// A backend error: `what` failed because of `source`.
    pub fn backend(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let what = what.into();
        Self::Backend {
            message: format!("{what}: {source}"),
            source: Some(Box::new(source)),
        }
    }

    /// A backend error with a message only.
    pub fn message(message: impl Into<String>) -> Self {
        Self::Backend {
            message: message.into(),
            source: None,
        }
    }
}

/// What [`PeerStore::load`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadedPeers {
    /// Every stored record that decodes.
    pub peers: Vec<PeerInfo>,
    /// Stored records that did not decode (skipped).
    pub undecodable: usize,
}

/// Where known peers are persisted: keyed by NodeId, valued by the
/// `PeerInfo` record. Methods are synchronous and may block; the peer
/// manager calls them only from its storage task, off the runtime's worker
/// threads.
pub trait PeerStore: Send + 'static {
    /// Every stored record.
    ///
    /// # Errors
    /// [`StoreError`] if the store cannot be read at all.
    fn load(&mut self) -> Result<LoadedPeers, StoreError>;
    /// Stores (or replaces) the record of `node_id`.
    ///
    /// # Errors
    /// [`StoreError`] if the write failed.
    fn save(&mut self, node_id: &NodeId, peer: &PeerInfo) -> Result<(), StoreError>;
    /// Forgets the record of `node_id` (no error if absent).
    ///
    /// # Errors
    /// [`StoreError`] if the write failed.
    fn remove(&mut self, node_id: &NodeId) -> Result<(), StoreError>;
    /// Makes every write so far durable.
    ///
    /// # Errors
    /// [`StoreError`] if the flush failed.
    fn flush(&mut self) -> Result<(), StoreError>;
}

/// Locks a mutex, ignoring poisoning (every critical section here is one
/// map operation).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A store in memory, for tests and embedders that persist nothing. Clones
/// share the same records, so a "restarted" manager can be given a clone.
#[derive(Debug, Clone, Default)]
pub struct MemoryPeerStore {
    records: Arc<Mutex<BTreeMap<NodeId, PeerInfo>>>,
}

impl MemoryPeerStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        lock(&self.records).len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record of `node_id`, if stored.
    pub fn get(&self, node_id: &NodeId) -> Option<PeerInfo> {
        lock(&self.records).get(node_id).cloned()
    }
}

impl PeerStore for MemoryPeerStore {
    fn load(&mut self) -> Result<LoadedPeers, StoreError> {
        Ok(LoadedPeers {
            peers: lock(&self.records).values().cloned().collect(),
            undecodable: 0,
        })
    }

    fn save(&mut self, node_id: &NodeId, peer: &PeerInfo) -> Result<(), StoreError> {
        lock(&self.records).insert(*node_id, peer.clone());
        Ok(())
    }

    fn remove(&mut self, node_id: &NodeId) -> Result<(), StoreError> {
        lock(&self.records).remove(node_id);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Known peers in a sled database of their own (tree
/// [`SLED_PEERS_TREE`], key the NodeId in hex, value the `PeerInfo`
/// protobuf), with a small cache ([`SLED_CACHE_BYTES`]).
pub struct SledPeerStore {
    db: sled::Db,
    tree: sled::Tree,
}

impl std::fmt::Debug for SledPeerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledPeerStore").finish_non_exhaustive()
    }
}

impl SledPeerStore {
    /// Opens (or creates) the database directory `path`. Blocking: call it
    /// from `spawn_blocking` or before the runtime starts.
    ///
    /// # Errors
    /// [`StoreError::Backend`] naming the path if it cannot be opened.
    ///
    /// The database's file lock outlives a dropped handle for a moment
    /// (sled's flusher thread lets go of it on its next wake-up), so a
    /// store reopened right after it was closed in the same process finds
    /// it still held: that case is retried for up to
    /// [`SLED_LOCK_WAIT`] before it is an error.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_sled(path, SLED_CACHE_BYTES)?;
        let tree = db.open_tree(SLED_PEERS_TREE).map_err(|e| {
            StoreError::backend(
                format!("cannot open the peers tree in {}", path.display()),
                e,
            )
        })?;
        Ok(Self { db, tree })
    }
}

impl PeerStore for SledPeerStore {
    fn load(&mut self) -> Result<LoadedPeers, StoreError> {
        let mut out = LoadedPeers::default();
        for item in self.tree.iter() {
            match item {
                Ok((_, v)) => match PeerInfo::decode_wire(&v[..]) {
                    Ok(info) => out.peers.push(info),
                    Err(_) => out.undecodable += 1,
                },
                Err(_) => out.undecodable += 1,
            }
        }
        Ok(out)
    }

    fn save(&mut self, node_id: &NodeId, peer: &PeerInfo) -> Result<(), StoreError> {
        self.tree
            .insert(node_id.to_hex().as_bytes(), peer.encode_wire())
            .map_err(|e| StoreError::backend("saving a known peer", e))?;
        Ok(())
    }

    fn remove(&mut self, node_id: &NodeId) -> Result<(), StoreError> {
        self.tree
            .remove(node_id.to_hex().as_bytes())
            .map_err(|e| StoreError::backend("removing a known peer", e))?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map_err(|e| StoreError::backend("flushing known peers", e))?;
        Ok(())
    }
}

/// Opens (or creates) the sled database directory `path` with a cache of
/// `cache_bytes` (set explicitly: sled's default is 1 GiB). micelio's sled
/// stores (known peers here, the state map in micelio-state) open their
/// databases through it. Blocking.
///
/// The database's file lock outlives a dropped handle for a moment (sled's
/// flusher thread lets go of it on its next wake-up), so a database reopened
/// right after it was closed in the same process finds it still held: that
/// case is retried for up to [`SLED_LOCK_WAIT`] before it is an error.
///
/// # Errors
/// [`StoreError::Backend`] naming the path if it cannot be opened.
pub fn open_sled(path: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    open_sled_in(path, cache_bytes, sled::Mode::LowSpace)
}

/// [`open_sled`] in sled's `mode`: `LowSpace` (sled's default, compacts
/// eagerly) or `HighThroughput` (writes faster, uses more disk).
///
/// # Errors
/// As [`open_sled`].
pub fn open_sled_in(
    path: &Path,
    cache_bytes: u64,
    mode: sled::Mode,
) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(mode)
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(StoreError::backend(
                    format!("cannot open {}", path.display()),
                    e,
                ));
            }
        }
    }
}

/// Runs `f` on the store in `spawn_blocking`, handing the store back.
///
/// # Errors
/// [`StoreError::Stopped`] if the call panicked (the store is then lost).
pub(crate) async fn blocking<T: Send + 'static>(
    mut store: Box<dyn PeerStore>,
    f: impl FnOnce(&mut dyn PeerStore) -> T + Send + 'static,
) -> Result<(Box<dyn PeerStore>, T), StoreError> {
    tokio::task::spawn_blocking(move || {
        let out = f(store.as_mut());
        (store, out)
    })
    .await
    .map_err(|_| StoreError::Stopped)
}

/// Counters of the storage task.
#[derive(Debug, Default)]
pub(crate) struct StoreCounters {
    pub(crate) writes: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

enum Op {
    Save(PeerInfo),
    Remove,
}

enum Cmd {
    Write(NodeId, Op),
    Close(oneshot::Sender<Result<(), StoreError>>),
    /// Test-only fault: the storage task panics.
    #[cfg(test)]
    Panic,
}

/// The handle of the storage task: queue writes without waiting, close
/// with a final flush.
pub(crate) struct StoreHandle {
    tx: mpsc::Sender<Cmd>,
    task: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<StoreCounters>,
    log: Arc<Mutex<LogGate>>,
}

impl StoreHandle {
    /// Starts the storage task owning `store`, watched by `tasks` (a panic
    /// is reported there; the task ends with [`StoreHandle::close`]).
    pub(crate) fn spawn(store: Box<dyn PeerStore>, tasks: &TaskGroup) -> Self {
        let (tx, rx) = mpsc::channel(STORE_QUEUE);
        let counters = Arc::new(StoreCounters::default());
        let log = Arc::new(Mutex::new(LogGate::new(STORE_LOG_EVERY)));
        let task = tasks.spawn(
            "the storage task",
            store_task(store, rx, counters.clone(), log.clone()),
        );
        Self {
            tx,
            task: Mutex::new(Some(task)),
            counters,
            log,
        }
    }

    pub(crate) fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// Test-only fault: makes the storage task panic.
    #[cfg(test)]
    pub(crate) fn panic_for_tests(&self) {
        self.queue(Cmd::Panic);
    }

    fn queue(&self, cmd: Cmd) {
        if self.tx.try_send(cmd).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(held) = lock(&self.log).allow(Instant::now()) {
                warn!(
                    held_back = held,
                    "peer store queue full: a known-peer write was dropped"
                );
            }
        }
    }

    /// Queues a save of `peer`; never waits (a full queue drops it, counted).
    pub(crate) fn save(&self, node_id: NodeId, peer: PeerInfo) {
        self.queue(Cmd::Write(node_id, Op::Save(peer)));
    }

    /// Queues a removal; never waits.
    pub(crate) fn remove(&self, node_id: NodeId) {
        self.queue(Cmd::Write(node_id, Op::Remove));
    }

    /// Writes what is queued, flushes, stops the task and reports the
    /// flush. Later calls return `Ok(())`.
    ///
    /// # Errors
    /// The flush's [`StoreError`], [`StoreError::Timeout`] after
    /// [`STORE_CLOSE_GRACE`], or [`StoreError::Stopped`] if the task died.
    pub(crate) async fn close(&self) -> Result<(), StoreError> {
        let Some(task) = lock(&self.task).take() else {
            return Ok(());
        };
        let (done, result) = oneshot::channel();
        let closing = async {
            self.tx
                .send(Cmd::Close(done))
                .await
                .map_err(|_| StoreError::Stopped)?;
            let r = result.await.map_err(|_| StoreError::Stopped)?;
            // The watcher never fails: the task's own end (a panic) is
            // reported by the group that watches it.
            task.await.map_err(|_| StoreError::Stopped)?;
            r
        };
        tokio::time::timeout(STORE_CLOSE_GRACE, closing)
            .await
            .unwrap_or(Err(StoreError::Timeout(STORE_CLOSE_GRACE)))
    }
}

async fn store_task(
    store: Box<dyn PeerStore>,
    mut rx: mpsc::Receiver<Cmd>,
    counters: Arc<StoreCounters>,
    log: Arc<Mutex<LogGate>>,
) {
    let mut store = Some(store);
    while let Some(first) = rx.recv().await {
        // Coalesce: the last write queued for a key wins.
        let mut batch: HashMap<NodeId, Op> = HashMap::new();
        let mut close = None;
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(cmd) = next.take() {
            taken += 1;
            match cmd {
                Cmd::Write(id, op) => {
                    batch.insert(id, op);
                }
                Cmd::Close(reply) => {
                    close = Some(reply);
                    break;
                }
                #[cfg(test)]
                Cmd::Panic => panic!("test fault: the storage task panics"),
            }
            if taken < STORE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let Some(s) = store.take() else {
            if let Some(reply) = close {
                let _ = reply.send(Err(StoreError::Stopped));
                return;
            }
            continue;
        };
        let flush = close.is_some();
        let ran = blocking(s, move |s| {
            let mut errors = Vec::new();
            let writes = batch.len() as u64;
            for (id, op) in batch {
                let r = match op {
                    Op::Save(info) => s.save(&id, &info),
                    Op::Remove => s.remove(&id),
                };
                if let Err(e) = r {
                    errors.push(e);
                }
            }
            let flushed = if flush { s.flush() } else { Ok(()) };
            (writes, errors, flushed)
        })
        .await;
        let flushed = match ran {
            Ok((s, (writes, errors, flushed))) => {
                store = Some(s);
                counters.writes.fetch_add(writes, Ordering::Relaxed);
                counters
                    .errors
                    .fetch_add(errors.len() as u64, Ordering::Relaxed);
                if let Some(e) = errors.first()
                    && let Some(held) = lock(&log).allow(Instant::now())
                {
                    warn!(
                        failed = errors.len(),
                        held_back = held,
                        "peer store write failed: {e}"
                    );
                }
                flushed
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                warn!("peer store call panicked; known peers are no longer persisted");
                Err(e)
            }
        };
        if let Some(reply) = close {
            // Dropping a store may block too (sled flushes and joins its
            // flusher thread): do it off the runtime, before answering, so
            // that the store is released when `close` returns.
            release(store).await;
            let _ = reply.send(flushed);
            return;
        }
    }
    release(store).await;
}

/// Drops the store in `spawn_blocking`.
async fn release(store: Option<Box<dyn PeerStore>>) {
    if let Some(store) = store {
        let _ = tokio::task::spawn_blocking(move || drop(store)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micelio_identity::Identity;

    fn rec(n: u8, addr: &str) -> (NodeId, PeerInfo) {
        let i = Identity::from_seed([n; 32]);
        let info = PeerInfo {
            node_id: i.node_id().to_string(),
            addr: addr.into(),
            reachable: true,
            ed25519_pubkey: i.public_key().as_bytes().to_vec().into(),
            last_seen: 7,
        };
        (*i.node_id(), info)
    }

    /// The suite every [`PeerStore`] passes: `open` opens the same store
    /// again (a restart).
    fn suite(open: &dyn Fn() -> Box<dyn PeerStore>) {
        let mut s = open();
        assert_eq!(s.load().unwrap().peers.len(), 0);
        let (a, ra) = rec(1, "127.0.0.1:1");
        let (b, rb) = rec(2, "127.0.0.1:2");
        s.save(&a, &ra).unwrap();
        s.save(&b, &rb).unwrap();
        let (_, ra2) = rec(1, "127.0.0.1:11");
        s.save(&a, &ra2).unwrap();
        s.remove(&b).unwrap();
        s.remove(&b).unwrap();
        s.flush().unwrap();
        assert_eq!(s.load().unwrap().peers, vec![ra2.clone()]);
        drop(s);
        let mut s = open();
        assert_eq!(s.load().unwrap().peers, vec![ra2], "survives a restart");
    }

    #[test]
    fn memory_store_passes_the_suite() {
        let shared = MemoryPeerStore::new();
        suite(&|| Box::new(shared.clone()));
    }

    #[test]
    fn sled_store_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers");
        suite(&|| Box::new(SledPeerStore::open(&path).unwrap()));
    }

    #[test]
    fn a_store_reopened_while_its_last_handle_lets_go_waits_for_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers");
        let first = SledPeerStore::open(&path).unwrap();
        // The old handle is released a little later, as sled's flusher
        // thread does after a drop.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let mut again = SledPeerStore::open(&path).expect("opened once the lock is free");
        assert!(again.load().unwrap().peers.is_empty());
        release.join().unwrap();
    }

    #[test]
    fn sled_store_skips_undecodable_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledPeerStore::open(dir.path()).unwrap();
        let (a, ra) = rec(1, "127.0.0.1:1");
        s.save(&a, &ra).unwrap();
        s.tree.insert(b"junk", b"\xff\xff".as_slice()).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!((loaded.peers.len(), loaded.undecodable), (1, 1));
    }

    #[test]
    fn sled_open_failure_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"bbolt").unwrap();
        let e = SledPeerStore::open(&file).unwrap_err();
        assert!(e.to_string().contains("not-a-dir"), "{e}");
    }

    fn group() -> TaskGroup {
        TaskGroup::new(tokio_util::sync::CancellationToken::new())
    }

    #[tokio::test]
    async fn the_task_coalesces_writes_and_flushes_on_close() {
        let mem = MemoryPeerStore::new();
        let h = StoreHandle::spawn(Box::new(mem.clone()), &group());
        let (a, ra) = rec(1, "127.0.0.1:1");
        let (_, ra2) = rec(1, "127.0.0.1:2");
        h.save(a, ra);
        h.save(a, ra2.clone());
        h.close().await.unwrap();
        assert_eq!(mem.get(&a), Some(ra2));
        assert_eq!(h.counters().writes.load(Ordering::Relaxed), 1, "coalesced");
        h.close().await.unwrap();
    }

    struct Failing;
    impl PeerStore for Failing {
        fn load(&mut self) -> Result<LoadedPeers, StoreError> {
            Ok(LoadedPeers::default())
        }
        fn save(&mut self, _: &NodeId, _: &PeerInfo) -> Result<(), StoreError> {
            Err(StoreError::message("disk on fire"))
        }
        fn remove(&mut self, _: &NodeId) -> Result<(), StoreError> {
            Err(StoreError::message("disk on fire"))
        }
        fn flush(&mut self) -> Result<(), StoreError> {
            Err(StoreError::message("flush failed"))
        }
    }

    #[tokio::test]
    async fn failures_are_counted_and_the_close_reports_the_flush() {
        let h = StoreHandle::spawn(Box::new(Failing), &group());
        let (a, ra) = rec(1, "127.0.0.1:1");
        h.save(a, ra);
        let e = h.close().await.unwrap_err();
        assert!(e.to_string().contains("flush failed"), "{e}");
        assert_eq!(h.counters().errors.load(Ordering::Relaxed), 1);
    }
}
