//! Shared helpers of the end-to-end tests: real `micelio` processes on
//! 127.0.0.1, their output, and bounded waits. Every child is killed by
//! handle when its guard drops.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use micelio_testkit::micelio::{command, second_word};
use micelio_testkit::process::Process;

pub mod ssh;

/// Longest wait for any one condition.
pub const WAIT: Duration = Duration::from_secs(30);

/// Short timers so that discovery converges in seconds.
pub const FAST: &str = "[network]\nexchange_interval = \"500ms\"\ndiscovery_interval = \"500ms\"\n\
keepalive_interval = \"1s\"\nidle_timeout = \"10s\"\n";

/// A running node and the lines it has printed; killed by handle when
/// dropped.
pub struct Node {
    pub process: Process,
    pub node_id: String,
    pub addr: String,
    pub ssh: String,
    /// The network namespace it runs in, if any.
    pub netns: Option<String>,
}

impl Node {
    pub fn start(home: &Path, data: &Path, config: &Path, extra: &[&str]) -> Node {
        Self::start_with_env(home, data, config, extra, &[])
    }

    /// As [`Node::start`], with extra environment variables.
    pub fn start_with_env(
        home: &Path,
        data: &Path,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        Self::start_bin(
            Path::new(env!("CARGO_BIN_EXE_micelio")),
            home,
            data,
            config,
            extra,
            env,
        )
    }

    /// As [`Node::start_with_env`], running the executable `bin` (another
    /// build, to compare with in the same run).
    pub fn start_bin(
        bin: &Path,
        home: &Path,
        data: &Path,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        Self::launch(command(bin, home, &[]), None, data, config, extra, env)
    }

    /// As [`Node::start`], inside the network namespace `netns` (through
    /// `ip netns exec`, which execs the node: the handle is the node's).
    pub fn start_in_netns(
        netns: &str,
        home: &Path,
        data: &Path,
        config: &Path,
        extra: &[&str],
    ) -> Node {
        let mut cmd = command(Path::new("ip"), home, &["netns", "exec", netns]);
        cmd.arg(env!("CARGO_BIN_EXE_micelio"));
        Self::launch(cmd, Some(netns.to_owned()), data, config, extra, &[])
    }

    fn launch(
        mut cmd: std::process::Command,
        netns: Option<String>,
        data: &Path,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        cmd.arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .args(["--log-format", "text", "--log-level", "info"])
            .args(["--ssh-listen", "127.0.0.1:0"])
            .args(extra)
            .envs(env.iter().copied());
        let mut node = Node {
            process: Process::spawn(cmd, "micelio"),
            node_id: String::new(),
            addr: String::new(),
            ssh: String::new(),
            netns,
        };
        let id_line = node.wait_for(|l| l.starts_with("node id"));
        node.node_id = id_line
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_owned();
        node.addr = second_word(&node.wait_for(|l| l.starts_with("peers ")));
        node.ssh = second_word(&node.wait_for(|l| l.starts_with("ssh ")));
        node
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Every line printed so far.
    pub fn seen(&mut self) -> Vec<String> {
        self.process.seen().to_vec()
    }

    /// Waits (bounded by [`WAIT`]) for a line satisfying `pred`, already
    /// seen or new.
    #[track_caller]
    pub fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        self.process.wait_for(WAIT, pred)
    }

    /// Waits until this node logs a connection to `other`.
    #[track_caller]
    pub fn connected_to(&mut self, other: &str) {
        let other = other.to_owned();
        self.wait_for(move |l| l.contains("peer connected") && l.contains(&other));
    }

    /// Waits (bounded) for the process to exit by itself; returns its exit
    /// code and every line it printed.
    #[track_caller]
    pub fn wait_exit(mut self) -> (Option<i32>, Vec<String>) {
        let status = self.process.wait_exit(WAIT);
        (status.code(), self.seen())
    }

    /// SIGTERM, then a bounded wait for a clean exit; returns every line the
    /// process printed.
    #[track_caller]
    pub fn terminate(self) -> Vec<String> {
        let (status, lines) = self.process.terminate(Duration::from_secs(8));
        assert!(
            status.success(),
            "exit status {status}\n{}",
            lines.join("\n")
        );
        lines
    }
}

/// Waits until the file at `path` holds `want` (`None`: absent), for at
/// most [`WAIT`].
#[track_caller]
#[allow(dead_code)] // not every test binary reads files
pub fn wait_file(path: &Path, want: Option<&str>) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = std::fs::read(path).ok();
        if got.as_deref() == want.map(str::as_bytes) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} holds {:?}, want {want:?}",
            path.display(),
            got.map(|g| String::from_utf8_lossy(&g).into_owned())
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
