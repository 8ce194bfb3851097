//! Test nodes with gossip on the in-memory transport (cargo feature
//! `test-utils`, for dev-dependencies and the xtask harness only).
//!
//! A [`GossipNode`] is a [`MemoryMesh`] node with a [`Gossip`] service on
//! its manager's events; [`GossipNode::link`] connects two and waits until
//! both gossip engines hold a key per connected peer, so that what a test
//! originates next reaches the other side.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use micelio_gossip::test_utils::GossipNode;
//! use micelio_transport::memory::MemoryMesh;
//!
//! let mesh = MemoryMesh::new();
//! let a = GossipNode::spawn(&mesh, 1).await?;
//! let b = GossipNode::spawn(&mesh, 2).await?;
//! a.link(&b, Duration::from_secs(5)).await?;
//! a.shutdown().await;
//! b.shutdown().await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use micelio_identity::{Identity, NodeId};
use micelio_transport::memory::{LinkUpError, MemoryMesh, link};
use micelio_transport::{PeerManager, TransportConfig, TransportError};

use crate::{Gossip, GossipConfig};

/// How often [`GossipNode::ready`] asks the gossip task for its stats.
const READY_POLL: Duration = Duration::from_millis(10);

/// A test node: a fixed-seed identity, its peer manager on a
/// [`MemoryMesh`], and gossip over it.
#[derive(Clone, Debug)]
#[must_use = "a node's tasks run until shut down"]
pub struct GossipNode {
    /// The node's identity.
    pub identity: Arc<Identity>,
    /// The node's peer manager.
    pub peers: PeerManager,
    /// The node's gossip service.
    pub gossip: Gossip,
}

impl GossipNode {
    /// The node of `seed`: [`MemoryMesh::config`] and
    /// [`GossipConfig::default`].
    ///
    /// # Errors
    /// As [`PeerManager::spawn`].
    pub async fn spawn(mesh: &MemoryMesh, seed: u8) -> Result<Self, TransportError> {
        Self::spawn_with(
            mesh,
            MemoryMesh::identity(seed),
            MemoryMesh::config(seed),
            GossipConfig::default(),
        )
        .await
    }

    /// A node of any identity and configurations.
    ///
    /// # Errors
    /// As [`PeerManager::spawn`].
    pub async fn spawn_with(
        mesh: &MemoryMesh,
        identity: Arc<Identity>,
        transport: TransportConfig,
        gossip: GossipConfig,
    ) -> Result<Self, TransportError> {
        let node = mesh.spawn_with(identity, transport, None).await?;
        let gossip = Gossip::spawn(
            node.identity.clone(),
            gossip,
            node.peers.clone(),
            node.events,
        );
        Ok(Self {
            identity: node.identity,
            peers: node.peers,
            gossip,
        })
    }

    /// The node's id.
    pub fn node_id(&self) -> NodeId {
        *self.identity.node_id()
    }

    /// Dials `other` (see [`link`]) and waits until both gossip engines are
    /// [`ready`](GossipNode::ready) for all their connected peers.
    ///
    /// Cancel safety: safe to drop.
    ///
    /// # Errors
    /// As [`link`]; [`LinkUpError::Timeout`] also when a gossip engine is
    /// not ready `within` the bound.
    pub async fn link(&self, other: &GossipNode, within: Duration) -> Result<(), LinkUpError> {
        link(&self.peers, &other.peers, within).await?;
        for n in [self, other] {
            if !n.ready(n.peers.peer_count(), within).await {
                return Err(LinkUpError::Timeout(within));
            }
        }
        Ok(())
    }

    /// Waits until the manager has at least `peers` connected peers and
    /// the gossip keyring at least `peers` keys, polling on tokio time;
    /// whether that happened `within` the bound (false also when the
    /// gossip task has stopped).
    ///
    /// Cancel safety: safe to drop.
    pub async fn ready(&self, peers: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let keys = match self.gossip.stats().await {
                Ok(s) => usize::try_from(s.keys).unwrap_or(usize::MAX),
                Err(_) => return false,
            };
            if self.peers.peer_count() >= peers && keys >= peers {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Stops gossip, then the peer manager.
    pub async fn shutdown(&self) {
        self.gossip.shutdown().await;
        self.peers.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn linked_nodes_are_ready_and_a_lone_one_is_not() {
        let mesh = MemoryMesh::new();
        let a = GossipNode::spawn(&mesh, 1).await.unwrap();
        let b = GossipNode::spawn(&mesh, 2).await.unwrap();
        assert!(!a.ready(1, Duration::from_secs(1)).await, "no peer yet");
        a.link(&b, Duration::from_secs(5)).await.unwrap();
        assert!(a.ready(1, Duration::ZERO).await && b.ready(1, Duration::ZERO).await);
        assert_eq!(a.node_id(), *Identity::from_seed([1; 32]).node_id());
        b.shutdown().await;
        assert!(!b.ready(0, Duration::from_secs(1)).await, "stopped");
        a.shutdown().await;
    }
}
