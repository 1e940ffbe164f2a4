//! Tests of the embedded SQLite store: round trips, the monotonic publishing rule (also when two
//! processes race on one file), the pre-signer's worklist (`due` order, `mark_published`),
//! durability across a crash, and corrupt rows. `bench_one_million` (ignored; run it in release
//! mode with `--ignored --nocapture`) produces the figures quoted in `store/sqlite.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stand_in;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocsp::store::ResponseStore;
use ocsp::store::{Backlog, SqliteStore};
use ocsp::{CertStatus, Error, IssuerName, Serial, StoredResponse};
use stand_in::built;

fn issuer() -> IssuerName {
    IssuerName("test-ca".into())
}

fn serial(n: u64) -> Serial {
    // 16 bytes like real serials, unique per n.
    let mut bytes = vec![0x4a; 8];
    bytes.extend_from_slice(&n.to_be_bytes());
    Serial::from_be_bytes(&bytes)
}

fn response(status: CertStatus, this_update: i64) -> StoredResponse {
    StoredResponse {
        status,
        this_update,
        next_update: this_update + 4 * 86_400,
        der: format!("der {status:?} {this_update}").into_bytes(),
        http: Default::default(),
    }
}

fn revoked(at: i64, reason: Option<u8>) -> CertStatus {
    CertStatus::Revoked { at, reason }
}

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(dir.join("ocsp.sqlite")).unwrap()
}

#[tokio::test]
async fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.kind(), "sqlite");
    assert_eq!(store.get(&issuer(), &serial(1)).await.unwrap(), None);

    let good = response(CertStatus::Good, 1_000);
    assert!(store.put(&issuer(), &serial(1), &good).await.unwrap());
    assert_eq!(
        store.get(&issuer(), &serial(1)).await.unwrap(),
        Some(good.clone())
    );

    let rev = response(revoked(1_500, Some(4)), 2_000);
    assert!(store.put(&issuer(), &serial(2), &rev).await.unwrap());
    assert_eq!(store.get(&issuer(), &serial(2)).await.unwrap(), Some(rev));
    let no_reason = response(revoked(1_500, None), 2_000);
    assert!(store.put(&issuer(), &serial(3), &no_reason).await.unwrap());
    assert_eq!(
        store.get(&issuer(), &serial(3)).await.unwrap(),
        Some(no_reason)
    );

    // Same serial under another issuer is another record.
    assert_eq!(
        store
            .get(&IssuerName("other".into()), &serial(1))
            .await
            .unwrap(),
        None
    );
    // Serials are canonical: leading zero bytes do not make another key.
    let padded = Serial::from_be_bytes(&[&[0u8, 0][..], serial(1).as_bytes()].concat());
    assert_eq!(store.get(&issuer(), &padded).await.unwrap(), Some(good));

    let many = (10..20)
        .map(|n| (issuer(), serial(n), response(CertStatus::Good, 5_000)))
        .collect();
    assert_eq!(store.put_many(many).await.unwrap(), vec![true; 10]);
    assert_eq!(
        store
            .get(&issuer(), &serial(15))
            .await
            .unwrap()
            .unwrap()
            .this_update,
        5_000
    );
}

#[tokio::test]
async fn puts_are_monotonic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (i, s) = (issuer(), serial(7));

    assert!(
        store
            .put(&i, &s, &response(CertStatus::Good, 1_000))
            .await
            .unwrap()
    );
    // An older good (a slow refresh) loses; the same thisUpdate (a retry) is accepted.
    assert!(
        !store
            .put(&i, &s, &response(CertStatus::Good, 900))
            .await
            .unwrap()
    );
    assert!(
        store
            .put(&i, &s, &response(CertStatus::Good, 1_000))
            .await
            .unwrap()
    );
    // A revocation replaces good even with an older thisUpdate.
    let rev = response(revoked(950, Some(1)), 960);
    assert!(store.put(&i, &s, &rev).await.unwrap());
    // Nothing turns it back to good, however new.
    assert!(
        !store
            .put(&i, &s, &response(CertStatus::Good, 10_000))
            .await
            .unwrap()
    );
    // The first revocation's time and reason stand.
    assert!(
        !store
            .put(&i, &s, &response(revoked(990, Some(1)), 2_000))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put(&i, &s, &response(revoked(950, Some(4)), 2_000))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put(&i, &s, &response(revoked(950, None), 2_000))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put(&i, &s, &response(revoked(950, Some(1)), 900))
            .await
            .unwrap()
    );
    assert_eq!(store.get(&i, &s).await.unwrap(), Some(rev));
    // A refresh of the same revocation is accepted.
    let refreshed = response(revoked(950, Some(1)), 3_000);
    assert!(store.put(&i, &s, &refreshed).await.unwrap());
    assert_eq!(store.get(&i, &s).await.unwrap(), Some(refreshed));

    // Batches apply the rule item by item.
    let outcome = store
        .put_many(vec![
            (i.clone(), s.clone(), response(CertStatus::Good, 20_000)),
            (i.clone(), serial(8), response(CertStatus::Good, 20_000)),
        ])
        .await
        .unwrap();
    assert_eq!(outcome, vec![false, true]);
    assert!(
        store
            .get(&i, &s)
            .await
            .unwrap()
            .unwrap()
            .status
            .is_revoked()
    );
}

/// Two stores on one file stand for two processes (each has its own connections, so only
/// SQLite's file locking orders them). Many refreshes race one revocation; revoked must win.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_wins_a_race_between_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let stores = [open(dir.path()), open(dir.path())];
    for round in 0..20u64 {
        let s = serial(1_000 + round);
        let rev = response(revoked(5_000, Some(1)), 5_000);
        let barrier = Arc::new(tokio::sync::Barrier::new(17));
        let mut tasks = Vec::new();
        for n in 0..17i64 {
            let store = stores[(n % 2) as usize].clone();
            let (s, rev, barrier) = (s.clone(), rev.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                // Task 8 is the revocation; the others are refreshes with later and later
                // thisUpdates, some issued after it.
                let r = if n == 8 {
                    rev
                } else {
                    response(CertStatus::Good, 4_990 + n)
                };
                store.put(&issuer(), &s, &r).await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for store in &stores {
            assert_eq!(
                store.get(&issuer(), &s).await.unwrap(),
                Some(rev.clone()),
                "round {round}"
            );
        }
    }
}

#[tokio::test]
async fn worklist_upserts_are_monotonic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (i, s) = (issuer(), serial(1));
    assert_eq!(store.certificate(&i, &s).await.unwrap(), None);
    assert!(
        store
            .upsert_certificate(&i, &s, CertStatus::Good)
            .await
            .unwrap()
    );
    assert!(
        !store
            .upsert_certificate(&i, &s, CertStatus::Good)
            .await
            .unwrap()
    );
    assert!(
        store
            .upsert_certificate(&i, &s, revoked(100, Some(1)))
            .await
            .unwrap()
    );
    assert!(
        !store
            .upsert_certificate(&i, &s, CertStatus::Good)
            .await
            .unwrap()
    );
    assert!(
        !store
            .upsert_certificate(&i, &s, revoked(200, Some(1)))
            .await
            .unwrap()
    );
    assert!(
        !store
            .upsert_certificate(&i, &s, revoked(100, None))
            .await
            .unwrap()
    );
    assert!(
        !store
            .upsert_certificate(&i, &s, revoked(100, Some(1)))
            .await
            .unwrap()
    );
    assert_eq!(
        store.certificate(&i, &s).await.unwrap(),
        Some(revoked(100, Some(1)))
    );

    let batch = vec![
        (i.clone(), serial(2), CertStatus::Good),
        (i.clone(), serial(3), revoked(50, None)),
        (i.clone(), s.clone(), CertStatus::Good),
        (i.clone(), serial(2), revoked(60, Some(5))),
    ];
    assert_eq!(store.upsert_certificates(batch).await.unwrap(), 3);
    assert_eq!(
        store.certificate(&i, &serial(2)).await.unwrap(),
        Some(revoked(60, Some(5)))
    );
    assert_eq!(
        store.certificate(&i, &s).await.unwrap(),
        Some(revoked(100, Some(1)))
    );
}

#[tokio::test]
async fn due_puts_revocations_first_then_unpublished_then_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let i = issuer();
    let now = 100_000;
    let refresh_after = 10_000; // due when thisUpdate <= 90_000
    for n in 1..=7 {
        store
            .upsert_certificate(&i, &serial(n), CertStatus::Good)
            .await
            .unwrap();
    }
    // 1: never published. 2: published long ago. 3: published even longer ago. 4: fresh.
    // 5: published good, then revoked -> pending revocation. 6: revoked from the start.
    // 7: published exactly at the threshold.
    store
        .mark_published(&i, &serial(2), CertStatus::Good, 80_000)
        .await
        .unwrap();
    store
        .mark_published(&i, &serial(3), CertStatus::Good, 50_000)
        .await
        .unwrap();
    store
        .mark_published(&i, &serial(4), CertStatus::Good, 95_000)
        .await
        .unwrap();
    store
        .mark_published(&i, &serial(5), CertStatus::Good, 95_000)
        .await
        .unwrap();
    store
        .mark_published(&i, &serial(7), CertStatus::Good, 90_000)
        .await
        .unwrap();
    store
        .upsert_certificate(&i, &serial(5), revoked(96_000, Some(1)))
        .await
        .unwrap();
    store
        .upsert_certificate(&i, &serial(6), revoked(97_000, None))
        .await
        .unwrap();

    let due = store.due(now, refresh_after, 100).await.unwrap();
    let order: Vec<Serial> = due.iter().map(|(_, s, _)| s.clone()).collect();
    let (revocations, rest) = order.split_at(2);
    let mut revocations = revocations.to_vec();
    revocations.sort();
    assert_eq!(revocations, vec![serial(5), serial(6)]);
    assert_eq!(rest, &[serial(1), serial(3), serial(2), serial(7)]);
    assert!(due.iter().all(|(issuer, _, _)| issuer == &i));
    assert_eq!(
        due.iter().find(|(_, s, _)| s == &serial(5)).unwrap().2,
        revoked(96_000, Some(1))
    );

    assert_eq!(store.due(now, refresh_after, 3).await.unwrap().len(), 3);
    assert!(store.due(now, refresh_after, 0).await.unwrap().is_empty());

    let backlog = store.backlog(now, refresh_after).await.unwrap();
    assert_eq!(
        backlog,
        Backlog {
            certificates: 7,
            due: 6,
            revocations_pending: 2,
            unpublished: 1,
            oldest_this_update: Some(50_000),
        }
    );

    // Publishing the revocations and the rest empties the list.
    store
        .mark_published_many(
            due.iter()
                .map(|(i, s, st)| (i.clone(), s.clone(), *st, now))
                .collect(),
        )
        .await
        .unwrap();
    assert!(store.due(now, refresh_after, 100).await.unwrap().is_empty());
    // And everything comes back once old enough.
    assert_eq!(
        store
            .due(now + 20_000, refresh_after, 100)
            .await
            .unwrap()
            .len(),
        7
    );
}

#[tokio::test]
async fn mark_published_needs_the_current_status() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (i, s) = (issuer(), serial(1));
    let now = 100_000;
    store
        .upsert_certificate(&i, &s, CertStatus::Good)
        .await
        .unwrap();
    store
        .mark_published(&i, &s, CertStatus::Good, now)
        .await
        .unwrap();
    assert!(store.due(now, 1_000, 10).await.unwrap().is_empty());

    // The revocation arrives while a refresh of `good` is in flight; the refresh finishes later.
    store
        .upsert_certificate(&i, &s, revoked(now + 5, Some(1)))
        .await
        .unwrap();
    store
        .mark_published(&i, &s, CertStatus::Good, now + 10)
        .await
        .unwrap();
    assert_eq!(
        store.due(now + 10, 1_000, 10).await.unwrap(),
        vec![(i.clone(), s.clone(), revoked(now + 5, Some(1)))]
    );
    // A revocation with another time or reason is not the current status either.
    store
        .mark_published(&i, &s, revoked(now + 5, Some(4)), now + 10)
        .await
        .unwrap();
    store
        .mark_published(&i, &s, revoked(now + 6, Some(1)), now + 10)
        .await
        .unwrap();
    store
        .mark_published(&i, &s, revoked(now + 5, None), now + 10)
        .await
        .unwrap();
    assert_eq!(store.due(now + 10, 1_000, 10).await.unwrap().len(), 1);

    store
        .mark_published(&i, &s, revoked(now + 5, Some(1)), now + 10)
        .await
        .unwrap();
    assert!(store.due(now + 10, 1_000, 10).await.unwrap().is_empty());
    // A late, older mark does not move the recorded thisUpdate back.
    store
        .mark_published(&i, &s, revoked(now + 5, Some(1)), now - 50_000)
        .await
        .unwrap();
    assert!(store.due(now + 10, 1_000, 10).await.unwrap().is_empty());
    assert_eq!(
        store
            .backlog(now + 10, 1_000)
            .await
            .unwrap()
            .oldest_this_update,
        Some(now + 10)
    );
    // Unknown certificates are ignored.
    store
        .mark_published(&i, &serial(99), CertStatus::Good, now)
        .await
        .unwrap();
    assert_eq!(store.certificate(&i, &serial(99)).await.unwrap(), None);
}

/// The child half of `acknowledged_writes_survive_a_crash`: writes, then aborts the process (no
/// destructors, no SQLite close, no checkpoint). Does nothing unless run by that test.
#[tokio::test]
#[ignore = "run as a child process by acknowledged_writes_survive_a_crash"]
async fn crash_child() {
    let Ok(path) = std::env::var("OCSP_CRASH_CHILD_DB") else {
        return;
    };
    let store = SqliteStore::open(&path).unwrap();
    store
        .put(&issuer(), &serial(1), &response(revoked(10, Some(1)), 20))
        .await
        .unwrap();
    store
        .upsert_certificate(&issuer(), &serial(1), revoked(10, Some(1)))
        .await
        .unwrap();
    let many = (100..1_100)
        .map(|n| (issuer(), serial(n), response(CertStatus::Good, 30)))
        .collect();
    store.put_many(many).await.unwrap();
    std::process::abort();
}

#[tokio::test]
async fn acknowledged_writes_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ocsp.sqlite");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OCSP_CRASH_CHILD_DB", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child should have aborted");
    assert!(
        dir.path().join("ocsp.sqlite-wal").exists(),
        "the WAL was left behind, as after a crash"
    );

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.get(&issuer(), &serial(1)).await.unwrap(),
        Some(response(revoked(10, Some(1)), 20))
    );
    assert_eq!(
        store.certificate(&issuer(), &serial(1)).await.unwrap(),
        Some(revoked(10, Some(1)))
    );
    for n in [100, 555, 1_099] {
        assert_eq!(
            store
                .get(&issuer(), &serial(n))
                .await
                .unwrap()
                .unwrap()
                .this_update,
            30
        );
    }
    // And still monotonic after recovery.
    assert!(
        !store
            .put(&issuer(), &serial(1), &response(CertStatus::Good, 1_000))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .put(&issuer(), &serial(1), &response(CertStatus::Good, 10))
            .await
            .unwrap();
        store
            .upsert_certificate(&issuer(), &serial(1), CertStatus::Good)
            .await
            .unwrap();
        store
            .mark_published(&issuer(), &serial(1), CertStatus::Good, 10)
            .await
            .unwrap();
    }
    let store = open(dir.path());
    assert_eq!(
        store.get(&issuer(), &serial(1)).await.unwrap(),
        Some(response(CertStatus::Good, 10))
    );
    assert_eq!(
        store.backlog(20, 100).await.unwrap().oldest_this_update,
        Some(10)
    );
}

/// Several openers of one new file at the same moment (the responder, the pre-signer and the
/// ACME frontend start together; CI's first red run was this): each must get a working store.
/// Switching a new file to WAL takes an exclusive lock that SQLite does not wait for, so the
/// store has to retry that step itself.
#[test]
fn simultaneous_openers_of_a_new_file_all_succeed() {
    const OPENERS: usize = 8;
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ocsp.sqlite");
        let start = Arc::new(std::sync::Barrier::new(OPENERS));
        let threads: Vec<_> = (0..OPENERS)
            .map(|_| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    SqliteStore::open(&path).map(|_| ())
                })
            })
            .collect();
        for (i, thread) in threads.into_iter().enumerate() {
            if let Err(e) = thread.join().unwrap() {
                panic!("round {round}, opener {i}: {e}");
            }
        }
    }
}

/// Writes a row that breaks the schema's CHECKs, as damage or a foreign tool would.
fn corrupt(path: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch(&format!("PRAGMA ignore_check_constraints = ON; {sql}"))
        .unwrap();
}

fn is_corrupt<T: std::fmt::Debug>(result: Result<T, Error>) -> bool {
    matches!(result, Err(Error::Corrupt { .. }))
}

#[tokio::test]
async fn corrupt_rows_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ocsp.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    let i = issuer();
    for n in 1..=4 {
        store
            .put(&i, &serial(n), &response(CertStatus::Good, 10))
            .await
            .unwrap();
        store
            .upsert_certificate(&i, &serial(n), CertStatus::Good)
            .await
            .unwrap();
    }
    let hex = |n: u64| hex::encode(serial(n).as_bytes());
    corrupt(
        &path,
        &format!(
            "UPDATE responses SET status = 9 WHERE serial = x'{}';",
            hex(1)
        ),
    );
    corrupt(
        &path,
        &format!(
            "UPDATE responses SET status = 1 WHERE serial = x'{}';",
            hex(2)
        ),
    );
    corrupt(
        &path,
        &format!(
            "UPDATE responses SET status = 1, revoked_at = 5, reason = 300 WHERE serial = x'{}';",
            hex(3)
        ),
    );
    corrupt(
        &path,
        &format!(
            "UPDATE certificates SET status = 1 WHERE serial = x'{}';",
            hex(1)
        ),
    );

    for n in 1..=3 {
        let got = store.get(&i, &serial(n)).await;
        assert!(is_corrupt(got), "serial {n}");
    }
    // A put over a corrupt row is refused (it might have been a revocation) and leaves it alone.
    assert!(is_corrupt(
        store
            .put(&i, &serial(2), &response(CertStatus::Good, 20))
            .await
    ));
    assert!(is_corrupt(
        store
            .put_many(vec![(i.clone(), serial(2), response(CertStatus::Good, 20))])
            .await
    ));
    assert!(is_corrupt(store.get(&i, &serial(2)).await));
    // The other rows are fine.
    assert_eq!(
        store.get(&i, &serial(4)).await.unwrap(),
        Some(response(CertStatus::Good, 10))
    );

    assert!(is_corrupt(store.certificate(&i, &serial(1)).await));
    // The worklist skips the bad row rather than stopping every refresh.
    let due: Vec<Serial> = store
        .due(100, 10, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, s, _)| s)
        .collect();
    assert_eq!(due.len(), 3);
    assert!(!due.contains(&serial(1)));
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ocsp.sqlite");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    match SqliteStore::open(&path) {
        Err(Error::Corrupt { .. }) => {}
        other => panic!("expected Error::Corrupt, got {other:?}"),
    }
    // A directory that does not exist: an error too.
    assert!(SqliteStore::open(dir.path().join("missing/ocsp.sqlite")).is_err());
}

/// Figures for the module documentation. Run:
/// `cargo test --release -p ocsp --test store_sqlite -- --ignored --nocapture bench_one_million`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: builds a 1,000,000-row store"]
async fn bench_one_million() {
    const N: u64 = 1_000_000;
    const BATCH: u64 = 10_000;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("ocsp.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    let i = issuer();
    let der = vec![0x30; 500];

    let started = Instant::now();
    for chunk in 0..N / BATCH {
        let items = (chunk * BATCH..(chunk + 1) * BATCH)
            .map(|n| {
                let r = StoredResponse {
                    status: CertStatus::Good,
                    this_update: 1_000,
                    next_update: 2_000,
                    der: der.clone(),
                    http: Default::default(),
                };
                (i.clone(), serial(n), r)
            })
            .collect();
        store.put_many(items).await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "put_many: {N} responses in {secs:.1} s = {:.0} rows/s",
        N as f64 / secs
    );

    let started = Instant::now();
    for chunk in 0..N / BATCH {
        let items = (chunk * BATCH..(chunk + 1) * BATCH)
            .map(|n| (i.clone(), serial(n), CertStatus::Good))
            .collect();
        store.upsert_certificates(items).await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "upsert_certificates: {N} in {secs:.1} s = {:.0} rows/s",
        N as f64 / secs
    );

    // Lookups through the async API, 64 callers, random serials.
    let run_for = Duration::from_secs(5);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let (store, i) = (store.clone(), i.clone());
        tasks.push(tokio::spawn(async move {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
            let mut done = 0u64;
            while started.elapsed() < run_for {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let got = store.get(&i, &serial(x % N)).await.unwrap();
                assert!(got.is_some());
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "get (async, 64 callers): {total} in {secs:.1} s = {:.0} lookups/s",
        total as f64 / secs
    );

    // The same lookups on one connection, synchronously: SQLite's own cost.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "mmap_size", 1i64 << 30).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT status, revoked_at, reason, this_update, next_update, der FROM responses
             WHERE issuer = ?1 AND serial = ?2",
        )
        .unwrap();
    let started = Instant::now();
    let mut x = 0x1234_5678u64;
    let mut total = 0u64;
    while started.elapsed() < run_for {
        for _ in 0..1_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let der: Vec<u8> = stmt
                .query_row(rusqlite::params![i.0, serial(x % N).as_bytes()], |r| {
                    r.get(5)
                })
                .unwrap();
            assert_eq!(der.len(), 500);
        }
        total += 1_000;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "get (sync, one connection): {:.0} lookups/s",
        total as f64 / secs
    );
    drop(stmt);
    drop(conn);

    // Single durable puts.
    let started = Instant::now();
    for n in 0..100 {
        let r = StoredResponse {
            status: CertStatus::Good,
            this_update: 2_000,
            next_update: 3_000,
            der: der.clone(),
            http: Default::default(),
        };
        assert!(store.put(&i, &serial(n), &r).await.unwrap());
    }
    println!(
        "put (one transaction each): {:.2} ms",
        started.elapsed().as_secs_f64() * 10.0
    );

    // Several times: the first call on a connection also pays for preparing the statement.
    let mut due = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        due = store.due(5_000, 1_000, 256).await.unwrap();
        println!(
            "due(limit 256) over {N}: {:.2} ms ({} rows)",
            started.elapsed().as_secs_f64() * 1e3,
            due.len()
        );
    }
    let started = Instant::now();
    store
        .mark_published_many(
            due.iter()
                .map(|(i, s, st)| (i.clone(), s.clone(), *st, 5_000))
                .collect(),
        )
        .await
        .unwrap();
    println!(
        "mark_published_many(256): {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    for _ in 0..2 {
        let started = Instant::now();
        let backlog = store.backlog(5_000, 1_000).await.unwrap();
        println!(
            "backlog: {:.1} ms ({backlog:?})",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    // The refresh case: everything published, at spread-out times.
    for chunk in 0..N / BATCH {
        let items = (chunk * BATCH..(chunk + 1) * BATCH)
            .map(|n| {
                (
                    i.clone(),
                    serial(n),
                    CertStatus::Good,
                    10_000 + (n as i64 * 7_919) % 100_000,
                )
            })
            .collect();
        store.mark_published_many(items).await.unwrap();
    }
    for _ in 0..3 {
        let started = Instant::now();
        let due = store.due(50_000, 1_000, 256).await.unwrap();
        println!(
            "due(limit 256), refresh case: {:.2} ms ({} rows)",
            started.elapsed().as_secs_f64() * 1e3,
            due.len()
        );
    }
    println!("file: {} MB", std::fs::metadata(&path).unwrap().len() >> 20);
}

// ---------------------------------------------------------------------------------------------
// Issue 13: one response per CertID hash, and files written before that layout.

/// The schema version of the file at `path`.
fn user_version(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap()
}

/// Writes `resp` of serial `sr` straight into the `responses` table of an older release's file:
/// with `code` its `cert_id_hash` (schema 2 and 3), without it schema 1's row.
fn insert_raw(conn: &rusqlite::Connection, sr: &Serial, code: Option<i64>, resp: &StoredResponse) {
    let (status, at, reason) = match resp.status {
        CertStatus::Good => (0, None, None),
        CertStatus::Revoked { at, reason } => (1, Some(at), reason.map(i64::from)),
    };
    let row = rusqlite::params![
        sr.as_bytes(),
        status,
        at,
        reason,
        resp.this_update,
        resp.next_update,
        resp.der,
        code
    ];
    let sql = match code {
        None => "INSERT INTO responses VALUES ('test-ca', ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        Some(_) => "INSERT INTO responses VALUES ('test-ca', ?1, ?8, ?2, ?3, ?4, ?5, ?6, ?7)",
    };
    let row = if code.is_some() { row } else { &row[..7] };
    conn.execute(sql, row).unwrap();
}

/// A file of schema version 1 (responses keyed by issuer and serial, each with both
/// SingleResponses) is moved to the new layout when opened: its response answers both hashes
/// until per-hash responses replace it, and its revocation still binds every hash.
#[tokio::test]
async fn a_version_1_file_is_migrated_and_its_responses_served_for_both_hashes() {
    use ocsp::HashAlg::{Sha1, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ocsp.sqlite");
    let (s, r) = (serial(1), serial(2));
    let old_good = built(&s, CertStatus::Good, 1_000, &[Sha1, Sha256]).await;
    let old_revoked = built(&r, revoked(900, Some(1)), 1_000, &[Sha1, Sha256]).await;
    {
        // The version 1 schema, as the previous release wrote it.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE responses (
                issuer TEXT NOT NULL, serial BLOB NOT NULL,
                status INTEGER NOT NULL CHECK (status IN (0, 1)), revoked_at INTEGER,
                reason INTEGER CHECK (reason BETWEEN 0 AND 255),
                this_update INTEGER NOT NULL, next_update INTEGER NOT NULL, der BLOB NOT NULL,
                CHECK ((status = 1) = (revoked_at IS NOT NULL)),
                PRIMARY KEY (issuer, serial)) STRICT, WITHOUT ROWID;
             PRAGMA user_version = 1;",
        )
        .unwrap();
        insert_raw(&conn, &s, None, &old_good);
        insert_raw(&conn, &r, None, &old_revoked);
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(user_version(&path), 4);
    for alg in [Sha1, Sha256] {
        assert_eq!(
            store.get_for(&issuer(), &s, alg).await.unwrap(),
            Some(old_good.clone())
        );
        assert_eq!(
            store.get_for(&issuer(), &r, alg).await.unwrap(),
            Some(old_revoked.clone())
        );
    }
    // The refresh re-signs the good one per hash: each hash gets its own response.
    let new_sha1 = built(&s, CertStatus::Good, 2_000, &[Sha1]).await;
    assert!(store.put(&issuer(), &s, &new_sha1).await.unwrap());
    assert_eq!(
        store.get_for(&issuer(), &s, Sha1).await.unwrap(),
        Some(new_sha1.clone())
    );
    // SHA-256 still has the old response until its own is stored.
    assert_eq!(
        store.get_for(&issuer(), &s, Sha256).await.unwrap(),
        Some(old_good.clone())
    );
    // An older response for SHA-256 than the one it is served is refused.
    let stale = built(&s, CertStatus::Good, 500, &[Sha256]).await;
    assert!(!store.put(&issuer(), &s, &stale).await.unwrap());
    let new_sha256 = built(&s, CertStatus::Good, 2_000, &[Sha256]).await;
    assert!(store.put(&issuer(), &s, &new_sha256).await.unwrap());
    assert_eq!(
        store.get_for(&issuer(), &s, Sha256).await.unwrap(),
        Some(new_sha256)
    );

    // The old revocation binds both hashes: no `good`, no other revocation, for either.
    for alg in [Sha1, Sha256] {
        let good = built(&r, CertStatus::Good, 2_000, &[alg]).await;
        assert!(!store.put(&issuer(), &r, &good).await.unwrap(), "{alg:?}");
        let other = built(&r, revoked(950, Some(1)), 2_000, &[alg]).await;
        assert!(!store.put(&issuer(), &r, &other).await.unwrap(), "{alg:?}");
        let same = built(&r, revoked(900, Some(1)), 2_000, &[alg]).await;
        assert!(store.put(&issuer(), &r, &same).await.unwrap(), "{alg:?}");
        assert_eq!(store.get_for(&issuer(), &r, alg).await.unwrap(), Some(same));
    }
    // Opening again changes nothing.
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.get_for(&issuer(), &s, Sha1).await.unwrap(),
        Some(new_sha1)
    );
}

/// The `CREATE` statement of the `responses` table in the file at `path`.
fn responses_sql(path: &Path) -> String {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'responses'",
            [],
            |row| row.get(0),
        )
        .unwrap()
}

/// Issue 16: a version 3 file gets schema 4's CHECK on `cert_id_hash` (a range where an `IN`
/// list made every INSERT build a temporary B-tree) in place, without copying its rows: every
/// response is served as before, the CHECK still refuses a slot code that is not one, and the
/// monotonic rule still binds a revocation stored before the change.
#[tokio::test]
async fn a_version_3_file_gets_the_range_check_and_keeps_its_responses() {
    use ocsp::HashAlg::{Sha1, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ocsp.sqlite");
    let (s, r) = (serial(5), serial(6));
    let gone = revoked(900, Some(1));
    let mut rows = Vec::new();
    for (sr, status) in [(&s, CertStatus::Good), (&r, gone)] {
        for (code, alg) in [(1, Sha1), (2, Sha256)] {
            rows.push((sr.clone(), code, built(sr, status, 1_000, &[alg]).await));
        }
    }
    {
        // A version 3 file, as the previous release wrote it: schema 4 differs from it only in
        // that CHECK, so it is made by writing a new file and taking the change back.
        drop(SqliteStore::open(&path).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        let cookie: i64 = conn
            .pragma_query_value(None, "schema_version", |row| row.get(0))
            .unwrap();
        conn.execute_batch(&format!(
            "PRAGMA writable_schema = ON;
             UPDATE sqlite_schema SET sql = replace(sql,
                 'CHECK (cert_id_hash BETWEEN 0 AND 2)', 'CHECK (cert_id_hash IN (0, 1, 2))')
             WHERE name = 'responses';
             PRAGMA schema_version = {};
             PRAGMA writable_schema = OFF;
             PRAGMA user_version = 3;",
            cookie + 1
        ))
        .unwrap();
        assert!(responses_sql(&path).contains("IN (0, 1, 2)"));
        for (sr, code, resp) in &rows {
            insert_raw(&conn, sr, Some(*code), resp);
        }
    }
    // A connection that has the file open across the change (a responder's) has read the old
    // schema: the bumped schema_version makes it read the new one.
    let before = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = before
        .query_row("SELECT count(*) FROM responses", [], |row| row.get(0))
        .unwrap();
    assert_eq!(n, 4);
    let reader = SqliteStore::open(&path).unwrap();
    // (A statement that runs checks the schema cookie; the CHECK's own text names the version.)
    let refused = before
        .execute(
            "INSERT INTO responses VALUES ('test-ca', x'98', 3, 0, NULL, NULL, 1, 2, x'00')",
            [],
        )
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("cert_id_hash BETWEEN 0 AND 2"),
        "{refused}"
    );
    drop(before);
    let sql = responses_sql(&path);
    assert!(
        sql.contains("CHECK (cert_id_hash BETWEEN 0 AND 2)"),
        "{sql}"
    );
    assert!(!sql.contains("IN (0, 1, 2)"), "{sql}");
    assert_eq!(user_version(&path), 4);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // The range refuses what the list refused.
    for code in [3i64, -1] {
        let refused = conn.execute(
            "INSERT INTO responses VALUES ('test-ca', x'99', ?1, 0, NULL, NULL, 1, 2, x'00')",
            [code],
        );
        assert!(refused.is_err(), "cert_id_hash {code} accepted");
    }
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    for (i, alg) in [Sha1, Sha256].into_iter().enumerate() {
        for st in [&reader, &store] {
            assert_eq!(
                st.get_for(&issuer(), &s, alg).await.unwrap(),
                Some(rows[i].2.clone())
            );
            assert_eq!(
                st.get_for(&issuer(), &r, alg).await.unwrap(),
                Some(rows[2 + i].2.clone())
            );
        }
        // The revocation stored before the change binds: a later `good` is refused.
        let later_good = built(&r, CertStatus::Good, 2_000, &[alg]).await;
        assert!(!store.put(&issuer(), &r, &later_good).await.unwrap());
        // A newer response replaces the stored one.
        let newer = built(&s, CertStatus::Good, 2_000, &[alg]).await;
        assert!(store.put(&issuer(), &s, &newer).await.unwrap());
        assert_eq!(
            reader.get_for(&issuer(), &s, alg).await.unwrap(),
            Some(newer)
        );
    }
    // Opening again changes nothing.
    drop(store);
    SqliteStore::open(&path).unwrap();
    assert_eq!(responses_sql(&path), sql);
}

/// A revocation stored for one hash removes the other hashes' `good` responses (and the old
/// layout's) in the same transaction, so no request is answered `good` after it, whichever
/// hash it uses and however late the other hash's revoked response comes.
#[tokio::test]
async fn a_revocation_for_one_hash_removes_good_under_every_other() {
    use ocsp::HashAlg::{Sha1, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = serial(3);
    let legacy = built(&s, CertStatus::Good, 1_000, &[Sha1, Sha256]).await;
    let good256 = built(&s, CertStatus::Good, 1_500, &[Sha256]).await;
    assert!(store.put(&issuer(), &s, &legacy).await.unwrap());
    assert!(store.put(&issuer(), &s, &good256).await.unwrap());
    let revoked1 = built(&s, revoked(1_200, Some(4)), 2_000, &[Sha1]).await;
    assert!(store.put(&issuer(), &s, &revoked1).await.unwrap());
    assert_eq!(
        store.get_for(&issuer(), &s, Sha1).await.unwrap(),
        Some(revoked1.clone())
    );
    // SHA-256 has nothing until its revoked response is stored: `unauthorized`, never `good`.
    assert_eq!(store.get_for(&issuer(), &s, Sha256).await.unwrap(), None);
    assert_eq!(store.get(&issuer(), &s).await.unwrap(), Some(revoked1));
    // A stale `good` for SHA-256 (signed before the revocation) is refused.
    let stale = built(&s, CertStatus::Good, 3_000, &[Sha256]).await;
    assert!(!store.put(&issuer(), &s, &stale).await.unwrap());
    assert_eq!(store.get_for(&issuer(), &s, Sha256).await.unwrap(), None);
}

/// Issue 15: a version 2 file (worklist without CRL columns) gains `crl_shard` and `not_after`
/// when opened; its records are kept, revoked ones get their shard from the CRL updater's
/// backfill, and the shard is marked pending.
#[tokio::test]
async fn a_version_2_worklist_is_migrated_and_backfilled_into_crl_shards() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ocsp.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE certificates (
                issuer TEXT NOT NULL, serial BLOB NOT NULL,
                status INTEGER NOT NULL CHECK (status IN (0, 1)), revoked_at INTEGER,
                reason INTEGER CHECK (reason BETWEEN 0 AND 255),
                responded_status INTEGER CHECK (responded_status IN (0, 1)),
                responded_revoked_at INTEGER, responded_this_update INTEGER,
                due_key INTEGER NOT NULL,
                CHECK ((status = 1) = (revoked_at IS NOT NULL)),
                PRIMARY KEY (issuer, serial)) STRICT, WITHOUT ROWID;
             INSERT INTO certificates (issuer, serial, status, revoked_at, reason, due_key)
                 VALUES ('test-ca', x'0a07', 1, 900, 1, 0), ('test-ca', x'0a08', 0, NULL, NULL, 0);
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(user_version(&path), 4);
    assert_eq!(store.crl_backfill(&issuer(), 4, 100).await.unwrap(), 1);
    assert_eq!(store.crl_backfill(&issuer(), 4, 100).await.unwrap(), 0);
    // 0x0a07 = 2567; 2567 % 4 = 3.
    assert_eq!(store.crl_pending(&issuer()).await.unwrap().len(), 1);
    assert_eq!(store.crl_pending(&issuer()).await.unwrap()[0].0, 3);
    let (entries, pending) = store.crl_snapshot(&issuer(), 3, 1_000).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].revoked_at, 900);
    assert_eq!(entries[0].reason, Some(1));
    let (seq, _) = pending.unwrap();
    assert!(store.crl_clear_pending(&issuer(), 3, seq).await.unwrap());
    assert!(store.crl_pending(&issuer()).await.unwrap().is_empty());
}

fn page_size(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .pragma_query_value(None, "page_size", |row| row.get(0))
        .unwrap()
}

/// Issue 16: a new file is made with 16 KiB pages (the pre-signer's writes cost less CPU); a
/// file an older release made keeps its 4 KiB pages (SQLite cannot change them in WAL mode
/// short of a VACUUM) and is read and written as before.
#[tokio::test]
async fn a_new_file_gets_16_kib_pages_and_an_older_file_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new.sqlite");
    let old = dir.path().join("old.sqlite");
    {
        // As an older release left its file: SQLite's default page size, WAL, a table written.
        let conn = rusqlite::Connection::open(&old).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE before (x);",
        )
        .unwrap();
    }
    let good = response(CertStatus::Good, 1_000);
    for (path, pages) in [(&new, 16_384), (&old, 4_096)] {
        {
            let store = SqliteStore::open(path).unwrap();
            assert!(store.put(&issuer(), &serial(1), &good).await.unwrap());
        }
        assert_eq!(page_size(path), pages, "{}", path.display());
        let store = SqliteStore::open(path).unwrap();
        assert_eq!(
            store.get(&issuer(), &serial(1)).await.unwrap(),
            Some(good.clone()),
            "{}",
            path.display()
        );
        assert_eq!(page_size(path), pages, "{}", path.display());
    }
}
