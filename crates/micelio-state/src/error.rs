//! Why an entry was refused, and why a local write failed.

use micelio_wire::limits::MAX_LAMPORT_TS;

/// Why a received entry was refused. Each has a stable label for counters
/// ([`Reject::label`]); refused entries are never stored or forwarded by the
/// state layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    /// The payload does not decode, or a type-6 message carries no entry.
    #[error("malformed: {0}")]
    Malformed(String),
    /// `author_pubkey` is not a valid 32-byte Ed25519 key.
    #[error("author key: {0}")]
    AuthorKey(String),
    /// `node_id` is not hex(SHA-256(`author_pubkey`)).
    #[error("author_pubkey does not hash to node_id")]
    AuthorMismatch,
    /// The key is outside the author's namespace `<node_id>/`.
    #[error("key is outside the author's namespace")]
    OutsideNamespace,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The key (prefix included) is over the limit.
    #[error("key of {len} bytes is over the limit of {max}")]
    KeyTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is over the limit.
    #[error("value of {len} bytes is over the limit of {max}")]
    ValueTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The Lamport timestamp is above 2^62.
    #[error("timestamp {0} is above {MAX_LAMPORT_TS}")]
    TimestampTooLarge(u64),
    /// The map holds its configured maximum of entries and the key is new.
    #[error("the map is full ({0} entries)")]
    Full(u64),
}

impl Reject {
    /// Every label, in a fixed order (for counters and `/stats`).
    pub const LABELS: [&'static str; 9] = [
        "malformed",
        "author_key",
        "author_mismatch",
        "outside_namespace",
        "bad_signature",
        "key_too_long",
        "value_too_long",
        "timestamp_too_large",
        "full",
    ];

    /// A short stable name for counters.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::AuthorKey(_) => "author_key",
            Self::AuthorMismatch => "author_mismatch",
            Self::OutsideNamespace => "outside_namespace",
            Self::BadSignature => "bad_signature",
            Self::KeyTooLong { .. } => "key_too_long",
            Self::ValueTooLong { .. } => "value_too_long",
            Self::TimestampTooLarge(_) => "timestamp_too_large",
            Self::Full(_) => "full",
        }
    }
}

/// Why a local write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The key is empty or holds a control character.
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// The full key (`<node_id>/` prefix included) is over the limit.
    #[error("key of {len} bytes (with the 65-byte namespace prefix) is over the limit of {max}")]
    KeyTooLong {
        /// Its length, prefix included.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is over the limit.
    #[error("value of {len} bytes is over the limit of {max}")]
    ValueTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The Lamport clock reached 2^62: no timestamp is left that peers would
    /// accept.
    #[error("the Lamport clock is exhausted (at {0})")]
    ClockExhausted(u64),
    /// The map holds its configured maximum of entries and the key is new.
    #[error("the map is full ({0} entries)")]
    Full(u64),
}
