//! The conformance suite: every test here runs against both the TCP/Noise
//! transport and the in-memory one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use micelio_identity::Identity;
use micelio_transport::{Direction, LinkError};
use micelio_wire::{EnvelopeBuilder, MsgType, frame};

use crate::support::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn links_carry_frames_both_ways_and_report_the_remote_key() {
    for net in Net::both() {
        bounded(T, async {
            let a = Arc::new(Identity::from_seed([1; 32]));
            let b = Arc::new(Identity::from_seed([2; 32]));
            let cfg = cfg(&[]);
            let ta = net.transport(&a, &cfg);
            let tb = net.transport(&b, &cfg);
            let mut listener = tb.listen("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr();
            let (dialled, accepted) = tokio::join!(ta.dial(&addr), async {
                listener.accept().await.unwrap().upgrade().await
            });
            let (mut d, mut acc) = (dialled.unwrap(), accepted.unwrap());
            assert_eq!(d.remote_static, b.x25519_public(), "{}", net.name());
            assert_eq!(acc.remote_static, a.x25519_public(), "{}", net.name());
            assert_eq!(d.direction, Direction::Outbound);
            assert_eq!(acc.direction, Direction::Inbound);

            // Small and 900 KiB frames, both directions.
            for size in [0usize, 10, 900 * 1024] {
                let env = EnvelopeBuilder::gossip(MsgType::Plugin(1001), vec![7u8; size]).sign(&a);
                let f = frame::encode_envelope(&env).unwrap();
                let (sent, got) = tokio::join!(d.sink.send(&f), acc.source.recv());
                sent.unwrap();
                assert_eq!(got.unwrap().unwrap(), env, "{} {size}", net.name());
                let back =
                    EnvelopeBuilder::gossip(MsgType::Chat, Bytes::from(vec![9u8; size])).sign(&b);
                let f = frame::encode_envelope(&back).unwrap();
                let (sent, got) = tokio::join!(acc.sink.send(&f), d.source.recv());
                sent.unwrap();
                assert_eq!(got.unwrap().unwrap(), back, "{} {size}", net.name());
            }

            // Closing one side ends the other's stream.
            d.sink.close().await;
            drop(d);
            match acc.source.recv().await {
                Ok(None)
                | Err(LinkError::Closed)
                | Err(LinkError::Io(_))
                | Err(LinkError::Noise(_)) => {}
                other => panic!("{}: expected end of stream, got {other:?}", net.name()),
            }
        })
        .await;
    }
}

#[tokio::test]
async fn two_nodes_connect_in_both_dial_directions() {
    for net in Net::both() {
        bounded(T, async {
            let a = TestNode::start(&net, 1, cfg(&[])).await;
            let b = TestNode::start(&net, 2, cfg(&[&a.addr()])).await;
            full_mesh(&[&a, &b], Duration::from_secs(10)).await;
            let pa = a.pm.peers();
            assert_eq!(pa[0].direction, Direction::Inbound);
            assert_eq!(pa[0].hello.listen_addr, b.addr());
            assert_eq!(b.pm.peers()[0].direction, Direction::Outbound);

            // The other way round, by an explicit dial.
            let c = TestNode::start(&net, 3, cfg(&[])).await;
            let d = TestNode::start(&net, 4, cfg(&[])).await;
            assert_eq!(c.pm.dial(&d.addr()).await.unwrap(), d.node_id());
            full_mesh(&[&c, &d], Duration::from_secs(10)).await;
            assert_eq!(d.pm.peers()[0].direction, Direction::Inbound);
            assert_eq!(d.seen.lock().unwrap().ups, vec![c.node_id()]);
            shutdown_all(&[&a, &b, &c, &d]).await;
        })
        .await;
    }
}

#[tokio::test]
async fn simultaneous_dials_leave_exactly_one_connection() {
    for net in Net::both() {
        bounded(T, async {
            for round in 0..5u8 {
                let a = TestNode::start(&net, 10 + 2 * round, cfg(&[])).await;
                let b = TestNode::start(&net, 11 + 2 * round, cfg(&[])).await;
                let (addr_a, addr_b) = (a.addr(), b.addr());
                let (ra, rb) = tokio::join!(a.pm.dial(&addr_b), b.pm.dial(&addr_a));
                // Each dial either made the connection or found it already there.
                for r in [ra, rb] {
                    match r {
                        Ok(_) | Err(micelio_transport::DialError::Duplicate(_)) => {}
                        Err(e) => panic!("{}: {e}", net.name()),
                    }
                }
                full_mesh(&[&a, &b], Duration::from_secs(5)).await;
                // Let any replaced connection finish closing, then check both
                // ends agree on one connection in the same direction pair.
                eventually(Duration::from_secs(5), "one connection", || {
                    let (pa, pb) = (a.pm.peers(), b.pm.peers());
                    pa.len() == 1 && pb.len() == 1 && pa[0].direction != pb[0].direction
                })
                .await;
                if let Net::Memory(m) = &net {
                    eventually(Duration::from_secs(5), "one live link", || {
                        m.connection_count() == 1
                    })
                    .await;
                }
                shutdown_all(&[&a, &b]).await;
            }
        })
        .await;
    }
}

#[tokio::test]
async fn a_900_kib_message_crosses_a_peer_connection_both_ways() {
    for net in Net::both() {
        bounded(T, async {
            let a = TestNode::start(&net, 1, cfg(&[])).await;
            let b = TestNode::start(&net, 2, cfg(&[&a.addr()])).await;
            full_mesh(&[&a, &b], Duration::from_secs(10)).await;
            let big =
                EnvelopeBuilder::gossip(MsgType::Plugin(1001), vec![0xab; 900 * 1024]).sign(&a.id);
            a.pm.send(&b.node_id(), &big).unwrap();
            let back =
                EnvelopeBuilder::gossip(MsgType::Plugin(1002), vec![0xcd; 900 * 1024]).sign(&b.id);
            b.pm.send(&a.node_id(), &back).unwrap();
            eventually(Duration::from_secs(10), "big messages", || {
                a.got(&b, &back) && b.got(&a, &big)
            })
            .await;
            shutdown_all(&[&a, &b]).await;
        })
        .await;
    }
}

#[tokio::test]
async fn keepalives_hold_an_idle_connection_open() {
    for net in Net::both() {
        bounded(T, async {
            let mut c = cfg(&[]);
            c.idle_timeout = Duration::from_millis(800);
            c.keepalive_interval = Duration::from_millis(100);
            c.exchange_interval = Duration::from_secs(3600);
            let a = TestNode::start(&net, 1, c.clone()).await;
            let mut cb = c.clone();
            cb.bootstrap = vec![a.addr()];
            let b = TestNode::start(&net, 2, cb).await;
            full_mesh(&[&a, &b], Duration::from_secs(5)).await;
            // Wait until each side has sent keepalives spanning several idle
            // timeouts: 25 × 100 ms > 3 × 800 ms.
            eventually(Duration::from_secs(10), "keepalives", || {
                a.pm.stats().keepalives_sent >= 25 && b.pm.stats().keepalives_sent >= 25
            })
            .await;
            assert!(a.pm.is_connected(&b.node_id()));
            assert_eq!(a.pm.stats().idle_timeouts + b.pm.stats().idle_timeouts, 0);
            assert_eq!(
                a.pm.stats().connections_inbound,
                1,
                "{}: no reconnection happened",
                net.name()
            );
            assert_eq!(b.pm.stats().connections_outbound, 1);
            shutdown_all(&[&a, &b]).await;
        })
        .await;
    }
}

#[tokio::test]
async fn max_peers_admits_one_visitor_a_second_and_refuses_the_rest_before_the_handshake() {
    for net in Net::both() {
        bounded(T, async {
            let mut c = cfg(&[]);
            c.max_peers = 1;
            let a = TestNode::start(&net, 1, c).await;
            let b = TestNode::start(&net, 2, cfg(&[])).await;
            let d = TestNode::start(&net, 3, cfg(&[])).await;
            let e = TestNode::start(&net, 4, cfg(&[])).await;
            b.pm.dial(&a.addr()).await.unwrap();
            full_mesh(&[&a, &b], Duration::from_secs(5)).await;
            // The first one over max_peers is a visitor: hello, a peer
            // exchange naming b, closed.
            let _ = d.pm.dial(&a.addr()).await;
            eventually(Duration::from_secs(5), "visitor told of b", || {
                d.pm.known_peers().iter().any(|p| p.node_id == b.node_id())
            })
            .await;
            eventually(Duration::from_secs(5), "visitor closed", || {
                !a.pm.is_connected(&d.node_id()) && a.pm.stats().closed_max_peers >= 1
            })
            .await;
            // The next one within the second is refused before the handshake.
            assert!(e.pm.dial(&a.addr()).await.is_err());
            eventually(Duration::from_secs(5), "refusal counted", || {
                a.pm.stats().refused_max_peers >= 1
            })
            .await;
            let s = a.pm.stats();
            assert!(s.visitors >= 1, "{}", net.name());
            assert_eq!(a.pm.peer_count(), 1);
            assert_eq!(s.hello_failures, 0, "refused before any hello");
            shutdown_all(&[&a, &b, &d, &e]).await;
        })
        .await;
    }
}
