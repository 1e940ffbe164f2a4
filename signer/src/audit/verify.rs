//! `signer audit verify DIR`: reads an audit directory back and checks every record's hash and
//! the chain across files, naming the first break. The newest file's records end at its first
//! NUL (the writer's preallocated tail). It shares only the file format with the
//! writer (`list_files`, `check_line`, [`GENESIS`]).

use std::path::{Path, PathBuf};

use super::{GENESIS, check_line, list_files, records_end};
use crate::error::Error;

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: usize,
    /// The record's `seq`, when it could be read.
    pub seq: Option<u64>,
    pub reason: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (record seq {seq})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What `audit verify` found.
#[derive(Debug, Default)]
pub struct AuditVerification {
    pub files: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The newest record's hash: compare with an outside copy to detect truncation.
    pub last_hash: Option<String>,
    /// The first break, if any; nothing after it is checked.
    pub broken: Option<ChainBreak>,
}

/// Checks every file of `dir` in order: each record's hash, `seq` one more than the previous,
/// `prev` equal to the previous record's hash (across files), each file named after its first
/// record, record 1 chained to the genesis value.
pub fn verify_audit_log(dir: &Path) -> Result<AuditVerification, Error> {
    let files = list_files(dir).map_err(Error::Audit)?;
    let mut v = AuditVerification {
        files: files.len(),
        ..AuditVerification::default()
    };
    let mut expected: Option<(u64, String)> = None;
    let newest = files.len();
    for (n, (first_seq, path)) in files.into_iter().enumerate() {
        let mut text = std::fs::read(&path)
            .map_err(|e| Error::Audit(format!("reading {}: {e}", path.display())))?;
        // The file being written ends in its preallocated zeros; any other file with a NUL
        // fails the line checks below.
        if n + 1 == newest {
            text.truncate(records_end(&text));
        }
        let broken = |line: usize, seq: Option<u64>, reason: String| ChainBreak {
            file: path.clone(),
            line,
            seq,
            reason,
        };
        if !text.is_empty() && !text.ends_with(b"\n") {
            let n = text.iter().filter(|&&b| b == b'\n').count() + 1;
            v.broken = Some(broken(
                n,
                None,
                "the last record is torn (no newline)".into(),
            ));
            return Ok(v);
        }
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            if raw.is_empty() {
                continue;
            }
            let Ok(line) = std::str::from_utf8(raw) else {
                v.broken = Some(broken(i + 1, None, "not UTF-8".into()));
                return Ok(v);
            };
            let (seq, prev, hash) = match check_line(line) {
                Ok(r) => r,
                Err(reason) => {
                    let seq = serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64));
                    v.broken = Some(broken(i + 1, seq, reason));
                    return Ok(v);
                }
            };
            let problem = match &expected {
                None if seq == 1 && prev != GENESIS => {
                    Some("record 1 does not start from the genesis value".to_owned())
                }
                None => None,
                Some((want, _)) if seq != *want => Some(format!(
                    "seq {seq} follows {}: records are missing, repeated or out of order",
                    want - 1
                )),
                Some((_, want_prev)) if prev != *want_prev => Some(format!(
                    "`prev` is not the hash of record {}: a record before it was removed or replaced",
                    seq - 1
                )),
                Some(_) => None,
            };
            if let Some(reason) = problem {
                v.broken = Some(broken(i + 1, Some(seq), reason));
                return Ok(v);
            }
            if i == 0 && seq != first_seq {
                v.broken = Some(broken(
                    1,
                    Some(seq),
                    format!("the file is named for record {first_seq} but starts with {seq}"),
                ));
                return Ok(v);
            }
            v.first_seq.get_or_insert(seq);
            v.last_seq = Some(seq);
            v.records += 1;
            expected = Some((seq + 1, hash.clone()));
            v.last_hash = Some(hash);
        }
    }
    Ok(v)
}
