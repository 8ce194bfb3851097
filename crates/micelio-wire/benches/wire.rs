//! Wire benchmarks: envelope sign and verify, frame encode+decode, and the raw
//! Ed25519 verify of the same bytes in the same group, so the envelope
//! overhead reads as a ratio.
//!
//! Run with `cargo bench -p micelio-wire`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use micelio_identity::Identity;
use micelio_wire::frame::{FrameDecoder, encode_envelope, encode_envelope_into};
use micelio_wire::{Envelope, EnvelopeBuilder, MsgType};

/// Payload sizes: a chat-sized message and a near-maximal state value.
const SIZES: [(&str, usize); 2] = [("200B", 200), ("60KiB", 60 * 1024)];

fn envelope(id: &Identity, size: usize) -> Envelope {
    EnvelopeBuilder::gossip(MsgType::Chat, vec![0x5a; size]).sign(id)
}

fn bench_envelope(c: &mut Criterion) {
    let id = Identity::from_seed([1; 32]);
    let mut group = c.benchmark_group("envelope");
    for (label, size) in SIZES {
        let env = envelope(&id, size);
        group.throughput(Throughput::Elements(1));

        group.bench_with_input(BenchmarkId::new("sign", label), &env, |b, env| {
            let mut e = env.clone();
            b.iter(|| {
                e.sign(black_box(&id));
            });
        });

        group.bench_with_input(BenchmarkId::new("verify", label), &env, |b, env| {
            b.iter(|| black_box(env).verify_embedded().is_ok());
        });

        // The raw limit: one Ed25519 verification of the very same bytes,
        // key already parsed, signed bytes already assembled.
        let signed = env.signed_bytes();
        let key = VerifyingKey::from_bytes(id.public_key().as_bytes()).expect("valid key");
        let sig = Signature::from_slice(&env.signature).expect("64-byte signature");
        group.bench_with_input(
            BenchmarkId::new("raw_ed25519_verify", label),
            &signed,
            |b, msg| {
                b.iter(|| key.verify(black_box(msg), black_box(&sig)).is_ok());
            },
        );
    }
    group.finish();
}

fn bench_frame(c: &mut Criterion) {
    let id = Identity::from_seed([1; 32]);
    let mut group = c.benchmark_group("frame");
    let decoder = FrameDecoder::new();
    for (label, size) in SIZES {
        let env = envelope(&id, size);
        let frame_len = encode_envelope(&env).expect("fits").len();
        group.throughput(Throughput::Bytes(frame_len as u64));
        // One reused buffer, as a connection's receive buffer would be.
        let mut buf = BytesMut::with_capacity(2 * frame_len);
        group.bench_with_input(BenchmarkId::new("encode_decode", label), &env, |b, env| {
            b.iter(|| {
                encode_envelope_into(black_box(env), &mut buf).expect("fits");
                decoder
                    .decode_envelope(&mut buf)
                    .expect("valid")
                    .expect("whole frame")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_envelope, bench_frame);
criterion_main!(benches);
