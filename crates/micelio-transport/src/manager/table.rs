//! The peer table's rules: which connection of a peer to keep when there
//! are two ([`keep_new`] between micelio nodes; keep both until the peer
//! closes one with peers that do not speak the extensions), and what
//! happens when a connection ends (promotion of a kept duplicate, or the
//! peer is gone).

use std::sync::atomic::Ordering;

use micelio_identity::NodeId;
use tracing::info;

use super::{Conn, PeerSummary, Shared, Slot, Standby, lock};
use crate::error::DialError;
use crate::link::Direction;

/// Which connection to keep when two link the same pair of nodes: the one
/// dialled by the node with the smaller NodeId. Both ends decide alike, so
/// simultaneous dials leave exactly one connection.
pub(super) fn keep_new(me: &NodeId, peer: &NodeId, old: Direction, new: Direction) -> bool {
    if old == new {
        return false;
    }
    let initiator = |d: Direction| if d == Direction::Outbound { *me } else { *peer };
    initiator(new) < initiator(old)
}

/// How a freshly authenticated connection entered the peer table.
pub(super) enum Claim {
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
pub(super) fn claim(
    shared: &Shared,
    conn: Conn,
    summary: &PeerSummary,
) -> Result<Claim, DialError> {
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
pub(super) fn settle_duplicate(shared: &Shared, node_id: &NodeId, standby_id: u64) {
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
pub(super) fn release_conn(shared: &Shared, node_id: &NodeId, conn_id: u64) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use micelio_identity::Identity;

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
