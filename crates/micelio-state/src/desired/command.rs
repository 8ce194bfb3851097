//! [`CommandReconciler`]: a reconciler that runs a program, configured as
//! `[[reconcile]] prefix = "…", command = ["…", …], timeout = "30s"`.
//!
//! The program is started directly (no shell: the key and the value never
//! become part of a command line) with, in its environment,
//! `MICELIO_ACTION` (`apply` or `remove`), `MICELIO_KEY`, `MICELIO_VALUE`
//! (empty for a remove) and `MICELIO_NODE_ID`, and the value on its
//! standard input. Exit status 0 is success, anything else an error whose
//! message is the status and the tail of the output (standard output and
//! error together, at most [`OUTPUT_TAIL`] bytes). At the time limit the
//! program's whole process group is killed.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;

use super::{Applied, Outcome, ReconcileFuture, Reconciler};

/// Bytes of a program's output kept for its message (the last ones).
pub const OUTPUT_TAIL: usize = 1024;
/// How long, after the program exited, its output is still read (a
/// process it left behind may hold the pipes open).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// How much longer than its own limit the node waits for the reconciler:
/// the program is killed at its limit and reported; this covers the kill.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Runs a program for each apply and remove. Clones share nothing
/// mutable.
#[derive(Debug, Clone)]
pub struct CommandReconciler {
    name: String,
    prefix: String,
    argv: Arc<[String]>,
    timeout: Duration,
    node_id: String,
}

impl CommandReconciler {
    /// A reconciler named `name` for the keys under `prefix`, running
    /// `argv` (program first) at most `timeout` each time, on the node
    /// `node_id` (hex, passed to the program). `None` if `argv` is empty.
    pub fn new(
        name: impl Into<String>,
        prefix: impl Into<String>,
        argv: Vec<String>,
        timeout: Duration,
        node_id: impl Into<String>,
    ) -> Option<Self> {
        if argv.is_empty() {
            return None;
        }
        Some(Self {
            name: name.into(),
            prefix: prefix.into(),
            argv: argv.into(),
            timeout,
            node_id: node_id.into(),
        })
    }

    fn run(&self, action: &'static str, key: &str, value: &str) -> ReconcileFuture {
        let me = self.clone();
        let key = key.to_owned();
        let value = value.to_owned();
        Box::pin(async move { me.execute(action, &key, &value).await })
    }

    async fn execute(&self, action: &'static str, key: &str, value: &str) -> Applied {
        if value.contains('\0') {
            return Applied::error("the value holds a NUL character");
        }
        let program = &self.argv[0];
        let mut cmd = Command::new(program);
        cmd.args(&self.argv[1..])
            .env("MICELIO_ACTION", action)
            .env("MICELIO_KEY", key)
            .env("MICELIO_VALUE", value)
            .env("MICELIO_NODE_ID", &self.node_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Applied::error(format!("cannot start {program}: {e}")),
        };
        let pid = child.id();
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut readers = tokio::task::JoinSet::new();
        if let Some(stdout) = child.stdout.take() {
            readers.spawn(collect(stdout, out.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.spawn(collect(stderr, out.clone()));
        }
        if let Some(mut stdin) = child.stdin.take() {
            let bytes = value.as_bytes().to_vec();
            // A program that does not read its input closes the pipe:
            // that is its business.
            readers.spawn(async move {
                let _ = stdin.write_all(&bytes).await;
            });
        }
        let status = tokio::select! {
            s = child.wait() => Some(s),
            () = tokio::time::sleep(self.timeout) => None,
        };
        let status = match status {
            Some(s) => s,
            None => {
                kill_group(pid);
                let _ = child.kill().await;
                readers.abort_all();
                let tail = tail_text(&out);
                return Applied::error(join(
                    &format!("timed out after {:?}, killed", self.timeout),
                    &tail,
                ));
            }
        };
        let _ = tokio::time::timeout(OUTPUT_GRACE, async {
            while readers.join_next().await.is_some() {}
        })
        .await;
        readers.abort_all();
        let tail = tail_text(&out);
        match status {
            Ok(s) if s.success() => Applied {
                outcome: Outcome::Ok,
                actual: (action == "apply").then(|| value.to_owned()),
                message: tail,
            },
            Ok(s) => {
                let how = match s.code() {
                    Some(code) => format!("exit status {code}"),
                    None => format!("ended by a signal ({s})"),
                };
                Applied::error(join(&how, &tail))
            }
            Err(e) => Applied::error(format!("waiting for {program}: {e}")),
        }
    }
}

/// `head: tail`, or `head` when there is no output.
fn join(head: &str, tail: &str) -> String {
    if tail.is_empty() {
        head.to_owned()
    } else {
        format!("{head}: {tail}")
    }
}

/// Kills (SIGKILL) the process group led by `pid`, a program started in a
/// group of its own (`process_group(0)`), so that what it started dies
/// with it. Nothing on platforms without process groups. Also used by
/// the plugin layer for its programs.
pub fn kill_group(pid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    #[cfg(not(unix))]
    let _ = pid;
}

/// Reads `from` to its end, keeping the last [`OUTPUT_TAIL`] bytes of
/// everything read into `into`.
async fn collect(mut from: impl AsyncRead + Unpin, into: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                // Short critical section, no await inside.
                let mut out = into.lock().unwrap_or_else(|p| p.into_inner());
                out.extend_from_slice(&buf[..n]);
                if out.len() > OUTPUT_TAIL {
                    let cut = out.len() - OUTPUT_TAIL;
                    out.drain(..cut);
                }
            }
        }
    }
}

/// The output kept, as text (invalid UTF-8 replaced), trimmed.
fn tail_text(out: &Mutex<Vec<u8>>) -> String {
    let out = out.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&out).trim().to_owned()
}

impl Reconciler for CommandReconciler {
    fn name(&self) -> &str {
        &self.name
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn timeout(&self) -> Duration {
        self.timeout + KILL_GRACE
    }

    fn apply(&self, key: &str, value: &str) -> ReconcileFuture {
        self.run("apply", key, value)
    }

    fn remove(&self, key: &str) -> ReconcileFuture {
        self.run("remove", key, "")
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration) -> CommandReconciler {
        CommandReconciler::new(
            "t",
            "",
            vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout,
            "ab",
        )
        .unwrap()
    }

    const T: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn the_value_arrives_byte_for_byte_in_the_environment_and_on_stdin() {
        let value = "it's \"quoted\"\n$(touch /tmp/pwned) `id` ; rm -rf / && echo * | $HOME";
        let r = sh(
            r#"[ "$MICELIO_ACTION" = apply ] || exit 9
               [ "$MICELIO_KEY" = "files/motd" ] || exit 8
               [ "$MICELIO_NODE_ID" = ab ] || exit 7
               input=$(cat; echo x); input=${input%x}
               [ "$input" = "$MICELIO_VALUE" ] || exit 6
               printf '%s' "$MICELIO_VALUE""#,
            T,
        );
        let got = r.apply("files/motd", value).await;
        assert_eq!(got.outcome, Outcome::Ok, "{got:?}");
        assert_eq!(got.actual.as_deref(), Some(value));
        assert_eq!(got.message, value.trim());
    }

    #[tokio::test]
    async fn a_failure_reports_its_status_and_output_tail() {
        let r = sh("echo starting; echo 'disk full' >&2; exit 3", T);
        let got = r.apply("k", "v").await;
        assert_eq!(got.outcome, Outcome::Error);
        assert!(
            got.message.starts_with("exit status 3: "),
            "{}",
            got.message
        );
        assert!(got.message.contains("disk full"), "{}", got.message);
        let r = sh("yes 0123456789 | head -c 100000; exit 1", T);
        let got = r.apply("k", "v").await;
        assert!(
            got.message.len() <= OUTPUT_TAIL + 20,
            "{}",
            got.message.len()
        );
    }

    #[tokio::test]
    async fn a_remove_runs_with_its_action_and_no_value() {
        let r = sh(
            r#"[ "$MICELIO_ACTION" = remove ] && [ -z "$MICELIO_VALUE" ]"#,
            T,
        );
        let got = r.remove("k").await;
        assert_eq!(got.outcome, Outcome::Ok, "{got:?}");
        assert_eq!(got.actual, None);
    }

    #[tokio::test]
    async fn a_hanging_program_and_its_children_are_killed_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let r = sh(&script, Duration::from_millis(500));
        let got = r.apply("k", "v").await;
        assert_eq!(got.outcome, Outcome::Error);
        assert!(
            got.message.starts_with("timed out after 500ms"),
            "{}",
            got.message
        );
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let proc = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
        micelio_testkit::wait::until(Duration::from_secs(5), "the child is gone", || {
            // Gone, or a zombie waiting for init to reap it.
            std::fs::read_to_string(proc.join("stat"))
                .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
        });
    }

    #[tokio::test]
    async fn a_missing_program_and_a_nul_are_errors() {
        let r = CommandReconciler::new("t", "", vec!["/nonexistent/x".into()], T, "ab").unwrap();
        let got = r.apply("k", "v").await;
        assert!(
            got.message.starts_with("cannot start /nonexistent/x"),
            "{}",
            got.message
        );
        let got = sh("exit 0", T).apply("k", "a\0b").await;
        assert_eq!(got.outcome, Outcome::Error);
        assert!(CommandReconciler::new("t", "", vec![], T, "ab").is_none());
    }
}
