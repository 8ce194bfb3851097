//! A program that embeds micelio-state over the transport and gossip
//! crates: two nodes in one process, meshed over real TCP on 127.0.0.1.
//! One writes, the other sees the change arrive, reads, scans and lists the
//! members; then both stop in order (state, gossip, peers).
//!
//! Run it with `cargo run -p micelio-state --example embed`.

// An example talks to whoever runs it.
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use micelio_gossip::{Gossip, GossipConfig};
use micelio_identity::Identity;
use micelio_state::store::{MemoryStateStore, SledStateStore, StateStore};
use micelio_state::{State, StateConfig};
use micelio_transport::{PeerManager, TcpTransport, TransportConfig};
use micelio_wire::limits::FEATURE_STATE_V1;

/// One embedded node: its peer manager, gossip and state service.
struct Node {
    peers: PeerManager,
    gossip: Gossip,
    state: State,
}

impl Node {
    /// Starts a node listening on an ephemeral loopback port, dialling
    /// `bootstrap` if given, with its state in `store`.
    async fn start(
        name: &str,
        bootstrap: Option<String>,
        store: Box<dyn StateStore>,
    ) -> Result<Node, Box<dyn Error>> {
        let identity = Arc::new(Identity::generate()?);
        let mut transport = TransportConfig::new(Some("127.0.0.1:0".to_owned()));
        transport.bootstrap = bootstrap.into_iter().collect();
        // Say in the hello that this node runs the state service, so that
        // micelio peers reconcile with it by range sync (type 16).
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
        let mut config = StateConfig::default();
        config.node.name = name.to_owned();
        config.node.addr = peers.local_addr().unwrap_or_default().to_owned();
        config.node.version = env!("CARGO_PKG_VERSION").to_owned();
        let state = State::spawn(identity, config, store, gossip.clone(), peers.clone()).await?;
        Ok(Node {
            peers,
            gossip,
            state,
        })
    }

    /// Stops the node: state first (it tells the mesh it left), then
    /// gossip, then the connections.
    async fn stop(&self) {
        self.state.shutdown().await;
        self.gossip.shutdown().await;
        self.peers.shutdown().await;
    }
}

/// The whole example; `main` runs it, and a test of this crate too.
pub(crate) async fn run() -> Result<(), Box<dyn Error>> {
    // Node a keeps its state in a sled database (opened off the runtime:
    // opening is blocking), node b in memory.
    let dir = std::env::temp_dir().join(format!("micelio-embed-{}", std::process::id()));
    let path = dir.clone();
    let sled = tokio::task::spawn_blocking(move || SledStateStore::open(&path, 8 << 20)).await??;
    let a = Node::start("a", None, Box::new(sled)).await?;
    let a_addr = a.peers.local_addr().unwrap_or_default().to_owned();
    let b = Node::start("b", Some(a_addr), Box::new(MemoryStateStore::new())).await?;

    // b watches for changes before a writes.
    let mut changes = b.state.subscribe();
    let written = a.state.set("greeting", "hello from a").await?;
    println!("a wrote {} (ts {}), durable", written.key, written.ts);

    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match changes.recv().await {
                Ok(change) if change.entry.key == written.key => return Ok(change),
                Ok(_) => {} // membership keys, heartbeats, …
                Err(e) => return Err(e),
            }
        }
    })
    .await??;
    println!(
        "b received {} = {:?} by {:?}",
        seen.entry.key,
        String::from_utf8_lossy(&seen.entry.value),
        seen.origin
    );

    // Reads, prefix scans and members.
    let got = b.state.get(&written.key).await?.ok_or("b lost the entry")?;
    assert_eq!(&got.value[..], b"hello from a");
    let of_a = b
        .state
        .scan(&format!("{}/", a.state.node_id()), 100)
        .await?;
    println!("b holds {} entries of a's namespace", of_a.len());
    for m in b.state.members().await? {
        println!(
            "member {} {:?} is {}",
            m.node_id.short(12),
            m.name,
            m.liveness
        );
    }

    // A delete is a tombstone that reaches b like a write.
    a.state.delete("greeting").await?;
    tokio::time::timeout(Duration::from_secs(20), async {
        while b.state.get(&written.key).await.ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    println!("b saw the delete");

    b.stop().await;
    a.stop().await;
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run().await
}
