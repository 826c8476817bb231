//! Sorted string tables: immutable files of `(key, VersionSet)` in key
//! order, written by flushes and compactions.
//!
//! # On-disk format (version [`TABLE_FORMAT_VERSION`])
//!
//! ```text
//! [data block]* [index] [bloom filter] [footer]
//! ```
//!
//! - data blocks: see [`super::block`] (lz4 + crc32c each); each entry's
//!   value is a postcard-encoded [`VersionSet`] (see
//!   [`crate::model::Version`] for a version's encoding: formats 1 and 2
//!   hold no expiries, format 3 may);
//! - index: varint count, then per block varint key length, the block's
//!   last key, varint block offset, varint stored block length; followed
//!   by an LE u32 crc32c of those bytes;
//! - bloom filter: see [`super::bloom`];
//! - footer, [`FOOTER_BYTES`] bytes, all LE:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | index offset |
//! | 8..16 | index length |
//! | 16..24 | bloom offset |
//! | 24..32 | bloom length |
//! | 32..40 | entry count |
//! | 40..44 | format version |
//! | 44..48 | crc32c of bytes 0..44 |
//! | 48..56 | magic [`TABLE_MAGIC`] |

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::block::{BLOCK_BYTES_TARGET, Block, BlockBuilder};
use super::block_cache::BlockCache;
use super::bloom::KeyFilter;
use super::codec::{Reader, put_varint};
use super::error::EngineError;
use super::manifest::TableMeta;
use crate::fs::{Fs, FsFile};
use crate::model::VersionSet;

/// Format version of tables written by this build (3: versions may carry
/// an expiry, which formats 1 and 2 never hold; their bytes decode as
/// format 3's).
pub const TABLE_FORMAT_VERSION: u32 = 3;
/// Oldest table format version still read (1: SipHash bloom filter).
pub const TABLE_FORMAT_VERSION_MIN: u32 = 1;
/// Magic number closing every table ("ISTHMSST").
pub const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"ISTHMSST");
/// Size of the footer.
pub const FOOTER_BYTES: usize = 56;
/// Bytes buffered by a writer before they are appended to the file.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// The decoded footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Table format version (1: SipHash bloom filter; 2: blocked; 3:
    /// versions with expiries).
    pub version: u32,
    /// Offset of the index.
    pub index_offset: u64,
    /// Length of the index (with its checksum).
    pub index_len: u64,
    /// Offset of the bloom filter.
    pub bloom_offset: u64,
    /// Length of the bloom filter (with its checksum).
    pub bloom_len: u64,
    /// Keys in the table.
    pub entries: u64,
}

impl Footer {
    fn encode(&self) -> [u8; FOOTER_BYTES] {
        let mut out = [0u8; FOOTER_BYTES];
        out[0..8].copy_from_slice(&self.index_offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.index_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.bloom_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.bloom_len.to_le_bytes());
        out[32..40].copy_from_slice(&self.entries.to_le_bytes());
        out[40..44].copy_from_slice(&self.version.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..44]);
        out[44..48].copy_from_slice(&crc.to_le_bytes());
        out[48..56].copy_from_slice(&TABLE_MAGIC.to_le_bytes());
        out
    }

    /// Decode and check a footer of a file of `file_len` bytes. Never
    /// panics. Errors are (reason, is-format-version-mismatch(found)).
    pub fn decode(bytes: &[u8], file_len: u64) -> Result<Footer, FooterError> {
        if bytes.len() != FOOTER_BYTES {
            return Err(FooterError::Corrupt("footer has the wrong size"));
        }
        let mut r = Reader::new(bytes);
        let mut u64s = [0u64; 5];
        for v in &mut u64s {
            *v = r.u64().map_err(FooterError::Corrupt)?;
        }
        let version = r.u32().map_err(FooterError::Corrupt)?;
        let crc = r.u32().map_err(FooterError::Corrupt)?;
        let magic = r.u64().map_err(FooterError::Corrupt)?;
        if magic != TABLE_MAGIC {
            return Err(FooterError::Corrupt("bad table magic"));
        }
        if crc32c::crc32c(&bytes[0..44]) != crc {
            return Err(FooterError::Corrupt("footer checksum mismatch"));
        }
        if !(TABLE_FORMAT_VERSION_MIN..=TABLE_FORMAT_VERSION).contains(&version) {
            return Err(FooterError::Version(version));
        }
        let [index_offset, index_len, bloom_offset, bloom_len, entries] = u64s;
        let body_end = file_len.saturating_sub(FOOTER_BYTES as u64);
        let index_end = index_offset.checked_add(index_len);
        let bloom_end = bloom_offset.checked_add(bloom_len);
        match (index_end, bloom_end) {
            (Some(ie), Some(be)) if ie == bloom_offset && be == body_end => {}
            _ => return Err(FooterError::Corrupt("footer offsets do not fit the file")),
        }
        Ok(Footer {
            version,
            index_offset,
            index_len,
            bloom_offset,
            bloom_len,
            entries,
        })
    }
}

/// Why a footer was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FooterError {
    /// Damaged or not a table.
    Corrupt(&'static str),
    /// A valid footer of another format version.
    Version(u32),
}

/// One index entry: where a block is and the last key it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Largest key in the block.
    pub last_key: Vec<u8>,
    /// Offset of the stored block.
    pub offset: u64,
    /// Length of the stored block (with checksum).
    pub len: u64,
}

fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, entries.len() as u64);
    for e in entries {
        put_varint(&mut out, e.last_key.len() as u64);
        out.extend_from_slice(&e.last_key);
        put_varint(&mut out, e.offset);
        put_varint(&mut out, e.len);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Verify and decode a stored index; blocks must be in key and file order
/// and end before `data_end`. Never panics.
pub fn decode_index(stored: &[u8], data_end: u64) -> Result<Vec<IndexEntry>, &'static str> {
    if stored.len() < 4 {
        return Err("index shorter than its checksum");
    }
    let (body, crc) = stored.split_at(stored.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err("index checksum mismatch");
    }
    let mut r = Reader::new(body);
    let count = r.varint()?;
    let mut out: Vec<IndexEntry> = Vec::with_capacity(count.min(4096) as usize);
    let mut next_offset = 0u64;
    for _ in 0..count {
        let last_key = r.slice()?.to_vec();
        let offset = r.varint()?;
        let len = r.varint()?;
        let end = offset.checked_add(len).ok_or("block extent overflows")?;
        if offset != next_offset || end > data_end || len < 8 {
            return Err("index block extents are not contiguous");
        }
        if out.last().is_some_and(|p| p.last_key >= last_key) {
            return Err("index keys out of order");
        }
        next_offset = end;
        out.push(IndexEntry {
            last_key,
            offset,
            len,
        });
    }
    if !r.is_empty() || next_offset != data_end {
        return Err("index does not cover the data blocks exactly");
    }
    Ok(out)
}

/// Writes one table.
pub(crate) struct TableWriter<F: Fs> {
    file: F::File,
    path: PathBuf,
    pending: Vec<u8>,
    offset: u64,
    block: BlockBuilder,
    block_last_key: Vec<u8>,
    index: Vec<IndexEntry>,
    filter: KeyFilter,
    min_key: Option<Vec<u8>>,
    entries: u64,
    id: u64,
}

impl<F: Fs> TableWriter<F> {
    /// The file being written.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Start table `id` in `dir`, sized for about `expected_keys` keys.
    pub(crate) fn create(
        fs: &F,
        dir: &Path,
        id: u64,
        expected_keys: usize,
    ) -> Result<Self, EngineError> {
        let path = super::manifest::table_path(dir, id);
        let file = fs.create(&path).map_err(|e| EngineError::io(&path, e))?;
        Ok(TableWriter {
            file,
            path,
            pending: Vec::with_capacity(WRITE_BUFFER_BYTES + BLOCK_BYTES_TARGET * 2),
            offset: 0,
            block: BlockBuilder::default(),
            block_last_key: Vec::new(),
            index: Vec::new(),
            filter: KeyFilter::with_capacity(expected_keys),
            min_key: None,
            entries: 0,
            id,
        })
    }

    /// Add the next key (strictly ascending) with its encoded set.
    pub(crate) fn add(&mut self, key: &[u8], encoded_set: &[u8]) -> Result<(), EngineError> {
        if self.min_key.is_none() {
            self.min_key = Some(key.to_vec());
        }
        self.filter.insert(key);
        self.block.add(key, encoded_set);
        self.block_last_key.clear();
        self.block_last_key.extend_from_slice(key);
        self.entries += 1;
        if self.block.raw_len() >= BLOCK_BYTES_TARGET {
            self.finish_block()?;
        }
        Ok(())
    }

    fn finish_block(&mut self) -> Result<(), EngineError> {
        if self.block.is_empty() {
            return Ok(());
        }
        let len = self.block.finish_into(&mut self.pending) as u64;
        self.index.push(IndexEntry {
            last_key: self.block_last_key.clone(),
            offset: self.offset,
            len,
        });
        self.offset += len;
        if self.pending.len() >= WRITE_BUFFER_BYTES {
            self.write_pending()?;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), EngineError> {
        self.file
            .append(&self.pending)
            .map_err(|e| EngineError::io(&self.path, e))?;
        self.pending.clear();
        Ok(())
    }

    /// Bytes produced so far (written or buffered).
    pub(crate) fn bytes(&self) -> u64 {
        self.offset + self.block.raw_len() as u64 / 2
    }

    /// Number of keys added.
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// Write index, filter and footer, fsync; the caller records the
    /// table in the manifest (which also syncs the directory).
    pub(crate) fn finish(mut self) -> Result<TableMeta, EngineError> {
        self.finish_block()?;
        let index = encode_index(&self.index);
        let bloom = self.filter.encode();
        let footer = Footer {
            version: TABLE_FORMAT_VERSION,
            index_offset: self.offset,
            index_len: index.len() as u64,
            bloom_offset: self.offset + index.len() as u64,
            bloom_len: bloom.len() as u64,
            entries: self.entries,
        };
        self.pending.extend_from_slice(&index);
        self.pending.extend_from_slice(&bloom);
        self.pending.extend_from_slice(&footer.encode());
        self.write_pending()?;
        self.file
            .sync()
            .map_err(|e| EngineError::io(&self.path, e))?;
        let size_bytes = footer.bloom_offset + footer.bloom_len + FOOTER_BYTES as u64;
        Ok(TableMeta {
            id: self.id,
            size_bytes,
            entries: self.entries,
            min_key: self.min_key.unwrap_or_default(),
            max_key: self.block_last_key,
        })
    }
}

/// The first 8 bytes of `key`, big-endian, zero-padded: ordering keys by
/// this is coarser than, and consistent with, ordering them by bytes.
pub(crate) fn key_prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

/// An open table: file handle, index and filter in memory.
pub struct TableReader<F: Fs> {
    id: u64,
    path: PathBuf,
    file: F::File,
    index: Vec<IndexEntry>,
    /// `key_prefix` of each index entry's last key, contiguous: a lookup
    /// binary-searches these integers and compares full keys (one pointer
    /// chase each) only among blocks whose prefixes tie.
    index_prefixes: Vec<u64>,
    filter: std::sync::Arc<KeyFilter>,
    /// Bytes this reader read from its file, added to a count its engine
    /// shares among its readers.
    bytes_read: Arc<AtomicU64>,
}

impl<F: Fs> TableReader<F> {
    /// Open table `id` at `path`, verifying footer, index and filter.
    pub fn open(fs: &F, path: &Path, id: u64) -> Result<Self, EngineError> {
        Self::open_counted(fs, path, id, Arc::default())
    }

    /// [`TableReader::open`], adding every byte read from the file
    /// (footer, index and filter now, blocks later) to `bytes_read`.
    pub fn open_counted(
        fs: &F,
        path: &Path,
        id: u64,
        bytes_read: Arc<AtomicU64>,
    ) -> Result<Self, EngineError> {
        let file = fs.open(path).map_err(|e| EngineError::io(path, e))?;
        let len = file.size().map_err(|e| EngineError::io(path, e))?;
        if len < FOOTER_BYTES as u64 {
            return Err(EngineError::corrupt(
                path,
                0,
                "table shorter than its footer",
            ));
        }
        let footer_at = len - FOOTER_BYTES as u64;
        let mut fb = [0u8; FOOTER_BYTES];
        file.read_at(&mut fb, footer_at)
            .map_err(|e| EngineError::io(path, e))?;
        bytes_read.fetch_add(FOOTER_BYTES as u64, Ordering::Relaxed);
        let footer = match Footer::decode(&fb, len) {
            Ok(f) => f,
            Err(FooterError::Corrupt(r)) => return Err(EngineError::corrupt(path, footer_at, r)),
            Err(FooterError::Version(found)) => {
                return Err(EngineError::FormatVersion {
                    file: path.to_path_buf(),
                    found,
                    expected: TABLE_FORMAT_VERSION,
                });
            }
        };
        let read = |offset: u64, n: u64| -> Result<Vec<u8>, EngineError> {
            let mut buf = vec![0u8; n as usize];
            file.read_at(&mut buf, offset)
                .map_err(|e| EngineError::io(path, e))?;
            bytes_read.fetch_add(n, Ordering::Relaxed);
            Ok(buf)
        };
        let index_bytes = read(footer.index_offset, footer.index_len)?;
        let index = decode_index(&index_bytes, footer.index_offset)
            .map_err(|r| EngineError::corrupt(path, footer.index_offset, r))?;
        let bloom_bytes = read(footer.bloom_offset, footer.bloom_len)?;
        let decode_filter = if footer.version == 1 {
            KeyFilter::decode_v1
        } else {
            KeyFilter::decode
        };
        let filter = decode_filter(&bloom_bytes)
            .map_err(|r| EngineError::corrupt(path, footer.bloom_offset, r))?;
        Ok(TableReader {
            id,
            path: path.to_path_buf(),
            file,
            index_prefixes: index.iter().map(|e| key_prefix(&e.last_key)).collect(),
            index,
            filter: std::sync::Arc::new(filter),
            bytes_read,
        })
    }

    /// May this table hold `key`?
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.filter.may_contain(key)
    }

    /// The table's bloom filter, shared.
    pub(crate) fn filter(&self) -> std::sync::Arc<KeyFilter> {
        self.filter.clone()
    }

    fn read_block(&self, i: usize) -> Result<Block, EngineError> {
        let e = &self.index[i];
        let mut buf = vec![0u8; e.len as usize];
        self.file
            .read_at(&mut buf, e.offset)
            .map_err(|err| EngineError::io(&self.path, err))?;
        self.bytes_read.fetch_add(e.len, Ordering::Relaxed);
        Block::decode(&buf).map_err(|r| EngineError::corrupt(&self.path, e.offset, r))
    }

    /// Block `i` from the cache, or read and cached; also says whether
    /// it was a cache hit.
    fn cached_block(
        &self,
        i: usize,
        cache: &BlockCache,
    ) -> Result<(Arc<Block>, bool), EngineError> {
        let key = (self.id, self.index[i].offset);
        if let Some(b) = cache.get(&key) {
            return Ok((b, true));
        }
        let b = Arc::new(self.read_block(i)?);
        cache.insert(key, b.clone());
        Ok((b, false))
    }

    /// Load the data blocks into `cache` (those not there already), as
    /// many as the room it has left: in a full cache they would only push
    /// each other out of its probation queue.
    pub(crate) fn warm(&self, cache: &BlockCache) -> Result<(), EngineError> {
        let mut room = cache.capacity().saturating_sub(cache.weight());
        for i in 0..self.index.len() {
            if room == 0 {
                break;
            }
            let (block, _) = self.cached_block(i, cache)?;
            room = room.saturating_sub(block.mem_bytes() as u64);
        }
        Ok(())
    }

    /// The key's set in this table (bloom filter already consulted by the
    /// caller), and whether the block came from the cache.
    pub(crate) fn get(
        &self,
        key: &[u8],
        cache: &BlockCache,
    ) -> Result<(Option<VersionSet>, bool), EngineError> {
        let i = self.block_for(key);
        if i == self.index.len() {
            return Ok((None, true));
        }
        let (block, hit) = self.cached_block(i, cache)?;
        Ok((self.find(&block, i, key)?, hit))
    }

    /// As [`TableReader::get`], from the block cache only: `None` when the
    /// key's block is not cached (answering would read the file).
    pub(crate) fn get_cached(
        &self,
        key: &[u8],
        cache: &BlockCache,
    ) -> Option<Result<Option<VersionSet>, EngineError>> {
        let i = self.block_for(key);
        if i == self.index.len() {
            return Some(Ok(None));
        }
        let block = cache.get(&(self.id, self.index[i].offset))?;
        Some(self.find(&block, i, key))
    }

    /// The key's set in block `i`, decoded.
    fn find(&self, block: &Block, i: usize, key: &[u8]) -> Result<Option<VersionSet>, EngineError> {
        match block.get(key) {
            None => Ok(None),
            Some(v) => VersionSet::decode(v).map(Some).map_err(|e| {
                EngineError::corrupt(
                    &self.path,
                    self.index[i].offset,
                    format!("undecodable version set: {e}"),
                )
            }),
        }
    }

    /// Index of the first block whose last key is `>= key`.
    fn block_for(&self, key: &[u8]) -> usize {
        let p = key_prefix(key);
        let lo = self.index_prefixes.partition_point(|&x| x < p);
        let hi = lo + self.index_prefixes[lo..].partition_point(|&x| x <= p);
        lo + self.index[lo..hi].partition_point(|e| e.last_key.as_slice() < key)
    }

    /// Number of data blocks.
    pub(crate) fn block_count(&self) -> usize {
        self.index.len()
    }
}

/// Iterates a table's entries in key order, from a start key, reading
/// blocks directly (scans and compactions do not pollute the block cache).
pub(crate) struct TableIter<F: Fs> {
    reader: Arc<TableReader<F>>,
    block_idx: usize,
    block: Option<Block>,
    pos: usize,
    failed: bool,
}

impl<F: Fs> TableIter<F> {
    /// Position at the first key `>= start` (or the first key).
    pub(crate) fn new(
        reader: Arc<TableReader<F>>,
        start: Option<&[u8]>,
    ) -> Result<Self, EngineError> {
        let block_idx = match start {
            Some(s) => reader.block_for(s),
            None => 0,
        };
        let mut it = TableIter {
            reader,
            block_idx,
            block: None,
            pos: 0,
            failed: false,
        };
        if it.block_idx < it.reader.block_count() {
            let b = it.reader.read_block(it.block_idx)?;
            it.pos = start.map_or(0, |s| b.seek(s));
            it.block = Some(b);
        }
        Ok(it)
    }
}

impl<F: Fs> Iterator for TableIter<F> {
    type Item = Result<(Vec<u8>, VersionSet), EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let block = self.block.as_ref()?;
            if self.pos < block.len() {
                let (k, v) = block.entry(self.pos);
                self.pos += 1;
                let offset = self.reader.index[self.block_idx].offset;
                return Some(match VersionSet::decode(v) {
                    Ok(set) => Ok((k.to_vec(), set)),
                    Err(e) => {
                        self.failed = true;
                        Err(EngineError::corrupt(
                            &self.reader.path,
                            offset,
                            format!("undecodable version set: {e}"),
                        ))
                    }
                });
            }
            self.block_idx += 1;
            self.pos = 0;
            if self.block_idx >= self.reader.block_count() {
                self.block = None;
                return None;
            }
            match self.reader.read_block(self.block_idx) {
                Ok(b) => self.block = Some(b),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::MemFs;

    #[test]
    fn prefix_search_finds_the_same_block_as_a_full_key_search() {
        let fs = MemFs::new();
        let dir = Path::new("/t");
        let mut w = TableWriter::create(&fs, dir, 1, 1000).unwrap();
        // Many keys sharing 8-byte prefixes, and short keys that the zero
        // padding makes tie with longer ones.
        let mut keys: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| {
                let mut k = vec![b'p'; (i % 3) as usize * 4];
                k.extend_from_slice(&(i / 7).to_be_bytes());
                k.extend_from_slice(&i.to_be_bytes());
                k
            })
            .collect();
        keys.push(vec![]);
        keys.push(vec![0]);
        keys.sort();
        keys.dedup();
        for k in &keys {
            w.add(k, &[7u8; 40]).unwrap();
        }
        w.finish().unwrap();
        let r = TableReader::open(&fs, &super::super::manifest::table_path(dir, 1), 1).unwrap();
        assert!(r.block_count() > 10);
        let mut probes = keys.clone();
        probes.extend(keys.iter().map(|k| [k.as_slice(), &[0]].concat()));
        probes.push(vec![0xff; 20]);
        for p in &probes {
            let naive = r
                .index
                .partition_point(|e| e.last_key.as_slice() < p.as_slice());
            assert_eq!(r.block_for(p), naive, "{p:?}");
        }
    }
}
