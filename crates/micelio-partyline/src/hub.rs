//! The hub: one task that owns the sessions, their nicks, the history and
//! what is known of other nodes' users, driven by channels.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use micelio_gossip::chat::{ChatLine, unix_now};
use micelio_gossip::{Delivered, Gossip};
use micelio_identity::NodeId;
use micelio_wire::proto::{ChatMessage, DirectMessage, Presence};
use micelio_wire::{MsgType, WireMessage as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::text::{ChatView, NickError, check_nick, nick_from_user, sanitize};

/// Lines queued per session before further ones are dropped for it.
pub(crate) const SESSION_QUEUE: usize = 256;

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
}

pub(crate) struct Hub {
    node_id: NodeId,
    node_name: String,
    gossip: Gossip,
    history_len: usize,
    presence_every: Duration,
    sessions: BTreeMap<u64, SessionSlot>,
    next_id: u64,
    history: VecDeque<ChatView>,
    remote: HashMap<NodeId, RemoteNode>,
    presence_seq: u64,
}

impl Hub {
    pub(crate) fn new(
        node_id: NodeId,
        node_name: String,
        gossip: Gossip,
        history_len: usize,
        presence_every: Duration,
    ) -> Self {
        Self {
            node_id,
            node_name,
            gossip,
            history_len,
            presence_every,
            sessions: BTreeMap::new(),
            next_id: 1,
            history: VecDeque::new(),
            remote: HashMap::new(),
            // Milliseconds since the epoch: a restarted node keeps increasing.
            presence_seq: unix_now().saturating_mul(1000),
        }
    }

    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<HubMsg>,
        mut chat: mpsc::Receiver<Delivered>,
        mut presence: mpsc::Receiver<Delivered>,
        mut direct: mpsc::Receiver<Delivered>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.presence_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
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
                    self.announce();
                }
            }
        }
        for slot in self.sessions.values() {
            let _ = slot
                .tx
                .try_send(Output::Notice("the partyline is shutting down".into()));
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
                    self.announce();
                }
            }
            HubMsg::Leave { id } => {
                if let Some(slot) = self.sessions.remove(&id)
                    && !slot.quiet
                {
                    self.broadcast(Output::Notice(format!("{} left", slot.nick)));
                    self.announce();
                }
            }
            HubMsg::Nick { id, nick, reply } => {
                let result = self.rename(id, &nick);
                if result.is_ok() {
                    self.announce();
                }
                let _ = reply.send(result);
            }
            HubMsg::Say { id, text, action } => self.say(id, text, action),
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
        if self.history.len() == self.history_len {
            self.history.pop_front();
        }
        if self.history_len > 0 {
            self.history.push_back(line);
        }
    }

    fn say(&mut self, id: u64, text: String, action: bool) {
        let Some(nick) = self.sessions.get(&id).map(|s| s.nick.clone()) else {
            return;
        };
        let timestamp = unix_now();
        let view = ChatView {
            nick: nick.clone(),
            node: self.node_name.clone(),
            text: text.clone(),
            timestamp,
            action,
            private: false,
        };
        self.broadcast(Output::Chat(view.clone()));
        self.remember(view);
        let wire_text = if action { format!("/me {text}") } else { text };
        let payload = ChatMessage {
            nick,
            text: wire_text,
            timestamp,
        }
        .encode_wire();
        self.originate(MsgType::Chat, payload.into());
    }

    /// Originates without making the hub wait on the gossip task.
    fn originate(&self, kind: MsgType, payload: Bytes) {
        let gossip = self.gossip.clone();
        tokio::spawn(async move {
            if let Err(e) = gossip.originate(kind, payload).await {
                debug!(%kind, "not sent: {e}");
            }
        });
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
                self.originate(MsgType::DirectMessage, payload.into());
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
                n.chars().take(64).collect()
            }
        };
        let mut nicks: Vec<String> = p
            .nicks
            .iter()
            .map(|n| sanitize(n))
            .filter(|n| check_nick(n).is_ok())
            .take(1024)
            .collect();
        nicks.sort();
        nicks.dedup();
        let ttl = Duration::from_secs(u64::from(p.ttl_secs.clamp(10, 3600)));
        let expires = Instant::now() + ttl;
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
                *r = RemoteNode {
                    name: name.clone(),
                    nicks,
                    seq: p.seq,
                    expires,
                };
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
                    },
                );
            }
        }
    }

    fn expire_remote(&mut self) {
        let now = Instant::now();
        self.remote.retain(|_, r| r.expires > now);
    }

    fn announce(&mut self) {
        self.presence_seq += 1;
        let ttl =
            u32::try_from(self.presence_every.as_secs().saturating_mul(3)).unwrap_or(u32::MAX);
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
        self.originate(MsgType::Presence, payload.into());
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
