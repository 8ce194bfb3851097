//! Every limit of protocol v1, as named constants.
//!
//! Values marked "default" are the defaults of configurable settings; the
//! others are fixed by the protocol.

use std::time::Duration;

/// Frame magic, `"MI"`.
pub const FRAME_MAGIC: u16 = 0x4D49;
/// Frame format version.
pub const FRAME_VERSION: u16 = 0x0001;
/// Length of the frame header: magic (2) + version (2) + length (4).
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest frame payload (one encoded envelope): 1 MiB.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;
/// Largest whole frame, header included.
pub const MAX_FRAME_LEN: usize = FRAME_HEADER_LEN + MAX_FRAME_PAYLOAD;

/// Largest Noise handshake message (2-byte length prefix).
pub const MAX_NOISE_HANDSHAKE_MSG: usize = 65_535;
/// Length of the ChaCha20-Poly1305 authentication tag.
pub const NOISE_TAG_LEN: usize = 16;
/// Largest Noise transport message a receiver must accept: a whole frame in
/// one message plus the tag, as the reference sends them.
pub const MAX_NOISE_TRANSPORT_MSG: usize = MAX_FRAME_LEN + NOISE_TAG_LEN;
/// Largest Noise transport message a sender should produce.
pub const MAX_NOISE_SEND_MSG: usize = 65_535;

/// Largest `message_id` or `sender_id` accepted by gossip, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Largest gossip payload: 64 KiB.
pub const MAX_GOSSIP_PAYLOAD: usize = 64 * 1024;
/// Default (and reference) hop budget of an originated gossip message.
pub const DEFAULT_MAX_HOPS: u32 = 10;
/// Default gossip fanout: peers each message is forwarded to.
pub const DEFAULT_FANOUT: usize = 3;
/// Default lifetime of a seen-cache entry.
pub const DEFAULT_SEEN_TTL: Duration = Duration::from_secs(5 * 60);
/// Default per-sender rate: messages per second.
pub const DEFAULT_RATE_PER_SEC: u32 = 10;
/// Default per-sender burst.
pub const DEFAULT_RATE_BURST: u32 = 20;

/// The protocol version string sent in hellos.
pub const PROTOCOL_VERSION: &str = "0.1.0";
/// The hello feature (`PeerHello.features`, field 7) of micelio's core
/// extensions: presence (type 9), direct messages (type 10) and gossip
/// repair (types 11, 12). A peer whose hello lacks it (a reference node) is
/// sent no point-to-point extension traffic.
pub const FEATURE_EXTENSIONS_V1: &str = "micelio/1";
/// The hello feature of micelio's broadcast tree (types 13, 14, 15:
/// epidemic broadcast trees between micelio nodes, see `docs/protocol.md`).
/// Gossip goes to a peer that lacks it as the reference relays: eagerly,
/// never lazily announced, never pruned.
pub const FEATURE_BROADCAST_TREE_V1: &str = "micelio/tree/1";
/// The hello feature of micelio's state reconciliation (type 16, see
/// `docs/protocol.md`). A peer that lacks it is synchronised the
/// reference's way: type 7 on connect, at most once per
/// [`REFERENCE_SYNC_COOLDOWN`].
pub const FEATURE_STATE_V1: &str = "micelio/state/1";
/// Deadline for the whole hello exchange after the Noise handshake.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Default dial timeout.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time without sending after which a keepalive is sent.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Default time without receiving after which a connection is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default deadline of each write.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default peer cap, inbound and outbound together.
pub const DEFAULT_MAX_PEERS: usize = 15;
/// Default peer-exchange interval.
pub const DEFAULT_EXCHANGE_INTERVAL: Duration = Duration::from_secs(30);
/// Default discovery interval.
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);
/// Peers dialled per discovery round.
pub const DISCOVERY_DIALS_PER_ROUND: usize = 3;
/// Largest jitter before a discovery dial.
pub const DISCOVERY_MAX_JITTER: Duration = Duration::from_secs(2);
/// Bootstrap redial backoff schedule; the last value repeats.
pub const BOOTSTRAP_BACKOFF: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(30),
];
/// Cap of the per-peer discovery backoff.
pub const MAX_DISCOVERY_BACKOFF: Duration = Duration::from_secs(30);

/// Largest state key, in bytes, namespace prefix included (the reference's
/// limit).
pub const MAX_STATE_KEY: usize = 256;
/// Default largest state value, in bytes: the reference's limit, so that
/// every write reaches reference nodes too (tombstones count their value).
pub const DEFAULT_STATE_VALUE: usize = 4096;
/// Ceiling of the configurable value limit, for meshes without reference
/// nodes, so that a type-6 message still fits [`MAX_GOSSIP_PAYLOAD`].
pub const MAX_STATE_VALUE: usize = 60 * 1024;
/// Lamport timestamps above this are rejected (this one is accepted).
pub const MAX_LAMPORT_TS: u64 = 1 << 62;
/// Default age after which a tombstone is removed.
pub const DEFAULT_TOMBSTONE_GC_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Most entries a reference node puts in its one sync response.
pub const REFERENCE_SYNC_MAX_ENTRIES: usize = 1000;
/// A reference node answers one sync request (type 7) per peer per this.
pub const REFERENCE_SYNC_COOLDOWN: Duration = Duration::from_secs(30);
/// Chat lines a joining session is shown.
pub const CHAT_HISTORY_LINES: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_limits_are_consistent() {
        assert_eq!(MAX_FRAME_LEN, 1_048_584);
        assert_eq!(MAX_NOISE_TRANSPORT_MSG, (1 << 20) + 8 + 16);
        const { assert!(MAX_STATE_KEY + MAX_STATE_VALUE + 512 < MAX_GOSSIP_PAYLOAD) };
        assert_eq!(&FRAME_MAGIC.to_be_bytes(), b"MI");
    }
}
