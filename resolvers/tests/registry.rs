//! The registry: register with the law check, override, attach, list,
//! roll back, and the hook following the binding.

mod common;

use std::sync::Arc;

use common::*;
use isthmus_core::merge::MergeHook;
use isthmus_resolvers::registry::{LawCheck, RegistryError, UploadPolicy};
use isthmus_resolvers::{Registry, WasmMergeHook};
use isthmus_testkit::example_module;

#[test]
fn register_attach_list_and_roll_back() {
    let host = small_host();
    let registry = Arc::new(Registry::in_memory());
    let cart_bytes = example_module("isthmus-example-cart-union");
    let lww_bytes = example_module("isthmus-example-lww");
    let policy = UploadPolicy::default();
    let r1 = registry
        .register(&host, "merge", 1, &cart_bytes, &policy)
        .unwrap();
    assert!(matches!(r1.law_check, LawCheck::Passed { .. }));
    let r2 = registry
        .register(&host, "merge", 2, &lww_bytes, &policy)
        .unwrap();
    // Same name and version, same bytes: a no-op; other bytes: refused.
    assert_eq!(
        registry
            .register(&host, "merge", 1, &cart_bytes, &policy)
            .unwrap(),
        r1
    );
    assert!(matches!(
        registry.register(&host, "merge", 1, &lww_bytes, &policy),
        Err(RegistryError::VersionTaken { version: 1, .. })
    ));
    let listed = registry.list().unwrap();
    assert_eq!(listed, vec![r1.clone(), r2.clone()]);
    assert_eq!(registry.module_bytes(&r1.hash).unwrap(), Some(cart_bytes));

    let hook = WasmMergeHook::new(host.clone(), registry.clone());
    registry.attach("carts", "merge", 1).unwrap();
    let m = hook.merge("carts", b"k", &cart_set()).unwrap().unwrap();
    assert_eq!(m.resolver, Some(r1.hash));
    assert_eq!(m.value_bytes(), Some(CART_MERGED));

    let b = registry.attach("carts", "merge", 2).unwrap();
    assert_eq!(b.current.as_ref().unwrap().hash, r2.hash);
    let m = hook.merge("carts", b"k", &cart_set()).unwrap().unwrap();
    assert_eq!(m.resolver, Some(r2.hash));

    let b = registry.rollback("carts").unwrap();
    assert_eq!(b.current.as_ref().unwrap().version, 1);
    let m = hook.merge("carts", b"k", &cart_set()).unwrap().unwrap();
    assert_eq!(m.resolver, Some(r1.hash));

    registry.rollback("carts").unwrap();
    assert_eq!(hook.merge("carts", b"k", &cart_set()), Ok(None));
    assert!(matches!(
        registry.rollback("carts"),
        Err(RegistryError::NothingToRollBack { .. })
    ));
    assert!(matches!(
        registry.attach("carts", "merge", 9),
        Err(RegistryError::UnknownResolver { version: 9, .. })
    ));
    assert_eq!(registry.bindings().unwrap().len(), 1);
}

#[test]
fn a_module_failing_the_check_needs_the_override() {
    let host = small_host();
    let registry = Registry::in_memory();
    let wrong = example_module("isthmus-example-wrong-first-wins");
    let err = registry
        .register(&host, "wrong", 1, &wrong, &UploadPolicy::default())
        .unwrap_err();
    assert!(matches!(err, RegistryError::LawCheckFailed { .. }), "{err}");
    assert!(registry.list().unwrap().is_empty());
    let policy = UploadPolicy {
        override_failed_check: true,
        ..UploadPolicy::default()
    };
    let record = registry
        .register(&host, "wrong", 1, &wrong, &policy)
        .unwrap();
    match record.law_check {
        LawCheck::Overridden { violations, .. } => assert!(!violations.is_empty()),
        other => panic!("expected an override, got {other:?}"),
    }
}

#[test]
fn a_node_loads_a_bound_module_from_the_registry_on_first_use() {
    // Another node registered the resolver; this host has never seen it.
    let registry = Arc::new(Registry::in_memory());
    let uploader = small_host();
    registry
        .register(
            &uploader,
            "cart",
            1,
            &example_module("isthmus-example-cart-union"),
            &UploadPolicy::default(),
        )
        .unwrap();
    registry.attach("carts", "cart", 1).unwrap();
    let node = small_host();
    let hook = WasmMergeHook::new(node.clone(), registry);
    let m = hook.merge("carts", b"k", &cart_set()).unwrap().unwrap();
    assert_eq!(m.value_bytes(), Some(CART_MERGED));
    assert!(node.get(&m.resolver.unwrap()).is_some());
}

fn registry_with(limits: isthmus_resolvers::RegistryLimits) -> Registry {
    use isthmus_resolvers::registry::MemoryRecords;
    Registry::with_limits(Arc::new(MemoryRecords::default()), limits)
}

#[test]
fn the_registry_is_bounded_in_modules_and_module_bytes() {
    use isthmus_resolvers::RegistryLimits;
    let host = small_host();
    let policy = UploadPolicy::default();
    let cart = example_module("isthmus-example-cart-union");
    let lww = example_module("isthmus-example-lww");
    let counter = example_module("isthmus-example-pn-counter");
    let registry = registry_with(RegistryLimits {
        modules_max: 2,
        ..RegistryLimits::default()
    });
    registry.register(&host, "a", 1, &cart, &policy).unwrap();
    registry.register(&host, "b", 1, &lww, &policy).unwrap();
    // The same bytes again under another name take no room.
    registry.register(&host, "c", 1, &cart, &policy).unwrap();
    match registry.register(&host, "d", 1, &counter, &policy) {
        Err(RegistryError::Full {
            modules: 3,
            modules_max: 2,
            ..
        }) => {}
        other => panic!("expected a full registry, got {other:?}"),
    }
    assert_eq!(registry.list().unwrap().len(), 3);
    // Bytes: room for cart-union alone.
    let registry = registry_with(RegistryLimits {
        module_bytes_total_max: cart.len() as u64,
        ..RegistryLimits::default()
    });
    registry.register(&host, "a", 1, &cart, &policy).unwrap();
    let err = registry.register(&host, "b", 1, &lww, &policy).unwrap_err();
    assert!(
        matches!(err, RegistryError::Full { module_bytes_total, .. } if module_bytes_total == (cart.len() + lww.len()) as u64),
        "{err}"
    );
    assert!(err.to_string().contains("delete unused resolvers"), "{err}");
}

#[test]
fn a_binding_keeps_its_last_entries_and_can_always_change() {
    use isthmus_resolvers::RegistryLimits;
    let host = small_host();
    let registry = registry_with(RegistryLimits {
        history_max: 3,
        ..RegistryLimits::default()
    });
    let policy = UploadPolicy::default();
    for (version, package) in [
        (1, "isthmus-example-cart-union"),
        (2, "isthmus-example-lww"),
    ] {
        registry
            .register(&host, "m", version, &example_module(package), &policy)
            .unwrap();
    }
    // Many changes: the history stays at three entries, the last ones.
    for i in 0..50u32 {
        registry.attach("ks", "m", 1 + i % 2).unwrap();
        registry.detach("ks").unwrap();
    }
    let binding = registry.attach("ks", "m", 2).unwrap();
    assert_eq!(binding.history.len(), 3);
    let versions: Vec<Option<u32>> = binding
        .history
        .iter()
        .map(|r| r.as_ref().map(|r| r.version))
        .collect();
    assert_eq!(versions, vec![None, Some(2), None]);
    // Rollback works within those three, then there is nothing left.
    assert_eq!(registry.rollback("ks").unwrap().current, None);
    assert_eq!(
        registry.rollback("ks").unwrap().current.map(|r| r.version),
        Some(2)
    );
    assert_eq!(registry.rollback("ks").unwrap().current, None);
    assert!(matches!(
        registry.rollback("ks"),
        Err(RegistryError::NothingToRollBack { .. })
    ));
}

#[test]
fn delete_removes_what_no_binding_uses_and_refuses_the_rest() {
    use isthmus_resolvers::RegistryLimits;
    let host = small_host();
    let registry = registry_with(RegistryLimits {
        history_max: 1,
        ..RegistryLimits::default()
    });
    let policy = UploadPolicy::default();
    let cart = example_module("isthmus-example-cart-union");
    let lww = example_module("isthmus-example-lww");
    let a = registry.register(&host, "a", 1, &cart, &policy).unwrap();
    registry.register(&host, "twin", 1, &cart, &policy).unwrap();
    registry.register(&host, "b", 1, &lww, &policy).unwrap();

    // Bound now: refused, naming the keyspace.
    registry.attach("ks", "a", 1).unwrap();
    match registry.delete("a", 1, &[]) {
        Err(RegistryError::InUse { keyspaces, .. }) => assert_eq!(keyspaces, vec!["ks"]),
        other => panic!("expected in use, got {other:?}"),
    }
    // In the history a rollback returns to: still refused.
    registry.attach("ks", "b", 1).unwrap();
    assert!(matches!(
        registry.delete("a", 1, &[]),
        Err(RegistryError::InUse { .. })
    ));
    // A configured default that names it: refused.
    registry.detach("ks").unwrap();
    assert!(matches!(
        registry.delete("a", 1, &["other".to_owned()]),
        Err(RegistryError::InUse { ref keyspaces, .. }) if keyspaces == &["other"]
    ));
    // Out of the history (history_max 1): deleted. Its module stays while
    // `twin` has the same bytes.
    assert_eq!(registry.delete("a", 1, &[]).unwrap(), a);
    assert_eq!(registry.get("a", 1).unwrap(), None);
    assert!(registry.module_bytes(&a.hash).unwrap().is_some());
    registry.delete("twin", 1, &[]).unwrap();
    assert_eq!(registry.module_bytes(&a.hash).unwrap(), None);
    let names: Vec<String> = registry
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, vec!["b"]);
    // Unknown: a typed error.
    assert!(matches!(
        registry.delete("a", 1, &[]),
        Err(RegistryError::UnknownResolver { .. })
    ));
}
