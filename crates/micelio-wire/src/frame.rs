//! The application frame.
//!
//! ```text
//! offset 0  u16 BE  magic   0x4D49 ("MI")
//! offset 2  u16 BE  version 0x0001
//! offset 4  u32 BE  payload length, 0 ..= 1 048 576
//! offset 8          payload: one protobuf Envelope
//! ```
//!
//! The decoder is incremental: feed it whatever bytes have arrived and it
//! answers "need more", a whole frame, or an error. It checks the magic as
//! soon as two bytes are there and the version as soon as four are, so that
//! garbage is refused before a length is ever trusted; it never reserves
//! more than one frame of the configured maximum.

use crate::codec::WireMessage as _;
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;

use crate::error::{FrameError, WireError};
use crate::limits::{FRAME_HEADER_LEN, FRAME_MAGIC, FRAME_VERSION, MAX_FRAME_PAYLOAD};
use crate::proto::Envelope;

/// The outcome of looking at the front of a byte buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Not a whole frame yet; at least this many more bytes are needed.
    NeedMore(usize),
    /// A whole frame: its payload, and how many bytes of the buffer it took.
    Frame {
        /// The payload (one encoded envelope), borrowed from the buffer.
        payload: &'a [u8],
        /// Header plus payload length: consume this many bytes.
        consumed: usize,
    },
}

/// Validates the frame header at the front of `buf`, as far as it goes.
///
/// Returns the payload length once all 8 header bytes are present, `None`
/// before that.
///
/// # Errors
/// [`FrameError::BadMagic`], [`FrameError::BadVersion`] or
/// [`FrameError::TooLong`] (against `max_payload`), as soon as the bytes that
/// show it have arrived.
pub fn check_header(buf: &[u8], max_payload: usize) -> Result<Option<usize>, FrameError> {
    if let Some(magic) = buf.first_chunk::<2>() {
        let magic = u16::from_be_bytes(*magic);
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
    }
    if let Some(version) = buf.get(2..4) {
        let version = u16::from_be_bytes([version[0], version[1]]);
        if version != FRAME_VERSION {
            return Err(FrameError::BadVersion(version));
        }
    }
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    match usize::try_from(len) {
        Ok(len) if len <= max_payload => Ok(Some(len)),
        _ => Err(FrameError::TooLong {
            len: u64::from(len),
            max: max_payload,
        }),
    }
}

/// Decodes the frame at the front of `buf` without copying.
///
/// # Errors
/// As [`check_header`].
pub fn decode_slice(buf: &[u8], max_payload: usize) -> Result<Decoded<'_>, FrameError> {
    let Some(len) = check_header(buf, max_payload)? else {
        return Ok(Decoded::NeedMore(FRAME_HEADER_LEN - buf.len()));
    };
    let total = FRAME_HEADER_LEN + len;
    match buf.get(FRAME_HEADER_LEN..total) {
        Some(payload) => Ok(Decoded::Frame {
            payload,
            consumed: total,
        }),
        None => Ok(Decoded::NeedMore(total - buf.len())),
    }
}

/// An incremental frame decoder over a [`BytesMut`] receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDecoder {
    max_payload: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with the protocol limit, [`MAX_FRAME_PAYLOAD`].
    pub const fn new() -> Self {
        Self {
            max_payload: MAX_FRAME_PAYLOAD,
        }
    }

    /// A decoder with a lower payload limit (values above the protocol limit
    /// are clamped to it).
    pub const fn with_max_payload(max_payload: usize) -> Self {
        let max_payload = if max_payload < MAX_FRAME_PAYLOAD {
            max_payload
        } else {
            MAX_FRAME_PAYLOAD
        };
        Self { max_payload }
    }

    /// The payload limit in force.
    pub const fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Takes one whole frame off the front of `src` and returns its payload;
    /// `Ok(None)` means "need more bytes" (and capacity for the rest of the
    /// frame has been reserved).
    ///
    /// # Errors
    /// A [`FrameError`]: the connection must be closed. `src` is left as it
    /// was.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match decode_slice(src, self.max_payload)? {
            Decoded::NeedMore(more) => {
                src.reserve(more);
                Ok(None)
            }
            Decoded::Frame { consumed, .. } => {
                let mut frame = src.split_to(consumed);
                Ok(Some(frame.split_off(FRAME_HEADER_LEN).freeze()))
            }
        }
    }

    /// Like [`FrameDecoder::decode`], then decodes the payload as an
    /// [`Envelope`] (sharing the buffer for its bytes fields).
    ///
    /// # Errors
    /// [`WireError::Frame`] (close the connection) or [`WireError::Decode`]
    /// (the frame was consumed; the envelope is garbage).
    pub fn decode_envelope(&self, src: &mut BytesMut) -> Result<Option<Envelope>, WireError> {
        match self.decode(src)? {
            Some(payload) => Ok(Some(Envelope::decode_wire(payload)?)),
            None => Ok(None),
        }
    }
}

/// Appends one frame holding `payload` to `dst`.
///
/// # Errors
/// [`FrameError::TooLong`] when the payload exceeds [`MAX_FRAME_PAYLOAD`];
/// nothing is written then.
pub fn encode(payload: &[u8], dst: &mut impl BufMut) -> Result<(), FrameError> {
    let len = checked_len(payload.len())?;
    put_header(len, dst);
    dst.put_slice(payload);
    Ok(())
}

/// Encodes `env` as one frame, header and envelope in a single buffer.
///
/// # Errors
/// [`FrameError::TooLong`] when the encoded envelope exceeds
/// [`MAX_FRAME_PAYLOAD`].
pub fn encode_envelope(env: &Envelope) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::new();
    encode_envelope_into(env, &mut buf)?;
    Ok(buf.freeze())
}

/// Appends `env` as one frame to `dst`.
///
/// # Errors
/// As [`encode_envelope`]; nothing is written then.
pub fn encode_envelope_into(env: &Envelope, dst: &mut BytesMut) -> Result<(), FrameError> {
    let len = checked_len(env.encoded_len_wire())?;
    dst.reserve(FRAME_HEADER_LEN + len as usize);
    put_header(len, dst);
    // `reserve` above guarantees the capacity, so encoding cannot fail.
    env.encode_raw(dst);
    Ok(())
}

fn checked_len(len: usize) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(n) if len <= MAX_FRAME_PAYLOAD => Ok(n),
        _ => Err(FrameError::TooLong {
            len: len as u64,
            max: MAX_FRAME_PAYLOAD,
        }),
    }
}

fn put_header(len: u32, dst: &mut impl BufMut) {
    dst.put_u16(FRAME_MAGIC);
    dst.put_u16(FRAME_VERSION);
    dst.put_u32(len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(payload, &mut v).unwrap();
        v
    }

    #[test]
    fn header_layout() {
        assert_eq!(frame(b"abc"), b"MI\x00\x01\x00\x00\x00\x03abc");
        assert_eq!(frame(b""), b"MI\x00\x01\x00\x00\x00\x00");
    }

    #[test]
    fn byte_by_byte_feeding() {
        let bytes = [frame(b"one"), frame(b""), frame(&[7; 300])].concat();
        let dec = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in bytes {
            buf.put_u8(b);
            while let Some(p) = dec.decode(&mut buf).unwrap() {
                out.push(p);
            }
        }
        assert_eq!(
            out,
            vec![
                Bytes::from_static(b"one"),
                Bytes::new(),
                Bytes::from(vec![7; 300])
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn need_more_counts() {
        let f = frame(b"hello");
        assert_eq!(
            decode_slice(&f[..0], MAX_FRAME_PAYLOAD),
            Ok(Decoded::NeedMore(8))
        );
        assert_eq!(
            decode_slice(&f[..5], MAX_FRAME_PAYLOAD),
            Ok(Decoded::NeedMore(3))
        );
        assert_eq!(
            decode_slice(&f[..9], MAX_FRAME_PAYLOAD),
            Ok(Decoded::NeedMore(4))
        );
    }

    #[test]
    fn garbage_is_refused_early() {
        assert_eq!(
            check_header(b"GE", MAX_FRAME_PAYLOAD),
            Err(FrameError::BadMagic(0x4745))
        );
        assert_eq!(
            check_header(b"MI\x00\x02", MAX_FRAME_PAYLOAD),
            Err(FrameError::BadVersion(2))
        );
        assert_eq!(check_header(b"M", MAX_FRAME_PAYLOAD), Ok(None));
    }

    #[test]
    fn length_limits() {
        let at_limit = [b"MI\x00\x01".as_slice(), &(1u32 << 20).to_be_bytes()].concat();
        assert_eq!(
            check_header(&at_limit, MAX_FRAME_PAYLOAD),
            Ok(Some(1 << 20))
        );
        let over = [b"MI\x00\x01".as_slice(), &((1u32 << 20) + 1).to_be_bytes()].concat();
        assert_eq!(
            check_header(&over, MAX_FRAME_PAYLOAD),
            Err(FrameError::TooLong {
                len: (1 << 20) + 1,
                max: MAX_FRAME_PAYLOAD
            })
        );
        let huge = [b"MI\x00\x01".as_slice(), &u32::MAX.to_be_bytes()].concat();
        let mut buf = BytesMut::from(&huge[..]);
        assert!(FrameDecoder::new().decode(&mut buf).is_err());
        assert!(
            buf.capacity() < 1 << 20,
            "no allocation on a refused length"
        );
        let small = FrameDecoder::with_max_payload(4);
        let mut buf = BytesMut::from(&frame(b"12345")[..]);
        assert!(matches!(
            small.decode(&mut buf),
            Err(FrameError::TooLong { len: 5, max: 4 })
        ));
        assert_eq!(
            FrameDecoder::with_max_payload(usize::MAX).max_payload(),
            MAX_FRAME_PAYLOAD
        );
    }

    #[test]
    fn encoding_refuses_oversized_payloads() {
        let big = vec![0; MAX_FRAME_PAYLOAD + 1];
        let mut out = Vec::new();
        assert!(encode(&big, &mut out).is_err());
        assert!(out.is_empty());
        encode(&big[..MAX_FRAME_PAYLOAD], &mut out).unwrap();
        assert_eq!(out.len(), MAX_FRAME_PAYLOAD + FRAME_HEADER_LEN);
        let env = Envelope {
            payload: Bytes::from(big),
            ..Default::default()
        };
        assert!(encode_envelope(&env).is_err());
    }
}
