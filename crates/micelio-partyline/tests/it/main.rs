//! Integration tests of micelio-partyline: nodes on the in-memory transport,
//! each with gossip and a partyline, users driven through sessions.

use std::time::Duration;

use micelio_gossip::GossipConfig;
use micelio_gossip::test_utils::GossipNode;
use micelio_partyline::{
    CommandSpec, Partyline, PartylineConfig, Reply, STATUS_UNKNOWN, STATUS_USAGE, Session,
};
use micelio_testkit::wait;
use micelio_transport::memory::MemoryMesh;

const T: Duration = Duration::from_secs(10);

/// A gossip test node with a partyline on it.
struct Node {
    party: Partyline,
    node: GossipNode,
}

impl std::ops::Deref for Node {
    type Target = GossipNode;
    fn deref(&self) -> &GossipNode {
        &self.node
    }
}

async fn node(mesh: &MemoryMesh, seed: u8, name: &str) -> Node {
    node_with(
        mesh,
        seed,
        name,
        GossipConfig::default(),
        Duration::from_millis(300),
    )
    .await
}

async fn node_with(
    mesh: &MemoryMesh,
    seed: u8,
    name: &str,
    gc: GossipConfig,
    presence: Duration,
) -> Node {
    let node = GossipNode::spawn_with(
        mesh,
        MemoryMesh::identity(seed),
        MemoryMesh::config(seed),
        gc,
    )
    .await
    .unwrap();
    let mut pc = PartylineConfig::new(name);
    pc.presence_interval = presence;
    pc.presence_debounce = Duration::from_millis(50);
    let party = Partyline::spawn(pc, node.gossip.clone(), node.peers.clone())
        .await
        .unwrap();
    Node { party, node }
}

/// Connects two nodes and waits until both gossip engines know each other.
async fn link(a: &Node, b: &Node) {
    a.link(b, T).await.unwrap();
}

async fn stop(nodes: &[&Node]) {
    for n in nodes {
        n.party.shutdown().await;
        n.shutdown().await;
    }
}

/// Reads outputs until one renders with `needle`, bounded; returns it.
async fn expect(s: &mut Session, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, s.recv()).await {
            Ok(Some(out)) => {
                let line = out.to_string();
                if line.contains(needle) {
                    return line;
                }
            }
            _ => panic!("{} never saw {needle:?}", s.nick()),
        }
    }
}

/// Everything already queued for the session.
fn drain(s: &mut Session) -> Vec<String> {
    let mut v = Vec::new();
    while let Some(o) = s.try_recv() {
        v.push(o.to_string());
    }
    v
}

/// Waits until /who on `s` shows every `nick`.
async fn who_shows(s: &mut Session, nicks: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let r = s.input("/who").await;
        if nicks.iter().all(|n| r.text.contains(n)) {
            return r.text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "who never showed {nicks:?}: {}",
            r.text
        );
        tokio::time::sleep(wait::POLL).await;
    }
}

#[tokio::test(start_paused = true)]
async fn chat_crosses_the_mesh_once_with_nick_and_node() {
    let mesh = MemoryMesh::new();
    let (a, b) = (node(&mesh, 1, "alpha").await, node(&mesh, 2, "beta").await);
    link(&a, &b).await;
    let mut alice = a.party.join("alice").await.unwrap();
    let mut bob = b.party.join("bob").await.unwrap();
    who_shows(&mut alice, &["alice", "bob"]).await;

    assert_eq!(alice.input("hello from alpha").await, Reply::default());
    let line = expect(&mut bob, "hello from alpha").await;
    assert!(line.contains("<alice@alpha>"), "{line}");
    let echo = expect(&mut alice, "hello from alpha").await;
    assert!(echo.contains("<alice@alpha>"));
    bob.input("and back from beta").await;
    let line = expect(&mut alice, "and back from beta").await;
    assert!(line.contains("<bob@beta>"), "{line}");

    // Exactly once: after a round trip of a later marker, no second copy.
    bob.input("marker").await;
    expect(&mut alice, "marker").await;
    alice.input("marker2").await;
    expect(&mut bob, "marker2").await;
    let rest: Vec<String> = drain(&mut bob)
        .into_iter()
        .chain(drain(&mut alice))
        .collect();
    assert!(
        !rest
            .iter()
            .any(|l| l.contains("hello from alpha") || l.contains("back from beta")),
        "{rest:?}"
    );
    drop((alice, bob));
    stop(&[&a, &b]).await;
}

#[tokio::test(start_paused = true)]
async fn stats_of_a_lone_node_say_the_transport_counters_are_zero() {
    let mesh = MemoryMesh::new();
    let a = node(&mesh, 9, "alone").await;
    let mut op = a.party.join("op").await.unwrap();
    let text = op.input("/stats").await.text;
    assert!(text.contains("transport: every counter is 0"), "{text}");
    drop(op);
    stop(&[&a]).await;
}

#[tokio::test(start_paused = true)]
async fn commands_behave() {
    let mesh = MemoryMesh::new();
    let (a, b) = (node(&mesh, 3, "alpha").await, node(&mesh, 4, "beta").await);
    link(&a, &b).await;
    let mut alice = a.party.join("alice").await.unwrap();
    let mut carol = a.party.join("carol").await.unwrap();
    let mut bob = b.party.join("bob").await.unwrap();
    let who = who_shows(&mut alice, &["alice", "bob", "carol"]).await;
    assert!(
        who.contains("alpha") && who.contains("beta") && who.contains("(this node)"),
        "{who}"
    );
    let json = alice.input("/who --json").await;
    let v: serde_json::Value = serde_json::from_str(&json.text).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);

    // /help lists every registered command, generated from the registry.
    let help = alice.input("/help").await;
    for c in [
        "/who", "/nick", "/me", "/msg", "/help", "/quit", "/peers", "/stats",
    ] {
        assert!(help.text.contains(c), "{c} missing from {}", help.text);
    }
    assert!(
        alice
            .input("/help msg")
            .await
            .text
            .contains("/msg <nick>[@node] <text>")
    );

    // /nick: rules, uniqueness, notice, and the new nick on the mesh.
    assert_eq!(alice.input("/nick").await.status, STATUS_USAGE);
    let taken = alice.input("/nick carol").await;
    assert_ne!(taken.status, 0);
    assert!(taken.text.contains("taken"), "{}", taken.text);
    assert_ne!(alice.input("/nick bad@name").await.status, 0);
    let ok = alice.input("/nick alicia").await;
    assert_eq!(ok.status, 0, "{}", ok.text);
    assert_eq!(alice.nick(), "alicia");
    expect(&mut carol, "alice is now known as alicia").await;
    who_shows(&mut bob, &["alicia"]).await;

    // /me, across the mesh.
    alice.input("/me waves").await;
    let line = expect(&mut bob, "waves").await;
    assert!(line.contains("* alicia@alpha waves"), "{line}");

    // /msg to a local user, then to a user on another node.
    let r = alice.input("/msg carol psst").await;
    assert_eq!(r.status, 0, "{}", r.text);
    let line = expect(&mut carol, "psst").await;
    assert!(line.contains("*alicia@alpha*"), "{line}");
    let r = alice.input("/msg bob over there").await;
    assert_eq!(r.status, 0, "{}", r.text);
    let line = expect(&mut bob, "over there").await;
    assert!(line.contains("*alicia@alpha*"), "{line}");
    assert!(
        !drain(&mut carol).iter().any(|l| l.contains("over there")),
        "private lines stay private"
    );
    assert_ne!(alice.input("/msg nobody hi").await.status, 0);
    assert_eq!(alice.input("/msg bob").await.status, STATUS_USAGE);

    // /peers and /stats.
    let peers = alice.input("/peers").await;
    assert!(peers.text.contains("1 peer(s)"), "{}", peers.text);
    let stats = alice.input("/stats --json").await;
    let v: serde_json::Value = serde_json::from_str(&stats.text).unwrap();
    assert!(v["gossip"]["originated"].as_u64().unwrap() >= 2);
    // One micelio peer: a tree link, eager or lazy.
    let tree = &v["gossip"]["tree"];
    assert_eq!(
        tree["eager_peers"].as_u64().unwrap() + tree["lazy_peers"].as_u64().unwrap(),
        1,
        "{tree}"
    );
    assert!(v["gossip"]["frames"]["data_sent"].as_u64().unwrap() >= 2);
    let text = alice.input("/stats").await.text;
    assert!(text.contains("tree: eager peers"), "{text}");

    // Unknown commands, // escapes, /quit.
    assert_eq!(alice.input("/nope").await.status, STATUS_UNKNOWN);
    alice.input("//not a command").await;
    expect(&mut carol, "/not a command").await;
    let q = alice.input("/quit").await;
    assert!(q.quit);
    drop(alice);
    expect(&mut carol, "alicia left").await;
    drop((carol, bob));
    stop(&[&a, &b]).await;
}

#[tokio::test(start_paused = true)]
async fn a_newcomer_sees_the_last_twenty_lines() {
    let mesh = MemoryMesh::new();
    let a = node(&mesh, 5, "alpha").await;
    let mut alice = a.party.join("alice").await.unwrap();
    for i in 0..25 {
        alice.input(&format!("line {i:02}")).await;
    }
    expect(&mut alice, "line 24").await;
    let mut late = a.party.join("late").await.unwrap();
    let seen = drain(&mut late);
    let lines: Vec<&String> = seen.iter().filter(|l| l.contains("line ")).collect();
    assert_eq!(lines.len(), 20, "{seen:?}");
    assert!(lines[0].contains("line 05") && lines[19].contains("line 24"));
    drop((alice, late));
    stop(&[&a]).await;
}

#[tokio::test(start_paused = true)]
async fn nicks_are_made_unique_and_commands_can_be_added() {
    let mesh = MemoryMesh::new();
    let a = node(&mesh, 6, "alpha").await;
    let s1 = a.party.join("root").await.unwrap();
    let s2 = a.party.join("root").await.unwrap();
    let s3 = a.party.join("@@").await.unwrap();
    assert_eq!(s1.nick(), "root");
    assert_eq!(s2.nick(), "root2");
    assert_eq!(s3.nick(), "user");
    a.party
        .register(CommandSpec::new(
            "echo",
            "/echo <text>",
            "say it back",
            |c| async move { Reply::ok(c.args) },
        ))
        .unwrap();
    assert!(
        a.party
            .register(CommandSpec::new("echo", "", "", |_| async {
                Reply::default()
            }))
            .is_err()
    );
    assert!(
        a.party
            .register(CommandSpec::new("Bad Name", "", "", |_| async {
                Reply::default()
            }))
            .is_err()
    );
    let mut s1 = s1;
    assert_eq!(s1.input("/echo  hi there").await.text, "hi there");
    assert!(s1.input("/help").await.text.contains("/echo <text>"));
    drop((s1, s2, s3));
    stop(&[&a]).await;
}

#[tokio::test(start_paused = true)]
async fn a_session_that_never_reads_does_not_slow_the_others() {
    let mesh = MemoryMesh::new();
    let a = node(&mesh, 7, "alpha").await;
    let _stuck = a.party.join("stuck").await.unwrap();
    let mut talker = a.party.join("talker").await.unwrap();
    // More lines than the stuck session's queue holds (256), typed at ten a
    // second so that the outbox (8/s, 256 waiting per session) takes them.
    for i in 0..400 {
        let r = talker.input(&format!("flood {i}")).await;
        assert_eq!(r.status, 0, "{}", r.text);
        // The talker keeps reading its own output.
        drain(&mut talker);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    talker.input("still here").await;
    expect(&mut talker, "still here").await;
    drop(talker);
    stop(&[&a]).await;
}

#[tokio::test(start_paused = true)]
async fn chat_crosses_the_middle_of_a_three_node_chain() {
    let mesh = MemoryMesh::new();
    let (a, b, c) = (
        node(&mesh, 8, "left").await,
        node(&mesh, 9, "middle").await,
        node(&mesh, 10, "right").await,
    );
    link(&a, &b).await;
    link(&c, &b).await;
    let mut alice = a.party.join("alice").await.unwrap();
    let mut carol = c.party.join("carol").await.unwrap();
    alice.input("hello right").await;
    let l = expect(&mut carol, "hello right").await;
    assert!(l.contains("<alice@"), "{l}");
    carol.input("hello left").await;
    expect(&mut alice, "hello left").await;
    who_shows(&mut alice, &["carol"]).await;
    let l = {
        carol.input("named now").await;
        expect(&mut alice, "named now").await
    };
    assert!(l.contains("<carol@right>"), "{l}");
    drop((alice, carol));
    stop(&[&a, &b, &c]).await;
}

#[tokio::test(start_paused = true)]
async fn quiet_sessions_run_commands_without_being_announced() {
    let mesh = MemoryMesh::new();
    let a = node(&mesh, 11, "alpha").await;
    let mut alice = a.party.join("alice").await.unwrap();
    let mut script = a.party.join_quiet("cron").await.unwrap();
    let who = script.input("/who").await;
    assert!(
        who.text.contains("alice") && !who.text.contains("cron"),
        "{}",
        who.text
    );
    script.input("from a script").await;
    expect(&mut alice, "<cron@alpha> from a script").await;
    drop(script);
    alice.input("marker").await;
    let seen: Vec<String> = {
        expect(&mut alice, "marker").await;
        drain(&mut alice)
    };
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("cron joined") || l.contains("cron left")),
        "{seen:?}"
    );
    drop(alice);
    stop(&[&a]).await;
}

/// A node for the outbox tests: default gossip settings (the mesh's rate
/// limit and the origin's pace), presence at its default rarity.
async fn paced_node(mesh: &MemoryMesh, seed: u8, name: &str) -> Node {
    node_with(
        mesh,
        seed,
        name,
        GossipConfig::default(),
        micelio_partyline::DEFAULT_PRESENCE_INTERVAL,
    )
    .await
}

/// Paced nodes `alpha` (of `seed`) and `beta` (of `seed + 1`), linked and
/// ready.
async fn paced_pair(mesh: &MemoryMesh, seed: u8) -> (Node, Node) {
    let a = paced_node(mesh, seed, "alpha").await;
    let b = paced_node(mesh, seed + 1, "beta").await;
    link(&a, &b).await;
    ready(&[&a, &b], 1).await;
    (a, b)
}

/// Waits until every node has `peers_each` peers, all known to its gossip.
async fn ready(nodes: &[&Node], peers_each: usize) {
    for n in nodes {
        assert!(n.ready(peers_each, T).await, "mesh never formed");
    }
}

/// Reads `s` until `n` chat lines containing `marker` arrived (within a
/// long virtual deadline); returns their texts in arrival order.
async fn collect(s: &mut Session, marker: &str, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, s.recv()).await {
            Ok(Some(micelio_partyline::Output::Chat(c))) if c.text.contains(marker) => {
                got.push(c.text)
            }
            Ok(Some(_)) => {}
            _ => panic!("{} got {} of {n} lines", s.nick(), got.len()),
        }
    }
    got
}

async fn rate_limited(n: &Node) -> u64 {
    n.gossip
        .stats()
        .await
        .unwrap()
        .dropped_for(micelio_gossip::DropReason::RateLimited)
}

#[tokio::test(start_paused = true)]
async fn a_thousand_lines_typed_fast_arrive_in_order() {
    let mesh = MemoryMesh::new();
    let (a, b) = paced_pair(&mesh, 20).await;
    let mut alice = a.party.join("alice").await.unwrap();
    let mut bob = b.party.join("bob").await.unwrap();
    let reader = tokio::spawn(async move { collect(&mut bob, "typed ", 1000).await });
    // Ten lines a second, faster than anyone types and than the origin's
    // pace (8/s): the queue absorbs the difference.
    for i in 0..1000 {
        let r = alice.input(&format!("typed {i:04}")).await;
        assert_eq!(r, Reply::default(), "line {i} refused: {}", r.text);
        drain(&mut alice);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = reader.await.unwrap();
    let want: Vec<String> = (0..1000).map(|i| format!("typed {i:04}")).collect();
    assert_eq!(got, want, "in order, none lost");
    assert_eq!(
        rate_limited(&b).await,
        0,
        "the receiver never rate-limited us"
    );
    drop(alice);
    stop(&[&a, &b]).await;
}

#[tokio::test(start_paused = true)]
async fn a_paste_of_a_hundred_lines_reaches_every_node_of_a_mesh_in_order() {
    let mesh = MemoryMesh::new();
    let (a, b, c) = (
        paced_node(&mesh, 22, "alpha").await,
        paced_node(&mesh, 23, "beta").await,
        paced_node(&mesh, 24, "gamma").await,
    );
    link(&a, &b).await;
    link(&b, &c).await;
    link(&a, &c).await;
    ready(&[&a, &b, &c], 2).await;
    let mut alice = a.party.join("alice").await.unwrap();
    let mut bob = b.party.join("bob").await.unwrap();
    let mut carol = c.party.join("carol").await.unwrap();
    let rb = tokio::spawn(async move { collect(&mut bob, "pasted ", 100).await });
    let rc = tokio::spawn(async move { collect(&mut carol, "pasted ", 100).await });
    // A paste: a hundred lines at once.
    for i in 0..100 {
        let r = alice.input(&format!("pasted {i:03}")).await;
        assert_eq!(r, Reply::default(), "line {i} refused: {}", r.text);
    }
    let mine = collect(&mut alice, "pasted ", 100).await;
    let want: Vec<String> = (0..100).map(|i| format!("pasted {i:03}")).collect();
    assert_eq!(mine, want);
    assert_eq!(rb.await.unwrap(), want, "beta in order");
    assert_eq!(rc.await.unwrap(), want, "gamma in order");
    for n in [&a, &b, &c] {
        assert_eq!(rate_limited(n).await, 0, "no relay dropped a line");
    }
    drop(alice);
    stop(&[&a, &b, &c]).await;
}

#[tokio::test(start_paused = true)]
async fn an_overflowing_paste_tells_the_user_and_keeps_the_rest_in_order() {
    let mesh = MemoryMesh::new();
    let (a, b) = paced_pair(&mesh, 25).await;
    let mut alice = a.party.join("alice").await.unwrap();
    let mut bob = b.party.join("bob").await.unwrap();
    let mut accepted = Vec::new();
    let mut refused = 0u64;
    for i in 0..400 {
        let text = format!("burst {i:03}");
        let r = alice.input(&text).await;
        if r.status == 0 {
            accepted.push(text);
        } else {
            assert!(r.text.contains("line not sent"), "{}", r.text);
            refused += 1;
        }
        drain(&mut alice);
    }
    assert!(refused > 100, "the queue is bounded: {refused} refused");
    assert!(accepted.len() >= 256, "{}", accepted.len());
    let got = collect(&mut bob, "burst ", accepted.len()).await;
    assert_eq!(got, accepted, "what was accepted arrives, in order");
    assert_eq!(a.party.stats().await.unwrap().lines_refused, refused);
    // The hub kept to the pace: gossip's shared queue never filled.
    assert_eq!(a.gossip.stats().await.unwrap().origin_refused, 0);
    // Once the queue has drained, lines go out again.
    assert_eq!(alice.input("after the burst").await, Reply::default());
    expect(&mut bob, "after the burst").await;
    drop(alice);
    stop(&[&a, &b]).await;
}

#[tokio::test(start_paused = true)]
async fn stats_show_the_drops_of_a_subscriber_that_falls_behind() {
    let mesh = MemoryMesh::new();
    let mut gc = GossipConfig::default();
    gc.rate_per_sec = 1_000_000;
    gc.rate_burst = 1_000_000;
    let presence = Duration::from_millis(300);
    let a = node_with(&mesh, 30, "alpha", gc.clone(), presence).await;
    let b = node_with(&mesh, 31, "beta", gc, presence).await;
    link(&a, &b).await;
    // The partyline subscribed to chat, presence and direct lines (1-3).
    let _stuck = b
        .gossip
        .subscribe(micelio_wire::MsgType::Chat)
        .await
        .unwrap();
    for _ in 0..1100 {
        micelio_partyline::chat::say(&a.gossip, "x", "l")
            .await
            .unwrap();
    }
    let stuck = wait::until_some_async(T, "the stuck subscriber's drops", || async {
        let s = b.gossip.stats().await.unwrap();
        let st = s.subscribers.iter().find(|s| s.id == 4).cloned().unwrap();
        (st.dropped > 0 && s.delivered >= 1100 - 20).then_some(st)
    })
    .await;
    assert_eq!(stuck.delivered, 1024);
    let mut op = b.party.join("op").await.unwrap();
    let text = op.input("/stats").await.text;
    assert!(
        text.contains(&format!(
            "subscriber #4 (chat(3)): delivered 1024 dropped {}",
            stuck.dropped
        )),
        "{text}"
    );
    let json = op.input("/stats --json").await.text;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["gossip"]["subscriber_drops"].as_u64(),
        Some(stuck.dropped)
    );
    assert!(v["partyline"]["sessions"].as_u64().unwrap() >= 1);
    drop(op);
    stop(&[&a, &b]).await;
}
