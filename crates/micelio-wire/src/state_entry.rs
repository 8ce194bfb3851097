//! Signing and verification of [`StateEntry`] (the replicated map's unit).
//!
//! Signed bytes = `key` (UTF-8) ‖ `value` ‖ `lamport_ts` (u64 BE) ‖
//! `node_id` (UTF-8) ‖ `deleted` (one byte, 0 or 1).

use bytes::Bytes;
use micelio_identity::{Identity, NodeId, PublicKey};

use crate::error::EntryError;
use crate::proto::StateEntry;

impl StateEntry {
    /// The exact bytes the entry's signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.key.len() + self.value.len() + 8 + self.node_id.len() + 1);
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&self.value);
        out.extend_from_slice(&self.lamport_ts.to_be_bytes());
        out.extend_from_slice(self.node_id.as_bytes());
        out.push(u8::from(self.deleted));
        out
    }

    /// Sets `node_id` and `author_pubkey` from `identity`, then signs.
    pub fn sign(&mut self, identity: &Identity) {
        self.node_id = identity.node_id().to_string();
        self.author_pubkey = Bytes::copy_from_slice(identity.public_key().as_bytes());
        self.signature = Bytes::copy_from_slice(&identity.sign(&self.signed_bytes()));
    }

    /// Checks authorship and signature: `author_pubkey` is a 32-byte key that
    /// hashes to `node_id`, `key` lies in the namespace `<node_id>/`, and the
    /// signature verifies. Returns the author's key.
    ///
    /// Size limits and timestamp bounds are the state layer's policy and are
    /// not checked here.
    ///
    /// # Errors
    /// [`EntryError`] naming the first check that failed.
    pub fn verify(&self) -> Result<PublicKey, EntryError> {
        let key = PublicKey::from_bytes(&self.author_pubkey)?;
        if !NodeId::from_public_key(&key).matches_str(&self.node_id) {
            return Err(EntryError::AuthorMismatch);
        }
        let in_namespace = self
            .key
            .strip_prefix(self.node_id.as_str())
            .is_some_and(|rest| rest.starts_with('/'));
        if !in_namespace {
            return Err(EntryError::OutsideNamespace);
        }
        key.verify(&self.signed_bytes(), &self.signature)?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micelio_identity::KeyError;

    fn entry(id: &Identity, suffix: &str) -> StateEntry {
        let mut e = StateEntry {
            key: format!("{}/{suffix}", id.node_id()),
            value: Bytes::from_static(b"v"),
            lamport_ts: 4,
            ..Default::default()
        };
        e.sign(id);
        e
    }

    #[test]
    fn sign_then_verify() {
        let id = Identity::from_seed([6; 32]);
        let e = entry(&id, "color");
        assert_eq!(e.verify().unwrap(), id.public_key());
    }

    #[test]
    fn every_check_fails_on_its_own() {
        let id = Identity::from_seed([6; 32]);
        let other = Identity::from_seed([7; 32]);
        let good = entry(&id, "k");

        let mut e = good.clone();
        e.author_pubkey = Bytes::from_static(&[0; 5]);
        assert_eq!(
            e.verify(),
            Err(EntryError::Key(KeyError::PublicKeyLength(5)))
        );

        let mut e = good.clone();
        e.author_pubkey = Bytes::copy_from_slice(other.public_key().as_bytes());
        assert_eq!(e.verify(), Err(EntryError::AuthorMismatch));

        let mut e = good.clone();
        e.key = format!("{}/k", other.node_id());
        assert_eq!(e.verify(), Err(EntryError::OutsideNamespace));
        e.key = id.node_id().to_string();
        assert_eq!(e.verify(), Err(EntryError::OutsideNamespace));
        e.key = format!("{}x/k", id.node_id());
        assert_eq!(e.verify(), Err(EntryError::OutsideNamespace));

        let mut e = good.clone();
        e.deleted = true;
        assert_eq!(e.verify(), Err(EntryError::Key(KeyError::BadSignature)));
        let mut e = good;
        e.value = Bytes::from_static(b"w");
        assert_eq!(e.verify(), Err(EntryError::Key(KeyError::BadSignature)));
    }
}
