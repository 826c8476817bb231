//! The per-table bloom filter: lets a read skip every table that cannot
//! hold the key, which is what keeps reads of missing keys cheap even
//! though a read must consult every table that might hold siblings.
//!
//! # On-disk format
//!
//! Table formats 2 and 3 ([`super::sstable::TABLE_FORMAT_VERSION`]): a blocked
//! bloom filter (see [`KeyFilter::Blocked`] and [`KeyFilter::encode`]).
//!
//! Table format 1 (still read): the `bloomfilter` crate's serialisation
//! (`Bloom::to_bytes`: its own version byte, bitmap length, hash count,
//! 32-byte seed, bitmap), followed by an LE u32 crc32c of those bytes.
//! The seed is fixed so that the same keys always produce the same table
//! bytes.

use bloomfilter::Bloom;

/// Target false-positive rate of the version-1 (SipHash) filters.
const FP_RATE: f64 = 0.01;
/// Fixed seed: deterministic tables.
const SEED: [u8; 32] = *b"isthmus-engine-bloom-seed-v1-32b";
/// More hash functions than any sane filter uses is corruption.
const HASHES_MAX: u32 = 64;
/// Blocked filter: bits per key (about 1% false positives with
/// [`BLOCKED_PROBES`] probes into one 512-bit block).
const BLOCKED_BITS_PER_KEY: usize = 10;
/// Blocked filter: bits set per key, all inside one cache-line block.
const BLOCKED_PROBES: u8 = 7;
/// Blocked filter: 64-bit words per block (one 64-byte cache line).
const BLOCK_WORDS: usize = 8;

/// The hash a blocked filter is probed with: compute it once per read and
/// probe every table with it.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// A table's filter over its keys.
pub enum KeyFilter {
    /// Table format 1: the `bloomfilter` crate (SipHash, bits spread over
    /// the whole bitmap). Read only.
    Sip(Bloom<[u8]>),
    /// Table format 2: a blocked bloom filter. The key's xxh3 hash picks
    /// one 512-bit block (one cache line) and the bits within it, so a
    /// probe costs one cache miss and the hash is shared by all tables.
    Blocked {
        /// `blocks * BLOCK_WORDS` words.
        words: Vec<u64>,
        /// Bits per key.
        probes: u8,
    },
}

impl std::fmt::Debug for KeyFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyFilter::Sip(b) => write!(f, "KeyFilter::Sip({} bits)", b.len()),
            KeyFilter::Blocked { words, .. } => {
                write!(f, "KeyFilter::Blocked({} bits)", words.len() * 64)
            }
        }
    }
}

/// Block index and the probe sequence's start and step for `hash`.
fn blocked_positions(hash: u64, blocks: usize) -> (usize, u32, u32) {
    let block = (((hash >> 32) * blocks as u64) >> 32) as usize;
    let h1 = hash as u32;
    let h2 = (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32 | 1;
    (block, h1, h2)
}

impl KeyFilter {
    /// A filter sized for `items` keys (the current, blocked format).
    pub(crate) fn with_capacity(items: usize) -> Self {
        let bits = items.max(1) * BLOCKED_BITS_PER_KEY;
        let blocks = bits.div_ceil(BLOCK_WORDS * 64).max(1);
        KeyFilter::Blocked {
            words: vec![0; blocks * BLOCK_WORDS],
            probes: BLOCKED_PROBES,
        }
    }

    /// Record a key.
    pub(crate) fn insert(&mut self, key: &[u8]) {
        match self {
            KeyFilter::Sip(b) => b.set(key),
            KeyFilter::Blocked { words, probes } => {
                let (block, h1, h2) = blocked_positions(key_hash(key), words.len() / BLOCK_WORDS);
                let w = &mut words[block * BLOCK_WORDS..(block + 1) * BLOCK_WORDS];
                for i in 0..u32::from(*probes) {
                    let bit = h1.wrapping_add(i.wrapping_mul(h2)) as usize % (BLOCK_WORDS * 64);
                    w[bit / 64] |= 1 << (bit % 64);
                }
            }
        }
    }

    /// May the table hold `key`? (False positives, never false negatives.)
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.may_contain_hashed(key, key_hash(key))
    }

    /// [`Self::may_contain`] with `hash` = [`key_hash`]`(key)` computed
    /// by the caller (once for all tables).
    pub fn may_contain_hashed(&self, key: &[u8], hash: u64) -> bool {
        match self {
            KeyFilter::Sip(b) => b.check(key),
            KeyFilter::Blocked { words, probes } => {
                let (block, h1, h2) = blocked_positions(hash, words.len() / BLOCK_WORDS);
                let w = &words[block * BLOCK_WORDS..(block + 1) * BLOCK_WORDS];
                (0..u32::from(*probes)).all(|i| {
                    let bit = h1.wrapping_add(i.wrapping_mul(h2)) as usize % (BLOCK_WORDS * 64);
                    w[bit / 64] & (1 << (bit % 64)) != 0
                })
            }
        }
    }

    /// Serialise with a trailing checksum. Blocked format: probes (u8),
    /// block count (LE u32), the words (LE u64 each), crc32c (LE u32) of
    /// everything before it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = match self {
            KeyFilter::Sip(b) => b.to_bytes(),
            KeyFilter::Blocked { words, probes } => {
                let mut out = Vec::with_capacity(5 + words.len() * 8 + 4);
                out.push(*probes);
                out.extend_from_slice(&((words.len() / BLOCK_WORDS) as u32).to_le_bytes());
                for w in words {
                    out.extend_from_slice(&w.to_le_bytes());
                }
                out
            }
        };
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Verify and deserialise a filter of the current table format
    /// (blocked). Never panics.
    pub fn decode(stored: &[u8]) -> Result<Self, &'static str> {
        let body = checked_body(stored)?;
        if body.len() < 5 {
            return Err("blocked bloom filter shorter than its header");
        }
        let probes = body[0];
        if probes == 0 || u32::from(probes) > HASHES_MAX {
            return Err("blocked bloom filter has a bad probe count");
        }
        let blocks = u32::from_le_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let bitmap = &body[5..];
        if blocks == 0 || bitmap.len() != blocks * BLOCK_WORDS * 8 {
            return Err("blocked bloom filter size does not match its block count");
        }
        let words = bitmap
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok(KeyFilter::Blocked { words, probes })
    }

    /// Verify and deserialise a filter of table format 1 (the
    /// `bloomfilter` crate's serialisation: its own version byte, bitmap
    /// length, hash count, 32-byte seed, bitmap). Never panics; a filter
    /// the crate would divide by zero on (no bits) or loop on is rejected.
    pub fn decode_v1(stored: &[u8]) -> Result<Self, &'static str> {
        let body = checked_body(stored)?;
        let bloom = Bloom::from_slice(body)?;
        if matches!(bloom.len(), 0) {
            return Err("bloom filter has no bits");
        }
        if bloom.number_of_hash_functions() > HASHES_MAX {
            return Err("bloom filter has too many hash functions");
        }
        Ok(KeyFilter::Sip(bloom))
    }

    /// A version-1 filter sized for `items` keys (tests and fixtures).
    #[doc(hidden)]
    pub fn v1_with_capacity(items: usize) -> Self {
        let bloom = Bloom::new_for_fp_rate_with_seed(items.max(1), FP_RATE, &SEED)
            .unwrap_or_else(|_| unreachable!("positive item count and rate in (0,1)"));
        KeyFilter::Sip(bloom)
    }
}

/// The stored bytes without their checksum, once it matches.
fn checked_body(stored: &[u8]) -> Result<&[u8], &'static str> {
    if stored.len() < 4 {
        return Err("bloom filter shorter than its checksum");
    }
    let (body, crc) = stored.split_at(stored.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err("bloom filter checksum mismatch");
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_have_no_false_negatives_and_few_false_positives() {
        for mut f in [
            KeyFilter::with_capacity(10_000),
            KeyFilter::v1_with_capacity(10_000),
        ] {
            for i in 0..10_000u32 {
                f.insert(&i.to_be_bytes());
            }
            let f = match &f {
                KeyFilter::Sip(_) => KeyFilter::decode_v1(&f.encode()).unwrap(),
                KeyFilter::Blocked { .. } => KeyFilter::decode(&f.encode()).unwrap(),
            };
            assert!((0..10_000u32).all(|i| f.may_contain(&i.to_be_bytes())));
            let fp = (10_000..110_000u32)
                .filter(|i| f.may_contain(&i.to_be_bytes()))
                .count();
            assert!(fp < 2_000, "{f:?}: {fp} false positives in 100000");
        }
    }
}
