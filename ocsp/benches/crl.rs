//! Building CRL shards as the updater does, without the gateway: `IssuerCrl::tbs` (entries to
//! a DER TBSCertList with x509-cert) and `IssuerCrl::assemble` (the signed CertificateList
//! around a fixed stand-in signature). Throughput is in entries: issue 15 asks for at least
//! 1,000,000 entries/s for the build. A third of the entries carry a reasonCode, as a mass
//! revocation for key compromise among ordinary ones would.
//!
//! ```sh
//! cargo bench -p ocsp --bench crl -- --warm-up-time 1 --measurement-time 5
//! ```

mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use ocsp::crl::{CrlEntry, IssuerCrl};
use ocsp::{IssuerName, Serial};

/// `n` entries with random-looking 16-byte serials (shard 0 of 128: the last byte is a multiple
/// of 128), revoked over a day, every third for keyCompromise.
pub fn entries(n: u64) -> Vec<CrlEntry> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut serial = [0u8; 16];
            serial[0] = 0x4c;
            serial[1..9].copy_from_slice(&x.to_be_bytes());
            serial[9..].copy_from_slice(&(i << 7).to_be_bytes()[1..]);
            CrlEntry {
                serial: Serial::from_be_bytes(&serial),
                revoked_at: 1_780_000_000 + (i % 86_400) as i64,
                reason: (i % 3 == 0).then_some(1),
            }
        })
        .collect()
}

fn crl(c: &mut Criterion) {
    let issuer = common::issuer();
    let crl = match IssuerCrl::new(
        &IssuerName("bench-ca".into()),
        "bench-p256",
        &issuer.certificate_der,
    ) {
        Ok(c) => c,
        Err(e) => panic!("issuer: {e}"),
    };
    let url = "http://crl.example.org/bench-ca/0.crl";
    let mut group = c.benchmark_group("crl_build");
    group.sample_size(10);
    for n in [10_000u64, 100_000, 1_000_000] {
        let list = entries(n);
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("tbs", n), &list, |b, list| {
            b.iter(|| {
                crl.tbs(
                    url,
                    1_780_100_000_000_000,
                    1_780_100_000,
                    1_780_704_800,
                    black_box(list),
                )
                .map(|d| d.len())
                .unwrap_or(0)
            })
        });
        let tbs = match crl.tbs(url, 1, 1_780_100_000, 1_780_704_800, &list) {
            Ok(t) => t,
            Err(e) => panic!("tbs: {e}"),
        };
        println!("{n} entries: TBSCertList {} bytes", tbs.len());
        // ecdsa-with-SHA256, and a 72-byte stand-in Ecdsa-Sig-Value.
        let alg = [
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
        ];
        let sig = [0x30u8; 72];
        group.bench_with_input(BenchmarkId::new("assemble", n), &tbs, |b, tbs| {
            b.iter(|| {
                crl.assemble(black_box(tbs), &alg, &sig)
                    .map(|d| d.len())
                    .unwrap_or(0)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, crl);
criterion_main!(benches);
