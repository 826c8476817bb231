//! Data blocks: the unit of compression, checksumming and caching in a
//! table.
//!
//! # On-disk format (table format version [`super::sstable::TABLE_FORMAT_VERSION`])
//!
//! A stored block is `lz4(raw) ++ crc32c(lz4(raw))` where `lz4` is
//! lz4_flex's block format with the uncompressed size prepended (LE u32)
//! and the trailing checksum is an LE u32 over the compressed bytes.
//! Since table format 2, a block that lz4 would not shrink is stored as
//! is: `(len | RAW_FLAG) ++ raw ++ crc32c(...)` with
//! [`RAW_FLAG`] the top bit of the size prefix (never set by format 1,
//! whose sizes are below [`BLOCK_RAW_BYTES_MAX`]). After such a block the
//! writer stores the next few raw without trying, so incompressible data
//! costs no compression time. The
//! raw block is a sequence of entries in strictly ascending key order:
//! varint key length, key, varint value length, value (a canonical
//! postcard-encoded [`crate::model::VersionSet`]).

use super::codec::{Reader, put_varint};

/// Uncompressed size at which a block is cut.
pub(crate) const BLOCK_BYTES_TARGET: usize = 4096;
/// Largest uncompressed block accepted when decoding: bounds the
/// allocation a corrupt size prefix can ask for (one maximal value times
/// the sibling limit fits comfortably).
const BLOCK_RAW_BYTES_MAX: usize = 512 << 20;
/// Size-prefix bit marking a block stored uncompressed.
pub const RAW_FLAG: u32 = 1 << 31;
/// Blocks stored raw without a compression attempt after one that did not
/// compress.
const RAW_STREAK: u8 = 16;

/// Builds one raw block.
#[derive(Default)]
pub(crate) struct BlockBuilder {
    raw: Vec<u8>,
    count: usize,
    /// Blocks left to store raw without trying lz4.
    skip: u8,
}

impl BlockBuilder {
    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        put_varint(&mut self.raw, key.len() as u64);
        self.raw.extend_from_slice(key);
        put_varint(&mut self.raw, value.len() as u64);
        self.raw.extend_from_slice(value);
        self.count += 1;
    }

    pub(crate) fn raw_len(&self) -> usize {
        self.raw.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Compress and checksum the block into `out`; resets the builder.
    pub(crate) fn finish_into(&mut self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        let mut raw = self.skip > 0;
        if raw {
            self.skip -= 1;
        } else {
            out.extend_from_slice(&lz4_flex::compress_prepend_size(&self.raw));
            if out.len() - start - 4 >= self.raw.len() {
                out.truncate(start);
                raw = true;
                self.skip = RAW_STREAK;
            }
        }
        if raw {
            out.extend_from_slice(&(self.raw.len() as u32 | RAW_FLAG).to_le_bytes());
            out.extend_from_slice(&self.raw);
        }
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        self.raw.clear();
        self.count = 0;
        out.len() - start
    }
}

/// Where one entry's key and value lie in a decoded block.
#[derive(Debug, Clone, Copy)]
struct Span {
    key_start: u32,
    key_end: u32,
    value_start: u32,
    value_end: u32,
}

/// A decoded (decompressed, verified) block.
///
/// Entry positions are resolved once at decode, so a cached block is
/// searched with plain slice comparisons (no varint parsing per probe):
/// the block cache holds decoded blocks, and a get only binary-searches.
#[derive(Debug)]
pub struct Block {
    data: Vec<u8>,
    spans: Vec<Span>,
}

impl Block {
    /// Verify, decompress and index a stored block. Never panics.
    pub fn decode(stored: &[u8]) -> Result<Block, &'static str> {
        if stored.len() < 8 {
            return Err("block shorter than its size prefix and checksum");
        }
        let (body, crc) = stored.split_at(stored.len() - 4);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != crc {
            return Err("block checksum mismatch");
        }
        Self::decode_verified(body)
    }

    /// Decompress and index a block whose checksum was checked.
    pub fn decode_verified(body: &[u8]) -> Result<Block, &'static str> {
        if body.len() < 4 {
            return Err("block shorter than its size prefix");
        }
        let prefix = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
        let data = if prefix & RAW_FLAG != 0 {
            if (prefix & !RAW_FLAG) as usize != body.len() - 4 {
                return Err("raw block size does not match its prefix");
            }
            body[4..].to_vec()
        } else {
            let raw_len = prefix as usize;
            // lz4 cannot expand more than ~255x; a larger claim is corruption.
            if raw_len > BLOCK_RAW_BYTES_MAX || raw_len > body.len().saturating_mul(255) {
                return Err("implausible uncompressed block size");
            }
            lz4_flex::decompress_size_prepended(body).map_err(|_| "block does not decompress")?
        };
        if data.len() > u32::MAX as usize {
            return Err("block too large");
        }
        let mut spans = Vec::new();
        let mut r = Reader::new(&data);
        let mut prev: Option<&[u8]> = None;
        while !r.is_empty() {
            let key = r.slice()?;
            let key_end = r.pos();
            let key_start = key_end - key.len();
            let value = r.slice()?;
            let value_end = r.pos();
            if prev.is_some_and(|p| p >= key) {
                return Err("block keys out of order");
            }
            prev = Some(key);
            spans.push(Span {
                key_start: key_start as u32,
                key_end: key_end as u32,
                value_start: (value_end - value.len()) as u32,
                value_end: value_end as u32,
            });
        }
        if spans.is_empty() {
            return Err("empty block");
        }
        Ok(Block { data, spans })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Never true for a decoded block (empty blocks are rejected).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Entry `i` as (key, value). Spans were validated at decode.
    pub fn entry(&self, i: usize) -> (&[u8], &[u8]) {
        let s = self.spans[i];
        (
            &self.data[s.key_start as usize..s.key_end as usize],
            &self.data[s.value_start as usize..s.value_end as usize],
        )
    }

    fn key(&self, i: usize) -> &[u8] {
        let s = self.spans[i];
        &self.data[s.key_start as usize..s.key_end as usize]
    }

    /// Index of the first entry whose key is `>= key`.
    pub fn seek(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.spans.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The value stored under exactly `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let i = self.seek(key);
        if i < self.len() {
            let (k, v) = self.entry(i);
            if k == key {
                return Some(v);
            }
        }
        None
    }

    /// Bytes held in memory (for the block cache's weigher).
    pub fn mem_bytes(&self) -> usize {
        self.data.len() + self.spans.len() * std::mem::size_of::<Span>() + 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_reject_damage() {
        let mut b = BlockBuilder::default();
        for i in 0..100u32 {
            b.add(format!("k{i:04}").as_bytes(), &i.to_le_bytes());
        }
        let mut out = Vec::new();
        b.finish_into(&mut out);
        let block = Block::decode(&out).unwrap();
        assert_eq!(block.len(), 100);
        assert_eq!(block.get(b"k0042"), Some(&42u32.to_le_bytes()[..]));
        assert_eq!(block.get(b"k0042x"), None);
        assert_eq!(block.seek(b"k0042x"), 43);
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            assert!(Block::decode(&bad).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn incompressible_blocks_are_stored_raw_and_round_trip() {
        let mut b = BlockBuilder::default();
        let mut out = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut ends = Vec::new();
        for blk in 0..3u32 {
            for i in 0..30u32 {
                let v: Vec<u8> = (0..100)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                // Keys share no 4-byte run either (lz4's shortest match).
                let mut k = vec![blk as u8, i as u8];
                k.extend_from_slice(&v[..6]);
                b.add(&k, &v);
            }
            let start = out.len();
            b.finish_into(&mut out);
            ends.push((start, out.len()));
        }
        for (i, &(a, z)) in ends.iter().enumerate() {
            let prefix = u32::from_le_bytes(out[a..a + 4].try_into().unwrap());
            assert!(prefix & RAW_FLAG != 0, "block {i} compressed");
            let block = Block::decode(&out[a..z]).unwrap();
            assert_eq!(block.len(), 30);
            let mut bad = out[a..z].to_vec();
            bad[1] ^= 1;
            assert!(Block::decode(&bad).is_err());
        }
    }
}
