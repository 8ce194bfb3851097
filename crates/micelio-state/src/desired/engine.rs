//! [`Desired`]: the task that keeps a node's effective desired map, runs
//! its reconcilers and publishes `actual/<key>`, and the handle through
//! which operators desire, undesire and read drift.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use micelio_identity::NodeId;
use micelio_transport::{TaskExit, TaskGroup};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use super::record::{
    ACTUAL_PREFIX, ActualRecord, ActualStatus, Author, DESIRED_PREFIX, DesiredRecord, RecordError,
    check_key, sha256_hex,
};
use super::resolve::{Effective, Listed, NodeDrift, Rules, drift};
use super::{Applied, Outcome, Reconciler};
use crate::members::Member;
use crate::selector::{Selector, Target};
use crate::service::{Change, Entry, State, StateError};

/// Most applies and removes running at once on a node.
pub const MAX_RUNNING: usize = 8;
/// First retry delay after a failure; it doubles on each failure.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// Commands queued to the task.
const COMMAND_QUEUE: usize = 64;
/// Most actual records read per node for `/drift`.
const MAX_ACTUALS: usize = 100_000;
/// Untrusted authors remembered for logging once each.
const MAX_LOGGED_AUTHORS: usize = 1000;

/// Settings of the desired-state task.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DesiredConfig {
    /// When set, only desired entries written by these nodes count; the
    /// others are ignored and counted. When `None`, every member is
    /// trusted: any node of the mesh can make every node run its
    /// reconcilers.
    pub admins: Option<BTreeSet<NodeId>>,
    /// First retry delay after a failure (doubling up to `retry_max`).
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl Default for DesiredConfig {
    fn default() -> Self {
        Self {
            admins: None,
            retry_min: RETRY_MIN,
            retry_max: RETRY_MAX,
        }
    }
}

impl DesiredConfig {
    /// Defaults with `admins`.
    pub fn with_admins(admins: Option<BTreeSet<NodeId>>) -> Self {
        Self {
            admins,
            ..Self::default()
        }
    }
}

/// Why a call on [`Desired`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DesiredError {
    /// The task has stopped.
    #[error("the desired-state task stopped")]
    Stopped,
    /// The state map refused or failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The key or value is not acceptable.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The entry would not fit the map's limits.
    #[error("{0}")]
    TooLarge(String),
    /// Two reconcilers claim the same prefix.
    #[error("reconcilers {0:?} and {1:?} both claim the prefix {2:?}")]
    Conflict(String, String, String),
    /// `/undesire` of something nobody desired.
    #[error("nothing is desired for {selector} {key}")]
    NotDesired {
        /// The selector.
        selector: String,
        /// The key.
        key: String,
    },
}

/// Counters of the desired-state task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DesiredStats {
    /// Desired entries indexed (removals and untrusted ones included).
    pub rules: u64,
    /// Indexed entries whose author is not in `admins` (ignored).
    pub untrusted: u64,
    /// Desired entries refused as malformed.
    pub malformed: u64,
    /// Desired entries ignored because the index was full.
    pub overflow: u64,
    /// Keys desired on this node.
    pub desired: u64,
    /// Of those, applied and reported ok.
    pub ok: u64,
    /// Of those, failing.
    pub failing: u64,
    /// Of those, claimed by no reconciler.
    pub unclaimed: u64,
    /// Applies and removes running now.
    pub running: u64,
    /// Applies that worked.
    pub applies: u64,
    /// Applies and removes that failed (timeouts included).
    pub errors: u64,
    /// Calls stopped at their time limit.
    pub timeouts: u64,
    /// Removes that worked.
    pub removes: u64,
}

/// One key of this node, as its reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The key.
    pub key: String,
    /// Its desired value here (`None`: being removed).
    pub desired: Option<String>,
    /// The reconciler that claims it.
    pub reconciler: Option<String>,
    /// What was last published, if anything.
    pub actual: Option<ActualRecord>,
    /// Failures in a row.
    pub attempts: u32,
    /// Whether a call is running.
    pub running: bool,
}

enum Command {
    Rules(oneshot::Sender<Vec<Listed>>),
    Effective(oneshot::Sender<BTreeMap<String, Effective>>),
    Keys(oneshot::Sender<Vec<KeyState>>),
    Stats(oneshot::Sender<DesiredStats>),
    InForce {
        selector: String,
        key: String,
        reply: oneshot::Sender<bool>,
    },
    Drift {
        members: Vec<Member>,
        actuals: HashMap<NodeId, BTreeMap<String, ActualRecord>>,
        filter: Option<Selector>,
        reply: oneshot::Sender<Vec<NodeDrift>>,
    },
}

/// Handle to the desired-state task of a node. Clones share it.
///
/// ```no_run
/// # async fn demo(state: micelio_state::State) -> Result<(), micelio_state::desired::DesiredError> {
/// use micelio_state::desired::{Author, Desired, DesiredConfig};
/// use micelio_state::selector::Selector;
///
/// let desired = Desired::spawn(state, DesiredConfig::default(), vec![]).await?;
/// let eu = Selector::parse("EU").expect("a valid selector");
/// desired.desire(&eu, "files/motd", "hello", Author::default()).await?;
/// for node in desired.drift(None).await? {
///     println!("{} drifts on {} keys", node.name, node.items.len());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "dropping the handle does not stop the task; call shutdown()"]
pub struct Desired {
    tx: mpsc::Sender<Command>,
    state: State,
    tasks: TaskGroup,
}

impl Desired {
    /// Starts the task over `state` with `reconcilers` (the longest
    /// claiming prefix wins).
    ///
    /// # Errors
    /// [`DesiredError::Conflict`] if two reconcilers claim the same prefix.
    pub async fn spawn(
        state: State,
        config: DesiredConfig,
        reconcilers: Vec<Arc<dyn Reconciler>>,
    ) -> Result<Self, DesiredError> {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for r in &reconcilers {
            if let Some(other) = seen.insert(r.prefix(), r.name()) {
                return Err(DesiredError::Conflict(
                    other.to_owned(),
                    r.name().to_owned(),
                    r.prefix().to_owned(),
                ));
            }
        }
        // Subscribed before the first scan, so that nothing falls between.
        let changes = state.subscribe();
        let cancel = CancellationToken::new();
        let tasks = TaskGroup::new(cancel.clone());
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let me = *state.node_id();
        let engine = Engine {
            me,
            rules: Rules::new(config.admins.clone()),
            state: state.clone(),
            reconcilers,
            config,
            name: String::new(),
            tags: Vec::new(),
            keys: BTreeMap::new(),
            published: BTreeMap::new(),
            jobs: JoinSet::new(),
            queue: VecDeque::new(),
            stats: DesiredStats::default(),
            logged_authors: HashSet::new(),
            logged_malformed: false,
        };
        let span = tracing::info_span!("desired", node = %me.short(12));
        tasks.spawn(
            "the desired-state task",
            engine.run(rx, changes, cancel).instrument(span),
        );
        Ok(Self { tx, state, tasks })
    }

    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DesiredError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(msg(reply))
            .await
            .map_err(|_| DesiredError::Stopped)?;
        rx.await.map_err(|_| DesiredError::Stopped)
    }

    /// `by` with its time and this node's name filled in where empty.
    async fn author(&self, mut by: Author) -> Author {
        if by.at == 0 {
            by.at = crate::service::unix_now();
        }
        if by.node_name.is_empty()
            && let Ok(Some(e)) = self.state.get(&self.state.own_key("node/name")).await
        {
            by.node_name = String::from_utf8_lossy(&e.value).into_owned();
        }
        by
    }

    async fn write(
        &self,
        selector: &Selector,
        key: &str,
        record: &DesiredRecord,
    ) -> Result<Entry, DesiredError> {
        check_key(key)?;
        let sub = format!("{DESIRED_PREFIX}{selector}/{key}");
        let limits = self.state.limits();
        let full = self.state.own_key(&sub).len();
        if full > limits.max_key {
            return Err(DesiredError::TooLarge(format!(
                "selector and key are too long: the entry's key would be {full} bytes, over the {}-byte limit",
                limits.max_key
            )));
        }
        let bytes = record.encode();
        if bytes.len() > limits.max_value {
            return Err(DesiredError::TooLarge(format!(
                "the value is too large: its entry would be {} bytes, over the {}-byte limit",
                bytes.len(),
                limits.max_value
            )));
        }
        Ok(self.state.set(&sub, bytes).await?)
    }

    /// Desires `value` for `key` on the nodes `selector` matches: writes
    /// `desired/<selector>/<key>` in this node's namespace, with `by` (its
    /// time is filled in when zero). Durable when it returns.
    ///
    /// # Errors
    /// A bad key, a NUL in the value, an entry over the limits, or the
    /// state map's error.
    pub async fn desire(
        &self,
        selector: &Selector,
        key: &str,
        value: &str,
        by: Author,
    ) -> Result<Entry, DesiredError> {
        if value.contains('\0') {
            return Err(RecordError::Nul.into());
        }
        let by = self.author(by).await;
        self.write(selector, key, &DesiredRecord::set(value, by))
            .await
    }

    /// Withdraws what is desired for `selector` and `key`, whoever desired
    /// it: writes a removal that wins the LWW order over every author's
    /// entry (and stays, as the trail of who removed it).
    ///
    /// # Errors
    /// [`DesiredError::NotDesired`] when no trusted entry desires it, or as
    /// [`Desired::desire`].
    pub async fn undesire(
        &self,
        selector: &Selector,
        key: &str,
        by: Author,
    ) -> Result<Entry, DesiredError> {
        check_key(key)?;
        let sel = selector.to_string();
        let in_force = self
            .ask(|reply| Command::InForce {
                selector: sel.clone(),
                key: key.to_owned(),
                reply,
            })
            .await?;
        if !in_force {
            return Err(DesiredError::NotDesired {
                selector: sel,
                key: key.to_owned(),
            });
        }
        let by = self.author(by).await;
        self.write(selector, key, &DesiredRecord::removal(by)).await
    }

    /// Every desired entry known (removals and untrusted ones included,
    /// each marked), by selector and key, newest first: the audit trail.
    ///
    /// # Errors
    /// [`DesiredError::Stopped`].
    pub async fn rules(&self) -> Result<Vec<Listed>, DesiredError> {
        self.ask(Command::Rules).await
    }

    /// This node's effective desired map.
    ///
    /// # Errors
    /// [`DesiredError::Stopped`].
    pub async fn effective(&self) -> Result<BTreeMap<String, Effective>, DesiredError> {
        self.ask(Command::Effective).await
    }

    /// This node's keys as its reconcilers see them.
    ///
    /// # Errors
    /// [`DesiredError::Stopped`].
    pub async fn keys(&self) -> Result<Vec<KeyState>, DesiredError> {
        self.ask(Command::Keys).await
    }

    /// The task's counters.
    ///
    /// # Errors
    /// [`DesiredError::Stopped`].
    pub async fn stats(&self) -> Result<DesiredStats, DesiredError> {
        self.ask(Command::Stats).await
    }

    /// The drift of every member `filter` matches (all when `None`), as
    /// this node sees the map: empty when they have converged.
    ///
    /// # Errors
    /// [`DesiredError::Stopped`] or the state map's error.
    pub async fn drift(&self, filter: Option<&Selector>) -> Result<Vec<NodeDrift>, DesiredError> {
        let members = self.state.members().await?;
        let mut actuals = HashMap::new();
        for m in &members {
            if m.liveness == crate::Liveness::Left {
                continue;
            }
            let prefix = format!("{}/{ACTUAL_PREFIX}", m.node_id.to_hex());
            let mut records = BTreeMap::new();
            for e in self.state.scan(&prefix, MAX_ACTUALS).await? {
                if e.deleted {
                    continue;
                }
                if let Ok(r) = ActualRecord::decode(&e.value) {
                    records.insert(e.key[prefix.len()..].to_owned(), r);
                }
            }
            actuals.insert(m.node_id, records);
        }
        let filter = filter.cloned();
        self.ask(|reply| Command::Drift {
            members,
            actuals,
            filter,
            reply,
        })
        .await
    }

    /// Resolves once the task has ended (see [`TaskExit`]).
    pub fn closed(&self) -> impl std::future::Future<Output = TaskExit> + Send + 'static {
        self.tasks.closed()
    }

    /// Stops the task; running applies are dropped (a command's process
    /// group is killed). Idempotent. Stop it before the state service.
    pub async fn shutdown(&self) {
        self.tasks.cancel_token().cancel();
        let _ = self.tasks.closed().await;
    }
}

/// What to do for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Apply(String),
    Remove,
}

struct Done {
    key: String,
    op: Op,
    reconciler: String,
    applied: Applied,
    timed_out: bool,
}

#[derive(Debug, Default)]
struct Slot {
    want: Option<String>,
    running: bool,
    queued: bool,
    attempts: u32,
    retry_at: Option<Instant>,
}

struct Engine {
    me: NodeId,
    state: State,
    rules: Rules,
    reconcilers: Vec<Arc<dyn Reconciler>>,
    config: DesiredConfig,
    name: String,
    tags: Vec<String>,
    keys: BTreeMap<String, Slot>,
    published: BTreeMap<String, ActualRecord>,
    jobs: JoinSet<Done>,
    queue: VecDeque<String>,
    stats: DesiredStats,
    logged_authors: HashSet<NodeId>,
    logged_malformed: bool,
}

impl Engine {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut changes: broadcast::Receiver<Change>,
        cancel: CancellationToken,
    ) {
        if self.rescan().await.is_err() {
            return;
        }
        self.load_published().await;
        self.recompute().await;
        loop {
            let next = self.keys.values().filter_map(|s| s.retry_at).min();
            tokio::select! {
                () = cancel.cancelled() => break,
                change = changes.recv() => match change {
                    Ok(c) => {
                        if self.observe(&c.entry) {
                            self.recompute().await;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        debug!(missed = n, "fell behind the state's changes; rescanning");
                        if self.rescan().await.is_err() {
                            break;
                        }
                        self.recompute().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                Some(done) = self.jobs.join_next() => {
                    if let Ok(done) = done {
                        self.finish(done).await;
                    }
                }
                () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    let due: Vec<String> = self
                        .keys
                        .iter()
                        .filter(|(_, s)| s.retry_at.is_some_and(|t| t <= now))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in due {
                        if let Some(s) = self.keys.get_mut(&key) {
                            s.retry_at = None;
                        }
                        self.step(&key).await;
                    }
                }
            }
        }
        self.jobs.abort_all();
        debug!("desired-state task stopped");
    }

    /// Rebuilds the index and this node's name and tags from the map.
    async fn rescan(&mut self) -> Result<(), StateError> {
        let mut rules = Rules::new(self.config.admins.clone());
        let members = self.state.members().await?;
        for m in &members {
            let prefix = format!("{}/{DESIRED_PREFIX}", m.node_id.to_hex());
            for e in self.state.scan(&prefix, usize::MAX).await? {
                let _ = rules.observe(&e);
            }
            if m.node_id == self.me {
                self.name.clone_from(&m.name);
                self.tags.clone_from(&m.tags);
            }
        }
        self.rules = rules;
        Ok(())
    }

    /// Reads back what this node published before (a restart).
    async fn load_published(&mut self) {
        let prefix = self.state.own_key(ACTUAL_PREFIX);
        let Ok(entries) = self.state.scan(&prefix, usize::MAX).await else {
            return;
        };
        for e in entries.into_iter().filter(|e| !e.deleted) {
            if let Ok(r) = ActualRecord::decode(&e.value) {
                self.published.insert(e.key[prefix.len()..].to_owned(), r);
            }
        }
    }

    /// Takes in a change of the map; whether the effective map may have
    /// changed.
    fn observe(&mut self, entry: &Entry) -> bool {
        let sub = entry.sub_key();
        if entry.author == self.me {
            match sub {
                "node/tags" => {
                    self.tags = crate::tags::parse_list(&String::from_utf8_lossy(&entry.value));
                    return true;
                }
                "node/name" => {
                    self.name = String::from_utf8_lossy(&entry.value).into_owned();
                    return true;
                }
                _ => {}
            }
        }
        if !sub.starts_with(DESIRED_PREFIX) {
            return false;
        }
        match self.rules.observe(entry) {
            Ok(changed) => {
                if changed && !self.rules.trusts(&entry.author) {
                    self.log_untrusted(entry.author);
                }
                changed
            }
            Err(why) => {
                if !self.logged_malformed {
                    self.logged_malformed = true;
                    warn!(key = %entry.key, "ignored a desired entry: {why} (logged once; counted in /stats)");
                } else {
                    debug!(key = %entry.key, "ignored a desired entry: {why}");
                }
                // A removed or replaced rule may still have changed things.
                true
            }
        }
    }

    fn log_untrusted(&mut self, author: NodeId) {
        if self.logged_authors.len() < MAX_LOGGED_AUTHORS && self.logged_authors.insert(author) {
            warn!(
                author = %author,
                "ignoring desired entries of a node that is not in [desired] admins (logged once per author; counted in /stats)"
            );
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Rules(reply) => {
                let _ = reply.send(self.rules.all());
            }
            Command::Effective(reply) => {
                let _ = reply.send(self.effective());
            }
            Command::Keys(reply) => {
                let list = self
                    .keys
                    .iter()
                    .map(|(k, s)| KeyState {
                        key: k.clone(),
                        desired: s.want.clone(),
                        reconciler: self.claim(k).map(|r| r.name().to_owned()),
                        actual: self.published.get(k).cloned(),
                        attempts: s.attempts,
                        running: s.running,
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Command::InForce {
                selector,
                key,
                reply,
            } => {
                let found = self.rules.in_force_for(&selector, &key).is_some();
                let _ = reply.send(found);
            }
            Command::Drift {
                members,
                actuals,
                filter,
                reply,
            } => {
                let _ = reply.send(drift(&self.rules, &members, &actuals, filter.as_ref()));
            }
        }
    }

    fn stats(&self) -> DesiredStats {
        let mut s = self.stats.clone();
        s.rules = self.rules.len() as u64;
        s.untrusted = self.rules.untrusted();
        s.malformed = self.rules.malformed();
        s.overflow = self.rules.overflow();
        s.desired = 0;
        s.ok = 0;
        s.failing = 0;
        s.unclaimed = 0;
        for (key, slot) in &self.keys {
            let Some(want) = &slot.want else { continue };
            s.desired += 1;
            match self.published.get(key) {
                Some(a) if a.status == ActualStatus::Ok && a.answers(want) => s.ok += 1,
                Some(a) if a.status == ActualStatus::Error => s.failing += 1,
                Some(a) if a.status == ActualStatus::Unclaimed => s.unclaimed += 1,
                _ => {}
            }
        }
        s.running = self.keys.values().filter(|s| s.running).count() as u64;
        s
    }

    fn effective(&self) -> BTreeMap<String, Effective> {
        let hex = self.me.to_hex();
        self.rules.effective(&Target {
            node_id: &hex,
            name: &self.name,
            tags: &self.tags,
        })
    }

    /// The reconciler that claims `key`: the longest matching prefix.
    fn claim(&self, key: &str) -> Option<&Arc<dyn Reconciler>> {
        self.reconcilers
            .iter()
            .filter(|r| key.starts_with(r.prefix()))
            .max_by_key(|r| r.prefix().len())
    }

    /// Sets every key's wanted value from the effective map and acts on
    /// those that changed.
    async fn recompute(&mut self) {
        let effective = self.effective();
        let mut touched = Vec::new();
        for (key, e) in &effective {
            let slot = self.keys.entry(key.clone()).or_default();
            if slot.want.as_deref() != Some(e.value.as_str()) {
                slot.want = Some(e.value.clone());
                slot.attempts = 0;
                slot.retry_at = None;
                touched.push(key.clone());
            }
        }
        let gone: Vec<String> = self
            .keys
            .iter()
            .filter(|(k, s)| s.want.is_some() && !effective.contains_key(*k))
            .map(|(k, _)| k.clone())
            .chain(
                self.published
                    .keys()
                    .filter(|k| !effective.contains_key(*k) && !self.keys.contains_key(*k))
                    .cloned(),
            )
            .collect();
        for key in gone {
            let slot = self.keys.entry(key.clone()).or_default();
            slot.want = None;
            slot.attempts = 0;
            slot.retry_at = None;
            touched.push(key);
        }
        for key in touched {
            self.step(&key).await;
        }
    }

    /// Does what `key` needs next, if it is not running or waiting.
    async fn step(&mut self, key: &str) {
        let Some(slot) = self.keys.get(key) else {
            return;
        };
        if slot.running || slot.queued || slot.retry_at.is_some() {
            return;
        }
        let want = slot.want.clone();
        let claimed = self.claim(key).is_some();
        let published = self.published.get(key);
        match want {
            Some(v) => {
                if !claimed {
                    if published
                        .is_some_and(|a| a.status == ActualStatus::Unclaimed && a.answers(&v))
                    {
                        return;
                    }
                    let record = ActualRecord {
                        value: None,
                        value_sha256: None,
                        desired_sha256: sha256_hex(&v),
                        status: ActualStatus::Unclaimed,
                        message: "no reconciler on this node claims the key".to_owned(),
                        reconciler: String::new(),
                        at: crate::service::unix_now(),
                    };
                    self.publish(key, record).await;
                    return;
                }
                if published
                    .is_some_and(|a| a.status == ActualStatus::Ok && a.answers(&v) && a.holds(&v))
                {
                    return;
                }
                self.start(key, Op::Apply(v));
            }
            None => match published {
                None => {
                    self.keys.remove(key);
                }
                Some(a) if a.status == ActualStatus::Unclaimed || !claimed => {
                    self.unpublish(key).await;
                    self.keys.remove(key);
                }
                Some(_) => self.start(key, Op::Remove),
            },
        }
    }

    /// Starts `op` for `key`, or queues it when [`MAX_RUNNING`] run.
    fn start(&mut self, key: &str, op: Op) {
        let running = self.keys.values().filter(|s| s.running).count();
        let Some(reconciler) = self.claim(key).cloned() else {
            return;
        };
        let Some(slot) = self.keys.get_mut(key) else {
            return;
        };
        if running >= MAX_RUNNING {
            slot.queued = true;
            self.queue.push_back(key.to_owned());
            return;
        }
        slot.running = true;
        let key = key.to_owned();
        let limit = reconciler.timeout();
        let name = reconciler.name().to_owned();
        let fut = match &op {
            Op::Apply(v) => reconciler.apply(&key, v),
            Op::Remove => reconciler.remove(&key),
        };
        debug!(key = %key, reconciler = %name, op = ?op, "reconciling");
        self.jobs.spawn(async move {
            let (applied, timed_out) = match tokio::time::timeout(limit, fut).await {
                Ok(a) => (a, false),
                Err(_) => (Applied::error(format!("timed out after {limit:?}")), true),
            };
            Done {
                key,
                op,
                reconciler: name,
                applied,
                timed_out,
            }
        });
    }

    async fn finish(&mut self, done: Done) {
        let Done {
            key,
            op,
            reconciler,
            applied,
            timed_out,
        } = done;
        if timed_out {
            self.stats.timeouts += 1;
        }
        let failed = applied.outcome == Outcome::Error;
        if let Some(slot) = self.keys.get_mut(&key) {
            slot.running = false;
            if failed {
                slot.attempts = slot.attempts.saturating_add(1);
                let exp = slot.attempts.saturating_sub(1).min(20);
                let delay = self
                    .config
                    .retry_min
                    .saturating_mul(1 << exp)
                    .min(self.config.retry_max);
                slot.retry_at = Some(Instant::now() + delay);
            } else {
                slot.attempts = 0;
            }
        }
        let still_wanted = self.keys.get(&key).map(|s| s.want.clone());
        match (&op, failed) {
            (Op::Apply(v), false) => {
                self.stats.applies += 1;
                info!(key = %key, reconciler = %reconciler, "applied");
                let record = ActualRecord {
                    value: applied.actual,
                    value_sha256: None,
                    desired_sha256: sha256_hex(v),
                    status: ActualStatus::Ok,
                    message: applied.message,
                    reconciler,
                    at: crate::service::unix_now(),
                };
                self.publish(&key, record).await;
            }
            (Op::Apply(v), true) => {
                self.stats.errors += 1;
                warn!(key = %key, reconciler = %reconciler, message = %applied.message, "apply failed; retrying with backoff");
                let record = ActualRecord {
                    value: applied.actual,
                    value_sha256: None,
                    desired_sha256: sha256_hex(v),
                    status: ActualStatus::Error,
                    message: applied.message,
                    reconciler,
                    at: crate::service::unix_now(),
                };
                self.publish(&key, record).await;
            }
            (Op::Remove, false) => {
                self.stats.removes += 1;
                info!(key = %key, reconciler = %reconciler, "removed");
                self.unpublish(&key).await;
                if still_wanted == Some(None) {
                    self.keys.remove(&key);
                }
            }
            (Op::Remove, true) => {
                self.stats.errors += 1;
                warn!(key = %key, reconciler = %reconciler, message = %applied.message, "remove failed; retrying with backoff");
                let record = ActualRecord {
                    value: None,
                    value_sha256: None,
                    desired_sha256: String::new(),
                    status: ActualStatus::Error,
                    message: format!("remove failed: {}", applied.message),
                    reconciler,
                    at: crate::service::unix_now(),
                };
                self.publish(&key, record).await;
            }
        }
        // What is wanted may have changed while it ran.
        if let Some(slot) = self.keys.get_mut(&key) {
            let changed = match (&op, &slot.want) {
                (Op::Apply(v), Some(w)) => v != w,
                (Op::Apply(_), None) | (Op::Remove, Some(_)) => true,
                (Op::Remove, None) => false,
            };
            if changed {
                slot.retry_at = None;
                slot.attempts = 0;
            }
        }
        self.step(&key).await;
        while let Some(next) = self.queue.pop_front() {
            if let Some(s) = self.keys.get_mut(&next) {
                s.queued = false;
                self.step(&next).await;
                break;
            }
        }
    }

    async fn publish(&mut self, key: &str, record: ActualRecord) {
        let max = self.state.limits().max_value;
        let sub = format!("{ACTUAL_PREFIX}{key}");
        match self.state.set(&sub, record.encode(max)).await {
            Ok(_) => {
                self.published.insert(key.to_owned(), record);
            }
            Err(e) => warn!(key = %key, error = %e, "could not publish the actual state"),
        }
    }

    async fn unpublish(&mut self, key: &str) {
        if self.published.remove(key).is_some() {
            let sub = format!("{ACTUAL_PREFIX}{key}");
            if let Err(e) = self.state.delete(&sub).await {
                warn!(key = %key, error = %e, "could not delete the actual state");
            }
        }
    }
}
