//! Full connection setup on loopback: TCP connect + Noise XX + hello + the
//! three identity checks, both ends, beside a raw snow XX handshake (three
//! messages in memory, no I/O) measured in the same run, so the figure reads
//! as a ratio to the raw limit.
//!
//! Run with `cargo bench -p micelio-transport --bench connect`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use micelio_identity::Identity;
use micelio_transport::hello::{self, LocalHello};
use micelio_transport::{TcpTransport, Transport};

const PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

fn raw_snow_xx(a: &[u8], b: &[u8]) {
    let params: snow::params::NoiseParams = PARAMS.parse().expect("valid params");
    let mut i = snow::Builder::new(params.clone())
        .local_private_key(a)
        .expect("key")
        .build_initiator()
        .expect("initiator");
    let mut r = snow::Builder::new(params)
        .local_private_key(b)
        .expect("key")
        .build_responder()
        .expect("responder");
    let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
    let n = i.write_message(&[], &mut m).expect("msg 1");
    r.read_message(&m[..n], &mut p).expect("msg 1");
    let n = r.write_message(&[], &mut m).expect("msg 2");
    i.read_message(&m[..n], &mut p).expect("msg 2");
    let n = i.write_message(&[], &mut m).expect("msg 3");
    r.read_message(&m[..n], &mut p).expect("msg 3");
    black_box((i.is_handshake_finished(), r.is_handshake_finished()));
}

fn bench_connect(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let a = Arc::new(Identity::from_seed([1; 32]));
    let b = Arc::new(Identity::from_seed([2; 32]));
    let t = Duration::from_secs(5);
    let ta = TcpTransport::new(a.clone(), t, t);
    let tb = TcpTransport::new(b.clone(), t, t);
    let mut listener = rt
        .block_on(tb.listen("127.0.0.1:0"))
        .expect("listen on loopback");
    let addr = listener.local_addr();
    let local = LocalHello {
        tags: vec!["bench".into()],
        advertise_addr: Some(addr.clone()),
        features: Vec::new(),
    };

    let mut group = c.benchmark_group("connect");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("tcp_noise_xx_hello", |bench| {
        bench.iter(|| {
            rt.block_on(async {
                let dial = async {
                    let mut link = ta.dial(&addr).await.expect("dial");
                    hello::exchange(&mut link, &a, &local, t)
                        .await
                        .expect("hello")
                };
                let accept = async {
                    let incoming = listener.accept().await.expect("accept");
                    let mut link = incoming.upgrade().await.expect("upgrade");
                    hello::exchange(&mut link, &b, &local, t)
                        .await
                        .expect("hello")
                };
                black_box(tokio::join!(dial, accept))
            })
        });
    });
    let (xa, xb) = (a.x25519_private(), b.x25519_private());
    group.bench_function("raw_snow_xx", |bench| {
        bench.iter(|| raw_snow_xx(&xa[..], &xb[..]));
    });
    group.finish();
}

criterion_group!(benches, bench_connect);
criterion_main!(benches);
