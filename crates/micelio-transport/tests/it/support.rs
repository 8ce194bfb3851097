//! Test harness: nodes over either transport, and bounded waits.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use micelio_identity::{Identity, NodeId};
use micelio_transport::memory::MemoryNetwork;
use micelio_transport::{
    PeerEvent, PeerManager, PeerStore, TcpTransport, Transport, TransportConfig,
};
use micelio_wire::Envelope;

/// Which transport a test runs on.
#[derive(Clone)]
pub(crate) enum Net {
    Tcp,
    Memory(MemoryNetwork),
}

impl Net {
    pub(crate) fn both() -> Vec<Net> {
        vec![Net::Tcp, Net::Memory(MemoryNetwork::new())]
    }

    pub(crate) fn transport(
        &self,
        id: &Arc<Identity>,
        cfg: &TransportConfig,
    ) -> Arc<dyn Transport> {
        match self {
            Net::Tcp => Arc::new(TcpTransport::new(
                id.clone(),
                cfg.dial_timeout,
                cfg.hello_timeout,
            )),
            Net::Memory(net) => Arc::new(net.transport(id)),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Net::Tcp => "tcp",
            Net::Memory(_) => "memory",
        }
    }
}

/// What a test node has seen on its event stream.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) ups: Vec<NodeId>,
    pub(crate) downs: Vec<(NodeId, String)>,
    pub(crate) messages: Vec<(NodeId, Envelope)>,
}

pub(crate) struct TestNode {
    pub(crate) id: Arc<Identity>,
    pub(crate) pm: PeerManager,
    pub(crate) seen: Arc<Mutex<Seen>>,
}

impl TestNode {
    pub(crate) async fn start(net: &Net, seed: u8, cfg: TransportConfig) -> TestNode {
        Self::start_with_store(net, seed, cfg, None).await
    }

    pub(crate) async fn start_with_store(
        net: &Net,
        seed: u8,
        cfg: TransportConfig,
        store: Option<Box<dyn PeerStore>>,
    ) -> TestNode {
        let id = Arc::new(Identity::from_seed([seed; 32]));
        let transport = net.transport(&id, &cfg);
        let (pm, mut events) = PeerManager::spawn(id.clone(), transport, cfg, store)
            .await
            .expect("manager starts");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let mut s = s.lock().unwrap();
                match ev {
                    PeerEvent::Up(p) => s.ups.push(p.node_id),
                    PeerEvent::Down { node_id, reason } => s.downs.push((node_id, reason)),
                    PeerEvent::Message { from, envelope } => s.messages.push((from, envelope)),
                    _ => {}
                }
            }
        });
        TestNode { id, pm, seen }
    }

    pub(crate) fn addr(&self) -> String {
        self.pm.local_addr().expect("listening").to_owned()
    }

    pub(crate) fn node_id(&self) -> NodeId {
        *self.id.node_id()
    }

    /// Whether `env` has arrived from `from`, unchanged.
    pub(crate) fn got(&self, from: &TestNode, env: &Envelope) -> bool {
        let from = from.node_id();
        self.seen
            .lock()
            .unwrap()
            .messages
            .iter()
            .any(|(f, e)| *f == from && e == env)
    }
}

/// Config listening on loopback with short timers, bootstrapping from `boot`.
pub(crate) fn cfg(boot: &[&str]) -> TransportConfig {
    let mut c = TransportConfig::for_tests();
    c.bootstrap = boot.iter().map(|s| s.to_string()).collect();
    c
}

/// Waits until a condition holds, polling on tokio time, bounded.
pub(crate) use micelio_testkit::wait::eventually;

/// Waits until every node is connected to every other.
pub(crate) async fn full_mesh(nodes: &[&TestNode], limit: Duration) {
    let n = nodes.len();
    eventually(limit, "full mesh", || {
        nodes.iter().all(|t| {
            nodes
                .iter()
                .filter(|o| o.node_id() != t.node_id())
                .all(|o| t.pm.is_connected(&o.node_id()))
        }) && nodes.iter().all(|t| t.pm.peer_count() == n - 1)
    })
    .await;
}

/// Runs `f` under a hard time limit.
pub(crate) async fn bounded<F: Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .expect("test step timed out")
}

pub(crate) async fn shutdown_all(nodes: &[&TestNode]) {
    for n in nodes {
        n.pm.shutdown().await;
    }
}
