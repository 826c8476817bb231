//! The durable outbox: every write this node coordinated, in order, until
//! every remote datacenter has acknowledged it.
//!
//! On disk, `DIR/seg-<first seq>.log` segment files of records:
//!
//! ```text
//! [payload length: u32 LE][crc32c of payload: u32 LE][payload: postcard(Record)]
//! ```
//!
//! A record for one remote datacenter only (replayed from its
//! quarantine, see [`crate::quarantine`]) carries that datacenter's name
//! after the record, inside the payload: `postcard(Record)
//! postcard(String)`. Records without it are byte for byte what earlier
//! releases wrote.
//!
//! and one cursor file per remote datacenter, `DIR/dc-cursor-<hex of its name>`, holding
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
//! that segment, so every DC is then owed a full-sync: that mark is made
//! durable before the damaged segment is cut, so a crash in between
//! cannot make the outbox forget it.
//!
//! All file IO goes through [`Fs`]: [`StdFs`] in a node, `MemFs` in the
//! power-loss tests. A new segment's name is made durable (directory
//! fsync) before records go into it. Cursors are replaced with
//! [`Fs::write_atomic`], durable before the call returns, and a cursor is
//! always persisted before the segments it moved past are deleted: after
//! power loss a cursor may lag (records are shipped again, harmlessly),
//! but it never skips a record nobody owes a full-sync for.
//!
//! A failed fsync poisons the outbox, as it does the engine: what reached
//! the disk is uncertain, so appends are refused until the node restarts,
//! and every DC is owed a full sync. An append that fails (a full disk)
//! may leave part of a record: its segment is sealed there (recovery
//! reads the part as damage), later records go to a new segment, and
//! every DC is owed a full sync, since the write was stored locally
//! without reaching the outbox. A full-sync mark that cannot be persisted
//! is persisted before the next append, or that append is refused.
//!
//! The outbox is bounded: when its segments exceed `bytes_max`, the DC
//! furthest behind is cut loose: its cursor jumps to the head, a
//! full-sync is owed to it (Merkle repair brings it what it missed), and
//! the segments nobody needs are deleted. Local writes never wait for a
//! remote DC.

use isthmus_core::wall_clock::now_ms;
use std::collections::{BTreeMap, VecDeque};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use isthmus_core::fs::{Fs, FsFile, StdFs};
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

struct Inner<F: Fs> {
    next_seq: u64,
    /// Segments by first sequence number; the last one takes appends.
    segments: BTreeMap<u64, Segment>,
    current: Option<Arc<F::File>>,
    total_bytes: u64,
    cache: VecDeque<(Arc<Record>, usize)>,
    cache_bytes: usize,
    cursors: BTreeMap<DcName, Cursor>,
    /// Cursor files an older release wrote under a name several
    /// datacenters may share (see [`legacy_cursor_dc`]), by that name.
    legacy_shared: BTreeMap<String, Cursor>,
}

/// One node's outbox, on the file system `F`.
pub struct Outbox<F: Fs = StdFs> {
    fs: F,
    dir: PathBuf,
    config: OutboxConfig,
    inner: Mutex<Inner<F>>,
    /// Every record below this is durable.
    synced: AtomicU64,
    sync_lock: Mutex<()>,
    /// Wakes shippers when records arrive.
    pub(crate) arrived: tokio::sync::Notify,
    /// A sealed segment decoded for a shipper catching up from disk.
    sealed_cache: Mutex<Option<SealedSegment>>,
    /// An fsync failed: what reached the disk is uncertain, so appends
    /// are refused until the node restarts (as the engine does).
    poisoned: std::sync::atomic::AtomicBool,
    /// A full-sync mark could not be persisted (a full disk): appends
    /// persist it first, or are refused.
    marks_unsaved: std::sync::atomic::AtomicBool,
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

/// A datacenter's name as file names carry it: the hex of its bytes, so
/// names differing only in punctuation never share a file.
pub fn dc_hex(dc: &DcName) -> String {
    dc.0.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The datacenter whose [`dc_hex`] is `hex`.
pub fn dc_of_hex(hex: &str) -> Option<DcName> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok().map(DcName::from)
}

/// `dc`'s cursor file: `dc-cursor-<dc_hex>`.
fn cursor_path(dir: &Path, dc: &DcName) -> PathBuf {
    dir.join(format!("dc-cursor-{}", dc_hex(dc)))
}

/// The datacenter a [`cursor_path`] file name belongs to.
fn cursor_dc(name: &str) -> Option<DcName> {
    dc_of_hex(name.strip_prefix("dc-cursor-")?)
}

/// A cursor file as an older release named it, `cursor-<name>` with every
/// character outside `[A-Za-z0-9_-]` written `_`: two datacenters could
/// share one. Such a file is adopted only by the datacenter whose name it
/// spells exactly (and then renamed); any other datacenter is owed a full
/// sync, since a shared file may have run ahead of it.
fn legacy_cursor_dc(name: &str) -> Option<DcName> {
    name.strip_prefix("cursor-")
        .filter(|n| !n.ends_with(".tmp"))
        .map(DcName::from)
}

fn name_is_lossless_in_legacy_files(dc: &DcName) -> bool {
    dc.0.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
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
        match decode_record(payload) {
            Some(r) => records.push(r),
            None => break,
        }
        at += 8 + len;
    }
    (records, at)
}

/// A record's payload: the record, then the one DC it is for, if any.
fn decode_record(payload: &[u8]) -> Option<Record> {
    let (mut record, rest) = postcard::take_from_bytes::<Record>(payload).ok()?;
    if !rest.is_empty() {
        let dc = isthmus_client::wire::decode::<String>(rest).ok()?;
        record.only = Some(DcName::from(dc));
    }
    Some(record)
}

fn frame(record: &Record) -> Vec<u8> {
    let mut payload = isthmus_client::wire::encode(record);
    if let Some(dc) = &record.only {
        payload.extend(isthmus_client::wire::encode(&dc.0));
    }
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

impl Outbox<StdFs> {
    /// Open (creating) the outbox in `dir` on the real file system; see
    /// [`Outbox::open_with_fs`].
    pub fn open(dir: &Path, config: OutboxConfig) -> Result<Self, StoreError> {
        Self::open_with_fs(StdFs, dir, config)
    }
}

impl<F: Fs> Outbox<F> {
    /// Open (creating) the outbox in `dir` on `fs`, recovering segments and
    /// cursors.
    pub fn open_with_fs(fs: F, dir: &Path, config: OutboxConfig) -> Result<Self, StoreError> {
        fs.create_dir_all(dir).map_err(|e| failed(dir, e))?;
        let mut firsts = Vec::new();
        let mut cursors = BTreeMap::new();
        let mut legacy = Vec::new();
        for path in fs.list(dir).map_err(|e| failed(dir, e))? {
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if let Some(first) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(first);
            } else if let Some(dc) = cursor_dc(&name).filter(|_| !name.ends_with(".tmp")) {
                let bytes = fs.read_all(&path).unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes);
                cursors.insert(dc, parse_cursor(&text));
            } else if let Some(dc) = legacy_cursor_dc(&name) {
                let bytes = fs.read_all(&path).unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes);
                legacy.push((dc, parse_cursor(&text), path.clone()));
            }
        }
        firsts.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut next_seq = cursors
            .values()
            .chain(legacy.iter().map(|(_, c, _)| c))
            .map(|c| c.next)
            .max()
            .unwrap_or(0);
        let mut damaged = false;
        let mut total_bytes = 0;
        // Segments to cut at their readable length, once any full-sync
        // their damage owes is durable.
        let mut cuts = Vec::new();
        for (i, &first) in firsts.iter().enumerate() {
            let path = dir.join(segment_name(first));
            let bytes = fs.read_all(&path).map_err(|e| failed(&path, e))?;
            let (records, good) = decode_segment(&bytes);
            if good < bytes.len() {
                if i + 1 == firsts.len() {
                    // The torn tail of the last segment: cut it off.
                    tracing::warn!(path = %path.display(), offset = good, "outbox tail truncated");
                } else {
                    tracing::error!(path = %path.display(), offset = good, "outbox segment damaged; full-sync owed to every DC");
                    damaged = true;
                }
                cuts.push((path.clone(), good as u64));
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
            fs,
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
                legacy_shared: BTreeMap::new(),
            }),
            synced: AtomicU64::new(next_seq),
            sync_lock: Mutex::new(()),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            marks_unsaved: std::sync::atomic::AtomicBool::new(false),
            arrived: tokio::sync::Notify::new(),
            sealed_cache: Mutex::new(None),
        };
        // Cursor files an older release wrote: renamed when the name is
        // the datacenter's own, else kept aside until a datacenter that
        // may have shared it registers.
        for (dc, cursor, path) in legacy {
            let mut inner = outbox.inner.lock();
            if name_is_lossless_in_legacy_files(&dc) {
                if inner.cursors.contains_key(&dc) {
                    continue;
                }
                outbox.persist_cursor(&dc, &cursor)?;
                inner.cursors.insert(dc, cursor);
            } else {
                inner.legacy_shared.insert(dc.0.to_string(), cursor);
            }
            outbox.fs.remove(&path).map_err(|e| failed(&path, e))?;
        }
        if damaged {
            // Durable before the damage is cut away: once it is, nothing on
            // disk would say that records were lost.
            let inner = outbox.inner.lock();
            for (dc, c) in &inner.cursors {
                outbox.persist_cursor(dc, c)?;
            }
        }
        for (path, len) in cuts {
            let f = outbox.fs.open(&path).map_err(|e| failed(&path, e))?;
            f.truncate(len)
                .and_then(|()| f.sync())
                .map_err(|e| failed(&path, e))?;
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
        // A cursor file an older release may have shared with another
        // datacenter could have run ahead of this one: start from the
        // oldest record and owe a full sync for what was collected.
        let legacy: String =
            dc.0.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
        let shared = inner.legacy_shared.contains_key(&legacy);
        let cursor = Cursor {
            next: oldest,
            full_sync_pending: shared,
            overflows: u64::from(shared),
        };
        self.persist_cursor(dc, &cursor)?;
        inner.cursors.insert(dc.clone(), cursor);
        Ok(())
    }

    /// Every DC is owed a full sync, durably as far as the disk allows:
    /// the outbox may have lost records they were owed (a write that did
    /// not reach it, records a failed fsync may have dropped).
    fn owe_everyone(&self, inner: &mut Inner<F>) {
        for cursor in inner.cursors.values_mut() {
            if !cursor.full_sync_pending {
                cursor.full_sync_pending = true;
                cursor.overflows += 1;
            }
        }
        if let Err(e) = self.persist_marks(inner) {
            self.marks_unsaved.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, "could not persist full-sync marks; appends wait for them");
        }
    }

    /// Persist every cursor that owes a full sync.
    fn persist_marks(&self, inner: &Inner<F>) -> Result<(), StoreError> {
        for (dc, cursor) in inner.cursors.iter().filter(|(_, c)| c.full_sync_pending) {
            self.persist_cursor(dc, cursor)?;
        }
        Ok(())
    }

    /// An fsync failed: refuse appends from now on, and owe every DC a
    /// full sync (interval-synced records already acknowledged may be
    /// gone).
    fn poison(&self, e: StoreError) -> StoreError {
        self.poisoned.store(true, Ordering::SeqCst);
        tracing::error!(error = %e, "outbox fsync failed; refusing writes until restart, full-sync owed to every DC");
        self.owe_everyone(&mut self.inner.lock());
        e
    }

    /// Has an fsync failed (appends refused until restart)?
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// Append one write; durable per the config when it returns. Blocking
    /// (file IO): call it off the async executor. Refused after a failed
    /// fsync. An append that fails (a full disk, say) may leave part of a
    /// record: its segment is sealed there, so later records go to a new
    /// one and are never hidden behind it, and every DC is owed a full
    /// sync (the write was stored locally without reaching the outbox).
    pub fn append(&self, keyspace: &str, key: &[u8], version: &Version) -> Result<u64, StoreError> {
        self.append_for(None, keyspace, key, version)
    }

    /// [`Self::append`] of a record for one remote DC only (`only`), or
    /// for every DC (`None`).
    pub fn append_for(
        &self,
        only: Option<&DcName>,
        keyspace: &str,
        key: &[u8],
        version: &Version,
    ) -> Result<u64, StoreError> {
        if self.is_poisoned() {
            return Err(StoreError::Failed {
                reason: format!(
                    "outbox {}: an fsync failed; writes are refused until the node restarts",
                    self.dir.display()
                ),
            });
        }
        let (seq, file) = {
            let mut inner = self.inner.lock();
            if self.marks_unsaved.load(Ordering::SeqCst) {
                self.persist_marks(&inner)?;
                self.marks_unsaved.store(false, Ordering::SeqCst);
            }
            let seq = inner.next_seq;
            let record = Record {
                seq,
                enqueued_ms: now_ms(),
                keyspace: keyspace.to_owned(),
                key: key.to_vec(),
                version: version.clone(),
                only: only.cloned(),
            };
            let bytes = frame(&record);
            let needs_segment = match inner.segments.last_key_value() {
                Some((_, s)) => inner.current.is_none() || s.bytes >= self.config.segment_bytes,
                None => true,
            };
            if needs_segment {
                if let Some(old) = inner.current.take() {
                    // Seal: what the group sync covers is the new file only.
                    if let Err(e) = old.sync() {
                        drop(inner);
                        return Err(self.poison(failed(&self.dir, e)));
                    }
                }
                // A segment starting at `seq` can only be an empty one a
                // crash left (the head only moves forward), so creating
                // cannot cut records off.
                let path = self.dir.join(segment_name(seq));
                let file = self.fs.create(&path).map_err(|e| failed(&path, e))?;
                self.fs
                    .sync_dir(&self.dir)
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
            if let Err(e) = file.append(&bytes) {
                inner.current = None;
                self.owe_everyone(&mut inner);
                return Err(failed(&self.dir, e));
            }
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
    fn sync_through(&self, seq: u64, file: &F::File) -> Result<(), StoreError> {
        if self.synced.load(Ordering::Acquire) > seq {
            return Ok(());
        }
        let _leader = self.sync_lock.lock();
        if self.synced.load(Ordering::Acquire) > seq {
            return Ok(());
        }
        let upto = self.inner.lock().next_seq;
        file.sync().map_err(|e| self.poison(failed(&self.dir, e)))?;
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
            file.sync().map_err(|e| self.poison(failed(&self.dir, e)))?;
            self.synced.fetch_max(upto, Ordering::AcqRel);
        }
        Ok(())
    }

    fn enforce_bound(&self, inner: &mut Inner<F>) -> Result<(), StoreError> {
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

    /// Delete sealed segments every DC has acknowledged. Callers persist
    /// the cursors that moved first. The removals need no directory fsync:
    /// a segment that comes back after a crash lies below every cursor and
    /// is collected again.
    fn collect(&self, inner: &mut Inner<F>) -> Result<(), StoreError> {
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
                self.fs.remove(&s.path).map_err(|e| failed(&s.path, e))?;
            }
        }
        Ok(())
    }

    /// Replace `dc`'s cursor file, durably when it returns.
    fn persist_cursor(&self, dc: &DcName, c: &Cursor) -> Result<(), StoreError> {
        let path = cursor_path(&self.dir, dc);
        let text = format!("{} {} {}\n", c.next, c.full_sync_pending as u8, c.overflows);
        self.fs
            .write_atomic(&path, text.as_bytes())
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

    /// Owe `dc` a full sync (records it was owed were not kept: a
    /// quarantine with no room for them), durably when it returns.
    /// Blocking.
    pub fn owe_full_sync(&self, dc: &DcName) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let Some(cursor) = inner.cursors.get_mut(dc) else {
            return Ok(());
        };
        cursor.full_sync_pending = true;
        cursor.overflows += 1;
        let cursor = cursor.clone();
        self.persist_cursor(dc, &cursor)
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
        let bytes = match self.fs.read_all(path) {
            Ok(bytes) => bytes,
            // Collected meanwhile: its records were acknowledged.
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(failed(path, e)),
        };
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
    use std::fs::{self, OpenOptions};

    use super::*;
    use isthmus_core::fs::MemFs;
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

    /// A record for one DC (a replay) keeps its destination on disk,
    /// and the records around it read as before.
    #[test]
    fn a_record_for_one_datacenter_keeps_its_destination_across_reopen() {
        let fs = MemFs::new();
        {
            let outbox = Outbox::open_with_fs(fs.clone(), mem_dir(), small()).unwrap();
            outbox.append("ks", b"a", &version(1)).unwrap();
            outbox
                .append_for(Some(&dc("dc2")), "ks", b"b", &version(2))
                .unwrap();
            outbox.append("ks", b"c", &version(3)).unwrap();
        }
        let outbox = Outbox::open_with_fs(fs.crash(), mem_dir(), small()).unwrap();
        let records = outbox.read(0, usize::MAX, 10).unwrap();
        let only: Vec<(Vec<u8>, Option<DcName>)> = records
            .iter()
            .map(|r| (r.key.clone(), r.only.clone()))
            .collect();
        assert_eq!(
            only,
            vec![
                (b"a".to_vec(), None),
                (b"b".to_vec(), Some(dc("dc2"))),
                (b"c".to_vec(), None)
            ]
        );
    }

    #[test]
    fn datacenters_whose_names_differ_in_punctuation_keep_their_own_cursors() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path(), small()).unwrap();
            outbox.register(&dc("dc.1")).unwrap();
            outbox.register(&dc("dc_1")).unwrap();
            for n in 0..10 {
                outbox.append("ks", b"k", &version(n + 1)).unwrap();
            }
            outbox.acknowledge(&dc("dc.1"), 10).unwrap();
        }
        let outbox = Outbox::open(dir.path(), small()).unwrap();
        assert_eq!(outbox.cursor(&dc("dc.1")).unwrap().next, 10);
        assert_eq!(outbox.cursor(&dc("dc_1")).unwrap().next, 0);
    }

    #[test]
    fn cursor_files_of_an_older_release_are_adopted_or_owe_a_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path(), small()).unwrap();
            for n in 0..10 {
                outbox.append("ks", b"k", &version(n + 1)).unwrap();
            }
        }
        // As an older release named them: `dc2` exactly, and `dc.1` and
        // `dc_1` both as `cursor-dc_1`.
        std::fs::write(dir.path().join("cursor-dc2"), "7 0 0\n").unwrap();
        std::fs::write(dir.path().join("cursor-dc_1"), "9 0 0\n").unwrap();
        let outbox = Outbox::open(dir.path(), small()).unwrap();
        let adopted = outbox.cursor(&dc("dc2")).unwrap();
        assert_eq!((adopted.next, adopted.full_sync_pending), (7, false));
        outbox.register(&dc("dc.1")).unwrap();
        let shared = outbox.cursor(&dc("dc.1")).unwrap();
        assert!(shared.full_sync_pending, "{shared:?}");
        assert!(!dir.path().join("cursor-dc2").exists());
        drop(outbox);
        let outbox = Outbox::open(dir.path(), small()).unwrap();
        assert_eq!(outbox.cursor(&dc("dc2")).unwrap().next, 7);
        assert!(outbox.cursor(&dc("dc.1")).unwrap().full_sync_pending);
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

    fn mem_dir() -> &'static Path {
        Path::new("/node/outbox")
    }

    fn seqs(outbox: &Outbox<MemFs>, from: u64) -> Vec<u64> {
        let records = outbox.read(from, usize::MAX, usize::MAX).unwrap();
        records.iter().map(|r| r.seq).collect()
    }

    /// Power cut at every sync point: every append that returned `Ok`
    /// (under `always`, the ack means fsynced) is read back after the
    /// crash, and so is every registered DC. Fails without the segment's
    /// fsync, or without the directory fsync of a new segment or cursor.
    #[test]
    fn power_loss_keeps_every_acknowledged_append() {
        for n in 0.. {
            let fs = MemFs::new();
            let outbox = Outbox::open_with_fs(fs.clone(), mem_dir(), small()).unwrap();
            fs.fail_sync_after(n);
            let registered = outbox.register(&dc("dc2")).is_ok();
            let mut acked = 0;
            if registered {
                while acked < 80 && outbox.append("ks", b"k", &version(acked + 1)).is_ok() {
                    acked += 1;
                }
            }
            let fs = fs.crash();
            drop(outbox);
            let outbox = Outbox::open_with_fs(fs, mem_dir(), small()).unwrap();
            assert_eq!(outbox.cursor(&dc("dc2")).is_some(), registered, "sync {n}");
            let got = seqs(&outbox, 0);
            assert!(outbox.head() >= acked, "sync {n}");
            let want: Vec<u64> = (0..acked).collect();
            assert!(got.starts_with(&want), "sync {n}: {got:?}");
            assert_eq!(
                outbox.append("ks", b"k", &version(999)).unwrap(),
                outbox.head() - 1
            );
            if registered && acked == 80 {
                break;
            }
        }
    }

    #[test]
    fn interval_policy_keeps_appends_before_the_last_sync() {
        let fs = MemFs::new();
        let config = OutboxConfig {
            sync_each_append: false,
            ..small()
        };
        let outbox = Outbox::open_with_fs(fs.clone(), mem_dir(), config.clone()).unwrap();
        for n in 0..5 {
            outbox.append("ks", b"k", &version(n + 1)).unwrap();
        }
        outbox.sync().unwrap();
        for n in 5..10 {
            outbox.append("ks", b"k", &version(n + 1)).unwrap();
        }
        let fs = fs.crash();
        drop(outbox);
        let outbox = Outbox::open_with_fs(fs, mem_dir(), config).unwrap();
        assert_eq!(seqs(&outbox, 0), vec![0, 1, 2, 3, 4]);
        assert_eq!(outbox.append("ks", b"k", &version(50)).unwrap(), 5);
    }

    /// A cursor move or a registration that returned `Ok` survives power
    /// loss. Fails without the directory fsync of the cursor's rename.
    #[test]
    fn acknowledged_cursor_moves_survive_power_loss() {
        let fs = MemFs::new();
        let outbox = Outbox::open_with_fs(fs.clone(), mem_dir(), small()).unwrap();
        outbox.register(&dc("dc2")).unwrap();
        for n in 0..10 {
            outbox.append("ks", b"k", &version(n + 1)).unwrap();
        }
        outbox.register(&dc("dc3")).unwrap();
        outbox.acknowledge(&dc("dc2"), 7).unwrap();
        let fs = fs.crash();
        drop(outbox);
        let outbox = Outbox::open_with_fs(fs, mem_dir(), small()).unwrap();
        assert_eq!(outbox.cursor(&dc("dc2")).unwrap().next, 7);
        assert_eq!(outbox.cursor(&dc("dc3")).unwrap().next, 0);
    }

    /// The outbox overflows again and again while dc2 keeps up and dc3 does
    /// not; the power is cut at every sync point, with removals reaching
    /// the disk at once (the worst order). After the crash no cursor skips
    /// an acknowledged record unless a full-sync is owed, and a full-sync
    /// owed before the crash is still owed. Fails if a cursor is not
    /// durable (directory fsync included) before the segments it moved
    /// past are deleted.
    #[test]
    fn power_loss_never_lets_a_cursor_skip_a_record_or_forget_a_full_sync() {
        let config = OutboxConfig {
            bytes_max: 8_000,
            segment_bytes: 2048,
            ..small()
        };
        let dcs = [dc("dc2"), dc("dc3")];
        for n in 0.. {
            let fs = MemFs::new();
            fs.eager_removals();
            let outbox = Outbox::open_with_fs(fs.clone(), mem_dir(), config.clone()).unwrap();
            fs.fail_sync_after(n);
            let mut acked = Vec::new();
            let mut owed = false;
            let mut completed = dcs.iter().all(|d| outbox.register(d).is_ok());
            if completed {
                for i in 0..150 {
                    let Ok(seq) = outbox.append("ks", b"k", &version(i + 1)) else {
                        completed = false;
                        break;
                    };
                    acked.push(seq);
                    owed = outbox.cursor(&dcs[1]).unwrap().full_sync_pending;
                    if outbox.acknowledge(&dcs[0], seq + 1).is_err() {
                        completed = false;
                        break;
                    }
                }
            }
            let fs = fs.crash();
            drop(outbox);
            let outbox = Outbox::open_with_fs(fs, mem_dir(), config.clone()).unwrap();
            if owed {
                assert!(
                    outbox.cursor(&dcs[1]).unwrap().full_sync_pending,
                    "a full-sync owed before sync {n} was forgotten"
                );
            }
            for (d, c) in outbox.cursors() {
                if c.full_sync_pending {
                    continue;
                }
                let kept = seqs(&outbox, c.next);
                for seq in acked.iter().filter(|&&s| s >= c.next) {
                    assert!(
                        kept.contains(seq),
                        "{d}'s cursor {} skips acknowledged record {seq} (sync {n})",
                        c.next
                    );
                }
            }
            if completed {
                assert!(owed, "the scenario overflows");
                break;
            }
        }
    }

    /// An outbox with a damaged middle segment, after `dc2` acknowledged
    /// the first 10 records.
    fn damaged(config: &OutboxConfig) -> MemFs {
        let fs = MemFs::new();
        let outbox = Outbox::open_with_fs(fs.clone(), mem_dir(), config.clone()).unwrap();
        outbox.register(&dc("dc2")).unwrap();
        outbox.register(&dc("dc3")).unwrap();
        for n in 0..100 {
            outbox.append("ks", b"k", &version(n + 1)).unwrap();
        }
        outbox.acknowledge(&dc("dc2"), 10).unwrap();
        drop(outbox);
        fs.corrupt(&mem_dir().join(segment_name(0)), 300, 0xff)
            .unwrap();
        fs
    }

    /// Recovery finds a damaged segment and owes every DC a full-sync; the
    /// power is cut at every sync point of that recovery. The mark is
    /// never lost (it is durable before the damage is cut away), and once
    /// the full-syncs are done the cut segment does not raise it again.
    #[test]
    fn a_damaged_segment_owes_every_dc_a_full_sync_across_power_loss() {
        let config = small();
        for n in 0.. {
            let fs = damaged(&config);
            fs.fail_sync_after(n);
            let opened = Outbox::open_with_fs(fs.clone(), mem_dir(), config.clone()).is_ok();
            let fs = fs.crash();
            let outbox = Outbox::open_with_fs(fs.clone(), mem_dir(), config.clone()).unwrap();
            for (d, c) in outbox.cursors() {
                assert!(c.full_sync_pending, "{d} forgot its full-sync (sync {n})");
            }
            assert_eq!(outbox.cursor(&dc("dc2")).unwrap().next, 10);
            if opened {
                for (d, c) in outbox.cursors() {
                    outbox.full_sync_done(&d, c.overflows).unwrap();
                }
                let fs = fs.crash();
                drop(outbox);
                let outbox = Outbox::open_with_fs(fs, mem_dir(), config.clone()).unwrap();
                assert!(outbox.cursors().values().all(|c| !c.full_sync_pending));
                break;
            }
        }
    }

    /// A failed fsync: the append is refused, so is every later one (what
    /// reached the disk is uncertain, as the engine treats it), and every
    /// DC is owed a full sync, a mark that survives a restart.
    #[test]
    fn a_failed_fsync_refuses_later_appends_and_owes_every_dc_a_full_sync() {
        let fs = MemFs::new();
        let dir = Path::new("/outbox");
        let outbox = Outbox::open_with_fs(fs.clone(), dir, small()).unwrap();
        outbox.register(&dc("dc2")).unwrap();
        outbox.register(&dc("dc3")).unwrap();
        outbox.append("ks", b"a", &version(1)).unwrap();
        fs.fail_next_sync();
        assert!(outbox.append("ks", b"b", &version(2)).is_err());
        assert!(outbox.is_poisoned());
        assert!(outbox.append("ks", b"c", &version(3)).is_err());
        for name in ["dc2", "dc3"] {
            assert!(
                outbox.cursor(&dc(name)).unwrap().full_sync_pending,
                "{name}"
            );
        }
        drop(outbox);
        let outbox = Outbox::open_with_fs(fs.crash(), dir, small()).unwrap();
        assert!(!outbox.is_poisoned());
        for name in ["dc2", "dc3"] {
            assert!(
                outbox.cursor(&dc(name)).unwrap().full_sync_pending,
                "{name}"
            );
        }
        outbox.append("ks", b"d", &version(4)).unwrap();
    }

    /// A disk that fills mid-append leaves part of a record: that write is
    /// owed to every DC by a full sync, and the records appended once
    /// space returns go to a new segment, readable and kept across a
    /// crash, never cut off as if behind a torn tail.
    #[test]
    fn a_partial_append_owes_a_full_sync_and_hides_no_later_record() {
        let fs = MemFs::new();
        let dir = Path::new("/outbox");
        let outbox = Outbox::open_with_fs(fs.clone(), dir, small()).unwrap();
        outbox.register(&dc("dc2")).unwrap();
        let first = outbox.append("ks", b"a", &version(1)).unwrap();
        fs.set_space(Some(10));
        assert!(outbox.append("ks", b"b", &version(2)).is_err());
        assert!(outbox.cursor(&dc("dc2")).unwrap().full_sync_pending);
        fs.set_space(None);
        let later = outbox.append("ks", b"c", &version(3)).unwrap();
        let keys = |o: &Outbox<MemFs>| -> Vec<Vec<u8>> {
            o.read(0, usize::MAX, usize::MAX)
                .unwrap()
                .iter()
                .map(|r| r.key.clone())
                .collect()
        };
        assert_eq!(keys(&outbox), vec![b"a".to_vec(), b"c".to_vec()]);
        assert_eq!((first, later), (0, 1));
        drop(outbox);
        let outbox = Outbox::open_with_fs(fs.crash(), dir, small()).unwrap();
        assert_eq!(keys(&outbox), vec![b"a".to_vec(), b"c".to_vec()]);
        assert!(outbox.cursor(&dc("dc2")).unwrap().full_sync_pending);
        assert_eq!(outbox.append("ks", b"d", &version(4)).unwrap(), 2);
    }
}
