//! [`NodeId`]: the stable name of a node, derived from its public key.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::keys::PublicKey;

/// Length of a NodeId in its canonical text form (lowercase hex of 32 bytes).
pub const NODE_ID_HEX_LEN: usize = 64;

/// A node's identifier: SHA-256 of its 32-byte Ed25519 public key.
///
/// Its canonical text form ([`fmt::Display`]) is 64 lowercase hex characters;
/// that string is what travels on the wire (`sender_id`, `node_id`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Derives the NodeId of a public key.
    pub fn from_public_key(key: &PublicKey) -> Self {
        Self::from_public_key_bytes(key.as_bytes())
    }

    /// Derives the NodeId of raw public-key bytes, whatever their length.
    ///
    /// The wire checks "`node_id` == hex(SHA-256(`pubkey`))" on untrusted bytes
    /// before they are known to be a valid key; this is that hash.
    pub fn from_public_key_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Wraps 32 raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The canonical 64-character lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first `n` hex characters, for logs and operator displays.
    pub fn short(&self, n: usize) -> String {
        let mut s = self.to_hex();
        s.truncate(n.min(NODE_ID_HEX_LEN));
        s
    }

    /// Whether `text` is exactly the canonical hex form of this id.
    ///
    /// Comparison is on the canonical lowercase form: an uppercase spelling of
    /// the same digest does not match, as on the wire.
    pub fn matches_str(&self, text: &str) -> bool {
        text.len() == NODE_ID_HEX_LEN && text == self.to_hex()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short(16))
    }
}

/// Why a string is not a canonical NodeId.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseNodeIdError {
    /// The string is not 64 characters long.
    #[error("a node id is {NODE_ID_HEX_LEN} hex characters, got {0}")]
    Length(usize),
    /// The string holds something other than lowercase hex digits.
    #[error("a node id holds only lowercase hex digits")]
    NotLowercaseHex,
}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != NODE_ID_HEX_LEN {
            return Err(ParseNodeIdError::Length(s.len()));
        }
        if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseNodeIdError::NotLowercaseHex);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseNodeIdError::NotLowercaseHex)?;
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trip() {
        let id = NodeId::from_public_key_bytes(b"anything");
        let text = id.to_string();
        assert_eq!(text.len(), NODE_ID_HEX_LEN);
        assert_eq!(text.parse::<NodeId>(), Ok(id));
        assert!(id.matches_str(&text));
    }

    #[test]
    fn parse_rejects_bad_text() {
        assert_eq!("abc".parse::<NodeId>(), Err(ParseNodeIdError::Length(3)));
        let upper = "A".repeat(64);
        assert_eq!(
            upper.parse::<NodeId>(),
            Err(ParseNodeIdError::NotLowercaseHex)
        );
        let non_hex = "g".repeat(64);
        assert_eq!(
            non_hex.parse::<NodeId>(),
            Err(ParseNodeIdError::NotLowercaseHex)
        );
        let id = NodeId::from_public_key_bytes(b"x");
        assert!(!id.matches_str(&id.to_hex().to_uppercase()));
    }

    #[test]
    fn short_and_debug() {
        let id = NodeId::from_bytes([0xab; 32]);
        assert_eq!(id.short(8), "abababab");
        assert_eq!(id.short(1000).len(), 64);
        assert_eq!(format!("{id:?}"), "NodeId(abababababababab)");
    }
}
