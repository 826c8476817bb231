//! The wasmtime host: one [`Engine`], compiled modules cached by content
//! hash, and per merge a [`Store`] with limits, fuel and a deadline, whose
//! instance is fresh or kept from an earlier merge and put back in its
//! initial state (see [`crate::reuse`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isthmus_core::merge::FailureClass;
use isthmus_core::model::{ContentHash, Payload, Version, VersionSet};
use isthmus_sdk_wasm::abi::{self, MergeOutput};
use isthmus_sdk_wasm::{ABI_VERSION, Dot, Merged, Sibling, SiblingClock};
use parking_lot::{Mutex, RwLock};
use wasmtime::{
    Caller, Config, Enabled, Engine, ExternType, FuncType, Global, InstanceAllocationStrategy,
    InstancePre, Linker, Memory, Module, ModuleExport, PoolingAllocationConfig, ResourceLimiter,
    Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc, Val, ValType,
};

use crate::{ResolverError, ResolverLimits};

/// Export names of resolver ABI version 1 (see `isthmus_sdk_wasm` docs).
pub mod export {
    /// The linear memory.
    pub const MEMORY: &str = "memory";
    /// `() -> i32`: the ABI version.
    pub const ABI_VERSION: &str = "isthmus_abi_version";
    /// `(len: i32) -> i32`: allocate an input buffer.
    pub const ALLOC: &str = "isthmus_alloc";
    /// `(ptr: i32, len: i32) -> i64`: merge.
    pub const MERGE: &str = "isthmus_merge";
    /// Optional `(seed: i64) -> i64`: a sample value.
    pub const SAMPLE: &str = "isthmus_sample";
}

/// The one host function a resolver may import (see `isthmus_sdk_wasm`'s
/// ABI docs, "Logging").
pub mod import {
    /// The import module name.
    pub const MODULE: &str = "isthmus";
    /// `(ptr: i32, len: i32) -> ()`: log the UTF-8 line at `ptr..ptr+len`.
    pub const LOG: &str = "log";
}

/// The content hash of a module (blake3 of its bytes).
pub fn module_hash(bytes: &[u8]) -> ContentHash {
    *blake3::hash(bytes).as_bytes()
}

/// Per-resolver counters of one host (not global: several nodes share a
/// process in tests).
#[derive(Debug, Default)]
pub struct ResolverStats {
    merges_ok: AtomicU64,
    failures: [AtomicU64; FailureClass::ALL.len()],
    log_lines: AtomicU64,
    log_dropped: AtomicU64,
    /// The rate limit's current one-second window: its start and the
    /// lines let through in it.
    log_window: Mutex<Option<(Instant, u32)>>,
    /// The last [`LOG_RECENT_MAX`] lines let through.
    log_recent: Mutex<std::collections::VecDeque<String>>,
}

/// Log lines a resolver's [`ResolverStats`] keeps for `resolver check`.
pub const LOG_RECENT_MAX: usize = 32;

impl ResolverStats {
    fn record<T>(&self, result: &Result<T, ResolverError>) {
        match result {
            Ok(_) => self.merges_ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => self.failures[class_index(e.class())].fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Merges that succeeded.
    pub fn merges_ok(&self) -> u64 {
        self.merges_ok.load(Ordering::Relaxed)
    }

    /// Failures counted under `class`.
    pub fn failures(&self, class: FailureClass) -> u64 {
        self.failures[class_index(class)].load(Ordering::Relaxed)
    }

    /// Total failures, all classes.
    pub fn failures_total(&self) -> u64 {
        FailureClass::ALL.iter().map(|&c| self.failures(c)).sum()
    }

    /// Guest log lines let through the rate limit.
    pub fn log_lines(&self) -> u64 {
        self.log_lines.load(Ordering::Relaxed)
    }

    /// Guest log lines dropped by the rate limit.
    pub fn log_dropped(&self) -> u64 {
        self.log_dropped.load(Ordering::Relaxed)
    }

    /// The last lines let through (at most [`LOG_RECENT_MAX`]), oldest
    /// first.
    pub fn log_recent(&self) -> Vec<String> {
        self.log_recent.lock().iter().cloned().collect()
    }

    /// Take one line from the rate limit: `per_second` lines in each
    /// one-second window; false (and counted as dropped) past that.
    fn admit_log_line(&self, per_second: u32, now: Instant) -> bool {
        let mut window = self.log_window.lock();
        let admitted = match &mut *window {
            Some((start, n)) if now.duration_since(*start) < Duration::from_secs(1) => {
                if *n < per_second {
                    *n += 1;
                    true
                } else {
                    false
                }
            }
            _ => {
                *window = Some((now, 1));
                per_second > 0
            }
        };
        let counter = if admitted {
            &self.log_lines
        } else {
            &self.log_dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
        admitted
    }

    fn remember_log_line(&self, line: &str) {
        let mut recent = self.log_recent.lock();
        if recent.len() == LOG_RECENT_MAX {
            recent.pop_front();
        }
        recent.push_back(line.to_owned());
    }
}

/// Who a merge runs for, to attribute the guest's log lines: the
/// keyspace and the registered `name@version`, where the caller knows
/// them.
#[derive(Clone, Copy, Debug, Default)]
pub struct MergeContext<'a> {
    /// The keyspace whose siblings are merged.
    pub keyspace: Option<&'a str>,
    /// The resolver's registered name and version.
    pub resolver: Option<(&'a str, u32)>,
}

/// What a merge's guest logged (lines past the rate limit are counted,
/// not kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestLog {
    /// Lines let through, in order.
    pub lines: Vec<String>,
    /// Lines the rate limit dropped.
    pub dropped: u64,
}

/// One merge's outcome, the fuel it used (all of it when it ran out) and
/// what its guest logged.
#[derive(Debug)]
pub struct MergeRun<T> {
    /// The merge's result.
    pub result: Result<T, ResolverError>,
    /// Fuel used.
    pub fuel: u64,
    /// Lines the guest logged.
    pub log: GuestLog,
}

/// Per merge, for a module that imports the log function: where its lines
/// are attributed and collected.
struct LogState {
    stats: Arc<ResolverStats>,
    hash: ContentHash,
    keyspace: Option<String>,
    resolver: Option<String>,
    lines_per_second: u32,
    line_bytes_max: usize,
    log: GuestLog,
}

fn class_index(class: FailureClass) -> usize {
    FailureClass::ALL
        .iter()
        .position(|&c| c == class)
        .unwrap_or(0)
}

/// A validated, compiled resolver module, ready to instantiate.
pub struct Resolver {
    hash: ContentHash,
    pre: InstancePre<StoreState>,
    memory: ModuleExport,
    alloc: ModuleExport,
    merge: ModuleExport,
    sample: Option<ModuleExport>,
    /// Does the module import the log function?
    logs: bool,
    stats: Arc<ResolverStats>,
    /// Instances kept between merges, for a module whose state the host
    /// can put back (see [`crate::reuse`]); `None` for the others.
    reuse: Option<Reuse>,
}

/// Largest initial memory an instance is kept for: putting it back is a
/// copy of this many bytes per merge, which past about two pages costs
/// more than a fresh instance.
pub const REUSE_MEMORY_BYTES_MAX: usize = 128 * 1024;

/// Idle instances kept per resolver.
const REUSE_IDLE_MAX: usize = 4;

/// A resolver's kept instances.
struct Reuse {
    /// The reserved exports of the module's mutable globals.
    globals: Vec<String>,
    idle: Mutex<Vec<Warm>>,
    /// Merges that ran in a kept instance.
    reused: AtomicU64,
}

/// An instance kept between merges, with what it held when it was new.
struct Warm {
    store: Store<StoreState>,
    exports: AbiExports,
    /// The memory's bytes right after instantiation.
    image: Box<[u8]>,
    /// The image cut into runs of 4 KiB blocks that are all zero (put
    /// back by a fill, which costs about half a copy) or not.
    runs: Vec<(std::ops::Range<usize>, bool)>,
    /// The mutable globals and their initial values.
    globals: Vec<(Global, Val)>,
    /// Returned to the host's budget of kept instances on drop.
    budget: Arc<AtomicUsize>,
}

impl Drop for Warm {
    fn drop(&mut self) {
        self.budget.fetch_add(1, Ordering::Relaxed);
    }
}

impl Warm {
    /// Put the instance back in its initial state: false (and it must be
    /// dropped) if its memory grew, which cannot be undone.
    fn reset(&mut self) -> bool {
        let memory = self.exports.0;
        let data = memory.data_mut(&mut self.store);
        if data.len() != self.image.len() {
            return false;
        }
        for (run, zero) in &self.runs {
            if *zero {
                data[run.clone()].fill(0);
            } else {
                data[run.clone()].copy_from_slice(&self.image[run.clone()]);
            }
        }
        for (global, value) in &self.globals {
            if global.set(&mut self.store, *value).is_err() {
                return false;
            }
        }
        true
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("hash", &hex(&self.hash))
            .field("has_sample", &self.sample.is_some())
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Content hash (blake3 of the module bytes).
    pub fn hash(&self) -> ContentHash {
        self.hash
    }

    /// Does the module export the optional `isthmus_sample`?
    pub fn has_sample(&self) -> bool {
        self.sample.is_some()
    }

    /// This resolver's counters on its host.
    pub fn stats(&self) -> &ResolverStats {
        &self.stats
    }

    /// Does the module import the log host function?
    pub fn logs(&self) -> bool {
        self.logs
    }

    /// Does this resolver keep instances between merges (see
    /// [`crate::reuse`])?
    pub fn reuses_instances(&self) -> bool {
        self.reuse.is_some()
    }

    /// Merges that ran in a kept instance rather than a fresh one.
    pub fn reused_merges(&self) -> u64 {
        self.reuse
            .as_ref()
            .map_or(0, |r| r.reused.load(Ordering::Relaxed))
    }
}

/// The memory and the two ABI functions of one instance.
type AbiExports = (Memory, TypedFunc<u32, u32>, TypedFunc<(u32, u32), u64>);

/// `bytes` cut into maximal runs of `block`-sized pieces that are all zero
/// (`true`) or not; the runs cover `bytes` in order.
fn zero_runs(bytes: &[u8], block: usize) -> Vec<(std::ops::Range<usize>, bool)> {
    let mut runs: Vec<(std::ops::Range<usize>, bool)> = Vec::new();
    for (i, piece) in bytes.chunks(block).enumerate() {
        let start = i * block;
        let zero = piece.iter().all(|&b| b == 0);
        match runs.last_mut() {
            Some((run, z)) if *z == zero => run.end = start + piece.len(),
            _ => runs.push((start..start + piece.len(), zero)),
        }
    }
    runs
}

/// Lower-case hex of a hash (for logs and reports).
pub fn hex(hash: &[u8]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Per-store state: the memory limiter, which remembers whether it refused
/// a growth so that the resulting trap is classed as a memory limit.
pub struct StoreState {
    limits: StoreLimits,
    refused: bool,
    /// Set only for a module that imports the log function.
    log: Option<Box<LogState>>,
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.limits.memory_growing(current, desired, maximum)?;
        self.refused |= !ok;
        Ok(ok)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refused = true;
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.limits.table_growing(current, desired, maximum)?;
        self.refused |= !ok;
        Ok(ok)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The named background thread that advances the engine's epoch, the clock
/// of the merge deadline. Stopped and joined when the host drops.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Result<Self, ResolverError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("isthmus-resolver-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .map_err(|e| ResolverError::Unavailable {
                reason: format!("cannot start the epoch ticker: {e}"),
            })?;
        Ok(EpochTicker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A compilation for the compile pool: the bytes, and where the module
/// goes (the caller may have stopped waiting).
type CompileJob = (Vec<u8>, mpsc::SyncSender<wasmtime::Result<Module>>);

/// The host's compile threads (`isthmus-resolver-compile`), fed by a
/// bounded queue. They stop when the host drops (each finishes the module
/// it is compiling; nothing waits for them).
struct Compiler {
    jobs: mpsc::SyncSender<CompileJob>,
}

impl Compiler {
    fn start(engine: &Engine, limits: &ResolverLimits) -> Result<Self, ResolverError> {
        let (jobs, queue) = mpsc::sync_channel::<CompileJob>(limits.compile_queue_max);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..limits.compile_threads.max(1) {
            let (engine, queue) = (engine.clone(), queue.clone());
            std::thread::Builder::new()
                .name(format!("isthmus-resolver-compile-{i}"))
                .spawn(move || {
                    loop {
                        let job = queue.lock().recv();
                        let Ok((bytes, done)) = job else { return };
                        let _ = done.send(Module::from_binary(&engine, &bytes));
                    }
                })
                .map_err(|e| ResolverError::Unavailable {
                    reason: format!("cannot start a compile thread: {e}"),
                })?;
        }
        Ok(Compiler { jobs })
    }
}

/// Modules whose load failed, by content hash, with when.
type FailedModules = HashMap<ContentHash, (Instant, ResolverError)>;

/// The resolver host of one node.
///
/// Owns one wasmtime [`Engine`] (Cranelift, pooling allocator, fuel, epoch
/// interruption, NaN canonicalisation, no threads, no WASI), a cache of
/// validated modules by content hash, per-resolver counters, and the epoch
/// ticker thread. Every merge runs in an instance in the module's initial
/// state: fresh, or (for a module [`crate::reuse::plan`] accepts) kept
/// from an earlier merge that succeeded without growing the memory and
/// put back (memory copied back, mutable globals reset). Nothing a guest
/// does survives the call, and concurrent merges share nothing mutable:
/// an instance serves one merge at a time. A quarter of the instance pool
/// may be kept, at most four instances per resolver.
/// Modules compile on the host's bounded compile pool; a module whose load
/// failed is remembered (bounded, for `failed_module_retry`) and not
/// compiled again meanwhile.
pub struct Host {
    engine: Engine,
    linker: Linker<StoreState>,
    limits: ResolverLimits,
    modules: RwLock<HashMap<ContentHash, Arc<Resolver>>>,
    failed: Mutex<FailedModules>,
    stats: Mutex<HashMap<ContentHash, Arc<ResolverStats>>>,
    compiler: Compiler,
    compiles: AtomicU64,
    /// Instances that may still be kept between merges, over all
    /// resolvers: each holds a slot of the pooling allocator.
    warm_budget: Arc<AtomicUsize>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("limits", &self.limits)
            .field("modules", &self.modules.read().len())
            .finish_non_exhaustive()
    }
}

impl Host {
    /// A host with the given limits (starts the epoch ticker thread).
    pub fn new(limits: ResolverLimits) -> Result<Self, ResolverError> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(limits.instances_max)
            .total_memories(limits.instances_max)
            .total_tables(limits.instances_max)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .table_elements(limits.table_elements_max)
            .max_memory_size(limits.memory_bytes_max)
            .linear_memory_keep_resident(limits.memory_keep_resident_bytes)
            .table_keep_resident(64 * 1024)
            .pagemap_scan(Enabled::Auto);
        let mut config = Config::new();
        config
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true)
            .max_wasm_stack(limits.stack_bytes_max)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| ResolverError::Unavailable {
            reason: format!("cannot configure the wasm engine: {e}"),
        })?;
        let ticker = EpochTicker::start(engine.clone(), limits.epoch_tick)?;
        let compiler = Compiler::start(&engine, &limits)?;
        let mut linker = Linker::new(&engine);
        linker
            .func_wrap(import::MODULE, import::LOG, guest_log)
            .map_err(|e| ResolverError::Unavailable {
                reason: format!("cannot define the log host function: {e}"),
            })?;
        Ok(Host {
            // A quarter of the pool: fresh instances keep the rest.
            warm_budget: Arc::new(AtomicUsize::new(limits.instances_max as usize / 4)),
            linker,
            engine,
            limits,
            modules: RwLock::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            compiler,
            compiles: AtomicU64::new(0),
            _ticker: ticker,
        })
    }

    /// The limits this host enforces.
    pub fn limits(&self) -> &ResolverLimits {
        &self.limits
    }

    /// Counters of the resolver with this content hash (load failures of a
    /// module are counted under its hash too).
    pub fn stats(&self, hash: &ContentHash) -> Arc<ResolverStats> {
        self.stats.lock().entry(*hash).or_default().clone()
    }

    /// The loaded resolver with this content hash, if cached.
    pub fn get(&self, hash: &ContentHash) -> Option<Arc<Resolver>> {
        self.modules.read().get(hash).cloned()
    }

    /// Drop a module from the cache (running merges keep their handle),
    /// and forget a failed load of it.
    pub fn evict(&self, hash: &ContentHash) {
        self.modules.write().remove(hash);
        self.failed.lock().remove(hash);
    }

    /// Modules handed to the compiler so far (cache hits and remembered
    /// failures compile nothing).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// Validate, compile and cache a module (a cache hit if already loaded).
    ///
    /// Checks, in order: size cap, wasm magic, compile (on the compile
    /// pool, bounded by `compile_deadline`), no imports, the ABI exports
    /// and their types, and `isthmus_abi_version() == 1` run under the
    /// merge limits. A module that failed within `failed_module_retry`
    /// fails again at once with the same error.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<Resolver>, ResolverError> {
        let hash = module_hash(bytes);
        if let Some(r) = self.get(&hash) {
            return Ok(r);
        }
        let stats = self.stats(&hash);
        if let Some(e) = self.failed_before(&hash) {
            stats.record::<()>(&Err(e.clone()));
            return Err(e);
        }
        let result = self.load_uncached(bytes, hash, stats.clone());
        if let Err(e) = &result {
            stats.record::<()>(&Err(e.clone()));
            tracing::warn!(hash = %hex(&hash), error = %e, "resolver module rejected");
            self.remember_failure(hash, e);
        }
        let resolver = Arc::new(result?);
        Ok(self.modules.write().entry(hash).or_insert(resolver).clone())
    }

    /// The remembered failure of this module, if it is recent enough.
    fn failed_before(&self, hash: &ContentHash) -> Option<ResolverError> {
        let mut failed = self.failed.lock();
        let (at, error) = failed.get(hash)?;
        if at.elapsed() < self.limits.failed_module_retry {
            return Some(error.clone());
        }
        failed.remove(hash);
        None
    }

    /// Remember a failed load (not one the host could not run now), the
    /// oldest forgotten past `failed_modules_max`.
    fn remember_failure(&self, hash: ContentHash, error: &ResolverError) {
        if matches!(error, ResolverError::Unavailable { .. }) || self.limits.failed_modules_max == 0
        {
            return;
        }
        let mut failed = self.failed.lock();
        while failed.len() >= self.limits.failed_modules_max {
            let oldest = failed
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(h, _)| *h);
            match oldest {
                Some(h) => failed.remove(&h),
                None => break,
            };
        }
        failed.insert(hash, (Instant::now(), error.clone()));
    }

    /// How many failed loads are remembered.
    pub fn failed_modules(&self) -> usize {
        self.failed.lock().len()
    }

    /// Check, compile and validate a module not in the cache: size and
    /// magic, compilation, the ABI's imports and exports, then its ABI
    /// version.
    fn load_uncached(
        &self,
        bytes: &[u8],
        hash: ContentHash,
        stats: Arc<ResolverStats>,
    ) -> Result<Resolver, ResolverError> {
        self.check_bytes(bytes)?;
        let plan = crate::reuse::plan(bytes).and_then(|p| {
            if p.memory_bytes > REUSE_MEMORY_BYTES_MAX as u64 {
                Err(crate::reuse::Fresh::State(
                    "an initial memory too large to copy back",
                ))
            } else {
                Ok(p)
            }
        });
        if let Err(crate::reuse::Fresh::State(why)) = &plan {
            tracing::debug!(hash = %hex(&hash), why, "resolver runs in a fresh instance per merge");
        }
        let module = self.compile(plan.as_ref().map_or(bytes, |p| &p.bytes[..]))?;
        let (sample, logs) = self.check_interface(&module)?;
        let index = |name: &str| {
            module
                .get_export_index(name)
                .ok_or_else(|| ResolverError::MissingExport {
                    name: name.into(),
                    expected: "an export".into(),
                })
        };
        let pre =
            self.linker
                .instantiate_pre(&module)
                .map_err(|e| ResolverError::InvalidModule {
                    reason: format!("cannot prepare instantiation: {e}"),
                })?;
        let resolver = Resolver {
            hash,
            memory: index(export::MEMORY)?,
            alloc: index(export::ALLOC)?,
            merge: index(export::MERGE)?,
            sample,
            logs,
            pre,
            stats,
            reuse: plan.ok().map(|p| Reuse {
                globals: p.globals,
                idle: Mutex::new(Vec::new()),
                reused: AtomicU64::new(0),
            }),
        };
        self.check_abi_version(&resolver)?;
        Ok(resolver)
    }

    /// A module's bytes before any compilation: within the size limit and
    /// starting with WebAssembly's magic.
    fn check_bytes(&self, bytes: &[u8]) -> Result<(), ResolverError> {
        if bytes.len() > self.limits.module_bytes_max {
            return Err(ResolverError::ModuleTooLarge {
                bytes: bytes.len(),
                max_bytes: self.limits.module_bytes_max,
            });
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(ResolverError::InvalidModule {
                reason: "not a WebAssembly binary (no \\0asm magic)".into(),
            });
        }
        Ok(())
    }

    /// The module imports nothing and exports what the ABI names, with
    /// their types; returns the optional sampler's export.
    fn check_interface(
        &self,
        module: &Module,
    ) -> Result<(Option<ModuleExport>, bool), ResolverError> {
        use ValType::{I32, I64};
        let func = |params: &[ValType], results: &[ValType]| {
            FuncType::new(
                &self.engine,
                params.iter().cloned(),
                results.iter().cloned(),
            )
        };
        let mut logs = false;
        for import in module.imports() {
            let allowed = import.module() == import::MODULE
                && import.name() == import::LOG
                && matches!(import.ty(), ExternType::Func(f) if FuncType::eq(&f, &func(&[I32, I32], &[])));
            if !allowed {
                return Err(ResolverError::ImportNotAllowed {
                    module: import.module().into(),
                    name: import.name().into(),
                });
            }
            logs = true;
        }
        let required = [
            (export::ABI_VERSION, func(&[], &[I32]), "() -> i32"),
            (export::ALLOC, func(&[I32], &[I32]), "(i32) -> i32"),
            (
                export::MERGE,
                func(&[I32, I32], &[I64]),
                "(i32, i32) -> i64",
            ),
        ];
        for (name, ty, shown) in &required {
            let ok = match module.get_export(name) {
                Some(ExternType::Func(f)) => FuncType::eq(&f, ty),
                _ => false,
            };
            if !ok {
                return Err(ResolverError::MissingExport {
                    name: (*name).into(),
                    expected: (*shown).into(),
                });
            }
        }
        if !matches!(
            module.get_export(export::MEMORY),
            Some(ExternType::Memory(_))
        ) {
            return Err(ResolverError::MissingExport {
                name: export::MEMORY.into(),
                expected: "memory".into(),
            });
        }
        match module.get_export(export::SAMPLE) {
            None => Ok((None, logs)),
            Some(ExternType::Func(f)) if FuncType::eq(&f, &func(&[I64], &[I64])) => {
                Ok((module.get_export_index(export::SAMPLE), logs))
            }
            Some(_) => Err(ResolverError::MissingExport {
                name: export::SAMPLE.into(),
                expected: "(i64) -> i64 (it is optional, but must have this type)".into(),
            }),
        }
    }

    /// Ask the module its ABI version, under the same limits as a merge.
    fn check_abi_version(&self, resolver: &Resolver) -> Result<(), ResolverError> {
        let mut store = self.store()?;
        let instance = resolver
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(&store, e, "instantiate"))?;
        let version = instance
            .get_typed_func::<(), u32>(&mut store, export::ABI_VERSION)
            .and_then(|f| f.call(&mut store, ()))
            .map_err(|e| self.classify(&store, e, "isthmus_abi_version"))?;
        if version != ABI_VERSION {
            return Err(ResolverError::AbiMismatch {
                expected: ABI_VERSION,
                found: version,
            });
        }
        Ok(())
    }

    /// Compile on the compile pool and wait at most `compile_deadline`
    /// (a full queue is `Unavailable`).
    fn compile(&self, bytes: &[u8]) -> Result<Module, ResolverError> {
        let (tx, rx) = mpsc::sync_channel(1);
        match self.compiler.jobs.try_send((bytes.to_vec(), tx)) {
            Ok(()) => {
                self.compiles.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::TrySendError::Full(_)) => {
                return Err(ResolverError::Unavailable {
                    reason: format!(
                        "{} modules are waiting to compile already",
                        self.limits.compile_queue_max
                    ),
                });
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(ResolverError::Unavailable {
                    reason: "the compile threads stopped".into(),
                });
            }
        }
        match rx.recv_timeout(self.limits.compile_deadline) {
            Ok(Ok(module)) => Ok(module),
            Ok(Err(e)) => Err(ResolverError::InvalidModule {
                reason: format!("{e:#}"),
            }),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ResolverError::CompileTimeout {
                deadline_ms: self.limits.compile_deadline.as_millis() as u64,
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ResolverError::InvalidModule {
                reason: "the compiler thread died while compiling this module".into(),
            }),
        }
    }

    /// A fresh store with the memory cap, the fuel budget and the deadline.
    fn store(&self) -> Result<Store<StoreState>, ResolverError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes_max)
            .table_elements(self.limits.table_elements_max)
            .instances(1)
            .memories(1)
            .tables(1)
            .build();
        let mut store = Store::new(
            &self.engine,
            StoreState {
                limits,
                refused: false,
                log: None,
            },
        );
        store.limiter(|s| s);
        self.refill(&mut store)?;
        Ok(store)
    }

    /// A merge's fuel budget and deadline, from now.
    fn refill(&self, store: &mut Store<StoreState>) -> Result<(), ResolverError> {
        store
            .set_fuel(self.limits.fuel_per_merge)
            .map_err(|e| ResolverError::Unavailable {
                reason: format!("cannot set fuel: {e}"),
            })?;
        let tick = self.limits.epoch_tick.as_nanos().max(1);
        // +1: the next tick may come at once.
        let ticks = (self.limits.merge_deadline.as_nanos() / tick) as u64 + 1;
        store.set_epoch_deadline(ticks);
        Ok(())
    }

    /// An instance of `resolver` in its initial state to merge in: an idle
    /// kept one, or a new one to keep if the budget allows. `None` when
    /// neither is to be had (the merge then runs in a fresh instance,
    /// which reports any instantiation error).
    fn take_warm(&self, resolver: &Resolver, reuse: &Reuse) -> Option<Warm> {
        if let Some(warm) = reuse.idle.lock().pop() {
            reuse.reused.fetch_add(1, Ordering::Relaxed);
            return Some(warm);
        }
        self.warm_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .ok()?;
        // From here on, dropping `warm` (or failing before it exists)
        // returns the slot.
        let budget = self.warm_budget.clone();
        let Ok(mut store) = self.store() else {
            budget.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let Ok(instance) = resolver.pre.instantiate(&mut store) else {
            budget.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let exports = match self.exports(&mut store, &instance, resolver) {
            Ok(exports) => exports,
            Err(_) => {
                budget.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let image: Box<[u8]> = exports.0.data(&store).into();
        let mut warm = Warm {
            runs: zero_runs(&image, 4096),
            image,
            exports,
            globals: Vec::with_capacity(reuse.globals.len()),
            store,
            budget,
        };
        for name in &reuse.globals {
            let global = instance.get_global(&mut warm.store, name)?;
            let value = global.get(&mut warm.store);
            warm.globals.push((global, value));
        }
        Some(warm)
    }

    /// Class a wasmtime error into a [`ResolverError`].
    fn classify(&self, store: &Store<StoreState>, e: wasmtime::Error, what: &str) -> ResolverError {
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => ResolverError::FuelExhausted {
                fuel: self.limits.fuel_per_merge,
            },
            Some(Trap::Interrupt) => ResolverError::Deadline {
                deadline_ms: self.limits.merge_deadline.as_millis() as u64,
            },
            _ if store.data().refused => ResolverError::MemoryLimit {
                memory_bytes_max: self.limits.memory_bytes_max,
            },
            Some(trap) => ResolverError::Trap {
                message: format!("{trap} (in {what})"),
            },
            None if what == "instantiate" => ResolverError::Unavailable {
                reason: format!("cannot instantiate: {e:#}"),
            },
            None => ResolverError::Trap {
                message: format!("{e:#} (in {what})"),
            },
        }
    }

    /// Create a store and instantiate the module without calling it: what
    /// every merge pays before guest code runs (benchmarks, health checks).
    pub fn instantiate_probe(&self, resolver: &Resolver) -> Result<(), ResolverError> {
        let mut store = self.store()?;
        resolver
            .pre
            .instantiate(&mut store)
            .map(drop)
            .map_err(|e| self.classify(&store, e, "instantiate"))
    }

    /// Run one merge on already-encoded input; returns the raw output bytes
    /// (an encoded [`MergeOutput`], not yet decoded). Counted.
    pub fn merge_raw(&self, resolver: &Resolver, input: &[u8]) -> Result<Vec<u8>, ResolverError> {
        let result = self.merge_raw_uncounted(resolver, input);
        resolver.stats.record(&result);
        result
    }

    fn merge_raw_uncounted(
        &self,
        resolver: &Resolver,
        input: &[u8],
    ) -> Result<Vec<u8>, ResolverError> {
        self.run(
            resolver,
            &MergeContext::default(),
            input.len(),
            |buf| {
                buf.copy_from_slice(input);
                Ok(())
            },
            |out| Ok(out.to_vec()),
        )
        .result
    }

    /// One merge: a fresh store and instance, `len` input bytes that
    /// `write` puts straight into the buffer the guest allocated, the call,
    /// and `read` on the guest's output where it lies in guest memory (no
    /// copies of either on the way); with the fuel the call used (all of
    /// it when it ran out) and what the guest logged.
    fn run<T>(
        &self,
        resolver: &Resolver,
        context: &MergeContext<'_>,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> Result<(), ResolverError>,
        read: impl FnOnce(&[u8]) -> Result<T, ResolverError>,
    ) -> MergeRun<T> {
        let failed = |e| MergeRun {
            result: Err(e),
            fuel: 0,
            log: GuestLog::default(),
        };
        if len > self.limits.input_bytes_max {
            return failed(ResolverError::InputTooLarge {
                bytes: len,
                max_bytes: self.limits.input_bytes_max,
            });
        }
        let log = resolver.logs.then(|| {
            Box::new(LogState {
                stats: resolver.stats.clone(),
                hash: resolver.hash,
                keyspace: context.keyspace.map(str::to_owned),
                resolver: context.resolver.map(|(n, v)| format!("{n}@{v}")),
                lines_per_second: self.limits.log_lines_per_second,
                line_bytes_max: self.limits.log_line_bytes_max,
                log: GuestLog::default(),
            })
        });
        if let Some(reuse) = &resolver.reuse
            && let Some(mut warm) = self.take_warm(resolver, reuse)
        {
            if let Err(e) = self.refill(&mut warm.store) {
                return failed(e);
            }
            let state = warm.store.data_mut();
            state.refused = false;
            state.log = log;
            let result = self.call(&mut warm.store, warm.exports.clone(), len, write, read);
            let run = self.finish(&mut warm.store, result);
            // After a failure the instance is dropped, not reset: failures
            // are rare, and a fresh instance is certain.
            if run.result.is_ok() && warm.reset() {
                let mut idle = reuse.idle.lock();
                if idle.len() < REUSE_IDLE_MAX {
                    idle.push(warm);
                }
            }
            return run;
        }
        let mut store = match self.store() {
            Ok(store) => store,
            Err(e) => return failed(e),
        };
        store.data_mut().log = log;
        let result = resolver
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(&store, e, "instantiate"))
            .and_then(|instance| self.exports(&mut store, &instance, resolver))
            .and_then(|exports| self.call(&mut store, exports, len, write, read));
        self.finish(&mut store, result)
    }

    /// A merge's outcome with the fuel it used and what its guest logged.
    fn finish<T>(
        &self,
        store: &mut Store<StoreState>,
        result: Result<T, ResolverError>,
    ) -> MergeRun<T> {
        let left = store.get_fuel().unwrap_or(0);
        MergeRun {
            result,
            fuel: self.limits.fuel_per_merge.saturating_sub(left),
            log: store
                .data_mut()
                .log
                .take()
                .map(|l| l.log)
                .unwrap_or_default(),
        }
    }

    /// The ABI calls of one merge on an instance in its initial state.
    fn call<T>(
        &self,
        store: &mut Store<StoreState>,
        (memory, alloc, merge): AbiExports,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> Result<(), ResolverError>,
        read: impl FnOnce(&[u8]) -> Result<T, ResolverError>,
    ) -> Result<T, ResolverError> {
        let len32 = u32::try_from(len).map_err(|_| ResolverError::InputTooLarge {
            bytes: len,
            max_bytes: u32::MAX as usize,
        })?;
        let ptr = alloc
            .call(&mut *store, len32)
            .map_err(|e| self.classify(&*store, e, export::ALLOC))?;
        if ptr == 0 && len > 0 {
            return Err(if store.data().refused {
                ResolverError::MemoryLimit {
                    memory_bytes_max: self.limits.memory_bytes_max,
                }
            } else {
                ResolverError::BadOutput {
                    reason: format!("isthmus_alloc({len}) returned 0"),
                }
            });
        }
        let buf = (ptr as usize)
            .checked_add(len)
            .and_then(|end| memory.data_mut(&mut *store).get_mut(ptr as usize..end))
            .ok_or_else(|| ResolverError::BadOutput {
                reason: format!("isthmus_alloc({len}) returned out-of-bounds pointer {ptr:#x}"),
            })?;
        write(buf)?;
        let packed = merge
            .call(&mut *store, (ptr, len32))
            .map_err(|e| self.classify(&*store, e, export::MERGE))?;
        read(self.output(&*store, memory, packed)?)
    }

    fn exports(
        &self,
        store: &mut Store<StoreState>,
        instance: &wasmtime::Instance,
        r: &Resolver,
    ) -> Result<AbiExports, ResolverError> {
        let missing = |name: &str| ResolverError::MissingExport {
            name: name.into(),
            expected: "(validated at load)".into(),
        };
        let memory = instance
            .get_module_export(&mut *store, &r.memory)
            .and_then(|e| e.into_memory())
            .ok_or_else(|| missing(export::MEMORY))?;
        let alloc = instance
            .get_module_export(&mut *store, &r.alloc)
            .and_then(|e| e.into_func())
            .and_then(|f| f.typed(&*store).ok())
            .ok_or_else(|| missing(export::ALLOC))?;
        let merge = instance
            .get_module_export(&mut *store, &r.merge)
            .and_then(|e| e.into_func())
            .and_then(|f| f.typed(&*store).ok())
            .ok_or_else(|| missing(export::MERGE))?;
        Ok((memory, alloc, merge))
    }

    /// The `(ptr << 32) | len` buffer a guest returned, in guest memory.
    fn output<'s>(
        &self,
        store: &'s Store<StoreState>,
        memory: Memory,
        packed: u64,
    ) -> Result<&'s [u8], ResolverError> {
        let (ptr, len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
        if len > self.limits.output_bytes_max {
            return Err(ResolverError::BadOutput {
                reason: format!(
                    "output of {len} bytes exceeds the limit of {} bytes",
                    self.limits.output_bytes_max
                ),
            });
        }
        let data = memory.data(store);
        ptr.checked_add(len)
            .and_then(|end| data.get(ptr..end))
            .ok_or_else(|| ResolverError::BadOutput {
                reason: format!(
                    "output {ptr:#x}+{len} lies outside guest memory of {} bytes",
                    data.len()
                ),
            })
    }

    /// Merge ABI-level siblings: encode, run, decode. Counted.
    pub fn merge_siblings(
        &self,
        resolver: &Resolver,
        key: &[u8],
        siblings: &[Sibling<'_>],
    ) -> Result<Merged, ResolverError> {
        let result = self.merge_siblings_uncounted(resolver, key, siblings);
        resolver.stats.record(&result);
        result
    }

    /// As [`Host::merge_siblings`], but not counted: the law checker's
    /// thousands of trial merges must not pollute a node's counters.
    pub(crate) fn merge_siblings_uncounted(
        &self,
        resolver: &Resolver,
        key: &[u8],
        siblings: &[Sibling<'_>],
    ) -> Result<Merged, ResolverError> {
        self.merge_siblings_metered(resolver, key, siblings).0
    }

    /// As [`Host::merge_siblings_uncounted`], with the fuel the merge used
    /// (the law checker's budget and its report of costly resolvers).
    pub fn merge_siblings_metered(
        &self,
        resolver: &Resolver,
        key: &[u8],
        siblings: &[Sibling<'_>],
    ) -> (Result<Merged, ResolverError>, u64) {
        let run = self.merge_siblings_in(resolver, key, siblings, &MergeContext::default());
        (run.result, run.fuel)
    }

    /// One merge for `context` (which the guest's log lines are attributed
    /// to), with the fuel it used and what the guest logged. Not counted.
    pub fn merge_siblings_in(
        &self,
        resolver: &Resolver,
        key: &[u8],
        siblings: &[Sibling<'_>],
        context: &MergeContext<'_>,
    ) -> MergeRun<Merged> {
        self.run(
            resolver,
            context,
            abi::encoded_input_len(key, siblings),
            |buf| {
                abi::encode_input_into(key, siblings, buf)
                    .map(drop)
                    .map_err(|e| ResolverError::Unavailable {
                        reason: format!("cannot encode the merge input: {e}"),
                    })
            },
            decode_output,
        )
    }

    /// Merge a version set into the version that replaces it: the least
    /// upper bound of the sibling clocks, the greatest timestamp, and the
    /// resolver's content hash ([`VersionSet::merged`]). `Ok(None)` for an
    /// empty set. Counted.
    pub fn merge_set(
        &self,
        resolver: &Resolver,
        key: &[u8],
        set: &VersionSet,
    ) -> Result<Option<Version>, ResolverError> {
        self.merge_set_in(resolver, key, set, &MergeContext::default())
            .result
    }

    /// [`Host::merge_set`] for `context`, which the guest's log lines are
    /// attributed to, with the fuel the merge used (all of it when it ran
    /// out) and what the guest logged. Counted.
    pub fn merge_set_in(
        &self,
        resolver: &Resolver,
        key: &[u8],
        set: &VersionSet,
        context: &MergeContext<'_>,
    ) -> MergeRun<Option<Version>> {
        let siblings: Vec<Sibling<'_>> = set.versions().iter().map(to_sibling).collect();
        let run = self.merge_siblings_in(resolver, key, &siblings, context);
        resolver.stats.record(&run.result);
        let result = run.result.map(|merged| {
            let payload = match merged {
                Merged::Value(v) => Payload::Value(v),
                Merged::Delete => Payload::Tombstone,
            };
            set.merged(payload, resolver.hash)
        });
        MergeRun {
            result,
            fuel: run.fuel,
            log: run.log,
        }
    }

    /// A sample value from the module's optional `isthmus_sample(seed)`;
    /// `Ok(None)` if it has none. Runs under the merge limits; not counted.
    pub fn sample(&self, resolver: &Resolver, seed: u64) -> Result<Option<Vec<u8>>, ResolverError> {
        let Some(sample) = &resolver.sample else {
            return Ok(None);
        };
        let mut store = self.store()?;
        let instance = resolver
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(&store, e, "instantiate"))?;
        let (memory, _, _) = self.exports(&mut store, &instance, resolver)?;
        let f: TypedFunc<u64, u64> = instance
            .get_module_export(&mut store, sample)
            .and_then(|e| e.into_func())
            .and_then(|f| f.typed(&store).ok())
            .ok_or_else(|| ResolverError::MissingExport {
                name: export::SAMPLE.into(),
                expected: "(i64) -> i64".into(),
            })?;
        let packed = f
            .call(&mut store, seed)
            .map_err(|e| self.classify(&store, e, export::SAMPLE))?;
        self.output(&store, memory, packed)
            .map(|out| Some(out.to_vec()))
    }
}

/// The `isthmus::log(ptr, len)` host function. The line's bounds are
/// checked first, on every call, so that a bad pointer traps the same way
/// on every replica whatever the rate limit says; then the line is
/// admitted or dropped by the resolver's rate limit, cut to
/// `log_line_bytes_max`, its control characters replaced, and emitted as a
/// tracing event attributed to the resolver. The guest gets nothing back:
/// the rate limit cannot steer a merge.
fn guest_log(mut caller: Caller<'_, StoreState>, ptr: u32, len: u32) -> wasmtime::Result<()> {
    let Some(memory) = caller
        .get_export(export::MEMORY)
        .and_then(|e| e.into_memory())
    else {
        return Err(wasmtime::Error::msg(
            "isthmus::log: the module has no memory",
        ));
    };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let (start, len) = (ptr as usize, len as usize);
    let Some(bytes) = start.checked_add(len).and_then(|end| data.get(start..end)) else {
        return Err(wasmtime::Error::msg(format!(
            "isthmus::log({start:#x}, {len}) lies outside guest memory of {} bytes",
            data.len()
        )));
    };
    let Some(log) = state.log.as_deref_mut() else {
        // Outside a merge (the ABI version check, a sampler): not logged.
        return Ok(());
    };
    if !log
        .stats
        .admit_log_line(log.lines_per_second, Instant::now())
    {
        log.log.dropped += 1;
        return Ok(());
    }
    let mut line: String = String::from_utf8_lossy(&bytes[..len.min(log.line_bytes_max)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if len > log.line_bytes_max {
        line.push_str(" [cut]");
    }
    tracing::info!(
        target: "isthmus::resolver_log",
        resolver = %log.resolver.as_deref().unwrap_or("-"),
        keyspace = %log.keyspace.as_deref().unwrap_or("-"),
        hash = %hex(&log.hash[..8]),
        line = %line,
        "resolver log"
    );
    log.stats.remember_log_line(&line);
    log.log.lines.push(line);
    Ok(())
}

/// Decode a guest's output into a merge result or a typed error.
fn decode_output(out: &[u8]) -> Result<Merged, ResolverError> {
    match abi::decode_output(out) {
        Ok(MergeOutput::Value(v)) => Ok(Merged::Value(v)),
        Ok(MergeOutput::Delete) => Ok(Merged::Delete),
        Ok(MergeOutput::Error { code, message }) => Err(ResolverError::Guest { code, message }),
        Err(e) => Err(ResolverError::BadOutput {
            reason: format!("output does not decode: {e}"),
        }),
    }
}

/// The ABI view of a stored version.
pub fn to_sibling(v: &Version) -> Sibling<'_> {
    Sibling {
        payload: match &v.payload {
            Payload::Value(b) => isthmus_sdk_wasm::Payload::Value(b),
            Payload::Tombstone => isthmus_sdk_wasm::Payload::Tombstone,
        },
        timestamp_ms: v.timestamp_ms,
        origin_dc: &v.origin_dc.0,
        clock: SiblingClock {
            vector: v.clock.vector().iter().map(|(a, &n)| (a.0, n)).collect(),
            dots: v
                .clock
                .dots()
                .iter()
                .map(|d| Dot {
                    actor: d.actor.0,
                    counter: d.counter,
                })
                .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::zero_runs;

    #[test]
    fn zero_runs_cover_the_bytes_in_maximal_runs() {
        let mut bytes = vec![0u8; 10];
        bytes[4] = 1;
        assert_eq!(
            zero_runs(&bytes, 2),
            vec![(0..4, true), (4..6, false), (6..10, true)]
        );
        bytes[9] = 1;
        assert_eq!(zero_runs(&bytes, 4), vec![(0..4, true), (4..10, false)]);
        assert_eq!(zero_runs(&[], 4), vec![]);
    }
}
