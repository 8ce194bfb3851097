//! The plugin host: the plugins of one node, their claims, their event
//! queues and `/plugins`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use micelio_identity::NodeId;
use micelio_partyline::{CommandCall, CommandSpec, Partyline, Reply};
use micelio_state::desired::{ReconcileFuture, Reconciler};
use micelio_state::{Liveness, State};
use micelio_transport::{PeerEvent, TaskExit, TaskGroup};
use micelio_wire::MsgType;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use crate::manifest::{Claims, EventKind, Manifest};
use crate::{Event, Plugin, PluginCall, PluginContext, PluginError};

/// Events waiting for one plugin; those that do not fit are dropped
/// (counted, logged once per plugin).
pub const EVENT_QUEUE: usize = 1024;
/// How long the node waits for a plugin's command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node waits for a plugin's [`Plugin::stop`] at shutdown.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the members' liveness is compared for member events.
pub const MEMBER_POLL: Duration = Duration::from_secs(1);

/// A plugin's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    events: AtomicU64,
    dropped: AtomicU64,
    commands: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    drop_logged: AtomicBool,
}

impl Counters {
    pub(crate) fn add_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where a plugin is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginStatus {
    /// Its claims are in place and its `start` is running.
    Starting,
    /// Started; it gets events and commands.
    Running,
    /// An external plugin's program exited and is being restarted.
    Restarting,
    /// Its `start` failed (the reason); its commands answer an error.
    Failed(String),
    /// The node stopped it.
    Stopped,
}

impl PluginStatus {
    /// A lowercase label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Failed(_) => "failed",
            Self::Stopped => "stopped",
        }
    }
}

/// What `/plugins` shows of one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// `"in-process"` or `"external"`.
    pub kind: &'static str,
    /// Where it is in its life.
    pub status: PluginStatus,
    /// What it claims.
    pub manifest: Manifest,
    /// Events (and owned messages) queued for it.
    pub events: u64,
    /// Events dropped because its queue was full.
    pub dropped: u64,
    /// Commands it was called for.
    pub commands: u64,
    /// Messages it broadcast.
    pub sent: u64,
    /// Messages of its types it received.
    pub received: u64,
    /// An external plugin's process health.
    pub health: Option<crate::Health>,
}

/// One plugin on the node.
struct Slot {
    plugin: Arc<dyn Plugin>,
    name: String,
    manifest: Manifest,
    wants: BTreeSet<EventKind>,
    status: Mutex<PluginStatus>,
    counters: Arc<Counters>,
    queue: mpsc::Sender<Event>,
}

impl Slot {
    fn status(&self) -> PluginStatus {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_status(&self, status: PluginStatus) {
        *self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }

    /// Queues `event`; a full queue drops it (counted, logged once).
    fn offer(&self, event: Event) {
        match self.queue.try_send(event) {
            Ok(()) => {
                self.counters.events.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(e)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.counters.drop_logged.swap(true, Ordering::Relaxed) {
                    warn!(
                        plugin = %self.name,
                        event = e.name(),
                        "plugin is not keeping up with its events: dropping them \
                         (logged once; counted in /plugins)"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn info(&self) -> PluginInfo {
        let c = &self.counters;
        let health = self.plugin.health();
        let mut status = self.status();
        if let (PluginStatus::Running, Some(h)) = (&status, &health) {
            match h.state {
                "failed" => {
                    status = PluginStatus::Failed(h.error.clone().unwrap_or_default());
                }
                "stopped" => status = PluginStatus::Stopped,
                "restarting" => status = PluginStatus::Restarting,
                _ => {}
            }
        }
        PluginInfo {
            name: self.name.clone(),
            kind: if health.is_some() {
                "external"
            } else {
                "in-process"
            },
            status,
            manifest: self.manifest.clone(),
            events: c.events.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            commands: c.commands.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            health,
        }
    }
}

/// The plugins of one node before they start: collects them, checks their
/// claims, and hands their desired-state reconcilers to the node.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use micelio_plugins::{Manifest, Plugin, PluginHost};
///
/// struct Quiet;
/// impl Plugin for Quiet {
///     fn name(&self) -> &str { "quiet" }
///     fn manifest(&self) -> Manifest { Manifest::new().msg_type(1000) }
/// }
/// struct Loud;
/// impl Plugin for Loud {
///     fn name(&self) -> &str { "loud" }
///     fn manifest(&self) -> Manifest { Manifest::new().msg_type(1000) }
/// }
///
/// let mut host = PluginHost::new();
/// host.add(Arc::new(Quiet))?;
/// // Both claim type 1000: refused before anything starts.
/// let err = host.add(Arc::new(Loud)).unwrap_err();
/// assert!(err.to_string().contains("msg_type 1000"));
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct PluginHost {
    plugins: Vec<(Arc<dyn Plugin>, Manifest)>,
    claims: Claims,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.plugins.iter().map(|(p, _)| p.name()).collect();
        f.debug_struct("PluginHost")
            .field("plugins", &names)
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// No plugins yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `plugin`, reading its manifest.
    ///
    /// # Errors
    /// A bad name or manifest, or a claim another plugin holds (nothing of
    /// the refused plugin is kept).
    pub fn add(&mut self, plugin: Arc<dyn Plugin>) -> Result<(), PluginError> {
        let manifest = plugin.manifest();
        self.claims.add(plugin.name(), &manifest)?;
        self.plugins.push((plugin, manifest));
        Ok(())
    }

    /// Records an external plugin that could not be launched, so that
    /// `/plugins` shows it failed with `why` (it claims nothing).
    ///
    /// # Errors
    /// A bad or taken name.
    pub fn add_failed(&mut self, name: &str, why: &str) -> Result<(), PluginError> {
        self.add(Arc::new(NotLaunched {
            name: name.to_owned(),
            why: why.to_owned(),
        }))
    }

    /// How many plugins were added.
    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// A desired-state reconciler for every prefix a plugin claims, to
    /// pass to [`micelio_state::desired::Desired::spawn`] with the node's
    /// others (which refuses a prefix claimed twice).
    pub fn reconcilers(&self) -> Vec<Arc<dyn Reconciler>> {
        let mut out: Vec<Arc<dyn Reconciler>> = Vec::new();
        for (plugin, manifest) in &self.plugins {
            for prefix in &manifest.desired_prefixes {
                out.push(Arc::new(PluginReconciler {
                    plugin: plugin.clone(),
                    name: format!("plugin:{}", plugin.name()),
                    prefix: prefix.clone(),
                }));
            }
        }
        out
    }

    /// Starts the plugins on `partyline`'s node over `state`: registers
    /// their commands and `/plugins`, subscribes their message types and
    /// events, then calls each one's [`Plugin::start`].
    ///
    /// # Errors
    /// [`PluginError::Conflict`] when a plugin command is already
    /// registered on the partyline (nothing is registered then), or the
    /// partyline's or gossip layer's error.
    pub async fn start(self, partyline: &Partyline, state: State) -> Result<Plugins, PluginError> {
        let existing = partyline.commands();
        let mut claims = Claims::new(
            existing
                .iter()
                .map(|c| c.name.as_str())
                .chain(std::iter::once("plugins")),
        );
        for (plugin, manifest) in &self.plugins {
            claims.add(plugin.name(), manifest)?;
        }
        let gossip = partyline.gossip().clone();
        let cancel = CancellationToken::new();
        let tasks = TaskGroup::new(cancel.clone());
        let mut slots = Vec::new();
        let mut receivers = Vec::new();
        for (plugin, manifest) in self.plugins {
            let (queue, rx) = mpsc::channel(EVENT_QUEUE);
            let slot = Arc::new(Slot {
                name: plugin.name().to_owned(),
                wants: manifest.events.iter().copied().collect(),
                plugin,
                manifest,
                status: Mutex::new(PluginStatus::Starting),
                counters: Arc::default(),
                queue,
            });
            slots.push(slot);
            receivers.push(rx);
        }
        let slots = Arc::new(slots);
        for slot in slots.iter() {
            for c in &slot.manifest.commands {
                partyline.register(command_spec(slot.clone(), c))?;
            }
        }
        partyline.register(plugins_command(slots.clone()))?;
        // Owned message types: each to its plugin.
        for slot in slots.iter() {
            for &t in &slot.manifest.msg_types {
                let rx = gossip.subscribe(MsgType::from_u32(t)).await?;
                let (slot, cancel) = (slot.clone(), cancel.clone());
                tasks.spawn(
                    "a plugin's message feed",
                    forward_messages(slot, t, rx, cancel),
                );
            }
        }
        let wanted: BTreeSet<EventKind> =
            slots.iter().flat_map(|s| s.wants.iter().copied()).collect();
        if !wanted.is_empty() {
            let sources = Sources {
                chat: wanted
                    .contains(&EventKind::Chat)
                    .then(|| partyline.subscribe_chat()),
                state: wanted
                    .contains(&EventKind::State)
                    .then(|| state.subscribe()),
                peers: if wanted.contains(&EventKind::Peers) {
                    Some(gossip.subscribe_peers().await?)
                } else {
                    None
                },
                members: wanted.contains(&EventKind::Members),
            };
            tasks.spawn(
                "the plugin event feed",
                feed_events(slots.clone(), sources, state.clone(), cancel.clone()),
            );
        }
        let node_name = partyline.node_name().to_owned();
        for (slot, rx) in slots.iter().zip(receivers) {
            let ctx = PluginContext::new(
                &slot.name,
                &node_name,
                gossip.clone(),
                state.clone(),
                slot.manifest.msg_types.iter().copied().collect(),
                slot.counters.clone(),
            );
            let span = tracing::info_span!("plugin", plugin = %slot.name);
            tasks.spawn(
                "a plugin's task",
                run_plugin(slot.clone(), ctx, rx, cancel.clone()).instrument(span),
            );
        }
        Ok(Plugins {
            any_task: !slots.is_empty(),
            slots,
            tasks,
        })
    }
}

/// The running plugins of a node.
#[derive(Clone)]
#[must_use = "dropping the handle does not stop the plugins; call shutdown()"]
pub struct Plugins {
    slots: Arc<Vec<Arc<Slot>>>,
    tasks: TaskGroup,
    /// Whether any task was started (a group without tasks never ends).
    any_task: bool,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("plugins", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Plugins {
    /// What `/plugins` shows, by plugin, in the order they were added.
    pub fn list(&self) -> Vec<PluginInfo> {
        self.slots.iter().map(|s| s.info()).collect()
    }

    /// Resolves once the host's tasks have ended (see [`TaskExit`]);
    /// never, for a host without plugins.
    pub fn closed(&self) -> impl std::future::Future<Output = TaskExit> + Send + 'static {
        self.tasks.closed()
    }

    /// Stops the event feeds, then calls every plugin's [`Plugin::stop`]
    /// (at most [`STOP_GRACE`] each, all at once). Their commands answer
    /// an error from then on. Idempotent.
    pub async fn shutdown(&self) {
        self.tasks.cancel_token().cancel();
        if self.any_task {
            let _ = self.tasks.closed().await;
        }
        let mut stops = tokio::task::JoinSet::new();
        for slot in self.slots.iter() {
            if slot.status() == PluginStatus::Stopped {
                continue;
            }
            slot.set_status(PluginStatus::Stopped);
            let (plugin, name) = (slot.plugin.clone(), slot.name.clone());
            stops.spawn(async move {
                if tokio::time::timeout(STOP_GRACE, plugin.stop())
                    .await
                    .is_err()
                {
                    warn!(plugin = %name, "plugin did not stop within {STOP_GRACE:?}; left behind");
                }
            });
        }
        while stops.join_next().await.is_some() {}
    }
}

/// Starts the plugin, then hands it its events one at a time until the
/// host stops.
async fn run_plugin(
    slot: Arc<Slot>,
    ctx: PluginContext,
    mut rx: mpsc::Receiver<Event>,
    cancel: CancellationToken,
) {
    let started = tokio::select! {
        () = cancel.cancelled() => return,
        r = slot.plugin.start(ctx) => r,
    };
    match started {
        Ok(()) => {
            slot.set_status(PluginStatus::Running);
            info!("plugin started");
        }
        Err(why) => {
            warn!(why = %why, "plugin failed to start; the node goes on without it");
            slot.set_status(PluginStatus::Failed(why));
            // Its queue is closed: events for it are not kept.
            rx.close();
            cancel.cancelled().await;
            return;
        }
    }
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => break,
            e = rx.recv() => e,
        };
        let Some(event) = event else {
            cancel.cancelled().await;
            break;
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = slot.plugin.event(event) => {}
        }
    }
    debug!("plugin task stopped");
}

async fn forward_messages(
    slot: Arc<Slot>,
    msg_type: u32,
    mut rx: mpsc::Receiver<micelio_gossip::Delivered>,
    cancel: CancellationToken,
) {
    loop {
        let d = tokio::select! {
            () = cancel.cancelled() => break,
            d = rx.recv() => d,
        };
        let Some(d) = d else {
            // The gossip layer stopped: wait for the host's end.
            cancel.cancelled().await;
            break;
        };
        slot.counters.received.fetch_add(1, Ordering::Relaxed);
        slot.offer(Event::Message {
            msg_type,
            sender: d.sender,
            payload: d.envelope.payload.clone(),
            message_id: d.envelope.message_id.clone(),
        });
    }
}

/// The event sources some plugin wants.
struct Sources {
    chat: Option<broadcast::Receiver<micelio_partyline::text::ChatView>>,
    state: Option<broadcast::Receiver<micelio_state::Change>>,
    peers: Option<mpsc::Receiver<PeerEvent>>,
    members: bool,
}

/// Turns the node's changes into events for the plugins that want them.
async fn feed_events(
    slots: Arc<Vec<Arc<Slot>>>,
    mut sources: Sources,
    state: State,
    cancel: CancellationToken,
) {
    let offer = |event: Event| {
        let Some(kind) = event.kind() else { return };
        // A failed plugin's queue is closed: nothing is kept for it.
        for slot in slots.iter().filter(|s| s.wants.contains(&kind)) {
            slot.offer(event.clone());
        }
    };
    let mut liveness: HashMap<NodeId, Liveness> = HashMap::new();
    let mut poll = tokio::time::interval(MEMBER_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lagged_logged = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            line = recv_broadcast(&mut sources.chat) => match line {
                Ok(v) => offer(Event::Chat {
                    nick: v.nick,
                    node: v.node,
                    text: v.text,
                    action: v.action,
                    timestamp: v.timestamp,
                }),
                Err(missed) => lagged(&slots, EventKind::Chat, missed, &mut lagged_logged),
            },
            change = recv_broadcast(&mut sources.state) => match change {
                Ok(c) => offer(Event::State {
                    key: c.entry.key,
                    author: c.entry.author,
                    value: c.entry.value,
                    deleted: c.entry.deleted,
                }),
                Err(missed) => lagged(&slots, EventKind::State, missed, &mut lagged_logged),
            },
            peer = recv_mpsc(&mut sources.peers) => match peer {
                PeerEvent::Up(p) => offer(Event::PeerUp {
                    node_id: p.node_id,
                    addr: p.remote_addr.clone(),
                }),
                PeerEvent::Down { node_id, reason } => offer(Event::PeerDown { node_id, reason }),
                _ => {}
            },
            _ = poll.tick(), if sources.members => {
                let Ok(members) = state.members().await else { continue };
                for m in members {
                    let before = liveness.insert(m.node_id, m.liveness);
                    if before == Some(m.liveness) {
                        continue;
                    }
                    let (node_id, name) = (m.node_id, m.name.clone());
                    match m.liveness {
                        Liveness::Alive => offer(Event::MemberUp { node_id, name }),
                        Liveness::Dead => offer(Event::MemberDown { node_id, name }),
                        Liveness::Left => offer(Event::MemberLeft { node_id, name }),
                        Liveness::Suspect => {}
                    }
                }
            }
        }
    }
}

/// A broadcast source that fell behind: every plugin wanting it loses
/// what it missed (counted), logged once.
fn lagged(slots: &[Arc<Slot>], kind: EventKind, missed: u64, logged: &mut bool) {
    for slot in slots.iter().filter(|s| s.wants.contains(&kind)) {
        slot.counters.dropped.fetch_add(missed, Ordering::Relaxed);
    }
    if !*logged {
        *logged = true;
        warn!(
            events = kind.as_str(),
            missed, "the plugin event feed fell behind the node: events lost (logged once)"
        );
    }
}

/// The next item of an optional broadcast receiver (pending forever when
/// there is none or it closed); `Err(n)` when `n` were missed.
async fn recv_broadcast<T: Clone>(rx: &mut Option<broadcast::Receiver<T>>) -> Result<T, u64> {
    let Some(r) = rx.as_mut() else {
        return std::future::pending().await;
    };
    match r.recv().await {
        Ok(v) => Ok(v),
        Err(broadcast::error::RecvError::Lagged(n)) => Err(n),
        Err(broadcast::error::RecvError::Closed) => {
            *rx = None;
            std::future::pending().await
        }
    }
}

async fn recv_mpsc<T>(rx: &mut Option<mpsc::Receiver<T>>) -> T {
    let Some(r) = rx.as_mut() else {
        return std::future::pending().await;
    };
    match r.recv().await {
        Some(v) => v,
        None => {
            *rx = None;
            std::future::pending().await
        }
    }
}

fn command_spec(slot: Arc<Slot>, decl: &crate::CommandDecl) -> CommandSpec {
    let name = decl.name.clone();
    CommandSpec::new(
        &decl.name,
        &decl.usage,
        &decl.help,
        move |call: CommandCall| {
            let (slot, name) = (slot.clone(), name.clone());
            async move {
                match slot.status() {
                    PluginStatus::Running => {}
                    other => {
                        return Reply::fail(format!("plugin {} is {}", slot.name, other.as_str()));
                    }
                }
                slot.counters.commands.fetch_add(1, Ordering::Relaxed);
                let call = PluginCall {
                    command: name,
                    args: call.args,
                    json: call.json,
                    nick: call.nick,
                    login: call.login,
                };
                match tokio::time::timeout(COMMAND_TIMEOUT, slot.plugin.command(call)).await {
                    Ok(reply) => reply,
                    Err(_) => Reply::fail(format!(
                        "plugin {} did not answer within {COMMAND_TIMEOUT:?}",
                        slot.name
                    )),
                }
            }
        },
    )
}

fn plugins_command(slots: Arc<Vec<Arc<Slot>>>) -> CommandSpec {
    CommandSpec::new(
        "plugins",
        "/plugins [--json]",
        "the plugins of this node: state, claims, events and drops",
        move |call: CommandCall| {
            let slots = slots.clone();
            async move {
                let list: Vec<PluginInfo> = slots.iter().map(|s| s.info()).collect();
                if call.json {
                    return Reply::json(&json!(list.iter().map(info_json).collect::<Vec<_>>()));
                }
                if list.is_empty() {
                    return Reply::ok("no plugins");
                }
                let mut out = String::new();
                for p in &list {
                    if !out.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(&format!(
                        "{} ({}) {}{}: {} events, {} dropped, {} commands, {} sent, {} received",
                        p.name,
                        p.kind,
                        p.status.as_str(),
                        match &p.status {
                            PluginStatus::Failed(why) => format!(" ({why})"),
                            _ => String::new(),
                        },
                        p.events,
                        p.dropped,
                        p.commands,
                        p.sent,
                        p.received
                    ));
                    if let Some(h) = &p.health {
                        out.push_str(&format!(
                            "\n  process: {}{}, {} restarts, {} bad lines, {} throttled, {} lines it did not read",
                            h.state,
                            h.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                            h.restarts,
                            h.bad_lines,
                            h.throttled,
                            h.out_dropped
                        ));
                        if let (Some(why), false) =
                            (&h.error, matches!(p.status, PluginStatus::Failed(_)))
                        {
                            out.push_str(&format!(" (last: {why})"));
                        }
                    }
                    let m = &p.manifest;
                    let mut claims = Vec::new();
                    if !m.commands.is_empty() {
                        let names: Vec<String> =
                            m.commands.iter().map(|c| format!("/{}", c.name)).collect();
                        claims.push(format!("commands {}", names.join(" ")));
                    }
                    if !m.msg_types.is_empty() {
                        let t: Vec<String> = m.msg_types.iter().map(u32::to_string).collect();
                        claims.push(format!("msg_types {}", t.join(",")));
                    }
                    if !m.desired_prefixes.is_empty() {
                        claims.push(format!("desired {}", m.desired_prefixes.join(",")));
                    }
                    if !m.events.is_empty() {
                        let e: Vec<&str> = m.events.iter().map(|k| k.as_str()).collect();
                        claims.push(format!("events {}", e.join(",")));
                    }
                    if !claims.is_empty() {
                        out.push_str(&format!("\n  {}", claims.join("; ")));
                    }
                }
                Reply::ok(out)
            }
        },
    )
}

fn info_json(p: &PluginInfo) -> serde_json::Value {
    json!({
        "name": p.name,
        "kind": p.kind,
        "status": p.status.as_str(),
        "error": match &p.status { PluginStatus::Failed(why) => Some(why), _ => None },
        "pid": p.health.as_ref().and_then(|h| h.pid),
        "restarts": p.health.as_ref().map_or(0, |h| h.restarts),
        "process_state": p.health.as_ref().map(|h| h.state),
        "bad_lines": p.health.as_ref().map_or(0, |h| h.bad_lines),
        "throttled": p.health.as_ref().map_or(0, |h| h.throttled),
        "unread_lines": p.health.as_ref().map_or(0, |h| h.out_dropped),
        "events": p.events,
        "dropped": p.dropped,
        "commands": p.commands,
        "sent": p.sent,
        "received": p.received,
        "claims": {
            "commands": p.manifest.commands.iter().map(|c| &c.name).collect::<Vec<_>>(),
            "msg_types": p.manifest.msg_types,
            "desired_prefixes": p.manifest.desired_prefixes,
            "events": p.manifest.events,
        },
    })
}

/// An external plugin whose program could not be launched.
struct NotLaunched {
    name: String,
    why: String,
}

impl Plugin for NotLaunched {
    fn name(&self) -> &str {
        &self.name
    }
    fn manifest(&self) -> Manifest {
        Manifest::new()
    }
    fn start(&self, _ctx: PluginContext) -> crate::BoxFuture<Result<(), String>> {
        let why = self.why.clone();
        Box::pin(async move { Err(why) })
    }
    fn health(&self) -> Option<crate::Health> {
        Some(crate::Health {
            state: "failed",
            error: Some(self.why.clone()),
            pid: None,
            restarts: 0,
            bad_lines: 0,
            throttled: 0,
            out_dropped: 0,
        })
    }
}

/// A plugin's desired-state prefix, as a reconciler.
struct PluginReconciler {
    plugin: Arc<dyn Plugin>,
    name: String,
    prefix: String,
}

impl Reconciler for PluginReconciler {
    fn name(&self) -> &str {
        &self.name
    }
    fn prefix(&self) -> &str {
        &self.prefix
    }
    fn timeout(&self) -> Duration {
        self.plugin.reconcile_timeout()
    }
    fn apply(&self, key: &str, value: &str) -> ReconcileFuture {
        self.plugin.apply(key, value)
    }
    fn remove(&self, key: &str) -> ReconcileFuture {
        self.plugin.remove(key)
    }
}
