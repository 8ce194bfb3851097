//! The outbound task: reads the entries to push from storage, cuts them
//! into type-8 pages ([`Pager`]), signs and queues them for the peer, then
//! the message that follows them (a reconciliation answer), in that order.

use std::sync::Arc;

use bytes::Bytes;
use micelio_identity::{Identity, NodeId};
use micelio_transport::PeerManager;
use micelio_wire::{EnvelopeBuilder, MsgType, WireMessage as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Shared;
use crate::page::Pager;
use crate::store::StoreThread;

/// Jobs queued to the outbound task; the state task drops (and counts) a
/// job when it is full.
pub(crate) const OUTBOUND_QUEUE: usize = 64;

/// One job.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// To whom.
    pub(crate) peer: NodeId,
    /// Keys whose entries go out first, as pages.
    pub(crate) push: Vec<Box<str>>,
    /// Then this message, if any.
    pub(crate) then: Option<(MsgType, Bytes)>,
}

pub(crate) async fn run(
    identity: Arc<Identity>,
    peers: PeerManager,
    store: StoreThread,
    shared: Arc<Shared>,
    mut jobs: mpsc::Receiver<Outgoing>,
    cancel: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            _ = cancel.cancelled() => return,
            j = jobs.recv() => match j { Some(j) => j, None => return },
        };
        if !job.push.is_empty() {
            let Ok(rx) = store.get(job.push).await else {
                return;
            };
            let entries = tokio::select! {
                _ = cancel.cancelled() => return,
                e = rx => e.unwrap_or_default(),
            };
            let mut pager = Pager::default();
            let mut pages = Vec::new();
            for e in entries {
                pages.extend(pager.push(e));
            }
            pages.extend(pager.finish());
            for page in pages {
                let n = page.entries.len() as u64;
                let payload = page.encode_bytes();
                let len = payload.len() as u64;
                if send(
                    &identity,
                    &peers,
                    &shared,
                    &job.peer,
                    MsgType::StateSyncResponse,
                    payload,
                ) {
                    Shared::add(&shared.pages_sent, 1);
                    Shared::add(&shared.entries_sent, n);
                    Shared::add(&shared.page_bytes_sent, len);
                }
            }
        }
        if let Some((t, payload)) = job.then {
            send(&identity, &peers, &shared, &job.peer, t, payload);
        }
    }
}

/// Signs and queues one point-to-point message; false (counted) if it
/// could not be queued.
fn send(
    identity: &Identity,
    peers: &PeerManager,
    shared: &Shared,
    to: &NodeId,
    t: MsgType,
    payload: Bytes,
) -> bool {
    let env = EnvelopeBuilder::new(t, payload).sign(identity);
    match peers.send(to, &env) {
        Ok(()) => true,
        Err(e) => {
            Shared::add(&shared.send_dropped, 1);
            debug!(peer = %to.short(12), %t, error = %e, "state sync message not sent");
            false
        }
    }
}
