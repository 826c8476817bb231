//! The memtable: recent writes, in key order, in memory.
//!
//! A B-tree (`std::collections::BTreeMap`) behind one reader-writer lock
//! maps each key to its [`VersionSet`], held *encoded* (the canonical
//! postcard bytes a table stores) in an append-only arena of large chunks.
//! A write absorbs its version into the key's set (no read of older
//! tables: the join makes that unnecessary).
//!
//! Why not a lock-free skiplist (what this was): a random insert into a
//! skiplist of a few hundred thousand keys takes one cache miss per node
//! visited, about two per level over ~18 levels, and profiles showed that
//! search as 40% of a writer's time. A B-tree node holds eleven keys side
//! by side, so the same search touches about six nodes. Writers serialize
//! on the lock, but they already serialize on the commit-log append made
//! inside it, and the critical section is short (no IO: the log append
//! only copies into the group-commit buffer).
//!
//! Keys up to [`INLINE_KEY_BYTES`] live inside the tree node, with their
//! first sixteen bytes also kept as big-endian integers so that most
//! comparisons are one integer compare. Sets live in the arena: the
//! common write, a fresh key, costs no decode, no digest and no
//! allocation of its own: its encoding is `[1]` followed by the version
//! bytes already encoded for the commit log, copied once into the arena.
//! Only a write to a key already in this memtable decodes, absorbs and
//! re-encodes (the new encoding is appended; the old bytes stay until the
//! memtable is dropped, and are counted). A flush copies the bytes as
//! they are.
//!
//! Unless the writer read the key's whole set already (under the key's
//! lock, as a replica's apply does) and nothing wrote the key here since
//! that read ([`Mark`]): then it stores the set it computed
//! ([`Memtable::absorb_over`]), with no decode of its own: for an
//! overwrite, the singleton encoding again. That set joins everything the
//! key held (every memtable and table) with the new version, so reads,
//! which join every place, find the same; the commit log still records
//! only the version.
//!
//! Each memtable belongs to exactly one commit-log segment (same id): the
//! engine rotates both together, so once a memtable is in a table recorded
//! by the manifest, its segment can go.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;

use crate::model::{Version, VersionSet};

/// Per-entry overhead counted on top of key and encoded-set sizes: the
/// B-tree slot (inline key and arena location, 68 bytes) at the typical
/// two-thirds fill of nodes under random inserts, plus node headers.
/// Keeps the flush trigger close to the real footprint.
const ENTRY_OVERHEAD_BYTES: usize = 104;

/// The encoding of a set with one version is this byte (the postcard
/// length prefix of its one-element version list) then the version.
const SINGLETON_PREFIX: u8 = 1;

/// Keys up to this length live inside the tree node: a storage key is
/// the keyspace's name and the key's hash (10 bytes and the name) before
/// the key itself.
const INLINE_KEY_BYTES: usize = 38;

/// Arena chunk size; a larger set gets a chunk of its own.
const CHUNK_BYTES: usize = 1 << 20;

/// The key's first sixteen bytes (zero-padded) as two big-endian
/// integers. Orders like the bytes: if two keys' prefixes differ, the
/// keys compare as their prefixes do (a shorter key that is a prefix of
/// the other is padded with zeros, which sort first). Sixteen, not eight:
/// a node's storage keys start with their keyspace's name, which all the
/// keys of a memtable may share, and then the key's hash.
fn prefix_of(key: &[u8]) -> [u64; 2] {
    let mut p = [0u8; 16];
    let n = key.len().min(16);
    p[..n].copy_from_slice(&key[..n]);
    let x = u128::from_be_bytes(p);
    [(x >> 64) as u64, x as u64]
}

#[derive(Clone)]
enum KeyRepr {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    Heap(Box<[u8]>),
}

/// A memtable key: short keys inline, with a cached integer prefix.
#[derive(Clone)]
struct MemKey {
    prefix: [u64; 2],
    repr: KeyRepr,
}

impl MemKey {
    fn new(key: &[u8]) -> Self {
        let repr = if key.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0u8; INLINE_KEY_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            KeyRepr::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            KeyRepr::Heap(key.into())
        };
        MemKey {
            prefix: prefix_of(key),
            repr,
        }
    }

    fn as_slice(&self) -> &[u8] {
        match &self.repr {
            KeyRepr::Inline { len, bytes } => &bytes[..*len as usize],
            KeyRepr::Heap(b) => b,
        }
    }
}

impl std::borrow::Borrow<[u8]> for MemKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

// Order and equality are those of the byte slices, as `Borrow` requires
// (the prefix compare is a shortcut to the same answer; see `prefix_of`).
impl PartialEq for MemKey {
    fn eq(&self, other: &Self) -> bool {
        self.prefix == other.prefix && self.as_slice() == other.as_slice()
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
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| self.as_slice().cmp(other.as_slice()))
    }
}

/// Where a key's encoded set lives in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    chunk: u32,
    off: u32,
    len: u32,
}

/// Append-only byte storage in large chunks.
#[derive(Default)]
struct Arena {
    chunks: Vec<Vec<u8>>,
}

impl Arena {
    /// Store the concatenation of `parts`.
    fn push(&mut self, parts: &[&[u8]]) -> Loc {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= n);
        if !fits {
            self.chunks.push(Vec::with_capacity(CHUNK_BYTES.max(n)));
        }
        let chunk = self.chunks.len() - 1;
        let c = &mut self.chunks[chunk];
        let off = c.len();
        for p in parts {
            c.extend_from_slice(p);
        }
        Loc {
            chunk: chunk as u32,
            off: off as u32,
            len: n as u32,
        }
    }

    fn get(&self, loc: Loc) -> &[u8] {
        let off = loc.off as usize;
        &self.chunks[loc.chunk as usize][off..off + loc.len as usize]
    }
}

#[derive(Default)]
struct Inner {
    map: BTreeMap<MemKey, Loc>,
    arena: Arena,
}

/// Decode a set this memtable encoded (never corrupt: it never left
/// memory). Skips [`VersionSet::decode`]'s canonical-form check, which
/// costs a digest per member and proves nothing for bytes we built.
fn decode(bytes: &[u8]) -> VersionSet {
    postcard::from_bytes(bytes).unwrap_or_else(|_| unreachable!("memtable sets decode"))
}

/// What a read found of a key in one memtable: which memtable, and where
/// the key's set was (none: absent). Every write to the key moves it (the
/// arena only grows), so an unchanged mark means no write since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    memtable: u64,
    loc: Option<Loc>,
}

/// One memtable (active or immutable).
pub(crate) struct Memtable {
    id: u64,
    inner: RwLock<Inner>,
    bytes: AtomicUsize,
}

impl Inner {
    fn lookup(&self, key: &[u8]) -> Option<Loc> {
        // Always through a `MemKey`, even one that copies a long key to
        // the heap: its cached prefix settles most of the tree's
        // comparisons, where searching by the bare slice would call
        // memcmp at each.
        self.map.get(&MemKey::new(key)).copied()
    }
}

impl Memtable {
    /// An empty memtable paired with log segment `id`.
    pub(crate) fn new(id: u64) -> Self {
        Memtable {
            id,
            inner: RwLock::new(Inner::default()),
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

    /// Absorb under the memtable's lock after `check` (sibling limit) and
    /// `log` (commit-log append) succeed: one tree search per write.
    /// `encoded` is `version`'s canonical encoding. If either fails the
    /// memtable is unchanged.
    pub(crate) fn absorb_with<T, E>(
        &self,
        key: &[u8],
        version: Version,
        encoded: &[u8],
        check: impl FnOnce(&VersionSet, &Version) -> Result<(), E>,
        log: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let mut guard = self.inner.write();
        let Inner { map, arena } = &mut *guard;
        let (out, added) = match map.entry(MemKey::new(key)) {
            Entry::Vacant(slot) => {
                // A fresh key: the sibling check against an empty set
                // passes unless the limit is zero; ask it anyway to keep
                // one rule.
                check(&VersionSet::new(), &version)?;
                let out = log()?;
                let loc = arena.push(&[&[SINGLETON_PREFIX], encoded]);
                slot.insert(loc);
                (out, loc.len as usize + key.len() + ENTRY_OVERHEAD_BYTES)
            }
            Entry::Occupied(mut slot) => {
                let mut set = decode(arena.get(*slot.get()));
                check(&set, &version)?;
                let out = log()?;
                set.absorb(version);
                let loc = arena.push(&[&set.encode()]);
                *slot.get_mut() = loc;
                (out, loc.len as usize)
            }
        };
        drop(guard);
        self.bytes.fetch_add(added, Ordering::Relaxed);
        Ok(out)
    }

    /// [`Self::absorb_with`] for a writer that read `key`'s whole set
    /// (every memtable and table) where `mark` says, and computed `full`:
    /// that set with `version` absorbed. If the key is still where the
    /// mark found it (nothing wrote it here since), `full` is stored as
    /// the key's set here, without decoding what was; the writer has
    /// held the sibling bound over that whole set (a replica refuses an
    /// apply that would grow it past the bound), so `check` is not asked.
    /// Else `version` is absorbed as [`Self::absorb_with`] does, `check`
    /// included.
    // The closures and the set a writer computed are all needed here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn absorb_over<T, E>(
        &self,
        key: &[u8],
        version: Version,
        encoded: &[u8],
        mark: Mark,
        full: &VersionSet,
        check: impl FnOnce(&VersionSet, &Version) -> Result<(), E>,
        log: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        if mark.memtable != self.id {
            return self.absorb_with(key, version, encoded, check, log);
        }
        let mut guard = self.inner.write();
        let Inner { map, arena } = &mut *guard;
        let entry = map.entry(MemKey::new(key));
        let now = match &entry {
            Entry::Vacant(_) => None,
            Entry::Occupied(slot) => Some(*slot.get()),
        };
        if now != mark.loc {
            drop(guard);
            return self.absorb_with(key, version, encoded, check, log);
        }
        let out = log()?;
        // An overwrite leaves the version alone: the singleton encoding.
        let loc = match full.versions() {
            [only] if *only == version => arena.push(&[&[SINGLETON_PREFIX], encoded]),
            _ => arena.push(&[&full.encode()]),
        };
        let added = match entry {
            Entry::Vacant(slot) => {
                slot.insert(loc);
                loc.len as usize + key.len() + ENTRY_OVERHEAD_BYTES
            }
            Entry::Occupied(mut slot) => {
                *slot.get_mut() = loc;
                loc.len as usize
            }
        };
        drop(guard);
        self.bytes.fetch_add(added, Ordering::Relaxed);
        Ok(out)
    }

    /// The key's set here, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<VersionSet> {
        self.get_marked(key).0
    }

    /// [`Self::get`], with where the set was ([`Self::absorb_over`]).
    pub(crate) fn get_marked(&self, key: &[u8]) -> (Option<VersionSet>, Mark) {
        let inner = self.inner.read();
        let loc = inner.lookup(key);
        let set = loc.map(|loc| decode(inner.arena.get(loc)));
        let mark = Mark {
            memtable: self.id,
            loc,
        };
        (set, mark)
    }

    /// Approximate bytes held.
    pub(crate) fn approx_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.inner.read().map.len()
    }

    /// No keys at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.inner.read().map.is_empty()
    }

    /// Up to `max` entries after `from`, in key order, up to `to`.
    /// Scans page through a memtable this way so that an iterator need not
    /// borrow it (or hold its lock).
    pub(crate) fn page(
        &self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        max: usize,
    ) -> Vec<(Vec<u8>, VersionSet)> {
        // BTreeMap::range panics on an inverted range; it is just empty.
        let start = match from {
            Bound::Included(k) | Bound::Excluded(k) => Some(k),
            Bound::Unbounded => None,
        };
        let end = match to {
            Bound::Included(k) | Bound::Excluded(k) => Some(k),
            Bound::Unbounded => None,
        };
        if let (Some(a), Some(b)) = (start, end)
            && (a > b
                || (a == b
                    && !(matches!(from, Bound::Included(_)) && matches!(to, Bound::Included(_)))))
        {
            return Vec::new();
        }
        let inner = self.inner.read();
        inner
            .map
            .range::<[u8], _>((from, to))
            .take(max)
            .map(|(k, &loc)| (k.as_slice().to_vec(), decode(inner.arena.get(loc))))
            .collect()
    }

    /// Every entry in key order with its encoded set (for flushing).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) {
        let inner = self.inner.read();
        for (k, &loc) in &inner.map {
            f(k.as_slice(), inner.arena.get(loc));
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
        let m = Memtable::new(1);
        m.absorb(b"k", version);
        let mut flushed = Vec::new();
        m.for_each(|_, enc| flushed.push(enc.to_vec()));
        assert_eq!(flushed, vec![set.encode()]);
    }

    proptest::proptest! {
        /// The memtable agrees with a model map whatever the keys
        /// (lengths around the inline bound, shared prefixes, rewrites of
        /// a key already here): every key reads back its versions, an
        /// absent key reads nothing, and a flush lists every key once,
        /// in order.
        #[test]
        fn lookups_and_flushes_agree_with_a_model(
            writes in proptest::collection::vec(
                (proptest::collection::vec(0u8..4, 0..48), 1u64..4),
                1..200,
            ),
            absent in proptest::collection::vec(0u8..4, 0..48),
        ) {
            let m = Memtable::new(1);
            let mut model: BTreeMap<Vec<u8>, VersionSet> = BTreeMap::new();
            for (i, (key, actor)) in writes.iter().enumerate() {
                let version = v(*actor, i as u64 + 1);
                m.absorb(key, version.clone());
                model.entry(key.clone()).or_default().absorb(version);
            }
            for (key, set) in &model {
                proptest::prop_assert_eq!(m.get(key), Some(set.clone()));
            }
            if !model.contains_key(&absent) {
                proptest::prop_assert!(m.get(&absent).is_none());
            }
            proptest::prop_assert_eq!(m.len(), model.len());
            let mut flushed = Vec::new();
            m.for_each(|k, enc| flushed.push((k.to_vec(), enc.to_vec())));
            let expected: Vec<(Vec<u8>, Vec<u8>)> =
                model.iter().map(|(k, set)| (k.clone(), set.encode())).collect();
            proptest::prop_assert_eq!(flushed, expected);
        }
    }

    #[test]
    fn keys_order_like_their_bytes() {
        let keys: Vec<Vec<u8>> = vec![
            vec![9; 23],
            vec![9; 22],
            vec![],
            vec![0],
            vec![0, 0],
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\0\x01".to_vec(),
            b"abcdefgh".to_vec(),
            b"abcdefgh\0".to_vec(),
            b"abcdefgi".to_vec(),
            vec![0xff; 8],
            vec![0xff; 9],
            b"abcdefghijklmnop".to_vec(),
            b"abcdefghijklmnop\0".to_vec(),
            b"abcdefghijklmnoq".to_vec(),
            b"abcdefgi\0\0\0\0\0\0\0\0".to_vec(),
            vec![7; 38],
            vec![7; 39],
            vec![7; 40],
            vec![7; 41],
            [vec![7; 8], vec![1; 30]].concat(),
            [vec![7; 16], vec![1; 30]].concat(),
        ];
        for a in &keys {
            for b in &keys {
                let (ka, kb) = (MemKey::new(a), MemKey::new(b));
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(ka == kb, a == b);
            }
        }
        let mut keys = keys;
        keys.sort();
        let m = Memtable::new(1);
        for (i, k) in keys.iter().enumerate().rev() {
            m.absorb(k, v(1, i as u64 + 1));
        }
        let mut flushed = Vec::new();
        m.for_each(|k, _| flushed.push(k.to_vec()));
        assert_eq!(flushed, keys);
        for k in &keys {
            assert!(m.get(k).is_some());
        }
        let page = m.page(Bound::Excluded(b"a"), Bound::Included(b"abcdefgi"), 3);
        let got: Vec<&[u8]> = page.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(got, vec![&b"a\0"[..], b"a\0\x01", b"abcdefgh"]);
        assert!(
            m.page(Bound::Excluded(b"b"), Bound::Excluded(b"b"), 9)
                .is_empty()
        );
        assert!(
            m.page(Bound::Included(b"b"), Bound::Included(b"a"), 9)
                .is_empty()
        );
        assert_eq!(
            m.page(Bound::Included(b"a"), Bound::Included(b"a"), 9)
                .len(),
            1
        );
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
