//! Shared helpers of the end-to-end tests: real `micelio` processes on
//! 127.0.0.1, their output, and bounded waits. Every child is killed by
//! handle when its guard drops.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Longest wait for any one condition.
pub const WAIT: Duration = Duration::from_secs(30);

/// Short timers so that discovery converges in seconds.
pub const FAST: &str = "[network]\nexchange_interval = \"500ms\"\ndiscovery_interval = \"500ms\"\n\
keepalive_interval = \"1s\"\nidle_timeout = \"10s\"\n";

/// A running node and the lines it has printed.
pub struct Node {
    pub child: Child,
    pub rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    pub node_id: String,
    pub addr: String,
    pub ssh: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn pump(pipe: impl std::io::Read + Send + 'static, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_micelio"));
        cmd.arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .args(["--log-format", "text", "--log-level", "info"])
            .args(["--ssh-listen", "127.0.0.1:0"])
            .args(extra)
            .env("HOME", home)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("MICELIO_") {
                cmd.env_remove(name);
            }
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("micelio starts");
        let (tx, rx) = mpsc::channel();
        pump(child.stdout.take().expect("stdout"), tx.clone());
        pump(child.stderr.take().expect("stderr"), tx);
        let mut node = Node {
            child,
            rx,
            seen: Vec::new(),
            node_id: String::new(),
            addr: String::new(),
            ssh: String::new(),
        };
        let id_line = node.wait_for(|l| l.starts_with("node id"));
        node.node_id = id_line
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_owned();
        let peers_line = node.wait_for(|l| l.starts_with("peers "));
        node.addr = second_word(&peers_line);
        let ssh_line = node.wait_for(|l| l.starts_with("ssh "));
        node.ssh = second_word(&ssh_line);
        node
    }

    /// Waits (bounded) for a line satisfying `pred`, already seen or new.
    pub fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no matching line within {WAIT:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits until this node logs a connection to `other`.
    pub fn connected_to(&mut self, other: &str) {
        let other = other.to_owned();
        self.wait_for(move |l| l.contains("peer connected") && l.contains(&other));
    }

    /// Waits (bounded) for the process to exit by itself; returns its exit
    /// code and every line it printed.
    pub fn wait_exit(mut self) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                return (st.code(), std::mem::take(&mut self.seen));
            }
            assert!(
                Instant::now() < deadline,
                "did not exit by itself:\n{}",
                self.seen.join("\n")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then a bounded wait for a clean exit; returns every line the
    /// process printed.
    pub fn terminate(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                assert!(st.success(), "exit status {st}\n{}", self.seen.join("\n"));
                // The pipes close at exit: drain what is left, bounded.
                while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                return std::mem::take(&mut self.seen);
            }
            assert!(Instant::now() < deadline, "did not exit after SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn second_word(line: &str) -> String {
    line.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}
