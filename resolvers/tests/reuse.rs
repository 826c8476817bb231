//! Kept instances: a merge in an instance kept from an earlier merge sees
//! exactly what a merge in a fresh instance sees, and gives the same bytes
//! for the same fuel.

mod common;

use std::sync::Arc;

use common::*;
use isthmus_resolvers::{Host, ResolverLimits};
use isthmus_sdk_wasm::Sibling;

/// A one-page module that reports the state it starts from (a private
/// global, a byte of its data, a byte deep in the page, the memory's size)
/// and then dirties all of it; input `1` also grows the memory, input `2`
/// traps after dirtying.
const REPORTER: &str = r#"(module
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 5))
  (global $h (mut i64) (i64.const 9))
  (data (i32.const 16) "\07")
  (func (export "isthmus_abi_version") (result i32) i32.const 1)
  (func (export "isthmus_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "isthmus_merge") (param $p i32) (param $n i32) (result i64)
    (i32.store8 (i32.const 2) (global.get $g))
    (i32.store8 (i32.const 3) (i32.load8_u (i32.const 16)))
    (i32.store8 (i32.const 4) (i32.load8_u (i32.const 60000)))
    (i32.store8 (i32.const 5) (memory.size))
    (i32.store8 (i32.const 6) (i32.wrap_i64 (global.get $h)))
    (global.set $g (i32.add (global.get $g) (i32.const 1)))
    (global.set $h (i64.add (global.get $h) (i64.const 1)))
    (i32.store8 (i32.const 16) (i32.const 55))
    (i32.store8 (i32.const 60000) (i32.const 99))
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 1))
      (then (drop (memory.grow (i32.const 1)))))
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 2))
      (then unreachable))
    i64.const 0x200000005))"#;

#[test]
fn a_kept_instance_starts_every_merge_from_the_initial_state() {
    let host = small_host();
    let r = host.load(&wat::parse_str(REPORTER).unwrap()).unwrap();
    assert!(r.reuses_instances());
    let initial = vec![5u8, 7, 0, 1, 9];
    for round in 0..60usize {
        // Kept, kept, grown (dropped), kept, trapped (dropped).
        let input = [[0u8, 0, 1, 0, 2][round % 5]];
        let out = host.merge_raw(&r, &input);
        if input[0] == 2 {
            assert!(out.is_err(), "round {round}: the trap is reported");
        } else {
            assert_eq!(
                out.unwrap(),
                initial,
                "round {round}: state leaked from one merge into the next"
            );
        }
    }
    // Merges that grew the memory or trapped dropped their instance; the
    // others were kept and used again.
    assert_eq!(r.reused_merges(), 36);
}

/// A module whose merge swaps the function in its table: fresh instances
/// only, and every merge calls the original function.
#[test]
fn a_module_that_changes_its_table_gets_a_fresh_instance_per_merge() {
    let host = small_host();
    let r = host
        .load(
            &wat::parse_str(
                r#"(module
                     (memory (export "memory") 1)
                     (type $t (func (result i32)))
                     (table 2 funcref)
                     (elem (i32.const 0) $first $second)
                     (func $first (result i32) i32.const 1)
                     (func $second (result i32) i32.const 2)
                     (func (export "isthmus_abi_version") (result i32) i32.const 1)
                     (func (export "isthmus_alloc") (param i32) (result i32) i32.const 1024)
                     (func (export "isthmus_merge") (param i32 i32) (result i64)
                       (i32.store8 (i32.const 0) (call_indirect (type $t) (i32.const 0)))
                       (table.set (i32.const 0) (table.get (i32.const 1)))
                       i64.const 1))"#,
            )
            .unwrap(),
        )
        .unwrap();
    assert!(!r.reuses_instances());
    for _ in 0..10 {
        assert_eq!(host.merge_raw(&r, b"x").unwrap(), vec![1]);
    }
    assert_eq!(r.reused_merges(), 0);
}

/// Carts of 1 to 40 siblings (some past the first page, so their instance
/// is dropped) merged on a host that keeps instances and on one that
/// cannot (a pool of 3 leaves no budget): the same bytes, the same fuel.
#[test]
fn kept_and_fresh_instances_give_the_same_bytes_for_the_same_fuel() {
    let keeping = small_host();
    let fresh = Arc::new(
        Host::new(ResolverLimits {
            instances_max: 3,
            ..ResolverLimits::default()
        })
        .unwrap(),
    );
    let (rk, rf) = (cart(&keeping), cart(&fresh));
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for round in 0..200 {
        let carts: Vec<Vec<u8>> = (0..next() % 40 + 1)
            .map(|_| {
                let mut cart = isthmus_example_cart_union::Cart::new();
                for _ in 0..next() % 60 {
                    cart.insert(format!("sku-{:04}", next() % 500), next() % 9);
                }
                isthmus_example_cart_union::encode(&cart)
            })
            .collect();
        let siblings: Vec<_> = carts
            .iter()
            .enumerate()
            .map(|(i, c)| Sibling::of_value(c, i as u64))
            .collect();
        let a = keeping.merge_siblings_metered(&rk, b"k", &siblings);
        let b = fresh.merge_siblings_metered(&rf, b"k", &siblings);
        assert_eq!(a, b, "round {round}");
        assert!(a.0.is_ok(), "round {round}: {:?}", a.0);
    }
    assert!(rk.reused_merges() > 100, "{}", rk.reused_merges());
    assert_eq!(rf.reused_merges(), 0);
}

/// Threads merging with one resolver at once each get an instance of
/// their own, kept or fresh.
#[test]
fn concurrent_merges_share_no_instance() {
    let host = small_host();
    let r = cart(&host);
    std::thread::scope(|scope| {
        for t in 0..6u64 {
            let (host, r) = (&host, &r);
            scope.spawn(move || {
                for i in 0..300u64 {
                    let carts: Vec<Vec<u8>> = (0..(t + i) % 7 + 2)
                        .map(|j| {
                            let mut cart = isthmus_example_cart_union::Cart::new();
                            cart.insert(format!("t{t}-i{i}-j{j}"), j + 1);
                            cart.insert("shared".into(), (t * i + j) % 5);
                            isthmus_example_cart_union::encode(&cart)
                        })
                        .collect();
                    let siblings: Vec<_> = carts
                        .iter()
                        .enumerate()
                        .map(|(k, c)| Sibling::of_value(c, k as u64))
                        .collect();
                    assert_eq!(
                        host.merge_siblings(r, b"k", &siblings).unwrap(),
                        isthmus_example_cart_union::merge(b"k", &siblings).unwrap()
                    );
                }
            });
        }
    });
    assert!(r.reused_merges() > 0);
}
