//! Hostile modules: each is rejected at load or contained at call with its
//! failure class asserted, the siblings kept, and the host still serving
//! good merges afterwards, including concurrently from another thread.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use isthmus_core::merge::{FailureClass, merge_into};
use isthmus_resolvers::registry::UploadPolicy;
use isthmus_resolvers::{Host, Registry, Resolver, ResolverError, ResolverLimits, WasmMergeHook};
use isthmus_testkit::version::dotted;

/// A module with the ABI exports; `merge` is the body of `isthmus_merge`.
fn module(merge: &str, extra: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             (memory (export "memory") 1)
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 1024)
             (func (export "isthmus_merge") (param i32 i32) (result i64) {merge})
             {extra})"#
    ))
    .expect("test WAT parses")
}

/// Merge the cart set with `hostile` through the hook, and check that the
/// failure has `class`, the siblings are kept, the failure is counted, and
/// `good` still merges correctly, also from another thread meanwhile.
fn contained(host: &Arc<Host>, hostile: &[u8], class: FailureClass) -> ResolverError {
    let good = cart(host);
    // The concurrent good merges run while the hostile one does.
    let background = {
        let (host, good) = (host.clone(), good.clone());
        std::thread::spawn(move || {
            for _ in 0..5 {
                assert_good(&host, &good);
            }
        })
    };
    let registry = Arc::new(Registry::in_memory());
    let policy = UploadPolicy {
        override_failed_check: true,
        ..UploadPolicy::default()
    };
    registry
        .register(host, "hostile", 1, hostile, &policy)
        .expect("loads (it fails only when called)");
    registry.attach("ks", "hostile", 1).unwrap();
    let hook = WasmMergeHook::new(host.clone(), registry);
    let hostile_resolver = host.load(hostile).unwrap();
    let failures_before = hostile_resolver.stats().failures(class);

    let mut set = cart_set();
    let before = set.clone();
    let failure = merge_into(&hook, "ks", b"cart:1", &mut set).unwrap_err();
    assert_eq!(failure.class, class, "{failure}");
    assert_eq!(failure.resolver, Some(hostile_resolver.hash()));
    assert_eq!(set, before, "siblings must be kept");
    assert_eq!(
        hostile_resolver.stats().failures(class),
        failures_before + 1
    );

    // The same failure, typed, from the host directly.
    let err = host
        .merge_set(&hostile_resolver, b"cart:1", &set)
        .unwrap_err();
    assert_eq!(err.class(), class, "{err}");

    background.join().expect("good merges kept working");
    assert_good(host, &good);
    err
}

fn assert_good(host: &Host, good: &Resolver) {
    let merged = host
        .merge_set(good, b"cart:1", &cart_set())
        .expect("good merge")
        .expect("non-empty set");
    assert_eq!(merged.value_bytes(), Some(CART_MERGED));
}

/// Load must fail with `class`; the host keeps serving.
fn rejected(host: &Arc<Host>, bytes: &[u8], class: FailureClass) -> ResolverError {
    let err = host.load(bytes).unwrap_err();
    assert_eq!(err.class(), class, "{err}");
    let registry = Registry::in_memory();
    let policy = UploadPolicy {
        override_failed_check: true,
        ..UploadPolicy::default()
    };
    assert!(registry.register(host, "bad", 1, bytes, &policy).is_err());
    assert!(registry.list().unwrap().is_empty());
    let hash = isthmus_resolvers::host::module_hash(bytes);
    assert!(host.stats(&hash).failures(class) >= 1);
    assert_good(host, &cart(host));
    err
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let host = small_host();
    let m = module("(loop $l (br $l)) i64.const 0", "");
    let err = contained(&host, &m, FailureClass::FuelExhausted);
    assert_eq!(err, ResolverError::FuelExhausted { fuel: 20_000_000 });
}

#[test]
fn wall_clock_deadline_is_the_backstop() {
    let host = Arc::new(
        Host::new(ResolverLimits {
            fuel_per_merge: 1 << 50,
            merge_deadline: Duration::from_millis(200),
            ..ResolverLimits::default()
        })
        .unwrap(),
    );
    let m = module("(loop $l (br $l)) i64.const 0", "");
    let started = Instant::now();
    let err = contained(&host, &m, FailureClass::Deadline);
    assert_eq!(err, ResolverError::Deadline { deadline_ms: 200 });
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn unbounded_memory_growth_hits_the_cap() {
    let host = small_host();
    let m = module(
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable",
        "",
    );
    let err = contained(&host, &m, FailureClass::MemoryLimit);
    assert_eq!(
        err,
        ResolverError::MemoryLimit {
            memory_bytes_max: 8 * 1024 * 1024
        }
    );
}

#[test]
fn huge_initial_memory_is_rejected_at_load() {
    let host = small_host();
    let m = wat::parse_str(
        r#"(module
             (memory (export "memory") 2000)
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 0)
             (func (export "isthmus_merge") (param i32 i32) (result i64) i64.const 0))"#,
    )
    .unwrap();
    // The pooling allocator refuses it while compiling: it cannot fit a slot.
    let err = rejected(&host, &m, FailureClass::InvalidModule);
    assert!(err.to_string().contains("minimum byte size"), "{err}");
}

#[test]
fn deep_recursion_traps_on_the_stack_limit() {
    let host = small_host();
    let m = module(
        "i32.const 0 call $r drop i64.const 0",
        "(func $r (param i32) (result i32) local.get 0 i32.const 1 i32.add call $r)",
    );
    let err = contained(&host, &m, FailureClass::Trap);
    assert!(err.to_string().contains("call stack exhausted"), "{err}");
}

#[test]
fn huge_output_is_bad_output() {
    let host = small_host();
    let m = module("i64.const 0x7fffffff", "");
    let err = contained(&host, &m, FailureClass::BadOutput);
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
}

#[test]
fn out_of_bounds_output_pointer_is_bad_output() {
    let host = small_host();
    let m = module("i64.const 0xffff000000000010", "");
    let err = contained(&host, &m, FailureClass::BadOutput);
    assert!(err.to_string().contains("outside guest memory"), "{err}");
}

#[test]
fn malformed_postcard_is_bad_output() {
    let host = small_host();
    // Variant 7 does not exist.
    let m = module("i64.const 1", r#"(data (i32.const 0) "\07")"#);
    contained(&host, &m, FailureClass::BadOutput);
    // A valid `Delete` followed by a trailing byte.
    let m = module("i64.const 2", r#"(data (i32.const 0) "\01\00")"#);
    contained(&host, &m, FailureClass::BadOutput);
    // A value whose claimed length runs past the output.
    let m = module("i64.const 3", r#"(data (i32.const 0) "\00\ff\01")"#);
    contained(&host, &m, FailureClass::BadOutput);
}

#[test]
fn guest_error_is_counted_and_keeps_siblings() {
    let host = small_host();
    let m = module("i64.const 5", r#"(data (i32.const 0) "\02\07\02no")"#);
    let err = contained(&host, &m, FailureClass::GuestError);
    assert_eq!(
        err,
        ResolverError::Guest {
            code: 7,
            message: "no".into()
        }
    );
}

#[test]
fn out_of_bounds_alloc_is_bad_output() {
    let host = small_host();
    let m = wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 0x7ffffff0)
             (func (export "isthmus_merge") (param i32 i32) (result i64) i64.const 0))"#,
    )
    .unwrap();
    contained(&host, &m, FailureClass::BadOutput);
}

#[test]
fn trap_in_merge_is_a_trap() {
    let host = small_host();
    let m = module("unreachable", "");
    let err = contained(&host, &m, FailureClass::Trap);
    assert!(err.to_string().contains("unreachable"), "{err}");
}

#[test]
fn wasi_import_is_rejected_at_load() {
    let host = small_host();
    let m = wat::parse_str(
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 0)
             (func (export "isthmus_merge") (param i32 i32) (result i64) i64.const 0))"#,
    )
    .unwrap();
    let err = rejected(&host, &m, FailureClass::InvalidModule);
    assert_eq!(
        err,
        ResolverError::ImportNotAllowed {
            module: "wasi_snapshot_preview1".into(),
            name: "fd_write".into()
        }
    );
}

#[test]
fn missing_or_mistyped_exports_are_rejected_at_load() {
    let host = small_host();
    let m = wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap();
    let err = rejected(&host, &m, FailureClass::AbiMismatch);
    assert!(
        matches!(err, ResolverError::MissingExport { ref name, .. } if name == "isthmus_abi_version")
    );
    let m = wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 0)
             (func (export "isthmus_merge") (param i32) (result i64) i64.const 0))"#,
    )
    .unwrap();
    let err = rejected(&host, &m, FailureClass::AbiMismatch);
    assert!(
        matches!(err, ResolverError::MissingExport { ref name, .. } if name == "isthmus_merge")
    );
    let m = wat::parse_str(
        r#"(module
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 0)
             (func (export "isthmus_merge") (param i32 i32) (result i64) i64.const 0))"#,
    )
    .unwrap();
    let err = rejected(&host, &m, FailureClass::AbiMismatch);
    assert!(matches!(err, ResolverError::MissingExport { ref name, .. } if name == "memory"));
}

#[test]
fn another_abi_version_is_rejected_at_load() {
    let host = small_host();
    let m = wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (func (export "isthmus_abi_version") (result i32) i32.const 2)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 0)
             (func (export "isthmus_merge") (param i32 i32) (result i64) i64.const 0))"#,
    )
    .unwrap();
    let err = rejected(&host, &m, FailureClass::AbiMismatch);
    assert_eq!(
        err,
        ResolverError::AbiMismatch {
            expected: 1,
            found: 2
        }
    );
}

#[test]
fn not_wasm_is_rejected_at_load() {
    let host = small_host();
    rejected(
        &host,
        b"this is not wasm at all",
        FailureClass::InvalidModule,
    );
    rejected(
        &host,
        b"\0asm\x01\0\0\0\x0a\xff\xff",
        FailureClass::InvalidModule,
    );
    rejected(&host, b"", FailureClass::InvalidModule);
    // WAT text is not accepted either: only binaries are uploaded.
    rejected(&host, b"(module)", FailureClass::InvalidModule);
}

#[test]
fn very_large_module_is_rejected_before_compiling() {
    let host = small_host();
    let mut m = module("i64.const 0", "");
    // Pad with a 3 MiB custom section: valid wasm, over the 2 MiB cap.
    let payload = vec![0u8; 3 * 1024 * 1024];
    let name = b"pad";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    m.push(0);
    let mut len = section.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        m.push(if len == 0 { byte } else { byte | 0x80 });
        if len == 0 {
            break;
        }
    }
    m.extend_from_slice(&section);
    let err = rejected(&host, &m, FailureClass::InvalidModule);
    assert!(
        matches!(err, ResolverError::ModuleTooLarge { max_bytes, .. } if max_bytes == 2 * 1024 * 1024)
    );
}

#[test]
fn many_hostile_calls_in_parallel_do_not_disturb_good_merges() {
    let host = small_host();
    let good = cart(&host);
    let looping = host
        .load(&module("(loop $l (br $l)) i64.const 0", ""))
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (host, good, looping) = (host.clone(), good.clone(), looping.clone());
            std::thread::spawn(move || {
                for _ in 0..3 {
                    if i % 2 == 0 {
                        let err = host.merge_set(&looping, b"k", &cart_set()).unwrap_err();
                        assert_eq!(err.class(), FailureClass::FuelExhausted);
                    } else {
                        assert_good(&host, &good);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(looping.stats().failures(FailureClass::FuelExhausted), 6);
    assert!(good.stats().merges_ok() >= 6);
}

#[test]
fn a_rust_guest_out_of_memory_is_a_memory_limit_not_a_crash() {
    // 2 MiB of memory: room for the module's stack and data, not for
    // copying and merging 1.4 MB of carts.
    let host = Arc::new(
        Host::new(ResolverLimits {
            memory_bytes_max: 2 * 1024 * 1024,
            ..ResolverLimits::default()
        })
        .unwrap(),
    );
    let good = cart(&host);
    let big: Vec<u8> = isthmus_example_cart_union::encode(
        &(0..40_000).map(|i| (format!("item-{i:06}"), 1)).collect(),
    );
    let set = isthmus_core::model::VersionSet::from_versions([
        dotted(1, 1).at(1).value(&big),
        dotted(2, 1).at(2).dc("dc2").value(&big),
    ]);
    let err = host.merge_set(&good, b"k", &set).unwrap_err();
    assert_eq!(err.class(), FailureClass::MemoryLimit, "{err}");
    assert_good(&host, &good);
}

/// A module that compiles but fails its load (ABI version 2), with `tag`
/// in an extra export so each tag has its own hash.
fn failing_to_load(tag: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             (memory (export "memory") 1)
             (func (export "isthmus_abi_version") (result i32) i32.const 2)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 0)
             (func (export "isthmus_merge") (param i32 i32) (result i64) i64.const 0)
             (func (export "tag") (result i32) i32.const {tag}))"#
    ))
    .unwrap()
}

#[test]
fn a_module_that_failed_to_load_is_not_compiled_again_on_every_merge() {
    use isthmus_resolvers::registry::{LawCheck, MemoryRecords, RegistryRecords, ResolverRecord};
    use isthmus_resolvers::registry::{module_key, resolver_key};
    let host = small_host();
    let bad = failing_to_load(0);
    // Stored as if another node had registered it (this node's host
    // cannot load it).
    let records = Arc::new(MemoryRecords::default());
    let hash = isthmus_resolvers::host::module_hash(&bad);
    records.put(&module_key(&hash), &bad).unwrap();
    let record = ResolverRecord {
        name: "bad".into(),
        version: 1,
        hash,
        module_bytes: bad.len() as u64,
        law_check: LawCheck::Passed { seed: 0 },
    };
    records
        .put(
            &resolver_key("bad", 1),
            &postcard::to_allocvec(&record).unwrap(),
        )
        .unwrap();
    let registry = Arc::new(Registry::new(records));
    registry.attach("ks", "bad", 1).unwrap();
    let hook = WasmMergeHook::new(host.clone(), registry);
    for _ in 0..5 {
        let mut set = cart_set();
        let failure = merge_into(&hook, "ks", b"cart:1", &mut set).unwrap_err();
        assert_eq!(failure.class, FailureClass::AbiMismatch, "{failure}");
        assert_eq!(set, cart_set(), "siblings kept");
    }
    assert_eq!(host.compiles(), 1, "compiled once, then remembered");
    assert_eq!(host.stats(&hash).failures(FailureClass::AbiMismatch), 5);
    // Forgetting it (evict) lets the next load try again.
    host.evict(&hash);
    assert!(host.load(&bad).is_err());
    assert_eq!(host.compiles(), 2);
}

#[test]
fn failed_loads_are_remembered_within_a_bound_and_retried_later() {
    let host = Host::new(ResolverLimits {
        failed_modules_max: 2,
        failed_module_retry: Duration::from_millis(300),
        ..ResolverLimits::default()
    })
    .unwrap();
    for tag in 0..3 {
        assert!(host.load(&failing_to_load(tag)).is_err());
    }
    assert_eq!(host.failed_modules(), 2, "the oldest is forgotten");
    assert_eq!(host.compiles(), 3);
    // Within the retry interval: no compile; after it: compiled again.
    assert!(host.load(&failing_to_load(2)).is_err());
    assert_eq!(host.compiles(), 3);
    std::thread::sleep(Duration::from_millis(400));
    assert!(host.load(&failing_to_load(2)).is_err());
    assert_eq!(host.compiles(), 4);
}

/// Nothing survives between merges: a merge that bumps a (private)
/// global, writes memory in the first page and deep in the memory the host
/// keeps resident, and grows the memory, leaves the next merge the
/// module's initial state. Each merge returns what it found: the global,
/// the two bytes and the memory's size in pages.
#[test]
fn memory_globals_and_growth_are_reset_between_merges() {
    let host = small_host();
    let m = wat::parse_str(
        r#"(module
             (memory (export "memory") 8)
             (global $g (mut i32) (i32.const 0))
             (data (i32.const 0) "\00\04")
             (data (i32.const 16) "\07")
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 1024)
             (func (export "isthmus_merge") (param i32 i32) (result i64)
               (i32.store8 (i32.const 2) (global.get $g))
               (i32.store8 (i32.const 3) (i32.load8_u (i32.const 16)))
               (i32.store8 (i32.const 4) (i32.load8_u (i32.const 300000)))
               (i32.store8 (i32.const 5) (memory.size))
               (global.set $g (i32.add (global.get $g) (i32.const 1)))
               (i32.store8 (i32.const 16) (i32.const 55))
               (i32.store8 (i32.const 300000) (i32.const 99))
               (drop (memory.grow (i32.const 1)))
               (i32.store8 (i32.const 524300) (i32.const 1))
               i64.const 6))"#,
    )
    .unwrap();
    let r = host.load(&m).unwrap();
    let two = [
        isthmus_sdk_wasm::Sibling::of_value(b"a", 1),
        isthmus_sdk_wasm::Sibling::of_value(b"b", 2),
    ];
    for _ in 0..50 {
        assert_eq!(
            host.merge_siblings(&r, b"k", &two).unwrap(),
            isthmus_sdk_wasm::Merged::Value(vec![0, 7, 0, 8]),
            "state leaked from one merge into the next"
        );
    }
}
