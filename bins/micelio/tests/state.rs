//! End-to-end tests of the replicated state with real `micelio` processes
//! and the real OpenSSH client: `/set` on one node and `/get` on another,
//! membership (alive, dead after `kill -9`, alive again, left after a clean
//! stop), `kill -9` in the middle of a stream of acknowledged writes, and a
//! five-node mesh split 2/3 in network namespaces, written to on both
//! sides and healed.

// The tests print the bounds they measured, for whoever reads the log.
#![allow(clippy::print_stderr)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::ssh::{Client, Tty};
use support::{FAST, Node, WAIT};

/// Fast liveness and sync, so that the tests run in seconds.
const FAST_STATE: &str = "[state]\nheartbeat_interval = \"200ms\"\nsuspect_after = \"800ms\"\n\
dead_after = \"2s\"\nsync_interval = \"1s\"\n";

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("config.toml");
    let mut text = FAST.to_owned();
    text.push_str(FAST_STATE);
    std::fs::write(&path, text).unwrap();
    path
}

/// Polls `command` by exec on `node` until `done` accepts its output.
#[track_caller]
fn poll(
    client: &Client,
    node: &Node,
    data: &Path,
    command: &str,
    done: impl Fn(&str, i32) -> bool,
) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = client.exec(node, data, "op", command);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if done(&text, out.status.code().unwrap_or(-1)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{command} on {} never gave the expected answer; last: {text}",
            node.node_id
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The liveness of `id` in `/nodes --json` output.
fn liveness_of(nodes_json: &str, id: &str) -> Option<String> {
    let v: Value = serde_json::from_str(nodes_json).ok()?;
    v.as_array()?
        .iter()
        .find(|m| m["node_id"] == id)
        .and_then(|m| m["liveness"].as_str().map(str::to_owned))
}

/// Waits until `/nodes` on `node` shows `id` as `want`; returns how long
/// that took.
#[track_caller]
fn wait_liveness(client: &Client, node: &Node, data: &Path, id: &str, want: &str) -> Duration {
    let start = Instant::now();
    poll(client, node, data, "/nodes --json", |t, _| {
        liveness_of(t, id).as_deref() == Some(want)
    });
    start.elapsed()
}

fn start(home: &Path, data: &Path, config: &Path, name: &str, bootstrap: Option<&str>) -> Node {
    let mut args = vec!["--listen", "127.0.0.1:0", "--name", name];
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b]);
    }
    Node::start(home, data, config, &args)
}

#[test]
fn a_value_set_on_one_node_is_read_on_another_and_members_come_and_go() {
    let home = tempfile::tempdir().unwrap();
    let config = write_config(home.path());
    let dirs: Vec<PathBuf> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|n| home.path().join(n))
        .collect();
    let a = start(home.path(), &dirs[0], &config, "alpha", None);
    let b = start(home.path(), &dirs[1], &config, "beta", Some(&a.addr));
    let mut c = start(home.path(), &dirs[2], &config, "gamma", Some(&b.addr));
    let client = Client::new(home.path(), "op");
    for d in &dirs {
        client.authorize(d);
    }

    // /set on alpha; gamma (which alpha may not be connected to) reads it.
    let out = client.exec(&a, &dirs[0], "op", "/set color blue");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{}/color = blue (ts ", a.node_id)),
        "{text}"
    );
    let key = format!("{}/color", a.node_id);
    let got = poll(&client, &c, &dirs[2], &format!("/get {key}"), |t, st| {
        st == 0 && t.trim() == "blue"
    });
    assert_eq!(got.trim(), "blue");
    // A bare key is in the reading node's own namespace.
    let out = client.exec(&c, &dirs[2], "op", "/get color");
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not found"));
    // Nobody writes in another node's namespace.
    let out = client.exec(&c, &dirs[2], "op", &format!("/set {key} red"));
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("own namespace"));
    // --json, and values from the mesh printed safely.
    let out = client.exec(&c, &dirs[2], "op", &format!("/get {key} --json"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["value"], "blue");
    assert_eq!(v["author"], a.node_id.as_str());
    client.exec(&a, &dirs[0], "op", "/set evil a\x1b[2Jb\x07c");
    let shown = poll(
        &client,
        &b,
        &dirs[1],
        &format!("/get {}/evil", a.node_id),
        |_, st| st == 0,
    );
    assert_eq!(shown.trim(), "a[2Jbc");
    assert!(!shown.contains('\x1b'));
    let listed = poll(
        &client,
        &c,
        &dirs[2],
        &format!("/state {}/", a.node_id),
        |t, _| t.contains("evil"),
    );
    assert!(listed.contains("color = blue"), "{listed}");
    // /del reaches the others.
    let out = client.exec(&a, &dirs[0], "op", "/del color");
    assert!(out.status.success());
    poll(&client, &c, &dirs[2], &format!("/get {key}"), |t, st| {
        st != 0 && t.contains("not found")
    });

    // Every node lists every member, alive, with its version and address.
    // (Heartbeats may arrive before the names, which the next sync brings.)
    let named = |t: &str, id: &str, name: &str| {
        serde_json::from_str::<Value>(t).ok().is_some_and(|v| {
            v.as_array().is_some_and(|l| {
                l.iter()
                    .any(|m| m["node_id"] == id && m["name"] == name && m["liveness"] == "alive")
            })
        })
    };
    let nodes = poll(&client, &c, &dirs[2], "/nodes --json", |t, _| {
        named(t, &a.node_id, "alpha")
            && named(t, &b.node_id, "beta")
            && named(t, &c.node_id, "gamma")
    });
    let v: Value = serde_json::from_str(&nodes).unwrap();
    let alpha = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == a.node_id.as_str())
        .unwrap();
    assert_eq!(alpha["name"], "alpha");
    assert_eq!(alpha["addr"], a.addr.as_str());
    assert_eq!(alpha["version"], env!("CARGO_PKG_VERSION"));
    let text = client.exec(&a, &dirs[0], "op", "/nodes");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("3 node(s)") && text.contains("gamma"),
        "{text}"
    );

    // kill -9 gamma: alpha and beta show it dead within the bound (2 s
    // after its last heartbeat, checked every heartbeat interval).
    c.process.signal("KILL");
    c.process.wait_exit(WAIT);
    let gamma = c.node_id.clone();
    let t_a = wait_liveness(&client, &a, &dirs[0], &gamma, "dead");
    let t_b = wait_liveness(&client, &b, &dirs[1], &gamma, "dead");
    eprintln!("gamma dead on alpha after {t_a:?}, on beta after {t_b:?} (bound 2 s + checks)");
    assert!(t_a < Duration::from_secs(8), "dead after {t_a:?}");
    // Restarted, it comes back alive on both.
    c = start(home.path(), &dirs[2], &config, "gamma", Some(&b.addr));
    assert_eq!(c.node_id, gamma);
    wait_liveness(&client, &a, &dirs[0], &gamma, "alive");
    wait_liveness(&client, &b, &dirs[1], &gamma, "alive");
    // Stopped cleanly, it is left at once, and stays left (not dead).
    let stopped = Instant::now();
    c.terminate();
    let t = wait_liveness(&client, &a, &dirs[0], &gamma, "left");
    assert!(t < Duration::from_secs(2), "left after {t:?}");
    wait_liveness(&client, &b, &dirs[1], &gamma, "left");
    while stopped.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(200));
    }
    let out = client.exec(&a, &dirs[0], "op", "/nodes --json");
    assert_eq!(
        liveness_of(&String::from_utf8_lossy(&out.stdout), &gamma).as_deref(),
        Some("left")
    );

    // /stats shows the state section.
    let out = client.exec(&a, &dirs[0], "op", "/stats --json");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["state"]["entries"].as_u64().unwrap() > 5, "{v}");
    assert!(v["state"]["writes"].as_u64().unwrap() >= 3, "{v}");
    assert_eq!(v["state"]["members"]["left"], 1, "{v}");
    let out = client.exec(&a, &dirs[0], "op", "/stats");
    assert!(String::from_utf8_lossy(&out.stdout).contains("state: entries"));
}

#[test]
fn kill_9_during_acknowledged_writes_loses_none_and_the_clock_never_goes_back() {
    let home = tempfile::tempdir().unwrap();
    let config = write_config(home.path());
    let data = home.path().join("node");
    let client = Client::new(home.path(), "op");
    // Every acknowledged write: key → timestamp.
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut highest = 0u64;
    for round in 0..20 {
        let mut node = start(home.path(), &data, &config, "crashy", None);
        if round == 0 {
            client.authorize(&data);
        }
        // Everything acknowledged before is there, with its timestamp.
        let out = client.exec(&node, &data, "op", "/state kill/ --json");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let held: BTreeMap<String, u64> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let key = e["key"].as_str().unwrap();
                let sub = key.split_once('/').unwrap().1.to_owned();
                (sub, e["ts"].as_u64().unwrap())
            })
            .collect();
        for (k, ts) in &acked {
            assert!(
                held.get(k).is_some_and(|h| h >= ts),
                "round {round}: acknowledged {k} (ts {ts}) lost; held {:?}",
                held.get(k)
            );
        }
        // A stream of writes, killed once a few are acknowledged.
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = {
            let client = client.clone();
            let ssh_addr = node.ssh.clone();
            let data = data.clone();
            thread::spawn(move || {
                for i in 0.. {
                    let command = format!("/set kill/{round}-{i} v{i}");
                    let out = client.exec_at(&ssh_addr, None, &data, "op", &command);
                    if !out.status.success() {
                        break;
                    }
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    if tx.send((format!("kill/{round}-{i}"), text)).is_err() {
                        break;
                    }
                }
            })
        };
        let mut this_round = 0;
        while this_round < 3 {
            let (key, text) = rx.recv_timeout(WAIT).expect("writes are acknowledged");
            let ts = ack_ts(&text);
            assert!(
                ts > highest,
                "round {round}: {key} got ts {ts}, not above {highest}"
            );
            highest = ts;
            acked.insert(key, ts);
            this_round += 1;
        }
        node.process.signal("KILL");
        node.process.wait_exit(WAIT);
        writer.join().unwrap();
        // Writes acknowledged while the kill was under way count too.
        while let Ok((key, text)) = rx.try_recv() {
            let ts = ack_ts(&text);
            assert!(ts > highest);
            highest = ts;
            acked.insert(key, ts);
        }
    }
    assert!(acked.len() >= 60);
}

/// The timestamp in a `/set` acknowledgement (`key = value (ts N)`).
fn ack_ts(text: &str) -> u64 {
    text.rsplit_once("(ts ")
        .and_then(|(_, r)| r.trim().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("not an acknowledgement: {text}"))
}

// ---- five nodes split 2/3 in network namespaces ----

/// Network namespaces joined by a bridge in a namespace of their own; the
/// split moves some nodes' ports to a second bridge. Removed on drop.
struct Net {
    prefix: String,
    n: usize,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    /// `n` hosts 10.77.0.1 … 10.77.0.n on one bridge.
    fn new(n: usize) -> Net {
        let prefix = format!("mcl{}", std::process::id());
        let net = Net {
            prefix: prefix.clone(),
            n,
        };
        let hub = net.hub();
        ip(&["netns", "add", &hub]);
        for br in ["br0", "br1"] {
            ip(&["-n", &hub, "link", "add", br, "type", "bridge"]);
            ip(&["-n", &hub, "link", "set", br, "up"]);
        }
        for i in 0..n {
            let ns = net.host(i);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let port = format!("p{i}");
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &hub,
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.0.{}/24", i + 1),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]);
        }
        net
    }

    fn hub(&self) -> String {
        format!("{}hub", self.prefix)
    }

    fn host(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    /// Puts host `i`'s port on bridge `br` (`br0` or `br1`).
    fn attach(&self, i: usize, br: &str) {
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            &format!("p{i}"),
            "master",
            br,
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.n {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.host(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub()])
            .status();
    }
}

/// Whether this process may create network namespaces (root with `ip`).
fn can_make_namespaces() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    root && Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The user entries of `/state <writer>/split/ --json` on a node.
fn split_entries(client: &Client, node: &Node, data: &Path, writer: &str) -> Vec<(String, u64)> {
    let out = client.exec(node, data, "op", &format!("/state {writer}/split/ --json"));
    let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
        return Vec::new();
    };
    v["entries"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    (
                        e["key"].as_str().unwrap_or_default().to_owned(),
                        e["ts"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `count` keys `split/<tag>-<i>` through one plain session, in
/// batches, and waits for every acknowledgement.
fn write_many(
    client: &Client,
    ssh: &str,
    netns: Option<&str>,
    data: &Path,
    tag: &str,
    count: usize,
) {
    let mut session = Tty::open_plain_at(client, ssh, netns, data, "writer");
    let mut sent = 0;
    while sent < count {
        let batch = (count - sent).min(100);
        let lines: String = (sent..sent + batch)
            .map(|i| format!("/set split/{tag}-{i:04} value {i} from {tag}\n"))
            .collect();
        session.send(lines.as_bytes());
        sent += batch;
        let deadline = Instant::now() + WAIT;
        while session.count("(ts ") < sent {
            assert!(
                Instant::now() < deadline,
                "{tag}: {} of {sent} writes acknowledged:\n{}",
                session.count("(ts "),
                session.text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_five_node_mesh_split_two_three_converges_after_the_heal() {
    if !can_make_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2 to make network namespaces");
        return;
    }
    let net = Net::new(5);
    let home = tempfile::tempdir().unwrap();
    let config = write_config(home.path());
    let client = Client::new(home.path(), "op");
    let mut nodes: Vec<(Node, PathBuf)> = Vec::new();
    for i in 0..5 {
        let data = home.path().join(format!("n{i}"));
        let listen = format!("10.77.0.{}:7000", i + 1);
        let name = format!("n{i}");
        let mut args = vec!["--listen", listen.as_str(), "--name", name.as_str()];
        let boot;
        if i > 0 {
            boot = "10.77.0.1:7000".to_owned();
            args.extend(["--bootstrap", boot.as_str()]);
        }
        let node = Node::start_in_netns(&net.host(i), home.path(), &data, &config, &args);
        client.authorize(&data);
        nodes.push((node, data));
    }
    let ids: Vec<String> = nodes.iter().map(|(n, _)| n.node_id.clone()).collect();
    // Everyone sees everyone alive.
    for (node, data) in &nodes {
        poll(&client, node, data, "/nodes --json", |t, _| {
            ids.iter()
                .all(|id| liveness_of(t, id).as_deref() == Some("alive"))
        });
    }

    // The split: n0, n1 | n2, n3, n4. Each side sees the other dead.
    net.attach(0, "br1");
    net.attach(1, "br1");
    poll(
        &client,
        &nodes[0].0,
        &nodes[0].1,
        "/nodes --json",
        |t, _| {
            ids[2..]
                .iter()
                .all(|id| liveness_of(t, id).as_deref() == Some("dead"))
        },
    );
    poll(
        &client,
        &nodes[4].0,
        &nodes[4].1,
        "/nodes --json",
        |t, _| {
            ids[..2]
                .iter()
                .all(|id| liveness_of(t, id).as_deref() == Some("dead"))
        },
    );

    // 1,000 writes on each side: 500 by each of n0, n1; 334 + 333 + 333.
    let share = [500, 500, 334, 333, 333];
    thread::scope(|s| {
        for (i, (node, data)) in nodes.iter().enumerate() {
            let client = &client;
            let (ssh, netns) = (node.ssh.clone(), node.netns.clone());
            s.spawn(move || {
                write_many(
                    client,
                    &ssh,
                    netns.as_deref(),
                    data,
                    &format!("n{i}"),
                    share[i],
                );
            });
        }
    });
    // Neither side has the other's writes.
    assert!(split_entries(&client, &nodes[0].0, &nodes[0].1, &ids[2]).is_empty());
    assert!(split_entries(&client, &nodes[2].0, &nodes[2].1, &ids[0]).is_empty());

    // Heal, and time how long until every node holds all 2,000.
    net.attach(0, "br0");
    net.attach(1, "br0");
    let healed = Instant::now();
    let mut reference: Option<Vec<Vec<(String, u64)>>> = None;
    for (node, data) in &nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let held: Vec<Vec<(String, u64)>> = ids
                .iter()
                .map(|w| split_entries(&client, node, data, w))
                .collect();
            let counts: Vec<usize> = held.iter().map(Vec::len).collect();
            if counts == share {
                match &reference {
                    Some(r) => assert_eq!(r, &held, "{} holds other versions", node.node_id),
                    None => reference = Some(held),
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} holds {counts:?} after the heal, wants {share:?}",
                node.node_id
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
    eprintln!(
        "all five nodes hold the same 2000 entries {:?} after the heal",
        healed.elapsed()
    );
    drop(nodes);
}
