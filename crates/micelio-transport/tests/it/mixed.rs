//! Mixed meshes: duplicate connections with peers that do not speak
//! micelio's extensions. A reference node keeps whichever connection it
//! registered first and closes the later one; micelio keeps the one dialled
//! by the smaller NodeId. When the two rules disagree, both ends used to
//! close different connections and redial (issue 8, item 10).

use std::time::Duration;

use micelio_identity::Identity;
use micelio_transport::hello::{LocalHello, build_hello};
use micelio_wire::{EnvelopeBuilder, MsgType};
use tokio::net::TcpListener;

use crate::adversarial::RawPeer;
use crate::support::*;

const T: Duration = Duration::from_secs(30);

/// A reference-like peer's identity whose NodeId is smaller than `than`'s,
/// so that micelio's rule and the reference's disagree in the script below.
fn smaller_identity(than: &Identity) -> Identity {
    (100u8..=255)
        .map(|n| Identity::from_seed([n; 32]))
        .find(|i| i.node_id() < than.node_id())
        .expect("some seed gives a smaller NodeId")
}

#[tokio::test]
async fn with_a_reference_peer_the_connection_it_keeps_survives_without_redials() {
    bounded(T, async {
        let mut c = cfg(&[]);
        c.idle_timeout = Duration::from_secs(20);
        let node = TestNode::start(&Net::Tcp, 1, c).await;
        let peer = smaller_identity(&node.id);
        let peer_id = *peer.node_id();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = listener.local_addr().unwrap().to_string();
        // A reference hello: no `features`.
        let local = LocalHello {
            advertise_addr: Some(peer_addr.clone()),
            ..LocalHello::default()
        };

        // Connection I: the peer dials the node; the node registers it.
        let mut conn_i = RawPeer::connect(&node.addr(), &peer).await;
        conn_i
            .send_envelope(&build_hello(&peer, MsgType::Hello, &local))
            .await;
        eventually(Duration::from_secs(5), "I registered", || {
            node.pm.is_connected(&peer_id)
        })
        .await;

        // Connection O, at the same time: the node dials the peer, which
        // answers this hello first and so, by its keep-first rule, keeps O.
        let pm = node.pm.clone();
        let addr = peer_addr.clone();
        let dial = tokio::spawn(async move { pm.dial(&addr).await });
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn_o = RawPeer::accept(stream, &peer).await;
        assert_eq!(conn_o.recv_envelope().await.kind(), MsgType::Hello);
        conn_o
            .send_envelope(&build_hello(&peer, MsgType::HelloAck, &local))
            .await;
        assert_eq!(dial.await.unwrap().unwrap(), peer_id);
        // The micelio rule would keep I (dialled by the smaller NodeId) and
        // close O; with a reference peer the node closes neither.
        eventually(Duration::from_secs(5), "both kept", || {
            node.pm.connection_count() == 2
        })
        .await;
        assert_eq!(node.pm.stats().duplicates_closed, 0);

        // The peer completes I second: it closes it, as the reference does.
        assert_eq!(conn_i.recv_envelope().await.kind(), MsgType::HelloAck);
        drop(conn_i);
        eventually(Duration::from_secs(5), "O took over", || {
            node.pm.stats().standby_promoted == 1 && node.pm.connection_count() == 1
        })
        .await;

        // Over several seconds (longer than the duplicate grace) exactly one
        // connection stays up: no close, no Down, no redial.
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < until {
            assert!(node.pm.is_connected(&peer_id));
            assert_eq!(node.pm.connection_count(), 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(node.seen.lock().unwrap().downs.is_empty());
        assert_eq!(node.seen.lock().unwrap().ups, vec![peer_id]);
        let stats = node.pm.stats();
        assert_eq!(stats.duplicates_closed, 0);
        assert_eq!(stats.connections_outbound + stats.connections_inbound, 2);

        // And the node talks to the peer over O, the connection it kept.
        let env = EnvelopeBuilder::gossip(MsgType::Plugin(1001), b"on O".to_vec()).sign(&node.id);
        node.pm.send(&peer_id, &env).unwrap();
        bounded(Duration::from_secs(5), async {
            while conn_o.recv_envelope().await.message_id != env.message_id {}
        })
        .await;
        node.pm.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn two_nodes_that_both_wait_settle_on_one_connection_after_the_grace() {
    bounded(T, async {
        // A micelio node announcing no extensions: both ends apply the
        // reference-peer rule, and the grace decides.
        let mut ca = cfg(&[]);
        ca.features = vec![];
        let a = TestNode::start(&Net::Tcp, 1, ca).await;
        let b = TestNode::start(&Net::Tcp, 2, cfg(&[])).await;
        let (addr_a, addr_b) = (a.addr(), b.addr());
        let (ra, rb) = tokio::join!(a.pm.dial(&addr_b), b.pm.dial(&addr_a));
        assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
        eventually(Duration::from_secs(5), "one connection each", || {
            a.pm.connection_count() == 1
                && b.pm.connection_count() == 1
                && a.pm.is_connected(&b.node_id())
                && b.pm.is_connected(&a.node_id())
        })
        .await;
        // It stays that way.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!((a.pm.connection_count(), b.pm.connection_count()), (1, 1));
        assert!(a.seen.lock().unwrap().downs.is_empty());
        assert!(b.seen.lock().unwrap().downs.is_empty());
        shutdown_all(&[&a, &b]).await;
    })
    .await;
}
