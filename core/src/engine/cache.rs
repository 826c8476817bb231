//! Open table handles (bounded by `Limits::open_files_max`) and the table
//! entries the levels hold. (Decoded blocks are cached by
//! [`super::block_cache`].)
//!
//! A table's file is deleted only when the last reader lets go of it: a
//! compaction marks its inputs obsolete, and the file is removed when the
//! last snapshot of the levels that names it drops. Readers never find a
//! table gone from under them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::block_cache::BlockCache;
use super::bloom::KeyFilter;
use super::error::EngineError;
use super::manifest::TableMeta;
use super::sstable::{TableReader, key_prefix};
use crate::fs::Fs;

/// Open table handles keyed by table id, and the bytes every reader
/// opened through it read from its table file.
pub(crate) struct ReaderCache<F: Fs> {
    handles: quick_cache::sync::Cache<u64, Arc<TableReader<F>>>,
    bytes_read: Arc<AtomicU64>,
}

impl<F: Fs> ReaderCache<F> {
    /// A cache of at most `capacity` open handles.
    pub(crate) fn new(capacity: usize) -> Self {
        ReaderCache {
            handles: quick_cache::sync::Cache::new(capacity),
            bytes_read: Arc::default(),
        }
    }

    /// Bytes read from table files (footers, indexes, filters, blocks).
    pub(crate) fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    fn get_or_insert_with(
        &self,
        id: &u64,
        open: impl FnOnce() -> Result<Arc<TableReader<F>>, EngineError>,
    ) -> Result<Arc<TableReader<F>>, EngineError> {
        self.handles.get_or_insert_with(id, open)
    }

    fn get(&self, id: &u64) -> Option<Arc<TableReader<F>>> {
        self.handles.get(id)
    }

    fn remove(&self, id: &u64) {
        self.handles.remove(id);
    }
}

/// One table as the levels know it.
pub(crate) struct Table<F: Fs> {
    pub(crate) meta: TableMeta,
    path: PathBuf,
    fs: F,
    readers: Arc<ReaderCache<F>>,
    /// The bloom filter, kept once a reader has been opened, so that a
    /// read can skip this table without a reader-cache lookup (and after
    /// the handle cache dropped the reader). Memory: the filters of all
    /// live tables, about 1.2 bytes per key (1% false positives).
    filter: OnceLock<Arc<KeyFilter>>,
    /// `key_prefix` of the smallest and largest keys: most `covers`
    /// answers without comparing byte strings.
    min_prefix: u64,
    max_prefix: u64,
    obsolete: AtomicBool,
}

impl<F: Fs> Table<F> {
    pub(crate) fn new(meta: TableMeta, path: PathBuf, fs: F, readers: Arc<ReaderCache<F>>) -> Self {
        Table {
            min_prefix: key_prefix(&meta.min_key),
            max_prefix: key_prefix(&meta.max_key),
            meta,
            path,
            fs,
            readers,
            filter: OnceLock::new(),
            obsolete: AtomicBool::new(false),
        }
    }

    /// The open reader, opening the file if the handle cache dropped it.
    pub(crate) fn reader(&self) -> Result<Arc<TableReader<F>>, EngineError> {
        let r = self.readers.get_or_insert_with(&self.meta.id, || {
            TableReader::open_counted(
                &self.fs,
                &self.path,
                self.meta.id,
                self.readers.bytes_read.clone(),
            )
            .map(Arc::new)
        })?;
        if self.filter.get().is_none() {
            let _ = self.filter.set(r.filter());
        }
        Ok(r)
    }

    /// Open the reader and load its data blocks into `blocks` while it
    /// has room, for a table about to take over reads that memory
    /// answered.
    pub(crate) fn warm(&self, blocks: &BlockCache) -> Result<(), EngineError> {
        self.reader()?.warm(blocks)
    }

    /// May the table hold `key` (its bloom filter; opens the reader the
    /// first time)?
    /// `hash` is [`super::bloom::key_hash`]`(key)`, computed once per read.
    pub(crate) fn may_contain(&self, key: &[u8], hash: u64) -> Result<bool, EngineError> {
        if self.filter.get().is_none() {
            self.reader()?;
        }
        Ok(self
            .filter
            .get()
            .is_none_or(|f| f.may_contain_hashed(key, hash)))
    }

    /// As [`Table::may_contain`] and then the reader, without touching the
    /// file: `None` when the filter is not loaded or the handle cache no
    /// longer holds the reader.
    pub(crate) fn cached_reader(
        &self,
        key: &[u8],
        hash: u64,
    ) -> Option<Option<Arc<TableReader<F>>>> {
        if !self.filter.get()?.may_contain_hashed(key, hash) {
            return Some(None);
        }
        self.readers.get(&self.meta.id).map(Some)
    }

    /// Could `key` be in this table by its key range?
    pub(crate) fn covers(&self, key: &[u8]) -> bool {
        // Prefixes order like the keys (ties aside), see `key_prefix`.
        let p = key_prefix(key);
        if p < self.min_prefix || p > self.max_prefix {
            return false;
        }
        (p > self.min_prefix || self.meta.min_key.as_slice() <= key)
            && (p < self.max_prefix || key <= self.meta.max_key.as_slice())
    }

    /// Delete the file once no snapshot holds this table any more.
    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::SeqCst);
    }
}

impl<F: Fs> Drop for Table<F> {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::SeqCst) {
            self.readers.remove(&self.meta.id);
            // A failure leaves an orphan that the next open removes.
            let _ = self.fs.remove(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::MemFs;

    #[test]
    fn covers_agrees_with_byte_comparison() {
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"abcdefgh".to_vec(),
            b"abcdefgh\0".to_vec(),
            b"abcdefgh\x01".to_vec(),
            b"abcdefgi".to_vec(),
            b"b".to_vec(),
            vec![0xff; 9],
        ];
        let readers = Arc::new(ReaderCache::<MemFs>::new(4));
        for lo in &keys {
            for hi in keys.iter().filter(|h| *h >= lo) {
                let meta = TableMeta {
                    id: 1,
                    size_bytes: 0,
                    entries: 1,
                    min_key: lo.clone(),
                    max_key: hi.clone(),
                };
                let t = Table::new(meta, PathBuf::from("/t"), MemFs::new(), readers.clone());
                for k in &keys {
                    assert_eq!(t.covers(k), lo <= k && k <= hi, "{k:?} in {lo:?}..={hi:?}");
                }
            }
        }
    }
}
