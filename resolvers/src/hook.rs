//! [`WasmMergeHook`]: core's [`MergeHook`] backed by this host and a
//! [`Registry`] of keyspace bindings.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use isthmus_core::merge::{FailureClass, MergeFailure, MergeHook, Metered};
use isthmus_core::model::{ContentHash, Version, VersionSet};
use parking_lot::Mutex;

use crate::canary::{CanaryWatch, Tripped, counts_against};
use crate::host::MergeContext;
use crate::registry::{Canary, RegistryError, ResolverRef, now_ms};
use crate::{Host, Registry, ResolverError};

/// Merges siblings with the resolver bound to their keyspace.
///
/// A keyspace's resolver is its registry binding when the registry has
/// one (a detached binding means none), else its default binding
/// ([`WasmMergeHook::with_defaults`], from the node's configuration:
/// `resolver = "cart-union@1"`), which must name a registered resolver.
/// Keyspaces without either are left alone (`Ok(None)`). A module not in
/// the host's cache is loaded from the registry on first use. Every
/// failure leaves the siblings as they were and is counted on the host
/// under the resolver's hash (and logged).
///
/// A binding's canary takes the merges in its scope: keys merged on a node
/// of its datacenter ([`WasmMergeHook::with_dc`]) and/or in its share of
/// the key-hash space. Those merges are counted in the hook's
/// [`CanaryWatch`]; the merge that trips the canary's guard starts a
/// thread that rolls the canary back in the registry
/// ([`Registry::auto_rollback`], under the registry's mutation lock). A
/// paused binding merges nothing: the siblings are kept.
///
/// Bindings are cached per keyspace for as long as the registry's
/// [`generation`](Registry::generation) stays put, so a merge costs no
/// registry read in the steady state.
#[derive(Clone)]
pub struct WasmMergeHook {
    host: Arc<Host>,
    registry: Arc<Registry>,
    defaults: Arc<BTreeMap<String, (String, u32)>>,
    cache: Arc<Mutex<BindingCache>>,
    dc: Arc<str>,
    watch: Arc<CanaryWatch>,
}

/// Per keyspace: the registry generation it was looked up at, and what it
/// is bound to.
type BindingCache = HashMap<String, (u64, Choice)>;

/// What a keyspace is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Bound {
    /// A registered resolver.
    Resolver(ResolverRef),
    /// A default binding naming a resolver the registry does not hold.
    Unregistered { name: String, version: u32 },
}

/// A keyspace's binding as merges use it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Choice {
    current: Option<Bound>,
    canary: Option<Canary>,
    paused: bool,
}

impl WasmMergeHook {
    /// A hook over a host and a registry.
    pub fn new(host: Arc<Host>, registry: Arc<Registry>) -> Self {
        WasmMergeHook {
            host,
            registry,
            defaults: Arc::default(),
            cache: Arc::default(),
            dc: Arc::from(""),
            watch: Arc::default(),
        }
    }

    /// Default bindings, `keyspace -> (name, version)`: used for keyspaces
    /// the registry has never bound.
    pub fn with_defaults(mut self, defaults: BTreeMap<String, (String, u32)>) -> Self {
        self.defaults = Arc::new(defaults);
        self.cache.lock().clear();
        self
    }

    /// The datacenter of the node this hook merges on: canaries scoped to
    /// it run here.
    pub fn with_dc(mut self, dc: &str) -> Self {
        self.dc = Arc::from(dc);
        self
    }

    /// The host this hook runs merges on.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The window this hook counts its canaries' merges in.
    pub fn canary_watch(&self) -> &Arc<CanaryWatch> {
        &self.watch
    }

    /// What `keyspace` is bound to now.
    fn bound_to(&self, keyspace: &str) -> Result<Choice, RegistryError> {
        let generation = self.registry.generation();
        if let Some(generation) = generation
            && let Some((at, choice)) = self.cache.lock().get(keyspace)
            && *at == generation
        {
            return Ok(choice.clone());
        }
        let choice = self.look_up(keyspace)?;
        if let Some(generation) = generation {
            // Read before looking up: a write in between leaves an entry
            // tagged with the older generation, which the next call
            // replaces.
            self.cache
                .lock()
                .insert(keyspace.to_owned(), (generation, choice.clone()));
        }
        Ok(choice)
    }

    fn look_up(&self, keyspace: &str) -> Result<Choice, RegistryError> {
        if let Some(binding) = self.registry.binding(keyspace)? {
            return Ok(Choice {
                current: binding.current.map(Bound::Resolver),
                canary: binding.canary,
                paused: binding.paused,
            });
        }
        let Some((name, version)) = self.defaults.get(keyspace) else {
            return Ok(Choice::default());
        };
        let current = match self.registry.get(name, *version)? {
            Some(record) => Bound::Resolver(ResolverRef {
                name: record.name,
                version: record.version,
                hash: record.hash,
            }),
            None => Bound::Unregistered {
                name: name.clone(),
                version: *version,
            },
        };
        Ok(Choice {
            current: Some(current),
            ..Choice::default()
        })
    }

    /// Merge with `current`, which is registered; what was measured of
    /// the merge, when it ran.
    fn run(
        &self,
        keyspace: &str,
        key: &[u8],
        siblings: &VersionSet,
        current: &ResolverRef,
    ) -> (Result<Option<Version>, MergeFailure>, Metered) {
        let failure = |class, detail: String| MergeFailure {
            keyspace: keyspace.into(),
            resolver: Some(current.hash),
            resolver_name: Some(format!("{}@{}", current.name, current.version)),
            class,
            detail,
        };
        let hash: ContentHash = current.hash;
        let resolver = match self.host.get(&hash) {
            Some(r) => r,
            None => {
                let loaded = match self.registry.module_bytes(&hash) {
                    Err(e) => Err(failure(FailureClass::Missing, e.to_string())),
                    Ok(None) => Err(failure(
                        FailureClass::Missing,
                        format!(
                            "module of {}@{} is not stored",
                            current.name, current.version
                        ),
                    )),
                    Ok(Some(bytes)) => self
                        .host
                        .load(&bytes)
                        .map_err(|e| failure(e.class(), e.to_string())),
                };
                match loaded {
                    Ok(resolver) => resolver,
                    Err(error) => return (Err(error), Metered::default()),
                }
            }
        };
        let context = MergeContext {
            keyspace: Some(keyspace),
            resolver: Some((&current.name, current.version)),
        };
        let run = self.host.merge_set_in(&resolver, key, siblings, &context);
        let result = run.result.map_err(|e: ResolverError| {
            tracing::warn!(keyspace, resolver = %current.name, version = current.version,
                class = %e.class(), error = %e, "merge failed; siblings kept");
            failure(e.class(), e.to_string())
        });
        let metered = Metered {
            fuel: Some(run.fuel),
            log_lines: run.log.lines.len() as u64,
            log_dropped: run.log.dropped,
        };
        (result, metered)
    }

    /// Roll `tripped`'s canary back in the registry, off the merge's
    /// thread (the write waits for a quorum).
    fn roll_back(&self, tripped: Tripped) {
        let registry = self.registry.clone();
        let watch = self.watch.clone();
        let failed_to_start = tripped.clone();
        let spawned = std::thread::Builder::new()
            .name("isthmus-canary-rollback".into())
            .spawn(move || {
                let _one_at_a_time = registry.mutation_lock();
                let t = &tripped;
                match registry.auto_rollback(
                    &t.keyspace,
                    &t.hash,
                    t.since_ms,
                    t.failures,
                    t.merges,
                    now_ms(),
                ) {
                    Ok(Some(_)) => tracing::warn!(
                        keyspace = t.keyspace,
                        failures = t.failures,
                        merges = t.merges,
                        "canary rolled back automatically: its failure rate passed its threshold"
                    ),
                    Ok(None) => tracing::info!(
                        keyspace = t.keyspace,
                        "canary tripped here, but it was no longer on (rolled back elsewhere, promoted or replaced)"
                    ),
                    Err(e) => {
                        tracing::warn!(keyspace = t.keyspace, error = %e,
                            "could not roll back a failing canary; the next failure tries again");
                        watch.release(t);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start a canary rollback");
            self.watch.release(&failed_to_start);
        }
    }
}

impl MergeHook for WasmMergeHook {
    fn merge(
        &self,
        keyspace: &str,
        key: &[u8],
        siblings: &VersionSet,
    ) -> Result<Option<Version>, MergeFailure> {
        self.merge_metered(keyspace, key, siblings).0
    }

    fn merge_metered(
        &self,
        keyspace: &str,
        key: &[u8],
        siblings: &VersionSet,
    ) -> (Result<Option<Version>, MergeFailure>, Metered) {
        if siblings.len() < 2 {
            return (Ok(None), Metered::default());
        }
        let failure = |resolver, name, class, detail: String| MergeFailure {
            keyspace: keyspace.into(),
            resolver,
            resolver_name: name,
            class,
            detail,
        };
        let choice = match self.bound_to(keyspace) {
            Ok(choice) => choice,
            Err(e) => {
                let error = failure(None, None, FailureClass::Missing, e.to_string());
                return (Err(error), Metered::default());
            }
        };
        if choice.paused {
            // The siblings are kept while the binding is paused, and a read
            // of them says so.
            let name = match &choice.current {
                Some(Bound::Resolver(r)) => Some(format!("{}@{}", r.name, r.version)),
                Some(Bound::Unregistered { name, version }) => Some(format!("{name}@{version}")),
                None => None,
            };
            let paused = failure(
                None,
                name,
                FailureClass::Paused,
                format!("the binding of keyspace {keyspace:?} is paused"),
            );
            return (Err(paused), Metered::default());
        }
        if let Some(canary) = &choice.canary
            && canary.scope.covers(&self.dc, key)
        {
            let (result, fuel) = self.run(keyspace, key, siblings, &canary.resolver);
            let failed = match &result {
                Ok(_) => Some(false),
                Err(f) => counts_against(f.class).then_some(true),
            };
            if let Some(failed) = failed
                && let Some(tripped) = self.watch.record(keyspace, canary, failed, now_ms())
            {
                self.roll_back(tripped);
            }
            return (result, fuel);
        }
        match choice.current {
            None => (Ok(None), Metered::default()),
            Some(Bound::Resolver(current)) => self.run(keyspace, key, siblings, &current),
            Some(Bound::Unregistered { name, version }) => {
                let detail = format!(
                    "keyspace {keyspace:?} is configured with {name}@{version}, which is not registered (upload it with `isthmus resolver upload`)"
                );
                let name = Some(format!("{name}@{version}"));
                (
                    Err(failure(None, name, FailureClass::Missing, detail)),
                    Metered::default(),
                )
            }
        }
    }

    fn bound(&self, keyspace: &str) -> Option<bool> {
        // A registry that cannot be read leaves the decision to the
        // keyspace's configuration (the merge then reports the failure).
        // A paused binding still counts as bound: it holds siblings for a
        // while, it does not change what the keyspace is.
        self.bound_to(keyspace)
            .ok()
            .map(|c| c.current.is_some() || c.canary.is_some())
    }
}
