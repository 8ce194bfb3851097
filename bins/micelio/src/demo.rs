//! `micelio demo`: a newcomer's local mesh in one command.
//!
//! Starts N nodes (child processes of this binary) on 127.0.0.1 under a
//! fresh temporary directory, each bootstrapping from the first, lets in
//! the invoking user's `~/.ssh/*.pub` keys (or a key it generates and
//! names), pins their host keys in a `known_hosts` of its own, and prints
//! exactly how to ssh into each. Ctrl-C (or SIGTERM) stops the nodes in
//! order and removes the directory.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Most nodes a demo starts.
pub(crate) const MAX_NODES: u8 = 20;
/// How long one node may take to print its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(8);

/// One started node.
struct DemoNode {
    name: String,
    child: Child,
    peers: String,
    ssh_port: u16,
}

/// The nodes and the directory, stopped and removed when dropped.
struct Demo {
    dir: PathBuf,
    nodes: Vec<DemoNode>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for n in &self.nodes {
            terminate(&n.child);
        }
        for n in &mut self.nodes {
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match n.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = n.child.kill();
                        let _ = n.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asks a child to stop (SIGTERM: the node's ordered stop).
fn terminate(child: &Child) {
    #[cfg(unix)]
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// The public keys in `~/.ssh/*.pub`, one per line.
fn user_keys() -> String {
    let Some(home) = std::env::home_dir() else {
        return String::new();
    };
    let Ok(dir) = std::fs::read_dir(home.join(".ssh")) else {
        return String::new();
    };
    let mut paths: Vec<PathBuf> = dir
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pub"))
        .collect();
    paths.sort();
    let mut out = String::new();
    for p in paths {
        if let Ok(text) = std::fs::read_to_string(&p) {
            for line in text.lines().filter(|l| l.starts_with("ssh-")) {
                out.push_str(line.trim());
                out.push('\n');
            }
        }
    }
    out
}

/// A new Ed25519 key under `dir` made by `ssh-keygen`; its public line.
fn generate_key(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let key = dir.join("demo_key");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "micelio-demo", "-f"])
        .arg(&key)
        .stdin(Stdio::null())
        .status()
        .context("no key in ~/.ssh and cannot run ssh-keygen to make one")?;
    if !status.success() {
        bail!("ssh-keygen failed ({status})");
    }
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    Ok((key, public))
}

/// Starts node `i` and reads its addresses from its stdout.
fn start_node(dir: &Path, i: usize, boot: Option<&str>, keys: &str) -> anyhow::Result<DemoNode> {
    let name = format!("demo-{i}");
    let data = dir.join(&name);
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("authorized_keys"), keys)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = Command::new(std::env::current_exe().context("finding this program")?);
    cmd.arg("run")
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", &name])
        .args(["--listen", "127.0.0.1:0", "--ssh-listen", "127.0.0.1:0"])
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MICELIO_") {
            cmd.env_remove(k);
        }
    }
    // A group of its own: a Ctrl-C at the terminal reaches the demo only,
    // which then stops each node once, in order.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // A node whose demo is killed (no Ctrl-C) stops by itself.
    cmd.env(crate::node::DEMO_PARENT_ENV, std::process::id().to_string());
    if let Some(b) = boot {
        cmd.args(["--bootstrap", b]);
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let Some(stdout) = child.stdout.take() else {
        bail!("{name}: no stdout");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut peers, mut ssh) = (None, None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("peers"), Some(a)) => peers = Some(a.to_owned()),
                (Some("ssh"), Some(a)) => ssh = Some(a.to_owned()),
                _ => {}
            }
            if let (Some(p), Some(s)) = (&peers, &ssh) {
                let _ = tx.send((p.clone(), s.clone()));
                peers = None;
                ssh = None;
            }
        }
    });
    let Ok((peers, ssh)) = rx.recv_timeout(START_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "{name} did not start; its log: {}",
            dir.join(format!("{name}.log")).display()
        );
    };
    let ssh_port = ssh
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("{name} printed a strange ssh address {ssh}"))?;
    Ok(DemoNode {
        name,
        child,
        peers,
        ssh_port,
    })
}

/// `micelio demo --nodes N`.
pub(crate) fn run(nodes: u8) -> anyhow::Result<()> {
    if nodes == 0 || nodes > MAX_NODES {
        bail!("--nodes must be between 1 and {MAX_NODES}");
    }
    // Signals first: a Ctrl-C while the nodes start still cleans up.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signals = {
        let _in_runtime = runtime.enter();
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let dir = std::env::temp_dir().join(format!("micelio-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut demo = Demo {
        dir: dir.clone(),
        nodes: Vec::new(),
    };
    let mut keys = user_keys();
    let mut key_flag = String::new();
    if keys.is_empty() {
        let (key, public) = generate_key(&dir)?;
        keys = public;
        key_flag = format!(" -i {}", key.display());
    }
    for i in 0..usize::from(nodes) {
        let boot = demo.nodes.first().map(|n| n.peers.clone());
        let node = start_node(&dir, i, boot.as_deref(), &keys)?;
        demo.nodes.push(node);
    }
    // Pin every node's host key (its identity) for the ssh commands.
    let mut known = String::new();
    for n in &demo.nodes {
        let host = std::fs::read_to_string(dir.join(&n.name).join("identity").join("node.pub"))?;
        known.push_str(&format!("[127.0.0.1]:{} {}\n", n.ssh_port, host.trim_end()));
    }
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, known)?;
    let user = std::env::var("USER").unwrap_or_else(|_| "you".to_owned());
    let mut text = format!(
        "micelio demo: {nodes} node{} on 127.0.0.1, data in {}\n\n",
        if nodes == 1 { "" } else { "s" },
        dir.display()
    );
    for n in &demo.nodes {
        text.push_str(&format!(
            "  {}: ssh -p {} -o UserKnownHostsFile={}{key_flag} {user}@127.0.0.1\n",
            n.name,
            n.ssh_port,
            known_hosts.display()
        ));
    }
    text.push_str(&format!(
        "\nType to chat (it reaches every node); /help lists the commands, /nodes the mesh.\n\
         Logs: {}/demo-*.log. Ctrl-C stops the nodes and removes {}.\n",
        dir.display(),
        dir.display()
    ));
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    drop(out);
    wait_for_signal_or_exit(&runtime, signals, &mut demo)?;
    drop(demo);
    let _ = writeln!(
        std::io::stdout().lock(),
        "micelio demo: stopped, {} removed",
        dir.display()
    );
    Ok(())
}

/// Returns on SIGINT or SIGTERM; fails if a node exits by itself.
fn wait_for_signal_or_exit(
    runtime: &tokio::runtime::Runtime,
    (mut int, mut term): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
    demo: &mut Demo,
) -> anyhow::Result<()> {
    runtime.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = int.recv() => return Ok(()),
                _ = term.recv() => return Ok(()),
                _ = tick.tick() => {
                    for n in &mut demo.nodes {
                        if let Ok(Some(status)) = n.child.try_wait() {
                            bail!("{} exited by itself ({status}); see its log", n.name);
                        }
                    }
                }
            }
        }
    })
}
