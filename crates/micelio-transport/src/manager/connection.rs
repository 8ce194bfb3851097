//! One connection's life: dial or accept, hello and identity checks,
//! registration in the peer table, then a writer task (bounded queue, write
//! deadline, keepalive) and a reader task (idle timeout, dispatch of
//! keepalives, late hellos and peer exchanges; everything else goes up as a
//! [`PeerEvent::Message`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use micelio_identity::{NodeId, PublicKey};
use micelio_wire::proto::PeerExchange;
use micelio_wire::{Envelope, MsgType, WireMessage as _, frame};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span};

use super::{
    Claim, Conn, PeerEvent, PeerSummary, Shared, claim, exchange_frame, lock, now_unix,
    release_conn, send_exchange, settle_duplicate,
};
use crate::error::{DialError, LinkError, TransportError};
use crate::hello::{self, PeerHelloInfo};
use crate::link::{Direction, FrameSink, FrameSource, Link};

/// A link the peer closes sooner than this after the hello counts as a
/// failed dial for discovery's backoff (a full peer closes its visitors).
const SHORT_LINK: Duration = Duration::from_secs(2);

pub(super) async fn dial(shared: &Arc<Shared>, addr: &str) -> Result<NodeId, DialError> {
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
pub(super) async fn establish(shared: &Arc<Shared>, link: Link) -> Result<NodeId, DialError> {
    let (link, info) = authenticate(shared, link).await?;
    register(shared, link, info).await
}

/// Runs the hello on a fresh link and applies the identity checks.
pub(super) async fn authenticate(
    shared: &Arc<Shared>,
    mut link: Link,
) -> Result<(Link, PeerHelloInfo), DialError> {
    let local = hello::LocalHello {
        tags: lock(&shared.hello_tags).clone(),
        ..shared.local_hello.clone()
    };
    let info = tokio::select! {
        _ = shared.cancel.cancelled() => return Err(DialError::ShuttingDown),
        r = hello::exchange(&mut link, &shared.identity, &local, shared.config.hello_timeout) => r,
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

/// Enters an authenticated connection in the peer table and starts its
/// tasks: a writer and a reader. Returns the peer's NodeId.
///
/// # Errors
/// `Duplicate` or `TooManyPeers` when the connection was closed instead.
pub(super) async fn register(
    shared: &Arc<Shared>,
    link: Link,
    info: PeerHelloInfo,
) -> Result<NodeId, DialError> {
    let node_id = info.node_id;
    let Link {
        remote_addr,
        direction,
        mut sink,
        source,
        ..
    } = link;
    let summary = PeerSummary {
        node_id,
        public_key: info.public_key,
        direction,
        remote_addr,
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
    if let Err(DialError::TooManyPeers) = claimed
        && direction == Direction::Inbound
    {
        // A visitor (or a race with another newcomer): tell it where else
        // to go before closing, bounded by the write timeout.
        if let Some(f) = exchange_frame(shared, &node_id) {
            let _ = timeout(shared.config.write_timeout, sink.send(&f)).await;
        }
        let _ = timeout(shared.config.write_timeout, sink.close()).await;
    }
    announce(shared, claimed, &summary, conn_id).await?;
    remember(shared, &info);

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

/// Counts and logs how a connection entered the table, tells the consumer
/// about a new peer, and arms the grace timer of a kept duplicate.
///
/// # Errors
/// The claim's error, after counting it.
async fn announce(
    shared: &Arc<Shared>,
    claimed: Result<Claim, DialError>,
    summary: &PeerSummary,
    conn_id: u64,
) -> Result<(), DialError> {
    let c = &shared.counters;
    let (node_id, direction, remote) = (summary.node_id, summary.direction, &summary.remote_addr);
    let claim = match claimed {
        Ok(claim) => claim,
        Err(DialError::TooManyPeers) => {
            c.closed_max_peers.fetch_add(1, Ordering::Relaxed);
            info!(peer = %node_id.short(12), direction = %direction, "rejected connection: max_peers reached");
            return Err(DialError::TooManyPeers);
        }
        Err(e) => {
            c.duplicates_closed.fetch_add(1, Ordering::Relaxed);
            info!(peer = %node_id.short(12), direction = %direction, remote = %remote, "closed duplicate connection");
            return Err(e);
        }
    };
    let counter = match direction {
        Direction::Inbound => &c.connections_inbound,
        Direction::Outbound => &c.connections_outbound,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    match claim {
        Claim::New => {
            info!(peer = %node_id, direction = %direction, remote = %remote, "peer connected");
            let up = PeerEvent::Up(Box::new(summary.clone()));
            let _ = shared.events.send(up).await;
        }
        Claim::Replaced => {
            c.duplicates_closed.fetch_add(1, Ordering::Relaxed);
            info!(peer = %node_id.short(12), direction = %direction, remote = %remote, "replaced duplicate connection");
        }
        Claim::Standby => {
            c.duplicates_kept.fetch_add(1, Ordering::Relaxed);
            info!(peer = %node_id.short(12), direction = %direction, remote = %remote, "duplicate connection to a peer without micelio extensions: keeping both until the peer closes one");
            let s = shared.clone();
            let grace = shared.config.duplicate_grace;
            let settle = async move {
                tokio::select! {
                    _ = s.cancel.cancelled() => {}
                    _ = sleep(grace) => settle_duplicate(&s, &node_id, conn_id),
                }
            };
            shared.tracker.spawn(settle.in_current_span());
        }
    }
    Ok(())
}

/// Records the peer as confirmed in the known-peers table and queues its
/// record (and the removal of an entry evicted for it) for the store.
fn remember(shared: &Shared, info: &PeerHelloInfo) {
    let (persist, evicted) = lock(&shared.known).on_connected(info, now_unix());
    if let Some(store) = &shared.store {
        // Queued for the storage task: never waits on the disk.
        if let Some(rec) = persist {
            store.save(rec.node_id, rec.to_info());
        }
        if let Some(old) = evicted.filter(|e| e.confirmed) {
            store.remove(old.node_id);
        }
    }
}

pub(super) async fn writer_task(
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
    match reason {
        Some(reason) => {
            debug!("closing connection: {reason}");
            lock(&close_reason).get_or_insert(reason);
        }
        // Closed on purpose (shutdown, eviction, a duplicate): what was
        // queued before still goes out, within a short grace, so that a
        // node's last words (its `node/left`, say) reach the peer.
        None => {
            drain(
                &shared,
                sink.as_mut(),
                &mut rx,
                write_timeout.min(CLOSE_DRAIN),
            )
            .await
        }
    }
    cancel.cancel();
    let _ = timeout(Duration::from_secs(1), sink.close()).await;
}

/// How long a connection closed on purpose keeps writing what its queue
/// held at that moment.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Writes the frames already queued on `rx`, taking nothing new, until the
/// queue is empty, a write fails or `grace` has passed; what is left is
/// dropped and logged.
async fn drain(
    shared: &Shared,
    sink: &mut dyn FrameSink,
    rx: &mut mpsc::Receiver<Bytes>,
    grace: Duration,
) {
    rx.close();
    let deadline = Instant::now() + grace;
    while let Ok(frame) = rx.try_recv() {
        match tokio::time::timeout_at(deadline, sink.send(&frame)).await {
            Ok(Ok(())) => {
                shared.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_)) | Err(_) => {
                let left = rx.len() + 1;
                debug!(frames = left, "connection closed with frames still queued");
                return;
            }
        }
    }
}

/// What one read from a connection yielded.
enum Read {
    /// An envelope to dispatch.
    Envelope(Envelope),
    /// A frame that was skipped (counted).
    Skipped,
    /// The connection is over, for this reason.
    End(String),
}

/// Reads one envelope, within the idle timeout.
async fn read_one(shared: &Shared, source: &mut dyn FrameSource, idle: Duration) -> Read {
    let c = &shared.counters;
    match timeout(idle, source.recv()).await {
        Err(_) => {
            c.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            Read::End(format!("idle for {idle:?}"))
        }
        Ok(Ok(Some(env))) => {
            c.frames_received.fetch_add(1, Ordering::Relaxed);
            Read::Envelope(env)
        }
        Ok(Ok(None)) => Read::End("closed by peer".to_owned()),
        Ok(Err(LinkError::BadEnvelope(e))) => {
            c.bad_envelopes.fetch_add(1, Ordering::Relaxed);
            debug!("dropped frame with an undecodable envelope: {e}");
            Read::Skipped
        }
        Ok(Err(e)) => Read::End(e.to_string()),
    }
}

/// Handles what the connection layer handles itself (keepalives, late
/// hellos, peer exchanges); returns the event for anything else.
fn dispatch(shared: &Shared, from: &NodeId, key: &PublicKey, env: Envelope) -> Option<PeerEvent> {
    match env.kind() {
        MsgType::Keepalive => None,
        MsgType::Hello | MsgType::HelloAck => {
            shared.counters.late_hellos.fetch_add(1, Ordering::Relaxed);
            debug!("dropped a hello received after the handshake");
            None
        }
        MsgType::PeerExchange => {
            handle_exchange(shared, from, key, &env);
            None
        }
        _ => Some(PeerEvent::Message {
            from: *from,
            envelope: env,
        }),
    }
}

/// Reads a connection until it ends, dispatching what arrives; then
/// releases it (and reports the peer down if it was its last connection).
pub(super) async fn reader_task(
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
    let started = Instant::now();
    let mut remote_end = false;
    let reason = loop {
        let read = tokio::select! {
            _ = cancel.cancelled() => break local_reason(),
            r = read_one(&shared, source.as_mut(), idle) => r,
        };
        let env = match read {
            Read::Envelope(env) => env,
            Read::Skipped => continue,
            Read::End(reason) => {
                remote_end = true;
                break reason;
            }
        };
        let Some(event) = dispatch(&shared, &node_id, &key, env) else {
            continue;
        };
        tokio::select! {
            _ = cancel.cancelled() => break local_reason(),
            r = shared.events.send(event) => {
                if r.is_ok() {
                    shared.counters.messages_delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    cancel.cancel();
    if remote_end && started.elapsed() < SHORT_LINK {
        // Closed by the peer right after the hello: most likely it was full
        // and we were its visitor. Back off before dialling it again.
        let _ = lock(&shared.known).record_failure(&node_id, Instant::now());
    }
    if release_conn(&shared, &node_id, conn_id) {
        info!(peer = %node_id, "peer disconnected: {reason}");
        let down = PeerEvent::Down { node_id, reason };
        let _ = shared.events.send(down).await;
    }
}

pub(super) fn handle_exchange(shared: &Shared, from: &NodeId, key: &PublicKey, env: &Envelope) {
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
