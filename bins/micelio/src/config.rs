//! The node's configuration: typed sections and their validation.
//!
//! Loading happens in two stages (see [`mod@load`]): figment merges defaults, the
//! TOML file, `MICELIO_…` environment variables and command-line flags into
//! one raw tree of loose values; then [`Config::check`] validates that tree
//! field by field into the typed [`Config`], reporting every bad field at
//! once ([`check::FieldError`]).
//!
//! Adding a section means: one struct (deriving `Serialize`, with its
//! defaults), one `check` function reading it through a [`Section`], and one
//! line in [`Config`] and [`Config::check`]. The serialized defaults are also
//! the schema: a key they do not have is reported as unknown, and
//! `docs/config.example.toml` must list exactly their keys (a test checks).

pub(crate) mod check;
pub(crate) mod load;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

use self::check::{Checker, Host, Section};
pub(crate) use self::load::{ConfigError, Overrides, Sources, load};

/// The validated configuration of a node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Config {
    /// `[node]`: who this node is and where it keeps its data.
    pub(crate) node: NodeConfig,
    /// `[ssh]`: the partyline's SSH server.
    pub(crate) ssh: SshConfig,
    /// `[network]`: peer connections, discovery and their timeouts.
    pub(crate) network: NetworkConfig,
    /// `[gossip]`: message relay.
    pub(crate) gossip: GossipConfig,
    /// `[partyline]`: the chat hub.
    pub(crate) partyline: PartylineConfig,
    /// `[state]`: the replicated key/value map and membership.
    pub(crate) state: StateConfig,
    /// `[logging]`: level and format of the log on stderr.
    pub(crate) logging: LoggingConfig,
    /// `[desired]`: who may desire state.
    pub(crate) desired: DesiredConfig,
    /// `[[reconcile]]`: command reconcilers, one per key prefix.
    pub(crate) reconcile: Vec<ReconcileConfig>,
    /// `[[plugins]]`: external plugins, started and supervised.
    pub(crate) plugins: Vec<PluginConfig>,
}

impl Config {
    /// The defaults, as the lowest configuration layer.
    pub(crate) fn defaults(host: &Host) -> Self {
        Self {
            node: NodeConfig::defaults(host),
            ssh: SshConfig::default(),
            network: NetworkConfig::default(),
            gossip: GossipConfig::default(),
            partyline: PartylineConfig::default(),
            state: StateConfig::default(),
            logging: LoggingConfig::default(),
            desired: DesiredConfig::default(),
            reconcile: Vec::new(),
            plugins: Vec::new(),
        }
    }

    /// A configuration for tests: data in `data_dir`, SSH and peers on
    /// `127.0.0.1:0`, no bootstrap peers, defaults otherwise.
    #[cfg(test)]
    pub(crate) fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Self::defaults(&Host::default());
        config.node.name = "test-node".to_owned();
        config.node.data_dir = data_dir.into();
        config.ssh.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.network.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config
    }

    /// Validates the raw tree behind `checker` into a `Config`. Returns
    /// `None` if any field is bad; the errors are in the checker.
    pub(crate) fn check(checker: &mut Checker<'_>) -> Option<Self> {
        let node = NodeConfig::check(&mut checker.section("node"));
        let ssh = SshConfig::check(&mut checker.section("ssh"));
        let network = NetworkConfig::check(&mut checker.section("network"));
        let gossip = GossipConfig::check(&mut checker.section("gossip"));
        let partyline = PartylineConfig::check(&mut checker.section("partyline"));
        let state = StateConfig::check(&mut checker.section("state"));
        let logging = LoggingConfig::check(&mut checker.section("logging"));
        let desired = DesiredConfig::check(&mut checker.section("desired"));
        let reconcile = ReconcileConfig::check_all(checker);
        let plugins = PluginConfig::check_all(checker);

        // Rules that span sections.
        if let (Some(ssh), Some(Some(listen))) = (&ssh, network.as_ref().map(|n| n.listen))
            && listen.port() != 0
            && listen.port() == ssh.listen.port()
            && (listen.ip() == ssh.listen.ip()
                || listen.ip().is_unspecified()
                || ssh.listen.ip().is_unspecified())
        {
            checker.error_at(
                "network.listen",
                format!("{listen} overlaps ssh.listen ({})", ssh.listen),
            );
        }

        Some(Self {
            node: node?,
            ssh: ssh?,
            network: network?,
            gossip: gossip?,
            partyline: partyline?,
            state: state?,
            logging: logging?,
            desired: desired?,
            reconcile: reconcile?,
            plugins: plugins?,
        })
    }

    /// The configuration as TOML, every field present; loading it back
    /// gives the same `Config`.
    pub(crate) fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// The longest node name, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 255;
/// The most runtime worker threads `node.worker_threads` accepts.
pub(crate) const MAX_WORKER_THREADS: u64 = 1024;
/// The most bootstrap addresses.
pub(crate) const MAX_BOOTSTRAP: usize = 1000;
/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NodeConfig {
    /// Display name; an empty value in the sources means the host name (or
    /// "micelio" when the machine has none).
    pub(crate) name: String,
    /// Tags: letters, digits, `-`, `_`, `.` (see `micelio_state::tags`).
    pub(crate) tags: Vec<String>,
    /// Where the identity, `authorized_keys` and the database live; a
    /// leading `~` is expanded, relative paths are made absolute.
    pub(crate) data_dir: PathBuf,
    /// Threads of the tokio runtime that runs the node: 0 means one per
    /// CPU core, 1 a single-threaded (current-thread) runtime, which
    /// suits small nodes and many nodes per machine. Blocking work (disk)
    /// runs on tokio's separate blocking pool either way.
    pub(crate) worker_threads: usize,
}

impl NodeConfig {
    fn defaults(host: &Host) -> Self {
        Self {
            name: default_name(host),
            tags: Vec::new(),
            data_dir: expand_home(Path::new("~/.micelio"), host.home.as_deref())
                .unwrap_or_else(|_| PathBuf::from("~/.micelio")),
            worker_threads: 0,
        }
    }

    fn check(s: &mut Section<'_, '_>) -> Option<Self> {
        let host = s.host();
        let name = s.parsed("name", |name| check_name(name, host));
        let tags = s.strings("tags").and_then(|tags| match check_tags(&tags) {
            Ok(()) => Some(tags),
            Err(message) => {
                s.error("tags", message);
                None
            }
        });
        let data_dir = s.parsed("data_dir", |dir| {
            if dir.trim().is_empty() {
                return Err("must not be empty".to_owned());
            }
            let dir = expand_home(Path::new(dir), host.home.as_deref())?;
            std::path::absolute(&dir).map_err(|e| format!("cannot resolve {}: {e}", dir.display()))
        });
        let worker_threads = s.number("worker_threads", 0, MAX_WORKER_THREADS);
        Some(Self {
            name: name?,
            tags: tags?,
            data_dir: data_dir?,
            worker_threads: worker_threads?,
        })
    }
}

fn default_name(host: &Host) -> String {
    host.hostname
        .as_deref()
        .filter(|name| check_name(name, &Host::default()).is_ok())
        .unwrap_or("micelio")
        .to_owned()
}

fn check_name(name: &str, host: &Host) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(default_name(host));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} bytes, got {}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{name:?} contains control characters"));
    }
    Ok(name.to_owned())
}

fn check_tags(tags: &[String]) -> Result<(), String> {
    micelio_state::tags::check_tags(tags).map_err(|e| e.to_string())
}

/// Expands a leading `~` or `~/` to `home`.
fn expand_home(path: &Path, home: Option<&Path>) -> Result<PathBuf, String> {
    let Some(text) = path.to_str() else {
        return Ok(path.to_owned());
    };
    let rest = match text.strip_prefix('~') {
        None => return Ok(path.to_owned()),
        Some("") => "",
        Some(rest) => match rest.strip_prefix('/') {
            Some(rest) => rest,
            None => return Err(format!("{text:?}: only a leading \"~/\" can be expanded")),
        },
    };
    let home = home.ok_or_else(|| {
        format!("{text:?}: cannot expand \"~\", the home directory is unknown (set HOME)")
    })?;
    Ok(if rest.is_empty() {
        home.to_owned()
    } else {
        home.join(rest)
    })
}

/// `[ssh]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SshConfig {
    /// Address of the SSH partyline server.
    pub(crate) listen: SocketAddr,
    /// Most SSH connections at once; more are closed at accept.
    pub(crate) max_connections: usize,
    /// An SSH connection with no traffic for this long is closed.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) inactivity_timeout: Duration,
    /// Deadline of each write to an SSH client; a client that stops reading
    /// is disconnected after it.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) write_timeout: Duration,
}

impl Default for SshConfig {
    fn default() -> Self {
        use micelio_ssh::SshConfig as Lib;
        let lib = Lib::new(Lib::DEFAULT_LISTEN, PathBuf::new());
        Self {
            listen: lib.listen,
            max_connections: lib.max_connections,
            inactivity_timeout: lib.inactivity_timeout,
            write_timeout: lib.write_timeout,
        }
    }
}

impl SshConfig {
    fn check(s: &mut Section<'_, '_>) -> Option<Self> {
        let listen = s.parsed("listen", check::parse_listen_addr);
        let max_connections = s.number("max_connections", 1, 100_000);
        let inactivity_timeout = s.duration("inactivity_timeout");
        let write_timeout = s.duration("write_timeout");
        Some(Self {
            listen: listen?,
            max_connections: max_connections?,
            inactivity_timeout: inactivity_timeout?,
            write_timeout: write_timeout?,
        })
    }
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NetworkConfig {
    /// Address for peer connections; `None` (empty in the sources) makes
    /// the node outbound-only.
    #[serde(serialize_with = "display_or_empty")]
    pub(crate) listen: Option<SocketAddr>,
    /// `host:port` told to peers instead of the bound address; never a
    /// wildcard. Requires `listen`.
    #[serde(serialize_with = "display_or_empty")]
    pub(crate) advertise_addr: Option<String>,
    /// `host:port` addresses (IPs or DNS names) dialled at start and
    /// redialled forever.
    pub(crate) bootstrap: Vec<String>,
    /// Most peers connected at once, inbound and outbound together.
    pub(crate) max_peers: usize,
    /// Period of peer exchange.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) exchange_interval: Duration,
    /// Period of the discovery scan.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) discovery_interval: Duration,
    /// Deadline for a TCP connect.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) dial_timeout: Duration,
    /// Deadline for the whole Noise handshake and hello exchange.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) hello_timeout: Duration,
    /// A keepalive is sent after this long without sending.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) keepalive_interval: Duration,
    /// A connection is closed after this long without receiving; always
    /// longer than `keepalive_interval`.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) idle_timeout: Duration,
    /// Deadline for each write to a peer.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) write_timeout: Duration,
    /// Length of each peer's bounded send queue; messages beyond it are
    /// dropped and counted.
    pub(crate) send_queue: usize,
    /// Inbound connections still in the handshake, overall.
    pub(crate) max_pending_handshakes: usize,
    /// Inbound connections still in the handshake, from one host.
    pub(crate) max_pending_per_host: usize,
    /// Deadline from accept to a verified hello for an inbound connection.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) preauth_timeout: Duration,
    /// How long two connections to a reference peer are kept, waiting for
    /// it to close one.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) duplicate_grace: Duration,
}

impl Default for NetworkConfig {
    /// The transport's defaults, from `TransportConfig::default()`.
    fn default() -> Self {
        let t = micelio_transport::TransportConfig::default();
        Self {
            listen: None,
            advertise_addr: t.advertise_addr,
            bootstrap: t.bootstrap,
            max_peers: t.max_peers,
            exchange_interval: t.exchange_interval,
            discovery_interval: t.discovery_interval,
            dial_timeout: t.dial_timeout,
            hello_timeout: t.hello_timeout,
            keepalive_interval: t.keepalive_interval,
            idle_timeout: t.idle_timeout,
            write_timeout: t.write_timeout,
            send_queue: t.send_queue,
            max_pending_handshakes: t.max_pending_handshakes,
            max_pending_per_host: t.max_pending_per_host,
            preauth_timeout: t.preauth_timeout,
            duplicate_grace: t.duplicate_grace,
        }
    }
}

impl NetworkConfig {
    fn check(s: &mut Section<'_, '_>) -> Option<Self> {
        let listen = s.parsed("listen", |text| {
            if text.trim().is_empty() {
                Ok(None)
            } else {
                check::parse_listen_addr(text).map(Some)
            }
        });
        let advertise_addr = s.parsed("advertise_addr", |text| {
            if text.trim().is_empty() {
                return Ok(None);
            }
            let addr = check::parse_host_port(text)?;
            if check::is_wildcard_host(&addr) {
                return Err(format!(
                    "{addr:?} is a wildcard address, which peers cannot dial"
                ));
            }
            Ok(Some(addr))
        });
        if let (Some(None), Some(Some(_))) = (listen, &advertise_addr) {
            s.error(
                "advertise_addr",
                "is set but network.listen is empty (an outbound-only node has nothing to advertise)",
            );
        }
        let bootstrap = s
            .strings("bootstrap")
            .and_then(|list| match check_bootstrap(list) {
                Ok(list) => Some(list),
                Err(message) => {
                    s.error("bootstrap", message);
                    None
                }
            });
        let max_peers = s.number("max_peers", 1, 1000);
        let exchange_interval = s.duration("exchange_interval");
        let discovery_interval = s.duration("discovery_interval");
        let dial_timeout = s.duration("dial_timeout");
        let hello_timeout = s.duration("hello_timeout");
        let keepalive_interval = s.duration("keepalive_interval");
        let idle_timeout = s.duration("idle_timeout");
        if let (Some(keepalive), Some(idle)) = (keepalive_interval, idle_timeout)
            && idle <= keepalive
        {
            s.error(
                "idle_timeout",
                format!(
                    "must be longer than network.keepalive_interval ({}), got {}",
                    humantime::format_duration(keepalive),
                    humantime::format_duration(idle)
                ),
            );
        }
        let write_timeout = s.duration("write_timeout");
        let send_queue = s.number("send_queue", 1, 65_536);
        let max_pending_handshakes = s.number("max_pending_handshakes", 1, 65_536);
        let max_pending_per_host = s.number("max_pending_per_host", 1, 65_536);
        if let (Some(all), Some(one)) = (max_pending_handshakes, max_pending_per_host)
            && one > all
        {
            s.error(
                "max_pending_per_host",
                format!("must be at most network.max_pending_handshakes ({all}), got {one}"),
            );
        }
        let preauth_timeout = s.duration("preauth_timeout");
        let duplicate_grace = s.duration("duplicate_grace");
        Some(Self {
            listen: listen?,
            advertise_addr: advertise_addr?,
            bootstrap: bootstrap?,
            max_peers: max_peers?,
            exchange_interval: exchange_interval?,
            discovery_interval: discovery_interval?,
            dial_timeout: dial_timeout?,
            hello_timeout: hello_timeout?,
            keepalive_interval: keepalive_interval?,
            idle_timeout: idle_timeout.filter(|idle| Some(*idle) > keepalive_interval)?,
            write_timeout: write_timeout?,
            send_queue: send_queue?,
            max_pending_per_host: max_pending_per_host
                .filter(|one| Some(*one) <= max_pending_handshakes)?,
            max_pending_handshakes: max_pending_handshakes?,
            preauth_timeout: preauth_timeout?,
            duplicate_grace: duplicate_grace?,
        })
    }
}

fn check_bootstrap(list: Vec<String>) -> Result<Vec<String>, String> {
    if list.len() > MAX_BOOTSTRAP {
        return Err(format!(
            "at most {MAX_BOOTSTRAP} addresses, got {}",
            list.len()
        ));
    }
    let mut problems = Vec::new();
    let mut checked: Vec<String> = Vec::with_capacity(list.len());
    for text in &list {
        match check::parse_host_port(text) {
            Ok(addr) if checked.contains(&addr) => {
                problems.push(format!("{addr:?} is listed twice"))
            }
            Ok(addr) => checked.push(addr),
            Err(message) => problems.push(message),
        }
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems.join("; "))
    }
}

/// `[gossip]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct GossipConfig {
    /// How messages spread: the broadcast tree, or random fanout.
    pub(crate) broadcast: Broadcast,
    /// Peers each relayed message is forwarded to (`broadcast = "fanout"`).
    pub(crate) fanout: usize,
    /// Hop count of originated messages.
    pub(crate) max_hops: u32,
    /// How long a message id is remembered for deduplication.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) seen_ttl: Duration,
    /// Most message ids remembered for deduplication.
    pub(crate) seen_cap: usize,
    /// Sustained messages per second accepted from one sender.
    pub(crate) rate_per_sec: u32,
    /// Burst of messages accepted from one sender.
    pub(crate) rate_burst: u32,
    /// How often recent message ids are announced to peers so that they
    /// can ask for what they missed (gossip repair); zero (`"0s"`)
    /// disables repair.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) repair_interval: Duration,
    /// Messages this recent are announced.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) repair_window: Duration,
    /// How long accepted messages are kept to answer repair requests; at
    /// least `repair_window`.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) repair_retention: Duration,
    /// Most sender keys learned from gossip kept (least recently used
    /// evicted).
    pub(crate) learned_keys_cap: usize,
    /// Most per-sender rate buckets kept.
    pub(crate) rate_buckets_cap: usize,
    /// This node's own originations per second (below `rate_per_sec`).
    pub(crate) pace_per_sec: u32,
    /// Burst of this node's own originations (below `rate_burst`).
    pub(crate) pace_burst: u32,
    /// Own originations queued, in order, before more are refused.
    pub(crate) origin_queue: usize,
    /// How long lazy announcements wait to be batched.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) lazy_delay: Duration,
    /// How long an announced message may take before its announcer is
    /// grafted.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) graft_timeout: Duration,
    /// How long before the next announcer is grafted.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) graft_retry: Duration,
}

/// `gossip.broadcast`: how this node spreads gossip to other micelio nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Broadcast {
    /// Epidemic broadcast tree (announced as `micelio/tree/1`).
    Tree,
    /// The reference's rule: `fanout` random peers.
    Fanout,
}

impl Broadcast {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "tree" => Ok(Self::Tree),
            "fanout" => Ok(Self::Fanout),
            other => Err(format!("expected \"tree\" or \"fanout\", got {other:?}")),
        }
    }
}

impl Default for GossipConfig {
    /// The engine's defaults, from `micelio_gossip::GossipConfig::default()`.
    fn default() -> Self {
        let g = micelio_gossip::GossipConfig::default();
        Self {
            broadcast: if g.broadcast_tree {
                Broadcast::Tree
            } else {
                Broadcast::Fanout
            },
            fanout: g.fanout,
            max_hops: g.max_hops,
            seen_ttl: g.seen_ttl,
            seen_cap: g.seen_cap,
            rate_per_sec: g.rate_per_sec,
            rate_burst: g.rate_burst,
            repair_interval: g.repair_interval,
            repair_window: g.repair_window,
            repair_retention: g.repair_retention,
            learned_keys_cap: g.learned_keys_cap,
            rate_buckets_cap: g.rate_buckets_cap,
            pace_per_sec: g.pace_per_sec,
            pace_burst: g.pace_burst,
            origin_queue: g.origin_queue,
            lazy_delay: g.lazy_delay,
            graft_timeout: g.graft_timeout,
            graft_retry: g.graft_retry,
        }
    }
}

impl GossipConfig {
    fn check(s: &mut Section<'_, '_>) -> Option<Self> {
        let broadcast = s.parsed("broadcast", Broadcast::parse);
        let fanout = s.number("fanout", 1, 100);
        let lazy_delay = s.duration("lazy_delay");
        let graft_timeout = s.duration("graft_timeout");
        let graft_retry = s.duration("graft_retry");
        let max_hops = s.number("max_hops", 1, 255);
        let seen_ttl = s.duration("seen_ttl");
        let seen_cap = s.number("seen_cap", 1_000, 100_000_000);
        let rate_per_sec = s.number("rate_per_sec", 1, 1_000_000);
        let rate_burst = s.number("rate_burst", 1, 1_000_000);
        let repair_interval = s.parsed("repair_interval", |text| {
            if humantime::parse_duration(text.trim()).is_ok_and(|d| d.is_zero()) {
                Ok(Duration::ZERO)
            } else {
                check::parse_duration(text)
            }
        });
        let repair_window = s.duration("repair_window");
        let repair_retention = s.duration("repair_retention");
        let learned_keys_cap = s.number("learned_keys_cap", 64, 10_000_000);
        let rate_buckets_cap = s.number("rate_buckets_cap", 64, 10_000_000);
        let origin_queue = s.number("origin_queue", 1, 1_000_000);
        // Relays (ours and the reference's) drop what a sender sends over
        // their per-sender limit: our own pace stays under the mesh's.
        let pace_per_sec = Self::below(s, "pace_per_sec", "rate_per_sec", rate_per_sec);
        let pace_burst = Self::below(s, "pace_burst", "rate_burst", rate_burst);
        if let (Some(window), Some(retention)) = (repair_window, repair_retention)
            && retention < window
        {
            s.error(
                "repair_retention",
                format!(
                    "must be at least gossip.repair_window ({}), got {}",
                    humantime::format_duration(window),
                    humantime::format_duration(retention)
                ),
            );
        }
        Some(Self {
            broadcast: broadcast?,
            lazy_delay: lazy_delay?,
            graft_timeout: graft_timeout?,
            graft_retry: graft_retry?,
            fanout: fanout?,
            max_hops: max_hops?,
            seen_ttl: seen_ttl?,
            seen_cap: seen_cap?,
            rate_per_sec: rate_per_sec?,
            rate_burst: rate_burst?,
            repair_interval: repair_interval?,
            repair_window: repair_window?,
            repair_retention: repair_retention.filter(|r| Some(*r) >= repair_window)?,
            learned_keys_cap: learned_keys_cap?,
            rate_buckets_cap: rate_buckets_cap?,
            pace_per_sec: pace_per_sec?,
            pace_burst: pace_burst?,
            origin_queue: origin_queue?,
        })
    }

    /// `key`, a number from 1 that must be below the per-sender `limit`
    /// (`limit_key`), when that one is valid.
    fn below(
        s: &mut Section<'_, '_>,
        key: &str,
        limit_key: &str,
        limit: Option<u32>,
    ) -> Option<u32> {
        let value: u32 = s.number(key, 1, 1_000_000)?;
        match limit {
            Some(limit) if value >= limit => {
                s.error(
                    key,
                    format!(
                        "must be below gossip.{limit_key} ({limit}), or relays drop this \
                         node's own messages; got {value}"
                    ),
                );
                None
            }
            _ => Some(value),
        }
    }
}

/// Shortest `partyline.presence_debounce`: a burst of joins and leaves
/// costs one announcement, not one each.
const PRESENCE_DEBOUNCE_MIN: Duration = Duration::from_millis(100);
/// Longest `partyline.presence_debounce`: other nodes learn of a change
/// within a minute.
const PRESENCE_DEBOUNCE_MAX: Duration = Duration::from_secs(60);

/// `[partyline]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PartylineConfig {
    /// Chat lines a joining session is shown.
    pub(crate) history_lines: usize,
    /// How often this node re-announces its users to the mesh.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) presence_interval: Duration,
    /// How long after a change of users it is announced.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) presence_debounce: Duration,
}

impl Default for PartylineConfig {
    /// The hub's defaults, from `micelio_partyline::PartylineConfig::new`.
    fn default() -> Self {
        let p = micelio_partyline::PartylineConfig::new("");
        Self {
            history_lines: p.history_lines,
            presence_interval: p.presence_interval,
            presence_debounce: p.presence_debounce,
        }
    }
}

impl PartylineConfig {
    fn check(s: &mut Section<'_, '_>) -> Option<Self> {
        let history_lines = s.number("history_lines", 0, 1000);
        // Receivers forget a presence after at most PRESENCE_TTL_MAX; the
        // node announces itself at least three times within it.
        let max = micelio_partyline::PRESENCE_TTL_MAX / 3;
        let range = Duration::from_secs(1)..=max;
        let presence_interval = s.duration("presence_interval");
        if let Some(d) = presence_interval
            && !range.contains(&d)
        {
            s.error(
                "presence_interval",
                format!(
                    "must be between 1s and {}, got {}",
                    humantime::format_duration(max),
                    humantime::format_duration(d)
                ),
            );
        }
        let debounce_range = PRESENCE_DEBOUNCE_MIN..=PRESENCE_DEBOUNCE_MAX;
        let presence_debounce = s.duration("presence_debounce");
        if let Some(d) = presence_debounce
            && !debounce_range.contains(&d)
        {
            s.error(
                "presence_debounce",
                format!(
                    "must be between {} and {}, got {}",
                    humantime::format_duration(PRESENCE_DEBOUNCE_MIN),
                    humantime::format_duration(PRESENCE_DEBOUNCE_MAX),
                    humantime::format_duration(d)
                ),
            );
        }
        Some(Self {
            history_lines: history_lines?,
            presence_interval: presence_interval.filter(|d| range.contains(d))?,
            presence_debounce: presence_debounce.filter(|d| debounce_range.contains(d))?,
        })
    }
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct StateConfig {
    /// Largest value in bytes this node writes and accepts.
    pub(crate) max_value: usize,
    /// Most entries (tombstones included) the map holds.
    pub(crate) max_entries: u64,
    /// sled's page cache for the state database, in MiB.
    pub(crate) cache_mib: u64,
    /// Period of the anti-entropy round.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) sync_interval: Duration,
    /// How often this node writes its heartbeat.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) heartbeat_interval: Duration,
    /// Silence after which a member is suspect.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) suspect_after: Duration,
    /// Silence after which a member is dead.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) dead_after: Duration,
    /// Age at which a tombstone is collected.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) tombstone_ttl: Duration,
    /// Period of tombstone collection.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) gc_interval: Duration,
}

/// Largest `state.cache_mib`.
const MAX_STATE_CACHE_MIB: u64 = 64 * 1024;
/// Shortest `state.tombstone_ttl`: a deletion must outlive a partition
/// long enough to reach every node.
const MIN_TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// Longest `state.tombstone_ttl`.
const MAX_TOMBSTONE_TTL: Duration = Duration::from_secs(365 * 86_400);

impl Default for StateConfig {
    /// The service's defaults, from `micelio_state::StateConfig::default`.
    fn default() -> Self {
        let d = micelio_state::StateConfig::default();
        Self {
            max_value: d.limits.max_value,
            max_entries: d.limits.max_entries,
            cache_mib: micelio_state::store::DEFAULT_CACHE_BYTES >> 20,
            sync_interval: d.sync_interval,
            heartbeat_interval: d.liveness.heartbeat_interval,
            suspect_after: d.liveness.suspect_after,
            dead_after: d.liveness.dead_after,
            tombstone_ttl: d.tombstone_ttl,
            gc_interval: d.gc_interval,
        }
    }
}

impl StateConfig {
    fn check(s: &mut Section<'_, '_>) -> Option<Self> {
        let max_value = s.number("max_value", 1, micelio_wire::limits::MAX_STATE_VALUE as u64);
        let max_entries = s.number("max_entries", 1_000, 1_000_000_000);
        let cache_mib = s.number("cache_mib", 1, MAX_STATE_CACHE_MIB);
        let sync_interval = Self::within(
            s,
            "sync_interval",
            Duration::from_secs(1),
            Duration::from_secs(3600),
        );
        let heartbeat_interval = Self::within(
            s,
            "heartbeat_interval",
            Duration::from_millis(100),
            Duration::from_secs(3600),
        );
        let suspect_after = s.duration("suspect_after");
        let dead_after = s.duration("dead_after");
        // Longer than other durations may be (a day): a deletion must
        // outlive the longest partition a fleet expects.
        let tombstone_ttl = s.parsed("tombstone_ttl", |text| {
            let d = humantime::parse_duration(text.trim())
                .map_err(|e| format!("expected a duration such as \"24h\": {e}"))?;
            if (MIN_TOMBSTONE_TTL..=MAX_TOMBSTONE_TTL).contains(&d) {
                Ok(d)
            } else {
                Err(format!(
                    "must be between 1m and 365days, got {}",
                    humantime::format_duration(d)
                ))
            }
        });
        let gc_interval = Self::within(
            s,
            "gc_interval",
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        );
        // A member is suspect after missing at least two heartbeats, and
        // dead after being suspect.
        let mut ok = true;
        if let (Some(hb), Some(suspect)) = (heartbeat_interval, suspect_after)
            && suspect < hb * 2
        {
            ok = false;
            s.error(
                "suspect_after",
                format!(
                    "must be at least twice state.heartbeat_interval ({}), got {}",
                    humantime::format_duration(hb),
                    humantime::format_duration(suspect)
                ),
            );
        }
        if let (Some(suspect), Some(dead)) = (suspect_after, dead_after)
            && dead <= suspect
        {
            ok = false;
            s.error(
                "dead_after",
                format!(
                    "must be longer than state.suspect_after ({}), got {}",
                    humantime::format_duration(suspect),
                    humantime::format_duration(dead)
                ),
            );
        }
        if !ok {
            return None;
        }
        Some(Self {
            max_value: max_value?,
            max_entries: max_entries?,
            cache_mib: cache_mib?,
            sync_interval: sync_interval?,
            heartbeat_interval: heartbeat_interval?,
            suspect_after: suspect_after?,
            dead_after: dead_after?,
            tombstone_ttl: tombstone_ttl?,
            gc_interval: gc_interval?,
        })
    }

    /// A duration `key` in `min..=max`.
    fn within(
        s: &mut Section<'_, '_>,
        key: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let d = s.duration(key)?;
        if (min..=max).contains(&d) {
            Some(d)
        } else {
            s.error(
                key,
                format!(
                    "must be between {} and {}, got {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max),
                    humantime::format_duration(d)
                ),
            );
            None
        }
    }
}

/// Format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct LoggingConfig {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or a
    /// tracing filter such as `info,micelio_transport=debug`; checked to
    /// parse.
    pub(crate) level: String,
    /// `text` or `json`.
    pub(crate) format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl LoggingConfig {
    fn check(s: &mut Section<'_, '_>) -> Option<Self> {
        let level = s.parsed("level", crate::logging::parse_filter);
        let format = s.parsed("format", |text| match text.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("must be \"text\" or \"json\", got {other:?}")),
        });
        Some(Self {
            level: level?,
            format: format?,
        })
    }
}

fn humantime_str<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

fn display_or_empty<S, T>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: std::fmt::Display,
{
    match value {
        Some(value) => s.collect_str(value),
        None => s.serialize_str(""),
    }
}

#[cfg(test)]
mod tests;

/// `[desired]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct DesiredConfig {
    /// NodeIds whose desired entries count; empty: every member's do.
    pub(crate) admins: Vec<String>,
}

impl DesiredConfig {
    fn check(s: &mut Section<'_, '_>) -> Option<Self> {
        let admins = s.strings("admins")?;
        let mut out = Vec::with_capacity(admins.len());
        for (i, a) in admins.iter().enumerate() {
            let a = a.to_ascii_lowercase();
            if a.parse::<micelio_identity::NodeId>().is_err() {
                s.error(
                    "admins",
                    format!(
                        "item {}: {a:?} is not a NodeId (64 hex digits, `micelio id` prints it)",
                        i + 1
                    ),
                );
                return None;
            }
            out.push(a);
        }
        Some(Self { admins: out })
    }

    /// The admins as a set; `None` when every member is trusted.
    pub(crate) fn admins(&self) -> Option<std::collections::BTreeSet<micelio_identity::NodeId>> {
        if self.admins.is_empty() {
            return None;
        }
        Some(self.admins.iter().filter_map(|a| a.parse().ok()).collect())
    }
}

/// Shortest `[[reconcile]] timeout`.
const MIN_RECONCILE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest `[[reconcile]] timeout`.
const MAX_RECONCILE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most `[[reconcile]]` tables.
const MAX_RECONCILERS: usize = 256;

/// One `[[reconcile]]` table: a command reconciler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ReconcileConfig {
    /// A name for logs and `/drift` (the prefix when not given).
    pub(crate) name: String,
    /// The desired keys it claims: those starting with this prefix.
    pub(crate) prefix: String,
    /// The program and its arguments (run directly, not by a shell).
    pub(crate) command: Vec<String>,
    /// Time limit of one run.
    #[serde(serialize_with = "humantime_str")]
    pub(crate) timeout: Duration,
}

impl ReconcileConfig {
    fn check_all(checker: &mut Checker<'_>) -> Option<Vec<Self>> {
        let n = checker.table_count("reconcile");
        if n > MAX_RECONCILERS {
            checker.error_at(
                "reconcile",
                format!("at most {MAX_RECONCILERS} reconcilers, got {n}"),
            );
            return None;
        }
        let mut out = Vec::with_capacity(n);
        let mut ok = true;
        for i in 0..n {
            let Some(mut s) = checker.table("reconcile", i) else {
                ok = false;
                continue;
            };
            match Self::check(&mut s) {
                Some(r) => {
                    if let Some(other) = out.iter().find(|o: &&Self| o.prefix == r.prefix) {
                        s.error(
                            "prefix",
                            format!("{:?} is already claimed by {:?}", r.prefix, other.name),
                        );
                        ok = false;
                    } else {
                        out.push(r);
                    }
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn check(s: &mut Section<'_, '_>) -> Option<Self> {
        s.unknown_keys(&["name", "prefix", "command", "timeout"]);
        let prefix = s.parsed("prefix", |p| {
            if p.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Err("may not contain whitespace or control characters".to_owned());
            }
            if p.len() > micelio_state::desired::MAX_KEY_LEN {
                return Err(format!(
                    "longer than {} bytes",
                    micelio_state::desired::MAX_KEY_LEN
                ));
            }
            Ok(p.to_owned())
        });
        let command = s.strings("command").and_then(|c| {
            if c.is_empty() {
                s.error("command", "must name a program");
                None
            } else {
                Some(c)
            }
        });
        let timeout = s
            .optional_duration("timeout", micelio_state::desired::DEFAULT_TIMEOUT)
            .and_then(|t| {
                if (MIN_RECONCILE_TIMEOUT..=MAX_RECONCILE_TIMEOUT).contains(&t) {
                    Some(t)
                } else {
                    s.error("timeout", "must be between 1s and 1h");
                    None
                }
            });
        let prefix = prefix?;
        let name = s.optional_string("name").unwrap_or_else(|| prefix.clone());
        Some(Self {
            name: if name.is_empty() {
                prefix.clone()
            } else {
                name
            },
            prefix,
            command: command?,
            timeout: timeout?,
        })
    }
}

/// Most `[[plugins]]` tables.
const MAX_PLUGINS: usize = 64;
/// Most `[[plugins]] max_restarts`.
const MAX_PLUGIN_RESTARTS: u32 = 1000;

/// One `[[plugins]]` table: an external plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PluginConfig {
    /// Its name (1–32 of a-z, 0-9, - and _, starting with a letter).
    pub(crate) name: String,
    /// The program (looked up in `PATH` when it has no slash).
    pub(crate) command: String,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// Variables added to its environment.
    pub(crate) env: std::collections::BTreeMap<String, String>,
    /// Its working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cwd: Option<PathBuf>,
    /// Exits in a row before the node gives up on it.
    pub(crate) max_restarts: u32,
    /// What it may claim.
    pub(crate) allow: PluginAllow,
}

/// `[plugins.allow]`: each list, when given, bounds what the plugin may
/// claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct PluginAllow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) commands: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) msg_types: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) desired_prefixes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) events: Option<Vec<String>>,
}

impl PluginConfig {
    fn check_all(checker: &mut Checker<'_>) -> Option<Vec<Self>> {
        let n = checker.table_count("plugins");
        if n > MAX_PLUGINS {
            checker.error_at("plugins", format!("at most {MAX_PLUGINS} plugins, got {n}"));
            return None;
        }
        let mut out: Vec<Self> = Vec::with_capacity(n);
        let mut ok = true;
        for i in 0..n {
            let Some(mut s) = checker.table("plugins", i) else {
                ok = false;
                continue;
            };
            match Self::check(&mut s) {
                Some(p) if out.iter().any(|o| o.name == p.name) => {
                    s.error(
                        "name",
                        format!("{:?} is the name of another plugin", p.name),
                    );
                    ok = false;
                }
                Some(p) => out.push(p),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn check(s: &mut Section<'_, '_>) -> Option<Self> {
        s.unknown_keys(&[
            "name",
            "command",
            "args",
            "env",
            "cwd",
            "max_restarts",
            "allow",
        ]);
        let name = s.parsed("name", |n| {
            micelio_plugins::manifest::check_name(n).map(|()| n.to_owned())
        });
        let command = s.parsed("command", |c| {
            if c.trim().is_empty() {
                Err("must name a program".to_owned())
            } else {
                Ok(c.to_owned())
            }
        });
        let args = if s.has("args") {
            s.strings("args")
        } else {
            Some(Vec::new())
        };
        let env = if s.has("env") {
            s.string_map("env")
        } else {
            Some(std::collections::BTreeMap::new())
        };
        let cwd = s.optional_string("cwd").map(PathBuf::from);
        let max_restarts = if s.has("max_restarts") {
            s.number("max_restarts", 0, u64::from(MAX_PLUGIN_RESTARTS))
        } else {
            Some(micelio_plugins::external::DEFAULT_MAX_RESTARTS)
        };
        let allow = if s.has("allow") {
            s.table("allow")
                .and_then(|mut a| PluginAllow::check(&mut a))
        } else {
            Some(PluginAllow::default())
        };
        Some(Self {
            name: name?,
            command: command?,
            args: args?,
            env: env?,
            cwd,
            max_restarts: max_restarts?,
            allow: allow?,
        })
    }

    /// How the plugin host runs it.
    pub(crate) fn external(&self) -> micelio_plugins::external::ExternalConfig {
        let mut c = micelio_plugins::external::ExternalConfig::new(&self.name, &self.command);
        c.args.clone_from(&self.args);
        c.env.clone_from(&self.env);
        c.cwd.clone_from(&self.cwd);
        c.max_restarts = self.max_restarts;
        c.allow = micelio_plugins::external::Allow {
            commands: self.allow.commands.clone(),
            msg_types: self.allow.msg_types.clone(),
            desired_prefixes: self.allow.desired_prefixes.clone(),
            events: self.allow.events.as_ref().map(|e| {
                e.iter()
                    .filter_map(|k| micelio_plugins::EventKind::parse(k))
                    .collect()
            }),
        };
        c
    }
}

impl PluginAllow {
    fn check(s: &mut Section<'_, '_>) -> Option<Self> {
        s.unknown_keys(&["commands", "msg_types", "desired_prefixes", "events"]);
        let mut ok = true;
        let commands = if s.has("commands") {
            let v = s.strings("commands");
            ok &= v.is_some();
            v
        } else {
            None
        };
        let msg_types = if s.has("msg_types") {
            let v = s.numbers("msg_types", 1000, u64::from(u32::MAX));
            ok &= v.is_some();
            v
        } else {
            None
        };
        let desired_prefixes = if s.has("desired_prefixes") {
            let v = s.strings("desired_prefixes");
            ok &= v.is_some();
            v
        } else {
            None
        };
        let events = if s.has("events") {
            let v = s.strings("events").and_then(|list| {
                match list
                    .iter()
                    .find(|e| micelio_plugins::EventKind::parse(e).is_none())
                {
                    Some(bad) => {
                        s.error(
                            "events",
                            format!("unknown event kind {bad:?} (chat, state, peers, members)"),
                        );
                        None
                    }
                    None => Some(list),
                }
            });
            ok &= v.is_some();
            v
        } else {
            None
        };
        ok.then_some(Self {
            commands,
            msg_types,
            desired_prefixes,
            events,
        })
    }
}
