//! A simulated network: the in-memory transport.
//!
//! Nodes of one [`MemoryNetwork`] reach each other by address without
//! sockets. Every frame is still encoded and decoded with the real frame
//! codec (so the frame limit holds), bytes and frames are counted, and links
//! between two nodes can be cut (live connections close, new dials are
//! refused) and restored. A share of frames can be lost, duplicated or
//! delivered out of order on every link ([`MemoryNetwork::set_loss`],
//! [`MemoryNetwork::set_duplication`], [`MemoryNetwork::set_reordering`]),
//! to test how a protocol copes with faults. Use it for simulations and for tests that need
//! hundreds of nodes; [`MemoryMesh`] spawns whole test nodes on it and
//! [`link`] connects two and waits until both see it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use micelio_identity::Identity;
//! use micelio_transport::Transport;
//! use micelio_transport::memory::MemoryNetwork;
//!
//! let net = MemoryNetwork::new();
//! let a = net.transport(&Identity::from_seed([1; 32]));
//! let b = net.transport(&Identity::from_seed([2; 32]));
//! let mut listener = b.listen("127.0.0.1:0").await?;
//! let addr = listener.local_addr();
//! let dialled = a.dial(&addr).await?;
//! let accepted = listener.accept().await?.upgrade().await?;
//! assert_eq!(dialled.remote_static, Identity::from_seed([2; 32]).x25519_public());
//! assert_eq!(accepted.remote_static, Identity::from_seed([1; 32]).x25519_public());
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::{Bytes, BytesMut};
use micelio_identity::{Identity, NodeId};
use micelio_wire::Envelope;
use micelio_wire::frame::FrameDecoder;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{LinkError, TransportError};

mod mesh;
use crate::link::{
    BoxFuture, Direction, FrameSink, FrameSource, Incoming, Link, Listener, Transport,
    next_envelope,
};
pub use mesh::{LinkUpError, MemoryMesh, MemoryNode, QUIET, link, linked};

/// Frames buffered per direction of a simulated connection.
const LINK_BUFFER: usize = 64;
/// Pending connections per simulated listener.
const ACCEPT_BACKLOG: usize = 128;
/// First port handed out for `:0` listeners.
const FIRST_PORT: u16 = 20_000;

/// A simulated network shared by any number of [`MemoryTransport`]s.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<Net>>,
    stats: Arc<NetCounters>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Net {
    listeners: HashMap<SocketAddr, ListenerEntry>,
    cut: HashSet<(NodeId, NodeId)>,
    conns: Vec<Weak<ConnGuard>>,
    next_port: u16,
}

struct ListenerEntry {
    node_id: NodeId,
    x25519: [u8; 32],
    tx: mpsc::Sender<MemIncoming>,
}

#[derive(Default)]
struct NetCounters {
    frames: AtomicU64,
    bytes: AtomicU64,
    /// Frames lost on purpose (see [`MemoryNetwork::set_loss`]).
    lost: AtomicU64,
    /// Share of frames lost, in parts per million.
    loss_ppm: AtomicU32,
    /// Seed of the loss decisions.
    loss_seed: AtomicU64,
    /// Frames sent twice on purpose.
    duplicated: AtomicU64,
    /// Share of frames sent twice, in parts per million.
    dup_ppm: AtomicU32,
    /// Frames held back and delivered after the next one.
    reordered: AtomicU64,
    /// Share of frames held back, in parts per million.
    reorder_ppm: AtomicU32,
}

/// `fraction` (clamped to 0.0–1.0, NaN as 0) in parts per million.
fn to_ppm(fraction: f64) -> u32 {
    let fraction = if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    };
    ((fraction * f64::from(PPM)).round() as u32).min(PPM)
}

/// Salts that make the duplication and reordering rolls independent of
/// the loss roll.
const DUP_SALT: u64 = 0x6475_706c_6963_6174;
const REORDER_SALT: u64 = 0x7265_6f72_6465_7221;

/// One million: the denominator of [`NetCounters::loss_ppm`].
const PPM: u32 = 1_000_000;

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A number for the direction `from` → `to` of a link, the same for every
/// connection between the two.
fn direction_key(from: &NodeId, to: &NodeId) -> u64 {
    let word = |id: &NodeId| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&id.as_bytes()[..8]);
        u64::from_le_bytes(w)
    };
    mix(word(from)) ^ word(to).rotate_left(17)
}

/// Shared by the four halves of one simulated connection; cancelling it
/// closes the connection in both directions.
struct ConnGuard {
    a: NodeId,
    b: NodeId,
    token: CancellationToken,
}

fn pair(a: &NodeId, b: &NodeId) -> (NodeId, NodeId) {
    if a <= b { (*a, *b) } else { (*b, *a) }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        // Short critical sections only, never across an await; a poisoned
        // lock means a panic elsewhere, and the state is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A transport for the node of `identity` on this network.
    pub fn transport(&self, identity: &Identity) -> MemoryTransport {
        MemoryTransport {
            net: self.clone(),
            node_id: *identity.node_id(),
            x25519: identity.x25519_public(),
        }
    }

    /// Cuts the link between two nodes: their live connections close, and
    /// dials between them are refused until [`MemoryNetwork::restore`].
    pub fn cut(&self, a: &NodeId, b: &NodeId) {
        let key = pair(a, b);
        let mut net = self.lock();
        net.cut.insert(key);
        net.conns.retain(|w| match w.upgrade() {
            Some(c) => {
                if pair(&c.a, &c.b) == key {
                    c.token.cancel();
                    false
                } else {
                    true
                }
            }
            None => false,
        });
    }

    /// Restores the link between two nodes.
    pub fn restore(&self, a: &NodeId, b: &NodeId) {
        self.lock().cut.remove(&pair(a, b));
    }

    /// Whether the link between two nodes is cut.
    pub fn is_cut(&self, a: &NodeId, b: &NodeId) -> bool {
        self.lock().cut.contains(&pair(a, b))
    }

    /// Frames sent over the whole network so far.
    pub fn frames_sent(&self) -> u64 {
        self.stats.frames.load(Ordering::Relaxed)
    }

    /// Frame bytes (headers included) sent over the whole network so far.
    pub fn bytes_sent(&self) -> u64 {
        self.stats.bytes.load(Ordering::Relaxed)
    }

    /// Loses a share `fraction` (0.0 to 1.0, clamped; 0.1 is 10 %) of the
    /// frames sent on every link from now on, live connections included,
    /// with the loss seed left as it is (0 unless
    /// [`MemoryNetwork::set_loss_seeded`] set another). A lost frame
    /// vanishes silently: its send succeeds, it is counted in
    /// [`MemoryNetwork::frames_sent`], [`MemoryNetwork::bytes_sent`] and
    /// [`MemoryNetwork::frames_lost`], and the receiver never sees it.
    ///
    /// The first frame of each direction of a connection (the hello, or
    /// its ack) is never lost, so connections still form; everything after
    /// it may be, keepalives and peer exchanges included. Whether a frame
    /// is lost is a hash of the seed, the direction (the two node ids) and
    /// the frame's position on that connection: with the same seed the
    /// same frames of the same conversation are lost, whatever the thread
    /// timing between links.
    pub fn set_loss(&self, fraction: f64) {
        self.stats
            .loss_ppm
            .store(to_ppm(fraction), Ordering::Relaxed);
    }

    /// Sends a share `fraction` (0.0 to 1.0, clamped) of the frames on
    /// every link twice from now on: the receiver gets the same frame two
    /// times in a row. The first frame of each direction never is. Which
    /// frames is decided as for [`MemoryNetwork::set_loss`], with the same
    /// seed.
    pub fn set_duplication(&self, fraction: f64) {
        self.stats
            .dup_ppm
            .store(to_ppm(fraction), Ordering::Relaxed);
    }

    /// Holds back a share `fraction` (0.0 to 1.0, clamped) of the frames
    /// on every link from now on and delivers each after the frame sent
    /// next on that connection (so the two arrive swapped; one frame is
    /// held at a time, and a held frame waits until another is sent). The
    /// first frame of each direction never is. Decided as for
    /// [`MemoryNetwork::set_loss`], with the same seed.
    pub fn set_reordering(&self, fraction: f64) {
        self.stats
            .reorder_ppm
            .store(to_ppm(fraction), Ordering::Relaxed);
    }

    /// Frames sent twice on purpose so far.
    pub fn frames_duplicated(&self) -> u64 {
        self.stats.duplicated.load(Ordering::Relaxed)
    }

    /// Frames delivered out of order on purpose so far.
    pub fn frames_reordered(&self) -> u64 {
        self.stats.reordered.load(Ordering::Relaxed)
    }

    /// [`MemoryNetwork::set_loss`] with the seed of the loss decisions.
    pub fn set_loss_seeded(&self, fraction: f64, seed: u64) {
        self.stats.loss_seed.store(seed, Ordering::Relaxed);
        self.set_loss(fraction);
    }

    /// The share of frames lost now (0.0 to 1.0, to a millionth).
    pub fn loss(&self) -> f64 {
        f64::from(self.stats.loss_ppm.load(Ordering::Relaxed)) / f64::from(PPM)
    }

    /// Frames lost on purpose so far (see [`MemoryNetwork::set_loss`]).
    pub fn frames_lost(&self) -> u64 {
        self.stats.lost.load(Ordering::Relaxed)
    }

    /// Live simulated connections.
    pub fn connection_count(&self) -> usize {
        let mut net = self.lock();
        net.conns.retain(|w| w.strong_count() > 0);
        net.conns
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| !c.token.is_cancelled())
            .count()
    }
}

/// One node's view of a [`MemoryNetwork`].
#[derive(Clone, Debug)]
pub struct MemoryTransport {
    net: MemoryNetwork,
    node_id: NodeId,
    x25519: [u8; 32],
}

fn parse_addr(addr: &str) -> Result<SocketAddr, TransportError> {
    addr.parse()
        .map_err(|_| TransportError::BadAddress(addr.to_owned()))
}

fn make_pair(
    net: &MemoryNetwork,
    guard: &Arc<ConnGuard>,
) -> ((MemSink, MemSource), (MemSink, MemSource)) {
    let (tx_ab, rx_ab) = mpsc::channel(LINK_BUFFER);
    let (tx_ba, rx_ba) = mpsc::channel(LINK_BUFFER);
    let end = |tx, rx, key| {
        (
            MemSink {
                tx: Some(tx),
                guard: guard.clone(),
                stats: net.stats.clone(),
                key,
                sent: 0,
                held: None,
            },
            MemSource {
                rx,
                guard: guard.clone(),
                buf: BytesMut::new(),
                decoder: FrameDecoder::new(),
            },
        )
    };
    (
        end(tx_ab, rx_ba, direction_key(&guard.a, &guard.b)),
        end(tx_ba, rx_ab, direction_key(&guard.b, &guard.a)),
    )
}

impl Transport for MemoryTransport {
    fn listen<'a>(
        &'a self,
        addr: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Listener>, TransportError>> {
        Box::pin(async move {
            let mut sock = parse_addr(addr)?;
            let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
            let mut net = self.net.lock();
            if sock.port() == 0 {
                loop {
                    net.next_port = net
                        .next_port
                        .max(FIRST_PORT)
                        .wrapping_add(1)
                        .max(FIRST_PORT);
                    sock.set_port(net.next_port);
                    if !net.listeners.contains_key(&sock) {
                        break;
                    }
                }
            }
            if net.listeners.contains_key(&sock) {
                return Err(TransportError::Io(io::ErrorKind::AddrInUse.into()));
            }
            net.listeners.insert(
                sock,
                ListenerEntry {
                    node_id: self.node_id,
                    x25519: self.x25519,
                    tx,
                },
            );
            Ok(Box::new(MemListener {
                net: self.net.clone(),
                addr: sock,
                rx,
            }) as Box<dyn Listener>)
        })
    }

    fn dial<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Link, TransportError>> {
        Box::pin(async move {
            let sock = parse_addr(addr)?;
            let refused = || TransportError::Io(io::ErrorKind::ConnectionRefused.into());
            let mut net = self.net.lock();
            let entry = net.listeners.get(&sock).ok_or_else(refused)?;
            if net.cut.contains(&pair(&self.node_id, &entry.node_id)) {
                return Err(refused());
            }
            let guard = Arc::new(ConnGuard {
                a: self.node_id,
                b: entry.node_id,
                token: CancellationToken::new(),
            });
            let ((dial_sink, dial_source), (acc_sink, acc_source)) = make_pair(&self.net, &guard);
            let incoming = MemIncoming {
                link: Link {
                    remote_static: self.x25519,
                    remote_addr: format!("mem:{}", self.node_id.short(12)),
                    direction: Direction::Inbound,
                    sink: Box::new(acc_sink),
                    source: Box::new(acc_source),
                },
            };
            entry.tx.try_send(incoming).map_err(|_| refused())?;
            let link = Link {
                remote_static: entry.x25519,
                remote_addr: sock.to_string(),
                direction: Direction::Outbound,
                sink: Box::new(dial_sink),
                source: Box::new(dial_source),
            };
            net.conns.retain(|w| w.strong_count() > 0);
            net.conns.push(Arc::downgrade(&guard));
            Ok(link)
        })
    }
}

struct MemListener {
    net: MemoryNetwork,
    addr: SocketAddr,
    rx: mpsc::Receiver<MemIncoming>,
}

impl Drop for MemListener {
    fn drop(&mut self) {
        self.net.lock().listeners.remove(&self.addr);
    }
}

impl Listener for MemListener {
    fn local_addr(&self) -> String {
        self.addr.to_string()
    }

    fn accept(&mut self) -> BoxFuture<'_, Result<Box<dyn Incoming>, TransportError>> {
        Box::pin(async move {
            match self.rx.recv().await {
                Some(i) => Ok(Box::new(i) as Box<dyn Incoming>),
                None => Err(TransportError::Closed),
            }
        })
    }
}

struct MemIncoming {
    link: Link,
}

impl Incoming for MemIncoming {
    fn remote_addr(&self) -> String {
        self.link.remote_addr.clone()
    }

    fn upgrade(self: Box<Self>) -> BoxFuture<'static, Result<Link, TransportError>> {
        let link = self.link;
        Box::pin(async move { Ok(link) })
    }
}

struct MemSink {
    tx: Option<mpsc::Sender<Bytes>>,
    guard: Arc<ConnGuard>,
    stats: Arc<NetCounters>,
    /// This direction's [`direction_key`].
    key: u64,
    /// Frames this sink sent (or lost) so far.
    sent: u64,
    /// A frame held back, delivered after the next one.
    held: Option<Bytes>,
}

impl MemSink {
    /// Whether the frame about to be sent is lost (never the first).
    fn loses_next(&self) -> bool {
        self.rolls(&self.stats.loss_ppm, 0)
    }

    /// Whether the frame about to be sent hits a fault of share `ppm`
    /// (never the first frame); `salt` tells the faults apart.
    fn rolls(&self, ppm: &AtomicU32, salt: u64) -> bool {
        let ppm = ppm.load(Ordering::Relaxed);
        if ppm == 0 || self.sent == 0 {
            return false;
        }
        let seed = self.stats.loss_seed.load(Ordering::Relaxed);
        let roll = mix(mix(seed ^ self.key ^ salt) ^ self.sent) % u64::from(PPM);
        roll < u64::from(ppm)
    }

    /// Delivers `bytes`, unless the connection closes first.
    async fn deliver(&self, bytes: Bytes) -> Result<(), LinkError> {
        let tx = self.tx.as_ref().ok_or(LinkError::Closed)?;
        tokio::select! {
            _ = self.guard.token.cancelled() => Err(LinkError::Closed),
            r = tx.send(bytes) => r.map_err(|_| LinkError::Closed),
        }
    }
}

impl FrameSink for MemSink {
    fn send<'a>(&'a mut self, frame: &'a [u8]) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            self.tx.as_ref().ok_or(LinkError::Closed)?;
            if self.guard.token.is_cancelled() {
                return Err(LinkError::Closed);
            }
            let lose = self.loses_next();
            let duplicate = self.rolls(&self.stats.dup_ppm, DUP_SALT);
            let hold = self.held.is_none() && self.rolls(&self.stats.reorder_ppm, REORDER_SALT);
            self.sent += 1;
            if lose {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                self.stats.frames.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
                return Ok(());
            }
            let bytes = Bytes::copy_from_slice(frame);
            self.stats.frames.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes
                .fetch_add(frame.len() as u64, Ordering::Relaxed);
            if hold {
                self.stats.reordered.fetch_add(1, Ordering::Relaxed);
                self.held = Some(bytes);
                return Ok(());
            }
            self.deliver(bytes.clone()).await?;
            if duplicate {
                self.stats.duplicated.fetch_add(1, Ordering::Relaxed);
                self.deliver(bytes).await?;
            }
            if let Some(held) = self.held.take() {
                self.deliver(held).await?;
            }
            Ok(())
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        self.tx = None;
        Box::pin(async {})
    }
}

struct MemSource {
    rx: mpsc::Receiver<Bytes>,
    guard: Arc<ConnGuard>,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl FrameSource for MemSource {
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Envelope>, LinkError>> {
        Box::pin(async move {
            loop {
                if let Some(env) = next_envelope(&self.decoder, &mut self.buf)? {
                    return Ok(Some(env));
                }
                tokio::select! {
                    _ = self.guard.token.cancelled() => return Err(LinkError::Closed),
                    chunk = self.rx.recv() => match chunk {
                        Some(c) => self.buf.extend_from_slice(&c),
                        None if self.buf.is_empty() => return Ok(None),
                        None => return Err(LinkError::Io(io::ErrorKind::UnexpectedEof.into())),
                    },
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use micelio_wire::{EnvelopeBuilder, MsgType, frame};

    use super::*;

    /// Sends `count` frames (after a first one) from a dialled link to the
    /// accepted end and returns how many of them arrived.
    async fn delivered(net: &MemoryNetwork, count: usize) -> usize {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let mut listener = net.transport(&b).listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr();
        let mut dialled = net.transport(&a).dial(&addr).await.unwrap();
        let mut accepted = listener.accept().await.unwrap().upgrade().await.unwrap();
        let env = EnvelopeBuilder::new(MsgType::Chat, Bytes::from_static(b"x")).sign(&a);
        let bytes = frame::encode_envelope(&env).unwrap();
        // Receive while sending: the link buffers only LINK_BUFFER frames.
        let reader = tokio::spawn(async move {
            let mut got = 0;
            while let Ok(Some(_)) = accepted.source.recv().await {
                got += 1;
            }
            got
        });
        for _ in 0..=count {
            dialled.sink.send(&bytes).await.unwrap();
        }
        dialled.sink.close().await;
        drop(dialled);
        let got = reader.await.unwrap();
        // The first frame is never lost.
        assert!(got >= 1);
        got - 1
    }

    #[tokio::test]
    async fn no_loss_loses_nothing() {
        let net = MemoryNetwork::new();
        assert_eq!(net.loss(), 0.0);
        assert_eq!(delivered(&net, 2_000).await, 2_000);
        assert_eq!(net.frames_lost(), 0);
        assert_eq!(net.frames_sent(), 2_001);
    }

    #[tokio::test]
    async fn loss_is_applied_at_about_its_rate_and_repeatably() {
        let net = MemoryNetwork::new();
        net.set_loss_seeded(0.1, 7);
        assert_eq!(net.loss(), 0.1);
        let got = delivered(&net, 10_000).await;
        let lost = 10_000 - got;
        assert_eq!(net.frames_lost(), lost as u64);
        // 10 % of 10,000, binomial: σ = 30; allow well over 5σ.
        assert!((800..=1_200).contains(&lost), "lost {lost}");
        // Counted as sent, all of them.
        assert_eq!(net.frames_sent(), 10_001);
        // The same seed loses the same frames of the same conversation.
        let again = MemoryNetwork::new();
        again.set_loss_seeded(0.1, 7);
        assert_eq!(delivered(&again, 10_000).await, got);
        // Another seed, other frames (almost surely another count).
        let other = MemoryNetwork::new();
        other.set_loss_seeded(0.1, 8);
        assert_ne!(delivered(&other, 10_000).await, got);
    }

    #[tokio::test]
    async fn duplication_and_reordering_deliver_every_frame() {
        let net = MemoryNetwork::new();
        net.set_loss_seeded(0.0, 3);
        net.set_duplication(0.2);
        net.set_reordering(0.2);
        let (a, b) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let mut listener = net.transport(&b).listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr();
        let mut dialled = net.transport(&a).dial(&addr).await.unwrap();
        let mut accepted = listener.accept().await.unwrap().upgrade().await.unwrap();
        let frames: Vec<Vec<u8>> = (0..=200u32)
            .map(|i| {
                let payload = Bytes::from(i.to_be_bytes().to_vec());
                frame::encode_envelope(&EnvelopeBuilder::new(MsgType::Chat, payload).sign(&a))
                    .unwrap()
                    .to_vec()
            })
            .collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(Some(f)) = accepted.source.recv().await {
                let n: [u8; 4] = f.payload[..].try_into().unwrap();
                got.push(u32::from_be_bytes(n) as usize);
            }
            got
        });
        for f in &frames {
            dialled.sink.send(f).await.unwrap();
        }
        // One more, sent plainly, releases a frame still held back.
        net.set_duplication(0.0);
        net.set_reordering(0.0);
        dialled.sink.send(&frames[0]).await.unwrap();
        dialled.sink.close().await;
        drop(dialled);
        let got: Vec<usize> = reader.await.unwrap();
        let distinct: std::collections::BTreeSet<usize> = got.iter().copied().collect();
        assert_eq!(distinct.len(), 201, "every frame arrives");
        let (dups, swaps) = (net.frames_duplicated(), net.frames_reordered());
        assert!(
            dups > 10 && swaps > 10,
            "{dups} duplicated, {swaps} reordered"
        );
        assert_eq!(
            got.len() as u64,
            202 + dups,
            "each duplicate arrives once more"
        );
        assert_eq!(got[0], 0, "the first frame is never held back");
        assert!(
            got.windows(2).any(|w| w[0] > w[1]),
            "some arrive out of order"
        );
    }

    #[tokio::test]
    async fn the_first_frame_survives_total_loss_and_clamping_holds() {
        let net = MemoryNetwork::new();
        net.set_loss(5.0);
        assert_eq!(net.loss(), 1.0);
        assert_eq!(delivered(&net, 100).await, 0);
        assert_eq!(net.frames_lost(), 100);
        net.set_loss(f64::NAN);
        assert_eq!(net.loss(), 0.0);
        net.set_loss(-1.0);
        assert_eq!(net.loss(), 0.0);
    }
}
