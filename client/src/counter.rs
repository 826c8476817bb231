//! The counter format of keyspaces that hold counters (`counter = true`):
//! a PN-counter as compact JSON, `{"n":{"<actor>":total},"p":{"<actor>":total}}`,
//! the format of the `pn-counter` example resolver, which merges it.
//!
//! Each actor only ever raises its own totals: `p` counts its increments,
//! `n` its decrements, and the counter's value is `sum(p) - sum(n)`. A node
//! adds to a counter on behalf of its own actor (the actor of its write
//! dots), under the key's lock at the key's deciding replica, over every
//! sibling it holds ([`crate::wire::WriteMode::Add`]); counters changed
//! concurrently (in two datacenters, or at two replicas during failover)
//! become siblings that the keyspace's resolver joins by per-actor
//! maximum, so every increment counts exactly once.
//!
//! ```
//! use isthmus_client::counter::Counter;
//!
//! let mut dc1 = Counter::default();
//! dc1.add("a1", 5);
//! let mut dc2 = Counter::default();
//! dc2.add("b7", -2);
//! let mut both = Counter::parse(&dc1.encode()).unwrap();
//! both.join(&dc2);
//! assert_eq!(both.value(), 3);
//! assert_eq!(both.encode(), br#"{"n":{"b7":2},"p":{"a1":5}}"#);
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A PN-counter: per-actor increment and decrement totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counter {
    /// Decrement totals per actor.
    #[serde(default)]
    pub n: BTreeMap<String, u64>,
    /// Increment totals per actor.
    #[serde(default)]
    pub p: BTreeMap<String, u64>,
}

/// A value that is not a counter in this format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the value is not a counter: {0}")]
pub struct NotACounter(String);

impl Counter {
    /// Parse a counter.
    pub fn parse(bytes: &[u8]) -> Result<Counter, NotACounter> {
        serde_json::from_slice(bytes).map_err(|e| NotACounter(e.to_string()))
    }

    /// The join of every value in `values`: per-actor maxima.
    pub fn join_all<'a>(
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Counter, NotACounter> {
        let mut out = Counter::default();
        for value in values {
            out.join(&Counter::parse(value)?);
        }
        Ok(out)
    }

    /// Canonical encoding: compact JSON, keys sorted.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a map of strings to integers always encodes")
    }

    /// Add `delta` (negative: subtract) on behalf of `actor`; totals
    /// saturate at `u64::MAX`.
    pub fn add(&mut self, actor: &str, delta: i64) {
        let totals = if delta >= 0 { &mut self.p } else { &mut self.n };
        let total = totals.entry(actor.to_owned()).or_insert(0);
        *total = total.saturating_add(delta.unsigned_abs());
    }

    /// Join: per-actor maximum of both maps.
    pub fn join(&mut self, other: &Counter) {
        for (mine, theirs) in [(&mut self.p, &other.p), (&mut self.n, &other.n)] {
            for (actor, &total) in theirs {
                let e = mine.entry(actor.clone()).or_insert(0);
                *e = (*e).max(total);
            }
        }
    }

    /// The counter's value.
    pub fn value(&self) -> i128 {
        let p: i128 = self.p.values().map(|&v| i128::from(v)).sum();
        let n: i128 = self.n.values().map(|&v| i128::from(v)).sum();
        p - n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_is_a_semilattice_and_adds_count_once_per_actor() {
        let mut a = Counter::default();
        a.add("x", 3);
        a.add("x", -1);
        let mut b = Counter::default();
        b.add("y", 4);
        let mut ab = a.clone();
        ab.join(&b);
        let mut ba = b.clone();
        ba.join(&a);
        assert_eq!(ab, ba);
        let mut aa = ab.clone();
        aa.join(&ab);
        assert_eq!(aa, ab);
        assert_eq!(ab.value(), 6);
        // A stale copy of x's own total does not count twice.
        let mut later = ab.clone();
        later.add("x", 2);
        later.join(&a);
        assert_eq!(later.value(), 8);
    }

    #[test]
    fn values_that_are_not_counters_are_refused() {
        for bad in [&b"12"[..], b"{\"p\":{\"a\":-1}}", b"{\"q\":{}}", b"\xff"] {
            assert!(Counter::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Counter::parse(b"{}").unwrap(), Counter::default());
        assert_eq!(Counter::join_all([]).unwrap().value(), 0);
    }

    #[test]
    fn extreme_deltas_saturate_rather_than_wrap() {
        let mut c = Counter::default();
        c.add("a", i64::MIN);
        c.add("a", i64::MIN);
        assert_eq!(c.n["a"], u64::MAX);
        c.add("b", i64::MAX);
        assert_eq!(c.value(), i128::from(i64::MAX) - i128::from(u64::MAX));
    }
}
