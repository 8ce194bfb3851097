//! `cargo xtask latency`: how long a line typed on one node's partyline takes
//! to be printed on another node's, end to end with the real OpenSSH client,
//! beside the same line's local echo (the cost without the mesh hop).
//!
//! ```text
//! cargo xtask latency [--lines N] [--json-only]
//! ```
//!
//! Default: `--lines 100`.
//!
//! # How
//!
//! Two release `micelio` processes (built first with
//! `cargo build --release -p micelio`, honouring `CARGO_TARGET_DIR`) run on
//! 127.0.0.1 with `--listen 127.0.0.1:0 --ssh-listen 127.0.0.1:0`, data dirs
//! in a temp dir, text logs, peer exchange and discovery every 500 ms: A
//! (`bench-a`), and B (`bench-b`) bootstrapping from A. The harness waits
//! until each logs `peer connected` with the other's NodeId.
//!
//! A throwaway key (`ssh-keygen -q -t ed25519 -N ""`) is appended to both
//! nodes' `authorized_keys`, and a `known_hosts` pins each node's host key
//! (`[127.0.0.1]:PORT` + `<data_dir>/identity/node.pub`). `/usr/bin/ssh -tt`
//! (so the node runs its line editor, as for a person at a terminal) with
//! `-F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes
//! -o StrictHostKeyChecking=yes` opens two sessions with piped stdin: `alice`
//! on A and `bob` on B. A reader thread per session appends what the client
//! prints to a transcript and stamps each chunk with the `Instant` it was
//! read. The harness then types `/who` on bob's session (again every second)
//! until B lists `alice` on `bench-a`, and types one unmeasured warm-up line
//! on alice's that must reach bob.
//!
//! Then alice types `--lines` lines, one at a time: `lat-<i>-<random>` and
//! `\r`, written to her client's stdin at once. For each line two latencies
//! start at the `Instant` just before that write:
//!
//! - **A → B**: until bob's transcript holds `<alice@bench-a> lat-<i>-…`,
//!   i.e. the real client's keystrokes → SSH → A's partyline → gossip over
//!   Noise/TCP → B's partyline → SSH → bob's client;
//! - **local echo**: until alice's own transcript holds the same rendered
//!   line: SSH and A's partyline, no mesh hop. (The typed characters and the
//!   `alice> lat-…` redraw of the submitted input come earlier and do not
//!   match: only the line the hub sends back to every session does.)
//!
//! The time is that of the chunk that completed the match, as stamped by
//! the reader thread, so the harness's own polling does not count. A line
//! not seen within 5 s is a miss (listed on stderr); percentiles are over
//! the lines received. The *mesh hop* is the difference A → B − local echo
//! of each line received both ways; the table also gives the A → B ÷ local
//! ratio of the medians.
//!
//! Lines start at least 120 ms apart (next line once both latencies are
//! known or timed out, and not before): about 8 lines/s, below the gossip
//! rate limit every node applies per sender (10 msg/s, burst 20), which the
//! presence updates of A also draw on. Faster pacing would measure drops,
//! not latency.
//!
//! Output: a table (to stdout), then one JSON line with the keys `bench`
//! (`"partyline_latency"`), `lines`, `received` (lines that reached B),
//! `p50_ms`, `p90_ms`, `p99_ms`, `max_ms` (A → B, nearest rank), and
//! `local_echo_p50_ms`, `local_echo_p99_ms`; `null` when nothing was
//! received. `--json-only` prints only the JSON line; progress goes to stderr
//! otherwise. The command fails when no line reached B.
//!
//! Unlike `mesh`, this command does not re-run itself optimised: the harness
//! does no cryptography and stamps arrivals in its reader threads; all the
//! measured work is done by the release `micelio` processes and `ssh`.
//!
//! # Caveats
//!
//! Both nodes, both clients and the harness share the machine's cores (2
//! here), so the figures include scheduling; compare runs on the same
//! machine. Every child (nodes and ssh clients) is killed by handle when
//! the run ends, whether it succeeded or not.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use micelio_testkit::process::Process;

use crate::mesh::{Children, build_binary, node_command, percentile, round, split_flag};

/// Lines typed by default.
const DEFAULT_LINES: usize = 100;
/// Least time between the starts of two lines: ≈ 8.3 lines/s, below the
/// per-sender gossip rate limit (10 msg/s, burst 20).
const LINE_GAP: Duration = Duration::from_millis(120);
/// How long a line may take to show before it counts as a miss.
const LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a node to print its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the two nodes to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for an ssh session to show the partyline banner.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for B to list alice in `/who`.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `/who` may take to answer before it is typed again.
const WHO_RETRY: Duration = Duration::from_secs(1);
/// Longest wait for the warm-up line to reach B.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The OpenSSH client.
const SSH: &str = "/usr/bin/ssh";
/// Node names.
const NAME_A: &str = "bench-a";
const NAME_B: &str = "bench-b";
/// Who types, and who reads.
const SENDER: &str = "alice";
const READER: &str = "bob";

const USAGE: &str = "usage: cargo xtask latency [--lines N] [--json-only]

Measures the partyline latency between two real `micelio` processes on
127.0.0.1 with the real OpenSSH client: a line typed by alice on node A
until it is printed on bob's session on node B, beside its local echo on
A. Default: --lines 100.";

/// The parsed command line of `cargo xtask latency`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LatencyArgs {
    /// Measured lines.
    pub(crate) lines: usize,
    /// Print only the JSON line.
    pub(crate) json_only: bool,
}

impl Default for LatencyArgs {
    fn default() -> Self {
        Self {
            lines: DEFAULT_LINES,
            json_only: false,
        }
    }
}

/// Parses the arguments after `latency`. `Ok(None)` means `--help`.
pub(crate) fn parse_args(args: &[&str]) -> anyhow::Result<Option<LatencyArgs>> {
    let mut out = LatencyArgs::default();
    let mut i = 0;
    while i < args.len() {
        let (flag, inline) = split_flag(args[i]);
        i += 1;
        match flag {
            "--help" | "-h" => return Ok(None),
            "--json-only" => {
                if inline.is_some() {
                    bail!("--json-only takes no value");
                }
                out.json_only = true;
            }
            "--lines" => {
                let value = match inline {
                    Some(v) => v,
                    None => {
                        let v = args
                            .get(i)
                            .with_context(|| format!("--lines needs a value\n\n{USAGE}"))?;
                        i += 1;
                        v
                    }
                };
                out.lines = value
                    .trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--lines: {value:?} is not a valid number"))?;
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if out.lines == 0 {
        bail!("--lines: at least 1");
    }
    Ok(Some(out))
}

/// Progress and notes, to stderr unless `--json-only`.
fn note(args: &LatencyArgs, text: &str) {
    if !args.json_only {
        let _ = writeln!(std::io::stderr().lock(), "latency: {text}");
    }
}

/// The value after `label` in a start-up line such as `ssh         ADDR`.
fn labelled<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(label)?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    rest.split_whitespace().next()
}

/// The address after `label` in a start-up line (`peers`, `ssh`).
fn labelled_addr(line: &str, label: &str) -> Option<std::net::SocketAddr> {
    labelled(line, label)?.parse().ok()
}

/// A running node as the harness sees it; its process is killed when the
/// node is dropped.
struct Node {
    name: &'static str,
    data: PathBuf,
    node_id: String,
    addr: String,
    ssh_port: u16,
    process: Process,
}

impl Node {
    /// Starts node `name` (bootstrapping from `bootstrap`); returns once it
    /// printed its NodeId and both addresses.
    fn start(
        bin: &Path,
        dir: &Path,
        name: &'static str,
        bootstrap: Option<&str>,
    ) -> anyhow::Result<Node> {
        let data = dir.join(name);
        let mut cmd = node_command(bin, dir, &data, name, "text");
        if let Some(addr) = bootstrap {
            cmd.args(["--bootstrap", addr]);
        }
        cmd.env("MICELIO_NETWORK__EXCHANGE_INTERVAL", "500ms")
            .env("MICELIO_NETWORK__DISCOVERY_INTERVAL", "500ms");
        let mut node = Node {
            name,
            data,
            node_id: String::new(),
            addr: String::new(),
            ssh_port: 0,
            process: Process::spawn(cmd, &format!("node {name}")),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let line = node.wait_for("its `node id` line", deadline, |l| {
            labelled(l, "node id").is_some()
        })?;
        node.node_id = labelled(&line, "node id").unwrap_or_default().to_owned();
        let line = node.wait_for("its `peers ADDR` line", deadline, |l| {
            labelled_addr(l, "peers").is_some()
        })?;
        node.addr = labelled_addr(&line, "peers")
            .map(|a| a.to_string())
            .unwrap_or_default();
        let line = node.wait_for("its `ssh ADDR` line", deadline, |l| {
            labelled_addr(l, "ssh").is_some()
        })?;
        node.ssh_port = labelled_addr(&line, "ssh").map_or(0, |a| a.port());
        Ok(node)
    }

    /// Waits until a line satisfying `pred` was printed (already or new), at
    /// most until `deadline`; `what` names it in the error.
    fn wait_for(
        &mut self,
        what: &str,
        deadline: Instant,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.process
            .try_wait_for(left, pred)
            .with_context(|| format!("node {} did not print {what}", self.name))
    }

    /// Waits until this node logs a connection to `node_id`.
    fn connected_to(&mut self, node_id: &str, deadline: Instant) -> anyhow::Result<()> {
        self.wait_for(&format!("`peer connected` for {node_id}"), deadline, |l| {
            l.contains("peer connected") && l.contains(node_id)
        })
        .map(drop)
    }
}

/// The throwaway client key and the `known_hosts` that pins the nodes.
struct Client {
    key: PathBuf,
    known_hosts: PathBuf,
}

impl Client {
    /// Generates the key in `dir`.
    fn new(dir: &Path) -> anyhow::Result<Client> {
        let key = dir.join("client_ed25519");
        let status = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "micelio-latency",
                "-f",
            ])
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("cannot run ssh-keygen (is OpenSSH installed?)")?;
        if !status.success() {
            bail!("ssh-keygen failed ({status})");
        }
        Ok(Client {
            key,
            known_hosts: dir.join("known_hosts"),
        })
    }

    /// Lets the key log in to `node` and pins the node's host key.
    fn authorize(&self, node: &Node) -> anyhow::Result<()> {
        let public = std::fs::read_to_string(self.key.with_extension("pub"))
            .context("reading the client's public key")?;
        append(
            &node.data.join("authorized_keys"),
            &format!("{}\n", public.trim_end()),
        )?;
        let host = std::fs::read_to_string(node.data.join("identity").join("node.pub"))
            .with_context(|| format!("reading the host key of {}", node.name))?;
        append(
            &self.known_hosts,
            &format!("[127.0.0.1]:{} {}\n", node.ssh_port, host.trim_end()),
        )
    }

    /// `ssh -tt user@127.0.0.1` to `node`, pinned, batch mode, this key only.
    fn tty_command(&self, node: &Node, user: &str) -> Command {
        let mut cmd = Command::new(SSH);
        cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &node.ssh_port.to_string(), "-tt"])
            .arg(format!("{user}@127.0.0.1"));
        cmd
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Everything one ssh client printed, with when each chunk was read.
#[derive(Debug, Default)]
struct Transcript {
    bytes: Vec<u8>,
    /// For each chunk read: the length of `bytes` after it, and when.
    chunks: Vec<(usize, Instant)>,
    /// The client's stdout is closed (it exited).
    closed: bool,
}

impl Transcript {
    fn push(&mut self, data: &[u8], at: Instant) {
        self.bytes.extend_from_slice(data);
        self.chunks.push((self.bytes.len(), at));
    }

    /// The offset just past the first `needle` that starts at or after
    /// `from`.
    fn find(&self, needle: &[u8], from: usize) -> Option<usize> {
        let hay = self.bytes.get(from..)?;
        if needle.is_empty() || hay.len() < needle.len() {
            return None;
        }
        hay.windows(needle.len())
            .position(|w| w == needle)
            .map(|p| from + p + needle.len())
    }

    /// When the first `needle` at or after `from` had fully arrived: the
    /// time of the chunk that brought its last byte.
    fn arrival(&self, needle: &[u8], from: usize) -> Option<Instant> {
        let end = self.find(needle, from)?;
        let k = self.chunks.partition_point(|(len, _)| *len < end);
        self.chunks.get(k).map(|(_, at)| *at)
    }

    fn text(&self, from: usize) -> Cow<'_, str> {
        String::from_utf8_lossy(self.bytes.get(from..).unwrap_or_default())
    }
}

/// Whether `/who` output `text` lists `nick` on the node named `node`
/// (lines like `  bench-a [0123456789ab] (this node): alice, bob`).
fn who_lists(text: &str, node: &str, nick: &str) -> bool {
    let head = format!("{node} [");
    text.split(['\r', '\n']).any(|line| {
        let line = line.trim_start();
        line.starts_with(&head)
            && line
                .split_once(": ")
                .is_some_and(|(_, nicks)| nicks.split(", ").any(|n| n.trim_end() == nick))
    })
}

/// The transcript of a session and the signal that it grew.
#[derive(Default)]
struct Screen {
    transcript: Mutex<Transcript>,
    grew: Condvar,
}

/// An interactive session: `ssh -tt` with piped stdin (its process is in
/// [`Children`]).
struct Tty {
    user: &'static str,
    stdin: ChildStdin,
    screen: Arc<Screen>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Tty {
    /// Logs `user` in on `node`; returns once the banner is shown.
    fn open(
        client: &Client,
        node: &Node,
        user: &'static str,
        children: &mut Children,
    ) -> anyhow::Result<Tty> {
        let mut child = client
            .tty_command(node, user)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {SSH}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let err_pipe = child.stderr.take();
        children.0.push(child);
        let (Some(stdin), Some(mut stdout), Some(mut err_pipe)) = (stdin, stdout, err_pipe) else {
            bail!("ssh for {user}: no pipes");
        };
        let screen = Arc::new(Screen::default());
        {
            let screen = screen.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    let n = stdout.read(&mut buf).unwrap_or(0);
                    let at = Instant::now();
                    let mut t = screen.transcript.lock().unwrap_or_else(|p| p.into_inner());
                    if n == 0 {
                        t.closed = true;
                        screen.grew.notify_all();
                        break;
                    }
                    t.push(&buf[..n], at);
                    screen.grew.notify_all();
                }
            });
        }
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = stderr.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err_pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
            });
        }
        let tty = Tty {
            user,
            stdin,
            screen,
            stderr,
        };
        let deadline = Instant::now() + LOGIN_TIMEOUT;
        if tty
            .wait_until(deadline, |t| t.find(b"Type /help", 0))
            .is_none()
        {
            // Let the client's last words arrive.
            thread::sleep(Duration::from_millis(200));
            bail!(
                "{user} could not log in to {}: ssh said {:?}; the session showed {:?}",
                node.name,
                String::from_utf8_lossy(&tty.stderr.lock().unwrap_or_else(|p| p.into_inner())),
                tty.text(0)
            );
        }
        Ok(tty)
    }

    /// Waits until `f` finds something in the transcript, at most until
    /// `deadline` or the client's exit.
    fn wait_until<R>(
        &self,
        deadline: Instant,
        mut f: impl FnMut(&Transcript) -> Option<R>,
    ) -> Option<R> {
        let mut t = self
            .screen
            .transcript
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = f(&t) {
                return Some(r);
            }
            let now = Instant::now();
            if t.closed || now >= deadline {
                return None;
            }
            t = self
                .screen
                .grew
                .wait_timeout(t, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Bytes printed so far.
    fn len(&self) -> usize {
        self.screen
            .transcript
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bytes
            .len()
    }

    /// What it printed from offset `from`.
    fn text(&self, from: usize) -> String {
        self.screen
            .transcript
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .text(from)
            .into_owned()
    }

    /// Types `bytes`.
    fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stdin
            .write_all(bytes)
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("typing on {}'s session", self.user))
    }
}

/// Types `/who` on `reader` until it lists `nick` on node `node`.
fn await_presence(reader: &mut Tty, node: &str, nick: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + PRESENCE_TIMEOUT;
    loop {
        let from = reader.len();
        reader.send(b"/who\r")?;
        let until = (Instant::now() + WHO_RETRY).min(deadline);
        let listed = reader.wait_until(until, |t| {
            let text = t.text(from);
            who_lists(&text, node, nick).then_some(())
        });
        if listed.is_some() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{}'s /who did not list {nick} on {node} within {PRESENCE_TIMEOUT:?}; last answer:\n{}",
                reader.user,
                reader.text(from)
            );
        }
    }
}

/// A random tag for the lines of this run.
fn tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// One typed line: milliseconds until it showed on B and on A (`None`: not
/// within [`LINE_TIMEOUT`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sample {
    remote_ms: Option<f64>,
    local_ms: Option<f64>,
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

/// The warm-up line, then `args.lines` measured lines typed by `alice`.
fn measure(args: &LatencyArgs, alice: &mut Tty, bob: &mut Tty) -> anyhow::Result<Vec<Sample>> {
    let prefix = format!("<{SENDER}@{NAME_A}> ");
    let warmup = format!("warmup-{}", tag());
    let from = bob.len();
    alice.send(format!("{warmup}\r").as_bytes())?;
    let needle = format!("{prefix}{warmup}");
    let until = Instant::now() + WARMUP_TIMEOUT;
    if bob
        .wait_until(until, |t| t.arrival(needle.as_bytes(), from))
        .is_none()
    {
        bail!(
            "the warm-up line typed by {SENDER} on {NAME_A} never reached {READER} on {NAME_B} \
             within {WARMUP_TIMEOUT:?}; bob's session showed:\n{}",
            bob.text(from)
        );
    }
    thread::sleep(LINE_GAP);

    let mut samples = Vec::with_capacity(args.lines);
    for i in 1..=args.lines {
        let token = format!("lat-{i}-{}", tag());
        let needle = format!("{prefix}{token}");
        let (from_a, from_b) = (alice.len(), bob.len());
        let t0 = Instant::now();
        alice.send(format!("{token}\r").as_bytes())?;
        let deadline = t0 + LINE_TIMEOUT;
        let remote = bob.wait_until(deadline, |t| t.arrival(needle.as_bytes(), from_b));
        let local = alice.wait_until(deadline, |t| t.arrival(needle.as_bytes(), from_a));
        let sample = Sample {
            remote_ms: remote.map(|at| ms(t0, at)),
            local_ms: local.map(|at| ms(t0, at)),
        };
        if sample.remote_ms.is_none() {
            note(
                args,
                &format!("line {i} ({token}) did not reach {READER} within {LINE_TIMEOUT:?}"),
            );
        }
        if sample.local_ms.is_none() {
            note(
                args,
                &format!("line {i} ({token}) was not echoed to {SENDER} within {LINE_TIMEOUT:?}"),
            );
        }
        samples.push(sample);
        if i % 25 == 0 && i < args.lines {
            note(args, &format!("{i} of {} lines", args.lines));
        }
        let next = t0 + LINE_GAP;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(samples)
}

/// Starts both nodes and both sessions, measures, and kills every child.
fn bench(args: &LatencyArgs, bin: &Path) -> anyhow::Result<Vec<Sample>> {
    if !Path::new(SSH).is_file() {
        bail!("{SSH} does not exist: the benchmark needs the OpenSSH client");
    }
    // Dropped last: the children go first (declared after).
    let dir = tempfile::Builder::new()
        .prefix("micelio-latency-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let mut children = Children::default();
    let mut a = Node::start(bin, dir.path(), NAME_A, None)?;
    let mut b = Node::start(bin, dir.path(), NAME_B, Some(&a.addr))?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    b.connected_to(&a.node_id, deadline)?;
    a.connected_to(&b.node_id, deadline)?;
    note(
        args,
        &format!(
            "{NAME_A} (peers {}, ssh port {}) and {NAME_B} (ssh port {}) are connected",
            a.addr, a.ssh_port, b.ssh_port
        ),
    );

    let client = Client::new(dir.path())?;
    client.authorize(&a)?;
    client.authorize(&b)?;
    let mut alice = Tty::open(&client, &a, SENDER, &mut children)?;
    let mut bob = Tty::open(&client, &b, READER, &mut children)?;
    await_presence(&mut bob, NAME_A, SENDER)?;
    note(
        args,
        &format!(
            "{SENDER}@{NAME_A} and {READER}@{NAME_B} are logged in; typing {} lines, {} ms apart",
            args.lines,
            LINE_GAP.as_millis()
        ),
    );
    let samples = measure(args, &mut alice, &mut bob)?;
    drop((alice, bob));
    drop(children);
    drop(dir);
    Ok(samples)
}

/// Percentiles of one series, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Stats {
    n: usize,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    Stats {
        n: v.len(),
        p50: percentile(&v, 50.0),
        p90: percentile(&v, 90.0),
        p99: percentile(&v, 99.0),
        max: v.last().copied(),
    }
}

/// The figures of a run.
#[derive(Debug, Clone, PartialEq)]
struct Summary {
    lines: usize,
    /// A → B.
    remote: Stats,
    /// A → A.
    local: Stats,
    /// A → B − A → A, per line received both ways.
    hop: Stats,
}

fn summarise(samples: &[Sample]) -> Summary {
    Summary {
        lines: samples.len(),
        remote: stats(samples.iter().filter_map(|s| s.remote_ms).collect()),
        local: stats(samples.iter().filter_map(|s| s.local_ms).collect()),
        hop: stats(
            samples
                .iter()
                .filter_map(|s| Some(s.remote_ms? - s.local_ms?))
                .collect(),
        ),
    }
}

/// A JSON number in milliseconds, or `null`.
fn json_ms(v: Option<f64>) -> String {
    v.map_or_else(
        || "null".to_owned(),
        |x| serde_json::Value::from(round(x, 3)).to_string(),
    )
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
}

impl Summary {
    /// The JSON line, keys in a fixed order.
    fn json(&self) -> String {
        format!(
            "{{\"bench\":\"partyline_latency\",\"lines\":{},\"received\":{},\"p50_ms\":{},\
             \"p90_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"local_echo_p50_ms\":{},\
             \"local_echo_p99_ms\":{}}}",
            self.lines,
            self.remote.n,
            json_ms(self.remote.p50),
            json_ms(self.remote.p90),
            json_ms(self.remote.p99),
            json_ms(self.remote.max),
            json_ms(self.local.p50),
            json_ms(self.local.p99),
        )
    }

    /// The readable table.
    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "partyline latency: {} lines typed by {SENDER} on A ({NAME_A}) with ssh -tt, \
             at least {} ms apart; {READER} reads on B ({NAME_B})\n",
            self.lines,
            LINE_GAP.as_millis()
        );
        let _ = writeln!(
            out,
            "{:<44} {:>9} {:>8} {:>8} {:>8} {:>8}",
            "path", "received", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for (label, s) in [
            ("A → B  ssh + partyline + mesh hop", &self.remote),
            ("A → A  local echo: ssh + partyline", &self.local),
            ("mesh hop  per line, (A → B) − (A → A)", &self.hop),
        ] {
            let _ = writeln!(
                out,
                "{:<44} {:>9} {:>8} {:>8} {:>8} {:>8}",
                label,
                format!("{}/{}", s.n, self.lines),
                cell(s.p50),
                cell(s.p90),
                cell(s.p99),
                cell(s.max),
            );
        }
        let ratio = match (self.remote.p50, self.local.p50) {
            (Some(r), Some(l)) if l > 0.0 => format!("{:.2}×", r / l),
            _ => "-".to_owned(),
        };
        let _ = writeln!(out, "\nA → B ÷ local echo, at p50: {ratio}");
        out
    }
}

/// `cargo xtask latency …`.
pub(crate) fn run(root: &Path, raw: &[&str]) -> anyhow::Result<()> {
    let Some(args) = parse_args(raw)? else {
        let _ = writeln!(std::io::stdout().lock(), "{USAGE}");
        return Ok(());
    };
    note(&args, "building the release micelio binary…");
    let bin = build_binary(root, args.json_only)?;
    let samples = bench(&args, &bin)?;
    let summary = summarise(&samples);
    let mut stdout = std::io::stdout().lock();
    if !args.json_only {
        let _ = write!(stdout, "\n{}\n", summary.table());
    }
    let _ = writeln!(stdout, "{}", summary.json());
    if summary.remote.n == 0 {
        bail!(
            "none of the {} lines typed on A was printed on B",
            summary.lines
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        assert_eq!(parse_args(&[]).unwrap(), Some(LatencyArgs::default()));
        assert_eq!(
            parse_args(&["--lines", "7", "--json-only"]).unwrap(),
            Some(LatencyArgs {
                lines: 7,
                json_only: true
            })
        );
        assert_eq!(parse_args(&["--lines=3"]).unwrap().unwrap().lines, 3);
        assert_eq!(parse_args(&["--help"]).unwrap(), None);
        for bad in [
            &["--lines"][..],
            &["--lines", "x"],
            &["--lines", "0"],
            &["--json-only=1"],
            &["--nodes", "3"],
        ] {
            assert!(parse_args(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn start_up_lines_parse() {
        assert_eq!(labelled("node id     4950f7", "node id"), Some("4950f7"));
        assert_eq!(
            labelled_addr("ssh         127.0.0.1:2222", "ssh"),
            Some("127.0.0.1:2222".parse().unwrap())
        );
        assert_eq!(
            labelled_addr("peers       127.0.0.1:4000 (advertised as x:1)", "peers")
                .map(|a| a.port()),
            Some(4000)
        );
        assert_eq!(
            labelled_addr("peers       none (outbound only)", "peers"),
            None
        );
        assert_eq!(labelled_addr("sshx        127.0.0.1:1", "ssh"), None);
    }

    #[test]
    fn arrival_is_the_chunk_that_completes_the_needle() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = Transcript::default();
        t.push(b"alice> lat-1-ab\r\n\r\x1b[K[12:00] <alice@", at(1));
        assert_eq!(t.arrival(b"<alice@bench-a> lat-1-ab", 0), None);
        t.push(b"bench-a> lat-1", at(5));
        t.push(b"-ab\r\nalice> ", at(9));
        assert_eq!(t.arrival(b"<alice@bench-a> lat-1-ab", 0), Some(at(9)));
        assert_eq!(t.arrival(b"lat-1-ab", 0), Some(at(1)));
        // From an offset past the first occurrence, the next one counts.
        assert_eq!(t.arrival(b"lat-1-ab", 10), Some(at(9)));
        assert_eq!(t.arrival(b"lat-1-ab", 1000), None);
        assert_eq!(t.find(b"", 0), None);
    }

    #[test]
    fn who_output_is_read() {
        let text = "/who\r\n2 user(s) on 2 node(s):\r\n  bench-a [0123456789ab]: alice, carol\r\n  \
                    bench-b [ba9876543210] (this node): bob\r\n\r\x1b[Kbob> ";
        assert!(who_lists(text, "bench-a", "alice"));
        assert!(who_lists(text, "bench-a", "carol"));
        assert!(who_lists(text, "bench-b", "bob"));
        assert!(!who_lists(text, "bench-b", "alice"));
        assert!(!who_lists(text, "bench-a", "ali"));
        assert!(!who_lists(
            "  bench-a [0123456789ab]: -",
            "bench-a",
            "alice"
        ));
    }

    #[test]
    fn summary_counts_misses_and_pairs_the_hop() {
        let s = |r: Option<f64>, l: Option<f64>| Sample {
            remote_ms: r,
            local_ms: l,
        };
        let samples = [
            s(Some(3.0), Some(1.0)),
            s(Some(5.0), Some(2.0)),
            s(None, Some(1.5)),
            s(Some(4.0), None),
        ];
        let sum = summarise(&samples);
        assert_eq!(sum.lines, 4);
        assert_eq!((sum.remote.n, sum.local.n, sum.hop.n), (3, 3, 2));
        assert_eq!(sum.remote.p50, Some(4.0));
        assert_eq!(sum.remote.max, Some(5.0));
        assert_eq!(sum.local.p50, Some(1.5));
        assert_eq!(sum.hop.p99, Some(3.0));
        let j: serde_json::Value = serde_json::from_str(&sum.json()).unwrap();
        assert_eq!(j["bench"], "partyline_latency");
        assert_eq!(j["lines"], 4);
        assert_eq!(j["received"], 3);
        assert_eq!(j["p50_ms"], 4.0);
        assert_eq!(j["local_echo_p50_ms"], 1.5);
        for key in ["p90_ms", "p99_ms", "max_ms", "local_echo_p99_ms"] {
            assert!(j[key].is_number(), "{key}");
        }
        assert!(sum.table().contains("3/4"));
        assert!(sum.table().contains("2.67×"));

        let none = summarise(&[s(None, None)]);
        let j: serde_json::Value = serde_json::from_str(&none.json()).unwrap();
        assert_eq!(j["received"], 0);
        assert!(j["p50_ms"].is_null() && j["local_echo_p99_ms"].is_null());
    }
}
