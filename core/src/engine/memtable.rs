//! The memtable: recent writes, in key order, in memory.
//!
//! A lock-free skiplist (crossbeam-skiplist) maps each key to its
//! [`VersionSet`] behind a small per-key mutex: a write absorbs its version
//! into the key's set in place (no read of older tables, the join makes
//! that unnecessary), so writers to different keys never contend.
//!
//! Each memtable belongs to exactly one commit-log segment (same id): the
//! engine rotates both together, so once a memtable is in a table recorded
//! by the manifest, its segment can go.

use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_skiplist::SkipMap;
use parking_lot::Mutex;

use crate::model::{Version, VersionSet};

/// Per-entry overhead counted on top of key and version sizes (skiplist
/// node, mutex, set header): keeps the flush trigger honest for small
/// values.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// Keys up to this length live inside the skiplist node.
const INLINE_KEY_BYTES: usize = 30;

/// A memtable key: short keys are stored inline, so a skiplist search
/// compares against bytes in the node it already loaded instead of
/// chasing one more heap pointer per level (the dominant cost of random
/// inserts into a large memtable).
#[derive(Clone)]
enum MemKey {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    Heap(Box<[u8]>),
}

impl MemKey {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0u8; INLINE_KEY_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            MemKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            MemKey::Heap(key.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            MemKey::Inline { len, bytes } => &bytes[..*len as usize],
            MemKey::Heap(b) => b,
        }
    }
}

impl std::borrow::Borrow<[u8]> for MemKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

// Order and equality are those of the byte slices, as `Borrow` requires.
impl PartialEq for MemKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}
impl Eq for MemKey {}
impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

/// One memtable (active or immutable).
pub(crate) struct Memtable {
    id: u64,
    map: SkipMap<MemKey, Mutex<VersionSet>>,
    bytes: AtomicUsize,
}

impl Memtable {
    /// An empty memtable paired with log segment `id`.
    pub(crate) fn new(id: u64) -> Self {
        Memtable {
            id,
            map: SkipMap::new(),
            bytes: AtomicUsize::new(0),
        }
    }

    /// The log segment this memtable's writes went to.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Absorb a version into the key's set.
    pub(crate) fn absorb(&self, key: &[u8], version: Version) {
        let added = version.approx_bytes();
        match self.map.get(key) {
            Some(entry) => {
                entry.value().lock().absorb(version);
                self.bytes.fetch_add(added, Ordering::Relaxed);
            }
            None => {
                let entry = self
                    .map
                    .get_or_insert_with(MemKey::new(key), || Mutex::new(VersionSet::new()));
                entry.value().lock().absorb(version);
                self.bytes
                    .fetch_add(added + key.len() + ENTRY_OVERHEAD_BYTES, Ordering::Relaxed);
            }
        }
    }

    /// Absorb under the key's lock after `check` (sibling limit) and
    /// `log` (commit-log append) succeed: one skiplist search per write.
    /// If either fails the key may be left with an empty set, which every
    /// reader skips.
    pub(crate) fn absorb_with<T, E>(
        &self,
        key: &[u8],
        version: Version,
        check: impl FnOnce(&VersionSet, &Version) -> Result<(), E>,
        log: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let added = version.approx_bytes();
        let entry = self
            .map
            .get_or_insert_with(MemKey::new(key), || Mutex::new(VersionSet::new()));
        let mut set = entry.value().lock();
        check(&set, &version)?;
        let out = log()?;
        let fresh = set.is_empty();
        set.absorb(version);
        let overhead = if fresh {
            key.len() + ENTRY_OVERHEAD_BYTES
        } else {
            0
        };
        self.bytes.fetch_add(added + overhead, Ordering::Relaxed);
        Ok(out)
    }

    /// Siblings the key would hold here after absorbing `version`; only
    /// computed when the key already holds `at_least` siblings, so the
    /// common path clones nothing.
    pub(crate) fn siblings_after(&self, key: &[u8], version: &Version, at_least: usize) -> usize {
        match self.map.get(key) {
            Some(entry) => {
                let set = entry.value().lock();
                if set.len() < at_least {
                    return set.len();
                }
                let mut probe = set.clone();
                probe.absorb(version.clone());
                probe.len()
            }
            None => 1,
        }
    }

    /// The key's set here, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<VersionSet> {
        self.map
            .get(key)
            .map(|e| e.value().lock().clone())
            .filter(|s| !s.is_empty())
    }

    /// Approximate bytes held.
    pub(crate) fn approx_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// No keys at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Up to `max` entries after `from`, in key order, up to `to`.
    /// Scans page through a memtable this way so that an iterator need not
    /// borrow the skiplist.
    pub(crate) fn page(
        &self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        max: usize,
    ) -> Vec<(Vec<u8>, VersionSet)> {
        self.map
            .range::<[u8], _>((from, to))
            .take(max)
            .map(|e| (e.key().as_slice().to_vec(), e.value().lock().clone()))
            .filter(|(_, s)| !s.is_empty())
            .collect()
    }

    /// Every entry in key order (for flushing).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], &VersionSet)) {
        for e in self.map.iter() {
            let set = e.value().lock();
            if !set.is_empty() {
                f(e.key().as_slice(), &set);
            }
        }
    }
}
