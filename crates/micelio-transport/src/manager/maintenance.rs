//! Periodic work: the bootstrap dialers (one per address, backoff), peer
//! exchange every `exchange_interval`, and discovery every
//! `discovery_interval` (jittered dials of known, unconnected peers).

use std::sync::Arc;
use std::sync::atomic::Ordering;
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

/// While full, closes the longest-lived link if someone was refused for
/// `max_peers` since room was last made (see [`super::Room`]).
fn make_room(shared: &Shared, reg: &mut super::Registry) {
    let now = Instant::now();
    let round = shared.config.discovery_interval;
    if !reg.room.refused
        || reg
            .room
            .last
            .is_some_and(|t| now < t + round * super::ROOM_EVERY_ROUNDS)
    {
        return;
    }
    let min_age = round * super::ROOM_MIN_AGE_ROUNDS;
    let Some((id, slot)) = reg
        .peers
        .iter()
        .filter(|(_, s)| now.saturating_duration_since(s.since) >= min_age)
        .min_by_key(|(_, s)| s.since)
    else {
        return;
    };
    let id = *id;
    slot.close_all();
    reg.room = super::Room {
        refused: false,
        last: Some(now),
        barred: Some((id, now + round * super::ROOM_BAR_ROUNDS)),
    };
    shared.counters.room_made.fetch_add(1, Ordering::Relaxed);
    info!(peer = %id.short(12), "closed the longest-lived link to make room for a node refused at max_peers");
}

pub(super) fn discovery_round(shared: &Arc<Shared>) {
    let candidates = {
        let mut reg = lock(&shared.registry);
        let room = shared
            .config
            .max_peers
            .saturating_sub(reg.peers.len() + reg.dialing.len());
        if room == 0 {
            if reg.peers.len() >= shared.config.max_peers {
                make_room(shared, &mut reg);
            }
            return;
        }
        let mut skip: HashSet<NodeId> = reg.peers.keys().copied().collect();
        skip.extend(reg.dialing.iter().copied());
        if let Some((barred, until)) = reg.room.barred
            && Instant::now() < until
        {
            skip.insert(barred);
        }
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
