//! The audit writer thread: it owns the current file and the chain's head, takes every record
//! queued, frames and hashes each (sequential by nature: each hash covers the previous one),
//! writes them, syncs once and answers them all (group commit; see the parent module).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{GROUP_MAX, Pending, check_line, file_name, list_files, now_rfc3339};
use crate::metrics::Metrics;

/// The writer thread's state: the current file and the chain's head.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) max_file_bytes: u64,
    pub(super) file: Option<File>,
    pub(super) size: u64,
    pub(super) next_seq: u64,
    pub(super) prev: String,
    /// False after a failed write: the tail is read back before the next one.
    pub(super) recovered: bool,
}

impl Writer {
    pub(super) fn run(mut self, rx: crossbeam_channel::Receiver<Pending>, metrics: Arc<Metrics>) {
        raise_priority();
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut group: Vec<Pending> = Vec::with_capacity(GROUP_MAX);
        while let Ok(first) = rx.recv() {
            group.push(first);
            while group.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
            let result = self.write_group(group.iter().map(|p| p.body.as_slice()), &mut buf);
            match result {
                Ok(first_seq) => {
                    for (i, p) in group.drain(..).enumerate() {
                        let _ = p.reply.send(Ok(first_seq + i as u64));
                    }
                }
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), "audit log write failed: {e}");
                    metrics.audit_failure();
                    self.file = None;
                    self.recovered = false;
                    buf.clear();
                    for p in group.drain(..) {
                        let _ = p.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Writes the records (bodies from [`super::Record::encode_body`]) and syncs; the chain head moves
    /// only if everything reached the disk. `buf` is scratch space, left empty.
    pub(super) fn write_group<'a>(
        &mut self,
        bodies: impl Iterator<Item = &'a [u8]>,
        buf: &mut Vec<u8>,
    ) -> Result<u64, String> {
        if !self.recovered {
            self.recover()?;
        }
        buf.clear();
        let first_seq = self.next_seq;
        let mut seq = self.next_seq;
        let mut prev = [0u8; 64];
        prev.copy_from_slice(self.prev.as_bytes().get(..64).ok_or("bad chain head")?);
        let time = now_rfc3339();
        for body in bodies {
            let start = buf.len();
            // The line without its hash: `{"seq":…,"time":…,<body>,"prev":"…"}`.
            let _ = write!(buf, "{{\"seq\":{seq},\"time\":\"{time}\",");
            buf.extend_from_slice(body);
            buf.extend_from_slice(b",\"prev\":\"");
            buf.extend_from_slice(&prev);
            buf.extend_from_slice(b"\"}");
            let mut hash = [0u8; 64];
            let digest = Sha256::digest(&buf[start..]);
            hex::encode_to_slice(digest, &mut hash).map_err(|e| format!("hex: {e}"))?;
            // …then the closing brace gives way to `,"hash":"…"}`.
            buf.pop();
            buf.extend_from_slice(b",\"hash\":\"");
            buf.extend_from_slice(&hash);
            buf.extend_from_slice(b"\"}\n");
            let len = (buf.len() - start) as u64;
            let pending = self.size + start as u64;
            if self.file.is_none() || (pending > 0 && pending + len > self.max_file_bytes) {
                // This line starts the next file: write what precedes it, then rotate.
                let line = buf.split_off(start);
                self.flush(buf)?;
                self.rotate(seq)?;
                *buf = line;
            }
            prev = hash;
            seq += 1;
        }
        self.flush(buf)?;
        self.next_seq = seq;
        self.prev = String::from_utf8_lossy(&prev).into_owned();
        Ok(first_seq)
    }

    pub(super) fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        if buf.is_empty() {
            return Ok(());
        }
        let file = self.file.as_mut().ok_or("no audit file open")?;
        file.write_all(buf)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("writing {}: {e}", self.dir.display()))?;
        self.size += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Starts `audit-<seq>.jsonl` and syncs the directory so that the new name is durable.
    pub(super) fn rotate(&mut self, seq: u64) -> Result<(), String> {
        let path = self.dir.join(file_name(seq));
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", self.dir.display()))?;
        self.size = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        self.file = Some(file);
        Ok(())
    }

    /// Finds the chain's head from the newest file: its last record, checked. A last line
    /// without its newline was never acknowledged and is cut off; an empty newest file is
    /// removed.
    pub(super) fn recover(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let mut files = list_files(&self.dir)?;
        self.file = None;
        self.size = 0;
        while let Some((first_seq, path)) = files.pop() {
            let mut f = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            let mut text = Vec::new();
            f.read_to_end(&mut text)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            if !text.is_empty() && !text.ends_with(b"\n") {
                let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                tracing::warn!(
                    file = %path.display(),
                    bytes = text.len() - keep,
                    "audit log: cutting off a torn last record (a crash during its write; it was never acknowledged)"
                );
                f.set_len(keep as u64)
                    .and_then(|()| f.seek(SeekFrom::End(0)).map(|_| ()))
                    .map_err(|e| format!("truncating {}: {e}", path.display()))?;
                text.truncate(keep);
            }
            let Some(last) = text.split(|&b| b == b'\n').rev().find(|l| !l.is_empty()) else {
                std::fs::remove_file(&path)
                    .map_err(|e| format!("removing empty {}: {e}", path.display()))?;
                continue;
            };
            let line = std::str::from_utf8(last)
                .map_err(|_| format!("{}: the last record is not UTF-8", path.display()))?;
            let (seq, _, hash) = check_line(line).map_err(|reason| {
                format!(
                    "{}: the last record is damaged ({reason}); run `signer audit verify {}`",
                    path.display(),
                    self.dir.display()
                )
            })?;
            if seq < first_seq {
                return Err(format!(
                    "{}: last record has seq {seq}, before the file's first ({first_seq})",
                    path.display()
                ));
            }
            self.next_seq = seq + 1;
            self.prev = hash;
            self.size = text.len() as u64;
            self.file = Some(f);
            break;
        }
        self.recovered = true;
        Ok(())
    }
}

/// Asks the scheduler to run the audit writer ahead of ordinary threads (nice −10): every
/// signing call waits for it, and on a machine whose cores are busy signing (SoftHSM2, or
/// hsm-sim's stand-ins at high rates) it otherwise waits for a core more than it works
/// (bench/RESULTS.md: ~0.3 ms of run-queue wait against ~50 µs of CPU per record). Without
/// the privilege (not root, no `CAP_SYS_NICE`) it keeps the default priority and says so once.
pub(super) fn raise_priority() {
    const NICE: libc::c_int = -10;
    #[allow(
        unsafe_code,
        reason = "gettid and setpriority on this thread only: no pointers, no shared state"
    )]
    // SAFETY: both calls take plain integers and touch only the calling thread's priority.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
    };
    if rc == 0 {
        tracing::debug!(nice = NICE, "audit writer runs at a raised priority");
    } else {
        tracing::info!(
            "audit writer keeps the default priority ({}); give the gateway CAP_SYS_NICE for \
             shorter audit waits on a busy machine",
            std::io::Error::last_os_error()
        );
    }
}
