//! Every limit the resolver host enforces, in one place, with units in the
//! names. A module that exceeds one is rejected at load or contained at call
//! with a typed [`ResolverError`](crate::ResolverError); none can crash,
//! hang or exhaust the node (DESIGN.md invariant 4).

use std::time::Duration;

use wasmtime::PoolingAllocationConfig;

/// Limits of one [`Host`](crate::Host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverLimits {
    /// Largest module accepted at load. Also what bounds compile time in
    /// practice: Cranelift compiles in time roughly linear in code size.
    pub module_bytes_max: usize,
    /// How long a caller waits for a module to compile before the load is
    /// refused (the compile finishes in the background and is dropped).
    pub compile_deadline: Duration,
    /// Threads modules compile on (a pool of the host's own: compiling
    /// never runs on the caller's thread, and never on more threads).
    pub compile_threads: usize,
    /// Compilations that may wait for a compile thread; a load beyond it
    /// is refused as [`Unavailable`](crate::ResolverError::Unavailable)
    /// (not cached: nothing is wrong with the module).
    pub compile_queue_max: usize,
    /// Modules whose load failed, remembered by content hash so that a
    /// keyspace bound to one does not recompile it on every merge: the
    /// load fails again at once with the remembered error. The oldest is
    /// forgotten past this many.
    pub failed_modules_max: usize,
    /// How long a failed load is remembered before the module is tried
    /// again (a compile that timed out on a busy node may succeed later).
    pub failed_module_retry: Duration,
    /// Deterministic budget of one merge, in wasmtime fuel units (about one
    /// per wasm instruction). Fuel, not time, is the budget: a module that
    /// runs out does so on every replica alike (DESIGN.md, lessons).
    pub fuel_per_merge: u64,
    /// Wall-clock backstop of one merge, enforced by epoch interruption.
    /// Only a stuck host should ever hit it before the fuel runs out.
    pub merge_deadline: Duration,
    /// Period of the epoch ticker thread (the deadline's resolution).
    pub epoch_tick: Duration,
    /// Largest linear memory one merge may use (initial plus growth).
    pub memory_bytes_max: usize,
    /// Largest table one merge may use, in elements.
    pub table_elements_max: usize,
    /// Native stack the guest may use before it traps.
    pub stack_bytes_max: usize,
    /// Largest encoded input (key plus siblings) handed to a guest.
    pub input_bytes_max: usize,
    /// Largest encoded output read back from a guest.
    pub output_bytes_max: usize,
    /// Bytes at the start of each pooled memory slot kept resident between
    /// merges: reset in place rather than returned to the kernel and
    /// faulted in again on the next merge. Where the kernel has
    /// `PAGEMAP_SCAN` (Linux 6.7 and later) the host resets only the pages
    /// a merge dirtied (a small merge touches a few), so a large value
    /// costs little and spares merges that use more memory their page
    /// faults: 1 MiB with the scan took cart-union's empty merge from
    /// about 3.3 to 2.7 µs p50 against 128 KiB memset whole (the
    /// 10-sibling merge stayed at about 24 µs). Without `PAGEMAP_SCAN` the whole accessible part
    /// of it is memset on every merge (2 MiB made instantiation cost 19 µs
    /// instead of 4 µs); set it to 128 KiB on such kernels, which covers
    /// what a module linked with a 16-64 KiB stack touches in a small
    /// merge (see `isthmus-sdk-wasm`). The default is 1 MiB where the
    /// scan is available, else 128 KiB.
    pub memory_keep_resident_bytes: usize,
    /// Merges that can run at once on one host: the size of the pooling
    /// allocator's instance and memory pools. A quarter of it (rounded
    /// down) may hold instances kept between merges; below 4 none are
    /// kept.
    pub instances_max: u32,
    /// Guest log lines (`isthmus::log`) one resolver may emit per second
    /// on one host; lines past it are dropped and counted
    /// ([`ResolverStats::log_dropped`](crate::ResolverStats::log_dropped)).
    /// A resolver logging on every merge of a busy keyspace must not flood
    /// the node's log.
    pub log_lines_per_second: u32,
    /// Longest guest log line kept, in bytes; the rest is cut (and the
    /// line marked `[cut]`).
    pub log_line_bytes_max: usize,
}

impl Default for ResolverLimits {
    fn default() -> Self {
        ResolverLimits {
            module_bytes_max: 8 * 1024 * 1024,
            compile_deadline: Duration::from_secs(20),
            compile_threads: 1,
            compile_queue_max: 8,
            failed_modules_max: 256,
            failed_module_retry: Duration::from_secs(60),
            fuel_per_merge: 200_000_000,
            merge_deadline: Duration::from_secs(2),
            epoch_tick: Duration::from_millis(10),
            memory_bytes_max: 64 * 1024 * 1024,
            table_elements_max: 10_000,
            stack_bytes_max: 512 * 1024,
            // Room for 64 values of 1 MiB plus framing: more than the
            // largest set core allows (16 siblings, `isthmus_core::limit`).
            input_bytes_max: 80 * 1024 * 1024,
            output_bytes_max: 2 * 1024 * 1024,
            memory_keep_resident_bytes: if PoolingAllocationConfig::is_pagemap_scan_available() {
                1024 * 1024
            } else {
                128 * 1024
            },
            instances_max: 32,
            log_lines_per_second: 10,
            log_line_bytes_max: 512,
        }
    }
}
