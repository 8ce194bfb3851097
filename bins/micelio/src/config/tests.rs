//! Tests of loading and validation: one per rule, precedence, error
//! reporting, and the committed example file.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::check::{FieldError, Host};
use super::load::{ConfigFile, schema_keys};
use super::*;

/// The committed example configuration.
const EXAMPLE: &str = include_str!("../../../../docs/config.example.toml");

fn host() -> Host {
    Host {
        hostname: Some("box".to_owned()),
        home: Some(PathBuf::from("/home/op")),
    }
}

/// The sources for a check: `toml` as the config file (written to a
/// temporary file, kept alive by the returned guard), `env`, and flags.
struct Case {
    toml: Option<String>,
    env: Vec<(String, String)>,
    overrides: Overrides,
    host: Host,
}

impl Case {
    fn new() -> Self {
        Self {
            toml: None,
            env: Vec::new(),
            overrides: Overrides::default(),
            host: host(),
        }
    }

    fn toml(mut self, text: &str) -> Self {
        self.toml = Some(text.to_owned());
        self
    }

    fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    fn flags(mut self, overrides: Overrides) -> Self {
        self.overrides = overrides;
        self
    }

    fn host(mut self, host: Host) -> Self {
        self.host = host;
        self
    }

    fn load(self) -> (Result<Config, ConfigError>, Option<PathBuf>) {
        let file = self.toml.map(|text| {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            file.write_all(text.as_bytes()).unwrap();
            file
        });
        let sources = Sources {
            file: file.as_ref().map_or(ConfigFile::None, |f| {
                ConfigFile::Required(f.path().to_owned())
            }),
            env: self.env,
            overrides: self.overrides,
            host: self.host,
        };
        let path = file.as_ref().map(|f| f.path().to_owned());
        (load(&sources), path)
    }

    #[track_caller]
    fn ok(self) -> Config {
        match self.load().0 {
            Ok(config) => config,
            Err(e) => panic!("expected a valid configuration, got {e}"),
        }
    }

    #[track_caller]
    fn errors(self) -> Vec<FieldError> {
        match self.load().0 {
            Ok(config) => panic!("expected errors, got {config:#?}"),
            Err(ConfigError::Invalid(errors)) => errors,
            Err(e) => panic!("expected field errors, got {e}"),
        }
    }

    /// Asserts exactly one error, on `field`, whose message contains
    /// `fragment`.
    #[track_caller]
    fn fails(self, field: &str, fragment: &str) {
        let errors = self.errors();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].field, field, "{errors:#?}");
        assert!(
            errors[0].message.contains(fragment),
            "{:?} does not contain {fragment:?}",
            errors[0].message
        );
    }
}

fn toml(text: &str) -> Case {
    Case::new().toml(text)
}

#[test]
fn defaults_follow_the_spec() {
    let config = Case::new().ok();
    assert_eq!(config, Config::defaults(&host()));
    assert_eq!(config.node.name, "box");
    assert!(config.node.tags.is_empty());
    assert_eq!(config.node.data_dir, Path::new("/home/op/.micelio"));
    assert_eq!(
        config.ssh.listen,
        "0.0.0.0:2222".parse::<SocketAddr>().unwrap()
    );
    // Every other default is the library's own (see
    // `node::tests::the_binary_defaults_are_the_libraries_defaults`); the
    // numbers are pinned once, in the libraries' tests.
    let n = &config.network;
    assert_eq!(n.listen, None);
    assert_eq!(n.advertise_addr, None);
    assert!(n.bootstrap.is_empty());
    let t = micelio_transport::TransportConfig::default();
    assert_eq!(
        (
            n.max_peers,
            n.send_queue,
            n.idle_timeout,
            n.keepalive_interval
        ),
        (
            t.max_peers,
            t.send_queue,
            t.idle_timeout,
            t.keepalive_interval
        )
    );
    let g = micelio_gossip::GossipConfig::default();
    assert_eq!(config.gossip.fanout, g.fanout);
    assert_eq!(config.gossip.repair_interval, g.repair_interval);
    assert_eq!(
        config.ssh.max_connections,
        micelio_ssh::SshConfig::DEFAULT_MAX_CONNECTIONS
    );
    assert_eq!(config.logging.level, "info");
    assert_eq!(config.logging.format, LogFormat::Text);
}

#[test]
fn for_tests_is_valid() {
    let config = Config::for_tests("/tmp/node");
    let reloaded = toml(&config.to_toml()).ok();
    assert_eq!(reloaded, config);
    assert_eq!(config.network.listen.map(|a| a.port()), Some(0));
}

#[test]
fn effective_config_round_trips_through_toml() {
    let config = toml(
        r#"
        [node]
        name = "edge-1"
        tags = ["eu", "gpu"]
        [network]
        listen = "[::1]:4000"
        advertise_addr = "edge-1.example.org:4000"
        bootstrap = ["10.0.0.1:4000", "seed.example.org:4000"]
        dial_timeout = "1500ms"
        [gossip]
        seen_ttl = "90s"
        "#,
    )
    .ok();
    assert_eq!(config.network.dial_timeout, Duration::from_millis(1500));
    assert_eq!(toml(&config.to_toml()).ok(), config);
}

// ---- [node] ----

#[test]
fn an_empty_name_means_the_host_name() {
    assert_eq!(toml("[node]\nname = \"\"").ok().node.name, "box");
    let no_host = Host {
        hostname: None,
        ..host()
    };
    assert_eq!(Case::new().host(no_host).ok().node.name, "micelio");
}

#[test]
fn names_are_bounded_and_printable() {
    toml("[node]\nname = \"a\\u0007b\"").fails("node.name", "control");
    toml(&format!("[node]\nname = \"{}\"", "x".repeat(256))).fails("node.name", "at most 255");
    toml("[node]\nname = 7").fails("node.name", "expected a string, got 7");
    assert_eq!(toml("[node]\nname = \" web-1 \"").ok().node.name, "web-1");
}

#[test]
fn tags_rules() {
    let config = toml("[node]\ntags = [\"eu-west\", \"gpu\"]").ok();
    assert_eq!(config.node.tags, ["eu-west", "gpu"]);
    toml("[node]\ntags = [\"a b\"]").fails("node.tags", "' ' at byte 1");
    toml("[node]\ntags = [\"a,b\"]").fails("node.tags", "','");
    toml("[node]\ntags = [\"a+b\"]").fails("node.tags", "'+' at byte 1");
    toml("[node]\ntags = [\"-a\"]").fails("node.tags", "start");
    toml("[node]\ntags = [\"\"]").fails("node.tags", "item 1 is empty");
    toml("[node]\ntags = [\"x\", \"x\"]").fails("node.tags", "x");
    toml("[node]\ntags = \"gpu\"").ok();
    toml("[node]\ntags = [1]").fails("node.tags", "expected a string");
    let many: Vec<String> = (0..65).map(|i| format!("\"t{i}\"")).collect();
    toml(&format!("[node]\ntags = [{}]", many.join(",")))
        .fails("node.tags", "over the limit of 64");
}

#[test]
fn data_dir_expands_home_and_is_absolute() {
    let dir = |text: &str| {
        toml(&format!("[node]\ndata_dir = {text:?}"))
            .ok()
            .node
            .data_dir
    };
    assert_eq!(dir("~/m"), Path::new("/home/op/m"));
    assert_eq!(dir("~"), Path::new("/home/op"));
    assert_eq!(dir("/var/lib/micelio"), Path::new("/var/lib/micelio"));
    assert!(dir("rel/dir").is_absolute());
    toml("[node]\ndata_dir = \"~bob/m\"").fails("node.data_dir", "only a leading");
    toml("[node]\ndata_dir = \"\"").fails("node.data_dir", "must not be empty");
    let homeless = Host {
        home: None,
        ..host()
    };
    toml("[node]\ndata_dir = \"~/m\"")
        .host(homeless)
        .fails("node.data_dir", "home directory is unknown");
}

// ---- [ssh] ----

#[test]
fn ssh_listen_must_be_ip_and_port() {
    toml("[ssh]\nlisten = \"localhost:22\"").fails("ssh.listen", "not an IP:port");
    toml("[ssh]\nlisten = \"\"").fails("ssh.listen", "not an IP:port");
    assert_eq!(
        toml("[ssh]\nlisten = \"[::]:2200\"").ok().ssh.listen.port(),
        2200
    );
}

// ---- [network] ----

#[test]
fn network_listen_is_optional() {
    assert_eq!(toml("[network]\nlisten = \"\"").ok().network.listen, None);
    let listen = toml("[network]\nlisten = \"127.0.0.1:0\"")
        .ok()
        .network
        .listen;
    assert_eq!(listen, Some(SocketAddr::from(([127, 0, 0, 1], 0))));
    toml("[network]\nlisten = \"nope\"").fails("network.listen", "\"nope\" is not");
    toml("[network]\nlisten = 4000").fails("network.listen", "expected a string");
}

#[test]
fn listen_addresses_may_not_overlap() {
    toml("[ssh]\nlisten = \"0.0.0.0:4000\"\n[network]\nlisten = \"127.0.0.1:4000\"")
        .fails("network.listen", "overlaps ssh.listen");
    toml("[ssh]\nlisten = \"127.0.0.1:4000\"\n[network]\nlisten = \"127.0.0.2:4000\"").ok();
    toml("[ssh]\nlisten = \"127.0.0.1:0\"\n[network]\nlisten = \"127.0.0.1:0\"").ok();
}

#[test]
fn advertise_addr_rules() {
    let with_listen = |addr: &str| {
        toml(&format!(
            "[network]\nlisten = \"0.0.0.0:4000\"\nadvertise_addr = {addr:?}"
        ))
    };
    let config = with_listen("node.example.org:4000").ok();
    assert_eq!(
        config.network.advertise_addr.as_deref(),
        Some("node.example.org:4000")
    );
    with_listen("0.0.0.0:4000").fails("network.advertise_addr", "wildcard");
    with_listen("[::]:4000").fails("network.advertise_addr", "wildcard");
    with_listen("node.example.org").fails("network.advertise_addr", "missing \":port\"");
    toml("[network]\nadvertise_addr = \"203.0.113.9:4000\"")
        .fails("network.advertise_addr", "network.listen is empty");
}

#[test]
fn bootstrap_rules() {
    let config = toml("[network]\nbootstrap = [\"10.0.0.1:4000\", \"seed.example.org:4000\"]").ok();
    assert_eq!(
        config.network.bootstrap,
        ["10.0.0.1:4000", "seed.example.org:4000"]
    );
    let errors = toml("[network]\nbootstrap = [\"a.example:1\", \"nope\", \"b:0\"]").errors();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].field, "network.bootstrap");
    assert!(
        errors[0].message.contains("\"nope\""),
        "{}",
        errors[0].message
    );
    assert!(
        errors[0].message.contains("\"b:0\""),
        "{}",
        errors[0].message
    );
    toml("[network]\nbootstrap = [\"a:1\", \"a:1\"]").fails("network.bootstrap", "twice");
}

#[test]
fn max_peers_range_and_type() {
    assert_eq!(
        toml("[network]\nmax_peers = 1000").ok().network.max_peers,
        1000
    );
    toml("[network]\nmax_peers = 0").fails("network.max_peers", "between 1 and 1000, got 0");
    toml("[network]\nmax_peers = 1001").fails("network.max_peers", "got 1001");
    toml("[network]\nmax_peers = -3").fails("network.max_peers", "between 1 and 1000, got -3");
    toml("[network]\nmax_peers = 1.5").fails("network.max_peers", "expected an integer, got 1.5");
    toml("[network]\nmax_peers = \"lots\"").fails("network.max_peers", "expected an integer");
    toml("[network]\nmax_peers = [1]").fails("network.max_peers", "got a list");
}

#[test]
fn durations_need_units_and_bounds() {
    for key in [
        "exchange_interval",
        "discovery_interval",
        "dial_timeout",
        "hello_timeout",
        "write_timeout",
    ] {
        let field = format!("network.{key}");
        toml(&format!("[network]\n{key} = \"30\"")).fails(&field, "is not a duration");
        toml(&format!("[network]\n{key} = 30")).fails(&field, "with a unit");
        toml(&format!("[network]\n{key} = \"0s\"")).fails(&field, "greater than zero");
        toml(&format!("[network]\n{key} = \"2days\"")).fails(&field, "at most 1day");
    }
    toml("[gossip]\nseen_ttl = \"soon\"").fails("gossip.seen_ttl", "is not a duration");
}

#[test]
fn idle_timeout_must_exceed_keepalive() {
    toml("[network]\nidle_timeout = \"20s\"").fails(
        "network.idle_timeout",
        "longer than network.keepalive_interval (20s)",
    );
    toml("[network]\nkeepalive_interval = \"2m\"").fails("network.idle_timeout", "got 1m");
    toml("[network]\nkeepalive_interval = \"5s\"\nidle_timeout = \"6s\"").ok();
}

#[test]
fn send_queue_range() {
    toml("[network]\nsend_queue = 0").fails("network.send_queue", "between 1 and 65536");
    assert_eq!(toml("[network]\nsend_queue = 1").ok().network.send_queue, 1);
}

#[test]
fn handshake_admission_settings() {
    let n = toml(
        "[network]\nmax_pending_handshakes = 10\nmax_pending_per_host = 2\n\
         preauth_timeout = \"3s\"\nduplicate_grace = \"1s\"",
    )
    .ok()
    .network;
    assert_eq!((n.max_pending_handshakes, n.max_pending_per_host), (10, 2));
    assert_eq!(n.preauth_timeout, Duration::from_secs(3));
    assert_eq!(n.duplicate_grace, Duration::from_secs(1));
    toml("[network]\nmax_pending_handshakes = 0")
        .fails("network.max_pending_handshakes", "between 1 and 65536");
    toml("[network]\nmax_pending_handshakes = 4\nmax_pending_per_host = 5").fails(
        "network.max_pending_per_host",
        "at most network.max_pending_handshakes (4), got 5",
    );
    toml("[network]\npreauth_timeout = \"0s\"")
        .fails("network.preauth_timeout", "greater than zero");
}

// ---- [gossip] ----

#[test]
fn gossip_ranges() {
    toml("[gossip]\nfanout = 0").fails("gossip.fanout", "between 1 and 100");
    toml("[gossip]\nmax_hops = 256").fails("gossip.max_hops", "between 1 and 255");
    toml("[gossip]\nrate_per_sec = 0").fails("gossip.rate_per_sec", "between 1");
    toml("[gossip]\nrate_burst = -1").fails("gossip.rate_burst", "got -1");
    toml("[gossip]\nseen_cap = 10").fails("gossip.seen_cap", "between 1000");
    toml("[gossip]\nlearned_keys_cap = 10").fails("gossip.learned_keys_cap", "between 64");
    toml("[gossip]\nrate_buckets_cap = 0").fails("gossip.rate_buckets_cap", "between 64");
    toml("[gossip]\norigin_queue = 0").fails("gossip.origin_queue", "between 1");
    toml("[gossip]\npace_per_sec = 0").fails("gossip.pace_per_sec", "between 1");
    toml("[gossip]\nbroadcast = \"flood\"").fails(
        "gossip.broadcast",
        "expected \"tree\" or \"fanout\", got \"flood\"",
    );
    toml("[gossip]\ngraft_timeout = \"0s\"").fails("gossip.graft_timeout", "greater than zero");
    toml("[gossip]\nlazy_delay = 5").fails("gossip.lazy_delay", "with a unit");
    let g = toml("[gossip]\nbroadcast = \"fanout\"\ngraft_retry = \"20ms\"")
        .ok()
        .gossip;
    assert_eq!(g.broadcast, crate::config::Broadcast::Fanout);
    assert_eq!(g.graft_retry, Duration::from_millis(20));
}

#[test]
fn gossip_pace_stays_below_the_mesh_rate_limit() {
    let config = toml(
        "[gossip]\nlearned_keys_cap = 100\nrate_buckets_cap = 200\norigin_queue = 9\n\
         rate_per_sec = 30\nrate_burst = 40\npace_per_sec = 29\npace_burst = 39",
    )
    .ok();
    let g = &config.gossip;
    assert_eq!(
        (g.learned_keys_cap, g.rate_buckets_cap, g.origin_queue),
        (100, 200, 9)
    );
    assert_eq!((g.pace_per_sec, g.pace_burst), (29, 39));
    toml("[gossip]\npace_per_sec = 10").fails(
        "gossip.pace_per_sec",
        "must be below gossip.rate_per_sec (10), or relays drop this node's own messages; got 10",
    );
    toml("[gossip]\nrate_burst = 10")
        .fails("gossip.pace_burst", "must be below gossip.rate_burst (10)");
    let config = Case::new()
        .env("MICELIO_GOSSIP__PACE_PER_SEC", "2")
        .env("MICELIO_GOSSIP__PACE_BURST", "3")
        .env("MICELIO_GOSSIP__ORIGIN_QUEUE", "7")
        .env("MICELIO_GOSSIP__LEARNED_KEYS_CAP", "500")
        .env("MICELIO_GOSSIP__RATE_BUCKETS_CAP", "600")
        .ok();
    let g = &config.gossip;
    assert_eq!(
        (
            g.pace_per_sec,
            g.pace_burst,
            g.origin_queue,
            g.learned_keys_cap,
            g.rate_buckets_cap
        ),
        (2, 3, 7, 500, 600)
    );
}

#[test]
fn gossip_repair_can_be_disabled_and_must_keep_what_it_announces() {
    let config = toml("[gossip]\nrepair_interval = \"0s\"").ok();
    assert_eq!(config.gossip.repair_interval, Duration::ZERO);
    toml("[gossip]\nrepair_window = \"0s\"").fails("gossip.repair_window", "greater than zero");
    toml("[gossip]\nrepair_window = \"1m\"\nrepair_retention = \"30s\"").fails(
        "gossip.repair_retention",
        "at least gossip.repair_window (1m)",
    );
    let config = Case::new()
        .env("MICELIO_GOSSIP__SEEN_CAP", "5000")
        .env("MICELIO_GOSSIP__REPAIR_RETENTION", "2m")
        .ok();
    assert_eq!(config.gossip.seen_cap, 5000);
    assert_eq!(config.gossip.repair_retention, Duration::from_secs(120));
}

#[test]
fn ssh_limits_are_settable() {
    let config = Case::new()
        .env("MICELIO_SSH__MAX_CONNECTIONS", "8")
        .env("MICELIO_SSH__INACTIVITY_TIMEOUT", "10m")
        .toml("[ssh]\nwrite_timeout = \"2s\"")
        .ok();
    assert_eq!(config.ssh.max_connections, 8);
    assert_eq!(config.ssh.inactivity_timeout, Duration::from_secs(600));
    assert_eq!(config.ssh.write_timeout, Duration::from_secs(2));
    toml("[ssh]\nmax_connections = 0").fails("ssh.max_connections", "between 1");
    toml("[ssh]\nwrite_timeout = \"0s\"").fails("ssh.write_timeout", "greater than zero");
}

#[test]
fn partyline_settings() {
    let config = toml("[partyline]\nhistory_lines = 0\npresence_interval = \"1m\"").ok();
    assert_eq!(config.partyline.history_lines, 0);
    assert_eq!(config.partyline.presence_interval, Duration::from_secs(60));
    toml("[partyline]\npresence_debounce = \"50ms\"").fails(
        "partyline.presence_debounce",
        "between 100ms and 1m, got 50ms",
    );
    toml("[partyline]\npresence_debounce = \"2m\"")
        .fails("partyline.presence_debounce", "between 100ms and 1m");
    let config = Case::new()
        .env("MICELIO_PARTYLINE__PRESENCE_DEBOUNCE", "500ms")
        .ok();
    assert_eq!(
        config.partyline.presence_debounce,
        Duration::from_millis(500)
    );
    toml("[partyline]\nhistory_lines = 1001")
        .fails("partyline.history_lines", "between 0 and 1000");
    toml("[partyline]\npresence_interval = \"500ms\"")
        .fails("partyline.presence_interval", "between 1s and 3m 20s");
    // Longer than a third of the longest TTL receivers keep: they would
    // forget the node between two announcements.
    toml("[partyline]\npresence_interval = \"1h\"")
        .fails("partyline.presence_interval", "between 1s and 3m 20s");
    let config = Case::new()
        .env("MICELIO_PARTYLINE__HISTORY_LINES", "5")
        .ok();
    assert_eq!(config.partyline.history_lines, 5);
}

#[test]
fn state_settings() {
    let config = toml(
        "[state]\nmax_value = 61440\nmax_entries = 5000\ncache_mib = 8\n\
         heartbeat_interval = \"1s\"\nsuspect_after = \"2s\"\ndead_after = \"3s\"",
    )
    .ok();
    assert_eq!(config.state.max_value, 61_440);
    assert_eq!(config.state.max_entries, 5_000);
    assert_eq!(config.state.cache_mib, 8);
    assert_eq!(config.state.dead_after, Duration::from_secs(3));
    toml("[state]\nmax_value = 61441").fails("state.max_value", "between 1 and 61440, got 61441");
    toml("[state]\nmax_entries = 10").fails("state.max_entries", "between 1000 and");
    toml("[state]\ncache_mib = 0").fails("state.cache_mib", "between 1 and 65536");
    toml("[state]\nsync_interval = \"100ms\"")
        .fails("state.sync_interval", "between 1s and 1h, got 100ms");
    toml("[state]\ntombstone_ttl = \"10s\"").fails("state.tombstone_ttl", "between 1m and");
    toml("[state]\ntombstone_ttl = \"400days\"").fails("state.tombstone_ttl", "365days");
    assert_eq!(
        toml("[state]\ntombstone_ttl = \"30days\"")
            .ok()
            .state
            .tombstone_ttl,
        Duration::from_secs(30 * 86_400)
    );
    toml("[state]\nheartbeat_interval = \"10s\"").fails(
        "state.suspect_after",
        "at least twice state.heartbeat_interval (10s), got 15s",
    );
    toml("[state]\ndead_after = \"15s\"").fails(
        "state.dead_after",
        "longer than state.suspect_after (15s), got 15s",
    );
    let config = Case::new().env("MICELIO_STATE__SYNC_INTERVAL", "3s").ok();
    assert_eq!(config.state.sync_interval, Duration::from_secs(3));
}

// ---- [logging] ----

#[test]
fn logging_rules() {
    let config =
        toml("[logging]\nlevel = \"warn,micelio_transport=debug\"\nformat = \"json\"").ok();
    assert_eq!(config.logging.level, "warn,micelio_transport=debug");
    assert_eq!(config.logging.format, LogFormat::Json);
    toml("[logging]\nlevel = \"loud\"").fails("logging.level", "not a level");
    toml("[logging]\nformat = \"xml\"").fails("logging.format", "\"text\" or \"json\"");
}

// ---- structure ----

#[test]
fn unknown_keys_and_sections_are_named() {
    toml("[network]\nmax_peer = 3").fails("network.max_peer", "did you mean `max_peers`");
    toml("[netwrok]\nlisten = \"\"").fails("netwrok", "unknown section (did you mean `network`");
    toml("verbose = true").fails("verbose", "unknown section");
    toml("[network]\nmax_peers = { a = 1 }").fails("network.max_peers", "got a table");
    toml("network = 5").fails("network", "expected a table, got 5");
}

#[test]
fn all_errors_are_reported_together() {
    let (result, path) = toml(
        r#"
        [node]
        tags = ["has space"]
        [network]
        listen = "nope"
        max_peers = -3
        max_peer = 3
        keepalive_interval = "forever"
        [logging]
        format = "yaml"
        "#,
    )
    .load();
    let Err(ConfigError::Invalid(errors)) = result else {
        panic!("expected field errors, got {result:?}");
    };
    let fields: BTreeSet<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    let expected = BTreeSet::from([
        "node.tags",
        "network.listen",
        "network.max_peers",
        "network.max_peer",
        "network.keepalive_interval",
        "logging.format",
    ]);
    assert_eq!(fields, expected, "{errors:#?}");
    let origin = format!("in {}", path.unwrap().display());
    assert!(
        errors
            .iter()
            .all(|e| e.origin.as_deref() == Some(origin.as_str())),
        "{errors:#?}"
    );
    let text = ConfigError::Invalid(errors).to_string();
    assert!(
        text.starts_with("invalid configuration (6 problems):"),
        "{text}"
    );
    assert!(
        text.contains("network.max_peers: must be between 1 and 1000, got -3"),
        "{text}"
    );
}

#[test]
fn file_errors_name_the_file() {
    let missing = Sources {
        file: ConfigFile::Required(PathBuf::from("/nonexistent/micelio.toml")),
        env: Vec::new(),
        overrides: Overrides::default(),
        host: host(),
    };
    let err = load(&missing).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/micelio.toml"), "{err}");
    let (result, _) = toml("[network\nlisten = 1").load();
    let err = result.unwrap_err();
    assert!(matches!(err, ConfigError::File { .. }), "{err}");
    assert!(err.to_string().contains("line 1"), "{err}");
    // An optional file that does not exist is no error.
    let optional = Sources {
        file: ConfigFile::IfExists(PathBuf::from("/nonexistent/micelio.toml")),
        ..missing
    };
    load(&optional).unwrap();
}

// ---- layers ----

#[test]
fn precedence_is_defaults_file_env_flags() {
    let file = "[node]\nname = \"file\"\n[network]\nmax_peers = 20\nlisten = \"127.0.0.1:1\"";
    let flags = Overrides {
        name: Some("flag".to_owned()),
        ..Overrides::default()
    };
    assert_eq!(Case::new().ok().node.name, "box");
    assert_eq!(toml(file).ok().node.name, "file");
    let env = || {
        toml(file)
            .env("MICELIO_NODE__NAME", "env")
            .env("MICELIO_NETWORK__MAX_PEERS", "30")
    };
    let config = env().ok();
    assert_eq!(config.node.name, "env");
    assert_eq!(config.network.max_peers, 30);
    assert_eq!(config.network.listen.map(|a| a.port()), Some(1));
    let config = env().flags(flags).ok();
    assert_eq!(config.node.name, "flag");
    assert_eq!(config.network.max_peers, 30);
}

#[test]
fn every_flag_sets_its_key() {
    let flags = Overrides {
        name: Some("n".to_owned()),
        data_dir: Some("/srv/m".to_owned()),
        ssh_listen: Some("127.0.0.1:22".to_owned()),
        listen: Some("127.0.0.1:4000".to_owned()),
        bootstrap: vec!["a.example:1".to_owned(), "b.example:2".to_owned()],
        log_level: Some("debug".to_owned()),
        log_format: Some("json".to_owned()),
        worker_threads: Some("1".to_owned()),
    };
    let config = toml("[network]\nbootstrap = [\"c.example:3\"]")
        .flags(flags)
        .ok();
    assert_eq!(config.node.name, "n");
    assert_eq!(config.node.data_dir, Path::new("/srv/m"));
    assert_eq!(config.node.worker_threads, 1);
    assert_eq!(config.ssh.listen.port(), 22);
    assert_eq!(config.network.listen.map(|a| a.port()), Some(4000));
    assert_eq!(config.network.bootstrap, ["a.example:1", "b.example:2"]);
    assert_eq!(config.logging.level, "debug");
    assert_eq!(config.logging.format, LogFormat::Json);
}

#[test]
fn errors_name_the_variable_or_flag_that_set_them() {
    let errors = Case::new()
        .env("MICELIO_NETWORK__MAX_PEERS", "-3")
        .env("MICELIO_NETWORK__MAX_PEER", "3")
        .env("MICELIO_NETWORK_MAX_PEERS", "3")
        // Not a configuration key: left to whatever tool it belongs to.
        .env("MICELIO_SLOW_TESTS", "1")
        .flags(Overrides {
            listen: Some("nope".to_owned()),
            ..Overrides::default()
        })
        .errors();
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for expected in [
        "network.max_peers: must be between 1 and 1000, got -3 (from MICELIO_NETWORK__MAX_PEERS)",
        "network.max_peer: unknown key (did you mean `max_peers`?) (from MICELIO_NETWORK__MAX_PEER)",
        "network_max_peers: unknown section (from MICELIO_NETWORK_MAX_PEERS)",
        "network.listen: \"nope\" is not an IP:port address to listen on (e.g. \"0.0.0.0:4000\") (from --listen)",
    ] {
        assert!(
            shown.iter().any(|s| s == expected),
            "{expected}\nnot in {shown:#?}"
        );
    }
    assert_eq!(shown.len(), 4, "{shown:#?}");
}

#[test]
fn env_values_are_strings_and_lists_are_comma_separated() {
    let config = Case::new()
        .env("MICELIO_NODE__NAME", "1234")
        .env("MICELIO_NODE__TAGS", "eu, gpu")
        .env(
            "MICELIO_NETWORK__BOOTSTRAP",
            "[a.example:1, \"b.example:2\"]",
        )
        .env("MICELIO_NETWORK__LISTEN", "[::1]:4000")
        .env("MICELIO_GOSSIP__SEEN_TTL", "10m")
        .env("micelio_logging__level", "ignored: wrong case prefix")
        .env("MICELIO_CONFIG", "/not/a/key")
        .env("OTHER", "x")
        .ok();
    assert_eq!(config.node.name, "1234");
    assert_eq!(config.node.tags, ["eu", "gpu"]);
    assert_eq!(config.network.bootstrap, ["a.example:1", "b.example:2"]);
    assert_eq!(config.network.listen, Some("[::1]:4000".parse().unwrap()));
    assert_eq!(config.gossip.seen_ttl, Duration::from_secs(600));
    let config = Case::new()
        .env("MICELIO_NETWORK__BOOTSTRAP", "")
        .env("MICELIO_NETWORK__LISTEN", "")
        .toml("[network]\nbootstrap = [\"a.example:1\"]\nlisten = \"127.0.0.1:1\"")
        .ok();
    assert!(config.network.bootstrap.is_empty());
    assert_eq!(config.network.listen, None);
}

// ---- docs/config.example.toml ----

#[test]
fn the_example_file_is_valid_and_holds_the_defaults() {
    let config = toml(EXAMPLE).ok();
    assert_eq!(config, Config::defaults(&host()));
}

#[test]
fn the_example_file_lists_every_key() {
    let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
    let mut in_example = BTreeSet::new();
    for (section, value) in &table {
        let keys = value.as_table().expect("every top-level item is a table");
        in_example.extend(keys.keys().map(|key| format!("{section}.{key}")));
    }
    assert_eq!(in_example, schema_keys(&host()));
    // And each key is documented by a comment right above it.
    let lines: Vec<&str> = EXAMPLE.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains(" = ") && !line.trim_start().starts_with('#') {
            assert!(
                i > 0 && lines[i - 1].trim_start().starts_with('#'),
                "line {} ({line:?}) has no comment above it",
                i + 1
            );
        }
    }
}

#[test]
fn desired_admins_are_node_ids() {
    let id = "ab".repeat(32);
    let config = toml(&format!("[desired]\nadmins = [\"{}\"]", id.to_uppercase())).ok();
    assert_eq!(config.desired.admins, [id]);
    assert_eq!(config.desired.admins().map(|a| a.len()), Some(1));
    assert_eq!(toml("").ok().desired.admins(), None);
    toml("[desired]\nadmins = [\"bob\"]").fails("desired.admins", "not a NodeId");
}

#[test]
fn reconcilers_are_checked_one_table_at_a_time() {
    let config = toml(
        "[[reconcile]]\nprefix = \"files/\"\ncommand = [\"/bin/true\", \"x\"]\n\
         [[reconcile]]\nname = \"pkg\"\nprefix = \"pkg/\"\ncommand = [\"apt\"]\ntimeout = \"5m\"",
    )
    .ok();
    assert_eq!(config.reconcile.len(), 2);
    assert_eq!(config.reconcile[0].name, "files/");
    assert_eq!(config.reconcile[0].timeout, Duration::from_secs(30));
    assert_eq!(config.reconcile[1].timeout, Duration::from_secs(300));
    toml("[[reconcile]]\nprefix = \"a\"\ncommand = []").fails("reconcile[1].command", "program");
    toml("[[reconcile]]\ncommand = [\"x\"]").fails("reconcile[1].prefix", "missing");
    toml("[[reconcile]]\nprefix = \"a\"\ncommand = [\"x\"]\ntimeout = \"2h\"")
        .fails("reconcile[1].timeout", "between");
    toml("[[reconcile]]\nprefix = \"a\"\ncommand = [\"x\"]\ncomand = 1")
        .fails("reconcile[1].comand", "unknown key");
    toml("[[reconcile]]\nprefix = \"a\"\ncommand = [\"x\"]\n[[reconcile]]\nprefix = \"a\"\ncommand = [\"y\"]")
        .fails("reconcile[2].prefix", "already claimed");
    toml("reconcile = 3").fails("reconcile", "array of tables");
}

#[test]
fn plugins_are_checked_one_table_at_a_time() {
    let config = toml(
        "[[plugins]]\nname = \"files\"\ncommand = \"python3\"\nargs = [\"files.py\", \"--root\", \"/srv\"]\n\
         env = { LEVEL = \"info\" }\ncwd = \"/tmp\"\nmax_restarts = 2\n\
         [plugins.allow]\ndesired_prefixes = [\"files/\"]\nmsg_types = [1200]\nevents = [\"chat\"]\n\
         [[plugins]]\nname = \"up\"\ncommand = \"/usr/local/bin/uptime-plugin\"",
    )
    .ok();
    assert_eq!(config.plugins.len(), 2);
    let p = &config.plugins[0];
    assert_eq!(p.args, ["files.py", "--root", "/srv"]);
    assert_eq!(p.env["LEVEL"], "info");
    assert_eq!(p.max_restarts, 2);
    assert_eq!(p.allow.msg_types.as_deref(), Some(&[1200][..]));
    let ext = p.external();
    assert_eq!(
        ext.allow.events,
        Some(vec![micelio_plugins::EventKind::Chat])
    );
    assert_eq!(ext.cwd.as_deref(), Some(std::path::Path::new("/tmp")));
    let q = &config.plugins[1];
    assert!(q.args.is_empty() && q.allow == PluginAllow::default());
    assert_eq!(
        q.max_restarts,
        micelio_plugins::external::DEFAULT_MAX_RESTARTS
    );
    // What it renders loads back the same.
    assert_eq!(toml(&config.to_toml()).ok(), config);

    toml("[[plugins]]\nname = \"Files\"\ncommand = \"x\"").fails("plugins[1].name", "a-z");
    toml("[[plugins]]\nname = \"f\"").fails("plugins[1].command", "missing");
    toml("[[plugins]]\nname = \"f\"\ncommand = \"x\"\nargs = \"a b\"\nmax_restarts = 5000")
        .fails("plugins[1].max_restarts", "between");
    toml("[[plugins]]\nname = \"f\"\ncommand = \"x\"\nenv = { A = 1 }")
        .fails("plugins[1].env", "expected a string");
    toml("[[plugins]]\nname = \"f\"\ncommand = \"x\"\n[plugins.allow]\nmsg_types = [7]")
        .fails("plugins[1].allow.msg_types", "between 1000");
    toml("[[plugins]]\nname = \"f\"\ncommand = \"x\"\n[plugins.allow]\nevents = [\"gossip\"]")
        .fails("plugins[1].allow.events", "unknown event kind");
    toml("[[plugins]]\nname = \"f\"\ncommand = \"x\"\n[plugins.allow]\nverbs = []")
        .fails("plugins[1].allow.verbs", "unknown key");
    toml("[[plugins]]\nname = \"f\"\ncommand = \"x\"\n[[plugins]]\nname = \"f\"\ncommand = \"y\"")
        .fails("plugins[2].name", "another plugin");
}
