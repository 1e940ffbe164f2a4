//! Tests of the Redis store against real servers: the shared Redis at 127.0.0.1:6379 (each test
//! uses its own issuer name, so its own keys, and deletes them at the end), a 3-master Redis
//! Cluster and a standalone server that the tests start on free ports and kill when done.
//! Covered: round trips, the monotonic rule, a refresh/revocation race, keys spreading over the
//! cluster, corrupt records, and failing fast when Redis is down or hung.
//! `bench_get_latency` (ignored) produces the latency quoted in `store/redis.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stand_in;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ocsp::store::ResponseStore;
use ocsp::store::{RedisStore, response_key};
use ocsp::{CertStatus, Error, IssuerName, Serial, StoredResponse};
use stand_in::built;

const SHARED: &str = "redis://127.0.0.1:6379";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An issuer name no other test (or run) uses, so its keys are this test's alone.
fn unique_issuer(test: &str) -> IssuerName {
    static COUNTER: AtomicU16 = AtomicU16::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    IssuerName(format!(
        "t-{test}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

fn serial(n: u64) -> Serial {
    let mut bytes = vec![0x4a; 8];
    bytes.extend_from_slice(&n.to_be_bytes());
    Serial::from_be_bytes(&bytes)
}

fn response(status: CertStatus, this_update: i64) -> StoredResponse {
    StoredResponse {
        status,
        this_update,
        next_update: this_update + 4 * 86_400,
        // Binary, with bytes Lua or RESP might mangle if handled as text.
        der: [
            &[0x30, 0x82, 0x00, 0x0d, 0x0a, 0xff][..],
            &this_update.to_be_bytes()[..],
        ]
        .concat(),
        http: Default::default(),
    }
}

fn revoked(at: i64, reason: Option<u8>) -> CertStatus {
    CertStatus::Revoked { at, reason }
}

/// Deletes an issuer's keys from the given nodes when dropped (also when the test panics).
struct Cleanup {
    urls: Vec<String>,
    issuer: IssuerName,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for url in &self.urls {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                continue;
            };
            let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
                continue;
            };
            let keys: Vec<String> = match redis::cmd("KEYS")
                .arg(format!("ocsp:{}:*", self.issuer.0))
                .query(&mut conn)
            {
                Ok(keys) => keys,
                Err(_) => continue,
            };
            for key in keys {
                let _: Result<i64, _> = redis::cmd("DEL").arg(key).query(&mut conn);
            }
        }
    }
}

async fn shared_store() -> RedisStore {
    RedisStore::open(&[SHARED.to_string()], false)
        .await
        .unwrap()
}

// ---- checks shared by the single-node and the cluster tests ----

async fn check_round_trip(store: &dyn ResponseStore, issuer: &IssuerName) {
    assert_eq!(store.kind(), "redis");
    assert_eq!(store.get(issuer, &serial(1)).await.unwrap(), None);
    let t = now();
    let good = response(CertStatus::Good, t);
    assert!(store.put(issuer, &serial(1), &good).await.unwrap());
    assert_eq!(store.get(issuer, &serial(1)).await.unwrap(), Some(good));
    let rev = response(revoked(t - 10, Some(4)), t);
    assert!(store.put(issuer, &serial(2), &rev).await.unwrap());
    assert_eq!(store.get(issuer, &serial(2)).await.unwrap(), Some(rev));
    let no_reason = response(revoked(t - 10, None), t);
    assert!(store.put(issuer, &serial(3), &no_reason).await.unwrap());
    assert_eq!(
        store.get(issuer, &serial(3)).await.unwrap(),
        Some(no_reason)
    );
    // Serial 0 and a large DER.
    let zero = Serial::from_be_bytes(&[0]);
    let big = StoredResponse {
        der: (0..=255u8).cycle().take(64 * 1024).collect(),
        ..response(CertStatus::Good, t)
    };
    assert!(store.put(issuer, &zero, &big).await.unwrap());
    assert_eq!(store.get(issuer, &zero).await.unwrap(), Some(big));
}

async fn check_monotonic(store: &dyn ResponseStore, issuer: &IssuerName) {
    let s = serial(7);
    let t = now();
    assert!(
        store
            .put(issuer, &s, &response(CertStatus::Good, t))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put(issuer, &s, &response(CertStatus::Good, t - 100))
            .await
            .unwrap()
    );
    assert!(
        store
            .put(issuer, &s, &response(CertStatus::Good, t))
            .await
            .unwrap()
    );
    let rev = response(revoked(t - 50, Some(1)), t - 40);
    assert!(store.put(issuer, &s, &rev).await.unwrap());
    assert!(
        !store
            .put(issuer, &s, &response(CertStatus::Good, t + 10_000))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put(issuer, &s, &response(revoked(t - 10, Some(1)), t + 10))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put(issuer, &s, &response(revoked(t - 50, Some(4)), t + 10))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put(issuer, &s, &response(revoked(t - 50, None), t + 10))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put(issuer, &s, &response(revoked(t - 50, Some(1)), t - 100))
            .await
            .unwrap()
    );
    assert_eq!(store.get(issuer, &s).await.unwrap(), Some(rev));
    let refreshed = response(revoked(t - 50, Some(1)), t + 10);
    assert!(store.put(issuer, &s, &refreshed).await.unwrap());
    assert_eq!(store.get(issuer, &s).await.unwrap(), Some(refreshed));

    // Revoked without a reason is not the same revocation as with one, either way round.
    let s = serial(8);
    assert!(
        store
            .put(issuer, &s, &response(revoked(t, None), t))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put(issuer, &s, &response(revoked(t, Some(0)), t + 1))
            .await
            .unwrap()
    );
    assert!(
        store
            .put(issuer, &s, &response(revoked(t, None), t + 1))
            .await
            .unwrap()
    );
}

/// Many refreshes race one revocation on several connections ("processes"); revoked must win.
async fn check_race(stores: &[Arc<dyn ResponseStore>], issuer: &IssuerName) {
    let t = now();
    for round in 0..20u64 {
        let s = serial(1_000 + round);
        let rev = response(revoked(t, Some(1)), t);
        let barrier = Arc::new(tokio::sync::Barrier::new(17));
        let mut tasks = Vec::new();
        for n in 0..17i64 {
            let store = stores[n as usize % stores.len()].clone();
            let (issuer, s, rev, barrier) =
                (issuer.clone(), s.clone(), rev.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = if n == 8 {
                    rev
                } else {
                    response(CertStatus::Good, t - 10 + n)
                };
                store.put(&issuer, &s, &r).await.unwrap()
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            stores[0].get(issuer, &s).await.unwrap(),
            Some(rev),
            "round {round}"
        );
    }
}

// ---- the shared single node ----

#[tokio::test]
async fn single_node_round_trip_and_expiry() {
    let issuer = unique_issuer("rt");
    let _cleanup = Cleanup {
        urls: vec![SHARED.into()],
        issuer: issuer.clone(),
    };
    let store = shared_store().await;
    store.ping().await.unwrap();
    check_round_trip(&store, &issuer).await;

    // The key layout other tools rely on, and the expiry (nextUpdate + 1 day).
    let key = response_key(&issuer, &serial(1));
    assert_eq!(
        key,
        format!("ocsp:{}:{{4a4a4a4a4a4a4a4a0000000000000001}}", issuer.0)
    );
    let mut conn = redis::Client::open(SHARED)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((5 * 86_400 - 60..=5 * 86_400).contains(&ttl), "ttl {ttl}");
    let status: String = redis::cmd("HGET")
        .arg(&key)
        .arg("status")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(status, "0");

    // A response already a day past nextUpdate is gone at once.
    let old = response(CertStatus::Good, now() - 10 * 86_400);
    assert!(store.put(&issuer, &serial(50), &old).await.unwrap());
    assert_eq!(store.get(&issuer, &serial(50)).await.unwrap(), None);
}

#[tokio::test]
async fn single_node_monotonic() {
    let issuer = unique_issuer("mono");
    let _cleanup = Cleanup {
        urls: vec![SHARED.into()],
        issuer: issuer.clone(),
    };
    check_monotonic(&shared_store().await, &issuer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_node_revocation_wins_a_race() {
    let issuer = unique_issuer("race");
    let _cleanup = Cleanup {
        urls: vec![SHARED.into()],
        issuer: issuer.clone(),
    };
    let stores: Vec<Arc<dyn ResponseStore>> = vec![
        Arc::new(shared_store().await),
        Arc::new(shared_store().await),
    ];
    check_race(&stores, &issuer).await;
}

#[tokio::test]
async fn corrupt_records_are_errors_and_are_not_overwritten() {
    let issuer = unique_issuer("corrupt");
    let _cleanup = Cleanup {
        urls: vec![SHARED.into()],
        issuer: issuer.clone(),
    };
    let store = shared_store().await;
    let mut conn = redis::Client::open(SHARED)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let t = now();
    let damage: [&[&str]; 6] = [
        &[
            "status",
            "x",
            "this_update",
            "1",
            "next_update",
            "2",
            "der",
            "d",
        ],
        &[
            "status",
            "1",
            "this_update",
            "1",
            "next_update",
            "2",
            "der",
            "d",
        ], // revoked without a time
        &[
            "status",
            "0",
            "this_update",
            "soon",
            "next_update",
            "2",
            "der",
            "d",
        ],
        &[
            "status",
            "1",
            "revoked_at",
            "5",
            "reason",
            "999",
            "this_update",
            "1",
            "next_update",
            "2",
            "der",
            "d",
        ],
        &["this_update", "1", "next_update", "2", "der", "d"], // no status
        &["status", "0", "this_update", "1", "next_update", "2"], // no der
    ];
    for (n, fields) in damage.iter().enumerate() {
        let key = response_key(&issuer, &serial(n as u64));
        let () = redis::cmd("HSET")
            .arg(&key)
            .arg(*fields)
            .query_async(&mut conn)
            .await
            .unwrap();
        let got = store.get(&issuer, &serial(n as u64)).await;
        assert!(
            matches!(got, Err(Error::Corrupt { .. })),
            "case {n}: {got:?}"
        );
    }
    // Not a hash at all.
    let key = response_key(&issuer, &serial(100));
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("junk")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        store.get(&issuer, &serial(100)).await,
        Err(Error::Corrupt { .. })
    ));

    // A put over something unreadable is refused (it might have been a revocation); what the
    // script can check (status, this_update, revocation time, type) it checks.
    for n in [0u64, 1, 2, 4, 100] {
        let put = store
            .put(&issuer, &serial(n), &response(CertStatus::Good, t))
            .await;
        assert!(
            matches!(put, Err(Error::Corrupt { .. })),
            "case {n}: {put:?}"
        );
    }
    let junk: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(junk, "junk");
}

// ---- failing fast ----

fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn assert_fails_fast(store: &RedisStore) {
    for _ in 0..3 {
        let started = Instant::now();
        let got = store.get(&IssuerName("x".into()), &serial(1)).await;
        assert!(
            matches!(got, Err(Error::Store { store: "redis", .. })),
            "{got:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let put = store
            .put(
                &IssuerName("x".into()),
                &serial(1),
                &response(CertStatus::Good, now()),
            )
            .await;
        assert!(
            matches!(put, Err(Error::Store { store: "redis", .. })),
            "{put:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }
    assert!(store.ping().await.is_err());
}

#[tokio::test]
async fn a_closed_port_fails_fast() {
    let url = format!("redis://127.0.0.1:{}", closed_port());
    // Opening does not need Redis to be up: the responder must start without it.
    assert_fails_fast(
        &RedisStore::open(std::slice::from_ref(&url), false)
            .await
            .unwrap(),
    )
    .await;
    let urls = vec![url, format!("redis://127.0.0.1:{}", closed_port())];
    assert_fails_fast(&RedisStore::open(&urls, true).await.unwrap()).await;
}

#[tokio::test]
async fn a_hung_server_fails_fast() {
    // Accepts connections (the kernel completes the handshake) but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "redis://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    assert_fails_fast(
        &RedisStore::open(std::slice::from_ref(&url), false)
            .await
            .unwrap(),
    )
    .await;
    assert_fails_fast(&RedisStore::open(&[url], true).await.unwrap()).await;
}

#[tokio::test]
async fn bad_urls_are_refused() {
    assert!(
        RedisStore::open(&["not a url".into()], false)
            .await
            .is_err()
    );
    assert!(RedisStore::open(&[], false).await.is_err());
    assert!(RedisStore::open(&[], true).await.is_err());
    assert!(
        RedisStore::open(&[SHARED.into(), SHARED.into()], false)
            .await
            .is_err()
    );
}

// ---- servers started by the tests ----

/// Ports for our own servers: from a per-process base (so concurrent test runs rarely collide),
/// each checked free together with its cluster bus port (+10000), below the ephemeral range.
fn free_ports(count: usize) -> Vec<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 1_000) as u16 * 3;
    let mut ports = Vec::new();
    while ports.len() < count {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 3_000;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            ports.push(port);
        }
    }
    ports
}

/// Redis servers killed on drop.
struct Servers {
    children: Vec<Child>,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_redis(dir: &Path, port: u16, cluster: bool) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir)
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if cluster {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
        ]);
    }
    cmd.spawn().expect("redis-server")
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn query(port: u16, cmd: &redis::Cmd) -> Option<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    cmd.query(&mut conn).ok()
}

impl Servers {
    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    fn standalone() -> Servers {
        let dir = tempfile::tempdir().unwrap();
        let port = free_ports(1)[0];
        let servers = Servers {
            children: vec![spawn_redis(dir.path(), port, false)],
            ports: vec![port],
            dir,
        };
        wait_for("redis-server", Duration::from_secs(10), || {
            query(port, &redis::cmd("PING")).is_some()
        });
        servers
    }

    fn cluster() -> Servers {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(3);
        let servers = Servers {
            children: ports
                .iter()
                .map(|p| spawn_redis(dir.path(), *p, true))
                .collect(),
            ports,
            dir,
        };
        for port in &servers.ports {
            wait_for("redis-server", Duration::from_secs(10), || {
                query(*port, &redis::cmd("PING")).is_some()
            });
        }
        let nodes: Vec<String> = servers
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for port in &servers.ports {
            wait_for("cluster_state:ok", Duration::from_secs(30), || match query(
                *port,
                redis::cmd("CLUSTER").arg("INFO"),
            ) {
                Some(redis::Value::BulkString(info)) => {
                    String::from_utf8_lossy(&info).contains("cluster_state:ok")
                }
                Some(redis::Value::VerbatimString { text, .. }) => {
                    text.contains("cluster_state:ok")
                }
                _ => false,
            });
        }
        servers
    }
}

// ---- issue 13: one response per CertID hash, keys of the old layout ----

/// A response of the old layout (its key without a hash suffix) answers both hashes until
/// each has its own; a revocation for one hash removes `good` under the other and the old
/// key in the same script, and binds every hash.
async fn check_per_hash(store: &dyn ResponseStore, issuer: &IssuerName) {
    use ocsp::HashAlg::{Sha1, Sha256};
    let s = serial(13);
    let t = now();
    let old = built(&s, CertStatus::Good, t - 100, &[Sha1, Sha256]).await;
    assert!(store.put(issuer, &s, &old).await.unwrap());
    for alg in [Sha1, Sha256] {
        assert_eq!(
            store.get_for(issuer, &s, alg).await.unwrap(),
            Some(old.clone())
        );
    }
    let new1 = built(&s, CertStatus::Good, t, &[Sha1]).await;
    assert!(store.put(issuer, &s, &new1).await.unwrap());
    assert_eq!(store.get_for(issuer, &s, Sha1).await.unwrap(), Some(new1));
    assert_eq!(
        store.get_for(issuer, &s, Sha256).await.unwrap(),
        Some(old.clone())
    );
    // Older than the old-layout response SHA-256 is served: refused.
    let stale = built(&s, CertStatus::Good, t - 200, &[Sha256]).await;
    assert!(!store.put(issuer, &s, &stale).await.unwrap());

    let rev1 = built(&s, revoked(t - 50, Some(1)), t + 1, &[Sha1]).await;
    assert!(store.put(issuer, &s, &rev1).await.unwrap());
    assert_eq!(
        store.get_for(issuer, &s, Sha1).await.unwrap(),
        Some(rev1.clone())
    );
    // The old key's `good` is gone with the revocation: SHA-256 has nothing, never `good`.
    assert_eq!(store.get_for(issuer, &s, Sha256).await.unwrap(), None);
    assert_eq!(store.get(issuer, &s).await.unwrap(), Some(rev1));
    for status in [CertStatus::Good, revoked(t - 40, Some(1))] {
        let other = built(&s, status, t + 2, &[Sha256]).await;
        assert!(!store.put(issuer, &s, &other).await.unwrap(), "{status:?}");
    }
    let rev256 = built(&s, revoked(t - 50, Some(1)), t + 2, &[Sha256]).await;
    assert!(store.put(issuer, &s, &rev256).await.unwrap());
    assert_eq!(
        store.get_for(issuer, &s, Sha256).await.unwrap(),
        Some(rev256)
    );
    assert!(!store.put(issuer, &s, &old).await.unwrap());
}

#[tokio::test]
async fn single_node_one_response_per_hash() {
    let issuer = unique_issuer("per-hash");
    let _cleanup = Cleanup {
        urls: vec![SHARED.into()],
        issuer: issuer.clone(),
    };
    check_per_hash(&shared_store().await, &issuer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_works_and_spreads_keys() {
    let cluster = Servers::cluster();
    let urls = cluster.urls();
    // One seed is enough to find the others.
    let store = RedisStore::open(&urls[..1], true).await.unwrap();
    store.ping().await.unwrap();
    let issuer = unique_issuer("cluster");
    check_round_trip(&store, &issuer).await;
    check_monotonic(&store, &issuer).await;
    // The put script reads and writes a certificate's three keys: one cluster slot.
    check_per_hash(&store, &issuer).await;
    let stores: Vec<Arc<dyn ResponseStore>> = vec![
        Arc::new(store.clone()),
        Arc::new(RedisStore::open(&urls, true).await.unwrap()),
    ];
    check_race(&stores, &issuer).await;

    // One issuer's keys land on many slots, and on every master.
    let t = now();
    for n in 0..300 {
        assert!(
            store
                .put(&issuer, &serial(10_000 + n), &response(CertStatus::Good, t))
                .await
                .unwrap()
        );
    }
    let mut slots = std::collections::BTreeSet::new();
    for n in 0..300 {
        let key = response_key(&issuer, &serial(10_000 + n));
        let slot = query(
            cluster.ports[0],
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        );
        slots.insert(format!("{slot:?}"));
    }
    assert!(slots.len() > 250, "{} distinct slots", slots.len());
    for port in &cluster.ports {
        match query(*port, &redis::cmd("DBSIZE")) {
            Some(redis::Value::Int(n)) => assert!(n > 50, "node {port} holds {n} keys"),
            other => panic!("DBSIZE on {port}: {other:?}"),
        }
    }

    // Scripts flushed everywhere (a restarted or new master): EVALSHA falls back to loading it.
    for port in &cluster.ports {
        query(*port, redis::cmd("SCRIPT").arg("FLUSH")).unwrap();
    }
    let rev = response(revoked(t, None), t + 1);
    for n in 0..30 {
        assert!(store.put(&issuer, &serial(10_000 + n), &rev).await.unwrap());
        assert!(
            !store
                .put(
                    &issuer,
                    &serial(10_000 + n),
                    &response(CertStatus::Good, t + 2)
                )
                .await
                .unwrap()
        );
    }

    // A dead cluster fails fast too.
    drop(cluster);
    let started = Instant::now();
    assert!(matches!(
        store.get(&issuer, &serial(10_000)).await,
        Err(Error::Store { .. })
    ));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn single_node_reconnects_after_a_restart() {
    let mut server = Servers::standalone();
    let store = RedisStore::open(&server.urls(), false).await.unwrap();
    let issuer = unique_issuer("restart");
    let t = now();
    assert!(
        store
            .put(&issuer, &serial(1), &response(CertStatus::Good, t))
            .await
            .unwrap()
    );

    // Down: fast errors.
    for child in &mut server.children {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let started = Instant::now();
    assert!(matches!(
        store.get(&issuer, &serial(1)).await,
        Err(Error::Store { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(1));

    // Up again (empty: no persistence): the same store works without being reopened.
    let port = server.ports[0];
    server.children = vec![spawn_redis(server.dir.path(), port, false)];
    wait_for("redis-server", Duration::from_secs(10), || {
        query(port, &redis::cmd("PING")).is_some()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store
            .put(&issuer, &serial(1), &response(CertStatus::Good, t))
            .await
        {
            Ok(stored) => {
                assert!(stored);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no reconnection: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store.get(&issuer, &serial(1)).await.unwrap(),
        Some(response(CertStatus::Good, t))
    );
}

/// Figures for the module documentation. Run:
/// `cargo test --release -p ocsp --test store_redis -- --ignored --nocapture bench_get_latency`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark"]
async fn bench_get_latency() {
    let issuer = unique_issuer("bench");
    let _cleanup = Cleanup {
        urls: vec![SHARED.into()],
        issuer: issuer.clone(),
    };
    let store = shared_store().await;
    let t = now();
    for n in 0..1_000 {
        let r = StoredResponse {
            der: vec![0x30; 500],
            ..response(CertStatus::Good, t)
        };
        store.put(&issuer, &serial(n), &r).await.unwrap();
    }
    let mut latencies = Vec::new();
    for n in 0..20_000u64 {
        let started = Instant::now();
        assert!(
            store
                .get(&issuer, &serial(n % 1_000))
                .await
                .unwrap()
                .is_some()
        );
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "redis get, one caller: p50 {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );

    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..64u64 {
        let (store, issuer) = (store.clone(), issuer.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while started.elapsed() < Duration::from_secs(3) {
                store
                    .get(&issuer, &serial((k * 7 + done) % 1_000))
                    .await
                    .unwrap();
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    println!(
        "redis get, 64 callers: {:.0}/s",
        total as f64 / started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    for n in 0..2_000u64 {
        store
            .put(
                &issuer,
                &serial(n % 1_000),
                &response(CertStatus::Good, t + 1),
            )
            .await
            .unwrap();
    }
    println!(
        "redis put (script), one caller: {:?} each",
        started.elapsed() / 2_000
    );
}
