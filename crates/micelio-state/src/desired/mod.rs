//! Desired state: operators declare, for the nodes a [`Selector`] matches,
//! the value a key should have; every node works out its own effective
//! desired map, hands it to the [`Reconciler`]s that claim the keys, and
//! publishes what it actually applied; any node can then list every node's
//! drift.
//!
//! In the map:
//! - `<author>/desired/<selector>/<key>`: a [`DesiredRecord`] (JSON), the
//!   value the author wants for `key` on the nodes `selector` matches, or a
//!   removal marker written by `/undesire`, with who set it. An author can
//!   only write its own namespace, so a removal is a newer entry that wins
//!   the LWW order over every author's entry of that selector and key; it
//!   is kept (it is the audit trail of the removal).
//! - `<node>/actual/<key>`: an [`ActualRecord`] (JSON), what `node`'s
//!   reconciler reported for `key`: the value, `ok`, `error` or
//!   `unclaimed`, a message, a time.
//!
//! Resolution ([`Rules`]): for one selector and key, the entry highest in
//! the LWW order (Lamport timestamp, then author) is the rule, unless it is
//! a removal. For one node and key, of the rules whose selector matches the
//! node, the most specific wins ([`Selector::specificity`]), and equal
//! specificity goes to the LWW order. When `admins` is set, only entries of
//! those authors count.
//!
//! [`Desired`] is the task that does this on a node; [`CommandReconciler`]
//! is the built-in reconciler that runs a program.
//!
//! [`Selector`]: crate::selector::Selector
//! [`Selector::specificity`]: crate::selector::Selector::specificity

mod command;
mod engine;
mod record;
mod resolve;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use command::{CommandReconciler, OUTPUT_TAIL, kill_group};
pub use engine::{
    Desired, DesiredConfig, DesiredError, DesiredStats, KeyState, MAX_RUNNING, RETRY_MAX, RETRY_MIN,
};
pub use record::{
    ACTUAL_PREFIX, ActualRecord, ActualStatus, Author, DESIRED_PREFIX, DesiredRecord, MAX_KEY_LEN,
    MAX_MESSAGE_LEN, RecordError, check_key,
};
pub use resolve::{
    DriftItem, DriftKind, Effective, Listed, MAX_RULES, NodeDrift, Rule, Rules, drift,
};

/// The default time limit of one apply or remove.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether an apply or remove succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Ok,
    /// Failed; the node retries with backoff.
    Error,
}

/// What a reconciler reports for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Whether it worked.
    pub outcome: Outcome,
    /// The value now in place (for an apply that worked, normally the
    /// desired value), if the reconciler knows it.
    pub actual: Option<String>,
    /// A message for operators (a command's output tail, an error).
    pub message: String,
}

impl Applied {
    /// Success with `actual` in place.
    pub fn ok(actual: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Ok,
            actual: Some(actual.into()),
            message: String::new(),
        }
    }

    /// Failure with `message`.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Error,
            actual: None,
            message: message.into(),
        }
    }
}

/// The future of an apply or a remove.
pub type ReconcileFuture = Pin<Box<dyn Future<Output = Applied> + Send + 'static>>;

/// Makes the desired value of the keys it claims real on this node.
///
/// The node calls it from a task of its own, one key at a time per key, at
/// most [`MAX_RUNNING`] keys at once, and drops the future at
/// [`Reconciler::timeout`] (reporting an error). Work that blocks (files,
/// processes waited on synchronously) belongs in
/// `tokio::task::spawn_blocking` inside the future. Both calls should be
/// idempotent: after a restart, or after an error, the node calls again.
///
/// ```
/// use micelio_state::desired::{Applied, ReconcileFuture, Reconciler};
///
/// /// Remembers the value in memory (a real one would write a file).
/// struct Echo;
///
/// impl Reconciler for Echo {
///     fn name(&self) -> &str { "echo" }
///     fn prefix(&self) -> &str { "echo/" }
///     fn apply(&self, _key: &str, value: &str) -> ReconcileFuture {
///         let value = value.to_owned();
///         Box::pin(async move { Applied::ok(value) })
///     }
///     fn remove(&self, _key: &str) -> ReconcileFuture {
///         Box::pin(async { Applied::ok("") })
///     }
/// }
/// ```
pub trait Reconciler: Send + Sync + 'static {
    /// A short name for logs and `/drift`.
    fn name(&self) -> &str;
    /// The keys it claims: every key that starts with this prefix (the
    /// longest claiming prefix wins).
    fn prefix(&self) -> &str;
    /// How long one call may take.
    fn timeout(&self) -> Duration {
        DEFAULT_TIMEOUT
    }
    /// Puts `value` in place for `key`.
    fn apply(&self, key: &str, value: &str) -> ReconcileFuture;
    /// Undoes `key`: it is no longer desired on this node.
    fn remove(&self, key: &str) -> ReconcileFuture;
}
