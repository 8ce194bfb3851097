//! Inbound connections: the accept loop, admission (`max_peers` and the
//! pre-auth budget of [`crate::admission`]) and the pre-auth phase (first
//! bytes, Noise handshake and hello under one deadline).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use super::{Shared, VISITOR_EVERY, authenticate, lock, register};
use crate::admission::{Budget, host_of};
use crate::link::{Incoming, Listener};

/// Pause after a failing `accept` (for example out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

pub(super) async fn accept_loop(shared: Arc<Shared>, mut listener: Box<dyn Listener>) {
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
pub(super) fn admit(shared: &Arc<Shared>, incoming: Box<dyn Incoming>) {
    let remote = incoming.remote_addr();
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let evict = shared.cancel.child_token();
    let now = Instant::now();
    let decision = {
        let mut reg = lock(&shared.registry);
        let full = reg.peers.len() >= shared.config.max_peers;
        let visitor = full
            && reg
                .last_visitor
                .is_none_or(|t| now.saturating_duration_since(t) >= VISITOR_EVERY);
        if full && !visitor {
            Err(None)
        } else {
            if visitor {
                reg.last_visitor = Some(now);
                shared.counters.visitors.fetch_add(1, Ordering::Relaxed);
            }
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
            let c = &shared.counters;
            let counter = match budget {
                Budget::PerHost => &c.preauth_refused_per_host,
                Budget::Total => &c.preauth_refused_total,
            };
            counter.fetch_add(1, Ordering::Relaxed);
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
pub(super) async fn preauth(
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
