//! The state commands (`/state`, `/get`, `/set`, `/del`, `/nodes`, `/tags`,
//! `/tag`) and the
//! state section of `/stats`, registered by [`Partyline::attach_state`].
//!
//! Keys: a key whose first segment is a NodeId (64 hex characters) is a
//! full key; any other key is in this node's namespace (`/get color` reads
//! `<this node>/color`, `/get node/name` this node's name). Values from the
//! mesh are printed safely: UTF-8 text with its control characters
//! stripped, anything else as `hex:` followed by its bytes in hex.

use micelio_state::{Entry, Member, State, StateError, StateStats};
use serde_json::json;

use crate::Partyline;
use crate::commands::{CommandCall, CommandSpec, Reply};
use crate::text::sanitize;

/// Most entries `/state` prints.
pub const MAX_LISTED: usize = 1000;

/// The commands, bound to `state`.
pub(crate) fn commands(state: &State) -> Vec<CommandSpec> {
    let s = state.clone();
    let list = CommandSpec::new(
        "state",
        "/state [prefix] [--json]",
        "list live state entries (a prefix without a NodeId is in this node's namespace)",
        move |c| {
            let s = s.clone();
            async move { list(&s, &c).await }
        },
    );
    let s = state.clone();
    let get = CommandSpec::new(
        "get",
        "/get <key> [--json]",
        "show one entry (a bare key is in this node's namespace)",
        move |c| {
            let s = s.clone();
            async move { get(&s, &c).await }
        },
    );
    let s = state.clone();
    let set = CommandSpec::new(
        "set",
        "/set <key> <value>",
        "write a key in this node's namespace",
        move |c| {
            let s = s.clone();
            async move { set(&s, &c).await }
        },
    );
    let s = state.clone();
    let del = CommandSpec::new(
        "del",
        "/del <key>",
        "delete a key of this node's namespace",
        move |c| {
            let s = s.clone();
            async move { del(&s, &c).await }
        },
    );
    let s = state.clone();
    let tags = CommandSpec::new(
        "tags",
        "/tags [--json]",
        "this node's tags, configured and changed at runtime",
        move |c| {
            let s = s.clone();
            async move { tags(&s, &c).await }
        },
    );
    let s = state.clone();
    let tag = CommandSpec::new(
        "tag",
        "/tag add|del <tag>",
        "add or remove a tag of this node (kept across restarts)",
        move |c| {
            let s = s.clone();
            async move { tag(&s, &c).await }
        },
    );
    let s = state.clone();
    let nodes = CommandSpec::new(
        "nodes",
        "/nodes [selector] [--json]",
        "the mesh's members (those a selector matches): liveness, last heartbeat, address, version, tags",
        move |c| {
            let s = s.clone();
            async move { nodes(&s, &c).await }
        },
    );
    vec![list, get, set, del, nodes, tags, tag]
}

/// Whether `segment` is a NodeId in hex.
fn is_node_id(segment: &str) -> bool {
    segment.len() == 64 && segment.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The full key (or prefix) `text` names.
fn full_key(state: &State, text: &str) -> String {
    let first = text.split('/').next().unwrap_or("");
    if is_node_id(first) {
        text.to_ascii_lowercase().split_once('/').map_or_else(
            || text.to_ascii_lowercase(),
            |(id, rest)| format!("{id}/{rest}"),
        )
    } else {
        state.own_key(text)
    }
}

/// The sub-key of this node's namespace `text` names, or why not.
fn own_sub<'a>(state: &State, text: &'a str) -> Result<&'a str, String> {
    let first = text.split('/').next().unwrap_or("");
    if !is_node_id(first) {
        return Ok(text);
    }
    if state.node_id().matches_str(&first.to_ascii_lowercase()) {
        Ok(text.split_once('/').map_or("", |(_, r)| r))
    } else {
        Err("a node writes only in its own namespace".to_owned())
    }
}

/// A value for a terminal: text without control characters, or hex.
pub fn display_value(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) => sanitize(s),
        Err(_) => format!("hex:{}", hex(v)),
    }
}

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn entry_json(e: &Entry) -> serde_json::Value {
    let mut o = json!({
        "key": e.key,
        "author": e.author.to_hex(),
        "ts": e.ts,
    });
    match std::str::from_utf8(&e.value) {
        Ok(s) => o["value"] = json!(s),
        Err(_) => o["value_hex"] = json!(hex(&e.value)),
    }
    o
}

fn failed(e: &StateError) -> Reply {
    Reply::fail(e.to_string())
}

async fn list(state: &State, c: &CommandCall) -> Reply {
    let prefix = if c.args.is_empty() {
        String::new()
    } else {
        full_key(state, &c.args)
    };
    let mut entries = match state.scan(&prefix, MAX_LISTED + 1).await {
        Ok(e) => e,
        Err(e) => return failed(&e),
    };
    let more = entries.len() > MAX_LISTED;
    entries.truncate(MAX_LISTED);
    if c.json {
        let list: Vec<_> = entries.iter().map(entry_json).collect();
        return Reply::json(&json!({"entries": list, "truncated": more}));
    }
    let mut out = format!(
        "{} entr{}:",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" }
    );
    for e in &entries {
        out.push_str(&format!(
            "\n  {} = {}",
            sanitize(&e.key),
            display_value(&e.value)
        ));
    }
    if more {
        out.push_str(&format!(
            "\n  (more: only the first {MAX_LISTED} are shown)"
        ));
    }
    Reply::ok(out)
}

async fn get(state: &State, c: &CommandCall) -> Reply {
    if c.args.is_empty() || c.args.contains(char::is_whitespace) {
        return Reply::usage("/get <key>");
    }
    let key = full_key(state, &c.args);
    match state.get(&key).await {
        Ok(Some(e)) if c.json => Reply::json(&entry_json(&e)),
        Ok(Some(e)) => Reply::ok(display_value(&e.value)),
        Ok(None) => Reply::fail(format!("{}: not found", sanitize(&key))),
        Err(e) => failed(&e),
    }
}

async fn set(state: &State, c: &CommandCall) -> Reply {
    let Some((key, value)) = c.args.split_once(char::is_whitespace) else {
        return Reply::usage("/set <key> <value>");
    };
    let sub = match own_sub(state, key) {
        Ok(s) => s,
        Err(e) => return Reply::fail(e),
    };
    match state.set(sub, value.trim().to_owned()).await {
        Ok(e) => Reply::ok(format!(
            "{} = {} (ts {})",
            e.key,
            display_value(&e.value),
            e.ts
        )),
        Err(e) => failed(&e),
    }
}

async fn del(state: &State, c: &CommandCall) -> Reply {
    if c.args.is_empty() || c.args.contains(char::is_whitespace) {
        return Reply::usage("/del <key>");
    }
    let sub = match own_sub(state, &c.args) {
        Ok(s) => s,
        Err(e) => return Reply::fail(e),
    };
    let key = state.own_key(sub);
    match state.get(&key).await {
        Ok(None) => return Reply::fail(format!("{}: not found", sanitize(&key))),
        Err(e) => return failed(&e),
        Ok(Some(_)) => {}
    }
    match state.delete(sub).await {
        Ok(e) => Reply::ok(format!("{} deleted (ts {})", e.key, e.ts)),
        Err(e) => failed(&e),
    }
}

fn ago(m: &Member) -> String {
    match m.last_heartbeat {
        _ if m.is_self => "now".to_owned(),
        Some(d) if d.as_secs() < 1 => format!("{}ms ago", d.as_millis()),
        Some(d) => format!("{}s ago", d.as_secs()),
        None => "never (since this node started)".to_owned(),
    }
}

async fn tags(state: &State, c: &CommandCall) -> Reply {
    let set = match state.tags().await {
        Ok(t) => t,
        Err(e) => return failed(&e),
    };
    if c.json {
        return Reply::json(&json!(set));
    }
    let list = |t: &[String]| {
        if t.is_empty() {
            "none".to_owned()
        } else {
            t.join(", ")
        }
    };
    let mut out = format!("tags: {}", list(&set.tags));
    out.push_str(&format!(
        "
  configured (node.tags): {}",
        list(&set.configured)
    ));
    if !set.added.is_empty() {
        out.push_str(&format!(
            "
  added at runtime: {}",
            list(&set.added)
        ));
    }
    if !set.removed.is_empty() {
        out.push_str(&format!(
            "
  removed at runtime: {}",
            list(&set.removed)
        ));
    }
    Reply::ok(out)
}

async fn tag(state: &State, c: &CommandCall) -> Reply {
    const USAGE: &str = "/tag add|del <tag>";
    let parts: Vec<&str> = c.args.split_whitespace().collect();
    let (add, name) = match parts.as_slice() {
        ["add", t] => (true, *t),
        ["del", t] => (false, *t),
        _ => return Reply::usage(USAGE),
    };
    let r = if add {
        state.add_tag(name).await
    } else {
        state.remove_tag(name).await
    };
    match r {
        Ok(Some(set)) => Reply::ok(format!(
            "{} tag {name}: tags now {}",
            if add { "added" } else { "removed" },
            if set.tags.is_empty() {
                "none".to_owned()
            } else {
                set.tags.join(", ")
            }
        )),
        Ok(None) if add => Reply::ok(format!("this node already has the tag {name}")),
        Ok(None) => Reply::fail(format!("this node has no tag {}", sanitize(name))),
        Err(e) => failed(&e),
    }
}

async fn nodes(state: &State, c: &CommandCall) -> Reply {
    let filter = if c.args.is_empty() {
        None
    } else {
        match crate::desired_cmds::selector_arg(&c.args) {
            Ok(s) => Some(s),
            Err(r) => return r,
        }
    };
    let members = match state.members().await {
        Ok(m) => m,
        Err(e) => return failed(&e),
    };
    let members: Vec<Member> = members
        .into_iter()
        .filter(|m| {
            filter.as_ref().is_none_or(|f| {
                let hex = m.node_id.to_hex();
                f.matches(&micelio_state::selector::Target {
                    node_id: &hex,
                    name: &m.name,
                    tags: &m.tags,
                })
            })
        })
        .collect();
    if c.json {
        let list: Vec<_> = members
            .iter()
            .map(|m| {
                json!({
                    "node_id": m.node_id.to_hex(),
                    "name": m.name,
                    "tags": m.tags,
                    "addr": m.addr,
                    "version": m.version,
                    "liveness": m.liveness.label(),
                    "heartbeat": m.heartbeat,
                    "last_heartbeat_ms": m.last_heartbeat.map(|d| d.as_millis() as u64),
                    "self": m.is_self,
                })
            })
            .collect();
        return Reply::json(&json!(list));
    }
    let mut out = format!("{} node(s):", members.len());
    for m in &members {
        let name = if m.name.is_empty() {
            "?".to_owned()
        } else {
            sanitize(&m.name)
        };
        let me = if m.is_self { " (this node)" } else { "" };
        let tags = if m.tags.is_empty() {
            String::new()
        } else {
            format!(" tags={}", sanitize(&m.tags.join(",")))
        };
        out.push_str(&format!(
            "\n  {name} [{}]{me} {} heartbeat {} addr {} version {}{tags}",
            m.node_id.short(12),
            m.liveness,
            ago(m),
            if m.addr.is_empty() {
                "-".to_owned()
            } else {
                sanitize(&m.addr)
            },
            if m.version.is_empty() {
                "-".to_owned()
            } else {
                sanitize(&m.version)
            },
        ));
    }
    Reply::ok(out)
}

/// The state section of `/stats`, as JSON.
pub(crate) fn stats_json(s: &StateStats) -> serde_json::Value {
    json!({
        "entries": s.entries,
        "tombstones": s.tombstones,
        "bytes": s.bytes,
        "disk_bytes": s.disk_bytes,
        "clock": s.clock,
        "writes": s.writes,
        "accepted_gossip": s.accepted_gossip,
        "accepted_sync": s.accepted_sync,
        "stale": s.stale,
        "collected": s.collected,
        "rejected": s.rejected,
        "bad_messages": s.bad_messages,
        "sync": {
            "sessions_opened": s.sessions_opened,
            "sessions_accepted": s.sessions_accepted,
            "sessions_completed": s.sessions_completed,
            "sessions_throttled": s.sessions_throttled,
            "requests_sent": s.requests_sent,
            "requests_answered": s.requests_answered,
            "requests_throttled": s.requests_throttled,
            "pages_sent": s.pages_sent,
            "entries_sent": s.entries_sent,
            "page_bytes_sent": s.page_bytes_sent,
            "pages_received": s.pages_received,
            "page_bytes_received": s.page_bytes_received,
        },
        "send_dropped": s.send_dropped,
        "gossip_refused": s.gossip_refused,
        "store_errors": s.store_errors,
        "members": {
            "alive": s.members[0],
            "suspect": s.members[1],
            "dead": s.members[2],
            "left": s.members[3],
            "evicted": s.members_evicted,
        },
    })
}

/// The state section of `/stats`, as text.
pub(crate) fn stats_text(s: &StateStats) -> String {
    let mut out = format!(
        "\nstate: entries {} (tombstones {}) bytes {} on disk {} clock {} writes {} \
         accepted by gossip {} by sync {} stale {} collected {}",
        s.entries,
        s.tombstones,
        s.bytes,
        s.disk_bytes
            .map_or_else(|| "-".to_owned(), |b| b.to_string()),
        s.clock,
        s.writes,
        s.accepted_gossip,
        s.accepted_sync,
        s.stale,
        s.collected
    );
    for (k, v) in &s.rejected {
        out.push_str(&format!("\n  rejected {k}: {v}"));
    }
    for (k, v) in &s.bad_messages {
        out.push_str(&format!("\n  bad sync message {k}: {v}"));
    }
    out.push_str(&format!(
        "\n  syncs: sessions opened {} accepted {} completed {} throttled {}; requests sent {} \
         answered {} throttled {}; pages sent {} ({} entries, {} bytes) received {} ({} bytes)",
        s.sessions_opened,
        s.sessions_accepted,
        s.sessions_completed,
        s.sessions_throttled,
        s.requests_sent,
        s.requests_answered,
        s.requests_throttled,
        s.pages_sent,
        s.entries_sent,
        s.page_bytes_sent,
        s.pages_received,
        s.page_bytes_received
    ));
    out.push_str(&format!(
        "\n  not sent: sync {} gossip {}; storage errors {}; members alive {} suspect {} dead {} left {} (forgotten at the cap {})",
        s.send_dropped,
        s.gossip_refused,
        s.store_errors,
        s.members[0],
        s.members[1],
        s.members[2],
        s.members[3],
        s.members_evicted
    ));
    out
}

impl Partyline {
    /// Attaches the state service: registers `/state`, `/get`, `/set`,
    /// `/del` and `/nodes`, and adds its counters to `/stats`.
    ///
    /// # Errors
    /// [`crate::PartylineError::Duplicate`] if called twice or if another
    /// command took one of the names.
    pub fn attach_state(&self, state: State) -> Result<(), crate::PartylineError> {
        for spec in commands(&state) {
            self.register(spec)?;
        }
        self.inner
            .state
            .set(state)
            .map_err(|_| crate::PartylineError::Duplicate("state".to_owned()))
    }

    /// The attached state service, if any.
    pub fn state(&self) -> Option<&State> {
        self.inner.state.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_printed_safely() {
        assert_eq!(display_value(b"blue"), "blue");
        assert_eq!(display_value(b"a\x1b[2Jb\x07"), "a[2Jb");
        assert_eq!(display_value(&[0xff, 0x00, 0x41]), "hex:ff0041");
    }

    #[test]
    fn node_ids_are_recognised() {
        assert!(is_node_id(&"ab".repeat(32)));
        assert!(!is_node_id("node"));
        assert!(!is_node_id(&"zz".repeat(32)));
    }
}
