//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use isthmus_core::model::{Actor, Clock, Dot, Version, VersionSet};
use isthmus_resolvers::{Host, Resolver, ResolverLimits};

/// Where `cargo build --release --target wasm32-unknown-unknown` puts
/// modules: `$CARGO_TARGET_DIR` (relative to the workspace) or
/// `<workspace>/target`.
pub fn wasm_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let module = isthmus_resolvers::built_module(&workspace, "any");
    module.parent().map(PathBuf::from).unwrap_or(module)
}

/// The bytes of an example resolver module; panics with how to build it.
pub fn example_wasm(package: &str) -> Vec<u8> {
    let path = wasm_dir().join(format!("{}.wasm", package.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); build the example resolvers first:\n  \
             cargo build --release --target wasm32-unknown-unknown -p isthmus-example-cart-union \
             -p isthmus-example-lww -p isthmus-example-pn-counter -p isthmus-example-wrong-first-wins",
            path.display()
        )
    })
}

/// A host with small limits, so hostile modules fail fast.
pub fn small_host() -> Arc<Host> {
    Arc::new(
        Host::new(ResolverLimits {
            fuel_per_merge: 20_000_000,
            memory_bytes_max: 8 * 1024 * 1024,
            module_bytes_max: 2 * 1024 * 1024,
            ..ResolverLimits::default()
        })
        .expect("host"),
    )
}

/// The cart-union resolver, loaded on `host`.
pub fn cart(host: &Host) -> Arc<Resolver> {
    host.load(&example_wasm("isthmus-example-cart-union"))
        .expect("cart-union loads")
}

/// A version with its own actor's dot (so versions are concurrent).
pub fn version(actor: u64, value: Option<&[u8]>, ts: u64, dc: &str) -> Version {
    let clock = Clock::from_parts(
        [],
        [Dot {
            actor: Actor(actor),
            counter: 1,
        }],
    );
    match value {
        Some(v) => Version::value(clock, v.to_vec(), ts, dc.into()),
        None => Version::tombstone(clock, ts, dc.into()),
    }
}

/// Three concurrent carts (cart-union's binary format, see its crate docs):
/// `{apple: 2}`, `{apple: 1, pear: 3}`, `{fig: 1}`.
pub fn cart_set() -> VersionSet {
    VersionSet::from_versions([
        version(1, Some(b"\x05apple\x02"), 10, "dc1"),
        version(2, Some(b"\x05apple\x01\x04pear\x03"), 11, "dc2"),
        version(3, Some(b"\x03fig\x01"), 12, "dc1"),
    ])
}

/// What merging [`cart_set`] must give: `{apple: 2, fig: 1, pear: 3}`.
pub const CART_MERGED: &[u8] = b"\x05apple\x02\x03fig\x01\x04pear\x03";
