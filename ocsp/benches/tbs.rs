//! Building responses as the pre-signer does, without the gateway: `response::sign_responses`
//! with a signer that returns a fixed signature at once, so what is measured is building the
//! `ResponseData` (two SingleResponses, SHA-1 and SHA-256 CertIDs, responderID byKey), its DER
//! encoding, and wrapping the signed bytes into `BasicOCSPResponse` / `OCSPResponse`.
//!
//! `good/1` and `revoked/1` are one response per call; `good/256` is a pre-signer chunk,
//! reported per response (throughput in elements).
//!
//! ```sh
//! cargo bench -p ocsp --bench tbs -- --warm-up-time 1 --measurement-time 3
//! ```

mod common;

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use ocsp::{CertStatus, Serial, sign_responses};

fn tbs(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let issuer = common::issuer();
    let now = common::unix_now();
    let revoked = CertStatus::Revoked {
        at: now - 86_400,
        reason: Some(1),
    };
    let mut group = c.benchmark_group("sign_responses_stand_in");
    for (status_name, status, n) in [
        ("good", CertStatus::Good, 1usize),
        ("revoked", revoked, 1),
        ("good", CertStatus::Good, 256),
    ] {
        let items: Vec<(Serial, CertStatus)> =
            (0..n as u64).map(|i| (common::serial(i), status)).collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new(status_name, n), &items, |b, items| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let out = sign_responses(
                            &common::StandIn,
                            &issuer,
                            black_box(items),
                            now - 60,
                            now + 4 * 86_400,
                            now - 60,
                        )
                        .await;
                        match out {
                            Ok(r) => {
                                black_box(r);
                            }
                            Err(e) => panic!("sign_responses: {e}"),
                        }
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, tbs);
criterion_main!(benches);
