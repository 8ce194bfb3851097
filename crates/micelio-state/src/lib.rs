//! Replicated last-writer-wins key/value state for micelio.
//!
//! [`StateMap`] is the sans-IO core: it checks entries ([`verify_entry`],
//! [`Limits`]), merges them by the LWW rule ([`Version`]), keeps the Lamport
//! clock ([`LamportClock`]), tracks tombstones for collection, and maintains
//! the version vector and the range fingerprints that reconciliation
//! compares. It holds metadata only ([`Meta`]); values belong to storage.
//! It does no I/O and reads no clock: time comes in as arguments.
//! [`Pager`] cuts entries into type-8 pages that each fit a frame.
//! [`tags`] defines the syntax of node tags and their list form in the map.
//! [`selector`] parses and matches the selectors (`*`, `EU+prod+!canary`,
//! `node:<name or id prefix>`) that pick the nodes a rule applies to.
//!
//! Invariants:
//! - an entry is in the map only after the four authorship checks, the size
//!   limits and the timestamp bound passed;
//! - for any set of entries, every delivery order yields the same map;
//! - the clock never goes backwards and never passes
//!   [`micelio_wire::limits::MAX_LAMPORT_TS`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod clock;
pub mod desired;
mod error;
mod map;
pub mod members;
mod page;
pub mod reconcile;
pub mod selector;
mod service;
pub mod store;
pub mod tags;
mod version;

pub use clock::LamportClock;
pub use error::{Reject, WriteError};
pub use map::{Merge, Meta, StateMap, Stats};
pub use members::{Liveness, LivenessConfig, Member};
pub use page::{ENVELOPE_ROOM, PAGE_BYTES, Pager};
pub use service::{
    CHANGE_QUEUE, Change, DEFAULT_GC_INTERVAL, DEFAULT_SYNC_INTERVAL, Entry, NodeInfo, Origin,
    State, StateConfig, StateError, StateStats, TagSet,
};
pub use version::{Limits, Version, key_position, verify_entry};
