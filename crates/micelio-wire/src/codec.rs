//! [`WireMessage`]: encoding and decoding of the messages of
//! [`proto`](crate::proto), so that no other crate names prost.

use bytes::{Buf, Bytes};
use prost::Message as _;

use crate::error::{DecodeError, WireError};
use crate::proto::{
    ChatMessage, DirectMessage, Envelope, GossipDigest, GossipRequest, PeerExchange, PeerHello,
    PeerInfo, Presence, StateEntry, StateItem, StateRange, StateReconcile, StateSyncRequest,
    StateSyncResponse, StateUpdate, TreeGraft, TreeIHave, TreePrune,
};

/// A protobuf message of the wire schema.
///
/// Implemented for every message of [`proto`](crate::proto); the trait is
/// sealed. Decoding bounds nothing by itself: callers decode payloads whose
/// size the frame decoder and the envelope checks already limited.
///
/// ```
/// use micelio_wire::WireMessage as _;
/// use micelio_wire::proto::ChatMessage;
///
/// let chat = ChatMessage { nick: "alice".into(), text: "hi".into(), timestamp: 7 };
/// let bytes = chat.encode_wire();
/// assert_eq!(ChatMessage::decode_wire(&bytes[..])?, chat);
/// assert!(ChatMessage::decode_wire(&[0xff, 0xff][..]).is_err());
/// # Ok::<(), micelio_wire::WireError>(())
/// ```
pub trait WireMessage: Sized + sealed::Sealed {
    /// The protobuf encoding.
    fn encode_wire(&self) -> Vec<u8>;

    /// The protobuf encoding, as [`Bytes`].
    fn encode_bytes(&self) -> Bytes {
        Bytes::from(self.encode_wire())
    }

    /// The length of [`encode_wire`](Self::encode_wire)'s output, without
    /// encoding.
    fn encoded_len_wire(&self) -> usize;

    /// Decodes a message from its protobuf encoding.
    ///
    /// # Errors
    /// [`WireError::Decode`] when the bytes are not a valid encoding.
    fn decode_wire(buf: impl Buf) -> Result<Self, WireError>;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! wire_message {
    ($($t:ty),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl WireMessage for $t {
            fn encode_wire(&self) -> Vec<u8> {
                self.encode_to_vec()
            }
            fn encoded_len_wire(&self) -> usize {
                self.encoded_len()
            }
            fn decode_wire(buf: impl Buf) -> Result<Self, WireError> {
                <$t as prost::Message>::decode(buf).map_err(|e| WireError::Decode(DecodeError(e)))
            }
        }
    )*};
}

wire_message!(
    Envelope,
    PeerHello,
    ChatMessage,
    PeerInfo,
    PeerExchange,
    StateEntry,
    StateUpdate,
    StateSyncRequest,
    StateSyncResponse,
    Presence,
    DirectMessage,
    GossipDigest,
    GossipRequest,
    TreeIHave,
    TreeGraft,
    TreePrune,
    StateReconcile,
    StateRange,
    StateItem,
);
