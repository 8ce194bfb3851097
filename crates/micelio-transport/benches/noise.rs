//! Noise benchmarks: the XX handshake and encrypted stream throughput of
//! `micelio_transport::noise`, each beside the raw limit measured in the same
//! run (plain `snow` handshake states in memory; ChaCha20-Poly1305 alone), so
//! that the ratio shows what the framing and async plumbing cost.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use micelio_identity::Identity;
use micelio_transport::noise::{
    CipherState, NOISE_PROTOCOL_NAME, NoiseReader, NoiseWriter, Role, handshake,
};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf, duplex};
use tokio::runtime::Runtime;

/// Capacity of the in-memory pipe between the two ends.
const PIPE: usize = 256 * 1024;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime")
}

fn bench_handshake(c: &mut Criterion) {
    let rt = runtime();
    let (alice, bob) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let mut group = c.benchmark_group("handshake");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    group.bench_function("full_xx_duplex", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (x, y) = duplex(PIPE);
                let (i, r) = tokio::join!(
                    handshake(x, Role::Initiator, &alice),
                    handshake(y, Role::Responder, &bob),
                );
                black_box((i.expect("initiator"), r.expect("responder")))
            })
        })
    });

    let params: snow::params::NoiseParams = NOISE_PROTOCOL_NAME.parse().expect("params");
    let (alice_key, bob_key) = (alice.x25519_private(), bob.x25519_private());
    group.bench_function("raw_snow_xx", |b| {
        b.iter(|| {
            let mut i = snow::Builder::new(params.clone())
                .local_private_key(&alice_key[..])
                .and_then(|b| b.build_initiator())
                .expect("initiator");
            let mut r = snow::Builder::new(params.clone())
                .local_private_key(&bob_key[..])
                .and_then(|b| b.build_responder())
                .expect("responder");
            let (mut msg, mut payload) = ([0u8; 256], [0u8; 256]);
            let n = i.write_message(&[], &mut msg).expect("msg 1");
            r.read_message(&msg[..n], &mut payload).expect("read 1");
            let n = r.write_message(&[], &mut msg).expect("msg 2");
            i.read_message(&msg[..n], &mut payload).expect("read 2");
            let n = i.write_message(&[], &mut msg).expect("msg 3");
            r.read_message(&msg[..n], &mut payload).expect("read 3");
            black_box((i.dangerously_get_raw_split(), r.dangerously_get_raw_split()))
        })
    });
    group.finish();
}

type Ends = (
    NoiseWriter<WriteHalf<DuplexStream>>,
    NoiseReader<ReadHalf<DuplexStream>>,
);

/// A connected writer (initiator side) and reader (responder side).
fn connected(rt: &Runtime) -> Ends {
    let (alice, bob) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    rt.block_on(async {
        let (x, y) = duplex(PIPE);
        let (i, r) = tokio::join!(
            handshake(x, Role::Initiator, &alice),
            handshake(y, Role::Responder, &bob),
        );
        let (_, tx) = i.expect("initiator").into_split();
        let (rx, _) = r.expect("responder").into_split();
        (tx, rx)
    })
}

fn bench_throughput(c: &mut Criterion) {
    let rt = runtime();
    let (mut tx, mut rx) = connected(&rt);
    let mut out = BytesMut::new();
    let mut group = c.benchmark_group("throughput");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    for (label, size) in [("1KiB", 1024usize), ("64KiB", 64 * 1024)] {
        let data = vec![0xa5u8; size];
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_with_input(
            BenchmarkId::new("encrypted_stream", label),
            &data,
            |b, data| {
                b.iter(|| {
                    rt.block_on(async {
                        out.clear();
                        let read = async {
                            while out.len() < data.len() {
                                assert!(rx.read_into(&mut out).await.expect("read"), "eof");
                            }
                        };
                        let (written, ()) = tokio::join!(tx.write_all(data), read);
                        written.expect("write");
                    });
                    black_box(out.len())
                })
            },
        );

        // The same crypto through our CipherState, without framing or I/O:
        // separates the cost of the wrapper from that of the async pipe.
        let (mut seal, mut open) = (CipherState::new(&[7u8; 32]), CipherState::new(&[7u8; 32]));
        let mut sealed = Vec::with_capacity(size + 16);
        group.bench_with_input(BenchmarkId::new("cipher_state", label), &data, |b, data| {
            b.iter(|| {
                sealed.clear();
                seal.encrypt(data, &mut sealed).expect("encrypt");
                let n = open.decrypt_in_place(&mut sealed).expect("decrypt");
                black_box(&sealed[..n]);
            })
        });

        let cipher = ChaCha20Poly1305::new((&[7u8; 32]).into());
        let nonce = Nonce::from([0u8; 12]);
        let mut buf = data.clone();
        group.bench_function(BenchmarkId::new("raw_chacha20poly1305", label), |b| {
            b.iter(|| {
                let tag = cipher
                    .encrypt_in_place_detached(&nonce, &[], &mut buf)
                    .expect("encrypt");
                cipher
                    .decrypt_in_place_detached(&nonce, &[], &mut buf, &tag)
                    .expect("decrypt");
                black_box(&buf);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_handshake, bench_throughput);
criterion_main!(benches);
