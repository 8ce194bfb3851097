//! The LWW order of entries, the receive checks, and where a key sits in
//! the reconciliation space.

use micelio_identity::{KeyError, NodeId};
use micelio_wire::EntryError;
use micelio_wire::limits::{DEFAULT_STATE_VALUE, MAX_LAMPORT_TS, MAX_STATE_KEY, MAX_STATE_VALUE};
use micelio_wire::proto::StateEntry;
use sha2::{Digest as _, Sha256};

use crate::error::Reject;

/// Limits an entry must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest key in bytes, `<node_id>/` prefix included (256).
    pub max_key: usize,
    /// Largest value in bytes (4,096 by default, at most 60 KiB).
    pub max_value: usize,
    /// Most entries (tombstones included) the map holds; a new key beyond
    /// it is refused, updates of held keys never are.
    pub max_entries: u64,
}

impl Limits {
    /// Default cap of entries: about 350 MiB of index in memory.
    pub const DEFAULT_MAX_ENTRIES: u64 = 2_000_000;

    /// Limits with `max_value` clamped to the 60 KiB ceiling.
    pub fn new(max_value: usize, max_entries: u64) -> Self {
        Self {
            max_key: MAX_STATE_KEY,
            max_value: max_value.min(MAX_STATE_VALUE),
            max_entries,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(DEFAULT_STATE_VALUE, Self::DEFAULT_MAX_ENTRIES)
    }
}

/// Where an entry stands in the last-writer-wins order: the higher `ts`
/// wins; on equal `ts` the greater author (`node`, compared as bytes, which
/// is the order of its lowercase hex); on equal author (one that reused a
/// timestamp, e.g. after losing its store) the greater `tie`, a digest of
/// the signature, so that the order is total and the merge commutative.
/// Equal versions are the same entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Lamport timestamp.
    pub ts: u64,
    /// Author.
    pub node: NodeId,
    /// First 8 bytes of SHA-256 of the signature, big-endian.
    pub tie: u64,
}

impl Version {
    /// The version of an entry (no check made).
    pub fn of(entry: &StateEntry, node: NodeId) -> Self {
        Self {
            ts: entry.lamport_ts,
            node,
            tie: tie_of(&entry.signature),
        }
    }
}

/// The tie-break digest of a signature.
pub(crate) fn tie_of(signature: &[u8]) -> u64 {
    let d = Sha256::digest(signature);
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The position of a key in the reconciliation space: the first 8 bytes of
/// SHA-256 of the key, big-endian. Ranges of positions are what two nodes
/// compare fingerprints of.
pub fn key_position(key: &str) -> u64 {
    let d = Sha256::digest(key.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Runs the receive checks in the reference's order: author key (32 bytes,
/// a valid point), `node_id` = hex(SHA-256(key)), key inside `<node_id>/`,
/// signature; then the key and value sizes; then the timestamp bound
/// (2^62 is accepted, anything above refused). Returns the entry's version.
///
/// # Errors
/// The first check that failed.
pub fn verify_entry(entry: &StateEntry, limits: &Limits) -> Result<Version, Reject> {
    let key = entry.verify().map_err(|e| match e {
        EntryError::AuthorMismatch => Reject::AuthorMismatch,
        EntryError::OutsideNamespace => Reject::OutsideNamespace,
        EntryError::Key(KeyError::BadSignature | KeyError::SignatureLength(_)) => {
            Reject::BadSignature
        }
        EntryError::Key(k) => Reject::AuthorKey(k.to_string()),
        other => Reject::Malformed(other.to_string()),
    })?;
    if entry.key.len() > limits.max_key {
        return Err(Reject::KeyTooLong {
            len: entry.key.len(),
            max: limits.max_key,
        });
    }
    if entry.value.len() > limits.max_value {
        return Err(Reject::ValueTooLong {
            len: entry.value.len(),
            max: limits.max_value,
        });
    }
    if entry.lamport_ts > MAX_LAMPORT_TS {
        return Err(Reject::TimestampTooLarge(entry.lamport_ts));
    }
    Ok(Version::of(entry, NodeId::from_public_key(&key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use micelio_identity::Identity;

    fn signed(id: &Identity, sub: &str, value: &[u8], ts: u64) -> StateEntry {
        let mut e = StateEntry {
            key: format!("{}/{sub}", id.node_id()),
            value: Bytes::copy_from_slice(value),
            lamport_ts: ts,
            ..Default::default()
        };
        e.sign(id);
        e
    }

    #[test]
    fn every_check_has_its_reason() {
        let id = Identity::from_seed([1; 32]);
        let other = Identity::from_seed([2; 32]);
        let limits = Limits::default();
        let good = signed(&id, "k", b"v", 3);
        assert_eq!(verify_entry(&good, &limits).unwrap().ts, 3);

        let mut e = good.clone();
        e.author_pubkey = Bytes::from_static(&[1; 31]);
        assert_eq!(verify_entry(&e, &limits).unwrap_err().label(), "author_key");
        let mut e = good.clone();
        e.author_pubkey = Bytes::copy_from_slice(other.public_key().as_bytes());
        assert_eq!(verify_entry(&e, &limits), Err(Reject::AuthorMismatch));
        let e = {
            let mut e = signed(&id, "k", b"v", 3);
            e.key = format!("{}/k", other.node_id());
            e
        };
        assert_eq!(verify_entry(&e, &limits), Err(Reject::OutsideNamespace));
        let mut e = good.clone();
        e.value = Bytes::from_static(b"w");
        assert_eq!(verify_entry(&e, &limits), Err(Reject::BadSignature));
        let mut e = good.clone();
        e.signature = Bytes::from_static(&[0; 10]);
        assert_eq!(verify_entry(&e, &limits), Err(Reject::BadSignature));

        let long = signed(&id, &"k".repeat(256 - 65 + 1), b"v", 3);
        assert_eq!(
            verify_entry(&long, &limits),
            Err(Reject::KeyTooLong { len: 257, max: 256 })
        );
        let edge = signed(&id, &"k".repeat(256 - 65), b"v", 3);
        assert!(verify_entry(&edge, &limits).is_ok());
        let big = signed(&id, "k", &[7; 4097], 3);
        assert_eq!(
            verify_entry(&big, &limits),
            Err(Reject::ValueTooLong {
                len: 4097,
                max: 4096
            })
        );
        assert!(verify_entry(&big, &Limits::new(60 * 1024, 10)).is_ok());
        let edge = signed(&id, "k", b"v", MAX_LAMPORT_TS);
        assert!(verify_entry(&edge, &limits).is_ok());
        let over = signed(&id, "k", b"v", MAX_LAMPORT_TS + 1);
        assert_eq!(
            verify_entry(&over, &limits),
            Err(Reject::TimestampTooLarge(MAX_LAMPORT_TS + 1))
        );
    }

    #[test]
    fn the_order_is_ts_then_author_then_tie() {
        let a = NodeId::from_public_key_bytes(b"a");
        let b = NodeId::from_public_key_bytes(b"b");
        let (lo, hi) = if a.to_string() < b.to_string() {
            (a, b)
        } else {
            (b, a)
        };
        let v = |ts, node, tie| Version { ts, node, tie };
        assert!(v(2, lo, 0) > v(1, hi, 9));
        assert!(v(2, hi, 0) > v(2, lo, 9));
        assert!(v(2, hi, 5) > v(2, hi, 4));
        // Byte order of ids is the order of their hex strings.
        assert_eq!(lo < hi, lo.to_string() < hi.to_string());
    }

    #[test]
    fn the_value_limit_is_clamped_to_60_kib() {
        assert_eq!(Limits::new(1 << 20, 1).max_value, MAX_STATE_VALUE);
    }
}
