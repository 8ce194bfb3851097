//! Desired state over the in-memory transport: targeting by tags, retags,
//! removal, failing and hanging reconcilers seen from every node, admins,
//! and a partitioned node.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use micelio_gossip::test_utils::GossipNode;
use micelio_state::desired::{
    Applied, Author, Desired, DesiredConfig, DriftKind, ReconcileFuture, Reconciler,
};
use micelio_state::selector::Selector;
use micelio_state::store::MemoryStateStore;
use micelio_state::{LivenessConfig, State, StateConfig};
use micelio_testkit::wait::until_async;
use micelio_transport::memory::MemoryMesh;
use micelio_wire::limits::FEATURE_STATE_V1;

const WITHIN: Duration = Duration::from_secs(30);

/// What the test reconciler does.
#[derive(Clone, Debug, PartialEq)]
enum Mode {
    Work,
    Fail(String),
    Hang,
}

/// A reconciler that keeps what it applied, and can be told to fail or
/// hang.
#[derive(Clone)]
struct Recorder {
    applied: Arc<Mutex<HashMap<String, String>>>,
    removed: Arc<Mutex<Vec<String>>>,
    mode: Arc<Mutex<Mode>>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            applied: Arc::default(),
            removed: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Work)),
        }
    }

    fn value(&self, key: &str) -> Option<String> {
        self.applied.lock().unwrap().get(key).cloned()
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Reconciler for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn prefix(&self) -> &str {
        "app/"
    }
    fn timeout(&self) -> Duration {
        Duration::from_millis(300)
    }
    fn apply(&self, key: &str, value: &str) -> ReconcileFuture {
        let me = self.clone();
        let (key, value) = (key.to_owned(), value.to_owned());
        Box::pin(async move {
            let mode = me.mode.lock().unwrap().clone();
            match mode {
                Mode::Work => {
                    me.applied.lock().unwrap().insert(key, value.clone());
                    Applied::ok(value)
                }
                Mode::Fail(why) => Applied::error(why),
                Mode::Hang => std::future::pending().await,
            }
        })
    }
    fn remove(&self, key: &str) -> ReconcileFuture {
        let me = self.clone();
        let key = key.to_owned();
        Box::pin(async move {
            me.applied.lock().unwrap().remove(&key);
            me.removed.lock().unwrap().push(key);
            Applied::ok("")
        })
    }
}

struct Node {
    net: GossipNode,
    state: State,
    desired: Desired,
    rec: Recorder,
}

impl Node {
    async fn start(mesh: &MemoryMesh, seed: u8, tags: &[&str], admins: Option<&[u8]>) -> Node {
        let mut t = MemoryMesh::config(seed);
        t.features.push(FEATURE_STATE_V1.to_owned());
        let net = GossipNode::spawn_with(
            mesh,
            MemoryMesh::identity(seed),
            t,
            micelio_gossip::GossipConfig::default(),
        )
        .await
        .unwrap();
        let mut cfg = StateConfig::default();
        cfg.sync_interval = Duration::from_millis(300);
        cfg.liveness = LivenessConfig {
            heartbeat_interval: Duration::from_millis(200),
            suspect_after: Duration::from_millis(1500),
            dead_after: Duration::from_secs(3),
        };
        cfg.node.name = format!("n{seed}");
        cfg.node.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        let state = State::spawn(
            net.identity.clone(),
            cfg,
            Box::new(MemoryStateStore::new()),
            net.gossip.clone(),
            net.peers.clone(),
        )
        .await
        .unwrap();
        let rec = Recorder::new();
        let mut config = DesiredConfig::with_admins(admins.map(|seeds| {
            seeds
                .iter()
                .map(|s| *MemoryMesh::identity(*s).node_id())
                .collect::<BTreeSet<_>>()
        }));
        config.retry_min = Duration::from_millis(100);
        config.retry_max = Duration::from_millis(400);
        let desired = Desired::spawn(state.clone(), config, vec![Arc::new(rec.clone())])
            .await
            .unwrap();
        Node {
            net,
            state,
            desired,
            rec,
        }
    }

    async fn stop(&self) {
        self.desired.shutdown().await;
        self.state.shutdown().await;
        self.net.shutdown().await;
    }

    async fn drift_names(&self) -> Vec<(String, Vec<DriftKind>)> {
        self.desired
            .drift(None)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.name, d.items.iter().map(|i| i.kind).collect()))
            .collect()
    }
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn by(user: &str) -> Author {
    Author {
        user: user.into(),
        ..Author::default()
    }
}

/// A star: node 0 in the middle.
async fn mesh_of(mesh: &MemoryMesh, tags: &[&[&str]], admins: Option<&[u8]>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for (i, t) in tags.iter().enumerate() {
        nodes.push(Node::start(mesh, i as u8 + 1, t, admins).await);
    }
    for n in &nodes[1..] {
        nodes[0].net.link(&n.net, WITHIN).await.unwrap();
    }
    // Everyone knows everyone's tags before anything is desired.
    for n in &nodes {
        until_async(WITHIN, "all members known", || async {
            n.state.members().await.unwrap().len() == nodes.len()
        })
        .await;
    }
    nodes
}

async fn converged(nodes: &[Node]) {
    for n in nodes {
        until_async(WITHIN, "no drift", || async {
            n.desired.drift(None).await.unwrap().is_empty()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_for_a_tag_reaches_exactly_its_nodes_follows_retags_and_is_removed() {
    let mesh = MemoryMesh::new();
    let nodes = mesh_of(
        &mesh,
        &[&["EU", "prod"], &["EU"], &["US"], &["EU", "canary"], &[]],
        None,
    )
    .await;
    nodes[2]
        .desired
        .desire(&sel("EU"), "app/motd", "hello", by("alice"))
        .await
        .unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let eu = [0, 1, 3].contains(&i);
        if eu {
            until_async(WITHIN, "applied on an EU node", || async {
                n.rec.value("app/motd").as_deref() == Some("hello")
            })
            .await;
        }
    }
    converged(&nodes).await;
    for i in [2, 4] {
        assert_eq!(nodes[i].rec.value("app/motd"), None, "node {i} is not EU");
    }
    // The audit trail names who desired it.
    let rules = nodes[4].desired.rules().await.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].rule.record.by.user, "alice");
    assert_eq!(rules[0].rule.record.by.node_name, "n3");
    assert!(rules[0].in_force);
    // A more specific rule wins on the nodes it matches.
    nodes[0]
        .desired
        .desire(&sel("EU+canary"), "app/motd", "beta", by("bob"))
        .await
        .unwrap();
    until_async(WITHIN, "canary gets the specific value", || async {
        nodes[3].rec.value("app/motd").as_deref() == Some("beta")
    })
    .await;
    converged(&nodes).await;
    assert_eq!(nodes[1].rec.value("app/motd").as_deref(), Some("hello"));
    // Retag: node 4 joins EU, node 1 leaves it.
    assert!(nodes[4].state.add_tag("EU").await.unwrap().is_some());
    assert!(nodes[1].state.remove_tag("EU").await.unwrap().is_some());
    until_async(WITHIN, "the retagged nodes move", || async {
        nodes[4].rec.value("app/motd").as_deref() == Some("hello")
            && nodes[1].rec.value("app/motd").is_none()
    })
    .await;
    assert_eq!(
        nodes[1].rec.removed.lock().unwrap().as_slice(),
        ["app/motd"]
    );
    converged(&nodes).await;
    // /undesire from another node than the author removes it everywhere.
    nodes[1]
        .desired
        .undesire(&sel("EU"), "app/motd", by("carol"))
        .await
        .unwrap();
    for i in [0, 4] {
        until_async(WITHIN, "removed", || async {
            nodes[i].rec.value("app/motd").is_none()
        })
        .await;
    }
    assert_eq!(nodes[3].rec.value("app/motd").as_deref(), Some("beta"));
    converged(&nodes).await;
    // Undesiring what nobody desires is an error.
    let e = nodes[1]
        .desired
        .undesire(&sel("EU"), "app/motd", by("carol"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nothing is desired"), "{e}");
    for n in &nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_hanging_reconcilers_and_unclaimed_keys_show_in_drift_everywhere() {
    let mesh = MemoryMesh::new();
    let nodes = mesh_of(&mesh, &[&["web"], &["web"], &["web"]], None).await;
    nodes[1].rec.set_mode(Mode::Fail("disk full".into()));
    nodes[2].rec.set_mode(Mode::Hang);
    nodes[0]
        .desired
        .desire(&sel("web"), "app/x", "1", by("ops"))
        .await
        .unwrap();
    nodes[0]
        .desired
        .desire(&sel("web"), "other/y", "2", by("ops"))
        .await
        .unwrap();
    for n in &nodes {
        until_async(WITHIN, "failures seen", || async {
            let d = n.desired.drift(None).await.unwrap();
            let find = |name: &str| d.iter().find(|x| x.name == name).cloned();
            let (Some(a), Some(b), Some(c)) = (find("n1"), find("n2"), find("n3")) else {
                return false;
            };
            let kind = |nd: &micelio_state::desired::NodeDrift, key: &str| {
                nd.items
                    .iter()
                    .find(|i| i.key == key)
                    .map(|i| (i.kind, i.message.clone()))
            };
            kind(&a, "app/x").is_none()
                && kind(&a, "other/y").map(|k| k.0) == Some(DriftKind::Unclaimed)
                && kind(&b, "app/x") == Some((DriftKind::Failed, "disk full".into()))
                && kind(&c, "app/x").is_some_and(|(k, m)| {
                    k == DriftKind::Failed && m.starts_with("timed out after 300ms")
                })
        })
        .await;
    }
    let stats = nodes[2].desired.stats().await.unwrap();
    assert!(stats.timeouts >= 1, "{stats:?}");
    // Fixed: the retries converge them.
    nodes[1].rec.set_mode(Mode::Work);
    nodes[2].rec.set_mode(Mode::Work);
    nodes[0]
        .desired
        .undesire(&sel("web"), "other/y", by("ops"))
        .await
        .unwrap();
    converged(&nodes).await;
    for n in &nodes {
        assert_eq!(n.rec.value("app/x").as_deref(), Some("1"));
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_admins_a_non_admin_cannot_desire_anything_anywhere() {
    let mesh = MemoryMesh::new();
    // Node 1 is the only admin.
    let nodes = mesh_of(&mesh, &[&["a"], &["a"], &["a"]], Some(&[1])).await;
    nodes[2]
        .desired
        .desire(&sel("*"), "app/evil", "rm -rf /", by("mallory"))
        .await
        .unwrap();
    for n in &nodes {
        until_async(WITHIN, "the entry arrived and is ignored", || async {
            n.desired.stats().await.unwrap().untrusted == 1
        })
        .await;
    }
    // The admin's entry is applied; a non-admin removal does not remove it.
    nodes[0]
        .desired
        .desire(&sel("a"), "app/good", "yes", by("root"))
        .await
        .unwrap();
    for n in &nodes {
        until_async(WITHIN, "admin value applied", || async {
            n.rec.value("app/good").as_deref() == Some("yes")
        })
        .await;
    }
    assert!(
        nodes[2]
            .desired
            .undesire(&sel("a"), "app/good", by("mallory"))
            .await
            .is_ok()
    );
    converged(&nodes).await;
    for n in &nodes {
        assert_eq!(n.rec.value("app/evil"), None);
        assert_eq!(n.rec.value("app/good").as_deref(), Some("yes"));
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_drifts_then_converges_after_the_heal() {
    let mesh = MemoryMesh::new();
    let nodes = mesh_of(&mesh, &[&["db"], &["db"], &["db"]], None).await;
    mesh.cut(&nodes[0].net.peers, &nodes[2].net.peers);
    until_async(WITHIN, "the cut took", || async {
        !nodes[0].net.peers.is_connected(&nodes[2].net.node_id())
    })
    .await;
    nodes[0]
        .desired
        .desire(&sel("db"), "app/v", "2", by("ops"))
        .await
        .unwrap();
    until_async(WITHIN, "n3 drifts as seen from n1", || async {
        nodes[0]
            .drift_names()
            .await
            .iter()
            .any(|(name, kinds)| name == "n3" && kinds.contains(&DriftKind::Missing))
    })
    .await;
    mesh.restore(&nodes[0].net.peers, &nodes[2].net.peers);
    nodes[0].net.link(&nodes[2].net, WITHIN).await.unwrap();
    converged(&nodes).await;
    assert_eq!(nodes[2].rec.value("app/v").as_deref(), Some("2"));
    for n in &nodes {
        n.stop().await;
    }
}
