//! The commit log: every write is appended here before it is acknowledged,
//! and replayed into a memtable at open.
//!
//! # On-disk format (version [`LOG_FORMAT_VERSION`])
//!
//! A log is a sequence of segment files `log-<id:016>.log`. Each segment
//! starts with a 16-byte header:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic [`LOG_MAGIC`] (LE u32) |
//! | 4..8 | format version (LE u32) |
//! | 8..16 | segment id (LE u64) |
//!
//! followed by records, one per write batch (atomic at recovery):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | payload length `n` (LE u32, > 0) |
//! | 4..8 | crc32c of the payload (LE u32) |
//! | 8..8+n | payload: varint count, then per entry varint key length, key, varint version length, postcard-encoded [`Version`] (format 1: never with an expiry) |
//!
//! Recovery: an incomplete or checksum-failing record that reaches the end
//! of the newest segment (or is followed only by zeros) is a torn tail from
//! a crash mid-append; it is truncated. Any other damage is
//! [`EngineError::Corrupt`] naming the file and offset: skipping it would
//! silently lose acknowledged writes.
//!
//! # Group commit
//!
//! Writers append records to a shared in-memory buffer under a short lock
//! and receive a log sequence number (LSN, bytes appended so far). Before a
//! write is acknowledged it is at least handed to the OS
//! ([`Log::write_to`]): one waiting writer becomes the leader, takes the
//! whole buffer and writes it with one write(2), covering every writer that
//! appended before it; the others find their LSN already written. So a
//! process crash (the OS keeps running) never loses an acknowledged write,
//! under either fsync policy, and concurrent writers share syscalls.
//!
//! With `FsyncPolicy::Always` writers call [`Log::sync_to`] instead, which
//! does the same and then fsyncs once for the group, so N concurrent
//! writers share one fsync; writers that arrive during an fsync sleep on a
//! condition variable and are woken together when it ends. With `FsyncPolicy::Interval` a background
//! thread calls it every interval; a power loss can lose up to about one
//! interval of acknowledged writes.
//!
//! Lock order: `sync_lock`, then `write_lock`, then `inner`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

use super::codec::{Reader, put_varint};
use super::error::{EngineError, is_disk_full};
use crate::fs::{Fs, FsFile};
use crate::model::Version;

/// Format version of log segments written by this build (2: versions may
/// carry an expiry, see [`crate::model::Version`]).
pub const LOG_FORMAT_VERSION: u32 = 2;
/// Oldest log format version still replayed (1: versions without expiries,
/// whose bytes decode as format 2's).
pub const LOG_FORMAT_VERSION_MIN: u32 = 1;
/// Magic number opening every log segment ("ISLG").
pub const LOG_MAGIC: u32 = 0x474c_5349;
/// Size of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 16;
const RECORD_HEADER_BYTES: usize = 8;
/// Lost group ranges remembered (a writer checks its own right after its
/// group; older ones are long answered).
const LOST_RANGES_MAX: usize = 1024;
/// Capacity kept by the append buffers between writes (larger groups
/// reallocate once, then shrink back to this).
const BUFFER_BYTES_KEEP: usize = 1 << 20;

/// File name of segment `id`.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("log-{id:016}.log"))
}

/// Segment id of a path named like [`segment_path`], if it is one.
pub(crate) fn parse_segment_path(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let id = name.strip_prefix("log-")?.strip_suffix(".log")?;
    if id.len() != 16 {
        return None;
    }
    id.parse().ok()
}

/// Encode one write batch as a record payload (without the record header).
pub(crate) fn encode_batch<'a>(
    buf: &mut Vec<u8>,
    entries: impl ExactSizeIterator<Item = (&'a [u8], &'a Version)>,
) {
    put_varint(buf, entries.len() as u64);
    for (key, version) in entries {
        put_varint(buf, key.len() as u64);
        buf.extend_from_slice(key);
        // Reserve room for a length prefix, then patch it: avoids encoding
        // the version twice.
        let len_at = buf.len();
        buf.extend_from_slice(&[0; 5]);
        let start = buf.len();
        match postcard::to_extend(version, std::mem::take(buf)) {
            Ok(b) => *buf = b,
            Err(_) => unreachable!("encoding into a Vec cannot fail"),
        }
        let n = (buf.len() - start) as u64;
        // A fixed 5-byte varint (padded with continuation bits) keeps the
        // patch in place; the decoder accepts padded varints.
        let mut v = n;
        for i in 0..5 {
            let mut b = (v & 0x7f) as u8;
            v >>= 7;
            if i < 4 {
                b |= 0x80;
            }
            buf[len_at + i] = b;
        }
    }
}

/// Encode a batch of one entry; returns where the version's encoding lies
/// in `buf` (the memtable keeps those bytes instead of encoding again).
pub(crate) fn encode_one(buf: &mut Vec<u8>, key: &[u8], version: &Version) -> Range<usize> {
    let at = buf.len();
    encode_batch(buf, std::iter::once((key, version)));
    // Count (1), key length, key, the fixed 5-byte version length, version.
    let start = at + 1 + varint_len(key.len() as u64) + key.len() + 5;
    start..buf.len()
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Frame a record payload with its length and checksum.
pub(crate) fn frame_record(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The segment header for segment `id`.
pub(crate) fn segment_header(id: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..4].copy_from_slice(&LOG_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&LOG_FORMAT_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h
}

/// What decoding a segment found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentScan {
    /// Bytes of the segment that hold complete, valid records.
    pub valid_len: u64,
    /// A torn tail followed `valid_len` and must be truncated.
    pub torn_tail: bool,
    /// Records (batches) decoded.
    pub records: u64,
}

fn decode_payload(payload: &[u8]) -> Result<Vec<(Vec<u8>, Version)>, &'static str> {
    let mut r = Reader::new(payload);
    let count = r.varint()?;
    let mut out = Vec::with_capacity(usize::try_from(count.min(1024)).unwrap_or(0));
    for _ in 0..count {
        let key = r.slice()?.to_vec();
        let v = r.slice()?;
        let version: Version =
            postcard::from_bytes(v).map_err(|_| "undecodable version in log record")?;
        out.push((key, version));
    }
    if !r.is_empty() {
        return Err("trailing bytes in log record");
    }
    Ok(out)
}

/// Decode a whole segment, calling `apply` for each entry of each valid
/// record (a record's entries are delivered only once the whole record
/// checked out, so a batch is all-or-nothing).
///
/// `newest` allows a torn tail; in older segments any damage is corruption.
/// Never panics on any input: this is the fuzz target's entry point.
pub fn decode_segment(
    bytes: &[u8],
    file: &Path,
    newest: bool,
    mut apply: impl FnMut(Vec<u8>, Version),
) -> Result<SegmentScan, EngineError> {
    let torn = |valid_len: usize, records| SegmentScan {
        valid_len: valid_len as u64,
        torn_tail: true,
        records,
    };
    if bytes.len() < SEGMENT_HEADER_BYTES {
        if newest {
            return Ok(torn(0, 0));
        }
        return Err(EngineError::corrupt(file, 0, "truncated segment header"));
    }
    let mut r = Reader::new(bytes);
    let magic = r.u32().map_err(|e| EngineError::corrupt(file, 0, e))?;
    if magic != LOG_MAGIC {
        return Err(EngineError::corrupt(file, 0, "bad log segment magic"));
    }
    let version = r.u32().map_err(|e| EngineError::corrupt(file, 4, e))?;
    if !(LOG_FORMAT_VERSION_MIN..=LOG_FORMAT_VERSION).contains(&version) {
        return Err(EngineError::FormatVersion {
            file: file.to_path_buf(),
            found: version,
            expected: LOG_FORMAT_VERSION,
        });
    }
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut records = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let damaged = |reason: &str| -> Result<SegmentScan, EngineError> {
            if newest && rest.iter().all(|&b| b == 0) {
                return Ok(torn(pos, records));
            }
            Err(EngineError::corrupt(file, pos as u64, reason))
        };
        if rest.len() < RECORD_HEADER_BYTES {
            if newest {
                return Ok(torn(pos, records));
            }
            return damaged("truncated record header");
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 {
            return damaged("zero-length record");
        }
        let end = RECORD_HEADER_BYTES.saturating_add(len);
        if end > rest.len() {
            // The record claims to run past the end: a crash mid-append.
            if newest {
                return Ok(torn(pos, records));
            }
            return damaged("record runs past the end of the segment");
        }
        let payload = &rest[RECORD_HEADER_BYTES..end];
        if crc32c::crc32c(payload) != crc {
            if newest && end == rest.len() {
                // The last record of the newest segment: torn tail.
                return Ok(torn(pos, records));
            }
            return damaged("record checksum mismatch");
        }
        let entries = match decode_payload(payload) {
            Ok(e) => e,
            Err(reason) => return Err(EngineError::corrupt(file, pos as u64, reason)),
        };
        for (k, v) in entries {
            apply(k, v);
        }
        records += 1;
        pos += end;
    }
    Ok(SegmentScan {
        valid_len: pos as u64,
        torn_tail: false,
        records,
    })
}

struct Inner<F: Fs> {
    file: Arc<F::File>,
    path: PathBuf,
    segment: u64,
    /// Records appended but not yet handed to the OS.
    buf: Vec<u8>,
    /// LSN of the last byte appended (to the buffer or the file).
    appended: u64,
}

/// The active commit log writer (see module docs for group commit).
pub(crate) struct Log<F: Fs> {
    fs: F,
    dir: PathBuf,
    inner: Mutex<Inner<F>>,
    /// Serialises fsyncs: the holder is the group-commit leader.
    sync_lock: Mutex<()>,
    /// Writers waiting for a leader's fsync sleep on `sync_done`, woken
    /// all at once when it ends (under this lock, so none misses it).
    sync_waiters: Mutex<()>,
    sync_done: Condvar,
    /// Serialises write(2)s of the buffer: the holder is the leader of a
    /// write group. Holds the spare buffer swapped with `Inner::buf`, so a
    /// group's bytes are written outside the append lock without
    /// allocating.
    write_lock: Mutex<Vec<u8>>,
    /// LSN handed to the OS.
    written: AtomicU64,
    /// Bytes of the current segment file handed to the OS (changed under
    /// `write_lock`): where a group that found the disk full is cut back to.
    file_len: AtomicU64,
    /// LSN ranges `(after, upto]` of groups the disk had no room for: their
    /// writers are told so, even once later groups are written.
    lost: Mutex<Vec<(u64, u64)>>,
    /// Set when a group found the disk full; the engine clears it once a
    /// probe finds room again.
    full: Arc<AtomicBool>,
    /// LSN made durable.
    synced: AtomicU64,
    poisoned: Arc<AtomicBool>,
    bytes_written: AtomicU64,
    syncs: AtomicU64,
}

impl<F: Fs> Log<F> {
    /// Create segment `id` (fresh) and make its name durable.
    pub(crate) fn create(
        fs: F,
        dir: &Path,
        id: u64,
        poisoned: Arc<AtomicBool>,
        full: Arc<AtomicBool>,
    ) -> Result<Self, EngineError> {
        let (file, path) = Self::new_segment(&fs, dir, id)?;
        Ok(Log {
            fs,
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                file: Arc::new(file),
                path,
                segment: id,
                buf: Vec::with_capacity(64 * 1024),
                appended: 0,
            }),
            sync_lock: Mutex::new(()),
            sync_waiters: Mutex::new(()),
            sync_done: Condvar::new(),
            write_lock: Mutex::new(Vec::with_capacity(64 * 1024)),
            written: AtomicU64::new(0),
            file_len: AtomicU64::new(SEGMENT_HEADER_BYTES as u64),
            lost: Mutex::new(Vec::new()),
            full,
            synced: AtomicU64::new(0),
            poisoned,
            bytes_written: AtomicU64::new(SEGMENT_HEADER_BYTES as u64),
            syncs: AtomicU64::new(0),
        })
    }

    fn new_segment(fs: &F, dir: &Path, id: u64) -> Result<(F::File, PathBuf), EngineError> {
        let path = segment_path(dir, id);
        let file = fs.create(&path).map_err(|e| EngineError::io(&path, e))?;
        if let Err(e) = file.append(&segment_header(id)).and_then(|()| file.sync()) {
            // A segment without its header would not open again.
            let _ = fs.remove(&path);
            return Err(EngineError::io(&path, e));
        }
        fs.sync_dir(dir).map_err(|e| EngineError::io(dir, e))?;
        Ok((file, path))
    }

    /// Was the record at `lsn` in a group the disk had no room for?
    fn was_lost(&self, lsn: u64) -> bool {
        self.lost
            .lock()
            .iter()
            .any(|&(after, upto)| lsn > after && lsn <= upto)
    }

    /// Write an empty record and make it durable: `Ok` once the disk takes
    /// writes again (then the full mark is cleared).
    pub(crate) fn probe(&self) -> Result<(), EngineError> {
        let lsn = self.append(&[0])?;
        self.sync_to(lsn)?;
        self.full.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn poison<T>(&self, path: &Path, e: std::io::Error) -> Result<T, EngineError> {
        self.poisoned.store(true, Ordering::SeqCst);
        Err(EngineError::io(path, e))
    }

    fn check(&self) -> Result<(), EngineError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(EngineError::Poisoned);
        }
        Ok(())
    }

    /// Current segment id.
    pub(crate) fn segment(&self) -> u64 {
        self.inner.lock().segment
    }

    /// Append a framed record to the buffer; returns its LSN, to pass to
    /// [`Self::write_to`] or [`Self::sync_to`] before acknowledging.
    pub(crate) fn append(&self, payload: &[u8]) -> Result<u64, EngineError> {
        let mut inner = self.inner.lock();
        self.check()?;
        frame_record(&mut inner.buf, payload);
        inner.appended += (RECORD_HEADER_BYTES + payload.len()) as u64;
        Ok(inner.appended)
    }

    /// Write the buffer to the OS; the caller holds `write_lock` (whose
    /// spare buffer is `spare`). Returns the file and the LSN now written.
    fn write_group(
        &self,
        spare: &mut Vec<u8>,
    ) -> Result<(Arc<F::File>, PathBuf, u64), EngineError> {
        let (file, path, target) = {
            let mut inner = self.inner.lock();
            std::mem::swap(&mut inner.buf, spare);
            (inner.file.clone(), inner.path.clone(), inner.appended)
        };
        if !spare.is_empty() {
            if let Err(e) = file.append(spare) {
                // No room: cut the segment back to its last whole group, so
                // the records after it are not hidden behind a torn one,
                // and fail this group's writers. Anything else (or a cut
                // that fails) leaves the file in doubt: poison.
                let good = self.file_len.load(Ordering::Acquire);
                if is_disk_full(&e) && file.truncate(good).is_ok() {
                    let after = self.written.load(Ordering::Acquire);
                    let mut lost = self.lost.lock();
                    if lost.len() >= LOST_RANGES_MAX {
                        lost.remove(0);
                    }
                    lost.push((after, target));
                    drop(lost);
                    self.written.store(target, Ordering::Release);
                    spare.clear();
                    self.full.store(true, Ordering::SeqCst);
                    return Err(EngineError::DiskFull { path });
                }
                return self.poison(&path, e);
            }
            self.file_len
                .fetch_add(spare.len() as u64, Ordering::AcqRel);
            self.bytes_written
                .fetch_add(spare.len() as u64, Ordering::Relaxed);
            spare.clear();
            spare.shrink_to(BUFFER_BYTES_KEEP);
        }
        self.written.store(target, Ordering::Release);
        Ok((file, path, target))
    }

    /// Hand everything up to `lsn` to the OS (group commit, module docs):
    /// it then survives a crash of this process, not of the machine.
    pub(crate) fn write_to(&self, lsn: u64) -> Result<(), EngineError> {
        if self.written.load(Ordering::Acquire) < lsn {
            let mut spare = self.write_lock.lock();
            if self.written.load(Ordering::Acquire) < lsn {
                self.check()?;
                self.write_group(&mut spare)?;
            }
        }
        self.check_kept(lsn)
    }

    /// `Err` when the record at `lsn` was in a group the disk had no room
    /// for.
    fn check_kept(&self, lsn: u64) -> Result<(), EngineError> {
        if self.was_lost(lsn) {
            return Err(EngineError::DiskFull {
                path: self.inner.lock().path.clone(),
            });
        }
        Ok(())
    }

    /// LSN of everything appended so far.
    pub(crate) fn appended(&self) -> u64 {
        self.inner.lock().appended
    }

    /// Make everything up to `lsn` durable (group commit, module docs).
    ///
    /// A writer that finds an fsync under way sleeps until it ends, then
    /// returns if that fsync covered its record; the first writer not
    /// covered leads the next one, for everything appended meanwhile.
    /// Waiters are woken together: handing the leader's lock from one to
    /// the next instead would put a wake-up and a context switch in line
    /// for every writer of a group, costing more than a fast disk's fsync.
    pub(crate) fn sync_to(&self, lsn: u64) -> Result<(), EngineError> {
        loop {
            if self.synced.load(Ordering::Acquire) >= lsn {
                return self.check_kept(lsn);
            }
            let Some(lock) = self.sync_lock.try_lock() else {
                let mut waiting = self.sync_waiters.lock();
                // Checked under the waiters' lock, which the leader takes
                // to wake them: it cannot end between this check and the
                // wait unseen. (The timeout covers a rotation, which holds
                // the leader's lock and wakes no one.)
                if self.synced.load(Ordering::Acquire) < lsn && self.sync_lock.is_locked() {
                    self.sync_done
                        .wait_for(&mut waiting, std::time::Duration::from_millis(5));
                }
                continue;
            };
            // However this leader ends, the waiters wake once its lock is
            // free.
            let _leader = Leading {
                log: self,
                lock: Some(lock),
            };
            if self.synced.load(Ordering::Acquire) >= lsn {
                return self.check_kept(lsn);
            }
            self.check()?;
            let (file, path, target) = {
                let mut spare = self.write_lock.lock();
                self.write_group(&mut spare)?
            };
            // fsync outside the write lock so the next group can be written.
            if let Err(e) = file.sync() {
                return self.poison(&path, e);
            }
            self.syncs.fetch_add(1, Ordering::Relaxed);
            self.synced.store(target, Ordering::Release);
            return self.check_kept(lsn);
        }
    }

    /// Seal the current segment (write, fsync) and start segment `id`.
    /// (Writers waiting for an fsync meanwhile look again within their
    /// wait's timeout.)
    /// The caller holds the engine's write gate, so no append races this.
    pub(crate) fn rotate(&self, id: u64) -> Result<(), EngineError> {
        let _leader = self.sync_lock.lock();
        self.check()?;
        let mut spare = self.write_lock.lock();
        let (file, path, target) = self.write_group(&mut spare)?;
        if let Err(e) = file.sync() {
            return self.poison(&path, e);
        }
        self.synced.store(target, Ordering::Release);
        let (file, path) = match Self::new_segment(&self.fs, &self.dir, id) {
            Ok(x) => x,
            // No room for a new segment: the current one stays (it is
            // whole and synced), and writes are refused until there is.
            Err(e) if e.is_disk_full() => {
                self.full.store(true, Ordering::SeqCst);
                return Err(e);
            }
            Err(e) => {
                self.poisoned.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        self.file_len
            .store(SEGMENT_HEADER_BYTES as u64, Ordering::Release);
        self.bytes_written
            .fetch_add(SEGMENT_HEADER_BYTES as u64, Ordering::Relaxed);
        let mut inner = self.inner.lock();
        inner.file = Arc::new(file);
        inner.path = path;
        inner.segment = id;
        Ok(())
    }

    /// Bytes written to log files.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// fsyncs issued for commits.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

/// The group-commit leader's hold on `sync_lock`: dropped, it frees the
/// lock, then wakes every writer waiting in [`Log::sync_to`].
struct Leading<'a, F: Fs> {
    log: &'a Log<F>,
    lock: Option<parking_lot::MutexGuard<'a, ()>>,
}

impl<F: Fs> Drop for Leading<'_, F> {
    fn drop(&mut self) {
        drop(self.lock.take());
        let _waiting = self.log.sync_waiters.lock();
        self.log.sync_done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Clock, Dot};

    fn v(n: u64) -> Version {
        let mut c = Clock::new();
        c.add_dot(Dot {
            actor: Actor(1),
            counter: n,
        });
        Version::value(c, vec![n as u8; 3], n, "dc1".into())
    }

    fn segment_with(records: &[Vec<(Vec<u8>, Version)>]) -> Vec<u8> {
        let mut out = segment_header(7).to_vec();
        for rec in records {
            let mut p = Vec::new();
            encode_batch(&mut p, rec.iter().map(|(k, v)| (k.as_slice(), v)));
            frame_record(&mut out, &p);
        }
        out
    }

    #[test]
    fn encode_one_points_at_the_version_encoding() {
        for key_len in [0usize, 1, 127, 128, 300] {
            let key = vec![b'k'; key_len];
            let mut buf = vec![9u8; 3];
            let at = encode_one(&mut buf, &key, &v(5));
            assert_eq!(&buf[at], v(5).encode().as_slice());
        }
    }

    #[test]
    fn records_round_trip() {
        let recs = vec![
            vec![(b"a".to_vec(), v(1)), (b"b".to_vec(), v(2))],
            vec![(b"c".to_vec(), v(3))],
        ];
        let bytes = segment_with(&recs);
        let mut got = Vec::new();
        let scan = decode_segment(&bytes, Path::new("s"), false, |k, v| got.push((k, v))).unwrap();
        assert_eq!(scan.records, 2);
        assert!(!scan.torn_tail);
        assert_eq!(got, recs.concat());
    }

    #[test]
    fn torn_tail_is_cut_but_middle_damage_is_an_error() {
        let recs = vec![vec![(b"a".to_vec(), v(1))], vec![(b"b".to_vec(), v(2))]];
        let bytes = segment_with(&recs);
        for cut in SEGMENT_HEADER_BYTES + 1..bytes.len() {
            let mut n = 0;
            let scan = decode_segment(&bytes[..cut], Path::new("s"), true, |_, _| n += 1).unwrap();
            assert!(scan.torn_tail || scan.valid_len == cut as u64);
            assert!(n <= 1);
        }
        // Flip a payload byte of the first record: it is not the tail.
        let mut bad = bytes.clone();
        bad[SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 1] ^= 0x40;
        let err = decode_segment(&bad, Path::new("s"), true, |_, _| {}).unwrap_err();
        assert!(
            matches!(err, EngineError::Corrupt { offset, .. } if offset == SEGMENT_HEADER_BYTES as u64),
            "{err}"
        );
        // The same damage in the last record is a torn tail.
        let mut tail = bytes.clone();
        let last = tail.len() - 1;
        tail[last] ^= 0x40;
        let scan = decode_segment(&tail, Path::new("s"), true, |_, _| {}).unwrap();
        assert!(scan.torn_tail);
        assert_eq!(scan.records, 1);
        // In an older segment it is corruption.
        assert!(decode_segment(&tail, Path::new("s"), false, |_, _| {}).is_err());
    }
}
