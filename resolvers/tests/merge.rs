//! The merge hook end to end: determinism across hosts, convergence across
//! resolver versions, and the example resolvers inside the real host.

mod common;

use std::sync::Arc;

use common::*;
use isthmus_core::merge::{MergeHook, merge_into};
use isthmus_core::model::{Absorbed, VersionSet};
use isthmus_resolvers::registry::UploadPolicy;
use isthmus_resolvers::{Host, Registry, ResolverLimits, WasmMergeHook};
use isthmus_testkit::example_module;
use isthmus_testkit::version::dotted;

fn hook_with(host: Arc<Host>, package: &str) -> WasmMergeHook {
    let registry = Arc::new(Registry::in_memory());
    registry
        .register(
            &host,
            package,
            1,
            &example_module(package),
            &UploadPolicy::default(),
        )
        .unwrap();
    registry.attach("ks", package, 1).unwrap();
    WasmMergeHook::new(host, registry)
}

#[test]
fn two_hosts_merging_the_same_set_produce_identical_bytes() {
    let a = hook_with(small_host(), "isthmus-example-cart-union");
    let b = hook_with(
        Arc::new(Host::new(ResolverLimits::default()).unwrap()),
        "isthmus-example-cart-union",
    );
    let set = cart_set();
    let ma = a.merge("ks", b"cart:1", &set).unwrap().unwrap();
    let mb = b.merge("ks", b"cart:1", &set.clone()).unwrap().unwrap();
    assert_eq!(ma.encode(), mb.encode());
    assert_eq!(ma.value_bytes(), Some(CART_MERGED));
    assert_eq!(ma.clock, set.lub());
    assert_eq!(ma.timestamp_ms, 12);
    let hash = isthmus_resolvers::host::module_hash(&example_module("isthmus-example-cart-union"));
    assert_eq!(ma.resolver, Some(hash));
    // A set built in another order is the same set, merged the same.
    let reversed = VersionSet::from_versions(set.versions().iter().rev().cloned());
    let mc = a.merge("ks", b"cart:1", &reversed).unwrap().unwrap();
    assert_eq!(mc.encode(), ma.encode());
}

#[test]
fn two_resolver_versions_mid_rollout_converge() {
    // Two replicas run different resolver versions (different modules,
    // different bytes under the same lub clock). Absorbing each other's
    // merged version must leave both with the same single version.
    let host = small_host();
    let v1 = hook_with(host.clone(), "isthmus-example-cart-union");
    let v2 = hook_with(host, "isthmus-example-lww");
    let mut r1 = cart_set();
    let mut r2 = cart_set();
    assert_eq!(merge_into(&v1, "ks", b"k", &mut r1), Ok(Absorbed::Changed));
    assert_eq!(merge_into(&v2, "ks", b"k", &mut r2), Ok(Absorbed::Changed));
    assert_ne!(r1, r2, "the two versions merge differently");
    assert_eq!(r1.versions()[0].clock, r2.versions()[0].clock);
    let (m1, m2) = (r1.versions()[0].clone(), r2.versions()[0].clone());
    r1.absorb(m2);
    r2.absorb(m1);
    assert_eq!(r1, r2);
    assert_eq!(r1.len(), 1);
    assert_eq!(r1.encode(), r2.encode());
}

#[test]
fn lww_and_pn_counter_run_in_the_host() {
    let host = small_host();
    let lww = hook_with(host.clone(), "isthmus-example-lww");
    let set = VersionSet::from_versions([
        dotted(1, 1).at(10).value(b"old"),
        dotted(2, 1).at(20).dc("dc2").value(b"new"),
        dotted(3, 1).at(15).tombstone(),
    ]);
    let m = lww.merge("ks", b"k", &set).unwrap().unwrap();
    assert_eq!(m.value_bytes(), Some(&b"new"[..]));

    let pn = hook_with(host, "isthmus-example-pn-counter");
    let set = VersionSet::from_versions([
        dotted(1, 1).at(10).value(br#"{"p":{"a":3}}"#),
        dotted(2, 1)
            .at(11)
            .dc("dc2")
            .value(br#"{"n":{"b":1},"p":{"a":1}}"#),
    ]);
    let m = pn.merge("ks", b"k", &set).unwrap().unwrap();
    assert_eq!(m.value_bytes(), Some(&br#"{"n":{"b":1},"p":{"a":3}}"#[..]));
}

#[test]
fn all_tombstones_merge_into_a_tombstone_and_unbound_keyspaces_are_left_alone() {
    let host = small_host();
    let hook = hook_with(host, "isthmus-example-cart-union");
    let set = VersionSet::from_versions([
        dotted(1, 1).at(1).tombstone(),
        dotted(2, 1).at(2).dc("dc2").tombstone(),
    ]);
    let m = hook.merge("ks", b"k", &set).unwrap().unwrap();
    assert!(m.is_tombstone());
    assert_eq!(hook.merge("other", b"k", &cart_set()), Ok(None));
}

#[test]
fn native_and_wasm_builds_agree() {
    use isthmus_sdk_wasm::Merged;
    let host = small_host();
    let resolver = cart(&host);
    let set = cart_set();
    let siblings: Vec<_> = set
        .versions()
        .iter()
        .map(isthmus_resolvers::host::to_sibling)
        .collect();
    let wasm = host.merge_siblings(&resolver, b"k", &siblings).unwrap();
    let native = isthmus_example_cart_union::merge(b"k", &siblings).unwrap();
    assert_eq!(wasm, native);
    assert_eq!(wasm, Merged::Value(CART_MERGED.to_vec()));
}

/// Past 16 siblings the wasm build compares two heads per scan iteration
/// where the native build compares one (`SCAN_STEP`), so the wasm fast path
/// gets its own check against the native build: many carts of awkward
/// names (shared prefixes ending around the 8- and 16-byte keys, zero and
/// 0xff bytes, names over 16 bytes), 1 to 13 siblings (the unrolled scan)
/// or 17 to 76 (the loop, both parities, ties as a bit mask or a list), some carts left unsorted for the
/// slow path.
#[test]
fn native_and_wasm_builds_agree_on_awkward_carts() {
    use isthmus_sdk_wasm::Sibling;
    let host = small_host();
    let resolver = cart(&host);
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut slow = 0;
    for round in 0..300 {
        let mut unsorted = false;
        // Up to 16 siblings the scan is unrolled; past that it loops.
        let siblings = if round % 4 == 0 {
            17 + next() % 60
        } else {
            next() % 13 + 1
        };
        let carts: Vec<Vec<u8>> = (0..siblings)
            .map(|_| {
                let mut items = Vec::new();
                for _ in 0..next() % 20 {
                    let mut name = vec![b'p'; [0, 7, 8, 9, 15, 16, 17, 24][(next() % 8) as usize]];
                    for _ in 0..next() % 5 {
                        name.push([0u8, b'a', 0xff][(next() % 3) as usize]);
                    }
                    items.push((name, next() % 300));
                }
                if next() % 8 != 0 {
                    items.sort();
                    items.dedup_by(|a, b| a.0 == b.0);
                }
                unsorted |= items.windows(2).any(|w| w[0].0 >= w[1].0);
                let mut out = Vec::new();
                for (name, qty) in items {
                    out.push(name.len() as u8);
                    out.extend_from_slice(&name);
                    let mut q = qty;
                    while q >= 0x80 {
                        out.push(q as u8 | 0x80);
                        q >>= 7;
                    }
                    out.push(q as u8);
                }
                out
            })
            .collect();
        let siblings: Vec<_> = carts
            .iter()
            .enumerate()
            .map(|(i, c)| Sibling::of_value(c, i as u64))
            .collect();
        let native = isthmus_example_cart_union::merge(b"k", &siblings).unwrap();
        let wasm = host.merge_siblings(&resolver, b"k", &siblings).unwrap();
        assert_eq!(wasm, native, "round {round}: {carts:?}");
        slow += usize::from(unsorted);
    }
    assert!(slow > 0, "no round took the slow path");
}
