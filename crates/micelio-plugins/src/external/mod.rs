//! External plugins: programs in any language that the node starts,
//! speaks to over their stdin and stdout (JSON-RPC 2.0, one message per
//! line: [`protocol`], specified in `docs/plugins.md`) and supervises.
//!
//! [`ExternalPlugin::launch`] starts the program and runs the `initialize`
//! handshake, in which the program declares its [`Manifest`]; the result
//! is a [`crate::Plugin`] like any other, for a [`crate::PluginHost`]. From then
//! on the node restarts the program with exponential backoff whenever it
//! exits (1 s, doubling, at most 60 s), re-running the handshake, which
//! must declare the same claims; after `max_restarts` exits in a row
//! (a program that ran for 60 s starts the count again) it gives up and
//! shows the plugin failed. At shutdown it sends `shutdown`, closes the
//! program's stdin, waits [`STOP_WAIT`], then kills its process group.
//!
//! Nothing a program does can block the node: lines to it wait in a queue
//! of [`OUT_QUEUE`] (a program that stops reading loses the events that do
//! not fit, counted and logged once); its requests are limited to
//! [`REQUEST_RATE`] a second (a burst of [`REQUEST_BURST`]) and
//! [`MAX_IN_FLIGHT`] at once, beyond which they are answered `THROTTLED`;
//! a line that is not JSON-RPC, or longer than [`protocol::MAX_LINE`], is
//! reported, counted and skipped. Its stderr goes to the node's log, one
//! line per line, with the plugin's name.

pub mod protocol;
mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use run::ExternalPlugin;

use crate::manifest::{EventKind, Manifest};

/// Lines waiting to be written to a program.
pub const OUT_QUEUE: usize = 1024;
/// Requests a program may send per second, sustained.
pub const REQUEST_RATE: u32 = 200;
/// Requests a program may send at once before the rate applies.
pub const REQUEST_BURST: u32 = 400;
/// A program's requests being answered at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// How long the handshake may take.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a program has to exit after `shutdown`.
pub const STOP_WAIT: Duration = Duration::from_secs(3);
/// The first restart delay; it doubles up to [`RESTART_MAX`].
pub const RESTART_MIN: Duration = Duration::from_secs(1);
/// The longest restart delay.
pub const RESTART_MAX: Duration = Duration::from_secs(60);
/// A program that ran this long before exiting starts the count of
/// restarts in a row again.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Default of [`ExternalConfig::max_restarts`].
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
/// Longest line of a program's stderr logged (the rest is cut).
pub const MAX_LOG_LINE: usize = 4096;

/// How to run one external plugin (`[[plugins]]` in the node's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalConfig {
    /// Its name (its state keys live under `plugin/<name>/`).
    pub name: String,
    /// The program.
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to its environment (besides `MICELIO_PLUGIN_NAME`,
    /// `MICELIO_NODE_ID` and `MICELIO_NODE_NAME`, which it always gets).
    pub env: BTreeMap<String, String>,
    /// Its working directory (the node's when `None`).
    pub cwd: Option<PathBuf>,
    /// Exits in a row before the node gives up on it.
    pub max_restarts: u32,
    /// What it may claim, if restricted.
    pub allow: Allow,
    /// How long its handshake may take ([`INIT_TIMEOUT`] by default).
    pub init_timeout: Duration,
}

impl ExternalConfig {
    /// `command` under `name`, with no arguments, environment or limits.
    pub fn new(name: &str, command: impl Into<PathBuf>) -> Self {
        Self {
            name: name.to_owned(),
            command: command.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            max_restarts: DEFAULT_MAX_RESTARTS,
            allow: Allow::default(),
            init_timeout: INIT_TIMEOUT,
        }
    }
}

/// What an external plugin may claim; `None` for a kind leaves it
/// unrestricted. A program that declares more than it may is refused at
/// start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    /// Commands it may answer.
    pub commands: Option<Vec<String>>,
    /// Message types it may own.
    pub msg_types: Option<Vec<u32>>,
    /// Desired-state prefixes it may reconcile.
    pub desired_prefixes: Option<Vec<String>>,
    /// Events it may subscribe to.
    pub events: Option<Vec<EventKind>>,
}

impl Allow {
    /// What `manifest` claims beyond this allow list, if anything.
    pub fn excess(&self, manifest: &Manifest) -> Option<String> {
        fn beyond<T: PartialEq + std::fmt::Debug>(
            what: &str,
            allowed: Option<&Vec<T>>,
            claimed: &[T],
        ) -> Option<String> {
            let allowed = allowed?;
            let extra: Vec<&T> = claimed.iter().filter(|c| !allowed.contains(c)).collect();
            (!extra.is_empty()).then(|| format!("{what} {extra:?}"))
        }
        let names: Vec<String> = manifest.commands.iter().map(|c| c.name.clone()).collect();
        let parts: Vec<String> = [
            beyond("commands", self.commands.as_ref(), &names),
            beyond("msg_types", self.msg_types.as_ref(), &manifest.msg_types),
            beyond(
                "desired prefixes",
                self.desired_prefixes.as_ref(),
                &manifest.desired_prefixes,
            ),
            beyond("events", self.events.as_ref(), &manifest.events),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_names_what_is_claimed_beyond_it() {
        let m = Manifest::new()
            .command("files", "/files", "")
            .command("rm", "/rm", "")
            .msg_type(1200)
            .desired_prefix("files/")
            .event(EventKind::Chat);
        assert_eq!(Allow::default().excess(&m), None);
        let allow = Allow {
            commands: Some(vec!["files".into()]),
            msg_types: Some(vec![1200]),
            desired_prefixes: None,
            events: Some(vec![]),
        };
        assert_eq!(
            allow.excess(&m).as_deref(),
            Some("commands [\"rm\"], events [Chat]")
        );
    }
}
