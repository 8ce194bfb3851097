//! Real child processes under a guard: their output collected line by line,
//! bounded waits on it, and a kill by handle when the guard drops.

use std::io::{BufRead as _, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A running child whose stdout and stderr lines arrive on one channel.
///
/// Dropping it kills the child (by its handle, never by name) and reaps
/// it, so no failed assertion leaves a process behind.
#[derive(Debug)]
pub struct Process {
    child: Child,
    lines: mpsc::Receiver<(Stream, String)>,
    seen: Vec<String>,
    stderr: Vec<String>,
    what: String,
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// No line matched in time: see [`Process::try_wait_for`].
#[derive(Debug, Clone)]
pub struct NoLine {
    /// The process, as named at [`Process::spawn`].
    pub what: String,
    /// How long it waited.
    pub timeout: Duration,
    /// Whether the child closed its output (exited) before a line matched.
    pub closed: bool,
    /// The last lines it printed (at most [`NoLine::TAIL`]).
    pub tail: Vec<String>,
}

impl NoLine {
    /// How many of the last lines are kept.
    pub const TAIL: usize = 40;
}

impl std::fmt::Display for NoLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = if self.closed {
            "before it closed its output"
        } else {
            "in time"
        };
        write!(
            f,
            "{}: no matching line within {:?} ({why}); its last lines:\n{}",
            self.what,
            self.timeout,
            self.tail.join("\n")
        )
    }
}

impl std::error::Error for NoLine {}

/// The result of a command run to completion.
#[derive(Debug)]
pub struct Output {
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

fn pump(pipe: impl Read + Send + 'static, stream: Stream, tx: mpsc::Sender<(Stream, String)>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send((stream, line)).is_err() {
                break;
            }
        }
    });
}

fn read_all(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

impl Process {
    /// Starts `cmd` with stdin closed and stdout and stderr piped into the
    /// line channel; `what` names it in failure messages.
    ///
    /// # Panics
    /// When the command cannot be started.
    #[track_caller]
    pub fn spawn(mut cmd: Command, what: &str) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            pump(out, Stream::Stdout, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            pump(err, Stream::Stderr, tx);
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
            stderr: Vec::new(),
            what: what.to_owned(),
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Every line received so far (stdout and stderr interleaved as they
    /// arrived).
    pub fn seen(&mut self) -> &[String] {
        self.drain();
        &self.seen
    }

    /// The lines received so far from stderr alone.
    pub fn seen_stderr(&mut self) -> &[String] {
        self.drain();
        &self.stderr
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.record(line);
        }
    }

    fn record(&mut self, (stream, line): (Stream, String)) {
        if stream == Stream::Stderr {
            self.stderr.push(line.clone());
        }
        self.seen.push(line);
    }

    /// Waits up to `timeout` for a line satisfying `pred`, already seen or
    /// new, and returns it.
    ///
    /// # Panics
    /// When no such line comes in time (or the child closed its output),
    /// with everything it printed.
    #[track_caller]
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        match self.try_wait_for(timeout, pred) {
            Ok(line) => line,
            Err(e) => panic!("{e}; output so far:\n{}", self.seen.join("\n")),
        }
    }

    /// Like [`wait_for`](Self::wait_for), but returns an error (with the
    /// last lines printed) instead of panicking, for harnesses that report
    /// failures as values.
    ///
    /// # Errors
    /// [`NoLine`] when no matching line came within `timeout`, or the child
    /// closed its output first.
    pub fn try_wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, NoLine> {
        self.drain();
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return Ok(l.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(item) => {
                    let line = item.1.clone();
                    self.record(item);
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(e) => {
                    let from = self.seen.len().saturating_sub(NoLine::TAIL);
                    return Err(NoLine {
                        what: self.what.clone(),
                        timeout,
                        closed: matches!(e, mpsc::RecvTimeoutError::Disconnected),
                        tail: self.seen[from..].to_vec(),
                    });
                }
            }
        }
    }

    /// Sends `signal` (for example `"TERM"`, `"INT"`, `"STOP"`) to the child.
    ///
    /// # Panics
    /// When `kill(1)` cannot be run or fails.
    #[track_caller]
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(
            status.success(),
            "kill -{signal} {} failed",
            self.child.id()
        );
    }

    /// Waits up to `timeout` for the child to exit, then drains what it
    /// printed (bounded), and returns its status.
    ///
    /// # Panics
    /// When it is still running after `timeout` (it is then killed).
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The pipes close at exit: drain what is left, bounded.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.record(line);
                }
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {timeout:?}; output:\n{}",
                    self.what,
                    self.seen.join("\n")
                );
            }
            thread::sleep(crate::wait::POLL);
        }
    }

    /// SIGTERM, then a bounded wait for the exit; returns the status and
    /// every line the process printed.
    #[track_caller]
    pub fn terminate(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        self.signal("TERM");
        let status = self.wait_exit(timeout);
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion with stdin closed, killing it after `timeout`.
///
/// # Panics
/// When it cannot be started or does not finish in time.
#[track_caller]
pub fn run(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the command starts");
    let stdout = child.stdout.take().map(read_all);
    let stderr = child.stderr.take().map(read_all);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the command did not exit within {timeout:?}");
        }
        thread::sleep(crate::wait::POLL);
    };
    let join =
        |h: Option<thread::JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn lines_from_both_pipes_are_seen() {
        let mut p = Process::spawn(sh("echo one; echo two >&2; exec sleep 30"), "sh");
        p.wait_for(Duration::from_secs(10), |l| l == "one");
        p.wait_for(Duration::from_secs(10), |l| l == "two");
        assert_eq!(p.seen_stderr(), ["two"]);
        let (status, lines) = p.terminate(Duration::from_secs(10));
        assert!(!status.success(), "killed by SIGTERM");
        assert!(lines.contains(&"one".to_owned()));
    }

    #[test]
    fn a_dropped_guard_kills_the_child() {
        let p = Process::spawn(sh("sleep 30"), "sleeper");
        let pid = p.id();
        drop(p);
        let alive = Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!alive.success(), "process {pid} still alive");
    }

    #[test]
    #[should_panic(expected = "no matching line")]
    fn wait_for_fails_when_the_output_ends() {
        let mut p = Process::spawn(sh("echo only"), "short");
        p.wait_for(Duration::from_secs(10), |l| l == "never");
    }

    #[test]
    fn try_wait_for_reports_a_closed_output_with_its_tail() {
        let mut p = Process::spawn(sh("echo last words"), "short");
        let e = p
            .try_wait_for(Duration::from_secs(10), |l| l == "never")
            .unwrap_err();
        assert!(e.closed);
        assert_eq!(e.tail, ["last words"]);
        assert!(e.to_string().contains("before it closed its output"));
    }

    #[test]
    fn run_collects_output_and_status() {
        let out = run(
            sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(10),
        );
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
    }
}
