//! The composition point: where the binary builds and runs the node.
//!
//! [`run`] is the one place that knows every layer. Today it opens storage
//! (`<data_dir>/data.db`, sled), starts the transport (TCP + Noise, peer
//! manager, discovery) and gossip over it, and logs every chat line it
//! receives; state, plugins and the SSH partyline join here as they are
//! built. Everything stops, in order,
//! when `shutdown` is cancelled.

use std::sync::Arc;

use anyhow::Context as _;
use micelio_gossip::{Gossip, GossipConfig};
use micelio_identity::Identity;
use micelio_partyline::{Partyline, PartylineConfig};
use micelio_ssh::{SshConfig, SshServer};
use micelio_transport::{PeerManager, SledPeerStore, TcpTransport, TransportConfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::commands::write_stdout;
use crate::config::Config;

/// micelio's known-peers store inside the data dir (`data.db` is the
/// reference's bbolt file).
const PEERS_DB: [&str; 2] = ["micelio", "peers"];
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
    t.exchange_interval = net.exchange_interval;
    t.discovery_interval = net.discovery_interval;
    t
}

/// Maps the validated configuration onto the gossip engine's.
fn gossip_config(config: &Config) -> GossipConfig {
    let g = &config.gossip;
    let mut c = GossipConfig::default();
    c.fanout = g.fanout;
    c.max_hops = g.max_hops;
    c.seen_ttl = g.seen_ttl;
    c.rate_per_sec = g.rate_per_sec;
    c.rate_burst = g.rate_burst;
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

/// Runs the node until `shutdown` is cancelled, then stops it.
///
/// This is the composition point of the binary: everything the node is made
/// of is built and wired here, and nowhere else. It returns promptly (well
/// within the grace period of `main`, 5 s) once `shutdown` is cancelled,
/// having stopped accepting, closed peers and flushed storage.
///
/// Cancel safety: not meant to be dropped mid-way; cancel `shutdown` and
/// await the returned future instead.
///
/// # Errors
/// Any failure that stops the node (a listener that cannot bind, storage
/// that cannot be opened, …).
pub(crate) async fn run(
    config: Config,
    identity: Identity,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let identity = Arc::new(identity);
    let db_path = config.node.data_dir.join(PEERS_DB[0]).join(PEERS_DB[1]);
    let store = {
        let path = db_path.clone();
        tokio::task::spawn_blocking(move || SledPeerStore::open(&path))
            .await
            .context("opening storage")?
            .with_context(|| format!("cannot open storage {}", db_path.display()))?
    };

    let tcfg = transport_config(&config);
    let transport = TcpTransport::new(identity.clone(), tcfg.dial_timeout, tcfg.hello_timeout);
    let (peers, events) = PeerManager::spawn(
        identity.clone(),
        Arc::new(transport),
        tcfg,
        Some(Box::new(store)),
    )
    .await
    .context("cannot start the peer transport")?;
    let listening = match (peers.local_addr(), peers.advertise_addr()) {
        (Some(addr), Some(adv)) if adv != addr => format!("{addr} (advertised as {adv})"),
        (Some(addr), _) => addr.to_owned(),
        (None, _) => "none (outbound only)".to_owned(),
    };
    let gossip = Gossip::spawn(
        identity.clone(),
        gossip_config(&config),
        peers.clone(),
        events,
    );
    let party = Partyline::spawn(
        PartylineConfig::new(config.node.name.clone()),
        gossip.clone(),
        peers.clone(),
    )
    .await
    .context("cannot start the partyline")?;
    let keys_path = config.node.data_dir.join(AUTHORIZED_KEYS);
    ensure_authorized_keys(&keys_path).await?;
    let ssh = SshServer::spawn(
        &identity,
        SshConfig::new(config.ssh.listen, &keys_path),
        party.clone(),
    )
    .await
    .context("cannot start the SSH server")?;
    write_stdout(&format!(
        "peers       {listening}\nssh         {}\n",
        ssh.local_addr()
    ))?;
    if ssh.authorized_keys().is_empty().await {
        write_stdout(&format!(
            "\nNobody can log in yet: add an OpenSSH public key to {path}, for example\n  \
             cat ~/.ssh/id_ed25519.pub >> {path}\n\
             then connect with: ssh -p {port} <user>@<this host>\n",
            path = keys_path.display(),
            port = ssh.local_addr().port(),
        ))?;
    }
    info!(
        node_id = %identity.node_id(),
        name = %config.node.name,
        peers = %listening,
        "node started"
    );

    // Chat also goes to the log, for operators without a session.
    let mut chat = gossip
        .subscribe(micelio_wire::MsgType::Chat)
        .await
        .context("gossip stopped")?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            delivered = chat.recv() => match delivered {
                Some(d) => {
                    if let Some(line) = micelio_gossip::chat::ChatLine::from_delivered(&d) {
                        info!(
                            message_id = %line.message_id,
                            sender = %line.node,
                            nick = %line.nick,
                            text = %line.text,
                            "chat received"
                        );
                    }
                }
                None => break,
            },
        }
    }

    info!("stopping");
    ssh.shutdown().await;
    party.shutdown().await;
    gossip.shutdown().await;
    peers
        .shutdown_and_flush()
        .await
        .context("flushing storage")?;
    info!(node_id = %identity.node_id(), "node stopped");
    Ok(())
}
