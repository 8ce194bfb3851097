//! Running the node until SIGINT or SIGTERM, within a bounded grace period.
//!
//! The first signal cancels the node's [`CancellationToken`]; the node then
//! has [`GRACE_PERIOD`] to return. A second signal, or the end of the grace
//! period, stops waiting and reports an error (exit status 1).

use std::future::Future;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

/// How long the node may take to stop after the first signal.
pub(crate) const GRACE_PERIOD: Duration = Duration::from_secs(5);

/// Starts listening for SIGINT and SIGTERM; each one received is sent, by
/// name, on the returned channel. Must be called inside the runtime.
///
/// # Errors
/// If a signal handler cannot be installed.
pub(crate) fn listen_for_signals() -> anyhow::Result<mpsc::Receiver<&'static str>> {
    let mut sigint = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = sigint.recv() => "SIGINT",
                Some(()) = sigterm.recv() => "SIGTERM",
                else => break,
            };
            if tx.send(name).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Spawns `node` with a fresh cancellation token and supervises it: returns
/// its result if it ends by itself; on the first message from `signals`,
/// cancels the token and waits up to `grace` for it to return.
///
/// # Errors
/// The node's own error, a panic in the node, a node that outlives `grace`,
/// or a second signal while waiting.
pub(crate) async fn supervise<F, Fut>(
    node: F,
    mut signals: mpsc::Receiver<&'static str>,
    grace: Duration,
) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let shutdown = CancellationToken::new();
    let mut task = tokio::spawn(node(shutdown.clone()));

    let signal = tokio::select! {
        joined = &mut task => return outcome(joined),
        Some(signal) = signals.recv() => signal,
    };
    tracing::info!(signal, grace = %humantime::format_duration(grace), "shutting down");
    shutdown.cancel();

    tokio::select! {
        joined = &mut task => {
            let result = outcome(joined);
            if result.is_ok() {
                tracing::info!("shutdown complete");
            }
            result
        }
        () = tokio::time::sleep(grace) => {
            task.abort();
            Err(anyhow!(
                "the node did not stop within {} of {signal}",
                humantime::format_duration(grace)
            ))
        }
        Some(second) = signals.recv() => {
            task.abort();
            Err(anyhow!("{second} received while shutting down; stopped without waiting"))
        }
    }
}

fn outcome(joined: Result<anyhow::Result<()>, JoinError>) -> anyhow::Result<()> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(anyhow!("the node panicked")),
        Err(e) => Err(anyhow!("the node task failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_millis(200);

    async fn cooperative(shutdown: CancellationToken) -> anyhow::Result<()> {
        shutdown.cancelled().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_signal_stops_a_cooperative_node() {
        let (tx, rx) = mpsc::channel(4);
        tx.send("SIGTERM").await.unwrap();
        supervise(cooperative, rx, GRACE).await.unwrap();
    }

    #[tokio::test]
    async fn a_node_that_ignores_the_signal_is_abandoned_after_the_grace_period() {
        let (tx, rx) = mpsc::channel(4);
        tx.send("SIGINT").await.unwrap();
        let stubborn = |_shutdown| std::future::pending::<anyhow::Result<()>>();
        let err = supervise(stubborn, rx, GRACE).await.unwrap_err();
        assert!(err.to_string().contains("did not stop"), "{err}");
    }

    #[tokio::test]
    async fn a_second_signal_stops_waiting() {
        let (tx, rx) = mpsc::channel(4);
        tx.send("SIGINT").await.unwrap();
        tx.send("SIGINT").await.unwrap();
        let stubborn = |_shutdown| std::future::pending::<anyhow::Result<()>>();
        let err = supervise(stubborn, rx, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("while shutting down"), "{err}");
    }

    #[tokio::test]
    async fn a_failing_node_reports_its_error() {
        let (_tx, rx) = mpsc::channel(4);
        let failing = |_shutdown| async { Err(anyhow!("cannot bind")) };
        let err = supervise(failing, rx, GRACE).await.unwrap_err();
        assert_eq!(err.to_string(), "cannot bind");
    }

    #[tokio::test]
    async fn a_panicking_node_is_an_error() {
        let (_tx, rx) = mpsc::channel(4);
        let panicking = |_shutdown| async { panic!("boom") };
        let err = supervise(panicking, rx, GRACE).await.unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
    }
}
