//! Envelope construction, signing and verification.
//!
//! Signed bytes = `message_id` (UTF-8) ‖ `sender_id` (UTF-8) ‖ `lamport_ts`
//! (u64 BE) ‖ `msg_type` (u32 BE) ‖ `payload`. `hop_count`, `signature` and
//! `sender_pubkey` are not signed, so relays can decrement the hop count and
//! attach the key without breaking the originator's signature.

use bytes::Bytes;
use micelio_identity::{Identity, NodeId, PublicKey};

use crate::error::EnvelopeError;
use crate::limits::{DEFAULT_MAX_HOPS, MAX_GOSSIP_PAYLOAD, MAX_ID_LEN};
use crate::msg_type::MsgType;
use crate::proto::Envelope;

impl Envelope {
    /// The exact bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.message_id.len() + self.sender_id.len() + 8 + 4 + self.payload.len(),
        );
        self.write_signed_bytes(&mut out);
        out
    }

    /// Appends the signed bytes to `out` (reuse a buffer on hot paths).
    pub fn write_signed_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.message_id.as_bytes());
        out.extend_from_slice(self.sender_id.as_bytes());
        out.extend_from_slice(&self.lamport_ts.to_be_bytes());
        out.extend_from_slice(&self.msg_type.to_be_bytes());
        out.extend_from_slice(&self.payload);
    }

    /// Sets `signature` to `identity`'s signature over the signed bytes.
    ///
    /// `sender_id` is not changed: set it first (the builder does).
    pub fn sign(&mut self, identity: &Identity) {
        let sig = identity.sign(&self.signed_bytes());
        self.signature = Bytes::copy_from_slice(&sig);
    }

    /// Verifies the signature with a known key.
    ///
    /// # Errors
    /// [`EnvelopeError::Key`] when the signature is malformed or does not
    /// verify.
    pub fn verify_with(&self, key: &PublicKey) -> Result<(), EnvelopeError> {
        Ok(key.verify(&self.signed_bytes(), &self.signature)?)
    }

    /// Verifies the signature with the embedded `sender_pubkey`, after
    /// checking that the key hashes to `sender_id`; returns that key.
    ///
    /// # Errors
    /// [`EnvelopeError::NoSenderKey`], [`EnvelopeError::SenderKeyMismatch`] or
    /// [`EnvelopeError::Key`].
    pub fn verify_embedded(&self) -> Result<PublicKey, EnvelopeError> {
        let key = self.embedded_sender_key()?;
        self.verify_with(&key)?;
        Ok(key)
    }

    /// The embedded `sender_pubkey`, if it is a valid key that hashes to
    /// `sender_id` (the signature is not checked).
    ///
    /// # Errors
    /// [`EnvelopeError::NoSenderKey`], [`EnvelopeError::SenderKeyMismatch`] or
    /// [`EnvelopeError::Key`] for a key that is not a curve point.
    pub fn embedded_sender_key(&self) -> Result<PublicKey, EnvelopeError> {
        if self.sender_pubkey.is_empty() {
            return Err(EnvelopeError::NoSenderKey);
        }
        if !NodeId::from_public_key_bytes(&self.sender_pubkey).matches_str(&self.sender_id) {
            return Err(EnvelopeError::SenderKeyMismatch);
        }
        Ok(PublicKey::from_bytes(&self.sender_pubkey)?)
    }

    /// Checks the size limits a gossip message must meet: `message_id` and
    /// `sender_id` non-empty and at most [`MAX_ID_LEN`] bytes, payload at most
    /// [`MAX_GOSSIP_PAYLOAD`].
    ///
    /// # Errors
    /// The first limit broken.
    pub fn check_gossip_limits(&self) -> Result<(), EnvelopeError> {
        match self.message_id.len() {
            0 => return Err(EnvelopeError::EmptyMessageId),
            n if n > MAX_ID_LEN => return Err(EnvelopeError::MessageIdTooLong(n)),
            _ => {}
        }
        match self.sender_id.len() {
            0 => return Err(EnvelopeError::EmptySenderId),
            n if n > MAX_ID_LEN => return Err(EnvelopeError::SenderIdTooLong(n)),
            _ => {}
        }
        if self.payload.len() > MAX_GOSSIP_PAYLOAD {
            return Err(EnvelopeError::PayloadTooLarge(self.payload.len()));
        }
        Ok(())
    }

    /// The message type.
    pub fn kind(&self) -> MsgType {
        MsgType::from_u32(self.msg_type)
    }

    /// A keepalive (type 5): no id, no signature, nothing but the type.
    pub fn keepalive() -> Self {
        Self {
            msg_type: MsgType::Keepalive.as_u32(),
            ..Self::default()
        }
    }
}

/// Builds and signs an [`Envelope`].
///
/// ```
/// use micelio_identity::Identity;
/// use micelio_wire::{EnvelopeBuilder, MsgType};
///
/// let me = Identity::from_seed([2; 32]);
/// let env = EnvelopeBuilder::new(MsgType::PeerExchange, Vec::new()).sign(&me);
/// assert_eq!(env.hop_count, 1);
/// assert_eq!(env.sender_id, me.node_id().to_string());
/// assert!(env.sender_pubkey.is_empty());
/// env.verify_with(&me.public_key())?;
/// # Ok::<(), micelio_wire::EnvelopeError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `sign` is called"]
pub struct EnvelopeBuilder {
    msg_type: MsgType,
    payload: Bytes,
    message_id: Option<String>,
    lamport_ts: u64,
    hop_count: u32,
    with_sender_pubkey: bool,
}

impl EnvelopeBuilder {
    /// A point-to-point envelope: hop count 1, no `sender_pubkey`, a fresh
    /// UUID v4 `message_id`, Lamport timestamp 0.
    pub fn new(msg_type: MsgType, payload: impl Into<Bytes>) -> Self {
        Self {
            msg_type,
            payload: payload.into(),
            message_id: None,
            lamport_ts: 0,
            hop_count: 1,
            with_sender_pubkey: false,
        }
    }

    /// A gossip envelope: hop count [`DEFAULT_MAX_HOPS`] and the originator's
    /// key in `sender_pubkey`, so that any receiver can verify it.
    pub fn gossip(msg_type: MsgType, payload: impl Into<Bytes>) -> Self {
        Self::new(msg_type, payload)
            .hop_count(DEFAULT_MAX_HOPS)
            .with_sender_pubkey(true)
    }

    /// Uses this `message_id` instead of a fresh UUID v4.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets the Lamport timestamp.
    pub fn lamport_ts(mut self, ts: u64) -> Self {
        self.lamport_ts = ts;
        self
    }

    /// Sets the remaining hop count.
    pub fn hop_count(mut self, hops: u32) -> Self {
        self.hop_count = hops;
        self
    }

    /// Whether to carry the originator's public key in `sender_pubkey`.
    pub fn with_sender_pubkey(mut self, yes: bool) -> Self {
        self.with_sender_pubkey = yes;
        self
    }

    /// Fills `sender_id` (and `sender_pubkey` if asked) from `identity` and
    /// signs.
    pub fn sign(self, identity: &Identity) -> Envelope {
        let message_id = self
            .message_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut env = Envelope {
            message_id,
            sender_id: identity.node_id().to_string(),
            lamport_ts: self.lamport_ts,
            hop_count: self.hop_count,
            msg_type: self.msg_type.as_u32(),
            payload: self.payload,
            signature: Bytes::new(),
            sender_pubkey: if self.with_sender_pubkey {
                Bytes::copy_from_slice(identity.public_key().as_bytes())
            } else {
                Bytes::new()
            },
        };
        env.sign(identity);
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micelio_identity::KeyError;

    fn me() -> Identity {
        Identity::from_seed([1; 32])
    }

    #[test]
    fn fresh_ids_are_uuid_v4() {
        let env = EnvelopeBuilder::gossip(MsgType::Chat, Bytes::new()).sign(&me());
        let id = uuid::Uuid::parse_str(&env.message_id).unwrap();
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(env.message_id.len(), 36);
        let other = EnvelopeBuilder::gossip(MsgType::Chat, Bytes::new()).sign(&me());
        assert_ne!(env.message_id, other.message_id);
    }

    #[test]
    fn unsigned_fields_do_not_matter() {
        let mut env = EnvelopeBuilder::gossip(MsgType::Chat, &b"x"[..]).sign(&me());
        env.hop_count = 3;
        env.verify_embedded().unwrap();
        env.sender_pubkey = Bytes::new();
        env.verify_with(&me().public_key()).unwrap();
    }

    #[test]
    fn each_signed_field_matters() {
        let base = EnvelopeBuilder::gossip(MsgType::Chat, &b"x"[..])
            .lamport_ts(5)
            .sign(&me());
        let mut tampered = Vec::new();
        let mut e = base.clone();
        e.message_id.push('0');
        tampered.push(e);
        let mut e = base.clone();
        e.lamport_ts += 1;
        tampered.push(e);
        let mut e = base.clone();
        e.msg_type = 1000;
        tampered.push(e);
        let mut e = base.clone();
        e.payload = Bytes::from_static(b"y");
        tampered.push(e);
        for e in tampered {
            assert_eq!(
                e.verify_with(&me().public_key()),
                Err(EnvelopeError::Key(KeyError::BadSignature))
            );
        }
        let mut e = base.clone();
        e.sender_id = Identity::from_seed([2; 32]).node_id().to_string();
        assert_eq!(e.verify_embedded(), Err(EnvelopeError::SenderKeyMismatch));
    }

    #[test]
    fn embedded_key_errors() {
        let mut env = EnvelopeBuilder::new(MsgType::Chat, Bytes::new()).sign(&me());
        assert_eq!(env.verify_embedded(), Err(EnvelopeError::NoSenderKey));
        env.sender_pubkey = Bytes::from_static(&[1; 31]);
        assert_eq!(env.verify_embedded(), Err(EnvelopeError::SenderKeyMismatch));
        env.sender_id = NodeId::from_public_key_bytes(&[1; 31]).to_string();
        assert_eq!(
            env.verify_embedded(),
            Err(EnvelopeError::Key(KeyError::PublicKeyLength(31)))
        );
    }

    #[test]
    fn gossip_limits() {
        let ok = EnvelopeBuilder::gossip(MsgType::Chat, vec![0; MAX_GOSSIP_PAYLOAD]).sign(&me());
        ok.check_gossip_limits().unwrap();
        let mut e = ok.clone();
        e.payload = Bytes::from(vec![0; MAX_GOSSIP_PAYLOAD + 1]);
        assert_eq!(
            e.check_gossip_limits(),
            Err(EnvelopeError::PayloadTooLarge(MAX_GOSSIP_PAYLOAD + 1))
        );
        let mut e = ok.clone();
        e.message_id.clear();
        assert_eq!(e.check_gossip_limits(), Err(EnvelopeError::EmptyMessageId));
        let mut e = ok.clone();
        e.message_id = "m".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            e.check_gossip_limits(),
            Err(EnvelopeError::MessageIdTooLong(MAX_ID_LEN + 1))
        );
        let mut e = ok.clone();
        e.sender_id.clear();
        assert_eq!(e.check_gossip_limits(), Err(EnvelopeError::EmptySenderId));
        let mut e = ok;
        e.sender_id = "s".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            e.check_gossip_limits(),
            Err(EnvelopeError::SenderIdTooLong(MAX_ID_LEN + 1))
        );
        let mut e = EnvelopeBuilder::gossip(MsgType::Chat, Bytes::new()).sign(&me());
        e.message_id = "m".repeat(MAX_ID_LEN);
        e.check_gossip_limits().unwrap();
    }

    #[test]
    fn keepalive_is_bare() {
        let k = Envelope::keepalive();
        assert_eq!(k.kind(), MsgType::Keepalive);
        assert!(k.message_id.is_empty() && k.signature.is_empty());
    }
}
