//! The relay path: messages per second through the engine (dedup, key
//! lookup, Ed25519 verify, rate limit, hop handling, fanout choice) plus the
//! frame encoding a relay does, beside raw Ed25519 verifications per second
//! of the same signed bytes in the same run.
//!
//! Run with `cargo bench -p micelio-gossip`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use micelio_gossip::{Action, Engine, GossipConfig};
use micelio_identity::Identity;
use micelio_wire::{EnvelopeBuilder, MsgType, frame};

const BATCH: usize = 256;

fn bench_relay(c: &mut Criterion) {
    let me = Arc::new(Identity::from_seed([1; 32]));
    let origin = Identity::from_seed([2; 32]);
    let peers: Vec<Identity> = (3..9).map(|n| Identity::from_seed([n; 32])).collect();
    let envs: Vec<_> = (0..BATCH)
        .map(|i| {
            EnvelopeBuilder::gossip(
                MsgType::Chat,
                format!("line {i} of the benchmark").into_bytes(),
            )
            .sign(&origin)
        })
        .collect();
    let mut config = GossipConfig::default();
    // Measure the path, not the limiter.
    config.rate_per_sec = u32::MAX;
    config.rate_burst = u32::MAX;
    let make = || {
        let mut e = Engine::new(me.clone(), config.clone(), 1);
        for p in &peers {
            e.peer_up(*p.node_id(), p.public_key());
        }
        e.register(MsgType::Chat);
        e
    };
    let from = *peers[0].node_id();

    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(6));
    group.bench_function("engine_handle_and_encode", |b| {
        b.iter_batched(
            make,
            |mut engine| {
                let now = Instant::now();
                for env in &envs {
                    let actions = engine.handle(now, from, env.clone()).expect("accepted");
                    for a in actions {
                        if let Action::Send { envelope, .. } = a {
                            black_box(frame::encode_envelope(&envelope).expect("fits"));
                        }
                    }
                }
                engine
            },
            BatchSize::LargeInput,
        );
    });
    let key = VerifyingKey::from_bytes(origin.public_key().as_bytes()).expect("key");
    let signed: Vec<(Vec<u8>, Signature)> = envs
        .iter()
        .map(|e| {
            (
                e.signed_bytes(),
                Signature::from_slice(&e.signature).expect("sig"),
            )
        })
        .collect();
    group.bench_function("raw_ed25519_verify", |b| {
        b.iter(|| {
            for (msg, sig) in &signed {
                black_box(key.verify(msg, sig).is_ok());
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench_relay);
criterion_main!(benches);
