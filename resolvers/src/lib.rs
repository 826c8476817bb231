//! # isthmus-resolvers
//!
//! The WebAssembly host that runs Isthmus merge functions ("resolvers"):
//!
//! - [`Host`]: one wasmtime engine per node (Cranelift, pooling allocator,
//!   fuel, epoch deadline, NaN canonicalisation, no WASI, no imports but
//!   the rate-limited `isthmus::log`);
//!   modules validated at load and cached by blake3 content hash; a fresh
//!   store per merge with the [`ResolverLimits`]; every failure a typed
//!   [`ResolverError`] counted per resolver in [`ResolverStats`].
//! - [`WasmMergeHook`]: core's [`MergeHook`](isthmus_core::merge::MergeHook)
//!   over a host and a [`Registry`] of resolvers by name and version and
//!   keyspace bindings, backed by a small [`RegistryRecords`]: in memory, or
//!   a node's replicated `_registry` system keyspace ([`RegistryKeyspace`]).
//! - [`RegistryService`], core's
//!   [`RegistryHook`](isthmus_core::system_keyspace::RegistryHook): the node's
//!   registry as clients reach it (upload with the law check, attach,
//!   detach, roll back, canary, promote, pause, resume, list).
//! - [`canary`]: the window a node counts its canaries' merges in, and
//!   when one rolls itself back.
//! - [`check`]: the law checker behind `isthmus resolver check`.
//!
//! The guest side (ABI types, the `export_merge!` macro, the ABI's
//! byte-level description) is `isthmus-sdk-wasm`.
//!
//! ## Cost (measured by `cargo bench -p isthmus-resolvers`)
//!
//! On a 2-core VM shared with other benchmarks (figures swing by up to 2x
//! between runs): instantiating a module from the pool costs about 1.7 µs;
//! the whole call path of a minimal module about 2.1 µs; an empty merge
//! of a Rust/SDK module (linked with a 16 KiB stack, see
//! [`ResolverLimits::memory_keep_resident_bytes`]: only dirtied pages are
//! reset, by `PAGEMAP_SCAN`) about 2.7 µs.
//! cart-union (binary carts, k-way merge over 16-byte name keys) with 10
//! siblings of 1 KB takes about 24 µs p50 in wasm against about 7.8 µs
//! natively (ratio about 3.1). A merge's input is encoded straight into
//! the guest's buffer and its output decoded where it lies in guest
//! memory. A merge that grows guest memory pays far more than one that
//! stays within the module's initial memory, so guests should not
//! over-allocate. Fuel metering and epoch checks cost about 12% of the
//! wasm time (24.6 against 21.7 µs with both off, as a measurement only);
//! they stay on, because fuel is the deterministic budget and the epoch
//! the wall-clock backstop. A guest's hot loops pay them per iteration,
//! which is why cart-union's scan of up to 16 heads is straight-line code.
//! The rest is Cranelift's code against LLVM's: the merge loop itself runs
//! about 2x slower in wasm.
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

pub mod canary;
pub mod check;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod hook;
pub mod host;
mod limit;
pub mod registry;
pub mod replicated;
pub mod reuse;
pub mod service;

pub use error::ResolverError;
pub use hook::WasmMergeHook;
pub use host::{Host, Resolver, ResolverStats};
pub use limit::ResolverLimits;
pub use registry::{Registry, RegistryLimits, RegistryRecords};
pub use replicated::RegistryKeyspace;
pub use service::RegistryService;
