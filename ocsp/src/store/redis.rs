//! The Redis store, for deployments that outgrow one machine: a single node (through a
//! reconnecting `ConnectionManager`) or a Redis Cluster (`cluster_async::ClusterConnection`).
//!
//! # Layout
//! One hash per response, key `ocsp:<issuer>:{<serial hex>}:sha1` or `...:sha256` for the
//! response to requests with that CertID hash, and `ocsp:<issuer>:{<serial hex>}` (no suffix)
//! for one in the old layout (a SingleResponse per hash, [`Slot::Legacy`]), which `get_for`
//! reads when the hash has no key of its own. Fields `status` (`0` good, `1`
//! revoked), `revoked_at`, `reason` (absent when good / when no reason), `this_update`,
//! `next_update` (decimal Unix seconds) and `der`. The hash tag is the serial, not the issuer,
//! so one issuer's responses spread over every slot (and every master) of a cluster, and a
//! certificate's keys share one slot: the put script reads and writes all three atomically.
//!
//! # Atomic, monotonic puts
//! `put` is one Lua script ([`PUT_SCRIPT`], sent as EVALSHA, loaded on NOSCRIPT by
//! `redis::Script`) that implements [`super::may_store`] over the certificate's three keys
//! server-side (and, storing a revocation, deletes the other keys' `good`): Redis runs a
//! script without interleaving other commands, so a refresh racing a revocation cannot leave
//! `good` over `revoked`. Times are compared as Lua numbers (doubles): exact for any Unix time
//! below 2^53 seconds. Revocation time and reason are compared as the decimal strings this module
//! writes.
//!
//! Every stored response also gets `EXPIREAT next_update + 1 day`, so entries nobody refreshes
//! vanish instead of piling up. Consequence: a revoked response that is not re-signed for a day
//! past its nextUpdate disappears, and the monotonic check then has nothing to compare with —
//! the pre-signer's worklist (SQLite, `certificates`) is what keeps a revoked certificate
//! revoked; this store only guards against racing writers.
//!
//! # Failing fast
//! Connection and response timeouts (250 ms each by default), few reconnection retries, and an
//! overall deadline on every call ([`RedisOptions::call_timeout`]): a dead or hung Redis makes
//! calls fail with `Error::Store` in well under a second, and the responder falls back to its
//! local copy. [`RedisStore::open`] does not contact Redis (so the responder starts while Redis
//! is down); use [`RedisStore::ping`] to check it.
//!
//! Measured on this machine against the local Redis 7.0 (`ocsp/tests/store_redis.rs`, test
//! `bench_get_latency`, release build, 500-byte responses): `get` with one caller p50 23 µs, p99
//! 76 µs; 64 concurrent callers ~130,000 gets/s; `put` (the script) ~29 µs.
//!
//! # Durability
//! Redis acknowledges a write once it is in memory. Whether it survives a crash is Redis's own
//! configuration (`appendonly yes` with `appendfsync always` for "nothing acknowledged before it
//! is durable"; the default `everysec` can lose the last second) — say so to operators; this
//! module cannot enforce it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::sync::OnceCell;

use super::{ResponseStore, Slot};
use crate::crl_shard::StoredCrl;
use crate::error::Error;
use crate::hash_alg::HashAlg;
use crate::record::{CertStatus, IssuerName, ReasonCode, Serial, StoredResponse};

/// The monotonic put ([`super::may_store`]). KEYS[1]: the response's own key; KEYS[2], KEYS[3]:
/// the certificate's other two keys, the old-layout key (if KEYS[1] is not it) at KEYS[2].
/// ARGV: status (`0`/`1`), revoked_at (`""` if good), reason (`""` if none), this_update,
/// next_update, der, expire_at, and `1` if KEYS[2] is the old-layout key a request for KEYS[1]'s
/// hash falls back to. Returns 1 if stored, 0 if the stored responses win, -1 if a stored record
/// is corrupt (it is then left alone: it might have been a revocation).
pub const PUT_SCRIPT: &str = r"
local function read(key)
  local ok, v = pcall(redis.call, 'HMGET', key, 'status', 'revoked_at', 'reason', 'this_update')
  if not ok then return nil, true end
  if not v[1] then return nil, redis.call('EXISTS', key) == 1 end
  if tonumber(v[4]) == nil then return nil, true end
  if v[1] == '1' then
    if not v[2] then return nil, true end
  elseif v[1] ~= '0' then
    return nil, true
  end
  return v, false
end
local rows = {}
for i = 1, #KEYS do
  local v, bad = read(KEYS[i])
  if bad then return -1 end
  rows[i] = v
end
local new_status, new_this_update = ARGV[1], tonumber(ARGV[4])
local same = rows[1]
if not same and ARGV[8] == '1' then same = rows[2] end
if same then
  if same[1] == '1' then
    -- a revocation is replaced only by the same revocation (time and reason), not older
    if new_status ~= '1' then return 0 end
    if same[2] ~= ARGV[2] or (same[3] or '') ~= ARGV[3] then return 0 end
    if new_this_update < tonumber(same[4]) then return 0 end
  elseif new_status == '0' and new_this_update < tonumber(same[4]) then
    -- good is replaced by any revocation, or by good that is not older
    return 0
  end
end
-- a revocation under any hash admits only the same revocation under every other
for i = 2, #KEYS do
  local o = rows[i]
  if o and o[1] == '1' then
    if new_status ~= '1' or o[2] ~= ARGV[2] or (o[3] or '') ~= ARGV[3] then return 0 end
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'status', new_status, 'this_update', ARGV[4],
  'next_update', ARGV[5], 'der', ARGV[6])
if new_status == '1' then
  redis.call('HSET', KEYS[1], 'revoked_at', ARGV[2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[3]) end
  for i = 2, #KEYS do
    if rows[i] and rows[i][1] == '0' then redis.call('DEL', KEYS[i]) end
  end
end
redis.call('EXPIREAT', KEYS[1], ARGV[7])
return 1
";

/// Timeouts of a [`RedisStore`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Establishing one TCP connection.
    pub connect_timeout: Duration,
    /// Waiting for one reply.
    pub response_timeout: Duration,
    /// Everything one call may take, reconnection and retries included.
    pub call_timeout: Duration,
    /// Seconds after nextUpdate at which Redis deletes a response.
    pub expire_after_next_update_secs: i64,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(250),
            response_timeout: Duration::from_millis(250),
            call_timeout: Duration::from_millis(500),
            expire_after_next_update_secs: 86_400,
        }
    }
}

/// Responses in Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    backend: Backend,
    options: RedisOptions,
    script: Arc<Script>,
    crl_script: Arc<Script>,
}

#[derive(Clone)]
enum Backend {
    Single(ConnectionManager),
    Cluster(Arc<ClusterBackend>),
}

/// Connected on first use and kept: `ClusterConnection` reconnects to nodes itself, but
/// creating one needs a reachable node, and start-up must not.
struct ClusterBackend {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match &self.backend {
            Backend::Single(_) => "single",
            Backend::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("backend", &backend)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// One connection of either kind, so commands are written once.
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

fn store_error(detail: impl Into<String>) -> Error {
    Error::Store {
        store: "redis",
        detail: detail.into(),
    }
}

fn redis_error(e: redis::RedisError) -> Error {
    store_error(e.to_string())
}

fn corrupt(key: &str, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        key: key.to_owned(),
        detail: detail.into(),
    }
}

/// The old-layout key of a certificate ([`Slot::Legacy`]). The `{…}` hash tag on the serial
/// spreads keys over slots and keeps a certificate's keys in one.
pub fn response_key(issuer: &IssuerName, serial: &Serial) -> String {
    format!("ocsp:{}:{{{}}}", issuer.0, serial.to_hex())
}

/// The key of a certificate's response in `slot`.
pub fn slot_key(issuer: &IssuerName, serial: &Serial, slot: Slot) -> String {
    match slot {
        Slot::Legacy => response_key(issuer, serial),
        Slot::Hash(alg) => format!("{}:{}", response_key(issuer, serial), alg.name()),
    }
}

fn parse_int(key: &str, field: &str, bytes: &[u8]) -> Result<i64, Error> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| corrupt(key, format!("field {field} is not an integer")))
}

/// Decodes the HMGET of `status, revoked_at, reason, this_update, next_update, der`.
fn decode(key: &str, fields: Vec<Option<Vec<u8>>>) -> Result<Option<StoredResponse>, Error> {
    let [status, revoked_at, reason, this_update, next_update, der]: [Option<Vec<u8>>; 6] = fields
        .try_into()
        .map_err(|v: Vec<_>| corrupt(key, format!("expected 6 fields, got {}", v.len())))?;
    let Some(status) = status else {
        // No status: either no such key, or a damaged hash.
        return if [&revoked_at, &reason, &this_update, &next_update, &der]
            .iter()
            .all(|f| f.is_none())
        {
            Ok(None)
        } else {
            Err(corrupt(key, "hash without a status"))
        };
    };
    let need = |field: &str, value: Option<Vec<u8>>| {
        value.ok_or_else(|| corrupt(key, format!("missing field {field}")))
    };
    let status = match (status.as_slice(), revoked_at) {
        (b"0", None) if reason.is_none() => CertStatus::Good,
        (b"1", Some(at)) => CertStatus::Revoked {
            at: parse_int(key, "revoked_at", &at)?,
            reason: reason
                .map(|r| {
                    let code = parse_int(key, "reason", &r)?;
                    ReasonCode::try_from(code)
                        .map_err(|_| corrupt(key, format!("reason {code} out of range")))
                })
                .transpose()?,
        },
        _ => return Err(corrupt(key, "inconsistent status, revoked_at and reason")),
    };
    Ok(Some(StoredResponse {
        status,
        this_update: parse_int(key, "this_update", &need("this_update", this_update)?)?,
        next_update: parse_int(key, "next_update", &need("next_update", next_update)?)?,
        der: need("der", der)?,
        http: Default::default(),
    }))
}

impl RedisStore {
    /// A store on one node (`urls` has one URL, `cluster == false`) or a cluster (`urls` are seed
    /// nodes). Does not contact Redis; needs a Tokio runtime.
    pub async fn open(urls: &[String], cluster: bool) -> Result<Self, Error> {
        Self::open_with(urls, cluster, RedisOptions::default()).await
    }

    pub async fn open_with(
        urls: &[String],
        cluster: bool,
        options: RedisOptions,
    ) -> Result<Self, Error> {
        let backend = if cluster {
            if urls.is_empty() {
                return Err(store_error("a cluster needs at least one seed URL"));
            }
            let client = ClusterClient::builder(urls.iter().map(String::as_str))
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.response_timeout)
                // Retries cover MOVED/ASK during resharding and a failover; the call deadline
                // bounds them anyway.
                .retries(3)
                .min_retry_wait(10)
                .max_retry_wait(100)
                .overall_response_timeout(Some(options.call_timeout))
                .build()
                .map_err(redis_error)?;
            Backend::Cluster(Arc::new(ClusterBackend {
                client,
                connection: OnceCell::new(),
            }))
        } else {
            let [url] = urls else {
                return Err(store_error(format!(
                    "a single node takes exactly one URL, got {} (set cluster = true for several)",
                    urls.len()
                )));
            };
            let client = redis::Client::open(url.as_str()).map_err(redis_error)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(options.response_timeout))
                // One quick retry per reconnection: the manager tries again on the next call,
                // and a caller waiting seconds for backoff is worse than a fast error.
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(20))
                .set_max_delay(Duration::from_millis(100));
            Backend::Single(
                ConnectionManager::new_lazy_with_config(client, config).map_err(redis_error)?,
            )
        };
        Ok(Self {
            backend,
            options,
            script: Arc::new(Script::new(PUT_SCRIPT)),
            crl_script: Arc::new(Script::new(PUT_CRL_SCRIPT)),
        })
    }

    /// Runs `f` with a connection, within the call deadline.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.call_within(what, self.options.call_timeout, f).await
    }

    /// [`Self::call`] with its own time limit (a CRL shard can be tens of MB).
    async fn call_within<T, F, Fut>(&self, what: &str, limit: Duration, f: F) -> Result<T, Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let work = async {
            let conn = match &self.backend {
                Backend::Single(manager) => Conn::Single(manager.clone()),
                Backend::Cluster(cluster) => Conn::Cluster(
                    cluster
                        .connection
                        .get_or_try_init(|| cluster.client.get_async_connection())
                        .await
                        .map_err(redis_error)?
                        .clone(),
                ),
            };
            f(conn).await
        };
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(store_error(format!("{what}: no answer within {limit:?}"))),
        }
    }

    /// Checks that Redis answers (for health checks and the "degraded" metric).
    pub async fn ping(&self) -> Result<(), Error> {
        self.call("PING", |mut conn| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(redis_error)?;
            Ok(())
        })
        .await
    }
}

/// Stores a CRL shard only if its number is greater than the stored one's (compare-and-set,
/// atomic in Redis). Numbers are microseconds since 1970 (~1.8e15), exact in Lua's doubles
/// (< 2^53). KEYS[1]: the shard's hash; ARGV: number, thisUpdate, nextUpdate, entries, DER.
const PUT_CRL_SCRIPT: &str = "
local current = redis.call('HGET', KEYS[1], 'number')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'number', ARGV[1], 'this_update', ARGV[2],
  'next_update', ARGV[3], 'entries', ARGV[4], 'der', ARGV[5])
return 1
";

/// The key of a CRL shard: one key per shard, so any cluster node can own it.
pub fn crl_key(issuer: &IssuerName, shard: u32) -> String {
    format!("crl:{}:{{{shard}}}", issuer.0)
}

/// Time for a call moving `bytes`: the configured limit, plus a second per 8 MB.
fn crl_limit(options: &RedisOptions, bytes: usize) -> Duration {
    options.call_timeout + Duration::from_secs((bytes >> 23) as u64 + 1)
}

#[async_trait]
impl super::CrlStore for RedisStore {
    fn crl_store_kind(&self) -> &'static str {
        "redis"
    }

    async fn get_crl(&self, issuer: &IssuerName, shard: u32) -> Result<Option<StoredCrl>, Error> {
        let key = crl_key(issuer, shard);
        // A shard may be large: the limit of a 64 MB one.
        let limit = crl_limit(&self.options, 64 << 20);
        self.call_within("HMGET crl", limit, |mut conn| async move {
            let fields: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                .arg(&key)
                .arg(&["number", "this_update", "next_update", "entries", "der"])
                .query_async(&mut conn)
                .await
                .map_err(|e| {
                    if e.code() == Some("WRONGTYPE") {
                        corrupt(&key, "not a hash")
                    } else {
                        redis_error(e)
                    }
                })?;
            let mut it = fields.into_iter();
            let mut next = || it.next().flatten();
            let (number, this_update, next_update, entries, der) =
                (next(), next(), next(), next(), next());
            let int = |v: Option<Vec<u8>>, name: &str| -> Result<i64, Error> {
                v.as_deref()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| corrupt(&key, format!("{name} missing or not an integer")))
            };
            match (number, der) {
                (None, None) => Ok(None),
                (number, Some(der)) => Ok(Some(StoredCrl {
                    number: int(number, "number")?,
                    this_update: int(this_update, "this_update")?,
                    next_update: int(next_update, "next_update")?,
                    entries: int(entries, "entries")?.max(0) as u64,
                    der,
                })),
                (Some(_), None) => Err(corrupt(&key, "der missing")),
            }
        })
        .await
    }

    async fn put_crl(
        &self,
        issuer: &IssuerName,
        shard: u32,
        crl: &StoredCrl,
    ) -> Result<bool, Error> {
        let key = crl_key(issuer, shard);
        let limit = crl_limit(&self.options, crl.der.len());
        let script = self.crl_script.clone();
        self.call_within("put crl script", limit, |mut conn| async move {
            let stored: i64 = script
                .key(&key)
                .arg(crl.number)
                .arg(crl.this_update)
                .arg(crl.next_update)
                .arg(crl.entries)
                .arg(&crl.der)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            Ok(stored == 1)
        })
        .await
    }
}

#[async_trait]
impl ResponseStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
    ) -> Result<Option<StoredResponse>, Error> {
        for slot in Slot::PREFERRED {
            if let Some(found) = self.read(slot_key(issuer, serial, slot)).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    async fn get_for(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        hash: HashAlg,
    ) -> Result<Option<StoredResponse>, Error> {
        match self
            .read(slot_key(issuer, serial, Slot::Hash(hash)))
            .await?
        {
            Some(found) => Ok(Some(found)),
            None => self.read(response_key(issuer, serial)).await,
        }
    }

    async fn put(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        response: &StoredResponse,
    ) -> Result<bool, Error> {
        self.put_script(issuer, serial, response).await
    }
}

impl RedisStore {
    /// One response hash, by key.
    async fn read(&self, key: String) -> Result<Option<StoredResponse>, Error> {
        self.call("HMGET", |mut conn| async move {
            let fields: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                .arg(&key)
                .arg(&[
                    "status",
                    "revoked_at",
                    "reason",
                    "this_update",
                    "next_update",
                    "der",
                ])
                .query_async(&mut conn)
                .await
                .map_err(|e| {
                    if e.code() == Some("WRONGTYPE") {
                        corrupt(&key, "not a hash")
                    } else {
                        redis_error(e)
                    }
                })?;
            decode(&key, fields)
        })
        .await
    }

    async fn put_script(
        &self,
        issuer: &IssuerName,
        serial: &Serial,
        response: &StoredResponse,
    ) -> Result<bool, Error> {
        let slot = Slot::of(&response.der);
        let key = slot_key(issuer, serial, slot);
        // The old-layout key second: a hash without its own key is answered from it.
        let others: Vec<String> = Slot::ALL
            .into_iter()
            .filter(|s| *s != slot)
            .map(|s| slot_key(issuer, serial, s))
            .collect();
        let falls_back = if slot == Slot::Legacy { "0" } else { "1" };
        let (status, revoked_at, reason) = match response.status {
            CertStatus::Good => ("0", String::new(), String::new()),
            CertStatus::Revoked { at, reason } => (
                "1",
                at.to_string(),
                reason.map(|r| r.to_string()).unwrap_or_default(),
            ),
        };
        let expire_at = response
            .next_update
            .saturating_add(self.options.expire_after_next_update_secs);
        let script = self.script.clone();
        self.call("put script", |mut conn| async move {
            let outcome: i64 = script
                .key(&key)
                .key(&others)
                .arg(status)
                .arg(revoked_at)
                .arg(reason)
                .arg(response.this_update)
                .arg(response.next_update)
                .arg(response.der.as_slice())
                .arg(expire_at)
                .arg(falls_back)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            match outcome {
                1 => Ok(true),
                0 => Ok(false),
                _ => Err(corrupt(&key, "stored record is corrupt; put refused")),
            }
        })
        .await
    }
}
