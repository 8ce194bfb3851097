//! Hostile peers over real TCP: broken identity bindings, garbage, truncated
//! or oversized input, silence. Each is closed and counted, and the honest
//! node keeps serving: after every attack an honest peer still connects.
//!
//! The hostile peer speaks Noise through snow directly (not through this
//! crate's Noise code), which also shows that an independent Noise XX
//! implementation interoperates with ours.

use std::time::Duration;

use bytes::Bytes;
use micelio_identity::Identity;
use micelio_transport::hello::{LocalHello, build_hello};
use micelio_wire::proto::PeerHello;
use micelio_wire::{Envelope, EnvelopeBuilder, MsgType, WireMessage as _, frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const T: Duration = Duration::from_secs(30);
const PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// A peer that does Noise by hand and then says whatever the test wants.
pub(crate) struct RawPeer {
    pub(crate) stream: TcpStream,
    noise: snow::TransportState,
}

async fn write_hs(stream: &mut TcpStream, msg: &[u8]) {
    stream
        .write_all(&(msg.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(msg).await.unwrap();
}

async fn read_hs(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut msg).await.unwrap();
    msg
}

impl RawPeer {
    /// Runs the responder side of the handshake on an accepted stream.
    pub(crate) async fn accept(mut stream: TcpStream, noise_identity: &Identity) -> RawPeer {
        let key = noise_identity.x25519_private();
        let mut hs = snow::Builder::new(PARAMS.parse().unwrap())
            .local_private_key(&key[..])
            .unwrap()
            .build_responder()
            .unwrap();
        let mut buf = vec![0u8; 65535];
        let mut payload = vec![0u8; 65535];
        let msg = read_hs(&mut stream).await;
        hs.read_message(&msg, &mut payload).unwrap();
        let n = hs.write_message(&[], &mut buf).unwrap();
        write_hs(&mut stream, &buf[..n]).await;
        let msg = read_hs(&mut stream).await;
        hs.read_message(&msg, &mut payload).unwrap();
        RawPeer {
            stream,
            noise: hs.into_transport_mode().unwrap(),
        }
    }

    pub(crate) async fn connect(addr: &str, noise_identity: &Identity) -> RawPeer {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let key = noise_identity.x25519_private();
        let mut hs = snow::Builder::new(PARAMS.parse().unwrap())
            .local_private_key(&key[..])
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut buf = vec![0u8; 65535];
        let mut payload = vec![0u8; 65535];
        let n = hs.write_message(&[], &mut buf).unwrap();
        write_hs(&mut stream, &buf[..n]).await;
        let msg = read_hs(&mut stream).await;
        hs.read_message(&msg, &mut payload).unwrap();
        let n = hs.write_message(&[], &mut buf).unwrap();
        write_hs(&mut stream, &buf[..n]).await;
        RawPeer {
            stream,
            noise: hs.into_transport_mode().unwrap(),
        }
    }

    pub(crate) async fn send_plain(&mut self, plaintext: &[u8]) {
        let mut buf = vec![0u8; plaintext.len() + 16];
        let n = self.noise.write_message(plaintext, &mut buf).unwrap();
        self.stream
            .write_all(&(n as u32).to_be_bytes())
            .await
            .unwrap();
        self.stream.write_all(&buf[..n]).await.unwrap();
    }

    pub(crate) async fn send_envelope(&mut self, env: &Envelope) {
        self.send_plain(&frame::encode_envelope(env).unwrap()).await;
    }

    /// Reads one transport message and decodes the frame inside it.
    pub(crate) async fn recv_envelope(&mut self) -> Envelope {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await.unwrap();
        let mut ct = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut ct).await.unwrap();
        let mut pt = vec![0u8; ct.len()];
        let n = self.noise.read_message(&ct, &mut pt).unwrap();
        let mut b = bytes::BytesMut::from(&pt[..n]);
        frame::FrameDecoder::new()
            .decode_envelope(&mut b)
            .unwrap()
            .unwrap()
    }

    /// Sends a valid hello and returns the node's ack.
    pub(crate) async fn honest_hello(&mut self, me: &Identity) -> Envelope {
        self.send_envelope(&build_hello(me, MsgType::Hello, &LocalHello::default()))
            .await;
        self.recv_envelope().await
    }

    /// Connects to `node` as `me`, says an honest hello and waits until the
    /// node has registered the peer; returns the peer and the node's ack.
    pub(crate) async fn join(node: &TestNode, me: &Identity) -> (RawPeer, Envelope) {
        let mut p = RawPeer::connect(&node.addr(), me).await;
        let ack = p.honest_hello(me).await;
        eventually(Duration::from_secs(5), "raw peer registered", || {
            node.pm.is_connected(me.node_id())
        })
        .await;
        (p, ack)
    }
}

/// Waits until the node has closed `stream` (EOF or reset).
async fn closed_by_node(stream: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    bounded(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// An honest peer still gets in.
async fn still_serving(node: &TestNode, seed: u8) {
    let honest = TestNode::start(&Net::Tcp, seed, cfg(&[])).await;
    honest.pm.dial(&node.addr()).await.unwrap();
    full_mesh(&[node, &honest], Duration::from_secs(5)).await;
    honest.pm.shutdown().await;
    eventually(Duration::from_secs(5), "honest peer gone", || {
        node.pm.peer_count() == 0
    })
    .await;
}

#[tokio::test]
async fn each_broken_identity_binding_is_refused() {
    bounded(T, async {
        let node = TestNode::start(&Net::Tcp, 1, cfg(&[])).await;
        let me = Identity::from_seed([50; 32]);
        let other = Identity::from_seed([51; 32]);

        // 1. node_id that is not the hash of the hello key.
        let mut p = RawPeer::connect(&node.addr(), &me).await;
        let hello = PeerHello {
            node_id: other.node_id().to_string(),
            version: "0.1.0".into(),
            ed25519_pubkey: me.public_key().as_bytes().to_vec().into(),
            ..Default::default()
        };
        p.send_envelope(&EnvelopeBuilder::new(MsgType::Hello, hello.encode_wire()).sign(&me))
            .await;
        closed_by_node(&mut p.stream).await;

        // 2. a consistent hello of another key than the Noise key.
        let mut p = RawPeer::connect(&node.addr(), &me).await;
        p.send_envelope(&build_hello(&other, MsgType::Hello, &LocalHello::default()))
            .await;
        closed_by_node(&mut p.stream).await;

        // 3. a bad signature.
        let mut p = RawPeer::connect(&node.addr(), &me).await;
        let mut env = build_hello(&me, MsgType::Hello, &LocalHello::default());
        let mut sig = env.signature.to_vec();
        sig[10] ^= 0x40;
        env.signature = Bytes::from(sig);
        p.send_envelope(&env).await;
        closed_by_node(&mut p.stream).await;

        eventually(Duration::from_secs(5), "three hello failures", || {
            node.pm.stats().hello_failures == 3
        })
        .await;
        assert_eq!(node.pm.peer_count(), 0);
        assert!(node.seen.lock().unwrap().ups.is_empty());
        still_serving(&node, 60).await;

        // And an honest raw peer gets the node's ack, which verifies.
        let (_p, ack) = RawPeer::join(&node, &me).await;
        assert_eq!(ack.kind(), MsgType::HelloAck);
        ack.verify_with(&node.id.public_key()).unwrap();
        node.pm.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn garbage_and_truncation_before_the_handshake() {
    bounded(T, async {
        let node = TestNode::start(&Net::Tcp, 1, cfg(&[])).await;
        // An HTTP request instead of a handshake.
        let mut s = TcpStream::connect(node.addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        closed_by_node(&mut s).await;
        // Random bytes with a plausible length that then stop.
        let mut s = TcpStream::connect(node.addr()).await.unwrap();
        s.write_all(&[0x00, 0x20, 1, 2, 3]).await.unwrap();
        drop(s);
        // A first handshake message cut in the middle, then silence.
        let mut s = TcpStream::connect(node.addr()).await.unwrap();
        let mut hs = snow::Builder::new(PARAMS.parse().unwrap())
            .local_private_key(&Identity::from_seed([9; 32]).x25519_private()[..])
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = hs.write_message(&[], &mut buf).unwrap();
        s.write_all(&(n as u16).to_be_bytes()).await.unwrap();
        s.write_all(&buf[..n / 2]).await.unwrap();
        closed_by_node(&mut s).await;
        // A peer that connects and says nothing at all.
        let mut s = TcpStream::connect(node.addr()).await.unwrap();
        closed_by_node(&mut s).await;
        eventually(Duration::from_secs(5), "handshake failures", || {
            // The silent one was closed by the pre-auth deadline.
            node.pm.stats().handshake_failures >= 3 && node.pm.stats().preauth_timeouts >= 1
        })
        .await;
        still_serving(&node, 61).await;
        node.pm.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn bad_input_after_the_handshake_closes_only_that_connection() {
    bounded(T, async {
        let node = TestNode::start(&Net::Tcp, 1, cfg(&[])).await;
        let me = Identity::from_seed([70; 32]);

        // A transport message length above 1 MiB + 24.
        let mut p = RawPeer::connect(&node.addr(), &me).await;
        p.stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        closed_by_node(&mut p.stream).await;
        let mut p = RawPeer::connect(&node.addr(), &me).await;
        let over = micelio_wire::limits::MAX_NOISE_TRANSPORT_MSG as u32 + 1;
        p.stream.write_all(&over.to_be_bytes()).await.unwrap();
        closed_by_node(&mut p.stream).await;

        // A frame with a wrong magic, then one with a wrong version.
        for bad in [
            &b"XX\x00\x01\x00\x00\x00\x00"[..],
            &b"MI\x00\x07\x00\x00\x00\x00"[..],
        ] {
            let mut p = RawPeer::connect(&node.addr(), &me).await;
            p.send_plain(bad).await;
            closed_by_node(&mut p.stream).await;
        }

        // A frame header declaring more than 1 MiB.
        let mut p = RawPeer::connect(&node.addr(), &me).await;
        p.send_plain(&[b"MI\x00\x01".as_slice(), &((1u32 << 20) + 1).to_be_bytes()].concat())
            .await;
        closed_by_node(&mut p.stream).await;

        // After a good hello: garbage that is not an envelope is dropped and
        // counted, the connection stays; then a bad frame closes it.
        let (mut p, _) = RawPeer::join(&node, &me).await;
        let mut garbage = Vec::new();
        frame::encode(&[0xff, 0xff, 0xff, 0xff], &mut garbage).unwrap();
        p.send_plain(&garbage).await;
        eventually(Duration::from_secs(5), "bad envelope counted", || {
            node.pm.stats().bad_envelopes == 1
        })
        .await;
        assert!(node.pm.is_connected(me.node_id()));
        p.send_plain(b"MI\x00\x02\x00\x00\x00\x00").await;
        closed_by_node(&mut p.stream).await;
        eventually(Duration::from_secs(5), "dropped", || {
            !node.pm.is_connected(me.node_id())
        })
        .await;

        still_serving(&node, 62).await;
        node.pm.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_idle_timeout() {
    bounded(T, async {
        let mut c = cfg(&[]);
        c.idle_timeout = Duration::from_millis(600);
        let node = TestNode::start(&Net::Tcp, 1, c).await;
        let me = Identity::from_seed([80; 32]);
        let (mut p, _) = RawPeer::join(&node, &me).await;
        // Say nothing more: the node closes us after its idle timeout.
        closed_by_node(&mut p.stream).await;
        eventually(Duration::from_secs(5), "idle timeout counted", || {
            node.pm.stats().idle_timeouts == 1
        })
        .await;
        let downs = node.seen.lock().unwrap().downs.clone();
        assert_eq!(downs.len(), 1);
        assert!(downs[0].1.contains("idle"), "{}", downs[0].1);
        still_serving(&node, 63).await;
        node.pm.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_loses_messages_and_never_stalls_the_node() {
    bounded(T, async {
        let mut c = cfg(&[]);
        c.send_queue = 8;
        c.write_timeout = Duration::from_millis(500);
        c.idle_timeout = Duration::from_secs(20);
        let node = TestNode::start(&Net::Tcp, 1, c).await;
        let me = Identity::from_seed([90; 32]);
        let (p, _) = RawPeer::join(&node, &me).await;
        // The raw peer never reads again. Queue far more than socket buffers,
        // the send queue and the write deadline allow.
        let big =
            EnvelopeBuilder::gossip(MsgType::Plugin(1001), vec![1u8; 60 * 1024]).sign(&node.id);
        // Keep sending (as gossip would) until the node gives up on the peer:
        // the queue fills and drops, the socket buffers fill, and the stuck
        // write hits its deadline. Each send returns at once.
        let mut full = 0u32;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while node.pm.is_connected(me.node_id()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "slow peer never dropped"
            );
            let started = std::time::Instant::now();
            if node.pm.send(me.node_id(), &big).is_err() {
                full += 1;
            }
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "send blocked"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(full > 0, "the bounded queue refused some messages");
        assert!(node.pm.stats().send_queue_drops > 0);
        let downs = node.seen.lock().unwrap().downs.clone();
        assert_eq!(downs.len(), 1, "{downs:?}");
        assert!(downs[0].1.contains("write timed out"), "{downs:?}");
        still_serving(&node, 64).await;
        drop(p);
        node.pm.shutdown().await;
    })
    .await;
}

/// Regression (issue 8, item 11): fifteen silent sockets used to fill
/// `max_peers` and lock every honest peer out. Now 100 silent sockets from
/// the honest peer's own address, reopened as soon as the node closes them,
/// neither fill `max_peers` nor keep the honest peer out.
#[tokio::test]
async fn an_honest_peer_gets_in_while_100_silent_sockets_are_held_open() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    bounded(T, async {
        let node = TestNode::start(&Net::Tcp, 1, cfg(&[])).await;
        let addr = node.addr();
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let mut attackers = Vec::new();
        for _ in 0..100 {
            let (addr, stop, opened) = (addr.clone(), stop.clone(), opened.clone());
            attackers.push(tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(&addr).await else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    opened.fetch_add(1, Ordering::Relaxed);
                    // Say nothing; reopen as soon as the node lets go.
                    loop {
                        tokio::select! {
                            r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                                if stop.load(Ordering::Relaxed) { return; }
                            }
                        }
                    }
                }
            }));
        }
        eventually(Duration::from_secs(10), "the attack is under way", || {
            opened.load(Ordering::Relaxed) >= 100 && node.pm.stats().preauth_evicted >= 100
        })
        .await;
        assert!(node.pm.pending_handshakes() <= micelio_transport::DEFAULT_MAX_PENDING_PER_HOST);

        // The honest peer dials from 127.0.0.1 too, through its bootstrap
        // dialer (which retries with backoff if a dial fails).
        let before = opened.load(Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let honest = TestNode::start(&Net::Tcp, 60, cfg(&[&addr])).await;
        eventually(Duration::from_secs(5), "honest peer connected", || {
            node.pm.is_connected(&honest.node_id()) && honest.pm.is_connected(&node.node_id())
        })
        .await;
        let joined_in = started.elapsed();
        // ...and exchanges a message.
        let env = EnvelopeBuilder::gossip(MsgType::Plugin(1001), b"hi".to_vec()).sign(&honest.id);
        honest.pm.send(&node.node_id(), &env).unwrap();
        eventually(Duration::from_secs(5), "message delivered", || {
            node.got(&honest, &env)
        })
        .await;
        // The attacker kept reopening all along, and never held more than
        // the pre-auth budget.
        assert!(opened.load(Ordering::Relaxed) > before, "attack continued");
        assert!(node.pm.pending_handshakes() <= micelio_transport::DEFAULT_MAX_PENDING_PER_HOST);
        assert_eq!(node.pm.peer_count(), 1);
        assert_eq!(
            node.pm.stats().refused_max_peers,
            0,
            "silence never counts as a peer"
        );
        assert!(
            joined_in < Duration::from_secs(5),
            "joined in {joined_in:?}"
        );
        stop.store(true, Ordering::Relaxed);
        for a in attackers {
            a.await.unwrap();
        }
        shutdown_all(&[&node, &honest]).await;
    })
    .await;
}

/// Regression (issue 8, item 11): one peer-exchange sender filled the
/// known-peers table with 4,096 fakes at 127.0.0.1:1; valid entries were
/// then refused, and the fakes were repeated to every new peer.
#[tokio::test]
async fn a_flood_of_fake_peers_neither_locks_out_honest_entries_nor_spreads() {
    use micelio_transport::discovery::{MAX_EXCHANGE_SENT, MAX_NEW_PER_SENDER};
    use micelio_wire::proto::{PeerExchange, PeerInfo};
    bounded(T, async {
        let node = TestNode::start(&Net::Tcp, 1, cfg(&[])).await;
        let flooder = Identity::from_seed([72; 32]);
        let mut p = RawPeer::connect(&node.addr(), &flooder).await;
        p.honest_hello(&flooder).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let fakes: Vec<PeerInfo> = (0u32..10_000)
            .map(|n| {
                let mut seed = [3u8; 32];
                seed[..4].copy_from_slice(&n.to_le_bytes());
                let i = Identity::from_seed(seed);
                PeerInfo {
                    node_id: i.node_id().to_string(),
                    addr: format!("127.0.0.1:{}", 1 + n % 3),
                    reachable: true,
                    ed25519_pubkey: i.public_key().as_bytes().to_vec().into(),
                    last_seen: now + 3600,
                }
            })
            .collect();
        // Frames of about 50 KB (the raw peer's Noise messages are capped).
        for chunk in fakes.chunks(400) {
            let px = PeerExchange {
                peers: chunk.to_vec(),
            };
            p.send_envelope(
                &EnvelopeBuilder::new(MsgType::PeerExchange, px.encode_wire()).sign(&flooder),
            )
            .await;
        }
        eventually(Duration::from_secs(10), "the flood is processed", || {
            node.pm.stats().peer_entries_quota == (10_000 - MAX_NEW_PER_SENDER) as u64
        })
        .await;
        assert!(node.pm.known_peer_count() <= MAX_NEW_PER_SENDER);

        // An honest peer b, which knows c, connects: the node learns c from
        // b's exchange and dials it, fakes notwithstanding.
        let b = TestNode::start(&Net::Tcp, 2, cfg(&[])).await;
        let c = TestNode::start(&Net::Tcp, 3, cfg(&[&b.addr()])).await;
        full_mesh(&[&b, &c], Duration::from_secs(5)).await;
        b.pm.dial(&node.addr()).await.unwrap();
        eventually(Duration::from_secs(10), "the node dials c", || {
            node.pm.is_connected(&c.node_id())
        })
        .await;

        // A new peer gets an exchange within the cap, real peers first.
        let newcomer = Identity::from_seed([73; 32]);
        let mut d = RawPeer::connect(&node.addr(), &newcomer).await;
        d.honest_hello(&newcomer).await;
        let px = bounded(Duration::from_secs(5), async {
            loop {
                let env = d.recv_envelope().await;
                if env.kind() == MsgType::PeerExchange {
                    return PeerExchange::decode_wire(env.payload.clone()).unwrap();
                }
            }
        })
        .await;
        assert!(px.peers.len() <= MAX_EXCHANGE_SENT, "{}", px.peers.len());
        let ids: Vec<&str> = px.peers.iter().map(|i| i.node_id.as_str()).collect();
        let (bs, cs) = (b.node_id().to_string(), c.node_id().to_string());
        assert!(
            ids[..3].contains(&bs.as_str()) && ids[..3].contains(&cs.as_str()),
            "{ids:?}"
        );
        assert!(
            px.peers.iter().all(|i| i.last_seen <= now + 120),
            "future clamped"
        );
        shutdown_all(&[&node, &b, &c]).await;
    })
    .await;
}

/// The whole pre-auth phase is bounded by `preauth_timeout`, however long
/// the hello deadline: a peer that completes the handshake and then says
/// nothing is closed at `preauth_timeout` (paused time, simulated network).
#[tokio::test(start_paused = true)]
async fn the_pre_auth_phase_is_bounded_as_a_whole() {
    use micelio_transport::Transport as _;
    use micelio_transport::memory::MemoryNetwork;
    let sim = MemoryNetwork::new();
    let net = Net::Memory(sim.clone());
    let mut c = cfg(&[]);
    c.hello_timeout = Duration::from_secs(30);
    c.preauth_timeout = Duration::from_secs(3);
    let node = TestNode::start(&net, 1, c).await;
    let silent = sim.transport(&Identity::from_seed([74; 32]));
    let started = tokio::time::Instant::now();
    let mut link = silent.dial(&node.addr()).await.unwrap();
    // Never send the hello; wait for the node to close the link.
    let closed = link.source.recv().await;
    assert!(matches!(closed, Ok(None) | Err(_)), "{closed:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    eventually(Duration::from_secs(1), "timeout counted", || {
        node.pm.stats().preauth_timeouts == 1 && node.pm.pending_handshakes() == 0
    })
    .await;
    node.pm.shutdown().await;
}
