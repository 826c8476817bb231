//! Staged rollouts through the registry and the merge hook: a canary in
//! one datacenter (or a share of keys), promote, roll back by hand or by
//! itself past its failure rate, replicas of two datacenters converging
//! while they merge with two versions, and a paused binding.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use isthmus_core::merge::{FailureClass, MergeHook};
use isthmus_resolvers::registry::{
    BindingEventKind, CanaryScope, MemoryRecords, RegistryError, ResolverRecord, RollbackGuard,
    UploadPolicy,
};
use isthmus_resolvers::{Host, Registry, WasmMergeHook};
use isthmus_testkit::example_module;

/// `ks` bound to cart-union as `m@1`; lww registered as `m@2`; a module
/// that traps on every merge registered (with the override) as `bad@1`.
fn setup(host: &Host) -> (Arc<Registry>, [ResolverRecord; 3]) {
    let registry = Arc::new(Registry::in_memory());
    let policy = UploadPolicy {
        override_failed_check: true,
        ..UploadPolicy::default()
    };
    let cart = registry
        .register(
            host,
            "m",
            1,
            &example_module("isthmus-example-cart-union"),
            &policy,
        )
        .unwrap();
    let lww = registry
        .register(
            host,
            "m",
            2,
            &example_module("isthmus-example-lww"),
            &policy,
        )
        .unwrap();
    let bad = registry
        .register(host, "bad", 1, &trapping_module(), &policy)
        .unwrap();
    registry.attach("ks", "m", 1).unwrap();
    (registry, [cart, lww, bad])
}

/// A module with the ABI's exports whose merge traps, always.
fn trapping_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 1024)
             (func (export "isthmus_merge") (param i32 i32) (result i64) unreachable))"#,
    )
    .unwrap()
}

fn in_dc1() -> CanaryScope {
    CanaryScope {
        dc: Some("dc1".into()),
        share_ppm: None,
    }
}

fn hooks(host: &Arc<Host>, registry: &Arc<Registry>) -> (WasmMergeHook, WasmMergeHook) {
    (
        WasmMergeHook::new(host.clone(), registry.clone()).with_dc("dc1"),
        WasmMergeHook::new(host.clone(), registry.clone()).with_dc("dc2"),
    )
}

fn merged_by(hook: &WasmMergeHook, key: &[u8]) -> Option<[u8; 32]> {
    hook.merge("ks", key, &cart_set())
        .unwrap()
        .and_then(|v| v.resolver)
}

#[test]
fn a_canary_merges_in_its_dc_only_until_promoted_or_rolled_back() {
    let host = small_host();
    let (registry, [cart, lww, _]) = setup(&host);
    let (dc1, dc2) = hooks(&host, &registry);

    let binding = registry
        .attach_canary(
            "ks",
            "m",
            2,
            in_dc1(),
            RollbackGuard::default(),
            None,
            1_000,
        )
        .unwrap();
    assert_eq!(binding.current.as_ref().unwrap().hash, cart.hash);
    assert_eq!(merged_by(&dc1, b"k"), Some(lww.hash), "DC1 runs the canary");
    assert_eq!(merged_by(&dc2, b"k"), Some(cart.hash), "DC2 keeps m@1");

    // Rollback drops the canary and nothing else.
    let binding = registry.rollback("ks").unwrap();
    assert_eq!(binding.canary, None);
    assert_eq!(binding.current.as_ref().unwrap().hash, cart.hash);
    assert_eq!(merged_by(&dc1, b"k"), Some(cart.hash));

    // Again, then promoted: m@2 everywhere, m@1 what a rollback returns to.
    registry
        .attach_canary(
            "ks",
            "m",
            2,
            in_dc1(),
            RollbackGuard::default(),
            None,
            2_000,
        )
        .unwrap();
    let binding = registry.promote("ks").unwrap();
    assert_eq!(binding.canary, None);
    assert_eq!(binding.current.as_ref().unwrap().hash, lww.hash);
    assert_eq!(
        binding.history.last().unwrap().as_ref().unwrap().hash,
        cart.hash
    );
    assert_eq!(merged_by(&dc1, b"k"), Some(lww.hash));
    assert_eq!(merged_by(&dc2, b"k"), Some(lww.hash));
    let notes: Vec<String> = binding.events.iter().map(|e| e.kind.to_string()).collect();
    assert_eq!(
        notes,
        [
            "bound to m@1",
            "canary m@2 began",
            "canary m@2 rolled back",
            "canary m@2 began",
            "canary m@2 promoted"
        ]
    );
    assert!(matches!(
        registry.promote("ks"),
        Err(RegistryError::NoCanary { .. })
    ));
}

#[test]
fn a_share_canary_takes_its_share_of_keys_on_every_dc() {
    let host = small_host();
    let (registry, [cart, lww, _]) = setup(&host);
    let (dc1, dc2) = hooks(&host, &registry);
    let scope = CanaryScope {
        dc: None,
        share_ppm: Some(250_000),
    };
    registry
        .attach_canary("ks", "m", 2, scope, RollbackGuard::default(), None, 1)
        .unwrap();
    let mut canary_keys = 0;
    for i in 0..400u32 {
        let key = format!("key-{i}");
        let by = merged_by(&dc1, key.as_bytes()).unwrap();
        assert!(by == lww.hash || by == cart.hash);
        assert_eq!(
            merged_by(&dc2, key.as_bytes()),
            Some(by),
            "{key}: same on both DCs"
        );
        canary_keys += usize::from(by == lww.hash);
    }
    assert!(
        (60..=140).contains(&canary_keys),
        "about a quarter of 400 keys, got {canary_keys}"
    );
}

#[test]
fn both_dcs_converge_while_they_merge_with_different_versions() {
    let host = small_host();
    let (registry, _) = setup(&host);
    let (dc1, dc2) = hooks(&host, &registry);
    registry
        .attach_canary("ks", "m", 2, in_dc1(), RollbackGuard::default(), None, 1)
        .unwrap();
    // Each DC merges the same siblings with its own version: equal clocks,
    // different bytes.
    let a = dc1.merge("ks", b"k", &cart_set()).unwrap().unwrap();
    let b = dc2.merge("ks", b"k", &cart_set()).unwrap().unwrap();
    assert_eq!(a.clock, b.clock);
    assert_ne!(a.payload, b.payload);
    // Whatever order each DC receives the other's merge in, both end with
    // the same one version.
    let mut in_dc1 = cart_set();
    in_dc1.absorb(a.clone());
    in_dc1.absorb(b.clone());
    let mut in_dc2 = cart_set();
    in_dc2.absorb(b);
    in_dc2.absorb(a);
    assert_eq!(in_dc1, in_dc2);
    assert_eq!(in_dc1.len(), 1);
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_failing_canary_rolls_itself_back_and_says_why() {
    let host = small_host();
    let (registry, [cart, _, bad]) = setup(&host);
    let (dc1, dc2) = hooks(&host, &registry);
    let guard = RollbackGuard {
        window_ms: 60_000,
        merges_min: 3,
        failure_rate_max_ppm: 500_000,
    };
    registry
        .attach_canary(
            "ks",
            "bad",
            1,
            in_dc1(),
            guard,
            None,
            isthmus_resolvers::registry::now_ms(),
        )
        .unwrap();
    // DC2 is out of scope: it merges with m@1 and counts nothing.
    for _ in 0..5 {
        assert_eq!(merged_by(&dc2, b"k"), Some(cart.hash));
    }
    assert_eq!(
        registry
            .binding("ks")
            .unwrap()
            .unwrap()
            .canary
            .map(|c| c.resolver.hash),
        Some(bad.hash)
    );
    // DC1's merges fail: siblings kept, and the third trips the guard.
    for _ in 0..3 {
        let failure = dc1.merge("ks", b"k", &cart_set()).unwrap_err();
        assert_eq!(failure.class, FailureClass::Trap);
        assert_eq!(failure.resolver, Some(bad.hash));
    }
    wait_for("the canary is rolled back", || {
        registry.binding("ks").unwrap().unwrap().canary.is_none()
    });
    let binding = registry.binding("ks").unwrap().unwrap();
    assert_eq!(binding.current.as_ref().unwrap().hash, cart.hash);
    let last = &binding.events.last().unwrap().kind;
    assert!(
        matches!(last, BindingEventKind::RolledBackAutomatically { failures: 3, merges: 3, resolver } if resolver.hash == bad.hash),
        "{last:?}"
    );
    assert_eq!(
        last.to_string(),
        "canary bad@1 rolled back automatically: failure rate 1.000 over 3 merges (3 failed)"
    );
    // DC1 merges again, with m@1.
    assert_eq!(merged_by(&dc1, b"k"), Some(cart.hash));
}

#[test]
fn nodes_rolling_back_the_same_canary_concurrently_agree() {
    let host = small_host();
    let (registry, [_, _, bad]) = setup(&host);
    let binding = registry
        .attach_canary("ks", "bad", 1, in_dc1(), RollbackGuard::default(), None, 7)
        .unwrap();
    // Two nodes' replicas holding the same record, each rolling the canary
    // back with its own counts.
    let copy = |binding: &isthmus_resolvers::registry::Binding| {
        let store = Arc::new(MemoryRecords::default());
        let r = Registry::new(store.clone());
        use isthmus_resolvers::RegistryRecords;
        store
            .put(
                &isthmus_resolvers::registry::binding_key("ks"),
                &postcard::to_allocvec(binding).unwrap(),
            )
            .unwrap();
        r
    };
    let (node_a, node_b) = (copy(&binding), copy(&binding));
    let a = node_a
        .auto_rollback("ks", &bad.hash, 7, 20, 20, 100)
        .unwrap()
        .unwrap();
    let b = node_b
        .auto_rollback("ks", &bad.hash, 7, 25, 30, 101)
        .unwrap()
        .unwrap();
    // Whichever record wins, the keyspace is bound alike.
    assert_eq!(
        (&a.current, &a.history, &a.canary),
        (&b.current, &b.history, &b.canary)
    );
    assert_eq!(a.canary, None);
    // Once rolled back, a late node's rollback changes nothing; nor does
    // one for an earlier trial of the same module.
    assert_eq!(
        node_a.auto_rollback("ks", &bad.hash, 7, 1, 1, 102).unwrap(),
        None
    );
    registry
        .attach_canary("ks", "bad", 1, in_dc1(), RollbackGuard::default(), None, 8)
        .unwrap();
    assert_eq!(
        registry
            .auto_rollback("ks", &bad.hash, 7, 1, 1, 103)
            .unwrap(),
        None
    );
    assert!(registry.binding("ks").unwrap().unwrap().canary.is_some());
}

#[test]
fn a_paused_binding_keeps_siblings_until_resumed() {
    let host = small_host();
    let (registry, [cart, _, _]) = setup(&host);
    let (dc1, _) = hooks(&host, &registry);
    let binding = registry.pause("ks", None).unwrap();
    assert!(binding.paused);
    let paused = dc1.merge("ks", b"k", &cart_set()).unwrap_err();
    assert_eq!(paused.class, FailureClass::Paused, "{paused}");
    assert_eq!(dc1.bound("ks"), Some(true), "still a merging keyspace");
    let binding = registry.resume("ks", None).unwrap();
    assert!(!binding.paused);
    assert_eq!(merged_by(&dc1, b"k"), Some(cart.hash));
    let notes: Vec<String> = binding.events.iter().map(|e| e.kind.to_string()).collect();
    assert_eq!(notes[1..], ["paused", "resumed"]);
}

#[test]
fn pausing_a_keyspace_the_registry_never_bound_keeps_its_default() {
    let host = small_host();
    let (registry, [cart, _, _]) = setup(&host);
    let hook = WasmMergeHook::new(host.clone(), registry.clone())
        .with_defaults([("other".to_owned(), ("m".to_owned(), 1))].into());
    let default = Some(isthmus_resolvers::registry::ResolverRef {
        name: "m".into(),
        version: 1,
        hash: cart.hash,
    });
    registry.pause("other", default.clone()).unwrap();
    let paused = hook.merge("other", b"k", &cart_set()).unwrap_err();
    assert_eq!(paused.class, FailureClass::Paused, "{paused}");
    assert_eq!(paused.resolver_name.as_deref(), Some("m@1"));
    registry.resume("other", default).unwrap();
    let merged = hook.merge("other", b"k", &cart_set()).unwrap().unwrap();
    assert_eq!(merged.resolver, Some(cart.hash));
}

#[test]
fn a_canary_resolver_cannot_be_deleted() {
    let host = small_host();
    let (registry, _) = setup(&host);
    registry
        .attach_canary("ks", "bad", 1, in_dc1(), RollbackGuard::default(), None, 1)
        .unwrap();
    assert!(matches!(
        registry.delete("bad", 1, &[]),
        Err(RegistryError::InUse { ref keyspaces, .. }) if keyspaces == &["ks"]
    ));
    registry.rollback("ks").unwrap();
    registry.delete("bad", 1, &[]).unwrap();
}

#[test]
fn canary_scope_and_guard_are_validated_naming_the_field() {
    let host = small_host();
    let (registry, _) = setup(&host);
    let field = |scope: CanaryScope, guard: RollbackGuard| match registry
        .attach_canary("ks", "m", 2, scope, guard, None, 1)
    {
        Err(RegistryError::InvalidCanary { field, .. }) => field,
        other => panic!("expected an invalid canary, got {other:?}"),
    };
    let ok = RollbackGuard::default();
    let share = |ppm| CanaryScope {
        dc: None,
        share_ppm: Some(ppm),
    };
    assert_eq!(field(share(0), ok.clone()), "share");
    assert_eq!(field(share(1_000_001), ok.clone()), "share");
    assert_eq!(field(CanaryScope::default(), ok.clone()), "scope");
    let guard = |window_ms, merges_min, failure_rate_max_ppm| RollbackGuard {
        window_ms,
        merges_min,
        failure_rate_max_ppm,
    };
    assert_eq!(field(in_dc1(), guard(999, 20, 1)), "window_ms");
    assert_eq!(field(in_dc1(), guard(1_000, 0, 1)), "merges_min");
    assert_eq!(field(in_dc1(), guard(1_000, 1, 0)), "failure_rate_max");
    assert_eq!(
        field(in_dc1(), guard(1_000, 1, 1_000_001)),
        "failure_rate_max"
    );
    // The current binding on trial again: refused.
    assert!(matches!(
        registry.attach_canary("ks", "m", 1, in_dc1(), ok, None, 1),
        Err(RegistryError::InvalidCanary {
            field: "resolver",
            ..
        })
    ));
    // Nothing was stored by the refusals.
    assert_eq!(registry.binding("ks").unwrap().unwrap().canary, None);
}
