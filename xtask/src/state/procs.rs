//! Real `micelio` processes for the state benchmarks: a fleet on
//! 127.0.0.1 that logs its state writes as JSON, an ssh client for its
//! partylines, and the log timestamps of every write (acknowledged at its
//! origin, accepted elsewhere), so that latencies are read from one clock
//! without counting ssh's own time.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

use super::{Args, progress};

/// One log event of a process: (process, message, key, when).
type Logged = (usize, String, String, SystemTime);

/// The log messages read: a state write at its origin and elsewhere, and
/// a reconciler's start and success (the desired-state task's).
const MESSAGES: [&str; 4] = [
    "state write acknowledged",
    "state entry accepted",
    "reconciling",
    "applied",
];

/// A line of a JSON log with one of [`MESSAGES`]: its message, key and
/// timestamp.
fn parse_state_line(line: &str) -> Option<(String, String, SystemTime)> {
    if !MESSAGES
        .iter()
        .any(|m| line.contains(&format!("\"message\":\"{m}\"")))
    {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    let message = fields.get("message")?.as_str()?;
    if !MESSAGES.contains(&message) {
        return None;
    }
    let key = fields.get("key")?.as_str()?.to_owned();
    let at = crate::mesh::parse_rfc3339(v.get("timestamp")?.as_str()?)?;
    Some((message.to_owned(), key, at))
}

/// When one key was written: its origin's acknowledgement and, per other
/// process, the first acceptance.
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) acked: Option<SystemTime>,
    /// The process that acknowledged it (its author).
    pub(super) acked_by: Option<usize>,
    pub(super) accepted: HashMap<usize, SystemTime>,
}

/// A running fleet; dropping it kills every process.
pub(super) struct Procs {
    pub(super) n: usize,
    children: crate::mesh::Children,
    rx: Receiver<Logged>,
    sshs: Vec<String>,
    key_file: PathBuf,
    /// Full key → when it was written where.
    pub(super) seen: HashMap<String, Seen>,
    /// (process, desired key) → when its reconciler started and when it
    /// reported success.
    pub(super) runs: HashMap<(usize, String), (Option<SystemTime>, Option<SystemTime>)>,
    _dir: tempfile::TempDir,
}

impl Procs {
    /// Starts `n` processes of the release build, each bootstrapping from
    /// up to three earlier ones, one runtime thread each, with the config
    /// file `config(i, dir)` writes (if any).
    pub(super) fn start(
        root: &Path,
        args: &Args,
        n: usize,
        config: impl Fn(usize, &Path) -> anyhow::Result<Option<PathBuf>>,
    ) -> anyhow::Result<Self> {
        progress(args, "procs: building the release micelio binary");
        let bin = crate::mesh::build_binary(root, args.json_only)?;
        let dir = tempfile::tempdir()?;
        let key_file = dir.path().join("bench_key");
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"])
            .arg(&key_file)
            .status()
            .context("ssh-keygen")?;
        if !st.success() {
            bail!("ssh-keygen failed");
        }
        let public = std::fs::read_to_string(key_file.with_extension("pub"))?;
        let mut children = crate::mesh::Children(Vec::new());
        let (tx, rx) = channel::<Logged>();
        let mut peers: Vec<String> = Vec::new();
        let mut sshs: Vec<String> = Vec::new();
        let mut rng = SmallRng::seed_from_u64(args.seed);
        for i in 0..n {
            let data = dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&data)?;
            std::fs::write(data.join("authorized_keys"), &public)?;
            let mut cmd = micelio_testkit::micelio::command(&bin, dir.path(), &[]);
            if let Some(file) = config(i, dir.path())? {
                cmd.arg("--config").arg(file);
            }
            cmd.arg("--data-dir")
                .arg(&data)
                .args(["--name", &format!("bench-{i}")])
                .args(["--listen", "127.0.0.1:0", "--ssh-listen", "127.0.0.1:0"])
                .args([
                    "--log-format",
                    "json",
                    "--log-level",
                    "info,micelio_state=debug",
                ])
                .env("MICELIO_NETWORK__EXCHANGE_INTERVAL", "1s")
                .env("MICELIO_NETWORK__DISCOVERY_INTERVAL", "1s")
                .env("MICELIO_NETWORK__MAX_PEERS", "8")
                // One runtime thread each, as `mesh --transport tcp
                // --threads 1` measures chat: 50 processes share 2 cores.
                .env("MICELIO_NODE__WORKER_THREADS", "1");
            if i > 0 {
                let mut boot: Vec<String> = (0..3.min(i))
                    .map(|_| peers[rng.random_range(0..i)].clone())
                    .collect();
                boot.sort();
                boot.dedup();
                cmd.arg("--bootstrap").arg(boot.join(","));
            }
            let (stdout, stderr) = children.spawn_piped(cmd, &format!("process {i}"))?;
            let (addr_tx, addr_rx) = channel();
            std::thread::spawn(move || {
                let (mut peer, mut ssh) = (None, None);
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    let mut words = line.split_whitespace();
                    match (words.next(), words.next()) {
                        (Some("peers"), Some(a)) => peer = Some(a.to_owned()),
                        (Some("ssh"), Some(a)) => ssh = Some(a.to_owned()),
                        _ => {}
                    }
                    if let (Some(p), Some(s)) = (&peer, &ssh) {
                        let _ = addr_tx.send((p.clone(), s.clone()));
                        peer = None;
                        ssh = None;
                    }
                }
            });
            let tx = tx.clone();
            let tail: Arc<Mutex<Vec<String>>> = Arc::default();
            let last_words = tail.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    match parse_state_line(&line) {
                        Some((message, key, at)) => {
                            if tx.send((i, message, key, at)).is_err() {
                                break;
                            }
                        }
                        None => {
                            if let Ok(mut t) = last_words.lock()
                                && t.len() < 20
                            {
                                t.push(line);
                            }
                        }
                    }
                }
            });
            let Ok((peer, ssh)) = addr_rx.recv_timeout(Duration::from_secs(30)) else {
                std::thread::sleep(Duration::from_millis(300));
                let said = tail.lock().map(|t| t.join("\n")).unwrap_or_default();
                bail!("process {i} printed no addresses; its first log lines:\n{said}");
            };
            peers.push(peer);
            sshs.push(ssh);
        }
        progress(
            args,
            &format!("procs: {n} processes started; waiting for the mesh"),
        );
        let mut procs = Self {
            n,
            children,
            rx,
            sshs,
            key_file,
            seen: HashMap::new(),
            runs: HashMap::new(),
            _dir: dir,
        };
        procs.wait_meshed()?;
        Ok(procs)
    }

    /// Reads the log events that arrived so far into `seen`.
    pub(super) fn drain(&mut self) {
        while let Ok((i, message, key, at)) = self.rx.try_recv() {
            if message == "reconciling" || message == "applied" {
                let run = self.runs.entry((i, key)).or_default();
                if message == "reconciling" {
                    run.0 = Some(at);
                } else {
                    run.1 = Some(at);
                }
                continue;
            }
            let slot = self.seen.entry(key).or_default();
            if message == "state write acknowledged" {
                slot.acked = Some(at);
                slot.acked_by = Some(i);
            } else {
                slot.accepted.entry(i).or_insert(at);
            }
        }
    }

    /// The full key (`<node>/<sub>`) that ends in `/<sub>` and has been
    /// seen, if any.
    pub(super) fn find(&self, sub: &str) -> Option<(&String, &Seen)> {
        let tail = format!("/{sub}");
        self.seen.iter().find(|(key, _)| key.ends_with(&tail))
    }

    /// Runs `command` on process `i`'s partyline (exec mode) and returns
    /// what it printed; an error if it exits non-zero.
    pub(super) fn ssh(&self, i: usize, command: &str) -> anyhow::Result<String> {
        let out =
            micelio_testkit::ssh::exec_command(&self.key_file, &self.sshs[i], "bench", command)
                .context("ssh address")?
                .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("ssh {command:?} on process {i}: {text}");
        }
        Ok(text)
    }

    /// Polls the log until `done` holds, for at most `within`; whether it
    /// did.
    pub(super) fn wait(&mut self, within: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            self.drain();
            if done(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Writes until one write reaches every process (the mesh is up), then
    /// lets it settle for 3 s.
    fn wait_meshed(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        let n = self.n;
        for warm in 0.. {
            let k = format!("warmup/{warm}");
            self.ssh(0, &format!("/set {k} x"))?;
            let everyone = self.wait(Duration::from_secs(5), |p| {
                p.find(&k).is_some_and(|(_, s)| s.accepted.len() >= n - 1)
            });
            if everyone {
                break;
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("the {n} processes did not mesh within 120 s");
            }
        }
        std::thread::sleep(Duration::from_secs(3));
        Ok(())
    }

    /// Kills every process.
    pub(super) fn stop(self) {
        drop(self.children);
    }
}

/// `procs`: state write → visible on every process.
pub(super) fn procs(root: &Path, args: &Args) -> anyhow::Result<()> {
    let n = args.procs.max(2);
    let mut fleet = Procs::start(root, args, n, |_, _| Ok(None))?;
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let writes = args.writes.min(50);
    let mut lat = Vec::new();
    let mut missing = 0;
    for k in 0..writes {
        let i = rng.random_range(0..n);
        let sub = format!("bench/{k}");
        let value = String::from_utf8_lossy(&super::value(k)).into_owned();
        fleet.ssh(i, &format!("/set {sub} {value}"))?;
        match write_visible(&mut fleet, &sub) {
            Some(d) => lat.push(super::ms(d)),
            None => missing += 1,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fleet.stop();
    let (p50, p90, p99) = super::pcts(lat.clone());
    let row = serde_json::json!({
        "bench": "state_latency", "transport": "tcp", "processes": n, "writes": writes,
        "visible_everywhere": lat.len(), "missing": missing,
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
    });
    let table = format!(
        "state write → visible on all {n} processes (TCP, Noise): p50 {} p90 {} p99 {} ms ({} of {writes} everywhere)\n",
        super::cell(p50),
        super::cell(p90),
        super::cell(p99),
        lat.len()
    );
    super::emit(args, &row, &table);
    Ok(())
}

/// Time from the origin's acknowledgement of the write of `sub` until the
/// last other process accepted it (waits up to 10 s).
pub(super) fn write_visible(fleet: &mut Procs, sub: &str) -> Option<Duration> {
    let n = fleet.n;
    let mut got = None;
    fleet.wait(Duration::from_secs(10), |p| {
        if let Some((_, s)) = p.find(sub)
            && let Some(acked) = s.acked
            && s.accepted.len() >= n - 1
        {
            let last = s.accepted.values().max().copied().unwrap_or(acked);
            got = Some(last.duration_since(acked).unwrap_or_default());
            return true;
        }
        false
    });
    got
}
