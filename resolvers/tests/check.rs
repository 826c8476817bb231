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
