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
