//! The intake task: decodes and verifies what arrives for the state layer
//! and hands it to the state task in arrival order.
//!
//! Point-to-point messages (types 7, 8, 16) must carry the connected
//! peer's NodeId as `sender_id` and a signature by the peer's hello key
//! (as the reference checks them). A third party cannot replay them into a
//! connection (Noise), and what the peer itself repeats is harmless: pages
//! merge idempotently, requests and sessions have cooldowns.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use micelio_gossip::{Delivered, Gossip};
use micelio_identity::{NodeId, PublicKey};
use micelio_transport::PeerManager;
use micelio_wire::proto::{
    StateEntry, StateReconcile, StateSyncRequest, StateSyncResponse, StateUpdate,
};
use micelio_wire::{MsgType, WireMessage as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Shared, StateError, TYPES};
use crate::error::Reject;
use crate::version::{Limits, Version, verify_entry};

/// Verified messages queued to the state task (the intake waits when the
/// state task is behind; gossip's subscriber queues absorb bursts).
pub(crate) const INBOUND_QUEUE: usize = 64;
/// Pages with at least this many entries are verified off the runtime.
const BLOCKING_VERIFY: usize = 32;
/// Peer keys cached; the cache is cleared when it is full.
const KEY_CACHE: usize = 4096;

/// What the intake hands on.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// Entries that passed every check, and the reasons of those that did
    /// not.
    Entries {
        source: super::Origin,
        entries: Vec<(StateEntry, Version)>,
        rejected: Vec<Reject>,
    },
    /// A type-7 request from a connected peer.
    SyncRequest {
        peer: NodeId,
        known: BTreeMap<String, u64>,
    },
    /// A type-16 message from a connected peer.
    Reconcile { peer: NodeId, msg: StateReconcile },
    /// A sync message refused before its content was looked at.
    Bad { reason: &'static str },
}

/// The check gossip runs on every first copy of a type-6 message before it
/// delivers or relays it: the entry must decode and pass
/// [`verify_entry`] with this node's limits. A refused entry is counted
/// (by reason, in [`Shared::relay_reject`]) and goes no further.
pub(crate) fn validator(limits: Limits, shared: Arc<Shared>) -> micelio_gossip::Validator {
    Arc::new(move |env| {
        let result = match StateUpdate::decode_wire(env.payload.clone()) {
            Ok(StateUpdate { entry: Some(e) }) => verify_entry(&e, &limits).map(|_| ()),
            Ok(_) => Err(Reject::Malformed("type 6 without an entry".into())),
            Err(_) => Err(Reject::Malformed("type 6 does not decode".into())),
        };
        result.map_err(|r| {
            shared.relay_reject(&r);
            r.label()
        })
    })
}

/// The gossip subscriptions of the four types.
pub(crate) struct Subscriptions {
    rx: [mpsc::Receiver<Delivered>; 4],
}

impl Subscriptions {
    pub(crate) async fn open(gossip: &Gossip) -> Result<Self, StateError> {
        let sub = |t| async move { gossip.subscribe(t).await.map_err(|_| StateError::Stopped) };
        Ok(Self {
            rx: [
                sub(TYPES[0]).await?,
                sub(TYPES[1]).await?,
                sub(TYPES[2]).await?,
                sub(TYPES[3]).await?,
            ],
        })
    }
}

struct Intake {
    peers: PeerManager,
    limits: Limits,
    shared: Arc<Shared>,
    keys: HashMap<NodeId, PublicKey>,
}

pub(crate) async fn run(
    subs: Subscriptions,
    peers: PeerManager,
    limits: Limits,
    shared: Arc<Shared>,
    out: mpsc::Sender<Inbound>,
    cancel: CancellationToken,
) {
    let mut intake = Intake {
        peers,
        limits,
        shared,
        keys: HashMap::new(),
    };
    let [mut r6, mut r7, mut r8, mut r16] = subs.rx;
    loop {
        let d = tokio::select! {
            _ = cancel.cancelled() => return,
            d = r6.recv() => d,
            d = r7.recv() => d,
            d = r8.recv() => d,
            d = r16.recv() => d,
        };
        let Some(d) = d else { return };
        let Some(msg) = intake.handle(d).await else {
            continue;
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            sent = out.send(msg) => if sent.is_err() { return },
        }
    }
}

impl Intake {
    async fn handle(&mut self, d: Delivered) -> Option<Inbound> {
        if d.msg_type == MsgType::StateUpdate {
            // Gossip delivers a type 6 only once the validator this service
            // installed (`validator`: decode, every check of
            // `verify_entry`) accepted it: it is not checked twice.
            let entry = match StateUpdate::decode_wire(d.envelope.payload.clone()) {
                Ok(StateUpdate { entry: Some(e) }) => e,
                Ok(_) => return Some(bad_entry("type 6 without an entry")),
                Err(_) => return Some(bad_entry("type 6 does not decode")),
            };
            let Ok(author) = entry.node_id.parse::<NodeId>() else {
                return Some(bad_entry("type 6 with a bad node_id"));
            };
            let version = Version::of(&entry, author);
            return Some(Inbound::Entries {
                source: super::Origin::Gossip,
                entries: vec![(entry, version)],
                rejected: vec![],
            });
        }
        let peer = d.from_peer;
        if let Err(reason) = self.check_envelope(&peer, &d.envelope) {
            return Some(Inbound::Bad { reason });
        }
        let payload = d.envelope.payload.clone();
        match d.msg_type {
            MsgType::StateSyncRequest => match StateSyncRequest::decode_wire(payload) {
                Ok(r) => Some(Inbound::SyncRequest {
                    peer,
                    known: r.known,
                }),
                Err(_) => Some(Inbound::Bad {
                    reason: "request_undecodable",
                }),
            },
            MsgType::StateReconcile => match StateReconcile::decode_wire(payload) {
                Ok(msg) => Some(Inbound::Reconcile { peer, msg }),
                Err(_) => Some(Inbound::Bad {
                    reason: "reconcile_undecodable",
                }),
            },
            MsgType::StateSyncResponse => {
                let len = payload.len() as u64;
                let page = match StateSyncResponse::decode_wire(payload) {
                    Ok(p) => p,
                    Err(_) => {
                        return Some(Inbound::Bad {
                            reason: "page_undecodable",
                        });
                    }
                };
                Shared::add(&self.shared.pages_received, 1);
                Shared::add(&self.shared.page_bytes_received, len);
                Some(self.verify_page(page.entries).await)
            }
            _ => None,
        }
    }

    /// The sender must be the connected peer, and the signature its own.
    fn check_envelope(
        &mut self,
        peer: &NodeId,
        env: &micelio_wire::proto::Envelope,
    ) -> Result<(), &'static str> {
        if !peer.matches_str(&env.sender_id) {
            return Err("sender_not_peer");
        }
        let key = match self.keys.get(peer) {
            Some(k) => *k,
            None => {
                if self.keys.len() >= KEY_CACHE {
                    self.keys.clear();
                }
                let Some(p) = self.peers.peers().into_iter().find(|p| p.node_id == *peer) else {
                    return Err("peer_gone");
                };
                self.keys.insert(*peer, p.public_key);
                p.public_key
            }
        };
        env.verify_with(&key).map_err(|_| "bad_envelope_signature")
    }

    async fn verify_page(&self, entries: Vec<StateEntry>) -> Inbound {
        let limits = self.limits;
        let check = move |entries: Vec<StateEntry>| {
            let mut ok = Vec::with_capacity(entries.len());
            let mut rejected = Vec::new();
            for e in entries {
                match verify_entry(&e, &limits) {
                    Ok(v) => ok.push((e, v)),
                    Err(r) => rejected.push(r),
                }
            }
            (ok, rejected)
        };
        let (entries, rejected) = if entries.len() >= BLOCKING_VERIFY {
            // Two halves, one per blocking thread: a page is verified on two
            // cores at once.
            let mut first = entries;
            let second = first.split_off(first.len() / 2);
            let a = tokio::task::spawn_blocking(move || check(first));
            let b = tokio::task::spawn_blocking(move || check(second));
            match (a.await, b.await) {
                (Ok((mut ok, mut rej)), Ok((ok2, rej2))) => {
                    ok.extend(ok2);
                    rej.extend(rej2);
                    (ok, rej)
                }
                _ => (
                    vec![],
                    vec![Reject::Malformed("verification failed".into())],
                ),
            }
        } else {
            check(entries)
        };
        Inbound::Entries {
            source: super::Origin::Sync,
            entries,
            rejected,
        }
    }
}

fn bad_entry(what: &str) -> Inbound {
    Inbound::Entries {
        source: super::Origin::Gossip,
        entries: vec![],
        rejected: vec![Reject::Malformed(what.into())],
    }
}
