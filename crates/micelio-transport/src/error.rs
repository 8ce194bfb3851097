//! Error types of the transport crate.

use std::io;

use micelio_wire::{FrameError, MsgType};

use crate::noise::NoiseError;

/// Why a link failed while carrying frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// Noise error (decryption failure, oversized transport message).
    #[error("noise: {0}")]
    Noise(#[from] NoiseError),
    /// A bad frame header: the connection must be closed.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// A well-framed payload that is not an envelope (the frame was skipped).
    #[error("undecodable envelope: {0}")]
    BadEnvelope(String),
    /// The link was closed locally or cut (simulation).
    #[error("link closed")]
    Closed,
}

/// Why a dial, an accept or a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Socket error (refused, unreachable, bind failure, ...).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The dial did not complete in time.
    #[error("dial timed out")]
    DialTimeout,
    /// The Noise handshake failed.
    #[error("noise handshake: {0}")]
    Handshake(#[from] NoiseError),
    /// The Noise handshake did not complete in time.
    #[error("noise handshake timed out")]
    HandshakeTimeout,
    /// An address that is not `host:port`.
    #[error("bad address {0:?}")]
    BadAddress(String),
    /// The listener is closed.
    #[error("listener closed")]
    Closed,
}

/// Why a hello exchange failed; each closes the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The exchange did not complete within the deadline.
    #[error("hello timed out")]
    Timeout,
    /// The peer closed the connection during the exchange.
    #[error("connection closed during hello")]
    Closed,
    /// The link failed.
    #[error("{0}")]
    Link(#[from] LinkError),
    /// Another message arrived where a hello was expected.
    #[error("expected {expected}, got {got}")]
    UnexpectedType {
        /// What was expected.
        expected: MsgType,
        /// What arrived.
        got: MsgType,
    },
    /// The payload is not a `PeerHello`.
    #[error("hello payload does not decode: {0}")]
    Decode(String),
    /// Check 1: `node_id` is not hex(SHA-256(`ed25519_pubkey`)).
    #[error("hello node_id does not match its public key")]
    NodeIdMismatch,
    /// Check 2: the hello key does not convert to the Noise static key.
    #[error("hello key does not match the Noise static key")]
    NoiseKeyMismatch,
    /// Check 3: the envelope signature does not verify with the hello key.
    #[error("hello signature does not verify")]
    BadSignature,
    /// The hello public key is not a valid Ed25519 key.
    #[error("hello public key is invalid")]
    BadPublicKey,
    /// The envelope's `sender_id` is not the hello's `node_id`.
    #[error("hello sender_id differs from its node_id")]
    SenderMismatch,
}

impl HelloError {
    /// A short stable label, for counters.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Link(_) => "link",
            Self::UnexpectedType { .. } => "unexpected_type",
            Self::Decode(_) => "decode",
            Self::NodeIdMismatch => "node_id_mismatch",
            Self::NoiseKeyMismatch => "noise_key_mismatch",
            Self::BadSignature => "bad_signature",
            Self::BadPublicKey => "bad_public_key",
            Self::SenderMismatch => "sender_mismatch",
        }
    }
}

/// Why a dial through the peer manager did not yield a new peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The transport failed.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The hello failed.
    #[error("hello: {0}")]
    Hello(#[from] HelloError),
    /// The address is our own node.
    #[error("connected to ourselves")]
    SelfConnection,
    /// Already connected to that node; the new connection was closed.
    #[error("already connected to {0}")]
    Duplicate(micelio_identity::NodeId),
    /// `max_peers` reached.
    #[error("max_peers reached")]
    TooManyPeers,
    /// The manager is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// Why a message could not be queued for a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Not connected to that peer.
    #[error("not connected")]
    NotConnected,
    /// The peer's send queue is full; the message was dropped (and counted).
    #[error("send queue full")]
    QueueFull,
    /// The envelope does not fit in a frame.
    #[error("{0}")]
    TooLarge(#[from] FrameError),
}
