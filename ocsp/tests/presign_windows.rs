//! The pre-signer reads its worklist in windows and reads the next window while the current
//! one is still being signed (issue 16): a `due` at that moment still lists what is in flight.
//! These tests run passes of many small windows (batch 4: a first window of 128 certificates,
//! then 2,048) over a real SQLite store and check what the overlap must not change:
//! - nothing is signed twice in a pass, and everything due is signed;
//! - a response the store refuses is not signed again in the same pass;
//! - revocations recorded while the pass runs (of certificates already published, in flight,
//!   or not yet read) are published as revocations before the pass ends.
//!
//! The signer returns fixed bytes instead of signatures: what is under test is which
//! certificates are signed and what is stored, not signatures (`tests/presigner.rs` checks
//! those through the real gateway).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stand_in;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ocsp::presigner::{Presigner, PresignerMetrics, Responses};
use ocsp::store::{ResponseStore, SqliteStore};
use ocsp::{CertStatus, Error, HashAlg, Issuer, IssuerName, Issuers, Serial, TbsSigner, config};

const ISSUER: &str = "test-ca";
/// Several full windows and a partial one at batch 4.
const CERTIFICATES: usize = 6_000;
const BATCH: usize = 4;

fn issuer() -> IssuerName {
    IssuerName(ISSUER.into())
}

fn serial(i: usize) -> Serial {
    Serial::from_be_bytes(&[0x11, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

fn revoked(at: i64) -> CertStatus {
    CertStatus::Revoked {
        at,
        reason: Some(1),
    }
}

/// Fixed bytes for every item; counts the items and, on the calls `revoke` names, records
/// those revocations in the worklist before answering (as the CA would while the pass runs).
#[derive(Debug)]
struct Signer {
    items: AtomicUsize,
    calls: AtomicUsize,
    /// (call number, certificate to revoke on that call).
    revoke: Mutex<Vec<(usize, Serial)>>,
    store: Arc<SqliteStore>,
    revoked_at: i64,
}

#[async_trait]
impl TbsSigner for Signer {
    async fn sign(&self, _key: &str, tbs: Vec<Vec<u8>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let now: Vec<_> = {
            let mut revoke = self.revoke.lock().unwrap();
            let (now, later) = revoke.drain(..).partition(|(on, _)| *on == call);
            *revoke = later;
            now
        };
        if !now.is_empty() {
            let n = now.len() as u64;
            let items = now
                .into_iter()
                .map(|(_, s)| (issuer(), s, revoked(self.revoked_at)))
                .collect();
            assert_eq!(self.store.upsert_certificates(items).await?, n);
        }
        self.items.fetch_add(tbs.len(), Ordering::SeqCst);
        Ok(tbs
            .iter()
            .map(|_| (vec![0x5a; 64], stand_in::ECDSA_WITH_SHA256.to_vec()))
            .collect())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    signer: Arc<Signer>,
    presigner: Presigner,
}

async fn setup(revoke: Vec<(usize, Serial)>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("ocsp.sqlite")).unwrap());
    let items = (0..CERTIFICATES)
        .map(|i| (issuer(), serial(i), CertStatus::Good))
        .collect();
    store.upsert_certificates(items).await.unwrap();
    let mut issuers = Issuers::default();
    issuers.add(Issuer::new(ISSUER, "test-key", include_bytes!("data/ca.pem")).unwrap());
    let signer = Arc::new(Signer {
        items: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
        revoke: Mutex::new(revoke),
        store: store.clone(),
        revoked_at: ocsp::unix_now() - 60,
    });
    let presigner = Presigner::new(
        store.clone(),
        Responses::Embedded,
        issuers,
        signer.clone(),
        config::Presigner {
            batch: BATCH,
            ..config::Presigner::default()
        },
        PresignerMetrics::default(),
    );
    Setup {
        _dir: dir,
        store,
        signer,
        presigner,
    }
}

/// `run_once`, which must end: a pass that kept re-reading what it signed would not.
async fn run_once(presigner: &Presigner, now: i64) -> ocsp::presigner::OnceReport {
    tokio::time::timeout(std::time::Duration::from_secs(30), presigner.run_once(now))
        .await
        .expect("the pass ends")
        .unwrap()
}

/// The status of the SHA-256 response stored for certificate `i`.
async fn stored_status(store: &SqliteStore, i: usize) -> Option<CertStatus> {
    store
        .get_for(&issuer(), &serial(i), HashAlg::Sha256)
        .await
        .unwrap()
        .map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_of_many_windows_signs_each_certificate_once() {
    let s = setup(Vec::new()).await;
    let now = ocsp::unix_now();
    let report = run_once(&s.presigner, now).await;
    // Two responses (SHA-1 and SHA-256 CertIDs) per certificate, each signed once: a window
    // read while the one before was in flight listed none of its certificates again.
    assert_eq!(report.certificates, CERTIFICATES);
    assert_eq!(report.responses, 2 * CERTIFICATES as u64);
    assert_eq!(s.signer.items.load(Ordering::SeqCst), 2 * CERTIFICATES);
    assert_eq!(report.still_due, 0);
    for i in [0, 127, 128, 2_175, 2_176, CERTIFICATES - 1] {
        assert_eq!(
            stored_status(&s.store, i).await,
            Some(CertStatus::Good),
            "{i}"
        );
    }
    // A second pass at the same time finds nothing due.
    let again = run_once(&s.presigner, now).await;
    assert_eq!(again.certificates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_response_is_not_signed_again_in_the_same_pass() {
    let s = setup(Vec::new()).await;
    // A revocation in the response store that the worklist does not know of: the pass's `good`
    // is refused, and the certificate stays due.
    let now = ocsp::unix_now();
    let kept = stand_in::built(
        &serial(5),
        revoked(now - 3600),
        now - 60,
        &[HashAlg::Sha256],
    )
    .await;
    assert!(s.store.put(&issuer(), &serial(5), &kept).await.unwrap());
    let report = run_once(&s.presigner, now).await;
    // Certificate 5 was signed in the first window and refused; the windows read after that
    // (while later ones were in flight) left it out.
    assert_eq!(report.certificates, CERTIFICATES);
    assert_eq!(s.signer.items.load(Ordering::SeqCst), 2 * CERTIFICATES);
    assert_eq!(report.still_due, 1);
    assert!(stored_status(&s.store, 5).await.unwrap().is_revoked());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_recorded_during_a_pass_are_published_in_it() {
    // On the 101st gateway call (two per batch of 4, one per CertID hash: batch 50, the
    // second window's certificates ~200), revoke a certificate of the first window (published
    // good by then), one of the second window (read good, in flight) and one of the last window
    // (not read yet). On the 2,981st (batch 1,490, certificates ~5,960 of the last window, which
    // was the last read), revoke one of that window read good: only a fresh `due` after the
    // last window finds it.
    let early = [3, 200, CERTIFICATES - 3];
    let late = CERTIFICATES - 10;
    let mut revoke: Vec<_> = early.iter().map(|&i| (100, serial(i))).collect();
    revoke.push((2_980, serial(late)));
    let s = setup(revoke).await;
    let report = run_once(&s.presigner, ocsp::unix_now()).await;
    assert_eq!(report.still_due, 0, "every revocation published");
    assert_eq!(report.revocations_pending, 0);
    for i in early.into_iter().chain([late]) {
        assert!(
            stored_status(&s.store, i).await.unwrap().is_revoked(),
            "certificate {i} served as revoked"
        );
    }
    for i in [0, 4, 199, 201, late - 1, CERTIFICATES - 1] {
        assert_eq!(
            stored_status(&s.store, i).await,
            Some(CertStatus::Good),
            "{i}"
        );
    }
    // Each certificate once, and the three read good before their revocation once more,
    // revoked; `CERTIFICATES - 3` was read revoked to begin with.
    assert_eq!(report.certificates, CERTIFICATES + 3);
}
