//! Authenticated, encrypted peer transport for micelio.
//!
//! Layers, bottom up:
//!
//! - [`noise`]: Noise XX (`Noise_XX_25519_ChaChaPoly_BLAKE2s`) over any byte
//!   stream, keyed by the node identity converted to X25519, with the exact
//!   handshake and transport-message framing of protocol v1 (including the
//!   large transport messages the reference sends);
//! - [`Transport`]: how links are made — [`TcpTransport`] for real TCP +
//!   Noise, `memory::MemoryNetwork` (cargo feature `memory`) for
//!   simulations — each yielding a
//!   [`Link`] that carries frames of the micelio wire format;
//! - [`hello`]: the signed hello that binds a NodeId to the Noise key;
//! - [`PeerManager`]: the actor that listens, dials (bootstrap with backoff,
//!   discovery with jitter), keeps at most one connection per peer and at
//!   most `max_peers`, runs keepalives and idle timeouts, exchanges signed
//!   peer lists and persists known peers through a [`PeerStore`] (in
//!   memory or sled) owned by a storage task, off the runtime threads.
//!
//! The crate knows nothing of gossip, state or SSH: it delivers every
//! non-connection message to its consumer as a [`PeerEvent`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use micelio_identity::Identity;
//! use micelio_transport::{PeerEvent, PeerManager, TcpTransport, TransportConfig};
//!
//! let identity = Arc::new(Identity::generate()?);
//! let config = TransportConfig::new(Some("0.0.0.0:4000".into()));
//! let transport = TcpTransport::new(identity.clone(), config.dial_timeout, config.hello_timeout);
//! let (peers, mut events) = PeerManager::spawn(identity, Arc::new(transport), config, None).await?;
//! while let Some(event) = events.recv().await {
//!     if let PeerEvent::Up(peer) = event {
//!         println!("connected to {}", peer.node_id);
//!     }
//! }
//! peers.shutdown().await;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod admission;
mod config;
pub mod discovery;
mod error;
pub mod hello;
mod link;
mod manager;
#[cfg(feature = "memory")]
pub mod memory;
pub mod noise;
mod stats;
pub mod store;
pub mod task;
mod tcp;

pub use config::{
    DEFAULT_DUPLICATE_GRACE, DEFAULT_MAX_PENDING_HANDSHAKES, DEFAULT_MAX_PENDING_PER_HOST,
    DEFAULT_PREAUTH_TIMEOUT, TransportConfig, is_dialable_addr,
};
pub use error::{DialError, HelloError, LinkError, SendError, TransportError};
pub use link::{BoxFuture, Direction, FrameSink, FrameSource, Incoming, Link, Listener, Transport};
pub use manager::{PeerEvent, PeerManager, PeerSummary};
pub use stats::TransportStats;
pub use store::{LoadedPeers, MemoryPeerStore, PeerStore, SledPeerStore, StoreError};
pub use task::{TaskExit, TaskGroup};
pub use tcp::TcpTransport;
