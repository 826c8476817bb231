//! The memtable: recent writes, in key order, in memory.
//!
//! A lock-free skiplist (crossbeam-skiplist) maps each key to its
//! [`VersionSet`] behind a small per-key mutex: a write absorbs its version
//! into the key's set in place (no read of older tables, the join makes
//! that unnecessary), so writers to different keys never contend.
//!
//! Sets are held *encoded* (the canonical postcard bytes a table stores),
//! in one allocation per key. The common write, a fresh key, then costs no
//! decode, no digest and no allocation beyond that one: its encoding is
//! `[1]` followed by the version bytes already encoded for the commit log.
//! A flush copies the bytes as they are. Only a write to a key already in
//! this memtable decodes, absorbs and re-encodes. Compact per-key memory
//! also keeps skiplist nodes close together, which is what random inserts
//! into a large memtable pay for (one cache miss per level searched).
//!
//! Each memtable belongs to exactly one commit-log segment (same id): the
//! engine rotates both together, so once a memtable is in a table recorded
//! by the manifest, its segment can go.

use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_skiplist::SkipMap;
use parking_lot::Mutex;

use crate::model::{Version, VersionSet};

/// Per-entry overhead counted on top of key and encoded-set sizes
/// (skiplist node with its inline key, mutex and tower, and two allocator
/// headers): keeps the flush trigger close to the real footprint.
const ENTRY_OVERHEAD_BYTES: usize = 80;

/// The encoding of a set with one version is this byte (the postcard
/// length prefix of its one-element version list) then the version.
const SINGLETON_PREFIX: u8 = 1;

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

/// A key's encoded set; empty (no bytes) when a write that created the
/// entry failed before absorbing, which every reader skips.
type Slot = Mutex<Box<[u8]>>;

/// Decode a set this memtable encoded (never corrupt: it never left
/// memory). Skips [`VersionSet::decode`]'s canonical-form check, which
/// costs a digest per member and proves nothing for bytes we built.
fn decode(bytes: &[u8]) -> VersionSet {
    if bytes.is_empty() {
        return VersionSet::new();
    }
    postcard::from_bytes(bytes).unwrap_or_else(|_| unreachable!("memtable sets decode"))
}

/// The encoding of the set holding only the version encoded as `version`.
fn singleton(version: &[u8]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(version.len() + 1);
    out.push(SINGLETON_PREFIX);
    out.extend_from_slice(version);
    out.into_boxed_slice()
}

/// One memtable (active or immutable).
pub(crate) struct Memtable {
    id: u64,
    map: SkipMap<MemKey, Slot>,
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
        let encoded = version.encode();
        let r: Result<(), std::convert::Infallible> =
            self.absorb_with(key, version, &encoded, |_, _| Ok(()), || Ok(()));
        let Ok(()) = r;
    }

    /// Absorb under the key's lock after `check` (sibling limit) and
    /// `log` (commit-log append) succeed: one skiplist search per write.
    /// `encoded` is `version`'s canonical encoding. If either fails the
    /// key may be left with an empty set, which every reader skips.
    pub(crate) fn absorb_with<T, E>(
        &self,
        key: &[u8],
        version: Version,
        encoded: &[u8],
        check: impl FnOnce(&VersionSet, &Version) -> Result<(), E>,
        log: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let entry = self
            .map
            .get_or_insert_with(MemKey::new(key), || Mutex::new(Box::default()));
        let mut slot = entry.value().lock();
        let before = slot.len();
        let out = if slot.is_empty() {
            // A fresh key: the sibling check against an empty set passes
            // unless the limit is zero; ask it anyway to keep one rule.
            check(&VersionSet::new(), &version)?;
            let out = log()?;
            *slot = singleton(encoded);
            out
        } else {
            let mut set = decode(&slot);
            check(&set, &version)?;
            let out = log()?;
            set.absorb(version);
            *slot = set.encode().into_boxed_slice();
            out
        };
        let added = if before == 0 {
            slot.len() + key.len() + ENTRY_OVERHEAD_BYTES
        } else {
            slot.len().saturating_sub(before)
        };
        self.bytes.fetch_add(added, Ordering::Relaxed);
        Ok(out)
    }

    /// Siblings the key would hold here after absorbing `version`; only
    /// computed when the key already holds `at_least` siblings, so the
    /// common path clones nothing.
    pub(crate) fn siblings_after(&self, key: &[u8], version: &Version, at_least: usize) -> usize {
        match self.map.get(key) {
            Some(entry) => {
                let mut set = decode(&entry.value().lock());
                if set.len() < at_least {
                    return set.len();
                }
                set.absorb(version.clone());
                set.len()
            }
            None => 1,
        }
    }

    /// The key's set here, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<VersionSet> {
        let entry = self.map.get(key)?;
        let slot = entry.value().lock();
        if slot.is_empty() {
            return None;
        }
        Some(decode(&slot))
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
            .map(|e| (e.key().as_slice().to_vec(), decode(&e.value().lock())))
            .filter(|(_, s)| !s.is_empty())
            .collect()
    }

    /// Every entry in key order with its encoded set (for flushing).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) {
        for e in self.map.iter() {
            let slot = e.value().lock();
            if !slot.is_empty() {
                f(e.key().as_slice(), &slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Clock, Dot};

    fn v(actor: u64, n: u64) -> Version {
        let mut c = Clock::new();
        c.add_dot(Dot {
            actor: Actor(actor),
            counter: n,
        });
        Version::value(c, vec![n as u8; 3], n, "dc1".into())
    }

    #[test]
    fn singleton_encoding_is_the_canonical_set_encoding() {
        let version = v(1, 7);
        let set = VersionSet::from_versions([version.clone()]);
        assert_eq!(&*singleton(&version.encode()), set.encode().as_slice());
    }

    #[test]
    fn absorbing_joins_like_the_model() {
        let m = Memtable::new(1);
        let mut model = VersionSet::new();
        for (actor, n) in [(1, 1), (2, 1), (1, 2), (2, 1), (3, 5)] {
            m.absorb(b"k", v(actor, n));
            model.absorb(v(actor, n));
        }
        assert_eq!(m.get(b"k").unwrap(), model);
        let mut flushed = Vec::new();
        m.for_each(|k, enc| flushed.push((k.to_vec(), VersionSet::decode(enc).unwrap())));
        assert_eq!(flushed, vec![(b"k".to_vec(), model)]);
    }
}
