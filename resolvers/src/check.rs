//! The law checker: does a resolver behave as a join?
//!
//! Replicas merge different subsets of siblings, in different groupings and
//! orders, and merge merged versions again; they converge only if the merge
//! is **commutative** (sibling order does not matter), **associative**
//! (merging a merge with the rest equals merging everything at once, in
//! every grouping), **idempotent** (merging a value with itself, or a merged
//! value with what it merged, changes nothing) and **deterministic** (the
//! same input gives the same bytes every time). [`check`] runs a
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
//! The laws, the generated cases and the run itself are defined once, in
//! [`isthmus_sdk_wasm::laws`]: resolver authors run the same check on
//! their plain `merge` function in `cargo test`.
//!
//! What it is not: a proof. It is a seeded property test; pass more cases
//! or a corpus of real values for more confidence.

use std::fmt;
use std::time::{Duration, Instant};

use isthmus_sdk_wasm::laws::{self, GenSibling};

use crate::{Host, Resolver, ResolverError};

pub use isthmus_sdk_wasm::laws::Law;

/// A law that does not hold, with the smallest case found.
pub type Violation = laws::Violation<ResolverError>;

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
        for law in Law::ALL {
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

/// A trial merge's outcome, or the end of the run (budget exceeded).
type Trial = Result<Result<isthmus_sdk_wasm::Merged, ResolverError>, CheckError>;

/// Trial merges in the host, within the run's budget.
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
        let s: Vec<_> = siblings.iter().map(GenSibling::as_sibling).collect();
        let (result, fuel) = self
            .host
            .merge_siblings_metered(self.resolver, b"law-check", &s);
        self.fuel_total = self.fuel_total.saturating_add(fuel);
        self.fuel_max_per_merge = self.fuel_max_per_merge.max(fuel);
        Ok(result)
    }
}

/// Run the laws on `resolver` inside `host`.
pub fn check(
    host: &Host,
    resolver: &Resolver,
    options: &CheckOptions,
) -> Result<CheckReport, CheckError> {
    let seed = options.seed.unwrap_or(0);
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
    let run = laws::Options {
        seed,
        cases_per_size: options.cases_per_size,
        siblings_max: options.siblings_max,
        corpus: options.corpus.clone(),
    };
    let outcome = laws::run(
        &run,
        |s| {
            host.sample(resolver, s)
                .map_err(|source| CheckError::Sample { seed: s, source })
        },
        |set| checker.merge(set),
        |e| matches!(e, ResolverError::Guest { .. }),
    )?;
    Ok(CheckReport {
        seed,
        sampled: resolver.has_sample(),
        cases: outcome.cases,
        merges: checker.merges,
        rejected: outcome.rejected,
        violations: outcome.violations,
        fuel_total: checker.fuel_total,
        fuel_max_per_merge: checker.fuel_max_per_merge,
        fuel_budget: host.limits().fuel_per_merge,
    })
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
}
