//! The manager's timers on paused tokio time over the in-memory transport:
//! each test steps the clock to just before and just after the moment a
//! timer must fire, so a timer that fires early, late or never fails it.

use std::time::Duration;

use micelio_testkit::wait;
use micelio_transport::memory::{MemoryMesh, MemoryNode, QUIET, link};
use micelio_transport::{MemoryPeerStore, PeerEvent, PeerStore as _, TransportConfig};
use micelio_wire::limits::{BOOTSTRAP_BACKOFF, MAX_DISCOVERY_BACKOFF};
use micelio_wire::proto::PeerInfo;
use tokio::time::{Instant, sleep_until};

/// Bound of each wait for something that is due now.
const NOW: Duration = Duration::from_millis(200);

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

async fn spawn(mesh: &MemoryMesh, seed: u8, tune: impl FnOnce(&mut TransportConfig)) -> MemoryNode {
    let mut c = MemoryMesh::config(seed);
    tune(&mut c);
    mesh.spawn_with(MemoryMesh::identity(seed), c, None)
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_keepalive_leaves_after_each_keepalive_interval_of_silence() {
    let mesh = MemoryMesh::new();
    let quiet = |c: &mut TransportConfig| {
        c.keepalive_interval = Duration::from_secs(10);
        c.idle_timeout = Duration::from_secs(60);
    };
    let a = spawn(&mesh, 1, quiet).await;
    let b = spawn(&mesh, 2, quiet).await;
    link(&a.peers, &b.peers, NOW).await.unwrap();
    // The last frame each side sent (its peer exchange) left by now.
    let t0 = Instant::now();
    let sent = || {
        (
            a.peers.stats().keepalives_sent,
            b.peers.stats().keepalives_sent,
        )
    };
    sleep_until(t0 + secs(9.5)).await;
    assert_eq!(sent(), (0, 0), "no keepalive before the interval");
    sleep_until(t0 + secs(10.5)).await;
    assert_eq!(sent(), (1, 1), "one each after the interval");
    sleep_until(t0 + secs(19.5)).await;
    assert_eq!(sent(), (1, 1));
    sleep_until(t0 + secs(20.5)).await;
    assert_eq!(sent(), (2, 2), "and one per interval after that");
    // Keepalives are traffic: nobody timed out at 60 s.
    sleep_until(t0 + secs(65.0)).await;
    assert!(a.peers.is_connected(b.peers.node_id()));
    assert_eq!(
        a.peers.stats().idle_timeouts + b.peers.stats().idle_timeouts,
        0
    );
    a.peers.shutdown().await;
    b.peers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_idle_timeout() {
    let mesh = MemoryMesh::new();
    let mut a = spawn(&mesh, 1, |c| {
        c.idle_timeout = Duration::from_secs(30);
        c.keepalive_interval = QUIET;
    })
    .await;
    // b says nothing after its hello and peer exchange.
    let b = spawn(&mesh, 2, |c| {
        c.idle_timeout = QUIET;
        c.keepalive_interval = QUIET;
    })
    .await;
    link(&b.peers, &a.peers, NOW).await.unwrap();
    let t0 = Instant::now();
    sleep_until(t0 + secs(29.5)).await;
    assert!(a.peers.is_connected(b.peers.node_id()), "closed too early");
    assert_eq!(a.peers.stats().idle_timeouts, 0);
    sleep_until(t0 + secs(30.5)).await;
    assert_eq!(a.peers.stats().idle_timeouts, 1);
    assert!(!a.peers.is_connected(b.peers.node_id()));
    let reason = loop {
        match a.events.try_recv().unwrap() {
            PeerEvent::Down { reason, .. } => break reason,
            _ => continue,
        }
    };
    assert!(reason.contains("idle"), "{reason}");
    a.peers.shutdown().await;
    b.peers.shutdown().await;
}

/// The moments (seconds after the first) of the redials that follow a
/// failed dial under the 1, 2, 4, 8, 16, 30 s schedule: 1, 3, 7, 15, 31,
/// then every 30 s.
const REDIALS: [f64; 7] = [1.0, 3.0, 7.0, 15.0, 31.0, 61.0, 91.0];

/// Waits for `node`'s first failed dial, then checks that its failure
/// counter has not moved just before each moment of [`REDIALS`] after it
/// and grows by one just after.
async fn redials_back_off(node: &MemoryNode) {
    wait::eventually(NOW, "the first dial", || {
        node.peers.stats().dial_failures == 1
    })
    .await;
    let t0 = Instant::now();
    for (k, at) in REDIALS.iter().enumerate() {
        let before = k as u64 + 1;
        sleep_until(t0 + secs(at - 0.4)).await;
        assert_eq!(
            node.peers.stats().dial_failures,
            before,
            "redial {} before {at} s",
            k + 1
        );
        wait::eventually(secs(0.8), &format!("redial {} at {at} s", k + 1), || {
            node.peers.stats().dial_failures == before + 1
        })
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn bootstrap_redials_back_off_1_2_4_8_16_then_every_30_s() {
    assert_eq!(BOOTSTRAP_BACKOFF.map(|d| d.as_secs()), [1, 2, 4, 8, 16, 30]);
    let mesh = MemoryMesh::new();
    // Nothing listens at the bootstrap address; the default schedule.
    let a = spawn(&mesh, 1, |c| {
        c.bootstrap = vec![MemoryMesh::address(9)];
        c.bootstrap_backoff = BOOTSTRAP_BACKOFF.to_vec();
    })
    .await;
    redials_back_off(&a).await;
    a.peers.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_known_peer_is_redialled_after_1_2_4_8_16_then_30_s() {
    let mesh = MemoryMesh::new();
    // A confirmed peer persisted before a restart, now unreachable.
    let gone = MemoryMesh::identity(9);
    let mut store = MemoryPeerStore::new();
    let info = PeerInfo {
        node_id: gone.node_id().to_string(),
        addr: MemoryMesh::address(9),
        reachable: true,
        ed25519_pubkey: gone.public_key().as_bytes().to_vec().into(),
        last_seen: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    };
    store.save(gone.node_id(), &info).unwrap();
    let mut c = MemoryMesh::config(1);
    c.discovery_interval = Duration::from_millis(100);
    c.discovery_jitter = Duration::ZERO;
    let a = mesh
        .spawn_with(MemoryMesh::identity(1), c, Some(Box::new(store)))
        .await
        .unwrap();
    assert_eq!(a.peers.known_peer_count(), 1);
    // Redialled after min(2^(fails-1), 30) s each, on the 100 ms
    // discovery tick.
    assert_eq!(MAX_DISCOVERY_BACKOFF, Duration::from_secs(30));
    redials_back_off(&a).await;
    assert_eq!(a.peers.known_peer_count(), 1, "a confirmed entry stays");
    a.peers.shutdown().await;
}
