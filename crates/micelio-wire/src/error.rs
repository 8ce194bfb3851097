//! Error types of the wire crate.

use micelio_identity::KeyError;

/// A frame header or length that closes the connection, or a payload too
/// large to frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first two bytes are not `"MI"`.
    #[error("bad frame magic 0x{0:04x}")]
    BadMagic(u16),
    /// A frame version this implementation does not speak.
    #[error("unsupported frame version {0}")]
    BadVersion(u16),
    /// A declared (or, when encoding, actual) payload length over the limit.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The length found.
        len: u64,
        /// The limit in force.
        max: usize,
    },
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// `message_id` is empty.
    #[error("empty message_id")]
    EmptyMessageId,
    /// `message_id` is longer than the limit.
    #[error("message_id of {0} bytes exceeds {max}", max = crate::limits::MAX_ID_LEN)]
    MessageIdTooLong(usize),
    /// `sender_id` is empty.
    #[error("empty sender_id")]
    EmptySenderId,
    /// `sender_id` is longer than the limit.
    #[error("sender_id of {0} bytes exceeds {max}", max = crate::limits::MAX_ID_LEN)]
    SenderIdTooLong(usize),
    /// The payload is larger than a gossip message may carry.
    #[error("payload of {0} bytes exceeds {max}", max = crate::limits::MAX_GOSSIP_PAYLOAD)]
    PayloadTooLarge(usize),
    /// `sender_pubkey` is absent.
    #[error("no sender_pubkey")]
    NoSenderKey,
    /// `sender_pubkey` does not hash to `sender_id`.
    #[error("sender_pubkey does not hash to sender_id")]
    SenderKeyMismatch,
    /// A key or signature is malformed, or the signature does not verify.
    #[error("{0}")]
    Key(#[from] KeyError),
}

/// Why a state entry was refused by its signature checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// `node_id` is not hex(SHA-256(`author_pubkey`)).
    #[error("author_pubkey does not hash to node_id")]
    AuthorMismatch,
    /// The key is outside the author's namespace `<node_id>/`.
    #[error("key is outside the author's namespace")]
    OutsideNamespace,
    /// The author key or signature is malformed, or does not verify.
    #[error("{0}")]
    Key(#[from] KeyError),
}

/// Anything that can go wrong turning received bytes into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A bad frame.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// Bytes that are not a valid protobuf encoding of the expected message.
    #[error("protobuf: {0}")]
    Decode(DecodeError),
}

/// Why bytes are not a valid protobuf encoding (the decoder's own words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub(crate) prost::DecodeError);
