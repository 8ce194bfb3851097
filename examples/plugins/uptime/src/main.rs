//! `micelio-uptime-node`: a program that builds a micelio node from the
//! crates — identity, Noise over TCP, gossip, the replicated state, the
//! partyline and its SSH server — and registers an in-process plugin, the
//! [`micelio_example_uptime::Uptime`] plugin, on it.
//!
//! ```text
//! micelio-uptime-node --data-dir DIR [--name NAME] [--listen ADDR]
//!                     [--ssh-listen ADDR] [--bootstrap ADDR[,ADDR…]]
//! ```
//!
//! It keeps its identity in `DIR/identity/` and reads SSH keys from
//! `DIR/authorized_keys` (created empty); its state is in memory. It
//! prints `peers <addr>` and `ssh <addr>` once listening, then runs until
//! SIGINT or SIGTERM and stops in order: SSH, partyline, plugins, state,
//! gossip, connections. Then, from any machine with a key listed:
//!
//! ```text
//! ssh -p <port> you@127.0.0.1 /uptime
//! ```
//!
//! It is an example of embedding: a real node is the `micelio` binary,
//! which does the same with every setting of its config file.

// An example program talks to whoever runs it.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use micelio_gossip::{Gossip, GossipConfig};
use micelio_identity::KeyFiles;
use micelio_partyline::{Partyline, PartylineConfig};
use micelio_plugins::PluginHost;
use micelio_ssh::{SshConfig, SshServer};
use micelio_state::store::MemoryStateStore;
use micelio_state::{State, StateConfig};
use micelio_transport::{PeerManager, TcpTransport, TransportConfig};
use micelio_wire::limits::FEATURE_STATE_V1;

struct Args {
    data_dir: std::path::PathBuf,
    name: String,
    listen: String,
    ssh_listen: SocketAddr,
    bootstrap: Vec<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        data_dir: std::path::PathBuf::new(),
        name: "uptime-node".to_owned(),
        listen: "127.0.0.1:0".to_owned(),
        ssh_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        bootstrap: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data-dir" => a.data_dir = value()?.into(),
            "--name" => a.name = value()?,
            "--listen" => a.listen = value()?,
            "--ssh-listen" => a.ssh_listen = value()?.parse().context("--ssh-listen")?,
            "--bootstrap" => a.bootstrap.extend(value()?.split(',').map(str::to_owned)),
            other => bail!("unknown flag {other} (see the crate's documentation)"),
        }
    }
    if a.data_dir.as_os_str().is_empty() {
        bail!("--data-dir is required");
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = args()?;
    std::fs::create_dir_all(&args.data_dir)?;
    let (identity, _) = KeyFiles::new(&args.data_dir)
        .load_or_create()
        .context("identity")?;
    let identity = Arc::new(identity);

    // Transport and gossip.
    let mut transport = TransportConfig::new(Some(args.listen.clone()));
    transport.bootstrap.clone_from(&args.bootstrap);
    transport.features.push(FEATURE_STATE_V1.to_owned());
    let tcp = TcpTransport::new(
        identity.clone(),
        transport.dial_timeout,
        transport.hello_timeout,
    );
    let (peers, events) =
        PeerManager::spawn(identity.clone(), Arc::new(tcp), transport, None).await?;
    let gossip = Gossip::spawn(
        identity.clone(),
        GossipConfig::default(),
        peers.clone(),
        events,
    );

    // The state, in memory.
    let mut config = StateConfig::default();
    config.node.name.clone_from(&args.name);
    config.node.addr = peers.advertise_addr().unwrap_or_default().to_owned();
    config.node.version = env!("CARGO_PKG_VERSION").to_owned();
    let state = State::spawn(
        identity.clone(),
        config,
        Box::new(MemoryStateStore::new()),
        gossip.clone(),
        peers.clone(),
    )
    .await?;

    // The partyline with the state commands, and the plugin.
    let party = Partyline::spawn(
        PartylineConfig::new(&args.name),
        gossip.clone(),
        peers.clone(),
    )
    .await?;
    party.attach_state(state.clone())?;
    let mut host = PluginHost::new();
    host.add(Arc::new(micelio_example_uptime::Uptime::new(env!(
        "CARGO_PKG_VERSION"
    ))))?;
    let plugins = host.start(&party, state.clone()).await?;

    // SSH.
    let keys = args.data_dir.join("authorized_keys");
    if !keys.exists() {
        std::fs::write(&keys, "")?;
    }
    let ssh = SshServer::spawn(
        &identity,
        SshConfig::new(args.ssh_listen, keys),
        party.clone(),
    )
    .await?;
    println!(
        "peers {}\nssh {}",
        peers.local_addr().unwrap_or_default(),
        ssh.local_addr()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    ssh.shutdown().await;
    party.shutdown().await;
    plugins.shutdown().await;
    state.shutdown().await;
    gossip.shutdown().await;
    peers.shutdown().await;
    Ok(())
}
