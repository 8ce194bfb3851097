//! Periodic work: the bootstrap dialers (one per address, backoff), peer
//! exchange every `exchange_interval`, and discovery every
//! `discovery_interval` (jittered dials of known, unconnected peers).

use std::sync::Arc;
use std::time::Duration;

use micelio_identity::NodeId;
use micelio_wire::proto::{PeerExchange, PeerInfo};
use micelio_wire::{EnvelopeBuilder, MsgType, WireMessage as _, frame};
use tokio::time::{Instant, sleep};
use tracing::{Instrument as _, debug, info, warn};

use std::collections::HashSet;

use super::{Shared, dial, lock, now_unix, send_frame};
use crate::discovery::jitter;
use crate::error::DialError;

pub(super) fn send_exchange(shared: &Shared, to: &NodeId) {
    if let Some(f) = exchange_frame(shared, to) {
        let _ = send_frame(shared, to, f);
    }
}

/// The peer-exchange frame for `to`: ourselves (if we advertise an address)
/// and the known peers; `None` when there is nothing to say.
pub(super) fn exchange_frame(shared: &Shared, to: &NodeId) -> Option<bytes::Bytes> {
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
        return None;
    }
    let env = EnvelopeBuilder::new(MsgType::PeerExchange, PeerExchange { peers }.encode_wire())
        .sign(&shared.identity);
    frame::encode_envelope(&env)
        .inspect_err(|e| warn!("peer exchange too large to send: {e}"))
        .ok()
}

pub(super) async fn bootstrap_loop(shared: Arc<Shared>, addr: String) {
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

pub(super) async fn maintenance_loop(shared: Arc<Shared>) {
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

pub(super) fn discovery_round(shared: &Arc<Shared>) {
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
