//! The CA's record store, the same assertions against both backends: embedded SQLite and the
//! real PostgreSQL on 127.0.0.1:5432 (database `test`, trust auth; each run uses its own schema
//! so runs do not see each other's rows).

use std::sync::Arc;

use ca_frontend::db::{Begun, Db, Issuance, PostgresDb, SqliteDb};
use ca_frontend::model::*;

fn account(id: &str, thumbprint: &str) -> Account {
    Account {
        id: id.into(),
        status: AccountStatus::Valid,
        contact: vec![],
        jwk: serde_json::json!({"kty": "EC"}),
        thumbprint: thumbprint.into(),
        created: 1000,
    }
}

fn order(id: &str, account_id: &str, created: i64) -> (Order, Vec<Authorization>) {
    let authz = Authorization {
        id: format!("{id}-a"),
        account_id: account_id.into(),
        order_id: id.into(),
        identifier: Identifier {
            kind: "dns".into(),
            value: "example.test".into(),
        },
        wildcard: false,
        status: AuthzStatus::Pending,
        expires: created + 100,
        challenges: vec![],
        corroboration: vec![],
    };
    let order = Order {
        id: id.into(),
        account_id: account_id.into(),
        status: OrderStatus::Pending,
        expires: created + 100,
        identifiers: vec![authz.identifier.clone()],
        authz_ids: vec![authz.id.clone()],
        profile: "classic".into(),
        replaces: None,
        certificate: None,
        error: None,
        created,
        caa_corroboration: vec![],
    };
    (order, vec![authz])
}

fn certificate(serial: &str, account_id: &str, issued: i64) -> CertificateRecord {
    CertificateRecord {
        serial: serial.into(),
        account_id: account_id.into(),
        order_id: "o".into(),
        issued,
        not_before: issued,
        not_after: issued + 90 * 86_400,
        names: vec!["a.example.test".into()],
        chain_pem: "PEM".into(),
        spki_sha256: "00".into(),
        revoked: None,
        renew_now: false,
        replaced_by: None,
    }
}

async fn exercise(db: Arc<dyn Db>) {
    // Accounts: one per key; a second insert for the key returns the first account.
    let a = account("acct-1", "thumb-1");
    assert_eq!(db.insert_account(&a).await.expect("insert"), Ok(()));
    let again = db
        .insert_account(&account("acct-2", "thumb-1"))
        .await
        .expect("insert");
    assert_eq!(again.expect_err("same key").id, "acct-1");
    assert_eq!(
        db.account_by_thumbprint("thumb-1")
            .await
            .expect("get")
            .map(|a| a.id),
        Some("acct-1".into())
    );
    assert_eq!(db.account("nope").await.expect("get"), None);
    db.insert_account(&account("acct-3", "thumb-3"))
        .await
        .expect("insert")
        .expect("new");
    // Key rollover onto a key another account holds is refused.
    let mut rolled = a.clone();
    rolled.thumbprint = "thumb-3".into();
    assert!(!db.update_account(&rolled).await.expect("update"));
    rolled.thumbprint = "thumb-new".into();
    assert!(db.update_account(&rolled).await.expect("update"));
    assert_eq!(
        db.account_by_thumbprint("thumb-new")
            .await
            .expect("get")
            .map(|a| a.id),
        Some("acct-1".into())
    );
    assert_eq!(db.accounts_since(0, 10).await.expect("count"), 2);
    // Counts stop at their cap: a rate limit only asks whether it is reached.
    assert_eq!(db.accounts_since(0, 1).await.expect("count"), 1);

    // Orders: the compare-and-set that makes finalization happen once.
    let (o, authzs) = order("order-1", "acct-1", 2000);
    db.insert_order(&o, &authzs).await.expect("insert order");
    assert_eq!(
        db.authz("order-1-a")
            .await
            .expect("authz")
            .map(|a| a.order_id),
        Some("order-1".into())
    );
    let mut processing = o.clone();
    processing.status = OrderStatus::Processing;
    assert!(
        db.update_order(&processing, Some(OrderStatus::Pending))
            .await
            .expect("cas")
    );
    assert!(
        !db.update_order(&processing, Some(OrderStatus::Pending))
            .await
            .expect("cas"),
        "a second finalization must lose"
    );
    assert_eq!(
        db.order("order-1").await.expect("get").map(|o| o.status),
        Some(OrderStatus::Processing)
    );
    let (o2, authzs2) = order("order-2", "acct-1", 3000);
    db.insert_order(&o2, &authzs2).await.expect("insert order");
    assert_eq!(
        db.orders_of_account("acct-1").await.expect("list"),
        ["order-2", "order-1"]
    );
    assert_eq!(db.orders_since("acct-1", 2500, 10).await.expect("count"), 1);
    assert_eq!(db.orders_since("acct-1", 0, 10).await.expect("count"), 2);
    assert_eq!(db.orders_since("acct-1", 0, 1).await.expect("count"), 1);

    // Certificates: the first revocation stands.
    let c = certificate("0a0b", "acct-1", 5000);
    db.insert_certificate(&c, &["example.test".into()], 100)
        .await
        .expect("insert cert");
    assert!(
        db.insert_certificate(&c, &[], 101).await.is_err(),
        "a serial is recorded once"
    );
    // Unpublished until its OCSP response is stored: listed once its mark is old enough.
    assert!(db.ocsp_pending(100, 10).await.expect("pending").is_empty());
    let pending = db.ocsp_pending(101, 10).await.expect("pending");
    assert_eq!(
        pending
            .iter()
            .map(|(c, mark)| (c.serial.as_str(), *mark))
            .collect::<Vec<_>>(),
        [("0a0b", 100)]
    );
    let first = Revocation {
        at: 6000,
        reason: 1,
    };
    assert_eq!(
        db.revoke("0a0b", first, 200).await.expect("revoke"),
        Some((first, true))
    );
    assert_eq!(
        db.revoke(
            "0a0b",
            Revocation {
                at: 7000,
                reason: 4
            },
            300
        )
        .await
        .expect("revoke"),
        Some((first, false))
    );
    // The revocation's mark replaced the issuance's: publishing `good` late (mark 100) does
    // not clear it, and the order it names is moved to valid only from processing.
    let mut valid = processing.clone();
    valid.status = OrderStatus::Valid;
    valid.certificate = Some("0a0b".into());
    db.ocsp_published("0a0b", Some(100), Some(&valid))
        .await
        .expect("published");
    assert_eq!(
        db.ocsp_pending(i64::MAX, 10)
            .await
            .expect("pending")
            .iter()
            .map(|(c, mark)| (c.serial.as_str(), *mark, c.revoked))
            .collect::<Vec<_>>(),
        [("0a0b", 200, Some(first))]
    );
    assert_eq!(
        db.order("order-1").await.expect("get").map(|o| o.status),
        Some(OrderStatus::Valid)
    );
    let mut late = valid.clone();
    late.status = OrderStatus::Invalid;
    db.ocsp_published("0a0b", Some(200), Some(&late))
        .await
        .expect("published");
    assert!(
        db.ocsp_pending(i64::MAX, 10)
            .await
            .expect("pending")
            .is_empty()
    );
    assert_eq!(
        db.order("order-1").await.expect("get").map(|o| o.status),
        Some(OrderStatus::Valid),
        "only a processing order is completed"
    );
    // `None` clears any mark (after a revocation, the final status, is published).
    let d = certificate("0c0d", "acct-1", 5000);
    db.insert_certificate(&d, &[], 400).await.expect("insert");
    db.ocsp_published("0c0d", None, None)
        .await
        .expect("published");
    assert!(
        db.ocsp_pending(i64::MAX, 10)
            .await
            .expect("pending")
            .is_empty()
    );
    assert_eq!(
        db.certificate("0a0b")
            .await
            .expect("get")
            .and_then(|c| c.revoked),
        Some(first)
    );
    assert_eq!(db.revoke("ffff", first, 500).await.expect("revoke"), None);
    assert_eq!(
        db.certificates_since("example.test", 4000, 10)
            .await
            .expect("count"),
        1
    );
    assert_eq!(
        db.certificates_since("example.test", 5001, 10)
            .await
            .expect("count"),
        0
    );
    // The first finalized replacement is recorded; a second is not.
    assert!(db.mark_replaced("0a0b", "order-2").await.expect("mark"));
    assert!(!db.mark_replaced("0a0b", "order-3").await.expect("mark"));
    assert!(!db.mark_replaced("ffff", "order-3").await.expect("mark"));
    assert_eq!(
        db.certificate("0a0b")
            .await
            .expect("get")
            .and_then(|c| c.replaced_by),
        Some("order-2".into())
    );
    assert_eq!(
        db.mark_renew_now(&["0a0b".into(), "ffff".into()])
            .await
            .expect("mark"),
        1
    );
    assert!(
        db.certificate("0a0b")
            .await
            .expect("get")
            .is_some_and(|c| c.renew_now)
    );
}

/// An order whose one authorization (for `name`) has `status`.
fn authorized_order(id: &str, name: &str, status: AuthzStatus) -> (Order, Vec<Authorization>) {
    let (mut o, mut authzs) = order(id, "acct-1", 10_000);
    o.expires = i64::MAX / 2;
    o.identifiers[0].value = name.into();
    authzs[0].identifier.value = name.into();
    authzs[0].status = status;
    authzs[0].expires = i64::MAX / 2;
    (o, authzs)
}

/// A finalization's start for the order: a reservation under `serial` in the registered
/// domains of its names, each counted against `limit`.
fn issuance(o: &Order, serial: &str, limit: u64, replaces: Option<&str>) -> Issuance {
    let mut processing = o.clone();
    processing.status = OrderStatus::Processing;
    let names: Vec<String> = o.identifiers.iter().map(|i| i.value.clone()).collect();
    let domains = ca_frontend::ratelimit::registered_domains(&names);
    Issuance {
        order: processing,
        expected: o.status,
        serial: serial.into(),
        issued: 20_000,
        counted: domains.clone(),
        domains,
        since: 0,
        limit,
        replaces: replaces.map(str::to_owned),
    }
}

/// The rules of a finalization's start and of an authorization's last write, with `dbs` as
/// several frontends (connections) on one database.
async fn exercise_races(dbs: Vec<Arc<dyn Db>>) {
    let db = dbs[0].clone();
    // (a) Twelve finalizations at once for one registered domain whose weekly limit is 5,
    // spread over the connections: exactly five start and reserve, seven are limited.
    const N: usize = 12;
    let mut orders = Vec::new();
    for i in 0..N {
        let (o, authzs) = authorized_order(
            &format!("race-{i}"),
            &format!("n{i}.race.example.com"),
            AuthzStatus::Valid,
        );
        db.insert_order(&o, &authzs).await.expect("insert order");
        orders.push(o);
    }
    let starts = orders.iter().enumerate().map(|(i, o)| {
        let db = dbs[i % dbs.len()].clone();
        let issuance = issuance(o, &format!("aa{i:02}"), 5, None);
        tokio::spawn(async move { db.begin_issuance(&issuance).await.expect("begin") })
    });
    let outcomes = futures_util::future::join_all(starts).await;
    let started = outcomes
        .iter()
        .filter(|o| *o.as_ref().expect("task") == Begun::Started)
        .count();
    let limited = outcomes
        .iter()
        .filter(|o| *o.as_ref().expect("task") == Begun::Limited("example.com".into()))
        .count();
    assert_eq!((started, limited), (5, N - 5), "{outcomes:?}");
    assert_eq!(
        db.certificates_since("example.com", 0, 100)
            .await
            .expect("count"),
        5
    );
    let processing = futures_util::future::join_all(orders.iter().map(|o| db.order(&o.id))).await;
    assert_eq!(
        processing
            .into_iter()
            .filter(|o| o.as_ref().expect("get").as_ref().expect("order").status
                == OrderStatus::Processing)
            .count(),
        5,
        "a limited order stays as it was"
    );
    // What a repair reads: the processing orders, and when each one's domains were reserved.
    assert_eq!(db.processing_orders(100).await.expect("list").len(), 5);
    let reserved = outcomes
        .iter()
        .position(|o| *o.as_ref().expect("task") == Begun::Started)
        .expect("one started");
    assert_eq!(
        db.reserved_at(&format!("aa{reserved:02}"))
            .await
            .expect("reserved"),
        Some(20_000)
    );
    assert_eq!(db.reserved_at("ffff").await.expect("reserved"), None);
    // A signing that failed before recording gives its reservation back; one recorded keeps it.
    let first = outcomes
        .iter()
        .position(|o| *o.as_ref().expect("task") == Begun::Started)
        .expect("one started");
    let mut invalid = orders[first].clone();
    invalid.status = OrderStatus::Invalid;
    assert!(
        db.abandon_issuance(&invalid, &format!("aa{first:02}"), None)
            .await
            .expect("abandon")
    );
    assert_eq!(
        db.order(&invalid.id).await.expect("get").map(|o| o.status),
        Some(OrderStatus::Invalid)
    );
    assert_eq!(
        db.certificates_since("example.com", 0, 100)
            .await
            .expect("count"),
        4
    );
    let second = outcomes
        .iter()
        .rposition(|o| *o.as_ref().expect("task") == Begun::Started)
        .expect("one started");
    let mut recorded = certificate(&format!("aa{second:02}"), "acct-1", 20_000);
    recorded.order_id = orders[second].id.clone();
    db.insert_certificate(&recorded, &[], 1)
        .await
        .expect("record");
    let mut late = orders[second].clone();
    late.status = OrderStatus::Invalid;
    assert!(
        !db.abandon_issuance(&late, &recorded.serial, None)
            .await
            .expect("abandon"),
        "a recorded certificate's order is never made invalid"
    );
    assert_eq!(
        db.order(&late.id).await.expect("get").map(|o| o.status),
        Some(OrderStatus::Processing)
    );
    assert_eq!(
        db.certificates_since("example.com", 0, 100)
            .await
            .expect("count"),
        4
    );

    // Replacement: two orders replacing one certificate start at once; one wins and marks
    // it, the other is told by whom. The winner failing before recording clears the mark.
    let old = certificate("bb00", "acct-1", 10_000);
    db.insert_certificate(&old, &[], 1).await.expect("record");
    let (r1, a1) = authorized_order("replace-1", "a.replace.example.net", AuthzStatus::Valid);
    let (r2, a2) = authorized_order("replace-2", "a.replace.example.net", AuthzStatus::Valid);
    db.insert_order(&r1, &a1).await.expect("insert");
    db.insert_order(&r2, &a2).await.expect("insert");
    let (i1, i2) = (
        issuance(&r1, "bb01", 100, Some("bb00")),
        issuance(&r2, "bb02", 100, Some("bb00")),
    );
    let (db1, db2) = (dbs[0].clone(), dbs[dbs.len() - 1].clone());
    let (o1, o2) = tokio::join!(db1.begin_issuance(&i1), db2.begin_issuance(&i2));
    let (o1, o2) = (o1.expect("begin"), o2.expect("begin"));
    let (winner, loser) = match (&o1, &o2) {
        (Begun::Started, Begun::AlreadyReplaced(by)) => {
            assert_eq!(by, "replace-1");
            (&r1, &r2)
        }
        (Begun::AlreadyReplaced(by), Begun::Started) => {
            assert_eq!(by, "replace-2");
            (&r2, &r1)
        }
        other => panic!("exactly one replacement must start: {other:?}"),
    };
    assert_eq!(
        db.certificate("bb00")
            .await
            .expect("get")
            .and_then(|c| c.replaced_by),
        Some(winner.id.clone())
    );
    assert_eq!(
        db.order(&loser.id).await.expect("get").map(|o| o.status),
        Some(OrderStatus::Pending),
        "the loser changed nothing"
    );
    let mut failed = winner.clone();
    failed.status = OrderStatus::Invalid;
    let winner_serial = if winner.id == "replace-1" {
        "bb01"
    } else {
        "bb02"
    };
    assert!(
        db.abandon_issuance(&failed, winner_serial, Some("bb00"))
            .await
            .expect("abandon")
    );
    assert_eq!(
        db.certificate("bb00")
            .await
            .expect("get")
            .and_then(|c| c.replaced_by),
        None
    );
    let retry = issuance(loser, "bb03", 100, Some("bb00"));
    assert_eq!(
        db.begin_issuance(&retry).await.expect("begin"),
        Begun::Started
    );

    // (b) A deactivation while a validation runs: the validation's write is a compare-and-set
    // from the record it started from, so it loses and the authorization stays deactivated;
    // a finalization then does not start.
    let (o, mut authzs) = authorized_order("deact", "d.deact.example.org", AuthzStatus::Pending);
    authzs[0].challenges = vec![Challenge {
        kind: ChallengeType::Http01,
        token: "t".into(),
        status: ChallengeStatus::Processing,
        validated: None,
        error: None,
    }];
    db.insert_order(&o, &authzs).await.expect("insert");
    let started = db.authz("deact-a").await.expect("get").expect("authz");
    assert_eq!(started, authzs[0], "a record reads back as it was written");
    let mut deactivated = started.clone();
    deactivated.status = AuthzStatus::Deactivated;
    assert!(
        dbs[dbs.len() - 1]
            .update_authz_if(&deactivated, &started)
            .await
            .expect("cas")
    );
    let mut validated = started.clone();
    validated.status = AuthzStatus::Valid;
    validated.challenges[0].status = ChallengeStatus::Valid;
    assert!(
        !db.update_authz_if(&validated, &started).await.expect("cas"),
        "the validation must not undo the deactivation"
    );
    assert_eq!(
        db.authz("deact-a").await.expect("get").map(|a| a.status),
        Some(AuthzStatus::Deactivated)
    );
    let mut ready = o.clone();
    ready.status = OrderStatus::Pending;
    assert_eq!(
        db.begin_issuance(&issuance(&ready, "cc00", 100, None))
            .await
            .expect("begin"),
        Begun::NotReady,
        "a deactivated authorization authorizes nothing"
    );
    assert_eq!(
        db.order("deact").await.expect("get").map(|o| o.status),
        Some(OrderStatus::Pending)
    );
}

#[tokio::test]
async fn sqlite_keeps_the_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = SqliteDb::open(&dir.path().join("ca.sqlite"))
        .await
        .expect("open");
    exercise(Arc::new(db)).await;
    // Two connections on one file (as two processes would be).
    let path = dir.path().join("races.sqlite");
    let mut dbs: Vec<Arc<dyn Db>> = Vec::new();
    for _ in 0..2 {
        dbs.push(Arc::new(SqliteDb::open(&path).await.expect("open")));
    }
    exercise_races(dbs).await;
    // Reopening runs no migration twice and keeps the rows.
    let db = SqliteDb::open(&dir.path().join("ca.sqlite"))
        .await
        .expect("reopen");
    assert!(db.certificate("0a0b").await.expect("get").is_some());
}

#[tokio::test]
async fn postgres_keeps_the_rules() {
    let schema = format!("ca_test_{}_{}", std::process::id(), ca_frontend::unix_now());
    let base = "host=127.0.0.1 port=5432 user=postgres dbname=test";
    let (admin, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (see the env entry of the tool library)");
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("schema");
    let url = format!("{base} options=-csearch_path={schema}");
    let db = PostgresDb::connect(&url).await.expect("connect");
    exercise(Arc::new(db)).await;
    // Four frontends (connections) on a fresh schema.
    let races = format!("{schema}_races");
    admin
        .batch_execute(&format!("CREATE SCHEMA {races}"))
        .await
        .expect("schema");
    let races_url = format!("{base} options=-csearch_path={races}");
    let mut dbs: Vec<Arc<dyn Db>> = Vec::new();
    for _ in 0..4 {
        dbs.push(Arc::new(
            PostgresDb::connect(&races_url).await.expect("connect"),
        ));
    }
    exercise_races(dbs).await;
    admin
        .batch_execute(&format!("DROP SCHEMA {races} CASCADE"))
        .await
        .expect("drop");
    // A second frontend on the same database sees the same records and migrates nothing.
    let other = PostgresDb::connect(&url).await.expect("connect again");
    assert!(other.certificate("0a0b").await.expect("get").is_some());
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop");
}
