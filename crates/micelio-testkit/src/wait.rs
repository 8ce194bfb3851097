//! Bounded waits: poll a condition until it holds or a deadline passes.
//!
//! A test waits for what it expects, never for a fixed time: the poll
//! interval only decides how soon a condition already true is noticed.

use std::time::{Duration, Instant};

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(10);

/// The default bound for any one condition in end-to-end tests.
pub const DEFAULT: Duration = Duration::from_secs(30);

/// Blocks until `cond` returns true, polling every [`POLL`].
///
/// # Panics
/// When `cond` is still false after `timeout`, with `what` in the message.
#[track_caller]
pub fn until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Blocks until `f` returns `Some`, polling every [`POLL`], and returns
/// the value.
///
/// # Panics
/// When `f` still returns `None` after `timeout`.
#[track_caller]
pub fn until_some<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Awaits until `cond` resolves to true, polling every [`POLL`] of tokio
/// time (so it works, and costs no wall time, under
/// `tokio::time::pause`).
///
/// Cancel safety: safe to drop at any await point.
///
/// # Panics
/// When `cond` is still false after `timeout` of tokio time.
pub async fn until_async<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Awaits until the synchronous `cond` returns true, polling every
/// [`POLL`] of tokio time: the form for conditions that read shared state
/// without awaiting (a manager's counters, a connection table).
///
/// Cancel safety: safe to drop at any await point.
///
/// # Panics
/// When `cond` is still false after `timeout` of tokio time.
pub async fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    until_async(timeout, what, || std::future::ready(cond())).await;
}

/// Awaits until `f` resolves to `Some`, polling every [`POLL`] of tokio
/// time, and returns the value.
///
/// Cancel safety: safe to drop at any await point.
///
/// # Panics
/// When `f` still resolves to `None` after `timeout` of tokio time.
pub async fn until_some_async<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_returns_once_true() {
        let mut n = 0;
        until(Duration::from_secs(5), "three polls", || {
            n += 1;
            n >= 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    #[should_panic(expected = "waiting until never")]
    fn until_panics_at_the_deadline() {
        until(Duration::from_millis(30), "never", || false);
    }

    #[test]
    fn until_some_returns_the_value() {
        let mut n = 0;
        let v = until_some(Duration::from_secs(5), "a value", || {
            n += 1;
            (n == 2).then_some(n * 10)
        });
        assert_eq!(v, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn until_async_runs_on_paused_time() {
        let start = tokio::time::Instant::now();
        until_async(
            Duration::from_secs(60),
            "ten seconds of tokio time",
            || async move { start.elapsed() >= Duration::from_secs(10) },
        )
        .await;
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_and_until_some_async_run_on_paused_time() {
        let start = tokio::time::Instant::now();
        eventually(Duration::from_secs(60), "five seconds", || {
            start.elapsed() >= Duration::from_secs(5)
        })
        .await;
        let at = until_some_async(Duration::from_secs(60), "seven seconds", || async move {
            let e = start.elapsed();
            (e >= Duration::from_secs(7)).then_some(e)
        })
        .await;
        assert!(at >= Duration::from_secs(7) && at < Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "waiting for nothing")]
    async fn until_some_async_panics_at_the_deadline() {
        until_some_async(Duration::from_secs(1), "nothing", || async { None::<u8> }).await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out")]
    async fn until_async_panics_at_the_deadline() {
        until_async(Duration::from_secs(1), "never", || async { false }).await;
    }
}
