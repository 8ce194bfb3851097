//! End-to-end: real `micelio` processes on 127.0.0.1 find each other, mesh,
//! and rejoin after a restart from the peers persisted in their data dir; a
//! node whose component fails stops in order with status 1; a data dir the
//! Go reference used (its identity, its bbolt `data.db`) is shared without
//! touching the reference's file. Every child is killed by handle when a
//! test ends, pass or fail.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use micelio_gossip::{Gossip, GossipConfig};
use micelio_identity::Identity;
use micelio_testkit::wait;
use micelio_transport::{PeerManager, TcpTransport, TransportConfig};
use support::{FAST, Node, WAIT};

/// A temporary home holding the fast test configuration; each node gets a
/// data dir of its own below it.
struct Home {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("fast.toml");
        std::fs::write(&config, FAST).unwrap();
        Home { dir, config }
    }

    /// The data dir `name`.
    fn data(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a node on the data dir `name` with `extra` flags.
    fn start(&self, name: &str, extra: &[&str]) -> Node {
        self.start_with_env(name, extra, &[])
    }

    /// As [`Home::start`], with extra environment variables.
    fn start_with_env(&self, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Node {
        Node::start_with_env(self.dir.path(), &self.data(name), &self.config, extra, env)
    }
}

#[test]
fn three_processes_mesh_and_a_restarted_one_rejoins_without_bootstrap() {
    let home = Home::new();
    let listen = ["--listen", "127.0.0.1:0"];

    let mut a = home.start("a", &listen);
    assert!(a.addr.starts_with("127.0.0.1:"), "{}", a.addr);
    let boot = a.addr.clone();
    let mut b = home.start("b", &[&listen[..], &["--bootstrap", &boot]].concat());
    let mut c = home.start("c", &[&listen[..], &["--bootstrap", &boot]].concat());

    // b and c only know a; peer exchange makes them meet each other.
    let (ida, idb, idc) = (a.node_id.clone(), b.node_id.clone(), c.node_id.clone());
    a.connected_to(&idb);
    a.connected_to(&idc);
    b.connected_to(&ida);
    c.connected_to(&ida);
    b.connected_to(&idc);
    c.connected_to(&idb);

    // c leaves and comes back with its data dir but no bootstrap list, on a
    // fresh port: it dials the peers it persisted.
    c.terminate();
    let mut c = home.start("c", &listen);
    assert_eq!(c.node_id, idc, "same identity from the same data dir");
    c.connected_to(&ida);
    c.connected_to(&idb);

    a.terminate();
    b.terminate();
    c.terminate();
}

#[test]
fn a_node_without_listen_is_outbound_only_and_still_meshes() {
    let home = Home::new();
    let mut a = home.start("a", &["--listen", "127.0.0.1:0"]);
    let boot = a.addr.clone();
    let mut b = home.start("b", &["--bootstrap", &boot]);
    assert_eq!(b.addr, "none", "peers line: outbound only");
    let idb = b.node_id.clone();
    let ida = a.node_id.clone();
    a.connected_to(&idb);
    b.connected_to(&ida);
    a.terminate();
    b.terminate();
}

#[test]
fn a_chat_line_reaches_every_process_exactly_once() {
    let home = Home::new();
    let listen = ["--listen", "127.0.0.1:0"];
    let a = home.start("a", &listen);
    let boot = a.addr.clone();
    let b = home.start("b", &[&listen[..], &["--bootstrap", &boot]].concat());
    // c hangs off b only: lines reach it through relays.
    let b_addr = b.addr.clone();
    let c = home.start("c", &[&listen[..], &["--bootstrap", &b_addr]].concat());
    let mut nodes = [a, b, c];

    // An in-process node joins through a and says one line.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let message_id = rt.block_on(async {
        let me = Arc::new(Identity::from_seed([77; 32]));
        let mut cfg = TransportConfig::for_tests();
        cfg.listen = None;
        cfg.bootstrap = vec![boot.clone()];
        let transport = TcpTransport::new(me.clone(), cfg.dial_timeout, cfg.hello_timeout);
        let (pm, events) = PeerManager::spawn(me.clone(), Arc::new(transport), cfg, None)
            .await
            .unwrap();
        let gossip = Gossip::spawn(me.clone(), GossipConfig::default(), pm.clone(), events);
        wait::until_async(WAIT, "the in-process node connected", || async {
            gossip.stats().await.unwrap().keys > 0
        })
        .await;
        let id = micelio_partyline::chat::say(&gossip, "tester", "hello, mesh ✓")
            .await
            .unwrap();
        // Stay up until every process has logged it, so relays can finish.
        (id, gossip, pm)
    });
    let (message_id, gossip, pm) = message_id;
    for n in nodes.iter_mut() {
        let line = n.wait_for(|l| l.contains("chat received") && l.contains(&message_id));
        assert!(line.contains("nick=tester"), "{line}");
        assert!(line.contains("hello, mesh ✓"), "{line}");
    }
    rt.block_on(async {
        gossip.shutdown().await;
        pm.shutdown().await;
    });
    for n in nodes {
        let lines = n.terminate();
        let count = lines
            .iter()
            .filter(|l| l.contains("chat received") && l.contains(&message_id))
            .count();
        assert_eq!(count, 1, "exactly once");
    }
}

/// Threads of process `pid`, from `/proc/<pid>/status`.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[test]
fn a_single_threaded_node_meshes_and_logs_its_stats_on_sigusr1() {
    let home = Home::new();
    let listen = ["--listen", "127.0.0.1:0"];
    let wide = home.start("wide", &[&listen[..], &["--worker-threads", "4"]].concat());
    let boot = wide.addr.clone();
    let mut small = home.start(
        "small",
        &[
            &listen[..],
            &["--worker-threads", "1", "--bootstrap", &boot],
        ]
        .concat(),
    );
    let wide_id = wide.node_id.clone();
    small.connected_to(&wide_id);
    let mut wide = wide;
    let small_id = small.node_id.clone();
    wide.connected_to(&small_id);

    // Four workers besides the main thread; the small node runs its tasks
    // on the main thread (blocking-pool threads come and go on both).
    let (t_wide, t_small) = (threads(wide.pid()), threads(small.pid()));
    assert!(t_wide >= 5, "{t_wide} threads with --worker-threads 4");
    assert!(
        t_small < t_wide,
        "{t_small} threads with 1, {t_wide} with 4"
    );

    small.process.signal("USR1");
    let line = small.wait_for(|l| l.contains("gossip stats") && l.contains("why=SIGUSR1"));
    assert!(line.contains("peers=1"), "{line}");
    assert!(line.contains("data_frames_sent="), "{line}");
    assert!(line.contains("grafted_ids="), "{line}");

    let lines = small.terminate();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("gossip stats") && l.contains("why=shutdown")),
        "stats at shutdown:\n{}",
        lines.join("\n")
    );
    wide.terminate();
}

/// SIGUSR1 while the node is still starting (as soon as its transport
/// listens) neither kills it (the signal's default action) nor is lost:
/// the stats line comes once it runs.
#[test]
fn a_sigusr1_during_start_up_is_answered_once_the_node_runs() {
    let home = Home::new();
    let data = home.data("early");
    let mut cmd = micelio_testkit::micelio::command(
        std::path::Path::new(env!("CARGO_BIN_EXE_micelio")),
        home.dir.path(),
        &[],
    );
    cmd.arg("--config")
        .arg(&home.config)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--ssh-listen", "127.0.0.1:0"]);
    let mut p = micelio_testkit::process::Process::spawn(cmd, "early");
    p.wait_for(WAIT, |l| l.contains("listening"));
    p.signal("USR1");
    p.wait_for(WAIT, |l| {
        l.contains("gossip stats") && l.contains("why=SIGUSR1")
    });
    let (status, _) = p.terminate(WAIT);
    assert!(status.success(), "{status}");
}

/// The lines of the ordered stop, in the order they must appear.
const STOP_STEPS: [&str; 8] = [
    "stopped the SSH server and its sessions",
    "stopped the partyline",
    "stopped the reconcilers",
    "stopped the plugins",
    "stopped the state service",
    "stopped gossip",
    "closed the peer connections",
    "flushed storage",
];

fn assert_ordered_stop(lines: &[String]) {
    let mut at = 0;
    for step in STOP_STEPS {
        let found = lines[at..].iter().position(|l| l.contains(step));
        let Some(i) = found else {
            panic!("{step:?} missing or out of order:\n{}", lines.join("\n"));
        };
        at += i + 1;
    }
}

/// A component of `b` is made to fail once it has a peer (debug fault
/// injection); the node must stop in order, exit 1, and leave a store that
/// reopens with the peer it learnt.
#[cfg(debug_assertions)]
fn a_failing_component_stops_the_node(fault: &str, needle: &str) {
    let home = Home::new();
    let mut a = home.start("a", &["--listen", "127.0.0.1:0"]);
    let ida = a.node_id.clone();
    // b is outbound-only: nobody can dial it, so after its restart it can
    // only reach a through the peers it stored before failing.
    let b = home.start_with_env(
        "b",
        &["--listen", "", "--bootstrap", &a.addr],
        &[("MICELIO_DEBUG_FAULT", fault)],
    );
    let idb = b.node_id.clone();
    let (code, lines) = b.wait_exit();
    let text = lines.join("\n");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("component failed") && l.contains(needle)),
        "{text}"
    );
    assert!(text.contains("error: component"), "{text}");
    assert!(text.contains("node stopped after a failure"), "{text}");
    assert_ordered_stop(&lines);
    a.wait_for(|l| l.contains("peer disconnected") && l.contains(&idb));

    let mut b = home.start("b", &["--listen", ""]);
    b.wait_for(|l| l.contains("loaded known peers") && l.contains("loaded=1"));
    b.connected_to(&ida);
    let lines = b.terminate();
    assert_ordered_stop(&lines);
    a.terminate();
}

#[test]
#[cfg(debug_assertions)]
fn a_panicking_component_stops_the_node_in_order_with_status_1() {
    a_failing_component_stops_the_node("panic", "panicked: debug fault injection");
}

#[test]
#[cfg(debug_assertions)]
fn an_ssh_server_that_dies_stops_the_node_in_order_with_status_1() {
    a_failing_component_stops_the_node("stop-ssh", "the SSH server stopped");
}

/// FNV-1a, 64 bits: bbolt's meta page checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// An empty bbolt database as the reference's `data.db` is on disk: 4 KiB
/// pages; two meta pages (magic 0xED0CDAED, version 2, checksummed), a free
/// list page and an empty leaf page as the root bucket.
fn bbolt_file() -> Vec<u8> {
    const PAGE: usize = 4096;
    let mut file = vec![0u8; PAGE * 4];
    let header = |file: &mut Vec<u8>, id: u64, flags: u16| {
        let at = id as usize * PAGE;
        file[at..at + 8].copy_from_slice(&id.to_le_bytes());
        file[at + 8..at + 10].copy_from_slice(&flags.to_le_bytes());
    };
    for (id, txid) in [(0u64, 0u64), (1, 1)] {
        header(&mut file, id, 0x04);
        let mut meta = Vec::with_capacity(64);
        meta.extend_from_slice(&0xED0C_DAEDu32.to_le_bytes());
        meta.extend_from_slice(&2u32.to_le_bytes());
        meta.extend_from_slice(&(PAGE as u32).to_le_bytes());
        meta.extend_from_slice(&0u32.to_le_bytes());
        meta.extend_from_slice(&3u64.to_le_bytes()); // root bucket page
        meta.extend_from_slice(&0u64.to_le_bytes()); // sequence
        meta.extend_from_slice(&2u64.to_le_bytes()); // free list page
        meta.extend_from_slice(&4u64.to_le_bytes()); // high water mark
        meta.extend_from_slice(&txid.to_le_bytes());
        let sum = fnv1a64(&meta);
        meta.extend_from_slice(&sum.to_le_bytes());
        let at = id as usize * PAGE + 16;
        file[at..at + meta.len()].copy_from_slice(&meta);
    }
    header(&mut file, 2, 0x10);
    header(&mut file, 3, 0x02);
    file
}

/// A data dir the Go reference has used: its identity (from the
/// known-answer vectors) and its bbolt `data.db`.
fn reference_data_dir(dir: &std::path::Path) -> (String, Vec<u8>) {
    use std::os::unix::fs::PermissionsExt as _;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/reference-v1.json"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ident = &v["identities"][0];
    let id_dir = dir.join("identity");
    std::fs::create_dir_all(&id_dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = id_dir.join("node.key");
    std::fs::write(&key, ident["private_key_pkcs8_pem"].as_str().unwrap()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut line = ident["public_key_openssh"].as_str().unwrap().to_owned();
    line.push('\n');
    std::fs::write(id_dir.join("node.pub"), line).unwrap();
    let bbolt = bbolt_file();
    std::fs::write(dir.join("data.db"), &bbolt).unwrap();
    (ident["node_id"].as_str().unwrap().to_owned(), bbolt)
}

#[test]
fn a_data_dir_the_reference_used_is_shared_and_its_data_db_left_alone() {
    let home = Home::new();
    let a = home.start("a", &["--listen", "127.0.0.1:0"]);
    let ida = a.node_id.clone();
    let shared = home.data("shared");
    let (reference_id, bbolt) = reference_data_dir(&shared);

    let mut r = home.start("shared", &["--listen", "", "--bootstrap", &a.addr]);
    assert_eq!(
        r.node_id, reference_id,
        "the reference's identity, same NodeId"
    );
    r.connected_to(&ida);
    r.terminate();
    assert_eq!(
        std::fs::read(shared.join("data.db")).unwrap(),
        bbolt,
        "the reference's bbolt file is untouched"
    );
    assert!(
        shared.join("micelio/peers").is_dir(),
        "micelio keeps its own store"
    );

    // Again, without bootstrap: the peer comes from micelio/peers.
    let mut r = home.start("shared", &["--listen", ""]);
    assert_eq!(r.node_id, reference_id);
    r.wait_for(|l| l.contains("loaded known peers") && l.contains("loaded=1"));
    r.connected_to(&ida);
    r.terminate();
    assert_eq!(std::fs::read(shared.join("data.db")).unwrap(), bbolt);
    a.terminate();
}
