//! Three `micelio-uptime-node` processes on 127.0.0.1 (c bootstraps from
//! b, b from a; discovery may add links), asked with the real OpenSSH
//! client: `/uptime` gets the answers of all three over the plugin's
//! message type, with exit status 0; with c gone, it names who answered
//! (and exits 1 while c still counts as alive).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use micelio_testkit::process::{Process, run};

const WAIT: Duration = Duration::from_secs(30);

struct Node {
    process: Process,
    peers: String,
    ssh: String,
}

fn start(dir: &Path, name: &str, boot: Option<&str>, public_key: &str) -> Node {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("authorized_keys"), public_key).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_micelio-uptime-node"));
    cmd.arg("--data-dir").arg(&data).args(["--name", name]);
    if let Some(b) = boot {
        cmd.args(["--bootstrap", b]);
    }
    let mut process = Process::spawn(cmd, name);
    let word = |p: &mut Process, what: &str| {
        let line = p.wait_for(WAIT, |l| l.starts_with(what));
        line.split_whitespace().nth(1).unwrap().to_owned()
    };
    let peers = word(&mut process, "peers ");
    let ssh = word(&mut process, "ssh ");
    Node {
        process,
        peers,
        ssh,
    }
}

fn ssh(key: &Path, node: &Node, command: &str) -> (String, i32) {
    let cmd = micelio_testkit::ssh::exec_command(key, &node.ssh, "op", command).unwrap();
    let out = run(cmd, WAIT);
    (out.stdout, out.status.code().unwrap_or(-1))
}

#[test]
fn uptime_asks_every_node_of_the_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let a = start(dir.path(), "alpha", None, &public);
    let b = start(dir.path(), "beta", Some(&a.peers), &public);
    let c = start(dir.path(), "gamma", Some(&b.peers), &public);
    // Until a node's membership has all three, /uptime waits for fewer:
    // each node learns the members on its own.
    let all_three = |node: &Node| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (text, status) = ssh(&key, node, "/uptime 5");
            if status == 0 && text.contains("3 of 3 alive nodes answered") {
                return text;
            }
            assert!(std::time::Instant::now() < deadline, "last: {text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let text = all_three(&a);
    all_three(&c);
    for name in ["alpha", "beta", "gamma"] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let (help, _) = ssh(&key, &b, "/help");
    assert!(help.contains("/uptime [seconds]"), "{help}");
    let (json, status) = ssh(&key, &c, "/uptime --json");
    assert_eq!(status, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["answers"].as_array().unwrap().len(), 3);
    let (bad, status) = ssh(&key, &a, "/uptime forever");
    assert_eq!(status, 2, "{bad}");
    // c stops: while a still counts it alive, /uptime says who answered
    // and fails.
    let (st, _) = c.process.terminate(WAIT);
    assert!(st.success());
    let (text, status) = ssh(&key, &a, "/uptime 1");
    if text.contains("of 3 alive") {
        assert_eq!(status, 1, "{text}");
        assert!(text.contains("2 of 3 alive nodes answered"), "{text}");
    } else {
        // It already knew c had left.
        assert_eq!(status, 0, "{text}");
        assert!(text.contains("2 of 2 alive nodes answered"), "{text}");
    }
    drop(b);
    drop(a);
}
