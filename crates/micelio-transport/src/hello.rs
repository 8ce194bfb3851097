//! The hello exchange and identity binding (protocol v1, section 4.5).
//!
//! Right after the Noise handshake the initiator sends a hello (type 1) and
//! waits for the ack (type 2); the responder waits for the hello, verifies
//! it, then answers. Both are signed envelopes. The receiver of a hello
//! checks that
//!
//! 1. `node_id` == hex(SHA-256(`ed25519_pubkey`)),
//! 2. the X25519 form of `ed25519_pubkey` is the static key Noise
//!    authenticated, and
//! 3. the envelope signature verifies with `ed25519_pubkey`,
//!
//! and closes the connection if any fails.

use std::time::Duration;

use micelio_identity::{Identity, NodeId, PublicKey};
use micelio_wire::limits::{FEATURE_BROADCAST_TREE_V1, FEATURE_EXTENSIONS_V1, PROTOCOL_VERSION};
use micelio_wire::proto::PeerHello;
use micelio_wire::{Envelope, EnvelopeBuilder, MsgType, WireMessage as _, frame};

use crate::error::HelloError;
use crate::link::{Direction, Link};

/// What a node says about itself in its hello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalHello {
    /// The node's tags.
    pub tags: Vec<String>,
    /// The address peers can dial, if the node is reachable.
    pub advertise_addr: Option<String>,
    /// The extensions it speaks (`PeerHello.features`), for example
    /// [`FEATURE_EXTENSIONS_V1`]. Empty behaves like a reference node.
    pub features: Vec<String>,
}

/// What a verified hello told us about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHelloInfo {
    /// The peer's NodeId (checked against its key).
    pub node_id: NodeId,
    /// The peer's Ed25519 key (bound to the Noise key).
    pub public_key: PublicKey,
    /// The protocol version it speaks.
    pub version: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Whether it accepts inbound connections.
    pub reachable: bool,
    /// Its advertised address (empty if not reachable).
    pub listen_addr: String,
    /// The extensions it speaks; empty for a reference node.
    pub features: Vec<String>,
}

impl PeerHelloInfo {
    /// Whether the peer announced `feature` in its hello.
    #[must_use]
    pub fn speaks(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// Whether the peer speaks micelio's core extensions
    /// ([`FEATURE_EXTENSIONS_V1`]); false for reference nodes.
    #[must_use]
    pub fn speaks_extensions(&self) -> bool {
        self.speaks(FEATURE_EXTENSIONS_V1)
    }

    /// Whether the peer runs micelio's broadcast tree
    /// ([`FEATURE_BROADCAST_TREE_V1`]): it takes lazy announcements,
    /// grafts and prunes. False for reference nodes and for micelio nodes
    /// that predate the tree.
    #[must_use]
    pub fn speaks_tree(&self) -> bool {
        self.speaks(FEATURE_BROADCAST_TREE_V1)
    }
}

/// Builds our signed hello (`MsgType::Hello`) or ack (`MsgType::HelloAck`).
pub fn build_hello(identity: &Identity, kind: MsgType, local: &LocalHello) -> Envelope {
    let addr = local.advertise_addr.clone().unwrap_or_default();
    let hello = PeerHello {
        node_id: identity.node_id().to_string(),
        version: PROTOCOL_VERSION.to_owned(),
        tags: local.tags.clone(),
        reachable: !addr.is_empty(),
        listen_addr: addr,
        ed25519_pubkey: identity.public_key().as_bytes().to_vec().into(),
        features: local.features.clone(),
    };
    EnvelopeBuilder::new(kind, hello.encode_wire()).sign(identity)
}

/// Verifies a received hello or ack against the Noise-authenticated static
/// key, applying the three checks.
///
/// # Errors
/// The [`HelloError`] of the first check that fails.
pub fn verify_hello(
    env: &Envelope,
    expected: MsgType,
    remote_static: &[u8; 32],
) -> Result<PeerHelloInfo, HelloError> {
    if env.kind() != expected {
        return Err(HelloError::UnexpectedType {
            expected,
            got: env.kind(),
        });
    }
    let hello = PeerHello::decode_wire(env.payload.clone())
        .map_err(|e| HelloError::Decode(e.to_string()))?;
    // Check 1: the node id is the hash of the key.
    if !NodeId::from_public_key_bytes(&hello.ed25519_pubkey).matches_str(&hello.node_id) {
        return Err(HelloError::NodeIdMismatch);
    }
    let key = PublicKey::from_bytes(&hello.ed25519_pubkey).map_err(|_| HelloError::BadPublicKey)?;
    // Check 2: the key is the one Noise authenticated.
    if key.to_x25519() != *remote_static {
        return Err(HelloError::NoiseKeyMismatch);
    }
    // Check 3: the envelope is signed by that key.
    env.verify_with(&key)
        .map_err(|_| HelloError::BadSignature)?;
    if env.sender_id != hello.node_id {
        return Err(HelloError::SenderMismatch);
    }
    Ok(PeerHelloInfo {
        node_id: key.node_id(),
        public_key: key,
        version: hello.version,
        tags: hello.tags,
        reachable: hello.reachable,
        listen_addr: hello.listen_addr,
        features: hello.features,
    })
}

async fn send(link: &mut Link, env: &Envelope) -> Result<(), HelloError> {
    let frame = frame::encode_envelope(env).map_err(|e| HelloError::Decode(e.to_string()))?;
    link.sink.send(&frame).await?;
    Ok(())
}

async fn receive(link: &mut Link) -> Result<Envelope, HelloError> {
    match link.source.recv().await? {
        Some(env) => Ok(env),
        None => Err(HelloError::Closed),
    }
}

/// Runs the hello exchange on a fresh link, in the role its direction gives,
/// under `timeout` for the whole exchange.
///
/// Cancel safety: not cancel safe; drop the link if the future is dropped.
///
/// # Errors
/// [`HelloError::Timeout`], or the failure of a check or of the link.
pub async fn exchange(
    link: &mut Link,
    identity: &Identity,
    local: &LocalHello,
    timeout: Duration,
) -> Result<PeerHelloInfo, HelloError> {
    let remote_static = link.remote_static;
    let run = async {
        match link.direction {
            Direction::Outbound => {
                send(link, &build_hello(identity, MsgType::Hello, local)).await?;
                let ack = receive(link).await?;
                verify_hello(&ack, MsgType::HelloAck, &remote_static)
            }
            Direction::Inbound => {
                let hello = receive(link).await?;
                let info = verify_hello(&hello, MsgType::Hello, &remote_static)?;
                send(link, &build_hello(identity, MsgType::HelloAck, local)).await?;
                Ok(info)
            }
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| HelloError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn id(n: u8) -> Identity {
        Identity::from_seed([n; 32])
    }

    fn local() -> LocalHello {
        LocalHello {
            tags: vec!["eu".into()],
            advertise_addr: Some("127.0.0.1:4000".into()),
            features: vec![FEATURE_EXTENSIONS_V1.into()],
        }
    }

    #[test]
    fn a_honest_hello_passes() {
        let a = id(1);
        let env = build_hello(&a, MsgType::Hello, &local());
        let info = verify_hello(&env, MsgType::Hello, &a.x25519_public()).unwrap();
        assert_eq!(info.node_id, *a.node_id());
        assert!(info.reachable);
        assert_eq!(info.listen_addr, "127.0.0.1:4000");
        assert!(info.speaks_extensions());
        assert_eq!(info.tags, vec!["eu".to_owned()]);
        assert_eq!(info.version, PROTOCOL_VERSION);
    }

    #[test]
    fn a_hello_without_features_is_a_reference_peer() {
        let a = id(1);
        let reference_like = LocalHello {
            features: Vec::new(),
            ..local()
        };
        let env = build_hello(&a, MsgType::Hello, &reference_like);
        let info = verify_hello(&env, MsgType::Hello, &a.x25519_public()).unwrap();
        assert!(!info.speaks_extensions());
        assert!(!info.speaks("anything"));
    }

    #[test]
    fn each_check_fails_alone() {
        let a = id(1);
        let b = id(2);
        // Check 1: node_id of someone else.
        let mut hello = PeerHello {
            node_id: b.node_id().to_string(),
            version: "0.1.0".into(),
            ed25519_pubkey: a.public_key().as_bytes().to_vec().into(),
            ..Default::default()
        };
        let env = EnvelopeBuilder::new(MsgType::Hello, hello.encode_wire()).sign(&a);
        assert!(matches!(
            verify_hello(&env, MsgType::Hello, &a.x25519_public()),
            Err(HelloError::NodeIdMismatch)
        ));
        // Check 2: a consistent hello from b over a's Noise session.
        let env = build_hello(&b, MsgType::Hello, &local());
        assert!(matches!(
            verify_hello(&env, MsgType::Hello, &a.x25519_public()),
            Err(HelloError::NoiseKeyMismatch)
        ));
        // Check 3: a's hello with a broken signature.
        let mut env = build_hello(&a, MsgType::Hello, &local());
        let mut sig = env.signature.to_vec();
        sig[0] ^= 1;
        env.signature = Bytes::from(sig);
        assert!(matches!(
            verify_hello(&env, MsgType::Hello, &a.x25519_public()),
            Err(HelloError::BadSignature)
        ));
        // The wrong type.
        let env = build_hello(&a, MsgType::HelloAck, &local());
        assert!(matches!(
            verify_hello(&env, MsgType::Hello, &a.x25519_public()),
            Err(HelloError::UnexpectedType { .. })
        ));
        // Garbage payload.
        hello.node_id.clear();
        let env = EnvelopeBuilder::new(MsgType::Hello, vec![0xff, 0xff]).sign(&a);
        assert!(matches!(
            verify_hello(&env, MsgType::Hello, &a.x25519_public()),
            Err(HelloError::Decode(_))
        ));
    }

    #[test]
    fn reference_hello_vector_verifies() {
        // The reference's hello from the known-answer vectors (identity seed
        // 0x01), checked against that identity's X25519 key.
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/reference-v1.json"
        ))
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let hello = v["envelopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "hello")
            .unwrap();
        let bytes = hex::decode(hello["frame_hex"].as_str().unwrap()).unwrap();
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let env = micelio_wire::frame::FrameDecoder::new()
            .decode_envelope(&mut buf)
            .unwrap()
            .unwrap();
        let info = verify_hello(&env, MsgType::Hello, &id(1).x25519_public()).unwrap();
        assert_eq!(info.node_id, *id(1).node_id());
        assert!(info.reachable);
    }
}
