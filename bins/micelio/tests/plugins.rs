//! End-to-end tests of external plugins with real `micelio` processes and
//! the real OpenSSH client: across a 3-node mesh, the Python files
//! reconciler of `examples/plugins/python` applies a value desired for a
//! tag on exactly those nodes, and the shell plugin of `docs/plugins.md`,
//! taken from the page as it is written, answers its command.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::ssh::Client;
use support::{FAST, Node};

const FAST_STATE: &str = "[state]\nheartbeat_interval = \"200ms\"\nsuspect_after = \"1s\"\n\
dead_after = \"3s\"\nsync_interval = \"1s\"\n";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shell plugin of docs/plugins.md ("Writing one"), as printed there.
fn doc_shell_plugin() -> String {
    let doc = std::fs::read_to_string(repo().join("docs/plugins.md")).unwrap();
    let at = doc.find("### Writing one").unwrap();
    let rest = &doc[at..];
    let start = rest.find("```sh\n").unwrap() + "```sh\n".len();
    let end = rest[start..].find("```").unwrap();
    rest[start..start + end].to_owned()
}

struct Fleet {
    home: tempfile::TempDir,
    client: Client,
}

impl Fleet {
    fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("hello.sh"), doc_shell_plugin()).unwrap();
        let client = Client::new(home.path(), "op");
        Self { home, client }
    }

    fn root(&self, name: &str) -> PathBuf {
        self.home.path().join(format!("{name}-files"))
    }

    fn data(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn start(&self, name: &str, tags: &[&str], boot: Option<&str>) -> Node {
        let tags: Vec<String> = tags.iter().map(|t| format!("{t:?}")).collect();
        let files = repo().join("examples/plugins/python/files.py");
        let config = format!(
            "{FAST}{FAST_STATE}[node]\ntags = [{}]\n\n\
             [[plugins]]\nname = \"files\"\ncommand = \"python3\"\nargs = [{:?}, \"--root\", {:?}]\n\
             [plugins.allow]\ndesired_prefixes = [\"files/\"]\n\n\
             [[plugins]]\nname = \"hello\"\ncommand = \"sh\"\nargs = [{:?}]\n",
            tags.join(", "),
            files.display().to_string(),
            self.root(name).display().to_string(),
            self.home.path().join("hello.sh").display().to_string(),
        );
        let path = self.home.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let mut args = vec!["--listen", "127.0.0.1:0", "--name", name];
        if let Some(b) = boot {
            args.extend(["--bootstrap", b]);
        }
        let node = Node::start(self.home.path(), &self.data(name), &path, &args);
        self.client.authorize(&self.data(name));
        node
    }

    fn exec(&self, node: &Node, name: &str, command: &str) -> (String, i32) {
        let out = self.client.exec(node, &self.data(name), "op", command);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    #[track_caller]
    fn poll(&self, node: &Node, name: &str, command: &str, done: impl Fn(&str) -> bool) -> String {
        self.client
            .poll(node, &self.data(name), "op", command, done)
    }

    #[track_caller]
    fn wait_file(&self, name: &str, file: &str, want: Option<&str>) {
        support::wait_file(&self.root(name).join(file), want);
    }
}

#[test]
fn the_example_plugins_work_across_a_three_node_mesh() {
    let f = Fleet::new();
    let a = f.start("alpha", &["EU"], None);
    let b = f.start("beta", &["EU"], Some(&a.addr));
    let c = f.start("gamma", &["US"], Some(&a.addr));
    let all = [(&a, "alpha"), (&b, "beta"), (&c, "gamma")];
    for (n, name) in all {
        f.poll(n, name, "/nodes EU --json", |t| {
            serde_json::from_str::<Value>(t)
                .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 2))
        });
    }
    // Both plugins run on every node, and their commands are in /help.
    for (n, name) in all {
        let (list, st) = f.exec(n, name, "/plugins --json");
        assert_eq!(st, 0);
        let v: Value = serde_json::from_str(&list).unwrap();
        let names: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"] == "running" && p["kind"] == "external" && p["pid"].is_u64())
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, ["files", "hello"], "{list}");
    }
    let (help, _) = f.exec(&a, "alpha", "/help");
    assert!(help.contains("/files") && help.contains("/hello"), "{help}");
    // The shell plugin from the docs answers, with its exit status.
    assert_eq!(
        f.exec(&b, "beta", "/hello"),
        ("hello from beta\n".to_owned(), 0)
    );

    // The files reconciler: EU nodes get the file, gamma does not.
    let value = "welcome to \"EU\"\n$(not run)";
    let (text, st) = f.exec(&c, "gamma", &format!("/desire EU files/motd {value}"));
    assert_eq!(st, 0, "{text}");
    f.wait_file("alpha", "motd", Some(value));
    f.wait_file("beta", "motd", Some(value));
    for (n, name) in all {
        f.poll(n, name, "/drift --json", |t| {
            serde_json::from_str::<Value>(t).is_ok_and(|v| v["converged"] == true)
        });
    }
    assert!(!f.root("gamma").join("motd").exists());
    assert_eq!(f.exec(&a, "alpha", "/files"), ("motd\n".to_owned(), 0));
    let (none, _) = f.exec(&c, "gamma", "/files");
    assert!(none.starts_with("no files under"), "{none}");
    // A path outside its root is refused, and /drift says why.
    f.exec(&a, "alpha", "/desire EU files/../escape x");
    f.poll(&c, "gamma", "/drift --json", |t| {
        t.contains("not a relative path under the root")
    });
    f.exec(&a, "alpha", "/undesire EU files/../escape");
    // Withdrawn: the files go.
    f.exec(&a, "alpha", "/undesire EU files/motd");
    f.wait_file("alpha", "motd", None);
    f.wait_file("beta", "motd", None);
    for (n, name) in all {
        f.poll(n, name, "/drift --json", |t| {
            serde_json::from_str::<Value>(t).is_ok_and(|v| v["converged"] == true)
        });
    }
    // A clean stop stops the plugins too (step 4 of the ordered stop).
    let lines = a.terminate();
    assert!(
        lines.iter().any(|l| l.contains("stopped the plugins")),
        "{}",
        lines.join("\n")
    );
}
