//! The audit writer thread: it owns the current file and the chain's head, takes every record
//! queued, frames and hashes each (sequential by nature: each hash covers the previous one),
//! writes them, syncs once and answers them all (group commit; see the parent module). It also
//! keeps the current file preallocated (zeros ahead of the records) and cuts that tail off when
//! the file is finished.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{
    GENESIS, GROUP_MAX, GroupWait, Pending, ToWriter, check_line, file_name, list_files,
    now_rfc3339, records_end,
};
use crate::metrics::Metrics;

/// How fast records reach the writer: an exponentially weighted mean of records per second,
/// updated once per group (records taken ÷ time since the previous group was taken).
#[derive(Default)]
struct ArrivalRate {
    last: Option<Instant>,
    per_second: f64,
}

impl ArrivalRate {
    /// Weight of the newest group in the mean.
    const WEIGHT: f64 = 0.25;

    fn group_started(&mut self, records: usize, now: Instant) {
        if let Some(last) = self.last {
            let secs = now.duration_since(last).as_secs_f64().max(1e-6);
            let rate = records as f64 / secs;
            self.per_second += Self::WEIGHT * (rate - self.per_second);
        }
        self.last = Some(now);
    }

    /// Records expected to arrive within `wait`, `waiting` records having arrived since the
    /// previous group was taken: at the mean rate, or at the rate of that interval if it is
    /// lower (so that after a burst a quiet spell is seen at once, not after a few groups).
    fn expected_within(&self, wait: Duration, waiting: usize, now: Instant) -> f64 {
        let since_last = self
            .last
            .map(|last| now.saturating_duration_since(last).as_secs_f64().max(1e-6));
        let rate = match since_last {
            Some(secs) => self.per_second.min(waiting as f64 / secs),
            None => 0.0,
        };
        rate * wait.as_secs_f64()
    }
}

/// The writer thread's state: the current file and the chain's head.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) max_file_bytes: u64,
    /// Zeros written ahead of the records at a time; 0: plain appends.
    preallocate_bytes: u64,
    pub(super) file: Option<File>,
    /// Bytes of records in the current file: where the next one goes.
    pub(super) size: u64,
    /// Length of the current file: `size` plus the zeros ahead of it.
    pub(super) allocated: u64,
    pub(super) next_seq: u64,
    pub(super) prev: String,
    /// False after a failed write: the tail is read back before the next one.
    pub(super) recovered: bool,
}

impl Writer {
    pub(super) fn new(dir: PathBuf, max_file_bytes: u64, preallocate_bytes: u64) -> Self {
        Self {
            dir,
            max_file_bytes,
            preallocate_bytes,
            file: None,
            size: 0,
            allocated: 0,
            next_seq: 1,
            prev: GENESIS.to_owned(),
            recovered: false,
        }
    }

    pub(super) fn run(
        mut self,
        rx: crossbeam_channel::Receiver<ToWriter>,
        wait: GroupWait,
        metrics: Arc<Metrics>,
    ) {
        raise_priority();
        // Before any record can arrive: the last call on its way wakes this thread.
        let _ = wait.on_the_way.writer.set(std::thread::current());
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut group: Vec<Pending> = Vec::with_capacity(GROUP_MAX);
        let mut arrivals = ArrivalRate::default();
        // A close asked for while a group was being taken: answered after that group.
        let mut closing: Option<tokio::sync::oneshot::Sender<()>> = None;
        while let Ok(first) = rx.recv() {
            match first {
                ToWriter::Record(p) => group.push(p),
                ToWriter::Close(done) => {
                    self.close(Some(done));
                    continue;
                }
            }
            // Other calls under way, and records arriving fast enough that at least two more
            // are expected within `commit_delay`: give them that long to join this sync. One
            // sleep, not a wake-up per arriving record (each would cost a context switch),
            // cut short when the last call under way hands its record over. At a low rate the
            // wait would only add latency (a caller with a few large batches in flight waits
            // for its record while its HSM sessions idle), so it is skipped.
            if !wait.delay.is_zero()
                && wait.on_the_way.any()
                && rx.len() < GROUP_MAX
                && arrivals.expected_within(wait.delay, 1 + rx.len(), Instant::now()) >= 2.0
            {
                wait.on_the_way.wait(wait.delay);
            }
            while group.len() < GROUP_MAX && closing.is_none() {
                match rx.try_recv() {
                    Ok(ToWriter::Record(p)) => group.push(p),
                    Ok(ToWriter::Close(done)) => closing = Some(done),
                    Err(_) => break,
                }
            }
            arrivals.group_started(group.len(), Instant::now());
            let result = self.write_group(group.iter().map(|p| p.body.as_slice()), &mut buf);
            match result {
                Ok(first_seq) => {
                    metrics.audit_group();
                    for (i, p) in group.drain(..).enumerate() {
                        let _ = p.reply.send(Ok(first_seq + i as u64));
                    }
                    if closing.is_none()
                        && let Err(e) = self.extend_ahead()
                    {
                        // Nobody waits for this: the next group re-reads the tail first (cutting
                        // whatever zeros this left) and fails closed if the disk still refuses.
                        tracing::warn!(dir = %self.dir.display(), "audit log: {e}");
                        self.file = None;
                        self.recovered = false;
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
            if let Some(done) = closing.take() {
                self.close(Some(done));
            }
        }
        self.close(None);
    }

    /// Cuts the current file's preallocated tail, leaving its records only, and answers `done`.
    /// A failure is logged: the tail stays, and start-up or `audit verify` read up to its first
    /// NUL anyway.
    pub(super) fn close(&mut self, done: Option<tokio::sync::oneshot::Sender<()>>) {
        if let Err(e) = self.finish_file() {
            tracing::warn!(dir = %self.dir.display(), "audit log: {e}");
        }
        // Records of calls still running after the close (a drain that timed out) are plain
        // appends: no new zeros that nothing would cut.
        self.preallocate_bytes = 0;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Cuts the current file to its records and syncs it (before it is left for the next one,
    /// or at shutdown).
    pub(super) fn finish_file(&mut self) -> Result<(), String> {
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        if self.allocated > self.size {
            file.set_len(self.size)
                .and_then(|()| file.sync_data())
                .map_err(|e| {
                    format!(
                        "cutting the preallocated tail in {}: {e}",
                        self.dir.display()
                    )
                })?;
            self.allocated = self.size;
        }
        Ok(())
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

    /// Writes `buf` after the records and syncs. When it does not fit in the zeros ahead, more
    /// are written first (at least `preallocate_bytes`, never past `max_file_bytes` unless
    /// the records need it); their size change is then synced with these records, once per
    /// preallocation instead of once per sync.
    pub(super) fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        if buf.is_empty() {
            return Ok(());
        }
        let file = self.file.as_ref().ok_or("no audit file open")?;
        let end = self.size + buf.len() as u64;
        let io = |e: std::io::Error| format!("writing {}: {e}", self.dir.display());
        if self.preallocate_bytes > 0 && end > self.allocated {
            let target =
                end.max((self.allocated + self.preallocate_bytes).min(self.max_file_bytes));
            write_zeros(file, end, target).map_err(io)?;
            self.allocated = target;
        }
        file.write_all_at(buf, self.size)
            .and_then(|()| file.sync_data())
            .map_err(io)?;
        self.size = end;
        self.allocated = self.allocated.max(end);
        buf.clear();
        Ok(())
    }

    /// Keeps at least half a preallocation of zeros ahead of the records: when less is left,
    /// writes the next `preallocate_bytes` (never past `max_file_bytes`) and starts their
    /// write-back. Called once a group has been answered, so that no caller waits for the
    /// zeros: written on the group path ([`Self::flush`], which still does it when the records
    /// outrun what is ahead, and for a new file), 4 MiB of them and their sync held that
    /// group's calls for 6–12 ms on this machine's disk. The next group's `fdatasync` makes the
    /// new size durable, once per preallocation as before; the zeros' own write-back has
    /// been under way since.
    pub(super) fn extend_ahead(&mut self) -> Result<(), String> {
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        if self.preallocate_bytes == 0
            || self.allocated >= self.max_file_bytes
            || self.allocated - self.size >= self.preallocate_bytes / 2
        {
            return Ok(());
        }
        let target = (self.allocated + self.preallocate_bytes).min(self.max_file_bytes);
        write_zeros(file, self.allocated, target)
            .map_err(|e| format!("preallocating in {}: {e}", self.dir.display()))?;
        start_write_back(file, self.allocated, target - self.allocated);
        self.allocated = target;
        Ok(())
    }

    /// Starts `audit-<seq>.jsonl` and syncs the directory so that the new name is durable.
    pub(super) fn rotate(&mut self, seq: u64) -> Result<(), String> {
        self.finish_file()?;
        let path = self.dir.join(file_name(seq));
        // Not `append`: records overwrite the zeros ahead of them, at `size`.
        let file = OpenOptions::new()
            .write(true)
            .truncate(false)
            .create(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", self.dir.display()))?;
        // A new file is empty; one left by a failed rotation may hold zeros only.
        self.size = 0;
        self.allocated = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        self.file = Some(file);
        Ok(())
    }

    /// Finds the chain's head from the newest file: its last record, checked. The records end
    /// at the first NUL (the preallocated tail); a last line without its newline was never
    /// acknowledged. Both are cut off; an empty newest file is removed.
    pub(super) fn recover(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let mut files = list_files(&self.dir)?;
        self.file = None;
        self.size = 0;
        self.allocated = 0;
        while let Some((first_seq, path)) = files.pop() {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            let mut text = Vec::new();
            f.read_to_end(&mut text)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let records = records_end(&text);
            let keep = if records > 0 && text[records - 1] != b'\n' {
                let keep = text[..records]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                tracing::warn!(
                    file = %path.display(),
                    bytes = records - keep,
                    "audit log: cutting off a torn last record (a crash during its write; it was never acknowledged)"
                );
                keep
            } else {
                records
            };
            if keep < text.len() {
                f.set_len(keep as u64)
                    .and_then(|()| f.sync_data())
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
            self.allocated = self.size;
            self.file = Some(f);
            break;
        }
        self.recovered = true;
        Ok(())
    }
}

/// Writes zeros over `from..to` of `file`, in 64 KiB writes.
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Starts writing `len` bytes of `file` from `offset` back to the disk, without waiting
/// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`): it makes nothing durable, it only means
/// that a later `fdatasync` finds those pages written or on their way. A failure is ignored:
/// the `fdatasync` writes them anyway.
fn start_write_back(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    #[allow(
        unsafe_code,
        reason = "sync_file_range on a descriptor this thread owns: integers only, no memory"
    )]
    // SAFETY: the descriptor is open for the duration of the call (borrowed from `file`); the
    // call takes plain integers and touches no memory of this process.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::ArrivalRate;

    #[test]
    fn the_wait_follows_the_arrival_rate() {
        let wait = Duration::from_micros(500);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // No group yet: no estimate, no wait.
        let mut rate = ArrivalRate::default();
        assert_eq!(rate.expected_within(wait, 5, at(0)), 0.0);
        // A group of 10 taken 1 ms after the previous one moves the mean a quarter of the way
        // to 10,000/s.
        rate.group_started(0, at(0));
        rate.group_started(10, at(1));
        assert!(
            (rate.per_second - 2_500.0).abs() < 1e-6,
            "{}",
            rate.per_second
        );
        // A mean of 10,000/s with 10 records queued within the last millisecond: five
        // expected within 500 µs.
        rate.per_second = 10_000.0;
        let busy = rate.expected_within(wait, 10, at(2));
        assert!((busy - 5.0).abs() < 1e-6, "{busy}");
        // The same mean, but one record in the last 100 ms: a quiet spell, no wait.
        let quiet = rate.expected_within(wait, 1, at(101));
        assert!((quiet - 0.005).abs() < 1e-9, "{quiet}");
    }
}
