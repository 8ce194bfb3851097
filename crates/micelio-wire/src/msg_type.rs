//! The message-type table of protocol v1.

use std::fmt;

/// How a message type travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Routing {
    /// Only during the hello exchange; dropped afterwards.
    Handshake,
    /// Between two connected peers; handled by the connection layer and
    /// never relayed.
    PointToPoint,
    /// Through the gossip engine; relayed even where no handler exists.
    Gossip,
}

/// A message type (`Envelope.msg_type`).
///
/// Every `u32` maps to exactly one variant and back, so unknown types survive
/// a round trip and can be relayed unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MsgType {
    /// 1: `PeerHello`, sent by the initiator.
    Hello,
    /// 2: `PeerHello`, the responder's answer.
    HelloAck,
    /// 3: `ChatMessage`, gossip.
    Chat,
    /// 4: `PeerExchange`, point to point, signed.
    PeerExchange,
    /// 5: empty keepalive (no id, no signature).
    Keepalive,
    /// 6: `StateUpdate`, gossip.
    StateUpdate,
    /// 7: `StateSyncRequest`, point to point, signed.
    StateSyncRequest,
    /// 8: `StateSyncResponse`, point to point, signed.
    StateSyncResponse,
    /// 9: `Presence`, gossip (micelio extension: partyline users of a node).
    Presence,
    /// 10: `DirectMessage`, gossip (micelio extension: a private line).
    DirectMessage,
    /// 11: `GossipDigest`, point to point (micelio extension: gossip repair).
    GossipDigest,
    /// 12: `GossipRequest`, point to point (micelio extension: gossip repair).
    GossipRequest,
    /// 13: `TreeIHave`, point to point (micelio extension: broadcast tree,
    /// lazy announcement of message ids).
    TreeIHave,
    /// 14: `TreeGraft`, point to point (micelio extension: broadcast tree,
    /// a link joins the tree and missing messages are asked for).
    TreeGraft,
    /// 15: `TreePrune`, point to point (micelio extension: broadcast tree,
    /// a link leaves the tree).
    TreePrune,
    /// 16: `StateReconcile`, point to point (micelio extension: range-based
    /// reconciliation of the state map between micelio nodes).
    StateReconcile,
    /// 17–99: reserved for core extensions.
    CoreExtension(u32),
    /// 1000 and above: plugin messages, gossip.
    Plugin(u32),
    /// 0 and 100–999: not assigned by protocol v1; relayed as gossip.
    Unassigned(u32),
}

impl MsgType {
    /// First unassigned type number of the core-extension range (9–16 are
    /// micelio's own extensions).
    pub const CORE_EXTENSION_START: u32 = 17;
    /// Last type number of the core-extension range.
    pub const CORE_EXTENSION_END: u32 = 99;
    /// First type number of the plugin range.
    pub const PLUGIN_START: u32 = 1000;

    /// The type of a raw `msg_type` number.
    pub const fn from_u32(n: u32) -> Self {
        match n {
            1 => Self::Hello,
            2 => Self::HelloAck,
            3 => Self::Chat,
            4 => Self::PeerExchange,
            5 => Self::Keepalive,
            6 => Self::StateUpdate,
            7 => Self::StateSyncRequest,
            8 => Self::StateSyncResponse,
            9 => Self::Presence,
            10 => Self::DirectMessage,
            11 => Self::GossipDigest,
            12 => Self::GossipRequest,
            13 => Self::TreeIHave,
            14 => Self::TreeGraft,
            15 => Self::TreePrune,
            16 => Self::StateReconcile,
            Self::CORE_EXTENSION_START..=Self::CORE_EXTENSION_END => Self::CoreExtension(n),
            Self::PLUGIN_START.. => Self::Plugin(n),
            _ => Self::Unassigned(n),
        }
    }

    /// The raw `msg_type` number.
    pub const fn as_u32(self) -> u32 {
        match self {
            Self::Hello => 1,
            Self::HelloAck => 2,
            Self::Chat => 3,
            Self::PeerExchange => 4,
            Self::Keepalive => 5,
            Self::StateUpdate => 6,
            Self::StateSyncRequest => 7,
            Self::StateSyncResponse => 8,
            Self::Presence => 9,
            Self::DirectMessage => 10,
            Self::GossipDigest => 11,
            Self::GossipRequest => 12,
            Self::TreeIHave => 13,
            Self::TreeGraft => 14,
            Self::TreePrune => 15,
            Self::StateReconcile => 16,
            Self::CoreExtension(n) | Self::Plugin(n) | Self::Unassigned(n) => n,
        }
    }

    /// How messages of this type travel.
    pub const fn routing(self) -> Routing {
        match self {
            Self::Hello | Self::HelloAck => Routing::Handshake,
            Self::PeerExchange
            | Self::Keepalive
            | Self::StateSyncRequest
            | Self::StateSyncResponse
            | Self::GossipDigest
            | Self::GossipRequest
            | Self::TreeIHave
            | Self::TreeGraft
            | Self::TreePrune
            | Self::StateReconcile => Routing::PointToPoint,
            Self::Chat
            | Self::StateUpdate
            | Self::Presence
            | Self::DirectMessage
            | Self::CoreExtension(_)
            | Self::Plugin(_)
            | Self::Unassigned(_) => Routing::Gossip,
        }
    }

    /// A short lowercase name, for logs and counters.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::HelloAck => "hello_ack",
            Self::Chat => "chat",
            Self::PeerExchange => "peer_exchange",
            Self::Keepalive => "keepalive",
            Self::StateUpdate => "state_update",
            Self::StateSyncRequest => "state_sync_request",
            Self::StateSyncResponse => "state_sync_response",
            Self::Presence => "presence",
            Self::DirectMessage => "direct_message",
            Self::GossipDigest => "gossip_digest",
            Self::GossipRequest => "gossip_request",
            Self::TreeIHave => "tree_ihave",
            Self::TreeGraft => "tree_graft",
            Self::TreePrune => "tree_prune",
            Self::StateReconcile => "state_reconcile",
            Self::CoreExtension(_) => "core_extension",
            Self::Plugin(_) => "plugin",
            Self::Unassigned(_) => "unassigned",
        }
    }
}

impl From<u32> for MsgType {
    fn from(n: u32) -> Self {
        Self::from_u32(n)
    }
}

impl From<MsgType> for u32 {
    fn from(t: MsgType) -> Self {
        t.as_u32()
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.as_u32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_spec() {
        let expected = [
            (1, Routing::Handshake),
            (2, Routing::Handshake),
            (3, Routing::Gossip),
            (4, Routing::PointToPoint),
            (5, Routing::PointToPoint),
            (6, Routing::Gossip),
            (7, Routing::PointToPoint),
            (8, Routing::PointToPoint),
            (9, Routing::Gossip),
            (10, Routing::Gossip),
            (11, Routing::PointToPoint),
            (12, Routing::PointToPoint),
            (13, Routing::PointToPoint),
            (14, Routing::PointToPoint),
            (15, Routing::PointToPoint),
            (16, Routing::PointToPoint),
            (17, Routing::Gossip),
            (99, Routing::Gossip),
            (1000, Routing::Gossip),
            (1001, Routing::Gossip),
        ];
        for (n, routing) in expected {
            assert_eq!(MsgType::from_u32(n).routing(), routing, "type {n}");
        }
        assert_eq!(MsgType::from_u32(9), MsgType::Presence);
        assert_eq!(MsgType::from_u32(10), MsgType::DirectMessage);
        assert_eq!(MsgType::from_u32(11), MsgType::GossipDigest);
        assert_eq!(MsgType::from_u32(12), MsgType::GossipRequest);
        assert_eq!(MsgType::from_u32(13), MsgType::TreeIHave);
        assert_eq!(MsgType::from_u32(15), MsgType::TreePrune);
        assert_eq!(MsgType::from_u32(16), MsgType::StateReconcile);
        assert_eq!(MsgType::from_u32(17), MsgType::CoreExtension(17));
        assert_eq!(MsgType::from_u32(100), MsgType::Unassigned(100));
        assert_eq!(MsgType::from_u32(999), MsgType::Unassigned(999));
        assert_eq!(MsgType::from_u32(0), MsgType::Unassigned(0));
        assert_eq!(MsgType::from_u32(1000), MsgType::Plugin(1000));
        assert_eq!(MsgType::from_u32(u32::MAX), MsgType::Plugin(u32::MAX));
        assert_eq!(MsgType::Chat.to_string(), "chat(3)");
    }

    #[test]
    fn every_number_round_trips() {
        for n in (0..2000).chain([u32::MAX - 1, u32::MAX]) {
            assert_eq!(MsgType::from_u32(n).as_u32(), n);
        }
    }
}
