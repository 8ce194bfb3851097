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
            assert!(cpu_time().unwrap() > before);
        }
    }
}
