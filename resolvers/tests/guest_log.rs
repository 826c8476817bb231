//! Guest logging (`isthmus::log`): the one import a resolver may have.
//! Lines arrive attributed to the resolver and keyspace, the rate limit
//! drops the excess and counts it, long lines are cut, a bad pointer traps
//! whatever the rate limit says, and any other import is still refused.

use std::sync::{Arc, Mutex};

use isthmus_core::merge::FailureClass;
use isthmus_resolvers::host::MergeContext;
use isthmus_resolvers::{Host, ResolverError, ResolverLimits};
use isthmus_sdk_wasm::{Merged, Sibling};

/// A module whose merge logs `times` lines: the text at address 64
/// (`"hello from merge"`, 16 bytes), `len` bytes of it, then deletes.
fn logging_module(times: u32, ptr: u32, len: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             (import "isthmus" "log" (func $log (param i32 i32)))
             (memory (export "memory") 1)
             (data (i32.const 0) "\01")
             (data (i32.const 64) "hello from merge")
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 1024)
             (func (export "isthmus_merge") (param i32 i32) (result i64)
               (local $i i32)
               (block $done
                 (loop $again
                   (br_if $done (i32.ge_u (local.get $i) (i32.const {times})))
                   (call $log (i32.const {ptr}) (i32.const {len}))
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br $again)))
               i64.const 1))"#
    ))
    .expect("wat")
}

fn host(lines_per_second: u32, line_bytes_max: usize) -> Host {
    Host::new(ResolverLimits {
        log_lines_per_second: lines_per_second,
        log_line_bytes_max: line_bytes_max,
        ..ResolverLimits::default()
    })
    .expect("host")
}

fn two() -> [Sibling<'static>; 2] {
    [Sibling::of_value(b"a", 1), Sibling::of_value(b"b", 2)]
}

/// Everything tracing writes while `f` runs, as text.
fn traced(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn a_logged_line_arrives_attributed_to_the_resolver_and_keyspace() {
    let host = host(10, 512);
    let r = host
        .load(&logging_module(1, 64, 16))
        .expect("a module importing isthmus::log loads");
    assert!(r.logs());
    let context = MergeContext {
        keyspace: Some("carts"),
        resolver: Some(("cart-union", 3)),
    };
    let mut run = None;
    let text = traced(|| run = Some(host.merge_siblings_in(&r, b"k", &two(), &context)));
    let run = run.unwrap();
    assert_eq!(run.result.unwrap(), Merged::Delete);
    assert_eq!(run.log.lines, ["hello from merge"]);
    assert_eq!(run.log.dropped, 0);
    assert_eq!((r.stats().log_lines(), r.stats().log_dropped()), (1, 0));
    assert_eq!(r.stats().log_recent(), ["hello from merge"]);
    for field in [
        "resolver=cart-union@3",
        "keyspace=carts",
        "line=hello from merge",
        "resolver log",
    ] {
        assert!(text.contains(field), "{field:?} missing from {text:?}");
    }
}

#[test]
fn the_rate_limit_drops_the_excess_and_counts_it() {
    let host = host(3, 512);
    let r = host.load(&logging_module(5, 64, 16)).unwrap();
    let first = host.merge_siblings_in(&r, b"k", &two(), &MergeContext::default());
    assert_eq!(first.result.unwrap(), Merged::Delete);
    assert_eq!(first.log.lines.len(), 3);
    assert_eq!(first.log.dropped, 2);
    // Within the same second: the limit is per resolver, across merges.
    let second = host.merge_siblings_in(&r, b"k", &two(), &MergeContext::default());
    assert_eq!(
        second.result.unwrap(),
        Merged::Delete,
        "dropping lines changes no merge"
    );
    assert_eq!((second.log.lines.len(), second.log.dropped), (0, 5));
    assert_eq!((r.stats().log_lines(), r.stats().log_dropped()), (3, 7));
}

#[test]
fn a_long_line_is_cut_and_control_characters_replaced() {
    let host = host(10, 5);
    let r = host.load(&logging_module(1, 64, 16)).unwrap();
    let run = host.merge_siblings_in(&r, b"k", &two(), &MergeContext::default());
    assert_eq!(run.log.lines, ["hello [cut]"]);

    // Bytes 0..4: "\x01" then zeros: control characters become spaces.
    let r = host.load(&logging_module(1, 0, 3)).unwrap();
    let run = host.merge_siblings_in(&r, b"k", &two(), &MergeContext::default());
    assert_eq!(run.log.lines, ["   "]);
}

#[test]
fn a_line_outside_memory_traps_even_past_the_rate_limit() {
    let host = host(0, 512);
    let r = host.load(&logging_module(1, 65530, 100)).unwrap();
    let err = host.merge_siblings(&r, b"k", &two()).unwrap_err();
    assert_eq!(err.class(), FailureClass::Trap, "{err}");
    assert!(err.to_string().contains("isthmus::log"), "{err}");
}

#[test]
fn other_imports_and_a_mistyped_log_are_still_refused() {
    let host = host(10, 512);
    for (module, name, ty) in [
        ("isthmus", "log", "(param i32) (result i32)"),
        ("isthmus", "print", "(param i32 i32)"),
        ("env", "log", "(param i32 i32)"),
    ] {
        let m = wat::parse_str(format!(
            r#"(module
                 (import "{module}" "{name}" (func {ty}))
                 (memory (export "memory") 1)
                 (func (export "isthmus_abi_version") (result i32) i32.const 1)
                 (func (export "isthmus_alloc") (param i32) (result i32) i32.const 0)
                 (func (export "isthmus_merge") (param i32 i32) (result i64) i64.const 0))"#
        ))
        .unwrap();
        let err = host.load(&m).unwrap_err();
        assert_eq!(
            err,
            ResolverError::ImportNotAllowed {
                module: module.into(),
                name: name.into()
            }
        );
    }
}
