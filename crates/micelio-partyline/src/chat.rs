//! Chat over gossip (type 3): the line the partyline sends and receives.
//!
//! It lives here, not in micelio-gossip: gossip carries every type alike and
//! knows nothing of chat.

use std::time::{SystemTime, UNIX_EPOCH};

use micelio_gossip::{Delivered, Gossip, GossipError};
use micelio_identity::NodeId;
use micelio_wire::proto::ChatMessage;
use micelio_wire::{MsgType, WireMessage as _};

/// A chat line, as delivered to every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatLine {
    /// The node the line was typed on (verified originator).
    pub node: NodeId,
    /// The author's nick.
    pub nick: String,
    /// The text.
    pub text: String,
    /// Unix seconds, as stamped by the author's node.
    pub timestamp: u64,
    /// The gossip message id.
    pub message_id: String,
}

impl ChatLine {
    /// Decodes a delivered type-3 message; `None` if it is not a valid
    /// `ChatMessage`.
    pub fn from_delivered(d: &Delivered) -> Option<Self> {
        if d.msg_type != MsgType::Chat {
            return None;
        }
        let m = ChatMessage::decode_wire(d.envelope.payload.clone()).ok()?;
        Some(Self {
            node: d.sender,
            nick: m.nick,
            text: m.text,
            timestamp: m.timestamp,
            message_id: d.envelope.message_id.clone(),
        })
    }
}

/// The current time in unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The payload of a chat line from `nick`, stamped now.
pub fn chat_payload(nick: &str, text: &str) -> bytes::Bytes {
    ChatMessage {
        nick: nick.to_owned(),
        text: text.to_owned(),
        timestamp: unix_now(),
    }
    .encode_wire()
    .into()
}

/// Originates a chat line from `nick` at once (unpaced, outside any
/// partyline session: for tools and tests); returns the message id.
/// Sessions go through the hub, which paces its lines.
///
/// # Errors
/// As [`Gossip::originate`].
pub async fn say(gossip: &Gossip, nick: &str, text: &str) -> Result<String, GossipError> {
    gossip
        .originate(MsgType::Chat, chat_payload(nick, text))
        .await
}
