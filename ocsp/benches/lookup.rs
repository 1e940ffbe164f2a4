//! Finding a stored response: the responder's moka cache on a hit, and the SQLite read behind
//! it (what a miss pays before the cache insert).
//!
//! - `source/cache_hit`: `CachedSource::response` for a key in the cache (the `Source` the
//!   responder asks: moka lookup, freshness check, an `Arc` clone), cycling over 10,000
//!   serials that are all cached.
//! - `source/store_read`: `StoreSource::response` — the SQLite store through its async API,
//!   10,000 rows of pre-signer-shaped responses (~420 bytes each).
//!
//! ```sh
//! cargo bench -p ocsp --bench lookup -- --warm-up-time 1 --measurement-time 3
//! ```

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

use ocsp::metrics::Metrics;
use ocsp::{CachedSource, HashAlg, Health, IssuerName, Lookup, Serial, Source, StoreSource};

const ROWS: u64 = 10_000;

fn lookup(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let issuer = common::issuer();
    let name = IssuerName(common::ISSUER_NAME.into());
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let serials: Vec<Serial> = (0..ROWS).map(common::serial).collect();
    let (store_source, cached) = rt.block_on(async {
        let store = common::filled_store(&dir.path().join("ocsp.sqlite"), &issuer, &serials).await;
        let metrics = Metrics::unregistered();
        let health = Health::new(metrics.clone());
        let store_source = StoreSource::new(store.clone(), health.clone(), metrics.clone());
        let cached = CachedSource::new(
            StoreSource::new(store, health, metrics.clone()),
            64 << 20,
            Duration::from_secs(3600),
            metrics,
        );
        for s in &serials {
            match cached.response(&name, s, HashAlg::Sha1).await {
                Lookup::Found(..) => {}
                other => panic!("serial {s}: {other:?}"),
            }
        }
        (store_source, cached)
    });

    let mut group = c.benchmark_group("source");
    group.bench_function("cache_hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let serial = &serials[(i % ROWS) as usize];
                    black_box(
                        cached
                            .response(black_box(&name), serial, HashAlg::Sha1)
                            .await,
                    );
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("store_read", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    // A stride, so that consecutive reads do not hit the same B-tree page.
                    let serial = &serials[(i.wrapping_mul(7919) % ROWS) as usize];
                    black_box(
                        store_source
                            .response(black_box(&name), serial, HashAlg::Sha1)
                            .await,
                    );
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
