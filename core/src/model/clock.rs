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

use serde::{Deserialize, Serialize};

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
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "RawClock")]
pub struct Clock {
    vector: BTreeMap<Actor, u64>,
    dots: BTreeSet<Dot>,
}

/// A [`Clock`] as decoded, before it is normalised.
#[derive(Deserialize)]
struct RawClock {
    vector: BTreeMap<Actor, u64>,
    dots: BTreeSet<Dot>,
}

impl From<RawClock> for Clock {
    fn from(raw: RawClock) -> Clock {
        let clock = Clock {
            vector: raw.vector,
            dots: raw.dots,
        };
        if clock.is_normalised() {
            // The common case (every clock this code encodes): no copy.
            return clock;
        }
        Clock::from_parts(clock.vector, clock.dots)
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
        let mut clock = Clock::new();
        for (actor, counter) in vector {
            if counter > 0 {
                let entry = clock.vector.entry(actor).or_insert(0);
                *entry = (*entry).max(counter);
            }
        }
        for dot in dots {
            if dot.counter > 0 {
                clock.dots.insert(dot);
            }
        }
        clock.normalise();
        clock
    }

    /// True when the history holds no event at all.
    pub fn is_empty(&self) -> bool {
        self.vector.is_empty() && self.dots.is_empty()
    }

    /// The contiguous prefix per actor.
    pub fn vector(&self) -> &BTreeMap<Actor, u64> {
        &self.vector
    }

    /// Events beyond the contiguous prefix.
    pub fn dots(&self) -> &BTreeSet<Dot> {
        &self.dots
    }

    /// Does this history contain the event `dot`?
    pub fn contains(&self, dot: Dot) -> bool {
        self.vector
            .get(&dot.actor)
            .is_some_and(|&n| dot.counter <= n)
            || self.dots.contains(&dot)
    }

    /// The greatest event number of `actor` in this history (0 if none).
    /// A coordinator issues `max_counter + 1` for a new write.
    pub fn max_counter(&self, actor: Actor) -> u64 {
        let prefix = self.vector.get(&actor).copied().unwrap_or(0);
        let detached = self
            .dots
            .range(
                Dot { actor, counter: 0 }..=Dot {
                    actor,
                    counter: u64::MAX,
                },
            )
            .next_back()
            .map_or(0, |d| d.counter);
        prefix.max(detached)
    }

    /// Add one event to the history.
    pub fn add_dot(&mut self, dot: Dot) {
        if dot.counter == 0 || self.contains(dot) {
            return;
        }
        self.dots.insert(dot);
        self.normalise();
    }

    /// Is every event of `self` also in `other`?
    pub fn is_covered_by(&self, other: &Clock) -> bool {
        self.vector
            .iter()
            .all(|(a, &n)| other.vector.get(a).is_some_and(|&m| n <= m))
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
        for (&actor, &n) in &other.vector {
            let entry = self.vector.entry(actor).or_insert(0);
            *entry = (*entry).max(n);
        }
        self.dots.extend(other.dots.iter().copied());
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
        self.vector.values().all(|&n| n > 0)
            && self.dots.iter().all(|dot| {
                let prefix = self.vector.get(&dot.actor).copied().unwrap_or(0);
                dot.counter > prefix.saturating_add(1)
            })
    }

    /// Restore the invariant: drop covered dots and fold contiguous ones.
    fn normalise(&mut self) {
        // Dots are sorted by (actor, counter), so one pass folds each run of
        // contiguous events into the prefix of its actor.
        let dots = std::mem::take(&mut self.dots);
        for dot in dots {
            let prefix = self.vector.get(&dot.actor).copied().unwrap_or(0);
            if dot.counter <= prefix {
                continue;
            }
            if dot.counter == prefix + 1 {
                self.vector.insert(dot.actor, dot.counter);
            } else {
                self.dots.insert(dot);
            }
        }
        self.vector.retain(|_, n| *n > 0);
    }
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
        assert_eq!(c.dots().iter().copied().collect::<Vec<_>>(), vec![d(1, 4)]);
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
