//! Transport counters, readable at any time.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters (shared by the manager's tasks).
        #[derive(Debug, Default)]
        pub(crate) struct Counters { $( pub(crate) $name: AtomicU64, )* }

        /// A snapshot of the transport counters.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct TransportStats { $( $(#[$doc])* pub $name: u64, )* }

        impl Counters {
            pub(crate) fn snapshot(&self) -> TransportStats {
                TransportStats { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        impl TransportStats {
            /// Every counter as (name, value), for display.
            pub fn entries(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
            }
        }
    };
}

counters! {
    /// Connections accepted and fully established.
    connections_inbound,
    /// Connections dialled and fully established.
    connections_outbound,
    /// Inbound connections closed before the handshake because of `max_peers`.
    refused_max_peers,
    /// Inbound connections refused at accept because their host's pre-auth
    /// budget was full of connections making progress.
    preauth_refused_per_host,
    /// Inbound connections refused at accept because the overall pre-auth
    /// budget was full of connections making progress.
    preauth_refused_total,
    /// Unauthenticated inbound connections closed to admit a newer one.
    preauth_evicted,
    /// Inbound connections not authenticated within `preauth_timeout`.
    preauth_timeouts,
    /// Connections closed after the hello because `max_peers` was reached
    /// (visitors among them).
    closed_max_peers,
    /// Inbound connections admitted to the handshake while full, at most one
    /// per second, to be given a peer exchange and closed after the hello, so
    /// that a newcomer whose bootstrap peers are full learns where to go.
    visitors,
    /// Dials that failed (refused, timed out, handshake failed).
    dial_failures,
    /// Noise handshakes that failed or timed out (inbound and outbound).
    handshake_failures,
    /// Hello exchanges that failed a check, timed out or broke.
    hello_failures,
    /// Connections closed as duplicates of an existing one.
    duplicates_closed,
    /// Duplicate connections kept open for a peer without micelio
    /// extensions, until the peer closes one of the two.
    duplicates_kept,
    /// Kept duplicates that took over when the peer closed the other one.
    standby_promoted,
    /// Connections to ourselves, closed.
    self_connections,
    /// Connections closed for idleness.
    idle_timeouts,
    /// Frames written to peers.
    frames_sent,
    /// Frames read from peers.
    frames_received,
    /// Keepalives written.
    keepalives_sent,
    /// Frames dropped because a peer's send queue was full.
    send_queue_drops,
    /// Frames whose envelope did not decode.
    bad_envelopes,
    /// Hello messages received after the handshake (dropped).
    late_hellos,
    /// Peer exchanges refused (wrong sender, bad signature, bad payload).
    peer_exchange_rejected,
    /// Peer-exchange entries dropped (validation, caps, quotas), all reasons.
    peer_entries_dropped,
    /// Of those, new entries over their sender's quota.
    peer_entries_quota,
    /// Known peers evicted to make room for new entries.
    known_peers_evicted,
    /// Messages delivered to the consumer of the event stream.
    messages_delivered,
    /// Known-peer records written to the peer store (after coalescing).
    store_writes,
    /// Peer-store calls that failed.
    store_errors,
    /// Peer-store writes dropped because its queue was full.
    store_dropped,
}
