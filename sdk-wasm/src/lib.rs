//! # isthmus-sdk-wasm
//!
//! The guest side of Isthmus merge functions ("resolvers"): the ABI types the
//! host and the guest share, and one macro, [`export_merge!`], that turns a
//! plain Rust function
//!
//! ```text
//! fn merge(key: &[u8], siblings: &[Sibling]) -> Result<Merged, MergeError>
//! ```
//!
//! into a WebAssembly module the Isthmus host can run. The same function runs
//! natively, so a resolver is unit-tested with `cargo test` like any other
//! Rust code.
//!
//! What it is not: a host. Loading, limiting and calling modules is
//! `isthmus-resolvers`; this crate is `no_std` + `alloc`, has no wasmtime in
//! it, and its modules need **no imports** (no WASI); the one import a
//! module may have is the host's log function, which [`log`] calls.
//!
//! ## Writing a resolver
//!
//! ```
//! #![cfg_attr(target_arch = "wasm32", no_std)]
//! extern crate alloc;
//! use alloc::vec::Vec;
//! use isthmus_sdk_wasm::{export_merge, MergeError, Merged, Sibling};
//!
//! /// Keeps the longest value (ties: the greater bytes); a join.
//! pub fn merge(_key: &[u8], siblings: &[Sibling]) -> Result<Merged, MergeError> {
//!     let best = siblings
//!         .iter()
//!         .filter_map(Sibling::value)
//!         .max_by(|a, b| a.len().cmp(&b.len()).then(a.cmp(b)));
//!     Ok(match best {
//!         Some(v) => Merged::Value(v.to_vec()),
//!         None => Merged::Delete,
//!     })
//! }
//! export_merge!(merge);
//!
//! // Natively, the function is just a function:
//! let merged = merge(b"k", &[Sibling::of_value(b"ab", 1), Sibling::of_value(b"abc", 2)]).unwrap();
//! assert_eq!(merged, Merged::Value(b"abc".to_vec()));
//! ```
//!
//! The crate is built with `crate-type = ["cdylib", "rlib"]` and
//! `cargo build --release --target wasm32-unknown-unknown`. With the default
//! `guest-runtime` feature this SDK supplies, on wasm32 only, a bump
//! allocator and a panic handler (a panic becomes a wasm trap), so the crate
//! can be `#![cfg_attr(target_arch = "wasm32", no_std)]` as above. Turn the
//! feature off if the resolver crate uses `std` on wasm32 or brings its own
//! allocator. The bump allocator never frees: every merge starts from the
//! module's initial state, so one merge's peak memory is the total it
//! allocates.
//!
//! Link with a small shadow stack: rustc gives wasm32 modules 1 MiB of stack
//! at the bottom of linear memory, which puts every page a merge touches
//! (stack top, data, heap) past the first megabyte, where the host must
//! fault them in afresh for every merge. A small stack keeps them within
//! the first page or two, which the host keeps resident between merges
//! (and resets with a short memset). 64 KiB halved the fixed cost of a
//! merge (about 10 to 4 µs); the examples use 16 KiB, which took it to
//! about 3 µs, and puts the whole initial memory in one page, small
//! enough for the host to keep the instance between merges (about 1 µs;
//! see "Nothing survives between merges"). Pick the smallest your merge's deepest call chain fits in
//! (the examples' merges use a few KiB; deep recursion or large stack
//! arrays need more). In the resolver's workspace, `.cargo/config.toml`:
//!
//! ```toml
//! [target.wasm32-unknown-unknown]
//! rustflags = ["-C", "link-arg=-zstack-size=16384"]
//! ```
//!
//! Overflowing the stack still traps (it grows down, out of the memory); it
//! never corrupts the heap.
//!
//! An optional second argument exports a *sampler*,
//! `export_merge!(merge, sample = my_sample)` with
//! `fn my_sample(seed: u64) -> Vec<u8>`, which the law checker
//! (`isthmus resolver check`) calls to generate values in the resolver's
//! domain instead of random bytes.
//!
//! ## The ABI (version 1)
//!
//! Everything below is what the [`export_merge!`] macro generates; a
//! resolver written in C, Zig or AssemblyScript implements the same by hand.
//! See [`abi`] for the byte-level encoding.
//!
//! A resolver is a **core WebAssembly module** (not a component) with **no
//! imports** but, optionally, the log function (see "Logging" below). A
//! module that imports anything else (WASI included) is rejected at load.
//! It must export:
//!
//! | export | wasm type | meaning |
//! |---|---|---|
//! | `memory` | memory | the linear memory the host reads and writes |
//! | `isthmus_abi_version` | `() -> i32` | must return [`ABI_VERSION`] (1) |
//! | `isthmus_alloc` | `(len: i32) -> i32` | return a pointer to `len` writable bytes, aligned to 1; 0 on failure |
//! | `isthmus_merge` | `(ptr: i32, len: i32) -> i64` | merge the input at `ptr..ptr+len`; return the output location packed as `(out_ptr << 32) \| out_len` (both unsigned 32-bit) |
//!
//! and may export:
//!
//! | export | wasm type | meaning |
//! |---|---|---|
//! | `isthmus_dealloc` | `(ptr: i32, len: i32) -> ()` | free a buffer from `isthmus_alloc`; the host never needs to call it |
//! | `isthmus_sample` | `(seed: i64) -> i64` | a valid value for this resolver, derived only from `seed`; returns packed `(ptr << 32) \| len` of the **raw value bytes** (not postcard) |
//!
//! Other exports are ignored. Floating-point NaNs are canonicalised by the
//! host, and threads are disabled, so a module is deterministic.
//!
//! **One call.** Each merge runs in an instance in the module's initial
//! state (a fresh one, or one kept from an earlier merge and put back:
//! see "Nothing survives between merges"), then the host:
//! 1. calls `isthmus_abi_version` (at load only) and checks it is 1;
//! 2. calls `isthmus_alloc(len)` with the length of the encoded input
//!    ([`abi::MergeInput`]) and writes the input at the returned pointer;
//!    the guest owns that buffer from then on;
//! 3. calls `isthmus_merge(ptr, len)`; the guest decodes the input, merges,
//!    writes the encoded output ([`abi::MergeOutput`]) somewhere in its
//!    memory and returns its packed location;
//! 4. copies the output out and drops or resets the instance. The output
//!    buffer stays owned by the guest; the host never frees it.
//!
//! **Errors.** A resolver that refuses its input returns
//! [`abi::MergeOutput::Error`] with a code and a message: the host keeps the
//! siblings and counts a *guest error*. Codes `0xFFFF_0000` and above are
//! reserved for this SDK ([`abi::ERR_BAD_INPUT`]). A trap (including
//! `unreachable` on panic), running out of fuel or wall-clock time, hitting
//! the memory cap, or an output that is out of bounds, too large or not a
//! valid encoding with no trailing bytes, is contained by the host the same
//! way: siblings kept, failure counted by class.
//!
//! **Ordering.** Siblings arrive in the store's canonical order (ascending
//! timestamp, then content digest), but a correct resolver must not depend
//! on it: resolvers must be joins (commutative, associative, idempotent),
//! because replicas merge different subsets in different groupings.
//!
//! **How many siblings.** The host calls `isthmus_merge` only for a key
//! holding two or more siblings (tombstones included); never with zero or
//! one. A merge of a merge (a merged sibling fed back in beside new ones)
//! is an ordinary sibling: its value, the greatest timestamp it merged,
//! and the union of their clocks.
//!
//! **Nothing survives between merges.** Every merge starts from the
//! module's initial state: memory (contents and size), globals and tables
//! as instantiation leaves them, so a resolver cannot keep caches or
//! counters across calls (and cannot leak state between keys). To save
//! instantiating, the host keeps an instance after a merge that succeeded
//! without growing the memory, and puts it back before the next merge: it
//! copies the initial memory back and sets every mutable global (exported
//! or not) to its initial value. It does so only for a module whose other
//! state cannot change: no start function, and no `table.set`,
//! `table.grow`, `table.fill`, `table.copy`, `table.init`, `elem.drop` or
//! `data.drop` anywhere in its code, and an initial memory of at most
//! 128 KiB (the copy costs more than a fresh instance past that). Any
//! other module gets a fresh instance per merge. A guest cannot tell the
//! two apart (same bytes, same fuel: the host's tests compare them); the
//! fixed cost of a merge drops from about 3-4 µs to about 1 µs. The host
//! adds exports named `isthmus:reuse/global/N` to the module it compiles
//! for this; a module that exports a name with that prefix itself is not
//! reused.
//!
//! ## Limits (the host's defaults)
//!
//! | limit | default | past it |
//! |---|---|---|
//! | fuel per merge (about one unit per wasm instruction) | 200,000,000 | `fuel_exhausted` |
//! | wall-clock time per merge (a backstop to fuel) | 2 s | `deadline` |
//! | linear memory | 64 MiB (one memory) | `memory_limit` |
//! | host stack for wasm frames | 512 KiB | `trap` (stack overflow) |
//! | table elements | 10,000 | refused at load |
//! | module size | 8 MiB | refused at load (`invalid_module`) |
//! | compile time | 20 s | refused at load (`invalid_module`) |
//! | input (the encoded siblings) | 80 MiB | the merge is not run (`unavailable`) |
//! | output | 2 MiB | `bad_output` |
//!
//! The node's core bounds what a key can hold long before these: 16
//! siblings of at most 1 MiB each by default.
//!
//! ## WebAssembly features
//!
//! The host compiles core WebAssembly with these proposals, and refuses at
//! load any module that needs another (`resolvers/tests/features.rs`
//! checks each):
//!
//! | accepted | refused |
//! |---|---|
//! | SIMD (128-bit), relaxed SIMD (deterministic lowering), bulk memory, multi-value, reference types, sign extension, saturating float-to-int, tail calls | threads (shared memory, atomics), more than one memory, any import (WASI included), the component model |
//!
//! Floating-point NaNs are canonicalised and relaxed SIMD is lowered
//! deterministically, so the same input gives the same bytes on every
//! machine.
//!
//! ## The laws, exactly
//!
//! A resolver `m` over sibling sets must be a join, because replicas merge
//! different subsets in different groupings and orders and must end with
//! the same bytes. With `s1 … sn` siblings and `merged(m, S)` the sibling a
//! replica stores after merging `S` (value from `m`, greatest timestamp,
//! union of clocks), `isthmus resolver check` (and the registry, at
//! upload) tests, on generated sets of 2 to 4 siblings:
//!
//! - **deterministic**: `m(S)` gives the same output bytes in two fresh
//!   instances;
//! - **commutative**: `m(S)` equals `m(P)` for every reordering `P` of `S`;
//! - **associative**: for every split of `S` into a part `A` (two or more
//!   siblings) and the rest `B`, `m({merged(m, A)} ∪ B)` equals `m(S)`;
//! - **idempotent**: `m({s, s})` for a sibling `s` twice (two writes of the
//!   same value) returns `s`'s value, byte for byte (a tombstone twice: a
//!   delete); and `m({merged(m, S)} ∪ S)` equals `m(S)`.
//!
//! Values come from the module's `isthmus_sample(seed)` when it exports
//! one, else from random bytes (0 to 8) and any corpus given: a resolver
//! whose domain is narrower than arbitrary bytes (JSON, a fixed layout)
//! needs a sampler, or every generated set is refused with a guest error
//! and the check fails with no law tested. A guest error on generated
//! input is not a violation; one on a merged value is.
//!
//! ## Logging
//!
//! A module may import one host function:
//!
//! | import | wasm type | meaning |
//! |---|---|---|
//! | `isthmus` `log` | `(ptr: i32, len: i32) -> ()` | log the UTF-8 text at `ptr..ptr+len` as one line |
//!
//! In Rust, call [`log`]. The host checks the bounds of every call first
//! (a line outside memory traps the merge, the same on every replica);
//! then it lets through at most `log_lines_per_second` lines per resolver
//! per node (default 10) and counts the rest as dropped, cuts a line at
//! `log_line_bytes_max` bytes (default 512, marked `[cut]`), replaces
//! invalid UTF-8 and control characters, and emits it as a tracing event
//! (target `isthmus::resolver_log`) attributed to the resolver
//! (`name@version`, its hash, and the keyspace being merged).
//! `isthmus resolver call` prints the lines of its merge, and
//! `isthmus resolver check` the last lines and the counts. The call
//! returns nothing, so a merge cannot depend on whether its line was kept:
//! logging never breaks determinism. Lines are for debugging, not data:
//! at the rate limit most are dropped on a busy keyspace.
//!
//! ## Stack size, for any toolchain
//!
//! The shadow stack lives at the bottom of linear memory, and the linker
//! picks its size: rustc and clang (wasm-ld) default to 1 MiB (64 KiB for
//! some clang versions), which pushes data and heap past the pages the
//! host keeps resident between merges. Give wasm-ld a small stack:
//! `-C link-arg=-zstack-size=16384` with rustc, `-Wl,-z,stack-size=16384`
//! with clang, the equivalent linker flag elsewhere. Too small traps on overflow, never corrupts memory.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod abi;
#[doc(hidden)]
pub mod glue;
pub mod laws;
#[cfg(all(target_arch = "wasm32", feature = "guest-runtime"))]
mod runtime;

pub use abi::{ABI_VERSION, Dot, MergeError, Merged, Payload, Sibling, SiblingClock};

/// Log one line through the host (`isthmus::log`, see "Logging" in the
/// crate docs): rate-limited and attributed to the resolver by the host;
/// nothing comes back, so a merge cannot depend on it. Natively (unit
/// tests, the native law checker) it does nothing.
///
/// ```
/// isthmus_sdk_wasm::log("merging a cart of 3 items");
/// ```
pub fn log(line: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        #[link(wasm_import_module = "isthmus")]
        unsafe extern "C" {
            #[link_name = "log"]
            fn isthmus_log(ptr: *const u8, len: usize);
        }
        // SAFETY: the host only reads `len` bytes at `ptr`, which `line`
        // holds for the duration of the call.
        unsafe { isthmus_log(line.as_ptr(), line.len()) }
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = line;
}

/// Export a merge function (and optionally a sampler) as the resolver ABI.
///
/// `export_merge!(merge)` or `export_merge!(merge, sample = sample_fn)`,
/// where `merge: fn(&[u8], &[Sibling]) -> Result<Merged, MergeError>` and
/// `sample_fn: fn(u64) -> Vec<u8>`. The exports exist on wasm32 only, so
/// several resolver crates can be linked into one native test binary.
#[macro_export]
macro_rules! export_merge {
    ($merge:path) => {
        $crate::export_merge!(@core $merge);
    };
    ($merge:path, sample = $sample:path) => {
        $crate::export_merge!(@core $merge);

        /// ABI export: a sample value from a seed (raw bytes, packed ptr/len).
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn isthmus_sample(seed: u64) -> u64 {
            $crate::glue::leak_packed($sample(seed))
        }
    };
    (@core $merge:path) => {
        /// ABI export: the ABI version this module speaks.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn isthmus_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        /// ABI export: allocate `len` bytes for the host to write into.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn isthmus_alloc(len: u32) -> u32 {
            $crate::glue::alloc(len)
        }

        /// ABI export: free a buffer from `isthmus_alloc`.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn isthmus_dealloc(ptr: u32, len: u32) {
            // SAFETY: the ABI lets the caller pass only buffers from `isthmus_alloc`.
            unsafe { $crate::glue::dealloc(ptr, len) }
        }

        /// ABI export: merge the encoded input at `ptr..ptr+len`.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn isthmus_merge(ptr: u32, len: u32) -> u64 {
            // SAFETY: the host wrote `len` bytes at `ptr`, a buffer it got
            // from `isthmus_alloc` and hands over to us.
            let input = unsafe { $crate::glue::take_input(ptr, len) };
            $crate::glue::leak_packed($crate::glue::run_merge(&input, $merge))
        }
    };
}
