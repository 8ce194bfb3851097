//! What this process costs: CPU time (`CLOCK_PROCESS_CPUTIME_ID`, every
//! thread, to the nanosecond) and resident memory (`/proc`, Linux only;
//! elsewhere the memory figures are `None`).

use std::time::Duration;

/// CPU time this process used so far, all threads (those that ended
/// included), user plus system: `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`.
pub(crate) fn cpu_time() -> Option<Duration> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    let secs = u64::try_from(t.tv_sec).ok()?;
    let nanos = u32::try_from(t.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`…), in KiB.
fn status_kib(field: &str) -> Option<u64> {
    status_field("/proc/self/status", field)
}

/// A numeric field of a `/proc/…/status` file (a trailing `kB` ignored).
fn status_field(path: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Resident memory of this process now (`VmRSS`), in KiB.
pub(crate) fn rss_kib() -> Option<u64> {
    status_kib("VmRSS")
}

/// Threads of this process now (`Threads` of `/proc/self/status`).
pub(crate) fn threads() -> Option<u64> {
    status_kib("Threads")
}

/// What another process costs now: resident memory (KiB), threads, CPU
/// time so far (user + system of every thread, at clock-tick resolution,
/// from `/proc/<pid>/stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProcSample {
    /// `VmRSS`, KiB.
    pub(crate) rss_kib: u64,
    /// `Threads`.
    pub(crate) threads: u64,
    /// `utime + stime`.
    pub(crate) cpu: Duration,
}

/// Samples process `pid` (Linux only; `None` elsewhere or once it exited).
pub(crate) fn sample(pid: u32) -> Option<ProcSample> {
    let status = format!("/proc/{pid}/status");
    let rss_kib = status_field(&status, "VmRSS")?;
    let threads = status_field(&status, "Threads")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the file are 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let cpu = Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz);
    Some(ProcSample {
        rss_kib,
        threads,
        cpu,
    })
}

/// Sends SIGUSR1 to process `pid` (a child of the harness, by its id).
pub(crate) fn signal_usr1(pid: u32) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("bad pid"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR1).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_figures_are_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_kib().is_some_and(|k| k > 0));
            assert!(threads().is_some_and(|t| t >= 1));
            let before = cpu_time().unwrap();
            let mut x = 0u64;
            for i in 0..50_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            assert!(cpu_time().unwrap() > before);
            let me = sample(std::process::id()).unwrap();
            assert!(me.rss_kib > 0 && me.threads >= 1 && me.cpu > Duration::ZERO);
        }
    }
}
