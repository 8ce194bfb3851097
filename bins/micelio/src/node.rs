//! The composition point: where the binary builds, supervises and stops the
//! node.
//!
//! [`run`] is the one place that knows every layer. It opens storage (the
//! known peers), starts the transport (TCP + Noise, peer manager,
//! discovery), gossip over it, the state service over gossip (its sled
//! database opened off the runtime), the desired-state task over the state,
//! the partyline hub over gossip with the state commands attached, the
//! plugin host over the partyline (`/plugins`, the plugins' commands and
//! reconcilers), and the SSH server over the partyline, and logs
//! every chat line it receives. A
//! [`Node`] owns every started component; whatever happens (a signal, a
//! component that dies, an error half-way through start-up) the same
//! [`Node::stop`] stops them in one fixed order:
//!
//! 1. stop accepting SSH connections and close the sessions (`SshServer`);
//! 2. stop the partyline hub (`Partyline`);
//! 3. stop the desired-state task (`Desired`): running reconcilers are
//!    dropped, a command's process group killed;
//! 4. stop the plugins (`Plugins`): their event feeds end, then each one's
//!    `stop` runs (at most 5 s);
//! 5. stop the state service (`State`): it writes and flushes `node/left`
//!    and hands it to gossip, which is still running, then flushes its
//!    database;
//! 6. stop gossip (`Gossip`);
//! 7. close the peer connections (`PeerManager`), each writing what its
//!    queue held first (at most 1 s);
//! 8. flush the known-peers storage.
//!
//! While it runs, the node watches every component, none is polled: each
//! one's `closed()` future (`SshServer::closed` for the accept loop,
//! `Partyline::closed` for the hub task, `State::closed` for the state
//! task and its storage thread, `Gossip::closed` for the gossip
//! task, `PeerManager::closed` for the accept loop, bootstrap dialers,
//! maintenance loop and storage task) resolves when its tasks end, with the
//! panic message or the reason; the node's own chat-log task is watched by
//! its join handle. SIGUSR1 logs the gossip counters in one line
//! (`gossip stats`), as does the ordered stop. A component that ends or panics is logged with its
//! name and reason and the node stops, in order, with an error (exit
//! status 1): it never lingers half-alive.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use micelio_gossip::{Delivered, Gossip, GossipConfig};
use micelio_identity::Identity;
use micelio_partyline::{Partyline, PartylineConfig};
use micelio_ssh::{SshConfig, SshServer};
use micelio_state::State;
use micelio_transport::{
    PeerManager, PeerStore as _, SledPeerStore, TaskExit, TcpTransport, TransportConfig,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::commands::write_stdout;
use crate::config::{Broadcast, Config};

/// micelio's own directory inside the data dir (the reference's files,
/// `data.db` among them, are left alone).
const MICELIO_DIR: &str = "micelio";
/// The sled database of known peers, inside [`MICELIO_DIR`].
const PEERS_DB: &str = "peers";
/// The sled database of the replicated state, inside [`MICELIO_DIR`].
const STATE_DB: &str = "state";
/// The sled tree of known peers in a legacy database.
const PEERS_TREE: &str = "peers";
/// Where micelio kept its sled database before, inside the data dir; the
/// reference keeps a bbolt file of the same name.
const LEGACY_DB: &str = "data.db";
/// Where a migrated legacy database is moved, inside [`MICELIO_DIR`].
const MIGRATED_DB: &str = "migrated-data.db";
/// Who may log in to the partyline.
const AUTHORIZED_KEYS: &str = "authorized_keys";

/// Maps the validated configuration onto the transport's.
fn transport_config(config: &Config) -> TransportConfig {
    let net = &config.network;
    let mut t = TransportConfig::new(net.listen.map(|a| a.to_string()));
    t.advertise_addr = net.advertise_addr.clone();
    t.bootstrap = net.bootstrap.clone();
    t.tags = config.node.tags.clone();
    t.max_peers = net.max_peers;
    t.dial_timeout = net.dial_timeout;
    t.hello_timeout = net.hello_timeout;
    t.keepalive_interval = net.keepalive_interval;
    t.idle_timeout = net.idle_timeout;
    t.write_timeout = net.write_timeout;
    t.send_queue = net.send_queue;
    t.max_pending_handshakes = net.max_pending_handshakes;
    t.max_pending_per_host = net.max_pending_per_host;
    t.preauth_timeout = net.preauth_timeout;
    t.duplicate_grace = net.duplicate_grace;
    t.exchange_interval = net.exchange_interval;
    t.discovery_interval = net.discovery_interval;
    // This node reconciles its state with range sync (type 16).
    t.features
        .push(micelio_wire::limits::FEATURE_STATE_V1.to_owned());
    if config.gossip.broadcast != Broadcast::Tree {
        // Peers must not take us for a tree node: we would never graft.
        t.features
            .retain(|f| f != micelio_wire::limits::FEATURE_BROADCAST_TREE_V1);
    }
    t
}

/// Maps the validated configuration onto the gossip engine's.
fn gossip_config(config: &Config) -> GossipConfig {
    let g = &config.gossip;
    let mut c = GossipConfig::default();
    c.broadcast_tree = g.broadcast == Broadcast::Tree;
    c.lazy_delay = g.lazy_delay;
    c.graft_timeout = g.graft_timeout;
    c.graft_retry = g.graft_retry;
    c.fanout = g.fanout;
    c.max_hops = g.max_hops;
    c.seen_ttl = g.seen_ttl;
    c.seen_cap = g.seen_cap;
    c.rate_per_sec = g.rate_per_sec;
    c.rate_burst = g.rate_burst;
    c.repair_interval = g.repair_interval;
    c.repair_window = g.repair_window;
    c.repair_retention = g.repair_retention;
    c.learned_keys_cap = g.learned_keys_cap;
    c.rate_buckets_cap = g.rate_buckets_cap;
    c.pace_per_sec = g.pace_per_sec;
    c.pace_burst = g.pace_burst;
    c.origin_queue = g.origin_queue;
    c
}

/// Maps the validated configuration onto the partyline's.
fn partyline_config(config: &Config) -> PartylineConfig {
    let mut c = PartylineConfig::new(config.node.name.clone());
    c.history_lines = config.partyline.history_lines;
    c.presence_interval = config.partyline.presence_interval;
    c.presence_debounce = config.partyline.presence_debounce;
    c
}

/// Maps the validated configuration onto the state service's; `addr` is
/// the mesh address this node publishes (`node/addr`).
fn state_config(config: &Config, addr: Option<&str>) -> micelio_state::StateConfig {
    let st = &config.state;
    let mut c = micelio_state::StateConfig::default();
    c.limits = micelio_state::Limits::new(st.max_value, st.max_entries);
    c.liveness.heartbeat_interval = st.heartbeat_interval;
    c.liveness.suspect_after = st.suspect_after;
    c.liveness.dead_after = st.dead_after;
    c.sync_interval = st.sync_interval;
    c.tombstone_ttl = st.tombstone_ttl;
    c.gc_interval = st.gc_interval;
    c.tags_file = Some(config.node.data_dir.join(MICELIO_DIR).join(TAGS_FILE));
    c.node = micelio_state::NodeInfo {
        name: config.node.name.clone(),
        tags: config.node.tags.clone(),
        addr: addr.unwrap_or_default().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    c
}

/// The runtime tag changes, in `<data_dir>/micelio/`.
const TAGS_FILE: &str = "tags.json";

/// The command reconcilers of `[[reconcile]]`.
fn reconcilers(
    config: &Config,
    me: &micelio_identity::NodeId,
) -> Vec<Arc<dyn micelio_state::desired::Reconciler>> {
    config
        .reconcile
        .iter()
        .filter_map(|r| {
            let c = micelio_state::desired::CommandReconciler::new(
                r.name.clone(),
                r.prefix.clone(),
                r.command.clone(),
                r.timeout,
                me.to_hex(),
            )?;
            Some(Arc::new(c) as Arc<dyn micelio_state::desired::Reconciler>)
        })
        .collect()
}

/// Launches every `[[plugins]]` program and runs its handshake. One that
/// cannot be launched is logged and shown failed by `/plugins`; the node
/// goes on without it. Claims that collide stop the start.
async fn launch_plugins(
    config: &Config,
    me: &micelio_identity::NodeId,
) -> anyhow::Result<micelio_plugins::PluginHost> {
    let mut host = micelio_plugins::PluginHost::new();
    for p in &config.plugins {
        match micelio_plugins::external::ExternalPlugin::launch(
            p.external(),
            &me.to_hex(),
            &config.node.name,
        )
        .await
        {
            Ok(plugin) => host
                .add(plugin)
                .with_context(|| format!("cannot add plugin {}", p.name))?,
            Err(e) => {
                error!(plugin = %p.name, "cannot launch the plugin: {e}; the node goes on without it");
                host.add_failed(&p.name, &e.to_string())
                    .with_context(|| format!("cannot add plugin {}", p.name))?;
            }
        }
    }
    Ok(host)
}

/// Opens the state database (`<data_dir>/micelio/state`, created by
/// [`open_peer_store`]) off the runtime, with the configured sled cache.
async fn open_state_store(config: &Config) -> anyhow::Result<micelio_state::store::SledStateStore> {
    let path = config.node.data_dir.join(MICELIO_DIR).join(STATE_DB);
    let cache = config.state.cache_mib << 20;
    tokio::task::spawn_blocking(move || {
        micelio_state::store::SledStateStore::open(&path, cache)
            .with_context(|| format!("cannot open the state database {}", path.display()))
    })
    .await
    .context("opening the state database")?
}

/// Maps the validated configuration onto the SSH server's.
fn ssh_config(config: &Config) -> SshConfig {
    let mut c = SshConfig::new(
        config.ssh.listen,
        config.node.data_dir.join(AUTHORIZED_KEYS),
    );
    c.max_connections = config.ssh.max_connections;
    c.inactivity_timeout = config.ssh.inactivity_timeout;
    c.write_timeout = config.ssh.write_timeout;
    c
}

/// Creates an empty `authorized_keys` (mode 0600) on first run.
async fn ensure_authorized_keys(path: &std::path::Path) -> anyhow::Result<()> {
    if tokio::fs::try_exists(path).await.unwrap_or(false) {
        return Ok(());
    }
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map(|_| ())
            .with_context(|| format!("cannot create {}", path.display()))
    })
    .await
    .context("creating authorized_keys")?
}

/// Opens the known-peers store of `data_dir`
/// (`<data_dir>/micelio/peers`), migrating an old one first. The one place
/// that knows where peers are stored; the peer manager owns the store from
/// then on and flushes it when it shuts down.
async fn open_peer_store(data_dir: &Path) -> anyhow::Result<SledPeerStore> {
    let data_dir = data_dir.to_owned();
    tokio::task::spawn_blocking(move || open_peer_store_blocking(&data_dir))
        .await
        .context("opening storage")?
}

/// Blocking part of [`open_peer_store`].
fn open_peer_store_blocking(data_dir: &Path) -> anyhow::Result<SledPeerStore> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = data_dir.join(MICELIO_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(PEERS_DB);
    let mut store = SledPeerStore::open(&path).context("cannot open storage")?;
    migrate_legacy_peers(data_dir, &mut store);
    Ok(store)
}

/// Before this layout micelio kept a sled directory at `<data_dir>/data.db`,
/// where the reference keeps a bbolt file. If that path is a directory, its
/// known peers are copied (records already present are kept) and the old
/// database is moved to `<data_dir>/micelio/migrated-data.db`, so that the
/// reference can use the data dir again. A file at that path is the
/// reference's and is never opened. A failed migration is logged and the
/// node starts without those peers; the old directory is then left as is.
fn migrate_legacy_peers(data_dir: &Path, store: &mut SledPeerStore) {
    let old = data_dir.join(LEGACY_DB);
    if !std::fs::symlink_metadata(&old).is_ok_and(|m| m.is_dir()) {
        return;
    }
    let copied = (|| -> anyhow::Result<(usize, usize)> {
        use micelio_wire::WireMessage as _;
        let known: std::collections::HashSet<String> =
            store.load()?.peers.into_iter().map(|p| p.node_id).collect();
        let old_db = sled::open(&old)?;
        let old_tree = old_db.open_tree(PEERS_TREE)?;
        let (mut copied, mut kept) = (0, 0);
        for record in old_tree.iter() {
            let (key, value) = record?;
            let Ok(info) = micelio_wire::proto::PeerInfo::decode_wire(&value[..]) else {
                continue;
            };
            let Ok(node_id) = String::from_utf8_lossy(&key).parse::<micelio_identity::NodeId>()
            else {
                continue;
            };
            if known.contains(&info.node_id) {
                kept += 1;
            } else {
                store.save(&node_id, &info)?;
                copied += 1;
            }
        }
        store.flush()?;
        Ok((copied, kept))
    })();
    let (copied, kept) = match copied {
        Ok(counts) => counts,
        Err(e) => {
            warn!(path = %old.display(), "cannot migrate the known peers of an old micelio database: {e:#}; left in place");
            return;
        }
    };
    let moved = data_dir.join(MICELIO_DIR).join(MIGRATED_DB);
    if moved.exists() {
        warn!(
            from = %old.display(), copied, kept,
            "copied known peers from an old micelio database; not moved, {} exists",
            moved.display()
        );
        return;
    }
    match std::fs::rename(&old, &moved) {
        Ok(()) => info!(
            from = %old.display(), to = %moved.display(), copied, kept,
            "migrated the known peers of an old micelio database and moved it out of the reference's data.db"
        ),
        Err(e) => warn!(
            from = %old.display(), copied, kept,
            "copied known peers from an old micelio database but cannot move it: {e}"
        ),
    }
}

/// Logs one received chat line, for operators without a session.
fn log_chat(delivered: &Delivered) {
    if let Some(line) = micelio_partyline::chat::ChatLine::from_delivered(delivered) {
        info!(
            message_id = %line.message_id,
            sender = %line.node,
            nick = %line.nick,
            text = %line.text,
            "chat received"
        );
    }
}

/// A fault to inject after start, for the tests of supervision: read from
/// `MICELIO_DEBUG_FAULT` in debug builds only (release builds ignore it).
/// It fires once the node has at least one peer, so that the peer store
/// has something to flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The chat-log task panics.
    Panic,
    /// The SSH server is stopped behind the node's back, as if its accept
    /// loop had died.
    StopSsh,
}

impl Fault {
    const ENV: &'static str = "MICELIO_DEBUG_FAULT";

    fn from_env() -> Option<Fault> {
        if !cfg!(debug_assertions) {
            return None;
        }
        match std::env::var(Self::ENV).ok()?.as_str() {
            "panic" => Some(Fault::Panic),
            "stop-ssh" => Some(Fault::StopSsh),
            other => {
                warn!(value = other, "ignoring unknown {}", Self::ENV);
                None
            }
        }
    }
}

/// Waits until `peers` has a connected peer.
async fn first_peer(peers: &PeerManager) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while peers.peer_count() == 0 {
        tick.tick().await;
    }
}

/// How a watched component ended: `Ok` only when the node asked it to.
type Ended = Result<(), String>;

/// The running node: every component it has started, and the tasks that
/// watch them. Fields are `None` until their component has started.
#[derive(Default)]
struct Node {
    ssh: Option<SshServer>,
    party: Option<Partyline>,
    desired: Option<micelio_state::desired::Desired>,
    plugins: Option<micelio_plugins::Plugins>,
    state: Option<State>,
    gossip: Option<Gossip>,
    peers: Option<PeerManager>,
    /// One task per watched component, named.
    watches: JoinSet<(&'static str, Ended)>,
    names: Vec<(tokio::task::Id, &'static str)>,
}

impl Node {
    /// Spawns a task that watches one component; it returns when that
    /// component ends.
    fn watch(
        &mut self,
        name: &'static str,
        task: impl std::future::Future<Output = Ended> + Send + 'static,
    ) {
        let handle = self.watches.spawn(async move { (name, task.await) });
        self.names.push((handle.id(), name));
    }

    /// Watches every started component through its `closed()` future. A
    /// component that ends while the node runs has died, even when it says
    /// it was stopped: only [`Node::stop`] stops components, and it stops
    /// watching first.
    fn watch_components(&mut self) {
        if let Some(ssh) = &self.ssh {
            let closed = ssh.closed();
            self.watch("ssh", async move {
                Err(format!("the SSH server {}", closed.await))
            });
        }
        if let Some(party) = &self.party {
            let closed = party.closed();
            self.watch("partyline", async move { Err(exit_reason(closed.await)) });
        }
        if let Some(desired) = &self.desired {
            let closed = desired.closed();
            self.watch("desired", async move { Err(exit_reason(closed.await)) });
        }
        if let Some(plugins) = &self.plugins {
            let closed = plugins.closed();
            self.watch("plugins", async move { Err(exit_reason(closed.await)) });
        }
        if let Some(state) = &self.state {
            let closed = state.closed();
            self.watch("state", async move { Err(exit_reason(closed.await)) });
        }
        if let Some(gossip) = &self.gossip {
            let closed = gossip.closed();
            self.watch("gossip", async move { Err(exit_reason(closed.await)) });
        }
        if let Some(peers) = &self.peers {
            let closed = peers.closed();
            self.watch("peers", async move { Err(exit_reason(closed.await)) });
        }
    }

    /// Starts every component in order, recording each as it starts so
    /// that [`Node::stop`] can stop whatever did.
    async fn start(
        &mut self,
        config: &Config,
        identity: &Arc<Identity>,
        fault: Option<Fault>,
    ) -> anyhow::Result<()> {
        let store = open_peer_store(&config.node.data_dir).await?;

        let tcfg = transport_config(config);
        let transport = TcpTransport::new(identity.clone(), tcfg.dial_timeout, tcfg.hello_timeout);
        let (peers, events) = PeerManager::spawn(
            identity.clone(),
            Arc::new(transport),
            tcfg,
            Some(Box::new(store)),
        )
        .await
        .context("cannot start the peer transport")?;
        let peers = self.peers.insert(peers).clone();
        let listening = match (peers.local_addr(), peers.advertise_addr()) {
            (Some(addr), Some(adv)) if adv != addr => format!("{addr} (advertised as {adv})"),
            (Some(addr), _) => addr.to_owned(),
            (None, _) => "none (outbound only)".to_owned(),
        };

        let gossip = Gossip::spawn(
            identity.clone(),
            gossip_config(config),
            peers.clone(),
            events,
        );
        let gossip = self.gossip.insert(gossip).clone();
        let chat = gossip
            .subscribe(micelio_wire::MsgType::Chat)
            .await
            .context("gossip stopped")?;

        let state_store = open_state_store(config).await?;
        let state = State::spawn(
            identity.clone(),
            state_config(config, peers.advertise_addr()),
            Box::new(state_store),
            gossip.clone(),
            peers.clone(),
        )
        .await
        .context("cannot start the state service")?;
        let state = self.state.insert(state).clone();
        // The binary's plugins are the external ones of its config;
        // programs that embed the crates add in-process ones to a host
        // like this one.
        let host = launch_plugins(config, identity.node_id()).await?;
        let mut all_reconcilers = reconcilers(config, identity.node_id());
        all_reconcilers.extend(host.reconcilers());
        let desired = micelio_state::desired::Desired::spawn(
            state.clone(),
            micelio_state::desired::DesiredConfig::with_admins(config.desired.admins()),
            all_reconcilers,
        )
        .await
        .context("cannot start the desired-state task")?;
        let desired = self.desired.insert(desired).clone();

        let party = Partyline::spawn(partyline_config(config), gossip.clone(), peers.clone())
            .await
            .context("cannot start the partyline")?;
        let party = &*self.party.insert(party);
        party
            .attach_state(state.clone())
            .context("cannot attach the state commands")?;
        party
            .attach_desired(desired)
            .context("cannot attach the desired-state commands")?;
        let plugins = host
            .start(party, state)
            .await
            .context("cannot start the plugins")?;
        self.plugins = Some(plugins);

        let scfg = ssh_config(config);
        let keys_path = scfg.authorized_keys.clone();
        ensure_authorized_keys(&keys_path).await?;
        let ssh = SshServer::spawn(identity, scfg, party.clone())
            .await
            .context("cannot start the SSH server")?;
        let ssh = self.ssh.insert(ssh);
        let ssh_addr = ssh.local_addr();
        let nobody = ssh.authorized_keys().is_empty().await;

        self.watch_components();
        let chat_peers = (fault == Some(Fault::Panic)).then(|| peers.clone());
        self.watch("chat-log", chat_log(chat, chat_peers));
        write_stdout(&format!(
            "peers       {listening}\nssh         {ssh_addr}\n"
        ))?;
        if nobody {
            write_stdout(&format!(
                "\nNobody can log in yet: add an OpenSSH public key to {path}, for example\n  \
                 cat ~/.ssh/id_ed25519.pub >> {path}\n\
                 then connect with: ssh -p {port} <user>@<this host>\n",
                path = keys_path.display(),
                port = ssh_addr.port(),
            ))?;
        }
        info!(
            node_id = %identity.node_id(),
            name = %config.node.name,
            peers = %listening,
            "node started"
        );
        Ok(())
    }

    /// Runs until `shutdown` is cancelled (`Ok`) or a component ends by
    /// itself (`Err` naming it and its reason).
    async fn supervise(
        &mut self,
        shutdown: &CancellationToken,
        fault: Option<Fault>,
        mut usr1: Option<tokio::signal::unix::Signal>,
        demo_parent: Option<u32>,
    ) -> anyhow::Result<()> {
        let mut parent_check = tokio::time::interval(Duration::from_secs(1));
        let peers = self.peers.clone();
        let stop_ssh = async {
            match (fault, &peers) {
                (Some(Fault::StopSsh), Some(peers)) => first_peer(peers).await,
                _ => std::future::pending().await,
            }
        };
        tokio::pin!(stop_ssh);
        let mut injected = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = parent_check.tick(), if demo_parent.is_some() => {
                    if parent_pid() != demo_parent {
                        warn!("the demo that started this node is gone; stopping");
                        return Ok(());
                    }
                }
                Some(()) = async { usr1.as_mut()?.recv().await }, if usr1.is_some() => {
                    self.log_stats("SIGUSR1").await;
                }
                () = &mut stop_ssh, if !injected => {
                    injected = true;
                    warn!("debug fault injection: stopping the SSH server behind the node's back");
                    if let Some(ssh) = &self.ssh {
                        ssh.shutdown().await;
                    }
                }
                Some(joined) = self.watches.join_next_with_id() => {
                    let (name, reason) = match joined {
                        Ok((_, (name, Ok(())))) => (name, "ended".to_owned()),
                        Ok((_, (name, Err(reason)))) => (name, reason),
                        Err(e) => {
                            let name = self
                                .names
                                .iter()
                                .find(|(id, _)| *id == e.id())
                                .map_or("a component", |(_, name)| *name);
                            (name, micelio_transport::task::join_error_reason(e))
                        }
                    };
                    error!(component = name, "component failed: {reason}; stopping the node");
                    return Err(anyhow!("component {name} failed: {reason}"));
                }
            }
        }
    }

    /// Stops whatever was started, in the fixed order of the module doc.
    /// Safe to call after a partial start.
    ///
    /// # Errors
    /// If storage cannot be flushed.
    async fn stop(&mut self) -> anyhow::Result<()> {
        info!("stopping");
        self.log_stats("shutdown").await;
        self.watches.abort_all();
        if let Some(ssh) = &self.ssh {
            ssh.shutdown().await;
            info!(step = 1, "stopped the SSH server and its sessions");
        }
        if let Some(party) = &self.party {
            party.shutdown().await;
            info!(step = 2, "stopped the partyline");
        }
        if let Some(desired) = &self.desired {
            desired.shutdown().await;
            info!(step = 3, "stopped the reconcilers");
        }
        if let Some(plugins) = &self.plugins {
            plugins.shutdown().await;
            info!(step = 4, "stopped the plugins");
        }
        if let Some(state) = &self.state {
            state.shutdown().await;
            info!(
                step = 5,
                "stopped the state service and flushed its database"
            );
        }
        if let Some(gossip) = &self.gossip {
            gossip.shutdown().await;
            info!(step = 6, "stopped gossip");
        }
        // Steps 7 and 8: the peer manager closes its connections, then its
        // storage task writes what is pending and flushes.
        let flushed = match &self.peers {
            Some(peers) => {
                let flushed = peers.shutdown_and_flush().await.context("flushing storage");
                info!(step = 7, "closed the peer connections");
                if flushed.is_ok() {
                    info!(step = 8, "flushed storage");
                }
                flushed
            }
            None => Ok(()),
        };
        while self.watches.join_next().await.is_some() {}
        flushed
    }
}

impl Node {
    /// Logs the gossip counters in one line (message `gossip stats`), for
    /// operators and benchmarks without an SSH session: on SIGUSR1 and
    /// when the node stops. `why` says which.
    async fn log_stats(&self, why: &str) {
        let Some(gossip) = &self.gossip else { return };
        let Ok(s) = gossip.stats().await else { return };
        info!(
            why = %why,
            peers = self.peers.as_ref().map_or(0, PeerManager::peer_count),
            received = s.received,
            delivered = s.delivered,
            originated = s.originated,
            duplicates = s.dropped_for(micelio_gossip::DropReason::Duplicate),
            dropped = s.dropped_total(),
            data_frames_sent = s.data_frames_sent,
            data_bytes_sent = s.data_bytes_sent,
            control_frames_sent = s.control_frames_sent,
            control_bytes_sent = s.control_bytes_sent,
            tree_eager_peers = s.tree_eager_peers,
            tree_lazy_peers = s.tree_lazy_peers,
            ihave_ids_sent = s.ihave_ids_sent,
            grafts_sent = s.grafts_sent,
            grafted_ids = s.grafted_ids,
            prunes_sent = s.prunes_sent,
            repairs_requested = s.repairs_requested,
            repairs_served = s.repairs_served,
            send_refused = s.send_refused,
            "gossip stats"
        );
    }
}

/// Logs every chat line. Gossip's delivery stream ends only when the gossip
/// task has ended, which the gossip watch reports (with its reason); this
/// task then has nothing more to do and waits to be stopped. With
/// `fault_after_peer`, panics once the node has a peer (debug fault
/// injection).
async fn chat_log(
    mut chat: mpsc::Receiver<Delivered>,
    fault_after_peer: Option<PeerManager>,
) -> Ended {
    let fault = async {
        match &fault_after_peer {
            Some(peers) => first_peer(peers).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(fault);
    loop {
        tokio::select! {
            () = &mut fault => panic!("debug fault injection: the chat log panics"),
            delivered = chat.recv() => match delivered {
                Some(d) => log_chat(&d),
                None => break,
            },
        }
    }
    std::future::pending().await
}

/// Why a component whose tasks ended is dead: its failure, or a stop
/// nobody asked for.
fn exit_reason(exit: TaskExit) -> String {
    match exit {
        TaskExit::Failed(reason) => reason,
        TaskExit::Stopped => "it stopped without being asked to".to_owned(),
        other => other.to_string(),
    }
}

/// The variable `micelio demo` sets to its pid in the nodes it starts: a
/// node whose parent is no longer that process (the demo was killed)
/// stops by itself.
pub(crate) const DEMO_PARENT_ENV: &str = "MICELIO_DEMO_PARENT";

fn demo_parent() -> Option<u32> {
    std::env::var(DEMO_PARENT_ENV).ok()?.parse().ok()
}

fn parent_pid() -> Option<u32> {
    rustix::process::getppid().and_then(|p| u32::try_from(p.as_raw_nonzero().get()).ok())
}

/// Runs the node until `shutdown` is cancelled or a component fails, then
/// stops it in order.
///
/// This is the composition point of the binary: everything the node is made
/// of is built and wired here, and nowhere else. It returns promptly (well
/// within the grace period of `main`, 5 s) once `shutdown` is cancelled,
/// having stopped accepting, closed peers and flushed storage. Every exit
/// path, including an error during start-up, goes through the same ordered
/// stop.
///
/// Cancel safety: not meant to be dropped mid-way; cancel `shutdown` and
/// await the returned future instead.
///
/// # Errors
/// Any failure that stops the node (a listener that cannot bind, storage
/// that cannot be opened, a component that died, a flush that failed).
pub(crate) async fn run(
    config: Config,
    identity: Identity,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let identity = Arc::new(identity);
    let mut node = Node::default();
    let fault = Fault::from_env();
    // Listen for SIGUSR1 before anything starts: its default action ends
    // the process, so one that came during start-up would kill the node.
    let usr1 = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
        Ok(usr1) => Some(usr1),
        Err(e) => {
            warn!("cannot listen for SIGUSR1, no stats on demand: {e}");
            None
        }
    };
    let result = match node.start(&config, &identity, fault).await {
        Ok(()) => node.supervise(&shutdown, fault, usr1, demo_parent()).await,
        Err(e) => Err(e),
    };
    // After a signal, `shutdown::supervise` bounds the whole stop; after a
    // failure nobody else does, so it is bounded here.
    let stopped = if result.is_err() {
        match tokio::time::timeout(crate::shutdown::GRACE_PERIOD, node.stop()).await {
            Ok(stopped) => stopped,
            Err(_) => Err(anyhow!(
                "the node did not stop within {}",
                humantime::format_duration(crate::shutdown::GRACE_PERIOD)
            )),
        }
    } else {
        node.stop().await
    };
    match (result, stopped) {
        (Ok(()), Ok(())) => {
            info!(node_id = %identity.node_id(), "node stopped");
            Ok(())
        }
        (Err(e), flushed) => {
            if let Err(flush) = flushed {
                error!("{flush:#}");
            }
            info!(node_id = %identity.node_id(), "node stopped after a failure");
            Err(e)
        }
        (Ok(()), Err(flush)) => Err(flush),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_defaults_are_the_libraries_defaults() {
        let config = Config::defaults(&crate::config::check::Host::default());
        // The binary runs the state service, so its hello says so.
        let mut transport = TransportConfig::default();
        transport
            .features
            .push(micelio_wire::limits::FEATURE_STATE_V1.to_owned());
        assert_eq!(transport_config(&config), transport);
        let mut state = micelio_state::StateConfig::default();
        state.node = micelio_state::NodeInfo {
            name: config.node.name.clone(),
            tags: config.node.tags.clone(),
            addr: "127.0.0.1:4000".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        state.tags_file = Some(config.node.data_dir.join(MICELIO_DIR).join(TAGS_FILE));
        assert_eq!(state_config(&config, Some("127.0.0.1:4000")), state);
        assert_eq!(gossip_config(&config), GossipConfig::default());
        assert_eq!(
            partyline_config(&config),
            PartylineConfig::new(config.node.name.clone())
        );
        assert_eq!(
            ssh_config(&config),
            SshConfig::new(
                SshConfig::DEFAULT_LISTEN,
                config.node.data_dir.join(AUTHORIZED_KEYS)
            )
        );
    }

    #[test]
    fn the_broadcast_settings_reach_the_engine_and_the_hello() {
        let mut config = Config::for_tests("/tmp/node");
        let tree = micelio_wire::limits::FEATURE_BROADCAST_TREE_V1;
        assert!(transport_config(&config).features.iter().any(|f| f == tree));
        config.gossip.lazy_delay = Duration::from_millis(3);
        config.gossip.graft_timeout = Duration::from_millis(300);
        config.gossip.graft_retry = Duration::from_millis(30);
        let g = gossip_config(&config);
        assert!(g.broadcast_tree);
        assert_eq!(
            (g.lazy_delay, g.graft_timeout, g.graft_retry),
            (
                Duration::from_millis(3),
                Duration::from_millis(300),
                Duration::from_millis(30)
            )
        );
        // A fanout node must not look like a tree node to its peers.
        config.gossip.broadcast = Broadcast::Fanout;
        assert!(!gossip_config(&config).broadcast_tree);
        let t = transport_config(&config);
        assert!(!t.features.iter().any(|f| f == tree));
        assert!(
            t.features
                .iter()
                .any(|f| f == micelio_wire::limits::FEATURE_EXTENSIONS_V1),
            "the other extensions stay"
        );
    }

    #[test]
    fn every_state_setting_reaches_the_service() {
        let mut config = Config::for_tests("/tmp/node");
        config.state.max_value = 60_000;
        config.state.max_entries = 5_000;
        config.state.sync_interval = Duration::from_secs(3);
        config.state.heartbeat_interval = Duration::from_secs(1);
        config.state.suspect_after = Duration::from_secs(4);
        config.state.dead_after = Duration::from_secs(8);
        config.state.tombstone_ttl = Duration::from_secs(600);
        config.state.gc_interval = Duration::from_secs(60);
        let c = state_config(&config, None);
        assert_eq!((c.limits.max_value, c.limits.max_entries), (60_000, 5_000));
        assert_eq!(
            (
                c.sync_interval,
                c.liveness.heartbeat_interval,
                c.liveness.suspect_after,
                c.liveness.dead_after,
                c.tombstone_ttl,
                c.gc_interval
            ),
            (
                Duration::from_secs(3),
                Duration::from_secs(1),
                Duration::from_secs(4),
                Duration::from_secs(8),
                Duration::from_secs(600),
                Duration::from_secs(60)
            )
        );
        assert_eq!(c.node.addr, "");
        assert_eq!(c.node.name, "test-node");
    }

    #[test]
    fn every_setting_reaches_its_library() {
        let mut config = Config::for_tests("/tmp/node");
        config.gossip.seen_cap = 1234;
        config.gossip.repair_interval = Duration::ZERO;
        config.gossip.repair_window = Duration::from_secs(7);
        config.gossip.repair_retention = Duration::from_secs(70);
        config.gossip.learned_keys_cap = 100;
        config.gossip.rate_buckets_cap = 200;
        config.gossip.pace_per_sec = 3;
        config.gossip.pace_burst = 4;
        config.gossip.origin_queue = 50;
        config.partyline.presence_debounce = Duration::from_millis(500);
        config.ssh.max_connections = 5;
        config.ssh.inactivity_timeout = Duration::from_secs(77);
        config.ssh.write_timeout = Duration::from_secs(3);
        config.partyline.history_lines = 0;
        config.partyline.presence_interval = Duration::from_secs(9);
        config.network.max_pending_handshakes = 40;
        config.network.max_pending_per_host = 4;
        config.network.preauth_timeout = Duration::from_secs(6);
        config.network.duplicate_grace = Duration::from_secs(2);
        let t = transport_config(&config);
        assert_eq!(
            (
                t.max_pending_handshakes,
                t.max_pending_per_host,
                t.preauth_timeout,
                t.duplicate_grace
            ),
            (40, 4, Duration::from_secs(6), Duration::from_secs(2))
        );
        let g = gossip_config(&config);
        assert_eq!(
            (
                g.seen_cap,
                g.repair_interval,
                g.repair_window,
                g.repair_retention
            ),
            (
                1234,
                Duration::ZERO,
                Duration::from_secs(7),
                Duration::from_secs(70)
            )
        );
        assert_eq!(
            (
                g.learned_keys_cap,
                g.rate_buckets_cap,
                g.pace_per_sec,
                g.pace_burst,
                g.origin_queue
            ),
            (100, 200, 3, 4, 50)
        );
        let s = ssh_config(&config);
        assert_eq!(
            (s.max_connections, s.inactivity_timeout, s.write_timeout),
            (5, Duration::from_secs(77), Duration::from_secs(3))
        );
        let p = partyline_config(&config);
        assert_eq!(
            (p.history_lines, p.presence_interval, p.presence_debounce),
            (0, Duration::from_secs(9), Duration::from_millis(500))
        );
    }

    #[tokio::test]
    async fn a_panicking_component_is_named_with_its_panic() {
        let mut node = Node::default();
        node.watch("steady", std::future::pending());
        node.watch("flaky", async { panic!("boom") });
        let err = node
            .supervise(&CancellationToken::new(), None, None, None)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "component flaky failed: panicked: boom");
        node.stop().await.unwrap();
        assert!(node.watches.is_empty(), "watchers are reaped");
    }

    #[tokio::test]
    async fn a_component_that_ends_stops_the_node_with_its_reason() {
        let mut node = Node::default();
        node.watch("gossip", async { Err("its stream ended".to_owned()) });
        let err = node
            .supervise(&CancellationToken::new(), None, None, None)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "component gossip failed: its stream ended");
    }

    #[tokio::test]
    async fn a_gossip_task_that_dies_stops_the_node_with_its_name_and_reason() {
        let id = Arc::new(Identity::from_seed([4; 32]));
        let transport =
            TcpTransport::new(id.clone(), Duration::from_secs(1), Duration::from_secs(1));
        let (peers, _events) = PeerManager::spawn(
            id.clone(),
            Arc::new(transport),
            TransportConfig::new(None),
            None,
        )
        .await
        .unwrap();
        // Gossip runs on an event stream of its own, which the test ends.
        let (events_tx, events) = mpsc::channel(1);
        let gossip = Gossip::spawn(id, GossipConfig::default(), peers.clone(), events);
        let party = Partyline::spawn(PartylineConfig::new("n"), gossip.clone(), peers.clone())
            .await
            .unwrap();
        let mut node = Node {
            peers: Some(peers),
            gossip: Some(gossip),
            party: Some(party),
            ..Node::default()
        };
        node.watch_components();
        let supervised = tokio::spawn(async move {
            let result = node
                .supervise(&CancellationToken::new(), None, None, None)
                .await;
            (node, result)
        });
        tokio::task::yield_now().await;
        assert!(!supervised.is_finished(), "every component is alive");
        drop(events_tx);
        let (mut node, result) = tokio::time::timeout(Duration::from_secs(10), supervised)
            .await
            .expect("the death is seen without polling")
            .unwrap();
        assert_eq!(
            result.unwrap_err().to_string(),
            "component gossip failed: the gossip task ended by itself"
        );
        node.stop().await.unwrap();
        assert!(node.party.as_ref().unwrap().who().await.is_err(), "stopped");
    }

    #[test]
    fn a_stop_nobody_asked_for_is_a_death() {
        assert_eq!(
            exit_reason(TaskExit::Stopped),
            "it stopped without being asked to"
        );
        assert_eq!(
            exit_reason(TaskExit::Failed("x panicked: y".into())),
            "x panicked: y"
        );
    }

    #[tokio::test]
    async fn cancellation_is_a_clean_stop() {
        let mut node = Node::default();
        node.watch("steady", std::future::pending());
        let token = CancellationToken::new();
        token.cancel();
        node.supervise(&token, None, None, None).await.unwrap();
        node.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_start_still_stops_and_flushes_what_was_started() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(dir.path());
        // Two listeners on one port: the SSH server cannot bind.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        config.ssh.listen = taken.local_addr().unwrap();
        let identity = Arc::new(Identity::from_seed([7; 32]));
        let mut node = Node::default();
        let err = node.start(&config, &identity, None).await.unwrap_err();
        assert!(format!("{err:#}").contains("SSH"), "{err:#}");
        assert!(node.peers.is_some() && node.gossip.is_some() && node.party.is_some());
        node.stop().await.unwrap();
        // What had started is stopped, not left running half-alive.
        let gossip = node.gossip.as_ref().unwrap();
        assert!(gossip.stats().await.is_err(), "gossip stopped");
        let party = node.party.as_ref().unwrap();
        assert!(party.who().await.is_err(), "partyline stopped");
        // The store was flushed and released: it opens again.
        drop(node);
        open_peer_store(dir.path()).await.unwrap();
    }

    fn peer_record(seed: u8, addr: &str) -> (String, Vec<u8>) {
        use micelio_wire::WireMessage as _;
        let id = Identity::from_seed([seed; 32]);
        let info = micelio_wire::proto::PeerInfo {
            node_id: id.node_id().to_string(),
            addr: addr.to_owned(),
            reachable: true,
            ed25519_pubkey: id.public_key().as_bytes().to_vec().into(),
            ..Default::default()
        };
        (id.node_id().to_string(), info.encode_wire())
    }

    #[tokio::test]
    async fn an_old_micelio_database_is_migrated_and_moved_out_of_data_db() {
        let dir = tempfile::tempdir().unwrap();
        let (key, value) = peer_record(9, "10.0.0.9:4000");
        {
            let old = sled::open(dir.path().join(LEGACY_DB)).unwrap();
            old.open_tree(PEERS_TREE)
                .unwrap()
                .insert(key.as_bytes(), value)
                .unwrap();
            old.flush().unwrap();
        }
        let mut store = open_peer_store(dir.path()).await.unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.undecodable, 0);
        assert_eq!(loaded.peers.len(), 1);
        assert_eq!(loaded.peers[0].addr, "10.0.0.9:4000");
        assert!(
            !dir.path().join(LEGACY_DB).exists(),
            "data.db is free again"
        );
        assert!(dir.path().join(MICELIO_DIR).join(MIGRATED_DB).is_dir());
    }

    #[tokio::test]
    async fn a_data_db_file_is_never_touched() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(LEGACY_DB);
        std::fs::write(&file, b"not ours").unwrap();
        let mut store = open_peer_store(dir.path()).await.unwrap();
        assert!(store.load().unwrap().peers.is_empty());
        assert_eq!(std::fs::read(&file).unwrap(), b"not ours");
        assert!(dir.path().join(MICELIO_DIR).join(PEERS_DB).is_dir());
    }
}
