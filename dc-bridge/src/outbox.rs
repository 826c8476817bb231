//! The durable outbox: every write this node coordinated, in order, until
//! every remote datacenter has acknowledged it.
//!
//! On disk, `DIR/seg-<first seq>.log` segment files of records:
//!
//! ```text
//! [payload length: u32 LE][crc32c of payload: u32 LE][payload: postcard(Record)]
//! ```
//!
//! and one cursor file per remote datacenter, `DIR/cursor-<dc>`, holding
//! the first sequence number that DC has not acknowledged, whether a
//! full-sync is owed, and how many times the bound was exceeded.
//!
//! Appends follow the node's fsync policy: with `always` concurrent
//! appenders share one `fdatasync` (the first to arrive syncs everything
//! written so far; the others find their record already covered); with
//! `interval` every record is written to the OS before the append returns
//! (a killed process loses nothing) and a worker syncs on the interval.
//! Recovery reads every segment, stops the last one at a torn tail and
//! truncates it there; damage before a segment's end loses the rest of
//! that segment, so every DC is then owed a full-sync.
//!
//! The outbox is bounded: when its segments exceed `bytes_max`, the DC
//! furthest behind is cut loose: its cursor jumps to the head, a
//! full-sync is owed to it (Merkle repair brings it what it missed), and
//! the segments nobody needs are deleted. Local writes never wait for a
//! remote DC.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use isthmus_core::model::{DcName, Version};
use isthmus_core::store::StoreError;
use parking_lot::Mutex;

use crate::batch::Record;

/// Largest record accepted when reading (a larger claimed length is the
/// torn tail of a crash, or damage).
const RECORD_BYTES_MAX: usize = 8 << 20;

/// Bounds and durability of an outbox.
#[derive(Clone, Debug)]
pub struct OutboxConfig {
    /// Bytes of segments kept before the furthest-behind DC is cut loose.
    pub bytes_max: u64,
    /// A segment is sealed past this size.
    pub segment_bytes: u64,
    /// Sync every append before it returns (`always`), or leave syncing to
    /// [`Outbox::sync`] on an interval.
    pub sync_each_append: bool,
    /// Recent records kept decoded in memory, so a shipper that keeps up
    /// never reads the disk.
    pub tail_cache_bytes: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            bytes_max: 1 << 30,
            segment_bytes: 8 << 20,
            sync_each_append: true,
            tail_cache_bytes: 32 << 20,
        }
    }
}

/// A remote DC's position in the outbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// First sequence number not yet acknowledged.
    pub next: u64,
    /// Records were skipped for this DC: a full-sync is owed.
    pub full_sync_pending: bool,
    /// Times the bound cut this DC loose.
    pub overflows: u64,
}

struct Segment {
    path: PathBuf,
    bytes: u64,
    /// Sequence number after its last record.
    end: u64,
}

struct Inner {
    next_seq: u64,
    /// Segments by first sequence number; the last one takes appends.
    segments: BTreeMap<u64, Segment>,
    current: Option<Arc<File>>,
    total_bytes: u64,
    cache: VecDeque<(Arc<Record>, usize)>,
    cache_bytes: usize,
    cursors: BTreeMap<DcName, Cursor>,
}

/// One node's outbox.
pub struct Outbox {
    dir: PathBuf,
    config: OutboxConfig,
    inner: Mutex<Inner>,
    /// Every record below this is durable.
    synced: AtomicU64,
    sync_lock: Mutex<()>,
    /// Wakes shippers when records arrive.
    pub(crate) arrived: tokio::sync::Notify,
    /// A sealed segment decoded for a shipper catching up from disk.
    sealed_cache: Mutex<Option<SealedSegment>>,
}

/// A decoded sealed segment: its first record number and its records.
type SealedSegment = (u64, Arc<Vec<Arc<Record>>>);

fn failed(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed {
        reason: format!("outbox {}: {e}", path.display()),
    }
}

fn segment_name(first: u64) -> String {
    format!("seg-{first:020}.log")
}

fn cursor_path(dir: &Path, dc: &DcName) -> PathBuf {
    let safe: String =
        dc.0.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
    dir.join(format!("cursor-{safe}"))
}

/// Decode the records of a segment; returns them and the length of the
/// readable prefix (less than `bytes.len()` at a torn or damaged record).
fn decode_segment(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        if len > RECORD_BYTES_MAX || bytes.len() - at - 8 < len {
            break;
        }
        let payload = &bytes[at + 8..at + 8 + len];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        match isthmus_client::wire::decode::<Record>(payload) {
            Ok(r) => records.push(r),
            Err(_) => break,
        }
        at += 8 + len;
    }
    (records, at)
}

fn frame(record: &Record) -> Vec<u8> {
    let payload = isthmus_client::wire::encode(record);
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Outbox {
    /// Open (creating) the outbox in `dir`, recovering segments and cursors.
    pub fn open(dir: &Path, config: OutboxConfig) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| failed(dir, e))?;
        let mut firsts = Vec::new();
        let mut cursors = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(|e| failed(dir, e))? {
            let entry = entry.map_err(|e| failed(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(first) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(first);
            } else if let Some(dc) = name.strip_prefix("cursor-")
                && !name.ends_with(".tmp")
            {
                let text = fs::read_to_string(entry.path()).unwrap_or_default();
                cursors.insert(DcName(dc.to_owned()), parse_cursor(&text));
            }
        }
        firsts.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut next_seq = cursors.values().map(|c| c.next).max().unwrap_or(0);
        let mut damaged = false;
        let mut total_bytes = 0;
        for (i, &first) in firsts.iter().enumerate() {
            let path = dir.join(segment_name(first));
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| failed(&path, e))?;
            let (records, good) = decode_segment(&bytes);
            if good < bytes.len() {
                if i + 1 == firsts.len() {
                    // The torn tail of the last segment: cut it off.
                    tracing::warn!(path = %path.display(), offset = good, "outbox tail truncated");
                } else {
                    tracing::error!(path = %path.display(), offset = good, "outbox segment damaged; full-sync owed to every DC");
                    damaged = true;
                }
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| {
                        f.set_len(good as u64)?;
                        f.sync_all()
                    })
                    .map_err(|e| failed(&path, e))?;
            }
            let end = records.last().map_or(first, |r| r.seq + 1);
            next_seq = next_seq.max(end);
            total_bytes += good as u64;
            segments.insert(
                first,
                Segment {
                    path,
                    bytes: good as u64,
                    end,
                },
            );
        }
        if damaged {
            for c in cursors.values_mut() {
                c.full_sync_pending = true;
            }
        }
        let outbox = Outbox {
            dir: dir.to_owned(),
            config,
            inner: Mutex::new(Inner {
                next_seq,
                segments,
                current: None,
                total_bytes,
                cache: VecDeque::new(),
                cache_bytes: 0,
                cursors,
            }),
            synced: AtomicU64::new(next_seq),
            sync_lock: Mutex::new(()),
            arrived: tokio::sync::Notify::new(),
            sealed_cache: Mutex::new(None),
        };
        if damaged {
            let inner = outbox.inner.lock();
            for (dc, c) in &inner.cursors {
                outbox.persist_cursor(dc, c)?;
            }
        }
        Ok(outbox)
    }

    /// Start tracking `dc` (a DC named by some keyspace's replication).
    /// A DC seen for the first time starts at the oldest record kept.
    pub fn register(&self, dc: &DcName) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        if inner.cursors.contains_key(dc) {
            return Ok(());
        }
        let oldest = inner
            .segments
            .keys()
            .next()
            .copied()
            .unwrap_or(inner.next_seq);
        let cursor = Cursor {
            next: oldest,
            ..Cursor::default()
        };
        self.persist_cursor(dc, &cursor)?;
        inner.cursors.insert(dc.clone(), cursor);
        Ok(())
    }

    /// Append one write; durable per the config when it returns. Blocking
    /// (file IO): call it off the async executor.
    pub fn append(&self, keyspace: &str, key: &[u8], version: &Version) -> Result<u64, StoreError> {
        let (seq, file) = {
            let mut inner = self.inner.lock();
            let seq = inner.next_seq;
            let record = Record {
                seq,
                enqueued_ms: now_ms(),
                keyspace: keyspace.to_owned(),
                key: key.to_vec(),
                version: version.clone(),
            };
            let bytes = frame(&record);
            let needs_segment = match inner.segments.last_key_value() {
                Some((_, s)) => inner.current.is_none() || s.bytes >= self.config.segment_bytes,
                None => true,
            };
            if needs_segment {
                if let Some(old) = inner.current.take() {
                    // Seal: what the group sync covers is the new file only.
                    old.sync_data().map_err(|e| failed(&self.dir, e))?;
                }
                let path = self.dir.join(segment_name(seq));
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| failed(&path, e))?;
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| failed(&self.dir, e))?;
                inner.segments.insert(
                    seq,
                    Segment {
                        path,
                        bytes: 0,
                        end: seq,
                    },
                );
                inner.current = Some(Arc::new(file));
            }
            let file = inner
                .current
                .clone()
                .expect("a current segment was just ensured");
            (&*file)
                .write_all(&bytes)
                .map_err(|e| failed(&self.dir, e))?;
            let len = bytes.len();
            if let Some((_, s)) = inner.segments.iter_mut().next_back() {
                s.bytes += len as u64;
                s.end = seq + 1;
            }
            inner.total_bytes += len as u64;
            inner.next_seq = seq + 1;
            inner.cache.push_back((Arc::new(record), len));
            inner.cache_bytes += len;
            while inner.cache_bytes > self.config.tail_cache_bytes {
                let Some((_, n)) = inner.cache.pop_front() else {
                    break;
                };
                inner.cache_bytes -= n;
            }
            self.enforce_bound(&mut inner)?;
            (seq, file)
        };
        if self.config.sync_each_append {
            self.sync_through(seq, &file)?;
        }
        self.arrived.notify_waiters();
        Ok(seq)
    }

    /// Group commit: make every record up to `seq` durable, sharing one
    /// sync with concurrent appenders.
    fn sync_through(&self, seq: u64, file: &File) -> Result<(), StoreError> {
        if self.synced.load(Ordering::Acquire) > seq {
            return Ok(());
        }
        let _leader = self.sync_lock.lock();
        if self.synced.load(Ordering::Acquire) > seq {
            return Ok(());
        }
        let upto = self.inner.lock().next_seq;
        file.sync_data().map_err(|e| failed(&self.dir, e))?;
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Sync whatever was appended (the interval policy's worker).
    pub fn sync(&self) -> Result<(), StoreError> {
        let (file, upto) = {
            let inner = self.inner.lock();
            (inner.current.clone(), inner.next_seq)
        };
        if let Some(file) = file
            && self.synced.load(Ordering::Acquire) < upto
        {
            let _leader = self.sync_lock.lock();
            file.sync_data().map_err(|e| failed(&self.dir, e))?;
            self.synced.fetch_max(upto, Ordering::AcqRel);
        }
        Ok(())
    }

    fn enforce_bound(&self, inner: &mut Inner) -> Result<(), StoreError> {
        while inner.total_bytes > self.config.bytes_max {
            let head = inner.next_seq;
            let Some((dc, _)) = inner
                .cursors
                .iter()
                .filter(|(_, c)| c.next < head)
                .min_by_key(|(_, c)| c.next)
                .map(|(dc, c)| (dc.clone(), c.clone()))
            else {
                break;
            };
            tracing::warn!(%dc, bytes = inner.total_bytes, bound = self.config.bytes_max,
                "outbox bound exceeded; that DC falls back to full-sync");
            let cursor = inner.cursors.get_mut(&dc).expect("chosen from the map");
            cursor.next = head;
            cursor.full_sync_pending = true;
            cursor.overflows += 1;
            let cursor = cursor.clone();
            self.persist_cursor(&dc, &cursor)?;
            self.collect(inner)?;
        }
        Ok(())
    }

    /// Delete sealed segments every DC has acknowledged.
    fn collect(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let floor = inner
            .cursors
            .values()
            .map(|c| c.next)
            .min()
            .unwrap_or(inner.next_seq);
        let last = inner.segments.keys().next_back().copied();
        let dead: Vec<u64> = inner
            .segments
            .iter()
            .filter(|(first, s)| Some(**first) != last && s.end <= floor)
            .map(|(first, _)| *first)
            .collect();
        for first in dead {
            if let Some(s) = inner.segments.remove(&first) {
                inner.total_bytes -= s.bytes;
                fs::remove_file(&s.path).map_err(|e| failed(&s.path, e))?;
            }
        }
        Ok(())
    }

    fn persist_cursor(&self, dc: &DcName, c: &Cursor) -> Result<(), StoreError> {
        let path = cursor_path(&self.dir, dc);
        let tmp = path.with_extension("tmp");
        let text = format!("{} {} {}\n", c.next, c.full_sync_pending as u8, c.overflows);
        File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_data()
            })
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| failed(&path, e))
    }

    /// `dc`'s cursor.
    pub fn cursor(&self, dc: &DcName) -> Option<Cursor> {
        self.inner.lock().cursors.get(dc).cloned()
    }

    /// The next sequence number to be assigned.
    pub fn head(&self) -> u64 {
        self.inner.lock().next_seq
    }

    /// Bytes of segments on disk.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().total_bytes
    }

    /// `dc` acknowledged everything below `next`: advance its cursor
    /// (persisted) and drop segments no DC needs. Blocking.
    pub fn acknowledge(&self, dc: &DcName, next: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let Some(cursor) = inner.cursors.get_mut(dc) else {
            return Ok(());
        };
        if next <= cursor.next {
            return Ok(()); // stale (the bound already moved it further)
        }
        cursor.next = next;
        let cursor = cursor.clone();
        self.persist_cursor(dc, &cursor)?;
        self.collect(&mut inner)
    }

    /// A full-sync with `dc` completed: clear the flag if no new overflow
    /// happened since `overflows` was read.
    pub fn full_sync_done(&self, dc: &DcName, overflows: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let Some(cursor) = inner.cursors.get_mut(dc) else {
            return Ok(());
        };
        if cursor.overflows != overflows {
            return Ok(());
        }
        cursor.full_sync_pending = false;
        let cursor = cursor.clone();
        self.persist_cursor(dc, &cursor)
    }

    /// Records from `from` on, up to `bytes_max` encoded bytes (at least
    /// one record when any exists) and `count_max` records. Blocking when
    /// they must come from disk.
    pub fn read(
        &self,
        from: u64,
        bytes_max: usize,
        count_max: usize,
    ) -> Result<Vec<Arc<Record>>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut at = from;
        loop {
            if out.len() >= count_max || (bytes >= bytes_max && !out.is_empty()) {
                return Ok(out);
            }
            // From the tail cache when it reaches back far enough.
            let from_disk = {
                let inner = self.inner.lock();
                if at >= inner.next_seq {
                    return Ok(out);
                }
                let front = inner.cache.front().map_or(inner.next_seq, |(r, _)| r.seq);
                if at >= front {
                    for (record, len) in inner.cache.iter().skip((at - front) as usize) {
                        if out.len() >= count_max || (bytes + len > bytes_max && !out.is_empty()) {
                            break;
                        }
                        bytes += len;
                        out.push(record.clone());
                    }
                    return Ok(out);
                }
                // The segment holding `at`.
                inner
                    .segments
                    .range(..=at)
                    .next_back()
                    .or_else(|| inner.segments.iter().next())
                    .map(|(first, s)| (*first, s.path.clone(), s.end))
            };
            let Some((first, path, end)) = from_disk else {
                return Ok(out);
            };
            if end <= at && first <= at {
                // Nothing kept at `at` (skipped by the bound): jump ahead.
                let next = self
                    .inner
                    .lock()
                    .segments
                    .range(at + 1..)
                    .next()
                    .map(|(f, _)| *f);
                match next {
                    Some(n) => at = n,
                    None => return Ok(out),
                }
                continue;
            }
            let records = self.sealed(first, &path)?;
            let mut advanced = false;
            let start = at;
            for record in records.iter().filter(|r| r.seq >= start) {
                let len = crate::batch::record_bytes(record) + 8;
                if out.len() >= count_max || (bytes + len > bytes_max && !out.is_empty()) {
                    return Ok(out);
                }
                bytes += len;
                at = record.seq + 1;
                advanced = true;
                out.push(record.clone());
            }
            if !advanced {
                at = end.max(at + 1);
            }
        }
    }

    fn sealed(&self, first: u64, path: &Path) -> Result<Arc<Vec<Arc<Record>>>, StoreError> {
        if let Some((f, records)) = &*self.sealed_cache.lock()
            && *f == first
        {
            return Ok(records.clone());
        }
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(|e| failed(path, e))?;
            }
            // Collected meanwhile: its records were acknowledged.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(path, e)),
        }
        let records: Arc<Vec<Arc<Record>>> =
            Arc::new(decode_segment(&bytes).0.into_iter().map(Arc::new).collect());
        *self.sealed_cache.lock() = Some((first, records.clone()));
        Ok(records)
    }

    /// Every tracked DC and its cursor.
    pub fn cursors(&self) -> BTreeMap<DcName, Cursor> {
        self.inner.lock().cursors.clone()
    }
}

fn parse_cursor(text: &str) -> Cursor {
    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().ok());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(next)), Some(Some(pending)), Some(Some(overflows))) => Cursor {
            next,
            full_sync_pending: pending != 0,
            overflows,
        },
        // Unreadable (damage after a crash): start over and owe a
        // full-sync; re-shipping is harmless, applying is idempotent.
        _ => Cursor {
            next: 0,
            full_sync_pending: true,
            overflows: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_core::model::{Actor, Clock, Dot};

    fn version(n: u64) -> Version {
        let mut clock = Clock::new();
        clock.add_dot(Dot {
            actor: Actor(1),
            counter: n,
        });
        Version::value(clock, vec![b'x'; 100], n, "dc1".into())
    }

    fn dc(name: &str) -> DcName {
        DcName(name.into())
    }

    fn small() -> OutboxConfig {
        OutboxConfig {
            bytes_max: 1 << 30,
            segment_bytes: 4096,
            sync_each_append: true,
            tail_cache_bytes: 8192,
        }
    }

    #[test]
    fn records_survive_reopen_and_reads_cross_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path(), small()).unwrap();
            outbox.register(&dc("dc2")).unwrap();
            for n in 0..200 {
                assert_eq!(
                    outbox
                        .append("ks", format!("k{n}").as_bytes(), &version(n + 1))
                        .unwrap(),
                    n
                );
            }
            let all = outbox.read(0, usize::MAX, usize::MAX).unwrap();
            assert_eq!(all.len(), 200);
            assert!(all.iter().enumerate().all(|(i, r)| r.seq == i as u64));
            outbox.acknowledge(&dc("dc2"), 50).unwrap();
        }
        let outbox = Outbox::open(dir.path(), small()).unwrap();
        assert_eq!(outbox.head(), 200);
        assert_eq!(outbox.cursor(&dc("dc2")).unwrap().next, 50);
        let rest = outbox.read(50, usize::MAX, usize::MAX).unwrap();
        assert_eq!(rest.len(), 150);
        assert_eq!(rest[0].key, b"k50");
        // Byte and count limits, at least one record.
        assert_eq!(outbox.read(50, 1, 10).unwrap().len(), 1);
        assert_eq!(outbox.read(50, usize::MAX, 10).unwrap().len(), 10);
        assert_eq!(outbox.append("ks", b"after", &version(999)).unwrap(), 200);
    }

    #[test]
    fn acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), small()).unwrap();
        outbox.register(&dc("dc2")).unwrap();
        outbox.register(&dc("dc3")).unwrap();
        for n in 0..300 {
            outbox.append("ks", b"k", &version(n + 1)).unwrap();
        }
        let full = outbox.bytes();
        outbox.acknowledge(&dc("dc2"), 300).unwrap();
        assert_eq!(outbox.bytes(), full, "dc3 still needs them");
        outbox.acknowledge(&dc("dc3"), 300).unwrap();
        assert!(outbox.bytes() < 4096 + 300, "{}", outbox.bytes());
    }

    #[test]
    fn past_the_bound_the_slowest_dc_is_cut_loose_and_owed_a_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(
            dir.path(),
            OutboxConfig {
                bytes_max: 20_000,
                ..small()
            },
        )
        .unwrap();
        outbox.register(&dc("dc2")).unwrap();
        outbox.register(&dc("dc3")).unwrap();
        for n in 0..1000 {
            outbox.append("ks", b"k", &version(n + 1)).unwrap();
            outbox.acknowledge(&dc("dc2"), n + 1).unwrap();
        }
        assert!(outbox.bytes() <= 20_000 + 4096);
        let c3 = outbox.cursor(&dc("dc3")).unwrap();
        assert!(c3.full_sync_pending && c3.overflows >= 1, "{c3:?}");
        let c2 = outbox.cursor(&dc("dc2")).unwrap();
        assert!(!c2.full_sync_pending && c2.next == 1000);
        // Reads from dc3's cursor find only records after the cut.
        let rest = outbox.read(c3.next, usize::MAX, usize::MAX).unwrap();
        assert!(rest.iter().all(|r| r.seq >= c3.next));
        outbox.full_sync_done(&dc("dc3"), c3.overflows).unwrap();
        assert!(!outbox.cursor(&dc("dc3")).unwrap().full_sync_pending);
        drop(outbox);
        let reopened = Outbox::open(dir.path(), small()).unwrap();
        assert_eq!(reopened.cursor(&dc("dc3")).unwrap().overflows, c3.overflows);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
            for n in 0..10 {
                outbox.append("ks", b"k", &version(n + 1)).unwrap();
            }
        }
        let seg = dir.path().join(segment_name(0));
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        assert_eq!(outbox.head(), 9);
        assert_eq!(outbox.append("ks", b"k", &version(50)).unwrap(), 9);
        assert_eq!(outbox.read(0, usize::MAX, usize::MAX).unwrap().len(), 10);
    }
}
