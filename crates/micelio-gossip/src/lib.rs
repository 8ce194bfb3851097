//! Signed gossip relay for micelio.
//!
//! A message originated anywhere reaches every node of a connected mesh,
//! exactly once, verified, within a hop budget, with floods contained.
//!
//! - [`Engine`]: the sans-IO core (`handle(now, from, envelope) -> actions`,
//!   `originate(now, type, payload) -> actions`, `tick(now)` when
//!   [`Engine::next_tick`] says) with the seen cache, the [`KeyRing`] and its
//!   [`Trust`] levels, signature verification, per-sender token buckets, hop
//!   handling, the handler registry and [`GossipStats`];
//! - the broadcast tree inside it: between peers that announced
//!   `micelio/tree/1` ([`PeerCaps`]), eager push along a self-pruning
//!   spanning tree, batched `TreeIHave` announcements over the other links,
//!   `TreeGraft` when an announced message does not arrive within
//!   [`GossipConfig::graft_timeout`], `TreePrune` on duplicates (Plumtree,
//!   Leitão et al., SRDS 2007); other peers get every message pushed, and
//!   gossip repair ([`Engine::repair_tick`]) is the safety net behind it;
//! - [`Gossip`]: the tokio task that drives an engine over a
//!   [`micelio_transport::PeerManager`], with one paced, ordered, bounded
//!   origin queue ([`Gossip::try_originate`]) for everything this node says.
//!
//! The crate knows nothing of chat, SSH, state or plugins: they originate
//! and subscribe to message types.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use micelio_gossip::{Action, Engine, GossipConfig};
//! use micelio_identity::Identity;
//! use micelio_wire::MsgType;
//!
//! let (a, b) = (Arc::new(Identity::from_seed([1; 32])), Arc::new(Identity::from_seed([2; 32])));
//! let mut ea = Engine::new(a.clone(), GossipConfig::default(), 1);
//! let mut eb = Engine::new(b.clone(), GossipConfig::default(), 2);
//! ea.peer_up(*b.node_id(), b.public_key());
//! eb.register(MsgType::Chat);
//! let now = Instant::now();
//! let (env, _) = ea.originate(now, MsgType::Chat, "hi".into());
//! let actions = eb.handle(now, *a.node_id(), env.clone()).unwrap();
//! assert!(matches!(&actions[0], Action::Deliver(d) if d.sender == *a.node_id()));
//! // The same message again is a duplicate.
//! assert!(eb.handle(now, *a.node_id(), env).is_err());
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod engine;
mod parts;
mod service;
#[cfg(feature = "test-utils")]
pub mod test_utils;
mod tree;

pub use engine::{
    Action, DEFAULT_GRAFT_RETRY, DEFAULT_GRAFT_TIMEOUT, DEFAULT_LAZY_DELAY, DEFAULT_MAX_HOPS,
    DEFAULT_ORIGIN_QUEUE, DEFAULT_PACE_BURST, DEFAULT_PACE_PER_SEC, DEFAULT_SEEN_CAP, Delivered,
    DropReason, Engine, GossipConfig, GossipStats, MAX_REPAIR_IDS, MAX_RETAINED,
    MAX_RETAINED_BYTES, PeerCaps, SHORTER_PATH, SubscriberStats, Validator,
};
pub use parts::{
    DEFAULT_LEARNED_KEYS, DEFAULT_RATE_BUCKETS, KeyRing, RateLimiter, SeenCache, Trust,
};
pub use service::{Gossip, GossipError, PEER_EVENT_QUEUE, SHUTDOWN_DRAIN};
pub use tree::{MAX_ANNOUNCERS, MAX_GRAFT_ATTEMPTS, MAX_LAZY_BATCH, MAX_MISSING, MISSING_TTL};
