//! Version sets: the live siblings of one key.
//!
//! A [`VersionSet`] holds the versions of a key that no other known version
//! dominates. Absorbing a version is a join in a semilattice: the result is
//! the set of maximal elements of the union, with equal clocks resolved to
//! the version with the greater content digest. That makes absorption
//! commutative, associative and idempotent, which is what lets the storage
//! engine merge sets from any number of tables in any order, and replicas
//! exchange versions in any order, and still agree byte for byte.

use serde::{Deserialize, Serialize};

use super::clock::{Causality, Clock};
use super::version::{ContentHash, DcName, Payload, Version};

/// The live siblings of one key, kept in canonical order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionSet {
    versions: Vec<Version>,
}

/// What absorbing a version did to a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Absorbed {
    /// The version was already known or is dominated: nothing changed.
    Unchanged,
    /// The version joined the set (possibly displacing versions it dominates
    /// or an equal-clock version with a smaller digest).
    Changed,
}

impl VersionSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set built by absorbing every version given.
    pub fn from_versions(versions: impl IntoIterator<Item = Version>) -> Self {
        let mut set = Self::new();
        for v in versions {
            set.absorb(v);
        }
        set
    }

    /// Siblings in canonical order.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// Consume into the siblings, in canonical order.
    pub fn into_versions(self) -> Vec<Version> {
        self.versions
    }

    /// Number of siblings (tombstones included).
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// No version at all.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Siblings that are values (what a client read returns).
    pub fn live(&self) -> impl Iterator<Item = &Version> {
        self.versions.iter().filter(|v| !v.is_tombstone())
    }

    /// Siblings a read at `now_ms` returns: values not expired. An
    /// expired value reads as a tombstone would.
    pub fn live_at(&self, now_ms: u64) -> impl Iterator<Item = &Version> {
        self.versions.iter().filter(move |v| v.is_live_at(now_ms))
    }

    /// True when every sibling is a tombstone (or there is none).
    pub fn is_deleted(&self) -> bool {
        self.versions.iter().all(Version::is_tombstone)
    }

    /// Absorb one version: drop it if dominated, drop what it dominates.
    ///
    /// Two concurrent versions carrying the same write id are one logical
    /// write that two coordinators each gave a dot (a client retried
    /// elsewhere while the first coordinator still worked on it): they
    /// collapse into one version, before any merge, so the write takes
    /// effect once wherever its versions meet ([`collapse`]). A write id
    /// names one write: versions sharing one are taken to carry the same
    /// payload.
    pub fn absorb(&mut self, incoming: Version) -> Absorbed {
        self.absorb_with(incoming, true).0
    }

    /// [`absorb`](Self::absorb), and the version it made when `incoming`
    /// collapsed with another coordination of its write: a version no
    /// replica was sent, which the caller should spread as it would a
    /// write (a replica where a later write had already replaced the other
    /// copy cannot make it, see docs/decisions.md).
    pub fn absorb_noting_collapse(&mut self, incoming: Version) -> Option<Version> {
        let (_, collapsed) = self.absorb_with(incoming, true);
        collapsed
    }

    /// [`absorb`](Self::absorb), with or without the collapse of versions
    /// sharing a write id (without: how sets were built before it existed,
    /// which decoding still accepts).
    fn absorb_with(
        &mut self,
        mut incoming: Version,
        collapse_aliases: bool,
    ) -> (Absorbed, Option<Version>) {
        // Fast path (the storage engine's common case, a fresh key): the
        // one member of a singleton set is trivially in canonical order,
        // so no digest is needed.
        if self.versions.is_empty() {
            // Exact capacity: `push` would reserve room for four versions,
            // which in a memtable of single-version keys is mostly waste.
            self.versions = vec![incoming];
            return (Absorbed::Changed, None);
        }
        let mut changed = Absorbed::Unchanged;
        let mut collapsed = false;
        if collapse_aliases && incoming.write_id.is_some() {
            // At most one member shares the write id (the set keeps it so).
            let alias = self.versions.iter().position(|m| {
                m.write_id == incoming.write_id
                    && m.clock.compare(&incoming.clock) == Causality::Concurrent
            });
            if let Some(i) = alias {
                // The collapsed version dominates the member it replaces,
                // so no other member dominates it (members are pairwise
                // concurrent): it enters below.
                incoming = collapse(self.versions.remove(i), incoming);
                changed = Absorbed::Changed;
                collapsed = true;
            }
        }
        let mut incoming_digest: Option<ContentHash> = None;
        for (i, member) in self.versions.iter().enumerate() {
            match incoming.clock.compare(&member.clock) {
                Causality::Before => return (changed, None),
                Causality::Equal => {
                    if *member == incoming {
                        return (changed, None);
                    }
                    let ours = *incoming_digest.get_or_insert_with(|| incoming.digest());
                    if member.digest() >= ours {
                        return (changed, None);
                    }
                    // Clocks in a set are pairwise concurrent, so no other
                    // member can equal or dominate the incoming clock.
                    self.versions.remove(i);
                    break;
                }
                Causality::After | Causality::Concurrent => {}
            }
        }
        self.versions
            .retain(|member| incoming.clock.compare(&member.clock) != Causality::After);
        // An overwrite leaves the set empty here: no digest to compute.
        let pos = self
            .versions
            .partition_point(|v| precedes(v, &incoming, &mut incoming_digest));
        let made = collapsed.then(|| incoming.clone());
        self.versions.insert(pos, incoming);
        (Absorbed::Changed, made)
    }

    /// Absorb every version of `other`.
    pub fn join(&mut self, other: VersionSet) -> Absorbed {
        let mut changed = Absorbed::Unchanged;
        for v in other.versions {
            if self.absorb(v) == Absorbed::Changed {
                changed = Absorbed::Changed;
            }
        }
        changed
    }

    /// Least upper bound of all sibling clocks: the clock of a merged
    /// version and the causal context handed to clients.
    pub fn lub(&self) -> Clock {
        Clock::lub(self.versions.iter().map(|v| &v.clock))
    }

    /// The version that replaces all siblings after a resolver merged them.
    ///
    /// Its clock is the least upper bound (no new counter, so replicas that
    /// merge the same set independently produce the same clock), its
    /// timestamp and origin the greatest `(timestamp, origin DC)` of the
    /// siblings, and it records the resolver's content hash. Every field is
    /// a join of the siblings' (least upper bound, maximum), so a replica
    /// that merged some siblings before the others arrived ends with the
    /// bytes of one that merged them all at once (given an associative
    /// resolver). Taking the origin of the last sibling in canonical order
    /// was not: on a timestamp tie it followed the content digests, which
    /// differ between a merged version and the siblings it replaced.
    ///
    /// Its expiry is the latest of the siblings', and none if any sibling
    /// has none (a tombstone written by a delete has none): a merge never
    /// shortens the life of what it merges, and, being a maximum with
    /// "never" on top, it is a join like the other fields. Expired
    /// siblings take part in the merge like any other (replicas merge at
    /// different moments, so leaving them out would depend on the time of
    /// the merge and replicas would diverge).
    pub fn merged(&self, payload: Payload, resolver: ContentHash) -> Option<Version> {
        let latest = self
            .versions
            .iter()
            .max_by(|a, b| (a.timestamp_ms, &a.origin_dc).cmp(&(b.timestamp_ms, &b.origin_dc)))?;
        Some(Version {
            clock: self.lub(),
            payload,
            timestamp_ms: latest.timestamp_ms,
            origin_dc: latest.origin_dc.clone(),
            resolver: Some(resolver),
            write_id: None,
            expires_ms: self
                .versions
                .iter()
                .try_fold(0, |latest, v| v.expires_ms.map(|at| at.max(latest))),
        })
    }

    /// Drop the whole set if every sibling is dead since before
    /// `grace_cutoff_ms`: a tombstone stamped before it, or a version that
    /// expired before it (an expired value is a tombstone stamped at its
    /// expiry); returns whether it was dropped. Compaction calls this
    /// where no older table can still hold versions of the key.
    pub fn purge_expired_tombstones(&mut self, grace_cutoff_ms: u64) -> bool {
        let expired = !self.versions.is_empty()
            && self.versions.iter().all(|v| {
                (v.is_tombstone() && v.timestamp_ms < grace_cutoff_ms)
                    || v.expires_ms.is_some_and(|at| at < grace_cutoff_ms)
            });
        if expired {
            self.versions.clear();
        }
        expired
    }

    /// Canonical encoding (postcard).
    pub fn encode(&self) -> Vec<u8> {
        // Room for it all at once: growing from empty reallocates several
        // times for a set of one 100-byte value.
        let room = 1 + self
            .versions
            .iter()
            .map(Version::approx_bytes)
            .sum::<usize>();
        postcard::to_extend(self, Vec::with_capacity(room))
            .expect("encoding a VersionSet into a Vec cannot fail")
    }

    /// Content digest of the set: blake3 of its canonical encoding. Equal
    /// sets have equal digests on every replica (what Merkle repair
    /// compares).
    pub fn digest(&self) -> ContentHash {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// Decode a set and check it is canonical (normalised clocks, pairwise
    /// concurrent members, canonical order), so a corrupt or hostile
    /// encoding cannot smuggle in a set that absorb would never build.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let raw: VersionSet = postcard::from_bytes(bytes)?;
        // A set of at most one version is canonical by construction
        // (absorbing it into the empty set rebuilds it unchanged); skipping
        // the rebuild saves a digest per read of the common case.
        if raw.versions.len() <= 1 {
            return Ok(raw);
        }
        let mut rebuilt = VersionSet::new();
        for v in raw.versions.iter().cloned() {
            rebuilt.absorb_with(v, false);
        }
        if rebuilt != raw {
            return Err(postcard::Error::DeserializeBadEncoding);
        }
        // Sets stored before versions sharing a write id collapsed may
        // hold such pairs: they are canonical but for that, and come back
        // collapsed.
        let has_aliases = raw.versions.iter().enumerate().any(|(i, a)| {
            a.write_id.is_some()
                && raw.versions[i + 1..]
                    .iter()
                    .any(|b| b.write_id == a.write_id)
        });
        if has_aliases {
            return Ok(VersionSet::from_versions(raw.versions));
        }
        Ok(raw)
    }

    /// Approximate in-memory size, for memtable accounting.
    pub fn approx_bytes(&self) -> usize {
        self.versions.iter().map(Version::approx_bytes).sum()
    }

    /// The origin datacenters present among the siblings.
    pub fn origins(&self) -> impl Iterator<Item = &DcName> {
        self.versions.iter().map(|v| &v.origin_dc)
    }
}

/// One version for two concurrent versions of the same write id: the
/// least upper bound of their clocks, as a merge of the two would have
/// (so a replica that merged one of them with other siblings before the
/// other arrived ends with the bytes of one that collapsed them first),
/// and the rest (payload, timestamp, origin, expiry) of the one with the
/// greater `(timestamp, origin, payload digest, expiry)`. That choice does not
/// depend on the clocks, so collapsing is commutative, associative and
/// idempotent, as absorbing is.
fn collapse(a: Version, b: Version) -> Version {
    let key = |v: &Version| {
        let payload = postcard::to_allocvec(&v.payload).unwrap_or_default();
        (
            v.timestamp_ms,
            v.origin_dc.clone(),
            *blake3::hash(&payload).as_bytes(),
            v.expires_ms,
        )
    };
    let (mut kept, other) = if key(&a) >= key(&b) { (a, b) } else { (b, a) };
    kept.clock.join(&other.clock);
    kept
}

/// Whether `v` comes before `incoming` (whose digest is computed once,
/// into `incoming_digest`, and only if needed) in the canonical sibling
/// order: ascending timestamp, then content digest. Any total order that
/// depends only on content would do; this one also reads naturally
/// (oldest first) and is what resolvers receive. Digests, a blake3 of the
/// encoding each, are computed only where timestamps tie.
fn precedes(v: &Version, incoming: &Version, incoming_digest: &mut Option<ContentHash>) -> bool {
    v.timestamp_ms < incoming.timestamp_ms
        || (v.timestamp_ms == incoming.timestamp_ms
            && v.digest() < *incoming_digest.get_or_insert_with(|| incoming.digest()))
}

#[cfg(test)]
mod tests {
    use super::super::clock::{Actor, Dot};
    use super::*;
    use proptest::prelude::*;

    fn version_strategy() -> impl Strategy<Value = Version> {
        (
            proptest::collection::vec((0u64..3, 0u64..4), 0..3),
            proptest::collection::vec((0u64..3, 1u64..7), 0..3),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..3)),
            0u64..4,
            0u8..2,
            proptest::option::of(any::<[u8; 32]>().prop_map(|h| h)),
            proptest::option::of(0u64..4),
        )
            .prop_map(|(vector, dots, value, ts, dc, resolver, expires)| Version {
                clock: Clock::from_parts(
                    vector.into_iter().map(|(a, n)| (Actor(a), n)),
                    dots.into_iter().map(|(a, c)| Dot {
                        actor: Actor(a),
                        counter: c,
                    }),
                ),
                payload: value.map_or(Payload::Tombstone, Payload::Value),
                timestamp_ms: ts,
                origin_dc: DcName::from(format!("dc{dc}")),
                resolver,
                write_id: None,
                expires_ms: expires,
            })
    }

    fn absorb_all(vs: &[Version]) -> VersionSet {
        VersionSet::from_versions(vs.iter().cloned())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(0x15_7401), ..ProptestConfig::default() })]

        #[test]
        fn absorb_is_commutative(vs in proptest::collection::vec(version_strategy(), 0..8), seed in any::<u64>()) {
            let mut shuffled = vs.clone();
            // Deterministic permutation driven by the generated seed.
            let n = shuffled.len();
            let mut s = seed;
            for i in (1..n).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(absorb_all(&vs).encode(), absorb_all(&shuffled).encode());
        }

        #[test]
        fn join_is_associative(a in proptest::collection::vec(version_strategy(), 0..5),
                               b in proptest::collection::vec(version_strategy(), 0..5),
                               c in proptest::collection::vec(version_strategy(), 0..5)) {
            let (sa, sb, sc) = (absorb_all(&a), absorb_all(&b), absorb_all(&c));
            let mut left = sa.clone();
            left.join(sb.clone());
            left.join(sc.clone());
            let mut bc = sb;
            bc.join(sc);
            let mut right = sa;
            right.join(bc);
            prop_assert_eq!(left, right);
        }

        #[test]
        fn absorb_is_idempotent(vs in proptest::collection::vec(version_strategy(), 0..8)) {
            let once = absorb_all(&vs);
            let mut twice = once.clone();
            prop_assert_eq!(twice.join(once.clone()), Absorbed::Unchanged);
            prop_assert_eq!(&twice, &once);
            for v in &vs {
                prop_assert_eq!(twice.absorb(v.clone()), Absorbed::Unchanged);
            }
        }

        #[test]
        fn members_are_pairwise_concurrent_and_encoding_round_trips(vs in proptest::collection::vec(version_strategy(), 0..8)) {
            let set = absorb_all(&vs);
            for (i, a) in set.versions().iter().enumerate() {
                for b in &set.versions()[i + 1..] {
                    prop_assert_eq!(a.clock.compare(&b.clock), Causality::Concurrent);
                }
            }
            prop_assert_eq!(VersionSet::decode(&set.encode()).unwrap(), set);
        }

        #[test]
        fn merging_in_steps_gives_the_bytes_of_merging_at_once(
            vs in proptest::collection::vec(version_strategy(), 2..8),
            split in 1usize..7,
        ) {
            // A replica that merged some siblings before the others arrived
            // must end with the bytes of one that merged them all at once.
            let set = absorb_all(&vs);
            prop_assume!(set.len() >= 2);
            let split = split.min(set.len() - 1);
            let (first, rest) = set.versions().split_at(split);
            let step = |vs: &[Version]| {
                let part = absorb_all(vs);
                if part.len() > 1 {
                    part.merged(Payload::Value(b"m".to_vec()), [7; 32]).unwrap()
                } else {
                    part.versions()[0].clone()
                }
            };
            let mut later: Vec<Version> = vec![step(first)];
            later.extend(rest.iter().cloned());
            let stepwise = absorb_all(&later);
            // Only where the early merge dropped none of the later siblings
            // (its clock does not cover them) do the two paths see the same
            // siblings.
            prop_assume!(stepwise.len() == later.len());
            prop_assert_eq!(
                stepwise.merged(Payload::Value(b"m".to_vec()), [7; 32]),
                set.merged(Payload::Value(b"m".to_vec()), [7; 32])
            );
        }

        #[test]
        fn merged_version_dominates_every_sibling(vs in proptest::collection::vec(version_strategy(), 1..8)) {
            let set = absorb_all(&vs);
            let merged = set.merged(Payload::Value(b"m".to_vec()), [7; 32]).unwrap();
            let mut after = set.clone();
            after.absorb(merged.clone());
            // The lub covers every sibling; it dominates all but an equal
            // clock (single sibling), which the digest tie-break settles.
            prop_assert_eq!(after.len(), 1);
            for v in set.versions() {
                prop_assert!(v.clock.is_covered_by(&merged.clock));
            }
        }
    }

    #[test]
    fn equal_clocks_with_different_bytes_keep_the_greater_digest() {
        let clock = Clock::from_parts([(Actor(1), 2)], []);
        let a = Version::value(clock.clone(), b"a".to_vec(), 5, "dc1".into());
        let b = Version::value(clock, b"b".to_vec(), 5, "dc1".into());
        let winner = if a.digest() > b.digest() {
            a.clone()
        } else {
            b.clone()
        };
        let ab = VersionSet::from_versions([a.clone(), b.clone()]);
        let ba = VersionSet::from_versions([b, a]);
        assert_eq!(ab.versions(), std::slice::from_ref(&winner));
        assert_eq!(ab, ba);
    }

    #[test]
    fn expired_tombstones_are_purged_only_when_alone_and_old() {
        let c1 = Clock::from_parts([(Actor(1), 1)], []);
        let c2 = Clock::from_parts([(Actor(2), 1)], []);
        let mut set = VersionSet::from_versions([
            Version::tombstone(c1.clone(), 10, "dc1".into()),
            Version::value(c2.clone(), b"x".to_vec(), 10, "dc1".into()),
        ]);
        assert!(!set.purge_expired_tombstones(100));
        assert_eq!(set.len(), 2);
        let mut only_tomb = VersionSet::from_versions([Version::tombstone(c1, 10, "dc1".into())]);
        assert!(!only_tomb.purge_expired_tombstones(10));
        assert!(only_tomb.purge_expired_tombstones(11));
        assert!(only_tomb.is_empty());
    }

    #[test]
    fn decode_rejects_non_canonical_sets() {
        let c = Clock::from_parts([(Actor(1), 1)], []);
        let older = Version::value(Clock::new(), b"old".to_vec(), 1, "dc1".into());
        let newer = Version::value(c, b"new".to_vec(), 2, "dc1".into());
        // Hand-built set holding a dominated version next to its successor.
        let bad = VersionSet {
            versions: vec![older, newer],
        };
        assert!(VersionSet::decode(&bad.encode()).is_err());
        assert!(VersionSet::decode(&[0xff, 0xff, 0xff]).is_err());
    }

    /// One logical write as two coordinators issued it: the client's
    /// context plus a dot of each coordinator's actor (`actors` and up,
    /// which no other generated version names), the same payload, each
    /// coordinator's own timestamp and datacenter.
    fn aliases_strategy(actors: u64) -> impl Strategy<Value = Vec<Version>> {
        (
            proptest::collection::vec((0u64..3, 0u64..4), 0..3),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..3)),
            any::<u8>(),
            proptest::collection::vec((0u64..4, 0u8..2), 2..4),
        )
            .prop_map(move |(context, value, id, coordinators)| {
                let context =
                    Clock::from_parts(context.into_iter().map(|(a, n)| (Actor(a), n)), []);
                coordinators
                    .into_iter()
                    .enumerate()
                    .map(|(i, (ts, dc))| {
                        let mut clock = context.clone();
                        clock.add_dot(Dot {
                            actor: Actor(actors + i as u64),
                            counter: 1,
                        });
                        Version {
                            clock,
                            payload: value.clone().map_or(Payload::Tombstone, Payload::Value),
                            timestamp_ms: ts,
                            origin_dc: DcName::from(format!("dc{dc}")),
                            resolver: None,
                            write_id: Some([id; 16]),
                            expires_ms: None,
                        }
                    })
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(0x15_7402), ..ProptestConfig::default() })]

        #[test]
        fn a_write_coordinated_twice_takes_effect_once_in_any_order(
            others in proptest::collection::vec(version_strategy(), 0..5),
            first in aliases_strategy(10),
            second in proptest::option::of(aliases_strategy(20)),
            seed in any::<u64>(),
        ) {
            let all: Vec<Version> = others.into_iter().chain(first).chain(second.into_iter().flatten()).collect();
            let mut shuffled = all.clone();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let set = absorb_all(&all);
            prop_assert_eq!(set.encode(), absorb_all(&shuffled).encode());
            for (i, a) in set.versions().iter().enumerate() {
                for b in &set.versions()[i + 1..] {
                    prop_assert!(a.write_id.is_none() || a.write_id != b.write_id, "two versions of one write id in {:?}", set);
                }
            }
            prop_assert_eq!(VersionSet::decode(&set.encode()).unwrap(), set.clone());
            // Split between two replicas and joined: the same bytes.
            let (left, right) = shuffled.split_at(shuffled.len() / 2);
            let mut joined = absorb_all(left);
            joined.join(absorb_all(right));
            prop_assert_eq!(joined.encode(), set.encode());
        }
    }

    /// One write (id 9) coordinated twice, by actors 1 and 2 in two DCs,
    /// and a concurrent write of actor 3.
    fn coordinated_twice() -> (Version, Version, Version) {
        let dot = |a| {
            Clock::from_parts(
                [],
                [Dot {
                    actor: Actor(a),
                    counter: 1,
                }],
            )
        };
        let id = Some([9; 16]);
        let a = Version {
            write_id: id,
            ..Version::value(dot(1), b"x".to_vec(), 5, "dc1".into())
        };
        let b = Version {
            write_id: id,
            ..Version::value(dot(2), b"x".to_vec(), 7, "dc2".into())
        };
        let other = Version::value(dot(3), b"y".to_vec(), 6, "dc1".into());
        (a, b, other)
    }

    #[test]
    fn versions_sharing_a_write_id_collapse_into_one() {
        let (a, b, other) = coordinated_twice();
        let mut both = b.clone();
        both.clock.join(&a.clock);
        for order in [[&a, &b, &other], [&b, &other, &a], [&other, &a, &b]] {
            let set = VersionSet::from_versions(order.into_iter().cloned());
            assert_eq!(set.len(), 2, "{set:?}");
            assert!(set.versions().contains(&both), "{set:?}");
            assert!(set.versions().contains(&other));
        }
        // A context that saw either one supersedes the write.
        let mut over_a = a.clock.clone();
        over_a.add_dot(Dot {
            actor: Actor(4),
            counter: 1,
        });
        assert!(!both.clock.is_covered_by(&over_a));
        // A set stored before the collapse existed decodes collapsed.
        let mut old = VersionSet::new();
        for v in [a.clone(), b.clone(), other.clone()] {
            old.absorb_with(v, false);
        }
        assert_eq!(old.len(), 3);
        let decoded = VersionSet::decode(&old.encode()).expect("an older set decodes");
        assert_eq!(decoded, VersionSet::from_versions([a, b, other]));
    }

    #[test]
    fn a_replica_that_merged_before_the_second_coordination_arrived_agrees() {
        let (a, b, d) = coordinated_twice();
        let merge = |set: &VersionSet| set.merged(Payload::Value(b"m".to_vec()), [7; 32]).unwrap();
        // One replica merges `a` with `d`, then `b` arrives and it merges
        // again; the other collapses `a` and `b` first, then merges `d`.
        let early = merge(&VersionSet::from_versions([a.clone(), d.clone()]));
        let early = merge(&VersionSet::from_versions([early, b.clone()]));
        let late = merge(&VersionSet::from_versions([a, b, d]));
        assert_eq!(early, late);
    }
}
