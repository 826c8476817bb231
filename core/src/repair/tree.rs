//! Merkle trees over key-hash ranges, and the comparison of leaf listings.
//! No IO: everything here is a function of `(key hash, key, set digest)`
//! triples.
//!
//! A tree of depth `d` over a [`HashRange`] splits the range evenly into
//! `2^d` leaves. Each key becomes an [`Entry`]: its hash and a 16-byte
//! fingerprint binding the key to its set's digest. A leaf's hash covers
//! the fingerprints of its entries in `(hash, fingerprint)` order; an inner
//! node's hash covers its two children. A subtree holding no key hashes to
//! [`EMPTY`] at every level, so two replicas that both lack a range agree
//! without hashing anything.
//!
//! Node `i` of level `l` covers the hashes of leaf `i` of a depth-`l` tree
//! over the same range ([`HashRange::part`]), because the leaf of a hash at
//! depth `l` is its leaf at depth `d` shifted right by `d - l`.
//!
//! Hashes are blake3 truncated to 128 bits, domain-separated by a leading
//! tag byte: a collision between different contents (which would hide a
//! difference from repair) takes about 2^64 work even for someone choosing
//! keys and values on purpose.

use serde::{Deserialize, Serialize};

use crate::model::ContentHash;

/// Bytes of a node hash or an entry fingerprint.
pub const FINGERPRINT_BYTES: usize = 16;

/// A truncated blake3 hash: a tree node's hash or a key's fingerprint.
pub type Fingerprint = [u8; FINGERPRINT_BYTES];

/// The hash of a subtree (or leaf) holding no key.
pub const EMPTY: Fingerprint = [0; FINGERPRINT_BYTES];

/// Deepest tree built: `2^18` leaves, 8 MiB of node hashes. Ranges with
/// more than [`LEAF_KEYS`] `* 2^18` keys get fuller leaves instead.
pub const DEPTH_MAX: u8 = 18;

/// Keys per leaf that [`depth_for`] aims at. Each level deeper costs two
/// node hashes per differing subtree and halves the listing of each
/// differing leaf; with 24-byte listing entries and 16-byte hashes the two
/// balance near three or four keys per leaf.
pub const LEAF_KEYS: u64 = 4;

const TAG_ENTRY: u8 = b'e';
const TAG_LEAF: u8 = b'l';
const TAG_NODE: u8 = b'n';

fn truncated(hasher: &blake3::Hasher) -> Fingerprint {
    let mut out = EMPTY;
    out.copy_from_slice(&hasher.finalize().as_bytes()[..FINGERPRINT_BYTES]);
    out
}

/// A closed range of key hashes, `first..=last`: closed so that the whole
/// ring, hash `u64::MAX` included, is one range. Decoding refuses
/// `last < first`, so a range from a peer is always valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawHashRange")]
pub struct HashRange {
    /// Least hash in the range.
    pub first: u64,
    /// Greatest hash in the range (not less than `first`).
    pub last: u64,
}

/// A [`HashRange`] as decoded, before it is checked.
#[derive(Deserialize)]
struct RawHashRange {
    first: u64,
    last: u64,
}

impl TryFrom<RawHashRange> for HashRange {
    type Error = String;

    fn try_from(raw: RawHashRange) -> Result<Self, Self::Error> {
        HashRange::new(raw.first, raw.last).ok_or_else(|| {
            format!(
                "hash range ends at {} before it starts at {}",
                raw.last, raw.first
            )
        })
    }
}

impl HashRange {
    /// Every hash.
    pub const FULL: HashRange = HashRange {
        first: 0,
        last: u64::MAX,
    };

    /// `first..=last`, or `None` when `last < first`.
    pub fn new(first: u64, last: u64) -> Option<HashRange> {
        (first <= last).then_some(HashRange { first, last })
    }

    /// Number of hashes in the range (1 to 2^64).
    pub fn width(&self) -> u128 {
        u128::from(self.last - self.first) + 1
    }

    /// Is `hash` in the range?
    pub fn contains(&self, hash: u64) -> bool {
        (self.first..=self.last).contains(&hash)
    }

    /// The range as a `RangeInclusive`, for store scans.
    pub fn bounds(&self) -> std::ops::RangeInclusive<u64> {
        self.first..=self.last
    }

    /// Which of the `2^depth` equal parts of the range holds `hash` (which
    /// must be in the range).
    pub fn part_of(&self, depth: u8, hash: u64) -> u32 {
        debug_assert!(self.contains(hash) && depth <= 31);
        ((u128::from(hash - self.first) << depth) / self.width()) as u32
    }

    /// Where part `index` of `2^depth` starts, as an offset from `first`;
    /// `2^depth` gives the width (one past the last part).
    fn part_start(&self, depth: u8, index: u64) -> u128 {
        // The least offset o with (o << depth) / width >= index.
        (u128::from(index) * self.width()).div_ceil(1u128 << depth)
    }

    /// Part `index` of the `2^depth` equal parts of the range: the hashes
    /// of leaf `index` of a depth-`depth` tree. `None` when that part holds
    /// no hash (a range narrower than `2^depth`).
    pub fn part(&self, depth: u8, index: u32) -> Option<HashRange> {
        let start = self.part_start(depth, u64::from(index));
        let end = self.part_start(depth, u64::from(index) + 1);
        (start < end).then(|| HashRange {
            first: self.first + start as u64,
            last: self.first + (end - 1) as u64,
        })
    }

    /// Split into pieces no wider than `width_max` (at least 1), in order.
    pub fn split(&self, width_max: u128) -> Vec<HashRange> {
        let width_max = width_max.max(1);
        let pieces = self.width().div_ceil(width_max);
        let mut out = Vec::with_capacity(pieces as usize);
        let mut first = u128::from(self.first);
        let end = u128::from(self.first) + self.width();
        while first < end {
            let last = (first + width_max).min(end) - 1;
            out.push(HashRange {
                first: first as u64,
                last: last as u64,
            });
            first = last + 1;
        }
        out
    }
}

impl std::fmt::Display for HashRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}..={:016x}", self.first, self.last)
    }
}

/// One key as repair lists it: its hash and a fingerprint of
/// `(key, set digest)`. Ordered by hash, then fingerprint: the canonical
/// order of a leaf, whatever order keys of equal hash were stored in.
///
/// On the wire it is 24 fixed bytes (hash big-endian, then fingerprint):
/// a varint would spend 10 bytes on most uniformly spread hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// The key's hash.
    pub hash: u64,
    /// Fingerprint of the key and its set's digest.
    pub fingerprint: Fingerprint,
}

impl Entry {
    /// The entry of `key`, whose hash is `hash` and whose set has `digest`.
    pub fn new(hash: u64, key: &[u8], digest: &ContentHash) -> Entry {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&[TAG_ENTRY]);
        hasher.update(&(key.len() as u64).to_le_bytes());
        hasher.update(key);
        hasher.update(digest);
        Entry {
            hash,
            fingerprint: truncated(&hasher),
        }
    }
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = [0u8; 8 + FINGERPRINT_BYTES];
        bytes[..8].copy_from_slice(&self.hash.to_be_bytes());
        bytes[8..].copy_from_slice(&self.fingerprint);
        bytes.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <[u8; 8 + FINGERPRINT_BYTES]>::deserialize(d)?;
        let mut hash = [0u8; 8];
        hash.copy_from_slice(&bytes[..8]);
        let mut fingerprint = EMPTY;
        fingerprint.copy_from_slice(&bytes[8..]);
        Ok(Entry {
            hash: u64::from_be_bytes(hash),
            fingerprint,
        })
    }
}

/// Sort `(hash, key, digest)` triples into a canonical listing.
pub fn listing<K: AsRef<[u8]>>(
    keys: impl IntoIterator<Item = (u64, K, ContentHash)>,
) -> Vec<Entry> {
    let mut entries: Vec<Entry> = keys
        .into_iter()
        .map(|(hash, key, digest)| Entry::new(hash, key.as_ref(), &digest))
        .collect();
    // Store scans come in hash order already: sorting them is one pass.
    entries.sort_unstable();
    entries
}

/// The tree depth for a range holding `keys` keys: leaves of about
/// [`LEAF_KEYS`] keys, at most [`DEPTH_MAX`] levels below the root.
pub fn depth_for(keys: u64) -> u8 {
    let leaves = keys.div_ceil(LEAF_KEYS).max(1);
    (leaves.next_power_of_two().trailing_zeros() as u8).min(DEPTH_MAX)
}

/// A Merkle tree over one hash range at one depth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    range: HashRange,
    depth: u8,
    /// `levels[l]` holds the `2^l` node hashes of level `l`; the last
    /// level is the leaves.
    levels: Vec<Vec<Fingerprint>>,
}

impl MerkleTree {
    /// Build the tree of `entries`, which must be sorted (as [`listing`]
    /// returns them). Entries outside `range` are ignored. `depth` is
    /// capped at [`DEPTH_MAX`].
    pub fn build(range: HashRange, depth: u8, entries: &[Entry]) -> MerkleTree {
        let depth = depth.min(DEPTH_MAX);
        let mut leaves = vec![EMPTY; 1 << depth];
        let mut rest = entries;
        while let Some(first) = rest.first() {
            if !range.contains(first.hash) {
                rest = &rest[1..];
                continue;
            }
            let leaf = range.part_of(depth, first.hash);
            let part = range.part(depth, leaf).unwrap_or(range);
            let n = rest.partition_point(|e| e.hash <= part.last);
            leaves[leaf as usize] = leaf_hash(&rest[..n]);
            rest = &rest[n..];
        }
        let mut levels = vec![leaves];
        while levels[0].len() > 1 {
            let below = &levels[0];
            let above = below
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
            levels.insert(0, above);
        }
        MerkleTree {
            range,
            depth,
            levels,
        }
    }

    /// Build from `(hash, key, digest)` triples in any order.
    pub fn from_keys<K: AsRef<[u8]>>(
        range: HashRange,
        depth: u8,
        keys: impl IntoIterator<Item = (u64, K, ContentHash)>,
    ) -> MerkleTree {
        MerkleTree::build(range, depth, &listing(keys))
    }

    /// The range it covers.
    pub fn range(&self) -> HashRange {
        self.range
    }

    /// Levels below the root.
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// The root hash ([`EMPTY`] when the range holds no key).
    pub fn root(&self) -> Fingerprint {
        self.levels[0][0]
    }

    /// The hash of node `index` of `level` (the root is level 0).
    pub fn node(&self, level: u8, index: u32) -> Option<Fingerprint> {
        self.levels
            .get(usize::from(level))?
            .get(index as usize)
            .copied()
    }
}

/// The hash of a leaf holding `entries` (sorted).
pub fn leaf_hash(entries: &[Entry]) -> Fingerprint {
    if entries.is_empty() {
        return EMPTY;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[TAG_LEAF]);
    for e in entries {
        hasher.update(&e.fingerprint);
    }
    truncated(&hasher)
}

/// The hash of a whole listing, independent of any tree depth:
/// [`EMPTY`] for no entry, else the hash of every fingerprint in order.
/// Two replicas whose listings of a range hash alike hold the range alike.
pub fn listing_digest(entries: &[Entry]) -> Fingerprint {
    // A one-leaf tree's root is exactly this.
    leaf_hash(entries)
}

/// The hash of an inner node from its children's.
pub fn node_hash(left: &Fingerprint, right: &Fingerprint) -> Fingerprint {
    if *left == EMPTY && *right == EMPTY {
        return EMPTY;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[TAG_NODE]);
    hasher.update(left);
    hasher.update(right);
    truncated(&hasher)
}

/// The hashes whose entries differ between two sorted listings of the
/// same leaf: present on one side only, or with different fingerprints
/// (keys of equal hash are compared as a group). Ascending, no repeats.
pub fn differing_hashes(ours: &[Entry], theirs: &[Entry]) -> Vec<u64> {
    let mut out = Vec::new();
    let (mut a, mut b) = (ours, theirs);
    loop {
        let hash = match (a.first(), b.first()) {
            (None, None) => return out,
            (Some(x), None) => x.hash,
            (None, Some(y)) => y.hash,
            (Some(x), Some(y)) => x.hash.min(y.hash),
        };
        let na = a.iter().take_while(|e| e.hash == hash).count();
        let nb = b.iter().take_while(|e| e.hash == hash).count();
        if a[..na] != b[..nb] {
            out.push(hash);
        }
        a = &a[na..];
        b = &b[nb..];
    }
}
