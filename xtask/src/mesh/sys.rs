//! What this process costs: CPU time and resident memory, from `/proc`
//! (Linux only; elsewhere the figures are `None`).

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every
/// Linux architecture that matters here; `getconf CLK_TCK` says so).
const CLOCK_TICKS: u64 = 100;

/// CPU time this process used so far, all threads, user plus system
/// (`utime + stime` of `/proc/self/stat`), to 10 ms.
pub(crate) fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields from the last ')'. Field 3 (state) is then index 0,
    // utime (field 14) index 11, stime (field 15) index 12.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / CLOCK_TICKS))
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`…), in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
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
            assert!(cpu_time().unwrap() >= before);
        }
    }
}
