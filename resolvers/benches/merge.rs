//! `cargo bench -p isthmus-resolvers`: cart-union merges of 2, 10 and 100
//! siblings of about 1 KB each, in wasm (through the real host: encode,
//! an instance in its initial state, run, decode) and natively (the same
//! function from the example crate's rlib), with p50/p99 from
//! hdrhistogram, the wasm/native ratio, and the cost of a fresh instance
//! (what a merge pays when no kept instance can serve it).
//!
//! Needs the example module: `cargo build --release --target
//! wasm32-unknown-unknown -p isthmus-example-cart-union`.

use std::path::PathBuf;
use std::time::Instant;

use hdrhistogram::Histogram;
use isthmus_core::model::VersionSet;
use isthmus_resolvers::host::to_sibling;
use isthmus_resolvers::{Host, ResolverLimits};
use isthmus_testkit::version::dotted;

fn wasm_path() -> PathBuf {
    isthmus_testkit::built_module(
        &isthmus_testkit::module::workspace(),
        "isthmus-example-cart-union",
    )
}

/// A cart of about 1 KB: 92 items of 11 bytes each in cart-union's binary
/// format, overlapping between siblings (72 items made 1 KB of JSON).
fn cart(i: u64) -> Vec<u8> {
    let mut cart = isthmus_example_cart_union::Cart::new();
    for j in 0..92 {
        cart.insert(
            format!("sku-{:05}", (i * 31 + j * 7) % 400),
            (i + j) % 9 + 1,
        );
    }
    isthmus_example_cart_union::encode(&cart)
}

fn set(n: u64) -> VersionSet {
    VersionSet::from_versions(
        (0..n).map(|i| dotted(i + 1, 1).at(1_700_000_000_000 + i).value(cart(i))),
    )
}

fn measure(iters: usize, mut f: impl FnMut()) -> Histogram<u64> {
    for _ in 0..iters / 10 + 1 {
        f();
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
    for _ in 0..iters {
        let t = Instant::now();
        f();
        h.record(t.elapsed().as_nanos().max(1) as u64)
            .expect("in range");
    }
    h
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() {
    let path = wasm_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); build it first: cargo build --release --target \
             wasm32-unknown-unknown -p isthmus-example-cart-union",
            path.display()
        )
    });
    let host = Host::new(ResolverLimits::default()).expect("host");
    let t = Instant::now();
    let resolver = host.load(&bytes).expect("cart-union loads");
    println!(
        "cart-union.wasm: {} bytes, validated and compiled in {:.1} ms",
        bytes.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );

    let inst = measure(5000, || {
        host.instantiate_probe(&resolver).expect("instantiate")
    });
    println!(
        "fresh instance (store + pooled instance, when none is kept): p50 {:.2} µs  p99 {:.2} µs",
        us(&inst, 0.5),
        us(&inst, 0.99)
    );
    // The host's floor: a hand-written module that allocates nothing and
    // answers `Delete` (one byte at address 0).
    let floor_module = wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (data (i32.const 0) "\01")
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 1024)
             (func (export "isthmus_merge") (param i32 i32) (result i64) i64.const 1))"#,
    )
    .expect("floor module");
    let floor = host.load(&floor_module).expect("floor module loads");
    let floor_h = measure(5000, || {
        std::hint::black_box(
            host.merge_siblings(&floor, b"cart", &[])
                .expect("floor merge"),
        );
    });
    println!(
        "host floor (minimal WAT module, 0 siblings, full call path): p50 {:.2} µs  p99 {:.2} µs",
        us(&floor_h, 0.5),
        us(&floor_h, 0.99)
    );
    let fixed = measure(3000, || {
        std::hint::black_box(
            host.merge_siblings(&resolver, b"cart", &[])
                .expect("empty merge"),
        );
    });
    println!(
        "fixed cost of a wasm merge (0 siblings: kept instance, alloc, call, read, reset): p50 {:.2} µs  p99 {:.2} µs",
        us(&fixed, 0.5),
        us(&fixed, 0.99)
    );
    println!(
        "{:>9} {:>9} | {:>10} {:>10} | {:>10} {:>10} | {:>9} {:>9}",
        "siblings",
        "avg bytes",
        "wasm p50",
        "wasm p99",
        "native p50",
        "native p99",
        "p50 ratio",
        "p99 ratio"
    );
    for n in [2u64, 10, 100] {
        let set = set(n);
        let avg = set
            .versions()
            .iter()
            .map(|v| v.value_bytes().map_or(0, <[u8]>::len))
            .sum::<usize>()
            / n as usize;
        let siblings: Vec<_> = set.versions().iter().map(to_sibling).collect();
        let iters = if n == 100 { 300 } else { 3000 };
        let expected = isthmus_example_cart_union::merge(b"cart", &siblings).expect("native");
        assert_eq!(
            host.merge_siblings(&resolver, b"cart", &siblings)
                .expect("wasm"),
            expected
        );
        let reused_before = resolver.reused_merges();
        let wasm = measure(iters, || {
            let m = host
                .merge_siblings(&resolver, b"cart", &siblings)
                .expect("wasm");
            std::hint::black_box(m);
        });
        let reused = resolver.reused_merges() - reused_before;
        let input = isthmus_sdk_wasm::abi::encode_input(b"cart", &siblings);
        let abi = measure(iters, || {
            let out = isthmus_sdk_wasm::glue::run_merge(
                std::hint::black_box(&input),
                isthmus_example_cart_union::merge,
            );
            std::hint::black_box(isthmus_sdk_wasm::abi::decode_output(&out).expect("decodes"));
        });
        let native = measure(iters, || {
            let m = isthmus_example_cart_union::merge(b"cart", std::hint::black_box(&siblings))
                .expect("native");
            std::hint::black_box(m);
        });
        println!(
            "{:>9} {:>9} | {:>7.1} µs {:>7.1} µs | {:>7.1} µs {:>7.1} µs | {:>9.2} {:>9.2}",
            n,
            avg,
            us(&wasm, 0.5),
            us(&wasm, 0.99),
            us(&native, 0.5),
            us(&native, 0.99),
            us(&wasm, 0.5) / us(&native, 0.5),
            us(&wasm, 0.99) / us(&native, 0.99),
        );
        println!(
            "{:>9} {:>9} | native through the ABI glue (decode input, merge, encode output, decode): p50 {:.1} µs  p99 {:.1} µs",
            "",
            "",
            us(&abi, 0.5),
            us(&abi, 0.99)
        );
        println!(
            "{:>9} {:>9} | merges in a kept instance: {reused} of {} (the others grew the memory)",
            "",
            "",
            iters + iters / 10 + 1
        );
    }
}
