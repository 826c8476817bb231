//! The law checker: does a resolver behave as a join?
//!
//! Replicas merge different subsets of siblings, in different groupings and
//! orders, and merge merged versions again; they converge only if the merge
//! is **commutative** (sibling order does not matter), **associative**
//! (merging a merge with the rest equals merging everything at once, in
//! every grouping), **idempotent** (merging a value with itself, or a merged
//! value with what it merged, changes nothing) and **deterministic** (the
//! same input gives the same bytes in every fresh store). [`check`] runs a
//! module inside the real [`Host`] on generated sibling sets and reports
//! each law that fails with a smallest counterexample found.
//!
//! **Generated values.** If the module exports the optional
//! `isthmus_sample(seed)` (the SDK's `export_merge!(merge, sample = f)`),
//! values come from it, so they are in the resolver's domain. Values from a
//! user corpus ([`CheckOptions::corpus`]) are mixed in. With neither, values
//! are random bytes (0 to 8 of them). About one sibling in eight is a
//! tombstone; timestamps are drawn from a small range so ties happen;
//! every sibling gets its own actor's dot, so siblings are concurrent.
//!
//! **A merged sibling** (what a replica stores after a merge, fed back into
//! later merges) carries the merged value (or a tombstone for a delete),
//! the greatest timestamp merged, and the union of the merged dots, which
//! is what [`VersionSet::merged`](isthmus_core::model::VersionSet::merged)
//! builds.
//!
//! **Errors.** A guest error on a generated input counts as the resolver
//! rejecting that input (it is reported, not a violation: random bytes are
//! often outside a domain). A guest error on a merged value, or any trap,
//! fuel, memory or output failure, violates the law being checked: the
//! store would keep siblings it can never merge.
//!
//! Cases are generated smallest first (two siblings, then three, then
//! four) and each law stops at its first violation, so a counterexample
//! has as few siblings as the run could find. The whole run is a function
//! of the seed, which the report prints.
//!
//! Trial merges are not counted in the host's per-resolver counters.
//!
//! **Cost.** The whole run is bounded: at most [`CheckOptions::fuel_max`]
//! fuel over all its merges and [`CheckOptions::time_max`] of wall-clock
//! time; past either it stops with [`CheckError::BudgetExceeded`] (a
//! resolver that costly cannot be judged, and the registry refuses it).
//! The report gives the fuel of the costliest merge against the host's
//! per-merge budget, and warns ([`CheckReport::costly`]) when it is over
//! [`COSTLY_FUEL_PERCENT`] percent of it: bigger inputs than the checker's
//! may run out of fuel on a node.
//!
//! What it is not: a proof. It is a seeded property test; pass more cases
//! or a corpus of real values for more confidence.

use std::fmt;
use std::time::{Duration, Instant};

use isthmus_sdk_wasm::{Dot, Merged, Payload, Sibling, SiblingClock};

use crate::host::hex;
use crate::{Host, Resolver, ResolverError};

/// How to run a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Seed of the run; `None` lets the caller pick one (the registry uses
    /// the module hash, the CLI the clock) and the report says which.
    pub seed: Option<u64>,
    /// Sibling sets generated per set size.
    pub cases_per_size: usize,
    /// Largest sibling set generated (at least 3 for associativity).
    pub siblings_max: usize,
    /// User-supplied values mixed into the generated ones.
    pub corpus: Vec<Vec<u8>>,
    /// Fuel the whole run may use, over all its merges.
    pub fuel_max: u64,
    /// Wall-clock time the whole run may take.
    pub time_max: Duration,
}

/// Default [`CheckOptions::fuel_max`]: a hundred merges at the host's
/// default per-merge budget; a resolver like cart-union checks in about a
/// hundredth of it.
pub const FUEL_MAX_DEFAULT: u64 = 20_000_000_000;

/// Default [`CheckOptions::time_max`].
pub const TIME_MAX_DEFAULT: Duration = Duration::from_secs(60);

/// A resolver whose costliest trial merge used more than this percentage
/// of the per-merge fuel budget is reported as costly.
pub const COSTLY_FUEL_PERCENT: u64 = 50;

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            seed: None,
            cases_per_size: 48,
            siblings_max: 4,
            corpus: Vec::new(),
            fuel_max: FUEL_MAX_DEFAULT,
            time_max: TIME_MAX_DEFAULT,
        }
    }
}

/// A law a resolver must obey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Law {
    /// Same input, same bytes, in every fresh store.
    Deterministic,
    /// Sibling order does not matter.
    Commutative,
    /// Merging a merge with the rest equals merging everything.
    Associative,
    /// Merging a value with itself, or a merge with its inputs, is a no-op.
    Idempotent,
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
    fn as_sibling(&self) -> Sibling<'_> {
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
}

impl fmt::Display for GenSibling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}", show(v))?,
            None => f.write_str("<tombstone>")?,
        }
        write!(f, " @{}ms from {} dots", self.timestamp_ms, self.origin_dc)?;
        for d in &self.dots {
            write!(f, " {}:{}", d.actor, d.counter)?;
        }
        Ok(())
    }
}

/// Bytes as text if printable UTF-8, else hex.
fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => format!("0x{}", hex(bytes)),
    }
}

fn show_outcome(o: &Result<Merged, ResolverError>) -> String {
    match o {
        Ok(Merged::Value(v)) => show(v),
        Ok(Merged::Delete) => "<delete>".into(),
        Err(e) => format!("<failed: {e}>"),
    }
}

/// A law that does not hold, with the smallest case found.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The law.
    pub law: Law,
    /// The sibling set.
    pub siblings: Vec<GenSibling>,
    /// How the two sides were computed (order, grouping).
    pub how: String,
    /// What merging the set as given produced.
    pub expected: Result<Merged, ResolverError>,
    /// What the other side produced.
    pub got: Result<Merged, ResolverError>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "not {}: {}", self.law, self.how)?;
        for (i, s) in self.siblings.iter().enumerate() {
            writeln!(f, "  s{i} = {s}")?;
        }
        writeln!(f, "  expected {}", show_outcome(&self.expected))?;
        write!(f, "  got      {}", show_outcome(&self.got))
    }
}

/// The result of a check run.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// Seed of the run (pass it back to reproduce).
    pub seed: u64,
    /// Whether values came from the module's `isthmus_sample`.
    pub sampled: bool,
    /// Sibling sets checked.
    pub cases: usize,
    /// Merges run.
    pub merges: usize,
    /// Generated sets the resolver refused with a guest error.
    pub rejected: usize,
    /// Laws that failed, at most one counterexample each.
    pub violations: Vec<Violation>,
    /// Fuel all the merges used.
    pub fuel_total: u64,
    /// Fuel the costliest merge used.
    pub fuel_max_per_merge: u64,
    /// The host's per-merge fuel budget.
    pub fuel_budget: u64,
}

impl CheckReport {
    /// Did every law hold (and did at least one case run)?
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.cases > self.rejected
    }

    /// Did a merge use more than [`COSTLY_FUEL_PERCENT`] percent of the
    /// per-merge budget? (Bigger inputs may then run out on a node.)
    pub fn costly(&self) -> bool {
        u128::from(self.fuel_max_per_merge) * 100
            > u128::from(self.fuel_budget) * u128::from(COSTLY_FUEL_PERCENT)
    }

    /// The warning a costly resolver gets, if it is one.
    pub fn warning(&self) -> Option<String> {
        self.costly().then(|| {
            format!(
                "warning: the costliest merge used {} fuel, {}% of the per-merge budget of {}; \
                 bigger inputs may run out of fuel on a node",
                self.fuel_max_per_merge,
                u128::from(self.fuel_max_per_merge) * 100 / u128::from(self.fuel_budget.max(1)),
                self.fuel_budget
            )
        })
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: {} sibling sets, {} merges, values from {}, {} sets rejected by the resolver",
            self.seed,
            self.cases,
            self.merges,
            if self.sampled {
                "isthmus_sample"
            } else {
                "random bytes/corpus"
            },
            self.rejected
        )?;
        writeln!(
            f,
            "  fuel: {} in all, {} in the costliest merge (budget {} per merge)",
            self.fuel_total, self.fuel_max_per_merge, self.fuel_budget
        )?;
        if let Some(warning) = self.warning() {
            writeln!(f, "  {warning}")?;
        }
        for law in [
            Law::Commutative,
            Law::Associative,
            Law::Idempotent,
            Law::Deterministic,
        ] {
            match self.violations.iter().find(|v| v.law == law) {
                Some(v) => writeln!(f, "  {law}: FAILED\n{v}")?,
                // A law no case exercised is not known to hold.
                None if self.cases <= self.rejected => writeln!(f, "  {law}: NOT TESTED")?,
                None => writeln!(f, "  {law}: ok")?,
            }
        }
        if self.cases <= self.rejected {
            writeln!(
                f,
                "  no law was tested: the resolver refused every generated set, so the check fails; \
                 pass a corpus of valid values (or export isthmus_sample)"
            )?;
        }
        Ok(())
    }
}

/// Why a check could not run at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The sampler failed.
    #[error("isthmus_sample({seed}) failed: {source}")]
    Sample {
        /// The seed passed.
        seed: u64,
        /// The failure.
        source: ResolverError,
    },
    /// The run used up its fuel or time ([`CheckOptions::fuel_max`],
    /// [`CheckOptions::time_max`]) before it finished.
    #[error(
        "the law check ran out of its budget after {merges} merges: {fuel_used} fuel of {fuel_max}, {elapsed_ms} ms of {time_max_ms} ms"
    )]
    BudgetExceeded {
        /// Merges run.
        merges: usize,
        /// Fuel used.
        fuel_used: u64,
        /// The run's fuel limit.
        fuel_max: u64,
        /// Time taken, in milliseconds.
        elapsed_ms: u64,
        /// The run's time limit, in milliseconds.
        time_max_ms: u64,
    },
}

/// SplitMix64: tiny, seedable, and stable across crate versions, so a
/// printed seed reproduces a run forever.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A violated law: which, how, expected and actual outcome.
type Found = (
    Law,
    String,
    Result<Merged, ResolverError>,
    Result<Merged, ResolverError>,
);

/// A trial merge's outcome, or the end of the run (budget exceeded).
type Trial = Result<Result<Merged, ResolverError>, CheckError>;

struct Checker<'h> {
    host: &'h Host,
    resolver: &'h Resolver,
    merges: usize,
    fuel_total: u64,
    fuel_max_per_merge: u64,
    fuel_max: u64,
    started: Instant,
    time_max: Duration,
}

impl Checker<'_> {
    /// One trial merge, within the run's budget.
    fn merge(&mut self, siblings: &[GenSibling]) -> Trial {
        let elapsed = self.started.elapsed();
        if self.fuel_total >= self.fuel_max || elapsed >= self.time_max {
            return Err(CheckError::BudgetExceeded {
                merges: self.merges,
                fuel_used: self.fuel_total,
                fuel_max: self.fuel_max,
                elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                time_max_ms: u64::try_from(self.time_max.as_millis()).unwrap_or(u64::MAX),
            });
        }
        self.merges += 1;
        let s: Vec<Sibling<'_>> = siblings.iter().map(GenSibling::as_sibling).collect();
        let (result, fuel) = self
            .host
            .merge_siblings_metered(self.resolver, b"law-check", &s);
        self.fuel_total = self.fuel_total.saturating_add(fuel);
        self.fuel_max_per_merge = self.fuel_max_per_merge.max(fuel);
        Ok(result)
    }

    /// The sibling a replica stores after merging `of` into `result`.
    fn merged_sibling(of: &[GenSibling], result: &Merged) -> GenSibling {
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

    /// Check every law on one set; `base` is its merge as given.
    fn laws(
        &mut self,
        set: &[GenSibling],
        base: &Merged,
        skip: &[Law],
    ) -> Result<Vec<Found>, CheckError> {
        let mut found = Vec::new();
        let same = |r: &Result<Merged, ResolverError>| matches!(r, Ok(m) if m == base);
        if !skip.contains(&Law::Deterministic) {
            let again = self.merge(set)?;
            if !same(&again) {
                found.push((
                    Law::Deterministic,
                    "the same set merged twice in fresh stores".into(),
                    Ok(base.clone()),
                    again,
                ));
            }
        }
        if !skip.contains(&Law::Commutative) {
            for perm in permutations(set.len()) {
                let permuted: Vec<GenSibling> = perm.iter().map(|&i| set[i].clone()).collect();
                let r = self.merge(&permuted)?;
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
            'groups: for mask in 1u32..(1 << set.len()) - 1 {
                let group: Vec<GenSibling> = (0..set.len())
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| set[i].clone())
                    .collect();
                if group.len() < 2 {
                    continue;
                }
                let inner = self.merge(&group)?;
                let names: Vec<String> = (0..set.len())
                    .map(|i| {
                        if mask & (1 << i) != 0 {
                            format!("s{i}")
                        } else {
                            String::new()
                        }
                    })
                    .filter(|s| !s.is_empty())
                    .collect();
                let inner = match inner {
                    Ok(m) => m,
                    Err(e) => {
                        found.push((
                            Law::Associative,
                            format!("merging the group ({}) alone failed", names.join(", ")),
                            Ok(base.clone()),
                            Err(e),
                        ));
                        break 'groups;
                    }
                };
                let mut outer = vec![Self::merged_sibling(&group, &inner)];
                outer.extend(
                    (0..set.len())
                        .filter(|i| mask & (1 << i) == 0)
                        .map(|i| set[i].clone()),
                );
                let r = self.merge(&outer)?;
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
                let r = self.merge(&[s.clone(), twin])?;
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
            let mut with_merge = vec![Self::merged_sibling(set, base)];
            with_merge.extend(set.iter().cloned());
            let r = self.merge(&with_merge)?;
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
}

/// Every permutation of `0..n` (n ≤ 5 in practice), identity first.
fn permutations(n: usize) -> Vec<Vec<usize>> {
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

/// Run the laws on `resolver` inside `host`.
pub fn check(
    host: &Host,
    resolver: &Resolver,
    options: &CheckOptions,
) -> Result<CheckReport, CheckError> {
    let seed = options.seed.unwrap_or(0);
    let mut rng = Rng(seed);
    // A pool of values: samples (or random bytes) plus the corpus.
    let mut pool: Vec<Vec<u8>> = options.corpus.clone();
    for _ in 0..24 {
        let s = rng.next();
        match host.sample(resolver, s) {
            Ok(Some(v)) => pool.push(v),
            Ok(None) => {
                if options.corpus.is_empty() {
                    let len = rng.below(9) as usize;
                    pool.push((0..len).map(|_| rng.next() as u8).collect());
                }
            }
            Err(source) => return Err(CheckError::Sample { seed: s, source }),
        }
    }
    let mut report = CheckReport {
        seed,
        sampled: resolver.has_sample(),
        cases: 0,
        merges: 0,
        rejected: 0,
        violations: Vec::new(),
        fuel_total: 0,
        fuel_max_per_merge: 0,
        fuel_budget: host.limits().fuel_per_merge,
    };
    let mut checker = Checker {
        host,
        resolver,
        merges: 0,
        fuel_total: 0,
        fuel_max_per_merge: 0,
        fuel_max: options.fuel_max,
        started: Instant::now(),
        time_max: options.time_max,
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
            report.cases += 1;
            let base = match checker.merge(&set)? {
                Ok(m) => m,
                Err(ResolverError::Guest { .. }) => {
                    report.rejected += 1;
                    continue;
                }
                Err(e) => {
                    // A trap or resource failure on a plain set: the store
                    // could never merge it. Report it and stop (a module
                    // that burns its fuel would make the rest slow).
                    report.violations.push(Violation {
                        law: Law::Deterministic,
                        siblings: set.clone(),
                        how: "merging the set failed".into(),
                        expected: Err(e.clone()),
                        got: Err(e),
                    });
                    checker.finish(&mut report);
                    return Ok(report);
                }
            };
            let skip: Vec<Law> = report.violations.iter().map(|v| v.law).collect();
            for (law, how, expected, got) in checker.laws(&set, &base, &skip)? {
                report.violations.push(Violation {
                    law,
                    siblings: set.clone(),
                    how,
                    expected,
                    got,
                });
            }
        }
    }
    checker.finish(&mut report);
    report.violations.sort_by_key(|v| v.law);
    Ok(report)
}

impl Checker<'_> {
    /// The run's counts, into its report.
    fn finish(&self, report: &mut CheckReport) {
        report.merges = self.merges;
        report.fuel_total = self.fuel_total;
        report.fuel_max_per_merge = self.fuel_max_per_merge;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_whose_every_case_was_refused_fails_and_claims_no_law() {
        let report = CheckReport {
            seed: 1,
            sampled: false,
            cases: 10,
            merges: 10,
            rejected: 10,
            violations: Vec::new(),
            fuel_total: 0,
            fuel_max_per_merge: 0,
            fuel_budget: 1,
        };
        assert!(!report.passed());
        let text = report.to_string();
        assert!(!text.contains(": ok"), "{text}");
        assert_eq!(text.matches("NOT TESTED").count(), 4, "{text}");
        assert!(text.contains("the check fails"), "{text}");
        let tested = CheckReport {
            rejected: 9,
            ..report
        };
        assert!(tested.passed());
        assert_eq!(tested.to_string().matches(": ok").count(), 4);
    }

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
        let m = Checker::merged_sibling(&[s(5, "dc2", 2), s(7, "dc1", 1)], &Merged::Delete);
        assert_eq!(m.value, None);
        assert_eq!(m.timestamp_ms, 7);
        assert_eq!(m.origin_dc, "dc1");
        assert_eq!(m.dots.len(), 2);
    }

    #[test]
    fn the_rng_is_stable_across_versions() {
        // SplitMix64's published first output for seed 0.
        assert_eq!(Rng(0).next(), 0xE220_A839_7B1D_CDAF);
    }
}
