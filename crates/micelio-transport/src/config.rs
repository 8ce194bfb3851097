//! [`TransportConfig`]: every knob of the peer manager, with the protocol's
//! defaults.

use std::time::Duration;

use micelio_wire::limits;

/// Default of [`TransportConfig::max_pending_handshakes`].
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 64;
/// Default of [`TransportConfig::max_pending_per_host`].
pub const DEFAULT_MAX_PENDING_PER_HOST: usize = 8;
/// Default of [`TransportConfig::preauth_timeout`]: the protocol's hello
/// deadline, now covering the Noise handshake too.
pub const DEFAULT_PREAUTH_TIMEOUT: Duration = limits::HELLO_TIMEOUT;

/// Default of [`TransportConfig::duplicate_grace`].
pub const DEFAULT_DUPLICATE_GRACE: Duration = Duration::from_secs(5);

/// Configuration of a [`crate::PeerManager`].
///
/// Libraries never read files or the environment: the binary validates its
/// configuration and builds this struct.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Address to listen on (`host:port`); `None` makes the node outbound-only.
    pub listen: Option<String>,
    /// Address to advertise to peers; defaults to the bound listen address
    /// unless that is a wildcard (which is never advertised).
    pub advertise_addr: Option<String>,
    /// Addresses dialled at start and redialled forever with backoff.
    pub bootstrap: Vec<String>,
    /// Tags sent in the hello.
    pub tags: Vec<String>,
    /// Extensions announced in the hello (`PeerHello.features`); by default
    /// [`limits::FEATURE_EXTENSIONS_V1`] and
    /// [`limits::FEATURE_BROADCAST_TREE_V1`]. An empty list makes this node look
    /// like a reference node to its peers (used by tests of mixed meshes).
    pub features: Vec<String>,
    /// Peer cap, inbound and outbound together; counts authenticated peers
    /// only (connections still in the handshake have their own budget).
    pub max_peers: usize,
    /// Inbound connections still in the Noise handshake or hello, overall.
    /// Over it, the oldest silent one is closed to admit a newcomer (see
    /// the crate's admission rules); if none can be closed, the newcomer is.
    pub max_pending_handshakes: usize,
    /// Inbound connections still in the Noise handshake or hello from one
    /// source host, with the same eviction rule.
    pub max_pending_per_host: usize,
    /// Deadline of the whole pre-auth phase of an inbound connection, from
    /// accept to a verified hello (Noise handshake and hello together).
    pub preauth_timeout: Duration,
    /// TCP connect deadline.
    pub dial_timeout: Duration,
    /// Deadline of the Noise handshake, and separately of the hello exchange.
    pub hello_timeout: Duration,
    /// A keepalive is sent after this long without sending.
    pub keepalive_interval: Duration,
    /// A connection is closed after this long without receiving.
    pub idle_timeout: Duration,
    /// Deadline of each write.
    pub write_timeout: Duration,
    /// How long two connections to a peer without micelio extensions are
    /// both kept, waiting for the peer to close one, before the micelio
    /// rule closes one.
    pub duplicate_grace: Duration,
    /// Frames queued per peer before further ones are dropped.
    pub send_queue: usize,
    /// Peer-exchange period.
    pub exchange_interval: Duration,
    /// Discovery period.
    pub discovery_interval: Duration,
    /// Largest random delay before each discovery dial.
    pub discovery_jitter: Duration,
    /// Bootstrap redial backoff schedule; the last value repeats.
    pub bootstrap_backoff: Vec<Duration>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            listen: None,
            advertise_addr: None,
            bootstrap: Vec::new(),
            tags: Vec::new(),
            features: vec![
                limits::FEATURE_EXTENSIONS_V1.to_owned(),
                limits::FEATURE_BROADCAST_TREE_V1.to_owned(),
            ],
            max_peers: limits::DEFAULT_MAX_PEERS,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_pending_per_host: DEFAULT_MAX_PENDING_PER_HOST,
            preauth_timeout: DEFAULT_PREAUTH_TIMEOUT,
            dial_timeout: limits::DEFAULT_DIAL_TIMEOUT,
            hello_timeout: limits::HELLO_TIMEOUT,
            keepalive_interval: limits::DEFAULT_KEEPALIVE_INTERVAL,
            idle_timeout: limits::DEFAULT_IDLE_TIMEOUT,
            write_timeout: limits::DEFAULT_WRITE_TIMEOUT,
            send_queue: 256,
            duplicate_grace: DEFAULT_DUPLICATE_GRACE,
            exchange_interval: limits::DEFAULT_EXCHANGE_INTERVAL,
            discovery_interval: limits::DEFAULT_DISCOVERY_INTERVAL,
            discovery_jitter: limits::DISCOVERY_MAX_JITTER,
            bootstrap_backoff: limits::BOOTSTRAP_BACKOFF.to_vec(),
        }
    }
}

impl TransportConfig {
    /// Protocol defaults, listening on `listen` if given.
    pub fn new(listen: Option<String>) -> Self {
        Self {
            listen,
            ..Self::default()
        }
    }

    /// A configuration for tests: listening on `127.0.0.1:0`, with every
    /// timer short so that tests converge in well under a second per step.
    pub fn for_tests() -> Self {
        Self {
            listen: Some("127.0.0.1:0".into()),
            dial_timeout: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(2),
            preauth_timeout: Duration::from_secs(3),
            duplicate_grace: Duration::from_millis(500),
            keepalive_interval: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(2),
            exchange_interval: Duration::from_millis(300),
            discovery_interval: Duration::from_millis(200),
            discovery_jitter: Duration::from_millis(50),
            bootstrap_backoff: vec![
                Duration::from_millis(50),
                Duration::from_millis(100),
                Duration::from_millis(200),
            ],
            ..Self::default()
        }
    }
}

/// Whether `addr` (`host:port`) may be advertised or dialled as a peer
/// address: a port, and a host that is neither empty nor a wildcard.
pub fn is_dialable_addr(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !port.is_empty()
        && port.parse::<u16>().is_ok_and(|p| p != 0)
        && !host.is_empty()
        && host != "0.0.0.0"
        && host != "::"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialable_addresses() {
        assert!(is_dialable_addr("127.0.0.1:4000"));
        assert!(is_dialable_addr("node.example:4000"));
        assert!(is_dialable_addr("[::1]:4000"));
        for bad in [
            "",
            "127.0.0.1",
            "0.0.0.0:4000",
            "[::]:4000",
            ":4000",
            "h:0",
            "h:x",
        ] {
            assert!(!is_dialable_addr(bad), "{bad}");
        }
    }
}
