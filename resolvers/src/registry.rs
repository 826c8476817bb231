//! The resolver registry: modules stored by name and version with their
//! content hash, and keyspace bindings with a history to roll back to.
//!
//! It is backed by a tiny byte store, [`RegistryRecords`] (get / put / prefix
//! scan), so that it can live in the system keyspace that DESIGN.md
//! replicates to every DC. [`MemoryRecords`] is the in-memory implementation
//! for tests and single-process demos;
//! [`RegistryKeyspace`](crate::RegistryKeyspace) is a node's, over its
//! `_registry` system keyspace (reads of the local replica, writes through
//! the cluster; registry records are written once per key, or, for
//! bindings, by operators one at a time, so last-writer-wins settles the
//! rare concurrent writes).
//!
//! Key layout (all values postcard-encoded, format version 1):
//!
//! | key | value |
//! |---|---|
//! | `resolver/` name `0x00` version (u32 big-endian) | [`ResolverRecord`] |
//! | `module/` 32-byte content hash | the module bytes |
//! | `binding/` keyspace | [`Binding`] |
//!
//! Big-endian versions make a prefix scan list a name's versions in order.
//!
//! What it is not: an access-control layer. Authorising uploads is the
//! node's job, before it calls [`Registry::register`].

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_core::model::ContentHash;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::check::{self, CheckOptions};
use crate::host::{hex, module_hash};
use crate::{Host, ResolverError};

/// A failure of the byte store under the registry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("registry storage failed: {reason}")]
pub struct RecordsError {
    /// What went wrong.
    pub reason: String,
}

/// One `(key, value)` pair of a [`RegistryRecords`].
pub type Entry = (Vec<u8>, Vec<u8>);

/// The byte store a registry lives in. Implementations must be safe to
/// share between threads; `scan` returns keys in ascending byte order.
pub trait RegistryRecords: Send + Sync {
    /// The value under `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RecordsError>;
    /// Store `value` under `key`, replacing any previous value.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), RecordsError>;
    /// Every `(key, value)` whose key starts with `prefix`, ascending.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, RecordsError>;
    /// Remove `key` (absent keys read as `None` afterwards).
    fn delete(&self, key: &[u8]) -> Result<(), RecordsError>;
    /// A number that moves whenever the store's contents may have changed,
    /// by any path, so that a reader can cache what it decoded until then;
    /// `None` (the default): no such number, do not cache.
    fn generation(&self) -> Option<u64> {
        None
    }
}

/// An in-memory [`RegistryRecords`] (tests, single-process demos).
#[derive(Debug, Default)]
pub struct MemoryRecords {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    puts: std::sync::atomic::AtomicU64,
}

impl RegistryRecords for MemoryRecords {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RecordsError> {
        Ok(self.map.lock().get(key).cloned())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), RecordsError> {
        self.map.lock().insert(key.to_vec(), value.to_vec());
        self.puts.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, RecordsError> {
        Ok(self
            .map
            .lock()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn delete(&self, key: &[u8]) -> Result<(), RecordsError> {
        self.map.lock().remove(key);
        self.puts.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn generation(&self) -> Option<u64> {
        Some(self.puts.load(std::sync::atomic::Ordering::Acquire))
    }
}

/// How much a registry may hold. Every node holds every registry record
/// (the `_registry` keyspace is replicated to all of them), so these bound
/// each node's disk and every `list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryLimits {
    /// Distinct modules (by content hash) registered at once.
    pub modules_max: usize,
    /// Bytes of all distinct modules together.
    pub module_bytes_total_max: u64,
    /// Earlier bindings a keyspace keeps for [`Registry::rollback`]: the
    /// oldest is dropped past it, so a binding can always change.
    pub history_max: usize,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            modules_max: 256,
            module_bytes_total_max: 256 * 1024 * 1024,
            history_max: 16,
        }
    }
}

/// How the law check went when a resolver was registered: the wire's
/// [`LawCheckOutcome`](isthmus_core::system_keyspace::LawCheckOutcome), stored as is
/// in the record (one definition, the same encoding).
pub type LawCheck = isthmus_core::system_keyspace::LawCheckOutcome;

/// One registered resolver version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolverRecord {
    /// Resolver name (e.g. `cart-union`).
    pub name: String,
    /// Version number chosen by the uploader.
    pub version: u32,
    /// blake3 of the module bytes.
    pub hash: ContentHash,
    /// Module size.
    pub module_bytes: u64,
    /// Outcome of the law check at upload.
    pub law_check: LawCheck,
}

/// A reference to one resolver version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolverRef {
    /// Resolver name.
    pub name: String,
    /// Version number.
    pub version: u32,
    /// Content hash of that version's module.
    pub hash: ContentHash,
}

/// Which resolver a keyspace uses, and what it used before.
///
/// Encoding: the fields in order; `canary`, `paused` and `events` were
/// appended, and a record written before them (ending after `history`)
/// still decodes ([`decode_binding`]), as a binding with no canary, not
/// paused, and no events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The keyspace.
    pub keyspace: String,
    /// The resolver in force (`None`: detached).
    pub current: Option<ResolverRef>,
    /// Earlier bindings, oldest first; [`Registry::rollback`] pops the
    /// last. At most [`RegistryLimits::history_max`] are kept.
    pub history: Vec<Option<ResolverRef>>,
    /// A resolver on trial in one scope ([`Registry::attach_canary`]).
    pub canary: Option<Canary>,
    /// Merging is paused: siblings are kept ([`Registry::pause`]).
    pub paused: bool,
    /// What happened to the binding, oldest first; at most
    /// [`RegistryLimits::history_max`] are kept.
    pub events: Vec<BindingEvent>,
}

/// A binding record as written before canaries (format version 1).
#[derive(Deserialize)]
struct BindingV1 {
    keyspace: String,
    current: Option<ResolverRef>,
    history: Vec<Option<ResolverRef>>,
}

/// Decode a [`Binding`] record, of either layout.
pub fn decode_binding(key: &[u8], bytes: &[u8]) -> Result<Binding, RegistryError> {
    if let Ok(binding) = postcard::from_bytes::<Binding>(bytes) {
        return Ok(binding);
    }
    let old: BindingV1 = decode(key, bytes)?;
    Ok(Binding {
        keyspace: old.keyspace,
        current: old.current,
        history: old.history,
        canary: None,
        paused: false,
        events: Vec::new(),
    })
}

/// Where a canary's resolver is used: every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryScope {
    /// Only merges on nodes of this datacenter.
    pub dc: Option<String>,
    /// Only keys whose hash falls in the first this many millionths of
    /// the key-hash space.
    pub share_ppm: Option<u32>,
}

impl CanaryScope {
    /// Whether a merge of `key` on a node of `dc` uses the canary.
    pub fn covers(&self, dc: &str, key: &[u8]) -> bool {
        if self.dc.as_deref().is_some_and(|scope| scope != dc) {
            return false;
        }
        match self.share_ppm {
            None => true,
            Some(ppm) => {
                // The share is the hash range [0, ppm/1e6 * 2^64).
                let bound = (u128::from(ppm) << 64) / u128::from(PPM);
                u128::from(isthmus_core::model::key_hash(key)) < bound
            }
        }
    }
}

/// Millionths in one.
pub const PPM: u32 = 1_000_000;

/// When the nodes in a canary's scope roll it back by themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackGuard {
    /// The window failures and merges are counted over, milliseconds.
    pub window_ms: u64,
    /// Merges the window must hold before the rate is judged.
    pub merges_min: u64,
    /// The failure rate (failed / attempted merges) past which the canary
    /// is rolled back, in millionths.
    pub failure_rate_max_ppm: u32,
}

impl Default for RollbackGuard {
    /// One minute, at least 20 merges, more than 10 % of them failed.
    fn default() -> Self {
        RollbackGuard {
            window_ms: 60_000,
            merges_min: 20,
            failure_rate_max_ppm: 100_000,
        }
    }
}

/// Bounds of [`RollbackGuard::window_ms`], milliseconds.
pub const CANARY_WINDOW_MS: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;
/// Bounds of [`RollbackGuard::merges_min`].
pub const CANARY_MERGES_MIN: std::ops::RangeInclusive<u64> = 1..=1_000_000;

impl RollbackGuard {
    /// Refuse numbers outside their bounds, naming the field.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let invalid =
            |field: &'static str, reason: String| RegistryError::InvalidCanary { field, reason };
        if !CANARY_WINDOW_MS.contains(&self.window_ms) {
            return Err(invalid(
                "window_ms",
                format!(
                    "{} is not within {}..={}",
                    self.window_ms,
                    CANARY_WINDOW_MS.start(),
                    CANARY_WINDOW_MS.end()
                ),
            ));
        }
        if !CANARY_MERGES_MIN.contains(&self.merges_min) {
            return Err(invalid(
                "merges_min",
                format!(
                    "{} is not within {}..={}",
                    self.merges_min,
                    CANARY_MERGES_MIN.start(),
                    CANARY_MERGES_MIN.end()
                ),
            ));
        }
        if self.failure_rate_max_ppm == 0 || self.failure_rate_max_ppm > PPM {
            return Err(invalid(
                "failure_rate_max",
                format!(
                    "{} is not more than 0 and at most 1",
                    f64::from(self.failure_rate_max_ppm) / f64::from(PPM)
                ),
            ));
        }
        Ok(())
    }
}

/// A resolver bound in one scope only, on trial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The resolver on trial.
    pub resolver: ResolverRef,
    /// Where it is used.
    pub scope: CanaryScope,
    /// When it rolls itself back.
    pub guard: RollbackGuard,
    /// When it was attached (Unix milliseconds): with the resolver's
    /// hash, what tells this trial from a later one of the same module.
    pub since_ms: u64,
}

/// One entry of a binding's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingEvent {
    /// When (Unix milliseconds, the writing node's clock).
    pub at_ms: u64,
    /// What happened.
    pub kind: BindingEventKind,
}

/// What happened to a binding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BindingEventKind {
    /// Bound everywhere (`None`: detached).
    Bound(Option<ResolverRef>),
    /// A canary began.
    Canary(ResolverRef),
    /// The canary became the binding everywhere.
    Promoted(ResolverRef),
    /// An operator rolled the canary back.
    CanaryRolledBack(ResolverRef),
    /// The nodes in the canary's scope rolled it back: its failure rate
    /// passed the guard's threshold.
    RolledBackAutomatically {
        /// The canary.
        resolver: ResolverRef,
        /// Failed merges in the window, as the node that rolled it back
        /// counted them.
        failures: u64,
        /// Merges attempted in the window.
        merges: u64,
    },
    /// An operator rolled the binding back to an earlier one.
    RolledBack(Option<ResolverRef>),
    /// Merging paused.
    Paused,
    /// Merging resumed.
    Resumed,
}

impl std::fmt::Display for BindingEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |r: &Option<ResolverRef>| match r {
            Some(r) => format!("{}@{}", r.name, r.version),
            None => "(none)".into(),
        };
        match self {
            BindingEventKind::Bound(r) => write!(f, "bound to {}", name(r)),
            BindingEventKind::Canary(r) => write!(f, "canary {}@{} began", r.name, r.version),
            BindingEventKind::Promoted(r) => write!(f, "canary {}@{} promoted", r.name, r.version),
            BindingEventKind::CanaryRolledBack(r) => {
                write!(f, "canary {}@{} rolled back", r.name, r.version)
            }
            BindingEventKind::RolledBackAutomatically {
                resolver,
                failures,
                merges,
            } => write!(
                f,
                "canary {}@{} rolled back automatically: failure rate {:.3} over {merges} merges ({failures} failed)",
                resolver.name,
                resolver.version,
                *failures as f64 / (*merges).max(1) as f64
            ),
            BindingEventKind::RolledBack(r) => write!(f, "rolled back to {}", name(r)),
            BindingEventKind::Paused => f.write_str("paused"),
            BindingEventKind::Resumed => f.write_str("resumed"),
        }
    }
}

/// What to do when the law check fails at upload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadPolicy {
    /// Options of the law check (its seed defaults from the module hash).
    pub check: CheckOptions,
    /// Register even if the check fails (recorded as [`LawCheck::Overridden`]).
    pub override_failed_check: bool,
}

/// Why a registry operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The byte store failed.
    #[error(transparent)]
    Store {
        /// The store's error.
        #[from]
        source: RecordsError,
    },
    /// The module was rejected at load.
    #[error("module rejected: {source}")]
    Invalid {
        /// The load error.
        source: ResolverError,
    },
    /// The law check failed and no override was given.
    #[error(
        "resolver {name}@{version} fails the law check (seed {seed}); register it with the override to use it anyway:\n{}",
        .violations.join("\n")
    )]
    LawCheckFailed {
        /// Resolver name.
        name: String,
        /// Version.
        version: u32,
        /// Seed of the check.
        seed: u64,
        /// The violated laws with their counterexamples.
        violations: Vec<String>,
    },
    /// The law check could not run.
    #[error("law check could not run: {reason}")]
    CheckFailed {
        /// Why.
        reason: String,
    },
    /// This name and version already hold a different module.
    #[error("{name}@{version} is already registered with another module")]
    VersionTaken {
        /// Resolver name.
        name: String,
        /// Version.
        version: u32,
    },
    /// No such resolver version.
    #[error("no resolver {name}@{version}")]
    UnknownResolver {
        /// Resolver name.
        name: String,
        /// Version.
        version: u32,
    },
    /// Nothing to roll back to.
    #[error("keyspace {keyspace:?} has no earlier binding to roll back to")]
    NothingToRollBack {
        /// The keyspace.
        keyspace: String,
    },
    /// A resolver name that cannot be registered.
    #[error("resolver name {name:?} is not 1 to {NAME_BYTES_MAX} characters of A-Z a-z 0-9 . _ -")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// Registering this module would pass a bound of the registry.
    #[error(
        "the registry is full: {modules} modules of at most {modules_max}, {module_bytes_total} module bytes of at most {module_bytes_total_max} (with this one); delete unused resolvers first"
    )]
    Full {
        /// Distinct modules, counting this one.
        modules: usize,
        /// Their limit.
        modules_max: usize,
        /// Bytes of all distinct modules, counting this one.
        module_bytes_total: u64,
        /// Their limit.
        module_bytes_total_max: u64,
    },
    /// The resolver is in use: it cannot be deleted.
    #[error("{name}@{version} is in use by keyspace(s) {}: detach it (and let rollbacks move past it) first", .keyspaces.join(", "))]
    InUse {
        /// Resolver name.
        name: String,
        /// Version.
        version: u32,
        /// The keyspaces that use it (bound now, in their history, or by
        /// default).
        keyspaces: Vec<String>,
    },
    /// A canary's scope or guard is out of bounds.
    #[error("invalid canary {field}: {reason}")]
    InvalidCanary {
        /// The field (as the attach names it).
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The keyspace has no canary (to promote).
    #[error("keyspace {keyspace:?} has no canary")]
    NoCanary {
        /// The keyspace.
        keyspace: String,
    },
    /// A stored record does not decode.
    #[error("corrupt registry record under {key}")]
    Corrupt {
        /// The key, escaped.
        key: String,
    },
}

/// Longest resolver name, in bytes.
pub const NAME_BYTES_MAX: usize = 128;

/// Whether `name` can name a resolver: 1 to [`NAME_BYTES_MAX`] ASCII
/// letters, digits, `.`, `_` and `-` (so it never holds the key layout's
/// separator, and prints as typed).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Resolvers by name and version, and keyspace bindings.
pub struct Registry {
    store: Arc<dyn RegistryRecords>,
    limits: RegistryLimits,
    mutating: Mutex<()>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// The key of `name@version`'s [`ResolverRecord`].
pub fn resolver_key(name: &str, version: u32) -> Vec<u8> {
    let mut k = b"resolver/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// The key of the module bytes with this content hash.
pub fn module_key(hash: &ContentHash) -> Vec<u8> {
    let mut k = b"module/".to_vec();
    k.extend_from_slice(hash);
    k
}

/// The key of a keyspace's [`Binding`].
pub fn binding_key(keyspace: &str) -> Vec<u8> {
    let mut k = b"binding/".to_vec();
    k.extend_from_slice(keyspace.as_bytes());
    k
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T, RegistryError> {
    postcard::from_bytes(bytes).map_err(|_| RegistryError::Corrupt {
        key: String::from_utf8_lossy(key).escape_debug().to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

impl Registry {
    /// A registry over a byte store.
    pub fn new(store: Arc<dyn RegistryRecords>) -> Self {
        Self::with_limits(store, RegistryLimits::default())
    }

    /// A registry over a byte store, within `limits`.
    pub fn with_limits(store: Arc<dyn RegistryRecords>, limits: RegistryLimits) -> Self {
        Registry {
            store,
            limits,
            mutating: Mutex::new(()),
        }
    }

    /// Held by whoever reads, changes and writes back a record on this
    /// node (the registry service, a canary's automatic rollback), so that
    /// one node's mutations do not overwrite each other.
    pub fn mutation_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.mutating.lock()
    }

    /// The registry's bounds.
    pub fn limits(&self) -> &RegistryLimits {
        &self.limits
    }

    /// A registry over a fresh [`MemoryRecords`].
    pub fn in_memory() -> Self {
        Self::new(Arc::new(MemoryRecords::default()))
    }

    /// The store's [`RegistryRecords::generation`]: what a reader caching
    /// bindings compares.
    pub fn generation(&self) -> Option<u64> {
        self.store.generation()
    }

    /// Validate `module` on `host`, run the law check, and store it as
    /// `name@version`. A module that fails the check is refused unless
    /// `policy.override_failed_check` is set. Registering the same bytes
    /// again under the same name and version is a no-op.
    pub fn register(
        &self,
        host: &Host,
        name: &str,
        version: u32,
        module: &[u8],
        policy: &UploadPolicy,
    ) -> Result<ResolverRecord, RegistryError> {
        if !valid_name(name) {
            return Err(RegistryError::InvalidName { name: name.into() });
        }
        let hash = module_hash(module);
        let key = resolver_key(name, version);
        if let Some(existing) = self.store.get(&key)? {
            let record: ResolverRecord = decode(&key, &existing)?;
            if record.hash == hash {
                return Ok(record);
            }
            return Err(RegistryError::VersionTaken {
                name: name.into(),
                version,
            });
        }
        self.check_room(&hash, module.len() as u64)?;
        let resolver = host
            .load(module)
            .map_err(|source| RegistryError::Invalid { source })?;
        let mut options = policy.check.clone();
        if options.seed.is_none() {
            options.seed = Some(u64::from_le_bytes(hash[..8].try_into().unwrap_or([0; 8])));
        }
        let report =
            check::check(host, &resolver, &options).map_err(|e| RegistryError::CheckFailed {
                reason: e.to_string(),
            })?;
        if let Some(warning) = report.warning() {
            tracing::warn!(name, version, hash = %hex(&hash), "{warning}");
        }
        let violations: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        let law_check = if report.passed() {
            LawCheck::Passed { seed: report.seed }
        } else if policy.override_failed_check {
            tracing::warn!(name, version, hash = %hex(&hash), "registering a resolver that fails the law check (override)");
            LawCheck::Overridden {
                seed: report.seed,
                violations,
            }
        } else {
            return Err(RegistryError::LawCheckFailed {
                name: name.into(),
                version,
                seed: report.seed,
                violations,
            });
        };
        let record = ResolverRecord {
            name: name.into(),
            version,
            hash,
            module_bytes: module.len() as u64,
            law_check,
        };
        // Module first: a record never points at a missing module.
        self.store.put(&module_key(&hash), module)?;
        self.store.put(&key, &encode(&record))?;
        Ok(record)
    }

    /// Refuse a module that would pass the registry's bounds (one whose
    /// bytes are stored already takes no room).
    fn check_room(&self, hash: &ContentHash, bytes: u64) -> Result<(), RegistryError> {
        let mut modules: BTreeMap<ContentHash, u64> = self
            .list()?
            .into_iter()
            .map(|r| (r.hash, r.module_bytes))
            .collect();
        if modules.contains_key(hash) {
            return Ok(());
        }
        modules.insert(*hash, bytes);
        let total: u64 = modules.values().sum();
        if modules.len() > self.limits.modules_max || total > self.limits.module_bytes_total_max {
            return Err(RegistryError::Full {
                modules: modules.len(),
                modules_max: self.limits.modules_max,
                module_bytes_total: total,
                module_bytes_total_max: self.limits.module_bytes_total_max,
            });
        }
        Ok(())
    }

    /// The keyspaces whose binding uses `name@version`, now, as its
    /// canary, or in the history a rollback returns to.
    pub fn users(&self, name: &str, version: u32) -> Result<Vec<String>, RegistryError> {
        let uses = |r: &Option<ResolverRef>| {
            r.as_ref()
                .is_some_and(|r| r.name == name && r.version == version)
        };
        Ok(self
            .bindings()?
            .into_iter()
            .filter(|b| {
                uses(&b.current)
                    || b.history.iter().any(uses)
                    || b.canary
                        .as_ref()
                        .is_some_and(|c| uses(&Some(c.resolver.clone())))
            })
            .map(|b| b.keyspace)
            .collect())
    }

    /// Delete `name@version`, which no binding may use (now or in its
    /// history: a rollback must find what it returns to), nor any of
    /// `defaults` (keyspaces whose configured default binding names it);
    /// and its module, unless another version has the same bytes. Returns
    /// the deleted record; the caller evicts the module from its host.
    pub fn delete(
        &self,
        name: &str,
        version: u32,
        defaults: &[String],
    ) -> Result<ResolverRecord, RegistryError> {
        let record = self
            .get(name, version)?
            .ok_or_else(|| RegistryError::UnknownResolver {
                name: name.into(),
                version,
            })?;
        let mut keyspaces = self.users(name, version)?;
        keyspaces.extend(defaults.iter().cloned());
        keyspaces.sort();
        keyspaces.dedup();
        if !keyspaces.is_empty() {
            return Err(RegistryError::InUse {
                name: name.into(),
                version,
                keyspaces,
            });
        }
        // Record first: a record never points at a missing module.
        self.store.delete(&resolver_key(name, version))?;
        let shared = self.list()?.iter().any(|r| r.hash == record.hash);
        if !shared {
            self.store.delete(&module_key(&record.hash))?;
        }
        Ok(record)
    }

    /// One resolver version.
    pub fn get(&self, name: &str, version: u32) -> Result<Option<ResolverRecord>, RegistryError> {
        let key = resolver_key(name, version);
        self.store.get(&key)?.map(|b| decode(&key, &b)).transpose()
    }

    /// Every registered version, by name then version.
    pub fn list(&self) -> Result<Vec<ResolverRecord>, RegistryError> {
        self.store
            .scan(b"resolver/")?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    /// The module bytes with this content hash.
    pub fn module_bytes(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, RegistryError> {
        Ok(self.store.get(&module_key(hash))?)
    }

    /// The keyspace's binding, if it ever had one.
    pub fn binding(&self, keyspace: &str) -> Result<Option<Binding>, RegistryError> {
        let key = binding_key(keyspace);
        self.store
            .get(&key)?
            .map(|b| decode_binding(&key, &b))
            .transpose()
    }

    /// Every keyspace binding.
    pub fn bindings(&self) -> Result<Vec<Binding>, RegistryError> {
        self.store
            .scan(b"binding/")?
            .into_iter()
            .map(|(k, v)| decode_binding(&k, &v))
            .collect()
    }

    /// Bind `keyspace` to `name@version` (which must be registered); the
    /// previous binding goes on the history. A canary is dropped (the
    /// binding is now the same everywhere); a pause stays.
    pub fn attach(
        &self,
        keyspace: &str,
        name: &str,
        version: u32,
    ) -> Result<Binding, RegistryError> {
        let resolver = self.resolver_ref(name, version)?;
        self.set_current(keyspace, Some(resolver), None, now_ms())
    }

    /// Unbind `keyspace` (siblings then accumulate, bounded by the sibling
    /// cap); the previous binding goes on the history, a canary is
    /// dropped.
    pub fn detach(&self, keyspace: &str) -> Result<Binding, RegistryError> {
        self.set_current(keyspace, None, None, now_ms())
    }

    fn resolver_ref(&self, name: &str, version: u32) -> Result<ResolverRef, RegistryError> {
        let record = self
            .get(name, version)?
            .ok_or_else(|| RegistryError::UnknownResolver {
                name: name.into(),
                version,
            })?;
        Ok(ResolverRef {
            name: record.name,
            version: record.version,
            hash: record.hash,
        })
    }

    /// The keyspace's binding, or a new one bound to `default` (the
    /// keyspace's configured default, which a first record must carry
    /// on, or it would unbind the keyspace).
    fn binding_or(
        &self,
        keyspace: &str,
        default: Option<ResolverRef>,
    ) -> Result<Binding, RegistryError> {
        Ok(self.binding(keyspace)?.unwrap_or(Binding {
            keyspace: keyspace.into(),
            current: default,
            history: Vec::new(),
            canary: None,
            paused: false,
            events: Vec::new(),
        }))
    }

    /// Log `kind` on `binding`, bound the history and the log, and store it.
    fn store_binding(
        &self,
        binding: &mut Binding,
        kind: BindingEventKind,
        at_ms: u64,
    ) -> Result<(), RegistryError> {
        binding.events.push(BindingEvent { at_ms, kind });
        let excess = |n: usize| n.saturating_sub(self.limits.history_max);
        let history_excess = excess(binding.history.len());
        binding.history.drain(..history_excess);
        let events_excess = excess(binding.events.len());
        binding.events.drain(..events_excess);
        self.store
            .put(&binding_key(&binding.keyspace), &encode(&*binding))?;
        Ok(())
    }

    fn set_current(
        &self,
        keyspace: &str,
        current: Option<ResolverRef>,
        default: Option<ResolverRef>,
        at_ms: u64,
    ) -> Result<Binding, RegistryError> {
        let mut binding = self.binding_or(keyspace, default)?;
        if binding.current == current && binding.canary.is_none() {
            return Ok(binding);
        }
        if binding.current != current {
            let previous = std::mem::replace(&mut binding.current, current.clone());
            binding.history.push(previous);
        }
        binding.canary = None;
        self.store_binding(&mut binding, BindingEventKind::Bound(current), at_ms)?;
        Ok(binding)
    }

    /// Restore the keyspace's previous binding; with a canary on, drop
    /// the canary instead (the binding everywhere else stays).
    pub fn rollback(&self, keyspace: &str) -> Result<Binding, RegistryError> {
        let nothing = || RegistryError::NothingToRollBack {
            keyspace: keyspace.into(),
        };
        let mut binding = self.binding(keyspace)?.ok_or_else(nothing)?;
        let kind = if let Some(canary) = binding.canary.take() {
            BindingEventKind::CanaryRolledBack(canary.resolver)
        } else {
            let previous = binding.history.pop().ok_or_else(nothing)?;
            binding.current = previous.clone();
            BindingEventKind::RolledBack(previous)
        };
        self.store_binding(&mut binding, kind, now_ms())?;
        Ok(binding)
    }

    /// Put `name@version` on trial in `keyspace`, in `scope` only, rolled
    /// back by the nodes in scope past `guard`; the binding elsewhere
    /// stays (`default`: the keyspace's configured resolver, for a
    /// keyspace the registry never bound). A canary already on is
    /// replaced.
    // Each argument is one thing the operator chose (or the node's clock
    // and configuration); a struct around them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn attach_canary(
        &self,
        keyspace: &str,
        name: &str,
        version: u32,
        scope: CanaryScope,
        guard: RollbackGuard,
        default: Option<ResolverRef>,
        now_ms: u64,
    ) -> Result<Binding, RegistryError> {
        guard.validate()?;
        let invalid = |field: &'static str, reason: &str| RegistryError::InvalidCanary {
            field,
            reason: reason.into(),
        };
        match scope.share_ppm {
            Some(ppm) if ppm == 0 || ppm > PPM => {
                return Err(invalid("share", "must be more than 0 and at most 1"));
            }
            _ => {}
        }
        if scope.dc.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("dc", "must name a datacenter"));
        }
        if scope.dc.is_none() && scope.share_ppm.is_none() {
            return Err(invalid(
                "scope",
                "a canary needs a datacenter or a share of keys (attach without one to bind everywhere)",
            ));
        }
        let resolver = self.resolver_ref(name, version)?;
        let mut binding = self.binding_or(keyspace, default)?;
        if binding.current.as_ref() == Some(&resolver) {
            return Err(invalid(
                "resolver",
                &format!("{name}@{version} is the keyspace's binding already"),
            ));
        }
        binding.canary = Some(Canary {
            resolver: resolver.clone(),
            scope,
            guard,
            since_ms: now_ms,
        });
        self.store_binding(&mut binding, BindingEventKind::Canary(resolver), now_ms)?;
        Ok(binding)
    }

    /// Make the keyspace's canary its binding everywhere (the previous
    /// binding goes on the history).
    pub fn promote(&self, keyspace: &str) -> Result<Binding, RegistryError> {
        let none = || RegistryError::NoCanary {
            keyspace: keyspace.into(),
        };
        let mut binding = self.binding(keyspace)?.ok_or_else(none)?;
        let canary = binding.canary.take().ok_or_else(none)?;
        let previous = binding.current.replace(canary.resolver.clone());
        binding.history.push(previous);
        self.store_binding(
            &mut binding,
            BindingEventKind::Promoted(canary.resolver),
            now_ms(),
        )?;
        Ok(binding)
    }

    /// Roll back the canary `(hash, since_ms)` of `keyspace` because its
    /// failure rate passed its guard (`failures` of `merges` in the
    /// window, as the caller counted them). Nothing happens when that
    /// canary is no longer on (another node rolled it back first, an
    /// operator promoted or replaced it): `Ok(None)`. So any number of
    /// nodes may call this for the same canary: it is dropped once, and
    /// what stays bound is the same whichever of their writes wins.
    pub fn auto_rollback(
        &self,
        keyspace: &str,
        hash: &ContentHash,
        since_ms: u64,
        failures: u64,
        merges: u64,
        now_ms: u64,
    ) -> Result<Option<Binding>, RegistryError> {
        let Some(mut binding) = self.binding(keyspace)? else {
            return Ok(None);
        };
        match &binding.canary {
            Some(c) if c.resolver.hash == *hash && c.since_ms == since_ms => {}
            _ => return Ok(None),
        }
        let canary = binding.canary.take().expect("matched above");
        self.store_binding(
            &mut binding,
            BindingEventKind::RolledBackAutomatically {
                resolver: canary.resolver,
                failures,
                merges,
            },
            now_ms,
        )?;
        Ok(Some(binding))
    }

    /// Pause merging in `keyspace` (`default` as for
    /// [`attach_canary`](Self::attach_canary)); pausing a paused keyspace
    /// changes nothing.
    pub fn pause(
        &self,
        keyspace: &str,
        default: Option<ResolverRef>,
    ) -> Result<Binding, RegistryError> {
        self.set_paused(keyspace, true, default)
    }

    /// Merge a paused keyspace again.
    pub fn resume(
        &self,
        keyspace: &str,
        default: Option<ResolverRef>,
    ) -> Result<Binding, RegistryError> {
        self.set_paused(keyspace, false, default)
    }

    fn set_paused(
        &self,
        keyspace: &str,
        paused: bool,
        default: Option<ResolverRef>,
    ) -> Result<Binding, RegistryError> {
        let mut binding = self.binding_or(keyspace, default)?;
        if binding.paused == paused {
            return Ok(binding);
        }
        binding.paused = paused;
        let kind = if paused {
            BindingEventKind::Paused
        } else {
            BindingEventKind::Resumed
        };
        self.store_binding(&mut binding, kind, now_ms())?;
        Ok(binding)
    }
}

/// The wall clock, Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_scans_a_prefix_in_order() {
        let s = MemoryRecords::default();
        for k in [&b"b/2"[..], b"a/1", b"b/1", b"c", b"b"] {
            s.put(k, k).unwrap();
        }
        let keys: Vec<Vec<u8>> = s.scan(b"b/").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"b/1".to_vec(), b"b/2".to_vec()]);
        assert_eq!(s.get(b"c").unwrap(), Some(b"c".to_vec()));
        assert_eq!(s.get(b"d").unwrap(), None);
    }

    #[test]
    fn resolver_keys_sort_by_name_then_version() {
        assert!(resolver_key("a", 2) < resolver_key("a", 10));
        assert!(resolver_key("a", u32::MAX) < resolver_key("ab", 0));
    }

    #[test]
    fn a_binding_written_before_canaries_still_decodes() {
        #[derive(Serialize)]
        struct Old {
            keyspace: String,
            current: Option<ResolverRef>,
            history: Vec<Option<ResolverRef>>,
        }
        let r = ResolverRef {
            name: "m".into(),
            version: 1,
            hash: [1; 32],
        };
        let old = Old {
            keyspace: "ks".into(),
            current: Some(r.clone()),
            history: vec![None],
        };
        let store = Arc::new(MemoryRecords::default());
        store
            .put(&binding_key("ks"), &postcard::to_allocvec(&old).unwrap())
            .unwrap();
        let binding = Registry::new(store).binding("ks").unwrap().unwrap();
        assert_eq!(
            binding,
            Binding {
                keyspace: "ks".into(),
                current: Some(r),
                history: vec![None],
                canary: None,
                paused: false,
                events: Vec::new(),
            }
        );
    }

    #[test]
    fn a_share_covers_its_part_of_the_hash_space_and_a_dc_its_nodes() {
        let all = CanaryScope {
            dc: None,
            share_ppm: Some(PPM),
        };
        let half = CanaryScope {
            dc: Some("dc1".into()),
            share_ppm: Some(PPM / 2),
        };
        let keys: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        assert!(keys.iter().all(|k| all.covers("any", k)));
        let covered = keys.iter().filter(|k| half.covers("dc1", k)).count();
        assert!((400..=600).contains(&covered), "{covered}");
        assert!(keys.iter().all(|k| !half.covers("dc2", k)));
    }

    #[test]
    fn corrupt_records_are_typed_errors() {
        let store = Arc::new(MemoryRecords::default());
        store.put(&binding_key("ks"), &[0xff, 0xff]).unwrap();
        let registry = Registry::new(store);
        assert!(matches!(
            registry.binding("ks"),
            Err(RegistryError::Corrupt { .. })
        ));
    }
}
