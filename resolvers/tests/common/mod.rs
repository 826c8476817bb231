//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use isthmus_core::model::VersionSet;
use isthmus_resolvers::{Host, Resolver, ResolverLimits};
use isthmus_testkit::example_module;
use isthmus_testkit::version::dotted;

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
    host.load(&example_module("isthmus-example-cart-union"))
        .expect("cart-union loads")
}

/// Three concurrent carts (cart-union's binary format, see its crate docs):
/// `{apple: 2}`, `{apple: 1, pear: 3}`, `{fig: 1}`.
pub fn cart_set() -> VersionSet {
    VersionSet::from_versions([
        dotted(1, 1).at(10).value(b"\x05apple\x02"),
        dotted(2, 1)
            .at(11)
            .dc("dc2")
            .value(b"\x05apple\x01\x04pear\x03"),
        dotted(3, 1).at(12).value(b"\x03fig\x01"),
    ])
}

/// What merging [`cart_set`] must give: `{apple: 2, fig: 1, pear: 3}`.
pub const CART_MERGED: &[u8] = b"\x05apple\x02\x03fig\x01\x04pear\x03";
