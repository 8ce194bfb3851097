//! One external plugin at run time: its process and pipes, the handshake,
//! the requests both ways, and the supervisor that restarts it.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::protocol::{
    self, FORBIDDEN, INVALID_PARAMS, Id, Incoming, METHOD_NOT_FOUND, NODE_ERROR, Outgoing,
    PROTOCOL_VERSION, THROTTLED,
};
use super::{
    ExternalConfig, MAX_IN_FLIGHT, MAX_LOG_LINE, OUT_QUEUE, REQUEST_BURST, REQUEST_RATE,
    RESTART_MAX, RESTART_MIN, STABLE_AFTER, STOP_WAIT,
};
use crate::manifest::Manifest;
use crate::{
    Applied, BoxFuture, COMMAND_TIMEOUT, Event, Health, Plugin, PluginCall, PluginContext,
    PluginError, ReconcileFuture, Reply,
};

type Outcome = Result<Value, (i64, String)>;
type Pending = Arc<Mutex<HashMap<i64, oneshot::Sender<Outcome>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The pipes of the running process.
#[derive(Clone)]
struct Conn {
    out: mpsc::Sender<String>,
    pending: Pending,
    pid: Option<u32>,
}

#[derive(Debug, Clone)]
struct State {
    label: &'static str,
    error: Option<String>,
    restarts: u32,
}

#[derive(Default)]
struct Counters {
    bad_lines: AtomicU64,
    throttled: AtomicU64,
    out_dropped: AtomicU64,
    bad_logged: AtomicBool,
    drop_logged: AtomicBool,
}

struct Shared {
    name: String,
    ctx: OnceLock<PluginContext>,
    conn: Mutex<Option<Conn>>,
    next_id: AtomicI64,
    state: Mutex<State>,
    counters: Counters,
}

impl Shared {
    fn set_state(&self, label: &'static str, error: Option<String>) {
        let mut s = lock(&self.state);
        s.label = label;
        s.error = error;
    }

    fn conn(&self) -> Option<Conn> {
        lock(&self.conn).clone()
    }

    /// A bad line from the program: counted, the first one logged as a
    /// warning (the rest at debug).
    fn bad_line(&self, why: &str) {
        self.counters.bad_lines.fetch_add(1, Ordering::Relaxed);
        if self.counters.bad_logged.swap(true, Ordering::Relaxed) {
            debug!(plugin = %self.name, "bad line from the plugin skipped: {why}");
        } else {
            warn!(
                plugin = %self.name,
                "bad line from the plugin skipped: {why} (logged once; counted in /plugins)"
            );
        }
    }

    /// Queues `line` for the program; a full queue drops it (counted,
    /// logged once). Whether it was queued.
    fn send(&self, line: String) -> bool {
        let Some(conn) = self.conn() else {
            self.counters.out_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if conn.out.try_send(line).is_ok() {
            return true;
        }
        self.counters.out_dropped.fetch_add(1, Ordering::Relaxed);
        if !self.counters.drop_logged.swap(true, Ordering::Relaxed) {
            warn!(
                plugin = %self.name,
                "plugin is not reading its input: dropping lines for it (logged once; counted in /plugins)"
            );
        }
        false
    }

    /// Sends a request and waits at most `limit` for its answer.
    async fn request(&self, method: &str, params: Value, limit: Duration) -> Outcome {
        let Some(conn) = self.conn() else {
            let label = lock(&self.state).label;
            return Err((NODE_ERROR, format!("plugin {} is {label}", self.name)));
        };
        request_on(&conn, &self.next_id, method, params, limit).await
    }
}

/// Removes a pending request when its caller stops waiting.
struct PendingGuard {
    pending: Pending,
    id: i64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        lock(&self.pending).remove(&self.id);
    }
}

async fn request_on(
    conn: &Conn,
    next_id: &AtomicI64,
    method: &str,
    params: Value,
    limit: Duration,
) -> Outcome {
    let id = next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    lock(&conn.pending).insert(id, tx);
    let _guard = PendingGuard {
        pending: conn.pending.clone(),
        id,
    };
    if conn
        .out
        .try_send(Outgoing::request(id, method, params))
        .is_err()
    {
        return Err((NODE_ERROR, "the plugin is not reading its input".into()));
    }
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Err((NODE_ERROR, "the plugin exited before answering".into())),
        Err(_) => Err((NODE_ERROR, format!("no answer within {limit:?}"))),
    }
}

/// An external plugin (see [the module](super)).
pub struct ExternalPlugin {
    manifest: Manifest,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ExternalPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalPlugin")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl Drop for ExternalPlugin {
    /// A plugin dropped without `stop` (a node whose start failed half
    /// way) still stops its program: asked, then killed.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What the program is told of its node.
#[derive(Debug, Clone)]
struct NodeIdent {
    id: String,
    name: String,
}

impl ExternalPlugin {
    /// Starts `config`'s program on the node `node_id` (hex) named
    /// `node_name` and runs the handshake; the plugin is then supervised
    /// until [`Plugin::stop`].
    ///
    /// # Errors
    /// [`PluginError::Manifest`] naming the plugin: the program cannot be
    /// started, does not complete the handshake within
    /// [`ExternalConfig::init_timeout`],
    /// speaks another protocol version, or declares claims that are not
    /// valid or not allowed.
    pub async fn launch(
        config: ExternalConfig,
        node_id: &str,
        node_name: &str,
    ) -> Result<Arc<Self>, PluginError> {
        let name = config.name.clone();
        let fail = |why: String| PluginError::Manifest {
            plugin: name.clone(),
            why,
        };
        crate::manifest::check_name(&config.name).map_err(&fail)?;
        let node = NodeIdent {
            id: node_id.to_owned(),
            name: node_name.to_owned(),
        };
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            ctx: OnceLock::new(),
            conn: Mutex::new(None),
            next_id: AtomicI64::new(1),
            state: Mutex::new(State {
                label: "starting",
                error: None,
                restarts: 0,
            }),
            counters: Counters::default(),
        });
        let (child, conn) = spawn(&config, &node, &shared).map_err(&fail)?;
        let manifest = match handshake(&conn, &shared, &node, config.init_timeout).await {
            Ok(m) => m,
            Err(why) => {
                kill(child).await;
                return Err(fail(why));
            }
        };
        if let Err(e) = manifest.check(&config.name) {
            kill(child).await;
            return Err(e);
        }
        if let Some(extra) = config.allow.excess(&manifest) {
            kill(child).await;
            return Err(fail(format!(
                "claims what its allow list does not allow: {extra}"
            )));
        }
        *lock(&shared.conn) = Some(conn);
        info!(plugin = %config.name, pid = child.id().unwrap_or_default(), "external plugin started");
        let cancel = CancellationToken::new();
        let supervisor = tokio::spawn(supervise(
            config,
            node,
            shared.clone(),
            manifest.clone(),
            child,
            cancel.clone(),
        ));
        Ok(Arc::new(Self {
            manifest,
            shared,
            cancel,
            supervisor: Mutex::new(Some(supervisor)),
        }))
    }
}

/// Starts the program with its pipes and their tasks.
fn spawn(
    config: &ExternalConfig,
    node: &NodeIdent,
    shared: &Arc<Shared>,
) -> Result<(Child, Conn), String> {
    let mut cmd = Command::new(&config.command);
    cmd.args(&config.args)
        .envs(&config.env)
        .env("MICELIO_PLUGIN_NAME", &config.name)
        .env("MICELIO_NODE_ID", &node.id)
        .env("MICELIO_NODE_NAME", &node.name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = &config.cwd {
        cmd.current_dir(dir);
    }
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", config.command.display()))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("the program's pipes are missing".into());
    };
    let (out, out_rx) = mpsc::channel(OUT_QUEUE);
    let conn = Conn {
        out,
        pending: Arc::default(),
        pid: child.id(),
    };
    tokio::spawn(write_lines(stdin, out_rx));
    tokio::spawn(read_lines(stdout, shared.clone(), conn.clone()));
    tokio::spawn(log_stderr(stderr, shared.name.clone()));
    Ok((child, conn))
}

async fn write_lines(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::Receiver<String>) {
    while let Some(mut line) = rx.recv().await {
        line.push('\n');
        if stdin.write_all(line.as_bytes()).await.is_err() {
            break;
        }
    }
    // Dropping stdin closes the program's input.
}

async fn log_stderr(stderr: tokio::process::ChildStderr, name: String) {
    let mut lines = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        match read_capped(&mut lines, &mut buf, MAX_LOG_LINE).await {
            Ok(Line::Eof) | Err(_) => break,
            Ok(Line::Full | Line::TooLong(_)) => {
                let text = String::from_utf8_lossy(&buf);
                info!(plugin = %name, "{}", text.trim_end());
            }
        }
    }
}

/// What [`read_capped`] read.
enum Line {
    /// A whole line (in the buffer, without the newline).
    Full,
    /// A line over the cap: its first `cap` bytes are in the buffer; it
    /// was this long.
    TooLong(usize),
    /// The end of the stream.
    Eof,
}

/// Reads one line into `buf` (cleared first), keeping at most `cap` bytes
/// of it; the rest of a longer line is read and thrown away.
async fn read_capped<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut total = 0usize;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if total == 0 {
                Line::Eof
            } else if total > cap {
                Line::TooLong(total)
            } else {
                Line::Full
            });
        }
        let (part, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&part[..part.len().min(room)]);
        total += part.len();
        let used = done.unwrap_or(part.len());
        r.consume(used);
        if done.is_some() {
            return Ok(if total > cap {
                Line::TooLong(total)
            } else {
                Line::Full
            });
        }
    }
}

/// Reads the program's lines until its output ends: answers, requests
/// (rate-limited, handled by tasks of their own) and notifications.
async fn read_lines(stdout: tokio::process::ChildStdout, shared: Arc<Shared>, conn: Conn) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut bucket = Bucket::new(REQUEST_RATE, REQUEST_BURST);
    loop {
        let line = match read_capped(&mut reader, &mut buf, protocol::MAX_LINE).await {
            Ok(Line::Eof) | Err(_) => break,
            Ok(Line::TooLong(n)) => {
                shared.bad_line(&format!(
                    "a line of {n} bytes, over the {}-byte limit",
                    protocol::MAX_LINE
                ));
                let _ = conn.out.try_send(Outgoing::error(
                    None,
                    protocol::INVALID_REQUEST,
                    "line too long",
                ));
                continue;
            }
            Ok(Line::Full) => match std::str::from_utf8(&buf) {
                Ok(s) => s.trim_end_matches('\r').to_owned(),
                Err(_) => {
                    shared.bad_line("a line that is not UTF-8");
                    let _ = conn.out.try_send(Outgoing::error(
                        None,
                        protocol::PARSE_ERROR,
                        "not UTF-8",
                    ));
                    continue;
                }
            },
        };
        if line.trim().is_empty() {
            continue;
        }
        match protocol::parse_line(&line) {
            Err((e, id)) => {
                shared.bad_line(&e.to_string());
                let _ = conn
                    .out
                    .try_send(Outgoing::error(id.as_ref(), e.code(), &e.to_string()));
            }
            Ok(Incoming::Response { id, outcome }) => {
                let waiter = match id {
                    Id::Num(n) => lock(&conn.pending).remove(&n),
                    Id::Str(_) => None,
                };
                match waiter {
                    Some(w) => {
                        let _ = w.send(outcome);
                    }
                    None => shared.bad_line("an answer to no request of the node"),
                }
            }
            Ok(Incoming::Notification { method, params }) => {
                notification(&shared, &method, &params)
            }
            Ok(Incoming::Request { id, method, params }) => {
                let permit = if bucket.take(Instant::now()) {
                    in_flight.clone().try_acquire_owned().ok()
                } else {
                    None
                };
                let Some(permit) = permit else {
                    shared.counters.throttled.fetch_add(1, Ordering::Relaxed);
                    let _ = conn.out.try_send(Outgoing::error(
                        Some(&id),
                        THROTTLED,
                        "too many requests; slow down and retry",
                    ));
                    continue;
                };
                let (shared, out) = (shared.clone(), conn.out.clone());
                tokio::spawn(async move {
                    let answer = match handle(&shared, &method, &params).await {
                        Ok(result) => Outgoing::result(&id, result),
                        Err((code, message)) => Outgoing::error(Some(&id), code, &message),
                    };
                    if out.try_send(answer).is_err() {
                        shared.counters.out_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                });
            }
        }
    }
}

fn notification(shared: &Shared, method: &str, params: &Map<String, Value>) {
    match method {
        "log" => {
            let message = params
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let message: String = message.chars().take(MAX_LOG_LINE).collect();
            let name = &shared.name;
            match params.get("level").and_then(Value::as_str) {
                Some("error") => error!(plugin = %name, "{message}"),
                Some("warn") => warn!(plugin = %name, "{message}"),
                Some("debug") => debug!(plugin = %name, "{message}"),
                _ => info!(plugin = %name, "{message}"),
            }
        }
        other => shared.bad_line(&format!("unknown notification {other:?}")),
    }
}

/// A token bucket: `rate` a second, `burst` at once.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn str_param<'a>(params: &'a Map<String, Value>, name: &str) -> Result<&'a str, (i64, String)> {
    params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| (INVALID_PARAMS, format!("\"{name}\" (a string) is missing")))
}

fn node_error(e: PluginError) -> (i64, String) {
    match e {
        PluginError::NotOwned { .. } | PluginError::BadKey(_) => (FORBIDDEN, e.to_string()),
        other => (NODE_ERROR, other.to_string()),
    }
}

fn entry_json(e: &micelio_state::Entry) -> Value {
    let mut m = protocol::bytes_fields("value", &e.value);
    m.insert("key".into(), json!(e.key));
    m.insert("author".into(), json!(e.author.to_hex()));
    m.insert("ts".into(), json!(e.ts));
    m.insert("deleted".into(), json!(e.deleted));
    Value::Object(m)
}

/// The wait of an apply or remove here: the desired-state task drops it
/// at the reconciler's own time limit.
const NO_LIMIT: Duration = Duration::from_secs(86_400);

/// Most entries one `state.scan` returns.
const MAX_SCAN: u64 = 1000;

/// Answers one request of the program.
async fn handle(shared: &Shared, method: &str, params: &Map<String, Value>) -> Outcome {
    let Some(ctx) = shared.ctx.get() else {
        return Err((
            FORBIDDEN,
            "the node has not sent \"initialized\" yet".to_owned(),
        ));
    };
    match method {
        "broadcast" => {
            let msg_type = params
                .get("msg_type")
                .and_then(Value::as_u64)
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| (INVALID_PARAMS, "\"msg_type\" (a number) is missing".into()))?;
            let payload =
                protocol::take_bytes(params, "payload").map_err(|e| (INVALID_PARAMS, e))?;
            ctx.broadcast(msg_type, payload).map_err(node_error)?;
            Ok(json!({}))
        }
        "state.get" => {
            let key = str_param(params, "key")?;
            let e = ctx.get(key).await.map_err(node_error)?;
            Ok(json!({"entry": e.as_ref().map(entry_json)}))
        }
        "state.scan" => {
            let prefix = str_param(params, "prefix")?;
            let limit = params
                .get("limit")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .min(MAX_SCAN);
            let entries = ctx
                .scan(prefix, usize::try_from(limit).unwrap_or(100))
                .await
                .map_err(node_error)?;
            Ok(json!({"entries": entries.iter().map(entry_json).collect::<Vec<_>>()}))
        }
        "state.set" => {
            let key = str_param(params, "key")?;
            let value = protocol::take_bytes(params, "value").map_err(|e| (INVALID_PARAMS, e))?;
            let e = ctx.set(key, value).await.map_err(node_error)?;
            Ok(json!({"key": e.key, "ts": e.ts}))
        }
        "state.delete" => {
            let key = str_param(params, "key")?;
            let e = ctx.delete(key).await.map_err(node_error)?;
            Ok(json!({"key": e.key, "ts": e.ts}))
        }
        "members" => {
            let members = ctx.members().await.map_err(node_error)?;
            let list: Vec<Value> = members
                .iter()
                .map(|m| {
                    json!({
                        "node_id": m.node_id.to_hex(),
                        "name": m.name,
                        "tags": m.tags,
                        "addr": m.addr,
                        "version": m.version,
                        "liveness": m.liveness.label(),
                        "is_self": m.is_self,
                    })
                })
                .collect();
            Ok(json!({"members": list}))
        }
        other => Err((METHOD_NOT_FOUND, format!("no method {other:?}"))),
    }
}

/// `initialize`: the manifest the program declares.
async fn handshake(
    conn: &Conn,
    shared: &Shared,
    node: &NodeIdent,
    limit: Duration,
) -> Result<Manifest, String> {
    let params = json!({
        "protocol_version": PROTOCOL_VERSION,
        "plugin": shared.name,
        "node": {"id": node.id, "name": node.name},
    });
    let result = request_on(conn, &shared.next_id, "initialize", params, limit)
        .await
        .map_err(|(code, m)| format!("initialize failed ({code}): {m}"))?;
    let version = result.get("protocol_version").and_then(Value::as_u64);
    if version != Some(PROTOCOL_VERSION) {
        return Err(format!(
            "it speaks protocol version {version:?}; this node speaks {PROTOCOL_VERSION}"
        ));
    }
    let manifest = result.get("manifest").cloned().unwrap_or(json!({}));
    serde_json::from_value(manifest).map_err(|e| format!("its manifest is not valid: {e}"))
}

async fn kill(mut child: Child) {
    micelio_state::desired::kill_group(child.id());
    let _ = child.kill().await;
}

/// Fails every request waiting on `conn`.
fn fail_pending(conn: &Conn) {
    for (_, w) in lock(&conn.pending).drain() {
        let _ = w.send(Err((NODE_ERROR, "the plugin exited".into())));
    }
}

/// Watches the program; restarts it when it exits; stops it on `cancel`.
async fn supervise(
    config: ExternalConfig,
    node: NodeIdent,
    shared: Arc<Shared>,
    manifest: Manifest,
    child: Child,
    cancel: CancellationToken,
) {
    let mut child = Some(child);
    let mut started = Instant::now();
    let mut in_a_row: u32 = 0;
    loop {
        let status = match child.as_mut() {
            Some(c) => tokio::select! {
                () = cancel.cancelled() => break,
                s = c.wait() => s.map_or_else(|e| e.to_string(), |s| s.to_string()),
            },
            None => "it did not start".to_owned(),
        };
        child = None;
        if let Some(conn) = lock(&shared.conn).take() {
            fail_pending(&conn);
        }
        if started.elapsed() >= STABLE_AFTER {
            in_a_row = 0;
        }
        in_a_row += 1;
        if in_a_row > config.max_restarts {
            let why = format!("exited {in_a_row} times in a row; last: {status}");
            error!(plugin = %shared.name, "external plugin {why}; giving up");
            shared.set_state("failed", Some(why));
            cancel.cancelled().await;
            return;
        }
        lock(&shared.state).restarts += 1;
        let delay = RESTART_MIN
            .saturating_mul(1 << (in_a_row - 1).min(16))
            .min(RESTART_MAX);
        warn!(plugin = %shared.name, %status, ?delay, "external plugin exited; restarting");
        shared.set_state("restarting", Some(status));
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
        started = Instant::now();
        let (c, conn) = match spawn(&config, &node, &shared) {
            Ok(x) => x,
            Err(why) => {
                warn!(plugin = %shared.name, "{why}");
                continue;
            }
        };
        match handshake(&conn, &shared, &node, config.init_timeout).await {
            Ok(m) if m == manifest => {}
            Ok(_) => {
                let why = "it declared other claims after a restart; restart the node to take them";
                error!(plugin = %shared.name, "{why}");
                kill(c).await;
                shared.set_state("failed", Some(why.to_owned()));
                cancel.cancelled().await;
                return;
            }
            Err(why) => {
                warn!(plugin = %shared.name, "{why}");
                kill(c).await;
                continue;
            }
        }
        if shared.ctx.get().is_some() {
            let _ = conn
                .out
                .try_send(Outgoing::notification("initialized", json!({})));
        }
        *lock(&shared.conn) = Some(conn);
        shared.set_state("running", None);
        info!(plugin = %shared.name, pid = c.id().unwrap_or_default(), "external plugin restarted");
        child = Some(c);
    }
    // Stopping: ask, close its input, wait, kill.
    if let Some(conn) = lock(&shared.conn).take() {
        let grace = u64::try_from(STOP_WAIT.as_millis()).unwrap_or(u64::MAX);
        let _ = conn.out.try_send(Outgoing::notification(
            "shutdown",
            json!({"grace_ms": grace}),
        ));
        fail_pending(&conn);
    }
    if let Some(mut c) = child {
        if tokio::time::timeout(STOP_WAIT, c.wait()).await.is_err() {
            warn!(plugin = %shared.name, "external plugin ignored shutdown; killed");
        }
        kill(c).await;
    }
    shared.set_state("stopped", None);
}

impl Plugin for ExternalPlugin {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn manifest(&self) -> Manifest {
        self.manifest.clone()
    }

    fn start(&self, ctx: PluginContext) -> BoxFuture<Result<(), String>> {
        let _ = self.shared.ctx.set(ctx);
        let shared = self.shared.clone();
        Box::pin(async move {
            shared.send(Outgoing::notification("initialized", json!({})));
            let label = lock(&shared.state).label;
            if label == "starting" {
                shared.set_state("running", None);
            }
            Ok(())
        })
    }

    fn command(&self, call: PluginCall) -> BoxFuture<Reply> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let params = json!({
                "command": call.command,
                "args": call.args,
                "json": call.json,
                "nick": call.nick,
                "user": call.login.user,
                "key_fingerprint": call.login.key_fingerprint,
            });
            match shared.request("command", params, COMMAND_TIMEOUT).await {
                Ok(r) => Reply {
                    text: r
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    status: r
                        .get("status")
                        .and_then(Value::as_i64)
                        .and_then(|s| i32::try_from(s).ok())
                        .unwrap_or(0),
                    ..Reply::default()
                },
                Err((_, message)) => Reply::fail(message),
            }
        })
    }

    fn event(&self, event: Event) -> BoxFuture<()> {
        self.shared.send(Outgoing::notification(
            "event",
            protocol::event_params(&event),
        ));
        Box::pin(async {})
    }

    fn apply(&self, key: &str, value: &str) -> ReconcileFuture {
        let shared = self.shared.clone();
        let params = json!({"key": key, "value": value});
        Box::pin(async move { applied(shared.request("apply", params, NO_LIMIT).await) })
    }

    fn remove(&self, key: &str) -> ReconcileFuture {
        let shared = self.shared.clone();
        let params = json!({"key": key});
        Box::pin(async move { applied(shared.request("remove", params, NO_LIMIT).await) })
    }

    fn stop(&self) -> BoxFuture<()> {
        self.cancel.cancel();
        let handle = lock(&self.supervisor).take();
        Box::pin(async move {
            if let Some(h) = handle {
                let _ = h.await;
            }
        })
    }

    fn health(&self) -> Option<Health> {
        let s = lock(&self.shared.state).clone();
        let c = &self.shared.counters;
        Some(Health {
            state: s.label,
            error: s.error,
            pid: self.shared.conn().and_then(|c| c.pid),
            restarts: s.restarts,
            bad_lines: c.bad_lines.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            out_dropped: c.out_dropped.load(Ordering::Relaxed),
        })
    }
}

/// An `apply`/`remove` answer as an [`Applied`].
fn applied(outcome: Outcome) -> Applied {
    match outcome {
        Ok(r) => {
            let message = r
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let actual = r.get("actual").and_then(Value::as_str).map(str::to_owned);
            if r.get("ok").and_then(Value::as_bool).unwrap_or(false) {
                Applied {
                    outcome: crate::Outcome::Ok,
                    actual,
                    message,
                }
            } else {
                Applied {
                    outcome: crate::Outcome::Error,
                    actual,
                    message: if message.is_empty() {
                        "the plugin reported a failure".to_owned()
                    } else {
                        message
                    },
                }
            }
        }
        Err((_, message)) => Applied::error(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut_and_reported_with_their_length() {
        let data: &[u8] = b"short\nabcdefghij\n\nlast";
        let mut r = BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        assert!(matches!(
            read_capped(&mut r, &mut buf, 5).await.unwrap(),
            Line::Full
        ));
        assert_eq!(buf, b"short");
        assert!(matches!(
            read_capped(&mut r, &mut buf, 5).await.unwrap(),
            Line::TooLong(10)
        ));
        assert_eq!(buf, b"abcde");
        assert!(matches!(
            read_capped(&mut r, &mut buf, 5).await.unwrap(),
            Line::Full
        ));
        assert!(buf.is_empty());
        assert!(matches!(
            read_capped(&mut r, &mut buf, 5).await.unwrap(),
            Line::Full
        ));
        assert_eq!(buf, b"last");
        assert!(matches!(
            read_capped(&mut r, &mut buf, 5).await.unwrap(),
            Line::Eof
        ));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 3);
        b.at = t0;
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn answers_become_applied() {
        let ok = applied(Ok(json!({"ok": true, "actual": "v"})));
        assert_eq!(ok, Applied::ok("v"));
        let bad = applied(Ok(json!({"ok": false, "message": "disk full"})));
        assert_eq!(bad.outcome, crate::Outcome::Error);
        assert_eq!(bad.message, "disk full");
        assert_eq!(
            applied(Ok(json!({}))).message,
            "the plugin reported a failure"
        );
        assert_eq!(applied(Err((1, "gone".into()))), Applied::error("gone"));
    }
}
