//! Fuzzes the incremental frame decoder: arbitrary bytes, fed in arbitrary
//! chunk sizes, give frames or an error, never a panic, and never a buffer
//! larger than one maximal frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use micelio_wire::frame::{Decoded, FrameDecoder, decode_slice};
use micelio_wire::limits::{FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);

    // The slice decoder agrees with itself on what a frame is.
    if let Ok(Decoded::Frame { payload, consumed }) = decode_slice(stream, MAX_FRAME_PAYLOAD) {
        assert_eq!(payload.len() + FRAME_HEADER_LEN, consumed);
        assert!(consumed <= stream.len());
    }

    let decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    'feed: for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode_envelope(&mut buf) {
                Ok(Some(_)) => seen += 1,
                Ok(None) => break,
                // A frame error closes the connection; a protobuf error drops
                // one frame and goes on.
                Err(micelio_wire::WireError::Decode(_)) => seen += 1,
                Err(_) => break 'feed,
            }
        }
        assert!(buf.capacity() <= stream.len() + MAX_FRAME_PAYLOAD + FRAME_HEADER_LEN);
    }
    assert!(seen <= stream.len() / FRAME_HEADER_LEN + 1);
});
