//! Which WebAssembly features a resolver module may use: each module
//! below has the ABI exports and uses one feature in a function of its
//! own; the host loads it or refuses it at load (`InvalidModule`), as the
//! table in `isthmus-sdk-wasm`'s docs says. A feature the host accepts is
//! also used by a merge that runs.

use isthmus_resolvers::{Host, ResolverError, ResolverLimits};

/// A module with the ABI exports, `extra` fields, and `isthmus_merge`
/// calling `$feature` (which must leave nothing on the stack) before it
/// returns an empty output location.
fn module(extra: &str) -> Result<Vec<u8>, String> {
    wat::parse_str(format!(
        r#"(module
             (memory (export "memory") 1)
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 1024)
             {extra}
             (func (export "isthmus_merge") (param i32 i32) (result i64)
               call $feature
               i64.const 0))"#
    ))
    .map_err(|e| e.to_string())
}

const ACCEPTED: &[(&str, &str)] = &[
    (
        "simd",
        r#"(func $feature (drop (i32x4.extract_lane 0 (i32x4.splat (i32.const 1)))))"#,
    ),
    (
        "relaxed simd (deterministic)",
        r#"(func $feature (drop (i32x4.relaxed_laneselect (v128.const i64x2 0 0) (v128.const i64x2 0 0) (v128.const i64x2 0 0))))"#,
    ),
    (
        "bulk memory",
        r#"(func $feature (memory.fill (i32.const 0) (i32.const 0) (i32.const 8)))"#,
    ),
    (
        "multi-value",
        r#"(func $two (result i32 i32) (i32.const 1) (i32.const 2))
           (func $feature (call $two) (drop) (drop))"#,
    ),
    (
        "reference types",
        r#"(table 1 funcref)
           (func $feature (drop (ref.is_null (table.get 0 (i32.const 0)))))"#,
    ),
    (
        "sign extension and saturating conversions",
        r#"(func $feature (drop (i32.extend8_s (i32.trunc_sat_f32_s (f32.const 3.5)))))"#,
    ),
    (
        "tail calls",
        r#"(func $nothing)
           (func $feature (return_call $nothing))"#,
    ),
];

const REFUSED: &[(&str, &str)] = &[
    (
        "threads (shared memory, atomics)",
        r#"(memory $shared 1 1 shared)
           (func $feature (drop (i32.atomic.load $shared (i32.const 0))))"#,
    ),
    (
        "a second memory",
        r#"(memory $second 1)
           (func $feature (i32.store $second (i32.const 0) (i32.const 1)))"#,
    ),
];

#[test]
fn the_host_accepts_the_documented_features_and_refuses_the_others() {
    let host = Host::new(ResolverLimits::default()).unwrap();
    for (feature, wat) in ACCEPTED {
        let bytes = module(wat).unwrap_or_else(|e| panic!("{feature}: {e}"));
        let resolver = host
            .load(&bytes)
            .unwrap_or_else(|e| panic!("{feature} should load: {e}"));
        // The call runs the feature (no trap), then hands back an empty
        // output.
        let merged = host.merge_raw(&resolver, &[0; 8]);
        assert_eq!(merged, Ok(Vec::new()), "{feature}");
    }
    for (feature, wat) in REFUSED {
        let bytes = module(wat).unwrap_or_else(|e| panic!("{feature}: {e}"));
        let loaded = host.load(&bytes);
        assert!(
            matches!(loaded, Err(ResolverError::InvalidModule { .. })),
            "{feature} should be refused: {loaded:?}"
        );
    }
}
