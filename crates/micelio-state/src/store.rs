//! Persistence of the state map, behind a synchronous trait, run on a
//! thread of its own so that the disk never stalls the async runtime.
//!
//! The storage pattern of micelio (see `micelio_transport::store`):
//! a synchronous trait ([`StateStore`]) with a memory and a sled
//! implementation, one owner of the store fed by a bounded queue, and a
//! flush that is reported on close. The state store differs in one point:
//! the map's values live only here (the map keeps metadata), so reads go
//! through the same queue as writes and see them in order.
//!
//! What is flushed when:
//! - a **local write** (`set`, `delete`, heartbeats) is acknowledged only
//!   after the batch that holds it was written and `flush()`ed (for sled:
//!   written to its log and fsynced);
//! - an **entry received** from a peer is written at once and flushed with
//!   the next local write, by sled's own flusher (every 500 ms), or on
//!   close, whichever comes first. A crash may lose the last half second of
//!   received entries; anti-entropy fetches them again from the peers;
//! - the **clock floor** (the highest timestamp the clock reached) is
//!   written with every batch, so that collected tombstones cannot make the
//!   reloaded clock go backwards.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use micelio_transport::StoreError;
use micelio_wire::WireMessage as _;
use micelio_wire::proto::StateEntry;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// The sled tree holding entries (key → protobuf `StateEntry`).
pub const SLED_ENTRIES_TREE: &str = "entries";
/// The sled tree holding the clock floor (`clock` → u64 big endian).
pub const SLED_META_TREE: &str = "meta";
/// Default sled cache: values are read from disk when they are not in it.
pub const DEFAULT_CACHE_BYTES: u64 = 32 << 20;
/// Commands queued to the storage thread; the state task waits when it is
/// full (backpressure, nothing is dropped).
pub const STORE_QUEUE: usize = 256;
/// Most queued writes taken into one batch.
const STORE_BATCH: usize = 512;
/// Longest wait for the final flush on close.
/// (Shorter than the binary's 5 s grace for the whole stop.)
pub const STORE_CLOSE_GRACE: Duration = Duration::from_secs(3);

/// One batch of changes: entries to put (each replaces its key), keys to
/// remove (collected tombstones) and the clock floor.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Entries to write.
    pub puts: Vec<StateEntry>,
    /// Keys to remove.
    pub removes: Vec<Box<str>>,
    /// The clock's value when the batch was made.
    pub clock: u64,
}

/// What reading a store back found, besides the entries themselves (which
/// [`StateStore::load`] hands over one at a time).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Entries handed over.
    pub entries: u64,
    /// The clock floor written last.
    pub clock: u64,
    /// Records that did not decode (skipped and counted).
    pub undecodable: u64,
}

/// Storage of the state map. Implementations may block: the service calls
/// them on its storage thread only.
pub trait StateStore: Send + 'static {
    /// Reads everything back, handing each entry to `each` in key order
    /// (one at a time, so that a million entries are never all in memory
    /// at once).
    ///
    /// # Errors
    /// The backend failed.
    fn load(&mut self, each: &mut dyn FnMut(StateEntry)) -> Result<Loaded, StoreError>;
    /// Writes a batch (not necessarily durable until [`StateStore::flush`]).
    ///
    /// # Errors
    /// The backend failed.
    fn apply(&mut self, batch: &Batch) -> Result<(), StoreError>;
    /// Makes every applied batch durable.
    ///
    /// # Errors
    /// The backend failed.
    fn flush(&mut self) -> Result<(), StoreError>;
    /// The entry of `key`, if stored.
    ///
    /// # Errors
    /// The backend failed or the record does not decode.
    fn get(&mut self, key: &str) -> Result<Option<StateEntry>, StoreError>;
    /// Bytes the store occupies on disk, if it knows.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }
}

/// A store in memory: for tests and for embedders that persist nothing.
#[derive(Debug, Default, Clone)]
pub struct MemoryStateStore {
    entries: BTreeMap<String, StateEntry>,
    clock: u64,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl StateStore for MemoryStateStore {
    fn load(&mut self, each: &mut dyn FnMut(StateEntry)) -> Result<Loaded, StoreError> {
        for e in self.entries.values() {
            each(e.clone());
        }
        Ok(Loaded {
            entries: self.entries.len() as u64,
            clock: self.clock,
            undecodable: 0,
        })
    }

    fn apply(&mut self, batch: &Batch) -> Result<(), StoreError> {
        for e in &batch.puts {
            self.entries.insert(e.key.clone(), e.clone());
        }
        for k in &batch.removes {
            self.entries.remove(&**k);
        }
        self.clock = batch.clock;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn get(&mut self, key: &str) -> Result<Option<StateEntry>, StoreError> {
        Ok(self.entries.get(key).cloned())
    }
}

/// The state map on disk: a sled database with the trees
/// [`SLED_ENTRIES_TREE`] and [`SLED_META_TREE`].
pub struct SledStateStore {
    db: sled::Db,
    entries: sled::Tree,
    meta: sled::Tree,
    path: std::path::PathBuf,
}

impl std::fmt::Debug for SledStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStateStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SledStateStore {
    /// Opens (or creates) the database directory `path` with a sled cache
    /// of `cache_bytes`, in sled's high-throughput mode. Blocking.
    ///
    /// # Errors
    /// [`StoreError::Backend`] naming the path.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        // Throughput over compactness: a fresh node writes a whole mesh's
        // state at once (a 1,000,000-entry catch-up took 86.7 s in
        // LowSpace mode, 76.7 s in this one; cut midway, 257 s and 107 s).
        let db =
            micelio_transport::store::open_sled_in(path, cache_bytes, sled::Mode::HighThroughput)?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|e| {
                StoreError::backend(format!("cannot open {name} in {}", path.display()), e)
            })
        };
        Ok(Self {
            entries: tree(SLED_ENTRIES_TREE)?,
            meta: tree(SLED_META_TREE)?,
            db,
            path: path.to_owned(),
        })
    }
}

impl StateStore for SledStateStore {
    fn load(&mut self, each: &mut dyn FnMut(StateEntry)) -> Result<Loaded, StoreError> {
        let mut out = Loaded::default();
        for item in self.entries.iter() {
            let (_, v) = item.map_err(|e| StoreError::backend("reading the state", e))?;
            match StateEntry::decode_wire(&v[..]) {
                Ok(e) => {
                    out.entries += 1;
                    each(e);
                }
                Err(_) => out.undecodable += 1,
            }
        }
        if let Some(v) = self
            .meta
            .get(b"clock")
            .map_err(|e| StoreError::backend("reading the clock floor", e))?
            && let Ok(b) = <[u8; 8]>::try_from(&v[..])
        {
            out.clock = u64::from_be_bytes(b);
        }
        Ok(out)
    }

    fn apply(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for e in &batch.puts {
            b.insert(e.key.as_bytes(), e.encode_wire());
        }
        for k in &batch.removes {
            b.remove(k.as_bytes());
        }
        self.entries
            .apply_batch(b)
            .map_err(|e| StoreError::backend("writing state entries", e))?;
        self.meta
            .insert(b"clock", &batch.clock.to_be_bytes())
            .map_err(|e| StoreError::backend("writing the clock floor", e))?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map_err(|e| StoreError::backend("flushing the state", e))?;
        Ok(())
    }

    fn get(&mut self, key: &str) -> Result<Option<StateEntry>, StoreError> {
        let Some(v) = self
            .entries
            .get(key.as_bytes())
            .map_err(|e| StoreError::backend("reading a state entry", e))?
        else {
            return Ok(None);
        };
        StateEntry::decode_wire(&v[..])
            .map(Some)
            .map_err(|e| StoreError::backend(format!("decoding the stored entry {key:?}"), e))
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.db.size_on_disk().ok()
    }
}

enum Command {
    Write {
        batch: Batch,
        durable: bool,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    Get {
        keys: Vec<Box<str>>,
        reply: oneshot::Sender<Vec<StateEntry>>,
    },
    DiskBytes(oneshot::Sender<Option<u64>>),
    Close(oneshot::Sender<Result<(), StoreError>>),
}

/// The storage thread's handle: commands are carried out in the order
/// they were sent, so a read sees every write queued before it.
#[derive(Debug, Clone)]
pub(crate) struct StoreThread {
    tx: mpsc::Sender<Command>,
    /// Writes and reads the backend failed, counted by the thread.
    failures: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Write { .. } => "Write",
            Self::Get { .. } => "Get",
            Self::DiskBytes(_) => "DiskBytes",
            Self::Close(_) => "Close",
        })
    }
}

impl StoreThread {
    /// Starts the thread that owns `store`.
    pub(crate) fn spawn(store: Box<dyn StateStore>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(STORE_QUEUE);
        let failures = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = failures.clone();
        std::thread::Builder::new()
            .name("micelio-state-store".into())
            .spawn(move || run(store, rx, &counted))?;
        Ok(Self { tx, failures })
    }

    /// Backend writes and reads that failed so far.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves when the thread has stopped (its queue is closed): after
    /// `close`, or because it died.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Queues a batch; `done` hears once it is written (and flushed when
    /// `durable`). Waits while the queue is full.
    pub(crate) async fn write(
        &self,
        batch: Batch,
        durable: bool,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) -> Result<(), StoreError> {
        self.tx
            .send(Command::Write {
                batch,
                durable,
                done,
            })
            .await
            .map_err(|_| StoreError::Stopped)
    }

    /// Queues a read of `keys`; the stored entries (missing ones left out)
    /// arrive on the returned receiver.
    pub(crate) async fn get(
        &self,
        keys: Vec<Box<str>>,
    ) -> Result<oneshot::Receiver<Vec<StateEntry>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Get { keys, reply })
            .await
            .map_err(|_| StoreError::Stopped)?;
        Ok(rx)
    }

    /// Bytes on disk, if the store knows.
    pub(crate) async fn disk_bytes(&self) -> Option<u64> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::DiskBytes(reply)).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Flushes, closes the store and reports the flush, within
    /// [`STORE_CLOSE_GRACE`].
    pub(crate) async fn close(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Close(reply))
            .await
            .map_err(|_| StoreError::Stopped)?;
        match tokio::time::timeout(STORE_CLOSE_GRACE, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::Timeout(STORE_CLOSE_GRACE)),
        }
    }
}

/// The storage thread: takes queued writes in batches, writes them, flushes
/// when one of them is durable, then answers them all.
fn run(
    mut store: Box<dyn StateStore>,
    mut rx: mpsc::Receiver<Command>,
    counted: &std::sync::atomic::AtomicU64,
) {
    let mut failures = 0u64;
    let mut next = rx.blocking_recv();
    while let Some(cmd) = next.take() {
        match cmd {
            Command::Write {
                batch,
                durable,
                done,
            } => {
                let mut merged = batch;
                let mut durable = durable;
                let mut waiters: Vec<oneshot::Sender<Result<(), StoreError>>> =
                    done.into_iter().collect();
                // Take more queued writes into the same batch.
                let mut taken = 1;
                while taken < STORE_BATCH {
                    match rx.try_recv() {
                        Ok(Command::Write {
                            batch,
                            durable: d,
                            done,
                        }) => {
                            merged.puts.extend(batch.puts);
                            merged.removes.extend(batch.removes);
                            merged.clock = merged.clock.max(batch.clock);
                            durable |= d;
                            waiters.extend(done);
                            taken += 1;
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = store
                    .apply(&merged)
                    .and_then(|()| if durable { store.flush() } else { Ok(()) });
                if let Err(e) = &result {
                    failures += 1;
                    counted.store(failures, std::sync::atomic::Ordering::Relaxed);
                    if failures == 1 || failures.is_power_of_two() {
                        warn!(error = %e, failures, "state storage failed");
                    }
                }
                for w in waiters {
                    let r = match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(StoreError::message(e.to_string())),
                    };
                    let _ = w.send(r);
                }
            }
            Command::Get { keys, reply } => {
                let mut out = Vec::with_capacity(keys.len());
                for k in &keys {
                    match store.get(k) {
                        Ok(Some(e)) => out.push(e),
                        Ok(None) => {}
                        Err(e) => {
                            failures += 1;
                            counted.store(failures, std::sync::atomic::Ordering::Relaxed);
                            if failures == 1 || failures.is_power_of_two() {
                                warn!(error = %e, failures, "state storage read failed");
                            }
                        }
                    }
                }
                let _ = reply.send(out);
            }
            Command::DiskBytes(reply) => {
                let _ = reply.send(store.disk_bytes());
            }
            Command::Close(reply) => {
                // Refuse what comes after, before answering: a caller that
                // sends once `close` returned must get `Stopped`, not queue
                // into a thread that is going away.
                rx.close();
                let r = store.flush();
                drop(store);
                let _ = reply.send(r);
                return;
            }
        }
        if next.is_none() {
            next = rx.blocking_recv();
        }
    }
    // Every handle is gone: flush what was written.
    if let Err(e) = store.flush() {
        warn!(error = %e, "state storage: the final flush failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micelio_identity::Identity;

    fn entry(id: &Identity, sub: &str, ts: u64) -> StateEntry {
        let mut e = StateEntry {
            key: format!("{}/{sub}", id.node_id()),
            value: bytes::Bytes::from_static(b"v"),
            lamport_ts: ts,
            ..Default::default()
        };
        e.sign(id);
        e
    }

    fn suite(mut store: Box<dyn StateStore>, reopen: impl FnOnce() -> Box<dyn StateStore>) {
        let id = Identity::from_seed([3; 32]);
        let a = entry(&id, "a", 1);
        let b = entry(&id, "b", 2);
        store
            .apply(&Batch {
                puts: vec![a.clone(), b.clone()],
                removes: vec![],
                clock: 9,
            })
            .unwrap();
        store
            .apply(&Batch {
                puts: vec![],
                removes: vec![a.key.clone().into()],
                clock: 7,
            })
            .unwrap();
        store.flush().unwrap();
        assert_eq!(store.get(&b.key).unwrap(), Some(b.clone()));
        assert_eq!(store.get(&a.key).unwrap(), None);
        drop(store);
        let mut got = Vec::new();
        let loaded = reopen().load(&mut |e| got.push(e)).unwrap();
        assert_eq!(got, vec![b]);
        assert_eq!(loaded.entries, 1);
        assert_eq!(loaded.clock, 7, "the floor written last");
    }

    #[test]
    fn memory_store_passes_the_suite() {
        let shared = std::sync::Arc::new(std::sync::Mutex::new(MemoryStateStore::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<MemoryStateStore>>);
        impl StateStore for Shared {
            fn load(&mut self, each: &mut dyn FnMut(StateEntry)) -> Result<Loaded, StoreError> {
                self.0.lock().unwrap().load(each)
            }
            fn apply(&mut self, b: &Batch) -> Result<(), StoreError> {
                self.0.lock().unwrap().apply(b)
            }
            fn flush(&mut self) -> Result<(), StoreError> {
                Ok(())
            }
            fn get(&mut self, k: &str) -> Result<Option<StateEntry>, StoreError> {
                self.0.lock().unwrap().get(k)
            }
        }
        let again = shared.clone();
        suite(Box::new(Shared(shared)), move || Box::new(Shared(again)));
    }

    #[test]
    fn sled_store_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let store = SledStateStore::open(&path, 1 << 20).unwrap();
        suite(Box::new(store), || {
            Box::new(SledStateStore::open(&path, 1 << 20).unwrap())
        });
    }

    #[tokio::test]
    async fn the_thread_reads_what_was_queued_before() {
        let id = Identity::from_seed([4; 32]);
        let t = StoreThread::spawn(Box::new(MemoryStateStore::new())).unwrap();
        let e = entry(&id, "k", 1);
        t.write(
            Batch {
                puts: vec![e.clone()],
                removes: vec![],
                clock: 1,
            },
            false,
            None,
        )
        .await
        .unwrap();
        let got = t
            .get(vec![e.key.clone().into()])
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(got, vec![e]);
        let (done, rx) = oneshot::channel();
        t.write(Batch::default(), true, Some(done)).await.unwrap();
        rx.await.unwrap().unwrap();
        t.close().await.unwrap();
        assert!(t.get(vec![]).await.is_err(), "closed");
    }
}
