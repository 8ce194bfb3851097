//! Builders of in-process test nodes on a [`MemoryNetwork`]: one place
//! for what every layer's tests (and the xtask harness) used to write
//! again — a [`PeerManager`] with a fixed-seed identity and
//! [`TransportConfig::for_tests`], links made and awaited, links cut and
//! restored.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use micelio_transport::memory::{MemoryMesh, link};
//!
//! let mesh = MemoryMesh::new();
//! let a = mesh.spawn(1).await?;
//! let b = mesh.spawn(2).await?;
//! link(&a.peers, &b.peers, Duration::from_secs(5)).await?;
//! mesh.cut(&a.peers, &b.peers);
//! a.peers.shutdown().await;
//! b.peers.shutdown().await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use micelio_identity::{Identity, NodeId};
use tokio::sync::mpsc;

use super::MemoryNetwork;
use crate::error::{DialError, TransportError};
use crate::{PeerEvent, PeerManager, PeerStore, TransportConfig};

/// How often [`link`] looks at both managers while it waits.
const LINK_POLL: Duration = Duration::from_millis(10);

/// Periodic work that must not change a topology built by hand: peer
/// exchange and discovery every hour (they never fire in a test).
pub const QUIET: Duration = Duration::from_secs(3600);

/// A simulated network and the nodes a test spawns on it.
#[derive(Clone, Debug, Default)]
pub struct MemoryMesh {
    net: MemoryNetwork,
}

/// One spawned test node: its identity, its manager and the manager's
/// events (to hand to a consumer such as gossip, or to read directly).
#[derive(Debug)]
#[must_use = "a node's manager runs until shut down"]
pub struct MemoryNode {
    /// The node's fixed-seed identity.
    pub identity: Arc<Identity>,
    /// The node's peer manager.
    pub peers: PeerManager,
    /// What the manager reports.
    pub events: mpsc::Receiver<PeerEvent>,
}

impl MemoryNode {
    /// The node's id.
    pub fn node_id(&self) -> NodeId {
        *self.identity.node_id()
    }
}

/// Why [`link`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkUpError {
    /// The node that dials has no listening address to dial.
    #[error("the node to dial is not listening")]
    NotListening,
    /// The dial failed.
    #[error("dial: {0}")]
    Dial(#[from] DialError),
    /// Dialled, but the two managers did not both see the connection in
    /// time.
    #[error("link not up on both sides within {0:?}")]
    Timeout(Duration),
}

impl MemoryMesh {
    /// A mesh on a new, empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// The network, to cut links by id or to read its counters.
    pub fn network(&self) -> &MemoryNetwork {
        &self.net
    }

    /// The identity of seed `seed`: `Identity::from_seed([seed; 32])`.
    pub fn identity(seed: u8) -> Arc<Identity> {
        Arc::new(Identity::from_seed([seed; 32]))
    }

    /// The simulated listening address of the node of `seed`.
    pub fn address(seed: u8) -> String {
        format!("127.0.1.{seed}:4000")
    }

    /// [`TransportConfig::for_tests`] listening on [`MemoryMesh::address`],
    /// with peer exchange and discovery [`QUIET`] so that a topology built
    /// with [`link`] stays as built.
    pub fn config(seed: u8) -> TransportConfig {
        TransportConfig {
            listen: Some(Self::address(seed)),
            exchange_interval: QUIET,
            discovery_interval: QUIET,
            ..TransportConfig::for_tests()
        }
    }

    /// Spawns the node of `seed` with [`MemoryMesh::config`].
    ///
    /// # Errors
    /// As [`PeerManager::spawn`] (its address is taken, for instance).
    pub async fn spawn(&self, seed: u8) -> Result<MemoryNode, TransportError> {
        self.spawn_with(Self::identity(seed), Self::config(seed), None)
            .await
    }

    /// Spawns a node of any identity, configuration and store.
    ///
    /// # Errors
    /// As [`PeerManager::spawn`].
    pub async fn spawn_with(
        &self,
        identity: Arc<Identity>,
        config: TransportConfig,
        store: Option<Box<dyn PeerStore>>,
    ) -> Result<MemoryNode, TransportError> {
        let transport = Arc::new(self.net.transport(&identity));
        let (peers, events) =
            PeerManager::spawn(identity.clone(), transport, config, store).await?;
        Ok(MemoryNode {
            identity,
            peers,
            events,
        })
    }

    /// Cuts the link between two nodes (see [`MemoryNetwork::cut`]).
    pub fn cut(&self, a: &PeerManager, b: &PeerManager) {
        self.net.cut(a.node_id(), b.node_id());
    }

    /// Restores the link between two nodes (see [`MemoryNetwork::restore`]).
    pub fn restore(&self, a: &PeerManager, b: &PeerManager) {
        self.net.restore(a.node_id(), b.node_id());
    }
}

/// Whether `a` and `b` are connected, as both of them see it.
pub fn linked(a: &PeerManager, b: &PeerManager) -> bool {
    a.is_connected(b.node_id()) && b.is_connected(a.node_id())
}

/// `a` dials `b`'s listening address, then waits (on tokio time, so for
/// free under `tokio::time::pause`) until both managers have registered
/// the connection. Works on any transport, not only the in-memory one.
///
/// Cancel safety: safe to drop; a dial under way may still complete.
///
/// # Errors
/// [`LinkUpError`] when `b` does not listen, the dial fails, or the link
/// is not up on both sides `within` the bound.
pub async fn link(a: &PeerManager, b: &PeerManager, within: Duration) -> Result<(), LinkUpError> {
    let addr = b.local_addr().ok_or(LinkUpError::NotListening)?.to_owned();
    let deadline = tokio::time::Instant::now() + within;
    match tokio::time::timeout(within, a.dial(&addr)).await {
        Ok(Ok(_) | Err(DialError::Duplicate(_))) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(LinkUpError::Timeout(within)),
    }
    while !linked(a, b) {
        if tokio::time::Instant::now() >= deadline {
            return Err(LinkUpError::Timeout(within));
        }
        tokio::time::sleep(LINK_POLL).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn linked_cut_and_restored() {
        let mesh = MemoryMesh::new();
        let a = mesh.spawn(1).await.unwrap();
        let b = mesh.spawn(2).await.unwrap();
        assert_eq!(a.node_id(), *Identity::from_seed([1; 32]).node_id());
        assert_eq!(a.peers.local_addr(), Some("127.0.1.1:4000"));
        link(&a.peers, &b.peers, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(linked(&a.peers, &b.peers));
        // Linking again is not an error: the existing link stands.
        link(&b.peers, &a.peers, Duration::from_secs(5))
            .await
            .unwrap();
        mesh.cut(&a.peers, &b.peers);
        assert!(mesh.network().is_cut(a.peers.node_id(), b.peers.node_id()));
        assert!(matches!(
            link(&a.peers, &b.peers, Duration::from_secs(5)).await,
            Err(LinkUpError::Dial(_))
        ));
        mesh.restore(&a.peers, &b.peers);
        link(&a.peers, &b.peers, Duration::from_secs(5))
            .await
            .unwrap();
        a.peers.shutdown().await;
        b.peers.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_does_not_listen_cannot_be_dialled() {
        let mesh = MemoryMesh::new();
        let a = mesh.spawn(1).await.unwrap();
        let mut config = MemoryMesh::config(2);
        config.listen = None;
        let b = mesh
            .spawn_with(MemoryMesh::identity(2), config, None)
            .await
            .unwrap();
        assert!(matches!(
            link(&a.peers, &b.peers, Duration::from_secs(1)).await,
            Err(LinkUpError::NotListening)
        ));
        link(&b.peers, &a.peers, Duration::from_secs(5))
            .await
            .unwrap();
        a.peers.shutdown().await;
        b.peers.shutdown().await;
    }
}
