//! Property tests: round trips are the identity, and any byte string fed to
//! the decoders yields a value or an error, never a panic or an allocation
//! beyond the frame limit.

use bytes::{Bytes, BytesMut};
use micelio_identity::Identity;
use micelio_wire::frame::{self, Decoded, FrameDecoder, decode_slice};
use micelio_wire::limits::{FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD};
use micelio_wire::{Envelope, EnvelopeBuilder, MsgType, Payload, WireMessage as _};
use proptest::prelude::*;

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (
        ".{0,40}",
        ".{0,70}",
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..600),
        proptest::collection::vec(any::<u8>(), 0..70),
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(mid, sid, ts, hops, ty, payload, sig, pk)| Envelope {
            message_id: mid,
            sender_id: sid,
            lamport_ts: ts,
            hop_count: hops,
            msg_type: ty,
            payload: payload.into(),
            signature: sig.into(),
            sender_pubkey: pk.into(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn envelope_protobuf_round_trip(env in arb_envelope()) {
        let bytes = env.encode_wire();
        prop_assert_eq!(Envelope::decode_wire(&bytes[..]).unwrap(), env);
    }

    #[test]
    fn frame_round_trip_in_arbitrary_chunks(
        envs in proptest::collection::vec(arb_envelope(), 1..6),
        chunk in 1usize..97,
    ) {
        let mut stream = Vec::new();
        for e in &envs {
            stream.extend_from_slice(&frame::encode_envelope(e).unwrap());
        }
        let dec = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(e) = dec.decode_envelope(&mut buf).unwrap() {
                out.push(e);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out, envs);
    }

    #[test]
    fn signed_envelopes_verify_after_a_round_trip(
        seed in any::<[u8; 32]>(),
        ty in any::<u32>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        ts in any::<u64>(),
        hops in 0u32..20,
    ) {
        let id = Identity::from_seed(seed);
        let env = EnvelopeBuilder::gossip(MsgType::from_u32(ty), payload)
            .lamport_ts(ts)
            .hop_count(hops)
            .sign(&id);
        let f = frame::encode_envelope(&env).unwrap();
        let mut buf = BytesMut::from(&f[..]);
        let back = FrameDecoder::new().decode_envelope(&mut buf).unwrap().unwrap();
        prop_assert_eq!(back.verify_embedded().unwrap(), id.public_key());
        prop_assert_eq!(back, env);
    }

    #[test]
    fn any_bytes_give_a_value_or_an_error(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        // Slice decoder: never panics; a frame it returns lies within the input.
        match decode_slice(&data, MAX_FRAME_PAYLOAD) {
            Ok(Decoded::Frame { payload, consumed }) => {
                prop_assert!(consumed <= data.len());
                prop_assert_eq!(payload.len() + FRAME_HEADER_LEN, consumed);
            }
            Ok(Decoded::NeedMore(n)) => prop_assert!(n <= MAX_FRAME_PAYLOAD + FRAME_HEADER_LEN),
            Err(_) => {}
        }
        // Buffer decoder: reserves at most one maximal frame.
        let mut buf = BytesMut::from(&data[..]);
        let _ = FrameDecoder::new().decode_envelope(&mut buf);
        prop_assert!(buf.capacity() <= data.len().max(MAX_FRAME_PAYLOAD + FRAME_HEADER_LEN));
        // Protobuf and payload decoding of arbitrary bytes.
        if let Ok(env) = Envelope::decode_wire(&data[..]) {
            let _ = Payload::decode(&env);
            let _ = env.verify_embedded();
            let _ = env.check_gossip_limits();
        }
    }

    #[test]
    fn valid_header_then_garbage(len in 0u32..4096, body in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut data = Vec::new();
        data.extend_from_slice(b"MI\x00\x01");
        data.extend_from_slice(&len.to_be_bytes());
        data.extend_from_slice(&body);
        let mut buf = BytesMut::from(&data[..]);
        match FrameDecoder::new().decode(&mut buf) {
            Ok(Some(p)) => prop_assert_eq!(p.len(), len as usize),
            Ok(None) => prop_assert!(body.len() < len as usize),
            Err(e) => prop_assert!(false, "valid header refused: {e}"),
        }
    }
}

#[test]
fn payload_bytes_share_the_receive_buffer() {
    // Decoding slices bytes fields out of the frame instead of copying them.
    let id = Identity::from_seed([3; 32]);
    let env = EnvelopeBuilder::gossip(MsgType::Chat, vec![9; 4096]).sign(&id);
    let mut buf = BytesMut::from(&frame::encode_envelope(&env).unwrap()[..]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let back = FrameDecoder::new()
        .decode_envelope(&mut buf)
        .unwrap()
        .unwrap();
    let payload: Bytes = back.payload.clone();
    assert_eq!(payload.len(), 4096);
    let at = payload.as_ptr() as usize;
    assert!(
        at >= start && at + payload.len() <= end,
        "payload was copied"
    );
}
