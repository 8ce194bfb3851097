//! Plugins for micelio nodes.
//!
//! A plugin extends a node without touching its code. Through its
//! [`PluginContext`] and its [`Manifest`] it can:
//! - answer partyline commands (they appear in `/help` and work in exec
//!   mode, `ssh host '/cmd'`, with exit statuses);
//! - own gossip message types (1000 and above), broadcast signed messages
//!   of them and receive every one the node delivers;
//! - read the whole state map and write keys under
//!   `<node_id>/plugin/<name>/…`;
//! - subscribe to events: chat lines, state changes, peers up and down,
//!   members up, down and left;
//! - reconcile desired-state keys under prefixes it claims (a plugin is a
//!   [`Reconciler`]).
//!
//! [`PluginHost`] collects the plugins of a node, refuses claims that
//! collide (two plugins, one command or message type) before anything
//! starts, registers the commands, feeds each plugin its events through a
//! bounded queue of its own (a plugin that does not keep up loses events,
//! counted and logged once; it never slows the node) and answers
//! `/plugins`.
//!
//! ```
//! use micelio_plugins::{BoxFuture, Manifest, Plugin, PluginCall, Reply};
//!
//! /// `/hello`: says hello from this node.
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn name(&self) -> &str { "hello" }
//!     fn manifest(&self) -> Manifest {
//!         Manifest::new().command("hello", "/hello", "says hello")
//!     }
//!     fn command(&self, call: PluginCall) -> BoxFuture<Reply> {
//!         Box::pin(async move { Reply::ok(format!("hello, {}", call.nick)) })
//!     }
//! }
//! ```
//!
//! [`Reconciler`]: micelio_state::desired::Reconciler
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod context;
mod event;
pub mod external;
mod host;
pub mod manifest;

use std::time::Duration;

pub use context::PluginContext;
pub use event::Event;
pub use host::{
    COMMAND_TIMEOUT, EVENT_QUEUE, MEMBER_POLL, PluginHost, PluginInfo, PluginStatus, Plugins,
    STOP_GRACE,
};
pub use manifest::{CommandDecl, EventKind, Manifest};
pub use micelio_partyline::{BoxFuture, Login, Reply};
pub use micelio_state::desired::{Applied, Outcome, ReconcileFuture};

/// One call of a plugin's command.
#[derive(Debug, Clone)]
pub struct PluginCall {
    /// The command's name, without the slash.
    pub command: String,
    /// Everything after the name, `--json` removed, trimmed.
    pub args: String,
    /// Whether `--json` was given.
    pub json: bool,
    /// The calling session's nick.
    pub nick: String,
    /// Who logged in (the SSH user and key fingerprint).
    pub login: Login,
}

/// A plugin: what it claims, and what it does when called.
///
/// Every method but [`Plugin::name`] and [`Plugin::manifest`] has a default
/// that does nothing (or refuses), so a plugin implements only what its
/// manifest claims. Futures are `'static`: clone what they need (an `Arc`
/// of the plugin's state) into them.
pub trait Plugin: Send + Sync + 'static {
    /// Its name: 1–32 of `a-z`, `0-9`, `-`, `_`, starting with a letter.
    /// Its state keys live under `<node_id>/plugin/<name>/`.
    fn name(&self) -> &str;

    /// What it claims; read once, before it starts.
    fn manifest(&self) -> Manifest;

    /// Called once its claims are in place and before any event; `ctx` is
    /// its handle on the node (keep it). An error marks the plugin failed
    /// (shown by `/plugins`); the node goes on without it.
    fn start(&self, ctx: PluginContext) -> BoxFuture<Result<(), String>> {
        let _ = ctx;
        Box::pin(async { Ok(()) })
    }

    /// One of its commands was called. The node gives up waiting after
    /// [`COMMAND_TIMEOUT`].
    fn command(&self, call: PluginCall) -> BoxFuture<Reply> {
        Box::pin(async move { Reply::fail(format!("/{} is not handled", call.command)) })
    }

    /// An event of a kind it subscribed to, or a message of a type it
    /// owns. Events come one at a time, in order; while one is handled the
    /// next ones wait in a queue of [`EVENT_QUEUE`], and those that do not
    /// fit are dropped (counted).
    fn event(&self, event: Event) -> BoxFuture<()> {
        let _ = event;
        Box::pin(async {})
    }

    /// Makes the desired `value` of `key` (under a prefix it claims) real;
    /// as [`micelio_state::desired::Reconciler::apply`].
    fn apply(&self, key: &str, value: &str) -> ReconcileFuture {
        let _ = value;
        let key = key.to_owned();
        Box::pin(async move { Applied::error(format!("the plugin does not reconcile {key}")) })
    }

    /// Undoes `key`; as [`micelio_state::desired::Reconciler::remove`].
    fn remove(&self, key: &str) -> ReconcileFuture {
        let key = key.to_owned();
        Box::pin(async move { Applied::error(format!("the plugin does not reconcile {key}")) })
    }

    /// The time limit of one apply or remove.
    fn reconcile_timeout(&self) -> Duration {
        micelio_state::desired::DEFAULT_TIMEOUT
    }

    /// Called at shutdown; the node waits at most [`STOP_GRACE`].
    fn stop(&self) -> BoxFuture<()> {
        Box::pin(async {})
    }

    /// For a plugin that runs outside the node (a program): its health,
    /// shown by `/plugins`. `None` (the default) for in-process plugins.
    fn health(&self) -> Option<Health> {
        None
    }
}

/// The health of a plugin that runs outside the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `starting`, `running`, `restarting`, `failed` or `stopped`.
    pub state: &'static str,
    /// Why it is restarting or failed.
    pub error: Option<String>,
    /// Its process id, while it runs.
    pub pid: Option<u32>,
    /// Restarts so far.
    pub restarts: u32,
    /// Lines from it that were not valid (skipped).
    pub bad_lines: u64,
    /// Requests from it refused for its rate.
    pub throttled: u64,
    /// Lines for it dropped because it did not read them.
    pub out_dropped: u64,
}

/// Why a plugin operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// A manifest field is not valid.
    #[error("plugin {plugin}: {why}")]
    Manifest {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        why: String,
    },
    /// Two plugins have one name.
    #[error("two plugins are named {0}")]
    Duplicate(String),
    /// Two plugins (or a plugin and the node) claim one thing.
    #[error("plugin {plugin} claims {what}, which {other} already claims")]
    Conflict {
        /// The plugin refused.
        plugin: String,
        /// Who holds the claim.
        other: String,
        /// What both claim.
        what: String,
    },
    /// A plugin sent a message of a type it does not own.
    #[error("plugin {plugin} does not own msg_type {msg_type}")]
    NotOwned {
        /// The plugin.
        plugin: String,
        /// The type.
        msg_type: u32,
    },
    /// A key a plugin wrote is not valid.
    #[error("{0}")]
    BadKey(String),
    /// The gossip layer refused.
    #[error(transparent)]
    Gossip(#[from] micelio_gossip::GossipError),
    /// The state map refused.
    #[error(transparent)]
    State(#[from] micelio_state::StateError),
    /// The partyline refused.
    #[error(transparent)]
    Partyline(#[from] micelio_partyline::PartylineError),
    /// The host has stopped.
    #[error("the plugin host stopped")]
    Stopped,
}
