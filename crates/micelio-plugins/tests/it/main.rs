//! Integration tests of in-process plugins: nodes on the in-memory
//! transport with gossip, state, desired state and a partyline, plugins
//! driven through partyline sessions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use micelio_gossip::test_utils::GossipNode;
use micelio_partyline::{Partyline, PartylineConfig, STATUS_FAILED};
use micelio_plugins::{
    Applied, BoxFuture, Event, EventKind, Manifest, Plugin, PluginCall, PluginContext, PluginError,
    PluginHost, PluginStatus, Plugins, ReconcileFuture, Reply,
};
use micelio_state::desired::{Author, Desired, DesiredConfig};
use micelio_state::selector::Selector;
use micelio_state::store::MemoryStateStore;
use micelio_state::{LivenessConfig, State, StateConfig};
use micelio_testkit::wait::until_async;
use micelio_transport::memory::MemoryMesh;
use micelio_wire::limits::FEATURE_STATE_V1;

mod docs;
mod external;

const WITHIN: Duration = Duration::from_secs(20);

/// What a test plugin saw.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<Event>>,
    ctx: Mutex<Option<PluginContext>>,
    applied: Mutex<Vec<(String, String)>>,
    stopped: Mutex<bool>,
}

impl Seen {
    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
    fn ctx(&self) -> PluginContext {
        self.ctx.lock().unwrap().clone().expect("started")
    }
}

/// A configurable test plugin.
struct Probe {
    name: String,
    manifest: Manifest,
    seen: Arc<Seen>,
    /// Never returns from `event` (a plugin that stops reading).
    stuck: bool,
    /// `start` fails with this.
    fail_start: Option<String>,
}

impl Probe {
    fn new(name: &str, manifest: Manifest) -> Self {
        Self {
            name: name.to_owned(),
            manifest,
            seen: Arc::default(),
            stuck: false,
            fail_start: None,
        }
    }
}

impl Plugin for Probe {
    fn name(&self) -> &str {
        &self.name
    }
    fn manifest(&self) -> Manifest {
        self.manifest.clone()
    }
    fn start(&self, ctx: PluginContext) -> BoxFuture<Result<(), String>> {
        *self.seen.ctx.lock().unwrap() = Some(ctx);
        let fail = self.fail_start.clone();
        Box::pin(async move { fail.map_or(Ok(()), Err) })
    }
    fn command(&self, call: PluginCall) -> BoxFuture<Reply> {
        let ctx = self.seen.ctx();
        Box::pin(async move {
            match call.args.as_str() {
                "fail" => Reply::fail("asked to fail"),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Reply::ok("late")
                }
                _ if call.json => Reply::json(&serde_json::json!({"args": call.args})),
                _ => Reply::ok(format!(
                    "{} from {} to {} on {}",
                    call.command,
                    ctx.name(),
                    call.nick,
                    ctx.node_name()
                )),
            }
        })
    }
    fn event(&self, event: Event) -> BoxFuture<()> {
        let seen = self.seen.clone();
        let stuck = self.stuck;
        Box::pin(async move {
            seen.events.lock().unwrap().push(event);
            if stuck {
                std::future::pending::<()>().await;
            }
        })
    }
    fn apply(&self, key: &str, value: &str) -> ReconcileFuture {
        let seen = self.seen.clone();
        let (key, value) = (key.to_owned(), value.to_owned());
        Box::pin(async move {
            seen.applied.lock().unwrap().push((key, value.clone()));
            Applied::ok(value)
        })
    }
    fn stop(&self) -> BoxFuture<()> {
        let seen = self.seen.clone();
        Box::pin(async move {
            *seen.stopped.lock().unwrap() = true;
        })
    }
}

struct Node {
    net: GossipNode,
    state: State,
    party: Partyline,
    desired: Desired,
    plugins: Plugins,
}

impl Node {
    async fn start(mesh: &MemoryMesh, seed: u8, plugins: Vec<Arc<dyn Plugin>>) -> Node {
        let host = Self::host(plugins);
        Self::start_with(mesh, seed, host).await.unwrap()
    }

    fn host(plugins: Vec<Arc<dyn Plugin>>) -> PluginHost {
        let mut host = PluginHost::new();
        for p in plugins {
            host.add(p).unwrap();
        }
        host
    }

    async fn start_with(
        mesh: &MemoryMesh,
        seed: u8,
        host: PluginHost,
    ) -> Result<Node, PluginError> {
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
            suspect_after: Duration::from_millis(1000),
            dead_after: Duration::from_millis(2000),
        };
        cfg.node.name = format!("n{seed}");
        let state = State::spawn(
            net.identity.clone(),
            cfg,
            Box::new(MemoryStateStore::new()),
            net.gossip.clone(),
            net.peers.clone(),
        )
        .await
        .unwrap();
        let party = Partyline::spawn(
            PartylineConfig::new(format!("n{seed}")),
            net.gossip.clone(),
            net.peers.clone(),
        )
        .await
        .unwrap();
        party.attach_state(state.clone()).unwrap();
        let desired = Desired::spawn(state.clone(), DesiredConfig::default(), host.reconcilers())
            .await
            .unwrap();
        party.attach_desired(desired.clone()).unwrap();
        let plugins = host.start(&party, state.clone()).await?;
        Ok(Node {
            net,
            state,
            party,
            desired,
            plugins,
        })
    }

    async fn exec(&self, line: &str) -> Reply {
        let mut s = self.party.join_quiet("op").await.unwrap();
        s.input(line).await
    }

    async fn stop(&self) {
        self.plugins.shutdown().await;
        self.party.shutdown().await;
        self.desired.shutdown().await;
        self.state.shutdown().await;
        self.net.shutdown().await;
    }
}

async fn running(node: &Node, name: &str) {
    until_async(WITHIN, "plugin running", || async {
        node.plugins
            .list()
            .iter()
            .any(|p| p.name == name && p.status == PluginStatus::Running)
    })
    .await;
}

#[tokio::test]
async fn commands_appear_in_help_answer_with_their_status_and_time_out() {
    let mesh = MemoryMesh::new();
    let probe = Probe::new(
        "probe",
        Manifest::new().command("probe", "/probe [fail]", "tests"),
    );
    let node = Node::start(&mesh, 1, vec![Arc::new(probe)]).await;
    running(&node, "probe").await;
    let help = node.exec("/help").await;
    assert!(
        help.text.contains("/probe [fail]") && help.text.contains("/plugins"),
        "{}",
        help.text
    );
    let ok = node.exec("/probe").await;
    assert_eq!(ok.status, 0);
    assert_eq!(ok.text, "probe from probe to op on n1");
    let bad = node.exec("/probe fail").await;
    assert_eq!(
        (bad.status, bad.text.as_str()),
        (STATUS_FAILED, "asked to fail")
    );
    let json = node.exec("/probe x --json").await;
    let v: serde_json::Value = serde_json::from_str(&json.text).unwrap();
    assert_eq!(v["args"], "x");
    let list = node.exec("/plugins").await;
    assert!(
        list.text.contains("probe (in-process) running"),
        "{}",
        list.text
    );
    assert!(list.text.contains("commands /probe"), "{}", list.text);
    let v: serde_json::Value =
        serde_json::from_str(&node.exec("/plugins --json").await.text).unwrap();
    assert_eq!(v[0]["name"], "probe");
    assert_eq!(v[0]["status"], "running");
    assert_eq!(v[0]["commands"], 3);
    assert_eq!(v[0]["claims"]["commands"][0], "probe");
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_command_that_never_answers_times_out() {
    let mesh = MemoryMesh::new();
    let probe = Probe::new("probe", Manifest::new().command("probe", "/probe", "tests"));
    let node = Node::start(&mesh, 1, vec![Arc::new(probe)]).await;
    running(&node, "probe").await;
    let r = node.exec("/probe slow").await;
    assert_eq!(r.status, STATUS_FAILED);
    assert!(r.text.contains("did not answer within 30s"), "{}", r.text);
    node.stop().await;
}

#[tokio::test]
async fn a_message_of_a_plugin_type_crosses_a_node_without_the_plugin() {
    let mesh = MemoryMesh::new();
    let pa = Probe::new("ping", Manifest::new().msg_type(1000));
    let pc = Probe::new("ping", Manifest::new().msg_type(1000));
    let (seen_a, seen_c) = (pa.seen.clone(), pc.seen.clone());
    let a = Node::start(&mesh, 1, vec![Arc::new(pa)]).await;
    let b = Node::start(&mesh, 2, vec![]).await;
    let c = Node::start(&mesh, 3, vec![Arc::new(pc)]).await;
    // A chain: a – b – c.
    a.net.link(&b.net, WITHIN).await.unwrap();
    b.net.link(&c.net, WITHIN).await.unwrap();
    running(&a, "ping").await;
    running(&c, "ping").await;
    let ctx = seen_a.ctx();
    ctx.broadcast(1000, &b"ping from a"[..]).unwrap();
    until_async(WITHIN, "c gets a's message", || async {
        seen_c.events().iter().any(|e| {
            matches!(e, Event::Message { msg_type: 1000, sender, payload, .. }
                if sender == a.state.node_id() && &payload[..] == b"ping from a")
        })
    })
    .await;
    // The sender is not echoed its own message; a type it does not own is
    // refused.
    assert!(seen_a.events().is_empty());
    assert!(matches!(
        ctx.broadcast(1001, &b"x"[..]),
        Err(PluginError::NotOwned { msg_type: 1001, .. })
    ));
    let info = &c.plugins.list()[0];
    assert_eq!(info.received, 1);
    assert_eq!(a.plugins.list()[0].sent, 1);
    for n in [&a, &b, &c] {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_plugin_message_crosses_a_reference_behaving_relay() {
    let mesh = MemoryMesh::new();
    let pa = Probe::new("ping", Manifest::new().msg_type(1000));
    let pc = Probe::new("ping", Manifest::new().msg_type(1000));
    let (seen_a, seen_c) = (pa.seen.clone(), pc.seen.clone());
    let a = Node::start(&mesh, 1, vec![Arc::new(pa)]).await;
    let c = Node::start(&mesh, 3, vec![Arc::new(pc)]).await;
    // r behaves like a reference node: no extension in its hello, plain
    // random fanout, no state, no plugins.
    let mut t = MemoryMesh::config(2);
    t.features.clear();
    let mut g = micelio_gossip::GossipConfig::default();
    g.broadcast_tree = false;
    let r = GossipNode::spawn_with(&mesh, MemoryMesh::identity(2), t, g)
        .await
        .unwrap();
    a.net.link(&r, WITHIN).await.unwrap();
    r.link(&c.net, WITHIN).await.unwrap();
    running(&a, "ping").await;
    running(&c, "ping").await;
    seen_a.ctx().broadcast(1000, &b"through r"[..]).unwrap();
    until_async(WITHIN, "c gets a's message through r", || async {
        seen_c.events().iter().any(|e| {
            matches!(e, Event::Message { msg_type: 1000, payload, .. } if &payload[..] == b"through r")
        })
    })
    .await;
    a.stop().await;
    c.stop().await;
    r.shutdown().await;
}

#[tokio::test]
async fn events_reach_the_plugins_that_subscribed() {
    let mesh = MemoryMesh::new();
    let all = Probe::new(
        "all",
        Manifest::new()
            .event(EventKind::Chat)
            .event(EventKind::State)
            .event(EventKind::Peers)
            .event(EventKind::Members),
    );
    let none = Probe::new("none", Manifest::new());
    let (seen, seen_none) = (all.seen.clone(), none.seen.clone());
    let a = Node::start(&mesh, 1, vec![Arc::new(all), Arc::new(none)]).await;
    let b = Node::start(&mesh, 2, vec![]).await;
    running(&a, "all").await;
    a.net.link(&b.net, WITHIN).await.unwrap();
    let b_id = *b.state.node_id();
    until_async(WITHIN, "peer and member up", || async {
        let ev = seen.events();
        ev.iter()
            .any(|e| matches!(e, Event::PeerUp { node_id, .. } if *node_id == b_id))
            && ev
                .iter()
                .any(|e| matches!(e, Event::MemberUp { node_id, .. } if *node_id == b_id))
    })
    .await;
    // Chat from a user on b, and one on a.
    let mut bob = b.party.join("bob").await.unwrap();
    bob.input("hello from b").await;
    let mut ann = a.party.join("ann").await.unwrap();
    ann.input("hello from a").await;
    b.state.set("app/x", &b"1"[..]).await.unwrap();
    until_async(WITHIN, "chat and state events", || async {
        let ev = seen.events();
        // A remote node is shown by name once its presence is known, by
        // its short id before.
        let chat = |who: &str, nodes: &[String], said: &str| {
            ev.iter().any(|e| {
                matches!(e, Event::Chat { nick, node: n, text, .. }
                if nick == who && nodes.contains(n) && text == said)
            })
        };
        chat("bob", &["n2".into(), b_id.short(8)], "hello from b")
            && chat("ann", &["n1".into()], "hello from a")
            && ev.iter().any(|e| {
                matches!(e, Event::State { key, author, deleted: false, .. }
                if key.ends_with("/app/x") && *author == b_id)
            })
    })
    .await;
    // b goes away: peer down, then the member is dead.
    b.stop().await;
    until_async(WITHIN, "peer down and member down or left", || async {
        let ev = seen.events();
        ev.iter()
            .any(|e| matches!(e, Event::PeerDown { node_id, .. } if *node_id == b_id))
            && ev.iter().any(|e| {
                matches!(e, Event::MemberLeft { node_id, .. } | Event::MemberDown { node_id, .. }
                    if *node_id == b_id)
            })
    })
    .await;
    assert!(seen_none.events().is_empty(), "no subscription, no events");
    a.stop().await;
}

#[tokio::test]
async fn a_plugin_that_stops_reading_loses_events_and_the_node_keeps_serving() {
    let mesh = MemoryMesh::new();
    let mut stuck = Probe::new("stuck", Manifest::new().event(EventKind::State));
    stuck.stuck = true;
    let ok = Probe::new("ok", Manifest::new().command("probe", "/probe", "tests"));
    let a = Node::start(&mesh, 1, vec![Arc::new(stuck), Arc::new(ok)]).await;
    running(&a, "stuck").await;
    running(&a, "ok").await;
    for i in 0..1500 {
        a.state.set(&format!("k/{i}"), &b"v"[..]).await.unwrap();
    }
    until_async(WITHIN, "drops counted", || async {
        a.plugins.list()[0].dropped > 0
    })
    .await;
    let info = &a.plugins.list()[0];
    assert!(
        info.events <= micelio_plugins::EVENT_QUEUE as u64 + 1,
        "{info:?}"
    );
    // The node and the other plugin answer at once.
    assert_eq!(a.exec("/probe").await.status, 0);
    assert!(a.exec("/plugins").await.text.contains("dropped"));
    assert!(a.exec("/get k/1499").await.text.contains('v'));
    a.stop().await;
}

#[tokio::test]
async fn claims_that_collide_with_the_node_are_refused_at_start() {
    let mesh = MemoryMesh::new();
    let who = Probe::new("who", Manifest::new().command("who", "/who", "mine"));
    let host = Node::host(vec![Arc::new(who)]);
    let Err(e) = Node::start_with(&mesh, 1, host).await else {
        panic!("a plugin took /who");
    };
    let e = e.to_string();
    assert!(e.contains("command /who") && e.contains("the node"), "{e}");
    let p = Probe::new(
        "plug",
        Manifest::new().command("plugins", "/plugins", "mine"),
    );
    let host = Node::host(vec![Arc::new(p)]);
    assert!(Node::start_with(&mesh, 2, host).await.is_err());
}

#[tokio::test]
async fn a_plugin_writes_only_its_own_keys_and_reconciles_its_prefix() {
    let mesh = MemoryMesh::new();
    let p = Probe::new("files", Manifest::new().desired_prefix("files/"));
    let seen = p.seen.clone();
    let a = Node::start(&mesh, 1, vec![Arc::new(p)]).await;
    running(&a, "files").await;
    let ctx = seen.ctx();
    let e = ctx.set("note", &b"hi"[..]).await.unwrap();
    assert_eq!(
        e.key,
        format!("{}/plugin/files/note", a.state.node_id().to_hex())
    );
    assert_eq!(ctx.own_key("note"), e.key);
    assert!(matches!(
        ctx.set("", &b""[..]).await,
        Err(PluginError::BadKey(_))
    ));
    assert!(ctx.get(&e.key).await.unwrap().is_some());
    ctx.delete("note").await.unwrap();
    assert!(ctx.get(&e.key).await.unwrap().is_none_or(|e| e.deleted));
    // The plugin is the reconciler of files/.
    a.desired
        .desire(
            &Selector::parse("*").unwrap(),
            "files/motd",
            "hello",
            Author::default(),
        )
        .await
        .unwrap();
    until_async(WITHIN, "applied and converged", || async {
        seen.applied
            .lock()
            .unwrap()
            .contains(&("files/motd".into(), "hello".into()))
            && a.desired.drift(None).await.unwrap().is_empty()
    })
    .await;
    a.stop().await;
    assert!(*seen.stopped.lock().unwrap(), "stop was called");
    assert_eq!(a.plugins.list()[0].status, PluginStatus::Stopped);
}

#[tokio::test]
async fn a_plugin_that_fails_to_start_is_shown_failed_and_the_node_goes_on() {
    let mesh = MemoryMesh::new();
    let mut p = Probe::new("broken", Manifest::new().command("broken", "/broken", "x"));
    p.fail_start = Some("no config".into());
    let a = Node::start(&mesh, 1, vec![Arc::new(p)]).await;
    until_async(WITHIN, "failed", || async {
        matches!(&a.plugins.list()[0].status, PluginStatus::Failed(why) if why == "no config")
    })
    .await;
    let r = a.exec("/broken").await;
    assert_eq!(r.status, STATUS_FAILED);
    assert!(r.text.contains("plugin broken is failed"), "{}", r.text);
    let list = a.exec("/plugins").await;
    assert!(list.text.contains("failed (no config)"), "{}", list.text);
    assert_eq!(a.exec("/who").await.status, 0);
    a.stop().await;
}
