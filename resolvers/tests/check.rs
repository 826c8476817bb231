//! The law checker on the example resolvers: the three good ones pass, the
//! deliberately wrong one fails with a counterexample.

mod common;

use common::*;
use isthmus_resolvers::check::{CheckOptions, Law, check};
use isthmus_testkit::example_module;

fn run(package: &str, seed: u64) -> isthmus_resolvers::check::CheckReport {
    let host = small_host();
    let resolver = host.load(&example_module(package)).unwrap();
    let options = CheckOptions {
        seed: Some(seed),
        cases_per_size: 16,
        ..CheckOptions::default()
    };
    check(&host, &resolver, &options).unwrap()
}

#[test]
fn good_examples_pass() {
    for package in [
        "isthmus-example-cart-union",
        "isthmus-example-lww",
        "isthmus-example-pn-counter",
    ] {
        let report = run(package, 42);
        assert!(report.passed(), "{package}:\n{report}");
        assert!(report.sampled);
        assert_eq!(report.rejected, 0);
        assert!(report.merges > 100);
    }
}

#[test]
fn the_wrong_example_fails_with_a_counterexample() {
    let report = run("isthmus-example-wrong-first-wins", 42);
    assert!(!report.passed());
    let commutative = report
        .violations
        .iter()
        .find(|v| v.law == Law::Commutative)
        .expect("commutativity fails");
    assert_eq!(
        commutative.siblings.len(),
        2,
        "smallest sets are tried first"
    );
    assert_ne!(commutative.expected, commutative.got);
    let text = report.to_string();
    assert!(text.contains("commutative: FAILED"), "{text}");
    assert!(text.contains("seed 42"), "{text}");
}

#[test]
fn a_run_is_a_function_of_its_seed() {
    let a = run("isthmus-example-wrong-first-wins", 7).to_string();
    let b = run("isthmus-example-wrong-first-wins", 7).to_string();
    assert_eq!(a, b);
}

#[test]
fn a_corpus_without_sampler_or_with_garbage_is_handled() {
    let host = small_host();
    let resolver = cart(&host);
    // A non-canonical cart in the corpus (items `z` then `a`, unsorted):
    // merging it with itself sorts the items, so idempotence (on bytes)
    // fails, and the checker says so.
    let options = CheckOptions {
        seed: Some(1),
        cases_per_size: 8,
        corpus: vec![b"\x01z\x01\x01a\x01".to_vec()],
        ..CheckOptions::default()
    };
    let report = check(&host, &resolver, &options).unwrap();
    assert!(
        report.violations.iter().any(|v| v.law == Law::Idempotent),
        "{report}"
    );
}

#[test]
fn the_whole_run_is_bounded_in_fuel_and_time() {
    use isthmus_resolvers::check::CheckError;
    use std::time::Duration;
    let host = small_host();
    let resolver = cart(&host);
    let options = CheckOptions {
        seed: Some(3),
        fuel_max: 1_000_000,
        ..CheckOptions::default()
    };
    match check(&host, &resolver, &options) {
        Err(CheckError::BudgetExceeded {
            merges,
            fuel_used,
            fuel_max,
            ..
        }) => {
            assert!(merges > 0);
            assert!(fuel_used >= fuel_max, "{fuel_used} < {fuel_max}");
            assert_eq!(fuel_max, 1_000_000);
        }
        other => panic!("expected the fuel bound, got {other:?}"),
    }
    let options = CheckOptions {
        seed: Some(3),
        time_max: Duration::ZERO,
        ..CheckOptions::default()
    };
    let err = check(&host, &resolver, &options).unwrap_err();
    assert!(
        matches!(err, CheckError::BudgetExceeded { merges: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("ran out of its budget"), "{err}");
}

#[test]
fn a_resolver_near_the_per_merge_budget_is_reported() {
    use isthmus_resolvers::{Host, ResolverLimits};
    let module = example_module("isthmus-example-cart-union");
    let options = CheckOptions {
        seed: Some(5),
        cases_per_size: 8,
        ..CheckOptions::default()
    };
    let roomy = small_host();
    let report = check(&roomy, &roomy.load(&module).unwrap(), &options).unwrap();
    assert!(report.passed(), "{report}");
    assert!(report.fuel_max_per_merge > 0 && report.fuel_total >= report.fuel_max_per_merge);
    assert!(!report.costly(), "{report}");
    assert!(report.warning().is_none());
    // A budget at 1.5 times the costliest merge: the same run (same seed,
    // fuel is deterministic) still passes, but is over half the budget.
    let tight = Host::new(ResolverLimits {
        fuel_per_merge: report.fuel_max_per_merge * 3 / 2,
        ..ResolverLimits::default()
    })
    .unwrap();
    let again = check(&tight, &tight.load(&module).unwrap(), &options).unwrap();
    assert!(again.passed(), "{again}");
    assert_eq!(again.fuel_max_per_merge, report.fuel_max_per_merge);
    assert!(again.costly());
    let text = again.to_string();
    assert!(text.contains("warning: the costliest merge used"), "{text}");
    assert!(text.contains("66% of the per-merge budget"), "{text}");
}
