//! The proptest twin of the `registry` fuzz target: the same check over
//! random bytes and over valid records with bytes flipped, inserted or cut.

use isthmus_core::fuzzing::mutate;
use isthmus_core::model::{Actor, Clock, Version};
use proptest::prelude::*;

use super::*;
use crate::registry::{Binding, LawCheck, ResolverRecord, ResolverRef};

fn record() -> ResolverRecord {
    ResolverRecord {
        name: "cart".into(),
        version: 1,
        hash: [3; 32],
        module_bytes: 1234,
        law_check: LawCheck::Passed { seed: 9 },
    }
}

fn binding() -> Binding {
    let cart = |version| {
        Some(ResolverRef {
            name: "cart".into(),
            version,
            hash: [3; 32],
        })
    };
    Binding {
        keyspace: "ks".into(),
        current: cart(2),
        history: vec![None, cart(1)],
        canary: None,
        paused: false,
        events: Vec::new(),
    }
}

/// A binding with a canary on, paused, with a log.
fn canary_binding() -> Binding {
    use crate::registry::{BindingEvent, BindingEventKind, Canary, CanaryScope, RollbackGuard};
    let cart = ResolverRef {
        name: "cart".into(),
        version: 3,
        hash: [3; 32],
    };
    Binding {
        canary: Some(Canary {
            resolver: cart.clone(),
            scope: CanaryScope {
                dc: Some("dc1".into()),
                share_ppm: Some(500_000),
            },
            guard: RollbackGuard::default(),
            since_ms: 77,
        }),
        paused: true,
        events: vec![BindingEvent {
            at_ms: 78,
            kind: BindingEventKind::Canary(cart),
        }],
        ..binding()
    }
}

/// Valid records, and a replica's set holding one.
fn samples() -> Vec<Vec<u8>> {
    let record = postcard::to_allocvec(&record()).unwrap();
    let set = VersionSet::from_versions([Version::value(
        Clock::from_parts([(Actor(1), 1)], []),
        record.clone(),
        5,
        "dc1".into(),
    )]);
    vec![
        record,
        postcard::to_allocvec(&binding()).unwrap(),
        set.encode(),
        postcard::to_allocvec(&canary_binding()).unwrap(),
    ]
}

#[test]
fn valid_records_pass_the_check_and_are_read_back() {
    for bytes in samples() {
        registry_record(&bytes);
    }
    let store = Arc::new(MemoryRecords::default());
    store.put(&binding_key("ks"), &samples()[1]).unwrap();
    let registry = Registry::new(store);
    assert_eq!(registry.binding("ks").unwrap(), Some(binding()));
    assert_eq!(
        registry.rollback("ks").unwrap().current,
        binding().history[1]
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x1571_00e9),
        ..ProptestConfig::default()
    })]

    /// Twin of the `registry` fuzz target over random bytes.
    #[test]
    fn arbitrary_bytes_pass_the_registry_check(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        registry_record(&bytes);
    }

    /// Twin of the `registry` fuzz target over valid records (and a set
    /// holding one) with a byte flipped, inserted or cut.
    #[test]
    fn mutated_records_pass_the_registry_check(
        which in 0usize..4,
        how in any::<u8>(),
        at in any::<usize>(),
        byte in any::<u8>(),
    ) {
        registry_record(&mutate(samples()[which].clone(), how, at, byte));
    }
}
