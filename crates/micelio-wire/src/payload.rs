//! [`Payload`]: an envelope's payload decoded according to its type.

use crate::codec::WireMessage;
use bytes::Bytes;

use crate::error::WireError;
use crate::msg_type::MsgType;
use crate::proto::{
    ChatMessage, DirectMessage, Envelope, GossipDigest, GossipRequest, PeerExchange, PeerHello,
    Presence, StateReconcile, StateSyncRequest, StateSyncResponse, StateUpdate, TreeGraft,
    TreeIHave, TreePrune,
};

/// The payload of an envelope, decoded according to its `msg_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Type 1.
    Hello(PeerHello),
    /// Type 2.
    HelloAck(PeerHello),
    /// Type 3.
    Chat(ChatMessage),
    /// Type 4.
    PeerExchange(PeerExchange),
    /// Type 5 (its payload, if any, is ignored).
    Keepalive,
    /// Type 6.
    StateUpdate(StateUpdate),
    /// Type 7.
    StateSyncRequest(StateSyncRequest),
    /// Type 8.
    StateSyncResponse(StateSyncResponse),
    /// Type 9 (extension).
    Presence(Presence),
    /// Type 10 (extension).
    DirectMessage(DirectMessage),
    /// Type 11 (extension).
    GossipDigest(GossipDigest),
    /// Type 12 (extension).
    GossipRequest(GossipRequest),
    /// Type 13 (extension).
    TreeIHave(TreeIHave),
    /// Type 14 (extension).
    TreeGraft(TreeGraft),
    /// Type 15 (extension).
    TreePrune(TreePrune),
    /// Type 16 (extension).
    StateReconcile(StateReconcile),
    /// Any other type: the raw payload, for a plugin or for relaying.
    Opaque(MsgType, Bytes),
}

impl Payload {
    /// Decodes `env.payload` according to `env.msg_type`.
    ///
    /// # Errors
    /// [`WireError::Decode`] when the bytes are not the message the type says.
    pub fn decode(env: &Envelope) -> Result<Self, WireError> {
        let bytes = env.payload.clone();
        Ok(match env.kind() {
            MsgType::Hello => Self::Hello(PeerHello::decode_wire(bytes)?),
            MsgType::HelloAck => Self::HelloAck(PeerHello::decode_wire(bytes)?),
            MsgType::Chat => Self::Chat(ChatMessage::decode_wire(bytes)?),
            MsgType::PeerExchange => Self::PeerExchange(PeerExchange::decode_wire(bytes)?),
            MsgType::Keepalive => Self::Keepalive,
            MsgType::StateUpdate => Self::StateUpdate(StateUpdate::decode_wire(bytes)?),
            MsgType::StateSyncRequest => {
                Self::StateSyncRequest(StateSyncRequest::decode_wire(bytes)?)
            }
            MsgType::StateSyncResponse => {
                Self::StateSyncResponse(StateSyncResponse::decode_wire(bytes)?)
            }
            MsgType::Presence => Self::Presence(Presence::decode_wire(bytes)?),
            MsgType::DirectMessage => Self::DirectMessage(DirectMessage::decode_wire(bytes)?),
            MsgType::GossipDigest => Self::GossipDigest(GossipDigest::decode_wire(bytes)?),
            MsgType::GossipRequest => Self::GossipRequest(GossipRequest::decode_wire(bytes)?),
            MsgType::TreeIHave => Self::TreeIHave(TreeIHave::decode_wire(bytes)?),
            MsgType::TreeGraft => Self::TreeGraft(TreeGraft::decode_wire(bytes)?),
            MsgType::TreePrune => Self::TreePrune(TreePrune::decode_wire(bytes)?),
            MsgType::StateReconcile => Self::StateReconcile(StateReconcile::decode_wire(bytes)?),
            other => Self::Opaque(other, bytes),
        })
    }

    /// The message type this payload travels as.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Self::Hello(_) => MsgType::Hello,
            Self::HelloAck(_) => MsgType::HelloAck,
            Self::Chat(_) => MsgType::Chat,
            Self::PeerExchange(_) => MsgType::PeerExchange,
            Self::Keepalive => MsgType::Keepalive,
            Self::StateUpdate(_) => MsgType::StateUpdate,
            Self::StateSyncRequest(_) => MsgType::StateSyncRequest,
            Self::StateSyncResponse(_) => MsgType::StateSyncResponse,
            Self::Presence(_) => MsgType::Presence,
            Self::DirectMessage(_) => MsgType::DirectMessage,
            Self::GossipDigest(_) => MsgType::GossipDigest,
            Self::GossipRequest(_) => MsgType::GossipRequest,
            Self::TreeIHave(_) => MsgType::TreeIHave,
            Self::TreeGraft(_) => MsgType::TreeGraft,
            Self::TreePrune(_) => MsgType::TreePrune,
            Self::StateReconcile(_) => MsgType::StateReconcile,
            Self::Opaque(t, _) => *t,
        }
    }

    /// Encodes the payload bytes.
    pub fn encode(&self) -> Bytes {
        match self {
            Self::Hello(m) | Self::HelloAck(m) => m.encode_bytes(),
            Self::Chat(m) => m.encode_bytes(),
            Self::PeerExchange(m) => m.encode_bytes(),
            Self::Keepalive => Bytes::new(),
            Self::StateUpdate(m) => m.encode_bytes(),
            Self::StateSyncRequest(m) => m.encode_bytes(),
            Self::StateSyncResponse(m) => m.encode_bytes(),
            Self::Presence(m) => m.encode_bytes(),
            Self::DirectMessage(m) => m.encode_bytes(),
            Self::GossipDigest(m) => m.encode_bytes(),
            Self::GossipRequest(m) => m.encode_bytes(),
            Self::TreeIHave(m) => m.encode_bytes(),
            Self::TreeGraft(m) => m.encode_bytes(),
            Self::TreePrune(m) => m.encode_bytes(),
            Self::StateReconcile(m) => m.encode_bytes(),
            Self::Opaque(_, b) => b.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_each_kind() {
        let hello = PeerHello {
            node_id: "n".into(),
            version: "0.1.0".into(),
            ..Default::default()
        };
        let cases = [
            Payload::Hello(hello.clone()),
            Payload::HelloAck(hello),
            Payload::Chat(ChatMessage {
                nick: "a".into(),
                text: "b".into(),
                timestamp: 9,
            }),
            Payload::PeerExchange(PeerExchange::default()),
            Payload::Keepalive,
            Payload::StateUpdate(StateUpdate::default()),
            Payload::StateSyncRequest(StateSyncRequest {
                known: [("x".to_owned(), 3)].into_iter().collect(),
            }),
            Payload::StateSyncResponse(StateSyncResponse::default()),
            Payload::Presence(Presence {
                node_name: "n".into(),
                nicks: vec!["a".into()],
                seq: 3,
                ttl_secs: 90,
            }),
            Payload::DirectMessage(DirectMessage {
                to_nick: "b".into(),
                text: "psst".into(),
                ..Default::default()
            }),
            Payload::Opaque(MsgType::Plugin(1001), Bytes::from_static(b"raw")),
        ];
        for p in cases {
            let env = Envelope {
                msg_type: p.msg_type().as_u32(),
                payload: p.encode(),
                ..Default::default()
            };
            assert_eq!(Payload::decode(&env).unwrap(), p);
        }
    }

    #[test]
    fn garbage_payload_is_an_error() {
        let env = Envelope {
            msg_type: 3,
            payload: Bytes::from_static(&[0xff, 0xff, 0xff]),
            ..Default::default()
        };
        assert!(matches!(Payload::decode(&env), Err(WireError::Decode(_))));
    }
}
