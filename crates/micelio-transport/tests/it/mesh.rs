//! Mesh formation through peer exchange and discovery, link cuts in the
//! simulator, and rejoining after restarts (known peers persisted in sled).

use std::time::Duration;

use micelio_transport::SledPeerStore;
use micelio_transport::memory::MemoryNetwork;

use crate::support::*;

const T: Duration = Duration::from_secs(40);

#[tokio::test]
async fn four_nodes_through_one_bootstrap_form_a_full_mesh() {
    for net in Net::both() {
        bounded(T, async {
            let a = TestNode::start(&net, 1, cfg(&[])).await;
            let boot = a.addr();
            let b = TestNode::start(&net, 2, cfg(&[&boot])).await;
            let c = TestNode::start(&net, 3, cfg(&[&boot])).await;
            let d = TestNode::start(&net, 4, cfg(&[&boot])).await;
            full_mesh(&[&a, &b, &c, &d], Duration::from_secs(20)).await;
            shutdown_all(&[&a, &b, &c, &d]).await;
        })
        .await;
    }
}

#[tokio::test]
async fn a_chain_becomes_a_full_mesh() {
    for net in Net::both() {
        bounded(T, async {
            let a = TestNode::start(&net, 1, cfg(&[])).await;
            let b = TestNode::start(&net, 2, cfg(&[&a.addr()])).await;
            let c = TestNode::start(&net, 3, cfg(&[&b.addr()])).await;
            let d = TestNode::start(&net, 4, cfg(&[&c.addr()])).await;
            let e = TestNode::start(&net, 5, cfg(&[&d.addr()])).await;
            full_mesh(&[&a, &b, &c, &d, &e], Duration::from_secs(30)).await;
            shutdown_all(&[&a, &b, &c, &d, &e]).await;
        })
        .await;
    }
}

#[tokio::test]
async fn a_cut_link_goes_down_and_comes_back_when_restored() {
    let sim = MemoryNetwork::new();
    let net = Net::Memory(sim.clone());
    bounded(T, async {
        let a = TestNode::start(&net, 1, cfg(&[])).await;
        let b = TestNode::start(&net, 2, cfg(&[&a.addr()])).await;
        full_mesh(&[&a, &b], Duration::from_secs(5)).await;
        sim.cut(&a.node_id(), &b.node_id());
        eventually(Duration::from_secs(5), "both sides see the cut", || {
            !a.pm.is_connected(&b.node_id()) && !b.pm.is_connected(&a.node_id())
        })
        .await;
        assert_eq!(a.seen.lock().unwrap().downs.len(), 1);
        // While cut, the bootstrap redials fail.
        eventually(Duration::from_secs(5), "failed redials", || {
            b.pm.stats().dial_failures >= 2
        })
        .await;
        assert!(!a.pm.is_connected(&b.node_id()));
        sim.restore(&a.node_id(), &b.node_id());
        full_mesh(&[&a, &b], Duration::from_secs(5)).await;
        shutdown_all(&[&a, &b]).await;
    })
    .await;
}

#[tokio::test]
async fn a_restarted_node_rejoins_from_persisted_peers() {
    bounded(T, async {
        let net = Net::Tcp;
        let dir = tempfile::tempdir().unwrap();
        let a = TestNode::start(&net, 1, cfg(&[])).await;
        let b = TestNode::start(&net, 2, cfg(&[&a.addr()])).await;
        {
            let store = SledPeerStore::open(dir.path()).unwrap();
            let c =
                TestNode::start_with_store(&net, 3, cfg(&[&a.addr()]), Some(Box::new(store))).await;
            full_mesh(&[&a, &b, &c], Duration::from_secs(20)).await;
            eventually(Duration::from_secs(5), "c knows a and b", || {
                c.pm.known_peers().len() == 2
            })
            .await;
            c.pm.shutdown_and_flush().await.unwrap();
            drop(c);
        }
        eventually(Duration::from_secs(5), "c is gone", || {
            a.pm.peer_count() == 1 && b.pm.peer_count() == 1
        })
        .await;

        // Restart c with the same data dir and no bootstrap list.
        let store = SledPeerStore::open(dir.path()).unwrap();
        let c = TestNode::start_with_store(&net, 3, cfg(&[]), Some(Box::new(store))).await;
        assert_eq!(c.pm.known_peers().len(), 2, "loaded from sled");
        full_mesh(&[&a, &b, &c], Duration::from_secs(20)).await;
        shutdown_all(&[&a, &b, &c]).await;
    })
    .await;
}

#[tokio::test]
async fn others_reconnect_with_backoff_when_the_bootstrap_node_returns() {
    bounded(T, async {
        let net = Net::Tcp;
        let a = TestNode::start(&net, 1, cfg(&[])).await;
        let boot = a.addr();
        let b = TestNode::start(&net, 2, cfg(&[&boot])).await;
        let c = TestNode::start(&net, 3, cfg(&[&boot])).await;
        full_mesh(&[&a, &b, &c], Duration::from_secs(20)).await;
        a.pm.shutdown().await;
        drop(a);
        eventually(Duration::from_secs(5), "a is gone", || {
            b.pm.peer_count() == 1 && c.pm.peer_count() == 1
        })
        .await;
        // The bootstrap dialers keep failing while a is down.
        eventually(Duration::from_secs(5), "redials", || {
            b.pm.stats().dial_failures >= 2
        })
        .await;
        // a comes back on the same address.
        let mut ca = cfg(&[]);
        ca.listen = Some(boot.clone());
        let a = TestNode::start(&net, 1, ca).await;
        full_mesh(&[&a, &b, &c], Duration::from_secs(20)).await;
        shutdown_all(&[&a, &b, &c]).await;
    })
    .await;
}

/// A store that fails every write, slowly: the manager counts and logs the
/// failures and keeps serving peers at full speed.
#[tokio::test]
async fn a_failing_slow_store_is_counted_and_never_stalls_the_manager() {
    use micelio_identity::NodeId;
    use micelio_transport::{LoadedPeers, PeerStore, StoreError};
    use micelio_wire::proto::PeerInfo;

    struct Broken;
    impl PeerStore for Broken {
        fn load(&mut self) -> Result<LoadedPeers, StoreError> {
            Err(StoreError::message("cannot read"))
        }
        fn save(&mut self, _: &NodeId, _: &PeerInfo) -> Result<(), StoreError> {
            std::thread::sleep(Duration::from_secs(1));
            Err(StoreError::message("disk full"))
        }
        fn remove(&mut self, _: &NodeId) -> Result<(), StoreError> {
            Err(StoreError::message("disk full"))
        }
        fn flush(&mut self) -> Result<(), StoreError> {
            Err(StoreError::message("flush failed"))
        }
    }

    bounded(T, async {
        let net = Net::Tcp;
        let a = TestNode::start_with_store(&net, 1, cfg(&[]), Some(Box::new(Broken))).await;
        let others = [
            TestNode::start(&net, 2, cfg(&[&a.addr()])).await,
            TestNode::start(&net, 3, cfg(&[&a.addr()])).await,
            TestNode::start(&net, 4, cfg(&[&a.addr()])).await,
        ];
        // Three peers join well within the three seconds that their three
        // saves would take if they were made on the connection path.
        let started = tokio::time::Instant::now();
        eventually(Duration::from_secs(10), "peers joined", || {
            a.pm.peer_count() == 3
        })
        .await;
        assert!(started.elapsed() < Duration::from_millis(2500));
        eventually(Duration::from_secs(10), "failures counted", || {
            a.pm.stats().store_errors >= 1
        })
        .await;
        let e = a.pm.shutdown_and_flush().await.unwrap_err();
        assert!(e.to_string().contains("flush failed"), "{e}");
        for o in &others {
            o.pm.shutdown().await;
        }
    })
    .await;
}

/// A newcomer whose only bootstrap peer is full still joins: the full node
/// lets it in as a visitor, hands it a peer exchange after the hello and
/// closes; the newcomer dials a peer with room. The full node keeps its links.
#[tokio::test]
async fn a_newcomer_joins_through_a_full_bootstrap_peer() {
    for net in Net::both() {
        bounded(T, async {
            let with_max = |boot: &[&str], max: usize| {
                let mut c = cfg(boot);
                c.max_peers = max;
                c
            };
            let a = TestNode::start(&net, 1, with_max(&[], 2)).await;
            let boot = a.addr();
            let b = TestNode::start(&net, 2, with_max(&[&boot], 3)).await;
            let c = TestNode::start(&net, 3, with_max(&[&boot], 3)).await;
            full_mesh(&[&a, &b, &c], Duration::from_secs(20)).await;
            assert_eq!(a.pm.stats().visitors, 0, "{}: no visitor yet", net.name());
            let d = TestNode::start(&net, 4, with_max(&[&boot], 3)).await;
            eventually(Duration::from_secs(20), "newcomer linked to b or c", || {
                d.pm.is_connected(&b.node_id()) || d.pm.is_connected(&c.node_id())
            })
            .await;
            let s = a.pm.stats();
            assert!(s.visitors >= 1, "{}: a admitted a visitor", net.name());
            assert!(s.closed_max_peers >= 1, "{}: and closed it", net.name());
            assert!(
                !a.pm.is_connected(&d.node_id()),
                "{}: a stays at max_peers",
                net.name()
            );
            assert!(
                a.pm.is_connected(&b.node_id()) && a.pm.is_connected(&c.node_id()),
                "{}: a kept its links",
                net.name()
            );
            shutdown_all(&[&a, &b, &c, &d]).await;
        })
        .await;
    }
}

#[tokio::test]
async fn what_was_queued_before_a_shutdown_still_reaches_the_peer() {
    for net in Net::both() {
        bounded(T, async {
            let a = TestNode::start(&net, 1, cfg(&[])).await;
            let b = TestNode::start(&net, 2, cfg(&[&a.addr()])).await;
            full_mesh(&[&a, &b], Duration::from_secs(10)).await;
            let sent: Vec<_> = (0..100u32)
                .map(|i| {
                    micelio_wire::EnvelopeBuilder::gossip(
                        micelio_wire::MsgType::Plugin(1001),
                        i.to_be_bytes().to_vec(),
                    )
                    .sign(&b.id)
                })
                .collect();
            for env in &sent {
                b.pm.send(&a.node_id(), env).unwrap();
            }
            // Shut down at once: the queue is still full.
            b.pm.shutdown().await;
            eventually(Duration::from_secs(5), "every queued message", || {
                sent.iter().all(|env| a.got(&b, env))
            })
            .await;
            a.pm.shutdown().await;
        })
        .await;
    }
}

#[tokio::test]
async fn tags_changed_at_runtime_go_in_the_next_hellos() {
    let net = Net::Memory(MemoryNetwork::new());
    bounded(T, async {
        let mut ca = cfg(&[]);
        ca.tags = vec!["old".into()];
        let a = TestNode::start(&net, 1, ca).await;
        a.pm.set_tags(vec!["EU".into(), "prod".into()]);
        assert_eq!(a.pm.tags(), vec!["EU".to_owned(), "prod".to_owned()]);
        let b = TestNode::start(&net, 2, cfg(&[&a.addr()])).await;
        full_mesh(&[&a, &b], Duration::from_secs(10)).await;
        let told =
            b.pm.peers()
                .into_iter()
                .find(|p| p.node_id == a.node_id())
                .map(|p| p.hello.tags);
        assert_eq!(told, Some(vec!["EU".to_owned(), "prod".to_owned()]));
        shutdown_all(&[&a, &b]).await;
    })
    .await;
}
