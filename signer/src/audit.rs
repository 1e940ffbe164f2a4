//! The audit log: one append-only, hash-chained record per signing request.
//!
//! Every `Sign` and `SignBatch` call — signed, refused or failed — becomes one JSON line in
//! `[audit] dir`, written and `fdatasync`ed **before** the signature is returned:
//!
//! ```text
//! {"seq":7,"time":"2026-11-27T14:31:11.123Z","method":"SignBatch","client":"ocsp-presigner",
//!  "identity":"CN=ocsp-presigner,O=hsmgate dev","peer":"127.0.0.1:40312","operation":"sign-raw",
//!  "outcome":"OK","detail":null,"hsms":["dev-a"],
//!  "items":[{"key":"dev-p256","input":"digest","sha256":"…"}],
//!  "prev":"<hash of record 6>","hash":"<SHA-256 of this line without its hash field>"}
//! ```
//!
//! `items[].sha256` is the SHA-256 of the bytes the caller sent (the digest, or the message),
//! so a record can be matched to the certificate or OCSP response it produced.
//!
//! A `SignBatch` refused before any HSM was asked (grants, payload checks, limits, malformed
//! items) has no `items`: its record carries `"refused":{"items":N,"request_sha256":"…"}`
//! instead, the SHA-256 of the request message as prost encodes it. A refused `Sign` keeps its
//! one item (its key and the SHA-256 of at most 16 KiB sent). What a refused call writes is
//! then a few hundred bytes whatever its size, so oversized refused batches cannot fill the
//! disk (and, with `stop-signing`, stop all signing).
//!
//! **The chain.** `hash` is the SHA-256 of the line as it would read without `,"hash":"…"`;
//! `prev` is the previous record's `hash` (64 zeros for record 1). Editing a record breaks its
//! own hash; removing or reordering one breaks the next record's `prev` and `seq`; `signer audit
//! verify DIR` checks everything and names the first break. (Removing the *newest* records is
//! only detectable against an outside copy of the last hash — ship the log off the machine.)
//!
//! **Files.** `audit-<seq of its first record, 20 digits>.jsonl`; once a file reaches
//! `max_file_bytes` the next record starts a new file and the chain continues across it. At
//! start-up the last record is read back and checked, so a restarted gateway extends the same
//! chain; a torn last line (a crash mid-write, never acknowledged) is cut off with a warning.
//!
//! **Preallocation.** The file being written is extended `preallocate_bytes` at a time (4 MiB
//! by default) by writing zeros, and records then overwrite those zeros. A record's
//! `fdatasync` then changes no inode field that matters (the size is already there), so it
//! writes the data blocks and nothing else: without it every sync of a growing file also
//! committed the file system's journal, through ext4's journal thread, which on a machine whose
//! cores are busy signing waited for a core (bench/RESULTS.md). The cost is a format rule, as in
//! PostgreSQL's zero-filled WAL segments: **the file being written ends in NUL bytes**, and
//! its records end at the first NUL. Readers (`audit verify`, start-up, log shippers) stop
//! there; a file is cut to its records when the next one starts and when the gateway stops
//! cleanly, and a crashed gateway's tail is cut at its next start. The zeros are written once a
//! group has been answered, half a preallocation before the records reach them, and their
//! write-back started then, so that no signing call waits for them. `preallocate_bytes = 0`
//! keeps the plain append (every file ends with its last record, at the price above).
//!
//! **Group commit.** One writer thread owns the file. Requests hand it their record and wait;
//! it takes every record queued, writes them, syncs once and answers them all, so concurrent
//! callers share an `fdatasync`. When other signing calls are still on their way (counted from
//! the moment a call starts until it hands over its record, [`AuditLog::pending`]), the writer
//! first waits `[audit] commit_delay_us` for their records to join the group, or until the last
//! of them has handed its record over: without that wait a busy gateway synced every few
//! records (a sync costs the writer ~50-60 µs of CPU on this VM, and the kernel's journal
//! thread more), with it tens of records share one. A call alone on the gateway is written at
//! once. The writer is the one thread every signing call waits for, so
//! it does as little as it can: the calling task serialises the record's body (everything
//! between `time` and `prev`, [`AuditLog::append`]), and the writer only frames it with `seq`,
//! `time` and `prev`, hashes the line (that part is sequential by nature: each hash covers the
//! previous one) and writes. It also asks for a higher scheduling priority (nice −10, when the
//! process may: root or `CAP_SYS_NICE`), so that on a machine whose cores are busy signing it
//! does not queue behind the signing threads while every caller waits for it.
//!
//! **Losing the sink** (disk full, directory gone): the write fails, and with `on_failure =
//! "stop-signing"` (the default) the caller gets UNAVAILABLE and no signature — fail closed,
//! because a signature nobody can account for is worse than a retry on another gateway. The
//! next request tries again (re-reading the tail first), so signing resumes by itself once the
//! sink is back. `log-and-continue` returns signatures anyway and counts the failures.
//!
//! **No log at all** exists only for benchmarks: [`Sink::Unaudited`] is compiled in by the
//! `bench-unaudited` feature alone (off by default, enabled by no other crate), and chosen by
//! `[audit] bench_unaudited = true` on a loopback listener. A normal build refuses that setting
//! at start-up, so it cannot run unaudited whatever its configuration says.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hsm_config::{AuditFailure, Config};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::metrics::Metrics;

mod verify;
mod writer;

pub use verify::{AuditVerification, ChainBreak, verify_audit_log};
use writer::Writer;

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Most records the writer takes per sync.
const GROUP_MAX: usize = 1024;
/// `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// One item of a signing request, as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    /// The key name as the caller sent it (at most 128 characters kept).
    pub key: String,
    /// `digest` or `message`; `none` when the item had no input.
    pub input: &'static str,
    /// SHA-256 of the bytes sent, hex.
    pub sha256: String,
}

impl Item {
    pub fn new(key: &str, input: &'static str, bytes: &[u8]) -> Self {
        Self {
            key: key.chars().take(128).collect(),
            input,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }
}

/// A refused call, summarised instead of itemised (see the module documentation).
#[derive(Clone, Debug, Serialize)]
pub struct Refused {
    /// Items the request held.
    pub items: u64,
    /// SHA-256 of the request message's protobuf encoding (`SignRequest` or
    /// `SignBatchRequest`), hex.
    pub request_sha256: String,
}

/// What one signing request leaves in the log (the writer adds `seq`, `time`, `prev`, `hash`).
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub method: &'static str,
    /// The configured client name; `-` when the caller is not a configured client.
    pub client: String,
    /// How the caller was identified (certificate subject and SPKI hash, or `plaintext`).
    pub identity: String,
    pub peer: Option<String>,
    /// The operation the call declared (`sign-raw`, `sign-certificate`, `sign-ocsp`).
    pub operation: &'static str,
    /// `OK` or the gRPC code the caller got.
    pub outcome: &'static str,
    /// The message the caller got, for a refusal or failure.
    pub detail: Option<String>,
    /// HSMs that made the signatures.
    pub hsms: Vec<String>,
    pub items: Vec<Item>,
    /// For a call refused before any HSM was asked: its summary (then `items` is empty).
    pub refused: Option<Refused>,
}

/// A record's body: the fields between `time` and `prev`, in the order of the line. Serialised
/// by the calling task; the writer adds `seq`, `time`, `prev` and `hash` around it.
#[derive(Serialize)]
struct Body<'a> {
    method: &'a str,
    client: &'a str,
    identity: &'a str,
    peer: Option<&'a str>,
    operation: &'a str,
    outcome: &'a str,
    detail: Option<&'a str>,
    hsms: &'a [String],
    items: &'a [Item],
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'a Refused>,
}

impl Record {
    /// The body as it appears in the line: `"method":…` up to the field before `prev`, without
    /// braces (so that the writer can put `seq` and `time` before it and `prev` after it).
    fn encode_body(&self) -> Result<Vec<u8>, Error> {
        let body = Body {
            method: self.method,
            client: &self.client,
            identity: &self.identity,
            peer: self.peer.as_deref(),
            operation: self.operation,
            outcome: self.outcome,
            detail: self.detail.as_deref(),
            hsms: &self.hsms,
            items: &self.items,
            refused: self.refused.as_ref(),
        };
        let mut json = serde_json::to_vec(&body)
            .map_err(|e| Error::Audit(format!("encoding the record: {e}")))?;
        // `{…}` → `…`: an object of at least one field, so both braces are there.
        json.pop();
        json.remove(0);
        Ok(json)
    }
}

struct Pending {
    /// [`Record::encode_body`].
    body: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<Result<u64, String>>,
}

/// What the writer thread is sent.
enum ToWriter {
    Record(Pending),
    /// Shut down cleanly: cut the current file's preallocated tail, then answer.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// The running audit log: a handle to its writer thread.
#[derive(Debug)]
pub struct AuditLog {
    /// Held (locked) for the process's life: two gateways on one directory would fork the chain.
    _lock: File,
    tx: crossbeam_channel::Sender<ToWriter>,
    on_failure: AuditFailure,
    metrics: Arc<Metrics>,
    /// Signing calls under way whose record has not reached the writer yet ([`Self::pending`]).
    on_the_way: Arc<OnTheWay>,
}

/// A signing call under way, counted until it hands over its record (or is dropped): while any
/// is, the writer waits `commit_delay_us` to give it a place in the next group. It borrows the
/// log's counter: one atomic add and one subtract per call, no reference count.
#[derive(Debug)]
pub struct PendingRecord<'a> {
    on_the_way: &'a OnTheWay,
}

impl Drop for PendingRecord<'_> {
    fn drop(&mut self) {
        self.on_the_way.arrived();
    }
}

/// The signing calls whose records the writer's group may wait for, and the wake-up that ends
/// the wait when the last of them has handed its record over (or ended without one): waiting
/// on after that would only add latency, the group can hold nothing more.
#[derive(Debug, Default)]
pub(crate) struct OnTheWay {
    calls: AtomicUsize,
    /// The writer is in its group-commit wait ([`Self::wait`]).
    waiting: AtomicBool,
    /// The writer thread, set by itself when it starts.
    writer: OnceLock<std::thread::Thread>,
}

impl OnTheWay {
    fn started(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// One call fewer under way. The last one wakes a waiting writer: one `unpark` (a futex
    /// wake) per wait at most, no syscall at all while the writer is not waiting. `SeqCst`
    /// here and in [`Self::wait`]: either this sees `waiting`, or the writer sees the count at
    /// zero and does not sleep.
    fn arrived(&self) {
        if self.calls.fetch_sub(1, Ordering::SeqCst) == 1
            && self.waiting.load(Ordering::SeqCst)
            && let Some(writer) = self.writer.get()
        {
            writer.unpark();
        }
    }

    fn any(&self) -> bool {
        self.calls.load(Ordering::Relaxed) > 0
    }

    /// The writer's wait for the records of calls under way: `delay` at most, over as soon as
    /// none is. A stale or spurious wake-up only makes it look at the count again.
    fn wait(&self, delay: Duration) {
        let deadline = Instant::now() + delay;
        self.waiting.store(true, Ordering::SeqCst);
        while self.calls.load(Ordering::SeqCst) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::park_timeout(left);
        }
        self.waiting.store(false, Ordering::SeqCst);
    }
}

/// How long the writer waits for the records of calls still under way (see the module docs).
pub(crate) struct GroupWait {
    pub(crate) delay: Duration,
    pub(crate) on_the_way: Arc<OnTheWay>,
}

impl AuditLog {
    /// Opens `dir` (creating it), reads back and checks the last record, and starts the writer.
    /// Fails if the tail of the log is damaged: the gateway must not start a second chain.
    pub fn open(
        dir: PathBuf,
        max_file_bytes: u64,
        preallocate_bytes: u64,
        on_failure: AuditFailure,
        commit_delay: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, Error> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Audit(format!("creating {}: {e}", dir.display())))?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::Audit(format!("{}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|_| {
            Error::Audit(format!(
                "{} is in use by another gateway: each gateway needs its own audit directory",
                dir.display()
            ))
        })?;
        let mut writer = Writer::new(dir.clone(), max_file_bytes, preallocate_bytes);
        writer.recover().map_err(Error::Audit)?;
        tracing::info!(
            dir = %dir.display(),
            next_seq = writer.next_seq,
            "audit log open; the chain continues from the last record"
        );
        let (tx, rx) = crossbeam_channel::unbounded::<ToWriter>();
        let thread_metrics = metrics.clone();
        let on_the_way = Arc::new(OnTheWay::default());
        let wait = GroupWait {
            delay: commit_delay,
            on_the_way: on_the_way.clone(),
        };
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx, wait, thread_metrics))
            .map_err(|e| Error::Audit(format!("cannot start the audit writer: {e}")))?;
        Ok(Arc::new(Self {
            _lock: lock,
            tx,
            on_failure,
            metrics,
            on_the_way,
        }))
    }

    pub fn on_failure(&self) -> AuditFailure {
        self.on_failure
    }

    /// Shuts the log down cleanly once the last call is answered: the writer cuts the current
    /// file's preallocated tail, so a stopped gateway leaves files of records only. Waits up to
    /// `limit`; a record appended after this starts a new preallocation.
    pub async fn close(&self, limit: Duration) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(ToWriter::Close(done)).is_ok() {
            let _ = tokio::time::timeout(limit, wait).await;
        }
    }

    /// Counts a signing call as under way until its record is appended (or the returned value
    /// is dropped), so that the writer's group waits for it ([`GroupWait`]).
    pub fn pending(&self) -> PendingRecord<'_> {
        self.on_the_way.started();
        PendingRecord {
            on_the_way: &self.on_the_way,
        }
    }

    /// Appends `record` and returns its sequence number once it is on disk. `pending`, the
    /// call's [`Self::pending`], stops counting as the record is handed over.
    pub async fn append(
        &self,
        record: Record,
        pending: Option<PendingRecord<'_>>,
    ) -> Result<u64, Error> {
        let started = Instant::now();
        // Serialised here, on the caller's task, in parallel with other callers: the writer
        // thread that all of them wait for only frames, hashes and writes.
        let body = record.encode_body()?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let sent = self.tx.send(ToWriter::Record(Pending { body, reply }));
        drop(pending);
        sent.map_err(|_| Error::Audit("the audit writer has stopped".into()))?;
        let result = match rx.await {
            Ok(r) => r.map_err(Error::Audit),
            Err(_) => Err(Error::Audit("the audit writer has stopped".into())),
        };
        self.metrics.audit(result.is_ok(), started.elapsed());
        result
    }
}

/// Where the signing service's records go.
#[derive(Clone, Debug)]
pub enum Sink {
    /// The audit log: every build, every production configuration.
    Log(Arc<AuditLog>),
    /// Nowhere: no record is made and nothing waits for a disk. Only what
    /// `bench/security/run.sh` compares the audited gateway with; the variant does not exist
    /// without the `bench-unaudited` feature, so a normal build has no unaudited path at all.
    #[cfg(feature = "bench-unaudited")]
    Unaudited,
}

impl Sink {
    /// [`AuditLog::close`]; nothing without a log.
    pub async fn close(&self, limit: Duration) {
        match self {
            Self::Log(log) => log.close(limit).await,
            #[cfg(feature = "bench-unaudited")]
            Self::Unaudited => {}
        }
    }

    /// [`AuditLog::pending`] for a call that starts now; `None` without a log.
    pub fn pending(&self) -> Option<PendingRecord<'_>> {
        match self {
            Self::Log(log) => Some(log.pending()),
            #[cfg(feature = "bench-unaudited")]
            Self::Unaudited => None,
        }
    }

    /// The sink `config` asks for: its `[audit]` log, or — in a `bench-unaudited` build, with
    /// `bench_unaudited = true` — none, said loudly in the log and in `hsmgate_audit_disabled`.
    /// Without the feature that setting is a configuration error naming the field, whatever
    /// else the file says. `path` is the configuration file, for that error.
    pub fn open(config: &Config, path: &Path, metrics: Arc<Metrics>) -> Result<Self, Error> {
        if config.audit.bench_unaudited {
            return Self::unaudited(path, &metrics);
        }
        let log = AuditLog::open(
            config.resolve(&config.audit.dir),
            config.audit.max_file_bytes,
            config.audit.preallocate_bytes,
            config.audit.on_failure,
            Duration::from_micros(config.audit.commit_delay_us),
            metrics,
        )?;
        Ok(Self::Log(log))
    }

    #[cfg(feature = "bench-unaudited")]
    fn unaudited(_path: &Path, metrics: &Metrics) -> Result<Self, Error> {
        metrics.audit_disabled();
        tracing::warn!(
            "UNAUDITED: this gateway keeps NO AUDIT LOG ([audit] bench_unaudited = true in a \
             `bench-unaudited` build): signatures leave without a record. For benchmarks only; \
             never deploy this binary."
        );
        Ok(Self::Unaudited)
    }

    #[cfg(not(feature = "bench-unaudited"))]
    fn unaudited(path: &Path, _metrics: &Metrics) -> Result<Self, Error> {
        Err(Error::Config(hsm_config::Error::Invalid {
            path: path.to_owned(),
            errors: vec![hsm_config::FieldError {
                path: "audit.bench_unaudited".into(),
                message: "refused: this signer was built without the `bench-unaudited` feature; \
                          a gateway without its audit log exists for benchmarks only"
                    .into(),
            }],
        }))
    }
}

fn file_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.jsonl")
}

/// Audit files of `dir`, by first sequence number.
fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_prefix("audit-")
            .and_then(|r| r.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// Where the records of an audit file's bytes end: at the first NUL (the preallocated tail of
/// the file being written, see the module docs), or at the end. JSON text never holds a raw
/// NUL. For readers of the files: `audit verify`, start-up, tests, log shippers.
pub fn records_end(bytes: &[u8]) -> usize {
    bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())
}

/// Checks one line's own hash; returns `(seq, prev, hash)`.
fn check_line(line: &str) -> Result<(u64, String, String), String> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.ends_with("\"}") {
        return Err("not a record: no hash at the end".into());
    }
    let cut = line.len() - HASH_SUFFIX_LEN;
    let (head, suffix) = (line.get(..cut), line.get(cut..));
    let (Some(head), Some(suffix)) = (head, suffix) else {
        return Err("not a record".into());
    };
    let hash = suffix
        .strip_prefix(",\"hash\":\"")
        .and_then(|s| s.strip_suffix("\"}"))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or("not a record: no hash at the end")?;
    let body = format!("{head}}}");
    let computed = hex::encode(Sha256::digest(body.as_bytes()));
    if computed != hash {
        return Err(format!(
            "its content does not match its hash (edited): computed {computed}, recorded {hash}"
        ));
    }
    let value: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("not JSON: {e}"))?;
    let seq = value
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or("no `seq`")?;
    let prev = value
        .get("prev")
        .and_then(serde_json::Value::as_str)
        .ok_or("no `prev`")?
        .to_owned();
    Ok((seq, prev, hash.to_owned()))
}

/// Now, as `2026-11-27T14:31:11.123Z`.
fn now_rfc3339() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    rfc3339(since)
}

fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    use super::*;

    fn record(n: usize) -> Record {
        Record {
            method: "Sign",
            client: "tests".into(),
            identity: "plaintext".into(),
            operation: "sign-raw",
            outcome: "OK",
            items: vec![Item::new("k", "digest", &n.to_be_bytes())],
            ..Record::default()
        }
    }

    /// Writes `records` as one group and then keeps zeros ahead, as the writer thread does.
    fn write(w: &mut Writer, records: &[Record]) -> Result<u64, String> {
        let bodies: Vec<Vec<u8>> = records
            .iter()
            .map(|r| r.encode_body().expect("encode"))
            .collect();
        let mut buf = Vec::new();
        let first = w.write_group(bodies.iter().map(Vec::as_slice), &mut buf)?;
        w.extend_ahead()?;
        Ok(first)
    }

    fn writer(dir: &Path, max: u64) -> Writer {
        preallocating_writer(dir, max, 0)
    }

    fn preallocating_writer(dir: &Path, max: u64, preallocate: u64) -> Writer {
        let mut w = Writer::new(dir.to_owned(), max, preallocate);
        w.recover().expect("recover");
        w
    }

    /// `audit verify` finds no break and `records` records; returns what it found.
    fn assert_intact(dir: &Path, records: u64) -> AuditVerification {
        let v = verify_audit_log(dir).expect("verify");
        assert!(v.broken.is_none(), "{:?}", v.broken);
        assert_eq!(v.records, records);
        v
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(
            rfc3339(Duration::from_millis(0)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(Duration::from_millis(1_795_789_871_123)),
            "2026-11-27T14:31:11.123Z"
        );
        assert_eq!(
            rfc3339(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn the_chain_continues_across_files_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = writer(dir.path(), 600);
        for n in 0..10 {
            write(&mut w, &[record(n)]).expect("write");
        }
        drop(w);
        // A restart extends the same chain.
        let mut w = writer(dir.path(), 600);
        assert_eq!(w.next_seq, 11);
        let batch: Vec<Record> = (10..15).map(record).collect();
        write(&mut w, &batch).expect("write");
        let v = assert_intact(dir.path(), 15);
        assert!(v.files > 2, "rotation by size: {} files", v.files);
    }

    #[test]
    fn an_edit_and_a_removal_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = writer(dir.path(), 1 << 20);
        let batch: Vec<Record> = (0..5).map(record).collect();
        write(&mut w, &batch).expect("write");
        let path = dir.path().join(file_name(1));
        let text = std::fs::read_to_string(&path).expect("read");
        let edited = text.replacen("\"client\":\"tests\"", "\"client\":\"other\"", 3);
        std::fs::write(&path, &edited).expect("write");
        let v = verify_audit_log(dir.path()).expect("verify");
        let b = v.broken.expect("edit found");
        assert_eq!((b.line, b.seq), (1, Some(1)), "{b}");
        // Removing record 3 (consistent on its own) breaks record 4's link.
        let lines: Vec<&str> = text.lines().collect();
        let without: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        std::fs::write(&path, without).expect("write");
        let b = verify_audit_log(dir.path())
            .expect("verify")
            .broken
            .expect("removal found");
        assert_eq!((b.line, b.seq), (3, Some(4)), "{b}");
    }

    /// Bytes of every audit file of `dir`, oldest first.
    fn files(dir: &Path) -> Vec<Vec<u8>> {
        list_files(dir)
            .expect("list")
            .iter()
            .map(|(_, p)| std::fs::read(p).expect("read"))
            .collect()
    }

    #[test]
    fn preallocated_files_end_in_zeros_until_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = preallocating_writer(dir.path(), 4_000, 1_500);
        for n in 0..12 {
            write(&mut w, &[record(n)]).expect("write");
        }
        let all = files(dir.path());
        assert!(all.len() > 1, "rotation by size: {} files", all.len());
        // Finished files hold their records only; the one being written ends in zeros.
        for f in &all[..all.len() - 1] {
            assert!(!f.contains(&0), "a finished file kept zeros");
        }
        let newest = all.last().expect("a file");
        let end = records_end(newest);
        assert!(end < newest.len(), "no preallocated tail");
        assert!(newest[end..].iter().all(|&b| b == 0));
        assert_intact(dir.path(), 12);
        // A clean stop cuts the tail.
        w.finish_file().expect("finish");
        assert!(!files(dir.path()).iter().any(|f| f.contains(&0)));
        drop(w);
        // A crash leaves the tail: the next start cuts it and extends the same chain.
        let mut w = preallocating_writer(dir.path(), 4_000, 1_500);
        write(&mut w, &[record(12)]).expect("write");
        drop(w);
        let mut w = preallocating_writer(dir.path(), 4_000, 1_500);
        assert_eq!(w.next_seq, 14);
        let newest = files(dir.path()).pop().expect("a file");
        assert!(
            !newest.contains(&0),
            "start-up left the crashed tail's zeros"
        );
        write(&mut w, &[record(13)]).expect("write");
        assert_intact(dir.path(), 14);
    }

    /// Once a file has its first zeros, later ones are written after a group has been answered
    /// ([`Writer::extend_ahead`]), half a preallocation before the records reach them, so that
    /// no group writes them on its way to its sync.
    #[test]
    fn zeros_are_written_ahead_of_the_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (max, preallocate) = (20_000, 2_000);
        let mut w = preallocating_writer(dir.path(), max, preallocate);
        let mut extensions = 0;
        for n in 0..60 {
            let before = w.allocated;
            write(&mut w, &[record(n)]).expect("write");
            if w.allocated > before && before > 0 {
                extensions += 1;
            }
            let newest = files(dir.path()).pop().expect("a file");
            assert_eq!(newest.len() as u64, w.allocated, "record {n}");
            assert!(
                w.allocated - w.size >= preallocate / 2 || w.allocated == max,
                "record {n}: {} bytes of zeros ahead of {}",
                w.allocated - w.size,
                w.size
            );
            assert!(newest[records_end(&newest)..].iter().all(|&b| b == 0));
        }
        assert!(extensions > 3, "{extensions} extensions");
        assert_intact(dir.path(), 60);
    }

    /// The writer's group-commit wait ends when the last call under way has handed its record
    /// over, not at the end of `commit_delay_us`.
    #[test]
    fn the_group_wait_ends_when_the_last_call_arrives() {
        let on_the_way = Arc::new(OnTheWay::default());
        on_the_way.started();
        let writer = {
            let on_the_way = on_the_way.clone();
            std::thread::spawn(move || {
                let _ = on_the_way.writer.set(std::thread::current());
                let started = Instant::now();
                on_the_way.wait(Duration::from_secs(60));
                started.elapsed()
            })
        };
        while !on_the_way.waiting.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        on_the_way.arrived();
        let waited = writer.join().expect("the writer thread");
        assert!(waited < Duration::from_secs(30), "waited {waited:?}");
        // Nobody under way: no wait at all.
        let started = Instant::now();
        on_the_way.wait(Duration::from_secs(60));
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    /// After a close (a clean stop), records of calls still running are appended without
    /// new zeros: nothing would cut them any more.
    #[test]
    fn records_after_a_close_are_plain_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = preallocating_writer(dir.path(), 1 << 20, 64 << 10);
        write(&mut w, &[record(0)]).expect("write");
        w.close(None);
        write(&mut w, &[record(1)]).expect("write");
        assert!(!files(dir.path()).iter().any(|f| f.contains(&0)));
        assert_intact(dir.path(), 2);
    }

    #[test]
    fn a_torn_record_in_the_preallocated_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = preallocating_writer(dir.path(), 1 << 20, 64 << 10);
        let batch: Vec<Record> = (0..3).map(record).collect();
        write(&mut w, &batch).expect("write");
        let size = w.size;
        drop(w);
        // A crash mid-write: part of record 4 over the zeros, never acknowledged.
        let path = dir.path().join(file_name(1));
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(b"{\"seq\":4,\"ti", size).expect("write");
        drop(f);
        let b = verify_audit_log(dir.path())
            .expect("verify")
            .broken
            .expect("the torn record is reported");
        assert_eq!(b.line, 4, "{b}");
        let mut w = preallocating_writer(dir.path(), 1 << 20, 64 << 10);
        assert_eq!(w.next_seq, 4);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), size);
        write(&mut w, &[record(9)]).expect("write");
        assert_intact(dir.path(), 4);
    }

    #[test]
    fn a_torn_tail_is_cut_at_start_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = writer(dir.path(), 1 << 20);
        let batch: Vec<Record> = (0..3).map(record).collect();
        write(&mut w, &batch).expect("write");
        drop(w);
        let path = dir.path().join(file_name(1));
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":4,\"ti").expect("write");
        drop(f);
        assert!(
            verify_audit_log(dir.path())
                .expect("verify")
                .broken
                .is_some()
        );
        let mut w = writer(dir.path(), 1 << 20);
        assert_eq!(w.next_seq, 4);
        write(&mut w, &[record(9)]).expect("write");
        assert_intact(dir.path(), 4);
    }
}
