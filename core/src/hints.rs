//! Durable hinted handoff: versions a replica could not take, kept by the
//! coordinator until that replica returns.
//!
//! One append-only file per target node, `DIR/<node>.hints` (the id with
//! every byte outside `[A-Za-z0-9-]` written `_XX`, so no two ids share a
//! file), of records:
//!
//! ```text
//! [payload length: u32 LE][crc32c of payload: u32 LE][payload: postcard(HintRecord)]
//! ```
//!
//! Every `add` is fsynced before it returns, and a new file's name is made
//! durable by a directory fsync, so an acknowledged hint survives the
//! coordinator's power loss. Reading stops at a torn or corrupt record (the
//! tail of a crash) and keeps what came before; opening the store cuts such
//! a tail off, so hints appended afterwards stay readable. An append that
//! fails is cut off too, so it cannot hide the ones after it (and if that
//! cut fails, the next append makes it first or is refused). Replay reads
//! a file a record at a time, resuming where the last round stopped.
//! Hints are bounded twice: a
//! *window* (hints older than it are dropped at replay: a replica down that
//! long is repaired by anti-entropy instead, as in Cassandra) and a byte
//! bound per target (past it new hints are refused and counted, never
//! silently lost: the caller logs, and repair covers them). Replaying is
//! idempotent, because applying a version twice changes nothing, so a file
//! is deleted only after every record in it was acknowledged.
//!
//! All file IO goes through [`Fs`]: [`StdFs`] in a node,
//! [`MemFs`](crate::fs::MemFs) in the power-loss tests. Deleting a replayed
//! file needs no directory fsync: a file that comes back after a crash is
//! replayed again, which changes nothing.
//!
//! [`handoff`] is the worker that replays them. It runs over any
//! [`HintQueue`] and [`Transport`]: the file store and TCP in a node, memory
//! and a simulated network in deterministic tests.

use crate::wall_clock::now_ms;
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::fs::{Fs, FsFile, StdFs};
use crate::model::Version;
use crate::peer::{PeerRequest, PeerResponse};
use crate::ring::NodeId;
use crate::store::StoreError;
use crate::transport::Transport;
use crate::view::ClusterView;
use crate::worker::WorkerHandle;

/// Keeps versions for a replica that could not take them.
pub trait HintSink: Send + Sync + 'static {
    /// Store durably that `target` must still receive `versions` of the key.
    fn add(
        &self,
        target: &NodeId,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl<Q: HintSink> HintSink for Arc<Q> {
    fn add(
        &self,
        target: &NodeId,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).add(target, keyspace, key, versions)
    }
}

/// Format version of hint files (the record layout above; its versions
/// encode as [`crate::model::Version`] says, which reads every version a
/// release without expiries wrote).
pub const HINT_FORMAT_VERSION: u32 = 1;

/// Largest single hint record accepted when reading (a corrupt length
/// beyond this is treated as the torn tail).
const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One hint as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HintRecord {
    /// When the hint was written, Unix milliseconds.
    pub created_ms: u64,
    /// Keyspace of the key.
    pub keyspace: String,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Versions the target must receive.
    pub versions: Vec<Version>,
}

/// Bounds of the hint store.
#[derive(Clone, Debug)]
pub struct HintConfig {
    /// Hints older than this are dropped rather than replayed.
    pub window: Duration,
    /// Bytes of hints kept per target node.
    pub bytes_per_target_max: u64,
}

impl Default for HintConfig {
    fn default() -> Self {
        HintConfig {
            window: Duration::from_secs(3 * 3600),
            bytes_per_target_max: 1 << 30,
        }
    }
}

/// Counters an operator reads.
#[derive(Debug, Default)]
pub struct HintStats {
    /// Hints written.
    pub stored: AtomicU64,
    /// Hints refused because a target's file was full.
    pub refused: AtomicU64,
    /// Hints delivered by replay.
    pub delivered: AtomicU64,
    /// Hints dropped because they were older than the window.
    pub expired: AtomicU64,
}

/// The durable hint store of one node, on the file system `F`. Cheap to
/// clone: clones share the files (the coordinator and the replay worker
/// hold one each).
pub struct HintStore<F: Fs = StdFs>(Arc<HintFiles<F>>);

impl<F: Fs> Clone for HintStore<F> {
    fn clone(&self) -> Self {
        HintStore(self.0.clone())
    }
}

impl<F: Fs> std::ops::Deref for HintStore<F> {
    type Target = HintFiles<F>;

    fn deref(&self) -> &HintFiles<F> {
        &self.0
    }
}

/// The hint files of one node (behind a [`HintStore`]).
pub struct HintFiles<F: Fs = StdFs> {
    fs: F,
    dir: PathBuf,
    config: HintConfig,
    files: Mutex<BTreeMap<NodeId, Arc<Mutex<TargetFile>>>>,
    stats: Arc<HintStats>,
}

/// What the store knows of one target's file, under that target's lock.
#[derive(Debug, Default)]
struct TargetFile {
    /// The length of the file's acknowledged records, once an append set
    /// it: bytes past it are what a failed append left, cut off before the
    /// next append so they can never hide the records after them.
    good_len: Option<u64>,
    /// Records before this offset were delivered by an earlier replay
    /// round (in memory only: after a restart replay starts over, which
    /// changes nothing at the target).
    replayed: u64,
}

/// A target's file name: its node id with every byte outside
/// `[A-Za-z0-9-]` written as `_` and two hex digits, so that distinct ids
/// never share a file and no id escapes the directory.
fn file_stem(target: &NodeId) -> String {
    let mut stem = String::with_capacity(target.0.len());
    for b in target.0.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            stem.push(char::from(b));
        } else {
            stem.push_str(&format!("_{b:02x}"));
        }
    }
    stem
}

/// The node id a [`file_stem`] came from; `None` for a name it never
/// produces (a file of an older release, which replaced every such byte
/// by a bare `_`).
fn parse_stem(stem: &str) -> Option<NodeId> {
    let mut bytes = Vec::with_capacity(stem.len());
    let mut rest = stem.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if byte.is_ascii_alphanumeric() || byte == b'-' {
                return None;
            }
            bytes.push(byte);
            rest = &tail[2..];
        } else if b.is_ascii_alphanumeric() || b == b'-' {
            bytes.push(b);
            rest = tail;
        } else {
            return None;
        }
    }
    let id = String::from_utf8(bytes).ok()?;
    (!id.is_empty() && !id.chars().any(char::is_control)).then_some(NodeId(id))
}

fn io_failed(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Failed {
        reason: format!("hint file {}: {e}", path.display()),
    }
}

impl HintStore<StdFs> {
    /// Open (creating) the hint directory on the real file system; see
    /// [`HintStore::open_with_fs`].
    pub fn open(dir: &Path, config: HintConfig) -> Result<Self, StoreError> {
        Self::open_with_fs(StdFs, dir, config)
    }
}

impl<F: Fs> HintStore<F> {
    /// Open (creating) the hint directory on `fs`. Every `*.hints` file
    /// found there is registered for replay, its torn tail (if a crash
    /// left one) cut off durably.
    pub fn open_with_fs(fs: F, dir: &Path, config: HintConfig) -> Result<Self, StoreError> {
        fs.create_dir_all(dir).map_err(|e| io_failed(dir, e))?;
        let store = HintFiles {
            fs,
            dir: dir.to_owned(),
            config,
            files: Mutex::default(),
            stats: Arc::default(),
        };
        for found in store.fs.list(dir).map_err(|e| io_failed(dir, e))? {
            let Some(stem) = found
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".hints"))
            else {
                continue;
            };
            let target = match parse_stem(stem) {
                Some(target) => target,
                None => {
                    // An older release's name: the id as it was, with the
                    // bytes it replaced read as `_`. Move it to its name.
                    let target = NodeId(stem.to_owned());
                    let path = store.path(&target);
                    if store.fs.exists(&path) {
                        tracing::warn!(file = %found.display(), "hint file of an older release \
                            shadowed by a current one; left unreplayed");
                        continue;
                    }
                    store
                        .fs
                        .rename(&found, &path)
                        .and_then(|()| store.fs.sync_dir(dir))
                        .map_err(|e| io_failed(&found, e))?;
                    target
                }
            };
            let path = store.path(&target);
            let bytes = store.fs.read_all(&path).map_err(|e| io_failed(&path, e))?;
            let (_, good) = decode_records(&bytes);
            if good < bytes.len() {
                tracing::warn!(path = %path.display(), offset = good, "hint file tail truncated");
                let f = store.fs.open(&path).map_err(|e| io_failed(&path, e))?;
                f.truncate(good as u64)
                    .and_then(|()| f.sync())
                    .map_err(|e| io_failed(&path, e))?;
            }
            store.files.lock().entry(target).or_default();
        }
        Ok(HintStore(Arc::new(store)))
    }
}

impl<F: Fs> HintFiles<F> {
    /// Counters.
    pub fn stats(&self) -> &Arc<HintStats> {
        &self.stats
    }

    fn path(&self, target: &NodeId) -> PathBuf {
        self.dir.join(format!("{}.hints", file_stem(target)))
    }

    fn lock(&self, target: &NodeId) -> Arc<Mutex<TargetFile>> {
        self.files.lock().entry(target.clone()).or_default().clone()
    }

    /// Targets that have hints waiting, with their file sizes.
    pub fn pending(&self) -> Vec<(NodeId, u64)> {
        let known: Vec<NodeId> = self.files.lock().keys().cloned().collect();
        known
            .into_iter()
            .filter_map(|t| {
                let len = self.fs.open(&self.path(&t)).ok()?.size().ok()?;
                (len > 0).then_some((t, len))
            })
            .collect()
    }

    /// Register targets whose hint files exist on disk (after a restart).
    /// Opening the store already registers every file it finds.
    pub fn discover(&self, targets: impl IntoIterator<Item = NodeId>) {
        let mut files = self.files.lock();
        for t in targets {
            if self.fs.exists(&self.path(&t)) {
                files.entry(t).or_default();
            }
        }
    }

    /// Append one hint for `target`, durably.
    pub fn add_blocking(&self, target: &NodeId, record: &HintRecord) -> Result<(), StoreError> {
        let payload = postcard::to_allocvec(record).map_err(|e| StoreError::Failed {
            reason: e.to_string(),
        })?;
        let lock = self.lock(target);
        let mut state = lock.lock();
        let path = self.path(target);
        let file = match self.fs.open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io_failed(&path, e)),
        };
        let mut len = match &file {
            Some(f) => f.size().map_err(|e| io_failed(&path, e))?,
            None => 0,
        };
        if let (Some(f), Some(good)) = (&file, state.good_len)
            && len > good
        {
            // A failed append left part of a record that could not be cut
            // then: cut it now, or refuse rather than append behind it.
            f.truncate(good)
                .and_then(|()| f.sync())
                .map_err(|e| io_failed(&path, e))?;
            len = good;
        }
        if len + payload.len() as u64 + 8 > self.config.bytes_per_target_max {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Failed {
                reason: format!(
                    "hints for {target} exceed {} bytes; repair will cover it",
                    self.config.bytes_per_target_max
                ),
            });
        }
        let mut buf = Vec::with_capacity(payload.len() + 8);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        let file = match file {
            Some(f) => f,
            None => {
                // A new file: its name must survive power loss as well as
                // its bytes.
                let f = self.fs.create(&path).map_err(|e| io_failed(&path, e))?;
                self.fs
                    .sync_dir(&self.dir)
                    .map_err(|e| io_failed(&self.dir, e))?;
                f
            }
        };
        if let Err(e) = file.append(&buf).and_then(|()| file.sync()) {
            // Not acknowledged: cut it off, so a half-written record cannot
            // hide the hints appended after it. If the cut fails too, the
            // next append cuts first (`good_len`), and opening the store
            // cuts any torn tail that remains.
            let _ = file.truncate(len);
            state.good_len = Some(len);
            return Err(io_failed(&path, e));
        }
        state.good_len = Some(len + buf.len() as u64);
        self.stats.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Every readable hint for `target`, oldest first (stops at a torn or
    /// corrupt record).
    pub fn read(&self, target: &NodeId) -> Result<Vec<HintRecord>, StoreError> {
        let path = self.path(target);
        match self.fs.read_all(&path) {
            Ok(bytes) => Ok(decode_records(&bytes).0),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_failed(&path, e)),
        }
    }

    /// Hand every hint for `target` to `deliver` (oldest first, dropping
    /// those past the window), reading the file a record at a time from
    /// where the last round stopped; delete the file only once all of it
    /// was delivered. Returns how many were delivered.
    pub async fn replay<D, Fut>(&self, target: &NodeId, mut deliver: D) -> Result<usize, StoreError>
    where
        D: FnMut(HintRecord) -> Fut,
        Fut: Future<Output = bool>,
    {
        let lock = self.lock(target);
        let path = self.path(target);
        let file = match self.fs.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_failed(&path, e)),
        };
        let end = file.size().map_err(|e| io_failed(&path, e))?;
        let mut at = lock.lock().replayed;
        if at > end {
            at = 0;
        }
        let cutoff = now_ms().saturating_sub(self.config.window.as_millis() as u64);
        let mut delivered = 0;
        while let Some((record, next)) =
            read_record(&file, at, end).map_err(|e| io_failed(&path, e))?
        {
            if record.created_ms < cutoff {
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
            } else if deliver(record).await {
                delivered += 1;
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                return Ok(delivered);
            }
            at = next;
            lock.lock().replayed = at;
        }
        // Delivered up to `at`: drop the file if that is all of it; if new
        // hints arrived meanwhile (or a torn record stops reading), the
        // next round goes on from `at`.
        let mut state = lock.lock();
        if file.size().map_err(|e| io_failed(&path, e))? == at {
            match self.fs.remove(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_failed(&path, e)),
            }
            *state = TargetFile::default();
        }
        Ok(delivered)
    }
}

/// The record at `at` of a file whose readable part ends at `end`, and
/// the offset after it; `None` at the end or at a torn or corrupt record.
fn read_record<H: FsFile>(
    file: &H,
    at: u64,
    end: u64,
) -> std::io::Result<Option<(HintRecord, u64)>> {
    if at + 8 > end {
        return Ok(None);
    }
    let mut header = [0u8; 8];
    file.read_at(&mut header, at)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let next = at + 8 + len as u64;
    if len > RECORD_BYTES_MAX || next > end {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    file.read_at(&mut payload, at + 8)?;
    if crc32c::crc32c(&payload) != crc {
        return Ok(None);
    }
    Ok(postcard::from_bytes(&payload).ok().map(|r| (r, next)))
}

/// Decode records until the first torn or corrupt one; returns them and
/// the length of the readable prefix.
fn decode_records(bytes: &[u8]) -> (Vec<HintRecord>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if len > RECORD_BYTES_MAX || crc32c::crc32c(payload) != crc {
            break;
        }
        match postcard::from_bytes::<HintRecord>(payload) {
            Ok(record) => out.push(record),
            Err(_) => break,
        }
        at += 8 + len;
    }
    (out, at)
}

/// Hints waiting for their targets, as the [`handoff`] worker sees them.
pub trait HintQueue: Send + Sync + 'static {
    /// Targets that have hints waiting, with the bytes waiting for each.
    fn pending(&self) -> Vec<(NodeId, u64)>;

    /// The queue's counters, for `/metrics`; `None` when it keeps none.
    fn counters(&self) -> Option<Arc<HintStats>> {
        None
    }

    /// Hand every hint for `target` to `deliver`, oldest first, stopping
    /// at the first it refuses; forget them only when all were delivered.
    /// Returns how many were delivered.
    fn replay<F, Fut>(
        &self,
        target: &NodeId,
        deliver: F,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send
    where
        F: FnMut(HintRecord) -> Fut + Send,
        Fut: Future<Output = bool> + Send;
}

impl<F: Fs> HintQueue for HintStore<F> {
    fn pending(&self) -> Vec<(NodeId, u64)> {
        HintFiles::pending(self)
    }

    fn counters(&self) -> Option<Arc<HintStats>> {
        Some(HintFiles::stats(self).clone())
    }

    fn replay<D, Fut>(
        &self,
        target: &NodeId,
        deliver: D,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send
    where
        D: FnMut(HintRecord) -> Fut + Send,
        Fut: Future<Output = bool> + Send,
    {
        HintFiles::replay(self, target, deliver)
    }
}

/// The hint-replay worker: every second, hand the hints of each target the
/// detector believes alive to it, until `stop` fires.
pub async fn handoff<Q: HintQueue, T: Transport>(
    hints: Arc<Q>,
    transport: Arc<T>,
    view: watch::Receiver<Arc<ClusterView>>,
    mut stop: watch::Receiver<bool>,
    worker: WorkerHandle,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let alive = view.borrow().alive.clone();
        worker.busy();
        let mut failure = None;
        for (target, _) in hints.pending() {
            if !alive.contains(&target) {
                continue;
            }
            let transport = transport.clone();
            let result = hints
                .replay(&target, |record| {
                    let (transport, target) = (transport.clone(), target.clone());
                    async move {
                        let request = PeerRequest::Apply {
                            keyspace: record.keyspace,
                            key: record.key,
                            versions: record.versions,
                            hint_for: None,
                        };
                        matches!(
                            transport
                                .call(&target, request, Duration::from_secs(5))
                                .await,
                            Ok(PeerResponse::Applied)
                        )
                    }
                })
                .await;
            match result {
                Ok(n) if n > 0 => tracing::info!(%target, delivered = n, "hints handed off"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%target, error = %e, "hint replay failed");
                    failure = Some(format!("replay to {target}: {e}"));
                }
            }
        }
        match failure {
            Some(e) => worker.failed(e),
            None => worker.idle(),
        }
    }
}

impl<F: Fs> HintSink for HintStore<F> {
    async fn add(
        &self,
        target: &NodeId,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        let record = HintRecord {
            created_ms: now_ms(),
            keyspace: keyspace.to_owned(),
            key: key.to_vec(),
            versions,
        };
        let (store, target) = (self.clone(), target.clone());
        tokio::task::spawn_blocking(move || store.add_blocking(&target, &record))
            .await
            .map_err(|e| StoreError::Failed {
                reason: format!("hint task failed: {e}"),
            })?
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;
    use crate::fs::MemFs;
    use crate::model::{Actor, Clock, Dot};

    fn record(i: u8, created_ms: u64) -> HintRecord {
        let clock = Clock::from_parts(
            [],
            [Dot {
                actor: Actor(1),
                counter: u64::from(i) + 1,
            }],
        );
        HintRecord {
            created_ms,
            keyspace: "carts".into(),
            key: vec![i],
            versions: vec![Version::value(clock, vec![i; 10], 1, "dc1".into())],
        }
    }

    #[tokio::test]
    async fn hints_survive_reopen_replay_in_order_and_are_deleted_when_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let target = NodeId("n2".into());
        {
            let store = HintStore::open(dir.path(), HintConfig::default()).unwrap();
            for i in 0..5 {
                store.add_blocking(&target, &record(i, now_ms())).unwrap();
            }
        }
        let store = HintStore::open(dir.path(), HintConfig::default()).unwrap();
        store.discover([target.clone(), NodeId("n3".into())]);
        assert_eq!(store.pending().len(), 1);
        // The target fails midway: nothing is deleted.
        let mut seen = Vec::new();
        let n = store.replay(&target, |r| {
            seen.push(r.key[0]);
            async move { r.key[0] < 2 }
        });
        assert_eq!(n.await.unwrap(), 2);
        assert_eq!(store.read(&target).unwrap().len(), 5);
        // The next round goes on from the first undelivered hint.
        let delivered = store.replay(&target, |r| {
            seen.push(r.key[0]);
            async { true }
        });
        assert_eq!(delivered.await.unwrap(), 3);
        assert!(store.read(&target).unwrap().is_empty());
        assert!(store.pending().is_empty());
        assert_eq!(seen, vec![0, 1, 2, 2, 3, 4]);
    }

    #[tokio::test]
    async fn torn_tails_are_ignored_expired_hints_dropped_and_the_bound_holds() {
        let dir = tempfile::tempdir().unwrap();
        let target = NodeId("n/../2".into());
        let config = HintConfig {
            window: Duration::from_secs(60),
            bytes_per_target_max: 400,
        };
        let store = HintStore::open(dir.path(), config).unwrap();
        store.add_blocking(&target, &record(0, 1)).unwrap(); // long expired
        store.add_blocking(&target, &record(1, now_ms())).unwrap();
        let mut refused = 0;
        for i in 2..20 {
            if store.add_blocking(&target, &record(i, now_ms())).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0 && store.stats().refused.load(Ordering::Relaxed) == refused);
        let kept = store.read(&target).unwrap().len();
        // A torn tail: half a record appended.
        let path = store.path(&target);
        assert!(
            path.starts_with(dir.path()),
            "node ids cannot escape the hint directory"
        );
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2]).unwrap();
        assert_eq!(store.read(&target).unwrap().len(), kept);
        let delivered = store.replay(&target, |_| async { true }).await.unwrap();
        assert_eq!(delivered, kept - 1);
        assert_eq!(store.stats().expired.load(Ordering::Relaxed), 1);
    }

    fn dir() -> &'static Path {
        Path::new("/node/hints")
    }

    fn keys(store: &HintStore<MemFs>, target: &NodeId) -> Vec<u8> {
        store
            .read(target)
            .unwrap()
            .iter()
            .map(|r| r.key[0])
            .collect()
    }

    /// Power cut at every sync point: each hint whose `add` returned `Ok`
    /// is found again, in order, and replayed; nothing unacknowledged
    /// hides it. Fails without the file fsync, or without the directory
    /// fsync that makes a new target's file name durable.
    #[tokio::test]
    async fn power_loss_keeps_every_acknowledged_hint() {
        let targets = [NodeId("n2".into()), NodeId("n3".into())];
        for n in 0.. {
            let fs = MemFs::new();
            let store = HintStore::open_with_fs(fs.clone(), dir(), HintConfig::default()).unwrap();
            fs.fail_sync_after(n);
            let mut acked: [Vec<u8>; 2] = Default::default();
            let mut failed = false;
            for i in 0..8u8 {
                let t = usize::from(i) % 2;
                match store.add_blocking(&targets[t], &record(i, now_ms())) {
                    Ok(()) => acked[t].push(i),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            let fs = fs.crash();
            drop(store);
            let store = HintStore::open_with_fs(fs, dir(), HintConfig::default()).unwrap();
            for (t, want) in targets.iter().zip(&acked) {
                assert_eq!(&keys(&store, t), want, "target {t}, failed sync {n}");
            }
            let mut pending: Vec<NodeId> = store.pending().into_iter().map(|(t, _)| t).collect();
            pending.sort();
            let want: Vec<NodeId> = targets
                .iter()
                .zip(&acked)
                .filter(|(_, a)| !a.is_empty())
                .map(|(t, _)| t.clone())
                .collect();
            assert_eq!(pending, want, "opening finds every file with hints");
            for (t, want) in targets.iter().zip(&acked) {
                let mut replayed = Vec::new();
                let n = store.replay(t, |r| {
                    replayed.push(r.key[0]);
                    async { true }
                });
                assert_eq!(n.await.unwrap(), want.len());
                assert_eq!(&replayed, want);
            }
            if !failed {
                break;
            }
        }
    }

    /// A crash that leaves half a record: opening cuts it off, so hints
    /// added afterwards are not hidden behind it.
    #[test]
    fn a_torn_tail_is_cut_at_open_so_later_hints_stay_readable() {
        let fs = MemFs::new();
        let target = NodeId("n2".into());
        let store = HintStore::open_with_fs(fs.clone(), dir(), HintConfig::default()).unwrap();
        for i in 0..3 {
            store.add_blocking(&target, &record(i, now_ms())).unwrap();
        }
        // Half of a record reached the disk before the power went.
        let f = fs.open(&store.path(&target)).unwrap();
        f.append(&[60, 0, 0, 0, 9, 9, 9, 9, 1, 2]).unwrap();
        f.sync().unwrap();
        let fs = fs.crash();
        drop(store);
        let store = HintStore::open_with_fs(fs.clone(), dir(), HintConfig::default()).unwrap();
        assert_eq!(keys(&store, &target), vec![0, 1, 2]);
        store.add_blocking(&target, &record(3, now_ms())).unwrap();
        let fs = fs.crash();
        drop(store);
        let store = HintStore::open_with_fs(fs, dir(), HintConfig::default()).unwrap();
        assert_eq!(keys(&store, &target), vec![0, 1, 2, 3]);
    }

    /// A hint whose fsync failed is refused (the caller counts it against
    /// the write) and cut off; the next one is acknowledged and survives.
    #[test]
    fn a_failed_fsync_refuses_the_hint_and_later_hints_survive() {
        let fs = MemFs::new();
        let target = NodeId("n2".into());
        let store = HintStore::open_with_fs(fs.clone(), dir(), HintConfig::default()).unwrap();
        store.add_blocking(&target, &record(0, now_ms())).unwrap();
        fs.fail_next_sync();
        assert!(store.add_blocking(&target, &record(1, now_ms())).is_err());
        assert_eq!(
            keys(&store, &target),
            vec![0],
            "the refused hint is cut off"
        );
        store.add_blocking(&target, &record(2, now_ms())).unwrap();
        assert_eq!(store.stats().stored.load(Ordering::Relaxed), 2);
        let fs = fs.crash();
        drop(store);
        let store = HintStore::open_with_fs(fs, dir(), HintConfig::default()).unwrap();
        assert_eq!(keys(&store, &target), vec![0, 2]);
    }

    /// Ids that an older naming mapped to one file (`n.1`, `n_1`) keep
    /// their own files, survive a reopen under their own ids, and none
    /// escapes the directory.
    #[test]
    fn distinct_node_ids_never_share_a_hint_file() {
        let fs = MemFs::new();
        let ids = ["n.1", "n_1", "n/../1", "n1", "dc-1.n\u{e9}"].map(|s| NodeId(s.into()));
        let store = HintStore::open_with_fs(fs.clone(), dir(), HintConfig::default()).unwrap();
        for (i, id) in ids.iter().enumerate() {
            store.add_blocking(id, &record(i as u8, now_ms())).unwrap();
            assert_eq!(store.path(id).parent(), Some(dir()));
        }
        let fs = fs.crash();
        drop(store);
        let store = HintStore::open_with_fs(fs, dir(), HintConfig::default()).unwrap();
        let mut pending: Vec<NodeId> = store.pending().into_iter().map(|(t, _)| t).collect();
        pending.sort();
        let mut want = ids.to_vec();
        want.sort();
        assert_eq!(pending, want);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(keys(&store, id), vec![i as u8], "{id}");
        }
    }

    /// A file named by an older release (`dc1_n2` for node `dc1_n2`) is
    /// found, moved to its current name and replayed to that node.
    #[tokio::test]
    async fn an_older_releases_hint_file_is_renamed_and_replayed() {
        let fs = MemFs::new();
        let target = NodeId("dc1_n2".into());
        let store = HintStore::open_with_fs(fs.clone(), dir(), HintConfig::default()).unwrap();
        store.add_blocking(&target, &record(7, now_ms())).unwrap();
        let legacy = dir().join("dc1_n2.hints");
        fs.rename(&store.path(&target), &legacy).unwrap();
        fs.sync_dir(dir()).unwrap();
        drop(store);
        let store = HintStore::open_with_fs(fs.clone(), dir(), HintConfig::default()).unwrap();
        assert!(!fs.exists(&legacy));
        assert_eq!(store.pending().len(), 1);
        let mut replayed = Vec::new();
        let n = store.replay(&target, |r| {
            replayed.push(r.key[0]);
            async { true }
        });
        assert_eq!(n.await.unwrap(), 1);
        assert_eq!(replayed, vec![7]);
    }

    /// A disk that fills mid-append leaves part of a record, and the cut
    /// that should remove it fails too: the next hint is appended after
    /// the cut is made, never behind the partial record, and it survives
    /// power loss.
    #[test]
    fn a_partial_append_never_hides_the_hints_after_it() {
        let fs = MemFs::new();
        let target = NodeId("n2".into());
        let store = HintStore::open_with_fs(fs.clone(), dir(), HintConfig::default()).unwrap();
        store.add_blocking(&target, &record(0, now_ms())).unwrap();
        fs.set_space(Some(5));
        fs.fail_next_truncate();
        assert!(store.add_blocking(&target, &record(1, now_ms())).is_err());
        fs.set_space(None);
        store.add_blocking(&target, &record(2, now_ms())).unwrap();
        assert_eq!(keys(&store, &target), vec![0, 2]);
        let fs = fs.crash();
        drop(store);
        let store = HintStore::open_with_fs(fs, dir(), HintConfig::default()).unwrap();
        assert_eq!(keys(&store, &target), vec![0, 2]);
    }
}
