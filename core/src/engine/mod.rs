//! The per-node storage engine: a log-structured merge tree that stores,
//! per key, a [`VersionSet`].
//!
//! Writes append a [`Version`]: it goes to the commit log ([`log`]), then
//! is absorbed into the key's set in the active memtable ([`memtable`]).
//! There is no read before write: because absorbing is a semilattice join,
//! sets found in different places can be joined in any order later. So a
//! read joins the sets of every memtable and of every table whose key
//! range and bloom filter ([`bloom`]) admit the key; it does not stop at
//! the first hit, since an older table can hold a concurrent sibling.
//!
//! Full memtables are flushed by a background thread to tables
//! ([`sstable`], [`block`]) recorded in an atomically swapped manifest
//! ([`manifest`]); a background leveled compaction ([`compaction`]) merges
//! level 0 into L1 and each over-full level into the next, joining sets
//! (dropping dominated versions) and, where nothing deeper overlaps,
//! dropping tombstone-only sets older than the grace period.
//!
//! Levels: L0 (flushed memtables, overlapping), then L1..L6, each one
//! sorted run ten times the size of the one above, so a compaction
//! rewrites about one table's overlap, not the whole data set.
//!
//! All IO goes through [`Fs`], so tests run the engine over
//! [`MemFs`] and simulate power loss, failed fsyncs and full disks.
//! After a failed fsync, or a write error other than a full disk, the
//! engine is poisoned and refuses writes until reopened. A full disk
//! (ENOSPC) is not: the log group that found no room is cut back off the
//! segment and refused ([`EngineError::DiskFull`]), writes are refused
//! until a probe record is durable again, and flushes and compactions
//! retry; reads go on.
//!
//! What it is not: a keyspace layer (callers lay out prefixes), a
//! resolver (it keeps siblings; merging them is the coordinator's job), or
//! a replication log.
//!
//! ```
//! use isthmus_core::engine::{Engine, EngineOptions};
//! use isthmus_core::model::{Actor, Clock, Dot, Version};
//!
//! let dir = std::env::temp_dir().join(format!("isthmus-doc-{}", std::process::id()));
//! let engine = Engine::open(&dir, EngineOptions::default())?;
//! let mut clock = Clock::new();
//! clock.add_dot(Dot { actor: Actor(1), counter: 1 });
//! engine.apply(b"k", Version::value(clock, b"v".to_vec(), 1, "dc1".into()))?;
//! assert_eq!(engine.get(b"k")?.len(), 1);
//! engine.close()?;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), isthmus_core::engine::EngineError>(())
//! ```

pub mod block;
mod block_cache;
pub mod bloom;
mod cache;
mod codec;
mod compaction;
mod error;
pub mod log;
pub mod manifest;
mod memtable;
mod merge_iter;
pub mod sstable;

use crate::wall_clock::now_ms;
use std::cell::RefCell;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::{Condvar, Mutex, RwLock};

pub use crate::fs::{Fs, FsFile, MemFs, StdFs};
pub use error::EngineError;

use crate::limit::{LimitError, Limits};
use crate::model::{Version, VersionSet};
use block_cache::BlockCache;
use cache::{ReaderCache, Table};
use log::Log;
use manifest::{ManifestBody, TableMeta, table_path};
pub use memtable::Mark;
use memtable::Memtable;
use merge_iter::{MemIter, MergeIter, Source};
use sstable::{TableIter, TableWriter};

/// When a write is acknowledged relative to fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Acknowledge only after the log record is fsynced. Concurrent
    /// writers share fsyncs (group commit).
    Always,
    /// Acknowledge once the record is handed to the OS (write(2), shared
    /// by concurrent writers: group commit); a background thread fsyncs
    /// the log every interval. A process crash loses no acknowledged
    /// write; a power loss loses at most about one interval of them.
    Interval(Duration),
}

/// Engine configuration.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Size limits (keys, values, siblings, memtable, open files).
    pub limits: Limits,
    /// When writes are acknowledged.
    pub fsync: FsyncPolicy,
    /// Tombstone-only sets older than this are dropped by bottom-level
    /// compaction. Must exceed the longest time a replica can be away
    /// without repair, or deletes come back.
    pub tombstone_grace: Duration,
    /// Decoded blocks kept in memory.
    pub block_cache_bytes: u64,
    /// Bytes per second background compaction may write (0: unlimited);
    /// keeps compaction from starving foreground IO.
    pub compaction_bytes_per_s: u64,
    /// Level-0 tables that trigger a background compaction.
    pub l0_compaction_trigger: usize,
    /// Size at which compaction output is split into a new table.
    pub table_bytes_target: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            limits: Limits::default(),
            fsync: FsyncPolicy::Always,
            tombstone_grace: Duration::from_secs(24 * 3600),
            block_cache_bytes: 64 << 20,
            compaction_bytes_per_s: 64 << 20,
            l0_compaction_trigger: 4,
            table_bytes_target: 64 << 20,
        }
    }
}

/// Counters and gauges an operator can read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Bytes of keys and encoded versions applied by callers.
    pub user_bytes: u64,
    /// Bytes appended to commit-log segments.
    pub log_bytes_written: u64,
    /// Bytes of tables written by flushes.
    pub flush_bytes_written: u64,
    /// Bytes of tables written by compactions.
    pub compaction_bytes_written: u64,
    /// Bytes read from table files (footers, indexes and filters when a
    /// table is opened, blocks for reads, scans and compactions).
    pub table_bytes_read: u64,
    /// Commit fsyncs of the log (group commit shares them).
    pub log_syncs: u64,
    /// Bytes held by the active memtable.
    pub memtable_bytes: u64,
    /// Immutable memtables waiting for flush.
    pub immutable_memtables: usize,
    /// Tables per level (L0, L1, ...; at least two entries).
    pub tables_per_level: Vec<usize>,
    /// Bytes of all live tables.
    pub table_bytes: u64,
    /// Reads served from the block cache.
    pub block_cache_hits: u64,
    /// Reads that had to read and decode a block.
    pub block_cache_misses: u64,
    /// Table probes skipped by a bloom filter.
    pub bloom_skips: u64,
    /// Memtables flushed.
    pub flushes: u64,
    /// Compactions completed.
    pub compactions: u64,
    /// The engine refuses writes after an IO failure.
    pub poisoned: bool,
    /// The disk was found full: writes are refused until a probe finds
    /// room (reads go on).
    pub disk_full: bool,
}

impl EngineStats {
    /// Bytes written to disk per user byte (log + flush + compaction).
    pub fn write_amplification(&self) -> f64 {
        let disk =
            self.log_bytes_written + self.flush_bytes_written + self.compaction_bytes_written;
        disk as f64 / self.user_bytes.max(1) as f64
    }
}

#[derive(Default)]
struct Counters {
    user_bytes: AtomicU64,
    flush_bytes: AtomicU64,
    compaction_bytes: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    bloom_skips: AtomicU64,
    flushes: AtomicU64,
    compactions: AtomicU64,
}

/// The tables, by level (a snapshot; replaced, never mutated).
struct Levels<F: Fs> {
    /// Flushed memtables, newest first, overlapping.
    l0: Vec<Arc<Table<F>>>,
    /// L1 and deeper (`runs[0]` is L1): each a sorted run of
    /// non-overlapping tables ordered by key.
    runs: Vec<Vec<Arc<Table<F>>>>,
}

impl<F: Fs> Levels<F> {
    fn all(&self) -> impl Iterator<Item = &Arc<Table<F>>> {
        self.l0.iter().chain(self.runs.iter().flatten())
    }
}

/// The table of a sorted run that may hold `key`.
fn run_table<'a, F: Fs>(run: &'a [Arc<Table<F>>], key: &[u8]) -> Option<&'a Arc<Table<F>>> {
    let i = run.partition_point(|t| t.meta.max_key.as_slice() < key);
    run.get(i).filter(|t| t.covers(key))
}

struct MemSet {
    active: Arc<Memtable>,
    /// Oldest first.
    immutable: Vec<Arc<Memtable>>,
}

/// How often, at most, a write probes a full disk for room.
const PROBE_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Signals {
    stop: bool,
}

struct Shared<F: Fs> {
    dir: PathBuf,
    fs: F,
    options: EngineOptions,
    log: Log<F>,
    poisoned: Arc<AtomicBool>,
    /// The disk had no room for a write (ENOSPC): writes are refused, and
    /// a probe ([`Shared::probe_room`]) clears it once there is room.
    full: Arc<AtomicBool>,
    /// When the last probe ran (probes are at most [`PROBE_EVERY`] apart).
    last_probe: Mutex<Option<Instant>>,
    closed: AtomicBool,
    /// Writers hold it shared across log append + memtable absorb; a
    /// rotation holds it exclusively so a segment and its memtable pair up.
    gate: RwLock<()>,
    mem: RwLock<MemSet>,
    /// The tables readers see. Swapped whole, under the manifest lock;
    /// read without a lock (a get takes no lock and bumps no shared
    /// counter here: most of a missing key's cost was these atomics).
    levels: ArcSwap<Levels<F>>,
    /// The current manifest; every edit happens under this lock.
    manifest: Mutex<ManifestBody>,
    readers: Arc<ReaderCache<F>>,
    blocks: BlockCache,
    signals: Mutex<Signals>,
    flush_cv: Condvar,
    compact_cv: Condvar,
    stall_cv: Condvar,
    /// One compaction at a time.
    compaction_lock: Mutex<()>,
    counters: Counters,
}

/// The storage engine. `Send + Sync`: share it as `Arc<Engine>`.
pub struct Engine<F: Fs = StdFs> {
    shared: Arc<Shared<F>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A write taken by [`Engine::try_apply_unwritten`]: appended to the
/// commit log's buffer and absorbed, not yet handed to the OS.
#[must_use = "a write is acknowledged only once `write` returns Ok"]
pub struct Unwritten<F: Fs = StdFs> {
    shared: Option<Arc<Shared<F>>>,
    lsn: u64,
}

impl<F: Fs> Unwritten<F> {
    /// Hand the write to the OS (one write(2) for every record appended
    /// before it that no other writer has written yet): it then survives
    /// a crash of this process.
    pub fn write(mut self) -> Result<(), EngineError> {
        match self.shared.take() {
            Some(shared) => shared.log.write_to(self.lsn),
            None => Ok(()),
        }
    }
}

impl<F: Fs> Drop for Unwritten<F> {
    fn drop(&mut self) {
        // A caller that went away before writing (its task cancelled)
        // leaves no record in the buffer until the next writer's turn.
        if let Some(shared) = self.shared.take()
            && let Err(e) = shared.log.write_to(self.lsn)
        {
            tracing::warn!(error = %e, "commit log: a write left unwritten could not be written");
        }
    }
}

thread_local! {
    /// Reused record encoding buffer: no allocation per write.
    static ENCODE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn owned_bound<K: AsRef<[u8]>>(b: Bound<&K>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Engine<StdFs> {
    /// Open (or create) the engine in `dir` on the real file system,
    /// replaying the commit log.
    pub fn open(dir: &Path, options: EngineOptions) -> Result<Self, EngineError> {
        Self::open_with_fs(StdFs, dir, options)
    }
}

impl<F: Fs> Engine<F> {
    /// Open (or create) the engine in `dir` on file system `fs`.
    ///
    /// Recovery: tables named by the manifest are opened and verified;
    /// stray tables and log segments already in tables are removed; the
    /// remaining log segments are replayed (a torn tail is truncated,
    /// other damage is an error) and flushed to a table.
    pub fn open_with_fs(fs: F, dir: &Path, options: EngineOptions) -> Result<Self, EngineError> {
        fs.create_dir_all(dir)
            .map_err(|e| EngineError::io(dir, e))?;
        let fresh = !fs.exists(&dir.join(manifest::MANIFEST_FILE));
        let mut body = ManifestBody::load(&fs, dir)?;
        let readers: Arc<ReaderCache<F>> =
            Arc::new(ReaderCache::new(options.limits.open_files_max.max(1)));
        let make = |m: &TableMeta| {
            Arc::new(Table::new(
                m.clone(),
                table_path(dir, m.id),
                fs.clone(),
                readers.clone(),
            ))
        };
        let levels = Levels {
            l0: body.l0.iter().map(make).collect(),
            runs: body
                .levels
                .iter()
                .map(|run| run.iter().map(make).collect())
                .collect(),
        };
        // Verify every table's footer, index and filter now: a damaged
        // table is an error at open, not a surprise at some later read.
        for t in levels.all() {
            t.reader()?;
        }
        let files = fs.list(dir).map_err(|e| EngineError::io(dir, e))?;
        let live: std::collections::HashSet<u64> = body.tables().map(|t| t.id).collect();
        let mut segments = Vec::new();
        for path in &files {
            if let Some(id) = manifest::parse_table_path(path) {
                if !live.contains(&id) {
                    fs.remove(path).map_err(|e| EngineError::io(path, e))?;
                }
            } else if let Some(id) = log::parse_segment_path(path) {
                segments.push(id);
            }
        }
        segments.sort_unstable();
        let max_segment = segments.last().copied().unwrap_or(0);
        let new_segment = max_segment.max(body.log_floor.saturating_sub(1)) + 1;
        let replay = Arc::new(Memtable::new(new_segment - 1));
        let to_replay: Vec<u64> = segments
            .iter()
            .copied()
            .filter(|&s| s >= body.log_floor)
            .collect();
        for (i, &seg) in to_replay.iter().enumerate() {
            let path = log::segment_path(dir, seg);
            let bytes = fs.read_all(&path).map_err(|e| EngineError::io(&path, e))?;
            let newest = i + 1 == to_replay.len();
            let scan = log::decode_segment(&bytes, &path, newest, |k, v| replay.absorb(&k, v))?;
            if scan.torn_tail {
                let f = fs.open(&path).map_err(|e| EngineError::io(&path, e))?;
                f.truncate(scan.valid_len)
                    .and_then(|()| f.sync())
                    .map_err(|e| EngineError::io(&path, e))?;
            }
        }
        let poisoned = Arc::new(AtomicBool::new(false));
        let full = Arc::new(AtomicBool::new(false));
        let log = Log::create(fs.clone(), dir, new_segment, poisoned.clone(), full.clone())?;
        if body.next_table_id == 0 {
            body.next_table_id = 1;
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            fs: fs.clone(),
            blocks: block_cache::block_cache(options.block_cache_bytes),
            options,
            log,
            poisoned,
            full,
            last_probe: Mutex::new(None),
            closed: AtomicBool::new(false),
            gate: RwLock::new(()),
            mem: RwLock::new(MemSet {
                active: Arc::new(Memtable::new(new_segment)),
                immutable: Vec::new(),
            }),
            levels: ArcSwap::from_pointee(levels),
            manifest: Mutex::new(body),
            readers,
            signals: Mutex::new(Signals::default()),
            flush_cv: Condvar::new(),
            compact_cv: Condvar::new(),
            stall_cv: Condvar::new(),
            compaction_lock: Mutex::new(()),
            counters: Counters::default(),
        });
        // Make the replayed writes a table, so the replayed segments can go
        // and the next crash replays less.
        if !replay.is_empty() {
            shared.flush_memtable(&replay)?;
        } else {
            let mut man = shared.manifest.lock();
            if man.log_floor < new_segment || fresh {
                let mut next = man.clone();
                next.log_floor = new_segment;
                next.store(&shared.fs, dir)?;
                *man = next;
            }
        }
        shared.remove_old_segments()?;
        let engine = Engine {
            threads: Mutex::new(Vec::new()),
            shared,
        };
        engine.spawn_workers()?;
        Ok(engine)
    }

    fn spawn_workers(&self) -> Result<(), EngineError> {
        let mut threads = self.threads.lock();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(f)
                .map_err(|e| EngineError::io(&self.shared.dir, e))
        };
        let s = self.shared.clone();
        threads.push(spawn("isthmus-flush", Box::new(move || s.flush_loop()))?);
        let s = self.shared.clone();
        threads.push(spawn(
            "isthmus-compaction",
            Box::new(move || s.compaction_loop()),
        )?);
        if let FsyncPolicy::Interval(every) = self.shared.options.fsync {
            let s = self.shared.clone();
            threads.push(spawn(
                "isthmus-log-sync",
                Box::new(move || s.sync_loop(every)),
            )?);
        }
        Ok(())
    }

    /// Append one version to `key`'s set. Returns once the write is
    /// durable per the [`FsyncPolicy`].
    pub fn apply(&self, key: &[u8], version: Version) -> Result<(), EngineError> {
        let s = &*self.shared;
        s.check_writable()?;
        s.options.limits.check(key, version.value_bytes())?;
        s.wait_for_room()?;
        let lsn = ENCODE_BUF.with(|buf| -> Result<u64, EngineError> {
            let mut buf = buf.borrow_mut();
            buf.clear();
            let encoded = log::encode_one(&mut buf, key, &version);
            let _gate = s.gate.read();
            let mem = s.mem.read().active.clone();
            mem.absorb_with(
                key,
                version,
                &buf[encoded],
                |set, v| s.check_set_siblings(set, v),
                || {
                    let lsn = s.log.append(&buf)?;
                    s.counters
                        .user_bytes
                        .fetch_add(buf.len() as u64, Ordering::Relaxed);
                    Ok(lsn)
                },
            )
        })?;
        s.commit(lsn)
    }

    /// [`Engine::apply`] when it cannot block for long, for a caller on an
    /// async runtime's thread: under [`FsyncPolicy::Interval`], with room
    /// in memory (no stall for a flush), no memtable rotation due or under
    /// way, and the disk not found full. Then the write is appended,
    /// absorbed and handed to the OS (one write(2), shared with the
    /// writers of its group) exactly as [`Engine::apply`] does: the same
    /// durability. Otherwise the version comes back untouched
    /// (`Err(version)`) for [`Engine::apply`] on a thread that may block.
    // The version given back is the caller's own, moved back as it came:
    // boxing it would cost an allocation on the hot path.
    #[allow(clippy::result_large_err)]
    pub fn try_apply_now(
        &self,
        key: &[u8],
        version: Version,
    ) -> Result<Result<(), EngineError>, Version> {
        self.try_apply_unwritten(key, version)
            .map(|taken| taken.and_then(Unwritten::write))
    }

    /// [`Engine::try_apply_now`] up to the write(2): the write is appended
    /// and absorbed, and [`Unwritten::write`] hands it to the OS, together
    /// with every record appended meanwhile. A caller that lets other
    /// writers append first (an async one that yields once) shares one
    /// write(2) with them, as Redis's event loop writes its AOF once per
    /// turn. The write must not be acknowledged before `write` returns
    /// `Ok`; an [`Unwritten`] dropped unwritten writes on drop.
    #[allow(clippy::result_large_err)]
    pub fn try_apply_unwritten(
        &self,
        key: &[u8],
        version: Version,
    ) -> Result<Result<Unwritten<F>, EngineError>, Version> {
        self.try_apply_unwritten_over(key, version, None)
    }

    /// [`Engine::try_apply_unwritten`] for a writer that read the key's
    /// set with [`Engine::get_cached_marked`] (under a lock that keeps its
    /// other writers out) and absorbed `version` into it: `over` is that
    /// mark and set. Unless the key was written since the read, the
    /// memtable stores the set as given instead of absorbing again; the
    /// writer has held the sibling bound over that whole set, so this
    /// memtable's own count of siblings is asked only where it absorbs.
    #[allow(clippy::result_large_err)]
    pub fn try_apply_unwritten_over(
        &self,
        key: &[u8],
        version: Version,
        over: Option<(Mark, &VersionSet)>,
    ) -> Result<Result<Unwritten<F>, EngineError>, Version> {
        let s = &*self.shared;
        let FsyncPolicy::Interval(_) = s.options.fsync else {
            return Err(version);
        };
        if s.full.load(Ordering::SeqCst) {
            // Probing for room fsyncs.
            return Err(version);
        }
        {
            let mem = s.mem.read();
            if mem.immutable.len() >= s.options.limits.immutable_memtables_max.max(1)
                || mem.active.approx_bytes() >= s.options.limits.memtable_bytes_max
            {
                // A stall, or a rotation (fsync, a new segment) is due.
                return Err(version);
            }
        }
        // A rotation holds the gate for its fsync.
        let Some(gate) = s.gate.try_read() else {
            return Err(version);
        };
        if let Err(e) = s
            .check_writable()
            .and_then(|()| Ok(s.options.limits.check(key, version.value_bytes())?))
        {
            return Ok(Err(e));
        }
        let lsn = ENCODE_BUF.with(|buf| -> Result<u64, EngineError> {
            let mut buf = buf.borrow_mut();
            buf.clear();
            let encoded = log::encode_one(&mut buf, key, &version);
            let mem = s.mem.read().active.clone();
            let check = |set: &VersionSet, v: &Version| s.check_set_siblings(set, v);
            let log = || {
                let lsn = s.log.append(&buf)?;
                s.counters
                    .user_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                Ok(lsn)
            };
            match over {
                Some((mark, full)) => {
                    mem.absorb_over(key, version, &buf[encoded], mark, full, check, log)
                }
                None => mem.absorb_with(key, version, &buf[encoded], check, log),
            }
        });
        drop(gate);
        // A rotation this write made due is left to the next write, which
        // takes the blocking path for it.
        Ok(lsn.map(|lsn| Unwritten {
            shared: Some(self.shared.clone()),
            lsn,
        }))
    }

    /// Apply several writes as one log record: after a crash either all of
    /// them are recovered or none.
    pub fn apply_batch<K: AsRef<[u8]>>(
        &self,
        batch: impl IntoIterator<Item = (K, Version)>,
    ) -> Result<(), EngineError> {
        let s = &*self.shared;
        s.check_writable()?;
        let batch: Vec<(K, Version)> = batch.into_iter().collect();
        if batch.is_empty() {
            return Ok(());
        }
        for (k, v) in &batch {
            s.options.limits.check(k.as_ref(), v.value_bytes())?;
        }
        s.wait_for_room()?;
        let mut buf = Vec::new();
        log::encode_batch(&mut buf, batch.iter().map(|(k, v)| (k.as_ref(), v)));
        let lsn = {
            let _gate = s.gate.read();
            let mem = s.mem.read().active.clone();
            s.check_batch_siblings(&mem, &batch)?;
            let lsn = s.log.append(&buf)?;
            s.counters
                .user_bytes
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            for (k, v) in batch {
                mem.absorb(k.as_ref(), v);
            }
            lsn
        };
        s.commit(lsn)
    }

    /// The key's version set: the join of what every memtable and every
    /// table that may hold the key has. Empty when the key is absent.
    pub fn get(&self, key: &[u8]) -> Result<VersionSet, EngineError> {
        // Allowed to read files, the lookup always answers.
        self.lookup(key, false).map(Option::unwrap_or_default)
    }

    /// As [`Engine::get`], from memory only (memtables, bloom filters,
    /// cached table handles and blocks): `None` when answering would open
    /// or read a file. Cheap enough for an async task to call inline,
    /// where [`Engine::get`] may block on the disk.
    pub fn get_cached(&self, key: &[u8]) -> Option<Result<VersionSet, EngineError>> {
        self.lookup(key, true).transpose()
    }

    /// [`Engine::get_cached`], with where the active memtable held the
    /// key, for [`Engine::try_apply_unwritten_over`].
    pub fn get_cached_marked(&self, key: &[u8]) -> Option<Result<(VersionSet, Mark), EngineError>> {
        let mut mark = None;
        match self.lookup_marked(key, true, &mut mark) {
            Ok(Some(set)) => mark.map(|mark| Ok((set, mark))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// The key's set; with `cached_only`, `Ok(None)` when a table's filter,
    /// handle or block is not in memory.
    fn lookup(&self, key: &[u8], cached_only: bool) -> Result<Option<VersionSet>, EngineError> {
        self.lookup_marked(key, cached_only, &mut None)
    }

    /// [`Self::lookup`], noting in `mark` where the active memtable held
    /// the key.
    fn lookup_marked(
        &self,
        key: &[u8],
        cached_only: bool,
        mark: &mut Option<Mark>,
    ) -> Result<Option<VersionSet>, EngineError> {
        let s = &*self.shared;
        let mut out: Option<VersionSet> = None;
        let mut add = |set: VersionSet| match &mut out {
            None => out = Some(set),
            Some(acc) => {
                acc.join(set);
            }
        };
        // Memtables before levels: a flush publishes its table before it
        // retires the memtable, so this order never misses a write.
        {
            let mem = s.mem.read();
            let (active, at) = mem.active.get_marked(key);
            *mark = Some(at);
            if let Some(set) = active {
                add(set);
            }
            for m in &mem.immutable {
                if let Some(set) = m.get(key) {
                    add(set);
                }
            }
        }
        let levels = s.levels.load();
        let runs = levels.runs.iter().filter_map(|run| run_table(run, key));
        let hash = bloom::key_hash(key);
        // Counted once per get, not once per table: each count is an
        // atomic read-modify-write on a shared cache line.
        let mut skips = 0u64;
        let mut hits = 0u64;
        let mut misses = 0u64;
        let mut answer = Ok(true);
        for t in levels.l0.iter().filter(|t| t.covers(key)).chain(runs) {
            let found = if cached_only {
                let reader = match t.cached_reader(key, hash) {
                    None => {
                        answer = Ok(false);
                        break;
                    }
                    Some(None) => {
                        skips += 1;
                        continue;
                    }
                    Some(Some(reader)) => reader,
                };
                match reader.get_cached(key, &s.blocks) {
                    None => {
                        answer = Ok(false);
                        break;
                    }
                    Some(found) => {
                        hits += 1;
                        found
                    }
                }
            } else {
                match t.may_contain(key, hash) {
                    Ok(true) => {}
                    Ok(false) => {
                        skips += 1;
                        continue;
                    }
                    Err(e) => {
                        answer = Err(e);
                        break;
                    }
                }
                match t.reader().and_then(|r| r.get(key, &s.blocks)) {
                    Ok((found, hit)) => {
                        if hit {
                            hits += 1;
                        } else {
                            misses += 1;
                        }
                        Ok(found)
                    }
                    Err(e) => Err(e),
                }
            };
            match found {
                Ok(Some(set)) => add(set),
                Ok(None) => {}
                Err(e) => {
                    answer = Err(e);
                    break;
                }
            }
        }
        for (counter, n) in [
            (&s.counters.bloom_skips, skips),
            (&s.counters.cache_hits, hits),
            (&s.counters.cache_misses, misses),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        match answer {
            Ok(true) => Ok(Some(out.unwrap_or_default())),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Iterate `(key, VersionSet)` in key order over `range`. The scan
    /// sees the memtables and tables as of the call (later writes may or
    /// may not appear).
    pub fn scan<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Result<Scan, EngineError> {
        let from = owned_bound(range.start_bound());
        let to = owned_bound(range.end_bound());
        self.shared.scan(from, to)
    }

    /// Iterate the entries whose [`crate::model::key_hash`] lies in
    /// `range`, in key order.
    ///
    /// Cost: keys are stored in key order, not hash order, so this is a
    /// full scan filtered by hash: O(all keys) reads for any range. Repair
    /// runs it in the background over whole token ranges, where that is
    /// acceptable; do not use it on a request path.
    pub fn scan_hash_range<R: RangeBounds<u64>>(
        &self,
        range: R,
    ) -> Result<impl Iterator<Item = Result<(Vec<u8>, VersionSet), EngineError>>, EngineError> {
        let lo = range.start_bound().cloned();
        let hi = range.end_bound().cloned();
        let scan = self.shared.scan(Bound::Unbounded, Bound::Unbounded)?;
        Ok(scan.filter(move |e| match e {
            Ok((k, _)) => (lo, hi).contains(&crate::model::key_hash(k)),
            Err(_) => true,
        }))
    }

    /// Write the memtables to tables and wait until they are recorded.
    pub fn flush(&self) -> Result<(), EngineError> {
        self.shared.flush_all()
    }

    /// Flush, then merge every table into the bottom level (synchronous,
    /// not throttled by the compaction budget), joining sets and dropping
    /// expired tombstones.
    pub fn compact(&self) -> Result<(), EngineError> {
        self.shared.flush_all()?;
        self.shared.compact(true, None).map(|_| ())
    }

    /// Counters and gauges.
    pub fn stats(&self) -> EngineStats {
        let s = &*self.shared;
        let c = &s.counters;
        let (memtable_bytes, immutable_memtables) = {
            let mem = s.mem.read();
            (mem.active.approx_bytes() as u64, mem.immutable.len())
        };
        let levels = s.levels.load_full();
        EngineStats {
            user_bytes: c.user_bytes.load(Ordering::Relaxed),
            log_bytes_written: s.log.bytes_written(),
            flush_bytes_written: c.flush_bytes.load(Ordering::Relaxed),
            compaction_bytes_written: c.compaction_bytes.load(Ordering::Relaxed),
            table_bytes_read: s.readers.bytes_read(),
            log_syncs: s.log.syncs(),
            memtable_bytes,
            immutable_memtables,
            tables_per_level: {
                let mut v = vec![levels.l0.len()];
                v.extend(levels.runs.iter().map(Vec::len));
                // Always at least L0 and L1.
                v.resize(v.len().max(2), 0);
                v
            },
            table_bytes: levels.all().map(|t| t.meta.size_bytes).sum(),
            block_cache_hits: c.cache_hits.load(Ordering::Relaxed),
            block_cache_misses: c.cache_misses.load(Ordering::Relaxed),
            bloom_skips: c.bloom_skips.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
            poisoned: s.poisoned.load(Ordering::SeqCst),
            disk_full: s.full.load(Ordering::SeqCst),
        }
    }

    /// Stop the background threads and make the log durable. Dropping the
    /// engine does the same but cannot report an error.
    pub fn close(self) -> Result<(), EngineError> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<(), EngineError> {
        let s = &*self.shared;
        if s.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        {
            let mut sig = s.signals.lock();
            sig.stop = true;
            s.flush_cv.notify_all();
            s.compact_cv.notify_all();
            s.stall_cv.notify_all();
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        if s.poisoned.load(Ordering::SeqCst) {
            return Err(EngineError::Poisoned);
        }
        s.log.sync_to(s.log.appended())
    }
}

impl<F: Fs> Drop for Engine<F> {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A scan's iterator: `(key, VersionSet)` in key order.
pub struct Scan {
    inner: MergeIter,
    to: Bound<Vec<u8>>,
    done: bool,
}

impl Iterator for Scan {
    type Item = Result<(Vec<u8>, VersionSet), EngineError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.inner.next()?;
        if let Ok((k, _)) = &item {
            let past = match &self.to {
                Bound::Included(end) => k > end,
                Bound::Excluded(end) => k >= end,
                Bound::Unbounded => false,
            };
            if past {
                self.done = true;
                return None;
            }
        }
        Some(item)
    }
}

impl<F: Fs> Shared<F> {
    fn check_writable(&self) -> Result<(), EngineError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(EngineError::Poisoned);
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(EngineError::Closed);
        }
        if self.full.load(Ordering::SeqCst) {
            self.probe_room()?;
        }
        Ok(())
    }

    /// With the disk found full: at most every [`PROBE_EVERY`], write an
    /// empty log record; once one is durable, writes resume (and the flush
    /// thread retries). Until then, [`EngineError::DiskFull`].
    fn probe_room(&self) -> Result<(), EngineError> {
        let full = || EngineError::DiskFull {
            path: self.dir.clone(),
        };
        {
            let mut last = self.last_probe.lock();
            if last.is_some_and(|at| at.elapsed() < PROBE_EVERY) {
                return Err(full());
            }
            *last = Some(Instant::now());
        }
        let _gate = self.gate.read();
        match self.log.probe() {
            Ok(()) => {
                tracing::info!(dir = %self.dir.display(), "the disk has room again: writes resume");
                let _sig = self.signals.lock();
                self.flush_cv.notify_all();
                self.compact_cv.notify_all();
                Ok(())
            }
            Err(e) if e.is_disk_full() => Err(full()),
            Err(e) => Err(e),
        }
    }

    /// After a flush or compaction found the disk full: wait a while (or
    /// until stopped); `false` once stopping.
    fn back_off(&self, why: &str, e: &EngineError) -> bool {
        tracing::warn!(error = %e, dir = %self.dir.display(), "{why} found the disk full; retrying");
        let mut sig = self.signals.lock();
        if sig.stop {
            return false;
        }
        self.stall_cv.notify_all();
        self.flush_cv.wait_for(&mut sig, PROBE_EVERY * 10);
        !sig.stop
    }

    fn poison(&self, e: EngineError) -> EngineError {
        self.poisoned.store(true, Ordering::SeqCst);
        self.stall_cv.notify_all();
        e
    }

    /// Refuse a batch that would leave more than `siblings_max` siblings
    /// of a key in the active memtable, counting every version the batch
    /// carries for that key together. The engine sees only the memtable
    /// here (no read before write); the replica, which reads the full set
    /// under the key's lock, enforces the limit end to end.
    fn check_batch_siblings<K: AsRef<[u8]>>(
        &self,
        mem: &Memtable,
        batch: &[(K, Version)],
    ) -> Result<(), EngineError> {
        let max = self.options.limits.siblings_max;
        let mut per_key: std::collections::BTreeMap<&[u8], Vec<&Version>> =
            std::collections::BTreeMap::new();
        for (k, v) in batch {
            per_key.entry(k.as_ref()).or_default().push(v);
        }
        for (key, versions) in per_key {
            let mut set = mem.get(key).unwrap_or_default();
            if set.len() + versions.len() <= max {
                continue;
            }
            for v in versions {
                set.absorb(v.clone());
                if set.len() > max {
                    return Err(LimitError::TooManySiblings {
                        count: set.len(),
                        max,
                    }
                    .into());
                }
            }
        }
        Ok(())
    }

    /// [`Self::check_siblings`] on a set already at hand.
    fn check_set_siblings(&self, set: &VersionSet, v: &Version) -> Result<(), EngineError> {
        let max = self.options.limits.siblings_max;
        if set.len() < max {
            return Ok(());
        }
        let mut probe = set.clone();
        probe.absorb(v.clone());
        if probe.len() > max {
            return Err(LimitError::TooManySiblings {
                count: probe.len(),
                max,
            }
            .into());
        }
        Ok(())
    }

    fn commit(&self, lsn: u64) -> Result<(), EngineError> {
        match self.options.fsync {
            FsyncPolicy::Always => self.log.sync_to(lsn)?,
            FsyncPolicy::Interval(_) => self.log.write_to(lsn)?,
        }
        if self.mem.read().active.approx_bytes() >= self.options.limits.memtable_bytes_max {
            match self.rotate(false) {
                // The write is in the log; only the next segment found no
                // room, and the next writes are refused until there is.
                Err(e) if e.is_disk_full() => {
                    tracing::warn!(error = %e, dir = %self.dir.display(), "no room for a new log segment");
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Stall writers while too many memtables wait for flush: bounded
    /// memory instead of an unbounded queue.
    fn wait_for_room(&self) -> Result<(), EngineError> {
        let max = self.options.limits.immutable_memtables_max.max(1);
        if self.mem.read().immutable.len() < max {
            return Ok(());
        }
        let mut sig = self.signals.lock();
        while self.mem.read().immutable.len() >= max {
            self.check_writable()?;
            self.stall_cv.wait_for(&mut sig, Duration::from_millis(50));
        }
        Ok(())
    }

    /// Seal the active memtable and its log segment; the flush thread
    /// takes it from there.
    fn rotate(&self, force: bool) -> Result<(), EngineError> {
        let _gate = self.gate.write();
        let active = self.mem.read().active.clone();
        if active.is_empty()
            || (!force && active.approx_bytes() < self.options.limits.memtable_bytes_max)
        {
            return Ok(());
        }
        let next = self.log.segment() + 1;
        self.log.rotate(next)?;
        {
            let mut mem = self.mem.write();
            mem.immutable.push(active);
            mem.active = Arc::new(Memtable::new(next));
        }
        let _sig = self.signals.lock();
        self.flush_cv.notify_all();
        Ok(())
    }

    fn flush_all(&self) -> Result<(), EngineError> {
        self.check_writable()?;
        self.rotate(true)?;
        let mut sig = self.signals.lock();
        while !self.mem.read().immutable.is_empty() {
            if self.poisoned.load(Ordering::SeqCst) {
                return Err(EngineError::Poisoned);
            }
            if sig.stop {
                return Err(EngineError::Closed);
            }
            self.stall_cv.wait_for(&mut sig, Duration::from_millis(20));
        }
        Ok(())
    }

    fn flush_loop(&self) {
        loop {
            let next = {
                let mut sig = self.signals.lock();
                loop {
                    if sig.stop {
                        return;
                    }
                    if let Some(m) = self.mem.read().immutable.first().cloned() {
                        break m;
                    }
                    self.flush_cv.wait_for(&mut sig, Duration::from_millis(200));
                }
            };
            if self.poisoned.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = self.flush_memtable(&next) {
                // No room for the table: the memtable stays in memory (and
                // in the log), and the flush is retried.
                if e.is_disk_full() {
                    self.full.store(true, Ordering::SeqCst);
                    if self.back_off("a flush", &e) {
                        continue;
                    }
                    return;
                }
                let e = self.poison(e);
                tracing::error!(error = %e, dir = %self.dir.display(), "engine flush failed; engine poisoned");
                return;
            }
            let _sig = self.signals.lock();
            self.stall_cv.notify_all();
            self.compact_cv.notify_all();
        }
    }

    /// Write `mem` as an L0 table (L1 when L0 and L1 are empty), record
    /// it, retire the memtable and the log segments it covered.
    fn flush_memtable(&self, mem: &Arc<Memtable>) -> Result<(), EngineError> {
        let table = if mem.is_empty() {
            None
        } else {
            let id = {
                let mut man = self.manifest.lock();
                man.next_table_id += 1;
                man.next_table_id - 1
            };
            let written = (|| {
                let mut w = TableWriter::create(&self.fs, &self.dir, id, mem.len())?;
                let mut err = None;
                mem.for_each(|k, set| {
                    if err.is_none()
                        && let Err(e) = w.add(k, set)
                    {
                        err = Some(e);
                    }
                });
                if let Some(e) = err {
                    return Err(e);
                }
                w.finish()
            })();
            let meta = match written {
                Ok(meta) => meta,
                Err(e) => {
                    // A partial table holds space and belongs to nothing.
                    let _ = self.fs.remove(&table_path(&self.dir, id));
                    return Err(e);
                }
            };
            self.counters
                .flush_bytes
                .fetch_add(meta.size_bytes, Ordering::Relaxed);
            Some(meta)
        };
        // The table takes over the memtable's reads the moment it is
        // installed: opened and its blocks cached first (as many as the
        // cache has room for), so that they do not all go to the file at
        // once (RocksDB's block-cache prepopulation on flush). Best
        // effort: a block that cannot be read now is read, or reported,
        // when a read needs it.
        let fresh = table.as_ref().map(|meta| {
            let t = Arc::new(Table::new(
                meta.clone(),
                table_path(&self.dir, meta.id),
                self.fs.clone(),
                self.readers.clone(),
            ));
            if let Err(e) = t.warm(&self.blocks) {
                tracing::warn!(error = %e, table = meta.id, "could not cache a flushed table's blocks");
            }
            t
        });
        {
            let mut man = self.manifest.lock();
            let mut next = man.clone();
            next.log_floor = next.log_floor.max(mem.id() + 1);
            // With L0 and L1 both empty the table goes straight to L1 (one
            // table is a sorted run): moving it there later would be a
            // free manifest edit anyway, and in L0 it would count towards
            // the L0 trigger and be rewritten by the next L0 compaction.
            // Decided under the manifest lock: with L0 and L1 empty no
            // running compaction can be writing into L1 (its inputs would
            // still be listed in L0 or L1 until it installs).
            let to_l1 = next.l0.is_empty() && next.levels.first().is_none_or(Vec::is_empty);
            if let Some(meta) = &table {
                if to_l1 {
                    if next.levels.is_empty() {
                        next.levels.push(Vec::new());
                    }
                    next.levels[0].push(meta.clone());
                } else {
                    next.l0.insert(0, meta.clone());
                }
            }
            if let Err(e) = next.store(&self.fs, &self.dir) {
                if let Some(meta) = &table {
                    let _ = self.fs.remove(&table_path(&self.dir, meta.id));
                }
                // Its warmed reader holds the file open: dropped with the
                // table, or a full disk would not get the space back.
                if let Some(t) = &fresh {
                    t.mark_obsolete();
                }
                return Err(e);
            }
            *man = next;
            if let Some(t) = fresh {
                let levels = self.levels.load_full();
                let mut l0 = levels.l0.clone();
                let mut runs = levels.runs.clone();
                if to_l1 {
                    if runs.is_empty() {
                        runs.push(Vec::new());
                    }
                    runs[0].push(t);
                } else {
                    l0.insert(0, t);
                }
                self.levels.store(Arc::new(Levels { l0, runs }));
            }
        }
        self.mem.write().immutable.retain(|m| !Arc::ptr_eq(m, mem));
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        self.remove_old_segments()
    }

    /// Delete log segments whose data the manifest says is in tables.
    fn remove_old_segments(&self) -> Result<(), EngineError> {
        let floor = self.manifest.lock().log_floor;
        let files = self
            .fs
            .list(&self.dir)
            .map_err(|e| EngineError::io(&self.dir, e))?;
        for path in files {
            if log::parse_segment_path(&path).is_some_and(|id| id < floor) {
                self.fs
                    .remove(&path)
                    .map_err(|e| EngineError::io(&path, e))?;
            }
        }
        Ok(())
    }

    fn sync_loop(&self, every: Duration) {
        loop {
            {
                let mut sig = self.signals.lock();
                if sig.stop {
                    return;
                }
                self.compact_cv.wait_for(&mut sig, every);
                if sig.stop {
                    return;
                }
            }
            if self.poisoned.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = self.log.sync_to(self.log.appended()) {
                tracing::error!(error = %e, dir = %self.dir.display(), "engine log sync failed; engine poisoned");
                return;
            }
        }
    }

    fn compaction_loop(&self) {
        loop {
            {
                let mut sig = self.signals.lock();
                if sig.stop {
                    return;
                }
                if !self.needs_compaction() {
                    self.compact_cv
                        .wait_for(&mut sig, Duration::from_millis(500));
                    continue;
                }
            }
            if self.poisoned.load(Ordering::SeqCst) {
                return;
            }
            let budget = Some(self.options.compaction_bytes_per_s).filter(|&b| b > 0);
            if let Err(e) = self.compact(false, budget) {
                // No room for the new tables (removed again): compaction
                // waits; the tables it would have merged stay as they were.
                if e.is_disk_full() {
                    if self.back_off("a compaction", &e) {
                        continue;
                    }
                    return;
                }
                let e = self.poison(e);
                tracing::error!(error = %e, dir = %self.dir.display(), "engine compaction failed; engine poisoned");
                return;
            }
        }
    }

    fn scan(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<Scan, EngineError> {
        let mut sources: Vec<Source> = Vec::new();
        {
            let mem = self.mem.read();
            for m in std::iter::once(&mem.active).chain(&mem.immutable) {
                sources.push(Box::new(MemIter::new(m.clone(), from.clone(), to.clone())));
            }
        }
        let start: Option<&[u8]> = match &from {
            Bound::Included(k) | Bound::Excluded(k) => Some(k),
            Bound::Unbounded => None,
        };
        let levels = self.levels.load_full();
        for t in levels.all() {
            let it = TableIter::new(t.reader()?, start)?;
            let skip_equal = match &from {
                Bound::Excluded(k) => Some(k.clone()),
                _ => None,
            };
            sources.push(Box::new(it.filter(move |e| match (e, &skip_equal) {
                (Ok((k, _)), Some(x)) => k != x,
                _ => true,
            })));
        }
        // Keep the table snapshot alive while the scan runs, so compaction
        // cannot delete a file under it.
        sources.push(Box::new(KeepAlive(levels)));
        Ok(Scan {
            inner: MergeIter::new(sources),
            to,
            done: false,
        })
    }
}

/// An empty source that holds a levels snapshot for a scan's lifetime.
struct KeepAlive<F: Fs>(Arc<Levels<F>>);

impl<F: Fs> Iterator for KeepAlive<F> {
    type Item = merge_iter::Entry;
    fn next(&mut self) -> Option<merge_iter::Entry> {
        let _ = &self.0;
        None
    }
}

#[cfg(test)]
mod tests;
