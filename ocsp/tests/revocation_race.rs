//! Property test (issue 6): a revocation racing with any interleaving of refreshes, restarts
//! and retries never leaves a `good` response for a revoked serial, never changes a published
//! revocation's time or reason, and is never lost from the pre-signer's worklist.
//!
//! Each case drives one real [`SqliteStore`] (a file in a temporary directory; "restart" drops
//! the store and the pre-signer and reopens the file) through a generated sequence of
//! operations on three serials of one issuer:
//! - a refresh split into its steps, each scheduled separately so that other operations run in
//!   between: read the worklist status (a read before a revocation is a stale read), then store
//!   the response signed for that status (`put`, `put_many`, `put_and_mark_many`, or the
//!   pre-signer's own `sign_and_store`), then mark it published;
//! - revocations recorded with `upsert_certificates` (repeated ones with other times and
//!   reasons, which the worklist must refuse), published by the refreshes that read them;
//! - retries of earlier puts and of earlier marks (a client or a pre-signer re-sending after a
//!   timeout: stale `good`s included);
//! - a second revocation request that signed its own time and reason after the first was
//!   published;
//! - whole pre-signer ticks (`Presigner::tick`: due → sign → store → mark), with the
//!   responses going either into the same SQLite file in one transaction (`Embedded`) or
//!   through the `ResponseStore` trait with separate marks (`Other`, the Redis path);
//! - clock advances (so published responses fall due again) and restarts (refreshes in flight
//!   survive a restart: another process sharing the file may still complete them).
//!
//! After every operation, and after a final restart and tick, the checks of `Model::check`
//! hold; each assertion says which faulty behaviour it catches.
//!
//! The pre-signer signs through a test-only [`TbsSigner`] that returns fixed bytes instead of
//! a signature. That is enough here: what is under test is the ordering logic of the store and
//! the pre-signer (the monotonic put, the worklist, `mark_published`, `due`), not signatures,
//! which `tests/presigner.rs` checks against a real gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use ocsp::presigner::{Presigner, PresignerMetrics, Responses};
use ocsp::store::ResponseStore;
use ocsp::store::SqliteStore;
use ocsp::{
    CertStatus, Error, HashAlg, Issuer, IssuerName, Issuers, Serial, StoredResponse, TbsSigner,
    config,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

const ISSUER: &str = "test-ca";
const SERIALS: usize = 3;
/// The start of the test's clock (2023-11-14T22:13:20Z); the clock only moves forward.
const T0: i64 = 1_700_000_000;
const HOUR: i64 = 3600;

/// Returns the same bytes for every message, and the DER AlgorithmIdentifier of
/// ecdsa-with-SHA256 (1.2.840.10045.4.3.2), so that the pre-signer can assemble an
/// `OCSPResponse` around it. Not a signature: see the module doc.
#[derive(Debug)]
struct FixedBytesSigner;

const ECDSA_WITH_SHA256: [u8; 12] = [
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

#[async_trait]
impl TbsSigner for FixedBytesSigner {
    async fn sign(&self, _key: &str, tbs: Vec<Vec<u8>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        Ok(tbs
            .iter()
            .map(|_| (vec![0x5a; 64], ECDSA_WITH_SHA256.to_vec()))
            .collect())
    }
}

fn issuer() -> IssuerName {
    IssuerName(ISSUER.into())
}

fn serial(index: usize) -> Serial {
    Serial::from_be_bytes(&[0x4a, 0x10 + index as u8])
}

fn presigner_config() -> config::Presigner {
    config::Presigner::default()
}

fn refresh_after_secs() -> i64 {
    presigner_config().refresh_after_hours as i64 * HOUR
}

/// A response as a pre-signer would sign it at `now`, with bytes that name what they attest.
fn response(index: usize, status: CertStatus, now: i64) -> StoredResponse {
    StoredResponse {
        status,
        this_update: now,
        next_update: now + presigner_config().validity_hours as i64 * HOUR,
        der: format!("serial {index} {status:?} at {now}").into_bytes(),
        http: Default::default(),
    }
}

/// How the store step of a refresh is made.
#[derive(Clone, Copy, Debug)]
enum PutMode {
    /// `ResponseStore::put`; the mark is a later, separate step (the Redis path).
    Put,
    /// `put_many` of one item; the mark is a later step.
    PutMany,
    /// `put_and_mark_many`: stored and marked in one transaction.
    PutAndMark,
    /// `Presigner::sign_and_store` with the status that was read: the pre-signer's own
    /// store-and-mark logic (including marking a refused response whose status is in place).
    Presigner,
}

#[derive(Clone, Debug)]
enum Op {
    /// A refresh of this serial starts: it reads the worklist status now.
    Read(usize),
    /// The refresh started `n`-th (modulo those pending) signs what it read, as of when it read
    /// it, and stores it.
    Store(usize, PutMode),
    /// The refresh `n` (modulo those stored and not yet marked) marks its response published.
    Mark(usize),
    /// A revocation is recorded in the worklist (refused if the serial is already revoked).
    Revoke {
        index: usize,
        at: i64,
        reason: Option<u8>,
    },
    /// An earlier put (any: stale `good`s, refused ones) is sent again.
    RetryPut(usize),
    /// An earlier mark of a stored response is sent again.
    RetryMark(usize),
    /// Another revocation request for the serial, signed with its own time and reason, arrives
    /// after a revocation was published.
    ConflictingRevocation {
        index: usize,
        at: i64,
        reason: Option<u8>,
    },
    /// A whole pre-signer tick at the current time.
    Tick,
    /// The clock moves on.
    Advance(i64),
    /// Every process stops and starts again on the same file.
    Restart,
}

fn revocation_time() -> impl Strategy<Value = i64> {
    // Few distinct values, so that repeated revocations often differ only in time or reason.
    (0..3i64).prop_map(|k| T0 - 1000 + k * 100)
}

fn reason() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![Just(None), Just(Some(1)), Just(Some(4))]
}

fn op() -> impl Strategy<Value = Op> {
    let index = 0..SERIALS;
    let mode = prop_oneof![
        Just(PutMode::Put),
        Just(PutMode::PutMany),
        Just(PutMode::PutAndMark),
        Just(PutMode::Presigner),
    ];
    prop_oneof![
        4 => index.clone().prop_map(Op::Read),
        4 => (any::<usize>(), mode).prop_map(|(n, m)| Op::Store(n, m)),
        3 => any::<usize>().prop_map(Op::Mark),
        3 => (index.clone(), revocation_time(), reason())
            .prop_map(|(index, at, reason)| Op::Revoke { index, at, reason }),
        2 => any::<usize>().prop_map(Op::RetryPut),
        2 => any::<usize>().prop_map(Op::RetryMark),
        1 => (index, revocation_time(), reason())
            .prop_map(|(index, at, reason)| Op::ConflictingRevocation { index, at, reason }),
        1 => Just(Op::Tick),
        2 => prop_oneof![Just(1i64), Just(HOUR), Just(refresh_after_secs())].prop_map(Op::Advance),
        1 => Just(Op::Restart),
    ]
}

/// A case: whether the pre-signer stores into its own file in one transaction, and the steps.
fn case() -> impl Strategy<Value = (bool, Vec<Op>)> {
    (any::<bool>(), proptest::collection::vec(op(), 1..64))
}

/// A refresh in flight.
#[derive(Clone, Debug)]
enum Refresh {
    /// Read `status` at `at`; not yet stored.
    Read {
        index: usize,
        status: CertStatus,
        at: i64,
    },
    /// Its response was offered to the store, which `stored` it or not; not yet marked.
    Stored {
        index: usize,
        response: StoredResponse,
        stored: bool,
    },
}

/// What the test knows, independently of the store.
struct Model {
    dir: PathBuf,
    embedded: bool,
    store: Arc<SqliteStore>,
    presigner: Presigner,
    now: i64,
    /// The worklist status each serial must have: `good` until its first recorded revocation,
    /// then that revocation forever.
    status: [CertStatus; SERIALS],
    /// Whether a revoked response was ever stored for the serial (seen after a step, or a put
    /// of one that the store reported stored).
    revocation_stored: [bool; SERIALS],
    in_flight: Vec<Refresh>,
    /// Every response ever offered to the store (for retries).
    puts: Vec<(usize, StoredResponse)>,
    /// Every mark ever made of a stored response (for retries).
    marks: Vec<(usize, CertStatus, i64)>,
}

fn open(dir: &Path, embedded: bool) -> (Arc<SqliteStore>, Presigner) {
    let store = Arc::new(SqliteStore::open(dir.join("ocsp.sqlite")).unwrap());
    let mut issuers = Issuers::default();
    issuers.add(Issuer::new(ISSUER, "test-key", include_bytes!("data/ca.pem")).unwrap());
    let responses = if embedded {
        Responses::Embedded
    } else {
        Responses::Other(store.clone() as Arc<dyn ResponseStore>)
    };
    let presigner = Presigner::new(
        store.clone(),
        responses,
        issuers,
        Arc::new(FixedBytesSigner),
        presigner_config(),
        PresignerMetrics::default(),
    );
    (store, presigner)
}

impl Model {
    async fn new(dir: &Path, embedded: bool) -> Self {
        let (store, presigner) = open(dir, embedded);
        // Every serial starts issued and good, published or not as the operations decide.
        let items = (0..SERIALS)
            .map(|i| (issuer(), serial(i), CertStatus::Good))
            .collect();
        assert_eq!(
            store.upsert_certificates(items).await.unwrap(),
            SERIALS as u64
        );
        Self {
            dir: dir.to_owned(),
            embedded,
            store,
            presigner,
            now: T0,
            status: [CertStatus::Good; SERIALS],
            revocation_stored: [false; SERIALS],
            in_flight: Vec::new(),
            puts: Vec::new(),
            marks: Vec::new(),
        }
    }

    async fn put(&mut self, index: usize, response: StoredResponse, mode: PutMode) -> bool {
        self.puts.push((index, response.clone()));
        let (i, s) = (issuer(), serial(index));
        let stored = match mode {
            PutMode::Put => self.store.put(&i, &s, &response).await.unwrap(),
            PutMode::PutMany => self
                .store
                .put_many(vec![(i, s, response.clone())])
                .await
                .unwrap()[0],
            PutMode::PutAndMark => {
                let out = self
                    .store
                    .put_and_mark_many(vec![(i, s, response.clone())])
                    .await
                    .unwrap();
                if out[0].3 {
                    self.marks
                        .push((index, response.status, response.this_update));
                }
                out[0].3
            }
            PutMode::Presigner => unreachable!("signed and stored by the pre-signer"),
        };
        if stored && response.status.is_revoked() {
            self.revocation_stored[index] = true;
        }
        stored
    }

    async fn mark(&mut self, index: usize, status: CertStatus, this_update: i64) {
        self.store
            .mark_published_many(vec![(issuer(), serial(index), status, this_update)])
            .await
            .unwrap();
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Read(index) => {
                let status = self
                    .store
                    .certificate(&issuer(), &serial(index))
                    .await
                    .unwrap()
                    .unwrap();
                self.in_flight.push(Refresh::Read {
                    index,
                    status,
                    at: self.now,
                });
            }
            Op::Store(n, mode) => {
                let reads: Vec<usize> = (0..self.in_flight.len())
                    .filter(|&k| matches!(self.in_flight[k], Refresh::Read { .. }))
                    .collect();
                if reads.is_empty() {
                    return;
                }
                let k = reads[n % reads.len()];
                let Refresh::Read { index, status, at } = self.in_flight[k].clone() else {
                    unreachable!()
                };
                if let PutMode::Presigner = mode {
                    // Signed as of when it was read, with the status it read.
                    let outcomes = self
                        .presigner
                        .sign_and_store(&[(issuer(), serial(index), status)], at)
                        .await
                        .unwrap();
                    if let ocsp::presigner::Outcome::Published(r) = &outcomes[0] {
                        self.puts.push((index, r.clone()));
                        if r.status.is_revoked() {
                            self.revocation_stored[index] = true;
                        }
                    }
                    self.in_flight.remove(k);
                    return;
                }
                let response = response(index, status, at);
                let stored = self.put(index, response.clone(), mode).await;
                if let PutMode::PutAndMark = mode {
                    self.in_flight.remove(k);
                } else {
                    self.in_flight[k] = Refresh::Stored {
                        index,
                        response,
                        stored,
                    };
                }
            }
            Op::Mark(n) => {
                let stored: Vec<usize> = (0..self.in_flight.len())
                    .filter(|&k| matches!(self.in_flight[k], Refresh::Stored { .. }))
                    .collect();
                if stored.is_empty() {
                    return;
                }
                let k = stored[n % stored.len()];
                let Refresh::Stored {
                    index,
                    response,
                    stored,
                } = self.in_flight.remove(k)
                else {
                    unreachable!()
                };
                // As the pre-signer does: only what was stored is marked.
                if stored {
                    self.mark(index, response.status, response.this_update)
                        .await;
                    self.marks
                        .push((index, response.status, response.this_update));
                }
            }
            Op::Revoke { index, at, reason } => {
                let revoked = CertStatus::Revoked { at, reason };
                self.store
                    .upsert_certificates(vec![(issuer(), serial(index), revoked)])
                    .await
                    .unwrap();
                if !self.status[index].is_revoked() {
                    self.status[index] = revoked;
                }
            }
            Op::RetryPut(n) => {
                if self.puts.is_empty() {
                    return;
                }
                let (index, response) = self.puts[n % self.puts.len()].clone();
                self.put(index, response, PutMode::Put).await;
            }
            Op::RetryMark(n) => {
                if self.marks.is_empty() {
                    return;
                }
                let (index, status, this_update) = self.marks[n % self.marks.len()];
                self.mark(index, status, this_update).await;
            }
            Op::ConflictingRevocation { index, at, reason } => {
                let first = self.status[index];
                let own = CertStatus::Revoked { at, reason };
                if !self.revocation_stored[index] || own == first {
                    return;
                }
                let late = response(index, own, self.now);
                let stored = self.put(index, late, PutMode::Put).await;
                // Catches a `may_replace` that lets a revocation replace another one.
                assert!(
                    !stored,
                    "serial {index}: a revocation {own:?} replaced the published {first:?}"
                );
            }
            Op::Tick => {
                // `tick`, not `refresh_once`: its bound on the work per tick makes a bug that
                // leaves items due for ever fail the checks instead of looping for ever.
                self.presigner.tick(self.now).await.unwrap();
            }
            Op::Advance(secs) => self.now += secs,
            Op::Restart => self.restart(),
        }
    }

    fn restart(&mut self) {
        // Refreshes in flight stay in flight: another process sharing the file, or a client
        // retrying, may still complete them (and a crashed one never does, which the
        // generator covers by never scheduling them).
        let (store, presigner) = open(&self.dir, self.embedded);
        self.store = store;
        self.presigner = presigner;
    }

    /// The invariants, after every step. `context` names the step for the failure message.
    async fn check(&mut self, context: &str) {
        let mut not_published = HashSet::new();
        for index in 0..SERIALS {
            let (i, s) = (issuer(), serial(index));
            let expected = self.status[index];
            // The worklist is monotonic: catches an upsert that moves a revoked certificate
            // back to good or changes a recorded revocation's time or reason.
            assert_eq!(
                self.store.certificate(&i, &s).await.unwrap(),
                Some(expected),
                "{context}: worklist status of serial {index}"
            );
            let stored = self.store.get(&i, &s).await.unwrap();
            let stored_status = stored.as_ref().map(|r| r.status);
            if stored_status.is_some_and(CertStatus::is_revoked) {
                self.revocation_stored[index] = true;
            }
            // Issue 13: the pre-signer stores a response per CertID hash (the direct puts here
            // are of the old layout, one response for both). Once a revocation is stored, what a
            // request with either hash is answered is that revocation or nothing: catches a
            // `good` left under one hash while the other is revoked, and a revocation put for
            // one hash beside another revocation under the other.
            if self.revocation_stored[index] {
                for hash in [HashAlg::Sha1, HashAlg::Sha256] {
                    let served = self.store.get_for(&i, &s, hash).await.unwrap();
                    assert!(
                        served
                            .as_ref()
                            .is_none_or(|r| Some(r.status) == stored_status),
                        "{context}: serial {index} stored {stored_status:?}, a {hash:?} request gets {served:?}"
                    );
                }
            }
            match expected {
                // A good certificate never has a revoked response: catches responses stored
                // under the wrong key, or revocations applied to the wrong serial.
                CertStatus::Good => assert!(
                    stored_status.is_none_or(|st| st == CertStatus::Good),
                    "{context}: serial {index} is good, stored {stored:?}"
                ),
                // THE property. Once a revocation was stored, the stored response stays that
                // revocation with its first recorded time and reason: catches a stale refresh's
                // `good` (or a retried one) replacing it, a second revocation replacing it, and
                // a reopened store not finding it (a put acknowledged but not committed).
                CertStatus::Revoked { .. } if self.revocation_stored[index] => assert_eq!(
                    stored_status,
                    Some(expected),
                    "{context}: serial {index} is revoked as {expected:?}, stored {stored:?}"
                ),
                // Recorded, not yet (or not visibly) published: it must still be pending.
                CertStatus::Revoked { .. } => {
                    not_published.insert(s);
                }
            }
        }
        // A revocation not yet published is listed by `due` among the revocations, which come
        // before everything else: catches a stale `good`'s mark (or a retried one, or a put
        // and mark of a refused response) recording the revocation as published, and a
        // revocation demoted behind routine refreshes.
        let pending = self
            .store
            .backlog(self.now, refresh_after_secs())
            .await
            .unwrap()
            .revocations_pending;
        let due = self
            .store
            .due(self.now, refresh_after_secs(), pending as usize)
            .await
            .unwrap();
        // Only revocations are counted and listed there: catches a good certificate queued as
        // a revocation (an import's `good` given the revocation's urgency).
        for (i, s, status) in &due {
            let index = (0..SERIALS).find(|&k| serial(k) == *s).unwrap();
            assert!(
                *i == issuer() && status.is_revoked() && *status == self.status[index],
                "{context}: due lists serial {index} among the revocations as {status:?}: {due:?}"
            );
        }
        let listed: HashSet<Serial> = due.into_iter().map(|(_, s, _)| s).collect();
        for s in &not_published {
            assert!(
                listed.contains(s),
                "{context}: the revocation of {s} is not published and not pending (due: {listed:?})"
            );
        }
    }
}

async fn run_case(embedded: bool, ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new(dir.path(), embedded).await;
    model.check("start").await;
    for (step, op) in ops.iter().enumerate() {
        model.apply(op).await;
        model.check(&format!("step {step} ({op:?})")).await;
    }
    // However the race went, a restart and one tick publish every recorded revocation with its
    // first time and reason: catches a revocation left behind for good (never listed by `due`,
    // or refused forever because another revocation was stored).
    model.now += 1;
    model.restart();
    model.presigner.tick(model.now).await.unwrap();
    model.check("final tick").await;
    for index in 0..SERIALS {
        if model.status[index].is_revoked() {
            let stored = model.store.get(&issuer(), &serial(index)).await.unwrap();
            assert_eq!(
                stored.map(|r| r.status),
                Some(model.status[index]),
                "serial {index} after the final tick"
            );
        }
    }
    let backlog = model
        .store
        .backlog(model.now, refresh_after_secs())
        .await
        .unwrap();
    // Catches a publication stored but never recorded (a put without its mark), which would
    // keep the revocation, or the new certificate, due for ever.
    assert_eq!(backlog.revocations_pending, 0, "after the final tick");
    assert_eq!(backlog.unpublished, 0, "after the final tick");
}

#[test]
fn a_revocation_racing_refreshes_restarts_and_retries_is_never_replaced_by_good() {
    let config = ProptestConfig {
        cases: 128,
        // No regression files written into the source tree; a failure prints its minimal case.
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    runner
        .run(&case(), |(embedded, ops)| {
            // A runtime per case: a failing case panics inside it (proptest catches the panic
            // and shrinks), and the next case should not inherit its state.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(run_case(embedded, &ops));
            Ok(())
        })
        .unwrap();
}
