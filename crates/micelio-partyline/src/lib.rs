//! The micelio partyline: a chat room and operator console that spans the
//! mesh, independent of how users reach it (`micelio-ssh` puts it behind an
//! SSH server; tests drive it directly).
//!
//! - [`Partyline`]: the handle to the hub task, which owns the sessions,
//!   their nicks (unique per node), the last lines of history, and what is
//!   known of other nodes' users (from [`micelio_wire::MsgType::Presence`]);
//! - [`Session`]: one user's end: [`Session::input`] takes a typed line
//!   (chat, or a `/command`), [`Session::recv`] yields what to show;
//! - [`CommandSpec`]: the registry later layers and plugins extend; `/help`
//!   is generated from it;
//! - [`chat`]: the chat line (type 3) on the wire.
//!
//! Chat goes to the mesh through [`micelio_gossip::Gossip::try_originate`]
//! (ordered, bounded, paced under the mesh's rate limit; a refused line is
//! reported to its author) and to every local session; lines from the mesh
//! come back as gossip deliveries.
//! A session that stops reading loses lines; it never slows anyone else.
//!
//! The crate knows nothing of SSH or terminals: output is text.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use micelio_gossip::{Gossip, GossipConfig};
//! use micelio_identity::Identity;
//! use micelio_partyline::{Partyline, PartylineConfig};
//! use micelio_transport::memory::MemoryNetwork;
//! use micelio_transport::{PeerManager, TransportConfig};
//!
//! let id = Arc::new(Identity::from_seed([1; 32]));
//! let net = MemoryNetwork::new();
//! let (peers, events) =
//!     PeerManager::spawn(id.clone(), Arc::new(net.transport(&id)), TransportConfig::new(None), None).await?;
//! let gossip = Gossip::spawn(id, GossipConfig::default(), peers.clone(), events);
//! let party = Partyline::spawn(PartylineConfig::new("alpha"), gossip, peers).await?;
//!
//! let mut alice = party.join("alice").await?;
//! alice.input("hello").await;
//! let shown = alice.recv().await.expect("a line").to_string();
//! assert!(shown.contains("<alice@alpha> hello"));
//! assert!(alice.input("/who").await.text.contains("alice"));
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod chat;
mod commands;
mod desired_cmds;
mod hub;
mod outbox;
mod state_cmds;
pub mod text;

pub use state_cmds::{MAX_LISTED, display_value};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use micelio_gossip::Gossip;
use micelio_identity::NodeId;
use micelio_transport::{PeerManager, TaskExit, TaskGroup};
use micelio_wire::MsgType;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use commands::{
    BoxFuture, CommandCall, CommandSpec, Handler, Login, Reply, STATUS_FAILED, STATUS_UNKNOWN,
    STATUS_USAGE,
};
pub use hub::{
    MAX_NODE_NAME, MAX_REMOTE_NICKS, MAX_REMOTE_NODES, Output, PRESENCE_TTL_MAX, PRESENCE_TTL_MIN,
    PartylineStats, SHUTDOWN_DRAIN, WhoEntry,
};
pub use outbox::{MAX_QUEUED_LINES, MAX_QUEUED_PER_SESSION};
pub use text::ChatView;

use crate::hub::{Hub, HubMsg, PresenceTiming};
use crate::text::{MAX_LINE_LEN, NickError, sanitize};

/// Requests queued to the hub.
const HUB_QUEUE: usize = 1024;
/// Chat lines a [`Partyline::subscribe_chat`] receiver may fall behind by
/// before it loses the oldest.
pub const CHAT_TAP_QUEUE: usize = 1024;

/// Configuration of the partyline.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartylineConfig {
    /// This node's name, shown next to its users' nicks.
    pub node_name: String,
    /// Chat lines a joining session is shown.
    pub history_lines: usize,
    /// How often this node re-announces its users to the mesh (their TTL
    /// is three times this; taken within 100 ms..=200 s, so that receivers,
    /// which keep an announcement at most 600 s, never forget a live node).
    /// Changes are announced as they happen, after `presence_debounce`.
    pub presence_interval: Duration,
    /// Least time between two announcements of a change of users (join,
    /// leave, nick): the first change after a quiet spell goes out at
    /// once, later ones wait, so that a burst of changes costs one message.
    pub presence_debounce: Duration,
}

/// Default period of presence refreshes.
pub const DEFAULT_PRESENCE_INTERVAL: Duration = Duration::from_secs(60);
/// Default delay between a change of users and its announcement.
pub const DEFAULT_PRESENCE_DEBOUNCE: Duration = Duration::from_secs(2);

impl PartylineConfig {
    /// Defaults (20 lines of history, presence on change after 2 s and
    /// every 60 s) for `node_name`.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            history_lines: micelio_wire::limits::CHAT_HISTORY_LINES,
            presence_interval: DEFAULT_PRESENCE_INTERVAL,
            presence_debounce: DEFAULT_PRESENCE_DEBOUNCE,
        }
    }
}

/// Why a partyline call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PartylineError {
    /// The hub has stopped.
    #[error("the partyline has stopped")]
    Stopped,
    /// A command of that name exists.
    #[error("a command /{0} is already registered")]
    Duplicate(String),
    /// A command name that is not a lowercase word.
    #[error("bad command name {0:?}")]
    BadName(String),
}

struct Inner {
    tx: mpsc::Sender<HubMsg>,
    registry: RwLock<BTreeMap<String, CommandSpec>>,
    gossip: Gossip,
    peers: PeerManager,
    node_id: NodeId,
    node_name: String,
    cancel: CancellationToken,
    /// The hub task, watched for [`Partyline::closed`].
    tasks: TaskGroup,
    /// The watcher of the hub task (it returns once the task has ended and
    /// a panic has been logged).
    task: Mutex<Option<JoinHandle<()>>>,
    /// The state service, once attached.
    state: std::sync::OnceLock<micelio_state::State>,
    /// The desired-state task, once attached.
    desired: std::sync::OnceLock<micelio_state::desired::Desired>,
    /// Every public chat line, for [`Partyline::subscribe_chat`].
    chat_tap: tokio::sync::broadcast::Sender<ChatView>,
}

/// Handle to the partyline hub. Clones share it.
#[derive(Clone)]
#[must_use = "the hub runs until shutdown() stops it and waits for it"]
pub struct Partyline {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Partyline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partyline")
            .field("node_name", &self.inner.node_name)
            .finish_non_exhaustive()
    }
}

impl Partyline {
    /// Starts the hub of this node over `gossip` (for chat, presence and
    /// private lines) and `peers` (for `/peers` and `/stats`), with the core
    /// commands registered.
    ///
    /// # Errors
    /// [`PartylineError::Stopped`] if gossip has stopped.
    pub async fn spawn(
        config: PartylineConfig,
        gossip: Gossip,
        peers: PeerManager,
    ) -> Result<Self, PartylineError> {
        let stopped = |_| PartylineError::Stopped;
        let chat = gossip.subscribe(MsgType::Chat).await.map_err(stopped)?;
        let presence = gossip.subscribe(MsgType::Presence).await.map_err(stopped)?;
        let direct = gossip
            .subscribe(MsgType::DirectMessage)
            .await
            .map_err(stopped)?;
        let node_id = *gossip.node_id();
        let node_name = sanitize(&config.node_name);
        let (tx, rx) = mpsc::channel(HUB_QUEUE);
        let cancel = CancellationToken::new();
        let origin_gossip = gossip.clone();
        let hub = Hub::new(
            node_id,
            node_name.clone(),
            Box::new(move |kind, payload| origin_gossip.try_originate(kind, payload)),
            outbox::OutboxLimits {
                per_session: MAX_QUEUED_PER_SESSION,
                total: MAX_QUEUED_LINES,
                per_sec: gossip.config().pace_per_sec,
                burst: gossip.config().pace_burst,
            },
            {
                let peers = peers.clone();
                Box::new(move || peers.peer_count())
            },
            config.history_lines,
            PresenceTiming {
                every: config.presence_interval,
                debounce: config.presence_debounce,
            },
        );
        let (chat_tap, _) = tokio::sync::broadcast::channel(CHAT_TAP_QUEUE);
        let hub = hub.with_chat_tap(chat_tap.clone());
        let span = tracing::info_span!("partyline", node = %node_id.short(12));
        let tasks = TaskGroup::new(cancel.clone());
        let task = tasks.spawn(
            "the hub task",
            hub.run(rx, chat, presence, direct, cancel.clone())
                .instrument(span),
        );
        let registry = commands::core()
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                registry: RwLock::new(registry),
                gossip,
                peers,
                node_id,
                node_name,
                cancel,
                tasks,
                task: Mutex::new(Some(task)),
                state: std::sync::OnceLock::new(),
                desired: std::sync::OnceLock::new(),
                chat_tap,
            }),
        })
    }

    /// A stream of every public chat line from now on: this node's users'
    /// and the mesh's (not private lines, not notices), as shown. A
    /// receiver that falls [`CHAT_TAP_QUEUE`] lines behind loses the oldest
    /// (its next `recv` says how many).
    pub fn subscribe_chat(&self) -> tokio::sync::broadcast::Receiver<ChatView> {
        self.inner.chat_tap.subscribe()
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.inner.node_id
    }

    /// The gossip service.
    pub fn gossip(&self) -> &Gossip {
        &self.inner.gossip
    }

    /// The peer manager.
    pub fn peers(&self) -> &PeerManager {
        &self.inner.peers
    }

    /// Registers a command.
    ///
    /// # Errors
    /// [`PartylineError::Duplicate`] or [`PartylineError::BadName`].
    pub fn register(&self, spec: CommandSpec) -> Result<(), PartylineError> {
        let name_ok = !spec.name.is_empty()
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !name_ok {
            return Err(PartylineError::BadName(spec.name));
        }
        let mut reg = self
            .inner
            .registry
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if reg.contains_key(&spec.name) {
            return Err(PartylineError::Duplicate(spec.name));
        }
        reg.insert(spec.name.clone(), spec);
        Ok(())
    }

    /// Every registered command, by name.
    pub fn commands(&self) -> Vec<CommandSpec> {
        self.inner
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn command(&self, name: &str) -> Option<CommandSpec> {
        self.inner
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<T>) -> HubMsg,
    ) -> Result<T, PartylineError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(msg(reply))
            .await
            .map_err(|_| PartylineError::Stopped)?;
        rx.await.map_err(|_| PartylineError::Stopped)
    }

    /// Opens a session for SSH user `user`: its nick is `user` made valid
    /// and unique on this node. It is shown the last lines of history.
    ///
    /// # Errors
    /// [`PartylineError::Stopped`].
    pub async fn join(&self, user: &str) -> Result<Session, PartylineError> {
        self.join_as(&Login {
            user: user.to_owned(),
            key_fingerprint: String::new(),
        })
        .await
    }

    /// Like [`Partyline::join`], for `login` (its key fingerprint goes into
    /// the audit trail of what the session desires).
    ///
    /// # Errors
    /// [`PartylineError::Stopped`].
    pub async fn join_as(&self, login: &Login) -> Result<Session, PartylineError> {
        self.open(login, false).await
    }

    /// Like [`Partyline::join_quiet`], for `login`.
    ///
    /// # Errors
    /// [`PartylineError::Stopped`].
    pub async fn join_quiet_as(&self, login: &Login) -> Result<Session, PartylineError> {
        self.open(login, true).await
    }

    /// Opens a session for one command (an SSH exec request): it is not
    /// announced, not listed by `/who`, shown no history and no chat.
    ///
    /// # Errors
    /// [`PartylineError::Stopped`].
    pub async fn join_quiet(&self, user: &str) -> Result<Session, PartylineError> {
        self.join_quiet_as(&Login {
            user: user.to_owned(),
            key_fingerprint: String::new(),
        })
        .await
    }

    async fn open(&self, login: &Login, quiet: bool) -> Result<Session, PartylineError> {
        let user = login.user.clone();
        let (id, nick, out) = self
            .ask(|reply| HubMsg::Join { user, quiet, reply })
            .await?;
        Ok(Session {
            id,
            nick,
            login: login.clone(),
            party: self.clone(),
            out,
        })
    }

    /// Users on every node of the mesh, this node first.
    ///
    /// # Errors
    /// [`PartylineError::Stopped`].
    pub async fn who(&self) -> Result<Vec<WhoEntry>, PartylineError> {
        self.ask(|reply| HubMsg::Who { reply }).await
    }

    /// The name of a node, if known (this node, or one that announced
    /// itself).
    ///
    /// # Errors
    /// [`PartylineError::Stopped`].
    pub async fn node_name_of(&self, id: NodeId) -> Result<Option<String>, PartylineError> {
        self.ask(|reply| HubMsg::NodeName { id, reply }).await
    }

    /// The hub's counters.
    ///
    /// # Errors
    /// [`PartylineError::Stopped`].
    pub async fn stats(&self) -> Result<PartylineStats, PartylineError> {
        self.ask(|reply| HubMsg::Stats { reply }).await
    }

    pub(crate) async fn say(&self, session: u64, text: String, action: bool) -> Reply {
        let text = sanitize(&text);
        if text.len() > MAX_LINE_LEN {
            return Reply::fail(format!("line too long (at most {MAX_LINE_LEN} bytes)"));
        }
        match self
            .ask(|reply| HubMsg::Say {
                id: session,
                text,
                action,
                reply,
            })
            .await
        {
            Ok(Ok(())) => Reply::default(),
            Ok(Err(e)) => Reply::fail(e),
            Err(_) => Reply::fail("the partyline has stopped"),
        }
    }

    pub(crate) async fn rename(&self, session: u64, nick: &str) -> Result<(), String> {
        let nick = nick.to_owned();
        match self
            .ask(|reply| HubMsg::Nick {
                id: session,
                nick,
                reply,
            })
            .await
        {
            Ok(Ok(_old)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub(crate) async fn private(
        &self,
        session: u64,
        to: &str,
        text: String,
    ) -> Result<String, String> {
        let to = to.to_owned();
        self.ask(|reply| HubMsg::Private {
            id: session,
            to,
            text,
            reply,
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Resolves once the hub task has ended, saying how:
    /// [`TaskExit::Stopped`] after [`Partyline::shutdown`], or
    /// [`TaskExit::Failed`] if it panicked (the reason carries the panic
    /// message) or returned by itself, which a supervisor should treat as
    /// the partyline's death. The future owns what it needs, so it can be
    /// moved into a watching task.
    ///
    /// Cancel safety: safe to cancel.
    pub fn closed(&self) -> impl std::future::Future<Output = TaskExit> + Send + 'static {
        self.inner.tasks.closed()
    }

    /// Stops the hub and waits for it. Idempotent. Sessions are told; lines
    /// still in the outbox keep going to gossip, in order and at the
    /// origin's pace, for at most [`SHUTDOWN_DRAIN`] (1 s); what is left
    /// then is dropped, counted in `lines_lost` and logged. A hub that had
    /// panicked is logged once, with its message (and told by
    /// [`Partyline::closed`]).
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let watcher = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(watcher) = watcher
            && watcher.await.is_err()
        {
            tracing::warn!("the partyline hub's watcher was aborted");
        }
    }

    /// Test-only fault: makes the hub task panic.
    #[cfg(test)]
    async fn panic_for_tests(&self) {
        let _ = self.inner.tx.send(HubMsg::Panic).await;
    }
}

/// One user's session.
#[derive(Debug)]
pub struct Session {
    id: u64,
    nick: String,
    login: Login,
    party: Partyline,
    out: mpsc::Receiver<Output>,
}

impl Session {
    /// The current nick.
    pub fn nick(&self) -> &str {
        &self.nick
    }

    /// The session id (unique on this node).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next thing to show; `None` once the partyline has stopped.
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<Output> {
        self.out.recv().await
    }

    /// What is ready to show, without waiting.
    pub fn try_recv(&mut self) -> Option<Output> {
        self.out.try_recv().ok()
    }

    /// Handles one typed line: a `/command` (run, its reply returned), a
    /// `//text` (said as `/text`), or chat (said to the mesh; the echo comes
    /// through [`Session::recv`] like every line). Empty lines do nothing.
    pub async fn input(&mut self, line: &str) -> Reply {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return Reply::default();
        }
        if let Some(text) = line.strip_prefix("//") {
            return self.party.say(self.id, format!("/{text}"), false).await;
        }
        if !line.starts_with('/') {
            return self.party.say(self.id, line.to_owned(), false).await;
        }
        let (name, args, json) = commands::parse(line);
        let Some(spec) = self.party.command(&name) else {
            return Reply {
                text: format!("unknown command /{name} (try /help)"),
                status: STATUS_UNKNOWN,
                ..Reply::default()
            };
        };
        let call = CommandCall {
            party: self.party.clone(),
            session: self.id,
            nick: self.nick.clone(),
            login: self.login.clone(),
            args,
            json,
        };
        let reply = (spec.handler)(call).await;
        if let Some(n) = &reply.new_nick {
            self.nick.clone_from(n);
        }
        reply
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Best effort: a full hub queue only delays the leave notice until
        // the hub notices the closed channel.
        let _ = self.party.inner.tx.try_send(HubMsg::Leave { id: self.id });
    }
}

/// Exposed for tests of nick rules through the public API.
pub use text::check_nick;

impl From<NickError> for Reply {
    fn from(e: NickError) -> Self {
        Reply::fail(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micelio_gossip::GossipConfig;
    use micelio_transport::memory::MemoryMesh;

    async fn partyline() -> (Partyline, Gossip, PeerManager) {
        let mesh = MemoryMesh::new();
        let n = mesh
            .spawn_with(MemoryMesh::identity(8), MemoryMesh::config(8), None)
            .await
            .unwrap();
        let peers = n.peers;
        let gossip = Gossip::spawn(n.identity, GossipConfig::default(), peers.clone(), n.events);
        let party = Partyline::spawn(PartylineConfig::new("alpha"), gossip.clone(), peers.clone())
            .await
            .unwrap();
        (party, gossip, peers)
    }

    #[tokio::test]
    async fn a_panicking_hub_is_reported_by_closed_and_shutdown_returns() {
        let (party, gossip, peers) = partyline().await;
        let closed = party.closed();
        party.panic_for_tests().await;
        assert_eq!(
            closed.await,
            TaskExit::Failed("the hub task panicked: test fault: the hub panics".to_owned())
        );
        assert_eq!(party.who().await, Err(PartylineError::Stopped));
        party.shutdown().await;
        gossip.shutdown().await;
        peers.shutdown().await;
    }

    #[tokio::test]
    async fn a_shutdown_is_reported_as_a_stop() {
        let (party, gossip, peers) = partyline().await;
        let closed = tokio::spawn(party.closed());
        party.who().await.unwrap();
        assert!(!closed.is_finished(), "running");
        party.shutdown().await;
        assert_eq!(closed.await.unwrap(), TaskExit::Stopped);
        gossip.shutdown().await;
        peers.shutdown().await;
    }
}
