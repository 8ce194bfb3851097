//! The desired-state commands (`/desire`, `/undesire`, `/desired`,
//! `/drift`), registered by [`Partyline::attach_desired`].
//!
//! `/desire <selector> <key> <value>`: the value is everything after the
//! key, as typed (no quote processing; leading and trailing blanks are
//! dropped). Everything from the mesh is printed with its control
//! characters stripped.

use micelio_state::desired::{Author, Desired, DesiredError, DesiredStats, NodeDrift};
use micelio_state::selector::Selector;
use serde_json::json;

use crate::Partyline;
use crate::commands::{CommandCall, CommandSpec, Reply, STATUS_USAGE};
use crate::text::sanitize;

/// A selector argument, or the reply that says what is wrong with it.
pub(crate) fn selector_arg(text: &str) -> Result<Selector, Reply> {
    Selector::parse(text).map_err(|e| Reply {
        text: e.to_string(),
        status: STATUS_USAGE,
        ..Reply::default()
    })
}

fn failed(e: &DesiredError) -> Reply {
    Reply::fail(e.to_string())
}

fn author(c: &CommandCall) -> Author {
    Author {
        node_name: String::new(),
        user: c.login.user.clone(),
        key: c.login.key_fingerprint.clone(),
        at: 0,
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub(crate) fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The commands, bound to `desired`.
pub(crate) fn commands(desired: &Desired) -> Vec<CommandSpec> {
    let d = desired.clone();
    let desire = CommandSpec::new(
        "desire",
        "/desire <selector> <key> <value>",
        "desire a value for a key on the nodes a selector matches (*, tag, tag1+tag2, prod+!canary, node:<name or id>)",
        move |c| {
            let d = d.clone();
            async move { desire(&d, &c).await }
        },
    );
    let d = desired.clone();
    let undesire = CommandSpec::new(
        "undesire",
        "/undesire <selector> <key>",
        "withdraw what is desired for a selector and key (whoever desired it)",
        move |c| {
            let d = d.clone();
            async move { undesire(&d, &c).await }
        },
    );
    let d = desired.clone();
    let list = CommandSpec::new(
        "desired",
        "/desired [--json]",
        "every desired entry with who set it and when (removals and ignored ones too)",
        move |c| {
            let d = d.clone();
            async move { list(&d, &c).await }
        },
    );
    let d = desired.clone();
    let drift = CommandSpec::new(
        "drift",
        "/drift [selector] [--json]",
        "nodes whose actual state differs from the desired one (empty when converged)",
        move |c| {
            let d = d.clone();
            async move { drift(&d, &c).await }
        },
    );
    vec![desire, undesire, list, drift]
}

async fn desire(d: &Desired, c: &CommandCall) -> Reply {
    const USAGE: &str = "/desire <selector> <key> <value>";
    let mut parts = c.args.splitn(3, char::is_whitespace);
    let (Some(sel), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
        return Reply::usage(USAGE);
    };
    let value = value.trim();
    if sel.is_empty() || key.is_empty() {
        return Reply::usage(USAGE);
    }
    let selector = match selector_arg(sel) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match d.desire(&selector, key, value, author(c)).await {
        Ok(e) => Reply::ok(format!(
            "desired {} = {} on {selector} (ts {})",
            sanitize(key),
            sanitize(value),
            e.ts
        )),
        Err(e) => failed(&e),
    }
}

async fn undesire(d: &Desired, c: &CommandCall) -> Reply {
    const USAGE: &str = "/undesire <selector> <key>";
    let parts: Vec<&str> = c.args.split_whitespace().collect();
    let [sel, key] = parts.as_slice() else {
        return Reply::usage(USAGE);
    };
    let selector = match selector_arg(sel) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match d.undesire(&selector, key, author(c)).await {
        Ok(e) => Reply::ok(format!(
            "no longer desired: {} on {selector} (ts {})",
            sanitize(key),
            e.ts
        )),
        Err(e) => failed(&e),
    }
}

async fn list(d: &Desired, c: &CommandCall) -> Reply {
    let rules = match d.rules().await {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    if c.json {
        let list: Vec<_> = rules
            .iter()
            .map(|listed| {
                let r = &listed.rule;
                json!({
                    "selector": r.selector.to_string(),
                    "key": r.key,
                    "value": r.record.value,
                    "removed": r.record.removed,
                    "author": r.author.to_hex(),
                    "node_name": r.record.by.node_name,
                    "user": r.record.by.user,
                    "key_fingerprint": r.record.by.key,
                    "at": r.record.by.at,
                    "ts": r.ts,
                    "trusted": r.trusted,
                    "in_force": listed.in_force,
                })
            })
            .collect();
        return Reply::json(&json!(list));
    }
    if rules.is_empty() {
        return Reply::ok("nothing is desired");
    }
    let mut out = format!(
        "{} desired entr{}:",
        rules.len(),
        if rules.len() == 1 { "y" } else { "ies" }
    );
    for listed in &rules {
        let (r, f) = (&listed.rule, listed.in_force);
        let what = match &r.record.value {
            Some(v) if !r.record.removed => format!("= {}", sanitize(v)),
            _ => "removed".to_owned(),
        };
        let by = &r.record.by;
        let who = if by.user.is_empty() {
            sanitize(&by.node_name)
        } else {
            format!("{}@{}", sanitize(&by.user), sanitize(&by.node_name))
        };
        let key = if by.key.is_empty() {
            String::new()
        } else {
            format!(" key {}", sanitize(&by.key))
        };
        let note = if !r.trusted {
            " [ignored: author is not an admin]"
        } else if !f {
            " [superseded]"
        } else {
            ""
        };
        out.push_str(&format!(
            "\n  {} {} {what}  by {who} [{}]{key} at {} (ts {}){note}",
            r.selector,
            sanitize(&r.key),
            r.author.short(12),
            utc(by.at),
            r.ts
        ));
    }
    Reply::ok(out)
}

fn drift_json(d: &[NodeDrift]) -> serde_json::Value {
    json!({ "converged": d.is_empty(), "nodes": d })
}

async fn drift(d: &Desired, c: &CommandCall) -> Reply {
    let filter = if c.args.is_empty() {
        None
    } else {
        match selector_arg(&c.args) {
            Ok(s) => Some(s),
            Err(r) => return r,
        }
    };
    let nodes = match d.drift(filter.as_ref()).await {
        Ok(n) => n,
        Err(e) => return failed(&e),
    };
    if c.json {
        return Reply::json(&drift_json(&nodes));
    }
    if nodes.is_empty() {
        return Reply::ok("no drift: every matching node reports what is desired");
    }
    let mut out = format!("{} node(s) drift:", nodes.len());
    for n in &nodes {
        let name = if n.name.is_empty() {
            "?".to_owned()
        } else {
            sanitize(&n.name)
        };
        out.push_str(&format!(
            "\n  {name} [{}] {}",
            n.node_id.short(12),
            n.liveness
        ));
        if n.items.is_empty() {
            out.push_str(": not reporting");
        }
        for i in &n.items {
            let mut line = format!("\n    {} {}", sanitize(&i.key), i.kind.as_str());
            if let Some(v) = &i.desired {
                line.push_str(&format!(" desired={}", sanitize(v)));
            }
            if let Some(v) = &i.actual {
                line.push_str(&format!(" actual={}", sanitize(v)));
            }
            if !i.message.is_empty() {
                line.push_str(&format!(": {}", sanitize(&i.message)));
            }
            out.push_str(&line);
        }
    }
    Reply::ok(out)
}

/// The desired-state section of `/stats`, as JSON.
pub(crate) fn stats_json(s: &DesiredStats) -> serde_json::Value {
    json!({
        "rules": s.rules,
        "untrusted": s.untrusted,
        "malformed": s.malformed,
        "overflow": s.overflow,
        "desired_here": s.desired,
        "ok": s.ok,
        "failing": s.failing,
        "unclaimed": s.unclaimed,
        "running": s.running,
        "applies": s.applies,
        "errors": s.errors,
        "timeouts": s.timeouts,
        "removes": s.removes,
    })
}

/// The desired-state section of `/stats`, as text.
pub(crate) fn stats_text(s: &DesiredStats) -> String {
    format!(
        "\ndesired: {} entries ({} ignored, not from an admin; {} malformed), here {} keys: {} ok, {} failing, {} unclaimed, {} running; {} applies, {} removes, {} errors ({} timeouts)",
        s.rules,
        s.untrusted,
        s.malformed,
        s.desired,
        s.ok,
        s.failing,
        s.unclaimed,
        s.running,
        s.applies,
        s.removes,
        s.errors,
        s.timeouts
    )
}

impl Partyline {
    /// Registers the desired-state commands over `desired` and adds its
    /// section to `/stats`.
    ///
    /// # Errors
    /// [`crate::PartylineError::Duplicate`] if attached twice.
    pub fn attach_desired(&self, desired: Desired) -> Result<(), crate::PartylineError> {
        for spec in commands(&desired) {
            self.register(spec)?;
        }
        self.inner
            .desired
            .set(desired)
            .map_err(|_| crate::PartylineError::Duplicate("desired".to_owned()))
    }

    /// The attached desired-state task, if any.
    pub fn desired(&self) -> Option<&Desired> {
        self.inner.desired.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_342_400 + 3661), "2026-12-04T01:01:01Z");
    }
}
