//! `/uptime`: an in-process micelio plugin with a message type of its own.
//!
//! `/uptime [seconds]` broadcasts a question (type [`UPTIME_MSG`]) to the
//! whole mesh; the plugin on every node answers with its uptime and the
//! node's version, and the asking node prints the answers in the order
//! they arrived, each with how long it took, until every member it knows
//! alive has answered or `seconds` (default 3, at most 30) have passed.
//! Its exit status is 0 when every alive member answered, 1 otherwise.
//! Nodes without the plugin relay the messages and do not answer.
//!
//! Both the question and the answers are gossip (every node sees every
//! answer), which is fine for an operator's occasional question; answers
//! not addressed to this node are ignored.
//!
//! The plugin is registered by a program that builds a node from the
//! crates: see `src/main.rs` (`micelio-uptime-node`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use micelio_plugins::{BoxFuture, Event, Manifest, Plugin, PluginCall, PluginContext, Reply};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The plugin's message type.
pub const UPTIME_MSG: u32 = 1300;
/// How long `/uptime` waits by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(3);
/// The longest wait `/uptime` accepts.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Questions of this node waiting for answers at once; more are refused.
pub const MAX_ASKING: usize = 16;

/// What travels in an [`UPTIME_MSG`] message (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Wire {
    /// Who is up, and for how long?
    Ask {
        /// The question's id.
        id: String,
    },
    /// One node's answer.
    Answer {
        /// The question's id.
        id: String,
        /// The asking node (hex NodeId).
        to: String,
        /// The answering node's name.
        node: String,
        /// Seconds since its plugin started.
        uptime_secs: u64,
        /// The answering node's version.
        version: String,
    },
}

/// One answer, as the asking node saw it.
#[derive(Debug, Clone)]
struct Answer {
    node: String,
    uptime_secs: u64,
    version: String,
    after: Duration,
}

/// The `/uptime` plugin.
pub struct Uptime {
    inner: Arc<Inner>,
}

struct Inner {
    started: Instant,
    version: String,
    ctx: OnceLock<PluginContext>,
    asking: Mutex<HashMap<String, (Instant, mpsc::Sender<Answer>)>>,
    next: AtomicU64,
}

impl Uptime {
    /// The plugin, reporting `version` for this node.
    pub fn new(version: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                version: version.to_owned(),
                ctx: OnceLock::new(),
                asking: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `1d 02h`, `3h 04m`, `5m 06s`, `7s`.
pub fn human(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h:02}h"),
    }
}

impl Inner {
    fn name(&self) -> String {
        self.ctx
            .get()
            .map(|c| c.node_name().to_owned())
            .unwrap_or_default()
    }

    async fn ask(self: Arc<Self>, call: PluginCall) -> Reply {
        let Some(ctx) = self.ctx.get().cloned() else {
            return Reply::fail("not started");
        };
        let wait = match call.args.trim() {
            "" => DEFAULT_WAIT,
            s => match s.parse::<f64>() {
                Ok(secs) if secs > 0.0 && secs <= MAX_WAIT.as_secs_f64() => {
                    Duration::from_secs_f64(secs)
                }
                _ => return Reply::usage("/uptime [seconds, at most 30]"),
            },
        };
        let id = format!(
            "{}-{}",
            ctx.node_id().short(8),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, mut rx) = mpsc::channel(1024);
        {
            let mut asking = lock(&self.asking);
            if asking.len() >= MAX_ASKING {
                return Reply::fail("too many /uptime questions at once; try again");
            }
            asking.insert(id.clone(), (Instant::now(), tx));
        }
        let alive: usize = ctx
            .members()
            .await
            .map(|m| {
                m.iter()
                    .filter(|m| m.liveness == micelio_state::Liveness::Alive)
                    .count()
            })
            .unwrap_or(1)
            .max(1);
        let mut answers = vec![Answer {
            node: self.name(),
            uptime_secs: self.started.elapsed().as_secs(),
            version: self.version.clone(),
            after: Duration::ZERO,
        }];
        let question = serde_json::to_vec(&Wire::Ask { id: id.clone() }).unwrap_or_default();
        let sent = ctx.broadcast(UPTIME_MSG, question);
        if let Err(e) = sent {
            lock(&self.asking).remove(&id);
            return Reply::fail(format!("cannot ask the mesh: {e}"));
        }
        let deadline = tokio::time::Instant::now() + wait;
        while answers.len() < alive {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(a)) => answers.push(a),
                Ok(None) | Err(_) => break,
            }
        }
        lock(&self.asking).remove(&id);
        let complete = answers.len() >= alive;
        if call.json {
            let list: Vec<_> = answers
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "node": a.node,
                        "uptime_secs": a.uptime_secs,
                        "version": a.version,
                        "after_ms": u64::try_from(a.after.as_millis()).unwrap_or(u64::MAX),
                    })
                })
                .collect();
            let mut r = Reply::json(&serde_json::json!({
                "answers": list,
                "alive": alive,
                "complete": complete,
            }));
            if !complete {
                r.status = micelio_partyline::STATUS_FAILED;
            }
            return r;
        }
        let mut out = String::new();
        for a in &answers {
            out.push_str(&format!(
                "{:<20} up {:<8} {}  ({} ms)\n",
                a.node,
                human(a.uptime_secs),
                a.version,
                a.after.as_millis()
            ));
        }
        out.push_str(&format!(
            "{} of {alive} alive nodes answered within {wait:?}",
            answers.len()
        ));
        if complete {
            Reply::ok(out)
        } else {
            Reply::fail(out)
        }
    }

    fn message(&self, sender: &micelio_identity::NodeId, payload: &[u8]) {
        let Some(ctx) = self.ctx.get() else { return };
        // Anyone can send anything: what does not parse is ignored.
        let Ok(wire) = serde_json::from_slice::<Wire>(payload) else {
            return;
        };
        match wire {
            Wire::Ask { id } => {
                let answer = Wire::Answer {
                    id,
                    to: sender.to_hex(),
                    node: ctx.node_name().to_owned(),
                    uptime_secs: self.started.elapsed().as_secs(),
                    version: self.version.clone(),
                };
                if let Ok(bytes) = serde_json::to_vec(&answer) {
                    let _ = ctx.broadcast(UPTIME_MSG, bytes);
                }
            }
            Wire::Answer {
                id,
                to,
                node,
                uptime_secs,
                version,
            } => {
                if to != ctx.node_id().to_hex() {
                    return;
                }
                let asking = lock(&self.asking);
                if let Some((asked, tx)) = asking.get(&id) {
                    let _ = tx.try_send(Answer {
                        node,
                        uptime_secs,
                        version,
                        after: asked.elapsed(),
                    });
                }
            }
        }
    }
}

impl Plugin for Uptime {
    fn name(&self) -> &str {
        "uptime"
    }

    fn manifest(&self) -> Manifest {
        Manifest::new()
            .command(
                "uptime",
                "/uptime [seconds]",
                "asks every node for its uptime (uptime plugin)",
            )
            .msg_type(UPTIME_MSG)
    }

    fn start(&self, ctx: PluginContext) -> BoxFuture<Result<(), String>> {
        let _ = self.inner.ctx.set(ctx);
        Box::pin(async { Ok(()) })
    }

    fn command(&self, call: PluginCall) -> BoxFuture<Reply> {
        Box::pin(self.inner.clone().ask(call))
    }

    fn event(&self, event: Event) -> BoxFuture<()> {
        if let Event::Message {
            sender, payload, ..
        } = &event
        {
            self.inner.message(sender, payload);
        }
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_like_uptime() {
        assert_eq!(human(7), "7s");
        assert_eq!(human(366), "6m 06s");
        assert_eq!(human(3 * 3600 + 4 * 60), "3h 04m");
        assert_eq!(human(86_400 + 2 * 3600), "1d 02h");
    }

    #[test]
    fn the_wire_form_is_tagged_json() {
        let ask = serde_json::to_string(&Wire::Ask { id: "a-1".into() }).unwrap();
        assert_eq!(ask, r#"{"kind":"ask","id":"a-1"}"#);
        assert!(serde_json::from_slice::<Wire>(b"{\"kind\":\"nope\"}").is_err());
    }
}
