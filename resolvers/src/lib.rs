//! # isthmus-resolvers
//!
//! The WebAssembly host that runs Isthmus merge functions ("resolvers"):
//!
//! - [`Host`]: one wasmtime engine per node (Cranelift, pooling allocator,
//!   fuel, epoch deadline, NaN canonicalisation, no WASI, no imports);
//!   modules validated at load and cached by blake3 content hash; a fresh
//!   store per merge with the [`ResolverLimits`]; every failure a typed
//!   [`ResolverError`] counted per resolver in [`ResolverStats`].
//! - [`WasmMergeHook`]: core's [`MergeHook`](isthmus_core::merge::MergeHook)
//!   over a host and a [`Registry`] of resolvers by name and version and
//!   keyspace bindings, backed by a small [`RegistryStore`].
//! - [`check`]: the law checker behind `isthmus resolver check`.
//!
//! The guest side (ABI types, the `export_merge!` macro, the ABI's
//! byte-level description) is `isthmus-sdk-wasm`.
//!
//! ## Cost (measured by `cargo bench -p isthmus-resolvers`)
//!
//! On a 2-core VM shared with a compiler: instantiating a module from the
//! pool costs about 3 µs; the whole call path of a minimal module about
//! 6 µs; an empty merge of a Rust/SDK module about 12 µs. cart-union with
//! 10 siblings of 1 KB of JSON takes about 370 µs p50 in wasm against
//! 90 µs natively (ratio about 4). Fuel metering and epoch checks account
//! for roughly 40% of the wasm time (with both off the ratio was about
//! 1.8); they stay on, because fuel is the deterministic budget and the
//! epoch the wall-clock backstop.
//!
//! What it is not: the storage engine or the node. It never writes a
//! version itself; the node absorbs the merged version it returns, and on
//! any failure keeps the siblings as they were.
//!
//! ```
//! use isthmus_resolvers::{Host, ResolverError, ResolverLimits};
//! use isthmus_core::merge::FailureClass;
//!
//! let host = Host::new(ResolverLimits::default()).unwrap();
//! // Not wasm at all: rejected at load with a typed error.
//! let err = host.load(b"hello").unwrap_err();
//! assert!(matches!(err, ResolverError::InvalidModule { .. }));
//! assert_eq!(err.class(), FailureClass::InvalidModule);
//! ```
#![warn(missing_docs)]

pub mod check;
mod error;
mod hook;
pub mod host;
mod limit;
pub mod registry;

pub use error::ResolverError;
pub use hook::WasmMergeHook;
pub use host::{Host, Resolver, ResolverStats};
pub use limit::ResolverLimits;
pub use registry::{Registry, RegistryStore};
