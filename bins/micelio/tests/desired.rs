//! End-to-end tests of tags and desired state with real `micelio`
//! processes, command reconcilers (a shell script that writes files) and
//! the real OpenSSH client: in a 5-node mesh with mixed tags, a value
//! desired for a tag reaches exactly those nodes, byte for byte and never
//! executed; a failing and a hanging
//! reconciler show in `/drift` everywhere and converge once fixed; retags
//! move nodes in and out (and survive a restart); `/undesire` runs the
//! removes; with `[desired] admins` a non-admin's entry is ignored.

mod support;

use std::path::PathBuf;

use serde_json::Value;
use support::ssh::Client;
use support::{FAST, Node};

const FAST_STATE: &str = "[state]\nheartbeat_interval = \"200ms\"\nsuspect_after = \"1s\"\n\
dead_after = \"3s\"\nsync_interval = \"1s\"\n";

/// The reconciler: writes the value to `<out>/<key>` (the key's `/` made
/// `_`), removes it on remove; fails while `<out>/FAIL` exists and hangs
/// while `<out>/HANG` does.
const SCRIPT: &str = r#"out=$1
[ -e "$out/HANG" ] && sleep 60
if [ -e "$out/FAIL" ]; then echo "broken on purpose" >&2; exit 3; fi
file="$out/$(printf '%s' "$MICELIO_KEY" | tr / _)"
case "$MICELIO_ACTION" in
  apply) cat > "$file.tmp" && mv "$file.tmp" "$file" ;;
  remove) rm -f "$file" ;;
  *) exit 9 ;;
esac
"#;

struct Fleet {
    home: tempfile::TempDir,
    client: Client,
}

impl Fleet {
    fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("reconcile.sh"), SCRIPT).unwrap();
        let client = Client::new(home.path(), "op");
        Self { home, client }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.home.path().join(format!("{name}-out"))
    }

    fn data(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// Starts node `name` with `tags` and `extra` config.
    fn start(&self, name: &str, tags: &[&str], extra: &str, boot: Option<&str>) -> Node {
        let out = self.out(name);
        std::fs::create_dir_all(&out).unwrap();
        let tags: Vec<String> = tags.iter().map(|t| format!("{t:?}")).collect();
        let config = format!(
            "{FAST}{FAST_STATE}[node]\ntags = [{}]\n{extra}\n[[reconcile]]\nname = \"files\"\n\
             prefix = \"files/\"\ncommand = [\"/bin/sh\", {:?}, {:?}]\ntimeout = \"2s\"\n",
            tags.join(", "),
            self.home.path().join("reconcile.sh").display().to_string(),
            out.display().to_string(),
        );
        let path = self.home.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let data = self.data(name);
        let mut args = vec!["--listen", "127.0.0.1:0", "--name", name];
        if let Some(b) = boot {
            args.extend(["--bootstrap", b]);
        }
        let node = Node::start(self.home.path(), &data, &path, &args);
        self.client.authorize(&data);
        node
    }

    fn exec(&self, node: &Node, name: &str, command: &str) -> (String, i32) {
        let out = self.client.exec(node, &self.data(name), "op", command);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    /// Polls `command` until `done` accepts its output.
    #[track_caller]
    fn poll(&self, node: &Node, name: &str, command: &str, done: impl Fn(&str) -> bool) -> String {
        self.client
            .poll(node, &self.data(name), "op", command, done)
    }

    /// Waits until `file` under `name`'s output holds `want` (`None`:
    /// absent).
    #[track_caller]
    fn wait_file(&self, name: &str, file: &str, want: Option<&str>) {
        support::wait_file(&self.out(name).join(file), want);
    }

    #[track_caller]
    fn converged(&self, nodes: &[(&Node, &str)]) {
        for (node, name) in nodes {
            self.poll(node, name, "/drift --json", |t| {
                serde_json::from_str::<Value>(t).is_ok_and(|v| v["converged"] == true)
            });
        }
    }
}

/// Node names in `/drift --json` with the kind and message of `key`.
fn drift_of(json: &str, node: &str, key: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(json).ok()?;
    let n = v["nodes"].as_array()?.iter().find(|n| n["name"] == node)?;
    let i = n["items"].as_array()?.iter().find(|i| i["key"] == key)?;
    Some((
        i["kind"].as_str()?.to_owned(),
        i["message"].as_str()?.to_owned(),
    ))
}

#[test]
fn a_desired_value_reaches_its_tag_fails_visibly_follows_retags_and_is_removed() {
    let f = Fleet::new();
    let a = f.start("alpha", &["EU", "prod"], "", None);
    let b = f.start("beta", &["EU"], "", Some(&a.addr));
    let c = f.start("gamma", &["US"], "", Some(&a.addr));
    let d = f.start("delta", &["EU", "canary"], "", Some(&b.addr));
    let e = f.start("epsilon", &["US"], "", Some(&c.addr));
    let all = [
        (&a, "alpha"),
        (&b, "beta"),
        (&c, "gamma"),
        (&d, "delta"),
        (&e, "epsilon"),
    ];
    for (n, name) in all {
        f.poll(n, name, "/nodes --json", |t| {
            serde_json::from_str::<Value>(t)
                .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 5))
        });
    }
    // Members are listed from their first heartbeat; their tags may come a
    // moment later.
    let names_of = |json: &str| -> Vec<String> {
        serde_json::from_str::<Value>(json)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .collect()
    };
    let eu = f.poll(&c, "gamma", "/nodes EU --json", |t| names_of(t).len() == 3);
    let mut names = names_of(&eu);
    names.sort();
    assert_eq!(names, ["alpha", "beta", "delta"]);
    // Each node learns the others' tags on its own: poll epsilon too.
    let canary = f.poll(&e, "epsilon", "/nodes EU+!canary --json", |t| {
        names_of(t).len() == 2
    });
    let mut names = names_of(&canary);
    names.sort();
    assert_eq!(names, ["alpha", "beta"]);
    let (bad, st) = f.exec(&c, "gamma", "/nodes EU+pr od");
    assert_eq!(st, 2, "{bad}");
    // The binary starts a plugin host with no plugins of its own.
    let (plugins, st) = f.exec(&c, "gamma", "/plugins");
    assert_eq!((plugins.trim(), st), ("no plugins", 0));

    // Quotes, a newline, shell metacharacters: written as is, never run.
    let canary = f.home.path().join("pwned");
    let value = format!(
        "it's \"quoted\"\nsecond line $(touch {p}) `touch {p}`; touch {p} && echo *",
        p = canary.display()
    );
    let (text, st) = f.exec(&c, "gamma", &format!("/desire EU files/motd {value}"));
    assert_eq!(st, 0, "{text}");
    for name in ["alpha", "beta", "delta"] {
        f.wait_file(name, "files_motd", Some(&value));
    }
    f.converged(&all);
    assert!(!f.out("gamma").join("files_motd").exists());
    assert!(!f.out("epsilon").join("files_motd").exists());
    assert!(!canary.exists(), "the value was executed");
    let (audit, _) = f.exec(&a, "alpha", "/desired --json");
    let audit: Value = serde_json::from_str(&audit).unwrap();
    assert_eq!(audit[0]["user"], "op");
    assert_eq!(audit[0]["node_name"], "gamma");
    assert!(
        audit[0]["key_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("SHA256:")
    );

    // beta's reconciler breaks, alpha's hangs: everyone sees it.
    std::fs::write(f.out("beta").join("FAIL"), "").unwrap();
    std::fs::write(f.out("alpha").join("HANG"), "").unwrap();
    f.exec(&a, "alpha", "/desire EU files/motd v2");
    for (n, name) in all {
        f.poll(n, name, "/drift --json", |t| {
            drift_of(t, "beta", "files/motd").is_some_and(|(k, m)| {
                k == "failed" && m.contains("exit status 3") && m.contains("broken on purpose")
            }) && drift_of(t, "alpha", "files/motd")
                .is_some_and(|(k, m)| k == "failed" && m.starts_with("timed out after 2s"))
        });
    }
    let (text, _) = f.exec(&c, "gamma", "/drift");
    assert!(text.contains("beta") && text.contains("failed"), "{text}");
    // Fixed: the retries converge them.
    std::fs::remove_file(f.out("beta").join("FAIL")).unwrap();
    std::fs::remove_file(f.out("alpha").join("HANG")).unwrap();
    for name in ["alpha", "beta", "delta"] {
        f.wait_file(name, "files_motd", Some("v2"));
    }
    f.converged(&all);

    // Retag: gamma joins EU, alpha leaves it (its reconciler's remove runs).
    let (text, st) = f.exec(&c, "gamma", "/tag add EU");
    assert_eq!(st, 0, "{text}");
    let (text, st) = f.exec(&a, "alpha", "/tag del EU");
    assert_eq!(st, 0, "{text}");
    f.wait_file("gamma", "files_motd", Some("v2"));
    f.wait_file("alpha", "files_motd", None);
    f.converged(&all);
    assert!(!f.out("epsilon").join("files_motd").exists());
    let (text, st) = f.exec(&c, "gamma", "/tag add e u");
    assert_ne!(st, 0, "{text}");
    // The runtime tag survives a restart.
    c.terminate();
    let c = f.start("gamma", &["US"], "", Some(&a.addr));
    let (tags, _) = f.exec(&c, "gamma", "/tags --json");
    let tags: Value = serde_json::from_str(&tags).unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["US", "EU"]), "{tags}");

    // /undesire from a node that did not desire it.
    let (text, st) = f.exec(&b, "beta", "/undesire EU files/motd");
    assert_eq!(st, 0, "{text}");
    for name in ["beta", "gamma", "delta"] {
        f.wait_file(name, "files_motd", None);
    }
    f.converged(&[
        (&a, "alpha"),
        (&b, "beta"),
        (&c, "gamma"),
        (&d, "delta"),
        (&e, "epsilon"),
    ]);
    let (text, st) = f.exec(&b, "beta", "/undesire EU files/motd");
    assert_ne!(st, 0, "{text}");
}

#[test]
fn with_admins_a_non_admin_entry_is_ignored() {
    let f = Fleet::new();
    let a = f.start("admin", &["web"], "", None);
    let admins = format!("[desired]\nadmins = [{:?}]\n", a.node_id);
    let b = f.start("worker", &["web"], &admins, Some(&a.addr));
    f.poll(&b, "worker", "/nodes --json", |t| {
        serde_json::from_str::<Value>(t).is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 2))
    });
    // worker is not an admin: its own entry does not count, even on itself.
    f.exec(&b, "worker", "/desire * files/evil boom");
    f.poll(&b, "worker", "/stats --json", |t| {
        serde_json::from_str::<Value>(t).is_ok_and(|v| v["desired"]["untrusted"] == 1)
    });
    let (list, _) = f.exec(&b, "worker", "/desired");
    assert!(list.contains("ignored: author is not an admin"), "{list}");
    // The admin's is applied.
    f.exec(&a, "admin", "/desire web files/good yes");
    f.wait_file("worker", "files_good", Some("yes"));
    f.wait_file("admin", "files_good", Some("yes"));
    // admin has no admins list: it trusts everyone, so it applies evil.
    f.wait_file("admin", "files_evil", Some("boom"));
    assert!(!f.out("worker").join("files_evil").exists());
    // worker itself does not drift; alpha, with another admins list, does
    // in worker's eyes (it holds a value worker does not trust).
    f.poll(&b, "worker", "/drift node:worker --json", |t| {
        serde_json::from_str::<Value>(t).is_ok_and(|v| v["converged"] == true)
    });
    let (d, _) = f.exec(&b, "worker", "/drift --json");
    assert_eq!(
        drift_of(&d, "admin", "files/evil")
            .map(|(k, _)| k)
            .as_deref(),
        Some("stale")
    );
}
