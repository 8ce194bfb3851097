//! The command registry and the core commands.
//!
//! A command is a name, a usage line, a help line and an async handler.
//! Later layers and plugins register theirs on the [`crate::Partyline`];
//! `/help` is generated from the registry. Every command accepts `--json`
//! where it has structured output.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::json;

use crate::Partyline;
use crate::text::{MAX_LINE_LEN, sanitize};

/// A boxed, `Send` future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A command handler.
pub type Handler = Arc<dyn Fn(CommandCall) -> BoxFuture<Reply> + Send + Sync>;

/// Exit status of a command that failed.
pub const STATUS_FAILED: i32 = 1;
/// Exit status of a command called with bad arguments.
pub const STATUS_USAGE: i32 = 2;
/// Exit status of an unknown command.
pub const STATUS_UNKNOWN: i32 = 127;

/// A registered command.
#[derive(Clone)]
pub struct CommandSpec {
    /// Its name, without the slash.
    pub name: String,
    /// How to call it, e.g. `/msg <nick>[@node] <text>`.
    pub usage: String,
    /// One line on what it does.
    pub help: String,
    /// What runs it.
    pub handler: Handler,
}

impl std::fmt::Debug for CommandSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandSpec")
            .field("name", &self.name)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

impl CommandSpec {
    /// A command from a name, usage, help and an async closure.
    pub fn new<F, Fut>(name: &str, usage: &str, help: &str, f: F) -> Self
    where
        F: Fn(CommandCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        Self {
            name: name.to_owned(),
            usage: usage.to_owned(),
            help: help.to_owned(),
            handler: Arc::new(move |call| Box::pin(f(call))),
        }
    }
}

/// One invocation of a command.
#[derive(Debug, Clone)]
pub struct CommandCall {
    /// The partyline.
    pub party: Partyline,
    /// The calling session's id.
    pub session: u64,
    /// The calling session's nick.
    pub nick: String,
    /// Who logged in: the SSH user and key (for audit trails).
    pub login: Login,
    /// Everything after the command name, `--json` removed, trimmed.
    pub args: String,
    /// Whether `--json` was given.
    pub json: bool,
}

/// Who opened a session: what the SSH layer proved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Login {
    /// The SSH user name.
    pub user: String,
    /// The fingerprint of the key they logged in with (`SHA256:…`), empty
    /// when not known.
    pub key_fingerprint: String,
}

/// What a command (or a chat line) answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// Text for the caller (may be empty).
    pub text: String,
    /// Exit status: 0 on success.
    pub status: i32,
    /// The session should end.
    pub quit: bool,
    /// The session's nick changed to this.
    pub new_nick: Option<String>,
}

impl Reply {
    /// Success with `text`.
    pub fn ok(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    /// Failure with a message.
    pub fn fail(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            status: STATUS_FAILED,
            ..Self::default()
        }
    }

    /// Bad arguments: shows the usage.
    pub fn usage(usage: &str) -> Self {
        Self {
            text: format!("usage: {usage}"),
            status: STATUS_USAGE,
            ..Self::default()
        }
    }

    /// Pretty JSON.
    pub fn json(value: &serde_json::Value) -> Self {
        Self::ok(serde_json::to_string_pretty(value).unwrap_or_default())
    }
}

/// Splits `/name args…` into the name and the rest, with `--json` pulled
/// out of the rest.
pub(crate) fn parse(line: &str) -> (String, String, bool) {
    let body = line.trim_start_matches('/');
    let (name, rest) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
    let mut json = false;
    let args: Vec<&str> = rest
        .split_whitespace()
        .filter(|w| {
            if *w == "--json" {
                json = true;
                false
            } else {
                true
            }
        })
        .collect();
    // Keep the original spacing of free text when --json is absent.
    let args = if json {
        args.join(" ")
    } else {
        rest.trim().to_owned()
    };
    (name.to_ascii_lowercase(), args, json)
}

/// The core commands.
pub(crate) fn core() -> Vec<CommandSpec> {
    vec![
        CommandSpec::new(
            "help",
            "/help [command]",
            "list the commands, or show one",
            |c| async move { help(&c) },
        ),
        CommandSpec::new(
            "who",
            "/who [--json]",
            "users on every node of the mesh",
            |c| async move { who(c).await },
        ),
        CommandSpec::new("nick", "/nick <name>", "change your nick", |c| async move {
            nick(c).await
        }),
        CommandSpec::new(
            "me",
            "/me <action>",
            "say an action (\"* you wave\")",
            |c| async move {
                if c.args.is_empty() {
                    return Reply::usage("/me <action>");
                }
                c.party.say(c.session, c.args, true).await
            },
        ),
        CommandSpec::new(
            "msg",
            "/msg <nick>[@node] <text>",
            "send a private line to a user on any node",
            |c| async move { msg(c).await },
        ),
        CommandSpec::new("quit", "/quit", "leave the partyline", |_| async move {
            Reply {
                text: "bye".into(),
                quit: true,
                ..Reply::default()
            }
        }),
        CommandSpec::new(
            "peers",
            "/peers [--json]",
            "the peers this node is connected to",
            |c| async move { peers(&c) },
        ),
        CommandSpec::new(
            "stats",
            "/stats [--json]",
            "gossip and transport counters",
            |c| async move { stats(c).await },
        ),
    ]
}

fn help(c: &CommandCall) -> Reply {
    let cmds = c.party.commands();
    if !c.args.is_empty() {
        let name = c.args.trim_start_matches('/').to_ascii_lowercase();
        return match cmds.iter().find(|s| s.name == name) {
            Some(s) => Reply::ok(format!("{}\n  {}", s.usage, s.help)),
            None => Reply::fail(format!("no command /{name}")),
        };
    }
    if c.json {
        let list: Vec<_> = cmds
            .iter()
            .map(|s| json!({"name": s.name, "usage": s.usage, "help": s.help}))
            .collect();
        return Reply::json(&json!(list));
    }
    let width = cmds
        .iter()
        .map(|s| s.usage.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::from(
        "Commands (anything else is a chat line; start with // to say a line beginning with /):",
    );
    for s in &cmds {
        out.push_str(&format!("\n  {:width$}  {}", s.usage, s.help));
    }
    Reply::ok(out)
}

async fn who(c: CommandCall) -> Reply {
    let Ok(entries) = c.party.who().await else {
        return Reply::fail("the partyline is stopping");
    };
    if c.json {
        return Reply::json(&json!(entries));
    }
    let total: usize = entries.iter().map(|e| e.nicks.len()).sum();
    let mut out = format!("{total} user(s) on {} node(s):", entries.len());
    for e in &entries {
        let here = if e.local { " (this node)" } else { "" };
        let nicks = if e.nicks.is_empty() {
            "-".to_owned()
        } else {
            e.nicks.join(", ")
        };
        out.push_str(&format!(
            "\n  {} [{}]{here}: {nicks}",
            e.node,
            &e.node_id[..12.min(e.node_id.len())]
        ));
    }
    Reply::ok(out)
}

async fn nick(c: CommandCall) -> Reply {
    let name = c.args.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Reply::usage("/nick <name>");
    }
    match c.party.rename(c.session, name).await {
        Ok(()) => Reply {
            text: format!("you are now {name}"),
            new_nick: Some(name.to_owned()),
            ..Reply::default()
        },
        Err(e) => Reply::fail(e),
    }
}

async fn msg(c: CommandCall) -> Reply {
    let Some((to, text)) = c.args.split_once(char::is_whitespace) else {
        return Reply::usage("/msg <nick>[@node] <text>");
    };
    let text = sanitize(text.trim());
    if text.is_empty() {
        return Reply::usage("/msg <nick>[@node] <text>");
    }
    if text.len() > MAX_LINE_LEN {
        return Reply::fail(format!("line too long (at most {MAX_LINE_LEN} bytes)"));
    }
    match c.party.private(c.session, to, text).await {
        Ok(echo) => Reply::ok(echo),
        Err(e) => Reply::fail(e),
    }
}

fn peers(c: &CommandCall) -> Reply {
    let mut peers = c.party.peers().peers();
    peers.sort_by_key(|p| p.node_id);
    if c.json {
        let list: Vec<_> = peers
            .iter()
            .map(|p| {
                json!({
                    "node_id": p.node_id.to_hex(),
                    "remote_addr": p.remote_addr,
                    "direction": p.direction.to_string(),
                    "listen_addr": p.hello.listen_addr,
                    "tags": p.hello.tags,
                    "version": p.hello.version,
                })
            })
            .collect();
        return Reply::json(&json!(list));
    }
    let mut out = format!("{} peer(s):", peers.len());
    for p in &peers {
        let tags = if p.hello.tags.is_empty() {
            String::new()
        } else {
            format!(" tags={}", p.hello.tags.join(","))
        };
        out.push_str(&format!(
            "\n  {} {} {}{tags}",
            p.node_id.short(12),
            p.direction,
            p.remote_addr
        ));
    }
    Reply::ok(out)
}

async fn stats(c: CommandCall) -> Reply {
    let Ok(g) = c.party.gossip().stats().await else {
        return Reply::fail("gossip has stopped");
    };
    let Ok(p) = c.party.stats().await else {
        return Reply::fail("the partyline is stopping");
    };
    let t = c.party.peers().stats();
    let dropped: serde_json::Map<String, serde_json::Value> = g
        .dropped
        .iter()
        .map(|(k, v)| (k.label().to_owned(), json!(v)))
        .collect();
    let subscribers: Vec<serde_json::Value> = g
        .subscribers
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "type": s.msg_type.to_string(),
                "delivered": s.delivered,
                "dropped": s.dropped,
            })
        })
        .collect();
    let state = match c.party.state() {
        Some(s) => s.stats().await.ok(),
        None => None,
    };
    let desired = match c.party.desired() {
        Some(d) => d.stats().await.ok(),
        None => None,
    };
    if c.json {
        let transport: serde_json::Map<String, serde_json::Value> = t
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        return Reply::json(&json!({
            "gossip": {
                "received": g.received,
                "delivered": g.delivered,
                "originated": g.originated,
                "forwarded": g.forwarded,
                "unhandled": g.unhandled,
                "dropped": dropped,
                "keys": g.keys,
                "learned_keys": g.learned_keys,
                "keys_evicted": g.keys_evicted,
                "seen": g.seen,
                "seen_evicted": g.seen_evicted,
                "rate_buckets": g.rate_buckets,
                "rate_buckets_evicted": g.rate_buckets_evicted,
                "retained": g.retained,
                "retained_bytes": g.retained_bytes,
                "retained_evicted": g.retained_evicted,
                "origin_queued": g.origin_queued,
                "origin_refused": g.origin_refused,
                "subscriber_drops": g.subscriber_drops(),
                "subscribers": subscribers,
                "tree": {
                    "eager_peers": g.tree_eager_peers,
                    "lazy_peers": g.tree_lazy_peers,
                    "ihave_frames_sent": g.ihave_frames_sent,
                    "ihave_ids_sent": g.ihave_ids_sent,
                    "ihave_ids_received": g.ihave_ids_received,
                    "grafts_sent": g.grafts_sent,
                    "grafted_ids": g.grafted_ids,
                    "grafts_received": g.grafts_received,
                    "grafts_served": g.grafts_served,
                    "prunes_sent": g.prunes_sent,
                    "prunes_received": g.prunes_received,
                    "missing": g.tree_missing,
                },
                "repair": {
                    "digests_sent": g.digests_sent,
                    "requested": g.repairs_requested,
                    "served": g.repairs_served,
                    "received": g.repair_received,
                },
                "frames": {
                    "data_sent": g.data_frames_sent,
                    "data_bytes_sent": g.data_bytes_sent,
                    "control_sent": g.control_frames_sent,
                    "control_bytes_sent": g.control_bytes_sent,
                    "refused": g.send_refused,
                },
            },
            "partyline": p,
            "transport": transport,
            "state": state.as_ref().map(crate::state_cmds::stats_json),
            "desired": desired.as_ref().map(crate::desired_cmds::stats_json),
        }));
    }
    let mut out = format!(
        "gossip: received {} delivered {} originated {} forwarded {} unhandled {} dropped {}",
        g.received,
        g.delivered,
        g.originated,
        g.forwarded,
        g.unhandled,
        g.dropped_total()
    );
    for (k, v) in &g.dropped {
        out.push_str(&format!("\n  dropped {}: {v}", k.label()));
    }
    out.push_str(&format!(
        "\n  keys known {} (learned {}, evicted {}), ids remembered {} (evicted {})",
        g.keys, g.learned_keys, g.keys_evicted, g.seen, g.seen_evicted
    ));
    out.push_str(&format!(
        "\n  rate buckets {} (evicted {}), kept for repair {} ({} bytes, evicted {})",
        g.rate_buckets, g.rate_buckets_evicted, g.retained, g.retained_bytes, g.retained_evicted
    ));
    out.push_str(&format!(
        "\n  outgoing queue {} (refused {}), subscriber drops {}",
        g.origin_queued,
        g.origin_refused,
        g.subscriber_drops()
    ));
    out.push_str(&format!(
        "\n  tree: eager peers {} lazy peers {}, ids announced {} heard {}, grafts sent {} \
         (ids {}) received {} (served {}), prunes sent {} received {}, missing {}",
        g.tree_eager_peers,
        g.tree_lazy_peers,
        g.ihave_ids_sent,
        g.ihave_ids_received,
        g.grafts_sent,
        g.grafted_ids,
        g.grafts_received,
        g.grafts_served,
        g.prunes_sent,
        g.prunes_received,
        g.tree_missing
    ));
    out.push_str(&format!(
        "\n  repair: digests sent {} ids requested {} served {}; frames sent: data {} ({} bytes) \
         control {} ({} bytes), refused by full queues {}",
        g.digests_sent,
        g.repairs_requested,
        g.repairs_served,
        g.data_frames_sent,
        g.data_bytes_sent,
        g.control_frames_sent,
        g.control_bytes_sent,
        g.send_refused
    ));
    for s in g.subscribers.iter().filter(|s| s.dropped > 0) {
        out.push_str(&format!(
            "\n  subscriber #{} ({}): delivered {} dropped {}",
            s.id, s.msg_type, s.delivered, s.dropped
        ));
    }
    out.push_str(&format!(
        "\npartyline: sessions {} remote nodes {} (evicted {}, expired {}) remote users {} \
         (ignored {}) lines refused {} presence sent {} (put off {})",
        p.sessions,
        p.remote_nodes,
        p.remote_evicted,
        p.remote_expired,
        p.remote_users,
        p.remote_nicks_ignored,
        p.lines_refused,
        p.presence_sent,
        p.presence_deferred
    ));
    out.push_str("\ntransport:");
    let mut any = false;
    for (k, v) in t.entries() {
        if v > 0 {
            any = true;
            out.push_str(&format!("\n  {k}: {v}"));
        }
    }
    if !any {
        out.push_str(" every counter is 0");
    }
    if let Some(s) = &state {
        out.push_str(&crate::state_cmds::stats_text(s));
    }
    if let Some(d) = &desired {
        out.push_str(&crate::desired_cmds::stats_text(d));
    }
    Reply::ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(parse("/who"), ("who".into(), String::new(), false));
        assert_eq!(parse("/WHO --json"), ("who".into(), String::new(), true));
        assert_eq!(
            parse("/msg bob  hi  there"),
            ("msg".into(), "bob  hi  there".into(), false)
        );
        assert_eq!(
            parse("/stats --json extra"),
            ("stats".into(), "extra".into(), true)
        );
    }
}
