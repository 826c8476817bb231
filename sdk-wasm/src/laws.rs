//! The laws a resolver must obey, defined once: the checks
//! `isthmus resolver check` (and the registry, at upload) run on a module
//! inside the host, and [`check`] runs on a plain Rust `merge` function
//! natively, in `cargo test`, with the same definitions, the same
//! generated cases and the same seeds.
//!
//! A resolver `m` must be a join, because replicas merge different subsets
//! of siblings in different groupings and orders and must end with the
//! same bytes. With `merged(m, S)` the sibling a replica stores after
//! merging `S` (the value `m` gave, or a tombstone for a delete; the
//! greatest timestamp merged, with its origin; the union of the clocks):
//!
//! - **deterministic**: `m(S)` gives the same output twice;
//! - **commutative**: `m(P)` equals `m(S)` for every reordering `P` of `S`;
//! - **associative**: for every group `A` of two or more siblings of `S`
//!   (not all of them), `m({merged(m, A)} ∪ (S \ A))` equals `m(S)`;
//! - **idempotent**: `m({s, s'})`, `s'` a copy of `s` from another write,
//!   gives `s`'s value back byte for byte (a delete for a tombstone); and
//!   `m({merged(m, S)} ∪ S)` equals `m(S)`.
//!
//! Cases are sets of 2 to 4 siblings, smallest first: values from the
//! resolver's sampler when it has one, else random bytes (0 to 8) and any
//! corpus; about one sibling in eight a tombstone; timestamps from a small
//! range so ties happen; each sibling its own actor's dot, so they are
//! concurrent. A set the resolver refuses (a guest error) counts as
//! rejected, not as a violation; a failure on a merged value violates the
//! law being checked. A run where every set was refused tested nothing,
//! and does not pass.
//!
//! ```
//! use isthmus_sdk_wasm::laws::{check, Options};
//! use isthmus_sdk_wasm::{Merged, MergeError, Sibling};
//!
//! /// Keeps the greatest value: a join.
//! fn merge(_key: &[u8], siblings: &[Sibling]) -> Result<Merged, MergeError> {
//!     Ok(siblings.iter().filter_map(Sibling::value).max()
//!         .map_or(Merged::Delete, |v| Merged::Value(v.to_vec())))
//! }
//!
//! /// Keeps the first value: not commutative.
//! fn first(_key: &[u8], siblings: &[Sibling]) -> Result<Merged, MergeError> {
//!     Ok(siblings.iter().find_map(Sibling::value)
//!         .map_or(Merged::Delete, |v| Merged::Value(v.to_vec())))
//! }
//!
//! let report = check(merge, None, &Options::default());
//! assert!(report.passed(), "{report}");
//! assert!(!check(first, None, &Options::default()).passed());
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::abi::{Dot, MergeError, Merged, Payload, Sibling, SiblingClock};

/// A law a resolver must obey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Law {
    /// Same input, same bytes.
    Deterministic,
    /// Sibling order does not matter.
    Commutative,
    /// Merging a merge with the rest equals merging everything.
    Associative,
    /// Merging a value with itself, or a merge with its inputs, is a no-op.
    Idempotent,
}

impl Law {
    /// Every law, in the order reports list them.
    pub const ALL: [Law; 4] = [
        Law::Commutative,
        Law::Associative,
        Law::Idempotent,
        Law::Deterministic,
    ];
}

impl fmt::Display for Law {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Law::Deterministic => "deterministic",
            Law::Commutative => "commutative",
            Law::Associative => "associative",
            Law::Idempotent => "idempotent",
        })
    }
}

/// A generated sibling (owned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenSibling {
    /// The value, or `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Timestamp in milliseconds.
    pub timestamp_ms: u64,
    /// Origin datacenter.
    pub origin_dc: String,
    /// Its dots, ascending.
    pub dots: Vec<Dot>,
}

impl GenSibling {
    /// As the ABI's sibling, borrowing.
    pub fn as_sibling(&self) -> Sibling<'_> {
        Sibling {
            payload: match &self.value {
                Some(v) => Payload::Value(v),
                None => Payload::Tombstone,
            },
            timestamp_ms: self.timestamp_ms,
            origin_dc: &self.origin_dc,
            clock: SiblingClock {
                vector: Vec::new(),
                dots: self.dots.clone(),
            },
        }
    }

    /// The sibling a replica stores after merging `of` into `result`: the
    /// merged value (a tombstone for a delete), the greatest timestamp
    /// merged with its origin, the union of the dots.
    pub fn merged(of: &[GenSibling], result: &Merged) -> GenSibling {
        let mut dots: Vec<Dot> = of.iter().flat_map(|s| s.dots.iter().copied()).collect();
        dots.sort();
        dots.dedup();
        let last = of
            .iter()
            .max_by(|a, b| (a.timestamp_ms, &a.origin_dc).cmp(&(b.timestamp_ms, &b.origin_dc)));
        GenSibling {
            value: match result {
                Merged::Value(v) => Some(v.clone()),
                Merged::Delete => None,
            },
            timestamp_ms: last.map_or(0, |s| s.timestamp_ms),
            origin_dc: last.map_or_else(String::new, |s| s.origin_dc.clone()),
            dots,
        }
    }
}

impl fmt::Display for GenSibling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}", Shown(v))?,
            None => f.write_str("<tombstone>")?,
        }
        write!(f, " @{}ms from {} dots", self.timestamp_ms, self.origin_dc)?;
        for d in &self.dots {
            write!(f, " {}:{}", d.actor, d.counter)?;
        }
        Ok(())
    }
}

/// Bytes as quoted text when printable UTF-8, else `0x` and hex.
pub struct Shown<'a>(pub &'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match core::str::from_utf8(self.0) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => write!(f, "{s:?}"),
            _ => {
                f.write_str("0x")?;
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

/// A merge's outcome as a report shows it.
pub struct ShownOutcome<'a, E>(pub &'a Result<Merged, E>);

impl<E: fmt::Display> fmt::Display for ShownOutcome<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(Merged::Value(v)) => write!(f, "{}", Shown(v)),
            Ok(Merged::Delete) => f.write_str("<delete>"),
            Err(e) => write!(f, "<failed: {e}>"),
        }
    }
}

/// A law that does not hold, with the smallest case found. `E` is how a
/// merge fails: the host's error for a module, [`MergeError`] natively.
#[derive(Clone, Debug)]
pub struct Violation<E> {
    /// The law.
    pub law: Law,
    /// The sibling set.
    pub siblings: Vec<GenSibling>,
    /// How the two sides were computed (order, grouping).
    pub how: String,
    /// What merging the set as given produced.
    pub expected: Result<Merged, E>,
    /// What the other side produced.
    pub got: Result<Merged, E>,
}

impl<E: fmt::Display> fmt::Display for Violation<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "not {}: {}", self.law, self.how)?;
        for (i, s) in self.siblings.iter().enumerate() {
            writeln!(f, "  s{i} = {s}")?;
        }
        writeln!(f, "  expected {}", ShownOutcome(&self.expected))?;
        write!(f, "  got      {}", ShownOutcome(&self.got))
    }
}

/// SplitMix64: tiny, seedable, and stable across crate versions, so a
/// printed seed reproduces a run forever.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Every permutation of `0..n` but the identity (n ≤ 5 in practice).
pub fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn go(prefix: &mut Vec<usize>, left: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if left.is_empty() {
            out.push(prefix.clone());
            return;
        }
        for i in 0..left.len() {
            let x = left.remove(i);
            prefix.push(x);
            go(prefix, left, out);
            prefix.pop();
            left.insert(i, x);
        }
    }
    let mut out = Vec::new();
    go(&mut Vec::new(), &mut (0..n).collect(), &mut out);
    out.remove(0); // the identity is the base case itself
    out
}

/// How many cases a run generates, from what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Seed of the run.
    pub seed: u64,
    /// Sibling sets generated per set size.
    pub cases_per_size: usize,
    /// Largest sibling set generated (at least 3 for associativity).
    pub siblings_max: usize,
    /// Values mixed into the generated ones.
    pub corpus: Vec<Vec<u8>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 0,
            cases_per_size: 48,
            siblings_max: 4,
            corpus: Vec::new(),
        }
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Outcome<E> {
    /// Sibling sets checked.
    pub cases: usize,
    /// Generated sets the resolver refused.
    pub rejected: usize,
    /// Laws that failed, at most one counterexample each, in law order.
    pub violations: Vec<Violation<E>>,
}

impl<E> Outcome<E> {
    /// Did every law hold, and was at least one set not refused?
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.cases > self.rejected
    }

    /// What the report says of `law`: "ok", "FAILED" or "NOT TESTED".
    pub fn verdict(&self, law: Law) -> &'static str {
        if self.violations.iter().any(|v| v.law == law) {
            "FAILED"
        } else if self.cases <= self.rejected {
            "NOT TESTED"
        } else {
            "ok"
        }
    }
}

/// The engine of a run, over any way of merging: `sample(seed)` gives a
/// value in the resolver's domain (`Ok(None)`: it has no sampler),
/// `merge(set)` merges a set (its outer `Err` stops the run: a budget
/// ran out), and `refused(error)` tells a refusal of its input (counted as
/// rejected) from a failure (a violation). Both the host's check and the
/// native [`check`] are this function.
pub fn run<E: Clone, S>(
    options: &Options,
    mut sample: impl FnMut(u64) -> Result<Option<Vec<u8>>, S>,
    mut merge: impl FnMut(&[GenSibling]) -> Result<Result<Merged, E>, S>,
    refused: impl Fn(&E) -> bool,
) -> Result<Outcome<E>, S> {
    let mut rng = Rng(options.seed);
    let mut pool: Vec<Vec<u8>> = options.corpus.clone();
    for _ in 0..24 {
        let s = rng.next_u64();
        match sample(s)? {
            Some(v) => pool.push(v),
            None if options.corpus.is_empty() => {
                let len = rng.below(9) as usize;
                pool.push((0..len).map(|_| rng.next_u64() as u8).collect());
            }
            None => {}
        }
    }
    let mut outcome = Outcome {
        cases: 0,
        rejected: 0,
        violations: Vec::new(),
    };
    let dcs = ["dc1", "dc2"];
    for n in 2..=options.siblings_max.max(3) {
        for _ in 0..options.cases_per_size {
            let set: Vec<GenSibling> = (0..n)
                .map(|i| GenSibling {
                    value: if rng.below(8) == 0 {
                        None
                    } else {
                        Some(pool[rng.below(pool.len() as u64) as usize].clone())
                    },
                    timestamp_ms: 1000 + rng.below(4),
                    origin_dc: dcs[rng.below(2) as usize].into(),
                    dots: vec![Dot {
                        actor: i as u64 + 1,
                        counter: 1 + rng.below(3),
                    }],
                })
                .collect();
            outcome.cases += 1;
            let base = match merge(&set)? {
                Ok(m) => m,
                Err(e) if refused(&e) => {
                    outcome.rejected += 1;
                    continue;
                }
                Err(e) => {
                    // A failure on a plain set: the store could never
                    // merge it. Report it and stop (a module that burns
                    // its fuel would make the rest slow).
                    outcome.violations.push(Violation {
                        law: Law::Deterministic,
                        siblings: set.clone(),
                        how: "merging the set failed".into(),
                        expected: Err(e.clone()),
                        got: Err(e),
                    });
                    return Ok(outcome);
                }
            };
            let skip: Vec<Law> = outcome.violations.iter().map(|v| v.law).collect();
            for (law, how, expected, got) in laws(&mut merge, &set, &base, &skip)? {
                outcome.violations.push(Violation {
                    law,
                    siblings: set.clone(),
                    how,
                    expected,
                    got,
                });
            }
        }
    }
    outcome.violations.sort_by_key(|v| v.law);
    Ok(outcome)
}

/// A violated law: which, how, expected and actual outcome.
type Found<E> = (Law, String, Result<Merged, E>, Result<Merged, E>);

/// Check every law but those in `skip` on one set; `base` is its merge as
/// given.
fn laws<E, S>(
    merge: &mut impl FnMut(&[GenSibling]) -> Result<Result<Merged, E>, S>,
    set: &[GenSibling],
    base: &Merged,
    skip: &[Law],
) -> Result<Vec<Found<E>>, S> {
    let mut found = Vec::new();
    let same = |r: &Result<Merged, E>| matches!(r, Ok(m) if m == base);
    if !skip.contains(&Law::Deterministic) {
        let again = merge(set)?;
        if !same(&again) {
            found.push((
                Law::Deterministic,
                "the same set merged twice, each from the initial state".into(),
                Ok(base.clone()),
                again,
            ));
        }
    }
    if !skip.contains(&Law::Commutative) {
        for perm in permutations(set.len()) {
            let permuted: Vec<GenSibling> = perm.iter().map(|&i| set[i].clone()).collect();
            let r = merge(&permuted)?;
            if !same(&r) {
                let order: Vec<String> = perm.iter().map(|i| format!("s{i}")).collect();
                found.push((
                    Law::Commutative,
                    format!("order [{}] differs from the order given", order.join(", ")),
                    Ok(base.clone()),
                    r,
                ));
                break;
            }
        }
    }
    if !skip.contains(&Law::Associative) && set.len() >= 3 {
        for mask in 1u32..(1 << set.len()) - 1 {
            let inside = |i: &usize| mask & (1 << i) != 0;
            let group: Vec<GenSibling> = (0..set.len())
                .filter(inside)
                .map(|i| set[i].clone())
                .collect();
            if group.len() < 2 {
                continue;
            }
            let names: Vec<String> = (0..set.len())
                .filter(inside)
                .map(|i| format!("s{i}"))
                .collect();
            let inner = match merge(&group)? {
                Ok(m) => m,
                Err(e) => {
                    found.push((
                        Law::Associative,
                        format!("merging the group ({}) alone failed", names.join(", ")),
                        Ok(base.clone()),
                        Err(e),
                    ));
                    break;
                }
            };
            let mut outer = vec![GenSibling::merged(&group, &inner)];
            outer.extend(
                (0..set.len())
                    .filter(|i| !inside(i))
                    .map(|i| set[i].clone()),
            );
            let r = merge(&outer)?;
            if !same(&r) {
                found.push((
                    Law::Associative,
                    format!(
                        "merge(merge({}), rest) differs from merging all at once",
                        names.join(", ")
                    ),
                    Ok(base.clone()),
                    r,
                ));
                break;
            }
        }
    }
    if !skip.contains(&Law::Idempotent) {
        for (i, s) in set.iter().enumerate() {
            let mut twin = s.clone();
            twin.dots = vec![Dot {
                actor: 1000 + i as u64,
                counter: 1,
            }];
            let r = merge(&[s.clone(), twin])?;
            let expect = match &s.value {
                Some(v) => Merged::Value(v.clone()),
                None => Merged::Delete,
            };
            if !matches!(&r, Ok(m) if *m == expect) {
                found.push((
                    Law::Idempotent,
                    format!("merging s{i} with a copy of itself does not give s{i} back"),
                    Ok(expect),
                    r,
                ));
                return Ok(found);
            }
        }
        let mut with_merge = vec![GenSibling::merged(set, base)];
        with_merge.extend(set.iter().cloned());
        let r = merge(&with_merge)?;
        if !same(&r) {
            found.push((
                Law::Idempotent,
                "merging the merged value with the set it came from changes it".into(),
                Ok(base.clone()),
                r,
            ));
        }
    }
    Ok(found)
}

/// A native run's report: what [`check`] found, printable like
/// `isthmus resolver check`'s.
#[derive(Clone, Debug)]
pub struct Report {
    /// The options it ran with.
    pub seed: u64,
    /// What it found.
    pub outcome: Outcome<MergeError>,
}

impl Report {
    /// Did every law hold (and was at least one set not refused)?
    pub fn passed(&self) -> bool {
        self.outcome.passed()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.outcome;
        writeln!(
            f,
            "seed {}: {} sibling sets, {} rejected by the resolver",
            self.seed, o.cases, o.rejected
        )?;
        for law in Law::ALL {
            match o.violations.iter().find(|v| v.law == law) {
                Some(v) => writeln!(f, "  {law}: FAILED\n{v}")?,
                None => writeln!(f, "  {law}: {}", o.verdict(law))?,
            }
        }
        Ok(())
    }
}

/// Check a plain `merge` function's laws natively, with the definitions
/// and the generated cases the host's check uses: run it in a unit test
/// before building the module. `sample` is the resolver's sampler (the
/// function given to `export_merge!(merge, sample = ...)`), if it has one;
/// a guest error ([`MergeError`]) on a generated set counts as a refusal.
/// A panicking `merge` panics the test.
pub fn check(
    merge: fn(&[u8], &[Sibling<'_>]) -> Result<Merged, MergeError>,
    sample: Option<fn(u64) -> Vec<u8>>,
    options: &Options,
) -> Report {
    let outcome = run::<MergeError, core::convert::Infallible>(
        options,
        |seed| Ok(sample.map(|s| s(seed))),
        |set| {
            let siblings: Vec<Sibling<'_>> = set.iter().map(GenSibling::as_sibling).collect();
            Ok(merge(b"law-check", &siblings))
        },
        // Natively every failure is the resolver's own error: a trap
        // would be a panic.
        |_| true,
    );
    let outcome = match outcome {
        Ok(o) => o,
        Err(never) => match never {},
    };
    Report {
        seed: options.seed,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_all_orders_but_the_identity() {
        let p = permutations(3);
        assert_eq!(p.len(), 5);
        assert!(!p.contains(&vec![0, 1, 2]));
        let mut sorted = p.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 5);
        assert!(permutations(1).is_empty());
    }

    #[test]
    fn a_merged_sibling_carries_the_max_timestamp_and_the_union_of_dots() {
        let s = |ts, dc: &str, actor| GenSibling {
            value: Some(vec![1]),
            timestamp_ms: ts,
            origin_dc: dc.into(),
            dots: vec![Dot { actor, counter: 1 }],
        };
        let m = GenSibling::merged(&[s(5, "dc2", 2), s(7, "dc1", 1)], &Merged::Delete);
        assert_eq!(m.value, None);
        assert_eq!(m.timestamp_ms, 7);
        assert_eq!(m.origin_dc, "dc1");
        assert_eq!(m.dots.len(), 2);
    }

    #[test]
    fn the_rng_is_stable_across_versions() {
        // SplitMix64's published first output for seed 0.
        assert_eq!(Rng(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    fn longest(_key: &[u8], siblings: &[Sibling<'_>]) -> Result<Merged, MergeError> {
        Ok(siblings
            .iter()
            .filter_map(Sibling::value)
            .max_by(|a, b| a.len().cmp(&b.len()).then(a.cmp(b)))
            .map_or(Merged::Delete, |v| Merged::Value(v.to_vec())))
    }

    fn concat(_key: &[u8], siblings: &[Sibling<'_>]) -> Result<Merged, MergeError> {
        Ok(Merged::Value(
            siblings
                .iter()
                .filter_map(Sibling::value)
                .flatten()
                .copied()
                .collect(),
        ))
    }

    fn refuse(_key: &[u8], _siblings: &[Sibling<'_>]) -> Result<Merged, MergeError> {
        Err(MergeError::new(7, "never"))
    }

    #[test]
    fn a_join_passes_and_each_broken_law_is_named() {
        let options = Options {
            seed: 3,
            ..Options::default()
        };
        let good = check(longest, None, &options);
        assert!(good.passed(), "{good}");
        assert_eq!(good.outcome.rejected, 0);
        let bad = check(concat, None, &options);
        assert!(!bad.passed());
        let laws: Vec<Law> = bad.outcome.violations.iter().map(|v| v.law).collect();
        assert!(laws.contains(&Law::Commutative), "{bad}");
        assert!(laws.contains(&Law::Idempotent), "{bad}");
        assert!(bad.to_string().contains("commutative: FAILED"), "{bad}");
    }

    #[test]
    fn a_resolver_refusing_everything_tests_nothing_and_fails() {
        let report = check(refuse, None, &Options::default());
        assert!(!report.passed());
        assert_eq!(report.outcome.cases, report.outcome.rejected);
        assert_eq!(
            report.to_string().matches("NOT TESTED").count(),
            4,
            "{report}"
        );
    }
}
