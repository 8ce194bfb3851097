//! End-to-end: real `micelio` processes on 127.0.0.1 find each other, mesh,
//! and rejoin after a restart from the peers persisted in their data dir.
//! Every child is killed by handle when a test ends, pass or fail.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use micelio_gossip::{Gossip, GossipConfig};
use micelio_identity::Identity;
use micelio_transport::{PeerManager, TcpTransport, TransportConfig};

/// Longest wait for any one condition.
const WAIT: Duration = Duration::from_secs(30);

/// Short timers so that discovery converges in seconds.
const FAST: &str = "[network]\nexchange_interval = \"500ms\"\ndiscovery_interval = \"500ms\"\n\
keepalive_interval = \"1s\"\nidle_timeout = \"10s\"\n";

/// A running node and the lines it has printed.
struct Node {
    child: Child,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
    node_id: String,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn pump(pipe: impl std::io::Read + Send + 'static, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

impl Node {
    fn start(home: &Path, data: &Path, config: &Path, extra: &[&str]) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_micelio"));
        cmd.arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .args(["--log-format", "text", "--log-level", "info"])
            .args(extra)
            .env("HOME", home)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("MICELIO_") {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd.spawn().expect("micelio starts");
        let (tx, rx) = mpsc::channel();
        pump(child.stdout.take().expect("stdout"), tx.clone());
        pump(child.stderr.take().expect("stderr"), tx);
        let mut node = Node {
            child,
            rx,
            seen: Vec::new(),
            node_id: String::new(),
            addr: String::new(),
        };
        let id_line = node.wait_for(|l| l.starts_with("node id"));
        node.node_id = id_line
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_owned();
        let peers_line = node.wait_for(|l| l.starts_with("peers "));
        node.addr = peers_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        node
    }

    /// Waits (bounded) for a line satisfying `pred`, already seen or new.
    fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no matching line within {WAIT:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits until this node logs a connection to `other`.
    fn connected_to(&mut self, other: &str) {
        let other = other.to_owned();
        self.wait_for(move |l| l.contains("peer connected") && l.contains(&other));
    }

    /// SIGTERM, then a bounded wait for a clean exit; returns every line the
    /// process printed.
    fn terminate(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                assert!(st.success(), "exit status {st}\n{}", self.seen.join("\n"));
                // The pipes close at exit: drain what is left, bounded.
                while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                return std::mem::take(&mut self.seen);
            }
            assert!(Instant::now() < deadline, "did not exit after SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn three_processes_mesh_and_a_restarted_one_rejoins_without_bootstrap() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("fast.toml");
    std::fs::write(&config, FAST).unwrap();
    let listen = ["--listen", "127.0.0.1:0"];

    let mut a = Node::start(home.path(), &home.path().join("a"), &config, &listen);
    assert!(a.addr.starts_with("127.0.0.1:"), "{}", a.addr);
    let boot = a.addr.clone();
    let mut b = Node::start(
        home.path(),
        &home.path().join("b"),
        &config,
        &[&listen[..], &["--bootstrap", &boot]].concat(),
    );
    let mut c = Node::start(
        home.path(),
        &home.path().join("c"),
        &config,
        &[&listen[..], &["--bootstrap", &boot]].concat(),
    );

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
    let mut c = Node::start(home.path(), &home.path().join("c"), &config, &listen);
    assert_eq!(c.node_id, idc, "same identity from the same data dir");
    c.connected_to(&ida);
    c.connected_to(&idb);

    a.terminate();
    b.terminate();
    c.terminate();
}

#[test]
fn a_node_without_listen_is_outbound_only_and_still_meshes() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("fast.toml");
    std::fs::write(&config, FAST).unwrap();
    let mut a = Node::start(
        home.path(),
        &home.path().join("a"),
        &config,
        &["--listen", "127.0.0.1:0"],
    );
    let boot = a.addr.clone();
    let mut b = Node::start(
        home.path(),
        &home.path().join("b"),
        &config,
        &["--bootstrap", &boot],
    );
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
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("fast.toml");
    std::fs::write(&config, FAST).unwrap();
    let listen = ["--listen", "127.0.0.1:0"];
    let a = Node::start(home.path(), &home.path().join("a"), &config, &listen);
    let boot = a.addr.clone();
    let b = Node::start(
        home.path(),
        &home.path().join("b"),
        &config,
        &[&listen[..], &["--bootstrap", &boot]].concat(),
    );
    // c hangs off b only: lines reach it through relays.
    let b_addr = b.addr.clone();
    let c = Node::start(
        home.path(),
        &home.path().join("c"),
        &config,
        &[&listen[..], &["--bootstrap", &b_addr]].concat(),
    );
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
        let deadline = tokio::time::Instant::now() + WAIT;
        while gossip.stats().await.unwrap().keys == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let id = gossip.say("tester", "hello, mesh ✓").await.unwrap();
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
