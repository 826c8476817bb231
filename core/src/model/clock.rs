//! Causal clocks: the set of write events a version has seen.
//!
//! A [`Clock`] is a causal history over node actors, stored compactly as a
//! version vector (a contiguous prefix of events per actor) plus a set of
//! *dots*: single events beyond that prefix. A fresh write has the history
//! of the context the client read plus one new dot from its coordinator;
//! that dot may not be contiguous with what the context holds for that
//! actor (another client may have written through the same coordinator in
//! between), which is exactly the case a plain version vector gets wrong
//! by declaring the second write to dominate the first. Keeping the dot
//! separate is what dotted version vectors do, generalised so that the
//! least upper bound of several clocks (a merge) is again a clock.
//!
//! Invariant: a clock is always *normalised*: no dot is covered by the
//! vector, and no dot is the next event after the vector's entry for its
//! actor (such dots are folded into the vector). Two clocks are equal as
//! histories exactly when they are equal as values, so equality, ordering
//! and encoding all agree.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node actor: the identity under which a node coordinates writes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Actor(pub u64);

/// One write event: the `counter`-th write coordinated by `actor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The coordinating actor.
    pub actor: Actor,
    /// The actor's event number, starting at 1.
    pub counter: u64,
}

/// How two clocks relate in causal order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Both hold the same events.
    Equal,
    /// The left clock's events are a strict subset of the right's.
    Before,
    /// The left clock's events are a strict superset of the right's.
    After,
    /// Each holds an event the other lacks.
    Concurrent,
}

/// A causal history: version vector plus detached dots (see module docs).
///
/// Decoding normalises: a clock from another machine (a peer's versions,
/// a bridge batch, a hand-made client context) may hold zero entries,
/// covered dots or dots contiguous with the vector, which no clock built
/// here holds, and which would make [`Clock::compare`] tell equal
/// histories apart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "RawClock")]
pub struct Clock {
    /// The contiguous prefix per actor: sorted by actor, one entry each,
    /// every counter above zero. Encoded as a map, as a `BTreeMap` was.
    vector: Vec<(Actor, u64)>,
    /// Events beyond it: sorted, no two alike. Encoded as a sequence, as a
    /// `BTreeSet` was.
    dots: Vec<Dot>,
}

// Sorted vectors rather than a B-tree map and set: a clock holds a handful
// of entries, and every write clones, joins, compares, encodes and drops
// several. The bytes are those of the map and set they replace.
impl Serialize for Clock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut clock = serializer.serialize_struct("Clock", 2)?;
        clock.serialize_field("vector", &AsMap(&self.vector))?;
        clock.serialize_field("dots", &self.dots)?;
        clock.end()
    }
}

/// The vector as the map it is encoded as.
struct AsMap<'a>(&'a [(Actor, u64)]);

impl Serialize for AsMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(actor, n)| (actor, n)))
    }
}

/// A vector decoded from its map, pairs in the order they came.
struct Pairs(Vec<(Actor, u64)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of actors to counters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                // A length read off the wire is a claim, not an allocation.
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(256));
                while let Some(pair) = map.next_entry::<Actor, u64>()? {
                    pairs.push(pair);
                }
                Ok(Pairs(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}

/// A [`Clock`] as decoded, before it is normalised.
#[derive(Deserialize)]
struct RawClock {
    vector: Pairs,
    dots: Vec<Dot>,
}

impl From<RawClock> for Clock {
    fn from(raw: RawClock) -> Clock {
        let clock = Clock {
            vector: raw.vector.0,
            dots: raw.dots,
        };
        let sorted = clock.vector.windows(2).all(|w| w[0].0 < w[1].0)
            && clock.dots.windows(2).all(|w| w[0] < w[1]);
        if sorted && clock.is_normalised() {
            // The common case (every clock this code encodes): no copy.
            return clock;
        }
        // As the map and set this decoded into did: a later entry for an
        // actor replaces an earlier one; a repeated dot counts once.
        let mut vector = BTreeMap::new();
        for (actor, n) in clock.vector {
            vector.insert(actor, n);
        }
        let dots: BTreeSet<Dot> = clock.dots.into_iter().collect();
        Clock::from_parts(vector, dots)
    }
}

/// A clock's vector, read-only: the contiguous prefix per actor.
#[derive(Clone, Copy, Debug)]
pub struct Vector<'a>(&'a [(Actor, u64)]);

impl<'a> Vector<'a> {
    /// The prefix of `actor` (`None`: no event of it).
    pub fn get(&self, actor: &Actor) -> Option<&'a u64> {
        let entries = self.0;
        entries
            .binary_search_by_key(actor, |(a, _)| *a)
            .ok()
            .map(|i| &entries[i].1)
    }

    /// Entries in actor order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a Actor, &'a u64)> + use<'a> {
        self.0.iter().map(|(actor, n)| (actor, n))
    }

    /// Actors, in order.
    pub fn keys(&self) -> impl Iterator<Item = &'a Actor> + use<'a> {
        self.0.iter().map(|(actor, _)| actor)
    }

    /// Prefixes, in actor order.
    pub fn values(&self) -> impl Iterator<Item = &'a u64> + use<'a> {
        self.0.iter().map(|(_, n)| n)
    }

    /// Number of actors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No actor at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Clock {
    /// The empty history (what a client that has read nothing sends).
    pub fn new() -> Self {
        Self::default()
    }

    /// Build a clock from raw parts, normalising them.
    pub fn from_parts(
        vector: impl IntoIterator<Item = (Actor, u64)>,
        dots: impl IntoIterator<Item = Dot>,
    ) -> Self {
        let mut prefixes: BTreeMap<Actor, u64> = BTreeMap::new();
        for (actor, counter) in vector {
            if counter > 0 {
                let entry = prefixes.entry(actor).or_insert(0);
                *entry = (*entry).max(counter);
            }
        }
        let dots: BTreeSet<Dot> = dots.into_iter().filter(|d| d.counter > 0).collect();
        let mut clock = Clock {
            vector: prefixes.into_iter().collect(),
            dots: dots.into_iter().collect(),
        };
        clock.normalise();
        clock
    }

    /// True when the history holds no event at all.
    pub fn is_empty(&self) -> bool {
        self.vector.is_empty() && self.dots.is_empty()
    }

    /// The contiguous prefix per actor.
    pub fn vector(&self) -> Vector<'_> {
        Vector(&self.vector)
    }

    /// Events beyond the contiguous prefix, in order.
    pub fn dots(&self) -> &[Dot] {
        &self.dots
    }

    /// The prefix of `actor` (0: none).
    fn prefix(&self, actor: Actor) -> u64 {
        self.vector().get(&actor).copied().unwrap_or(0)
    }

    /// Does this history contain the event `dot`?
    pub fn contains(&self, dot: Dot) -> bool {
        self.vector()
            .get(&dot.actor)
            .is_some_and(|&n| dot.counter <= n)
            || self.dots.binary_search(&dot).is_ok()
    }

    /// The greatest event number of `actor` in this history (0 if none).
    /// A coordinator issues `max_counter + 1` for a new write.
    pub fn max_counter(&self, actor: Actor) -> u64 {
        // Dots are sorted by (actor, counter): the last of `actor`'s is
        // just before the first dot of a later actor.
        let end = self.dots.partition_point(|d| d.actor <= actor);
        let detached = end
            .checked_sub(1)
            .map(|i| self.dots[i])
            .filter(|d| d.actor == actor)
            .map_or(0, |d| d.counter);
        self.prefix(actor).max(detached)
    }

    /// Add one event to the history.
    pub fn add_dot(&mut self, dot: Dot) {
        if dot.counter == 0 {
            return;
        }
        let prefix = self.prefix(dot.actor);
        if dot.counter <= prefix {
            return;
        }
        match self.dots.binary_search(&dot) {
            Ok(_) => {}
            Err(at) => {
                self.dots.insert(at, dot);
                if dot.counter == prefix + 1 {
                    // Only a dot next to its actor's prefix folds.
                    self.normalise();
                }
            }
        }
    }

    /// Is every event of `self` also in `other`?
    pub fn is_covered_by(&self, other: &Clock) -> bool {
        self.vector
            .iter()
            .all(|&(a, n)| other.vector().get(&a).is_some_and(|&m| n <= m))
            && self.dots.iter().all(|&d| other.contains(d))
    }

    /// Causal relation of `self` to `other`.
    pub fn compare(&self, other: &Clock) -> Causality {
        match (self.is_covered_by(other), other.is_covered_by(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (false, false) => Causality::Concurrent,
        }
    }

    /// Strictly dominated by `other`: every event of ours is in `other`,
    /// and `other` has at least one more.
    pub fn is_dominated_by(&self, other: &Clock) -> bool {
        self.compare(other) == Causality::Before
    }

    /// Neither clock covers the other.
    pub fn is_concurrent_with(&self, other: &Clock) -> bool {
        self.compare(other) == Causality::Concurrent
    }

    /// Least upper bound: the union of both histories, in place.
    pub fn join(&mut self, other: &Clock) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            self.clone_from(other);
            return;
        }
        // Both sorted: merge, the greater prefix per actor.
        self.vector = merge_sorted(
            &self.vector,
            &other.vector,
            |e| e.0,
            |x, y| (x.0, x.1.max(y.1)),
        );
        if !other.dots.is_empty() {
            self.dots = merge_sorted(&self.dots, &other.dots, |d| *d, |x, _| x);
        }
        self.normalise();
    }

    /// Least upper bound of many clocks (empty clock for none).
    pub fn lub<'a>(clocks: impl IntoIterator<Item = &'a Clock>) -> Clock {
        let mut out = Clock::new();
        for c in clocks {
            out.join(c);
        }
        out
    }

    /// Number of (actor, counter) entries stored; bounds clock growth.
    pub fn entry_count(&self) -> usize {
        self.vector.len() + self.dots.len()
    }

    /// Does the clock keep the invariant (see the module docs)?
    fn is_normalised(&self) -> bool {
        self.vector.iter().all(|&(_, n)| n > 0)
            && self
                .dots
                .iter()
                .all(|dot| dot.counter > self.prefix(dot.actor).saturating_add(1))
    }

    /// Restore the invariant: drop covered dots and fold contiguous ones.
    fn normalise(&mut self) {
        if self.dots.is_empty() {
            self.vector.retain(|&(_, n)| n > 0);
            return;
        }
        // Dots are sorted by (actor, counter), so one pass folds each run of
        // contiguous events into the prefix of its actor.
        let dots = std::mem::take(&mut self.dots);
        for dot in dots {
            let at = self.vector.binary_search_by_key(&dot.actor, |(a, _)| *a);
            let prefix = at.map_or(0, |i| self.vector[i].1);
            if dot.counter <= prefix {
                continue;
            }
            if dot.counter == prefix + 1 {
                match at {
                    Ok(i) => self.vector[i].1 = dot.counter,
                    Err(i) => self.vector.insert(i, (dot.actor, dot.counter)),
                }
            } else {
                self.dots.push(dot);
            }
        }
        self.vector.retain(|&(_, n)| n > 0);
    }
}

/// Merge two runs sorted by `key`, each holding a key at most once; where
/// both hold a key, `both` makes the one entry kept.
fn merge_sorted<T: Copy, K: Ord>(
    a: &[T],
    b: &[T],
    key: impl Fn(&T) -> K,
    both: impl Fn(T, T) -> T,
) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match key(&a[i]).cmp(&key(&b[j])) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(both(a[i], b[j]));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(actor: u64, counter: u64) -> Dot {
        Dot {
            actor: Actor(actor),
            counter,
        }
    }

    #[test]
    fn contiguous_dots_fold_into_vector() {
        let c = Clock::from_parts([], [d(1, 1), d(1, 2), d(1, 4)]);
        assert_eq!(c.vector().get(&Actor(1)), Some(&2));
        assert_eq!(c.dots().to_vec(), vec![d(1, 4)]);
        let mut c2 = c.clone();
        c2.add_dot(d(1, 3));
        assert_eq!(c2.vector().get(&Actor(1)), Some(&4));
        assert!(c2.dots().is_empty());
    }

    #[test]
    fn decoding_normalises_a_hand_made_clock() {
        // A zero entry, a covered dot and a dot next to the vector: equal,
        // as a history, to {1: 3}, and decoded as exactly that.
        let raw = (
            BTreeMap::<Actor, u64>::from([(Actor(1), 2), (Actor(2), 0)]),
            BTreeSet::from([d(1, 1), d(1, 3)]),
        );
        let bytes = postcard::to_allocvec(&raw).unwrap();
        let clock: Clock = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(clock, Clock::from_parts([(Actor(1), 3)], []));
        assert_eq!(
            clock.compare(&Clock::from_parts([(Actor(1), 3)], [])),
            Causality::Equal
        );
        let normal = Clock::from_parts([(Actor(1), 2)], [d(1, 5)]);
        let bytes = postcard::to_allocvec(&normal).unwrap();
        assert_eq!(postcard::from_bytes::<Clock>(&bytes).unwrap(), normal);
    }

    /// The history a clock stands for, event by event.
    fn events(c: &Clock) -> BTreeSet<(u64, u64)> {
        let mut out = BTreeSet::new();
        for (a, &n) in c.vector().iter() {
            out.extend((1..=n).map(|k| (a.0, k)));
        }
        out.extend(c.dots().iter().map(|d| (d.actor.0, d.counter)));
        out
    }

    fn clock_strategy() -> impl proptest::strategy::Strategy<Value = Clock> {
        use proptest::prelude::*;
        (
            proptest::collection::vec((0u64..4, 0u64..5), 0..4),
            proptest::collection::vec((0u64..4, 0u64..9), 0..6),
        )
            .prop_map(|(vector, dots)| {
                Clock::from_parts(
                    vector.into_iter().map(|(a, n)| (Actor(a), n)),
                    dots.into_iter().map(|(a, c)| d(a, c)),
                )
            })
    }

    /// The clock as it was held before: a map and a set, whose encoding
    /// a clock's must still be.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Before {
        vector: BTreeMap<Actor, u64>,
        dots: BTreeSet<Dot>,
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 512,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x000c_10c4),
            ..proptest::test_runner::Config::default()
        })]

        /// Every operation agrees with the sets of events the clocks stand
        /// for, and equal histories are equal clocks.
        #[test]
        fn operations_agree_with_the_histories(
            a in clock_strategy(),
            b in clock_strategy(),
            actor in 0u64..5,
            counter in 0u64..10,
        ) {
            let (ea, eb) = (events(&a), events(&b));
            proptest::prop_assert!(a.is_normalised() && b.is_normalised());
            proptest::prop_assert_eq!(a == b, ea == eb);
            if counter > 0 {
                proptest::prop_assert_eq!(
                    a.contains(d(actor, counter)),
                    ea.contains(&(actor, counter))
                );
            }
            let max = ea.iter().filter(|e| e.0 == actor).map(|e| e.1).max().unwrap_or(0);
            proptest::prop_assert_eq!(a.max_counter(Actor(actor)), max);
            let want = match (ea.is_subset(&eb), eb.is_subset(&ea)) {
                (true, true) => Causality::Equal,
                (true, false) => Causality::Before,
                (false, true) => Causality::After,
                (false, false) => Causality::Concurrent,
            };
            proptest::prop_assert_eq!(a.compare(&b), want);
            let mut joined = a.clone();
            joined.join(&b);
            proptest::prop_assert!(joined.is_normalised());
            proptest::prop_assert_eq!(events(&joined), ea.union(&eb).copied().collect::<BTreeSet<_>>());
            proptest::prop_assert_eq!(Clock::lub([&a, &b]), joined);
            let mut added = a.clone();
            added.add_dot(d(actor, counter));
            proptest::prop_assert!(added.is_normalised());
            let mut want_added = ea.clone();
            if counter > 0 {
                want_added.insert((actor, counter));
            }
            proptest::prop_assert_eq!(events(&added), want_added);
        }

        /// A clock encodes to the bytes of the map and set it was held
        /// as, and decodes from them; a hand-made map with repeated or
        /// unsorted actors decodes as the map did (the later entry wins).
        #[test]
        fn encodes_as_the_map_and_set_it_replaced(
            c in clock_strategy(),
            raw in proptest::collection::vec((0u64..4, 0u64..6), 0..5),
            dots in proptest::collection::vec((0u64..4, 0u64..9), 0..5),
        ) {
            let before = Before {
                vector: c.vector().iter().map(|(a, n)| (*a, *n)).collect(),
                dots: c.dots().iter().copied().collect(),
            };
            let bytes = postcard::to_allocvec(&c).unwrap();
            proptest::prop_assert_eq!(&bytes, &postcard::to_allocvec(&before).unwrap());
            proptest::prop_assert_eq!(postcard::from_bytes::<Clock>(&bytes).unwrap(), c);

            // A map and a sequence written pair by pair, in any order.
            let mut hand = vec![raw.len() as u8];
            for (a, n) in &raw {
                hand.extend([*a as u8, *n as u8]);
            }
            hand.push(dots.len() as u8);
            for (a, k) in &dots {
                hand.extend([*a as u8, *k as u8]);
            }
            let decoded: Clock = postcard::from_bytes(&hand).unwrap();
            let mut map = BTreeMap::new();
            for (a, n) in &raw {
                map.insert(Actor(*a), *n);
            }
            let want = Clock::from_parts(map, dots.iter().map(|(a, k)| d(*a, *k)));
            proptest::prop_assert_eq!(decoded, want);
        }
    }

    #[test]
    fn two_writes_on_same_context_through_one_coordinator_are_concurrent() {
        let ctx = Clock::from_parts([(Actor(1), 3)], []);
        let mut w1 = ctx.clone();
        w1.add_dot(d(1, 4));
        let mut w2 = ctx.clone();
        w2.add_dot(d(1, 5));
        assert_eq!(w1.compare(&w2), Causality::Concurrent);
        assert_eq!(ctx.compare(&w1), Causality::Before);
        let merged = Clock::lub([&w1, &w2]);
        assert_eq!(w1.compare(&merged), Causality::Before);
        assert_eq!(merged.vector().get(&Actor(1)), Some(&5));
        assert_eq!(merged.max_counter(Actor(1)), 5);
        assert_eq!(w2.max_counter(Actor(1)), 5);
    }
}
