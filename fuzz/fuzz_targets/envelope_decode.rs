//! Fuzzes envelope decoding and everything a receiver does with an untrusted
//! envelope: typed payload decoding, gossip limits, embedded-key checks and
//! signature verification, then a re-encoding round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use micelio_wire::{Envelope, Payload, WireMessage as _};

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::decode_wire(data) else {
        return;
    };
    let _ = env.check_gossip_limits();
    let _ = env.verify_embedded();
    if let Ok(payload) = Payload::decode(&env) {
        // A decoded payload re-encodes to bytes that decode to the same value.
        let again = Envelope {
            msg_type: env.msg_type,
            payload: payload.encode(),
            ..Envelope::default()
        };
        assert_eq!(Payload::decode(&again).ok(), Some(payload));
    }
    let bytes = env.encode_wire();
    assert_eq!(Envelope::decode_wire(&bytes[..]).ok(), Some(env));
});
