//! External plugins: a Python program (`tests/plugins/probe.py`, built on
//! the helper in `examples/plugins/python`) started, spoken to and
//! supervised by the node.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use micelio_plugins::external::{Allow, ExternalConfig, ExternalPlugin};
use micelio_plugins::{Plugin, PluginError, PluginStatus};
use micelio_state::desired::Author;
use micelio_state::selector::Selector;
use micelio_testkit::wait::until_async;
use micelio_transport::memory::MemoryMesh;
use serde_json::Value;

use super::{Node, WITHIN, running};

fn probe_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugins/probe.py")
}

fn config(dir: &Path) -> ExternalConfig {
    let mut c = ExternalConfig::new("probe", "python3");
    c.args = vec![probe_script().display().to_string()];
    c.env.insert("PROBE_DIR".into(), dir.display().to_string());
    c
}

async fn launch(c: ExternalConfig, seed: u8) -> Result<Arc<dyn Plugin>, PluginError> {
    let id = MemoryMesh::identity(seed).node_id().to_hex();
    let p: Arc<dyn Plugin> = ExternalPlugin::launch(c, &id, &format!("n{seed}")).await?;
    Ok(p)
}

/// The events the probe wrote down.
fn events(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The error of a launch that must fail.
fn refused(r: Result<Arc<dyn Plugin>, PluginError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(p) => panic!("{} launched", p.name()),
    }
}

fn health(node: &Node) -> micelio_plugins::Health {
    node.plugins.list()[0].health.clone().expect("external")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_plugin_answers_commands_uses_the_state_gets_events_and_reconciles() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mesh = MemoryMesh::new();
    let pa = launch(config(da.path()), 1).await.unwrap();
    let pb = launch(config(db.path()), 2).await.unwrap();
    let a = Node::start(&mesh, 1, vec![pa]).await;
    let b = Node::start(&mesh, 2, vec![pb]).await;
    a.net.link(&b.net, WITHIN).await.unwrap();
    running(&a, "probe").await;
    running(&b, "probe").await;

    let r = a.exec("/probe").await;
    assert_eq!((r.text.as_str(), r.status), ("probe on n1 from op", 0));
    let r = a.exec("/probe fail").await;
    assert_eq!((r.text.as_str(), r.status), ("asked to fail", 1));
    assert!(a.exec("/help").await.text.contains("/probe [what]"));
    // State: written under its prefix, read back through the node.
    let key = a.exec("/probe set note hello there").await.text;
    assert_eq!(
        key,
        format!("{}/plugin/probe/note", a.state.node_id().to_hex())
    );
    assert_eq!(
        a.exec(&format!("/probe get {key}")).await.text,
        "hello there"
    );
    let prefix = format!("{}/plugin/probe/", a.state.node_id().to_hex());
    assert_eq!(a.exec(&format!("/probe scan {prefix}")).await.text, key);
    assert_eq!(a.exec("/probe del note").await.text, key);
    assert_eq!(a.exec(&format!("/probe get {key}")).await.text, "none");
    assert_eq!(
        a.exec("/probe log a line for the node").await.text,
        "logged"
    );
    // A log notification is taken, not counted as a bad line.
    assert_eq!(health(&a).bad_lines, 0);
    let r = a.exec("/probe no.such.method").await;
    assert!(r.text.contains("-32601"), "{}", r.text);
    // /plugins shows the process.
    let list = a.exec("/plugins").await.text;
    assert!(list.contains("probe (external) running"), "{list}");
    assert!(list.contains("process: running (pid"), "{list}");
    let v: Value = serde_json::from_str(&a.exec("/plugins --json").await.text).unwrap();
    assert_eq!(v[0]["kind"], "external");
    assert!(v[0]["pid"].as_u64().is_some());
    assert_eq!(v[0]["claims"]["msg_types"][0], 1100);

    // A message of its type, from a's program to b's.
    assert_eq!(a.exec("/probe broadcast ping from a").await.text, "sent");
    until_async(WITHIN, "b's program gets the message", || async {
        events(db.path()).iter().any(|e| {
            e["seen"] == "message"
                && e["text"] == "ping from a"
                && e["sender"] == a.state.node_id().to_hex()
        })
    })
    .await;
    // The members, through the node.
    until_async(WITHIN, "the program lists both members", || async {
        a.exec("/probe members").await.text == "n1,n2"
    })
    .await;
    // Chat, members and peers.
    let mut ann = b.party.join("ann").await.unwrap();
    ann.input("hi all").await;
    until_async(
        WITHIN,
        "a's program gets the chat line and b's member event",
        || async {
            let ev = events(da.path());
            ev.iter()
                .any(|e| e["seen"] == "chat" && e["nick"] == "ann" && e["text"] == "hi all")
                && ev
                    .iter()
                    .any(|e| e["seen"] == "member_up" && e["node_id"] == b.state.node_id().to_hex())
                && ev
                    .iter()
                    .any(|e| e["seen"] == "peer_up" && e["node_id"] == b.state.node_id().to_hex())
        },
    )
    .await;
    // Desired state: the program is the reconciler of files/.
    a.desired
        .desire(
            &Selector::parse("*").unwrap(),
            "files/motd",
            "it's \"quoted\"\n$(x)",
            Author::default(),
        )
        .await
        .unwrap();
    until_async(WITHIN, "applied on both and converged", || async {
        let on = |d: &Path| std::fs::read_to_string(d.join("files_motd")).ok();
        on(da.path()).as_deref() == Some("it's \"quoted\"\n$(x)")
            && on(db.path()).is_some()
            && a.desired.drift(None).await.unwrap().is_empty()
    })
    .await;
    a.stop().await;
    b.stop().await;
    assert!(
        events(da.path()).iter().any(|e| e["seen"] == "shutdown"),
        "told to shut down"
    );
    assert_eq!(a.plugins.list()[0].status, PluginStatus::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_plugin_is_restarted_and_gets_events_again() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = MemoryMesh::new();
    let p = launch(config(dir.path()), 1).await.unwrap();
    let a = Node::start(&mesh, 1, vec![p]).await;
    running(&a, "probe").await;
    let pid = health(&a).pid;
    let r = a.exec("/probe crash").await;
    assert_ne!(r.status, 0, "{}", r.text);
    // For a second at least (the first restart delay) it is restarting.
    until_async(WITHIN, "shown restarting", || async {
        let v: Value = serde_json::from_str(&a.exec("/plugins --json").await.text).unwrap();
        v[0]["status"] == "restarting"
    })
    .await;
    assert!(a.exec("/probe").await.text.contains("restarting"));
    until_async(WITHIN, "restarted", || async {
        let h = health(&a);
        h.state == "running" && h.restarts == 1 && h.pid.is_some() && h.pid != pid
    })
    .await;
    assert_eq!(a.exec("/probe").await.text, "probe on n1 from op");
    // Events reach the new process.
    let mut s = a.party.join("bob").await.unwrap();
    s.input("after the crash").await;
    until_async(WITHIN, "chat after restart", || async {
        events(dir.path())
            .iter()
            .any(|e| e["seen"] == "chat" && e["text"] == "after the crash")
    })
    .await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_keeps_crashing_is_given_up_after_max_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = MemoryMesh::new();
    let mut c = config(dir.path());
    c.max_restarts = 1;
    let a = Node::start(&mesh, 1, vec![launch(c, 1).await.unwrap()]).await;
    running(&a, "probe").await;
    a.exec("/probe crash-forever").await;
    until_async(WITHIN, "failed", || async {
        matches!(&a.plugins.list()[0].status, PluginStatus::Failed(why) if why.contains("in a row"))
    })
    .await;
    let r = a.exec("/probe").await;
    assert_ne!(r.status, 0);
    assert!(a.exec("/plugins").await.text.contains("failed"));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_floods_and_a_deaf_plugin_are_counted_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = MemoryMesh::new();
    let a = Node::start(&mesh, 1, vec![launch(config(dir.path()), 1).await.unwrap()]).await;
    running(&a, "probe").await;
    assert_eq!(a.exec("/probe garbage").await.text, "sent garbage");
    until_async(WITHIN, "bad lines counted", || async {
        health(&a).bad_lines >= 4
    })
    .await;
    let r = a.exec("/probe flood").await.text;
    let throttled: u64 = r.trim_start_matches("throttled ").parse().unwrap();
    assert!(throttled > 0, "{r}");
    assert_eq!(health(&a).throttled, throttled);
    // It answers, then stops reading: lines for it are dropped, counted.
    assert_eq!(a.exec("/probe deaf").await.text, "going deaf");
    // Each state change is an event for it (it subscribed to state).
    let filler = "x".repeat(1000);
    for i in 0..3000 {
        a.state
            .set(&format!("fill/{i}"), filler.clone())
            .await
            .unwrap();
    }
    until_async(WITHIN, "lines for the deaf plugin dropped", || async {
        health(&a).out_dropped > 0
    })
    .await;
    // The node answers at once.
    assert_eq!(a.exec("/who").await.status, 0);
    assert!(
        a.exec("/plugins")
            .await
            .text
            .contains("lines it did not read")
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_ignores_shutdown_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = MemoryMesh::new();
    let mut c = config(dir.path());
    c.env.insert("PROBE_IGNORE_SHUTDOWN".into(), "1".into());
    let p = launch(c, 1).await.unwrap();
    let a = Node::start(&mesh, 1, vec![p.clone()]).await;
    running(&a, "probe").await;
    let pid = p.health().and_then(|h| h.pid).unwrap();
    let t = std::time::Instant::now();
    a.stop().await;
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(events(dir.path()).iter().any(|e| e["seen"] == "shutdown"));
    until_async(WITHIN, "process gone", || async {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    })
    .await;
}

#[tokio::test]
async fn bad_programs_and_claims_beyond_the_allow_list_are_refused_at_launch() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.allow = Allow {
        commands: Some(vec!["other".into()]),
        ..Allow::default()
    };
    let e = refused(launch(c, 1).await);
    assert!(e.contains("allow list") && e.contains("probe"), "{e}");
    let e = refused(launch(ExternalConfig::new("nope", "/nonexistent/plugin"), 1).await);
    assert!(e.contains("cannot start /nonexistent/plugin"), "{e}");
    // A program that never answers the handshake.
    let mut c = ExternalConfig::new("mute", "sleep");
    c.args = vec!["60".into()];
    c.init_timeout = Duration::from_millis(300);
    let e = refused(launch(c, 1).await);
    assert!(
        e.contains("initialize failed") && e.contains("no answer"),
        "{e}"
    );
    // One that answers with another protocol version.
    let mut c = ExternalConfig::new("old", "sh");
    c.args = vec![
        "-c".into(),
        r#"read l; echo '{"jsonrpc":"2.0","id":1,"result":{"protocol_version":99}}'; sleep 5"#
            .into(),
    ];
    let e = refused(launch(c, 1).await);
    assert!(e.contains("protocol version Some(99)"), "{e}");
}
