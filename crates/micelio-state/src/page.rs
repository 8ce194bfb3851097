//! Type-8 pages: entries split so that each `StateSyncResponse` holds at
//! most a number of entries and fits one frame once wrapped in its
//! envelope.

use micelio_wire::WireMessage as _;
use micelio_wire::limits::{MAX_FRAME_PAYLOAD, REFERENCE_SYNC_MAX_ENTRIES};
use micelio_wire::proto::{StateEntry, StateSyncResponse};

/// Room left in a frame for the envelope around a page: message id, sender
/// id, signature, type, hops, timestamp and the field headers, with margin.
pub const ENVELOPE_ROOM: usize = 1024;
/// Largest encoded page, so that its envelope fits [`MAX_FRAME_PAYLOAD`].
pub const PAGE_BYTES: usize = MAX_FRAME_PAYLOAD - ENVELOPE_ROOM;

/// Cuts a stream of entries into pages, in order.
#[derive(Debug)]
pub struct Pager {
    max_entries: usize,
    max_bytes: usize,
    page: Vec<StateEntry>,
    bytes: usize,
}

impl Default for Pager {
    /// Pages of at most 1,000 entries (what a reference node sends in one
    /// response) and [`PAGE_BYTES`].
    fn default() -> Self {
        Self::new(REFERENCE_SYNC_MAX_ENTRIES, PAGE_BYTES)
    }
}

impl Pager {
    /// Pages of at most `max_entries` entries (at least 1) and `max_bytes`
    /// encoded bytes; one entry larger than `max_bytes` gets a page alone.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            max_bytes,
            page: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds an entry; returns the page it closed, if it did not fit.
    pub fn push(&mut self, entry: StateEntry) -> Option<StateSyncResponse> {
        let len = entry.encoded_len_wire();
        // Field 1, length-delimited: one tag byte and the varint length.
        let cost = 1 + varint_len(len) + len;
        let full = !self.page.is_empty()
            && (self.page.len() >= self.max_entries || self.bytes + cost > self.max_bytes);
        let out = full.then(|| self.take());
        self.page.push(entry);
        self.bytes += cost;
        out
    }

    /// The last page, if any entry is left.
    pub fn finish(mut self) -> Option<StateSyncResponse> {
        (!self.page.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> StateSyncResponse {
        self.bytes = 0;
        StateSyncResponse {
            entries: std::mem::take(&mut self.page),
        }
    }
}

fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - n.max(1).leading_zeros();
    bits.div_ceil(7) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use micelio_identity::Identity;
    use micelio_wire::{EnvelopeBuilder, MsgType, frame};

    fn entries(n: usize, value: usize) -> Vec<StateEntry> {
        let id = Identity::from_seed([3; 32]);
        (0..n)
            .map(|i| {
                let mut e = StateEntry {
                    key: format!("{}/{i:0>180}", id.node_id()),
                    value: Bytes::from(vec![b'v'; value]),
                    lamport_ts: i as u64 + 1,
                    ..Default::default()
                };
                e.sign(&id);
                e
            })
            .collect()
    }

    fn paginate(pager: Pager, list: &[StateEntry]) -> Vec<StateSyncResponse> {
        let mut pager = pager;
        let mut pages: Vec<StateSyncResponse> =
            list.iter().cloned().filter_map(|e| pager.push(e)).collect();
        pages.extend(pager.finish());
        pages
    }

    #[test]
    fn pages_fit_a_frame_and_keep_the_order() {
        let id = Identity::from_seed([4; 32]);
        for (n, value) in [(2_500, 10), (700, 4_096), (40, 60 * 1024)] {
            let list = entries(n, value);
            let pages = paginate(Pager::default(), &list);
            for p in &pages {
                assert!(p.entries.len() <= REFERENCE_SYNC_MAX_ENTRIES);
                assert_eq!(p.encoded_len_wire(), p.encode_wire().len());
                assert!(p.encoded_len_wire() <= PAGE_BYTES);
                let env =
                    EnvelopeBuilder::new(MsgType::StateSyncResponse, p.encode_wire()).sign(&id);
                frame::encode_envelope(&env).expect("fits a frame");
            }
            let back: Vec<StateEntry> = pages.into_iter().flat_map(|p| p.entries).collect();
            assert_eq!(back, list, "{n} entries of {value} bytes");
        }
    }

    #[test]
    fn the_byte_budget_is_exact() {
        let list = entries(10, 100);
        let one = StateSyncResponse {
            entries: list[..1].to_vec(),
        }
        .encoded_len_wire();
        // Room for exactly three entries.
        let pages = paginate(Pager::new(100, one * 3), &list);
        assert_eq!(
            pages.iter().map(|p| p.entries.len()).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        assert!(pages.iter().all(|p| p.encoded_len_wire() <= one * 3));
        assert!(Pager::default().finish().is_none());
    }

    #[test]
    fn varint_lengths() {
        for (n, l) in [(0, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3)] {
            assert_eq!(varint_len(n), l, "{n}");
        }
    }
}
