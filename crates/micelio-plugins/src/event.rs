//! What a plugin is told: events of the kinds it subscribed to, and the
//! messages of the types it owns.

use bytes::Bytes;
use micelio_identity::NodeId;

use crate::manifest::EventKind;

/// One event for a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A chat line, from this node or another ([`EventKind::Chat`]).
    Chat {
        /// The author's nick (sanitized for display).
        nick: String,
        /// The name of the author's node.
        node: String,
        /// The text (for an action, without the `/me `).
        text: String,
        /// A `/me` action.
        action: bool,
        /// Unix seconds, as stamped by the author's node.
        timestamp: u64,
    },
    /// An entry of the state map changed ([`EventKind::State`]).
    State {
        /// Its full key (`<author>/<sub-key>`).
        key: String,
        /// Its author.
        author: NodeId,
        /// The new value (empty for a delete).
        value: Bytes,
        /// A delete (a tombstone).
        deleted: bool,
    },
    /// A direct peer connected ([`EventKind::Peers`]).
    PeerUp {
        /// The peer.
        node_id: NodeId,
        /// The address it was reached at or came from.
        addr: String,
    },
    /// A direct peer went away ([`EventKind::Peers`]).
    PeerDown {
        /// The peer.
        node_id: NodeId,
        /// Why the connection ended.
        reason: String,
    },
    /// A member of the mesh is alive: first heard of, or back from
    /// suspect or dead ([`EventKind::Members`]).
    MemberUp {
        /// The member.
        node_id: NodeId,
        /// Its `node/name`.
        name: String,
    },
    /// A member's heartbeat stopped long enough for it to count as dead
    /// ([`EventKind::Members`]).
    MemberDown {
        /// The member.
        node_id: NodeId,
        /// Its `node/name`.
        name: String,
    },
    /// A member said it stopped ([`EventKind::Members`]).
    MemberLeft {
        /// The member.
        node_id: NodeId,
        /// Its `node/name`.
        name: String,
    },
    /// A gossip message of a type this plugin owns, from any node (this
    /// node's own are not echoed back).
    Message {
        /// Its type.
        msg_type: u32,
        /// Its originator (its signature checked).
        sender: NodeId,
        /// The payload, as the sender's plugin wrote it.
        payload: Bytes,
        /// The gossip message id.
        message_id: String,
    },
}

impl Event {
    /// The kind of event this is; `None` for a [`Event::Message`], which
    /// needs no subscription.
    pub fn kind(&self) -> Option<EventKind> {
        match self {
            Self::Chat { .. } => Some(EventKind::Chat),
            Self::State { .. } => Some(EventKind::State),
            Self::PeerUp { .. } | Self::PeerDown { .. } => Some(EventKind::Peers),
            Self::MemberUp { .. } | Self::MemberDown { .. } | Self::MemberLeft { .. } => {
                Some(EventKind::Members)
            }
            Self::Message { .. } => None,
        }
    }

    /// A short name of the event (`"chat"`, `"peer_up"`, …), as the
    /// external protocol names it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Chat { .. } => "chat",
            Self::State { .. } => "state",
            Self::PeerUp { .. } => "peer_up",
            Self::PeerDown { .. } => "peer_down",
            Self::MemberUp { .. } => "member_up",
            Self::MemberDown { .. } => "member_down",
            Self::MemberLeft { .. } => "member_left",
            Self::Message { .. } => "message",
        }
    }
}
