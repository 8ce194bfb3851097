//! The hub: one task that owns the sessions, their nicks, the history and
//! what is known of other nodes' users, driven by channels.
//!
//! Everything sessions send to the mesh waits in the [`Outbox`] (per
//! session FIFOs, bounded, drained round-robin at the origin's pace) and
//! leaves through [`micelio_gossip::Gossip::try_originate`], which never
//! waits. A line the outbox refuses is reported to its author, never
//! silently lost.
//!
//! What other nodes announce (presence) is untrusted and capped: at most
//! [`MAX_REMOTE_NODES`] nodes of at most [`MAX_REMOTE_NICKS`] nicks each,
//! each forgotten when its announcement's TTL (clamped to 10..=600 s) runs
//! out. When the table is full, the node first heard most recently is
//! evicted: nodes already known keep their place during a flood of fresh
//! identities, and a newcomer gets in once the flood stops.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use micelio_gossip::{Delivered, GossipError};
use micelio_identity::NodeId;
use micelio_wire::proto::{ChatMessage, DirectMessage, Presence};
use micelio_wire::{MsgType, WireMessage as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::chat::{ChatLine, unix_now};
use crate::outbox::{Outbox, OutboxLimits, Refused};
use crate::text::{ChatView, NickError, check_nick, nick_from_user, sanitize};

/// Lines queued per session before further ones are dropped for it.
pub(crate) const SESSION_QUEUE: usize = 256;
/// Most other nodes whose users are remembered.
pub const MAX_REMOTE_NODES: usize = 1024;
/// Most nicks remembered per other node (the rest of an announcement is
/// ignored, and counted).
pub const MAX_REMOTE_NICKS: usize = 256;
/// Longest node name kept, in characters.
pub const MAX_NODE_NAME: usize = 64;
/// Shortest TTL a presence announcement is given.
pub const PRESENCE_TTL_MIN: Duration = Duration::from_secs(10);
/// Longest TTL a presence announcement is given, whatever it asks.
pub const PRESENCE_TTL_MAX: Duration = Duration::from_secs(600);
/// How often sessions and remote nodes are checked for expiry.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How long a stopping hub keeps handing its outbox to gossip, at the
/// origin's pace: the lines users sent just before a shutdown still go out
/// (at 8 a second, the burst and about 8 more); what is left after it is
/// counted in `lines_lost` and logged.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// Sends one message to the mesh without waiting: in production
/// [`micelio_gossip::Gossip::try_originate`].
pub(crate) type Origin = Box<dyn FnMut(MsgType, Bytes) -> Result<(), GossipError> + Send>;

/// How many peers this node has now: a new one is told our users soon,
/// not at the next periodic refresh.
pub(crate) type PeerCount = Box<dyn Fn() -> usize + Send>;

/// The hub's counters, as a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PartylineStats {
    /// Sessions open on this node (quiet ones included).
    pub sessions: u64,
    /// Other nodes whose users are known.
    pub remote_nodes: u64,
    /// Users known on other nodes.
    pub remote_users: u64,
    /// Other nodes evicted to stay within [`MAX_REMOTE_NODES`].
    pub remote_evicted: u64,
    /// Other nodes forgotten because their announcement expired.
    pub remote_expired: u64,
    /// Nicks of announcements ignored beyond [`MAX_REMOTE_NICKS`].
    pub remote_nicks_ignored: u64,
    /// Lines (chat, private) refused because the outbox was full.
    pub lines_refused: u64,
    /// Lines waiting in the outbox.
    pub lines_queued: u64,
    /// Lines gossip refused for good (it had stopped, or on shutdown).
    pub lines_lost: u64,
    /// Presence announcements sent.
    pub presence_sent: u64,
    /// Presence announcements put off because the outgoing queue was full.
    pub presence_deferred: u64,
}

/// What a session receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// A chat line (public or private, local or from the mesh).
    Chat(ChatView),
    /// A notice from the partyline (joins, leaves, nick changes).
    Notice(String),
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Chat(c) => c.fmt(f),
            Self::Notice(n) => write!(f, "*** {n}"),
        }
    }
}

/// One user, as `/who` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WhoEntry {
    /// The node's name.
    pub node: String,
    /// The node's NodeId.
    pub node_id: String,
    /// Whether it is this node.
    pub local: bool,
    /// The nicks on it, sorted.
    pub nicks: Vec<String>,
}

pub(crate) enum HubMsg {
    Join {
        user: String,
        quiet: bool,
        reply: oneshot::Sender<(u64, String, mpsc::Receiver<Output>)>,
    },
    Leave {
        id: u64,
    },
    Nick {
        id: u64,
        nick: String,
        reply: oneshot::Sender<Result<String, NickError>>,
    },
    Say {
        id: u64,
        text: String,
        action: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Private {
        id: u64,
        to: String,
        text: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Who {
        reply: oneshot::Sender<Vec<WhoEntry>>,
    },
    NodeName {
        id: NodeId,
        reply: oneshot::Sender<Option<String>>,
    },
    Stats {
        reply: oneshot::Sender<PartylineStats>,
    },
    /// Test-only fault: the hub task panics.
    #[cfg(test)]
    Panic,
}

struct SessionSlot {
    nick: String,
    /// A one-command session (exec): not announced, not listed.
    quiet: bool,
    tx: mpsc::Sender<Output>,
    drop_logged: bool,
}

struct RemoteNode {
    name: String,
    nicks: Vec<String>,
    seq: u64,
    expires: Instant,
    /// When this node was first heard (eviction goes newest first).
    first_heard: Instant,
}

/// How often presence is announced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PresenceTiming {
    /// Periodic refresh.
    pub(crate) every: Duration,
    /// A change is announced this long after it, so that a burst of changes
    /// costs one announcement.
    pub(crate) debounce: Duration,
}

pub(crate) struct Hub {
    node_id: NodeId,
    node_name: String,
    origin: Origin,
    outbox: Outbox,
    peer_count: PeerCount,
    last_peer_count: usize,
    history_len: usize,
    presence: PresenceTiming,
    sessions: BTreeMap<u64, SessionSlot>,
    next_id: u64,
    history: VecDeque<ChatView>,
    remote: HashMap<NodeId, RemoteNode>,
    presence_seq: u64,
    /// When the next periodic announcement is due.
    presence_due: Instant,
    /// When a pending change is to be announced.
    presence_dirty: Option<Instant>,
    /// When the last announcement left.
    presence_sent_at: Option<Instant>,
    stats: PartylineStats,
    refuse_logged: bool,
    /// Every public chat line (this node's and the mesh's), for
    /// [`crate::Partyline::subscribe_chat`].
    chat_tap: Option<tokio::sync::broadcast::Sender<ChatView>>,
}

impl Hub {
    pub(crate) fn new(
        node_id: NodeId,
        node_name: String,
        origin: Origin,
        outbox: OutboxLimits,
        peer_count: PeerCount,
        history_len: usize,
        presence: PresenceTiming,
    ) -> Self {
        Self {
            node_id,
            node_name,
            origin,
            outbox: Outbox::new(outbox),
            last_peer_count: peer_count(),
            peer_count,
            history_len,
            presence: PresenceTiming {
                // Refreshed before receivers forget it (TTL = 3 periods,
                // clamped to PRESENCE_TTL_MAX), and never in a busy loop.
                every: presence
                    .every
                    .clamp(Duration::from_millis(100), PRESENCE_TTL_MAX / 3),
                debounce: presence.debounce,
            },
            sessions: BTreeMap::new(),
            next_id: 1,
            history: VecDeque::new(),
            remote: HashMap::new(),
            // Milliseconds since the epoch: a restarted node keeps increasing.
            presence_seq: unix_now().saturating_mul(1000),
            presence_due: Instant::now(),
            presence_dirty: None,
            presence_sent_at: None,
            stats: PartylineStats::default(),
            refuse_logged: false,
            chat_tap: None,
        }
    }

    /// Sends every public chat line to `tap` as well.
    pub(crate) fn with_chat_tap(mut self, tap: tokio::sync::broadcast::Sender<ChatView>) -> Self {
        self.chat_tap = Some(tap);
        self
    }

    fn next_presence(&self) -> Instant {
        match self.presence_dirty {
            Some(at) => at.min(self.presence_due),
            None => self.presence_due,
        }
    }

    /// A new peer learns our users after the debounce delay, not at the next
    /// refresh.
    fn watch_peers(&mut self) {
        let n = (self.peer_count)();
        if n > self.last_peer_count {
            self.presence_changed();
        }
        self.last_peer_count = n;
    }

    /// Our users changed: announce it at once if nothing was announced
    /// within the debounce delay, otherwise when that delay has passed
    /// since the last announcement. At most one announcement per delay,
    /// and the first change of a quiet spell is seen at once (so a line
    /// said right after joining already shows the node's name elsewhere).
    fn presence_changed(&mut self) {
        let now = Instant::now();
        let at = match self.presence_sent_at {
            Some(sent) => (sent + self.presence.debounce).max(now),
            None => now,
        };
        self.presence_dirty = Some(self.presence_dirty.map_or(at, |d| d.min(at)));
    }

    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<HubMsg>,
        mut chat: mpsc::Receiver<Delivered>,
        mut presence: mpsc::Receiver<Delivered>,
        mut direct: mpsc::Receiver<Delivered>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let presence_at = self.next_presence();
            let outbox_at = self.outbox.next_at(Instant::now());
            tokio::select! {
                _ = cancel.cancelled() => break,
                msg = rx.recv() => match msg {
                    Some(m) => self.handle(m),
                    None => break,
                },
                Some(d) = chat.recv() => self.remote_chat(&d),
                Some(d) = presence.recv() => self.remote_presence(&d),
                Some(d) = direct.recv() => self.remote_direct(&d),
                _ = tick.tick() => {
                    self.prune();
                    self.expire_remote();
                    self.watch_peers();
                }
                _ = tokio::time::sleep_until(presence_at) => self.announce(),
                _ = tokio::time::sleep_until(outbox_at.unwrap_or(presence_at)), if outbox_at.is_some() => {
                    self.pump();
                }
            }
        }
        for slot in self.sessions.values() {
            let _ = slot
                .tx
                .try_send(Output::Notice("the partyline is shutting down".into()));
        }
        self.drain(Instant::now() + SHUTDOWN_DRAIN).await;
    }

    /// Keeps pumping the outbox at its pace until it is empty or
    /// `deadline`; what is left is counted lost and logged.
    async fn drain(&mut self, deadline: Instant) {
        while let Some(at) = self.outbox.next_at(Instant::now()) {
            if at > deadline {
                break;
            }
            tokio::time::sleep_until(at).await;
            self.pump();
        }
        if self.outbox.len() > 0 {
            warn!(
                lines = self.outbox.len(),
                "lines not sent to the mesh at shutdown (counted in lines_lost)"
            );
            self.stats.lines_lost += self.outbox.len() as u64;
        }
    }

    fn handle(&mut self, msg: HubMsg) {
        if matches!(msg, HubMsg::Join { .. } | HubMsg::Who { .. }) {
            self.prune();
        }
        match msg {
            HubMsg::Join { user, quiet, reply } => {
                let nick = self.unique_nick(&nick_from_user(&user));
                let (tx, rx) = mpsc::channel(SESSION_QUEUE);
                let id = self.next_id;
                self.next_id += 1;
                if !quiet {
                    // History first, then the join notice.
                    for line in &self.history {
                        let _ = tx.try_send(Output::Chat(line.clone()));
                    }
                    self.broadcast(Output::Notice(format!("{nick} joined")));
                }
                self.sessions.insert(
                    id,
                    SessionSlot {
                        nick: nick.clone(),
                        quiet,
                        tx,
                        drop_logged: false,
                    },
                );
                let _ = reply.send((id, nick, rx));
                if !quiet {
                    self.presence_changed();
                }
            }
            HubMsg::Leave { id } => {
                // A change still waiting (a new nick) is announced before
                // the leave, so that other nodes see who left.
                if self.presence_dirty.is_some() && self.sessions.get(&id).is_some_and(|s| !s.quiet)
                {
                    self.announce();
                }
                if let Some(slot) = self.sessions.remove(&id)
                    && !slot.quiet
                {
                    self.broadcast(Output::Notice(format!("{} left", slot.nick)));
                    self.presence_changed();
                }
            }
            HubMsg::Nick { id, nick, reply } => {
                let result = self.rename(id, &nick);
                if result.is_ok() {
                    self.presence_changed();
                }
                let _ = reply.send(result);
            }
            HubMsg::Say {
                id,
                text,
                action,
                reply,
            } => {
                let _ = reply.send(self.say(id, text, action));
            }
            HubMsg::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            #[cfg(test)]
            HubMsg::Panic => panic!("test fault: the hub panics"),
            HubMsg::Private {
                id,
                to,
                text,
                reply,
            } => {
                let _ = reply.send(self.private(id, &to, text));
            }
            HubMsg::Who { reply } => {
                let _ = reply.send(self.who());
            }
            HubMsg::NodeName { id, reply } => {
                let _ = reply.send(self.node_name_of(&id));
            }
        }
    }

    /// Removes sessions whose end was dropped without a leave reaching us.
    fn prune(&mut self) {
        let gone: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.handle(HubMsg::Leave { id });
        }
    }

    fn nick_taken(&self, nick: &str, except: Option<u64>) -> bool {
        self.sessions
            .iter()
            .any(|(id, s)| Some(*id) != except && s.nick.eq_ignore_ascii_case(nick))
    }

    fn unique_nick(&self, base: &str) -> String {
        if !self.nick_taken(base, None) {
            return base.to_owned();
        }
        (2u64..)
            .map(|n| {
                let suffix = n.to_string();
                let keep = crate::text::MAX_NICK_LEN.saturating_sub(suffix.len());
                let stem: String = base.chars().take(keep).collect();
                format!("{stem}{suffix}")
            })
            .find(|c| !self.nick_taken(c, None))
            .unwrap_or_else(|| base.to_owned())
    }

    fn rename(&mut self, id: u64, nick: &str) -> Result<String, NickError> {
        check_nick(nick)?;
        if self.nick_taken(nick, Some(id)) {
            return Err(NickError::Taken(nick.to_owned()));
        }
        let Some(slot) = self.sessions.get_mut(&id) else {
            return Err(NickError::Empty);
        };
        let old = std::mem::replace(&mut slot.nick, nick.to_owned());
        self.broadcast(Output::Notice(format!("{old} is now known as {nick}")));
        Ok(old)
    }

    fn send_to(slot: &mut SessionSlot, out: Output) {
        if slot.tx.try_send(out).is_err() && !slot.tx.is_closed() && !slot.drop_logged {
            // A session that does not read its output loses lines; it never
            // slows the hub or anyone else down.
            slot.drop_logged = true;
            warn!(nick = %slot.nick, "session is not reading: dropping its lines");
        }
    }

    fn broadcast(&mut self, out: Output) {
        for slot in self.sessions.values_mut().filter(|s| !s.quiet) {
            Self::send_to(slot, out.clone());
        }
    }

    fn remember(&mut self, line: ChatView) {
        if let Some(tap) = &self.chat_tap {
            // No receiver is not an error.
            let _ = tap.send(line.clone());
        }
        if self.history.len() == self.history_len {
            self.history.pop_front();
        }
        if self.history_len > 0 {
            self.history.push_back(line);
        }
    }

    /// A line typed here: queued for the mesh first; shown here only if the
    /// mesh will see it too.
    fn say(&mut self, id: u64, text: String, action: bool) -> Result<(), String> {
        let Some(nick) = self.sessions.get(&id).map(|s| s.nick.clone()) else {
            return Err("no such session".into());
        };
        let timestamp = unix_now();
        let wire_text = if action {
            format!("/me {text}")
        } else {
            text.clone()
        };
        let payload = ChatMessage {
            nick: nick.clone(),
            text: wire_text,
            timestamp,
        }
        .encode_wire();
        self.send_line(id, MsgType::Chat, payload.into())?;
        let view = ChatView {
            nick,
            node: self.node_name.clone(),
            text,
            timestamp,
            action,
            private: false,
        };
        self.broadcast(Output::Chat(view.clone()));
        self.remember(view);
        Ok(())
    }

    /// Queues a line of session `id` for the mesh and sends what the pace
    /// allows; a refusal is the user's to know.
    fn send_line(&mut self, id: u64, kind: MsgType, payload: Bytes) -> Result<(), String> {
        match self.outbox.push(id, kind, payload) {
            Ok(()) => {
                self.pump();
                Ok(())
            }
            Err(refused) => {
                self.stats.lines_refused += 1;
                if !self.refuse_logged {
                    self.refuse_logged = true;
                    warn!(%kind, ?refused, "line refused: the outbox is full (logged once)");
                }
                let pace = self.outbox.per_sec();
                Err(match refused {
                    Refused::SessionFull(n) => format!(
                        "line not sent: you have {n} lines waiting to go out to the mesh \
                         (at {pace} a second); wait a moment and send it again"
                    ),
                    Refused::Full(n) => format!(
                        "line not sent: {n} lines are waiting to go out to the mesh \
                         (at {pace} a second); wait a moment and send it again"
                    ),
                })
            }
        }
    }

    fn pump(&mut self) {
        let done = self.outbox.pump(Instant::now(), &mut *self.origin);
        if done.lost > 0 {
            self.stats.lines_lost += done.lost;
            debug!(lost = done.lost, "gossip refused lines for good");
        }
    }

    fn private(&mut self, id: u64, to: &str, text: String) -> Result<String, String> {
        let Some(from) = self.sessions.get(&id).map(|s| s.nick.clone()) else {
            return Err("no such session".into());
        };
        let (nick, node) = match to.split_once('@') {
            Some((n, node)) => (n, Some(node)),
            None => (to, None),
        };
        let view = ChatView {
            nick: from.clone(),
            node: self.node_name.clone(),
            text: text.clone(),
            timestamp: unix_now(),
            action: false,
            private: true,
        };
        let local_target =
            node.is_none_or(|n| n == self.node_name || self.node_id.to_hex().starts_with(n));
        let local = self
            .sessions
            .values_mut()
            .find(|s| local_target && s.nick.eq_ignore_ascii_case(nick));
        if let Some(slot) = local {
            Self::send_to(slot, Output::Chat(view));
            return Ok(format!("-> {nick}@{}: {text}", self.node_name));
        }
        let matches: Vec<(NodeId, String)> = self
            .remote
            .iter()
            .filter(|(id, r)| node.is_none_or(|n| r.name == n || id.to_hex().starts_with(n)))
            .filter(|(_, r)| r.nicks.iter().any(|x| x.eq_ignore_ascii_case(nick)))
            .map(|(id, r)| (*id, r.name.clone()))
            .collect();
        match matches.as_slice() {
            [] => Err(format!("no user {to} on the mesh (see /who)")),
            [(node_id, name)] => {
                let payload = DirectMessage {
                    to_node: node_id.to_hex(),
                    to_nick: nick.to_owned(),
                    from_nick: from,
                    text: text.clone(),
                    timestamp: view.timestamp,
                }
                .encode_wire();
                self.send_line(id, MsgType::DirectMessage, payload.into())?;
                Ok(format!("-> {nick}@{name}: {text}"))
            }
            many => Err(format!(
                "{nick} is on several nodes ({}): use /msg {nick}@<node> <text>",
                many.iter()
                    .map(|(_, n)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    fn node_name_of(&self, id: &NodeId) -> Option<String> {
        if *id == self.node_id {
            return Some(self.node_name.clone());
        }
        self.remote.get(id).map(|r| r.name.clone())
    }

    fn display_node(&self, id: &NodeId) -> String {
        self.node_name_of(id).unwrap_or_else(|| id.short(8))
    }

    fn remote_chat(&mut self, d: &Delivered) {
        let Some(line) = ChatLine::from_delivered(d) else {
            debug!("undecodable chat message dropped");
            return;
        };
        let text = sanitize(&line.text);
        let (text, action) = match text.strip_prefix("/me ") {
            Some(rest) => (rest.to_owned(), true),
            None => (text, false),
        };
        let view = ChatView {
            nick: sanitize(&line.nick),
            node: self.display_node(&line.node),
            text,
            timestamp: line.timestamp,
            action,
            private: false,
        };
        self.broadcast(Output::Chat(view.clone()));
        self.remember(view);
    }

    fn remote_direct(&mut self, d: &Delivered) {
        let Ok(m) = DirectMessage::decode_wire(d.envelope.payload.clone()) else {
            return;
        };
        if !self.node_id.matches_str(&m.to_node) {
            return;
        }
        let view = ChatView {
            nick: sanitize(&m.from_nick),
            node: self.display_node(&d.sender),
            text: sanitize(&m.text),
            timestamp: m.timestamp,
            action: false,
            private: true,
        };
        if let Some(slot) = self
            .sessions
            .values_mut()
            .find(|s| s.nick.eq_ignore_ascii_case(&m.to_nick))
        {
            Self::send_to(slot, Output::Chat(view));
        }
    }

    fn remote_presence(&mut self, d: &Delivered) {
        let Ok(p) = Presence::decode_wire(d.envelope.payload.clone()) else {
            return;
        };
        if d.sender == self.node_id {
            return;
        }
        let name = {
            let n = sanitize(&p.node_name);
            if n.is_empty() {
                d.sender.short(8)
            } else {
                n.chars().take(MAX_NODE_NAME).collect()
            }
        };
        let mut nicks: Vec<String> = p
            .nicks
            .iter()
            .take(4 * MAX_REMOTE_NICKS)
            .map(|n| sanitize(n))
            .filter(|n| check_nick(n).is_ok())
            .collect();
        nicks.sort();
        nicks.dedup();
        if nicks.len() > MAX_REMOTE_NICKS {
            self.stats.remote_nicks_ignored += (nicks.len() - MAX_REMOTE_NICKS) as u64;
            nicks.truncate(MAX_REMOTE_NICKS);
        }
        let ttl =
            Duration::from_secs(u64::from(p.ttl_secs)).clamp(PRESENCE_TTL_MIN, PRESENCE_TTL_MAX);
        let now = Instant::now();
        let expires = now + ttl;
        if !self.remote.contains_key(&d.sender) && self.remote.len() >= MAX_REMOTE_NODES {
            self.evict_newest_remote();
        }
        match self.remote.get_mut(&d.sender) {
            Some(r) if p.seq <= r.seq => {}
            Some(r) => {
                let joined: Vec<String> = nicks
                    .iter()
                    .filter(|n| !r.nicks.contains(n))
                    .cloned()
                    .collect();
                let left: Vec<String> = r
                    .nicks
                    .iter()
                    .filter(|n| !nicks.contains(n))
                    .cloned()
                    .collect();
                r.name.clone_from(&name);
                r.nicks = nicks;
                r.seq = p.seq;
                r.expires = expires;
                for n in joined {
                    self.broadcast(Output::Notice(format!("{n} joined on {name}")));
                }
                for n in left {
                    self.broadcast(Output::Notice(format!("{n} left {name}")));
                }
            }
            None => {
                self.remote.insert(
                    d.sender,
                    RemoteNode {
                        name,
                        nicks,
                        seq: p.seq,
                        expires,
                        first_heard: now,
                    },
                );
            }
        }
    }

    /// Makes room for a newcomer: the node first heard most recently goes.
    fn evict_newest_remote(&mut self) {
        let newest = self
            .remote
            .iter()
            .max_by_key(|(id, r)| (r.first_heard, **id))
            .map(|(id, _)| *id);
        if let Some(id) = newest {
            self.remote.remove(&id);
            self.stats.remote_evicted += 1;
        }
    }

    fn expire_remote(&mut self) {
        let now = Instant::now();
        let before = self.remote.len();
        self.remote.retain(|_, r| r.expires > now);
        self.stats.remote_expired += (before - self.remote.len()) as u64;
    }

    fn stats(&self) -> PartylineStats {
        PartylineStats {
            sessions: self.sessions.len() as u64,
            remote_nodes: self.remote.len() as u64,
            remote_users: self.remote.values().map(|r| r.nicks.len() as u64).sum(),
            lines_queued: self.outbox.len() as u64,
            ..self.stats.clone()
        }
    }

    /// Announces our users (presence, type 9); if the outgoing queue is
    /// full, tries again after the debounce delay.
    fn announce(&mut self) {
        let now = Instant::now();
        self.presence_seq += 1;
        let ttl =
            u32::try_from(self.presence.every.as_secs().saturating_mul(3)).unwrap_or(u32::MAX);
        let payload = Presence {
            node_name: self.node_name.clone(),
            nicks: self
                .sessions
                .values()
                .filter(|s| !s.quiet)
                .map(|s| s.nick.clone())
                .collect(),
            seq: self.presence_seq,
            ttl_secs: ttl.max(10),
        }
        .encode_wire();
        match (self.origin)(MsgType::Presence, payload.into()) {
            Ok(()) => {
                self.outbox.spend(now);
                self.stats.presence_sent += 1;
                self.presence_sent_at = Some(now);
                self.presence_dirty = None;
                self.presence_due = now + self.presence.every;
            }
            Err(e) => {
                debug!("presence put off: {e}");
                self.stats.presence_deferred += 1;
                let retry = now + self.presence.debounce.max(HOUSEKEEPING);
                self.presence_dirty = Some(retry);
                self.presence_due = self.presence_due.max(retry);
            }
        }
    }

    fn who(&self) -> Vec<WhoEntry> {
        let mut local: Vec<String> = self
            .sessions
            .values()
            .filter(|s| !s.quiet)
            .map(|s| s.nick.clone())
            .collect();
        local.sort();
        let mut out = vec![WhoEntry {
            node: self.node_name.clone(),
            node_id: self.node_id.to_hex(),
            local: true,
            nicks: local,
        }];
        let mut remote: Vec<WhoEntry> = self
            .remote
            .iter()
            .map(|(id, r)| WhoEntry {
                node: r.name.clone(),
                node_id: id.to_hex(),
                local: false,
                nicks: r.nicks.clone(),
            })
            .collect();
        remote.sort_by(|a, b| a.node.cmp(&b.node).then(a.node_id.cmp(&b.node_id)));
        out.extend(remote);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use micelio_identity::Identity;
    use micelio_wire::EnvelopeBuilder;

    use super::*;

    type Sent = Arc<Mutex<Vec<(MsgType, Bytes)>>>;

    /// Small outbox limits for tests: 5 lines per session, 8 in all, 8/s
    /// with a burst of 2.
    const SMALL: OutboxLimits = OutboxLimits {
        per_session: 5,
        total: 8,
        per_sec: 8,
        burst: 2,
    };
    /// Roomy outbox limits, for tests about something else.
    const ROOMY: OutboxLimits = OutboxLimits {
        per_session: 256,
        total: 1024,
        per_sec: 8,
        burst: 10,
    };

    /// A hub whose outgoing queue holds `room` messages (taken by nobody).
    fn hub_with_room(room: usize) -> (Hub, Sent) {
        hub_with(room, ROOMY)
    }

    fn hub_with(room: usize, limits: OutboxLimits) -> (Hub, Sent) {
        let sent: Sent = Arc::default();
        let log = sent.clone();
        let origin: Origin = Box::new(move |kind, payload| {
            let mut v = log.lock().unwrap();
            if v.len() >= room {
                return Err(GossipError::QueueFull(room));
            }
            v.push((kind, payload));
            Ok(())
        });
        let me = Identity::from_seed([1; 32]);
        let hub = Hub::new(
            *me.node_id(),
            "here".into(),
            origin,
            limits,
            Box::new(|| 0),
            20,
            PresenceTiming {
                every: Duration::from_secs(60),
                debounce: Duration::from_secs(2),
            },
        );
        (hub, sent)
    }

    fn hub() -> (Hub, Sent) {
        hub_with_room(usize::MAX)
    }

    fn fresh(n: u32) -> Identity {
        let mut seed = [0x5A; 32];
        seed[..4].copy_from_slice(&n.to_le_bytes());
        Identity::from_seed(seed)
    }

    fn presence(from: &Identity, name: &str, nicks: &[&str], seq: u64, ttl: u32) -> Delivered {
        let payload = Presence {
            node_name: name.into(),
            nicks: nicks.iter().map(|n| (*n).to_owned()).collect(),
            seq,
            ttl_secs: ttl,
        }
        .encode_wire();
        Delivered {
            msg_type: MsgType::Presence,
            sender: *from.node_id(),
            from_peer: *from.node_id(),
            envelope: EnvelopeBuilder::gossip(MsgType::Presence, payload).sign(from),
        }
    }

    fn listed(h: &Hub, name: &str) -> bool {
        h.who().iter().any(|w| w.node == name)
    }

    #[tokio::test(start_paused = true)]
    async fn a_presence_flood_stays_within_the_caps_and_known_nodes_stay_listed() {
        let (mut h, _) = hub();
        let honest = fresh(1_000_000);
        h.remote_presence(&presence(&honest, "honest", &["hana"], 1, 180));
        let flood = 5000u32;
        for n in 0..flood {
            tokio::time::advance(Duration::from_millis(1)).await;
            h.remote_presence(&presence(&fresh(n), "sybil", &["x"], 1, 600));
            assert!(h.remote.len() <= MAX_REMOTE_NODES);
        }
        let s = h.stats();
        assert_eq!(s.remote_nodes as usize, MAX_REMOTE_NODES);
        assert_eq!(
            s.remote_evicted,
            u64::from(flood) + 1 - MAX_REMOTE_NODES as u64
        );
        assert!(listed(&h, "honest"), "known before the flood, still listed");
        // A newcomer after the flood is listed.
        tokio::time::advance(Duration::from_millis(1)).await;
        let newcomer = fresh(2_000_000);
        h.remote_presence(&presence(&newcomer, "newcomer", &["nora"], 1, 180));
        assert!(listed(&h, "newcomer"));
        assert_eq!(h.remote.len(), MAX_REMOTE_NODES);
        // The honest node refreshes; the flood's nodes stop and expire.
        tokio::time::advance(Duration::from_secs(170)).await;
        h.remote_presence(&presence(&honest, "honest", &["hana"], 2, 180));
        h.remote_presence(&presence(&newcomer, "newcomer", &["nora"], 2, 180));
        tokio::time::advance(Duration::from_secs(600)).await;
        h.remote_presence(&presence(&honest, "honest", &["hana"], 3, 180));
        h.remote_presence(&presence(&newcomer, "newcomer", &["nora"], 3, 180));
        h.expire_remote();
        let s = h.stats();
        assert_eq!(s.remote_nodes, 2, "{s:?}");
        assert_eq!(s.remote_expired as usize, MAX_REMOTE_NODES - 2);
    }

    #[tokio::test(start_paused = true)]
    async fn nicks_per_node_and_names_are_capped() {
        let (mut h, _) = hub();
        let big = fresh(7);
        let nicks: Vec<String> = (0..1000).map(|i| format!("n{i:04}")).collect();
        let refs: Vec<&str> = nicks.iter().map(String::as_str).collect();
        let long_name = "x".repeat(500);
        h.remote_presence(&presence(&big, &long_name, &refs, 1, 60));
        let s = h.stats();
        assert_eq!(s.remote_users as usize, MAX_REMOTE_NICKS);
        assert_eq!(s.remote_nicks_ignored as usize, 1000 - MAX_REMOTE_NICKS);
        let who = h.who();
        assert_eq!(who[1].node.chars().count(), MAX_NODE_NAME);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ttl_is_clamped_so_silent_nodes_expire() {
        let (mut h, _) = hub();
        let forever = fresh(8);
        h.remote_presence(&presence(&forever, "forever", &["f"], 1, u32::MAX));
        tokio::time::advance(PRESENCE_TTL_MAX - Duration::from_secs(1)).await;
        h.expire_remote();
        assert!(listed(&h, "forever"));
        tokio::time::advance(Duration::from_secs(2)).await;
        h.expire_remote();
        assert!(!listed(&h, "forever"));
        assert_eq!(h.stats().remote_expired, 1);
    }

    /// A hub running in its task, driven through its channels.
    struct Running {
        tx: mpsc::Sender<HubMsg>,
        sent: Sent,
        presence: mpsc::Sender<Delivered>,
        direct: mpsc::Sender<Delivered>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _chat: mpsc::Sender<Delivered>,
    }

    impl Running {
        fn spawn(room: usize) -> Self {
            Self::spawn_with(room, ROOMY)
        }

        fn spawn_with(room: usize, limits: OutboxLimits) -> Self {
            let (hub, sent) = hub_with(room, limits);
            Self::start(hub, sent)
        }

        fn start(hub: Hub, sent: Sent) -> Self {
            let (tx, rx) = mpsc::channel(64);
            let (chat, chat_rx) = mpsc::channel(64);
            let (presence, presence_rx) = mpsc::channel(64);
            let (direct, direct_rx) = mpsc::channel(64);
            let cancel = CancellationToken::new();
            let task = tokio::spawn(hub.run(rx, chat_rx, presence_rx, direct_rx, cancel.clone()));
            Self {
                tx,
                sent,
                presence,
                direct,
                cancel,
                task,
                _chat: chat,
            }
        }

        async fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<T>) -> HubMsg) -> T {
            let (reply, rx) = oneshot::channel();
            self.tx.send(msg(reply)).await.unwrap();
            rx.await.unwrap()
        }

        async fn join(&self, user: &str) -> (u64, String, mpsc::Receiver<Output>) {
            let user = user.to_owned();
            self.ask(|reply| HubMsg::Join {
                user,
                quiet: false,
                reply,
            })
            .await
        }

        async fn say(&self, id: u64, text: &str) -> Result<(), String> {
            let text = text.to_owned();
            self.ask(|reply| HubMsg::Say {
                id,
                text,
                action: false,
                reply,
            })
            .await
        }

        async fn who(&self) -> Vec<WhoEntry> {
            self.ask(|reply| HubMsg::Who { reply }).await
        }

        async fn stats(&self) -> PartylineStats {
            self.ask(|reply| HubMsg::Stats { reply }).await
        }

        fn sent_of(&self, kind: MsgType) -> Vec<Bytes> {
            self.sent
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, p)| p.clone())
                .collect()
        }

        async fn stop(self) {
            self.cancel.cancel();
            self.task.await.unwrap();
        }
    }

    fn texts(rx: &mut mpsc::Receiver<Output>) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(o) = rx.try_recv() {
            v.push(o.to_string());
        }
        v
    }

    #[tokio::test(start_paused = true)]
    async fn presence_is_announced_on_change_debounced_and_rarely_otherwise() {
        let h = Running::spawn(usize::MAX);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(h.sent_of(MsgType::Presence).len(), 1, "announced at start");
        let mut sessions = Vec::new();
        for n in 0..5 {
            sessions.push(h.join(&format!("user{n}")).await);
        }
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert_eq!(h.sent_of(MsgType::Presence).len(), 1, "debounced");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = h.sent_of(MsgType::Presence);
        assert_eq!(sent.len(), 2, "five joins, one announcement");
        let p = Presence::decode_wire(sent[1].clone()).unwrap();
        assert_eq!(p.nicks.len(), 5);
        assert_eq!(p.ttl_secs, 180);
        // Ten idle minutes: one refresh a minute, no more.
        tokio::time::sleep(Duration::from_secs(600)).await;
        let n = h.sent_of(MsgType::Presence).len();
        assert!((11..=12).contains(&n), "{n} announcements");
        assert_eq!(h.stats().await.presence_sent as usize, n);
        drop(sessions);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_change_of_a_quiet_spell_is_announced_at_once() {
        let h = Running::spawn(usize::MAX);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(h.sent_of(MsgType::Presence).len(), 1, "announced at start");
        // Quiet for longer than the debounce delay: a join goes out within
        // a housekeeping tick, not after the delay.
        let first = h.join("early").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = h.sent_of(MsgType::Presence);
        assert_eq!(sent.len(), 2, "announced at once");
        assert_eq!(
            Presence::decode_wire(sent[1].clone()).unwrap().nicks,
            ["early"]
        );
        // A second change right after waits for the delay.
        let second = h.join("late").await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(h.sent_of(MsgType::Presence).len(), 2, "debounced");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(h.sent_of(MsgType::Presence).len(), 3);
        drop((first, second));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_outbox_defers_presence_and_retries() {
        let h = Running::spawn(0);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let s = h.stats().await;
        assert_eq!(s.presence_sent, 0);
        assert!(
            (2..=4).contains(&s.presence_deferred),
            "retried every 2 s, not in a loop: {s:?}"
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_join_and_leave_with_notices() {
        let h = Running::spawn(usize::MAX);
        let (a, nick_a, mut out_a) = h.join("alice").await;
        let (b, nick_b, mut out_b) = h.join("bob").await;
        assert_eq!((nick_a.as_str(), nick_b.as_str()), ("alice", "bob"));
        assert!(texts(&mut out_a).contains(&"*** bob joined".to_owned()));
        assert!(
            texts(&mut out_b).is_empty(),
            "no history, own join not shown"
        );
        assert_eq!(h.who().await[0].nicks, vec!["alice", "bob"]);
        h.tx.send(HubMsg::Leave { id: b }).await.unwrap();
        assert_eq!(h.who().await[0].nicks, vec!["alice"]);
        assert!(texts(&mut out_a).contains(&"*** bob left".to_owned()));
        // A session whose end is dropped without a leave is pruned.
        let (_, _, out_c) = h.join("carol").await;
        drop(out_c);
        assert_eq!(h.who().await[0].nicks, vec!["alice"]);
        assert!(texts(&mut out_a).contains(&"*** carol left".to_owned()));
        assert_eq!(h.stats().await.sessions, 1);
        let _ = a;
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn nicks_collide_case_insensitively_and_are_made_unique() {
        let h = Running::spawn(usize::MAX);
        let (_, n1, _o1) = h.join("root").await;
        let (id2, n2, _o2) = h.join("root").await;
        let (id3, n3, _o3) = h.join("ROOT").await;
        assert_eq!(
            (n1.as_str(), n2.as_str(), n3.as_str()),
            ("root", "root2", "ROOT3")
        );
        let long = "x".repeat(crate::text::MAX_NICK_LEN);
        let (_, l1, _o4) = h.join(&long).await;
        let (_, l2, _o5) = h.join(&long).await;
        assert_eq!(l1, long);
        assert_eq!(l2.chars().count(), crate::text::MAX_NICK_LEN, "{l2}");
        assert!(l2.ends_with('2'));
        let rename = |id: u64, nick: &str| {
            let nick = nick.to_owned();
            h.ask(move |reply| HubMsg::Nick { id, nick, reply })
        };
        assert_eq!(
            rename(id2, "Root").await,
            Err(NickError::Taken("Root".into()))
        );
        assert_eq!(rename(id2, "bad nick").await, Err(NickError::BadCharacter));
        assert_eq!(rename(id2, "admin").await, Ok("root2".into()));
        assert_eq!(rename(id3, "root2").await, Ok("ROOT3".into()), "freed");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_joining_session_sees_the_last_twenty_lines_in_order() {
        let h = Running::spawn(usize::MAX);
        let (a, _, _out) = h.join("alice").await;
        for i in 0..25 {
            h.say(a, &format!("line {i:02}")).await.unwrap();
        }
        let (_, _, mut late) = h.join("late").await;
        let seen = texts(&mut late);
        let lines: Vec<&String> = seen.iter().filter(|l| l.contains("line ")).collect();
        assert_eq!(lines.len(), 20, "{seen:?}");
        for (k, l) in lines.iter().enumerate() {
            assert!(
                l.contains(&format!("<alice@here> line {:02}", k + 5)),
                "{l}"
            );
        }
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn remote_presence_expires_after_its_ttl() {
        let h = Running::spawn(usize::MAX);
        let other = fresh(42);
        h.presence
            .send(presence(&other, "far", &["zed"], 1, 30))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let who = h.who().await;
        assert_eq!(who.len(), 2);
        assert_eq!(
            (who[1].node.as_str(), who[1].nicks.clone()),
            ("far", vec!["zed".to_owned()])
        );
        // An older seq changes nothing.
        h.presence
            .send(presence(&other, "far", &[], 0, 30))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(h.who().await[1].nicks, vec!["zed"]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(h.who().await.len(), 1, "expired");
        assert_eq!(h.stats().await.remote_expired, 1);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn direct_messages_reach_only_their_addressee() {
        let h = Running::spawn(usize::MAX);
        let (a, _, mut out_a) = h.join("alice").await;
        let (_, _, mut out_b) = h.join("bob").await;
        let other = fresh(43);
        h.presence
            .send(presence(&other, "far", &["zed"], 1, 60))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let private = |to: &str, text: &str| {
            let (to, text) = (to.to_owned(), text.to_owned());
            h.ask(move |reply| HubMsg::Private {
                id: a,
                to,
                text,
                reply,
            })
        };
        // Local: shown to bob only, nothing sent.
        assert!(private("bob", "psst").await.is_ok());
        assert!(
            texts(&mut out_b)
                .iter()
                .any(|l| l.contains("*alice@here* psst"))
        );
        assert!(!texts(&mut out_a).iter().any(|l| l.contains("psst")));
        assert!(h.sent_of(MsgType::DirectMessage).is_empty());
        // Remote: one DirectMessage to zed on far.
        assert_eq!(
            private("zed@far", "over there").await.unwrap(),
            "-> zed@far: over there"
        );
        let sent = h.sent_of(MsgType::DirectMessage);
        let m = DirectMessage::decode_wire(sent[0].clone()).unwrap();
        assert_eq!(
            (m.to_node, m.to_nick, m.from_nick),
            (other.node_id().to_hex(), "zed".into(), "alice".into())
        );
        assert!(private("nobody", "hi").await.is_err());
        // Incoming: for bob on this node, shown to bob only.
        let me = Identity::from_seed([1; 32]);
        let incoming = |to_node: String, text: &str| {
            let payload = DirectMessage {
                to_node,
                to_nick: "bob".into(),
                from_nick: "zed".into(),
                text: text.into(),
                timestamp: 0,
            }
            .encode_wire();
            Delivered {
                msg_type: MsgType::DirectMessage,
                sender: *other.node_id(),
                from_peer: *other.node_id(),
                envelope: EnvelopeBuilder::gossip(MsgType::DirectMessage, payload).sign(&other),
            }
        };
        h.direct
            .send(incoming(me.node_id().to_hex(), "hi bob"))
            .await
            .unwrap();
        h.direct
            .send(incoming(other.node_id().to_hex(), "not for here"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let b_lines = texts(&mut out_b);
        assert!(
            b_lines.iter().any(|l| l.contains("*zed@far* hi bob")),
            "{b_lines:?}"
        );
        assert!(!b_lines.iter().any(|l| l.contains("not for here")));
        assert!(!texts(&mut out_a).iter().any(|l| l.contains("hi bob")));
        h.stop().await;
    }

    fn chat_texts(h: &Running) -> Vec<String> {
        h.sent_of(MsgType::Chat)
            .into_iter()
            .map(|p| ChatMessage::decode_wire(p).unwrap().text)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_outbox_keeps_order_and_a_refused_line_is_reported_not_shown() {
        let h = Running::spawn_with(usize::MAX, SMALL);
        let (a, _, mut out) = h.join("alice").await;
        // Past the start-up presence (it spent a token).
        tokio::time::sleep(Duration::from_secs(1)).await;
        for i in 0..7 {
            h.say(a, &format!("l{i}")).await.unwrap();
        }
        assert_eq!(chat_texts(&h), vec!["l0", "l1"], "the burst left at once");
        assert_eq!(h.stats().await.lines_queued, 5);
        let err = h.say(a, "one too many").await.unwrap_err();
        assert!(
            err.contains("line not sent: you have 5 lines waiting"),
            "{err}"
        );
        let shown = texts(&mut out);
        assert!(shown.iter().any(|l| l.contains("l6")));
        assert!(
            !shown.iter().any(|l| l.contains("one too many")),
            "{shown:?}"
        );
        // The rest leaves at the pace, in order.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(chat_texts(&h).len(), 4, "two more after 250 ms at 8/s");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            chat_texts(&h),
            vec!["l0", "l1", "l2", "l3", "l4", "l5", "l6"]
        );
        let s = h.stats().await;
        assert_eq!((s.lines_refused, s.lines_queued), (1, 0));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn lines_queued_at_shutdown_still_go_out_in_order_within_the_drain() {
        let h = Running::spawn_with(usize::MAX, SMALL);
        let (a, _, mut out) = h.join("alice").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        for i in 0..7 {
            h.say(a, &format!("l{i}")).await.unwrap();
        }
        assert_eq!(chat_texts(&h).len(), 2, "five wait for the pace");
        let sent = h.sent.clone();
        let started = Instant::now();
        h.stop().await;
        assert!(started.elapsed() <= SHUTDOWN_DRAIN, "bounded");
        let left: Vec<String> = sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k == MsgType::Chat)
            .map(|(_, p)| ChatMessage::decode_wire(p.clone()).unwrap().text)
            .collect();
        assert_eq!(left, ["l0", "l1", "l2", "l3", "l4", "l5", "l6"]);
        assert!(texts(&mut out).iter().any(|l| l.contains("shutting down")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_shutdown_drain_is_bounded_and_keeps_order() {
        const SLOW: OutboxLimits = OutboxLimits {
            per_session: 5,
            total: 8,
            per_sec: 2,
            burst: 1,
        };
        let h = Running::spawn_with(usize::MAX, SLOW);
        let (a, _, _out) = h.join("alice").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        for i in 0..6 {
            h.say(a, &format!("l{i}")).await.unwrap();
        }
        let sent = h.sent.clone();
        let started = Instant::now();
        h.stop().await;
        assert_eq!(started.elapsed(), SHUTDOWN_DRAIN, "waited no longer");
        let left: Vec<String> = sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k == MsgType::Chat)
            .map(|(_, p)| ChatMessage::decode_wire(p.clone()).unwrap().text)
            .collect();
        // The burst, then two more at 2 a second; three are lost.
        assert_eq!(left, ["l0", "l1", "l2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pasting_session_does_not_hold_up_the_others() {
        let h = Running::spawn_with(usize::MAX, SMALL);
        let (a, _, _oa) = h.join("alice").await;
        let (b, _, _ob) = h.join("bob").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        for i in 0..5 {
            h.say(a, &format!("paste {i}")).await.unwrap();
        }
        h.say(b, "quick question").await.unwrap();
        // The whole outbox is nearly full: a third session is refused once
        // the total (8) is reached, whatever its own queue.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let order = chat_texts(&h);
        let pos = order.iter().position(|t| t == "quick question").unwrap();
        assert!(
            pos <= 4,
            "bob's line waited one turn, not the whole paste: {order:?}"
        );
        let pastes: Vec<&String> = order.iter().filter(|t| t.starts_with("paste")).collect();
        assert_eq!(
            pastes,
            ["paste 0", "paste 1", "paste 2", "paste 3", "paste 4"]
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_outbox_total_is_bounded_across_sessions() {
        let h = Running::spawn_with(usize::MAX, SMALL);
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(h.join(&format!("u{n}")).await);
        }
        // Past the start-up presence; the joins' presence is still due.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Burst of 2 goes out; then 8 wait in all.
        let mut accepted = 0;
        for round in 0..5 {
            for (id, _, _) in &ids {
                if h.say(*id, &format!("r{round}")).await.is_ok() {
                    accepted += 1;
                }
            }
        }
        assert_eq!(accepted, 2 + 8);
        assert_eq!(h.stats().await.lines_refused, 15 - 10);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_peer_is_told_our_users_soon() {
        let peers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (mut hub, sent) = hub();
        let count = peers.clone();
        hub.peer_count = Box::new(move || count.load(std::sync::atomic::Ordering::Relaxed));
        let h = Running::start(hub, sent);
        let _alice = h.join("alice").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = h.sent_of(MsgType::Presence).len();
        peers.store(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            h.sent_of(MsgType::Presence).len(),
            before + 1,
            "within a tick and the debounce"
        );
        // A peer leaving costs nothing.
        peers.store(0, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(h.sent_of(MsgType::Presence).len(), before + 1);
        h.stop().await;
    }
}
