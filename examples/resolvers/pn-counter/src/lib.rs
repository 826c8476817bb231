//! # pn-counter: an example Isthmus resolver for counters
//!
//! A PN-counter as JSON: `{"n":{"<actor>":total},"p":{"<actor>":total}}`,
//! where each actor (a client or replica id chosen by the application) only
//! ever raises its own totals: `p` counts its increments, `n` its
//! decrements. The counter's value is `sum(p) - sum(n)`. Merging takes the
//! per-actor maximum of both maps, a join, so increments and decrements
//! made on any replica in any datacenter are never lost and never counted
//! twice. Tombstones are the zero counter; a set of tombstones merges into
//! a delete.
//!
//! Output is compact JSON with sorted keys; absent maps decode as empty.
//!
//! What it is not: a bounded counter; nothing stops it going negative.
//!
//! ```
//! use isthmus_example_pn_counter::{Counter, merge};
//! use isthmus_sdk_wasm::{Merged, Sibling};
//!
//! let mut a = Counter::default();
//! a.increment("alice", 3);
//! let mut b = Counter::default();
//! b.decrement("bob", 1);
//! let (ea, eb) = (a.encode(), b.encode());
//! let Merged::Value(m) = merge(b"hits", &[Sibling::of_value(&ea, 1), Sibling::of_value(&eb, 2)]).unwrap()
//! else { panic!("a delete") };
//! assert_eq!(Counter::parse(&m).unwrap().value(), 2);
//! ```
#![cfg_attr(target_arch = "wasm32", no_std)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use isthmus_sdk_wasm::{MergeError, Merged, Sibling, export_merge};
use serde::{Deserialize, Serialize};

/// Error code: a sibling is not a counter.
pub const ERR_NOT_A_COUNTER: u32 = 1;

/// A PN-counter: per-actor increment and decrement totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Decrement totals per actor.
    #[serde(default)]
    pub n: BTreeMap<String, u64>,
    /// Increment totals per actor.
    #[serde(default)]
    pub p: BTreeMap<String, u64>,
}

impl Counter {
    /// Parse a counter.
    pub fn parse(bytes: &[u8]) -> Result<Counter, MergeError> {
        serde_json::from_slice(bytes)
            .map_err(|e| MergeError::new(ERR_NOT_A_COUNTER, alloc::format!("not a counter: {e}")))
    }

    /// Encode canonically (compact JSON, sorted keys).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Add `by` on behalf of `actor`.
    pub fn increment(&mut self, actor: &str, by: u64) {
        let e = self.p.entry(actor.into()).or_insert(0);
        *e = e.saturating_add(by);
    }

    /// Subtract `by` on behalf of `actor`.
    pub fn decrement(&mut self, actor: &str, by: u64) {
        let e = self.n.entry(actor.into()).or_insert(0);
        *e = e.saturating_add(by);
    }

    /// The counter's value.
    pub fn value(&self) -> i128 {
        let p: i128 = self.p.values().map(|&v| i128::from(v)).sum();
        let n: i128 = self.n.values().map(|&v| i128::from(v)).sum();
        p - n
    }

    /// Join: per-actor maximum of both maps.
    pub fn join(&mut self, other: Counter) {
        for (mine, theirs) in [(&mut self.p, other.p), (&mut self.n, other.n)] {
            for (actor, total) in theirs {
                let e = mine.entry(actor).or_insert(0);
                *e = (*e).max(total);
            }
        }
    }
}

/// Merge counters by per-actor maximum; all tombstones → delete.
pub fn merge(_key: &[u8], siblings: &[Sibling<'_>]) -> Result<Merged, MergeError> {
    let mut out: Option<Counter> = None;
    for value in siblings.iter().filter_map(Sibling::value) {
        let c = Counter::parse(value)?;
        out.get_or_insert_with(Counter::default).join(c);
    }
    Ok(match out {
        Some(c) => Merged::Value(c.encode()),
        None => Merged::Delete,
    })
}

/// A counter derived from `seed`: actors from a small set, totals 0 to 9.
pub fn sample(seed: u64) -> Vec<u8> {
    const ACTORS: [&str; 3] = ["a", "b", "c"];
    let mut c = Counter::default();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for actor in ACTORS {
        for inc in [true, false] {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if s % 3 != 0 {
                let by = s % 10;
                if inc {
                    c.increment(actor, by)
                } else {
                    c.decrement(actor, by)
                }
            }
        }
    }
    c.encode()
}

export_merge!(merge, sample = sample);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_increments_and_decrements_are_all_kept() {
        // Both replicas started from {alice: +1}; one added 2 more, the
        // other had bob take 1 away.
        let base = br#"{"p":{"alice":1}}"#;
        let r1 = br#"{"p":{"alice":3}}"#;
        let r2 = br#"{"n":{"bob":1},"p":{"alice":1}}"#;
        let siblings = [
            Sibling::of_value(base, 1),
            Sibling::of_value(r1, 2),
            Sibling::of_value(r2, 3),
        ];
        let Merged::Value(m) = merge(b"k", &siblings).unwrap() else {
            panic!("delete")
        };
        assert_eq!(m, br#"{"n":{"bob":1},"p":{"alice":3}}"#);
        assert_eq!(Counter::parse(&m).unwrap().value(), 2);
    }

    #[test]
    fn merge_is_idempotent_and_order_free() {
        let a = sample(1);
        let b = sample(2);
        let ab = merge(b"k", &[Sibling::of_value(&a, 1), Sibling::of_value(&b, 2)]).unwrap();
        let ba = merge(b"k", &[Sibling::of_value(&b, 1), Sibling::of_value(&a, 2)]).unwrap();
        assert_eq!(ab, ba);
        let aa = merge(b"k", &[Sibling::of_value(&a, 1), Sibling::of_value(&a, 2)]).unwrap();
        assert_eq!(aa, Merged::Value(a));
    }

    #[test]
    fn tombstones_are_zero_and_garbage_is_refused() {
        assert_eq!(
            merge(b"k", &[Sibling::of_tombstone(1)]).unwrap(),
            Merged::Delete
        );
        let err = merge(b"k", &[Sibling::of_value(b"7", 1)]).unwrap_err();
        assert_eq!(err.code, ERR_NOT_A_COUNTER);
    }
}
