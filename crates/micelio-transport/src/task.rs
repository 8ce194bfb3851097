//! Watched long-lived tasks: how a component tells its owner that its tasks
//! have ended, and why.
//!
//! A component (the peer manager here; gossip and the partyline above)
//! spawns each of its long-lived tasks through a [`TaskGroup`]. Every task
//! gets a watcher that awaits its join handle: a panic is logged once, with
//! its message, and recorded as the group's [`TaskExit::Failed`]; a task
//! that returns while the group's cancellation token is not cancelled has
//! ended by itself and is recorded as a failure too. Once every task has
//! returned after cancellation the group is [`TaskExit::Stopped`].
//! [`TaskGroup::closed`] resolves with the first of these, so that a
//! supervisor watches the component instead of polling it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, error};

/// How a component's long-lived tasks ended, as told by its `closed()`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskExit {
    /// Its owner stopped it (`shutdown()`), and every task returned.
    Stopped,
    /// A task panicked (the reason names it and carries the panic message),
    /// was aborted, or returned without being asked to.
    Failed(String),
}

impl std::fmt::Display for TaskExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stopped => f.write_str("stopped"),
            Self::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}

/// The long-lived tasks of one component, stopped by one cancellation
/// token, and how they ended. Clones share the group.
#[derive(Debug, Clone)]
pub struct TaskGroup {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cancel: CancellationToken,
    exit: watch::Sender<Option<TaskExit>>,
    /// Tasks that have not returned yet.
    live: AtomicUsize,
}

impl TaskGroup {
    /// A group whose tasks are asked to stop by `cancel`.
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                cancel,
                exit: watch::channel(None).0,
                live: AtomicUsize::new(0),
            }),
        }
    }

    /// The token that asks the group's tasks to stop.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    /// Spawns `task` (named `name` in reasons and logs, for example "the
    /// accept loop") and its watcher, in the current span. Returns the
    /// watcher's handle: it never fails, and it returns once `task` has
    /// ended and its end is recorded (a panic logged), so awaiting it is how
    /// an owner waits for the task.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(self.watched(name, task))
    }

    /// Like [`TaskGroup::spawn`], with the watcher tracked by `tracker`, so
    /// that `tracker.wait()` waits for `task` too.
    pub fn spawn_tracked<F>(
        &self,
        tracker: &TaskTracker,
        name: &'static str,
        task: F,
    ) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tracker.spawn(self.watched(name, task))
    }

    /// Spawns `task` and returns its watcher, to be spawned.
    fn watched<F>(&self, name: &'static str, task: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.live.fetch_add(1, Ordering::SeqCst);
        let handle = tokio::spawn(task.in_current_span());
        let inner = self.inner.clone();
        async move {
            let joined = handle.await;
            inner.ended(name, joined);
        }
        .in_current_span()
    }

    /// How the group ended, if it has.
    pub fn exit(&self) -> Option<TaskExit> {
        self.inner.exit.borrow().clone()
    }

    /// Resolves once the group has ended: every task returned after
    /// cancellation ([`TaskExit::Stopped`]), or one of them failed
    /// ([`TaskExit::Failed`], at once, while the others may still run). The
    /// future owns what it needs, so it can be moved into a watching task.
    ///
    /// Cancel safety: safe to cancel.
    pub fn closed(&self) -> impl Future<Output = TaskExit> + Send + 'static {
        let mut exit = self.inner.exit.subscribe();
        async move {
            match exit.wait_for(Option::is_some).await {
                Ok(ended) => ended.clone().unwrap_or(TaskExit::Stopped),
                // The sender lives in the group, which the watchers hold
                // until the last task has ended and been recorded.
                Err(_) => TaskExit::Stopped,
            }
        }
    }
}

impl Inner {
    /// Records the end of one task.
    fn ended(&self, name: &'static str, joined: Result<(), JoinError>) {
        let left = self.live.fetch_sub(1, Ordering::SeqCst) - 1;
        let failure = match joined {
            Ok(()) if self.cancel.is_cancelled() => None,
            Ok(()) => Some(format!("{name} ended by itself")),
            Err(e) if e.is_panic() => {
                let reason = format!("{name} {}", join_error_reason(e));
                error!("{reason}");
                Some(reason)
            }
            Err(e) if self.cancel.is_cancelled() => {
                drop(e);
                None
            }
            Err(e) => Some(format!("{name} {}", join_error_reason(e))),
        };
        self.exit.send_if_modified(|exit| match (&exit, failure) {
            (Some(_), _) => false,
            (None, Some(reason)) => {
                *exit = Some(TaskExit::Failed(reason));
                true
            }
            (None, None) if left == 0 => {
                *exit = Some(TaskExit::Stopped);
                true
            }
            (None, None) => false,
        });
    }
}

/// Why a task ended with a [`JoinError`]: "panicked: `message`" or "was
/// aborted".
pub fn join_error_reason(e: JoinError) -> String {
    if !e.is_panic() {
        return "was aborted".to_owned();
    }
    let panic = e.into_panic();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_owned());
    format!("panicked: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_reported_with_its_message_while_the_others_run() {
        let cancel = CancellationToken::new();
        let group = TaskGroup::new(cancel.clone());
        let steady = group.spawn("the steady task", {
            let cancel = cancel.clone();
            async move { cancel.cancelled().await }
        });
        let closed = group.closed();
        let flaky = group.spawn("the flaky task", async { panic!("boom") });
        assert_eq!(
            closed.await,
            TaskExit::Failed("the flaky task panicked: boom".to_owned())
        );
        flaky.await.unwrap();
        // A later clean stop does not hide the failure.
        cancel.cancel();
        steady.await.unwrap();
        assert_eq!(
            group.exit(),
            Some(TaskExit::Failed("the flaky task panicked: boom".to_owned()))
        );
    }

    #[tokio::test]
    async fn a_clean_stop_is_reported_once_every_task_returned() {
        let cancel = CancellationToken::new();
        let group = TaskGroup::new(cancel.clone());
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        group.spawn("the quick task", {
            let cancel = cancel.clone();
            async move { cancel.cancelled().await }
        });
        let slow = group.spawn("the slow task", async move {
            let _ = wait.await;
        });
        cancel.cancel();
        tokio::task::yield_now().await;
        assert_eq!(group.exit(), None, "one task still runs");
        release.send(()).unwrap();
        slow.await.unwrap();
        assert_eq!(group.closed().await, TaskExit::Stopped);
    }

    #[tokio::test]
    async fn a_task_that_returns_unasked_has_failed() {
        let group = TaskGroup::new(CancellationToken::new());
        group.spawn("the loop", async {});
        assert_eq!(
            group.closed().await,
            TaskExit::Failed("the loop ended by itself".to_owned())
        );
    }
}
