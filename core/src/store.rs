//! A node's local data, as the cluster machinery sees it: version sets by
//! keyspace and key.
//!
//! [`LocalStore`] is what the coordinator, the replica path, hints and
//! repair call. [`EngineStore`] puts it on the storage engine;
//! [`MemStore`] keeps it in memory for simulations, where a "crash" must
//! keep what a real disk would keep.
//!
//! Storage keys are laid out hash-first so that a keyspace's token range is
//! one contiguous range of the engine's key order (what Merkle repair and
//! range streaming scan):
//!
//! ```text
//! [keyspace length: u8][keyspace bytes][key_hash(key): u64 big-endian][key bytes]
//! ```

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::engine::{Engine, EngineError, EngineOptions};
use crate::limit::LimitError;
use crate::model::{ContentHash, Version, VersionSet, key_hash};

/// Longest keyspace name, in bytes (it is length-prefixed with one byte).
pub const KEYSPACE_NAME_BYTES_MAX: usize = 255;

/// Why the local store could not serve a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A size limit refused the write.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The storage engine failed, or refuses writes (after a failed
    /// fsync); the engine's own error, whole (its `source` chain included).
    #[error("storage engine: {0}")]
    Engine(Arc<EngineError>),
    /// Storage outside the engine failed (hint files, the outbox, a task
    /// that did not finish, a node that is stopping).
    #[error("storage failed: {reason}")]
    Failed {
        /// What went wrong.
        reason: String,
    },
    /// The keyspace name cannot be stored.
    #[error("keyspace name of {len} bytes exceeds {KEYSPACE_NAME_BYTES_MAX}")]
    KeyspaceName {
        /// Its length.
        len: usize,
    },
}

impl From<EngineError> for StoreError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Limit(l) => StoreError::Limit(l),
            other => StoreError::Engine(Arc::new(other)),
        }
    }
}

/// What [`LocalStore::apply_unsettled`] leaves to do: hand an applied
/// write to the OS. Dropped unsettled, it does so on drop.
#[must_use = "a write is acknowledged only once it is settled"]
#[derive(Default)]
pub struct Settle(Option<crate::engine::Unwritten>);

impl Settle {
    /// Yield once, so that the writers this thread has ready (the rest of
    /// a pipeline, other connections, a peer's other applies) append
    /// theirs meanwhile, then hand every record appended to the OS: the
    /// first writer back writes them all with one write(2), as Redis's
    /// event loop writes its AOF once per turn.
    pub async fn settle(self) -> Result<(), StoreError> {
        let Some(unwritten) = self.0 else {
            return Ok(());
        };
        tokio::task::yield_now().await;
        Ok(unwritten.write()?)
    }

    /// Hand the write to the OS now, without yielding.
    pub fn settle_now(self) -> Result<(), StoreError> {
        match self.0 {
            Some(unwritten) => Ok(unwritten.write()?),
            None => Ok(()),
        }
    }
}

/// Where a read under a key's lock found the key's newest writes: handed
/// back with the set computed from that read
/// ([`LocalStore::apply_unsettled_over`]), it spares the store absorbing
/// the write again when nothing wrote the key since. Empty from a store
/// that keeps no such mark, or a read that went to disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadMark(Option<crate::engine::Mark>);

/// Version sets by keyspace and key; every call is durable per the store's
/// fsync policy when it returns (for [`LocalStore::apply_unsettled`]:
/// once its [`Settle`] is settled).
pub trait LocalStore: Send + Sync + 'static {
    /// Absorb `versions` into the key's set.
    fn apply(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// [`Self::apply`] up to handing the write to the OS, which the
    /// returned [`Settle`] does: a caller holding a key's lock releases it
    /// before settling, and settles before acknowledging. A store that
    /// has nothing left to do then returns a settled [`Settle`].
    fn apply_unsettled(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> impl Future<Output = Result<Settle, StoreError>> + Send {
        async move {
            self.apply(keyspace, key, versions).await?;
            Ok(Settle::default())
        }
    }

    /// [`Self::apply_unsettled`] for a writer holding the key's lock that
    /// read the key with [`Self::get_marked`] (`mark`) and absorbed
    /// `versions` into what it read (`full`): a store may keep `full` as
    /// the key's set when nothing wrote the key since the read, rather
    /// than absorb `versions` again. What it stores joins to the same.
    fn apply_unsettled_over(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
        mark: ReadMark,
        full: &VersionSet,
    ) -> impl Future<Output = Result<Settle, StoreError>> + Send {
        let _ = (mark, full);
        self.apply_unsettled(keyspace, key, versions)
    }

    /// [`Self::get`], with the mark [`Self::apply_unsettled_over`] takes.
    fn get_marked(
        &self,
        keyspace: &str,
        key: &[u8],
    ) -> impl Future<Output = Result<(VersionSet, ReadMark), StoreError>> + Send {
        async move { Ok((self.get(keyspace, key).await?, ReadMark::default())) }
    }

    /// Absorb the versions of many keys of `keyspace` at once (one
    /// commit-log record: the bridge's batches and their replicas).
    fn apply_many(
        &self,
        keyspace: &str,
        entries: Vec<(Vec<u8>, Vec<Version>)>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The key's set (empty when absent).
    fn get(
        &self,
        keyspace: &str,
        key: &[u8],
    ) -> impl Future<Output = Result<VersionSet, StoreError>> + Send;

    /// Every `(key, set)` of `keyspace` whose key hash is in `hashes`, in
    /// hash order (for repair and range streaming). Any range form works,
    /// so `..` and `h..=u64::MAX` reach the keys hashed to `u64::MAX`.
    fn scan_hashes(
        &self,
        keyspace: &str,
        hashes: impl RangeBounds<u64> + Send,
    ) -> impl Future<Output = Result<Vec<(Vec<u8>, VersionSet)>, StoreError>> + Send;

    /// Every `(key, digest of its set)` of `keyspace` whose key hash is in
    /// `hashes`, in hash order: what Merkle repair lists. The default scans
    /// the sets; a store may drop each set as soon as it is digested.
    fn scan_digests(
        &self,
        keyspace: &str,
        hashes: impl RangeBounds<u64> + Send,
    ) -> impl Future<Output = Result<Vec<(Vec<u8>, ContentHash)>, StoreError>> + Send {
        async move {
            let sets = self.scan_hashes(keyspace, hashes).await?;
            Ok(sets
                .into_iter()
                .map(|(key, set)| (key, set.digest()))
                .collect())
        }
    }

    /// One stretch of a scan ([`crate::coordinator::Coordinator::scan`]):
    /// the live keys of `keyspace` hashed in `from..=to`, in hash order,
    /// until `count` keys or `bytes_max` bytes of keys were taken (never
    /// stopping between two keys of one hash). Keys whose every version
    /// is a tombstone are skipped. The default scans the stretch whole; a
    /// store may stop reading where the page ends.
    fn scan_keys(
        &self,
        keyspace: &str,
        from: u64,
        to: u64,
        count: usize,
        bytes_max: usize,
    ) -> impl Future<Output = Result<ScanPart, StoreError>> + Send {
        async move {
            let sets = self.scan_hashes(keyspace, from..=to).await?;
            let entries = sets
                .into_iter()
                .map(|(key, set)| Ok::<_, StoreError>((key_hash(&key), key, set)));
            collect_part(entries, count, bytes_max)
        }
    }

    /// The storage engine's figures, for `/metrics` and readiness; `None`
    /// for a store without an engine (in memory).
    fn engine_stats(&self) -> Option<crate::engine::EngineStats> {
        None
    }
}

/// What one [`LocalStore::scan_keys`] call found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPart {
    /// Live keys, in hash order.
    pub keys: Vec<Vec<u8>>,
    /// Where the stretch goes on: the first hash not read, or `None` when
    /// it was read through its last hash.
    pub next: Option<u64>,
}

/// How many stored keys one [`LocalStore::scan_keys`] reads at most,
/// live or not: a stretch of tombstones ends a part early instead of
/// holding the node for as long as they last.
pub const SCAN_ENTRIES_MAX: usize = 100_000;

/// Bytes a key costs in a scan page beyond its own (its length prefix
/// and the vector around it, rounded up).
pub const SCAN_KEY_OVERHEAD_BYTES: usize = 8;

/// Take `(hash, key, set)` entries in hash order into a [`ScanPart`]:
/// the live keys (a value not expired, on this node's clock) until
/// `count` keys, `bytes_max` bytes or [`SCAN_ENTRIES_MAX`] entries were
/// read, stopping only where the hash changes.
fn collect_part<E>(
    entries: impl Iterator<Item = Result<(u64, Vec<u8>, VersionSet), E>>,
    count: usize,
    bytes_max: usize,
) -> Result<ScanPart, StoreError>
where
    StoreError: From<E>,
{
    let mut part = ScanPart::default();
    let now = crate::wall_clock::now_ms();
    let (mut bytes, mut read) = (0usize, 0usize);
    let mut last: Option<u64> = None;
    for entry in entries {
        let (hash, key, set) = entry?;
        if let Some(last) = last
            && hash != last
            && (part.keys.len() >= count || bytes >= bytes_max || read >= SCAN_ENTRIES_MAX)
        {
            // `last < hash`, so `last + 1` does not overflow.
            part.next = Some(last + 1);
            return Ok(part);
        }
        last = Some(hash);
        read += 1;
        if set.live_at(now).next().is_some() {
            bytes += key.len() + SCAN_KEY_OVERHEAD_BYTES;
            part.keys.push(key);
        }
    }
    Ok(part)
}

/// The storage key of `(keyspace, key)`.
pub fn storage_key(keyspace: &str, key: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut out = prefix_with_room(keyspace, 8 + key.len())?;
    out.extend_from_slice(&key_hash(key).to_be_bytes());
    out.extend_from_slice(key);
    Ok(out)
}

fn keyspace_prefix(keyspace: &str) -> Result<Vec<u8>, StoreError> {
    prefix_with_room(keyspace, 8)
}

/// The keyspace's prefix, in a buffer with `room` bytes more to spare.
fn prefix_with_room(keyspace: &str, room: usize) -> Result<Vec<u8>, StoreError> {
    let len = keyspace.len();
    let len_byte = u8::try_from(len).map_err(|_| StoreError::KeyspaceName { len })?;
    let mut out = Vec::with_capacity(1 + len + room);
    out.push(len_byte);
    out.extend_from_slice(keyspace.as_bytes());
    Ok(out)
}

/// Split a storage key of `keyspace` back into the user key.
fn user_key(prefix_len: usize, storage_key: &[u8]) -> Option<Vec<u8>> {
    storage_key.get(prefix_len + 8..).map(<[u8]>::to_vec)
}

/// Storage keys `lo..hi`.
type KeyRange = (Vec<u8>, Vec<u8>);

/// The storage keys `[lo, hi)` holding `keyspace`'s keys with hash in
/// `hashes`; `None` when no hash is in it.
fn hash_range(
    keyspace: &str,
    hashes: &impl RangeBounds<u64>,
) -> Result<Option<KeyRange>, StoreError> {
    let prefix = keyspace_prefix(keyspace)?;
    let first = match hashes.start_bound() {
        Bound::Included(&h) => h,
        Bound::Excluded(&h) => match h.checked_add(1) {
            Some(h) => h,
            None => return Ok(None),
        },
        Bound::Unbounded => 0,
    };
    // One past the last hash, or `None` for "through u64::MAX".
    let end = match hashes.end_bound() {
        Bound::Included(&h) => h.checked_add(1),
        Bound::Excluded(&h) => Some(h),
        Bound::Unbounded => None,
    };
    if end.is_some_and(|end| end <= first) {
        return Ok(None);
    }
    let mut lo = prefix.clone();
    lo.extend_from_slice(&first.to_be_bytes());
    let hi = match end {
        Some(end) => {
            let mut hi = prefix;
            hi.extend_from_slice(&end.to_be_bytes());
            hi
        }
        None => prefix_successor(prefix),
    };
    Ok(Some((lo, hi)))
}

/// The least byte string greater than every string starting with
/// `prefix`. A keyspace prefix always has one: its last byte is a UTF-8
/// byte or the length byte of an empty name, never 0xff.
fn prefix_successor(mut prefix: Vec<u8>) -> Vec<u8> {
    while let Some(last) = prefix.pop() {
        if last < u8::MAX {
            prefix.push(last + 1);
            return prefix;
        }
    }
    unreachable!("a keyspace prefix is never all 0xff bytes")
}

/// A [`LocalStore`] on the storage engine. Engine calls block (an fsync
/// may take milliseconds, a read may wait for the disk), so they run on
/// tokio's blocking pool; reads that memory can answer run inline.
#[derive(Clone)]
pub struct EngineStore {
    engine: Arc<Engine>,
}

impl EngineStore {
    /// Open (or create) the engine in `dir`.
    pub fn open(dir: &Path, options: EngineOptions) -> Result<Self, StoreError> {
        Ok(EngineStore {
            engine: Arc::new(Engine::open(dir, options)?),
        })
    }

    /// The engine underneath (for stats and admin).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Engine) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || work(&engine))
            .await
            .map_err(|e| StoreError::Failed {
                reason: format!("storage task failed: {e}"),
            })?
    }
}

impl LocalStore for EngineStore {
    fn engine_stats(&self) -> Option<crate::engine::EngineStats> {
        Some(self.engine().stats())
    }

    async fn apply(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        self.apply_unsettled(keyspace, key, versions)
            .await?
            .settle_now()
    }

    async fn apply_unsettled(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<Settle, StoreError> {
        self.apply_unsettled_over(
            keyspace,
            key,
            versions,
            ReadMark::default(),
            &VersionSet::new(),
        )
        .await
    }

    async fn apply_unsettled_over(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
        mark: ReadMark,
        full: &VersionSet,
    ) -> Result<Settle, StoreError> {
        let skey = storage_key(keyspace, key)?;
        // One version (a client's write, a replica's apply): inline when
        // the engine can take it without blocking for long, which spares
        // the two thread hand-offs of the blocking pool (they cost more
        // than the write); the write(2) is the caller's to settle.
        let versions = match <[Version; 1]>::try_from(versions) {
            Ok([version]) => match self.engine.try_apply_unwritten_over(
                &skey,
                version,
                mark.0.map(|mark| (mark, full)),
            ) {
                Ok(taken) => return Ok(Settle(Some(taken?))),
                Err(version) => vec![version],
            },
            Err(versions) => versions,
        };
        self.blocking(move |engine| {
            engine.apply_batch(versions.into_iter().map(|v| (skey.clone(), v)))?;
            Ok(())
        })
        .await?;
        Ok(Settle::default())
    }

    async fn apply_many(
        &self,
        keyspace: &str,
        entries: Vec<(Vec<u8>, Vec<Version>)>,
    ) -> Result<(), StoreError> {
        let mut batch = Vec::with_capacity(entries.len());
        for (key, versions) in entries {
            let skey = storage_key(keyspace, &key)?;
            batch.extend(versions.into_iter().map(|v| (skey.clone(), v)));
        }
        self.blocking(move |engine| {
            engine.apply_batch(batch)?;
            Ok(())
        })
        .await
    }

    async fn get(&self, keyspace: &str, key: &[u8]) -> Result<VersionSet, StoreError> {
        let skey = storage_key(keyspace, key)?;
        // Most reads are answered from memory: inline, without the two
        // thread hand-offs of the blocking pool (they cost more than the
        // lookup). Only a read that must touch a file goes there.
        if let Some(answer) = self.engine.get_cached(&skey) {
            return Ok(answer?);
        }
        self.blocking(move |engine| Ok(engine.get(&skey)?)).await
    }

    async fn get_marked(
        &self,
        keyspace: &str,
        key: &[u8],
    ) -> Result<(VersionSet, ReadMark), StoreError> {
        let skey = storage_key(keyspace, key)?;
        if let Some(answer) = self.engine.get_cached_marked(&skey) {
            let (set, mark) = answer?;
            return Ok((set, ReadMark(Some(mark))));
        }
        let set = self.blocking(move |engine| Ok(engine.get(&skey)?)).await?;
        Ok((set, ReadMark::default()))
    }

    async fn scan_hashes(
        &self,
        keyspace: &str,
        hashes: impl RangeBounds<u64> + Send,
    ) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
        let Some((lo, hi)) = hash_range(keyspace, &hashes)? else {
            return Ok(Vec::new());
        };
        let prefix_len = 1 + keyspace.len();
        self.blocking(move |engine| scan_storage(engine, prefix_len, lo, hi))
            .await
    }

    async fn scan_keys(
        &self,
        keyspace: &str,
        from: u64,
        to: u64,
        count: usize,
        bytes_max: usize,
    ) -> Result<ScanPart, StoreError> {
        let Some((lo, hi)) = hash_range(keyspace, &(from..=to))? else {
            return Ok(ScanPart::default());
        };
        let prefix_len = 1 + keyspace.len();
        self.blocking(move |engine| {
            let entries = engine.scan(lo..hi)?.filter_map(|entry| match entry {
                Ok((skey, set)) => {
                    let hash = skey.get(prefix_len..prefix_len + 8)?;
                    let hash = u64::from_be_bytes(hash.try_into().ok()?);
                    Some(Ok((hash, user_key(prefix_len, &skey)?, set)))
                }
                Err(e) => Some(Err(e)),
            });
            collect_part(entries, count, bytes_max)
        })
        .await
    }

    async fn scan_digests(
        &self,
        keyspace: &str,
        hashes: impl RangeBounds<u64> + Send,
    ) -> Result<Vec<(Vec<u8>, ContentHash)>, StoreError> {
        let Some((lo, hi)) = hash_range(keyspace, &hashes)? else {
            return Ok(Vec::new());
        };
        let prefix_len = 1 + keyspace.len();
        self.blocking(move |engine| {
            let mut out = Vec::new();
            for entry in engine.scan(lo..hi)? {
                let (skey, set) = entry?;
                if let Some(key) = user_key(prefix_len, &skey) {
                    out.push((key, set.digest()));
                }
            }
            Ok(out)
        })
        .await
    }
}

/// Reads of a replica's store on the calling thread, for readers that
/// cannot await (the resolver registry, read from inside a merge). They
/// may block on disk: never on a hot async path.
pub trait BlockingRead: Send + Sync + 'static {
    /// This replica's set of `key` in `keyspace` (empty when absent).
    fn get_blocking(&self, keyspace: &str, key: &[u8]) -> Result<VersionSet, StoreError>;

    /// Every `(key, set)` of `keyspace`, in storage order (by key hash).
    fn scan_blocking(&self, keyspace: &str) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError>;

    /// The `(key, set)` pairs of `keyspace` whose key `keep` accepts, in
    /// storage order. The others are dropped as the scan meets them, so
    /// the answer holds only what was asked for (the registry lists its
    /// records without holding every module).
    fn scan_blocking_where(
        &self,
        keyspace: &str,
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
        let mut all = self.scan_blocking(keyspace)?;
        all.retain(|(key, _)| keep(key));
        Ok(all)
    }
}

impl BlockingRead for Engine {
    fn get_blocking(&self, keyspace: &str, key: &[u8]) -> Result<VersionSet, StoreError> {
        get_blocking(self, keyspace, key)
    }

    fn scan_blocking(&self, keyspace: &str) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
        scan_blocking(self, keyspace, ..)
    }

    fn scan_blocking_where(
        &self,
        keyspace: &str,
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
        match hash_range(keyspace, &(..))? {
            Some((lo, hi)) => scan_storage_where(self, 1 + keyspace.len(), lo, hi, keep),
            None => Ok(Vec::new()),
        }
    }
}

/// [`LocalStore::get`] on the calling thread, for callers that cannot
/// await (the resolver registry, read from inside a merge). It may block
/// on disk: never call it on a hot async path.
pub fn get_blocking(engine: &Engine, keyspace: &str, key: &[u8]) -> Result<VersionSet, StoreError> {
    Ok(engine.get(&storage_key(keyspace, key)?)?)
}

/// [`LocalStore::scan_hashes`] on the calling thread (see
/// [`get_blocking`]).
pub fn scan_blocking(
    engine: &Engine,
    keyspace: &str,
    hashes: impl RangeBounds<u64>,
) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
    match hash_range(keyspace, &hashes)? {
        Some((lo, hi)) => scan_storage(engine, 1 + keyspace.len(), lo, hi),
        None => Ok(Vec::new()),
    }
}

fn scan_storage(
    engine: &Engine,
    prefix_len: usize,
    lo: Vec<u8>,
    hi: Vec<u8>,
) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
    scan_storage_where(engine, prefix_len, lo, hi, &|_| true)
}

fn scan_storage_where(
    engine: &Engine,
    prefix_len: usize,
    lo: Vec<u8>,
    hi: Vec<u8>,
    keep: &dyn Fn(&[u8]) -> bool,
) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
    let mut out = Vec::new();
    for entry in engine.scan(lo..hi)? {
        let (skey, set) = entry?;
        if let Some(key) = user_key(prefix_len, &skey)
            && keep(&key)
        {
            out.push((key, set));
        }
    }
    Ok(out)
}

/// An in-memory [`LocalStore`] for simulations and unit tests. Cloning
/// shares the data, so a simulated node "restarted" with a clone of its
/// store finds what it had written (as a node finds its disk).
#[derive(Clone, Default)]
pub struct MemStore {
    data: Arc<Mutex<BTreeMap<Vec<u8>, VersionSet>>>,
    /// While set, every read fails (a disk that cannot be read); shared
    /// by clones.
    failing_reads: Arc<std::sync::atomic::AtomicBool>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make every read of this store (and its clones) fail from now on
    /// (`true`), or succeed again (`false`).
    pub fn fail_reads(&self, failing: bool) {
        self.failing_reads
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }
}

impl LocalStore for MemStore {
    async fn apply(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        let skey = storage_key(keyspace, key)?;
        let mut data = self.data.lock();
        let set = data.entry(skey).or_default();
        for v in versions {
            set.absorb(v);
        }
        Ok(())
    }

    async fn apply_many(
        &self,
        keyspace: &str,
        entries: Vec<(Vec<u8>, Vec<Version>)>,
    ) -> Result<(), StoreError> {
        for (key, versions) in entries {
            self.apply(keyspace, &key, versions).await?;
        }
        Ok(())
    }

    async fn get(&self, keyspace: &str, key: &[u8]) -> Result<VersionSet, StoreError> {
        if self.failing_reads.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Failed {
                reason: "reads made to fail (MemStore::fail_reads)".into(),
            });
        }
        let skey = storage_key(keyspace, key)?;
        Ok(self.data.lock().get(&skey).cloned().unwrap_or_default())
    }

    async fn scan_hashes(
        &self,
        keyspace: &str,
        hashes: impl RangeBounds<u64> + Send,
    ) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
        let Some((lo, hi)) = hash_range(keyspace, &hashes)? else {
            return Ok(Vec::new());
        };
        let prefix_len = 1 + keyspace.len();
        let data = self.data.lock();
        Ok(data
            .range(lo..hi)
            .filter_map(|(k, set)| Some((user_key(prefix_len, k)?, set.clone())))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Clock, Dot};

    fn version(actor: u64, value: &[u8]) -> Version {
        let clock = Clock::from_parts(
            [],
            [Dot {
                actor: Actor(actor),
                counter: 1,
            }],
        );
        Version::value(clock, value.to_vec(), 1, "dc1".into())
    }

    async fn exercise(store: impl LocalStore) {
        store
            .apply("carts", b"alice", vec![version(1, b"a")])
            .await
            .unwrap();
        store
            .apply("carts", b"alice", vec![version(2, b"b")])
            .await
            .unwrap();
        store
            .apply("other", b"alice", vec![version(3, b"c")])
            .await
            .unwrap();
        assert_eq!(store.get("carts", b"alice").await.unwrap().len(), 2);
        assert_eq!(store.get("other", b"alice").await.unwrap().len(), 1);
        assert!(store.get("carts", b"bob").await.unwrap().is_empty());
        for i in 0..100u32 {
            store
                .apply("carts", &i.to_be_bytes(), vec![version(1, b"x")])
                .await
                .unwrap();
        }
        let all = store.scan_hashes("carts", 0..u64::MAX).await.unwrap();
        assert_eq!(all.len(), 101);
        let hashes: Vec<u64> = all.iter().map(|(k, _)| key_hash(k)).collect();
        assert!(
            hashes.windows(2).all(|w| w[0] <= w[1]),
            "scan is in hash order"
        );
        let half = store.scan_hashes("carts", 0..1 << 63).await.unwrap();
        assert!(half.iter().all(|(k, _)| key_hash(k) < 1 << 63));
        assert!(!half.is_empty() && half.len() < 101);
        // Every range form, including the hash u64::MAX and empty ranges.
        assert_eq!(store.scan_hashes("carts", ..).await.unwrap().len(), 101);
        let first = hashes[0];
        assert_eq!(
            store
                .scan_hashes("carts", first..=first)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .scan_hashes("carts", first..first)
                .await
                .unwrap()
                .is_empty()
        );
        let (hi, lo) = (3u64, 9u64);
        assert!(store.scan_hashes("carts", lo..hi).await.unwrap().is_empty());
        assert!(
            store
                .scan_hashes("carts", (Bound::Excluded(u64::MAX), Bound::Unbounded))
                .await
                .unwrap()
                .is_empty()
        );
        let tail = store.scan_hashes("carts", first + 1..).await.unwrap();
        assert_eq!(tail.len(), 100);
        let digests = store.scan_digests("carts", ..).await.unwrap();
        assert_eq!(digests.len(), 101);
        for ((k, set), (dk, digest)) in all.iter().zip(&digests) {
            assert_eq!((k, set.digest()), (dk, *digest));
        }
        let long = "x".repeat(300);
        assert!(matches!(
            store.get(&long, b"k").await,
            Err(StoreError::KeyspaceName { len: 300 })
        ));
    }

    #[tokio::test]
    async fn mem_store_keeps_keyspaces_apart_and_scans_by_hash() {
        exercise(MemStore::new()).await;
    }

    #[tokio::test]
    async fn engine_store_keeps_keyspaces_apart_and_scans_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        exercise(EngineStore::open(dir.path(), EngineOptions::default()).unwrap()).await;
    }

    /// Pages of `scan_keys` walked from hash 0 to the end: every live key
    /// once, in hash order, tombstones and other keyspaces skipped, pages
    /// of `count` keys at most.
    async fn scan_pages(store: impl LocalStore) {
        let mut live = Vec::new();
        for i in 0..200u32 {
            let key = format!("k{i}").into_bytes();
            if i % 10 == 3 {
                let tomb = Version::tombstone(
                    Clock::from_parts(
                        [],
                        [Dot {
                            actor: Actor(1),
                            counter: 1,
                        }],
                    ),
                    1,
                    "dc1".into(),
                );
                store.apply("carts", &key, vec![tomb]).await.unwrap();
            } else {
                store
                    .apply("carts", &key, vec![version(1, b"v")])
                    .await
                    .unwrap();
                live.push(key.clone());
            }
            store
                .apply("other", &key, vec![version(1, b"v")])
                .await
                .unwrap();
        }
        live.sort_by_key(|k| (key_hash(k), k.clone()));
        let mut seen = Vec::new();
        let mut from = 0u64;
        let mut parts = 0;
        loop {
            let part = store
                .scan_keys("carts", from, u64::MAX, 7, 1 << 20)
                .await
                .unwrap();
            assert!(part.keys.len() <= 7);
            parts += 1;
            seen.extend(part.keys);
            match part.next {
                Some(next) => {
                    assert!(next > from);
                    from = next;
                }
                None => break,
            }
        }
        assert_eq!(seen, live);
        assert!(parts >= 180 / 7);
        // A byte budget ends a part after the first key past it.
        let part = store.scan_keys("carts", 0, u64::MAX, 100, 1).await.unwrap();
        assert_eq!(part.keys.len(), 1);
        assert_eq!(part.next, Some(key_hash(&part.keys[0]) + 1));
        // A stretch ends at its last hash.
        let mid = key_hash(&live[90]);
        let part = store
            .scan_keys("carts", 0, mid, 10_000, 1 << 20)
            .await
            .unwrap();
        assert_eq!(part.keys, live[..=90].to_vec());
        assert_eq!(part.next, None);
    }

    #[tokio::test]
    async fn mem_store_scans_live_keys_in_pages() {
        scan_pages(MemStore::new()).await;
    }

    #[tokio::test]
    async fn engine_store_scans_live_keys_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        scan_pages(EngineStore::open(dir.path(), EngineOptions::default()).unwrap()).await;
    }

    /// Keys of one hash stay in one part, whatever the count.
    #[test]
    fn a_part_never_ends_inside_a_hash() {
        let set = VersionSet::from_versions([version(1, b"v")]);
        let entries = [
            (5u64, b"a".to_vec()),
            (5, b"b".to_vec()),
            (6, b"c".to_vec()),
        ]
        .into_iter()
        .map(|(h, k)| Ok::<_, StoreError>((h, k, set.clone())));
        let part = collect_part(entries, 1, 1 << 20).unwrap();
        assert_eq!(part.keys, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(part.next, Some(6));
    }
}
