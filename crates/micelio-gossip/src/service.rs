//! The gossip service: one tokio task that owns an [`Engine`] and connects
//! it to a [`PeerManager`], behind a cheap-clone [`Gossip`] handle.
//!
//! The task reads the transport's [`PeerEvent`]s and the handle's commands
//! from bounded channels, carries out the engine's actions (encoding each
//! envelope once and queueing the frame for every target peer without ever
//! waiting on a slow one), drains the paced origin queue no faster than its
//! token bucket allows, expires the engine's tables every second, and stops
//! on its cancellation token.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use micelio_identity::{Identity, NodeId};
use micelio_transport::{PeerEvent, PeerManager, TaskExit, TaskGroup};
use micelio_wire::{Envelope, MsgType, Routing, frame};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info_span, warn};

use crate::engine::{
    Action, Delivered, DropReason, Engine, GossipConfig, GossipStats, PeerCaps, SubscriberStats,
};

/// Commands queued to the task.
const COMMAND_QUEUE: usize = 1024;
/// Deliveries buffered per subscriber before further ones are dropped.
const SUBSCRIBER_QUEUE: usize = 1024;
/// Peer events buffered per [`Gossip::subscribe_peers`] subscriber.
pub const PEER_EVENT_QUEUE: usize = 1024;
/// Period of seen-cache and rate-bucket expiry.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
/// How long a stopping service keeps sending its paced originations, at
/// the pace: what this node said just before a shutdown still goes out;
/// what is left after it is dropped and logged.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// Why a gossip call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GossipError {
    /// The service has stopped.
    #[error("gossip service stopped")]
    Stopped,
    /// The type does not travel by gossip.
    #[error("{0} is not a gossip message type")]
    NotGossip(MsgType),
    /// The payload is over 64 KiB.
    #[error("payload of {0} bytes exceeds the gossip limit")]
    TooLarge(usize),
    /// The paced origin queue is full: the message was not sent.
    #[error("the outgoing queue is full ({0} messages waiting)")]
    QueueFull(usize),
}

enum Command {
    Originate {
        msg_type: MsgType,
        payload: Bytes,
        reply: oneshot::Sender<String>,
    },
    Subscribe {
        msg_type: MsgType,
        reply: oneshot::Sender<mpsc::Receiver<Delivered>>,
    },
    SubscribePeers(oneshot::Sender<mpsc::Receiver<PeerEvent>>),
    Validate {
        msg_type: MsgType,
        validator: crate::engine::Validator,
        reply: oneshot::Sender<()>,
    },
    Stats(oneshot::Sender<GossipStats>),
    /// Test-only fault: the task panics.
    #[cfg(test)]
    Panic,
}

/// Handle to a running gossip service. Clones share it.
#[derive(Clone, Debug)]
#[must_use = "dropping the handle does not stop the service; call shutdown()"]
pub struct Gossip {
    tx: mpsc::Sender<Command>,
    paced: mpsc::Sender<(MsgType, Bytes)>,
    refused: Arc<AtomicU64>,
    config: Arc<GossipConfig>,
    cancel: CancellationToken,
    /// The service task, watched for [`Gossip::closed`].
    tasks: TaskGroup,
    /// The watcher of the service task (it returns once the task has ended
    /// and a panic has been logged).
    task: Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>,
    node_id: NodeId,
}

impl Gossip {
    /// Starts the service over `peers`, consuming its event stream.
    ///
    /// Messages the connection layer hands up that are not gossip (state
    /// sync requests and responses) are delivered unrelayed to the
    /// subscribers of their type, so that the layer above can answer them.
    /// Their [`Delivered::sender`] is the connected peer (authenticated by
    /// Noise and the hello); one whose `sender_id` names another node is
    /// dropped ([`DropReason::SenderNotPeer`]). Their signature is not
    /// checked here.
    pub fn spawn(
        identity: Arc<Identity>,
        config: GossipConfig,
        peers: PeerManager,
        events: mpsc::Receiver<PeerEvent>,
    ) -> Gossip {
        let seed = u64::from_le_bytes(
            identity.node_id().as_bytes()[..8]
                .try_into()
                .unwrap_or([0; 8]),
        ) ^ u64::from(std::process::id());
        let node_id = *identity.node_id();
        let (paced, paced_rx) = mpsc::channel(config.origin_queue.max(1));
        let refused = Arc::new(AtomicU64::new(0));
        let shared_config = Arc::new(config.clone());
        let pacer = Pacer::new(config.pace_per_sec, config.pace_burst);
        let engine = Engine::new(identity, config, seed);
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let cancel = CancellationToken::new();
        let span = info_span!("gossip", node = %node_id.short(12));
        let tasks = TaskGroup::new(cancel.clone());
        let task = tasks.spawn(
            "the gossip task",
            Service {
                engine,
                peers,
                subscribers: HashMap::new(),
                peer_watchers: Vec::new(),
                next_subscriber: 1,
                pacer,
                refused: refused.clone(),
                paced_queued: 0,
                sent: SentCounters::default(),
            }
            .run(rx, events, paced_rx, cancel.clone())
            .instrument(span),
        );
        Gossip {
            tx,
            paced,
            refused,
            config: shared_config,
            cancel,
            tasks,
            task: Arc::new(tokio::sync::Mutex::new(Some(task))),
            node_id,
        }
    }

    /// Our NodeId.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The configuration the service runs with.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// Queues a message of `msg_type` for paced origination, never waiting:
    /// queued messages leave in order, no faster than `pace_per_sec` with a
    /// burst of `pace_burst` (below the mesh's per-sender limit, so relays
    /// do not drop them). Use it for everything a user or a periodic task
    /// originates; the whole node shares the one queue.
    ///
    /// # Errors
    /// [`GossipError::QueueFull`] when `origin_queue` messages are waiting
    /// (counted in [`GossipStats::origin_refused`]), and as
    /// [`Gossip::originate`].
    pub fn try_originate(&self, msg_type: MsgType, payload: Bytes) -> Result<(), GossipError> {
        if msg_type.routing() != Routing::Gossip {
            return Err(GossipError::NotGossip(msg_type));
        }
        if payload.len() > micelio_wire::limits::MAX_GOSSIP_PAYLOAD {
            return Err(GossipError::TooLarge(payload.len()));
        }
        self.paced
            .try_send((msg_type, payload))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    GossipError::QueueFull(self.config.origin_queue)
                }
                mpsc::error::TrySendError::Closed(_) => GossipError::Stopped,
            })
    }

    /// Originates a message of `msg_type` now and returns its id. It is not
    /// paced (it only spends a token of the pace bucket if one is there):
    /// callers that originate in bursts use [`Gossip::try_originate`].
    ///
    /// Cancel safe: if dropped before the service took it, nothing is sent.
    ///
    /// # Errors
    /// [`GossipError::NotGossip`], [`GossipError::TooLarge`] or
    /// [`GossipError::Stopped`].
    pub async fn originate(
        &self,
        msg_type: MsgType,
        payload: Bytes,
    ) -> Result<String, GossipError> {
        if msg_type.routing() != Routing::Gossip {
            return Err(GossipError::NotGossip(msg_type));
        }
        if payload.len() > micelio_wire::limits::MAX_GOSSIP_PAYLOAD {
            return Err(GossipError::TooLarge(payload.len()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Originate {
                msg_type,
                payload,
                reply,
            })
            .await
            .map_err(|_| GossipError::Stopped)?;
        rx.await.map_err(|_| GossipError::Stopped)
    }

    /// Registers a handler for `msg_type` and returns the stream of its
    /// deliveries (each message once). A subscriber that falls more than
    /// 1024 deliveries behind loses messages (counted per subscriber in
    /// [`GossipStats::subscribers`], logged once).
    ///
    /// # Errors
    /// [`GossipError::Stopped`].
    pub async fn subscribe(
        &self,
        msg_type: MsgType,
    ) -> Result<mpsc::Receiver<Delivered>, GossipError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Subscribe { msg_type, reply })
            .await
            .map_err(|_| GossipError::Stopped)?;
        rx.await.map_err(|_| GossipError::Stopped)
    }

    /// Installs `validator` for `msg_type`: from now on, first copies of
    /// that type it refuses are dropped (counted as
    /// [`DropReason::Invalid`](crate::DropReason::Invalid)), neither
    /// delivered nor relayed. See [`Validator`](crate::Validator).
    ///
    /// # Errors
    /// [`GossipError::Stopped`].
    pub async fn set_validator(
        &self,
        msg_type: MsgType,
        validator: crate::engine::Validator,
    ) -> Result<(), GossipError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Validate {
                msg_type,
                validator,
                reply,
            })
            .await
            .map_err(|_| GossipError::Stopped)?;
        rx.await.map_err(|_| GossipError::Stopped)
    }

    /// A stream of the peers' comings and goings: [`PeerEvent::Up`] for
    /// every peer connected when it is called, then `Up` and
    /// [`PeerEvent::Down`] as they happen (never `Message`). The layers
    /// above (state sync) use it to act when a peer connects. A subscriber
    /// that falls [`PEER_EVENT_QUEUE`] events behind loses the newest ones
    /// (it can always read [`PeerManager::peers`] for the current set).
    ///
    /// # Errors
    /// [`GossipError::Stopped`].
    pub async fn subscribe_peers(&self) -> Result<mpsc::Receiver<PeerEvent>, GossipError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::SubscribePeers(reply))
            .await
            .map_err(|_| GossipError::Stopped)?;
        rx.await.map_err(|_| GossipError::Stopped)
    }

    /// The engine's counters.
    ///
    /// # Errors
    /// [`GossipError::Stopped`].
    pub async fn stats(&self) -> Result<GossipStats, GossipError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Stats(reply))
            .await
            .map_err(|_| GossipError::Stopped)?;
        rx.await.map_err(|_| GossipError::Stopped)
    }

    /// Resolves once the service task has ended, saying how:
    /// [`TaskExit::Stopped`] after [`Gossip::shutdown`], or
    /// [`TaskExit::Failed`] if it panicked (the reason carries the panic
    /// message) or returned by itself (its peer event stream ended), which
    /// a supervisor should treat as the service's death. The future owns
    /// what it needs, so it can be moved into a watching task.
    ///
    /// Cancel safety: safe to cancel.
    pub fn closed(&self) -> impl std::future::Future<Output = TaskExit> + Send + 'static {
        self.tasks.closed()
    }

    /// Stops the task and waits for it. Idempotent. Paced originations
    /// still queued keep leaving, at the pace, for at most
    /// [`SHUTDOWN_DRAIN`] (1 s; the queue takes nothing new meanwhile);
    /// what is left then is dropped and logged. A task that had
    /// panicked is logged once, with its message (and told by
    /// [`Gossip::closed`]). The peer manager is not stopped: its owner
    /// does that.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        if let Some(watcher) = self.task.lock().await.take()
            && watcher.await.is_err()
        {
            warn!("the gossip task's watcher was aborted");
        }
    }

    /// Test-only fault: makes the service task panic.
    #[cfg(test)]
    async fn panic_for_tests(&self) {
        let _ = self.tx.send(Command::Panic).await;
    }
}

/// The origin's token bucket: how fast this node's paced originations
/// leave.
#[derive(Debug)]
struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// When the next token is there (now if one is).
    fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            now
        } else {
            // At least a millisecond, so that a wait rounded to nothing
            // never wakes the task before the token is there.
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            now + wait.max(Duration::from_millis(1))
        }
    }

    /// Spends a token; false if none was there.
    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Delivered>,
    delivered: u64,
    dropped: u64,
}

/// Frames the service queued to peers, by kind.
#[derive(Debug, Default)]
struct SentCounters {
    data_frames: u64,
    data_bytes: u64,
    control_frames: u64,
    control_bytes: u64,
    refused: u64,
}

struct Service {
    sent: SentCounters,
    engine: Engine,
    peers: PeerManager,
    subscribers: HashMap<MsgType, Vec<Subscriber>>,
    peer_watchers: Vec<mpsc::Sender<PeerEvent>>,
    next_subscriber: u64,
    pacer: Pacer,
    refused: Arc<AtomicU64>,
    paced_queued: u64,
}

impl Service {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<PeerEvent>,
        mut paced: mpsc::Receiver<(MsgType, Bytes)>,
        cancel: CancellationToken,
    ) {
        let mut expire = tokio::time::interval(EXPIRE_EVERY);
        expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let every = self.engine.config().repair_interval;
        // A zero interval disables repair; the timer then never fires.
        let mut repair = tokio::time::interval(if every.is_zero() {
            Duration::from_secs(86_400)
        } else {
            every
        });
        repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = Instant::now();
            let ready_at = self.pacer.ready_at(now);
            let ready = self.pacer.tokens >= 1.0;
            self.paced_queued = paced.len() as u64;
            // The broadcast tree's next batch, graft or prune, if any.
            let tick_at = self
                .engine
                .next_tick()
                .map(|t| Instant::from_std(t).max(now));
            tokio::select! {
                _ = cancel.cancelled() => break,
                next = paced.recv(), if ready => match next {
                    Some((msg_type, payload)) => {
                        let now = Instant::now();
                        self.pacer.take(now);
                        let (_, actions) = self.engine.originate(now.into_std(), msg_type, payload);
                        self.execute(actions);
                    }
                    // Only the handles hold senders: with none left, nobody
                    // can command us either.
                    None => break,
                },
                _ = tokio::time::sleep_until(ready_at), if !ready => {}
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                ev = events.recv() => match ev {
                    Some(ev) => self.event(ev),
                    None => break,
                },
                _ = expire.tick() => self.engine.expire(Instant::now().into_std()),
                _ = tokio::time::sleep_until(tick_at.unwrap_or(now)), if tick_at.is_some() => {
                    let actions = self.engine.tick(Instant::now().into_std());
                    self.execute(actions);
                }
                _ = repair.tick() => {
                    let actions = self.engine.repair_tick(Instant::now().into_std());
                    self.execute(actions);
                }
            }
        }
        if cancel.is_cancelled() {
            self.drain(&mut paced, Instant::now() + SHUTDOWN_DRAIN)
                .await;
        }
        debug!("gossip service stopped");
    }

    /// Sends what the paced queue holds, at the pace, until it is empty or
    /// `deadline`; the queue takes nothing new meanwhile. What is left is
    /// dropped and logged.
    async fn drain(&mut self, paced: &mut mpsc::Receiver<(MsgType, Bytes)>, deadline: Instant) {
        paced.close();
        while !paced.is_empty() {
            let at = self.pacer.ready_at(Instant::now());
            if at > deadline {
                break;
            }
            tokio::time::sleep_until(at).await;
            let Ok((msg_type, payload)) = paced.try_recv() else {
                break;
            };
            let now = Instant::now();
            self.pacer.take(now);
            let (_, actions) = self.engine.originate(now.into_std(), msg_type, payload);
            self.execute(actions);
        }
        let mut left = 0usize;
        while paced.try_recv().is_ok() {
            left += 1;
        }
        if left > 0 {
            warn!(
                left,
                "paced originations not sent at shutdown: dropped after {SHUTDOWN_DRAIN:?}"
            );
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Originate {
                msg_type,
                payload,
                reply,
            } => {
                let now = Instant::now();
                self.pacer.take(now);
                let (env, actions) = self.engine.originate(now.into_std(), msg_type, payload);
                self.execute(actions);
                let _ = reply.send(env.message_id);
            }
            Command::Validate {
                msg_type,
                validator,
                reply,
            } => {
                self.engine.set_validator(msg_type, validator);
                let _ = reply.send(());
            }
            Command::Subscribe { msg_type, reply } => {
                let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
                self.engine.register(msg_type);
                let id = self.next_subscriber;
                self.next_subscriber += 1;
                self.subscribers
                    .entry(msg_type)
                    .or_default()
                    .push(Subscriber {
                        id,
                        tx,
                        delivered: 0,
                        dropped: 0,
                    });
                let _ = reply.send(rx);
            }
            Command::SubscribePeers(reply) => {
                let (tx, rx) = mpsc::channel(PEER_EVENT_QUEUE);
                for p in self.peers.peers() {
                    let _ = tx.try_send(PeerEvent::Up(Box::new(p)));
                }
                self.peer_watchers.push(tx);
                let _ = reply.send(rx);
            }
            Command::Stats(reply) => {
                let mut stats = self.engine.stats();
                stats.origin_refused = self.refused.load(Ordering::Relaxed);
                stats.origin_queued = self.paced_queued;
                stats.data_frames_sent = self.sent.data_frames;
                stats.data_bytes_sent = self.sent.data_bytes;
                stats.control_frames_sent = self.sent.control_frames;
                stats.control_bytes_sent = self.sent.control_bytes;
                stats.send_refused = self.sent.refused;
                let mut subs: Vec<SubscriberStats> = self
                    .subscribers
                    .iter()
                    .flat_map(|(t, v)| {
                        v.iter().map(|s| SubscriberStats {
                            id: s.id,
                            msg_type: *t,
                            delivered: s.delivered,
                            dropped: s.dropped,
                        })
                    })
                    .collect();
                subs.sort_by_key(|s| s.id);
                stats.subscribers = subs;
                let _ = reply.send(stats);
            }
            #[cfg(test)]
            Command::Panic => panic!("test fault: the gossip task panics"),
        }
    }

    fn event(&mut self, ev: PeerEvent) {
        if matches!(ev, PeerEvent::Up(_) | PeerEvent::Down { .. }) && !self.peer_watchers.is_empty()
        {
            self.peer_watchers.retain(|w| {
                !matches!(
                    w.try_send(ev.clone()),
                    Err(mpsc::error::TrySendError::Closed(_))
                )
            });
        }
        match ev {
            PeerEvent::Up(peer) => self.engine.peer_up_caps(
                peer.node_id,
                peer.public_key,
                PeerCaps::from_hello(&peer.hello),
            ),
            PeerEvent::Down { node_id, .. } => self.engine.peer_down(&node_id),
            PeerEvent::Message { from, envelope } => self.message(from, envelope),
            _ => {}
        }
    }

    fn message(&mut self, from: NodeId, envelope: Envelope) {
        let kind = envelope.kind();
        // Point-to-point messages come from the connected peer, never from
        // whoever the envelope claims.
        if kind.routing() != Routing::Gossip
            && !envelope.sender_id.is_empty()
            && !from.matches_str(&envelope.sender_id)
        {
            self.engine.count_drop(DropReason::SenderNotPeer);
            debug!(peer = %from.short(12), %kind, "dropped a point-to-point message naming another sender");
            return;
        }
        if matches!(kind, MsgType::GossipDigest | MsgType::GossipRequest) {
            match self
                .engine
                .handle_repair(Instant::now().into_std(), from, &envelope)
            {
                Ok(actions) => self.execute(actions),
                Err(reason) => {
                    debug!(peer = %from.short(12), reason = reason.label(), "dropped repair message")
                }
            }
            return;
        }
        if matches!(
            kind,
            MsgType::TreeIHave | MsgType::TreeGraft | MsgType::TreePrune
        ) {
            match self
                .engine
                .handle_tree(Instant::now().into_std(), from, &envelope)
            {
                Ok(actions) => self.execute(actions),
                Err(reason) => {
                    debug!(peer = %from.short(12), reason = reason.label(), "dropped broadcast-tree message")
                }
            }
            return;
        }
        if kind.routing() != Routing::Gossip {
            // Point-to-point messages for the layers above (state sync).
            let sender = from;
            self.deliver(Delivered {
                msg_type: kind,
                sender,
                from_peer: from,
                envelope,
            });
            return;
        }
        match self
            .engine
            .handle(Instant::now().into_std(), from, envelope)
        {
            Ok(actions) => self.execute(actions),
            Err(reason) => {
                debug!(peer = %from.short(12), %kind, reason = reason.label(), "dropped gossip message");
            }
        }
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Deliver(d) => self.deliver(d),
                Action::Send { to, envelope } => match frame::encode_envelope(&envelope) {
                    Ok(frame) => {
                        let data = envelope.kind().routing() == Routing::Gossip;
                        let len = frame.len() as u64;
                        for peer in to {
                            // Never waits: a full queue drops (the transport
                            // counts it too).
                            match self.peers.send_frame(&peer, frame.clone()) {
                                Ok(()) if data => {
                                    self.sent.data_frames += 1;
                                    self.sent.data_bytes += len;
                                }
                                Ok(()) => {
                                    self.sent.control_frames += 1;
                                    self.sent.control_bytes += len;
                                }
                                Err(micelio_transport::SendError::QueueFull) => {
                                    self.sent.refused += 1;
                                }
                                Err(_) => {}
                            }
                        }
                    }
                    Err(e) => warn!("envelope too large to frame: {e}"),
                },
            }
        }
    }

    fn deliver(&mut self, d: Delivered) {
        let Some(subs) = self.subscribers.get_mut(&d.msg_type) else {
            return;
        };
        subs.retain(|s| !s.tx.is_closed());
        for s in subs.iter_mut() {
            if s.tx.try_send(d.clone()).is_ok() {
                s.delivered += 1;
            } else {
                if s.dropped == 0 {
                    warn!(
                        kind = %d.msg_type,
                        subscriber = s.id,
                        "a subscriber is not keeping up: deliveries dropped (logged once)"
                    );
                }
                s.dropped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micelio_transport::TransportConfig;
    use micelio_transport::memory::{MemoryMesh, MemoryNetwork, MemoryNode};

    /// A lone peer manager on an in-memory network.
    async fn peers(seed: u8) -> MemoryNode {
        let mesh = MemoryMesh::new();
        mesh.spawn_with(MemoryMesh::identity(seed), MemoryMesh::config(seed), None)
            .await
            .unwrap()
    }

    async fn gossip() -> (Gossip, PeerManager) {
        let n = peers(5).await;
        (
            Gossip::spawn(
                n.identity,
                GossipConfig::default(),
                n.peers.clone(),
                n.events,
            ),
            n.peers,
        )
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_by_closed_and_shutdown_returns() {
        let (gossip, peers) = gossip().await;
        let closed = gossip.closed();
        gossip.panic_for_tests().await;
        assert_eq!(
            closed.await,
            TaskExit::Failed(
                "the gossip task panicked: test fault: the gossip task panics".to_owned()
            )
        );
        assert_eq!(gossip.stats().await, Err(GossipError::Stopped));
        gossip.shutdown().await;
        peers.shutdown().await;
    }

    async fn node(net: &MemoryNetwork, seed: u8) -> (Gossip, PeerManager) {
        let id = Arc::new(Identity::from_seed([seed; 32]));
        let mut cfg = TransportConfig::new(Some(format!("127.0.9.{seed}:4000")));
        cfg.discovery_interval = Duration::from_secs(3600);
        let (peers, events) =
            PeerManager::spawn(id.clone(), Arc::new(net.transport(&id)), cfg, None)
                .await
                .unwrap();
        (
            Gossip::spawn(id, GossipConfig::default(), peers.clone(), events),
            peers,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn paced_originations_queued_at_shutdown_leave_within_the_drain() {
        let net = MemoryNetwork::new();
        let (a, pa) = node(&net, 1).await;
        let (b, pb) = node(&net, 2).await;
        let mut chat = b.subscribe(MsgType::Chat).await.unwrap();
        let keys = (a.stats().await.unwrap().keys, b.stats().await.unwrap().keys);
        pa.dial(pb.local_addr().unwrap()).await.unwrap();
        // Both engines know the other (its direct key from the hello).
        while a.stats().await.unwrap().keys == keys.0 || b.stats().await.unwrap().keys == keys.1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The burst (10) leaves at once; 8 more within the 1 s drain at
        // 8/s; the last two are dropped.
        for i in 0..20 {
            a.try_originate(MsgType::Chat, format!("m{i:02}").into())
                .unwrap();
        }
        let started = Instant::now();
        a.shutdown().await;
        assert!(started.elapsed() <= SHUTDOWN_DRAIN, "bounded");
        let mut left = Vec::new();
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(3), chat.recv()).await {
            left.push(String::from_utf8(d.envelope.payload.to_vec()).unwrap());
        }
        let want: Vec<String> = (0..18).map(|i| format!("m{i:02}")).collect();
        assert_eq!(left, want, "in order, as many as the pace allows");
        b.shutdown().await;
        pa.shutdown().await;
        pb.shutdown().await;
    }

    #[tokio::test]
    async fn a_shutdown_is_reported_as_a_stop() {
        let (gossip, peers) = gossip().await;
        let closed = tokio::spawn(gossip.closed());
        gossip.stats().await.unwrap();
        assert!(!closed.is_finished(), "running");
        gossip.shutdown().await;
        assert_eq!(closed.await.unwrap(), TaskExit::Stopped);
        peers.shutdown().await;
    }

    #[tokio::test]
    async fn a_task_whose_peer_events_end_has_failed() {
        let n = peers(6).await;
        let (tx, events) = mpsc::channel(1);
        let gossip = Gossip::spawn(n.identity, GossipConfig::default(), n.peers.clone(), events);
        let peers = n.peers;
        drop(tx);
        assert_eq!(
            gossip.closed().await,
            TaskExit::Failed("the gossip task ended by itself".to_owned())
        );
        gossip.shutdown().await;
        peers.shutdown().await;
    }
}
