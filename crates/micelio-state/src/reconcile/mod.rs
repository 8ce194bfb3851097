//! Range-based set reconciliation between micelio nodes (type 16), sans-IO.
//!
//! Both ends order their entries by key position ([`key_position`](crate::key_position)). A
//! message carries ranges of positions, each with the sender's fingerprint
//! of the range (a sum of item hashes, [`StateMap::fingerprint`]) or, for a
//! small range, the list of its items (position and version). The receiver
//! of a range compares it with what it holds there:
//!
//! - equal fingerprint: nothing to do;
//! - unequal, and it holds at most [`MAX_ITEMS`] entries there (or the
//!   range is too narrow to split): it answers with its items;
//! - unequal, and the sender holds nothing there: it pushes its entries;
//! - otherwise it answers with [`SPLIT`] sub-ranges and their fingerprints;
//! - an item list: it pushes the entries the sender lacks or holds older,
//!   and asks (`wants`) for the positions where the sender is newer.
//!
//! Pushes are bounded per message ([`PUSH_BUDGET`]): a range cut short goes
//! back as a continuation (the rest of the range, with a fingerprint), so
//! the peer drives the pace one round trip at a time, and a fresh node
//! pulling a million entries gets them in rounds of [`PUSH_BUDGET`]. A cut
//! connection loses nothing: the next session finds the ranges already
//! received equal and goes on with the rest. A message with no ranges ends
//! the session; every message with ranges is answered, if only with an
//! empty one.
//!
//! The answer never grows without bound: at most [`MAX_RANGES`] ranges and
//! about [`MAX_ANSWER_BYTES`] of item lists go out; incoming ranges beyond
//! that go back unsplit, for the next round.

use micelio_identity::NodeId;
use micelio_wire::proto::{StateItem, StateRange};

use crate::map::{Meta, StateMap};
use crate::version::Version;

/// A range holding at most this many entries is listed item by item.
pub const MAX_ITEMS: u64 = 32;
/// A range with more is split into this many sub-ranges.
pub const SPLIT: u64 = 16;
/// Most ranges in one message (more is malformed) and in one answer.
pub const MAX_RANGES: usize = 1024;
/// Most wants in one message (more is malformed).
pub const MAX_WANTS: usize = 4096;
/// Most items in one range of a message (more is malformed).
pub const MAX_RANGE_ITEMS: usize = 1024;
/// Entries pushed in answer to one message, at most (wants excepted, which
/// [`MAX_WANTS`] bounds).
pub const PUSH_BUDGET: usize = 2000;
/// Roughly the most bytes of item lists in one answer.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Encoded size of one item, roughly (position, ts, 32-byte id, tie, tags).
const ITEM_BYTES: usize = 62;

/// Why a reconciliation message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// More than [`MAX_RANGES`] ranges.
    #[error("{0} ranges (at most {MAX_RANGES})")]
    TooManyRanges(usize),
    /// More than [`MAX_WANTS`] wants.
    #[error("{0} wants (at most {MAX_WANTS})")]
    TooManyWants(usize),
    /// An empty or inverted range.
    #[error("empty range {lo}..{hi}")]
    EmptyRange {
        /// Its start.
        lo: u64,
        /// Its end (0: the end of the space).
        hi: u64,
    },
    /// More than [`MAX_RANGE_ITEMS`] items, or an item outside its range
    /// or with a node id that is not 32 bytes.
    #[error("bad item list: {0}")]
    BadItems(&'static str),
}

/// What to do in answer to a message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Answer {
    /// Ranges for the peer (empty: the session ends with this answer).
    pub ranges: Vec<StateRange>,
    /// Positions whose entries we ask the peer for.
    pub wants: Vec<u64>,
    /// Keys whose entries we push to the peer (as type-8 pages, before the
    /// answer itself).
    pub push: Vec<Box<str>>,
}

/// The opening ranges of a session: the whole space, fingerprinted.
pub fn open(map: &StateMap) -> Vec<StateRange> {
    vec![fingerprint_range(map, 0, None)]
}

/// The end of a range as the map's API takes it (`hi` 0 = the end).
fn end(hi: u64) -> Option<u64> {
    (hi != 0).then_some(hi)
}

fn fingerprint_range(map: &StateMap, lo: u64, hi: Option<u64>) -> StateRange {
    let (fingerprint, count) = map.fingerprint(lo, hi);
    StateRange {
        lo,
        hi: hi.unwrap_or(0),
        fingerprint,
        count,
        items_mode: false,
        items: Vec::new(),
    }
}

fn items_range(map: &StateMap, lo: u64, hi: Option<u64>) -> StateRange {
    let items: Vec<StateItem> = map
        .range(lo, hi)
        .map(|((pos, _), meta)| StateItem {
            position: *pos,
            lamport_ts: meta.version.ts,
            node_id: bytes::Bytes::copy_from_slice(meta.version.node.as_bytes()),
            tie: meta.version.tie,
        })
        .collect();
    StateRange {
        lo,
        hi: hi.unwrap_or(0),
        fingerprint: 0,
        count: items.len() as u64,
        items_mode: true,
        items,
    }
}

/// Checks a message's shape before anything is computed from it.
///
/// # Errors
/// [`Malformed`].
pub fn check(ranges: &[StateRange], wants: &[u64]) -> Result<(), Malformed> {
    if ranges.len() > MAX_RANGES {
        return Err(Malformed::TooManyRanges(ranges.len()));
    }
    if wants.len() > MAX_WANTS {
        return Err(Malformed::TooManyWants(wants.len()));
    }
    for r in ranges {
        if r.hi != 0 && r.hi <= r.lo {
            return Err(Malformed::EmptyRange { lo: r.lo, hi: r.hi });
        }
        if r.items.len() > MAX_RANGE_ITEMS {
            return Err(Malformed::BadItems("too many items"));
        }
        if !r.items_mode && !r.items.is_empty() {
            return Err(Malformed::BadItems("items in a fingerprint range"));
        }
        for it in &r.items {
            if it.position < r.lo || (r.hi != 0 && it.position >= r.hi) {
                return Err(Malformed::BadItems("item outside its range"));
            }
            if it.node_id.len() != 32 {
                return Err(Malformed::BadItems("node id not 32 bytes"));
            }
        }
    }
    Ok(())
}

fn item_version(it: &StateItem) -> Option<Version> {
    let id: [u8; 32] = it.node_id[..].try_into().ok()?;
    Some(Version {
        ts: it.lamport_ts,
        node: NodeId::from_bytes(id),
        tie: it.tie,
    })
}

/// Computes the answer to a message of `ranges` and `wants` (already
/// [`check`]ed) against `map`.
pub fn answer(map: &StateMap, ranges: &[StateRange], wants: &[u64]) -> Answer {
    let mut out = Answer::default();
    let mut budget = PUSH_BUDGET;
    let mut item_bytes = 0usize;
    for &p in wants {
        for ((_, key), _) in map.range(p, p.checked_add(1)) {
            out.push.push(key.clone());
        }
    }
    for (i, r) in ranges.iter().enumerate() {
        // Room for one range only: this range and every later one go back
        // as one span, for the next round (the answer stays within
        // MAX_RANGES, which the peer enforces).
        if out.ranges.len() + 1 >= MAX_RANGES {
            let rest = &ranges[i..];
            let lo = rest.iter().map(|r| r.lo).min().unwrap_or(r.lo);
            let hi = if rest.iter().any(|r| r.hi == 0) {
                None
            } else {
                rest.iter().map(|r| r.hi).max()
            };
            out.ranges.push(fingerprint_range(map, lo, hi));
            break;
        }
        let lo = r.lo;
        let hi = end(r.hi);
        // Out of room for a split (and a continuation): send the range back
        // unsplit, for the next round.
        let full =
            out.ranges.len() + SPLIT as usize + 2 > MAX_RANGES || item_bytes > MAX_ANSWER_BYTES;
        if r.items_mode {
            if budget == 0 || full {
                out.ranges.push(fingerprint_range(map, lo, hi));
                continue;
            }
            compare_items(map, r, &mut budget, &mut out);
            continue;
        }
        let (fp, count) = map.fingerprint(lo, hi);
        if fp == r.fingerprint && count == r.count {
            continue;
        }
        if full {
            out.ranges.push(fingerprint_range(map, lo, hi));
            continue;
        }
        if r.count == 0 {
            // The peer holds nothing here: push (as against an empty list).
            if budget == 0 {
                out.ranges.push(fingerprint_range(map, lo, hi));
            } else {
                compare_items(map, r, &mut budget, &mut out);
            }
            continue;
        }
        let width = hi.map_or(u128::from(u64::MAX) + 1, u128::from) - u128::from(lo);
        if count <= MAX_ITEMS || width < u128::from(SPLIT) {
            let listed = items_range(map, lo, hi);
            item_bytes += listed.items.len() * ITEM_BYTES;
            out.ranges.push(listed);
            continue;
        }
        let step = width / u128::from(SPLIT);
        for i in 0..SPLIT {
            let s_lo = u128::from(lo) + step * u128::from(i);
            let s_hi = if i + 1 == SPLIT {
                hi
            } else {
                Some((s_lo + step) as u64)
            };
            let s_lo = s_lo as u64;
            let (sfp, scount) = map.fingerprint(s_lo, s_hi);
            if scount <= MAX_ITEMS {
                let listed = items_range(map, s_lo, s_hi);
                item_bytes += listed.items.len() * ITEM_BYTES;
                out.ranges.push(listed);
            } else {
                out.ranges.push(StateRange {
                    lo: s_lo,
                    hi: s_hi.unwrap_or(0),
                    fingerprint: sfp,
                    count: scount,
                    items_mode: false,
                    items: Vec::new(),
                });
            }
        }
    }
    out
}

/// Compares the peer's item list of range `r` (empty when it is a
/// fingerprint range with count 0) with the map: pushes what the peer
/// lacks or holds older, wants what it holds newer, while the push budget
/// and [`MAX_WANTS`] last; the rest of the range goes back as a
/// continuation.
///
/// Items are matched by position. Two keys at one position (a 64-bit hash
/// collision) are handled by sending more than needed, never less.
fn compare_items(map: &StateMap, r: &StateRange, budget: &mut usize, out: &mut Answer) {
    let mut theirs: Vec<(u64, Version)> = r
        .items
        .iter()
        .filter_map(|it| Some((it.position, item_version(it)?)))
        .collect();
    theirs.sort_unstable_by_key(|(p, _)| *p);
    let listed_at = |pos: u64| -> Vec<Version> {
        let start = theirs.partition_point(|(p, _)| *p < pos);
        theirs[start..]
            .iter()
            .take_while(|(p, _)| *p == pos)
            .map(|(_, v)| *v)
            .collect()
    };
    let hi = end(r.hi);
    let mut cut: Option<u64> = None;
    let mut ours = map.range(r.lo, hi).peekable();
    while let Some(((pos, key), meta)) = ours.next() {
        if *budget == 0 {
            cut = Some(*pos);
            break;
        }
        let mut group: Vec<(&Box<str>, &Meta)> = vec![(key, meta)];
        while let Some(((p, k), m)) = ours.next_if(|((p, _), _)| p == pos) {
            debug_assert_eq!(p, pos);
            group.push((k, m));
        }
        let listed = listed_at(*pos);
        for (key, meta) in group {
            let they_newer = listed.len() == 1 && listed[0] > meta.version;
            if !listed.contains(&meta.version) && !they_newer {
                out.push.push(key.clone());
                *budget = budget.saturating_sub(1);
            }
        }
    }
    // Positions the peer lists where we are missing or older.
    for (pos, v) in &theirs {
        if cut.is_some_and(|c| *pos >= c) {
            break;
        }
        if out.wants.len() >= MAX_WANTS {
            // No room for more wants: the rest of the range is compared
            // again next round.
            cut = Some(cut.map_or(*pos, |c| c.min(*pos)));
            break;
        }
        let here: Vec<Version> = map
            .range(*pos, pos.checked_add(1))
            .map(|(_, m)| m.version)
            .collect();
        let we_newer = here.len() == 1 && here[0] > *v;
        if !here.contains(v) && !we_newer && out.wants.last() != Some(pos) {
            out.wants.push(*pos);
        }
    }
    if let Some(c) = cut {
        out.ranges.push(fingerprint_range(map, c, hi));
    }
}

#[cfg(test)]
mod tests;
