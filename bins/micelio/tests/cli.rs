//! End-to-end tests of the `micelio` binary: each runs the built executable
//! in a temporary home and data dir, with bounded waits, and kills every
//! child it starts.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use micelio_testkit::micelio::command;
use micelio_testkit::process::{self, Output, Process};

/// Longest a command that should finish promptly may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the node may take to exit after SIGTERM or SIGINT.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(6);

/// A temporary home directory and the commands run in it.
struct Env {
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `micelio ARGS` with HOME pointing here and no `MICELIO_` variables
    /// inherited from the test's environment.
    fn micelio(&self, args: &[&str]) -> Command {
        command(
            Path::new(env!("CARGO_BIN_EXE_micelio")),
            self.home.path(),
            args,
        )
    }
}

/// Runs `cmd` to completion within [`COMMAND_TIMEOUT`].
fn run(cmd: Command) -> Output {
    process::run(cmd, COMMAND_TIMEOUT)
}

#[track_caller]
fn success(cmd: Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

fn is_node_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn id_creates_the_identity_and_prints_the_same_values_each_time() {
    let env = Env::new();
    let data = env.path("data");
    let data = data.to_str().unwrap();

    let first = success(env.micelio(&["id", "--data-dir", data]));
    let lines: Vec<&str> = first.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", first.stdout);
    assert!(is_node_id(lines[0]), "{:?}", lines[0]);
    assert!(lines[1].starts_with("ssh-ed25519 AAAA"), "{:?}", lines[1]);

    let key = env.path("data/identity/node.key");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&env.path("data/identity")), 0o700);
    assert_eq!(mode(&env.path("data")), 0o700);
    let pub_line = std::fs::read_to_string(env.path("data/identity/node.pub")).unwrap();
    assert_eq!(pub_line.trim_end(), lines[1]);

    // The flag also works before the subcommand.
    let second = success(env.micelio(&["--data-dir", data, "id"]));
    assert_eq!(second.stdout, first.stdout);
}

#[test]
fn id_refuses_a_key_readable_by_others() {
    let env = Env::new();
    let data = env.path("data");
    success(env.micelio(&["id", "--data-dir", data.to_str().unwrap()]));
    let key = env.path("data/identity/node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(env.micelio(&["id", "--data-dir", data.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("node.key"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

const BAD_CONFIG: &str = r#"
[node]
worker_threads = 5000

[network]
listen = "nope"
max_peers = -3
max_peer = 4

[logging]
format = "xml"
"#;

#[test]
fn every_bad_field_is_reported_by_config_check_and_run() {
    let env = Env::new();
    let file = env.write("bad.toml", BAD_CONFIG);
    let file = file.to_str().unwrap();
    let data = env.path("data");
    let data = data.to_str().unwrap();

    for args in [
        &["config", "check", "--config", file][..],
        &["run", "--config", file, "--data-dir", data],
        &["--config", file, "--data-dir", data],
    ] {
        let out = run(env.micelio(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        for field in [
            "network.listen:",
            "network.max_peers: must be between 1 and 1000, got -3",
            "network.max_peer: unknown key",
            "logging.format:",
            "node.worker_threads: must be between 0 and 1024, got 5000",
        ] {
            assert!(
                out.stderr.contains(field),
                "{args:?}: {field} not in\n{}",
                out.stderr
            );
        }
        assert!(
            out.stderr.contains(file),
            "the file is named: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
    assert!(
        !env.path("data").exists(),
        "a bad config must not create the data dir"
    );
}

#[test]
fn a_missing_config_file_is_an_error() {
    let env = Env::new();
    let out = run(env.micelio(&["config", "check", "--config", "/nonexistent/m.toml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("/nonexistent/m.toml"), "{}", out.stderr);
}

/// `micelio config check` output, parsed.
fn effective(mut cmd: Command) -> toml::Table {
    cmd.arg("config").arg("check");
    toml::from_str(&success(cmd).stdout).unwrap()
}

fn get<'t>(table: &'t toml::Table, path: &str) -> &'t toml::Value {
    let (section, key) = path.split_once('.').unwrap();
    &table[section][key]
}

#[test]
fn precedence_is_defaults_then_file_then_env_then_flags() {
    let env = Env::new();
    let file = env.write(
        "m.toml",
        "[node]\nname = \"from-file\"\n[network]\nmax_peers = 20\nlisten = \"127.0.0.1:4001\"\n",
    );
    let file = file.to_str().unwrap();

    let defaults = effective(env.micelio(&[]));
    assert_ne!(get(&defaults, "node.name").as_str(), Some("from-file"));
    assert_eq!(get(&defaults, "network.max_peers").as_integer(), Some(15));
    assert_eq!(get(&defaults, "node.worker_threads").as_integer(), Some(0));
    assert_eq!(get(&defaults, "network.listen").as_str(), Some(""));
    let home_data = env.path(".micelio");
    assert_eq!(get(&defaults, "node.data_dir").as_str(), home_data.to_str());

    let from_file = effective(env.micelio(&["--config", file]));
    assert_eq!(get(&from_file, "node.name").as_str(), Some("from-file"));
    assert_eq!(get(&from_file, "network.max_peers").as_integer(), Some(20));

    let with_env = |args: &[&str]| {
        let mut cmd = env.micelio(args);
        cmd.env("MICELIO_CONFIG", file)
            .env("MICELIO_NODE__NAME", "from-env")
            .env("MICELIO_NETWORK__MAX_PEERS", "30")
            .env("MICELIO_NODE__WORKER_THREADS", "2");
        cmd
    };
    let from_env = effective(with_env(&[]));
    assert_eq!(get(&from_env, "node.name").as_str(), Some("from-env"));
    assert_eq!(get(&from_env, "network.max_peers").as_integer(), Some(30));
    assert_eq!(get(&from_env, "node.worker_threads").as_integer(), Some(2));
    assert_eq!(
        get(&from_env, "network.listen").as_str(),
        Some("127.0.0.1:4001")
    );

    let from_flags = effective(with_env(&[
        "--name",
        "from-flag",
        "--listen",
        "127.0.0.1:4002",
        "--worker-threads",
        "1",
    ]));
    assert_eq!(
        get(&from_flags, "node.worker_threads").as_integer(),
        Some(1)
    );
    assert_eq!(get(&from_flags, "node.name").as_str(), Some("from-flag"));
    assert_eq!(
        get(&from_flags, "network.listen").as_str(),
        Some("127.0.0.1:4002")
    );
    assert_eq!(get(&from_flags, "network.max_peers").as_integer(), Some(30));
}

#[test]
fn the_default_config_file_is_read_from_the_home_directory() {
    let env = Env::new();
    std::fs::create_dir(env.path(".micelio")).unwrap();
    env.write(".micelio/config.toml", "[gossip]\nfanout = 5\n");
    let config = effective(env.micelio(&[]));
    assert_eq!(get(&config, "gossip.fanout").as_integer(), Some(5));
}

#[test]
fn the_example_config_passes_config_check() {
    let env = Env::new();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/config.example.toml"
    );
    let config = effective(env.micelio(&["--config", example]));
    assert_eq!(get(&config, "network.max_peers").as_integer(), Some(15));
}

#[test]
fn config_example_prints_the_documented_example_which_is_valid() {
    let env = Env::new();
    let out = success(env.micelio(&["config", "example"]));
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/config.example.toml"
    ))
    .unwrap();
    assert_eq!(out.stdout, doc);
    // What it prints is a configuration the node takes as it is.
    let file = env.write("example.toml", &out.stdout);
    let config = effective(env.micelio(&["--config", file.to_str().unwrap()]));
    assert_eq!(get(&config, "network.max_peers").as_integer(), Some(15));
}

#[test]
fn completions_load_in_their_shells_and_the_man_page_renders() {
    let env = Env::new();
    let bash = success(env.micelio(&["completions", "bash"])).stdout;
    assert!(
        bash.contains("micelio") && bash.contains("completions"),
        "{bash}"
    );
    // Bash takes it: sourcing it registers the completion of `micelio`.
    let script = env.write("micelio.bash", &bash);
    let mut check = Command::new("bash");
    check.args([
        "--norc",
        "-c",
        &format!("source {} && complete -p micelio", script.display()),
    ]);
    let out = success(check);
    assert!(out.stdout.contains("micelio"), "{}", out.stdout);
    let zsh = success(env.micelio(&["completions", "zsh"])).stdout;
    assert!(zsh.starts_with("#compdef micelio"), "{zsh}");
    let fish = success(env.micelio(&["completions", "fish"])).stdout;
    assert!(fish.contains("complete -c micelio"), "{fish}");
    let bad = run(env.micelio(&["completions", "tcsh"]));
    assert_eq!(bad.status.code(), Some(2));
    let man = success(env.micelio(&["man"])).stdout;
    assert!(
        man.starts_with(".ie") || man.contains(".TH micelio"),
        "{man}"
    );
    // Roff escapes its hyphens.
    for word in [r"\-\-data\-dir", r"\-\-bootstrap", "config", "completions"] {
        assert!(man.contains(word), "{word} not in the man page");
    }
}

#[test]
fn the_systemd_unit_starts_the_node_with_flags_it_takes() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/micelio.service"
    ))
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/micelio"));
    assert_eq!(words.next(), Some("run"));
    let flags: Vec<&str> = words.collect();
    assert_eq!(flags, ["--data-dir", "/var/lib/micelio"]);
    for key in [
        "User=micelio",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=micelio",
    ] {
        assert!(unit.lines().any(|l| l == key), "{key} missing");
    }
    // The same flags, with the example config, check out (in a temp dir).
    let env = Env::new();
    let example = env.write("config.toml", micelio_example());
    let data = env.path("data");
    let mut cmd = env.micelio(&["config", "check", "--data-dir", data.to_str().unwrap()]);
    cmd.env("MICELIO_CONFIG", &example);
    success(cmd);
}

fn micelio_example() -> &'static str {
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/config.example.toml"
    ))
}

/// The ssh command lines `micelio demo` printed, by node.
fn demo_commands(p: &mut Process, nodes: usize) -> Vec<String> {
    let last = format!("demo-{}: ssh -p", nodes - 1);
    p.wait_for(COMMAND_TIMEOUT, |l| l.contains(&last));
    p.seen()
        .iter()
        .filter_map(|l| {
            l.trim()
                .split_once(": ssh ")
                .map(|(_, c)| format!("ssh {c}"))
        })
        .collect()
}

/// Runs a printed ssh command line with `command`, in batch mode and with
/// `key` when given (ssh finds the user's keys from the password
/// database, not from `HOME`).
fn run_printed(line: &str, key: Option<&Path>, command: &str) -> Output {
    let mut words = line.split_whitespace();
    let mut cmd = Command::new(words.next().unwrap());
    cmd.args([
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
    ]);
    if let Some(k) = key {
        cmd.arg("-i").arg(k);
    }
    cmd.args(words).arg(command);
    run(cmd)
}

#[test]
fn demo_starts_a_mesh_prints_how_to_ssh_in_and_cleans_up_on_ctrl_c() {
    let env = Env::new();
    let ssh_dir = env.path(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let key = ssh_dir.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let mut p = Process::spawn(env.micelio(&["demo", "--nodes", "3"]), "demo");
    let lines = demo_commands(&mut p, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let dir_line = p.wait_for(COMMAND_TIMEOUT, |l| l.contains("data in "));
    let dir = PathBuf::from(dir_line.rsplit("data in ").next().unwrap().trim());
    assert!(dir.is_dir());
    // Every printed command logs in (host keys pinned by the demo's
    // known_hosts), and the mesh has all three.
    for line in &lines {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let out = run_printed(line, Some(&key), "/nodes --json");
            let n = serde_json::from_str::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().map(Vec::len));
            if out.status.success() && n == Some(3) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{line}: {} {}",
                out.stdout,
                out.stderr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    p.signal("INT");
    let status = p.wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(10));
    assert!(status.success(), "{status}");
    p.wait_for(COMMAND_TIMEOUT, |l| l.contains("micelio demo: stopped"));
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn demo_without_keys_makes_one_and_names_it() {
    let env = Env::new();
    let mut p = Process::spawn(env.micelio(&["demo", "--nodes", "1"]), "demo");
    let lines = demo_commands(&mut p, 1);
    let key = lines[0]
        .split_whitespace()
        .skip_while(|w| *w != "-i")
        .nth(1)
        .map(PathBuf::from)
        .expect("the command names the generated key");
    let out = run_printed(&lines[0], None, "/who");
    assert!(out.status.success(), "{} {}", out.stdout, out.stderr);
    p.signal("TERM");
    assert!(
        p.wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(10))
            .success()
    );
    assert!(!key.exists(), "the generated key is removed with the rest");
    let bad = run(env.micelio(&["demo", "--nodes", "0"]));
    assert_ne!(bad.status.code(), Some(0));
}

#[test]
fn the_nodes_of_a_killed_demo_stop_by_themselves() {
    let env = Env::new();
    let mut p = Process::spawn(env.micelio(&["demo", "--nodes", "2"]), "demo");
    demo_commands(&mut p, 2);
    let dir_line = p.wait_for(COMMAND_TIMEOUT, |l| l.contains("data in "));
    let dir = PathBuf::from(dir_line.rsplit("data in ").next().unwrap().trim());
    // SIGKILL: the demo cannot stop its nodes; they notice and stop.
    drop(p);
    for i in 0..2 {
        let log = dir.join(format!("demo-{i}.log"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("the demo that started this node is gone")
                && text.contains("node stopped")
            {
                break;
            }
            assert!(Instant::now() < deadline, "{}:\n{text}", log.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A running node, killed by handle if a test fails.
struct Node(Process);

impl Node {
    fn start(env: &Env, args: &[&str]) -> Self {
        Self(Process::spawn(env.micelio(args), "micelio"))
    }

    /// The NodeId the node prints when it starts.
    fn node_id(&mut self) -> String {
        let line = self
            .0
            .wait_for(COMMAND_TIMEOUT, |l| l.split_whitespace().any(is_node_id));
        line.split_whitespace()
            .find(|word| is_node_id(word))
            .unwrap_or_default()
            .to_owned()
    }

    fn signal(&self, name: &str) {
        self.0.signal(name);
    }

    /// Waits for the exit, returning its status and everything on stderr.
    fn exit(mut self) -> (ExitStatus, String) {
        let started = Instant::now();
        let status = self.0.wait_exit(SHUTDOWN_TIMEOUT);
        assert!(started.elapsed() < SHUTDOWN_TIMEOUT);
        (status, self.0.seen_stderr().join("\n"))
    }
}

#[test]
fn sigterm_stops_the_node_cleanly() {
    let env = Env::new();
    let data = env.path("data");
    let data = data.to_str().unwrap();
    let mut node = Node::start(
        &env,
        &[
            "--data-dir",
            data,
            "--listen",
            "127.0.0.1:0",
            "--ssh-listen",
            "127.0.0.1:0",
        ],
    );
    let id = node.node_id();
    // The same identity is on disk.
    let printed = success(env.micelio(&["id", "--data-dir", data]));
    assert_eq!(printed.stdout.lines().next(), Some(id.as_str()));

    // Signals are handled once the NodeId is printed.
    node.signal("TERM");
    let (status, stderr) = node.exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("node started"), "{stderr}");
    assert!(
        stderr.contains("micelio::node"),
        "lines carry the target: {stderr}"
    );
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}

#[test]
fn sigint_stops_the_node_and_json_logs_go_to_stderr() {
    let env = Env::new();
    let data = env.path("data");
    let mut node = Node::start(
        &env,
        &[
            "run",
            "--data-dir",
            data.to_str().unwrap(),
            "--ssh-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
    );
    node.node_id();
    node.signal("INT");
    let (status, stderr) = node.exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let mut started = false;
    for line in stderr.lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not JSON: {line}"
        );
        started |=
            line.contains("\"node started\"") && line.contains("\"target\":\"micelio::node\"");
    }
    assert!(started, "{stderr}");
}
