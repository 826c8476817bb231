//! The per-table bloom filter: lets a read skip every table that cannot
//! hold the key, which is what keeps reads of missing keys cheap even
//! though a read must consult every table that might hold siblings.
//!
//! # On-disk format (table format version [`super::sstable::TABLE_FORMAT_VERSION`])
//!
//! The `bloomfilter` crate's serialisation (`Bloom::to_bytes`: its own
//! version byte, bitmap length, hash count, 32-byte seed, bitmap),
//! followed by an LE u32 crc32c of those bytes. The seed is fixed so that
//! the same keys always produce the same table bytes.

use bloomfilter::Bloom;

/// Target false-positive rate.
const FP_RATE: f64 = 0.01;
/// Fixed seed: deterministic tables.
const SEED: [u8; 32] = *b"isthmus-engine-bloom-seed-v1-32b";
/// More hash functions than any sane filter uses is corruption.
const HASHES_MAX: u32 = 64;

/// A table's bloom filter over its keys.
pub struct KeyFilter(Bloom<[u8]>);

impl std::fmt::Debug for KeyFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyFilter({} bits)", self.0.len())
    }
}

impl KeyFilter {
    /// A filter sized for `items` keys.
    pub(crate) fn with_capacity(items: usize) -> Self {
        let bloom = Bloom::new_for_fp_rate_with_seed(items.max(1), FP_RATE, &SEED)
            .unwrap_or_else(|_| unreachable!("positive item count and rate in (0,1)"));
        KeyFilter(bloom)
    }

    /// Record a key.
    pub(crate) fn insert(&mut self, key: &[u8]) {
        self.0.set(key);
    }

    /// May the table hold `key`? (False positives, never false negatives.)
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.0.check(key)
    }

    /// Serialise with a trailing checksum.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = self.0.to_bytes();
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Verify and deserialise. Never panics; a filter the crate would
    /// divide by zero on (no bits) or loop on is rejected.
    pub fn decode(stored: &[u8]) -> Result<Self, &'static str> {
        if stored.len() < 4 {
            return Err("bloom filter shorter than its checksum");
        }
        let (body, crc) = stored.split_at(stored.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err("bloom filter checksum mismatch");
        }
        let bloom = Bloom::from_slice(body)?;
        if matches!(bloom.len(), 0) {
            return Err("bloom filter has no bits");
        }
        if bloom.number_of_hash_functions() > HASHES_MAX {
            return Err("bloom filter has too many hash functions");
        }
        Ok(KeyFilter(bloom))
    }
}
