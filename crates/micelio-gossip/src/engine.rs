//! The gossip engine: a synchronous state machine, no sockets, no clock.
//!
//! Feed it what happens (`peer_up`, `peer_down`, `handle` for a received
//! envelope, `originate` for a local message, `expire` now and then) with the
//! current time; it answers with [`Action`]s for the caller to carry out.
//!
//! Receiving follows protocol v1 exactly: drop if `message_id` or `sender_id`
//! is empty or over 128 bytes, or the payload is over 64 KiB; drop if
//! already seen; find the sender's key (direct, or learned from
//! `sender_pubkey` if it hashes to `sender_id`; never overwriting a direct
//! key); verify; apply the sender's token bucket; only then mark seen;
//! deliver to the local handler of the type, if any; if `hop_count` > 1,
//! decrement and forward to up to `fanout` random peers other than the one
//! it came from.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use micelio_identity::{Identity, NodeId, PublicKey};
use micelio_wire::proto::{GossipDigest, GossipRequest, TreeGraft, TreeIHave};
use micelio_wire::{Envelope, EnvelopeBuilder, EnvelopeError, MsgType, WireMessage as _};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;

use crate::parts::{
    DEFAULT_LEARNED_KEYS, DEFAULT_RATE_BUCKETS, KeyRing, RateLimiter, SeenCache, Trust,
};
use crate::tree::{Link, MAX_LAZY_BATCH, Tree};

/// Default cap on the seen cache (ids): 5 minutes of 870 accepted messages
/// per second, far above a chat mesh's traffic, at about 200 bytes each
/// (about 50 MiB at most). Past it the oldest ids go first.
pub const DEFAULT_SEEN_CAP: usize = 262_144;

/// Default pace of paced originations: 80% of the mesh's per-sender rate
/// (10/s), so that relays' buckets refill faster than we spend them.
pub const DEFAULT_PACE_PER_SEC: u32 = 8;
/// Default burst of paced originations: half the mesh's burst (20), so
/// that relays keep headroom for jitter.
pub const DEFAULT_PACE_BURST: u32 = 10;
/// Default bound of the paced origination queue.
pub const DEFAULT_ORIGIN_QUEUE: usize = 256;

/// Default hop budget of originated messages: 32, where the reference
/// originates with 10 ([`micelio_wire::limits::DEFAULT_MAX_HOPS`]). Relays
/// still decrement it and stop at 1 exactly as the reference does, but a
/// broadcast tree is one spanning tree shared by every originator, so its
/// paths are longer than the shortest ones random relaying finds: over a
/// few dozen nodes, two leaves of the tree can already be more than 10 hops
/// apart. The budget bounds the radius only; what bounds the cost is the
/// seen cache (every node relays a message at most once) and the
/// per-sender rate limits.
pub const DEFAULT_MAX_HOPS: u32 = 32;

/// Default batching delay of lazy announcements.
pub const DEFAULT_LAZY_DELAY: Duration = Duration::from_millis(10);
/// Default wait for an announced message before grafting its announcer.
pub const DEFAULT_GRAFT_TIMEOUT: Duration = Duration::from_millis(100);
/// Default wait before grafting the next announcer.
pub const DEFAULT_GRAFT_RETRY: Duration = Duration::from_millis(50);

/// What a connected peer speaks, from its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PeerCaps {
    /// micelio's core extensions (`micelio/1`): gossip repair is sent to it.
    pub extensions: bool,
    /// micelio's broadcast tree (`micelio/tree/1`): it takes lazy
    /// announcements, grafts and prunes. A peer without it is always pushed
    /// to eagerly, like the reference relays.
    pub tree: bool,
}

impl PeerCaps {
    /// A reference node: no extension at all.
    pub const REFERENCE: Self = Self {
        extensions: false,
        tree: false,
    };
    /// A micelio node of this version: every extension.
    pub const MICELIO: Self = Self {
        extensions: true,
        tree: true,
    };

    /// What a peer's hello announced.
    pub fn from_hello(hello: &micelio_transport::hello::PeerHelloInfo) -> Self {
        Self {
            extensions: hello.speaks_extensions(),
            tree: hello.speaks_tree(),
        }
    }
}

/// Configuration of the gossip engine.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GossipConfig {
    /// Peers each relayed message is forwarded to.
    pub fanout: usize,
    /// Hop budget of originated messages (default [`DEFAULT_MAX_HOPS`]).
    pub max_hops: u32,
    /// How long a message id is remembered.
    pub seen_ttl: Duration,
    /// Most message ids remembered.
    pub seen_cap: usize,
    /// Per-sender sustained rate, messages per second.
    pub rate_per_sec: u32,
    /// Per-sender burst.
    pub rate_burst: u32,
    /// How often a node announces its recent message ids to its peers so
    /// that a peer no random relay picked can ask for what it missed
    /// (gossip repair). Zero disables repair.
    pub repair_interval: Duration,
    /// Messages received or originated this recently are announced.
    pub repair_window: Duration,
    /// How long accepted envelopes are kept to answer repair requests.
    pub repair_retention: Duration,
    /// Most gossip-learned sender keys kept (least recently used evicted).
    pub learned_keys_cap: usize,
    /// Most per-sender rate buckets kept (see [`RateLimiter`]).
    pub rate_buckets_cap: usize,
    /// Pace of this node's own originations through
    /// [`crate::Gossip::try_originate`], messages per second: below the
    /// mesh's per-sender rate so that relays never drop our messages.
    pub pace_per_sec: u32,
    /// Burst of this node's paced originations: below the mesh's burst.
    pub pace_burst: u32,
    /// Paced originations queued (in order) before further ones are refused.
    pub origin_queue: usize,
    /// Disseminate by epidemic broadcast tree between peers that speak it
    /// ([`micelio_wire::limits::FEATURE_BROADCAST_TREE_V1`]): eager push
    /// along a self-repairing spanning tree, lazy announcement of ids to
    /// the other such peers, graft on a missing id. False: every peer gets
    /// the reference's rule (push to `fanout` random peers).
    pub broadcast_tree: bool,
    /// How long lazy announcements (`TreeIHave`) wait to be batched before
    /// they are sent.
    pub lazy_delay: Duration,
    /// How long a node that heard of a message id waits for the message
    /// before it grafts the first peer that announced it.
    pub graft_timeout: Duration,
    /// How long it then waits before grafting the next announcer.
    pub graft_retry: Duration,
    /// Also announce ids to the tree's eager links (not only to the lazy
    /// ones), in the same batches: a push that was lost on the way is then
    /// grafted within `graft_timeout` instead of waiting for gossip repair
    /// (1–2 s). Costs one small control frame per eager link per batch;
    /// over TCP pushes are lost only when a connection dies or a send queue
    /// overflows, so a mesh of reliable links may turn it off.
    pub eager_announce: bool,
}

impl Default for GossipConfig {
    fn default() -> Self {
        use micelio_wire::limits;
        Self {
            fanout: limits::DEFAULT_FANOUT,
            max_hops: DEFAULT_MAX_HOPS,
            seen_ttl: limits::DEFAULT_SEEN_TTL,
            seen_cap: DEFAULT_SEEN_CAP,
            rate_per_sec: limits::DEFAULT_RATE_PER_SEC,
            rate_burst: limits::DEFAULT_RATE_BURST,
            repair_interval: Duration::from_secs(1),
            repair_window: Duration::from_secs(3),
            repair_retention: Duration::from_secs(30),
            learned_keys_cap: DEFAULT_LEARNED_KEYS,
            rate_buckets_cap: DEFAULT_RATE_BUCKETS,
            pace_per_sec: DEFAULT_PACE_PER_SEC,
            pace_burst: DEFAULT_PACE_BURST,
            origin_queue: DEFAULT_ORIGIN_QUEUE,
            broadcast_tree: true,
            lazy_delay: DEFAULT_LAZY_DELAY,
            graft_timeout: DEFAULT_GRAFT_TIMEOUT,
            graft_retry: DEFAULT_GRAFT_RETRY,
            eager_announce: true,
        }
    }
}

/// Why a received envelope was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// `message_id` empty.
    EmptyMessageId,
    /// `message_id` over 128 bytes.
    MessageIdTooLong,
    /// `sender_id` empty.
    EmptySenderId,
    /// `sender_id` over 128 bytes.
    SenderIdTooLong,
    /// Payload over 64 KiB.
    PayloadTooLarge,
    /// Already seen.
    Duplicate,
    /// No key for the sender, and none learnable from the envelope.
    UnknownSender,
    /// `sender_pubkey` present but not hashing to `sender_id`.
    SenderKeyMismatch,
    /// The signature does not verify.
    BadSignature,
    /// The sender is over its rate.
    RateLimited,
    /// A type that does not travel by gossip (hello, keepalive, …).
    NotGossip,
    /// A message that claims to come from this node.
    FromSelf,
    /// A repair digest or request (types 11, 12) whose payload does not
    /// decode.
    BadRepairPayload,
    /// A point-to-point message whose `sender_id` names another node than
    /// the connected peer it came from.
    SenderNotPeer,
    /// A repair message (types 11, 12) from a peer whose hello did not
    /// announce micelio's extensions: it is never answered.
    NotExtensionPeer,
    /// A broadcast-tree message (types 13, 14, 15) whose payload does not
    /// decode.
    BadTreePayload,
    /// A broadcast-tree message from a peer whose hello did not announce
    /// the tree (`micelio/tree/1`): it is never answered.
    NotTreePeer,
    /// The validator of its type (see [`Engine::set_validator`]) refused
    /// the payload: it is neither delivered nor relayed nor kept for
    /// repair. The layer that installed the validator counts why.
    Invalid,
}

/// Checks the payload of one message type before it is delivered or
/// relayed, for a layer above (the state layer checks every type-6 entry's
/// signature and namespace, so that a relay never forwards a forged one).
/// Returns why it refuses, as a short label. Called on the gossip task for
/// every first copy of that type that passed the envelope checks: it must be
/// quick (a signature check is fine) and must not block.
pub type Validator = std::sync::Arc<dyn Fn(&Envelope) -> Result<(), &'static str> + Send + Sync>;

/// The installed validators (shown by type in `Debug`).
#[derive(Default)]
struct Validators(HashMap<MsgType, Validator>);

impl std::fmt::Debug for Validators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl DropReason {
    /// A short stable label, for counters and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::EmptyMessageId => "empty_message_id",
            Self::MessageIdTooLong => "message_id_too_long",
            Self::EmptySenderId => "empty_sender_id",
            Self::SenderIdTooLong => "sender_id_too_long",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Duplicate => "duplicate",
            Self::UnknownSender => "unknown_sender",
            Self::SenderKeyMismatch => "sender_key_mismatch",
            Self::BadSignature => "bad_signature",
            Self::RateLimited => "rate_limited",
            Self::NotGossip => "not_gossip",
            Self::FromSelf => "from_self",
            Self::BadRepairPayload => "bad_repair_payload",
            Self::SenderNotPeer => "sender_not_peer",
            Self::NotExtensionPeer => "not_extension_peer",
            Self::BadTreePayload => "bad_tree_payload",
            Self::NotTreePeer => "not_tree_peer",
            Self::Invalid => "invalid",
        }
    }
}

/// What the engine asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Hand the message to the local handler of its type.
    Deliver(Delivered),
    /// Send this envelope to each of these peers.
    Send {
        /// Connected peers to send to.
        to: Vec<NodeId>,
        /// The envelope (hop count already decremented when relaying).
        envelope: Envelope,
    },
}

/// A message delivered to a local handler.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// Its type.
    pub msg_type: MsgType,
    /// Its originator (verified).
    pub sender: NodeId,
    /// The connected peer it arrived from.
    pub from_peer: NodeId,
    /// The envelope as received.
    pub envelope: Envelope,
}

/// Engine counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GossipStats {
    /// Envelopes received from peers.
    pub received: u64,
    /// Messages handed to local handlers.
    pub delivered: u64,
    /// Messages originated here.
    pub originated: u64,
    /// Frames sent when relaying (one per target peer).
    pub forwarded: u64,
    /// Frames sent when originating (one per peer).
    pub sent_originated: u64,
    /// Accepted messages of a type with no local handler (relayed only).
    pub unhandled: u64,
    /// Drops, by reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// Keys held in the keyring (direct and learned).
    pub keys: u64,
    /// Gossip-learned keys held (at most `learned_keys_cap`).
    pub learned_keys: u64,
    /// Learned keys evicted to stay within the cap.
    pub keys_evicted: u64,
    /// Ids held in the seen cache.
    pub seen: u64,
    /// Seen ids forgotten before their TTL to stay within the cap.
    pub seen_evicted: u64,
    /// Per-sender rate buckets held (at most `rate_buckets_cap`).
    pub rate_buckets: u64,
    /// Rate buckets evicted before they had refilled.
    pub rate_buckets_evicted: u64,
    /// Envelopes kept for repair (at most [`MAX_RETAINED`]).
    pub retained: u64,
    /// Their approximate size in bytes (at most [`MAX_RETAINED_BYTES`]).
    pub retained_bytes: u64,
    /// Kept envelopes evicted before their retention to stay within a cap.
    pub retained_evicted: u64,
    /// Paced originations refused because the origin queue was full.
    pub origin_refused: u64,
    /// Paced originations waiting in the origin queue.
    pub origin_queued: u64,
    /// Each live subscriber's deliveries and drops (filled by the service).
    pub subscribers: Vec<SubscriberStats>,
    /// Repair digests sent (one per peer per round with news).
    pub digests_sent: u64,
    /// Message ids asked for after a peer's digest.
    pub repairs_requested: u64,
    /// Envelopes sent back in answer to repair requests.
    pub repairs_served: u64,
    /// Repair messages (types 11, 12) received from peers.
    pub repair_received: u64,
    /// Tree peers pushed to eagerly now (links of this node's broadcast
    /// tree).
    pub tree_eager_peers: u64,
    /// Tree peers only announced to now (lazy links).
    pub tree_lazy_peers: u64,
    /// `TreeIHave` frames sent (one per lazy peer per batch).
    pub ihave_frames_sent: u64,
    /// Message ids announced in them.
    pub ihave_ids_sent: u64,
    /// Message ids announced to this node.
    pub ihave_ids_received: u64,
    /// `TreeGraft` frames sent: an announced message did not arrive in
    /// time (or a link rejoined the tree).
    pub grafts_sent: u64,
    /// Message ids asked for in them: announced messages that did not
    /// arrive within the graft timeout.
    pub grafted_ids: u64,
    /// `TreeGraft` frames received.
    pub grafts_received: u64,
    /// Messages sent back in answer to grafts.
    pub grafts_served: u64,
    /// `TreePrune` frames sent (a duplicate arrived over an eager link).
    pub prunes_sent: u64,
    /// `TreePrune` frames received.
    pub prunes_received: u64,
    /// Broadcast-tree messages (types 13, 14, 15) received.
    pub tree_received: u64,
    /// Message ids heard of and not yet received (graft timers running).
    pub tree_missing: u64,
    /// Gossip data frames queued to peers (filled by the service).
    pub data_frames_sent: u64,
    /// Their bytes, frame headers included (filled by the service).
    pub data_bytes_sent: u64,
    /// Control frames queued to peers: repair and broadcast-tree messages
    /// (filled by the service).
    pub control_frames_sent: u64,
    /// Their bytes, frame headers included (filled by the service).
    pub control_bytes_sent: u64,
    /// Frames the transport refused because a peer's send queue was full
    /// (filled by the service).
    pub send_refused: u64,
}

/// One subscriber's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// The subscription's number, in order of subscription (from 1).
    pub id: u64,
    /// The type it subscribed to.
    pub msg_type: MsgType,
    /// Deliveries queued to it.
    pub delivered: u64,
    /// Deliveries dropped because its queue was full.
    pub dropped: u64,
}

impl GossipStats {
    /// Deliveries dropped for subscribers that fell behind, all of them.
    pub fn subscriber_drops(&self) -> u64 {
        self.subscribers.iter().map(|s| s.dropped).sum()
    }

    /// Total drops, all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// Drops for one reason.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped.get(&reason).copied().unwrap_or(0)
    }
}

/// The gossip state machine of one node.
#[derive(Debug)]
pub struct Engine {
    identity: Arc<Identity>,
    config: GossipConfig,
    keyring: KeyRing,
    seen: SeenCache,
    limiter: RateLimiter,
    peers: Vec<NodeId>,
    /// The connected peers whose hello announced micelio's extensions: the
    /// only ones repair messages are sent to or answered for.
    extension_peers: HashSet<NodeId>,
    /// The connected peers whose hello announced the broadcast tree: the
    /// only ones tree messages are sent to or answered for.
    tree_speakers: HashSet<NodeId>,
    /// The tree's links (tree speakers, when this node runs the tree).
    tree: Tree,
    /// Tree speakers whose duplicate made us prune them, to be told at the
    /// next [`Engine::tick`].
    prunes: Vec<NodeId>,
    /// Tree speakers this node switched to as its parent for a shorter
    /// path: told with an empty `TreeGraft` at the next tick, so that they
    /// push to us whatever they decided meanwhile.
    adopt: Vec<NodeId>,
    /// When the oldest of those was decided.
    prune_at: Option<Instant>,
    handlers: HashSet<MsgType>,
    /// Payload checks by type ([`Engine::set_validator`]).
    validators: Validators,
    stats: GossipStats,
    rng: SmallRng,
    recent: Recent,
}

/// How many hops shorter a duplicate's path must be than the accepted
/// copy's for the tree to switch to it (see [`Engine::handle`]).
pub const SHORTER_PATH: u32 = 1;

/// Most ids in one repair digest or request.
pub const MAX_REPAIR_IDS: usize = 256;
/// Most envelopes kept to answer repair requests and grafts.
pub const MAX_RETAINED: usize = 4096;
/// Most bytes of envelopes kept to answer repair requests and grafts
/// (payloads can be up to 64 KiB each; 4096 of those would be 256 MiB).
pub const MAX_RETAINED_BYTES: usize = 8 << 20;

/// The memory an envelope kept for repair is counted as.
fn retained_size(env: &Envelope) -> usize {
    env.payload.len()
        + env.message_id.len()
        + env.sender_id.len()
        + env.signature.len()
        + env.sender_pubkey.len()
        + 128
}

/// An unsigned point-to-point control envelope (tree and repair messages:
/// the connection authenticates them, as it does keepalives).
fn control(msg_type: MsgType, payload: Bytes) -> Envelope {
    Envelope {
        msg_type: msg_type.as_u32(),
        payload,
        hop_count: 1,
        ..Envelope::default()
    }
}

/// One envelope kept for repair: when it was accepted and from which peer
/// (`None`: originated here).
#[derive(Debug)]
struct Kept {
    at: Instant,
    id: String,
    from: Option<NodeId>,
}

/// Where the accepted copy of a kept message came from: the tree parent
/// for it, and the hop count it arrived with.
#[derive(Debug, Clone, Copy)]
struct Origin {
    parent: Option<NodeId>,
    hops: u32,
}

/// Envelopes accepted or originated recently, for gossip repair and grafts:
/// at most [`MAX_RETAINED`] of them and [`MAX_RETAINED_BYTES`], oldest
/// evicted first, each forgotten after the retention time.
#[derive(Debug, Default)]
struct Recent {
    map: HashMap<String, Envelope>,
    origins: HashMap<String, Origin>,
    order: VecDeque<Kept>,
    bytes: usize,
    evicted: u64,
}

impl Recent {
    fn pop_oldest(&mut self) -> bool {
        let Some(old) = self.order.pop_front() else {
            return false;
        };
        if let Some(e) = self.map.remove(&old.id) {
            self.bytes = self.bytes.saturating_sub(retained_size(&e));
        }
        self.origins.remove(&old.id);
        true
    }

    fn insert(&mut self, now: Instant, env: &Envelope, from: Option<NodeId>, hops: u32) {
        if self.map.contains_key(&env.message_id) {
            return;
        }
        let size = retained_size(env);
        while !self.map.is_empty()
            && (self.map.len() >= MAX_RETAINED || self.bytes + size > MAX_RETAINED_BYTES)
        {
            if !self.pop_oldest() {
                break;
            }
            self.evicted += 1;
        }
        self.bytes += size;
        self.map.insert(env.message_id.clone(), env.clone());
        self.origins
            .insert(env.message_id.clone(), Origin { parent: from, hops });
        self.order.push_back(Kept {
            at: now,
            id: env.message_id.clone(),
            from,
        });
    }

    fn expire(&mut self, now: Instant, retention: Duration) {
        while let Some(k) = self.order.front() {
            if now.saturating_duration_since(k.at) < retention {
                break;
            }
            self.pop_oldest();
        }
    }

    /// The newest ids kept at or after `from` and before `until`, not
    /// received from `peer`, at most `MAX_REPAIR_IDS`.
    fn between(&self, from: Instant, until: Instant, peer: &NodeId) -> Vec<String> {
        self.order
            .iter()
            .rev()
            .take_while(|k| k.at >= from)
            .filter(|k| k.at < until && k.from.as_ref() != Some(peer))
            .take(MAX_REPAIR_IDS)
            .map(|k| k.id.clone())
            .collect()
    }
}

impl Engine {
    /// A new engine for `identity`; `seed` seeds the fanout choice (fix it in
    /// tests for reproducible runs).
    pub fn new(identity: Arc<Identity>, config: GossipConfig, seed: u64) -> Self {
        Self {
            keyring: KeyRing::with_cap(config.learned_keys_cap),
            seen: SeenCache::new(config.seen_ttl, config.seen_cap),
            limiter: RateLimiter::with_cap(
                config.rate_per_sec,
                config.rate_burst,
                config.rate_buckets_cap,
            ),
            peers: Vec::new(),
            extension_peers: HashSet::new(),
            tree_speakers: HashSet::new(),
            tree: Tree::new(
                config.lazy_delay,
                config.graft_timeout,
                config.graft_retry,
                config.eager_announce,
            ),
            prunes: Vec::new(),
            adopt: Vec::new(),
            prune_at: None,
            handlers: HashSet::new(),
            validators: Validators::default(),
            stats: GossipStats::default(),
            rng: SmallRng::seed_from_u64(seed),
            recent: Recent::default(),
            identity,
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// Registers a local handler for `msg_type`: accepted messages of that
    /// type are delivered. Types without a handler are still relayed.
    pub fn register(&mut self, msg_type: MsgType) {
        self.handlers.insert(msg_type);
    }

    /// Installs `validator` for `msg_type` (replacing an earlier one):
    /// first copies it refuses are dropped as [`DropReason::Invalid`],
    /// remembered as seen (so that they are not asked for again) and never
    /// delivered, relayed or kept for repair.
    pub fn set_validator(&mut self, msg_type: MsgType, validator: Validator) {
        self.validators.0.insert(msg_type, validator);
    }

    /// A micelio peer of this version connected, having proved `key` in
    /// its hello (direct trust): as [`Engine::peer_up_caps`] with
    /// [`PeerCaps::MICELIO`].
    pub fn peer_up(&mut self, id: NodeId, key: PublicKey) {
        self.peer_up_caps(id, key, PeerCaps::MICELIO);
    }

    /// A peer connected, having proved `key` in its hello (direct trust).
    /// `extensions`: whether its hello announced micelio's core extensions;
    /// the peer is taken not to run the broadcast tree. As
    /// [`Engine::peer_up_caps`].
    pub fn peer_up_with(&mut self, id: NodeId, key: PublicKey, extensions: bool) {
        self.peer_up_caps(
            id,
            key,
            PeerCaps {
                extensions,
                tree: false,
            },
        );
    }

    /// A peer connected, having proved `key` in its hello (direct trust),
    /// and speaking `caps` ([`PeerCaps::from_hello`]). Repair traffic
    /// (types 11, 12) goes only to peers with `extensions`, tree traffic
    /// (13, 14, 15) only to peers with `tree`, so reference nodes never pay
    /// for either; gossip is always pushed to a peer without `tree`.
    pub fn peer_up_caps(&mut self, id: NodeId, key: PublicKey, caps: PeerCaps) {
        self.keyring.add(id, key, Trust::Direct);
        if !self.peers.contains(&id) {
            self.peers.push(id);
        }
        if caps.extensions {
            self.extension_peers.insert(id);
        } else {
            self.extension_peers.remove(&id);
        }
        if caps.tree {
            self.tree_speakers.insert(id);
            if self.config.broadcast_tree && !self.tree.has(&id) {
                self.tree.add_peer(id);
            }
        } else {
            self.tree_speakers.remove(&id);
            self.tree.remove_peer(&id);
        }
    }

    /// A peer disconnected: its key stays known as a gossip-learned one
    /// (subject to the cap).
    pub fn peer_down(&mut self, id: &NodeId) {
        self.peers.retain(|p| p != id);
        self.extension_peers.remove(id);
        self.tree_speakers.remove(id);
        self.tree.remove_peer(id);
        self.prunes.retain(|p| p != id);
        self.adopt.retain(|p| p != id);
        self.keyring.release(id);
    }

    /// Learns a key from elsewhere (for example a peer exchange), with
    /// gossip-learned trust.
    pub fn learn_key(&mut self, id: NodeId, key: PublicKey) -> bool {
        self.keyring.add(id, key, Trust::GossipLearned)
    }

    /// The keyring.
    pub fn keyring(&self) -> &KeyRing {
        &self.keyring
    }

    /// Connected peers, as the engine knows them.
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    /// The tree peers this node pushes to eagerly now (its links of the
    /// broadcast tree), sorted.
    pub fn eager_peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|p| self.tree.link(p) == Some(Link::Eager))
            .copied()
            .collect();
        v.sort();
        v
    }

    /// The tree peers this node only announces to now, sorted.
    pub fn lazy_peers(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|p| self.tree.link(p) == Some(Link::Lazy))
            .copied()
            .collect();
        v.sort();
        v
    }

    /// Originates a message: a new id, the full hop budget, our signature
    /// and key, marked seen, pushed to every connected peer but the lazy
    /// links of the broadcast tree, which are sent its id instead (at the
    /// next [`Engine::tick`] due).
    pub fn originate(
        &mut self,
        now: Instant,
        msg_type: MsgType,
        payload: Bytes,
    ) -> (Envelope, Vec<Action>) {
        let env = EnvelopeBuilder::gossip(msg_type, payload)
            .hop_count(self.config.max_hops)
            .sign(&self.identity);
        self.seen.insert(&env.message_id, now);
        self.recent
            .insert(now, &env, None, env.hop_count.saturating_add(1));
        self.stats.originated += 1;
        let mut actions = Vec::new();
        let (mut to, full) = self.tree.disseminate(now, &env.message_id, None);
        to.extend(self.peers.iter().filter(|p| !self.tree.has(p)).copied());
        self.ihave_actions(full, &mut actions);
        if !to.is_empty() {
            self.stats.sent_originated += to.len() as u64;
            actions.push(Action::Send {
                to,
                envelope: env.clone(),
            });
        }
        (env, actions)
    }

    /// Counts a drop decided outside the engine (by its driver).
    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        self.drop_for(reason);
    }

    fn drop_for(&mut self, reason: DropReason) -> DropReason {
        *self.stats.dropped.entry(reason).or_insert(0) += 1;
        reason
    }

    /// Handles an envelope received from connected peer `from`.
    ///
    /// A duplicate that came over an eager link of the broadcast tree
    /// prunes that link: the `TreePrune` leaves at the next
    /// [`Engine::tick`], which is then due at once.
    ///
    /// # Errors
    /// The [`DropReason`] when the envelope is dropped (and counted).
    pub fn handle(
        &mut self,
        now: Instant,
        from: NodeId,
        mut env: Envelope,
    ) -> Result<Vec<Action>, DropReason> {
        self.stats.received += 1;
        if env.kind().routing() != micelio_wire::Routing::Gossip {
            return Err(self.drop_for(DropReason::NotGossip));
        }
        if let Err(e) = env.check_gossip_limits() {
            let reason = match e {
                EnvelopeError::EmptyMessageId => DropReason::EmptyMessageId,
                EnvelopeError::MessageIdTooLong(_) => DropReason::MessageIdTooLong,
                EnvelopeError::EmptySenderId => DropReason::EmptySenderId,
                EnvelopeError::SenderIdTooLong(_) => DropReason::SenderIdTooLong,
                _ => DropReason::PayloadTooLarge,
            };
            return Err(self.drop_for(reason));
        }
        if self.seen.contains(&env.message_id, now) {
            self.duplicate_from(now, from, &env);
            return Err(self.drop_for(DropReason::Duplicate));
        }
        let Ok(sender) = env.sender_id.parse::<NodeId>() else {
            return Err(self.drop_for(DropReason::UnknownSender));
        };
        if sender == *self.identity.node_id() {
            return Err(self.drop_for(DropReason::FromSelf));
        }
        let key = match self.keyring.get(&sender) {
            Some((key, _)) => key,
            None => match env.embedded_sender_key() {
                Ok(key) => key,
                Err(EnvelopeError::SenderKeyMismatch) => {
                    return Err(self.drop_for(DropReason::SenderKeyMismatch));
                }
                Err(_) => return Err(self.drop_for(DropReason::UnknownSender)),
            },
        };
        if env.verify_with(&key).is_err() {
            return Err(self.drop_for(DropReason::BadSignature));
        }
        // The key is learned only once a signature made with it verified.
        self.keyring.add(sender, key, Trust::GossipLearned);
        if !self.limiter.allow(sender, now) {
            return Err(self.drop_for(DropReason::RateLimited));
        }
        self.seen.insert(&env.message_id, now);
        self.tree.received(&env.message_id);
        let msg_type = env.kind();
        if let Some(validator) = self.validators.0.get(&msg_type)
            && validator(&env).is_err()
        {
            return Err(self.drop_for(DropReason::Invalid));
        }
        // The first copy keeps the path it came by in the tree.
        self.tree.make_eager(&from);

        let mut actions = Vec::with_capacity(3);
        let forward = env.hop_count > 1;
        if self.handlers.contains(&msg_type) {
            self.stats.delivered += 1;
            actions.push(Action::Deliver(Delivered {
                msg_type,
                sender,
                from_peer: from,
                envelope: env.clone(),
            }));
        } else {
            self.stats.unhandled += 1;
        }
        if forward {
            env.hop_count -= 1;
        }
        // Kept as relayed (hop count already decremented) for repair.
        let received_hops = if forward {
            env.hop_count + 1
        } else {
            env.hop_count
        };
        self.recent.insert(now, &env, Some(from), received_hops);
        if forward {
            let mut to = if self.config.broadcast_tree {
                // Eager tree links, and every peer outside the tree (as the
                // reference relays to them); ids to the lazy links.
                let (mut to, full) = self.tree.disseminate(now, &env.message_id, Some(&from));
                to.extend(
                    self.peers
                        .iter()
                        .filter(|p| **p != from && !self.tree.has(p))
                        .copied(),
                );
                self.ihave_actions(full, &mut actions);
                to
            } else {
                let candidates: Vec<NodeId> =
                    self.peers.iter().copied().filter(|p| *p != from).collect();
                candidates
                    .choose_multiple(&mut self.rng, self.config.fanout)
                    .copied()
                    .collect()
            };
            to.sort();
            if !to.is_empty() {
                self.stats.forwarded += to.len() as u64;
                actions.push(Action::Send { to, envelope: env });
            }
        }
        Ok(actions)
    }

    /// A duplicate of an accepted message came from `from`. Over an eager
    /// tree link it prunes that link, unless it came by a path at least
    /// [`SHORTER_PATH`] hops shorter than the accepted copy: then the
    /// accepted copy's parent is pruned instead, and `from` stays eager, so
    /// that the tree keeps the shortest paths it is shown (and its depth
    /// within the hop budget).
    fn duplicate_from(&mut self, now: Instant, from: NodeId, env: &Envelope) {
        if !self.tree.has(&from) {
            return;
        }
        let origin = self.recent.origins.get(&env.message_id).copied();
        let mut prune = from;
        if let Some(o) = origin
            && let Some(parent) = o.parent
            && parent != from
            && env.hop_count >= o.hops.saturating_add(SHORTER_PATH)
            && self.tree.link(&parent) == Some(Link::Eager)
        {
            prune = parent;
            self.tree.make_eager(&from);
            if !self.adopt.contains(&from) {
                self.adopt.push(from);
                self.prune_at.get_or_insert(now);
            }
            self.recent.origins.insert(
                env.message_id.clone(),
                Origin {
                    parent: Some(from),
                    hops: env.hop_count,
                },
            );
        }
        if self.tree.make_lazy(&prune) {
            self.prunes.push(prune);
            self.prune_at.get_or_insert(now);
        }
    }

    /// `TreeIHave` envelopes for full lazy batches.
    fn ihave_actions(&mut self, batches: Vec<(NodeId, Vec<String>)>, actions: &mut Vec<Action>) {
        for (peer, ids) in batches {
            self.stats.ihave_frames_sent += 1;
            self.stats.ihave_ids_sent += ids.len() as u64;
            let payload = TreeIHave { message_ids: ids }.encode_bytes();
            actions.push(Action::Send {
                to: vec![peer],
                envelope: control(MsgType::TreeIHave, payload),
            });
        }
    }

    /// When [`Engine::tick`] is next due, if anything is waiting: lazy
    /// announcements to batch, graft timers, prunes to tell.
    pub fn next_tick(&self) -> Option<Instant> {
        match (self.prune_at, self.tree.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Carries out what the broadcast tree has due at `now`: batched lazy
    /// announcements (`TreeIHave`), grafts for announced messages that did
    /// not arrive in time (`TreeGraft`, to the next announcer, whose link
    /// turns eager), prunes after duplicates (`TreePrune`). Call it when
    /// [`Engine::next_tick`] says.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.prune_at = None;
        for peer in std::mem::take(&mut self.prunes) {
            self.stats.prunes_sent += 1;
            actions.push(Action::Send {
                to: vec![peer],
                envelope: control(MsgType::TreePrune, Bytes::new()),
            });
        }
        let seen = &self.seen;
        let mut out = self.tree.tick(now, |id| seen.contains(id, now));
        self.ihave_actions(out.ihave, &mut actions);
        for peer in std::mem::take(&mut self.adopt) {
            if !out.graft.iter().any(|(p, _)| *p == peer) {
                out.graft.push((peer, Vec::new()));
            }
        }
        for (peer, ids) in out.graft {
            self.stats.grafts_sent += 1;
            self.stats.grafted_ids += ids.len() as u64;
            let payload = TreeGraft { message_ids: ids }.encode_bytes();
            actions.push(Action::Send {
                to: vec![peer],
                envelope: control(MsgType::TreeGraft, payload),
            });
        }
        actions
    }

    /// Handles a broadcast-tree message (types 13, 14, 15) from connected
    /// peer `from`: an announcement starts graft timers for the ids not
    /// seen here; a graft turns the link eager and is answered with the
    /// envelopes still kept; a prune turns the link lazy.
    ///
    /// # Errors
    /// [`DropReason::NotTreePeer`] when `from` did not announce the tree,
    /// [`DropReason::BadTreePayload`] for an undecodable payload,
    /// [`DropReason::NotGossip`] for another type.
    pub fn handle_tree(
        &mut self,
        now: Instant,
        from: NodeId,
        env: &Envelope,
    ) -> Result<Vec<Action>, DropReason> {
        self.stats.tree_received += 1;
        if !self.tree_speakers.contains(&from) {
            return Err(self.drop_for(DropReason::NotTreePeer));
        }
        let valid = |id: &String| !id.is_empty() && id.len() <= micelio_wire::limits::MAX_ID_LEN;
        match env.kind() {
            MsgType::TreeIHave => {
                let Ok(m) = TreeIHave::decode_wire(env.payload.clone()) else {
                    return Err(self.drop_for(DropReason::BadTreePayload));
                };
                for id in m
                    .message_ids
                    .iter()
                    .take(MAX_LAZY_BATCH)
                    .filter(|i| valid(i))
                {
                    self.stats.ihave_ids_received += 1;
                    if !self.seen.contains(id, now) {
                        self.tree.announced(now, from, id);
                    }
                }
                Ok(Vec::new())
            }
            MsgType::TreeGraft => {
                let Ok(m) = TreeGraft::decode_wire(env.payload.clone()) else {
                    return Err(self.drop_for(DropReason::BadTreePayload));
                };
                self.stats.grafts_received += 1;
                self.tree.make_eager(&from);
                let actions: Vec<Action> = m
                    .message_ids
                    .iter()
                    .take(MAX_LAZY_BATCH)
                    .filter_map(|id| self.recent.map.get(id))
                    .map(|e| Action::Send {
                        to: vec![from],
                        envelope: e.clone(),
                    })
                    .collect();
                self.stats.grafts_served += actions.len() as u64;
                Ok(actions)
            }
            MsgType::TreePrune => {
                self.stats.prunes_received += 1;
                self.tree.make_lazy(&from);
                Ok(Vec::new())
            }
            _ => Err(self.drop_for(DropReason::NotGossip)),
        }
    }

    /// Forgets expired seen ids, idle rate buckets, envelopes kept for
    /// repair and stale graft timers.
    pub fn expire(&mut self, now: Instant) {
        self.seen.expire(now);
        self.limiter.expire(now);
        self.recent.expire(now, self.config.repair_retention);
        self.tree.expire(now);
    }

    /// One round of gossip repair, the last safety net behind the tree:
    /// sends every peer that speaks micelio's extensions a `GossipDigest`
    /// (type 11, hop count 1, unsigned: the connection authenticates it)
    /// of the ids accepted or originated
    /// within `repair_window` (at most [`MAX_REPAIR_IDS`], newest first),
    /// except the ones that peer sent us. Toward a tree peer, ids of the
    /// last `repair_interval` are left for the next round: the tree and its
    /// lazy announcements have had their chance by then. Call every
    /// `repair_interval`; with the defaults (1 s, 3 s) a tree peer is told
    /// of each id twice, another extension peer three times.
    pub fn repair_tick(&mut self, now: Instant) -> Vec<Action> {
        if self.config.repair_interval.is_zero() {
            return Vec::new();
        }
        let from = now
            .checked_sub(self.config.repair_window)
            .unwrap_or_else(|| self.recent.order.front().map_or(now, |k| k.at));
        let tree_until = now.checked_sub(self.config.repair_interval).unwrap_or(from);
        let mut actions = Vec::new();
        let peers: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|p| self.extension_peers.contains(p))
            .copied()
            .collect();
        for peer in peers {
            let until = if self.tree.has(&peer) {
                tree_until
            } else {
                now
            };
            let ids = self.recent.between(from, until, &peer);
            if ids.is_empty() {
                continue;
            }
            let payload = GossipDigest { message_ids: ids }.encode_bytes();
            let envelope = control(MsgType::GossipDigest, payload);
            self.stats.digests_sent += 1;
            actions.push(Action::Send {
                to: vec![peer],
                envelope,
            });
        }
        actions
    }

    /// Handles a repair message from connected peer `from`: a digest is
    /// answered with a request for the ids not seen here; a request is
    /// answered with the envelopes still kept. Repaired envelopes then go
    /// through [`Engine::handle`] like any gossip, so they are verified,
    /// delivered once and relayed.
    ///
    /// # Errors
    /// [`DropReason::BadRepairPayload`] for an undecodable payload,
    /// [`DropReason::NotExtensionPeer`] when `from` did not announce the
    /// extensions, [`DropReason::NotGossip`] for another type.
    pub fn handle_repair(
        &mut self,
        now: Instant,
        from: NodeId,
        env: &Envelope,
    ) -> Result<Vec<Action>, DropReason> {
        self.stats.repair_received += 1;
        if !self.extension_peers.contains(&from) {
            return Err(self.drop_for(DropReason::NotExtensionPeer));
        }
        match env.kind() {
            MsgType::GossipDigest => {
                let Ok(d) = GossipDigest::decode_wire(env.payload.clone()) else {
                    return Err(self.drop_for(DropReason::BadRepairPayload));
                };
                let missing: Vec<String> = d
                    .message_ids
                    .into_iter()
                    .take(MAX_REPAIR_IDS)
                    .filter(|id| !id.is_empty() && id.len() <= micelio_wire::limits::MAX_ID_LEN)
                    .filter(|id| !self.seen.contains(id, now))
                    .collect();
                if missing.is_empty() {
                    return Ok(Vec::new());
                }
                self.stats.repairs_requested += missing.len() as u64;
                let payload = GossipRequest {
                    message_ids: missing,
                }
                .encode_bytes();
                let envelope = control(MsgType::GossipRequest, payload);
                Ok(vec![Action::Send {
                    to: vec![from],
                    envelope,
                }])
            }
            MsgType::GossipRequest => {
                let Ok(r) = GossipRequest::decode_wire(env.payload.clone()) else {
                    return Err(self.drop_for(DropReason::BadRepairPayload));
                };
                let actions: Vec<Action> = r
                    .message_ids
                    .iter()
                    .take(MAX_REPAIR_IDS)
                    .filter_map(|id| self.recent.map.get(id))
                    .map(|e| Action::Send {
                        to: vec![from],
                        envelope: e.clone(),
                    })
                    .collect();
                self.stats.repairs_served += actions.len() as u64;
                Ok(actions)
            }
            _ => Err(self.drop_for(DropReason::NotGossip)),
        }
    }

    /// The counters.
    pub fn stats(&self) -> GossipStats {
        let mut s = self.stats.clone();
        s.keys = self.keyring.len() as u64;
        s.learned_keys = self.keyring.learned_len() as u64;
        s.keys_evicted = self.keyring.evicted();
        s.seen = self.seen.len() as u64;
        s.seen_evicted = self.seen.evicted();
        s.rate_buckets = self.limiter.len() as u64;
        s.rate_buckets_evicted = self.limiter.evicted();
        s.retained = self.recent.map.len() as u64;
        s.retained_bytes = self.recent.bytes as u64;
        s.retained_evicted = self.recent.evicted;
        let (eager, lazy) = self.tree.counts();
        s.tree_eager_peers = eager as u64;
        s.tree_lazy_peers = lazy as u64;
        s.tree_missing = self.tree.missing_len() as u64;
        s
    }
}
