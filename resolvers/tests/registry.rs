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
