//! The real OpenSSH client (`/usr/bin/ssh`) against a node: a throwaway
//! key, pinned host keys, bounded exec requests and interactive sessions.
//! A node started in a network namespace is reached from inside it.

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{Node, WAIT};

/// A throwaway client key and a known_hosts file for one test.
#[derive(Clone)]
pub struct Client {
    pub dir: PathBuf,
    pub key: PathBuf,
}

pub fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success());
}

impl Client {
    pub fn new(dir: &Path, name: &str) -> Client {
        let key = dir.join(name);
        keygen(&key);
        Client {
            dir: dir.to_owned(),
            key,
        }
    }

    pub fn public_line(&self) -> String {
        std::fs::read_to_string(self.key.with_extension("pub")).unwrap()
    }

    /// Allows this client on a node.
    pub fn authorize(&self, data_dir: &Path) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(data_dir.join("authorized_keys"))
            .unwrap();
        f.write_all(self.public_line().as_bytes()).unwrap();
    }

    /// `ssh` to a node, pinned to its host key, batch mode.
    pub fn ssh(&self, node: &Node, data_dir: &Path, user: &str) -> Command {
        self.ssh_at(&node.ssh, node.netns.as_deref(), data_dir, user)
    }

    /// `ssh` to the SSH address `ssh_addr` (inside `netns`, if any) of the
    /// node whose data dir is `data_dir`.
    pub fn ssh_at(
        &self,
        ssh_addr: &str,
        netns: Option<&str>,
        data_dir: &Path,
        user: &str,
    ) -> Command {
        let (host, port) = ssh_addr.rsplit_once(':').unwrap();
        let known = self
            .dir
            .join(format!("known_hosts_{}_{port}", netns.unwrap_or("host")));
        let host_pub = std::fs::read_to_string(data_dir.join("identity/node.pub")).unwrap();
        // Written aside and renamed: another thread may be reading it.
        let tmp = known
            .with_extension(format!("tmp{:?}", thread::current().id()).replace(['(', ')'], ""));
        std::fs::write(&tmp, format!("[{host}]:{port} {host_pub}")).unwrap();
        std::fs::rename(&tmp, &known).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/bin/ssh"]);
                c
            }
            None => Command::new("/usr/bin/ssh"),
        };
        cmd.args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .arg("-i")
        .arg(&self.key)
        .args(["-p", port])
        .arg(format!("{user}@{host}"))
        .stdin(Stdio::null());
        cmd
    }

    /// Runs one exec request, bounded.
    pub fn exec(&self, node: &Node, data_dir: &Path, user: &str, command: &str) -> Output {
        let mut cmd = self.ssh(node, data_dir, user);
        cmd.arg(command);
        run_bounded(cmd)
    }

    /// Runs `command` until `done` accepts what it printed (polling every
    /// 150 ms, for at most [`WAIT`]); returns that output.
    #[track_caller]
    #[allow(dead_code)] // not every test binary polls
    pub fn poll(
        &self,
        node: &Node,
        data_dir: &Path,
        user: &str,
        command: &str,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.exec(node, data_dir, user, command);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{command} never gave the expected answer; last: {text}"
            );
            thread::sleep(Duration::from_millis(150));
        }
    }

    /// As [`Client::exec`], by address (from another thread than the one
    /// holding the node).
    pub fn exec_at(
        &self,
        ssh_addr: &str,
        netns: Option<&str>,
        data_dir: &Path,
        user: &str,
        command: &str,
    ) -> Output {
        let mut cmd = self.ssh_at(ssh_addr, netns, data_dir, user);
        cmd.arg(command);
        run_bounded(cmd)
    }
}

pub fn run_bounded(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("ssh starts");
    // Read both pipes while it runs: a long answer fills a pipe's buffer.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Output {
                status,
                stdout: stdout.join().unwrap(),
                stderr: stderr.join().unwrap(),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ssh did not finish within {WAIT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// An interactive session: `ssh -tt` with piped stdin (so the node gets a
/// PTY request and the line editor) and captured output.
pub struct Tty {
    pub child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    name: String,
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tty {
    pub fn open(client: &Client, node: &Node, data_dir: &Path, user: &str) -> Tty {
        let tty = Self::spawn(client, node, data_dir, user, true);
        tty.wait_for("Type /help");
        tty
    }

    /// A session without a PTY: plain lines in and out, no banner.
    pub fn open_plain(client: &Client, node: &Node, data_dir: &Path, user: &str) -> Tty {
        Self::spawn(client, node, data_dir, user, false)
    }

    pub fn spawn(client: &Client, node: &Node, data_dir: &Path, user: &str, pty: bool) -> Tty {
        Self::spawn_cmd(client.ssh(node, data_dir, user), user, pty)
    }

    /// A session without a PTY, by address (see [`Client::ssh_at`]).
    pub fn open_plain_at(
        client: &Client,
        ssh_addr: &str,
        netns: Option<&str>,
        data_dir: &Path,
        user: &str,
    ) -> Tty {
        Self::spawn_cmd(client.ssh_at(ssh_addr, netns, data_dir, user), user, false)
    }

    fn spawn_cmd(mut cmd: Command, user: &str, pty: bool) -> Tty {
        if pty {
            cmd.arg("-tt");
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("ssh starts");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Tty {
            child,
            stdin,
            out,
            name: user.to_owned(),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let t = self.text();
            if t.contains(needle) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{} never saw {needle:?}; got:\n{t}",
                self.name
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    pub fn line(&mut self, line: &str) {
        self.send(format!("{line}\r").as_bytes());
    }

    pub fn exit_status(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(Instant::now() < deadline, "ssh session did not end");
            thread::sleep(Duration::from_millis(20));
        }
    }
}
