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
//! **Group commit.** One writer thread owns the file. Requests hand it their record and wait;
//! it takes every record queued, writes them, syncs once and answers them all, so concurrent
//! callers share an `fdatasync`. The writer is the one thread every signing call waits for, so
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
use std::sync::Arc;
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
    pub outcome: String,
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
            outcome: &self.outcome,
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

/// The running audit log: a handle to its writer thread.
#[derive(Debug)]
pub struct AuditLog {
    /// Held (locked) for the process's life: two gateways on one directory would fork the chain.
    _lock: File,
    tx: crossbeam_channel::Sender<Pending>,
    on_failure: AuditFailure,
    metrics: Arc<Metrics>,
}

impl AuditLog {
    /// Opens `dir` (creating it), reads back and checks the last record, and starts the writer.
    /// Fails if the tail of the log is damaged: the gateway must not start a second chain.
    pub fn open(
        dir: PathBuf,
        max_file_bytes: u64,
        on_failure: AuditFailure,
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
        let mut writer = Writer {
            dir: dir.clone(),
            max_file_bytes,
            file: None,
            size: 0,
            next_seq: 1,
            prev: GENESIS.to_owned(),
            recovered: false,
        };
        writer.recover().map_err(Error::Audit)?;
        tracing::info!(
            dir = %dir.display(),
            next_seq = writer.next_seq,
            "audit log open; the chain continues from the last record"
        );
        let (tx, rx) = crossbeam_channel::unbounded::<Pending>();
        let thread_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx, thread_metrics))
            .map_err(|e| Error::Audit(format!("cannot start the audit writer: {e}")))?;
        Ok(Arc::new(Self {
            _lock: lock,
            tx,
            on_failure,
            metrics,
        }))
    }

    pub fn on_failure(&self) -> AuditFailure {
        self.on_failure
    }

    /// Appends `record` and returns its sequence number once it is on disk.
    pub async fn append(&self, record: Record) -> Result<u64, Error> {
        let started = Instant::now();
        // Serialised here, on the caller's task, in parallel with other callers: the writer
        // thread that all of them wait for only frames, hashes and writes.
        let body = record.encode_body()?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Pending { body, reply })
            .map_err(|_| Error::Audit("the audit writer has stopped".into()))?;
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
            config.audit.on_failure,
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

    use super::*;

    fn record(n: usize) -> Record {
        Record {
            method: "Sign",
            client: "tests".into(),
            identity: "plaintext".into(),
            operation: "sign-raw",
            outcome: "OK".into(),
            items: vec![Item::new("k", "digest", &n.to_be_bytes())],
            ..Record::default()
        }
    }

    /// Writes `records` as one group, as the writer thread does.
    fn write(w: &mut Writer, records: &[Record]) -> Result<u64, String> {
        let bodies: Vec<Vec<u8>> = records
            .iter()
            .map(|r| r.encode_body().expect("encode"))
            .collect();
        let mut buf = Vec::new();
        w.write_group(bodies.iter().map(Vec::as_slice), &mut buf)
    }

    fn writer(dir: &Path, max: u64) -> Writer {
        let mut w = Writer {
            dir: dir.to_owned(),
            max_file_bytes: max,
            file: None,
            size: 0,
            next_seq: 1,
            prev: GENESIS.into(),
            recovered: false,
        };
        w.recover().expect("recover");
        w
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
        let v = verify_audit_log(dir.path()).expect("verify");
        assert!(v.broken.is_none(), "{:?}", v.broken);
        assert_eq!(v.records, 15);
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
        let v = verify_audit_log(dir.path()).expect("verify");
        assert!(v.broken.is_none(), "{:?}", v.broken);
        assert_eq!(v.records, 4);
    }
}
