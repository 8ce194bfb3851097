//! Test support shared by the whole micelio workspace.
//!
//! Every crate's tests and the xtask benchmark harness used to carry their
//! own copy of these helpers; they live here once:
//!
//! - [`wait`]: bounded waits for a condition, blocking ([`wait::until`]) or
//!   async on tokio time ([`wait::until_async`], [`wait::eventually`],
//!   [`wait::until_some_async`]), that fail with a message instead of
//!   hanging;
//! - [`process`]: real child processes whose output lines are collected
//!   as they come, waited on with a bound, and killed by handle when the
//!   guard drops, pass or fail ([`process::Process`]);
//! - [`micelio`]: the `micelio` command line of a test node, isolated from
//!   the caller's home and `MICELIO_…` environment;
//! - [`ssh`]: the OpenSSH client's exec request to a node on loopback.
//!
//! It depends on no micelio crate, so that every layer can use it as a
//! dev-dependency without a cycle; builders of in-process nodes live with
//! the layer they build (for example micelio-transport's `memory` feature).
//! It is not published.
//!
//! ```
//! use std::time::Duration;
//! let start = std::time::Instant::now();
//! micelio_testkit::wait::until(Duration::from_secs(5), "a millisecond passes", || {
//!     start.elapsed() >= Duration::from_millis(1)
//! });
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod micelio;
pub mod process;
pub mod ssh;
pub mod wait;
