//! End-to-end: real `micelio` processes on 127.0.0.1 find each other, mesh,
//! and rejoin after a restart from the peers persisted in their data dir.
//! Every child is killed by handle when a test ends, pass or fail.

mod support;

use std::sync::Arc;
use std::time::Duration;

use micelio_gossip::{Gossip, GossipConfig};
use micelio_identity::Identity;
use micelio_transport::{PeerManager, TcpTransport, TransportConfig};
use support::{FAST, Node, WAIT};

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
